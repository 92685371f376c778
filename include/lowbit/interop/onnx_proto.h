// The ONNX file format (issue 15): the subset of onnx.proto that lowbit reads and writes, as
// plain structs, with our own protobuf wire-format codec (no libprotobuf, no onnx library).
// Field numbers and wire types are facts of the format (onnx.proto, IR version 8); the names
// below follow it so that a reader can compare. What is not listed here is skipped when reading
// (unknown fields of any wire type are allowed by protobuf) unless it changes the meaning of
// what we read: external data, sparse initializers and a data_location other than DEFAULT are
// refused by decode_model with an IoError naming the tensor.
//
//   onnx::ModelProto m = onnx::read_model("model.onnx");   // IoError names the file and field
//   for (const onnx::NodeProto& n : m.graph.node) ...
//   onnx::write_model("copy.onnx", m);                      // atomic
//
// Encoding (src/interop/onnx_proto_encode.cc) writes only the fields set (strings non-empty,
// numbers non-zero, except where the format needs them: AttributeProto.type, TensorProto
// data_type and dims), packed repeated scalars, in field-number order. Decoding
// (src/interop/onnx_proto_decode.cc) accepts packed and unpacked repeated scalars and checks
// every length against the bytes left: a truncated or malformed file is an IoError that says
// where (e.g. "model.onnx: graph.node[3].attribute[1]: truncated varint at byte 1234").
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "lowbit/tensor.h"

namespace lowbit::onnx {

// TensorProto.DataType.
enum DataType : int32_t {
  kUndefined = 0,
  kFloat = 1,
  kUint8 = 2,
  kInt8 = 3,
  kUint16 = 4,
  kInt16 = 5,
  kInt32 = 6,
  kInt64 = 7,
  kString = 8,
  kBool = 9,
  kFloat16 = 10,
  kDouble = 11,
  kUint32 = 12,
  kUint64 = 13,
  kBfloat16 = 16,
};

struct TensorProto {                     // field numbers:
  std::vector<int64_t> dims;             // 1
  int32_t data_type = kUndefined;        // 2
  std::vector<float> float_data;         // 4 (packed)
  std::vector<int32_t> int32_data;       // 5 (packed): int32, and int8/uint8/int16/uint16/bool
  std::vector<std::string> string_data;  // 6
  std::vector<int64_t> int64_data;       // 7 (packed)
  std::string name;                      // 8
  std::string doc_string;                // 12
  std::string raw_data;                  // 9: little-endian bytes of the elements, row-major
  std::vector<double> double_data;       // 10 (packed)
  std::vector<uint64_t> uint64_data;     // 11 (packed): uint32, uint64
  // 13 external_data, 14 data_location (EXTERNAL): refused when reading.
};

// AttributeProto.AttributeType.
enum AttributeType : int32_t {
  kAttrUndefined = 0,
  kAttrFloat = 1,
  kAttrInt = 2,
  kAttrString = 3,
  kAttrTensor = 4,
  kAttrGraph = 5,
  kAttrFloats = 6,
  kAttrInts = 7,
  kAttrStrings = 8,
  kAttrTensors = 9,
  kAttrGraphs = 10,
};

struct GraphProto;

struct AttributeProto {              // field numbers:
  std::string name;                  // 1
  std::string ref_attr_name;         // 21
  std::string doc_string;            // 13
  int32_t type = kAttrUndefined;     // 20
  float f = 0;                       // 2
  int64_t i = 0;                     // 3
  std::string s;                     // 4 (bytes)
  std::vector<TensorProto> t;        // 5 (at most one: a vector so that the struct stays copyable)
  std::vector<GraphProto> g;         // 6 (at most one)
  std::vector<float> floats;         // 7
  std::vector<int64_t> ints;         // 8
  std::vector<std::string> strings;  // 9
  std::vector<TensorProto> tensors;  // 10
  std::vector<GraphProto> graphs;    // 11
};

// One dimension of a TensorShapeProto: a value, a symbolic name (dim_param), or neither.
struct Dimension {
  int64_t dim_value = -1;  // 1; -1: not given
  std::string dim_param;   // 2
};

// ValueInfoProto{name 1, type 2: TypeProto{tensor_type 1: {elem_type 1, shape 2: {dim 1}}},
// doc_string 3}, flattened: only tensor types.
struct ValueInfoProto {
  std::string name;
  int32_t elem_type = kUndefined;
  bool has_shape = false;  // a shape message was present (possibly of rank 0)
  std::vector<Dimension> dims;
  std::string doc_string;
};

struct NodeProto {                        // field numbers:
  std::vector<std::string> input;         // 1 ("" = an omitted optional input)
  std::vector<std::string> output;        // 2
  std::string name;                       // 3
  std::string op_type;                    // 4
  std::string domain;                     // 7 ("" and "ai.onnx" are the default domain)
  std::vector<AttributeProto> attribute;  // 5
  std::string doc_string;                 // 6
};

struct GraphProto {                        // field numbers:
  std::vector<NodeProto> node;             // 1
  std::string name;                        // 2
  std::vector<TensorProto> initializer;    // 5
  std::string doc_string;                  // 10
  std::vector<ValueInfoProto> input;       // 11
  std::vector<ValueInfoProto> output;      // 12
  std::vector<ValueInfoProto> value_info;  // 13
  // 15 sparse_initializer: refused when reading.
};

struct OperatorSetId {
  std::string domain;   // 1
  int64_t version = 0;  // 2
};

struct StringStringEntry {
  std::string key;    // 1
  std::string value;  // 2
};

struct ModelProto {                               // field numbers:
  int64_t ir_version = 8;                         // 1
  std::vector<OperatorSetId> opset_import;        // 8
  std::string producer_name;                      // 2
  std::string producer_version;                   // 3
  std::string domain;                             // 4
  int64_t model_version = 0;                      // 5
  std::string doc_string;                         // 6
  GraphProto graph;                               // 7
  std::vector<StringStringEntry> metadata_props;  // 14
};

// Serializes m (src/interop/onnx_proto_encode.cc).
std::string encode_model(const ModelProto& m);
// Writes encode_model(m) to path atomically (a temporary file renamed). IoError on failure.
void write_model(const std::string& path, const ModelProto& m);

// Parses a serialized ModelProto (src/interop/onnx_proto_decode.cc). `name` stands for the file
// in messages. IoError for malformed bytes (truncated varint or length, a wire type that does not
// match a known field, nesting deeper than 64, a length past the end), naming the field path;
// external data and sparse initializers are refused (IoError naming the tensor).
ModelProto decode_model(const void* data, size_t size, const std::string& name = "<memory>");
// Reads and decodes a file. IoError if it cannot be read.
ModelProto read_model(const std::string& path);

// A TensorProto's elements as a lowbit Tensor (f32, s8, u8, s32, s64; f64 becomes f32, bool
// becomes u8): from raw_data or the typed field, checking that the element count matches dims.
// ValueError naming the tensor for a mismatch or an unsupported data type (decode side).
Tensor to_tensor(const TensorProto& t);
// The inverse: a TensorProto named `name` holding t's elements in raw_data (encode side).
TensorProto from_tensor(const std::string& name, const Tensor& t);

// Attributes of one value, typed (AttributeProto.type set): what node builders write.
AttributeProto attr_int(const std::string& name, int64_t v);
AttributeProto attr_float(const std::string& name, float v);
AttributeProto attr_ints(const std::string& name, std::vector<int64_t> v);

// The opset version of the default domain ("" / "ai.onnx"), or 0 if none is imported.
int64_t default_opset(const ModelProto& m);

}  // namespace lowbit::onnx
