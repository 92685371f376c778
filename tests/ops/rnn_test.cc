// Tests of the fused recurrences (include/lowbit/ops/rnn.h): every cell against an independent
// step-by-step double implementation of the Keras equations written here (layer-semantics.md
// 6.1-6.3), the backward-through-time ops against finite differences (masks in the middle, at
// the end, fully masked rows, go_backwards, both output modes, initial states, recurrent
// dropout), garbage at masked steps, fast kernels against the reference, and the errors.
#include "kernels/fast/rnn.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "lowbit/graph.h"
#include "lowbit/ops.h"
#include "lowbit/rng.h"
#include "lowbit/threads.h"
#include "testing/op_testing.h"

namespace lowbit {
namespace {

using testing::expect_gradients_match;
using testing::expect_throws_with;
using testing::GradCheckOptions;
using testing::tensors_equal;
using testing::tensors_near;

// The reference kernels sum in double and round the states to f32 once per step; the naive
// model below stays in double. A few f32 ulps per step over a handful of steps.
constexpr double kAtol = 2e-6;
constexpr double kRtol = 2e-5;
// Fast kernels: f32 sums with fused multiply-adds, polynomial exp, states and carried
// gradients in f32 (the reference keeps the carried gradients in double).
constexpr double kFastAtol = 5e-5;
constexpr double kFastRtol = 2e-4;

enum class Cell { kLstm, kGru, kSimple };

int gates_of(Cell c) { return c == Cell::kLstm ? 4 : c == Cell::kGru ? 3 : 1; }
const char* op_of(Cell c) {
  return c == Cell::kLstm  ? "lstm_sequence"
         : c == Cell::kGru ? "gru_sequence"
                           : "simple_rnn_sequence";
}
int num_states(Cell c) { return c == Cell::kLstm ? 2 : 1; }

// ---- an independent model of the Keras equations, in double --------------------------------

double act(const std::string& name, double x) {
  if (name == "tanh") return std::tanh(x);
  if (name == "sigmoid") return 1 / (1 + std::exp(-x));
  if (name == "hard_sigmoid") return std::clamp(x / 6 + 0.5, 0.0, 1.0);
  if (name == "relu") return x > 0 ? x : 0;
  return x;
}

struct Case {
  Cell cell = Cell::kLstm;
  int64_t batch = 2, steps = 4, units = 3;
  ops::RnnOptions opt;
  Tensor xp, rk, rb, h0, c0, mask, rdm;  // mask / rdm undefined when absent

