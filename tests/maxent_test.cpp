#include "measattn/maxent.hpp"

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "attention/internal.hpp"
#include "measattn/attention.hpp"
#include "measattn/error.hpp"
#include "test_measures.hpp"

using namespace measattn;

namespace {

VectorD random_scores(Index m, double scale, std::mt19937_64& rng) {
  std::normal_distribution<double> normal;
  VectorD g(m);
  for (Index j = 0; j < m; ++j) g[j] = scale * normal(rng);
  return g;
}

VectorD random_weights(Index m, std::mt19937_64& rng, bool zeros) {
  std::uniform_real_distribution<double> uniform(0.05, 1.0);
  VectorD w(m);
  for (Index j = 0; j < m; ++j) w[j] = uniform(rng);
  if (zeros) {
    for (Index j = 1; j < m; j += 3) w[j] = 0;
  }
  return w / w.sum();
}

// Softmax of g + log w computed the textbook way (moderate scores only).
VectorD naive_softmax(const VectorD& g, const VectorD& w) {
  VectorD p(g.size());
  for (Index j = 0; j < g.size(); ++j) p[j] = std::exp(g[j] - g.maxCoeff()) * w[j];
  return p / p.sum();
}

double kl(const VectorD& p, const VectorD& q) {
  double s = 0;
  for (Index j = 0; j < p.size(); ++j)
    if (p[j] > 0) s += p[j] * std::log(p[j] / q[j]);
  return s;
}

double shannon(const VectorD& p) {
  double s = 0;
  for (Index j = 0; j < p.size(); ++j)
    if (p[j] > 0) s -= p[j] * std::log(p[j]);
  return s;
}

using measattn::testing::random_measure;

// A feasible candidate: a random distribution on supp(w) mixed with the point
// mass at the argmax (or argmin) of g so that E_nu[g] = c exactly (up to rounding).
VectorD feasible_candidate(const VectorD& g, const VectorD& w, double c, std::mt19937_64& rng) {
  std::exponential_distribution<double> expo;
  const Index m = g.size();
  VectorD q(m);
  Index imax = -1, imin = -1;
  for (Index j = 0; j < m; ++j) {
    q[j] = w[j] > 0 ? expo(rng) : 0;
    if (w[j] > 0 && (imax < 0 || g[j] > g[imax])) imax = j;
    if (w[j] > 0 && (imin < 0 || g[j] < g[imin])) imin = j;
  }
  q /= q.sum();
  const double eq = q.dot(g);
  const Index end = eq < c ? imax : imin;
  const double t = (c - eq) / (g[end] - eq);
  VectorD nu = (1 - t) * q;
  nu[end] += t;
  return nu;
}

}  // namespace

// ---- Gibbs variational principle --------------------------------------------

TEST(maxent_test, gibbs_is_softmax_and_log_partition_is_logsumexp) {
  std::mt19937_64 rng(1);
  for (int trial = 0; trial < 200; ++trial) {
    const Index m = 1 + trial % 37;
    const VectorD g = random_scores(m, 3.0, rng);
    const VectorD w = random_weights(m, rng, trial % 2 == 1 && m > 1);
    const auto r = gibbs(g, w);
    const VectorD p = naive_softmax(g, w);
    EXPECT_LE((r.probabilities - p).cwiseAbs().maxCoeff(), 1e-14);
    double z = 0;
    for (Index j = 0; j < m; ++j) z += std::exp(g[j] - g.maxCoeff()) * w[j];
    const double log_z = g.maxCoeff() + std::log(z);
    EXPECT_NEAR(r.log_partition, log_z, 1e-13 * std::max(1.0, std::abs(log_z)));
    EXPECT_NEAR(r.expected_score, p.dot(g), 1e-13);
    EXPECT_NEAR(r.entropy, shannon(p), 1e-13);
    EXPECT_NEAR(r.kl, kl(p, w), 1e-13);
    // The value of the variational problem at its maximizer is log Z.
    EXPECT_NEAR(r.expected_score - r.kl, r.log_partition, 1e-12);
    for (Index j = 0; j < m; ++j) {
      if (w[j] == 0) {
        EXPECT_EQ(r.probabilities[j], 0.0);
      }
    }
  }
}

