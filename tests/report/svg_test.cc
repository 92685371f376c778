// The report's SVG helpers and numbers (src/report/svg.h): ticks, axis, histogram counts, grid
// levels and where their lines fall, clip counts, SQNR.
#include "report/svg.h"

#include <gtest/gtest.h>

#include <cmath>
#include <regex>
#include <string>
#include <vector>

#include "lowbit/error.h"
#include "testing/op_testing.h"

namespace lowbit::report {
namespace {

int count(const std::string& s, const std::string& what) {
  int n = 0;
  for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + 1)) ++n;
  return n;
}

TEST(ReportSvg, NiceTicks) {
  const std::vector<double> a = nice_ticks(0, 1, 5);
  ASSERT_EQ(a.size(), 6u);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], 0.2 * static_cast<double>(i), 1e-12);
  EXPECT_EQ(nice_ticks(-3, 7, 5), (std::vector<double>{-2, 0, 2, 4, 6}));
  EXPECT_EQ(nice_ticks(0.5, 9.5, 5), (std::vector<double>{2, 4, 6, 8}));
  const std::vector<double> big = nice_ticks(0, 12000, 5);
  EXPECT_EQ(big, (std::vector<double>{0, 5000, 10000}));  // step 2,400 rounds up to 5,000
  EXPECT_EQ(tick_label(0.25), "0.25");
  EXPECT_EQ(tick_label(-3), "-3");
  EXPECT_EQ(tick_label(12000), "1.2e+04");
}

TEST(ReportSvg, FrameMapsDataToPixels) {
  Frame f;  // 520 x 260, margins left 56, right 16, top 26, bottom 40
  f.x_lo = -1, f.x_hi = 1, f.y_lo = 0, f.y_hi = 10;
  EXPECT_DOUBLE_EQ(f.px(-1), 56);
  EXPECT_DOUBLE_EQ(f.px(1), 504);
  EXPECT_DOUBLE_EQ(f.px(0), 280);
  EXPECT_DOUBLE_EQ(f.py(0), 220);  // y grows upwards
  EXPECT_DOUBLE_EQ(f.py(10), 26);
}

TEST(ReportSvg, AxesHaveTicksAndLabels) {
  Frame f;
  f.x_lo = 0, f.x_hi = 1, f.y_lo = -3, f.y_hi = 7;
  const std::string s = axes(f, "epoch", "loss <1>");
  EXPECT_EQ(count(s, "class=\"tick x\""), 6);  // 0, 0.2, ..., 1
  EXPECT_EQ(count(s, "class=\"tick y\""), 5);  // -2, 0, 2, 4, 6
  EXPECT_EQ(count(s, "class=\"tickmark\""), 6);
  EXPECT_NE(s.find(">0.6</text>"), std::string::npos);
  EXPECT_NE(s.find(">-2</text>"), std::string::npos);
  EXPECT_NE(s.find("loss &lt;1&gt;"), std::string::npos);  // titles are escaped
  // The tick at y = 2 sits at py(2) = 26 + 194 - 0.5 * 194 = 123 (label 4 px lower).
  EXPECT_NE(s.find("y1=\"123.0\" y2=\"123.0\""), std::string::npos);
}

TEST(ReportSvg, HistogramCounts) {
  const std::vector<float> v{0.0f, 0.1f, 0.5f, 0.99f, 1.0f, 2.0f, -0.1f};
  EXPECT_EQ(histogram(v, 0, 1, 2), (std::vector<int64_t>{2, 3}));  // 2 and -0.1 are outside
  EXPECT_EQ(histogram(v, 0, 1, 4), (std::vector<int64_t>{2, 0, 1, 2}));
  EXPECT_EQ(histogram(v, 0.5, 0.5, 3), (std::vector<int64_t>{1, 0, 0}));
  testing::expect_throws_with<ValueError>([&] { histogram(v, 0, 1, 0); }, "bins must be >= 1");
}

