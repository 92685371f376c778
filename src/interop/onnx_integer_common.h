// Shared by the integer model's ONNX export and import (src/interop/onnx_integer_*.cc): the
// window geometry of lowbit's conv/pool attributes in ONNX terms (the attribute builders are in
// onnx_proto.h).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "lowbit/attrs.h"
#include "lowbit/interop/onnx_proto.h"

namespace lowbit::onnx::detail {

// A pair attribute given as one int or a list of two (ops/conv.h), or `dflt` when absent.
inline std::array<int64_t, 2> pair_attr(const Attrs& a, const std::string& k,
                                        std::array<int64_t, 2> dflt) {
  if (!a.has(k)) return dflt;
  if (std::holds_alternative<int64_t>(a.items().at(k).get())) {
    const int64_t v = a.i(k);
    return {v, v};
  }
  const std::vector<int64_t>& v = a.ints(k);
  if (v.size() == 1) return {v[0], v[0]};
  return {v.at(0), v.at(1)};
}

}  // namespace lowbit::onnx::detail
