// Process-wide interrupt handler (see measattn/interrupt.hpp) and the
// parallel-region guard (common/parallel.hpp).
#include "measattn/interrupt.hpp"

#include <omp.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <memory>
#include <mutex>
#include <utility>

#include "common/parallel.hpp"
#include "measattn/error.hpp"

namespace measattn {
namespace {

struct HandlerState {
  std::mutex mutex;
  std::shared_ptr<const InterruptHandler> handler;
  std::atomic<bool> installed{false};
  // Set when the handler asked to stop; seen by every thread until the
  // measattn::interrupted it causes leaves the outermost parallel region.
  std::atomic<bool> pending{false};
  std::atomic<long long> interval_ns{50'000'000};
  std::atomic<long long> next_poll_ns{0};
};

HandlerState& state() {
  static HandlerState s;
  return s;
}

long long now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// The thread that entered the outermost parallel region (thread 0 of every
// enclosing team), or any thread outside parallel regions.
bool polling_thread() {
  const int level = omp_get_level();
  for (int l = 1; l <= level; ++l) {
    if (omp_get_ancestor_thread_num(l) != 0) return false;
  }
  return true;
}

}  // namespace

void set_interrupt_handler(InterruptHandler handler, double min_interval_seconds) {
  if (!(min_interval_seconds >= 0) || !std::isfinite(min_interval_seconds)) {
    throw invalid_argument("min_interval_seconds", "must be finite and >= 0");
  }
  HandlerState& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.interval_ns.store(static_cast<long long>(min_interval_seconds * 1e9),
                      std::memory_order_relaxed);
  s.next_poll_ns.store(0, std::memory_order_relaxed);
  s.pending.store(false, std::memory_order_relaxed);
  if (handler) {
    s.handler = std::make_shared<const InterruptHandler>(std::move(handler));
    s.installed.store(true, std::memory_order_release);
  } else {
    s.installed.store(false, std::memory_order_release);
    s.handler.reset();
  }
}

bool has_interrupt_handler() { return state().installed.load(std::memory_order_acquire); }

namespace detail {

bool interrupt_pending() { return state().pending.load(std::memory_order_relaxed); }

void clear_interrupt() { state().pending.store(false, std::memory_order_relaxed); }

bool interrupt_requested() {
  HandlerState& s = state();
  if (s.pending.load(std::memory_order_relaxed)) return true;
  if (!s.installed.load(std::memory_order_acquire)) return false;
  if (!polling_thread()) return false;
  const long long now = now_ns();
  long long next = s.next_poll_ns.load(std::memory_order_relaxed);
  if (now < next) return false;
  // One poller per interval: whoever advances next_poll_ns calls the handler.
  if (!s.next_poll_ns.compare_exchange_strong(
          next, now + s.interval_ns.load(std::memory_order_relaxed), std::memory_order_relaxed)) {
    return false;
  }
  std::shared_ptr<const InterruptHandler> handler;
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    handler = s.handler;
  }
  if (handler && *handler && (*handler)()) {
    s.pending.store(true, std::memory_order_relaxed);
    return true;
  }
  return false;
}

[[noreturn]] void throw_interrupted() {
  // Outside every parallel region the exception is on its way to the caller:
  // the request is consumed, and the next computation starts afresh.
  if (omp_get_level() == 0) clear_interrupt();
  throw interrupted("interrupted");
}

void check_interrupt() {
  if (interrupt_requested()) throw_interrupted();
}

// ---- RegionGuard ----------------------------------------------------------------

bool RegionGuard::proceed() noexcept {
  if (stop_.load(std::memory_order_relaxed)) return false;
  if (interrupt_requested()) {
    interrupted_.store(true, std::memory_order_relaxed);
    stop_.store(true, std::memory_order_relaxed);
    return false;
  }
  return true;
}

void RegionGuard::capture(std::exception_ptr error) noexcept {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!error_) error_ = std::move(error);
  }
  stop_.store(true, std::memory_order_relaxed);
}

void RegionGuard::finish() {
  // The region's end is a barrier: every store above is visible here.
  std::exception_ptr error;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    error = error_;
  }
  // An interrupt wins over an error it may have caused in another thread.
  if (interrupted_.load(std::memory_order_relaxed) || interrupt_pending()) throw_interrupted();
  if (error) std::rethrow_exception(error);
}

}  // namespace detail
}  // namespace measattn
