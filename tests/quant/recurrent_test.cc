// Quantization-aware training of LSTM and GRU (lowbit/quant/recurrent.h; semantics 3.7): the
// structure quantize_model builds, the forward against a by-hand computation of the integer
// step on the codes (LSTM and GRU, spec 3.7's formulas), the grids of weights, gates and cell,
// masks (bit-exact carries, garbage at padded steps, trackers from valid steps only), training, and
// save/load.
#include "lowbit/quant/recurrent.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <set>

#include "lowbit/data/dataset.h"
#include "lowbit/fixed_point.h"
#include "lowbit/nn/layers.h"
#include "lowbit/nn/losses.h"
#include "lowbit/nn/masking.h"
#include "lowbit/nn/model.h"
#include "lowbit/nn/optimizers.h"
#include "lowbit/ops.h"
#include "lowbit/ops/fake_quant.h"
#include "lowbit/ops/integer_numerics.h"
#include "lowbit/quant/quantize_model.h"
#include "testing/model_testing.h"
#include "testing/op_testing.h"

namespace lowbit::quant {
namespace {

using nn::KTensor;
using testing::random_tensor;
using testing::tensors_equal;

using testing::structure;

std::shared_ptr<QuantizedRecurrentLayer> rnn_of(const nn::Model& m, const std::string& name) {
  auto l = std::dynamic_pointer_cast<QuantizedRecurrentLayer>(m.get_layer(name));
  EXPECT_TRUE(l) << name;
  return l;
}
Tensor& state(nn::Layer& l, const std::string& name) {
  for (auto& w : l.weights())
    if (w.name == name) return w.value;
  ADD_FAILURE() << "no state " << name;
  static Tensor none;
  return none;
}
Tensor& inner(QuantizedRecurrentLayer& l, const std::string& name) {
  for (auto& w : l.layer()->weights())
    if (w.name == name) return w.value;
  ADD_FAILURE() << "no weight " << name;
  static Tensor none;
  return none;
}
Tensor& inner_weight_of(QuantizedRecurrentLayer& l, const std::string& name) {
  return inner(l, name);
}
bool all_integers(const Tensor& t, double scale, double lo, double hi) {
  for (int64_t i = 0; i < t.numel(); ++i) {
    const double q = t.get_as_double(i) / scale;
    if (q != std::round(q) || q < lo || q > hi) return false;
  }
  return true;
}

// [Masking] -> LSTM/GRU(return_sequences) -> Dense, T = 5, F = 3.
nn::ModelPtr masked_model(bool gru, nn::LSTMOptions lo = {}, nn::GRUOptions go = {}) {
  nn::reset_layer_names();
  nn::set_random_seed(5);
  KTensor x = nn::Input({5, 3});
  KTensor m = (*nn::Masking())(x);
  KTensor h = gru ? (*nn::GRU(4, go))(m) : (*nn::LSTM(4, lo))(m);
  KTensor y = (*nn::Dense(2))(h);
  return nn::Model::create({x}, {y}, "seq");
}

TEST(QuantizedRecurrent, QuantizeModelPlacementForMaskedLSTMAndGRU) {
  for (bool gru : {false, true}) {
    auto q =
        quantize_model(*masked_model(gru, {.return_sequences = true}, {.return_sequences = true}));
    const std::string r = gru ? "gru" : "lstm", cls = gru ? "QuantizedGRU" : "QuantizedLSTM";
    // The recurrent layer reads Masking's output unquantized (it quantizes x itself), and its
    // output is already on h's int8 grid: no FakeQuant on either side.
    const std::vector<std::string> want = {
        "input_layer:InputLayer", "masking:Masking<-input_layer", r + ":" + cls + "<-masking",
        "dense:QuantizeWrapper<-" + r, "dense_quant:FakeQuant<-dense"};
    EXPECT_EQ(structure(*q), want);
    ASSERT_TRUE(q->outputs()[0].has_mask());  // the mask still travels
    auto l = rnn_of(*q, r);
    EXPECT_EQ(state(*l, "kernel_min").shape(), Shape({gru ? 3 : 4}));  // one range per gate block
    EXPECT_EQ(state(*l, "recurrent_kernel_max").shape(), Shape({gru ? 3 : 4}));
    // The copied float weights are in place and the weight ranges start from them.
    auto fl = masked_model(gru, {.return_sequences = true}, {.return_sequences = true});
    EXPECT_TRUE(tensors_equal(inner(*l, "kernel"), fl->get_layer(r)->weights()[0].value));
    EXPECT_LT(state(*l, "kernel_min").get_as_double(0), 0);
    EXPECT_NE(q->summary().find("integer " + std::string(gru ? "GRU" : "LSTM") + " step"),
              std::string::npos);
  }
}

// One LSTM with given initial states; returns the quantized model with ranges set by hand.
struct LstmSetup {
  nn::ModelPtr q;
  std::shared_ptr<QuantizedRecurrentLayer> l;
};
LstmSetup lstm_setup(int64_t steps, bool gru = false) {
  nn::reset_layer_names();
  nn::set_random_seed(8);
  KTensor x = nn::Input({steps, 3}), h0 = nn::Input({4});
  std::vector<KTensor> in{x, h0};
  if (!gru) in.push_back(nn::Input({4}));
  auto rnn = gru ? nn::GRU(4, {.return_sequences = true, .return_state = true})
                 : nn::LSTM(4, {.return_sequences = true, .return_state = true});
  std::vector<KTensor> out = (*rnn)(in);
  auto fm = nn::Model::create(in, out);
  Rng rng(13);
  for (auto& w : fm->get_layer(gru ? "gru" : "lstm")->weights())
    w.value.copy_from(random_tensor(w.value.shape(), rng, -0.9f, 0.9f));
  LstmSetup s;
  s.q = quantize_model(*fm);
  s.l = rnn_of(*s.q, gru ? "gru" : "lstm");
  state(*s.l, "x_min").copy_from(Tensor::scalar(-1.0f));
  state(*s.l, "x_max").copy_from(Tensor::scalar(1.5f));
  state(*s.l, "h_min").copy_from(Tensor::scalar(-0.8f));
  state(*s.l, "h_max").copy_from(Tensor::scalar(0.9f));
  if (!gru) state(*s.l, "cell_max_abs").copy_from(Tensor::scalar(3.0f));  // p = 2
  return s;
}

TEST(QuantizedRecurrent, LSTMForwardIsTheIntegerStepComputedByHand) {
  LstmSetup s = lstm_setup(2);
  auto& l = *s.l;
  EXPECT_EQ(l.cell_int_bits(), 2);
  Rng rng(17);
  Tensor x = random_tensor({3, 2, 3}, rng, -1.5f, 2.0f);
  Tensor h0 = random_tensor({3, 4}, rng, -1, 1), c0 = random_tensor({3, 4}, rng, -5, 5);
  std::vector<Tensor> got = s.q->predict_on_batch({x, h0, c0});

  // By hand, from the integer step's formulas (spec 3.7) on the codes: what qlstm computes.
  const Tensor xmin = state(l, "x_min"), xmax = state(l, "x_max");
  const Tensor hmin = state(l, "h_min"), hmax = state(l, "h_max");
  const ops::FakeQuantNudge nx =
      ops::fake_quant_nudge(xmin.get_as_double(0), xmax.get_as_double(0));
  const ops::FakeQuantNudge nh =
      ops::fake_quant_nudge(hmin.get_as_double(0), hmax.get_as_double(0));
  const Tensor K = l.quantized_kernel(), R = l.quantized_recurrent_kernel();
  const Tensor b = inner(l, "bias");
  std::vector<float> swx, swh;
  for (int64_t k = 0; k < 4; ++k) {
    swx.push_back(ops::fake_quant_nudge(state(l, "kernel_min").get_as_double(k),
                                        state(l, "kernel_max").get_as_double(k), 8, true)
                      .scale);
    swh.push_back(ops::fake_quant_nudge(state(l, "recurrent_kernel_min").get_as_double(k),
                                        state(l, "recurrent_kernel_max").get_as_double(k), 8, true)
                      .scale);
  }
  auto code = [](double v, double s) { return static_cast<int32_t>(std::lround(v / s)); };
  auto mbqm = [](int64_t acc, double m) {
    return quant::multiply_by_quantized_multiplier(static_cast<int32_t>(acc),
                                                   quant::quantize_multiplier(m));
  };
  auto s16 = [](int64_t v) { return static_cast<int32_t>(std::clamp<int64_t>(v, -32768, 32767)); };
  const Tensor hq0 = ops::fake_quant_with_min_max_vars(h0, hmin, hmax);
  const Tensor cq0 = ops::fake_quant_pot(c0, 2 - 15);
  for (int64_t n = 0; n < 3; ++n) {
    std::vector<int32_t> h(4), c(4);
    for (int64_t j = 0; j < 4; ++j) {
      h[j] = code(hq0.get_as_double(n * 4 + j), nh.scale);  // q_h - zp_h
      c[j] = code(cq0.get_as_double(n * 4 + j), std::ldexp(1.0, -13));
    }
    for (int64_t t = 0; t < 2; ++t) {
      std::vector<int32_t> a(16);
      for (int64_t col = 0; col < 16; ++col) {
        const int64_t g = col / 4;
        const float bs = swx[g] * nx.scale;
        int64_t ax = quant::quantize_bias(b.data<float>()[col], bs), ah = 0;
        for (int64_t d = 0; d < 3; ++d) {
          const Tensor xq = ops::fake_quant_with_min_max_vars(
              Tensor::scalar(x.data<float>()[(n * 2 + t) * 3 + d]), xmin, xmax);
          ax += int64_t{code(xq.get_as_double(0), nx.scale)} *
                code(K.get_as_double(d * 16 + col), swx[g]);
        }
        for (int64_t k = 0; k < 4; ++k)
          ah += int64_t{h[k]} * code(R.get_as_double(k * 16 + col), swh[g]);
        a[col] = s16(int64_t{s16(mbqm(ax, std::ldexp(double(bs), 12)))} +
                     mbqm(ah, std::ldexp(double(swh[g] * nh.scale), 12)));
      }
      for (int64_t j = 0; j < 4; ++j) {
        const int32_t i = quant::logistic_int16(static_cast<int16_t>(a[j]));
        const int32_t f = quant::logistic_int16(static_cast<int16_t>(a[4 + j]));
        const int32_t g = quant::tanh_int16(static_cast<int16_t>(a[8 + j]), 3);
        const int32_t o = quant::logistic_int16(static_cast<int16_t>(a[12 + j]));
        c[j] = s16(int64_t{quant::rounding_divide_by_pot(f * c[j], 15)} +
                   quant::rounding_divide_by_pot(i * g, 15 + 2));
        const int32_t th = quant::tanh_int16(static_cast<int16_t>(c[j]), 2);
        h[j] = std::clamp(mbqm(int64_t{o} * th, std::ldexp(1.0, -30) / double(nh.scale)),
                          nh.quant_min - nh.zero_point, nh.quant_max - nh.zero_point);
        EXPECT_EQ(code(got[0].get_as_double((n * 2 + t) * 4 + j), nh.scale), h[j])
            << n << " " << t << " " << j;
      }
    }
    for (int64_t j = 0; j < 4; ++j) {
      EXPECT_EQ(code(got[1].get_as_double(n * 4 + j), nh.scale), h[j]);
      EXPECT_EQ(code(got[2].get_as_double(n * 4 + j), std::ldexp(1.0, -13)), c[j]);
    }
  }
  // The cell state is on the int16 grid 2^(p-15), p = 2.
  EXPECT_TRUE(all_integers(got[2], std::ldexp(1.0, -13), -32768, 32767));
  // Weights: per gate block, the int8 narrow symmetric grid of that block's range.
  for (const bool rec : {false, true}) {
    const Tensor& w = rec ? R : K;
    const Tensor mx = state(l, rec ? "recurrent_kernel_max" : "kernel_max");
    for (int64_t k = 0; k < 4; ++k) {
      Tensor blk = ops::slice(w, {0, 4 * k}, {w.shape()[0], 4 * k + 4});
      const double scale = 2.0 * mx.get_as_double(k) / 254.0;
      for (int64_t e = 0; e < blk.numel(); ++e) {
        const double q = blk.get_as_double(e) / scale;
        ASSERT_NEAR(q, std::round(q), 1e-3) << "block " << k;
        ASSERT_LE(std::fabs(q), 127.001);
      }
    }
  }
}

TEST(QuantizedRecurrent, GRUForwardIsTheIntegerStepComputedByHand) {
  LstmSetup s = lstm_setup(2, true);
  auto& l = *s.l;
  Rng rng(19);
  Tensor x = random_tensor({3, 2, 3}, rng, -1.5f, 2.0f), h0 = random_tensor({3, 4}, rng, -1, 1);
  std::vector<Tensor> got = s.q->predict_on_batch({x, h0});

  // By hand, from the GRU's integer step (spec 3.7 "GRU", reset_after = true) on the codes: what
  // qgru computes. h codes are kept as q_h - zp_h, x codes as q_x - zp_x (the zero-point terms
  // of the accumulators are then implicit).
  const Tensor xmin = state(l, "x_min"), xmax = state(l, "x_max");
  const Tensor hmin = state(l, "h_min"), hmax = state(l, "h_max");
  const ops::FakeQuantNudge nx =
      ops::fake_quant_nudge(xmin.get_as_double(0), xmax.get_as_double(0));
  const ops::FakeQuantNudge nh =
      ops::fake_quant_nudge(hmin.get_as_double(0), hmax.get_as_double(0));
  const Tensor K = l.quantized_kernel(), R = l.quantized_recurrent_kernel();
  const Tensor b = inner(l, "bias");  // [2, 12]: input row, recurrent row
  std::vector<float> swx, swh;
  for (int64_t k = 0; k < 3; ++k) {
    swx.push_back(ops::fake_quant_nudge(state(l, "kernel_min").get_as_double(k),
                                        state(l, "kernel_max").get_as_double(k), 8, true)
                      .scale);
    swh.push_back(ops::fake_quant_nudge(state(l, "recurrent_kernel_min").get_as_double(k),
                                        state(l, "recurrent_kernel_max").get_as_double(k), 8, true)
                      .scale);
  }
  auto code = [](double v, double s) { return static_cast<int32_t>(std::lround(v / s)); };
  auto mbqm = [](int64_t acc, double m) {
    return quant::multiply_by_quantized_multiplier(static_cast<int32_t>(acc),
                                                   quant::quantize_multiplier(m));
  };
  auto s16 = [](int64_t v) { return static_cast<int32_t>(std::clamp<int64_t>(v, -32768, 32767)); };
  auto rdpot = [](int64_t v, int e) {
    return quant::rounding_divide_by_pot(static_cast<int32_t>(v), e);
  };
  const Tensor hq0 = ops::fake_quant_with_min_max_vars(h0, hmin, hmax);
  for (int64_t n = 0; n < 3; ++n) {
    std::vector<int32_t> h(4);
    for (int64_t j = 0; j < 4; ++j) h[j] = code(hq0.get_as_double(n * 4 + j), nh.scale);
    for (int64_t t = 0; t < 2; ++t) {
      // px[col] = sat16(MBQM(q_bx + sum W_x (q_x - zp_x), M_x,g)), and likewise ph[col] on the
      // recurrent side with its own bias; a_z, a_r = sat16(px + MBQM(., M_h,g)) unsaturated.
      std::vector<int32_t> px(12), acc_h(12);
      for (int64_t col = 0; col < 12; ++col) {
        const int64_t g = col / 4;
        const float bsx = swx[g] * nx.scale, bsh = swh[g] * nh.scale;
        int64_t ax = quant::quantize_bias(b.data<float>()[col], bsx);
        int64_t ah = quant::quantize_bias(b.data<float>()[12 + col], bsh);
        for (int64_t d = 0; d < 3; ++d) {
          const Tensor xq = ops::fake_quant_with_min_max_vars(
              Tensor::scalar(x.data<float>()[(n * 2 + t) * 3 + d]), xmin, xmax);
          ax += int64_t{code(xq.get_as_double(0), nx.scale)} *
                code(K.get_as_double(d * 12 + col), swx[g]);
        }
        for (int64_t k = 0; k < 4; ++k)
          ah += int64_t{h[k]} * code(R.get_as_double(k * 12 + col), swh[g]);
        px[col] = s16(mbqm(ax, std::ldexp(double(bsx), 12)));
        acc_h[col] = mbqm(ah, std::ldexp(double(bsh), 12));
      }
      std::vector<int32_t> hn(4);
      for (int64_t j = 0; j < 4; ++j) {
        const int32_t z =
            quant::logistic_int16(static_cast<int16_t>(s16(int64_t{px[j]} + acc_h[j])));
        const int32_t r =
            quant::logistic_int16(static_cast<int16_t>(s16(int64_t{px[4 + j]} + acc_h[4 + j])));
        // hh = tanh(sat16(p_x + RDPOT(r sat16(p_h), 15)))   (Q3.12 in, Q0.15 out)
        const int32_t ph = s16(acc_h[8 + j]);
        const int32_t hh = quant::tanh_int16(
            static_cast<int16_t>(s16(int64_t{px[8 + j]} + rdpot(int64_t{r} * ph, 15))), 3);
        // acc = z (q_h - zp_h) + MBQM((32767 - z) hh, 2^-15 / s_h); h' = clamp8(RDPOT(acc, 15))
        const int64_t acc = int64_t{z} * h[j] +
                            mbqm(int64_t{32767 - z} * hh, std::ldexp(1.0, -15) / double(nh.scale));
        hn[j] =
            std::clamp(rdpot(acc, 15), nh.quant_min - nh.zero_point, nh.quant_max - nh.zero_point);
        EXPECT_EQ(code(got[0].get_as_double((n * 2 + t) * 4 + j), nh.scale), hn[j])
            << n << " " << t << " " << j;
      }
      h = hn;
    }
    for (int64_t j = 0; j < 4; ++j)
      EXPECT_EQ(code(got[1].get_as_double(n * 4 + j), nh.scale), h[j]) << n << " " << j;
  }
}

// x [2, 5, 3] with a mask: row 0 valid at 1, 2, 4; row 1 valid at 0 only.
Tensor step_mask() {
  Tensor m = Tensor::zeros({2, 5}, DType::kBool);
  for (int i : {1, 2, 4, 5}) m.data<bool>()[i] = true;
  return m;
}
Tensor with_garbage(const Tensor& x, const Tensor& m, float v) {
  Tensor g = x.clone();
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t t = 0; t < 5; ++t)
      if (!m.data<bool>()[b * 5 + t])
        for (int64_t f = 0; f < 3; ++f) g.data<float>()[(b * 5 + t) * 3 + f] = v;
  return g;
}

nn::ModelPtr explicit_mask_model(bool gru) {
  nn::reset_layer_names();
  nn::set_random_seed(6);
  KTensor x = nn::Input({5, 3}), m = nn::Input({5}, DType::kBool);
  std::vector<KTensor> out = gru ? (*nn::GRU(4, {.return_sequences = true, .return_state = true}))(
                                       std::vector<KTensor>{x}, {.masks = {m}})
                                 : (*nn::LSTM(4, {.return_sequences = true, .return_state = true}))(
                                       std::vector<KTensor>{x}, {.masks = {m}});
  return nn::Model::create({x, m}, out);
}

TEST(QuantizedRecurrent, MaskedStepsCarryTheQuantizedStateAndIgnorePadding) {
  for (bool gru : {false, true}) {
    SCOPED_TRACE(gru ? "GRU" : "LSTM");
    auto q = quantize_model(*explicit_mask_model(gru));
    auto l = rnn_of(*q, gru ? "gru" : "lstm");
    Rng rng(23);
    const Tensor m = step_mask();
    const Tensor x = random_tensor({2, 5, 3}, rng, -2, 2);
    // Calibrate once so that the ranges are not the initial ones.
    q->predict_on_batch({x, m}, {.training = true});
    std::vector<Tensor> saved;
    for (const auto& w : l->weights()) saved.push_back(w.value.clone());
    std::vector<Tensor> ref = q->predict_on_batch({x, m});
    const Tensor y = ref[0];
    // Row 0: step 0 masked before any valid step -> zeros; step 3 repeats step 2 bit for bit.
    for (int64_t u = 0; u < 4; ++u) {
      EXPECT_EQ(y.data<float>()[u], 0.0f);
      EXPECT_EQ(y.data<float>()[(3) * 4 + u], y.data<float>()[(2) * 4 + u]);
      // Row 1: valid only at 0; the final h is the step-0 output, carried bit for bit.
      EXPECT_EQ(ref[1].data<float>()[4 + u], y.data<float>()[(5 + 0) * 4 + u]);
      EXPECT_EQ(y.data<float>()[(5 + 4) * 4 + u], y.data<float>()[(5 + 0) * 4 + u]);
    }
    // Garbage at padded steps changes nothing, in inference and in training (outputs and
    // tracked ranges alike).
    for (float v : {1e30f, -3e38f, NAN}) {
      for (size_t k = 0; k < saved.size(); ++k) l->weights()[k].value.copy_from(saved[k]);
      const Tensor xg = with_garbage(x, m, v);
      std::vector<Tensor> got = q->predict_on_batch({xg, m});
      for (size_t k = 0; k < ref.size(); ++k) EXPECT_TRUE(tensors_equal(got[k], ref[k])) << v;
      std::vector<Tensor> before;
      for (const auto& w : l->weights()) before.push_back(w.value.clone());
      std::vector<Tensor> tr_clean = q->predict_on_batch({x, m}, {.training = true});
      std::vector<Tensor> after_clean;
      for (auto& w : l->weights()) {
        after_clean.push_back(w.value.clone());
      }
      for (size_t k = 0; k < before.size(); ++k) l->weights()[k].value.copy_from(before[k]);
      std::vector<Tensor> tr_garbage = q->predict_on_batch({xg, m}, {.training = true});
      for (size_t k = 0; k < ref.size(); ++k)
        EXPECT_TRUE(tensors_equal(tr_garbage[k], tr_clean[k]));
      for (size_t k = 0; k < before.size(); ++k)
        EXPECT_TRUE(tensors_equal(l->weights()[k].value, after_clean[k])) << l->weights()[k].name;
    }
    // Gradients: padded garbage gives finite, identical weight gradients (via fit below) -- and
    // a batch without any valid step leaves every tracker unchanged in training mode.
    for (size_t k = 0; k < saved.size(); ++k) l->weights()[k].value.copy_from(saved[k]);
    q->predict_on_batch({x, Tensor::zeros({2, 5}, DType::kBool)}, {.training = true});
    for (size_t k = 0; k < saved.size(); ++k)
      EXPECT_TRUE(tensors_equal(l->weights()[k].value, saved[k])) << l->weights()[k].name;
  }
}

TEST(QuantizedRecurrent, PaddedGarbageLeavesTrainingStepsUnchanged) {
  // Two identical models (x, mask) -> LSTM -> Dense trained one epoch on the same batches, once
  // with zeros and once with Inf/NaN garbage at the masked steps: identical weights afterwards
  // (the gradients through masked steps are exactly zero, never NaN * 0).
  auto make = [] {
    nn::reset_layer_names();
    nn::set_random_seed(41);
    KTensor x = nn::Input({5, 3}), m = nn::Input({5}, DType::kBool);
    KTensor h = (*nn::LSTM(4))(std::vector<KTensor>{x}, {.masks = {m}}).at(0);
    auto q = quantize_model(*nn::Model::create({x, m}, {(*nn::Dense(1))(h)}));
    q->compile({.optimizer = nn::Adam({.learning_rate = 1e-2}), .loss = nn::MeanSquaredError()});
    return q;
  };
  auto a = make(), b = make();
  // The LSTM reads the model input x directly and quantizes it itself: no input FakeQuant.
  for (const auto& l : a->layers()) EXPECT_NE(l->name(), "input_layer_quant");
  Rng rng(43);
  Tensor x = random_tensor({4, 5, 3}, rng, -1, 1), y = random_tensor({4, 1}, rng, -1, 1);
  Tensor m = Tensor::zeros({4, 5}, DType::kBool);
  for (int64_t i = 0; i < 20; ++i) m.data<bool>()[i] = (i * 7) % 3 != 0;
  Tensor xg = x.clone();
  for (int64_t i = 0; i < 20; ++i)
    if (!m.data<bool>()[i])
      for (int64_t f = 0; f < 3; ++f) {
        x.data<float>()[i * 3 + f] = 0;
        xg.data<float>()[i * 3 + f] = f == 0 ? NAN : (f == 1 ? INFINITY : -1e38f);
      }
  for (auto& [model, input] : {std::pair{a, x}, std::pair{b, xg}})
    model->fit(data::Dataset::from_tensors({input, m}, {y}),
               {.epochs = 2, .batch_size = 2, .shuffle = false, .verbose = 0});
  auto wa = a->named_weights(), wb = b->named_weights();
  ASSERT_EQ(wa.size(), wb.size());
  for (size_t k = 0; k < wa.size(); ++k) {
    EXPECT_TRUE(tensors_equal(wa[k].second->value, wb[k].second->value)) << wa[k].first;
    for (int64_t e = 0;
         e < wa[k].second->value.numel() && wa[k].second->value.dtype() == DType::kF32; ++e)
      ASSERT_TRUE(std::isfinite(wa[k].second->value.get_as_double(e))) << wa[k].first;
  }
}

TEST(QuantizedRecurrent, StateQuantizersAreIdempotentOnTheirGrids) {
  // A carried (masked-step) value is a grid point: re-quantizing it must not move it (spec 3.7).
  Rng rng(47);
  for (int trial = 0; trial < 50; ++trial) {
    const float lo = rng.uniform(-4, 0), hi = rng.uniform(1e-3f, 4);
    Tensor x = random_tensor({301}, rng, -6, 6);
    const Tensor mn = Tensor::scalar(lo), mx = Tensor::scalar(hi);
    Tensor y = ops::fake_quant_with_min_max_vars(x, mn, mx);
    ASSERT_TRUE(tensors_equal(ops::fake_quant_with_min_max_vars(y, mn, mx), y)) << lo << " " << hi;
    for (int e : {-15, -13, -9}) {
      Tensor c = ops::fake_quant_pot(x, e);
      ASSERT_TRUE(tensors_equal(ops::fake_quant_pot(c, e), c));
    }
  }
}

TEST(QuantizedRecurrent, TrackersUpdateOnlyInTrainingModeAndFromValidSteps) {
  auto q = quantize_model(*explicit_mask_model(false));
  q->allow_uncalibrated = true;  // inference on the initial ranges, on purpose
  auto l = rnn_of(*q, "lstm");
  Rng rng(29);
  const Tensor m = step_mask();
  const Tensor x = random_tensor({2, 5, 3}, rng, -2, 2);
  const Tensor x0 = state(*l, "x_max").clone(), h0 = state(*l, "h_max").clone();
  const Tensor c0 = state(*l, "cell_max_abs").clone();
  q->predict_on_batch({x, m});  // inference: read only
  EXPECT_TRUE(tensors_equal(state(*l, "x_max"), x0));
  EXPECT_TRUE(tensors_equal(state(*l, "h_max"), h0));
  EXPECT_TRUE(tensors_equal(state(*l, "cell_max_abs"), c0));
  q->predict_on_batch({x, m}, {.training = true});
  // x: EMA toward the batch max over VALID steps only.
  float vmax = 0;
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t t = 0; t < 5; ++t)
      if (m.data<bool>()[b * 5 + t])
        for (int64_t f = 0; f < 3; ++f) vmax = std::max(vmax, x.data<float>()[(b * 5 + t) * 3 + f]);
  const float want = 6.0f - (6.0f - vmax) * static_cast<float>(1.0 - 0.999);
  EXPECT_EQ(state(*l, "x_max").item<float>(), want);
  EXPECT_NE(state(*l, "h_max").item<float>(), h0.item<float>());
  EXPECT_NE(state(*l, "cell_max_abs").item<float>(), c0.item<float>());
}