TEST(maxent_test, gibbs_uniform_default_and_unnormalized_weights) {
  const VectorD g = (VectorD(4) << 1, -2, 0.5, 3).finished();
  const auto a = gibbs(g);
  const auto b = gibbs(g, VectorD(VectorD::Constant(4, 7.0)));
  EXPECT_LE((a.probabilities - b.probabilities).cwiseAbs().maxCoeff(), 1e-16);
  EXPECT_NEAR(a.log_partition, b.log_partition, 1e-15);
  EXPECT_NEAR(a.log_partition,
              std::log((std::exp(1.0) + std::exp(-2.0) + std::exp(0.5) + std::exp(3.0)) / 4),
              1e-14);
}

TEST(maxent_test, gibbs_is_stable_for_huge_scores) {
  const VectorD g = (VectorD(3) << 1e300, -1e300, 1e300 - 1e285).finished();
  const auto r = gibbs(g);
  EXPECT_TRUE(r.probabilities.allFinite());
  EXPECT_NEAR(r.probabilities[0], 1.0, 0);
  EXPECT_NEAR(r.log_partition, 1e300, 1e285);
  const VectorD h = (VectorD(3) << 800, 800, -800).finished();
  const auto s = gibbs(h);
  EXPECT_NEAR(s.probabilities[0], 0.5, 1e-15);
  EXPECT_NEAR(s.log_partition, 800 + std::log(2.0 / 3.0), 1e-12);
  EXPECT_NEAR(s.entropy, std::log(2.0), 1e-15);
}

TEST(maxent_test, duality_gap_is_kl_to_the_gibbs_measure_and_nonnegative) {
  std::mt19937_64 rng(2);
  std::exponential_distribution<double> expo;
  for (int trial = 0; trial < 300; ++trial) {
    const Index m = 2 + trial % 20;
    const VectorD g = random_scores(m, 2.0, rng);
    const VectorD w = random_weights(m, rng, trial % 3 == 0);
    VectorD nu(m);
    for (Index j = 0; j < m; ++j) nu[j] = w[j] > 0 ? expo(rng) : 0;
    if (trial % 4 == 0) nu[0] = 0;  // a candidate may leave atoms of mu empty
    if (nu.sum() == 0) nu[0] = w[0] > 0 ? 1 : 0;
    if (nu.sum() == 0) continue;
    nu /= nu.sum();
    const auto b = gibbs_bound(g, nu, w);
    const auto star = gibbs(g, w);
    EXPECT_LE(b.objective, b.log_partition + 1e-13);
    EXPECT_GE(b.gap, 0.0);
    EXPECT_NEAR(b.gap, kl(nu, star.probabilities), 1e-12);
    EXPECT_NEAR(b.gap, b.log_partition - b.objective, 1e-12);
    const auto at_star = gibbs_bound(g, star.probabilities, w);
    EXPECT_LE(at_star.gap, 1e-14);
  }
}

TEST(maxent_test, candidate_not_absolutely_continuous_is_an_error) {
  const VectorD g = (VectorD(3) << 0, 1, 2).finished();
  const VectorD w = (VectorD(3) << 0.5, 0.0, 0.5).finished();
  const VectorD nu = (VectorD(3) << 0.3, 0.4, 0.3).finished();
  try {
    (void)gibbs_bound(g, nu, w);
    FAIL() << "expected invalid_argument";
  } catch (const invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("candidate"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("atom 1"), std::string::npos);
  }
  EXPECT_THROW(gibbs(VectorD(0)), invalid_argument);
  EXPECT_THROW(gibbs(g, VectorD(VectorD::Zero(3))), invalid_argument);
  EXPECT_THROW(gibbs(g, (VectorD(3) << 1, -1, 1).finished()), invalid_argument);
  EXPECT_THROW(gibbs(g, VectorD(VectorD::Ones(2))), invalid_argument);
  EXPECT_THROW(gibbs((VectorD(2) << 0, NAN).finished()), invalid_argument);
}

