// Small hand-written SVG plots for the report (report.cc): a linear axis with "nice" ticks, line
// charts, histograms with vertical markers, horizontal bars; and the numbers the report plots
// (histogram counts, grid levels, clip counts, SQNR). Tested in tests/report/svg_test.cc.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lowbit::report {

// Ticks at 1, 2 or 5 times a power of ten inside [lo, hi], about `target` of them (at least two
// when lo < hi).
std::vector<double> nice_ticks(double lo, double hi, int target = 5);
// A tick label: shortest of %g with up to 4 significant digits ("0.25", "1e+03", "-3").
std::string tick_label(double v);
std::string html_escape(const std::string& s);

// Counts of `values` in `bins` equal bins over [lo, hi] (values outside are not counted; hi
// falls into the last bin).
std::vector<int64_t> histogram(const std::vector<float>& values, double lo, double hi, int bins);

// The real values of codes qmin..qmax on one grid: scale * (q - zero_point).
std::vector<double> grid_levels(double scale, int32_t zero_point, int32_t qmin, int32_t qmax);

// Weights that clip: values[e] of channel e % scale.size() (the quantized axis is the last one)
// with values[e] / scale + zero_point outside [qmin, qmax] (by more than 1e-3 codes, above f32
// rounding), i.e. outside the grid's range [scale * (qmin - zero_point), scale * (qmax -
// zero_point)], where fake quantization clamps.
int64_t clip_count(const std::vector<float>& values, const std::vector<float>& scale,
                   const std::vector<int32_t>& zero_point, int32_t qmin, int32_t qmax);

// 10 log10(sum f^2 / sum (f - q)^2) in dB: +inf when q == f; ValueError for different sizes.
double sqnr_db(const std::vector<float>& f, const std::vector<float>& q);

// The plot area of a chart: data ranges mapped to pixels (y up).
struct Frame {
  double width = 520, height = 260;
  double left = 56, right = 16, top = 26, bottom = 40;
  double x_lo = 0, x_hi = 1, y_lo = 0, y_hi = 1;
  double px(double x) const;
  double py(double y) const;
};

// <g class="axis"> with both axes, their ticks, tick labels and grid lines, and axis titles.
std::string axes(const Frame& f, const std::string& x_title, const std::string& y_title);

struct Series {
  std::string name;
  std::vector<double> x, y;
  std::string color;
  bool dashed = false;
};
struct Marker {  // a vertical line at x, labelled
  double x = 0;
  std::string label, color = "#888";
  bool dashed = true;
};

// A complete <svg class="plot ..."> element (the title as its <title>; the page shows it in the
// card's heading). `cls` is added to the class list.
std::string line_chart(const std::string& title, const std::vector<Series>& series,
                       const std::vector<Marker>& markers, const std::string& x_title,
                       const std::string& y_title, const std::string& cls);
// Bars of `counts` over [lo, hi]; markers drawn over them; shade [shade_lo, shade_hi] (when
// shade_lo < shade_hi) as the representable range.
std::string histogram_chart(const std::string& title, const std::vector<int64_t>& counts, double lo,
                            double hi, const std::vector<Marker>& markers, double shade_lo,
                            double shade_hi, const std::string& x_title, const std::string& cls,
                            bool log_y = false);
// Horizontal bars, one per (label, value), values labelled with value_labels.
std::string bar_chart(const std::string& title, const std::vector<std::string>& labels,
                      const std::vector<double>& values,
                      const std::vector<std::string>& value_labels,
                      const std::vector<std::string>& colors, const std::string& cls);

}  // namespace lowbit::report
