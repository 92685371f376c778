// NumPy files: .npy (one array) and .npz (a ZIP archive of .npy members, as np.savez and
// np.savez_compressed write them).
//
// A .npy file is the magic "\x93NUMPY", a version byte pair (1.0: 2-byte header length; 2.0 and
// 3.0: 4-byte), a little-endian header length, then a Python dict literal such as
//   {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
// padded with spaces and a '\n', then the raw elements.
//
//   descr          DType      note
//   '<f4'          kF32
//   '<f8'          kF32       converted on reading: values round to the nearest f32 (precision
//                             beyond ~7 digits is lost; magnitudes above 3.4e38 become inf)
//   '<i8'          kS64
//   '<i4'          kS32
//   '|u1'          kU8        ('<u1' and '=u1' are accepted too for one-byte types)
//   '|i1'          kS8
//   '|b1'          kBool      (bytes other than 0 and 1 are an error)
//
// Big-endian data ('>f4', ...) and other dtypes (float16, unsigned 16/32/64-bit, complex,
// structured, object) throw UnsupportedError with a hint to convert in NumPy first
// (arr.astype('<f4')). Fortran-ordered arrays ('fortran_order': True) are read and transposed
// into our row-major layout, so element [i,j,k] is the same as in NumPy.
//
//   Tensor x = data::read_npy("x.npy");                              // f32 [2,3]
//   std::map<std::string, Tensor> arrays = data::read_npz("mnist.npz"); // keys without ".npy"
//   data::write_npz("out.npz", {{"x", x}, {"y", y}});                 // np.load("out.npz")["x"]
//
// Files are read whole into memory.
#pragma once

#include <map>
#include <string>

#include "lowbit/tensor.h"

namespace lowbit::data {

// Reads a .npy file. Throws IoError naming the file and the problem (cannot open, bad magic,
// truncated header, bad header — with the header text —, truncated data "expected N bytes of
// data but found M", trailing bytes, a bool byte other than 0/1) and UnsupportedError for
// big-endian or unsupported dtypes.
Tensor read_npy(const std::string& path);

// Writes `t` as a version 1.0 .npy file in C order with the descr of the table above ('<f4',
// '<i8', '<i4', '|u1', '|i1', '|b1'). Throws ValueError for an undefined tensor, IoError if the
// file cannot be written.
void write_npy(const std::string& path, const Tensor& t);

// Reads every "<key>.npy" member of a .npz archive (ZIP, members stored or deflated, ZIP64
// records accepted) into {key: tensor}; members not ending in ".npy" are skipped. Throws IoError
// naming the file (and the member) for a missing file, a damaged archive (no end of central
// directory, truncated, bad local header, CRC mismatch, corrupt deflate stream) or a bad member,
// UnsupportedError for encrypted members or compression methods other than stored/deflated.
std::map<std::string, Tensor> read_npz(const std::string& path);

// Writes a .npz archive with one "<key>.npy" member per entry, stored (compressed = false, as
// np.savez) or deflated (as np.savez_compressed). Throws ValueError for an empty or undefined
// entry, UnsupportedError if the archive would need ZIP64 (a member or the archive >= 4 GiB),
// IoError if the file cannot be written.
void write_npz(const std::string& path, const std::map<std::string, Tensor>& arrays,
               bool compressed = false);

// The entry `key` of an archive read with read_npz; throws IoError naming `path` and listing
// the available keys if it is missing ("'data.npz': no array 'z'; available: 'x', 'y'").
const Tensor& npz_get(const std::map<std::string, Tensor>& arrays, const std::string& key,
                      const std::string& path);

}  // namespace lowbit::data
