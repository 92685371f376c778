// Variable-length sequences with timestep masks, two ways (docs/masking.md):
//
//   1. Layers: sequences of lengths 3..24 are padded to 24 steps with GARBAGE (not zeros), the
//      mask comes from the lengths (ops::sequence_mask) and is fed as a model input; an LSTM
//      consumes it and the loss counts valid steps only. The same model trained without the
//      mask sees the garbage and does worse.
//   2. The low-level equivalent: Masking + GlobalAveragePooling1D and the masked loss rebuilt by
//      hand from sequence_mask, where and masked means, with the same numbers.
//
// The task: label a sequence 1 when the mean of its first feature over its VALID steps is
// positive. The padding is drawn from a distribution that shifts that mean, so a model that
// cannot tell padding from data is misled.
//
//   masked_sequences [--epochs 8] [--seed 1] [--min-accuracy 0]
#include <cmath>
#include <cstdio>
#include <iostream>
#include <string>

#include "lowbit/data/dataset.h"
#include "lowbit/nn/layers.h"
#include "lowbit/nn/masking.h"
#include "lowbit/nn/model.h"
#include "lowbit/ops.h"
#include "lowbit/rng.h"

using namespace lowbit;

namespace {

constexpr int64_t kSteps = 24, kFeatures = 2;

struct Data {
  Tensor x, lengths, mask, y;
};

// Valid steps: N(0.15 * sign, 1) on feature 0 and noise on feature 1; padding: 2 + N(0, 1).
Data make_data(int64_t n, Rng& rng) {
  Data d;
  d.x = Tensor::zeros({n, kSteps, kFeatures});
  d.lengths = Tensor::zeros({n}, DType::kS32);
  d.y = Tensor::zeros({n, 1});
  for (int64_t b = 0; b < n; ++b) {
    const int32_t len = 3 + static_cast<int32_t>(rng.next_u32() % (kSteps - 2));
    d.lengths.data<int32_t>()[b] = len;
    const float shift = (rng.next_u32() & 1) ? 0.4f : -0.4f;
    double sum = 0;
    for (int64_t t = 0; t < kSteps; ++t) {
      float* p = d.x.data<float>() + (b * kSteps + t) * kFeatures;
      if (t < len) {
        p[0] = shift + rng.normal();
        p[1] = rng.normal();
        sum += p[0];
      } else {
        p[0] = 2.0f + rng.normal();  // garbage, not zeros
        p[1] = rng.normal();
      }
    }
    d.y.data<float>()[b] = sum > 0 ? 1.0f : 0.0f;
  }
  d.mask = ops::sequence_mask(d.lengths, kSteps);
  return d;
}

nn::ModelPtr classifier(bool use_mask) {
  nn::KTensor x = nn::Input({kSteps, kFeatures}), m = nn::Input({kSteps}, DType::kBool);
  nn::CallOptions opt;
  if (use_mask) opt.masks = {m};
  nn::KTensor h = (*nn::LSTM(16))(std::vector<nn::KTensor>{x}, opt)[0];
  nn::KTensor y = (*nn::Dense(1))(h);
  auto model = nn::Model::create({x, m}, {y});
  model->compile({.optimizer = nn::Adam({.learning_rate = 0.01}),
                  .loss = nn::BinaryCrossentropy({.from_logits = true}),
                  .metrics = {"binary_accuracy"}});
  return model;
}

}  // namespace

int main(int argc, char** argv) {
  int epochs = 8;
  uint64_t seed = 1;
  double min_accuracy = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--epochs") epochs = std::stoi(argv[i + 1]);
    if (k == "--seed") seed = std::stoull(argv[i + 1]);
    if (k == "--min-accuracy") min_accuracy = std::stod(argv[i + 1]);
  }
  try {
    Rng rng(seed);
    Data train = make_data(2048, rng), test = make_data(512, rng);

    // 1. Layers.
    double acc[2] = {0, 0};
    for (int use_mask = 1; use_mask >= 0; --use_mask) {
      nn::set_random_seed(seed);
      auto model = classifier(use_mask);
      model->fit(data::Dataset::from_tensors({train.x, train.mask}, {train.y}),
                 {.epochs = epochs, .batch_size = 64, .seed = seed, .verbose = 0});
      acc[use_mask] = model->evaluate(data::Dataset::from_tensors({test.x, test.mask}, {test.y}))
                          .at("binary_accuracy");
    }
    std::printf("test accuracy with the mask: %.3f   without it (garbage seen): %.3f\n", acc[1],
                acc[0]);

    // 2. The low-level equivalent of Masking + GlobalAveragePooling1D, and of the masked loss.
    Tensor zero_padded =
        ops::where(ops::expand_dims(test.mask, -1), test.x, ops::scalar_like(test.x, 0.0));
    nn::KTensor in = nn::Input({kSteps, kFeatures});
    auto pool = nn::Model::create({in}, {(*nn::GlobalAveragePooling1D())((*nn::Masking())(in))});
    Tensor by_layers = pool->predict(zero_padded);
    Tensor m = ops::sequence_mask(test.lengths, kSteps);                      // bool [B, T]
    Tensor by_hand = ops::masked_mean(test.x, ops::expand_dims(m, -1), {1});  // garbage unread
    const double pool_diff = ops::max(ops::abs(by_layers - by_hand)).item<float>();
    // A per-step loss (squared feature 0) averaged over the valid steps only.
    Tensor per_step = ops::square(ops::slice(test.x, {0, 0, 0}, {ops::kSliceMax, kSteps, 1}));
    Tensor loss_by_hand = ops::masked_mean(ops::squeeze(per_step, {-1}), m);  // sum(l m)/sum(m)
    std::printf(
        "pooling: layers vs ops max |diff| = %.2g; masked mean loss by hand = %.4f; "
        "lengths back from the mask match: %s\n",
        pool_diff, loss_by_hand.item<float>(),
        ops::max(ops::abs(ops::lengths_from_mask(m) - test.lengths.to(DType::kS64)))
                    .item<int64_t>() == 0
            ? "yes"
            : "no");
    if (pool_diff > 1e-5 || acc[1] < min_accuracy) return 2;
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "masked_sequences: " << e.what() << "\n";
    return 1;
  }
}
