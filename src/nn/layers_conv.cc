// Convolution layers: Conv1D, Conv2D, DepthwiseConv2D, SeparableConv2D.
#include <algorithm>

#include "lowbit/nn/layers.h"
#include "lowbit/ops.h"
#include "nn/layer_registry.h"
#include "nn/layers_common.h"

namespace lowbit::nn {

namespace {

using detail::check_padding;
using detail::expand_ints;
using detail::ints_json;
using detail::window_out_dim;

// Window geometry shared by the convolution layers (spatial rank 1 or 2).
struct Window {
  std::vector<int64_t> kernel, strides, dilation;
  std::string padding;
};

Window make_window(int rank, const std::string& who, const Ints& kernel, const Ints& strides,
                   const Ints& dilation, const std::string& padding, bool allow_causal) {
  Window w;
  w.kernel = expand_ints(kernel, rank, who, "kernel_size");
  w.strides = expand_ints(strides, rank, who, "strides");
  w.dilation = expand_ints(dilation, rank, who, "dilation_rate");
  w.padding = check_padding(padding, who, allow_causal);
  const bool strided = *std::max_element(w.strides.begin(), w.strides.end()) > 1;
  const bool dilated = *std::max_element(w.dilation.begin(), w.dilation.end()) > 1;
  if (strided && dilated)
    LOWBIT_THROW(ValueError, who,
                 ": strides > 1 together with dilation_rate > 1 is not supported (as Keras)");
  return w;
}

Attrs window_attrs(const Window& w) {
  return {{"strides", w.strides}, {"dilations", w.dilation}, {"padding", w.padding}};
}

// Output spatial shape; ShapeError naming the layer when a valid window does not fit.
std::vector<int64_t> out_spatial(const Layer& l, const Window& w, const Shape& x) {
  std::vector<int64_t> out;
  for (size_t i = 0; i < w.kernel.size(); ++i) {
    const int64_t in = x[static_cast<int>(i) + 1];
    const int64_t o = window_out_dim(in, w.kernel[i], w.strides[i], w.dilation[i], w.padding);
    if (o != kUnknown && o < 1)
      LOWBIT_THROW(ShapeError, l.name(), " (", l.class_name(),
                   "): expected spatial dims of at least ", (w.kernel[i] - 1) * w.dilation[i] + 1,
                   " for kernel_size ", ints_json(w.kernel).dump(), " with padding '", w.padding,
                   "' but found input shape ", x.str());
    out.push_back(o);
  }
  return out;
}

void config_window(Json& j, const Window& w) {
  j["kernel_size"] = ints_json(w.kernel);
  j["strides"] = ints_json(w.strides);
  j["padding"] = w.padding;
  j["data_format"] = "channels_last";
  j["dilation_rate"] = ints_json(w.dilation);
}

class ConvLayer : public Layer {
 public:
  ConvLayer(int rank, int64_t filters, const Ints& kernel_size, ConvOptions o)
      : Layer(rank == 1 ? "conv1d" : "conv2d", o.name),
        rank_(rank),
        filters_(filters),
        o_(std::move(o)) {
    const std::string who = class_name();
    if (filters < 1)
      LOWBIT_THROW(ValueError, who, ": argument 'filters': expected >= 1 but found ", filters);
    if (o_.groups < 1)
      LOWBIT_THROW(ValueError, who, ": argument 'groups': expected >= 1 but found ", o_.groups);
    if (filters % o_.groups != 0)
      LOWBIT_THROW(ValueError, who,
                   ": argument 'filters': expected a multiple of groups=", o_.groups, " but found ",
                   filters);
    w_ = make_window(rank, who, kernel_size, o_.strides, o_.dilation_rate, o_.padding, rank == 1);
    check_activation_name(o_.activation);
  }
  std::string class_name() const override { return rank_ == 1 ? "Conv1D" : "Conv2D"; }

