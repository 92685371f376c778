// The ONNX protobuf codec (lowbit/interop/onnx_proto.h): encode -> decode gives the same
// structs, ONNX Runtime runs what we encode, malformed bytes are IoErrors that say where.
#include "lowbit/interop/onnx_proto.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "lowbit/error.h"
#include "lowbit/rng.h"
#include "testing/op_testing.h"
#include "testing/ort.h"

namespace lowbit::onnx {
namespace {

ValueInfoProto value(const std::string& name, std::vector<Dimension> dims) {
  ValueInfoProto v;
  v.name = name;
  v.elem_type = kFloat;
  v.has_shape = true;
  v.dims = std::move(dims);
  return v;
}

// y = relu(x @ W^T + b) as Gemm(transB=1) + Relu: W [3, 4], b [3].
ModelProto gemm_relu(const Tensor& w, const Tensor& b) {
  ModelProto m;
  m.producer_name = "lowbit-test";
  m.opset_import.push_back({"", 13});
  m.graph.name = "gemm_relu";
  m.graph.input.push_back(value("x", {{-1, "batch"}, {4, ""}}));
  m.graph.output.push_back(value("y", {{-1, "batch"}, {3, ""}}));
  m.graph.initializer.push_back(from_tensor("W", w));
  m.graph.initializer.push_back(from_tensor("b", b));
  NodeProto gemm;
  gemm.name = "gemm";
  gemm.op_type = "Gemm";
  gemm.input = {"x", "W", "b"};
  gemm.output = {"h"};
  gemm.attribute.push_back(attr_int("transB", 1));
  gemm.attribute.push_back(attr_float("alpha", 1.0f));
  NodeProto relu;
  relu.name = "relu";
  relu.op_type = "Relu";
  relu.input = {"h"};
  relu.output = {"y"};
  m.graph.node = {gemm, relu};
  return m;
}

TEST(OnnxProto, EncodeDecodeRoundTrip) {
  Rng rng(1);
  Tensor w = testing::random_tensor({3, 4}, rng);
  ModelProto m = gemm_relu(w, testing::random_tensor({3}, rng));
  AttributeProto lists;
  lists.name = "lists";
  lists.type = kAttrInts;
  lists.ints = {-1, 0, 1LL << 40};
  lists.floats = {0.5f, -2.0f};
  lists.strings = {"a", ""};
  m.graph.node[1].attribute.push_back(lists);
  m.metadata_props.push_back({"k", "v"});
  const std::string bytes = encode_model(m);
  ModelProto d = decode_model(bytes.data(), bytes.size());
  EXPECT_EQ(d.ir_version, 8);
  EXPECT_EQ(d.producer_name, "lowbit-test");
  EXPECT_EQ(default_opset(d), 13);
  ASSERT_EQ(d.graph.node.size(), 2u);
  EXPECT_EQ(d.graph.node[0].op_type, "Gemm");
  EXPECT_EQ(d.graph.node[0].input, (std::vector<std::string>{"x", "W", "b"}));
  EXPECT_EQ(d.graph.node[0].attribute[0].i, 1);
  EXPECT_EQ(d.graph.node[0].attribute[1].type, kAttrFloat);
  EXPECT_EQ(d.graph.node[0].attribute[1].f, 1.0f);
  EXPECT_EQ(d.graph.node[1].attribute[0].ints, lists.ints);
  EXPECT_EQ(d.graph.node[1].attribute[0].floats, lists.floats);
  EXPECT_EQ(d.graph.node[1].attribute[0].strings, lists.strings);
  ASSERT_EQ(d.graph.input.size(), 1u);
  ASSERT_EQ(d.graph.input[0].dims.size(), 2u);
  EXPECT_EQ(d.graph.input[0].dims[0].dim_param, "batch");
  EXPECT_EQ(d.graph.input[0].dims[0].dim_value, -1);
  EXPECT_EQ(d.graph.input[0].dims[1].dim_value, 4);
  EXPECT_EQ(d.metadata_props.at(0).value, "v");
  EXPECT_TRUE(testing::tensors_equal(to_tensor(d.graph.initializer[0]), w));
  EXPECT_EQ(encode_model(d), bytes);  // nothing lost or reordered
}

TEST(OnnxProto, OnnxRuntimeRunsWhatWeEncode) {
  Rng rng(2);
  Tensor w = testing::random_tensor({3, 4}, rng), b = testing::random_tensor({3}, rng);
  Tensor x = testing::random_tensor({5, 4}, rng);
  const std::string dir = testing::fresh_temp_dir("onnx-proto");
  write_model(dir + "/m.onnx", gemm_relu(w, b));
  std::vector<Tensor> y = testing::run_onnxruntime(dir + "/m.onnx", {x}, dir);
  ASSERT_EQ(y.size(), 1u);
  ASSERT_EQ(y[0].shape(), Shape({5, 3}));
  for (int64_t i = 0; i < 5; ++i)
    for (int64_t j = 0; j < 3; ++j) {
      float s = b.data<float>()[j];
      for (int64_t k = 0; k < 4; ++k) s += x.data<float>()[i * 4 + k] * w.data<float>()[j * 4 + k];
      EXPECT_NEAR(y[0].data<float>()[i * 3 + j], std::max(s, 0.0f), 1e-5);
    }
  std::filesystem::remove_all(dir);
}

TEST(OnnxProto, TypedFieldsAndUnpackedRepeatedScalars) {
  // int32_data holding int8 values, float_data, int64_data; then dims written unpacked.
  TensorProto t;
  t.name = "q";
  t.data_type = kInt8;
  t.dims = {2, 2};
  t.int32_data = {-128, -1, 0, 127};
  Tensor q = to_tensor(t);
  ASSERT_EQ(q.dtype(), DType::kS8);
  EXPECT_EQ(q.data<int8_t>()[0], -128);
  EXPECT_EQ(q.data<int8_t>()[3], 127);
  t.int32_data[3] = 128;
  EXPECT_THROW(to_tensor(t), ValueError);
  TensorProto f;
  f.name = "f";
  f.data_type = kFloat;
  f.dims = {3};
  f.float_data = {1, 2};
  try {
    to_tensor(f);
    FAIL() << "expected ValueError";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("float_data has 2 elements, expected 3"),
              std::string::npos)
        << e.what();
  }
  // A hand-written ModelProto{graph{initializer{dims: 2 (unpacked), dims: 3, data_type: 7,
  // int64_data packed [5, -1, ...]}}}.
  std::string tensor = {0x08, 0x02, 0x08, 0x03, 0x10, 0x07};
  std::string ints = {0x3a, 0x00};  // field 7, length filled in below
  std::string payload;
  for (int v : {5, 6, 7, 8, 9}) payload.push_back(static_cast<char>(v));
  payload += std::string("\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 10);  // -1
  ints[1] = static_cast<char>(payload.size());
  tensor += ints + payload;
  std::string graph = std::string{0x2a, static_cast<char>(tensor.size())} + tensor;
  std::string model = std::string{0x3a, static_cast<char>(graph.size())} + graph;
  ModelProto m = decode_model(model.data(), model.size());
  Tensor i64 = to_tensor(m.graph.initializer.at(0));
  ASSERT_EQ(i64.shape(), Shape({2, 3}));
  EXPECT_EQ(i64.data<int64_t>()[5], -1);
}

std::string error_of(const std::string& bytes) {
  try {
    decode_model(bytes.data(), bytes.size(), "bad.onnx");
  } catch (const IoError& e) {
    return e.what();
  }
  return "";
}

TEST(OnnxProto, EveryTruncationIsAnIoError) {
  Rng rng(3);
  const std::string bytes = encode_model(
      gemm_relu(testing::random_tensor({3, 4}, rng), testing::random_tensor({3}, rng)));
  for (size_t n = 0; n < bytes.size(); ++n) {
    // Cutting inside a message must be detected; a cut exactly between two top-level fields is
    // a shorter valid ModelProto (protobuf has no end marker) unless the graph is lost.
    std::string cut = bytes.substr(0, n);
    ModelProto d;
    try {
      d = decode_model(cut.data(), cut.size(), "cut.onnx");
    } catch (const IoError& e) {
      EXPECT_NE(std::string(e.what()).find("cut.onnx"), std::string::npos) << e.what();
      continue;
    }
    // Accepted prefixes end at a top-level field boundary after the whole graph.
    EXPECT_EQ(d.graph.node.size(), 2u) << "prefix of " << n << " bytes";
    EXPECT_EQ(d.graph.initializer.size(), 2u) << "prefix of " << n << " bytes";
  }
}

TEST(OnnxProto, MalformedBytesSayWhere) {
  // A node's attribute with a length past the end of its message.
  Rng rng(4);
  ModelProto m = gemm_relu(testing::random_tensor({3, 4}, rng), testing::random_tensor({3}, rng));
  std::string bytes = encode_model(m);
  std::string e = error_of(bytes.substr(0, bytes.size() / 2));
  EXPECT_NE(e.find("bad.onnx: "), std::string::npos) << e;
  EXPECT_NE(e.find("runs past the end"), std::string::npos) << e;
  EXPECT_NE(e.find(" at byte "), std::string::npos) << e;
  // Wire type 3 (groups) and 7 (invalid) at the top level.
  EXPECT_NE(error_of(std::string{0x0b}).find("group wire type"), std::string::npos);
  EXPECT_NE(error_of(std::string{0x0f}).find("invalid wire type"), std::string::npos);
  // The graph field as a varint.
  EXPECT_NE(error_of(std::string{0x38, 0x01}).find("field 7 has wire type 0"), std::string::npos);
  // No graph at all.
  EXPECT_NE(error_of(std::string{0x08, 0x08}).find("no graph"), std::string::npos);
  EXPECT_NE(error_of("").find("empty"), std::string::npos);
  // A varint that never ends.
  EXPECT_NE(error_of(std::string(11, '\xff')).find("varint"), std::string::npos);
}

TEST(OnnxProto, DeepNestingIsRefused) {
  // graph.node.attribute.g.node.attribute.g ... 40 levels of graphs (120 messages), written with
  // multi-byte lengths.
  auto len = [](std::string s) {
    std::string out;
    uint64_t n = s.size();
    while (n >= 0x80) out.push_back(static_cast<char>((n & 0x7f) | 0x80)), n >>= 7;
    out.push_back(static_cast<char>(n));
    return out + s;
  };
  std::string g;
  for (int i = 0; i < 40; ++i) {
    std::string attr = std::string{0x32} + len(g);
    std::string node = std::string{0x2a} + len(attr);
    g = std::string{0x0a} + len(node);
  }
  std::string bytes = std::string{0x3a} + len(g);
  EXPECT_NE(error_of(bytes).find("nested deeper than 64"), std::string::npos) << error_of(bytes);
}

TEST(OnnxProto, ExternalDataAndSparseInitializersAreRefused) {
  TensorProto t;
  t.name = "big_weight";
  t.data_type = kFloat;
  std::string tensor = std::string{0x42, 10} + "big_weight" + std::string{0x70, 0x01};  // loc 1
  std::string graph = std::string{0x2a, static_cast<char>(tensor.size())} + tensor;
  std::string model = std::string{0x3a, static_cast<char>(graph.size())} + graph;
  std::string e = error_of(model);
  EXPECT_NE(e.find("tensor 'big_weight' has data_location EXTERNAL"), std::string::npos) << e;
  std::string sparse = std::string{0x7a, 0x00};  // graph field 15
  std::string model2 = std::string{0x3a, static_cast<char>(sparse.size())} + sparse;
  EXPECT_NE(error_of(model2).find("sparse initializers"), std::string::npos);
}

TEST(OnnxProto, ReadAndWriteFiles) {
  const std::string dir = testing::fresh_temp_dir("onnx-proto-files");
  Rng rng(5);
  ModelProto m = gemm_relu(testing::random_tensor({3, 4}, rng), testing::random_tensor({3}, rng));
  write_model(dir + "/m.onnx", m);
  EXPECT_EQ(encode_model(read_model(dir + "/m.onnx")), encode_model(m));
  EXPECT_THROW(read_model(dir + "/missing.onnx"), IoError);
  EXPECT_THROW(write_model(dir + "/no/such/dir/m.onnx", m), IoError);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace lowbit::onnx
