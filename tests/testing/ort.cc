#include "testing/ort.h"

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <stdexcept>

#include "lowbit/data/npy.h"

namespace lowbit::testing {

namespace {
std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}
}  // namespace

std::string fresh_temp_dir(const std::string& stem) {
  std::random_device rd;
  std::filesystem::path p = std::filesystem::temp_directory_path() /
                            (stem + "-" + std::to_string(rd()) + std::to_string(rd()));
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
}

std::vector<Tensor> run_onnxruntime(const std::string& model, const std::vector<Tensor>& inputs,
                                    const std::string& work_dir, const std::string& optimization) {
  namespace fs = std::filesystem;
  fs::create_directories(work_dir);
  std::string cmd = "node " +
                    shell_quote(std::string(LOWBIT_SOURCE_DIR) + "/tools/interop/ort_run.mjs") +
                    " " + shell_quote(model) + " " + shell_quote(work_dir + "/ort_out");
  for (size_t i = 0; i < inputs.size(); ++i) {
    const std::string f = work_dir + "/ort_in" + std::to_string(i) + ".npy";
    data::write_npy(f, inputs[i]);
    cmd += " " + shell_quote(f);
  }
  cmd += " --opt " + shell_quote(optimization) + " 2>&1";
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) throw std::runtime_error("run_onnxruntime: cannot run: " + cmd);
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  int rc = pclose(p);
  if (rc != 0) throw std::runtime_error("run_onnxruntime: " + cmd + " failed:\n" + out);
  // ort_run prints one JSON line, last.
  const size_t end = out.find_last_not_of('\n');
  const size_t start = end == std::string::npos ? 0 : out.rfind('\n', end) + 1;
  const std::string last = end == std::string::npos ? "" : out.substr(start, end + 1 - start);
  if (last.empty() || last[0] != '{')
    throw std::runtime_error("run_onnxruntime: no JSON line at the end of: " + out);
  nlohmann::json j = nlohmann::json::parse(last);
  std::vector<Tensor> result;
  for (const auto& o : j.at("outputs"))
    result.push_back(data::read_npy(o.at("file").get<std::string>()));
  return result;
}

}  // namespace lowbit::testing
