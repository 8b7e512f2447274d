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
#include <random>
#include <string>

#include "common/parallel.hpp"
#include "measattn/error.hpp"
#include "measattn/interrupt.hpp"
#include "wasserstein/detail.hpp"

namespace measattn {

using detail::DoubleAtoms;

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

std::string to_string(WassersteinStatus s) {
  switch (s) {
    case WassersteinStatus::optimal:
      return "optimal";
    case WassersteinStatus::converged:
      return "converged";
    case WassersteinStatus::iteration_limit:
      return "iteration_limit";
    case WassersteinStatus::bounds_only:
      return "bounds_only";
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

void WassersteinOptions::validate() const {
  if (!(p >= 1) || !std::isfinite(p)) throw invalid_argument("p: must be a finite number >= 1");
  if (!(reg > 0) || !std::isfinite(reg)) throw invalid_argument("reg: must be a finite number > 0");
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
  if (!(p >= 1) || !std::isfinite(p)) throw invalid_argument("p: must be a finite number >= 1");
}

double root(double cost, double p) {
  cost = std::max(cost, 0.0);
  return p == 1 ? cost : std::pow(cost, 1.0 / p);
}

/// Sum over the entries of a coupling of mass * ||x_i - y_j||^p.
double lifted_cost(const DoubleAtoms& mu, const DoubleAtoms& nu,
                   const std::vector<TransportEntry>& plan, double p) {
  double c = 0;
  for (const auto& e : plan)
    c += e.mass * detail::cost_from_squared(detail::squared_distance(*mu.x, e.i, *nu.x, e.j), p);
  return c;
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
  r.status = WassersteinStatus::optimal;
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
  double upper_cost = 0;
  VectorD gradient;
};

DirectionValue evaluate_direction(const DoubleAtoms& mu, const DoubleAtoms& nu,
                                  const VectorD& theta, double p, bool want_gradient) {
  std::vector<TransportEntry> plan;
  DirectionValue out;
  out.lower_cost = detail::projected_cost(mu, nu, theta, p, &plan);
  out.upper_cost = lifted_cost(mu, nu, plan, p);
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

WassersteinResult sliced_result(double lower_cost, double upper_cost, double p, Index iterations,
                                const std::string& message, double extra_lower = 0) {
  WassersteinResult r;
  r.p = p;
  r.method = WassersteinMethod::sliced;
  r.kind = Bound::lower;
  r.status = WassersteinStatus::bounds_only;
  r.lower = std::max(root(lower_cost, p), extra_lower);
  r.upper = std::max(root(upper_cost, p), r.lower);
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
    best_upper = std::min(best_upper, v.upper_cost);
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
      best_upper = std::min(best_upper, next.upper_cost);
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
  return one_d_impl(DoubleAtoms(mu), DoubleAtoms(nu), options);
}

template <class Scalar>
WassersteinResult wasserstein_exact(const Measure<Scalar>& mu, const Measure<Scalar>& nu,
                                    const WassersteinOptions& options) {
  options.validate();
  check_pair(mu, nu);
  const DoubleAtoms a(mu), b(nu);
  if (a.size() == 1 || b.size() == 1) return single_atom(a, b, options);
  if (a.dim() == 1 && !options.want_potentials) {
    WassersteinResult r = one_d_impl(a, b, options);
    r.method = WassersteinMethod::exact;
    return r;
  }
  return detail::exact_transport(a, b, options);
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
  const DoubleAtoms a(mu), b(nu);
  const DirectionValue v = evaluate_direction(a, b, theta.normalized(), p, false);
  return sliced_result(v.lower_cost, v.upper_cost, p, 1, "projection onto one direction");
}

template <class Scalar>
WassersteinResult random_sliced_lower_bound(const Measure<Scalar>& mu, const Measure<Scalar>& nu,
                                            const WassersteinOptions& options) {
  options.validate();
  check_pair(mu, nu);
  const DoubleAtoms a(mu), b(nu);
  double lower = 0, upper = std::numeric_limits<double>::infinity();
  for (const auto& t : random_directions(a.dim(), options.projections, options.seed)) {
    detail::check_interrupt();  // Ctrl-C, once per direction (rate-limited)
    const DirectionValue v = evaluate_direction(a, b, t, options.p, false);
    lower = std::max(lower, v.lower_cost);
    upper = std::min(upper, v.upper_cost);
  }
  return sliced_result(lower, upper, options.p, options.projections,
                       "max over " + std::to_string(options.projections) + " random directions");
}

template <class Scalar>
WassersteinResult max_sliced_bounds(const Measure<Scalar>& mu, const Measure<Scalar>& nu,
                                    const WassersteinOptions& options) {
  options.validate();
  check_pair(mu, nu);
  return max_sliced_impl(DoubleAtoms(mu), DoubleAtoms(nu), options);
}

template <class Scalar>
double mean_difference_lower_bound(const Measure<Scalar>& mu, const Measure<Scalar>& nu) {
  check_pair(mu, nu);
  return mean_difference(DoubleAtoms(mu), DoubleAtoms(nu));
}

template <class Scalar>
WassersteinResult identity_coupling_upper_bound(const Measure<Scalar>& mu,
                                                const Measure<Scalar>& nu, double p) {
  check_p(p);
  check_pair(mu, nu);
  if (mu.size() != nu.size() || mu.weights() != nu.weights())
    throw invalid_argument("weights: the identity coupling needs equal sizes and equal weights");
  const DoubleAtoms a(mu), b(nu);
  double cost = 0;
  for (Index i = 0; i < a.size(); ++i)
    cost += (*a.w)[i] * detail::cost_from_squared(detail::squared_distance(*a.x, i, *b.x, i), p);
  WassersteinResult r;
  r.p = p;
  r.method = WassersteinMethod::sliced;
  r.kind = Bound::upper;
  r.status = WassersteinStatus::bounds_only;
  r.cost = cost;
  r.value = r.upper = root(cost, p);
  r.lower = 0;
  r.message = "cost of the identity coupling";
  return r;
}

template <class Scalar>
WassersteinResult wasserstein_sinkhorn(const Measure<Scalar>& mu, const Measure<Scalar>& nu,
                                       const WassersteinOptions& options) {
  options.validate();
  check_pair(mu, nu);
  const DoubleAtoms a(mu), b(nu);
  WassersteinResult r = detail::sinkhorn_transport(a, b, options);
  r.lower = std::max(r.lower, options.p >= 1 ? mean_difference(a, b) : 0.0);
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