// ---- Constrained maximum entropy --------------------------------------------

TEST(maxent_test, standard_attention_target_gives_beta_one) {
  std::mt19937_64 rng(3);
  for (int trial = 0; trial < 300; ++trial) {
    const Index m = 2 + trial % 50;
    const VectorD g = random_scores(m, 1.0 + trial % 4, rng);
    const VectorD w = random_weights(m, rng, trial % 2 == 0 && m > 3);
    const double c = gibbs(g, w).expected_score;
    const auto r = maxent(g, c, w);
    ASSERT_EQ(r.status, Status::converged) << r.message;
    EXPECT_NEAR(r.beta, 1.0, 1e-12) << "trial " << trial << " m=" << m;
    EXPECT_LE(r.iterations, 30) << r.message;  // doubling bracket + quadratic Newton
    EXPECT_LE(std::abs(r.residual), 1e-13 * (r.score_max - r.score_min));
    EXPECT_LE((r.probabilities - gibbs(g, w).probabilities).cwiseAbs().maxCoeff(), 1e-12);
  }
}

TEST(maxent_test, round_trip_over_many_betas) {
  std::mt19937_64 rng(4);
  for (int trial = 0; trial < 200; ++trial) {
    const Index m = 2 + trial % 30;
    const VectorD g = random_scores(m, 1.0, rng);
    const VectorD w = random_weights(m, rng, false);
    const double beta = std::uniform_real_distribution<double>(-30, 30)(rng);
    const auto fwd = maxent_at_beta(g, beta, w);
    if (!(fwd.expected_score > fwd.score_min && fwd.expected_score < fwd.score_max)) continue;
    const auto r = maxent(g, fwd.expected_score, w);
    ASSERT_EQ(r.status, Status::converged);
    // Forward error: the expected score meets the target to rounding.
    const double gscale = g.cwiseAbs().maxCoeff();
    EXPECT_LE(std::abs(r.residual), 8e-16 * gscale);
    // Backward error: dbeta = dc / Var, so beta is as accurate as the
    // rounding of c (a few ulp of max |g|) divided by the variance.
    const double dbeta = 1e-14 * std::abs(beta) + 8e-15 * gscale / fwd.variance;
    EXPECT_NEAR(r.beta, beta, dbeta) << "variance " << fwd.variance;
    // d log Z / d beta = E[g].
    EXPECT_NEAR(r.log_partition, fwd.log_partition,
                gscale * dbeta + 1e-13 * std::abs(fwd.log_partition));
  }
}

TEST(maxent_test, solution_has_smaller_kl_than_every_feasible_candidate) {
  std::mt19937_64 rng(5);
  for (int trial = 0; trial < 100; ++trial) {
    const Index m = 3 + trial % 15;
    const VectorD g = random_scores(m, 2.0, rng);
    const VectorD w = random_weights(m, rng, trial % 2 == 1);
    double lo = 1e300, hi = -1e300;
    for (Index j = 0; j < m; ++j)
      if (w[j] > 0) lo = std::min(lo, g[j]), hi = std::max(hi, g[j]);
    const double c = lo + (hi - lo) * std::uniform_real_distribution<double>(0.05, 0.95)(rng);
    const auto r = maxent(g, c, w);
    ASSERT_EQ(r.status, Status::converged);
    EXPECT_NEAR(kl(r.probabilities, w), r.kl, 1e-12);
    for (int k = 0; k < 50; ++k) {
      const VectorD nu = feasible_candidate(g, w, c, rng);
      ASSERT_NEAR(nu.dot(g), c, 1e-12);
      const double kl_nu = kl(nu, w);
      EXPECT_LE(r.kl, kl_nu + 1e-12);
      // Pythagorean identity of I-projections on a linear family:
      // KL(nu || mu) = KL(nu || nu_beta) + KL(nu_beta || mu).
      EXPECT_NEAR(kl_nu, kl(nu, r.probabilities) + r.kl, 1e-9);
    }
  }
}

