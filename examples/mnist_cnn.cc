// The main job: a CNN built from Keras-style layers, trained on MNIST in float with fit
// (progress bar, validation), evaluated, saved, reloaded; then fine-tuned with quantization-aware
// training (the usual practice: start from the trained float weights) under several schemes —
// wN = N-bit weights, aM = M-bit activations (presets of lowbit/quant/quantize_model.h) — each
// evaluated on the test set. Prints the summaries, a table (scheme, test accuracy, training
// images/s) and a final JSON line with the same rows: "float", then one per scheme.
//
//   mnist_cnn --data data/mnist [--epochs 10] [--qat-epochs 3] [--schemes w8a8,w4a8,w2a8,w4a4]
//             [--batch 64] [--threads 1] [--save mnist_cnn.lbm] [--min-accuracy 0.975]
//             [--check-qat-targets] [--no-int8] [--inspect FILE]
//
// After each scheme's QAT the model is converted to an integer model (lowbit/quant/convert.h),
// saved next to --save as <stem>_<scheme>.lbi, reloaded and evaluated: integer-model test
// accuracy, top-1 agreement with the QAT model, batch-1 latency and batch-256 throughput
// (lowbit's integer runtime, --threads), and the sizes: the float model's weights (f32), the
// integer file with one byte per int8 code, and the file as saved, 4- and 2-bit weights packed
// two or four codes a byte (JSON: "float_weight_bytes", "int8_unpacked_bytes",
// "int8_file_bytes"). --no-int8 skips it; --inspect FILE writes
// the first scheme's per-layer scales (IntegerModel::inspect_table) there.
//
// Files beside --save: the float model and its History (<save>.history.json), each scheme's QAT
// model <stem>_<scheme>.lbm with <stem>_<scheme>.lbm.history.json, and its integer model
// <stem>_<scheme>.lbi: what `lowbit report <stem>_w4a8.lbm --against <save>` reads.
//
// --check-qat-targets: exit with status 3 unless w8a8 is within 0.5 points of the float model's
// test accuracy, w4a8 within 1.0 and w2a8 within 3.0 (issue 4's targets).
//
// Architecture (docs/layers.md): two blocks of Conv2D(3x3, same)-BatchNorm-ReLU-MaxPool, then
// Dropout and a Dense classifier; Adam with a cosine learning-rate decay from 2e-3. BatchNorm
// momentum 0.9 (Keras default 0.99) so the moving statistics settle within 8,000 images.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>

#include "lowbit/data/idx.h"
#include "lowbit/nn/history.h"
#include "lowbit/nn/layers.h"
#include "lowbit/nn/model.h"
#include "lowbit/quant/convert.h"
#include "lowbit/quant/quantize_model.h"
#include "lowbit/threads.h"

using namespace lowbit;

