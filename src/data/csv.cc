#include "lowbit/data/csv.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string_view>

namespace lowbit::data {
namespace {

std::string read_text(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) LOWBIT_THROW(IoError, "read_csv: '", path, "': cannot open: ", std::strerror(errno));
  std::string text;
  char buf[1 << 16];
  for (;;) {
    size_t n = std::fread(buf, 1, sizeof buf, f);
    text.append(buf, n);
    if (n < sizeof buf) break;
  }
  const int err = std::ferror(f) ? errno : 0;
  std::fclose(f);
  if (err) LOWBIT_THROW(IoError, "read_csv: '", path, "': read error: ", std::strerror(err));
  return text;
}

// Splits the text into records of fields, tracking physical line numbers.
class Reader {
 public:
  Reader(std::string_view text, char delim, const std::string& path)
      : s_(text), delim_(delim), path_(path) {
    if (s_.starts_with("\xEF\xBB\xBF")) pos_ = 3;
  }

  // The next non-blank record; false at the end. `line` is where the record starts.
  bool next(std::vector<std::string>& fields, int64_t& line) {
    while (blank_line()) {
      if (!skip_line()) return false;
    }
    line = line_;
    fields.clear();
    for (;;) {
      skip_space();
      std::string field;
      if (peek() == '"') {
        ++pos_;
        for (;;) {
          if (pos_ >= s_.size())
            LOWBIT_THROW(IoError, "read_csv: '", path_, "': line ", line,
                         ": unterminated quoted field (field ", fields.size() + 1, ")");
          const char c = s_[pos_++];
          if (c == '"') {
            if (peek() != '"') break;
            ++pos_;
          } else if (c == '\n') {
            ++line_;
          }
          field += c;
        }
        skip_space();
        if (!at_field_end())
          LOWBIT_THROW(IoError, "read_csv: '", path_, "': line ", line_, ": expected '", delim_,
                       "' or the end of the line after a closing quote but found '", peek(), "'");
      } else {
        const size_t start = pos_;
        while (!at_field_end()) ++pos_;
        field.assign(s_.substr(start, pos_ - start));
        while (!field.empty() && is_space(field.back())) field.pop_back();
      }
      fields.push_back(std::move(field));
      if (pos_ < s_.size() && s_[pos_] == delim_) {
        ++pos_;
        continue;
      }
      skip_line();
      return true;
    }
  }

 private:
  bool is_space(char c) const { return (c == ' ' || c == '\t') && c != delim_; }
  char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
  void skip_space() {
    while (pos_ < s_.size() && is_space(s_[pos_])) ++pos_;
  }
  bool at_line_end() const {
    return pos_ >= s_.size() || s_[pos_] == '\n' ||
           (s_[pos_] == '\r' && (pos_ + 1 == s_.size() || s_[pos_ + 1] == '\n'));
  }
  bool at_field_end() const { return at_line_end() || s_[pos_] == delim_; }
  // Moves past the end of the current line; false if there was nothing left.
  bool skip_line() {
    if (pos_ >= s_.size()) return false;
    while (pos_ < s_.size() && s_[pos_] != '\n') ++pos_;
    if (pos_ < s_.size()) ++pos_, ++line_;
    return true;
  }
  bool blank_line() const {
    size_t p = pos_;
    while (p < s_.size() && is_space(s_[p])) ++p;
    return p >= s_.size() || s_[p] == '\n' ||
           (s_[p] == '\r' && (p + 1 == s_.size() || s_[p + 1] == '\n'));
  }

  std::string_view s_;
  char delim_;
  const std::string& path_;
  size_t pos_ = 0;
  int64_t line_ = 1;
};

std::string quoted_list(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& n : names) out += (out.empty() ? "'" : ", '") + n + "'";
  return out;
}

std::string shown(const std::string& field) {
  return field.size() > 40 ? field.substr(0, 40) + "..." : field;
}

// The number in `f` (already trimmed); nullopt-like false if it is not one whole number.
bool parse_float(const std::string& f, float& out) {
  const char* b = f.data();
  const char* e = b + f.size();
  if (b != e && *b == '+') ++b;
  if (b == e) return false;
  auto [p, ec] = std::from_chars(b, e, out);
  return ec == std::errc() && p == e;
}

bool parse_int(const std::string& f, int64_t& out) {
  const char* b = f.data();
  const char* e = b + f.size();
  if (b != e && *b == '+') ++b;
  if (b == e) return false;
  auto [p, ec] = std::from_chars(b, e, out);
  if (ec == std::errc() && p == e) return true;
  // Integral values written as floats ("3.0", "1e2") are accepted.
  double d;
  auto [q, ec2] = std::from_chars(b, e, d);
  if (ec2 != std::errc() || q != e || !std::isfinite(d) || d != std::floor(d) ||
      std::fabs(d) >= 9.2e18)
    return false;
  out = static_cast<int64_t>(d);
  return true;
}

}  // namespace

