// measattn/wasserstein.hpp — Wasserstein distances between discrete measures.
//
//   W_p(mu, nu)^p = min_{pi in Pi(a, b)} sum_ij pi_ij ||x_i - y_j||^p
//   (docs/theory.md#wasserstein)
//
// mu = sum_i a_i delta_{x_i} (n atoms), nu = sum_j b_j delta_{y_j} (m atoms), both in
// R^d, p >= 1, Euclidean ground distance. Pi(a, b) is the set of couplings: n x m
// non-negative matrices with row sums a and column sums b.
//
// Every function returns a WassersteinResult whose `value` is W_p itself (not its
// p-th power; `cost` holds value^p) together with `kind`, which says what the
// number is: exact (optimal up to floating-point rounding), a certified lower
// bound, a certified upper bound, or an estimate (entropic value). `lower` and
// `upper` always bracket the true W_p (lower = upper = value for exact results;
// lower = 0 or upper = +inf when nothing better is known).
//
// Methods (docs/theory.md (wasserstein) maps each result to its proof):
//  - wasserstein_exact: min-cost flow with LEMON's network simplex on the
//    bipartite graph, by column generation on a sparse candidate set of arcs
//    (k nearest neighbours + a feasible projected plan), certified optimal by a
//    full reduced-cost sweep. O(n m d) per sweep plus the simplex on O(k (n+m))
//    arcs; each re-solve is warm-started by handing the simplex the reduced costs
//    under the previous duals. Small problems (n m <= dense_arc_limit) solve the dense graph
//    directly.
//  - wasserstein_1d: quantile-function formula W_p^p = int_0^1 |F^-1(t) - G^-1(t)|^p dt,
//    O((n + m) log(n + m)) (radix sort), exact for d = 1.
//  - sliced bounds: W_p(theta#mu, theta#nu) <= W_p(mu, nu) for unit theta (projection
//    is 1-Lipschitz); max-sliced search; ||mean(mu) - mean(nu)|| <= W_1 <= W_p; the
//    cost of any coupling (identity, monotone plan along a direction, rounded
//    Sinkhorn plan) is an upper bound on W_p^p.
//  - wasserstein_sinkhorn: entropic OT, log-stabilized Sinkhorn (Cuturi 2013;
//    Schmitzer 2019 absorption), rounded onto Pi(a, b) by Altschuler, Weed and
//    Rigollet (2017, Algorithm 2) for a certified upper bound.
//
// All functions are thread-safe (no shared state) and deterministic regardless
// of the OpenMP thread count. Bad input (dimension mismatch, p < 1, a bad option)
// throws measattn::invalid_argument; an iteration cap is a status, never thrown.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "measattn/measure.hpp"
#include "measattn/options.hpp"
#include "measattn/status.hpp"
#include "measattn/types.hpp"

namespace measattn {

/// What a returned number is.
enum class Bound { exact, lower, upper, estimate };

enum class WassersteinMethod { automatic, exact, one_d, sliced, sinkhorn };

/// What to do with weights whose totals differ: strict (the default, as POT)
/// refuses them; renormalize divides each weight vector by its own total.
enum class MassPolicy { strict, renormalize };

/// "exact" / "lower" / "upper" / "estimate"; "automatic" / "exact" / "1d" / ...
std::string to_string(Bound b);
std::string to_string(WassersteinMethod m);
/// Parses "auto", "exact", "1d", "sliced", "sinkhorn"; throws invalid_argument naming `field`.
WassersteinMethod parse_wasserstein_method(const std::string& name,
                                           const std::string& field = "method");
/// "strict" / "renormalize".
std::string to_string(MassPolicy m);
/// Parses "strict", "renormalize"; throws invalid_argument naming `field`.
MassPolicy parse_mass_policy(const std::string& name, const std::string& field = "mass");

/// Relative tolerance of the strict mass check: totals ta, tb are equal when
/// |ta - tb| <= kMassTolerance * max(ta, tb).
inline constexpr double kMassTolerance = 1e-6;

/// The strict mass check on raw weight totals (before any normalization): with
/// MassPolicy::strict and totals that differ (see kMassTolerance), throws
/// invalid_argument "mass: the weights have different totals (<name_a> sums to ..., <name_b>
/// sums to ...)"; with renormalize, or equal totals, does nothing.
void check_mass(double total_a, double total_b, MassPolicy policy, const std::string& name_a = "a",
                const std::string& name_b = "b");

/// Largest exponent accepted. Every p in [1, 1e6] is computed in scaled form (atoms
/// rescaled so the longest arc has length 1, costs in log form around the optimal
/// value), so it finishes with finite values; `cost` = value^p and the potentials
/// are in cost units and may overflow to +inf or underflow to 0 when value^p is not
/// representable (value, lower and upper never do).
inline constexpr double kMaxWassersteinP = 1e6;

struct WassersteinOptions {
  double p = 1;  ///< exponent, 1 <= p <= kMaxWassersteinP
  WassersteinMethod method = WassersteinMethod::automatic;
  /// Weights of different totals: an error (strict) or each divided by its total.
  MassPolicy mass = MassPolicy::strict;

