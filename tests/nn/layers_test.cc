// Conv, pooling, reshaping, merging and embedding layers: symbolic output shapes (batch
// unknown), hand-computed values where the Keras golden vectors do not reach, config round
// trips, Keras parameter counts, input errors, and functional models with a residual Add and a
// shared layer.
#include "lowbit/nn/layers.h"

#include <gtest/gtest.h>

#include <functional>

#include "lowbit/nn/model.h"
#include "lowbit/ops.h"
#include "testing/op_testing.h"

namespace lowbit::nn {
namespace {

using testing::expect_throws_with;
using testing::tensors_equal;
using testing::tensors_near;

Shape without_batch(const Shape& s) {
  return Shape(std::vector<int64_t>(s.dims().begin() + 1, s.dims().end()));
}

// Runs `layer` on x through a one-layer functional model (inference mode).
Tensor run(const LayerPtr& layer, const Tensor& x) {
  KTensor in = Input(without_batch(x.shape()), x.dtype());
  return (*Model::create({in}, {(*layer)(in)}))(x);
}
Tensor run(const LayerPtr& layer, const std::vector<Tensor>& xs) {
  std::vector<KTensor> ins;
  for (const Tensor& x : xs) ins.push_back(Input(without_batch(x.shape()), x.dtype()));
  auto model = Model::create(ins, (*layer)(ins));
  return model->predict_on_batch(xs)[0];
}

Tensor iota(const Shape& s, float start = 1.0f, float step = 1.0f) {
  Tensor t(s, DType::kF32);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = start + step * static_cast<float>(i);
  return t;
}
Tensor f32(std::vector<float> v, const Shape& s) { return Tensor::from_vector<float>(v, s); }

void set_weight(Layer& l, const std::string& name, const Tensor& t) {
  for (Weight& w : l.weights())
    if (w.name == name) {
      ASSERT_EQ(w.value.shape(), t.shape()) << name;
      w.value.copy_from(t);
      return;
    }
  FAIL() << l.name() << " has no weight " << name;
}

// to_config -> from_config gives the same config, and with the weights copied, the same output.
void expect_round_trip(const LayerPtr& layer, const std::vector<Tensor>& xs) {
  SCOPED_TRACE(layer->class_name());
  Tensor y = xs.size() == 1 ? run(layer, xs[0]) : run(layer, xs);
  const Json cfg = layer_to_config(*layer);
  LayerPtr copy = layer_from_config(Json::parse(cfg.dump()));  // through text, as a file would
  EXPECT_EQ(copy->class_name(), layer->class_name());
  EXPECT_EQ(layer_to_config(*copy), cfg) << cfg.dump();
  // Build the copy, then give it the original's weights.
  (void)(xs.size() == 1 ? run(copy, xs[0]) : run(copy, xs));
  ASSERT_EQ(copy->weights().size(), layer->weights().size());
  for (size_t i = 0; i < copy->weights().size(); ++i) {
    EXPECT_EQ(copy->weights()[i].name, layer->weights()[i].name);
    copy->weights()[i].value.copy_from(layer->weights()[i].value);
  }
  Tensor y2 = xs.size() == 1 ? run(copy, xs[0]) : run(copy, xs);
  EXPECT_TRUE(tensors_equal(y2, y));
}

Shape symbolic_out(const LayerPtr& layer, const Shape& in, DType dtype = DType::kF32) {
  return (*layer)(Input(in, dtype)).shape();
}

// ---------------------------------------------------------------- table: every layer ----

struct LayerCase {
  std::string what;
  std::function<LayerPtr()> make;
  std::vector<Shape> inputs;         // without batch; may hold kUnknown for the symbolic check
  Shape want;                        // symbolic output shape (batch unknown)
  int64_t params;                    // Keras count_params()
  std::vector<Shape> concrete = {};  // shapes for the run/round trip when `inputs` has unknowns
  DType dtype = DType::kF32;
};

std::vector<LayerCase> all_cases() {
  const int64_t U = kUnknown;
  return {
      {"Conv1D",
       [] { return Conv1D(4, 3, {.activation = "relu"}); },
       {{10, 2}},
       {U, 8, 4},
       3 * 2 * 4 + 4},
      {"Conv1D causal dilated",
       [] { return Conv1D(2, 2, {.padding = "causal", .dilation_rate = 2, .use_bias = false}); },
       {{7, 3}},
       {U, 7, 2},
       2 * 3 * 2},
      {"Conv1D same strided unknown steps",
       [] { return Conv1D(3, 4, {.strides = 2, .padding = "same"}); },
       {{U, 2}},
       {U, U, 3},
       4 * 2 * 3 + 3,
       {{9, 2}}},
      {"Conv2D", [] { return Conv2D(32, 3); }, {{28, 28, 1}}, {U, 26, 26, 32}, 320},
      {"Conv2D same strided grouped",
       [] {
         return Conv2D(8, {3, 2}, {.strides = {2, 1}, .padding = "SAME", .groups = 2});
       },
       {{7, 5, 4}},
       {U, 4, 5, 8},
       3 * 2 * 2 * 8 + 8},
      {"DepthwiseConv2D",
       [] { return DepthwiseConv2D(3, {.depth_multiplier = 2}); },
       {{8, 8, 3}},
       {U, 6, 6, 6},
       3 * 3 * 3 * 2 + 6},
      {"SeparableConv2D",
       [] { return SeparableConv2D(4, 3, {.padding = "same"}); },
       {{5, 5, 3}},
       {U, 5, 5, 4},
       27 + 12 + 4},
      {"MaxPooling1D", [] { return MaxPooling1D(); }, {{9, 3}}, {U, 4, 3}, 0},
      {"AveragePooling1D same",
       [] { return AveragePooling1D(3, {.strides = 2, .padding = "same"}); },
       {{9, 3}},
       {U, 5, 3},
       0},
      {"MaxPooling2D", [] { return MaxPooling2D(); }, {{28, 28, 3}}, {U, 14, 14, 3}, 0},
      {"AveragePooling2D",
       [] {
         return AveragePooling2D({3, 2}, {.strides = 1});
       },
       {{5, 4, 2}},
       {U, 3, 3, 2},
       0},
      {"GlobalAveragePooling1D",
       [] { return GlobalAveragePooling1D(); },
       {{U, 3}},
       {U, 3},
       0,
       {{4, 3}}},
      {"GlobalMaxPooling1D keepdims",
       [] { return GlobalMaxPooling1D({.keepdims = true}); },
       {{4, 3}},
       {U, 1, 3},
       0},
      {"GlobalAveragePooling2D keepdims",
       [] { return GlobalAveragePooling2D({.keepdims = true}); },
       {{4, 5, 3}},
       {U, 1, 1, 3},
       0},
      {"GlobalMaxPooling2D", [] { return GlobalMaxPooling2D(); }, {{4, 5, 3}}, {U, 3}, 0},
      {"Flatten", [] { return Flatten(); }, {{3, 4, 5}}, {U, 60}, 0},
      {"Reshape",
       [] {
         return Reshape({-1, 4});
       },
       {{2, 6}},
       {U, 3, 4},
       0},
      {"ZeroPadding2D",
       [] {
         return ZeroPadding2D({1, 0, 2, 3});
       },
       {{2, 3, 1}},
       {U, 3, 8, 1},
       0},
      {"Add", [] { return Add(); }, {{3, 4}, {3, 4}, {1, 4}}, {U, 3, 4}, 0},
      {"Multiply", [] { return Multiply(); }, {{3, 4}, {4}}, {U, 3, 4}, 0},
      {"Concatenate", [] { return Concatenate(); }, {{3, 4}, {3, 2}}, {U, 3, 6}, 0},
      {"Concatenate axis 1",
       [] { return Concatenate({.axis = 1}); },
       {{3, 4}, {U, 4}},
       {U, U, 4},
       0,
       {{3, 4}, {2, 4}}},
      {"Embedding",
       [] { return Embedding(10, 4, {.mask_zero = true}); },
       {{5}},
       {U, 5, 4},
       40,
       {},
       DType::kS32},
  };
}

Tensor case_input(const Shape& no_batch, DType dtype, Rng& rng) {
  std::vector<int64_t> d{2};
  d.insert(d.end(), no_batch.dims().begin(), no_batch.dims().end());
  if (dtype != DType::kF32) return testing::random_int_tensor(Shape(d), rng, 0, 9, dtype);
  return testing::random_tensor(Shape(d), rng);
}

TEST(Layers, SymbolicShapeParamsAndConfigRoundTripOfEveryLayer) {
  Rng rng(3);
  for (const LayerCase& c : all_cases()) {
    SCOPED_TRACE(c.what);
    reset_layer_names();
    LayerPtr layer = c.make();
    std::vector<KTensor> ins;
    for (const Shape& s : c.inputs) ins.push_back(Input(s, c.dtype));
    std::vector<KTensor> outs = (*layer)(ins);
    ASSERT_EQ(outs.size(), 1u);
    EXPECT_EQ(outs[0].shape(), c.want);
    EXPECT_EQ(layer->count_params(true) + layer->count_params(false), c.params);
    std::vector<Tensor> xs;
    for (const Shape& s : c.concrete.empty() ? c.inputs : c.concrete)
      xs.push_back(case_input(s, c.dtype, rng));
    // A fresh layer for the round trip (the one above was built for the symbolic shapes).
    expect_round_trip(c.make(), xs);
  }
}

TEST(Layers, KerasDefaultNamesAndConfigs) {
  reset_layer_names();
  EXPECT_EQ(Conv2D(8, 3)->name(), "conv2d");
  EXPECT_EQ(Conv2D(8, 3)->name(), "conv2d_1");
  EXPECT_EQ(MaxPooling2D()->name(), "max_pooling2d");
  EXPECT_EQ(GlobalAveragePooling1D()->name(), "global_average_pooling1d");
  EXPECT_EQ(DepthwiseConv2D(3)->name(), "depthwise_conv2d");
  EXPECT_EQ(Concatenate()->name(), "concatenate");
  Json c = Conv2D(16, 3, {.name = "c"})->get_config();
  EXPECT_EQ(c["kernel_size"], Json::array({3, 3}));
  EXPECT_EQ(c["strides"], Json::array({1, 1}));
  EXPECT_EQ(c["dilation_rate"], Json::array({1, 1}));
  EXPECT_EQ(c["padding"], "valid");
  EXPECT_EQ(c["data_format"], "channels_last");
  EXPECT_EQ(c["groups"], 1);
  EXPECT_EQ(c["activation"], "linear");
  EXPECT_EQ(c["kernel_initializer"], "glorot_uniform");
  Json p = MaxPooling1D(3)->get_config();
  EXPECT_EQ(p["pool_size"], Json::array({3}));
  EXPECT_EQ(p["strides"], Json::array({3}));  // strides default = pool_size
  Json e = Embedding(7, 2)->get_config();
  EXPECT_EQ(e["embeddings_initializer"], "uniform");
  EXPECT_EQ(e["mask_zero"], false);
  EXPECT_EQ(ZeroPadding2D({1, 2})->get_config()["padding"], Json::parse("[[1,1],[2,2]]"));
}

TEST(Layers, FromKerasStyleConfigs) {
  // Keras writes initializers as objects, activation may be null, ints may be bare.
  Json j = Json::parse(R"({"class_name": "Conv2D", "config": {"name": "k", "filters": 2,
      "kernel_size": 3, "strides": [2, 2], "padding": "same", "data_format": "channels_last",
      "activation": null, "kernel_initializer": {"module": "keras.initializers",
      "class_name": "HeNormal", "config": {"seed": null}}, "bias_initializer": {"class_name": "Zeros"}}})");
  LayerPtr l = layer_from_config(j);
  Json c = l->get_config();
  EXPECT_EQ(c["kernel_size"], Json::array({3, 3}));
  EXPECT_EQ(c["activation"], "linear");
  EXPECT_EQ(c["kernel_initializer"], "he_normal");
  EXPECT_EQ(c["bias_initializer"], "zeros");
  Json z =
      Json::parse(R"({"class_name": "ZeroPadding2D", "config": {"padding": [[1, 0], [0, 2]]}})");
  EXPECT_EQ(layer_from_config(z)->get_config()["padding"], Json::parse("[[1,0],[0,2]]"));
  expect_throws_with<ValueError>(
      [] {
        layer_from_config(Json::parse(
            R"({"class_name": "MaxPooling2D", "config": {"pool_size": 2, "data_format": "channels_first"}})"));
      },
      "expected 'channels_last' but found 'channels_first'");
  expect_throws_with<ValueError>(
      [] {
        layer_from_config(Json::parse(R"({"class_name": "Conv1D", "config": {"kernel_size": 3}})"));
      },
      "bad config for Conv1D");
}

