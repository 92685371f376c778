// Training throughput of the two fixed benchmark models, the same work as the PyTorch peer
// (../shared/peers/torch_mnist.py): batch 64, Adam(1e-3), sparse softmax cross-entropy from
// logits, on the 8,000-image MNIST split, images/s per epoch, median over the timed epochs after
// a warm-up. Prints one JSON line per (model, variant, threads).
//
//   train_bench [--model cnn|mlp|all] [--threads 1,2] [--epochs 5] [--warmup 20]
//               [--variants float,w8a8] [--data ../shared/data] [--tune-threads 1|0]
//
// --tune-threads 0 turns off fit's thread tuning (FitOptions::tune_threads: with 2 threads, fit
// times a few steps on one thread and on two and keeps the faster).
//
// Variants: "float", or a quantization-aware-training preset of quant::QuantizeConfig::preset
// ("w8a8", "w4a8", "w2a8", "w4a4"; "none" = the QAT graph with identity quantizers): the float
// model rewritten by quant::quantize_model, trained the same way (issue 4 asks for QAT <= 1.25x
// the float step time at w8a8).
//
// The models (bench/bench_models.h): (a) the bench CNN, (b) the MLP 784-256-256-10.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <sstream>

#include "bench_models.h"
#include "lowbit/data/idx.h"
#include "lowbit/nn/layers.h"
#include "lowbit/nn/model.h"
#include "lowbit/quant/quantize_model.h"
#include "lowbit/threads.h"

using namespace lowbit;

namespace {

nn::ModelPtr build(const std::string& which, const std::string& variant, uint64_t seed) {
  nn::ModelPtr m = bench::build_bench_model(which, seed);
  if (variant == "float") return m;
  quant::QuantizeConfig cfg;
  if (variant == "none") {
    cfg.weights.scheme = cfg.activations.scheme = cfg.inputs.scheme = "none";
  } else {
    cfg = quant::QuantizeConfig::preset(variant);
  }
  return quant::quantize_model(*m, cfg);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

}  // namespace

int main(int argc, char** argv) try {
  std::string model = "all", data = "../shared/data";
  std::vector<int> threads{1, 2};
  std::vector<std::string> variants{"float"};
  int epochs = 5, warmup = 20;
  bool tune_threads = true;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw ValueError("missing value after " + k);
      return argv[++i];
    };
    if (k == "--model")
      model = next();
    else if (k == "--data")
      data = next();
    else if (k == "--epochs")
      epochs = std::stoi(next());
    else if (k == "--warmup")
      warmup = std::stoi(next());
    else if (k == "--tune-threads")
      tune_threads = std::stoi(next()) != 0;
    else if (k == "--variants") {
      variants.clear();
      std::stringstream ss(next());
      for (std::string v; std::getline(ss, v, ',');) variants.push_back(v);
    } else if (k == "--threads") {
      threads.clear();
      std::stringstream ss(next());
      for (std::string t; std::getline(ss, t, ',');) threads.push_back(std::stoi(t));
    } else
      throw ValueError("unknown argument '" + k + "'");
  }
  MnistSplit train = load_mnist(data, true);
  const int64_t batch = 64;
  std::vector<std::string> models =
      model == "all" ? std::vector<std::string>{"cnn", "mlp"} : std::vector<std::string>{model};
  for (const auto& m : models) {
    for (const auto& variant : variants)
      for (int t : threads) {
        set_num_threads(t);
        // Warm-up on a throw-away model (primitive caches, memory plans).
        {
          auto w = build(m, variant, 2);
          w->compile({.optimizer = nn::Adam({.learning_rate = 1e-3}),
                      .loss = nn::SparseCategoricalCrossentropy({.from_logits = true})});
          int64_t n = std::min<int64_t>(warmup * batch, train.images.dim(0));
          Tensor xs = Tensor::wrap(train.images.raw(), {n, 28, 28, 1}, DType::kF32);
          Tensor ys = Tensor::wrap(train.labels.raw(), {n}, DType::kS64);
          w->fit(xs, ys, {.epochs = 1, .batch_size = batch, .verbose = 0});
        }
        auto net = build(m, variant, 1);
        net->compile({.optimizer = nn::Adam({.learning_rate = 1e-3}),
                      .loss = nn::SparseCategoricalCrossentropy({.from_logits = true})});
        std::vector<double> ips;
        for (int e = 0; e < epochs; ++e) {
          auto t0 = std::chrono::steady_clock::now();
          net->fit(train.images, train.labels,
                   {.epochs = e + 1,
                    .batch_size = batch,
                    .seed = 1,
                    .verbose = 0,
                    .initial_epoch = e,
                    .tune_threads = tune_threads});
          double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          ips.push_back(static_cast<double>(train.images.dim(0)) / s);
        }
        std::printf(
            "{\"bench\": \"train\", \"model\": \"%s\", \"variant\": \"%s\", \"threads\": %d, "
            "\"batch\": %lld, "
            "\"timed_epochs\": %d, \"tune_threads\": %s, \"images_per_s\": {\"median\": %.1f, "
            "\"min\": %.1f, \"max\": "
            "%.1f}}\n",
            m.c_str(), variant.c_str(), t, static_cast<long long>(batch), epochs,
            tune_threads ? "true" : "false", median(ips), *std::min_element(ips.begin(), ips.end()),
            *std::max_element(ips.begin(), ips.end()));
        std::fflush(stdout);
      }
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "train_bench: error: %s\n", e.what());
  return 1;
}
