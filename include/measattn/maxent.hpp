// measattn/maxent.hpp — attention as maximum entropy (docs/theory.md#maxent).
//
// Scores g in R^m over the atoms of a reference probability measure
// mu = sum_j w_j delta_j (weights normalized to sum one; empty weights mean
// uniform). Everything is computed in the log domain (shifted by a running or
// global maximum), so scores of any finite magnitude give finite results.
//
// Gibbs variational principle:
//   log Z = log sum_j w_j e^{g_j} = max_{nu << mu} ( E_nu[g] - KL(nu || mu) ),
// attained only at nu*_j = w_j e^{g_j} / Z (the softmax attention row). For any
// candidate nu, log Z - (E_nu[g] - KL(nu||mu)) = KL(nu || nu*) >= 0 (duality gap).
//
// Constrained maximum entropy: for min g < c < max g (on supp mu) the minimizer
// of KL(nu || mu) subject to E_nu[g] = c is nu_beta ∝ w e^{beta g}, beta the
// unique root of E_{nu_beta}[g] = c; dE/dbeta = Var_{nu_beta}(g) > 0.
// Standard attention is beta = 1. Uniform mu: maximizing Shannon entropy.
//
// Diagnostics of a model: attention entropy per head and query, effective
// number of attended tokens exp(H), and the temperature curve (entropy against
// expected score when the logits are multiplied by beta).
//
// Doubly-stochastic (Sinkhorn) attention (sinkhorn_attention) is declared in
// measattn/attention.hpp, beside the attention it normalizes.
#pragma once

#include <string>
#include <vector>

#include "measattn/attention.hpp"
#include "measattn/measure.hpp"
#include "measattn/options.hpp"
#include "measattn/status.hpp"
#include "measattn/types.hpp"