  // Inputs in op order (forward).
  std::vector<Tensor> inputs() const {
    std::vector<Tensor> in{xp, rk};
    if (cell == Cell::kGru) in.push_back(rb);
    in.push_back(h0);
    if (cell == Cell::kLstm) in.push_back(c0);
    if (mask.defined()) in.push_back(mask);
    if (rdm.defined()) in.push_back(rdm);
    return in;
  }
  Attrs attrs() const {
    Attrs a{{"go_backwards", opt.go_backwards},
            {"return_sequences", opt.return_sequences},
            {"zero_output_for_mask", opt.zero_output_for_mask},
            {"activation", opt.activation},
            {"masked", mask.defined()},
            {"recurrent_dropout", rdm.defined()}};
    if (cell != Cell::kSimple) a.set("recurrent_activation", opt.recurrent_activation);
    if (cell == Cell::kGru) a.set("reset_after", opt.reset_after);
    return a;
  }
  bool valid(int64_t b, int64_t t) const {
    return !mask.defined() || mask.get_as_double(b * steps + t) != 0;
  }
  double m(int64_t b, int64_t block, int64_t u) const {
    return rdm.defined() ? rdm.get_as_double((b * gates_of(cell) + block) * units + u) : 1.0;
  }
};

struct Expected {
  Tensor y;
  std::vector<Tensor> states;
};

// One row at a time, straight from layer-semantics.md 6.1-6.3.
Expected naive(const Case& c) {
  const int64_t B = c.batch, T = c.steps, U = c.units, GU = gates_of(c.cell) * U;
  Expected e;
  e.y = c.opt.return_sequences ? Tensor::zeros({B, T, U}) : Tensor::zeros({B, U});
  for (int s = 0; s < num_states(c.cell); ++s) e.states.push_back(Tensor::zeros({B, U}));
  auto R = [&](int64_t u, int64_t j) { return c.rk.get_as_double(u * GU + j); };
  for (int64_t b = 0; b < B; ++b) {
    std::vector<double> h(U), cs(U), out(U, 0.0);
    for (int64_t u = 0; u < U; ++u) {
      h[u] = c.h0.get_as_double(b * U + u);
      if (c.cell == Cell::kLstm) cs[u] = c.c0.get_as_double(b * U + u);
    }
    for (int64_t t = 0; t < T; ++t) {
      const int64_t ti = c.opt.go_backwards ? T - 1 - t : t;
      auto x = [&](int64_t j) { return c.xp.get_as_double((b * T + ti) * GU + j); };
      // h @ R restricted to gate block k, with the recurrent dropout of that block.
      auto rec = [&](const std::vector<double>& hv, int64_t k, int64_t j) {
        double s = 0;
        for (int64_t u = 0; u < U; ++u) s += hv[u] * c.m(b, k, u) * R(u, k * U + j);
        return s;
      };
      if (c.valid(b, ti)) {
        std::vector<double> hn(U), cn(U);
        for (int64_t u = 0; u < U; ++u) {
          if (c.cell == Cell::kLstm) {
            const std::string& ra = c.opt.recurrent_activation;
            const double i = act(ra, x(u) + rec(h, 0, u));
            const double f = act(ra, x(U + u) + rec(h, 1, u));
            const double g = act(c.opt.activation, x(2 * U + u) + rec(h, 2, u));
            const double o = act(ra, x(3 * U + u) + rec(h, 3, u));
            cn[u] = f * cs[u] + i * g;
            hn[u] = o * act(c.opt.activation, cn[u]);
          } else if (c.cell == Cell::kGru) {
            const std::string& ra = c.opt.recurrent_activation;
            auto rb = [&](int64_t j) { return c.rb.get_as_double(j); };
            const double z = act(ra, x(u) + rec(h, 0, u) + rb(u));
            double hh;
            if (c.opt.reset_after) {
              const double r = act(ra, x(U + u) + rec(h, 1, u) + rb(U + u));
              hh = act(c.opt.activation, x(2 * U + u) + r * (rec(h, 2, u) + rb(2 * U + u)));
            } else {
              std::vector<double> rh(U);  // r * h (each unit with its own reset gate)
              for (int64_t v = 0; v < U; ++v)
                rh[v] = act(ra, x(U + v) + rec(h, 1, v) + rb(U + v)) * h[v];
              hh = act(c.opt.activation, x(2 * U + u) + rec(rh, 2, u) + rb(2 * U + u));
            }
            hn[u] = z * h[u] + (1 - z) * hh;
          } else {
            hn[u] = act(c.opt.activation, x(u) + rec(h, 0, u));
          }
        }
        h = hn;
        cs = cn;
        out = h;
      } else if (c.opt.zero_output_for_mask) {
        out.assign(U, 0.0);
      }
      if (c.opt.return_sequences)
        for (int64_t u = 0; u < U; ++u) e.y.set_from_double((b * T + t) * U + u, out[u]);
    }
    for (int64_t u = 0; u < U; ++u) {
      if (!c.opt.return_sequences) e.y.set_from_double(b * U + u, out[u]);
      e.states[0].set_from_double(b * U + u, h[u]);
      if (c.cell == Cell::kLstm) e.states[1].set_from_double(b * U + u, cs[u]);
    }
  }
  return e;
}

Tensor bool_mask(const std::vector<std::vector<int>>& rows) {
  const int64_t B = static_cast<int64_t>(rows.size()), T = static_cast<int64_t>(rows[0].size());
  Tensor m({B, T}, DType::kBool);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) m.data<bool>()[b * T + t] = rows[b][t] != 0;
  return m;
}

// A random case; x_proj at masked steps holds Inf and NaN (it must not matter).
Case make_case(Cell cell, int64_t B, int64_t T, int64_t U, uint64_t seed,
               std::vector<std::vector<int>> mask = {}, ops::RnnOptions opt = {},
               bool nonzero_state = true) {
  Rng rng(seed);
  Case c;
  c.cell = cell;
  c.batch = B;
  c.steps = T;
  c.units = U;
  c.opt = opt;
  const int64_t GU = gates_of(cell) * U;
  c.xp = testing::random_tensor({B, T, GU}, rng, -1.0f, 1.0f);
  c.rk = testing::random_tensor({U, GU}, rng, -0.6f, 0.6f);
  c.rb = testing::random_tensor({GU}, rng, -0.5f, 0.5f);
  c.h0 = nonzero_state ? testing::random_tensor({B, U}, rng, -0.8f, 0.8f) : Tensor::zeros({B, U});
  c.c0 = nonzero_state ? testing::random_tensor({B, U}, rng, -0.8f, 0.8f) : Tensor::zeros({B, U});
  if (!mask.empty()) {
    c.mask = bool_mask(mask);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t)
        if (!mask[b][t])
          for (int64_t j = 0; j < GU; ++j)
            c.xp.data<float>()[(b * T + t) * GU + j] =
                j % 2 ? std::numeric_limits<float>::quiet_NaN() : INFINITY;
  }
  return c;
}

