// Output paths of the CLI, validated before any work (see docs/io.md, "Outputs").
//
// Files (--out FILE, --plot, --csv, --plan): the directory must exist and be
// writable; an existing directory, socket or block device is refused; a
// character device (/dev/null) or FIFO is written through, a symbolic link is
// followed (write_file_atomic does the writing).
//
// Directories (analyze --out, flow --out, lipschitz --witness): only the last
// component is created. An existing directory is used only if it is empty or
// a previous output of the same command: it holds the marker .measattn-output
// ("measattn <command> output", then the names it owns) and nothing else but
// those names (and hidden `.<name>.tmp.XXXXXX` leftovers of a killed run).
// Anything else, and any path that contains the working directory (".", "..",
// an ancestor), is refused with exit 2. Nothing measattn did not write is
// ever deleted.
#pragma once

#include <string>
#include <vector>

#include "measattn/temporaries.hpp"

namespace measattn::cli {

/// Throws invalid_argument("<flag>: <path>: <reason>") unless `path` can be written.
void check_output_file(const std::string& path, const std::string& flag);

class OutputDirectory {
 public:
  /// Validates `path` as an output directory of `command` (throws invalid_argument).
  OutputDirectory(const std::string& path, std::string command, std::string flag);
  ~OutputDirectory() = default;
  OutputDirectory(const OutputDirectory&) = delete;
  OutputDirectory& operator=(const OutputDirectory&) = delete;

  /// The path as the user gave it.
  const std::string& path() const { return arg_; }

  // ---- staged (analyze, lipschitz --witness): built aside, swapped in at the end.
  /// Creates the hidden temporary directory `.<name>.tmp.XXXXXX` next to the
  /// target and returns its path; it is removed unless commit() succeeds.
  std::string stage();
  /// Writes the marker (listing every file of the stage) and puts the stage in
  /// place: renamed to the target, moved into an empty target, or swapped with
  /// a previous output, whose own files are then removed.
  void commit();

  // ---- in place (flow): files are written straight into the directory.
  /// Creates the directory if absent (last component only) and writes the
  /// marker owning `owned`; returns the directory. If the run fails before
  /// finish(), a directory that holds nothing but the marker is restored.
  std::string open_in_place(const std::vector<std::string>& owned);
  /// The run succeeded: owned files of a previous run not in `keep` are removed.
  void finish(const std::vector<std::string>& keep);

 private:
  enum class State { absent, empty, previous };
  void inspect();

  std::string arg_, command_, flag_;
  std::string real_, parent_, name_;
  State state_ = State::absent;
  std::vector<std::string> owned_;  // names listed in an existing marker
  RegisteredTemporary stage_, in_place_;
  std::vector<std::string> in_place_owned_;
};

}  // namespace measattn::cli
