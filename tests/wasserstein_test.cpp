// Tests of the Wasserstein module: brute force on small instances, agreement
// between independent methods (dense vs column generation, 1-D formula vs
// network simplex), and properties over many random instances (fixed seeds).
// The comparisons with POT and SciPy live in tests/python/test_wasserstein.py.
#include "measattn/wasserstein.hpp"

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "measattn/error.hpp"
#include "measattn/measure.hpp"

using namespace measattn;

namespace {

MatrixD random_atoms(std::mt19937_64& rng, Index n, Index d, double shift = 0, double scale = 1) {
  std::normal_distribution<double> normal(0, 1);
  MatrixD x(n, d);
  for (Index i = 0; i < n; ++i)
    for (Index k = 0; k < d; ++k) x(i, k) = shift + scale * normal(rng);
  return x;
}

VectorD random_weights(std::mt19937_64& rng, Index n) {
  std::uniform_real_distribution<double> u(0.05, 1.0);
  VectorD w(n);
  for (Index i = 0; i < n; ++i) w[i] = u(rng);
  return w;
}

MeasureD random_measure(std::mt19937_64& rng, Index n, Index d, bool weighted, double shift = 0) {
  return MeasureD(random_atoms(rng, n, d, shift),
                  weighted ? random_weights(rng, n) : VectorD::Ones(n));
}

double exact(const MeasureD& a, const MeasureD& b, double p = 1) {
  WassersteinOptions o;
  o.p = p;
  return wasserstein_exact(a, b, o).value;
}

/// min over permutations of the mean cost: W_p^p for uniform measures of equal size.
double brute_force_uniform(const MatrixD& x, const MatrixD& y, double p) {
  const Index n = x.rows();
  std::vector<int> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), 0);
  double best = std::numeric_limits<double>::infinity();
  do {
    double c = 0;
    for (Index i = 0; i < n; ++i)
      c += std::pow((x.row(i) - y.row(perm[static_cast<size_t>(i)])).norm(), p);
    best = std::min(best, c / static_cast<double>(n));
  } while (std::next_permutation(perm.begin(), perm.end()));
  return std::pow(best, 1.0 / p);
}

void expect_rel(double got, double want, double rel, const char* what = "") {
  EXPECT_NEAR(got, want, rel * std::max(1.0, std::abs(want))) << what;
}

}  // namespace

TEST(wasserstein_test, exact_matches_permutation_brute_force) {
  std::mt19937_64 rng(1);
  for (int trial = 0; trial < 40; ++trial) {
    const Index n = 1 + trial % 7;
    const Index d = 1 + trial % 4;
    const double p = trial % 3 == 0 ? 2.0 : (trial % 3 == 1 ? 1.0 : 1.5);
    MatrixD x = random_atoms(rng, n, d), y = random_atoms(rng, n, d, 0.5);
    WassersteinOptions o;
    o.p = p;
    o.want_potentials = true;  // forces the network simplex also for d == 1
    const WassersteinResult r =
        wasserstein_exact(MeasureD::empirical(x), MeasureD::empirical(y), o);
    expect_rel(r.value, brute_force_uniform(x, y, p), 1e-12);
    EXPECT_EQ(r.kind, Bound::exact);
    EXPECT_EQ(r.status, Status::optimal);
    EXPECT_EQ(r.lower, r.value);
    EXPECT_EQ(r.upper, r.value);
  }
}

// The Sinkhorn-only fields are empty for the other methods and set for Sinkhorn.
TEST(wasserstein_test, sinkhorn_fields_only_for_sinkhorn) {
  std::mt19937_64 rng(17);
  const MeasureD a = MeasureD::empirical(random_atoms(rng, 12, 2));
  const MeasureD b = MeasureD::empirical(random_atoms(rng, 9, 2, 0.5));
  for (const WassersteinResult& r :
       {wasserstein_exact(a, b), max_sliced_bounds(a, b), wasserstein(a, b)}) {
    EXPECT_FALSE(r.entropic_cost.has_value()) << to_string(r.method);
    EXPECT_FALSE(r.transport_cost.has_value()) << to_string(r.method);
    EXPECT_FALSE(r.rounded_cost.has_value()) << to_string(r.method);
    EXPECT_FALSE(r.marginal_violation.has_value()) << to_string(r.method);
  }
  const WassersteinResult s = wasserstein_sinkhorn(a, b);
  ASSERT_TRUE(s.entropic_cost && s.transport_cost && s.rounded_cost && s.marginal_violation);
  EXPECT_TRUE(std::isfinite(*s.transport_cost) && std::isfinite(*s.rounded_cost));
}

