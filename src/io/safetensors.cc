#include "lowbit/io/safetensors.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

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
  const std::string tmp = path + ".tmp." + std::to_string(getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) LOWBIT_THROW(IoError, "save: cannot write '", tmp, "': ", std::strerror(errno));
    uint64_t n = h.size();
    unsigned char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
    out.write(reinterpret_cast<const char*>(len), 8);
    out.write(h.data(), static_cast<std::streamsize>(h.size()));
    for (const auto& [name, t] : file.tensors)
      out.write(static_cast<const char*>(t.raw()), static_cast<std::streamsize>(t.nbytes()));
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      LOWBIT_THROW(IoError, "save: writing '", tmp, "' failed (disk full?)");
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    LOWBIT_THROW(IoError, "save: cannot rename '", tmp, "' to '", path, "': ", ec.message());
  }
}

SafetensorsFile read_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) LOWBIT_THROW(IoError, "load: cannot open '", path, "': ", std::strerror(errno));
  in.seekg(0, std::ios::end);
  const uint64_t size = static_cast<uint64_t>(in.tellg());
  in.seekg(0);
  if (size < 8)
    LOWBIT_THROW(IoError, "load: '", path, "' is truncated: ", size,
                 " bytes, not even the 8-byte header length");
  unsigned char len[8];
  in.read(reinterpret_cast<char*>(len), 8);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(len[i]) << (8 * i);
  if (n > size - 8)
    LOWBIT_THROW(IoError, "load: '", path,
                 "' is truncated or not a safetensors file: the header claims ", n,
                 " bytes but the file has ", size - 8, " after the length");
  std::string h(n, '\0');
  in.read(h.data(), static_cast<std::streamsize>(n));
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
        for (auto m = it->begin(); m != it->end(); ++m) f.metadata[m.key()] = m->get<std::string>();
        continue;
      }
      Entry e;
      e.name = it.key();
      if (!parse_dtype(it->at("dtype").get<std::string>(), &e.dtype))
        LOWBIT_THROW(IoError, "load: '", path, "': tensor '", e.name, "' has unsupported dtype '",
                     it->at("dtype").get<std::string>(), "'");
      e.shape = Shape(it->at("shape").get<std::vector<int64_t>>());
      for (int64_t d : e.shape.dims())
        if (d < 0)
          LOWBIT_THROW(IoError, "load: '", path, "': tensor '", e.name, "' has a negative dim");
      auto off = it->at("data_offsets").get<std::vector<uint64_t>>();
      if (off.size() != 2 || off[0] > off[1] || off[1] > data_size)
        LOWBIT_THROW(IoError, "load: '", path, "' is truncated or corrupted: tensor '", e.name,
                     "' lies outside the data (", data_size, " bytes)");
      e.begin = off[0];
      e.end = off[1];
      if (e.end - e.begin != static_cast<uint64_t>(e.shape.numel()) * dtype_size(e.dtype))
        LOWBIT_THROW(IoError, "load: '", path, "': tensor '", e.name, "' has ", e.end - e.begin,
                     " bytes but its shape ", e.shape.str(), " needs ",
                     e.shape.numel() * dtype_size(e.dtype));
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
    in.seekg(static_cast<std::streamoff>(8 + n + e.begin));
    in.read(static_cast<char*>(t.raw()), static_cast<std::streamsize>(t.nbytes()));
    if (!in) LOWBIT_THROW(IoError, "load: '", path, "': reading tensor '", e.name, "' failed");
    if (e.dtype == DType::kBool)
      for (int64_t i = 0; i < t.numel(); ++i)
        if (static_cast<uint8_t*>(t.raw())[i] > 1)
          LOWBIT_THROW(IoError, "load: '", path, "': bool tensor '", e.name,
                       "' holds a value other than 0/1");
    f.tensors.emplace_back(e.name, std::move(t));
  }
  return f;
}

}  // namespace lowbit::io
