// The dataflow graph, explained: a 784-128-10 MLP built from raw ops (variables, matmul, bias
// add, relu, softmax cross-entropy), its gradients appended by autodiff, trained with plain SGD
// on MNIST. A layer is nothing but a few ops and variables in this graph; training is running
// one graph step whose state updates write the new weights back.
//
//   mlp_from_ops --data data/mnist [--epochs 15] [--batch 64] [--lr 0.2] [--threads 1]
//                [--dot mlp.dot] [--seed 1] [--min-accuracy 0.93]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <numeric>
#include <string>

#include "lowbit/data/idx.h"
#include "lowbit/graph.h"
#include "lowbit/ops.h"
#include "lowbit/rng.h"
#include "lowbit/threads.h"

using namespace lowbit;

namespace {

struct Args {
  std::string data = "data/mnist";
  std::string dot = "mlp.dot";
  int epochs = 15;
  int batch = 64;
  double lr = 0.2;
  double min_accuracy = 0;  // exit with status 2 below this (used by the test suite)
  int threads = 1;
  uint64_t seed = 1;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw ValueError("missing value after " + k);
      return argv[++i];
    };
    if (k == "--data")
      a.data = next();
    else if (k == "--dot")
      a.dot = next();
    else if (k == "--epochs")
      a.epochs = std::stoi(next());
    else if (k == "--batch")
      a.batch = std::stoi(next());
    else if (k == "--lr")
      a.lr = std::stod(next());
    else if (k == "--threads")
      a.threads = std::stoi(next());
    else if (k == "--seed")
      a.seed = std::stoull(next());
    else if (k == "--min-accuracy")
      a.min_accuracy = std::stod(next());
    else if (k == "--help" || k == "-h") {
      std::cout << "usage: mlp_from_ops --data DIR [--epochs N] [--batch N] [--lr X] "
                   "[--threads N] [--dot FILE] [--seed N] [--min-accuracy X]\n";
      std::exit(0);
    } else {
      throw ValueError("unknown argument '" + k + "' (try --help)");
    }
  }
  if (a.epochs < 1 || a.batch < 1 || a.lr <= 0)
    throw ValueError("epochs, batch and lr must be > 0");
  return a;
}

// Glorot-uniform initial weights, as Keras initialises Dense kernels.
Tensor glorot(int64_t fan_in, int64_t fan_out, Rng& rng) {
  Tensor w({fan_in, fan_out}, DType::kF32);
  float limit = std::sqrt(6.0f / static_cast<float>(fan_in + fan_out));
  for (float& v : w.span<float>()) v = rng.uniform(-limit, limit);
  return w;
}

}  // namespace

