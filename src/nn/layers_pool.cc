// Pooling layers: Max/AveragePooling1D/2D and the global poolings.
#include <limits>

#include "lowbit/nn/layers.h"
#include "lowbit/ops.h"
#include "nn/layer_registry.h"
#include "nn/layers_common.h"

namespace lowbit::nn {

namespace {

using detail::ints_json;

std::string pool_class(int rank, bool max) {
  return std::string(max ? "MaxPooling" : "AveragePooling") + std::to_string(rank) + "D";
}
std::string pool_default_name(int rank, bool max) {
  return std::string(max ? "max_pooling" : "average_pooling") + std::to_string(rank) + "d";
}

class PoolLayer : public Layer {
 public:
  PoolLayer(int rank, bool max, const Ints& pool_size, PoolingOptions o)
      : Layer(pool_default_name(rank, max), o.name), rank_(rank), max_(max) {
    const std::string who = class_name();
    pool_ = detail::expand_ints(pool_size, rank, who, "pool_size");
    strides_ = o.strides.empty() ? pool_ : detail::expand_ints(o.strides, rank, who, "strides");
    padding_ = detail::check_padding(o.padding, who, false);
  }
  std::string class_name() const override { return pool_class(rank_, max_); }
  bool keeps_grid(const CallContext&) const override { return max_; }

  void build(const std::vector<Shape>& s) override {
    const Shape& x = s[0];
    check_input(
        x.rank() == rank_ + 2,
        rank_ == 1 ? "rank 3 [batch, steps, channels]" : "rank 4 [batch, height, width, channels]",
        x);
    for (int i = 0; i < rank_; ++i) {
      const int64_t o = detail::window_out_dim(x[i + 1], pool_[i], strides_[i], 1, padding_);
      check_input(
          o == kUnknown || o >= 1,
          "spatial dims of at least pool_size " + ints_json(pool_).dump() + " with padding 'valid'",
          x);
    }
  }

  std::vector<Value> call(const std::vector<Value>& in, CallContext&) override {
    if (rank_ == 1) {
      Attrs a{{"ksize", pool_[0]}, {"strides", strides_[0]}, {"padding", padding_}};
      return {max_ ? ops::max_pool1d(in[0], a) : ops::avg_pool1d(in[0], a)};
    }
    Attrs a{{"ksize", pool_}, {"strides", strides_}, {"padding", padding_}};
    return {max_ ? ops::max_pool2d(in[0], a) : ops::avg_pool2d(in[0], a)};
  }

  // 1-D: an output step is valid when every input step its window reads is (cells beyond the
  // input, with "same", are not read and do not count), so a valid output never reads a padded
  // step. That is avg_pool1d of the 0/1 mask == 1 (it divides by the cells read). 2-D: refused.
  std::vector<Value> compute_mask(const std::vector<Value>&, const std::vector<Value>& out,
                                  CallContext& ctx) override {
    if (rank_ != 1)
      return detail::refuse_mask(*this, out, ctx,
                                 "a [batch, timesteps] mask has no meaning on a 2-D spatial grid");
    const Value mask = ctx.input_mask(0);
    if (!mask.defined()) return {Value()};
    Attrs a{{"ksize", pool_[0]}, {"strides", strides_[0]}, {"padding", padding_}};
    const Value frac = ops::avg_pool1d(detail::mask_to_f32(mask, 3), a);
    const double all = 1.0 - 0.5 / static_cast<double>(pool_[0]);
    return {ops::squeeze(ops::greater(frac, ops::scalar_like(frac, all)), {-1})};
  }

  Json get_config() const override {
    Json j = Layer::get_config();
    j["pool_size"] = ints_json(pool_);
    j["strides"] = ints_json(strides_);
    j["padding"] = padding_;
    j["data_format"] = "channels_last";
    return j;
  }

 private:
  int rank_;
  bool max_;
  std::vector<int64_t> pool_, strides_;
  std::string padding_;
};

class GlobalPoolLayer : public Layer {
 public:
  GlobalPoolLayer(int rank, bool max, GlobalPoolingOptions o)
      : Layer(std::string(max ? "global_max_pooling" : "global_average_pooling") +
                  std::to_string(rank) + "d",
              o.name),
        rank_(rank),
        max_(max),
        keepdims_(o.keepdims) {}
  std::string class_name() const override {
    return std::string(max_ ? "GlobalMaxPooling" : "GlobalAveragePooling") + std::to_string(rank_) +
           "D";
  }

