// Shape ops: views (reshape, expand_dims, squeeze, flatten), data movement (transpose, concat,
// split, slice, pad, broadcast_to, gather, one_hot) and the adjoints their gradients use
// (split_like, slice_grad, gather_grad). Kernels move bytes, so most work for every dtype.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <numeric>

#include "kernels/reference/broadcast.h"
#include "lowbit/ops.h"
#include "ops/elementwise_common.h"
#include "ops/families.h"
#include "ops/op_util.h"

namespace lowbit::detail {

namespace {

using ops::kSliceMax;
using ops::kSliceMin;

// Normalises an axis attribute to [0, rank); `rank` is the number of valid positions.
int normalize_axis(const std::string& op, const char* attr, int64_t a, int rank,
                   const Shape& shape) {
  if (a < -rank || a >= rank)
    LOWBIT_THROW(ValueError, op, ": attribute '", attr, "': expected an axis in [", -rank, ", ",
                 rank, ") but found ", a, " (input shape ", shape.str(), ")");
  return static_cast<int>(a < 0 ? a + rank : a);
}

int64_t prod(const Shape& s, int from, int to) {
  int64_t p = 1;
  for (int d = from; d < to; ++d) p *= s[d];
  return p;
}

// Product of known dims, kUnknown if any is unknown.
int64_t prod_or_unknown(const Shape& s, int from, int to) {
  int64_t p = 1;
  for (int d = from; d < to; ++d) {
    if (s[d] == kUnknown) return kUnknown;
    p *= s[d];
  }
  return p;
}

// Calls f with an unsigned integer type tag as wide as one element (kernels that only move
// elements do not care about the dtype).
template <class F>
void dispatch_size(size_t es, F&& f) {
  switch (es) {
    case 1:
      f(uint8_t{});
      return;
    case 2:
      f(uint16_t{});
      return;
    case 4:
      f(uint32_t{});
      return;
    case 8:
      f(uint64_t{});
      return;
  }
  LOWBIT_CHECK(false, "unsupported element size ", es);
}

// Runs f(i) for i in [0, count), across threads when the rows hold enough bytes to be worth it.
template <class F>
void parallel_rows(int64_t count, int64_t bytes_per_row, F&& f) {
#pragma omp parallel for if (count > 1 && count * bytes_per_row > 4 * kParallelGrain) \
    schedule(static)
  for (int64_t i = 0; i < count; ++i) f(i);
}

void copy_reference(const KernelCtx& k) {
  std::memcpy(k.out[0].raw(), k.in[0].raw(), k.out[0].nbytes());
}

std::vector<Value> reshape_back(const GradCtx& g) { return {ops::reshape_like(g.dy(), g.in[0])}; }

// ---- reshape, expand_dims, squeeze, flatten (views) ----

std::vector<ValueType> infer_reshape(const InferCtx& c) {
  const Shape& in = c.in[0].shape;
  std::vector<int64_t> dims = c.attrs.ints("shape");
  int infer_at = -1;
  int64_t known = 1;
  for (size_t i = 0; i < dims.size(); ++i) {
    if (dims[i] == -1) {
      if (infer_at >= 0)
        LOWBIT_THROW(ShapeError, c.op, ": attribute 'shape': expected at most one -1 but found ",
                     Shape(dims).str());
      infer_at = static_cast<int>(i);
    } else if (dims[i] < 0) {
      LOWBIT_THROW(ShapeError, c.op, ": attribute 'shape': expected dims >= 0 or one -1 but found ",
                   dims[i]);
    } else {
      known *= dims[i];
    }
  }
  const int64_t n = in.numel();
  if (n == kUnknown) return {{c.in[0].dtype, Shape(dims)}};  // the -1 dim stays unknown
  if (infer_at >= 0) {
    if (known == 0 || n % known != 0)
      LOWBIT_THROW(ShapeError, c.op, ": cannot reshape ", in.str(), " (", n,
                   " elements) into shape attribute ", Shape(dims).str());
    dims[infer_at] = n / known;
  } else if (known != n) {
    LOWBIT_THROW(ShapeError, c.op, ": cannot reshape ", in.str(), " (", n, " elements) into ",
                 Shape(dims).str(), " (", known, " elements)");
  }
  return {{c.in[0].dtype, Shape(dims)}};
}

std::vector<ValueType> infer_expand_dims(const InferCtx& c) {
  const Shape& in = c.in[0].shape;
  const int axis = normalize_axis(c.op, "axis", c.attrs.i("axis"), in.rank() + 1, in);
  std::vector<int64_t> dims = in.dims();
  dims.insert(dims.begin() + axis, 1);
  return {{c.in[0].dtype, Shape(dims)}};
}

std::vector<ValueType> infer_squeeze(const InferCtx& c) {
  const Shape& in = c.in[0].shape;
  const std::vector<int64_t> axes = c.attrs.ints("axes", {});
  std::vector<bool> drop(in.rank(), false);
  if (axes.empty()) {
    for (int d = 0; d < in.rank(); ++d) {
      if (in[d] == kUnknown)
        LOWBIT_THROW(ShapeError, c.op, ": cannot squeeze every size-1 dim of ", in.str(),
                     " whose dims are not all known; expected attribute 'axes'");
      drop[d] = in[d] == 1;
    }
  } else {
    for (int64_t a : axes) {
      const int d = normalize_axis(c.op, "axes", a, in.rank(), in);
      if (!dims_compatible(in[d], 1))
        LOWBIT_THROW(ShapeError, c.op, ": attribute 'axes': expected dim ", d,
                     " to be 1 but found shape ", in.str());
      drop[d] = true;
    }
  }
  std::vector<int64_t> dims;
  for (int d = 0; d < in.rank(); ++d)
    if (!drop[d]) dims.push_back(in[d]);
  return {{c.in[0].dtype, Shape(dims)}};
}

std::vector<ValueType> infer_flatten(const InferCtx& c) {
  const Shape& in = c.in[0].shape;
  // ONNX Flatten: axis in [-rank, rank], a negative one counts from the end (-1 keeps the last
  // dim apart).
  const int64_t a = c.attrs.i("axis", 1), r = in.rank();
  if (a < -r || a > r)
    LOWBIT_THROW(ValueError, c.op, ": attribute 'axis': expected an axis in [", -r, ", ", r,
                 "] but found ", a, " (input shape ", in.str(), ")");
  const int axis = static_cast<int>(a < 0 ? a + r : a);
  return {
      {c.in[0].dtype, Shape{prod_or_unknown(in, 0, axis), prod_or_unknown(in, axis, in.rank())}}};
}

// ---- transpose ----

std::vector<int> transpose_perm(const std::string& op, const Shape& s, const Attrs& attrs) {
  const std::vector<int64_t> raw = attrs.ints("perm", {});
  const int r = s.rank();
  std::vector<int> perm(r);
  if (raw.empty()) {
    for (int i = 0; i < r; ++i) perm[i] = r - 1 - i;
    return perm;
  }
  if (static_cast<int>(raw.size()) != r)
    LOWBIT_THROW(ShapeError, op, ": attribute 'perm': expected ", r, " axes for shape ", s.str(),
                 " but found ", raw.size());
  std::vector<bool> seen(r, false);
  for (int i = 0; i < r; ++i) {
    perm[i] = normalize_axis(op, "perm", raw[i], r, s);
    if (seen[perm[i]])
      LOWBIT_THROW(ValueError, op, ": attribute 'perm': expected a permutation but axis ", raw[i],
                   " repeats (shape ", s.str(), ")");
    seen[perm[i]] = true;
  }
  return perm;
}

std::vector<ValueType> infer_transpose(const InferCtx& c) {
  const Shape& in = c.in[0].shape;
  const std::vector<int> perm = transpose_perm(c.op, in, c.attrs);
  std::vector<int64_t> dims(in.rank());
  for (int i = 0; i < in.rank(); ++i) dims[i] = in[perm[i]];
  return {{c.in[0].dtype, Shape(dims)}};
}

// Transposes with the fewest dims: size-1 dims are dropped and input dims that stay neighbours in
// the output are merged. Then either the innermost dim stays innermost (rows are copied whole) or
// a 2-D tiled transpose swaps the output's innermost dim with the input's, for every
// combination of the other dims.
void transpose_reference(const KernelCtx& k) {
  const Tensor& x = k.in[0];
  Tensor& out = k.out[0];
  const std::vector<int>& perm0 = k.params<std::vector<int>>();
  const int r = x.rank();
  const size_t es = dtype_size(x.dtype());
  if (out.numel() == 0) return;

  // Drop size-1 dims.
  std::vector<int> new_index(r, -1);
  std::vector<int64_t> d1;
  for (int d = 0; d < r; ++d)
    if (x.dim(d) != 1) {
      new_index[d] = static_cast<int>(d1.size());
      d1.push_back(x.dim(d));
    }
  std::vector<int> p1;
  for (int i = 0; i < r; ++i)
    if (new_index[perm0[i]] >= 0) p1.push_back(new_index[perm0[i]]);
  // Merge runs of input dims that stay consecutive in the output.
  std::vector<std::pair<int, int>> groups;  // in output order: [first, last] input dims
  for (int q : p1) {
    if (!groups.empty() && groups.back().second + 1 == q)
      groups.back().second = q;
    else
      groups.emplace_back(q, q);
  }
  const int m = static_cast<int>(groups.size());
  if (m <= 1) {
    std::memcpy(out.raw(), x.raw(), out.nbytes());
    return;
  }
  std::vector<int> order(m);  // groups sorted by input position
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](int a, int b) { return groups[a].first < groups[b].first; });
  std::vector<int64_t> in_dims(m), in_stride(m);
  std::vector<int> perm(m);  // output position -> input dim (in merged terms)
  for (int j = 0; j < m; ++j) {
    const auto [f, l] = groups[order[j]];
    int64_t n = 1;
    for (int d = f; d <= l; ++d) n *= d1[d];
    in_dims[j] = n;
    perm[order[j]] = j;
  }
  in_stride[m - 1] = 1;
  for (int j = m - 2; j >= 0; --j) in_stride[j] = in_stride[j + 1] * in_dims[j + 1];
  std::vector<int64_t> od(m), is(m), os(m);  // per output position: dim, input and output stride
  for (int i = 0; i < m; ++i) {
    od[i] = in_dims[perm[i]];
    is[i] = in_stride[perm[i]];
  }
  os[m - 1] = 1;
  for (int i = m - 2; i >= 0; --i) os[i] = os[i + 1] * od[i + 1];