TEST(wasserstein_test, column_generation_matches_dense_solve) {
  // Column generation in every configuration (tiny starting sets so that many
  // rounds run; pruning off, default, and aggressive: every non-support arc
  // dropped for many rounds) against the complete graph, with the duals checked
  // for feasibility on all n*m arcs and for a zero duality gap.
  std::mt19937_64 rng(2);
  struct Config {
    int neighbours, arcs_per_round;
    double prune;
    int prune_rounds;
  };
  const Config configs[] = {{2, 3, std::numeric_limits<double>::infinity(), 0},
                            {2, 3, 0.03, 8},
                            {2, 4, 0.0, 1000},
                            {48, 32, 0.03, 8}};
  for (int trial = 0; trial < 16; ++trial) {
    const Index n = 40 + 30 * trial, m = 30 + 25 * trial, d = 1 + trial % 9;
    const double p = trial % 2 ? 2.0 : 1.0;
    MeasureD a = random_measure(rng, n, d, trial % 3 != 0);
    MeasureD b = random_measure(rng, m, d, trial % 4 != 0, 0.2);
    if (trial % 5 == 4) {
      // Duplicate and coincident atoms: a degenerate problem.
      MatrixD x = a.atoms(), y = b.atoms();
      for (Index i = 1; i < n; i += 3) x.row(i) = x.row(i - 1);
      for (Index j = 0; j < std::min(n, m); j += 4) y.row(j) = x.row(j);
      a = MeasureD(x, a.weights());
      b = MeasureD(y, b.weights());
    }
    WassersteinOptions dense;
    dense.p = p;
    dense.want_potentials = true;  // network simplex for d == 1
    dense.dense_arc_limit = 1 << 30;
    const auto rd = wasserstein_exact(a, b, dense);
    for (const Config& c : configs) {
      WassersteinOptions sparse = dense;
      sparse.dense_arc_limit = 0;
      sparse.neighbours = c.neighbours;
      sparse.arcs_per_round = c.arcs_per_round;
      sparse.prune = c.prune;
      sparse.prune_rounds = c.prune_rounds;
      sparse.max_rounds = 100000;  // termination is what is tested
      const auto rs = wasserstein_exact(a, b, sparse);
      EXPECT_EQ(rs.status, Status::optimal) << "trial " << trial << ", neighbours " << c.neighbours
                                            << ", prune " << c.prune << ": " << rs.message;
      expect_rel(rs.value, rd.value, 1e-11, "sparse vs dense");
      ASSERT_TRUE(rs.potentials.has_value());
      const VectorD& f = rs.potentials->f;
      const VectorD& g = rs.potentials->g;
      double worst = 0, cmax = 0;
      for (Index i = 0; i < n; ++i)
        for (Index j = 0; j < m; ++j) {
          const double cij = std::pow((a.atoms().row(i) - b.atoms().row(j)).norm(), p);
          cmax = std::max(cmax, cij);
          worst = std::max(worst, f[i] + g[j] - cij);
        }
      EXPECT_LE(worst, 1e-10 * cmax) << "dual infeasible, trial " << trial;
      const double dual = a.weights().dot(f) + b.weights().dot(g);
      expect_rel(dual, rs.cost, 1e-10, "duality gap");
    }
  }
}

TEST(wasserstein_test, one_d_formula_matches_network_simplex) {
  std::mt19937_64 rng(3);
  for (int trial = 0; trial < 20; ++trial) {
    const Index n = 1 + 17 * trial % 90, m = 2 + 11 * trial % 70;
    const double p = 1 + 0.5 * (trial % 4);
    const MeasureD a = random_measure(rng, n, 1, trial % 2);
    const MeasureD b = random_measure(rng, m, 1, trial % 3, 0.3);
    WassersteinOptions o;
    o.p = p;
    const double formula = wasserstein_1d(a, b, o).value;
    o.want_potentials = true;
    const double simplex = wasserstein_exact(a, b, o).value;
    expect_rel(formula, simplex, 1e-12);
  }
  // Large 1-D instance through the radix sort path against std::sort.
  std::vector<double> x(5000), y(3000);
  std::normal_distribution<double> normal;
  for (auto& v : x) v = normal(rng);
  for (auto& v : y) v = 2 * normal(rng) + 1;
  std::vector<double> xs = x, ys = y;
  std::sort(xs.begin(), xs.end());
  std::sort(ys.begin(), ys.end());
  // W1 = int |F - G|: evaluate on the merged grid.
  std::vector<double> all = xs;
  all.insert(all.end(), ys.begin(), ys.end());
  std::sort(all.begin(), all.end());
  double w1 = 0;
  for (size_t k = 0; k + 1 < all.size(); ++k) {
    const double F =
        static_cast<double>(std::upper_bound(xs.begin(), xs.end(), all[k]) - xs.begin()) / 5000.0;
    const double G =
        static_cast<double>(std::upper_bound(ys.begin(), ys.end(), all[k]) - ys.begin()) / 3000.0;
    w1 += std::abs(F - G) * (all[k + 1] - all[k]);
  }
  expect_rel(wasserstein_1d_values(x, {}, y, {}, 1), w1, 1e-12);
}

TEST(wasserstein_test, symmetry_triangle_and_monotonicity_in_p) {
  std::mt19937_64 rng(4);
  for (int trial = 0; trial < 25; ++trial) {
    const Index d = 1 + trial % 5;
    const MeasureD a = random_measure(rng, 5 + trial % 13, d, trial % 2);
    const MeasureD b = random_measure(rng, 3 + trial % 11, d, trial % 3, 0.5);
    const MeasureD c = random_measure(rng, 4 + trial % 7, d, true, -0.5);
    const double ab = exact(a, b), ba = exact(b, a), bc = exact(b, c), ac = exact(a, c);
    expect_rel(ab, ba, 1e-12, "symmetry");
    EXPECT_LE(ac, ab + bc + 1e-12) << "triangle";
    EXPECT_LE(ab, exact(a, b, 2) + 1e-12) << "W1 <= W2";
    EXPECT_LE(exact(a, b, 2), exact(a, b, 3) + 1e-12) << "W2 <= W3";
  }
}

