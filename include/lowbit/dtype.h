// Element types. f32 is the training type; s8/u8/s16 hold quantized codes (s16: the integer
// LSTM's cell state and gate sums, 16-bit activations) and s32 accumulators and biases; s64
// holds indices and counters; bool (one byte, 0 or 1) holds masks and comparison results.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace lowbit {

enum class DType : uint8_t { kF32, kS8, kU8, kS32, kS64, kBool, kS16 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);                 // "f32", "s8", "u8", "s32", "s64", "bool", "s16"
DType dtype_from_name(const std::string& name);  // throws ValueError
inline bool is_float(DType t) { return t == DType::kF32; }
inline bool is_integer(DType t) {
  return t == DType::kS8 || t == DType::kU8 || t == DType::kS16 || t == DType::kS32 ||
         t == DType::kS64;
}

// Maps a C++ type to its DType: dtype_of<float>() == DType::kF32.
template <class T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() {
  return DType::kF32;
}
template <>
constexpr DType dtype_of<int8_t>() {
  return DType::kS8;
}
template <>
constexpr DType dtype_of<uint8_t>() {
  return DType::kU8;
}
template <>
constexpr DType dtype_of<int16_t>() {
  return DType::kS16;
}
template <>
constexpr DType dtype_of<int32_t>() {
  return DType::kS32;
}
template <>
constexpr DType dtype_of<int64_t>() {
  return DType::kS64;
}
template <>
constexpr DType dtype_of<bool>() {
  return DType::kBool;
}

// Calls f with a value of the C++ type of `t` (as a type tag): dispatch_dtype(t, [&](auto tag) {
// using T = decltype(tag); ... }).
template <class F>
decltype(auto) dispatch_dtype(DType t, F&& f) {
  switch (t) {
    case DType::kF32:
      return f(float{});
    case DType::kS8:
      return f(int8_t{});
    case DType::kU8:
      return f(uint8_t{});
    case DType::kS16:
      return f(int16_t{});
    case DType::kS32:
      return f(int32_t{});
    case DType::kS64:
      return f(int64_t{});
    case DType::kBool:
      return f(bool{});
  }
  return f(float{});
}

}  // namespace lowbit
