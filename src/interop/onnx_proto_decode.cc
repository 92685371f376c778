// Protobuf wire-format decoding of the ONNX subset in lowbit/interop/onnx_proto.h. Every read is
// checked against the bytes left, and every error names the file, the field path and the byte
// offset: "m.onnx: graph.node[3].attribute[1].t: truncated varint at byte 1234". Unknown fields
// are skipped by their wire type (protobuf's rule); a known field with a wire type other than its
// own is malformed. Repeated scalars are accepted packed and unpacked.
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>

#include "lowbit/error.h"
#include "lowbit/interop/onnx_proto.h"

namespace lowbit::onnx {

namespace {

constexpr int kMaxDepth = 64;

enum Wire : uint32_t {
  kVarint = 0,
  kFixed64 = 1,
  kLen = 2,
  kStartGroup = 3,
  kEndGroup = 4,
  kFixed32 = 5
};

struct Context {
  const unsigned char* begin;
  std::string name;  // the file
};

// A view of one message's bytes, with the field path for messages.
class Reader {
 public:
  Reader(const Context& ctx, const unsigned char* p, const unsigned char* end, std::string path,
         int depth)
      : ctx_(ctx), p_(p), end_(end), path_(std::move(path)), depth_(depth) {
    if (depth_ > kMaxDepth)
      fail("messages nested deeper than " + std::to_string(kMaxDepth) + " levels");
  }

  bool done() const { return p_ >= end_; }
  const std::string& path() const { return path_; }
  int depth() const { return depth_; }

  [[noreturn]] void fail(const std::string& what) const {
    LOWBIT_THROW(IoError, ctx_.name, ": ", path_.empty() ? std::string("model") : path_, ": ", what,
                 " at byte ", p_ - ctx_.begin,
                 " (the file is truncated or is not an ONNX model; re-export it)");
  }

  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p_ >= end_) fail("truncated varint");
      const unsigned char b = *p_++;
      v |= uint64_t{b & 0x7Fu} << shift;
      if (!(b & 0x80)) return v;
    }
    fail("varint longer than 10 bytes");
  }
  // Reads a tag; returns false at the end of the message.
  bool next(uint32_t& field, Wire& wire) {
    if (p_ >= end_) return false;
    const uint64_t t = varint();
    field = static_cast<uint32_t>(t >> 3);
    wire = static_cast<Wire>(t & 7);
    if (field == 0 || (t >> 3) > 0x1FFFFFFF) fail("invalid field number " + std::to_string(t >> 3));
    if (wire == kStartGroup || wire == kEndGroup)
      fail("field " + std::to_string(field) + " uses the deprecated group wire type");
    if (wire != kVarint && wire != kFixed64 && wire != kLen && wire != kFixed32)
      fail("field " + std::to_string(field) + " has invalid wire type " + std::to_string(wire));
    return true;
  }
  void skip(Wire wire) {
    switch (wire) {
      case kVarint:
        varint();
        break;
      case kFixed64:
        take(8);
        break;
      case kFixed32:
        take(4);
        break;
      case kLen:
        take(length());
        break;
      default:
        fail("invalid wire type");
    }
  }
  size_t length() {
    const uint64_t n = varint();
    if (n > static_cast<uint64_t>(end_ - p_))
      fail("length " + std::to_string(n) + " runs past the end of the message (" +
           std::to_string(end_ - p_) + " bytes left)");
    return static_cast<size_t>(n);
  }
  const unsigned char* take(size_t n) {
    if (n > static_cast<size_t>(end_ - p_)) fail("truncated field");
    const unsigned char* q = p_;
    p_ += n;
    return q;
  }
  std::string bytes() {
    const size_t n = length();
    return std::string(reinterpret_cast<const char*>(take(n)), n);
  }
  Reader sub(const std::string& path) {
    const size_t n = length();
    const unsigned char* q = take(n);
    return Reader(ctx_, q, q + n, path, depth_ + 1);
  }
  uint32_t u32() {
    const unsigned char* q = take(4);
    return uint32_t{q[0]} | uint32_t{q[1]} << 8 | uint32_t{q[2]} << 16 | uint32_t{q[3]} << 24;
  }
  uint64_t u64() {
    const unsigned char* q = take(8);
    uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = v << 8 | q[i];
    return v;
  }
  float f32() {
    const uint32_t u = u32();
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  double f64() {
    const uint64_t u = u64();
    double d;
    std::memcpy(&d, &u, 8);
    return d;
  }

  // Checks that a singular field has the wire type it must have.
  void expect(Wire got, Wire want, uint32_t field) const {
    if (got != want)
      fail("field " + std::to_string(field) + " has wire type " + std::to_string(got) +
           ", expected " + std::to_string(want));
  }

  // Repeated scalars: packed (kLen) or one element (the scalar's own wire type).
  template <typename T, typename ReadOne>
  void repeated(Wire wire, Wire scalar, uint32_t field, std::vector<T>& out, ReadOne read_one) {
    if (wire == kLen) {
      Reader r = sub(path_);
      while (!r.done()) out.push_back(read_one(r));
    } else {
      expect(wire, scalar, field);
      out.push_back(read_one(*this));
    }
  }
  void varints64(Wire wire, uint32_t field, std::vector<int64_t>& out) {
    repeated(wire, kVarint, field, out, [](Reader& r) { return static_cast<int64_t>(r.varint()); });
  }
  void varints32(Wire wire, uint32_t field, std::vector<int32_t>& out) {
    repeated(wire, kVarint, field, out, [](Reader& r) { return static_cast<int32_t>(r.varint()); });
  }
  void floats(Wire wire, uint32_t field, std::vector<float>& out) {
    repeated(wire, kFixed32, field, out, [](Reader& r) { return r.f32(); });
  }

 private:
  const Context& ctx_;
  const unsigned char* p_;
  const unsigned char* end_;
  std::string path_;
  int depth_;
};

