#include "report/svg.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "lowbit/error.h"

namespace lowbit::report {

namespace {

std::string num(double v) {  // pixel coordinates
  char b[32];
  std::snprintf(b, sizeof b, "%.1f", v);
  return b;
}

}  // namespace

std::vector<double> nice_ticks(double lo, double hi, int target) {
  if (!(hi > lo) || !std::isfinite(lo) || !std::isfinite(hi)) return {lo};
  const double raw = (hi - lo) / std::max(1, target);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  std::vector<double> t;
  const double first = std::ceil(lo / step - 1e-9);
  for (int i = 0; i < 1000; ++i) {
    const double v = (first + i) * step;
    if (v > hi + step * 1e-9) break;
    t.push_back(std::abs(v) < step * 1e-9 ? 0.0 : v);
  }
  if (t.size() < 2) t = {lo, hi};
  return t;
}

std::string tick_label(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.4g", v);
  return b;
}

std::string html_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '&':
        o += "&amp;";
        break;
      case '<':
        o += "&lt;";
        break;
      case '>':
        o += "&gt;";
        break;
      case '"':
        o += "&quot;";
        break;
      default:
        o += c;
    }
  }
  return o;
}

std::vector<int64_t> histogram(const std::vector<float>& values, double lo, double hi, int bins) {
  if (bins < 1) LOWBIT_THROW(ValueError, "histogram: bins must be >= 1, got ", bins);
  std::vector<int64_t> c(bins, 0);
  if (!(hi > lo)) {
    for (float v : values)
      if (v == lo) ++c[0];
    return c;
  }
  for (float v : values) {
    if (!(v >= lo && v <= hi)) continue;
    int b = static_cast<int>((v - lo) / (hi - lo) * bins);
    c[std::min(b, bins - 1)]++;
  }
  return c;
}

std::vector<double> grid_levels(double scale, int32_t zero_point, int32_t qmin, int32_t qmax) {
  std::vector<double> l;
  for (int32_t q = qmin; q <= qmax; ++q) l.push_back(scale * (q - zero_point));
  return l;
}

int64_t clip_count(const std::vector<float>& values, const std::vector<float>& scale,
                   const std::vector<int32_t>& zero_point, int32_t qmin, int32_t qmax) {
  if (scale.empty() || scale.size() != zero_point.size())
    LOWBIT_THROW(ValueError, "clip_count: ", scale.size(), " scales and ", zero_point.size(),
                 " zero points (need the same number, at least one)");
  int64_t n = 0;
  const size_t ch = scale.size();
  for (size_t e = 0; e < values.size(); ++e) {
    const double code = values[e] / static_cast<double>(scale[e % ch]) + zero_point[e % ch];
    if (code < qmin - 1e-3 || code > qmax + 1e-3) ++n;  // f32 scales: ~1e-6 codes of rounding
  }
  return n;
}

double sqnr_db(const std::vector<float>& f, const std::vector<float>& q) {
  if (f.size() != q.size())
    LOWBIT_THROW(ValueError, "sqnr_db: ", f.size(), " reference values but ", q.size(),
                 " quantized ones");
  double sig = 0, noise = 0;
  for (size_t i = 0; i < f.size(); ++i) {
    sig += static_cast<double>(f[i]) * f[i];
    const double d = static_cast<double>(f[i]) - q[i];
    noise += d * d;
  }
  if (noise == 0) return std::numeric_limits<double>::infinity();
  return 10 * std::log10(sig / noise);
}

double Frame::px(double x) const {
  const double w = width - left - right;
  return left + (x_hi > x_lo ? (x - x_lo) / (x_hi - x_lo) : 0.5) * w;
}
double Frame::py(double y) const {
  const double h = height - top - bottom;
  return top + h - (y_hi > y_lo ? (y - y_lo) / (y_hi - y_lo) : 0.5) * h;
}

