// convert_to_integer on the structural layers (include/lowbit/quant/convert.h): Add (qadd),
// Concatenate (requantize + concat), SeparableConv2D (split by quantize_model into a depthwise
// and a pointwise qconv2d), Conv1D (qconv2d on [N, 1, T, C] between reshapes) and Dense on rank-3
// inputs (qfully_connected over the last axis). Small models trained briefly on the MNIST split
// (or, where MNIST does not fit the architecture, on random sequences), fine-tuned with QAT,
// converted; every integer op's codes are compared with the QAT model's on the same input
// (>= 99.9% equal, none off by more than one code), top-1 agreement >= 99.9% for the MNIST
// classifiers; the .lbi file round trip of the new ops and its refusal of wrong attributes;
// the layers and placements that are refused, naming the layer.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <map>

#include "lowbit/data/idx.h"
#include "lowbit/graph.h"
#include "lowbit/io/safetensors.h"
#include "lowbit/isa.h"
#include "lowbit/nn/layers.h"
#include "lowbit/nn/losses.h"
#include "lowbit/nn/optimizers.h"
#include "lowbit/op.h"
#include "lowbit/ops.h"
#include "lowbit/quant/convert.h"
#include "lowbit/quant/quantize_model.h"
#include "lowbit/rng.h"
#include "testing/convert_testing.h"
#include "testing/op_testing.h"

