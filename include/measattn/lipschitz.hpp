// measattn/lipschitz.hpp — Lipschitz constants of attention in W1: certified
// upper bounds (proved in docs/theory.md (lipschitz)) and certified lower bounds
// (a search for the worst pair of measures, every ratio recomputed exactly).
//
// For a layer F(mu) = (Gamma_mu)#mu (docs/theory.md: attention, lipschitz) and mu, nu
// supported in the ball B_R:
//
//     W1(F(mu), F(nu)) <= L W1(mu, nu).
//
// Upper bounds (all in double, spectral norms by an exact SVD):
//  - "w1_theorem": Vuckovic et al.'s form. Per head h, with P = ||V_h||,
//      dot:  A = Q^T K / tau, c = K^T b_q / tau, rho = ||A|| R + ||c||,
//            Lx_h = P ||A|| R^2,  Lm_h = P (1 + 2 R rho) e^{2 R rho};
//      l2:   B = 2 K^T Q / tau, beta = (2/tau)(||K^T Q|| R + ||K^T (b_q - b_k)||),
//            rho2 = beta + 2 ||K||^2 R / tau, Omega = 2 R beta + ||K||^2 R^2 / tau,
//            Lx_h = P ||B|| R^2,  Lm_h = P (1 + 2 R rho2) e^{Omega};
//    L = ||W_O|| ((sum_h Lx_h^2)^(1/2) + (sum_h Lm_h^2)^(1/2)) (+1 when residual).
//  - "w1_per_head": the same two parts with ||W_O^h V_h|| (W_O^h the columns of
//    W_O acting on head h) in place of ||V_h||, summed over heads (triangle
//    inequality): L = sum_h (Lx_h + Lm_h) (+1).
//  - "w1_combined": min of the two x-parts plus min of the two measure parts (+1).
//  - dot potential only (docs/theory.md, lipschitz: sharper bounds):
//    "w1_stacked_reach": ||[W_O^1 V_1 ... W_O^H V_H]|| ((sum_h x_core_h^2)^1/2 +
//      (sum_h ((1 + 2 R rho*_h) e^{2 R rho*_h})^2)^1/2) (+1), rho*_h = key_reach;
//    "w1_column_density": the best x-part + sum_h ||W_O^h V_h|| (1 + 2 R rho*_h)
//      exp(lambda_max(B) R^2/4 + 2 R rho*(A_h - B, c_h)) (+1), B = t sym(A_h)_+,
//      t on a grid of [0, 1] (PSD-splitting lemma; any PSD B is valid).
//    best_w1 is the smallest W1 bound, best_name its name.
//  - "kim_token_l2", "kim_token_linf" (Kim, Papamakarios and Mnih, ICML 2021):
//    bounds on the TOKEN-LEVEL Jacobian of X -> (Gamma_{mu_X}(x_i))_i on
//    R^{N x d} (all of it, no radius) with N = `tokens`, in the l2 and l_inf
//    operator norms, for models that are L2 multi-head attention in their
//    sense (see kim_applicability). They are not bounds on the W1 constant.
//      l2:   sqrt(N/k) (4 phi^-1(N-1) + 1) (sum_h ||W^{Q,h}||^4 ||W^{V,h}||^2)^(1/2) ||W^O||
//      linf: (4 phi^-1(N-1) + 1/sqrt(k)) ||W^O^T||_inf max_h ||W^{Q,h}||_inf ||W^{Q,h}^T||_inf
//            max_h ||W^{V,h}^T||_inf
//    (k = head size; the 4th power of ||W^{Q,h}|| is forced by homogeneity: F is
//    quadratic in W^Q through A^h, and at N = 1 the bound is attained.)
//
// Complexity: one SVD per head and matrix, O(H d^3).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "measattn/attention.hpp"
#include "measattn/communicator.hpp"
#include "measattn/measure.hpp"
#include "measattn/options.hpp"
#include "measattn/progress.hpp"
#include "measattn/status.hpp"
#include "measattn/threads.hpp"
#include "measattn/types.hpp"