std::string at(const std::string& path, const char* field) {
  return path.empty() ? std::string(field) : path + "." + field;
}
std::string at(const std::string& path, const char* field, size_t i) {
  return at(path, field) + "[" + std::to_string(i) + "]";
}

int64_t as_int(Reader& r, Wire w, uint32_t f) {
  r.expect(w, kVarint, f);
  return static_cast<int64_t>(r.varint());
}
std::string as_bytes(Reader& r, Wire w, uint32_t f) {
  r.expect(w, kLen, f);
  return r.bytes();
}

GraphProto decode_graph(Reader r);

TensorProto decode_tensor(Reader r) {
  TensorProto t;
  uint32_t f;
  Wire w;
  while (r.next(f, w)) {
    switch (f) {
      case 1:
        r.varints64(w, f, t.dims);
        break;
      case 2:
        t.data_type = static_cast<int32_t>(as_int(r, w, f));
        break;
      case 4:
        r.floats(w, f, t.float_data);
        break;
      case 5:
        r.varints32(w, f, t.int32_data);
        break;
      case 6:
        t.string_data.push_back(as_bytes(r, w, f));
        break;
      case 7:
        r.varints64(w, f, t.int64_data);
        break;
      case 8:
        t.name = as_bytes(r, w, f);
        break;
      case 9:
        t.raw_data = as_bytes(r, w, f);
        break;
      case 10:
        r.repeated(w, kFixed64, f, t.double_data, [](Reader& q) { return q.f64(); });
        break;
      case 11:
        r.repeated(w, kVarint, f, t.uint64_data, [](Reader& q) { return q.varint(); });
        break;
      case 12:
        t.doc_string = as_bytes(r, w, f);
        break;
      case 13:
        r.fail("tensor '" + t.name +
               "' keeps its data in an external file, which lowbit does not read: save the "
               "model with every tensor inside the .onnx file");
      case 14:
        if (as_int(r, w, f) != 0)
          r.fail("tensor '" + t.name +
                 "' has data_location EXTERNAL, which lowbit does not read: save the model with "
                 "every tensor inside the .onnx file");
        break;
      default:
        r.skip(w);
    }
  }
  return t;
}