  void build(const std::vector<Shape>& s) override {
    const Shape& x = s[0];
    const std::string layout =
        rank_ == 1 ? "[batch, steps, channels]" : "[batch, height, width, channels]";
    check_input(x.rank() == rank_ + 2, "rank " + std::to_string(rank_ + 2) + " " + layout, x);
    const int64_t cin = x[-1];
    check_input(cin != kUnknown, "a known channel dim", x);
    check_input(cin % o_.groups == 0,
                "input channels divisible by groups=" + std::to_string(o_.groups), x);
    out_spatial(*this, w_, x);
    std::vector<int64_t> kshape = w_.kernel;
    kshape.push_back(cin / o_.groups);
    kshape.push_back(filters_);
    add_weight("kernel", Shape(kshape), o_.kernel_initializer);
    if (o_.use_bias) add_weight("bias", {filters_}, o_.bias_initializer);
  }

  std::vector<Value> call(const std::vector<Value>& in, CallContext& ctx) override {
    Attrs a = window_attrs(w_);
    a.set("groups", o_.groups);
    Value k = ctx.var(*this, weights_[0]);
    Value x = in[0];
    // Conv1D with a mask: masked steps read as zeros, the value the convolution pads with, so
    // nothing from a padded step reaches a valid output and a right-padded sequence gives the
    // outputs of the unpadded one (docs/masking.md).
    if (const Value mask = ctx.input_mask(0); rank_ == 1 && mask.defined())
      x = detail::zero_masked(x, mask);
    Value y = rank_ == 1 ? ops::conv1d(x, k, a) : ops::conv2d(x, k, a);
    if (o_.use_bias) y = y + ctx.var(*this, weights_[1]);
    return {activation(o_.activation, y)};
  }

  // Conv1D: the mask downsampled to the output steps. "valid": an output is valid when every
  // step of its window is; "same"/"causal": when the step it is anchored at (o * stride) is,
  // i.e. the mask passes unchanged at stride 1. Conv2D refuses a timestep mask.
  std::vector<Value> compute_mask(const std::vector<Value>&, const std::vector<Value>& out,
                                  CallContext& ctx) override {
    const Value mask = ctx.input_mask(0);
    if (rank_ != 1)
      return detail::refuse_mask(*this, out, ctx,
                                 "a [batch, timesteps] mask has no meaning on a 2-D spatial grid");
    if (!mask.defined()) return {Value()};
    const Value m = detail::mask_to_f32(mask, 3);  // [B, T, 1]
    Graph& g = ctx.graph();
    if (w_.padding == "valid") {
      // Number of valid steps in each output's window (same geometry as the layer).
      const Tensor ones = Tensor::full({w_.kernel[0], 1, 1}, 1.0);
      const Value count = ops::conv1d(m, g.constant(ones, "mask_window"), window_attrs(w_));
      const double full = static_cast<double>(w_.kernel[0]) - 0.5;
      return {ops::squeeze(ops::greater(count, ops::scalar_like(count, full)), {-1})};
    }
    if (w_.strides[0] == 1) return {mask};
    // m[o * stride]: a 1-tap convolution with the layer's stride, "valid" (ceil(T / s) outputs,
    // as many as "same"/"causal" give).
    const Value pick = ops::conv1d(m, g.constant(Tensor::full({1, 1, 1}, 1.0), "mask_pick"),
                                   {{"strides", w_.strides}, {"padding", std::string("valid")}});
    return {ops::squeeze(ops::greater(pick, ops::scalar_like(pick, 0.5)), {-1})};
  }

  Json get_config() const override {
    Json j = Layer::get_config();
    j["filters"] = filters_;
    config_window(j, w_);
    j["groups"] = o_.groups;
    j["activation"] = o_.activation;
    j["use_bias"] = o_.use_bias;
    j["kernel_initializer"] = o_.kernel_initializer;
    j["bias_initializer"] = o_.bias_initializer;
    return j;
  }

 private:
  int rank_;
  int64_t filters_;
  ConvOptions o_;
  Window w_;
};

class DepthwiseConv2DLayer : public Layer {
 public:
  DepthwiseConv2DLayer(const Ints& kernel_size, DepthwiseConv2DOptions o)
      : Layer("depthwise_conv2d", o.name), o_(std::move(o)) {
    if (o_.depth_multiplier < 1)
      LOWBIT_THROW(ValueError,
                   "DepthwiseConv2D: argument 'depth_multiplier': expected >= 1 but found ",
                   o_.depth_multiplier);
    w_ = make_window(2, "DepthwiseConv2D", kernel_size, o_.strides, o_.dilation_rate, o_.padding,
                     false);
    check_activation_name(o_.activation);
  }
  std::string class_name() const override { return "DepthwiseConv2D"; }

