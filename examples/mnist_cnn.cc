// The main job: a CNN built from Keras-style layers, trained on MNIST in float with fit
// (progress bar, validation), evaluated, saved, reloaded; then fine-tuned with quantization-aware
// training (the usual practice: start from the trained float weights) under several schemes —
// wN = N-bit weights, aM = M-bit activations (presets of lowbit/quant/quantize_model.h) — each
// evaluated on the test set. Prints the summaries, a table (scheme, test accuracy, training
// images/s) and a final JSON line with the same rows: "float", then one per scheme.
//
//   mnist_cnn --data data/mnist [--epochs 10] [--qat-epochs 3] [--schemes w8a8,w4a8,w2a8,w4a4]
//             [--batch 64] [--threads 1] [--save mnist_cnn.lbm] [--min-accuracy 0.975]
//             [--check-qat-targets]
//
// --check-qat-targets: exit with status 3 unless w8a8 is within 0.5 points of the float model's
// test accuracy, w4a8 within 1.0 and w2a8 within 3.0 (issue 4's targets).
//
// Architecture (docs/layers.md): two blocks of Conv2D(3x3, same)-BatchNorm-ReLU-MaxPool, then
// Dropout and a Dense classifier; Adam with a cosine learning-rate decay from 2e-3. BatchNorm
// momentum 0.9 (Keras default 0.99) so the moving statistics settle within 8,000 images.
#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <sstream>

#include "lowbit/data/idx.h"
#include "lowbit/nn/layers.h"
#include "lowbit/nn/model.h"
#include "lowbit/quant/quantize_model.h"
#include "lowbit/threads.h"

using namespace lowbit;

namespace {

struct Row {
  std::string scheme;
  double accuracy = 0, images_per_s = 0, seconds = 0;
};

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string t; std::getline(ss, t, ',');)
    if (!t.empty()) out.push_back(t);
  return out;
}

}  // namespace

