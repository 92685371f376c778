// Recurrence kernels (the ops are in src/ops/rnn.cc, semantics in include/lowbit/ops/rnn.h):
// the sequence geometry shared by the reference kernels and the fast ones, and the fast
// kernels (src/kernels/fast/rnn.cc: an AVX-512 build and a portable build of the same loops,
// each a row of the op's kernel table).
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

// Pointers of one forward call; rb (GRU recurrent bias) and c0/c/cprev (LSTM) where they
// exist. Outputs as the op's: y, final states, then the workspace.
struct RnnForwardArgs {
  const float* x_proj = nullptr;
  const float* rk = nullptr;
  const float* rb = nullptr;
  const float* h0 = nullptr;
  const float* c0 = nullptr;
  float* y = nullptr;
  float* h = nullptr;
  float* c = nullptr;
  float* hprev = nullptr;
  float* cprev = nullptr;
  float* gates = nullptr;
};
struct RnnBackwardArgs {
  const float* dy = nullptr;
  const float* dh = nullptr;
  const float* dc = nullptr;
  const float* rk = nullptr;
  const float* hprev = nullptr;
  const float* cprev = nullptr;
  const float* gates = nullptr;
  float* dxp = nullptr;
  float* drk = nullptr;
  float* drb = nullptr;
  float* dh0 = nullptr;
  float* dc0 = nullptr;
};

// The fast kernels handle every sequence without a recurrent dropout mask.
bool rnn_fast_supported(const RnnSeq& s);
void rnn_forward_f32__avx512(RnnCell cell, const RnnSeq& s, const RnnForwardArgs& a);
void rnn_forward_f32__portable(RnnCell cell, const RnnSeq& s, const RnnForwardArgs& a);
void rnn_backward_f32__avx512(RnnCell cell, const RnnSeq& s, const RnnBackwardArgs& a);
void rnn_backward_f32__portable(RnnCell cell, const RnnSeq& s, const RnnBackwardArgs& a);

}  // namespace lowbit::kernels