// ---------------------------------------------------------------- convolutions ----

TEST(Conv2DLayer, HandComputedValidWithBiasAndActivation) {
  LayerPtr conv = Conv2D(2, 2, {.activation = "relu"});
  Tensor x = iota({1, 3, 3, 1});  // 1..9
  (void)run(conv, x);
  // filter 0: all ones; filter 1: -1 on the top-left tap only.
  Tensor k = Tensor::zeros({2, 2, 1, 2});
  for (int i = 0; i < 4; ++i) k.data<float>()[i * 2] = 1.0f;
  k.data<float>()[1] = -1.0f;
  set_weight(*conv, "kernel", k);
  set_weight(*conv, "bias", f32({0.5f, 2.5f}, {2}));
  // windows sum 12, 16, 24, 28; top-left taps 1, 2, 4, 5 -> relu(2.5 - t) = 1.5, 0.5, 0, 0
  EXPECT_TRUE(tensors_near(
      run(conv, x), f32({12.5f, 1.5f, 16.5f, 0.5f, 24.5f, 0, 28.5f, 0}, {1, 2, 2, 2}), 1e-6, 0));
}

TEST(Conv2DLayer, SamePaddingPutsTheExtraCellAtTheEnd) {
  // 4x4 input of ones, kernel 2x2 of ones, stride 1, same: pad (0, 1) per dim, so the last row
  // and column see half (or a quarter) of the window.
  LayerPtr conv = Conv2D(1, 2, {.padding = "same", .use_bias = false});
  Tensor x = Tensor::full({1, 4, 4, 1}, 1.0);
  (void)run(conv, x);
  set_weight(*conv, "kernel", Tensor::full({2, 2, 1, 1}, 1.0));
  Tensor y = run(conv, x);
  EXPECT_EQ(y.at<float>({0, 0, 0, 0}), 4.0f);
  EXPECT_EQ(y.at<float>({0, 3, 0, 0}), 2.0f);
  EXPECT_EQ(y.at<float>({0, 0, 3, 0}), 2.0f);
  EXPECT_EQ(y.at<float>({0, 3, 3, 0}), 1.0f);
}