TEST(maxent_test, uniform_reference_maximizes_shannon_entropy) {
  std::mt19937_64 rng(6);
  for (int trial = 0; trial < 50; ++trial) {
    const Index m = 3 + trial % 10;
    const VectorD g = random_scores(m, 1.0, rng);
    const VectorD w = VectorD::Constant(m, 1.0 / m);
    const double c = g.minCoeff() + (g.maxCoeff() - g.minCoeff()) * 0.3;
    const auto r = maxent(g, c);
    EXPECT_NEAR(r.entropy, std::log(double(m)) - r.kl, 1e-13);
    for (int k = 0; k < 50; ++k) {
      const VectorD nu = feasible_candidate(g, w, c, rng);
      EXPECT_GE(r.entropy, shannon(nu) - 1e-12);
    }
  }
}

TEST(maxent_test, targets_near_the_ends_give_large_beta_without_overflow) {
  const VectorD g = (VectorD(4) << -1, 0, 0.5, 2).finished();
  for (double delta : {1e-3, 1e-8, 1e-12, 1e-15}) {
    const auto up = maxent(g, 2 - delta);
    ASSERT_EQ(up.status, Status::converged) << up.message;
    EXPECT_TRUE(std::isfinite(up.beta) && up.beta > 0);
    EXPECT_TRUE(up.probabilities.allFinite());
    EXPECT_NEAR(up.expected_score, 2 - delta, 4e-16 * 2);
    // Leading order: (2 - c) = sum_{j != max} p_j (2 - g_j) ~ 1.5 e^{-1.5 beta}.
    if (delta <= 1e-8) {
      const double actual = 2 - (2 - delta);  // the target as rounded
      EXPECT_NEAR(up.beta, std::log(1.5 / actual) / 1.5, 3e-3);
    }
    const auto down = maxent(g, -1 + delta);
    ASSERT_EQ(down.status, Status::converged) << down.message;
    EXPECT_LT(down.beta, 0);
    EXPECT_NEAR(down.expected_score, -1 + delta, 4e-16);
  }
  // Scores of large magnitude: centering at the target keeps the accuracy.
  const VectorD big = (VectorD(3) << 1e8, 1e8 + 1, 1e8 + 3).finished();
  const auto r = maxent(big, 1e8 + 2.0);
  ASSERT_EQ(r.status, Status::converged);
  EXPECT_NEAR(r.expected_score, 1e8 + 2.0, 1e-7);
  const auto chk = maxent_at_beta(big, r.beta);
  EXPECT_NEAR(chk.expected_score, 1e8 + 2.0, 1e-7);
  EXPECT_TRUE(std::isfinite(r.log_partition));
}