  void build(const std::vector<Shape>& s) override {
    const Shape& x = s[0];
    check_input(x.rank() == 4, "rank 4 [batch, height, width, channels]", x);
    check_input(x[-1] != kUnknown, "a known channel dim", x);
    out_spatial(*this, w_, x);
    const int64_t c = x[-1];
    add_weight("depthwise_kernel", {w_.kernel[0], w_.kernel[1], c, o_.depth_multiplier},
               o_.depthwise_initializer);
    if (o_.use_bias) add_weight("bias", {c * o_.depth_multiplier}, o_.bias_initializer);
  }

  std::vector<Value> call(const std::vector<Value>& in, CallContext& ctx) override {
    Value y = ops::depthwise_conv2d(in[0], ctx.var(*this, weights_[0]), window_attrs(w_));
    if (o_.use_bias) y = y + ctx.var(*this, weights_[1]);
    return {activation(o_.activation, y)};
  }
  std::vector<Value> compute_mask(const std::vector<Value>&, const std::vector<Value>& out,
                                  CallContext& ctx) override {
    return detail::refuse_mask(*this, out, ctx,
                               "a [batch, timesteps] mask has no meaning on a 2-D spatial grid");
  }

  Json get_config() const override {
    Json j = Layer::get_config();
    config_window(j, w_);
    j["depth_multiplier"] = o_.depth_multiplier;
    j["activation"] = o_.activation;
    j["use_bias"] = o_.use_bias;
    j["depthwise_initializer"] = o_.depthwise_initializer;
    j["bias_initializer"] = o_.bias_initializer;
    return j;
  }

 private:
  DepthwiseConv2DOptions o_;
  Window w_;
};

class SeparableConv2DLayer : public Layer {
 public:
  SeparableConv2DLayer(int64_t filters, const Ints& kernel_size, SeparableConv2DOptions o)
      : Layer("separable_conv2d", o.name), filters_(filters), o_(std::move(o)) {
    if (filters < 1)
      LOWBIT_THROW(ValueError, "SeparableConv2D: argument 'filters': expected >= 1 but found ",
                   filters);
    if (o_.depth_multiplier < 1)
      LOWBIT_THROW(ValueError,
                   "SeparableConv2D: argument 'depth_multiplier': expected >= 1 but found ",
                   o_.depth_multiplier);
    w_ = make_window(2, "SeparableConv2D", kernel_size, o_.strides, o_.dilation_rate, o_.padding,
                     false);
    check_activation_name(o_.activation);
  }
  std::string class_name() const override { return "SeparableConv2D"; }

  void build(const std::vector<Shape>& s) override {
    const Shape& x = s[0];
    check_input(x.rank() == 4, "rank 4 [batch, height, width, channels]", x);
    check_input(x[-1] != kUnknown, "a known channel dim", x);
    out_spatial(*this, w_, x);
    const int64_t c = x[-1], m = o_.depth_multiplier;
    add_weight("depthwise_kernel", {w_.kernel[0], w_.kernel[1], c, m}, o_.depthwise_initializer);
    add_weight("pointwise_kernel", {1, 1, c * m, filters_}, o_.pointwise_initializer);
    if (o_.use_bias) add_weight("bias", {filters_}, o_.bias_initializer);
  }

  std::vector<Value> call(const std::vector<Value>& in, CallContext& ctx) override {
    Value d = ops::depthwise_conv2d(in[0], ctx.var(*this, weights_[0]), window_attrs(w_));
    Value y = ops::conv2d(d, ctx.var(*this, weights_[1]));
    if (o_.use_bias) y = y + ctx.var(*this, weights_[2]);
    return {activation(o_.activation, y)};
  }
  std::vector<Value> compute_mask(const std::vector<Value>&, const std::vector<Value>& out,
                                  CallContext& ctx) override {
    return detail::refuse_mask(*this, out, ctx,
                               "a [batch, timesteps] mask has no meaning on a 2-D spatial grid");
  }

