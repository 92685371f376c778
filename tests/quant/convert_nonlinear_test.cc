// convert_to_integer for sigmoid, tanh, softmax and Embedding (include/lowbit/quant/convert.h):
// quantize_model puts a FakeQuant on each function's fixed output grid (1/256 with zero point
// -128, or 1/128 with 0), the converter turns the function into qlogistic / qtanh / qsoftmax
// and an Embedding into a gather of its table's codes. Small models on MNIST (a classifier
// ending in softmax; one with tanh and sigmoid) and on random token ids: every integer op's
// codes are compared with the QAT model's (its FakeQuant outputs on their grids), fed the QAT
// model's codes of its input: >= 99.9% equal, none off by more than one; the top-1 classes of
// the integer model agree with the QAT model's on >= 99.9% of the test split. Also the model
// file round trip and the loader's refusals of wrong parameters, and refused layers.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <map>

#include "lowbit/data/idx.h"
#include "lowbit/graph.h"
#include "lowbit/io/safetensors.h"
#include "lowbit/nn/layers.h"
#include "lowbit/nn/losses.h"
#include "lowbit/nn/optimizers.h"
#include "lowbit/ops.h"
#include "lowbit/quant/convert.h"
#include "lowbit/quant/quantize_model.h"
#include "testing/convert_testing.h"
#include "testing/op_testing.h"

