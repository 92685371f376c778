// Reshaping layers: Flatten, Reshape, Permute, ZeroPadding2D.
#include <algorithm>

#include "lowbit/nn/layers.h"
#include "lowbit/ops.h"
#include "nn/layer_registry.h"
#include "nn/layers_common.h"

namespace lowbit::nn {

namespace {

using detail::ints_json;

class FlattenLayer : public Layer {
 public:
  explicit FlattenLayer(FlattenOptions o) : Layer("flatten", o.name) {}
  std::string class_name() const override { return "Flatten"; }
  bool keeps_grid(const CallContext&) const override { return true; }
  std::vector<Value> call(const std::vector<Value>& in, CallContext&) override {
    const Value& x = in[0];
    if (x.rank() == 2) return {x};
    return {ops::flatten(x, 1)};
  }
  // Destroys the time axis: the mask is dropped, deliberately (as Keras).
  std::vector<Value> compute_mask(const std::vector<Value>&, const std::vector<Value>& out,
                                  CallContext&) override {
    return detail::no_mask(out);
  }
  Json get_config() const override {
    Json j = Layer::get_config();
    j["data_format"] = "channels_last";
    return j;
  }
};

class ReshapeLayer : public Layer {
 public:
  ReshapeLayer(std::vector<int64_t> target, ReshapeOptions o)
      : Layer("reshape", o.name), target_(std::move(target)) {
    int unknown = 0;
    for (int64_t d : target_) {
      if (d == -1) ++unknown;
      if (d == 0 || d < -1)
        LOWBIT_THROW(
            ValueError,
            "Reshape: argument 'target_shape': expected positive dims (and at most one -1) "
            "but found ",
            ints_json(target_).dump());
    }
    if (unknown > 1)
      LOWBIT_THROW(ValueError,
                   "Reshape: argument 'target_shape': expected at most one -1 but found ",
                   ints_json(target_).dump());
  }
  std::string class_name() const override { return "Reshape"; }
  bool keeps_grid(const CallContext&) const override { return true; }

  void build(const std::vector<Shape>& s) override {
    const Shape& x = s[0];
    check_input(x.rank() >= 1, "an input with a batch dim", x);
    int64_t in = 1;
    for (int i = 1; i < x.rank(); ++i)
      in = (x[i] == kUnknown || in == kUnknown) ? kUnknown : in * x[i];
    int64_t known = 1;
    int free_axis = -1;
    for (size_t i = 0; i < target_.size(); ++i) {
      if (target_[i] == -1)
        free_axis = static_cast<int>(i);
      else
        known *= target_[i];
    }
    resolved_ = target_;
    if (in == kUnknown) {
      check_input(
          free_axis < 0,
          "known non-batch dims to resolve the -1 of target_shape " + ints_json(target_).dump(), x);
      return;
    }
    const std::string want = "a size matching target_shape " + ints_json(target_).dump();
    if (free_axis >= 0) {
      check_input(in % known == 0, want, x);
      resolved_[free_axis] = in / known;
    } else {
      check_input(in == known, want, x);
    }
  }

  std::vector<Value> call(const std::vector<Value>& in, CallContext&) override {
    std::vector<int64_t> shape{-1};
    shape.insert(shape.end(), resolved_.begin(), resolved_.end());
    return {ops::reshape(in[0], shape)};
  }
  // Keeps the mask when the time axis survives (target_shape[0] equals the input's known dim 1,
  // only the features are reshaped); otherwise drops it, deliberately (Keras always drops it).
  std::vector<Value> compute_mask(const std::vector<Value>& in, const std::vector<Value>& out,
                                  CallContext& ctx) override {
    const Shape& x = in[0].shape();
    const bool keeps_time = x.rank() >= 2 && x[1] != kUnknown && !resolved_.empty() &&
                            resolved_[0] == x[1] && out[0].rank() >= 2;
    return keeps_time ? detail::pass_mask(out, ctx) : detail::no_mask(out);
  }

  Json get_config() const override {
    Json j = Layer::get_config();
    j["target_shape"] = ints_json(target_);
    return j;
  }

