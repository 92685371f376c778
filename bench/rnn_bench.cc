// Training throughput of a masked LSTM classifier, the same work as the PyTorch peer
// (../shared/peers/torch_lstm.py, variant lstm_packed): sequences of length U[5,50] padded to
// 50 steps with noise N(0, 3^2), 16 features N(0,1), label = which of the first 4 features has
// the largest sum over the valid steps (4 classes); LSTM(64) reading the mask, Dense(4) on the
// last valid output, sparse softmax cross-entropy from logits, Adam(1e-3), batch 32, 8192
// training sequences per epoch. Sequences/s per epoch, median over the timed epochs after a
// warm-up; test accuracy after each epoch shows the mask is honoured. One JSON line per
// thread count, with the median sequences per CPU second of the process next to it (the
// wall-clock figure is what counts; the CPU figure shows what a shared machine hides).
//
//   rnn_bench [--threads 1,2] [--epochs 5] [--warmup 20] [--cell lstm|gru] [--kernels
//   fast|reference]
//
// The training step is traced by hand (forward with the mask in CallContext::input_masks, loss,
// gradients(), the optimizer's update ops, one Executor): the graph that a model with an explicit
// mask input (docs/masking.md) builds for its step.
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <sstream>

#include "lowbit/nn/layers.h"
#include "lowbit/nn/optimizers.h"
#include "lowbit/ops.h"
#include "lowbit/rng.h"
#include "lowbit/threads.h"

using namespace lowbit;

namespace {

constexpr int64_t kSteps = 50, kFeatures = 16, kClasses = 4, kHidden = 64, kBatch = 32;

struct Data {
  Tensor x;     // [n, 50, 16]
  Tensor mask;  // bool [n, 50]
  Tensor y;     // s64 [n]
};

Data make_data(int64_t n, uint64_t seed) {
  Rng rng(seed);
  Data d{Tensor({n, kSteps, kFeatures}, DType::kF32), Tensor({n, kSteps}, DType::kBool),
         Tensor({n}, DType::kS64)};
  float* x = d.x.data<float>();
  bool* m = d.mask.data<bool>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t len = 5 + static_cast<int64_t>(rng.next_u32() % 46);
    double sums[kClasses] = {0, 0, 0, 0};
    for (int64_t t = 0; t < kSteps; ++t) {
      m[i * kSteps + t] = t < len;
      for (int64_t f = 0; f < kFeatures; ++f) {
        const float v = t < len ? rng.normal() : 3.0f * rng.normal();
        x[(i * kSteps + t) * kFeatures + f] = v;
        if (t < len && f < kClasses) sums[f] += v;
      }
    }
    d.y.data<int64_t>()[i] = std::max_element(sums, sums + kClasses) - sums;
  }
  return d;
}

// Rows idx[0..k) of src into dst (first dim k).
void gather_rows(const Tensor& src, const std::vector<int64_t>& idx, int64_t begin, Tensor& dst) {
  const size_t row = src.nbytes() / static_cast<size_t>(src.dim(0));
  for (int64_t i = 0; i < dst.dim(0); ++i)
    std::memcpy(static_cast<char*>(dst.raw()) + i * row,
                static_cast<const char*>(src.raw()) + idx[begin + i] * row, row);
}

struct Net {
  nn::LayerPtr rnn, dense;
  Graph train, eval;
  Value x, mask, y, lr, t, loss;
  Value ex, emask, elogits;
  nn::OptimizerPtr opt;
  std::unique_ptr<Executor> step, infer;
};

std::unique_ptr<Net> build(const std::string& cell, uint64_t seed) {
  auto net = std::make_unique<Net>();
  nn::set_random_seed(seed);
  net->rnn = cell == "gru" ? nn::GRU(kHidden) : nn::LSTM(kHidden);
  net->dense = nn::Dense(kClasses);
  {
    Graph& g = net->train;
    nn::CallContext ctx(g, true);
    net->x = g.placeholder("x", DType::kF32, {kUnknown, kSteps, kFeatures});
    net->mask = g.placeholder("mask", DType::kBool, {kUnknown, kSteps});
    net->y = g.placeholder("y", DType::kS64, {kUnknown});
    ctx.input_masks = {net->mask};
    Value h = net->rnn->apply({net->x}, ctx)[0];
    ctx.input_masks.clear();
    Value logits = net->dense->apply({h}, ctx)[0];
    net->loss = ops::mean(ops::sparse_softmax_cross_entropy(logits, net->y));
    std::vector<Value> vars;
    std::vector<std::string> names;
    for (const nn::LayerPtr& l : {net->rnn, net->dense})
      for (const nn::Weight& w : l->weights()) {
        vars.push_back(ctx.bound(w));
        names.push_back(l->name() + "/" + w.name);
      }
    std::vector<Value> grads = gradients(net->loss, vars);
    net->lr = g.placeholder("lr", DType::kF32, {});
    net->t = g.placeholder("t", DType::kF32, {});
    net->opt = nn::Adam({.learning_rate = 1e-3});
    auto updates = net->opt->build_updates(g, vars, grads, names, net->lr, net->t);
    for (const auto& u : ctx.updates()) updates.push_back(u);
    net->step = std::make_unique<Executor>(g, std::vector<Value>{net->loss}, updates);
  }
  {
    Graph& g = net->eval;
    nn::CallContext ctx(g, false);
    net->ex = g.placeholder("x", DType::kF32, {kUnknown, kSteps, kFeatures});
    net->emask = g.placeholder("mask", DType::kBool, {kUnknown, kSteps});
    ctx.input_masks = {net->emask};
    Value h = net->rnn->apply({net->ex}, ctx)[0];
    ctx.input_masks.clear();
    net->elogits = net->dense->apply({h}, ctx)[0];
    net->infer = std::make_unique<Executor>(g, std::vector<Value>{net->elogits});
  }
  return net;
}

