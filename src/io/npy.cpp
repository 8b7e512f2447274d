// NumPy .npy files: format versions 1.0, 2.0 and 3.0, dtypes '<f4' and '<f8',
// C order. The header is a Python dict literal, parsed here by a small strict
// parser that accepts exactly what numpy.lib.format writes (and whitespace
// variations of it) and rejects everything else with a reason.
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "io/input.hpp"
#include "measattn/error.hpp"
#include "measattn/io.hpp"

namespace measattn {

static_assert(std::endian::native == std::endian::little,
              "measattn's file formats are little-endian; big-endian hosts are not supported");

namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr std::size_t kMagicSize = 6;

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(shape[i]);
  }
  if (shape.size() == 1) s += ",";
  return s + ")";
}

// A strict parser of the header dict {'descr': ..., 'fortran_order': ..., 'shape': (...)}.
class HeaderParser {
 public:
  HeaderParser(const std::string& text, const std::string& name) : s_(text), name_(name) {}

  void parse(std::string& descr, bool& fortran, std::vector<std::int64_t>& shape) {
    bool have_descr = false, have_fortran = false, have_shape = false;
    skip_ws();
    expect('{');
    for (;;) {
      skip_ws();
      if (peek() == '}') {
        ++pos_;
        break;
      }
      const std::string key = parse_string();
      skip_ws();
      expect(':');
      skip_ws();
      if (key == "descr") {
        if (have_descr) fail("duplicate key 'descr'");
        if (peek() == '[') fail("structured dtypes are not supported");
        if (peek() != '\'' && peek() != '"') fail("descr must be a quoted dtype string");
        descr = parse_string();
        have_descr = true;
      } else if (key == "fortran_order") {
        if (have_fortran) fail("duplicate key 'fortran_order'");
        fortran = parse_bool();
        have_fortran = true;
      } else if (key == "shape") {
        if (have_shape) fail("duplicate key 'shape'");
        shape = parse_shape();
        have_shape = true;
      } else {
        fail("unexpected key '" + printable(key) + "'");
      }
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      skip_ws();
      if (peek() == '}') {
        ++pos_;
        break;
      }
      fail("expected ',' or '}'");
    }
    skip_ws();
    if (pos_ != s_.size()) fail("unexpected characters after the header dict");
    if (!have_descr) fail("missing key 'descr'");
    if (!have_fortran) fail("missing key 'fortran_order'");
    if (!have_shape) fail("missing key 'shape'");
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw invalid_argument(name_ + ": malformed .npy header: " + why);
  }
  char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
  void skip_ws() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) {
      ++pos_;
    }
  }
  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++pos_;
  }
  static std::string printable(const std::string& s) {
    std::string out;
    for (char c : s.substr(0, 40)) {
      out += (c >= 0x20 && c < 0x7f) ? c : '?';
    }
    return out;
  }
  std::string parse_string() {
    const char q = peek();
    if (q != '\'' && q != '"') fail("expected a quoted string");
    ++pos_;
    const std::size_t start = pos_;
    while (pos_ < s_.size() && s_[pos_] != q) {
      if (s_[pos_] == '\\' || s_[pos_] == '\n') fail("unsupported character in a string");
      ++pos_;
    }
    if (pos_ >= s_.size()) fail("unterminated string");
    std::string out = s_.substr(start, pos_ - start);
    ++pos_;
    return out;
  }
  bool parse_bool() {
    if (s_.compare(pos_, 4, "True") == 0) {
      pos_ += 4;
      return true;
    }
    if (s_.compare(pos_, 5, "False") == 0) {
      pos_ += 5;
      return false;
    }
    fail("fortran_order must be True or False");
  }
  std::vector<std::int64_t> parse_shape() {
    std::vector<std::int64_t> shape;
    expect('(');
    for (;;) {
      skip_ws();
      if (peek() == ')') {
        ++pos_;
        break;
      }
      if (peek() < '0' || peek() > '9') fail("shape must be a tuple of non-negative integers");
      std::int64_t v = 0;
      while (peek() >= '0' && peek() <= '9') {
        const int digit = peek() - '0';
        if (v > (std::numeric_limits<std::int64_t>::max() - digit) / 10) {
          fail("a dimension of the shape is too large");
        }
        v = v * 10 + digit;
        ++pos_;
      }
      if (peek() == 'L') ++pos_;  // Python 2 long literals
      shape.push_back(v);
      if (shape.size() > 32) fail("too many dimensions (more than 32)");
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      skip_ws();
      if (peek() == ')') {
        ++pos_;
        break;
      }
      fail("expected ',' or ')' in shape");
    }
    // A one-element tuple needs its trailing comma in Python; "(3)" is an int.
    return shape;
  }

  const std::string& s_;
  const std::string& name_;
  std::size_t pos_ = 0;
};

