// Integer-only deployment (issue 13): convert a QAT model (quant::quantize_model, trained) to an
// IntegerModel that runs int8 codes through the integer ops of lowbit/ops/int8.h, save it as one
// file, load it back, and explain every scale (inspect).
//
//   nn::ModelPtr qat = quant::quantize_model(*float_model, quant::QuantizeConfig::preset("w8a8"));
//   qat->compile({...});  qat->fit(x, y);
//   quant::IntegerModel im = quant::convert_to_integer(*qat);
//   Tensor logits = im.predict(x_test);        // f32 in, f32 out; int8 inside
//   im.save("model.lbi");                      // atomic; 4- and 2-bit weights packed
//   im = quant::IntegerModel::load("model.lbi");  // validates; unpacks once
//   std::cout << im.inspect_table();           // per layer: scales, M, (M0, shift), clamp
//
// What a converted op computes (docs/integer-inference.md walks one element through it):
//   a conv / dense of the QAT model, with its folded batch norm, its fused ReLU/ReLU6 (own
//   activation or the next layer) and the FakeQuant after it, becomes ONE qconv2d or
//   qfully_connected: int8 weights w = round(FQ(W) / s_w[c]) (zero point 0, the grid of the
//   trained weight quantizer, whose code range becomes the tensor's [qmin, qmax]: a 4-bit or
//   2-bit weight stays 4 or 2 bits wide in the file), int32 bias round(b / (s_in * s_w[c])),
//   and the output stage M[c] = s_in * s_w[c] / s_out as (M0, shift), clamped to the
//   activation's codes.
//   Activation grids are the trained FakeQuant's own (Quantizer::grid): the nudged (scale, zero
//   point) of its range, so the integer model rounds to the grid the QAT model trained on. A
//   grid of codes [qmin, qmax] (e.g. uint8 [0, 255], 4-bit [0, 15]) is stored as int8 codes
//   shifted by -128 - qmin, and its clamp keeps the grid's own range (a 4-bit activation stays
//   16 codes wide). With ConvertOptions::activations = ActivationScheme::kUint8 (the legacy
//   uint8 scheme) it is stored as u8 codes shifted by -qmin instead: every activation tensor u8
//   with its codes, zero point, qmin/qmax and every op's zero points and clamps the int8 ones +
//   128 (a ReLU output is [z, 255]; sigmoid/softmax zero point 0, tanh 128); weights and biases
//   as in int8. The same arithmetic: every code is the int8 model's + 128, the dequantized
//   outputs are equal (docs/integer-inference.md "The uint8 scheme").
//   Conv2D, DepthwiseConv2D (groups = channels) and Dense on inputs of any rank (rank 3: one
//   qfully_connected over the last axis, [?, T, K] -> [?, T, U]). Conv1D: a qconv2d on the
//   input reshaped to [?, 1, T, C] (kernel [1, K, C/groups, F], strides and dilation on the
//   width axis; "causal" is explicit padding of (K - 1) * dilation steps on the left), then a
//   reshape back to [?, T', F]. SeparableConv2D, which quantize_model splits as TF-MOT does
//   (DepthwiseConv2D "<name>_depthwise" + FakeQuant + 1x1 Conv2D "<name>"): two qconv2d with an
//   int8 tensor between, as TFLite deploys it.
//   Add of two inputs of one shape (quantize_model quantizes each), with its fused ReLU/ReLU6
//   and the FakeQuant after it: one qadd, TFLite's int8 ADD (spec 3.6): each input rescaled to
//   2 * max(s1, s2) / 2^20 by its own multiplier, summed, requantized by the output multiplier,
//   all with ConvertOptions::rounding (double by default, as TFLite).
//   Concatenate (any axis but the batch axis; no quantizer on its inputs, one FakeQuant after,
//   as TFMOT): each input on another grid than that FakeQuant's is requantized to it (TFLite's
//   int8 CONCATENATION needs one grid), always with single rounding (the QAT model rounds each
//   value once), then one `concat` copies the codes.
//   Activation sigmoid / tanh / softmax (quantize_model splits them off their Dense/Conv and
//   puts a FakeQuant on their fixed grid after them) becomes qlogistic / qtanh / qsoftmax
//   (lowbit/ops/int8.h) with TFLite's fixed output parameters: scale 1/256, zero point -128
//   (sigmoid, softmax over the last axis) or 1/128, 0 (tanh); tables as TFLite's
//   PopulateLookupTable, softmax in TFLite's reference gemmlowp fixed point. A FakeQuant after
//   it on another grid adds a requantize. Other activations (softplus, log_softmax, ...) are
//   refused.
//   Embedding (a QuantizeWrapper with a per-tensor table quantizer, quantize_model's default for
//   it) becomes a gather of its int8 table codes (a constant, zero point 0 for a symmetric
//   grid) by the ids; its output keeps the table's (scale, zero point). The model input may
//   then be s32/s64 ids, or f32 ids (a cast to s32 first, truncating as the layer does);
//   predict refuses ids outside the table. mask_zero and per-channel tables are refused.
//   The model input's FakeQuant becomes `quantize`, the model output `dequantize`; a FakeQuant
//   on codes of another grid `requantize` (single rounding, clamped to the grid's codes).
//   MaxPooling2D, Flatten, Reshape and Dropout keep their input's parameters; AveragePooling2D
//   and GlobalAveragePooling2D round the mean once, to the grid of the FakeQuant after them.
//   A QuantizedLSTM / QuantizedGRU becomes ONE qlstm / qgru over the sequence (spec 3.7
//   "8x8_16", docs/integer-inference.md "The integer LSTM and GRU"): x quantized (or
//   requantized) to the layer's x grid, int8 weights per gate block (FQ(W) / s_W,g), int32
//   biases at s_side * s_W,g, gate sums Q3.12, the cell at 2^(p-15), the output on the layer's h
//   grid; return_sequences, go_backwards, zero_output_for_mask, GRU reset_after true or false.
//   A Masking layer on the model input becomes timestep_mask (the step mask from the floats);
//   the mask travels to the recurrent op through layers that pass it on. The QAT layer's forward
//   is the op's integer arithmetic, so the codes agree exactly (recurrent.h "Exactness").
//   A QuantizedBidirectional becomes one qlstm/qgru per direction (the backward one with
//   go_backwards and, for sequences, reverse_output), merged on the grid of the FakeQuant after
//   it: concat = requantize each + concat, sum / ave = qadd (ave: input scales halved); merge
//   none: the two outputs. Not converted: merge_mode mul, initial states, return_state, a mask
//   the integer model does not compute (a go_backwards sequence's), a FakeQuant of a Masking
//   output with mask_value != 0.
// The model has one input (f32, or the ids of an Embedding): a model whose masks come from a second
// input (e.g. examples/rgb_missing.cc's MissingFeatures) converts only from the layer after them.
// Anything else (a layer class without an integer form here, a float layer between quantized
// ones, an Add of three or more inputs, a concatenation along the batch axis, an activation that
// follows no conv/dense/Add, an asymmetric weight grid, a torch/binary/ternary quantizer) is
// refused with UnsupportedError naming the layer, its class and why; nothing is silently left
// in float.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "lowbit/attrs.h"
#include "lowbit/fixed_point.h"
#include "lowbit/nn/model.h"