namespace measattn {

/// Spectral norm (largest singular value) via Eigen's BDCSVD; 0 for empty matrices.
double spectral_norm(const MatrixD& m);

/// One named upper bound and what it bounds.
struct NamedBound {
  std::string name;
  double value = 0;
  /// "w1" (the constant of mu -> F(mu) in W1 on B_R), "token_l2" / "token_linf"
  /// (the operator norm of the token-level Jacobian on R^{N x d}) or
  /// "token_l2_ball" (its spectral norm for X in B_R^N: token_ball_upper_bound).
  std::string kind;
  std::string meaning;
};

/// The two parts of the W1 theorem for one head (before W_O).
struct HeadBound {
  double x_part = 0;                ///< Lx_h with ||V_h||
  double measure_part = 0;          ///< Lm_h with ||V_h||
  double x_core = 0;                ///< Lx_h / ||V_h||:  ||A|| R^2 (dot), ||B|| R^2 (l2)
  double measure_core = 0;          ///< Lm_h / ||V_h||
  double value_norm = 0;            ///< ||V_h||
  double projected_value_norm = 0;  ///< ||W_O^h V_h||
  double rho = 0;                   ///< sup_{x in B_R} of the y-gradient of the logit
  double oscillation = 0;           ///< sup_x osc_{y in B_R} of the y-dependent logit
  /// Dot potential: rho* = max_{||x|| <= R} ||A^T x + c|| (key_reach); 0 otherwise.
  double rho_star = 0;
  /// Dot potential: the exponent of the column-density bound, min over B = t sym(A)_+
  /// of lambda_max(B) R^2 / 4 + 2 R rho*(A - B, c), and its t.
  double column_exponent = 0;
  double psd_t = 0;
};

/// The exact reach of the key direction, max_{||x|| <= R} ||A^T x + c||, as a
/// trust-region problem: `value` is the dual certificate
/// sqrt(lambda R^2 + ||c||^2 + g^T (lambda I - A A^T)^{-1} g), g = A c, at the root
/// lambda > lambda_max(A A^T) of the secular equation (lambda -> lambda_max in the
/// hard case), `primal` the value at the corresponding point of the ball
/// (primal <= max <= value; they agree to rounding). O(d^3).
struct KeyReach {
  double value = 0, primal = 0, lambda = 0;
  bool hard_case = false;
};
KeyReach key_reach(const MatrixD& a, const VectorD& c, double radius);

/// Whether Kim et al.'s L2-MHA bounds apply to a model, and the factorization
/// they need: per head, tied projections W^{Q,h} = W^{K,h} (our Q_h == K_h),
/// b_q,h == b_k,h (the difference cancels in the logit), potential l2, and a
/// value map V_h = M_h Q_h^T Q_h / tau (Kim's X A^h W^{V,h}); b_v and b_O only
/// shift the output and do not enter the Jacobian. With tau != sqrt(k) the
/// model is Kim's with W^{Q,h} = Q_h^T (sqrt(k)/tau)^(1/2).
struct KimApplicabilityResult {
  bool applies = false;
  std::string reason;                 ///< why not (empty when it applies)
  std::vector<MatrixD> value_factor;  ///< M_h (k x d), the min-norm solution
  double residual = 0;                ///< max_h ||V_h - M_h Q_h^T Q_h / tau|| / ||V_h||
};

/// Checks the conditions above (relative tolerance `tolerance` on the equalities).
KimApplicabilityResult kim_applicability(const Model<double>& model, double tolerance = 1e-9);

struct UpperBoundOptions {
  double radius = 1;      ///< R > 0: supports in B_R
  bool residual = false;  ///< the layer is mu -> (id + Gamma_mu)#mu (needs d_out == d)
  Index tokens = 0;       ///< N for Kim's token-level bounds (0 = do not report them)
  void validate() const;
};

/// The user-facing fields of UpperBoundOptions (options.hpp).
template <class Visitor>
void for_each_field(UpperBoundOptions& o, Visitor&& visit) {
  visit("radius", o.radius, "Supports in the ball B_R (R > 0)");
  visit("residual", o.residual, "The layer is mu -> (id + Gamma_mu)#mu");
  visit("tokens", o.tokens, "N for Kim's token-level bounds (0 = do not report them)");
}

struct UpperBoundResult {
  double radius = 0;
  bool residual = false;
  std::vector<HeadBound> heads;
  std::vector<NamedBound> bounds;  ///< every bound that applies, W1 bounds first
  /// The smallest "w1" bound. A bound past double's range (e^oscillation overflows at
  /// large R or large weights) is +inf, never NaN, and its meaning says so.
  double best_w1 = 0;
  std::string best_name;
  /// Radius of a ball containing the outputs Gamma_mu(x), x in B_R, for any mu
  /// in B_R (the input radius of the next layer of a stack).
  double output_radius = 0;
  /// Value of a bound by name; NaN when absent.
  double get(const std::string& name) const;
};

/// Every upper bound that applies to `model` (dot or l2 potential; a custom
/// potential throws invalid_argument) on B_R. Self-attention: d_q == d_kv.
/// (The lower-bound searches and token_jacobian_norm instead refuse, with
/// invalid_argument naming radius / model / tokens, inputs for which bounds on the
/// projections, logits or outputs exceed 1e150: double cannot carry them through
/// the layer and its derivatives.)
UpperBoundResult lipschitz_upper_bounds(const Model<double>& model,
                                        const UpperBoundOptions& options);

/// Kim et al.'s phi^{-1}(N - 1) = W_0((N - 1) / e) (Lambert W, principal branch).
double kim_phi_inverse(double n_minus_one);

/// A stack of layers F_L o ... o F_1 on B_R: layer l gets the radius R_{l-1}
/// its input can reach (R_0 = R; R_l = output_radius of layer l at R_{l-1}), and
/// L <= prod_l L_l(R_{l-1}).
struct StackBoundResult {
  std::vector<double> radii;      ///< R_0, ..., R_L
  std::vector<double> constants;  ///< L_l(R_{l-1})
  double value = 0;               ///< the product
};
StackBoundResult lipschitz_stack_upper_bound(const std::vector<Model<double>>& layers,
                                             double radius, bool residual = false);

/// Output radius of one layer on B_R: min of
///   ||W_O|| (sum_h (||V_h|| R + ||b_v,h||)^2)^(1/2) + ||b_O||   and
///   sum_h (||W_O^h V_h|| R + ||W_O^h b_v,h||) + ||b_O||,
/// plus R when residual.
double attention_output_radius(const Model<double>& model, double radius, bool residual = false);

// ---------------------------------------------------------------------------
// Lower bounds.

/// Search for mu, nu in B_R maximizing W1(F(mu), F(nu)) / W1(mu, nu).
struct LipschitzSearchOptions {
  Index atoms = 4;          ///< atoms of each measure (>= 1; the pair has >= 2 in all)
  int restarts = 16;        ///< restarts (random, nearby, adversarial seeds), >= 1
  int steps = 60;           ///< ascent steps per restart, >= 0
  double step_size = 0.05;  ///< initial step, as a fraction of R (positions) / in logits
  double nearby = 1e-3;     ///< relative size of the nearby-pair perturbation (> 0)
  std::uint64_t seed = 0x1a2b3c;
  int threads = 0;  ///< OpenMP threads over restarts (0 = default, at most kMaxThreads)
  bool residual = false;
  bool progress = false;  ///< progress line on stderr (only when it is a terminal)
  /// Called with (done, total) after each restart finishes (total = restarts, + 1
  /// for the covariance seed when atoms >= 3), from the thread that ran it, one at a
  /// time; an exception it throws stops the search and propagates. Not a field
  /// (not in the table below); no effect on the result. Distributed: on every rank,
  /// counting that rank's restarts (total = its share).
  ProgressCallback progress_callback;
  /// The ranks that share the restarts (communicator.hpp): every rank passes the
  /// same model, radius and options; each runs its share of the restarts, and
  /// every rank returns the same result, bit-identical to one process. The
  /// calling process alone by default. Not in the field table.
  Communicator communicator;
  void validate() const;
};

/// The user-facing fields of LipschitzSearchOptions (options.hpp).
template <class Visitor>
void for_each_field(LipschitzSearchOptions& o, Visitor&& visit) {
  visit("atoms", o.atoms, "Atoms per measure in the search (and N)");
  visit("restarts", o.restarts, "Search restarts");
  visit("steps", o.steps, "Ascent steps per restart");
  visit("step_size", o.step_size, "Initial step (fraction of R)");
  visit("nearby", o.nearby, "Relative size of the nearby-pair perturbation");
  visit("seed", o.seed, "Random seed");
  visit("threads", o.threads, "OpenMP threads (0 = default, at most 1024)");
  visit("residual", o.residual, "The layer is mu -> (id + Gamma_mu)#mu");
  visit("progress", o.progress, "Progress line on stderr (terminal only)");
}

/// The best pair found, with its images, recomputed exactly in double.
struct LipschitzWitness {
  MatrixD mu_atoms, nu_atoms;  ///< n x d, m x d
  VectorD mu_weights, nu_weights;
  MatrixD f_mu_atoms, f_nu_atoms;  ///< Gamma_mu(x_i), Gamma_nu(y_j) (weights as above)
  /// W1(mu, nu): the exact solver's value, or (long double certification) the
  /// explicit coupling's cost, an upper bound
  double w1_input = 0;
  /// W1(F(mu), F(nu)) as certified: the exact value (or, long double, the dual
  /// lower bound) less the rounding margin, so that ratio = w1_output / w1_input
  double w1_output = 0;
  /// "random", "nearby", "adversarial", "weights", "covariance", "tiny_atom" (a
  /// heavy bulk and a tiny atom moved in the direction that moves the output most)
  /// or "extremal_pair" (mass added at a point the bulk weighs e^Delta more)
  std::string origin;
  int restart = -1;
  /// How the ratio was certified: "double, exact W1 on both sides" or "long double:
  /// ..." (the extended-precision recheck of pairs with equal weights or equal atoms).
  std::string certification;
  /// The factor by which the pair's difference was scaled up ("moved apart") after
  /// the ascent because the certified ratio grew (1 = not moved).
  double separation = 1;
};

struct LipschitzSearchResult {
  double ratio = 0;  ///< certified lower bound on the W1 constant on B_R
  LipschitzWitness witness;
  /// Best certified ratio of each restart (restarts + 1 entries when atoms >= 3: the
  /// last is the covariance seed).
  std::vector<double> restart_ratios;
  std::int64_t evaluations = 0;  ///< pairs evaluated (objective evaluations)
  /// completed (all restarts ran) or degenerate (no pair with W1(mu, nu) > 0 was
  /// found; ratio 0). See status.hpp.
  Status status = Status::completed;
  std::string message;
};

/// Projected gradient ascent of log W1(F(mu),F(nu)) - log W1(mu,nu) over atom
/// positions (projected onto B_R) and weights (softmax logits), with analytic
/// gradients through the softmax kernel and the optimal plans / Kantorovich
/// potentials of the exact W1 solver (envelope theorem). Restart r uses its own
/// seed (seed, r) and restarts are reduced in order, so the result does not
/// depend on the thread count. Every reported ratio is W1 exact / W1 exact.
/// Cost per evaluation: O(H n^2 E) + two exact W1 problems of n x n atoms.
LipschitzSearchResult lipschitz_lower_bound(const Model<double>& model, double radius,
                                            const LipschitzSearchOptions& options = {});

/// Both sides of the W1 constant over a grid of radii R and inverse
/// temperatures beta: at each point the model's logits are multiplied by beta
/// (tau -> tau / beta, every head), lipschitz_upper_bounds gives the best proved
/// bound on B_R and lipschitz_lower_bound the certified lower bound, with the
/// search options `search` (the same seed at every point).
struct LipschitzSweepOptions {
  std::vector<double> radii;          ///< R > 0, finite; at least one
  std::vector<double> betas = {1.0};  ///< beta > 0, finite; at least one
  /// Each point's search; search.residual also selects the residual layer for the
  /// upper bounds. search.communicator shares the grid: with at least as many
  /// points as ranks each rank runs its share of the points (each point's
  /// search on that rank alone), else every point's restarts are shared;
  /// either way every rank returns the same result, bit-identical to one
  /// process. search.progress_callback is called after each point of the
  /// calling rank (done, its points), never by the searches.
  LipschitzSearchOptions search;
  void validate() const;
};

struct LipschitzSweepPoint {
  double radius = 0, beta = 1;
  double best_upper = 0;  ///< the smallest proved W1 bound (+inf past double's range)
  std::string best_name;  ///< its name (UpperBoundResult::best_name)
  /// The certified lower bound on B_R: the best ratio found by the searches at this
  /// beta and at every radius r <= R of the grid (a pair in B_r lies in B_R too);
  /// 0 when every such search is degenerate.
  double lower = 0;
  double search_ratio = 0;       ///< the ratio this point's own search found (<= lower)
  double witness_radius = 0;     ///< the radius whose search gave `lower` (0 when lower is 0)
  std::string witness_origin;    ///< that search's witness's seed family ("" when lower is 0)
  double gap = 0;                ///< best_upper / lower (+inf when lower is 0)
  std::int64_t evaluations = 0;  ///< this point's search
};

struct LipschitzSweepResult {
  /// One point per (beta, radius), betas outer, radii inner, in the options' order.
  std::vector<LipschitzSweepPoint> points;
  std::int64_t evaluations = 0;
};

/// Cost: the grid's size times one lipschitz_upper_bounds and one
/// lipschitz_lower_bound.
LipschitzSweepResult lipschitz_sweep(const Model<double>& model,
                                     const LipschitzSweepOptions& options);

/// The local certificate around a given measure mu (docs/theory.md, lipschitz:
/// local certificate): for every nu supported in B_R with W1(nu, mu) <= eps,
///     W1(F(nu), F(mu)) <= L_loc(eps) W1(nu, mu),
///     L_loc(eps) = sum_h P_h [ sum_i mu_i (1 + 2 R |a_hi|) S_hi / (1 - eps |a_hi| S_hi)
///                              + 3 x_core_h ]  (+1 residual),
/// dot potential with biases, P_h = ||W_O^h V_h||, a_hi = K_h^T (Q_h x_i + b_q) / tau
/// (the y-gradient of head h's logit at query x_i), and
///     S_hi = e^{R |a_hi|} / sum_j mu_j e^{<a_hi, x_j>}
/// the weight the heaviest point of B_R would get against mu's own partition
/// function at x_i: mu's actual kernel concentration. +inf when eps |a_hi| S_hi >= 1
/// for some atom of mu. The global bounds (lipschitz_upper_bounds) hold too; best
/// is the smaller. Beside it, a certified lower bound: the largest exact ratio
/// over measures nu in B_R with 0 < W1(nu, mu) <= eps found around mu (tiny atoms
/// at each query's heaviest point, atoms moved along the logit gradients, random
/// moves).
struct LocalBoundOptions {
  double eps = 0;     ///< > 0, finite: the W1 radius of the neighbourhood of mu
  double radius = 0;  ///< R >= max_i ||x_i||; 0 = mu's own radius (its largest norm)
  bool residual = false;
  int restarts = 16;  ///< random candidates of the lower-bound search (>= 0)
  std::uint64_t seed = 7;
  void validate() const;
};

struct LocalBoundResult {
  double radius = 0;  ///< R used
  double eps = 0;
  double upper = 0;          ///< L_loc(eps) (+inf when vacuous)
  double upper_at_zero = 0;  ///< L_loc(0): its limit as eps -> 0
  /// The largest eps at which every factor 1 / (1 - eps |a_hi| S_hi) is at most 2:
  /// 1 / (2 max |a_hi| S_hi) (+inf when every a_hi is 0; 0 when it underflows).
  /// L_loc(eps_half) <= 2 L_loc(0), a proved bound for W1(nu, mu) <= eps_half.
  double eps_half = 0;
  double upper_at_eps_half = 0;            ///< L_loc(eps_half)
  std::vector<double> head_measure_terms;  ///< per head: P_h sum_i mu_i (...) at eps
  double x_term = 0;                       ///< 3 sum_h P_h x_core_h (+1 residual)
  double global_upper = 0;                 ///< best_w1 of lipschitz_upper_bounds on B_R
  std::string global_name;
  double best_upper = 0;       ///< min(upper, global_upper)
  double lower = 0;            ///< certified: the best ratio found, exact W1 on both sides
  double witness_w1 = 0;       ///< W1(nu, mu) of the witness (<= eps)
  std::string witness_origin;  ///< "tiny_atom", "gradient_move" or "random_move"
  MatrixD witness_atoms;       ///< the witness nu
  VectorD witness_weights;
  std::int64_t evaluations = 0;  ///< candidates evaluated
};
LocalBoundResult lipschitz_local_bound(const Model<double>& model, const MeasureD& mu,
                                       const LocalBoundOptions& options);

/// Ratio W1(F(mu), F(nu)) / W1(mu, nu) by the exact solver (0 when W1(mu,nu) = 0).
double lipschitz_ratio(const Model<double>& model, const MeasureD& mu, const MeasureD& nu,
                       bool residual = false);

/// Castin, Ablin and Peyre's adversarial sequence for dot-product attention:
/// with S the symmetric part of A = Q^T K / tau (head 0) and u the eigenvector
/// of the eigenvalue of largest modulus, R (u, u/2, ..., u/2) when it is
/// positive, R (-u, u, ..., u) otherwise. n x d.
MatrixD castin_adversarial_tokens(const Model<double>& model, Index n, double radius);

// ---------------------------------------------------------------------------
// Token level: J(X) = d/dX (Gamma_{mu_X}(x_i))_i, X in R^{n x d}, uniform weights.

/// J(X) Xdot (n x d_out) by forward-mode differentiation (dual numbers), exact.
MatrixD token_jvp(const Model<double>& model, const MatrixD& x, const MatrixD& x_dot,
                  bool residual = false);
/// J(X)^T Gbar (n x d) by reverse mode, exact.
MatrixD token_vjp(const Model<double>& model, const MatrixD& x, const MatrixD& g_bar,
                  bool residual = false);
/// The dense Jacobian (n d_out x n d, row-major vec of X), from n d JVPs. For tests.
MatrixD token_jacobian(const Model<double>& model, const MatrixD& x, bool residual = false);

struct TokenJacobianOptions {
  int iterations = 300;      ///< cap on the Krylov restarts (>= 1)
  double tolerance = 1e-10;  ///< stop when ||J^T J v - s^2 v|| <= tolerance s^2 (s = ||J v||)
  std::uint64_t seed = 7;
  bool residual = false;
  void validate() const;
};

/// The user-facing fields of TokenJacobianOptions (options.hpp).
template <class Visitor>
void for_each_field(TokenJacobianOptions& o, Visitor&& visit) {
  visit("iterations", o.iterations, "Cap on the Krylov restarts");
  visit("tolerance", o.tolerance, "Relative residual ||J^T J v - s^2 v|| / s^2 to stop");
  visit("seed", o.seed, "Random seed of the start vector");
  visit("residual", o.residual, "The layer is X -> X + Gamma(X)");
}

/// ||J(X)||_2 with its certificate. For the returned unit vector v (the top Ritz
/// vector of J^T J), s = value = ||J v|| and r = residual = ||J^T J v - s^2 v||:
///  - lower = s <= ||J(X)||_2 always (certified up to the rounding of one JVP);
///  - J^T J has an eigenvalue in [s^2 - r, s^2 + r] (s^2 is the Rayleigh quotient
///    of v), so upper = sqrt(s^2 + r) bounds ||J(X)||_2 from above as soon as that
///    eigenvalue is the largest one, which is what Lanczos from a random start
///    finds with probability 1; it is not a deterministic certificate.
struct TokenJacobianResult {
  double value = 0;    ///< ||J v||: ||J(X)||_2 to ~ r^2 / gap, a certified lower bound
  int iterations = 0;  ///< Krylov restarts
  Status status = Status::converged;  ///< converged or iteration_limit (status.hpp)
  std::string message;
  double residual = 0;        ///< r = ||J^T J v - value^2 v||
  double lower = 0;           ///< = value
  double upper = 0;           ///< sqrt(value^2 + r) (see above)
  std::int64_t products = 0;  ///< applications of J^T J (one JVP and one VJP each)
  std::string method;         ///< "lanczos" (Spectra on J^T J) or "direct" (n d = 1)
  bool converged = false;     ///< r <= tolerance value^2
};

/// ||J(X)||_2 by implicitly restarted Lanczos (Spectra) on v -> J^T J v, each
/// application one JVP and one VJP (never the dense Jacobian); the stopping rule
/// is the relative residual of the Ritz pair. O(restarts * 20 * H n^2 k).
TokenJacobianResult token_jacobian_norm(const Model<double>& model, const MatrixD& x,
                                        const TokenJacobianOptions& options = {});

struct TokenSearchOptions {
  Index tokens = 8;  ///< N
  int restarts = 8;
  int steps = 100;
  double step_size = 0.05;  ///< relative to the scale (R, or 1 when unconstrained)
  double radius = 0;        ///< > 0: X in B_R^N (projected); 0: unconstrained
  std::uint64_t seed = 11;
  bool residual = false;
  int threads = 0;  ///< OpenMP threads over restarts (0 = default, at most kMaxThreads)
  /// token_lipschitz_lower_bound: called with (done, restarts) after each restart
  /// finishes, from the thread that ran it, one at a time; token_lipschitz_sweep:
  /// with (done, sizes) after each size (its searches report nothing). An exception
  /// it throws stops the call and propagates. Not a field; no effect on the result.
  /// Distributed: on every rank, counting that rank's restarts.
  ProgressCallback progress_callback;
  /// The ranks that share the restarts, as in LipschitzSearchOptions (the sweep
  /// passes it to each size's search). Not in the field table.
  Communicator communicator;
  void validate() const;
};

/// The user-facing fields of TokenSearchOptions (options.hpp).
template <class Visitor>
void for_each_field(TokenSearchOptions& o, Visitor&& visit) {
  visit("tokens", o.tokens, "N");
  visit("restarts", o.restarts, "Search restarts");
  visit("steps", o.steps, "Ascent steps per restart");
  visit("step_size", o.step_size, "Initial step (relative to R, or 1 when unconstrained)");
  visit("radius", o.radius, "> 0: X in B_R^N (projected); 0: unconstrained");
  visit("seed", o.seed, "Random seed");
  visit("residual", o.residual, "The layer is X -> X + Gamma(X)");
  visit("threads", o.threads, "OpenMP threads (0 = default, at most 1024)");
}

struct TokenSearchResult {
  double value = 0;  ///< max ||J(X)||_2 found, recomputed by token_jacobian_norm (certified lower)
  MatrixD tokens;    ///< the maximizing X
  std::int64_t evaluations = 0;  ///< applications of J^T J in all
  double upper = 0;     ///< token_jacobian_norm's upper at the witness (see TokenJacobianResult)
  double residual = 0;  ///< its residual at the witness
  /// The seed of the winning restart: "castin", "castin_other", "outlier" (Kim's
  /// (t e, 0, ..., 0) after a line search over t) or "random".
  std::string origin;
  std::vector<double> restart_values;  ///< certified value of each restart, in order
};

/// Maximizes ||J(X)||_2 over X (Kim et al.'s empirical lower bound): ascent on
/// sigma(X) = u^T J(X) v with u, v the top singular pair (d sigma = u^T dJ v,
/// exact by forward over reverse mode), projected on B_R^N. Restart r is seeded
/// by r mod 4: Castin's sequence of the dominant sign, the sequence of the other
/// sign, Kim's outlier (t e, 0, ..., 0) with a line search over t, a random start
/// (jittered from the second round on). The witness's constant is recomputed by
/// token_jacobian_norm. Restarts have their own seeds and are reduced in order.
TokenSearchResult token_lipschitz_lower_bound(const Model<double>& model,
                                              const TokenSearchOptions& options = {});

// ---------------------------------------------------------------------------
// Token level on B_R^n: a proved upper bound and the sweep over n.

/// The proved bound "token_ball_l2" (docs/theory.md, token level on B_R^n) on
/// ||J(X)||_2 for every X in B_R^n, dot potential, uniform weights, any heads and
/// biases. Per head, with A = Q^T K / tau, c = K^T b_q / tau, rho = ||A|| R + ||c||,
/// C = min(n, e^{2 R rho}) (a bound on the column sums of the attention matrix):
///     L_h = ||A|| R^2 + sqrt(C) (1 + R rho),
///     L = min(||W_O|| (sum_h ||V_h||^2 L_h^2)^(1/2), sum_h ||W_O^h V_h|| L_h) (+1 residual).
/// It grows like sqrt(n) while n < e^{2 R rho} and is independent of n beyond.
struct TokenBallBound {
  double value = 0;                    ///< L (+inf past double's range, never NaN)
  std::vector<double> head_constants;  ///< L_h
  std::vector<double> column_sums;     ///< C_h
  bool mean_field = false;             ///< C_h < n for every head (the n-free regime)
};
TokenBallBound token_ball_upper_bound(const Model<double>& model, double radius, Index tokens,
                                      bool residual = false);

/// token_lipschitz_lower_bound at each n of `sizes` (increasing, >= 1) on B_R^n
/// (options.radius > 0; options.tokens is ignored), with Castin's sequence's
/// local constant and the proved bound (dot potential) beside it, and the
/// least-squares exponents of log value against log n.
struct TokenSweepResult {
  std::vector<Index> sizes;
  std::vector<double> lower;            ///< certified lower bounds (the search)
  std::vector<double> castin;           ///< ||J|| at castin_adversarial_tokens(model, n, R)
  std::vector<double> upper;            ///< token_ball_l2 (empty unless the potential is dot)
  std::vector<std::string> origins;     ///< each n's witness: a search seed or "castin_sequence"
  double exponent_lower = 0;            ///< slope of log lower vs log n
  double exponent_upper = 0;            ///< slope of log upper vs log n (0 when absent)
  double exponent_castin = 0;           ///< slope of log castin vs log n
  std::vector<double> local_exponents;  ///< slopes of log lower between consecutive sizes
  std::int64_t evaluations = 0;
};
TokenSweepResult token_lipschitz_sweep(const Model<double>& model, const std::vector<Index>& sizes,
                                       const TokenSearchOptions& options = {});

}  // namespace measattn