std::string dtype_descr(DType t) { return t == DType::f32 ? "<f4" : "<f8"; }

template <class T>
std::string format_impl(const T* values, const std::vector<std::int64_t>& shape, DType dtype) {
  std::int64_t count = 1;
  for (std::int64_t d : shape) {
    if (d < 0) throw invalid_argument("shape: negative dimension");
    if (d != 0 && count > std::numeric_limits<std::int64_t>::max() / 16 / d) {
      throw invalid_argument("shape: too large");
    }
    count *= d;
  }
  std::string dict = "{'descr': '" + dtype_descr(dtype) +
                     "', 'fortran_order': False, 'shape': " + shape_text(shape) + ", }";
  // Pad so that magic + version + length + header is a multiple of 64 bytes
  // (numpy's alignment), the header ending with '\n'.
  std::size_t prefix = kMagicSize + 2 + 2;
  std::size_t total = prefix + dict.size() + 1;
  int major = 1;
  if (((total + 63) / 64) * 64 - prefix > 65535) {
    major = 2;
    prefix = kMagicSize + 2 + 4;
    total = prefix + dict.size() + 1;
  }
  const std::size_t padded = ((total + 63) / 64) * 64;
  const std::size_t header_len = padded - prefix;
  dict.append(padded - total, ' ');
  dict.push_back('\n');

  const std::size_t item = dtype == DType::f32 ? 4 : 8;
  std::string out;
  out.reserve(padded + static_cast<std::size_t>(count) * item);
  out.append(kMagic, kMagicSize);
  out.push_back(static_cast<char>(major));
  out.push_back(0);
  if (major == 1) {
    out.push_back(static_cast<char>(header_len & 0xff));
    out.push_back(static_cast<char>((header_len >> 8) & 0xff));
  } else {
    for (int b = 0; b < 4; ++b) out.push_back(static_cast<char>((header_len >> (8 * b)) & 0xff));
  }
  out += dict;
  const std::size_t start = out.size();
  out.resize(start + static_cast<std::size_t>(count) * item);
  char* dst = out.data() + start;
  for (std::int64_t i = 0; i < count; ++i) {
    if (dtype == DType::f32) {
      const float v = static_cast<float>(values[i]);
      std::memcpy(dst + 4 * i, &v, 4);
    } else {
      const double v = static_cast<double>(values[i]);
      std::memcpy(dst + 8 * i, &v, 8);
    }
  }
  return out;
}

}  // namespace

