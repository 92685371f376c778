// Issue 14, item 5: a model fresh from quantize_model has no activation ranges yet (TFMOT's
// initial [-6, 6]); inference then gave chance accuracy without a word. It is now refused with
// an error that says how to calibrate, Model::calibrate runs the data for the ranges only, and
// summary() shows each quantizer's range state. Item 13: QuantizedBidirectional's summary row
// lists its quantizers.
#include <gtest/gtest.h>

#include <filesystem>
#include <sstream>

#include "lowbit/data/dataset.h"
#include "lowbit/nn/layers.h"
#include "lowbit/nn/losses.h"
#include "lowbit/nn/model.h"
#include "lowbit/nn/optimizers.h"
#include "lowbit/quant/quantize_model.h"

namespace lowbit::quant {
namespace {

// Inputs in [0, 0.03] whose class is the larger coordinate: a tracked range of [-6, 6] (one
// 8-bit step is 0.047) rounds every input to 0, so an uncalibrated model answers at random.
struct Data {
  Tensor x{Shape{256, 2}, DType::kF32};
  Tensor y{Shape{256}, DType::kS64};
  Data() {
    for (int64_t i = 0; i < 256; ++i) {
      const float a = 0.03f * static_cast<float>((i * 37) % 101) / 100.0f;
      const float b = 0.03f * static_cast<float>((i * 59 + 13) % 103) / 102.0f;
      x.data<float>()[2 * i] = a;
      x.data<float>()[2 * i + 1] = b;
      y.data<int64_t>()[i] = a > b ? 1 : 0;
    }
  }
};

nn::ModelPtr trained_float(const Data& d) {
  nn::reset_layer_names();
  nn::set_random_seed(8);
  nn::KTensor in = nn::Input({2});
  nn::KTensor h = (*nn::Dense(16, {.activation = "relu"}))(in);
  auto m = nn::Model::create({in}, {(*nn::Dense(2))(h)});
  m->compile({.optimizer = nn::Adam({.learning_rate = 0.05}),
              .loss = nn::SparseCategoricalCrossentropy({.from_logits = true}),
              .metrics = {"accuracy"}});
  std::ostringstream quiet;
  m->fit(d.x, d.y, {.epochs = 60, .batch_size = 32, .verbose = 0, .out = &quiet});
  return m;
}

TEST(Calibration, UncalibratedInferenceIsRefusedAndCalibrateFixesIt) {
  Data d;
  auto f = trained_float(d);
  const double float_acc = f->evaluate(d.x, d.y).at("accuracy");
  ASSERT_GT(float_acc, 0.9);
  auto q = quantize_model(*f, QuantizeConfig::preset("w8a8"));
  q->compile({.optimizer = nn::SGD(),
              .loss = nn::SparseCategoricalCrossentropy({.from_logits = true}),
              .metrics = {"accuracy"}});
  ASSERT_NE(q->uncalibrated_layer(), nullptr);
  EXPECT_NE(q->summary().find("not calibrated yet"), std::string::npos) << q->summary();
  for (int call = 0; call < 2; ++call) {
    try {
      if (call == 0) {
        q->evaluate(d.x, d.y);
      } else {
        q->predict(d.x);
      }
      ADD_FAILURE() << "inference ran on an uncalibrated model";
    } catch (const ValueError& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("calibrate(data)"), std::string::npos) << m;
      EXPECT_NE(m.find("fit()"), std::string::npos) << m;
      EXPECT_NE(m.find("FakeQuant"), std::string::npos) << m;
    }
  }
  // Calibration changes no trainable weight, only the quantizers' state.
  std::vector<Tensor> before;
  for (auto& [name, w] : q->named_weights())
    if (w->trainable) before.push_back(w->value.clone());
  EXPECT_EQ(q->calibrate(data::Dataset::from_tensors({d.x}), 64), 4);
  size_t k = 0;
  for (auto& [name, w] : q->named_weights())
    if (w->trainable) {
      const Tensor& b = before[k++];
      for (int64_t i = 0; i < b.numel(); ++i)
        ASSERT_EQ(b.data<float>()[i], w->value.data<float>()[i]) << name;
    }
  EXPECT_EQ(q->uncalibrated_layer(), nullptr);
  EXPECT_EQ(q->summary().find("not calibrated yet"), std::string::npos) << q->summary();
  const double q_acc = q->evaluate(d.x, d.y).at("accuracy");
  EXPECT_GT(q_acc, float_acc - 0.05) << "float " << float_acc;
  // The calibrated state travels with the model file.
  const std::string path =
      (std::filesystem::temp_directory_path() / "lowbit_calibration_test.lbm").string();
  q->save(path);
  auto loaded = nn::load_model(path);
  std::filesystem::remove(path);
  EXPECT_EQ(loaded->uncalibrated_layer(), nullptr);
  EXPECT_DOUBLE_EQ(loaded->evaluate(d.x, d.y).at("accuracy"), q_acc);
  // A float model has nothing to calibrate.
  EXPECT_THROW(f->calibrate(data::Dataset::from_tensors({d.x})), ValueError);
}

TEST(Calibration, QuantizedBidirectionalSummaryListsItsQuantizers) {
  nn::reset_layer_names();
  nn::KTensor in = nn::Input({5, 3});
  nn::KTensor h = (*nn::Bidirectional(nn::LSTM(4)))(in);
  auto f = nn::Model::create({in}, {(*nn::Dense(2))(h)});
  auto q = quantize_model(*f, QuantizeConfig::preset("w8a8"));
  const std::string s = q->summary();
  const size_t row = s.find("(QuantizedBidirectional)");
  ASSERT_NE(row, std::string::npos) << s;
  const std::string after = s.substr(row, s.find("(QuantizeWrapper)", row) - row);
  EXPECT_NE(after.find("forward"), std::string::npos) << after;
  EXPECT_NE(after.find("backward"), std::string::npos) << after;
  EXPECT_NE(after.find("x, h:"), std::string::npos) << after;
  EXPECT_NE(after.find("not calibrated yet"), std::string::npos) << after;
}

}  // namespace
}  // namespace lowbit::quant