  // Exact solver.
  bool want_plan = false;        ///< fill result.plan (sparse list of (i, j, mass))
  bool want_dense_plan = false;  ///< also fill result.plan->dense (n x m)
  bool want_potentials = false;  ///< fill result.potentials
  /// Problems with n*m <= this many arcs are solved on the complete bipartite graph.
  std::int64_t dense_arc_limit = 40000;
  /// Column generation: initial nearest neighbours per atom, arcs added per row per round.
  int neighbours = 48;
  int arcs_per_round = 32;
  /// In the first prune_rounds rounds, arcs off the current support whose reduced
  /// cost exceeds prune * (largest arc cost) are dropped, which keeps the simplex
  /// small; afterwards the arc set only grows, so column generation terminates.
  /// prune = infinity keeps every arc.
  double prune = 0.03;
  int prune_rounds = 8;
  /// Column generation rounds before giving up (status iteration_limit).
  int max_rounds = 100;

  // Sliced bounds.
  int projections = 64;  ///< random directions (fixed seed below)
  int max_sliced_restarts = 4;
  int max_sliced_iterations = 50;
  std::uint64_t seed = 0x5eed;

  // Sinkhorn.
  double reg = 0.05;          ///< entropic regularization epsilon > 0 (cost units)
  double tolerance = 1e-9;    ///< stop when ||P^T 1 - b||_2 < tolerance (as POT)
  int max_iterations = 1000;  ///< iteration cap (POT's numItermax default)
  std::int64_t max_dense_bytes = std::int64_t{2} << 30;  ///< kernel memory cap
  /// Sinkhorn without a stored kernel: the costs are computed on the fly in every
  /// log-domain update (O(n + m) memory, epsilon scaling); no plan, and the certified
  /// upper bound is the cost of a monotone coupling along one direction.
  bool online = false;
  /// Each epsilon-scaling step multiplies the regularization by this factor, from the
  /// largest cost down to reg (online and multiscale), 0 < epsilon_scaling < 1.
  double epsilon_scaling = 0.5;
  /// Sinkhorn between point clouds in dimension <= 8 with O(n + m) memory (no plan):
  /// both clouds sorted into grid cells, the cells' centroids solved first (recursively,
  /// coarse to fine) and kernel entries skipped cell by cell where a bound shows that
  /// they are negligible (see truncation). Certified bracket as online.
  bool multiscale = false;
  /// Multiscale: the skipped kernel entries of each row sum to at most this fraction of
  /// the kept ones (rows for which the bound fails are recomputed in full),
  /// 0 < truncation <= 1e-3.
  double truncation = 1e-12;

  /// Show a progress line on stderr (only when it is a terminal) for large problems.
  bool progress = false;

