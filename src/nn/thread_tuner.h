// Thread-count tuning for the training loop (FitOptions::tune_threads).
//
// On a shared 2-core virtual machine a second thread is not always a gain: in some states of the
// host, moving cache lines between the two cores is slow, and a step of small kernels (the MLP of
// bench/train_bench) then runs slower on 2 threads than on 1 (docs/performance.md). The training
// loop therefore times both, now and then, and runs with the faster. Steps are counted from the
// start of a probe: step 0 runs with the current choice and is not timed (the first one may
// build plans), steps 1 .. block run on one thread and block + 1 .. 2 * block on the caller's
// count — the first step of each block is not timed either: it pays for moving the data to the
// other cores' caches — and one thread is chosen only when its median step is faster by more
// than `margin`. The choice holds for `period` steps, then a new probe starts; a change of the
// caller's thread count starts one at once.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace lowbit::nn {

class ThreadTuner {
 public:
  explicit ThreadTuner(int block = 4, int64_t period = 1000, double margin = 0.03)
      : block_(block), period_(period), margin_(margin) {}

  // The thread count for the next step, given the caller's count.
  int next(int max_threads) {
    if (max_threads != max_) {
      max_ = chosen_ = max_threads;
      restart();
    }
    if (max_ <= 1 || n_ < 1 || n_ > 2 * block_) return chosen_;
    return n_ <= block_ ? 1 : max_;
  }
  // The wall time of the step just run with next()'s count.
  void record(double seconds) {
    if (max_ <= 1) return;
    if (n_ >= 2 && n_ <= block_)
      t_one_.push_back(seconds);
    else if (n_ >= block_ + 2 && n_ <= 2 * block_)
      t_max_.push_back(seconds);
    if (n_ == 2 * block_) chosen_ = median(t_one_) * (1 + margin_) < median(t_max_) ? 1 : max_;
    if (++n_ >= period_) restart();
  }
  // The count chosen for the steps after the probe (the caller's until a probe has ended).
  int chosen() const { return chosen_; }

 private:
  void restart() {
    n_ = 0;
    t_one_.clear();
    t_max_.clear();
  }
  static double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[v.size() / 2];
  }
  int block_;
  int64_t period_;
  double margin_;
  int max_ = 0, chosen_ = 0;
  int64_t n_ = 0;  // steps since the probe started
  std::vector<double> t_one_, t_max_;
};

}  // namespace lowbit::nn
