// The visual quantization report (issue 16): one self-contained HTML file (inline CSS and SVG,
// no network, no external scripts or fonts) that shows what quantization did to a model.
//
//   report::ReportInputs in{.qat = qat.get(), .float_model = float_model.get(), .x = x_test};
//   in.histories = {{"float", float_history}, {"QAT", qat_history}};
//   report::write_report("report.html", in);
//
// Sections (docs/report.md shows one): training curves of every phase given; per weight
// quantizer the latent float weights against the quantization grid and the weights that clip;
// per activation quantizer (FakeQuant) its range against the values its input takes on x; per
// quantized tensor the SQNR of the fake-quant and the integer model against the float model;
// the integer model's scale / zero point / multiplier table; the model size float vs int8 vs
// packed low-bit.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "lowbit/nn/callbacks.h"
#include "lowbit/nn/model.h"
#include "lowbit/tensor.h"

namespace lowbit::report {

struct ReportInputs {
  nn::Model* qat = nullptr;          // required: a quantize_model result, calibrated or trained
  nn::Model* float_model = nullptr;  // optional: the float model qat came from (SQNR vs float)
  Tensor x;                          // a batch of inputs (f32, e.g. 256 test images); required
  Tensor labels;                     // optional: class ids; adds the accuracy of each model
  // Training histories in phase order, e.g. {{"float", h1}, {"QAT", h2}}; may be empty.
  std::vector<std::pair<std::string, nn::History>> histories;
  std::string title = "Quantization report";
  int histogram_bins = 60;
};

// The whole report as one HTML document. Throws ValueError when qat is null, x is undefined or
// not f32, or the model has no quantizer; what cannot be shown for a model (no float model, a
// layer the integer converter refuses) is said in the report instead.
std::string render_html(const ReportInputs& in);

// render_html written to `path` through a temporary file renamed into place; IoError naming the
// file when it cannot be written.
void write_report(const std::string& path, const ReportInputs& in);

}  // namespace lowbit::report