TEST(maxent_test, infeasible_and_degenerate_targets) {
  const VectorD g = (VectorD(4) << -1, 0, 5, 2).finished();
  const VectorD w = (VectorD(4) << 1, 1, 0, 1).finished();  // max on supp is 2, not 5
  for (double c : {-1.0, 2.0, 3.0, -7.0, double(NAN)}) {
    try {
      (void)maxent(g, c, w);
      FAIL() << "target " << c << " should be infeasible";
    } catch (const invalid_argument& e) {
      const std::string what = e.what();
      EXPECT_EQ(what.rfind("target:", 0), 0u) << what;
      if (std::isfinite(c)) {
        EXPECT_NE(what.find("(-1, 2)"), std::string::npos) << what;
      }
    }
  }
  EXPECT_NO_THROW(maxent(g, 1.999, w));
  // Constant scores on the support: only that value, beta = 0, nu = mu.
  const VectorD k = (VectorD(3) << 4, 4, 9).finished();
  const VectorD wk = (VectorD(3) << 1, 3, 0).finished();
  const auto r = maxent(k, 4.0, wk);
  EXPECT_EQ(r.beta, 0.0);
  EXPECT_EQ(r.status, Status::converged);
  EXPECT_NEAR(r.probabilities[0], 0.25, 1e-16);
  EXPECT_EQ(r.probabilities[2], 0.0);
  EXPECT_NEAR(r.kl, 0.0, 1e-16);
  EXPECT_THROW(maxent(k, 4.1, wk), invalid_argument);
  MaxEntOptions bad;
  bad.max_iterations = 0;
  EXPECT_THROW(maxent(g, 0.5, w, bad), invalid_argument);
  bad = {};
  bad.beta_tolerance = -1;
  EXPECT_THROW(maxent(g, 0.5, w, bad), invalid_argument);
}

TEST(maxent_test, iteration_cap_is_a_status) {
  const VectorD g = (VectorD(3) << 0, 1, 2).finished();
  MaxEntOptions o;
  o.max_iterations = 1;
  const auto r = maxent(g, 1.9999, VectorD(), o);
  EXPECT_EQ(r.status, Status::iteration_limit);
  EXPECT_FALSE(r.message.empty());
  EXPECT_TRUE(r.probabilities.allFinite());
}

TEST(maxent_test, float_precision) {
  const VectorF g = (VectorF(5) << 0.1f, -2.f, 1.5f, 0.7f, 3.f).finished();
  const float c = gibbs(g).expected_score;
  const auto r = maxent(g, c);
  EXPECT_NEAR(r.beta, 1.0f, 1e-5f);
}

// ---- Sinkhorn attention -----------------------------------------------------

namespace {

// Dense log-domain Sinkhorn written independently from the library's streamed one.
MatrixD dense_sinkhorn(const MatrixD& logits, const VectorD& w, int iterations) {
  const Index n = logits.rows();
  VectorD lw = w.array().log().matrix();
  VectorD f(n), g = VectorD::Zero(n);
  auto lse = [](const Eigen::ArrayXd& x) {
    const double mx = x.maxCoeff();
    double s = 0;
    for (Index t = 0; t < x.size(); ++t) s += std::exp(x[t] - mx);
    return mx + std::log(s);
  };
  for (Index i = 0; i < n; ++i)
    f[i] = -lse(logits.row(i).transpose().array() + lw.array() + g.array());
  for (int it = 0; it < iterations; ++it) {
    for (Index j = 0; j < n; ++j) g[j] = -lse(logits.col(j).array() + lw.array() + f.array());
    for (Index i = 0; i < n; ++i)
      f[i] = -lse(logits.row(i).transpose().array() + lw.array() + g.array());
  }
  MatrixD k(n, n);
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < n; ++j) k(i, j) = std::exp(f[i] + logits(i, j) + lw[j] + g[j]);
  return k;
}

}  // namespace

