// Top-1 comparisons of classifier outputs (logits or probabilities, f32 [N, classes]): the
// accuracy against labels and the agreement of two models, as `lowbit eval` reports them.
//
//   double acc = nn::top1_accuracy(model->predict(x), y);           // y: s64 [N]
//   double same = nn::top1_agreement(qat->predict(x), integer.predict(x));
#pragma once

#include <cstdint>
#include <vector>

#include "lowbit/tensor.h"

namespace lowbit::nn {

// The index of the largest entry of each row (the first on ties): s64-like, one per row.
// ShapeError unless `scores` is f32 of rank 2 with at least one column.
std::vector<int64_t> top1(const Tensor& scores);
// The fraction of rows whose top-1 class equals the label (integer labels [N]); ShapeError for
// a different number of rows, DTypeError for float labels.
double top1_accuracy(const Tensor& scores, const Tensor& labels);
// The fraction of rows where a and b pick the same class; ShapeError unless they have the
// same shape.
double top1_agreement(const Tensor& a, const Tensor& b);

}  // namespace lowbit::nn
