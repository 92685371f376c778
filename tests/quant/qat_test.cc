// Quantization-aware training: quantizer state and its updates, batch-norm folding, training
// through fake quantizers, saving and loading (include/lowbit/quant/quantizer.h).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <set>

#include "lowbit/nn/layers.h"
#include "lowbit/ops.h"
#include "lowbit/ops/fake_quant.h"
#include "lowbit/quant/quantize_model.h"
#include "lowbit/quant/range.h"
#include "testing/op_testing.h"

namespace lowbit::quant {
namespace {

using nn::KTensor;
using testing::random_tensor;
using testing::tensors_near;

std::set<float> distinct(const Tensor& t) {
  auto s = t.span<float>();
  return {s.begin(), s.end()};
}

Tensor weight(const nn::Layer& l, const std::string& name) {
  for (const auto& w : l.weights())
    if (w.name == name) return w.value;
  ADD_FAILURE() << l.name() << " has no weight " << name;
  return Tensor();
}

// Gives a BatchNormalization non-trivial parameters and statistics (gamma of both signs).
void randomize_bn(nn::Layer& bn, Rng& rng) {
  for (auto& w : bn.weights()) {
    float* p = w.value.data<float>();
    for (int64_t i = 0; i < w.value.numel(); ++i) {
      if (w.name == "gamma") p[i] = (i % 3 == 2 ? -1.0f : 1.0f) * rng.uniform(0.5f, 1.5f);
      if (w.name == "beta") p[i] = rng.uniform(-0.5f, 0.5f);
      if (w.name == "moving_mean") p[i] = rng.uniform(-0.3f, 0.3f);
      if (w.name == "moving_variance") p[i] = rng.uniform(0.3f, 2.0f);
    }
  }
}

QuantizeConfig float_config() {
  QuantizeConfig c;
  c.weights.scheme = "none";
  c.activations.scheme = "none";
  c.inputs.scheme = "none";
  return c;
}

struct FoldCase {
  std::string name;
  std::function<nn::LayerPtr()> conv;
  Shape input;
};

std::vector<FoldCase> fold_cases() {
  return {
      {"conv2d",
       [] { return nn::Conv2D(6, 3, {.padding = "same", .use_bias = false}); },
       {5, 5, 3}},
      {"conv2d_bias", [] { return nn::Conv2D(4, 3, {.strides = 2}); }, {7, 7, 2}},
      {"dense", [] { return nn::Dense(5); }, {7}},
      {"conv1d", [] { return nn::Conv1D(3, 2); }, {6, 2}},
      {"depthwise", [] { return nn::DepthwiseConv2D(3, {.depth_multiplier = 2}); }, {5, 5, 3}},
  };
}

// The folded layer computes conv followed by batch norm: in inference mode (moving statistics)
// and in training mode (batch statistics, and the same moving-statistic updates).
TEST(BatchNormFolding, FoldedLayerEqualsConvThenBatchNorm) {
  for (const FoldCase& fc : fold_cases()) {
    SCOPED_TRACE(fc.name);
    nn::reset_layer_names();
    nn::set_random_seed(7);
    auto model = nn::Sequential::create(
        {nn::InputSpec(fc.input), fc.conv(), nn::BatchNormalization({.momentum = 0.9})});
    Rng rng(11);
    randomize_bn(*model->layers().back(), rng);
    auto q = quantize_model(*model, float_config());
    q->allow_uncalibrated = true;  // inference on the initial ranges, on purpose
    auto fold = std::dynamic_pointer_cast<FoldedConvBatchNormLayer>(q->layers().at(2));
    ASSERT_TRUE(fold) << q->summary();

    std::vector<int64_t> dims{4};
    dims.insert(dims.end(), fc.input.dims().begin(), fc.input.dims().end());
    Tensor x = random_tensor(Shape(dims), rng);
    EXPECT_TRUE(tensors_near((*q)(x), (*model)(x), 1e-5, 1e-5));

    // Training mode: batch statistics of u = z'·σ/γ (exactly the conv output here, no
    // quantization), updates of the moving statistics as the float BN's.
    Tensor yq = (*q)(x, {.training = true});
    Tensor yf = (*model)(x, {.training = true});
    EXPECT_TRUE(tensors_near(yq, yf, 2e-5, 2e-5));
    auto& fbn = *model->layers().back();
    auto& qbn = *fold->batch_norm();
    EXPECT_TRUE(tensors_near(weight(qbn, "moving_mean"), weight(fbn, "moving_mean"), 1e-6, 1e-5));
    EXPECT_TRUE(
        tensors_near(weight(qbn, "moving_variance"), weight(fbn, "moving_variance"), 1e-6, 1e-5));
    // And again in inference, with the updated statistics.
    EXPECT_TRUE(tensors_near((*q)(x), (*model)(x), 1e-5, 1e-5));
  }
}

TEST(BatchNormFolding, FreezeSwitchesToMovingStatisticsAtTheStep) {
  nn::reset_layer_names();
  nn::set_random_seed(2);
  auto model = nn::Sequential::create(
      {nn::InputSpec({4, 4, 2}), nn::Conv2D(3, 3, {.padding = "same"}), nn::BatchNormalization()});
  Rng rng(5);
  randomize_bn(*model->layers().back(), rng);
  QuantizeConfig cfg = float_config();
  cfg.freeze_bn_delay = 2;
  auto q = quantize_model(*model, cfg);
  q->allow_uncalibrated = true;  // inference on the initial ranges, on purpose
  auto fold = std::dynamic_pointer_cast<FoldedConvBatchNormLayer>(q->layers().at(2));
  ASSERT_TRUE(fold);
  Tensor x = random_tensor({3, 4, 4, 2}, rng);
  Tensor infer = (*q)(x);
  for (int step = 0; step < 4; ++step) {
    Tensor mm_before = weight(*fold->batch_norm(), "moving_mean").clone();
    Tensor y = (*q)(x, {.training = true});
    Tensor mm_after = weight(*fold->batch_norm(), "moving_mean");
    if (step < 2) {
      // Batch statistics: differs from the inference output; moving statistics move.
      EXPECT_FALSE(tensors_near(y, infer, 1e-3, 0)) << "step " << step;
      EXPECT_FALSE(tensors_near(mm_after, mm_before, 1e-7, 0)) << "step " << step;
    } else {
      // Frozen: the inference form with the (now fixed) moving statistics.
      EXPECT_TRUE(tensors_near(y, (*q)(x), 1e-5, 1e-5)) << "step " << step;
      EXPECT_TRUE(testing::tensors_equal(mm_after, mm_before)) << "step " << step;
    }
  }
  EXPECT_EQ(weight(*fold, "step").item<int64_t>(), 4);
}

// ---- Quantizer state: trackers, delay, gradients, saving (TF scheme) -------------------------

// A small CNN: Conv-BN-ReLU, a shared-free Dense head.
nn::ModelPtr small_cnn(uint64_t seed = 1) {
  nn::reset_layer_names();
  nn::set_random_seed(seed);
  return nn::Sequential::create(
      {nn::InputSpec({6, 6, 2}), nn::Conv2D(4, 3, {.padding = "same", .use_bias = false}),
       nn::BatchNormalization({.momentum = 0.9}), nn::ReLU(), nn::GlobalAveragePooling2D(),
       nn::Dense(3)},
      "small_cnn");
}

Tensor tensor_of(const nn::Layer& l, const std::string& name) { return weight(l, name).clone(); }

TEST(QuantizerState, RangesUpdateOnlyInTrainingMode) {
  auto q = quantize_model(*small_cnn());
  q->allow_uncalibrated = true;  // inference on the initial ranges, on purpose
  auto act = std::dynamic_pointer_cast<FakeQuantLayer>(q->get_layer("re_lu_quant"));
  auto input = std::dynamic_pointer_cast<FakeQuantLayer>(q->get_layer("input_layer_quant"));
  auto fold = std::dynamic_pointer_cast<FoldedConvBatchNormLayer>(q->get_layer("conv2d"));
  ASSERT_TRUE(act && input && fold);
  // Weights start at their own range (last_value of the copied kernel); activations at -6/6;
  // inputs at 0/0.
  EXPECT_EQ(act->quantizer().min(*act).item<float>(), -6.0f);
  EXPECT_EQ(act->quantizer().max(*act).item<float>(), 6.0f);
  EXPECT_EQ(input->quantizer().max(*input).item<float>(), 0.0f);
  Tensor kernel_max = fold->quantizer().max(*fold).clone();
  EXPECT_EQ(kernel_max.shape(), Shape({4}));
  EXPECT_LT(kernel_max.to_vector<float>()[0], 6.0f);

  Rng rng(3);
  Tensor x = random_tensor({5, 6, 6, 2}, rng, -1.5f, 2.0f);
  const Tensor amin = tensor_of(*act, "min"), amax = tensor_of(*act, "max");
  (*q)(x);  // inference: nothing moves
  EXPECT_TRUE(testing::tensors_equal(tensor_of(*act, "min"), amin));
  EXPECT_TRUE(testing::tensors_equal(tensor_of(*act, "max"), amax));
  EXPECT_TRUE(testing::tensors_equal(fold->quantizer().max(*fold), kernel_max));
  EXPECT_EQ(weight(*act, "step").item<int64_t>(), 0);

  (*q)(x, {.training = true});  // training: each tracker moves as range.h says
  EXPECT_EQ(weight(*act, "step").item<int64_t>(), 1);
  // Input: all_values from 0/0 -> the batch range with 0 included.
  const ops::MinMax<Tensor> b = ops::min_max(x, false);
  EXPECT_EQ(input->quantizer().min(*input).item<float>(), std::min(b.min.item<float>(), 0.0f));
  EXPECT_EQ(input->quantizer().max(*input).item<float>(), std::max(b.max.item<float>(), 0.0f));
  // Activation: one EMA step (decay 0.999) from -6/6 towards the ReLU output's range [0, m].
  const float new_min = act->quantizer().min(*act).item<float>();
  const float new_max = act->quantizer().max(*act).item<float>();
  EXPECT_EQ(new_min, -6.0f - (-6.0f - 0.0f) * static_cast<float>(1.0 - 0.999));
  EXPECT_LT(new_max, 6.0f);
  EXPECT_GT(new_max, 5.99f);
  // The folded kernel's range is last_value: the range of the folded kernel W·γ/σ of the step
  // (σ from the moving variance before the step's update): unchanged by the first step, which
  // saw the kernel it was initialised from, moved by the second (the variance moved).
  EXPECT_TRUE(testing::tensors_equal(fold->quantizer().max(*fold), kernel_max));
  const Tensor folded = fold->folded_kernel();
  (*q)(x, {.training = true});
  const ops::MinMax<Tensor> fb = ops::min_max(folded, true);
  const ops::MinMax<Tensor> ft = range_target(fb.min, fb.max, true, 8, true);
  EXPECT_TRUE(testing::tensors_equal(fold->quantizer().min(*fold), ft.min));
  EXPECT_TRUE(testing::tensors_equal(fold->quantizer().max(*fold), ft.max));
  EXPECT_FALSE(testing::tensors_equal(ft.max, kernel_max));
}

TEST(QuantizerState, QuantDelayIsIdentityWhileTrackersRun) {
  nn::reset_layer_names();
  KTensor in = nn::Input({8});
  auto fq = FakeQuant({.bits = 3}, /*quant_delay=*/2, "fq");
  auto m = nn::Model::create({in}, {(*fq)(in)});
  auto& layer = dynamic_cast<FakeQuantLayer&>(*fq);
  Rng rng(9);
  Tensor x = random_tensor({4, 8}, rng, -2.0f, 3.0f);
  for (int step = 0; step < 4; ++step) {
    Tensor before = layer.quantizer().max(layer).clone();
    Tensor y = (*m)(x, {.training = true});
    EXPECT_FALSE(testing::tensors_equal(layer.quantizer().max(layer), before)) << step;
    if (step < 2) {
      EXPECT_TRUE(testing::tensors_equal(y, x)) << "step " << step << ": float warm-up";
    } else {
      EXPECT_FALSE(tensors_near(y, x, 1e-3, 0)) << "step " << step << ": quantized";
      // 3 bits: at most 8 distinct values.
      std::set<float> levels = distinct(y);
      EXPECT_LE(levels.size(), 8u);
    }
  }
  // Inference always quantizes.
  Tensor yi = (*m)(x);
  EXPECT_FALSE(tensors_near(yi, x, 1e-3, 0));
}

// The same with 16-bit weights: the folded kernel is fake-quantized, the error is the 16-bit
// rounding of W·γ/σ (per channel, symmetric: 2^-15 of the channel's range).
TEST(BatchNormFolding, SixteenBitFoldedLayerMatchesConvThenBatchNorm) {
  for (const FoldCase& fc : fold_cases()) {
    SCOPED_TRACE(fc.name);
    nn::reset_layer_names();
    nn::set_random_seed(7);
    auto model = nn::Sequential::create(
        {nn::InputSpec(fc.input), fc.conv(), nn::BatchNormalization({.momentum = 0.9})});
    Rng rng(11);
    randomize_bn(*model->layers().back(), rng);
    QuantizeConfig cfg = float_config();
    cfg.weights = default_weight_quantizer();
    cfg.weights.bits = 16;
    auto q = quantize_model(*model, cfg);
    q->allow_uncalibrated = true;  // inference on the initial ranges, on purpose
    std::vector<int64_t> dims{4};
    dims.insert(dims.end(), fc.input.dims().begin(), fc.input.dims().end());
    Tensor x = random_tensor(Shape(dims), rng);
    Tensor want = (*model)(x);
    EXPECT_TRUE(tensors_near((*q)(x), want, 2e-4, 1e-4));
    cfg.weights.bits = 4;  // and 4 bits are visibly different: the kernel IS quantized
    auto q8 = quantize_model(*model, cfg);
    q8->allow_uncalibrated = true;
    EXPECT_FALSE(tensors_near((*q8)(x), want, 2e-3, 0));
  }
}

TEST(QuantizerState, FreezeAfterStopsTheTrackerDebiasAndTorchObservers) {
  Rng rng(4);
  auto run = [&](const QuantizerConfig& cfg, int steps, std::vector<Tensor>* mins,
                 std::vector<Tensor>* maxs, std::vector<Tensor>* inputs) {
    nn::reset_layer_names();
    KTensor in = nn::Input({6});
    auto fq = FakeQuant(cfg, 0, "fq");
    auto m = nn::Model::create({in}, {(*fq)(in)});
    auto& l = dynamic_cast<FakeQuantLayer&>(*fq);
    for (int i = 0; i < steps; ++i) {
      Tensor x = random_tensor({4, 6}, rng, -1.0f - i, 1.0f + 2 * i);
      (*m)(x, {.training = true});
      mins->push_back(l.quantizer().min(l).clone());
      maxs->push_back(l.quantizer().max(l).clone());
      if (inputs) inputs->push_back(x);
    }
  };
  {  // freeze_after 2: two updates, then the range stays
    std::vector<Tensor> mn, mx;
    run({.range = "last_value", .freeze_after = 2}, 4, &mn, &mx, nullptr);
    EXPECT_FALSE(testing::tensors_equal(mx[1], mx[0]));
    EXPECT_TRUE(testing::tensors_equal(mx[2], mx[1]));
    EXPECT_TRUE(testing::tensors_equal(mx[3], mx[1]));
    EXPECT_TRUE(testing::tensors_equal(mn[3], mn[1]));
  }
  {  // TF1 debiased EMA: the first update gives (nearly) the batch range, init ignored
    std::vector<Tensor> mn, mx, xs;
    run({.range = "moving_average_debiased", .init_min = -100, .init_max = 100}, 2, &mn, &mx, &xs);
    const ops::MinMax<Tensor> b = ops::min_max(xs[0]);
    EXPECT_NEAR(mx[0].item<float>(), std::max(b.max.item<float>(), 0.0f), 1e-4);
    EXPECT_NEAR(mn[0].item<float>(), std::min(b.min.item<float>(), 0.0f), 1e-4);
  }
  {  // PyTorch moving-average observer: the first batch sets the range, then c = 1 - decay
    std::vector<Tensor> mn, mx, xs;
    run({.scheme = "torch", .range = "moving_average", .ema_decay = 0.99}, 2, &mn, &mx, &xs);
    const ops::MinMax<Tensor> b0 = ops::min_max(xs[0]), b1 = ops::min_max(xs[1]);
    EXPECT_EQ(mx[0].item<float>(), b0.max.item<float>());
    const float c = static_cast<float>(1.0 - 0.99);
    EXPECT_EQ(mx[1].item<float>(),
              mx[0].item<float>() + c * (b1.max.item<float>() - mx[0].item<float>()));
  }
}

// Every value of a fake-quantized weight is k * scale for an integer k of the nudged grid.
void expect_on_tf_grid(const Tensor& w, const Tensor& min, const Tensor& max, int bits,
                       bool narrow) {
  const int64_t ch = min.numel();
  const float* pw = w.data<float>();
  for (int64_t i = 0; i < w.numel(); ++i) {
    const int64_t c = ch == 1 ? 0 : i % ch;
    const ops::FakeQuantNudge n =
        ops::fake_quant_nudge(min.data<float>()[c], max.data<float>()[c], bits, narrow);
    const double k = pw[i] / n.scale;
    ASSERT_NEAR(k, std::round(k), 1e-3) << "element " << i << " = " << pw[i];
    ASSERT_GE(std::round(k), n.quant_min - n.zero_point) << i;
    ASSERT_LE(std::round(k), n.quant_max - n.zero_point) << i;
  }
}

TEST(QuantizeAwareTraining, StepsReduceTheLossAndWeightsStayFloat) {
  nn::reset_layer_names();
  nn::set_random_seed(4);
  auto model = nn::Sequential::create(
      {nn::InputSpec({6}), nn::Dense(16, {.activation = "relu"}), nn::Dense(3)}, "mlp");
  QuantizeConfig cfg = QuantizeConfig::preset("w4a8");
  auto q = quantize_model(*model, cfg);
  q->compile({.optimizer = nn::Adam({.learning_rate = 1e-2}),
              .loss = nn::SparseCategoricalCrossentropy({.from_logits = true})});
  Rng rng(21);
  Tensor x = random_tensor({64, 6}, rng);
  Tensor y = Tensor::zeros({64}, DType::kS64);
  for (int64_t i = 0; i < 64; ++i)  // a learnable rule: the argmax of the first 3 features
    y.data<int64_t>()[i] = x.data<float>()[i * 6] > x.data<float>()[i * 6 + 1]
                               ? (x.data<float>()[i * 6] > x.data<float>()[i * 6 + 2] ? 0 : 2)
                               : (x.data<float>()[i * 6 + 1] > x.data<float>()[i * 6 + 2] ? 1 : 2);
  auto dense = std::dynamic_pointer_cast<QuantizeWrapperLayer>(q->get_layer("dense"));
  ASSERT_TRUE(dense);
  const Tensor k0 = dense->layer()->weights()[0].value.clone();
  nn::History h = q->fit(x, y, {.epochs = 20, .batch_size = 16, .verbose = 0});
  const auto& loss = h.history.at("loss");
  EXPECT_LT(loss.back(), 0.8 * loss.front());
  // STE: the float kernel moved ...
  const Tensor k1 = dense->layer()->weights()[0].value;
  EXPECT_FALSE(tensors_near(k1, k0, 1e-4, 0));
  // ... stays full precision (not on the 4-bit grid) while the forward uses grid values.
  const Tensor eff = dense->effective_weights().at("kernel");
  const Quantizer& kq = dense->quantizer("kernel");
  expect_on_tf_grid(eff, kq.min(*dense), kq.max(*dense), 4, true);
  std::set<float> levels = distinct(eff);
  std::set<float> float_levels = distinct(k1);
  EXPECT_LE(levels.size(), 15u * 16u);  // <= 15 levels per output channel
  EXPECT_GT(float_levels.size(), levels.size());
  // The model's forward computes with exactly those grid weights and quantized activations,
  // and biases on their int32 grids s_in * s_w (QuantizeConfig::quantize_bias):
  // out = FQ(FQ(relu(FQ(x) W1q + B(b1))) W2q + B(b2)), by hand with eager ops.
  auto dense1 = std::dynamic_pointer_cast<QuantizeWrapperLayer>(q->get_layer("dense_1"));
  auto fq_of = [&](const std::string& name, const Tensor& t) {
    auto l = std::dynamic_pointer_cast<FakeQuantLayer>(q->get_layer(name));
    const QuantizerConfig& c = l->quantizer().config();
    return ops::fake_quant_with_min_max_vars(t, l->quantizer().min(*l), l->quantizer().max(*l),
                                             c.bits, c.narrow_range);
  };
  auto step_of = [](const std::vector<float>& s) {
    return Tensor::from_vector<float>(s, {static_cast<int64_t>(s.size())});
  };
  auto bias_of = [&](const QuantizeWrapperLayer& w, const std::string& input_fq) {
    auto l = std::dynamic_pointer_cast<FakeQuantLayer>(q->get_layer(input_fq));
    return ops::fake_quant_bias(w.layer()->weights()[1].value,
                                Tensor::scalar(l->quantizer().grid(*l).scale.at(0)),
                                step_of(w.quantizer("kernel").grid(w).scale));
  };
  Tensor hidden = ops::relu(ops::matmul(fq_of("input_layer_quant", x), eff) +
                            bias_of(*dense, "input_layer_quant"));
  Tensor out = ops::matmul(fq_of("dense_quant", hidden), dense1->effective_weights().at("kernel")) +
               bias_of(*dense1, "dense_quant");
  EXPECT_TRUE(testing::tensors_equal((*q)(x), fq_of("dense_1_quant", out)));
}

TEST(QuantizeAwareTraining, SaveLoadKeepsRangesAndPredictionsBitIdentical) {
  auto q = quantize_model(*small_cnn(), QuantizeConfig::preset("w8a8"));
  q->compile({.optimizer = nn::Adam({.learning_rate = 1e-2}),
              .loss = nn::SparseCategoricalCrossentropy({.from_logits = true})});
  Rng rng(8);
  Tensor x = random_tensor({32, 6, 6, 2}, rng);
  Tensor y = testing::random_int_tensor({32}, rng, 0, 2);
  q->fit(x, y, {.epochs = 2, .batch_size = 8, .verbose = 0});
  const std::string path = (std::filesystem::temp_directory_path() / "qat_save_test.lbm").string();
  q->save(path);
  nn::ModelPtr r = nn::load_model(path);
  std::filesystem::remove(path);
  EXPECT_EQ(r->get_config(), q->get_config());
  auto a = std::dynamic_pointer_cast<FakeQuantLayer>(q->get_layer("re_lu_quant"));
  auto b = std::dynamic_pointer_cast<FakeQuantLayer>(r->get_layer("re_lu_quant"));
  ASSERT_TRUE(a && b);
  EXPECT_TRUE(testing::tensors_equal(b->quantizer().min(*b), a->quantizer().min(*a)));
  EXPECT_TRUE(testing::tensors_equal(b->quantizer().max(*b), a->quantizer().max(*a)));
  EXPECT_NE(a->quantizer().max(*a).item<float>(), 6.0f);  // trained, not the initial value
  EXPECT_TRUE(testing::tensors_equal(weight(*r->get_layer("re_lu_quant"), "step"),
                                     weight(*q->get_layer("re_lu_quant"), "step")));
  EXPECT_TRUE(testing::tensors_equal((*r)(x), (*q)(x)));
  // Training continues identically (ranges, BN statistics, optimizer state all restored).
  q->fit(x, y, {.epochs = 3, .batch_size = 8, .shuffle = false, .verbose = 0, .initial_epoch = 2});
  r->fit(x, y, {.epochs = 3, .batch_size = 8, .shuffle = false, .verbose = 0, .initial_epoch = 2});
  EXPECT_TRUE(testing::tensors_equal((*r)(x), (*q)(x)));
}

TEST(QuantizeAwareTraining, SummaryAndDotShowTheQuantizers) {
  auto q = quantize_model(*small_cnn());
  const std::string s = q->summary();
  EXPECT_NE(s.find("conv2d (FoldedConvBatchNorm)"), std::string::npos) << s;
  EXPECT_NE(s.find("weight quant kernel: tf 8-bit sym narrow per-channel(4) last_value"),
            std::string::npos)
      << s;
  EXPECT_NE(s.find("fake quant output: tf 8-bit asym per-tensor moving_average(0.999), range "
                   "[-6, 6]"),
            std::string::npos)
      << s;
  EXPECT_NE(s.find("fake quant output: tf 8-bit asym per-tensor all_values, range [0, 0]"),
            std::string::npos)
      << s;
  const std::string dot = q->to_dot(true);
  EXPECT_NE(dot.find("conv2d/kernel_quant/fake_quant_with_min_max_vars_per_channel"),
            std::string::npos);
  EXPECT_NE(dot.find("re_lu_quant/fake_quant_with_min_max_vars"), std::string::npos);
  EXPECT_NE(dot.find("dense/kernel_quant/fake_quant_with_min_max_vars_per_channel"),
            std::string::npos);
}

TEST(QuantizeAwareTraining, SharedLayerQuantizesItsKernelOncePerStep) {
  nn::reset_layer_names();
  KTensor x = nn::Input({5});
  auto shared = nn::Dense(5, {.activation = "relu"});
  KTensor y = (*shared)((*shared)(x));
  auto q = quantize_model(*nn::Model::create({x}, {y}));
  const std::string dot = q->to_dot(true);
  size_t count = 0;
  for (size_t p = dot.find("dense/kernel_quant/fake_quant_with_min_max_vars_per_channel");
       p != std::string::npos;
       p = dot.find("dense/kernel_quant/fake_quant_with_min_max_vars_per_channel", p + 1))
    ++count;
  EXPECT_EQ(count, 1u);  // one node (named once in the DOT label)
  auto w = std::dynamic_pointer_cast<QuantizeWrapperLayer>(q->get_layer("dense"));
  Rng rng(2);
  (*q)(random_tensor({3, 5}, rng), {.training = true});
  EXPECT_EQ(weight(*w, "step").item<int64_t>(), 1);  // one increment for two calls
}

// ---- The other schemes: each trains, and the effective weights lie on its grid ---------------

struct SchemeCase {
  std::string name;
  QuantizerConfig weights;
  // Checks the effective kernel [in, out] (per output channel = column) given the wrapper.
  std::function<void(const Tensor& eff, const QuantizeWrapperLayer& w)> check;
};

// Distinct values of column c of an [in, out] matrix.
std::set<float> column(const Tensor& t, int64_t c) {
  std::set<float> s;
  for (int64_t r = 0; r < t.dim(0); ++r) s.insert(t.data<float>()[r * t.dim(1) + c]);
  return s;
}

TEST(QuantizerSchemes, EachSchemeTrainsAndPutsWeightsOnItsGrid) {
  const std::vector<SchemeCase> cases = {
      {"torch 4-bit symmetric per channel",
       {.scheme = "torch",
        .bits = 4,
        .symmetric = true,
        .per_channel = true,
        .range = "last_value"},
       [](const Tensor& eff, const QuantizeWrapperLayer& w) {
         // scale = max|w| / 7.5 per channel (PyTorch's symmetric rule), codes -8..7.
         const Tensor mn = w.quantizer("kernel").min(w), mx = w.quantizer("kernel").max(w);
         for (int64_t c = 0; c < eff.dim(1); ++c) {
           const float m = std::max(-mn.data<float>()[c], mx.data<float>()[c]);
           const float scale = m / 7.5f;
           for (float v : column(eff, c)) {
             EXPECT_NEAR(v / scale, std::round(v / scale), 1e-3) << v;
             EXPECT_GE(std::round(v / scale), -8);
             EXPECT_LE(std::round(v / scale), 7);
           }
         }
       }},
      {"lsq 2-bit per channel", QuantizeConfig::preset("w2a8").weights,
       [](const Tensor& eff, const QuantizeWrapperLayer& w) {
         const Tensor step = weight(w, "kernel_step_size");
         for (int64_t c = 0; c < eff.dim(1); ++c)
           for (float v : column(eff, c)) {
             const float k = v / step.data<float>()[c];
             EXPECT_NEAR(k, std::round(k), 1e-4);
             EXPECT_GE(std::round(k), -2);
             EXPECT_LE(std::round(k), 1);
           }
       }},
      {"binary per channel",
       {.scheme = "binary", .per_channel = true},
       [](const Tensor& eff, const QuantizeWrapperLayer&) {
         for (int64_t c = 0; c < eff.dim(1); ++c) {
           std::set<float> mags;
           for (float v : column(eff, c)) mags.insert(std::abs(v));
           EXPECT_EQ(mags.size(), 1u);  // +-alpha
         }
       }},
      {"ternary per channel",
       {.scheme = "ternary", .per_channel = true},
       [](const Tensor& eff, const QuantizeWrapperLayer&) {
         for (int64_t c = 0; c < eff.dim(1); ++c) EXPECT_LE(column(eff, c).size(), 3u);
       }},
  };
  for (const SchemeCase& sc : cases) {
    SCOPED_TRACE(sc.name);
    nn::reset_layer_names();
    nn::set_random_seed(4);
    auto model = nn::Sequential::create(
        {nn::InputSpec({6}), nn::Dense(16, {.activation = "relu"}), nn::Dense(3)}, "mlp");
    QuantizeConfig cfg;
    cfg.weights = sc.weights;
    auto q = quantize_model(*model, cfg);
    q->compile({.optimizer = nn::Adam({.learning_rate = 1e-2}),
                .loss = nn::SparseCategoricalCrossentropy({.from_logits = true})});
    Rng rng(21);
    Tensor x = random_tensor({64, 6}, rng);
    Tensor y = testing::random_int_tensor({64}, rng, 0, 2);
    nn::History h = q->fit(x, y, {.epochs = 5, .batch_size = 16, .verbose = 0});
    const auto& loss = h.history.at("loss");
    EXPECT_TRUE(std::isfinite(loss.back()));
    EXPECT_LT(loss.back(), loss.front());
    auto dense = std::dynamic_pointer_cast<QuantizeWrapperLayer>(q->get_layer("dense"));
    ASSERT_TRUE(dense);
    sc.check(dense->effective_weights().at("kernel"), *dense);
  }
}

TEST(QuantizerSchemes, PactLearnsItsClippingLevel) {
  nn::reset_layer_names();
  nn::set_random_seed(5);
  auto model = nn::Sequential::create(
      {nn::InputSpec({6}), nn::Dense(16, {.activation = "relu"}), nn::Dense(3)}, "mlp");
  QuantizeConfig cfg;
  cfg.overrides["dense"] = {.activation_bits = 3, .scheme = "pact"};  // pact: activations only
  auto q = quantize_model(*model, cfg);
  auto fq = std::dynamic_pointer_cast<FakeQuantLayer>(q->get_layer("dense_quant"));
  ASSERT_TRUE(fq);
  EXPECT_EQ(fq->quantizer().config().scheme, "pact");
  EXPECT_EQ(std::dynamic_pointer_cast<QuantizeWrapperLayer>(q->get_layer("dense"))
                ->quantizer("kernel")
                .config()
                .scheme,
            "tf");  // the weights keep theirs
  const float alpha0 = weight(*fq, "alpha").item<float>();
  EXPECT_EQ(alpha0, 6.0f);
  q->compile({.optimizer = nn::Adam({.learning_rate = 5e-2}),
              .loss = nn::SparseCategoricalCrossentropy({.from_logits = true})});
  Rng rng(3);
  Tensor x = random_tensor({64, 6}, rng, -10.0f, 10.0f);  // ReLU outputs beyond alpha = 6
  Tensor y = testing::random_int_tensor({64}, rng, 0, 2);
  q->fit(x, y, {.epochs = 3, .batch_size = 16, .verbose = 0});
  const float alpha = weight(*fq, "alpha").item<float>();
  EXPECT_NE(alpha, alpha0);  // trainable
  // The quantizer's output: 3 bits in [0, alpha].
  KTensor in = nn::Input({16});
  auto probe = nn::Model::create({in}, {(*fq)(in)});
  Tensor out = (*probe)(random_tensor({8, 16}, rng, -1.0f, 8.0f));
  std::set<float> levels = distinct(out);
  EXPECT_LE(levels.size(), 8u);
  EXPECT_GE(*levels.begin(), 0.0f);
  EXPECT_LE(*levels.rbegin(), alpha * 1.0001f);
}

}  // namespace
}  // namespace lowbit::quant
