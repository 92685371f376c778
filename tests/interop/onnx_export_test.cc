// lowbit -> ONNX export (include/lowbit/interop/onnx_export.h), checked in the real ONNX Runtime
// (tests/testing/ort.h): float models give lowbit's predict within 1e-4; QAT models exported as
// QDQ give lowbit's integer runtime (quant::convert_to_integer) within one output step on
// >= 99.9% of the elements and the same top-1 on >= 99.9% of the inputs. Also the graph's
// structure (one Transpose into NCHW after the input, per-axis weight DequantizeLinear) and the
// refusals.
#include "lowbit/interop/onnx_export.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "lowbit/fixed_point.h"
#include "lowbit/nn/layers.h"
#include "lowbit/nn/losses.h"
#include "lowbit/nn/optimizers.h"
#include "lowbit/quant/convert.h"
#include "lowbit/quant/quantize_model.h"
#include "testing/convert_testing.h"
#include "testing/op_testing.h"
#include "testing/ort.h"

namespace lowbit {
namespace {

using quant::Rounding;
using testing::expect_throws_with;
using testing::random_tensor;
using testing::tensors_near;

// f32 ONNX Runtime vs lowbit: the same math in another summation order (and ORT's fused
// kernels: Conv+Add, Gemm): a few ulps of values of order 1-10.
constexpr double kFloatAtol = 1e-4, kFloatRtol = 1e-4;

int64_t count_ops(const onnx::ModelProto& p, const std::string& op) {
  int64_t n = 0;
  for (const onnx::NodeProto& node : p.graph.node) n += node.op_type == op;
  return n;
}

// Exports m, runs it in ORT on x, returns ORT's first output.
Tensor run_exported(const nn::Model& m, const Tensor& x, const std::string& stem,
                    onnx::ModelProto* proto = nullptr) {
  const std::string dir = testing::fresh_temp_dir(stem);
  const std::string path = dir + "/model.onnx";
  onnx::export_onnx(m, path);
  if (proto) *proto = onnx::to_onnx(m);
  std::vector<Tensor> out = testing::run_onnxruntime(path, {x}, dir);
  // LOWBIT_KEEP_ONNX=1 keeps the exported file (and ORT's inputs and outputs) for inspection.
  if (std::getenv("LOWBIT_KEEP_ONNX"))
    std::printf("kept %s\n", path.c_str());
  else
    std::filesystem::remove_all(dir);
  EXPECT_EQ(out.size(), m.outputs().size());
  return out.at(0);
}

void expect_float_export(nn::Model& m, const Shape& in, const std::string& stem,
                         onnx::ModelProto* proto = nullptr) {
  Rng rng(11);
  std::vector<int64_t> d = in.dims();
  d.insert(d.begin(), 5);
  const Tensor x = random_tensor(Shape(d), rng, -2.0f, 2.0f);
  const Tensor want = m.predict(x);
  const Tensor got = run_exported(m, x, stem, proto);
  EXPECT_TRUE(tensors_near(got, want, kFloatAtol, kFloatRtol));
}

// Non-trivial batch norm statistics (a fresh layer has mean 0, variance 1).
void randomize_batch_norms(nn::Model& m) {
  Rng rng(5);
  for (const nn::LayerPtr& l : m.layers())
    if (l->class_name() == "BatchNormalization")
      for (nn::Weight& w : l->weights()) {
        const bool var = w.name == "moving_variance" || w.name == "gamma";
        w.value.copy_from(
            random_tensor(w.value.shape(), rng, var ? 0.5f : -0.5f, var ? 2.0f : 0.5f));
      }
}

TEST(OnnxExportFloat, Mlp) {
  nn::set_random_seed(1);
  auto m =
      nn::Sequential::create({nn::InputSpec({12}), nn::Dense(16, {.activation = "relu"}),
                              nn::Dropout(0.3), nn::Dense(8, {.activation = "tanh"}),
                              nn::BatchNormalization(), nn::Dense(4, {.activation = "softmax"})});
  randomize_batch_norms(*m);
  onnx::ModelProto p;
  expect_float_export(*m, {12}, "onnx_export_mlp", &p);
  EXPECT_EQ(count_ops(p, "Gemm"), 3);
  EXPECT_EQ(count_ops(p, "Transpose"), 0);
  ASSERT_EQ(p.graph.input.size(), 1u);
  EXPECT_EQ(p.graph.input[0].dims[0].dim_param, "N");
  EXPECT_EQ(p.graph.input[0].dims[1].dim_value, 12);
}

// A CNN with a residual Add, batch norm, ReLU6, pooling and a Flatten into Dense: one Transpose
// to NCHW after the input and one back before the Flatten (lowbit's NHWC flatten order).
TEST(OnnxExportFloat, CnnWithResidual) {
  nn::set_random_seed(2);
  nn::KTensor x = nn::Input({10, 9, 3}, DType::kF32, "image");
  nn::KTensor a = (*nn::Conv2D(8, 3, {.padding = "same", .activation = "relu"}))(x);
  nn::KTensor b = (*nn::Conv2D(8, {3, 2}, {.padding = "same", .dilation_rate = {2, 1}}))(a);
  nn::KTensor s = (*nn::Add())({a, b});
  s = (*nn::BatchNormalization())(s);
  s = (*nn::ReLU({.max_value = 6.0}))(s);
  s = (*nn::MaxPooling2D(2, {.padding = "same"}))(s);
  s = (*nn::Conv2D(6, 3, {.strides = 2, .padding = "same", .activation = "hard_sigmoid"}))(s);
  s = (*nn::Flatten())(s);
  s = (*nn::Dense(5))(s);
  auto m = nn::Model::create({x}, {s}, "cnn_residual");
  randomize_batch_norms(*m);
  onnx::ModelProto p;
  expect_float_export(*m, {10, 9, 3}, "onnx_export_cnn", &p);
  EXPECT_EQ(count_ops(p, "Transpose"), 2);
  EXPECT_EQ(count_ops(p, "Conv"), 3);
  EXPECT_EQ(p.graph.input.at(0).name, "image");
  EXPECT_EQ(p.graph.node.at(0).op_type, "Transpose");
}

TEST(OnnxExportFloat, DepthwiseSeparableAndMerges) {
  nn::set_random_seed(3);
  nn::KTensor x = nn::Input({11, 12, 4});
  nn::KTensor d = (*nn::DepthwiseConv2D(
      3, {.strides = 2, .padding = "same", .depth_multiplier = 2, .activation = "relu6"}))(x);
  nn::KTensor p = (*nn::ZeroPadding2D(nn::Ints{1, 0, 2, 1}))(d);
  nn::KTensor s = (*nn::SeparableConv2D(
      6, 3, {.padding = "valid", .depth_multiplier = 2, .activation = "swish"}))(p);
  nn::KTensor t = (*nn::Conv2D(6, 1, {.activation = "sigmoid"}))(s);
  nn::KTensor u = (*nn::Multiply())({s, t});
  nn::KTensor c = (*nn::Concatenate())({u, s});
  c = (*nn::AveragePooling2D(2, {.strides = 1, .padding = "same"}))(c);
  nn::KTensor g = (*nn::GlobalAveragePooling2D())(c);
  nn::KTensor o = (*nn::Dense(3, {.activation = "softmax"}))(g);
  auto m = nn::Model::create({x}, {o}, "depthwise_separable");
  onnx::ModelProto pr;
  expect_float_export(*m, {11, 12, 4}, "onnx_export_dw", &pr);
  EXPECT_EQ(count_ops(pr, "Transpose"), 1);  // GlobalAveragePool + Flatten need none back
}

TEST(OnnxExportFloat, Conv1DAndReshape) {
  nn::set_random_seed(4);
  nn::KTensor x = nn::Input({16, 3});
  nn::KTensor a =
      (*nn::Conv1D(5, 3, {.padding = "causal", .dilation_rate = 2, .activation = "elu"}))(x);
  nn::KTensor b = (*nn::Conv1D(5, 4, {.strides = 2, .padding = "same"}))(a);
  b = (*nn::MaxPooling1D(2))(b);
  nn::KTensor r = (*nn::Reshape({4, -1}))(b);
  r = (*nn::Dense(3, {.activation = "leaky_relu"}))(r);  // rank 3: MatMul + Add
  nn::KTensor f = (*nn::Flatten())(r);
  nn::KTensor g = (*nn::GlobalMaxPooling1D())(a);
  nn::KTensor o = (*nn::Concatenate())({f, g});
  auto m = nn::Model::create({x}, {o}, "conv1d");
  onnx::ModelProto p;
  expect_float_export(*m, {16, 3}, "onnx_export_conv1d", &p);
  EXPECT_EQ(count_ops(p, "MatMul"), 1);
}

// LSTM (Keras gates i, f, c, o reordered to ONNX's i, o, f, c), GRU with and without
// reset_after (linear_before_reset), SimpleRNN with its state.
TEST(OnnxExportFloat, Recurrent) {
  nn::set_random_seed(6);
  nn::KTensor x = nn::Input({7, 5});
  nn::KTensor a = (*nn::LSTM(6, {.return_sequences = true}))(x);
  nn::KTensor b = (*nn::GRU(4, {.return_sequences = true}))(a);
  nn::KTensor c = (*nn::GRU(3, {.reset_after = false}))(b);
  nn::KTensor back = (*nn::LSTM(3, {.go_backwards = true}))(a);
  std::vector<nn::KTensor> r =
      (*nn::SimpleRNN(3, {.return_state = true}))(std::vector<nn::KTensor>{b});
  nn::KTensor o = (*nn::Concatenate())({c, r.at(0), r.at(1), back});
  auto m = nn::Model::create({x}, {o}, "recurrent");
  // Non-zero biases (the initializer leaves them at zero, the LSTM's forget block at one).
  Rng rng(9);
  for (const nn::LayerPtr& l : m->layers())
    for (nn::Weight& w : l->weights())
      if (w.name == "bias") w.value.copy_from(random_tensor(w.value.shape(), rng, -0.5f, 0.5f));
  onnx::ModelProto p;
  expect_float_export(*m, {7, 5}, "onnx_export_rnn", &p);
  EXPECT_EQ(count_ops(p, "LSTM"), 2);
  EXPECT_EQ(count_ops(p, "GRU"), 2);
  EXPECT_EQ(count_ops(p, "RNN"), 1);
}

// ---- QAT -> QDQ ---------------------------------------------------------------------------

std::pair<Tensor, Tensor> few_mnist(int64_t n) {
  const MnistSplit& t = testing::mnist().train;
  std::vector<int64_t> xd = t.images.shape().dims(), yd = t.labels.shape().dims();
  xd[0] = yd[0] = n;
  return {Tensor::wrap(t.images.raw(), Shape(xd), t.images.dtype()),
          Tensor::wrap(t.labels.raw(), Shape(yd), t.labels.dtype())};
}

// Enough training that the logits of most images are not near ties (a one-step difference then
// rarely changes the top class).
constexpr int64_t kTrainImages = 2048;

nn::ModelPtr trained_qat(bool depthwise, const std::string& preset) {
  nn::set_random_seed(7);
  std::vector<nn::LayerPtr> layers{
      nn::InputSpec({28, 28, 1}), nn::Conv2D(8, 3, {.padding = "same", .use_bias = false}),
      nn::BatchNormalization({.momentum = 0.9}), nn::ReLU(), nn::MaxPooling2D(2)};
  if (depthwise) {
    layers.push_back(nn::DepthwiseConv2D(3, {.padding = "same", .use_bias = false}));
    layers.push_back(nn::BatchNormalization({.momentum = 0.9}));
    layers.push_back(nn::ReLU({.max_value = 6.0}));
    layers.push_back(nn::Conv2D(16, 1, {.activation = "relu"}));
    layers.push_back(nn::AveragePooling2D(2));
  } else {
    layers.push_back(nn::Conv2D(16, 3, {.strides = {2, 2}, .padding = "same"}));
    layers.push_back(nn::ReLU());
  }
  for (nn::LayerPtr l : {nn::Flatten(), nn::Dense(32, {.activation = "relu"}), nn::Dense(10)})
    layers.push_back(l);
  auto m = nn::Sequential::create(layers, depthwise ? "dw_cnn" : "small_cnn");
  const auto [x, y] = few_mnist(kTrainImages);
  m->compile({.optimizer = nn::Adam({.learning_rate = 2e-3}),
              .loss = nn::SparseCategoricalCrossentropy({.from_logits = true})});
  m->fit(x, y, {.epochs = 2, .batch_size = 64, .verbose = 0});
  nn::ModelPtr q = quant::quantize_model(*m, quant::QuantizeConfig::preset(preset));
  q->compile({.optimizer = nn::Adam({.learning_rate = 5e-4}),
              .loss = nn::SparseCategoricalCrossentropy({.from_logits = true})});
  q->fit(x, y, {.epochs = 1, .batch_size = 64, .verbose = 0});
  return q;
}

// The grid step of the integer model's output (the code tensor its f32 output dequantizes).
double output_step(const quant::IntegerModel& im) {
  for (const quant::IntegerOp& op : im.ops)
    if (op.output == im.output) return im.tensors.at(op.inputs.at(0)).scale.at(0);
  ADD_FAILURE() << "no op writes the integer model's output";
  return 0;
}

struct Agreement {
  double equal = 0, within_one = 0, top1 = 0, max_steps = 0;
};

Agreement compare_qdq(nn::Model& qat, const std::string& stem, onnx::ModelProto* proto,
                      Rounding rounding = Rounding::kSingle) {
  const Tensor& all = testing::mnist().test.images;
  const int64_t n = 1000;
  std::vector<int64_t> xd = all.shape().dims();
  xd[0] = n;
  const Tensor x = Tensor::wrap(all.raw(), Shape(xd), all.dtype());
  quant::IntegerModel im =
      quant::convert_to_integer(qat, quant::ConvertOptions{.rounding = rounding});
  const Tensor want = im.predict(x);
  const Tensor got = run_exported(qat, x, stem, proto);
  const double step = output_step(im);
  Agreement a;
  int64_t ok = 0, same = 0, eq = 0;
  for (int64_t e = 0; e < want.numel(); ++e) {
    const double d = std::abs(got.data<float>()[e] - want.data<float>()[e]) / step;
    a.max_steps = std::max(a.max_steps, d);
    ok += d <= 1.0 + 1e-3;
    eq += d <= 1e-3;
  }
  for (int64_t r = 0; r < n; ++r)
    same += testing::argmax_row(got, r) == testing::argmax_row(want, r);
  a.within_one = static_cast<double>(ok) / want.numel();
  a.equal = static_cast<double>(eq) / want.numel();
  a.top1 = static_cast<double>(same) / n;
  std::printf(
      "%s (%s rounding): %.2f%% equal, %.4f%% of %lld outputs within 1 step of lowbit's integer "
      "runtime (max "
      "%.2f "
      "steps), top-1 agreement %.2f%% of %lld images\n",
      stem.c_str(), rounding == Rounding::kSingle ? "single" : "double", 100 * a.equal,
      100 * a.within_one, static_cast<long long>(want.numel()), a.max_steps, 100 * a.top1,
      static_cast<long long>(n));
  return a;
}

TEST(OnnxExportQdq, CnnW8a8AgreesWithIntegerRuntime) {
  nn::ModelPtr q = trained_qat(false, "w8a8");
  onnx::ModelProto p;
  const Agreement a = compare_qdq(*q, "onnx_export_qdq_cnn", &p);
  EXPECT_GE(a.within_one, 0.999);
  EXPECT_GE(a.top1, 0.999);
  // Weights: int8 codes with per-channel DequantizeLinear on the output-channel axis (0 of
  // OIHW, 1 of Gemm's [K, N]); biases int32 codes on axis 0.
  int64_t kernels = 0, biases = 0;
  for (const onnx::NodeProto& n : p.graph.node)
    if (n.op_type == "DequantizeLinear")
      for (const onnx::AttributeProto& at : n.attribute)
        if (at.name == "axis") {
          const bool kernel = n.name.find("kernel") != std::string::npos;
          const bool dense = n.name.find("dense") != std::string::npos;
          (kernel ? kernels : biases)++;
          EXPECT_EQ(at.i, kernel && dense ? 1 : 0) << n.name;
        }
  EXPECT_EQ(kernels, 4);  // two convs, two denses
  EXPECT_EQ(biases, 4);
  for (const onnx::TensorProto& t : p.graph.initializer)
    if (t.name.find("bias_quantized") != std::string::npos) {
      EXPECT_EQ(t.data_type, onnx::kInt32) << t.name;
    }
  EXPECT_GE(count_ops(p, "QuantizeLinear"), 5);
  // lowbit's default (gemmlowp double rounding) differs from ORT's float requantization by one
  // step a little more often.
  const Agreement d = compare_qdq(*q, "onnx_export_qdq_cnn", nullptr, Rounding::kDouble);
  EXPECT_GE(d.within_one, 0.999);
}

TEST(OnnxExportQdq, DepthwiseW4a8AgreesWithIntegerRuntime) {
  nn::ModelPtr q = trained_qat(true, "w4a8");
  onnx::ModelProto p;
  const Agreement a = compare_qdq(*q, "onnx_export_qdq_dw", &p);
  EXPECT_GE(a.within_one, 0.999);
  EXPECT_GE(a.top1, 0.999);
  // 4-bit weights: int8 codes within [-7, 7].
  for (const onnx::TensorProto& t : p.graph.initializer)
    if (t.name.find("kernel_quantized") != std::string::npos) {
      ASSERT_EQ(t.data_type, onnx::kInt8) << t.name;
      for (char ch : t.raw_data) {
        EXPECT_GE(static_cast<int8_t>(ch), -7) << t.name;
        EXPECT_LE(static_cast<int8_t>(ch), 7) << t.name;
      }
    }
}

// 2-bit LSQ weights (codes [-2, 1], int8 in the file) and 4-bit activations (a Clip to the
// grid's range before each QuantizeLinear).
TEST(OnnxExportQdq, LowBitPresetsAgreeWithIntegerRuntime) {
  for (const char* preset : {"w2a8", "w4a4"}) {
    SCOPED_TRACE(preset);
    nn::ModelPtr q = trained_qat(false, preset);
    onnx::ModelProto p;
    const Agreement a = compare_qdq(*q, std::string("onnx_export_qdq_") + preset, &p);
    EXPECT_GE(a.within_one, 0.999);
    EXPECT_GE(a.top1, 0.999);
    if (std::string(preset) == "w4a4") {
      EXPECT_GE(count_ops(p, "Clip"), 4);
    }
  }
}

// A residual CNN (Add of two conv branches, global average pooling) as QDQ.
TEST(OnnxExportQdq, ResidualW8a8AgreesWithIntegerRuntime) {
  nn::set_random_seed(8);
  nn::KTensor x = nn::Input({28, 28, 1});
  nn::KTensor a = (*nn::Conv2D(8, 3, {.strides = 2, .padding = "same", .activation = "relu"}))(x);
  nn::KTensor b = (*nn::Conv2D(8, 3, {.padding = "same", .activation = "relu"}))(a);
  nn::KTensor s = (*nn::Add())({a, b});
  s = (*nn::Conv2D(16, 3, {.strides = 2, .padding = "same", .activation = "relu"}))(s);
  s = (*nn::GlobalAveragePooling2D())(s);
  s = (*nn::Dense(10))(s);
  auto m = nn::Model::create({x}, {s}, "residual");
  const auto [xs, ys] = few_mnist(kTrainImages);
  m->compile({.optimizer = nn::Adam({.learning_rate = 3e-3}),
              .loss = nn::SparseCategoricalCrossentropy({.from_logits = true})});
  m->fit(xs, ys, {.epochs = 2, .batch_size = 64, .verbose = 0});
  nn::ModelPtr q = quant::quantize_model(*m, quant::QuantizeConfig::preset("w8a8"));
  q->compile({.optimizer = nn::Adam({.learning_rate = 5e-4}),
              .loss = nn::SparseCategoricalCrossentropy({.from_logits = true})});
  q->fit(xs, ys, {.epochs = 1, .batch_size = 64, .verbose = 0});
  onnx::ModelProto p;
  const Agreement ag = compare_qdq(*q, "onnx_export_qdq_residual", &p);
  EXPECT_GE(ag.within_one, 0.999);
  EXPECT_GE(ag.top1, 0.999);
  EXPECT_EQ(count_ops(p, "Add"), 1);
}

// A ReLU before a FakeQuant whose grid starts at real 0 changes no code: the export drops it so
// that ONNX Runtime fuses DQ -> Conv -> Q into QLinearConv. The short training here leaves the
// post-ReLU ranges below 0 (they start at the preset's initial range), so the test moves their
// minimum to 0 (the integer model is converted from the same ranges).
TEST(OnnxExportQdq, ReluBeforeZeroBasedGridDropped) {
  nn::ModelPtr q = trained_qat(false, "w8a8");
  int moved = 0;
  for (const nn::LayerPtr& l : q->layers())
    if (l->class_name() == "FakeQuant" && l->name() != "input_layer_quant")
      for (nn::Weight& w : l->weights())
        if (w.name.size() >= 3 && w.name.compare(w.name.size() - 3, 3, "min") == 0) {
          w.value.fill(0.0);
          ++moved;
        }
  ASSERT_GE(moved, 3);
  onnx::ModelProto p;
  const Agreement a = compare_qdq(*q, "onnx_export_qdq_relu", &p);
  EXPECT_GE(a.within_one, 0.999);
  EXPECT_GE(a.top1, 0.999);
  EXPECT_EQ(count_ops(p, "Relu"), 0);
  EXPECT_EQ(count_ops(p, "Conv"), 2);
}

// ---- Refusals ---------------------------------------------------------------------------------

TEST(OnnxExportErrors, UnsupportedLayerNamed) {
  nn::KTensor x = nn::Input({5, 3});
  nn::KTensor h =
      (*nn::LSTM(4, {.return_sequences = true, .go_backwards = true, .name = "encoder"}))(x);
  auto m = nn::Model::create({x}, {h});
  expect_throws_with<UnsupportedError>(
      [&] { onnx::to_onnx(*m); }, "layer 'encoder' (LSTM): go_backwards with return_sequences");
  nn::KTensor e = (*nn::Embedding(10, 4, {.name = "tokens"}))(nn::Input({5}));
  auto me = nn::Model::create({e.node->inputs[0]}, {e});
  expect_throws_with<UnsupportedError>([&] { onnx::to_onnx(*me); }, "layer 'tokens' (Embedding)");
  nn::KTensor y = (*nn::Dense(2, {.activation = "gelu", .name = "head"}))(nn::Input({3}));
  auto m2 = nn::Model::create({y.node->inputs[0]}, {y});
  expect_throws_with<UnsupportedError>([&] { onnx::to_onnx(*m2); },
                                       "layer 'head' (Dense): activation 'gelu'");
  expect_throws_with<ValueError>([&] { onnx::to_onnx(*m2, {.opset = 11}); }, "opset 11");
}

TEST(OnnxExportErrors, UncalibratedQatRefused) {
  nn::set_random_seed(1);
  auto m = nn::Sequential::create({nn::InputSpec({4}), nn::Dense(3)});
  nn::ModelPtr q = quant::quantize_model(*m, quant::QuantizeConfig::preset("w8a8"));
  expect_throws_with<UnsupportedError>([&] { onnx::to_onnx(*q); }, "not calibrated");
}

}  // namespace
}  // namespace lowbit
