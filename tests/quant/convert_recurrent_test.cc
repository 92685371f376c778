// convert_to_integer of QuantizedLSTM / QuantizedGRU (spec 3.7, "8x8_16") with timestep masks:
// Masking -> LSTM/GRU -> Dense models, QAT-trained for one short epoch on sequences with padded
// (masked) steps, converted to timestep_mask + qlstm/qgru + qfully_connected. The integer
// recurrent layer's output codes are compared with the QAT layer's own (its outputs are on h's
// int8 grid): >= 99.9% equal, none off by more than one code. Also the qlstm/qgru reference
// kernel on hand-made cases (masks), its argument checks, the .lbi round trip and the
// loader's validation, and the refusals.
//
// The QAT layer's forward is the integer step's arithmetic (int32 biases, (M0, shift)
// multipliers, exact products of codes, the op's tie rule and saturation: recurrent.h), so the
// codes are expected to be equal; the bound (>= 99.9%, none off by more than one code) leaves
// room only for the float input's quantization (the quantize op divides by the scale, the fake
// quant subtracts nudged_min first: the two can differ for an x within f32 rounding of a tie).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>

#include "lowbit/graph.h"
#include "lowbit/io/safetensors.h"
#include "lowbit/nn/layers.h"
#include "lowbit/nn/losses.h"
#include "lowbit/nn/masking.h"
#include "lowbit/nn/optimizers.h"
#include "lowbit/ops.h"
#include "lowbit/ops/int8.h"
#include "lowbit/quant/convert.h"
#include "lowbit/quant/quantize_model.h"
#include "lowbit/quant/recurrent.h"
#include "testing/convert_testing.h"
#include "testing/op_testing.h"

