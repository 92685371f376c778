// Model files: one safetensors file per model (docs/layers.md, "Saving").
//   tensors   "weights/<layer>/<weight>", "state/rng_step", "optimizer/<slot>"
//   metadata  "format" = "lowbit-model/1", "class_name", "model_config" (JSON),
//             "compile" (JSON: loss, optimizer with iterations, metrics) when compiled
#include <set>

#include "lowbit/io/safetensors.h"
#include "lowbit/nn/model.h"

namespace lowbit::nn {

namespace {
constexpr const char* kFormat = "lowbit-model/1";

void apply_weights(Model& m, const io::SafetensorsFile& f, const std::string& path) {
  std::set<std::string> used;
  for (auto& [name, w] : m.named_weights()) {
    const std::string key = "weights/" + name;
    const Tensor* t = f.find(key);
    if (!t)
      LOWBIT_THROW(IoError, "load: '", path, "' has no tensor for weight '", name,
                   "' of the model (was it saved from another model?)");
    if (t->shape() != w->value.shape() || t->dtype() != w->value.dtype())
      LOWBIT_THROW(IoError, "load: '", path, "': weight '", name, "' is ", dtype_name(t->dtype()),
                   t->shape().str(), " in the file but ", dtype_name(w->value.dtype()),
                   w->value.shape().str(), " in the model");
    w->value.copy_from(*t);
    used.insert(key);
  }
  for (const auto& [key, t] : f.tensors)
    if (key.rfind("weights/", 0) == 0 && !used.count(key))
      LOWBIT_THROW(IoError, "load: '", path, "' holds weight '", key.substr(8),
                   "' that the model does not have (was it saved from another model?)");
  if (const Tensor* r = f.find("state/rng_step")) {
    if (r->dtype() != DType::kS64 || r->numel() != 1)
      LOWBIT_THROW(IoError, "load: '", path, "': state/rng_step must be one s64");
    m.rng_state().copy_from(r->reshape({}));
  }
}
}  // namespace

void Model::save(const std::string& path) {
  io::SafetensorsFile f;
  for (auto& [name, w] : named_weights()) f.tensors.emplace_back("weights/" + name, w->value);
  f.tensors.emplace_back("state/rng_step", rng_state_);
  f.metadata["format"] = kFormat;
  f.metadata["class_name"] = class_name();
  f.metadata["model_config"] = get_config().dump();
  if (loss_) {
    Json c;
    c["loss"] = {{"class_name", loss_->class_name()}, {"config", loss_->get_config()}};
    c["optimizer"] = {{"class_name", optimizer_->class_name()},
                      {"config", optimizer_->get_config()}};
    c["iterations"] = optimizer_->iterations();
    c["metrics"] = compile_options_.metrics;
    f.metadata["compile"] = c.dump();
    for (auto& [slot, t] : optimizer_->slots()) f.tensors.emplace_back("optimizer/" + slot, t);
  }
  io::write_safetensors(path, f);
}

void Model::load_weights(const std::string& path) {
  apply_weights(*this, io::read_safetensors(path), path);
}

namespace {
ModelPtr functional_from_config(const Json& c) {
  std::map<std::string, LayerPtr> layers;
  std::map<std::string, std::vector<std::vector<KTensor>>> outputs;  // layer -> per call -> outputs
  auto lookup = [&](const Json& ref) -> KTensor {
    const std::string name = ref.at(0).get<std::string>();
    const size_t node = ref.at(1).get<size_t>(), idx = ref.at(2).get<size_t>();
    auto it = outputs.find(name);
    if (it == outputs.end() || node >= it->second.size() || idx >= it->second[node].size())
      LOWBIT_THROW(ValueError, "model_from_config: reference to ", ref.dump(),
                   " before it is defined");
    return it->second[node][idx];
  };
  for (const Json& lj : c.at("layers")) {
    const std::string name = lj.at("config").at("name").get<std::string>();
    const std::string cls = lj.at("class_name").get<std::string>();
    if (cls == "InputLayer") {
      auto shape = lj.at("config").at("shape").get<std::vector<int64_t>>();
      KTensor k = Input(Shape(shape), dtype_from_name(lj.at("config").value("dtype", "f32")), name);
      outputs[name].push_back({k});
      layers[name] = k.node->layer;
      continue;
    }
    LayerPtr layer;
    if (auto it = layers.find(name); it != layers.end()) {
      layer = it->second;  // a shared layer, called again
    } else {
      layer = cls == "Functional" || cls == "Sequential" ? model_from_config(lj.at("config"), cls)
                                                         : layer_from_config(lj);
      layers[name] = layer;
    }
    std::vector<KTensor> in;
    for (const Json& ref : lj.at("inbound")) in.push_back(lookup(ref));
    CallOptions opt;
    if (lj.contains("training")) opt.training = lj.at("training").get<bool>();
    if (lj.contains("masks"))
      for (const Json& ref : lj.at("masks"))
        opt.masks.push_back(ref.is_null() ? KTensor{} : lookup(ref));
    outputs[name].push_back((*layer)(in, opt));
  }
  std::vector<KTensor> ins, outs;
  for (const Json& r : c.at("input_layers")) ins.push_back(lookup(r));
  for (const Json& r : c.at("output_layers")) outs.push_back(lookup(r));
  auto m = Model::create(ins, outs, c.value("name", ""));
  if (!c.value("trainable", true)) m->set_trainable(false);
  return m;
}
}  // namespace

ModelPtr model_from_config(const Json& c, const std::string& class_name) {
  try {
    if (class_name == "Sequential") {
      auto s = Sequential::create({}, c.value("name", ""));
      for (const Json& lj : c.at("layers")) {
        const std::string cls = lj.at("class_name").get<std::string>();
        s->add(cls == "Functional" || cls == "Sequential" ? model_from_config(lj.at("config"), cls)
                                                          : layer_from_config(lj));
      }
      if (!c.value("trainable", true)) s->set_trainable(false);
      return s;
    }
    if (class_name != "Functional")
      LOWBIT_THROW(ValueError, "model_from_config: unknown model class '", class_name, "'");
    return functional_from_config(c);
  } catch (const nlohmann::json::exception& e) {
    LOWBIT_THROW(ValueError, "model_from_config: malformed config: ", e.what());
  }
}

ModelPtr load_model(const std::string& path) {
  io::SafetensorsFile f = io::read_safetensors(path);
  auto fmt = f.metadata.find("format");
  if (fmt == f.metadata.end() || fmt->second != kFormat)
    LOWBIT_THROW(IoError, "load_model: '", path,
                 "' is not a lowbit model file (metadata format is '",
                 fmt == f.metadata.end() ? std::string("missing") : fmt->second, "', expected '",
                 kFormat, "')");
  ModelPtr m;
  try {
    m = model_from_config(
        Json::parse(f.metadata.at("model_config")),
        f.metadata.count("class_name") ? f.metadata.at("class_name") : "Functional");
  } catch (const Error& e) {
    LOWBIT_THROW(IoError, "load_model: '", path, "': cannot rebuild the model: ", e.what());
  } catch (const std::exception& e) {
    LOWBIT_THROW(IoError, "load_model: '", path, "': corrupted model config: ", e.what());
  }
  apply_weights(*m, f, path);
  if (auto it = f.metadata.find("compile"); it != f.metadata.end()) {
    try {
      Json c = Json::parse(it->second);
      CompileOptions o;
      o.loss = loss_from_config(c.at("loss"));
      o.optimizer = optimizer_from_config(c.at("optimizer"));
      o.metrics = c.value("metrics", std::vector<std::string>{});
      m->compile(o);
      m->optimizer()->set_iterations(c.value("iterations", int64_t{0}));
      for (const auto& [key, t] : f.tensors)
        if (key.rfind("optimizer/", 0) == 0) m->optimizer()->load_slot(key.substr(10), t);
    } catch (const Error& e) {
      LOWBIT_THROW(IoError, "load_model: '", path,
                   "': cannot restore the compile state: ", e.what());
    } catch (const std::exception& e) {
      LOWBIT_THROW(IoError, "load_model: '", path, "': corrupted compile metadata: ", e.what());
    }
  }
  return m;
}

}  // namespace lowbit::nn