int main(int argc, char** argv) try {
  std::string data = "data/mnist", save = "mnist_cnn.lbm";
  int epochs = 10, qat_epochs = 3, threads = 1;
  int64_t batch = 64;
  double min_accuracy = 0;
  bool check_qat_targets = false;
  int first_last_bits = 0;
  std::vector<std::string> schemes{"w8a8", "w4a8", "w2a8", "w4a4"};
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw ValueError("missing value after " + k);
      return argv[++i];
    };
    if (k == "--data")
      data = next();
    else if (k == "--epochs")
      epochs = std::stoi(next());
    else if (k == "--batch")
      batch = std::stoll(next());
    else if (k == "--threads")
      threads = std::stoi(next());
    else if (k == "--save")
      save = next();
    else if (k == "--min-accuracy")
      min_accuracy = std::stod(next());
    else if (k == "--qat-epochs")
      qat_epochs = std::stoi(next());
    else if (k == "--schemes")
      schemes = split_commas(next());
    else if (k == "--check-qat-targets")
      check_qat_targets = true;
    else if (k == "--first-last-bits")
      first_last_bits = std::stoi(next());
    else if (k == "--help" || k == "-h") {
      std::cout << "usage: mnist_cnn --data DIR [--epochs N] [--qat-epochs N] [--schemes "
                   "w8a8,w4a8,w2a8,w4a4] [--batch N] [--threads N] [--save FILE] "
                   "[--min-accuracy X] [--check-qat-targets] [--first-last-bits N]\n";
      return 0;
    } else
      throw ValueError("unknown argument '" + k + "' (try --help)");
  }
  set_num_threads(threads);
  MnistSplit train = load_mnist(data, true), test = load_mnist(data, false);
  std::printf("MNIST from %s: %lld training and %lld test images\n\n", data.c_str(),
              static_cast<long long>(train.images.dim(0)),
              static_cast<long long>(test.images.dim(0)));

  nn::set_random_seed(42);
  auto model = nn::Sequential::create(
      {nn::InputSpec({28, 28, 1}), nn::Conv2D(32, 3, {.padding = "same", .use_bias = false}),
       nn::BatchNormalization({.momentum = 0.9}), nn::ReLU(), nn::MaxPooling2D(2),
       nn::Conv2D(64, 3, {.padding = "same", .use_bias = false}),
       nn::BatchNormalization({.momentum = 0.9}), nn::ReLU(), nn::MaxPooling2D(2), nn::Flatten(),
       nn::Dropout(0.3), nn::Dense(128, {.activation = "relu"}), nn::Dense(10)},
      "mnist_cnn");
  std::cout << model->summary() << "\n";
  const int64_t steps_per_epoch = (train.images.dim(0) * 9 / 10 + batch - 1) / batch;
  model->compile(
      {.optimizer = nn::Adam({.schedule = nn::CosineDecay(2e-3, steps_per_epoch * epochs, 0.05)}),
       .loss = nn::SparseCategoricalCrossentropy({.from_logits = true}),
       .metrics = {"accuracy"}});
  auto t0 = std::chrono::steady_clock::now();
  nn::History h =
      model->fit(train.images, train.labels,
                 {.epochs = epochs, .batch_size = batch, .seed = 1, .validation_split = 0.1});
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!h.stop_reason.empty()) throw Error("training stopped: " + h.stop_reason);
  const double images = static_cast<double>(train.images.dim(0)) * 0.9 * epochs;

  nn::Logs test_logs = model->evaluate(test.images, test.labels, {.batch_size = 256});
  std::printf("\ntest: loss %.4f, accuracy %.2f%%\n", test_logs["loss"],
              100 * test_logs["accuracy"]);
  model->save(save);
  auto reloaded = nn::load_model(save);
  nn::Logs again = reloaded->evaluate(test.images, test.labels, {.batch_size = 256});
  std::printf("saved to %s and reloaded: test accuracy %.2f%% (identical: %s)\n", save.c_str(),
              100 * again["accuracy"], again["accuracy"] == test_logs["accuracy"] ? "yes" : "NO");
  std::vector<Row> rows{{"float", test_logs["accuracy"], images / seconds, seconds}};

  // Quantization-aware fine-tuning from the float weights, one fresh copy per scheme.
  for (const std::string& scheme : schemes) {
    quant::QuantizeConfig cfg = quant::QuantizeConfig::preset(scheme);
    if (first_last_bits > 0) cfg.first_last_weight_bits = first_last_bits;
    nn::ModelPtr q = quant::quantize_model(*model, cfg);
    std::printf("\n==> quantization-aware training, scheme %s (%d epochs from the float model)\n",
                scheme.c_str(), qat_epochs);
    const int64_t qat_steps = steps_per_epoch * qat_epochs;
    q->compile({.optimizer = nn::Adam({.schedule = nn::CosineDecay(5e-4, qat_steps, 0.05)}),
                .loss = nn::SparseCategoricalCrossentropy({.from_logits = true}),
                .metrics = {"accuracy"}});
    auto q0 = std::chrono::steady_clock::now();
    nn::History qh =
        q->fit(train.images, train.labels,
               {.epochs = qat_epochs, .batch_size = batch, .seed = 2, .validation_split = 0.1});
    double qs = std::chrono::duration<double>(std::chrono::steady_clock::now() - q0).count();
    if (!qh.stop_reason.empty()) throw Error(scheme + " training stopped: " + qh.stop_reason);
    if (scheme == schemes.front())  // the quantizers with the ranges they learned
      std::cout << "\n" << q->summary() << "\n";
    nn::Logs ql = q->evaluate(test.images, test.labels, {.batch_size = 256});
    const double qimages = static_cast<double>(train.images.dim(0)) * 0.9 * qat_epochs;
    rows.push_back({scheme, ql["accuracy"], qimages / qs, qs});
    std::printf("%s: test accuracy %.2f%% (float %.2f%%)\n", scheme.c_str(), 100 * ql["accuracy"],
                100 * test_logs["accuracy"]);
  }

  std::printf("\n%-8s %14s %10s %12s\n", "scheme", "test accuracy", "vs float", "train img/s");
  for (const Row& r : rows)
    std::printf("%-8s %13.2f%% %+10.2f %12.0f\n", r.scheme.c_str(), 100 * r.accuracy,
                100 * (r.accuracy - rows[0].accuracy), r.images_per_s);
  std::string json = "{\"example\": \"mnist_cnn\", \"threads\": " + std::to_string(threads) +
                     ", \"epochs\": " + std::to_string(epochs) +
                     ", \"qat_epochs\": " + std::to_string(qat_epochs);
  for (const Row& r : rows) {
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  ", \"%s\": {\"test_accuracy\": %.4f, \"train_images_per_sec\": %.0f, "
                  "\"train_seconds\": %.1f}",
                  r.scheme.c_str(), r.accuracy, r.images_per_s, r.seconds);
    json += buf;
  }
  std::printf("%s}\n", json.c_str());

  int status = 0;
  if (test_logs["accuracy"] < min_accuracy) {
    std::fprintf(stderr, "mnist_cnn: test accuracy %.4f is below the required %.4f\n",
                 test_logs["accuracy"], min_accuracy);
    status = 2;
  }
  if (check_qat_targets) {
    const std::map<std::string, double> max_drop{{"w8a8", 0.005}, {"w4a8", 0.010}, {"w2a8", 0.030}};
    for (const Row& r : rows) {
      auto it = max_drop.find(r.scheme);
      if (it != max_drop.end() && rows[0].accuracy - r.accuracy > it->second) {
        std::fprintf(stderr,
                     "mnist_cnn: %s test accuracy %.4f is more than %.1f points below float "
                     "(%.4f)\n",
                     r.scheme.c_str(), r.accuracy, 100 * it->second, rows[0].accuracy);
        if (status == 0) status = 3;
      }
    }
  }
  return status;
} catch (const std::exception& e) {
  std::fprintf(stderr, "mnist_cnn: error: %s\n", e.what());
  return 1;
}
