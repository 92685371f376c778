// The quantization report (include/lowbit/report/report.h, docs/report.md) of a small MNIST CNN:
// trained in float, fine-tuned with w4a8 QAT, and reported on 256 test images with both
// training histories. The browser test (tests/report/browser_test.sh) renders its output in
// headless Chromium.
//
//   quant_report --data ../shared/data --out report.html [--images 2048] [--scheme w4a8]
#include <cstdlib>
#include <iostream>
#include <string>

#include "lowbit/data/idx.h"
#include "lowbit/error.h"
#include "lowbit/nn/layers.h"
#include "lowbit/nn/losses.h"
#include "lowbit/nn/optimizers.h"
#include "lowbit/quant/quantize_model.h"
#include "lowbit/report/report.h"

using namespace lowbit;

namespace {

Tensor first_rows(const Tensor& t, int64_t n) {
  std::vector<int64_t> d = t.shape().dims();
  d[0] = std::min(n, d[0]);
  return Tensor::wrap(const_cast<void*>(t.raw()), Shape(d), t.dtype()).clone();  // owns its rows
}

[[noreturn]] void usage(const std::string& why) {
  std::cerr << "quant_report: " << why
            << "\nusage: quant_report --data DIR --out FILE.html [--images N] [--scheme w4a8]\n";
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  std::string data, out, scheme = "w4a8";
  int64_t images = 2048;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (i + 1 >= argc) usage("missing the value of " + k);
    const std::string v = argv[++i];
    if (k == "--data")
      data = v;
    else if (k == "--out")
      out = v;
    else if (k == "--scheme")
      scheme = v;
    else if (k == "--images")
      images = std::stoll(v);
    else
      usage("unknown flag " + k);
  }
  if (data.empty() || out.empty()) usage("--data and --out are required");
  try {
    const MnistSplit train = load_mnist(data, true), test = load_mnist(data, false);
    const Tensor x = first_rows(train.images, images), y = first_rows(train.labels, images);
    nn::set_random_seed(1);
    auto fm = nn::Sequential::create(
        {nn::InputSpec({28, 28, 1}), nn::Conv2D(16, 3, {.padding = "same", .use_bias = false}),
         nn::BatchNormalization(), nn::ReLU(), nn::MaxPooling2D(2),
         nn::Conv2D(32, 3, {.strides = {2, 2}, .padding = "same", .activation = "relu"}),
         nn::Flatten(), nn::Dense(64, {.activation = "relu"}), nn::Dense(10)},
        "mnist_cnn");
    fm->compile({.optimizer = nn::Adam({.learning_rate = 2e-3}),
                 .loss = nn::SparseCategoricalCrossentropy({.from_logits = true}),
                 .metrics = {"accuracy"}});
    const nn::History fh =
        fm->fit(x, y, {.epochs = 3, .batch_size = 64, .validation_split = 0.2, .verbose = 0});
    auto qat = quant::quantize_model(*fm, quant::QuantizeConfig::preset(scheme));
    qat->compile({.optimizer = nn::Adam({.learning_rate = 5e-4}),
                  .loss = nn::SparseCategoricalCrossentropy({.from_logits = true}),
                  .metrics = {"accuracy"}});
    const nn::History qh =
        qat->fit(x, y, {.epochs = 2, .batch_size = 64, .validation_split = 0.2, .verbose = 0});
    report::ReportInputs in;
    in.qat = qat.get();
    in.float_model = fm.get();
    in.x = first_rows(test.images, 256);
    in.labels = first_rows(test.labels, 256);
    in.histories = {{"float", fh}, {"QAT " + scheme, qh}};
    in.title = "mnist_cnn, " + scheme;
    report::write_report(out, in);
    std::cout << "report: " << out << "\n";
  } catch (const Error& e) {
    std::cerr << "quant_report: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