namespace {

// numpy itself refuses headers above 10000 bytes by default (max_header_size).
constexpr std::uint64_t kMaxHeader = 65536;

// Reads a .npy array from `src`: the preamble first (magic, version, header
// length), then exactly the header, then exactly the bytes its shape needs.
// With `ids` (read_npy_ids), integer dtypes are accepted too: their values go
// to *ids (as int64; an unsigned value above 2^63 - 1 is refused), not to the
// doubles of the result.
bool integer_descr(const std::string& descr, std::size_t& bytes, bool& is_unsigned) {
  static const char* const kDescrs[] = {"<i8", "<i4", "<i2", "|i1", "<i1",
                                        "<u8", "<u4", "<u2", "|u1", "<u1"};
  for (const char* d : kDescrs) {
    if (descr == d) {
      bytes = static_cast<std::size_t>(d[2] - '0');
      is_unsigned = d[1] == 'u';
      return true;
    }
  }
  return false;
}

NpyArray read_npy_from(detail::Source& src, std::vector<std::int64_t>* ids = nullptr) {
  const std::string& name = src.name();
  std::string pre;
  src.read(pre, kMagicSize + 2);
  if (pre.size() < kMagicSize || std::memcmp(pre.data(), kMagic, kMagicSize) != 0) {
    throw invalid_argument(name + ": not a .npy file (bad magic)");
  }
  if (pre.size() < kMagicSize + 2) throw invalid_argument(name + ": truncated .npy header");
  const auto major = static_cast<unsigned char>(pre[kMagicSize]);
  const auto minor = static_cast<unsigned char>(pre[kMagicSize + 1]);
  if (major < 1 || major > 3 || minor != 0) {
    throw invalid_argument(name + ": unsupported .npy format version " + std::to_string(major) +
                           "." + std::to_string(minor) + " (expected 1.0, 2.0 or 3.0)");
  }
  const std::size_t len_size = major == 1 ? 2 : 4;
  const std::size_t prefix = kMagicSize + 2 + len_size;
  if (src.read(pre, len_size) < len_size) throw invalid_argument(name + ": truncated .npy header");
  std::uint64_t header_len = 0;
  for (std::size_t b = 0; b < len_size; ++b) {
    header_len |= static_cast<std::uint64_t>(static_cast<unsigned char>(pre[kMagicSize + 2 + b]))
                  << (8 * b);
  }
  const auto size = src.size();
  if (header_len > kMaxHeader) {
    throw invalid_argument(name + ": malformed .npy header: header length " +
                           std::to_string(header_len) + " exceeds " + std::to_string(kMaxHeader) +
                           " bytes");
  }
  const std::uint64_t after = size && *size > prefix ? *size - prefix : 0;
  std::string header;
  if ((size && header_len > after) || src.read(header, header_len) < header_len) {
    throw invalid_argument(
        name + ": truncated .npy header (header length " + std::to_string(header_len) +
        (size ? ", file has " + std::to_string(after) + " bytes after the preamble)"
              : ", the input ends after " + std::to_string(header.size()) + " of them)"));
  }
  std::string descr;
  bool fortran = false;
  NpyArray out;
  HeaderParser(header, name).parse(descr, fortran, out.shape);

  std::size_t item = 0;
  std::size_t int_bytes = 0;
  bool is_unsigned = false;
  if (ids && integer_descr(descr, int_bytes, is_unsigned)) {
    item = int_bytes;
  } else if (descr == "<f8") {
    out.dtype = DType::f64;
    item = 8;
  } else if (descr == "<f4") {
    out.dtype = DType::f32;
    item = 4;
  } else if (descr == ">f8" || descr == ">f4") {
    throw invalid_argument(name + ": big-endian dtype '" + descr +
                           "' is not supported (expected '<f4' or '<f8')");
  } else {
    std::string shown;
    for (char c : descr.substr(0, 20)) shown += (c >= 0x20 && c < 0x7f) ? c : '?';
    throw invalid_argument(name + ": dtype '" + shown +
                           "' is not supported (expected float32 '<f4' or float64 '<f8')");
  }
  if (fortran) {
    throw invalid_argument(name +
                           ": Fortran-order arrays are not supported (save a C-order "
                           "array, e.g. numpy.ascontiguousarray)");
  }
  std::uint64_t count = 1;
  for (std::int64_t d : out.shape) {
    const auto ud = static_cast<std::uint64_t>(d);
    if (ud != 0 && count > (std::numeric_limits<std::uint64_t>::max() / item) / ud) {
      throw invalid_argument(name + ": shape " + shape_text(out.shape) + " is too large");
    }
    count *= ud;
  }
  for (std::int64_t d : out.shape) {
    // Bound every dimension even when another one is zero (an empty array),
    // so that no downstream size computation can overflow.
    if (static_cast<std::uint64_t>(d) > (std::uint64_t{1} << 40)) {
      throw invalid_argument(name + ": shape " + shape_text(out.shape) + " is too large");
    }
  }
  const std::uint64_t expected = count * item;
  if (size) {
    const std::uint64_t data_size = after - header_len;
    if (expected != data_size) {
      throw invalid_argument(name + ": shape " + shape_text(out.shape) + " needs " +
                             std::to_string(expected) + " bytes of data, the file has " +
                             std::to_string(data_size) +
                             (expected > data_size ? " (truncated)" : " (trailing bytes)"));
    }
  }
  // The raw bytes and the values as doubles.
  if (count > std::numeric_limits<std::uint64_t>::max() / 16) {
    throw invalid_argument(name + ": shape " + shape_text(out.shape) + " is too large");
  }
  detail::check_memory(expected + 8 * count, name, "shape " + shape_text(out.shape));
  std::string data;
  if (src.read(data, expected) < expected) {
    throw invalid_argument(name + ": shape " + shape_text(out.shape) + " needs " +
                           std::to_string(expected) + " bytes of data, the input has " +
                           std::to_string(data.size()) + " (truncated)");
  }
  if (!src.at_end()) {
    throw invalid_argument(name + ": shape " + shape_text(out.shape) + " needs " +
                           std::to_string(expected) +
                           " bytes of data, the input has more (trailing bytes)");
  }
  if (int_bytes) {
    ids->resize(static_cast<std::size_t>(count));
    for (std::size_t i = 0; i < ids->size(); ++i) {
      std::uint64_t bits = 0;
      std::memcpy(&bits, data.data() + int_bytes * i, int_bytes);  // little-endian host
      std::int64_t v;
      if (is_unsigned) {
        if (bits > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
          throw invalid_argument(name + ": entry " + std::to_string(i) + " is " +
                                 std::to_string(bits) + ", out of range (above 2^63 - 1)");
        }
        v = static_cast<std::int64_t>(bits);
      } else {
        const int shift = static_cast<int>(64 - 8 * int_bytes);  // sign extension
        v = static_cast<std::int64_t>(bits << shift) >> shift;
      }
      (*ids)[i] = v;
    }
    return out;
  }
  out.values.resize(static_cast<std::size_t>(count));
  if (expected > 0 && item == 8) {  // (memcpy from/to null is undefined even for 0 bytes)
    std::memcpy(out.values.data(), data.data(), static_cast<std::size_t>(expected));
  } else {
    for (std::size_t i = 0; i < out.values.size(); ++i) {
      float v;
      std::memcpy(&v, data.data() + 4 * i, 4);
      out.values[i] = v;
    }
  }
  return out;
}

}  // namespace

