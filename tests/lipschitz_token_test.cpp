// Token-level Lipschitz constants: the Krylov local constant against dense
// Jacobians (random layers, Castin's clustered cases) to 1e-10, its certificate,
// the proved bound on B_R^n never beaten by the search, the sweep over n.
// GCC 12 false positive inside its AVX-512 intrinsics when Eigen kernels are inlined.
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <gtest/gtest.h>
#include <omp.h>

#include <Eigen/SVD>
#include <cmath>
#include <random>

#include "lipschitz/token.hpp"
#include "measattn/attention.hpp"
#include "measattn/error.hpp"
#include "measattn/lipschitz.hpp"

using namespace measattn;

namespace {

MatrixD gauss(std::mt19937_64& rng, Index r, Index c, double s = 1.0) {
  std::normal_distribution<double> nd(0.0, s);
  MatrixD m(r, c);
  for (Index i = 0; i < r; ++i)
    for (Index j = 0; j < c; ++j) m(i, j) = nd(rng);
  return m;
}

MatrixD in_ball(std::mt19937_64& rng, Index n, Index d, double radius) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  MatrixD x = gauss(rng, n, d);
  for (Index i = 0; i < n; ++i) {
    const double t = u(rng) < 0.3 ? 1.0 : std::pow(u(rng), 1.0 / static_cast<double>(d));
    x.row(i) *= radius * t / std::max(x.row(i).norm(), 1e-300);
  }
  return x;
}

double dense_spectral(const MatrixD& j) { return Eigen::JacobiSVD<MatrixD>(j).singularValues()[0]; }

/// One head in R^d with A = Q^T K / tau = a (Q = I, K = a, tau = 1), V = W_O = I.
Model<double> layer_with(const MatrixD& a) {
  const Index d = a.rows();
  Model<double> m;
  m.scale = 1;
  m.w_q = MatrixD::Identity(d, d);
  m.w_k = a;
  m.w_v = MatrixD::Identity(d, d);
  m.w_o = MatrixD::Identity(d, d);
  return m;
}

Model<double> random_layer(std::mt19937_64& rng, Index d, Index heads, bool bias, double s) {
  Model<double> m = Model<double>::random(d, heads, bias, rng());
  m.w_q *= s;
  m.w_k *= s;
  return m;
}

}  // namespace

TEST(lipschitz_token_test, castin_clustered_case_to_full_precision) {
  // A = diag(1, -0.2), V = I, R = 6, n = 2: the top two singular values are close.
  MatrixD a = MatrixD::Zero(2, 2);
  a(0, 0) = 1;
  a(1, 1) = -0.2;
  const Model<double> m = layer_with(a);
  const MatrixD x = castin_adversarial_tokens(m, 2, 6.0);
  const double ref = dense_spectral(token_jacobian(m, x));
  EXPECT_NEAR(ref, 1.41491, 1e-5);
  const TokenJacobianResult r = token_jacobian_norm(m, x);
  EXPECT_EQ(r.status, Status::converged) << r.message;
  EXPECT_TRUE(r.converged);
  EXPECT_EQ(r.method, "lanczos");
  EXPECT_NEAR(r.value, ref, 1e-10 * ref);
  EXPECT_LE(r.lower, ref * (1 + 1e-14));
  EXPECT_GE(r.upper, ref * (1 - 1e-14));
  EXPECT_LE(r.residual, 1e-10 * r.value * r.value);
}

TEST(lipschitz_token_test, castin_sequences_against_dense_jacobians) {
  // Both signs, several R and n: clustered top singular values.
  for (double lam : {1.0, -1.0}) {
    MatrixD a = MatrixD::Zero(2, 2);
    a(0, 0) = lam;
    a(1, 1) = -0.2 * lam;
    const Model<double> m = layer_with(a);
    for (double radius : {0.5, 1.0, 3.0, 6.0})
      for (Index n : {2, 3, 10, 40, 100}) {
        const MatrixD x = castin_adversarial_tokens(m, n, radius);
        const double ref = dense_spectral(token_jacobian(m, x));
        const TokenJacobianResult r = token_jacobian_norm(m, x);
        EXPECT_TRUE(r.converged) << r.message << " R=" << radius << " n=" << n;
        EXPECT_NEAR(r.value, ref, 1e-10 * ref) << "R=" << radius << " n=" << n;
        EXPECT_GE(r.upper, ref * (1 - 1e-12));
      }
  }
}

TEST(lipschitz_token_test, random_layers_against_dense_jacobians) {
  std::mt19937_64 rng(21);
  for (int t = 0; t < 40; ++t) {
    const Index d = 1 + t % 4, n = 1 + t % 7, heads = 1 + t % 2;
    const bool residual = t % 3 == 0, bias = t % 2 == 1;
    const Model<double> m = random_layer(rng, 2 * d, heads, bias, 1.0 + 0.5 * (t % 3));
    const MatrixD x = in_ball(rng, n, 2 * d, 1.0 + t % 4);
    const double ref = dense_spectral(token_jacobian(m, x, residual));
    TokenJacobianOptions o;
    o.residual = residual;
    o.seed = static_cast<std::uint64_t>(t);
    const TokenJacobianResult r = token_jacobian_norm(m, x, o);
    EXPECT_TRUE(r.converged) << r.message;
    EXPECT_NEAR(r.value, ref, 1e-10 * ref) << "t=" << t;
    EXPECT_LE(r.lower, ref * (1 + 1e-13));
    EXPECT_GE(r.upper, ref * (1 - 1e-12));
  }
}