AttributeProto decode_attribute(Reader r) {
  AttributeProto a;
  uint32_t f;
  Wire w;
  while (r.next(f, w)) {
    switch (f) {
      case 1:
        a.name = as_bytes(r, w, f);
        break;
      case 2:
        r.expect(w, kFixed32, f);
        a.f = r.f32();
        break;
      case 3:
        a.i = as_int(r, w, f);
        break;
      case 4:
        a.s = as_bytes(r, w, f);
        break;
      case 5:
        r.expect(w, kLen, f);
        a.t.assign(1, decode_tensor(r.sub(at(r.path(), "t"))));
        break;
      case 6:
        r.expect(w, kLen, f);
        a.g.clear();
        a.g.push_back(decode_graph(r.sub(at(r.path(), "g"))));
        break;
      case 7:
        r.floats(w, f, a.floats);
        break;
      case 8:
        r.varints64(w, f, a.ints);
        break;
      case 9:
        a.strings.push_back(as_bytes(r, w, f));
        break;
      case 10:
        r.expect(w, kLen, f);
        a.tensors.push_back(decode_tensor(r.sub(at(r.path(), "tensors", a.tensors.size()))));
        break;
      case 11:
        r.expect(w, kLen, f);
        a.graphs.push_back(decode_graph(r.sub(at(r.path(), "graphs", a.graphs.size()))));
        break;
      case 13:
        a.doc_string = as_bytes(r, w, f);
        break;
      case 20:
        a.type = static_cast<int32_t>(as_int(r, w, f));
        break;
      case 21:
        a.ref_attr_name = as_bytes(r, w, f);
        break;
      default:
        r.skip(w);
    }
  }
  return a;
}

void decode_shape(Reader r, ValueInfoProto& v) {
  v.has_shape = true;
  uint32_t f;
  Wire w;
  while (r.next(f, w)) {
    if (f != 1) {
      r.skip(w);
      continue;
    }
    r.expect(w, kLen, f);
    Reader d = r.sub(at(r.path(), "dim", v.dims.size()));
    Dimension dim;
    uint32_t g;
    Wire x;
    while (d.next(g, x)) {
      if (g == 1) {
        dim.dim_value = as_int(d, x, g);
        dim.dim_param.clear();
      } else if (g == 2) {
        dim.dim_param = as_bytes(d, x, g);
        dim.dim_value = -1;
      } else {
        d.skip(x);
      }
    }
    v.dims.push_back(std::move(dim));
  }
}

ValueInfoProto decode_value_info(Reader r) {
  ValueInfoProto v;
  uint32_t f;
  Wire w;
  while (r.next(f, w)) {
    switch (f) {
      case 1:
        v.name = as_bytes(r, w, f);
        break;
      case 2: {  // TypeProto
        r.expect(w, kLen, f);
        Reader type = r.sub(at(r.path(), "type"));
        uint32_t g;
        Wire x;
        while (type.next(g, x)) {
          if (g != 1) {  // sequence, map, optional, sparse types: left undefined
            type.skip(x);
            continue;
          }
          type.expect(x, kLen, g);
          Reader tensor = type.sub(at(type.path(), "tensor_type"));
          uint32_t h;
          Wire y;
          while (tensor.next(h, y)) {
            if (h == 1) {
              v.elem_type = static_cast<int32_t>(as_int(tensor, y, h));
            } else if (h == 2) {
              tensor.expect(y, kLen, h);
              v.dims.clear();
              decode_shape(tensor.sub(at(tensor.path(), "shape")), v);
            } else {
              tensor.skip(y);
            }
          }
        }
        break;
      }
      case 3:
        v.doc_string = as_bytes(r, w, f);
        break;
      default:
        r.skip(w);
    }
  }
  return v;
}

NodeProto decode_node(Reader r) {
  NodeProto n;
  uint32_t f;
  Wire w;
  while (r.next(f, w)) {
    switch (f) {
      case 1:
        n.input.push_back(as_bytes(r, w, f));
        break;
      case 2:
        n.output.push_back(as_bytes(r, w, f));
        break;
      case 3:
        n.name = as_bytes(r, w, f);
        break;
      case 4:
        n.op_type = as_bytes(r, w, f);
        break;
      case 5:
        r.expect(w, kLen, f);
        n.attribute.push_back(
            decode_attribute(r.sub(at(r.path(), "attribute", n.attribute.size()))));
        break;
      case 6:
        n.doc_string = as_bytes(r, w, f);
        break;
      case 7:
        n.domain = as_bytes(r, w, f);
        break;
      default:
        r.skip(w);
    }
  }
  return n;
}

