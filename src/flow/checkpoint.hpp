// The flow checkpoint format (version 2), separate from the integrator so that
// its parser can be tested and fuzzed on bytes in memory.
//
// Layout (little-endian):
//   0   8  magic "MAFLOWCK"
//   8   4  version (u32) = 2
//   12  4  CRC-32 (zlib) of bytes [0, 12) followed by bytes [16, end)
//   16  8  body length (u64): the file is 24 + length bytes
//   24     body: scalar size (u32), fingerprint (u64), time, step, rejected,
//          evaluations, attempts, h, err_old, last_rejected (u8), y, fsal,
//          frames (count, then time, step, matrix each), energies, cluster counts
// A matrix is rows (i64), cols (i64), then rows * cols scalars (row-major, the
// storage order of measattn::Matrix).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "measattn/flow.hpp"

namespace measattn::detail {

/// The integrator state a checkpoint holds (besides the frames of the result).
template <class Scalar>
struct CheckpointState {
  std::uint64_t fingerprint = 0;
  double time = 0;
  Index step = 0;
  Index rejected = 0;
  Index evaluations = 0;
  Index attempts = 0;
  double h = 0;
  double err_old = 1e-4;
  bool last_rejected = false;
  Matrix<Scalar> y;
  Matrix<Scalar> fsal;  ///< empty or the shape of y
};

constexpr std::uint32_t kCheckpointVersion = 2;

/// The checkpoint bytes of s and the frames, energies and cluster counts of r.
template <class Scalar>
std::string format_checkpoint(const CheckpointState<Scalar>& s, const FlowResult<Scalar>& r);

/// Parses checkpoint bytes into s and the frames, energies and cluster counts of
/// r (appended). Throws invalid_argument("<name>: ...") on anything but a
/// well-formed checkpoint of this version and precision: a checksum mismatch,
/// a truncated file, inconsistent counts or shapes, non-finite values.
template <class Scalar>
void parse_checkpoint(std::string_view bytes, const std::string& name, CheckpointState<Scalar>& s,
                      FlowResult<Scalar>& r);

/// Writes a checkpoint atomically.
template <class Scalar>
void write_checkpoint(const std::string& path, const CheckpointState<Scalar>& s,
                      const FlowResult<Scalar>& r);

/// Reads and parses a checkpoint (the preamble first, then exactly the declared
/// length) and checks that it belongs to this run: the fingerprint and the
/// particle shape n x d.
template <class Scalar>
void read_checkpoint(const std::string& path, std::uint64_t fingerprint, Index n, Index d,
                     CheckpointState<Scalar>& s, FlowResult<Scalar>& r);

}  // namespace measattn::detail