std::vector<Tensor> run_reference(const Case& c) {
  return run_op(find_op(op_of(c.cell)), c.inputs(), c.attrs(), KernelChoice::kReference);
}

void expect_matches_naive(const Case& c) {
  std::vector<Tensor> out = run_reference(c);
  Expected e = naive(c);
  EXPECT_TRUE(tensors_near(out[0], e.y, kAtol, kRtol)) << "y";
  for (int s = 0; s < num_states(c.cell); ++s)
    EXPECT_TRUE(tensors_near(out[1 + s], e.states[s], kAtol, kRtol)) << "state " << s;
}

const std::vector<std::vector<int>> kMask = {
    {1, 0, 1, 1, 0},  // a hole in the middle and one at the end
    {0, 0, 1, 1, 1},  // left padding
    {0, 0, 0, 0, 0},  // fully masked
    {1, 1, 1, 0, 0},  // right padding
};

ops::RnnOptions opts(bool seq, bool backwards = false, bool zero_out = false) {
  ops::RnnOptions o;
  o.return_sequences = seq;
  o.go_backwards = backwards;
  o.zero_output_for_mask = zero_out;
  return o;
}

// ---- forward against the naive model -------------------------------------------------------

TEST(RnnOps, ForwardMatchesTheKerasEquations) {
  for (Cell cell : {Cell::kLstm, Cell::kGru, Cell::kSimple}) {
    for (bool seq : {true, false})
      for (bool back : {false, true})
        for (bool zero_out : {false, true}) {
          SCOPED_TRACE(std::string(op_of(cell)) + " seq=" + std::to_string(seq) +
                       " back=" + std::to_string(back) + " zero_out=" + std::to_string(zero_out));
          expect_matches_naive(make_case(cell, 4, 5, 3, 7, kMask, opts(seq, back, zero_out)));
          expect_matches_naive(make_case(cell, 3, 5, 4, 8, {}, opts(seq, back, zero_out)));
        }
    testing::note_reference_tested(op_of(cell));
  }
}

