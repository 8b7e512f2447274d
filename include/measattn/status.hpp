// measattn/status.hpp — how a solver ended: one vocabulary for every Result.
//
// Every Result struct of the library (WassersteinResult, FlowResult,
// MaxEntResult, SinkhornAttentionResult, LipschitzSearchResult,
// TokenJacobianResult) has a field `status` of this one type, in the manner
// of Ceres' TerminationType. A numerical outcome (an iteration cap, a step
// size that underflows) is a status, never an exception; the Result's
// `message` says more. The CLI's text and JSON and Python's `status`
// attributes print to_string(status), so a value has the same name
// everywhere.
#pragma once

#include <string>

namespace measattn {

/// One name per meaning; each line says which solvers produce the value.
enum class Status {
  /// wasserstein_exact (and the 1-D and closed-form paths): an optimal plan,
  /// certified by a full reduced-cost sweep.
  optimal,
  /// A tolerance was reached: wasserstein_sinkhorn, maxent, sinkhorn_attention
  /// (tolerance > 0), token_jacobian_norm.
  converged,
  /// A fixed amount of work ran to its end: flow reached time T,
  /// lipschitz_lower_bound ran every restart.
  completed,
  /// Stopped at the iteration cap; whatever bounds the Result carries stay
  /// valid: wasserstein_exact (max_rounds), wasserstein_sinkhorn
  /// (max_iterations), maxent (max_iterations), sinkhorn_attention (ran its
  /// `iterations` without reaching `tolerance`; always when tolerance = 0),
  /// token_jacobian_norm (iterations), flow with dopri5 (max_steps).
  iteration_limit,
  /// Only certified bounds were computed, no optimal value: the sliced
  /// Wasserstein methods (max_sliced_bounds and the automatic method above its
  /// size limit).
  bounds_only,
  /// flow with dopri5: the step size fell below 1e-14 T.
  step_size_underflow,
  /// flow: the particles left the floating-point range.
  non_finite,
  /// flow: FlowOptions::should_stop asked to stop (the state is the last step).
  interrupted,
  /// lipschitz_lower_bound: no pair with W1(mu, nu) > 0 was found (ratio 0).
  degenerate,
};

/// The value's name as spelled above: "optimal", "converged", "completed",
/// "iteration_limit", "bounds_only", "step_size_underflow", "non_finite",
/// "interrupted", "degenerate".
std::string to_string(Status s);

}  // namespace measattn