TEST(maxent_test, zero_sinkhorn_iterations_is_softmax_bit_for_bit) {
  for (auto potential : {Potential::dot, Potential::l2}) {
    const auto model = Model<double>::random(6, 2, true, 7, potential);
    const auto mu = random_measure(40, 6, 8, 3);
    AttendOptions soft, sink;
    sink.normalization = Normalization::sinkhorn;
    sink.sinkhorn_iterations = 0;
    EXPECT_EQ(head_fields(model, mu, mu.atoms(), soft), head_fields(model, mu, mu.atoms(), sink));
    // attention_field may fuse W_O into the softmax pass: equal to rounding.
    const MatrixD f_soft = attention_field(model, mu, mu.atoms(), soft);
    const MatrixD f_sink = attention_field(model, mu, mu.atoms(), sink);
    EXPECT_LE((f_soft - f_sink).cwiseAbs().maxCoeff(), 1e-15 * f_soft.cwiseAbs().maxCoeff());
    EXPECT_EQ(attention_kernel(model, mu, mu.atoms(), 1, soft),
              attention_kernel(model, mu, mu.atoms(), 1, sink));
    // The streamed potentials at iteration 0 reproduce softmax too (to rounding).
    SinkhornAttentionOptions o;
    o.iterations = 0;
    const auto s = sinkhorn_attention(model, mu, 1, o);
    EXPECT_EQ(s.g, VectorD::Zero(mu.size()));
    const MatrixD logits = detail::dense_logits(model, mu, mu.atoms(), 1);
    const MatrixD soft_k = attention_kernel(model, mu, mu.atoms(), 1, soft);
    for (Index i = 0; i < mu.size(); ++i)
      for (Index j = 0; j < mu.size(); ++j)
        EXPECT_NEAR(mu.weight(j) * std::exp(s.f[i] + logits(i, j)), soft_k(i, j), 1e-15);
  }
}

TEST(maxent_test, sinkhorn_kernel_matches_dense_reference_and_marginals) {
  for (auto potential : {Potential::dot, Potential::l2}) {
    for (Index n : {1, 5, 37, 300}) {
      const auto model = Model<double>::random(4, 2, true, 10 + n, potential);
      const auto mu = random_measure(n, 4, static_cast<unsigned>(n));
      for (int iters : {1, 3, 20}) {
        AttendOptions o;
        o.normalization = Normalization::sinkhorn;
        o.sinkhorn_iterations = iters;
        for (Index h = 0; h < 2; ++h) {
          const MatrixD k = attention_kernel(model, mu, mu.atoms(), h, o);
          const MatrixD ref =
              dense_sinkhorn(detail::dense_logits(model, mu, mu.atoms(), h), mu.weights(), iters);
          ASSERT_LE((k - ref).cwiseAbs().maxCoeff(), 1e-12) << "n=" << n << " iters=" << iters;
          // Rows sum to one after every iteration.
          EXPECT_LE((k.rowwise().sum().array() - 1).abs().maxCoeff(), 1e-13);
        }
        // Fields = kernel times values, per head.
        const MatrixD fields = head_fields(model, mu, mu.atoms(), o);
        const Index kd = model.head_dim();
        for (Index h = 0; h < 2; ++h) {
          const MatrixD v =
              (mu.atoms() * model.head(h).v.transpose()).rowwise() + model.head(h).b_v.transpose();
          const MatrixD expect = attention_kernel(model, mu, mu.atoms(), h, o) * v;
          EXPECT_LE((fields.middleCols(h * kd, kd) - expect).cwiseAbs().maxCoeff(), 1e-12);
        }
      }
    }
  }
}

TEST(maxent_test, sinkhorn_converges_to_doubly_stochastic) {
  const auto model = Model<double>::random(8, 1, true, 21);
  const auto mu = random_measure(120, 8, 22);
  double previous = 1e300;
  for (int iters : {0, 1, 2, 5, 10, 50, 200}) {
    SinkhornAttentionOptions o;
    o.iterations = iters;
    const auto s = sinkhorn_attention(model, mu, 0, o);
    EXPECT_EQ(s.iterations, iters);
    EXPECT_EQ(s.status, Status::iteration_limit);
    EXPECT_LE(s.column_error, previous * (1 + 1e-9) + 1e-15) << iters;
    previous = s.column_error;
    AttendOptions a;
    a.normalization = Normalization::sinkhorn;
    a.sinkhorn_iterations = iters;
    const MatrixD k = attention_kernel(model, mu, mu.atoms(), 0, a);
    const VectorD col = k.transpose() * mu.weights();  // sum_i w_i K_ij
    EXPECT_NEAR((col - mu.weights()).cwiseAbs().sum(), s.column_error, 1e-12);
  }
  EXPECT_LE(previous, 1e-12);
  SinkhornAttentionOptions tol;
  tol.iterations = 10000;
  tol.tolerance = 1e-10;
  const auto s = sinkhorn_attention(model, mu, 0, tol);
  EXPECT_EQ(s.status, Status::converged);
  EXPECT_LE(s.column_error, 1e-10);
  EXPECT_LT(s.iterations, 10000);
}