TEST(RnnOps, GruWithoutResetAfterAndOtherActivations) {
  for (bool reset_after : {true, false}) {
    ops::RnnOptions o;
    o.reset_after = reset_after;
    expect_matches_naive(make_case(Cell::kGru, 4, 5, 3, 11, kMask, o));
    o.activation = "relu";
    o.recurrent_activation = "hard_sigmoid";
    expect_matches_naive(make_case(Cell::kGru, 4, 5, 3, 12, kMask, o));
  }
  ops::RnnOptions o;
  o.activation = "linear";
  o.recurrent_activation = "tanh";
  expect_matches_naive(make_case(Cell::kLstm, 4, 5, 3, 13, kMask, o));
  o.activation = "sigmoid";
  expect_matches_naive(make_case(Cell::kSimple, 4, 5, 3, 14, kMask, o));
}

TEST(RnnOps, RecurrentDropoutMaskMultipliesEachGateBlock) {
  for (Cell cell : {Cell::kLstm, Cell::kGru, Cell::kSimple}) {
    for (bool reset_after : {true, false}) {
      ops::RnnOptions o;
      o.reset_after = reset_after;
      Case c = make_case(cell, 4, 5, 3, 21, kMask, o);
      Rng rng(3);
      c.rdm = Tensor({4, gates_of(cell) * 3}, DType::kF32);
      for (float& v : c.rdm.span<float>()) v = rng.uniform(0, 1) < 0.3f ? 0.0f : 1.0f / 0.7f;
      expect_matches_naive(c);
    }
  }
}

// Hand-computed single unit, two steps, no mask: LSTM with i = f = o = sigmoid(0) = 1/2.
TEST(RnnOps, LstmHandComputedCase) {
  Tensor xp = Tensor::from_vector<float>({0, 0, 1, 0, 0, 0, -1, 0}, {1, 2, 4});
  Tensor rk = Tensor::zeros({1, 4});
  Tensor z = Tensor::zeros({1, 1});
  auto r = ops::lstm_sequence(xp, rk, z, z);
  // c1 = 0.5 tanh(1), h1 = 0.5 tanh(c1); c2 = 0.5 c1 + 0.5 tanh(-1), h2 = 0.5 tanh(c2)
  const double c1 = 0.5 * std::tanh(1.0), c2 = 0.5 * c1 + 0.5 * std::tanh(-1.0);
  EXPECT_NEAR(r.y.data<float>()[0], 0.5 * std::tanh(c1), 1e-7);
  EXPECT_NEAR(r.y.data<float>()[1], 0.5 * std::tanh(c2), 1e-7);
  EXPECT_NEAR(r.states[1].data<float>()[0], c2, 1e-7);
}

// ---- masks: garbage never leaks, holes behave as Keras ----------------------------------------

TEST(RnnOps, GarbageAtMaskedStepsDoesNotLeak) {
  for (Cell cell : {Cell::kLstm, Cell::kGru, Cell::kSimple}) {
    Case c = make_case(cell, 4, 5, 3, 31, kMask, opts(true));
    Case clean = c;
    clean.xp = c.xp.clone();
    for (float& v : clean.xp.span<float>())
      if (!std::isfinite(v)) v = 0.0f;
    std::vector<Tensor> a = run_reference(c), b = run_reference(clean);
    for (size_t k = 0; k < a.size(); ++k) EXPECT_TRUE(tensors_equal(a[k], b[k])) << "output " << k;
    // A fully masked row: zeros out, initial states kept.
    for (int64_t t = 0; t < 5; ++t)
      for (int64_t u = 0; u < 3; ++u) EXPECT_EQ(a[0].data<float>()[(2 * 5 + t) * 3 + u], 0.0f);
    for (int64_t u = 0; u < 3; ++u)
      EXPECT_EQ(a[1].data<float>()[2 * 3 + u], c.h0.data<float>()[2 * 3 + u]);
    // Gradients: d x_proj is exactly 0 at masked steps, everything finite.
    Graph g;
    std::vector<Value> in;
    for (const Tensor& t : c.inputs()) in.push_back(g.constant(t));
    std::vector<Value> outs = g.add_node(op_of(cell), in, c.attrs());
    Value loss = ops::sum(outs[0]) + ops::sum(outs[1]);
    std::vector<Value> grads = gradients(loss, {in[0], in[1]});
    Executor ex(g, grads);
    std::vector<Tensor> d = ex.run();
    const int64_t GU = gates_of(cell) * 3;
    for (int64_t b = 0; b < 4; ++b)
      for (int64_t t = 0; t < 5; ++t)
        for (int64_t j = 0; j < GU; ++j) {
          const float v = d[0].data<float>()[(b * 5 + t) * GU + j];
          if (!kMask[b][t]) {
            EXPECT_EQ(v, 0.0f);
          }
          EXPECT_TRUE(std::isfinite(v));
        }
    for (float v : d[1].span<float>()) EXPECT_TRUE(std::isfinite(v));
  }
}

