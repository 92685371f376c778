#include "lowbit/data/load.h"

#include <cstring>
#include <filesystem>

#include "lowbit/data/csv.h"
#include "lowbit/data/idx.h"
#include "lowbit/data/npy.h"
#include "lowbit/error.h"

namespace lowbit::data {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Integer label types become s64 (what the losses and metrics take as class ids).
Tensor labels_as_s64(const Tensor& y) {
  switch (y.dtype()) {
    case DType::kU8:
    case DType::kS8:
    case DType::kS32:
      return y.to(DType::kS64);
    default:
      return y;
  }
}

// MNIST-style u8 images: f32 / 255 with a channel dim, as load_mnist / Dataset::from_idx.
Tensor scale_images(const Tensor& t) {
  if (t.dtype() != DType::kU8) return t;
  Tensor f = t.to(DType::kF32);
  float* p = f.data<float>();
  for (int64_t i = 0; i < f.numel(); ++i) p[i] /= 255.0f;
  if (f.rank() == 3) {
    std::vector<int64_t> d = f.shape().dims();
    d.push_back(1);
    f = f.reshape(Shape(d));
  }
  return f;
}

void require_labels(const DataSpec& s, const char* format) {
  if (s.labels.empty())
    LOWBIT_THROW(ValueError, "load_data: '", s.data, "' is ", format,
                 ": give the labels file too (--labels)");
}

}  // namespace

Tensor take_rows(const Tensor& t, int64_t n) {
  if (!t.defined() || t.rank() == 0 || n < 0 || n >= t.dim(0)) return t;
  std::vector<int64_t> d = t.shape().dims();
  const size_t row_bytes = t.nbytes() / static_cast<size_t>(d[0]);
  d[0] = n;
  Tensor out(Shape(d), t.dtype());
  std::memcpy(out.raw(), t.raw(), row_bytes * static_cast<size_t>(n));
  return out;
}

LoadedData load_data(const DataSpec& s) {
  if (s.data.empty()) LOWBIT_THROW(ValueError, "load_data: no data file given (--data)");
  if (s.limit < -1 || s.limit == 0)
    LOWBIT_THROW(ValueError, "load_data: limit must be positive (or -1 for all) but is ", s.limit);
  LoadedData d;
  std::string what;
  if (std::filesystem::is_directory(s.data)) {
    if (s.split != "train" && s.split != "test")
      LOWBIT_THROW(ValueError, "load_data: split must be 'train' or 'test' but is '", s.split, "'");
    MnistSplit m = load_mnist(s.data, s.split == "train");
    d.x = m.images;
    d.y = m.labels;
    what = "MNIST " + s.split + " split";
  } else if (ends_with(s.data, ".npy")) {
    require_labels(s, "a .npy file");
    d.x = read_npy(s.data);
    d.y = labels_as_s64(read_npy(s.labels));
    what = "npy";
  } else if (ends_with(s.data, ".npz")) {
    const auto arrays = read_npz(s.data);
    d.x = npz_get(arrays, s.x_key, s.data);
    d.y = labels_as_s64(npz_get(arrays, s.y_key, s.data));
    what = "npz";
  } else if (ends_with(s.data, ".csv")) {
    CsvOptions o;
    o.label_columns = {s.label_column};
    CsvTable t = read_csv(s.data, o);
    d.x = t.x;
    d.y = t.y;
    what = "CSV";
  } else {
    require_labels(s, "an IDX file");
    d.x = scale_images(read_idx(s.data));
    d.y = labels_as_s64(read_idx(s.labels));
    what = "IDX";
  }
  if (d.x.rank() == 0 || d.y.rank() == 0 || d.x.dim(0) != d.y.dim(0))
    LOWBIT_THROW(ValueError, "load_data: '", s.data, "': x ", d.x.shape().str(), " and y ",
                 d.y.shape().str(), " do not have the same number of samples");
  d.x = take_rows(d.x, s.limit);
  d.y = take_rows(d.y, s.limit);
  d.description = "'" + s.data + "' (" + what + "): x " + dtype_name(d.x.dtype()) + " " +
                  d.x.shape().str() + ", y " + dtype_name(d.y.dtype()) + " " + d.y.shape().str();
  return d;
}

}  // namespace lowbit::data
