// The quantization report (include/lowbit/report/report.h): gathers what each section shows from
// the QAT model's layers and quantizers, probe models over the same layer graph (a layer's output
// is a model output of a functional model built on the QAT model's inputs) and the integer
// model, and renders it with the SVG helpers of report/svg.h.
#include "lowbit/report/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>

#include "lowbit/error.h"
#include "lowbit/io/atomic_file.h"
#include "lowbit/quant/convert.h"
#include "lowbit/quant/quantizer.h"
#include "report/svg.h"

namespace lowbit::report {

namespace {

using NodePtr = std::shared_ptr<nn::LayerNode>;

const char* kTrainColor = "#2563eb";
const char* kValColor = "#f97316";
const char* kGridColor = "#dc2626";

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}
std::string g4(double v) { return fmt("%.4g", v); }
std::string db(double v) {
  if (std::isinf(v)) return v > 0 ? "exact" : "-&infin;";
  if (std::isnan(v)) return "&ndash;";
  return fmt("%.1f dB", v);
}
std::string bytes(double b) {
  if (b >= 1 << 20) return fmt("%.2f MiB", b / (1 << 20));
  if (b >= 1 << 10) return fmt("%.1f KiB", b / (1 << 10));
  return fmt("%.0f B", b);
}

// Layer calls in topological order (each node once).
std::vector<NodePtr> nodes_of(const nn::Model& m) {
  std::vector<NodePtr> out;
  std::set<const nn::LayerNode*> seen;
  std::function<void(const NodePtr&)> visit = [&](const NodePtr& n) {
    if (!seen.insert(n.get()).second) return;
    for (const nn::KTensor& k : n->inputs) visit(k.node);
    out.push_back(n);
  };
  for (const nn::KTensor& k : m.outputs()) visit(k.node);
  return out;
}

std::vector<float> floats(const Tensor& t) {
  const Tensor f = t.dtype() == DType::kF32 ? t : t.to(DType::kF32);
  return std::vector<float>(f.data<float>(), f.data<float>() + f.numel());
}

// The values of `outs` (symbolic tensors of m) on x, through one functional model over m's graph.
// An output of an InputLayer is x itself.
std::vector<Tensor> probe(const nn::Model& m, const std::vector<nn::KTensor>& outs,
                          const Tensor& x) {
  std::vector<Tensor> r(outs.size());
  std::vector<nn::KTensor> run;
  std::vector<size_t> where;
  for (size_t i = 0; i < outs.size(); ++i) {
    if (dynamic_cast<const nn::InputLayer*>(outs[i].node->layer.get())) {
      r[i] = x;
    } else {
      where.push_back(i);
      run.push_back(outs[i]);
    }
  }
  if (run.empty()) return r;
  auto p = nn::Model::create(m.inputs(), run, "report_probe");
  const std::vector<Tensor> got = p->predict(std::vector<Tensor>{x}, 256);
  for (size_t k = 0; k < where.size(); ++k) r[where[k]] = got[k];
  return r;
}

std::string activation_of(const nn::Layer& l) {
  const nn::Json c = l.get_config();
  if (c.contains("activation") && c["activation"].is_string())
    return c["activation"].get<std::string>();
  return "";
}

// ---- 1. training curves ----

struct Card {
  std::string title, body;
  bool wide = false;
};

std::string cards(const std::vector<Card>& cs) {
  std::string s = "<div class=\"cards\">";
  for (const Card& c : cs)
    s += std::string("<div class=\"card") + (c.wide ? " wide" : "") + "\"><h3>" +
         html_escape(c.title) + "</h3>" + c.body + "</div>";
  return s + "</div>";
}

std::string section(const std::string& id, const std::string& title, const std::string& intro,
                    const std::string& body, int plots) {
  return "<section id=\"" + id + "\" data-plots=\"" + std::to_string(plots) + "\"><h2>" +
         html_escape(title) + "</h2><p class=\"intro\">" + intro + "</p>" + body + "</section>";
}

std::string curves_section(const ReportInputs& in) {
  std::vector<std::string> bases;
  for (const auto& [phase, h] : in.histories)
    for (const auto& [k, v] : h.history) {
      const std::string b = k.rfind("val_", 0) == 0 ? k.substr(4) : k;
      if (std::find(bases.begin(), bases.end(), b) == bases.end()) bases.push_back(b);
    }
  std::stable_sort(bases.begin(), bases.end(), [](const std::string& a, const std::string& b) {
    return (a == "loss") > (b == "loss");
  });
  const std::string intro =
      "Loss and metrics per epoch, training (solid) and validation (dashed); the phases follow "
      "each other, a dashed line marks where each one starts.";
  if (bases.empty())
    return section("curves", "Training curves",
                   "<span class=\"note\">No training history was given.</span>", "", 0);
  std::vector<Card> cs;
  for (const std::string& b : bases) {
    Series tr{"train", {}, {}, kTrainColor, false}, va{"validation", {}, {}, kValColor, true};
    std::vector<Marker> marks;
    double offset = 0;
    for (const auto& [phase, h] : in.histories) {
      size_t n = 0;
      for (const auto& [k, v] : h.history) n = std::max(n, v.size());
      if (in.histories.size() > 1) marks.push_back({offset + 0.5, phase, "#6b7280", true});
      for (auto [key, sr] : {std::pair{b, &tr}, std::pair{"val_" + b, &va}}) {
        const auto it = h.history.find(key);
        if (it == h.history.end()) continue;
        for (size_t i = 0; i < it->second.size(); ++i) {
          sr->x.push_back(offset + static_cast<double>(i) + 1);
          sr->y.push_back(it->second[i]);
        }
      }
      offset += static_cast<double>(n);
    }
    std::vector<Series> ss;
    if (!tr.x.empty()) ss.push_back(tr);
    if (!va.x.empty()) ss.push_back(va);
    cs.push_back({b, line_chart(b, ss, marks, "epoch", b, "curve")});
  }
  std::string phases;
  for (const auto& [phase, h] : in.histories)
    phases += (phases.empty() ? "" : ", ") + html_escape(phase) + " (" +
              std::to_string(h.history.empty() ? 0 : h.history.begin()->second.size()) + " epochs" +
              (h.stop_reason.empty() ? "" : ", stopped: " + html_escape(h.stop_reason)) + ")";
  return section("curves", "Training curves", intro + " Phases: " + phases + ".", cards(cs),
                 static_cast<int>(cs.size()));
}

// ---- 2. weights against their grid ----

struct WeightEntry {
  std::string name;
  const quant::Quantizer* q;
  const nn::Layer* owner;
  Tensor w;  // the latent float weights the quantizer sees
};

std::string weight_card_body(const WeightEntry& e, int bins) {
  const std::vector<float> w = floats(e.w);
  const quant::QuantizerConfig& c = e.q->config();
  std::string caption = "<p class=\"meta\">" + html_escape(quant::describe(c)) + " &middot; " +
                        std::to_string(w.size()) + " weights " + e.w.shape().str() + "</p>";
  quant::Quantizer::Grid g;
  try {
    g = e.q->grid(*e.owner);
  } catch (const Error&) {
    float lo = *std::min_element(w.begin(), w.end()), hi = *std::max_element(w.begin(), w.end());
    return histogram_chart(e.name, histogram(w, lo, hi, bins), lo, hi, {}, 0, 0, "weight",
                           "weights") +
           caption + "<p class=\"note\">The " + html_escape(c.scheme) +
           " scheme has no stored grid (scale, zero point) to draw.</p>";
  }
  const bool per_tensor = g.scale.size() == 1;
  const int64_t clipped = clip_count(w, g.scale, g.zero_point, g.qmin, g.qmax);
  // Per tensor: real values and the grid's levels. Per channel: each weight in its channel's
  // code units (w / s_c + z_c), where every channel's levels are the integers qmin..qmax.
  std::vector<float> v = w;
  double lvl_lo, lvl_hi;
  std::vector<double> levels;
  if (per_tensor) {
    levels = grid_levels(g.scale[0], g.zero_point[0], g.qmin, g.qmax);
  } else {
    for (size_t i = 0; i < v.size(); ++i)
      v[i] =
          w[i] / g.scale[i % g.scale.size()] + static_cast<float>(g.zero_point[i % g.scale.size()]);
    levels = grid_levels(1.0, 0, g.qmin, g.qmax);
  }
  lvl_lo = levels.front(), lvl_hi = levels.back();
  const double step = levels.size() > 1 ? levels[1] - levels[0] : 1;
  const double lo = std::min<double>(*std::min_element(v.begin(), v.end()), lvl_lo - step / 2);
  const double hi = std::max<double>(*std::max_element(v.begin(), v.end()), lvl_hi + step / 2);
  std::vector<Marker> marks;
  if (levels.size() <= 16) {
    for (double l : levels) marks.push_back({l, "", kGridColor, false});
    marks.front().label = g4(lvl_lo);
    marks.back().label = g4(lvl_hi);
  } else {
    marks.push_back({lvl_lo, "clip " + g4(lvl_lo), kGridColor, true});
    marks.push_back({lvl_hi, "clip " + g4(lvl_hi), kGridColor, true});
  }
  const std::string x_title = per_tensor
                                  ? "weight"
                                  : "weight / scale + zero point (" +
                                        std::to_string(g.scale.size()) + " channels, in codes)";
  float smin = *std::min_element(g.scale.begin(), g.scale.end());
  float smax = *std::max_element(g.scale.begin(), g.scale.end());
  caption += "<p class=\"meta\">codes [" + std::to_string(g.qmin) + ", " + std::to_string(g.qmax) +
             "] (" + std::to_string(levels.size()) + " levels) &middot; scale " +
             (smin == smax ? g4(smin) : g4(smin) + " &hellip; " + g4(smax)) + " &middot; <b" +
             (clipped ? " class=\"warn\"" : "") + ">" + std::to_string(clipped) + " clip</b> (" +
             fmt("%.2f", 100.0 * static_cast<double>(clipped) / static_cast<double>(w.size())) +
             "%)</p>";
  return histogram_chart(e.name, histogram(v, lo, hi, bins), lo, hi, marks, lvl_lo, lvl_hi, x_title,
                         "weights") +
         caption;
}

std::string weights_section(const ReportInputs& in, const std::vector<NodePtr>& nodes) {
  std::vector<WeightEntry> es;
  std::set<const nn::Layer*> seen;
  std::vector<std::string> skipped;
  for (const NodePtr& n : nodes) {
    const nn::Layer* l = n->layer.get();
    if (!seen.insert(l).second) continue;
    if (auto* qw = dynamic_cast<const quant::QuantizeWrapperLayer*>(l)) {
      for (const auto& [wname, q] : qw->quantizers())
        for (const nn::Weight& w : qw->layer()->weights())
          if (w.name == wname) es.push_back({l->name() + "/" + wname, &q, l, w.value});
    } else if (auto* fb = dynamic_cast<const quant::FoldedConvBatchNormLayer*>(l)) {
      es.push_back(
          {l->name() + "/" + fb->kernel_name() + " (folded with " + fb->batch_norm()->name() + ")",
           &fb->quantizer(), l, fb->folded_kernel()});
    } else if (l->has_quantizer_state() && !dynamic_cast<const quant::FakeQuantLayer*>(l)) {
      skipped.push_back(l->name() + " (" + l->class_name() + ")");
    }
  }
  std::vector<Card> cs;
  for (const WeightEntry& e : es) cs.push_back({e.name, weight_card_body(e, in.histogram_bins)});
  std::string intro =
      "The latent float weights the optimizer trains (a folded batch norm's kernel as W&middot;"
      "&gamma;/&sigma;), with the quantization grid over them: a red line at every level for up "
      "to 16 levels, else the two ends of the clip range; the shaded band is what the grid can "
      "represent. Per-channel grids are drawn in code units, where every channel's levels fall "
      "on the integers.";
  if (!skipped.empty()) {
    intro += " Not drawn (weights quantized inside the layer's own cell):";
    for (const std::string& s : skipped) intro += " " + html_escape(s);
    intro += ".";
  }
  return section("weights", "Weights and their quantization grid", intro, cards(cs),
                 static_cast<int>(cs.size()));
}

// ---- 3. activation ranges, 4. SQNR ----

struct ActEntry {
  const quant::FakeQuantLayer* fq;
  nn::KTensor input, output;
};

std::string activations_section(const ReportInputs& in, const std::vector<ActEntry>& acts,
                                const std::vector<Tensor>& inputs) {
  std::vector<Card> cs;
  for (size_t i = 0; i < acts.size(); ++i) {
    const quant::FakeQuantLayer& fq = *acts[i].fq;
    const std::vector<float> v = floats(inputs[i]);
    std::string body;
    double r_lo = 0, r_hi = 0;
    std::string range_note;
    try {
      const quant::Quantizer::Grid g = fq.quantizer().grid(fq);
      r_lo = g.scale[0] * (g.qmin - g.zero_point[0]);
      r_hi = g.scale[0] * (g.qmax - g.zero_point[0]);
      range_note = std::to_string(g.qmax - g.qmin + 1) + " levels, step " + g4(g.scale[0]);
    } catch (const Error&) {
      const Tensor mn = fq.quantizer().min(fq), mx = fq.quantizer().max(fq);
      if (mn.defined() && mx.defined()) r_lo = mn.get_as_double(0), r_hi = mx.get_as_double(0);
      range_note = "tracked range";
    }
    double lo = r_lo, hi = r_hi;
    int64_t outside = 0;
    for (float f : v) {
      lo = std::min<double>(lo, f), hi = std::max<double>(hi, f);
      if (f < r_lo || f > r_hi) ++outside;
    }
    if (hi == lo) hi = lo + 1;
    const double pad = (hi - lo) * 0.02;
    std::vector<Marker> marks{{r_lo, "min " + g4(r_lo), kGridColor, true},
                              {r_hi, "max " + g4(r_hi), kGridColor, true}};
    body =
        histogram_chart(fq.name() + " input", histogram(v, lo - pad, hi + pad, in.histogram_bins),
                        lo - pad, hi + pad, marks, r_lo, r_hi,
                        "value of " + acts[i].input.node->layer->name(), "activations", true);
    body += "<p class=\"meta\">" + html_escape(quant::describe(fq.quantizer().config())) +
            " &middot; range [" + g4(r_lo) + ", " + g4(r_hi) + "] (" + range_note +
            ") &middot; observed [" + g4(lo) + ", " + g4(hi) + "] &middot; <b" +
            (outside ? " class=\"warn\"" : "") + ">" +
            fmt("%.2f", 100.0 * static_cast<double>(outside) / std::max<double>(1, v.size())) +
            "% outside</b></p>";
    cs.push_back({fq.name(), body});
  }
  return section("activations", "Activation ranges",
                 "Each activation quantizer's learned range (red, the band it can represent) "
                 "against the values its input takes on the " +
                     std::to_string(in.x.shape()[0]) +
                     " sample inputs (log counts); values outside the band clip.",
                 cards(cs), static_cast<int>(cs.size()));
}

double top1(const Tensor& out, const Tensor& labels) {
  if (out.rank() != 2 || labels.numel() != out.shape()[0]) return NAN;
  const std::vector<float> o = floats(out);
  const int64_t n = out.shape()[0], c = out.shape()[1];
  int64_t ok = 0;
  for (int64_t r = 0; r < n; ++r) {
    const int64_t a =
        std::max_element(o.begin() + r * c, o.begin() + (r + 1) * c) - (o.begin() + r * c);
    if (a == static_cast<int64_t>(labels.get_as_double(r))) ++ok;
  }
  return static_cast<double>(ok) / static_cast<double>(n);
}

}  // namespace

