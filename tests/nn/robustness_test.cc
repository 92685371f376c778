// Issue 14: nothing non-finite gets into the weights. Garbage (NaN, Inf) at masked timesteps
// must not reach the arithmetic of a recurrent layer or of a masked loss, in either direction,
// and a training step whose updates are non-finite is refused whatever the cause, so that
// "the weights keep their last finite values" holds.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <sstream>

#include "lowbit/data/dataset.h"
#include "lowbit/nn/layers.h"
#include "lowbit/nn/losses.h"
#include "lowbit/nn/model.h"
#include "lowbit/nn/optimizers.h"
#include "lowbit/ops.h"

namespace lowbit::nn {
namespace {

constexpr int64_t kBatch = 8, kSteps = 5, kFeatures = 3;
const float kNaN = std::numeric_limits<float>::quiet_NaN();
const float kInf = std::numeric_limits<float>::infinity();

// Sequence lengths 1..5 (row b has b % 5 + 1 valid steps); padded steps hold `pad`.
Tensor padded_inputs(float pad) {
  Tensor x(Shape{kBatch, kSteps, kFeatures}, DType::kF32);
  float* p = x.data<float>();
  for (int64_t b = 0; b < kBatch; ++b)
    for (int64_t t = 0; t < kSteps; ++t)
      for (int64_t f = 0; f < kFeatures; ++f)
        p[(b * kSteps + t) * kFeatures + f] =
            t < b % kSteps + 1 ? 0.1f * static_cast<float>(b - t + f) : pad;
  return x;
}

Tensor lengths_mask() {
  Tensor len(Shape{kBatch}, DType::kS32);
  for (int64_t b = 0; b < kBatch; ++b)
    len.data<int32_t>()[b] = static_cast<int32_t>(b % kSteps + 1);
  return ops::sequence_mask(len, kSteps);
}

Tensor targets(int64_t rank) {
  Tensor y(rank == 2 ? Shape{kBatch, 1} : Shape{kBatch, kSteps, 1}, DType::kF32);
  for (int64_t i = 0; i < y.numel(); ++i) y.data<float>()[i] = 0.05f * static_cast<float>(i % 7);
  return y;
}

int64_t non_finite(Model& m) {
  int64_t n = 0;
  for (auto& [name, w] : m.named_weights())
    for (int64_t i = 0; i < w->value.numel(); ++i) n += !std::isfinite(w->value.data<float>()[i]);
  return n;
}

std::string layer_name_of(const std::string& weight) { return weight.substr(0, weight.rfind('/')); }

std::vector<Tensor> weights_of(Model& m) {
  std::vector<Tensor> out;
  for (auto& [name, w] : m.named_weights()) out.push_back(w->value.clone());
  return out;
}

// x [B, T, F] and its mask [B, T] -> rnn -> Dense(1) (per step with return_sequences).
std::shared_ptr<Model> rnn_model(const std::string& cell, bool return_sequences) {
  reset_layer_names();
  set_random_seed(7);
  KTensor x = Input({kSteps, kFeatures}), m = Input({kSteps}, DType::kBool);
  LayerPtr rnn = cell == "GRU"    ? GRU(4, {.return_sequences = return_sequences})
                 : cell == "LSTM" ? LSTM(4, {.return_sequences = return_sequences})
                                  : SimpleRNN(4, {.return_sequences = return_sequences});
  KTensor h = (*rnn)(x, {.masks = {m}});
  auto model = Model::create({x, m}, {(*Dense(1))(h)});
  model->compile({.optimizer = SGD({.learning_rate = 0.1}), .loss = MeanSquaredError()});
  return model;
}

History fit_on(Model& model, const Tensor& x, const Tensor& y) {
  std::ostringstream quiet;
  return model.fit(data::Dataset::from_tensors({x, lengths_mask()}, {y}),
                   {.epochs = 3, .batch_size = 4, .shuffle = false, .verbose = 0, .out = &quiet});
}

// Item 1: NaN or Inf at every padded step of a float GRU/LSTM/SimpleRNN changes nothing: the
// weights after training are bit for bit those of the same model trained on zeros there.
TEST(MaskedGarbage, RecurrentLayersTrainAsIfPaddedStepsWereZero) {
  for (const std::string cell : {"GRU", "LSTM", "SimpleRNN"})
    for (bool seq : {true, false})
      for (float pad : {kNaN, kInf, -kInf}) {
        SCOPED_TRACE(cell + (seq ? " return_sequences" : " last output") + " pad " +
                     std::to_string(pad));
        auto clean = rnn_model(cell, seq);
        History hc = fit_on(*clean, padded_inputs(0.0f), targets(seq ? 3 : 2));
        ASSERT_TRUE(hc.stop_reason.empty()) << hc.stop_reason;
        auto dirty = rnn_model(cell, seq);
        History hd = fit_on(*dirty, padded_inputs(pad), targets(seq ? 3 : 2));
        EXPECT_TRUE(hd.stop_reason.empty()) << hd.stop_reason;
        EXPECT_EQ(non_finite(*dirty), 0);
        const auto wc = weights_of(*clean), wd = weights_of(*dirty);
        ASSERT_EQ(wc.size(), wd.size());
        for (size_t i = 0; i < wc.size(); ++i)
          for (int64_t k = 0; k < wc[i].numel(); ++k)
            ASSERT_EQ(wc[i].data<float>()[k], wd[i].data<float>()[k])
                << "weight " << i << "[" << k << "]";
        EXPECT_EQ(hc.history.at("loss"), hd.history.at("loss"));
      }
}

// Item 1, second fix: a step whose loss is finite but whose updates are not (here an SGD step
// that overflows to -inf) is refused; the weights keep their last finite values and History
// says which update was at fault.
TEST(MaskedGarbage, StepWithNonFiniteUpdatesIsRefused) {
  reset_layer_names();
  set_random_seed(3);
  KTensor x = Input({2});
  auto model = Model::create({x}, {(*Dense(1))(x)});
  model->compile({.optimizer = SGD({.learning_rate = 3e38}), .loss = MeanSquaredError()});
  const auto before = weights_of(*model);
  Tensor xs = Tensor::full({4, 2}, 100.0), ys = Tensor::full({4, 1}, -100.0);
  std::ostringstream out;
  History h = model->fit(xs, ys, {.epochs = 2, .batch_size = 4, .verbose = 0, .out = &out});
  EXPECT_EQ(non_finite(*model), 0);
  const auto after = weights_of(*model);
  for (size_t i = 0; i < before.size(); ++i)
    for (int64_t k = 0; k < before[i].numel(); ++k)
      EXPECT_EQ(before[i].data<float>()[k], after[i].data<float>()[k]);
  EXPECT_NE(h.stop_reason.find("non-finite"), std::string::npos) << h.stop_reason;
  EXPECT_NE(h.stop_reason.find("dense"), std::string::npos) << h.stop_reason;
  EXPECT_NE(out.str().find("training stopped"), std::string::npos) << out.str();
  EXPECT_EQ(model->optimizer()->iterations(), 0);
}

// Item 2: a masked loss ignores whatever the masked steps hold, in value and in gradient. The
// issue's case: a per-step Dense after a masked GRU, NaN/Inf at the padded steps of x and NaN
// targets there; trained exactly as on clean padding.
TEST(MaskedGarbage, MaskedLossIgnoresGarbageAtMaskedSteps) {
  for (float pad : {kNaN, kInf}) {
    auto build = [] {
      reset_layer_names();
      set_random_seed(5);
      KTensor x = Input({kSteps, kFeatures}), m = Input({kSteps}, DType::kBool);
      KTensor h = (*GRU(4, {.return_sequences = true}))(x, {.masks = {m}});
      auto model = Model::create({x, m}, {(*Dense(1))(h)});
      model->compile({.optimizer = SGD({.learning_rate = 0.1}),
                      .loss = MeanSquaredError(),
                      .metrics = {"mae"}});
      return model;
    };
    Tensor y_clean = targets(3), y_dirty = targets(3).clone();
    Tensor mask = lengths_mask();
    for (int64_t b = 0; b < kBatch; ++b)
      for (int64_t t = 0; t < kSteps; ++t)
        if (!mask.data<bool>()[b * kSteps + t]) y_dirty.data<float>()[b * kSteps + t] = kNaN;
    auto clean = build();
    History hc = fit_on(*clean, padded_inputs(0.0f), y_clean);
    auto dirty = build();
    History hd = fit_on(*dirty, padded_inputs(pad), y_dirty);
    EXPECT_TRUE(hd.stop_reason.empty()) << hd.stop_reason;
    ASSERT_FALSE(hd.history.at("loss").empty());
    EXPECT_TRUE(std::isfinite(hd.history.at("loss").back()));
    EXPECT_EQ(hc.history.at("loss"), hd.history.at("loss"));
    EXPECT_EQ(hc.history.at("mae"), hd.history.at("mae"));
    const auto wc = weights_of(*clean), wd = weights_of(*dirty);
    for (size_t i = 0; i < wc.size(); ++i)
      for (int64_t k = 0; k < wc[i].numel(); ++k)
        EXPECT_EQ(wc[i].data<float>()[k], wd[i].data<float>()[k]);
    // evaluate() reduces the same way.
    data::Dataset d = data::Dataset::from_tensors({padded_inputs(pad), mask}, {y_dirty});
    EXPECT_TRUE(std::isfinite(dirty->evaluate(d).at("loss")));
  }
}

// Item 2 at the loss itself: NaN and Inf in y_pred and y_true at masked entries change neither
// the loss nor its gradient (which is 0 there).
TEST(MaskedGarbage, MaskedLossValueAndGradientSkipMaskedEntries) {
  for (const char* kind : {"mse", "sparse_cce"}) {
    SCOPED_TRACE(kind);
    const bool sparse = std::string(kind) == "sparse_cce";
    LossPtr loss =
        sparse ? SparseCategoricalCrossentropy({.from_logits = true}) : MeanSquaredError();
    Graph g;
    const Shape ps = sparse ? Shape{2, 3, 4} : Shape{2, 3, 1};
    Value p = g.placeholder("p", DType::kF32, ps);
    Value y =
        sparse ? g.placeholder("y", DType::kS64, {2, 3}) : g.placeholder("y", DType::kF32, ps);
    Value m = g.placeholder("m", DType::kBool, {2, 3});
    Value l = (*loss)(y, p, Value(), m);
    Value dp = gradients(l, {p})[0];
    Executor ex(g, {l, dp});
    Tensor mt(Shape{2, 3}, DType::kBool);
    const bool valid[] = {true, true, false, true, false, false};
    std::copy(valid, valid + 6, mt.data<bool>());
    auto run = [&](float garbage) {
      Tensor pt(ps, DType::kF32),
          yt = sparse ? Tensor::zeros({2, 3}, DType::kS64) : Tensor(ps, DType::kF32);
      const int64_t per = ps[2];
      for (int64_t i = 0; i < pt.numel(); ++i) {
        const bool ok = valid[i / per];
        pt.data<float>()[i] = ok ? 0.1f * static_cast<float>(i % 5) : garbage;
        if (!sparse) yt.data<float>()[i] = ok ? 0.3f : garbage;
      }
      if (sparse)
        for (int64_t i = 0; i < 6; ++i) yt.data<int64_t>()[i] = i % 4;
      return ex.run({{p, pt}, {y, yt}, {m, mt}});
    };
    const auto ref = run(0.0f);
    for (float garbage : {kNaN, kInf, -kInf}) {
      const auto got = run(garbage);
      EXPECT_EQ(got[0].item<float>(), ref[0].item<float>());
      for (int64_t i = 0; i < ref[1].numel(); ++i) {
        EXPECT_EQ(got[1].data<float>()[i], ref[1].data<float>()[i]) << i;
        if (!valid[i / ps[2]]) {
          EXPECT_EQ(got[1].data<float>()[i], 0.0f) << i;
        }
      }
    }
  }
}

// Item 6: fit stopped by the step guard inside its first epoch still leaves a History that
// says what happened: the partial epoch is recorded and the reason names it.
TEST(NonFinite, HistoryKeepsThePartialFirstEpoch) {
  for (int64_t bad_batch : {0, 2}) {
    SCOPED_TRACE("NaN in batch " + std::to_string(bad_batch));
    reset_layer_names();
    set_random_seed(11);
    KTensor x = Input({2});
    auto model = Model::create({x}, {(*Dense(1))(x)});
    model->compile({.optimizer = SGD({.learning_rate = 0.01}), .loss = MeanSquaredError()});
    Tensor xs = Tensor::full({16, 2}, 0.5), ys = Tensor::full({16, 1}, 1.0);
    xs.data<float>()[bad_batch * 4 * 2] = kNaN;  // batches of 4, no shuffling
    std::ostringstream out;
    History h = model->fit(
        xs, ys, {.epochs = 3, .batch_size = 4, .shuffle = false, .verbose = 0, .out = &out});
    ASSERT_EQ(h.epochs, std::vector<int>{0});
    ASSERT_EQ(h.history.at("loss").size(), 1u);
    EXPECT_TRUE(h.last_epoch_partial);
    if (bad_batch == 0) {
      EXPECT_TRUE(std::isnan(h.history.at("loss").back()));  // the refused loss itself
    } else {
      EXPECT_TRUE(std::isfinite(h.history.at("loss").back()));  // the mean of 2 applied batches
    }
    EXPECT_NE(h.stop_reason.find("epoch 1"), std::string::npos) << h.stop_reason;
    EXPECT_NE(h.stop_reason.find(std::to_string(bad_batch) + " of 4 batches applied"),
              std::string::npos)
        << h.stop_reason;
    EXPECT_EQ(non_finite(*model), 0);
  }
}

// Item 4: one NaN rule for every pooling: NaN propagates (the reference, TF, PyTorch). Before,
// MaxPooling2D's kernels skipped NaN ([nan, 1, 2, 3] -> 3, an all-NaN window -> -inf).
TEST(NonFinite, EveryPoolingPropagatesNaN) {
  Tensor x(Shape{1, 2, 4, 1}, DType::kF32);  // window 1: nan, 1, 2, 3; window 2: all NaN
  const float v[] = {kNaN, 1, kNaN, kNaN, 2, 3, kNaN, kNaN};
  std::copy(v, v + 8, x.data<float>());
  auto pooled = [&](LayerPtr layer) {
    reset_layer_names();
    KTensor in = Input({2, 4, 1});
    return Model::create({in}, {(*layer)(in)})->predict(x);
  };
  for (const char* kind : {"max", "average"}) {
    SCOPED_TRACE(kind);
    Tensor y = std::string(kind) == "max" ? pooled(MaxPooling2D(2)) : pooled(AveragePooling2D(2));
    ASSERT_EQ(y.numel(), 2);
    EXPECT_TRUE(std::isnan(y.data<float>()[0])) << y;
    EXPECT_TRUE(std::isnan(y.data<float>()[1])) << y;
  }
  EXPECT_TRUE(std::isnan(pooled(GlobalMaxPooling2D()).data<float>()[0]));
  EXPECT_TRUE(std::isnan(ops::max(x).item<float>()));
  // Infinities are ordinary values: +inf is a maximum, -inf never is unless alone.
  const float w[] = {-kInf, 1, -kInf, -kInf, kInf, 3, -kInf, -kInf};
  std::copy(w, w + 8, x.data<float>());
  Tensor y = pooled(MaxPooling2D(2));
  EXPECT_EQ(y.data<float>()[0], kInf);
  EXPECT_EQ(y.data<float>()[1], -kInf);
}

// Item 12: compile refuses what fit would fail on later, and optimizers refuse negative rates.
TEST(ApiValidation, CompileRejectsUnknownMetricsAndOptimizersNegativeRates) {
  reset_layer_names();
  KTensor x = Input({2});
  auto model = Model::create({x}, {(*Dense(3))(x)});
  try {
    model->compile({.loss = SparseCategoricalCrossentropy(), .metrics = {"accuracy", "acuracy"}});
    ADD_FAILURE() << "compile accepted the metric 'acuracy'";
  } catch (const ValueError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("metrics[1] = 'acuracy'"), std::string::npos) << m;
    EXPECT_NE(m.find("known:"), std::string::npos) << m;
  }
  EXPECT_NO_THROW(model->compile({.loss = SparseCategoricalCrossentropy(), .metrics = {"acc"}}));
  for (double lr : {-0.1, -1.0, std::nan(""), static_cast<double>(INFINITY)}) {
    SCOPED_TRACE(lr);
    EXPECT_THROW(SGD({.learning_rate = lr}), ValueError);
    EXPECT_THROW(Adam({.learning_rate = lr}), ValueError);
    EXPECT_THROW(RMSprop({.learning_rate = lr}), ValueError);
  }
  EXPECT_DOUBLE_EQ(SGD()->learning_rate(), 0.01);  // unset: the Keras default
  EXPECT_DOUBLE_EQ(Adam()->learning_rate(), 0.001);
  EXPECT_DOUBLE_EQ(SGD({.learning_rate = 0.0})->learning_rate(), 0.0);
}

// Items 8 and 11: a model is called on a symbolic tensor like any layer (it did not compile:
// Model::operator()(Tensor) hid the Layer overloads), and a merge layer called on a list
// returns the tensor (it returned a one-element vector).
TEST(ApiKeras, ModelsNestLikeLayersAndMergesReturnTheTensor) {
  reset_layer_names();
  set_random_seed(2);
  KTensor a = Input({3});
  auto inner = Model::create({a}, {(*Dense(4, {.activation = "tanh"}))(a)});
  KTensor x = Input({3});
  KTensor h = (*inner)(x);
  KTensor s = (*Add())({h, (*Dense(4))(x)});
  auto outer = Model::create({x}, {(*Dense(1))(s)});
  outer->compile({.optimizer = SGD({.learning_rate = 0.05}), .loss = MeanSquaredError()});
  const auto inner_before = weights_of(*inner);
  Tensor xs(Shape{32, 3}, DType::kF32), ys(Shape{32, 1}, DType::kF32);
  for (int64_t i = 0; i < 32; ++i) {
    for (int64_t j = 0; j < 3; ++j)
      xs.data<float>()[i * 3 + j] = 0.1f * static_cast<float>((i * 7 + j * 3) % 11) - 0.5f;
    ys.data<float>()[i] = xs.data<float>()[i * 3] * xs.data<float>()[i * 3 + 1];
  }
  std::ostringstream quiet;
  History hist = outer->fit(xs, ys, {.epochs = 20, .batch_size = 8, .verbose = 0, .out = &quiet});
  EXPECT_LT(hist.history.at("loss").back(), hist.history.at("loss").front());
  // The gradient reached the nested model's weights.
  const auto inner_after = weights_of(*inner);
  ASSERT_EQ(inner_before.size(), inner_after.size());
  bool changed = false;
  for (size_t i = 0; i < inner_before.size(); ++i)
    for (int64_t k = 0; k < inner_before[i].numel(); ++k)
      changed |= inner_before[i].data<float>()[k] != inner_after[i].data<float>()[k];
  EXPECT_TRUE(changed);
  // Saved and loaded with the outer model: the same predictions.
  const std::string path =
      (std::filesystem::temp_directory_path() / "lowbit_nested_model_test.lbm").string();
  outer->save(path);
  auto loaded = load_model(path);
  std::filesystem::remove(path);
  Tensor p0 = outer->predict(xs), p1 = loaded->predict(xs);
  for (int64_t i = 0; i < p0.numel(); ++i) EXPECT_EQ(p0.data<float>()[i], p1.data<float>()[i]);
  // A layer with several outputs called for one tensor says how to get them all.
  KTensor seq = Input({4, 2});
  try {
    (void)(*LSTM(2, {.return_state = true}))({seq});
    ADD_FAILURE() << "expected a ValueError";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("returns 3 outputs"), std::string::npos) << e.what();
  }
}