  /// Throws invalid_argument naming the field on a bad value.
  void validate() const;
};

/// The user-facing fields of WassersteinOptions (options.hpp); the want_*
/// requests are outputs, not options, and are not listed.
template <class Visitor>
void for_each_field(WassersteinOptions& o, Visitor&& visit) {
  visit("p", o.p, "Exponent p >= 1");
  visit("method", o.method, "auto|exact|1d|sliced|sinkhorn",
        EnumSpelling<WassersteinMethod>{[](WassersteinMethod m) { return to_string(m); },
                                        &parse_wasserstein_method});
  visit("mass", o.mass, "strict|renormalize: weights of different totals are an error or rescaled",
        EnumSpelling<MassPolicy>{[](MassPolicy m) { return to_string(m); }, &parse_mass_policy});
  visit("dense_arc_limit", o.dense_arc_limit, "Exact: complete bipartite graph up to n m arcs");
  visit("neighbours", o.neighbours, "Exact: initial nearest neighbours per atom");
  visit("arcs_per_round", o.arcs_per_round, "Exact: arcs added per row per round");
  visit("prune", o.prune, "Exact: reduced-cost pruning threshold (infinity keeps every arc)");
  visit("prune_rounds", o.prune_rounds, "Exact: rounds with pruning");
  visit("max_rounds", o.max_rounds, "Exact: column generation rounds before giving up");
  visit("projections", o.projections, "Random directions for sliced bounds");
  visit("max_sliced_restarts", o.max_sliced_restarts, "Max-sliced search: restarts");
  visit("max_sliced_iterations", o.max_sliced_iterations, "Max-sliced search: iterations");
  visit("seed", o.seed, "Seed of the random directions");
  visit("reg", o.reg, "Sinkhorn regularization epsilon > 0 (cost units)");
  visit("tolerance", o.tolerance, "Sinkhorn tolerance on ||P^T 1 - b||_2");
  visit("max_iterations", o.max_iterations, "Sinkhorn iteration cap");
  visit("max_dense_bytes", o.max_dense_bytes, "Sinkhorn kernel memory cap (bytes)");
  visit("online", o.online, "Sinkhorn: costs on the fly, O(n + m) memory (no plan)");
  visit("epsilon_scaling", o.epsilon_scaling,
        "Online/multiscale Sinkhorn: factor of each epsilon-scaling step, in (0, 1)");
  visit("multiscale", o.multiscale,
        "Sinkhorn: coarse-to-fine with kernel truncation, O(n + m) memory, d <= 8 (no plan)");
  visit("truncation", o.truncation,
        "Multiscale: bound on the neglected kernel mass per row, relative, in (0, 1e-3]");
  visit("progress", o.progress, "Progress line on stderr (terminal only)");
}

struct TransportEntry {
  Index i;
  Index j;
  double mass;
};

/// A coupling: the non-zero entries (row-major order) and, on request, the dense matrix.
struct TransportPlan {
  std::vector<TransportEntry> entries;
  std::optional<MatrixD> dense;
  /// max(||pi 1 - a||_1, ||pi^T 1 - b||_1): how far the plan is from Pi(a, b).
  double marginal_error = 0;
};

/// Kantorovich potentials: f_i + g_j <= ||x_i - y_j||^p for all i, j (certified by
/// a full sweep), sum_i a_i f_i + sum_j b_j g_j = W_p^p at optimality.
struct Potentials {
  VectorD f;  ///< on the atoms of mu (size n)
  VectorD g;  ///< on the atoms of nu (size m)
};

struct WassersteinResult {
  double value = 0;  ///< W_p (or the bound / estimate named by `kind`)
  Bound kind = Bound::exact;
  double lower = 0;                                        ///< certified: lower <= W_p
  double upper = std::numeric_limits<double>::infinity();  ///< certified: W_p <= upper
  double cost = 0;  ///< value^p (the transport cost for exact results)
  double p = 1;
  WassersteinMethod method = WassersteinMethod::exact;
  /// optimal (exact), converged / iteration_limit (sinkhorn), iteration_limit (exact
  /// at max_rounds), bounds_only (sliced): see status.hpp.
  Status status = Status::optimal;
  std::string message;
  std::int64_t iterations = 0;  ///< simplex pivots / rounds, Sinkhorn or ascent iterations
  std::optional<TransportPlan> plan;
  std::optional<Potentials> potentials;