namespace lowbit {
namespace {

using testing::expect_throws_with;
using testing::find_output;
using testing::random_tensor;

constexpr int64_t kT = 8, kF = 3;

struct Rnn {
  bool gru = false, reset_after = true, sequences = true, backwards = false, zero_output = false;
  bool masking = true;
};

std::string describe(const Rnn& r) {
  std::string s = r.gru ? (r.reset_after ? "GRU(reset_after)" : "GRU(reset_before)") : "LSTM";
  s += r.sequences ? " sequences" : " last";
  if (r.backwards) s += " go_backwards";
  if (r.zero_output) s += " zero_output_for_mask";
  if (!r.masking) s += " no mask";
  return s;
}

// x f32 [n, T, 3] in [-1, 1.5]; with masks: each step all-zero (masked) with p = 0.25, some rows
// entirely masked, some with a masked prefix.
Tensor sequences(int64_t n, uint64_t seed, bool masks) {
  Rng rng(seed);
  Tensor x = random_tensor({n, kT, kF}, rng, -1.0f, 1.5f);
  if (!masks) return x;
  float* p = x.data<float>();
  for (int64_t b = 0; b < n; ++b)
    for (int64_t t = 0; t < kT; ++t) {
      const bool pad = b % 17 == 3 || (b % 5 == 1 && t < 3) || rng.uniform() < 0.25f;
      if (pad)
        for (int64_t f = 0; f < kF; ++f) p[(b * kT + t) * kF + f] = 0.0f;
    }
  return x;
}

Shape with_batch(const Shape& s, int64_t n) {
  std::vector<int64_t> d = s.dims();
  d[0] = n;
  return Shape(d);
}

// (Masking) -> LSTM/GRU(6) -> Dense(2), QAT for one epoch of 384 sequences.
nn::ModelPtr trained_qat(const Rnn& r) {
  nn::reset_layer_names();
  nn::set_random_seed(3);
  nn::KTensor x = nn::Input({kT, kF});
  nn::KTensor h = r.masking ? (*nn::Masking())(x) : x;
  h = r.gru ? (*nn::GRU(6, {.reset_after = r.reset_after,
                            .return_sequences = r.sequences,
                            .go_backwards = r.backwards,
                            .zero_output_for_mask = r.zero_output}))(h)
            : (*nn::LSTM(6, {.return_sequences = r.sequences,
                             .go_backwards = r.backwards,
                             .zero_output_for_mask = r.zero_output}))(h);
  nn::KTensor y = (*nn::Dense(2))(h);
  auto f = nn::Model::create({x}, {y}, "rnn");
  auto q = quant::quantize_model(*f);
  q->compile({.optimizer = nn::Adam({.learning_rate = 0.01}), .loss = nn::MeanSquaredError()});
  const Tensor xs = sequences(384, 11, r.masking);
  Rng rng(12);
  const Tensor ys = random_tensor(with_batch(y.shape(), 384), rng, -1.0f, 1.0f);
  q->fit(xs, ys, {.epochs = 1, .batch_size = 64, .verbose = 0});
  return q;
}

// Codes of `out` on t's grid.
std::vector<int> codes_of(const Tensor& out, const quant::IntegerTensor& t) {
  std::vector<int> c(out.numel());
  for (int64_t e = 0; e < out.numel(); ++e)
    c[e] = static_cast<int>(std::clamp<double>(
        std::round(out.data<float>()[e] / t.scale[0]) + t.zero_point[0], -128.0, 127.0));
  return c;
}

int op_index(const quant::IntegerModel& im, const std::string& op) {
  for (size_t i = 0; i < im.ops.size(); ++i)
    if (im.ops[i].op == op) return static_cast<int>(i);
  return -1;
}

void expect_recurrent_agreement(const Rnn& r, double min_equal = 0.999) {
  SCOPED_TRACE(describe(r));
  auto q = trained_qat(r);
  quant::IntegerModel im = quant::convert_to_integer(*q);
  const std::string rop = r.gru ? "qgru" : "qlstm";
  std::vector<std::string> kinds;
  for (const auto& op : im.ops) kinds.push_back(op.op);
  std::vector<std::string> want{"quantize", rop, "qfully_connected", "dequantize"};
  if (r.masking) want.insert(want.begin(), "timestep_mask");
  EXPECT_EQ(kinds, want);
  const int k = op_index(im, rop);
  ASSERT_GE(k, 0);
  EXPECT_EQ(im.ops[k].inputs.size(), (r.gru ? 5u : 4u) + (r.masking ? 1u : 0u));

  // The last output alone has few codes (6 per sequence): more sequences then.
  const Tensor x = sequences(r.sequences ? 512 : 2048, 99, r.masking);
  const std::string name = r.gru ? "gru" : "lstm";
  auto probe = nn::Model::create(q->inputs(), {find_output(*q, name)}, "probe");
  const Tensor want_h = probe->predict(x, 256);
  const std::vector<Tensor> all = im.run_all(x);
  const quant::IntegerTensor& ht = im.tensors[im.ops[k].output];
  const Tensor& got = all[im.ops[k].output];
  ASSERT_EQ(got.shape(), want_h.shape());
  const std::vector<int> w = codes_of(want_h, ht);
  int64_t equal = 0, worst = 0;
  for (int64_t e = 0; e < got.numel(); ++e) {
    const int64_t d = std::llabs(int64_t{got.data<int8_t>()[e]} - w[e]);
    equal += d == 0;
    worst = std::max(worst, d);
  }
  const double frac = static_cast<double>(equal) / static_cast<double>(got.numel());
  std::printf("%s: %lld of %lld output codes equal (%.5f), max difference %lld\n",
              describe(r).c_str(), static_cast<long long>(equal),
              static_cast<long long>(got.numel()), frac, static_cast<long long>(worst));
  EXPECT_GE(frac, min_equal) << equal << " of " << got.numel();
  EXPECT_LE(worst, 1);
  // The codes are not trivially constant: the layer computes something.
  int64_t distinct = 0;
  std::vector<bool> seen(256, false);
  for (int64_t e = 0; e < got.numel(); ++e) {
    const int c = got.data<int8_t>()[e] + 128;
    distinct += !seen[c];
    seen[c] = true;
  }
  EXPECT_GE(distinct, 10);
  // End to end the dequantized outputs agree with the QAT model's to about one output step.
  const Tensor yq = q->predict(x, 256), yi = im.predict(x, 256);
  const quant::IntegerTensor& ot = im.tensors[im.ops[im.ops.size() - 1].inputs[0]];
  double worst_y = 0;
  int64_t off = 0;
  for (int64_t e = 0; e < yq.numel(); ++e) {
    const double d = std::fabs(yq.data<float>()[e] - yi.data<float>()[e]);
    worst_y = std::max(worst_y, d);
    off += d > 0.5 * ot.scale[0];
  }
  EXPECT_LE(worst_y, 3.01 * ot.scale[0]);
  EXPECT_LE(static_cast<double>(off) / static_cast<double>(yq.numel()), 0.01);
}

TEST(ConvertRecurrent, LstmSequencesMaskedAgreesWithQat) {
  expect_recurrent_agreement({.gru = false, .sequences = true});
}
TEST(ConvertRecurrent, LstmLastGoBackwardsMaskedAgreesWithQat) {
  expect_recurrent_agreement({.gru = false, .sequences = false, .backwards = true});
}
TEST(ConvertRecurrent, LstmSequencesGoBackwardsZeroOutputAgreesWithQat) {
  expect_recurrent_agreement(
      {.gru = false, .sequences = true, .backwards = true, .zero_output = true});
}
TEST(ConvertRecurrent, LstmWithoutMaskAgreesWithQat) {
  expect_recurrent_agreement({.gru = false, .sequences = false, .masking = false});
}
TEST(ConvertRecurrent, GruResetAfterSequencesMaskedAgreesWithQat) {
  expect_recurrent_agreement({.gru = true, .reset_after = true, .sequences = true});
}
TEST(ConvertRecurrent, GruResetAfterLastGoBackwardsAgreesWithQat) {
  expect_recurrent_agreement(
      {.gru = true, .reset_after = true, .sequences = false, .backwards = true});
}
TEST(ConvertRecurrent, GruResetBeforeSequencesMaskedAgreesWithQat) {
  expect_recurrent_agreement({.gru = true, .reset_after = false, .sequences = true});
}
TEST(ConvertRecurrent, GruResetBeforeLastUnmaskedAgreesWithQat) {
  expect_recurrent_agreement(
      {.gru = true, .reset_after = false, .sequences = false, .masking = false});
}

// Masking -> Bidirectional(LSTM/GRU(6), merge) -> Dense(2): the merged output (on the grid of
// the FakeQuant quantize_model puts after the merge) against the integer model's.
void expect_bidirectional_agreement(bool gru, const std::string& merge, bool seq) {
  SCOPED_TRACE(std::string(gru ? "GRU " : "LSTM ") + merge + (seq ? " sequences" : " last"));
  nn::reset_layer_names();
  nn::set_random_seed(4);
  nn::KTensor x = nn::Input({kT, kF});
  nn::KTensor h = (*nn::Masking())(x);
  nn::LayerPtr inner =
      gru ? nn::GRU(6, {.return_sequences = seq}) : nn::LSTM(6, {.return_sequences = seq});
  h = (*nn::Bidirectional(inner, {.merge_mode = merge}))(h);
  nn::KTensor y = (*nn::Dense(2))(h);
  auto f = nn::Model::create({x}, {y}, "birnn");
  auto q = quant::quantize_model(*f);
  q->compile({.optimizer = nn::Adam({.learning_rate = 0.01}), .loss = nn::MeanSquaredError()});
  const Tensor xs = sequences(384, 11, true);
  Rng rng(12);
  q->fit(xs, random_tensor(with_batch(y.shape(), 384), rng, -1.0f, 1.0f),
         {.epochs = 1, .batch_size = 64, .verbose = 0});
  quant::IntegerModel im = quant::convert_to_integer(*q);
  const std::string rop = gru ? "qgru" : "qlstm";
  std::vector<std::string> kinds;
  for (const auto& op : im.ops) kinds.push_back(op.op);
  std::vector<std::string> want{"timestep_mask", "quantize", rop, "quantize", rop};
  if (merge == "concat")
    want.insert(want.end(), {"requantize", "requantize", "concat"});
  else
    want.push_back("qadd");
  want.insert(want.end(), {"qfully_connected", "dequantize"});
  EXPECT_EQ(kinds, want);
  EXPECT_EQ(im.ops[4].attrs.b("go_backwards", false), true);
  EXPECT_EQ(im.ops[4].attrs.b("reverse_output", false), seq);
  const int k = op_index(im, merge == "concat" ? "concat" : "qadd");
  ASSERT_GE(k, 0);

  const Tensor xt = sequences(seq ? 512 : 2048, 99, true);
  auto probe = nn::Model::create(q->inputs(), {find_output(*q, "bidirectional_quant")}, "probe");
  const Tensor want_h = probe->predict(xt, 256);
  const std::vector<Tensor> all = im.run_all(xt);
  const quant::IntegerTensor& ht = im.tensors[im.ops[k].output];
  const Tensor& got = all[im.ops[k].output];
  ASSERT_EQ(got.shape(), want_h.shape());
  const std::vector<int> w = codes_of(want_h, ht);
  int64_t equal = 0, worst = 0;
  for (int64_t e = 0; e < got.numel(); ++e) {
    const int64_t d = std::llabs(int64_t{got.data<int8_t>()[e]} - w[e]);
    equal += d == 0;
    worst = std::max(worst, d);
  }
  const double frac = static_cast<double>(equal) / static_cast<double>(got.numel());
  std::printf(
      "Bidirectional(%s) %s%s: %lld of %lld output codes equal (%.5f), max difference %lld\n",
      gru ? "GRU" : "LSTM", merge.c_str(), seq ? " sequences" : " last",
      static_cast<long long>(equal), static_cast<long long>(got.numel()), frac,
      static_cast<long long>(worst));
  EXPECT_GE(frac, 0.999) << equal << " of " << got.numel();
  EXPECT_LE(worst, 1);
  // End to end.
  const Tensor yq = q->predict(xt, 256), yi = im.predict(xt, 256);
  const quant::IntegerTensor& ot = im.tensors[im.ops[im.ops.size() - 1].inputs[0]];
  int64_t off = 0;
  for (int64_t e = 0; e < yq.numel(); ++e)
    off += std::fabs(yq.data<float>()[e] - yi.data<float>()[e]) > 0.5 * ot.scale[0];
  // the Dense after it: its own (float bias) rounding, as above
  EXPECT_LE(static_cast<double>(off) / static_cast<double>(yq.numel()), 0.01);
}

TEST(ConvertRecurrent, BidirectionalLstmConcatSequencesAgreesWithQat) {
  expect_bidirectional_agreement(false, "concat", true);
}
TEST(ConvertRecurrent, BidirectionalGruConcatLastAgreesWithQat) {
  expect_bidirectional_agreement(true, "concat", false);
}
TEST(ConvertRecurrent, BidirectionalLstmSumLastAgreesWithQat) {
  expect_bidirectional_agreement(false, "sum", false);
}
TEST(ConvertRecurrent, BidirectionalGruAveSequencesAgreesWithQat) {
  expect_bidirectional_agreement(true, "ave", true);
}

// ---- the op on hand-made cases ----

Attrs lstm_attrs(bool sequences, bool backwards = false, bool zero_output = false) {
  return {{"input_scale", 0.01},
          {"input_zero_point", int64_t{-3}},
          {"hidden_scale", 1.0 / 128},
          {"hidden_zero_point", int64_t{0}},
          {"input_weight_scales", std::vector<double>{0.01, 0.01, 0.01, 0.01}},
          {"recurrent_weight_scales", std::vector<double>{0.01, 0.01, 0.01, 0.01}},
          {"cell_int_bits", int64_t{1}},
          {"return_sequences", sequences},
          {"go_backwards", backwards},
          {"zero_output_for_mask", zero_output}};
}

// One unit, one feature: x codes with zero point -3, the input gate block weight 100 (others
// 0), biases 0: a_i = MBQM(100 (q - zp), 0.01 * 0.01 * 2^12) etc., computed here by the spec's
// formulas independently of the kernel's loops.
int8_t lstm_step_by_hand(int32_t q_x, int32_t& c, int32_t h, int p) {
  const double m = 0.01 * 0.01 * 4096.0;  // f32(s_W s_x) / 2^-12
  auto mbqm = [](int32_t acc, double mult) {
    return quant::multiply_by_quantized_multiplier(acc, quant::quantize_multiplier(mult));
  };
  const int32_t wi = 100, wf = 50, wc = -80, wo = 30, rw = 20;
  auto gate = [&](int32_t w) {
    const int32_t px = std::clamp(mbqm(w * (q_x + 3), m), -32768, 32767);
    return std::clamp(px + mbqm(rw * h, 0.01 / 128 * 4096.0), -32768, 32767);
  };
  const int32_t i = quant::logistic_int16(static_cast<int16_t>(gate(wi)));
  const int32_t f = quant::logistic_int16(static_cast<int16_t>(gate(wf)));
  const int32_t g = quant::tanh_int16(static_cast<int16_t>(gate(wc)), 3);
  const int32_t o = quant::logistic_int16(static_cast<int16_t>(gate(wo)));
  c = std::clamp(
      quant::rounding_divide_by_pot(f * c, 15) + quant::rounding_divide_by_pot(i * g, 15 + p),
      -32768, 32767);
  const int32_t th = quant::tanh_int16(static_cast<int16_t>(c), p);
  return static_cast<int8_t>(std::clamp(mbqm(o * th, std::ldexp(1.0, -30) * 128.0), -128, 127));
}

TEST(QLstmOp, OneUnitStepsAndMasksByHand) {
  testing::note_reference_tested("qlstm");
  Tensor wx({1, 4}, DType::kS8), wh({1, 4}, DType::kS8);
  const int8_t wxv[4] = {100, 50, -80, 30};
  for (int g = 0; g < 4; ++g) {
    wx.data<int8_t>()[g] = wxv[g];
    wh.data<int8_t>()[g] = 20;
  }
  Tensor bias = Tensor::zeros({4}, DType::kS32);
  Tensor x({2, 4, 1}, DType::kS8);
  const int8_t xv[8] = {90, -100, 40, 127, 60, 60, -128, 5};
  std::copy(xv, xv + 8, x.data<int8_t>());
  Tensor mask({2, 4}, DType::kBool);
  const bool mv[8] = {true, false, true, true, false, false, true, false};
  std::copy(mv, mv + 8, mask.data<bool>());
  for (bool zero_output : {false, true}) {
    const Tensor y =
        run_op("qlstm", {x, wx, wh, bias, mask}, lstm_attrs(true, false, zero_output))[0];
    ASSERT_EQ(y.shape(), Shape({2, 4, 1}));
    for (int b = 0; b < 2; ++b) {
      int32_t c = 0, h = 0, last = 0;
      for (int t = 0; t < 4; ++t) {
        if (mv[b * 4 + t]) {
          h = last = lstm_step_by_hand(xv[b * 4 + t], c, h, 1);
        } else if (zero_output) {
          last = 0;
        }
        EXPECT_EQ(y.data<int8_t>()[b * 4 + t], last) << b << " " << t << " " << zero_output;
      }
    }
  }
  // The last output; backwards processes t = 3..0.
  const Tensor yl = run_op("qlstm", {x, wx, wh, bias, mask}, lstm_attrs(false, true))[0];
  ASSERT_EQ(yl.shape(), Shape({2, 1}));
  for (int b = 0; b < 2; ++b) {
    int32_t c = 0, h = 0;
    for (int t = 3; t >= 0; --t)
      if (mv[b * 4 + t]) h = lstm_step_by_hand(xv[b * 4 + t], c, h, 1);
    EXPECT_EQ(yl.data<int8_t>()[b], h);
  }
  // Without a mask every step counts; a different result than with the mask.
  const Tensor yn = run_op("qlstm", {x, wx, wh, bias}, lstm_attrs(false))[0];
  int32_t c = 0, h = 0;
  for (int t = 0; t < 4; ++t) h = lstm_step_by_hand(xv[t], c, h, 1);
  EXPECT_EQ(yn.data<int8_t>()[0], h);
}

TEST(QLstmOp, ChecksArgumentsAndAttributes) {
  Tensor wx({1, 4}, DType::kS8), wh({1, 4}, DType::kS8), bias = Tensor::zeros({4}, DType::kS32);
  Tensor x({2, 4, 1}, DType::kS8);
  expect_throws_with<DTypeError>(
      [&] {
        run_op("qlstm", {x.to(DType::kF32), wx, wh, bias}, lstm_attrs(true));
      },
      "'x'");
  expect_throws_with<ShapeError>(
      [&] {
        run_op("qlstm", {x, wx, Tensor({1, 3}, DType::kS8), bias}, lstm_attrs(true));
      },
      "'w_h'");
  expect_throws_with<ShapeError>(
      [&] {
        run_op("qlstm", {x, Tensor({2, 4}, DType::kS8), wh, bias}, lstm_attrs(true));
      },
      "'w_x'");
  expect_throws_with<DTypeError>(
      [&] {
        run_op("qlstm", {x, wx, wh, Tensor::zeros({4})}, lstm_attrs(true));
      },
      "'bias'");
  expect_throws_with<ShapeError>(
      [&] {
        run_op("qlstm", {x, wx, wh, bias, Tensor({2, 3}, DType::kBool)}, lstm_attrs(true));
      },
      "'mask'");
  Attrs a = lstm_attrs(true);
  a.set("cell_int_bits", int64_t{7});
  expect_throws_with<ValueError>([&] { run_op("qlstm", {x, wx, wh, bias}, a); }, "cell_int_bits");
  a = lstm_attrs(true);
  a.set("input_weight_scales", std::vector<double>{0.01, 0.01});
  expect_throws_with<ValueError>(
      [&] {
        run_op("qlstm", {x, wx, wh, bias}, a);
      },
      "input_weight_scales");
  a = lstm_attrs(true);
  a.set("hidden_scale", -1.0);
  expect_throws_with<ValueError>([&] { run_op("qlstm", {x, wx, wh, bias}, a); }, "hidden_scale");
  expect_throws_with<ValueError>(
      [&] {
        run_op("qgru", {x, wx, wh, bias}, lstm_attrs(true));
      },
      "arguments");
}

// One GRU unit, one feature, hidden zero point 5: the spec's GRU step written out here.
TEST(QGruOp, OneUnitStepsByHandResetAfterAndBefore) {
  testing::note_reference_tested("qgru");
  const double sx = 0.02, sh = 1.0 / 100, sw = 0.01;
  const int32_t zpx = 4, zph = 5;
  const int8_t wxv[3] = {90, -60, 110}, whv[3] = {-40, 70, 80};
  const int32_t bxv[3] = {300, -200, 100}, bhv[3] = {-50, 400, 250};
  Tensor wx({1, 3}, DType::kS8), wh({1, 3}, DType::kS8);
  Tensor bx({3}, DType::kS32), bh({3}, DType::kS32);
  for (int g = 0; g < 3; ++g) {
    wx.data<int8_t>()[g] = wxv[g];
    wh.data<int8_t>()[g] = whv[g];
    bx.data<int32_t>()[g] = bxv[g];
    bh.data<int32_t>()[g] = bhv[g];
  }
  Tensor x({1, 3, 1}, DType::kS8);
  const int8_t xv[3] = {100, -90, 30};
  std::copy(xv, xv + 3, x.data<int8_t>());
  auto mbqm = [](int32_t acc, double m) {
    return quant::multiply_by_quantized_multiplier(acc, quant::quantize_multiplier(m));
  };
  auto s16 = [](int64_t v) { return static_cast<int32_t>(std::clamp<int64_t>(v, -32768, 32767)); };
  const double mx = static_cast<float>(sw * sx) * 4096.0;
  const double mh = static_cast<double>(static_cast<float>(sw) * static_cast<float>(sh)) * 4096.0;
  for (bool reset_after : {true, false}) {
    Attrs a{{"input_scale", sx},
            {"input_zero_point", int64_t{zpx}},
            {"hidden_scale", sh},
            {"hidden_zero_point", int64_t{zph}},
            {"input_weight_scales", std::vector<double>{sw, sw, sw}},
            {"recurrent_weight_scales", std::vector<double>{sw, sw, sw}},
            {"reset_after", reset_after},
            {"return_sequences", true}};
    const Tensor y = run_op("qgru", {x, wx, wh, bx, bh}, a)[0];
    ASSERT_EQ(y.shape(), Shape({1, 3, 1}));
    int32_t h = zph;
    for (int t = 0; t < 3; ++t) {
      // the recurrent bias only with reset_after (the op is given both; v1 ignores it)
      const int32_t rb[3] = {reset_after ? bhv[0] : 0, reset_after ? bhv[1] : 0,
                             reset_after ? bhv[2] : 0};
      auto px = [&](int g) { return s16(mbqm(bxv[g] + wxv[g] * (xv[t] - zpx), mx)); };
      auto ph = [&](int g, int32_t hq) { return mbqm(rb[g] + whv[g] * (hq - zph), mh); };
      const int32_t z = quant::logistic_int16(static_cast<int16_t>(s16(px(0) + ph(0, h))));
      const int32_t r = quant::logistic_int16(static_cast<int16_t>(s16(px(1) + ph(1, h))));
      int32_t pre;
      if (reset_after) {
        pre = s16(px(2) + quant::rounding_divide_by_pot(r * s16(ph(2, h)), 15));
      } else {
        const int32_t rh =
            std::clamp(quant::rounding_divide_by_pot(r * (h - zph), 15) + zph, -128, 127);
        pre = s16(px(2) + s16(ph(2, rh)));
      }
      const int32_t hh = quant::tanh_int16(static_cast<int16_t>(pre), 3);
      const int32_t acc = z * (h - zph) + mbqm((32767 - z) * hh, std::ldexp(1.0, -15) / sh);
      h = std::clamp(quant::rounding_divide_by_pot(acc, 15) + zph, -128, 127);
      EXPECT_EQ(y.data<int8_t>()[t], h) << t << " reset_after " << reset_after;
    }
  }
}

TEST(TimestepMaskOp, AnyFeatureDiffersFromTheMaskValue) {
  testing::note_reference_tested("timestep_mask");
  Tensor x = Tensor::zeros({1, 3, 2});
  x.data<float>()[1] = 2.0f;                       // step 0: valid
  x.data<float>()[4] = x.data<float>()[5] = 0.5f;  // step 2: all 0.5
  const Tensor m0 = run_op("timestep_mask", {x}, {{"mask_value", 0.0}})[0];
  const Tensor m5 = run_op("timestep_mask", {x}, {{"mask_value", 0.5}})[0];
  EXPECT_EQ(m0.dtype(), DType::kBool);
  const bool w0[3] = {true, false, true}, w5[3] = {true, true, false};
  for (int t = 0; t < 3; ++t) {
    EXPECT_EQ(m0.data<bool>()[t], w0[t]) << t;
    EXPECT_EQ(m5.data<bool>()[t], w5[t]) << t;
  }
}

// ---- file round trip, loader checks, refusals ----

TEST(ConvertRecurrent, ModelFileRoundTripAndLoaderChecks) {
  auto q = trained_qat({.gru = true, .sequences = false});
  quant::IntegerModel im = quant::convert_to_integer(*q);
  const std::string path =
      (std::filesystem::temp_directory_path() / "lowbit_convert_recurrent_test.lbi").string();
  im.save(path);
  quant::IntegerModel back = quant::IntegerModel::load(path);
  ASSERT_EQ(back.ops.size(), im.ops.size());
  const int k = op_index(back, "qgru");
  ASSERT_GE(k, 0);
  EXPECT_EQ(back.ops[k].attrs.floats("recurrent_weight_scales"),
            im.ops[k].attrs.floats("recurrent_weight_scales"));
  const Tensor x = sequences(64, 5, true);
  const Tensor a = im.predict(x), b = back.predict(x);
  ASSERT_EQ(a.numel(), b.numel());
  for (int64_t e = 0; e < a.numel(); ++e) ASSERT_EQ(a.data<float>()[e], b.data<float>()[e]);

  // A file whose qgru attribute is out of range, or whose bias is not s32, is refused on load.
  auto rewrite = [&](const std::function<void(nn::Json&)>& edit) {
    io::SafetensorsFile f = io::read_safetensors(path);
    auto j = nn::Json::parse(f.metadata["lowbit.integer_model"]);
    edit(j);
    f.metadata["lowbit.integer_model"] = j.dump();
    const std::string bad = path + ".bad.lbi";
    io::write_safetensors(bad, f);
    return bad;
  };
  const std::string p1 = rewrite([&](nn::Json& j) {
    j["ops"][k]["attrs"]["input_weight_scales"] = {{"floats", {0.1, 0.2}}};
  });
  expect_throws_with<ValueError>([&] { quant::IntegerModel::load(p1); }, "input_weight_scales");
  const std::string p2 = rewrite([&](nn::Json& j) {
    j["ops"][k]["attrs"]["hidden_zero_point"] = {{"i", 300}};
  });
  expect_throws_with<ValueError>([&] { quant::IntegerModel::load(p2); }, "hidden_zero_point");
  const std::string p3 = rewrite([&](nn::Json& j) {
    j["ops"][k]["attrs"]["cell_int_bits"] = {{"i", 2}};  // a GRU has no cell
  });
  expect_throws_with<ValueError>([&] { quant::IntegerModel::load(p3); }, "cell_int_bits");
  for (const std::string& p : {path, p1, p2, p3}) std::filesystem::remove(p);
}

TEST(ConvertRecurrent, RefusesWhatHasNoIntegerFormNamingTheLayer) {
  nn::reset_layer_names();
  nn::set_random_seed(2);
  Tensor x = sequences(64, 1, false);
  auto fit_and_convert = [&](const nn::ModelPtr& f) {
    auto q = quant::quantize_model(*f);
    q->compile({.optimizer = nn::Adam({}), .loss = nn::MeanSquaredError()});
    const Tensor y = Tensor::zeros(with_batch(q->outputs()[0].shape(), 64));
    q->fit(x, y, {.epochs = 1, .batch_size = 32, .verbose = 0});
    return quant::convert_to_integer(*q);
  };
  {
    nn::KTensor in = nn::Input({kT, kF});
    nn::KTensor h = (*nn::Bidirectional(nn::LSTM(3), {.merge_mode = "mul"}))(in);
    auto f = nn::Model::create({in}, {(*nn::Dense(2))(h)});
    expect_throws_with<UnsupportedError>([&] { fit_and_convert(f); }, "merge_mode 'mul'");
  }
  {
    nn::KTensor in = nn::Input({kT, kF});
    nn::KTensor m = (*nn::Masking(0.5))(in);
    nn::KTensor h = (*nn::Dense(4))(m);  // reads the Masking output through its FakeQuant
    auto f = nn::Model::create({in}, {(*nn::Dense(2))(h)});
    expect_throws_with<UnsupportedError>([&] { fit_and_convert(f); }, "mask_value");
  }
  {
    nn::KTensor in = nn::Input({kT, kF});
    std::vector<nn::KTensor> o =
        (*nn::GRU(3, {.return_state = true}))(std::vector<nn::KTensor>{in});
    auto f = nn::Model::create({in}, {(*nn::Dense(2))(o[0])});
    expect_throws_with<UnsupportedError>([&] { fit_and_convert(f); }, "return_state");
  }
}

}  // namespace
}  // namespace lowbit