// Item 10: a bad label or id in shuffled training data is reported by its position in the
// user's data and the tensor's name, not only by its row in the shuffled batch.
TEST(ApiErrors, BadValuesAreNamedBySampleAndInput) {
  reset_layer_names();
  KTensor x = Input({2}, DType::kF32, "features");
  auto model = Model::create({x}, {(*Dense(3))(x)});
  model->compile({.optimizer = SGD(), .loss = SparseCategoricalCrossentropy()});
  Tensor xs = Tensor::full({40, 2}, 0.5), ys = Tensor::zeros({40}, DType::kS64);
  ys.data<int64_t>()[13] = 7;  // 3 classes
  std::ostringstream quiet;
  try {
    model->fit(xs, ys,
               {.epochs = 1, .batch_size = 8, .shuffle = true, .verbose = 0, .out = &quiet});
    ADD_FAILURE() << "fit accepted label 7 for 3 classes";
  } catch (const ValueError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("sample 13 of the data"), std::string::npos) << m;
    EXPECT_NE(m.find("the targets (y)"), std::string::npos) << m;
  }
  try {
    model->evaluate(xs, ys);
    ADD_FAILURE() << "evaluate accepted label 7 for 3 classes";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("sample 13 of the data"), std::string::npos) << e.what();
  }
  // An Embedding id out of range: the input's name and the sample.
  reset_layer_names();
  KTensor ids = Input({3}, DType::kS32, "token_ids");
  auto emb = Model::create({ids}, {(*Dense(1))((*Flatten())((*Embedding(5, 2))(ids)))});
  emb->compile({.optimizer = SGD(), .loss = MeanSquaredError()});
  Tensor is = Tensor::zeros({20, 3}, DType::kS32), t = Tensor::zeros({20, 1});
  is.data<int32_t>()[17 * 3 + 2] = 9;
  try {
    emb->fit(is, t, {.epochs = 1, .batch_size = 4, .shuffle = true, .verbose = 0, .out = &quiet});
    ADD_FAILURE() << "fit accepted id 9 for 5 embeddings";
  } catch (const ValueError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("input 'token_ids'"), std::string::npos) << m;
    EXPECT_NE(m.find("sample 17 of the data"), std::string::npos) << m;
  }
}

