// Internal helpers shared by the Wasserstein solvers (not installed).
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "measattn/measure.hpp"
#include "measattn/types.hpp"
#include "measattn/wasserstein.hpp"

namespace measattn::detail {

/// The atoms and weights of a measure in double precision, without a copy when
/// the measure already is double.
struct DoubleAtoms {
  MatrixD x_copy;
  VectorD w_copy;
  const MatrixD* x = nullptr;
  const VectorD* w = nullptr;

  explicit DoubleAtoms(const Measure<double>& m) : x(&m.atoms()), w(&m.weights()) {}
  explicit DoubleAtoms(const Measure<float>& m)
      : x_copy(m.atoms().cast<double>()), w_copy(m.weights().cast<double>()) {
    // Renormalize in double so that the weights sum to one as closely as possible.
    long double total = 0;
    for (Index i = 0; i < w_copy.size(); ++i) total += w_copy[i];
    for (Index i = 0; i < w_copy.size(); ++i)
      w_copy[i] = static_cast<double>(static_cast<long double>(w_copy[i]) / total);
    x = &x_copy;
    w = &w_copy;
  }
  /// Owns rescaled atoms (see normalize_pair), with the weights of `weights`.
  DoubleAtoms(MatrixD atoms, const VectorD& weights)
      : x_copy(std::move(atoms)), w_copy(weights), x(&x_copy), w(&w_copy) {}
  DoubleAtoms(const DoubleAtoms&) = delete;
  DoubleAtoms& operator=(const DoubleAtoms&) = delete;
  Index size() const { return x->rows(); }
  Index dim() const { return x->cols(); }
};

/// The overflow story of every solver: W_p is translation invariant and positively
/// homogeneous, W_p(s mu + c, s nu + c) = s W_p(mu, nu). When the atoms are far from
/// unit size (coordinates above 1e50 or below 1e-50 across the joint bounding box) or
/// p > 2 (costs ||x - y||^p overflow or underflow long before the distances do), the
/// solvers run on copies translated to the centre of the joint bounding box and divided
/// by `length`, chosen so that every distance is at most 1 (the exact largest pairwise
/// distance when `exact_diameter`, else the bounding-box diameter); then every cost
/// lies in [0, 1] and results scale back by `length` (costs and potentials by
/// length^p). Otherwise a() and b() are the inputs themselves and length is 1.
class NormalizedPair {
 public:
  NormalizedPair(const DoubleAtoms& mu, const DoubleAtoms& nu, double p, bool exact_diameter);
  const DoubleAtoms& a() const { return scaled_a_ ? *scaled_a_ : *mu_; }
  const DoubleAtoms& b() const { return scaled_b_ ? *scaled_b_ : *nu_; }
  bool scaled() const { return scaled_a_.has_value(); }
  double length() const { return length_; }
  /// length^p in log form (log of the factor that converts scaled costs back).
  double log_cost_unit(double p) const { return p * std::log(length_); }
  /// Multiplies a result's values and bounds by length, costs by length^p.
  void scale_back(WassersteinResult& r) const;

