#include "lowbit/data/dataset.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <numeric>
#include <thread>
#include <utility>

#include "lowbit/data/idx.h"
#include "lowbit/data/npy.h"
#include "lowbit/rng.h"

namespace lowbit::data {
namespace {

// Fisher-Yates over `v` in place with the swaps of shuffle_permutation: afterwards v[k] is the
// old v[perm[k]].
void permute(std::vector<int64_t>& v, uint64_t seed, int64_t epoch) {
  const std::array<uint32_t, 2> key{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
  const auto e = static_cast<uint64_t>(epoch);
  for (size_t i = v.size(); i-- > 1;) {
    const auto r =
        philox4x32(key, {static_cast<uint32_t>(i), static_cast<uint32_t>(uint64_t{i} >> 32),
                         static_cast<uint32_t>(e), static_cast<uint32_t>(e >> 32)});
    const uint64_t w = uint64_t{r[1]} << 32 | r[0];
    const auto j = static_cast<size_t>((static_cast<unsigned __int128>(w) * (i + 1)) >> 64);
    std::swap(v[i], v[j]);
  }
}

struct Source {
  std::vector<Tensor> x, y;
  Tensor sample_weight;
  int64_t n = 0;
};

enum class StageKind { kTake, kSkip, kShuffle };
struct Stage {
  StageKind kind;
  int64_t n = 0;
  uint64_t seed = 0;
};

// Batch buffers kept for reuse. An entry is free when the pool's copy is the only reference to
// each of its storages.
struct BufferPool {
  std::mutex mu;
  std::vector<Batch> entries;
};

bool is_free(const Batch& b) {
  auto free1 = [](const Tensor& t) { return !t.defined() || t.storage().use_count() == 1; };
  return std::all_of(b.x.begin(), b.x.end(), free1) && std::all_of(b.y.begin(), b.y.end(), free1) &&
         free1(b.sample_weight);
}

Tensor rows_like(const Tensor& src, int64_t rows) {
  Shape s = src.shape();
  s[0] = rows;
  return Tensor(s, src.dtype());
}

std::string describe(const Tensor& t) {
  return t.defined() ? std::string(dtype_name(t.dtype())) + " " + t.shape().str() : "undefined";
}

}  // namespace

struct Dataset::Impl {
  std::shared_ptr<const Source> src;
  std::vector<Stage> stages;  // element level, in call order
  int64_t size = 0;
  int64_t batch_size = 0;  // 0: unbatched
  bool drop_remainder = false;
  std::vector<uint64_t> batch_shuffles;  // seeds of shuffles after batch()
  std::vector<std::function<Batch(Batch)>> maps;
  size_t producer_maps = 0;  // maps[0, producer_maps) run on the prefetch thread
  int prefetch = 0;
  std::shared_ptr<BufferPool> pool = std::make_shared<BufferPool>();

  int64_t rows_per_batch() const { return batch_size ? batch_size : 1; }
  int64_t num_batches() const {
    const int64_t b = rows_per_batch();
    return drop_remainder ? size / b : (size + b - 1) / b;
  }
  // A copy for a derived dataset, with its own buffer pool.
  std::shared_ptr<Impl> derive() const {
    auto d = std::make_shared<Impl>(*this);
    d->pool = std::make_shared<BufferPool>();
    return d;
  }
};

namespace {

// What one epoch produces: the element order and the batch order.
class EpochPlan {
 public:
  EpochPlan(std::shared_ptr<const Dataset::Impl> impl, int64_t epoch) : impl_(std::move(impl)) {
    int64_t hi = impl_->src->n;
    for (const Stage& s : impl_->stages) {
      const int64_t have = materialized_ ? static_cast<int64_t>(order_.size()) : hi - lo_;
      const int64_t k = std::min(s.n, have);
      switch (s.kind) {
        case StageKind::kTake:
          if (materialized_) {
            order_.resize(k);
          } else {
            hi = lo_ + k;
          }
          break;
        case StageKind::kSkip:
          if (materialized_) {
            order_.erase(order_.begin(), order_.begin() + k);
          } else {
            lo_ += k;
          }
          break;
        case StageKind::kShuffle:
          if (!materialized_) {
            order_.resize(hi - lo_);
            std::iota(order_.begin(), order_.end(), lo_);
            materialized_ = true;
          }
          permute(order_, s.seed, epoch);
          break;
      }
    }
    n_ = materialized_ ? static_cast<int64_t>(order_.size()) : hi - lo_;
    LOWBIT_CHECK(n_ == impl_->size, "EpochPlan: ", n_, " elements vs size ", impl_->size);
    rows_ = impl_->rows_per_batch();
    num_batches_ = impl_->num_batches();
    if (!impl_->batch_shuffles.empty()) {
      batch_order_.resize(num_batches_);
      std::iota(batch_order_.begin(), batch_order_.end(), 0);
      for (uint64_t seed : impl_->batch_shuffles) permute(batch_order_, seed, epoch);
    }
  }

