// Feature masks (docs/masking.md, "Feature masks"): predicting the next RGB value of a pixel when
// some steps only have R and G, or R and B. Keras masks whole timesteps; here single values are
// missing, and three pieces deal with that:
//
//   * MissingFeatures: fills a missing value with 0 and appends a presence indicator per
//     channel ([B, T, 3] -> [B, T, 6]), so the LSTM knows a 0 means "not observed"; a step with
//     no channel at all becomes a masked step the LSTM skips;
//   * FeatureDropout: in training only, hides extra observed values at random, so the model
//     learns to fill in a channel from the others and from the past;
//   * FeatureMaskedMeanSquaredError: a target channel that is missing (NaN) counts for nothing.
//
// Data: a pixel's colour follows a noisy damped rotation of a 2-D latent state (each sequence
// has its own angular speed), seen through a fixed 3x2 mixing matrix: the channels are
// correlated (any two determine the latent state, so a missing channel is predictable from the
// other two) and the colour moves smoothly (so it is predictable from the past). Each channel of
// each step is missing independently with probability --missing. Inputs are steps 0..T-1, the
// targets steps 1..T (the next full RGB value); targets are missing where the data is.
// Every model is evaluated against the GROUND TRUTH next RGB, missing channels included.
//
// Models (the table printed at the end):
//   last_value           no learning: each channel's last observed value (0.5 before the first
//                        observation), the naive predictor that ignores missingness;
//   lstm_zero_fill       LSTM(32) -> Dense(3) on zero-filled inputs without indicators, trained
//                        with plain MSE on zero-filled targets: the same LSTM without feature
//                        masks;
//   lstm_zero_fill_masked_loss   the same inputs with the feature-masked loss (separates what
//                        the loss does from what the indicators do);
//   lstm_feature_masks   FeatureDropout(--feature-dropout) -> MissingFeatures -> LSTM(32) ->
//                        Dense(3), FeatureMaskedMeanSquaredError;
//   lstm_feature_masks_qat_w8a8   the previous model through quant::quantize_model with the
//                        "w8a8" preset, fine-tuned for --qat-epochs;
//   lstm_feature_masks_int8   the QAT model converted to integer-only inference
//                        (quant::convert_to_integer: int8 LSTM "8x8_16", int8 Dense), saved as a
//                        .lbi file and loaded back. convert_to_integer takes one f32 input and
//                        has no integer form for MissingFeatures (a float fill and indicators
//                        from a second, bool input) nor for FeatureDropout (training only): the
//                        integer model is the rest, Masking(0) -> LSTM -> Dense, fed
//                        MissingFeatures' output computed on the host. Masking(0) gives exactly
//                        MissingFeatures' timestep mask (a step with a present channel has an
//                        indicator 1; one with none is all zeros).
//
//   rgb_missing [--epochs 12] [--qat-epochs 3] [--seed 1] [--missing 0.35]
//               [--feature-dropout 0.15] [--train 2048] [--check]
// --check exits with status 2 unless lstm_feature_masks has a test MSE at most 0.8x that of
// last_value and of lstm_zero_fill, the QAT model's MSE is at most 1.25x the float model's
// (+ 2e-4 absolute, for very small errors), and the integer model's at most 1.1x the QAT one's
// (+ 2e-4).
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "lowbit/data/dataset.h"
#include "lowbit/nn/layers.h"
#include "lowbit/nn/losses.h"
#include "lowbit/nn/masking.h"
#include "lowbit/nn/model.h"
#include "lowbit/ops.h"
#include "lowbit/quant/convert.h"
#include "lowbit/quant/quantize_model.h"
#include "lowbit/rng.h"

using namespace lowbit;

