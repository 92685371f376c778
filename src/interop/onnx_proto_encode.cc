// Protobuf wire-format encoding of the ONNX subset in lowbit/interop/onnx_proto.h. Each message
// is written into its own string and then embedded with its length (messages are small next to
// the tensor bytes, which are written once into their TensorProto and copied once more per
// nesting level: three levels for an initializer).
#include <cstring>

#include "lowbit/error.h"
#include "lowbit/interop/onnx_proto.h"
#include "lowbit/io/atomic_file.h"

namespace lowbit::onnx {

namespace {

enum Wire : uint32_t { kVarint = 0, kFixed64 = 1, kLen = 2, kFixed32 = 5 };

class Writer {
 public:
  std::string out;

  void varint(uint64_t v) {
    while (v >= 0x80) {
      out.push_back(static_cast<char>((v & 0x7F) | 0x80));
      v >>= 7;
    }
    out.push_back(static_cast<char>(v));
  }
  void tag(uint32_t field, Wire w) { varint((uint64_t{field} << 3) | w); }
  // Signed integers (int32 and int64 fields) are sign-extended to 64 bits, as protobuf does.
  void int_field(uint32_t field, int64_t v) {
    tag(field, kVarint);
    varint(static_cast<uint64_t>(v));
  }
  void int_field_if(uint32_t field, int64_t v) {
    if (v != 0) int_field(field, v);
  }
  void float_field(uint32_t field, float v) {
    tag(field, kFixed32);
    fixed32(v);
  }
  void bytes_field(uint32_t field, const std::string& s) {
    tag(field, kLen);
    varint(s.size());
    out += s;
  }
  void bytes_field_if(uint32_t field, const std::string& s) {
    if (!s.empty()) bytes_field(field, s);
  }
  void fixed32(float v) {
    uint32_t u;
    std::memcpy(&u, &v, 4);
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>(u >> (8 * i)));
  }
  void fixed64(double v) {
    uint64_t u;
    std::memcpy(&u, &v, 8);
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>(u >> (8 * i)));
  }
  template <typename T>
  void packed_varints(uint32_t field, const std::vector<T>& v) {
    if (v.empty()) return;
    Writer w;
    for (T x : v) w.varint(static_cast<uint64_t>(static_cast<int64_t>(x)));
    bytes_field(field, w.out);
  }
  void packed_unsigned(uint32_t field, const std::vector<uint64_t>& v) {
    if (v.empty()) return;
    Writer w;
    for (uint64_t x : v) w.varint(x);
    bytes_field(field, w.out);
  }
  void packed_floats(uint32_t field, const std::vector<float>& v) {
    if (v.empty()) return;
    Writer w;
    for (float x : v) w.fixed32(x);
    bytes_field(field, w.out);
  }
  void packed_doubles(uint32_t field, const std::vector<double>& v) {
    if (v.empty()) return;
    Writer w;
    for (double x : v) w.fixed64(x);
    bytes_field(field, w.out);
  }
};

std::string encode(const GraphProto& g);

std::string encode(const TensorProto& t) {
  Writer w;
  w.packed_varints(1, t.dims);
  w.int_field(2, t.data_type);
  w.packed_floats(4, t.float_data);
  w.packed_varints(5, t.int32_data);
  for (const std::string& s : t.string_data) w.bytes_field(6, s);
  w.packed_varints(7, t.int64_data);
  w.bytes_field_if(8, t.name);
  w.bytes_field_if(9, t.raw_data);
  w.packed_doubles(10, t.double_data);
  w.packed_unsigned(11, t.uint64_data);
  w.bytes_field_if(12, t.doc_string);
  return w.out;
}

std::string encode(const AttributeProto& a) {
  Writer w;
  w.bytes_field_if(1, a.name);
  if (a.type == kAttrFloat) w.float_field(2, a.f);
  if (a.type == kAttrInt) w.int_field(3, a.i);
  if (a.type == kAttrString) w.bytes_field(4, a.s);
  for (const TensorProto& t : a.t) w.bytes_field(5, encode(t));
  for (const GraphProto& g : a.g) w.bytes_field(6, encode(g));
  w.packed_floats(7, a.floats);
  w.packed_varints(8, a.ints);
  for (const std::string& s : a.strings) w.bytes_field(9, s);
  for (const TensorProto& t : a.tensors) w.bytes_field(10, encode(t));
  for (const GraphProto& g : a.graphs) w.bytes_field(11, encode(g));
  w.bytes_field_if(13, a.doc_string);
  w.int_field(20, a.type);
  w.bytes_field_if(21, a.ref_attr_name);
  return w.out;
}