  dispatch_size(es, [&](auto tag) {
    using E = decltype(tag);
    const E* px = static_cast<const E*>(x.raw());
    E* po = static_cast<E*>(out.raw());
    // The output positions iterated outside the inner loops, and their input/output offsets.
    auto offsets = [&](const std::vector<int>& dims, int64_t idx, int64_t& ioff, int64_t& ooff) {
      ioff = ooff = 0;
      for (int q = static_cast<int>(dims.size()) - 1; q >= 0; --q) {
        const int p = dims[q];
        const int64_t v = idx % od[p];
        idx /= od[p];
        ioff += v * is[p];
        ooff += v * os[p];
      }
    };
    const int pb = static_cast<int>(std::find(perm.begin(), perm.end(), m - 1) - perm.begin());
    if (pb == m - 1) {  // the innermost dim stays innermost: copy whole rows
      std::vector<int> outer(m - 1);
      std::iota(outer.begin(), outer.end(), 0);
      const int64_t run = od[m - 1];
      parallel_rows(out.numel() / run, run * static_cast<int64_t>(sizeof(E)), [&](int64_t t) {
        int64_t ioff, ooff;
        offsets(outer, t, ioff, ooff);
        std::memcpy(po + ooff, px + ioff, run * sizeof(E));
      });
      return;
    }
    // Tile edge: 32x32 elements of 4 bytes are 4 KiB per side, well inside L1.
    constexpr int64_t kTile = 32;
    std::vector<int> outer;
    for (int i = 0; i < m - 1; ++i)
      if (i != pb) outer.push_back(i);
    int64_t n_outer = 1;
    for (int p : outer) n_outer *= od[p];
    const int64_t na = od[m - 1], sa = is[m - 1];  // output innermost: contiguous writes
    const int64_t nb = od[pb], sb = os[pb];        // input innermost: contiguous reads
    const int64_t nbb = (nb + kTile - 1) / kTile;
    parallel_rows(n_outer * nbb, kTile * na * static_cast<int64_t>(sizeof(E)), [&](int64_t t) {
      int64_t ioff, ooff;
      offsets(outer, t / nbb, ioff, ooff);
      const int64_t b0 = (t % nbb) * kTile, b1 = std::min(nb, b0 + kTile);
      for (int64_t a0 = 0; a0 < na; a0 += kTile) {
        const int64_t a1 = std::min(na, a0 + kTile);
        for (int64_t b = b0; b < b1; ++b) {
          const E* src = px + ioff + b;
          E* dst = po + ooff + b * sb;
          for (int64_t a = a0; a < a1; ++a) dst[a] = src[a * sa];
        }
      }
    });
  });
}

