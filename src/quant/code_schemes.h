// The two activation schemes of an IntegerModel (include/lowbit/quant/convert.h
// ActivationScheme; docs/integer-inference.md "The uint8 scheme"): s8 codes, or u8 codes on the
// same grids, each the s8 code + 128. The model records, the file and inspect hold the codes of
// the scheme; the runtime runs the s8 kernels on an s8 view made once when the graph is built
// (src/quant/integer_model.cc).
#pragma once

#include <string>
#include <vector>

#include "lowbit/quant/convert.h"

namespace lowbit::quant::detail {

// An attribute of an op that holds codes of one of its tensors (a zero point or a clamp bound):
// when that tensor's codes move by d, the attribute moves by d. `tensor`: an input index, or -1
// for the op's output. `required`: the u8 view needs it given (its default, 0 or the int8 range,
// has no u8 meaning); an optional one left out keeps its meaning (the clamp: the dtype's whole
// range; qlogistic/qtanh/qsoftmax's output zero point: the fixed one).
struct CodeAttribute {
  const char* name;
  int tensor;
  bool required;
};
std::vector<CodeAttribute> code_attributes(const std::string& op);

// The tensor index a code attribute refers to, or -1 when the op lacks that input (its shape
// rule refuses it).
inline int code_attribute_tensor(const IntegerOp& op, const CodeAttribute& a) {
  if (a.tensor < 0) return op.output;
  const size_t k = static_cast<size_t>(a.tensor);
  return k < op.inputs.size() ? op.inputs[k] : -1;
}

// The uint8 scheme of an s8 model (what convert_to_integer does with
// ActivationScheme::kUint8): every s8 activation tensor and every s8 gather table becomes u8
// with its codes, zero point, qmin and qmax + 128, and every code attribute of the ops on them
// + 128. Weights (s8, zero point 0) and biases (s32) stay.
void to_uint8_scheme(IntegerModel& m);

// Empty, or why `op` (reading and writing tensors of m) mixes the schemes: an activation input
// of s8 and an output of u8 (or the other way), a gather whose table's dtype is not its
// output's, a u8 constant that is not a gather's table (weights are s8 in both schemes).
std::string scheme_mismatch(const IntegerModel& m, const IntegerOp& op);

}  // namespace lowbit::quant::detail