  int64_t num_batches() const { return num_batches_; }

  // Batch k gathered into pooled buffers, then the producer maps.
  Batch produce(int64_t k) const {
    const int64_t b = batch_order_.empty() ? k : batch_order_[k];
    const int64_t start = b * rows_;
    const int64_t rows = std::min(rows_, n_ - start);
    Batch out = acquire(rows);
    const Source& src = *impl_->src;
    for (size_t i = 0; i < src.x.size(); ++i) gather(src.x[i], out.x[i], start, rows);
    for (size_t i = 0; i < src.y.size(); ++i) gather(src.y[i], out.y[i], start, rows);
    if (src.sample_weight.defined()) gather(src.sample_weight, out.sample_weight, start, rows);
    for (size_t m = 0; m < impl_->producer_maps; ++m) out = impl_->maps[m](std::move(out));
    return out;
  }

  const Dataset::Impl& impl() const { return *impl_; }

  // Source positions of the rows of batch k.
  std::vector<int64_t> batch_elements(int64_t k) const {
    std::vector<int64_t> out;
    if (k < 0 || k >= num_batches_) return out;
    const int64_t b = batch_order_.empty() ? k : batch_order_[k];
    const int64_t start = b * rows_;
    const int64_t rows = std::min(rows_, n_ - start);
    for (int64_t r = 0; r < rows; ++r) out.push_back(element(start + r));
    return out;
  }

 private:
  int64_t element(int64_t k) const { return materialized_ ? order_[k] : lo_ + k; }

  // Rows [start, start + rows) of this epoch's order, copied in runs of consecutive sources.
  void gather(const Tensor& src, const Tensor& dst, int64_t start, int64_t rows) const {
    if (rows == 0 || src.numel() == 0) return;
    const size_t row_bytes = src.nbytes() / static_cast<size_t>(src.dim(0));
    const auto* s = static_cast<const char*>(src.raw());
    auto* d = static_cast<char*>(dst.raw());
    for (int64_t r = 0; r < rows;) {
      const int64_t first = element(start + r);
      int64_t run = 1;
      while (r + run < rows && element(start + r + run) == first + run) ++run;
      std::memcpy(d + r * row_bytes, s + first * row_bytes, run * row_bytes);
      r += run;
    }
  }

  // A free pooled batch with `rows` rows, else a fresh one, pooled while there is room (else in
  // place of a free set of another size). With prefetch, at most `prefetch` batches wait in the
  // queue and the consumer holds one when the producer acquires, so prefetch + 2 sets suffice;
  // one spare covers a consumer that keeps the previous batch a step longer (an Executor keeps
  // reshape views of its feeds in its slots until the next run).
  Batch acquire(int64_t rows) const {
    BufferPool& pool = *impl_->pool;
    std::lock_guard<std::mutex> lock(pool.mu);
    Batch* stale = nullptr;
    for (Batch& e : pool.entries) {
      if (!is_free(e)) continue;
      if (e.size() == rows) {
        // The consumer's last use happened before its reference was dropped; order our writes
        // after it.
        std::atomic_thread_fence(std::memory_order_acquire);
        return e;
      }
      stale = &e;
    }
    const Source& src = *impl_->src;
    Batch fresh;
    for (const Tensor& t : src.x) fresh.x.push_back(rows_like(t, rows));
    for (const Tensor& t : src.y) fresh.y.push_back(rows_like(t, rows));
    if (src.sample_weight.defined()) fresh.sample_weight = rows_like(src.sample_weight, rows);
    const size_t cap = static_cast<size_t>(impl_->prefetch) + 3;
    if (pool.entries.size() < cap) {
      pool.entries.push_back(fresh);
    } else if (stale) {
      *stale = fresh;  // e.g. a full-size set when the partial last batch keeps coming
    }
    return fresh;
  }

