#include "command.hpp"

#include <algorithm>
#include <vector>

namespace measattn::cli {

namespace {
std::vector<CommandEntry>& registry() {
  static std::vector<CommandEntry> entries;
  return entries;
}
}  // namespace

bool register_command(std::string name, std::string description,
                      std::function<void(CLI::App&)> setup) {
  registry().push_back({std::move(name), std::move(description), std::move(setup)});
  return true;
}

namespace {
Communicator& communicator_slot() {
  static Communicator comm;
  return comm;
}
}  // namespace

const Communicator& communicator() { return communicator_slot(); }
void set_communicator(Communicator comm) { communicator_slot() = std::move(comm); }

const std::vector<CommandEntry>& commands() {
  auto& entries = registry();
  std::sort(entries.begin(), entries.end(),
            [](const CommandEntry& a, const CommandEntry& b) { return a.name < b.name; });
  return entries;
}

}  // namespace measattn::cli
