#include "lowbit/nn/history.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <sstream>

#include "lowbit/error.h"

namespace lowbit::nn {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string number(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

void check_lengths(const History& h) {
  for (const auto& [name, values] : h.history)
    if (values.size() != h.epochs.size())
      LOWBIT_THROW(ValueError, "history: metric '", name, "' has ", values.size(),
                   " values but there are ", h.epochs.size(), " epochs");
}

}  // namespace

Json history_to_json(const History& h, const std::string& phase) {
  check_lengths(h);
  Json metrics = Json::object();
  for (const auto& [name, values] : h.history) {
    Json list = Json::array();
    for (double v : values) list.push_back(std::isfinite(v) ? Json(v) : Json(nullptr));
    metrics[name] = list;
  }
  return {{"phase", phase},
          {"epochs", h.epochs},
          {"history", metrics},
          {"stop_reason", h.stop_reason},
          {"last_epoch_partial", h.last_epoch_partial}};
}

PhaseHistory history_from_json(const Json& j) {
  if (!j.is_object()) LOWBIT_THROW(ValueError, "history: expected a JSON object");
  if (!j.contains("history") || !j.at("history").is_object())
    LOWBIT_THROW(ValueError, "history: field 'history' is missing or not an object");
  PhaseHistory out;
  out.phase = j.value("phase", "");
  History& h = out.history;
  for (const auto& [name, list] : j.at("history").items()) {
    if (!list.is_array())
      LOWBIT_THROW(ValueError, "history: field 'history." + name + "' is not a list");
    std::vector<double>& values = h.history[name];
    for (const Json& v : list) {
      if (v.is_null())
        values.push_back(std::numeric_limits<double>::quiet_NaN());
      else if (v.is_number())
        values.push_back(v.get<double>());
      else
        LOWBIT_THROW(ValueError, "history: field 'history.", name, "' holds ", v.dump(),
                     ", not a number");
    }
  }
  if (j.contains("epochs")) {
    if (!j.at("epochs").is_array())
      LOWBIT_THROW(ValueError, "history: field 'epochs' is not a list of integers");
    for (const Json& e : j.at("epochs")) {
      if (!e.is_number_integer())
        LOWBIT_THROW(ValueError, "history: field 'epochs' holds ", e.dump(), ", not an integer");
      h.epochs.push_back(e.get<int>());
    }
  } else if (!h.history.empty()) {
    for (size_t i = 0; i < h.history.begin()->second.size(); ++i)
      h.epochs.push_back(static_cast<int>(i));
  }
  h.stop_reason = j.value("stop_reason", "");
  h.last_epoch_partial = j.value("last_epoch_partial", false);
  check_lengths(h);
  return out;
}

void save_history(const std::string& path, const History& h, const std::string& phase) {
  std::string text;
  if (ends_with(path, ".csv")) {
    check_lengths(h);
    std::ostringstream s;
    s << "epoch";
    for (const auto& [name, values] : h.history) s << ',' << name;
    s << '\n';
    for (size_t i = 0; i < h.epochs.size(); ++i) {
      s << h.epochs[i];
      for (const auto& [name, values] : h.history) s << ',' << number(values[i]);
      s << '\n';
    }
    text = s.str();
  } else {
    text = history_to_json(h, phase).dump(2) + "\n";
  }
  std::ofstream f(path, std::ios::binary);
  if (!f) LOWBIT_THROW(IoError, "save_history: cannot write '", path, "'");
  f << text;
  f.close();
  if (!f) LOWBIT_THROW(IoError, "save_history: cannot write '", path, "'");
}

PhaseHistory load_history(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) LOWBIT_THROW(IoError, "load_history: cannot open '", path, "'");
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string text = ss.str();
  if (!ends_with(path, ".csv")) {
    Json j;
    try {
      j = Json::parse(text);
    } catch (const Json::exception& e) {
      LOWBIT_THROW(IoError, "load_history: '", path, "' is not valid JSON: ", e.what());
    }
    try {
      return history_from_json(j);
    } catch (const ValueError& e) {
      LOWBIT_THROW(ValueError, "load_history: '", path, "': ", e.what());
    }
  }
  PhaseHistory out;
  History& h = out.history;
  std::istringstream lines(text);
  std::string line;
  std::vector<std::string> names;
  int line_no = 0;
  while (std::getline(lines, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    std::vector<std::string> fields;
    std::stringstream ls(line);
    for (std::string field; std::getline(ls, field, ',');) fields.push_back(field);
    if (names.empty()) {
      if (fields.empty() || fields[0] != "epoch")
        LOWBIT_THROW(IoError, "load_history: '", path, "': line 1 must start with 'epoch'");
      names.assign(fields.begin() + 1, fields.end());
      for (const std::string& n : names) h.history[n];
      continue;
    }
    if (fields.size() != names.size() + 1)
      LOWBIT_THROW(IoError, "load_history: '", path, "': line ", line_no, " has ", fields.size(),
                   " fields but the header has ", names.size() + 1);
    try {
      size_t used = 0;
      h.epochs.push_back(std::stoi(fields[0], &used));
      if (used != fields[0].size()) throw std::invalid_argument("epoch");
      for (size_t c = 0; c < names.size(); ++c) {
        h.history[names[c]].push_back(std::stod(fields[c + 1], &used));
        if (used != fields[c + 1].size()) throw std::invalid_argument(names[c]);
      }
    } catch (const std::logic_error&) {
      LOWBIT_THROW(IoError, "load_history: '", path, "': line ", line_no,
                   ": expected numbers but found '", line, "'");
    }
  }
  if (names.empty()) LOWBIT_THROW(IoError, "load_history: '", path, "' is empty");
  return out;
}

}  // namespace lowbit::nn
