#include "lowbit/data/idx.h"

#include <zlib.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string_view>
#include <vector>

namespace lowbit {
namespace {

constexpr size_t kChunk = size_t{1} << 16;
constexpr int kMaxRank = 32;  // IDX allows 255; a deeper header is taken as corrupt

struct IdxType {
  uint8_t code;
  DType dtype;
};
constexpr IdxType kIdxTypes[] = {
    {0x08, DType::kU8}, {0x09, DType::kS8}, {0x0C, DType::kS32}, {0x0D, DType::kF32}};

bool has_gzip_magic(std::FILE* f) {
  unsigned char magic[2] = {0, 0};
  size_t n = std::fread(magic, 1, 2, f);
  std::rewind(f);
  return n == 2 && magic[0] == 0x1f && magic[1] == 0x8b;
}

// zlib's error text without the "<path>: " it puts in front.
std::string gz_message(gzFile gz, const std::string& path, int* code) {
  std::string msg = gzerror(gz, code);
  if (msg.starts_with(path + ": ")) msg.erase(0, path.size() + 2);
  return msg;
}

std::vector<uint8_t> read_gzip(const std::string& path) {
  gzFile gz = gzopen(path.c_str(), "rb");
  if (!gz) LOWBIT_THROW(IoError, "read_idx: '", path, "': cannot open: ", std::strerror(errno));
  std::vector<uint8_t> bytes;
  for (;;) {
    size_t old = bytes.size();
    bytes.resize(old + kChunk);
    int n = gzread(gz, bytes.data() + old, static_cast<unsigned>(kChunk));
    if (n < 0) {
      int code = 0;
      std::string msg = gz_message(gz, path, &code);
      gzclose(gz);
      LOWBIT_THROW(IoError, "read_idx: '", path, "': corrupt gzip stream: ", msg);
    }
    bytes.resize(old + static_cast<size_t>(n));
    if (n == 0) break;
  }
  // A cut-off stream ends quietly (gzread returns 0 and keeps Z_BUF_ERROR so that a growing
  // file could be read on); for us it is corruption.
  int code = Z_OK;
  std::string msg = gz_message(gz, path, &code);
  gzclose(gz);
  if (code != Z_OK) LOWBIT_THROW(IoError, "read_idx: '", path, "': corrupt gzip stream: ", msg);
  return bytes;
}

// The whole file, gunzipped if it is gzip-compressed.
std::vector<uint8_t> read_file(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) LOWBIT_THROW(IoError, "read_idx: '", path, "': cannot open: ", std::strerror(errno));
  if (std::string_view(path).ends_with(".gz") || has_gzip_magic(f)) {
    std::fclose(f);
    return read_gzip(path);
  }
  std::vector<uint8_t> bytes;
  for (;;) {
    size_t old = bytes.size();
    bytes.resize(old + kChunk);
    size_t n = std::fread(bytes.data() + old, 1, kChunk, f);
    bytes.resize(old + n);
    if (n < kChunk) break;
  }
  const int err = std::ferror(f) ? errno : 0;
  std::fclose(f);
  if (err) LOWBIT_THROW(IoError, "read_idx: '", path, "': read error: ", std::strerror(err));
  return bytes;
}

uint32_t load_be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

void store_be32(uint32_t v, uint8_t* p) {
  p[0] = static_cast<uint8_t>(v >> 24);
  p[1] = static_cast<uint8_t>(v >> 16);
  p[2] = static_cast<uint8_t>(v >> 8);
  p[3] = static_cast<uint8_t>(v);
}

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08X", v);
  return buf;
}

// The first of `dir/<name>` and `dir/<name>.gz` (for each prefix) that exists.
std::string find_mnist_file(const std::string& dir, const std::vector<std::string>& prefixes,
                            const char* suffix) {
  namespace fs = std::filesystem;
  std::string tried;
  for (const std::string& prefix : prefixes) {
    for (const char* ext : {"", ".gz"}) {
      std::string name = prefix + suffix + ext;
      fs::path p = fs::path(dir) / name;
      std::error_code ec;
      if (fs::is_regular_file(p, ec)) return p.string();
      tried += (tried.empty() ? "'" : ", '") + name + "'";
    }
  }
  LOWBIT_THROW(IoError, "load_mnist: '", dir, "': expected one of ", tried, " but found none");
}

}  // namespace

