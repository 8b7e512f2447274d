// Exceptions and interrupts inside OpenMP parallel regions.
//
// An exception may not leave an OpenMP region (it would reach std::terminate),
// and a region must not be left early either: every thread has to reach every
// worksharing construct and barrier. A RegionGuard solves both for one region:
//
//   detail::RegionGuard guard;
//   #pragma omp parallel for
//   for (Index b = 0; b < blocks; ++b)
//     guard.run([&] { ... one block of work, may throw ... });
//   guard.finish();  // on the calling thread, after the region
//
// run() executes the unit unless the region is stopping; an exception thrown
// by the unit is captured (the first one is kept) and makes every later unit
// of every thread skip. Units are also skipped once an interrupt is requested
// (see measattn/interrupt.hpp): the thread that polls interrupts (the one that
// entered the outermost region) polls the rate-limited handler at the start
// of its units, every thread checks a shared flag (one relaxed atomic load).
// finish() rethrows the captured exception, or throws measattn::interrupted
// when the region was stopped by an interrupt. Nothing else changes: without
// an exception or interrupt every unit runs exactly as it would unguarded, so
// results are bit-identical.
//
// Per-thread setup code inside a `#pragma omp parallel` block that can throw
// (allocations) goes through run() too; a thread whose setup threw skips all
// of its units (the flag is set before its first unit starts).
//
// Speed: in the hottest kernels keep atomic loads (stopped()) and try blocks
// out of the inner loops, and construct fixed-shape buffers directly: GCC
// compiled the entropy kernel 1.6x slower with either (src/maxent/entropy.cpp
// polls through proceed() and runs only its logits under a try).
#pragma once

#include <atomic>
#include <exception>
#include <mutex>

namespace measattn::detail {

class RegionGuard {
 public:
  RegionGuard() = default;
  RegionGuard(const RegionGuard&) = delete;
  RegionGuard& operator=(const RegionGuard&) = delete;

  /// Inside the region, before a unit of work: false when the unit must be
  /// skipped (an earlier unit threw, or an interrupt was requested). Long
  /// units may also call it between their own steps and return early when it
  /// is false (finish() then throws, so the partial result is never used).
  bool proceed() noexcept;

  /// Runs `unit()` when proceed() allows it; captures what it throws.
  template <class F>
  void run(F&& unit) noexcept {
    if (!proceed()) return;
    try {
      invoke(unit);
    } catch (...) {
      capture(std::current_exception());
    }
  }

  /// Records `error` (the first one wins) and stops the region.
  void capture(std::exception_ptr error) noexcept;

  /// True once the region is stopping (cheap: one relaxed load).
  bool stopped() const noexcept { return stop_.load(std::memory_order_relaxed); }

  /// After the region, on the thread that entered it: rethrows the captured
  /// exception, or throws measattn::interrupted if an interrupt stopped the
  /// region. Returns normally when every unit ran.
  void finish();

 private:
  // The unit runs in a function of its own, outside the try block (one call
  // per unit costs nothing).
  template <class F>
  [[gnu::noinline]] static void invoke(F& unit) {
    unit();
  }

  std::atomic<bool> stop_{false};
  std::atomic<bool> interrupted_{false};
  std::mutex mutex_;
  std::exception_ptr error_;
};

}  // namespace measattn::detail
