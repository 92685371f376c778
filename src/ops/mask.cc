// Mask ops: sequence_mask and lengths_from_mask (include/lowbit/ops/mask.h states the semantics).
#include "lowbit/ops/mask.h"

#include <type_traits>

#include "lowbit/op.h"
#include "ops/families.h"
#include "ops/op_util.h"

namespace lowbit::detail {

namespace {

std::vector<ValueType> infer_sequence_mask(const InferCtx& c) {
  const ValueType& lengths = c.in[0];
  if (!is_integer(lengths.dtype))
    LOWBIT_THROW(DTypeError, c.op, ": argument 'lengths': expected an integer dtype but found ",
                 type_str(lengths));
  std::vector<int64_t> dims = lengths.shape.dims();
  if (c.in.size() == 2) {
    const Shape& like = c.in[1].shape;
    if (like.rank() <= lengths.shape.rank())
      LOWBIT_THROW(ShapeError, c.op, ": argument 'like': expected rank > ", lengths.shape.rank(),
                   " (lengths' rank) to take maxlen from its dim ", lengths.shape.rank(),
                   " but found shape ", like.str());
    dims.push_back(like[lengths.shape.rank()]);
  } else if (c.in.size() == 1) {
    const int64_t maxlen = c.attrs.i("maxlen", -1);
    if (maxlen < 0)
      LOWBIT_THROW(ValueError, c.op, ": attribute 'maxlen': expected >= 0 but found ", maxlen);
    dims.push_back(maxlen);
  } else {
    LOWBIT_THROW(ValueError, c.op, ": expected 1 input (lengths) or 2 (lengths, like) but found ",
                 c.in.size());
  }
  return {{DType::kBool, Shape(dims)}};
}

void sequence_mask_reference(const KernelCtx& k) {
  const Tensor& lengths = k.in[0];
  Tensor& out = k.out[0];
  const int64_t rows = lengths.numel();
  const int64_t maxlen = out.rank() ? out.dim(-1) : 0;
  bool* po = out.data<bool>();
  dispatch_dtype(lengths.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
      const T* pl = static_cast<const T*>(lengths.raw());
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t len = static_cast<int64_t>(pl[r]);
        for (int64_t t = 0; t < maxlen; ++t) po[r * maxlen + t] = t < len;
      }
    } else {
      LOWBIT_CHECK(false,
                   "sequence_mask kernel called on a non-integer dtype (the rule rejects it)");
    }
  });
}

std::vector<ValueType> infer_lengths_from_mask(const InferCtx& c) {
  const Shape& s = c.in[0].shape;
  if (s.rank() < 1)
    LOWBIT_THROW(ShapeError, c.op,
                 ": argument 'mask': expected rank >= 1 ([batch, timesteps]) but found a scalar");
  std::vector<int64_t> dims(s.dims().begin(), s.dims().end() - 1);
  return {{DType::kS64, Shape(dims)}};
}

void lengths_from_mask_reference(const KernelCtx& k) {
  const Tensor& m = k.in[0];
  const int64_t steps = m.dim(-1);
  const int64_t rows = k.out[0].numel();
  int64_t* po = k.out[0].data<int64_t>();
  dispatch_dtype(m.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* pm = static_cast<const T*>(m.raw());
    for (int64_t r = 0; r < rows; ++r) {
      int64_t n = 0;
      for (int64_t t = 0; t < steps; ++t) n += pm[r * steps + t] != T(0);
      po[r] = n;
    }
  });
}

}  // namespace

void register_mask_ops() {
  register_op({.name = "sequence_mask",
               .num_inputs = -1,
               .infer = infer_sequence_mask,
               .reference = sequence_mask_reference,
               .doc = "bool t < lengths[...] over a new last axis of size maxlen (or like's dim)"});
  register_op({.name = "lengths_from_mask",
               .num_inputs = 1,
               .infer = infer_lengths_from_mask,
               .reference = lengths_from_mask_reference,
               .doc = "s64 number of valid (nonzero) entries along the last axis"});
}

}  // namespace lowbit::detail
