// Writes the seed corpus of integer_model_load_fuzz: tiny float models built from every layer
// kind convert_to_integer takes, quantized (quant::quantize_model), calibrated on a few random
// inputs and converted, each saved as DIR/<name>.lbi (a few KB each). Made at fuzz time, so no
// binary is committed (docs/fuzzing.md).
//
//   integer_model_seeds DIR
#include <cstdio>
#include <exception>
#include <filesystem>
#include <string>
#include <vector>

#include "lowbit/data/dataset.h"
#include "lowbit/nn/layers.h"
#include "lowbit/nn/masking.h"
#include "lowbit/nn/model.h"
#include "lowbit/quant/convert.h"
#include "lowbit/quant/quantize_model.h"
#include "lowbit/rng.h"
#include "lowbit/threads.h"

using namespace lowbit;

namespace {

Tensor random_images(const std::vector<int64_t>& example, int64_t n) {
  std::vector<int64_t> d{n};
  d.insert(d.end(), example.begin(), example.end());
  Tensor x(Shape(d), DType::kF32);
  uint32_t s = 12345;
  for (int64_t i = 0; i < x.numel(); ++i) {
    s = s * 1664525u + 1013904223u;
    x.data<float>()[i] = static_cast<float>(s >> 8) / static_cast<float>(1 << 24);
  }
  return x;
}

void write_seed(const std::string& dir, const std::string& name, const std::vector<int64_t>& in,
                std::vector<nn::LayerPtr> layers, const std::string& preset,
                quant::Rounding rounding,
                quant::ActivationScheme activations = quant::ActivationScheme::kInt8) {
  nn::set_random_seed(3);
  layers.insert(layers.begin(), nn::InputSpec(Shape(in)));
  auto f = nn::Sequential::create(layers, name);
  nn::ModelPtr q = quant::quantize_model(*f, quant::QuantizeConfig::preset(preset));
  q->calibrate(data::Dataset::from_tensors({random_images(in, 16)}), 8);
  const quant::IntegerModel im =
      quant::convert_to_integer(*q, {.rounding = rounding, .activations = activations});
  const std::string path = dir + "/" + name + ".lbi";
  im.save(path);
  std::printf("integer_model_seeds: %s (%ju bytes, %zu ops)\n", path.c_str(),
              static_cast<uintmax_t>(std::filesystem::file_size(path)), im.ops.size());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: integer_model_seeds DIR\n");
    return 2;
  }
  try {
    set_num_threads(1);
    const std::string dir = argv[1];
    std::filesystem::create_directories(dir);
    write_seed(dir, "conv_pool_dense", {6, 6, 1},
               {nn::Conv2D(2, 3, {.padding = "same", .use_bias = false}), nn::BatchNormalization(),
                nn::ReLU(), nn::MaxPooling2D(2), nn::Flatten(), nn::Dropout(0.2), nn::Dense(3)},
               "w8a8", quant::Rounding::kDouble);
    write_seed(
        dir, "depthwise_avgpool", {4, 4, 2},
        {nn::DepthwiseConv2D(3, {.padding = "same", .use_bias = false}), nn::BatchNormalization(),
         nn::ReLU({.max_value = 6.0}), nn::Conv2D(2, 1, {.activation = "relu"}),
         nn::AveragePooling2D(2), nn::Flatten(), nn::Dense(2)},
        "w4a8", quant::Rounding::kSingle);
    write_seed(dir, "strided_gap", {5, 5, 1},
               {nn::Conv2D(3, 2, {.strides = {2, 2}, .padding = "valid"}), nn::ReLU(),
                nn::GlobalAveragePooling2D(), nn::Dense(2, {.activation = "relu"}), nn::Dense(2)},
               "w8a8", quant::Rounding::kDouble);
    // The recurrent ops (qlstm, qgru, timestep_mask): [time, features] sequences.
    write_seed(
        dir, "masked_lstm", {4, 3},
        {nn::Masking(), nn::LSTM(3, {.return_sequences = true}), nn::Flatten(), nn::Dense(2)},
        "w8a8", quant::Rounding::kDouble);
    write_seed(dir, "gru", {3, 2}, {nn::GRU(2, {.reset_after = false}), nn::Dense(2)}, "w8a8",
               quant::Rounding::kDouble);
    // The uint8 activation scheme (u8 codes and zero points; ActivationScheme::kUint8).
    write_seed(dir, "conv_pool_dense_uint8", {6, 6, 1},
               {nn::Conv2D(2, 3, {.padding = "same", .activation = "relu"}), nn::MaxPooling2D(2),
                nn::Flatten(), nn::Dense(3, {.activation = "softmax"})},
               "w8a8", quant::Rounding::kDouble, quant::ActivationScheme::kUint8);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "integer_model_seeds: %s\n", e.what());
    return 1;
  }
  return 0;
}
