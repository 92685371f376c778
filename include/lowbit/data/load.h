// Loading a labelled data set from a file by its format, as the `lowbit` command line's --data
// flag does: one call for IDX, .npy, .npz and CSV.
//
//   data::DataSpec s;
//   s.data = "../shared/data";          // a directory with the MNIST split files
//   s.split = "test";
//   data::LoadedData d = data::load_data(s);  // d.x f32 [2000,28,28,1] in [0,1], d.y s64 [2000]
//
// Formats, chosen by `data`:
//   - a directory: the MNIST split `split` ("train" or "test") via load_mnist;
//   - "*.npy": x = read_npy(data), y = read_npy(labels) (labels required);
//   - "*.npz": x and y are the arrays x_key and y_key of the archive;
//   - "*.csv": read_csv with label_column as the label (s64 class ids), the other columns f32
//     features;
//   - anything else is an IDX file (optionally .gz) of images, with `labels` an IDX file.
// IDX u8 images (MNIST) are scaled as load_mnist and Dataset::from_idx do: f32 pixel / 255 in
// [0, 1], with a trailing channel dim ([N,H,W] becomes [N,H,W,1]). Other IDX types and the
// arrays of .npy/.npz files keep their values (integer x stays integer: token ids); labels of an
// integer type become s64.
#pragma once

#include <cstdint>
#include <string>

#include "lowbit/tensor.h"

namespace lowbit::data {

struct DataSpec {
  std::string data;                      // file or directory (see above)
  std::string labels;                    // IDX or .npy labels; unused for directories, .npz and CSV
  std::string split = "train";           // the MNIST split of a directory: "train" or "test"
  std::string x_key = "x", y_key = "y";  // .npz array names
  std::string label_column = "label";    // CSV: header name or 0-based index of the label
  int64_t limit = -1;                    // keep only the first `limit` samples (-1: all)
};

struct LoadedData {
  Tensor x;                 // samples along dim 0
  Tensor y;                 // s64 class ids (or f32 targets from .npy/.npz), same dim 0
  std::string description;  // e.g. "'../shared/data' (MNIST test split): x f32 [2000,28,28,1]"
};

// Loads what `spec` names. Throws ValueError naming the field for a missing `data`, a missing
// `labels` where the format needs it, a bad split or limit, or x and y with different numbers of
// samples; IoError (from the readers) naming the file for anything wrong with a file.
LoadedData load_data(const DataSpec& spec);

// The first n samples (rows along dim 0) of t, copied; n larger than dim 0 keeps all.
Tensor take_rows(const Tensor& t, int64_t n);

}  // namespace lowbit::data
