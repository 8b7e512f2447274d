// Progress reporting for long computations (flows, searches, large OT).
//
// Writes a single self-overwriting line to stderr when stderr is a terminal,
// at most a few times per second, and nothing otherwise (pipes, files, CI).
// Public so that programs built on measattn (its CLI among them) report their own
// long work the same way as the solvers do.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace measattn {

class Progress {
 public:
  /// `label` names the work; `total` is the number of units (0 = unknown).
  Progress(std::string label, std::int64_t total);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  /// Reports that `done` units are finished; `note` is appended (e.g. "W1=0.31").
  void update(std::int64_t done, const std::string& note = "");
  /// Ends the line (called by the destructor too).
  void finish();

  /// Whether stderr is a terminal (override with MEASATTN_PROGRESS=0/1).
  static bool enabled();

 private:
  std::string label_;
  std::int64_t total_;
  bool active_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_;
};

}  // namespace measattn