std::string axes(const Frame& f, const std::string& x_title, const std::string& y_title) {
  std::string s = "<g class=\"axis\">";
  const double x0 = f.left, x1 = f.width - f.right, y0 = f.top, y1 = f.height - f.bottom;
  for (double t : nice_ticks(f.y_lo, f.y_hi, 5)) {
    const double y = f.py(t);
    s += "<line class=\"gridline\" x1=\"" + num(x0) + "\" x2=\"" + num(x1) + "\" y1=\"" + num(y) +
         "\" y2=\"" + num(y) + "\"/>";
    s += "<text class=\"tick y\" x=\"" + num(x0 - 6) + "\" y=\"" + num(y + 4) +
         "\" text-anchor=\"end\">" + tick_label(t) + "</text>";
  }
  for (double t : nice_ticks(f.x_lo, f.x_hi, 6)) {
    const double x = f.px(t);
    s += "<line class=\"tickmark\" x1=\"" + num(x) + "\" x2=\"" + num(x) + "\" y1=\"" + num(y1) +
         "\" y2=\"" + num(y1 + 5) + "\"/>";
    s += "<text class=\"tick x\" x=\"" + num(x) + "\" y=\"" + num(y1 + 18) +
         "\" text-anchor=\"middle\">" + tick_label(t) + "</text>";
  }
  s += "<line class=\"axisline\" x1=\"" + num(x0) + "\" x2=\"" + num(x1) + "\" y1=\"" + num(y1) +
       "\" y2=\"" + num(y1) + "\"/>";
  s += "<line class=\"axisline\" x1=\"" + num(x0) + "\" x2=\"" + num(x0) + "\" y1=\"" + num(y0) +
       "\" y2=\"" + num(y1) + "\"/>";
  if (!x_title.empty())
    s += "<text class=\"axis-title\" x=\"" + num((x0 + x1) / 2) + "\" y=\"" + num(f.height - 4) +
         "\" text-anchor=\"middle\">" + html_escape(x_title) + "</text>";
  if (!y_title.empty())
    s += "<text class=\"axis-title\" transform=\"translate(12," + num((y0 + y1) / 2) +
         ") rotate(-90)\" text-anchor=\"middle\">" + html_escape(y_title) + "</text>";
  return s + "</g>";
}

namespace {

std::string svg_open(const Frame& f, const std::string& cls, const std::string& title) {
  return "<svg class=\"plot " + cls + "\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 " +
         num(f.width) + " " + num(f.height) + "\" role=\"img\"><title>" + html_escape(title) +
         "</title>";
}

std::string marker_svg(const Frame& f, const Marker& m, int index) {
  if (m.x < f.x_lo || m.x > f.x_hi) return "";
  const double x = f.px(m.x);
  std::string s = "<line class=\"marker\" x1=\"" + num(x) + "\" x2=\"" + num(x) + "\" y1=\"" +
                  num(f.top) + "\" y2=\"" + num(f.height - f.bottom) + "\" stroke=\"" + m.color +
                  "\"" + (m.dashed ? " stroke-dasharray=\"4 3\"" : "") + "/>";
  if (!m.label.empty())
    s += "<text class=\"marker-label\" x=\"" + num(x + 3) + "\" y=\"" +
         num(f.top + 11 + 11 * (index % 2)) + "\" fill=\"" + m.color + "\">" +
         html_escape(m.label) + "</text>";
  return s;
}

}  // namespace

std::string line_chart(const std::string& title, const std::vector<Series>& series,
                       const std::vector<Marker>& markers, const std::string& x_title,
                       const std::string& y_title, const std::string& cls) {
  Frame f;
  double xl = 1e300, xh = -1e300, yl = 1e300, yh = -1e300;
  for (const Series& s : series)
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!std::isfinite(s.y[i])) continue;
      xl = std::min(xl, s.x[i]), xh = std::max(xh, s.x[i]);
      yl = std::min(yl, s.y[i]), yh = std::max(yh, s.y[i]);
    }
  if (xl > xh) xl = 0, xh = 1, yl = 0, yh = 1;
  if (xh == xl) xl -= 0.5, xh += 0.5;
  if (yh == yl) yl -= 0.5, yh += 0.5;
  const double pad = (yh - yl) * 0.06;
  f.x_lo = xl, f.x_hi = xh, f.y_lo = yl - pad, f.y_hi = yh + pad;
  std::string s = svg_open(f, cls, title) + axes(f, x_title, y_title);
  for (size_t i = 0; i < markers.size(); ++i) s += marker_svg(f, markers[i], static_cast<int>(i));
  double legend_x = f.width - f.right - 8;
  for (size_t k = series.size(); k-- > 0;) {
    const Series& sr = series[k];
    std::string pts;
    for (size_t i = 0; i < sr.x.size(); ++i)
      if (std::isfinite(sr.y[i])) pts += num(f.px(sr.x[i])) + "," + num(f.py(sr.y[i])) + " ";
    s += "<polyline class=\"series\" fill=\"none\" stroke=\"" + sr.color + "\"" +
         (sr.dashed ? " stroke-dasharray=\"6 3\"" : "") + " points=\"" + pts + "\"/>";
    for (size_t i = 0; i < sr.x.size(); ++i)
      if (std::isfinite(sr.y[i]))
        s += "<circle class=\"point\" r=\"2.5\" fill=\"" + sr.color + "\" cx=\"" +
             num(f.px(sr.x[i])) + "\" cy=\"" + num(f.py(sr.y[i])) + "\"/>";
    const double w = 7.0 * static_cast<double>(sr.name.size()) + 26;
    legend_x -= w;
    s += "<g class=\"legend\"><line x1=\"" + num(legend_x) + "\" x2=\"" + num(legend_x + 16) +
         "\" y1=\"14\" y2=\"14\" stroke=\"" + sr.color + "\" stroke-width=\"2.5\"" +
         (sr.dashed ? " stroke-dasharray=\"6 3\"" : "") + "/><text x=\"" + num(legend_x + 20) +
         "\" y=\"18\">" + html_escape(sr.name) + "</text></g>";
  }
  return s + "</svg>";
}