namespace lowbit {
namespace {

using testing::argmax_row;
using testing::count_of;
using testing::expect_throws_with;
using testing::find_output;
using testing::mnist;
using testing::op_kinds;
using testing::qat_codes;

void compile_classifier(nn::Model& m, double lr) {
  m.compile({.optimizer = nn::Adam({.learning_rate = lr}),
             .loss = nn::SparseCategoricalCrossentropy({.from_logits = true}),
             .metrics = {"accuracy"}});
}

// Float training (1 epoch), then QAT (1 epoch) on the MNIST training split.
nn::ModelPtr mnist_qat(nn::Model& f, const std::string& preset = "w8a8") {
  compile_classifier(f, 2e-3);
  f.fit(mnist().train.images, mnist().train.labels, {.epochs = 1, .batch_size = 64, .verbose = 0});
  nn::ModelPtr q = quant::quantize_model(f, quant::QuantizeConfig::preset(preset));
  compile_classifier(*q, 5e-4);
  q->fit(mnist().train.images, mnist().train.labels, {.epochs = 1, .batch_size = 64, .verbose = 0});
  return q;
}

// Random sequences x [n, steps, features] in [-1, 1] and a smooth target of them, for the
// layers MNIST images do not fit (Conv1D, Dense on rank 3): a regression, fit briefly.
struct Sequences {
  Tensor x, y;
};
Sequences random_sequences(int64_t n, int64_t steps, int64_t features, int64_t outputs,
                           uint64_t seed) {
  Rng rng(seed);
  Sequences s{testing::random_tensor({n, steps, features}, rng), Tensor({n, outputs}, DType::kF32)};
  const float* x = s.x.data<float>();
  float* y = s.y.data<float>();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t o = 0; o < outputs; ++o) {
      double v = 0;
      for (int64_t t = 0; t < steps; ++t)
        v += std::sin(0.7 * static_cast<double>(t + o)) *
             x[(i * steps + t) * features + o % features];
      y[i * outputs + o] = static_cast<float>(v / 2);
    }
  return s;
}

nn::ModelPtr regression_qat(nn::Model& f, const Sequences& s) {
  f.compile({.optimizer = nn::Adam({.learning_rate = 3e-3}), .loss = nn::MeanSquaredError()});
  f.fit(s.x, s.y, {.epochs = 2, .batch_size = 32, .verbose = 0});
  nn::ModelPtr q = quant::quantize_model(f, quant::QuantizeConfig::preset("w8a8"));
  q->compile({.optimizer = nn::Adam({.learning_rate = 1e-3}), .loss = nn::MeanSquaredError()});
  q->fit(s.x, s.y, {.epochs = 1, .batch_size = 32, .verbose = 0});
  return q;
}

struct Agreement {
  int layers = 0;                    // integer tensors compared with a QAT layer's output
  std::map<std::string, int> by_op;  // ... by the op that writes them
};

// Per-layer code agreement of the integer model with the QAT model on x: every integer tensor
// named after a QAT layer (a FakeQuant: the grid it was rounded to) is recomputed from the QAT
// model's codes of the nearest such tensors before it (through the unnamed ones between, e.g.
// a Conv1D's reshapes or a Concatenate's requantized inputs), so one layer's rare rounding tie
// does not count again in every layer after it; >= min_equal of its codes equal, none off by
// more than one (conv and dense ops: >= min_equal_conv, see below). With labels (a
// classifier): top-1 agreement of the integer model run alone >= min_top1, and its accuracy >=
// min_accuracy.
//
// Rounding (as convert_test.cc explains): the QAT model rounds each output once; so does the
// integer model with single rounding, whose codes then agree >= 99.9%. gemmlowp's double
// rounding (the default) moves a conv/dense code near a tie by one in up to ~1% of the outputs
// (their shifts are small); qadd's output shift is near -20 (spec 3.6), where the first
// rounding is 2^-20 of a step, and a Concatenate's requantize always rounds once: those stay
// >= 99.9% under both.
Agreement expect_agreement(nn::Model& qat, quant::IntegerModel& im, const Tensor& x,
                           const Tensor* labels, double min_equal_conv = 0.999,
                           double min_top1 = 0.999, double min_accuracy = 0.85) {
  const double min_equal = 0.999;
  Agreement result;
  std::map<int, int> probe_of;  // integer tensor -> probe output
  std::vector<nn::KTensor> outs;
  for (size_t i = 0; i < im.tensors.size(); ++i) {
    const quant::IntegerTensor& t = im.tensors[i];
    if (t.dtype != DType::kS8 || t.data.defined()) continue;
    nn::KTensor k = find_output(qat, t.name);
    if (!k.defined()) continue;
    probe_of[static_cast<int>(i)] = static_cast<int>(outs.size());
    outs.push_back(k);
  }
  EXPECT_GE(outs.size(), 3u);
  auto probe = nn::Model::create(qat.inputs(), outs, "probe");
  const std::vector<Tensor> want = probe->predict(std::vector<Tensor>{x}, 500);
  std::map<int, int> writer;  // tensor -> op index
  for (size_t o = 0; o < im.ops.size(); ++o) writer[im.ops[o].output] = static_cast<int>(o);
  for (const quant::IntegerOp& op : im.ops) {
    if (!probe_of.count(op.output)) continue;
    Graph g;
    std::vector<std::pair<Value, Tensor>> feeds;
    std::map<int, Value> built;
    std::function<Value(int, bool)> value_of = [&](int t, bool top) -> Value {
      if (auto it = built.find(t); it != built.end()) return it->second;
      const quant::IntegerTensor& it = im.tensors[t];
      Value v;
      if (it.data.defined()) {
        v = g.constant(it.data, it.name);
      } else if (t == im.input) {
        v = g.placeholder(it.name, DType::kF32, it.shape);
        feeds.emplace_back(v, x);
      } else if (!top && probe_of.count(t)) {
        v = g.placeholder(it.name, DType::kS8, it.shape);
        feeds.emplace_back(v, qat_codes(want[probe_of[t]], it));
      } else {
        const quant::IntegerOp& w = im.ops[writer.at(t)];
        std::vector<Value> ins;
        for (int i : w.inputs) ins.push_back(value_of(i, false));
        v = ops::apply(w.op, ins, w.attrs).at(0);
      }
      built[t] = v;
      return v;
    };
    Executor ex(g, {value_of(op.output, true)});
    const Tensor got = ex.run(feeds)[0];
    const quant::IntegerTensor& t = im.tensors[op.output];
    const Tensor w = qat_codes(want[probe_of[op.output]], t);
    EXPECT_EQ(got.numel(), w.numel()) << op.layer;
    if (got.numel() != w.numel()) continue;
    int64_t equal = 0, worst = 0;
    for (int64_t e = 0; e < got.numel(); ++e) {
      const int64_t d = std::llabs(int64_t{got.data<int8_t>()[e]} - int64_t{w.data<int8_t>()[e]});
      equal += d == 0;
      worst = std::max(worst, d);
    }
    const bool conv = op.op == "qconv2d" || op.op == "qfully_connected";
    EXPECT_GE(static_cast<double>(equal) / static_cast<double>(got.numel()),
              conv ? min_equal_conv : min_equal)
        << op.op << " " << op.layer;
    EXPECT_LE(worst, 1) << op.op << " " << op.layer;
    ++result.layers;
    ++result.by_op[op.op];
  }
  if (labels) {
    const int64_t n = x.shape()[0];
    const Tensor yq = qat.predict(x, 500), yi = im.predict(x, 500);
    int64_t agree = 0, right = 0;
    for (int64_t r = 0; r < n; ++r) {
      agree += argmax_row(yq, r) == argmax_row(yi, r);
      right += argmax_row(yi, r) == labels->data<int64_t>()[r];
    }
    EXPECT_GE(static_cast<double>(agree) / static_cast<double>(n), min_top1);
    EXPECT_GE(static_cast<double>(right) / static_cast<double>(n), min_accuracy);
  }
  return result;
}

// Two residual Adds (one with a fused ReLU after it, one without), as MobileNetV2's blocks.
nn::ModelPtr residual_cnn() {
  nn::set_random_seed(11);
  auto conv_bn = [](nn::KTensor x, int64_t filters, int64_t k, int64_t stride, bool relu) {
    x = (*nn::Conv2D(filters, k, {.strides = stride, .padding = "same", .use_bias = false}))(x);
    x = (*nn::BatchNormalization({.momentum = 0.9}))(x);
    return relu ? (*nn::ReLU({.max_value = 6.0}))(x) : x;
  };
  nn::KTensor in = nn::Input({28, 28, 1});
  nn::KTensor x = (*nn::MaxPooling2D(2))(conv_bn(in, 8, 3, 2, true));  // 7x7x8
  nn::KTensor h = conv_bn(conv_bn(x, 8, 3, 1, true), 8, 3, 1, false);
  x = (*nn::ReLU())((*nn::Add())({x, h}));
  h = (*nn::DepthwiseConv2D(3, {.padding = "same", .use_bias = false}))(x);
  h = conv_bn((*nn::ReLU({.max_value = 6.0}))((*nn::BatchNormalization({.momentum = 0.9}))(h)), 8,
              1, 1, false);
  x = (*nn::Add())({h, x});
  x = (*nn::Flatten())(x);
  return nn::Model::create({in}, {(*nn::Dense(10))(x)}, "residual_cnn");
}

// The residual CNN fitted once per process (both Add tests use it).
nn::Model& residual_qat() {
  static const nn::ModelPtr q = [] {
    auto f = residual_cnn();
    return mnist_qat(*f);
  }();
  return *q;
}

void expect_add_converts(quant::Rounding rounding) {
  nn::Model& q = residual_qat();
  quant::IntegerModel im = quant::convert_to_integer(q, {.rounding = rounding});
  EXPECT_EQ(count_of(im, "qadd"), 2);
  std::vector<std::string> acts;
  for (const auto& op : im.ops)
    if (op.op == "qadd") acts.push_back(op.activation.substr(0, op.activation.find(' ')));
  EXPECT_EQ(acts, (std::vector<std::string>{"relu", "none"}));  // the ReLU after the first
  // The converted stages are ones the fast rows take (no multiplier rounded up to 1): every
  // row this CPU has runs them (and matches the reference, tests/ops/int8_test.cc).
  Rng rng(9);
  for (const auto& op : im.ops) {
    if (op.op != "qadd") continue;
    std::vector<int64_t> dims = im.tensors[op.inputs[0]].shape.dims();
    dims[0] = 2;
    const std::vector<Tensor> in{
        testing::random_int_tensor(Shape(dims), rng, -128, 127, DType::kS8),
        testing::random_int_tensor(Shape(dims), rng, -128, 127, DType::kS8)};
    for (const FastKernel& fk : find_op("qadd").fast) {
      std::vector<Tensor> outs;
      EXPECT_EQ(testing::run_listed_kernel(find_op("qadd"), fk, in, op.attrs, outs),
                cpu_has(fk.isa))
          << fk.name << " " << op.layer;
    }
  }
  const bool single = rounding == quant::Rounding::kSingle;
  const Agreement a = expect_agreement(q, im, mnist().test.images, &mnist().test.labels,
                                       single ? 0.999 : 0.99, single ? 0.999 : 0.995);
  EXPECT_EQ(a.by_op.at("qadd"), 2);
  EXPECT_GE(a.by_op.at("qconv2d"), 5);
}

// The spec's Add (left shift 20, double rounding), as TFLite; qadd's codes >= 99.9% equal to
// the QAT model's under it (the conv layers' under double rounding >= 99%).
TEST(ConvertStructural, AddConvertsToQaddAndAgreesWithQat) {
  expect_add_converts(quant::Rounding::kDouble);
}
TEST(ConvertStructural, AddAgreesWithQatUnderSingleRounding) {
  expect_add_converts(quant::Rounding::kSingle);
}

// Two branches of other grids joined on the channel axis (each requantized to the concat's
// grid), and a concat along the width axis of a tensor with itself (already on the grid).
nn::ModelPtr branch_cnn() {
  nn::set_random_seed(12);
  nn::KTensor in = nn::Input({28, 28, 1});
  nn::KTensor a = (*nn::Conv2D(8, 3, {.strides = 2, .padding = "same", .activation = "relu"}))(in);
  nn::KTensor b = (*nn::Conv2D(4, 5, {.strides = 2, .padding = "same", .use_bias = false}))(in);
  b = (*nn::ReLU({.max_value = 6.0}))((*nn::BatchNormalization({.momentum = 0.9}))(b));
  nn::KTensor x = (*nn::Concatenate())({a, b});
  x = (*nn::Conv2D(8, 3, {.strides = 2, .padding = "same", .activation = "relu"}))(x);
  x = (*nn::Concatenate({.axis = 2}))({x, x});
  x = (*nn::MaxPooling2D(2))(x);
  x = (*nn::Flatten())(x);
  return nn::Model::create({in}, {(*nn::Dense(10))(x)}, "branch_cnn");
}

TEST(ConvertStructural, ConcatenateRequantizesItsInputsAndAgreesWithQat) {
  auto f = branch_cnn();
  auto q = mnist_qat(*f);
  quant::IntegerModel im = quant::convert_to_integer(*q, {.rounding = quant::Rounding::kSingle});
  EXPECT_EQ(count_of(im, "concat"), 2);
  // The first concat's two inputs come from different FakeQuants: both requantized; the second
  // reads one tensor on another grid than its own FakeQuant's: requantized once, used twice.
  EXPECT_EQ(count_of(im, "requantize"), 3);
  const quant::IntegerOp& second = im.ops[im.ops.size() - 5];  // then pool, reshape, fc, deq
  ASSERT_EQ(second.op, "concat");
  ASSERT_EQ(second.inputs.size(), 2u);
  EXPECT_EQ(second.inputs[0], second.inputs[1]);
  for (const auto& op : im.ops) {
    if (op.op == "requantize" && op.layer.rfind("concatenate", 0) == 0) {
      EXPECT_EQ(op.attrs.s("rounding"), "single") << op.layer;
    }
  }
  const Agreement a = expect_agreement(*q, im, mnist().test.images, &mnist().test.labels);
  EXPECT_EQ(a.by_op.at("concat"), 2);
}

TEST(ConvertStructural, SeparableConv2DBecomesDepthwiseThenPointwise) {
  nn::set_random_seed(13);
  auto f = nn::Sequential::create(
      {nn::InputSpec({28, 28, 1}), nn::Conv2D(8, 3, {.strides = 2, .activation = "relu"}),
       nn::SeparableConv2D(16, 3, {.padding = "same", .use_bias = false}),
       nn::BatchNormalization({.momentum = 0.9}), nn::ReLU(),
       nn::SeparableConv2D(16, 3, {.strides = 2, .depth_multiplier = 2, .activation = "relu"}),
       nn::Flatten(), nn::Dense(10)},
      "separable_cnn");
  auto q = mnist_qat(*f);
  quant::IntegerModel im = quant::convert_to_integer(*q, {.rounding = quant::Rounding::kSingle});
  EXPECT_EQ(op_kinds(im),
            (std::vector<std::string>{"quantize", "qconv2d", "qconv2d", "qconv2d", "qconv2d",
                                      "qconv2d", "reshape", "qfully_connected", "dequantize"}));
  // The depthwise parts: groups = channels; depth_multiplier 2 doubles the channels.
  EXPECT_EQ(im.ops[2].attrs.i("groups"), 8);
  EXPECT_EQ(im.ops[4].attrs.i("groups"), 16);
  EXPECT_EQ(im.tensors[im.ops[4].output].shape[3], 32);
  const Agreement a = expect_agreement(*q, im, mnist().test.images, &mnist().test.labels);
  EXPECT_EQ(a.by_op.at("qconv2d"), 5);
}

TEST(ConvertStructural, Conv1DRunsAsQconv2dOnOneRow) {
  nn::set_random_seed(14);
  auto f = nn::Sequential::create(
      {nn::InputSpec({24, 3}), nn::Conv1D(8, 3, {.padding = "causal", .activation = "relu"}),
       nn::Conv1D(8, 3, {.strides = 2, .padding = "same", .use_bias = false}),
       nn::BatchNormalization({.momentum = 0.9}), nn::ReLU(),
       nn::Conv1D(6, 3, {.dilation_rate = 2, .groups = 2}), nn::Flatten(), nn::Dense(4)},
      "conv1d_net");
  const Sequences s = random_sequences(1024, 24, 3, 4, 5);
  auto q = regression_qat(*f, s);
  quant::IntegerModel im = quant::convert_to_integer(*q, {.rounding = quant::Rounding::kSingle});
  EXPECT_EQ(count_of(im, "qconv2d"), 3);
  // causal: (k - 1) * dilation = 2 steps of padding on the left only.
  EXPECT_EQ(im.ops[2].attrs.s("padding"), "explicit");
  EXPECT_EQ(im.ops[2].attrs.ints("pads"), (std::vector<int64_t>{0, 0, 2, 0}));
  const Agreement a = expect_agreement(*q, im, s.x, nullptr);
  EXPECT_EQ(a.by_op.at("reshape"), 4);  // each conv's [?, T', F] (a pass-through of its codes)
  // End to end (one layer's rare off-by-one propagates): the regression output of the integer
  // model run alone is the QAT model's within one output step for >= 99% of the values.
  const Tensor yq = q->predict(s.x, 256), yi = im.predict(s.x, 256);
  const double step = im.tensors[im.ops.back().inputs[0]].scale[0];
  int64_t close = 0;
  for (int64_t e = 0; e < yq.numel(); ++e)
    close += std::fabs(yi.data<float>()[e] - yq.data<float>()[e]) <= 1.001 * step;
  EXPECT_GE(static_cast<double>(close) / static_cast<double>(yq.numel()), 0.99);
}

TEST(ConvertStructural, DenseOnRank3InputsIsOneQfullyConnected) {
  nn::set_random_seed(15);
  auto f = nn::Sequential::create(
      {nn::InputSpec({10, 6}), nn::Dense(16, {.activation = "relu"}),
       nn::Dense(12, {.use_bias = false}), nn::BatchNormalization({.momentum = 0.9}),
       nn::ReLU({.max_value = 6.0}), nn::Flatten(), nn::Dense(4)},
      "dense3_net");
  const Sequences s = random_sequences(1024, 10, 6, 4, 6);
  auto q = regression_qat(*f, s);
  quant::IntegerModel im = quant::convert_to_integer(*q, {.rounding = quant::Rounding::kSingle});
  EXPECT_EQ(op_kinds(im),
            (std::vector<std::string>{"quantize", "qfully_connected", "qfully_connected", "reshape",
                                      "qfully_connected", "dequantize"}));
  EXPECT_EQ(im.tensors[im.ops[2].output].shape, (Shape{kUnknown, 10, 12}));
  const Agreement a = expect_agreement(*q, im, s.x, nullptr);
  EXPECT_EQ(a.by_op.at("qfully_connected"), 3);
}

// 4-bit activations (w4a4): every grid has 16 codes, stored as int8 with the clamp of its own
// range; qadd and the concat's requantize keep it (act_min/act_max), and still agree with QAT.
TEST(ConvertStructural, FourBitGridsKeepTheirClampThroughAddAndConcatenate) {
  nn::set_random_seed(18);
  nn::KTensor in = nn::Input({10, 10, 2});
  nn::KTensor a = (*nn::Conv2D(6, 3, {.padding = "same", .activation = "relu"}))(in);
  nn::KTensor b = (*nn::Conv2D(6, 3, {.padding = "same"}))(in);
  nn::KTensor x = (*nn::Add())({a, b});
  x = (*nn::Concatenate())({x, (*nn::Conv2D(3, 1, {.activation = "relu"}))(a)});
  x = (*nn::Conv2D(4, 3, {.strides = 2}))(x);
  auto f = nn::Model::create({in}, {(*nn::Flatten())(x)}, "four_bit_net");
  auto q = quant::quantize_model(*f, quant::QuantizeConfig::preset("w4a4"));
  Rng rng(5);
  const Tensor xs = testing::random_tensor({256, 10, 10, 2}, rng, -1.0f, 1.0f);
  q->calibrate(data::Dataset::from_tensors({xs}), 32);
  quant::IntegerModel im = quant::convert_to_integer(*q, {.rounding = quant::Rounding::kSingle});
  int checked = 0;
  for (const auto& op : im.ops) {
    if (op.op != "qadd" && op.op != "requantize") continue;
    const quant::IntegerTensor& t = im.tensors[op.output];
    EXPECT_EQ(t.qmax - t.qmin, 15) << op.layer;
    EXPECT_EQ(op.attrs.i("act_min"), t.qmin) << op.layer;
    EXPECT_EQ(op.attrs.i("act_max"), t.qmax) << op.layer;
    ++checked;
  }
  EXPECT_GE(checked, 2);
  const Agreement ag = expect_agreement(*q, im, xs, nullptr);
  EXPECT_EQ(ag.by_op.at("qadd"), 1);
  EXPECT_EQ(ag.by_op.at("concat"), 1);
}

TEST(ConvertStructural, ModelFileSavesTheNewOpsAndRefusesWrongAttributes) {
  // Small and untrained-but-calibrated: what is checked is the file, not the accuracy.
  nn::set_random_seed(16);
  nn::KTensor in = nn::Input({12, 12, 1});
  nn::KTensor a = (*nn::Conv2D(4, 3, {.padding = "same", .activation = "relu"}))(in);
  nn::KTensor b = (*nn::Conv2D(4, 3, {.padding = "same"}))(in);
  nn::KTensor x = (*nn::ReLU())((*nn::Add())({a, b}));
  x = (*nn::Concatenate())({x, a});
  x = (*nn::SeparableConv2D(4, 3, {.strides = 2}))(x);
  x = (*nn::Flatten())(x);
  auto f = nn::Model::create({in}, {(*nn::Dense(3))(x)}, "file_net");
  auto q = quant::quantize_model(*f);
  Rng rng(3);
  const Tensor xs = testing::random_tensor({64, 12, 12, 1}, rng, 0.0f, 1.0f);
  q->calibrate(data::Dataset::from_tensors({xs}), 16);
  quant::IntegerModel im = quant::convert_to_integer(*q);
  EXPECT_EQ(count_of(im, "qadd"), 1);
  EXPECT_EQ(count_of(im, "concat"), 1);
  const std::string dir = ::testing::TempDir();
  const std::string path = dir + "/structural.lbi";
  im.save(path);
  quant::IntegerModel back = quant::IntegerModel::load(path);
  EXPECT_EQ(back.graph_json(), im.graph_json());
  EXPECT_TRUE(testing::tensors_equal(back.predict(xs), im.predict(xs)));
  // inspect explains the qadd's three grids and the requantize's multiplier.
  const std::string table = im.inspect_table();
  EXPECT_NE(table.find("input1 scale"), std::string::npos) << table;
  EXPECT_NE(table.find("requantize"), std::string::npos) << table;
  EXPECT_NO_THROW(nn::Json::parse(im.inspect_json()));

  auto op_index = [&](const std::string& kind) {
    for (size_t i = 0; i < im.ops.size(); ++i)
      if (im.ops[i].op == kind) return static_cast<int>(i);
    return -1;
  };
  auto rewrite = [&](const std::function<void(nn::Json&)>& edit, const std::string& needle) {
    io::SafetensorsFile file = io::read_safetensors(path);
    nn::Json g = nn::Json::parse(file.metadata.at("lowbit.integer_model"));
    edit(g);
    file.metadata["lowbit.integer_model"] = g.dump();
    io::write_safetensors(dir + "/structural_bad.lbi", file);
    expect_throws_with<ValueError>([&] { quant::IntegerModel::load(dir + "/structural_bad.lbi"); },
                                   needle);
  };
  const int add = op_index("qadd"), cat = op_index("concat"), rq = op_index("requantize");
  ASSERT_GE(rq, 0);
  rewrite([&](nn::Json& g) { g["ops"][add]["attrs"]["input2_scale"]["f"] = -0.5; },
          "qadd: attribute 'input2_scale'");
  rewrite([&](nn::Json& g) { g["ops"][add]["attrs"]["activation"]["s"] = "gelu"; },
          "qadd: attribute 'activation'");
  rewrite([&](nn::Json& g) { g["ops"][add]["attrs"]["output_zero_point"]["i"] = 300; },
          "qadd: attribute 'output_zero_point'");
  rewrite([&](nn::Json& g) { g["ops"][cat]["attrs"]["axis"]["i"] = 7; }, "concat");
  rewrite([&](nn::Json& g) { g["ops"][rq]["attrs"]["act_min"]["i"] = 200; },
          "requantize: attributes 'act_min', 'act_max'");
  rewrite([&](nn::Json& g) { g["ops"][add]["inputs"].erase(1); }, "qadd");
}

TEST(ConvertStructural, RefusesWhatHasNoIntegerFormNamingTheLayer) {
  Rng rng(4);
  const Tensor xs = testing::random_tensor({32, 8, 8, 2}, rng);
  auto convert = [&](nn::KTensor in, nn::KTensor out) {
    auto f = nn::Model::create({in}, {out}, "refused");
    auto q = quant::quantize_model(*f);
    q->calibrate(data::Dataset::from_tensors({xs}), 16);
    quant::convert_to_integer(*q);
  };
  nn::set_random_seed(17);
  {
    nn::KTensor in = nn::Input({8, 8, 2});
    nn::KTensor a = (*nn::Conv2D(2, 1))(in), b = (*nn::Conv2D(2, 1))(in);
    nn::KTensor y = (*nn::Add({.name = "add3"}))({a, b, in});
    expect_throws_with<UnsupportedError>([&] { convert(in, (*nn::Flatten())(y)); },
                                         "layer 'add3' (Add): an Add of 3 inputs");
  }
  {
    nn::KTensor in = nn::Input({8, 8, 2});
    nn::KTensor a = (*nn::Conv2D(2, 1))(in);
    nn::KTensor y = (*nn::Concatenate({.axis = 0, .name = "cat0"}))({a, in});
    expect_throws_with<UnsupportedError>([&] { convert(in, (*nn::Flatten())(y)); },
                                         "layer 'cat0' (Concatenate): concatenation along axis 0");
  }
  {
    nn::KTensor in = nn::Input({8, 8, 2});
    nn::KTensor a = (*nn::Conv2D(2, 1))(in);
    nn::KTensor y = (*nn::ReLU({.name = "relu_after_cat"}))((*nn::Concatenate())({a, in}));
    expect_throws_with<UnsupportedError>([&] { convert(in, (*nn::Flatten())(y)); },
                                         "layer 'relu_after_cat' (ReLU)");
  }
  {
    // A Conv1D over an unknown number of steps: the qconv2d's width must be known.
    nn::KTensor in = nn::Input(Shape{kUnknown, 3});
    nn::KTensor y = (*nn::Dense(1))((*nn::Conv1D(2, 3, {.name = "conv_any_t"}))(in));
    auto f = nn::Model::create({in}, {y}, "refused_t");
    auto q = quant::quantize_model(*f);
    q->calibrate(data::Dataset::from_tensors({testing::random_tensor({32, 8, 3}, rng)}), 16);
    expect_throws_with<UnsupportedError>(
        [&] { quant::convert_to_integer(*q); },
        "layer 'conv_any_t' (QuantizeWrapper): a Conv1D needs a known number of steps");
  }
}

}  // namespace
}  // namespace lowbit
