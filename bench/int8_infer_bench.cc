// End-to-end inference of the int8 peers' models (bench/bench_models.h): lowbit's float model
// and the integer model quant::convert_to_integer makes of its QAT version, timed the way the
// int8 peers are (bench/peers_int8/torch_int8.py, ort_bench.mjs), so that the figures sit in
// one table with PyTorch's and ONNX Runtime's (bench/peers_int8/run_all.sh runs all three).
//
//   int8_infer_bench [--models cnn,mbv2] [--threads 1,2] [--reps 9] [--min-time 0.5]
//                    [--lat-iters 400] [--mbv2-iters 40] [--epochs 3] [--qat-epochs 1]
//                    [--scheme w8a8] [--data ../shared/data] [--variants float32,int8]
//                    [--out FILE.jsonl]
//
// cnn: trained --epochs epochs in float (seed 0, Adam 1e-3, batch 64, the 8k MNIST train split,
// as the peers' model), then --qat-epochs of quantization-aware training at --scheme, then
// converted; test accuracy of both in the JSON lines.
// mbv2: MobileNetV2-1.0 224x224, seeded random weights as the peers' (no download); its BN
// statistics re-estimated on 8 random N(0,1) batches of 4 (as the peers do, else the
// activations vanish through the 17 blocks), then quantize_model at --scheme calibrated on
// 4 batches of 4 random images (the peers' calibration), then converted.
// Timing (per thread count): warm-up first; the variants (float32, int8) are interleaved rep
// by rep; cnn batch 256 = images/s of back-to-back predict calls on the first 256 test images
// for >= --min-time s per rep; cnn batch 1 = median of --lat-iters single-image predict calls
// per rep, each timed; mbv2 batch 1 = median of --mbv2-iters calls per rep (ms); every figure is
// the median over --reps reps (min, max, all reps in the JSON line). One JSON line per (model,
// variant, batch, threads), with "bench":"lowbit_int8".
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>

#include "bench_models.h"
#include "lowbit/data/idx.h"
#include "lowbit/quant/convert.h"
#include "lowbit/quant/quantize_model.h"
#include "lowbit/rng.h"
#include "lowbit/threads.h"

using namespace lowbit;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::string cpu_field(const std::string& key) {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind(key, 0) == 0) {
      const size_t c = line.find(':');
      return c == std::string::npos ? "" : line.substr(line.find_first_not_of(" \t", c + 1));
    }
  return "";
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// {median, min, max, n, values} as the peers' common.summarize writes it.
std::string summary(const std::vector<double>& v) {
  const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
  std::ostringstream o;
  o.precision(6);
  o << "{\"median\": " << median(v) << ", \"min\": " << *lo << ", \"max\": " << *hi
    << ", \"n\": " << v.size() << ", \"values\": [";
  for (size_t i = 0; i < v.size(); ++i) o << (i ? ", " : "") << v[i];
  o << "]}";
  return o.str();
}

double accuracy(const Tensor& logits, const Tensor& labels) {
  const int64_t n = logits.dim(0), k = logits.dim(1);
  int64_t right = 0;
  for (int64_t r = 0; r < n; ++r) {
    const float* p = logits.data<float>() + r * k;
    right += std::max_element(p, p + k) - p == labels.data<int64_t>()[r];
  }
  return static_cast<double>(right) / static_cast<double>(n);
}

// One model to time: its float and integer forms and the inputs of each batch size.
struct Workload {
  std::string model;
  nn::ModelPtr fm;
  quant::IntegerModel im;
  std::map<std::string, double> acc;  // by kind, where known
  Tensor batch;                       // batch 256 input (undefined: no throughput figure)
  Tensor one;                         // batch 1 input
  int lat_iters = 0;
  bool ms = false;  // latency in ms (else µs)
};

Tensor random_images(int64_t n, uint64_t seed) {
  Rng rng(seed);
  Tensor x({n, 224, 224, 3}, DType::kF32);
  for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = rng.normal();
  return x;
}

}  // namespace