TEST(Conv2DLayer, GroupsConvolveChannelGroupsSeparately) {
  LayerPtr conv = Conv2D(2, 1, {.groups = 2, .use_bias = false});
  Tensor x = f32({3, 5}, {1, 1, 1, 2});
  (void)run(conv, x);
  set_weight(*conv, "kernel", f32({10, 100}, {1, 1, 1, 2}));  // group g: channel g -> filter g
  EXPECT_TRUE(tensors_equal(run(conv, x), f32({30, 500}, {1, 1, 1, 2})));
}

TEST(Conv1DLayer, CausalDilatedSeesOnlyThePast) {
  // y[t] = 1 * x[t-2] + 10 * x[t] (x = 0 before the start).
  LayerPtr conv = Conv1D(1, 2, {.padding = "causal", .dilation_rate = 2, .use_bias = false});
  Tensor x = iota({1, 5, 1});
  (void)run(conv, x);
  set_weight(*conv, "kernel", f32({1, 10}, {2, 1, 1}));
  EXPECT_TRUE(tensors_equal(run(conv, x), f32({10, 20, 31, 42, 53}, {1, 5, 1})));
}

TEST(DepthwiseConv2DLayer, OutputChannelIsChannelTimesMultiplierPlusM) {
  LayerPtr dw = DepthwiseConv2D(1, {.depth_multiplier = 2});
  Tensor x = f32({1, 2}, {1, 1, 1, 2});
  (void)run(dw, x);
  set_weight(*dw, "depthwise_kernel", f32({10, 20, 30, 40}, {1, 1, 2, 2}));  // [c][m]
  set_weight(*dw, "bias", f32({0, 0, 0, 1}, {4}));
  EXPECT_TRUE(tensors_equal(run(dw, x), f32({10, 20, 60, 81}, {1, 1, 1, 4})));
}