std::vector<Value> transpose_grad(const GradCtx& g) {
  const std::vector<int> perm = transpose_perm("transpose", g.in[0].shape(), g.attrs);
  std::vector<int64_t> inv(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) inv[perm[i]] = static_cast<int64_t>(i);
  return {ops::transpose(g.dy(), inv)};
}

// ---- concat, split, split_like ----

std::vector<ValueType> infer_concat(const InferCtx& c) {
  const ValueType& first = c.in[0];
  const int r = first.shape.rank();
  if (r == 0)
    LOWBIT_THROW(ShapeError, c.op, ": argument 'xs[0]': expected rank >= 1 but found a scalar");
  const int axis = normalize_axis(c.op, "axis", c.attrs.i("axis", 0), r, first.shape);
  std::vector<int64_t> dims = first.shape.dims();
  for (size_t i = 1; i < c.in.size(); ++i) {
    const ValueType& t = c.in[i];
    if (t.dtype != first.dtype)
      LOWBIT_THROW(DTypeError, c.op, ": argument 'xs[", i, "]': expected dtype ",
                   dtype_name(first.dtype), " (as xs[0]) but found ", type_str(t));
    if (t.shape.rank() != r)
      LOWBIT_THROW(ShapeError, c.op, ": argument 'xs[", i, "]': expected rank ", r, " (as xs[0] ",
                   first.shape.str(), ") but found ", t.shape.str());
    for (int d = 0; d < r; ++d) {
      if (d == axis) {
        dims[d] = (dims[d] == kUnknown || t.shape[d] == kUnknown) ? kUnknown : dims[d] + t.shape[d];
      } else if (!dims_compatible(dims[d], t.shape[d])) {
        LOWBIT_THROW(ShapeError, c.op, ": argument 'xs[", i, "]': expected dims equal to xs[0]'s ",
                     first.shape.str(), " except along axis ", axis, " but found ", t.shape.str());
      } else {
        dims[d] = merge_dim(dims[d], t.shape[d]);
      }
    }
  }
  return {{first.dtype, Shape(dims)}};
}

// Copies between one tensor (`whole`) and pieces along `axis`, in either direction.
void concat_copy(Tensor whole, std::span<const Tensor> pieces, int axis, bool to_whole) {
  const Shape& s = whole.shape();
  const int64_t outer = prod(s, 0, axis);
  const int64_t inner_bytes =
      prod(s, axis + 1, s.rank()) * static_cast<int64_t>(dtype_size(whole.dtype()));
  const int64_t row = s[axis] * inner_bytes;
  std::vector<int64_t> chunk(pieces.size()), start(pieces.size());
  int64_t off = 0;
  for (size_t i = 0; i < pieces.size(); ++i) {
    chunk[i] = pieces[i].dim(axis) * inner_bytes;
    start[i] = off;
    off += chunk[i];
  }
  char* pw = static_cast<char*>(whole.raw());
  parallel_rows(outer, row, [&](int64_t o) {
    for (size_t i = 0; i < pieces.size(); ++i) {
      char* pp = static_cast<char*>(pieces[i].raw()) + o * chunk[i];
      char* pwo = pw + o * row + start[i];
      if (to_whole)
        std::memcpy(pwo, pp, chunk[i]);
      else
        std::memcpy(pp, pwo, chunk[i]);
    }
  });
}

// The `axis` attribute normalised for a tensor of rank r (the shape rule validated it).
int axis_attr(const Attrs& attrs, int r, int64_t dflt) {
  const int64_t a = attrs.i("axis", dflt);
  return static_cast<int>(a < 0 ? a + r : a);
}

// The axis of concat (against the output's rank) and split (the input's), prepared.
std::any prepare_concat(const PrepareCtx& c) {
  return AxisParam{axis_attr(c.attrs, c.out[0].shape.rank(), 0)};
}
std::any prepare_split(const PrepareCtx& c) {
  return AxisParam{axis_attr(c.attrs, c.in[0].shape.rank(), 0)};
}

