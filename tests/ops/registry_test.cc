// Every op in the registry must be covered: differentiable ops by a finite-difference gradient
// check, every op with a kernel by a golden/reference test. Checked after the whole suite ran
// (skipped when a --gtest_filter selects a subset).
#include <gtest/gtest.h>

#include "lowbit/op.h"
#include "testing/op_testing.h"

namespace lowbit {
namespace {

bool is_source(const OpDef& d) { return !d.reference && d.fast.empty(); }

class CoverageCheck : public ::testing::Environment {
 public:
  void TearDown() override {
    if (::testing::GTEST_FLAG(filter) != "*") return;
    std::string missing_grad, missing_ref;
    for (const OpDef* d : all_ops()) {
      if (is_source(*d)) continue;
      bool graded = testing::gradchecked_ops().count(d->name) != 0;
      if (d->grad && !graded) missing_grad += " " + d->name;
      if (!graded && !testing::reference_tested_ops().count(d->name)) missing_ref += " " + d->name;
    }
    EXPECT_EQ(missing_grad, "") << "differentiable ops without a gradient check:" << missing_grad;
    EXPECT_EQ(missing_ref, "") << "ops without any test of their kernel:" << missing_ref;
  }
};
const auto* const kCoverage = ::testing::AddGlobalTestEnvironment(new CoverageCheck);

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
