// Where does fake quantization go? The user's question (docs/quantization.md): "if I call a
// fake-quant op after a conv layer, why would it quantize the weights and not the activations?"
// It would not: an op quantizes the tensor it is given. After a conv it gets the conv's OUTPUT.
// Weights are quantized by a fake quant on the kernel, BEFORE the conv reads it.
//
//   fake_quant_by_hand [--dot FILE]
//
// 1. By hand, eagerly: fake-quantize a conv kernel (per output channel, symmetric) and the conv's
//    activation (after bias and ReLU), and look at the integer codes.
// 2. In a training graph: the loss is computed with quantized weights, and its gradient reaches
//    the FLOAT kernel through the fake quant (straight-through estimator).
// 3. The same layer through quant::quantize_model: its summary shows the same two quantizers.
// The program checks what it prints and exits non-zero if a claim fails (it runs as a test).
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <set>

#include "lowbit/graph.h"
#include "lowbit/nn/layers.h"
#include "lowbit/nn/model.h"
#include "lowbit/ops.h"
#include "lowbit/ops/fake_quant.h"
#include "lowbit/quant/quantize_model.h"
#include "lowbit/quant/range.h"

using namespace lowbit;

namespace {

int failures = 0;
void check(bool ok, const char* claim) {
  std::printf("  [%s] %s\n", ok ? "ok" : "FAILED", claim);
  if (!ok) ++failures;
}

Tensor random(const Shape& s, Rng& rng, float lo, float hi) {
  Tensor t(s, DType::kF32);
  for (float& v : t.span<float>()) v = rng.uniform(lo, hi);
  return t;
}

size_t distinct(const Tensor& t) {
  std::set<float> s(t.span<float>().begin(), t.span<float>().end());
  return s.size();
}

}  // namespace

