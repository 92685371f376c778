// Merge layers: Add, Multiply, Concatenate.
#include <algorithm>

#include "lowbit/nn/layers.h"
#include "lowbit/ops.h"
#include "nn/layer_registry.h"
#include "nn/layers_common.h"

namespace lowbit::nn {

namespace {

std::string shapes_str(const std::vector<Shape>& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + s[i].str();
  return out;
}

// Elementwise merge (Keras Merge): non-batch dims right-aligned, each pair equal, 1 or unknown.
class ElementwiseMergeLayer : public Layer {
 public:
  ElementwiseMergeLayer(bool multiply, MergeOptions o)
      : Layer(multiply ? "multiply" : "add", o.name), multiply_(multiply) {}
  std::string class_name() const override { return multiply_ ? "Multiply" : "Add"; }
  int num_inputs() const override { return -1; }

  void build(const std::vector<Shape>& s) override {
    int rank = 0;
    for (const Shape& x : s) {
      if (x.rank() < 1)
        LOWBIT_THROW(ShapeError, name_, " (", class_name(),
                     "): expected inputs with a batch dim but found shapes ", shapes_str(s));
      rank = std::max(rank, x.rank());
    }
    // Right-aligned non-batch dims (shorter inputs get size-1 dims after the batch dim).
    for (int d = 1; d < rank; ++d) {
      int64_t merged = 1;  // unknown dims are checked when the graph runs
      for (const Shape& x : s) {
        const int i = d - (rank - x.rank());
        if (i < 1 || x[i] == kUnknown || x[i] == 1) continue;
        if (merged != 1 && merged != x[i])
          LOWBIT_THROW(ShapeError, name_, " (", class_name(),
                       "): expected inputs whose non-batch dims are equal or 1 but found shapes ",
                       shapes_str(s));
        merged = x[i];
      }
    }
  }

  std::vector<Value> call(const std::vector<Value>& in, CallContext&) override {
    int rank = 0;
    for (const Value& v : in) rank = std::max(rank, v.rank());
    auto aligned = [&](Value v) {
      while (v.rank() < rank) v = ops::expand_dims(v, 1);
      return v;
    };
    Value y = aligned(in[0]);
    for (size_t i = 1; i < in.size(); ++i) y = multiply_ ? y * aligned(in[i]) : y + aligned(in[i]);
    return {y};
  }

  // Keras 3 (merging/base_merge.py): the logical OR of the input masks, and no mask when any
  // input has none (tf.keras and Keras <= 3.3 took the AND of the masks present).
  std::vector<Value> compute_mask(const std::vector<Value>& in, const std::vector<Value>& out,
                                  CallContext& ctx) override {
    Value m;
    for (size_t i = 0; i < in.size(); ++i) {
      const Value mi = ctx.input_mask(i);
      if (!mi.defined()) return detail::no_mask(out);
      m = m.defined() ? ops::logical_or(m, mi) : mi;
    }
    return {m};
  }

 private:
  bool multiply_;
};

class ConcatenateLayer : public Layer {
 public:
  explicit ConcatenateLayer(ConcatenateOptions o) : Layer("concatenate", o.name), axis_(o.axis) {}
  std::string class_name() const override { return "Concatenate"; }
  int num_inputs() const override { return -1; }

  void build(const std::vector<Shape>& s) override {
    const int rank = s[0].rank();
    if (axis_ < -rank || axis_ >= rank || rank < 1)
      LOWBIT_THROW(ValueError, name_, " (Concatenate): argument 'axis': expected an axis of rank-",
                   rank, " inputs but found ", axis_);
    const int axis = axis_ < 0 ? axis_ + rank : axis_;
    for (const Shape& x : s) {
      bool ok = x.rank() == rank;
      for (int d = 0; ok && d < rank; ++d)
        if (d != axis) ok = x[d] == kUnknown || s[0][d] == kUnknown || x[d] == s[0][d];
      if (!ok)
        LOWBIT_THROW(ShapeError, name_,
                     " (Concatenate): expected inputs of one rank whose dims match except on axis ",
                     axis_, " but found shapes ", shapes_str(s));
    }
  }

  std::vector<Value> call(const std::vector<Value>& in, CallContext&) override {
    if (in.size() == 1) return {in[0]};
    const int rank = in[0].rank();
    return {ops::concat(in, axis_ < 0 ? axis_ + rank : axis_)};
  }

  // Keras 3 (merging/concatenate.py): an input without a mask counts as all valid. Along the
  // time axis (1) the masks are concatenated; along any later axis a step is valid when it is
  // valid in any input (the OR). Concatenating along the batch axis with masks is refused.
  std::vector<Value> compute_mask(const std::vector<Value>& in, const std::vector<Value>& out,
                                  CallContext& ctx) override {
    bool any = false;
    for (size_t i = 0; i < in.size(); ++i) any = any || ctx.input_mask(i).defined();
    if (!any) return detail::no_mask(out);
    const int axis = axis_ < 0 ? axis_ + in[0].rank() : axis_;
    if (axis == 0)
      return detail::refuse_mask(*this, out, ctx, "it concatenates along the batch axis");
    std::vector<Value> masks;
    for (size_t i = 0; i < in.size(); ++i) {
      Value m = ctx.input_mask(i);
      if (!m.defined()) {
        // All valid: [B, T] taken from the input's first two dims.
        const int rank = in[i].rank();
        std::vector<int64_t> begin(rank, 0), end(rank, 1), squeeze;
        end[0] = end[1] = ops::kSliceMax;
        for (int d = 2; d < rank; ++d) squeeze.push_back(d);
        Value first = ops::slice(in[i], begin, end);
        if (!squeeze.empty()) first = ops::squeeze(first, squeeze);
        m = ops::cast(ops::fill_like(first, 1.0), DType::kBool);
      }
      masks.push_back(m);
    }
    if (axis == 1) return {in.size() == 1 ? masks[0] : ops::concat(masks, 1)};
    Value m = masks[0];
    for (size_t i = 1; i < masks.size(); ++i) m = ops::logical_or(m, masks[i]);
    return {m};
  }

  Json get_config() const override {
    Json j = Layer::get_config();
    j["axis"] = axis_;
    return j;
  }

 private:
  int axis_;
};

}  // namespace

LayerPtr Add(MergeOptions o) {
  return std::make_shared<ElementwiseMergeLayer>(false, std::move(o));
}
LayerPtr Multiply(MergeOptions o) {
  return std::make_shared<ElementwiseMergeLayer>(true, std::move(o));
}
LayerPtr Concatenate(ConcatenateOptions o) {
  return std::make_shared<ConcatenateLayer>(std::move(o));
}

namespace detail {
void register_merge_layers() {
  register_layer("Add", [](const Json& c) { return Add({.name = json_name(c)}); });
  register_layer("Multiply", [](const Json& c) { return Multiply({.name = json_name(c)}); });
  register_layer("Concatenate", [](const Json& c) {
    return Concatenate({.axis = c.value("axis", -1), .name = json_name(c)});
  });
}
}  // namespace detail

}  // namespace lowbit::nn
