#include "lowbit/data/npy.h"

#include <zlib.h>

#include <bit>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <optional>
#include <string_view>
#include <vector>

namespace lowbit::data {
namespace {

// The element bytes of .npy and ZIP fields are little-endian; we copy them as they are.
static_assert(std::endian::native == std::endian::little, "npy.cc assumes a little-endian host");

using Bytes = std::vector<uint8_t>;
constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;
constexpr size_t kChunk = size_t{1} << 16;

Bytes read_file(const std::string& path, const char* who) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) LOWBIT_THROW(IoError, who, ": '", path, "': cannot open: ", std::strerror(errno));
  Bytes bytes;
  for (;;) {
    size_t old = bytes.size();
    bytes.resize(old + kChunk);
    size_t n = std::fread(bytes.data() + old, 1, kChunk, f);
    bytes.resize(old + n);
    if (n < kChunk) break;
  }
  const int err = std::ferror(f) ? errno : 0;
  std::fclose(f);
  if (err) LOWBIT_THROW(IoError, who, ": '", path, "': read error: ", std::strerror(err));
  return bytes;
}

void write_file(const std::string& path, const Bytes& bytes, const char* who) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) LOWBIT_THROW(IoError, who, ": '", path, "': cannot open: ", std::strerror(errno));
  size_t n = bytes.empty() ? 0 : std::fwrite(bytes.data(), 1, bytes.size(), f);
  int closed = std::fclose(f);
  if (n != bytes.size() || closed != 0)
    LOWBIT_THROW(IoError, who, ": '", path, "': write failed after ", n, " of ", bytes.size(),
                 " bytes");
}

uint16_t load16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | p[1] << 8); }
uint32_t load32(const uint8_t* p) {
  return uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24;
}
uint64_t load64(const uint8_t* p) { return uint64_t{load32(p)} | uint64_t{load32(p + 4)} << 32; }
void put16(Bytes& b, uint32_t v) {
  b.push_back(static_cast<uint8_t>(v));
  b.push_back(static_cast<uint8_t>(v >> 8));
}
void put32(Bytes& b, uint32_t v) {
  put16(b, v & 0xFFFF);
  put16(b, v >> 16);
}

// ---- .npy ----

struct NpyType {
  const char* descr;  // as written (without the byte-order character)
  DType dtype;
  size_t itemsize;  // in the file
};
constexpr NpyType kNpyTypes[] = {{"f4", DType::kF32, 4},  {"f8", DType::kF32, 8},
                                 {"i8", DType::kS64, 8},  {"i4", DType::kS32, 4},
                                 {"u1", DType::kU8, 1},   {"i1", DType::kS8, 1},
                                 {"b1", DType::kBool, 1}, {"i2", DType::kS16, 2}};

const char* npy_descr(DType t) {
  switch (t) {
    case DType::kF32:
      return "<f4";
    case DType::kS64:
      return "<i8";
    case DType::kS32:
      return "<i4";
    case DType::kU8:
      return "|u1";
    case DType::kS8:
      return "|i1";
    case DType::kS16:
      return "<i2";
    case DType::kBool:
      return "|b1";
  }
  return "?";
}

struct NpyHeader {
  std::string descr;
  bool fortran = false;
  std::vector<int64_t> shape;
};

// The header dict is a Python literal; we accept exactly what NumPy writes (and what
// np.lib.format.read_array_header accepts): string keys, a string descr, True/False, a tuple of
// non-negative ints. Throws a plain string describing the problem.
class HeaderParser {
 public:
  explicit HeaderParser(std::string_view s) : s_(s) {}