// quant_delay: the first training steps run the float cell (the float layer's outputs) while the
// trackers move; then the integer step. freeze_after: the trackers stop after that many steps.
TEST(QuantizedRecurrent, QuantDelayRunsTheFloatCellFirstAndFreezeAfterStopsTheTrackers) {
  for (bool gru : {false, true}) {
    SCOPED_TRACE(gru ? "GRU" : "LSTM");
    auto fl = explicit_mask_model(gru);
    QuantizeConfig cfg;
    cfg.quant_delay = 2;
    cfg.activations.freeze_after = 3;
    auto q = quantize_model(*fl, cfg);
    q->allow_uncalibrated = true;  // inference on the initial ranges, on purpose
    auto l = rnn_of(*q, gru ? "gru" : "lstm");
    EXPECT_EQ(l->quant_delay(), 2);
    Rng rng(31);
    const Tensor m = step_mask();
    const Tensor x = random_tensor({2, 5, 3}, rng, -2, 2);
    const std::vector<Tensor> want = fl->predict_on_batch({x, m});
    std::vector<Tensor> x_max;
    for (int step = 0; step < 5; ++step) {
      const std::vector<Tensor> got = q->predict_on_batch({x, m}, {.training = true});
      x_max.push_back(state(*l, "x_max").clone());
      ASSERT_EQ(got.size(), want.size());
      for (size_t k = 0; k < got.size(); ++k) {
        SCOPED_TRACE("step " + std::to_string(step) + ", output " + std::to_string(k));
        if (step < 2)  // float warm-up: the float layer's numbers (unrolled ops vs fused kernel)
          EXPECT_TRUE(testing::tensors_near(got[k], want[k], 2e-5, 2e-5));
        else  // quantized: h on its int8 grid, no longer the float numbers
          EXPECT_FALSE(testing::tensors_near(got[k], want[k], 1e-4, 0));
      }
    }
    // Trackers ran during the delay (steps 0, 1), moved at step 2, then froze (steps 3, 4).
    EXPECT_LT(x_max[0].item<float>(), 6.0f);
    EXPECT_LT(x_max[1].item<float>(), x_max[0].item<float>());
    EXPECT_LT(x_max[2].item<float>(), x_max[1].item<float>());
    EXPECT_EQ(x_max[3].item<float>(), x_max[2].item<float>());
    EXPECT_EQ(x_max[4].item<float>(), x_max[2].item<float>());
    // Inference always quantizes; the setting survives save/load.
    const auto dir = std::filesystem::temp_directory_path() / "lowbit_qrnn_delay";
    std::filesystem::create_directories(dir);
    const std::string path = (dir / (gru ? "gru.lbm" : "lstm.lbm")).string();
    q->save(path);
    auto r = nn::load_model(path);
    EXPECT_EQ(rnn_of(*r, gru ? "gru" : "lstm")->quant_delay(), 2);
    const std::vector<Tensor> a = q->predict_on_batch({x, m}), b = r->predict_on_batch({x, m});
    for (size_t k = 0; k < a.size(); ++k) EXPECT_TRUE(tensors_equal(a[k], b[k]));
  }
}