int main(int argc, char** argv) try {
  std::string dot_path;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    if (k == "--dot" && i + 1 < argc)
      dot_path = argv[++i];
    else
      throw ValueError("usage: fake_quant_by_hand [--dot FILE]");
  }
  Rng rng(7);
  const Attrs same{{"padding", std::string("same")}};
  // One Conv2D layer's data: input x [N, H, W, Cin], kernel w [3, 3, Cin, Cout], bias b [Cout].
  Tensor x = random({2, 6, 6, 1}, rng, 0.0f, 1.0f);
  Tensor w = random({3, 3, 1, 2}, rng, -0.5f, 0.5f);
  Tensor b = random({2}, rng, -0.1f, 0.1f);

  // ---- 1a. The weights: fake quant on the kernel, before the conv reads it -----------------
  // TFLite's int8 scheme: one range per output channel (the kernel's last axis), symmetric,
  // narrow range (codes -127..127 around zero), from the kernel's own min/max (last value).
  std::printf("1. By hand\n\nweights: FQ on the kernel, per output channel, 8 bit symmetric:\n");
  ops::MinMax<Tensor> wr = ops::min_max(w, /*per_channel=*/true);
  ops::MinMax<Tensor> wt = quant::range_target(wr.min, wr.max, /*symmetric=*/true, 8, true);
  Tensor wq = ops::fake_quant_with_min_max_vars_per_channel(w, wt.min, wt.max, 8, true);
  const ops::FakeQuantNudge n0 =
      ops::fake_quant_nudge(wt.min.data<float>()[0], wt.max.data<float>()[0], 8, true);
  std::printf("  channel 0: range [%g, %g], scale %g\n", n0.nudged_min, n0.nudged_max, n0.scale);
  bool on_grid = true;
  for (int i = 0; i < 4; ++i) {
    const float f = w.data<float>()[2 * i], q = wq.data<float>()[2 * i];
    std::printf("  w = %+.6f  ->  FQ(w) = %+.6f = %+4.0f x scale\n", f, q, q / n0.scale);
  }
  for (int64_t i = 0; i < w.numel(); i += 2) {
    const double k = wq.data<float>()[i] / n0.scale;
    on_grid = on_grid && std::abs(k - std::round(k)) < 1e-3 && std::abs(k) <= 127;
  }
  check(on_grid, "every quantized weight of channel 0 is an integer code (-127..127) x scale");

  // ---- 1b. The activation: fake quant on the conv's output, after bias and ReLU ------------
  // The integer conv accumulates in int32; the output is requantized to 8 bits once, after
  // the bias, a folded batch norm and the ReLU (its clamp): that is where the FQ goes.
  Tensor a = ops::relu(ops::conv2d(x, wq, same) + b);
  ops::MinMax<Tensor> ar = ops::min_max(a);
  ops::MinMax<Tensor> at = quant::range_target(ar.min, ar.max, /*symmetric=*/false, 8, false);
  Tensor aq = ops::fake_quant_with_min_max_vars(a, at.min, at.max, 8);
  std::printf("\nactivation: FQ after conv + bias + ReLU, 8 bit asymmetric:\n");
  std::printf("  range [%g, %g]: %zu distinct float values -> %zu codes\n", at.min.item<float>(),
              at.max.item<float>(), distinct(a), distinct(aq));
  check(distinct(aq) <= 256, "the activation takes at most 256 values");

  // ---- 1c. "FQ after a conv layer" quantizes the output, never the weights ------------------
  Tensor conv_out = ops::conv2d(x, w, same) + b;  // the conv ran with the FLOAT kernel
  ops::MinMax<Tensor> cr = ops::min_max(conv_out);
  ops::MinMax<Tensor> ct = quant::range_target(cr.min, cr.max, false, 8, false);
  Tensor after = ops::fake_quant_with_min_max_vars(conv_out, ct.min, ct.max, 8);
  (void)after;
  std::printf("\nFQ(conv(x, w)) rounds the conv's output; the conv itself used float w:\n");
  bool w_off_grid = false;
  for (int64_t i = 0; i < w.numel(); ++i) w_off_grid |= w.data<float>()[i] != wq.data<float>()[i];
  check(w_off_grid, "w is untouched by an FQ placed after the conv: it is not on a grid, FQ(w) is");

  // ---- 2. In a training graph: quantized forward, float weights, STE gradient --------------
  std::printf("\n2. In a training graph\n\n");
  Graph g;
  Value xv = g.placeholder("x", DType::kF32, {kUnknown, 6, 6, 1});
  Value kernel = g.variable("conv/kernel", w);  // the float weight the optimizer updates
  Value bias = g.variable("conv/bias", b);
  Value y;
  {
    Graph::Scope s(g, "conv");
    Value kq;
    {
      Graph::Scope s2(g, "weight_quant");
      ops::MinMax<Value> r = ops::min_max(kernel, true);
      ops::MinMax<Value> t = quant::range_target(r.min, r.max, true, 8, true);
      kq = ops::fake_quant_with_min_max_vars_per_channel(kernel, t.min, t.max, 8, true);
    }
    Value act = ops::relu(ops::conv2d(xv, kq, same) + bias);
    Graph::Scope s3(g, "act_quant");
    ops::MinMax<Value> r = ops::min_max(act);
    ops::MinMax<Value> t = quant::range_target(r.min, r.max, false, 8, false);
    y = ops::fake_quant_with_min_max_vars(act, t.min, t.max, 8);
  }
  Value loss = ops::mean(ops::square(y - 0.5));
  std::vector<Value> grads = gradients(loss, {kernel});
  Executor run(g, {loss, grads[0]});
  std::vector<Tensor> out = run.run({{xv, x}});
  double norm = 0;
  for (float v : out[1].span<float>()) norm += static_cast<double>(v) * v;
  std::printf("  loss %.6f, |d loss / d kernel| = %.6f (the float kernel receives a gradient)\n",
              out[0].item<float>(), std::sqrt(norm));
  check(norm > 0, "the gradient reaches the float kernel through both fake quants (STE)");
  if (!dot_path.empty()) {
    std::ofstream f(dot_path);
    f << g.to_dot({loss});
    std::printf("  graph written to %s: conv/weight_quant/... and conv/act_quant/...\n",
                dot_path.c_str());
  }

  // ---- 3. The same placement, automatically ------------------------------------------------
  std::printf("\n3. quant::quantize_model\n\n");
  nn::reset_layer_names();
  nn::set_random_seed(1);
  auto model = nn::Sequential::create(
      {nn::InputSpec({6, 6, 1}), nn::Conv2D(2, 3, {.padding = "same", .activation = "relu"}),
       nn::Flatten(), nn::Dense(3)},
      "float_model");
  nn::ModelPtr qat = quant::quantize_model(*model, quant::QuantizeConfig::preset("w8a8"));
  qat->predict_on_batch({x}, {.training = true});  // one training-mode call: ranges track
  std::cout << qat->summary();
  auto conv = std::dynamic_pointer_cast<quant::QuantizeWrapperLayer>(qat->get_layer("conv2d"));
  check(conv && conv->quantizers().count("kernel") == 1,
        "conv2d's kernel has a weight quantizer (QuantizeWrapper)");
  check(std::dynamic_pointer_cast<quant::FakeQuantLayer>(qat->get_layer("conv2d_quant")) != nullptr,
        "conv2d's output (after its ReLU) has an activation quantizer (FakeQuant)");
  check(qat->to_dot(true).find("conv2d/kernel_quant/fake_quant_with_min_max_vars_per_channel") !=
            std::string::npos,
        "the DOT graph names it conv2d/kernel_quant/fake_quant_with_min_max_vars_per_channel");

  std::printf("\n{\"example\": \"fake_quant_by_hand\", \"checks_failed\": %d}\n", failures);
  return failures == 0 ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "fake_quant_by_hand: error: %s\n", e.what());
  return 1;
}
