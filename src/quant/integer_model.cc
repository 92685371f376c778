// IntegerModel (include/lowbit/quant/convert.h): the runtime (one graph of integer ops, an
// executor per use, plans per batch shape), the model file (safetensors with the graph as JSON
// metadata, validated on load) and inspect.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "lowbit/graph.h"
#include "lowbit/io/safetensors.h"
#include "lowbit/nn/layer.h"
#include "lowbit/ops.h"
#include "lowbit/quant/convert.h"
#include "quant/code_schemes.h"

namespace lowbit::quant {

using nn::Json;

// ---- the two activation schemes (quant/code_schemes.h) ------------------------------------------

namespace detail {

std::vector<CodeAttribute> code_attributes(const std::string& op) {
  if (op == "qconv2d" || op == "qfully_connected")
    return {{"input_zero_point", 0, true},
            {"output_zero_point", -1, true},
            {"act_min", -1, false},
            {"act_max", -1, false}};
  if (op == "qmax_pool2d") return {{"act_min", -1, false}, {"act_max", -1, false}};
  // Required: without its parameters the pool rounds the mean of the codes themselves half away
  // from zero (TFLite's int8 rounding), which in u8 codes would not be the s8 result + 128.
  if (op == "qavg_pool2d")
    return {{"input_zero_point", 0, true},
            {"output_zero_point", -1, true},
            {"act_min", -1, false},
            {"act_max", -1, false}};
  if (op == "qadd")
    return {{"input1_zero_point", 0, true},
            {"input2_zero_point", 1, true},
            {"output_zero_point", -1, true},
            {"act_min", -1, false},
            {"act_max", -1, false}};
  if (op == "requantize")
    return {{"input_zero_point", 0, true},
            {"output_zero_point", -1, true},
            {"act_min", -1, false},
            {"act_max", -1, false}};
  if (op == "quantize") return {{"zero_point", -1, true}};
  if (op == "dequantize") return {{"zero_point", 0, true}};
  if (op == "qlogistic" || op == "qtanh" || op == "qsoftmax")
    return {{"input_zero_point", 0, true}, {"output_zero_point", -1, false}};
  if (op == "qlstm" || op == "qgru")
    return {{"input_zero_point", 0, true}, {"hidden_zero_point", -1, true}};
  return {};  // concat, reshape, gather copy codes; cast, timestep_mask read no codes
}

void to_uint8_scheme(IntegerModel& m) {
  std::vector<bool> shift(m.tensors.size(), false);
  for (size_t i = 0; i < m.tensors.size(); ++i)
    shift[i] = m.tensors[i].dtype == DType::kS8 && !m.tensors[i].data.defined();
  for (const IntegerOp& op : m.ops)
    if (op.op == "gather" && !op.inputs.empty() && m.tensors.at(op.inputs[0]).dtype == DType::kS8)
      shift[op.inputs[0]] = true;
  for (IntegerOp& op : m.ops)
    for (const CodeAttribute& a : code_attributes(op.op)) {
      const int t = code_attribute_tensor(op, a);
      if (t < 0 || !shift.at(t)) continue;
      if (op.attrs.has(a.name))
        op.attrs.set(a.name, op.attrs.i(a.name) + 128);
      else if (a.required)
        op.attrs.set(a.name, int64_t{128});  // the s8 default 0, given
    }
  for (size_t i = 0; i < m.tensors.size(); ++i) {
    if (!shift[i]) continue;
    IntegerTensor& t = m.tensors[i];
    t.dtype = DType::kU8;
    for (int32_t& z : t.zero_point) z += 128;
    t.qmin += 128;
    t.qmax += 128;
    if (t.data.defined()) {
      Tensor u(t.data.shape(), DType::kU8);
      const int8_t* src = t.data.data<int8_t>();
      uint8_t* dst = u.data<uint8_t>();
      for (int64_t k = 0; k < u.numel(); ++k) dst[k] = static_cast<uint8_t>(src[k] + 128);
      t.data = std::move(u);
    }
  }
}

std::string scheme_mismatch(const IntegerModel& m, const IntegerOp& op) {
  const auto is_code = [](DType d) { return d == DType::kS8 || d == DType::kU8; };
  const IntegerTensor& y = m.tensors.at(op.output);
  for (size_t k = 0; k < op.inputs.size(); ++k) {
    const IntegerTensor& x = m.tensors.at(op.inputs[k]);
    if (x.data.defined() && x.dtype == DType::kU8 && !(op.op == "gather" && k == 0))
      return "constant '" + x.name + "' is u8, but only a gather's table may be (weights are s8 " +
             "in both activation schemes)";
  }
  if (op.op == "quantize" || op.op == "dequantize" || op.op == "cast" || op.op == "timestep_mask")
    return "";
  for (size_t k = 0; k < op.inputs.size(); ++k) {
    const IntegerTensor& x = m.tensors.at(op.inputs[k]);
    const bool table = op.op == "gather" && k == 0;
    if (x.data.defined() && !table) continue;  // weights, biases
    if (is_code(x.dtype) && is_code(y.dtype) && x.dtype != y.dtype)
      return std::string(table ? "table '" : "input tensor '") + x.name + "' is " +
             dtype_name(x.dtype) + " but output tensor '" + y.name + "' is " + dtype_name(y.dtype) +
             ": an op reads and writes the activation codes of one scheme (s8, or u8 in the "
             "uint8 scheme)";
  }
  return "";
}

}  // namespace detail

// ---- runtime ---------------------------------------------------------------------------------

struct IntegerModel::Runtime {
  Graph g;
  Value x;
  std::vector<Value> values;  // per tensor (constants included)
  std::unique_ptr<Executor> predict, all;
  std::vector<int> produced;  // tensors the ops write, in op order
};

IntegerModel::IntegerModel() = default;
IntegerModel::~IntegerModel() = default;
IntegerModel::IntegerModel(IntegerModel&&) noexcept = default;
IntegerModel& IntegerModel::operator=(IntegerModel&&) noexcept = default;

IntegerModel::Runtime& IntegerModel::runtime() {
  if (rt_) return *rt_;
  auto rt = std::make_unique<Runtime>();
  rt->values.resize(tensors.size());
  const IntegerTensor& in = tensors.at(input);
  rt->x = rt->g.placeholder(in.name, in.dtype, in.shape);
  rt->values[input] = rt->x;
  // The uint8 scheme runs on the s8 kernels (docs/integer-inference.md "The uint8 scheme"): a u8
  // code c is the s8 code c - 128 (the byte c ^ 0x80) on the same grid, with every zero point
  // and clamp - 128. Here, once: the u8 constants (gather tables) as s8, and the code
  // attributes of the ops on u8 tensors; the graph then holds s8 values for u8 tensors.
  const auto exec_dtype = [&](int t) {
    return tensors.at(t).dtype == DType::kU8 ? DType::kS8 : tensors.at(t).dtype;
  };
  for (size_t i = 0; i < tensors.size(); ++i) {
    const IntegerTensor& t = tensors[i];
    if (!t.data.defined()) continue;
    if (t.dtype == DType::kU8) {
      Tensor s8(t.data.shape(), DType::kS8);
      const uint8_t* src = t.data.data<uint8_t>();
      int8_t* dst = s8.data<int8_t>();
      for (int64_t k = 0; k < s8.numel(); ++k) dst[k] = static_cast<int8_t>(src[k] ^ 0x80u);
      rt->values[i] = rt->g.constant(s8, t.name);
    } else {
      rt->values[i] = rt->g.constant(t.data, t.name);
    }
  }
  for (const IntegerOp& op : ops) {
    std::vector<Value> ins;
    for (int t : op.inputs) {
      if (t < 0 || t >= static_cast<int>(tensors.size()) || !rt->values.at(t).defined())
        LOWBIT_THROW(
            ValueError, "IntegerModel: op '", op.op, "' (", op.layer, ") reads tensor '",
            t < 0 || t >= static_cast<int>(tensors.size()) ? std::to_string(t) : tensors.at(t).name,
            "' before any op writes it");
      ins.push_back(rt->values[t]);
    }
    if (const std::string why = detail::scheme_mismatch(*this, op); !why.empty())
      LOWBIT_THROW(ValueError, "IntegerModel: op '", op.op, "' (", op.layer, "): ", why);
    Attrs attrs = op.attrs;
    for (const detail::CodeAttribute& a : detail::code_attributes(op.op)) {
      const int ti = detail::code_attribute_tensor(op, a);
      if (ti < 0 || tensors.at(ti).dtype != DType::kU8) continue;
      const IntegerTensor& t = tensors[ti];
      if (!attrs.has(a.name)) {
        if (a.required)
          LOWBIT_THROW(ValueError, "IntegerModel: op '", op.op, "' (", op.layer, "): attribute '",
                       a.name, "' is required: tensor '", t.name,
                       "' is u8 (the uint8 scheme gives every zero point)");
        continue;
      }
      const int64_t v = attrs.i(a.name);
      if (v < 0 || v > 255)
        LOWBIT_THROW(ValueError, "IntegerModel: op '", op.op, "' (", op.layer, "): attribute '",
                     a.name, "' is ", v, " but tensor '", t.name,
                     "' is u8: expected a code in [0, 255]");
      attrs.set(a.name, v - 128);
    }
    const Value y = ops::apply(op.op, ins, attrs).at(0);
    // What the op computes must be what the tensor declares: predict sizes its output from the
    // declared shape and reads it as f32.
    const IntegerTensor& t = tensors.at(op.output);
    if (y.dtype() != exec_dtype(op.output) || y.shape() != t.shape)
      LOWBIT_THROW(ValueError, "IntegerModel: op '", op.op, "' (", op.layer, ") computes ",
                   dtype_name(y.dtype()), y.shape().str(), " but its output tensor '", t.name,
                   "' is declared ", dtype_name(t.dtype), t.shape.str());
    rt->values.at(op.output) = y;
    rt->produced.push_back(op.output);
  }
  if (!rt->values.at(output).defined())
    LOWBIT_THROW(ValueError, "IntegerModel: no op writes the output tensor '",
                 tensors.at(output).name, "'");
  rt_ = std::move(rt);
  return *rt_;
}

Tensor IntegerModel::predict(const Tensor& x, int64_t batch_size) {
  Runtime& rt = runtime();
  const IntegerTensor& in = tensors.at(input);
  if (x.dtype() != in.dtype || x.rank() != in.shape.rank())
    LOWBIT_THROW(ShapeError, "IntegerModel::predict: expected x ", dtype_name(in.dtype),
                 in.shape.str(), " but found ", dtype_name(x.dtype()), x.shape().str());
  for (int d = 1; d < x.rank(); ++d)
    if (in.shape[d] != kUnknown && in.shape[d] != x.shape()[d])
      LOWBIT_THROW(ShapeError, "IntegerModel::predict: expected x ", dtype_name(in.dtype),
                   in.shape.str(), " but found ", dtype_name(x.dtype()), x.shape().str());
  if (batch_size < 1)
    LOWBIT_THROW(ValueError, "IntegerModel::predict: batch_size must be >= 1 but is ", batch_size);
  check_ids(x);
  if (!rt.predict)
    rt.predict = std::make_unique<Executor>(rt.g, std::vector<Value>{rt.values[output]});
  const int64_t n = x.shape()[0];
  std::vector<int64_t> od = tensors.at(output).shape.dims();
  od[0] = n;
  Tensor out(Shape(od), DType::kF32);
  const int64_t row_in = n ? x.numel() / n : 0, row_out = n ? out.numel() / n : 0;
  for (int64_t b = 0; b < n; b += batch_size) {
    const int64_t m = std::min(batch_size, n - b);
    std::vector<int64_t> xd = x.shape().dims();
    xd[0] = m;
    Tensor xb = Tensor::wrap(static_cast<char*>(x.raw()) + b * row_in * dtype_size(x.dtype()),
                             Shape(xd), x.dtype());
    const Tensor yb = rt.predict->run({{rt.x, xb}})[0];
    std::copy(yb.data<float>(), yb.data<float>() + m * row_out, out.data<float>() + b * row_out);
  }
  return out;
}

// Token ids must index their table (the gather kernel cannot throw): every gather that reads
// the model input (directly or through a cast, which truncates f32 ids toward zero).
void IntegerModel::check_ids(const Tensor& x) const {
  for (const IntegerOp& op : ops) {
    if (op.op != "gather" || op.inputs.size() != 2) continue;
    int ids = op.inputs[1];
    for (const IntegerOp& c : ops)
      if (c.op == "cast" && c.output == ids && !c.inputs.empty()) ids = c.inputs[0];
    if (ids != input) continue;
    const int64_t rows = tensors.at(op.inputs[0]).shape[0];
    for (int64_t i = 0; i < x.numel(); ++i) {
      const double id = std::trunc(x.get_as_double(i));
      if (!(id >= 0 && id < static_cast<double>(rows)))
        LOWBIT_THROW(ValueError, "IntegerModel: op '", op.op, "' (", op.layer,
                     "): expected ids in [0, ", rows, ") but found ", x.get_as_double(i),
                     " at flat position ", i, " of input shape ", x.shape().str());
    }
  }
}

std::vector<Tensor> IntegerModel::run_all(const Tensor& x) {
  check_ids(x);
  Runtime& rt = runtime();
  std::vector<Value> fetches;
  for (int t : rt.produced) fetches.push_back(rt.values[t]);
  if (!rt.all) rt.all = std::make_unique<Executor>(rt.g, fetches);
  const std::vector<Tensor> r = rt.all->run({{rt.x, x}});
  std::vector<Tensor> out(tensors.size());
  for (size_t i = 0; i < rt.produced.size(); ++i) {
    const int t = rt.produced[i];
    if (tensors[t].dtype != DType::kU8) {
      out[t] = r[i];
      continue;
    }
    // A u8 tensor ran as its s8 view: the user sees the u8 codes (c = s8 code + 128).
    Tensor u(r[i].shape(), DType::kU8);
    const int8_t* src = r[i].data<int8_t>();
    uint8_t* dst = u.data<uint8_t>();
    for (int64_t k = 0; k < u.numel(); ++k)
      dst[k] = static_cast<uint8_t>(static_cast<uint8_t>(src[k]) ^ 0x80u);
    out[t] = std::move(u);
  }
  return out;
}

int IntegerTensor::bits() const {
  if (dtype != DType::kS8) return 8 * static_cast<int>(dtype_size(dtype));
  for (int b : {2, 4})
    if (qmin >= -(1 << (b - 1)) && qmax <= (1 << (b - 1)) - 1) return b;
  return 8;
}

namespace {
int64_t packed_size(int64_t numel, int bits) { return (numel * bits + 7) / 8; }
void check_pack_bits(const char* fn, int bits) {
  if (bits != 2 && bits != 4)
    LOWBIT_THROW(ValueError, fn, ": argument 'bits': expected 2 or 4 but found ", bits);
}
}  // namespace

Tensor pack_codes(const Tensor& codes, int bits) {
  check_pack_bits("pack_codes", bits);
  if (codes.dtype() != DType::kS8)
    LOWBIT_THROW(ValueError, "pack_codes: expected s8 codes but found ", dtype_name(codes.dtype()));
  const Tensor& c = codes;
  const int64_t n = c.numel();
  Tensor out = Tensor::zeros({packed_size(n, bits)}, DType::kU8);
  const int8_t* src = c.data<int8_t>();
  uint8_t* dst = out.data<uint8_t>();
  const int lo = -(1 << (bits - 1)), hi = (1 << (bits - 1)) - 1;
  const unsigned mask = (1u << bits) - 1;
  for (int64_t i = 0; i < n; ++i) {
    if (src[i] < lo || src[i] > hi)
      LOWBIT_THROW(ValueError, "pack_codes: code ", int{src[i]}, " at element ", i,
                   " does not fit ", bits, " bits ([", lo, ", ", hi, "])");
    const int64_t bit = i * bits;
    dst[bit / 8] |= static_cast<uint8_t>((static_cast<unsigned>(src[i]) & mask) << (bit % 8));
  }
  return out;
}

Tensor unpack_codes(const Tensor& packed, const Shape& shape, int bits) {
  check_pack_bits("unpack_codes", bits);
  const int64_t n = shape.numel();
  if (packed.dtype() != DType::kU8 || packed.rank() != 1 || packed.numel() != packed_size(n, bits))
    LOWBIT_THROW(ValueError, "unpack_codes: ", n, " codes of ", bits, " bits need u8[",
                 packed_size(n, bits), "] (ceil(numel * bits / 8) bytes) but found ",
                 dtype_name(packed.dtype()), packed.shape().str());
  const Tensor& p = packed;
  const uint8_t* src = p.data<uint8_t>();
  Tensor out(shape, DType::kS8);
  int8_t* dst = out.data<int8_t>();
  const unsigned mask = (1u << bits) - 1, sign = 1u << (bits - 1);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t bit = i * bits;
    const unsigned v = (static_cast<unsigned>(src[bit / 8]) >> (bit % 8)) & mask;
    dst[i] = static_cast<int8_t>(static_cast<int>(v ^ sign) - static_cast<int>(sign));
  }
  if (n * bits % 8 != 0 && (src[p.numel() - 1] >> (n * bits % 8)) != 0)
    LOWBIT_THROW(ValueError, "unpack_codes: the padding bits after the last of ", n,
                 " codes are not zero (corrupted data)");
  return out;
}

