#include <set>

#include "lowbit/error.h"
#include "lowbit/quant/quantize_model.h"

namespace lowbit::quant {
namespace {

using nn::Json;

void check_keys(const Json& j, const std::string& where, const std::set<std::string>& known) {
  if (!j.is_object())
    LOWBIT_THROW(ValueError, "quantize config: ", where.empty() ? "the file" : where,
                 " must be a JSON object but is ", j.dump());
  for (const auto& [key, value] : j.items()) {
    if (known.count(key)) continue;
    std::string list;
    for (const std::string& k : known) list += (list.empty() ? "" : ", ") + k;
    LOWBIT_THROW(ValueError, "quantize config: unknown key '", where.empty() ? "" : where + ".",
                 key, "'; known keys: ", list);
  }
}

int get_int(const Json& v, const std::string& where) {
  if (!v.is_number_integer())
    LOWBIT_THROW(ValueError, "quantize config: ", where, ": expected an integer but found ",
                 v.dump());
  return v.get<int>();
}
bool get_bool(const Json& v, const std::string& where) {
  if (!v.is_boolean())
    LOWBIT_THROW(ValueError, "quantize config: ", where, ": expected true or false but found ",
                 v.dump());
  return v.get<bool>();
}
std::string get_string(const Json& v, const std::string& where) {
  if (!v.is_string())
    LOWBIT_THROW(ValueError, "quantize config: ", where, ": expected a string but found ",
                 v.dump());
  return v.get<std::string>();
}

}  // namespace

QuantizeConfig quantize_config_from_json(const Json& j, QuantizeConfig cfg) {
  check_keys(j, "", {"overrides", "quant_delay", "fold_batch_norm", "first_last_weight_bits"});
  if (j.contains("quant_delay")) cfg.quant_delay = get_int(j.at("quant_delay"), "quant_delay");
  if (j.contains("fold_batch_norm"))
    cfg.fold_batch_norm = get_bool(j.at("fold_batch_norm"), "fold_batch_norm");
  if (j.contains("first_last_weight_bits"))
    cfg.first_last_weight_bits = get_int(j.at("first_last_weight_bits"), "first_last_weight_bits");
  if (j.contains("overrides")) {
    const Json& all = j.at("overrides");
    if (!all.is_object())
      LOWBIT_THROW(ValueError,
                   "quantize config: overrides: expected an object keyed by layer name ",
                   "but found ", all.dump());
    for (const auto& [layer, o] : all.items()) {
      const std::string where = "overrides." + layer;
      check_keys(o, where, {"weight_bits", "activation_bits", "scheme", "per_channel", "skip"});
      LayerOverride lo;
      if (o.contains("weight_bits"))
        lo.weight_bits = get_int(o.at("weight_bits"), where + ".weight_bits");
      if (o.contains("activation_bits"))
        lo.activation_bits = get_int(o.at("activation_bits"), where + ".activation_bits");
      if (o.contains("scheme")) lo.scheme = get_string(o.at("scheme"), where + ".scheme");
      if (o.contains("per_channel"))
        lo.per_channel = get_bool(o.at("per_channel"), where + ".per_channel");
      if (o.contains("skip")) lo.skip = get_bool(o.at("skip"), where + ".skip");
      cfg.overrides[layer] = lo;
    }
  }
  return cfg;
}

}  // namespace lowbit::quant
