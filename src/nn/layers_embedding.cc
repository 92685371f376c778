// Embedding: a lookup table with host-side id validation (the gather kernel cannot throw).
#include <cmath>

#include "lowbit/nn/layers.h"
#include "lowbit/ops.h"
#include "nn/layer_registry.h"
#include "nn/layers_common.h"

namespace lowbit::nn {

namespace {

class EmbeddingLayer : public Layer {
 public:
  EmbeddingLayer(int64_t input_dim, int64_t output_dim, EmbeddingOptions o)
      : Layer("embedding", o.name),
        input_dim_(input_dim),
        output_dim_(output_dim),
        o_(std::move(o)) {
    if (input_dim < 1)
      LOWBIT_THROW(ValueError, "Embedding: argument 'input_dim': expected >= 1 but found ",
                   input_dim);
    if (output_dim < 1)
      LOWBIT_THROW(ValueError, "Embedding: argument 'output_dim': expected >= 1 but found ",
                   output_dim);
  }
  std::string class_name() const override { return "Embedding"; }

  void build(const std::vector<Shape>&) override {
    add_weight("embeddings", {input_dim_, output_dim_}, o_.embeddings_initializer);
  }

  std::vector<Value> call(const std::vector<Value>& in, CallContext& ctx) override {
    Value ids = in[0];
    check_dtype(ids.dtype());
    // gather takes s32/s64 indices; other integers widen, f32 truncates toward zero (Keras casts
    // non-integer ids to int32).
    if (ids.dtype() != DType::kS32 && ids.dtype() != DType::kS64) ids = ops::cast(ids, DType::kS32);
    return {ops::gather(ctx.var(*this, weights_[0]), ids, 0)};
  }

  // mask_zero: creates the mask ids != 0 (AND-ed with a mask the ids already carry); id 0 is
  // still looked up (row 0 at padded steps), as Keras. Without mask_zero a mask on the ids
  // passes (the time axis is kept).
  std::vector<Value> compute_mask(const std::vector<Value>& in, const std::vector<Value>& out,
                                  CallContext& ctx) override {
    const Value incoming = ctx.input_mask(0);
    if (!o_.mask_zero) return {incoming};
    const Value& ids = in[0];
    if (ids.rank() != 2)
      LOWBIT_THROW(ShapeError, name_,
                   " (Embedding): mask_zero needs ids of shape [batch, timesteps] but found ",
                   ids.shape().str());
    (void)out;
    // Truncated like the lookup does (f32 ids), so 0.5 is padding as it reads row 0.
    const Value id = ids.dtype() == DType::kF32 ? ops::cast(ids, DType::kS32) : ids;
    Value m = ops::not_equal(id, ops::scalar_like(id, 0.0));
    if (incoming.defined()) m = ops::logical_and(m, incoming);
    return {m};
  }

  void validate_input(int, const Tensor& ids) const override {
    check_dtype(ids.dtype());
    for (int64_t i = 0; i < ids.numel(); ++i) {
      const double v = ids.get_as_double(i);
      const double id = std::trunc(v);  // what the cast to s32 keeps of f32 ids
      if (!(id >= 0 && id < static_cast<double>(input_dim_)))
        LOWBIT_THROW(ValueError, name_, " (Embedding): expected ids in [0, ", input_dim_,
                     ") (input_dim) but found ", v, " at flat position ", i, " of input shape ",
                     ids.shape().str());
    }
  }

  Json get_config() const override {
    Json j = Layer::get_config();
    j["input_dim"] = input_dim_;
    j["output_dim"] = output_dim_;
    j["embeddings_initializer"] = o_.embeddings_initializer;
    j["mask_zero"] = o_.mask_zero;
    return j;
  }

 private:
  void check_dtype(DType t) const {
    if (!is_integer(t) && t != DType::kF32)
      LOWBIT_THROW(DTypeError, name_, " (Embedding): expected integer (or f32) ids but found ",
                   dtype_name(t));
  }

  int64_t input_dim_, output_dim_;
  EmbeddingOptions o_;
};

}  // namespace

LayerPtr Embedding(int64_t input_dim, int64_t output_dim, EmbeddingOptions o) {
  return std::make_shared<EmbeddingLayer>(input_dim, output_dim, std::move(o));
}

namespace detail {
void register_embedding_layers() {
  register_layer("Embedding", [](const Json& c) {
    EmbeddingOptions o;
    o.embeddings_initializer = json_initializer(c, "embeddings_initializer", "uniform");
    o.mask_zero = c.value("mask_zero", false);
    o.name = json_name(c);
    return Embedding(c.at("input_dim").get<int64_t>(), c.at("output_dim").get<int64_t>(), o);
  });
}
}  // namespace detail

}  // namespace lowbit::nn