TEST(wasserstein_test, every_bound_brackets_the_exact_value) {
  std::mt19937_64 rng(5);
  for (int trial = 0; trial < 20; ++trial) {
    const Index d = 2 + trial % 6, n = 20 + 7 * trial, m = 15 + 5 * trial;
    const double p = trial % 2 ? 2.0 : 1.0;
    const MeasureD a = random_measure(rng, n, d, trial % 2);
    const MeasureD b = random_measure(rng, m, d, trial % 3, 0.4);
    WassersteinOptions o;
    o.p = p;
    o.projections = 16;
    const double w = wasserstein_exact(a, b, o).value;
    const double tol = 1e-12 * std::max(1.0, w);
    VectorD theta = VectorD::Ones(d);
    const auto one = sliced_lower_bound(a, b, theta, p);
    EXPECT_EQ(one.kind, Bound::lower);
    EXPECT_LE(one.lower, w + tol);
    EXPECT_GE(one.upper, w - tol);
    const auto rnd = random_sliced_lower_bound(a, b, o);
    EXPECT_LE(rnd.lower, w + tol);
    EXPECT_GE(rnd.upper, w - tol);
    const auto ms = max_sliced_bounds(a, b, o);
    EXPECT_GE(ms.lower, rnd.lower - tol) << "max-sliced starts from the random directions";
    EXPECT_LE(ms.lower, w + tol);
    EXPECT_GE(ms.upper, w - tol);
    EXPECT_LE(mean_difference_lower_bound(a, b), exact(a, b, 1) + tol);
    WassersteinOptions s = o;
    s.reg = 0.05;
    s.max_iterations = 5000;
    const auto sk = wasserstein_sinkhorn(a, b, s);
    EXPECT_EQ(sk.kind, Bound::estimate);
    EXPECT_GE(sk.upper, w - tol) << "rounded Sinkhorn plan";
    EXPECT_LE(sk.lower, w + tol) << "Sinkhorn dual bound";
    EXPECT_GE(sk.rounded_cost.value(), sk.transport_cost.value() - 1e-6)
        << "rounding only adds a correction";
  }
  // Identity coupling of equally weighted sequences.
  for (int trial = 0; trial < 10; ++trial) {
    const MeasureD a = random_measure(rng, 30, 3, trial % 2);
    const MeasureD b(random_atoms(rng, 30, 3, 0.2), a.weights());
    const double w = exact(a, b, 2);
    const auto id = identity_coupling_upper_bound(a, b, 2.0);
    EXPECT_EQ(id.kind, Bound::upper);
    EXPECT_GE(id.upper, w - 1e-12);
  }
}

TEST(wasserstein_test, merging_duplicates_and_translation) {
  std::mt19937_64 rng(6);
  for (int trial = 0; trial < 15; ++trial) {
    const Index d = 1 + trial % 4;
    MatrixD x = random_atoms(rng, 12, d);
    // Duplicate some atoms.
    x.row(3) = x.row(0);
    x.row(7) = x.row(0);
    x.row(9) = x.row(5);
    const MeasureD a(x, random_weights(rng, 12));
    const MeasureD b = random_measure(rng, 9, d, true, 0.3);
    const MeasureD am = a.merged();
    EXPECT_LT(am.size(), a.size());
    expect_rel(exact(a, b), exact(am, b), 1e-12, "merge invariance W1");
    expect_rel(exact(a, b, 2), exact(am, b, 2), 1e-12, "merge invariance W2");
    // Translation: W_p(mu + t, mu) = ||t|| for every p.
    VectorD t = random_atoms(rng, 1, d).row(0).transpose();
    MatrixD shifted = x.rowwise() + t.transpose();
    const MeasureD at(shifted, a.weights());
    for (double p : {1.0, 2.0, 3.0}) expect_rel(exact(at, a, p), t.norm(), 1e-12, "translation");
    // Identity: zero cost, diagonal plan.
    WassersteinOptions o;
    o.want_plan = true;
    o.want_potentials = true;
    const auto self = wasserstein_exact(am, am, o);
    EXPECT_NEAR(self.value, 0, 1e-15);
    for (const auto& e : self.plan->entries) EXPECT_EQ(e.i, e.j);
  }
}

TEST(wasserstein_test, plan_marginals_and_potentials) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 10; ++trial) {
    const Index n = 30 + 40 * trial, m = 20 + 35 * trial, d = 3;
    const MeasureD a = random_measure(rng, n, d, true);
    const MeasureD b = random_measure(rng, m, d, true, 0.7);
    WassersteinOptions o;
    o.p = trial % 2 ? 2.0 : 1.0;
    o.want_plan = o.want_dense_plan = o.want_potentials = true;
    o.dense_arc_limit = trial % 2 ? 0 : 1 << 30;
    const auto r = wasserstein_exact(a, b, o);
    ASSERT_TRUE(r.plan && r.plan->dense && r.potentials);
    const MatrixD& P = *r.plan->dense;
    EXPECT_LT((P.rowwise().sum() - a.weights()).lpNorm<1>(), 1e-13);
    EXPECT_LT((P.colwise().sum().transpose() - b.weights()).lpNorm<1>(), 1e-13);
    EXPECT_LT(r.plan->marginal_error, 1e-13);
    EXPECT_GE(P.minCoeff(), 0.0);
    EXPECT_LE(static_cast<Index>(r.plan->entries.size()), n + m - 1) << "basic solution";
    const VectorD& f = r.potentials->f;
    const VectorD& g = r.potentials->g;
    double dual = f.dot(a.weights()) + g.dot(b.weights());
    expect_rel(dual, r.cost, 1e-10, "strong duality");
    double worst = 0;
    for (Index i = 0; i < n; ++i)
      for (Index j = 0; j < m; ++j) {
        const double c = std::pow((a.atom(i) - b.atom(j)).norm(), o.p);
        worst = std::min(worst, c - f[i] - g[j]);
      }
    EXPECT_GE(worst, -1e-10) << "dual feasibility";
  }
}