 private:
  std::vector<int64_t> target_, resolved_;
};

// Keras' Permute: dims (1-based, the batch axis excluded) is a permutation of 1..rank-1; output
// dim i+1 is input dim dims[i].
class PermuteLayer : public Layer {
 public:
  PermuteLayer(std::vector<int64_t> dims, PermuteOptions o)
      : Layer("permute", o.name), dims_(std::move(dims)) {
    std::vector<int64_t> sorted = dims_;
    std::sort(sorted.begin(), sorted.end());
    for (size_t i = 0; i < sorted.size(); ++i)
      if (sorted[i] != static_cast<int64_t>(i) + 1)
        LOWBIT_THROW(ValueError, "Permute: argument 'dims': expected a permutation of 1..",
                     dims_.size(), " but found ", ints_json(dims_).dump());
  }
  std::string class_name() const override { return "Permute"; }
  bool keeps_grid(const CallContext&) const override { return true; }
  void build(const std::vector<Shape>& s) override {
    check_input(s[0].rank() == static_cast<int>(dims_.size()) + 1,
                "rank " + std::to_string(dims_.size() + 1) + " (dims " + ints_json(dims_).dump() +
                    " and the batch)",
                s[0]);
  }
  std::vector<Value> call(const std::vector<Value>& in, CallContext&) override {
    std::vector<int64_t> perm{0};
    perm.insert(perm.end(), dims_.begin(), dims_.end());
    return {ops::transpose(in[0], perm)};
  }
  // The mask survives when the time axis stays in place (dims[0] == 1).
  std::vector<Value> compute_mask(const std::vector<Value>&, const std::vector<Value>& out,
                                  CallContext& ctx) override {
    return !dims_.empty() && dims_[0] == 1 ? detail::pass_mask(out, ctx) : detail::no_mask(out);
  }
  Json get_config() const override {
    Json j = Layer::get_config();
    j["dims"] = ints_json(dims_);
    return j;
  }

 private:
  std::vector<int64_t> dims_;
};

class ZeroPadding2DLayer : public Layer {
 public:
  ZeroPadding2DLayer(const Ints& padding, ZeroPadding2DOptions o)
      : Layer("zero_padding2d", o.name) {
    const auto& v = padding.values();
    if (v.size() == 1)
      pads_ = {v[0], v[0], v[0], v[0]};
    else if (v.size() == 2)
      pads_ = {v[0], v[0], v[1], v[1]};
    else if (v.size() == 4)
      pads_ = v;
    else
      LOWBIT_THROW(ValueError,
                   "ZeroPadding2D: argument 'padding': expected 1, 2 (h, w) or 4 (t, b, l, r) ints "
                   "but found ",
                   ints_json(v).dump());
    for (int64_t p : pads_)
      if (p < 0)
        LOWBIT_THROW(ValueError,
                     "ZeroPadding2D: argument 'padding': expected values >= 0 but found ",
                     ints_json(v).dump());
  }
  std::string class_name() const override { return "ZeroPadding2D"; }
  bool keeps_grid(const CallContext&) const override { return true; }
  void build(const std::vector<Shape>& s) override {
    check_input(s[0].rank() == 4, "rank 4 [batch, height, width, channels]", s[0]);
  }
  std::vector<Value> call(const std::vector<Value>& in, CallContext&) override {
    return {ops::pad(in[0], {0, 0, pads_[0], pads_[1], pads_[2], pads_[3], 0, 0})};
  }
  std::vector<Value> compute_mask(const std::vector<Value>&, const std::vector<Value>& out,
                                  CallContext& ctx) override {
    return detail::refuse_mask(*this, out, ctx,
                               "a [batch, timesteps] mask has no meaning on a 2-D spatial grid");
  }
  Json get_config() const override {
    Json j = Layer::get_config();
    j["padding"] = Json::array({ints_json({pads_[0], pads_[1]}), ints_json({pads_[2], pads_[3]})});
    j["data_format"] = "channels_last";
    return j;
  }

 private:
  std::vector<int64_t> pads_;  // top, bottom, left, right
};

}  // namespace

LayerPtr Flatten(FlattenOptions o) { return std::make_shared<FlattenLayer>(std::move(o)); }
LayerPtr Reshape(std::vector<int64_t> target_shape, ReshapeOptions o) {
  return std::make_shared<ReshapeLayer>(std::move(target_shape), std::move(o));
}
LayerPtr Permute(std::vector<int64_t> dims, PermuteOptions o) {
  return std::make_shared<PermuteLayer>(std::move(dims), std::move(o));
}
LayerPtr ZeroPadding2D(Ints padding, ZeroPadding2DOptions o) {
  return std::make_shared<ZeroPadding2DLayer>(padding, std::move(o));
}

namespace detail {
void register_reshape_layers() {
  register_layer("Flatten", [](const Json& c) {
    check_data_format(c, "Flatten");
    return Flatten({.name = json_name(c)});
  });
  register_layer("Reshape", [](const Json& c) {
    return Reshape(c.at("target_shape").get<std::vector<int64_t>>(), {.name = json_name(c)});
  });
  register_layer("Permute", [](const Json& c) {
    return Permute(c.at("dims").get<std::vector<int64_t>>(), {.name = json_name(c)});
  });
  register_layer("ZeroPadding2D", [](const Json& c) {
    check_data_format(c, "ZeroPadding2D");
    Ints padding = 1;
    if (c.contains("padding")) {
      const Json& p = c.at("padding");
      if (p.is_array() && p.size() == 2 && p[0].is_array()) {
        // ((top, bottom), (left, right))
        padding = Ints({p[0].at(0).get<int64_t>(), p[0].at(1).get<int64_t>(),
                        p[1].at(0).get<int64_t>(), p[1].at(1).get<int64_t>()});
      } else {
        padding = json_ints(c, "padding", 1);
      }
    }
    return ZeroPadding2D(padding, {.name = json_name(c)});
  });
}
}  // namespace detail

}  // namespace lowbit::nn
