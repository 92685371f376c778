// Dataset: the input pipeline of training — a source of elements (rows along dim 0 of a few
// tensors), then take/skip, shuffling, batching, per-batch maps and prefetching, iterated one
// epoch at a time. Like tf.data, but over in-memory tensors and with a fixed stage order.
//
//   Dataset train = Dataset::from_idx("data/train-images-idx3-ubyte",
//                                     "data/train-labels-idx1-ubyte");   // x f32 [N,28,28,1]
//   // Keras' validation_split=0.1: the last 10% before shuffling.
//   const int64_t n_val = train.size() / 10;
//   Dataset val = train.skip(train.size() - n_val).batch(256);
//   train = train.take(train.size() - n_val).shuffle(/*seed=*/42).batch(64).prefetch();
//   for (int64_t epoch = 0; epoch < 5; ++epoch) {
//     Dataset::Iterator it = train.begin_epoch(epoch);
//     for (Batch b; it.next(b);) { ... b.x[0] is f32 [64,28,28,1], b.y[0] s64 [64] ... }
//   }
//
// Pipeline semantics. A Dataset is an immutable value; every call returns a new one sharing the
// source tensors (they are not copied: writing into them later changes what the dataset yields).
//   - Element stages (from the source to batch()): take(n), skip(n) and shuffle(seed), applied in
//     the order called. shuffle().take(n) takes the first n of each epoch's permutation, as in
//     tf.data; take(n).shuffle() permutes a fixed subset.
//   - batch(size, drop_remainder) groups consecutive elements: ceil(n / size) batches, the last
//     one smaller, or floor(n / size) with drop_remainder. An unbatched dataset yields one
//     element per batch (dim 0 of size 1).
//   - After batch(): shuffle(seed) shuffles the order of whole batches (tf.data semantics);
//     map(fn) transforms each batch; take/skip/batch throw ValueError (they count elements).
//   - map() before batch() throws ValueError: maps see batches.
//   - prefetch(buffer) runs the production of batches (gather, and the maps added before it) on
//     a background thread, up to `buffer` batches ahead; maps added after prefetch() run on the
//     consumer's thread in next(). An exception thrown while producing (e.g. by a map) reaches
//     the consumer from next(), after the batches produced before it.
//
// Shuffling is deterministic: epoch e of shuffle(seed) uses shuffle_permutation(n, seed, e)
// (below), so a run is reproducible whatever the thread count or prefetching.
//
// Memory: a batch is gathered into buffers that the dataset keeps and reuses once no Tensor
// refers to them any more (Storage use_count), so a steady training loop touches no fresh memory
// per batch. Holding a batch's tensors (copies, reshape() views) keeps its buffers from being
// reused — that is always safe — but raw pointers into a batch are only valid until the next
// call to next(); clone() what you want to keep.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "lowbit/data/csv.h"
#include "lowbit/tensor.h"

namespace lowbit::data {

// One batch: model inputs, targets, optional per-sample weights (undefined if none).
struct Batch {
  std::vector<Tensor> x;
  std::vector<Tensor> y;
  Tensor sample_weight;
  // Dim 0 of the first defined tensor among x, y, sample_weight (0 if there is none).
  int64_t size() const;
};

// The permutation of shuffle(seed) at `epoch` over n elements: Fisher-Yates from the back, step
// i = n-1, ..., 1 swaps positions i and j = floor(r * (i + 1) / 2^64), where r is the 64-bit
// word (w1 << 32 | w0) of philox4x32(key = {seed_lo, seed_hi},
// counter = {i_lo, i_hi, epoch_lo, epoch_hi}). Entry k is the source position of element k.
std::vector<int64_t> shuffle_permutation(int64_t n, uint64_t seed, int64_t epoch);

class Dataset {
 public:
  class Iterator;

  // An empty dataset (no tensors, size 0).
  Dataset();

  // Elements are rows along dim 0 of every tensor: x[i], y[i] and sample_weight all need rank
  // >= 1 and the same dim 0 (ShapeError naming the argument otherwise); at least one x tensor
  // (ValueError). The tensors are shared, not copied.
  static Dataset from_tensors(std::vector<Tensor> x, std::vector<Tensor> y = {},
                              Tensor sample_weight = Tensor());
  // An IDX image file and label file (read_idx): u8 images [N,H,W] become f32 pixel / 255 with
  // a trailing channel dim [N,H,W,1] (u8 [N,H,W,C] stays 4-D); labels (u8, s8 or s32 [N]) become
  // s64. Throws IoError as read_idx does, and for images that are not u8 of rank 3 or 4, labels
  // that are not an integer vector, or different counts.
  static Dataset from_idx(const std::string& images, const std::string& labels);
  // Arrays of a .npz archive (read_npz), in the dtype stored; x from x_keys, y from y_keys.
  // Throws IoError naming the archive and listing the available keys for a missing key.
  static Dataset from_npz(const std::string& path, const std::vector<std::string>& x_keys,
                          const std::vector<std::string>& y_keys);
  // read_csv: x = {f32 [rows, features]}, y = {the label columns} (none if no label_columns).
  static Dataset from_csv(const std::string& path, const CsvOptions& o);

  int64_t size() const;         // number of elements (after take/skip)
  int64_t batch_size() const;   // as given to batch(); 0 if unbatched
  int64_t num_batches() const;  // batches per epoch

  // A new permutation every epoch (see shuffle_permutation); before batch() it permutes
  // elements, after batch() the order of whole batches.
  Dataset shuffle(uint64_t seed) const;
  // Throws ValueError for batch_size < 1 or if already batched.
  Dataset batch(int64_t batch_size, bool drop_remainder = false) const;
  // Applied to every batch, after batching (ValueError if not batched yet, or fn is empty).
  Dataset map(std::function<Batch(Batch)> fn) const;
  // Prepares up to `buffer` batches ahead on a background thread (ValueError if buffer < 1).
  Dataset prefetch(int buffer = 2) const;
  // The first n / all but the first n elements (n >= 0; more than size() takes all / leaves
  // none). Before batch() only (ValueError after). Keras' validation_split takes the LAST
  // fraction before shuffling: val = ds.skip(size - n_val), train = ds.take(size - n_val).
  Dataset take(int64_t n) const;
  Dataset skip(int64_t n) const;

  // One pass over the dataset; `epoch` selects the shuffle permutations. An empty dataset gives
  // an iterator whose first next() returns false.
  class Iterator {
   public:
    Iterator();  // yields nothing
    ~Iterator();
    Iterator(Iterator&&) noexcept;
    Iterator& operator=(Iterator&&) noexcept;

    // Replaces `out` with the next batch and returns true, or returns false (out cleared) at
    // the end of the epoch. Rethrows an exception of the producing thread (prefetch).
    bool next(Batch& out);

    struct State;

   private:
    friend class Dataset;
    explicit Iterator(std::unique_ptr<State> state);
    std::unique_ptr<State> state_;
  };
  Iterator begin_epoch(int64_t epoch) const;
  // Where the rows of batch k of `epoch` (as begin_epoch(epoch) yields it) come from: their
  // positions in the source data (the tensors or file the dataset was made from, before any
  // take/skip/shuffle), as the map() functions receive them. Empty for k out of range. Meant
  // for error messages ("sample 1234 of the data"); it recomputes the epoch's order.
  std::vector<int64_t> source_indices(int64_t epoch, int64_t k) const;

  struct Impl;

 private:
  explicit Dataset(std::shared_ptr<const Impl> impl);
  std::shared_ptr<const Impl> impl_;
};

}  // namespace lowbit::data