std::string histogram_chart(const std::string& title, const std::vector<int64_t>& counts, double lo,
                            double hi, const std::vector<Marker>& markers, double shade_lo,
                            double shade_hi, const std::string& x_title, const std::string& cls,
                            bool log_y) {
  Frame f;
  if (!(hi > lo)) hi = lo + 1;
  int64_t top = 1;
  for (int64_t c : counts) top = std::max(top, c);
  const auto h = [&](int64_t c) { return log_y ? std::log10(1.0 + c) : static_cast<double>(c); };
  f.x_lo = lo, f.x_hi = hi, f.y_lo = 0, f.y_hi = h(top) * 1.05;
  std::string s = svg_open(f, cls, title);
  if (shade_lo < shade_hi) {
    const double a = f.px(std::max(lo, shade_lo)), b = f.px(std::min(hi, shade_hi));
    if (b > a)
      s += "<rect class=\"range\" x=\"" + num(a) + "\" y=\"" + num(f.top) + "\" width=\"" +
           num(b - a) + "\" height=\"" + num(f.height - f.top - f.bottom) + "\"/>";
  }
  s += axes(f, x_title, log_y ? "log10(1 + count)" : "count");
  const double bw = (hi - lo) / static_cast<double>(std::max<size_t>(1, counts.size()));
  for (size_t i = 0; i < counts.size(); ++i) {
    if (counts[i] == 0) continue;
    const double x0 = f.px(lo + bw * static_cast<double>(i)), x1 = f.px(lo + bw * (i + 1.0));
    const double y = f.py(h(counts[i]));
    s += "<rect class=\"bar\" x=\"" + num(x0) + "\" y=\"" + num(y) + "\" width=\"" +
         num(std::max(0.5, x1 - x0 - 0.6)) + "\" height=\"" + num(f.py(0) - y) + "\"/>";
  }
  for (size_t i = 0; i < markers.size(); ++i) s += marker_svg(f, markers[i], static_cast<int>(i));
  return s + "</svg>";
}

std::string bar_chart(const std::string& title, const std::vector<std::string>& labels,
                      const std::vector<double>& values,
                      const std::vector<std::string>& value_labels,
                      const std::vector<std::string>& colors, const std::string& cls) {
  Frame f;
  f.left = 110, f.right = 130, f.bottom = 10;
  f.height = f.top + f.bottom + 34.0 * static_cast<double>(labels.size());
  double top = 0;
  for (double v : values) top = std::max(top, v);
  f.x_lo = 0, f.x_hi = top > 0 ? top : 1;
  std::string s = svg_open(f, cls, title);
  for (size_t i = 0; i < labels.size(); ++i) {
    const double y = f.top + 34.0 * static_cast<double>(i) + 5;
    const double w = f.px(values[i]) - f.left;
    s += "<text class=\"bar-label\" x=\"" + num(f.left - 8) + "\" y=\"" + num(y + 17) +
         "\" text-anchor=\"end\">" + html_escape(labels[i]) + "</text>";
    s += "<rect class=\"hbar\" x=\"" + num(f.left) + "\" y=\"" + num(y) + "\" width=\"" +
         num(std::max(1.0, w)) + "\" height=\"24\" rx=\"3\" fill=\"" + colors[i % colors.size()] +
         "\"/>";
    s += "<text class=\"bar-value\" x=\"" + num(f.left + std::max(1.0, w) + 6) + "\" y=\"" +
         num(y + 17) + "\">" + html_escape(value_labels[i]) + "</text>";
  }
  return s + "</svg>";
}

}  // namespace lowbit::report
