// The CLI's subcommand registry. Each cmd_<name>.cpp registers itself at
// static-initialization time, so adding a subcommand touches no other file.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>

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

}  // namespace measattn::cli
