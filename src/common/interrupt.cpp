// Process-wide interrupt handler (see measattn/interrupt.hpp).
#include "measattn/interrupt.hpp"

#include <omp.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <memory>
#include <mutex>
#include <utility>

#include "measattn/error.hpp"

namespace measattn {
namespace {

struct HandlerState {
  std::mutex mutex;
  std::shared_ptr<const InterruptHandler> handler;
  std::atomic<bool> installed{false};
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

}  // namespace

void set_interrupt_handler(InterruptHandler handler, double min_interval_seconds) {
  if (!(min_interval_seconds >= 0) || !std::isfinite(min_interval_seconds)) {
    throw invalid_argument("min_interval_seconds: must be finite and >= 0");
  }
  HandlerState& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.interval_ns.store(static_cast<long long>(min_interval_seconds * 1e9),
                      std::memory_order_relaxed);
  s.next_poll_ns.store(0, std::memory_order_relaxed);
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

bool interrupt_requested() {
  HandlerState& s = state();
  if (!s.installed.load(std::memory_order_acquire)) return false;
  if (omp_in_parallel()) return false;
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
  return handler && *handler && (*handler)();
}

void check_interrupt() {
  if (interrupt_requested()) throw interrupted("interrupted");
}

}  // namespace detail
}  // namespace measattn
