// quantize_model: placement of weight and activation quantizers on the layer DAG (the rules in
// include/lowbit/quant/quantize_model.h), asserted on the structure of the rewritten model.
#include "lowbit/quant/quantize_model.h"

#include <gtest/gtest.h>

#include <functional>
#include <set>

#include "lowbit/nn/layers.h"
#include "testing/model_testing.h"
#include "testing/op_testing.h"

namespace lowbit::quant {
namespace {

using nn::KTensor;

using testing::structure;

template <class L>
std::shared_ptr<L> layer_as(const nn::Model& m, const std::string& name) {
  auto l = std::dynamic_pointer_cast<L>(m.get_layer(name));
  EXPECT_TRUE(l) << name << " is " << m.get_layer(name)->class_name();
  return l;
}

// Functional model: a conv-BN-ReLU stem, a conv layer shared by two calls, a residual Add of
// the stem and the second shared call, pooling and a softmax classifier.
nn::ModelPtr residual_model() {
  nn::reset_layer_names();
  nn::set_random_seed(3);
  KTensor x = nn::Input({8, 8, 3});
  KTensor h = (*nn::Conv2D(8, 3, {.padding = "same", .use_bias = false}))(x);  // conv2d
  h = (*nn::BatchNormalization())(h);
  h = (*nn::ReLU())(h);
  auto shared = nn::Conv2D(8, 3, {.padding = "same", .activation = "relu"});  // conv2d_1
  KTensor a = (*shared)(h);
  KTensor b = (*shared)(a);
  KTensor r = (*nn::Add())(std::vector<KTensor>{h, b}).at(0);
  KTensor p = (*nn::GlobalAveragePooling2D())(r);
  KTensor y = (*nn::Dense(10, {.activation = "softmax"}))(p);
  return nn::Model::create({x}, {y}, "residual");
}

TEST(QuantizeModel, ResidualAddAndSharedLayerPlacement) {
  auto model = residual_model();
  auto q = quantize_model(*model);
  const std::vector<std::string> want = {
      "input_layer:InputLayer",
      "input_layer_quant:FakeQuant<-input_layer",       // model input: all_values
      "conv2d:FoldedConvBatchNorm<-input_layer_quant",  // conv + BN folded, no FQ between
      "re_lu:ReLU<-conv2d",
      "re_lu_quant:FakeQuant<-re_lu",           // after conv+BN+ReLU
      "conv2d_1:QuantizeWrapper<-re_lu_quant",  // shared layer, first call (own relu)
      "conv2d_1_quant:FakeQuant<-conv2d_1",
      "conv2d_1:QuantizeWrapper<-conv2d_1_quant",  // same wrapper, second call
      "conv2d_1_quant_1:FakeQuant<-conv2d_1",      // its own output quantizer
      "add:Add<-re_lu_quant,conv2d_1_quant_1",     // both inputs already quantized
      "add_quant:FakeQuant<-add",
      "global_average_pooling2d:GlobalAveragePooling2D<-add_quant",
      "global_average_pooling2d_quant:FakeQuant<-global_average_pooling2d",  // a mean: new grid
      "dense:QuantizeWrapper<-global_average_pooling2d_quant",
      "dense_quant:FakeQuant<-dense",  // quantized BEFORE softmax
      "dense_softmax:Activation<-dense_quant",
      "dense_softmax_quant:FakeQuant<-dense_softmax",  // softmax's fixed grid (1/256)
  };
  EXPECT_EQ(structure(*q), want);

  // Configs: defaults of issue 4.
  EXPECT_EQ(layer_as<FakeQuantLayer>(*q, "input_layer_quant")->quantizer().config(),
            default_input_quantizer());
  for (const char* name :
       {"re_lu_quant", "conv2d_1_quant", "conv2d_1_quant_1", "add_quant", "dense_quant"})
    EXPECT_EQ(layer_as<FakeQuantLayer>(*q, name)->quantizer().config(),
              default_activation_quantizer())
        << name;
  auto fold = layer_as<FoldedConvBatchNormLayer>(*q, "conv2d");
  EXPECT_EQ(fold->conv()->class_name(), "Conv2D");
  EXPECT_EQ(fold->batch_norm()->name(), "batch_normalization");
  EXPECT_EQ(fold->quantizer().config(), default_weight_quantizer());
  auto shared = layer_as<QuantizeWrapperLayer>(*q, "conv2d_1");
  ASSERT_EQ(shared->quantizers().size(), 1u);
  EXPECT_EQ(shared->quantizer("kernel").config(), default_weight_quantizer());
  auto dense = layer_as<QuantizeWrapperLayer>(*q, "dense");
  EXPECT_EQ(dense->layer()->get_config().at("activation"), "linear");  // softmax split off
  EXPECT_EQ(layer_as<nn::Layer>(*q, "dense_softmax")->get_config().at("activation"), "softmax");

  // One set of weight quantizer state for the shared layer: kernel_min/max over 8 channels.
  int kernel_min = 0;
  for (const auto& w : shared->weights())
    if (w.name == "kernel_min") {
      ++kernel_min;
      EXPECT_EQ(w.value.shape(), Shape({8}));
      EXPECT_FALSE(w.trainable);
    }
  EXPECT_EQ(kernel_min, 1);

  // The float model is untouched and the weights were copied, not shared.
  EXPECT_EQ(model->get_layer("conv2d")->class_name(), "Conv2D");
  const Tensor& fk = model->get_layer("conv2d_1")->weights()[0].value;
  const Tensor& qk = shared->layer()->weights()[0].value;
  EXPECT_FALSE(fk.same_storage(qk));
  EXPECT_EQ(fk.to_vector<float>(), qk.to_vector<float>());
}

TEST(QuantizeModel, SequentialConvBnReluPoolDense) {
  nn::reset_layer_names();
  auto model = nn::Sequential::create(
      {nn::InputSpec({12, 12, 1}), nn::Conv2D(4, 3), nn::BatchNormalization(), nn::ReLU(),
       nn::MaxPooling2D(), nn::Flatten(), nn::Dense(5)},
      "seq");
  auto q = quantize_model(*model);
  const std::vector<std::string> want = {
      "input_layer:InputLayer",
      "input_layer_quant:FakeQuant<-input_layer",
      "conv2d:FoldedConvBatchNorm<-input_layer_quant",
      "re_lu:ReLU<-conv2d",
      "re_lu_quant:FakeQuant<-re_lu",
      "max_pooling2d:MaxPooling2D<-re_lu_quant",
      "flatten:Flatten<-max_pooling2d",
      "dense:QuantizeWrapper<-flatten",
      "dense_quant:FakeQuant<-dense",
  };
  EXPECT_EQ(structure(*q), want);
  EXPECT_EQ(q->class_name(), "Functional");
  // Layer count: the float model's 6 layers, minus the folded BN, plus 3 FakeQuant.
  EXPECT_EQ(q->layers().size(), 9u);

  // Without folding the BN stays inside the pattern: no quantizer between conv and BN.
  QuantizeConfig nofold;
  nofold.fold_batch_norm = false;
  auto q2 = quantize_model(*model, nofold);
  EXPECT_EQ(structure(*q2)[2], "conv2d:QuantizeWrapper<-input_layer_quant");
  EXPECT_EQ(structure(*q2)[3], "batch_normalization:BatchNormalization<-conv2d");
  EXPECT_EQ(structure(*q2)[4], "re_lu:ReLU<-batch_normalization");
  EXPECT_EQ(structure(*q2)[5], "re_lu_quant:FakeQuant<-re_lu");
}

TEST(QuantizeModel, FirstAndLastWeightLayersGetTheirOwnBits) {
  nn::reset_layer_names();
  auto model = nn::Sequential::create(
      {nn::InputSpec({6, 6, 2}), nn::Conv2D(4, 3, {.use_bias = false}), nn::BatchNormalization(),
       nn::ReLU(), nn::Conv2D(4, 3), nn::Flatten(), nn::Dense(5), nn::Dense(3)});
  QuantizeConfig cfg = QuantizeConfig::preset("w2a8");
  ASSERT_EQ(cfg.first_last_weight_bits, 8);
  cfg.overrides["dense"] = {.weight_bits = 3};
  auto q = quantize_model(*model, cfg);
  auto bits = [&](const std::string& name) {
    const nn::LayerPtr l = q->get_layer(name);
    if (auto f = std::dynamic_pointer_cast<FoldedConvBatchNormLayer>(l))
      return f->quantizer().config().bits;
    return std::dynamic_pointer_cast<QuantizeWrapperLayer>(l)->quantizer("kernel").config().bits;
  };
  EXPECT_EQ(bits("conv2d"), 8);    // first (folded with its batch norm)
  EXPECT_EQ(bits("conv2d_1"), 2);  // the preset's bits in between
  EXPECT_EQ(bits("dense"), 3);     // an override wins
  EXPECT_EQ(bits("dense_1"), 8);   // last
  EXPECT_EQ(layer_as<QuantizeWrapperLayer>(*q, "dense_1")->quantizer("kernel").config().scheme,
            "lsq");
  // Skipped layers do not count: the first quantized one gets the bits.
  cfg.overrides.clear();
  cfg.overrides["conv2d"] = {.skip = true};
  EXPECT_EQ(std::dynamic_pointer_cast<QuantizeWrapperLayer>(
                quantize_model(*model, cfg)->get_layer("conv2d_1"))
                ->quantizer("kernel")
                .config()
                .bits,
            8);
  cfg.first_last_weight_bits = 1;
  testing::expect_throws_with<ValueError>([&] { quantize_model(*model, cfg); },
                                          "first_last_weight_bits: expected 2..16 but found 1");
}

TEST(QuantizeModel, PerLayerOverrides) {
  nn::reset_layer_names();
  auto model = nn::Sequential::create({nn::InputSpec({6, 6, 2}),
                                       nn::Conv2D(4, 3, {.activation = "relu"}),  // conv2d
                                       nn::Conv2D(4, 3),                          // conv2d_1
                                       nn::Flatten(), nn::Dense(3)});
  QuantizeConfig cfg;
  cfg.overrides["conv2d"] = {.weight_bits = 4, .activation_bits = 6, .per_channel = false};
  cfg.overrides["conv2d_1"] = {.skip = true};
  cfg.overrides["dense"] = {.weight_bits = 3, .scheme = "none"};
  cfg.overrides["input_layer"] = {.activation_bits = 12};
  auto q = quantize_model(*model, cfg);
  const std::vector<std::string> want = {
      "input_layer:InputLayer",
      "input_layer_quant:FakeQuant<-input_layer",
      "conv2d:QuantizeWrapper<-input_layer_quant",
      "conv2d_quant:FakeQuant<-conv2d",
      "conv2d_1:Conv2D<-conv2d_quant",  // skipped: float, no output quantizer
      "flatten:Flatten<-conv2d_1",
      "dense:QuantizeWrapper<-flatten",
      "dense_quant:FakeQuant<-dense",
  };
  EXPECT_EQ(structure(*q), want);
  QuantizerConfig w = layer_as<QuantizeWrapperLayer>(*q, "conv2d")->quantizer("kernel").config();
  EXPECT_EQ(w.bits, 4);
  EXPECT_FALSE(w.per_channel);
  EXPECT_TRUE(w.symmetric);
  EXPECT_EQ(layer_as<FakeQuantLayer>(*q, "conv2d_quant")->quantizer().config().bits, 6);
  EXPECT_EQ(layer_as<FakeQuantLayer>(*q, "input_layer_quant")->quantizer().config().bits, 12);
  // Per tensor: one range.
  EXPECT_EQ(layer_as<QuantizeWrapperLayer>(*q, "conv2d")
                ->quantizer("kernel")
                .min(*q->get_layer("conv2d"))
                .shape(),
            Shape({}));
  EXPECT_EQ(layer_as<QuantizeWrapperLayer>(*q, "dense")->quantizer("kernel").config().scheme,
            "none");
  // The dense activation quantizer also takes the scheme (it fits activations).
  EXPECT_EQ(layer_as<FakeQuantLayer>(*q, "dense_quant")->quantizer().config().scheme, "none");

  QuantizeConfig typo;
  typo.overrides["conv_2d"] = {.skip = true};
  testing::expect_throws_with<ValueError>([&] { quantize_model(*model, typo); },
                                          "override for 'conv_2d' names no layer");
  QuantizeConfig bad;
  bad.weights.bits = 1;
  testing::expect_throws_with<ValueError>([&] { quantize_model(*model, bad); },
                                          "bits: expected 2..16 but found 1");
  auto twice = [&] { quantize_model(*quantize_model(*model)); };
  testing::expect_throws_with<ValueError>(twice, "is already quantized");
  QuantizeConfig pact_weights;
  pact_weights.weights.scheme = "pact";
  testing::expect_throws_with<ValueError>([&] { quantize_model(*model, pact_weights); },
                                          "'pact' quantizes activations");
}

TEST(QuantizeModel, NoFusionThroughTensorsWithOtherConsumers) {
  nn::reset_layer_names();
  KTensor x = nn::Input({4, 4, 2});
  KTensor c = (*nn::Conv2D(2, 1))(x);                           // conv2d: output used twice
  KTensor bn = (*nn::BatchNormalization())(c);                  // not folded: c has 2 consumers
  KTensor s = (*nn::Add())(std::vector<KTensor>{c, bn}).at(0);  // add
  KTensor r = (*nn::ReLU())(s);                                 // fused with the add
  auto q = quantize_model(*nn::Model::create({x}, {r, bn}));    // bn is also a model output
  const std::vector<std::string> want = {
      "input_layer:InputLayer",
      "input_layer_quant:FakeQuant<-input_layer",
      "conv2d:QuantizeWrapper<-input_layer_quant",
      "conv2d_quant:FakeQuant<-conv2d",
      "batch_normalization:BatchNormalization<-conv2d_quant",
      "batch_normalization_quant:FakeQuant<-batch_normalization",
      "add:Add<-conv2d_quant,batch_normalization_quant",
      "re_lu:ReLU<-add",
      "re_lu_quant:FakeQuant<-re_lu",
  };
  EXPECT_EQ(structure(*q), want);
  ASSERT_EQ(q->outputs().size(), 2u);
  EXPECT_EQ(q->outputs()[1].node->layer->name(), "batch_normalization_quant");
}

TEST(QuantizeModel, MergeInputsConcatenateAndPreQuantizedActivations) {
  nn::reset_layer_names();
  KTensor x = nn::Input({6});
  KTensor d1 = (*nn::Dense(4, {.name = "d1"}))(x);
  KTensor t = (*nn::Activation("tanh", {.name = "t"}))(d1);  // output: fixed parameters
  KTensor d2 = (*nn::Dense(4, {.name = "d2"}))(x);
  KTensor m = (*nn::Multiply({.name = "mul"}))(std::vector<KTensor>{t, d2}).at(0);
  KTensor cat = (*nn::Concatenate({.name = "cat"}))(std::vector<KTensor>{m, t}).at(0);
  auto q = quantize_model(*nn::Model::create({x}, {cat}));
  const std::vector<std::string> want = {
      "input_layer:InputLayer",
      "input_layer_quant:FakeQuant<-input_layer",
      "d1:QuantizeWrapper<-input_layer_quant",
      "d1_quant:FakeQuant<-d1",
      "t:Activation<-d1_quant",
      "t_quant:FakeQuant<-t",  // the Multiply's unquantized input
      "d2:QuantizeWrapper<-input_layer_quant",
      "d2_quant:FakeQuant<-d2",
      "mul:Multiply<-t_quant,d2_quant",
      "mul_quant:FakeQuant<-mul",
      "cat:Concatenate<-mul_quant,t_quant",  // no input quantizers of its own
      "cat_quant:FakeQuant<-cat",
  };
  EXPECT_EQ(structure(*q), want);
}

TEST(QuantizeModel, NestedModelsAreFlattenedAndEmbeddingIdsStayRaw) {
  nn::reset_layer_names();
  KTensor ids = nn::Input({5}, DType::kS32, "ids");
  KTensor e = (*nn::Embedding(10, 4))(ids);
  KTensor inner_in = nn::Input({5, 4}, DType::kF32, "inner_in");
  KTensor inner_out = (*nn::Dense(3, {.activation = "relu", .name = "inner_dense"}))(inner_in);
  auto inner = nn::Model::create({inner_in}, {inner_out}, "inner");
  KTensor y = inner->nn::Layer::operator()(e);
  auto q = quantize_model(*nn::Model::create({ids}, {y}));
  const std::vector<std::string> want = {
      "ids:InputLayer",
      "embedding:QuantizeWrapper<-ids",          // s32 ids: no input quantizer
      "inner_dense:QuantizeWrapper<-embedding",  // flattened; embedding rows are grid values
      "inner_dense_quant:FakeQuant<-inner_dense",
  };
  EXPECT_EQ(structure(*q), want);
  EXPECT_EQ(layer_as<QuantizeWrapperLayer>(*q, "embedding")->quantizers().count("embeddings"), 1u);
}

TEST(QuantizeModel, SimpleRNNGetsWeightAndOutputQuantizers) {
  // SimpleRNN keeps the wrapper (float recurrence); LSTM and GRU become QuantizedLSTM/GRU
  // (tests/quant/recurrent_test.cc).
  nn::reset_layer_names();
  nn::set_random_seed(2);
  KTensor ids = nn::Input({7}, DType::kS32, "ids");
  KTensor e = (*nn::Embedding(12, 4))(ids);
  KTensor h = (*nn::SimpleRNN(5))(e);
  KTensor y = (*nn::Dense(2))(h);
  auto q = quantize_model(*nn::Model::create({ids}, {y}));
  const std::vector<std::string> want = {
      "ids:InputLayer",
      "embedding:QuantizeWrapper<-ids",
      "simple_rnn:QuantizeWrapper<-embedding",
      "simple_rnn_quant:FakeQuant<-simple_rnn",
      "dense:QuantizeWrapper<-simple_rnn_quant",
      "dense_quant:FakeQuant<-dense",
  };
  EXPECT_EQ(structure(*q), want);
  auto rnn = layer_as<QuantizeWrapperLayer>(*q, "simple_rnn");
  EXPECT_EQ(rnn->quantizers().size(), 2u);  // kernel and recurrent_kernel, not the bias
  EXPECT_EQ(rnn->quantizer("recurrent_kernel").min(*rnn).shape(), Shape({5}));
  Tensor x = Tensor::zeros({3, 7}, DType::kS32);
  for (int64_t i = 0; i < 21; ++i) x.data<int32_t>()[i] = static_cast<int32_t>(i % 12);
  Tensor out = (*q)(x, {.training = true});
  EXPECT_EQ(out.shape(), Shape({3, 2}));
  EXPECT_EQ(rnn->weights().back().name, "step");
  EXPECT_EQ(rnn->weights().back().value.item<int64_t>(), 1);
}

TEST(QuantizeModel, DepthwiseAndSeparableKernelsArePerOutputChannel) {
  nn::reset_layer_names();
  nn::set_random_seed(6);
  auto model = nn::Sequential::create(
      {nn::InputSpec({6, 6, 3}), nn::DepthwiseConv2D(3, {.depth_multiplier = 2}),
       nn::SeparableConv2D(5, 3, {.depth_multiplier = 2, .activation = "relu"})});
  auto q = quantize_model(*model);
  const std::vector<std::string> want = {
      "input_layer:InputLayer",
      "input_layer_quant:FakeQuant<-input_layer",
      "depthwise_conv2d:QuantizeWrapper<-input_layer_quant",
      "depthwise_conv2d_quant:FakeQuant<-depthwise_conv2d",
      "separable_conv2d_depthwise:QuantizeWrapper<-depthwise_conv2d_quant",
      "separable_conv2d_depthwise_quant:FakeQuant<-separable_conv2d_depthwise",
      "separable_conv2d:QuantizeWrapper<-separable_conv2d_depthwise_quant",
      "separable_conv2d_quant:FakeQuant<-separable_conv2d",
  };
  EXPECT_EQ(structure(*q), want);
  auto dw = layer_as<QuantizeWrapperLayer>(*q, "depthwise_conv2d");
  // [3, 3, 3, 2] feeds 3 * 2 output channels: one range each.
  EXPECT_EQ(dw->quantizer("depthwise_kernel").min(*dw).shape(), Shape({6}));
  // The SeparableConv2D is split (TF-MOT): its depthwise part, then a 1x1 Conv2D.
  auto sep_dw = layer_as<QuantizeWrapperLayer>(*q, "separable_conv2d_depthwise");
  EXPECT_EQ(sep_dw->quantizer("depthwise_kernel").min(*sep_dw).shape(), Shape({12}));
  auto sep = layer_as<QuantizeWrapperLayer>(*q, "separable_conv2d");
  EXPECT_EQ(sep->layer()->class_name(), "Conv2D");
  EXPECT_EQ(sep->quantizer("kernel").min(*sep).shape(), Shape({5}));
  // Output channel c*M + m of the depthwise kernel has the range of w[:, :, c, m].
  const Tensor k = dw->layer()->weights()[0].value;
  const Tensor kmax = dw->quantizer("depthwise_kernel").max(*dw);
  for (int64_t c = 0; c < 3; ++c)
    for (int64_t m = 0; m < 2; ++m) {
      float mx = 0;
      for (int64_t i = 0; i < 9; ++i)
        mx = std::max(mx, std::abs(k.data<float>()[i * 6 + c * 2 + m]));
      EXPECT_EQ(kmax.data<float>()[c * 2 + m], mx);  // symmetric narrow: [-max|w|, max|w|]
    }
  Tensor x = Tensor::full({2, 6, 6, 3}, 0.5);
  EXPECT_EQ((*q)(x, {.training = true}).shape(), Shape({2, 2, 2, 5}));
}

TEST(QuantizeModel, ConfigsRoundTripThroughJson) {
  QuantizerConfig c{.scheme = "torch", .bits = 5, .per_channel = true, .range = "minmax"};
  EXPECT_EQ(quantizer_config_from_json(to_json(c)), c);
  testing::expect_throws_with<ValueError>(
      [] {
        quantizer_config_from_json(Json{{"bitz", 3}});
      },
      "unknown field 'bitz'");
  EXPECT_EQ(describe(default_weight_quantizer()), "tf 8-bit sym narrow per-channel last_value");
  EXPECT_EQ(QuantizeConfig::preset("w2a8").weights.scheme, "lsq");
  EXPECT_EQ(QuantizeConfig::preset("w4a4").activations.bits, 4);
  testing::expect_throws_with<ValueError>([] { QuantizeConfig::preset("w3a3"); }, "w8a8");
}

}  // namespace
}  // namespace lowbit::quant
