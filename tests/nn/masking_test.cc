// Timestep and feature masks (docs/masking.md): the mask ops, the golden vectors (Masking,
// masked losses through a model, masked BatchNormalization), every layer's mask rule and the
// refusals, masked losses against the unpadded sequences one by one, padding invariance, the
// low-level equivalent built by hand from ops, and the feature-mask layers and losses.
#include "lowbit/nn/masking.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <nlohmann/json.hpp>

#include "lowbit/data/dataset.h"
#include "lowbit/nn/layers.h"
#include "lowbit/nn/model.h"
#include "lowbit/ops.h"
#include "lowbit/quant/quantize_model.h"
#include "testing/op_testing.h"

namespace lowbit::nn {
namespace {

using testing::expect_throws_with;
using testing::tensors_equal;
using testing::tensors_near;

// The golden files' tolerance (layer-semantics.md section 0).
constexpr double kGoldenAtol = 2e-5;
constexpr double kGoldenRtol = 1e-4;
// Two f32 computations of one quantity in a different order (sums over a few dozen terms).
constexpr double kAtol = 1e-5;
constexpr double kRtol = 1e-5;

Tensor f32(const std::vector<float>& v, const Shape& s) { return Tensor::from_vector<float>(v, s); }
Tensor boolean(const std::vector<bool>& v, const Shape& s) {
  return Tensor::from_vector<bool>(v, s);
}

Json load_case_file(const std::string& path) {
  std::ifstream f(path);
  EXPECT_TRUE(f.good()) << path;
  return Json::parse(f);
}
Json load_case(const std::string& name) {
  return load_case_file(testing::shared_dir() + "/testdata/keras/" + name + ".json");
}

Tensor json_tensor(const Json& j) {
  Shape s(j.at("shape").get<std::vector<int64_t>>());
  const std::string dt = j.at("dtype");
  const Json& d = j.at("data");
  if (dt == "float32") {
    std::vector<float> v;
    for (const auto& x : d) v.push_back(static_cast<float>(x.get<double>()));
    return f32(v, s);
  }
  if (dt == "int32") return Tensor::from_vector<int32_t>(d.get<std::vector<int32_t>>(), s);
  std::vector<bool> v;
  for (const auto& x : d) v.push_back(x.get<int>() != 0);
  return boolean(v, s);
}

// Runs `model` on xs in one graph and returns its outputs and their masks (undefined tensors
// where an output has no mask).
struct ModelRun {
  std::vector<Tensor> outputs, masks;
};
ModelRun run_model(Model& model, const std::vector<Tensor>& xs, bool training = false) {
  Graph g;
  CallContext ctx(g, training);
  Model::Trace t = model.trace(g, ctx);
  std::vector<Value> fetches = t.outputs;
  std::vector<int> where;
  for (const Value& m : t.output_masks) {
    where.push_back(m.defined() ? static_cast<int>(fetches.size()) : -1);
    if (m.defined()) fetches.push_back(m);
  }
  Executor ex(g, fetches, ctx.updates());
  std::vector<std::pair<Value, Tensor>> feeds;
  for (size_t i = 0; i < xs.size(); ++i) feeds.emplace_back(t.inputs[i], xs[i]);
  std::vector<Tensor> out = ex.run(feeds);
  ModelRun r;
  r.outputs.assign(out.begin(), out.begin() + static_cast<int64_t>(t.outputs.size()));
  for (int w : where) r.masks.push_back(w >= 0 ? out[w] : Tensor());
  return r;
}

// x [2, 5, 2]: row 0 valid at steps 0, 1, 3 (steps 2 and 4 all zero), row 1 valid at 0..2.
Tensor padded_x() {
  return f32({1, 2, 3, 4, 0, 0, 5, 6, 0, 0,  //
              7, 8, 0, 9, 1, 1, 0, 0, 0, 0},
             {2, 5, 2});
}
Tensor padded_mask() {
  return boolean({true, true, false, true, false,  //
                  true, true, true, false, false},
                 {2, 5});
}

// ---------------------------------------------------------------------------------------------
// Ops

TEST(MaskOps, SequenceMaskGolden) {
  testing::note_reference_tested("sequence_mask");
  Tensor lengths = Tensor::from_vector<int32_t>({3, 0, 5, -1}, {4});
  Tensor m = ops::sequence_mask(lengths, 4);
  EXPECT_TRUE(tensors_equal(m, boolean({1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0}, {4, 4})));
  // Any rank of lengths; maxlen 0 gives an empty last axis.
  Tensor l2 = Tensor::from_vector<int64_t>({1, 2}, {2, 1});
  EXPECT_EQ(ops::sequence_mask(l2, 3).shape(), Shape({2, 1, 3}));
  EXPECT_EQ(ops::sequence_mask(lengths, 0).shape(), Shape({4, 0}));
}

TEST(MaskOps, SequenceMaskLikeTakesMaxlenWhenTheGraphRuns) {
  Graph g;
  Value lengths = g.placeholder("lengths", DType::kS32, {kUnknown});
  Value x = g.placeholder("x", DType::kF32, {kUnknown, kUnknown, 2});
  Value m = ops::sequence_mask_like(lengths, x);
  EXPECT_EQ(m.shape(), Shape({kUnknown, kUnknown}));
  EXPECT_EQ(m.dtype(), DType::kBool);
  Executor ex(g, {m});
  Tensor out = ex.run(
      {{lengths, Tensor::from_vector<int32_t>({2, 3}, {2})}, {x, Tensor::zeros({2, 3, 2})}})[0];
  EXPECT_TRUE(tensors_equal(out, boolean({1, 1, 0, 1, 1, 1}, {2, 3})));
}

TEST(MaskOps, LengthsFromMaskGolden) {
  testing::note_reference_tested("lengths_from_mask");
  EXPECT_TRUE(tensors_equal(ops::lengths_from_mask(padded_mask()),
                            Tensor::from_vector<int64_t>({3, 3}, {2})));
  // f32 0/1 masks count their nonzero entries; right-padded masks invert sequence_mask.
  EXPECT_TRUE(tensors_equal(ops::lengths_from_mask(f32({1, 0, 1, 1, 1, 1}, {3, 2})),
                            Tensor::from_vector<int64_t>({1, 2, 2}, {3})));
  Tensor lengths = Tensor::from_vector<int64_t>({4, 0, 2, 7}, {4});
  EXPECT_TRUE(tensors_equal(ops::lengths_from_mask(ops::sequence_mask(lengths, 7)), lengths));
}

TEST(MaskOps, Errors) {
  expect_throws_with<DTypeError>(
      [] {
        ops::sequence_mask(f32({1, 2}, {2}), 3);
      },
      "sequence_mask: argument 'lengths': expected an integer dtype");
  expect_throws_with<ValueError>(
      [] { ops::sequence_mask(Tensor::from_vector<int32_t>({1}, {1}), -2); },
      "attribute 'maxlen': expected >= 0 but found -2");
  expect_throws_with<ShapeError>(
      [] {
        ops::sequence_mask_like(Tensor::from_vector<int32_t>({1, 2}, {2}), Tensor::zeros({2}));
      },
      "argument 'like': expected rank > 1");
  expect_throws_with<ShapeError>([] { ops::lengths_from_mask(Tensor::zeros({})); },
                                 "lengths_from_mask: argument 'mask': expected rank >= 1");
}

TEST(MaskOps, MaskedMeanAndSumIgnoreMaskedEntriesAndTheirGarbage) {
  Tensor x = padded_x();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  x.data<float>()[4] = nan;  // row 0, step 2: masked
  Tensor m = ops::expand_dims(padded_mask(), -1);
  Tensor mean = ops::masked_mean(x, m, {1});
  // Row 0 valid steps 0, 1, 3: (1,2), (3,4), (5,6); row 1 steps 0..2: (7,8), (0,9), (1,1).
  EXPECT_TRUE(tensors_near(mean, f32({3, 4, 8 / 3.f, 6}, {2, 2}), kAtol, kRtol));
  EXPECT_TRUE(tensors_near(ops::masked_sum(x, m, {1, 2}), f32({21, 26}, {2}), kAtol, kRtol));
  // An all-masked slice has mean 0 (not NaN).
  Tensor none = Tensor::zeros({2, 5, 1}, DType::kBool);
  EXPECT_TRUE(tensors_equal(ops::masked_mean(x, none, {1}), Tensor::zeros({2, 2})));
  EXPECT_TRUE(tensors_equal(ops::reduce_any(padded_mask(), {1}), boolean({1, 1}, {2})));
  EXPECT_TRUE(tensors_equal(ops::reduce_all(padded_mask(), {1}), boolean({0, 0}, {2})));
}

TEST(MaskOps, MaskedMeanGradientIsTheMaskOverTheCount) {
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {2, 5, 2});
  Value m = g.constant(ops::expand_dims(padded_mask(), -1));
  Value y = ops::sum(ops::masked_mean(x, m, {1}));
  Value dx = gradients({y}, {x})[0];
  Executor ex(g, {dx});
  Tensor got = ex.run({{x, padded_x()}})[0];
  std::vector<float> want;
  for (bool v : {1, 1, 0, 1, 0, 1, 1, 1, 0, 0})
    for (int f = 0; f < 2; ++f) want.push_back(v ? 1.f / 3 : 0.f);
  EXPECT_TRUE(tensors_near(got, f32(want, {2, 5, 2}), kAtol, kRtol));
}

// ---------------------------------------------------------------------------------------------
// Golden vectors

TEST(MaskingGolden, MaskingZero) {
  const Json c = load_case("dev_masking_zero");
  LayerPtr layer = layer_from_config(c.at("layer"));
  const Tensor x = json_tensor(c.at("inputs").at("x"));
  KTensor in = Input(Shape({x.dim(1), x.dim(2)}));
  KTensor out = (*layer)(in);
  EXPECT_TRUE(out.has_mask());
  auto model = Model::create({in}, {out});
  ModelRun r = run_model(*model, {x});
  EXPECT_TRUE(tensors_near(r.outputs[0], json_tensor(c.at("outputs").at("output")), kGoldenAtol,
                           kGoldenRtol));
  EXPECT_TRUE(tensors_equal(r.masks[0], json_tensor(c.at("outputs").at("output_mask"))));
}

TEST(MaskingGolden, MaskingNonzeroValueZeroesMaskedStepsAndNaNIsNeverMasked) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  Tensor x = f32({2, 2, 2, 1, nan, 2, 5, 5}, {1, 4, 2});
  KTensor in = Input({4, 2});
  auto model = Model::create({in}, {(*Masking(2.0))(in)});
  ModelRun r = run_model(*model, {x});
  EXPECT_TRUE(tensors_equal(r.masks[0], boolean({0, 1, 1, 1}, {1, 4})));
  EXPECT_EQ(r.outputs[0].data<float>()[0], 0.0f);
  EXPECT_EQ(r.outputs[0].data<float>()[1], 0.0f);
  EXPECT_EQ(r.outputs[0].data<float>()[2], 2.0f);  // partially matching steps are untouched
  KTensor in2 = Input({4, 2});
  ModelRun r_nan = run_model(*Model::create({in2}, {(*Masking(nan))(in2)}), {x});
  EXPECT_TRUE(tensors_equal(r_nan.masks[0], boolean({1, 1, 1, 1}, {1, 4})));
}

