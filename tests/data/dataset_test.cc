#include "lowbit/data/dataset.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "lowbit/data/idx.h"
#include "lowbit/data/npy.h"
#include "lowbit/rng.h"
#include "testing/op_testing.h"

namespace lowbit::data {
namespace {

namespace fs = std::filesystem;
using lowbit::testing::expect_throws_with;
using lowbit::testing::tensors_equal;

// n elements: x = f32 [n,2] with row i = {i, 100 + i}, y = s64 [n] = 10 i, w = f32 [n] = i / 2.
Dataset numbered(int64_t n, bool with_weights = true) {
  Tensor x({n, 2}, DType::kF32), y({n}, DType::kS64), w({n}, DType::kF32);
  for (int64_t i = 0; i < n; ++i) {
    x.data<float>()[2 * i] = static_cast<float>(i);
    x.data<float>()[2 * i + 1] = static_cast<float>(100 + i);
    y.data<int64_t>()[i] = 10 * i;
    w.data<float>()[i] = static_cast<float>(i) / 2;
  }
  return Dataset::from_tensors({x}, {y}, with_weights ? w : Tensor());
}

// The element ids of one batch of `numbered`, after checking that x, y and w agree.
std::vector<int64_t> ids(const Batch& b) {
  std::vector<int64_t> out;
  EXPECT_EQ(b.x.size(), 1u);
  EXPECT_EQ(b.y.size(), 1u);
  for (int64_t r = 0; r < b.size(); ++r) {
    const auto id = static_cast<int64_t>(b.x[0].at<float>({r, 0}));
    EXPECT_EQ(b.x[0].at<float>({r, 1}), static_cast<float>(100 + id));
    EXPECT_EQ(b.y[0].at<int64_t>({r}), 10 * id);
    if (b.sample_weight.defined()) {
      EXPECT_EQ(b.sample_weight.at<float>({r}), id / 2.0f);
    }
    out.push_back(id);
  }
  return out;
}

// Every batch of one epoch, as element ids.
std::vector<std::vector<int64_t>> epoch_ids(const Dataset& ds, int64_t epoch = 0) {
  std::vector<std::vector<int64_t>> out;
  Dataset::Iterator it = ds.begin_epoch(epoch);
  for (Batch b; it.next(b);) out.push_back(ids(b));
  EXPECT_EQ(static_cast<int64_t>(out.size()), ds.num_batches());
  return out;
}

std::vector<int64_t> flat(const std::vector<std::vector<int64_t>>& batches) {
  std::vector<int64_t> out;
  for (const auto& b : batches) out.insert(out.end(), b.begin(), b.end());
  return out;
}

std::vector<int64_t> iota(int64_t lo, int64_t hi) {
  std::vector<int64_t> v(hi - lo);
  std::iota(v.begin(), v.end(), lo);
  return v;
}

using Ids = std::vector<std::vector<int64_t>>;

// ---- from_tensors, batch ----

TEST(Dataset, FromTensorsChecksShapes) {
  EXPECT_EQ(numbered(10).size(), 10);
  expect_throws_with<ShapeError>(
      [] {
        Dataset::from_tensors({Tensor::zeros({4, 3})}, {Tensor::zeros({4}), Tensor::zeros({5})});
      },
      "Dataset::from_tensors: argument 'y[1]': expected dim 0 = 4 (the number of elements, as "
      "'x[0]' [4,3]) but found [5]");
  expect_throws_with<ShapeError>(
      [] {
        Dataset::from_tensors({Tensor::zeros({4, 3})}, {}, Tensor::zeros({3}));
      },
      "argument 'sample_weight': expected dim 0 = 4");
  expect_throws_with<ShapeError>([] { Dataset::from_tensors({Tensor::scalar(1)}); },
                                 "argument 'x[0]': expected rank >= 1");
  expect_throws_with<ValueError>([] { Dataset::from_tensors({}); },
                                 "argument 'x': expected at least one tensor but found none");
  expect_throws_with<ValueError>(
      [] {
        Dataset::from_tensors({Tensor::zeros({2}), Tensor()});
      },
      "argument 'x[1]': expected a defined tensor");
}

TEST(Dataset, BatchInOrderWithPartialLastBatch) {
  Dataset ds = numbered(10).batch(4);
  EXPECT_EQ(ds.size(), 10);
  EXPECT_EQ(ds.batch_size(), 4);
  EXPECT_EQ(ds.num_batches(), 3);
  EXPECT_EQ(epoch_ids(ds), (Ids{{0, 1, 2, 3}, {4, 5, 6, 7}, {8, 9}}));
  // Shapes: every tensor gets its rows, the rest of the shape is kept.
  Dataset::Iterator it = ds.begin_epoch(0);
  Batch b;
  ASSERT_TRUE(it.next(b));
  EXPECT_EQ(b.x[0].shape(), Shape({4, 2}));
  EXPECT_EQ(b.y[0].shape(), Shape({4}));
  EXPECT_EQ(b.sample_weight.shape(), Shape({4}));
  EXPECT_EQ(b.size(), 4);
  ASSERT_TRUE(it.next(b));
  ASSERT_TRUE(it.next(b));
  EXPECT_EQ(b.x[0].shape(), Shape({2, 2}));
  EXPECT_FALSE(it.next(b));
  EXPECT_TRUE(b.x.empty());  // cleared at the end
  EXPECT_FALSE(it.next(b));
}

TEST(Dataset, DropRemainder) {
  EXPECT_EQ(epoch_ids(numbered(10).batch(4, true)), (Ids{{0, 1, 2, 3}, {4, 5, 6, 7}}));
  EXPECT_EQ(numbered(8).batch(4, true).num_batches(), 2);
  EXPECT_EQ(numbered(3).batch(4, true).num_batches(), 0);
  EXPECT_TRUE(epoch_ids(numbered(3).batch(4, true)).empty());
}

TEST(Dataset, UnbatchedYieldsOneElementPerBatch) {
  Dataset ds = numbered(3, /*with_weights=*/false);
  EXPECT_EQ(ds.batch_size(), 0);
  EXPECT_EQ(ds.num_batches(), 3);
  EXPECT_EQ(epoch_ids(ds), (Ids{{0}, {1}, {2}}));
  Dataset::Iterator it = ds.begin_epoch(0);
  Batch b;
  ASSERT_TRUE(it.next(b));
  EXPECT_EQ(b.x[0].shape(), Shape({1, 2}));
  EXPECT_FALSE(b.sample_weight.defined());
}

TEST(Dataset, BatchArgumentErrors) {
  expect_throws_with<ValueError>([] { numbered(4).batch(0); },
                                 "argument 'batch_size': expected >= 1 but found 0");
  expect_throws_with<ValueError>([] { numbered(4).batch(2).batch(2); }, "already batched");
  expect_throws_with<ValueError>([] { numbered(4).prefetch(0); },
                                 "argument 'buffer': expected >= 1 but found 0");
}

// ---- shuffle ----

// The algorithm documented in dataset.h, written out independently.
std::vector<int64_t> documented_permutation(int64_t n, uint64_t seed, uint64_t epoch) {
  std::vector<int64_t> p = iota(0, n);
  for (int64_t i = n - 1; i >= 1; --i) {
    auto r = philox4x32({static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)},
                        {static_cast<uint32_t>(i), 0, static_cast<uint32_t>(epoch),
                         static_cast<uint32_t>(epoch >> 32)});
    const uint64_t w = uint64_t{r[1]} << 32 | r[0];
    const auto j = static_cast<int64_t>(static_cast<unsigned __int128>(w) * (i + 1) >> 64);
    std::swap(p[i], p[j]);
  }
  return p;
}

TEST(Dataset, ShuffleIsAPermutationPerEpochDeterministicPerSeed) {
  const int64_t n = 100;
  Dataset ds = numbered(n).shuffle(42).batch(7);
  EXPECT_EQ(ds.num_batches(), 15);
  const std::vector<int64_t> e0 = flat(epoch_ids(ds, 0));
  const std::vector<int64_t> e1 = flat(epoch_ids(ds, 1));
  // Every element exactly once.
  for (const auto& e : {e0, e1}) {
    std::vector<int64_t> sorted = e;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(sorted, iota(0, n));
  }
  EXPECT_NE(e0, iota(0, n));
  EXPECT_NE(e0, e1);
  // Same seed and epoch: the same order (also from a separately built dataset).
  EXPECT_EQ(flat(epoch_ids(ds, 0)), e0);
  EXPECT_EQ(flat(epoch_ids(numbered(n).shuffle(42).batch(7), 1)), e1);
  EXPECT_NE(flat(epoch_ids(numbered(n).shuffle(43).batch(7), 0)), e0);
  // It is the documented permutation.
  EXPECT_EQ(e0, shuffle_permutation(n, 42, 0));
  EXPECT_EQ(e1, shuffle_permutation(n, 42, 1));
  EXPECT_EQ(shuffle_permutation(n, 42, 0), documented_permutation(n, 42, 0));
  EXPECT_EQ(shuffle_permutation(1000, uint64_t{1} << 40 | 5, 7),
            documented_permutation(1000, uint64_t{1} << 40 | 5, 7));
  EXPECT_TRUE(shuffle_permutation(0, 1, 0).empty());
  EXPECT_EQ(shuffle_permutation(1, 1, 0), std::vector<int64_t>{0});
}

TEST(Dataset, ShuffleAfterBatchShufflesWholeBatches) {
  Dataset ds = numbered(10).batch(3).shuffle(5);
  const Ids batches = epoch_ids(ds, 0);
  const std::vector<int64_t> order = shuffle_permutation(4, 5, 0);
  const Ids in_order = {{0, 1, 2}, {3, 4, 5}, {6, 7, 8}, {9}};
  ASSERT_EQ(batches.size(), 4u);
  for (size_t k = 0; k < 4; ++k) EXPECT_EQ(batches[k], in_order[order[k]]) << k;
  EXPECT_NE(epoch_ids(ds, 0), epoch_ids(ds, 3));
}

// ---- take / skip ----

TEST(Dataset, TakeAndSkipCountElements) {
  Dataset ds = numbered(10);
  EXPECT_EQ(flat(epoch_ids(ds.take(7).batch(3))), iota(0, 7));
  EXPECT_EQ(flat(epoch_ids(ds.skip(7).batch(3))), iota(7, 10));
  EXPECT_EQ(ds.take(7).size(), 7);
  EXPECT_EQ(ds.skip(7).size(), 3);
  EXPECT_EQ(ds.take(20).size(), 10);
  EXPECT_EQ(ds.skip(20).size(), 0);
  EXPECT_EQ(flat(epoch_ids(ds.skip(2).take(5).skip(1))), iota(3, 7));
  // Keras validation_split = 0.3: the last 30% before shuffling.
  const int64_t n_val = 3;
  Dataset val = ds.skip(ds.size() - n_val).batch(2);
  Dataset train = ds.take(ds.size() - n_val).shuffle(1).batch(2);
  EXPECT_EQ(flat(epoch_ids(val)), iota(7, 10));
  std::vector<int64_t> t = flat(epoch_ids(train, 4));
  std::sort(t.begin(), t.end());
  EXPECT_EQ(t, iota(0, 7));
  expect_throws_with<ValueError>([&] { ds.take(-1); }, "argument 'n': expected >= 0");
  expect_throws_with<ValueError>([&] { ds.batch(2).skip(1); },
                                 "Dataset::skip: counts elements; expected an unbatched dataset");
}

TEST(Dataset, TakeAfterShuffleTakesFromThePermutation) {
  Dataset ds = numbered(10);
  const std::vector<int64_t> p = shuffle_permutation(10, 9, 2);
  EXPECT_EQ(flat(epoch_ids(ds.shuffle(9).take(4), 2)),
            std::vector<int64_t>(p.begin(), p.begin() + 4));
  // take then shuffle: a permutation of the first 4 only.
  const std::vector<int64_t> q = shuffle_permutation(4, 9, 2);
  EXPECT_EQ(flat(epoch_ids(ds.take(4).shuffle(9), 2)), q);
  // skip then shuffle: positions map through the skip.
  std::vector<int64_t> want;
  for (int64_t k : shuffle_permutation(6, 9, 2)) want.push_back(4 + k);
  EXPECT_EQ(flat(epoch_ids(ds.skip(4).shuffle(9).batch(4), 2)), want);
}

// ---- map, prefetch ----

TEST(Dataset, MapAppliesPerBatchAfterBatching) {
  auto sizes = std::make_shared<std::vector<int64_t>>();
  Dataset ds = numbered(5).batch(2).map([sizes](Batch b) {
    sizes->push_back(b.size());
    Tensor twice = b.x[0].clone();
    for (float& v : twice.span<float>()) v *= 2;
    b.x.push_back(twice);
    return b;
  });
  Dataset::Iterator it = ds.begin_epoch(0);
  int64_t seen = 0;
  for (Batch b; it.next(b);) {
    ASSERT_EQ(b.x.size(), 2u);
    for (int64_t r = 0; r < b.size(); ++r)
      EXPECT_EQ(b.x[1].at<float>({r, 1}), 2 * b.x[0].at<float>({r, 1}));
    seen += b.size();
  }
  EXPECT_EQ(seen, 5);
  EXPECT_EQ(*sizes, (std::vector<int64_t>{2, 2, 1}));
  expect_throws_with<ValueError>([] { numbered(4).map([](Batch b) { return b; }); },
                                 "maps apply to batches; expected a batched dataset");
  expect_throws_with<ValueError>([] { numbered(4).batch(2).map(nullptr); }, "expected a callable");
}

// Adds 1000 to every y, so the test can tell mapped from unmapped batches.
Batch add_1000(Batch b) {
  Tensor y = b.y[0].clone();
  for (int64_t& v : y.span<int64_t>()) v += 1000;
  b.y[0] = y;
  return b;
}

TEST(Dataset, PrefetchGivesTheSameBatches) {
  Dataset base = numbered(53).shuffle(3).batch(5).map(add_1000);
  for (int buffer : {1, 2, 4}) {
    Dataset pre = base.prefetch(buffer);
    for (int64_t epoch : {0, 1}) {
      Dataset::Iterator a = base.begin_epoch(epoch), b = pre.begin_epoch(epoch);
      Batch ba, bb;
      int64_t count = 0;
      while (a.next(ba)) {
        ASSERT_TRUE(b.next(bb));
        EXPECT_TRUE(tensors_equal(bb.x[0], ba.x[0]));
        EXPECT_TRUE(tensors_equal(bb.y[0], ba.y[0]));
        EXPECT_TRUE(tensors_equal(bb.sample_weight, ba.sample_weight));
        EXPECT_EQ(bb.y[0].at<int64_t>({0}) % 10, 0);
        EXPECT_GE(bb.y[0].at<int64_t>({0}), 1000);
        ++count;
      }
      EXPECT_FALSE(b.next(bb));
      EXPECT_EQ(count, 11);
    }
  }
  // Maps added after prefetch() run on the consumer's side; all of them still run once.
  Dataset twice = numbered(6).batch(3).map(add_1000).prefetch().map(add_1000);
  Dataset::Iterator it = twice.begin_epoch(0);
  Batch b;
  ASSERT_TRUE(it.next(b));
  EXPECT_EQ(b.y[0].at<int64_t>({1}), 2010);
}

TEST(Dataset, PrefetchedBatchesStayIntactWhileHeld) {
  Dataset ds = numbered(40).shuffle(8).batch(4).prefetch(2);
  std::vector<Batch> held;
  Dataset::Iterator it = ds.begin_epoch(0);
  for (Batch b; it.next(b);) held.push_back(b);
  ASSERT_EQ(held.size(), 10u);
  std::vector<int64_t> all;
  for (const Batch& b : held) {
    const auto v = ids(b);
    all.insert(all.end(), v.begin(), v.end());
  }
  EXPECT_EQ(all, shuffle_permutation(40, 8, 0));
}

TEST(Dataset, ErrorsOfTheProducerReachTheConsumerInOrder) {
  for (int prefetch : {0, 2}) {
    SCOPED_TRACE(prefetch);
    Dataset ds = numbered(10).batch(2).map([](Batch b) {
      if (b.x[0].at<float>({0, 0}) == 6) throw ValueError("map: batch starting at 6 is bad");
      return b;
    });
    if (prefetch) ds = ds.prefetch(prefetch);
    Dataset::Iterator it = ds.begin_epoch(0);
    Batch b;
    for (int k = 0; k < 3; ++k) ASSERT_TRUE(it.next(b)) << k;
    expect_throws_with<ValueError>([&] { it.next(b); }, "batch starting at 6 is bad");
  }
}

TEST(Dataset, AbandonedPrefetchIteratorStopsItsThread) {
  Dataset ds = numbered(1000).batch(1).prefetch(3);
  for (int i = 0; i < 20; ++i) {
    Dataset::Iterator it = ds.begin_epoch(i);
    Batch b;
    ASSERT_TRUE(it.next(b));
    EXPECT_EQ(ids(b), std::vector<int64_t>{0});
  }  // destructors join the producer, blocked on a full queue
  Dataset::Iterator moved;
  moved = ds.begin_epoch(0);
  Batch b;
  EXPECT_TRUE(moved.next(b));
}

// ---- buffer reuse ----

// The distinct storages handed out for x over `epochs` epochs, tracked without holding them.
size_t distinct_x_storages(const Dataset& ds, int epochs, bool hold_previous) {
  std::vector<std::weak_ptr<Storage>> seen;
  for (int e = 0; e < epochs; ++e) {
    Dataset::Iterator it = ds.begin_epoch(e);
    Batch b, previous;
    while (it.next(b)) {
      std::weak_ptr<Storage> w = b.x[0].storage();
      bool known = false;
      for (const auto& s : seen) known = known || (!s.owner_before(w) && !w.owner_before(s));
      if (!known) seen.push_back(w);
      if (hold_previous) previous = b;
    }
  }
  return seen.size();
}

TEST(Dataset, BatchBuffersAreReusedWhenReleased) {
  // 16 full batches per epoch, 3 epochs: one buffer set when the consumer lets go of each batch.
  Dataset ds = numbered(64).shuffle(1).batch(4);
  EXPECT_EQ(distinct_x_storages(ds, 3, false), 1u);
  // Holding the previous batch: two sets alternate.
  EXPECT_EQ(distinct_x_storages(ds, 3, true), 2u);
  // A partial last batch takes one more.
  EXPECT_EQ(distinct_x_storages(numbered(62).batch(4), 3, false), 2u);
  // Prefetch: a ring of at most buffer + 2 sets in use (the pool has room for buffer + 3).
  EXPECT_LE(distinct_x_storages(ds.prefetch(2), 3, false), 4u);
}

TEST(Dataset, HeldBatchesAreNeverOverwritten) {
  Dataset ds = numbered(12).batch(3);
  Dataset::Iterator it = ds.begin_epoch(0);
  Batch first, b;
  ASSERT_TRUE(it.next(first));
  Tensor view = first.x[0].reshape({-1});  // a view keeps the storage too
  first = Batch();
  while (it.next(b)) {
  }
  EXPECT_EQ(view.to_vector<float>(), (std::vector<float>{0, 100, 1, 101, 2, 102}));
}

// ---- empty datasets ----

TEST(Dataset, EmptyDatasetsIterateToNothing) {
  Dataset none;
  EXPECT_EQ(none.size(), 0);
  EXPECT_EQ(none.num_batches(), 0);
  Batch b;
  EXPECT_FALSE(none.begin_epoch(0).next(b));
  Dataset zero =
      Dataset::from_tensors({Tensor({0, 28, 28, 1}, DType::kF32)}, {Tensor({0}, DType::kS64)});
  EXPECT_EQ(zero.size(), 0);
  for (const Dataset& ds :
       {zero, zero.shuffle(1).batch(8).map(add_1000).prefetch(), zero.batch(8, true),
        numbered(5).skip(5).shuffle(2).batch(2), numbered(5).take(0).prefetch()}) {
    EXPECT_EQ(ds.size(), 0);
    EXPECT_EQ(ds.num_batches(), 0);
    Dataset::Iterator it = ds.begin_epoch(3);
    EXPECT_FALSE(it.next(b));
    EXPECT_FALSE(it.next(b));
  }
  Dataset::Iterator idle;
  EXPECT_FALSE(idle.next(b));
}

// ---- loaders ----

std::string shared_data() { return testing::shared_dir() + "/data"; }

TEST(DatasetLoaders, FromIdxRealMnistSplit) {
  Dataset ds = Dataset::from_idx(shared_data() + "/train-images-idx3-ubyte",
                                 shared_data() + "/train-labels-idx1-ubyte");
  EXPECT_EQ(ds.size(), 8000);
  MnistSplit ref = load_mnist(shared_data(), /*train=*/true);
  Dataset batched = ds.batch(64);
  EXPECT_EQ(batched.num_batches(), 125);
  Dataset::Iterator it = batched.begin_epoch(0);
  Batch b;
  int64_t k = 0;
  std::array<int64_t, 10> hist{};
  while (it.next(b)) {
    ASSERT_EQ(b.x[0].shape(), Shape({64, 28, 28, 1}));
    ASSERT_EQ(b.y[0].dtype(), DType::kS64);
    const float* want = ref.images.data<float>() + k * 64 * 784;
    ASSERT_TRUE(std::equal(b.x[0].data<float>(), b.x[0].data<float>() + 64 * 784, want)) << k;
    for (int64_t r = 0; r < 64; ++r) {
      ASSERT_EQ(b.y[0].at<int64_t>({r}), ref.labels.at<int64_t>({k * 64 + r}));
      ++hist[b.y[0].at<int64_t>({r})];
    }
    ++k;
  }
  EXPECT_EQ(k, 125);
  // The class counts of shared/data/README.md.
  EXPECT_EQ(hist, (std::array<int64_t, 10>{820, 909, 808, 831, 769, 685, 799, 838, 764, 777}));
}

class DatasetFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ =
        fs::temp_directory_path() / ("lowbit_ds_" + std::to_string(getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  fs::path dir_;
};

TEST_F(DatasetFiles, FromIdxSmallFilesAndErrors) {
  Tensor images = Tensor::from_vector<uint8_t>({0, 51, 255, 102, 0, 0, 0, 0}, {2, 2, 2});
  write_idx(path("img"), images);
  write_idx(path("lab"), Tensor::from_vector<uint8_t>({7, 3}, {2}));
  Dataset ds = Dataset::from_idx(path("img"), path("lab"));
  Batch b;
  Dataset::Iterator it = ds.batch(2).begin_epoch(0);
  ASSERT_TRUE(it.next(b));
  EXPECT_TRUE(tensors_equal(
      b.x[0], Tensor::from_vector<float>({0, 0.2f, 1, 0.4f, 0, 0, 0, 0}, {2, 2, 2, 1})));
  EXPECT_TRUE(tensors_equal(b.y[0], Tensor::from_vector<int64_t>({7, 3}, {2})));

  write_idx(path("lab3"), Tensor::from_vector<uint8_t>({1, 2, 3}, {3}));
  expect_throws_with<IoError>([&] { Dataset::from_idx(path("img"), path("lab3")); },
                              "expected integer labels [2] (one per image) but found u8 [3]");
  write_idx(path("fimg"), Tensor::zeros({2, 2, 2}));
  expect_throws_with<IoError>([&] { Dataset::from_idx(path("fimg"), path("lab")); },
                              "expected u8 images [N,H,W] or [N,H,W,C] but found f32 [2,2,2]");
  expect_throws_with<IoError>([&] { Dataset::from_idx(path("nope"), path("lab")); }, "cannot open");
}

TEST_F(DatasetFiles, FromNpz) {
  const std::string fx =
      (fs::path(__FILE__).parent_path() / "fixtures" / "xyw_deflated.npz").string();
  Dataset ds = Dataset::from_npz(fx, {"x"}, {"y", "w"});
  EXPECT_EQ(ds.size(), 4);
  Batch b;
  Dataset::Iterator it = ds.skip(1).batch(2).begin_epoch(0);
  ASSERT_TRUE(it.next(b));
  ASSERT_EQ(b.x[0].shape(), Shape({2, 3, 2}));
  EXPECT_EQ(b.x[0].at<float>({0, 0, 0}), 6 / 10.0f);
  EXPECT_TRUE(tensors_equal(b.y[0], Tensor::from_vector<int64_t>({1, 4}, {2})));
  EXPECT_TRUE(tensors_equal(b.y[1], Tensor::from_vector<float>({0.5f, 2}, {2})));

  expect_throws_with<IoError>([&] { Dataset::from_npz(fx, {"x"}, {"labels"}); },
                              "no array 'labels'; available: 'w', 'x', 'y'");
  write_npz(path("bad.npz"), {{"a", Tensor::zeros({3, 2})}, {"b", Tensor::zeros({2})}});
  expect_throws_with<ShapeError>(
      [&] { Dataset::from_npz(path("bad.npz"), {"a"}, {"b"}); },
      "argument 'b' (in y_keys): expected dim 0 = 3 (the number of elements, as 'a' (in x_keys) "
      "[3,2]) but found [2]");
  expect_throws_with<ValueError>([&] { Dataset::from_npz(path("bad.npz"), {}, {"b"}); },
                                 "argument 'x_keys': expected at least one key");
}

TEST_F(DatasetFiles, FromCsv) {
  {
    std::ofstream out(path("t.csv"));
    out << "f1,label,f2\n1,0,2\n3,1,4\n5,2,6\n";
  }
  CsvOptions o;
  o.label_columns = {"label"};
  Dataset ds = Dataset::from_csv(path("t.csv"), o);
  EXPECT_EQ(ds.size(), 3);
  Batch b;
  Dataset::Iterator it = ds.batch(3).begin_epoch(0);
  ASSERT_TRUE(it.next(b));
  EXPECT_TRUE(tensors_equal(b.x[0], Tensor::from_vector<float>({1, 2, 3, 4, 5, 6}, {3, 2})));
  EXPECT_TRUE(tensors_equal(b.y[0], Tensor::from_vector<int64_t>({0, 1, 2}, {3})));
  EXPECT_FALSE(b.sample_weight.defined());
  Dataset unlabelled = Dataset::from_csv(path("t.csv"), CsvOptions{});
  it = unlabelled.batch(3).begin_epoch(0);
  ASSERT_TRUE(it.next(b));
  EXPECT_EQ(b.x[0].shape(), Shape({3, 3}));
  EXPECT_TRUE(b.y.empty());
}

}  // namespace
}  // namespace lowbit::data