namespace lowbit::io {
struct SafetensorsFile;
}

namespace lowbit::quant {

// How the converted model stores its activation codes (docs/integer-inference.md "The uint8
// scheme"). Weights are int8 symmetric (per channel) and biases int32 in both.
enum class ActivationScheme {
  kInt8,   // TFLite's current scheme: s8 codes, zero points in [-128, 127]
  kUint8,  // the legacy uint8 scheme (TFLite's old uint8 models, gemmlowp): u8 codes, zero
           // points in [0, 255]; the same grids and arithmetic, every code the s8 one + 128
};

struct ConvertOptions {
  Rounding rounding = Rounding::kDouble;                   // of every output stage (spec 3.4)
  ActivationScheme activations = ActivationScheme::kInt8;  // s8 or u8 activation codes
};

// One tensor of an integer model: an activation (data undefined) or a constant (weights,
// biases). Codes: real = scale[c] * (q - zero_point[c]) (one entry, or one per channel of the
// last axis); f32 tensors (the model's input and output) have none. Activations (and an
// Embedding's gather table) are s8, or u8 in the uint8 scheme (zero point, qmin, qmax in
// [0, 255]); weights are always s8, biases s32.
struct IntegerTensor {
  std::string name;
  DType dtype = DType::kS8;
  Shape shape;  // activations: dim 0 unknown (the batch)
  std::vector<double> scale;
  std::vector<int32_t> zero_point;
  // The codes the grid uses: for activations the (shifted) grid's; for an s8 weight constant
  // the trained weight grid's code range (e.g. [-7, 7] for 4-bit narrow tf, [-2, 1] for 2-bit
  // lsq), which decides how the file stores it (bits()).
  int32_t qmin = -128, qmax = 127;
  Tensor data;  // constants only (always unpacked: one s8 code per element, as the kernels read)

