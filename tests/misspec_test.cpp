// Mis-specified inputs: the bound L W1(mu', mu) is never beaten by the realized
// output deviation; closed forms for E||xi|| and the log-log slope.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <vector>

#include "measattn/error.hpp"
#include "measattn/misspec.hpp"

using namespace measattn;

namespace {

MeasureD random_measure(std::mt19937_64& rng, Index n, Index d) {
  std::normal_distribution<double> nd(0.0, 1.0);
  std::uniform_real_distribution<double> u(0.1, 1.0);
  MatrixD x(n, d);
  VectorD w(n);
  for (Index i = 0; i < n; ++i) {
    for (Index c = 0; c < d; ++c) x(i, c) = nd(rng);
    w[i] = u(rng);
  }
  return MeasureD(x, w);
}

}  // namespace

TEST(misspec_test, expected_gaussian_norm_closed_forms) {
  EXPECT_NEAR(expected_gaussian_norm(1), std::sqrt(2.0 / M_PI), 1e-14);
  EXPECT_NEAR(expected_gaussian_norm(2), std::sqrt(M_PI / 2.0), 1e-14);
  EXPECT_NEAR(expected_gaussian_norm(3), 2.0 * std::sqrt(2.0 / M_PI), 1e-14);
  // Monte Carlo in d = 5.
  std::mt19937_64 rng(1);
  std::normal_distribution<double> nd(0.0, 1.0);
  double s = 0;
  const int m = 200000;
  for (int i = 0; i < m; ++i) {
    double q = 0;
    for (int c = 0; c < 5; ++c) {
      const double t = nd(rng);
      q += t * t;
    }
    s += std::sqrt(q) / m;
  }
  EXPECT_NEAR(expected_gaussian_norm(5), s, 5e-3);
}

TEST(misspec_test, loglog_slope_recovers_power_laws) {
  std::vector<double> x = {1, 2, 4, 8, 16}, y;
  for (double v : x) y.push_back(3.0 * std::pow(v, -0.5));
  EXPECT_NEAR(loglog_slope(x, y), -0.5, 1e-12);
  EXPECT_TRUE(std::isnan(loglog_slope({1}, {1})));
}

TEST(misspec_test, bound_never_violated) {
  omp_set_num_threads(1);
  std::mt19937_64 rng(2);
  int rows = 0;
  for (int t = 0; t < 24; ++t) {
    const Index d = 1 + t % 3;
    const Potential pot = t % 2 ? Potential::dot : Potential::l2;
    const Model<double> model = Model<double>::random(d, 1, t % 3 == 0, rng(), pot);
    const MeasureD mu = random_measure(rng, 3 + t % 4, d);
    for (MisspecKind kind : {MisspecKind::sample, MisspecKind::noise, MisspecKind::corrupt}) {
      MisspecOptions o;
      o.kind = kind;
      o.sizes = {2, 4, 8, 16};
      o.sigmas = {0.01, 0.1, 0.5};
      o.eps = {0.01, 0.1, 0.5};
      o.repeats = 2;
      o.seed = rng();
      o.residual = t % 4 == 1;
      o.adversarial = t % 2 == 0;
      const MisspecResult r = misspecification(model, mu, o);
      EXPECT_FALSE(r.violated);
      EXPECT_GE(r.radius, mu.radius());
      for (const auto& row : r.rows) {
        ++rows;
        EXPECT_LE(row.w1_output, row.bound * (1 + 1e-9) + 1e-12);
        EXPECT_LE(row.max_ratio, 1 + 1e-9);
        if (kind == MisspecKind::corrupt) {
          // W1(mu', mu) <= 2 R eps (the corrupted mass moves at most 2R).
          EXPECT_LE(row.w1_input, 2 * r.radius * row.parameter * (1 + 1e-9));
          EXPECT_LE(row.bound, row.a_priori.value() * (1 + 1e-9));
        }
      }
    }
  }
  EXPECT_GE(rows, 200);
}

TEST(misspec_test, sampling_error_decreases_with_n) {
  omp_set_num_threads(1);
  std::mt19937_64 rng(3);
  const Model<double> model = Model<double>::random(2, 1, false, 5, Potential::dot);
  const MeasureD mu = random_measure(rng, 40, 2);
  MisspecOptions o;
  o.kind = MisspecKind::sample;
  o.sizes = {4, 16, 64, 256};
  o.repeats = 4;
  const MisspecResult r = misspecification(model, mu, o);
  EXPECT_LT(r.input_rate.value(), -0.2);
  EXPECT_LT(r.output_rate.value(), -0.2);
  EXPECT_GT(r.rows.front().w1_output, r.rows.back().w1_output);
  EXPECT_FALSE(r.rows.front().a_priori.has_value());  // was NaN before it was optional
}

TEST(misspec_test, progress_callback_counts_draws) {
  std::mt19937_64 rng(4);
  const Model<double> model = Model<double>::random(2, 1, false, 6, Potential::dot);
  const MeasureD mu = random_measure(rng, 10, 2);
  for (MisspecKind kind : {MisspecKind::sample, MisspecKind::noise, MisspecKind::corrupt}) {
    MisspecOptions o;
    o.kind = kind;
    o.sizes = {3, 6};
    o.sigmas = {0.1, 0.2};
    o.eps = {0.1, 0.2};
    o.repeats = 3;
    const MisspecResult plain = misspecification(model, mu, o);
    std::vector<std::int64_t> dones;
    std::int64_t total = -1;
    o.progress_callback = [&](std::int64_t done, std::int64_t t) {
      dones.push_back(done);
      total = t;
    };
    const MisspecResult watched = misspecification(model, mu, o);
    const std::int64_t expected = (kind == MisspecKind::corrupt ? 2 : 1) * 2 * 3;
    EXPECT_EQ(total, expected);
    ASSERT_EQ(static_cast<std::int64_t>(dones.size()), expected);
    for (std::int64_t i = 0; i < expected; ++i) EXPECT_EQ(dones[static_cast<size_t>(i)], i + 1);
    ASSERT_EQ(watched.rows.size(), plain.rows.size());
    for (size_t i = 0; i < plain.rows.size(); ++i) {
      EXPECT_EQ(watched.rows[i].w1_output, plain.rows[i].w1_output);
      EXPECT_EQ(watched.rows[i].bound, plain.rows[i].bound);
    }
  }
  MisspecOptions o;
  o.progress_callback = [](std::int64_t, std::int64_t) { throw std::runtime_error("stop"); };
  EXPECT_THROW(misspecification(model, mu, o), std::runtime_error);
}

TEST(misspec_test, bad_options_throw) {
  const Model<double> model = Model<double>::random(2, 1, false, 5, Potential::dot);
  std::mt19937_64 rng(4);
  const MeasureD mu = random_measure(rng, 4, 2);
  MisspecOptions o;
  o.kind = MisspecKind::corrupt;
  o.eps = {1.5};
  EXPECT_THROW(misspecification(model, mu, o), measattn::invalid_argument);
  o = {};
  o.sizes = {0};
  EXPECT_THROW(misspecification(model, mu, o), measattn::invalid_argument);
  o = {};
  o.kind = MisspecKind::noise;
  o.sigmas = {-1};
  EXPECT_THROW(misspecification(model, mu, o), measattn::invalid_argument);
  EXPECT_THROW(misspecification(model, random_measure(rng, 4, 3), {}), measattn::invalid_argument);
  EXPECT_THROW(parse_misspec_kind("bogus"), measattn::invalid_argument);
}
