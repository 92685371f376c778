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
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "lowbit/data/dataset.h"
#include "lowbit/nn/callbacks.h"
#include "lowbit/nn/layer.h"
#include "lowbit/nn/losses.h"
#include "lowbit/nn/metrics.h"
#include "lowbit/nn/optimizers.h"

namespace lowbit::nn {

// A symbolic model input; `shape` excludes the batch dim.
KTensor Input(const Shape& shape, DType dtype = DType::kF32, const std::string& name = "");

class InputLayer : public Layer {
 public:
  InputLayer(Shape shape, DType dtype, std::string name);
  std::string class_name() const override { return "InputLayer"; }
  int num_inputs() const override { return 1; }
  std::vector<Value> call(const std::vector<Value>& inputs, CallContext&) override {
    return inputs;
  }
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
struct TrainState;

struct CompileOptions {
  OptimizerPtr optimizer;            // null: RMSprop with Keras defaults (Keras' compile default)
  LossPtr loss;                      // required for fit/evaluate
  std::vector<std::string> metrics;  // "accuracy", "mse", "mae", "auc", ...
  std::vector<MetricPtr> metric_objects;
};

struct FitOptions {
  int epochs = 1;  // index of the last epoch + 1, as Keras: with initial_epoch = k,
                   // epochs k .. epochs-1 run (resuming continues the count)
  int64_t batch_size = 32;
  bool shuffle = true;
  uint64_t seed = 0;            // shuffling order: the same seed gives the same batches
  double validation_split = 0;  // the LAST fraction of the data, taken before shuffling (Keras)
  std::optional<data::Dataset> validation_data;
  int verbose = 1;  // 0 silent, 1 progress bar, 2 one line per epoch
  int initial_epoch = 0;
  std::vector<CallbackPtr> callbacks;
  std::ostream* out = nullptr;  // default std::cout
  // With num_threads() > 1: every 1,000 training steps (counted across fit calls), time 4 steps
  // on one thread and 4 on num_threads() and run the following steps with the faster (a second
  // thread can be slower on a shared machine; docs/performance.md). Callbacks and validation
  // inside fit see the count in use; the caller's count is restored when fit returns or throws.
  // The choice depends on timings: for runs that must repeat bit for bit on several threads,
  // set it to false (at one thread nothing changes).
  bool tune_threads = true;
};

struct EvaluateOptions {
  int64_t batch_size = 32;
  int verbose = 0;
  std::ostream* out = nullptr;
};

class Model : public Layer {
 public:
  static std::shared_ptr<Model> create(std::vector<KTensor> inputs, std::vector<KTensor> outputs,
                                       const std::string& name = "");
  Model(std::vector<KTensor> inputs, std::vector<KTensor> outputs, const std::string& name);
  ~Model() override;

  std::string class_name() const override { return "Functional"; }
  int num_inputs() const override { return static_cast<int>(inputs_.size()); }
  // Runs the layer graph; the masks of the model's inputs come from ctx.input_masks and travel
  // with the tensors through every layer call (Layer::apply with masks, docs/masking.md).
  std::vector<Value> call(const std::vector<Value>& inputs, CallContext& ctx) override;
  // The masks of the model's outputs as computed by the call just traced.
  std::vector<Value> compute_mask(const std::vector<Value>& inputs,
                                  const std::vector<Value>& outputs, CallContext& ctx) override;
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
  std::string summary(int width = 100) const;

  // Host-side checks of input data (Layer::validate_input of every layer a model input feeds
  // directly, nested models included); predict_on_batch runs it, training loops should too.
  void validate_inputs(const std::vector<Tensor>& xs) const;
  // ValueError naming the first layer awaiting calibration (see calibrate), for `who`.
  void require_calibrated(const std::string& who) const;
  void validate_input(int index, const Tensor& value) const override;

  // Runs the model now. training unset = inference.
  std::vector<Tensor> predict_on_batch(const std::vector<Tensor>& xs, CallOptions opt = {});
  Tensor operator()(const Tensor& x, CallOptions opt = {});
  // A model is a layer: called on symbolic tensors it becomes one node of another model
  // (KTensor y = (*inner)(x); trained, saved and loaded with the outer model).
  using Layer::operator();

  // Traces the model into `g` on fresh placeholders (batch unknown); returns placeholders,
  // outputs and the outputs' timestep masks (undefined where an output has none); the context
  // collects state updates. fit/evaluate fold output_masks[0] into the loss and the metrics.
  struct Trace {
    std::vector<Value> inputs, outputs, output_masks;
  };
  Trace trace(Graph& g, CallContext& ctx);
  // The op graph of one mode as Graphviz DOT.
  std::string to_dot(bool training);

