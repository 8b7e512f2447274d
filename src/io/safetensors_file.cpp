// The bounded safetensors reader (io/safetensors.hpp).
#include "io/safetensors.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "io/input.hpp"
#include "measattn/error.hpp"

namespace measattn::detail {

namespace {

using json = nlohmann::json;

// The safetensors reference implementation refuses headers above 100 MB.
constexpr std::uint64_t kMaxHeader = 100'000'000;

// Limits on the header JSON: nesting (a tensor entry's shape is at depth 3) and
// the number of values, far above any checkpoint's header, so that hostile
// input cannot make the parser build a huge document.
constexpr int kMaxDepth = 4;
constexpr std::uint64_t kMaxJsonEvents = 1 << 20;

std::string printable(const std::string& s) { return printable_name(s); }
std::string shape_text(const std::vector<std::int64_t>& shape) {
  return safetensors_shape_text(shape);
}

// Bytes per element of each dtype the checkpoint reader accepts.
std::uint64_t item_size(const std::string& dtype) {
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL") return 1;
  return 0;
}

// IEEE binary16 to double, exactly.
double half_to_double(std::uint16_t h) {
  const int sign = h >> 15;
  const int exponent = (h >> 10) & 0x1f;
  const int mantissa = h & 0x3ff;
  double v;
  if (exponent == 0) {
    v = std::ldexp(static_cast<double>(mantissa), -24);
  } else if (exponent == 31) {
    v = mantissa == 0 ? std::numeric_limits<double>::infinity()
                      : std::numeric_limits<double>::quiet_NaN();
  } else {
    v = std::ldexp(static_cast<double>(mantissa + 1024), exponent - 25);
  }
  return sign ? -v : v;
}

// bfloat16 (the upper half of a binary32) to double, exactly.
double bfloat16_to_double(std::uint16_t b) {
  const std::uint32_t bits = static_cast<std::uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

}  // namespace

std::string safetensors_shape_text(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

std::string printable_name(const std::string& s) {
  std::string out;
  for (char c : s.substr(0, 60)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  if (s.size() > 60) out += "...";
  return out;
}

std::string one_line(const std::string& s) {
  std::string out;
  for (char c : s.substr(0, 200)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  if (s.size() > 200) out += "...";
  return out;
}

json parse_bounded_json(const std::string& text, int max_depth, std::uint64_t max_values) {
  std::vector<std::set<std::string>> keys;
  std::uint64_t events = 0;
  return json::parse(
      text.begin(), text.end(), [&](int depth, json::parse_event_t event, json& parsed) {
        if (depth > max_depth) {
          throw invalid_argument("JSON nested too deeply (more than " + std::to_string(max_depth) +
                                 " levels)");
        }
        if (++events > max_values) {
          throw invalid_argument("more than " + std::to_string(max_values) + " JSON values");
        }
        if (event == json::parse_event_t::object_start) {
          keys.emplace_back();
        } else if (event == json::parse_event_t::object_end && !keys.empty()) {
          keys.pop_back();
        } else if (event == json::parse_event_t::key && !keys.empty() && parsed.is_string()) {
          const std::string& key = parsed.get_ref<const std::string&>();
          if (!keys.back().insert(key).second) {
            throw invalid_argument("duplicate key '" + printable_name(key) + "'");
          }
        }
        return true;
      });
}

std::int64_t SafetensorsTensor::numel() const {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

bool SafetensorsTensor::is_float() const {
  return dtype == "F16" || dtype == "BF16" || dtype == "F32" || dtype == "F64";
}

SafetensorsFile::SafetensorsFile(Source& src, Dtypes dtypes) : name_(src.name()), dtypes_(dtypes) {
  std::string pre;
  if (src.read(pre, 8) < 8) {
    fail("not a safetensors file (shorter than its 8-byte header length)");
  }
  std::uint64_t n = 0;
  for (int b = 0; b < 8; ++b) {
    n |= static_cast<std::uint64_t>(static_cast<unsigned char>(pre[b])) << (8 * b);
  }
  const auto size = src.size();
  if (size && (*size < 8 || n > *size - 8)) {
    fail("header length " + std::to_string(n) + " exceeds the file size (" + std::to_string(*size) +
         " bytes)");
  }
  if (n > kMaxHeader) fail("header length " + std::to_string(n) + " exceeds 100 MB");
  if (n < 2) fail("header length " + std::to_string(n) + " is too small for a JSON object");
  std::string text;
  if (src.read(text, n) < n) {
    fail("header length " + std::to_string(n) + " exceeds the input (it ends after " +
         std::to_string(8 + text.size()) + " bytes)");
  }
  if (size && *size >= 8 + n) {
    data_size_ = *size - 8 - n;
    known_size_ = true;
  }
  parse_header(text);
  text.clear();
  text.shrink_to_fit();

  // The tensors' byte ranges must tile the data buffer exactly (in any order).
  std::vector<std::pair<const std::string*, const SafetensorsTensor*>> order;
  for (const auto& [k, t] : tensors_) order.emplace_back(&k, &t);
  std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    return std::pair(a.second->begin, a.second->end) < std::pair(b.second->begin, b.second->end);
  });
  std::uint64_t cursor = 0;
  const std::string* previous = nullptr;
  for (const auto& [k, t] : order) {
    if (t->begin < cursor) {
      fail(printable(*k) + ": data_offsets [" + std::to_string(t->begin) + ", " +
           std::to_string(t->end) + "] overlap those of " + printable(*previous) + " (ending at " +
           std::to_string(cursor) + ")");
    }
    if (t->begin > cursor) {
      fail(printable(*k) + ": data_offsets [" + std::to_string(t->begin) + ", " +
           std::to_string(t->end) + "] leave a gap of " + std::to_string(t->begin - cursor) +
           " bytes after " + (previous ? printable(*previous) : "the start of the data") +
           " (the tensors must tile the data buffer)");
    }
    cursor = t->end;
    if (t->end > t->begin) previous = k;
  }
  if (known_size_ && cursor != data_size_) {
    fail("the data buffer has " + std::to_string(data_size_) +
         " bytes, the tensors' data_offsets cover " + std::to_string(cursor) +
         (cursor < data_size_ ? " (trailing bytes)" : " (truncated)"));
  }
  detail::check_memory(2 * cursor, name_, "the tensor data");
  if (src.read(data_, cursor) < cursor) {
    fail("the tensors' data_offsets cover " + std::to_string(cursor) +
         " bytes, the input ends after " + std::to_string(data_.size()) + " (truncated)");
  }
  if (!src.at_end()) {
    fail("the input has more than the " + std::to_string(cursor) +
         " data bytes the tensors' data_offsets cover (trailing bytes)");
  }
}

void SafetensorsFile::fail(const std::string& why) const {
  throw invalid_argument(name_ + ": " + why);
}

template <class Scalar>
std::vector<Scalar> SafetensorsFile::values(const std::string& key) const {
  const SafetensorsTensor& t = tensors_.at(key);
  if (!t.is_float()) {
    fail(printable(key) + ": dtype " + t.dtype + " is not a floating-point dtype");
  }
  const std::size_t item = item_size(t.dtype);
  const std::size_t count = static_cast<std::size_t>((t.end - t.begin) / item);
  const char* src = data_.data() + t.begin;
  std::vector<Scalar> out(count);
  for (std::size_t i = 0; i < count; ++i) {
    double v;
    if (item == 2) {
      std::uint16_t h;
      std::memcpy(&h, src + 2 * i, 2);
      v = t.dtype == "F16" ? half_to_double(h) : bfloat16_to_double(h);
    } else if (item == 4) {
      float f;
      std::memcpy(&f, src + 4 * i, 4);
      v = f;
    } else {
      std::memcpy(&v, src + 8 * i, 8);
    }
    out[i] = static_cast<Scalar>(v);
    if (!std::isfinite(v) || !std::isfinite(out[i])) {
      fail(printable(key) + ": entry " + std::to_string(i) +
           (std::isnan(v)       ? " is NaN"
            : !std::isfinite(v) ? " is infinite"
                                : " overflows float32"));
    }
  }
  return out;
}

template std::vector<float> SafetensorsFile::values<float>(const std::string&) const;
template std::vector<double> SafetensorsFile::values<double>(const std::string&) const;

void SafetensorsFile::parse_header(const std::string& text) {
  // (The JSON parser would stop at a NUL byte and ignore the rest.)
  if (const auto nul = text.find('\0'); nul != std::string::npos) {
    fail("header is not valid JSON: a NUL byte at offset " + std::to_string(8 + nul));
  }
  json header;
  try {
    // Nesting deeper than a tensor's shape is never valid: stop early so that
    // hostile input cannot make the parser or destructor recurse deeply.
    // Duplicate keys are refused (JSON parsers disagree on which one wins).
    header = parse_bounded_json(text, kMaxDepth, kMaxJsonEvents);
  } catch (const json::exception& e) {
    fail("header is not valid JSON: " + one_line(e.what()));
  } catch (const invalid_argument& e) {
    fail(std::string("header is not valid: ") + e.what());
  }
  if (!header.is_object()) fail("header is not a JSON object");
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& key = it.key();
    if (key == "__metadata__") {
      if (!it->is_object()) fail("__metadata__ is not an object");
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) {
          fail("__metadata__." + printable(m.key()) +
               " is not a string (safetensors metadata values are strings)");
        }
        metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    tensors_[key] = parse_tensor(key, *it);
  }
}

SafetensorsTensor SafetensorsFile::parse_tensor(const std::string& key, const json& j) const {
  const std::string shown = printable(key);
  if (!j.is_object()) fail(shown + ": tensor entry is not an object");
  SafetensorsTensor t;
  const auto dtype = j.find("dtype");
  if (dtype == j.end() || !dtype->is_string()) fail(shown + ": missing or non-string dtype");
  t.dtype = dtype->get<std::string>();
  if (dtypes_ == Dtypes::model && t.dtype != "F32" && t.dtype != "F64") {
    fail(shown + ": dtype " + printable(t.dtype) + " is not supported (expected F32 or F64)");
  }
  const std::uint64_t item = item_size(t.dtype);
  if (item == 0) {
    fail(shown + ": dtype " + printable(t.dtype) +
         " is not supported (expected F16, BF16, F32 or F64, or an integer or BOOL buffer)");
  }
  const auto shape = j.find("shape");
  if (shape == j.end() || !shape->is_array()) fail(shown + ": missing or non-array shape");
  if (shape->size() > 8) fail(shown + ": too many dimensions");
  // The byte count, saturated at 2^64 - 1 (no offset range can be that large).
  constexpr std::uint64_t kSaturated = std::numeric_limits<std::uint64_t>::max();
  std::uint64_t bytes = item;
  for (const json& d : *shape) {
    if (!d.is_number_unsigned()) fail(shown + ": shape entries must be non-negative integers");
    const std::uint64_t v = d.get<std::uint64_t>();
    if (v > (std::uint64_t{1} << 40)) {
      fail(shown + ": shape dimension " + std::to_string(v) + " is too large");
    }
    bytes = (v != 0 && bytes > kSaturated / v) ? kSaturated : bytes * v;
    t.shape.push_back(static_cast<std::int64_t>(v));
  }
  for (auto d : t.shape) {
    if (d == 0) bytes = 0;
  }
  const auto offsets = j.find("data_offsets");
  if (offsets == j.end() || !offsets->is_array() || offsets->size() != 2 ||
      !(*offsets)[0].is_number_unsigned() || !(*offsets)[1].is_number_unsigned()) {
    fail(shown + ": data_offsets must be two non-negative integers");
  }
  t.begin = (*offsets)[0].get<std::uint64_t>();
  t.end = (*offsets)[1].get<std::uint64_t>();
  if (t.begin > t.end) fail(shown + ": data_offsets begin after they end");
  if (known_size_ && t.end > data_size_) {
    fail(shown + ": data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
         "] exceed the data buffer (" + std::to_string(data_size_) + " bytes)");
  }
  if (bytes != t.end - t.begin) {
    fail(shown + ": shape " + shape_text(t.shape) + " of " + t.dtype + " does not match its " +
         std::to_string(t.end - t.begin) + " bytes of data");
  }
  return t;
}

}  // namespace measattn::detail