GraphProto decode_graph(Reader r) {
  GraphProto g;
  uint32_t f;
  Wire w;
  while (r.next(f, w)) {
    switch (f) {
      case 1:
        r.expect(w, kLen, f);
        g.node.push_back(decode_node(r.sub(at(r.path(), "node", g.node.size()))));
        break;
      case 2:
        g.name = as_bytes(r, w, f);
        break;
      case 5:
        r.expect(w, kLen, f);
        g.initializer.push_back(
            decode_tensor(r.sub(at(r.path(), "initializer", g.initializer.size()))));
        break;
      case 10:
        g.doc_string = as_bytes(r, w, f);
        break;
      case 11:
        r.expect(w, kLen, f);
        g.input.push_back(decode_value_info(r.sub(at(r.path(), "input", g.input.size()))));
        break;
      case 12:
        r.expect(w, kLen, f);
        g.output.push_back(decode_value_info(r.sub(at(r.path(), "output", g.output.size()))));
        break;
      case 13:
        r.expect(w, kLen, f);
        g.value_info.push_back(
            decode_value_info(r.sub(at(r.path(), "value_info", g.value_info.size()))));
        break;
      case 15:
        r.fail("sparse initializers are not supported: store the tensor dense");
      default:
        r.skip(w);
    }
  }
  return g;
}

}  // namespace

ModelProto decode_model(const void* data, size_t size, const std::string& name) {
  const auto* p = static_cast<const unsigned char*>(data);
  Context ctx{p, name};
  if (size == 0)
    LOWBIT_THROW(IoError, name, ": the file is empty (expected an ONNX model, a ModelProto)");
  Reader r(ctx, p, p + size, "", 0);
  ModelProto m;
  m.ir_version = 0;
  bool has_graph = false;
  uint32_t f;
  Wire w;
  while (r.next(f, w)) {
    switch (f) {
      case 1:
        m.ir_version = as_int(r, w, f);
        break;
      case 2:
        m.producer_name = as_bytes(r, w, f);
        break;
      case 3:
        m.producer_version = as_bytes(r, w, f);
        break;
      case 4:
        m.domain = as_bytes(r, w, f);
        break;
      case 5:
        m.model_version = as_int(r, w, f);
        break;
      case 6:
        m.doc_string = as_bytes(r, w, f);
        break;
      case 7:
        r.expect(w, kLen, f);
        m.graph = decode_graph(r.sub("graph"));
        has_graph = true;
        break;
      case 8: {
        r.expect(w, kLen, f);
        Reader o = r.sub(at("", "opset_import", m.opset_import.size()));
        OperatorSetId id;
        uint32_t g;
        Wire x;
        while (o.next(g, x)) {
          if (g == 1)
            id.domain = as_bytes(o, x, g);
          else if (g == 2)
            id.version = as_int(o, x, g);
          else
            o.skip(x);
        }
        m.opset_import.push_back(std::move(id));
        break;
      }
      case 14: {
        r.expect(w, kLen, f);
        Reader e = r.sub(at("", "metadata_props", m.metadata_props.size()));
        StringStringEntry kv;
        uint32_t g;
        Wire x;
        while (e.next(g, x)) {
          if (g == 1)
            kv.key = as_bytes(e, x, g);
          else if (g == 2)
            kv.value = as_bytes(e, x, g);
          else
            e.skip(x);
        }
        m.metadata_props.push_back(std::move(kv));
        break;
      }
      default:
        r.skip(w);
    }
  }
  if (!has_graph)
    LOWBIT_THROW(IoError, name,
                 ": no graph (ModelProto field 7): this is not an ONNX model, or it is truncated");
  return m;
}

ModelProto read_model(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) LOWBIT_THROW(IoError, "read_model: cannot open '", path, "': ", std::strerror(errno));
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) LOWBIT_THROW(IoError, "read_model: reading '", path, "' failed");
  return decode_model(bytes.data(), bytes.size(), path);
}

