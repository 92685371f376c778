// ONNX interop of integer models (include/lowbit/interop/onnx_integer.h): a w8a8 CNN (conv +
// batch norm + ReLU, depthwise conv, residual Add, max and average pool, Flatten, Dense,
// softmax) and an MLP, trained briefly on 512 MNIST images with QAT and converted, exported as
// QDQ and QOperator and run in ONNX Runtime: codes within 1 LSB of the IntegerModel's on
// >= 99.9% of outputs, same top-1 on >= 99.9% of inputs; the uint8 scheme; the QDQ round
// trip (export -> import: bit-exact outputs); PyTorch's QDQ file (tests/interop/models/
// qdq_torch_cnn.onnx, make_qdq_models.py) imported and compared with ONNX Runtime; refusals.
#include "lowbit/interop/onnx_integer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "lowbit/data/idx.h"
#include "lowbit/nn/layers.h"
#include "lowbit/nn/losses.h"
#include "lowbit/nn/optimizers.h"
#include "lowbit/quant/convert.h"
#include "lowbit/quant/quantize_model.h"
#include "lowbit/rng.h"
#include "testing/op_testing.h"
#include "testing/ort.h"

namespace lowbit {
namespace {

struct Data {
  Tensor train_x, train_y, test_x;
};
const Data& data() {
  static const Data d = [] {
    const MnistSplit train = load_mnist(testing::shared_dir() + "/data", true);
    const MnistSplit test = load_mnist(testing::shared_dir() + "/data", false);
    Data r;
    r.train_x = Tensor::wrap(train.images.raw(), {512, 28, 28, 1}, DType::kF32).clone();
    r.train_y = Tensor::wrap(train.labels.raw(), {512}, train.labels.dtype()).clone();
    r.test_x = Tensor::wrap(test.images.raw(), {1000, 28, 28, 1}, DType::kF32).clone();
    return r;
  }();
  return d;
}

nn::ModelPtr train_qat(nn::ModelPtr f) {
  const auto compile = [](nn::Model& m, double lr) {
    m.compile({.optimizer = nn::Adam({.learning_rate = lr}),
               .loss = nn::SparseCategoricalCrossentropy({.from_logits = false})});
  };
  compile(*f, 2e-3);
  f->fit(data().train_x, data().train_y, {.epochs = 1, .batch_size = 64, .verbose = 0});
  auto q = quant::quantize_model(*f, quant::QuantizeConfig::preset("w8a8"));
  compile(*q, 5e-4);
  q->fit(data().train_x, data().train_y, {.epochs = 1, .batch_size = 64, .verbose = 0});
  return q;
}

nn::Model& cnn_qat() {
  static const nn::ModelPtr q = [] {
    nn::reset_layer_names();
    nn::set_random_seed(31);
    nn::KTensor in = nn::Input({28, 28, 1});
    nn::KTensor x = (*nn::Conv2D(8, 3, {.strides = 2, .padding = "same", .use_bias = false}))(in);
    x = (*nn::ReLU())((*nn::BatchNormalization({.momentum = 0.9}))(x));
    x = (*nn::MaxPooling2D(2))(x);  // 7x7x8
    nn::KTensor h = (*nn::DepthwiseConv2D(3, {.padding = "same", .activation = "relu"}))(x);
    h = (*nn::Conv2D(8, 1))(h);
    x = (*nn::ReLU({.max_value = 6.0}))((*nn::Add())({x, h}));
    x = (*nn::AveragePooling2D(2))(x);  // 3x3x8
    x = (*nn::Flatten())(x);
    x = (*nn::Dense(16, {.activation = "relu"}))(x);
    nn::KTensor y = (*nn::Dense(10, {.activation = "softmax"}))(x);
    return train_qat(nn::Model::create({in}, {y}, "onnx_int_cnn"));
  }();
  return *q;
}

nn::Model& mlp_qat() {
  static const nn::ModelPtr q = [] {
    nn::reset_layer_names();
    nn::set_random_seed(32);
    nn::KTensor in = nn::Input({28, 28, 1});
    nn::KTensor x = (*nn::Flatten())(in);
    x = (*nn::Dense(32, {.activation = "relu"}))(x);
    nn::KTensor y = (*nn::Dense(10))(x);
    return train_qat(nn::Model::create({in}, {y}, "onnx_int_mlp"));
  }();
  return *q;
}

// Output codes of a and b (f32 dequantized on the grid of `scale`): fraction within one code,
// fraction of rows with the same top-1.
struct Agreement {
  double within_1lsb = 0, top1 = 0, exact = 0;
};
Agreement agreement(const Tensor& a, const Tensor& b, double scale) {
  EXPECT_EQ(a.shape(), b.shape());
  Agreement r;
  const int64_t n = a.shape()[0], c = a.numel() / std::max<int64_t>(n, 1);
  int64_t ok = 0, same = 0, eq = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double d = std::abs(a.data<float>()[i] - b.data<float>()[i]) / scale;
    ok += d <= 1.01;
    eq += d < 0.01;
  }
  for (int64_t i = 0; i < n; ++i) {
    const float* pa = a.data<float>() + i * c;
    const float* pb = b.data<float>() + i * c;
    same += std::max_element(pa, pa + c) - pa == std::max_element(pb, pb + c) - pb;
  }
  r.within_1lsb = static_cast<double>(ok) / static_cast<double>(a.numel());
  r.exact = static_cast<double>(eq) / static_cast<double>(a.numel());
  r.top1 = static_cast<double>(same) / static_cast<double>(n);
  return r;
}

double output_scale(const quant::IntegerModel& im) {
  for (const quant::IntegerOp& op : im.ops)
    if (op.output == im.output) return op.attrs.f("scale");
  return 1;
}

// The IntegerModel's tensor the ONNX output is computed from and, when that is a softmax or
// sigmoid, the logits before it (which it amplifies: one code of a logit moves several
// probability codes, so the softmax is compared on the rows whose logits ORT computed equal).
struct Tail {
  int last = -1, logits = -1;
};
Tail tail_of(const quant::IntegerModel& im) {
  Tail t;
  for (const quant::IntegerOp& op : im.ops)
    if (op.output == im.output) t.last = op.inputs[0];
  for (const quant::IntegerOp& op : im.ops)
    if (op.output == t.last && (op.op == "qsoftmax" || op.op == "qlogistic"))
      t.logits = op.inputs[0];
  return t;
}

// Exports im, runs it in ORT on the MNIST test images, and compares: the logits codes (if the
// model ends in a softmax) and the output within 1 LSB on >= 99.9% of elements (the output on
// the rows whose logits agree), top-1 (of the logits) on >= 99.9% of inputs.
void expect_ort_agrees(quant::IntegerModel& im, onnx::IntegerFormat format,
                       const std::string& stem) {
  const std::string dir = testing::fresh_temp_dir(stem);
  const std::string path = dir + "/model.onnx";
  onnx::ModelProto m = onnx::integer_to_onnx(im, {.format = format});
  const Tail tail = tail_of(im);
  if (tail.logits >= 0) {
    onnx::ValueInfoProto v;
    v.name = im.tensors[tail.logits].name;
    v.elem_type = im.tensors[tail.logits].dtype == DType::kU8 ? onnx::kUint8 : onnx::kInt8;
    m.graph.output.push_back(v);
  }
  onnx::write_model(path, m);
  const Tensor& x = data().test_x;
  const Tensor want = im.predict(x);
  const std::vector<Tensor> got = testing::run_onnxruntime(path, {x}, dir);
  ASSERT_EQ(got.size(), tail.logits >= 0 ? 2u : 1u);
  const double scale = output_scale(im);
  if (tail.logits < 0) {
    const Agreement a = agreement(got[0], want, scale);
    std::printf(
        "[ %s ] ORT vs IntegerModel output: %.4f%% within 1 LSB (%.4f%% equal), top-1 %.4f%%\n",
        stem.c_str(), 100 * a.within_1lsb, 100 * a.exact, 100 * a.top1);
    EXPECT_GE(a.within_1lsb, 0.999);
    EXPECT_GE(a.top1, 0.999);
    return;
  }
  const Tensor mine = im.run_all(x)[tail.logits].to(DType::kF32);
  const Tensor theirs = got[1].to(DType::kF32);
  const Agreement l = agreement(theirs, mine, 1.0);
  // The output on the rows whose logits codes are equal.
  const int64_t n = want.shape()[0], c = want.numel() / n, lc = mine.numel() / n;
  int64_t rows = 0, ok = 0, eq = 0;
  for (int64_t r = 0; r < n; ++r) {
    bool same = true;
    for (int64_t k = 0; k < lc; ++k)
      same = same && mine.data<float>()[r * lc + k] == theirs.data<float>()[r * lc + k];
    if (!same) continue;
    ++rows;
    for (int64_t k = 0; k < c; ++k) {
      const double d =
          std::abs(got[0].data<float>()[r * c + k] - want.data<float>()[r * c + k]) / scale;
      ok += d <= 1.01;
      eq += d < 0.01;
    }
  }
  const double within = static_cast<double>(ok) / static_cast<double>(rows * c);
  std::printf(
      "[ %s ] ORT vs IntegerModel logits: %.4f%% within 1 LSB (%.4f%% equal), top-1 %.4f%%; "
      "softmax output on the %ld rows with equal logits: %.4f%% within 1 LSB (%.4f%% equal)\n",
      stem.c_str(), 100 * l.within_1lsb, 100 * l.exact, 100 * l.top1, static_cast<long>(rows),
      100 * within, 100.0 * static_cast<double>(eq) / static_cast<double>(rows * c));
  EXPECT_GE(l.within_1lsb, 0.999);
  EXPECT_GE(l.top1, 0.999);
  EXPECT_GE(rows, n * 9 / 10);
  EXPECT_GE(within, 0.999);
}

TEST(OnnxIntegerExport, CnnQdqRunsInOnnxRuntime) {
  quant::IntegerModel im =
      quant::convert_to_integer(cnn_qat(), {.rounding = quant::Rounding::kSingle});
  expect_ort_agrees(im, onnx::IntegerFormat::kQdq, "onnx-int-cnn-qdq");
}

TEST(OnnxIntegerExport, CnnQOperatorRunsInOnnxRuntime) {
  quant::IntegerModel im =
      quant::convert_to_integer(cnn_qat(), {.rounding = quant::Rounding::kSingle});
  const onnx::ModelProto m = onnx::integer_to_onnx(im, {.format = onnx::IntegerFormat::kQOperator});
  int qlinear = 0;
  for (const onnx::NodeProto& n : m.graph.node) qlinear += n.op_type.starts_with("QLinear");
  EXPECT_GE(qlinear, 4);
  expect_ort_agrees(im, onnx::IntegerFormat::kQOperator, "onnx-int-cnn-qop");
}

TEST(OnnxIntegerExport, MlpBothFormats) {
  quant::IntegerModel im = quant::convert_to_integer(mlp_qat());
  expect_ort_agrees(im, onnx::IntegerFormat::kQdq, "onnx-int-mlp-qdq");
  expect_ort_agrees(im, onnx::IntegerFormat::kQOperator, "onnx-int-mlp-qop");
}

TEST(OnnxIntegerExport, Uint8Scheme) {
  quant::IntegerModel im = quant::convert_to_integer(
      cnn_qat(),
      {.rounding = quant::Rounding::kSingle, .activations = quant::ActivationScheme::kUint8});
  expect_ort_agrees(im, onnx::IntegerFormat::kQdq, "onnx-int-cnn-u8-qdq");
  expect_ort_agrees(im, onnx::IntegerFormat::kQOperator, "onnx-int-cnn-u8-qop");
}

TEST(OnnxIntegerImport, RoundTripIsBitExact) {
  for (auto [qat, rounding] : {std::pair{&cnn_qat(), quant::Rounding::kDouble},
                               std::pair{&cnn_qat(), quant::Rounding::kSingle},
                               std::pair{&mlp_qat(), quant::Rounding::kDouble}}) {
    quant::IntegerModel im = quant::convert_to_integer(*qat, {.rounding = rounding});
    const onnx::ModelProto m = onnx::integer_to_onnx(im);
    quant::IntegerModel back = onnx::integer_from_onnx_qdq(
        onnx::decode_model(onnx::encode_model(m).data(), onnx::encode_model(m).size()));
    const Tensor& x = data().test_x;
    const Tensor a = im.predict(x), b = back.predict(x);
    SCOPED_TRACE(qat->name());
    EXPECT_TRUE(testing::tensors_equal(a, b));
  }
}

TEST(OnnxIntegerImport, PyTorchQdqFileAgreesWithOnnxRuntime) {
  const std::string dir = std::string(LOWBIT_SOURCE_DIR) + "/tests/interop/models";
  quant::IntegerModel im = onnx::import_onnx_qdq(dir + "/qdq_torch_cnn.onnx");
  EXPECT_GE(std::count_if(im.ops.begin(), im.ops.end(),
                          [](const quant::IntegerOp& o) { return o.op == "qconv2d"; }),
            4);
  // 64 stored inputs plus random ones, NCHW for ONNX Runtime, NHWC for the IntegerModel.
  Rng rng(5);
  const Tensor x = testing::random_tensor({1000, 1, 16, 16}, rng, 0.0f, 1.0f);
  Tensor xh({1000, 16, 16, 1}, DType::kF32);
  std::copy_n(x.data<float>(), x.numel(), xh.data<float>());  // C = 1: the same order
  const std::string work = testing::fresh_temp_dir("onnx-int-torch");
  const std::vector<Tensor> ort = testing::run_onnxruntime(dir + "/qdq_torch_cnn.onnx", {x}, work);
  const Tensor mine = im.predict(xh);
  const Agreement a = agreement(mine, ort.at(0), output_scale(im));
  std::printf(
      "[ torch qdq ] IntegerModel vs ORT: %.4f%% within 1 LSB (%.4f%% equal), top-1 %.4f%%\n",
      100 * a.within_1lsb, 100 * a.exact, 100 * a.top1);
  EXPECT_GE(a.within_1lsb, 0.999);
  EXPECT_GE(a.top1, 0.999);
}

TEST(OnnxIntegerErrors, RefusesWhatItCannotMap) {
  quant::IntegerModel im = quant::convert_to_integer(mlp_qat());
  quant::IntegerModel lstm;
  lstm.tensors = {};
  quant::IntegerOp op;
  op.op = "qlstm";
  op.layer = "lstm";
  quant::IntegerModel bad = quant::convert_to_integer(mlp_qat());
  bad.ops.insert(bad.ops.begin() + 1, op);
  testing::expect_throws_with<UnsupportedError>([&] { onnx::integer_to_onnx(bad); },
                                                "'qlstm' (layer 'lstm') has no ONNX integer form");
  onnx::ModelProto m = onnx::integer_to_onnx(im);
  for (onnx::NodeProto& n : m.graph.node)
    if (n.op_type == "MatMul") {
      n.op_type = "Einsum";
      n.name = "the_einsum";
      break;
    }
  testing::expect_throws_with<UnsupportedError>([&] { onnx::integer_from_onnx_qdq(m, "f.onnx"); },
                                                "node 'the_einsum' (Einsum, opset 13)");
  m = onnx::integer_to_onnx(im);
  for (onnx::NodeProto& n : m.graph.node)
    if (n.op_type == "DequantizeLinear")
      for (onnx::AttributeProto& a : n.attribute)
        if (a.name == "axis" && a.i == 1) a.i = 0;
  testing::expect_throws_with<UnsupportedError>([&] { onnx::integer_from_onnx_qdq(m, "f.onnx"); },
                                                "attribute 'axis' = 0");
}

}  // namespace
}  // namespace lowbit
