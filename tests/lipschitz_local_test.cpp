// The local certificate around a measure (lipschitz_local_bound, docs/theory.md:
// local certificate): never beaten by any nu within eps, over many random layers,
// measures and perturbations; its limits and errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "measattn/error.hpp"
#include "measattn/lipschitz.hpp"
#include "measattn/wasserstein.hpp"

namespace measattn {
namespace {

MatrixD ball_points(std::mt19937_64& rng, Index n, Index d, double radius) {
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  MatrixD x(n, d);
  for (Index i = 0; i < n; ++i) {
    for (Index c = 0; c < d; ++c) x(i, c) = normal(rng);
    x.row(i) *= radius * std::pow(unit(rng), 1.0 / static_cast<double>(d)) /
                std::max(x.row(i).norm(), 1e-300);
  }
  return x;
}

void project(MatrixD& x, double radius) {
  for (Index i = 0; i < x.rows(); ++i) {
    const double n = x.row(i).norm();
    if (n > radius) x.row(i) *= radius / n;
  }
}

TEST(lipschitz_local_test, never_beaten_by_any_nu_within_eps) {
  std::mt19937_64 rng(2024);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  int checked = 0;
  for (int trial = 0; trial < 200; ++trial) {
    const Index d = 2 + trial % 3, heads = 1 + trial % 2, n = 1 + trial % 6;
    Model<double> model = Model<double>::random(d * heads, heads, trial % 3 != 0, 100 + trial);
    // Input dimension d * heads: heads must divide the embedding.
    const Index dim = model.query_dim();
    model.w_q *= 0.5 + 2 * unit(rng);  // from diffuse to concentrated kernels
    const double radius = 0.3 + 1.7 * unit(rng);
    const bool residual = trial % 4 == 1;
    MatrixD x = ball_points(rng, n, dim, radius);
    VectorD w = VectorD::NullaryExpr(n, [&](Index) { return 0.05 + unit(rng); });
    if (n > 2 && trial % 5 == 0) w[1] = 0;  // an atom of zero weight
    w /= w.sum();
    const MeasureD mu(x, w);
    for (const double eps : {1e-1, 1e-2, 1e-3}) {
      LocalBoundOptions o;
      o.eps = eps;
      o.radius = radius;
      o.residual = residual;
      o.restarts = 4;
      const LocalBoundResult r = lipschitz_local_bound(model, mu, o);
      ASSERT_FALSE(std::isnan(r.upper));
      EXPECT_LE(r.upper_at_zero, r.upper * (1 + 1e-12));
      EXPECT_LE(r.lower, r.best_upper * (1 + 1e-9)) << trial;
      EXPECT_EQ(r.best_upper, std::min(r.upper, r.global_upper));
      // eps_half: within it the certificate is at most twice its limit, and the
      // certificate at eps = eps_half is the one reported.
      EXPECT_LE(r.upper_at_eps_half, 2 * r.upper_at_zero * (1 + 1e-12));
      EXPECT_GE(r.upper_at_eps_half, r.upper_at_zero * (1 - 1e-12));
      if (eps == 1e-1 && r.eps_half > 0 && std::isfinite(r.eps_half)) {
        LocalBoundOptions half = o;
        half.eps = r.eps_half;
        half.restarts = 0;
        EXPECT_NEAR(lipschitz_local_bound(model, mu, half).upper, r.upper_at_eps_half,
                    1e-12 * r.upper_at_eps_half);
      }
      // Independent perturbations: moves, a tiny atom anywhere in B_R, mass
      // moved between atoms; each scaled into W1 <= eps.
      for (int c = 0; c < 12; ++c) {
        MatrixD y = x;
        VectorD v = w;
        if (c % 3 == 0) {
          y += ball_points(rng, n, dim, eps * unit(rng));
          project(y, radius);
        } else if (c % 3 == 1) {
          const MatrixD z = ball_points(rng, 1, dim, radius);
          const double delta = eps / (2 * radius) * std::pow(10.0, -3 * unit(rng));
          // Fresh arrays (not conservativeResize: GCC 12 warns inside Eigen's realloc).
          MatrixD yy(n + 1, dim);
          yy << y, z;
          VectorD vv(n + 1);
          vv << (1 - delta) * v, delta;
          y = yy;
          v = vv;
        } else {
          const Index i = c % n, j = (c + 1) % n;
          const double t = std::min(v[i], eps / (2 * radius)) * unit(rng);
          v[i] -= t;
          v[j] += t;
        }
        const MeasureD nu(y, v);
        const double w1 = wasserstein_exact_value(nu, mu);
        if (!(w1 > 0) || w1 > eps) continue;
        const double ratio = lipschitz_ratio(model, nu, mu, residual);
        EXPECT_LE(ratio, r.upper * (1 + 1e-9)) << "trial " << trial << " eps " << eps << " c " << c;
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 3000);
}

TEST(lipschitz_local_test, finite_where_the_global_bounds_are_astronomical) {
  // The layer of measattn analyze (d = 8, 2 heads, biases, Q and K doubled) at
  // R = 2: the global bound is about 1e10; around a measure in B_2 the local
  // certificate is orders of magnitude smaller.
  Model<double> model = Model<double>::random(8, 2, true, 2020);
  model.w_q *= 2;
  model.w_k *= 2;
  std::mt19937_64 rng(5);
  const MeasureD mu = MeasureD::empirical(ball_points(rng, 48, 8, 2.0));
  LocalBoundOptions o;
  o.eps = 1e-4;
  o.radius = 2.0;
  const LocalBoundResult r = lipschitz_local_bound(model, mu, o);
  EXPECT_GT(r.global_upper, 1e8);
  EXPECT_TRUE(std::isfinite(r.upper));
  EXPECT_LT(r.upper, r.global_upper * 1e-3);
  EXPECT_GT(r.lower, 0);
  EXPECT_LE(r.lower, r.upper);
  EXPECT_LE(r.witness_w1, o.eps);
  // The certificate decreases to its limit as eps -> 0.
  o.eps = 1e-11;
  const LocalBoundResult tighter = lipschitz_local_bound(model, mu, o);
  EXPECT_LE(tighter.upper, r.upper);
  EXPECT_NEAR(tighter.upper, r.upper_at_zero, 1e-6 * r.upper_at_zero);
}

TEST(lipschitz_local_test, errors_name_the_field) {
  const Model<double> model = Model<double>::random(2, 1, true, 1);
  const MeasureD mu = MeasureD::empirical(MatrixD::Identity(2, 2));
  LocalBoundOptions o;
  auto message = [&](const LocalBoundOptions& opt, const Model<double>& m) {
    try {
      lipschitz_local_bound(m, mu, opt);
    } catch (const invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_EQ(message(o, model).rfind("eps:", 0), 0u);
  o.eps = 1e-3;
  o.radius = 0.5;
  EXPECT_EQ(message(o, model).rfind("radius:", 0), 0u);
  o.radius = 0;  // mu's own radius
  EXPECT_EQ(message(o, model), "");
  Model<double> l2 = model;
  l2.potential = Potential::l2;
  EXPECT_EQ(message(o, l2).rfind("model:", 0), 0u);
  o.restarts = -1;
  EXPECT_EQ(message(o, model).rfind("restarts:", 0), 0u);
}

}  // namespace
}  // namespace measattn