TEST(SeparableConv2DLayer, DepthwiseThenPointwiseThenBias) {
  LayerPtr sep = SeparableConv2D(1, 1);
  Tensor x = f32({1, 2}, {1, 1, 1, 2});
  (void)run(sep, x);
  ASSERT_EQ(sep->weights().size(), 3u);
  EXPECT_EQ(sep->weights()[1].name, "pointwise_kernel");
  set_weight(*sep, "depthwise_kernel", f32({2, 3}, {1, 1, 2, 1}));   // -> [2, 6]
  set_weight(*sep, "pointwise_kernel", f32({1, 10}, {1, 1, 2, 1}));  // -> 2 + 60
  set_weight(*sep, "bias", f32({0.5f}, {1}));
  EXPECT_TRUE(tensors_equal(run(sep, x), f32({62.5f}, {1, 1, 1, 1})));
  // On a larger input: the same as the two ops composed by hand.
  Rng rng(7);
  LayerPtr sep2 = SeparableConv2D(3, 3, {.strides = 2, .padding = "same", .depth_multiplier = 2});
  Tensor x2 = testing::random_tensor({2, 7, 6, 3}, rng);
  Tensor y2 = run(sep2, x2);
  Tensor want = ops::conv2d(ops::depthwise_conv2d(x2, sep2->weights()[0].value,
                                                  {{"strides", {2, 2}}, {"padding", "same"}}),
                            sep2->weights()[1].value) +
                sep2->weights()[2].value;
  EXPECT_TRUE(tensors_near(y2, want, 1e-5, 1e-5));
}