int64_t IntegerModel::constant_bytes(bool packed) const {
  int64_t b = 0;
  for (const IntegerTensor& t : tensors) {
    if (!t.data.defined()) continue;
    const int bits = t.bits();
    b += packed && t.dtype == DType::kS8 && bits < 8 ? packed_size(t.data.numel(), bits)
                                                     : static_cast<int64_t>(t.data.nbytes());
  }
  return b;
}

// ---- the file ----------------------------------------------------------------------------------

namespace {

constexpr const char* kMetaKey = "lowbit.integer_model";
// Version 2 (packed low-bit weights, "bits") reads version 1 (every code in a byte) too; a
// version-1 loader refuses version 2 by its number.
constexpr int kFormatVersion = 2;
constexpr int kOldestFormatVersion = 1;

// The bits a constant is stored with under `options`: 2 or 4 (packed), or 0 (one code per
// element of its dtype).
int stored_bits(const IntegerTensor& t, const SaveOptions& options) {
  if (!options.pack || !t.data.defined() || t.dtype != DType::kS8) return 0;
  const int b = t.bits();
  return b < 8 ? b : 0;
}

Json attr_json(const Attr& a) {
  return std::visit(
      [](const auto& v) -> Json {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, int64_t>)
          return Json{{"i", v}};
        else if constexpr (std::is_same_v<T, double>)
          return Json{{"f", v}};
        else if constexpr (std::is_same_v<T, bool>)
          return Json{{"b", v}};
        else if constexpr (std::is_same_v<T, std::string>)
          return Json{{"s", v}};
        else if constexpr (std::is_same_v<T, std::vector<int64_t>>)
          return Json{{"ints", v}};
        else if constexpr (std::is_same_v<T, std::vector<double>>)
          return Json{{"floats", v}};
        else if constexpr (std::is_same_v<T, DType>)
          return Json{{"dtype", dtype_name(v)}};
        else
          LOWBIT_THROW(ValueError, "IntegerModel: an op attribute of this kind cannot be saved");
      },
      a.get());
}

