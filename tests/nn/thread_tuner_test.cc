// ThreadTuner (FitOptions::tune_threads): the probe schedule and the choice, with made-up step
// times; and fit(): the caller's thread count survives, one thread is left alone.
#include "nn/thread_tuner.h"

#include <gtest/gtest.h>

#include <functional>
#include <vector>

#include "lowbit/nn/layers.h"
#include "lowbit/nn/model.h"
#include "lowbit/threads.h"
#include "testing/op_testing.h"

namespace lowbit::nn {
namespace {

// Runs `steps` steps; a step on `t` threads takes time(t, step). Returns the counts used.
std::vector<int> drive(ThreadTuner& tuner, int max_threads, int steps,
                       const std::function<double(int, int)>& time) {
  std::vector<int> used;
  for (int s = 0; s < steps; ++s) {
    used.push_back(tuner.next(max_threads));
    tuner.record(time(used.back(), s));
  }
  return used;
}

TEST(ThreadTuner, ProbesOneThreadThenTheCallersCountThenKeepsTheFaster) {
  ThreadTuner tuner(/*block=*/4, /*period=*/1000);
  // Two threads twice as fast: after the probe (steps 1-4 one thread, 5-8 two) it stays on 2.
  auto used = drive(tuner, 2, 20, [](int t, int) { return t == 2 ? 1.0 : 2.0; });
  const std::vector<int> expect{2, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2};
  EXPECT_EQ(used, expect);
  EXPECT_EQ(tuner.chosen(), 2);
}

TEST(ThreadTuner, ChoosesOneThreadWhenItIsClearlyFaster) {
  ThreadTuner tuner(4, 1000);
  auto used = drive(tuner, 2, 12, [](int t, int) { return t == 2 ? 1.2 : 1.0; });
  EXPECT_EQ(used.back(), 1);
  EXPECT_EQ(tuner.chosen(), 1);
}

TEST(ThreadTuner, KeepsTheCallersCountWithinTheMargin) {
  ThreadTuner tuner(4, 1000, /*margin=*/0.03);
  drive(tuner, 2, 12, [](int t, int) { return t == 2 ? 1.02 : 1.0; });  // 2% slower: noise
  EXPECT_EQ(tuner.chosen(), 2);
}

TEST(ThreadTuner, IgnoresTheFirstStepOfEachBlock) {
  // The first step on each count pays for moving data between caches: a huge time there must
  // not decide. Steps 1 and 5 are the first of their blocks.
  ThreadTuner tuner(4, 1000);
  drive(tuner, 2, 12, [](int t, int s) {
    if (s == 5) return 100.0;  // first two-thread step
    return t == 2 ? 1.0 : 1.5;
  });
  EXPECT_EQ(tuner.chosen(), 2);
  ThreadTuner other(4, 1000);
  drive(other, 2, 12, [](int t, int s) {
    if (s == 1) return 100.0;  // first one-thread step
    return t == 2 ? 1.5 : 1.0;
  });
  EXPECT_EQ(other.chosen(), 1);
}

TEST(ThreadTuner, ProbesAgainAfterThePeriodAndWhenTheCountChanges) {
  ThreadTuner tuner(2, /*period=*/10);
  // Period 10 with blocks of 2: steps 0-9 probe (1-2 one thread, 3-4 two), step 10 restarts.
  bool one_fast = true;
  auto time = [&](int t, int) { return (t == 1) == one_fast ? 1.0 : 2.0; };
  drive(tuner, 2, 10, time);
  EXPECT_EQ(tuner.chosen(), 1);
  one_fast = false;  // the machine changed
  auto used = drive(tuner, 2, 10, time);
  EXPECT_EQ(used[1], 1);  // probing again
  EXPECT_EQ(used[3], 2);
  EXPECT_EQ(tuner.chosen(), 2);
  EXPECT_EQ(used.back(), 2);
  // A new caller count restarts at once; one thread never probes.
  EXPECT_EQ(tuner.next(1), 1);
  tuner.record(1.0);
  EXPECT_EQ(drive(tuner, 1, 10, time), std::vector<int>(10, 1));
}

TEST(ThreadTuner, FitRestoresTheCallersThreadCount) {
  Tensor x({64, 4}, DType::kF32), y({64}, DType::kS64);
  for (int64_t i = 0; i < 64; ++i) {
    y.data<int64_t>()[i] = i % 2;
    for (int d = 0; d < 4; ++d) x.data<float>()[i * 4 + d] = static_cast<float>((i * 7 + d) % 5);
  }
  auto model = [] {
    reset_layer_names();
    set_random_seed(1);
    auto m = Sequential::create({InputSpec({4}), Dense(8, {.activation = "relu"}), Dense(2)});
    m->compile({.optimizer = Adam({.learning_rate = 0.01}),
                .loss = SparseCategoricalCrossentropy({.from_logits = true})});
    return m;
  };
  // 4 steps: the last one (step 3) runs inside the one-thread probe block.
  for (bool tune : {true, false}) {
    set_num_threads(2);
    model()->fit(x, y, {.epochs = 1, .batch_size = 16, .verbose = 0, .tune_threads = tune});
    EXPECT_EQ(num_threads(), 2) << "tune_threads=" << tune;
  }
  // An exception ends fit the same way (a label out of range).
  Tensor bad = y.clone();
  bad.data<int64_t>()[20] = 7;
  set_num_threads(2);
  EXPECT_THROW(model()->fit(x, bad, {.epochs = 1, .batch_size = 8, .verbose = 0}), Error);
  EXPECT_EQ(num_threads(), 2);
  set_num_threads(1);
  model()->fit(x, y, {.epochs = 1, .batch_size = 16, .verbose = 0});
  EXPECT_EQ(num_threads(), 1);
}

}  // namespace
}  // namespace lowbit::nn