 private:
  const DoubleAtoms* mu_;
  const DoubleAtoms* nu_;
  std::optional<DoubleAtoms> scaled_a_, scaled_b_;
  double length_ = 1;
};

/// |t|^p from t^2 (p = 1: sqrt; p = 2: identity).
inline double cost_from_squared(double s, double p) {
  if (p == 1) return std::sqrt(s);
  if (p == 2) return s;
  return std::pow(s, 0.5 * p);
}
inline double cost_from_abs(double t, double p) {
  t = std::abs(t);
  if (p == 1) return t;
  if (p == 2) return t * t;
  return std::pow(t, p);
}

/// Row i of the ground cost: out[j] = ||x_i - y_j||^p for j < m, with yt the
/// d x m transpose of the target atoms (so each coordinate is contiguous).
void cost_row(const MatrixD& x, Index i, const MatrixD& yt, double p, double* out);

/// Squared Euclidean distance between row i of x and row j of y.
inline double squared_distance(const MatrixD& x, Index i, const MatrixD& y, Index j) {
  double s = 0;
  for (Index k = 0; k < x.cols(); ++k) {
    const double t = x(i, k) - y(j, k);
    s += t * t;
  }
  return s;
}

/// Sorts keys ascending (LSD radix sort on the IEEE order; std::sort for small n),
/// carrying the permutation along in `order` when it is non-null (order[k] = original
/// index of the k-th smallest). Stable.
void sort_doubles(std::vector<double>& keys, std::vector<std::uint32_t>* order);

/// One-dimensional OT between sorted samples with weights (cumulative form).
/// xs, ys sorted ascending; a, b the weights in the same order (empty = uniform).
/// Returns sum over the monotone plan of mass * |x - y|^p; fills `plan`
/// (indices into the sorted arrays) when non-null.
double monotone_cost_sorted(const std::vector<double>& xs, const std::vector<double>& a,
                            const std::vector<double>& ys, const std::vector<double>& b, double p,
                            std::vector<TransportEntry>* plan);

/// Both measures' atoms projected onto theta and sorted ascending, with the
/// permutations (ox[k] = original index of the k-th smallest of xs).
struct SortedProjections {
  std::vector<double> xs, ys;
  std::vector<std::uint32_t> ox, oy;
};
SortedProjections sorted_projections(const DoubleAtoms& mu, const DoubleAtoms& nu,
                                     const VectorD& theta);

/// Thin state for evaluating projections repeatedly: projects both measures onto
/// theta, sorts, and returns W_p^p of the projections (and the monotone plan in
/// original indices when requested).
double projected_cost(const DoubleAtoms& mu, const DoubleAtoms& nu, const VectorD& theta, double p,
                      std::vector<TransportEntry>* plan);

/// The cost in R^d, sum of mass * |x_i - y_j|^p, of the monotone plan along the
/// mean-difference direction (all ones when the means agree): a coupling of mu
/// and nu, so a certified upper bound on W_p^p. The Sinkhorn solvers' upper end.
double mean_difference_coupling_cost(const DoubleAtoms& mu, const DoubleAtoms& nu, double p);

}  // namespace measattn::detail

namespace measattn::detail {

/// The exact solver on double atoms (exact.cpp).
WassersteinResult exact_transport(const DoubleAtoms& mu, const DoubleAtoms& nu,
                                  const WassersteinOptions& options);

/// Log-stabilized Sinkhorn with AWR rounding (sinkhorn.cpp).
WassersteinResult sinkhorn_transport(const DoubleAtoms& mu, const DoubleAtoms& nu,
                                     const WassersteinOptions& options);

/// Integer supplies summing to 2^53 exactly (largest remainder rounding of w / sum w).
std::vector<std::int64_t> integer_weights(const VectorD& w);

struct NetworkSolution {
  std::vector<std::int64_t> flow;  // per arc
  VectorD f, g;                    // f_i + g_j <= c_ij on the arcs given, = on the basis
  bool ok = false;
};

/// LEMON's network simplex on the bipartite arcs (i, j) with integer supplies A
/// and demands B (both summing to 2^53); costs (any sign) are quantized to int64
/// for the simplex only (exact.cpp).
NetworkSolution solve_network(Index n, Index m, const std::vector<std::int64_t>& A,
                              const std::vector<std::int64_t>& B,
                              const std::vector<std::pair<int, int>>& arcs,
                              const std::vector<double>& cost);

/// Flows for the exact weights a, b on the support of an integer plan (leaf
/// elimination on its forest); returns the marginal error.
double polish_flows(Index n, Index m, const VectorD& a, const VectorD& b,
                    const std::vector<std::pair<int, int>>& edges,
                    const std::vector<std::int64_t>& int_flow, std::vector<double>& flow);

/// Sinkhorn with the costs computed on the fly, O(n + m) memory (online_sinkhorn.cpp).
WassersteinResult online_sinkhorn_transport(const DoubleAtoms& mu, const DoubleAtoms& nu,
                                            const WassersteinOptions& options);

/// Multiscale Sinkhorn (grid cells, coarse to fine, truncated kernel), O(n + m) memory
/// (multiscale_sinkhorn.cpp).
WassersteinResult multiscale_sinkhorn_transport(const DoubleAtoms& mu, const DoubleAtoms& nu,
                                                const WassersteinOptions& options);

/// Columns [j0, j1) of row i of the ground cost (out has j1 - j0 entries).
void cost_row_range(const MatrixD& x, Index i, const MatrixD& yt, Index j0, Index j1, double p,
                    double* out);

}  // namespace measattn::detail
