// render_html / write_report (include/lowbit/report/report.h) on a small CNN trained in float
// and fine-tuned with w4a8 QAT on a few hundred MNIST images: every section is there with the
// plots it announces, each weight quantizer has its grid drawn, each activation quantizer its
// range, the SQNR and scale tables have one row per tensor / op, and the sizes are the integer
// model's.
#include "lowbit/report/report.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "lowbit/data/idx.h"
#include "lowbit/nn/layers.h"
#include "lowbit/nn/losses.h"
#include "lowbit/nn/optimizers.h"
#include "lowbit/quant/convert.h"
#include "lowbit/quant/quantize_model.h"
#include "lowbit/quant/quantizer.h"
#include "testing/op_testing.h"

namespace lowbit {
namespace {

using testing::expect_throws_with;

Tensor first_rows(const Tensor& t, int64_t n) {
  std::vector<int64_t> d = t.shape().dims();
  d[0] = std::min(n, d[0]);
  return Tensor::wrap(const_cast<void*>(t.raw()), Shape(d), t.dtype()).clone();  // owns its rows
}

struct Fixture {
  nn::ModelPtr fm, qat;
  nn::History fh, qh;
  Tensor x, labels;
};

const Fixture& fixture() {
  static const Fixture f = [] {
    Fixture r;
    const MnistSplit train = load_mnist(testing::shared_dir() + "/data", true);
    const MnistSplit test = load_mnist(testing::shared_dir() + "/data", false);
    const Tensor x = first_rows(train.images, 384), y = first_rows(train.labels, 384);
    nn::set_random_seed(3);
    r.fm = nn::Sequential::create(
        {nn::InputSpec({28, 28, 1}), nn::Conv2D(6, 3, {.padding = "same", .use_bias = false}),
         nn::BatchNormalization({.momentum = 0.9}), nn::ReLU(), nn::MaxPooling2D(2),
         nn::Conv2D(8, 3, {.strides = {2, 2}, .padding = "same", .activation = "relu"}),
         nn::Flatten(), nn::Dense(10)},
        "tiny_cnn");
    const nn::CompileOptions co{.optimizer = nn::Adam({.learning_rate = 3e-3}),
                                .loss = nn::SparseCategoricalCrossentropy({.from_logits = true}),
                                .metrics = {"accuracy"}};
    r.fm->compile(co);
    r.fh = r.fm->fit(x, y, {.epochs = 2, .batch_size = 64, .validation_split = 0.25, .verbose = 0});
    r.qat = quant::quantize_model(*r.fm, quant::QuantizeConfig::preset("w4a8"));
    r.qat->compile({.optimizer = nn::Adam({.learning_rate = 5e-4}),
                    .loss = nn::SparseCategoricalCrossentropy({.from_logits = true}),
                    .metrics = {"accuracy"}});
    r.qh =
        r.qat->fit(x, y, {.epochs = 1, .batch_size = 64, .validation_split = 0.25, .verbose = 0});
    r.x = first_rows(test.images, 128);
    r.labels = first_rows(test.labels, 128);
    return r;
  }();
  return f;
}

report::ReportInputs inputs(bool with_float = true) {
  const Fixture& f = fixture();
  report::ReportInputs in;
  in.qat = f.qat.get();
  in.float_model = with_float ? f.fm.get() : nullptr;
  in.x = f.x;
  in.labels = f.labels;
  in.histories = {{"float", f.fh}, {"QAT", f.qh}};
  in.title = "tiny <cnn> report";
  return in;
}

int count(const std::string& s, const std::string& what) {
  int n = 0;
  for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + 1)) ++n;
  return n;
}

// The text of <section id="id"> ... </section>.
std::string section(const std::string& html, const std::string& id) {
  const size_t a = html.find("<section id=\"" + id + "\"");
  if (a == std::string::npos) return "";
  return html.substr(a, html.find("</section>", a) - a);
}

// The three SQNR values (dB; +inf for "exact", NaN for none) of the row of tensor `name`.
std::vector<double> sqnr_row(const std::string& sec, const std::string& name) {
  const size_t row = sec.find("<td class=\"name\">" + name + "</td>");
  if (row == std::string::npos) return {};
  std::vector<double> r;
  size_t at = row;
  for (int i = 0; i < 3; ++i) {
    at = sec.find("<td>", at) + 4;
    const std::string cell = sec.substr(at, sec.find("</td>", at) - at);
    r.push_back(cell == "exact"                        ? INFINITY
                : cell.find("dB") != std::string::npos ? std::stod(cell)
                                                       : NAN);
  }
  return r;
}

int declared_plots(const std::string& sec) {
  const size_t a = sec.find("data-plots=\"");
  return a == std::string::npos ? -1 : std::stoi(sec.substr(a + 12));
}

