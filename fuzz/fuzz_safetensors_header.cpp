// libFuzzer target: the safetensors header (JSON and metadata) path. The input
// is the header text itself, wrapped into a file with a correct 8-byte length
// and a data buffer of the length the first two input bytes give (little-endian,
// filled with small finite values), so that mutations of the JSON reach the
// tensor, tiling and metadata checks. Only measattn::invalid_argument is an
// acceptable outcome of bad input; a model that parses must be valid.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "measattn/error.hpp"
#include "measattn/io.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  const std::size_t data_len = static_cast<std::size_t>(data[0]) | (std::size_t{data[1]} << 8);
  const std::string text(reinterpret_cast<const char*>(data) + 2, size - 2);
  std::string file(8, '\0');
  const std::uint64_t n = text.size();
  std::memcpy(file.data(), &n, 8);
  file += text;
  // 0x3e80 repeated: 0.25 as float32 halves, a small finite float64 too.
  for (std::size_t i = 0; i < data_len; ++i) file.push_back(i % 2 ? '\x3e' : '\x80');
  try {
    const auto model = measattn::parse_model<double>(file, "fuzz.safetensors");
    model.validate();  // must not throw for a model that was accepted
  } catch (const measattn::invalid_argument&) {
  }
  try {
    const auto model = measattn::parse_model<float>(file, "fuzz.safetensors");
    model.validate();
  } catch (const measattn::invalid_argument&) {
  }
  return 0;
}
