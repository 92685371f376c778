// Recurrent layers (SimpleRNN, LSTM, GRU, Bidirectional): the Keras golden vectors of the rnn
// category (outputs, states, gradients w.r.t. x and every weight), masks reaching the layer
// through CallContext::input_masks, return_sequences / return_state / go_backwards, initial
// states, dropout in training mode only, Bidirectional merge modes, padding invariance, config
// round trips, training inside a model, and the errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>

#include "lowbit/nn/layers.h"
#include "lowbit/nn/model.h"
#include "lowbit/ops.h"
#include "testing/op_testing.h"

namespace lowbit::nn {
namespace {

using testing::expect_throws_with;
using testing::tensors_equal;
using testing::tensors_near;

// ---- golden files (schema: shared docs/spec/layer-semantics.md section 0) -----------------------

Json load_case(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw IoError("cannot open golden file " + path);
  return Json::parse(f);
}

Tensor tensor_from_json(const Json& j) {
  Shape shape(j.at("shape").get<std::vector<int64_t>>());
  const std::string dt = j.at("dtype").get<std::string>();
  const DType dtype = dt == "float32" ? DType::kF32 : dt == "bool" ? DType::kBool : DType::kS32;
  Tensor t(shape, dtype);
  const Json& data = j.at("data");
  EXPECT_EQ(static_cast<int64_t>(data.size()), t.numel());
  for (int64_t i = 0; i < t.numel(); ++i)
    t.set_from_double(i, static_cast<float>(data[i].get<double>()));
  return t;
}

Shape unknown_batch(const Shape& s) {
  Shape u = s;
  u[0] = kUnknown;
  return u;
}
Shape without_batch(const Shape& s) {
  return Shape(std::vector<int64_t>(s.dims().begin() + 1, s.dims().end()));
}

// Output names of a recurrent layer's results, in order.
std::vector<std::string> output_names(const Layer& layer, size_t n) {
  std::vector<std::string> names{"output"};
  if (n > 1) names.push_back("state_h");
  if (n > 2)
    names.push_back(layer.class_name() == "LSTM" ? "state_c" : "state_" + std::to_string(n));
  return names;
}

bool is_recurrent(const std::string& cls) {
  return cls == "LSTM" || cls == "GRU" || cls == "SimpleRNN" || cls == "Bidirectional";
}

// Runs one golden case of a recurrent layer: builds the layer from its config, sets the
// weights, traces it with the mask in ctx.input_masks (batch unknown), compares outputs and,
// with `grad`, the gradients of L = sum_k sum(output_k * cotangent_k). A Sequential model
// [Masking, recurrent layer] is run the same way, with the Masking layer's mask and zeroed
// steps computed here (masks do not propagate through models yet). Returns false for a case
// this runner does not know how to feed (reported, not failed).
bool run_rnn_case(const std::string& path) {
  SCOPED_TRACE(path);
  const Json c = load_case(path);
  EXPECT_EQ(c.value("schema", ""), "keras-golden/1");
  Json layer_json = c.at("layer");
  std::optional<double> mask_value;  // a Masking layer in front
  if (!is_recurrent(layer_json.at("class_name").get<std::string>())) {
    const Json& cfg = layer_json.value("config", Json::object());
    Json rnn;
    bool ok = cfg.contains("layers") && cfg.at("layers").is_array();
    for (size_t i = 0; ok && i < cfg.at("layers").size(); ++i) {
      const Json& l = cfg.at("layers")[i];
      const std::string k = l.value("class_name", "");
      if (k == "InputLayer") continue;
      if (k == "Masking" && rnn.is_null() && !mask_value) {
        mask_value = l.value("config", Json::object()).value("mask_value", 0.0);
      } else if (is_recurrent(k) && rnn.is_null()) {
        rnn = l;
      } else {
        ok = false;
      }
    }
    if (!ok || rnn.is_null()) {
      std::cout << "[ note ] " << path << ": layer " << layer_json.at("class_name")
                << " is not a recurrent layer nor [Masking, recurrent layer]; not run here\n";
      return false;
    }
    layer_json = rnn;
  }
  const std::string cls = layer_json.at("class_name").get<std::string>();
  const double atol = c.contains("tolerance") ? c["tolerance"].value("atol", 2e-5) : 2e-5;
  const double rtol = c.contains("tolerance") ? c["tolerance"].value("rtol", 1e-4) : 1e-4;
  reset_layer_names();
  LayerPtr layer = layer_from_config(layer_json);
  const Json& inputs = c.at("inputs");
  Tensor x = tensor_from_json(inputs.at("x"));
  Tensor mask = inputs.contains("mask") ? tensor_from_json(inputs.at("mask")) : Tensor();
  if (mask_value) {
    // Masking: a step is masked when every feature equals mask_value; its features become 0.
    const int64_t steps = x.dim(0) * x.dim(1), f = x.dim(2);
    Tensor m({x.dim(0), x.dim(1)}, DType::kBool);
    x = x.clone();
    for (int64_t r = 0; r < steps; ++r) {
      bool valid = false;
      for (int64_t k = 0; k < f; ++k) valid |= x.data<float>()[r * f + k] != *mask_value;
      valid &= !mask.defined() || mask.get_as_double(r) != 0;
      m.data<bool>()[r] = valid;
      if (!valid) std::fill_n(x.data<float>() + r * f, f, 0.0f);
    }
    mask = m;
  }
  std::vector<Tensor> states;
  for (const auto& [key, value] : inputs.items()) {
    if (key == "x" || key == "mask") continue;
    if (key == "initial_state" && value.is_array()) {
      for (const Json& s : value) states.push_back(tensor_from_json(s));
    } else {
      ADD_FAILURE() << "unknown input '" << key << "'";
      return false;
    }
  }
  Graph g;
  CallContext ctx(g, c.contains("call") ? c["call"].value("training", false) : false);
  Value xv = g.placeholder("x", DType::kF32, unknown_batch(x.shape()));
  std::vector<std::pair<Value, Tensor>> feeds{{xv, x}};
  if (mask.defined()) {
    Value mv = g.placeholder("mask", mask.dtype(), unknown_batch(mask.shape()));
    ctx.input_masks = {mv};
    feeds.emplace_back(mv, mask);
  }
  std::vector<Value> in{xv};
  for (size_t i = 0; i < states.size(); ++i) {
    in.push_back(
        g.placeholder("s" + std::to_string(i), DType::kF32, unknown_batch(states[i].shape())));
    feeds.emplace_back(in.back(), states[i]);
  }
  // Build, then copy the weights in (Keras get_weights() order).
  {
    std::vector<KTensor> kin{Input(without_batch(x.shape()))};
    for (const Tensor& s : states) kin.push_back(Input(without_batch(s.shape())));
    (void)(*layer)(kin);
  }
  const Json& ws = c.at("weights");
  EXPECT_EQ(layer->weights().size(), ws.size());
  if (layer->weights().size() != ws.size()) return true;
  for (size_t i = 0; i < ws.size(); ++i) {
    Weight& w = layer->weights()[i];
    if (cls != "Bidirectional") {
      EXPECT_EQ(w.name, ws[i].at("name").get<std::string>()) << "weight " << i;
    }
    Tensor t = tensor_from_json(ws[i]);
    EXPECT_EQ(w.value.shape(), t.shape()) << "weight " << w.name;
    if (w.value.shape() != t.shape()) return true;
    w.value.copy_from(t);
  }
  std::vector<Value> outs = layer->apply(in, ctx);
  const std::vector<std::string> names = output_names(*layer, outs.size());
  std::vector<Value> fetches = outs;
  if (c.contains("grad")) {
    std::vector<Value> ys, cots;
    for (const Json& cot : c["grad"].at("cotangents")) {
      const std::string name = cot.value("for", "output");
      const auto it = std::find(names.begin(), names.end(), name);
      EXPECT_NE(it, names.end()) << "cotangent for unknown output " << name;
      if (it == names.end()) return true;
      ys.push_back(outs[it - names.begin()]);
      cots.push_back(g.constant(tensor_from_json(cot)));
    }
    std::vector<Value> wrt{xv};
    for (size_t i = 1; i < in.size(); ++i) wrt.push_back(in[i]);  // initial states
    for (const Weight& w : layer->weights()) {
      wrt.push_back(ctx.bound(w));
    }
    std::vector<Value> grads = gradients(ys, wrt, cots);
    fetches.insert(fetches.end(), grads.begin(), grads.end());
  }
  Executor ex(g, fetches, ctx.updates());
  std::vector<Tensor> got = ex.run(feeds);
  int checked = 0;
  for (const auto& [key, value] : c.at("outputs").items()) {
    const auto it = std::find(names.begin(), names.end(), key);
    EXPECT_NE(it, names.end()) << "unknown output " << key;
    if (it == names.end()) continue;
    EXPECT_TRUE(tensors_near(got[it - names.begin()], tensor_from_json(value), atol, rtol)) << key;
    ++checked;
  }
  EXPECT_GE(checked, 1);
  if (c.contains("grad")) {
    const Json& gr = c["grad"];
    const size_t base = outs.size();
    if (gr.contains("d_inputs") && gr["d_inputs"].contains("x")) {
      EXPECT_TRUE(tensors_near(got[base], tensor_from_json(gr["d_inputs"]["x"]), atol, rtol))
          << "d x";
    }
    if (gr.contains("d_inputs") && gr["d_inputs"].contains("initial_state")) {
      const Json& ds = gr["d_inputs"]["initial_state"];
      EXPECT_EQ(ds.size(), states.size());
      for (size_t i = 0; i < ds.size() && i < states.size(); ++i)
        EXPECT_TRUE(tensors_near(got[base + 1 + i], tensor_from_json(ds[i]), atol, rtol))
            << "d initial_state " << i;
    }
    if (gr.contains("d_weights")) {
      const Json& dw = gr["d_weights"];
      const size_t w0 = base + 1 + states.size();
      EXPECT_EQ(dw.size(), layer->weights().size());
      for (size_t i = 0; i < dw.size() && i < layer->weights().size(); ++i)
        EXPECT_TRUE(tensors_near(got[w0 + i], tensor_from_json(dw[i]), atol, rtol))
            << "d " << dw[i].value("name", "?");
    }
  }
  return true;
}

std::string golden(const std::string& name) {
  return testing::shared_dir() + "/testdata/keras/" + name + ".json";
}

TEST(RnnGolden, LstmMaskedSequenceWithStates) { run_rnn_case(golden("dev_lstm_mask_seq")); }
TEST(RnnGolden, LstmUnmaskedLastOutput) { run_rnn_case(golden("dev_lstm_nomask_last")); }
TEST(RnnGolden, GruV1MaskedLastOutput) { run_rnn_case(golden("dev_gru_v1_mask_last")); }
TEST(RnnGolden, GruResetAfterMaskedLastOutput) {
  run_rnn_case(golden("dev_gru_reset_after_mask_last"));
}

// The [Masking, recurrent layer] path of the runner, on a case rebuilt from dev_lstm_mask_seq:
// the masked steps' garbage becomes zeros and the mask comes from Masking(0).
TEST(RnnGolden, MaskingInFrontOfTheLayer) {
  Json c = load_case(golden("dev_lstm_mask_seq"));
  const Tensor mask = tensor_from_json(c["inputs"]["mask"]);
  Json& x = c["inputs"]["x"];
  const int64_t f = x["shape"][2].get<int64_t>();
  for (int64_t r = 0; r < mask.numel(); ++r)
    if (mask.get_as_double(r) == 0)
      for (int64_t k = 0; k < f; ++k) x["data"][r * f + k] = 0.0;
  c["inputs"].erase("mask");
  c["layer"] = {
      {"class_name", "Sequential"},
      {"config",
       {{"layers", Json::array({{{"class_name", "Masking"}, {"config", {{"mask_value", 0.0}}}},
                                c["layer"]})}}}};
  const std::string path =
      (std::filesystem::temp_directory_path() / "lowbit_rnn_masking_case.json").string();
  std::ofstream(path) << c.dump();
  EXPECT_TRUE(run_rnn_case(path));
  std::filesystem::remove(path);
}

// Every rnn-category file of the directory (a held-out set in $LOWBIT_SHARED_DIR included).
TEST(RnnGolden, EveryRnnCaseInTheDirectory) {
  std::vector<std::string> files;
  for (const auto& e :
       std::filesystem::directory_iterator(testing::shared_dir() + "/testdata/keras"))
    if (e.path().extension() == ".json" && e.path().filename() != "manifest.json")
      files.push_back(e.path());
  std::sort(files.begin(), files.end());
  int ran = 0;
  for (const std::string& f : files) {
    const Json c = load_case(f);
    if (c.value("category", "") != "rnn") continue;
    ran += run_rnn_case(f);
  }
  EXPECT_GE(ran, 4);
}

// ---- tracing helpers ------------------------------------------------------------------------

struct Traced {
  std::vector<Tensor> out;
};

// [?, ?, ...]: batch and time unknown, so one layer runs on sequences of any length.
Shape unknown_batch_time(const Shape& s) {
  Shape u = unknown_batch(s);
  if (u.rank() > 1) u[1] = kUnknown;
  return u;
}

// Applies `layer` to x (and states) with an optional mask, in a fresh graph; batch and time
// unknown.
std::vector<Tensor> run_layer(Layer& layer, const Tensor& x, const Tensor& mask = Tensor(),
                              const std::vector<Tensor>& states = {}, bool training = false,
                              Tensor rng_state = Tensor()) {
  Graph g;
  CallContext ctx(g, training, rng_state);
  Value xv = g.placeholder("x", DType::kF32, unknown_batch_time(x.shape()));
  std::vector<std::pair<Value, Tensor>> feeds{{xv, x}};
  if (mask.defined()) {
    Value mv = g.placeholder("mask", mask.dtype(), unknown_batch_time(mask.shape()));
    ctx.input_masks = {mv};
    feeds.emplace_back(mv, mask);
  }
  std::vector<Value> in{xv};
  for (size_t i = 0; i < states.size(); ++i) {
    in.push_back(
        g.placeholder("s" + std::to_string(i), DType::kF32, unknown_batch(states[i].shape())));
    feeds.emplace_back(in.back(), states[i]);
  }
  std::vector<Value> outs = layer.apply(in, ctx);
  Executor ex(g, outs, ctx.updates());
  return ex.run(feeds);
}

Tensor random_x(const Shape& s, uint64_t seed) {
  Rng rng(seed);
  return testing::random_tensor(s, rng, -1.0f, 1.0f);
}

Tensor mask_of(const std::vector<std::vector<int>>& rows) {
  const int64_t B = static_cast<int64_t>(rows.size()), T = static_cast<int64_t>(rows[0].size());
  Tensor m({B, T}, DType::kBool);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) m.data<bool>()[b * T + t] = rows[b][t] != 0;
  return m;
}

Tensor rows(const Tensor& t, int64_t b0, int64_t b1) {
  std::vector<int64_t> d = t.shape().dims();
  const int64_t per = t.numel() / d[0];
  d[0] = b1 - b0;
  Tensor r(Shape(d), t.dtype());
  std::memcpy(r.raw(), static_cast<const char*>(t.raw()) + b0 * per * dtype_size(t.dtype()),
              r.nbytes());
  return r;
}

// ---- shapes, outputs, states -----------------------------------------------------------------

TEST(RnnLayers, OutputShapesAndWeights) {
  struct C {
    LayerPtr layer;
    std::vector<Shape> out;
    std::vector<Shape> weights;
  };
  std::vector<C> cases{
      {LSTM(8), {{kUnknown, 8}}, {{5, 32}, {8, 32}, {32}}},
      {LSTM(8, {.return_sequences = true, .return_state = true}),
       {{kUnknown, 7, 8}, {kUnknown, 8}, {kUnknown, 8}},
       {{5, 32}, {8, 32}, {32}}},
      {GRU(4), {{kUnknown, 4}}, {{5, 12}, {4, 12}, {2, 12}}},
      {GRU(4, {.reset_after = false, .return_state = true}),
       {{kUnknown, 4}, {kUnknown, 4}},
       {{5, 12}, {4, 12}, {12}}},
      {SimpleRNN(3, {.use_bias = false, .return_sequences = true}),
       {{kUnknown, 7, 3}},
       {{5, 3}, {3, 3}}},
      {Bidirectional(LSTM(8, {.return_sequences = true})),
       {{kUnknown, 7, 16}},
       {{5, 32}, {8, 32}, {32}, {5, 32}, {8, 32}, {32}}},
      {Bidirectional(GRU(4, {.return_state = true}), {.merge_mode = "sum"}),
       {{kUnknown, 4}, {kUnknown, 4}, {kUnknown, 4}},
       {{5, 12}, {4, 12}, {2, 12}, {5, 12}, {4, 12}, {2, 12}}},
      {Bidirectional(SimpleRNN(3, {.return_sequences = true}), {.merge_mode = "none"}),
       {{kUnknown, 7, 3}, {kUnknown, 7, 3}},
       {{5, 3}, {3, 3}, {3}, {5, 3}, {3, 3}, {3}}},
  };
  for (C& c : cases) {
    SCOPED_TRACE(c.layer->class_name());
    std::vector<KTensor> out = (*c.layer)(std::vector<KTensor>{Input({7, 5})});
    ASSERT_EQ(out.size(), c.out.size());
    for (size_t i = 0; i < out.size(); ++i) EXPECT_EQ(out[i].shape(), c.out[i]) << i;
    ASSERT_EQ(c.layer->weights().size(), c.weights.size());
    for (size_t i = 0; i < c.weights.size(); ++i)
      EXPECT_EQ(c.layer->weights()[i].value.shape(), c.weights[i]) << i;
  }
}

TEST(RnnLayers, KerasInitialisation) {
  auto lstm = LSTM(4);
  (void)(*lstm)(Input({3, 2}));
  const Tensor& b = lstm->weights()[2].value;
  for (int64_t i = 0; i < 16; ++i) EXPECT_EQ(b.data<float>()[i], i >= 4 && i < 8 ? 1.0f : 0.0f);
  // The orthogonal recurrent kernel [4, 16] has orthonormal rows.
  const Tensor& r = lstm->weights()[1].value;
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {
      double dot = 0;
      for (int k = 0; k < 16; ++k) dot += r.data<float>()[i * 16 + k] * r.data<float>()[j * 16 + k];
      EXPECT_NEAR(dot, i == j ? 1.0 : 0.0, 1e-5);
    }
  auto no_forget = LSTM(4, {.unit_forget_bias = false});
  (void)(*no_forget)(Input({3, 2}));
  for (float v : no_forget->weights()[2].value.span<float>()) EXPECT_EQ(v, 0.0f);
}

// return_sequences=False gives the last step of return_sequences=True; return_state's h is the
// last output; go_backwards equals running on the time-reversed input.
TEST(RnnLayers, SequencesLastOutputStatesAndGoBackwards) {
  const Tensor x = random_x({3, 6, 4}, 1);
  for (const char* cls : {"LSTM", "GRU", "SimpleRNN"}) {
    SCOPED_TRACE(cls);
    auto make = [&](bool seq, bool back) {
      Json cfg = {{"class_name", cls},
                  {"config",
                   {{"units", 5},
                    {"return_sequences", seq},
                    {"return_state", true},
                    {"go_backwards", back}}}};
      return layer_from_config(cfg);
    };
    LayerPtr seq = make(true, false);
    std::vector<Tensor> a = run_layer(*seq, x);
    LayerPtr last = make(false, false);
    (void)(*last)(std::vector<KTensor>{Input({6, 4})});
    for (size_t i = 0; i < seq->weights().size(); ++i)
      last->weights()[i].value.copy_from(seq->weights()[i].value);
    std::vector<Tensor> b = run_layer(*last, x);
    Tensor a_last = ops::reshape(ops::slice(a[0], {0, 5}, {3, 6}), {3, 5});
    EXPECT_TRUE(tensors_equal(b[0], a_last));
    EXPECT_TRUE(tensors_equal(b[1], a_last));  // h
    // go_backwards: the output sequence is in processing order (reversed w.r.t. the input).
    LayerPtr back = make(true, true);
    (void)(*back)(std::vector<KTensor>{Input({6, 4})});
    for (size_t i = 0; i < seq->weights().size(); ++i)
      back->weights()[i].value.copy_from(seq->weights()[i].value);
    Tensor x_rev = ops::slice(x, {0, ops::kSliceMax}, {ops::kSliceMax, ops::kSliceMin}, {1, -1});
    std::vector<Tensor> c = run_layer(*back, x);
    std::vector<Tensor> d = run_layer(*seq, x_rev);
    for (size_t i = 0; i < c.size(); ++i) EXPECT_TRUE(tensors_equal(c[i], d[i])) << i;
  }
}

TEST(RnnLayers, InitialStatesAreExtraInputs) {
  const Tensor x = random_x({2, 4, 3}, 2);
  auto lstm = LSTM(5, {.return_state = true});
  const Tensor h0 = random_x({2, 5}, 3), c0 = random_x({2, 5}, 4);
  std::vector<Tensor> zero = run_layer(*lstm, x);
  std::vector<Tensor> with = run_layer(*lstm, x, Tensor(), {h0, c0});
  EXPECT_FALSE(tensors_near(zero[0], with[0], 1e-3, 0));
  std::vector<Tensor> zeros_given =
      run_layer(*lstm, x, Tensor(), {Tensor::zeros({2, 5}), Tensor::zeros({2, 5})});
  for (size_t i = 0; i < zero.size(); ++i) EXPECT_TRUE(tensors_equal(zeros_given[i], zero[i]));
  // A fully masked row returns its initial states and a zero output.
  std::vector<Tensor> masked = run_layer(*lstm, x, mask_of({{0, 0, 0, 0}, {1, 1, 0, 1}}), {h0, c0});
  for (int u = 0; u < 5; ++u) {
    EXPECT_EQ(masked[0].data<float>()[u], 0.0f);
    EXPECT_EQ(masked[1].data<float>()[u], h0.data<float>()[u]);
    EXPECT_EQ(masked[2].data<float>()[u], c0.data<float>()[u]);
  }
  expect_throws_with<ValueError>([&] { run_layer(*lstm, x, Tensor(), {h0}); },
                                 "expected 1 input (x) or 3");
  expect_throws_with<ShapeError>(
      [&] {
        run_layer(*lstm, x, Tensor(), {Tensor::zeros({2, 4}), c0});
      },
      "initial state 0");
}

// ---- masks ------------------------------------------------------------------------------------

// A masked batch row equals the same sequence run alone without its masked steps (holes in the
// middle and at the end), for every cell, and garbage at masked steps does not matter.
TEST(RnnLayers, MaskedStepsAreSkipped) {
  const std::vector<std::vector<int>> m = {
      {1, 0, 1, 1, 0, 1}, {1, 1, 1, 0, 0, 0}, {0, 0, 0, 0, 0, 0}};
  for (const char* cls : {"LSTM", "GRU", "SimpleRNN"}) {
    SCOPED_TRACE(cls);
    LayerPtr layer = layer_from_config({{"class_name", cls}, {"config", {{"units", 4}}}});
    Tensor x = random_x({3, 6, 3}, 5);
    for (int64_t b = 0; b < 3; ++b)
      for (int64_t t = 0; t < 6; ++t)
        if (!m[b][t])
          for (int64_t f = 0; f < 3; ++f) x.data<float>()[(b * 6 + t) * 3 + f] = NAN;
    std::vector<Tensor> y = run_layer(*layer, x, mask_of(m));
    for (float v : y[0].span<float>()) EXPECT_TRUE(std::isfinite(v));
    for (int64_t b = 0; b < 2; ++b) {
      std::vector<float> kept;
      for (int64_t t = 0; t < 6; ++t)
        if (m[b][t])
          for (int64_t f = 0; f < 3; ++f) kept.push_back(x.data<float>()[(b * 6 + t) * 3 + f]);
      const int64_t n = static_cast<int64_t>(kept.size()) / 3;
      Tensor alone = Tensor::from_vector<float>(kept, {1, n, 3});
      std::vector<Tensor> ya = run_layer(*layer, alone);
      EXPECT_TRUE(tensors_near(rows(y[0], b, b + 1), ya[0], 1e-6, 1e-5)) << "row " << b;
    }
    for (int u = 0; u < 4; ++u) EXPECT_EQ(y[0].data<float>()[2 * 4 + u], 0.0f);
  }
}

// The same sequence gives the same output whatever it is padded to and whatever else shares
// its batch.
TEST(RnnLayers, VariableLengthBatchIsPaddingInvariant) {
  auto lstm = LSTM(6, {.return_sequences = false});
  const Tensor seq = random_x({1, 5, 3}, 6);
  std::vector<Tensor> alone = run_layer(*lstm, seq);
  for (int64_t pad : {5, 9, 17}) {
    const int64_t B = 4;
    Tensor x = random_x({B, pad, 3}, 7 + pad);
    std::vector<std::vector<int>> m(B, std::vector<int>(pad, 0));
    for (int64_t t = 0; t < 5; ++t) {
      for (int64_t f = 0; f < 3; ++f)
        x.data<float>()[(2 * pad + t) * 3 + f] = seq.data<float>()[t * 3 + f];
      m[2][t] = 1;
    }
    for (int64_t b : {0, 1, 3})
      for (int64_t t = 0; t < pad; ++t) m[b][t] = (t * 7 + b) % 3 != 0;
    std::vector<Tensor> y = run_layer(*lstm, x, mask_of(m));
    EXPECT_TRUE(tensors_equal(rows(y[0], 2, 3), alone[0])) << "padded to " << pad;
  }
}

TEST(RnnLayers, MaskErrors) {
  // Known time dims: the layer checks the mask when it is traced.
  auto trace = [](const Shape& mask_shape, DType dtype) {
    Graph g;
    CallContext ctx(g, false);
    ctx.input_masks = {g.placeholder("mask", dtype, mask_shape)};
    LSTM(3)->apply({g.placeholder("x", DType::kF32, {kUnknown, 4, 3})}, ctx);
  };
  trace({kUnknown, 4}, DType::kBool);
  trace({kUnknown, 4}, DType::kF32);
  expect_throws_with<ShapeError>(
      [&] {
        trace({kUnknown, 3}, DType::kBool);
      },
      "(LSTM): mask: expected shape [batch, timesteps] matching x [?,4,3] but found [?,3]");
  expect_throws_with<ShapeError>(
      [&] {
        trace({kUnknown, 4, 1}, DType::kBool);
      },
      "mask: expected shape [batch, timesteps]");
  expect_throws_with<DTypeError>(
      [&] {
        trace({kUnknown, 4}, DType::kS32);
      },
      "mask: expected dtype bool or f32 but found s32");
  expect_throws_with<ShapeError>(
      [&] {
        run_layer(*LSTM(3), random_x({2, 3}, 1));
      },
      "expected rank 3 [batch, timesteps, features]");
}

// ---- dropout ----------------------------------------------------------------------------------

TEST(RnnLayers, DropoutOnlyInTrainingAndSharedOverTime) {
  const Tensor x = random_x({1, 5, 3}, 9);
  auto lstm = LSTM(4, {.dropout = 0.5, .return_sequences = true});
  std::vector<Tensor> inf = run_layer(*lstm, x);
  auto plain = LSTM(4, {.return_sequences = true});
  (void)(*plain)(Input({5, 3}));
  for (size_t i = 0; i < 3; ++i) plain->weights()[i].value.copy_from(lstm->weights()[i].value);
  EXPECT_TRUE(tensors_equal(inf[0], run_layer(*plain, x)[0]));
  std::vector<Tensor> tr = run_layer(*lstm, x, Tensor(), {}, true);
  EXPECT_FALSE(tensors_near(tr[0], inf[0], 1e-4, 0));
  // One mask per (batch row, feature) shared by every step: some mask in {0, 2}^3 reproduces
  // the training output on the unmasked layer.
  int matches = 0;
  for (int bits = 0; bits < 8; ++bits) {
    Tensor xm = x.clone();
    for (int64_t t = 0; t < 5; ++t)
      for (int64_t f = 0; f < 3; ++f) xm.data<float>()[t * 3 + f] *= (bits >> f) & 1 ? 2.0f : 0.0f;
    matches += tensors_near(run_layer(*plain, xm)[0], tr[0], 1e-6, 1e-5) ? 1 : 0;
  }
  EXPECT_EQ(matches, 1);
  // Another step draws another mask (deterministic per step).
  Tensor step = Tensor::full({}, 1.0, DType::kS64);
  EXPECT_TRUE(tensors_equal(run_layer(*lstm, x, Tensor(), {}, true)[0], tr[0]));
  EXPECT_FALSE(tensors_equal(run_layer(*lstm, x, Tensor(), {}, true, step)[0], tr[0]));
}

TEST(RnnLayers, RecurrentDropoutLeavesTheFirstStepAlone) {
  // h0 = 0, so the recurrent mask cannot change step 0; it changes later steps.
  const Tensor x = random_x({2, 4, 3}, 10);
  for (const char* cls : {"LSTM", "GRU", "SimpleRNN"}) {
    SCOPED_TRACE(cls);
    LayerPtr l = layer_from_config(
        {{"class_name", cls},
         {"config", {{"units", 6}, {"recurrent_dropout", 0.5}, {"return_sequences", true}}}});
    std::vector<Tensor> inf = run_layer(*l, x);
    std::vector<Tensor> tr = run_layer(*l, x, Tensor(), {}, true);
    EXPECT_TRUE(tensors_near(ops::slice(tr[0], {0, 0}, {2, 1}), ops::slice(inf[0], {0, 0}, {2, 1}),
                             1e-6, 1e-5));
    EXPECT_FALSE(tensors_near(ops::slice(tr[0], {0, 1}, {2, 4}), ops::slice(inf[0], {0, 1}, {2, 4}),
                              1e-4, 0));
  }
}

// ---- Bidirectional ------------------------------------------------------------------------------

TEST(RnnLayers, BidirectionalMergeModes) {
  const Tensor x = random_x({2, 5, 3}, 11);
  const Tensor mask = mask_of({{1, 1, 0, 1, 0}, {0, 1, 1, 1, 1}});
  auto base = Bidirectional(GRU(4, {.return_sequences = true}), {.merge_mode = "none"});
  std::vector<Tensor> sep = run_layer(*base, x, mask);
  ASSERT_EQ(sep.size(), 2u);
  // The backward half equals a go_backwards GRU with the same weights, flipped back, with zero
  // outputs at masked steps.
  auto back =
      GRU(4, {.return_sequences = true, .go_backwards = true, .zero_output_for_mask = true});
  (void)(*back)(Input({5, 3}));
  for (size_t i = 0; i < 3; ++i) back->weights()[i].value.copy_from(base->weights()[3 + i].value);
  Tensor flipped = ops::slice(run_layer(*back, x, mask)[0], {0, ops::kSliceMax},
                              {ops::kSliceMax, ops::kSliceMin}, {1, -1});
  EXPECT_TRUE(tensors_equal(sep[1], flipped));
  for (int64_t u = 0; u < 4; ++u) {
    EXPECT_EQ(sep[0].data<float>()[(0 * 5 + 2) * 4 + u], 0.0f);  // masked step: zeros
    EXPECT_EQ(sep[1].data<float>()[(1 * 5 + 0) * 4 + u], 0.0f);
  }
  for (const std::string mode : {"concat", "sum", "mul", "ave"}) {
    SCOPED_TRACE(mode);
    Json cfg = layer_to_config(*base);
    cfg["config"]["merge_mode"] = mode;
    LayerPtr l = layer_from_config(cfg);
    (void)(*l)(Input({5, 3}));
    for (size_t i = 0; i < 6; ++i) l->weights()[i].value.copy_from(base->weights()[i].value);
    Tensor y = run_layer(*l, x, mask)[0];
    Tensor want = mode == "concat" ? ops::concat(sep, -1)
                  : mode == "sum"  ? sep[0] + sep[1]
                  : mode == "mul"  ? sep[0] * sep[1]
                                   : (sep[0] + sep[1]) * 0.5;
    EXPECT_TRUE(tensors_equal(y, want));
  }
  expect_throws_with<ValueError>([] { Bidirectional(LSTM(2), {.merge_mode = "max"}); },
                                 "merge_mode");
  expect_throws_with<ValueError>([] { Bidirectional(Dense(2)); }, "expected a SimpleRNN, LSTM");
  expect_throws_with<ValueError>([] { Bidirectional(LSTM(2, {.go_backwards = true})); },
                                 "must differ in go_backwards");
  expect_throws_with<ValueError>(
      [] {
        Bidirectional(
            LSTM(2), {.backward_layer = LSTM(2, {.return_sequences = true, .go_backwards = true})});
      },
      "must agree");
}

TEST(RnnLayers, BidirectionalLastOutputAndStates) {
  const Tensor x = random_x({2, 4, 3}, 12);
  auto bi = Bidirectional(LSTM(3, {.return_state = true}));
  std::vector<Tensor> out = run_layer(*bi, x);
  ASSERT_EQ(out.size(), 5u);  // merged, forward h, c, backward h, c
  EXPECT_EQ(out[0].shape(), Shape({2, 6}));
  // Forward half of the concat = forward h; backward half = backward h.
  EXPECT_TRUE(tensors_equal(ops::slice(out[0], {0, 0}, {2, 3}), out[1]));
  EXPECT_TRUE(tensors_equal(ops::slice(out[0], {0, 3}, {2, 6}), out[3]));
  // Initial states: first half forward, second half backward.
  std::vector<Tensor> s = {random_x({2, 3}, 1), random_x({2, 3}, 2), random_x({2, 3}, 3),
                           random_x({2, 3}, 4)};
  std::vector<Tensor> with = run_layer(*bi, x, Tensor(), s);
  EXPECT_FALSE(tensors_near(with[0], out[0], 1e-4, 0));
}

// ---- configs -------------------------------------------------------------------------------

TEST(RnnLayers, ConfigRoundTrips) {
  std::vector<LayerPtr> layers{
      LSTM(4, {.activation = "relu",
               .unit_forget_bias = false,
               .dropout = 0.25,
               .return_sequences = true,
               .go_backwards = true,
               .seed = 3}),
      GRU(3, {.recurrent_activation = "hard_sigmoid", .reset_after = false, .return_state = true}),
      SimpleRNN(5, {.use_bias = false, .recurrent_dropout = 0.1, .zero_output_for_mask = true}),
      Bidirectional(LSTM(2, {.return_sequences = true}), {.merge_mode = "ave"}),
      Bidirectional(GRU(2), {.merge_mode = "none"}),
  };
  const Tensor x = random_x({2, 4, 3}, 13);
  const Tensor mask = mask_of({{1, 0, 1, 1}, {1, 1, 1, 0}});
  for (const LayerPtr& l : layers) {
    SCOPED_TRACE(l->class_name());
    std::vector<Tensor> y = run_layer(*l, x, mask);
    const Json cfg = layer_to_config(*l);
    LayerPtr copy = layer_from_config(Json::parse(cfg.dump()));
    EXPECT_EQ(layer_to_config(*copy), cfg) << cfg.dump();
    (void)run_layer(*copy, x, mask);
    ASSERT_EQ(copy->weights().size(), l->weights().size());
    for (size_t i = 0; i < l->weights().size(); ++i) {
      EXPECT_EQ(copy->weights()[i].name, l->weights()[i].name);
      copy->weights()[i].value.copy_from(l->weights()[i].value);
    }
    std::vector<Tensor> y2 = run_layer(*copy, x, mask);
    ASSERT_EQ(y2.size(), y.size());
    for (size_t i = 0; i < y.size(); ++i) EXPECT_TRUE(tensors_equal(y2[i], y[i]));
  }
  expect_throws_with<ValueError>(
      [] {
        layer_from_config({{"class_name", "LSTM"}, {"config", {{"units", 2}, {"stateful", true}}}});
      },
      "'stateful': true is not supported");
  expect_throws_with<ValueError>([] { LSTM(2, {.activation = "gelu"}); },
                                 "LSTM: argument 'activation'");
  expect_throws_with<ValueError>([] { GRU(0); }, "GRU: argument 'units'");
  expect_throws_with<ValueError>([] { SimpleRNN(2, {.dropout = 1.5}); }, "'dropout'");
}

// ---- inside models ---------------------------------------------------------------------------

TEST(RnnLayers, TrainsInsideAModel) {
  set_random_seed(5);
  // Classify whether the sum of the first feature over time is positive.
  Rng rng(6);
  Tensor x = testing::random_tensor({64, 6, 2}, rng, -1.0f, 1.0f);
  Tensor y({64}, DType::kS64);
  for (int64_t b = 0; b < 64; ++b) {
    double s = 0;
    for (int64_t t = 0; t < 6; ++t) s += x.data<float>()[(b * 6 + t) * 2];
    y.data<int64_t>()[b] = s > 0;
  }
  auto model = Sequential::create(
      {InputSpec({6, 2}), Bidirectional(LSTM(8, {.return_sequences = true})), GRU(8), Dense(2)});
  model->compile({.optimizer = Adam({.learning_rate = 0.02}),
                  .loss = SparseCategoricalCrossentropy({.from_logits = true}),
                  .metrics = {"accuracy"}});
  History h = model->fit(x, y, {.epochs = 25, .batch_size = 16, .verbose = 0});
  EXPECT_LT(h.history.at("loss").back(), 0.5 * h.history.at("loss").front());
  // Keras parameter counts: Bidirectional(LSTM(8)) on 2 features 2 * (4*8*(2+8) + 32) = 704,
  // GRU(8) on 16 features 3*8*(16+8) + 2*24 = 624.
  const std::string s = model->summary();
  EXPECT_NE(s.find("704"), std::string::npos) << s;
  EXPECT_NE(s.find("624"), std::string::npos) << s;
  // Save and load: the same weights (the Bidirectional ones under bidirectional/forward_...).
  const std::string path =
      (std::filesystem::temp_directory_path() / "lowbit_rnn_model.lbm").string();
  model->save(path);
  auto loaded = load_model(path);
  EXPECT_TRUE(tensors_equal(loaded->predict(x), model->predict(x)));
  EXPECT_EQ(loaded->summary(), s);
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace lowbit::nn