int main(int argc, char** argv) try {
  std::string data = "../shared/data", scheme = "w8a8", out_path;
  std::vector<int> threads{1, 2};
  std::vector<std::string> models{"cnn"};
  bool want_float = true, want_int8 = true;
  int reps = 9, lat_iters = 400, mbv2_iters = 40, epochs = 3, qat_epochs = 1;
  double min_time = 0.5;
  auto split = [](const std::string& s) {
    std::vector<std::string> v;
    std::stringstream ss(s);
    for (std::string t; std::getline(ss, t, ',');) v.push_back(t);
    return v;
  };
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw ValueError("missing value after " + k);
      return argv[++i];
    };
    if (k == "--data")
      data = next();
    else if (k == "--scheme")
      scheme = next();
    else if (k == "--out")
      out_path = next();
    else if (k == "--reps")
      reps = std::stoi(next());
    else if (k == "--lat-iters")
      lat_iters = std::stoi(next());
    else if (k == "--mbv2-iters")
      mbv2_iters = std::stoi(next());
    else if (k == "--epochs")
      epochs = std::stoi(next());
    else if (k == "--qat-epochs")
      qat_epochs = std::stoi(next());
    else if (k == "--min-time")
      min_time = std::stod(next());
    else if (k == "--models") {
      models = split(next());
      for (const auto& m : models)
        if (m != "cnn" && m != "mbv2")
          throw ValueError("--models: unknown model '" + m + "' (cnn, mbv2)");
    } else if (k == "--variants") {
      want_float = want_int8 = false;
      for (const auto& v : split(next())) {
        if (v == "float32")
          want_float = true;
        else if (v == "int8")
          want_int8 = true;
        else
          throw ValueError("--variants: unknown variant '" + v + "' (float32, int8)");
      }
    } else if (k == "--threads") {
      threads.clear();
      for (const auto& t : split(next())) threads.push_back(std::stoi(t));
    } else
      throw ValueError("unknown argument '" + k +
                       "' (see the comment at the top of bench/int8_infer_bench.cc)");
  }
  if (reps < 1 || lat_iters < 1 || mbv2_iters < 1 || epochs < 0 || qat_epochs < 1 || min_time <= 0)
    throw ValueError(
        "--reps, --lat-iters, --mbv2-iters and --qat-epochs must be >= 1, "
        "--epochs >= 0, --min-time > 0");

  set_num_threads(1);
  auto compile = [](nn::Model& m) {
    m.compile({.optimizer = nn::Adam({.learning_rate = 1e-3}),
               .loss = nn::SparseCategoricalCrossentropy({.from_logits = true})});
  };
  const quant::QuantizeConfig cfg = quant::QuantizeConfig::preset(scheme);
  const std::string int8_kind = "int8_" + scheme;
  std::vector<Workload> work;
  for (const std::string& m : models) {
    Workload w;
    w.model = m;
    if (m == "cnn") {
      const MnistSplit train = load_mnist(data, true), test = load_mnist(data, false);
      std::fprintf(stderr, "int8_infer_bench: training the bench CNN (%d float + %d %s epochs)\n",
                   epochs, qat_epochs, scheme.c_str());
      w.fm = bench::build_bench_model("cnn", 0);
      compile(*w.fm);
      if (epochs > 0)
        w.fm->fit(train.images, train.labels,
                  {.epochs = epochs, .batch_size = 64, .seed = 0, .verbose = 0});
      nn::ModelPtr qat = quant::quantize_model(*w.fm, cfg);
      compile(*qat);
      qat->fit(train.images, train.labels,
               {.epochs = qat_epochs, .batch_size = 64, .seed = 0, .verbose = 0});
      w.im = quant::convert_to_integer(*qat);
      w.acc["float32"] = accuracy(w.fm->predict(test.images, 256), test.labels);
      w.acc[int8_kind] = accuracy(w.im.predict(test.images, 256), test.labels);
      std::fprintf(stderr, "int8_infer_bench: cnn test accuracy float %.4f, int8 %.4f\n",
                   w.acc["float32"], w.acc[int8_kind]);
      w.batch = Tensor::wrap(test.images.raw(), {256, 28, 28, 1}, DType::kF32).clone();
      w.one = Tensor::wrap(test.images.raw(), {1, 28, 28, 1}, DType::kF32).clone();
      w.lat_iters = lat_iters;
    } else {
      std::fprintf(stderr, "int8_infer_bench: MobileNetV2 (BN statistics, %s calibration)\n",
                   scheme.c_str());
      w.fm = bench::build_mobilenet_v2(0);
      for (int b = 0; b < 8; ++b) (*w.fm)(random_images(4, 100 + b), {.training = true});
      if (want_int8) {
        nn::ModelPtr qat = quant::quantize_model(*w.fm, cfg);
        qat->calibrate(data::Dataset::from_tensors({random_images(16, 200)}), 4);
        w.im = quant::convert_to_integer(*qat);
      }
      w.one = random_images(1, 300);
      w.lat_iters = mbv2_iters;
      w.ms = true;
    }
    work.push_back(std::move(w));
  }

  std::ofstream out;
  if (!out_path.empty()) {
    out.open(out_path, std::ios::app);
    if (!out) throw IoError("int8_infer_bench: cannot open --out file '" + out_path + "'");
  }
  const std::string base = "\"cpu_family\": \"" + cpu_field("cpu family") +
                           "\", \"cpu_model\": \"" + cpu_field("model name") + "\"";
  auto emit = [&](const std::string& line) {
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
    if (out) out << line << "\n" << std::flush;
  };

  for (int t : threads) {
    set_num_threads(t);
    for (Workload& w : work) {
      std::map<std::string, std::function<void(const Tensor&)>> run;
      if (want_float) run["float32"] = [&](const Tensor& x) { w.fm->predict(x, 256); };
      if (want_int8) run[int8_kind] = [&](const Tensor& x) { w.im.predict(x, 256); };
      for (auto& [k, f] : run) {  // warm-up: plans, packed weights, caches
        if (w.batch.defined())
          for (int i = 0; i < 5; ++i) f(w.batch);
        for (int i = 0; i < (w.ms ? 5 : 50); ++i) f(w.one);
      }
      std::map<std::string, std::vector<double>> thr, lat;
      for (int r = 0; r < reps; ++r)
        for (auto& [k, f] : run) {
          if (w.batch.defined()) {
            const auto t0 = Clock::now();
            int64_t calls = 0;
            double s = 0;
            do {
              f(w.batch);
              ++calls;
            } while ((s = seconds_since(t0)) < min_time);
            thr[k].push_back(static_cast<double>(w.batch.dim(0) * calls) / s);
          }
          std::vector<double> d;
          for (int i = 0; i < w.lat_iters; ++i) {
            const auto t1 = Clock::now();
            f(w.one);
            d.push_back((w.ms ? 1e3 : 1e6) * seconds_since(t1));
          }
          lat[k].push_back(median(d));
        }
      for (auto& [k, f] : run) {
        const bool ratio = k != "float32" && want_float;
        std::vector<double> speed_thr, speed_lat;
        for (int r = 0; r < reps && ratio; ++r) {
          if (w.batch.defined()) speed_thr.push_back(thr[k][r] / thr["float32"][r]);
          speed_lat.push_back(lat["float32"][r] / lat[k][r]);
        }
        const std::string model_name = w.model == "cnn" ? "cnn" : "mobilenet_v2_1.0_224";
        const std::string head =
            "{\"bench\": \"lowbit_int8\", \"peer\": \"lowbit\", \"model\": \"" + model_name +
            "\", \"kind\": \"" + k + "\", \"threads\": " + std::to_string(t) + ", ";
        const std::string vs_float = ", \"speedup_vs_float32\": ";
        std::string accs;
        if (w.acc.count(k)) {
          char b[64];
          std::snprintf(b, sizeof b, ", \"test_acc\": %.4f", w.acc.at(k));
          accs = b;
        }
        if (w.batch.defined())
          emit(head + "\"batch\": 256, \"images_per_s\": " + summary(thr[k]) + accs +
               (ratio ? vs_float + summary(speed_thr) : "") + ", " + base + "}");
        emit(head + "\"batch\": 1, \"" + (w.ms ? "latency_ms" : "latency_us") +
             "\": " + summary(lat[k]) + ", \"lat_iters_per_rep\": " + std::to_string(w.lat_iters) +
             (ratio ? vs_float + summary(speed_lat) : "") + ", " + base + "}");
      }
    }
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "int8_infer_bench: %s\n", e.what());
  return 1;
}