// The Keras-3 reduction of the golden sparse cross-entropy, reached through a model whose
// output carries the file's mask (the loss sees the model's output mask, as Keras' y_pred mask).
TEST(MaskingGolden, ModelLossUsesTheOutputMask) {
  const Json c = load_case("dev_loss_masked_sparse_categorical_crossentropy");
  const Json& in = c.at("inputs");
  const Tensor logits = json_tensor(in.at("y_pred_logits"));
  const Tensor mask = json_tensor(in.at("y_pred_mask"));
  const Tensor y = json_tensor(in.at("y_true"));
  const Tensor sw = json_tensor(in.at("sample_weight"));
  KTensor x = Input({2, 4}), m = Input({2}, DType::kBool);
  KTensor out = (*Activation("linear"))(x, {.masks = {m}});
  ASSERT_TRUE(out.has_mask());
  auto model = Model::create({x, m}, {out});
  model->compile({.loss = SparseCategoricalCrossentropy({.from_logits = true})});
  auto near = [&](double got, const char* key) {
    const double want = c.at("outputs").at(key).at("data")[0].get<double>();
    EXPECT_NEAR(got, want, kGoldenAtol + kGoldenRtol * std::abs(want)) << key;
  };
  Logs l = model->evaluate(data::Dataset::from_tensors({logits, mask}, {y}, sw));
  near(l.at("loss"), "keras3_sum_over_batch_size_masked_weighted");
  l = model->evaluate(data::Dataset::from_tensors({logits, mask}, {y}));
  near(l.at("loss"), "keras3_sum_over_batch_size_masked_no_weights");
}

// ---------------------------------------------------------------------------------------------
// Every masked golden case of the directory (a held-out set in $LOWBIT_SHARED_DIR included):
// the "masking" category and any non-recurrent case that feeds a mask (masked
// BatchNormalization, masked pooling), plus model cases (Sequential / Functional, e.g. Masking
// -> LSTM) that the single-layer runners leave aside. A model case is a list of layers applied
// in order; `weights[]` is the concatenation of their weights (Keras get_weights order).

bool is_model_class(const std::string& cls) {
  return cls == "Sequential" || cls == "Functional" || cls == "Model";
}

std::vector<LayerPtr> case_layers(const Json& layer) {
  const std::string cls = layer.at("class_name").get<std::string>();
  if (!is_model_class(cls)) return {layer_from_config(layer)};
  std::vector<LayerPtr> layers;
  for (const Json& lj : layer.at("config").at("layers"))
    if (lj.at("class_name").get<std::string>() != "InputLayer")
      layers.push_back(
          layer_from_config({{"class_name", lj.at("class_name")}, {"config", lj.at("config")}}));
  return layers;
}

// Output keys this runner compares, by what they name.
bool is_training_key(const std::string& k) {
  return k.find("training_true") != std::string::npos ||
         k.find("after_one_training_call") != std::string::npos || k == "batch_mean" ||
         k == "batch_variance_biased";
}

// Returns how many expected values were compared (0: a case this runner cannot feed).
int run_masked_case(const std::string& path) {
  SCOPED_TRACE(path);
  const Json c = load_case_file(path);
  const double atol = c.contains("tolerance") ? c["tolerance"].value("atol", 2e-5) : 2e-5;
  const double rtol = c.contains("tolerance") ? c["tolerance"].value("rtol", 1e-4) : 1e-4;
  const Json& inputs = c.at("inputs");
  for (const auto& [key, value] : inputs.items())
    if (key != "x" && key != "mask") {
      std::cout << "[ note ] " << path << ": input '" << key << "' is not fed by this runner\n";
      return 0;
    }
  reset_layer_names();
  std::vector<LayerPtr> layers = case_layers(c.at("layer"));
  const Tensor x = json_tensor(inputs.at("x"));
  const bool has_mask = inputs.contains("mask");
  const Tensor mask = has_mask ? json_tensor(inputs.at("mask")) : Tensor();
  std::vector<int64_t> xdims(x.shape().dims().begin() + 1, x.shape().dims().end());
  KTensor in = Input(Shape(xdims), x.dtype());
  std::vector<KTensor> model_in{in};
  KTensor h = in;
  for (size_t i = 0; i < layers.size(); ++i) {
    CallOptions opt;
    if (i == 0 && has_mask) {
      KTensor m = Input({x.dim(1)}, mask.dtype());
      model_in.push_back(m);
      opt.masks = {m};
    }
    h = (*layers[i])(std::vector<KTensor>{h}, opt)[0];
  }
  auto model = Model::create(model_in, {h});
  // Weights in order.
  std::vector<Weight*> ws;
  for (const LayerPtr& l : layers)
    for (Weight& w : l->weights()) ws.push_back(&w);
  const Json& wj = c.at("weights");
  if (ws.size() != wj.size()) {
    ADD_FAILURE() << "weight count: the layers have " << ws.size() << ", the file " << wj.size();
    return 0;
  }
  for (size_t i = 0; i < ws.size(); ++i) {
    Tensor t = json_tensor(wj[i]);
    if (ws[i]->value.shape() != t.shape()) {
      ADD_FAILURE() << "weight " << i << " (" << ws[i]->name << "): shape "
                    << ws[i]->value.shape().str() << " vs " << t.shape().str();
      return 0;
    }
    ws[i]->value.copy_from(t);
  }
  std::vector<Tensor> feed{x};
  if (has_mask) feed.push_back(mask);
  bool training = false;
  if (c.contains("call") && c["call"].contains("training") && c["call"]["training"].is_boolean())
    training = c["call"]["training"].get<bool>();
  int checked = 0;
  auto compare = [&](const std::string& key, const Tensor& got) {
    const Tensor want = json_tensor(c.at("outputs").at(key));
    if (want.dtype() == DType::kBool)
      EXPECT_TRUE(tensors_equal(got, want)) << key;
    else
      EXPECT_TRUE(tensors_near(got, want, atol, rtol)) << key;
    ++checked;
  };
  const Json& outs = c.at("outputs");
  // Inference-mode (or the call's mode) outputs first, before any training call updates state.
  ModelRun first = run_model(*model, feed, training);
  ModelRun inference = training ? run_model(*model, feed, false) : first;
  for (const auto& [key, value] : outs.items()) {
    if (is_training_key(key) || key.find("after_update") != std::string::npos) continue;
    if (key == "output_mask" || key == "mask") {
      compare(key, inference.masks[0]);
    } else if (key.find("training_false") != std::string::npos ||
               key.find("training_omitted") != std::string::npos) {
      compare(key, inference.outputs[0]);
    } else if (key == "output") {
      compare(key, first.outputs[0]);
    } else {
      std::cout << "[ note ] " << path << ": output '" << key << "' not compared\n";
    }
  }
  bool any_training = false;
  for (const auto& [key, value] : outs.items()) any_training |= is_training_key(key);
  if (any_training) {
    // Masked batch statistics (Keras 3 _moments) by hand, before the training call.
    if (has_mask && (outs.contains("batch_mean") || outs.contains("batch_variance_biased"))) {
      std::vector<int64_t> axes;
      for (int d = 0; d < x.rank() - 1; ++d) axes.push_back(d);
      Tensor valid = mask.to(DType::kF32);
      while (valid.rank() < x.rank()) valid = ops::expand_dims(valid, -1);
      valid = ops::broadcast_like(valid, x);
      Tensor count = ops::sum(valid, axes) + 1e-7;
      Tensor mean = ops::sum(valid * x, axes) / count;
      Tensor var = ops::sum(valid * ops::square(x - mean), axes) / count;
      if (outs.contains("batch_mean")) compare("batch_mean", mean);
      if (outs.contains("batch_variance_biased")) compare("batch_variance_biased", var);
    }
    ModelRun tr = run_model(*model, feed, true);
    for (const auto& [key, value] : outs.items()) {
      if (key.find("training_true") != std::string::npos) {
        compare(key, tr.outputs[0]);
      } else if (key.find("after_one_training_call") != std::string::npos) {
        const std::string wname = key.substr(0, key.find("_after_one_training_call"));
        for (Weight* w : ws)
          if (w->name == wname) compare(key, w->value);
      }
    }
    for (const auto& [key, value] : outs.items())
      if (key.find("after_update") != std::string::npos)
        compare(key, run_model(*model, feed, false).outputs[0]);
  }
  return checked;
}

