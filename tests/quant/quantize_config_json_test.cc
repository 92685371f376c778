// quant::quantize_config_from_json (lowbit/quant/quantize_model.h): the `lowbit quantize
// --config` file read into QuantizeConfig, and the errors naming the key.
#include <gtest/gtest.h>

#include "lowbit/nn/layers.h"
#include "lowbit/quant/quantize_model.h"
#include "testing/op_testing.h"

namespace lowbit::quant {
namespace {

using lowbit::testing::expect_throws_with;
using nn::Json;

TEST(QuantizeConfigJson, ReadsOverridesAndTopLevelSettings) {
  const Json j = Json::parse(R"({
    "overrides": {"conv2d": {"weight_bits": 4, "activation_bits": 8, "scheme": "lsq",
                             "per_channel": true},
                  "dense": {"skip": true}},
    "quant_delay": 100, "fold_batch_norm": false, "first_last_weight_bits": 8})");
  const QuantizeConfig c = quantize_config_from_json(j, QuantizeConfig::preset("w4a8"));
  EXPECT_EQ(c.weights.bits, 4);  // the preset's, untouched
  EXPECT_EQ(c.quant_delay, 100);
  EXPECT_FALSE(c.fold_batch_norm);
  EXPECT_EQ(c.first_last_weight_bits, 8);
  ASSERT_EQ(c.overrides.size(), 2u);
  const LayerOverride& conv = c.overrides.at("conv2d");
  EXPECT_EQ(conv.weight_bits, 4);
  EXPECT_EQ(conv.activation_bits, 8);
  EXPECT_EQ(conv.scheme, "lsq");
  EXPECT_EQ(conv.per_channel, true);
  EXPECT_FALSE(conv.skip);
  EXPECT_TRUE(c.overrides.at("dense").skip);
  EXPECT_FALSE(c.overrides.at("dense").weight_bits.has_value());
}

TEST(QuantizeConfigJson, EmptyObjectKeepsTheBase) {
  const QuantizeConfig base = QuantizeConfig::preset("w2a8");
  const QuantizeConfig c = quantize_config_from_json(Json::object(), base);
  EXPECT_EQ(c.weights.bits, 2);
  EXPECT_EQ(c.first_last_weight_bits, base.first_last_weight_bits);
  EXPECT_TRUE(c.overrides.empty());
}

TEST(QuantizeConfigJson, OverridesReachQuantizeModel) {
  auto m = nn::Sequential::create(
      {nn::InputSpec({4}), nn::Dense(3, {.name = "d1"}), nn::Dense(2, {.name = "d2"})});
  const Json j = {{"overrides", {{"d1", {{"skip", true}}}}}};
  auto q = quantize_model(*m, quantize_config_from_json(j, QuantizeConfig::preset("w8a8")));
  EXPECT_EQ(q->get_layer("d1")->class_name(), "Dense");  // left in float
  EXPECT_EQ(q->get_layer("d2")->class_name(), "QuantizeWrapper");
  const Json typo = {{"overrides", {{"d3", {{"skip", true}}}}}};
  EXPECT_THROW(quantize_model(*m, quantize_config_from_json(typo, QuantizeConfig::preset("w8a8"))),
               ValueError);
}

TEST(QuantizeConfigJson, ErrorsNameTheKey) {
  const QuantizeConfig base;
  expect_throws_with<ValueError>(
      [&] {
        quantize_config_from_json({{"overides", Json::object()}}, base);
      },
      "unknown key 'overides'; known keys: first_last_weight_bits, fold_batch_norm, overrides, "
      "quant_delay");
  expect_throws_with<ValueError>(
      [&] {
        quantize_config_from_json({{"overrides", {{"conv", {{"bits", 4}}}}}}, base);
      },
      "unknown key 'overrides.conv.bits'");
  expect_throws_with<ValueError>(
      [&] {
        quantize_config_from_json({{"overrides", {{"conv", {{"weight_bits", "4"}}}}}}, base);
      },
      "overrides.conv.weight_bits: expected an integer but found \"4\"");
  expect_throws_with<ValueError>(
      [&] {
        quantize_config_from_json({{"fold_batch_norm", 1}}, base);
      },
      "fold_batch_norm: expected true or false");
  expect_throws_with<ValueError>([&] { quantize_config_from_json(Json::array(), base); },
                                 "must be a JSON object");
}

}  // namespace
}  // namespace lowbit::quant
