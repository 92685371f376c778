// IDX files (the MNIST container) and the MNIST splits built from them.
//
// An IDX file is a big-endian 32-bit magic 0x0000TTNN (TT = element type, NN = number of
// dimensions), NN big-endian 32-bit sizes, then the elements, row-major, big-endian:
//
//   TT    element        DType      TT    element        DType
//   0x08  unsigned byte  kU8        0x0C  int32          kS32
//   0x09  signed byte    kS8        0x0D  float32        kF32
//
// (0x0B int16 and 0x0E float64 are valid IDX but not read here: UnsupportedError.)
//
//   Tensor images = read_idx("data/mnist/train-images-idx3-ubyte");   // u8 [8000,28,28]
//   MnistSplit test = load_mnist("data/mnist", /*train=*/false);
//   // test.images: f32 [2000,28,28,1] in [0,1]; test.labels: s64 [2000] in 0..9
//
// Files are read whole into memory. A gzip-compressed file (path ending in ".gz", or content
// starting with the gzip magic 1f 8b) is decompressed on the fly.
#pragma once

#include <string>

#include "lowbit/tensor.h"

namespace lowbit {

// Reads an IDX file into a tensor of the matching dtype and shape (NN = 0 gives a scalar).
// Throws IoError naming the file and the problem: cannot open (missing), truncated header,
// bad magic, truncated data ("expected N bytes of data but found M"), trailing bytes, corrupt
// gzip stream. Throws UnsupportedError for IDX element types without a DType (int16, float64).
Tensor read_idx(const std::string& path);

// Writes `t` as an uncompressed IDX file (dtype u8, s8, s32 or f32; rank <= 32, every dim
// < 2^32). Throws UnsupportedError for other dtypes, IoError if the file cannot be written.
void write_idx(const std::string& path, const Tensor& t);

// One split of MNIST.
struct MnistSplit {
  Tensor images;  // f32 [N,H,W,1] (NHWC, H = W = 28 for MNIST), pixel / 255 in [0,1]
  Tensor labels;  // s64 [N], digits 0..9
};

// Loads the training split (train = true: "train-images-idx3-ubyte", "train-labels-idx1-ubyte")
// or the test split ("test-..." or, as in the original distribution, "t10k-...") from `dir`;
// each file may also be present with a ".gz" suffix.
// Throws IoError if a file is missing or unreadable, the images are not u8 [N,H,W], the labels
// are not u8 [N] with the same N, or a label is outside 0..9.
MnistSplit load_mnist(const std::string& dir, bool train);

}  // namespace lowbit