// An integer of JSON, in T's range: false for a float (1e30 converted to an integer would be
// undefined behaviour), a bool, or an integer T cannot hold (a version of 2^32 + 1 must not read
// as 1).
template <class T>
bool json_int(const Json& v, T* out) {
  if (!v.is_number_integer()) return false;
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<T>::max())) return false;
    *out = static_cast<T>(u);
    return true;
  }
  const int64_t i = v.get<int64_t>();
  if (i < static_cast<int64_t>(std::numeric_limits<T>::min()) ||
      i > static_cast<int64_t>(std::numeric_limits<T>::max()))
    return false;
  *out = static_cast<T>(i);
  return true;
}

template <class T>
bool json_ints(const Json& v, std::vector<T>* out) {
  if (!v.is_array()) return false;
  out->clear();
  for (const Json& e : v) {
    T x;
    if (!json_int(e, &x)) return false;
    out->push_back(x);
  }
  return true;
}

Attr attr_from_json(const Json& j, const std::string& where) {
  if (!j.is_object() || j.size() != 1)
    LOWBIT_THROW(ValueError, where, ": expected an object with one of i, f, b, s, ints, floats");
  // j.items() is a temporary proxy: take the key and value by value, not through it.
  const std::string k = j.begin().key();
  const Json& v = j.begin().value();
  try {
    if (k == "i") {
      int64_t i;
      if (!json_int(v, &i)) LOWBIT_THROW(ValueError, where, ": expected an int64 integer");
      return Attr(i);
    }
    if (k == "f") return Attr(v.get<double>());
    if (k == "b") return Attr(v.get<bool>());
    if (k == "s") return Attr(v.get<std::string>());
    if (k == "ints") {
      std::vector<int64_t> l;
      if (!json_ints(v, &l)) LOWBIT_THROW(ValueError, where, ": expected a list of int64 integers");
      return Attr(std::move(l));
    }
    if (k == "floats") return Attr(v.get<std::vector<double>>());
    if (k == "dtype") return Attr(dtype_from_name(v.get<std::string>()));
  } catch (const Json::exception& e) {
    LOWBIT_THROW(ValueError, where, ": ", e.what());
  }
  LOWBIT_THROW(ValueError, where, ": unknown attribute kind '", k, "'");
}

}  // namespace

std::string IntegerModel::graph_json(const SaveOptions& options) const {
  Json j;
  j["format"] = "lowbit.integer_model";
  j["version"] = kFormatVersion;
  j["name"] = name;
  j["input"] = input;
  j["output"] = output;
  Json ts = Json::array();
  for (const IntegerTensor& t : tensors) {
    Json e;
    e["name"] = t.name;
    e["dtype"] = dtype_name(t.dtype);
    e["shape"] = t.shape.dims();
    e["scale"] = t.scale;
    e["zero_point"] = t.zero_point;
    e["qmin"] = t.qmin;
    e["qmax"] = t.qmax;
    e["constant"] = t.data.defined();
    if (const int b = stored_bits(t, options)) e["bits"] = b;
    ts.push_back(e);
  }
  j["tensors"] = ts;
  Json os = Json::array();
  for (const IntegerOp& op : ops) {
    Json e;
    e["op"] = op.op;
    e["inputs"] = op.inputs;
    e["output"] = op.output;
    e["layer"] = op.layer;
    e["activation"] = op.activation;
    Json a = Json::object();
    for (const auto& [k, v] : op.attrs.items()) a[k] = attr_json(v);
    e["attrs"] = a;
    os.push_back(e);
  }
  j["ops"] = os;
  return j.dump();
}

void IntegerModel::save(const std::string& path, const SaveOptions& options) const {
  io::SafetensorsFile f;
  f.metadata[kMetaKey] = graph_json(options);
  for (const IntegerTensor& t : tensors) {
    if (!t.data.defined()) continue;
    const int b = stored_bits(t, options);
    f.tensors.emplace_back(t.name, b ? pack_codes(t.data, b) : t.data);
  }
  io::write_safetensors(path, f);
}

namespace {

[[noreturn]] void bad(const std::string& path, const std::string& what) {
  LOWBIT_THROW(ValueError, "IntegerModel::load: ", path, ": ", what);
}

template <class T>
T field(const std::string& path, const Json& j, const char* key, const std::string& where) {
  if (!j.is_object() || !j.contains(key)) bad(path, where + ": field '" + key + "' is missing");
  const Json& v = j.at(key);
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    T x;
    if (!json_int(v, &x)) bad(path, where + ": field '" + key + "' is not an integer in range");
    return x;
  } else if constexpr (std::is_same_v<T, std::vector<int>> ||
                       std::is_same_v<T, std::vector<int32_t>> ||
                       std::is_same_v<T, std::vector<int64_t>>) {
    T x;
    if (!json_ints(v, &x))
      bad(path, where + ": field '" + key + "' is not a list of integers in range");
    return x;
  } else {
    try {
      return v.get<T>();
    } catch (const Json::exception&) {
      bad(path, where + ": field '" + key + "' has the wrong type");
    }
  }
}

