// libFuzzer target: parse_model<double> and parse_model<float> on arbitrary
// bytes. Only measattn::invalid_argument is an acceptable outcome of bad input;
// any other exception, crash or sanitizer report is a bug. A model that parses
// must be valid.
#include <cstddef>
#include <cstdint>
#include <string>

#include "measattn/error.hpp"
#include "measattn/io.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  try {
    const auto model = measattn::parse_model<double>(bytes, "fuzz.safetensors");
    model.validate();  // must not throw for a model that was accepted
  } catch (const measattn::invalid_argument&) {
  }
  try {
    const auto model = measattn::parse_model<float>(bytes, "fuzz.safetensors");
    model.validate();
  } catch (const measattn::invalid_argument&) {
  }
  return 0;
}