// Item 7: load_weights matches by structure (layer order, weight shapes) like Keras 3, with the
// weight names within each layer as a cross-check; it matched by auto-generated layer names, so
// the same architecture built twice in one process could not load the first one's file.
TEST(ApiKeras, LoadWeightsMatchesByStructure) {
  auto build = [](int64_t units) {
    KTensor x = Input({4, 3});
    KTensor h = (*Bidirectional(LSTM(units, {.return_sequences = true})))(x);
    KTensor y = (*Dense(2))((*Flatten())(h));
    return Model::create({x}, {y});
  };
  reset_layer_names();
  set_random_seed(1);
  auto first = build(3);
  set_random_seed(99);
  auto second = build(3);  // dense_1, bidirectional_1, ... : other names, same structure
  ASSERT_NE(first->named_weights()[0].first, second->named_weights()[0].first);
  const std::string path =
      (std::filesystem::temp_directory_path() / "lowbit_structure_test.lbm").string();
  first->save(path);
  second->load_weights(path);
  Tensor x = Tensor::full({2, 4, 3}, 0.25);
  Tensor p1 = first->predict(x), p2 = second->predict(x);
  for (int64_t i = 0; i < p1.numel(); ++i) EXPECT_EQ(p1.data<float>()[i], p2.data<float>()[i]);
  // Another structure: refused, naming the layer and both shapes.
  auto other = build(4);
  try {
    other->load_weights(path);
    ADD_FAILURE() << "load_weights accepted LSTM(3) weights into LSTM(4)";
  } catch (const IoError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("weight 0 of the model"), std::string::npos) << m;
    EXPECT_NE(m.find("layer '" + layer_name_of(other->named_weights()[0].first)), std::string::npos)
        << m;
    EXPECT_NE(m.find("[3,16]"), std::string::npos) << m;
    EXPECT_NE(m.find("[3,12]"), std::string::npos) << m;
  }
  std::filesystem::remove(path);
}

