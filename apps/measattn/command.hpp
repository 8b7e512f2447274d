// The CLI's subcommand registry. Each cmd_<name>.cpp registers itself at
// static-initialization time, so adding a subcommand touches no other file.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>

#include "measattn/communicator.hpp"

namespace measattn::cli {

/// `setup` adds the options of the subcommand and its callback to `app`.
/// The callback signals bad input by throwing measattn::invalid_argument.
bool register_command(std::string name, std::string description,
                      std::function<void(CLI::App&)> setup);

struct CommandEntry {
  std::string name;
  std::string description;
  std::function<void(CLI::App&)> setup;
};

const std::vector<CommandEntry>& commands();

/// The ranks this run shares its work with: MPI_COMM_WORLD when started by an
/// MPI launcher (`mpirun -np P measattn ...`, `srun`) and measattn has MPI,
/// else the process alone. Set once by main() before the subcommand runs.
/// Every rank reads and checks the same inputs; rank 0 alone writes outputs
/// and prints (docs/distributed.md).
const Communicator& communicator();
void set_communicator(Communicator comm);
/// communicator().rank() == 0.
inline bool writes_outputs() { return communicator().rank() == 0; }

}  // namespace measattn::cli
