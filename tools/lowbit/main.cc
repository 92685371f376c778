// lowbit: the command line over the library (issue 16; docs/cli.md). Argument handling only:
// every step is a library call (data::load_data, nn::read_train_config, Model::fit, nn::
// save_history, quant::quantize_model, quant::convert_to_integer, IntegerModel, ...).
//
//   lowbit train tiny.json -o model.lbm --data ../shared/data
//   lowbit quantize model.lbm --scheme w4a8 --data ../shared/data -o qat.lbm
//   lowbit convert qat.lbm -o model.lbi
//   lowbit eval model.lbi --data ../shared/data --against qat.lbm
//   lowbit inspect model.lbi
//   lowbit bench model.lbi --batch 1,256 --threads 1,2
//   lowbit graph model.lbm -o graph.svg
//   lowbit report qat.lbm --against model.lbm --data ../shared/data -o report.html
//
// Exit codes: 0 ok, 1 runtime error ("lowbit <command>: <message>" on stderr), 2 usage error.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "lowbit/data/dataset.h"
#include "lowbit/data/load.h"
#include "lowbit/error.h"
#include "lowbit/nn/history.h"
#include "lowbit/nn/model.h"
#include "lowbit/nn/predictions.h"
#include "lowbit/nn/train_config.h"
#include "lowbit/quant/convert.h"
#include "lowbit/quant/quantize_model.h"
#include "lowbit/report/report.h"
#include "lowbit/rng.h"
#include "lowbit/threads.h"

