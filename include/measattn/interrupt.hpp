// measattn/interrupt.hpp — cooperative interruption of long computations.
//
// Long loops (attention and entropy blocks, flow steps and field blocks,
// Lipschitz restarts and steps, Sinkhorn and column-generation iterations)
// call detail::check_interrupt() between units of work, or poll through the
// library's parallel-region guard. When an interrupt handler is installed and
// returns true, the computation throws measattn::interrupted ("interrupted"),
// which unwinds it; no partial output is written. The Python module installs
// a handler that polls for pending signals (Ctrl-C) and maps the exception to
// KeyboardInterrupt; the CLI installs one that reads its signal flag.
//
// Inside OpenMP parallel regions only the thread that entered the outermost
// region (thread 0 of every enclosing team: in Python the interpreter's
// thread) calls the handler; a stop request it gets is recorded in a shared
// flag that every thread checks per block of work (one relaxed atomic load),
// so all threads stop within one block and the exception is rethrown on the
// calling thread after the region. Exceptions never leave a parallel region.
//
// Cost: without a handler, one or two relaxed atomic loads per check. With
// one, the handler runs at most once per `min_interval_seconds`
// (process-wide), so a check can sit in a tight loop. Results do not depend
// on whether a handler is installed.
#pragma once

#include <functional>

namespace measattn {

/// Returns true when the running computation should stop.
using InterruptHandler = std::function<bool()>;

/// Installs `handler` process-wide (an empty function removes it); clears a
/// pending stop request. The handler is called from the thread running the
/// computation (inside parallel regions: from the thread that entered them),
/// at most once per `min_interval_seconds` (>= 0). Thread-safe.
void set_interrupt_handler(InterruptHandler handler, double min_interval_seconds = 0.05);

/// True when a handler is installed.
bool has_interrupt_handler();

namespace detail {

/// Polls the handler (rate-limited, see above) and throws measattn::interrupted
/// when it asks to stop. Call it between units of work of long loops; inside a
/// parallel region only within a unit run by a RegionGuard (common/parallel.hpp),
/// which captures the exception.
void check_interrupt();

/// Polls the handler without throwing (same rate limit); true = stop requested.
/// The request stays pending (true on every thread) until measattn::interrupted
/// is thrown outside any parallel region, clear_interrupt() is called or the
/// handler is replaced.
bool interrupt_requested();

/// True while a stop request is pending (no polling).
bool interrupt_pending();

/// Drops a pending stop request.
void clear_interrupt();

/// Throws measattn::interrupted; outside parallel regions it first drops the
/// pending request (the exception carries it to the caller).
[[noreturn]] void throw_interrupted();

}  // namespace detail
}  // namespace measattn
