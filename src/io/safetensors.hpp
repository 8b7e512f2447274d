// The bounded safetensors reader shared by the model loader (io) and the
// checkpoint importer (transformer): an 8-byte little-endian header length N,
// N bytes of JSON ({"name": {"dtype", "shape", "data_offsets": [begin, end]},
// "__metadata__": {string: string}}), then the tensor bytes, offsets relative
// to the end of the header.
//
// The header is bounded (100 MB, nesting depth, number of JSON values,
// duplicate keys refused); every tensor's shape must match its byte range, the
// ranges must tile the data buffer exactly, and the data is read only once the
// header has been checked (at most the bytes the header declares).
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "io/input.hpp"

namespace measattn::detail {

struct SafetensorsTensor {
  std::string dtype;  // "F32", "F64", ... as in the header
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0, end = 0;  // byte range in the data buffer

  std::int64_t numel() const;
  /// F16, BF16, F32 or F64.
  bool is_float() const;
};

/// "[a, b, c]".
std::string safetensors_shape_text(const std::vector<std::int64_t>& shape);
/// At most 60 printable ASCII characters of a name from the file ('?' for others).
std::string printable_name(const std::string& s);
/// At most 200 printable ASCII characters of a parser message ('?' for others,
/// "..." when cut): JSON parser messages quote the input.
std::string one_line(const std::string& s);
/// Parses JSON from a file against hostile input: nesting deeper than
/// `max_depth` levels, more than `max_values` values, or a key repeated in one
/// object (JSON parsers disagree on which one wins) throws invalid_argument
/// ("JSON nested too deeply (more than N levels)", ...); a syntax error throws
/// nlohmann::json::exception. The caller adds the file and the context.
nlohmann::json parse_bounded_json(const std::string& text, int max_depth, std::uint64_t max_values);

class SafetensorsFile {
 public:
  /// Which dtypes the header may declare: `model` F32 and F64 only (the
  /// nn.MultiheadAttention loader); `checkpoint` also F16 and BF16 (converted
  /// exactly) and the integer and boolean dtypes of buffers (I8..I64, U8..U64,
  /// BOOL), whose values cannot be read as floats.
  enum class Dtypes { model, checkpoint };

  /// Reads the 8-byte header length, then exactly the header, then exactly the
  /// data bytes that the tensors' offsets tile. Throws invalid_argument("<name>: ...").
  explicit SafetensorsFile(Source& src, Dtypes dtypes = Dtypes::model);

  [[noreturn]] void fail(const std::string& why) const;

  const std::string& name() const { return name_; }
  const std::map<std::string, SafetensorsTensor>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  /// The values of a floating-point tensor converted to Scalar (C order); every
  /// value must be finite (and fit Scalar). Throws naming the tensor and entry.
  template <class Scalar>
  std::vector<Scalar> values(const std::string& key) const;

 private:
  void parse_header(const std::string& text);
  SafetensorsTensor parse_tensor(const std::string& key, const nlohmann::json& j) const;

  std::string name_;
  Dtypes dtypes_;
  std::string data_;
  bool known_size_ = false;
  std::uint64_t data_size_ = 0;
  std::map<std::string, SafetensorsTensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace measattn::detail
