// Built outside the tree against an installed lowbit (tests/install/run.sh): an op, then a small
// model trained with fit and fine-tuned with QAT. It exits non-zero if a result is wrong, so the
// install test fails on a package that configures and links but does not work.
#include <cmath>
#include <cstdio>

#include "lowbit/nn/layers.h"
#include "lowbit/nn/model.h"
#include "lowbit/ops.h"
#include "lowbit/quant/quantize_model.h"

using namespace lowbit;

int main() try {
  // An op on eager tensors (reference or oneDNN kernel through the registry).
  Tensor r = ops::relu(Tensor::full({2, 3}, -1.0));
  for (float v : r.span<float>())
    if (v != 0.0f) return std::fprintf(stderr, "relu(-1) = %g, expected 0\n", v), 1;

  // A two-class problem that a linear model solves: label = (x0 + x1 > 0).
  Rng rng(3);
  const int64_t n = 256;
  Tensor x({n, 2}, DType::kF32);
  Tensor y({n}, DType::kS64);
  for (int64_t i = 0; i < n; ++i) {
    const float a = rng.uniform(-1, 1), b = rng.uniform(-1, 1);
    x.data<float>()[2 * i] = a;
    x.data<float>()[2 * i + 1] = b;
    y.data<int64_t>()[i] = a + b > 0 ? 1 : 0;
  }
  auto model = nn::Sequential::create({nn::InputSpec({2}), nn::Dense(16), nn::ReLU(), nn::Dense(2)});
  model->compile({.optimizer = nn::Adam({.learning_rate = 0.01}),
                  .loss = nn::SparseCategoricalCrossentropy({.from_logits = true}),
                  .metrics = {"accuracy"}});
  model->fit(x, y, {.epochs = 20, .batch_size = 32, .verbose = 0});
  const double acc = model->evaluate(x, y).at("accuracy");

  auto qat = quant::quantize_model(*model, quant::QuantizeConfig::preset("w8a8"));
  qat->compile({.optimizer = nn::Adam({.learning_rate = 0.001}),
                .loss = nn::SparseCategoricalCrossentropy({.from_logits = true}),
                .metrics = {"accuracy"}});
  qat->fit(x, y, {.epochs = 2, .batch_size = 32, .verbose = 0});
  const double qacc = qat->evaluate(x, y).at("accuracy");
  std::printf("consumer: float accuracy %.3f, w8a8 QAT accuracy %.3f\n", acc, qacc);
  if (!(acc >= 0.9 && qacc >= 0.9)) return std::fprintf(stderr, "accuracy below 0.9\n"), 1;
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "consumer: %s\n", e.what());
  return 1;
}