  // Sinkhorn only (empty for the other methods):
  std::optional<double> entropic_cost;       ///< <P,C> + eps sum P log P
  std::optional<double> transport_cost;      ///< <P,C>, P unrounded (= ot.sinkhorn2)
  std::optional<double> rounded_cost;        ///< <R(P),C>, R(P) in Pi(a,b)
  std::optional<double> marginal_violation;  ///< ||P^T 1 - b||_2 at stop
};

/// Dispatches on options.method: automatic = 1d when d == 1, else exact when
/// n*m <= 2.5e7, else sliced bounds; one_d requires d == 1.
template <class Scalar>
WassersteinResult wasserstein(const Measure<Scalar>& mu, const Measure<Scalar>& nu,
                              const WassersteinOptions& options = {});

/// Exact W_p by network simplex (see above). Uses the 1-D formula when d == 1
/// and the closed form when n == 1 or m == 1. status iteration_limit (with valid
/// lower/upper from the duality gap) if column generation hits max_rounds.
template <class Scalar>
WassersteinResult wasserstein_exact(const Measure<Scalar>& mu, const Measure<Scalar>& nu,
                                    const WassersteinOptions& options = {});

/// Shortcut for the small-measure hot path used by the Lipschitz and flow modules:
/// W_p with no plan or potentials. Thread-safe, O(n m) memory.
template <class Scalar>
double wasserstein_exact_value(const Measure<Scalar>& mu, const Measure<Scalar>& nu, double p = 1);

/// Exact W_p for d == 1 by the quantile formula; O((n+m) log(n+m)). With
/// want_plan, the monotone (north-west corner) plan on the sorted atoms.
template <class Scalar>
WassersteinResult wasserstein_1d(const Measure<Scalar>& mu, const Measure<Scalar>& nu,
                                 const WassersteinOptions& options = {});

/// W_p between 1-D samples (values, weights; empty weights = uniform) — the
/// kernel of the 1-D and sliced routines. Weights must be >= 0 and sum > 0.
double wasserstein_1d_values(const std::vector<double>& x, const std::vector<double>& a,
                             const std::vector<double>& y, const std::vector<double>& b, double p);

/// Lower bound W_p(theta#mu, theta#nu) for one direction (normalized inside;
/// throws if theta is zero or of the wrong size).
template <class Scalar>
WassersteinResult sliced_lower_bound(const Measure<Scalar>& mu, const Measure<Scalar>& nu,
                                     const VectorD& theta, double p = 1);

/// Lower bound max over `options.projections` random unit directions (seeded) of
/// W_p(theta#mu, theta#nu).
template <class Scalar>
WassersteinResult random_sliced_lower_bound(const Measure<Scalar>& mu, const Measure<Scalar>& nu,
                                            const WassersteinOptions& options = {});

/// Max-sliced lower bound: projected gradient ascent on the sphere of
/// theta -> W_p(theta#mu, theta#nu) from the mean-difference direction and the
/// best random directions. Also an upper bound: the cost in R^d of the monotone
/// plan of the best direction. kind = lower, status bounds_only.
template <class Scalar>
WassersteinResult max_sliced_bounds(const Measure<Scalar>& mu, const Measure<Scalar>& nu,
                                    const WassersteinOptions& options = {});

/// ||mean(mu) - mean(nu)||_2 <= W_1 <= W_p (Jensen).
template <class Scalar>
double mean_difference_lower_bound(const Measure<Scalar>& mu, const Measure<Scalar>& nu);

/// Upper bound from the identity coupling x_i <-> y_i: requires n == m and equal
/// weight vectors (throws otherwise). (sum_i a_i ||x_i - y_i||^p)^(1/p).
template <class Scalar>
WassersteinResult identity_coupling_upper_bound(const Measure<Scalar>& mu,
                                                const Measure<Scalar>& nu, double p = 1);

/// Entropic OT: minimizes <P, C> + reg * sum_ij P_ij log P_ij over Pi(a, b), C_ij =
/// ||x_i - y_j||^p, by log-stabilized Sinkhorn (stop when ||P^T 1 - b||_2 < tolerance,
/// POT's criterion). value = transport_cost^(1/p), kind estimate (transport_cost =
/// <P, C> of the unrounded plan is what POT's ot.sinkhorn2 returns); upper =
/// rounded_cost^(1/p), certified (AWR rounding onto Pi(a, b)); lower = the larger of
/// ||mean difference|| and the dual value of the c-transformed Sinkhorn potentials,
/// both certified. The plan (on request) is the rounded, feasible one.
/// O(n m) memory (max_dense_bytes) and O(n m) time per iteration.
template <class Scalar>
WassersteinResult wasserstein_sinkhorn(const Measure<Scalar>& mu, const Measure<Scalar>& nu,
                                       const WassersteinOptions& options = {});

// ---- Transport on a given cost matrix ---------------------------------------------
//
//   min_{P >= 0, P 1 = a, P^T 1 = b} <P, C>  (+ reg sum_ij P_ij (log P_ij - 1) for Sinkhorn)
//
// C is any real n x m matrix (negative and non-metric costs included); a (n) and b (m)
// are non-negative weights with equal totals (options.mass = strict; renormalize divides
// both by their totals). Problems are computed in double precision.

/// The solution of a transport problem on a cost matrix.
struct TransportResult {
  double cost = 0;  ///< <P, C> of the returned plan (POT's emd2 / sinkhorn2 value)
  /// The plan P (n x m); empty unless options.want_dense_plan.
  MatrixD plan;
  /// Dual potentials in cost units. Exact: f_i + g_j <= C_ij with equality on the
  /// plan's support and <a, f> + <b, g> = cost (certified by a full sweep). Sinkhorn:
  /// f = reg log u, g = reg log v for the scalings of P = diag(u) K diag(v), K = exp(-C/reg).
  VectorD f, g;
  /// optimal / converged, or iteration_limit (Sinkhorn's max_iterations or the exact
  /// solver's max_rounds was reached; the plan is then the last iterate).
  Status status = Status::optimal;
  std::string message;
  std::int64_t iterations = 0;  ///< Sinkhorn iterations run / column generation rounds
  /// Exact: max(||P 1 - a||_1, ||P^T 1 - b||_1). Sinkhorn: ||P^T 1 - b||_2 at the stop.
  double marginal_violation = 0;
  /// Sinkhorn: ||P^T 1 - b||_2 at every check (every 10 iterations, from the first).
  std::vector<double> errors;
};

/// Exact OT on a cost matrix: LEMON's network simplex, by column generation from the
/// options.neighbours smallest costs of every row and column plus a feasible plan, each
/// round certified by a sweep of all n m reduced costs (the complete graph when n m <=
/// options.dense_arc_limit); the plan is re-solved on its support for the exact
/// weights. Throws invalid_argument naming a, b or cost (shapes, negative or non-finite
/// weights, non-finite costs, totals under mass = strict).
TransportResult transport_exact(const VectorD& a, const VectorD& b, const MatrixRef<double>& cost,
                                const WassersteinOptions& options = {});

/// Entropic OT on a cost matrix for each column of `b` (m x k histograms, k >= 1),
/// regularization options.reg, by Sinkhorn's iteration in stabilized form (kernel with
/// absorbed log-potentials, exact log-sum-exp updates where a scaling under- or
/// overflows). Iteration t updates v = b / (K^T u) then u = a / (K v); every 10th
/// iteration from t = 0 checks ||P^T 1 - b||_2 < options.tolerance. At most
/// options.max_iterations iterations (status iteration_limit otherwise).
/// log_u0 (n x k, or n x 1 for every histogram) starts the iteration from u = exp(log_u0)
/// (a warm start; default zeros). O(n m) memory (options.max_dense_bytes), one plan per
/// histogram only when want_dense_plan.
std::vector<TransportResult> transport_sinkhorn(const VectorD& a, const MatrixRef<double>& b,
                                                const MatrixRef<double>& cost,
                                                const WassersteinOptions& options = {},
                                                const MatrixD* log_u0 = nullptr);

}  // namespace measattn