// Item 3: a model file whose weight bytes were overwritten loaded silently (every prediction
// NaN). Each tensor's CRC-32 is stored and checked; non-finite weights are refused by name.
TEST(NonFinite, CorruptedOrNonFiniteWeightsAreRefusedOnLoad) {
  reset_layer_names();
  set_random_seed(4);
  KTensor x = Input({3});
  auto model = Model::create({x}, {(*Dense(2))(x)});
  const std::string path =
      (std::filesystem::temp_directory_path() / "lowbit_corrupt_weights_test.lbm").string();
  model->save(path);
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  Weight* kernel = model->named_weights()[0].second;
  const std::string kernel_bytes(static_cast<const char*>(kernel->value.raw()),
                                 kernel->value.nbytes());
  const size_t at = bytes.find(kernel_bytes);
  ASSERT_NE(at, std::string::npos);
  auto write = [&](const std::string& b) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(b.data(), static_cast<std::streamsize>(b.size()));
  };
  std::string corrupted = bytes;
  std::fill_n(corrupted.begin() + static_cast<std::ptrdiff_t>(at), 8, '\xff');
  write(corrupted);
  const std::string name = "weights/" + model->named_weights()[0].first;
  for (int via_load_weights : {0, 1}) {
    try {
      if (via_load_weights) {
        model->load_weights(path);
      } else {
        (void)load_model(path);
      }
      ADD_FAILURE() << "a corrupted file loaded";
    } catch (const IoError& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("'" + name + "' is corrupted"), std::string::npos) << m;
    }
  }
  // A finite model saved, then a NaN written into the weights before saving again: the
  // checksum matches, the value is refused.
  write(bytes);
  EXPECT_NO_THROW((void)load_model(path));
  kernel->value.data<float>()[1] = kNaN;
  model->save(path);
  try {
    (void)load_model(path);
    ADD_FAILURE() << "a NaN weight loaded";
  } catch (const IoError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("'" + name + "' holds nan"), std::string::npos) << m;
    EXPECT_NE(m.find("must be finite"), std::string::npos) << m;
  }
  std::filesystem::remove(path);
}