TEST(ConvLayers, BadArgumentsAndInputs) {
  expect_throws_with<ValueError>([] { Conv2D(0, 3); },
                                 "argument 'filters': expected >= 1 but found 0");
  expect_throws_with<ValueError>(
      [] {
        Conv2D(4, {3, 3, 3});
      },
      "argument 'kernel_size': expected an int or 2 ints");
  expect_throws_with<ValueError>([] { Conv2D(4, 3, {.strides = 2, .dilation_rate = 2}); },
                                 "strides > 1 together with dilation_rate > 1");
  expect_throws_with<ValueError>([] { Conv2D(4, 3, {.padding = "causal"}); },
                                 "expected 'valid' or 'same' but found 'causal'");
  expect_throws_with<ValueError>([] { Conv2D(5, 3, {.groups = 2}); },
                                 "expected a multiple of groups=2");
  expect_throws_with<ValueError>([] { Conv1D(4, 3, {.activation = "nope"}); },
                                 "unknown name 'nope'");
  expect_throws_with<ValueError>([] { DepthwiseConv2D(3, {.depth_multiplier = 0}); },
                                 "depth_multiplier");

  reset_layer_names();
  expect_throws_with<ShapeError>(
      [] {
        (*Conv2D(4, 3))(Input({28, 28}));
      },
      "conv2d (Conv2D): expected rank 4 [batch, height, width, channels] but found "
      "input shape [?,28,28]");
  expect_throws_with<ShapeError>(
      [] {
        (*Conv1D(4, 3))(Input({8, kUnknown}));
      },
      "a known channel dim");
  expect_throws_with<ShapeError>(
      [] {
        (*Conv2D(4, 3, {.groups = 2}))(Input({8, 8, 3}));
      },
      "input channels divisible by groups=2");
  expect_throws_with<ShapeError>(
      [] {
        (*Conv2D(4, 5))(Input({4, 8, 1}));
      },
      "expected spatial dims of at least 5");
  // Reuse on another channel count: the layer was built for 3 channels.
  LayerPtr conv = Conv2D(4, 3);
  (void)(*conv)(Input({8, 8, 3}));
  expect_throws_with<ShapeError>(
      [&] {
        (*conv)(Input({8, 8, 4}));
      },
      "but the layer was built for [?,8,8,3]");
  // Eager: a tensor of the wrong rank fed to a model.
  KTensor in = Input({8, 8, 3});
  auto model = Model::create({in}, {(*Conv2D(2, 3))(in)});
  expect_throws_with<ShapeError>(
      [&] {
        (*model)(Tensor::zeros({8, 8, 3}));
      },
      "expects shape [?,8,8,3]");
}

// ---------------------------------------------------------------- pooling ----

TEST(PoolingLayers, HandComputedValues) {
  Tensor x = iota({1, 4, 4, 1}, 0);  // 0..15
  EXPECT_TRUE(tensors_equal(run(MaxPooling2D(), x), f32({5, 7, 13, 15}, {1, 2, 2, 1})));
  EXPECT_TRUE(
      tensors_equal(run(AveragePooling2D(), x), f32({2.5f, 4.5f, 10.5f, 12.5f}, {1, 2, 2, 1})));
  // same, 3x3 windows of stride 2 on 4x4: pad (0, 1) per dim; windows clipped to the input.
  Tensor same_max = run(MaxPooling2D(3, {.strides = 2, .padding = "same"}), x);
  EXPECT_TRUE(tensors_equal(same_max, f32({10, 11, 14, 15}, {1, 2, 2, 1})));
  Tensor same_avg = run(AveragePooling2D(3, {.strides = 2, .padding = "same"}), x);
  // bottom-right window holds cells 10, 11, 14, 15 only: average over 4 valid cells
  EXPECT_NEAR(same_avg.at<float>({0, 1, 1, 0}), 12.5f, 1e-6);
  EXPECT_NEAR(same_avg.at<float>({0, 0, 0, 0}), 5.0f, 1e-6);  // 0,1,2,4,5,6,8,9,10
  Tensor s = f32({1, 3, 2, 5, 4}, {1, 5, 1});
  EXPECT_TRUE(tensors_equal(run(MaxPooling1D(2, {.strides = 1}), s), f32({3, 3, 5, 5}, {1, 4, 1})));
  EXPECT_TRUE(tensors_equal(run(AveragePooling1D(), s), f32({2, 3.5f}, {1, 2, 1})));
  EXPECT_TRUE(tensors_equal(run(AveragePooling1D(2, {.padding = "same"}), s),
                            f32({2, 3.5f, 4}, {1, 3, 1})));
}

TEST(PoolingLayers, GlobalPoolingPerChannel) {
  Tensor x2 = iota({1, 2, 2, 2});  // channel 0: 1,3,5,7; channel 1: 2,4,6,8
  EXPECT_TRUE(tensors_equal(run(GlobalAveragePooling2D(), x2), f32({4, 5}, {1, 2})));
  EXPECT_TRUE(
      tensors_equal(run(GlobalMaxPooling2D({.keepdims = true}), x2), f32({7, 8}, {1, 1, 1, 2})));
  Tensor x1 = iota({1, 3, 2});  // channel 0: 1,3,5; channel 1: 2,4,6
  EXPECT_TRUE(
      tensors_equal(run(GlobalAveragePooling1D({.keepdims = true}), x1), f32({3, 4}, {1, 1, 2})));
  EXPECT_TRUE(tensors_equal(run(GlobalMaxPooling1D(), x1), f32({5, 6}, {1, 2})));
}