int main(int argc, char** argv) try {
  Args args = parse(argc, argv);
  set_num_threads(args.threads);

  MnistSplit train = load_mnist(args.data, /*train=*/true);
  MnistSplit test = load_mnist(args.data, /*train=*/false);
  const int64_t n_train = train.images.dim(0), n_test = test.images.dim(0);
  Tensor train_x = train.images.reshape({n_train, 784});
  Tensor test_x = test.images.reshape({n_test, 784});
  std::printf("MNIST from %s: %lld training and %lld test images\n", args.data.c_str(),
              static_cast<long long>(n_train), static_cast<long long>(n_test));

  // ---- the graph: every box is an op, every edge a tensor ----
  Graph g;
  Rng rng(args.seed);
  Value x = g.placeholder("x", DType::kF32, {kUnknown, 784});  // batch size is symbolic
  Value labels = g.placeholder("labels", DType::kS64, {kUnknown});
  Value w1, b1, w2, b2;
  Value hidden, logits;
  {
    Graph::Scope s(g, "dense1");
    w1 = g.variable("kernel", glorot(784, 128, rng));
    b1 = g.variable("bias", Tensor::zeros({128}));
    hidden = ops::relu(ops::matmul(x, w1) + b1);
  }
  {
    Graph::Scope s(g, "dense2");
    w2 = g.variable("kernel", glorot(128, 10, rng));
    b2 = g.variable("bias", Tensor::zeros({10}));
    logits = ops::matmul(hidden, w2) + b2;
  }
  Value loss = ops::mean(ops::sparse_softmax_cross_entropy(logits, labels));
  const size_t forward_nodes = g.num_nodes();

  // ---- autodiff appends the backward graph; SGD is a state update per variable ----
  std::vector<Value> params = {w1, b1, w2, b2};
  std::vector<Value> grads = gradients(loss, params);
  Value lr = g.scalar(static_cast<float>(args.lr));
  std::vector<std::pair<Value, Value>> updates;
  for (size_t i = 0; i < params.size(); ++i)
    updates.emplace_back(params[i], params[i] - lr * grads[i]);
  Value predictions = ops::argmax(logits, -1);
  g.verify();

  std::printf("\nThe forward graph (%zu nodes; %d with the backward pass and updates):\n%s",
              forward_nodes, g.num_nodes(), g.str().substr(0, g.str().find("gradients/")).c_str());
  {
    std::ofstream dot(args.dot);
    if (!dot) throw IoError("cannot write " + args.dot);
    dot << g.to_dot({loss, predictions});
    std::printf("forward graph written to %s (render: dot -Tpng %s -o mlp.png)\n", args.dot.c_str(),
                args.dot.c_str());
  }

  Executor train_step(g, {loss}, updates);
  Executor predict(g, {predictions});

  // Preallocated batch buffers, reused every step.
  const int64_t bs = args.batch;
  Tensor bx({bs, 784}, DType::kF32), by({bs}, DType::kS64);
  std::vector<int64_t> order(n_train);
  std::iota(order.begin(), order.end(), 0);
  Rng shuffle_rng(args.seed + 1);

  auto evaluate = [&]() {
    int64_t correct = 0;
    for (int64_t start = 0; start < n_test; start += 500) {
      int64_t n = std::min<int64_t>(500, n_test - start);
      Tensor xb = Tensor::wrap(test_x.data<float>() + start * 784, {n, 784}, DType::kF32);
      Tensor pred = predict.run({{x, xb}})[0];
      for (int64_t i = 0; i < n; ++i)
        correct += pred.data<int64_t>()[i] == test.labels.data<int64_t>()[start + i];
    }
    return static_cast<double>(correct) / static_cast<double>(n_test);
  };

  std::printf("\nTraining with SGD (lr %.3g, batch %lld, %d thread%s)\n", args.lr,
              static_cast<long long>(bs), args.threads, args.threads > 1 ? "s" : "");
  double train_seconds = 0;
  int64_t images = 0;
  const int64_t steps_per_epoch = n_train / bs;  // the last partial batch is dropped
  for (int epoch = 1; epoch <= args.epochs; ++epoch) {
    for (int64_t i = n_train - 1; i > 0; --i)
      std::swap(order[i], order[shuffle_rng.next_u32() % (i + 1)]);
    double loss_sum = 0;
    auto t0 = std::chrono::steady_clock::now();
    for (int64_t step = 0; step < steps_per_epoch; ++step) {
      for (int64_t j = 0; j < bs; ++j) {
        int64_t src = order[step * bs + j];
        std::memcpy(bx.data<float>() + j * 784, train_x.data<float>() + src * 784,
                    784 * sizeof(float));
        by.data<int64_t>()[j] = train.labels.data<int64_t>()[src];
      }
      float l = train_step.run({{x, bx}, {labels, by}})[0].item<float>();
      if (!std::isfinite(l))
        throw Error("training diverged: loss is " + std::to_string(l) + " at epoch " +
                    std::to_string(epoch) + "; try a smaller --lr");
      loss_sum += l;
      if (epoch == 1 && (step == 0 || (step + 1) % 25 == 0) && step < 125)
        std::printf("  epoch 1 step %4lld  loss %.4f\n", static_cast<long long>(step + 1), l);
    }
    train_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    images += steps_per_epoch * bs;
    std::printf("epoch %d: mean training loss %.4f, test accuracy %.2f%%\n", epoch,
                loss_sum / static_cast<double>(steps_per_epoch), 100.0 * evaluate());
  }
  double acc = evaluate();
  std::printf(
      "\nexecutor memory plan of the training step: %zu bytes peak for %zu bytes of "
      "intermediates (%.0f%% reused)\n",
      train_step.peak_bytes(), train_step.total_intermediate_bytes(),
      100.0 * (1.0 - static_cast<double>(train_step.peak_bytes()) /
                         static_cast<double>(train_step.total_intermediate_bytes())));
  std::printf(
      "{\"example\": \"mlp_from_ops\", \"test_accuracy\": %.4f, \"train_images_per_sec\": %.0f, "
      "\"epochs\": %d, \"threads\": %d}\n",
      acc, static_cast<double>(images) / train_seconds, args.epochs, args.threads);
  if (acc < args.min_accuracy) {
    std::fprintf(stderr, "mlp_from_ops: test accuracy %.4f is below the required %.4f\n", acc,
                 args.min_accuracy);
    return 2;
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "mlp_from_ops: error: %s\n", e.what());
  return 1;
}