TEST(Report, RendersEverySection) {
  const Fixture& f = fixture();
  const std::string html = report::render_html(inputs());
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_NE(html.find("<title>tiny &lt;cnn&gt; report</title>"), std::string::npos);
  // Self-contained: nothing fetched.
  EXPECT_EQ(html.find("src="), std::string::npos);
  EXPECT_EQ(html.find("href="), std::string::npos);
  EXPECT_EQ(html.find("http://"), html.find("http://www.w3.org/2000/svg"));
  EXPECT_EQ(html.find("nan"), std::string::npos);

  int weight_quantizers = 0, fake_quants = 0;
  for (const nn::LayerPtr& l : f.qat->layers()) {
    if (auto* qw = dynamic_cast<const quant::QuantizeWrapperLayer*>(l.get()))
      weight_quantizers += static_cast<int>(qw->quantizers().size());
    if (dynamic_cast<const quant::FoldedConvBatchNormLayer*>(l.get())) ++weight_quantizers;
    if (dynamic_cast<const quant::FakeQuantLayer*>(l.get())) ++fake_quants;
  }
  ASSERT_EQ(weight_quantizers, 3);  // folded conv, conv, dense
  ASSERT_GE(fake_quants, 4);        // input, after each conv, the logits

  for (const char* id : {"curves", "weights", "activations", "sqnr", "table", "size"}) {
    const std::string sec = section(html, id);
    ASSERT_FALSE(sec.empty()) << id;
    EXPECT_EQ(count(sec, "<svg class=\"plot"), declared_plots(sec)) << id;
  }
  // 1. loss and accuracy, each with train and validation, the QAT phase marked.
  const std::string curves = section(html, "curves");
  EXPECT_EQ(count(curves, "<svg class=\"plot curve\""), 2);
  EXPECT_EQ(count(curves, "<polyline"), 4);
  EXPECT_EQ(count(curves, ">QAT</text>"), 2);
  // 3 epochs in all: 3 train points and 3 validation points per chart.
  EXPECT_EQ(count(curves, "class=\"point\""), 12);

  // 2. One histogram per weight quantizer; 4-bit narrow grids: a line at each of 15 levels.
  const std::string weights = section(html, "weights");
  EXPECT_EQ(count(weights, "<svg class=\"plot weights\""), weight_quantizers);
  EXPECT_EQ(count(weights, "class=\"marker\""), 15 * weight_quantizers);
  EXPECT_EQ(count(weights, "(15 levels)"), weight_quantizers);
  EXPECT_EQ(count(weights, " clip</b>"), weight_quantizers);
  EXPECT_NE(weights.find("conv2d/kernel (folded with batch_normalization)"), std::string::npos)
      << weights.substr(0, 3000);

  // 3. One per FakeQuant, with its range's two ends.
  const std::string acts = section(html, "activations");
  EXPECT_EQ(count(acts, "<svg class=\"plot activations\""), fake_quants);
  EXPECT_EQ(count(acts, "class=\"marker\""), 2 * fake_quants);

  // 4. One row per FakeQuant: float vs fake-quant, float vs integer, fake-quant vs integer. The
  // integer model computes (nearly) the QAT model's codes: its noise against the QAT model is
  // far below the quantization noise itself.
  const std::string sqnr = section(html, "sqnr");
  EXPECT_EQ(count(sqnr, "<tr><td class=\"name\">"), fake_quants);
  EXPECT_EQ(count(sqnr, "<svg class=\"plot sqnr\""), 1);
  EXPECT_EQ(sqnr.find("No float model"), std::string::npos);
  const std::vector<double> relu = sqnr_row(sqnr, "re_lu_quant");
  ASSERT_EQ(relu.size(), 3u) << sqnr;
  EXPECT_TRUE(std::isfinite(relu[0]));
  EXPECT_TRUE(std::isfinite(relu[1]));
  EXPECT_GT(relu[2], 25);
  // The model input on its 8-bit all_values grid [0, 1]: MNIST pixels are k/255, on the grid.
  const std::vector<double> input = sqnr_row(sqnr, "input_layer_quant");
  ASSERT_EQ(input.size(), 3u);
  EXPECT_GT(input[0], 100);

  // 5. One row per integer op.
  quant::IntegerModel im = quant::convert_to_integer(*f.qat);
  const std::string table = section(html, "table");
  EXPECT_EQ(count(table, "<tr><td class=\"op\">"), static_cast<int>(im.ops.size()));
  EXPECT_EQ(count(table, ">qconv2d</td>"), 2);
  EXPECT_EQ(count(table, ">qfully_connected</td>"), 1);
  EXPECT_NE(table.find("4-bit"), std::string::npos);

  // 6. Sizes: packed 4-bit weights are smaller than int8, which is smaller than f32.
  const std::string size = section(html, "size");
  EXPECT_EQ(count(size, "class=\"hbar\""), 3);
  int64_t elements = 0;
  for (const quant::IntegerTensor& t : im.tensors)
    if (t.data.defined()) elements += t.data.numel();
  EXPECT_LT(im.constant_bytes(true), im.constant_bytes(false));
  EXPECT_NE(size.find(std::to_string(elements) + " constants"), std::string::npos);
  // Ratios to f32: int8 about 4x (int32 biases are 4 bytes), packed more.
  const double f32 = 4.0 * static_cast<double>(elements);
  char want[64];
  std::snprintf(want, sizeof want, "(%.1fx)", f32 / static_cast<double>(im.constant_bytes(false)));
  EXPECT_NE(size.find(want), std::string::npos) << want << "\n" << size;
  std::snprintf(want, sizeof want, "(%.1fx)", f32 / static_cast<double>(im.constant_bytes(true)));
  EXPECT_NE(size.find(want), std::string::npos) << want;
  // Accuracies of the three models on the sample.
  EXPECT_NE(html.find("float accuracy"), std::string::npos);
  EXPECT_NE(html.find("integer accuracy"), std::string::npos);
}