void concat_reference(const KernelCtx& k) {
  concat_copy(k.out[0], k.in, k.params<AxisParam>().axis, true);
}

void split_reference(const KernelCtx& k) {
  concat_copy(k.in[0], std::span<const Tensor>(k.out.data(), k.out.size()),
              k.params<AxisParam>().axis, false);
}

std::vector<ValueType> infer_split(const InferCtx& c) {
  const Shape& in = c.in[0].shape;
  if (in.rank() == 0)
    LOWBIT_THROW(ShapeError, c.op, ": argument 'x': expected rank >= 1 but found a scalar");
  const int axis = normalize_axis(c.op, "axis", c.attrs.i("axis", 0), in.rank(), in);
  const int64_t n = in[axis];
  const bool has_sizes = c.attrs.has("sizes"), has_num = c.attrs.has("num");
  if (has_sizes == has_num)
    LOWBIT_THROW(ValueError, c.op, ": expected exactly one of the attributes 'sizes' and 'num'");
  std::vector<int64_t> sizes;
  if (has_num) {
    const int64_t num = c.attrs.i("num");
    if (num < 1) LOWBIT_THROW(ValueError, c.op, ": attribute 'num': expected >= 1 but found ", num);
    if (n != kUnknown && n % num != 0)
      LOWBIT_THROW(ShapeError, c.op, ": attribute 'num': cannot split dim ", axis, " of ", in.str(),
                   " into ", num, " equal parts");
    sizes.assign(num, n == kUnknown ? kUnknown : n / num);
  } else {
    sizes = c.attrs.ints("sizes");
    if (sizes.empty())
      LOWBIT_THROW(ValueError, c.op, ": attribute 'sizes': expected at least one size");
    int rest = -1;
    int64_t known = 0;
    for (size_t i = 0; i < sizes.size(); ++i) {
      if (sizes[i] == -1 && rest < 0) {
        rest = static_cast<int>(i);
      } else if (sizes[i] < 0) {
        LOWBIT_THROW(ValueError, c.op,
                     ": attribute 'sizes': expected sizes >= 0 and at most one -1 but found ",
                     Shape(sizes).str());
      } else {
        known += sizes[i];
      }
    }
    if (n != kUnknown) {
      if (rest >= 0 ? known > n : known != n)
        LOWBIT_THROW(ShapeError, c.op, ": attribute 'sizes': expected sizes adding up to dim ",
                     axis, " of ", in.str(), " but found ", Shape(sizes).str());
      if (rest >= 0) sizes[rest] = n - known;
    }
  }
  std::vector<ValueType> out;
  for (int64_t s : sizes) {
    std::vector<int64_t> dims = in.dims();
    dims[axis] = s;
    out.push_back({c.in[0].dtype, Shape(dims)});
  }
  return out;
}

std::vector<ValueType> infer_split_like(const InferCtx& c) {
  if (c.in.size() < 2)
    LOWBIT_THROW(ValueError, c.op, ": expected x and at least one 'like' input but found ",
                 c.in.size(), " inputs");
  const Shape& in = c.in[0].shape;
  if (in.rank() == 0)
    LOWBIT_THROW(ShapeError, c.op, ": argument 'x': expected rank >= 1 but found a scalar");
  const int axis = normalize_axis(c.op, "axis", c.attrs.i("axis", 0), in.rank(), in);
  int64_t total = 0;
  std::vector<ValueType> out;
  for (size_t i = 1; i < c.in.size(); ++i) {
    const Shape& l = c.in[i].shape;
    if (l.rank() != in.rank())
      LOWBIT_THROW(ShapeError, c.op, ": argument 'likes[", i - 1, "]': expected rank ", in.rank(),
                   " (as x ", in.str(), ") but found ", l.str());
    total = (total == kUnknown || l[axis] == kUnknown) ? kUnknown : total + l[axis];
    std::vector<int64_t> dims = in.dims();
    dims[axis] = l[axis];
    out.push_back({c.in[0].dtype, Shape(dims)});
  }
  if (total != kUnknown && in[axis] != kUnknown && total != in[axis])
    LOWBIT_THROW(ShapeError, c.op, ": expected the likes' dims along axis ", axis,
                 " to add up to x's ", in[axis], " (x is ", in.str(), ") but they add up to ",
                 total);
  return out;
}

std::vector<Value> concat_of_dys(const GradCtx& g) {
  std::vector<Value> dys;
  for (size_t i = 0; i < g.out.size(); ++i) dys.push_back(g.dy(static_cast<int>(i)));
  return dys;
}

// ---- slice, slice_grad ----

// One axis of a slice with Python semantics (slice.indices): start index, step and length.
struct SliceAxis {
  int64_t start = 0, step = 1, len = 0;
};

SliceAxis slice_axis(int64_t b, int64_t e, int64_t step, int64_t n) {
  const int64_t lo = step > 0 ? 0 : -1, hi = step > 0 ? n : n - 1;
  auto clamp = [&](int64_t i) {
    if (i < 0) {
      i = i < -n ? lo : i + n;  // i + n cannot overflow once i >= -n
      return std::max(i, lo);
    }
    return std::min(i, hi);
  };
  SliceAxis s;
  s.start = clamp(b);
  s.step = step;
  const int64_t stop = clamp(e);
  if (step > 0)
    s.len = stop > s.start ? (stop - s.start + step - 1) / step : 0;
  else
    s.len = s.start > stop ? (s.start - stop + (-step) - 1) / (-step) : 0;
  return s;
}

// Validates the slice attributes for `shape`; returns per-axis (begin, end, stride) with the
// axes past the attributes' length taken whole.
struct SliceSpec {
  std::vector<int64_t> begin, end, strides;
};