TEST(MaskingGolden, EveryMaskedCaseInTheDirectory) {
  std::vector<std::string> files;
  for (const auto& e :
       std::filesystem::directory_iterator(testing::shared_dir() + "/testdata/keras"))
    if (e.path().extension() == ".json" && e.path().filename() != "manifest.json")
      files.push_back(e.path());
  std::sort(files.begin(), files.end());
  int cases = 0;
  for (const std::string& f : files) {
    const Json c = load_case_file(f);
    const std::string cat = c.value("category", "");
    const std::string cls = c.at("layer").value("class_name", "");
    const bool masked_input = c.contains("inputs") && c["inputs"].contains("mask");
    const bool recurrent =
        cls == "LSTM" || cls == "GRU" || cls == "SimpleRNN" || cls == "Bidirectional";
    if (cat == "masking" || (masked_input && !recurrent && cat != "rnn" && cat != "loss") ||
        is_model_class(cls)) {
      EXPECT_GT(run_masked_case(f), 0) << f;
      ++cases;
    }
  }
  EXPECT_GE(cases, 1);  // dev_masking_zero at least
}

// ---------------------------------------------------------------------------------------------
// Mask rules, layer by layer (the table of docs/masking.md)

// Input [5, 2] -> Masking -> layer: the output mask of the layer on padded_x().
ModelRun through_masking(const LayerPtr& layer, const Shape& in_shape = {5, 2}) {
  KTensor in = Input(in_shape);
  KTensor out = (*layer)((*Masking())(in));
  auto model = Model::create({in}, {out});
  return run_model(*model, {padded_x()});
}

TEST(MaskRules, ElementwiseLayersDenseAndDropoutPassTheMask) {
  for (const LayerPtr& l :
       {Dense(3), Activation("relu"), ReLU(), Dropout(0.5), BatchNormalization()}) {
    SCOPED_TRACE(l->class_name());
    ModelRun r = through_masking(l);
    EXPECT_TRUE(tensors_equal(r.masks[0], padded_mask()));
  }
}

TEST(MaskRules, Conv1DPropagatesADownsampledMask) {
  // Right-padded mask of lengths 5, 3 over T = 6.
  Tensor x = Tensor::zeros({2, 6, 1});
  for (int t = 0; t < 6; ++t) {
    x.data<float>()[t] = 1.0f + static_cast<float>(t);
    if (t < 3) x.data<float>()[6 + t] = 1.0f;
  }
  x.data<float>()[5] = 0.0f;
  auto mask_of = [&](const LayerPtr& l) {
    KTensor in = Input({6, 1});
    KTensor out = (*l)((*Masking())(in));
    EXPECT_TRUE(out.has_mask()) << l->class_name();
    return run_model(*Model::create({in}, {out}), {x}).masks[0];
  };
  // same / causal at stride 1: unchanged.
  const Tensor m = boolean({1, 1, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0}, {2, 6});
  EXPECT_TRUE(tensors_equal(mask_of(Conv1D(2, 3, {.padding = "same"})), m));
  EXPECT_TRUE(tensors_equal(mask_of(Conv1D(2, 3, {.padding = "causal"})), m));
  // valid, k = 3: output o reads o..o+2, valid when all three are (lengths 3 and 1).
  EXPECT_TRUE(tensors_equal(mask_of(Conv1D(2, 3)), boolean({1, 1, 1, 0, 1, 0, 0, 0}, {2, 4})));
  // valid, k = 2, dilation 2: o reads o, o+2.
  EXPECT_TRUE(tensors_equal(mask_of(Conv1D(2, 2, {.dilation_rate = 2})),
                            boolean({1, 1, 1, 0, 1, 0, 0, 0}, {2, 4})));
  // same, stride 2: output o anchored at step 2o (ceil(length / 2) valid outputs).
  EXPECT_TRUE(tensors_equal(mask_of(Conv1D(2, 3, {.strides = 2, .padding = "same"})),
                            boolean({1, 1, 1, 1, 1, 0}, {2, 3})));
  // Pooling over time: valid when the whole window is.
  EXPECT_TRUE(tensors_equal(mask_of(MaxPooling1D(2)), boolean({1, 1, 0, 1, 0, 0}, {2, 3})));
  EXPECT_TRUE(tensors_equal(mask_of(AveragePooling1D(2, {.strides = 1})),
                            boolean({1, 1, 1, 1, 0, 1, 1, 0, 0, 0}, {2, 5})));
  EXPECT_TRUE(tensors_equal(mask_of(MaxPooling1D(2, {.padding = "same"})),
                            boolean({1, 1, 0, 1, 0, 0}, {2, 3})));
}

TEST(MaskRules, Conv1DReadsMaskedStepsAsZeros) {
  // Garbage at a masked step must not reach the valid outputs: explicit mask, causal conv.
  set_random_seed(3);
  KTensor x = Input({4, 1}), m = Input({4}, DType::kBool);
  auto conv = Conv1D(1, 2, {.padding = "same", .use_bias = false});
  auto model = Model::create({x, m}, {(*conv)(x, {.masks = {m}})});
  conv->weights()[0].value.copy_from(f32({1, 10}, {2, 1, 1}));
  Tensor xs = f32({1, 2, 3, 1000}, {1, 4, 1});
  ModelRun r = run_model(*model, {xs, boolean({1, 1, 1, 0}, {1, 4})});
  // same, k = 2: y[t] = x[t] + 10 x[t+1]; x[3] reads as 0.
  EXPECT_TRUE(tensors_near(r.outputs[0], f32({21, 32, 3, 0}, {1, 4, 1}), kAtol, kRtol));
}

TEST(MaskRules, GlobalPooling1DConsumesTheMask) {
  for (bool max : {false, true}) {
    ModelRun r = through_masking(max ? GlobalMaxPooling1D() : GlobalAveragePooling1D());
    EXPECT_FALSE(r.masks[0].defined());
    // Row 0 valid steps 0, 1, 3: (1,2), (3,4), (5,6); row 1 steps 0..2: (7,8), (0,9), (1,1).
    const Tensor want = max ? f32({5, 6, 7, 9}, {2, 2}) : f32({3, 4, 8 / 3.f, 6}, {2, 2});
    EXPECT_TRUE(tensors_near(r.outputs[0], want, kAtol, kRtol)) << (max ? "max" : "average");
  }
  // A fully masked row gives 0, not NaN.
  KTensor in = Input({3, 1});
  auto model = Model::create({in}, {(*GlobalAveragePooling1D())((*Masking())(in))});
  ModelRun r = run_model(*model, {Tensor::zeros({1, 3, 1})});
  EXPECT_EQ(r.outputs[0].data<float>()[0], 0.0f);
}

TEST(MaskRules, FlattenDropsReshapeKeepsTheTimeAxis) {
  EXPECT_FALSE(through_masking(Flatten()).masks[0].defined());
  EXPECT_TRUE(tensors_equal(through_masking(Reshape({5, 2, 1})).masks[0], padded_mask()));
  EXPECT_FALSE(through_masking(Reshape({10})).masks[0].defined());
}

