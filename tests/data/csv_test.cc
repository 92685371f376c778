#include "lowbit/data/csv.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>

#include "testing/op_testing.h"

namespace lowbit::data {
namespace {

namespace fs = std::filesystem;
using lowbit::testing::expect_throws_with;
using lowbit::testing::tensors_equal;

class CsvTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ =
        fs::temp_directory_path() / ("lowbit_csv_" + std::to_string(getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  // Writes `text` to a file and returns its path.
  std::string file(const std::string& text, const std::string& name = "t.csv") {
    const std::string p = (dir_ / name).string();
    std::ofstream out(p, std::ios::binary);
    out << text;
    EXPECT_TRUE(out.good());
    return p;
  }

  fs::path dir_;
};

CsvOptions labels(std::vector<std::string> cols, std::string dtype = "s64") {
  CsvOptions o;
  o.label_columns = std::move(cols);
  o.label_dtype = std::move(dtype);
  return o;
}

TEST_F(CsvTest, HeaderLabelColumnAndFeatures) {
  CsvTable t = read_csv(file("age,label,height\n31,1,1.72\n45,0,1.80\n"), labels({"label"}));
  EXPECT_EQ(t.feature_names, (std::vector<std::string>{"age", "height"}));
  EXPECT_EQ(t.label_names, (std::vector<std::string>{"label"}));
  EXPECT_TRUE(tensors_equal(t.x, Tensor::from_vector<float>({31, 1.72f, 45, 1.80f}, {2, 2})));
  EXPECT_TRUE(tensors_equal(t.y, Tensor::from_vector<int64_t>({1, 0}, {2})));
}

// Quotes (with the delimiter, "" and a newline inside), CRLF, blank lines, spaces, a BOM,
// '+' signs, exponents, integral floats as integer labels.
TEST_F(CsvTest, FormatAllowances) {
  const std::string text =
      "\xEF\xBB\xBF\"a,1\",\"say \"\"hi\"\"\",\"multi\nline\",y\r\n"
      "\r\n"
      "  1.5 , \"2\",+3,  7\r\n"
      "   \n"
      "-4e1,5,.25,3.0\r\n";
  CsvTable t = read_csv(file(text), labels({"y"}));
  EXPECT_EQ(t.feature_names, (std::vector<std::string>{"a,1", "say \"hi\"", "multi\nline"}));
  EXPECT_TRUE(tensors_equal(t.x, Tensor::from_vector<float>({1.5f, 2, 3, -40, 5, 0.25f}, {2, 3})));
  EXPECT_TRUE(tensors_equal(t.y, Tensor::from_vector<int64_t>({7, 3}, {2})));
}

TEST_F(CsvTest, NoHeaderSeveralF32LabelsByIndexOtherDelimiter) {
  CsvOptions o = labels({"3", "0"}, "f32");
  o.header = false;
  o.delimiter = ';';
  CsvTable t = read_csv(file("1;2;3;4\n5;6;7;8.5\n"), o);
  EXPECT_EQ(t.feature_names, (std::vector<std::string>{"column 1", "column 2"}));
  EXPECT_EQ(t.label_names, (std::vector<std::string>{"column 3", "column 0"}));
  EXPECT_TRUE(tensors_equal(t.x, Tensor::from_vector<float>({2, 3, 6, 7}, {2, 2})));
  // Label columns in the order asked for.
  EXPECT_TRUE(tensors_equal(t.y, Tensor::from_vector<float>({4, 1, 8.5f, 5}, {2, 2})));
}

TEST_F(CsvTest, TabDelimiterKeepsEmptyFieldsDistinct) {
  CsvOptions o;
  o.delimiter = '\t';
  CsvTable t = read_csv(file("a\tb\n1\t2\n"), o);
  EXPECT_TRUE(tensors_equal(t.x, Tensor::from_vector<float>({1, 2}, {1, 2})));
  EXPECT_FALSE(t.y.defined());
  expect_throws_with<IoError>([&] { read_csv(file("a\tb\n1\t\t2\n"), o); },
                              "line 2: expected 2 fields (as in the header) but found 3");
}

TEST_F(CsvTest, NanInfAndNoRows) {
  CsvTable t = read_csv(file("a,b\nnan,-inf\n"));
  EXPECT_TRUE(std::isnan(t.x.at<float>({0, 0})));
  EXPECT_EQ(t.x.at<float>({0, 1}), -std::numeric_limits<float>::infinity());
  CsvTable h = read_csv(file("a,b,c\n"), labels({"b"}));
  EXPECT_EQ(h.x.shape(), Shape({0, 2}));
  EXPECT_EQ(h.y.shape(), Shape({0}));
  EXPECT_EQ(h.y.dtype(), DType::kS64);
}

TEST_F(CsvTest, ErrorsNameFileLineAndColumn) {
  const std::string p = file("name,age\n1,2\n\n3,abc\n");
  expect_throws_with<IoError>(
      [&] { read_csv(p); },
      "read_csv: '" + p + "': line 4, column 'age': expected a number but found 'abc'");
  // Line numbers count the physical lines of a quoted multi-line field.
  expect_throws_with<IoError>([&] { read_csv(file("\"a\nb\",c\n1,2\n3,x\n")); },
                              "line 4, column 'c': expected a number but found 'x'");
  expect_throws_with<IoError>([&] { read_csv(file("a,b\n1,\n")); },
                              "line 2, column 'b': expected a number but found an empty field");
  expect_throws_with<IoError>([&] { read_csv(file("a,b\n1,2\n3\n")); },
                              "line 3: expected 2 fields (as in the header) but found 1");
  expect_throws_with<IoError>([&] { read_csv(file("a,b\n1,\"2\n")); },
                              "line 2: unterminated quoted field (field 2)");
  expect_throws_with<IoError>([&] { read_csv(file("a,b\n1,\"2\"x\n")); },
                              "line 2: expected ',' or the end of the line after a closing quote "
                              "but found 'x'");
  expect_throws_with<IoError>([&] { read_csv(file("a,y\n1,1.5\n"), labels({"y"})); },
                              "line 2, column 'y': expected an integer label (label_dtype \"s64\") "
                              "but found '1.5'");
  CsvOptions no_header;
  no_header.header = false;
  expect_throws_with<IoError>([&] { read_csv(file("1,2\n3,z\n"), no_header); },
                              "line 2, column 1: expected a number but found 'z'");
  expect_throws_with<IoError>([&] { read_csv(file("")); },
                              "expected a header line but the file is empty");
  expect_throws_with<IoError>([&] { read_csv((dir_ / "missing.csv").string()); }, "cannot open");
}

TEST_F(CsvTest, OptionErrors) {
  const std::string p = file("a,b\n1,2\n");
  expect_throws_with<ValueError>([&] { read_csv(p, labels({"c"})); },
                                 "argument 'label_columns': column 'c' not found; expected a "
                                 "header name or a 0-based index below 2; columns: 'a', 'b'");
  expect_throws_with<ValueError>(
      [&] {
        read_csv(p, labels({"a", "0"}));
      },
      "column '0' is listed twice");
  expect_throws_with<ValueError>([&] { read_csv(p, labels({"a"}, "f64")); },
                                 "argument 'label_dtype': expected \"s64\" or \"f32\" but found "
                                 "\"f64\"");
  CsvOptions o;
  o.delimiter = '"';
  expect_throws_with<ValueError>([&] { read_csv(p, o); }, "argument 'delimiter'");
  // An index is also accepted with a header.
  CsvTable t = read_csv(p, labels({"1"}));
  EXPECT_TRUE(tensors_equal(t.y, Tensor::from_vector<int64_t>({2}, {1})));
}

}  // namespace
}  // namespace lowbit::data
