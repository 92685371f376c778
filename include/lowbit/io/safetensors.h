// The safetensors file layout: an 8-byte little-endian header length N, N bytes of JSON
// ({"name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ...,
// "__metadata__": {string: string}}), then the raw little-endian tensor data.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "lowbit/tensor.h"

namespace lowbit::io {

struct SafetensorsFile {
  std::vector<std::pair<std::string, Tensor>> tensors;  // in file order
  std::map<std::string, std::string> metadata;
  const Tensor* find(const std::string& name) const;
};

// Writes atomically: to "<path>.tmp.<pid>", flushed, then renamed over `path`. IoError on failure
// (the temporary file is removed; an existing file at `path` is left untouched).
void write_safetensors(const std::string& path, const SafetensorsFile& file);
// Reads and validates the whole file; IoError naming the file and what is wrong (missing,
// truncated, header length beyond the file, bad JSON, unknown dtype, offsets out of range or
// overlapping, size not matching the shape).
SafetensorsFile read_safetensors(const std::string& path);
// The same from `size` bytes in memory (a whole file's contents), with the same checks; `name`
// stands for the path in the messages.
SafetensorsFile read_safetensors_bytes(const void* data, size_t size,
                                       const std::string& name = "<memory>");

}  // namespace lowbit::io