// The attributes each op takes and their kinds: anything else is refused by name, so that no
// later reader (inspect, the kernels' prepare steps) meets an attribute of a kind it does not
// expect. Kinds: 'i' int, 'f' number, 's' string, 'F' list of numbers, 'W' a window int or list
// of ints (strides, dilations, ksize, pads), 'L' a list of ints (reshape's shape).
const std::map<std::string, std::map<std::string, char>>& op_attributes() {
  static const std::map<std::string, char> kOut = {
      {"output_scale", 'f'}, {"output_zero_point", 'i'}, {"rounding", 's'}};
  auto with = [](std::map<std::string, char> a, const std::map<std::string, char>& b) {
    a.insert(b.begin(), b.end());
    return a;
  };
  static const std::map<std::string, char> kDense = with({{"input_scale", 'f'},
                                                          {"input_zero_point", 'i'},
                                                          {"weight_scales", 'F'},
                                                          {"activation", 's'},
                                                          {"act_min", 'i'},
                                                          {"act_max", 'i'}},
                                                         kOut);
  static const std::map<std::string, char> kPool = {
      {"ksize", 'W'}, {"strides", 'W'}, {"padding", 's'}, {"act_min", 'i'}, {"act_max", 'i'}};
  static const std::map<std::string, char> kUnary = {{"input_scale", 'f'},
                                                     {"input_zero_point", 'i'},
                                                     {"output_scale", 'f'},
                                                     {"output_zero_point", 'i'}};
  static const std::map<std::string, char> kRnn = {
      {"input_scale", 'f'},       {"input_zero_point", 'i'},    {"hidden_scale", 'f'},
      {"hidden_zero_point", 'i'}, {"input_weight_scales", 'F'}, {"recurrent_weight_scales", 'F'},
      {"return_sequences", 'b'},  {"go_backwards", 'b'},        {"zero_output_for_mask", 'b'},
      {"reverse_output", 'b'}};
  static const std::map<std::string, std::map<std::string, char>> kOps = {
      {"qconv2d", with(kDense, {{"strides", 'W'},
                                {"dilations", 'W'},
                                {"padding", 's'},
                                {"pads", 'W'},
                                {"groups", 'i'}})},
      {"qfully_connected", kDense},
      {"qmax_pool2d", kPool},
      {"qavg_pool2d", with(with(kPool, kOut), {{"input_scale", 'f'}, {"input_zero_point", 'i'}})},
      {"qadd", with(kOut, {{"input1_scale", 'f'},
                           {"input1_zero_point", 'i'},
                           {"input2_scale", 'f'},
                           {"input2_zero_point", 'i'},
                           {"activation", 's'},
                           {"act_min", 'i'},
                           {"act_max", 'i'}})},
      {"requantize",
       with(kOut,
            {{"input_scale", 'f'}, {"input_zero_point", 'i'}, {"act_min", 'i'}, {"act_max", 'i'}})},
      {"concat", {{"axis", 'i'}}},
      {"quantize", {{"scale", 'f'}, {"zero_point", 'i'}}},
      {"dequantize", {{"scale", 'f'}, {"zero_point", 'i'}}},
      {"reshape", {{"shape", 'L'}}},
      {"qlstm", with(kRnn, {{"cell_int_bits", 'i'}})},
      {"qgru", with(kRnn, {{"reset_after", 'b'}})},
      {"timestep_mask", {{"mask_value", 'f'}}},
      {"qlogistic", kUnary},
      {"qtanh", kUnary},
      {"qsoftmax", with(kUnary, {{"beta", 'f'}})},
      {"gather", {{"axis", 'i'}}},
      {"cast", {{"dtype", 'd'}}}};
  return kOps;
}

// Checks one attribute against its kind, with bounds that keep the shape rules' arithmetic
// (window sizes times dilations, a pool's per-window-size table, reshape's element count) far
// from overflow and huge allocations.
void check_attr(const std::string& path, const std::string& where, const std::string& k, char kind,
                const Attr& a) {
  const Attr::Variant& v = a.get();
  const std::string at = where + ": attribute '" + k + "'";
  constexpr int64_t kMaxWindow = 1 << 16;  // strides, dilations, ksize, pads
  constexpr int64_t kMaxElems = int64_t{1} << 40;
  switch (kind) {
    case 'i':
      if (!std::holds_alternative<int64_t>(v)) bad(path, at + ": expected an int");
      if (k == "groups" && (std::get<int64_t>(v) < 1 || std::get<int64_t>(v) > kMaxWindow))
        bad(path, at + ": expected 1 <= groups <= 65536");
      return;
    case 'f':
      if (!std::holds_alternative<double>(v) && !std::holds_alternative<int64_t>(v))
        bad(path, at + ": expected a number");
      return;
    case 's':
      if (!std::holds_alternative<std::string>(v)) bad(path, at + ": expected a string");
      return;
    case 'b':
      if (!std::holds_alternative<bool>(v)) bad(path, at + ": expected true or false");
      return;
    case 'd':
      if (!std::holds_alternative<DType>(v)) bad(path, at + ": expected a dtype");
      return;
    case 'F':
      if (!std::holds_alternative<std::vector<double>>(v))
        bad(path, at + ": expected a list of numbers");
      return;
    case 'W': {
      std::vector<int64_t> l;
      if (const auto* i = std::get_if<int64_t>(&v))
        l = {*i};
      else if (const auto* p = std::get_if<std::vector<int64_t>>(&v))
        l = *p;
      else
        bad(path, at + ": expected an int or a list of ints");
      for (int64_t x : l)
        if (x < 0 || x > kMaxWindow) bad(path, at + ": expected values in [0, 65536]");
      if (k == "ksize" && l.size() == 2 && l[0] * l[1] > (int64_t{1} << 20))
        bad(path, at + ": a window of more than 2^20 taps");
      if (k == "ksize" && l.size() == 1 && l[0] * l[0] > (int64_t{1} << 20))
        bad(path, at + ": a window of more than 2^20 taps");
      return;
    }
    case 'L': {
      const auto* l = std::get_if<std::vector<int64_t>>(&v);
      if (!l) bad(path, at + ": expected a list of ints");
      int64_t n = 1;
      for (int64_t x : *l) {
        if (x < kUnknown) bad(path, at + ": a dim below -1");
        if (x > 0 && n > kMaxElems / x) bad(path, at + ": more than 2^40 elements");
        if (x > 0) n *= x;
      }
      return;
    }
    default:
      bad(path, at + ": unknown kind");
  }
}

// The parameters the nonlinear ops and the embedding gather imply, against the tensor records
// (the ops' own shape rules check their attributes when the graph is built): qlogistic, qtanh,
// qsoftmax read their input's (scale, zero point) and write the fixed output parameters; a
// gather reads an s8 table constant whose grid its output keeps; a cast makes s32/s64 ids.
void check_op_params(const std::string& path, const std::string& where, const IntegerModel& m,
                     const IntegerOp& op) {
  const bool nonlinear = op.op == "qlogistic" || op.op == "qtanh" || op.op == "qsoftmax";
  if (nonlinear) {
    if (op.inputs.size() != 1) bad(path, where + ": expected 1 input");
    const IntegerTensor& x = m.tensors[op.inputs[0]];
    const IntegerTensor& y = m.tensors[op.output];
    const double fixed_scale = op.op == "qtanh" ? 1.0 / 128 : 1.0 / 256;
    // The fixed output parameters in the output's scheme: u8 codes are the s8 ones + 128.
    const bool u8 = y.dtype == DType::kU8;
    const int32_t off = u8 ? 128 : 0;
    const int32_t fixed_zp = (op.op == "qtanh" ? 0 : -128) + off;
    if ((y.dtype != DType::kS8 && !u8) || y.scale.size() != 1 || y.scale[0] != fixed_scale ||
        y.zero_point[0] != fixed_zp || y.qmin != -128 + off || y.qmax != 127 + off)
      bad(path, where + ": output tensor '" + y.name + "' must be " + (u8 ? "u8" : "s8") +
                    " at the fixed scale " + std::to_string(fixed_scale) + ", zero point " +
                    std::to_string(fixed_zp) + ", codes [" + std::to_string(-128 + off) + ", " +
                    std::to_string(127 + off) + "]");
    if (x.dtype != y.dtype || x.scale.size() != 1 || !op.attrs.has("input_scale") ||
        op.attrs.f("input_scale") != x.scale[0] ||
        op.attrs.i("input_zero_point", 0) != x.zero_point[0])
      bad(path, where +
                    ": attributes 'input_scale', 'input_zero_point' must be those of input "
                    "tensor '" +
                    x.name + "'");
  }
  if (op.op == "gather") {
    if (op.inputs.size() != 2) bad(path, where + ": expected 2 inputs (table, ids)");
    const IntegerTensor& t = m.tensors[op.inputs[0]];
    const IntegerTensor& y = m.tensors[op.output];
    if (!t.data.defined() || (t.dtype != DType::kS8 && t.dtype != DType::kU8) ||
        t.scale.size() != 1)
      bad(path, where + ": the table '" + t.name +
                    "' must be an s8 (or, in the uint8 scheme, u8) constant with one scale");
    if (t.shape.rank() < 1 || t.shape[0] < 1)
      bad(path, where + ": the table '" + t.name + "' must have at least one row");
    if (y.scale != t.scale || y.zero_point != t.zero_point)
      bad(path, where + ": output tensor '" + y.name +
                    "' must keep the table's scale and zero "
                    "point");
  }
  if (op.op == "cast") {
    const DType d = op.attrs.has("dtype") ? op.attrs.dtype("dtype") : DType::kF32;
    if (d != DType::kS32 && d != DType::kS64)
      bad(path, where + ": a cast makes s32 or s64 ids only");
  }
}

}  // namespace

