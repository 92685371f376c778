// The uint8 activation scheme (ConvertOptions::activations = ActivationScheme::kUint8,
// include/lowbit/quant/convert.h; docs/integer-inference.md "The uint8 scheme"): the same grids
// as the int8 scheme with every activation code, zero point and clamp + 128. Small models
// trained (or calibrated) here, converted both ways: every tensor record, every op attribute and
// every code the u8 model computes is the s8 model's + 128, and the dequantized outputs are
// equal; the golden activation-range vectors of uint8 (../shared/testdata) and the conv output
// stage are the int8 ones shifted by 128; the file round trip; the loader's refusals of
// inconsistent u8 files; inspect and walk_element in u8 codes.
#include <gtest/gtest.h>

#include <fstream>
#include <functional>
#include <set>

#include "lowbit/data/dataset.h"
#include "lowbit/data/idx.h"
#include "lowbit/fixed_point.h"
#include "lowbit/io/safetensors.h"
#include "lowbit/nn/layers.h"
#include "lowbit/nn/losses.h"
#include "lowbit/nn/optimizers.h"
#include "lowbit/quant/convert.h"
#include "lowbit/quant/quantize_model.h"
#include "testing/op_testing.h"

namespace lowbit {
namespace {

using quant::ActivationScheme;
using testing::expect_throws_with;

// The first 512 training images and 500 test images (enough to set ranges; speed matters).
struct Mnist {
  Tensor train_x, train_y, test_x;
};
const Mnist& mnist() {
  static const Mnist m = [] {
    const MnistSplit train = load_mnist(testing::shared_dir() + "/data", true);
    const MnistSplit test = load_mnist(testing::shared_dir() + "/data", false);
    Mnist r;
    r.train_x = Tensor::wrap(train.images.raw(), {512, 28, 28, 1}, DType::kF32).clone();
    r.train_y = Tensor::wrap(train.labels.raw(), {512}, train.labels.dtype()).clone();
    r.test_x = Tensor::wrap(test.images.raw(), {500, 28, 28, 1}, DType::kF32).clone();
    return r;
  }();
  return m;
}

// A CNN with every image op the converter emits: conv + batch norm + ReLU, max pool, a residual
// Add (qadd), a Concatenate of two grids (requantize + concat), an average pool (qavg_pool2d),
// Flatten (reshape), a Dense with tanh and one with sigmoid (qtanh, qlogistic), softmax.
nn::ModelPtr image_qat() {
  nn::reset_layer_names();
  nn::set_random_seed(21);
  nn::KTensor in = nn::Input({28, 28, 1});
  nn::KTensor x = (*nn::Conv2D(8, 3, {.strides = 2, .padding = "same", .use_bias = false}))(in);
  x = (*nn::ReLU())((*nn::BatchNormalization({.momentum = 0.9}))(x));
  x = (*nn::MaxPooling2D(2))(x);  // 7x7x8
  nn::KTensor h = (*nn::Conv2D(8, 3, {.padding = "same", .activation = "relu"}))(x);
  h = (*nn::Conv2D(8, 1))(h);
  x = (*nn::ReLU({.max_value = 6.0}))((*nn::Add())({x, h}));
  nn::KTensor c = (*nn::Conv2D(4, 1, {.activation = "relu"}))(x);
  x = (*nn::Concatenate())({x, c});   // 7x7x12
  x = (*nn::AveragePooling2D(2))(x);  // 3x3x12
  x = (*nn::Flatten())(x);
  x = (*nn::Dense(16, {.activation = "tanh"}))(x);
  x = (*nn::Dense(16, {.activation = "sigmoid"}))(x);
  nn::KTensor y = (*nn::Dense(10, {.activation = "softmax"}))(x);
  auto f = nn::Model::create({in}, {y}, "u8_cnn");
  const auto compile = [](nn::Model& m, double lr) {
    m.compile({.optimizer = nn::Adam({.learning_rate = lr}),
               .loss = nn::SparseCategoricalCrossentropy({.from_logits = false})});
  };
  compile(*f, 2e-3);
  f->fit(mnist().train_x, mnist().train_y, {.epochs = 1, .batch_size = 64, .verbose = 0});
  auto q = quant::quantize_model(*f, quant::QuantizeConfig::preset("w8a8"));
  compile(*q, 5e-4);
  q->fit(mnist().train_x, mnist().train_y, {.epochs = 1, .batch_size = 64, .verbose = 0});
  return q;
}

nn::Model& image_model() {
  static const nn::ModelPtr q = image_qat();
  return *q;
}

// Token ids -> Embedding (gather of a table) -> LSTM (sequences) -> GRU -> Dense, trained
// briefly on random targets.
nn::ModelPtr sequence_qat(Tensor* ids) {
  nn::reset_layer_names();
  nn::set_random_seed(22);
  constexpr int64_t kVocab = 30, kLen = 6, kN = 256;
  nn::KTensor in = nn::Input({kLen}, DType::kS32);
  nn::KTensor x = (*nn::Embedding(kVocab, 4))(in);
  x = (*nn::LSTM(6, {.return_sequences = true}))(x);
  x = (*nn::GRU(5))(x);
  auto f = nn::Model::create({in}, {(*nn::Dense(2))(x)}, "u8_rnn");
  Rng rng(23);
  *ids = testing::random_int_tensor({kN, kLen}, rng, 0, kVocab - 1, DType::kS32);
  const Tensor y = testing::random_tensor({kN, 2}, rng);
  auto q = quant::quantize_model(*f);
  q->compile({.optimizer = nn::Adam({.learning_rate = 1e-2}), .loss = nn::MeanSquaredError()});
  q->fit(*ids, y, {.epochs = 1, .batch_size = 64, .verbose = 0});
  return q;
}

bool is_code_attr(const std::string& k) {
  return k.ends_with("zero_point") || k == "act_min" || k == "act_max";
}

// The u8 model of `qat` (stored in *out) against its s8 model: records, attributes, every code
// on x, outputs.
void expect_u8_is_s8_plus_128(nn::Model& qat, const Tensor& x, quant::Rounding rounding,
                              quant::IntegerModel* out) {
  quant::IntegerModel s8 = quant::convert_to_integer(qat, {.rounding = rounding});
  quant::IntegerModel& u8 = *out;
  u8 = quant::convert_to_integer(qat,
                                 {.rounding = rounding, .activations = ActivationScheme::kUint8});
  EXPECT_EQ(u8.name, qat.name() + "_uint8");
  EXPECT_EQ(s8.graph_json().find("\"u8\""), std::string::npos);
  // Tensors: activations and gather tables u8, codes + 128; weights s8 and biases s32 as they
  // were; scales and shapes equal.
  std::set<int> tables;
  for (const quant::IntegerOp& op : s8.ops)
    if (op.op == "gather") tables.insert(op.inputs[0]);
  EXPECT_EQ(u8.tensors.size(), s8.tensors.size());
  int activations = 0;
  for (size_t i = 0; i < std::min(u8.tensors.size(), s8.tensors.size()); ++i) {
    const quant::IntegerTensor &a = s8.tensors[i], &b = u8.tensors[i];
    SCOPED_TRACE(a.name);
    EXPECT_EQ(b.name, a.name);
    EXPECT_EQ(b.shape, a.shape);
    EXPECT_EQ(b.scale, a.scale);
    const bool codes =
        a.dtype == DType::kS8 && (!a.data.defined() || tables.count(static_cast<int>(i)));
    if (!codes) {
      EXPECT_EQ(b.dtype, a.dtype);
      EXPECT_EQ(b.zero_point, a.zero_point);
      EXPECT_EQ(b.qmin, a.qmin);
      EXPECT_EQ(b.qmax, a.qmax);
      if (a.data.defined()) {
        EXPECT_TRUE(testing::tensors_equal(b.data, a.data));
      }
      continue;
    }
    ++activations;
    EXPECT_EQ(b.dtype, DType::kU8);
    ASSERT_EQ(b.zero_point.size(), 1u);
    EXPECT_EQ(b.zero_point[0], a.zero_point[0] + 128);
    EXPECT_GE(b.zero_point[0], 0);
    EXPECT_LE(b.zero_point[0], 255);
    EXPECT_EQ(b.qmin, a.qmin + 128);
    EXPECT_EQ(b.qmax, a.qmax + 128);
    EXPECT_GE(b.qmin, 0);
    EXPECT_LE(b.qmax, 255);
    if (a.data.defined()) {
      ASSERT_EQ(b.data.dtype(), DType::kU8);
      for (int64_t k = 0; k < a.data.numel(); ++k)
        ASSERT_EQ(int{b.data.data<uint8_t>()[k]}, int{a.data.data<int8_t>()[k]} + 128) << k;
    }
  }
  EXPECT_GE(activations, 3);
  // Ops: the same graph; every zero point and clamp + 128 (all of them are of activation
  // codes), every other attribute equal.
  EXPECT_EQ(u8.ops.size(), s8.ops.size());
  const nn::Json gs = nn::Json::parse(s8.graph_json()), gu = nn::Json::parse(u8.graph_json());
  for (size_t i = 0; i < std::min(u8.ops.size(), s8.ops.size()); ++i) {
    const quant::IntegerOp &a = s8.ops[i], &b = u8.ops[i];
    SCOPED_TRACE(a.op + " " + a.layer);
    EXPECT_EQ(b.op, a.op);
    EXPECT_EQ(b.inputs, a.inputs);
    EXPECT_EQ(b.output, a.output);
    const nn::Json &ja = gs["ops"][i]["attrs"], &jb = gu["ops"][i]["attrs"];
    EXPECT_EQ(jb.size(), ja.size());
    for (const auto& [k, v] : ja.items()) {
      ASSERT_TRUE(jb.contains(k)) << k;
      if (is_code_attr(k))
        EXPECT_EQ(jb[k]["i"].get<int>(), v["i"].get<int>() + 128) << k;
      else
        EXPECT_EQ(jb[k], v) << k;
    }
  }
  // Every code of every tensor the ops produce: the s8 one + 128, as u8.
  const std::vector<Tensor> cs = s8.run_all(x), cu = u8.run_all(x);
  int compared = 0;
  for (size_t t = 0; t < cs.size(); ++t) {
    if (!cs[t].defined()) continue;
    SCOPED_TRACE(s8.tensors[t].name);
    if (cs[t].dtype() != DType::kS8) {
      EXPECT_TRUE(testing::tensors_equal(cu[t], cs[t]));
      continue;
    }
    ASSERT_EQ(cu[t].dtype(), DType::kU8);
    ASSERT_EQ(cu[t].shape(), cs[t].shape());
    for (int64_t k = 0; k < cs[t].numel(); ++k)
      ASSERT_EQ(int{cu[t].data<uint8_t>()[k]}, int{cs[t].data<int8_t>()[k]} + 128) << k;
    ++compared;
  }
  EXPECT_GE(compared, 3);
  // The dequantized outputs: equal (the same real values).
  EXPECT_TRUE(testing::tensors_equal(u8.predict(x), s8.predict(x)));
}

std::map<std::string, int> op_counts(const quant::IntegerModel& im) {
  std::map<std::string, int> n;
  for (const quant::IntegerOp& op : im.ops) ++n[op.op];
  return n;
}

TEST(ConvertUint8, ImageOpsComputeTheInt8CodesPlus128) {
  nn::Model& q = image_model();
  for (const quant::Rounding r : {quant::Rounding::kDouble, quant::Rounding::kSingle}) {
    SCOPED_TRACE(r == quant::Rounding::kDouble ? "double rounding" : "single rounding");
    quant::IntegerModel u8;
    expect_u8_is_s8_plus_128(q, mnist().test_x, r, &u8);
    const std::map<std::string, int> n = op_counts(u8);
    for (const char* op :
         {"quantize", "qconv2d", "qmax_pool2d", "qadd", "requantize", "concat", "qavg_pool2d",
          "reshape", "qfully_connected", "qtanh", "qlogistic", "qsoftmax", "dequantize"})
      EXPECT_GE(n.count(op) ? n.at(op) : 0, 1) << op;
    // The fixed output grids in u8: sigmoid and softmax 1/256 with zero point 0 (code q is the
    // probability q / 256), tanh 1/128 with 128.
    for (const quant::IntegerOp& op : u8.ops) {
      const quant::IntegerTensor& y = u8.tensors[op.output];
      if (op.op == "qlogistic" || op.op == "qsoftmax") {
        EXPECT_EQ(y.scale[0], 1.0 / 256);
        EXPECT_EQ(y.zero_point[0], 0);
      }
      if (op.op == "qtanh") {
        EXPECT_EQ(y.scale[0], 1.0 / 128);
        EXPECT_EQ(y.zero_point[0], 128);
      }
      if (y.dtype == DType::kU8) {  // 8-bit grids: all 256 codes
        EXPECT_EQ(y.qmin, 0) << op.layer;
        EXPECT_EQ(y.qmax, 255) << op.layer;
      }
    }
  }
}

TEST(ConvertUint8, EmbeddingLstmAndGruComputeTheInt8CodesPlus128) {
  Tensor ids;
  auto q = sequence_qat(&ids);
  quant::IntegerModel u8;
  expect_u8_is_s8_plus_128(*q, ids, quant::Rounding::kDouble, &u8);
  const std::map<std::string, int> n = op_counts(u8);
  for (const char* op : {"gather", "qlstm", "qgru", "qfully_connected", "dequantize"})
    EXPECT_GE(n.count(op) ? n.at(op) : 0, 1) << op;
  // The table: u8 codes, its symmetric grid's zero point 0 at 128.
  const quant::IntegerTensor& table = u8.tensors[u8.ops[0].inputs[0]];
  ASSERT_EQ(u8.ops[0].op, "gather");
  EXPECT_EQ(table.dtype, DType::kU8);
  EXPECT_EQ(table.zero_point[0], 128);
}

// Shifted grids: 4-bit activations (w4a4) keep 16 codes, [0, 15] in u8, and their clamps.
TEST(ConvertUint8, LowBitGridsKeepTheirRangeShifted) {
  nn::reset_layer_names();
  nn::set_random_seed(24);
  nn::KTensor in = nn::Input({6, 6, 2});
  nn::KTensor a = (*nn::Conv2D(4, 3, {.padding = "same", .activation = "relu"}))(in);
  nn::KTensor b = (*nn::Conv2D(4, 3, {.padding = "same"}))(in);
  nn::KTensor x = (*nn::Add())({a, b});
  x = (*nn::Conv2D(3, 3, {.strides = 2}))(x);
  auto f = nn::Model::create({in}, {(*nn::Flatten())(x)}, "u8_four_bit");
  auto q = quant::quantize_model(*f, quant::QuantizeConfig::preset("w4a4"));
  Rng rng(25);
  const Tensor xs = testing::random_tensor({64, 6, 6, 2}, rng);
  q->calibrate(data::Dataset::from_tensors({xs}), 32);
  quant::IntegerModel u8;
  expect_u8_is_s8_plus_128(*q, xs, quant::Rounding::kSingle, &u8);
  int checked = 0;
  for (const quant::IntegerOp& op : u8.ops) {
    const quant::IntegerTensor& t = u8.tensors[op.output];
    if (t.dtype != DType::kU8 || op.op == "quantize") continue;  // the input stays 8-bit
    EXPECT_EQ(t.qmin, 0) << op.layer;
    EXPECT_EQ(t.qmax, 15) << op.layer;
    if (op.attrs.has("act_min")) {
      EXPECT_EQ(op.attrs.i("act_min"), 0) << op.layer;
      EXPECT_EQ(op.attrs.i("act_max"), 15) << op.layer;
      ++checked;
    }
  }
  EXPECT_GE(checked, 3);
}

// The spec's golden activation ranges of uint8 (act_4, act_7 of fakequant_examples.json) are the
// int8 ranges of the zero point - 128, + 128; and the conv output stage of every int8 vector,
// run in u8 with the zero point + 128, writes each code + 128.
TEST(ConvertUint8, GoldenRangesAndOutputStagesAreTheInt8OnesShifted) {
  std::ifstream f(testing::shared_dir() + "/testdata/fakequant_examples.json");
  ASSERT_TRUE(f.good());
  const nn::Json j = nn::Json::parse(f);
  int ranges = 0, stages = 0;
  for (const nn::Json& c : j.at("cases")) {
    const nn::Json& p = c.at("params");
    if (c.at("kind") == "activation_range" && p.at("dtype") == "uint8") {
      const float scale = p.at("scale").get<float>();
      const int32_t zp = p.at("zero_point").get<int32_t>();
      const quant::FusedActivation act =
          quant::fused_activation_from_name(p.at("activation").get<std::string>());
      const quant::QuantRange u = quant::activation_range(scale, zp, act, DType::kU8);
      const quant::QuantRange s = quant::activation_range(scale, zp - 128, act, DType::kS8);
      EXPECT_EQ(u.min, c.at("expected").at("act_min").get<int32_t>()) << c.at("id");
      EXPECT_EQ(u.max, c.at("expected").at("act_max").get<int32_t>()) << c.at("id");
      EXPECT_EQ(u.min, s.min + 128) << c.at("id");
      EXPECT_EQ(u.max, s.max + 128) << c.at("id");
      ++ranges;
    }
    if (c.at("kind") == "conv_output_stage" && p.at("dtype") == "int8") {
      for (const quant::Rounding r : {quant::Rounding::kDouble, quant::Rounding::kSingle}) {
        quant::ConvOutputStageConfig cfg{
            .input_scale = p.at("input_scale").get<float>(),
            .weight_scale = p.at("weight_scale").get<float>(),
            .output_scale = p.at("output_scale").get<float>(),
            .output_zero_point = p.at("output_zero_point").get<int32_t>(),
            .activation = quant::fused_activation_from_name(p.at("activation").get<std::string>()),
            .dtype = DType::kS8,
            .rounding = r};
        const quant::ConvOutputStage s = quant::make_conv_output_stage(cfg);
        cfg.output_zero_point += 128;
        cfg.dtype = DType::kU8;
        const quant::ConvOutputStage u = quant::make_conv_output_stage(cfg);
        for (const nn::Json& a : c.at("inputs").at("acc")) {
          const int32_t acc = a.get<int32_t>();
          EXPECT_EQ(u.apply(acc), s.apply(acc) + 128) << c.at("id") << " acc " << acc;
        }
      }
      ++stages;
    }
  }
  EXPECT_EQ(ranges, 2);
  EXPECT_GE(stages, 2);
}

TEST(ConvertUint8, FileRoundTripAndLoaderRefusesInconsistentU8) {
  nn::Model& q = image_model();
  quant::IntegerModel u8 = quant::convert_to_integer(
      q, {.rounding = quant::Rounding::kSingle, .activations = ActivationScheme::kUint8});
  const std::string dir = ::testing::TempDir();
  const std::string path = dir + "/u8.lbi";
  u8.save(path);
  quant::IntegerModel back = quant::IntegerModel::load(path);
  EXPECT_EQ(back.graph_json(), u8.graph_json());
  const Tensor& x = mnist().test_x;
  EXPECT_TRUE(testing::tensors_equal(back.predict(x), u8.predict(x)));
  {
    const std::vector<Tensor> a = back.run_all(x), b = u8.run_all(x);
    for (size_t t = 0; t < a.size(); ++t)
      if (a[t].defined()) {
        EXPECT_TRUE(testing::tensors_equal(a[t], b[t])) << t;
      }
  }
  // The file holds u8 records: the quantize output's dtype and zero point.
  {
    const io::SafetensorsFile file = io::read_safetensors(path);
    const nn::Json g = nn::Json::parse(file.metadata.at("lowbit.integer_model"));
    const nn::Json& t = g["tensors"][g["ops"][0]["output"].get<int>()];
    EXPECT_EQ(t["dtype"], "u8");
    EXPECT_EQ(t["qmin"], 0);
    EXPECT_EQ(t["qmax"], 255);
    EXPECT_EQ(g["ops"][0]["attrs"]["zero_point"]["i"].get<int>(), t["zero_point"][0].get<int>());
  }
  // Inconsistent contents, each refused naming the tensor (or op) and the field.
  auto rewrite = [&](const std::function<void(nn::Json&)>& edit, const std::string& needle) {
    io::SafetensorsFile file = io::read_safetensors(path);
    nn::Json g = nn::Json::parse(file.metadata.at("lowbit.integer_model"));
    edit(g);
    file.metadata["lowbit.integer_model"] = g.dump();
    io::write_safetensors(dir + "/bad_u8.lbi", file);
    expect_throws_with<ValueError>([&] { quant::IntegerModel::load(dir + "/bad_u8.lbi"); }, needle);
  };
  ASSERT_EQ(u8.ops[0].op, "quantize");
  ASSERT_EQ(u8.ops[1].op, "qconv2d");
  const int q_out = u8.ops[0].output, c_out = u8.ops[1].output;
  const std::string q_name = u8.tensors[q_out].name, c_name = u8.tensors[c_out].name;
  rewrite([&](nn::Json& g) { g["tensors"][q_out]["zero_point"][0] = 256; },
          "tensor '" + q_name + "': field 'zero_point' is 256, outside [0, 255]");
  rewrite([&](nn::Json& g) { g["tensors"][q_out]["zero_point"][0] = -1; },
          "tensor '" + q_name + "': field 'zero_point' is -1, outside [0, 255]");
  rewrite([&](nn::Json& g) { g["tensors"][q_out]["qmin"] = -1; },
          "tensor '" + q_name + "': fields 'qmin', 'qmax' must satisfy 0 <= qmin <= qmax <= 255");
  rewrite([&](nn::Json& g) { g["tensors"][q_out]["qmax"] = 256; }, "0 <= qmin <= qmax <= 255");
  // A u8 tensor fed to an op writing s8 (the conv's output declared s8, zero point in range).
  rewrite(
      [&](nn::Json& g) {
        g["tensors"][c_out]["dtype"] = "s8";
        g["tensors"][c_out]["zero_point"][0] =
            g["tensors"][c_out]["zero_point"][0].get<int>() - 128;
        g["tensors"][c_out]["qmin"] = -128;
        g["tensors"][c_out]["qmax"] = 127;
      },
      "op 1 (qconv2d, " + u8.ops[1].layer + "): input tensor '" + q_name +
          "' is u8 but output tensor '" + c_name + "' is s8");
  // The other way: an s8 tensor fed to ops of u8.
  rewrite(
      [&](nn::Json& g) {
        g["tensors"][q_out]["dtype"] = "s8";
        g["tensors"][q_out]["zero_point"][0] = 0;
        g["tensors"][q_out]["qmin"] = -128;
        g["tensors"][q_out]["qmax"] = 127;
      },
      "input tensor '" + q_name + "' is s8 but output tensor '" + c_name + "' is u8");
  // Op attributes on u8 tensors: a zero point outside [0, 255], a required one left out.
  rewrite([&](nn::Json& g) { g["ops"][1]["attrs"]["input_zero_point"]["i"] = 300; },
          "attribute 'input_zero_point' is 300 but tensor '" + q_name +
              "' is u8: expected a code in [0, 255]");
  rewrite([&](nn::Json& g) { g["ops"][1]["attrs"].erase("output_zero_point"); },
          "attribute 'output_zero_point' is required: tensor '" + c_name + "' is u8");
  // The fixed output grids in u8: softmax's zero point is 0.
  for (size_t i = 0; i < u8.ops.size(); ++i) {
    if (u8.ops[i].op != "qsoftmax") continue;
    const int y = u8.ops[i].output;
    rewrite([&](nn::Json& g) { g["tensors"][y]["zero_point"][0] = 128; },
            "must be u8 at the fixed scale 0.003906, zero point 0, codes [0, 255]");
  }
}

TEST(ConvertUint8, InspectAndWalkShowU8Codes) {
  nn::Model& q = image_model();
  quant::IntegerModel s8 = quant::convert_to_integer(q);
  quant::IntegerModel u8 = quant::convert_to_integer(q, {.activations = ActivationScheme::kUint8});
  const nn::Json js = nn::Json::parse(s8.inspect_json()), ju = nn::Json::parse(u8.inspect_json());
  ASSERT_EQ(js.size(), ju.size());
  int convs = 0;
  for (size_t i = 0; i < js.size(); ++i) {
    if (!js[i].contains("channels")) continue;
    SCOPED_TRACE(ju[i]["layer"].get<std::string>());
    for (const char* k : {"input", "output"}) {
      EXPECT_EQ(ju[i][k]["dtype"], "u8");
      EXPECT_EQ(js[i][k]["dtype"], "s8");
      EXPECT_EQ(ju[i][k]["zero_point"].get<int>(), js[i][k]["zero_point"].get<int>() + 128);
    }
    // The clamp in u8 codes: a ReLU's [z, 255].
    for (size_t c = 0; c < js[i]["channels"].size(); ++c) {
      EXPECT_EQ(ju[i]["channels"][c]["clamp"][0].get<int>(),
                js[i]["channels"][c]["clamp"][0].get<int>() + 128);
      EXPECT_EQ(ju[i]["channels"][c]["clamp"][1].get<int>(),
                js[i]["channels"][c]["clamp"][1].get<int>() + 128);
      EXPECT_EQ(ju[i]["channels"][c]["M0"], js[i]["channels"][c]["M0"]);
    }
    if (ju[i]["activation"].get<std::string>().starts_with("relu ")) {
      EXPECT_EQ(ju[i]["channels"][0]["clamp"],
                nn::Json::array({ju[i]["output"]["zero_point"].get<int>(), 255}));
    }
    ++convs;
  }
  EXPECT_GE(convs, 5);
  const std::string table = u8.inspect_table();
  const int zp_in = static_cast<int>(u8.ops[1].attrs.i("input_zero_point"));
  EXPECT_NE(table.find("zp " + std::to_string(zp_in) + " (u8)"), std::string::npos) << table;
  EXPECT_EQ(s8.inspect_table().find("(u8)"), std::string::npos);
  // One element walked through the arithmetic in u8 codes: the same accumulator and the code
  // the runtime stored.
  const Tensor one = Tensor::wrap(mnist().test_x.raw(), {1, 28, 28, 1}, DType::kF32);
  const std::string w = u8.walk_element(one, 1, 100);
  EXPECT_NE(w.find("u8 codes"), std::string::npos) << w;
  EXPECT_NE(w.find("(equal)"), std::string::npos) << w;
  EXPECT_EQ(w.find("MISMATCH"), std::string::npos) << w;
  const std::string ws = s8.walk_element(one, 1, 100);
  const auto acc_line = [](const std::string& s) {
    const size_t a = s.find("accumulator");
    return s.substr(a, s.find('\n', a) - a);
  };
  EXPECT_EQ(acc_line(w), acc_line(ws));
}

}  // namespace
}  // namespace lowbit
