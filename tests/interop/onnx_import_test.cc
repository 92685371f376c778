// ONNX float import (include/lowbit/interop/onnx_import.h): every model PyTorch 1.13 exported
// in tests/interop/models (make_models.py) imported and run on random inputs, compared with
// ONNX Runtime on the same file (tests/testing/ort.h) within 1e-4 relative; the round trip
// lowbit -> onnx::to_onnx -> import_onnx (same outputs, same weights); QAT on an imported CNN;
// refusals naming the node, op type, opset and attribute.
#include "lowbit/interop/onnx_import.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "lowbit/interop/onnx_export.h"
#include "lowbit/nn/layers.h"
#include "lowbit/nn/losses.h"
#include "lowbit/quant/quantize_model.h"
#include "testing/op_testing.h"
#include "testing/ort.h"

namespace lowbit {
namespace {

using testing::expect_throws_with;
using testing::random_tensor;
using testing::tensors_near;

// f32 ONNX Runtime vs lowbit: the same math in another summation order.
constexpr double kAtol = 1e-5, kRtol = 1e-4;

std::string model_path(const std::string& name) {
  return std::string(LOWBIT_SOURCE_DIR) + "/tests/interop/models/" + name + ".onnx";
}

// x with its axes in the order `order`.
Tensor transpose(const Tensor& x, const std::vector<int>& order) {
  const int r = x.rank();
  std::vector<int64_t> od(r), st(r, 1);
  for (int i = r - 2; i >= 0; --i) st[i] = st[i + 1] * x.dim(i + 1);
  for (int i = 0; i < r; ++i) od[i] = x.dim(order[i]);
  Tensor y(Shape(od), DType::kF32);
  std::vector<int64_t> idx(r, 0);
  for (int64_t o = 0; o < y.numel(); ++o) {
    int64_t s = 0;
    for (int i = 0; i < r; ++i) s += idx[i] * st[order[i]];
    y.data<float>()[o] = x.data<float>()[s];
    for (int i = r - 1; i >= 0; --i) {
      if (++idx[i] < od[i]) break;
      idx[i] = 0;
    }
  }
  return y;
}

// An ONNX-layout array as the lowbit model's input `shape` (no batch): as is, or channels-last.
Tensor to_lowbit(const Tensor& x, const Shape& shape) {
  std::vector<int64_t> rest(x.shape().dims().begin() + 1, x.shape().dims().end());
  const std::vector<int64_t> want(shape.dims().begin() + 1, shape.dims().end());
  if (rest == want) return x;
  std::vector<int> cl = {0};
  for (int i = 2; i < x.rank(); ++i) cl.push_back(i);
  cl.push_back(1);
  return transpose(x, cl);
}

// ORT's output in the lowbit output's layout: channels-last for rank >= 3 outputs that lowbit
// returns so, else the same elements (lowbit drops ONNX's leading size-1 dims, e.g. Y_h).
Tensor ort_as_lowbit(const Tensor& ort, const Tensor& lb) {
  if (ort.shape() == lb.shape()) return ort;
  if (ort.numel() == lb.numel() && ort.rank() != lb.rank()) return ort.reshape(lb.shape());
  std::vector<int> cl = {0};
  for (int i = 2; i < ort.rank(); ++i) cl.push_back(i);
  cl.push_back(1);
  return transpose(ort, cl);
}

double max_rel_err(const Tensor& got, const Tensor& want) {
  double worst = 0, scale = 0;
  for (int64_t i = 0; i < want.numel(); ++i)
    scale = std::max(scale, std::fabs(static_cast<double>(want.data<float>()[i])));
  for (int64_t i = 0; i < want.numel(); ++i)
    worst = std::max(worst,
                     std::fabs(static_cast<double>(got.data<float>()[i]) - want.data<float>()[i]));
  return scale > 0 ? worst / scale : worst;
}

// Random inputs for the graph inputs of `p` (batch 3; integer inputs: sequence lengths).
std::vector<Tensor> random_inputs(const onnx::ModelProto& p, uint64_t seed) {
  Rng rng(seed);
  std::vector<Tensor> xs;
  for (const onnx::ValueInfoProto& vi : p.graph.input) {
    std::vector<int64_t> d = {3};
    for (size_t i = 1; i < vi.dims.size(); ++i) d.push_back(vi.dims[i].dim_value);
    if (vi.elem_type == onnx::kInt64)
      xs.push_back(Tensor::from_vector<int64_t>({7, 4, 2}, Shape{3}));
    else
      xs.push_back(random_tensor(Shape(d), rng, -2.0f, 2.0f));
  }
  return xs;
}

// Imports `name`, runs lowbit and ORT on the same random inputs; expects agreement.
void expect_matches_ort(const std::string& name, const onnx::ImportOptions& opt = {}) {
  SCOPED_TRACE(name);
  const std::string path = model_path(name);
  const onnx::ModelProto p = onnx::read_model(path);
  nn::ModelPtr m = onnx::import_onnx(path, opt);
  const std::vector<Tensor> xs = random_inputs(p, 7);
  std::vector<Tensor> lx;
  for (size_t i = 0; i < xs.size(); ++i)
    lx.push_back(xs[i].dtype() == DType::kF32 ? to_lowbit(xs[i], m->inputs()[i].shape()) : xs[i]);
  const std::vector<Tensor> got = m->predict_on_batch(lx);
  const std::string dir = testing::fresh_temp_dir("onnx_import_" + name);
  const std::vector<Tensor> want = testing::run_onnxruntime(path, xs, dir);
  std::filesystem::remove_all(dir);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    const Tensor w = ort_as_lowbit(want[i], got[i]);
    EXPECT_TRUE(tensors_near(got[i], w, kAtol, kRtol)) << "output " << i;
    std::printf("[agreement] %s output %zu %s: max |lowbit - ORT| / max |ORT| = %.2e\n",
                name.c_str(), i, got[i].shape().str().c_str(), max_rel_err(got[i], w));
  }
}

TEST(OnnxImport, MlpMatchesOnnxRuntime) {
  expect_matches_ort("mlp_op11");
  expect_matches_ort("mlp_op13");
}

TEST(OnnxImport, SeqMlpMatchesOnnxRuntime) { expect_matches_ort("seq_mlp_op13"); }

TEST(OnnxImport, CnnMatchesOnnxRuntime) {
  expect_matches_ort("cnn_op11");
  expect_matches_ort("cnn_op13");
}

TEST(OnnxImport, ViewCnnMatchesOnnxRuntime) { expect_matches_ort("view_cnn_op13"); }

TEST(OnnxImport, MobileBlockMatchesOnnxRuntime) {
  expect_matches_ort("mobile_block_op13");
  expect_matches_ort("mobile_block_op17");
}

TEST(OnnxImport, OnnxLayoutOption) {
  // NCHW at the boundary: the model takes ORT's arrays as they are.
  nn::ModelPtr m = onnx::import_onnx(model_path("cnn_op13"), {.onnx_layout = true});
  EXPECT_EQ(m->inputs()[0].shape(), (Shape{kUnknown, 3, 16, 16}));
  expect_matches_ort("cnn_op13", {.onnx_layout = true});
}

TEST(OnnxImport, NoTransposePerLayer) {
  // The CNN's layout is handled at the input: no Permute layer at all (its Flatten follows a
  // global pooling); neither does the view CNN, whose Reshape of a 4x4 map feeds a Gemm (its
  // weight rows are permuted instead).
  auto count = [](const nn::Model& m, const std::string& cls) {
    int n = 0;
    for (const nn::LayerPtr& l : m.layers()) n += l->class_name() == cls;
    return n;
  };
  EXPECT_EQ(count(*onnx::import_onnx(model_path("cnn_op13")), "Permute"), 0);
  EXPECT_EQ(count(*onnx::import_onnx(model_path("mobile_block_op13")), "Permute"), 0);
  EXPECT_EQ(count(*onnx::import_onnx(model_path("view_cnn_op13")), "Permute"), 0);
  nn::ModelPtr m = onnx::import_onnx(model_path("mobile_block_op13"));
  EXPECT_EQ(count(*m, "DepthwiseConv2D"), 1);
  EXPECT_EQ(m->inputs()[0].shape(), (Shape{kUnknown, 12, 12, 3}));  // NHWC
}

TEST(OnnxImport, LstmGruMatchOnnxRuntime) {
  expect_matches_ort("lstm_op13");
  expect_matches_ort("gru_op13");
}

TEST(OnnxImport, SequenceLensBecomeMasks) {
  expect_matches_ort("lstm_lens_op13");
  expect_matches_ort("gru_lens_op13");
  nn::ModelPtr m = onnx::import_onnx(model_path("lstm_lens_op13"));
  bool has_mask = false;
  for (const nn::LayerPtr& l : m->layers()) has_mask |= l->class_name() == "SequenceMask";
  EXPECT_TRUE(has_mask);
}

TEST(OnnxImport, BidirectionalLstmMatchesOnnxRuntime) { expect_matches_ort("bilstm_op11"); }

TEST(OnnxImport, BytesOverloadAndMalformedBytes) {
  const onnx::ModelProto p = onnx::read_model(model_path("mlp_op13"));
  const std::string bytes = onnx::encode_model(p);
  nn::ModelPtr m = onnx::import_onnx(bytes.data(), bytes.size());
  EXPECT_EQ(m->inputs()[0].shape(), (Shape{kUnknown, 12}));
  EXPECT_THROW(onnx::import_onnx(bytes.data(), bytes.size() / 2), IoError);
}

// lowbit -> ONNX -> lowbit: same outputs, same weights.
TEST(OnnxImport, RoundTripThroughExport) {
  nn::set_random_seed(3);
  nn::KTensor in = nn::Input({10, 10, 3});
  nn::KTensor h = (*nn::Conv2D(6, 3, {.padding = "same", .activation = "relu"}))(in);
  h = (*nn::BatchNormalization())(h);
  nn::KTensor d = (*nn::DepthwiseConv2D(3, {.strides = 2, .padding = "same"}))(h);
  d = (*nn::MaxPooling2D(2))(d);
  nn::KTensor f = (*nn::Flatten())(d);
  nn::KTensor out =
      (*nn::Dense(4, {.activation = "softmax"}))((*nn::Dense(8, {.activation = "tanh"}))(f));
  nn::ModelPtr m = nn::Model::create({in}, {out});
  for (const nn::LayerPtr& l : m->layers())
    if (l->class_name() == "BatchNormalization") {
      Rng rng(2);
      for (nn::Weight& w : l->weights())
        w.value.copy_from(random_tensor(w.value.shape(), rng, 0.5f, 1.5f));
    }
  nn::ModelPtr back = onnx::import_onnx(onnx::to_onnx(*m));
  Rng rng(4);
  const Tensor x = random_tensor(Shape{5, 10, 10, 3}, rng, -1.0f, 1.0f);
  EXPECT_EQ(back->inputs()[0].shape(), m->inputs()[0].shape());
  EXPECT_TRUE(tensors_near(back->predict(x), m->predict(x), 1e-6, 1e-5));
  // The weights, in the order the layers hold them.
  std::vector<Tensor> a, b;
  for (const nn::LayerPtr& l : m->layers())
    for (const nn::Weight& w : l->weights()) a.push_back(w.value);
  for (const nn::LayerPtr& l : back->layers())
    for (const nn::Weight& w : l->weights()) b.push_back(w.value);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(testing::tensors_equal(b[i], a[i])) << i;
}

TEST(OnnxImport, RoundTripRecurrent) {
  nn::set_random_seed(5);
  nn::KTensor in = nn::Input({6, 4});
  nn::KTensor h = (*nn::LSTM(5, {.return_sequences = true}))(in);
  nn::KTensor out = (*nn::GRU(3))(h);
  nn::ModelPtr m = nn::Model::create({in}, {out});
  nn::ModelPtr back = onnx::import_onnx(onnx::to_onnx(*m));
  Rng rng(6);
  const Tensor x = random_tensor(Shape{4, 6, 4}, rng, -1.0f, 1.0f);
  EXPECT_TRUE(tensors_near(back->predict(x), m->predict(x), 1e-6, 1e-5));
}

// PyTorch's CNN imported, then exported by lowbit: ONNX Runtime runs the re-exported file (which
// takes lowbit's NHWC input) to the same outputs as the original file on NCHW input.
TEST(OnnxImport, ImportedCnnReExports) {
  nn::ModelPtr m = onnx::import_onnx(model_path("cnn_op13"));
  Rng rng(12);
  const Tensor x = random_tensor(Shape{3, 3, 16, 16}, rng, -2.0f, 2.0f);
  const std::string dir = testing::fresh_temp_dir("onnx_reexport");
  onnx::export_onnx(*m, dir + "/re.onnx");
  const Tensor want = testing::run_onnxruntime(model_path("cnn_op13"), {x}, dir).at(0);
  const Tensor got =
      testing::run_onnxruntime(dir + "/re.onnx", {to_lowbit(x, m->inputs()[0].shape())}, dir).at(0);
  std::filesystem::remove_all(dir);
  EXPECT_TRUE(tensors_near(got, want, kAtol, kRtol));
}

// The imported model is a normal lowbit model: it trains and goes through QAT.
TEST(OnnxImport, ImportedCnnTrainsAndQuantizes) {
  nn::ModelPtr m = onnx::import_onnx(model_path("mobile_block_op13"));
  Rng rng(8);
  const Tensor x = random_tensor(Shape{16, 12, 12, 3}, rng, -1.0f, 1.0f);
  const Tensor y = testing::random_int_tensor(Shape{16}, rng, 0, 3);
  m->compile({.loss = nn::SparseCategoricalCrossentropy({.from_logits = true})});
  const nn::History hist = m->fit(x, y, {.epochs = 2, .batch_size = 8, .verbose = 0});
  (void)hist;
  nn::ModelPtr qat = quant::quantize_model(*m, quant::QuantizeConfig::preset("w8a8"));
  qat->calibrate(data::Dataset::from_tensors({x}, {y}), 8);
  const Tensor fq = qat->predict(x), fl = m->predict(x);
  ASSERT_EQ(fq.shape(), fl.shape());
  // 8-bit fake quantization stays near the float model (logits of order 1).
  double worst = 0;
  for (int64_t i = 0; i < fl.numel(); ++i)
    worst =
        std::max(worst, std::fabs(static_cast<double>(fq.data<float>()[i]) - fl.data<float>()[i]));
  EXPECT_LT(worst, 0.25);
  qat->compile({.loss = nn::SparseCategoricalCrossentropy({.from_logits = true})});
  qat->fit(x, y, {.epochs = 1, .batch_size = 8, .verbose = 0});
}

onnx::ValueInfoProto value(const std::string& name, std::vector<int64_t> dims) {
  onnx::ValueInfoProto v;
  v.name = name;
  v.elem_type = onnx::kFloat;
  v.has_shape = true;
  for (size_t i = 0; i < dims.size(); ++i)
    v.dims.push_back(i == 0 ? onnx::Dimension{-1, "N"} : onnx::Dimension{dims[i], ""});
  return v;
}

// ---- hand-written graphs: the ops PyTorch's exports above do not use ----

struct GraphBuilder {
  onnx::ModelProto p;
  Rng rng{21};
  explicit GraphBuilder(int64_t opset) {
    p.opset_import.push_back({"", opset});
    p.graph.name = "hand";
  }
  std::string init(const std::string& name, const Shape& s, float lo = -0.5f, float hi = 0.5f) {
    p.graph.initializer.push_back(onnx::from_tensor(name, random_tensor(s, rng, lo, hi)));
    return name;
  }
  std::string ints(const std::string& name, std::vector<int64_t> v) {
    const auto n = static_cast<int64_t>(v.size());
    p.graph.initializer.push_back(
        onnx::from_tensor(name, Tensor::from_vector<int64_t>(v, Shape{n})));
    return name;
  }
  std::string scalar(const std::string& name, float v) {
    p.graph.initializer.push_back(onnx::from_tensor(name, Tensor::full({}, v)));
    return name;
  }
  std::string node(const std::string& op, std::vector<std::string> in, const std::string& out,
                   std::vector<onnx::AttributeProto> attrs = {}) {
    onnx::NodeProto n;
    n.op_type = op;
    n.name = out + "_node";
    n.input = std::move(in);
    n.output = {out};
    n.attribute = std::move(attrs);
    p.graph.node.push_back(n);
    return out;
  }
};

onnx::AttributeProto attr_string(const std::string& name, const std::string& v) {
  onnx::AttributeProto a;
  a.name = name;
  a.type = onnx::kAttrString;
  a.s = v;
  return a;
}

// Runs the hand-written model in lowbit (imported) and ORT on x; expects agreement.
void expect_hand_model_matches(const onnx::ModelProto& p, const Tensor& x,
                               const std::string& stem) {
  const std::string dir = testing::fresh_temp_dir(stem);
  const std::string path = dir + "/model.onnx";
  onnx::write_model(path, p);
  nn::ModelPtr m = onnx::import_onnx(path);
  const Tensor got = m->predict(to_lowbit(x, m->inputs()[0].shape()));
  const std::vector<Tensor> want = testing::run_onnxruntime(path, {x}, dir);
  std::filesystem::remove_all(dir);
  const Tensor w = ort_as_lowbit(want.at(0), got);
  EXPECT_TRUE(tensors_near(got, w, kAtol, kRtol));
  std::printf("[agreement] %s %s: max |lowbit - ORT| / max |ORT| = %.2e\n", stem.c_str(),
              got.shape().str().c_str(), max_rel_err(got, w));
}

TEST(OnnxImport, HandWrittenConvGraphMatchesOnnxRuntime) {
  // auto_pad, per-channel Add / Div by constants, AveragePool counting pads, Sub of two tensors,
  // GlobalMaxPool, broadcast Mul, Concat, a Transpose to NHWC and a Reshape with the batch as
  // -1, Unsqueeze / Softmax / Squeeze, Clip(0, m).
  GraphBuilder b(13);
  b.p.graph.input.push_back(value("x", {-1, 3, 8, 8}));
  b.node("Conv", {"x", b.init("w1", {4, 3, 3, 3}), b.init("b1", {4})}, "c1",
         {attr_string("auto_pad", "SAME_UPPER"), onnx::attr_ints("strides", {2, 2})});
  b.node("Add", {"c1", b.init("k", {4, 1, 1})}, "c2");
  b.node("Div", {"c2", b.scalar("two", 2.0f)}, "c3");
  b.node("AveragePool", {"c3"}, "a",
         {onnx::attr_ints("kernel_shape", {3, 3}), onnx::attr_ints("pads", {1, 1, 1, 1}),
          onnx::attr_int("count_include_pad", 1)});
  b.node("Sigmoid", {"a"}, "s");
  b.node("Sub", {"a", "s"}, "d");
  b.node("AveragePool", {"d"}, "m",
         {onnx::attr_ints("kernel_shape", {2, 2}), onnx::attr_ints("strides", {2, 2})});
  b.node("GlobalMaxPool", {"d"}, "g");
  b.node("Mul", {"m", "g"}, "t");
  b.node("Concat", {"t", "m"}, "cat", {onnx::attr_int("axis", 1)});
  b.node("Transpose", {"cat"}, "tr", {onnx::attr_ints("perm", {0, 2, 3, 1})});
  b.node("Reshape", {"tr", b.ints("shape", {-1, 32})}, "r");
  b.node("Unsqueeze", {"r", b.ints("axes", {1})}, "u");
  b.node("Softmax", {"u"}, "sm", {onnx::attr_int("axis", -1)});
  b.node("Squeeze", {"sm", "axes"}, "sq");
  b.node("Clip", {"sq", b.scalar("zero", 0.0f), b.scalar("cap", 0.05f)}, "y");
  b.p.graph.output.push_back(value("y", {-1, 32}));
  Rng rng(3);
  expect_hand_model_matches(b.p, random_tensor(Shape{3, 3, 8, 8}, rng, -2.0f, 2.0f), "hand_conv");
}

TEST(OnnxImport, HandWrittenConv1DGraphMatchesOnnxRuntime) {
  // Conv1D (explicit same pads) on an [N, C, L] input, MaxPool 1-D, Flatten of a channels-first
  // map (one Permute), Gemm with alpha / beta, HardSigmoid with ONNX's own alpha / beta.
  GraphBuilder b(11);
  b.p.graph.input.push_back(value("x", {-1, 4, 10}));
  b.node("Conv", {"x", b.init("w", {6, 4, 3}), b.init("bias", {6})}, "c",
         {onnx::attr_ints("pads", {1, 1}), onnx::attr_ints("kernel_shape", {3})});
  b.node("Relu", {"c"}, "r");
  b.node("MaxPool", {"r"}, "p",
         {onnx::attr_ints("kernel_shape", {2}), onnx::attr_ints("strides", {2})});
  b.node("Flatten", {"p"}, "f", {onnx::attr_int("axis", 1)});
  b.node("Gemm", {"f", b.init("fw", {5, 30}), b.init("fb", {5})}, "fc",
         {onnx::attr_int("transB", 1), onnx::attr_float("alpha", 0.5f),
          onnx::attr_float("beta", 2.0f)});
  b.node("HardSigmoid", {"fc"}, "y",
         {onnx::attr_float("alpha", 0.3f), onnx::attr_float("beta", 0.4f)});
  b.p.graph.output.push_back(value("y", {-1, 5}));
  Rng rng(4);
  expect_hand_model_matches(b.p, random_tensor(Shape{3, 4, 10}, rng, -2.0f, 2.0f), "hand_conv1d");
}

TEST(OnnxImport, HandWrittenRecurrentGraphsMatchOnnxRuntime) {
  {  // Bidirectional GRU without linear_before_reset (reset_after = false), Y_h [2, B, H].
    GraphBuilder b(13);
    b.p.graph.input.push_back(value("x", {-1, 6, 3}));
    b.node("Transpose", {"x"}, "xt", {onnx::attr_ints("perm", {1, 0, 2})});
    onnx::NodeProto& n = b.p.graph.node.emplace_back();
    n.op_type = "GRU";
    n.name = "gru";
    n.input = {"xt", b.init("W", {2, 12, 3}), b.init("R", {2, 12, 4}), b.init("B", {2, 24})};
    n.output = {"", "h"};
    n.attribute = {onnx::attr_int("hidden_size", 4), attr_string("direction", "bidirectional")};
    b.p.graph.output.push_back(value("h", {2, -1, 4}));
    const std::string dir = testing::fresh_temp_dir("hand_gru");
    onnx::write_model(dir + "/m.onnx", b.p);
    nn::ModelPtr m = onnx::import_onnx(dir + "/m.onnx");
    Rng rng(5);
    const Tensor x = random_tensor(Shape{3, 6, 3}, rng, -2.0f, 2.0f);
    const Tensor got = m->predict(x);  // [B, 2, H]: the batch first
    const Tensor want =
        transpose(testing::run_onnxruntime(dir + "/m.onnx", {x}, dir).at(0), {1, 0, 2});
    std::filesystem::remove_all(dir);
    EXPECT_TRUE(tensors_near(got, want, kAtol, kRtol));
    std::printf("[agreement] hand_bigru Y_h %s: %.2e\n", got.shape().str().c_str(),
                max_rel_err(got, want));
  }
  {  // Reverse LSTM, only Y_h used.
    GraphBuilder b(13);
    b.p.graph.input.push_back(value("x", {-1, 5, 3}));
    b.node("Transpose", {"x"}, "xt", {onnx::attr_ints("perm", {1, 0, 2})});
    onnx::NodeProto& n = b.p.graph.node.emplace_back();
    n.op_type = "LSTM";
    n.name = "lstm";
    n.input = {"xt", b.init("W", {1, 16, 3}), b.init("R", {1, 16, 4}), b.init("B", {1, 32})};
    n.output = {"", "h"};
    n.attribute = {onnx::attr_int("hidden_size", 4), attr_string("direction", "reverse")};
    b.p.graph.output.push_back(value("h", {-1, 1, 4}));
    Rng rng(6);
    expect_hand_model_matches(b.p, random_tensor(Shape{3, 5, 3}, rng, -2.0f, 2.0f),
                              "hand_rev_lstm");
  }
}

// ---- refusals ----

// x [N, 4] -> node -> y.
onnx::ModelProto one_node(onnx::NodeProto n, int64_t opset = 13,
                          std::vector<onnx::TensorProto> inits = {}) {
  onnx::ModelProto p;
  p.opset_import.push_back({"", opset});
  p.graph.name = "g";
  p.graph.input.push_back(value("x", {-1, 4}));
  p.graph.output.push_back(value("y", {-1, 4}));
  p.graph.initializer = std::move(inits);
  p.graph.node.push_back(std::move(n));
  return p;
}

onnx::NodeProto make_node(const std::string& op, const std::string& name,
                          std::vector<std::string> inputs = {"x"}) {
  onnx::NodeProto n;
  n.op_type = op;
  n.name = name;
  n.input = std::move(inputs);
  n.output = {"y"};
  return n;
}

TEST(OnnxImportRefusal, UnsupportedOpNamesNodeOpAndOpset) {
  expect_throws_with<UnsupportedError>(
      [] { onnx::import_onnx(one_node(make_node("Erf", "my_erf"))); },
      "node 'my_erf' (Erf, opset 13): op type 'Erf' is not supported");
}

TEST(OnnxImportRefusal, BadAttributeNamesIt) {
  onnx::NodeProto gemm = make_node("Gemm", "fc", {"x", "w"});
  gemm.attribute.push_back(onnx::attr_int("transA", 1));
  const onnx::TensorProto w = onnx::from_tensor("w", Tensor::zeros({4, 4}));
  expect_throws_with<UnsupportedError>([&] { onnx::import_onnx(one_node(gemm, 13, {w})); },
                                       "node 'fc' (Gemm, opset 13): attribute 'transA'");
  onnx::NodeProto relu = make_node("Relu", "r");
  relu.attribute.push_back(onnx::attr_float("leak", 0.1f));
  expect_throws_with<UnsupportedError>([&] { onnx::import_onnx(one_node(relu)); },
                                       "attribute 'leak' is not supported");
  onnx::NodeProto sm = make_node("Softmax", "sm");
  sm.attribute.push_back(onnx::attr_int("axis", 0));
  expect_throws_with<UnsupportedError>([&] { onnx::import_onnx(one_node(sm, 11)); },
                                       "node 'sm' (Softmax, opset 11): attribute 'axis' = 0");
}

TEST(OnnxImportRefusal, ClipOtherThanReluIsRefused) {
  onnx::NodeProto clip = make_node("Clip", "clip", {"x", "lo", "hi"});
  const onnx::TensorProto lo = onnx::from_tensor("lo", Tensor::full({}, -1.0));
  const onnx::TensorProto hi = onnx::from_tensor("hi", Tensor::full({}, 1.0));
  expect_throws_with<UnsupportedError>(
      [&] {
        onnx::import_onnx(one_node(clip, 13, {lo, hi}));
      },
      "node 'clip' (Clip, opset 13): input 1 (min)");
}

TEST(OnnxImportRefusal, MaxPoolPadsThatAreNotSame) {
  onnx::ModelProto p;
  p.opset_import.push_back({"", 13});
  p.graph.input.push_back(value("x", {-1, 2, 6, 6}));
  p.graph.output.push_back(value("y", {-1, 2, 4, 4}));
  onnx::NodeProto n = make_node("MaxPool", "pool");
  n.attribute = {onnx::attr_ints("kernel_shape", {2, 2}), onnx::attr_ints("strides", {2, 2}),
                 onnx::attr_ints("pads", {1, 1, 1, 1})};
  p.graph.node.push_back(n);
  expect_throws_with<UnsupportedError>([&] { onnx::import_onnx(p); },
                                       "node 'pool' (MaxPool, opset 13): attribute 'pads'");
}

TEST(OnnxImportRefusal, OpsetOutOfRangeAndOtherDomains) {
  expect_throws_with<UnsupportedError>(
      [] { onnx::import_onnx(one_node(make_node("Relu", "r"), 9)); }, "opset 9");
  onnx::NodeProto n = make_node("Gelu", "g");
  n.domain = "com.microsoft";
  expect_throws_with<UnsupportedError>([&] { onnx::import_onnx(one_node(n)); },
                                       "node 'g' (Gelu, opset 13): domain 'com.microsoft'");
}

TEST(OnnxImportRefusal, ReshapeThatFixesTheBatch) {
  onnx::NodeProto n = make_node("Reshape", "rs", {"x", "s"});
  const onnx::TensorProto s =
      onnx::from_tensor("s", Tensor::from_vector<int64_t>({2, 2, 2}, Shape{3}));
  expect_throws_with<UnsupportedError>([&] { onnx::import_onnx(one_node(n, 13, {s})); },
                                       "fixes the batch size");
}

}  // namespace
}  // namespace lowbit