// Bidirectional(LSTM/GRU): two quantized directions with the float wrapper's merge, masks and
// output order; the weights are the float directions' weights.
TEST(QuantizedRecurrent, BidirectionalBecomesTwoQuantizedDirections) {
  for (bool gru : {false, true}) {
    SCOPED_TRACE(gru ? "GRU" : "LSTM");
    nn::reset_layer_names();
    nn::set_random_seed(8);
    KTensor x = nn::Input({5, 3}), m = nn::Input({5}, DType::kBool);
    nn::LayerPtr cell =
        gru ? nn::GRU(4, {.return_sequences = true}) : nn::LSTM(4, {.return_sequences = true});
    nn::LayerPtr bi = nn::Bidirectional(cell, {.merge_mode = "none"});
    std::vector<KTensor> y = (*bi)(std::vector<KTensor>{x}, {.masks = {m}});
    auto fl = nn::Model::create({x, m}, y);
    auto q = quantize_model(*fl);
    q->allow_uncalibrated = true;  // inference on the initial ranges, on purpose
    const std::string inner = gru ? "gru" : "lstm";
    const std::vector<std::string> want = {"input_layer:InputLayer",
                                           "bidirectional:QuantizedBidirectional<-input_layer"};
    EXPECT_EQ(structure(*q), want);
    auto qb = std::dynamic_pointer_cast<QuantizedBidirectionalLayer>(q->get_layer("bidirectional"));
    ASSERT_TRUE(qb);
    auto fwd = qb->forward_layer(), bwd = qb->backward_layer();
    EXPECT_EQ(fwd->class_name(), gru ? "QuantizedGRU" : "QuantizedLSTM");
    // The float directions' weights, copied.
    for (const nn::Weight& w : fl->get_layer("bidirectional")->weights()) {
      const bool is_fwd = w.name.rfind("forward_", 0) == 0;
      auto& dir = is_fwd ? fwd : bwd;
      EXPECT_TRUE(
          tensors_equal(inner_weight_of(*dir, w.name.substr(w.name.find('/') + 1)), w.value))
          << w.name;
    }
    // Each output is its direction computed alone (the backward one flipped to input order).
    Rng rng(12);
    const Tensor xs = random_tensor({2, 5, 3}, rng, -2, 2), ms = step_mask();
    const std::vector<Tensor> got = q->predict_on_batch({xs, ms});
    ASSERT_EQ(got.size(), 2u);
    auto alone = [&](const std::shared_ptr<QuantizedRecurrentLayer>& l) {
      KTensor x2 = nn::Input({5, 3}), m2 = nn::Input({5}, DType::kBool);
      auto mm = nn::Model::create({x2, m2}, (*l)(std::vector<KTensor>{x2}, {.masks = {m2}}));
      mm->allow_uncalibrated = true;
      return mm->predict_on_batch({xs, ms}).at(0);
    };
    EXPECT_TRUE(tensors_equal(got[0], alone(fwd)));
    const Tensor b = alone(bwd);
    EXPECT_TRUE(tensors_equal(
        got[1], ops::slice(b, {0, ops::kSliceMax}, {ops::kSliceMax, ops::kSliceMin}, {1, -1})));
    // Masked steps output zeros (Keras forces zero_output_for_mask in Bidirectional).
    EXPECT_EQ(got[0].get_as_double(0), 0.0);  // row 0, step 0 is masked
    EXPECT_NE(got[0].get_as_double(1 * 4), 0.0);
    // Save/load: same class, bit-identical predictions.
    const auto dir = std::filesystem::temp_directory_path() / "lowbit_qbidir";
    std::filesystem::create_directories(dir);
    const std::string path = (dir / (inner + ".lbm")).string();
    q->save(path);
    auto r = nn::load_model(path);
    r->allow_uncalibrated = true;
    const std::vector<Tensor> again = r->predict_on_batch({xs, ms});
    for (size_t k = 0; k < got.size(); ++k) EXPECT_TRUE(tensors_equal(again[k], got[k]));
  }
  // A merged output gets one FakeQuant after it, and trains.
  nn::reset_layer_names();
  KTensor x = nn::Input({5, 3});
  KTensor h = (*nn::Bidirectional(nn::LSTM(4)))((*nn::Masking())(x));
  auto fl = nn::Model::create({x}, {(*nn::Dense(2))(h)});
  auto q = quantize_model(*fl);
  const std::vector<std::string> want = {"input_layer:InputLayer",
                                         "masking:Masking<-input_layer",
                                         "bidirectional:QuantizedBidirectional<-masking",
                                         "bidirectional_quant:FakeQuant<-bidirectional",
                                         "dense:QuantizeWrapper<-bidirectional_quant",
                                         "dense_quant:FakeQuant<-dense"};
  EXPECT_EQ(structure(*q), want);
  q->compile({.optimizer = nn::Adam({.learning_rate = 1e-2}),
              .loss = nn::SparseCategoricalCrossentropy({.from_logits = true})});
  Rng rng(3);
  const Tensor xs = random_tensor({32, 5, 3}, rng, -1, 1);
  Tensor ys = Tensor::zeros({32}, DType::kS64);
  for (int64_t i = 0; i < 32; ++i) ys.data<int64_t>()[i] = xs.data<float>()[i * 15] > 0 ? 1 : 0;
  nn::History hist = q->fit(xs, ys, {.epochs = 15, .batch_size = 8, .verbose = 0});
  EXPECT_LT(hist.history.at("loss").back(), 0.8 * hist.history.at("loss").front());
}