  NpyHeader parse() {
    NpyHeader h;
    bool seen_descr = false, seen_fortran = false, seen_shape = false;
    expect('{');
    for (;;) {
      skip_ws();
      if (eat('}')) break;
      std::string key = string_literal("a quoted key");
      expect(':');
      skip_ws();
      if (key == "descr") {
        if (peek() == '[') fail("structured dtypes (a list descr)", /*unsupported=*/true);
        h.descr = string_literal("a quoted descr");
        seen_descr = true;
      } else if (key == "fortran_order") {
        if (word("True")) {
          h.fortran = true;
        } else if (word("False")) {
          h.fortran = false;
        } else {
          fail("expected True or False for 'fortran_order'");
        }
        seen_fortran = true;
      } else if (key == "shape") {
        h.shape = tuple();
        seen_shape = true;
      } else {
        fail("unexpected key '" + key + "'");
      }
      skip_ws();
      if (eat(',')) continue;
      skip_ws();
      expect('}');
      break;
    }
    if (!seen_descr || !seen_fortran || !seen_shape)
      fail("expected the keys 'descr', 'fortran_order' and 'shape'");
    skip_ws();
    if (pos_ != s_.size()) fail("unexpected text after the dict");
    return h;
  }

  struct Failure {
    std::string what;
    bool unsupported;
  };

 private:
  [[noreturn]] void fail(const std::string& what, bool unsupported = false) {
    throw Failure{what, unsupported};
  }
  char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
  void skip_ws() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n')) ++pos_;
  }
  bool eat(char c) {
    if (peek() != c) return false;
    ++pos_;
    return true;
  }
  void expect(char c) {
    skip_ws();
    if (!eat(c)) fail(std::string("expected '") + c + "' at offset " + std::to_string(pos_));
  }
  bool word(std::string_view w) {
    if (s_.substr(pos_, w.size()) != w) return false;
    pos_ += w.size();
    return true;
  }
  std::string string_literal(const char* what) {
    skip_ws();
    const char q = peek();
    if (q != '\'' && q != '"') fail(std::string("expected ") + what);
    size_t end = s_.find(q, pos_ + 1);
    if (end == std::string_view::npos) fail("unterminated string");
    std::string out(s_.substr(pos_ + 1, end - pos_ - 1));
    pos_ = end + 1;
    return out;
  }
  std::vector<int64_t> tuple() {
    std::vector<int64_t> dims;
    expect('(');
    for (;;) {
      skip_ws();
      if (eat(')')) break;
      if (peek() < '0' || peek() > '9') fail("expected a non-negative integer in 'shape'");
      int64_t v = 0;
      while (peek() >= '0' && peek() <= '9') {
        if (v > (std::numeric_limits<int64_t>::max() - 9) / 10) fail("a dim in 'shape' overflows");
        v = v * 10 + (s_[pos_++] - '0');
      }
      eat('L');  // Python 2 longs
      dims.push_back(v);
      skip_ws();
      if (eat(',')) continue;
      expect(')');
      break;
    }
    return dims;
  }

  std::string_view s_;
  size_t pos_ = 0;
};

// Element [c-order index] <- element [Fortran-order index], `elem` bytes each.
void fortran_to_c(const uint8_t* src, uint8_t* dst, const std::vector<int64_t>& dims, size_t elem,
                  int64_t numel) {
  const int rank = static_cast<int>(dims.size());
  std::vector<int64_t> fstride(rank), idx(rank, 0);
  int64_t s = 1;
  for (int k = 0; k < rank; ++k) fstride[k] = s, s *= dims[k];
  int64_t off = 0;  // Fortran offset of idx
  for (int64_t i = 0; i < numel; ++i) {
    std::memcpy(dst + i * elem, src + off * elem, elem);
    for (int k = rank - 1; k >= 0; --k) {  // odometer over the C-order index
      if (++idx[k] < dims[k]) {
        off += fstride[k];
        break;
      }
      off -= (dims[k] - 1) * fstride[k];
      idx[k] = 0;
    }
  }
}