TEST(maxent_test, sinkhorn_with_zero_weights_and_extreme_logits) {
  // Zero-weight atoms get zero columns; their rows use the same potential g.
  const auto model = Model<double>::random(5, 1, true, 31);
  const auto mu = random_measure(30, 5, 32, 3);
  AttendOptions o;
  o.normalization = Normalization::sinkhorn;
  o.sinkhorn_iterations = 100;
  const MatrixD k = attention_kernel(model, mu, mu.atoms(), 0, o);
  EXPECT_LE((k.rowwise().sum().array() - 1).abs().maxCoeff(), 1e-13);
  const VectorD col = k.transpose() * mu.weights();
  EXPECT_LE((col - mu.weights()).cwiseAbs().sum(), 1e-8);
  for (Index j = 0; j < mu.size(); ++j)
    if (mu.weight(j) == 0) {
      EXPECT_EQ(k.col(j).cwiseAbs().maxCoeff(), 0.0);
    }
  // Logits of order 1e4: log-domain scaling stays finite.
  const auto hot = Model<double>::canonical(3, 3000.0);
  const auto nu = random_measure(20, 3, 33);
  const MatrixD kh = attention_kernel(hot, nu, nu.atoms(), 0, o);
  EXPECT_TRUE(kh.allFinite());
  EXPECT_LE((kh.rowwise().sum().array() - 1).abs().maxCoeff(), 1e-12);
  EXPECT_TRUE(attention_field(hot, nu, nu.atoms(), o).allFinite());
  // Sinkhorn is self-attention only and not causal.
  AttendOptions causal = o;
  causal.causal = true;
  EXPECT_THROW(attention_kernel(model, mu, mu.atoms(), 0, causal), invalid_argument);
  const MatrixD other = mu.atoms().topRows(3);
  EXPECT_THROW(attention_field(model, mu, other, o), invalid_argument);
}

TEST(maxent_test, sinkhorn_results_do_not_depend_on_threads_or_blocks) {
  const auto model = Model<double>::random(6, 2, false, 41);
  const auto mu = random_measure(700, 6, 42);
  AttendOptions o;
  o.normalization = Normalization::sinkhorn;
  o.sinkhorn_iterations = 5;
  omp_set_num_threads(1);
  const MatrixD one = attention_field(model, mu, mu.atoms(), o);
  omp_set_num_threads(2);
  const MatrixD two = attention_field(model, mu, mu.atoms(), o);
  EXPECT_EQ(one, two);
  o.key_block = 33;
  const MatrixD blocked = attention_field(model, mu, mu.atoms(), o);
  EXPECT_LE((blocked - one).cwiseAbs().maxCoeff(), 1e-12);
}

// ---- Entropy diagnostics ----------------------------------------------------