NpyArray parse_npy(const std::string& bytes, const std::string& name) {
  detail::MemorySource src(bytes, name);
  return read_npy_from(src);
}

NpyArray read_npy(const std::string& path) {
  detail::InputFile file(path);
  return read_npy_from(file);
}

namespace {

template <class Scalar>
void check_finite(const NpyArray& a, std::size_t cols, const std::string& path,
                  const std::string& field) {
  for (std::size_t i = 0; i < a.values.size(); ++i) {
    const double v = a.values[i];
    const bool finite = std::isfinite(v) && std::isfinite(static_cast<Scalar>(v));
    if (!finite) {
      std::string where = "value " + std::to_string(i);
      if (a.shape.size() == 2) {
        where += " (row " + std::to_string(i / cols) + ", column " + std::to_string(i % cols) + ")";
      }
      const char* what = std::isnan(v)       ? "is NaN"
                         : !std::isfinite(v) ? "is infinite"
                                             : "overflows float32";
      throw invalid_argument(field + ": " + path + ": " + where + " " + what);
    }
  }
}

NpyArray read_for_field(const std::string& path, const std::string& field) {
  try {
    return read_npy(path);
  } catch (const invalid_argument& e) {
    throw invalid_argument(field + ": " + e.what());
  }
}

}  // namespace

template <class Scalar>
Matrix<Scalar> read_npy_matrix(const std::string& path, const std::string& field) {
  const NpyArray a = read_for_field(path, field);
  if (a.shape.empty() || a.shape.size() > 2) {
    throw invalid_argument(field + ": " + path + ": expected a 1-D or 2-D array, got shape " +
                           shape_text(a.shape));
  }
  const Index rows = static_cast<Index>(a.shape[0]);
  const Index cols = a.shape.size() == 2 ? static_cast<Index>(a.shape[1]) : 1;
  check_finite<Scalar>(a, static_cast<std::size_t>(cols), path, field);
  Matrix<Scalar> m(rows, cols);
  for (Index i = 0; i < rows * cols; ++i) m.data()[i] = static_cast<Scalar>(a.values[i]);
  return m;
}

