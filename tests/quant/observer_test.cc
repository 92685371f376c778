// Tests of the PyTorch observers (include/lowbit/quant/observer.h): the torch_observer golden
// cases of ../shared/testdata/fakequant_examples.json (torch 1.13), the qparams rules of
// quantization-semantics.md 4.2 by hand, and an observer updated inside a graph.
#include "lowbit/quant/observer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "lowbit/graph.h"
#include "lowbit/ops.h"
#include "testing/op_testing.h"

namespace lowbit {
namespace {

using json = nlohmann::json;
using quant::ObserverConfig;
using quant::ObserverState;
using quant::QScheme;
using quant::TorchQDType;
using testing::expect_throws_with;

constexpr float kEps = 1.1920928955078125e-07f;  // 2^-23

Tensor f32(std::vector<float> v, Shape s) { return Tensor::from_vector<float>(v, s); }
Tensor f32(std::vector<float> v) {
  const int64_t n = static_cast<int64_t>(v.size());
  return Tensor::from_vector<float>(v, {n});
}

void flatten(const json& v, std::vector<float>& out, std::vector<int64_t>& shape, size_t depth) {
  if (!v.is_array()) {
    out.push_back(static_cast<float>(v.get<double>()));
    return;
  }
  if (shape.size() == depth) shape.push_back(static_cast<int64_t>(v.size()));
  for (const json& e : v) flatten(e, out, shape, depth + 1);
}
Tensor tensor_of(const json& v) {
  std::vector<float> data;
  std::vector<int64_t> shape;
  flatten(v, data, shape, 0);
  return Tensor::from_vector<float>(data, Shape(shape));
}

// got == want elementwise (shape-agnostic: the golden lists are flat).
::testing::AssertionResult same_values(const Tensor& got, const std::vector<float>& want) {
  if (got.numel() != static_cast<int64_t>(want.size()))
    return ::testing::AssertionFailure() << "size " << got.numel() << " vs " << want.size();
  for (size_t i = 0; i < want.size(); ++i)
    if (!(got.data<float>()[i] == want[i]))
      return ::testing::AssertionFailure() << "element " << i << ": got " << got.str(12)
                                           << ", want " << ::testing::PrintToString(want);
  return ::testing::AssertionSuccess();
}
std::vector<float> floats(const json& v) {
  std::vector<float> out;
  for (const json& e : v) out.push_back(static_cast<float>(e.get<double>()));
  return out;
}

QScheme qscheme_of(const std::string& s) {
  if (s == "per_tensor_affine") return QScheme::kPerTensorAffine;
  if (s == "per_tensor_symmetric") return QScheme::kPerTensorSymmetric;
  if (s == "per_channel_affine") return QScheme::kPerChannelAffine;
  if (s == "per_channel_symmetric") return QScheme::kPerChannelSymmetric;
  ADD_FAILURE() << "unknown qscheme " << s;
  return QScheme::kPerTensorAffine;
}

// The golden case's observer config (PyTorch defaults for absent arguments).
ObserverConfig config_of(const json& p) {
  ObserverConfig c;
  const std::string kind = p["observer"];
  const bool per_channel = kind.rfind("per_channel", 0) == 0;
  if (per_channel) c.qscheme = QScheme::kPerChannelAffine;
  if (p.contains("dtype"))
    c.dtype = p["dtype"] == "qint8" ? TorchQDType::kQInt8 : TorchQDType::kQUInt8;
  if (p.contains("qscheme")) c.qscheme = qscheme_of(p["qscheme"]);
  if (p.contains("reduce_range")) c.reduce_range = p["reduce_range"];
  if (p.contains("quant_min") && !p["quant_min"].is_null()) c.quant_min = p["quant_min"];
  if (p.contains("quant_max") && !p["quant_max"].is_null()) c.quant_max = p["quant_max"];
  if (p.contains("averaging_constant")) c.averaging_constant = p["averaging_constant"];
  if (p.contains("ch_axis")) c.ch_axis = p["ch_axis"];
  if (p.contains("eps")) c.eps = p["eps"];
  return c;
}

bool is_moving_average(const json& p) {
  return p["observer"].get<std::string>().find("moving_average") != std::string::npos;
}

TEST(TorchObserverGolden, EveryCase) {
  std::ifstream f(testing::shared_dir() + "/testdata/fakequant_examples.json");
  ASSERT_TRUE(f.good());
  const json all = json::parse(f);
  int n = 0;
  for (const json& c : all["cases"]) {
    if (c["kind"] != "torch_observer") continue;
    ++n;
    SCOPED_TRACE(c["id"].get<std::string>());
    const json& p = c["params"];
    const ObserverConfig cfg = config_of(p);
    const json& e = c["expected"];
    const ops::QuantRange r = quant::observer_quant_range(cfg);
    EXPECT_EQ(r.min, e["effective_quant_min"].get<int64_t>());
    EXPECT_EQ(r.max, e["effective_quant_max"].get<int64_t>());
    const std::vector<Tensor> batches = [&] {
      std::vector<Tensor> b;
      for (const json& x : c["inputs"]["batches"]) b.push_back(tensor_of(x));
      return b;
    }();
    int64_t channels = 1;
    if (quant::is_per_channel(cfg.qscheme))
      channels = batches[0].shape()[batches[0].shape().axis(cfg.ch_axis, "test")];
    ObserverState<Tensor> st = quant::observer_initial_state(cfg, channels);
    for (const Tensor& x : batches)
      st = is_moving_average(p) ? quant::moving_average_observer_update(st, x, cfg)
                                : quant::minmax_observer_update(st, x, cfg);
    EXPECT_TRUE(same_values(st.min_val, floats(e["min_val"])));
    EXPECT_TRUE(same_values(st.max_val, floats(e["max_val"])));
    const quant::QParams<Tensor> qp = quant::calculate_qparams(st, cfg);
    EXPECT_TRUE(same_values(qp.scale, floats(e["scale"])));
    EXPECT_TRUE(same_values(qp.zero_point, floats(e["zero_point"])));
  }
  EXPECT_GT(n, 0);
  testing::note_reference_tested("calculate_qparams");
}

// ---- qparams by hand ------------------------------------------------------------------------

TEST(TorchObserver, AffineQParams) {
  // Spec 4.5: min -2.5, max 252.5, quint8: scale (252.5 + 2.5) / 255 = 1, zp 0 - round(-2.5)
  // = 2 (TF's nudge gives 3).
  auto qp = quant::affine_qparams(Tensor::scalar(-2.5f), Tensor::scalar(252.5f), 0, 255);
  EXPECT_EQ(qp.scale.item<float>(), 1.0f);
  EXPECT_EQ(qp.zero_point.item<float>(), 2.0f);
  // The range always includes 0: min 0.5 -> 0; scale (2 - 0) / 255 (f32).
  qp = quant::affine_qparams(Tensor::scalar(0.5f), Tensor::scalar(2.0f), 0, 255);
  EXPECT_EQ(qp.scale.item<float>(), 2.0f / 255.0f);
  EXPECT_EQ(qp.zero_point.item<float>(), 0.0f);
  // All zeros: scale eps, zp quant_min; all negative: zp clamped to quant_max.
  qp = quant::affine_qparams(Tensor::scalar(0), Tensor::scalar(0), -128, 127);
  EXPECT_EQ(qp.scale.item<float>(), kEps);
  EXPECT_EQ(qp.zero_point.item<float>(), -128.0f);
  qp = quant::affine_qparams(Tensor::scalar(-3), Tensor::scalar(-1), 0, 255);
  EXPECT_EQ(qp.scale.item<float>(), 3.0f / 255.0f);
  EXPECT_EQ(qp.zero_point.item<float>(), 255.0f);
  // Never observed (+inf, -inf): scale 1, zp 0 (PyTorch's check_min_max_valid).
  qp = quant::affine_qparams(Tensor::scalar(INFINITY), Tensor::scalar(-INFINITY), 0, 255);
  EXPECT_EQ(qp.scale.item<float>(), 1.0f);
  EXPECT_EQ(qp.zero_point.item<float>(), 0.0f);
}

TEST(TorchObserver, SymmetricQParams) {
  // qint8 [-128, 127]: scale max|.| / 127.5, zp 0.
  ObserverConfig c;
  c.dtype = TorchQDType::kQInt8;
  c.qscheme = QScheme::kPerTensorSymmetric;
  auto qp = quant::calculate_qparams<Tensor>({Tensor::scalar(-2.55f), Tensor::scalar(1.0f)}, c);
  EXPECT_EQ(qp.scale.item<float>(), 2.55f / 127.5f);
  EXPECT_EQ(qp.zero_point.item<float>(), 0.0f);
  // quint8: zp 128 (also with reduce_range, as PyTorch); custom range: (qmin + qmax) // 2.
  c.dtype = TorchQDType::kQUInt8;
  EXPECT_EQ(quant::symmetric_zero_point(c), 128);
  qp = quant::calculate_qparams<Tensor>({Tensor::scalar(-1.0f), Tensor::scalar(3.0f)}, c);
  EXPECT_EQ(qp.scale.item<float>(), 3.0f / 127.5f);
  EXPECT_EQ(qp.zero_point.item<float>(), 128.0f);
  c.reduce_range = true;
  EXPECT_EQ(quant::symmetric_zero_point(c), 128);
  c.quant_min = 0;
  c.quant_max = 15;
  EXPECT_EQ(quant::symmetric_zero_point(c), 3);  // reduced to [0, 7] -> 7 // 2
  c.reduce_range = false;
  EXPECT_EQ(quant::symmetric_zero_point(c), 7);
  // An all-zero tensor gives scale eps.
  qp = quant::symmetric_qparams(Tensor::scalar(0), Tensor::scalar(0), -128, 127, 0);
  EXPECT_EQ(qp.scale.item<float>(), kEps);
}

TEST(TorchObserver, EffectiveRanges) {
  auto range = [](TorchQDType dt, bool reduce, std::optional<int64_t> lo = std::nullopt,
                  std::optional<int64_t> hi = std::nullopt) {
    ObserverConfig c;
    c.dtype = dt;
    c.reduce_range = reduce;
    c.quant_min = lo;
    c.quant_max = hi;
    const ops::QuantRange r = quant::observer_quant_range(c);
    return std::vector<int64_t>{r.min, r.max};
  };
  using V = std::vector<int64_t>;
  EXPECT_EQ(range(TorchQDType::kQUInt8, false), V({0, 255}));
  EXPECT_EQ(range(TorchQDType::kQUInt8, true), V({0, 127}));
  EXPECT_EQ(range(TorchQDType::kQInt8, false), V({-128, 127}));
  EXPECT_EQ(range(TorchQDType::kQInt8, true), V({-64, 63}));
  EXPECT_EQ(range(TorchQDType::kQUInt8, true, 0, 255), V({0, 127}));
  EXPECT_EQ(range(TorchQDType::kQUInt8, false, 0, 15), V({0, 15}));
  EXPECT_EQ(range(TorchQDType::kQInt8, false, -127, 127), V({-128, 126}));  // PyTorch's rule
  EXPECT_EQ(range(TorchQDType::kQInt8, true, -8, 7), V({-4, 3}));
  EXPECT_EQ(range(TorchQDType::kQInt8, true, -127, 127), V({-64, 63}));
  expect_throws_with<ValueError>([&] { range(TorchQDType::kQUInt8, false, 1, 255); },
                                 "quant_min <= 0");
  expect_throws_with<ValueError>([&] { range(TorchQDType::kQUInt8, false, 0, 0); },
                                 "quant_min < quant_max");
  expect_throws_with<ValueError>([&] { range(TorchQDType::kQInt8, false, -200, 200); }, "256");
  expect_throws_with<ValueError>([&] { range(TorchQDType::kQInt8, false, -8); }, "neither");
}

// ---- state updates --------------------------------------------------------------------------

TEST(TorchObserver, MovingAverageFirstBatchSetsThenAverages) {
  ObserverConfig c;
  auto st = quant::observer_initial_state(c);
  st = quant::moving_average_observer_update(st, f32({-1.0f, 2.0f, 0.5f}), c);
  EXPECT_EQ(st.min_val.item<float>(), -1.0f);
  EXPECT_EQ(st.max_val.item<float>(), 2.0f);
  st = quant::moving_average_observer_update(st, f32({-3.0f, 4.0f}), c);
  const float k = 0.01f;
  EXPECT_EQ(st.min_val.item<float>(), -1.0f + k * (-3.0f - -1.0f));
  EXPECT_EQ(st.max_val.item<float>(), 2.0f + k * (4.0f - 2.0f));
  // MinMax: running extremes.
  auto mm = quant::observer_initial_state(c);
  mm = quant::minmax_observer_update(mm, f32({-1.0f, 2.0f}), c);
  mm = quant::minmax_observer_update(mm, f32({-0.5f, 3.0f}), c);
  EXPECT_EQ(mm.min_val.item<float>(), -1.0f);
  EXPECT_EQ(mm.max_val.item<float>(), 3.0f);
}

TEST(TorchObserver, PerChannelReducesAllButTheChannelAxis) {
  ObserverConfig c;
  c.qscheme = QScheme::kPerChannelSymmetric;
  c.dtype = TorchQDType::kQInt8;
  c.ch_axis = 1;
  // x [2, 3, 2]: channel k holds x[:, k, :].
  const Tensor x = f32({1, -2, 3, 4, -5, 6, 7, 8, 9, -10, 11, 12}, {2, 3, 2});
  auto st = quant::moving_average_observer_update(quant::observer_initial_state(c, 3), x, c);
  EXPECT_TRUE(same_values(st.min_val, {-2, -10, -5}));
  EXPECT_TRUE(same_values(st.max_val, {8, 9, 12}));
  auto qp = quant::calculate_qparams(st, c);
  EXPECT_TRUE(same_values(qp.scale, {8 / 127.5f, 10 / 127.5f, 12 / 127.5f}));
  EXPECT_TRUE(same_values(qp.zero_point, {0, 0, 0}));
  // A second batch moves each channel; negative ch_axis counts from the end.
  c.ch_axis = -2;
  const Tensor x2 = ops::zeros_like(x);
  auto st2 = quant::moving_average_observer_update(st, x2, c);
  EXPECT_EQ(st2.min_val.data<float>()[1], -10.0f + 0.01f * (0.0f - -10.0f));
  // Rank-1 input: each element is its own channel.
  c.ch_axis = 0;
  auto st3 = quant::minmax_observer_update(quant::observer_initial_state(c, 2), f32({-1, 2}), c);
  EXPECT_TRUE(same_values(st3.min_val, {-1, 2}));
  expect_throws_with<ValueError>(
      [&] {
        c.ch_axis = 3;
        quant::batch_min_max(x, c);
      },
      "axis");
  expect_throws_with<ValueError>([&] { quant::observer_initial_state(c, 0); }, "channels");
}

TEST(TorchObserver, UpdatesInsideAGraphWithUnknownBatch) {
  // A FakeQuantize-like block: observe (moving average), recompute qparams, fake-quantize, with
  // the state as non-trainable variables and the update recorded in the graph.
  ObserverConfig c;  // quint8 affine
  c.reduce_range = true;
  const ops::QuantRange r = quant::observer_quant_range(c);
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {kUnknown, 3});
  auto init = quant::observer_initial_state(c);
  ObserverState<Value> st{g.variable("min_val", init.min_val, false),
                          g.variable("max_val", init.max_val, false)};
  const ObserverState<Value> next = quant::moving_average_observer_update(st, x, c);
  g.add_update(st.min_val, next.min_val);
  g.add_update(st.max_val, next.max_val);
  const quant::QParams<Value> qp = quant::calculate_qparams(next, c);
  Value y = ops::fake_quantize_per_tensor_affine(x, qp.scale, qp.zero_point, r.min, r.max);
  Executor ex(g, {y}, g.updates());
  const std::vector<Tensor> batches = {f32({-0.5f, 0.25f, 3.0f}, {1, 3}),
                                       f32({-1.0f, 2.0f, 0.5f, 0.1f, 0.2f, 0.3f}, {2, 3})};
  auto eager = quant::observer_initial_state(c);
  for (const Tensor& b : batches) {
    const Tensor got = ex.run({{x, b}})[0];
    eager = quant::moving_average_observer_update(eager, b, c);
    const auto q = quant::calculate_qparams(eager, c);
    EXPECT_TRUE(testing::tensors_equal(
        got, ops::fake_quantize_per_tensor_affine(b, q.scale, q.zero_point, r.min, r.max)));
    EXPECT_TRUE(testing::tensors_equal(g.variable_tensor(st.min_val), eager.min_val));
    EXPECT_TRUE(testing::tensors_equal(g.variable_tensor(st.max_val), eager.max_val));
  }
  // These batches are the golden t_obs_ma_reduce_range case: min -0.505, max 2.99, zp 18.
  EXPECT_EQ(quant::calculate_qparams(eager, c).zero_point.item<float>(), 18.0f);
}

TEST(TorchObserver, QParamsOpErrors) {
  expect_throws_with<ShapeError>(
      [] {
        quant::affine_qparams(f32({0, 1}), f32({1, 2, 3}), 0, 255);
      },
      "'max_val'");
  expect_throws_with<ValueError>(
      [] { quant::affine_qparams(Tensor::scalar(0), Tensor::scalar(1), 5, 4); }, "quant_min");
  expect_throws_with<DTypeError>(
      [] { quant::affine_qparams(Tensor::full({}, 0, DType::kS32), Tensor::scalar(1), 0, 255); },
      "'min_val'");
  expect_throws_with<ValueError>(
      [] { quant::affine_qparams(Tensor::scalar(0), Tensor::scalar(1), 0, 255, -1.0); }, "eps");
}

}  // namespace
}  // namespace lowbit
