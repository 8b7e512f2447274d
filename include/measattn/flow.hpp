// measattn/flow.hpp — self-attention as interacting particles; infinitely deep
// weight-shared networks as flows of measures (docs/theory.md#flow).
//
// Tokens are particles x_i(t) in R^d with fixed weights w_i (sum 1) and
// mu_t = sum_i w_i delta_{x_i(t)}. The flow is the ODE system
//
//   dx_i/dt = f_i(X) = Gamma_{mu_t}(x_i)                      (FlowField::attention)
//
// with Gamma the attention field of one Model (attention.hpp). Its measure
// solves the continuity equation d/dt mu_t + div(mu_t Gamma_{mu_t}) = 0.
// Explicit Euler with L steps of h = T / L is exactly the weight-shared residual
// network x^{l+1} = x^l + h Gamma_{mu^l}(x^l) (for h = 1: PyTorch's x + mha(x,x,x)).
//
// Variants (FlowOptions::norm, the placement of the normalization, NormPlacement):
//  - none: the plain flow above.
//  - post (layer-norm dynamics on the sphere; FlowOptions::sphere is the same):
//    f_i = P_{x_i}(Gamma_{mu_t}(x_i)), P_x(y) = y - <x,y> x;
//    the starting points are normalized to unit length, and every accepted step
//    ends with x_i <- x_i / ||x_i||. Stage points in between are not normalized
//    (f is extended to R^d by the same formula; the sphere is invariant for it).
//  - pre: the tokens live in R^d and attention reads the normalized tokens:
//    f_i = Gamma_{nu_t}(u_i), u_i = x_i / ||x_i||, nu_t = sum_j w_j delta_{u_j};
//    the update is added unnormalized. A token at the origin has no direction:
//    it is read as u_i = 0 (the limit of x / sqrt(||x||^2 + eps) at x = 0, a
//    LayerNorm's epsilon), never NaN.
//  - causal (attention.causal): token i attends to tokens j <= i in every stage;
//    token 0 sees only itself (with V = I on the sphere it never moves).
//  - Sinkhorn (attention.normalization = sinkhorn, attention.sinkhorn_iterations
//    iterations; 0 is softmax): the doubly stochastic kernel in every stage, the
//    Sinkformer dynamics (Sander, Ablin, Blondel, Peyre 2022). One process only.
//  - FlowField::unnormalized ("USA"), canonical model only, sphere only:
//    f_i = P_{x_i}( sum_j w_j exp(beta <x_i, x_j>) x_j ), the gradient ascent of
//    E_beta below. On the sphere every exponent is <= beta, so beta <= 700 is
//    required (exp(700) < DBL_MAX): no overflow can occur.
//  - the canonical model of the literature: Model::canonical(d, beta), V = I,
//    G(x,y) = beta <x,y> (Geshkovski, Letrouit, Polyanskiy, Rigollet 2023,
//    arXiv 2312.10794; Sander et al. 2022).
//
// Schemes: explicit Euler (order 1), Heun (2), classical Runge–Kutta (4), and the
// adaptive Dormand–Prince 5(4) pair (Hairer, Norsett, Wanner, "Solving ODEs I",
// II.4–II.5: FSAL, RMS error norm with atol = rtol = tolerance, PI step-size
// controller). Every field evaluation is the streaming attention kernel: O(n^2 d)
// time (n particles, E-dim heads: O(n^2 E)), O(n d) memory, OpenMP over query
// blocks, bit-identical results for any thread count.
//
// Long runs: periodic checkpoints hold the whole integrator state (particles,
// time, step index, dopri5 step size, PI memory and FSAL derivative, frames saved
// so far) and are written atomically; resuming repeats exactly the same
// computation, so a killed and resumed run ends bit-identical to an
// uninterrupted one. Fixed-step schemes compute t_l = l T / L from the step index.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "measattn/attention.hpp"
#include "measattn/error.hpp"
#include "measattn/measure.hpp"
#include "measattn/options.hpp"
#include "measattn/progress.hpp"
#include "measattn/status.hpp"
#include "measattn/types.hpp"

