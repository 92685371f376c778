// convert_to_integer and IntegerModel (include/lowbit/quant/convert.h) on real MNIST: a small
// CNN trained in float, fine-tuned with QAT, converted; the integer model's codes are compared
// layer by layer with the QAT model's own (its FakeQuant outputs divided by their grid step)
// on the test split: >= 99.9% equal, none off by more than one code, top-1 agreement >= 99.9%.
// Also the model file round trip, the loader's refusals, inspect, and refused layers.
#include "lowbit/quant/convert.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>

#include "lowbit/data/idx.h"
#include "lowbit/graph.h"
#include "lowbit/io/safetensors.h"
#include "lowbit/nn/layers.h"
#include "lowbit/nn/losses.h"
#include "lowbit/nn/optimizers.h"
#include "lowbit/ops.h"
#include "lowbit/quant/quantize_model.h"
#include "testing/convert_testing.h"
#include "testing/op_testing.h"

namespace lowbit {
namespace {

using testing::argmax_row;
using testing::expect_throws_with;
using testing::find_output;
using testing::mnist;
using testing::qat_codes;

// The first `n` training images and labels (0: all 8,000). The file and inspect tests need a
// trained, calibrated model but not its accuracy: they train on 1,024 (a fifth of the time,
// which under ASan is most of the suite's).
constexpr int64_t kFewImages = 1024;
std::pair<Tensor, Tensor> train_split(int64_t n) {
  const MnistSplit& t = mnist().train;
  if (n == 0 || n >= t.images.shape()[0]) return {t.images, t.labels};
  std::vector<int64_t> xd = t.images.shape().dims(), yd = t.labels.shape().dims();
  xd[0] = yd[0] = n;
  return {Tensor::wrap(t.images.raw(), Shape(xd), t.images.dtype()),
          Tensor::wrap(t.labels.raw(), Shape(yd), t.labels.dtype())};
}

// A small version of the demo CNN (examples/mnist_cnn.cc) with every convertible layer kind.
nn::ModelPtr small_cnn(bool depthwise, int64_t images = 0) {
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
  for (nn::LayerPtr l :
       {nn::Flatten(), nn::Dropout(0.2), nn::Dense(32, {.activation = "relu"}), nn::Dense(10)})
    layers.push_back(l);
  auto m = nn::Sequential::create(layers, depthwise ? "dw_cnn" : "small_cnn");
  m->compile({.optimizer = nn::Adam({.learning_rate = 2e-3}),
              .loss = nn::SparseCategoricalCrossentropy({.from_logits = true}),
              .metrics = {"accuracy"}});
  const auto [x, y] = train_split(images);
  m->fit(x, y, {.epochs = 1, .batch_size = 64, .verbose = 0});
  return m;
}

nn::ModelPtr qat_of(const nn::Model& f, const std::string& preset, int64_t images = 0) {
  nn::ModelPtr q = quant::quantize_model(f, quant::QuantizeConfig::preset(preset));
  q->compile({.optimizer = nn::Adam({.learning_rate = 5e-4}),
              .loss = nn::SparseCategoricalCrossentropy({.from_logits = true}),
              .metrics = {"accuracy"}});
  const auto [x, y] = train_split(images);
  q->fit(x, y, {.epochs = 1, .batch_size = 64, .verbose = 0});
  return q;
}

// Per-layer code agreement and top-1 agreement of the integer model with the QAT model. Each
// integer op is run on its own, fed the QAT model's codes of its input (so one layer's rare
// rounding tie does not count again in every layer after it), and its output codes are compared
// with the QAT model's: a fraction >= min_equal equal, none off by more than one. End to end
// (the integer model run alone) the top-1 classes agree on >= 99.9% of the test split.
//
// The QAT model rounds each output once, exactly (its FakeQuant); so does the integer model with
// single rounding (ConvertOptions::rounding, spec 3.4): then >= 99.9% of the codes are equal
// (the rest are float ties). gemmlowp's double rounding, the default as in TFLite, rounds
// acc * M0 / 2^31 to an integer before the right shift: with a shift of s bits that first
// rounding moves the result by up to 1/2^(s+1) of an output step, so codes near a tie come out
// one higher (at 4-bit weights s is small, ~4, and a few percent of the codes differ by one).
void expect_agreement(nn::Model& qat, quant::IntegerModel& im, double min_equal = 0.999,
                      double min_top1 = 0.999) {
  const Tensor& x = mnist().test.images;
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
  ASSERT_GE(outs.size(), 5u);
  auto probe = nn::Model::create(qat.inputs(), outs, "probe");
  const std::vector<Tensor> want = probe->predict(std::vector<Tensor>{x}, 500);
  int checked = 0;
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
        ins.push_back(g.placeholder(it.name, DType::kF32, it.shape));
        feeds.emplace_back(ins.back(), x);
      } else if (probe_of.count(t)) {
        ins.push_back(g.placeholder(it.name, DType::kS8, it.shape));
        feeds.emplace_back(ins.back(), qat_codes(want[probe_of[t]], it));
      } else {
        fed = false;
      }
    }
    if (!fed) continue;
    Executor ex(g, {ops::apply(op.op, ins, op.attrs).at(0)});
    const Tensor got = ex.run(feeds)[0];
    const quant::IntegerTensor& t = im.tensors[op.output];
    const Tensor w = qat_codes(want[probe_of[op.output]], t);
    ASSERT_EQ(got.numel(), w.numel()) << op.layer;
    int64_t equal = 0, worst = 0;
    for (int64_t e = 0; e < got.numel(); ++e) {
      const int64_t d = std::llabs(int64_t{got.data<int8_t>()[e]} - int64_t{w.data<int8_t>()[e]});
      equal += d == 0;
      worst = std::max(worst, d);
    }
    EXPECT_GE(static_cast<double>(equal) / static_cast<double>(got.numel()), min_equal)
        << op.op << " " << op.layer;
    EXPECT_LE(worst, 1) << op.op << " " << op.layer;
    ++checked;
  }
  EXPECT_GE(checked, 5);
  const int64_t n = x.shape()[0];
  const Tensor yq = qat.predict(x, 500), yi = im.predict(x, 500);
  int64_t agree = 0;
  for (int64_t r = 0; r < n; ++r) agree += argmax_row(yq, r) == argmax_row(yi, r);
  EXPECT_GE(static_cast<double>(agree) / static_cast<double>(n), min_top1);
  // And the integer model is a good classifier.
  int64_t right = 0;
  const int64_t* labels = mnist().test.labels.data<int64_t>();
  for (int64_t r = 0; r < n; ++r) right += argmax_row(yi, r) == labels[r];
  EXPECT_GE(static_cast<double>(right) / static_cast<double>(n), 0.9);
}