namespace {

using namespace lowbit;
using nn::Json;

struct Common {
  bool quiet = false, json = false;
  // Where progress goes: stderr under --json (stdout holds only the JSON object).
  std::ostream& progress() const { return json ? std::cerr : std::cout; }
};

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
bool is_integer_model(const std::string& path) { return ends_with(path, ".lbi"); }

void add_common(CLI::App* c, Common& common, bool json = true) {
  c->add_flag("-q,--quiet", common.quiet, "no progress output");
  if (json) c->add_flag("--json", common.json, "print one JSON object with the results on stdout");
}

void add_data(CLI::App* c, data::DataSpec& s, bool required) {
  auto* d = c->add_option("--data", s.data,
                          "IDX images file, a directory with the MNIST split files, .npy, .npz "
                          "or .csv");
  if (required) d->required();
  c->add_option("--labels", s.labels, "IDX or .npy labels (with an IDX or .npy --data)");
  c->add_option("--split", s.split, "the MNIST split of a --data directory")
      ->check(CLI::IsMember({"train", "test"}))
      ->capture_default_str();
  c->add_option("--x-key", s.x_key, ".npz array of the inputs")->capture_default_str();
  c->add_option("--y-key", s.y_key, ".npz array of the labels")->capture_default_str();
  c->add_option("--label-column", s.label_column, "CSV column of the labels (name or index)")
      ->capture_default_str();
  c->add_option("--limit", s.limit, "use only the first N samples")->check(CLI::PositiveNumber);
}

data::LoadedData load(const data::DataSpec& s, const Common& common) {
  data::LoadedData d = data::load_data(s);
  if (!common.quiet) common.progress() << "data: " << d.description << "\n";
  return d;
}

void print_json(const Json& j) { std::cout << j.dump(2) << "\n"; }

// Inference outputs in chunks of `batch`, with a progress line for many batches.
template <class Predict>
Tensor predict_with_progress(Predict&& predict, const Tensor& x, int64_t batch,
                             const Common& common, const std::string& what) {
  const int64_t n = x.dim(0);
  const int64_t chunk = batch * 16;
  if (n <= chunk || common.quiet) return predict(x);
  std::vector<int64_t> d = x.shape().dims();
  Tensor out;
  const size_t row = x.nbytes() / static_cast<size_t>(n);
  for (int64_t start = 0; start < n; start += chunk) {
    const int64_t m = std::min(chunk, n - start);
    d[0] = m;
    Tensor part = Tensor::wrap(static_cast<char*>(x.raw()) + row * static_cast<size_t>(start),
                               Shape(d), x.dtype());
    Tensor y = predict(part);
    if (!out.defined()) {
      std::vector<int64_t> od = y.shape().dims();
      od[0] = n;
      out = Tensor(Shape(od), y.dtype());
    }
    std::memcpy(static_cast<char*>(out.raw()) +
                    y.nbytes() / static_cast<size_t>(m) * static_cast<size_t>(start),
                y.raw(), y.nbytes());
    common.progress() << "\r" << what << ": " << start + m << "/" << n << " samples" << std::flush;
  }
  common.progress() << "\n";
  return out;
}

// ---- train ----
struct TrainArgs {
  std::string config, output, history;
  data::DataSpec data;
  double validation_split = -1, lr = -1;
  int epochs = -1;
  int64_t batch = -1;
  uint64_t seed = 0;
  std::string optimizer, loss;
  std::vector<std::string> metrics;
};

int run_train(const TrainArgs& a, const Common& common) {
  nn::TrainConfig t = nn::read_train_config(a.config);
  if (!a.optimizer.empty()) t.compile.optimizer = nn::optimizer_by_name(a.optimizer);
  if (!t.compile.optimizer) t.compile.optimizer = nn::optimizer_by_name("adam");
  if (a.lr > 0) t.compile.optimizer->set_learning_rate(a.lr);
  if (!a.loss.empty()) t.compile.loss = nn::loss_by_name(a.loss);
  if (!t.compile.loss)
    throw ValueError("no loss: give --loss or \"compile\": {\"loss\": ...} in '" + a.config + "'");
  if (!a.metrics.empty()) t.compile.metrics = a.metrics;
  if (t.compile.metrics.empty()) t.compile.metrics = {"accuracy"};
  if (a.epochs > 0) t.fit.epochs = a.epochs;
  if (a.batch > 0) t.fit.batch_size = a.batch;
  if (a.validation_split >= 0) t.fit.validation_split = a.validation_split;
  t.fit.seed = a.seed;
  t.fit.verbose = common.quiet ? 0 : 1;
  t.fit.out = &common.progress();
  const data::LoadedData d = load(a.data, common);
  t.model->compile(t.compile);
  const nn::History h = t.model->fit(d.x, d.y, t.fit);
  t.model->save(a.output);
  const std::string history = a.output + ".history.json";
  nn::save_history(history, h, "float");
  if (!a.history.empty()) nn::save_history(a.history, h, "float");
  Json j = nn::history_to_json(h, "float");
  j["model"] = a.output;
  j["history_file"] = history;
  j["params"] = t.model->count_params_total(true) + t.model->count_params_total(false);
  if (common.json) {
    print_json(j);
  } else if (!common.quiet) {
    std::cout << "wrote " << a.output << " (" << std::filesystem::file_size(a.output)
              << " bytes) and " << history << "\n";
    if (!h.stop_reason.empty()) std::cout << "stopped: " << h.stop_reason << "\n";
  }
  return 0;
}

// ---- quantize ----
struct QuantizeArgs {
  std::string model, scheme, config, output;
  data::DataSpec data;
  int epochs = 1;
  int64_t batch = 32;
  double lr = -1, validation_split = 0;
  bool calibrate_only = false;
};

int run_quantize(const QuantizeArgs& a, const Common& common) {
  nn::ModelPtr m = nn::load_model(a.model);
  quant::QuantizeConfig cfg = quant::QuantizeConfig::preset(a.scheme);
  if (!a.config.empty()) {
    std::ifstream f(a.config, std::ios::binary);
    if (!f) throw IoError("cannot open the quantize config '" + a.config + "'");
    Json j;
    try {
      j = Json::parse(f);
    } catch (const Json::exception& e) {
      throw IoError("'" + a.config + "' is not valid JSON: " + e.what());
    }
    try {
      cfg = quant::quantize_config_from_json(j, cfg);
    } catch (const ValueError& e) {
      throw ValueError("'" + a.config + "': " + e.what());
    }
  }
  nn::ModelPtr qat = quant::quantize_model(*m, cfg);
  if (!m->compiled())
    throw ValueError("'" + a.model +
                     "' was saved without a loss (not compiled); train it with "
                     "lowbit train");
  // A fresh optimizer of the float model's kind and settings (not its state).
  nn::OptimizerPtr opt = nn::optimizer_from_config(nn::optimizer_to_config(*m->optimizer()));
  if (a.lr > 0) opt->set_learning_rate(a.lr);
  qat->compile({.optimizer = opt, .loss = m->loss(), .metrics = {"accuracy"}});
  const data::LoadedData d = load(a.data, common);
  Json j;
  j["model"] = a.output;
  j["scheme"] = a.scheme;
  if (a.calibrate_only) {
    const int64_t batches = qat->calibrate(data::Dataset::from_tensors({d.x}), a.batch,
                                           common.quiet ? 0 : 1, &common.progress());
    j["calibrated_batches"] = batches;
    qat->save(a.output);
    if (!common.json && !common.quiet)
      std::cout << "calibrated on " << batches << " batches; wrote " << a.output << "\n";
  } else {
    nn::FitOptions fo;
    fo.epochs = a.epochs;
    fo.batch_size = a.batch;
    fo.validation_split = a.validation_split;
    fo.verbose = common.quiet ? 0 : 1;
    fo.out = &common.progress();
    const nn::History h = qat->fit(d.x, d.y, fo);
    qat->save(a.output);
    const std::string history = a.output + ".history.json";
    nn::save_history(history, h, "qat");
    Json hj = nn::history_to_json(h, "qat");
    j["history"] = hj["history"];
    j["stop_reason"] = h.stop_reason;
    j["history_file"] = history;
    if (!common.json && !common.quiet)
      std::cout << "wrote " << a.output << " and " << history << "\n";
  }
  if (common.json) print_json(j);
  return 0;
}

// ---- convert ----
struct ConvertArgs {
  std::string model, output;
  bool uint8 = false, single_rounding = false;
};

int run_convert(const ConvertArgs& a, const Common& common) {
  nn::ModelPtr m = nn::load_model(a.model);
  quant::ConvertOptions o;
  if (a.uint8) o.activations = quant::ActivationScheme::kUint8;
  if (a.single_rounding) o.rounding = quant::Rounding::kSingle;
  quant::IntegerModel im = quant::convert_to_integer(*m, o);
  im.save(a.output);
  // The float model's trainable weights in f32 (the QAT model's quantizer state not counted).
  const int64_t float_bytes = 4 * m->count_params_total(true);
  Json j = {{"model", a.output},
            {"ops", im.ops.size()},
            {"float_weight_bytes", float_bytes},
            {"int8_unpacked_bytes", im.constant_bytes(false)},
            {"packed_bytes", im.constant_bytes(true)},
            {"file_bytes", std::filesystem::file_size(a.output)}};
  if (common.json) {
    print_json(j);
  } else if (!common.quiet) {
    std::cout << "wrote " << a.output << ": " << im.ops.size() << " ops; weights and biases "
              << im.constant_bytes(true) << " bytes packed (" << im.constant_bytes(false)
              << " with one byte per int8 code; float model " << float_bytes << "); file "
              << std::filesystem::file_size(a.output) << " bytes\n";
  }
  return 0;
}

// ---- eval ----
struct EvalArgs {
  std::string model, against;
  data::DataSpec data;
  int64_t batch = 256;
};

// A .lbm (float or QAT) or .lbi (integer) model, loaded by the file's suffix.
struct AnyModel {
  std::string path;
  nn::ModelPtr m;
  std::unique_ptr<quant::IntegerModel> im;
  explicit AnyModel(const std::string& p) : path(p) {
    if (is_integer_model(p))
      im = std::make_unique<quant::IntegerModel>(quant::IntegerModel::load(p));
    else
      m = nn::load_model(p);
  }
  Tensor predict(const Tensor& x, int64_t batch) {
    return im ? im->predict(x, batch) : m->predict(x, batch);
  }
};

int run_eval(EvalArgs a, const Common& common) {
  AnyModel model(a.model);
  std::unique_ptr<AnyModel> against;
  if (!a.against.empty()) against = std::make_unique<AnyModel>(a.against);
  const data::LoadedData d = load(a.data, common);
  auto outputs = [&](AnyModel& am) {
    return predict_with_progress([&](const Tensor& x) { return am.predict(x, a.batch); }, d.x,
                                 a.batch, common, am.path);
  };
  const Tensor y = outputs(model);
  Json j = {{"model", a.model}, {"samples", d.x.dim(0)}, {"accuracy", nn::top1_accuracy(y, d.y)}};
  if (model.m && model.m->compiled())
    j["loss"] = model.m->evaluate(d.x, d.y, {.batch_size = a.batch}).at("loss");
  if (against) {
    const Tensor other = outputs(*against);
    j["against"] = a.against;
    j["against_accuracy"] = nn::top1_accuracy(other, d.y);
    j["agreement"] = nn::top1_agreement(y, other);
  }
  if (common.json) {
    print_json(j);
    return 0;
  }
  std::printf("%s: accuracy %.2f%% on %lld samples", a.model.c_str(),
              100 * j["accuracy"].get<double>(), static_cast<long long>(d.x.dim(0)));
  if (j.contains("loss")) std::printf(", loss %.4f", j["loss"].get<double>());
  std::printf("\n");
  if (against)
    std::printf("%s: accuracy %.2f%%; top-1 agreement %.2f%%\n", a.against.c_str(),
                100 * j["against_accuracy"].get<double>(), 100 * j["agreement"].get<double>());
  return 0;
}

// ---- inspect ----
int run_inspect(const std::string& path, const Common& common) {
  if (is_integer_model(path)) {
    quant::IntegerModel im = quant::IntegerModel::load(path);
    if (common.json) {
      std::cout << im.inspect_json() << "\n";
    } else {
      std::cout << im.name << ": " << im.ops.size() << " ops, " << im.constant_bytes(true)
                << " bytes of weights and biases with 4- and 2-bit weights packed, "
                << im.constant_bytes() << " unpacked; file " << std::filesystem::file_size(path)
                << " bytes\n"
                << im.inspect_table();
    }
    return 0;
  }
  nn::ModelPtr m = nn::load_model(path);
  if (!common.json) {
    std::cout << m->summary();
    return 0;
  }
  Json layers = Json::array();
  for (const nn::LayerPtr& l : m->layers())
    layers.push_back(
        {{"name", l->name()}, {"class_name", l->class_name()}, {"quantizers", l->summary_note()}});
  print_json({{"model", path},
              {"name", m->name()},
              {"params", m->count_params_total(true) + m->count_params_total(false)},
              {"compiled", m->compiled()},
              {"layers", layers}});
  return 0;
}

// ---- bench ----
struct BenchArgs {
  std::string model;
  data::DataSpec data;
  std::vector<int64_t> batches{1, 256};
  std::vector<int> threads{1};
  int reps = 20;
  uint64_t seed = 0;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int run_bench(const BenchArgs& a, const Common& common) {
  AnyModel model(a.model);
  const Shape in = model.im ? model.im->tensors[static_cast<size_t>(model.im->input)].shape
                            : model.m->inputs().at(0).shape();
  const int64_t max_batch = *std::max_element(a.batches.begin(), a.batches.end());
  Tensor pool;  // max_batch samples: --data's first rows (repeated) or uniform [0, 1)
  std::vector<int64_t> d = in.dims();
  d[0] = max_batch;
  pool = Tensor(Shape(d), DType::kF32);
  if (!a.data.data.empty()) {
    const data::LoadedData ld = load(a.data, common);
    if (ld.x.dtype() != DType::kF32 || ld.x.numel() / ld.x.dim(0) != pool.numel() / max_batch)
      throw ShapeError("--data samples are " + std::string(dtype_name(ld.x.dtype())) + " " +
                       ld.x.shape().str() + " but the model takes f32 " + in.str());
    const int64_t row = pool.numel() / max_batch;
    for (int64_t i = 0; i < max_batch; ++i)
      std::memcpy(pool.data<float>() + i * row, ld.x.data<float>() + (i % ld.x.dim(0)) * row,
                  static_cast<size_t>(row) * sizeof(float));
  } else {
    Rng rng(a.seed);
    for (float& v : pool.span<float>()) v = rng.uniform();
  }
  const int saved_threads = num_threads();
  // A progress line on a terminal only (it rewrites itself with \r).
  const bool show_progress = !common.quiet && !common.json && isatty(2);
  Json rows = Json::array();
  for (int t : a.threads) {
    set_num_threads(t);
    for (int64_t b : a.batches) {
      d[0] = b;
      const Tensor x = Tensor::wrap(pool.raw(), Shape(d), DType::kF32);
      auto once = [&] {
        const auto t0 = std::chrono::steady_clock::now();
        model.predict(x, b);
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      };
      once();  // warm-up: plans and buffers
      std::vector<double> s;
      for (int r = 0; r < a.reps; ++r) {
        s.push_back(once());
        if (show_progress)
          std::cerr << "\rthreads " << t << ", batch " << b << ": " << r + 1 << "/" << a.reps
                    << std::flush;
      }
      if (show_progress) std::cerr << "\r\033[K" << std::flush;
      const double med = median(s);
      rows.push_back({{"threads", t},
                      {"batch", b},
                      {"median_ms", 1e3 * med},
                      {"images_per_s", static_cast<double>(b) / med}});
      if (!common.json)
        std::printf("threads %d  batch %5lld  median %9.3f ms%s  %10.0f images/s\n", t,
                    static_cast<long long>(b), 1e3 * med, b == 1 ? " latency" : "        ",
                    static_cast<double>(b) / med);
    }
  }
  set_num_threads(saved_threads);
  if (common.json)
    print_json({{"model", a.model},
                {"input", in.str()},
                {"reps", a.reps},
                {"input_data", a.data.data.empty() ? "random" : a.data.data},
                {"results", rows}});
  return 0;
}

// ---- graph ----
int run_graph(const std::string& model, const std::string& output, bool training,
              const Common& common) {
  if (is_integer_model(model))
    throw UnsupportedError("'" + model +
                           "' is an integer model; graph draws .lbm models (float or QAT)");
  nn::ModelPtr m = nn::load_model(model);
  const std::string dot = m->to_dot(training);
  std::string format;
  if (ends_with(output, ".dot") || ends_with(output, ".gv"))
    format = "dot";
  else if (ends_with(output, ".svg"))
    format = "svg";
  else if (ends_with(output, ".png"))
    format = "png";
  else
    throw ValueError("-o '" + output + "' must end in .dot, .svg or .png");
  const std::string dot_path = format == "dot" ? output : output + ".dot.tmp";
  {
    std::ofstream f(dot_path, std::ios::binary);
    f << dot;
    if (!f) throw IoError("cannot write '" + dot_path + "'");
  }
  if (format != "dot") {
    if (std::system("command -v dot >/dev/null 2>&1") != 0) {
      std::filesystem::remove(dot_path);
      throw IoError("writing " + format +
                    " needs Graphviz's 'dot' program, which is not installed (Debian: apt-get "
                    "install graphviz); or write -o graph.dot");
    }
    const std::string cmd = "dot -T" + format + " '" + dot_path + "' -o '" + output + "'";
    const int rc = std::system(cmd.c_str());
    std::filesystem::remove(dot_path);
    if (rc != 0) throw IoError("'" + cmd + "' failed");
  }
  if (common.json)
    print_json({{"model", model},
                {"output", output},
                {"format", format},
                {"bytes", std::filesystem::file_size(output)}});
  else if (!common.quiet)
    std::cout << "wrote " << output << " (" << std::filesystem::file_size(output) << " bytes)\n";
  return 0;
}

// ---- report ----
struct ReportArgs {
  std::string model, against, output, title;
  std::vector<std::string> histories;
  data::DataSpec data;
};

// The History files next to a model that `lowbit train` / `lowbit quantize` wrote, if present.
void add_history_beside(const std::string& model, const std::string& fallback_phase,
                        std::vector<std::pair<std::string, nn::History>>& out) {
  const std::string h = model + ".history.json";
  if (!std::filesystem::exists(h)) return;
  nn::PhaseHistory p = nn::load_history(h);
  out.emplace_back(p.phase.empty() ? fallback_phase : p.phase, std::move(p.history));
}

int run_report(ReportArgs a, const Common& common) {
  if (is_integer_model(a.model))
    throw UnsupportedError("'" + a.model +
                           "' is an integer model; report reads the QAT model (.lbm from lowbit "
                           "quantize) and converts it itself");
  nn::ModelPtr qat = nn::load_model(a.model);
  nn::ModelPtr flt = a.against.empty() ? nullptr : nn::load_model(a.against);
  if (a.data.limit <= 0) a.data.limit = 256;
  const data::LoadedData d = load(a.data, common);
  report::ReportInputs in;
  in.qat = qat.get();
  in.float_model = flt.get();
  in.x = d.x;
  in.labels = d.y;
  if (!a.title.empty()) in.title = a.title;
  if (a.histories.empty()) {
    if (!a.against.empty()) add_history_beside(a.against, "float", in.histories);
    add_history_beside(a.model, "qat", in.histories);
  } else {
    for (const std::string& h : a.histories) {
      nn::PhaseHistory p = nn::load_history(h);
      in.histories.emplace_back(p.phase.empty() ? h : p.phase, std::move(p.history));
    }
  }
  if (!common.quiet && !common.json)
    common.progress() << "rendering the report of " << a.model << " on " << d.x.dim(0)
                      << " samples...\n";
  report::write_report(a.output, in);
  const auto bytes = std::filesystem::file_size(a.output);
  if (common.json) {
    Json phases = Json::array();
    for (const auto& [name, h] : in.histories) phases.push_back(name);
    print_json({{"model", a.model},
                {"against", a.against},
                {"output", a.output},
                {"bytes", bytes},
                {"samples", d.x.dim(0)},
                {"histories", phases}});
  } else if (!common.quiet) {
    std::cout << "wrote " << a.output << " (" << bytes << " bytes): open it in a browser\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "lowbit: train, quantize, convert, evaluate, inspect, benchmark, draw and report on models.\n"
      "Run `lowbit COMMAND --help` for a command's options; docs/cli.md has examples.",
      "lowbit"};
  app.require_subcommand(1);
  app.footer(
      "Example:\n"
      "  lowbit train tools/lowbit/examples/tiny_cnn.json -o model.lbm --data ../shared/data\n"
      "  lowbit quantize model.lbm --scheme w8a8 --data ../shared/data -o qat.lbm\n"
      "  lowbit convert qat.lbm -o model.lbi\n"
      "Exit codes: 0 ok, 1 runtime error, 2 usage error.");
  Common common;

  TrainArgs ta;
  CLI::App* train = app.add_subcommand("train", "train a model from a Keras-style JSON config");
  train->add_option("CONFIG", ta.config, "model config JSON (optionally with compile and fit)")
      ->required();
  train->add_option("-o,--output", ta.output, "model file to write (.lbm)")->required();
  add_data(train, ta.data, true);
  train
      ->add_option("--validation-split", ta.validation_split,
                   "fraction of the data (the last part) held out for validation")
      ->check(CLI::Range(0.0, 0.99));
  train->add_option("--epochs", ta.epochs, "epochs (default: the config's, else 1)")
      ->check(CLI::PositiveNumber);
  train->add_option("--batch", ta.batch, "batch size (default: the config's, else 32)")
      ->check(CLI::PositiveNumber);
  train->add_option("--optimizer", ta.optimizer, "sgd, adam, adamw or rmsprop (default adam)");
  train->add_option("--lr", ta.lr, "learning rate")->check(CLI::PositiveNumber);
  train->add_option("--loss", ta.loss, "loss name, e.g. sparse_categorical_crossentropy");
  train->add_option("--metrics", ta.metrics, "metrics (default accuracy)")->delimiter(',');
  train->add_option("--seed", ta.seed, "shuffling seed")->capture_default_str();
  train->add_option("--history", ta.history, "also write the History here (.csv or .json)");
  add_common(train, common);
  train->footer(
      "Writes MODEL and MODEL.history.json. MNIST IDX images (u8) are scaled to [0, 1].\n"
      "Example:\n  lowbit train tools/lowbit/examples/tiny_cnn.json -o model.lbm "
      "--data ../shared/data --epochs 1");

  QuantizeArgs qa;
  CLI::App* quantize = app.add_subcommand("quantize", "quantization-aware fine-tuning (QAT)");
  quantize->add_option("MODEL", qa.model, "trained float model (.lbm)")->required();
  quantize->add_option("--scheme", qa.scheme, "preset: w8a8, w4a8, w2a8 or w4a4")->required();
  quantize->add_option("--config", qa.config,
                       "JSON with per-layer overrides, quant_delay, fold_batch_norm, "
                       "first_last_weight_bits");
  quantize->add_option("-o,--output", qa.output, "QAT model to write (.lbm)")->required();
  add_data(quantize, qa.data, true);
  quantize->add_option("--epochs", qa.epochs, "fine-tuning epochs")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  quantize->add_option("--batch", qa.batch, "batch size")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  quantize->add_option("--lr", qa.lr, "learning rate (default: the float model's)")
      ->check(CLI::PositiveNumber);
  quantize->add_option("--validation-split", qa.validation_split, "held-out fraction")
      ->check(CLI::Range(0.0, 0.99));
  quantize->add_flag("--calibrate-only", qa.calibrate_only,
                     "only learn the activation ranges (no weight updates)");
  add_common(quantize, common);
  quantize->footer(
      "Writes QAT and QAT.history.json (phase \"qat\"; not with --calibrate-only).\nExample:\n"
      "  lowbit quantize model.lbm --scheme w4a8 --data ../shared/data -o qat.lbm");

  ConvertArgs ca;
  CLI::App* convert = app.add_subcommand("convert", "convert a QAT model to an integer model");
  convert->add_option("QAT_MODEL", ca.model, "QAT model (.lbm from lowbit quantize)")->required();
  convert->add_option("-o,--output", ca.output, "integer model to write (.lbi)")->required();
  convert->add_flag("--uint8", ca.uint8, "the legacy uint8 activation scheme");
  convert->add_flag("--single-rounding", ca.single_rounding,
                    "single-rounding output stages (default: double rounding)");
  add_common(convert, common);
  convert->footer("Example:\n  lowbit convert qat.lbm -o model.lbi");

  EvalArgs ea;
  ea.data.split = "test";
  CLI::App* eval = app.add_subcommand("eval", "accuracy (and loss) of a model on data");
  eval->add_option("MODEL", ea.model, ".lbm (float or QAT) or .lbi (integer) model")->required();
  add_data(eval, ea.data, true);
  eval->add_option("--against", ea.against, "second model: top-1 agreement with MODEL");
  eval->add_option("--batch", ea.batch, "batch size")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  add_common(eval, common);
  eval->footer(
      "Example:\n  lowbit eval model.lbi --data ../shared/data --split test --against qat.lbm");

  std::string inspect_model;
  CLI::App* inspect = app.add_subcommand("inspect", "per-layer parameters of a model");
  inspect->add_option("MODEL", inspect_model, ".lbi: scales and multipliers; .lbm: summary")
      ->required();
  add_common(inspect, common);
  inspect->footer("Example:\n  lowbit inspect model.lbi --json");

  BenchArgs ba;
  CLI::App* bench = app.add_subcommand("bench", "latency and throughput (medians)");
  bench->add_option("MODEL", ba.model, ".lbm or .lbi model")->required();
  bench->add_option("--batch", ba.batches, "batch sizes")
      ->delimiter(',')
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  bench->add_option("--threads", ba.threads, "thread counts")
      ->delimiter(',')
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  bench->add_option("--reps", ba.reps, "timed runs per setting")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  add_data(bench, ba.data, false);
  add_common(bench, common);
  bench->footer(
      "Input: uniform [0, 1) of the model's input shape, or --data's samples.\n"
      "Example:\n  lowbit bench model.lbi --batch 1,256 --threads 1,2");

  std::string graph_model, graph_output;
  bool graph_training = false;
  CLI::App* graph = app.add_subcommand("graph", "the model's op graph (Graphviz)");
  graph->add_option("MODEL", graph_model, ".lbm model")->required();
  graph->add_option("-o,--output", graph_output, "graph.dot, graph.svg or graph.png")->required();
  graph->add_flag("--training", graph_training, "the training-mode graph (default inference)");
  add_common(graph, common);
  graph->footer(
      "svg and png need Graphviz's dot.\nExample:\n  lowbit graph model.lbm -o graph.svg");

  ReportArgs ra;
  ra.data.split = "test";
  CLI::App* rep = app.add_subcommand("report", "an HTML report of what quantization did");
  rep->add_option("MODEL", ra.model, "QAT model (.lbm from lowbit quantize)")->required();
  rep->add_option("--against", ra.against, "the float model it came from (SQNR vs float)");
  rep->add_option("-o,--output", ra.output, "HTML file to write")->required();
  add_data(rep, ra.data, true);
  rep->add_option("--history", ra.histories,
                  "History files to plot, in phase order (default: MODEL.history.json and "
                  "FLOAT_MODEL.history.json when present)");
  rep->add_option("--title", ra.title, "the report's title");
  add_common(rep, common);
  rep->footer(
      "Uses the first 256 samples of --data unless --limit says otherwise (docs/report.md).\n"
      "Example:\n  lowbit report qat.lbm --against model.lbm --data ../shared/data -o report.html");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  CLI::App* cmd = app.get_subcommands().at(0);
  try {
    if (cmd == train) return run_train(ta, common);
    if (cmd == quantize) return run_quantize(qa, common);
    if (cmd == convert) return run_convert(ca, common);
    if (cmd == eval) return run_eval(ea, common);
    if (cmd == inspect) return run_inspect(inspect_model, common);
    if (cmd == bench) return run_bench(ba, common);
    if (cmd == graph) return run_graph(graph_model, graph_output, graph_training, common);
    if (cmd == rep) return run_report(ra, common);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lowbit %s: %s\n", cmd->get_name().c_str(), e.what());
    return 1;
  }
  return 2;
}
