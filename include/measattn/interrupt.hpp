// measattn/interrupt.hpp — cooperative interruption of long computations.
//
// Long loops (flow steps, Lipschitz restarts, Sinkhorn and column-generation
// iterations) call detail::check_interrupt() between units of work. When an
// interrupt handler is installed and returns true, check_interrupt() throws
// measattn::interrupted ("interrupted"), which unwinds the computation; no
// partial output is written. The Python module installs a handler that polls
// for pending signals (Ctrl-C) and maps the exception to KeyboardInterrupt.
//
// Cost: without a handler, one relaxed atomic load per check. With one, the
// handler runs at most once per `min_interval_seconds` (process-wide), so a check
// can sit in a tight loop. check_interrupt() never throws inside an OpenMP
// parallel region (an exception may not leave one): there it returns at once.
#pragma once

#include <functional>

namespace measattn {

/// Returns true when the running computation should stop.
using InterruptHandler = std::function<bool()>;

/// Installs `handler` process-wide (an empty function removes it). The handler
/// is called from the thread running the computation, outside parallel regions,
/// at most once per `min_interval_seconds` (>= 0). Thread-safe.
void set_interrupt_handler(InterruptHandler handler, double min_interval_seconds = 0.05);

/// True when a handler is installed.
bool has_interrupt_handler();

namespace detail {

/// Polls the handler (rate-limited, see above) and throws measattn::interrupted
/// when it asks to stop. Call it between units of work of long loops.
void check_interrupt();

/// Polls the handler without throwing (same rate limit); true = stop requested.
bool interrupt_requested();

}  // namespace detail
}  // namespace measattn