TEST(ConvertToInteger, W8A8CodesAgreeWithTheQatModelLayerByLayer) {
  auto f = small_cnn(false);
  auto q = qat_of(*f, "w8a8");
  quant::IntegerModel im = quant::convert_to_integer(*q, {.rounding = quant::Rounding::kSingle});
  // quantize, conv+bn+relu, pool, conv+relu, flatten, dense+relu, dense, dequantize.
  std::vector<std::string> kinds;
  for (const auto& op : im.ops) kinds.push_back(op.op);
  EXPECT_EQ(kinds,
            (std::vector<std::string>{"quantize", "qconv2d", "qmax_pool2d", "qconv2d", "reshape",
                                      "qfully_connected", "qfully_connected", "dequantize"}));
  expect_agreement(*q, im);
  quant::IntegerModel gemmlowp = quant::convert_to_integer(*q);  // double rounding
  expect_agreement(*q, gemmlowp, 0.99, 0.995);
  // The uint8 scheme (tests/quant/convert_uint8_test.cc checks every code): on the whole test
  // split the same dequantized logits, so the same top-1 classes.
  quant::IntegerModel u8 = quant::convert_to_integer(
      *q, {.rounding = quant::Rounding::kSingle, .activations = quant::ActivationScheme::kUint8});
  EXPECT_EQ(u8.tensors[u8.ops[0].output].dtype, DType::kU8);
  EXPECT_TRUE(testing::tensors_equal(u8.predict(mnist().test.images, 500),
                                     im.predict(mnist().test.images, 500)));
}

