// Every op in the registry must be covered: differentiable ops by a finite-difference gradient
// check, every op with a kernel by a golden/reference test. Checked after the whole suite ran:
// - one process running every test (./lowbit_tests with no filter): at its end (CoverageCheck);
// - ctest, one process per test: each process records the tests it ran and the ops they covered
//   in $LOWBIT_COVERAGE_DIR, and the test op_registry_coverage (a ctest fixture cleanup, so it
//   runs after all of them) merges the records. If only some tests ran (ctest -R ...), it skips.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "lowbit/op.h"
#include "testing/op_testing.h"

namespace lowbit {
namespace {

bool is_source(const OpDef& d) { return !d.reference && d.fast.empty(); }

constexpr const char* kCheckName = "RegistryCoverage.EveryOpCoveredBySuite";

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
      return;
    }
    if (::testing::GTEST_FLAG(filter) != "*") return;
    expect_every_op_covered(testing::gradchecked_ops(), testing::reference_tested_ops(),
                            testing::nonfinite_checked_ops());
  }
};
const auto* const kCoverage = ::testing::AddGlobalTestEnvironment(new CoverageCheck);

// Run by ctest only (op_registry_coverage, after every other test): merges the records.
TEST(RegistryCoverage, EveryOpCoveredBySuite) {
  const char* dir = std::getenv("LOWBIT_COVERAGE_CHECK_DIR");
  if (!dir) GTEST_SKIP() << "run by ctest as op_registry_coverage (LOWBIT_COVERAGE_CHECK_DIR)";
  std::set<std::string> ran, graded, ref, nonfinite;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    std::ifstream f(e.path());
    std::string kind, name;
    while (f >> kind >> name)
      (kind == "test"   ? ran
       : kind == "grad" ? graded
       : kind == "nan"  ? nonfinite
                        : ref)
          .insert(name);
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

TEST(Registry, UnknownOpSuggestsCloseNames) {
  testing::expect_throws_with<ValueError>([] { find_op("ad"); }, "did you mean:");
  testing::expect_throws_with<ValueError>([] { find_op("ad"); }, " add,");
  testing::expect_throws_with<ValueError>(
      [] { register_op({.name = "add", .infer = find_op("add").infer}); }, "already registered");
}

}  // namespace
}  // namespace lowbit