IntegerModel IntegerModel::load(const std::string& path) {
  return from_safetensors(io::read_safetensors(path), path);
}

IntegerModel IntegerModel::load_bytes(const void* data, size_t size, const std::string& name) {
  return from_safetensors(io::read_safetensors_bytes(data, size, name), name);
}

IntegerModel IntegerModel::from_safetensors(const io::SafetensorsFile& f, const std::string& path) {
  const auto meta = f.metadata.find(kMetaKey);
  if (meta == f.metadata.end())
    bad(path, std::string("no '") + kMetaKey +
                  "' metadata: not an integer model (a float or QAT model file?)");
  Json j;
  try {
    j = Json::parse(meta->second);
  } catch (const Json::exception& e) {
    bad(path, std::string("the graph JSON does not parse: ") + e.what());
  }
  if (field<std::string>(path, j, "format", "graph") != "lowbit.integer_model")
    bad(path, "graph: field 'format' is not 'lowbit.integer_model'");
  const int version = field<int>(path, j, "version", "graph");
  if (version < kOldestFormatVersion || version > kFormatVersion)
    bad(path, "graph: version " + std::to_string(version) + " is not supported (this build reads " +
                  std::to_string(kOldestFormatVersion) + " to " + std::to_string(kFormatVersion) +
                  ")");
  IntegerModel m;
  m.name = field<std::string>(path, j, "name", "graph");
  const Json ts = j.contains("tensors") ? j.at("tensors") : Json();
  if (!ts.is_array()) bad(path, "graph: field 'tensors' must be a list");
  std::set<std::string> used;
  for (size_t i = 0; i < ts.size(); ++i) {
    const Json& e = ts[i];
    IntegerTensor t;
    t.name = field<std::string>(path, e, "name", "tensor " + std::to_string(i));
    const std::string where = "tensor '" + t.name + "'";
    try {
      t.dtype = dtype_from_name(field<std::string>(path, e, "dtype", where));
    } catch (const Error&) {
      bad(path, where + ": field 'dtype' is not a dtype");
    }
    std::vector<int64_t> dims = field<std::vector<int64_t>>(path, e, "shape", where);
    for (int64_t d : dims)
      if (d < kUnknown) bad(path, where + ": field 'shape' has a negative dim");
    t.shape = Shape(dims);
    t.scale = field<std::vector<double>>(path, e, "scale", where);
    t.zero_point = field<std::vector<int32_t>>(path, e, "zero_point", where);
    t.qmin = field<int32_t>(path, e, "qmin", where);
    t.qmax = field<int32_t>(path, e, "qmax", where);
    if (t.scale.size() != t.zero_point.size())
      bad(path, where + ": 'scale' and 'zero_point' differ in length");
    for (double s : t.scale)
      if (!std::isfinite(s) || !(s > 0))
        bad(path, where + ": field 'scale' holds " + std::to_string(s) + " (must be finite, > 0)");
    if (t.dtype == DType::kS8) {
      if (t.qmin < -128 || t.qmax > 127 || t.qmin > t.qmax)
        bad(path, where + ": fields 'qmin', 'qmax' must satisfy -128 <= qmin <= qmax <= 127");
      for (int32_t zp : t.zero_point)
        if (zp < -128 || zp > 127) bad(path, where + ": field 'zero_point' is outside int8");
    }
    if (t.dtype == DType::kU8) {  // the uint8 scheme: an activation or a gather table
      if (t.qmin < 0 || t.qmax > 255 || t.qmin > t.qmax)
        bad(path, where + ": fields 'qmin', 'qmax' must satisfy 0 <= qmin <= qmax <= 255 (u8)");
      for (int32_t zp : t.zero_point)
        if (zp < 0 || zp > 255)
          bad(path, where + ": field 'zero_point' is " + std::to_string(zp) +
                        ", outside [0, 255] (a u8 tensor)");
    }
    const bool constant = field<bool>(path, e, "constant", where);
    int bits = 0;  // packed: 2 or 4
    if (e.contains("bits")) {
      if (version < 2) bad(path, where + ": field 'bits' (packed data) needs format version 2");
      bits = field<int>(path, e, "bits", where);
      if (bits != 2 && bits != 4)
        bad(path, where + ": field 'bits' is " + std::to_string(bits) +
                      ", an unknown bit width (packed tensors have 2 or 4)");
      if (!constant || t.dtype != DType::kS8)
        bad(path, where + ": field 'bits' is only for s8 constants (this is " +
                      (constant ? std::string(dtype_name(t.dtype)) + " constant" : "no constant") +
                      ")");
      const int lo = -(1 << (bits - 1)), hi = (1 << (bits - 1)) - 1;
      if (t.qmin < lo || t.qmax > hi)
        bad(path, where + ": fields 'qmin', 'qmax' [" + std::to_string(t.qmin) + ", " +
                      std::to_string(t.qmax) + "] do not fit field 'bits' " + std::to_string(bits) +
                      " ([" + std::to_string(lo) + ", " + std::to_string(hi) + "])");
    }
    if (constant) {
      const Tensor* d = f.find(t.name);
      if (!d) bad(path, where + ": constant data is missing from the file");
      if (bits) {
        const int64_t want = (t.shape.numel() * bits + 7) / 8;
        if (d->dtype() != DType::kU8 || d->rank() != 1 || d->numel() != want)
          bad(path, where + ": packed data is " + dtype_name(d->dtype()) + d->shape().str() +
                        " but field 'bits' " + std::to_string(bits) + " and shape " +
                        t.shape.str() + " need u8[" + std::to_string(want) +
                        "] (ceil(numel * bits / 8) bytes)");
        try {
          t.data = unpack_codes(*d, t.shape, bits);  // once: the kernels read s8
        } catch (const ValueError& err) {
          bad(path, where + ": " + err.what());
        }
      } else {
        if (d->dtype() != t.dtype || d->shape() != t.shape)
          bad(path, where + ": data is " + dtype_name(d->dtype()) + d->shape().str() +
                        " but the graph says " + dtype_name(t.dtype) + t.shape.str());
        t.data = *d;
      }
      if (t.dtype == DType::kS8 || t.dtype == DType::kU8) {
        for (int64_t k = 0; k < t.data.numel(); ++k) {
          const int q = t.dtype == DType::kS8 ? int{t.data.data<int8_t>()[k]}
                                              : int{t.data.data<uint8_t>()[k]};
          if (q < t.qmin || q > t.qmax)
            bad(path, where + ": code " + std::to_string(q) + " at element " + std::to_string(k) +
                          " is outside the tensor's fields 'qmin', 'qmax' [" +
                          std::to_string(t.qmin) + ", " + std::to_string(t.qmax) + "]");
        }
      }
      used.insert(t.name);
    }
    m.tensors.push_back(std::move(t));
  }
  const int n = static_cast<int>(m.tensors.size());
  m.input = field<int>(path, j, "input", "graph");
  m.output = field<int>(path, j, "output", "graph");
  if (m.input < 0 || m.input >= n || m.output < 0 || m.output >= n)
    bad(path, "graph: 'input' or 'output' is not a tensor index");
  // predict feeds f32 [batch, ...] (or an Embedding's s32/s64 ids) and returns f32 [batch, ...]:
  // the input an activation of known dims after the batch.
  {
    const IntegerTensor& in = m.tensors[m.input];
    const IntegerTensor& out = m.tensors[m.output];
    const bool in_dtype_ok =
        in.dtype == DType::kF32 || in.dtype == DType::kS32 || in.dtype == DType::kS64;
    if (!in_dtype_ok || in.data.defined() || in.shape.rank() < 1 || in.shape[0] != kUnknown)
      bad(path, "graph: input tensor '" + in.name +
                    "' must be f32 [?, ...], or s32/s64 ids of an Embedding (an activation, the "
                    "batch dim unknown)");
    for (int d = 1; d < in.shape.rank(); ++d)
      if (in.shape[d] == kUnknown)
        bad(path, "graph: input tensor '" + in.name + "' has an unknown dim after the batch");
    if (out.dtype != DType::kF32 || out.shape.rank() < 1 || out.shape[0] != kUnknown)
      bad(path, "graph: output tensor '" + out.name + "' must be f32 [?, ...]");
  }
  const Json os = j.contains("ops") ? j.at("ops") : Json();
  if (!os.is_array()) bad(path, "graph: field 'ops' must be a list");
  std::vector<bool> written(n, false);
  written[m.input] = true;
  for (int i = 0; i < n; ++i) written[i] = written[i] || m.tensors[i].data.defined();
  const auto& kOps = op_attributes();
  for (size_t i = 0; i < os.size(); ++i) {
    const Json& e = os[i];
    IntegerOp op;
    const std::string where0 = "op " + std::to_string(i);
    op.op = field<std::string>(path, e, "op", where0);
    if (!kOps.count(op.op))
      bad(path, where0 + ": field 'op' names no integer op ('" + op.op + "')");
    op.layer = field<std::string>(path, e, "layer", where0);
    const std::string where = where0 + " (" + op.op + ", " + op.layer + ")";
    op.activation = field<std::string>(path, e, "activation", where);
    op.inputs = field<std::vector<int>>(path, e, "inputs", where);
    op.output = field<int>(path, e, "output", where);
    for (int t : op.inputs) {
      if (t < 0 || t >= n) bad(path, where + ": input " + std::to_string(t) + " is not a tensor");
      if (!written[t])
        bad(path, where + ": reads tensor '" + m.tensors[t].name + "' before any op writes it");
    }
    if (op.output < 0 || op.output >= n || written[op.output])
      bad(path, where + ": field 'output' must be a tensor no earlier op or constant writes");
    written[op.output] = true;
    const Json a = e.contains("attrs") ? e.at("attrs") : Json::object();
    if (!a.is_object()) bad(path, where + ": field 'attrs' must be an object");
    const std::map<std::string, char>& takes = kOps.at(op.op);
    for (const auto& [k, v] : a.items()) {
      const auto kind = takes.find(k);
      if (kind == takes.end())
        bad(path, where + ": attribute '" + k + "' is not one that " + op.op + " takes");
      op.attrs.set(k, attr_from_json(v, "IntegerModel::load: " + path + ": " + where +
                                            ": attribute '" + k + "'"));
      check_attr(path, where, k, kind->second, op.attrs.items().at(k));
    }
    if (op.op == "qlstm" || op.op == "qgru") {
      // x, w_x, w_h, bias(es) [, mask]: the op's shape rule checks them all when the graph is
      // built below; here the biases, so the message names the tensor.
      const size_t nb = op.op == "qlstm" ? 1 : 2;
      for (size_t k = 3; k < 3 + nb && k < op.inputs.size(); ++k) {
        const IntegerTensor& b = m.tensors[op.inputs[k]];
        if (b.dtype != DType::kS32)
          bad(path,
              where + ": bias tensor '" + b.name + "' must be s32 but is " + dtype_name(b.dtype));
      }
    }
    if (const std::string why = detail::scheme_mismatch(m, op); !why.empty())
      bad(path, where + ": " + why);
    check_op_params(path, where, m, op);
    if ((op.op == "qconv2d" || op.op == "qfully_connected") && op.inputs.size() == 3) {
      const IntegerTensor& b = m.tensors[op.inputs[2]];
      if (b.dtype != DType::kS32)
        bad(path,
            where + ": bias tensor '" + b.name + "' must be s32 but is " + dtype_name(b.dtype));
    }
    m.ops.push_back(std::move(op));
  }
  // Integer ids in: only an Embedding's gather (as its ids) or a cast may read them.
  if (m.tensors[m.input].dtype != DType::kF32)
    for (const IntegerOp& op : m.ops)
      for (size_t k = 0; k < op.inputs.size(); ++k)
        if (op.inputs[k] == m.input && !(op.op == "gather" && k == 1) && op.op != "cast")
          bad(path, "graph: input tensor '" + m.tensors[m.input].name + "' is " +
                        dtype_name(m.tensors[m.input].dtype) + " (token ids), but op '" + op.op +
                        "' (" + op.layer + ") reads it; only a gather's ids or a cast may");
  for (const auto& [name, t] : f.tensors)
    if (!used.count(name)) bad(path, "tensor '" + name + "' is in the file but not in the graph");
  // Build the graph now: every op's shape rule and attribute check runs (a multiplier out of
  // range, a shape that does not match), so a bad file fails here, not at the first predict.
  try {
    m.runtime();
  } catch (const Error& e) {
    bad(path, std::string("the graph is inconsistent: ") + e.what());
  }
  return m;
}

