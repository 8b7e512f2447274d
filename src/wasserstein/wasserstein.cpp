// Public entry points of the Wasserstein module: validation, dispatch, the
// 1-D formula on measures, and the certified sliced / mean / coupling bounds.
// GCC 12 reports a false "used uninitialized" inside its AVX-512 intrinsics
// when Eigen vectorizes exp/pow/sqrt (intrinsic header, not our code).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include "measattn/wasserstein.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iomanip>
#include <random>
#include <sstream>
#include <string>

#include "common/parallel.hpp"
#include "measattn/error.hpp"
#include "measattn/interrupt.hpp"
#include "wasserstein/detail.hpp"

namespace measattn {

namespace detail {

NormalizedPair::NormalizedPair(const DoubleAtoms& mu, const DoubleAtoms& nu, double p,
                               bool exact_diameter)
    : mu_(&mu), nu_(&nu) {
  const Index d = mu.dim();
  if (d == 0 || mu.size() == 0 || nu.size() == 0) return;
  const VectorD lo_a = mu.x->colwise().minCoeff().transpose();
  const VectorD hi_a = mu.x->colwise().maxCoeff().transpose();
  const VectorD lo_b = nu.x->colwise().minCoeff().transpose();
  const VectorD hi_b = nu.x->colwise().maxCoeff().transpose();
  const VectorD lo = lo_a.cwiseMin(lo_b), hi = hi_a.cwiseMax(hi_b);
  // Halves first: hi - lo itself may overflow (1e308 - (-1e308)).
  const VectorD centre = 0.5 * lo + 0.5 * hi;
  const VectorD half = 0.5 * hi - 0.5 * lo;
  const double s = half.maxCoeff();
  if (!(s > 0) || !std::isfinite(s)) return;  // every atom equal: all distances are 0
  if (!(p > 2 || s > 1e50 || s < 1e-50)) return;
  MatrixD xa = (mu.x->rowwise() - centre.transpose()) / s;  // entries in [-1, 1]
  MatrixD xb = (nu.x->rowwise() - centre.transpose()) / s;
  double diameter = 0;
  if (d == 1) {
    diameter = std::max(xb.maxCoeff() - xa.minCoeff(), xa.maxCoeff() - xb.minCoeff());
  } else if (exact_diameter && p > 2) {
    // The largest pairwise distance (O(n m d), one pass like a reduced-cost sweep):
    // with it the longest arc costs exactly 1, so large p loses as little as possible.
    double best = 0;
    for (Index i = 0; i < xa.rows(); ++i) {
      if (i % 64 == 0) check_interrupt();
      for (Index j = 0; j < xb.rows(); ++j) best = std::max(best, squared_distance(xa, i, xb, j));
    }
    diameter = std::sqrt(best);
  } else {
    diameter = 2 * (half / s).norm();
  }
  if (!(diameter > 0)) diameter = 1;
  xa /= diameter;
  xb /= diameter;
  length_ = s * diameter;
  scaled_a_.emplace(std::move(xa), *mu.w);
  scaled_b_.emplace(std::move(xb), *nu.w);
}

namespace {
/// c * length^p without forming length^p (which may overflow or underflow).
double times_cost_unit(double c, double log_unit) {
  if (c == 0 || !std::isfinite(c)) return c;
  const double v = std::exp(std::log(std::abs(c)) + log_unit);
  return c < 0 ? -v : v;
}
}  // namespace

void NormalizedPair::scale_back(WassersteinResult& r) const {
  if (!scaled()) return;
  const double L = length_;
  const double log_unit = log_cost_unit(r.p);
  r.value *= L;
  r.lower *= L;
  r.upper *= L;
  // cost is value^p by definition: recomputed from the scaled-back value, since
  // in the normalized units it may have underflowed (huge p) although value^p
  // itself is representable.
  r.cost = std::pow(r.value, r.p);
  for (std::optional<double>* c : {&r.entropic_cost, &r.transport_cost, &r.rounded_cost})
    if (c->has_value()) *c = times_cost_unit(**c, log_unit);
  if (r.potentials) {
    for (Index i = 0; i < r.potentials->f.size(); ++i)
      r.potentials->f[i] = times_cost_unit(r.potentials->f[i], log_unit);
    for (Index j = 0; j < r.potentials->g.size(); ++j)
      r.potentials->g[j] = times_cost_unit(r.potentials->g[j], log_unit);
  }
}

}  // namespace detail

using detail::DoubleAtoms;
using detail::NormalizedPair;

std::string to_string(Bound b) {
  switch (b) {
    case Bound::exact:
      return "exact";
    case Bound::lower:
      return "lower";
    case Bound::upper:
      return "upper";
    case Bound::estimate:
      return "estimate";
  }
  return "?";
}

std::string to_string(WassersteinMethod m) {
  switch (m) {
    case WassersteinMethod::automatic:
      return "auto";
    case WassersteinMethod::exact:
      return "exact";
    case WassersteinMethod::one_d:
      return "1d";
    case WassersteinMethod::sliced:
      return "sliced";
    case WassersteinMethod::sinkhorn:
      return "sinkhorn";
  }
  return "?";
}

WassersteinMethod parse_wasserstein_method(const std::string& name, const std::string& field) {
  if (name == "auto" || name == "automatic") return WassersteinMethod::automatic;
  if (name == "exact") return WassersteinMethod::exact;
  if (name == "1d" || name == "one_d") return WassersteinMethod::one_d;
  if (name == "sliced") return WassersteinMethod::sliced;
  if (name == "sinkhorn") return WassersteinMethod::sinkhorn;
  throw invalid_argument(field + ": unknown method '" + name +
                         "' (expected auto, exact, 1d, sliced or sinkhorn)");
}

std::string to_string(MassPolicy m) { return m == MassPolicy::strict ? "strict" : "renormalize"; }

MassPolicy parse_mass_policy(const std::string& name, const std::string& field) {
  if (name == "strict") return MassPolicy::strict;
  if (name == "renormalize") return MassPolicy::renormalize;
  throw invalid_argument(field + ": unknown mass policy '" + name +
                         "' (expected strict or renormalize)");
}

void check_mass(double total_a, double total_b, MassPolicy policy, const std::string& name_a,
                const std::string& name_b) {
  if (policy != MassPolicy::strict) return;
  if (!std::isfinite(total_a) || !std::isfinite(total_b)) return;  // reported by the caller
  if (std::abs(total_a - total_b) <=
      kMassTolerance * std::max(std::abs(total_a), std::abs(total_b)))
    return;
  std::ostringstream s;
  s << std::setprecision(12) << "mass: the weights have different totals (" << name_a << " sums to "
    << total_a << ", " << name_b << " sums to " << total_b
    << "); mass = renormalize divides each by its total";
  throw invalid_argument(s.str());
}

void WassersteinOptions::validate() const {
  // The offending value is quoted (the CLI prints it after its flag).
  const auto got = [](double v) {
    std::ostringstream s;
    s << std::setprecision(12) << v;
    return " (got " + s.str() + ")";
  };
  if (!(p >= 1) || !std::isfinite(p))
    throw invalid_argument("p: must be a finite number >= 1" + got(p));
  if (p > kMaxWassersteinP)
    throw invalid_argument(
        "p: at most 1e6 (beyond it W_p equals W_inf to within 4e-5 and ||x - y||^p cannot be "
        "represented in double)");
  if (!(reg > 0) || !std::isfinite(reg))
    throw invalid_argument("reg: must be a finite number > 0" + got(reg));
  if (!(tolerance > 0) || !std::isfinite(tolerance))
    throw invalid_argument("tolerance: must be a finite number > 0");
  if (max_iterations < 1) throw invalid_argument("max_iterations: must be >= 1");
  if (dense_arc_limit < 0) throw invalid_argument("dense_arc_limit: must be >= 0");
  if (neighbours < 1) throw invalid_argument("neighbours: must be >= 1");
  if (arcs_per_round < 1) throw invalid_argument("arcs_per_round: must be >= 1");
  if (!(prune >= 0)) throw invalid_argument("prune: must be >= 0 (infinity keeps every arc)");
  if (prune_rounds < 0) throw invalid_argument("prune_rounds: must be >= 0");
  if (max_rounds < 1) throw invalid_argument("max_rounds: must be >= 1");
  if (projections < 1) throw invalid_argument("projections: must be >= 1");
  if (max_sliced_restarts < 1) throw invalid_argument("max_sliced_restarts: must be >= 1");
  if (max_sliced_iterations < 0) throw invalid_argument("max_sliced_iterations: must be >= 0");
  if (max_dense_bytes <= 0) throw invalid_argument("max_dense_bytes: must be > 0");
  if (!(epsilon_scaling > 0 && epsilon_scaling < 1))
    throw invalid_argument("epsilon_scaling: must be a number in (0, 1)" + got(epsilon_scaling));
  if (!(truncation > 0 && truncation <= 1e-3))
    throw invalid_argument("truncation: must be a number in (0, 1e-3]" + got(truncation));
}

namespace {

template <class Scalar>
void check_pair(const Measure<Scalar>& mu, const Measure<Scalar>& nu) {
  if (mu.dim() != nu.dim()) {
    throw invalid_argument("atoms: dimension mismatch (" + std::to_string(mu.dim()) + " vs " +
                           std::to_string(nu.dim()) + ")");
  }
}

void check_p(double p) {
  WassersteinOptions o;
  o.p = p;
  o.validate();
}

double root(double cost, double p) {
  cost = std::max(cost, 0.0);
  return p == 1 ? cost : std::pow(cost, 1.0 / p);
}

/// (sum over the entries of a coupling of mass * ||x_i - y_j||^p)^(1/p), an upper
/// bound on W_p, computed as M (sum mass (||x_i - y_j|| / M)^p)^(1/p) with M the
/// longest arc: the largest term is 1, so nothing overflows and the sum cannot
/// underflow to 0 (which would make the bound invalid) whatever p.
double lifted_value(const DoubleAtoms& mu, const DoubleAtoms& nu,
                    const std::vector<TransportEntry>& plan, double p) {
  double longest = 0;
  for (const auto& e : plan)
    if (e.mass > 0)
      longest = std::max(longest, std::sqrt(detail::squared_distance(*mu.x, e.i, *nu.x, e.j)));
  if (!(longest > 0)) return 0;
  double c = 0;
  for (const auto& e : plan) {
    if (!(e.mass > 0)) continue;
    const double t = std::sqrt(detail::squared_distance(*mu.x, e.i, *nu.x, e.j)) / longest;
    c += e.mass * detail::cost_from_abs(t, p);
  }
  return longest * root(c, p);
}

/// n == 1 or m == 1: the only coupling.
WassersteinResult single_atom(const DoubleAtoms& mu, const DoubleAtoms& nu,
                              const WassersteinOptions& o) {
  const Index n = mu.size(), m = nu.size();
  WassersteinResult r;
  r.p = o.p;
  r.method = WassersteinMethod::exact;
  TransportPlan plan;
  VectorD f = VectorD::Zero(n), g = VectorD::Zero(m);
  double cost = 0;
  for (Index i = 0; i < n; ++i) {
    for (Index j = 0; j < m; ++j) {
      const double mass = n == 1 ? (*nu.w)[j] : (*mu.w)[i];
      const double c = detail::cost_from_squared(detail::squared_distance(*mu.x, i, *nu.x, j), o.p);
      cost += mass * c;
      if (mass > 0) plan.entries.push_back({i, j, mass});
      if (n == 1)
        g[j] = c;
      else
        f[i] = c;
    }
  }
  r.cost = cost;
  r.value = r.lower = r.upper = root(cost, o.p);
  r.message = "optimal: a one-atom measure has a single coupling";
  if (o.want_plan || o.want_dense_plan) {
    if (o.want_dense_plan) {
      MatrixD dense = MatrixD::Zero(n, m);
      for (const auto& e : plan.entries) dense(e.i, e.j) = e.mass;
      plan.dense = std::move(dense);
    }
    r.plan = std::move(plan);
  }
  if (o.want_potentials) r.potentials = Potentials{f, g};
  return r;
}

WassersteinResult one_d_impl(const DoubleAtoms& mu, const DoubleAtoms& nu,
                             const WassersteinOptions& o) {
  const Index n = mu.size(), m = nu.size();
  std::vector<double> xs(mu.x->data(), mu.x->data() + n), ys(nu.x->data(), nu.x->data() + m);
  bool ua = true, ub = true;
  const double wa = 1.0 / static_cast<double>(n), wb = 1.0 / static_cast<double>(m);
  for (Index i = 0; i < n; ++i) ua = ua && (*mu.w)[i] == wa;
  for (Index j = 0; j < m; ++j) ub = ub && (*nu.w)[j] == wb;
  const bool want_plan = o.want_plan || o.want_dense_plan;
  std::vector<std::uint32_t> ox, oy;
  const bool need_ox = !ua || want_plan, need_oy = !ub || want_plan;
  detail::RegionGuard guard;  // std::bad_alloc from either sort reaches the caller
#pragma omp parallel sections if (n + m > 100000)
  {
#pragma omp section
    guard.run([&] { detail::sort_doubles(xs, need_ox ? &ox : nullptr); });
#pragma omp section
    guard.run([&] { detail::sort_doubles(ys, need_oy ? &oy : nullptr); });
  }
  guard.finish();
  std::vector<double> a, b;
  if (!ua) {
    a.resize(static_cast<size_t>(n));
    for (Index k = 0; k < n; ++k) a[static_cast<size_t>(k)] = (*mu.w)[ox[static_cast<size_t>(k)]];
  }
  if (!ub) {
    b.resize(static_cast<size_t>(m));
    for (Index k = 0; k < m; ++k) b[static_cast<size_t>(k)] = (*nu.w)[oy[static_cast<size_t>(k)]];
  }
  std::vector<TransportEntry> plan;
  const double cost = detail::monotone_cost_sorted(xs, a, ys, b, o.p, want_plan ? &plan : nullptr);
  WassersteinResult r;
  r.p = o.p;
  r.method = WassersteinMethod::one_d;
  r.kind = Bound::exact;
  r.status = Status::optimal;
  r.cost = cost;
  r.value = r.lower = r.upper = root(cost, o.p);
  r.message = "optimal: monotone (quantile) coupling in one dimension";
  if (want_plan) {
    TransportPlan tp;
    for (auto& e : plan) {
      e.i = ox[static_cast<size_t>(e.i)];
      e.j = oy[static_cast<size_t>(e.j)];
    }
    std::sort(plan.begin(), plan.end(), [](const TransportEntry& u, const TransportEntry& v) {
      return u.i != v.i ? u.i < v.i : u.j < v.j;
    });
    VectorD rows = VectorD::Zero(n), cols = VectorD::Zero(m);
    for (const auto& e : plan) {
      rows[e.i] += e.mass;
      cols[e.j] += e.mass;
    }
    tp.marginal_error = std::max((rows - *mu.w).lpNorm<1>(), (cols - *nu.w).lpNorm<1>());
    if (o.want_dense_plan) {
      MatrixD dense = MatrixD::Zero(n, m);
      for (const auto& e : plan) dense(e.i, e.j) += e.mass;
      tp.dense = std::move(dense);
    }
    tp.entries = std::move(plan);
    r.plan = std::move(tp);
  }
  return r;
}

double mean_difference(const DoubleAtoms& mu, const DoubleAtoms& nu) {
  const VectorD dm = mu.x->transpose() * *mu.w - nu.x->transpose() * *nu.w;
  return dm.norm();
}

std::vector<VectorD> random_directions(Index d, int count, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<VectorD> out;
  out.reserve(static_cast<size_t>(count));
  while (static_cast<int>(out.size()) < count) {
    VectorD t(d);
    for (Index k = 0; k < d; ++k) t[k] = normal(rng);
    const double nrm = t.norm();
    if (nrm > 0) out.push_back(t / nrm);
  }
  return out;
}

/// Evaluates a direction: lower bound W_p^p of the projections, upper bound
/// from the lifted monotone plan; optionally the ascent direction.
struct DirectionValue {
  double lower_cost = 0;
  double upper_value = 0;  ///< W_p units (lifted_value)
  VectorD gradient;
};

DirectionValue evaluate_direction(const DoubleAtoms& mu, const DoubleAtoms& nu,
                                  const VectorD& theta, double p, bool want_gradient) {
  std::vector<TransportEntry> plan;
  DirectionValue out;
  out.lower_cost = detail::projected_cost(mu, nu, theta, p, &plan);
  out.upper_value = lifted_value(mu, nu, plan, p);
  if (want_gradient) {
    out.gradient = VectorD::Zero(theta.size());
    for (const auto& e : plan) {
      const VectorD delta = (mu.x->row(e.i) - nu.x->row(e.j)).transpose();
      const double t = delta.dot(theta);
      const double s = (t > 0) - (t < 0);
      const double scale = p == 1 ? s : p * std::pow(std::abs(t), p - 1) * s;
      out.gradient += e.mass * scale * delta;
    }
  }
  return out;
}

WassersteinResult sliced_result(double lower_cost, double upper_value, double p, Index iterations,
                                const std::string& message, double extra_lower = 0) {
  WassersteinResult r;
  r.p = p;
  r.method = WassersteinMethod::sliced;
  r.kind = Bound::lower;
  r.status = Status::bounds_only;
  r.lower = std::max(root(lower_cost, p), extra_lower);
  r.upper = std::max(upper_value, r.lower);
  r.value = r.lower;
  r.cost = std::pow(r.value, p);
  r.iterations = iterations;
  r.message = message;
  return r;
}

WassersteinResult max_sliced_impl(const DoubleAtoms& mu, const DoubleAtoms& nu,
                                  const WassersteinOptions& o) {
  const Index d = mu.dim();
  const double p = o.p;
  // Candidate starts: the mean-difference direction and the best random ones.
  std::vector<std::pair<double, VectorD>> starts;
  VectorD dm = mu.x->transpose() * *mu.w - nu.x->transpose() * *nu.w;
  double best_lower = 0, best_upper = std::numeric_limits<double>::infinity();
  Index evaluations = 0;
  auto consider = [&](const VectorD& theta) {
    detail::check_interrupt();  // Ctrl-C, once per direction (rate-limited)
    const DirectionValue v = evaluate_direction(mu, nu, theta, p, false);
    ++evaluations;
    best_lower = std::max(best_lower, v.lower_cost);
    best_upper = std::min(best_upper, v.upper_value);
    starts.emplace_back(v.lower_cost, theta);
  };
  if (dm.norm() > 0) consider(dm.normalized());
  for (const auto& t : random_directions(d, o.projections, o.seed)) consider(t);
  for (Index k = 0; k < d && d <= 16; ++k) consider(VectorD::Unit(d, k));
  std::stable_sort(starts.begin(), starts.end(),
                   [](const auto& u, const auto& v) { return u.first > v.first; });
  const size_t restarts = std::min(starts.size(), static_cast<size_t>(o.max_sliced_restarts));
  Index iterations = 0;
  for (size_t s = 0; s < restarts && d > 1; ++s) {
    VectorD theta = starts[s].second;
    DirectionValue cur = evaluate_direction(mu, nu, theta, p, true);
    double step = 0.5;
    for (int it = 0; it < o.max_sliced_iterations && step > 1e-6; ++it) {
      detail::check_interrupt();
      ++iterations;
      // Project the gradient onto the tangent space of the sphere.
      VectorD grad = cur.gradient - cur.gradient.dot(theta) * theta;
      const double gn = grad.norm();
      if (!(gn > 1e-14)) break;
      VectorD cand = theta + step * grad / gn;
      cand.normalize();
      DirectionValue next = evaluate_direction(mu, nu, cand, p, true);
      ++evaluations;
      best_upper = std::min(best_upper, next.upper_value);
      if (next.lower_cost > cur.lower_cost) {
        theta = cand;
        cur = std::move(next);
        step *= 1.5;
      } else {
        step *= 0.5;
      }
    }
    best_lower = std::max(best_lower, cur.lower_cost);
  }
  WassersteinResult r =
      sliced_result(best_lower, best_upper, p, iterations,
                    "max-sliced search over " + std::to_string(evaluations) +
                        " directions; upper bound from the best lifted monotone plan",
                    mean_difference(mu, nu));
  return r;
}

}  // namespace

template <class Scalar>
WassersteinResult wasserstein_1d(const Measure<Scalar>& mu, const Measure<Scalar>& nu,
                                 const WassersteinOptions& options) {
  options.validate();
  check_pair(mu, nu);
  if (mu.dim() != 1) {
    throw invalid_argument(
        "method: 1d needs one-dimensional atoms (d = " + std::to_string(mu.dim()) + ")");
  }
  const DoubleAtoms a(mu), b(nu);
  const NormalizedPair np(a, b, options.p, true);
  WassersteinResult r = one_d_impl(np.a(), np.b(), options);
  np.scale_back(r);
  return r;
}

template <class Scalar>
WassersteinResult wasserstein_exact(const Measure<Scalar>& mu, const Measure<Scalar>& nu,
                                    const WassersteinOptions& options) {
  options.validate();
  check_pair(mu, nu);
  const DoubleAtoms a0(mu), b0(nu);
  const NormalizedPair np(a0, b0, options.p, true);
  const DoubleAtoms& a = np.a();
  const DoubleAtoms& b = np.b();
  WassersteinResult r;
  if (a.size() == 1 || b.size() == 1) {
    r = single_atom(a, b, options);
  } else if (a.dim() == 1 && !options.want_potentials) {
    r = one_d_impl(a, b, options);
    r.method = WassersteinMethod::exact;
  } else {
    r = detail::exact_transport(a, b, options);
  }
  np.scale_back(r);
  return r;
}

template <class Scalar>
double wasserstein_exact_value(const Measure<Scalar>& mu, const Measure<Scalar>& nu, double p) {
  WassersteinOptions o;
  o.p = p;
  return wasserstein_exact(mu, nu, o).value;
}

template <class Scalar>
WassersteinResult sliced_lower_bound(const Measure<Scalar>& mu, const Measure<Scalar>& nu,
                                     const VectorD& theta, double p) {
  check_p(p);
  check_pair(mu, nu);
  if (theta.size() != mu.dim())
    throw invalid_argument("theta: has " + std::to_string(theta.size()) + " entries, expected " +
                           std::to_string(mu.dim()));
  if (!theta.allFinite() || !(theta.norm() > 0))
    throw invalid_argument("theta: must be a finite non-zero vector");
  const DoubleAtoms a0(mu), b0(nu);
  const NormalizedPair np(a0, b0, p, false);
  const DirectionValue v = evaluate_direction(np.a(), np.b(), theta.normalized(), p, false);
  WassersteinResult r =
      sliced_result(v.lower_cost, v.upper_value, p, 1, "projection onto one direction");
  np.scale_back(r);
  return r;
}

template <class Scalar>
WassersteinResult random_sliced_lower_bound(const Measure<Scalar>& mu, const Measure<Scalar>& nu,
                                            const WassersteinOptions& options) {
  options.validate();
  check_pair(mu, nu);
  const DoubleAtoms a0(mu), b0(nu);
  const NormalizedPair np(a0, b0, options.p, false);
  const DoubleAtoms& a = np.a();
  const DoubleAtoms& b = np.b();
  double lower = 0, upper = std::numeric_limits<double>::infinity();
  for (const auto& t : random_directions(a.dim(), options.projections, options.seed)) {
    detail::check_interrupt();  // Ctrl-C, once per direction (rate-limited)
    const DirectionValue v = evaluate_direction(a, b, t, options.p, false);
    lower = std::max(lower, v.lower_cost);
    upper = std::min(upper, v.upper_value);
  }
  WassersteinResult r =
      sliced_result(lower, upper, options.p, options.projections,
                    "max over " + std::to_string(options.projections) + " random directions");
  np.scale_back(r);
  return r;
}

template <class Scalar>
WassersteinResult max_sliced_bounds(const Measure<Scalar>& mu, const Measure<Scalar>& nu,
                                    const WassersteinOptions& options) {
  options.validate();
  check_pair(mu, nu);
  const DoubleAtoms a0(mu), b0(nu);
  const NormalizedPair np(a0, b0, options.p, false);
  WassersteinResult r = max_sliced_impl(np.a(), np.b(), options);
  np.scale_back(r);
  return r;
}

template <class Scalar>
double mean_difference_lower_bound(const Measure<Scalar>& mu, const Measure<Scalar>& nu) {
  check_pair(mu, nu);
  const DoubleAtoms a0(mu), b0(nu);
  const NormalizedPair np(a0, b0, 1, false);
  return np.length() * mean_difference(np.a(), np.b());
}

template <class Scalar>
WassersteinResult identity_coupling_upper_bound(const Measure<Scalar>& mu,
                                                const Measure<Scalar>& nu, double p) {
  check_p(p);
  check_pair(mu, nu);
  if (mu.size() != nu.size() || mu.weights() != nu.weights())
    throw invalid_argument("weights: the identity coupling needs equal sizes and equal weights");
  const DoubleAtoms a0(mu), b0(nu);
  const NormalizedPair np(a0, b0, p, false);
  std::vector<TransportEntry> identity;
  for (Index i = 0; i < a0.size(); ++i) identity.push_back({i, i, (*a0.w)[i]});
  const double value = lifted_value(np.a(), np.b(), identity, p);
  WassersteinResult r;
  r.p = p;
  r.method = WassersteinMethod::sliced;
  r.kind = Bound::upper;
  r.status = Status::bounds_only;
  r.value = r.upper = value;
  r.cost = std::pow(value, p);
  r.lower = 0;
  r.message = "cost of the identity coupling";
  if (np.scaled()) {
    r.value = r.upper = value * np.length();
    r.cost = std::exp(p * std::log(r.value));
  }
  return r;
}

template <class Scalar>
WassersteinResult wasserstein_sinkhorn(const Measure<Scalar>& mu, const Measure<Scalar>& nu,
                                       const WassersteinOptions& options) {
  options.validate();
  check_pair(mu, nu);
  const DoubleAtoms a0(mu), b0(nu);
  const NormalizedPair np(a0, b0, options.p, true);
  // reg is in cost units: on the rescaled atoms it is reg / length^p (log form).
  WassersteinOptions scaled = options;
  std::string note;
  const double log_reg = std::log(options.reg) - np.log_cost_unit(options.p);
  // Below 1e-12 of the largest cost the kernel exp(-C / reg) cannot be represented
  // (every entry but one per row underflows) and the iterations cannot move.
  constexpr double kMinRelativeReg = 1e-12;
  double max_cost = 1;
  if (!np.scaled()) {
    // Unscaled: costs are at most (bounding-box diameter)^p.
    const NormalizedPair box(a0, b0, 3, false);
    max_cost = std::pow(box.length(), options.p);
  }
  scaled.reg = std::min(std::exp(log_reg), 1e300);
  if (scaled.reg < kMinRelativeReg * max_cost) {
    scaled.reg = kMinRelativeReg * max_cost;
    char buf[200];
    // In log form: the largest cost may be past double's range (large p).
    const double log10_reg = (std::log(scaled.reg) + np.log_cost_unit(options.p)) / std::log(10.0);
    std::snprintf(buf, sizeof buf,
                  "; reg = %.3g is below 1e-12 of the largest cost and was raised to 1e%.2f "
                  "(cost units)",
                  options.reg, log10_reg);
    note = buf;
  }
  WassersteinResult r = options.multiscale
                            ? detail::multiscale_sinkhorn_transport(np.a(), np.b(), scaled)
                        : options.online ? detail::online_sinkhorn_transport(np.a(), np.b(), scaled)
                                         : detail::sinkhorn_transport(np.a(), np.b(), scaled);
  // A kernel that under- or overflowed despite the safeguards leaves NaN behind:
  // fall back to the bounds that are always valid (mean difference, +inf).
  if (!std::isfinite(r.lower)) r.lower = 0;
  if (std::isnan(r.upper)) r.upper = std::numeric_limits<double>::infinity();
  r.lower = std::max(r.lower, mean_difference(np.a(), np.b()));
  r.upper = std::max(r.upper, r.lower);
  if (std::isnan(r.value)) r.value = std::isfinite(r.upper) ? r.upper : r.lower;
  // The unrounded plan is not exactly in Pi(a, b): its cost may fall outside the
  // certified bracket; the reported estimate never does.
  const double clamped = std::clamp(r.value, r.lower, r.upper);
  if (!(clamped == r.value)) {
    r.value = clamped;
    r.cost = std::pow(clamped, options.p);
    r.message += "; the unrounded plan's cost fell outside the certified bracket and was clamped";
  }
  r.message += note;
  np.scale_back(r);
  return r;
}

template <class Scalar>
WassersteinResult wasserstein(const Measure<Scalar>& mu, const Measure<Scalar>& nu,
                              const WassersteinOptions& options) {
  options.validate();
  check_pair(mu, nu);
  WassersteinMethod method = options.method;
  if (method == WassersteinMethod::automatic) {
    const double nm = static_cast<double>(mu.size()) * static_cast<double>(nu.size());
    method = mu.dim() == 1 ? WassersteinMethod::one_d
             : nm <= 2.5e7 ? WassersteinMethod::exact
                           : WassersteinMethod::sliced;
  }
  switch (method) {
    case WassersteinMethod::one_d:
      return wasserstein_1d(mu, nu, options);
    case WassersteinMethod::sliced:
      return max_sliced_bounds(mu, nu, options);
    case WassersteinMethod::sinkhorn:
      return wasserstein_sinkhorn(mu, nu, options);
    case WassersteinMethod::exact:
    case WassersteinMethod::automatic:
      break;
  }
  return wasserstein_exact(mu, nu, options);
}

#define MEASATTN_INSTANTIATE(S)                                                                  \
  template WassersteinResult wasserstein(const Measure<S>&, const Measure<S>&,                   \
                                         const WassersteinOptions&);                             \
  template WassersteinResult wasserstein_exact(const Measure<S>&, const Measure<S>&,             \
                                               const WassersteinOptions&);                       \
  template double wasserstein_exact_value(const Measure<S>&, const Measure<S>&, double);         \
  template WassersteinResult wasserstein_1d(const Measure<S>&, const Measure<S>&,                \
                                            const WassersteinOptions&);                          \
  template WassersteinResult sliced_lower_bound(const Measure<S>&, const Measure<S>&,            \
                                                const VectorD&, double);                         \
  template WassersteinResult random_sliced_lower_bound(const Measure<S>&, const Measure<S>&,     \
                                                       const WassersteinOptions&);               \
  template WassersteinResult max_sliced_bounds(const Measure<S>&, const Measure<S>&,             \
                                               const WassersteinOptions&);                       \
  template double mean_difference_lower_bound(const Measure<S>&, const Measure<S>&);             \
  template WassersteinResult identity_coupling_upper_bound(const Measure<S>&, const Measure<S>&, \
                                                           double);                              \
  template WassersteinResult wasserstein_sinkhorn(const Measure<S>&, const Measure<S>&,          \
                                                  const WassersteinOptions&);

MEASATTN_INSTANTIATE(float)
MEASATTN_INSTANTIATE(double)

}  // namespace measattn