// Parses one .npy image; `where` names it in messages ("'a.npy'" or "'a.npz', member 'x.npy'").
Tensor parse_npy(const uint8_t* p, size_t n, const std::string& where, const char* who) {
  if (n < kMagicLen || std::memcmp(p, kMagic, kMagicLen) != 0) {
    std::string found;
    for (size_t i = 0; i < std::min<size_t>(n, kMagicLen); ++i) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "%s%02x", i ? " " : "", p[i]);
      found += buf;
    }
    LOWBIT_THROW(IoError, who, ": ", where, ": bad magic: expected \"\\x93NUMPY\" (a .npy file) ",
                 "but found ", n < kMagicLen ? "only " + std::to_string(n) + " bytes" : found);
  }
  if (n < kMagicLen + 2)
    LOWBIT_THROW(IoError, who, ": ", where, ": truncated header: expected at least ", kMagicLen + 2,
                 " bytes but found ", n);
  const int major = p[6], minor = p[7];
  size_t len_bytes = 0;
  if (major == 1) {
    len_bytes = 2;
  } else if (major == 2 || major == 3) {
    len_bytes = 4;
  } else {
    LOWBIT_THROW(UnsupportedError, who, ": ", where, ": .npy format version ", major, ".", minor,
                 " is not supported; expected 1.0, 2.0 or 3.0");
  }
  const size_t pre = kMagicLen + 2 + len_bytes;
  if (n < pre)
    LOWBIT_THROW(IoError, who, ": ", where, ": truncated header: expected at least ", pre,
                 " bytes but found ", n);
  const size_t header_len = len_bytes == 2 ? load16(p + 8) : load32(p + 8);
  if (n - pre < header_len)
    LOWBIT_THROW(IoError, who, ": ", where, ": truncated header: expected ", header_len,
                 " header bytes but found ", n - pre);
  const std::string_view text(reinterpret_cast<const char*>(p + pre), header_len);

  NpyHeader h;
  try {
    h = HeaderParser(text).parse();
  } catch (const HeaderParser::Failure& f) {
    std::string shown(text.substr(0, text.find_last_not_of(" \n") + 1));
    if (f.unsupported)
      LOWBIT_THROW(UnsupportedError, who, ": ", where, ": ", f.what, " are not supported: ", shown);
    LOWBIT_THROW(IoError, who, ": ", where, ": bad header: ", f.what, ": ", shown);
  }

  const char order = h.descr.empty() ? '\0' : h.descr[0];
  const std::string code = h.descr.size() > 1 ? h.descr.substr(1) : "";
  const NpyType* type = nullptr;
  for (const NpyType& t : kNpyTypes)
    if (code == t.descr) type = &t;
  // Byte order does not matter for one-byte types (NumPy writes '|').
  const bool little = order == '<' || order == '|' ||
                      (type && type->itemsize == 1 && (order == '=' || order == '>'));
  if (order == '>' && type && type->itemsize > 1)
    LOWBIT_THROW(UnsupportedError, who, ": ", where, ": big-endian data ('", h.descr,
                 "') is not supported; convert it in NumPy with arr.astype('<", code, "')");
  if (!type || !little)
    LOWBIT_THROW(UnsupportedError, who, ": ", where, ": dtype '", h.descr,
                 "' is not supported; expected one of '<f4', '<f8' (read as f32), '<i8', '<i4', "
                 "'|u1', '|i1', '|b1' (convert in NumPy with arr.astype('<f4'))");

  // numel * itemsize without overflow.
  size_t expected = type->itemsize;
  bool too_big = false;
  int64_t numel = 1;
  for (int64_t d : h.shape) {
    const size_t ud = static_cast<size_t>(d);
    if (ud != 0 && (expected > std::numeric_limits<size_t>::max() / ud ||
                    numel > std::numeric_limits<int64_t>::max() / d))
      too_big = true;
    if (!too_big) expected *= ud, numel *= d;
  }
  Shape shape(h.shape);
  const size_t found = n - pre - header_len;
  if (too_big || expected != found)
    LOWBIT_THROW(IoError, who, ": ", where, ": ", found < expected || too_big ? "truncated: " : "",
                 "expected ", too_big ? std::string("more than 2^64") : std::to_string(expected),
                 " bytes of data for '", h.descr, "' ", shape.str(), " but found ", found);

  const uint8_t* src = p + pre + header_len;
  Tensor t(shape, type->dtype);
  const size_t out_elem = dtype_size(type->dtype);
  // Convert into `dst` in file order, then (Fortran) reorder.
  Bytes fortran_tmp;
  uint8_t* dst = static_cast<uint8_t*>(t.raw());
  if (h.fortran && numel > 1) {
    fortran_tmp.resize(t.nbytes());
    dst = fortran_tmp.data();
  }
  if (code == "f8") {
    float* out = reinterpret_cast<float*>(dst);
    for (int64_t i = 0; i < numel; ++i) {
      double v;
      std::memcpy(&v, src + 8 * i, 8);
      out[i] = static_cast<float>(v);
    }
  } else {
    if (expected) std::memcpy(dst, src, expected);
    if (type->dtype == DType::kBool)
      for (int64_t i = 0; i < numel; ++i)
        if (src[i] > 1)
          LOWBIT_THROW(IoError, who, ": ", where, ": element ", i,
                       ": expected a bool byte 0 or 1 but found ", int{src[i]});
  }
  if (!fortran_tmp.empty())
    fortran_to_c(fortran_tmp.data(), static_cast<uint8_t*>(t.raw()), h.shape, out_elem, numel);
  return t;
}