TEST(QuantizedRecurrent, MaskedSequenceTaskTrainsAndSaveLoadIsBitExact) {
  for (bool gru : {false, true}) {
    SCOPED_TRACE(gru ? "GRU" : "LSTM");
    auto fm = masked_model(gru);  // Masking -> LSTM/GRU(4) -> Dense(2)
    auto q = quantize_model(*fm);
    q->compile({.optimizer = nn::Adam({.learning_rate = 2e-2}), .loss = nn::MeanSquaredError()});
    // Target: the mean of feature 0 and the last valid value of feature 1 (padding: zeros).
    Rng rng(31);
    const int64_t n = 48;
    Tensor x = random_tensor({n, 5, 3}, rng, -1, 1), y = Tensor::zeros({n, 2});
    for (int64_t b = 0; b < n; ++b) {
      const int64_t len = 2 + b % 4;
      double s = 0, last = 0;
      for (int64_t t = 0; t < 5; ++t)
        for (int64_t f = 0; f < 3; ++f) {
          float& v = x.data<float>()[(b * 5 + t) * 3 + f];
          if (t >= len) v = 0;
          if (t < len && f == 0) s += v;
          if (t < len && f == 1) last = v;
        }
      y.data<float>()[b * 2] = static_cast<float>(s / len);
      y.data<float>()[b * 2 + 1] = static_cast<float>(last);
    }
    nn::History h = q->fit(x, y, {.epochs = 25, .batch_size = 16, .verbose = 0});
    const auto& loss = h.history.at("loss");
    EXPECT_LT(loss.back(), 0.7 * loss.front()) << loss.front() << " -> " << loss.back();
    const std::string path =
        (std::filesystem::temp_directory_path() / (gru ? "qgru_test.lbm" : "qlstm_test.lbm"))
            .string();
    q->save(path);
    nn::ModelPtr r = nn::load_model(path);
    std::filesystem::remove(path);
    EXPECT_TRUE(tensors_equal(r->predict(x), q->predict(x)));
    auto a = rnn_of(*q, gru ? "gru" : "lstm"), b = rnn_of(*r, gru ? "gru" : "lstm");
    ASSERT_EQ(a->weights().size(), b->weights().size());
    for (size_t k = 0; k < a->weights().size(); ++k)
      EXPECT_TRUE(tensors_equal(a->weights()[k].value, b->weights()[k].value));
  }
}