// ---- inspect
// -------------------------------------------------------------------------------------

namespace {

// The code range of a tensor's dtype: [0, 255] for u8 (the uint8 scheme), else int8's.
QuantRange code_range(DType d) {
  return d == DType::kU8 ? QuantRange{0, 255} : QuantRange{-128, 127};
}

Json inspect_op(const IntegerModel& m, const IntegerOp& op) {
  Json e;
  e["op"] = op.op;
  e["layer"] = op.layer;
  const Attrs& a = op.attrs;
  // The dtype of the codes each set of parameters describes (u8 in the uint8 scheme): the
  // output's, or the input's for a dequantize.
  const auto dtype_of = [&](int input) {
    const size_t k = static_cast<size_t>(input);
    const int t = input < 0 ? op.output : k < op.inputs.size() ? op.inputs[k] : -1;
    return t < 0 ? std::string("?") : std::string(dtype_name(m.tensors.at(t).dtype));
  };
  const DType out_dtype = m.tensors.at(op.output).dtype;
  const QuantRange out_range = code_range(out_dtype);
  if (op.op != "qconv2d" && op.op != "qfully_connected") {
    // The parameters the other ops read: quantize/dequantize one grid, requantize and a
    // requantizing average pool two; pools and reshapes keep their input's.
    if (a.has("scale"))
      e["grid"] = {{"scale", a.f("scale")},
                   {"zero_point", a.i("zero_point")},
                   {"dtype", dtype_of(op.op == "dequantize" ? 0 : -1)}};
    if (a.has("input_scale"))
      e["input"] = {{"scale", a.f("input_scale")},
                    {"zero_point", a.i("input_zero_point")},
                    {"dtype", dtype_of(0)}};
    int k_in = 0;
    for (const char* k : {"input1", "input2"}) {  // qadd
      if (a.has(std::string(k) + "_scale"))
        e[k] = {{"scale", a.f(std::string(k) + "_scale")},
                {"zero_point", a.i(std::string(k) + "_zero_point")},
                {"dtype", dtype_of(k_in)}};
      ++k_in;
    }
    if (a.has("output_scale"))
      e["output"] = {{"scale", a.f("output_scale")},
                     {"zero_point", a.i("output_zero_point")},
                     {"dtype", dtype_of(-1)}};
    if (a.has("output_scale") && a.has("input_scale")) {
      const double m = a.f("input_scale") / a.f("output_scale");
      const QuantizedMultiplier qm = quantize_multiplier(m);
      e["M"] = m;
      e["M0"] = qm.multiplier;
      e["shift"] = qm.shift;
    }
    if (a.has("act_min")) e["clamp"] = {a.i("act_min"), a.i("act_max", out_range.max)};
    return e;
  }
  const double s_in = a.f("input_scale"), s_out = a.f("output_scale");
  const int64_t zp_in = a.i("input_zero_point"), zp_out = a.i("output_zero_point");
  const std::vector<double>& sw = a.floats("weight_scales");
  const IntegerTensor& bias = m.tensors.at(op.inputs.at(2));
  e["input"] = {{"scale", s_in}, {"zero_point", zp_in}, {"dtype", dtype_of(0)}};
  e["output"] = {{"scale", s_out}, {"zero_point", zp_out}, {"dtype", dtype_of(-1)}};
  e["activation"] = op.activation;
  {
    const IntegerTensor& w = m.tensors.at(op.inputs.at(1));
    const int64_t n = w.shape.numel();
    const int bits = w.bits();
    e["weights"] = {{"name", w.name},
                    {"shape", w.shape.dims()},
                    {"codes", {w.qmin, w.qmax}},
                    {"bits", bits},
                    {"bytes", n},
                    {"packed_bytes", bits < 8 ? packed_size(n, bits) : n}};
  }
  const Rounding r = a.s("rounding", "double") == "single" ? Rounding::kSingle : Rounding::kDouble;
  const FusedActivation act = fused_activation_from_name(a.s("activation", "none"));
  Json ch = Json::array();
  for (size_t c = 0; c < sw.size(); ++c) {
    const ConvOutputStage st =
        make_conv_output_stage({.input_scale = static_cast<float>(s_in),
                                .weight_scale = static_cast<float>(sw[c]),
                                .output_scale = static_cast<float>(s_out),
                                .output_zero_point = static_cast<int32_t>(zp_out),
                                .activation = act,
                                .dtype = out_dtype == DType::kU8 ? DType::kU8 : DType::kS8,
                                .rounding = r});
    const float want_bias_scale = bias_scale(static_cast<float>(s_in), static_cast<float>(sw[c]));
    const double stored_bias_scale = bias.scale.size() > c ? bias.scale[c] : 0.0;
    const double rec = quantized_multiplier_value(st.multiplier);
    const int32_t lo =
        std::max<int32_t>(st.act_min, static_cast<int32_t>(a.i("act_min", out_range.min)));
    const int32_t hi =
        std::min<int32_t>(st.act_max, static_cast<int32_t>(a.i("act_max", out_range.max)));
    ch.push_back({{"channel", c},
                  {"weight_scale", sw[c]},
                  {"bias_scale", stored_bias_scale},
                  {"bias_scale_is_s_in_times_s_w", stored_bias_scale == want_bias_scale},
                  {"M", st.effective_multiplier},
                  {"M0", st.multiplier.multiplier},
                  {"shift", st.multiplier.shift},
                  {"M_reconstructed", rec},
                  {"M_rel_error", std::fabs(rec - st.effective_multiplier) /
                                      std::max(st.effective_multiplier, 1e-300)},
                  {"clamp", {lo, hi}}});
  }
  e["channels"] = ch;
  return e;
}

}  // namespace