namespace {

constexpr int64_t kSteps = 20, kChannels = 3, kUnits = 32;
// RGB = 0.5 + 0.15 * W s: any two rows of W are independent, so two channels give the third.
constexpr float kMix[kChannels][2] = {{1.0f, 0.3f}, {0.5f, 0.9f}, {-0.4f, 1.0f}};

struct Data {
  Tensor x_filled;  // f32 [N, T, 3], 0 where missing
  Tensor present;   // bool [N, T, 3]
  Tensor y_nan;     // f32 [N, T, 3]: the next step's RGB, NaN where missing
  Tensor y_filled;  // the same, 0 where missing
  Tensor truth;     // f32 [N, T, 3]: the next step's full RGB
};

Data make_data(int64_t n, double missing, Rng& rng) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  Data d;
  d.x_filled = Tensor::zeros({n, kSteps, kChannels});
  d.present = Tensor::zeros({n, kSteps, kChannels}, DType::kBool);
  d.y_nan = Tensor::zeros({n, kSteps, kChannels});
  d.y_filled = Tensor::zeros({n, kSteps, kChannels});
  d.truth = Tensor::zeros({n, kSteps, kChannels});
  std::vector<float> rgb((kSteps + 1) * kChannels);
  std::vector<bool> seen((kSteps + 1) * kChannels);
  for (int64_t b = 0; b < n; ++b) {
    const float theta = rng.uniform(0.25f, 0.6f), rho = 0.97f;
    const float c = rho * std::cos(theta), s = rho * std::sin(theta);
    float z0 = rng.normal(), z1 = rng.normal();
    for (int64_t t = 0; t <= kSteps; ++t) {
      for (int64_t k = 0; k < kChannels; ++k) {
        rgb[t * kChannels + k] =
            0.5f + 0.15f * (kMix[k][0] * z0 + kMix[k][1] * z1) + 0.01f * rng.normal();
        seen[t * kChannels + k] = rng.uniform() >= missing;
      }
      const float n0 = c * z0 - s * z1 + 0.15f * rng.normal();
      const float n1 = s * z0 + c * z1 + 0.15f * rng.normal();
      z0 = n0;
      z1 = n1;
    }
    const int64_t base = b * kSteps * kChannels;
    for (int64_t i = 0; i < kSteps * kChannels; ++i) {
      const int64_t next = i + kChannels;
      d.x_filled.data<float>()[base + i] = seen[i] ? rgb[i] : 0.0f;
      d.present.data<bool>()[base + i] = seen[i];
      d.y_nan.data<float>()[base + i] = seen[next] ? rgb[next] : nan;
      d.y_filled.data<float>()[base + i] = seen[next] ? rgb[next] : 0.0f;
      d.truth.data<float>()[base + i] = rgb[next];
    }
  }
  return d;
}

struct Errors {
  double mse = 0, mae = 0;
};

Errors errors(const Tensor& pred, const Tensor& truth) {
  Errors e;
  const int64_t n = truth.numel();
  for (int64_t i = 0; i < n; ++i) {
    const double diff = pred.data<float>()[i] - truth.data<float>()[i];
    e.mse += diff * diff;
    e.mae += std::abs(diff);
  }
  e.mse /= static_cast<double>(n);
  e.mae /= static_cast<double>(n);
  return e;
}

// Each channel's last observed value, 0.5 (the mean colour) before the first observation.
Tensor last_value(const Data& d) {
  Tensor p = Tensor::zeros(d.truth.shape());
  const int64_t n = d.truth.dim(0);
  for (int64_t b = 0; b < n; ++b)
    for (int64_t k = 0; k < kChannels; ++k) {
      float last = 0.5f;
      for (int64_t t = 0; t < kSteps; ++t) {
        const int64_t i = (b * kSteps + t) * kChannels + k;
        if (d.present.data<bool>()[i]) last = d.x_filled.data<float>()[i];
        p.data<float>()[i] = last;
      }
    }
  return p;
}

// The same LSTM without feature masks: zero-filled inputs, no indicators.
nn::ModelPtr zero_fill_lstm(bool masked_loss) {
  nn::KTensor x = nn::Input({kSteps, kChannels});
  nn::KTensor h = (*nn::LSTM(kUnits, {.return_sequences = true}))(x);
  auto model = nn::Model::create({x}, {(*nn::Dense(kChannels))(h)});
  model->compile(
      {.optimizer = nn::Adam({.learning_rate = 0.005}),
       .loss = masked_loss ? nn::FeatureMaskedMeanSquaredError() : nn::MeanSquaredError()});
  return model;
}