TEST(QuantizedRecurrent, OptionsAndErrors) {
  // GRU reset_after = false, go_backwards and dropout run; the output stays on h's grid.
  for (bool reset_after : {true, false}) {
    auto q = quantize_model(*masked_model(true, {},
                                          {.dropout = 0.2,
                                           .recurrent_dropout = 0.3,
                                           .reset_after = reset_after,
                                           .return_sequences = true,
                                           .go_backwards = true}));
    Rng rng(37);
    Tensor x = random_tensor({2, 5, 3}, rng, -1, 1);
    q->predict_on_batch({x}, {.training = true});
    auto l = rnn_of(*q, "gru");
    Graph g;
    nn::CallContext ctx(g, false);
    Value in = g.placeholder("x", DType::kF32, Shape{kUnknown, 5, 3});
    Value out = l->apply({in}, ctx)[0];
    Tensor y = Executor(g, {out}).run({{in, x}})[0];
    EXPECT_TRUE(tensors_equal(
        ops::fake_quant_with_min_max_vars(y, state(*l, "h_min"), state(*l, "h_max")), y));
  }
  testing::expect_throws_with<ValueError>([] { QuantizedRecurrent(nn::Dense(3)); },
                                          "expected an LSTM or GRU layer");
  testing::expect_throws_with<UnsupportedError>(
      [] { QuantizedRecurrent(nn::LSTM(3, {.activation = "relu"})); },
      "activation tanh and recurrent_activation sigmoid");
  QuantizerConfig pact{.scheme = "pact"};
  testing::expect_throws_with<UnsupportedError>([&] { QuantizedRecurrent(nn::GRU(3), pact); },
                                                "scheme 'tf'");
  nn::reset_layer_names();
  KTensor x = nn::Input({kUnknown, 3});
  testing::expect_throws_with<UnsupportedError>([&] { (*QuantizedRecurrent(nn::LSTM(2)))(x); },
                                                "number of timesteps must be known");
}

}  // namespace
}  // namespace lowbit::quant