// One epoch (or `limit` batches) in a shuffled order; returns sequences trained.
int64_t run_epoch(Net& net, const Data& d, uint64_t seed, int64_t limit = -1) {
  const int64_t n = d.x.dim(0);
  std::vector<int64_t> perm(n);
  std::iota(perm.begin(), perm.end(), 0);
  Rng rng(seed);
  for (int64_t i = n - 1; i > 0; --i) std::swap(perm[i], perm[rng.next_u32() % (i + 1)]);
  const int64_t batches = limit >= 0 ? limit : n / kBatch;
  Tensor xb({kBatch, kSteps, kFeatures}, DType::kF32), mb({kBatch, kSteps}, DType::kBool),
      yb({kBatch}, DType::kS64);
  for (int64_t b = 0; b < batches; ++b) {
    gather_rows(d.x, perm, b * kBatch, xb);
    gather_rows(d.mask, perm, b * kBatch, mb);
    gather_rows(d.y, perm, b * kBatch, yb);
    auto feeds = net.opt->step_feeds(net.lr, net.t);
    feeds.emplace_back(net.x, xb);
    feeds.emplace_back(net.mask, mb);
    feeds.emplace_back(net.y, yb);
    net.step->run(feeds);
    net.opt->set_iterations(net.opt->iterations() + 1);
  }
  return batches * kBatch;
}

double accuracy(Net& net, const Data& d) {
  Tensor logits = net.infer->run({{net.ex, d.x}, {net.emask, d.mask}})[0];
  int64_t correct = 0;
  for (int64_t i = 0; i < d.x.dim(0); ++i) {
    const float* row = logits.data<float>() + i * kClasses;
    correct += std::max_element(row, row + kClasses) - row == d.y.data<int64_t>()[i];
  }
  return static_cast<double>(correct) / static_cast<double>(d.x.dim(0));
}

// CPU seconds used by the whole process (all threads).
double cpu_seconds() {
  timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

}  // namespace

int main(int argc, char** argv) try {
  std::vector<int> threads{1, 2};
  int epochs = 5, warmup = 20;
  std::string cell = "lstm", kernels = "fast";
  int64_t train_n = 8192;
  bool eval = true;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw ValueError("missing value after " + k);
      return argv[++i];
    };
    if (k == "--epochs")
      epochs = std::stoi(next());
    else if (k == "--warmup")
      warmup = std::stoi(next());
    else if (k == "--cell")
      cell = next();
    else if (k == "--kernels")
      kernels = next();
    else if (k == "--train")
      train_n = std::stoll(next());
    else if (k == "--eval")
      eval = next() != "0";
    else if (k == "--threads") {
      threads.clear();
      std::stringstream ss(next());
      for (std::string t; std::getline(ss, t, ',');) threads.push_back(std::stoi(t));
    } else {
      throw ValueError("unknown argument '" + k + "'");
    }
  }
  if (cell != "lstm" && cell != "gru") throw ValueError("--cell: expected lstm or gru");
  if (kernels == "reference")
    set_kernel_choice(KernelChoice::kReference);
  else if (kernels != "fast")
    throw ValueError("--kernels: expected fast or reference");
  const Data train = make_data(train_n, 0), test = make_data(2048, 1);
  for (int t : threads) {
    set_num_threads(t);
    {
      auto w = build(cell, 2);  // warm-up: primitive caches, memory plans
      run_epoch(*w, train, 99, warmup);
    }
    auto net = build(cell, 1);
    std::vector<double> sps, cps, acc;
    for (int e = 0; e < epochs; ++e) {
      const auto t0 = std::chrono::steady_clock::now();
      const double c0 = cpu_seconds();
      const int64_t n = run_epoch(*net, train, 1000 + e);
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      sps.push_back(static_cast<double>(n) / s);
      cps.push_back(static_cast<double>(n) / (cpu_seconds() - c0));
      if (eval) acc.push_back(accuracy(*net, test));
    }
    std::printf(
        "{\"bench\": \"rnn_train\", \"model\": \"%s%lld_masked\", \"variant\": \"float\", "
        "\"kernels\": \"%s\", \"threads\": %d, \"batch\": %lld, \"timed_epochs\": %d, "
        "\"sequences_per_s\": {\"median\": %.1f, \"min\": %.1f, \"max\": %.1f}, "
        "\"sequences_per_cpu_s\": %.1f, \"test_acc_per_epoch\": [",
        cell.c_str(), static_cast<long long>(kHidden), kernels.c_str(), t,
        static_cast<long long>(kBatch), epochs, median(sps),
        *std::min_element(sps.begin(), sps.end()), *std::max_element(sps.begin(), sps.end()),
        median(cps));
    for (size_t i = 0; i < acc.size(); ++i) std::printf("%s%.4f", i ? ", " : "", acc[i]);
    std::printf("]}\n");
    std::fflush(stdout);
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "rnn_bench: error: %s\n", e.what());
  return 1;
}
