#include "nn/layers_common.h"

#include <algorithm>
#include <cctype>

#include "lowbit/error.h"
#include "lowbit/ops.h"

namespace lowbit::nn::detail {

namespace {
std::string list_str(const std::vector<int64_t>& v) {
  std::string s = "(";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + ")";
}
}  // namespace

std::vector<int64_t> expand_ints(const Ints& v, int n, const std::string& who, const char* arg,
                                 int64_t min) {
  const auto& in = v.values();
  if (in.size() != 1 && in.size() != static_cast<size_t>(n))
    LOWBIT_THROW(ValueError, who, ": argument '", arg, "': expected an int or ", n,
                 " ints but found ", list_str(in));
  std::vector<int64_t> out = in.size() == 1 ? std::vector<int64_t>(n, in[0]) : in;
  for (int64_t x : out)
    if (x < min)
      LOWBIT_THROW(ValueError, who, ": argument '", arg, "': expected values >= ", min,
                   " but found ", list_str(in));
  return out;
}

std::string check_padding(const std::string& padding, const std::string& who, bool allow_causal) {
  std::string p = padding;
  std::transform(p.begin(), p.end(), p.begin(), [](unsigned char ch) { return std::tolower(ch); });
  if (p == "valid" || p == "same" || (allow_causal && p == "causal")) return p;
  LOWBIT_THROW(ValueError, who, ": argument 'padding': expected ",
               allow_causal ? "'valid', 'same' or 'causal'" : "'valid' or 'same'", " but found '",
               padding, "'");
}

int64_t window_out_dim(int64_t in, int64_t k, int64_t stride, int64_t dilation,
                       const std::string& padding) {
  if (in == kUnknown) return kUnknown;
  const int64_t k_eff = (k - 1) * dilation + 1;
  if (padding == "valid") return in >= k_eff ? (in - k_eff) / stride + 1 : 0;
  // same and causal: ceil(in / s)
  return (in + stride - 1) / stride;
}

Ints json_ints(const Json& c, const char* key, const Ints& dflt) {
  if (!c.contains(key) || c.at(key).is_null()) return dflt;
  const Json& j = c.at(key);
  if (j.is_number_integer()) return Ints(j.get<int64_t>());
  if (j.is_array()) {
    std::vector<int64_t> v;
    for (const Json& e : j) {
      if (!e.is_number_integer())
        LOWBIT_THROW(ValueError, "config field '", key,
                     "': expected an int or a list of ints but found ", j.dump());
      v.push_back(e.get<int64_t>());
    }
    return Ints(std::move(v));
  }
  LOWBIT_THROW(ValueError, "config field '", key, "': expected an int or a list of ints but found ",
               j.dump());
}

std::string json_activation(const Json& c) {
  if (!c.contains("activation") || c.at("activation").is_null()) return "linear";
  return c.at("activation").get<std::string>();
}

std::string json_initializer(const Json& c, const char* key, const std::string& dflt) {
  if (!c.contains(key) || c.at(key).is_null()) return dflt;
  const Json& j = c.at(key);
  if (j.is_string()) return j.get<std::string>();
  if (j.is_object() && j.contains("class_name")) {
    // Keras serialises initializers as {"class_name": "GlorotUniform", "config": {...}}:
    // CamelCase to snake_case; RandomUniform/RandomNormal map to our fixed-range names.
    const std::string cls = j.at("class_name").get<std::string>();
    if (cls == "RandomUniform") return "uniform";
    if (cls == "RandomNormal") return "random_normal";
    std::string out;
    for (char ch : cls) {
      if (std::isupper(static_cast<unsigned char>(ch))) {
        if (!out.empty()) out += '_';
        out += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      } else {
        out += ch;
      }
    }
    return out;
  }
  LOWBIT_THROW(ValueError, "config field '", key,
               "': expected an initializer name or {\"class_name\": ...} but found ", j.dump());
}

void check_data_format(const Json& c, const std::string& who) {
  if (!c.contains("data_format") || c.at("data_format").is_null()) return;
  const std::string f = c.at("data_format").get<std::string>();
  if (f != "channels_last")
    LOWBIT_THROW(ValueError, who,
                 ": config field 'data_format': expected 'channels_last' but found '", f,
                 "' (only channels-last layouts are supported)");
}

std::string json_name(const Json& c) {
  if (!c.contains("name") || c.at("name").is_null()) return "";
  return c.at("name").get<std::string>();
}

Json ints_json(const std::vector<int64_t>& v) {
  Json j = Json::array();
  for (int64_t x : v) j.push_back(x);
  return j;
}

std::vector<Value> pass_mask(const std::vector<Value>& outputs, const CallContext& ctx) {
  return std::vector<Value>(outputs.size(), ctx.input_mask(0));
}

std::vector<Value> refuse_mask(const Layer& l, const std::vector<Value>& outputs,
                               const CallContext& ctx, const std::string& why) {
  for (const Value& m : ctx.input_masks)
    if (m.defined())
      LOWBIT_THROW(UnsupportedError, l.name(), " (", l.class_name(),
                   "): does not support timestep masks: ", why,
                   ". Apply the mask before this layer and do not pass it on (docs/masking.md)");
  return std::vector<Value>(outputs.size());
}

std::vector<Value> no_mask(const std::vector<Value>& outputs) {
  return std::vector<Value>(outputs.size());
}

Value mask_expanded(const Value& mask, int rank) {
  Value m = mask;
  while (m.rank() < rank) m = ops::expand_dims(m, -1);
  return m;
}

Value mask_to_f32(const Value& mask, int rank) {
  return ops::cast(mask_expanded(mask, rank), DType::kF32);
}

Value zero_masked(const Value& x, const Value& mask) {
  return ops::where(mask_expanded(mask, x.rank()), x, ops::scalar_like(x, 0.0));
}

}  // namespace lowbit::nn::detail
