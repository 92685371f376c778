// Model files: one safetensors file per model (docs/layers.md, "Saving").
//   tensors   "weights/<layer>/<weight>", "state/rng_step", "optimizer/<slot>"
//   metadata  "format" = "lowbit-model/1", "class_name", "model_config" (JSON),
//             "compile" (JSON: loss, optimizer with iterations, metrics) when compiled,
//             "weight_order" (JSON list: the model's weight names in layer order),
//             "checksums" (JSON object: tensor name -> CRC-32 of its bytes, 8 hex digits)
#include <zlib.h>

#include <cmath>
#include <cstdio>
#include <set>

#include "lowbit/io/safetensors.h"
#include "lowbit/nn/model.h"

namespace lowbit::nn {

namespace {
constexpr const char* kFormat = "lowbit-model/1";

std::string crc32_hex(const Tensor& t) {
  uLong c = crc32(0L, Z_NULL, 0);
  const auto* p = static_cast<const Bytef*>(t.raw());
  size_t left = t.nbytes();
  while (left > 0) {  // crc32 takes a uInt length
    const uInt n = static_cast<uInt>(std::min<size_t>(left, 1u << 30));
    c = crc32(c, p, n);
    p += n;
    left -= n;
  }
  char buf[9];
  std::snprintf(buf, sizeof buf, "%08lx", static_cast<unsigned long>(c & 0xffffffffUL));
  return buf;
}

// Refuses a model file whose tensors do not match their stored checksums (bytes changed after
// saving) or whose f32 weights and optimizer slots are not finite; names the tensor. Files
// saved before checksums existed (no "checksums" metadata) get the finiteness check only.
void verify_tensors(const io::SafetensorsFile& f, const std::string& path) {
  Json sums;
  if (auto it = f.metadata.find("checksums"); it != f.metadata.end()) {
    try {
      sums = Json::parse(it->second);
    } catch (const std::exception& e) {
      LOWBIT_THROW(IoError, "load: '", path, "': metadata 'checksums' is corrupted: ", e.what());
    }
    if (!sums.is_object())
      LOWBIT_THROW(IoError, "load: '", path, "': metadata 'checksums' is not a JSON object");
  }
  for (const auto& [name, t] : f.tensors) {
    if (sums.is_object()) {
      if (!sums.contains(name) || !sums.at(name).is_string())
        LOWBIT_THROW(IoError, "load: '", path, "': tensor '", name,
                     "' has no checksum (the file is corrupted or was edited)");
      const std::string want = sums.at(name).get<std::string>(), got = crc32_hex(t);
      if (want != got)
        LOWBIT_THROW(IoError, "load: '", path, "': tensor '", name, "' is corrupted: CRC-32 ", got,
                     " but the file records ", want,
                     " (the bytes changed after saving; restore the file from a good copy)");
    }
    if (t.dtype() == DType::kF32 && name.rfind("state/", 0) != 0) {
      const float* v = t.data<float>();
      for (int64_t i = 0; i < t.numel(); ++i)
        if (!std::isfinite(v[i]))
          LOWBIT_THROW(IoError, "load: '", path, "': tensor '", name, "' holds ", v[i],
                       " at flat index ", i, " of ", t.shape().str(),
                       "; a model's weights must be finite (the file is corrupted, or was saved "
                       "from a diverged model)");
    }
  }
}

std::string layer_of(const std::string& weight) {
  const size_t slash = weight.rfind('/');
  return slash == std::string::npos ? weight : weight.substr(0, slash);
}
std::string leaf_of(const std::string& weight) {
  const size_t slash = weight.rfind('/');
  return slash == std::string::npos ? weight : weight.substr(slash + 1);
}

void check_same_type(const std::string& path, const std::string& model_name,
                     const std::string& file_name, size_t index, const Tensor& t, const Tensor& w) {
  if (t.shape() != w.shape() || t.dtype() != w.dtype())
    LOWBIT_THROW(IoError, "load: '", path, "': weight ", index, " of the model, '", model_name,
                 "' (layer '", layer_of(model_name), "'), is ", dtype_name(w.dtype()),
                 w.shape().str(), " but the file's weight ", index, " ('", file_name, "') is ",
                 dtype_name(t.dtype()), t.shape().str(),
                 " (was the file saved from another architecture?)");
}

// Weights are matched by name when every name of the model is in the file (a model loaded from
// its own file, or built with the same names); otherwise by structure, as Keras 3: the i-th
// weight of the model (layer order, then each layer's weight order) takes the file's i-th
// weight, which must have the same shape and dtype and the same weight name within its layer
// (kernel, bias, ...), while layer names may differ (the same architecture built twice in one
// process numbers its layers on: dense_3 instead of dense). Files without the saved order
// (metadata "weight_order", written since issue 14) can only match by name.
void apply_weights(Model& m, const io::SafetensorsFile& f, const std::string& path) {
  verify_tensors(f, path);
  auto mw = m.named_weights();
  size_t in_file = 0;
  for (const auto& [key, t] : f.tensors) in_file += key.rfind("weights/", 0) == 0;
  bool by_name = in_file == mw.size();
  for (size_t i = 0; by_name && i < mw.size(); ++i) by_name = f.find("weights/" + mw[i].first);
  if (by_name) {
    for (size_t i = 0; i < mw.size(); ++i) {
      const auto& [name, w] = mw[i];
      const Tensor* t = f.find("weights/" + name);
      check_same_type(path, name, name, i, *t, w->value);
      w->value.copy_from(*t);
    }
  } else {
    auto it = f.metadata.find("weight_order");
    if (it == f.metadata.end()) {
      for (const auto& [name, w] : mw)
        if (!f.find("weights/" + name))
          LOWBIT_THROW(IoError, "load: '", path, "' has no tensor for weight '", name,
                       "' of the model (was it saved from another model? The file has no "
                       "'weight_order' metadata, so weights can only be matched by name)");
      LOWBIT_THROW(IoError, "load: '", path, "' holds ", in_file, " weights but the model has ",
                   mw.size(), " (was it saved from another model?)");
    }
    std::vector<std::string> order;
    try {
      order = Json::parse(it->second).get<std::vector<std::string>>();
    } catch (const std::exception& e) {
      LOWBIT_THROW(IoError, "load: '", path,
                   "': metadata 'weight_order' is not a JSON list of names: ", e.what());
    }
    if (order.size() != mw.size() || order.size() != in_file)
      LOWBIT_THROW(IoError, "load: '", path, "' holds ", order.size(), " weights (", in_file,
                   " tensors) but the model has ", mw.size(),
                   " (was it saved from another architecture?)");
    for (size_t i = 0; i < mw.size(); ++i) {
      const auto& [name, w] = mw[i];
      const Tensor* t = f.find("weights/" + order[i]);
      if (!t)
        LOWBIT_THROW(IoError, "load: '", path, "': 'weight_order' names '", order[i],
                     "' but the file has no such tensor (the file is corrupted)");
      if (leaf_of(order[i]) != leaf_of(name))
        LOWBIT_THROW(IoError, "load: '", path, "': weight ", i, " of the model is '", name,
                     "' (layer '", layer_of(name), "') but the file's weight ", i, " is '",
                     order[i],
                     "': the structures differ (was the file saved from another "
                     "architecture?)");
      check_same_type(path, name, order[i], i, *t, w->value);
      w->value.copy_from(*t);
    }
  }
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
  {
    Json order = Json::array();
    for (auto& [name, w] : named_weights()) order.push_back(name);
    f.metadata["weight_order"] = order.dump();  // load_weights matches by structure with it
  }
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
  Json sums = Json::object();
  for (const auto& [name, t] : f.tensors) sums[name] = crc32_hex(t);
  f.metadata["checksums"] = sums.dump();
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
  verify_tensors(f, path);
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