TEST(MaskRules, MergeLayersCombineMasks) {
  // Two masks: a = padded_mask(), b = its complement at step 0 of row 0.
  KTensor x = Input({5, 2}), ma = Input({5}, DType::kBool), mb = Input({5}, DType::kBool);
  KTensor xa = (*Activation("linear"))(x, {.masks = {ma}});
  KTensor xb = (*Activation("linear"))(x, {.masks = {mb}});
  const Tensor a = padded_mask();
  const Tensor b = boolean({0, 0, 1, 0, 0, 0, 0, 0, 0, 1}, {2, 5});
  const Tensor either = boolean({1, 1, 1, 1, 0, 1, 1, 1, 0, 1}, {2, 5});
  for (const LayerPtr& l : {Add(), Multiply(), Concatenate()}) {
    SCOPED_TRACE(l->class_name());
    auto model = Model::create({x, ma, mb}, {(*l)(std::vector<KTensor>{xa, xb})[0]});
    EXPECT_TRUE(tensors_equal(run_model(*model, {padded_x(), a, b}).masks[0], either));
  }
  // Add with one unmasked input: no mask (Keras 3); Concatenate: the unmasked one is all valid.
  auto add = Model::create({x, ma}, {(*Add())(std::vector<KTensor>{xa, x})[0]});
  EXPECT_FALSE(run_model(*add, {padded_x(), a}).masks[0].defined());
  auto cat = Model::create({x, ma}, {(*Concatenate())(std::vector<KTensor>{xa, x})[0]});
  EXPECT_TRUE(tensors_equal(run_model(*cat, {padded_x(), a}).masks[0],
                            boolean(std::vector<bool>(10, true), {2, 5})));
  // Along time: the masks are concatenated.
  auto cat_t =
      Model::create({x, ma, mb}, {(*Concatenate({.axis = 1}))(std::vector<KTensor>{xa, xb})[0]});
  ModelRun r = run_model(*cat_t, {padded_x(), a, b});
  EXPECT_TRUE(tensors_equal(r.masks[0], ops::concat(std::vector<Tensor>{a, b}, 1)));
}

TEST(MaskRules, EmbeddingMaskZero) {
  KTensor ids = Input({4}, DType::kS32);
  KTensor e = (*Embedding(5, 3, {.mask_zero = true}))(ids);
  EXPECT_TRUE(e.has_mask());
  KTensor d = (*Dense(2))(e);
  EXPECT_TRUE(d.has_mask());
  EXPECT_FALSE((*Embedding(5, 3))(ids).has_mask());
  auto model = Model::create({ids}, {d});
  ModelRun r = run_model(*model, {Tensor::from_vector<int32_t>({3, 1, 0, 0, 0, 2, 0, 4}, {2, 4})});
  EXPECT_TRUE(tensors_equal(r.masks[0], boolean({1, 1, 0, 0, 0, 1, 0, 1}, {2, 4})));
}

TEST(MaskRules, LayersThatCannotUseAMaskRefuseIt) {
  // A [B, T, W, C] input masked over (B, T) by Masking, then 2-D layers.
  auto refuses = [](const LayerPtr& l) {
    KTensor in = Input({4, 4, 2});
    KTensor masked = (*Masking())(in);
    ASSERT_TRUE(masked.has_mask());
    expect_throws_with<UnsupportedError>([&] { (*l)(masked); }, "does not support timestep masks");
  };
  refuses(Conv2D(2, 3));
  refuses(DepthwiseConv2D(3));
  refuses(SeparableConv2D(2, 3));
  refuses(MaxPooling2D(2));
  refuses(AveragePooling2D(2));
  refuses(GlobalAveragePooling2D());
  refuses(GlobalMaxPooling2D());
  refuses(ZeroPadding2D(1));
  // The same layers without a mask are fine.
  EXPECT_FALSE((*Conv2D(2, 3))(Input({4, 4, 2})).has_mask());
}

// A user layer that declares no rule refuses a mask (never drops it silently).
class Doubler : public Layer {
 public:
  Doubler() : Layer("doubler", "") {}
  std::string class_name() const override { return "Doubler"; }
  std::vector<Value> call(const std::vector<Value>& in, CallContext&) override {
    return {in[0] * 2.0};
  }
};

TEST(MaskRules, LayersWithoutARuleRefuseAndRulesCanBeRegistered) {
  KTensor in = Input({5, 2});
  KTensor masked = (*Masking())(in);
  auto l = std::make_shared<Doubler>();
  EXPECT_FALSE((*l)(in).has_mask());  // no mask: no rule needed
  expect_throws_with<UnsupportedError>([&] { (*l)(masked); },
                                       "doubler (Doubler): got a timestep mask but this layer "
                                       "has no mask rule");
  register_mask_rule("Doubler", [](const Layer&, const std::vector<Value>&,
                                   const std::vector<Value>& out, CallContext& ctx) {
    return std::vector<Value>(out.size(), ctx.input_mask(0));
  });
  KTensor y = (*l)(masked);
  EXPECT_TRUE(y.has_mask());
  EXPECT_TRUE(
      tensors_equal(run_model(*Model::create({in}, {y}), {padded_x()}).masks[0], padded_mask()));
}

// The recurrent layers' rule is registered by class name and reads return_sequences and
// go_backwards from the config (a stand-in layer plays "LSTM" here).
class FakeRecurrent : public Layer {
 public:
  FakeRecurrent(bool sequences, bool backwards)
      : Layer("fake_lstm", ""), sequences_(sequences), backwards_(backwards) {}
  std::string class_name() const override { return "LSTM"; }
  std::vector<Value> call(const std::vector<Value>& in, CallContext&) override {
    Value state = ops::sum(in[0], {1});
    return {sequences_ ? in[0] : state, state};
  }
  Json get_config() const override {
    Json j = Layer::get_config();
    j["return_sequences"] = sequences_;
    j["go_backwards"] = backwards_;
    return j;
  }

 private:
  bool sequences_, backwards_;
};

TEST(MaskRules, RecurrentLayersReturnTheMaskWithSequencesOnly) {
  auto outs = [](bool seq, bool back) {
    KTensor in = Input({5, 2});
    auto l = std::make_shared<FakeRecurrent>(seq, back);
    auto y = (*l)(std::vector<KTensor>{(*Masking())(in)});
    EXPECT_FALSE(y[1].has_mask());  // states never carry one
    return run_model(*Model::create({in}, {y[0]}), {padded_x()}).masks[0];
  };
  EXPECT_FALSE(outs(false, false).defined());
  EXPECT_TRUE(tensors_equal(outs(true, false), padded_mask()));
  EXPECT_TRUE(tensors_equal(outs(true, true), boolean({0, 1, 0, 1, 1, 0, 0, 1, 1, 1}, {2, 5})));
}

// The real recurrent layers in models: Masking -> LSTM consumes the mask, return_sequences
// returns it (reversed for go_backwards), and a zero-padded batch through Masking gives the
// outputs of the same LSTM given the mask explicitly over garbage padding.
TEST(MaskRules, RecurrentLayersInModels) {
  set_random_seed(17);
  auto seq = LSTM(3, {.return_sequences = true});
  auto last = GRU(2);
  KTensor in = Input({5, 2});
  KTensor h = (*seq)((*Masking())(in));
  EXPECT_TRUE(h.has_mask());
  KTensor y = (*last)(h);
  EXPECT_FALSE(y.has_mask());
  auto zero_padded = Model::create({in}, {h, y});
  ModelRun a = run_model(*zero_padded, {padded_x()});
  EXPECT_TRUE(tensors_equal(a.masks[0], padded_mask()));
  EXPECT_FALSE(a.masks[1].defined());
  // The same weights, an explicit mask, garbage at the padded steps.
  KTensor x2 = Input({5, 2}), m2 = Input({5}, DType::kBool);
  KTensor h2 = (*seq)(x2, {.masks = {m2}});
  auto explicit_mask = Model::create({x2, m2}, {h2, (*last)(h2)});
  Tensor garbage = padded_x();
  for (int64_t i = 0; i < 10; ++i)
    if (!padded_mask().data<bool>()[i]) garbage.data<float>()[2 * i] = 1e3f;
  ModelRun b = run_model(*explicit_mask, {garbage, padded_mask()});
  EXPECT_TRUE(tensors_equal(b.masks[0], padded_mask()));
  // Valid steps agree; masked steps repeat the last valid output in both (Keras).
  EXPECT_TRUE(tensors_near(b.outputs[0], a.outputs[0], kAtol, kRtol));
  EXPECT_TRUE(tensors_near(b.outputs[1], a.outputs[1], kAtol, kRtol));

  // go_backwards: the output is in processing order, so is its mask.
  KTensor x3 = Input({5, 2});
  KTensor back = (*LSTM(2, {.return_sequences = true, .go_backwards = true}))((*Masking())(x3));
  ModelRun c = run_model(*Model::create({x3}, {back}), {padded_x()});
  EXPECT_TRUE(tensors_equal(c.masks[0], boolean({0, 1, 0, 1, 1, 0, 0, 1, 1, 1}, {2, 5})));

  // Bidirectional without merging: both sequence outputs carry the input's mask.
  KTensor x4 = Input({5, 2});
  auto bi = (*Bidirectional(GRU(2, {.return_sequences = true}), {.merge_mode = "none"}))(
      std::vector<KTensor>{(*Masking())(x4)});
  ASSERT_EQ(bi.size(), 2u);
  ModelRun d = run_model(*Model::create({x4}, {bi[0], bi[1]}), {padded_x()});
  EXPECT_TRUE(tensors_equal(d.masks[0], padded_mask()));
  EXPECT_TRUE(tensors_equal(d.masks[1], padded_mask()));
}