namespace measattn {

enum class FlowScheme { euler, heun, rk4, dopri5 };
enum class FlowField { attention, unnormalized };

/// "euler" / "heun" / "rk4" / "dopri5"; "attention" / "unnormalized".
std::string to_string(FlowScheme s);
std::string to_string(FlowField f);
/// Parses a scheme name; throws invalid_argument naming `field` otherwise.
FlowScheme parse_flow_scheme(const std::string& name, const std::string& field = "scheme");
/// Parses "attention" / "unnormalized"; throws invalid_argument naming `field` otherwise.
inline FlowField parse_flow_field(const std::string& name, const std::string& field = "field") {
  if (name == "attention") return FlowField::attention;
  if (name == "unnormalized") return FlowField::unnormalized;
  throw invalid_argument(field + ": expected \"attention\" or \"unnormalized\", got \"" + name +
                         "\"");
}

struct FlowOptions {
  double time = 1;   ///< T > 0, finite
  Index steps = 10;  ///< L >= 1: number of steps of the fixed-step schemes (dopri5 ignores it)
  FlowScheme scheme = FlowScheme::euler;
  double tolerance = 1e-6;    ///< dopri5: atol = rtol = tolerance (> 0)
  Index max_steps = 1000000;  ///< dopri5: cap on attempted steps (status iteration_limit)
  /// dopri5: first step size; 0 = Hairer's automatic choice (II.4, "hinit").
  double initial_step = 0;
  bool sphere = false;  ///< the same as norm = post (kept as its alias)
  /// Where the normalization sits: none (plain), post (on the unit sphere), pre
  /// (attention reads x / |x|). norm = pre with sphere is refused.
  NormPlacement norm = NormPlacement::none;
  FlowField field = FlowField::attention;  ///< unnormalized: canonical model + norm post only

  /// Save a frame (particles, time, energy, cluster count) every `save_every`
  /// accepted steps; frame 0 is the start, the final state is always saved.
  /// 0 = no frames.
  Index save_every = 0;
  /// Cluster count tolerance per frame (see cluster_count); 0 = no counts.
  double cluster_tolerance = 1e-2;

  /// Write `checkpoint_path` (atomically) every `checkpoint_every` accepted steps; 0 = never.
  Index checkpoint_every = 0;
  std::string checkpoint_path;
  /// Start from `checkpoint_path` (must exist and match model, measure and options).
  bool resume = false;

  bool progress = false;  ///< progress line on stderr (only when it is a terminal)
  /// Called after every accepted step (after any checkpoint); returning true stops
  /// the run with status interrupted. For tests and interactive use.
  std::function<bool(Index step, double time)> should_stop;
  /// Called after every accepted step with (done, total): (step, steps) for the
  /// fixed-step schemes, (floor(1000 t / T), 1000) for dopri5 (progress.hpp); an
  /// exception it throws stops the run and propagates. Not part of the results.
  ProgressCallback progress_callback;
  /// Attention kernel options: causal, normalization and sinkhorn_iterations
  /// (Sinkhorn: one process only, not with causal), block sizes; residual is
  /// refused (the flow is the residual update). attention.communicator: with
  /// several ranks, every rank passes the same
  /// model, measure and options, the ranks split the query rows of every stage's
  /// field and gather them (the tied Q = K kernels are not split: every rank
  /// computes the whole field), rank 0 alone writes checkpoints, and every rank
  /// returns the result, bit-identical to one process whatever the rank count;
  /// a checkpoint written on P ranks resumes on any other number.
  AttendOptions attention;

  /// The placement in effect: post when sphere is set, else norm.
  NormPlacement placement() const { return sphere ? NormPlacement::post : norm; }

