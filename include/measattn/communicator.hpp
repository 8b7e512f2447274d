// measattn/communicator.hpp — the ranks (processes) that share one computation.
//
// A default-constructed Communicator is the calling process alone: every
// function that takes one then behaves exactly as it does without MPI. A
// Communicator of P > 1 ranks (MPI, when measattn is built with MEASATTN_MPI)
// splits the work of a computation over the ranks; the results are
// bit-identical to one process whatever P (docs/distributed.md). The library
// calls MPI from the thread that called it only (MPI_THREAD_FUNNELED), never
// from inside its OpenMP regions.
//
// The header does not include <mpi.h>: programs that use MPI themselves build
// a Communicator from their MPI_Comm with measattn/mpi.hpp (installed only with
// MPI), Python from an mpi4py communicator.
#pragma once

#include <cstdint>
#include <memory>

#include "measattn/types.hpp"

namespace measattn {

namespace detail {
struct CommunicatorImpl;
}

class Communicator {
 public:
  /// The calling process alone (rank 0 of 1).
  Communicator() = default;

  /// This process's rank, 0 .. size() - 1.
  int rank() const;
  /// The number of ranks.
  int size() const;
  /// size() > 1.
  bool distributed() const { return size() > 1; }

  /// MPI_COMM_WORLD, duplicated (so measattn's messages never meet the
  /// program's). Initializes MPI (MPI_THREAD_FUNNELED) if the program has not,
  /// and then finalizes it at exit. Throws invalid_argument when measattn was
  /// built without MPI.
  static Communicator world();

  /// The communicator with this Fortran handle (MPI_Comm_c2f; mpi4py's
  /// Comm.py2f()), duplicated. Throws invalid_argument without MPI, when MPI is
  /// not initialized, or on an invalid handle.
  static Communicator from_fortran(std::int64_t handle);

  /// Whether this build of measattn has MPI (CMake option MEASATTN_MPI).
  static bool mpi_enabled();

  /// Whether this process was started by an MPI launcher (mpirun, mpiexec,
  /// srun): the environment of OpenMPI, PMI or PMIx says so.
  static bool launched_by_mpi();

  /// Internal: the MPI side (nullptr for the calling process alone).
  const detail::CommunicatorImpl* impl() const { return impl_.get(); }

 private:
  explicit Communicator(std::shared_ptr<const detail::CommunicatorImpl> impl)
      : impl_(std::move(impl)) {}
  std::shared_ptr<const detail::CommunicatorImpl> impl_;
};

/// Rows [begin, end) of an n-row array.
struct RowRange {
  Index begin = 0, end = 0;
  Index size() const { return end - begin; }
};

/// The contiguous rows of n that rank `rank` of `size` owns: the first
/// n mod size ranks hold floor(n / size) + 1 rows, the others floor(n / size),
/// in rank order. Throws invalid_argument on n < 0 or rank outside [0, size).
RowRange shard_rows(Index n, int rank, int size);

/// The rows of n that this rank of `comm` owns.
inline RowRange shard_rows(Index n, const Communicator& comm) {
  return shard_rows(n, comm.rank(), comm.size());
}

}  // namespace measattn