namespace {

struct Row {
  std::string scheme;
  double accuracy = 0, images_per_s = 0, seconds = 0;
  // The integer model (schemes only; issue 13): accuracy, top-1 agreement with the QAT model,
  // file size, batch-1 latency and batch-256 throughput of lowbit's integer runtime.
  bool has_int8 = false;
  double int8_accuracy = 0, int8_agreement = 0, int8_latency_us = 0, int8_images_per_s = 0;
  int64_t int8_file_bytes = 0;      // the saved .lbi (low-bit weights packed)
  int64_t int8_unpacked_bytes = 0;  // the same model saved with one byte per int8 code
};

int64_t argmax_row(const Tensor& t, int64_t r) {
  const int64_t c = t.shape()[1];
  const float* p = t.data<float>() + r * c;
  return std::max_element(p, p + c) - p;
}

// The fraction of rows where a and b pick the same class, and where a picks `labels`.
double agreement(const Tensor& a, const Tensor& b) {
  int64_t same = 0;
  for (int64_t r = 0; r < a.shape()[0]; ++r) same += argmax_row(a, r) == argmax_row(b, r);
  return static_cast<double>(same) / static_cast<double>(a.shape()[0]);
}
double accuracy_of(const Tensor& logits, const Tensor& labels) {
  int64_t right = 0;
  for (int64_t r = 0; r < logits.shape()[0]; ++r)
    right += argmax_row(logits, r) == labels.data<int64_t>()[r];
  return static_cast<double>(right) / static_cast<double>(logits.shape()[0]);
}

// Converts the QAT model, saves and reloads the integer file, evaluates and times it.
void deploy(nn::Model& qat, const std::string& path, const MnistSplit& test, Row& row) {
  quant::IntegerModel im = quant::convert_to_integer(qat);
  im.save(path);
  quant::IntegerModel back = quant::IntegerModel::load(path);
  row.int8_file_bytes = static_cast<int64_t>(std::filesystem::file_size(path));
  const std::string unpacked = path + ".unpacked.tmp";  // only measured
  im.save(unpacked, {.pack = false});
  row.int8_unpacked_bytes = static_cast<int64_t>(std::filesystem::file_size(unpacked));
  std::filesystem::remove(unpacked);
  const Tensor yi = back.predict(test.images, 256);
  const Tensor yq = qat.predict(test.images, 256);
  row.has_int8 = true;
  row.int8_accuracy = accuracy_of(yi, test.labels);
  row.int8_agreement = agreement(yi, yq);
  // Batch 1: the median of 200 single-image runs (after 20 warm-up runs).
  std::vector<double> us;
  const Tensor one = Tensor::wrap(test.images.raw(), {1, 28, 28, 1}, DType::kF32);
  for (int i = 0; i < 220; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    back.predict(one, 1);
    const double d =
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
    if (i >= 20) us.push_back(d);
  }
  std::sort(us.begin(), us.end());
  row.int8_latency_us = us[us.size() / 2];
  // Batch 256: the median images/s of 5 passes over the first 1,792 test images.
  const int64_t n = std::min<int64_t>(1792, test.images.dim(0));
  const Tensor xs = Tensor::wrap(test.images.raw(), {n, 28, 28, 1}, DType::kF32);
  std::vector<double> ips;
  back.predict(xs, 256);
  for (int i = 0; i < 5; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    back.predict(xs, 256);
    ips.push_back(static_cast<double>(n) /
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ips.begin(), ips.end());
  row.int8_images_per_s = ips[ips.size() / 2];
  std::printf(
      "%s integer model: %s (%lld bytes; %lld unpacked), test accuracy %.2f%%, top-1 agreement "
      "with "
      "the QAT model %.2f%%, batch-1 latency %.0f us, batch-256 %.0f images/s\n",
      row.scheme.c_str(), path.c_str(), static_cast<long long>(row.int8_file_bytes),
      static_cast<long long>(row.int8_unpacked_bytes), 100 * row.int8_accuracy,
      100 * row.int8_agreement, row.int8_latency_us, row.int8_images_per_s);
}

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
  bool check_qat_targets = false, no_int8 = false;
  std::string inspect_path;
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
    else if (k == "--no-int8")
      no_int8 = true;
    else if (k == "--inspect")
      inspect_path = next();
    else if (k == "--help" || k == "-h") {
      std::cout << "usage: mnist_cnn --data DIR [--epochs N] [--qat-epochs N] [--schemes "
                   "w8a8,w4a8,w2a8,w4a4] [--batch N] [--threads N] [--save FILE] "
                   "[--min-accuracy X] [--check-qat-targets] [--first-last-bits N] [--no-int8] "
                   "[--inspect FILE]\n";
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
  nn::save_history(save + ".history.json", h, "float");  // for `lowbit report`
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
    {  // the QAT model and its History beside the float model (what `lowbit report` reads)
      const std::filesystem::path base(save);
      const std::string qpath =
          (base.parent_path() / (base.stem().string() + "_" + scheme + ".lbm")).string();
      q->save(qpath);
      nn::save_history(qpath + ".history.json", qh, "qat");
    }
    if (scheme == schemes.front())  // the quantizers with the ranges they learned
      std::cout << "\n" << q->summary() << "\n";
    nn::Logs ql = q->evaluate(test.images, test.labels, {.batch_size = 256});
    const double qimages = static_cast<double>(train.images.dim(0)) * 0.9 * qat_epochs;
    rows.push_back({scheme, ql["accuracy"], qimages / qs, qs});
    std::printf("%s: test accuracy %.2f%% (float %.2f%%)\n", scheme.c_str(), 100 * ql["accuracy"],
                100 * test_logs["accuracy"]);
    if (!no_int8) {
      const std::filesystem::path base(save);
      const std::string ipath =
          (base.parent_path() / (base.stem().string() + "_" + scheme + ".lbi")).string();
      deploy(*q, ipath, test, rows.back());
      if (scheme == schemes.front() && !inspect_path.empty()) {
        std::ofstream(inspect_path) << quant::IntegerModel::load(ipath).inspect_table();
        std::printf("per-layer scales of the %s integer model: %s\n", scheme.c_str(),
                    inspect_path.c_str());
      }
    }
  }

  const auto float_bytes = static_cast<long long>(std::filesystem::file_size(save));
  long long float_weight_bytes = 0;  // the f32 weights alone (the .lbm adds the optimizer state)
  for (const auto& [name, w] : model->named_weights())
    float_weight_bytes += static_cast<long long>(w->value.nbytes());
  std::printf("\n%-8s %14s %10s %12s %10s %9s %9s %9s %9s %9s %11s\n", "scheme", "test accuracy",
              "vs float", "train img/s", "int8 acc", "agree", "float B", "int8 B", "packed B",
              "b1 us", "b256 img/s");
  for (const Row& r : rows) {
    std::printf("%-8s %13.2f%% %+10.2f %12.0f", r.scheme.c_str(), 100 * r.accuracy,
                100 * (r.accuracy - rows[0].accuracy), r.images_per_s);
    if (r.has_int8)
      std::printf(
          " %9.2f%% %8.2f%% %9lld %9lld %9lld %9.0f %11.0f\n", 100 * r.int8_accuracy,
          100 * r.int8_agreement, float_weight_bytes, static_cast<long long>(r.int8_unpacked_bytes),
          static_cast<long long>(r.int8_file_bytes), r.int8_latency_us, r.int8_images_per_s);
    else
      std::printf(" %10s %9s %9lld\n", "-", "-", r.scheme == "float" ? float_weight_bytes : 0LL);
  }
  std::printf(
      "(float B: the f32 weights; int8 B: the integer file, one byte per code; packed B: "
      "the saved file, 4- and 2-bit weights packed; %s: %lld bytes with optimizer state)\n",
      save.c_str(), float_bytes);
  std::string json = "{\"example\": \"mnist_cnn\", \"threads\": " + std::to_string(threads) +
                     ", \"epochs\": " + std::to_string(epochs) +
                     ", \"qat_epochs\": " + std::to_string(qat_epochs);
  for (const Row& r : rows) {
    char buf[512];
    std::snprintf(buf, sizeof buf,
                  ", \"%s\": {\"test_accuracy\": %.4f, \"train_images_per_sec\": %.0f, "
                  "\"train_seconds\": %.1f",
                  r.scheme.c_str(), r.accuracy, r.images_per_s, r.seconds);
    json += buf;
    if (r.has_int8) {
      std::snprintf(buf, sizeof buf,
                    ", \"int8_test_accuracy\": %.4f, \"int8_agreement\": %.4f, "
                    "\"float_weight_bytes\": %lld, \"int8_unpacked_bytes\": %lld, "
                    "\"int8_file_bytes\": %lld, \"int8_latency_us\": %.1f, "
                    "\"int8_images_per_sec\": %.0f",
                    r.int8_accuracy, r.int8_agreement, float_weight_bytes,
                    static_cast<long long>(r.int8_unpacked_bytes),
                    static_cast<long long>(r.int8_file_bytes), r.int8_latency_us,
                    r.int8_images_per_s);
      json += buf;
    } else if (r.scheme == "float") {
      json += ", \"file_bytes\": " + std::to_string(float_bytes) +
              ", \"weight_bytes\": " + std::to_string(float_weight_bytes);
    }
    json += "}";
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