TEST(PoolingLayers, Errors) {
  expect_throws_with<ValueError>([] { MaxPooling2D(0); },
                                 "argument 'pool_size': expected values >= 1");
  expect_throws_with<ValueError>([] { AveragePooling1D(2, {.padding = "full"}); },
                                 "but found 'full'");
  expect_throws_with<ShapeError>([] { (*MaxPooling2D())(Input({4, 4})); }, "expected rank 4");
  expect_throws_with<ShapeError>(
      [] {
        (*MaxPooling1D(5))(Input({4, 2}));
      },
      "spatial dims of at least pool_size");
  expect_throws_with<ShapeError>(
      [] {
        (*GlobalAveragePooling1D())(Input({4, 4, 2}));
      },
      "expected rank 3");
}

// ---------------------------------------------------------------- reshaping ----

TEST(ReshapingLayers, FlattenIsRowMajorChannelsLast) {
  Tensor x = iota({2, 2, 3, 2});
  Tensor y = run(Flatten(), x);
  EXPECT_TRUE(tensors_equal(y, x.reshape({2, 12})));
  EXPECT_EQ(symbolic_out(Flatten(), {5}), Shape({kUnknown, 5}));
  EXPECT_EQ(symbolic_out(Flatten(), {kUnknown, 4}), Shape({kUnknown, kUnknown}));
}

TEST(ReshapingLayers, ReshapeResolvesMinusOneAndChecksSizes) {
  Tensor x = iota({2, 12});
  EXPECT_TRUE(tensors_equal(run(Reshape({3, -1}), x), x.reshape({2, 3, 4})));
  EXPECT_EQ(symbolic_out(Reshape({2, 3, 2}), {12}), Shape({kUnknown, 2, 3, 2}));
  EXPECT_EQ(symbolic_out(Reshape({4}), {2, 2}), Shape({kUnknown, 4}));
  expect_throws_with<ValueError>([] { Reshape({-1, -1}); }, "at most one -1");
  expect_throws_with<ValueError>([] { Reshape({0, 3}); }, "expected positive dims");
  expect_throws_with<ShapeError>(
      [] { (*Reshape({5}))(Input({12})); },
      "expected a size matching target_shape [5] but found input shape [?,12]");
  expect_throws_with<ShapeError>([] { (*Reshape({5, -1}))(Input({12})); }, "target_shape [5,-1]");
  expect_throws_with<ShapeError>(
      [] {
        (*Reshape({-1}))(Input({kUnknown, 3}));
      },
      "to resolve the -1");
}

TEST(ReshapingLayers, ZeroPadding2D) {
  Tensor x = f32({1, 2, 3, 4}, {1, 2, 2, 1});
  Tensor y = run(ZeroPadding2D(), x);
  ASSERT_EQ(y.shape(), Shape({1, 4, 4, 1}));
  EXPECT_EQ(y.at<float>({0, 0, 0, 0}), 0.0f);
  EXPECT_EQ(y.at<float>({0, 1, 1, 0}), 1.0f);
  EXPECT_EQ(y.at<float>({0, 2, 2, 0}), 4.0f);
  EXPECT_EQ(y.at<float>({0, 3, 3, 0}), 0.0f);
  Tensor z = run(ZeroPadding2D({1, 0, 0, 2}), x);  // ((top 1, bottom 0), (left 0, right 2))
  EXPECT_TRUE(tensors_equal(z, f32({0, 0, 0, 0, 1, 2, 0, 0, 3, 4, 0, 0}, {1, 3, 4, 1})));
  expect_throws_with<ValueError>(
      [] {
        ZeroPadding2D({1, 2, 3});
      },
      "expected 1, 2 (h, w) or 4 (t, b, l, r)");
  expect_throws_with<ValueError>([] { ZeroPadding2D(-1); }, "expected values >= 0");
  expect_throws_with<ShapeError>([] { (*ZeroPadding2D())(Input({3, 3})); }, "expected rank 4");
}

// ---------------------------------------------------------------- merging ----

TEST(MergeLayers, AddMultiplyConcatenateValues) {
  Tensor a = f32({1, 2, 3, 4}, {2, 2}), b = f32({10, 20, 30, 40}, {2, 2}),
         c = f32({1, 1, 2, 2}, {2, 2});
  EXPECT_EQ(Add()->num_inputs(), -1);
  EXPECT_TRUE(tensors_equal(run(Add(), {a, b, c}), f32({12, 23, 35, 46}, {2, 2})));
  EXPECT_TRUE(tensors_equal(run(Multiply(), {a, b}), f32({10, 40, 90, 160}, {2, 2})));
  EXPECT_TRUE(tensors_equal(run(Concatenate(), {a, b}), f32({1, 2, 10, 20, 3, 4, 30, 40}, {2, 4})));
  // Keras broadcasting: size-1 dims, and lower-rank inputs aligned on the right.
  Tensor seq = iota({1, 3, 2});
  Tensor row = f32({100, 200}, {1, 2});
  EXPECT_TRUE(
      tensors_equal(run(Add(), {seq, row}), f32({101, 202, 103, 204, 105, 206}, {1, 3, 2})));
  Tensor col = f32({1, 2, 3}, {1, 3, 1});
  EXPECT_TRUE(tensors_equal(run(Multiply(), {seq, col}), f32({1, 2, 6, 8, 15, 18}, {1, 3, 2})));
}

