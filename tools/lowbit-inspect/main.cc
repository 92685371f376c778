// lowbit-inspect: what an integer model file (quant::IntegerModel::save, e.g. the demo's
// build/demo/mnist_cnn_w8a8.lbi) holds, layer by layer: input, weight and output scale and zero
// point, the bias scale and whether it equals s_in * s_w, the real multiplier M, its (M0, shift)
// and the value they reconstruct with its relative error, the clamp and the activation it came
// from; per weight tensor its code range and bit width (8, or 4 and 2: stored packed). With
// --walk, one output element of one op computed step by step from the int8 codes of an MNIST
// test image (docs/integer-inference.md is this program's output on the demo model).
//
//   lowbit-inspect MODEL.lbi                   the table
//   lowbit-inspect MODEL.lbi --json            the same as JSON (a list, one object per op)
//   lowbit-inspect MODEL.lbi --walk OP:ELEMENT --data DIR [--image N] [--taps N]
//        OP: an op index (the table numbers them) or a layer name; ELEMENT: a flat index into
//        that op's output for one image; DIR: a folder with the MNIST test split (IDX files);
//        --taps: how many multiply-adds to list (default 9).
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>

#include "lowbit/data/idx.h"
#include "lowbit/quant/convert.h"

namespace {

int usage(const char* why) {
  if (why) std::fprintf(stderr, "lowbit-inspect: %s\n\n", why);
  std::fprintf(
      stderr,
      "usage: lowbit-inspect MODEL.lbi [--json]\n"
      "       lowbit-inspect MODEL.lbi --walk OP:ELEMENT --data MNIST_DIR [--image N] [--taps N]\n"
      "  OP: an op index from the table or a layer name (e.g. conv2d); ELEMENT: a flat\n"
      "  index into that op's output for one image.\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace lowbit;
  std::string model, walk, data;
  bool json = false;
  int64_t image = 0;
  int taps = 9;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "lowbit-inspect: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--json")
      json = true;
    else if (a == "--walk")
      walk = next();
    else if (a == "--data")
      data = next();
    else if (a == "--taps")
      taps = std::atoi(next().c_str());
    else if (a == "--image")
      image = std::atoll(next().c_str());
    else if (a == "--help" || a == "-h")
      return usage(nullptr);
    else if (!a.empty() && a[0] == '-')
      return usage(("unknown option " + a).c_str());
    else if (model.empty())
      model = a;
    else
      return usage("one model file only");
  }
  if (model.empty()) return usage("no model file given");
  try {
    quant::IntegerModel m = quant::IntegerModel::load(model);
    if (walk.empty()) {
      if (json) {
        std::cout << m.inspect_json() << "\n";
      } else {
        std::cout << m.name << ": " << m.ops.size() << " ops, " << m.constant_bytes(true)
                  << " bytes of weights and biases with 4- and 2-bit weights packed, "
                  << m.constant_bytes() << " unpacked (one byte per int8 code); file "
                  << std::filesystem::file_size(model) << " bytes\n";
        std::cout << m.inspect_table();
      }
      return 0;
    }
    const size_t colon = walk.rfind(':');
    if (colon == std::string::npos) return usage("--walk takes OP:ELEMENT, e.g. conv2d:100");
    const std::string op_name = walk.substr(0, colon);
    const int64_t element = std::atoll(walk.c_str() + colon + 1);
    size_t op = m.ops.size();
    if (!op_name.empty() && op_name.find_first_not_of("0123456789") == std::string::npos) {
      op = static_cast<size_t>(std::atoll(op_name.c_str()));
    } else {
      for (size_t i = 0; i < m.ops.size() && op == m.ops.size(); ++i)
        if (m.ops[i].layer == op_name || m.ops[i].layer.rfind(op_name + "+", 0) == 0) op = i;
      if (op == m.ops.size()) {
        std::fprintf(stderr, "lowbit-inspect: no op implements layer '%s'; ops:\n",
                     op_name.c_str());
        for (size_t i = 0; i < m.ops.size(); ++i)
          std::fprintf(stderr, "  %zu %s %s\n", i, m.ops[i].op.c_str(), m.ops[i].layer.c_str());
        return 2;
      }
    }
    if (data.empty()) return usage("--walk needs --data DIR (the MNIST test split)");
    const MnistSplit test = load_mnist(data, false);
    if (image < 0 || image >= test.images.shape()[0])
      return usage(
          ("--image must be in [0, " + std::to_string(test.images.shape()[0]) + ")").c_str());
    std::vector<int64_t> d = test.images.shape().dims();
    d[0] = 1;
    const Tensor x = Tensor::wrap(static_cast<float*>(test.images.raw()) + image * 28 * 28,
                                  Shape(d), DType::kF32);
    std::cout << "MNIST test image " << image << " (label " << test.labels.data<int64_t>()[image]
              << ")\n";
    std::cout << m.walk_element(x, op, element, taps);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lowbit-inspect: %s\n", e.what());
    return 1;
  }
}