TEST(ConvertToInteger, DepthwiseAveragePoolingAndFourBitWeights) {
  auto f = small_cnn(true);
  auto q = qat_of(*f, "w4a8");
  quant::IntegerModel im = quant::convert_to_integer(*q, {.rounding = quant::Rounding::kSingle});
  // 4-bit weights: every weight code in [-7, 7].
  for (const auto& t : im.tensors) {
    if (!t.data.defined() || t.dtype != DType::kS8) continue;
    for (int64_t i = 0; i < t.data.numel(); ++i) {
      ASSERT_LE(std::abs(int{t.data.data<int8_t>()[i]}), 7) << t.name;
    }
  }
  expect_agreement(*q, im);
  quant::IntegerModel gemmlowp = quant::convert_to_integer(*q);  // double rounding
  expect_agreement(*q, gemmlowp, 0.9, 0.99);
}

TEST(IntegerModelFile, RoundTripsAndRefusesBadFiles) {
  auto f = small_cnn(false, kFewImages);
  auto q = qat_of(*f, "w8a8", kFewImages);
  quant::IntegerModel im = quant::convert_to_integer(*q);
  const std::string dir = ::testing::TempDir();
  const std::string path = dir + "/convert_test.lbi";
  im.save(path);
  quant::IntegerModel back = quant::IntegerModel::load(path);
  const Tensor x = Tensor::wrap(mnist().test.images.raw(), {300, 28, 28, 1}, DType::kF32);
  EXPECT_TRUE(testing::tensors_equal(back.predict(x), im.predict(x)));
  EXPECT_EQ(back.graph_json(), im.graph_json());

  // A truncated file.
  const auto size = std::filesystem::file_size(path);
  std::filesystem::copy_file(path, dir + "/trunc.lbi",
                             std::filesystem::copy_options::overwrite_existing);
  std::filesystem::resize_file(dir + "/trunc.lbi", size - 100);
  EXPECT_THROW(quant::IntegerModel::load(dir + "/trunc.lbi"), IoError);

  // Inconsistent contents, each named: rewrite the graph JSON of a valid file.
  auto rewrite = [&](const std::function<void(nn::Json&)>& edit, const std::string& needle) {
    io::SafetensorsFile file = io::read_safetensors(path);
    nn::Json g = nn::Json::parse(file.metadata.at("lowbit.integer_model"));
    edit(g);
    file.metadata["lowbit.integer_model"] = g.dump();
    io::write_safetensors(dir + "/bad.lbi", file);
    expect_throws_with<ValueError>([&] { quant::IntegerModel::load(dir + "/bad.lbi"); }, needle);
  };
  auto tensor_named = [](nn::Json& g, const std::string& suffix) -> nn::Json& {
    for (nn::Json& t : g["tensors"])
      if (t["name"].get<std::string>().ends_with(suffix)) return t;
    throw std::runtime_error("no tensor " + suffix);
  };
  rewrite([&](nn::Json& g) { tensor_named(g, "/bias")["dtype"] = "f32"; }, "/bias': data is s32");
  rewrite([&](nn::Json& g) { tensor_named(g, "/kernel")["scale"][0] = -1.0; }, "field 'scale'");
  rewrite([&](nn::Json& g) { g["ops"][1]["attrs"]["output_scale"]["f"] = 1e-30; }, "multiplier");
  rewrite([&](nn::Json& g) { tensor_named(g, "/kernel")["shape"][0] = 5; }, "but the graph says");
  rewrite([&](nn::Json& g) { g["ops"][2]["inputs"][0] = 999; }, "is not a tensor");
  rewrite([&](nn::Json& g) { g.erase("version"); }, "field 'version' is missing");
  // What the fuzzer (fuzz/integer_model_load_fuzz.cc, docs/fuzzing.md) found, each refused by
  // name: a 2^32 + 1 that an int read as 1, a float where an integer goes (undefined behaviour
  // when converted), an attribute no op takes (inspect read it as another kind), an input that
  // is not f32 (predict read its bytes as floats), a declared shape other than what the op
  // computes (predict copied that many elements), a pool window of 2^32 taps (its shape rule
  // allocated a table per window size).
  rewrite([&](nn::Json& g) { g["version"] = 4294967297ull; }, "field 'version' is not an integer");
  rewrite([&](nn::Json& g) { tensor_named(g, "/kernel")["shape"][0] = 1e30; },
          "field 'shape' is not a list of integers");
  rewrite(
      [&](nn::Json& g) {
        g["ops"][1]["attrs"]["input_zero_point"] = {{"i", 1e30}};
      },
      "expected an int64 integer");
  rewrite(
      [&](nn::Json& g) {
        g["ops"][1]["attrs"]["scale"] = {{"s", "x"}};
      },
      "attribute 'scale' is not one that qconv2d takes");
  rewrite(
      [&](nn::Json& g) {
        g["ops"][2]["attrs"]["ksize"] = {{"ints", {65536, 65536}}};
      },
      "more than 2^20 taps");
  rewrite([&](nn::Json& g) { g["tensors"][g["input"].get<int>()]["dtype"] = "s8"; },
          "must be f32 [?, ...]");
  rewrite(
      [&](nn::Json& g) {
        g["tensors"][g["ops"][1]["output"].get<int>()]["shape"] = {-1, 99, 99, 8};
      },
      "computes s8[?,");

  // load_bytes: the same model from memory, the same refusals.
  {
    std::ifstream in(path, std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    quant::IntegerModel mem = quant::IntegerModel::load_bytes(bytes.data(), bytes.size());
    EXPECT_EQ(mem.graph_json(), im.graph_json());
    EXPECT_TRUE(testing::tensors_equal(mem.predict(x), im.predict(x)));
    EXPECT_THROW(quant::IntegerModel::load_bytes(bytes.data(), bytes.size() - 100), IoError);
  }
  // A safetensors header claiming 1e12 elements (or a float dim) is refused, not allocated.
  auto header_only = [](const std::string& h) {
    std::string b(8, '\0');
    for (int i = 0; i < 8; ++i) b[i] = static_cast<char>((h.size() >> (8 * i)) & 0xff);
    return b + h;
  };
  for (const auto& [header, needle] : std::vector<std::pair<std::string, std::string>>{
           {R"({"w":{"dtype":"I8","shape":[1000000,1000000],"data_offsets":[0,0]}})", "needs"},
           {R"({"w":{"dtype":"I8","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}})",
            "more than 2^40"},
           {R"({"w":{"dtype":"I8","shape":[1e30],"data_offsets":[0,0]}})", "'shape' holds"},
           {R"({"w":{"dtype":"I8","shape":[1],"data_offsets":[-1,0]}})",
            "lies outside the data"}}) {
    const std::string b = header_only(header);
    expect_throws_with<IoError>([&] { io::read_safetensors_bytes(b.data(), b.size()); }, needle);
  }
  expect_throws_with<ValueError>(
      [&] {
        f->save(dir + "/float.lbm");
        quant::IntegerModel::load(dir + "/float.lbm");
      },
      "not an integer model");
}