// Calibrated only (no fine-tuning): the QAT model's weights are the float model's, so at 8 bits
// the first block's output is close to the float one (4-bit weights: noisier).
TEST(Report, SqnrOfACalibratedModel) {
  const Fixture& f = fixture();
  const auto sqnr_of = [&](const std::string& preset) {
    nn::ModelPtr q = quant::quantize_model(*f.fm, quant::QuantizeConfig::preset(preset));
    q->calibrate(data::Dataset::from_tensors({f.x}, {f.labels}), 64);
    report::ReportInputs in = inputs();
    in.qat = q.get();
    return sqnr_row(section(report::render_html(in), "sqnr"), "re_lu_quant");
  };
  const std::vector<double> w8 = sqnr_of("w8a8"), w4 = sqnr_of("w4a8");
  ASSERT_EQ(w8.size(), 3u);
  ASSERT_EQ(w4.size(), 3u);
  EXPECT_GT(w8[0], 25);
  EXPECT_GT(w8[0], w4[0] + 6);  // 4 fewer weight bits: much more noise
  EXPECT_GT(w4[0], 8);
  EXPECT_NEAR(w8[1], w8[0], 1.0);  // the integer model adds little
}

TEST(Report, WithoutFloatModelOrHistory) {
  report::ReportInputs in = inputs(false);
  in.histories.clear();
  const std::string html = report::render_html(in);
  const std::string curves = section(html, "curves");
  EXPECT_NE(curves.find("No training history"), std::string::npos);
  EXPECT_EQ(declared_plots(curves), 0);
  const std::string sqnr = section(html, "sqnr");
  EXPECT_NE(sqnr.find("No float model was given"), std::string::npos);
  // The fake-quant vs integer column is still there: the bar chart shows it instead.
  EXPECT_NE(sqnr.find("SQNR, fake-quant vs integer"), std::string::npos);
  EXPECT_EQ(count(sqnr, "<svg class=\"plot sqnr\""), 1);
}

// What the CLI does: the QAT model from its file (nn::load_model), the same report.
TEST(Report, OfALoadedModel) {
  const std::string path = ::testing::TempDir() + "/report_test_qat.lbm";
  fixture().qat->save(path);
  nn::ModelPtr loaded = nn::load_model(path);
  report::ReportInputs in = inputs();
  const std::string want = report::render_html(in);
  in.qat = loaded.get();
  EXPECT_EQ(report::render_html(in), want);
  std::remove(path.c_str());
}

TEST(Report, RefusesBadInputs) {
  report::ReportInputs in = inputs();
  in.qat = nullptr;
  expect_throws_with<ValueError>([&] { report::render_html(in); }, "qat is null");
  in = inputs();
  in.x = Tensor();
  expect_throws_with<ValueError>([&] { report::render_html(in); }, "f32 batch");
  in = inputs();
  in.qat = fixture().fm.get();  // a float model
  expect_throws_with<ValueError>([&] { report::render_html(in); }, "has no quantizer");
}

TEST(Report, WritesAtomically) {
  const std::string dir = ::testing::TempDir() + "/report_test";
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/r.html";
  report::write_report(path, inputs());
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  EXPECT_EQ(ss.str().rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_NE(ss.str().find("</html>"), std::string::npos);
  for (const auto& e : std::filesystem::directory_iterator(dir))
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos);
  expect_throws_with<IoError>([&] { report::write_report(dir + "/missing/r.html", inputs()); },
                              "missing/r.html");
}

}  // namespace
}  // namespace lowbit
