// measattn/io.hpp — files: NumPy .npy arrays, safetensors models, atomic writes.
//
// .npy: format versions 1.0/2.0/3.0, dtype '<f4' or '<f8' (little-endian
// float32/float64), C order; token ids (read_npy_ids) also integer dtypes. Anything else (Fortran
// order, other dtypes, truncated data, a malformed header) throws invalid_argument naming the file
// and the reason.
//
// safetensors: an 8-byte little-endian header length, a JSON header, then the
// tensor bytes. Model tensors carry PyTorch nn.MultiheadAttention state-dict
// names: in_proj_weight [3E, E] (or q_proj_weight [E, E], k_proj_weight [E, kdim],
// v_proj_weight [E, vdim] with kdim == vdim), optional in_proj_bias [3E],
// out_proj.weight [E_out, E], optional out_proj.bias [E_out]; dtype F32 or F64.
// "__metadata__" holds num_heads (required), and optionally potential
// ("dot" default, or "l2") and scale (tau, default sqrt(E / num_heads)).
//
// Every writer goes through write_file_atomic (temporary file in the target's
// directory, then rename), so no partial file is ever left behind.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "measattn/attention.hpp"
#include "measattn/types.hpp"

namespace measattn {

enum class DType { f32, f64 };

/// "f32" / "f64".
std::string to_string(DType t);
DType parse_dtype(const std::string& name, const std::string& field = "dtype");

/// A dense array as read from a .npy file: its shape, its source dtype and its
/// values converted to double (exact for float32), in C order.
struct NpyArray {
  std::vector<std::int64_t> shape;
  DType dtype = DType::f64;
  std::vector<double> values;
};

/// Reads a .npy file. Throws invalid_argument("<path>: <reason>").
NpyArray read_npy(const std::string& path);
/// Parses .npy bytes (for in-memory use and fuzzing); `name` is used in messages.
NpyArray parse_npy(const std::string& bytes, const std::string& name);

/// A 2-D array as a matrix (a 1-D array of length n becomes n x 1). `field`
/// names the argument in messages (e.g. "tokens"). Values must be finite.
template <class Scalar>
Matrix<Scalar> read_npy_matrix(const std::string& path, const std::string& field);

/// A 1-D array (or n x 1 / 1 x n) as a vector; values must be finite.
template <class Scalar>
Vector<Scalar> read_npy_vector(const std::string& path, const std::string& field);

/// A 1-D array of integer token ids (shape (n,) or (1, n)): dtype '<i8', '<i4',
/// '<i2', '|i1', '<u8', '<u4', '<u2', '|u1', or '<f4'/'<f8' holding integral
/// values. Throws invalid_argument("<field>: <path>: ...") on another shape or
/// dtype, naming the entry of a non-integral value or one outside int64.
std::vector<std::int64_t> read_npy_ids(const std::string& path, const std::string& field);
/// The same from .npy bytes in memory (for fuzzing); `name` is used in messages.
std::vector<std::int64_t> parse_npy_ids(const std::string& bytes, const std::string& name,
                                        const std::string& field);

/// Serializes values (C order) with the given shape as .npy bytes of `dtype`.
std::string format_npy(const double* values, const std::vector<std::int64_t>& shape, DType dtype);
std::string format_npy(const float* values, const std::vector<std::int64_t>& shape, DType dtype);

/// Writes a matrix (rows x cols) atomically; float stores '<f4', double '<f8'.
template <class Scalar>
void write_npy(const std::string& path, const Matrix<Scalar>& m);
template <class Scalar>
void write_npy(const std::string& path, const Vector<Scalar>& v);
/// Writes an array of any shape atomically.
void write_npy(const std::string& path, const std::vector<double>& values,
               const std::vector<std::int64_t>& shape, DType dtype = DType::f64);

/// Loads a model; throws invalid_argument("<path>: <field>: <reason>").
template <class Scalar>
Model<Scalar> load_model(const std::string& path);
/// Parses safetensors bytes into a model (for in-memory use and fuzzing).
template <class Scalar>
Model<Scalar> parse_model(const std::string& bytes, const std::string& name);
/// Saves a model as safetensors (in_proj_weight layout when key_dim == query_dim
/// == E, else separate q/k/v weights), atomically. Custom potentials cannot be saved.
template <class Scalar>
void save_model(const std::string& path, const Model<Scalar>& model, DType dtype = DType::f64);

/// Writes `content` to `path` atomically: a hidden temporary `.<name>.tmp.XXXXXX`
/// in the real target's directory (symbolic links are followed), fsync, rename.
/// An existing character device or FIFO is written through, never replaced (a
/// FIFO without a reader is refused); a directory, socket or block device is
/// refused. Any failure (ENOSPC, EPIPE, ...) throws invalid_argument("<path>:
/// ...") and leaves the old file intact and no temporary behind.
void write_file_atomic(const std::string& path, const std::string& content);
/// Reads a whole file of at most `max_bytes` bytes (default 1 GiB): a larger
/// regular file is refused before reading, a device or FIFO after max_bytes + 1
/// bytes. Throws invalid_argument("<path>: cannot open ...") and the like.
std::string read_file(const std::string& path, std::uint64_t max_bytes = std::uint64_t{1} << 30);

}  // namespace measattn