TEST(MaskedTraining, MaskedLstmTrainsIdenticallyWhateverThePaddingHolds) {
  const int64_t T = 6, F = 2;
  Rng rng(9);
  Tensor x = testing::random_tensor({8, T, F}, rng);
  Tensor y = testing::random_tensor({8, T, 1}, rng);
  Tensor mask = ops::sequence_mask(testing::random_int_tensor({8}, rng, 1, T), T);
  Tensor x2 = x.clone(), y2 = y.clone();
  for (int64_t i = 0; i < 8 * T; ++i) {
    if (mask.data<bool>()[i]) continue;
    y2.data<float>()[i] = 50.0f;
    for (int64_t f = 0; f < F; ++f) x2.data<float>()[i * F + f] = -30.0f;
  }
  std::vector<std::vector<float>> weights;
  for (int run = 0; run < 2; ++run) {
    set_random_seed(5);
    reset_layer_names();
    KTensor xi = Input({T, F}), mi = Input({T}, DType::kBool);
    KTensor h = (*LSTM(4, {.return_sequences = true}))(xi, {.masks = {mi}});
    auto model = Model::create({xi, mi}, {(*Dense(1))(h)});
    model->compile({.optimizer = SGD({.learning_rate = 0.05}), .loss = MeanSquaredError()});
    model->fit(data::Dataset::from_tensors({run ? x2 : x, mask}, {run ? y2 : y}),
               {.epochs = 2, .batch_size = 4, .seed = 3, .verbose = 0});
    std::vector<float> w;
    for (auto& [name, wt] : model->named_weights())
      for (int64_t i = 0; i < wt->value.numel(); ++i) w.push_back(wt->value.data<float>()[i]);
    weights.push_back(w);
  }
  EXPECT_EQ(weights[0], weights[1]);
}

// Quantization-aware training rewrites the layer graph (FakeQuant nodes, QuantizeWrapper around
// Dense): the rewritten model still carries the mask, and Masking reads the unquantized input
// (no quantizer before it, one after it with the input quantizer's settings), so the mask
// is the same even before the input range has been learned.
TEST(MaskRules, QuantizedModelsKeepTheirMasks) {
  set_random_seed(2);
  reset_layer_names();
  KTensor in = Input({5, 2});
  KTensor y = (*Dense(3, {.activation = "relu"}))((*Masking())(in));
  auto model = Model::create({in}, {y});
  auto q = quant::quantize_model(*model, quant::QuantizeConfig::preset("w8a8"));
  ASSERT_TRUE(q->outputs()[0].has_mask());
  std::vector<std::string> names;
  for (const auto& l : q->layers()) names.push_back(l->name());
  EXPECT_EQ(names, (std::vector<std::string>{"input_layer", "masking", "masking_quant", "dense",
                                             "dense_quant"}));
  EXPECT_TRUE(tensors_equal(run_model(*q, {padded_x()}).masks[0], padded_mask()));
}

TEST(MaskRules, NestedModelsCarryMasksThrough) {
  KTensor inner_in = Input({5, 2});
  auto inner = Model::create({inner_in}, {(*Dense(3))((*Masking())(inner_in))});
  KTensor in = Input({5, 2});
  KTensor y = static_cast<Layer&>(*inner)(in);
  EXPECT_TRUE(y.has_mask());
  auto outer = Model::create({in}, {(*Dense(1))(y)});
  EXPECT_TRUE(tensors_equal(run_model(*outer, {padded_x()}).masks[0], padded_mask()));
  // A mask given to the outer model's input reaches the inner layers.
  KTensor x2 = Input({5, 2}), m2 = Input({5}, DType::kBool);
  KTensor i2 = Input({5, 2});
  auto pass = Model::create({i2}, {(*Dense(3))(i2)});
  auto outer2 = Model::create({x2, m2}, {static_cast<Layer&>(*pass)(x2, {.masks = {m2}})});
  EXPECT_TRUE(
      tensors_equal(run_model(*outer2, {padded_x(), padded_mask()}).masks[0], padded_mask()));
}

// A Sequential model carries a mask created inside it to its output, and as a layer of a
// functional model it gives that mask to the layers after it.
TEST(MaskRules, SequentialModelsCarryMasksThrough) {
  set_random_seed(9);
  auto seq = Sequential::create(
      {InputSpec({5, 2}), Masking(), LSTM(3, {.return_sequences = true}), Dense(2)});
  ASSERT_TRUE(seq->outputs()[0].has_mask());
  EXPECT_TRUE(tensors_equal(run_model(*seq, {padded_x()}).masks[0], padded_mask()));
  KTensor in = Input({5, 2});
  KTensor y = static_cast<Layer&>(*seq)(in);
  ASSERT_TRUE(y.has_mask());
  auto outer = Model::create({in}, {(*GlobalAveragePooling1D())(y)});
  auto plain = Model::create({in}, {y});
  // The pooling averages the valid steps only.
  Tensor steps = run_model(*plain, {padded_x()}).outputs[0];
  Tensor pooled = run_model(*outer, {padded_x()}).outputs[0];
  EXPECT_TRUE(tensors_near(
      pooled, ops::masked_mean(steps, ops::expand_dims(padded_mask(), -1), {1}), kAtol, kRtol));
}

TEST(MaskRules, ExplicitMasksAreCheckedAndRoundTripThroughTheConfig) {
  KTensor x = Input({5, 2}), bad = Input({4}, DType::kBool), m = Input({5});
  expect_throws_with<ShapeError>([&] { (*Dense(2))(x, {.masks = {bad}}); },
                                 "the timestep mask of input 0 must be [batch, timesteps]");
  expect_throws_with<ValueError>([&] { (*Dense(2))(x, {.masks = {m, m}}); }, "got 2 masks");
  // An f32 0/1 mask is accepted (nonzero = valid).
  KTensor y = (*Dense(2))(x, {.masks = {m}});
  auto model = Model::create({x, m}, {y});
  auto copy = model_from_config(model->get_config());
  ASSERT_EQ(copy->inputs().size(), 2u);
  EXPECT_TRUE(copy->outputs()[0].has_mask());
  Tensor mf = padded_mask().to(DType::kF32);
  EXPECT_TRUE(tensors_equal(run_model(*copy, {padded_x(), mf}).masks[0], padded_mask()));
}

TEST(MaskRules, MaskingRoundTripsThroughTheConfig) {
  for (const LayerPtr& l : {Masking(-1.5), MissingFeatures({.fill_value = 2, .indicators = false}),
                            FeatureDropout(0.25, {.per_sequence = true, .seed = 9})}) {
    LayerPtr copy = layer_from_config(layer_to_config(*l));
    EXPECT_EQ(layer_to_config(*copy).dump(), layer_to_config(*l).dump());
  }
}

// ---------------------------------------------------------------------------------------------
// Masked BatchNormalization

TEST(MaskedBatchNorm, StatisticsAndMovingAveragesIgnorePaddedSteps) {
  // Keras 3 _moments with a mask: mean = sum(m x) / (sum(m) + 1e-7), var likewise.
  KTensor x = Input({5, 2}), m = Input({5}, DType::kBool);
  auto bn = BatchNormalization({.momentum = 0.5});
  auto model = Model::create({x, m}, {(*bn)(x, {.masks = {m}})});
  Tensor xs = padded_x();
  // Garbage at the padded steps must change nothing.
  Tensor garbage = xs.clone();
  const std::vector<int> padded{2, 4, 8, 9};  // (b, t) flat indices of masked steps
  for (int i : padded) {
    garbage.data<float>()[2 * i] = 1e4f;
    garbage.data<float>()[2 * i + 1] = -7e3f;
  }
  // Valid values per channel: c0 = 1, 3, 5, 7, 0, 1; c1 = 2, 4, 6, 8, 9, 1.
  const double n = 6 + 1e-7;
  const double mean0 = 17 / n, mean1 = 30 / n;
  double var0 = 0, var1 = 0;
  for (double v : {1, 3, 5, 7, 0, 1}) var0 += (v - mean0) * (v - mean0);
  for (double v : {2, 4, 6, 8, 9, 1}) var1 += (v - mean1) * (v - mean1);
  var0 /= n;
  var1 /= n;
  Tensor y_clean, y_garbage;
  for (Tensor* in : {&xs, &garbage}) {
    for (Weight& w : bn->weights())
      w.value.copy_from(w.name == "moving_variance" ? Tensor::full({2}, 1.0)
                        : w.name == "gamma"         ? Tensor::full({2}, 1.0)
                                                    : Tensor::zeros({2}));
    ModelRun r = run_model(*model, {*in, padded_mask()}, /*training=*/true);
    (in == &xs ? y_clean : y_garbage) = r.outputs[0];
    const Tensor& mm = bn->weights()[2].value;
    const Tensor& mv = bn->weights()[3].value;
    EXPECT_NEAR(mm.data<float>()[0], 0.5 * mean0, 1e-5);
    EXPECT_NEAR(mm.data<float>()[1], 0.5 * mean1, 1e-5);
    EXPECT_NEAR(mv.data<float>()[0], 0.5 + 0.5 * var0, 1e-5);
    EXPECT_NEAR(mv.data<float>()[1], 0.5 + 0.5 * var1, 1e-5);
  }
  // Valid steps are normalised with those statistics, whatever the padding holds.
  for (int b = 0; b < 2; ++b)
    for (int t = 0; t < 5; ++t) {
      if (!padded_mask().data<bool>()[b * 5 + t]) continue;
      for (int c = 0; c < 2; ++c) {
        const int i = (b * 5 + t) * 2 + c;
        const double mu = c ? mean1 : mean0, var = c ? var1 : var0;
        const double want = (xs.data<float>()[i] - mu) / std::sqrt(var + 1e-3);
        EXPECT_NEAR(y_clean.data<float>()[i], want, 1e-4);
        EXPECT_EQ(y_clean.data<float>()[i], y_garbage.data<float>()[i]);
      }
    }
}