// Item 9: predict, evaluate and fit take several inputs (an explicit mask is an input) and
// several outputs (one loss applied to each and summed, per-output losses and metrics logged
// under the output's name, as Keras). predict took one input and one output only, and fit /
// evaluate refused models with several outputs.
TEST(ApiKeras, SeveralInputsAndOutputsWorkWithPredictEvaluateAndFit) {
  reset_layer_names();
  set_random_seed(12);
  KTensor x = Input({kSteps, kFeatures}), m = Input({kSteps}, DType::kBool);
  KTensor h = (*GRU(4))(x, {.masks = {m}});
  KTensor a = (*Dense(2, {.name = "head_a"}))(h), b = (*Dense(1, {.name = "head_b"}))(h);
  auto model = Model::create({x, m}, {a, b});
  model->compile(
      {.optimizer = SGD({.learning_rate = 0.1}), .loss = MeanSquaredError(), .metrics = {"mae"}});
  const Tensor xs = padded_inputs(0.0f), ms = lengths_mask();
  std::vector<Tensor> p = model->predict({xs, ms});
  ASSERT_EQ(p.size(), 2u);
  EXPECT_EQ(p[0].shape(), Shape({kBatch, 2}));
  EXPECT_EQ(p[1].shape(), Shape({kBatch, 1}));
  // The same as one batch through predict_on_batch, in smaller batches too.
  std::vector<Tensor> q = model->predict({xs, ms}, 3);
  for (size_t k = 0; k < 2; ++k)
    for (int64_t i = 0; i < p[k].numel(); ++i)
      EXPECT_EQ(p[k].data<float>()[i], q[k].data<float>()[i]);
  Tensor ya = Tensor::full({kBatch, 2}, 0.5), yb = targets(2);
  data::Dataset d = data::Dataset::from_tensors({xs, ms}, {ya, yb});
  Logs before = model->evaluate(d);
  for (const char* key : {"loss", "head_a_loss", "head_b_loss", "head_a_mae", "head_b_mae"})
    EXPECT_TRUE(before.count(key)) << key;
  EXPECT_NEAR(before.at("loss"), before.at("head_a_loss") + before.at("head_b_loss"), 1e-5);
  std::ostringstream quiet;
  History hist = model->fit(d, {.epochs = 30, .batch_size = 4, .verbose = 0, .out = &quiet});
  ASSERT_TRUE(hist.history.count("head_b_loss"));
  EXPECT_LT(hist.history.at("loss").back(), hist.history.at("loss").front());
  Logs after = model->evaluate(d);
  EXPECT_LT(after.at("head_a_loss"), before.at("head_a_loss"));
  // Targets must match the outputs.
  EXPECT_THROW(model->evaluate(data::Dataset::from_tensors({xs, ms}, {ya})), ValueError);
}

}  // namespace
}  // namespace lowbit::nn