SliceSpec slice_spec(const std::string& op, const Shape& s, const Attrs& attrs) {
  SliceSpec spec{attrs.ints("begin"), attrs.ints("end"), attrs.ints("strides", {})};
  const size_t n = spec.begin.size();
  if (spec.end.size() != n)
    LOWBIT_THROW(ValueError, op,
                 ": attributes 'begin' and 'end': expected the same length but found ", n, " and ",
                 spec.end.size());
  if (spec.strides.empty()) spec.strides.assign(n, 1);
  if (spec.strides.size() != n)
    LOWBIT_THROW(ValueError, op, ": attribute 'strides': expected ", n,
                 " entries (as 'begin') or none but found ", spec.strides.size());
  if (static_cast<int>(n) > s.rank())
    LOWBIT_THROW(ShapeError, op, ": attribute 'begin': expected at most ", s.rank(),
                 " entries for shape ", s.str(), " but found ", n);
  for (size_t i = 0; i < n; ++i)
    if (spec.strides[i] == 0)
      LOWBIT_THROW(ValueError, op,
                   ": attribute 'strides': expected nonzero strides but found 0 for axis ", i);
  for (int d = static_cast<int>(n); d < s.rank(); ++d) {
    spec.begin.push_back(0);
    spec.end.push_back(kSliceMax);
    spec.strides.push_back(1);
  }
  return spec;
}

Shape sliced_shape(const Shape& s, const SliceSpec& spec) {
  std::vector<int64_t> dims(s.rank());
  for (int d = 0; d < s.rank(); ++d)
    dims[d] = s[d] == kUnknown ? kUnknown
                               : slice_axis(spec.begin[d], spec.end[d], spec.strides[d], s[d]).len;
  return Shape(dims);
}

std::vector<ValueType> infer_slice(const InferCtx& c) {
  const Shape& in = c.in[0].shape;
  return {{c.in[0].dtype, sliced_shape(in, slice_spec(c.op, in, c.attrs))}};
}

// Calls f(full_offset, sliced_offset, run) for each run of the last axis: `run` elements at
// full[full_offset + i * last_step] <-> sliced[sliced_offset + i].
template <class F>
void for_each_slice_row(const Shape& full, const SliceSpec& spec, int64_t elem_bytes, F&& f) {
  const int r = full.rank();
  std::vector<SliceAxis> ax(r);
  std::vector<int64_t> stride(r, 1);
  for (int d = r - 2; d >= 0; --d) stride[d] = stride[d + 1] * full[d + 1];
  int64_t rows = 1, base = 0;
  for (int d = 0; d < r; ++d) {
    ax[d] = slice_axis(spec.begin[d], spec.end[d], spec.strides[d], full[d]);
    base += ax[d].start * stride[d];
    if (d < r - 1) rows *= ax[d].len;
  }
  const int64_t run = r == 0 ? 1 : ax[r - 1].len;
  if (rows == 0 || run == 0) return;
  parallel_rows(rows, run * elem_bytes, [&](int64_t q) {
    int64_t off = base, rest = q;
    for (int d = r - 2; d >= 0; --d) {
      off += (rest % ax[d].len) * ax[d].step * stride[d];
      rest /= ax[d].len;
    }
    f(off, q * run, run);
  });
}

void slice_move(const Tensor& full, const Tensor& sliced, const SliceSpec& spec, bool to_full) {
  const int r = full.rank();
  const int64_t last_step = r == 0 ? 1 : spec.strides[r - 1];
  dispatch_size(dtype_size(full.dtype()), [&](auto tag) {
    using E = decltype(tag);
    E* pf = static_cast<E*>(full.raw());
    E* ps = static_cast<E*>(sliced.raw());
    for_each_slice_row(full.shape(), spec, static_cast<int64_t>(sizeof(E)),
                       [&](int64_t fo, int64_t so, int64_t run) {
                         if (last_step == 1) {
                           if (to_full)
                             std::memcpy(pf + fo, ps + so, run * sizeof(E));
                           else
                             std::memcpy(ps + so, pf + fo, run * sizeof(E));
                         } else if (to_full) {
                           for (int64_t i = 0; i < run; ++i) pf[fo + i * last_step] = ps[so + i];
                         } else {
                           for (int64_t i = 0; i < run; ++i) ps[so + i] = pf[fo + i * last_step];
                         }
                       });
  });
}

void slice_reference(const KernelCtx& k) {
  slice_move(k.in[0], k.out[0], k.params<SliceSpec>(), false);
}

std::vector<ValueType> infer_slice_grad(const InferCtx& c) {
  require_same_dtype(c, 0, 1, "dy", "like");
  const Shape& like = c.in[1].shape;
  const Shape want = sliced_shape(like, slice_spec(c.op, like, c.attrs));
  const Shape& dy = c.in[0].shape;
  bool ok = dy.rank() == want.rank();
  for (int d = 0; ok && d < dy.rank(); ++d) ok = dims_compatible(dy[d], want[d]);
  if (!ok)
    LOWBIT_THROW(ShapeError, c.op, ": argument 'dy': expected the sliced shape ", want.str(),
                 " of like ", like.str(), " but found ", dy.str());
  return {c.in[1]};
}

void slice_grad_reference(const KernelCtx& k) {
  std::memset(k.out[0].raw(), 0, k.out[0].nbytes());
  slice_move(k.out[0], k.in[0], k.params<SliceSpec>(), true);
}

// ---- pad ----

std::vector<int64_t> pad_spec(const std::string& op, const Shape& s, const Attrs& attrs) {
  std::vector<int64_t> p = attrs.ints("paddings");
  if (static_cast<int>(p.size()) != 2 * s.rank())
    LOWBIT_THROW(ShapeError, op, ": attribute 'paddings': expected ", 2 * s.rank(),
                 " entries (before and after for each axis of ", s.str(), ") but found ", p.size());
  for (size_t i = 0; i < p.size(); ++i)
    if (p[i] < 0)
      LOWBIT_THROW(ValueError, op, ": attribute 'paddings': expected paddings >= 0 but found ",
                   p[i], " at position ", i, " (use slice to crop)");
  return p;
}