  std::shared_ptr<const Dataset::Impl> impl_;
  int64_t lo_ = 0, n_ = 0, rows_ = 1, num_batches_ = 0;
  bool materialized_ = false;
  std::vector<int64_t> order_;
  std::vector<int64_t> batch_order_;
};

}  // namespace

struct Dataset::Iterator::State {
  explicit State(std::shared_ptr<const Impl> impl, int64_t epoch) : plan(std::move(impl), epoch) {}
  ~State() {
    if (!thread.joinable()) return;
    {
      std::lock_guard<std::mutex> lock(mu);
      stop = true;
    }
    cv.notify_all();
    thread.join();
  }

  void run_producer() {
    const size_t buffer = static_cast<size_t>(plan.impl().prefetch);
    for (int64_t k = 0; k < plan.num_batches(); ++k) {
      Batch b;
      try {
        b = plan.produce(k);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu);
        error = std::current_exception();
        done = true;
        cv.notify_all();
        return;
      }
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return stop || queue.size() < buffer; });
      if (stop) return;
      queue.push_back(std::move(b));
      cv.notify_all();
    }
    std::lock_guard<std::mutex> lock(mu);
    done = true;
    cv.notify_all();
  }

  EpochPlan plan;
  int64_t next_k = 0;  // synchronous mode
  // Prefetch mode: the producer thread fills `queue` (at most `prefetch` batches).
  std::thread thread;
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Batch> queue;
  bool done = false, stop = false;
  std::exception_ptr error;
};

Dataset::Iterator::Iterator() = default;
Dataset::Iterator::Iterator(std::unique_ptr<State> state) : state_(std::move(state)) {}
Dataset::Iterator::~Iterator() = default;
Dataset::Iterator::Iterator(Iterator&&) noexcept = default;
Dataset::Iterator& Dataset::Iterator::operator=(Iterator&&) noexcept = default;

bool Dataset::Iterator::next(Batch& out) {
  out = Batch();  // drop the previous batch so that its buffers can be reused
  if (!state_) return false;
  State& s = *state_;
  const Impl& impl = s.plan.impl();
  if (s.thread.joinable()) {
    std::unique_lock<std::mutex> lock(s.mu);
    s.cv.wait(lock, [&] { return !s.queue.empty() || s.done; });
    if (s.queue.empty()) {
      if (!s.error) return false;
      std::exception_ptr e = std::exchange(s.error, nullptr);
      std::rethrow_exception(e);
    }
    out = std::move(s.queue.front());
    s.queue.pop_front();
    s.cv.notify_all();
  } else {
    if (s.next_k >= s.plan.num_batches()) return false;
    out = s.plan.produce(s.next_k++);
  }
  for (size_t m = impl.producer_maps; m < impl.maps.size(); ++m) out = impl.maps[m](std::move(out));
  return true;
}

int64_t Batch::size() const {
  auto rows = [](const Tensor& t) -> int64_t { return t.rank() >= 1 ? t.dim(0) : 0; };
  for (const Tensor& t : x)
    if (t.defined()) return rows(t);
  for (const Tensor& t : y)
    if (t.defined()) return rows(t);
  return sample_weight.defined() ? rows(sample_weight) : 0;
}

std::vector<int64_t> shuffle_permutation(int64_t n, uint64_t seed, int64_t epoch) {
  if (n < 0)
    LOWBIT_THROW(ValueError, "shuffle_permutation: argument 'n': expected >= 0 but found ", n);
  std::vector<int64_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), 0);
  permute(p, seed, epoch);
  return p;
}

