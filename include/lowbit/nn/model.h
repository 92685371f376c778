// Models: a DAG of layer applications (functional API) or a stack (Sequential).
//
//   nn::KTensor in = nn::Input({28, 28, 1});
//   nn::KTensor h = (*nn::Conv2D(32, 3, {.padding = "same", .activation = "relu"}))(in);
//   nn::KTensor out = (*nn::Dense(10))((*nn::Flatten())(h));
//   auto model = nn::Model::create({in}, {out});
//   std::cout << model->summary();
//   Tensor logits = (*model)(images);                       // inference mode
//   Tensor train_mode = (*model)(images, {.training = true}); // batch statistics, dropout
//
// A model is itself a layer, so it can be called inside another model.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "lowbit/nn/layer.h"

namespace lowbit::nn {

// A symbolic model input; `shape` excludes the batch dim.
KTensor Input(const Shape& shape, DType dtype = DType::kF32, const std::string& name = "");

class InputLayer : public Layer {
 public:
  InputLayer(Shape shape, DType dtype, std::string name);
  std::string class_name() const override { return "InputLayer"; }
  int num_inputs() const override { return 1; }
  std::vector<Value> call(const std::vector<Value>& inputs, CallContext&) override { return inputs; }
  Json get_config() const override;
  const Shape& batch_shape() const { return shape_; }  // [?, ...]
  DType dtype() const { return dtype_; }

 private:
  Shape shape_;
  DType dtype_;
};
// An InputLayer as a layer (for Sequential): shape excludes the batch dim.
LayerPtr InputSpec(const Shape& shape, DType dtype = DType::kF32, const std::string& name = "");

struct CompiledCall;

class Model : public Layer {
 public:
  static std::shared_ptr<Model> create(std::vector<KTensor> inputs, std::vector<KTensor> outputs,
                                       const std::string& name = "");
  Model(std::vector<KTensor> inputs, std::vector<KTensor> outputs, const std::string& name);
  ~Model() override;

  std::string class_name() const override { return "Functional"; }
  int num_inputs() const override { return static_cast<int>(inputs_.size()); }
  std::vector<Value> call(const std::vector<Value>& inputs, CallContext& ctx) override;
  Json get_config() const override;
  void set_trainable(bool t) override;
  std::vector<LayerPtr> sublayers() const override { return layers(); }

  // Layers in topological order, each once (shared layers appear once).
  std::vector<LayerPtr> layers() const;
  LayerPtr get_layer(const std::string& name) const;
  const std::vector<KTensor>& inputs() const { return inputs_; }
  const std::vector<KTensor>& outputs() const { return outputs_; }

  // Every weight of every layer (recursively), with its full name "layer/weight".
  std::vector<std::pair<std::string, Weight*>> named_weights();
  int64_t count_params_total(bool trainable) const;

  // Keras-style table: layer (type), output shape, params, connected to; then totals.
  std::string summary(int width = 90) const;

  // Host-side checks of input data (Layer::validate_input of every layer a model input feeds
  // directly, nested models included); predict_on_batch runs it, training loops should too.
  void validate_inputs(const std::vector<Tensor>& xs) const;
  void validate_input(int index, const Tensor& value) const override;

  // Runs the model now. training unset = inference.
  std::vector<Tensor> predict_on_batch(const std::vector<Tensor>& xs, CallOptions opt = {});
  Tensor operator()(const Tensor& x, CallOptions opt = {});

  // Traces the model into `g` on fresh placeholders (batch unknown); returns placeholders and
  // outputs; the context collects state updates.
  struct Trace {
    std::vector<Value> inputs, outputs;
  };
  Trace trace(Graph& g, CallContext& ctx);
  // The op graph of one mode as Graphviz DOT.
  std::string to_dot(bool training);

  // State that travels with the model: the random-stream step of Dropout & co.
  Tensor& rng_state() { return rng_state_; }

 protected:
  Model(const std::string& default_name, const std::string& name);
  void set_graph(std::vector<KTensor> inputs, std::vector<KTensor> outputs);
  std::string mode_signature(bool training) const;

  std::vector<KTensor> inputs_, outputs_;
  std::vector<std::shared_ptr<LayerNode>> nodes_;  // topological order, inputs first
  Tensor rng_state_ = Tensor::zeros({}, DType::kS64);
  std::map<std::string, std::unique_ptr<CompiledCall>> compiled_;
};
using ModelPtr = std::shared_ptr<Model>;

// A linear stack of layers. Start with InputSpec(shape), or call build(shape) before use.
class Sequential : public Model {
 public:
  static std::shared_ptr<Sequential> create(std::vector<LayerPtr> layers = {},
                                            const std::string& name = "");
  explicit Sequential(const std::string& name);
  std::string class_name() const override { return "Sequential"; }
  void add(LayerPtr layer);
  // Fixes the input shape (without batch) and connects the layers.
  void build_for(const Shape& input_shape, DType dtype = DType::kF32);
  Json get_config() const override;

 private:
  std::vector<LayerPtr> pending_;
};

}  // namespace lowbit::nn