TEST(lipschitz_token_test, iteration_cap_is_reported) {
  std::mt19937_64 rng(4);
  const Model<double> m = random_layer(rng, 4, 2, true, 1.0);
  const MatrixD x = in_ball(rng, 30, 4, 2.0);
  TokenJacobianOptions o;
  o.iterations = 1;
  o.tolerance = 1e-300;
  const TokenJacobianResult r = token_jacobian_norm(m, x, o);
  EXPECT_EQ(r.status, Status::iteration_limit);
  EXPECT_FALSE(r.converged);
  EXPECT_NE(r.message.find("iteration cap"), std::string::npos);
  EXPECT_GT(r.value, 0);
  EXPECT_LE(r.value, dense_spectral(token_jacobian(m, x)) * (1 + 1e-13));
}

TEST(lipschitz_token_test, ball_bound_is_never_beaten) {
  // Thousands of random layers (heads, biases, residual, scales) and inputs in
  // B_R^n: neither random inputs nor the search beat token_ball_l2.
  std::mt19937_64 rng(2024);
  int checked = 0;
  for (int t = 0; t < 400; ++t) {
    const Index d = 2 + t % 3, heads = 1 + t % 2, n = 1 + t % 6;
    const bool residual = t % 4 == 1, bias = t % 3 != 0;
    const double radius = 0.25 * (1 + t % 12);
    Model<double> m = random_layer(rng, 2 * d, heads, bias, 0.5 + 0.25 * (t % 5));
    m.w_v *= 0.5 + (t % 7);
    if (bias) m.b_q = gauss(rng, m.embed_dim(), 1).col(0);
    const double bound = token_ball_upper_bound(m, radius, n, residual).value;
    UpperBoundOptions uo;
    uo.radius = radius;
    uo.tokens = n;
    uo.residual = residual;
    EXPECT_DOUBLE_EQ(lipschitz_upper_bounds(m, uo).get("token_ball_l2"), bound);
    for (int s = 0; s < 8; ++s) {
      const MatrixD x = in_ball(rng, n, 2 * d, radius);
      const double local = dense_spectral(token_jacobian(m, x, residual));
      EXPECT_LE(local, bound * (1 + 1e-12)) << "t=" << t;
      ++checked;
    }
    if (t % 8 == 0) {
      TokenSearchOptions o;
      o.tokens = n;
      o.radius = radius;
      o.restarts = 4;
      o.steps = 15;
      o.residual = residual;
      o.seed = static_cast<std::uint64_t>(t);
      const TokenSearchResult r = token_lipschitz_lower_bound(m, o);
      EXPECT_LE(r.value, bound * (1 + 1e-12)) << "t=" << t;
      ++checked;
    }
  }
  EXPECT_GT(checked, 3000);
}

TEST(lipschitz_token_test, ball_bound_saturates_in_n) {
  // sqrt(n) growth while n < e^{2 R rho}, then independent of n.
  std::mt19937_64 rng(5);
  const Model<double> m = random_layer(rng, 4, 2, false, 1.0);
  const TokenBallBound small = token_ball_upper_bound(m, 0.3, 1);
  const TokenBallBound big = token_ball_upper_bound(m, 0.3, 100000);
  const TokenBallBound bigger = token_ball_upper_bound(m, 0.3, 1000000);
  EXPECT_TRUE(big.mean_field);
  EXPECT_DOUBLE_EQ(big.value, bigger.value);
  EXPECT_LT(small.value, big.value);
  const TokenBallBound hard1 = token_ball_upper_bound(m, 30, 100),
                       hard4 = token_ball_upper_bound(m, 30, 400);
  EXPECT_FALSE(hard4.mean_field);
  EXPECT_GT(hard4.value / hard1.value, 1.9);  // ~ sqrt(4) once the sqrt(n) term dominates
  EXPECT_THROW(token_ball_upper_bound(m, 0, 4), invalid_argument);
  EXPECT_THROW(token_ball_upper_bound(m, 1, 0), invalid_argument);
}

TEST(lipschitz_token_test, dense_products_path_matches_dual_numbers) {
  // n >= 256 with the dot potential takes the blocked dense products: the same
  // constant as Lanczos on the dual-number products (checked through the
  // bracket of an explicit JVP), whatever the thread count.
  std::mt19937_64 rng(8);
  const Model<double> m = random_layer(rng, 8, 2, true, 1.0);
  const MatrixD x = in_ball(rng, 300, 8, 2.0);
  const TokenJacobianResult r = token_jacobian_norm(m, x);
  EXPECT_TRUE(r.converged) << r.message;
  // The blocked products against the dual-number ones, both residual modes.
  for (bool residual : {false, true}) {
    const detail::LayerParams p = detail::LayerParams::from(m, residual);
    ASSERT_TRUE(detail::DotProducts::applies(p));
    const detail::DotProducts fast(p, x);
    const MatrixD v = gauss(rng, 300, 8), g = gauss(rng, 300, 8);
    const MatrixD jv = token_jvp(m, x, v, residual), jtg = token_vjp(m, x, g, residual);
    EXPECT_LT((fast.jvp(v) - jv).norm(), 1e-12 * jv.norm());
    EXPECT_LT((fast.vjp(g) - jtg).norm(), 1e-12 * jtg.norm());
  }
  // The bracket holds against a direction's Rayleigh quotient.
  EXPECT_GE(r.value * (1 + 1e-12), token_jvp(m, x, x / x.norm()).norm());
  omp_set_num_threads(1);
  const TokenJacobianResult one = token_jacobian_norm(m, x);
  omp_set_num_threads(2);
  const TokenJacobianResult two = token_jacobian_norm(m, x);
  EXPECT_EQ(one.value, two.value);
  EXPECT_EQ(one.residual, two.residual);
}
