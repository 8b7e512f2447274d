// One-dimensional optimal transport through quantile functions, and the
// projection helpers used by the sliced bounds.
// GCC 12 reports a false "used uninitialized" inside its AVX-512 intrinsics
// when Eigen vectorizes exp/pow/sqrt (intrinsic header, not our code).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <numeric>

#include "common/parallel.hpp"
#include "measattn/error.hpp"
#include "measattn/wasserstein.hpp"
#include "wasserstein/detail.hpp"

namespace measattn {
namespace detail {

namespace {

inline std::uint64_t to_ordered(double v) {
  std::uint64_t u;
  std::memcpy(&u, &v, sizeof u);
  return (u >> 63) ? ~u : (u | 0x8000000000000000ULL);
}
inline double from_ordered(std::uint64_t u) {
  u = (u >> 63) ? (u & 0x7fffffffffffffffULL) : ~u;
  double v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}

constexpr int kDigitBits = 11;
constexpr int kBuckets = 1 << kDigitBits;
constexpr int kPasses = (64 + kDigitBits - 1) / kDigitBits;

}  // namespace

void sort_doubles(std::vector<double>& keys, std::vector<std::uint32_t>* order) {
  const size_t n = keys.size();
  if (order) {
    order->resize(n);
    std::iota(order->begin(), order->end(), std::uint32_t{0});
  }
  if (n < 1024) {
    if (order) {
      std::vector<std::uint32_t>& o = *order;
      std::stable_sort(o.begin(), o.end(),
                       [&](std::uint32_t a, std::uint32_t b) { return keys[a] < keys[b]; });
      std::vector<double> sorted(n);
      for (size_t k = 0; k < n; ++k) sorted[k] = keys[o[k]];
      keys.swap(sorted);
    } else {
      std::sort(keys.begin(), keys.end());
    }
    return;
  }
  // LSD radix sort on the order-preserving integer image of the doubles,
  // done in place in the storage of `keys` (same size and alignment).
  static_assert(sizeof(double) == sizeof(std::uint64_t));
  std::vector<std::uint64_t> a(n), b(n);
  std::vector<std::array<std::uint32_t, kBuckets>> hist(kPasses);
  for (auto& h : hist) h.fill(0);
  for (size_t k = 0; k < n; ++k) {
    const std::uint64_t u = to_ordered(keys[k]);
    a[k] = u;
    for (int pass = 0; pass < kPasses; ++pass) {
      ++hist[static_cast<size_t>(pass)][(u >> (pass * kDigitBits)) & (kBuckets - 1)];
    }
  }
  std::vector<std::uint32_t> oa, ob;
  if (order) {
    oa.swap(*order);
    ob.resize(n);
  }
  for (int pass = 0; pass < kPasses; ++pass) {
    auto& h = hist[static_cast<size_t>(pass)];
    const int shift = pass * kDigitBits;
    // Skip a pass where every key has the same digit.
    if (h[(a[0] >> shift) & (kBuckets - 1)] == n) continue;
    std::uint32_t offset = 0;
    for (auto& c : h) {
      const std::uint32_t count = c;
      c = offset;
      offset += count;
    }
    if (order) {
      for (size_t k = 0; k < n; ++k) {
        const std::uint32_t dst = h[(a[k] >> shift) & (kBuckets - 1)]++;
        b[dst] = a[k];
        ob[dst] = oa[k];
      }
      oa.swap(ob);
    } else {
      for (size_t k = 0; k < n; ++k) b[h[(a[k] >> shift) & (kBuckets - 1)]++] = a[k];
    }
    a.swap(b);
  }
  for (size_t k = 0; k < n; ++k) keys[k] = from_ordered(a[k]);
  if (order) order->swap(oa);
}

double monotone_cost_sorted(const std::vector<double>& xs, const std::vector<double>& a,
                            const std::vector<double>& ys, const std::vector<double>& b, double p,
                            std::vector<TransportEntry>* plan) {
  const size_t n = xs.size();
  const size_t m = ys.size();
  // Cumulative distribution values at the atoms; the last one is 1 exactly.
  auto cumulative = [](const std::vector<double>& w, size_t count) {
    std::vector<double> f(count);
    if (w.empty()) {
      const double dn = static_cast<double>(count);
      for (size_t k = 0; k < count; ++k) f[k] = static_cast<double>(k + 1) / dn;
    } else {
      double s = 0;
      for (size_t k = 0; k < count; ++k) f[k] = (s += w[k]);
    }
    f[count - 1] = 1;
    return f;
  };
  if (a.empty() && b.empty() && n == m) {
    double cost = 0;
    const double mass = 1.0 / static_cast<double>(n);
    for (size_t k = 0; k < n; ++k) {
      const double c = cost_from_abs(xs[k] - ys[k], p);
      cost += c;
      if (plan) plan->push_back({static_cast<Index>(k), static_cast<Index>(k), mass});
    }
    return cost * mass;
  }
  const std::vector<double> fa = cumulative(a, n);
  const std::vector<double> fb = cumulative(b, m);
  double cost = 0;
  double t = 0;
  size_t i = 0, j = 0;
  while (i < n && j < m) {
    const double hi = std::min(fa[i], fb[j]);
    const double len = hi - t;
    if (len > 0) {
      cost += len * cost_from_abs(xs[i] - ys[j], p);
      if (plan) plan->push_back({static_cast<Index>(i), static_cast<Index>(j), len});
      t = hi;
    }
    const bool adv_i = fa[i] <= hi;
    const bool adv_j = fb[j] <= hi;
    if (adv_i) ++i;
    if (adv_j) ++j;
  }
  return cost;
}

SortedProjections sorted_projections(const DoubleAtoms& mu, const DoubleAtoms& nu,
                                     const VectorD& theta) {
  SortedProjections s;
  s.xs.resize(static_cast<size_t>(mu.size()));
  s.ys.resize(static_cast<size_t>(nu.size()));
  Eigen::Map<VectorD>(s.xs.data(), mu.size()) = (*mu.x) * theta;
  Eigen::Map<VectorD>(s.ys.data(), nu.size()) = (*nu.x) * theta;
  sort_doubles(s.xs, &s.ox);
  sort_doubles(s.ys, &s.oy);
  return s;
}

double projected_cost(const DoubleAtoms& mu, const DoubleAtoms& nu, const VectorD& theta, double p,
                      std::vector<TransportEntry>* plan) {
  const Index n = mu.size();
  const Index m = nu.size();
  const auto [xs, ys, ox, oy] = sorted_projections(mu, nu, theta);
  std::vector<double> a(static_cast<size_t>(n)), b(static_cast<size_t>(m));
  for (Index k = 0; k < n; ++k) a[static_cast<size_t>(k)] = (*mu.w)[ox[static_cast<size_t>(k)]];
  for (Index k = 0; k < m; ++k) b[static_cast<size_t>(k)] = (*nu.w)[oy[static_cast<size_t>(k)]];
  const double cost = monotone_cost_sorted(xs, a, ys, b, p, plan);
  if (plan) {
    for (auto& e : *plan) {
      e.i = ox[static_cast<size_t>(e.i)];
      e.j = oy[static_cast<size_t>(e.j)];
    }
  }
  return cost;
}

double mean_difference_coupling_cost(const DoubleAtoms& mu, const DoubleAtoms& nu, double p) {
  VectorD theta = mu.x->transpose() * *mu.w - nu.x->transpose() * *nu.w;
  if (!(theta.norm() > 0)) theta = VectorD::Ones(mu.x->cols());
  std::vector<TransportEntry> plan;
  projected_cost(mu, nu, theta.normalized(), p, &plan);
  double coupling = 0;
  for (const auto& e : plan)
    coupling += e.mass * cost_from_squared(squared_distance(*mu.x, e.i, *nu.x, e.j), p);
  return coupling;
}

void cost_row_range(const MatrixD& x, Index i, const MatrixD& yt, Index j0, Index j1, double p,
                    double* out) {
  const Index w = j1 - j0;
  Eigen::Map<Eigen::ArrayXd> o(out, w);
  o = (yt.row(0).segment(j0, w).array() - x(i, 0)).square().transpose();
  for (Index k = 1; k < yt.rows(); ++k)
    o += (yt.row(k).segment(j0, w).array() - x(i, k)).square().transpose();
  if (p == 1) {
    o = o.sqrt();
  } else if (p != 2) {
    o = o.pow(0.5 * p);
  }
}

void cost_row(const MatrixD& x, Index i, const MatrixD& yt, double p, double* out) {
  cost_row_range(x, i, yt, 0, yt.cols(), p, out);
}

}  // namespace detail

double wasserstein_1d_values(const std::vector<double>& x, const std::vector<double>& a,
                             const std::vector<double>& y, const std::vector<double>& b, double p) {
  if (!(p >= 1) || !std::isfinite(p)) throw invalid_argument("p: must be a finite number >= 1");
  if (x.empty()) throw invalid_argument("x: empty sample");
  if (y.empty()) throw invalid_argument("y: empty sample");
  if (!a.empty() && a.size() != x.size()) throw invalid_argument("a: size differs from x");
  if (!b.empty() && b.size() != y.size()) throw invalid_argument("b: size differs from y");
  auto normalized = [](const std::vector<double>& w, const char* name) {
    long double s = 0;
    for (double v : w) {
      if (!(v >= 0) || !std::isfinite(v))
        throw invalid_argument(name, "has a negative or non-finite weight");
      s += v;
    }
    if (!(s > 0)) throw invalid_argument(name, "sums to zero");
    std::vector<double> out(w.size());
    for (size_t k = 0; k < w.size(); ++k)
      out[k] = static_cast<double>(static_cast<long double>(w[k]) / s);
    return out;
  };
  std::vector<double> xs = x, ys = y;
  for (double v : xs)
    if (!std::isfinite(v)) throw invalid_argument("x: has a non-finite value");
  for (double v : ys)
    if (!std::isfinite(v)) throw invalid_argument("y: has a non-finite value");
  std::vector<double> an, bn;
  std::vector<std::uint32_t> ox, oy;
  const bool wa = !a.empty(), wb = !b.empty();
  detail::RegionGuard guard;  // std::bad_alloc from either sort reaches the caller
#pragma omp parallel sections if (xs.size() + ys.size() > 100000)
  {
#pragma omp section
    guard.run([&] { detail::sort_doubles(xs, wa ? &ox : nullptr); });
#pragma omp section
    guard.run([&] { detail::sort_doubles(ys, wb ? &oy : nullptr); });
  }
  guard.finish();
  if (wa) {
    const std::vector<double> w = normalized(a, "a");
    an.resize(w.size());
    for (size_t k = 0; k < w.size(); ++k) an[k] = w[ox[k]];
  }
  if (wb) {
    const std::vector<double> w = normalized(b, "b");
    bn.resize(w.size());
    for (size_t k = 0; k < w.size(); ++k) bn[k] = w[oy[k]];
  }
  const double cost = detail::monotone_cost_sorted(xs, an, ys, bn, p, nullptr);
  return p == 1 ? cost : std::pow(cost, 1.0 / p);
}

}  // namespace measattn