namespace lowbit {
namespace {

using testing::argmax_row;
using testing::expect_throws_with;
using testing::find_layer;
using testing::find_output;
using testing::mnist;
using testing::op_kinds;
using testing::qat_codes;

nn::ModelPtr trained(std::vector<nn::LayerPtr> layers, const std::string& name, bool logits,
                     int epochs = 1) {
  nn::set_random_seed(5);
  auto m = nn::Sequential::create(std::move(layers), name);
  m->compile({.optimizer = nn::Adam({.learning_rate = 2e-3}),
              .loss = nn::SparseCategoricalCrossentropy({.from_logits = logits}),
              .metrics = {"accuracy"}});
  m->fit(mnist().train.images, mnist().train.labels,
         {.epochs = epochs, .batch_size = 64, .verbose = 0});
  return m;
}

nn::ModelPtr qat_of(const nn::Model& f, bool logits) {
  nn::ModelPtr q = quant::quantize_model(f, quant::QuantizeConfig::preset("w8a8"));
  q->compile({.optimizer = nn::Adam({.learning_rate = 5e-4}),
              .loss = nn::SparseCategoricalCrossentropy({.from_logits = logits}),
              .metrics = {"accuracy"}});
  q->fit(mnist().train.images, mnist().train.labels, {.epochs = 1, .batch_size = 64, .verbose = 0});
  return q;
}

// Per op: fed the QAT model's codes of its inputs (or x, or constants), the integer op's codes
// equal the QAT model's on >= min_equal of the elements, none off by more than one. Returns
// the ops checked, by op name.
std::map<std::string, int> expect_ops_agree(nn::Model& qat, quant::IntegerModel& im,
                                            const Tensor& x, double min_equal = 0.999) {
  std::map<int, int> probe_of;
  std::vector<nn::KTensor> outs;
  for (size_t i = 0; i < im.tensors.size(); ++i) {
    const quant::IntegerTensor& t = im.tensors[i];
    if (t.dtype != DType::kS8 || t.data.defined()) continue;
    nn::KTensor k = find_output(qat, t.name);
    if (!k.defined()) continue;
    probe_of[static_cast<int>(i)] = static_cast<int>(outs.size());
    outs.push_back(k);
  }
  auto probe = nn::Model::create(qat.inputs(), outs, "probe");
  const std::vector<Tensor> want = probe->predict(std::vector<Tensor>{x}, 500);
  const std::vector<Tensor> all = im.run_all(x);  // for inputs the QAT model has no tensor of
  std::map<std::string, int> checked;
  for (const quant::IntegerOp& op : im.ops) {
    if (!probe_of.count(op.output)) continue;
    Graph g;
    std::vector<Value> ins;
    std::vector<std::pair<Value, Tensor>> feeds;
    bool fed = true;
    for (int t : op.inputs) {
      const quant::IntegerTensor& it = im.tensors[t];
      if (it.data.defined()) {
        ins.push_back(g.constant(it.data, it.name));
      } else if (t == im.input) {
        ins.push_back(g.placeholder(it.name, it.dtype, it.shape));
        feeds.emplace_back(ins.back(), x);
      } else if (probe_of.count(t)) {
        ins.push_back(g.placeholder(it.name, DType::kS8, it.shape));
        feeds.emplace_back(ins.back(), qat_codes(want[probe_of[t]], it));
      } else if (all.at(t).defined()) {
        ins.push_back(g.placeholder(it.name, it.dtype, it.shape));
        feeds.emplace_back(ins.back(), all.at(t));
      } else {
        fed = false;
      }
    }
    if (!fed) continue;
    Executor ex(g, {ops::apply(op.op, ins, op.attrs).at(0)});
    const Tensor got = ex.run(feeds)[0];
    const Tensor w = qat_codes(want[probe_of[op.output]], im.tensors[op.output]);
    EXPECT_EQ(got.numel(), w.numel()) << op.layer;
    int64_t equal = 0, worst = 0;
    for (int64_t e = 0; e < got.numel(); ++e) {
      const int64_t d = std::llabs(int64_t{got.data<int8_t>()[e]} - int64_t{w.data<int8_t>()[e]});
      equal += d == 0;
      worst = std::max(worst, d);
    }
    EXPECT_GE(static_cast<double>(equal) / static_cast<double>(got.numel()), min_equal)
        << op.op << " " << op.layer;
    EXPECT_LE(worst, 1) << op.op << " " << op.layer;
    ++checked[op.op];
  }
  return checked;
}

// Top-1 agreement of the integer model with the QAT model on the test split, and accuracy.
void expect_top1(nn::Model& qat, quant::IntegerModel& im, double min_agree = 0.999,
                 double min_accuracy = 0.9) {
  const Tensor& x = mnist().test.images;
  const int64_t n = x.shape()[0];
  const Tensor yq = qat.predict(x, 500), yi = im.predict(x, 500);
  int64_t agree = 0, right = 0;
  const int64_t* labels = mnist().test.labels.data<int64_t>();
  for (int64_t r = 0; r < n; ++r) {
    agree += argmax_row(yq, r) == argmax_row(yi, r);
    right += argmax_row(yi, r) == labels[r];
  }
  EXPECT_GE(static_cast<double>(agree) / static_cast<double>(n), min_agree);
  EXPECT_GE(static_cast<double>(right) / static_cast<double>(n), min_accuracy);
}

nn::ModelPtr softmax_classifier() {
  return trained({nn::InputSpec({28, 28, 1}), nn::Flatten(),
                  nn::Dense(64, {.activation = "relu", .name = "hidden"}),
                  nn::Dense(10, {.activation = "softmax", .name = "probs"})},
                 "softmax_mlp", false);
}

TEST(ConvertNonlinear, MnistClassifierEndingInSoftmax) {
  auto f = softmax_classifier();
  auto q = qat_of(*f, false);
  // quantize_model: the dense's pre-activation FakeQuant, the split softmax, then a FakeQuant
  // on softmax's fixed grid [0, 255/256] (8 bit, never tracked).
  const auto* fq =
      dynamic_cast<const quant::FakeQuantLayer*>(find_layer(*q, "probs_softmax_quant"));
  ASSERT_NE(fq, nullptr);
  EXPECT_EQ(fq->quantizer().config().range, "fixed");
  const quant::Quantizer::Grid g = fq->quantizer().grid(*fq);
  EXPECT_EQ(g.scale.at(0), 1.0f / 256);
  EXPECT_EQ(g.zero_point.at(0), 0);                           // uint8 0 is int8 -128
  EXPECT_EQ(fq->quantizer().min(*fq).get_as_double(0), 0.0);  // training did not move it
  EXPECT_EQ(fq->quantizer().max(*fq).get_as_double(0), 255.0 / 256);

  quant::IntegerModel im = quant::convert_to_integer(*q, {.rounding = quant::Rounding::kSingle});
  EXPECT_EQ(op_kinds(im), (std::vector<std::string>{"quantize", "reshape", "qfully_connected",
                                                    "qfully_connected", "qsoftmax", "dequantize"}));
  const quant::IntegerOp& sm = im.ops[4];
  EXPECT_EQ(sm.layer, "probs_softmax+probs_softmax_quant");
  EXPECT_EQ(im.tensors[sm.output].scale[0], 1.0 / 256);
  EXPECT_EQ(im.tensors[sm.output].zero_point[0], -128);
  const std::map<std::string, int> checked = expect_ops_agree(*q, im, mnist().test.images);
  EXPECT_EQ(checked.count("qsoftmax"), 1u);
  EXPECT_EQ(checked.at("qfully_connected"), 2);
  expect_top1(*q, im);
  // The integer model's probabilities are codes / 256 (each row sums to about 1).
  const Tensor p =
      im.predict(Tensor::wrap(mnist().test.images.raw(), {20, 28, 28, 1}, DType::kF32));
  for (int64_t r = 0; r < 20; ++r) {
    double s = 0;
    for (int64_t c = 0; c < 10; ++c) {
      const double v = p.data<float>()[r * 10 + c];
      EXPECT_EQ(v * 256, std::round(v * 256));
      s += v;
    }
    EXPECT_NEAR(s, 1.0, 10.0 / 256);
  }
  // Double rounding (TFLite's default) in the dense layers: the softmax agrees as well.
  quant::IntegerModel gemmlowp = quant::convert_to_integer(*q);
  expect_ops_agree(*q, gemmlowp, mnist().test.images, 0.99);
  expect_top1(*q, gemmlowp, 0.995);

  // The model file: round trip, and the loader refuses other output parameters.
  const std::string dir = ::testing::TempDir();
  const std::string path = dir + "/softmax.lbi";
  im.save(path);
  quant::IntegerModel back = quant::IntegerModel::load(path);
  const Tensor x = Tensor::wrap(mnist().test.images.raw(), {200, 28, 28, 1}, DType::kF32);
  EXPECT_TRUE(testing::tensors_equal(back.predict(x), im.predict(x)));
  auto rewrite = [&](const std::function<void(nn::Json&)>& edit, const std::string& needle) {
    io::SafetensorsFile file = io::read_safetensors(path);
    nn::Json j = nn::Json::parse(file.metadata.at("lowbit.integer_model"));
    edit(j);
    file.metadata["lowbit.integer_model"] = j.dump();
    io::write_safetensors(dir + "/bad_softmax.lbi", file);
    expect_throws_with<ValueError>([&] { quant::IntegerModel::load(dir + "/bad_softmax.lbi"); },
                                   needle);
  };
  rewrite([](nn::Json& j) { j["ops"][4]["attrs"]["output_scale"]["f"] = 0.004; }, "fixed at scale");
  rewrite([](nn::Json& j) { j["ops"][4]["attrs"]["beta"]["f"] = -1.0; }, "beta");
  rewrite([&](nn::Json& j) { j["tensors"][sm.output]["zero_point"][0] = 0; },
          "must be s8 at the fixed scale");
  rewrite([](nn::Json& j) { j["ops"][4]["attrs"]["input_zero_point"]["i"] = 5; },
          "must be those of input tensor");
}

TEST(ConvertNonlinear, TanhAndSigmoidLayers) {
  // tanh as a Dense's own activation (split by quantize_model), sigmoid as an Activation layer.
  auto f =
      trained({nn::InputSpec({28, 28, 1}), nn::Flatten(), nn::Dense(32, {.activation = "tanh"}),
               nn::Dense(24), nn::Activation("sigmoid"), nn::Dense(10)},
              "tanh_sigmoid_mlp", true);
  auto q = qat_of(*f, true);
  quant::IntegerModel im = quant::convert_to_integer(*q, {.rounding = quant::Rounding::kSingle});
  EXPECT_EQ(op_kinds(im), (std::vector<std::string>{"quantize", "reshape", "qfully_connected",
                                                    "qtanh", "qfully_connected", "qlogistic",
                                                    "qfully_connected", "dequantize"}));
  for (const auto& op : im.ops) {
    if (op.op != "qtanh" && op.op != "qlogistic") continue;
    const quant::IntegerTensor& t = im.tensors[op.output];
    EXPECT_EQ(t.scale[0], op.op == "qtanh" ? 1.0 / 128 : 1.0 / 256) << op.layer;
    EXPECT_EQ(t.zero_point[0], op.op == "qtanh" ? 0 : -128) << op.layer;
  }
  const std::map<std::string, int> checked = expect_ops_agree(*q, im, mnist().test.images);
  EXPECT_EQ(checked.count("qtanh"), 1u);
  EXPECT_EQ(checked.count("qlogistic"), 1u);
  expect_top1(*q, im, 0.999, 0.85);  // a 24-unit sigmoid bottleneck, 8,000 training images
}

TEST(ConvertNonlinear, EmbeddingIsAGatherOfTableCodes) {
  // Token ids (s32 and f32) -> Embedding -> Flatten -> Dense: regression on random targets.
  for (const DType ids : {DType::kS32, DType::kF32}) {
    SCOPED_TRACE(dtype_name(ids));
    nn::set_random_seed(9);
    constexpr int64_t kVocab = 50, kLen = 6, kN = 512;
    auto f = nn::Sequential::create(
        {nn::InputSpec({kLen}, ids), nn::Embedding(kVocab, 8, {.name = "embedding"}), nn::Flatten(),
         nn::Dense(4)},
        "embed");
    Rng rng(4);
    const Tensor x = testing::random_int_tensor({kN, kLen}, rng, 0, kVocab - 1, ids);
    const Tensor y = testing::random_tensor({kN, 4}, rng);
    auto q = quant::quantize_model(*f);
    q->compile({.optimizer = nn::Adam({.learning_rate = 1e-3}), .loss = nn::MeanSquaredError()});
    q->fit(x, y, {.epochs = 2, .batch_size = 64, .verbose = 0});
    quant::IntegerModel im = quant::convert_to_integer(*q, {.rounding = quant::Rounding::kSingle});
    const std::vector<std::string> want =
        ids == DType::kF32
            ? std::vector<std::string>{"cast", "gather", "reshape", "qfully_connected",
                                       "dequantize"}
            : std::vector<std::string>{"gather", "reshape", "qfully_connected", "dequantize"};
    EXPECT_EQ(op_kinds(im), want);
    // The table: int8 per tensor, zero point 0, narrow codes [-127, 127] (w8a8's weights).
    const quant::IntegerTensor& table = im.tensors[im.ops[want.size() - 4].inputs[0]];
    ASSERT_TRUE(table.data.defined());
    EXPECT_EQ(table.shape, Shape({kVocab, 8}));
    EXPECT_EQ(table.scale.size(), 1u);
    EXPECT_EQ(table.zero_point[0], 0);
    EXPECT_EQ(table.qmin, -127);
    EXPECT_EQ(table.qmax, 127);
    // The gather's codes are the QAT embedding's rows; the dense's within one code.
    const std::map<std::string, int> checked = expect_ops_agree(*q, im, x);
    EXPECT_EQ(checked.count("gather"), 1u);
    EXPECT_EQ(checked.count("qfully_connected"), 1u);
    const Tensor yq = q->predict(x), yi = im.predict(x);
    const double step = im.tensors[im.ops.back().inputs[0]].scale[0];
    for (int64_t i = 0; i < yq.numel(); ++i)
      ASSERT_LE(std::fabs(yq.data<float>()[i] - yi.data<float>()[i]), 1.0001 * step) << i;
    // Round trip; ids outside the table are refused.
    const std::string path = ::testing::TempDir() + "/embed.lbi";
    im.save(path);
    quant::IntegerModel back = quant::IntegerModel::load(path);
    EXPECT_TRUE(testing::tensors_equal(back.predict(x), yi));
    Tensor bad = x.clone();
    bad.set_from_double(3, static_cast<double>(kVocab));
    expect_throws_with<ValueError>([&] { back.predict(bad); }, "expected ids in [0, 50)");
    // A table quantized per channel (per output feature) has no integer gather here.
    quant::QuantizeConfig pc;
    pc.overrides["embedding"] = {.per_channel = true};
    auto qpc = quant::quantize_model(*f, pc);
    qpc->compile({.optimizer = nn::Adam({}), .loss = nn::MeanSquaredError()});
    qpc->fit(x, y, {.epochs = 1, .batch_size = 256, .verbose = 0});
    expect_throws_with<UnsupportedError>([&] { quant::convert_to_integer(*qpc); },
                                         "'embedding' (QuantizeWrapper): its table is quantized "
                                         "per channel");
  }
}

TEST(ConvertNonlinear, RefusesFunctionsWithoutAnIntegerFormNamingTheLayer) {
  nn::set_random_seed(2);
  auto m = nn::Sequential::create(
      {nn::InputSpec({5}), nn::Dense(4), nn::Activation("softplus", {.name = "sp"}), nn::Dense(2)},
      "softplus_mlp");
  auto q = quant::quantize_model(*m);
  Rng rng(1);
  const Tensor x = testing::random_tensor({64, 5}, rng), y = testing::random_tensor({64, 2}, rng);
  q->compile({.optimizer = nn::Adam({}), .loss = nn::MeanSquaredError()});
  q->fit(x, y, {.epochs = 1, .verbose = 0});
  expect_throws_with<UnsupportedError>(
      [&] { quant::convert_to_integer(*q); },
      "layer 'sp' (Activation): activation 'softplus' has no integer form");
}

}  // namespace
}  // namespace lowbit