Bytes encode_npy(const Tensor& t) {
  std::string header =
      std::string("{'descr': '") + npy_descr(t.dtype()) + "', 'fortran_order': False, 'shape': (";
  for (int i = 0; i < t.rank(); ++i) {
    header += std::to_string(t.dim(i));
    if (i + 1 < t.rank() || t.rank() == 1) header += ",";
    if (i + 1 < t.rank()) header += " ";
  }
  header += "), }";
  // As NumPy's _wrap_header: pad with 1..64 spaces so that magic + version + length + header +
  // '\n' is a multiple of 64 (the data starts aligned), then '\n'.
  size_t len_bytes = 2;
  size_t total = kMagicLen + 2 + len_bytes + header.size() + 1;
  if (header.size() + 1 + 64 - total % 64 > 0xFFFF) {
    len_bytes = 4;
    total = kMagicLen + 2 + len_bytes + header.size() + 1;
  }
  header.append(64 - total % 64, ' ');
  header += '\n';

  Bytes out(kMagic, kMagic + kMagicLen);
  out.push_back(len_bytes == 2 ? 1 : 2);
  out.push_back(0);
  if (len_bytes == 2) {
    put16(out, static_cast<uint32_t>(header.size()));
  } else {
    put32(out, static_cast<uint32_t>(header.size()));
  }
  out.insert(out.end(), header.begin(), header.end());
  const auto* data = static_cast<const uint8_t*>(t.raw());
  out.insert(out.end(), data, data + t.nbytes());
  return out;
}

// ---- .npz (ZIP) ----

constexpr uint32_t kLocalSig = 0x04034b50;
constexpr uint32_t kCentralSig = 0x02014b50;
constexpr uint32_t kEndSig = 0x06054b50;
constexpr uint32_t kZip64EndSig = 0x06064b50;
constexpr uint32_t kZip64LocatorSig = 0x07064b50;
constexpr size_t kEndLen = 22;

struct Member {
  std::string name;
  uint16_t flags, method;
  uint32_t crc;
  uint64_t csize, usize, offset;
};