TEST(ReportSvg, GridLevelsAndWhereTheirLinesFall) {
  // A 4-bit narrow symmetric grid, scale 0.25: codes -7..7, levels -1.75 .. 1.75.
  const std::vector<double> l = grid_levels(0.25, 0, -7, 7);
  ASSERT_EQ(l.size(), 15u);
  EXPECT_DOUBLE_EQ(l.front(), -1.75);
  EXPECT_DOUBLE_EQ(l[7], 0);
  EXPECT_DOUBLE_EQ(l.back(), 1.75);
  // An asymmetric 8-bit grid: zero point -128 for [0, 255] * scale shifted to int8 codes.
  const std::vector<double> a = grid_levels(0.5, -128, -128, 127);
  EXPECT_DOUBLE_EQ(a.front(), 0);
  EXPECT_DOUBLE_EQ(a.back(), 127.5);
  // Drawn over a histogram on [-2, 2]: one vertical line per level at px(level).
  std::vector<Marker> marks;
  for (double v : l) marks.push_back({v, "", "#dc2626", false});
  const std::string s =
      histogram_chart("w", {1, 2, 3, 4}, -2, 2, marks, l.front(), l.back(), "weight", "weights");
  EXPECT_EQ(count(s, "class=\"marker\""), 15);
  EXPECT_EQ(count(s, "class=\"bar\""), 4);
  EXPECT_EQ(count(s, "class=\"range\""), 1);
  Frame f;
  f.x_lo = -2, f.x_hi = 2;
  for (double v : {-1.75, 0.0, 0.5, 1.75}) {
    char want[64];
    std::snprintf(want, sizeof want, "class=\"marker\" x1=\"%.1f\" x2=\"%.1f\"", f.px(v), f.px(v));
    EXPECT_NE(s.find(want), std::string::npos) << want;
  }
  EXPECT_NE(s.find("x1=\"84.0\""), std::string::npos);  // px(-1.75) = 56 + 448 * 0.25 / 4
  // A level outside the plotted range is not drawn.
  EXPECT_EQ(count(histogram_chart("w", {1}, 0, 1, marks, 0, 0, "", "weights"), "class=\"marker\""),
            5);  // 0, 0.25, 0.5, 0.75, 1
}

TEST(ReportSvg, ClipCount) {
  // Per tensor: scale 0.1, codes [-7, 7] -> range [-0.7, 0.7].
  EXPECT_EQ(clip_count({-0.8f, -0.7f, 0.0f, 0.69f, 0.71f, 3.0f}, {0.1f}, {0}, -7, 7), 3);
  // Per channel (last axis, 2 channels): channel 0 scale 1, channel 1 scale 0.1, codes [-2, 1].
  //            ch0   ch1    ch0   ch1
  const std::vector<float> w{1.5f, 0.15f, -2.0f, -0.3f};
  EXPECT_EQ(clip_count(w, {1.0f, 0.1f}, {0, 0}, -2, 1), 3);  // codes 1.5, 1.5, -2, -3
  // Asymmetric: zero point shifts the range: scale 1, zp 3, codes [0, 7] -> [-3, 4].
  EXPECT_EQ(clip_count({-3.5f, -3.0f, 4.0f, 4.5f}, {1.0f}, {3}, 0, 7), 2);
  testing::expect_throws_with<ValueError>([] { clip_count({1}, {}, {}, 0, 1); }, "scales");
}

TEST(ReportSvg, Sqnr) {
  // 10 log10((1 + 4 + 9) / 1) = 11.46 dB.
  EXPECT_NEAR(sqnr_db({1, 2, 3}, {1, 2, 2}), 10 * std::log10(14.0), 1e-9);
  // Noise a tenth of the signal in amplitude: 20 dB.
  EXPECT_NEAR(sqnr_db({10, -10}, {11, -11}), 20, 1e-9);
  EXPECT_TRUE(std::isinf(sqnr_db({1, 2}, {1, 2})));
  testing::expect_throws_with<ValueError>([] { sqnr_db({1, 2}, {1}); }, "2 reference values");
}

TEST(ReportSvg, LineChartAndBars) {
  Series a{"train", {1, 2, 3}, {0.9, 0.5, 0.3}, "#000", false};
  Series b{"validation", {1, 2, 3}, {1.0, 0.6, NAN}, "#f00", true};
  const std::string s = line_chart("loss", {a, b}, {{1.5, "QAT"}}, "epoch", "loss", "curve");
  EXPECT_EQ(s.rfind("<svg class=\"plot curve\"", 0), 0u);
  EXPECT_EQ(count(s, "<polyline"), 2);
  EXPECT_EQ(count(s, "class=\"point\""), 5);  // the NaN is skipped
  EXPECT_EQ(count(s, "class=\"marker\""), 1);
  EXPECT_NE(s.find(">QAT</text>"), std::string::npos);
  EXPECT_NE(s.find(">validation</text>"), std::string::npos);
  const std::string bars =
      bar_chart("size", {"f32", "int8"}, {400, 100}, {"400 B", "100 B"}, {"#111"}, "size");
  EXPECT_EQ(count(bars, "class=\"hbar\""), 2);
  // Widths proportional to the values: plot width 520 - 110 - 130 = 280 for 400.
  EXPECT_NE(bars.find("width=\"280.0\""), std::string::npos);
  EXPECT_NE(bars.find("width=\"70.0\""), std::string::npos);
  EXPECT_NE(html_escape("a<b & \"c\"").find("a&lt;b &amp; &quot;c&quot;"), std::string::npos);
}

}  // namespace
}  // namespace lowbit::report
