#include "lowbit/nn/train_config.h"

#include <fstream>
#include <set>
#include <sstream>

#include "lowbit/error.h"

namespace lowbit::nn {
namespace {

void check_keys(const Json& j, const std::string& where, const std::set<std::string>& known) {
  if (!j.is_object())
    LOWBIT_THROW(ValueError, "train config: '", where, "' must be an object but is ", j.dump());
  for (const auto& [key, value] : j.items()) {
    if (known.count(key)) continue;
    std::string list;
    for (const std::string& k : known) list += (list.empty() ? "" : ", ") + k;
    LOWBIT_THROW(ValueError, "train config: unknown key '", where.empty() ? "" : where + ".", key,
                 "'; known keys: ", list);
  }
}

ModelPtr model_from_any_config(const Json& m) {
  if (!m.is_object())
    LOWBIT_THROW(ValueError, "train config: 'model' must be an object but is ", m.dump());
  if (m.contains("class_name") && m.contains("config"))
    return model_from_config(m.at("config"), m.at("class_name").get<std::string>());
  return model_from_config(m, m.contains("input_layers") ? "Functional" : "Sequential");
}

}  // namespace

TrainConfig train_config_from_json(const Json& j) {
  TrainConfig t;
  if (!j.is_object() || !j.contains("model")) {
    t.model = model_from_any_config(j);
    return t;
  }
  check_keys(j, "", {"model", "compile", "fit"});
  t.model = model_from_any_config(j.at("model"));
  try {
    if (j.contains("compile")) {
      const Json& c = j.at("compile");
      check_keys(c, "compile", {"optimizer", "loss", "metrics"});
      if (c.contains("optimizer"))
        t.compile.optimizer = c.at("optimizer").is_string()
                                  ? optimizer_by_name(c.at("optimizer").get<std::string>())
                                  : optimizer_from_config(c.at("optimizer"));
      if (c.contains("loss"))
        t.compile.loss = c.at("loss").is_string() ? loss_by_name(c.at("loss").get<std::string>())
                                                  : loss_from_config(c.at("loss"));
      if (c.contains("metrics"))
        t.compile.metrics = c.at("metrics").get<std::vector<std::string>>();
    }
    if (j.contains("fit")) {
      const Json& f = j.at("fit");
      check_keys(f, "fit", {"epochs", "batch_size", "validation_split"});
      if (f.contains("epochs")) t.fit.epochs = f.at("epochs").get<int>();
      if (f.contains("batch_size")) t.fit.batch_size = f.at("batch_size").get<int64_t>();
      if (f.contains("validation_split"))
        t.fit.validation_split = f.at("validation_split").get<double>();
    }
  } catch (const Json::exception& e) {
    LOWBIT_THROW(ValueError, "train config: a value of the wrong type: ", e.what());
  }
  return t;
}

TrainConfig read_train_config(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) LOWBIT_THROW(IoError, "read_train_config: cannot open '", path, "'");
  std::stringstream ss;
  ss << f.rdbuf();
  Json j;
  try {
    j = Json::parse(ss.str());
  } catch (const Json::exception& e) {
    LOWBIT_THROW(IoError, "read_train_config: '", path, "' is not valid JSON: ", e.what());
  }
  try {
    return train_config_from_json(j);
  } catch (const ValueError& e) {
    LOWBIT_THROW(ValueError, "read_train_config: '", path, "': ", e.what());
  }
}

}  // namespace lowbit::nn