TEST(wasserstein_test, far_apart_and_coincident_atoms) {
  MatrixD x(3, 2), y(3, 2);
  x << 0, 0, 1e6, 0, 0, 1e-9;
  y << 0, 0, 1e6, 1, 0, 1e-9;
  const MeasureD a = MeasureD::empirical(x), b = MeasureD::empirical(y);
  expect_rel(exact(a, b), 1.0 / 3.0, 1e-12);
  // One atom against many.
  MatrixD one(1, 2);
  one << 1, 1;
  const MeasureD single = MeasureD::empirical(one);
  double mean = 0;
  for (Index i = 0; i < 3; ++i) mean += (x.row(i) - one.row(0)).norm() / 3;
  expect_rel(exact(a, single), mean, 1e-12);
  expect_rel(exact(single, a), mean, 1e-12);
}

TEST(wasserstein_test, float_measures_and_small_hot_path_is_thread_safe) {
  std::mt19937_64 rng(8);
  std::vector<MeasureD> ms;
  for (int k = 0; k < 16; ++k) ms.push_back(random_measure(rng, 10 + k, 4, k % 2));
  std::vector<double> serial(ms.size() - 1), parallel(ms.size() - 1);
  for (size_t k = 0; k + 1 < ms.size(); ++k) serial[k] = wasserstein_exact_value(ms[k], ms[k + 1]);
#pragma omp parallel for
  for (int k = 0; k < static_cast<int>(ms.size()) - 1; ++k)
    parallel[static_cast<size_t>(k)] =
        wasserstein_exact_value(ms[static_cast<size_t>(k)], ms[static_cast<size_t>(k) + 1]);
  EXPECT_EQ(serial, parallel);
  const MeasureF af = ms[0].cast<float>(), bf = ms[1].cast<float>();
  EXPECT_NEAR(wasserstein_exact_value(af, bf), serial[0], 1e-5);
}

TEST(wasserstein_test, sinkhorn_ignores_zero_weight_atoms) {
  // Atoms of zero weight change nothing: the same entropic plan as without them
  // (small and parallel sizes, zeros in either measure).
  std::mt19937_64 rng(21);
  for (const Index n : {40, 700}) {
    MeasureD a = random_measure(rng, n, 3, true);
    MeasureD b = random_measure(rng, n + 13, 3, true, 0.3);
    VectorD wa = a.weights(), wb = b.weights();
    for (Index i = 0; i < n; i += 5) wa[i] = 0;
    for (Index j = 1; j < n + 13; j += 7) wb[j] = 0;
    const MeasureD az(a.atoms(), wa), bz(b.atoms(), wb);
    auto keep = [](const MeasureD& m) {
      std::vector<Index> idx;
      for (Index i = 0; i < m.size(); ++i)
        if (m.weights()[i] > 0) idx.push_back(i);
      MatrixD x(static_cast<Index>(idx.size()), m.dim());
      VectorD w(static_cast<Index>(idx.size()));
      for (size_t t = 0; t < idx.size(); ++t) {
        x.row(static_cast<Index>(t)) = m.atoms().row(idx[t]);
        w[static_cast<Index>(t)] = m.weights()[idx[t]];
      }
      return MeasureD(x, w);
    };
    WassersteinOptions o;
    o.reg = 0.1;
    o.tolerance = 1e-12;
    o.max_iterations = 100000;
    const auto with_zeros = wasserstein_sinkhorn(az, bz, o);
    const auto without = wasserstein_sinkhorn(keep(az), keep(bz), o);
    EXPECT_EQ(with_zeros.status, Status::converged);
    expect_rel(with_zeros.transport_cost.value(), without.transport_cost.value(), 1e-9,
               "transport cost");
    expect_rel(with_zeros.rounded_cost.value(), without.rounded_cost.value(), 1e-9, "rounded cost");
  }
}

TEST(wasserstein_test, sinkhorn_is_deterministic_across_thread_counts_and_converges) {
  std::mt19937_64 rng(9);
  const MeasureD a = random_measure(rng, 1200, 4, true);
  const MeasureD b = random_measure(rng, 1000, 4, false, 0.5);
  WassersteinOptions o;
  o.reg = 0.1;
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const auto r1 = wasserstein_sinkhorn(a, b, o);
  omp_set_num_threads(2);
  const auto r2 = wasserstein_sinkhorn(a, b, o);
  omp_set_num_threads(saved);
  EXPECT_EQ(r1.transport_cost.value(), r2.transport_cost.value());
  EXPECT_EQ(r1.rounded_cost.value(), r2.rounded_cost.value());
  EXPECT_EQ(r1.iterations, r2.iterations);
  EXPECT_EQ(r1.status, Status::converged);
  EXPECT_LT(r1.marginal_violation.value(), o.tolerance);
  // Small epsilon: entropic estimate close to the exact value (log-domain stability).
  const MeasureD c = random_measure(rng, 60, 3, true), e = random_measure(rng, 50, 3, true, 1.0);
  WassersteinOptions s;
  s.reg = 5e-3;
  s.max_iterations = 5000;
  s.want_dense_plan = true;
  const auto sk = wasserstein_sinkhorn(c, e, s);
  const double w = exact(c, e);
  EXPECT_NEAR(sk.value, w, 0.05 * w);
  EXPECT_GE(sk.upper, w - 1e-12);
  EXPECT_LE(sk.lower, w + 1e-12);
  EXPECT_LT(sk.plan->marginal_error, 1e-12) << "rounded plan is feasible";
  // Iteration cap is a status, not an exception.
  s.max_iterations = 2;
  const auto capped = wasserstein_sinkhorn(c, e, s);
  EXPECT_EQ(capped.status, Status::iteration_limit);
  EXPECT_GE(capped.upper, w - 1e-12);
}