  // The code width: for s8, the smallest of 2, 4, 8 whose two's complement range
  // [-2^(b-1), 2^(b-1) - 1] holds [qmin, qmax]; for other dtypes 8 * the dtype's size.
  int bits() const;
};

// Packed storage of low-bit codes (the model file's "bits" tensors). Codes are packed in
// element order (row-major), each as its `bits` low two's complement bits, the first code in
// the lowest bits of byte 0 ("little end first"): with bits = 4, element 2k is the low nibble
// of byte k and element 2k + 1 the high nibble; with bits = 2, element 4k + j is bits
// [2j, 2j + 1] of byte k. The last byte is padded with zero bits: ceil(numel * bits / 8) bytes.
// pack_codes: s8 codes, each in [-2^(bits-1), 2^(bits-1) - 1], to u8 [ceil(numel * bits / 8)];
// ValueError for bits not 2 or 4, a dtype other than s8, or a code that does not fit.
Tensor pack_codes(const Tensor& codes, int bits);
// unpack_codes: the inverse, to s8 of `shape` (sign-extended); ValueError for bits not 2 or 4,
// packed data that is not u8 of rank 1 with exactly ceil(numel * bits / 8) bytes, or nonzero
// padding bits.
Tensor unpack_codes(const Tensor& packed, const Shape& shape, int bits);

// How IntegerModel::save stores the constants.
struct SaveOptions {
  // Pack every s8 weight whose code range fits 4 or 2 bits (IntegerTensor::bits), two or four
  // codes per byte. false: one byte per code (the file then still is version 2, without "bits").
  bool pack = true;
};

// One integer op, with where it came from.
struct IntegerOp {
  std::string op;           // an op of lowbit/ops/int8.h, or "reshape"
  std::vector<int> inputs;  // tensor indices
  int output = -1;
  Attrs attrs;
  std::string layer;       // the QAT layer(s) it implements, e.g. "conv2d+relu+conv2d_quant"
  std::string activation;  // fused activation (none, relu, relu6) and from which layer
};

class IntegerModel {
 public:
  IntegerModel();
  ~IntegerModel();
  IntegerModel(IntegerModel&&) noexcept;
  IntegerModel& operator=(IntegerModel&&) noexcept;

  std::vector<IntegerTensor> tensors;
  std::vector<IntegerOp> ops;
  int input = -1;   // f32 [?, ...]
  int output = -1;  // f32 [?, ...]
  std::string name;

  // Runs the model on x (f32, the QAT model's input shape) in batches; returns f32 (the
  // dequantized output). Plans are made once per batch shape and reused.
  Tensor predict(const Tensor& x, int64_t batch_size = 256);
  // Runs one batch and returns the codes of every tensor the ops produce, by tensor index
  // (undefined for constants and the input): what the per-layer agreement test compares. u8
  // tensors (the uint8 scheme) are returned as their u8 codes: the runtime runs them on the s8
  // kernels as codes - 128 (a view made once when the graph is built, zero points and clamps
  // - 128), and converts back only here.
  std::vector<Tensor> run_all(const Tensor& x);