// Reads the central directory: the one authoritative list of members, sizes and offsets (local
// headers may hold placeholders, e.g. NumPy's force_zip64 local headers).
std::vector<Member> read_central_directory(const Bytes& b, const std::string& path) {
  auto damaged = [&](const std::string& what) {
    LOWBIT_THROW(IoError, "read_npz: '", path, "': damaged archive: ", what);
  };
  if (b.size() < kEndLen)
    LOWBIT_THROW(IoError, "read_npz: '", path, "': truncated: expected a ZIP archive (at least ",
                 kEndLen, " bytes) but found ", b.size(), " bytes");
  // The end record sits at the end, followed only by its comment (<= 65535 bytes).
  size_t end = SIZE_MAX;
  const size_t lo = b.size() > kEndLen + 0xFFFF ? b.size() - kEndLen - 0xFFFF : 0;
  for (size_t i = b.size() - kEndLen + 1; i-- > lo;) {
    if (load32(&b[i]) == kEndSig && i + kEndLen + load16(&b[i + 20]) == b.size()) {
      end = i;
      break;
    }
  }
  if (end == SIZE_MAX)
    LOWBIT_THROW(IoError, "read_npz: '", path, "': bad magic: expected a ZIP archive (an end of ",
                 "central directory record) but found none",
                 b.size() >= 4 && load32(b.data()) == kLocalSig ? " (truncated?)" : "");
  uint64_t count = load16(&b[end + 10]);
  uint64_t cd_size = load32(&b[end + 12]);
  uint64_t cd_offset = load32(&b[end + 16]);
  if (load16(&b[end + 4]) != 0 || load16(&b[end + 6]) != 0)
    LOWBIT_THROW(UnsupportedError, "read_npz: '", path, "': multi-disk archives are not supported");
  if (count == 0xFFFF || cd_size == 0xFFFFFFFF || cd_offset == 0xFFFFFFFF) {
    if (end < 20 || load32(&b[end - 20]) != kZip64LocatorSig) damaged("missing ZIP64 locator");
    const uint64_t z = load64(&b[end - 20 + 8]);
    if (z > b.size() || b.size() - z < 56 || load32(&b[z]) != kZip64EndSig)
      damaged("bad ZIP64 end of central directory record");
    count = load64(&b[z + 32]);
    cd_size = load64(&b[z + 40]);
    cd_offset = load64(&b[z + 48]);
  }
  if (cd_offset > b.size() || cd_size > b.size() - cd_offset)
    damaged("the central directory (offset " + std::to_string(cd_offset) + ", " +
            std::to_string(cd_size) + " bytes) lies outside the " + std::to_string(b.size()) +
            "-byte file");

  std::vector<Member> members;
  size_t p = cd_offset;
  const size_t cd_end = cd_offset + cd_size;
  for (uint64_t k = 0; k < count; ++k) {
    if (cd_end - p < 46 || load32(&b[p]) != kCentralSig)
      damaged("central directory entry " + std::to_string(k) + " is malformed");
    Member m;
    m.flags = load16(&b[p + 8]);
    m.method = load16(&b[p + 10]);
    m.crc = load32(&b[p + 16]);
    m.csize = load32(&b[p + 20]);
    m.usize = load32(&b[p + 24]);
    const size_t name_len = load16(&b[p + 28]), extra_len = load16(&b[p + 30]),
                 comment_len = load16(&b[p + 32]);
    m.offset = load32(&b[p + 42]);
    if (cd_end - p - 46 < name_len + extra_len + comment_len)
      damaged("central directory entry " + std::to_string(k) + " is truncated");
    m.name.assign(reinterpret_cast<const char*>(&b[p + 46]), name_len);
    // ZIP64 extended information: the 8-byte values whose 4-byte fields are 0xFFFFFFFF, in order.
    const uint8_t* e = &b[p + 46 + name_len];
    const uint8_t* e_end = e + extra_len;
    while (e_end - e >= 4) {
      const uint16_t id = load16(e), sz = load16(e + 2);
      if (e_end - e - 4 < sz) break;
      if (id == 0x0001) {
        const uint8_t* f = e + 4;
        const uint8_t* f_end = f + sz;
        for (uint64_t* v : {&m.usize, &m.csize, &m.offset}) {
          if (*v != 0xFFFFFFFF) continue;
          if (f_end - f < 8) damaged("member '" + m.name + "': short ZIP64 extra field");
          *v = load64(f);
          f += 8;
        }
      }
      e += 4 + sz;
    }
    members.push_back(std::move(m));
    p += 46 + name_len + extra_len + comment_len;
  }
  return members;
}

