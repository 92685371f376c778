// Masked recurrent layers beyond the literal golden files (issue 5's test list):
//   * cases DERIVED from the Keras golden vectors of /work/shared/testdata/keras (LSTM with
//     return_sequences, two GRUs without; their masks have holes in the middle, padding at the
//     end and at the start): a fully masked row added to the batch, go_backwards on the
//     time-reversed input and mask, and return_sequences flipped, each with the outputs and
//     (where the golden objective can be rebuilt) the gradients w.r.t. x and every weight;
//   * SimpleRNN, which has no golden file: forward and gradients against a double-precision
//     reference written here (the recurrence and its finite differences), with the same masks,
//     return_sequences both ways and go_backwards;
//   * padding invariance for every cell and both directions.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "lowbit/nn/layers.h"
#include "lowbit/nn/model.h"
#include "lowbit/ops.h"
#include "testing/op_testing.h"

namespace lowbit::nn {
namespace {

using testing::tensors_equal;
using testing::tensors_near;

Json load_golden(const std::string& name) {
  std::ifstream f(testing::shared_dir() + "/testdata/keras/" + name + ".json");
  EXPECT_TRUE(f.good()) << name;
  return Json::parse(f);
}

Tensor from_json(const Json& j) {
  Shape shape(j.at("shape").get<std::vector<int64_t>>());
  const std::string dt = j.at("dtype").get<std::string>();
  Tensor t(shape, dt == "bool" ? DType::kBool : DType::kF32);
  const Json& data = j.at("data");
  for (int64_t i = 0; i < t.numel(); ++i) t.set_from_double(i, data[i].get<double>());
  return t;
}

Shape unknown_batch_time(const Shape& s) {
  Shape u = s;
  u[0] = kUnknown;
  if (u.rank() > 2) u[1] = kUnknown;
  return u;
}

// Runs a recurrent layer (built from `config`, weights set) on x with a mask, and the
// gradients of L = sum_k sum(out_k * cot_k) w.r.t. x and every weight when cotangents are
// given (one per output).
struct LayerRun {
  std::vector<Tensor> out;
  Tensor dx;
  std::vector<Tensor> dw;
};
LayerRun run(const Json& config, const std::vector<Tensor>& weights, const Tensor& x,
             const Tensor& mask, const std::vector<Tensor>& cots = {}) {
  reset_layer_names();
  LayerPtr layer = layer_from_config(config);
  (void)(*layer)(std::vector<KTensor>{Input({x.dim(1), x.dim(2)})});
  EXPECT_EQ(layer->weights().size(), weights.size());
  for (size_t i = 0; i < weights.size(); ++i) layer->weights()[i].value.copy_from(weights[i]);
  Graph g;
  CallContext ctx(g, false);
  Value xv = g.placeholder("x", DType::kF32, unknown_batch_time(x.shape()));
  Value mv = g.placeholder("mask", mask.dtype(), unknown_batch_time(mask.shape()));
  ctx.input_masks = {mv};
  std::vector<Value> outs = layer->apply({xv}, ctx);
  std::vector<Value> fetches = outs;
  if (!cots.empty()) {
    EXPECT_EQ(cots.size(), outs.size());
    std::vector<Value> cv, wrt{xv};
    for (const Tensor& c : cots) cv.push_back(g.constant(c));
    for (const Weight& w : layer->weights()) wrt.push_back(ctx.bound(w));
    std::vector<Value> grads = gradients(outs, wrt, cv);
    fetches.insert(fetches.end(), grads.begin(), grads.end());
  }
  Executor ex(g, fetches, ctx.updates());
  std::vector<Tensor> got = ex.run({{xv, x}, {mv, mask}});
  LayerRun r;
  r.out.assign(got.begin(), got.begin() + static_cast<int64_t>(outs.size()));
  if (!cots.empty()) {
    r.dx = got[outs.size()];
    r.dw.assign(got.begin() + static_cast<int64_t>(outs.size()) + 1, got.end());
  }
  return r;
}

Tensor reverse_time(const Tensor& t) {
  return ops::slice(t, {0, ops::kSliceMax}, {ops::kSliceMax, ops::kSliceMin}, {1, -1});
}
Tensor cat0(const Tensor& a, const Tensor& b) { return ops::concat(std::vector<Tensor>{a, b}, 0); }
// One more batch row of `t`'s shape filled with v.
Tensor row_of(const Tensor& t, double v) {
  std::vector<int64_t> d = t.shape().dims();
  d[0] = 1;
  Tensor r = Tensor::full(Shape(d), v);
  return t.dtype() == DType::kBool ? r.to(DType::kBool) : r;
}
Tensor first_rows(const Tensor& t, int64_t n) {
  std::vector<int64_t> lo(t.rank(), 0), hi = t.shape().dims();
  hi[0] = n;
  return ops::slice(t, lo, hi);
}
Tensor last_row(const Tensor& t) {
  std::vector<int64_t> lo(t.rank(), 0), hi = t.shape().dims();
  lo[0] = hi[0] - 1;
  return ops::slice(t, lo, hi);
}

struct Golden {
  Json layer;
  Tensor x, mask;
  std::vector<Tensor> weights, outputs, cots, dw;
  std::vector<std::string> output_names;
  Tensor dx;
  double atol, rtol;
};
Golden golden(const std::string& name) {
  const Json c = load_golden(name);
  Golden g;
  g.layer = c.at("layer");
  g.x = from_json(c.at("inputs").at("x"));
  g.mask = from_json(c.at("inputs").at("mask"));
  for (const Json& w : c.at("weights")) g.weights.push_back(from_json(w));
  // The layer's output order (the JSON object's keys come back sorted).
  for (const char* k : {"output", "state_h", "state_c"})
    if (c.at("outputs").contains(k)) {
      g.output_names.push_back(k);
      g.outputs.push_back(from_json(c.at("outputs").at(k)));
    }
  EXPECT_EQ(g.output_names.size(), c.at("outputs").size());
  for (const Json& ct : c.at("grad").at("cotangents")) g.cots.push_back(from_json(ct));
  g.dx = from_json(c.at("grad").at("d_inputs").at("x"));
  for (const Json& w : c.at("grad").at("d_weights")) g.dw.push_back(from_json(w));
  g.atol = c.at("tolerance").value("atol", 2e-5);
  g.rtol = c.at("tolerance").value("rtol", 1e-4);
  return g;
}

// The golden files' outputs are listed in the layer's output order (output, state_h[, state_c]).
const std::vector<std::string> kMaskedGolden = {"dev_lstm_mask_seq", "dev_gru_v1_mask_last",
                                                "dev_gru_reset_after_mask_last"};

TEST(RnnMaskGolden, TheGoldenMasksHaveHolesPaddingAtBothEndsAndAFullRow) {
  // What the derived cases below rely on: row 0 has holes in the middle and a masked last step,
  // row 1 is left-padded, row 2 is all valid.
  for (const std::string& name : kMaskedGolden) {
    const Golden g = golden(name);
    EXPECT_TRUE(tensors_equal(g.mask, Tensor::from_vector<bool>({1, 0, 0, 1, 1, 0,  //
                                                                 0, 1, 1, 1, 1, 1,  //
                                                                 1, 1, 1, 1, 1, 1},
                                                                {3, 6})))
        << name;
  }
}

// The golden case itself, as this runner sees it (outputs and all gradients).
TEST(RnnMaskGolden, RunnerReproducesTheGoldenCases) {
  for (const std::string& name : kMaskedGolden) {
    SCOPED_TRACE(name);
    const Golden g = golden(name);
    LayerRun r = run(g.layer, g.weights, g.x, g.mask, g.cots);
    ASSERT_EQ(r.out.size(), g.outputs.size());
    for (size_t i = 0; i < r.out.size(); ++i)
      EXPECT_TRUE(tensors_near(r.out[i], g.outputs[i], g.atol, g.rtol)) << g.output_names[i];
    EXPECT_TRUE(tensors_near(r.dx, g.dx, g.atol, g.rtol));
    for (size_t i = 0; i < g.dw.size(); ++i)
      EXPECT_TRUE(tensors_near(r.dw[i], g.dw[i], g.atol, g.rtol)) << "d weight " << i;
  }
}

// A fully masked row added to the batch (finite garbage in it, nonzero cotangents): the golden
// rows are unchanged, the new row's outputs and states are the zero initial state (every step
// carries it over), no gradient reaches its x, and the weight gradients are the golden ones.
TEST(RnnMaskGolden, FullyMaskedRowIsZeroAndAddsNoGradient) {
  for (const std::string& name : kMaskedGolden) {
    SCOPED_TRACE(name);
    const Golden g = golden(name);
    std::vector<Tensor> cots;
    for (const Tensor& c : g.cots) cots.push_back(cat0(c, row_of(c, 1.0)));
    LayerRun r =
        run(g.layer, g.weights, cat0(g.x, row_of(g.x, 3.0)), cat0(g.mask, row_of(g.mask, 0)), cots);
    for (size_t i = 0; i < r.out.size(); ++i) {
      EXPECT_TRUE(tensors_near(first_rows(r.out[i], 3), g.outputs[i], g.atol, g.rtol))
          << g.output_names[i];
      EXPECT_TRUE(tensors_equal(last_row(r.out[i]), row_of(g.outputs[i], 0.0)))
          << g.output_names[i];
    }
    EXPECT_TRUE(tensors_near(first_rows(r.dx, 3), g.dx, g.atol, g.rtol));
    EXPECT_TRUE(tensors_equal(last_row(r.dx), row_of(g.dx, 0.0)));
    for (size_t i = 0; i < g.dw.size(); ++i)
      EXPECT_TRUE(tensors_near(r.dw[i], g.dw[i], g.atol, g.rtol)) << "d weight " << i;
  }
}

// go_backwards processes the time-reversed input and mask and returns the sequence in
// processing order (Keras' backend rnn): fed reverse_time(x) and reverse_time(mask), a
// go_backwards layer performs exactly the golden computation, so its outputs are the golden
// ones and its x gradient is the golden one reversed.
TEST(RnnMaskGolden, GoBackwardsOnTheReversedInputIsTheGoldenCase) {
  for (const std::string& name : kMaskedGolden) {
    SCOPED_TRACE(name);
    const Golden g = golden(name);
    Json layer = g.layer;
    layer["config"]["go_backwards"] = true;
    LayerRun r = run(layer, g.weights, reverse_time(g.x), reverse_time(g.mask), g.cots);
    for (size_t i = 0; i < r.out.size(); ++i)
      EXPECT_TRUE(tensors_near(r.out[i], g.outputs[i], g.atol, g.rtol)) << g.output_names[i];
    EXPECT_TRUE(tensors_near(r.dx, reverse_time(g.dx), g.atol, g.rtol));
    for (size_t i = 0; i < g.dw.size(); ++i)
      EXPECT_TRUE(tensors_near(r.dw[i], g.dw[i], g.atol, g.rtol)) << "d weight " << i;
    // And on the unreversed input it is a different computation (the test can fail).
    LayerRun other = run(layer, g.weights, g.x, g.mask);
    EXPECT_FALSE(tensors_near(other.out[0], g.outputs[0], 1e-3, 0));
  }
}

// return_sequences flipped: the LSTM case without sequences returns state_h as its output; the
// GRU cases with sequences end with the golden output (masked last steps repeat the last valid
// output). The gradients of the flipped layer are those of the golden layer for the matching
// objective (the last output and state_h are the same tensor).
TEST(RnnMaskGolden, ReturnSequencesBothWays) {
  for (const std::string& name : kMaskedGolden) {
    SCOPED_TRACE(name);
    const Golden g = golden(name);
    Json flipped = g.layer;
    const bool seq = g.layer.at("config").at("return_sequences").get<bool>();
    flipped["config"]["return_sequences"] = !seq;
    flipped["config"]["return_state"] = true;
    Json with_state = g.layer;
    with_state["config"]["return_state"] = true;
    LayerRun base = run(with_state, g.weights, g.x, g.mask);
    LayerRun r = run(flipped, g.weights, g.x, g.mask);
    ASSERT_EQ(r.out.size(), base.out.size());
    const int64_t T = g.x.dim(1);
    const Tensor& seq_out = seq ? base.out[0] : r.out[0];
    const Tensor& last_out = seq ? r.out[0] : base.out[0];
    const Tensor last_step =
        ops::reshape(ops::slice(seq_out, {0, T - 1, 0}, {seq_out.dim(0), T, seq_out.dim(2)}),
                     last_out.shape().dims());
    EXPECT_TRUE(tensors_equal(last_out, last_step));
    // Against the golden values: the last output is state_h, and the golden output itself.
    const Tensor& golden_h = g.outputs.size() > 1 ? g.outputs[1] : g.outputs[0];
    EXPECT_TRUE(tensors_near(last_out, golden_h, g.atol, g.rtol));
    if (seq) {
      EXPECT_TRUE(tensors_near(seq_out, g.outputs[0], g.atol, g.rtol));
    } else {
      EXPECT_TRUE(tensors_near(last_out, g.outputs[0], g.atol, g.rtol));
    }
    for (size_t i = 1; i < r.out.size(); ++i)
      EXPECT_TRUE(tensors_equal(r.out[i], base.out[i])) << "state " << i;

    // Gradients: the sequence layer with a cotangent only on the last step equals the
    // last-output layer with that cotangent on its output.
    const Json& seq_layer = seq ? with_state : flipped;
    const Json& last_layer = seq ? flipped : with_state;
    Rng rng(7);
    std::vector<Tensor> cots_last;
    for (const Tensor& o : (seq ? r.out : base.out))
      cots_last.push_back(testing::random_tensor(o.shape(), rng));
    std::vector<Tensor> cots_seq = cots_last;
    const int64_t U = seq_out.dim(2);
    cots_seq[0] = Tensor::zeros(seq_out.shape());
    for (int64_t b = 0; b < seq_out.dim(0); ++b)
      for (int64_t u = 0; u < U; ++u)
        cots_seq[0].data<float>()[(b * T + T - 1) * U + u] = cots_last[0].data<float>()[b * U + u];
    LayerRun grad_last = run(last_layer, g.weights, g.x, g.mask, cots_last);
    LayerRun grad_seq = run(seq_layer, g.weights, g.x, g.mask, cots_seq);
    EXPECT_TRUE(tensors_near(grad_last.dx, grad_seq.dx, 1e-6, 1e-5));
    for (size_t i = 0; i < grad_last.dw.size(); ++i)
      EXPECT_TRUE(tensors_near(grad_last.dw[i], grad_seq.dw[i], 1e-6, 1e-5)) << i;
  }
}

// ---- SimpleRNN: no golden file exists; a double-precision reference written here ----------

struct SimpleRnnRef {
  std::vector<double> kernel, recurrent, bias;  // [F, U], [U, U], [U]
  int64_t f, u;
  bool sequences, backwards;
  // out: [B, T, U] (sequences) or [B, U]; state h [B, U]. Masked steps carry h and the output.
  std::pair<std::vector<double>, std::vector<double>> forward(const std::vector<double>& x,
                                                              const std::vector<bool>& m, int64_t B,
                                                              int64_t T) const {
    std::vector<double> out(sequences ? B * T * u : B * u, 0.0), h_all(B * u, 0.0);
    for (int64_t b = 0; b < B; ++b) {
      std::vector<double> h(u, 0.0);
      for (int64_t s = 0; s < T; ++s) {
        const int64_t t = backwards ? T - 1 - s : s;
        if (m[b * T + t]) {
          std::vector<double> n(u);
          for (int64_t j = 0; j < u; ++j) {
            double a = bias[j];
            for (int64_t k = 0; k < f; ++k) a += x[(b * T + t) * f + k] * kernel[k * u + j];
            for (int64_t k = 0; k < u; ++k) a += h[k] * recurrent[k * u + j];
            n[j] = std::tanh(a);
          }
          h = n;
        }
        if (sequences)
          for (int64_t j = 0; j < u; ++j) out[(b * T + s) * u + j] = h[j];
      }
      for (int64_t j = 0; j < u; ++j) {
        h_all[b * u + j] = h[j];
        if (!sequences) out[b * u + j] = h[j];
      }
    }
    return {out, h_all};
  }
};

std::vector<double> to_doubles(const Tensor& t) {
  std::vector<double> v(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) v[i] = t.get_as_double(i);
  return v;
}
Tensor to_f32(const std::vector<double>& v, const Shape& s) {
  Tensor t(s, DType::kF32);
  for (int64_t i = 0; i < t.numel(); ++i) t.set_from_double(i, v[i]);
  return t;
}

TEST(RnnMaskReference, SimpleRnnForwardAndGradientsWithMasks) {
  const int64_t B = 4, T = 6, F = 3, U = 4;
  // Holes in the middle and a masked end; left padding; all valid; fully masked.
  const std::vector<bool> m = {1, 0, 0, 1, 1, 0, 0, 1, 1, 1, 1, 1,
                               1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0};
  Tensor mask = Tensor::from_vector<bool>(m, {B, T});
  Rng rng(31);
  Tensor x = testing::random_tensor({B, T, F}, rng, -1, 1);
  const std::vector<Tensor> w = {testing::random_tensor({F, U}, rng, -0.7f, 0.7f),
                                 testing::random_tensor({U, U}, rng, -0.5f, 0.5f),
                                 testing::random_tensor({U}, rng, -0.3f, 0.3f)};
  for (bool sequences : {true, false})
    for (bool backwards : {false, true}) {
      SCOPED_TRACE(::testing::Message()
                   << "return_sequences " << sequences << " go_backwards " << backwards);
      const Json cfg = {{"class_name", "SimpleRNN"},
                        {"config",
                         {{"units", U},
                          {"return_sequences", sequences},
                          {"return_state", true},
                          {"go_backwards", backwards}}}};
      SimpleRnnRef ref{to_doubles(w[0]), to_doubles(w[1]), to_doubles(w[2]), F, U,
                       sequences,        backwards};
      std::vector<double> xd = to_doubles(x);
      auto [out, h] = ref.forward(xd, m, B, T);
      const Shape out_shape = sequences ? Shape({B, T, U}) : Shape({B, U});
      const Tensor c_out = testing::random_tensor(out_shape, rng);
      const Tensor c_h = testing::random_tensor({B, U}, rng);
      LayerRun r = run(cfg, w, x, mask, {c_out, c_h});
      ASSERT_EQ(r.out.size(), 2u);
      EXPECT_TRUE(tensors_near(r.out[0], to_f32(out, out_shape), 1e-6, 1e-5));
      EXPECT_TRUE(tensors_near(r.out[1], to_f32(h, {B, U}), 1e-6, 1e-5));
      // The fully masked row: zero output and state.
      for (int64_t j = 0; j < U; ++j) EXPECT_EQ(r.out[1].data<float>()[3 * U + j], 0.0f);

      // Central differences of L = sum(out c_out) + sum(h c_h) in double.
      const std::vector<double> co = to_doubles(c_out), ch = to_doubles(c_h);
      auto objective = [&](const SimpleRnnRef& rr, const std::vector<double>& xx) {
        auto [o, hh] = rr.forward(xx, m, B, T);
        double l = 0;
        for (size_t i = 0; i < o.size(); ++i) l += o[i] * co[i];
        for (size_t i = 0; i < hh.size(); ++i) l += hh[i] * ch[i];
        return l;
      };
      const double eps = 1e-5;
      auto central = [&](std::vector<double>& v, size_t i, const auto& eval) {
        const double keep = v[i];
        v[i] = keep + eps;
        const double up = eval();
        v[i] = keep - eps;
        const double down = eval();
        v[i] = keep;
        return (up - down) / (2 * eps);
      };
      std::vector<double> dx(xd.size());
      for (size_t i = 0; i < xd.size(); ++i)
        dx[i] = central(xd, i, [&] { return objective(ref, xd); });
      EXPECT_TRUE(tensors_near(r.dx, to_f32(dx, x.shape()), 1e-5, 1e-4));
      // Masked steps get exactly zero gradient.
      for (int64_t i = 0; i < B * T; ++i)
        if (!m[i]) {
          for (int64_t k = 0; k < F; ++k) EXPECT_EQ(r.dx.data<float>()[i * F + k], 0.0f);
        }
      std::vector<double>* params[3] = {&ref.kernel, &ref.recurrent, &ref.bias};
      for (int p = 0; p < 3; ++p) {
        std::vector<double> d(params[p]->size());
        for (size_t i = 0; i < d.size(); ++i)
          d[i] = central(*params[p], i, [&] { return objective(ref, xd); });
        EXPECT_TRUE(tensors_near(r.dw[p], to_f32(d, w[p].shape()), 1e-5, 1e-4)) << "weight " << p;
      }
    }
}

// ---- padding invariance, every cell, both directions ----------------------------------------

// The same sequence (length 5) gives the same last output and states whatever it is padded to
// (garbage in the padding) and whatever else shares its batch.
TEST(RnnMaskReference, EveryCellBothDirectionsIsPaddingInvariant) {
  Rng rng(12);
  const Tensor seq = testing::random_tensor({1, 5, 3}, rng);
  for (const char* cls : {"LSTM", "GRU", "SimpleRNN"})
    for (bool backwards : {false, true}) {
      SCOPED_TRACE(::testing::Message() << cls << " go_backwards " << backwards);
      const Json cfg = {
          {"class_name", cls},
          {"config", {{"units", 4}, {"return_state", true}, {"go_backwards", backwards}}}};
      // Weights: random, shared by every run.
      reset_layer_names();
      LayerPtr probe = layer_from_config(cfg);
      (void)(*probe)(std::vector<KTensor>{Input({5, 3})});
      std::vector<Tensor> w;
      for (const Weight& wt : probe->weights())
        w.push_back(testing::random_tensor(wt.value.shape(), rng, -0.6f, 0.6f));
      LayerRun alone = run(cfg, w, seq, Tensor::full({1, 5}, 1.0).to(DType::kBool));
      for (int64_t pad : {5, 8, 13}) {
        Tensor x = testing::random_tensor({3, pad, 3}, rng, 20, 30);  // garbage
        Tensor m = Tensor::zeros({3, pad}, DType::kBool);
        for (int64_t t = 0; t < pad; ++t) {
          m.data<bool>()[t] = (t % 3) != 1;  // row 0: holes
          m.data<bool>()[pad + t] = t < 5;   // row 1: the sequence
          m.data<bool>()[2 * pad + t] = t >= pad - 2;
        }
        for (int64_t i = 0; i < 15; ++i) x.data<float>()[pad * 3 + i] = seq.data<float>()[i];
        LayerRun r = run(cfg, w, x, m);
        for (size_t i = 0; i < r.out.size(); ++i) {
          Tensor row1 = ops::slice(r.out[i], {1, 0}, {2, ops::kSliceMax});
          // Up to rounding: the input projection of all steps is one matmul whose size (and
          // so its kernel's summation order) depends on the padded length.
          EXPECT_TRUE(tensors_near(row1, alone.out[i], 1e-6, 1e-6))
              << "padded to " << pad << ", output " << i;
        }
      }
    }
}

}  // namespace
}  // namespace lowbit::nn