TEST(MergeLayers, ShapeErrors) {
  reset_layer_names();
  expect_throws_with<ShapeError>(
      [] {
        (*Add())({Input({3}), Input({4})});
      },
      "add (Add): expected inputs whose non-batch dims are equal or 1 but found shapes "
      "[?,3], [?,4]");
  expect_throws_with<ShapeError>(
      [] {
        (*Multiply())({Input({2, 3}), Input({3, 3})});
      },
      "equal or 1");
  expect_throws_with<ShapeError>(
      [] {
        (*Concatenate())({Input({2, 3}), Input({3, 3})});
      },
      "dims match except on axis -1 but found shapes [?,2,3], [?,3,3]");
  expect_throws_with<ShapeError>(
      [] {
        (*Concatenate())({Input({2, 3}), Input({3})});
      },
      "of one rank");
  expect_throws_with<ValueError>(
      [] {
        (*Concatenate({.axis = 3}))({Input({2}), Input({2})});
      },
      "argument 'axis'");
  // A built merge layer reused on other shapes.
  LayerPtr add = Add();
  (void)(*add)({Input({3}), Input({3})});
  expect_throws_with<ShapeError>([&] { (*add)({Input({5}), Input({5})}); }, "built for");
}

// ---------------------------------------------------------------- embedding ----

TEST(EmbeddingLayer, LooksUpRowsForIntegerAndFloatIds) {
  LayerPtr emb = Embedding(4, 2);
  Tensor ids = Tensor::from_vector<int32_t>({3, 0, 1, 3}, {2, 2});
  (void)run(emb, ids);
  ASSERT_EQ(emb->weights()[0].name, "embeddings");
  // The default initializer is U(-0.05, 0.05).
  for (float v : emb->weights()[0].value.span<float>()) EXPECT_LE(std::abs(v), 0.05f);
  set_weight(*emb, "embeddings", f32({0, 1, 10, 11, 20, 21, 30, 31}, {4, 2}));
  Tensor want = f32({30, 31, 0, 1, 10, 11, 30, 31}, {2, 2, 2});
  EXPECT_TRUE(tensors_equal(run(emb, ids), want));
  EXPECT_TRUE(tensors_equal(run(emb, ids.to(DType::kS64)), want));
  // f32 ids truncate toward zero, as Keras' cast to int32.
  EXPECT_TRUE(tensors_equal(run(emb, f32({3.7f, 0.2f, 1.0f, 3.0f}, {2, 2})), want));
}

TEST(EmbeddingLayer, OutOfRangeIdsAreAValueErrorBeforeTheGraphRuns) {
  reset_layer_names();
  LayerPtr emb = Embedding(10, 3);
  KTensor in = Input({4}, DType::kS32);
  auto model = Model::create({in}, {(*Dense(2))((*emb)(in))});
  Tensor ok = Tensor::from_vector<int32_t>({0, 9, 3, 4}, {1, 4});
  EXPECT_EQ((*model)(ok).shape(), Shape({1, 4, 2}));
  expect_throws_with<ValueError>(
      [&] {
        (*model)(Tensor::from_vector<int32_t>({0, 1, 10, 2}, {1, 4}));
      },
      "embedding (Embedding): expected ids in [0, 10) (input_dim) but found 10 at flat "
      "position 2 of input shape [1,4]");
  expect_throws_with<ValueError>(
      [&] {
        (*model)(Tensor::from_vector<int32_t>({0, -1, 1, 2}, {1, 4}));
      },
      "but found -1 at flat position 1");
  EXPECT_THROW(model->validate_inputs({Tensor::from_vector<int32_t>({0, 1, 99, 2}, {1, 4})}),
               ValueError);
  // Inside a nested model too.
  KTensor outer_in = Input({4}, DType::kS32);
  // (Model::operator()(Tensor) hides the functional call of Layer.)
  auto outer = Model::create({outer_in}, {static_cast<Layer&>(*model)(outer_in)});
  expect_throws_with<ValueError>(
      [&] {
        (*outer)(Tensor::from_vector<int32_t>({0, 1, 12, 2}, {1, 4}));
      },
      "but found 12");
  // Ids of a non-integer, non-f32 dtype.
  expect_throws_with<DTypeError>([] { (*Embedding(3, 2))(Input({2}, DType::kBool)); },
                                 "expected integer (or f32) ids");
}

// ---------------------------------------------------------------- functional models ----