TEST(RnnOps, F32MaskEqualsBoolMask) {
  Case c = make_case(Cell::kLstm, 4, 5, 3, 41, kMask, opts(true));
  Case f = c;
  f.mask = c.mask.to(DType::kF32);
  std::vector<Tensor> a = run_reference(c), b = run_reference(f);
  for (size_t k = 0; k < a.size(); ++k) EXPECT_TRUE(tensors_equal(a[k], b[k]));
}

TEST(RnnOps, OutputBeforeTheFirstValidStepIsZeroNotTheInitialState) {
  // Keras: out_{-1} = 0 even with a non-zero initial state (tfjs differs, spec 9.9).
  Case c = make_case(Cell::kGru, 1, 3, 2, 51, {{0, 1, 0}}, opts(true));
  std::vector<Tensor> out = run_reference(c);
  EXPECT_EQ(out[0].data<float>()[0], 0.0f);
  EXPECT_EQ(out[0].data<float>()[1], 0.0f);
  EXPECT_NE(c.h0.data<float>()[0], 0.0f);
  // The masked step after the valid one repeats its output.
  EXPECT_EQ(out[0].data<float>()[4], out[0].data<float>()[2]);
  EXPECT_EQ(out[0].data<float>()[5], out[0].data<float>()[3]);
}

// ---- gradients --------------------------------------------------------------------------------

// Checks the gradient of the differentiable outputs (y and the final states) w.r.t. x_proj,
// the recurrent kernel (and bias) and the initial states, with the reference kernels and with
// the fastest ones.
void check_gradients(const Case& c) {
  GradCheckOptions o;
  for (int k = 0; k <= num_states(c.cell); ++k) o.outputs.push_back(k);
  const int n = 2 + (c.cell == Cell::kGru) + num_states(c.cell);
  for (int i = 0; i < n; ++i) o.wrt.push_back(i);
  set_kernel_choice(KernelChoice::kReference);
  expect_gradients_match(op_of(c.cell), c.inputs(), c.attrs(), o);
  set_kernel_choice(KernelChoice::kFastest);
  expect_gradients_match(op_of(c.cell), c.inputs(), c.attrs(), o);
}

// Masked steps hold finite values here: finite differences perturb every input.
Case finite_case(Cell cell, int64_t B, int64_t T, int64_t U, uint64_t seed,
                 std::vector<std::vector<int>> mask, ops::RnnOptions o) {
  Case c = make_case(cell, B, T, U, seed, {}, o);
  if (!mask.empty()) c.mask = bool_mask(mask);
  return c;
}