std::vector<ValueType> infer_pad(const InferCtx& c) {
  const Shape& in = c.in[0].shape;
  const std::vector<int64_t> p = pad_spec(c.op, in, c.attrs);
  std::vector<int64_t> dims(in.rank());
  for (int d = 0; d < in.rank(); ++d)
    dims[d] = in[d] == kUnknown ? kUnknown : in[d] + p[2 * d] + p[2 * d + 1];
  return {{c.in[0].dtype, Shape(dims)}};
}

struct PadParams {
  std::vector<int64_t> paddings;
  double value = 0;
};

void pad_reference(const KernelCtx& k) {
  const Tensor& x = k.in[0];
  Tensor& out = k.out[0];
  const std::vector<int64_t>& p = k.params<PadParams>().paddings;
  out.fill(k.params<PadParams>().value);
  // x is the slice of out that starts at the `before` paddings.
  SliceSpec spec;
  for (int d = 0; d < x.rank(); ++d) {
    spec.begin.push_back(p[2 * d]);
    spec.end.push_back(p[2 * d] + x.dim(d));
    spec.strides.push_back(1);
  }
  slice_move(out, x, spec, true);
}

std::vector<Value> pad_grad(const GradCtx& g) {
  const std::vector<int64_t> p = g.attrs.ints("paddings");
  std::vector<int64_t> begin, end;
  for (size_t d = 0; d < p.size() / 2; ++d) {
    begin.push_back(p[2 * d]);
    end.push_back(p[2 * d + 1] > 0 ? -p[2 * d + 1] : kSliceMax);  // works for unknown dims too
  }
  return {ops::slice(g.dy(), begin, end)};
}

// ---- broadcast_to ----

std::vector<ValueType> infer_broadcast_to(const InferCtx& c) {
  const Shape& in = c.in[0].shape;
  const Shape target(c.attrs.ints("shape"));
  for (int64_t d : target.dims())
    if (d < 0)
      LOWBIT_THROW(ValueError, c.op, ": attribute 'shape': expected known dims >= 0 but found ",
                   target.str());
  bool ok = in.rank() <= target.rank();
  for (int i = 0; ok && i < in.rank(); ++i) {
    const int64_t a = in[i], t = target[target.rank() - in.rank() + i];
    ok = a == 1 || a == t || a == kUnknown;
  }
  if (!ok)
    LOWBIT_THROW(
        ShapeError, c.op, ": cannot broadcast argument 'x' ", in.str(), " to attribute 'shape' ",
        target.str(),
        " (expected each dim of x to be 1 or equal to the target's, aligned from the right)");
  return {{c.in[0].dtype, target}};
}

void broadcast_to_reference(const KernelCtx& k) {
  const Tensor& x = k.in[0];
  Tensor& out = k.out[0];
  dispatch_size(dtype_size(x.dtype()), [&](auto tag) {
    using E = decltype(tag);
    const E* px = static_cast<const E*>(x.raw());
    E* po = static_cast<E*>(out.raw());
    const std::vector<int64_t> st[1] = {kernels::broadcast_strides(x.shape(), out.shape())};
    kernels::for_each_broadcast<1>(out.shape(), st, [&](int64_t o, int64_t i) { po[o] = px[i]; });
  });
}

// ---- gather, gather_grad ----

void require_index_dtype(const InferCtx& c, int i, const char* arg) {
  const DType t = c.in[i].dtype;
  if (t != DType::kS32 && t != DType::kS64)
    LOWBIT_THROW(DTypeError, c.op, ": argument '", arg, "': expected dtype s32 or s64 but found ",
                 type_str(c.in[i]));
}

Shape gathered_shape(const Shape& params, const Shape& indices, int axis) {
  std::vector<int64_t> dims(params.dims().begin(), params.dims().begin() + axis);
  dims.insert(dims.end(), indices.dims().begin(), indices.dims().end());
  dims.insert(dims.end(), params.dims().begin() + axis + 1, params.dims().end());
  return Shape(dims);
}

std::vector<ValueType> infer_gather(const InferCtx& c) {
  const Shape& params = c.in[0].shape;
  require_index_dtype(c, 1, "indices");
  if (params.rank() == 0)
    LOWBIT_THROW(ShapeError, c.op, ": argument 'params': expected rank >= 1 but found a scalar");
  const int axis = normalize_axis(c.op, "axis", c.attrs.i("axis", 0), params.rank(), params);
  return {{c.in[0].dtype, gathered_shape(params, c.in[1].shape, axis)}};
}

int64_t index_at(const Tensor& indices, int64_t j) {
  return indices.dtype() == DType::kS32 ? static_cast<const int32_t*>(indices.raw())[j]
                                        : static_cast<const int64_t*>(indices.raw())[j];
}

struct GatherGeometry {
  int64_t outer, n_rows, inner, n_idx;
};

GatherGeometry gather_geometry(const Shape& params, const Shape& indices, const Attrs& attrs) {
  const int axis = axis_attr(attrs, params.rank(), 0);
  return {prod(params, 0, axis), params[axis], prod(params, axis + 1, params.rank()),
          indices.numel()};
}