namespace {

// Checks the tensors of a source; `names` label them in messages ("x[0]", "'images'").
std::shared_ptr<const Source> make_source(std::vector<Tensor> x, std::vector<Tensor> y,
                                          Tensor sample_weight, const std::string& who,
                                          const std::vector<std::string>& x_names,
                                          const std::vector<std::string>& y_names) {
  if (x.empty())
    LOWBIT_THROW(ValueError, who, ": argument 'x': expected at least one tensor but found none");
  std::string first_name;
  Shape first_shape;
  auto check = [&](const Tensor& t, const std::string& name) {
    if (!t.defined())
      LOWBIT_THROW(ValueError, who, ": argument ", name,
                   ": expected a defined tensor but found an ", "undefined one");
    if (t.rank() < 1)
      LOWBIT_THROW(ShapeError, who, ": argument ", name,
                   ": expected rank >= 1 (elements along dim 0) but found a scalar");
    if (first_name.empty()) {
      first_name = name;
      first_shape = t.shape();
    } else if (t.dim(0) != first_shape[0]) {
      LOWBIT_THROW(ShapeError, who, ": argument ", name, ": expected dim 0 = ", first_shape[0],
                   " (the number of elements, as ", first_name, " ", first_shape.str(),
                   ") but found ", t.shape().str());
    }
  };
  for (size_t i = 0; i < x.size(); ++i) check(x[i], x_names[i]);
  for (size_t i = 0; i < y.size(); ++i) check(y[i], y_names[i]);
  if (sample_weight.defined()) check(sample_weight, "'sample_weight'");
  auto src = std::make_shared<Source>();
  src->n = x[0].dim(0);
  src->x = std::move(x);
  src->y = std::move(y);
  src->sample_weight = std::move(sample_weight);
  return src;
}

std::vector<std::string> indexed_names(const char* arg, size_t n) {
  std::vector<std::string> out;
  for (size_t i = 0; i < n; ++i)
    out.push_back("'" + std::string(arg) + "[" + std::to_string(i) + "]'");
  return out;
}

}  // namespace

Dataset::Dataset() {
  auto impl = std::make_shared<Impl>();
  impl->src = std::make_shared<Source>();
  impl_ = std::move(impl);
}