namespace measattn {

// ---- Gibbs variational principle -------------------------------------------

/// The Gibbs (softmax) measure of scores g under reference weights w.
template <class Scalar>
struct GibbsResult {
  Vector<Scalar> probabilities;  // nu*_j = w_j e^{g_j} / Z  (0 where w_j = 0)
  Scalar log_partition = 0;      // log Z = logsumexp_j (g_j + log w_j), w normalized
  Scalar expected_score = 0;     // E_{nu*}[g]
  Scalar entropy = 0;            // Shannon entropy -sum nu* log nu* (natural log)
  Scalar kl = 0;                 // KL(nu* || mu)
};

/// The maximizer of E_nu[g] - KL(nu||mu) and its value log Z. `weights` empty =
/// uniform; otherwise non-negative, finite, positive total, same length as
/// `scores` (normalized here). Scores must be finite. Throws invalid_argument
/// naming "scores" or "weights". O(m).
template <class Scalar>
GibbsResult<Scalar> gibbs(const Vector<Scalar>& scores, const Vector<Scalar>& weights = {});

/// log sum_j w_j e^{g_j} (w normalized), stable for any finite scores. O(m).
template <class Scalar>
Scalar log_partition(const Vector<Scalar>& scores, const Vector<Scalar>& weights = {});

/// A candidate nu measured against the Gibbs principle.
template <class Scalar>
struct GibbsBoundResult {
  Scalar objective = 0;      // E_nu[g] - KL(nu || mu)  (a lower bound on log Z)
  Scalar log_partition = 0;  // log Z
  Scalar gap = 0;            // log Z - objective = KL(nu || nu*) >= 0, computed as the KL
};

/// Objective and duality gap of `candidate` (non-negative, finite, positive total;
/// normalized here). A candidate with mass on an atom of zero reference weight is
/// not absolutely continuous w.r.t. mu (objective -inf): that throws
/// invalid_argument naming "candidate" and the atom. O(m).
template <class Scalar>
GibbsBoundResult<Scalar> gibbs_bound(const Vector<Scalar>& scores, const Vector<Scalar>& candidate,
                                     const Vector<Scalar>& weights = {});

// ---- Constrained maximum entropy (temperature for a target score) ----------

struct MaxEntOptions {
  /// Stop when the Newton step is below beta_tolerance * max(1, |beta|) (the
  /// step is still applied), when E - c is exactly 0, or when the bracket
  /// collapses to adjacent floating-point numbers. Must be in [0, 1).
  double beta_tolerance = 1e-14;
  int max_iterations = 200;  // Newton/bisection steps (bracket expansion included); >= 1
  void validate() const;     // throws invalid_argument naming the field
};

/// The user-facing fields of MaxEntOptions (options.hpp).
template <class Visitor>
void for_each_field(MaxEntOptions& o, Visitor&& visit) {
  visit("beta_tolerance", o.beta_tolerance, "Relative Newton-step tolerance on beta, in [0, 1)");
  visit("max_iterations", o.max_iterations, "Solver iteration cap");
}

template <class Scalar>
struct MaxEntResult {
  Scalar beta = 0;               // inverse temperature
  Vector<Scalar> probabilities;  // nu_beta_j ∝ w_j e^{beta g_j}
  Scalar expected_score = 0;     // E_{nu_beta}[g]
  Scalar target = 0;             // c (for maxent_at_beta: = expected_score)
  Scalar residual = 0;           // expected_score - target
  Scalar entropy = 0;            // Shannon entropy of nu_beta (natural log)
  Scalar kl = 0;                 // KL(nu_beta || mu)
  Scalar log_partition = 0;      // log sum_j w_j e^{beta g_j}
  Scalar variance = 0;           // Var_{nu_beta}(g) = dE/dbeta
  Scalar score_min = 0;          // min g on supp mu: the admissible targets are
  Scalar score_max = 0;          //   the open interval (score_min, score_max)
  Scalar beta_lower = 0;         // final bracket of the root
  Scalar beta_upper = 0;
  int iterations = 0;
  Status status = Status::converged;  // converged or iteration_limit (status.hpp)
  std::string message;
};

/// The beta with E_{nu_beta}[g] = c and the measure nu_beta (the minimizer of
/// KL(nu || mu) under E_nu[g] = c). Safeguarded Newton on the increasing map
/// beta -> E_beta[g - c] (derivative Var), after a doubling bracket search
/// started at beta = 0 in steps of 1 / (max g - min g); scores are centered at
/// c so that large |beta| (targets near the ends) neither overflow nor lose the
/// tiny differences that define them.
/// Infeasible targets (c <= min g or c >= max g on supp mu, including NaN) throw
/// invalid_argument("target: ...") naming the open interval. Constant scores on
/// supp mu (min = max): only c equal to that value (within 4 ulp) is feasible;
/// the result is then beta = 0, nu = mu (every beta gives the same nu; 0 is the
/// choice of minimal |beta|). O(m) per iteration.
template <class Scalar>
MaxEntResult<Scalar> maxent(const Vector<Scalar>& scores, Scalar target,
                            const Vector<Scalar>& weights = {}, const MaxEntOptions& options = {});

/// The same outputs for a given beta (no solve; target = expected_score).
template <class Scalar>
MaxEntResult<Scalar> maxent_at_beta(const Vector<Scalar>& scores, Scalar beta,
                                    const Vector<Scalar>& weights = {});

// ---- Entropy diagnostics of a model ----------------------------------------

struct EntropyOptions {
  /// Inverse temperatures of the temperature curve. Empty = the default grid
  /// default_temperature_grid(). Values must be finite.
  std::vector<double> betas;
  bool causal = false;  // query i sees keys j <= i
  /// Rows per query block / key block of the streaming pass; 0 = automatic.
  Index query_block = 0;
  Index key_block = 0;
  void validate() const;
};

/// The user-facing fields of EntropyOptions (options.hpp).
template <class Visitor>
void for_each_field(EntropyOptions& o, Visitor&& visit) {
  visit("betas", o.betas, "Inverse temperatures of the temperature curve (empty = default grid)");
  visit("causal", o.causal, "Query i sees keys j <= i");
  visit("query_block", o.query_block, "Rows per query block (0 = automatic)");
  visit("key_block", o.key_block, "Rows per key block (0 = automatic)");
}

/// -logspace(2, -2, 17) ∪ {0} ∪ logspace(-2, 2, 17): 35 values, increasing,
/// beta = 1 included. Negative beta (anti-attention toward hardmin) completes
/// the curve on the side of expected scores below the mean under mu.
std::vector<double> default_temperature_grid();

template <class Scalar>
struct HeadEntropy {
  Vector<Scalar> entropy;           // per query: H(K(x_i, .)), natural log      (n)
  Vector<Scalar> effective_tokens;  // per query: exp(H)                          (n)
  Vector<Scalar> expected_score;    // per query: E_{K(x_i,.)}[G(x_i, .)]         (n)
  Scalar mean_entropy = 0;          // sum_i w_i H_i (query weights of mu)
  Scalar min_entropy = 0;           // over queries of positive weight
  Scalar max_entropy = 0;
  Scalar mean_effective_tokens = 0;  // sum_i w_i exp(H_i)
  // Temperature curve (one entry per beta): logits beta G + log w.
  Vector<Scalar> curve_entropy;         // sum_i w_i H_i(beta)
  Vector<Scalar> curve_expected_score;  // sum_i w_i E_{i,beta}[G]
};

template <class Scalar>
struct EntropyResult {
  std::vector<double> betas;  // the temperature grid used
  std::vector<HeadEntropy<Scalar>> heads;
};

/// Self-attention entropies of every head of `model` on mu (queries = atoms of
/// mu, averages weighted by mu). Always streamed: for each query block, key
/// blocks are visited once per head and, for every beta of the grid (beta = 1
/// included), an online log-sum-exp keeps the running maximum m, l = sum e^{a-m},
/// t = sum e^{a-m} (a-m) and u = sum e^{a-m} G, rescaled when m grows, so that
/// H = log l - t / l and E[G] = u / l without ever forming the n x n kernel.
/// Time O(n^2 (E + H (|betas| + 1))), memory O(n (E + H |betas|)).
/// Normalization is softmax (the kernel of attention_kernel).
template <class Scalar>
EntropyResult<Scalar> attention_entropy(const Model<Scalar>& model, const Measure<Scalar>& mu,
                                        const EntropyOptions& options = {});

}  // namespace measattn