TEST(RnnOps, BackwardMatchesFiniteDifferences) {
  for (Cell cell : {Cell::kLstm, Cell::kGru, Cell::kSimple}) {
    for (bool seq : {true, false})
      for (bool back : {false, true}) {
        SCOPED_TRACE(std::string(op_of(cell)) + " seq=" + std::to_string(seq) +
                     " back=" + std::to_string(back));
        check_gradients(finite_case(cell, 4, 5, 3, 61, kMask, opts(seq, back)));
      }
    check_gradients(finite_case(cell, 2, 3, 2, 62, {}, opts(true)));
    check_gradients(finite_case(cell, 4, 5, 3, 63, kMask, opts(true, false, true)));
    check_gradients(finite_case(cell, 4, 5, 3, 64, kMask, opts(false, true, true)));
    testing::note_reference_tested(std::string(op_of(cell)) + "_backward");
  }
  for (bool reset_after : {true, false}) {
    ops::RnnOptions o = opts(true);
    o.reset_after = reset_after;
    check_gradients(finite_case(Cell::kGru, 4, 5, 3, 65, kMask, o));
    o.recurrent_activation = "hard_sigmoid";
    o.activation = "linear";
    check_gradients(finite_case(Cell::kGru, 4, 5, 3, 66, kMask, o));
  }
  ops::RnnOptions o = opts(false);
  o.activation = "sigmoid";
  o.recurrent_activation = "hard_sigmoid";
  check_gradients(finite_case(Cell::kLstm, 4, 5, 3, 67, kMask, o));
}

TEST(RnnOps, BackwardWithRecurrentDropout) {
  for (Cell cell : {Cell::kLstm, Cell::kGru, Cell::kSimple})
    for (bool reset_after : {true, false}) {
      ops::RnnOptions o = opts(true);
      o.reset_after = reset_after;
      Case c = finite_case(cell, 4, 5, 3, 71, kMask, o);
      Rng rng(4);
      c.rdm = Tensor({4, gates_of(cell) * 3}, DType::kF32);
      for (float& v : c.rdm.span<float>()) v = rng.uniform(0, 1) < 0.3f ? 0.0f : 1.0f / 0.7f;
      check_gradients(c);
    }
}

TEST(RnnOps, WorkspaceOutputsCarryNoGradient) {
  Case c = make_case(Cell::kLstm, 2, 3, 2, 81);
  Graph g;
  std::vector<Value> in;
  for (const Tensor& t : c.inputs()) in.push_back(g.constant(t));
  std::vector<Value> outs = g.add_node("lstm_sequence", in, c.attrs());
  ASSERT_EQ(outs.size(), 6u);
  expect_throws_with<UnsupportedError>([&] { gradients(ops::sum(outs[5]), {in[0]}); }, "workspace");
}

// ---- fast kernels ------------------------------------------------------------------------------

// The backward op's inputs for case c: random output gradients and the reference forward's
// workspace.
std::vector<Tensor> backward_inputs(const Case& c, uint64_t seed) {
  std::vector<Tensor> fwd = run_reference(c);
  Rng rng(seed);
  const int ns = num_states(c.cell);
  std::vector<Tensor> in{testing::random_tensor(fwd[0].shape(), rng)};
  for (int s = 0; s < ns; ++s) in.push_back(testing::random_tensor(fwd[1 + s].shape(), rng));
  in.push_back(c.rk);
  for (size_t k = 1 + ns; k < fwd.size(); ++k) in.push_back(fwd[k]);
  if (c.mask.defined()) in.push_back(c.mask);
  return in;
}

// Masks with holes, left and right padding and fully masked rows, from a seed.
std::vector<std::vector<int>> random_mask(int64_t B, int64_t T, uint64_t seed) {
  Rng rng(seed);
  std::vector<std::vector<int>> m(B, std::vector<int>(T));
  for (int64_t b = 0; b < B; ++b) {
    const int kind = static_cast<int>(rng.next_u32() % 4);
    const int64_t len = rng.next_u32() % (T + 1);
    for (int64_t t = 0; t < T; ++t)
      m[b][t] = kind == 0   ? t < len
                : kind == 1 ? t >= T - len
                : kind == 2 ? rng.next_u32() % 3 != 0
                            : 1;
  }
  return m;
}