CsvTable read_csv(const std::string& path, const CsvOptions& o) {
  if (o.delimiter == '"' || o.delimiter == '\n' || o.delimiter == '\r' || o.delimiter == '\0')
    LOWBIT_THROW(ValueError, "read_csv: '", path,
                 "': argument 'delimiter': expected a character other than '\"', '\\r', '\\n' and "
                 "'\\0' but found code ",
                 int{static_cast<unsigned char>(o.delimiter)});
  if (o.label_dtype != "s64" && o.label_dtype != "f32")
    LOWBIT_THROW(ValueError, "read_csv: '", path,
                 "': argument 'label_dtype': expected \"s64\" or \"f32\" but found \"",
                 o.label_dtype, "\"");
  const bool int_labels = o.label_dtype == "s64";
  const std::string text = read_text(path);
  Reader reader(text, o.delimiter, path);

  std::vector<std::string> fields;
  int64_t line = 0;
  bool have = reader.next(fields, line);
  if (!have && o.header)
    LOWBIT_THROW(IoError, "read_csv: '", path, "': expected a header line but the file is empty");
  // Column names: from the header, else "column <i>" (also the message form).
  std::vector<std::string> names, display;
  if (have) {
    for (size_t i = 0; i < fields.size(); ++i) {
      names.push_back(o.header ? fields[i] : "column " + std::to_string(i));
      display.push_back(o.header ? "column '" + fields[i] + "'" : names.back());
    }
    if (o.header) have = reader.next(fields, line);
  }
  const size_t ncols = names.size();

  // Resolve the label columns (by name, then by index).
  std::vector<size_t> label_idx;
  std::vector<bool> is_label(ncols, false);
  for (const std::string& spec : o.label_columns) {
    size_t idx = SIZE_MAX;
    if (o.header) {
      auto it = std::find(names.begin(), names.end(), spec);
      if (it != names.end()) idx = static_cast<size_t>(it - names.begin());
    }
    if (idx == SIZE_MAX && !spec.empty() &&
        std::all_of(spec.begin(), spec.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      size_t v = 0;
      auto [p, ec] = std::from_chars(spec.data(), spec.data() + spec.size(), v);
      if (ec == std::errc() && p == spec.data() + spec.size() && (v < ncols || ncols == 0)) idx = v;
    }
    if (idx == SIZE_MAX)
      LOWBIT_THROW(ValueError, "read_csv: '", path, "': argument 'label_columns': column '", spec,
                   "' not found; expected a header name or a 0-based index below ", ncols,
                   "; columns: ", ncols ? quoted_list(names) : std::string("none"));
    if (std::find(label_idx.begin(), label_idx.end(), idx) != label_idx.end())
      LOWBIT_THROW(ValueError, "read_csv: '", path, "': argument 'label_columns': column '", spec,
                   "' is listed twice");
    label_idx.push_back(idx);
    if (idx < ncols) is_label[idx] = true;
  }

  CsvTable t;
  std::vector<size_t> feature_idx;
  for (size_t i = 0; i < ncols; ++i)
    if (!is_label[i]) {
      feature_idx.push_back(i);
      t.feature_names.push_back(names[i]);
    }
  for (size_t i : label_idx) t.label_names.push_back(i < ncols ? names[i] : std::to_string(i));

  std::vector<float> xs, yf;
  std::vector<int64_t> yi;
  int64_t rows = 0;
  for (; have; have = reader.next(fields, line), ++rows) {
    if (fields.size() != ncols)
      LOWBIT_THROW(IoError, "read_csv: '", path, "': line ", line, ": expected ", ncols,
                   " fields (as in the ", o.header ? "header" : "first line", ") but found ",
                   fields.size());
    for (size_t i : feature_idx) {
      float v;
      if (fields[i].empty())
        LOWBIT_THROW(IoError, "read_csv: '", path, "': line ", line, ", ", display[i],
                     ": expected a number but found an empty field");
      if (!parse_float(fields[i], v))
        LOWBIT_THROW(IoError, "read_csv: '", path, "': line ", line, ", ", display[i],
                     ": expected a number but found '", shown(fields[i]), "'");
      xs.push_back(v);
    }
    for (size_t i : label_idx) {
      if (fields[i].empty())
        LOWBIT_THROW(IoError, "read_csv: '", path, "': line ", line, ", ", display[i],
                     ": expected ", int_labels ? "an integer label" : "a number",
                     " but found an empty field");
      if (int_labels) {
        int64_t v;
        if (!parse_int(fields[i], v))
          LOWBIT_THROW(IoError, "read_csv: '", path, "': line ", line, ", ", display[i],
                       ": expected an integer label (label_dtype \"s64\") but found '",
                       shown(fields[i]), "'");
        yi.push_back(v);
      } else {
        float v;
        if (!parse_float(fields[i], v))
          LOWBIT_THROW(IoError, "read_csv: '", path, "': line ", line, ", ", display[i],
                       ": expected a number but found '", shown(fields[i]), "'");
        yf.push_back(v);
      }
    }
  }

  const int64_t nf = static_cast<int64_t>(feature_idx.size());
  t.x = Tensor({rows, nf}, DType::kF32);
  if (!xs.empty()) std::memcpy(t.x.raw(), xs.data(), xs.size() * sizeof(float));
  if (!label_idx.empty()) {
    const int64_t nl = static_cast<int64_t>(label_idx.size());
    Shape ys = nl == 1 ? Shape{rows} : Shape{rows, nl};
    t.y = Tensor(ys, int_labels ? DType::kS64 : DType::kF32);
    if (int_labels && !yi.empty()) std::memcpy(t.y.raw(), yi.data(), yi.size() * sizeof(int64_t));
    if (!int_labels && !yf.empty()) std::memcpy(t.y.raw(), yf.data(), yf.size() * sizeof(float));
  }
  return t;
}

}  // namespace lowbit::data
