// Recurrence kernels (the ops are in src/ops/rnn.cc, semantics in include/lowbit/ops/rnn.h):
// the sequence geometry shared by the reference kernels and the fast ones.
#pragma once

#include <cstdint>

namespace lowbit::kernels {

enum class RnnAct { kTanh, kSigmoid, kHardSigmoid, kRelu, kLinear };
enum class RnnCell { kLstm, kGru, kSimple };

// One *_sequence op call: B rows of T steps of U units, G gate blocks.
struct RnnSeq {
  int64_t batch = 0, steps = 0, units = 0, gates = 1;
  bool go_backwards = false, return_sequences = true, zero_output_for_mask = false;
  bool reset_after = true;  // GRU
  RnnAct act = RnnAct::kTanh, ract = RnnAct::kSigmoid;
  const bool* mask_bool = nullptr;           // [B,T], or
  const float* mask_f32 = nullptr;           // [B,T] (nonzero = valid), or neither: all valid
  const float* recurrent_dropout = nullptr;  // [B, G*U] or null

  // Input time of processing step t.
  int64_t input_step(int64_t t) const { return go_backwards ? steps - 1 - t : t; }
  bool valid(int64_t b, int64_t ti) const {
    if (mask_bool) return mask_bool[b * steps + ti];
    if (mask_f32) return mask_f32[b * steps + ti] != 0.0f;
    return true;
  }
};

}  // namespace lowbit::kernels