// The packed layout of docs/integer-inference.md, byte by byte: little end first, two's
// complement fields, zero padding.
TEST(PackedCodes, LayoutIsLittleEndFirstTwosComplementZeroPadded) {
  const Tensor four = Tensor::from_vector<int8_t>({-8, 7, -1, 0, 3}, {5});
  const Tensor p4 = quant::pack_codes(four, 4);
  ASSERT_EQ(p4.dtype(), DType::kU8);
  ASSERT_EQ(p4.numel(), 3);
  EXPECT_EQ(p4.data<uint8_t>()[0], 0x78);  // -8 = 0x8 low nibble, 7 high
  EXPECT_EQ(p4.data<uint8_t>()[1], 0x0F);  // -1 = 0xF low, 0 high
  EXPECT_EQ(p4.data<uint8_t>()[2], 0x03);  // 3, then four zero padding bits
  EXPECT_TRUE(testing::tensors_equal(quant::unpack_codes(p4, {5}, 4), four));
  const Tensor two = Tensor::from_vector<int8_t>({-2, 1, -1, 0, 1}, {5});
  const Tensor p2 = quant::pack_codes(two, 2);
  ASSERT_EQ(p2.numel(), 2);
  EXPECT_EQ(p2.data<uint8_t>()[0], 0x36);  // 0b00'11'01'10: -2, 1, -1, 0 from bit 0 up
  EXPECT_EQ(p2.data<uint8_t>()[1], 0x01);
  EXPECT_TRUE(testing::tensors_equal(quant::unpack_codes(p2, {5}, 2), two));
  // Every code of each width survives, at every position within a byte.
  for (int bits : {2, 4}) {
    std::vector<int8_t> all;
    for (int r = 0; r < 3; ++r)
      for (int c = -(1 << (bits - 1)); c < (1 << (bits - 1)); ++c)
        all.push_back(static_cast<int8_t>(c));
    const Tensor t = Tensor::from_vector<int8_t>(all, {static_cast<int64_t>(all.size())});
    EXPECT_TRUE(testing::tensors_equal(
        quant::unpack_codes(quant::pack_codes(t, bits), t.shape(), bits), t));
  }
  expect_throws_with<ValueError>(
      [&] { quant::pack_codes(Tensor::from_vector<int8_t>({8}, {1}), 4); }, "does not fit 4 bits");
  expect_throws_with<ValueError>([&] { quant::pack_codes(four, 3); }, "expected 2 or 4");
  expect_throws_with<ValueError>([&] { quant::unpack_codes(p4, {7, 1}, 4); }, "need u8[4]");
  expect_throws_with<ValueError>([&] { quant::unpack_codes(p4, {4}, 4); }, "need u8[2]");
  Tensor dirty = p4.clone();
  dirty.data<uint8_t>()[2] = 0x13;
  expect_throws_with<ValueError>([&] { quant::unpack_codes(dirty, {5}, 4); }, "padding bits");
}