Bytes extract(const Bytes& b, const Member& m, const std::string& path) {
  auto fail = [&](const std::string& what) {
    LOWBIT_THROW(IoError, "read_npz: '", path, "', member '", m.name, "': ", what);
  };
  if (m.flags & 1)
    LOWBIT_THROW(UnsupportedError, "read_npz: '", path, "', member '", m.name,
                 "': encrypted members are not supported");
  if (m.method != 0 && m.method != 8)
    LOWBIT_THROW(UnsupportedError, "read_npz: '", path, "', member '", m.name,
                 "': compression method ", m.method,
                 " is not supported; expected 0 (stored) or 8 (deflated)");
  if (m.offset > b.size() || b.size() - m.offset < 30 || load32(&b[m.offset]) != kLocalSig)
    fail("bad local header at offset " + std::to_string(m.offset));
  const uint64_t start = m.offset + 30 + load16(&b[m.offset + 26]) + load16(&b[m.offset + 28]);
  if (start > b.size() || b.size() - start < m.csize)
    fail("truncated: expected " + std::to_string(m.csize) + " bytes of data but found " +
         std::to_string(start > b.size() ? 0 : b.size() - start));
  if (m.usize > (uint64_t{1} << 40)) fail("implausible size " + std::to_string(m.usize));
  const uint8_t* src = b.data() + start;

  Bytes out;
  if (m.method == 0) {
    if (m.csize != m.usize)
      fail("stored member with different sizes (" + std::to_string(m.csize) + " vs " +
           std::to_string(m.usize) + ")");
    out.assign(src, src + m.csize);
  } else {
    out.resize(m.usize);
    z_stream zs{};
    if (inflateInit2(&zs, -MAX_WBITS) != Z_OK) fail("inflateInit2 failed");
    // Feed in pieces: avail_in/avail_out are 32-bit.
    uint64_t in_left = m.csize, out_left = m.usize;
    zs.next_in = const_cast<Bytef*>(src);
    zs.next_out = out.data();
    int rc = Z_OK;
    while (rc == Z_OK) {
      if (zs.avail_in == 0 && in_left) {
        zs.avail_in = static_cast<uInt>(std::min<uint64_t>(in_left, UINT_MAX));
        in_left -= zs.avail_in;
      }
      if (zs.avail_out == 0 && out_left) {
        zs.avail_out = static_cast<uInt>(std::min<uint64_t>(out_left, UINT_MAX));
        out_left -= zs.avail_out;
      }
      rc = inflate(&zs, Z_NO_FLUSH);
      const bool can_refill = (zs.avail_in == 0 && in_left) || (zs.avail_out == 0 && out_left);
      if (rc == Z_BUF_ERROR && can_refill) rc = Z_OK;
    }
    const uint64_t produced = zs.total_out;
    std::string msg = zs.msg ? zs.msg : "";
    inflateEnd(&zs);
    if (rc != Z_STREAM_END)
      fail("corrupt deflate stream" + (msg.empty() ? std::string() : ": " + msg));
    if (produced != m.usize)
      fail("expected " + std::to_string(m.usize) + " bytes after inflating but found " +
           std::to_string(produced));
  }
  uLong crc = crc32(0L, Z_NULL, 0);
  for (uint64_t done = 0; done < out.size();) {
    const uInt piece = static_cast<uInt>(std::min<uint64_t>(out.size() - done, UINT_MAX));
    crc = crc32(crc, out.data() + done, piece);
    done += piece;
  }
  if (crc != m.crc) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "CRC mismatch: expected %08x but found %08lx", m.crc, crc);
    fail(buf);
  }
  return out;
}

}  // namespace

Tensor read_npy(const std::string& path) {
  Bytes b = read_file(path, "read_npy");
  return parse_npy(b.data(), b.size(), "'" + path + "'", "read_npy");
}

void write_npy(const std::string& path, const Tensor& t) {
  if (!t.defined())
    LOWBIT_THROW(ValueError, "write_npy: '", path, "': expected a defined tensor but found an ",
                 "undefined one");
  write_file(path, encode_npy(t), "write_npy");
}

std::map<std::string, Tensor> read_npz(const std::string& path) {
  Bytes b = read_file(path, "read_npz");
  std::map<std::string, Tensor> out;
  for (const Member& m : read_central_directory(b, path)) {
    if (!m.name.ends_with(".npy")) continue;
    Bytes data = extract(b, m, path);
    out[m.name.substr(0, m.name.size() - 4)] =
        parse_npy(data.data(), data.size(), "'" + path + "', member '" + m.name + "'", "read_npz");
  }
  return out;
}