std::string IntegerModel::walk_element(const Tensor& x, size_t op_index, int64_t element,
                                       int max_taps) {
  if (op_index >= ops.size())
    LOWBIT_THROW(ValueError, "IntegerModel::walk_element: op ", op_index, " does not exist (",
                 ops.size(), " ops)");
  const IntegerOp& op = ops[op_index];
  if (op.op != "qconv2d" && op.op != "qfully_connected")
    LOWBIT_THROW(ValueError, "IntegerModel::walk_element: op ", op_index, " is ", op.op,
                 "; choose a qconv2d or qfully_connected op (inspect_table lists them)");
  const std::vector<Tensor> codes = run_all(x);
  const Tensor& xin = op.inputs[0] == input ? Tensor() : codes.at(op.inputs[0]);
  const Tensor& yout = codes.at(op.output);
  if (!xin.defined())
    LOWBIT_THROW(ValueError, "IntegerModel::walk_element: op ", op_index, " reads the f32 input");
  const int64_t per_example = yout.numel() / yout.shape()[0];
  if (element < 0 || element >= per_example)
    LOWBIT_THROW(ValueError, "IntegerModel::walk_element: element ", element,
                 " is outside the op's output ", yout.shape().str(), " (", per_example,
                 " elements per example)");
  const Tensor& w = tensors.at(op.inputs[1]).data;
  const Tensor& b = tensors.at(op.inputs[2]).data;
  const Attrs& a = op.attrs;
  const Shape& xs = xin.shape();
  const Shape& ws = w.shape();
  const Shape& ys = yout.shape();
  const int64_t cout = ys[ys.rank() - 1];
  const int64_t c = element % cout;
  const int32_t zp_in = static_cast<int32_t>(a.i("input_zero_point"));
  // The input codes as the model holds them: s8, or u8 in the uint8 scheme (run_all gives them,
  // with the zero points of the attributes, in the tensor's own codes).
  const bool u8_in = xin.dtype() == DType::kU8;
  const auto xp = [&](int64_t k) -> int32_t {
    return u8_in ? int32_t{xin.data<uint8_t>()[k]} : int32_t{xin.data<int8_t>()[k]};
  };
  const int8_t* wp = w.data<int8_t>();
  struct Tap {
    std::string where;
    int32_t x, w;
  };
  std::vector<Tap> taps;
  if (op.op == "qfully_connected") {
    const int64_t depth = ws[0];
    const int64_t row = element / cout;
    for (int64_t k = 0; k < depth; ++k)
      taps.push_back({"k=" + std::to_string(k), xp(row * depth + k), wp[k * cout + c]});
  } else {
    const auto ints = [&](const char* k, int64_t d) {
      std::vector<int64_t> v = a.has(k) ? a.ints(k) : std::vector<int64_t>{d, d};
      if (v.size() == 1) v.push_back(v[0]);
      return v;
    };
    const std::vector<int64_t> st = ints("strides", 1), dl = ints("dilations", 1);
    const int64_t groups = a.i("groups", 1);
    const int64_t cig = ws[2], cog = cout / groups, g = c / cog;
    const int64_t ow = (element / cout) % ys[2], oh = element / (cout * ys[2]);
    int64_t pad_top = 0, pad_left = 0;
    if (a.s("padding", "valid") == "same") {
      pad_top = std::max<int64_t>((ys[1] - 1) * st[0] + (ws[0] - 1) * dl[0] + 1 - xs[1], 0) / 2;
      pad_left = std::max<int64_t>((ys[2] - 1) * st[1] + (ws[1] - 1) * dl[1] + 1 - xs[2], 0) / 2;
    }
    for (int64_t kh = 0; kh < ws[0]; ++kh)
      for (int64_t kw = 0; kw < ws[1]; ++kw) {
        const int64_t ih = oh * st[0] - pad_top + kh * dl[0];
        const int64_t iw = ow * st[1] - pad_left + kw * dl[1];
        if (ih < 0 || iw < 0 || ih >= xs[1] || iw >= xs[2]) continue;  // padding: x = zp_in
        for (int64_t ci = 0; ci < cig; ++ci) {
          const int64_t cin = g * cig + ci;
          char where[192];
          std::snprintf(where, sizeof where, "x[%lld,%lld,%lld] w[%lld,%lld,%lld,%lld]",
                        static_cast<long long>(ih), static_cast<long long>(iw),
                        static_cast<long long>(cin), static_cast<long long>(kh),
                        static_cast<long long>(kw), static_cast<long long>(ci),
                        static_cast<long long>(c));
          taps.push_back({where, xp((ih * xs[2] + iw) * xs[3] + cin),
                          wp[((kh * ws[1] + kw) * ws[2] + ci) * ws[3] + c]});
        }
      }
  }
  const std::vector<double>& sw_all = a.floats("weight_scales");
  const float s_in = static_cast<float>(a.f("input_scale"));
  const float s_w = static_cast<float>(sw_all.size() == 1 ? sw_all[0] : sw_all[c]);
  const float s_out = static_cast<float>(a.f("output_scale"));
  const int32_t zp_out = static_cast<int32_t>(a.i("output_zero_point"));
  const Rounding r = a.s("rounding", "double") == "single" ? Rounding::kSingle : Rounding::kDouble;
  const ConvOutputStage stage =
      make_conv_output_stage({.input_scale = s_in,
                              .weight_scale = s_w,
                              .output_scale = s_out,
                              .output_zero_point = zp_out,
                              .activation = fused_activation_from_name(a.s("activation", "none")),
                              .dtype = yout.dtype() == DType::kU8 ? DType::kU8 : DType::kS8,
                              .rounding = r});
  const QuantRange out_range = code_range(yout.dtype());
  const int32_t lo =
      std::max<int32_t>(stage.act_min, static_cast<int32_t>(a.i("act_min", out_range.min)));
  const int32_t hi =
      std::min<int32_t>(stage.act_max, static_cast<int32_t>(a.i("act_max", out_range.max)));
  std::ostringstream os;
  char line[512];
  os << "op " << op_index << " " << op.op << " (" << op.layer << "), output element " << element
     << " of " << ys.str() << ", channel " << c
     << (u8_in ? "; u8 codes (the uint8 scheme: each the s8 code + 128)" : "") << "\n";
  std::snprintf(line, sizeof line,
                "  input s_in = %.9g, zp_in = %d; weight s_w[%lld] = %.9g, zp 0; output s_out = "
                "%.9g, zp_out = %d\n",
                s_in, zp_in, static_cast<long long>(c), s_w, s_out, zp_out);
  os << line;
  int64_t acc = 0;
  int shown = 0;
  for (const Tap& t : taps) {
    acc += int64_t{t.x - zp_in} * t.w;
    if (shown < max_taps) {
      std::snprintf(line, sizeof line, "  %-40s (%4d - %4d) * %4d = %7d\n", t.where.c_str(), t.x,
                    zp_in, t.w, (t.x - zp_in) * t.w);
      os << line;
      ++shown;
    }
  }
  if (static_cast<int>(taps.size()) > shown)
    os << "  ... " << taps.size() - shown << " more taps (" << taps.size() << " in all)\n";
  const int32_t bias = b.data<int32_t>()[c];
  const int64_t total = acc + bias;
  const float bs = bias_scale(s_in, s_w);
  std::snprintf(line, sizeof line,
                "  accumulator sum (x - zp_in) * w = %lld; + bias %d (int32 at s_in * s_w = "
                "%.9g, i.e. %.9g) = %lld\n",
                static_cast<long long>(acc), bias, bs, bias * static_cast<double>(bs),
                static_cast<long long>(total));
  os << line;
  const int32_t acc32 = static_cast<int32_t>(total);
  const QuantizedMultiplier qm = stage.multiplier;
  std::snprintf(line, sizeof line,
                "  M = s_in * s_w / s_out = %.9g = M0 * 2^(shift - 31) with M0 = %d, shift = %d "
                "(%.9g)\n",
                stage.effective_multiplier, qm.multiplier, qm.shift,
                quantized_multiplier_value(qm));
  os << line;
  const int32_t scaled = multiply_by_quantized_multiplier(acc32, qm, r);
  if (r == Rounding::kDouble) {
    const int left = qm.shift > 0 ? qm.shift : 0, right = qm.shift > 0 ? 0 : -qm.shift;
    const int32_t shifted = static_cast<int32_t>(
        std::clamp<int64_t>(int64_t{acc32} * (int64_t{1} << left), INT32_MIN, INT32_MAX));
    const int32_t high = saturating_rounding_doubling_high_mul(shifted, qm.multiplier);
    std::snprintf(line, sizeof line,
                  "  double rounding: high_mul(%d << %d, M0) = round(%d * M0 / 2^31) = %d; "
                  "rounding_divide_by_pot(%d, %d) = %d   (exact: %.4f)\n",
                  acc32, left, shifted, high, high, right, scaled,
                  static_cast<double>(acc32) * stage.effective_multiplier);
  } else {
    std::snprintf(line, sizeof line,
                  "  single rounding: round(%d * M0 / 2^%d) = %d   (exact: %.4f)\n", acc32,
                  31 - qm.shift, scaled, static_cast<double>(acc32) * stage.effective_multiplier);
  }
  os << line;
  const int32_t with_zp = scaled + zp_out;
  const int32_t code = std::clamp(with_zp, lo, hi);
  std::snprintf(line, sizeof line, "  + zp_out %d = %d; clamp [%d, %d] (%s) = %d\n", zp_out,
                with_zp, lo, hi, op.activation.c_str(), code);
  os << line;
  const int32_t stored = yout.dtype() == DType::kU8 ? int32_t{yout.data<uint8_t>()[element]}
                                                    : int32_t{yout.data<int8_t>()[element]};
  std::snprintf(line, sizeof line,
                "  stored code %d%s; real value s_out * (q - zp_out) = %.6g (float: s_in * s_w "
                "* acc = %.6g)\n",
                stored, stored == code ? " (equal)" : " MISMATCH", s_out * (stored - zp_out),
                static_cast<double>(s_in) * s_w * static_cast<double>(total));
  os << line;
  return os.str();
}

