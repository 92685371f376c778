// Masks in models: timestep masks (Keras) and feature masks (beyond Keras). docs/masking.md has
// the whole story and the table of every layer's mask rule.
//
// A TIMESTEP MASK is bool [batch, timesteps], true = valid step. It travels beside a tensor
// through the layer graph: a layer call receives the masks of its inputs in
// CallContext::input_masks and Layer::compute_mask gives the masks of its outputs. Where masks
// come from:
//   * Masking(mask_value): a step whose features ALL equal mask_value is masked (and zeroed);
//   * Embedding(n, d, {.mask_zero = true}): id 0 is padding;
//   * an explicit mask, typically a model input (Keras' layer(x, mask=m)):
//       KTensor x = nn::Input({T, F}), m = nn::Input({T}, DType::kBool);
//       KTensor h = (*nn::LSTM(32))(x, {.masks = {m}});
//       auto model = nn::Model::create({x, m}, {(*nn::Dense(1))(h)});
//       model->fit(data::Dataset::from_tensors({x_data, mask_data}, {y_data}), ...);
//     With lengths instead of a mask: ops::sequence_mask(lengths, T) (include/lowbit/ops/mask.h).
//   * MissingFeatures: "any feature present".
// Losses and metrics of fit/evaluate see the mask of the model's output: masked steps count
// for nothing and the mean is over the valid steps (Keras 3).
//
// A FEATURE MASK marks single missing values of a [batch, timesteps, features] tensor (a
// colour channel missing at some steps). Keras has none; here:
//   * MissingFeatures: fills missing values and appends the missingness indicators;
//   * FeatureDropout: hides random observed values during training (augmentation);
//   * feature-masked losses (losses.h: FeatureMaskedMeanSquaredError, ...): targets that are
//     missing (NaN, or a mask passed to the loss) contribute nothing.
// Missing values are given either as NaN in x, or as a separate feature mask of x's shape (bool,
// or f32 with 1 = present).
#pragma once

#include <string>

#include "lowbit/nn/layer.h"

namespace lowbit::nn {

struct SequenceMaskOptions {
  std::string name;
};
// lengths [B] (integer, or f32 truncated) -> bool mask [B, maxlen], mask[b, t] = t < lengths[b]:
// a model input of sequence lengths turned into the timestep mask a recurrent layer takes
// (CallOptions::masks), as ONNX's sequence_lens. ShapeError for lengths not of rank 1.
LayerPtr SequenceMask(int64_t maxlen, SequenceMaskOptions o = {});

struct MaskingOptions {
  std::string name;
};
// x [B, T, ..., F] -> x with masked steps set to 0; output mask[b, t] = any over the features of
// (x[b, t, f] != mask_value), AND-ed with a mask x already carries. A step is masked only when
// ALL its features equal mask_value; masked steps become 0 even when mask_value is not 0; NaN
// equals nothing, so NaN steps are never masked (Keras). ShapeError for inputs of rank < 3.
LayerPtr Masking(double mask_value = 0.0, MaskingOptions o = {});

struct MissingFeaturesOptions {
  double fill_value = 0.0;  // what a missing value is replaced by
  bool indicators = true;   // append the presence indicators (1 = present) as extra channels
  std::string name;
};
// Inputs: x [B, T, F] (or [B, F]) with NaN where a value is missing, or (x, feature_mask) with
// feature_mask of x's shape (bool, or f32 nonzero = present; a NaN in x counts as missing too).
// Output: [B, T, 2F] = concat(x with missing values replaced by fill_value, presence as f32 0/1)
// along the last axis, or [B, T, F] without indicators. For rank-3 x the output carries the
// timestep mask "any feature present" (AND-ed with x's own mask), so a step with nothing
// observed is skipped downstream exactly like a Masking step; a partially observed step is a
// normal step. No weights; identical in training and inference. ShapeError/DTypeError naming
// the layer for a mask of another shape or dtype.
LayerPtr MissingFeatures(MissingFeaturesOptions o = {});

struct FeatureDropoutOptions {
  // true: hide a feature for a whole sequence (one draw per [batch, feature]); false: each
  // value independently.
  bool per_sequence = false;
  int64_t seed = -1;  // -1: derived from the layer name
  std::string name;
};
// Training-time augmentation that simulates missing data: in training mode each OBSERVED value
// is hidden with probability `rate` (in [0, 1], ValueError otherwise); in inference mode the
// layer is the identity. Nothing is rescaled (this is missingness, not Dropout). Draws come from
// Philox keyed by (seed, the model's step), as Dropout's (a resumed run draws the same).
// Inputs and outputs:
//   x (NaN = missing)          -> x with hidden values set to NaN;
//   (x, feature_mask)          -> (x, feature_mask with hidden values cleared), the mask in its
//                                 own dtype (bool, or f32 0/1).
// Put it before MissingFeatures. x's timestep mask passes to output 0.
LayerPtr FeatureDropout(double rate, FeatureDropoutOptions o = {});

}  // namespace lowbit::nn