// Bytes after the safetensors header: the stored constants.
int64_t data_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  unsigned char len[8];
  in.read(reinterpret_cast<char*>(len), 8);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(len[i]) << (8 * i);
  return static_cast<int64_t>(std::filesystem::file_size(path) - 8 - n);
}

// w4a8 and w2a8 models: 4- and 2-bit weights are stored packed, the file is smaller by exactly
// what packing saves, and the loaded model holds the same codes and computes the same outputs.
TEST(IntegerModelFile, LowBitWeightsArePackedAndRunBitIdentically) {
  auto f = small_cnn(false, kFewImages);
  const std::string dir = ::testing::TempDir();
  const Tensor x = Tensor::wrap(mnist().test.images.raw(), {200, 28, 28, 1}, DType::kF32);
  for (const std::string preset : {"w4a8", "w2a8"}) {
    SCOPED_TRACE(preset);
    auto q = qat_of(*f, preset, kFewImages);
    quant::IntegerModel im = quant::convert_to_integer(*q);
    // Every kernel's code range, from its grid: w4a8 4-bit narrow [-7, 7] everywhere; w2a8 lsq
    // 2-bit [-2, 1] inside, the first and last layer at 8 bits (the preset's protocol).
    std::vector<int> bits;
    int64_t saved = 0;
    for (const quant::IntegerTensor& t : im.tensors) {
      if (!t.data.defined() || t.dtype != DType::kS8) continue;
      bits.push_back(t.bits());
      if (t.bits() < 8) saved += t.data.numel() - (t.data.numel() * t.bits() + 7) / 8;
    }
    const std::vector<int> want_bits =
        preset == "w4a8" ? std::vector<int>{4, 4, 4, 4} : std::vector<int>{8, 2, 2, 8};
    EXPECT_EQ(bits, want_bits);
    ASSERT_GT(saved, 0);
    const std::string packed = dir + "/packed_" + preset + ".lbi";
    const std::string unpacked = dir + "/unpacked_" + preset + ".lbi";
    im.save(packed);
    im.save(unpacked, {.pack = false});
    EXPECT_EQ(data_bytes(unpacked) - data_bytes(packed), saved);
    EXPECT_EQ(data_bytes(unpacked), im.constant_bytes());
    EXPECT_EQ(data_bytes(packed), im.constant_bytes(true));
    EXPECT_LT(std::filesystem::file_size(packed), std::filesystem::file_size(unpacked));
    // In the file a packed kernel is U8 [ceil(numel * bits / 8)].
    const io::SafetensorsFile raw = io::read_safetensors(packed);
    for (const quant::IntegerTensor& t : im.tensors) {
      if (!t.data.defined() || t.bits() == 8 || t.dtype != DType::kS8) continue;
      const Tensor* d = raw.find(t.name);
      ASSERT_NE(d, nullptr) << t.name;
      EXPECT_EQ(d->dtype(), DType::kU8) << t.name;
      EXPECT_EQ(d->numel(), (t.data.numel() * t.bits() + 7) / 8) << t.name;
    }
    for (const std::string& path : {packed, unpacked}) {
      quant::IntegerModel back = quant::IntegerModel::load(path);
      ASSERT_EQ(back.tensors.size(), im.tensors.size());
      for (size_t i = 0; i < im.tensors.size(); ++i) {
        if (!im.tensors[i].data.defined()) continue;
        EXPECT_TRUE(testing::tensors_equal(back.tensors[i].data, im.tensors[i].data))
            << im.tensors[i].name;
        EXPECT_EQ(back.tensors[i].qmin, im.tensors[i].qmin);
        EXPECT_EQ(back.tensors[i].qmax, im.tensors[i].qmax);
      }
      EXPECT_EQ(back.graph_json(), im.graph_json());
      const std::vector<Tensor> want = im.run_all(x), got = back.run_all(x);
      for (size_t i = 0; i < want.size(); ++i)
        if (want[i].defined()) {
          EXPECT_TRUE(testing::tensors_equal(got[i], want[i])) << i;
        }
      EXPECT_TRUE(testing::tensors_equal(back.predict(x), im.predict(x)));
    }
    // The inspect JSON names each weight's bit width.
    std::vector<int> inspected;
    for (const nn::Json& op : nn::Json::parse(im.inspect_json()))
      if (op.contains("weights")) inspected.push_back(op["weights"]["bits"].get<int>());
    EXPECT_EQ(inspected, bits);
  }
}