TEST(MaskedBatchNorm, AllValidMaskMatchesTheUnmaskedLayer) {
  Rng rng(5);
  Tensor xs = testing::random_tensor({3, 4, 2}, rng);
  KTensor x = Input({4, 2}), m = Input({4}, DType::kBool);
  auto bn = BatchNormalization();
  auto masked = Model::create({x, m}, {(*bn)(x, {.masks = {m}})});
  auto plain = Model::create({x}, {(*bn)(x)});
  Tensor a =
      run_model(*masked, {xs, boolean(std::vector<bool>(12, true), {3, 4})}, true).outputs[0];
  Tensor b = run_model(*plain, {xs}, true).outputs[0];
  // Only the 1e-7 in Keras' divisor and the summation order differ.
  EXPECT_TRUE(tensors_near(a, b, 1e-4, 1e-4));
}

// ---------------------------------------------------------------------------------------------
// Losses and training with masks

// Model: x [T, F] with an explicit mask -> Dense(C) logits; sparse labels [T].
ModelPtr tagger(int64_t t, int64_t f, int64_t c) {
  KTensor x = Input({t, f}), m = Input({t}, DType::kBool);
  KTensor h = (*Dense(4, {.activation = "tanh", .name = "hidden"}))(x, {.masks = {m}});
  auto model = Model::create({x, m}, {(*Dense(c, {.name = "logits"}))(h)});
  model->compile({.optimizer = SGD({.learning_rate = 0.1}),
                  .loss = SparseCategoricalCrossentropy({.from_logits = true}),
                  .metrics = {"accuracy"}});
  return model;
}

TEST(MaskedTraining, MaskedLossEqualsTheUnpaddedSequencesOneByOne) {
  set_random_seed(11);
  reset_layer_names();
  const int64_t T = 6, F = 3, C = 4;
  const std::vector<int64_t> lengths{6, 2, 4};
  auto model = tagger(T, F, C);
  Rng rng(2);
  Tensor x = testing::random_tensor({3, T, F}, rng);
  Tensor y = testing::random_int_tensor({3, T}, rng, 0, C - 1);
  Tensor mask = ops::sequence_mask(Tensor::from_vector<int64_t>(lengths, {3}), T);
  const double padded = model->evaluate(data::Dataset::from_tensors({x, mask}, {y})).at("loss");
  const double acc_padded =
      model->evaluate(data::Dataset::from_tensors({x, mask}, {y})).at("accuracy");
  // One by one: sequence b alone, cut to its length, all valid; Keras' mean over valid steps is
  // the length-weighted mean of the per-sequence means.
  double total = 0, correct = 0, steps = 0;
  for (int64_t b = 0; b < 3; ++b) {
    const int64_t L = lengths[b];
    Tensor xb = ops::slice(x, {b, 0, 0}, {b + 1, L, F});
    Tensor yb = ops::slice(y, {b, 0}, {b + 1, L});
    auto one = tagger(L, F, C);
    for (auto& [name, w] : one->named_weights())
      for (auto& [name2, w2] : model->named_weights())
        if (name == name2) w->value.copy_from(w2->value);
    Tensor all = boolean(std::vector<bool>(static_cast<size_t>(L), true), {1, L});
    Logs l = one->evaluate(data::Dataset::from_tensors({xb, all}, {yb}));
    total += l.at("loss") * static_cast<double>(L);
    correct += l.at("accuracy") * static_cast<double>(L);
    steps += static_cast<double>(L);
  }
  EXPECT_NEAR(padded, total / steps, 1e-5);
  EXPECT_NEAR(acc_padded, correct / steps, 1e-9);
}

// The same for a recurrent model and both kinds of masked loss: Keras' MSE (mean over the
// features, then over the valid steps) and the feature-masked MSE (mean over the present
// targets), with garbage in the padding and NaN targets for the feature-masked one.
ModelPtr sequence_regressor(int64_t t, const LossPtr& loss) {
  reset_layer_names();
  KTensor x = Input({t, 3}), m = Input({t}, DType::kBool);
  KTensor h = (*LSTM(4, {.return_sequences = true}))(x, {.masks = {m}});
  auto model = Model::create({x, m}, {(*Dense(3))(h)});
  model->compile({.loss = loss});
  return model;
}

TEST(MaskedTraining, MaskedRecurrentLossesEqualTheUnpaddedSequencesOneByOne) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const int64_t T = 6;
  const std::vector<int64_t> lengths{6, 2, 4};
  Rng rng(13);
  Tensor x = testing::random_tensor({3, T, 3}, rng);
  Tensor y = testing::random_tensor({3, T, 3}, rng);
  Tensor y_nan = y.clone();
  for (int64_t i = 0; i < y.numel(); i += 4) y_nan.data<float>()[i] = nan;  // missing targets
  Tensor mask = ops::sequence_mask(Tensor::from_vector<int64_t>(lengths, {3}), T);
  for (int64_t b = 0; b < 3; ++b)
    for (int64_t t = lengths[b]; t < T; ++t)
      for (int64_t k = 0; k < 3; ++k) {
        x.data<float>()[(b * T + t) * 3 + k] = 40.0f;  // garbage
        y.data<float>()[(b * T + t) * 3 + k] = -40.0f;
      }
  for (bool feature_masked : {false, true}) {
    SCOPED_TRACE(feature_masked ? "FeatureMaskedMeanSquaredError" : "MeanSquaredError");
    auto loss = [&] {
      return feature_masked ? FeatureMaskedMeanSquaredError() : MeanSquaredError();
    };
    set_random_seed(6);
    auto model = sequence_regressor(T, loss());
    const Tensor& targets = feature_masked ? y_nan : y;
    const double padded =
        model->evaluate(data::Dataset::from_tensors({x, mask}, {targets})).at("loss");
    double total = 0, count = 0;
    for (int64_t b = 0; b < 3; ++b) {
      const int64_t L = lengths[b];
      auto one = sequence_regressor(L, loss());
      for (auto& [name, w] : one->named_weights())
        for (auto& [name2, w2] : model->named_weights())
          if (name == name2) w->value.copy_from(w2->value);
      Tensor yb = ops::slice(targets, {b, 0, 0}, {b + 1, L, 3});
      double n = static_cast<double>(L);  // Keras' MSE: a mean over valid steps
      if (feature_masked) {
        n = 0;
        for (float v : yb.span<float>()) n += std::isnan(v) ? 0 : 1;
      }
      const Tensor all = boolean(std::vector<bool>(static_cast<size_t>(L), true), {1, L});
      total += one->evaluate(data::Dataset::from_tensors(
                                 {ops::slice(x, {b, 0, 0}, {b + 1, L, 3}), all}, {yb}))
                   .at("loss") *
               n;
      count += n;
    }
    EXPECT_NEAR(padded, total / count, 1e-5);
  }
}

TEST(MaskedTraining, PaddedStepsNeverInfluenceTraining) {
  // Two trainings that differ only in what the padded steps hold (inputs and labels) end with
  // bit-identical weights and losses.
  const int64_t T = 5, F = 2, C = 3;
  Rng rng(4);
  Tensor x = testing::random_tensor({8, T, F}, rng);
  Tensor y = testing::random_int_tensor({8, T}, rng, 0, C - 1);
  Tensor lengths = testing::random_int_tensor({8}, rng, 1, T);
  Tensor mask = ops::sequence_mask(lengths, T);
  Tensor x2 = x.clone(), y2 = y.clone();
  for (int64_t i = 0; i < 8 * T; ++i) {
    if (mask.data<bool>()[i]) continue;
    y2.data<int64_t>()[i] = (y2.data<int64_t>()[i] + 1) % C;
    for (int64_t f = 0; f < F; ++f) x2.data<float>()[i * F + f] = 100.0f;
  }
  std::vector<std::vector<float>> weights;
  std::vector<double> losses;
  for (int run = 0; run < 2; ++run) {
    set_random_seed(21);
    reset_layer_names();
    auto model = tagger(T, F, C);
    History h = model->fit(data::Dataset::from_tensors({run ? x2 : x, mask}, {run ? y2 : y}),
                           {.epochs = 2, .batch_size = 4, .seed = 1, .verbose = 0});
    losses.push_back(h.history.at("loss").back());
    std::vector<float> w;
    for (auto& [name, wt] : model->named_weights())
      for (int64_t i = 0; i < wt->value.numel(); ++i) w.push_back(wt->value.data<float>()[i]);
    weights.push_back(w);
  }
  EXPECT_EQ(losses[0], losses[1]);
  EXPECT_EQ(weights[0], weights[1]);
}

// ---------------------------------------------------------------------------------------------
// Padding invariance and the low-level equivalent

