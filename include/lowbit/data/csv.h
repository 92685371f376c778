// CSV files of numbers: every column is a feature (f32) except the label columns.
//
//   age,height,label          CsvOptions o;
//   31,1.72,1                 o.label_columns = {"label"};
//   "45",1.80,0               CsvTable t = data::read_csv("people.csv", o);
//                             // t.x: f32 [2,2] {{31, 1.72}, {45, 1.80}}; t.y: s64 [2] {1, 0}
//
// Format (RFC 4180 with a few allowances):
//   - fields are separated by `delimiter`; a field may be quoted with "..." (it may then hold
//     the delimiter, a newline, or "" for a literal quote);
//   - lines end in \n or \r\n; empty (or all-blank) lines are skipped; a UTF-8 byte order mark
//     at the start is ignored;
//   - spaces and tabs around a field are ignored; a number is what std::from_chars reads
//     (decimal or exponent notation, "nan", "inf"; a leading '+' is accepted); an empty field is
//     an error (there is no missing-value convention);
//   - every record must have as many fields as the first one (the header, if any).
// Errors name the file, the line (1-based, counting the header; a record spanning lines is
// reported at its first line) and the column: read_csv: 'people.csv': line 17, column 'age':
// expected a number but found 'abc'.
#pragma once

#include <string>
#include <vector>

#include "lowbit/tensor.h"

namespace lowbit::data {

struct CsvOptions {
  bool header = true;    // the first record names the columns
  char delimiter = ',';  // any single character except '"', '\r' and '\n'
  // Columns that go to y, by header name or (always possible, and the only way without a
  // header) by 0-based decimal index, "3". A name is looked up in the header first.
  std::vector<std::string> label_columns;
  std::string label_dtype = "s64";  // "s64" (integers, e.g. class ids) or "f32" (regression)
};

struct CsvTable {
  std::vector<std::string> feature_names;  // header names (or "column <i>") of x's columns
  std::vector<std::string> label_names;    // of y's columns, in label_columns order
  Tensor x;  // f32 [rows, features], the non-label columns in file order
  // label_dtype [rows] for one label column, [rows, labels] for several; undefined for none.
  Tensor y;
};

// Reads a CSV file of numbers. Throws ValueError for bad options (delimiter, label_dtype, a
// label column that is not in the header / not a valid index — the message lists the columns,
// a column listed twice) and IoError naming file, line and column for anything wrong in the file
// (cannot open, a non-number, a non-integer label when label_dtype is "s64", an empty field, a
// record with the wrong number of fields, an unterminated quote, text after a closing quote).
// A file without records gives x [0, features] (and y [0] / [0, labels]).
CsvTable read_csv(const std::string& path, const CsvOptions& options = {});

}  // namespace lowbit::data