TEST(wasserstein_test, invalid_input_throws) {
  std::mt19937_64 rng(10);
  const MeasureD a = random_measure(rng, 5, 2, true), b = random_measure(rng, 5, 3, true);
  EXPECT_THROW(wasserstein_exact(a, b), invalid_argument);
  WassersteinOptions o;
  o.p = 0.5;
  EXPECT_THROW(wasserstein_exact(a, a, o), invalid_argument);
  o = {};
  o.reg = 0;
  EXPECT_THROW(wasserstein_sinkhorn(a, a, o), invalid_argument);
  EXPECT_THROW(wasserstein_1d(a, a), invalid_argument);
  EXPECT_THROW(sliced_lower_bound(a, a, VectorD::Zero(2)), invalid_argument);
  EXPECT_THROW(parse_wasserstein_method("bogus"), invalid_argument);
  EXPECT_THROW(identity_coupling_upper_bound(a, random_measure(rng, 4, 2, true)), invalid_argument);
}

// ---- Overflow stories (issue 14) --------------------------------------------------

TEST(wasserstein_test, huge_and_tiny_coordinates_scale_exactly) {
  std::mt19937_64 rng(140);
  const MatrixD x = random_atoms(rng, 7, 3), y = random_atoms(rng, 6, 3, 0.5);
  const double ref = wasserstein_exact(MeasureD::empirical(x), MeasureD::empirical(y)).value;
  for (double s : {1e-300, 1e-150, 1e154, 1e300}) {
    const WassersteinResult r =
        wasserstein_exact(MeasureD::empirical(x * s), MeasureD::empirical(y * s));
    EXPECT_EQ(r.kind, Bound::exact) << s;
    EXPECT_NEAR(r.value / s, ref, 1e-12 * ref) << s;
    WassersteinOptions o;
    const WassersteinResult sl =
        max_sliced_bounds(MeasureD::empirical(x * s), MeasureD::empirical(y * s), o);
    EXPECT_TRUE(std::isfinite(sl.lower) && std::isfinite(sl.upper)) << s;
    EXPECT_LE(sl.lower / s, ref * (1 + 1e-9)) << s;
    EXPECT_GE(sl.upper / s, ref * (1 - 1e-9)) << s;
    EXPECT_TRUE(std::isfinite(
        mean_difference_lower_bound(MeasureD::empirical(x * s), MeasureD::empirical(y * s))));
  }
}

TEST(wasserstein_test, large_p_is_monotone_and_bounded_by_the_largest_distance) {
  std::mt19937_64 rng(141);
  const MatrixD x = random_atoms(rng, 20, 2), y = random_atoms(rng, 15, 2, 0.5);
  double previous = 0, largest = 0;
  for (Index i = 0; i < x.rows(); ++i)
    for (Index j = 0; j < y.rows(); ++j) largest = std::max(largest, (x.row(i) - y.row(j)).norm());
  for (double p : {1.0, 4.0, 32.0, 100.0, 1000.0, 1e5, 1e6}) {
    WassersteinOptions o;
    o.p = p;
    const WassersteinResult r =
        wasserstein_exact(MeasureD::empirical(x), MeasureD::empirical(y), o);
    ASSERT_TRUE(std::isfinite(r.value)) << p;
    EXPECT_LE(r.lower, r.value) << p;
    EXPECT_LE(r.value, r.upper) << p;
    EXPECT_GE(r.value, previous * (1 - 1e-9)) << p;  // W_p is nondecreasing in p
    EXPECT_LE(r.value, largest * (1 + 1e-12)) << p;
    previous = r.value;
  }
  WassersteinOptions o;
  o.p = 1e300;
  EXPECT_THROW(o.validate(), invalid_argument);
}

TEST(wasserstein_test, sinkhorn_tiny_reg_keeps_value_in_its_bracket) {
  std::mt19937_64 rng(142);
  const MatrixD x = random_atoms(rng, 30, 3), y = random_atoms(rng, 30, 3);
  const double exact = wasserstein_exact(MeasureD::empirical(x), MeasureD::empirical(y)).value;
  for (double reg : {1e-300, 1e-20, 1e-3}) {
    WassersteinOptions o;
    o.reg = reg;
    const WassersteinResult r =
        wasserstein_sinkhorn(MeasureD::empirical(x), MeasureD::empirical(y), o);
    ASSERT_TRUE(std::isfinite(r.value)) << reg;
    EXPECT_LE(r.lower, r.value) << reg;
    EXPECT_LE(r.value, r.upper) << reg;
    EXPECT_LE(r.lower, exact * (1 + 1e-9)) << reg;
    EXPECT_GE(r.upper, exact * (1 - 1e-9)) << reg;
  }
}

// ---- mass checks and transport on a given cost matrix ------------------------------

namespace {

MatrixD random_cost(std::mt19937_64& rng, Index n, Index m) {
  std::normal_distribution<double> normal(0, 1);
  MatrixD c(n, m);
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < m; ++j) c(i, j) = normal(rng);  // negative, not a metric
  return c;
}

VectorD normalized(VectorD w) { return w / w.sum(); }

}  // namespace

