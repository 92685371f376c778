// Every op in the registry must be covered: differentiable ops by a finite-difference gradient
// check, every op with a kernel by a golden/reference test. Checked after the whole suite ran:
// - one process running every test (./lowbit_tests with no filter): at its end (CoverageCheck);
// - ctest, one process per test: each process records the tests it ran and the ops they covered
//   in $LOWBIT_COVERAGE_DIR, and the test op_registry_coverage (a ctest fixture cleanup, so it
//   runs after all of them) merges the records. If only some tests ran (ctest -R ...), it skips.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "lowbit/graph.h"
#include "lowbit/op.h"
#include "lowbit/ops.h"
#include "testing/op_testing.h"

namespace lowbit {
namespace {

bool is_source(const OpDef& d) { return !d.reference && d.fast.empty(); }

constexpr const char* kCheckName = "RegistryCoverage.EveryOpCoveredBySuite";

// Every listed kernel whose ISA this CPU has was compared with the reference on >= 2 input
// signatures, one of them an edge shape (testing::is_edge_shape).
void expect_every_kernel_checked(const std::set<std::string>& cases) {
  std::map<std::string, std::pair<std::set<std::string>, bool>> seen;
  for (const std::string& c : cases) {
    std::istringstream in(c);
    std::string kernel, sig, edge;
    in >> kernel >> sig >> edge;
    seen[kernel].first.insert(sig);
    seen[kernel].second = seen[kernel].second || edge == "1";
  }
  std::string missing;
  for (const OpDef* d : all_ops())
    for (const FastKernel& fk : d->fast) {
      if (!cpu_has(fk.isa)) continue;
      const auto it = seen.find(fk.name);
      if (it == seen.end())
        missing += " " + fk.name + " (never)";
      else if (it->second.first.size() < 2 || !it->second.second)
        missing += " " + fk.name + " (" + std::to_string(it->second.first.size()) +
                   " signatures, edge " + (it->second.second ? "yes" : "no") + ")";
    }
  EXPECT_EQ(missing, "") << "listed kernels not compared with their reference on >= 2 input "
                            "signatures including an edge shape:"
                         << missing;
}

void expect_every_op_covered(const std::set<std::string>& graded, const std::set<std::string>& ref,
                             const std::set<std::string>& nonfinite) {
  std::string missing_grad, missing_ref, missing_nonfinite;
  for (const OpDef* d : all_ops()) {
    if (is_source(*d)) continue;
    const bool g = graded.count(d->name) != 0;
    if (d->grad && !g) missing_grad += " " + d->name;
    if (!g && !ref.count(d->name)) missing_ref += " " + d->name;
    if (!d->fast.empty() && !nonfinite.count(d->name)) missing_nonfinite += " " + d->name;
  }
  EXPECT_EQ(missing_grad, "") << "differentiable ops without a gradient check:" << missing_grad;
  EXPECT_EQ(missing_ref, "") << "ops without any test of their kernel:" << missing_ref;
  EXPECT_EQ(missing_nonfinite, "")
      << "ops whose fast kernels were never compared with the reference on NaN/Inf inputs "
         "(testing::expect_fast_matches_reference does it):"
      << missing_nonfinite;
}

// Every test of the binary (but the merging check itself and disabled tests), by full name.
std::set<std::string> all_test_names(bool only_run) {
  std::set<std::string> names;
  const auto* u = ::testing::UnitTest::GetInstance();
  for (int i = 0; i < u->total_test_suite_count(); ++i) {
    const auto* suite = u->GetTestSuite(i);
    for (int j = 0; j < suite->total_test_count(); ++j) {
      const auto* t = suite->GetTestInfo(j);
      const std::string name = std::string(t->test_suite_name()) + "." + t->name();
      if (name == kCheckName || name.find("DISABLED_") != std::string::npos) continue;
      if (only_run && !t->should_run()) continue;
      names.insert(name);
    }
  }
  return names;
}

class CoverageCheck : public ::testing::Environment {
 public:
  void TearDown() override {
    if (const char* dir = std::getenv("LOWBIT_COVERAGE_DIR")) {
      // ctest's per-test process: record, the merging check decides.
      std::ofstream f(std::filesystem::path(dir) /
                      ("process-" + std::to_string(::getpid()) + ".txt"));
      for (const std::string& t : all_test_names(/*only_run=*/true)) f << "test " << t << "\n";
      for (const std::string& op : testing::gradchecked_ops()) f << "grad " << op << "\n";
      for (const std::string& op : testing::reference_tested_ops()) f << "ref " << op << "\n";
      for (const std::string& op : testing::nonfinite_checked_ops()) f << "nan " << op << "\n";
      for (const std::string& c : testing::checked_kernel_cases()) f << "kernel " << c << "\n";
      return;
    }
    if (::testing::GTEST_FLAG(filter) != "*") return;
    expect_every_op_covered(testing::gradchecked_ops(), testing::reference_tested_ops(),
                            testing::nonfinite_checked_ops());
    expect_every_kernel_checked(testing::checked_kernel_cases());
  }
};
const auto* const kCoverage = ::testing::AddGlobalTestEnvironment(new CoverageCheck);

// Run by ctest only (op_registry_coverage, after every other test): merges the records.
TEST(RegistryCoverage, EveryOpCoveredBySuite) {
  const char* dir = std::getenv("LOWBIT_COVERAGE_CHECK_DIR");
  if (!dir) GTEST_SKIP() << "run by ctest as op_registry_coverage (LOWBIT_COVERAGE_CHECK_DIR)";
  std::set<std::string> ran, graded, ref, nonfinite, kernel_cases;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    std::ifstream f(e.path());
    std::string kind, name;
    while (f >> kind >> name) {
      if (kind == "kernel") {
        std::string rest;
        std::getline(f, rest);
        kernel_cases.insert(name + rest);
        continue;
      }
      (kind == "test"   ? ran
       : kind == "grad" ? graded
       : kind == "nan"  ? nonfinite
                        : ref)
          .insert(name);
    }
  }
  const std::set<std::string> all = all_test_names(/*only_run=*/false);
  std::string not_run;
  size_t n_not_run = 0;
  for (const std::string& t : all) {
    if (!ran.count(t) && n_not_run++ < 5) not_run += " " + t;
  }
  if (n_not_run) {
    GTEST_SKIP() << "only " << all.size() - n_not_run << " of " << all.size()
                 << " tests ran (e.g. not:" << not_run << "): the coverage check needs them all";
  }
  expect_every_op_covered(graded, ref, nonfinite);
  expect_every_kernel_checked(kernel_cases);
}

TEST(Registry, EveryOpIsWellFormed) {
  for (const OpDef* d : all_ops()) {
    SCOPED_TRACE(d->name);
    EXPECT_TRUE(static_cast<bool>(d->infer));
    EXPECT_FALSE(d->doc.empty()) << "op " << d->name << " has no doc line";
    if (!is_source(*d)) {
      EXPECT_TRUE(static_cast<bool>(d->reference)) << "no reference kernel";
    }
  }
}

// The kernel table's names carry the op and the ISA: `<op>[_layout]_<dtype>__<isa>`.
TEST(Registry, KernelNamesFollowTheConvention) {
  for (const OpDef* d : all_ops())
    for (const FastKernel& fk : d->fast) {
      SCOPED_TRACE(fk.name);
      EXPECT_EQ(fk.name.rfind(d->name + "_", 0), 0u);
      const std::string suffix = std::string("__") + isa_name(fk.isa);
      ASSERT_GT(fk.name.size(), suffix.size());
      EXPECT_EQ(fk.name.substr(fk.name.size() - suffix.size()), suffix);
    }
  const OpDef& add = find_op("add");
  auto with_kernel = [&](const std::string& op, FastKernel fk) {
    OpDef d{.name = op, .num_inputs = 2, .infer = add.infer, .reference = add.reference};
    d.fast.push_back(std::move(fk));
    register_op(std::move(d));
  };
  testing::expect_throws_with<ValueError>(
      [&] {
        with_kernel(
            "test_add_misnamed",
            {.name = "test_add_misnamed_f32__avx2", .isa = Isa::kAvx512, .run = add.reference});
      },
      "must be named <op>[_layout]_<dtype>__avx512");
  testing::expect_throws_with<ValueError>(
      [&] {
        with_kernel("test_add_other",
                    {.name = "add_f32__portable", .isa = Isa::kPortable, .run = add.reference});
      },
      "fast kernel 'add_f32__portable' must be named");
  testing::expect_throws_with<ValueError>(
      [&] { with_kernel("test_add_norun", {.name = "test_add_norun_f32__portable"}); },
      "has no run function");
}

// The prepare step runs once per executor plan, not per call; a new input shape prepares again.
TEST(Registry, PrepareRunsOncePerPlan) {
  static int prepared = 0;
  const OpDef& neg = find_op("neg");
  register_op({.name = "test_counting_neg",
               .num_inputs = 1,
               .infer = neg.infer,
               .prepare = [](const PrepareCtx& c) -> std::any {
                 ++prepared;
                 return c.in[0].shape.numel();
               },
               .reference =
                   [](const KernelCtx& k) {
                     const int64_t n = k.params<int64_t>();
                     for (int64_t i = 0; i < n; ++i)
                       k.out[0].data<float>()[i] = -k.in[0].data<float>()[i];
                   },
               .doc = "neg, counting its prepare calls (a test op)"});
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {kUnknown});
  Value y = ops::apply1("test_counting_neg", {x});
  Executor ex(g, {y});
  for (int i = 0; i < 3; ++i) {
    const Tensor in = Tensor::full({4}, 2.0);
    const std::vector<Tensor> out = ex.run({{x, in}});
    EXPECT_EQ(out[0].data<float>()[3], -2.0f);
  }
  EXPECT_EQ(prepared, 1);
  ex.run({{x, Tensor::full({6}, 1.0)}});
  EXPECT_EQ(prepared, 2);
  ex.run({{x, Tensor::full({4}, 1.0)}});  // the first plan again: prepared already
  EXPECT_EQ(prepared, 2);
  testing::note_reference_tested("test_counting_neg");
}

