// measattn/mpi.hpp — a measattn Communicator from an MPI communicator.
//
// Installed only when measattn is built with MPI (MEASATTN_MPI); include it
// after MPI_Init in programs that use MPI themselves:
//
//   MPI_Init(&argc, &argv);
//   measattn::AttendOptions options;
//   options.communicator = measattn::from_mpi(MPI_COMM_WORLD);
#pragma once

#include <mpi.h>

#include "measattn/communicator.hpp"

namespace measattn {

/// The ranks of `comm` (duplicated: measattn's messages never meet the caller's).
inline Communicator from_mpi(MPI_Comm comm) {
  return Communicator::from_fortran(static_cast<std::int64_t>(MPI_Comm_c2f(comm)));
}

}  // namespace measattn
