// Counter-based random numbers (Philox-4x32-10, Salmon et al. 2011). The value at element i of
// draw `counter` under key `seed` depends only on (seed, counter, i), so random ops produce the
// same numbers for the same seed whatever the thread count or schedule.
#pragma once

#include <array>
#include <cstdint>

namespace lowbit {

// Four 32-bit random words for (key, counter).
std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 2> key, std::array<uint32_t, 4> counter);

// Uniform float in [0, 1) for element `index` of stream (seed, step).
float philox_uniform(uint64_t seed, uint64_t step, uint64_t index);

// A simple sequential generator over Philox for initialisers and shuffling.
class Rng {
 public:
  explicit Rng(uint64_t seed = 0) : seed_(seed) {}
  uint32_t next_u32();
  float uniform();                    // [0, 1)
  float uniform(float lo, float hi);  // [lo, hi)
  float normal();                     // N(0, 1), Box-Muller
  uint64_t seed() const { return seed_; }
  uint64_t counter() const { return counter_; }
  void set_counter(uint64_t c) { counter_ = c; }

 private:
  uint64_t seed_;
  uint64_t counter_ = 0;
};

}  // namespace lowbit