// prepare sees which inputs are graph constants (and their values): a fed placeholder and a
// computed value are not; eagerly (run_op) nothing is.
TEST(Registry, PrepareSeesWhichInputsAreConstants) {
  static std::vector<std::vector<float>> seen;  // per prepare: per input, its first value or NaN
  const OpDef& add = find_op("add");
  register_op({.name = "test_constant_add",
               .num_inputs = 2,
               .infer = add.infer,
               .prepare = [](const PrepareCtx& c) -> std::any {
                 std::vector<float> v;
                 for (size_t i = 0; i < c.in.size(); ++i)
                   v.push_back(c.is_constant(i) ? c.constants[i]->data<float>()[0] : std::nanf(""));
                 seen.push_back(v);
                 return {};
               },
               .reference =
                   [](const KernelCtx& k) {
                     for (int64_t i = 0; i < k.out[0].numel(); ++i)
                       k.out[0].data<float>()[i] =
                           k.in[0].data<float>()[i] + k.in[1].data<float>()[i];
                   },
               .doc = "add, recording which inputs its prepare saw as constants (a test op)"});
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {3});
  Value c = g.constant(Tensor::full({3}, 7.0), "seven");
  Value y = ops::apply1("test_constant_add", {x, c});
  Value z = ops::apply1("test_constant_add", {y, ops::neg(x)});
  Executor ex(g, {z});
  const std::vector<Tensor> out = ex.run({{x, Tensor::full({3}, 1.0)}});
  EXPECT_EQ(out[0].data<float>()[2], 7.0f);  // (1 + 7) + (-1)
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_TRUE(std::isnan(seen[0][0]));
  EXPECT_EQ(seen[0][1], 7.0f);
  EXPECT_TRUE(std::isnan(seen[1][0]) && std::isnan(seen[1][1]));
  run_op("test_constant_add", {Tensor::full({3}, 1.0), Tensor::full({3}, 2.0)}, {});
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_TRUE(std::isnan(seen[2][0]) && std::isnan(seen[2][1]));
  testing::note_reference_tested("test_constant_add");
}