std::string render_html(const ReportInputs& in) {
  if (!in.qat)
    LOWBIT_THROW(ValueError, "render_html: ReportInputs::qat is null (the QAT model is required)");
  if (!in.x.defined() || in.x.dtype() != DType::kF32 || in.x.rank() < 1 || in.x.shape()[0] < 1)
    LOWBIT_THROW(ValueError,
                 "render_html: ReportInputs::x must be a non-empty f32 batch of inputs");
  nn::Model& qat = *in.qat;
  const std::vector<NodePtr> nodes = nodes_of(qat);

  // Activation quantizers, and what the SQNR table compares for each.
  std::vector<ActEntry> acts;
  for (const NodePtr& n : nodes)
    if (auto* fq = dynamic_cast<const quant::FakeQuantLayer*>(n->layer.get()))
      acts.push_back({fq, n->inputs.at(0), nn::KTensor{n, 0}});
  bool any_quantizer = !acts.empty();
  for (const NodePtr& n : nodes) any_quantizer = any_quantizer || n->layer->has_quantizer_state();
  if (!any_quantizer)
    LOWBIT_THROW(ValueError, "render_html: model '", qat.name(),
                 "' has no quantizer; pass the quantize_model result (the QAT model)");

  std::vector<nn::KTensor> want;
  for (const ActEntry& a : acts) want.push_back(a.input);
  for (const ActEntry& a : acts) want.push_back(a.output);
  want.push_back(qat.outputs().at(0));
  const std::vector<Tensor> got = probe(qat, want, in.x);
  const std::vector<Tensor> act_in(got.begin(), got.begin() + static_cast<long>(acts.size()));
  const std::vector<Tensor> act_out(got.begin() + static_cast<long>(acts.size()), got.end() - 1);
  const Tensor qat_out = got.back();

  // The float model's tensor each FakeQuant's output stands for: the output of the layer the
  // FakeQuant's input comes from, by name (a folded batch norm's: the BatchNormalization's), when
  // that layer applies the same activation in both models.
  std::vector<Tensor> float_ref(acts.size());
  std::string float_note;
  Tensor float_out;
  if (in.float_model) {
    std::map<std::string, nn::KTensor> by_name;
    for (const NodePtr& n : nodes_of(*in.float_model))
      by_name.emplace(n->layer->name(), nn::KTensor{n, 0});
    std::vector<nn::KTensor> fk;
    std::vector<size_t> at;
    for (size_t i = 0; i < acts.size(); ++i) {
      const nn::Layer* p = acts[i].input.node->layer.get();
      const nn::Layer* inner = p;
      if (auto* fb = dynamic_cast<const quant::FoldedConvBatchNormLayer*>(p))
        inner = fb->batch_norm().get();
      else if (auto* qw = dynamic_cast<const quant::QuantizeWrapperLayer*>(p))
        inner = qw->layer().get();
      if (dynamic_cast<const nn::InputLayer*>(p)) {
        float_ref[i] = in.x;
        continue;
      }
      const auto it = by_name.find(inner->name());
      if (it == by_name.end() || activation_of(*it->second.node->layer) != activation_of(*inner))
        continue;
      fk.push_back(it->second);
      at.push_back(i);
    }
    fk.push_back(in.float_model->outputs().at(0));
    const std::vector<Tensor> fv = probe(*in.float_model, fk, in.x);
    for (size_t k = 0; k < at.size(); ++k)
      if (fv[k].shape() == act_out[at[k]].shape()) float_ref[at[k]] = fv[k];
    float_out = fv.back();
  } else {
    float_note = "No float model was given: the float columns are empty.";
  }

  // The integer model.
  std::unique_ptr<quant::IntegerModel> im;
  std::string int_error;
  std::vector<Tensor> codes;
  Tensor int_out;
  try {
    im = std::make_unique<quant::IntegerModel>(quant::convert_to_integer(qat));
    codes = im->run_all(in.x);
    int_out = im->predict(in.x);
  } catch (const Error& e) {
    im.reset();
    int_error = e.what();
  }

  std::string html;
  // Summary cards.
  {
    std::string s = "<div class=\"stats\">";
    auto stat = [&](const std::string& k, const std::string& v) {
      s += "<div class=\"stat\"><div class=\"k\">" + k + "</div><div class=\"v\">" + v +
           "</div></div>";
    };
    stat("model", html_escape(qat.name()));
    stat("layers", std::to_string(nodes.size()));
    stat("activation quantizers", std::to_string(acts.size()));
    stat("sample inputs", std::to_string(in.x.shape()[0]));
    if (in.labels.defined()) {
      if (float_out.defined())
        stat("float accuracy", fmt("%.1f%%", 100 * top1(float_out, in.labels)));
      stat("QAT accuracy", fmt("%.1f%%", 100 * top1(qat_out, in.labels)));
      if (int_out.defined())
        stat("integer accuracy", fmt("%.1f%%", 100 * top1(int_out, in.labels)));
    }
    html += s + "</div>";
  }
  html += curves_section(in);
  html += weights_section(in, nodes);
  html += activations_section(in, acts, act_in);

  // 4. SQNR.
  {
    std::map<std::string, int> tensor_of;
    if (im)
      for (size_t i = 0; i < im->tensors.size(); ++i)
        if (!im->tensors[i].data.defined() && !im->tensors[i].scale.empty())
          tensor_of.emplace(im->tensors[i].name, static_cast<int>(i));
    std::string rows;
    std::vector<std::string> labels, value_labels, colors;
    std::vector<double> values;
    struct Row {
      std::string name;
      double f_fq, f_int, fq_int;
    };
    std::vector<Row> rs;
    for (size_t i = 0; i < acts.size(); ++i) {
      const std::vector<float> q = floats(act_out[i]);
      Row r{acts[i].fq->name(), NAN, NAN, NAN};
      std::vector<float> deq;
      if (auto it = tensor_of.find(r.name);
          it != tensor_of.end() && codes.at(it->second).defined()) {
        const quant::IntegerTensor& t = im->tensors[it->second];
        const std::vector<float> c = floats(codes[it->second]);
        if (c.size() == q.size()) {
          deq.resize(c.size());
          for (size_t e = 0; e < c.size(); ++e)
            deq[e] = static_cast<float>(t.scale[0] * (c[e] - t.zero_point[0]));
          r.fq_int = sqnr_db(q, deq);
        }
      }
      if (float_ref[i].defined()) {
        const std::vector<float> f = floats(float_ref[i]);
        r.f_fq = sqnr_db(f, q);
        if (!deq.empty()) r.f_int = sqnr_db(f, deq);
      }
      rs.push_back(r);
    }
    const bool with_float = in.float_model != nullptr;
    for (const Row& r : rs) {
      rows += "<tr><td class=\"name\">" + html_escape(r.name) + "</td><td>" + db(r.f_fq) +
              "</td><td>" + db(r.f_int) + "</td><td>" + db(r.fq_int) + "</td></tr>";
      const double v = with_float ? r.f_fq : r.fq_int;
      if (std::isfinite(v)) {
        labels.push_back(r.name.size() > 14 ? r.name.substr(0, 13) + "…" : r.name);
        values.push_back(std::clamp(v, 0.0, 60.0));  // bars end at 60 dB; the label is exact
        value_labels.push_back(fmt("%.1f dB", v));
        colors.push_back(v >= 30 ? "#16a34a" : v >= 20 ? "#ca8a04" : "#dc2626");
      }
    }
    std::string body;
    int plots = 0;
    if (!values.empty()) {
      body += "<div class=\"card wide\"><h3>" +
              std::string(with_float ? "float vs fake-quant" : "fake-quant vs integer") + "</h3>" +
              bar_chart(with_float ? "SQNR, float vs fake-quant" : "SQNR, fake-quant vs integer",
                        labels, values, value_labels, colors, "sqnr") +
              "</div>";
      plots = 1;
    }
    body +=
        "<div class=\"card wide\"><table class=\"data\"><thead><tr><th>tensor</th><th>float vs "
        "fake-quant</th><th>float vs integer</th><th>fake-quant vs integer</th></tr></thead>"
        "<tbody>" +
        rows + "</tbody></table></div>";
    std::string intro =
        "Signal-to-quantization-noise ratio of each quantized tensor, 10&nbsp;log<sub>10</sub>("
        "&Sigma;f&sup2;/&Sigma;(f&minus;q)&sup2;), on the sample inputs: the float model's tensor "
        "against the QAT (fake-quant) model's and the integer model's (its codes dequantized); "
        "each model runs from the input, so the noise of earlier layers adds up. Green &ge; 30 dB, "
        "amber &ge; 20 dB (bars end at 60 dB). Tensors without a float counterpart (a split-off "
        "activation) have "
        "none.";
    if (!float_note.empty()) intro += " <span class=\"note\">" + float_note + "</span>";
    if (!int_error.empty())
      intro += " <span class=\"note\">No integer model: " + html_escape(int_error) + "</span>";
    html += section("sqnr", "Quantization noise per layer (SQNR)", intro, body, plots);
  }

  // 5. The scale / zero point / multiplier table.
  {
    std::string body;
    if (im) {
      const nn::Json ops = nn::Json::parse(im->inspect_json());
      std::string rows;
      auto sz = [](const nn::Json& g) {
        if (!g.is_object() || !g.contains("scale")) return std::string("&ndash;");
        return g4(g["scale"].get<double>()) + " / " + std::to_string(g["zero_point"].get<int>());
      };
      auto span = [](const nn::Json& chs, const char* k) {
        double lo = 1e300, hi = -1e300;
        for (const nn::Json& c : chs) {
          lo = std::min(lo, c[k].get<double>());
          hi = std::max(hi, c[k].get<double>());
        }
        return lo == hi ? g4(lo) : g4(lo) + " &hellip; " + g4(hi);
      };
      for (const nn::Json& e : ops) {
        std::string w = "&ndash;", ws = "&ndash;", m = "&ndash;", sh = "&ndash;", cl = "&ndash;";
        std::string in_s = sz(e.value("input", nn::Json())),
                    out_s = sz(e.value("output", nn::Json()));
        if (e.contains("grid")) out_s = sz(e["grid"]);
        if (e.contains("input1")) in_s = sz(e["input1"]) + "<br>" + sz(e["input2"]);
        if (e.contains("weights")) {
          const nn::Json& wj = e["weights"];
          w = html_escape(Shape(wj["shape"].get<std::vector<int64_t>>()).str()) + " " +
              std::to_string(wj["bits"].get<int>()) + "-bit";
        }
        if (e.contains("channels") && !e["channels"].empty()) {
          ws = span(e["channels"], "weight_scale");
          m = span(e["channels"], "M");
          sh = span(e["channels"], "shift");
          const nn::Json& c0 = e["channels"][0]["clamp"];
          cl = "[" + std::to_string(c0[0].get<int>()) + ", " + std::to_string(c0[1].get<int>()) +
               "]";
        } else {
          if (e.contains("M")) m = g4(e["M"].get<double>());
          if (e.contains("shift")) sh = std::to_string(e["shift"].get<int>());
          if (e.contains("clamp"))
            cl = "[" + std::to_string(e["clamp"][0].get<int>()) + ", " +
                 std::to_string(e["clamp"][1].get<int>()) + "]";
        }
        rows += "<tr><td class=\"op\">" + html_escape(e["op"].get<std::string>()) +
                "</td><td class=\"name\">" + html_escape(e["layer"].get<std::string>()) +
                "</td><td>" + in_s + "</td><td>" + w + "</td><td>" + ws + "</td><td>" + out_s +
                "</td><td>" + m + "</td><td>" + sh + "</td><td>" + cl + "</td></tr>";
      }
      body =
          "<div class=\"card wide scroll\"><table class=\"data\" id=\"scale-table\"><thead><tr>"
          "<th>op</th><th>layers</th><th>input scale / zp</th><th>weights</th><th>weight "
          "scale</th><th>output scale / zp</th><th>M</th><th>shift</th><th>clamp</th></tr>"
          "</thead><tbody>" +
          rows + "</tbody></table></div>";
    } else {
      body = "<p class=\"note\">The model does not convert to an integer model: " +
             html_escape(int_error) + "</p>";
    }
    html += section("table", "Scales, zero points and multipliers",
                    "Every op of the integer model (quant::convert_to_integer; IntegerModel::"
                    "inspect_json): its input and output grids, weight width and per-channel "
                    "scales, the requantization multiplier M = s<sub>in</sub>&middot;s<sub>w</sub>/"
                    "s<sub>out</sub> with its shift, and the output clamp (ranges over channels).",
                    body, 0);
  }

  // 6. Model size.
  {
    std::string body;
    int plots = 0;
    if (im) {
      int64_t elements = 0;
      for (const quant::IntegerTensor& t : im->tensors)
        if (t.data.defined()) elements += t.data.numel();
      const double f32 = 4.0 * static_cast<double>(elements);
      const double i8 = static_cast<double>(im->constant_bytes(false));
      const double packed = static_cast<double>(im->constant_bytes(true));
      body = "<div class=\"card wide\"><h3>Weights and biases</h3>" +
             bar_chart("Weights and biases", {"float (f32)", "int8", "packed low-bit"},
                       {f32, i8, packed},
                       {bytes(f32), bytes(i8) + fmt(" (%.1fx)", f32 / i8),
                        bytes(packed) + fmt(" (%.1fx)", f32 / packed)},
                       {"#94a3b8", "#2563eb", "#16a34a"}, "size") +
             "<p class=\"meta\">" + std::to_string(elements) +
             " constants: float at 4 bytes each; int8 one byte per weight code and 4 per int32 "
             "bias; packed stores 4- and 2-bit weights two or four codes a byte, as "
             "IntegerModel::save does.</p></div>";
      plots = 1;
    } else {
      body = "<p class=\"note\">No integer model: " + html_escape(int_error) + "</p>";
    }
    html += section("size", "Model size", "The constants of the deployed model.", body, plots);
  }

  static const char* kStyle = R"CSS(
:root{--fg:#1f2937;--muted:#6b7280;--bg:#f3f4f6;--card:#fff;--line:#e5e7eb}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);background:var(--bg)}
header{background:linear-gradient(120deg,#1e3a8a,#2563eb);color:#fff;padding:28px 40px}
header h1{margin:0;font-size:26px;font-weight:650}
header p{margin:4px 0 0;opacity:.85}
main{max-width:1240px;margin:0 auto;padding:18px 28px 60px}
section{margin-top:30px}
h2{font-size:19px;margin:0 0 4px;font-weight:650}
h3{font-size:14px;margin:0 0 6px;font-weight:600;word-break:break-all}
.intro{color:var(--muted);margin:0 0 12px;max-width:900px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(370px,1fr));gap:14px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px 16px;box-shadow:0 1px 2px rgba(0,0,0,.04)}
.card.wide{grid-column:1/-1;margin-bottom:14px}
.scroll{overflow-x:auto}
.stats{display:flex;flex-wrap:wrap;gap:12px;margin-top:6px}
.stat{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:10px 16px;min-width:140px}
.stat .k{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.stat .v{font-size:20px;font-weight:650}
svg.plot{width:100%;height:auto;display:block;font-size:11px}
svg.plot.sqnr,svg.plot.size{max-width:720px}
svg .plot-title{font-size:12px;font-weight:600;fill:#374151}
svg .gridline{stroke:#eef0f3}
svg .axisline,svg .tickmark{stroke:#9ca3af}
svg .tick{fill:#6b7280}
svg .axis-title{fill:#6b7280;font-size:11px}
svg .bar{fill:#60a5fa}
svg .range{fill:#fee2e2;opacity:.55}
svg .series{stroke-width:2}
svg .marker-label{font-size:10px}
svg .legend text{fill:#374151}
svg .bar-label,svg .bar-value{fill:#374151;font-size:12px}
.meta{color:var(--muted);font-size:12.5px;margin:6px 0 0}
.warn{color:#b91c1c}
.note{color:#92400e;background:#fef3c7;border-radius:6px;padding:2px 6px}
table.data{border-collapse:collapse;width:100%;font-size:13px;font-variant-numeric:tabular-nums}
table.data th{text-align:left;color:var(--muted);font-weight:600;border-bottom:2px solid var(--line);padding:6px 8px;white-space:nowrap}
table.data td{border-bottom:1px solid var(--line);padding:5px 8px;vertical-align:top;white-space:nowrap}
table.data td.name{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12px}
table.data td.op{font-weight:600}
table.data tr:hover td{background:#f9fafb}
#dom-check{display:none}
)CSS";
  // The check script counts each section's plots after load and writes the result into
  // #dom-check (the browser test reads it from the DOM), and records script errors there too.
  static const char* kScript = R"JS(
window.addEventListener('error',function(e){document.documentElement.setAttribute('data-js-error',String(e.message))});
document.addEventListener('DOMContentLoaded',function(){var ok=true,parts=[];
document.querySelectorAll('section[data-plots]').forEach(function(s){var n=s.querySelectorAll('svg.plot').length;
parts.push(s.id+'='+n);if(n!==Number(s.dataset.plots))ok=false;});
document.getElementById('dom-check').textContent=(ok?'plots-ok ':'plots-mismatch ')+parts.join(' ');});
)JS";
  std::string doc = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>" +
                    html_escape(in.title) +
                    "</title><meta name=\"viewport\" content=\"width=device-width\">"
                    "<style>" +
                    kStyle + "</style><script>" + kScript +
                    "</script></head><body>"
                    "<header><h1>" +
                    html_escape(in.title) + "</h1><p>" + html_escape(qat.name()) +
                    " &middot; lowbit quantization report</p></header>"
                    "<main>" +
                    html + "<pre id=\"dom-check\"></pre></main></body></html>\n";
  return doc;
}

void write_report(const std::string& path, const ReportInputs& in) {
  const std::string html = render_html(in);
  io::write_atomically(path, "write_report", [&](std::ostream& out) {
    out.write(html.data(), static_cast<std::streamsize>(html.size()));
  });
}

}  // namespace lowbit::report