void gather_reference(const KernelCtx& k) {
  const Tensor& params = k.in[0];
  const Tensor& indices = k.in[1];
  const GatherGeometry& geo = k.params<GatherGeometry>();
  const size_t row = static_cast<size_t>(geo.inner) * dtype_size(params.dtype());
  const char* pp = static_cast<const char*>(params.raw());
  char* po = static_cast<char*>(k.out[0].raw());
  parallel_rows(geo.outer * geo.n_idx, static_cast<int64_t>(row), [&](int64_t t) {
    const int64_t o = t / geo.n_idx, j = t % geo.n_idx;
    const int64_t idx = index_at(indices, j);
    LOWBIT_CHECK(idx >= 0 && idx < geo.n_rows, "gather: index ", idx, " at position ", j,
                 " of 'indices' is out of range [0, ", geo.n_rows, ")");
    std::memcpy(po + t * row, pp + (o * geo.n_rows + idx) * row, row);
  });
}

std::vector<ValueType> infer_gather_grad(const InferCtx& c) {
  require_float(c, 0, "dy");
  require_index_dtype(c, 1, "indices");
  require_same_dtype(c, 0, 2, "dy", "like");
  const Shape& like = c.in[2].shape;
  if (like.rank() == 0)
    LOWBIT_THROW(ShapeError, c.op, ": argument 'like': expected rank >= 1 but found a scalar");
  const int axis = normalize_axis(c.op, "axis", c.attrs.i("axis", 0), like.rank(), like);
  const Shape want = gathered_shape(like, c.in[1].shape, axis);
  const Shape& dy = c.in[0].shape;
  bool ok = dy.rank() == want.rank();
  for (int d = 0; ok && d < dy.rank(); ++d) ok = dims_compatible(dy[d], want[d]);
  if (!ok)
    LOWBIT_THROW(ShapeError, c.op, ": argument 'dy': expected the gathered shape ", want.str(),
                 " but found ", dy.str());
  return {c.in[2]};
}

// out[o, indices[j], :] += dy[o, j, :] in index order. Threads own disjoint row ranges of the
// output and each scans every index, so every sum runs in the same order at any thread count.
void gather_grad_reference(const KernelCtx& k) {
  const Tensor& dy = k.in[0];
  const Tensor& indices = k.in[1];
  Tensor& out = k.out[0];
  const GatherGeometry& geo = k.params<GatherGeometry>();
  const float* pd = dy.data<float>();
  float* po = out.data<float>();
  std::memset(po, 0, out.nbytes());
  const bool big = dy.numel() > kParallelGrain && geo.n_rows > 1;
#pragma omp parallel if (big)
  {
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t lo = geo.n_rows * t / nt, hi = geo.n_rows * (t + 1) / nt;
    for (int64_t o = 0; o < geo.outer; ++o)
      for (int64_t j = 0; j < geo.n_idx; ++j) {
        const int64_t idx = index_at(indices, j);
        LOWBIT_CHECK(idx >= 0 && idx < geo.n_rows, "gather_grad: index ", idx, " at position ", j,
                     " of 'indices' is out of range [0, ", geo.n_rows, ")");
        if (idx < lo || idx >= hi) continue;
        float* dst = po + (o * geo.n_rows + idx) * geo.inner;
        const float* src = pd + (o * geo.n_idx + j) * geo.inner;
        for (int64_t i = 0; i < geo.inner; ++i) dst[i] += src[i];
      }
  }
}

// ---- one_hot ----

std::vector<ValueType> infer_one_hot(const InferCtx& c) {
  const ValueType& ind = c.in[0];
  if (!is_integer(ind.dtype))
    LOWBIT_THROW(DTypeError, c.op, ": argument 'indices': expected an integer dtype but found ",
                 type_str(ind));
  const int64_t depth = c.attrs.i("depth");
  if (depth < 0)
    LOWBIT_THROW(ValueError, c.op, ": attribute 'depth': expected >= 0 but found ", depth);
  const int axis =
      normalize_axis(c.op, "axis", c.attrs.i("axis", -1), ind.shape.rank() + 1, ind.shape);
  std::vector<int64_t> dims = ind.shape.dims();
  dims.insert(dims.begin() + axis, depth);
  const DType dt = c.attrs.has("dtype") ? c.attrs.dtype("dtype") : DType::kF32;
  return {{dt, Shape(dims)}};
}

struct OneHotParams {
  int64_t depth = 0;
  int axis = 0;
  double off = 0, on = 1;
};

void one_hot_reference(const KernelCtx& k) {
  const Tensor& ind = k.in[0];
  Tensor& out = k.out[0];
  const OneHotParams& oh = k.params<OneHotParams>();
  const int64_t depth = oh.depth;
  const int axis = oh.axis;
  const int64_t outer = prod(ind.shape(), 0, axis), inner = prod(ind.shape(), axis, ind.rank());
  out.fill(oh.off);
  const double on = oh.on;
  dispatch_dtype(out.dtype(), [&](auto otag) {
    using U = decltype(otag);
    const U von = std::is_same_v<U, bool> ? static_cast<U>(on != 0) : static_cast<U>(on);
    U* po = static_cast<U*>(out.raw());
    dispatch_dtype(ind.dtype(), [&](auto itag) {
      using I = decltype(itag);
      const I* pi = static_cast<const I*>(ind.raw());
      for (int64_t o = 0; o < outer; ++o)
        for (int64_t i = 0; i < inner; ++i) {
          const int64_t v = static_cast<int64_t>(pi[o * inner + i]);
          if (v >= 0 && v < depth) po[(o * depth + v) * inner + i] = von;
        }
    });
  });
}

}  // namespace