std::string IntegerModel::inspect_json() const {
  Json all = Json::array();
  for (const IntegerOp& op : ops) all.push_back(inspect_op(*this, op));
  return all.dump(2);
}

std::string IntegerModel::inspect_table() const {
  std::ostringstream os;
  char line[512];
  // "zp -21", or "zp 107 (u8)" for the codes of the uint8 scheme.
  const auto zp = [](const Json& g) {
    std::string z = "zp " + std::to_string(g["zero_point"].get<int>());
    if (g.contains("dtype") && g["dtype"].get<std::string>() == "u8") z += " (u8)";
    return z;
  };
  for (size_t i = 0; i < ops.size(); ++i) {
    const IntegerOp& op = ops[i];
    const Json e = inspect_op(*this, op);
    os << "op " << i << ": " << op.op << "  " << op.layer << "\n";
    if (!e.contains("channels")) {
      if (e.contains("grid")) {
        std::snprintf(line, sizeof line, "  scale %.9g %s\n", e["grid"]["scale"].get<double>(),
                      zp(e["grid"]).c_str());
        os << line;
      }
      if (e.contains("input1")) {  // qadd
        std::snprintf(line, sizeof line,
                      "  input1 scale %.9g %s | input2 scale %.9g %s | output scale %.9g "
                      "%s | activation %s\n",
                      e["input1"]["scale"].get<double>(), zp(e["input1"]).c_str(),
                      e["input2"]["scale"].get<double>(), zp(e["input2"]).c_str(),
                      e["output"]["scale"].get<double>(), zp(e["output"]).c_str(),
                      op.activation.c_str());
        os << line;
      }
      if (e.contains("M")) {
        std::snprintf(line, sizeof line,
                      "  input  scale %.9g %s | output scale %.9g %s | M %.9g = M0 %d, "
                      "shift %d\n",
                      e["input"]["scale"].get<double>(), zp(e["input"]).c_str(),
                      e["output"]["scale"].get<double>(), zp(e["output"]).c_str(),
                      e["M"].get<double>(), e["M0"].get<int>(), e["shift"].get<int>());
        os << line;
      }
      if (e.contains("clamp")) {
        std::snprintf(line, sizeof line, "  clamp [%d, %d]\n", e["clamp"][0].get<int>(),
                      e["clamp"][1].get<int>());
        os << line;
      }
      continue;
    }
    std::snprintf(
        line, sizeof line, "  input  scale %.9g %s | output scale %.9g %s | activation %s\n",
        e["input"]["scale"].get<double>(), zp(e["input"]).c_str(),
        e["output"]["scale"].get<double>(), zp(e["output"]).c_str(), op.activation.c_str());
    os << line;
    const Json& w = e["weights"];
    const int wbits = w["bits"].get<int>();
    std::snprintf(line, sizeof line, "  weights %s %s: codes [%d, %d], %d-bit",
                  w["name"].get<std::string>().c_str(),
                  Shape(w["shape"].get<std::vector<int64_t>>()).str().c_str(),
                  w["codes"][0].get<int>(), w["codes"][1].get<int>(), wbits);
    os << line;
    if (wbits < 8)
      os << ", packed " << w["packed_bytes"].get<int64_t>() << " bytes (" << 8 / wbits
         << " codes a byte; " << w["bytes"].get<int64_t>() << " as int8)\n";
    else
      os << ", " << w["bytes"].get<int64_t>() << " bytes (one code a byte)\n";
    std::snprintf(line, sizeof line, "  %4s %13s %13s %5s %13s %11s %6s %13s %9s %11s\n", "ch",
                  "s_w", "bias scale", "=s*s", "M", "M0", "shift", "M0*2^(s-31)", "rel err",
                  "clamp");
    os << line;
    for (const Json& c : e["channels"]) {
      std::snprintf(
          line, sizeof line, "  %4d %13.6e %13.6e %5s %13.6e %11d %6d %13.6e %9.2e [%d, %d]\n",
          c["channel"].get<int>(), c["weight_scale"].get<double>(), c["bias_scale"].get<double>(),
          c["bias_scale_is_s_in_times_s_w"].get<bool>() ? "yes" : "NO", c["M"].get<double>(),
          c["M0"].get<int>(), c["shift"].get<int>(), c["M_reconstructed"].get<double>(),
          c["M_rel_error"].get<double>(), c["clamp"][0].get<int>(), c["clamp"][1].get<int>());
      os << line;
    }
  }
  return os.str();
}

}  // namespace lowbit::quant