// (x, feature mask) -> FeatureDropout -> MissingFeatures -> LSTM -> Dense, masked loss.
nn::ModelPtr feature_mask_lstm(double feature_dropout) {
  nn::KTensor x = nn::Input({kSteps, kChannels});
  nn::KTensor fm = nn::Input({kSteps, kChannels}, DType::kBool);
  auto hidden = (*nn::FeatureDropout(feature_dropout))(std::vector<nn::KTensor>{x, fm});
  nn::KTensor h = (*nn::MissingFeatures())(hidden)[0];  // [B, T, 6]
  h = (*nn::LSTM(kUnits, {.return_sequences = true}))(h);
  auto model = nn::Model::create({x, fm}, {(*nn::Dense(kChannels))(h)});
  model->compile({.optimizer = nn::Adam({.learning_rate = 0.005}),
                  .loss = nn::FeatureMaskedMeanSquaredError()});
  return model;
}

// The integer model of the trained QAT model: its layers after MissingFeatures (the QAT
// QuantizedLSTM, the Dense wrapper and the output FakeQuant, shared, not copied) behind a
// Masking(0) on a [T, 6] input; and a float model computing MissingFeatures' output.
struct Deployed {
  quant::IntegerModel im;
  nn::ModelPtr features;  // (x, feature mask) -> MissingFeatures output [B, T, 6]
};

Deployed deploy(const nn::Model& qat) {
  const nn::KTensor out = qat.outputs()[0];
  const nn::KTensor dense = out.node->inputs.at(0);
  const nn::KTensor lstm = dense.node->inputs.at(0);
  const nn::KTensor mf = lstm.node->inputs.at(0);
  const std::string want[4] = {"FakeQuant", "QuantizeWrapper", "QuantizedLSTM", "MissingFeatures"};
  const nn::KTensor chain[4] = {out, dense, lstm, mf};
  for (int i = 0; i < 4; ++i)
    if (chain[i].node->layer->class_name() != want[i])
      throw std::runtime_error("rgb_missing: unexpected QAT model structure: '" +
                               chain[i].node->layer->name() + "' is a " +
                               chain[i].node->layer->class_name() + ", expected " + want[i]);
  nn::KTensor x = nn::Input({kSteps, 2 * kChannels});
  nn::KTensor h = (*nn::Masking(0.0))(x);
  h = (*lstm.node->layer)(h);
  h = (*dense.node->layer)(h);
  h = (*out.node->layer)(h);
  auto tail = nn::Model::create({x}, {h}, "rgb_lstm_tail");
  Deployed d;
  const std::string path =
      (std::filesystem::temp_directory_path() / "rgb_missing_lstm.lbi").string();
  quant::convert_to_integer(*tail).save(path);
  d.im = quant::IntegerModel::load(path);
  std::filesystem::remove(path);
  d.features = nn::Model::create(qat.inputs(), {mf}, "rgb_missing_features");
  return d;
}

}  // namespace

