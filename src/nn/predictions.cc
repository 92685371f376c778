#include "lowbit/nn/predictions.h"

#include "lowbit/error.h"

namespace lowbit::nn {

std::vector<int64_t> top1(const Tensor& scores) {
  if (scores.dtype() != DType::kF32 || scores.rank() != 2 || scores.dim(1) < 1)
    LOWBIT_THROW(ShapeError, "top1: expected f32 scores [N, classes] but found ",
                 dtype_name(scores.dtype()), " ", scores.shape().str());
  const int64_t n = scores.dim(0), c = scores.dim(1);
  const float* p = scores.data<float>();
  std::vector<int64_t> out(static_cast<size_t>(n));
  for (int64_t r = 0; r < n; ++r) {
    int64_t best = 0;
    for (int64_t k = 1; k < c; ++k)
      if (p[r * c + k] > p[r * c + best]) best = k;
    out[static_cast<size_t>(r)] = best;
  }
  return out;
}

double top1_accuracy(const Tensor& scores, const Tensor& labels) {
  const std::vector<int64_t> pred = top1(scores);
  if (labels.rank() != 1 || labels.dim(0) != scores.dim(0))
    LOWBIT_THROW(ShapeError, "top1_accuracy: expected labels [", scores.dim(0), "] but found ",
                 labels.shape().str());
  if (labels.dtype() == DType::kF32)
    LOWBIT_THROW(DTypeError, "top1_accuracy: expected integer class labels but found f32");
  if (pred.empty()) return 0;
  int64_t right = 0;
  for (size_t r = 0; r < pred.size(); ++r)
    right += static_cast<int64_t>(labels.get_as_double(static_cast<int64_t>(r))) == pred[r];
  return static_cast<double>(right) / static_cast<double>(pred.size());
}

double top1_agreement(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape())
    LOWBIT_THROW(ShapeError, "top1_agreement: the outputs differ in shape: ", a.shape().str(),
                 " vs ", b.shape().str());
  const std::vector<int64_t> pa = top1(a), pb = top1(b);
  if (pa.empty()) return 0;
  int64_t same = 0;
  for (size_t r = 0; r < pa.size(); ++r) same += pa[r] == pb[r];
  return static_cast<double>(same) / static_cast<double>(pa.size());
}

}  // namespace lowbit::nn
