// Constants of the ONNX importer (src/interop/onnx_import*.cc): initializers, Constant nodes and
// what the constant subgraphs compute (Shape -> Gather -> Unsqueeze -> Concat reshape targets,
// Pad's pads), evaluated at import time. Private to src/interop.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "lowbit/interop/onnx_proto.h"
#include "lowbit/tensor.h"

namespace lowbit::onnx::detail {

// The batch size in a shape constant (Shape of a value whose dim 0 is the batch): symbolic,
// it survives Gather/Unsqueeze/Concat/Slice into a Reshape target; arithmetic on it is refused.
// As a dim of a Const (ConstantOfShape / Expand to a shape holding it) the constant is the same
// for every batch row and `v` holds one row.
inline constexpr int64_t kBatch = std::numeric_limits<int64_t>::min() + 7;

struct Const {
  int32_t dtype = kFloat;     // an ONNX DataType: kFloat (also f64, f16 read as f32) or integer
  std::vector<int64_t> dims;  // may hold kBatch (see above)
  std::vector<double> v;      // row-major elements
  int64_t numel() const;      // kBatch dims count 1
  bool has_batch_dim() const;
  bool holds_batch() const;  // some element is kBatch
  bool is_int() const { return dtype != kFloat; }
  // The elements as int64 (checked: integral values).
  std::vector<int64_t> ints() const;
  Tensor to_f32() const;  // refuses (via `fail`) nothing: callers check has_batch_dim first
};

Const const_from_tensor(const TensorProto& t);

// Evaluates op `n` on constant inputs `in` (one per node input; an omitted optional input is an
// empty Const with dtype kUndefined). `attr_*` read node attributes; `fail` throws the importer's
// UnsupportedError naming the node (what + at fault). Returns the outputs, or false when `op` is
// not a constant op this evaluator knows.
struct ConstEnv {
  std::function<void(const std::string&)> fail;  // [[noreturn]]
  int64_t opset = 13;
};
bool eval_const(const NodeProto& n, const std::vector<const Const*>& in, const ConstEnv& env,
                std::vector<Const>& out);

// Broadcasting of ONNX (numpy): the output dims, or fail.
std::vector<int64_t> broadcast_dims(const std::vector<int64_t>& a, const std::vector<int64_t>& b,
                                    const ConstEnv& env);

}  // namespace lowbit::onnx::detail