Tensor read_idx(const std::string& path) {
  std::vector<uint8_t> bytes = read_file(path);
  if (bytes.size() < 4)
    LOWBIT_THROW(IoError, "read_idx: '", path, "': truncated header: expected at least 4 bytes ",
                 "but found ", bytes.size());
  uint32_t magic = load_be32(bytes.data());
  const uint8_t type = bytes[2];
  const int rank = bytes[3];
  if (bytes[0] != 0 || bytes[1] != 0 || rank > kMaxRank)
    LOWBIT_THROW(IoError, "read_idx: '", path, "': bad magic: expected 0x0000TTNN (an IDX file, ",
                 "TT = element type, NN <= ", kMaxRank, " dims) but found ", hex32(magic));
  if (type == 0x0B || type == 0x0E)
    LOWBIT_THROW(UnsupportedError, "read_idx: '", path, "': IDX element type ",
                 type == 0x0B ? "int16 (0x0B)" : "float64 (0x0E)",
                 " is not supported; expected u8 (0x08), s8 (0x09), s32 (0x0C) or f32 (0x0D)");
  const IdxType* it = nullptr;
  for (const IdxType& t : kIdxTypes)
    if (t.code == type) it = &t;
  if (!it)
    LOWBIT_THROW(IoError, "read_idx: '", path, "': bad magic: expected element type 0x08, 0x09, ",
                 "0x0B, 0x0C, 0x0D or 0x0E but found ", hex32(magic));

  const size_t header = 4 + 4 * static_cast<size_t>(rank);
  if (bytes.size() < header)
    LOWBIT_THROW(IoError, "read_idx: '", path, "': truncated header: expected ", header,
                 " bytes for ", rank, " dims but found ", bytes.size());
  std::vector<int64_t> dims(rank);
  const size_t elem = dtype_size(it->dtype);
  // Every dim is < 2^32 and the rank is small, but the product can still overflow.
  size_t expected = elem;
  bool too_big = false;
  for (int i = 0; i < rank; ++i) {
    dims[i] = load_be32(bytes.data() + 4 + 4 * i);
    size_t d = static_cast<size_t>(dims[i]);
    if (d != 0 && expected > std::numeric_limits<size_t>::max() / d) too_big = true;
    expected = too_big ? expected : expected * d;
  }
  Shape shape(dims);
  const size_t found = bytes.size() - header;
  if (too_big || expected != found)
    LOWBIT_THROW(IoError, "read_idx: '", path, "': ", found < expected ? "truncated: " : "",
                 "expected ", too_big ? std::string("more than 2^64") : std::to_string(expected),
                 " bytes of data for ", dtype_name(it->dtype), " ", shape.str(), " but found ",
                 found);

  Tensor t(shape, it->dtype);
  const uint8_t* src = bytes.data() + header;
  if (elem == 1) {
    if (found) std::memcpy(t.raw(), src, found);
  } else {
    auto* dst = static_cast<uint32_t*>(t.raw());
    for (int64_t i = 0; i < t.numel(); ++i) dst[i] = load_be32(src + 4 * i);
  }
  return t;
}

void write_idx(const std::string& path, const Tensor& t) {
  const IdxType* it = nullptr;
  for (const IdxType& k : kIdxTypes)
    if (t.defined() && k.dtype == t.dtype()) it = &k;
  if (!it)
    LOWBIT_THROW(UnsupportedError, "write_idx: '", path,
                 "': expected a tensor of dtype u8, s8, s32 or f32 but found ",
                 t.defined() ? dtype_name(t.dtype()) : "an undefined tensor");
  if (t.rank() > kMaxRank)
    LOWBIT_THROW(UnsupportedError, "write_idx: '", path, "': expected rank <= ", kMaxRank,
                 " but found ", t.rank());
  std::vector<uint8_t> bytes(4 + 4 * static_cast<size_t>(t.rank()) + t.nbytes());
  store_be32(uint32_t{it->code} << 8 | static_cast<uint32_t>(t.rank()), bytes.data());
  for (int i = 0; i < t.rank(); ++i) {
    if (t.dim(i) > int64_t{std::numeric_limits<uint32_t>::max()})
      LOWBIT_THROW(UnsupportedError, "write_idx: '", path, "': expected dims < 2^32 but found ",
                   t.shape().str());
    store_be32(static_cast<uint32_t>(t.dim(i)), bytes.data() + 4 + 4 * i);
  }
  uint8_t* dst = bytes.data() + 4 + 4 * t.rank();
  if (dtype_size(t.dtype()) == 1) {
    if (t.nbytes()) std::memcpy(dst, t.raw(), t.nbytes());
  } else {
    const auto* src = static_cast<const uint32_t*>(t.raw());
    for (int64_t i = 0; i < t.numel(); ++i) store_be32(src[i], dst + 4 * i);
  }

  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) LOWBIT_THROW(IoError, "write_idx: '", path, "': cannot open: ", std::strerror(errno));
  size_t n = std::fwrite(bytes.data(), 1, bytes.size(), f);
  int closed = std::fclose(f);
  if (n != bytes.size() || closed != 0)
    LOWBIT_THROW(IoError, "write_idx: '", path, "': write failed after ", n, " of ", bytes.size(),
                 " bytes");
}

MnistSplit load_mnist(const std::string& dir, bool train) {
  const std::vector<std::string> prefixes =
      train ? std::vector<std::string>{"train"} : std::vector<std::string>{"test", "t10k"};
  const std::string images_path = find_mnist_file(dir, prefixes, "-images-idx3-ubyte");
  const std::string labels_path = find_mnist_file(dir, prefixes, "-labels-idx1-ubyte");
  Tensor images = read_idx(images_path);
  Tensor labels = read_idx(labels_path);
  if (images.dtype() != DType::kU8 || images.rank() != 3)
    LOWBIT_THROW(IoError, "load_mnist: '", images_path, "': expected u8 images [N,H,W] but found ",
                 dtype_name(images.dtype()), " ", images.shape().str());
  if (labels.dtype() != DType::kU8 || labels.rank() != 1 || labels.dim(0) != images.dim(0))
    LOWBIT_THROW(IoError, "load_mnist: '", labels_path, "': expected u8 labels [", images.dim(0),
                 "] (one per image) but found ", dtype_name(labels.dtype()), " ",
                 labels.shape().str());

  MnistSplit split;
  split.images = Tensor({images.dim(0), images.dim(1), images.dim(2), 1}, DType::kF32);
  const uint8_t* px = images.data<uint8_t>();
  float* out = split.images.data<float>();
  for (int64_t i = 0; i < images.numel(); ++i) out[i] = static_cast<float>(px[i]) / 255.0f;

  split.labels = Tensor({labels.dim(0)}, DType::kS64);
  const uint8_t* lb = labels.data<uint8_t>();
  int64_t* lo = split.labels.data<int64_t>();
  for (int64_t i = 0; i < labels.numel(); ++i) {
    if (lb[i] > 9)
      LOWBIT_THROW(IoError, "load_mnist: '", labels_path, "': label ", i,
                   ": expected a digit 0..9 but found ", int{lb[i]});
    lo[i] = lb[i];
  }
  return split;
}

}  // namespace lowbit
