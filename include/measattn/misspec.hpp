// measattn/misspec.hpp — mis-specified inputs (docs/theory.md#misspec).
//
// If a layer F sees mu' instead of mu, and both are supported in B_R,
//
//     W1(F(mu'), F(mu)) <= L(R) W1(mu', mu),
//
// L(R) the best certified upper bound of lipschitz.hpp. For three ways of
// getting mu' wrong, the tools report the bound next to the deviation realized:
//  - sample:  mu' = empirical measure of n i.i.d. draws of mu (several n); the
//             fitted rate is the slope of log W1(F(mu'), F(mu)) against log n
//             (least squares; E W1(mu', mu) ~ n^(-1/d) for d >= 3, Fournier and
//             Guillin 2015);
//  - noise:   x'_i = x_i + sigma xi_i, xi_i ~ N(0, I_d) i.i.d. (same weights);
//             a priori W1(mu', mu) <= sum_i w_i sigma ||xi_i|| whose expectation
//             is sigma E||xi|| = sigma sqrt(2) Gamma((d+1)/2) / Gamma(d/2);
//  - corrupt: a fraction eps of the mass (taken proportionally from every atom)
//             moved to points z in B_R (random, or chosen adversarially among
//             candidates to maximize the output deviation); W1(mu', mu) <= 2 R eps.
// W1 values are exact (wasserstein_exact). Cost per row: two self-attention
// passes and two exact transport problems of the sizes involved.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "measattn/attention.hpp"
#include "measattn/measure.hpp"
#include "measattn/options.hpp"
#include "measattn/progress.hpp"

namespace measattn {

enum class MisspecKind { sample, noise, corrupt };
std::string to_string(MisspecKind k);
MisspecKind parse_misspec_kind(const std::string& name, const std::string& field = "kind");

struct MisspecOptions {
  MisspecKind kind = MisspecKind::sample;
  std::vector<Index> sizes = {4, 8, 16, 32, 64, 128};   ///< sample: n (>= 1)
  std::vector<double> sigmas = {0.01, 0.03, 0.1, 0.3};  ///< noise: sigma (>= 0)
  std::vector<double> eps = {0.01, 0.03, 0.1, 0.3};     ///< corrupt: eps in [0, 1]
  int repeats = 3;          ///< draws per parameter value (>= 1), averaged
  double radius = 0;        ///< 0: the smallest R containing mu and every mu'
  bool adversarial = true;  ///< corrupt: choose z among candidates (else random)
  bool residual = false;
  std::uint64_t seed = 1;
  /// Called with (done, total) after each draw is evaluated (and, for corrupt, after
  /// each draw is chosen: total = 2 x values x repeats, else values x repeats); an
  /// exception it throws stops the computation and propagates. Not in the field table.
  ProgressCallback progress_callback;
  /// The ranks that share the draws (communicator.hpp): every rank passes the
  /// same model, measure and options; the draws are made on every rank from the
  /// one seeded stream, each rank evaluates (and, for corrupt, chooses) its
  /// share, and every rank returns the same result, bit-identical to one
  /// process. The calling process alone by default. Not in the field table.
  Communicator communicator;
  void validate() const;
};

/// The user-facing fields of MisspecOptions (options.hpp).
template <class Visitor>
void for_each_field(MisspecOptions& o, Visitor&& visit) {
  visit("kind", o.kind, "sample | noise | corrupt",
        EnumSpelling<MisspecKind>{[](MisspecKind k) { return to_string(k); }, &parse_misspec_kind});
  visit("sizes", o.sizes, "sample: sizes n (>= 1)");
  visit("sigmas", o.sigmas, "noise: sigma (>= 0)");
  visit("eps", o.eps, "corrupt: eps in [0, 1]");
  visit("repeats", o.repeats, "Draws per parameter value (>= 1), averaged");
  visit("radius", o.radius, "0: the smallest R containing mu and every mu'");
  visit("adversarial", o.adversarial, "corrupt: choose z among candidates (else random)");
  visit("residual", o.residual, "The layer is mu -> (id + Gamma_mu)#mu");
  visit("seed", o.seed, "Random seed");
}

/// One parameter value (averages over the repeats; max_ratio over them).
struct MisspecRow {
  double parameter = 0;  ///< n, sigma or eps
  double w1_input = 0;   ///< mean exact W1(mu', mu)
  double w1_output = 0;  ///< mean exact W1(F(mu'), F(mu))
  double bound = 0;      ///< mean L W1(mu', mu) (certified for every draw)
  /// L sigma E||xi|| (noise), L 2 R eps (corrupt); empty for sample (no a-priori bound).
  std::optional<double> a_priori;
  double max_ratio = 0;  ///< max over draws of W1 out / (L W1 in): <= 1 always
};

struct MisspecResult {
  MisspecKind kind = MisspecKind::sample;
  double radius = 0;     ///< R used for L
  double lipschitz = 0;  ///< L(R), best certified upper bound
  std::string bound_name;
  std::vector<MisspecRow> rows;
  /// sample: slopes of log W1 against log n by least squares (NaN with fewer than two
  /// sizes); empty for the other kinds.
  std::optional<double> output_rate, input_rate;
  bool violated = false;  ///< true if any draw exceeded its bound (never expected)
};

/// E||xi|| for xi ~ N(0, I_d): sqrt(2) Gamma((d+1)/2) / Gamma(d/2).
double expected_gaussian_norm(Index d);

/// Slope of the least-squares line through (log x_i, log y_i) (NaN if < 2 points).
double loglog_slope(const std::vector<double>& x, const std::vector<double>& y);

MisspecResult misspecification(const Model<double>& model, const MeasureD& mu,
                               const MisspecOptions& options = {});

}  // namespace measattn