  /// Throws invalid_argument naming the field on a bad value.
  void validate() const;
};

/// The user-facing fields of FlowOptions (options.hpp); should_stop, progress_callback and the
/// nested attention options (attention.query_block, attention.key_block) are not listed.
template <class Visitor>
void for_each_field(FlowOptions& o, Visitor&& visit) {
  visit("time", o.time, "Final time T");
  visit("steps", o.steps,
        "Number of steps L (h = T/L; Euler = an L-layer weight-shared residual net)");
  visit("scheme", o.scheme, "euler | heun | rk4 | dopri5",
        EnumSpelling<FlowScheme>{[](FlowScheme s) { return to_string(s); }, &parse_flow_scheme});
  visit("tolerance", o.tolerance, "dopri5 tolerance (atol = rtol)");
  visit("max_steps", o.max_steps, "dopri5: cap on attempted steps");
  visit("initial_step", o.initial_step, "dopri5: first step size (0 = automatic)");
  visit("sphere", o.sphere, "Layer-norm dynamics on the unit sphere (the same as norm post)");
  visit("norm", o.norm, "none | post (on the sphere) | pre (attention reads x/|x|)",
        EnumSpelling<NormPlacement>{[](NormPlacement p) { return to_string(p); },
                                    &parse_norm_placement});
  visit("causal", o.attention.causal, "Token i attends to tokens j <= i (token 0 leads)");
  visit("normalization", o.attention.normalization,
        "softmax or sinkhorn (doubly stochastic: the Sinkformer flow; one process)",
        EnumSpelling<Normalization>{[](Normalization n) { return to_string(n); },
                                    &parse_normalization});
  visit("sinkhorn_iterations", o.attention.sinkhorn_iterations,
        "Sinkhorn iterations beyond softmax (with normalization sinkhorn)");
  visit("field", o.field, "attention | unnormalized",
        EnumSpelling<FlowField>{[](FlowField f) { return to_string(f); }, &parse_flow_field});
  visit("save_every", o.save_every, "Save a frame every K steps (frame 0 the start)");
  visit("cluster_tolerance", o.cluster_tolerance,
        "Distance under which particles count as one cluster (0 = no counts)");
  visit("checkpoint_every", o.checkpoint_every, "Write a checkpoint every K steps");
  visit("checkpoint_path", o.checkpoint_path, "Checkpoint file");
  visit("resume", o.resume, "Continue from the checkpoint");
  visit("progress", o.progress, "Progress line on stderr (terminal only)");
}

template <class Scalar>
struct FlowResult {
  Matrix<Scalar> particles;  ///< n x d at `time`
  Vector<Scalar> weights;    ///< normalized weights (fixed along the flow)
  double time = 0;           ///< time reached (T when completed)
  Index steps = 0;           ///< accepted steps
  Index rejected = 0;        ///< dopri5 rejected steps
  Index evaluations = 0;     ///< field evaluations (each O(n^2 d))
  /// completed (reached T), iteration_limit (dopri5: options.max_steps attempted steps,
  /// accepted + rejected), step_size_underflow (dopri5: step below 1e-14 T),
  /// non_finite (the particles left the floating-point range), interrupted
  /// (options.should_stop; the state is the last step). See status.hpp.
  Status status = Status::completed;
  std::string message;
  bool resumed = false;         ///< started from a checkpoint
  Index resumed_from_step = 0;  ///< its step index
  // Frames (save_every > 0): frame 0 is the start.
  std::vector<Matrix<Scalar>> frames;
  std::vector<double> frame_times;
  std::vector<Index> frame_steps;
  std::vector<double> energies;       ///< E_beta per frame (canonical model only, else empty)
  std::vector<Index> cluster_counts;  ///< per frame (cluster_tolerance > 0, else empty)
};

/// Runs the flow from mu0 to time T (or resumes it, options.resume).
/// Requires model.out_dim() == model.query_dim() == model.key_dim() == mu0.dim();
/// residual attention is refused. With norm post (or sphere) the start atoms are
/// normalized (a zero atom is an error); with norm pre a zero atom is read as
/// the origin. Causal flows need a positive weight on token 0.
/// Cost: O(L s n^2 d) for s field evaluations per step (Euler 1, Heun 2, RK4 4,
/// dopri5 6 + 1 per rejection); memory O(s n d + frames n d).
template <class Scalar>
FlowResult<Scalar> flow(const Model<Scalar>& model, const Measure<Scalar>& mu0,
                        const FlowOptions& options);

/// The right-hand side f(X) (n x d) for the particles X with weights w
/// (normalized, positive total): Gamma_{mu_X}(x_i), projected on the tangent
/// space when options.sphere, or the unnormalized field. Streaming, O(n^2 d).
template <class Scalar>
Matrix<Scalar> flow_field(const Model<Scalar>& model, const Vector<Scalar>& weights,
                          const MatrixRef<Scalar>& particles, const FlowOptions& options);

/// The same written into out (resized to n x d). For models with tied query and
/// key projections (the canonical one among them) the storage of an out that
/// already has that size is reused, which a loop over steps should do: fresh
/// arrays cost a page fault per 4 KiB each time (glibc returns freed ones to the
/// system; 15 % of a step at n = 1000, d = 64 here). out may be the particles'
/// own matrix (then it is replaced after the computation).
template <class Scalar>
void flow_field(const Model<Scalar>& model, const Vector<Scalar>& weights,
                const MatrixRef<Scalar>& particles, const FlowOptions& options,
                Matrix<Scalar>& out);

/// True when model is the canonical one (one head, Q = K = V = W_O = I, no bias,
/// dot potential); then *beta = 1 / tau.
template <class Scalar>
bool is_canonical(const Model<Scalar>& model, double* beta = nullptr);

/// E_beta(mu) = (1/(2 beta)) sum_ij w_i w_j exp(beta <x_i, x_j>), streamed
/// (O(n^2 d) time, O(n) memory, row-wise max shift; +inf if it overflows double).
/// Never decreases along the canonical flow, on the sphere or in R^d:
/// dE/dt = sum_i w_i Z_i ||f_i||^2 with Z_i = sum_j w_j exp(beta <x_i, x_j>).
template <class Scalar>
double sphere_energy(const MatrixRef<Scalar>& particles, const Vector<Scalar>& weights,
                     double beta);

/// Number of connected components of the graph with an edge when
/// ||x_i - x_j|| <= tolerance (union-find). Exact: a sweep over the atoms sorted
/// by their projection on the first principal direction compares only pairs whose
/// projections differ by at most `tolerance` (O(n log n + candidate pairs), at most
/// O(n^2 d)). Above `max_points` atoms a deterministic evenly spaced subsample of
/// max_points atoms is counted instead (a lower bound on the true count).
Index cluster_count(const MatrixRef<double>& particles, double tolerance, Index max_points = 20000);

/// gamma(t) of the orthogonal-start closed form (docs/theory.md#flow): n <= d
/// mutually orthogonal unit starts, uniform weights, canonical model with beta on
/// the sphere; every pairwise cosine equals gamma(t), the solution of
///   gamma' = 2 e^{beta gamma} (1 - gamma) ((n - 1) gamma + 1) / (e^beta + (n - 1) e^{beta gamma}),
/// gamma(0) = 0, integrated by classical RK4 with `steps` steps (error ~ steps^-4).
double orthogonal_start_cosine(Index n, double beta, double t, Index steps = 100000);

/// The equiangular-start reference (docs/theory.md#equiangular): n tokens
/// x_i = r0 u_i with unit u_i of pairwise cosine rho0 (-1/(n-1) < rho0 < 1),
/// uniform weights, the canonical model with beta, softmax attention without
/// mask. Every variant keeps the tokens equiangular with one common norm r(t);
/// with E = exp(-b (1 - rho)), b = beta (post, pre) or beta r^2 (none),
///   c = E / (1 + (n - 1) E),   s = 1 + (n - 1) rho,
///   rho' = 2 c s (1 - rho) / (pre ? r : 1),
///   r'   = 0 (post), g (pre), r g (none),   g = (1 + (n - 1) rho E) / (1 + (n - 1) E).
/// (post: r = 1, and rho' is orthogonal_start_cosine's ODE.) Integrated for
/// (1 - rho, r) by classical RK4 with `steps` steps (error ~ steps^-4); the
/// result holds 1 - rho without cancellation.
struct EquiangularState {
  double t = 0;
  double rho = 0;            ///< the common pairwise cosine
  double one_minus_rho = 1;  ///< 1 - rho, computed as such
  double norm = 1;           ///< the common norm r (1 for post)
};
/// The states at each of `times` (increasing, >= 0); throws invalid_argument
/// naming n, beta, rho0, r0, times or steps on a bad value. norm post uses r0 = 1.
std::vector<EquiangularState> equiangular_reference(NormPlacement norm, Index n, double beta,
                                                    double rho0, double r0,
                                                    const std::vector<double>& times,
                                                    Index steps = 100000);

/// A 64-bit fingerprint (FNV-1a) of everything that determines the computation:
/// model parameters, atoms and weights of mu0, and the options that change the
/// step sequence (not checkpoint_every, checkpoint_path, resume, progress).
/// Stored in checkpoints; a resume with a different fingerprint is refused.
template <class Scalar>
std::uint64_t flow_fingerprint(const Model<Scalar>& model, const Measure<Scalar>& mu0,
                               const FlowOptions& options);

}  // namespace measattn