TEST(Isa, NamesRoundTripAndTheCpuAnswersConsistently) {
  for (Isa i :
       {Isa::kPortable, Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Vnni, Isa::kAvx512Vbmi, Isa::kDnnl})
    EXPECT_EQ(isa_from_name(isa_name(i)), i);
  testing::expect_throws_with<ValueError>([] { isa_from_name("sse9"); },
                                          "unknown ISA 'sse9' (expected one of portable");
  EXPECT_TRUE(cpu_has(Isa::kPortable));
  EXPECT_TRUE(cpu_has(Isa::kDnnl));
  if (cpu_has(Isa::kAvx512Vnni)) {
    EXPECT_TRUE(cpu_has(Isa::kAvx512));
  }
  EXPECT_EQ(cpu_has(Isa::kAvx512Vbmi),
            cpu_has(Isa::kAvx512) && __builtin_cpu_supports("avx512vbmi"));
  EXPECT_EQ(cpu_has(Isa::kAvx512),
            __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"));
  EXPECT_TRUE(cpu_has(best_cpu_isa()));
}

TEST(Registry, UnknownOpSuggestsCloseNames) {
  testing::expect_throws_with<ValueError>([] { find_op("ad"); }, "did you mean:");
  testing::expect_throws_with<ValueError>([] { find_op("ad"); }, " add,");
  testing::expect_throws_with<ValueError>(
      [] { register_op({.name = "add", .infer = find_op("add").infer}); }, "already registered");
}

}  // namespace
}  // namespace lowbit