// x, mask -> Conv1D(causal) -> BatchNormalization (inference) -> Dense -> GlobalAveragePooling1D
// -> Dense: one sequence padded to different lengths, with garbage in the padding.
TEST(MaskedModels, TheSameSequenceGivesTheSameOutputWhateverItIsPaddedTo) {
  set_random_seed(8);
  auto conv = Conv1D(4, 3, {.padding = "causal", .activation = "relu"});
  auto conv_same = Conv1D(4, 1, {.padding = "same"});
  auto bn = BatchNormalization();
  auto dense = Dense(3, {.activation = "tanh"});
  auto out = Dense(2);
  // One model for every length: the time dim is unknown.
  KTensor xin = Input({kUnknown, 2}), min = Input({kUnknown}, DType::kBool);
  KTensor h = (*conv)(xin, {.masks = {min}});
  h = (*dense)((*bn)((*conv_same)(h)));
  auto model = Model::create({xin, min}, {(*out)((*GlobalAveragePooling1D())(h))});
  Rng rng(3);
  const int64_t L = 4;
  Tensor seq = testing::random_tensor({1, L, 2}, rng);
  Tensor ref = run_model(*model, {seq, boolean({1, 1, 1, 1}, {1, L})}).outputs[0];
  for (int64_t T : {5, 9}) {
    SCOPED_TRACE(T);
    Tensor x = testing::random_tensor({1, T, 2}, rng, 50, 60);  // garbage
    for (int64_t i = 0; i < L * 2; ++i) x.data<float>()[i] = seq.data<float>()[i];
    Tensor m = ops::sequence_mask(Tensor::from_vector<int64_t>({L}, {1}), T);
    EXPECT_TRUE(tensors_near(run_model(*model, {x, m}).outputs[0], ref, kAtol, kRtol));
  }
}

// docs/masking.md "The low-level equivalent": Masking + GlobalAveragePooling1D + the masked loss
// by hand with sequence_mask, where and a masked mean give the layer version's numbers.
TEST(MaskedModels, LowLevelEquivalentGivesTheLayerVersionsNumbers) {
  set_random_seed(12);
  Rng rng(6);
  const int64_t B = 3, T = 5, F = 2;
  Tensor lengths = Tensor::from_vector<int32_t>({5, 2, 3}, {B});
  Tensor x = testing::random_tensor({B, T, F}, rng);
  Tensor y = testing::random_int_tensor({B, T}, rng, 0, 2);

  // Layer version: zero padding, Masking, per-step Dense logits; and a pooled feature.
  Tensor mask = ops::sequence_mask(lengths, T);
  Tensor xz = ops::where(ops::expand_dims(mask, -1), x, ops::scalar_like(x, 0.0));
  KTensor in = Input({T, F});
  KTensor masked = (*Masking())(in);
  auto dense = Dense(3);
  KTensor logits = (*dense)(masked);
  auto tag = Model::create({in}, {logits});
  tag->compile({.loss = SparseCategoricalCrossentropy({.from_logits = true})});
  const double layer_loss = tag->evaluate(xz, y).at("loss");
  auto pool = Model::create({in}, {(*GlobalAveragePooling1D())(masked)});
  Tensor layer_pool = pool->predict(xz);

  // By hand: the same numbers from ops.
  Tensor m = ops::sequence_mask(lengths, T);           // bool [B, T]
  Tensor valid = ops::expand_dims(m, -1);              // [B, T, 1]
  Tensor hand_pool = ops::masked_mean(x, valid, {1});  // padding never read
  Tensor kernel = dense->weights()[0].value, bias = dense->weights()[1].value;
  Tensor z = ops::matmul(x, kernel) + bias;             // [B, T, 3]
  Tensor ce = ops::sparse_softmax_cross_entropy(z, y);  // [B, T]
  Tensor hand_loss = ops::masked_mean(ce, m);           // sum(ce * m) / sum(m)
  EXPECT_NEAR(layer_loss, hand_loss.item<float>(), 1e-5);
  EXPECT_TRUE(tensors_near(layer_pool, hand_pool, kAtol, kRtol));
}

// ---------------------------------------------------------------------------------------------
// Feature masks

TEST(FeatureMasks, MissingFeaturesFillsAppendsIndicatorsAndMasksEmptySteps) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  // Steps: all present; R missing; nothing present; G, B missing.
  Tensor x = f32({1, 2, 3, nan, 5, 6, nan, nan, nan, 7, nan, nan}, {1, 4, 3});
  KTensor in = Input({4, 3});
  KTensor out = (*MissingFeatures())(in);
  EXPECT_EQ(out.shape(), Shape({kUnknown, 4, 6}));
  ASSERT_TRUE(out.has_mask());
  ModelRun r = run_model(*Model::create({in}, {out}), {x});
  EXPECT_TRUE(tensors_equal(r.outputs[0], f32({1, 2, 3, 1, 1, 1,  //
                                               0, 5, 6, 0, 1, 1,  //
                                               0, 0, 0, 0, 0, 0,  //
                                               7, 0, 0, 1, 0, 0},
                                              {1, 4, 6})));
  EXPECT_TRUE(tensors_equal(r.masks[0], boolean({1, 1, 0, 1}, {1, 4})));
  // The two-input form with an explicit feature mask and a fill value, no indicators.
  KTensor xv = Input({4, 3}), fm = Input({4, 3}, DType::kBool);
  KTensor o2 =
      (*MissingFeatures({.fill_value = -1, .indicators = false}))(std::vector<KTensor>{xv, fm})[0];
  Tensor present = boolean({1, 1, 1, 0, 1, 1, 0, 0, 0, 1, 0, 0}, {1, 4, 3});
  Tensor filled = ops::where(present, x, ops::scalar_like(x, 0.0));
  ModelRun r2 = run_model(*Model::create({xv, fm}, {o2}), {filled, present});
  EXPECT_TRUE(
      tensors_equal(r2.outputs[0], f32({1, 2, 3, -1, 5, 6, -1, -1, -1, 7, -1, -1}, {1, 4, 3})));
  EXPECT_TRUE(tensors_equal(r2.masks[0], boolean({1, 1, 0, 1}, {1, 4})));
  expect_throws_with<ShapeError>(
      [] {
        (*MissingFeatures())(std::vector<KTensor>{Input({4, 3}), Input({4, 2}, DType::kBool)});
      },
      "feature_mask must have x's shape");
}

TEST(FeatureMasks, FeatureDropoutHidesObservedValuesInTrainingOnly) {
  KTensor xv = Input({50, 4}), fm = Input({50, 4}, DType::kBool);
  auto drop = FeatureDropout(0.3, {.seed = 5});
  auto outs = (*drop)(std::vector<KTensor>{xv, fm});
  auto model = Model::create({xv, fm}, {outs[1]});
  Rng rng(1);
  const int64_t n = 20 * 50 * 4;
  Tensor x = testing::random_tensor({20, 50, 4}, rng);
  Tensor present = ops::greater(testing::random_tensor({20, 50, 4}, rng, 0, 1),
                                ops::scalar_like(x, 0.2));  // ~80% observed
  Tensor inference = run_model(*model, {x, present}).outputs[0];
  EXPECT_TRUE(tensors_equal(inference, present));
  Tensor a = run_model(*model, {x, present}, true).outputs[0];
  Tensor b = run_model(*model, {x, present}, true).outputs[0];
  EXPECT_TRUE(tensors_equal(a, b));  // same step, same draws
  int64_t observed = 0, kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_FALSE(a.data<bool>()[i] && !present.data<bool>()[i]) << "revealed a missing value";
    observed += present.data<bool>()[i];
    kept += a.data<bool>()[i];
  }
  // Kept fraction of observed values ~ 0.7; binomial sd sqrt(0.21 / 3200) = 0.008: 0.04 is 5 sd.
  EXPECT_NEAR(static_cast<double>(kept) / static_cast<double>(observed), 0.7, 0.04);
  // The NaN form: hidden values become NaN.
  KTensor xn = Input({50, 4});
  auto nan_model = Model::create({xn}, {(*FeatureDropout(0.5, {.seed = 5}))(xn)});
  Tensor h = run_model(*nan_model, {x}, true).outputs[0];
  int64_t hidden = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float v = h.data<float>()[i];
    if (std::isnan(v))
      ++hidden;
    else
      EXPECT_EQ(v, x.data<float>()[i]);
  }
  EXPECT_GT(hidden, n / 3);
  EXPECT_LT(hidden, 2 * n / 3);
  expect_throws_with<ValueError>([] { FeatureDropout(1.5); }, "rate must be in [0, 1]");
}