  // State that travels with the model: the random-stream step of Dropout & co.
  Tensor& rng_state() { return rng_state_; }

  // ---- training (Keras compile / fit / evaluate / predict) ----
  void compile(CompileOptions o);
  bool compiled() const { return loss_ != nullptr; }
  // Trains on (x, y) in training mode; validation and metrics in inference mode. Throws
  // ValueError for empty data, ShapeError/DTypeError for inputs or targets that do not fit the
  // model, ValueError for labels out of range. A step whose loss is not finite is not applied;
  // training stops and History::stop_reason says why.
  History fit(const Tensor& x, const Tensor& y, FitOptions o = {});
  History fit(const data::Dataset& train, FitOptions o = {});
  Logs evaluate(const Tensor& x, const Tensor& y, EvaluateOptions o = {});
  Logs evaluate(const data::Dataset& d, EvaluateOptions o = {});
  // Inference-mode outputs for all of x, in batches (single-input, single-output models).
  Tensor predict(const Tensor& x, int64_t batch_size = 32);
  // Any model: one tensor per input (same number of samples; explicit masks are inputs too),
  // one result per output.
  std::vector<Tensor> predict(const std::vector<Tensor>& xs, int64_t batch_size = 32);
  // Calibration (PyTorch's prepare/calibrate step, TFLite's representative dataset): runs the
  // inputs of `data` (targets are not needed and ignored) through the model in training mode
  // and keeps only the quantizers' state updates (activation ranges, step counters): no weight,
  // optimizer or BatchNormalization statistic changes. A model fresh from quant::quantize_model
  // must be calibrated (or trained with fit) before inference; until then predict, evaluate
  // and eager calls refuse with a ValueError that says so. Returns the number of batches run.
  // ValueError for empty data or batch_size < 1 (the dataset's own batches when it is batched).
  int64_t calibrate(const data::Dataset& data, int64_t batch_size = 32, int verbose = 0,
                    std::ostream* out = nullptr);
  // The first layer (nested ones included) still awaiting calibration (Layer::
  // awaiting_calibration), or nullptr.
  const Layer* uncalibrated_layer() const;
  OptimizerPtr optimizer() const { return optimizer_; }

  // ---- saving ----
  // Writes the model to one safetensors file: weights and state (moving statistics, RNG step)
  // as tensors; the model config, the compile config and the optimizer state (slots,
  // iterations) in the JSON metadata. Written to a temporary file and renamed into place.
  void save(const std::string& path);
  // Copies the weights (and state) stored in `path` into this model; IoError when a tensor is
  // missing or has another shape.
  void load_weights(const std::string& path);
  LossPtr loss() const { return loss_; }
  bool stop_training = false;  // callbacks set it to end fit after the current epoch
  // Lets inference run on quantizers that have not seen data (their initial ranges), on
  // purpose: tests of the state machinery, inspecting what quantize_model made. Not saved.
  bool allow_uncalibrated = false;

 protected:
  Model(const std::string& default_name, const std::string& name);
  void set_graph(std::vector<KTensor> inputs, std::vector<KTensor> outputs);
  std::string mode_signature(bool training) const;

  std::vector<KTensor> inputs_, outputs_;
  std::vector<std::shared_ptr<LayerNode>> nodes_;  // topological order, inputs first
  std::vector<Value> last_output_masks_;           // of the last call(), for compute_mask()
  Tensor rng_state_ = Tensor::zeros({}, DType::kS64);
  std::map<std::string, std::unique_ptr<CompiledCall>> compiled_;
  OptimizerPtr optimizer_;
  LossPtr loss_;
  CompileOptions compile_options_;
  std::map<std::string, std::unique_ptr<TrainState>> train_states_;
  TrainState& train_state();
  Logs run_evaluation(const data::Dataset& d, int64_t batch_size, int verbose, std::ostream& out,
                      const std::string& prefix);
};
using ModelPtr = std::shared_ptr<Model>;

// Rebuilds a model saved with Model::save, compiled and with its optimizer state if it was
// compiled when saved, so fit(initial_epoch = k) continues exactly where training stopped.
// Throws IoError naming the file and the problem (missing, truncated, corrupted, mismatched).
ModelPtr load_model(const std::string& path);
// Rebuilds a model (uncompiled, fresh weights) from Model::get_config().
ModelPtr model_from_config(const Json& config, const std::string& class_name = "Functional");

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