int main(int argc, char** argv) {
  int epochs = 12, qat_epochs = 3;
  uint64_t seed = 1;
  double missing = 0.35, feature_dropout = 0.15;
  int64_t n_train = 2048;
  bool check = false;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "--check") {
      check = true;
      continue;
    }
    if (i + 1 >= argc) {
      std::cerr << "rgb_missing: " << k << " needs a value\n";
      return 1;
    }
    const std::string v = argv[++i];
    if (k == "--epochs") {
      epochs = std::stoi(v);
    } else if (k == "--qat-epochs") {
      qat_epochs = std::stoi(v);
    } else if (k == "--seed") {
      seed = std::stoull(v);
    } else if (k == "--missing") {
      missing = std::stod(v);
    } else if (k == "--feature-dropout") {
      feature_dropout = std::stod(v);
    } else if (k == "--train") {
      n_train = std::stoll(v);
    } else {
      std::cerr << "rgb_missing: unknown flag " << k << "\n";
      return 1;
    }
  }
  try {
    Rng rng(seed);
    const Data train = make_data(n_train, missing, rng), test = make_data(512, missing, rng);
    const nn::FitOptions fit{.epochs = epochs, .batch_size = 64, .seed = seed, .verbose = 0};

    struct Row {
      std::string name;
      Errors e;
    };
    std::vector<Row> rows;
    rows.push_back({"last_value", errors(last_value(test), test.truth)});

    for (bool masked_loss : {false, true}) {
      nn::set_random_seed(seed);
      auto model = zero_fill_lstm(masked_loss);
      model->fit(data::Dataset::from_tensors({train.x_filled},
                                             {masked_loss ? train.y_nan : train.y_filled}),
                 fit);
      rows.push_back({masked_loss ? "lstm_zero_fill_masked_loss" : "lstm_zero_fill",
                      errors(model->predict(test.x_filled, 128), test.truth)});
    }

    nn::set_random_seed(seed);
    auto model = feature_mask_lstm(feature_dropout);
    model->fit(data::Dataset::from_tensors({train.x_filled, train.present}, {train.y_nan}), fit);
    rows.push_back({"lstm_feature_masks",
                    errors(model->predict_on_batch({test.x_filled, test.present})[0], test.truth)});

    // Quantization-aware fine-tuning of the trained float model (int8 weights and activations).
    auto qat = quant::quantize_model(*model, quant::QuantizeConfig::preset("w8a8"));
    qat->compile({.optimizer = nn::Adam({.learning_rate = 0.001}),
                  .loss = nn::FeatureMaskedMeanSquaredError()});
    nn::FitOptions qfit = fit;
    qfit.epochs = qat_epochs;
    qat->fit(data::Dataset::from_tensors({train.x_filled, train.present}, {train.y_nan}), qfit);
    rows.push_back({"lstm_feature_masks_qat_w8a8",
                    errors(qat->predict_on_batch({test.x_filled, test.present})[0], test.truth)});

    // Integer-only deployment of the QAT model (what converts: see deploy()).
    Deployed dep = deploy(*qat);
    const Tensor features = dep.features->predict_on_batch({test.x_filled, test.present})[0];
    rows.push_back({"lstm_feature_masks_int8", errors(dep.im.predict(features), test.truth)});

    std::printf(
        "next-RGB prediction, %lld test sequences x %lld steps, each channel missing "
        "with p = %.2f;\nerrors against the ground-truth next RGB (missing channels "
        "included), RGB in [0, 1]\n\n",
        static_cast<long long>(test.truth.dim(0)), static_cast<long long>(kSteps), missing);
    std::printf("%-30s %12s %12s\n", "model", "test MSE", "test MAE");
    for (const Row& r : rows)
      std::printf("%-30s %12.6f %12.6f\n", r.name.c_str(), r.e.mse, r.e.mae);
    std::printf(
        "\n{\"example\": \"rgb_missing\", \"missing\": %.3f, \"epochs\": %d, "
        "\"qat_epochs\": %d, \"seed\": %llu",
        missing, epochs, qat_epochs, static_cast<unsigned long long>(seed));
    for (const char* metric : {"mse", "mae"}) {
      std::printf(", \"%s\": {", metric);
      for (size_t i = 0; i < rows.size(); ++i)
        std::printf("%s\"%s\": %.6f", i ? ", " : "", rows[i].name.c_str(),
                    metric[1] == 's' ? rows[i].e.mse : rows[i].e.mae);
      std::printf("}");
    }
    std::printf("}\n");

    if (check) {
      const double base = rows[0].e.mse, zero_fill = rows[1].e.mse, masks = rows[3].e.mse,
                   qat_mse = rows[4].e.mse, int_mse = rows[5].e.mse;
      bool ok = true;
      if (!(masks <= 0.8 * base && masks <= 0.8 * zero_fill)) {
        std::fprintf(stderr,
                     "check failed: feature-mask LSTM MSE %.6f is not <= 0.8 x %.6f "
                     "(last value) and 0.8 x %.6f (zero fill)\n",
                     masks, base, zero_fill);
        ok = false;
      }
      if (!(qat_mse <= 1.25 * masks + 2e-4)) {
        std::fprintf(stderr, "check failed: QAT MSE %.6f is not within 1.25 x %.6f + 2e-4\n",
                     qat_mse, masks);
        ok = false;
      }
      if (!(int_mse <= 1.1 * qat_mse + 2e-4)) {
        std::fprintf(stderr, "check failed: integer MSE %.6f is not within 1.1 x %.6f + 2e-4\n",
                     int_mse, qat_mse);
        ok = false;
      }
      if (!ok) return 2;
      std::printf("check passed\n");
    }
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "rgb_missing: " << e.what() << "\n";
    return 1;
  }
}