TEST(wasserstein_test, mass_check_is_strict_by_default_and_names_both_totals) {
  EXPECT_NO_THROW(check_mass(1.0, 1.0 + 1e-9, MassPolicy::strict));
  EXPECT_NO_THROW(check_mass(3.0, 1.0, MassPolicy::renormalize));
  try {
    check_mass(3.0, 1.0, MassPolicy::strict, "wa", "wb");
    FAIL() << "no throw";
  } catch (const invalid_argument& e) {
    EXPECT_EQ(e.field(), "mass");
    EXPECT_NE(std::string(e.what()).find("wa sums to 3, wb sums to 1"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(parse_mass_policy("renormalize"), MassPolicy::renormalize);
  EXPECT_EQ(to_string(MassPolicy::strict), "strict");
  EXPECT_THROW(parse_mass_policy("loose"), invalid_argument);
  EXPECT_EQ(WassersteinOptions{}.mass, MassPolicy::strict);
}

TEST(wasserstein_test, cost_matrix_exact_column_generation_matches_the_dense_solve) {
  std::mt19937_64 rng(21);
  for (auto [n, m] : {std::pair<Index, Index>{40, 30}, {250, 300}}) {
    const MatrixD c = random_cost(rng, n, m);
    const VectorD a = normalized(random_weights(rng, n)), b = normalized(random_weights(rng, m));
    WassersteinOptions dense, sparse;
    dense.dense_arc_limit = n * m;
    sparse.dense_arc_limit = 0;
    sparse.neighbours = 4;
    dense.want_dense_plan = sparse.want_dense_plan = true;
    const TransportResult rd = transport_exact(a, b, c, dense);
    const TransportResult rs = transport_exact(a, b, c, sparse);
    EXPECT_EQ(rd.status, Status::optimal);
    EXPECT_EQ(rs.status, Status::optimal);
    EXPECT_NEAR(rs.cost, rd.cost, 1e-12);
    EXPECT_LT((rs.plan - rd.plan).cwiseAbs().maxCoeff(), 1e-12);
    for (const TransportResult* r : {&rd, &rs}) {
      // Marginals, dual feasibility and strong duality: the certificate.
      EXPECT_LT((r->plan.rowwise().sum() - a).cwiseAbs().maxCoeff(), 1e-14);
      EXPECT_LT((r->plan.colwise().sum().transpose() - b).cwiseAbs().maxCoeff(), 1e-14);
      double worst = -1e300;
      for (Index i = 0; i < n; ++i)
        for (Index j = 0; j < m; ++j) worst = std::max(worst, r->f[i] + r->g[j] - c(i, j));
      EXPECT_LE(worst, 1e-10);
      EXPECT_NEAR(a.dot(r->f) + b.dot(r->g), r->cost, 1e-10);
    }
  }
}

TEST(wasserstein_test, cost_matrix_exact_small_brute_force_and_bad_input) {
  // Uniform 1/n weights on n x n: the optimum is a permutation.
  std::mt19937_64 rng(22);
  const Index n = 6;
  const MatrixD c = random_cost(rng, n, n);
  std::vector<int> perm(n);
  std::iota(perm.begin(), perm.end(), 0);
  double best = std::numeric_limits<double>::infinity();
  do {
    double s = 0;
    for (Index i = 0; i < n; ++i) s += c(i, perm[static_cast<size_t>(i)]);
    best = std::min(best, s / static_cast<double>(n));
  } while (std::next_permutation(perm.begin(), perm.end()));
  const VectorD u = VectorD::Constant(n, 1.0 / n);
  EXPECT_NEAR(transport_exact(u, u, c).cost, best, 1e-14);
  // Equal totals other than 1 scale the cost; different totals are an error.
  EXPECT_NEAR(transport_exact(VectorD(3 * u), VectorD(3 * u), c).cost, 3 * best, 1e-13);
  EXPECT_THROW(transport_exact(u, VectorD(2 * u), c), invalid_argument);
  WassersteinOptions renorm;
  renorm.mass = MassPolicy::renormalize;
  EXPECT_NEAR(transport_exact(u, VectorD(2 * u), c, renorm).cost, best, 1e-14);
  EXPECT_THROW(transport_exact(VectorD::Ones(n - 1), u, c), invalid_argument);
  MatrixD bad = c;
  bad(1, 2) = std::numeric_limits<double>::infinity();
  EXPECT_THROW(transport_exact(u, u, bad), invalid_argument);
  VectorD negative = u;
  negative[0] = -0.1;
  EXPECT_THROW(transport_exact(negative, u, c, renorm), invalid_argument);
}

TEST(wasserstein_test, cost_matrix_sinkhorn_marginals_caps_warm_start_histograms_threads) {
  std::mt19937_64 rng(23);
  const Index n = 120, m = 90;
  MatrixD c = random_cost(rng, n, m).cwiseAbs();
  const VectorD a = normalized(random_weights(rng, n));
  MatrixD B(m, 3);
  for (Index k = 0; k < 3; ++k) B.col(k) = normalized(random_weights(rng, m));
  WassersteinOptions o;
  o.reg = 0.05;
  o.want_dense_plan = true;
  o.max_iterations = 100000;
  const auto rs = transport_sinkhorn(a, B, c, o);
  ASSERT_EQ(rs.size(), 3u);
  for (Index k = 0; k < 3; ++k) {
    const TransportResult& r = rs[static_cast<size_t>(k)];
    EXPECT_EQ(r.status, Status::converged);
    EXPECT_LT((r.plan.colwise().sum().transpose() - B.col(k)).norm(), o.tolerance);
    EXPECT_LT((r.plan.rowwise().sum() - a).cwiseAbs().maxCoeff(), 1e-15);
    EXPECT_NEAR((r.plan.array() * c.array()).sum(), r.cost, 1e-14);
    // P = exp((f_i + g_j - C_ij) / reg).
    EXPECT_NEAR(r.plan(3, 4), std::exp((r.f[3] + r.g[4] - c(3, 4)) / o.reg), 1e-15);
  }
  // A warm start from the solution converges at the first check.
  const MatrixD start = rs[0].f / o.reg;
  const auto warm = transport_sinkhorn(a, B.col(0), c, o, &start);
  EXPECT_EQ(warm[0].iterations, 1);
  EXPECT_LT((warm[0].plan - rs[0].plan).cwiseAbs().maxCoeff(), 1e-10);
  // The cap is a status.
  WassersteinOptions capped = o;
  capped.max_iterations = 3;
  const auto rc = transport_sinkhorn(a, B.col(0), c, capped);
  EXPECT_EQ(rc[0].status, Status::iteration_limit);
  EXPECT_EQ(rc[0].iterations, 3);
  // Tiny reg: exp(-C / reg) underflows, the stabilized iteration stays finite.
  WassersteinOptions tiny = o;
  tiny.reg = 1e-4;
  tiny.max_iterations = 50;
  const auto rt = transport_sinkhorn(a, B.col(0), c, tiny);
  EXPECT_TRUE(rt[0].plan.allFinite());
  EXPECT_TRUE(std::isfinite(rt[0].cost));
  // Bit-identical whatever the thread count (sizes above the parallel threshold).
  const MatrixD big = random_cost(rng, 1500, 1400).cwiseAbs();
  const VectorD a6 = normalized(random_weights(rng, 1500));
  const VectorD b5 = normalized(random_weights(rng, 1400));
  WassersteinOptions short_run = o;
  short_run.max_iterations = 25;
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const auto r1 = transport_sinkhorn(a6, b5, big, short_run);
  omp_set_num_threads(2);
  const auto r2 = transport_sinkhorn(a6, b5, big, short_run);
  omp_set_num_threads(saved);
  EXPECT_EQ(r1[0].cost, r2[0].cost);
  EXPECT_EQ(r1[0].iterations, r2[0].iterations);
  EXPECT_TRUE((r1[0].plan.array() == r2[0].plan.array()).all());
  EXPECT_THROW(transport_sinkhorn(a, MatrixD::Ones(m + 1, 1), c, o), invalid_argument);
}

namespace {

MatrixD uniform_atoms(std::mt19937_64& rng, Index n, Index d) {
  std::uniform_real_distribution<double> u(0, 1);
  MatrixD x(n, d);
  for (Index i = 0; i < n; ++i)
    for (Index k = 0; k < d; ++k) x(i, k) = u(rng);
  return x;
}

WassersteinOptions multiscale_options(double p, double reg, double tolerance) {
  WassersteinOptions o;
  o.p = p;
  o.method = WassersteinMethod::sinkhorn;
  o.reg = reg;
  o.tolerance = tolerance;
  o.max_iterations = 100000;
  o.multiscale = true;
  return o;
}

void expect_finite_bracket(const WassersteinResult& r, const char* what) {
  EXPECT_TRUE(std::isfinite(r.value) && std::isfinite(r.lower) && std::isfinite(r.upper)) << what;
  EXPECT_TRUE(std::isfinite(r.transport_cost.value()) && std::isfinite(r.entropic_cost.value()))
      << what;
  EXPECT_LE(r.lower, r.value) << what;
  EXPECT_LE(r.value, r.upper) << what;
}

}  // namespace

TEST(wasserstein_test, multiscale_truncated_sinkhorn_matches_dense_and_online_inside_its_bracket) {
  // Random instances, small enough for the dense solver; the 2100 x 2000 one has a
  // coarse level (n m > 4e6) and a reg small against the cells, so that the truncation
  // skips cells (loose before the first convergence, the requested one after).
  struct Case {
    Index n, m, d;
    double p, reg;
    bool uniform;
  };
  std::mt19937_64 rng(2026);
  for (const Case& c : {Case{300, 260, 3, 2, 0.02, false}, Case{250, 310, 2, 1, 0.05, false},
                        Case{2100, 2000, 3, 2, 0.01, true}}) {
    const MeasureD a(c.uniform ? uniform_atoms(rng, c.n, c.d) : random_atoms(rng, c.n, c.d),
                     random_weights(rng, c.n));
    const MeasureD b(
        c.uniform ? uniform_atoms(rng, c.m, c.d) : random_atoms(rng, c.m, c.d, 0.3, 0.8),
        random_weights(rng, c.m));
    const double tol = c.uniform ? 1e-8 : 1e-9;
    WassersteinOptions o = multiscale_options(c.p, c.reg, tol);
    const auto ms = wasserstein_sinkhorn(a, b, o);
    o.multiscale = false;
    const auto dense = wasserstein_sinkhorn(a, b, o);
    o.online = true;
    const bool small = c.n * c.m <= 100000;
    const auto online = small ? wasserstein_sinkhorn(a, b, o) : dense;
    EXPECT_EQ(ms.status, Status::converged) << c.n;
    EXPECT_LT(ms.marginal_violation.value(), tol);
    expect_finite_bracket(ms, "multiscale");
    expect_rel(ms.transport_cost.value(), dense.transport_cost.value(), 1e-6, "vs dense");
    expect_rel(ms.transport_cost.value(), online.transport_cost.value(), 1e-6, "vs online");
    // Both solvers' values and certified bounds lie in the other's bracket.
    EXPECT_LE(ms.lower, dense.upper * (1 + 1e-12));
    EXPECT_LE(dense.lower, ms.upper * (1 + 1e-12));
    EXPECT_LE(ms.lower, dense.value * (1 + 1e-9));
    EXPECT_LE(dense.value, ms.upper * (1 + 1e-9));
    if (small) {
      const double w = exact(a, b, c.p);
      EXPECT_LE(ms.lower, w * (1 + 1e-12));
      EXPECT_LE(w, ms.upper * (1 + 1e-12));
    }
    // A truncation at the validated maximum still agrees closely (its bound on the
    // neglected mass, part of the stopping test, is above tol: capped iterations).
    o = multiscale_options(c.p, c.reg, tol);
    o.truncation = 1e-3;
    o.max_iterations = small ? 300 : 30;
    const auto loose = wasserstein_sinkhorn(a, b, o);
    expect_rel(loose.transport_cost.value(), dense.transport_cost.value(), 1e-2, "truncation 1e-3");
    EXPECT_LE(loose.lower, dense.upper * (1 + 1e-12));
  }
}

TEST(wasserstein_test, multiscale_sinkhorn_is_identical_whatever_the_thread_count) {
  std::mt19937_64 rng(77);
  const MeasureD a(uniform_atoms(rng, 2300, 3), random_weights(rng, 2300));
  const MeasureD b(uniform_atoms(rng, 2200, 3), VectorD::Ones(2200));
  WassersteinOptions o = multiscale_options(2, 3e-3, 1e-7);
  o.want_potentials = true;
  const int saved = omp_get_max_threads();
  std::vector<WassersteinResult> r;
  for (const int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    r.push_back(wasserstein_sinkhorn(a, b, o));
  }
  omp_set_num_threads(saved);
  EXPECT_EQ(r[0].status, Status::converged);
  for (size_t t = 1; t < r.size(); ++t) {
    EXPECT_EQ(r[t].transport_cost.value(), r[0].transport_cost.value());
    EXPECT_EQ(r[t].entropic_cost.value(), r[0].entropic_cost.value());
    EXPECT_EQ(r[t].lower, r[0].lower);
    EXPECT_EQ(r[t].upper, r[0].upper);
    EXPECT_EQ(r[t].iterations, r[0].iterations);
    EXPECT_EQ(r[t].marginal_violation.value(), r[0].marginal_violation.value());
    EXPECT_TRUE(r[t].potentials->f == r[0].potentials->f);
    EXPECT_TRUE(r[t].potentials->g == r[0].potentials->g);
  }
}

TEST(wasserstein_test, multiscale_sinkhorn_degenerate_inputs_stay_finite) {
  std::mt19937_64 rng(5);
  const WassersteinOptions o = multiscale_options(2, 0.01, 1e-9);
  // Every atom at one point, in both measures: W = 0.
  const MatrixD same = MatrixD::Constant(500, 3, 0.25);
  const auto coincident =
      wasserstein_sinkhorn(MeasureD(same, random_weights(rng, 500)),
                           MeasureD(MatrixD::Constant(400, 3, 0.25), VectorD::Ones(400)), o);
  expect_finite_bracket(coincident, "coincident");
  EXPECT_NEAR(coincident.lower, 0, 1e-12);
  EXPECT_NEAR(coincident.value, 0, 1e-12);
  // One atom against one atom, and one against many: the closed form.
  MatrixD x1(1, 3), y1(1, 3);
  x1 << 0.1, 0.2, 0.3;
  y1 << 0.4, 0.6, 0.3;
  const auto one =
      wasserstein_sinkhorn(MeasureD(x1, VectorD::Ones(1)), MeasureD(y1, VectorD::Ones(1)), o);
  expect_finite_bracket(one, "one atom");
  EXPECT_NEAR(one.value, 0.5, 1e-12);
  const MeasureD many(uniform_atoms(rng, 700, 3), random_weights(rng, 700));
  const auto star = wasserstein_sinkhorn(MeasureD(x1, VectorD::Ones(1)), many, o);
  expect_finite_bracket(star, "one against many");
  double w2 = 0;
  for (Index j = 0; j < 700; ++j)
    w2 += many.weights()[j] * (many.atoms().row(j) - x1.row(0)).squaredNorm();
  expect_rel(star.value, std::sqrt(w2), 1e-9, "one against many");
  // Zero weights (whole cells of them) and a cloud equal to the other: finite, and the
  // zero-weight atoms change nothing.
  MatrixD x = uniform_atoms(rng, 900, 3);
  VectorD wa = random_weights(rng, 900);
  for (Index i = 0; i < 900; ++i)
    if (x(i, 0) < 0.2 || i % 7 == 0) wa[i] = 0;
  const MeasureD az(x, wa), bx(x, random_weights(rng, 900));
  const auto zeros = wasserstein_sinkhorn(az, bx, o);
  expect_finite_bracket(zeros, "zero weights");
  EXPECT_EQ(zeros.status, Status::converged);
  std::vector<Index> idx;
  for (Index i = 0; i < 900; ++i)
    if (wa[i] > 0) idx.push_back(i);
  MatrixD xk(static_cast<Index>(idx.size()), 3);
  VectorD wk(static_cast<Index>(idx.size()));
  for (size_t t = 0; t < idx.size(); ++t) {
    xk.row(static_cast<Index>(t)) = x.row(idx[t]);
    wk[static_cast<Index>(t)] = wa[idx[t]];
  }
  const auto kept = wasserstein_sinkhorn(MeasureD(xk, wk), bx, o);
  expect_rel(zeros.transport_cost.value(), kept.transport_cost.value(), 1e-7, "zero weights");
  const auto equal = wasserstein_sinkhorn(bx, bx, o);
  expect_finite_bracket(equal, "equal clouds");
  EXPECT_EQ(equal.status, Status::converged);
}