Tensor to_tensor(const TensorProto& t) {
  const std::string who = "tensor '" + t.name + "'";
  int64_t numel = 1;
  for (int64_t d : t.dims) {
    if (d < 0) LOWBIT_THROW(ValueError, who, ": negative dimension ", d, " in dims");
    if (d > 0 && numel > std::numeric_limits<int64_t>::max() / d)
      LOWBIT_THROW(ValueError, who, ": dims overflow");
    numel *= d;
  }
  DType dtype;
  size_t onnx_size;  // bytes per element in raw_data
  switch (t.data_type) {
    case kFloat:
      dtype = DType::kF32, onnx_size = 4;
      break;
    case kDouble:
      dtype = DType::kF32, onnx_size = 8;
      break;
    case kInt8:
      dtype = DType::kS8, onnx_size = 1;
      break;
    case kUint8:
      dtype = DType::kU8, onnx_size = 1;
      break;
    case kBool:
      dtype = DType::kU8, onnx_size = 1;
      break;
    case kInt16:
      dtype = DType::kS16, onnx_size = 2;
      break;
    case kInt32:
      dtype = DType::kS32, onnx_size = 4;
      break;
    case kInt64:
      dtype = DType::kS64, onnx_size = 8;
      break;
    default:
      LOWBIT_THROW(ValueError, who, ": data type ", t.data_type,
                   " is not supported (float, double, int8, uint8, bool, int16, int32, int64 are)");
  }
  const size_t n = static_cast<size_t>(numel);
  if (n > (size_t{1} << 40) / onnx_size) LOWBIT_THROW(ValueError, who, ": too many elements");
  size_t have = 0;
  const char* which = "raw_data";
  if (!t.raw_data.empty()) {
    have = t.raw_data.size() / onnx_size;
    if (t.raw_data.size() % onnx_size != 0 || have != n)
      LOWBIT_THROW(ValueError, who, ": raw_data has ", t.raw_data.size(), " bytes, expected ",
                   n * onnx_size, " for dims of ", n, " elements");
  } else if (t.data_type == kFloat) {
    have = t.float_data.size(), which = "float_data";
  } else if (t.data_type == kDouble) {
    have = t.double_data.size(), which = "double_data";
  } else if (t.data_type == kInt64) {
    have = t.int64_data.size(), which = "int64_data";
  } else {
    have = t.int32_data.size(), which = "int32_data";
  }
  if (have != n)
    LOWBIT_THROW(ValueError, who, ": ", which, " has ", have, " elements, expected ", n,
                 " (the product of dims)");
  Tensor out(Shape(t.dims), dtype);
  if (n == 0) return out;
  if (!t.raw_data.empty()) {
    const char* src = t.raw_data.data();
    if (t.data_type == kDouble) {
      float* dst = out.data<float>();
      for (size_t i = 0; i < n; ++i) {
        double d;
        std::memcpy(&d, src + 8 * i, 8);
        dst[i] = static_cast<float>(d);
      }
    } else if (t.data_type == kBool) {
      uint8_t* dst = out.data<uint8_t>();
      for (size_t i = 0; i < n; ++i) dst[i] = src[i] != 0;
    } else {
      std::memcpy(out.raw(), src, n * onnx_size);
    }
    return out;
  }
  auto check_range = [&](int64_t v, int64_t lo, int64_t hi, size_t i) {
    if (v < lo || v > hi)
      LOWBIT_THROW(ValueError, who, ": int32_data[", i, "] = ", v, " is outside the range [", lo,
                   ", ", hi, "] of its data type");
  };
  for (size_t i = 0; i < n; ++i) {
    switch (t.data_type) {
      case kFloat:
        out.data<float>()[i] = t.float_data[i];
        break;
      case kDouble:
        out.data<float>()[i] = static_cast<float>(t.double_data[i]);
        break;
      case kInt64:
        out.data<int64_t>()[i] = t.int64_data[i];
        break;
      case kInt32:
        out.data<int32_t>()[i] = t.int32_data[i];
        break;
      case kInt16:
        check_range(t.int32_data[i], -32768, 32767, i);
        out.data<int16_t>()[i] = static_cast<int16_t>(t.int32_data[i]);
        break;
      case kInt8:
        check_range(t.int32_data[i], -128, 127, i);
        out.data<int8_t>()[i] = static_cast<int8_t>(t.int32_data[i]);
        break;
      case kUint8:
        check_range(t.int32_data[i], 0, 255, i);
        out.data<uint8_t>()[i] = static_cast<uint8_t>(t.int32_data[i]);
        break;
      case kBool:
        out.data<uint8_t>()[i] = t.int32_data[i] != 0;
        break;
    }
  }
  return out;
}

}  // namespace lowbit::onnx
