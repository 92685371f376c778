// Test helpers shared by every op test: random inputs, tensor comparison, finite-difference
// gradient checks, fast-vs-reference checks, and a record of which ops each check covered (the
// coverage test in tests/ops/registry_test.cc asserts every registered op was covered).
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <set>
#include <string>
#include <vector>

#include "lowbit/graph.h"
#include "lowbit/ops.h"
#include "lowbit/rng.h"

namespace lowbit::testing {

// Where ../shared is (golden vectors, MNIST split): $LOWBIT_SHARED_DIR or the build default.
std::string shared_dir();

Tensor random_tensor(const Shape& shape, Rng& rng, float lo = -1.0f, float hi = 1.0f);
Tensor random_int_tensor(const Shape& shape, Rng& rng, int64_t lo, int64_t hi,
                         DType dtype = DType::kS64);

// |got - want| <= atol + rtol * |want| everywhere; same dtype and shape. Reports the worst index.
::testing::AssertionResult tensors_near(const Tensor& got, const Tensor& want, double atol,
                                        double rtol);
::testing::AssertionResult tensors_equal(const Tensor& got, const Tensor& want);

// Finite differences in f32 with central differences. Defaults: eps = 1e-2 on inputs of order 1
// keeps the roundoff of the f32 objective (~6e-8 * |L| / eps) and the truncation error
// (~eps^2/6 * f''') both near 1e-4, well inside the tolerance; a wrong gradient rule shows up
// as an O(1) difference. Choose inputs away from kinks (relu at 0, max ties).
struct GradCheckOptions {
  double eps = 1e-2;
  double atol = 2e-3;
  double rtol = 2e-2;
  std::vector<int> wrt;  // input indices to check; empty: every f32 input
  // Outputs that enter the objective; empty: every f32 output. Ops whose extra outputs are a
  // workspace for their backward pass (no gradient) name the differentiable ones.
  std::vector<int> outputs;
  uint64_t seed = 1234;  // for the random cotangents
};

// Builds a graph running `op` on placeholders, appends its gradient with autodiff for the
// objective L = sum_k sum(out_k * c_k) (random c_k), runs it, and compares with central
// differences of L computed eagerly with the reference kernels.
void expect_gradients_match(const std::string& op, const std::vector<Tensor>& inputs,
                            const Attrs& attrs = {}, GradCheckOptions opt = {});

// Runs every listed fast kernel of `op` (or those `which` selects) whose ISA this CPU has and
// that supports these inputs, and compares it with the reference kernel, then again with NaN,
// +Inf and -Inf written into the first f32 input (NaN must match NaN, infinities must be
// equal). Returns how many fast kernels ran. Each run is recorded (note_kernel_checked).
int expect_fast_matches_reference(const std::string& op, const std::vector<Tensor>& inputs,
                                  const Attrs& attrs = {}, double atol = 1e-5, double rtol = 1e-5,
                                  const std::function<bool(const FastKernel&)>& which = {});

// Runs one listed kernel of `def` on `inputs` as the executor would (infer, prepare, supports,
// run) into fresh `outs`; false (outs empty) when the CPU lacks its ISA or it does not support
// the inputs.
bool run_listed_kernel(const OpDef& def, const FastKernel& fk, const std::vector<Tensor>& inputs,
                       const Attrs& attrs, std::vector<Tensor>& outs);

// Records that kernel `fk` was compared with the reference on `inputs`. The registry test
// requires every listed kernel (whose ISA this CPU has) to be compared on at least two input
// signatures, one of them an edge shape (is_edge_shape).
void note_kernel_checked(const FastKernel& fk, const std::vector<Tensor>& inputs);
// Input 0 has fewer than 16 elements or an innermost dim that is not a multiple of 16 (a vector
// tail for every ISA).
bool is_edge_shape(const std::vector<Tensor>& inputs);
// "<kernel> <input signature> <edge 0|1>" of every recorded comparison.
std::set<std::string>& checked_kernel_cases();

// Calls f and expects exception E whose message contains `needle`.
template <class E, class F>
void expect_throws_with(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected an exception containing '" << needle << "'";
  } catch (const E& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << "message was: " << e.what();
  }
}

// Ops exercised by expect_gradients_match / expect_fast_matches_reference / reference golden
// tests (note_reference_tested) in this process.
std::set<std::string>& gradchecked_ops();
std::set<std::string>& reference_tested_ops();
void note_reference_tested(const std::string& op);
// Ops whose fast kernels expect_fast_matches_reference also compared with the reference on
// inputs holding NaN, +Inf and -Inf (every op with a fast kernel must be here: registry test).
std::set<std::string>& nonfinite_checked_ops();

}  // namespace lowbit::testing