// Fast vs reference on every output (workspace included), both kernel builds.
TEST(RnnOps, FastKernelsMatchTheReference) {
  struct Geom {
    int64_t b, t, u;
  };
  const std::vector<Geom> geoms{{1, 1, 1},   {1, 4, 5},   {3, 9, 16}, {7, 5, 17},
                                {13, 3, 33}, {32, 6, 64}, {5, 7, 7},  {2, 12, 48}};
  for (bool portable : {false, true}) {
    // Each listed build in turn (the avx512 rows where the CPU has AVX-512).
    const auto which = [portable](const FastKernel& fk) {
      return (fk.isa == Isa::kPortable) == portable;
    };
    const int builds = portable || cpu_has(Isa::kAvx512) ? 1 : 0;
    for (Cell cell : {Cell::kLstm, Cell::kGru, Cell::kSimple})
      for (const Geom& g : geoms)
        for (int variant = 0; variant < 4; ++variant) {
          if (portable && g.b * g.u > 200) continue;  // the portable build: small cases only
          ops::RnnOptions o = opts(variant % 2 == 0, variant >= 2, variant == 3);
          o.reset_after = variant != 1;
          if (variant == 2) o.activation = "relu";
          if (variant == 3) o.recurrent_activation = "hard_sigmoid";
          SCOPED_TRACE(std::string(op_of(cell)) + " B=" + std::to_string(g.b) +
                       " T=" + std::to_string(g.t) + " U=" + std::to_string(g.u) +
                       " variant=" + std::to_string(variant) + (portable ? " portable" : ""));
          const uint64_t seed = g.b * 1000 + g.t * 100 + g.u + variant;
          Case c = make_case(
              cell, g.b, g.t, g.u, seed,
              variant == 0 ? std::vector<std::vector<int>>{} : random_mask(g.b, g.t, seed));
          c.opt = o;
          EXPECT_EQ(testing::expect_fast_matches_reference(op_of(cell), c.inputs(), c.attrs(),
                                                           kFastAtol, kFastRtol, which),
                    builds);
          EXPECT_EQ(testing::expect_fast_matches_reference(std::string(op_of(cell)) + "_backward",
                                                           backward_inputs(c, seed), c.attrs(),
                                                           kFastAtol, kFastRtol, which),
                    builds);
        }
  }
}

// Rows are split across threads, never the sums: 1 and 2 threads give identical results.
TEST(RnnOps, FastKernelsDoNotDependOnTheThreadCount) {
  for (Cell cell : {Cell::kLstm, Cell::kGru, Cell::kSimple}) {
    Case c = make_case(cell, 16, 12, 32, 5, random_mask(16, 12, 5), opts(true));
    std::vector<Tensor> bin = backward_inputs(c, 6);
    set_num_threads(1);
    std::vector<Tensor> f1 = run_op(op_of(cell), c.inputs(), c.attrs());
    std::vector<Tensor> b1 = run_op(std::string(op_of(cell)) + "_backward", bin, c.attrs());
    set_num_threads(2);
    std::vector<Tensor> f2 = run_op(op_of(cell), c.inputs(), c.attrs());
    std::vector<Tensor> b2 = run_op(std::string(op_of(cell)) + "_backward", bin, c.attrs());
    set_num_threads(1);
    for (size_t k = 0; k < f1.size(); ++k) EXPECT_TRUE(tensors_equal(f2[k], f1[k])) << k;
    for (size_t k = 0; k < b1.size(); ++k) EXPECT_TRUE(tensors_equal(b2[k], b1[k])) << k;
  }
}

// The recurrent dropout mask runs on the reference kernel: no fast kernel claims it.
TEST(RnnOps, RecurrentDropoutHasNoFastKernel) {
  Case c = make_case(Cell::kLstm, 2, 3, 2, 9);
  c.rdm = Tensor::full({2, 8}, 2.0);
  EXPECT_EQ(testing::expect_fast_matches_reference("lstm_sequence", c.inputs(), c.attrs()), 0);
}

// ---- shapes and errors ----------------------------------------------------------------------