void register_shape_ops() {
  register_op({.name = "reshape",
               .num_inputs = 1,
               .infer = infer_reshape,
               .grad = reshape_back,
               .reference = copy_reference,
               .view_of_input = 0,
               .doc = "x with another shape (attr shape, one -1 allowed); a view"});
  register_op({.name = "expand_dims",
               .num_inputs = 1,
               .infer = infer_expand_dims,
               .grad = reshape_back,
               .reference = copy_reference,
               .view_of_input = 0,
               .doc = "insert a size-1 dim at axis; a view"});
  register_op({.name = "squeeze",
               .num_inputs = 1,
               .infer = infer_squeeze,
               .grad = reshape_back,
               .reference = copy_reference,
               .view_of_input = 0,
               .doc = "remove size-1 dims (attr axes, empty = all); a view"});
  register_op({.name = "flatten",
               .num_inputs = 1,
               .infer = infer_flatten,
               .grad = reshape_back,
               .reference = copy_reference,
               .view_of_input = 0,
               .doc = "collapse to 2-D around axis (default 1, keeps the batch dim); a view"});
  register_op({.name = "transpose",
               .num_inputs = 1,
               .infer = infer_transpose,
               .grad = transpose_grad,
               .prepare = [](const PrepareCtx& c) -> std::any {
                 return transpose_perm(c.op, c.in[0].shape, c.attrs);
               },
               .reference = transpose_reference,
               .doc = "permute dims (attr perm, default reversed)"});
  register_op({.name = "concat",
               .num_inputs = -1,
               .infer = infer_concat,
               .grad =
                   [](const GradCtx& g) {
                     std::vector<Value> likes(g.in.begin(), g.in.end());
                     return ops::split_like(g.dy(), likes, g.attrs.i("axis", 0));
                   },
               .prepare = prepare_concat,
               .reference = concat_reference,
               .doc = "join inputs along axis (default 0)"});
  register_op({.name = "split",
               .num_inputs = 1,
               .infer = infer_split,
               .grad = [](const GradCtx& g) -> std::vector<Value> {
                 return {ops::concat(concat_of_dys(g), g.attrs.i("axis", 0))};
               },
               .prepare = prepare_split,
               .reference = split_reference,
               .doc = "split along axis (attr sizes, or num equal parts)"});
  register_op({.name = "split_like",
               .num_inputs = -1,
               .infer = infer_split_like,
               .grad =
                   [](const GradCtx& g) {
                     std::vector<Value> dx(g.in.size());
                     dx[0] = ops::concat(concat_of_dys(g), g.attrs.i("axis", 0));
                     return dx;
                   },
               .prepare = prepare_split,
               .reference = split_reference,
               .doc = "split x along axis into pieces as large as the likes"});
  register_op({.name = "slice",
               .num_inputs = 1,
               .infer = infer_slice,
               .grad = [](const GradCtx& g) -> std::vector<Value> {
                 return {ops::apply1("slice_grad", {g.dy(), g.in[0]}, g.attrs)};
               },
               .prepare = [](const PrepareCtx& c) -> std::any {
                 return slice_spec(c.op, c.in[0].shape, c.attrs);
               },
               .reference = slice_reference,
               .doc = "strided slice with Python semantics (attrs begin, end, strides)"});
  register_op({.name = "slice_grad",
               .num_inputs = 2,
               .infer = infer_slice_grad,
               .grad = [](const GradCtx& g) -> std::vector<Value> {
                 return {ops::apply1("slice", {g.dy()}, g.attrs), Value()};
               },
               .prepare = [](const PrepareCtx& c) -> std::any {
                 return slice_spec(c.op, c.out[0].shape, c.attrs);
               },
               .reference = slice_grad_reference,
               .doc = "zeros like `like` with dy written where slice reads"});
  register_op({.name = "pad",
               .num_inputs = 1,
               .infer = infer_pad,
               .grad = pad_grad,
               .prepare = [](const PrepareCtx& c) -> std::any {
                 return PadParams{pad_spec(c.op, c.in[0].shape, c.attrs), c.attrs.f("value", 0.0)};
               },
               .reference = pad_reference,
               .doc = "constant padding (attrs paddings [before, after]*rank, value)"});
  register_op({.name = "broadcast_to",
               .num_inputs = 1,
               .infer = infer_broadcast_to,
               .grad = [](const GradCtx& g) -> std::vector<Value> {
                 return {ops::sum_like(g.dy(), g.in[0])};
               },
               .reference = broadcast_to_reference,
               .doc = "broadcast x to attr shape"});
  register_op({.name = "gather",
               .num_inputs = 2,
               .infer = infer_gather,
               .grad = [](const GradCtx& g) -> std::vector<Value> {
                 return {ops::gather_grad(g.dy(), g.in[1], g.in[0], g.attrs.i("axis", 0)), Value()};
               },
               .prepare = [](const PrepareCtx& c) -> std::any {
                 return gather_geometry(c.in[0].shape, c.in[1].shape, c.attrs);
               },
               .reference = gather_reference,
               .doc = "pick entries of params along axis (embedding lookup)"});
  register_op({.name = "gather_grad",
               .num_inputs = 3,
               .infer = infer_gather_grad,
               .grad = [](const GradCtx& g) -> std::vector<Value> {
                 return {ops::gather(g.dy(), g.in[1], g.attrs.i("axis", 0)), Value(), Value()};
               },
               .prepare = [](const PrepareCtx& c) -> std::any {
                 return gather_geometry(c.out[0].shape, c.in[1].shape, c.attrs);
               },
               .reference = gather_grad_reference,
               .doc = "zeros like params with dy rows added at the indices"});
  register_op({.name = "one_hot",
               .num_inputs = 1,
               .infer = infer_one_hot,
               .prepare = [](const PrepareCtx& c) -> std::any {
                 return OneHotParams{c.attrs.i("depth"),
                                     axis_attr(c.attrs, c.in[0].shape.rank() + 1, -1),
                                     c.attrs.f("off_value", 0.0), c.attrs.f("on_value", 1.0)};
               },
               .reference = one_hot_reference,
               .doc = "one-hot encoding (attrs depth, on_value, off_value, axis, dtype)"});
}

}  // namespace lowbit::detail
