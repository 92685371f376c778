#include "testing/tflite_run.h"

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "lowbit/data/npy.h"

namespace lowbit::testing {

namespace {
std::string shell_word(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}
}  // namespace

std::vector<Tensor> run_tflite(const std::string& model, const std::vector<Tensor>& inputs,
                               const std::string& work_dir) {
  std::filesystem::create_directories(work_dir);
  std::string cmd = "node " +
                    shell_word(std::string(LOWBIT_SOURCE_DIR) + "/tools/interop/tflite_run.mjs") +
                    " " + shell_word(model) + " " + shell_word(work_dir + "/tflite_out");
  for (size_t i = 0; i < inputs.size(); ++i) {
    const std::string f = work_dir + "/tflite_in" + std::to_string(i) + ".npy";
    data::write_npy(f, inputs[i]);
    cmd += " " + shell_word(f);
  }
  cmd += " 2>&1";
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) throw std::runtime_error("run_tflite: cannot run: " + cmd);
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  if (pclose(p) != 0) throw std::runtime_error("run_tflite: " + cmd + " failed:\n" + out);
  const size_t start = out.rfind("\n{\"outputs\"");
  const std::string line = start == std::string::npos ? out : out.substr(start + 1);
  if (line.rfind("{\"outputs\"", 0) != 0)
    throw std::runtime_error("run_tflite: no JSON in: " + out);
  nlohmann::json j = nlohmann::json::parse(line);
  std::vector<Tensor> result;
  for (const auto& o : j.at("outputs"))
    result.push_back(data::read_npy(o.at("file").get<std::string>()));
  return result;
}

}  // namespace lowbit::testing