TEST(FunctionalModels, ResidualAddAndASharedLayer) {
  reset_layer_names();
  set_random_seed(11);
  KTensor a = Input({4}, DType::kF32, "a"), b = Input({4}, DType::kF32, "b");
  LayerPtr shared = Dense(4, {.name = "shared"});
  KTensor ha = (*shared)(a), hb = (*shared)(b);
  KTensor res = (*Add({.name = "residual"}))({a, ha});  // a + shared(a)
  KTensor out = (*Concatenate())({res, hb});
  auto model = Model::create({a, b}, {out});
  EXPECT_EQ(out.shape(), Shape({kUnknown, 8}));
  // One set of weights: the shared layer appears once and its parameters count once.
  EXPECT_EQ(model->layers().size(), 5u);  // a, b, shared, residual, concatenate
  EXPECT_EQ(model->count_params_total(true), 4 * 4 + 4);
  EXPECT_EQ(model->named_weights().size(), 2u);
  // One traced graph binds one variable per weight, used by both calls.
  Graph g;
  CallContext ctx(g, false);
  model->trace(g, ctx);
  EXPECT_EQ(g.variables().size(), 2u);

  Rng rng(2);
  Tensor xa = testing::random_tensor({3, 4}, rng), xb = testing::random_tensor({3, 4}, rng);
  Tensor y = model->predict_on_batch({xa, xb})[0];
  const Tensor& w = shared->weights()[0].value;
  const Tensor& bias = shared->weights()[1].value;
  Tensor want = ops::concat(
      std::vector<Tensor>{xa + (ops::matmul(xa, w) + bias), ops::matmul(xb, w) + bias}, 1);
  EXPECT_TRUE(tensors_near(y, want, 1e-6, 1e-6));
  // Changing the one weight changes both branches.
  shared->weights()[1].value.fill(1.0);
  Tensor y2 = model->predict_on_batch({xa, xb})[0];
  Tensor want2 = ops::concat(
      std::vector<Tensor>{xa + (ops::matmul(xa, w) + 1.0), ops::matmul(xb, w) + 1.0}, 1);
  EXPECT_TRUE(tensors_near(y2, want2, 1e-6, 1e-6));
}

TEST(FunctionalModels, SmallResidualCnnSummary) {
  reset_layer_names();
  KTensor in = Input({8, 8, 3});
  KTensor h = (*Conv2D(3, 3, {.padding = "same", .activation = "relu"}))(in);
  h = (*Add())({in, h});
  h = (*MaxPooling2D())(h);
  h = (*SeparableConv2D(8, 3))(h);  // 4x4 -> 2x2
  h = (*GlobalAveragePooling2D())(h);
  KTensor out = (*Dense(10))(h);
  auto model = Model::create({in}, {out});
  EXPECT_EQ(out.shape(), Shape({kUnknown, 10}));
  // conv 3*3*3*3+3 = 84; separable 27 + 24 + 8 = 59; dense 8*10+10 = 90
  EXPECT_EQ(model->count_params_total(true), 84 + 59 + 90);
  std::string s = model->summary();
  EXPECT_NE(s.find("(None, 4, 4, 3)"), std::string::npos) << s;
  EXPECT_NE(s.find("separable_conv2d (Separable"), std::string::npos) << s;  // column is cut
  Rng rng(4);
  EXPECT_EQ((*model)(testing::random_tensor({2, 8, 8, 3}, rng)).shape(), Shape({2, 10}));
}

TEST(FunctionalModels, ConvGradientsFlowToEveryWeight) {
  // Training through conv, pooling, reshape and merge layers: every weight gets a gradient
  // (finite, and nonzero for this input).
  reset_layer_names();
  set_random_seed(5);
  KTensor in = Input({6, 6, 2});
  KTensor a = (*Conv2D(4, 3, {.padding = "same"}))(in);
  KTensor b = (*DepthwiseConv2D(3, {.padding = "same", .depth_multiplier = 2}))(in);
  KTensor h = (*Concatenate())({a, b});
  h = (*AveragePooling2D())(h);
  h = (*Flatten())(h);
  KTensor out = (*Dense(1))(h);
  auto model = Model::create({in}, {out});
  Graph g;
  CallContext ctx(g, true);
  auto t = model->trace(g, ctx);
  Value loss = ops::sum(ops::square(t.outputs[0]));
  std::vector<Value> vars = g.variables(true);
  ASSERT_EQ(vars.size(), 6u);
  std::vector<Value> grads = gradients(loss, vars);
  Executor ex(g, grads);
  Rng rng(8);
  auto out_grads = ex.run({{t.inputs[0], testing::random_tensor({2, 6, 6, 2}, rng)}});
  for (size_t i = 0; i < out_grads.size(); ++i) {
    double norm = 0;
    for (float v : out_grads[i].span<float>()) norm += static_cast<double>(v) * v;
    EXPECT_GT(norm, 0) << vars[i].name();
    EXPECT_TRUE(std::isfinite(norm)) << vars[i].name();
  }
}

}  // namespace
}  // namespace lowbit::nn
