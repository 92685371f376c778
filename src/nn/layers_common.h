// Helpers shared by the conv, pooling, reshaping, merging and embedding layers: argument checks
// and reading Keras configs (ints or tuples, null activations, initializer objects).
#pragma once

#include <string>
#include <vector>

#include "lowbit/nn/layers.h"

namespace lowbit::nn::detail {

// `v` as n values (one value is repeated); each must be >= min. ValueError
// "<who>: argument '<arg>': expected ..." otherwise.
std::vector<int64_t> expand_ints(const Ints& v, int n, const std::string& who, const char* arg,
                                 int64_t min = 1);

// Lower-cased padding, checked against the allowed names (causal only where allowed).
std::string check_padding(const std::string& padding, const std::string& who, bool allow_causal);

// Output size of one windowed dim (conv/pool): kUnknown in, kUnknown out. May be <= 0 for a
// "valid" window larger than the input (callers report it).
int64_t window_out_dim(int64_t in, int64_t k, int64_t stride, int64_t dilation,
                       const std::string& padding);

// ---- Reading configs ----
// An int or a list of ints under `key` (default `dflt` when missing or null).
Ints json_ints(const Json& c, const char* key, const Ints& dflt);
// The activation name: a string, or null/missing for "linear".
std::string json_activation(const Json& c);
// An initializer given as a name ("glorot_uniform") or a Keras object
// ({"class_name": "GlorotUniform", ...}), as a name.
std::string json_initializer(const Json& c, const char* key, const std::string& dflt);
// data_format must be missing, null or "channels_last" (ValueError otherwise).
void check_data_format(const Json& c, const std::string& who);
std::string json_name(const Json& c);

// Json array of ints.
Json ints_json(const std::vector<int64_t>& v);

// ---- Mask rules (docs/masking.md) ----
// Input 0's mask for every output: the rule of elementwise layers, Dense, Dropout, ...
std::vector<Value> pass_mask(const std::vector<Value>& outputs, const CallContext& ctx);
// No masks when no input carries one; otherwise UnsupportedError
// "<name> (<class>): does not support timestep masks: <why>".
std::vector<Value> refuse_mask(const Layer& l, const std::vector<Value>& outputs,
                               const CallContext& ctx, const std::string& why);
// Consumes the mask: the outputs carry none (GlobalAveragePooling1D, ...).
std::vector<Value> no_mask(const std::vector<Value>& outputs);
// A bool [B, T] mask as f32 0/1 with size-1 dims appended up to `rank` ([B, T, 1] for rank 3),
// to broadcast against a [B, T, ...] tensor.
Value mask_to_f32(const Value& mask, int rank);
// The same as bool.
Value mask_expanded(const Value& mask, int rank);
// x where the mask is valid, 0 at masked steps (NaN at a masked step does not leak).
Value zero_masked(const Value& x, const Value& mask);

}  // namespace lowbit::nn::detail