namespace {

std::vector<std::int64_t> ids_from(detail::Source& src, const std::string& field) {
  const std::string path = src.name();
  std::vector<std::int64_t> ids;
  NpyArray a;
  try {
    a = read_npy_from(src, &ids);
  } catch (const invalid_argument& e) {
    throw invalid_argument(field + ": " + e.what());
  }
  const bool ok = a.shape.size() == 1 || (a.shape.size() == 2 && a.shape[0] == 1);
  if (!ok) {
    throw invalid_argument(field + ": " + path +
                           ": expected a 1-D array of token ids (one sequence), got shape " +
                           shape_text(a.shape));
  }
  if (!a.values.empty()) {  // a float array: integral values only
    ids.resize(a.values.size());
    for (std::size_t i = 0; i < a.values.size(); ++i) {
      const double v = a.values[i];
      if (!std::isfinite(v) || v != std::floor(v)) {
        throw invalid_argument(field + ": " + path + ": entry " + std::to_string(i) + " is " +
                               (std::isnan(v) ? std::string("NaN") : std::to_string(v)) +
                               ", not an integer token id");
      }
      if (!(std::fabs(v) < 9.2e18)) {
        throw invalid_argument(field + ": " + path + ": entry " + std::to_string(i) +
                               " is out of range");
      }
      ids[i] = static_cast<std::int64_t>(v);
    }
  }
  return ids;
}

}  // namespace

std::vector<std::int64_t> read_npy_ids(const std::string& path, const std::string& field) {
  std::unique_ptr<detail::InputFile> file;
  try {
    file = std::make_unique<detail::InputFile>(path);
  } catch (const invalid_argument& e) {
    throw invalid_argument(field + ": " + e.what());
  }
  return ids_from(*file, field);
}

std::vector<std::int64_t> parse_npy_ids(const std::string& bytes, const std::string& name,
                                        const std::string& field) {
  detail::MemorySource src(bytes, name);
  return ids_from(src, field);
}

template <class Scalar>
Vector<Scalar> read_npy_vector(const std::string& path, const std::string& field) {
  const NpyArray a = read_for_field(path, field);
  const bool ok =
      a.shape.size() == 1 || (a.shape.size() == 2 && (a.shape[0] == 1 || a.shape[1] == 1));
  if (!ok) {
    throw invalid_argument(field + ": " + path + ": expected a 1-D array, got shape " +
                           shape_text(a.shape));
  }
  check_finite<Scalar>(a, 1, path, field);
  Vector<Scalar> v(static_cast<Index>(a.values.size()));
  for (Index i = 0; i < v.size(); ++i) v[i] = static_cast<Scalar>(a.values[i]);
  return v;
}

std::string format_npy(const double* values, const std::vector<std::int64_t>& shape, DType dtype) {
  return format_impl(values, shape, dtype);
}

std::string format_npy(const float* values, const std::vector<std::int64_t>& shape, DType dtype) {
  return format_impl(values, shape, dtype);
}

template <class Scalar>
void write_npy(const std::string& path, const Matrix<Scalar>& m) {
  const DType t = std::is_same_v<Scalar, float> ? DType::f32 : DType::f64;
  write_file_atomic(path, format_npy(m.data(), {m.rows(), m.cols()}, t));
}

template <class Scalar>
void write_npy(const std::string& path, const Vector<Scalar>& v) {
  const DType t = std::is_same_v<Scalar, float> ? DType::f32 : DType::f64;
  write_file_atomic(path, format_npy(v.data(), {v.size()}, t));
}

void write_npy(const std::string& path, const std::vector<double>& values,
               const std::vector<std::int64_t>& shape, DType dtype) {
  std::int64_t count = 1;
  for (std::int64_t d : shape) {
    if (d < 0) throw invalid_argument(path + ": negative dimension in shape");
    if (d != 0 && count > std::numeric_limits<std::int64_t>::max() / d) {
      throw invalid_argument(path + ": shape too large");
    }
    count *= d;
  }
  if (static_cast<std::uint64_t>(count) != values.size()) {
    throw invalid_argument(path + ": shape " + shape_text(shape) + " holds " +
                           std::to_string(count) + " values, " + std::to_string(values.size()) +
                           " given");
  }
  write_file_atomic(path, format_npy(values.data(), shape, dtype));
}

template Matrix<float> read_npy_matrix<float>(const std::string&, const std::string&);
template Matrix<double> read_npy_matrix<double>(const std::string&, const std::string&);
template Vector<float> read_npy_vector<float>(const std::string&, const std::string&);
template Vector<double> read_npy_vector<double>(const std::string&, const std::string&);
template void write_npy<float>(const std::string&, const Matrix<float>&);
template void write_npy<double>(const std::string&, const Matrix<double>&);
template void write_npy<float>(const std::string&, const Vector<float>&);
template void write_npy<double>(const std::string&, const Vector<double>&);

}  // namespace measattn
