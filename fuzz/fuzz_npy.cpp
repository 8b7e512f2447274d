// libFuzzer target: parse_npy on arbitrary bytes, then the matrix/vector
// conversions' checks. Only measattn::invalid_argument is an acceptable
// outcome of bad input; any other exception, crash or sanitizer report is a bug.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>

#include "measattn/error.hpp"
#include "measattn/io.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  try {
    const measattn::NpyArray a = measattn::parse_npy(bytes, "fuzz.npy");
    std::uint64_t count = 1;
    for (std::int64_t d : a.shape) {
      if (d < 0) __builtin_trap();
      count *= static_cast<std::uint64_t>(d);
    }
    if (count != a.values.size()) __builtin_trap();
    // Writing it back and parsing again gives the same array.
    const std::string again = measattn::format_npy(a.values.data(), a.shape, a.dtype);
    const measattn::NpyArray b = measattn::parse_npy(again, "again.npy");
    if (b.shape != a.shape || b.dtype != a.dtype || b.values.size() != a.values.size()) {
      __builtin_trap();
    }
    for (std::size_t i = 0; i < a.values.size(); ++i) {
      const double x = a.values[i], y = b.values[i];
      if (!(x == y || (std::isnan(x) && std::isnan(y)))) __builtin_trap();
    }
  } catch (const measattn::invalid_argument&) {
  }
  return 0;
}