TEST(RnnOps, SymbolicShapesWithUnknownBatchAndTime) {
  Graph g;
  Value xp = g.placeholder("xp", DType::kF32, {kUnknown, kUnknown, 12});
  Value rk = g.placeholder("rk", DType::kF32, {3, 12});
  Value h0 = g.placeholder("h0", DType::kF32, {kUnknown, 3});
  Value m = g.placeholder("m", DType::kBool, {kUnknown, kUnknown});
  auto r = ops::lstm_sequence(xp, rk, h0, h0, {}, m);
  EXPECT_EQ(r.y.shape(), Shape({kUnknown, kUnknown, 3}));
  EXPECT_EQ(r.states[1].shape(), Shape({kUnknown, 3}));
  ops::RnnOptions last;
  last.return_sequences = false;
  auto r2 = ops::lstm_sequence(xp, rk, h0, h0, last);
  EXPECT_EQ(r2.y.shape(), Shape({kUnknown, 3}));
  Value rb = g.placeholder("rb", DType::kF32, {9});
  Value xg = g.placeholder("xg", DType::kF32, {kUnknown, 7, 9});
  Value rg = g.placeholder("rg", DType::kF32, {3, 9});
  EXPECT_EQ(ops::gru_sequence(xg, rg, rb, h0).y.shape(), Shape({kUnknown, 7, 3}));
}

TEST(RnnOps, Errors) {
  Case c = make_case(Cell::kLstm, 2, 3, 2, 91);
  auto lstm = [&](const Tensor& xp, const Tensor& rk, const Tensor& h0, const Tensor& mask,
                  const std::string& act = "tanh") {
    ops::RnnOptions o;
    o.activation = act;
    ops::lstm_sequence(xp, rk, h0, c.c0, o, mask);
  };
  expect_throws_with<ShapeError>(
      [&] {
        lstm(c.xp.reshape({6, 8}), c.rk, c.h0, Tensor());
      },
      "argument 'x_proj': expected rank 3");
  expect_throws_with<ShapeError>(
      [&] {
        lstm(c.xp, Tensor::zeros({3, 12}), c.h0, Tensor());
      },
      "argument 'x_proj': expected shape [2,3,12]");
  expect_throws_with<ShapeError>(
      [&] {
        lstm(c.xp, c.rk, Tensor::zeros({2, 3}), Tensor());
      },
      "argument 'h0': expected shape [2,2] (batch, units)");
  expect_throws_with<ShapeError>(
      [&] {
        lstm(c.xp, c.rk, c.h0, Tensor::zeros({2, 4}, DType::kBool));
      },
      "argument 'mask': expected shape [2,3] (batch, timesteps) but found [2,4]");
  expect_throws_with<ShapeError>(
      [&] {
        lstm(c.xp, c.rk, c.h0, Tensor::zeros({2, 3, 1}, DType::kBool));
      },
      "argument 'mask': expected shape [2,3]");
  expect_throws_with<DTypeError>(
      [&] {
        lstm(c.xp, c.rk, c.h0, Tensor::zeros({2, 3}, DType::kS32));
      },
      "argument 'mask': expected dtype bool or f32");
  expect_throws_with<DTypeError>([&] { lstm(c.xp.to(DType::kS32), c.rk, c.h0, Tensor()); },
                                 "argument 'x_proj'");
  expect_throws_with<ValueError>([&] { lstm(c.xp, c.rk, c.h0, Tensor(), "gelu"); },
                                 "attribute 'activation': expected tanh, sigmoid");
  expect_throws_with<ValueError>(
      [&] {
        run_op("lstm_sequence", {c.xp, c.rk, c.h0}, {});
      },
      "expected 4 inputs (x_proj, recurrent_kernel, h0, c0) but found 3");
  expect_throws_with<ValueError>(
      [&] {
        run_op("lstm_sequence", {c.xp, c.rk, c.h0, c.c0}, {{"masked", true}});
      },
      "expected 5 inputs (x_proj, recurrent_kernel, h0, c0, mask) but found 4");
  expect_throws_with<ShapeError>(
      [&] { ops::gru_sequence(make_case(Cell::kGru, 2, 3, 2, 1).xp, c.rk, c.rb, c.h0); },
      "argument 'recurrent_kernel': expected shape [2,6] (units, gates*units)");
}

}  // namespace
}  // namespace lowbit