// A packed file the loader must refuse, each named by tensor and field; and version-1 files
// (every code a byte, no code ranges on weights) still load.
TEST(IntegerModelFile, RefusesBadPackedTensorsAndReadsVersionOne) {
  auto f = small_cnn(false, kFewImages);
  auto q = qat_of(*f, "w4a8", kFewImages);
  quant::IntegerModel im = quant::convert_to_integer(*q);
  const std::string dir = ::testing::TempDir();
  const std::string path = dir + "/packed_bad.lbi";
  im.save(path);
  const std::string kernel = im.tensors.at(im.ops.at(1).inputs.at(1)).name;  // the first conv's
  auto rewrite = [&](const std::function<void(nn::Json&, io::SafetensorsFile&)>& edit) {
    io::SafetensorsFile file = io::read_safetensors(path);
    nn::Json g = nn::Json::parse(file.metadata.at("lowbit.integer_model"));
    edit(g, file);
    file.metadata["lowbit.integer_model"] = g.dump();
    io::write_safetensors(dir + "/bad.lbi", file);
    return dir + "/bad.lbi";
  };
  auto refused = [&](const std::function<void(nn::Json&, io::SafetensorsFile&)>& edit,
                     const std::string& needle) {
    const std::string bad = rewrite(edit);
    expect_throws_with<ValueError>([&] { quant::IntegerModel::load(bad); }, needle);
  };
  auto entry = [&](nn::Json& g, const std::string& name) -> nn::Json& {
    for (nn::Json& t : g["tensors"])
      if (t["name"] == name) return t;
    throw std::runtime_error("no tensor " + name);
  };
  auto data = [&](io::SafetensorsFile& file, const std::string& name) -> Tensor& {
    for (auto& [k, t] : file.tensors)
      if (k == name) return t;
    throw std::runtime_error("no data " + name);
  };
  {
    nn::Json g = nn::Json::parse(im.graph_json());
    ASSERT_EQ(entry(g, kernel)["bits"], 4);
  }
  // One byte short (a consistent safetensors entry, the wrong size for 72 codes of 4 bits).
  refused(
      [&](nn::Json&, io::SafetensorsFile& file) {
        Tensor& d = data(file, kernel);
        Tensor shorter({d.numel() - 1}, DType::kU8);
        std::copy(d.data<uint8_t>(), d.data<uint8_t>() + shorter.numel(), shorter.data<uint8_t>());
        d = shorter;
      },
      "'" + kernel + "': packed data is u8[35] but field 'bits' 4 and shape [3,3,1,8] need u8[36]");
  // Claimed as 2-bit: its codes [-7, 7] do not fit.
  refused([&](nn::Json& g, io::SafetensorsFile&) { entry(g, kernel)["bits"] = 2; },
          "'" + kernel + "': fields 'qmin', 'qmax' [-7, 7] do not fit field 'bits' 2");
  refused([&](nn::Json& g, io::SafetensorsFile&) { entry(g, kernel)["bits"] = 3; },
          "'" + kernel + "': field 'bits' is 3, an unknown bit width");
  refused([&](nn::Json& g, io::SafetensorsFile&) { entry(g, kernel)["qmin"] = -9; },
          "do not fit field 'bits' 4");
  // A code outside the declared range: -8 fits the nibble but not the grid [-7, 7].
  refused(
      [&](nn::Json&, io::SafetensorsFile& file) {
        Tensor& d = data(file, kernel);
        Tensor c = d.clone();
        c.data<uint8_t>()[0] = static_cast<uint8_t>((c.data<uint8_t>()[0] & 0xF0) | 0x8);
        d = c;
      },
      "'" + kernel +
          "': code -8 at element 0 is outside the tensor's fields 'qmin', 'qmax' [-7, 7]");
  refused(
      [&](nn::Json& g, io::SafetensorsFile&) {
        for (nn::Json& t : g["tensors"])
          if (t["name"].get<std::string>().ends_with("/bias")) {
            t["bits"] = 4;
            break;
          }
      },
      "field 'bits' is only for s8 constants (this is s32 constant)");
  refused([&](nn::Json& g, io::SafetensorsFile&) { g["version"] = 3; },
          "version 3 is not supported (this build reads 1 to 2)");
  refused([&](nn::Json& g, io::SafetensorsFile&) { g["version"] = 1; },
          "field 'bits' (packed data) needs format version 2");
  // Truncated in its data: the safetensors reader refuses it.
  const auto size = std::filesystem::file_size(path);
  std::filesystem::copy_file(path, dir + "/packed_trunc.lbi",
                             std::filesystem::copy_options::overwrite_existing);
  std::filesystem::resize_file(dir + "/packed_trunc.lbi", size - 3);
  EXPECT_THROW(quant::IntegerModel::load(dir + "/packed_trunc.lbi"), IoError);

  // Version 1, as the first loader's save wrote it: no "bits", every code a byte, the weight
  // tensors with the default code range [-128, 127]. It loads and computes the same.
  const std::string unpacked = dir + "/unpacked_v1.lbi";
  im.save(unpacked, {.pack = false});
  io::SafetensorsFile v1 = io::read_safetensors(unpacked);
  nn::Json g = nn::Json::parse(v1.metadata.at("lowbit.integer_model"));
  g["version"] = 1;
  for (nn::Json& t : g["tensors"]) {
    ASSERT_FALSE(t.contains("bits"));
    if (t["constant"].get<bool>()) {
      t["qmin"] = -128;
      t["qmax"] = 127;
    }
  }
  v1.metadata["lowbit.integer_model"] = g.dump();
  io::write_safetensors(unpacked, v1);
  quant::IntegerModel old = quant::IntegerModel::load(unpacked);
  const Tensor x = Tensor::wrap(mnist().test.images.raw(), {100, 28, 28, 1}, DType::kF32);
  EXPECT_TRUE(testing::tensors_equal(old.predict(x), im.predict(x)));
  for (size_t i = 0; i < im.tensors.size(); ++i) {
    if (im.tensors[i].data.defined()) {
      EXPECT_TRUE(testing::tensors_equal(old.tensors[i].data, im.tensors[i].data));
    }
  }
}

