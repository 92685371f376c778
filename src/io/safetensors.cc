#include "lowbit/io/safetensors.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>

#include "lowbit/io/atomic_file.h"

namespace lowbit::io {

namespace {
const char* st_dtype(DType t) {
  switch (t) {
    case DType::kF32:
      return "F32";
    case DType::kS8:
      return "I8";
    case DType::kU8:
      return "U8";
    case DType::kS16:
      return "I16";
    case DType::kS32:
      return "I32";
    case DType::kS64:
      return "I64";
    case DType::kBool:
      return "BOOL";
  }
  return "?";
}
bool parse_dtype(const std::string& s, DType* t) {
  for (DType d :
       {DType::kF32, DType::kS8, DType::kU8, DType::kS16, DType::kS32, DType::kS64, DType::kBool})
    if (s == st_dtype(d)) {
      *t = d;
      return true;
    }
  return false;
}
}  // namespace

const Tensor* SafetensorsFile::find(const std::string& name) const {
  for (const auto& [k, t] : tensors)
    if (k == name) return &t;
  return nullptr;
}

void write_safetensors(const std::string& path, const SafetensorsFile& file) {
  nlohmann::json header = nlohmann::json::object();
  uint64_t offset = 0;
  for (const auto& [name, t] : file.tensors) {
    if (name == "__metadata__")
      LOWBIT_THROW(ValueError, "write_safetensors: '__metadata__' is not a valid tensor name");
    if (header.contains(name))
      LOWBIT_THROW(ValueError, "write_safetensors: duplicate tensor name '", name, "'");
    header[name] = {{"dtype", st_dtype(t.dtype())},
                    {"shape", t.shape().dims()},
                    {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
  }
  if (!file.metadata.empty()) header["__metadata__"] = file.metadata;
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // align the data to 8 bytes, as the reference writer does
  write_atomically(path, "save", [&](std::ostream& out) {
    uint64_t n = h.size();
    unsigned char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
    out.write(reinterpret_cast<const char*>(len), 8);
    out.write(h.data(), static_cast<std::streamsize>(h.size()));
    for (const auto& [name, t] : file.tensors)
      out.write(static_cast<const char*>(t.raw()), static_cast<std::streamsize>(t.nbytes()));
  });
}

namespace {

// Where the bytes come from: a file (read at offsets) or a buffer in memory. `read` copies n
// bytes at offset `off` (off + n <= size, checked by the caller) and returns false on failure.
struct Source {
  uint64_t size;
  std::function<bool(uint64_t off, void* dst, size_t n)> read;
};

// A list of integers (a shape, data offsets): JSON integers only, in int64's range (a float
// such as 1e30 converted to an integer would be undefined behaviour).
std::vector<int64_t> int_list(const std::string& path, const std::string& tensor,
                              const nlohmann::json& j, const char* field) {
  if (!j.is_array())
    LOWBIT_THROW(IoError, "load: '", path, "': tensor '", tensor, "': '", field, "' is not a list");
  std::vector<int64_t> out;
  for (const nlohmann::json& v : j) {
    if (!v.is_number_integer() ||
        (v.is_number_unsigned() &&
         v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())))
      LOWBIT_THROW(IoError, "load: '", path, "': tensor '", tensor, "': '", field,
                   "' holds something other than an integer in int64's range");
    out.push_back(v.get<int64_t>());
  }
  return out;
}

// The one parser of both read_safetensors and read_safetensors_bytes: every check is here.
// `path` names the source in the messages.
SafetensorsFile parse(const std::string& path, const Source& src) {
  const uint64_t size = src.size;
  if (size < 8)
    LOWBIT_THROW(IoError, "load: '", path, "' is truncated: ", size,
                 " bytes, not even the 8-byte header length");
  unsigned char len[8];
  if (!src.read(0, len, 8)) LOWBIT_THROW(IoError, "load: '", path, "': reading the header failed");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(len[i]) << (8 * i);
  if (n > size - 8)
    LOWBIT_THROW(IoError, "load: '", path,
                 "' is truncated or not a safetensors file: the header claims ", n,
                 " bytes but the file has ", size - 8, " after the length");
  std::string h(n, '\0');
  if (n && !src.read(8, h.data(), n))
    LOWBIT_THROW(IoError, "load: '", path, "': reading the header failed");
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(h);
  } catch (const nlohmann::json::exception& e) {
    LOWBIT_THROW(IoError, "load: '", path, "' has a corrupted header (not JSON): ", e.what());
  }
  if (!header.is_object())
    LOWBIT_THROW(IoError, "load: '", path, "': the header is not a JSON object");
  const uint64_t data_size = size - 8 - n;
  SafetensorsFile f;
  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
    uint64_t begin, end;
  };
  std::vector<Entry> entries;
  try {
    for (auto it = header.begin(); it != header.end(); ++it) {
      if (it.key() == "__metadata__") {
        if (!it->is_object())
          LOWBIT_THROW(IoError, "load: '", path, "': '__metadata__' is not a JSON object");
        for (auto m = it->begin(); m != it->end(); ++m) f.metadata[m.key()] = m->get<std::string>();
        continue;
      }
      Entry e;
      e.name = it.key();
      if (!parse_dtype(it->at("dtype").get<std::string>(), &e.dtype))
        LOWBIT_THROW(IoError, "load: '", path, "': tensor '", e.name, "' has unsupported dtype '",
                     it->at("dtype").get<std::string>(), "'");
      const auto dims = int_list(path, e.name, it->at("shape"), "shape");
      // The element count, checked before anything multiplies it: no dim may be negative, the
      // product of the non-zero dims must stay below 2^40 (so that no product formed later, a
      // zero dim or not, can overflow) and the bytes the shape needs must be in the data (a
      // header claiming 1e12 elements is refused here, not allocated).
      constexpr uint64_t kMaxElems = uint64_t{1} << 40;
      uint64_t nonzero = 1;
      bool has_zero = false;
      for (int64_t d : dims) {
        if (d < 0)
          LOWBIT_THROW(IoError, "load: '", path, "': tensor '", e.name, "' has a negative dim");
        if (d == 0) {
          has_zero = true;
          continue;
        }
        if (nonzero > kMaxElems / static_cast<uint64_t>(d))
          LOWBIT_THROW(IoError, "load: '", path, "': tensor '", e.name,
                       "' has a shape of more than 2^40 elements");
        nonzero *= static_cast<uint64_t>(d);
      }
      const uint64_t elems = has_zero ? 0 : nonzero;
      e.shape = Shape(dims);
      const auto off = int_list(path, e.name, it->at("data_offsets"), "data_offsets");
      if (off.size() != 2 || off[0] < 0 || off[0] > off[1] ||
          static_cast<uint64_t>(off[1]) > data_size)
        LOWBIT_THROW(IoError, "load: '", path, "' is truncated or corrupted: tensor '", e.name,
                     "' lies outside the data (", data_size, " bytes)");
      e.begin = static_cast<uint64_t>(off[0]);
      e.end = static_cast<uint64_t>(off[1]);
      const uint64_t dsize = dtype_size(e.dtype);
      if (e.end - e.begin != elems * dsize)
        LOWBIT_THROW(IoError, "load: '", path, "': tensor '", e.name, "' has ", e.end - e.begin,
                     " bytes but its shape ", e.shape.str(), " needs ", elems * dsize);
      entries.push_back(e);
    }
  } catch (const nlohmann::json::exception& e) {
    LOWBIT_THROW(IoError, "load: '", path, "' has a corrupted (malformed) header: ", e.what());
  }
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < entries.size(); ++i)
    if (entries[i].begin < entries[i - 1].end)
      LOWBIT_THROW(IoError, "load: '", path, "' is corrupted: tensors '", entries[i - 1].name,
                   "' and '", entries[i].name, "' overlap");
  for (const Entry& e : entries) {
    Tensor t(e.shape, e.dtype);
    if (t.nbytes() && !src.read(8 + n + e.begin, t.raw(), t.nbytes()))
      LOWBIT_THROW(IoError, "load: '", path, "': reading tensor '", e.name, "' failed");
    if (e.dtype == DType::kBool)
      for (int64_t i = 0; i < t.numel(); ++i)
        if (static_cast<uint8_t*>(t.raw())[i] > 1)
          LOWBIT_THROW(IoError, "load: '", path, "': bool tensor '", e.name,
                       "' holds a value other than 0/1");
    f.tensors.emplace_back(e.name, std::move(t));
  }
  return f;
}

}  // namespace

SafetensorsFile read_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) LOWBIT_THROW(IoError, "load: cannot open '", path, "': ", std::strerror(errno));
  in.seekg(0, std::ios::end);
  const uint64_t size = static_cast<uint64_t>(in.tellg());
  in.seekg(0);
  return parse(path, {size, [&](uint64_t off, void* dst, size_t n) {
                        in.seekg(static_cast<std::streamoff>(off));
                        in.read(static_cast<char*>(dst), static_cast<std::streamsize>(n));
                        return static_cast<bool>(in);
                      }});
}

SafetensorsFile read_safetensors_bytes(const void* data, size_t size, const std::string& name) {
  const auto* p = static_cast<const unsigned char*>(data);
  return parse(name, {size, [p](uint64_t off, void* dst, size_t n) {
                        std::memcpy(dst, p + off, n);
                        return true;
                      }});
}

}  // namespace lowbit::io
