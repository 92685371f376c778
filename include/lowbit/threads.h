// Thread count used by kernels (OpenMP). Results at one thread are exact and deterministic;
// reductions split across threads combine in a fixed order.
#pragma once

namespace lowbit {
// Sets the number of threads kernels may use (>= 1); throws ValueError otherwise.
void set_num_threads(int n);
int num_threads();
}  // namespace lowbit