std::string encode(const ValueInfoProto& v) {
  Writer shape;
  for (const Dimension& d : v.dims) {
    Writer dim;
    if (d.dim_value >= 0)
      dim.int_field(1, d.dim_value);
    else
      dim.bytes_field_if(2, d.dim_param);
    shape.bytes_field(1, dim.out);
  }
  Writer tensor;
  tensor.int_field(1, v.elem_type);
  if (v.has_shape || !v.dims.empty()) tensor.bytes_field(2, shape.out);
  Writer type;
  type.bytes_field(1, tensor.out);
  Writer w;
  w.bytes_field_if(1, v.name);
  w.bytes_field(2, type.out);
  w.bytes_field_if(3, v.doc_string);
  return w.out;
}

std::string encode(const NodeProto& n) {
  Writer w;
  for (const std::string& s : n.input) w.bytes_field(1, s);
  for (const std::string& s : n.output) w.bytes_field(2, s);
  w.bytes_field_if(3, n.name);
  w.bytes_field_if(4, n.op_type);
  for (const AttributeProto& a : n.attribute) w.bytes_field(5, encode(a));
  w.bytes_field_if(6, n.doc_string);
  w.bytes_field_if(7, n.domain);
  return w.out;
}

std::string encode(const GraphProto& g) {
  Writer w;
  for (const NodeProto& n : g.node) w.bytes_field(1, encode(n));
  w.bytes_field_if(2, g.name);
  for (const TensorProto& t : g.initializer) w.bytes_field(5, encode(t));
  w.bytes_field_if(10, g.doc_string);
  for (const ValueInfoProto& v : g.input) w.bytes_field(11, encode(v));
  for (const ValueInfoProto& v : g.output) w.bytes_field(12, encode(v));
  for (const ValueInfoProto& v : g.value_info) w.bytes_field(13, encode(v));
  return w.out;
}

}  // namespace

std::string encode_model(const ModelProto& m) {
  Writer w;
  w.int_field(1, m.ir_version);
  w.bytes_field_if(2, m.producer_name);
  w.bytes_field_if(3, m.producer_version);
  w.bytes_field_if(4, m.domain);
  w.int_field_if(5, m.model_version);
  w.bytes_field_if(6, m.doc_string);
  w.bytes_field(7, encode(m.graph));
  for (const OperatorSetId& o : m.opset_import) {
    Writer op;
    op.bytes_field_if(1, o.domain);
    op.int_field(2, o.version);
    w.bytes_field(8, op.out);
  }
  for (const StringStringEntry& e : m.metadata_props) {
    Writer kv;
    kv.bytes_field_if(1, e.key);
    kv.bytes_field_if(2, e.value);
    w.bytes_field(14, kv.out);
  }
  return std::move(w.out);
}

void write_model(const std::string& path, const ModelProto& m) {
  const std::string bytes = encode_model(m);
  io::write_atomically(path, "write_model", [&](std::ostream& out) {
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  });
}

TensorProto from_tensor(const std::string& name, const Tensor& t) {
  TensorProto p;
  p.name = name;
  p.dims = t.shape().dims();
  switch (t.dtype()) {
    case DType::kF32:
      p.data_type = kFloat;
      break;
    case DType::kS8:
      p.data_type = kInt8;
      break;
    case DType::kU8:
      p.data_type = kUint8;
      break;
    case DType::kS16:
      p.data_type = kInt16;
      break;
    case DType::kS32:
      p.data_type = kInt32;
      break;
    case DType::kS64:
      p.data_type = kInt64;
      break;
    case DType::kBool:
      p.data_type = kBool;
      break;
  }
  // lowbit tensors are little-endian in memory on every platform we build for (x86-64).
  p.raw_data.assign(static_cast<const char*>(t.raw()), t.nbytes());
  return p;
}

AttributeProto attr_int(const std::string& name, int64_t v) {
  AttributeProto a;
  a.name = name;
  a.type = kAttrInt;
  a.i = v;
  return a;
}

AttributeProto attr_float(const std::string& name, float v) {
  AttributeProto a;
  a.name = name;
  a.type = kAttrFloat;
  a.f = v;
  return a;
}

AttributeProto attr_ints(const std::string& name, std::vector<int64_t> v) {
  AttributeProto a;
  a.name = name;
  a.type = kAttrInts;
  a.ints = std::move(v);
  return a;
}

int64_t default_opset(const ModelProto& m) {
  for (const OperatorSetId& o : m.opset_import)
    if (o.domain.empty() || o.domain == "ai.onnx") return o.version;
  return 0;
}

}  // namespace lowbit::onnx