void write_npz(const std::string& path, const std::map<std::string, Tensor>& arrays,
               bool compressed) {
  constexpr uint64_t kLimit = 0xFFFFFFFF;
  Bytes zip, central;
  for (const auto& [key, t] : arrays) {
    if (key.empty() || !t.defined())
      LOWBIT_THROW(ValueError, "write_npz: '", path, "': entry '", key,
                   "': expected a non-empty key and a defined tensor");
    const std::string name = key + ".npy";
    if (name.size() > 0xFFFF)
      LOWBIT_THROW(ValueError, "write_npz: '", path, "': key '", key.substr(0, 40),
                   "...' is too long");
    Bytes data = encode_npy(t);
    if (data.size() >= kLimit)
      LOWBIT_THROW(UnsupportedError, "write_npz: '", path, "': entry '", key, "' (", data.size(),
                   " bytes) would need ZIP64; expected members under 4 GiB");
    const uint32_t crc = static_cast<uint32_t>(
        crc32(crc32(0L, Z_NULL, 0), data.data(), static_cast<uInt>(data.size())));
    const uint32_t usize = static_cast<uint32_t>(data.size());
    if (compressed) {
      Bytes packed(compressBound(static_cast<uLong>(data.size())) + 64);
      z_stream zs{};
      if (deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -MAX_WBITS, 8, Z_DEFAULT_STRATEGY) !=
          Z_OK)
        LOWBIT_THROW(IoError, "write_npz: '", path, "': deflateInit2 failed");
      zs.next_in = data.data();
      zs.avail_in = static_cast<uInt>(data.size());
      zs.next_out = packed.data();
      zs.avail_out = static_cast<uInt>(packed.size());
      const int rc = deflate(&zs, Z_FINISH);
      packed.resize(zs.total_out);
      deflateEnd(&zs);
      if (rc != Z_STREAM_END)
        LOWBIT_THROW(IoError, "write_npz: '", path, "': deflate failed for entry '", key, "'");
      data = std::move(packed);
    }
    const uint64_t offset = zip.size();
    if (offset >= kLimit)
      LOWBIT_THROW(UnsupportedError, "write_npz: '", path,
                   "': the archive would need ZIP64; expected under 4 GiB");
    const uint16_t method = compressed ? 8 : 0;
    // Local header: version 2.0, no flags, 1980-01-01 00:00 (reproducible bytes).
    put32(zip, kLocalSig);
    put16(zip, 20);
    put16(zip, 0);
    put16(zip, method);
    put16(zip, 0);
    put16(zip, 0x0021);
    put32(zip, crc);
    put32(zip, static_cast<uint32_t>(data.size()));
    put32(zip, usize);
    put16(zip, static_cast<uint32_t>(name.size()));
    put16(zip, 0);
    zip.insert(zip.end(), name.begin(), name.end());
    zip.insert(zip.end(), data.begin(), data.end());

    put32(central, kCentralSig);
    put16(central, 20);
    put16(central, 20);
    put16(central, 0);
    put16(central, method);
    put16(central, 0);
    put16(central, 0x0021);
    put32(central, crc);
    put32(central, static_cast<uint32_t>(data.size()));
    put32(central, usize);
    put16(central, static_cast<uint32_t>(name.size()));
    put16(central, 0);  // extra
    put16(central, 0);  // comment
    put16(central, 0);  // disk
    put16(central, 0);  // internal attributes
    put32(central, 0);  // external attributes
    put32(central, static_cast<uint32_t>(offset));
    central.insert(central.end(), name.begin(), name.end());
  }
  if (arrays.size() >= 0xFFFF || zip.size() + central.size() >= kLimit)
    LOWBIT_THROW(UnsupportedError, "write_npz: '", path,
                 "': the archive would need ZIP64; expected under 4 GiB and 65535 entries");
  const uint32_t cd_offset = static_cast<uint32_t>(zip.size());
  zip.insert(zip.end(), central.begin(), central.end());
  put32(zip, kEndSig);
  put16(zip, 0);
  put16(zip, 0);
  put16(zip, static_cast<uint32_t>(arrays.size()));
  put16(zip, static_cast<uint32_t>(arrays.size()));
  put32(zip, static_cast<uint32_t>(central.size()));
  put32(zip, cd_offset);
  put16(zip, 0);
  write_file(path, zip, "write_npz");
}

const Tensor& npz_get(const std::map<std::string, Tensor>& arrays, const std::string& key,
                      const std::string& path) {
  auto it = arrays.find(key);
  if (it != arrays.end()) return it->second;
  std::string keys;
  for (const auto& [k, t] : arrays) keys += (keys.empty() ? "'" : ", '") + k + "'";
  LOWBIT_THROW(IoError, "read_npz: '", path, "': no array '", key,
               "'; available: ", keys.empty() ? std::string("none") : keys);
}

}  // namespace lowbit::data
