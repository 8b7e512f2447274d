// The communicator of the distributed GoogleTest suites: MPI_COMM_WORLD when
// the test program was started by mpirun (the mpi.* tests), else the process
// alone (ctest's discovered tests).
#pragma once

#include "measattn/communicator.hpp"

namespace measattn::testing {

inline const Communicator& test_communicator() {
  static const Communicator c = Communicator::mpi_enabled() && Communicator::launched_by_mpi()
                                    ? Communicator::world()
                                    : Communicator();
  return c;
}

}  // namespace measattn::testing