  // Writes one safetensors file (format version 2, docs/integer-inference.md "Formats and
  // files"): the graph as JSON metadata "lowbit.integer_model" (tensors with dtype, shape,
  // scales, zero points and code range; ops with their attributes), then the constants. A
  // weight whose codes fit 4 or 2 bits is stored packed (pack_codes): in the safetensors header
  // it is U8 [ceil(numel * bits / 8)], and its graph entry keeps the logical dtype s8 and shape
  // and adds "bits": 4 or 2. options.pack = false stores every code in a byte.
  // Atomic (a temporary file renamed). IoError on failure.
  void save(const std::string& path, const SaveOptions& options = {}) const;
  // Reads and validates a file written by save (format version 2, or version 1: no packed
  // tensors): IoError for a truncated or corrupted file, ValueError naming the tensor (or op)
  // and the field for inconsistent contents (a bias that is not s32, a scale that is not finite
  // and > 0, a shape that does not match the graph, a multiplier out of range; a packed tensor
  // with an unknown 'bits', a byte count other than ceil(numel * bits / 8), nonzero padding, a
  // code range 'qmin'/'qmax' that does not fit its bits; an s8 constant with a code outside its
  // [qmin, qmax]; for the uint8 scheme: a u8 zero point, qmin or qmax outside [0, 255], a u8
  // constant other than a gather table, an op whose activation input and output are of
  // different schemes (s8 and u8), a code attribute of a u8 tensor outside [0, 255] or a
  // required one missing). Packed weights are unpacked here, once: the model runs the same s8
  // codes as before it was saved.
  static IntegerModel load(const std::string& path);
  // The same from a whole file's bytes in memory (the same checks: load reads the file and
  // shares this code); `name` stands for the path in the messages.
  static IntegerModel load_bytes(const void* data, size_t size,
                                 const std::string& name = "<memory>");

  // The graph JSON (what save writes as metadata, with the same options).
  std::string graph_json(const SaveOptions& options = {}) const;
  // Bytes of the constants (weights and biases): unpacked, one byte per s8 code as the kernels
  // read them (packed = false), or as save stores them by default (packed = true).
  int64_t constant_bytes(bool packed = false) const;

  // Per conv/dense op: input, weight and output scale and zero point, the bias scale and
  // whether it equals f32(s_in * s_w), the real multiplier M, (M0, shift), the value M0 * 2^(shift
  // - 31) and its relative error, the clamp and the activation it came from. JSON: a list of
  // objects, one per op (each set of parameters with the "dtype" of its codes, s8 or u8); table:
  // fixed-width text (zero points of u8 codes as "zp 107 (u8)"). Zero points and clamps are in
  // the model's own codes (u8 in the uint8 scheme).
  std::string inspect_json() const;
  std::string inspect_table() const;

  // One output element of conv/dense op `op` (an index into ops) on input x (one or more
  // examples, f32), walked through the integer arithmetic as text: the input codes (s8, or u8
  // in the uint8 scheme, with its u8 zero point) and int8 weight codes of every tap (the first
  // `max_taps` listed), the int32 accumulator, the bias, the requantization (M, M0, shift, each
  // rounding step), the zero point, the clamp, and the code the runtime stored (they must agree;
  // "MISMATCH" otherwise), with the real values. `element`: a flat index into the op's output for
  // the first example. ValueError for an op that is not qconv2d/qfully_connected or an element out
  // of range.
  std::string walk_element(const Tensor& x, size_t op, int64_t element, int max_taps = 6);

 private:
  struct Runtime;
  std::unique_ptr<Runtime> rt_;
  void check_ids(const Tensor& x) const;  // ValueError for a token id outside its table
  static IntegerModel from_safetensors(const io::SafetensorsFile& f, const std::string& path);
  Runtime& runtime();
};

// The conversion described above. Throws UnsupportedError for a layer that cannot be converted
// (naming it, its class and why), ValueError for a model that is not a quantize_model result or
// whose ranges were never calibrated (FakeQuant step 0).
IntegerModel convert_to_integer(const nn::Model& qat, const ConvertOptions& options = {});

}  // namespace lowbit::quant
