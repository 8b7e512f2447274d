// libFuzzer target: the flow checkpoint parser on arbitrary bytes, as they are
// and with the CRC-32 field recomputed (so that mutations reach the body
// parser behind the checksum). Only measattn::invalid_argument is an
// acceptable outcome; a checkpoint that parses must be self-consistent and
// format back to the same bytes.
#include <zlib.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "flow/checkpoint.hpp"
#include "measattn/error.hpp"

namespace {

template <class Scalar>
void parse(const std::string& bytes) {
  measattn::detail::CheckpointState<Scalar> s;
  measattn::FlowResult<Scalar> r;
  try {
    measattn::detail::parse_checkpoint<Scalar>(bytes, "fuzz.ck", s, r);
  } catch (const measattn::invalid_argument&) {
    return;
  }
  // Accepted: the invariants the integrator relies on.
  if (!s.y.allFinite() || s.step < 0 || !(s.err_old > 0)) std::abort();
  if (s.fsal.size() != 0 && (s.fsal.rows() != s.y.rows() || s.fsal.cols() != s.y.cols())) {
    std::abort();
  }
  if (r.frame_times.size() != r.frames.size() || r.frame_steps.size() != r.frames.size()) {
    std::abort();
  }
  if (measattn::detail::format_checkpoint(s, r) != bytes) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string bytes(reinterpret_cast<const char*>(data), size);
  parse<double>(bytes);
  parse<float>(bytes);
  if (bytes.size() >= 24) {
    uLong crc = crc32(0L, Z_NULL, 0);
    crc = crc32(crc, reinterpret_cast<const Bytef*>(bytes.data()), 12);
    crc = crc32(crc, reinterpret_cast<const Bytef*>(bytes.data() + 16),
                static_cast<uInt>(bytes.size() - 16));
    const auto c = static_cast<std::uint32_t>(crc);
    std::memcpy(bytes.data() + 12, &c, 4);
    parse<double>(bytes);
    parse<float>(bytes);
  }
  return 0;
}