Dataset::Dataset(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

Dataset Dataset::from_tensors(std::vector<Tensor> x, std::vector<Tensor> y, Tensor sample_weight) {
  const auto xn = indexed_names("x", x.size()), yn = indexed_names("y", y.size());
  auto impl = std::make_shared<Impl>();
  impl->src = make_source(std::move(x), std::move(y), std::move(sample_weight),
                          "Dataset::from_tensors", xn, yn);
  impl->size = impl->src->n;
  return Dataset(std::move(impl));
}

Dataset Dataset::from_idx(const std::string& images_path, const std::string& labels_path) {
  const Tensor images = read_idx(images_path);
  const Tensor labels = read_idx(labels_path);
  if (images.dtype() != DType::kU8 || (images.rank() != 3 && images.rank() != 4))
    LOWBIT_THROW(IoError, "Dataset::from_idx: '", images_path,
                 "': expected u8 images [N,H,W] or [N,H,W,C] but found ", describe(images));
  if (labels.rank() != 1 || !is_integer(labels.dtype()) || labels.dim(0) != images.dim(0))
    LOWBIT_THROW(IoError, "Dataset::from_idx: '", labels_path, "': expected integer labels [",
                 images.dim(0), "] (one per image) but found ", describe(labels));
  Shape s = images.shape();
  if (s.rank() == 3) s.dims().push_back(1);
  Tensor x(s, DType::kF32);
  const uint8_t* px = images.data<uint8_t>();
  float* out = x.data<float>();
  for (int64_t i = 0; i < images.numel(); ++i) out[i] = static_cast<float>(px[i]) / 255.0f;
  return from_tensors({std::move(x)}, {labels.to(DType::kS64)});
}

Dataset Dataset::from_npz(const std::string& path, const std::vector<std::string>& x_keys,
                          const std::vector<std::string>& y_keys) {
  if (x_keys.empty())
    LOWBIT_THROW(ValueError, "Dataset::from_npz: '", path,
                 "': argument 'x_keys': expected at least one key but found none");
  const std::map<std::string, Tensor> arrays = read_npz(path);
  std::vector<Tensor> x, y;
  std::vector<std::string> xn, yn;
  for (const std::string& k : x_keys) {
    x.push_back(npz_get(arrays, k, path));
    xn.push_back("'" + k + "' (in x_keys)");
  }
  for (const std::string& k : y_keys) {
    y.push_back(npz_get(arrays, k, path));
    yn.push_back("'" + k + "' (in y_keys)");
  }
  auto impl = std::make_shared<Impl>();
  impl->src = make_source(std::move(x), std::move(y), Tensor(), "Dataset::from_npz: '" + path + "'",
                          xn, yn);
  impl->size = impl->src->n;
  return Dataset(std::move(impl));
}

Dataset Dataset::from_csv(const std::string& path, const CsvOptions& o) {
  CsvTable t = read_csv(path, o);
  std::vector<Tensor> y;
  if (t.y.defined()) y.push_back(std::move(t.y));
  return from_tensors({std::move(t.x)}, std::move(y));
}

int64_t Dataset::size() const { return impl_->size; }
int64_t Dataset::batch_size() const { return impl_->batch_size; }
int64_t Dataset::num_batches() const { return impl_->num_batches(); }

Dataset Dataset::shuffle(uint64_t seed) const {
  auto d = impl_->derive();
  if (d->batch_size) {
    d->batch_shuffles.push_back(seed);
  } else {
    d->stages.push_back({StageKind::kShuffle, 0, seed});
  }
  return Dataset(std::move(d));
}

Dataset Dataset::batch(int64_t batch_size, bool drop_remainder) const {
  if (batch_size < 1)
    LOWBIT_THROW(ValueError, "Dataset::batch: argument 'batch_size': expected >= 1 but found ",
                 batch_size);
  if (impl_->batch_size)
    LOWBIT_THROW(ValueError, "Dataset::batch: the dataset is already batched (batch_size ",
                 impl_->batch_size, "); expected an unbatched dataset");
  auto d = impl_->derive();
  d->batch_size = batch_size;
  d->drop_remainder = drop_remainder;
  return Dataset(std::move(d));
}

Dataset Dataset::map(std::function<Batch(Batch)> fn) const {
  if (!fn)
    LOWBIT_THROW(ValueError,
                 "Dataset::map: argument 'fn': expected a callable but found an empty one");
  if (!impl_->batch_size)
    LOWBIT_THROW(ValueError, "Dataset::map: maps apply to batches; expected a batched dataset ",
                 "(call batch() first) but found an unbatched one");
  auto d = impl_->derive();
  d->maps.push_back(std::move(fn));
  return Dataset(std::move(d));
}

Dataset Dataset::prefetch(int buffer) const {
  if (buffer < 1)
    LOWBIT_THROW(ValueError, "Dataset::prefetch: argument 'buffer': expected >= 1 but found ",
                 buffer);
  auto d = impl_->derive();
  d->prefetch = buffer;
  d->producer_maps = d->maps.size();
  return Dataset(std::move(d));
}

Dataset Dataset::take(int64_t n) const {
  if (n < 0) LOWBIT_THROW(ValueError, "Dataset::take: argument 'n': expected >= 0 but found ", n);
  if (impl_->batch_size)
    LOWBIT_THROW(ValueError, "Dataset::take: counts elements; expected an unbatched dataset ",
                 "(call take() before batch()) but found batch_size ", impl_->batch_size);
  auto d = impl_->derive();
  d->stages.push_back({StageKind::kTake, n, 0});
  d->size = std::min(n, d->size);
  return Dataset(std::move(d));
}

Dataset Dataset::skip(int64_t n) const {
  if (n < 0) LOWBIT_THROW(ValueError, "Dataset::skip: argument 'n': expected >= 0 but found ", n);
  if (impl_->batch_size)
    LOWBIT_THROW(ValueError, "Dataset::skip: counts elements; expected an unbatched dataset ",
                 "(call skip() before batch()) but found batch_size ", impl_->batch_size);
  auto d = impl_->derive();
  d->stages.push_back({StageKind::kSkip, n, 0});
  d->size -= std::min(n, d->size);
  return Dataset(std::move(d));
}

std::vector<int64_t> Dataset::source_indices(int64_t epoch, int64_t k) const {
  if (!impl_) return {};
  return EpochPlan(impl_, epoch).batch_elements(k);
}

Dataset::Iterator Dataset::begin_epoch(int64_t epoch) const {
  auto state = std::make_unique<Iterator::State>(impl_, epoch);
  if (impl_->prefetch > 0 && state->plan.num_batches() > 0) {
    Iterator::State* s = state.get();
    s->thread = std::thread([s] { s->run_producer(); });
  }
  return Iterator(std::move(state));
}

}  // namespace lowbit::data