  void build(const std::vector<Shape>& s) override {
    check_input(
        s[0].rank() == rank_ + 2,
        rank_ == 1 ? "rank 3 [batch, steps, channels]" : "rank 4 [batch, height, width, channels]",
        s[0]);
  }

  std::vector<Value> call(const std::vector<Value>& in, CallContext& ctx) override {
    std::vector<int64_t> axes = rank_ == 1 ? std::vector<int64_t>{1} : std::vector<int64_t>{1, 2};
    if (const Value mask = ctx.input_mask(0); rank_ == 1 && mask.defined()) {
      // Over the valid steps only. A fully masked row gives 0 (Keras' average gives 0/0 = NaN,
      // which would poison training; its max pooling refuses masks).
      const Value valid = detail::mask_expanded(mask, 3);  // [B, T, 1]
      if (!max_) return {ops::masked_mean(in[0], valid, axes, keepdims_)};
      const Value x = ops::where(valid, in[0],
                                 ops::scalar_like(in[0], -std::numeric_limits<double>::infinity()));
      const Value any = ops::reduce_any(valid, axes, keepdims_);  // [B, 1] or [B, 1, 1]
      return {ops::where(any, ops::max(x, axes, keepdims_), ops::scalar_like(in[0], 0.0))};
    }
    return {max_ ? ops::max(in[0], axes, keepdims_) : ops::mean(in[0], axes, keepdims_)};
  }

  // 1-D: consumes the mask (statistics over the valid steps; the output has no time axis).
  // 2-D: refused.
  std::vector<Value> compute_mask(const std::vector<Value>&, const std::vector<Value>& out,
                                  CallContext& ctx) override {
    if (rank_ != 1)
      return detail::refuse_mask(*this, out, ctx,
                                 "a [batch, timesteps] mask has no meaning on a 2-D spatial grid");
    return detail::no_mask(out);
  }

  Json get_config() const override {
    Json j = Layer::get_config();
    j["data_format"] = "channels_last";
    j["keepdims"] = keepdims_;
    return j;
  }

 private:
  int rank_;
  bool max_;
  bool keepdims_;
};

}  // namespace

LayerPtr MaxPooling1D(Ints pool_size, MaxPooling1DOptions o) {
  return std::make_shared<PoolLayer>(1, true, pool_size, std::move(o));
}
LayerPtr AveragePooling1D(Ints pool_size, AveragePooling1DOptions o) {
  return std::make_shared<PoolLayer>(1, false, pool_size, std::move(o));
}
LayerPtr MaxPooling2D(Ints pool_size, MaxPooling2DOptions o) {
  return std::make_shared<PoolLayer>(2, true, pool_size, std::move(o));
}
LayerPtr AveragePooling2D(Ints pool_size, AveragePooling2DOptions o) {
  return std::make_shared<PoolLayer>(2, false, pool_size, std::move(o));
}
LayerPtr GlobalAveragePooling1D(GlobalPoolingOptions o) {
  return std::make_shared<GlobalPoolLayer>(1, false, std::move(o));
}
LayerPtr GlobalAveragePooling2D(GlobalPoolingOptions o) {
  return std::make_shared<GlobalPoolLayer>(2, false, std::move(o));
}
LayerPtr GlobalMaxPooling1D(GlobalPoolingOptions o) {
  return std::make_shared<GlobalPoolLayer>(1, true, std::move(o));
}
LayerPtr GlobalMaxPooling2D(GlobalPoolingOptions o) {
  return std::make_shared<GlobalPoolLayer>(2, true, std::move(o));
}

namespace detail {
void register_pool_layers() {
  for (int rank : {1, 2}) {
    for (bool max : {false, true}) {
      const std::string cls = pool_class(rank, max);
      register_layer(cls, [rank, max, cls](const Json& c) -> LayerPtr {
        check_data_format(c, cls);
        PoolingOptions o;
        o.strides = json_ints(c, "strides", Ints());
        o.padding = c.value("padding", "valid");
        o.name = json_name(c);
        return std::make_shared<PoolLayer>(rank, max, json_ints(c, "pool_size", 2), o);
      });
      const std::string gcls = std::string(max ? "GlobalMaxPooling" : "GlobalAveragePooling") +
                               std::to_string(rank) + "D";
      register_layer(gcls, [rank, max, gcls](const Json& c) -> LayerPtr {
        check_data_format(c, gcls);
        GlobalPoolingOptions o;
        o.keepdims = c.value("keepdims", false);
        o.name = json_name(c);
        return std::make_shared<GlobalPoolLayer>(rank, max, o);
      });
    }
  }
}
}  // namespace detail

}  // namespace lowbit::nn