TEST(FeatureMasks, FeatureMaskedLossesAverageOverPresentTargetsOnly) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  Tensor y_true = f32({1, nan, 3, nan, nan, nan, 0, 1}, {2, 2, 2});
  Tensor y_pred = f32({0.5, 9, 2, 4, 8, 8, 0.25, 0.5}, {2, 2, 2});
  // Present: (1, .5), (3, 2), (0, .25), (1, .5).
  const double mse = (0.25 + 1 + 0.0625 + 0.25) / 4, mae = (0.5 + 1 + 0.25 + 0.5) / 4;
  EXPECT_NEAR(FeatureMaskedMeanSquaredError()->evaluate(y_true, y_pred).item<float>(), mse, 1e-6);
  EXPECT_NEAR(FeatureMaskedMeanAbsoluteError()->evaluate(y_true, y_pred).item<float>(), mae, 1e-6);
  // With a timestep mask too: step (1, 1) masked -> only (1, .5) and (3, 2) remain.
  Tensor steps = boolean({1, 1, 1, 0}, {2, 2});
  EXPECT_NEAR(
      FeatureMaskedMeanSquaredError()->evaluate(y_true, y_pred, Tensor(), steps).item<float>(),
      (0.25 + 1) / 2, 1e-6);
  // Binary cross-entropy per feature on probabilities (clipped as Keras).
  Tensor t = f32({1, nan, 0, 1}, {1, 2, 2});
  Tensor p = f32({0.8, 0.3, 0.4, 0.9}, {1, 2, 2});
  const double bce = (-std::log(0.8) - std::log(0.6) - std::log(0.9)) / 3;
  EXPECT_NEAR(FeatureMaskedBinaryCrossentropy()->evaluate(t, p).item<float>(), bce, 1e-6);
  // Nothing present: 0, and no NaN gradient.
  Tensor none = f32({nan, nan}, {1, 1, 2});
  EXPECT_EQ(FeatureMaskedMeanSquaredError()->evaluate(none, f32({1, 2}, {1, 1, 2})).item<float>(),
            0.0f);
  // Config round trip.
  for (const LossPtr& l : {FeatureMaskedMeanSquaredError(), FeatureMaskedMeanAbsoluteError(),
                           FeatureMaskedBinaryCrossentropy({.from_logits = true})}) {
    LossPtr copy = loss_from_config({{"class_name", l->class_name()}, {"config", l->get_config()}});
    EXPECT_EQ(copy->get_config().dump(), l->get_config().dump());
  }
}

// ---------------------------------------------------------------------------------------------
// Rows of the docs/masking.md table not covered above

TEST(MaskRules, MaskingAndsTheMaskItsInputCarries) {
  KTensor x = Input({5, 2}), m = Input({5}, DType::kBool);
  auto model = Model::create({x, m}, {(*Masking())(x, {.masks = {m}})});
  const Tensor incoming = boolean({1, 1, 1, 1, 1, 0, 1, 0, 1, 1}, {2, 5});
  // padded_mask() AND incoming.
  EXPECT_TRUE(tensors_equal(run_model(*model, {padded_x(), incoming}).masks[0],
                            boolean({1, 1, 0, 1, 0, 0, 1, 0, 0, 0}, {2, 5})));
}

TEST(MaskRules, EmbeddingPassesAnIncomingMaskAndAndsItWithMaskZero) {
  KTensor ids = Input({4}, DType::kS32), m = Input({4}, DType::kBool);
  auto plain = Model::create({ids, m}, {(*Embedding(5, 3))(ids, {.masks = {m}})});
  auto zero =
      Model::create({ids, m}, {(*Embedding(5, 3, {.mask_zero = true}))(ids, {.masks = {m}})});
  const Tensor id_values = Tensor::from_vector<int32_t>({3, 1, 0, 2, 0, 2, 4, 4}, {2, 4});
  const Tensor incoming = boolean({1, 0, 1, 1, 1, 1, 1, 0}, {2, 4});
  EXPECT_TRUE(tensors_equal(run_model(*plain, {id_values, incoming}).masks[0], incoming));
  EXPECT_TRUE(tensors_equal(run_model(*zero, {id_values, incoming}).masks[0],
                            boolean({1, 0, 0, 1, 0, 1, 1, 0}, {2, 4})));
}

TEST(MaskRules, ConcatenateRefusesTheBatchAxis) {
  KTensor x = Input({5, 2});
  KTensor masked = (*Masking())(x);
  expect_throws_with<UnsupportedError>(
      [&] {
        (*Concatenate({.axis = 0}))(std::vector<KTensor>{masked, masked});
      },
      "concatenates along the batch axis");
}

TEST(MaskRules, MaskedBatchNormalizationNeedsTheChannelAxisLast) {
  KTensor x = Input({5, 2}), m = Input({5}, DType::kBool);
  auto model = Model::create({x, m}, {(*BatchNormalization({.axis = 1}))(x, {.masks = {m}})});
  expect_throws_with<UnsupportedError>(
      [&] {
        run_model(*model, {padded_x(), padded_mask()}, /*training=*/true);
      },
      "a timestep mask needs a [batch, timesteps, ..., channels] input normalised over its last "
      "axis");
  // Inference uses the moving statistics: no refusal, the mask passes.
  EXPECT_TRUE(
      tensors_equal(run_model(*model, {padded_x(), padded_mask()}).masks[0], padded_mask()));
}

TEST(MaskRules, GlobalMaxPooling1DGivesZeroForAFullyMaskedRow) {
  KTensor in = Input({3, 1});
  auto model = Model::create({in}, {(*GlobalMaxPooling1D())((*Masking())(in))});
  Tensor x = f32({0, 0, 0, -4, -2, 0}, {2, 3, 1});  // row 0 all masked, row 1 valid at 0, 1
  EXPECT_TRUE(tensors_equal(run_model(*model, {x}).outputs[0], f32({0, -2}, {2, 1})));
}

// QuantizeWrapper takes the rule of the layer it wraps: a quantized masked LSTM returns the mask
// with its sequences and consumes it otherwise.
TEST(MaskRules, QuantizedRecurrentLayersKeepTheirMaskRule) {
  for (bool sequences : {true, false}) {
    SCOPED_TRACE(sequences);
    set_random_seed(4);
    reset_layer_names();
    KTensor x = Input({5, 2});
    KTensor h = (*LSTM(3, {.return_sequences = sequences}))((*Masking())(x));
    auto model = Model::create({x}, {(*Dense(2))(h)});
    auto q = quant::quantize_model(*model, quant::QuantizeConfig::preset("w8a8"));
    ASSERT_EQ(q->outputs()[0].has_mask(), sequences);
    ModelRun r = run_model(*q, {padded_x()});
    if (sequences) {
      EXPECT_TRUE(tensors_equal(r.masks[0], padded_mask()));
    }
  }
}

// quantize_model re-calls each layer with the explicit masks of its LayerNode
// (CallOptions::masks), so a model whose mask is a model input keeps it in the rewrite.
TEST(MaskRules, QuantizedModelsKeepExplicitMasks) {
  for (bool sequences : {true, false}) {
    SCOPED_TRACE(sequences);
    set_random_seed(4);
    reset_layer_names();
    KTensor x = Input({5, 2}), m = Input({5}, DType::kBool);
    KTensor h = (*LSTM(3, {.return_sequences = sequences}))(x, {.masks = {m}});
    auto model = Model::create({x, m}, {(*Dense(2))(h)});
    auto q = quant::quantize_model(*model, quant::QuantizeConfig::preset("w8a8"));
    ASSERT_EQ(q->outputs()[0].has_mask(), sequences);
    ModelRun clean = run_model(*q, {padded_x(), padded_mask()});
    if (sequences) {
      EXPECT_TRUE(tensors_equal(clean.masks[0], padded_mask()));
    }
    // Garbage at masked steps (within the input range) never reaches a valid output.
    Tensor garbage = padded_x();
    for (int64_t i = 0; i < 10; ++i)
      if (!padded_mask().data<bool>()[i]) garbage.data<float>()[2 * i] = 0.7f;
    ModelRun dirty = run_model(*q, {garbage, padded_mask()});
    for (int64_t i = 0; i < (sequences ? 10 : 2); ++i) {
      if (sequences && !padded_mask().data<bool>()[i]) continue;
      for (int u = 0; u < 2; ++u)
        EXPECT_EQ(dirty.outputs[0].data<float>()[i * 2 + u],
                  clean.outputs[0].data<float>()[i * 2 + u]);
    }
  }
}

TEST(FeatureMasks, FeatureDropoutPassesTheTimestepMaskAndMissingFeaturesAndsIt) {
  KTensor x = Input({5, 2}), fm = Input({5, 2}, DType::kBool), m = Input({5}, DType::kBool);
  auto hidden = (*FeatureDropout(0.5, {.seed = 1}))(std::vector<KTensor>{x, fm}, {.masks = {m}});
  ASSERT_TRUE(hidden[0].has_mask());
  KTensor out = (*MissingFeatures())(hidden)[0];
  ASSERT_TRUE(out.has_mask());
  auto model = Model::create({x, fm, m}, {hidden[0], out});
  // Row 0: step 1 has nothing present; row 1: step 4 has one channel.
  const Tensor present = boolean({1, 1, 0, 0, 1, 0, 1, 1, 0, 1,  //
                                  1, 1, 1, 0, 0, 1, 1, 1, 0, 1},
                                 {2, 5, 2});
  const Tensor steps = boolean({1, 1, 1, 0, 1, 1, 1, 1, 1, 1}, {2, 5});
  ModelRun r = run_model(*model, {padded_x(), present, steps});
  EXPECT_TRUE(tensors_equal(r.masks[0], steps));
  EXPECT_TRUE(tensors_equal(r.masks[1], boolean({1, 0, 1, 0, 1, 1, 1, 1, 1, 1}, {2, 5})));
}

}  // namespace
}  // namespace lowbit::nn
