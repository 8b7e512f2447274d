// A process-wide registry of the temporary files and directories that are alive
// right now, so that a signal handler can remove them before the process dies.
//
// Every temporary is named `.<name>.tmp.XXXXXX` (hidden, six random characters),
// so that a leftover of a SIGKILLed run is recognisable and is never mistaken for
// an output. A temporary is registered *before* it is created on disk and
// unregistered once it is renamed or removed, so there is no moment at which it
// exists unregistered. remove_registered_temporaries() uses only
// async-signal-safe calls (unlink, unlinkat, rmdir, open, getdents64, close).
// write_file_atomic and the CLI's output directories use it; it is public so that a
// program built on measattn can register its own temporaries and call
// remove_registered_temporaries() from its signal handlers.
#pragma once

#include <string>

namespace measattn {

/// The marker file that identifies a directory written by measattn; its first
/// line is "measattn <command> output", the next lines the files it owns.
inline constexpr const char* kOutputMarker = ".measattn-output";

enum class TemporaryKind : int {
  file = 1,         // unlink the path
  tree = 2,         // remove a flat directory and everything in it
  created_dir = 3,  // an output directory created by this run: if it holds nothing
                    // but the marker, remove the marker and the directory
  marked_dir = 4,   // a pre-existing empty directory this run marked: if it holds
                    // nothing but the marker, remove the marker (keep the directory)
};

/// Registers `path`; returns a slot (>= 0), or -1 if the table is full or the
/// path too long (the temporary then still works, it is only not removed by a
/// signal handler). Thread-safe.
int register_temporary(const std::string& path, TemporaryKind kind) noexcept;
/// Forgets a slot returned by register_temporary (-1 is ignored).
void unregister_temporary(int slot) noexcept;
/// Removes every registered temporary (files first, then directories).
/// Async-signal-safe; for signal handlers and for dying processes.
void remove_registered_temporaries() noexcept;

/// Removes a flat directory and its entries (one level of subdirectories).
/// Async-signal-safe. Returns true if the directory is gone.
bool remove_flat_tree(const char* path) noexcept;
/// Applies the rule of `kind` to `path` now (what the signal handler would do).
void remove_temporary(const char* path, TemporaryKind kind) noexcept;

/// Six random characters from [A-Za-z0-9].
std::string random_suffix();
/// `<dir>/.<base>.tmp.XXXXXX` with a fresh random suffix (not created).
std::string temporary_name(const std::string& dir, const std::string& base);

/// RAII: registers a path at construction, applies its kind's removal at
/// destruction unless release() was called, and unregisters it.
class RegisteredTemporary {
 public:
  RegisteredTemporary() = default;
  RegisteredTemporary(std::string path, TemporaryKind kind);
  ~RegisteredTemporary();
  RegisteredTemporary(const RegisteredTemporary&) = delete;
  RegisteredTemporary& operator=(const RegisteredTemporary&) = delete;
  RegisteredTemporary(RegisteredTemporary&& other) noexcept;
  RegisteredTemporary& operator=(RegisteredTemporary&& other) noexcept;

  const std::string& path() const { return path_; }
  bool active() const { return !path_.empty(); }
  /// Keeps the path on disk (it was renamed into place or is wanted) and forgets it.
  void release() noexcept;
  /// Removes it now (per its kind) and forgets it.
  void remove() noexcept;

 private:
  std::string path_;
  TemporaryKind kind_ = TemporaryKind::file;
  int slot_ = -1;
};

}  // namespace measattn
