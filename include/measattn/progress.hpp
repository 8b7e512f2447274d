// Progress reporting for long computations (flows, searches, large OT).
//
// Writes a single self-overwriting line to stderr when stderr is a terminal,
// at most a few times per second, and nothing otherwise (pipes, files, CI).
// Public so that programs built on measattn (its CLI among them) report their own
// long work the same way as the solvers do.
//
// A computation may also hand its progress to a callback (FlowOptions,
// MisspecOptions, LipschitzSearchOptions and TokenSearchOptions have one): it
// receives (done, total) on every update, one call at a time (flow and misspec
// call it outside parallel regions; the searches from the worker that finished a
// restart, under a lock); an exception it throws propagates out of update() and
// stops the computation.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

namespace measattn {

/// Receives (done, total) after each unit of work (total 0 = unknown).
using ProgressCallback = std::function<void(std::int64_t done, std::int64_t total)>;

class Progress {
 public:
  /// `label` names the work; `total` is the number of units (0 = unknown).
  Progress(std::string label, std::int64_t total);
  /// The same, and every update() is passed to `callback` (when not empty); the
  /// stderr line is drawn only when `line` is true (and enabled()).
  Progress(std::string label, std::int64_t total, ProgressCallback callback, bool line);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  /// Reports that `done` units are finished; `note` is appended (e.g. "W1=0.31").
  /// Calls the callback first (every time; whatever it throws propagates).
  void update(std::int64_t done, const std::string& note = "");
  /// Ends the line (called by the destructor too).
  void finish();

  /// Whether stderr is a terminal (override with MEASATTN_PROGRESS=0/1).
  static bool enabled();

 private:
  std::string label_;
  std::int64_t total_;
  ProgressCallback callback_;
  bool active_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_;
};

}  // namespace measattn
