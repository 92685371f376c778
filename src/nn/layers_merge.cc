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
