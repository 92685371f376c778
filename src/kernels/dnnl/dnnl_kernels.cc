#include "kernels/dnnl/dnnl_kernels.h"

#include <omp.h>

#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <optional>
#include <unordered_map>
#include <vector>

#include "lowbit/error.h"

namespace lowbit::kernels {
namespace {

using dnnl::memory;
using Dims = memory::dims;
using Tag = memory::format_tag;
constexpr auto kF32 = memory::data_type::f32;

// ---- size thresholds (bench/matmul_conv_bench.cc BM_*Small, AVX-512 Zen) ----
// Below these many multiply-adds the per-call cost of oneDNN (0.2-0.4 us: cache lookup,
// argument binding, filter reorder, dispatch) exceeds the plain-loop reference's time.
// Measured crossovers at 1 thread: matmul between 4^3 and 8^3, conv2d near 1300.
constexpr int64_t kMatMulMinMacs = 256;
constexpr int64_t kConvMinMacs = 2048;
// Below these many multiply-adds a call runs on one thread whatever set_num_threads says: the
// fork/join of a parallel region (~1-2 us on an idle machine, milliseconds when another process
// holds the second core) costs more than the split saves. Measured 2-thread break-even on an
// idle machine (BM_*Small with the split forced): matmul ~48^3 = 110k, conv2d ~25k.
constexpr int64_t kMatMulParallelMinMacs = int64_t{1} << 17;
constexpr int64_t kConvParallelMinMacs = int64_t{1} << 15;
// Primitives kept before the least recently used one is dropped (a training graph has a few
// dozen geometries; batch size changes add a few more).
constexpr size_t kMaxCacheEntries = 512;

enum class Kind : int64_t { kMatMul, kConvFwd, kConvBwdData, kConvBwdWeights };

std::atomic<bool> g_thresholds{true};
std::atomic<dnnl_tuning::ConvFilterLayout> g_filter_layout{dnnl_tuning::ConvFilterLayout::kBlocked};

// A 64-byte aligned buffer that only grows (its old contents are not kept).
class GrowBuffer {
 public:
  ~GrowBuffer() { std::free(data_); }
  void* get(size_t bytes) {
    if (bytes > bytes_) {
      std::free(data_);
      bytes_ = (bytes + 4095) / 4096 * 4096;
      data_ = std::aligned_alloc(64, bytes_);
      LOWBIT_CHECK(data_ != nullptr, "oneDNN kernels: out of memory allocating ", bytes_, " bytes");
    }
    return data_;
  }
  size_t bytes() const { return bytes_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// One tensor argument of a cached primitive: the caller's memory (user layout) and, when the
// primitive wants another layout, an internal copy in a persistent buffer plus the reorder.
struct Arg {
  int dnnl_arg = 0;
  int user_index = 0;  // which pointer of the call (0, 1, 2)
  bool output = false;
  memory user;
  memory inner;                          // == user when no reorder is needed
  std::optional<dnnl::reorder> reorder;  // user -> inner (inputs), inner -> user (outputs)
};

struct Entry {
  bool ok = false;
  int threads = 1;  // OpenMP threads it was created for and runs with
  std::string impl;
  dnnl::primitive prim;
  std::vector<Arg> args;
  std::unordered_map<int, memory> exec_args;  // the primitive's arguments (shared handles)
  memory scratch;
  size_t scratch_bytes = 0;
  uint64_t last_use = 0;
};

// v[0] = Kind, v[1] = threads, then the geometry.
struct Key {
  std::array<int64_t, 22> v{};
  bool operator==(const Key& o) const { return v == o.v; }
};
struct KeyHash {
  size_t operator()(const Key& k) const {
    uint64_t h = 1469598103934665603ull;
    for (int64_t x : k.v) h = (h ^ static_cast<uint64_t>(x)) * 1099511628211ull;
    return static_cast<size_t>(h);
  }
};

struct Context {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  std::mutex mu;
  std::unordered_map<Key, std::unique_ptr<Entry>, KeyHash> cache;
  uint64_t clock = 0;
  GrowBuffer scratch;
  std::array<GrowBuffer, 3> inner;  // reorder targets, one per call argument
};

Context& context() {
  static Context* c = new Context;  // never destroyed: kernels may run during static teardown
  return *c;
}

int64_t matmul_macs(const MatMulParams& p) { return p.batch * p.m * p.n * p.k; }
int64_t conv_macs(const Conv2DParams& p) {
  return p.n * p.out_h * p.out_w * p.out_c * p.k_h * p.k_w * (p.in_c / p.groups);
}

// Threads a call of this size runs with (oneDNN fixes its work split at creation, so this is
// part of the cache key).
int threads_for(int64_t macs, int64_t parallel_min_macs) {
  return macs < parallel_min_macs ? 1 : omp_get_max_threads();
}

// Sets the calling thread's OpenMP thread count (what oneDNN reads) for a scope.
class ThreadScope {
 public:
  explicit ThreadScope(int threads) : saved_(omp_get_max_threads()) {
    if (threads != saved_) omp_set_num_threads(threads);
    changed_ = threads != saved_;
  }
  ~ThreadScope() {
    if (changed_) omp_set_num_threads(saved_);
  }
  ThreadScope(const ThreadScope&) = delete;
  ThreadScope& operator=(const ThreadScope&) = delete;

 private:
  int saved_;
  bool changed_ = false;
};

Key matmul_key(const MatMulParams& p) {
  Key k;
  k.v = {static_cast<int64_t>(Kind::kMatMul),
         threads_for(matmul_macs(p), kMatMulParallelMinMacs),
         p.batch,
         p.m,
         p.n,
         p.k,
         p.trans_a,
         p.trans_b,
         p.a_batch_stride,
         p.b_batch_stride};
  return k;
}

Key conv_key(Kind kind, const Conv2DParams& p) {
  Key k;
  k.v = {static_cast<int64_t>(kind),
         threads_for(conv_macs(p), kConvParallelMinMacs),
         static_cast<int64_t>(g_filter_layout.load()),
         p.n,
         p.in_h,
         p.in_w,
         p.in_c,
         p.k_h,
         p.k_w,
         p.out_c,
         p.groups,
         p.stride_h,
         p.stride_w,
         p.dil_h,
         p.dil_w,
         p.pad_top,
         p.pad_bottom,
         p.pad_left,
         p.pad_right,
         p.out_h,
         p.out_w};
  return k;
}

// Adds argument `dnnl_arg` whose caller layout is `user_md` and whose primitive layout is
// `prim_md`; inserts a reorder when they differ.
void add_arg(Context& ctx, Entry& e, int dnnl_arg, int user_index, bool output,
             const memory::desc& user_md, const memory::desc& prim_md) {
  Arg a;
  a.dnnl_arg = dnnl_arg;
  a.user_index = user_index;
  a.output = output;
  a.user = memory(user_md, ctx.engine, DNNL_MEMORY_NONE);
  if (user_md == prim_md) {
    a.inner = a.user;
  } else {
    a.inner = memory(prim_md, ctx.engine, DNNL_MEMORY_NONE);
    auto pd = output ? dnnl::reorder::primitive_desc(ctx.engine, prim_md, ctx.engine, user_md)
                     : dnnl::reorder::primitive_desc(ctx.engine, user_md, ctx.engine, prim_md);
    a.reorder = dnnl::reorder(pd);
  }
  e.exec_args[dnnl_arg] = a.inner;
  e.args.push_back(std::move(a));
}

void finish_entry(Context& ctx, Entry& e, const dnnl::primitive_desc_base& pd) {
  e.scratch_bytes = pd.scratchpad_desc().get_size();
  e.scratch = memory(pd.scratchpad_desc(), ctx.engine, DNNL_MEMORY_NONE);
  e.exec_args[DNNL_ARG_SCRATCHPAD] = e.scratch;
  e.impl = pd.impl_info_str();
  e.ok = true;
}

// oneDNN's own reference implementations ("ref:any") are slower than our plain loops.
bool is_slow_impl(const std::string& impl) { return impl.rfind("ref", 0) == 0; }

dnnl::primitive_attr user_scratchpad_attr() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// Matrix descriptor of op(X) with X stored row-major as [rows, cols] (or [cols, rows] when
// transposed), batched with element stride `batch_stride` (0 = broadcast: batch dim 1).
memory::desc matrix_md(int64_t batch, int64_t batch_stride, int64_t rows, int64_t cols, bool trans,
                       bool batched) {
  const int64_t rs = trans ? 1 : cols, cs = trans ? rows : 1;
  if (!batched) return memory::desc(Dims{rows, cols}, kF32, Dims{rs, cs});
  const int64_t b = batch_stride == 0 ? 1 : batch;
  const int64_t bs = batch_stride == 0 ? rows * cols : batch_stride;
  return memory::desc(Dims{b, rows, cols}, kF32, Dims{bs, rs, cs});
}

// Both operands broadcast over the batch: compute one product and copy it.
bool both_broadcast(const MatMulParams& p) {
  return p.batch > 1 && p.a_batch_stride == 0 && p.b_batch_stride == 0;
}

void build_matmul(Context& ctx, Entry& e, const MatMulParams& p) {
  const bool batched = p.batch > 1 && !both_broadcast(p);
  auto a_md = matrix_md(p.batch, p.a_batch_stride, p.m, p.k, p.trans_a, batched);
  auto b_md = matrix_md(p.batch, p.b_batch_stride, p.k, p.n, p.trans_b, batched);
  auto c_md = batched ? memory::desc(Dims{p.batch, p.m, p.n}, kF32, Tag::abc)
                      : memory::desc(Dims{p.m, p.n}, kF32, Tag::ab);
  dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_md, c_md), user_scratchpad_attr(),
                                  ctx.engine);
  e.prim = dnnl::matmul(pd);
  add_arg(ctx, e, DNNL_ARG_SRC, 0, false, a_md, pd.src_desc());
  add_arg(ctx, e, DNNL_ARG_WEIGHTS, 1, false, b_md, pd.weights_desc());
  add_arg(ctx, e, DNNL_ARG_DST, 2, true, c_md, pd.dst_desc());
  finish_entry(ctx, e, pd);
  if (is_slow_impl(e.impl))
    throw dnnl::error(dnnl_unimplemented, "only oneDNN's reference matmul fits");
}

struct ConvDescs {
  memory::desc x, w, y;  // caller layouts
  memory::desc w_prim;   // what the primitive is asked for (w or any)
  Dims strides, dilates, pad_l, pad_r;
};

ConvDescs conv_descs(const Conv2DParams& p, dnnl_tuning::ConvFilterLayout layout) {
  ConvDescs d;
  d.x = memory::desc(Dims{p.n, p.in_c, p.in_h, p.in_w}, kF32, Tag::nhwc);
  d.y = memory::desc(Dims{p.n, p.out_c, p.out_h, p.out_w}, kF32, Tag::nhwc);
  if (p.groups == 1) {
    d.w = memory::desc(Dims{p.out_c, p.in_c, p.k_h, p.k_w}, kF32, Tag::hwio);
  } else {
    d.w = memory::desc(Dims{p.groups, p.out_c / p.groups, p.in_c / p.groups, p.k_h, p.k_w}, kF32,
                       Tag::hwigo);
  }
  d.w_prim = layout == dnnl_tuning::ConvFilterLayout::kPlain
                 ? d.w
                 : memory::desc(d.w.dims(), kF32, Tag::any);
  d.strides = {p.stride_h, p.stride_w};
  d.dilates = {p.dil_h - 1, p.dil_w - 1};
  d.pad_l = {p.pad_top, p.pad_left};
  d.pad_r = {p.pad_bottom, p.pad_right};
  return d;
}

dnnl::convolution_forward::primitive_desc conv_fwd_pd(Context& ctx, const ConvDescs& d,
                                                      const dnnl::primitive_attr& attr) {
  dnnl::convolution_forward::desc desc(dnnl::prop_kind::forward_training,
                                       dnnl::algorithm::convolution_direct, d.x, d.w_prim, d.y,
                                       d.strides, d.dilates, d.pad_l, d.pad_r);
  return dnnl::convolution_forward::primitive_desc(desc, attr, ctx.engine);
}

void build_conv_with(Context& ctx, Entry& e, Kind kind, const Conv2DParams& p,
                     dnnl_tuning::ConvFilterLayout layout) {
  const ConvDescs d = conv_descs(p, layout);
  const auto attr = user_scratchpad_attr();
  if (kind == Kind::kConvFwd) {
    auto pd = conv_fwd_pd(ctx, d, attr);
    e.prim = dnnl::convolution_forward(pd);
    add_arg(ctx, e, DNNL_ARG_SRC, 0, false, d.x, pd.src_desc());
    add_arg(ctx, e, DNNL_ARG_WEIGHTS, 1, false, d.w, pd.weights_desc());
    add_arg(ctx, e, DNNL_ARG_DST, 2, true, d.y, pd.dst_desc());
    finish_entry(ctx, e, pd);
  } else if (kind == Kind::kConvBwdData) {
    auto hint = conv_fwd_pd(ctx, d, dnnl::primitive_attr());
    dnnl::convolution_backward_data::desc desc(dnnl::algorithm::convolution_direct, d.x, d.w_prim,
                                               d.y, d.strides, d.dilates, d.pad_l, d.pad_r);
    dnnl::convolution_backward_data::primitive_desc pd(desc, attr, ctx.engine, hint);
    e.prim = dnnl::convolution_backward_data(pd);
    add_arg(ctx, e, DNNL_ARG_DIFF_DST, 0, false, d.y, pd.diff_dst_desc());
    add_arg(ctx, e, DNNL_ARG_WEIGHTS, 1, false, d.w, pd.weights_desc());
    add_arg(ctx, e, DNNL_ARG_DIFF_SRC, 2, true, d.x, pd.diff_src_desc());
    finish_entry(ctx, e, pd);
  } else {
    auto hint = conv_fwd_pd(ctx, d, dnnl::primitive_attr());
    dnnl::convolution_backward_weights::desc desc(dnnl::algorithm::convolution_direct, d.x,
                                                  d.w_prim, d.y, d.strides, d.dilates, d.pad_l,
                                                  d.pad_r);
    dnnl::convolution_backward_weights::primitive_desc pd(desc, attr, ctx.engine, hint);
    e.prim = dnnl::convolution_backward_weights(pd);
    add_arg(ctx, e, DNNL_ARG_SRC, 0, false, d.x, pd.src_desc());
    add_arg(ctx, e, DNNL_ARG_DIFF_DST, 1, false, d.y, pd.diff_dst_desc());
    add_arg(ctx, e, DNNL_ARG_DIFF_WEIGHTS, 2, true, d.w, pd.diff_weights_desc());
    finish_entry(ctx, e, pd);
  }
}

// Builds with the preferred filter layout, or the other one if that only gets oneDNN's
// reference implementation; throws dnnl::error when neither has a fast implementation.
// Blocked filters (reordered per call, ~1% of a conv's time) measured 1.3-3x faster than
// HWIO as stored, which oneDNN can only serve with its im2col+gemm path.
void build_conv(Context& ctx, Entry& e, Kind kind, const Conv2DParams& p) {
  using dnnl_tuning::ConvFilterLayout;
  ConvFilterLayout preferred = g_filter_layout;
  // Backward-input into a single channel (the gradient of an image input): the gemm path on
  // HWIO filters measured 2x faster than the blocked jit one (bench layer 0, 1 thread).
  if (kind == Kind::kConvBwdData && p.in_c == 1 && p.groups == 1)
    preferred = ConvFilterLayout::kPlain;
  const ConvFilterLayout other =
      preferred == ConvFilterLayout::kPlain ? ConvFilterLayout::kBlocked : ConvFilterLayout::kPlain;
  for (ConvFilterLayout layout : {preferred, other}) {
    Entry trial;
    build_conv_with(ctx, trial, kind, p, layout);
    if (is_slow_impl(trial.impl)) continue;
    bool reordered = false;
    for (const Arg& a : trial.args) reordered |= a.reorder.has_value();
    trial.impl += reordered ? " (filters reordered)" : " (filters as stored)";
    e = std::move(trial);
    return;
  }
  throw dnnl::error(dnnl_unimplemented, "only oneDNN's reference convolution fits");
}

// Finds or creates the primitive for `key` (ctx.mu held). A geometry oneDNN rejects is cached
// as not ok, so asking again is cheap.
template <class Build>
Entry& lookup(Context& ctx, const Key& key, Build&& build) {
  auto it = ctx.cache.find(key);
  if (it == ctx.cache.end()) {
    if (ctx.cache.size() >= kMaxCacheEntries) {
      auto oldest = ctx.cache.begin();
      for (auto j = ctx.cache.begin(); j != ctx.cache.end(); ++j)
        if (j->second->last_use < oldest->second->last_use) oldest = j;
      ctx.cache.erase(oldest);
    }
    auto e = std::make_unique<Entry>();
    const int threads = static_cast<int>(key.v[1]);
    try {
      ThreadScope scope(threads);
      build(*e);
    } catch (const dnnl::error&) {
      *e = Entry();  // unsupported by this oneDNN build/ISA: the reference kernel runs instead
    }
    e->threads = threads;
    it = ctx.cache.emplace(key, std::move(e)).first;
  }
  it->second->last_use = ++ctx.clock;
  return *it->second;
}

void execute(Context& ctx, Entry& e, const std::array<const void*, 3>& ptrs, const char* who) {
  LOWBIT_CHECK(e.ok, who, ": geometry not supported by oneDNN (check *_supported first)");
  ThreadScope scope(e.threads);
  int inner_slot = 0;
  for (Arg& a : e.args) {
    a.user.set_data_handle(const_cast<void*>(ptrs[a.user_index]));
    if (a.reorder)
      a.inner.set_data_handle(ctx.inner[inner_slot++].get(a.inner.get_desc().get_size()));
  }
  e.scratch.set_data_handle(ctx.scratch.get(e.scratch_bytes == 0 ? 64 : e.scratch_bytes));
  for (Arg& a : e.args)
    if (a.reorder && !a.output) a.reorder->execute(ctx.stream, a.user, a.inner);
  e.prim.execute(ctx.stream, e.exec_args);
  for (Arg& a : e.args)
    if (a.reorder && a.output) a.reorder->execute(ctx.stream, a.inner, a.user);
  ctx.stream.wait();
}

bool matmul_shape_ok(const MatMulParams& p) {
  if (p.batch < 1 || p.m < 1 || p.n < 1 || p.k < 1) return false;
  if (p.a_batch_stride < 0 || p.b_batch_stride < 0) return false;
  return !g_thresholds || matmul_macs(p) >= kMatMulMinMacs;
}

bool conv_shape_ok(const Conv2DParams& p) {
  for (int64_t v : {p.n, p.in_h, p.in_w, p.in_c, p.k_h, p.k_w, p.out_c, p.groups, p.stride_h,
                    p.stride_w, p.dil_h, p.dil_w, p.out_h, p.out_w})
    if (v < 1) return false;
  for (int64_t v : {p.pad_top, p.pad_bottom, p.pad_left, p.pad_right})
    if (v < 0) return false;
  if (p.in_c % p.groups != 0 || p.out_c % p.groups != 0) return false;
  return !g_thresholds || conv_macs(p) >= kConvMinMacs;
}

Entry& matmul_entry(Context& ctx, const MatMulParams& p) {
  return lookup(ctx, matmul_key(p), [&](Entry& e) { build_matmul(ctx, e, p); });
}

Entry& conv_entry(Context& ctx, Kind kind, const Conv2DParams& p) {
  return lookup(ctx, conv_key(kind, p), [&](Entry& e) { build_conv(ctx, e, kind, p); });
}

bool conv_supported(Kind kind, const Conv2DParams& p) {
  if (!conv_shape_ok(p)) return false;
  Context& ctx = context();
  std::lock_guard<std::mutex> lock(ctx.mu);
  return conv_entry(ctx, kind, p).ok;
}

void conv_run(Kind kind, const Conv2DParams& p, const void* a, const void* b, void* c,
              const char* who) {
  Context& ctx = context();
  std::lock_guard<std::mutex> lock(ctx.mu);
  execute(ctx, conv_entry(ctx, kind, p), {a, b, c}, who);
}

std::string conv_impl(Kind kind, const Conv2DParams& p) {
  if (!conv_shape_ok(p)) return "";
  Context& ctx = context();
  std::lock_guard<std::mutex> lock(ctx.mu);
  return conv_entry(ctx, kind, p).impl;
}

}  // namespace

void matmul_f32__dnnl(const MatMulParams& p, const float* a, const float* b, float* c) {
  Context& ctx = context();
  {
    std::lock_guard<std::mutex> lock(ctx.mu);
    execute(ctx, matmul_entry(ctx, p), {a, b, c}, "matmul_f32__dnnl");
  }
  if (both_broadcast(p)) {
    for (int64_t i = 1; i < p.batch; ++i)
      std::memcpy(c + i * p.m * p.n, c, sizeof(float) * p.m * p.n);
  }
}

void conv2d_forward_f32__dnnl(const Conv2DParams& p, const float* x, const float* w, float* y) {
  conv_run(Kind::kConvFwd, p, x, w, y, "conv2d_forward_f32__dnnl");
}

void conv2d_backward_input_f32__dnnl(const Conv2DParams& p, const float* dy, const float* w,
                                     float* dx) {
  conv_run(Kind::kConvBwdData, p, dy, w, dx, "conv2d_backward_input_f32__dnnl");
}

void conv2d_backward_filter_f32__dnnl(const Conv2DParams& p, const float* x, const float* dy,
                                      float* dw) {
  conv_run(Kind::kConvBwdWeights, p, x, dy, dw, "conv2d_backward_filter_f32__dnnl");
}

bool matmul_f32__dnnl_supported(const MatMulParams& p) {
  if (!matmul_shape_ok(p)) return false;
  Context& ctx = context();
  std::lock_guard<std::mutex> lock(ctx.mu);
  return matmul_entry(ctx, p).ok;
}
bool conv2d_forward_f32__dnnl_supported(const Conv2DParams& p) {
  return conv_supported(Kind::kConvFwd, p);
}
bool conv2d_backward_input_f32__dnnl_supported(const Conv2DParams& p) {
  return conv_supported(Kind::kConvBwdData, p);
}
bool conv2d_backward_filter_f32__dnnl_supported(const Conv2DParams& p) {
  return conv_supported(Kind::kConvBwdWeights, p);
}

namespace dnnl_tuning {

void set_conv_filter_layout(ConvFilterLayout layout) {
  std::lock_guard<std::mutex> lock(context().mu);
  g_filter_layout = layout;
}
ConvFilterLayout conv_filter_layout() { return g_filter_layout; }

void set_size_thresholds(bool enabled) {
  std::lock_guard<std::mutex> lock(context().mu);
  g_thresholds = enabled;
}

std::string matmul_impl(const MatMulParams& p) {
  if (!matmul_shape_ok(p)) return "";
  Context& ctx = context();
  std::lock_guard<std::mutex> lock(ctx.mu);
  return matmul_entry(ctx, p).impl;
}
std::string conv2d_forward_impl(const Conv2DParams& p) { return conv_impl(Kind::kConvFwd, p); }
std::string conv2d_backward_input_impl(const Conv2DParams& p) {
  return conv_impl(Kind::kConvBwdData, p);
}
std::string conv2d_backward_filter_impl(const Conv2DParams& p) {
  return conv_impl(Kind::kConvBwdWeights, p);
}

size_t cache_size() {
  std::lock_guard<std::mutex> lock(context().mu);
  return context().cache.size();
}
size_t buffer_bytes() {
  Context& ctx = context();
  std::lock_guard<std::mutex> lock(ctx.mu);
  size_t total = ctx.scratch.bytes();
  for (const auto& b : ctx.inner) total += b.bytes();
  return total;
}
void clear_cache() {
  std::lock_guard<std::mutex> lock(context().mu);
  context().cache.clear();
}

}  // namespace dnnl_tuning
}  // namespace lowbit::kernels