TEST(maxent_test, entropy_matches_dense_kernel_rows) {
  for (auto potential : {Potential::dot, Potential::l2}) {
    for (bool causal : {false, true}) {
      for (Index n : {1, 9, 150}) {
        const auto model = Model<double>::random(6, 3, true, 50 + n, potential);
        const auto mu = random_measure(n, 6, static_cast<unsigned>(60 + n), causal ? 0 : 3);
        EntropyOptions eo;
        eo.causal = causal;
        eo.betas = {-3.0, 0.0, 0.5, 1.0, 4.0};
        for (Index qb : {0, 7}) {
          for (Index kb : {0, 5}) {
            eo.query_block = qb;
            eo.key_block = kb;
            const auto r = attention_entropy(model, mu, eo);
            ASSERT_EQ(r.heads.size(), 3u);
            for (Index h = 0; h < 3; ++h) {
              AttendOptions ao;
              ao.causal = causal;
              const MatrixD k = attention_kernel(model, mu, mu.atoms(), h, ao);
              const MatrixD logits = detail::dense_logits(model, mu, mu.atoms(), h);
              const auto& he = r.heads[static_cast<size_t>(h)];
              double mean = 0;
              for (Index i = 0; i < n; ++i) {
                const VectorD row = k.row(i).transpose();
                EXPECT_NEAR(he.entropy[i], shannon(row), 1e-12);
                EXPECT_NEAR(he.effective_tokens[i], std::exp(shannon(row)), 1e-10);
                EXPECT_NEAR(he.expected_score[i], row.dot(logits.row(i).transpose()), 1e-12);
                mean += mu.weight(i) * shannon(row);
              }
              EXPECT_NEAR(he.mean_entropy, mean, 1e-12);
              // Temperature curve against maxent_at_beta on each row.
              for (size_t b = 0; b < eo.betas.size(); ++b) {
                double hb = 0, eb = 0;
                for (Index i = 0; i < n; ++i) {
                  VectorD g = logits.row(i).transpose();
                  VectorD w = mu.weights();
                  if (causal) w.tail(n - i - 1).setZero();
                  const auto at = maxent_at_beta(g, eo.betas[b], w);
                  hb += mu.weight(i) * at.entropy;
                  eb += mu.weight(i) * at.expected_score;
                }
                EXPECT_NEAR(he.curve_entropy[static_cast<Index>(b)], hb, 1e-11);
                EXPECT_NEAR(he.curve_expected_score[static_cast<Index>(b)], eb, 1e-11);
              }
            }
          }
        }
      }
    }
  }
}

TEST(maxent_test, entropy_default_grid_and_extremes) {
  const auto grid = default_temperature_grid();
  ASSERT_EQ(grid.size(), 35u);
  EXPECT_TRUE(std::is_sorted(grid.begin(), grid.end()));
  EXPECT_EQ(grid[17], 0.0);
  EXPECT_EQ(grid[26], 1.0);
  EXPECT_EQ(grid[34], 100.0);
  // Uniform measure, beta = 0: entropy log n exactly; huge logits stay finite.
  const auto hot = Model<double>::canonical(3, 1e4);
  const auto mu = MeasureD::empirical(random_measure(50, 3, 70).atoms());
  const auto r = attention_entropy(hot, mu);
  const auto& he = r.heads[0];
  EXPECT_NEAR(he.curve_entropy[17], std::log(50.0), 1e-13);
  EXPECT_TRUE(he.entropy.allFinite());
  EXPECT_GE(he.min_entropy, 0.0);
  EXPECT_LE(he.max_entropy, std::log(50.0) + 1e-12);
  // Entropy decreases along positive beta (dH/dbeta = -beta Var <= 0 per row).
  for (Index b = 18; b < 34; ++b) EXPECT_LE(he.curve_entropy[b + 1], he.curve_entropy[b] + 1e-12);
  EntropyOptions bad;
  bad.betas = {1.0, INFINITY};
  EXPECT_THROW(attention_entropy(hot, mu, bad), invalid_argument);
}

TEST(maxent_test, gibbs_of_opposite_extreme_scores_is_finite) {
  VectorD g(3);
  g << 1e308, -1e308, 0;
  const auto r = gibbs<double>(g, VectorD());
  EXPECT_EQ(r.entropy, 0);
  EXPECT_NEAR(r.kl, std::log(3.0), 1e-15);
  EXPECT_EQ(r.probabilities[0], 1);
  EXPECT_EQ(r.probabilities[1], 0);
}