TEST(IntegerModelInspect, ExplainsEveryScale) {
  auto f = small_cnn(false, kFewImages);
  auto q = qat_of(*f, "w8a8", kFewImages);
  quant::IntegerModel im = quant::convert_to_integer(*q);
  const nn::Json j = nn::Json::parse(im.inspect_json());
  int convs = 0;
  for (const nn::Json& op : j) {
    if (!op.contains("channels")) continue;
    ++convs;
    const double s_in = op["input"]["scale"], s_out = op["output"]["scale"];
    for (const nn::Json& c : op["channels"]) {
      EXPECT_TRUE(c["bias_scale_is_s_in_times_s_w"].get<bool>());
      const double m = c["M"];
      EXPECT_NEAR(m, s_in * c["weight_scale"].get<double>() / s_out, 1e-6 * m);
      EXPECT_LT(c["M_rel_error"].get<double>(), 1e-9);
      EXPECT_GE(c["M0"].get<int64_t>(), int64_t{1} << 30);
    }
  }
  EXPECT_EQ(convs, 4);
  const std::string table = im.inspect_table();
  EXPECT_NE(table.find("M0*2^(s-31)"), std::string::npos);
  EXPECT_NE(table.find("relu"), std::string::npos);
}

TEST(ConvertToInteger, RefusesWhatHasNoIntegerFormNamingTheLayer) {
  nn::set_random_seed(1);
  auto m = nn::Sequential::create({nn::InputSpec({6, 4}), nn::LSTM(5), nn::Dense(3)}, "rnn");
  auto q = quant::quantize_model(*m);
  expect_throws_with<ValueError>([&] { quant::convert_to_integer(*q); }, "never tracked a range");
  Tensor x = Tensor::zeros({4, 6, 4});
  Tensor y = Tensor::zeros({4, 3});
  q->compile({.optimizer = nn::Adam({}), .loss = nn::MeanSquaredError()});
  q->fit(x, y, {.epochs = 1, .verbose = 0});
  // The LSTM converts (tests/quant/convert_recurrent_test.cc); a bidirectional one with
  // merge_mode mul does not (concat, sum, ave, none do).
  EXPECT_EQ(quant::convert_to_integer(*q).ops.at(1).op, "qlstm");
  auto b = nn::Sequential::create(
      {nn::InputSpec({6, 4}), nn::Bidirectional(nn::LSTM(5), {.merge_mode = "mul"}), nn::Dense(3)},
      "birnn");
  auto qb = quant::quantize_model(*b);
  qb->compile({.optimizer = nn::Adam({}), .loss = nn::MeanSquaredError()});
  qb->fit(x, y, {.epochs = 1, .verbose = 0});
  expect_throws_with<UnsupportedError>([&] { quant::convert_to_integer(*qb); }, "merge_mode 'mul'");
}

}  // namespace
}  // namespace lowbit