  Json get_config() const override {
    Json j = Layer::get_config();
    j["filters"] = filters_;
    config_window(j, w_);
    j["depth_multiplier"] = o_.depth_multiplier;
    j["activation"] = o_.activation;
    j["use_bias"] = o_.use_bias;
    j["depthwise_initializer"] = o_.depthwise_initializer;
    j["pointwise_initializer"] = o_.pointwise_initializer;
    j["bias_initializer"] = o_.bias_initializer;
    return j;
  }

 private:
  int64_t filters_;
  SeparableConv2DOptions o_;
  Window w_;
};

}  // namespace

LayerPtr Conv1D(int64_t filters, Ints kernel_size, Conv1DOptions o) {
  return std::make_shared<ConvLayer>(1, filters, kernel_size, std::move(o));
}
LayerPtr Conv2D(int64_t filters, Ints kernel_size, Conv2DOptions o) {
  return std::make_shared<ConvLayer>(2, filters, kernel_size, std::move(o));
}
LayerPtr DepthwiseConv2D(Ints kernel_size, DepthwiseConv2DOptions o) {
  return std::make_shared<DepthwiseConv2DLayer>(kernel_size, std::move(o));
}
LayerPtr SeparableConv2D(int64_t filters, Ints kernel_size, SeparableConv2DOptions o) {
  return std::make_shared<SeparableConv2DLayer>(filters, kernel_size, std::move(o));
}

namespace detail {
void register_conv_layers() {
  for (int rank : {1, 2}) {
    const std::string cls = rank == 1 ? "Conv1D" : "Conv2D";
    register_layer(cls, [rank, cls](const Json& c) {
      check_data_format(c, cls);
      ConvOptions o;
      o.strides = json_ints(c, "strides", 1);
      o.padding = c.value("padding", "valid");
      o.dilation_rate = json_ints(c, "dilation_rate", 1);
      o.groups = c.value("groups", int64_t{1});
      o.activation = json_activation(c);
      o.use_bias = c.value("use_bias", true);
      o.kernel_initializer = json_initializer(c, "kernel_initializer", "glorot_uniform");
      o.bias_initializer = json_initializer(c, "bias_initializer", "zeros");
      o.name = json_name(c);
      const int64_t filters = c.at("filters").get<int64_t>();
      const Ints k = json_ints(c, "kernel_size", Ints());
      return rank == 1 ? Conv1D(filters, k, o) : Conv2D(filters, k, o);
    });
  }
  register_layer("DepthwiseConv2D", [](const Json& c) {
    check_data_format(c, "DepthwiseConv2D");
    DepthwiseConv2DOptions o;
    o.strides = json_ints(c, "strides", 1);
    o.padding = c.value("padding", "valid");
    o.depth_multiplier = c.value("depth_multiplier", int64_t{1});
    o.dilation_rate = json_ints(c, "dilation_rate", 1);
    o.activation = json_activation(c);
    o.use_bias = c.value("use_bias", true);
    o.depthwise_initializer = json_initializer(c, "depthwise_initializer", "glorot_uniform");
    o.bias_initializer = json_initializer(c, "bias_initializer", "zeros");
    o.name = json_name(c);
    return DepthwiseConv2D(json_ints(c, "kernel_size", Ints()), o);
  });
  register_layer("SeparableConv2D", [](const Json& c) {
    check_data_format(c, "SeparableConv2D");
    SeparableConv2DOptions o;
    o.strides = json_ints(c, "strides", 1);
    o.padding = c.value("padding", "valid");
    o.dilation_rate = json_ints(c, "dilation_rate", 1);
    o.depth_multiplier = c.value("depth_multiplier", int64_t{1});
    o.activation = json_activation(c);
    o.use_bias = c.value("use_bias", true);
    o.depthwise_initializer = json_initializer(c, "depthwise_initializer", "glorot_uniform");
    o.pointwise_initializer = json_initializer(c, "pointwise_initializer", "glorot_uniform");
    o.bias_initializer = json_initializer(c, "bias_initializer", "zeros");
    o.name = json_name(c);
    return SeparableConv2D(c.at("filters").get<int64_t>(), json_ints(c, "kernel_size", Ints()), o);
  });
}
}  // namespace detail

}  // namespace lowbit::nn
