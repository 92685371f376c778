#include "testing/ort.h"

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <stdexcept>

#include "lowbit/data/npy.h"

namespace lowbit::testing {

namespace {
std::string shell_quoted(const std::string& s) {
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
                    shell_quoted(std::string(LOWBIT_SOURCE_DIR) + "/tools/interop/ort_run.mjs") +
                    " " + shell_quoted(model) + " " + shell_quoted(work_dir + "/ort_out");
  for (size_t i = 0; i < inputs.size(); ++i) {
    std::string f = work_dir + "/ort_in" + std::to_string(i) + ".npy";
    data::write_npy(f, inputs[i]);
    cmd += " " + shell_quoted(f);
  }
  cmd += " --opt " + shell_quoted(optimization) + " 2>&1";
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) throw std::runtime_error("run_onnxruntime: cannot run: " + cmd);
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  int rc = pclose(p);
  if (rc != 0) throw std::runtime_error("run_onnxruntime: " + cmd + " failed:\n" + out);
  // The JSON line is the last line of the output.
  size_t start = out.rfind('{');
  while (start != std::string::npos && start > 0 && out[start - 1] != '\n')
    start = out.rfind('{', start - 1);
  if (start == std::string::npos) throw std::runtime_error("run_onnxruntime: no JSON in: " + out);
  nlohmann::json j = nlohmann::json::parse(out.substr(start));
  std::vector<Tensor> result;
  for (const auto& o : j.at("outputs"))
    result.push_back(data::read_npy(o.at("file").get<std::string>()));
  return result;
}

}  // namespace lowbit::testing
