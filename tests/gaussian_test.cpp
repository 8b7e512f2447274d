// Tests of the Gaussian closed forms (docs/theory.md#gaussian): the particle
// solver on weighted Gauss–Hermite atoms converges to the closed-form attention
// (dot, l2, several heads, biases, residual, Sinkhorn), Monte Carlo samples
// converge at their n^{-1/2} rate, the ODE flow matches the particle flow and the
// 1-D closed form, Bures W2 against known cases and the particle W2, bad input.
#include <gtest/gtest.h>

#include <Eigen/Cholesky>
#include <Eigen/Eigenvalues>

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "measattn/attention.hpp"
#include "measattn/error.hpp"
#include "measattn/flow.hpp"
#include "measattn/gaussian.hpp"
#include "measattn/wasserstein.hpp"

namespace measattn {
namespace {

using G = GaussianMeasure<double>;

MatrixD random_cov(Index d, unsigned seed, double scale) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0, 1);
  MatrixD a(d, d);
  for (Index i = 0; i < d; ++i)
    for (Index j = 0; j < d; ++j) a(i, j) = normal(rng);
  MatrixD s = scale * (a * a.transpose()) / static_cast<double>(d);
  s.diagonal().array() += 0.1 * scale;
  return s;
}

G random_gaussian(Index d, unsigned seed, double scale = 0.5) {
  std::mt19937_64 rng(seed + 100);
  std::normal_distribution<double> normal(0, 0.5);
  VectorD m(d);
  for (Index i = 0; i < d; ++i) m[i] = normal(rng);
  return G(m, random_cov(d, seed, scale));
}

/// max(|mean difference|_inf, |cov difference|_inf).
double distance(const G& a, const G& b) {
  return std::max((a.mean() - b.mean()).cwiseAbs().maxCoeff(),
                  (a.cov() - b.cov()).cwiseAbs().maxCoeff());
}

/// The particle solver's F(mu) on mu = Gauss–Hermite atoms of g, as moments.
G particle_attention(const Model<double>& model, const G& g, Index points,
                     const AttendOptions& options = {}) {
  const MeasureD mu = gauss_hermite_measure(g, points);
  return gaussian_moments(self_attention(model, mu, options));
}

void expect_invalid(const std::function<void()>& f, const std::string& start) {
  try {
    f();
    ADD_FAILURE() << "no exception, expected " << start;
  } catch (const invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()).rfind(start, 0), 0u) << e.what();
  }
}

TEST(gaussian_test, measure_validates_every_field) {
  const VectorD m = VectorD::Zero(2);
  expect_invalid([&] { G(VectorD(), MatrixD()); }, "mean: empty");
  expect_invalid([&] { G(VectorD::Constant(2, NAN), MatrixD::Identity(2, 2)); }, "mean:");
  expect_invalid([&] { G(m, MatrixD::Identity(3, 3)); }, "cov: shape 3 x 3, expected 2 x 2");
  MatrixD bad = MatrixD::Identity(2, 2);
  bad(0, 1) = 0.5;
  expect_invalid([&] { G(m, bad); }, "cov: not symmetric");
  bad(1, 0) = 0.5;
  bad(0, 0) = -1;
  expect_invalid([&] { G(m, bad); }, "cov: not positive semi-definite");
  bad(0, 0) = INFINITY;
  expect_invalid([&] { G(m, bad); }, "cov: an entry is NaN or infinite");
  // A singular covariance is a (degenerate) Gaussian.
  MatrixD singular(2, 2);
  singular << 1, 1, 1, 1;
  EXPECT_EQ(G(m, singular).dim(), 2);
}

TEST(gaussian_test, refuses_what_is_not_a_tilt) {
  const G g = random_gaussian(2, 1);
  Model<double> model = Model<double>::random(2, 1, true, 3, Potential::cosine);
  expect_invalid([&] { gaussian_attention(model, g); }, "potential: the Gaussian closed form");
  model = Model<double>::random(3, 1, true, 3);
  expect_invalid([&] { gaussian_attention(model, g); }, "mean: dimension 2 differs");
  GaussianFlowOptions o;
  o.time = -1;
  expect_invalid([&] { gaussian_flow(Model<double>::random(2, 1, true, 3), g, o); }, "time:");
  o.time = 1;
  o.tolerance = 0;
  expect_invalid([&] { gaussian_flow(Model<double>::random(2, 1, true, 3), g, o); }, "tolerance:");
  expect_invalid([&] { gaussian_w2(g, random_gaussian(3, 1)); }, "b: dimension 3");
  expect_invalid([&] { gauss_hermite_measure(g, 0); }, "points: must be >= 1");
}

// Canonical model in 1-D: Gamma(x) = m + beta s x, so F(mu) = N((1 + beta s) m, (beta s)^2 s).
TEST(gaussian_test, canonical_one_dimensional) {
  const double beta = 0.7, m0 = 0.3, s0 = 0.4;
  const G g(VectorD::Constant(1, m0), MatrixD::Constant(1, 1, s0));
  const G out = gaussian_attention(Model<double>::canonical(1, beta), g);
  EXPECT_NEAR(out.mean()[0], (1 + beta * s0) * m0, 1e-15);
  EXPECT_NEAR(out.cov()(0, 0), beta * beta * s0 * s0 * s0, 1e-15);
}

struct Case {
  Index dim, heads;
  Potential potential;
  bool residual;
};

// Error of the Gauss–Hermite particle solver against the closed form, falling
// below 1e-6 as the number of atoms grows (dot and l2, biases, several heads).
TEST(gaussian_test, gauss_hermite_atoms_converge_to_the_closed_form) {
  const std::vector<Case> cases = {{1, 1, Potential::dot, false}, {2, 2, Potential::dot, true},
                                   {3, 1, Potential::dot, false}, {1, 1, Potential::l2, false},
                                   {2, 2, Potential::l2, false},  {3, 3, Potential::l2, true}};
  for (const Case& c : cases) {
    const Model<double> model = Model<double>::random(c.dim, c.heads, true, 7, c.potential);
    const G g = random_gaussian(c.dim, 11);
    GaussianAttentionOptions go;
    go.residual = c.residual;
    AttendOptions ao;
    ao.residual = c.residual;
    const G exact = gaussian_attention(model, g, go);
    double previous = INFINITY, best = INFINITY;
    for (Index points : {2, 4, 8, 16}) {
      const double err = distance(particle_attention(model, g, points, ao), exact);
      std::printf("d=%ld heads=%ld %s points=%ld atoms=%ld error=%.3e\n", long(c.dim),
                  long(c.heads), to_string(c.potential).c_str(), long(points),
                  long(std::pow(points, c.dim)), err);
      if (points >= 4) {
        EXPECT_LT(err, previous * 1.01 + 1e-13);
      }
      previous = err;
      best = std::min(best, err);
    }
    EXPECT_LT(best, 1e-6) << c.dim << " " << to_string(c.potential);
  }
}

// A covariance of rank 1 in R^2: the closed form still holds (the atoms lie on a line).
TEST(gaussian_test, degenerate_covariance) {
  MatrixD s(2, 2);
  s << 0.5, 0.25, 0.25, 0.125;
  const G g(VectorD::Constant(2, 0.2), s);
  for (Normalization n : {Normalization::softmax, Normalization::sinkhorn}) {
    const Model<double> model = Model<double>::random(2, 1, true, 5);
    GaussianAttentionOptions go;
    go.normalization = n;
    AttendOptions ao;
    ao.normalization = n;
    ao.sinkhorn_iterations = n == Normalization::sinkhorn ? 300 : 0;
    EXPECT_LT(distance(particle_attention(model, g, 16, ao), gaussian_attention(model, g, go)),
              1e-8);
  }
}

// Sinkhorn attention: converged particle Sinkhorn on Gauss–Hermite atoms against the
// conditional mean of the Gaussian entropic plan.
TEST(gaussian_test, sinkhorn_gauss_hermite_converges) {
  const std::vector<Case> cases = {
      {1, 1, Potential::dot, false}, {2, 2, Potential::dot, false}, {2, 1, Potential::l2, true}};
  for (const Case& c : cases) {
    const Model<double> model = Model<double>::random(c.dim, c.heads, true, 9, c.potential);
    const G g = random_gaussian(c.dim, 13);
    GaussianAttentionOptions go;
    go.normalization = Normalization::sinkhorn;
    go.residual = c.residual;
    AttendOptions ao;
    ao.normalization = Normalization::sinkhorn;
    ao.sinkhorn_iterations = 300;
    ao.residual = c.residual;
    const G exact = gaussian_attention(model, g, go);
    double best = INFINITY;
    for (Index points : {2, 4, 8, 16}) {
      const double err = distance(particle_attention(model, g, points, ao), exact);
      std::printf("sinkhorn d=%ld heads=%ld %s points=%ld error=%.3e\n", long(c.dim), long(c.heads),
                  to_string(c.potential).c_str(), long(points), err);
      best = std::min(best, err);
    }
    EXPECT_LT(best, 1e-6);
    // Softmax and Sinkhorn differ on a Gaussian (the columns are renormalized).
    EXPECT_GT(distance(exact, gaussian_attention(model, g)), 1e-3);
  }
}

// Monte Carlo: samples of N(m, Sigma) give errors ~ n^{-1/2}. The RMS error over
// 32 independent seeds at n = 100, 400, 1600: the least-squares slope of log error
// against log n must lie in [-0.75, -0.3] (-0.5 expected; observed -0.5 to -0.6), and
// sqrt(n) times the error at n = 1600 below 2 (observed 0.2 to 0.4).
// The rate needs a mild tilt: the self-normalized estimate of the kernel at query x
// has variance ~ exp(|Sigma^{1/2} a(x)|^2) / n, and its average over x is finite only
// for small enough Sigma (with a wide Sigma the error decays visibly slower).
TEST(gaussian_test, monte_carlo_rate) {
  const Model<double> model = Model<double>::random(2, 2, true, 21);
  const G g = random_gaussian(2, 23, 0.2);
  const G exact = gaussian_attention(model, g);
  const MatrixD root = g.cov().llt().matrixL();
  constexpr unsigned kSeeds = 32;
  auto rms_error = [&](Index n) {
    double total = 0;
    for (unsigned seed = 0; seed < kSeeds; ++seed) {
      std::mt19937_64 rng(7919 * static_cast<unsigned long long>(n) + seed);
      std::normal_distribution<double> normal(0, 1);
      MatrixD x(n, 2);
      for (Index i = 0; i < n; ++i) {
        VectorD z(2);
        z << normal(rng), normal(rng);
        x.row(i) = (g.mean() + root * z).transpose();
      }
      const double e =
          distance(gaussian_moments(self_attention(model, MeasureD::empirical(x))), exact);
      total += e * e;
    }
    return std::sqrt(total / kSeeds);
  };
  const std::vector<Index> sizes = {100, 400, 1600};
  std::vector<double> lx, ly;
  for (Index n : sizes) {
    const double e = rms_error(n);
    std::printf("Monte Carlo RMS error n=%ld: %.3e (sqrt(n) error %.3f)\n", long(n), e,
                e * std::sqrt(static_cast<double>(n)));
    lx.push_back(std::log(static_cast<double>(n)));
    ly.push_back(std::log(e));
  }
  const double mx = (lx[0] + lx[1] + lx[2]) / 3, my = (ly[0] + ly[1] + ly[2]) / 3;
  double sxy = 0, sxx = 0;
  for (int i = 0; i < 3; ++i) {
    sxy += (lx[i] - mx) * (ly[i] - my);
    sxx += (lx[i] - mx) * (lx[i] - mx);
  }
  const double slope = sxy / sxx;
  std::printf("Monte Carlo slope %.3f (-0.5 expected)\n", slope);
  EXPECT_GT(slope, -0.75);
  EXPECT_LT(slope, -0.3);
  EXPECT_LT(std::exp(ly[2]) * std::sqrt(1600.0), 2.0);
}

// dx/dt = Gamma(x) for the canonical model in 1-D: s' = 2 beta s^2, m' = (1 + beta s) m:
// s(t) = s0 / (1 - 2 beta s0 t), m(t) = m0 e^t / sqrt(1 - 2 beta s0 t).
TEST(gaussian_test, flow_canonical_closed_form) {
  const double beta = 0.5, m0 = 0.3, s0 = 0.4, T = 1.5;
  const G g(VectorD::Constant(1, m0), MatrixD::Constant(1, 1, s0));
  GaussianFlowOptions o;
  o.time = T;
  o.tolerance = 1e-12;
  const auto r = gaussian_flow(Model<double>::canonical(1, beta), g, o);
  ASSERT_EQ(r.status, Status::completed) << r.message;
  const double q = 1 - 2 * beta * s0 * T;
  EXPECT_NEAR(r.measure.cov()(0, 0), s0 / q, 1e-10);
  EXPECT_NEAR(r.measure.mean()[0], m0 * std::exp(T) / std::sqrt(q), 1e-10);
  EXPECT_GT(r.steps, 0);
  EXPECT_LT(r.error_estimate, 1e-9);
  std::printf("canonical flow: %ld steps, %ld rejected, error estimate %.2e\n", long(r.steps),
              long(r.rejected), r.error_estimate);
  // Past the blow-up time 1 / (2 beta s0) = 2.5 the step underflows: reported, not NaN.
  o.time = 3;
  const auto blow = gaussian_flow(Model<double>::canonical(1, beta), g, o);
  EXPECT_EQ(blow.status, Status::step_size_underflow) << blow.message;
  EXPECT_LT(blow.time, 2.5);
  EXPECT_TRUE(blow.measure.cov().allFinite());
}

// The ODE for (m, Sigma) against the particle flow on Gauss–Hermite atoms. (The
// quadrature error grows with the covariance: these models spread mu fast, and by
// t = 1 sixteen points per axis are no longer enough for 1e-7 in d = 2.)
TEST(gaussian_test, flow_matches_the_particle_flow) {
  for (Potential p : {Potential::dot, Potential::l2}) {
    for (Index d : {1, 2}) {
      const Model<double> model = Model<double>::random(d, d, true, 31, p);
      const G g = random_gaussian(d, 33, 0.3);
      GaussianFlowOptions go;
      go.time = 0.5;
      go.tolerance = 1e-12;
      const auto ode = gaussian_flow(model, g, go);
      ASSERT_EQ(ode.status, Status::completed);
      FlowOptions fo;
      fo.time = 0.5;
      fo.scheme = FlowScheme::dopri5;
      fo.tolerance = 1e-11;
      const MeasureD mu = gauss_hermite_measure(g, d == 1 ? 24 : 16);
      const auto particles = flow(model, mu, fo);
      const double err =
          distance(gaussian_moments(MeasureD(particles.particles, particles.weights)), ode.measure);
      std::printf("flow %s d=%ld: ODE %ld steps, error vs particles %.3e\n", to_string(p).c_str(),
                  long(d), long(ode.steps), err);
      EXPECT_LT(err, 1e-7);
    }
  }
}

// Tolerance control: a loose run is within a small multiple of its tolerance of a
// tight one; Sigma stays symmetric positive semi-definite.
TEST(gaussian_test, flow_tolerance_and_positive_definiteness) {
  const Model<double> model = Model<double>::random(4, 2, true, 41);
  const G g = random_gaussian(4, 43, 0.3);
  GaussianFlowOptions o;
  o.time = 2;
  o.tolerance = 1e-13;
  const auto tight = gaussian_flow(model, g, o);
  o.tolerance = 1e-7;
  const auto loose = gaussian_flow(model, g, o);
  ASSERT_EQ(tight.status, Status::completed);
  ASSERT_EQ(loose.status, Status::completed);
  EXPECT_LT(loose.steps, tight.steps);
  const double scale =
      1 + tight.measure.cov().cwiseAbs().maxCoeff() + tight.measure.mean().cwiseAbs().maxCoeff();
  EXPECT_LT(distance(loose.measure, tight.measure), 100 * 1e-7 * scale);
  Eigen::SelfAdjointEigenSolver<MatrixD> eig(tight.measure.cov());
  EXPECT_GE(eig.eigenvalues().minCoeff(), 0);
  // Time 0 returns the start.
  o.time = 0;
  EXPECT_EQ(distance(gaussian_flow(model, g, o).measure, g), 0);
  // Sinkhorn flow runs too (its field is checked above against the particles).
  o.time = 1;
  o.normalization = Normalization::sinkhorn;
  EXPECT_EQ(gaussian_flow(model, g, o).status, Status::completed);
}

TEST(gaussian_test, w2_known_cases) {
  // 1-D: W2^2 = (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s.
  const G a(VectorD::Constant(1, 0.5), MatrixD::Constant(1, 1, 4.0));
  const G b(VectorD::Constant(1, -1.0), MatrixD::Constant(1, 1, 0.25));
  EXPECT_NEAR(gaussian_w2(a, b), std::sqrt(1.5 * 1.5 + 1.5 * 1.5), 1e-14);
  // Commuting covariances: sum of (sqrt a_i - sqrt b_i)^2 in a common eigenbasis.
  MatrixD rot(2, 2);
  rot << std::cos(0.3), -std::sin(0.3), std::sin(0.3), std::cos(0.3);
  const MatrixD s1 =
      rot * VectorD((VectorD(2) << 1.0, 9.0).finished()).asDiagonal() * rot.transpose();
  const MatrixD s2 =
      rot * VectorD((VectorD(2) << 4.0, 0.0).finished()).asDiagonal() * rot.transpose();
  const G c(VectorD::Zero(2), s1), e(VectorD::Constant(2, 1.0), s2);
  // s2 is singular: the square root of its rounding-size eigenvalue is ~1e-8,
  // so W2 carries an error of that order (1.8e-9 in the sanitizer build,
  // whose rounding differs from the native optimized one).
  EXPECT_NEAR(gaussian_w2(c, e), std::sqrt(2.0 + 1.0 + 9.0), 1e-7);
  EXPECT_NEAR(gaussian_w2(c, c), 0, 1e-7);
  EXPECT_NEAR(gaussian_w2(c, e), gaussian_w2(e, c), 1e-7);
}

// Against the particle W2 (exact 1-D solver) on quantile atoms of each Gaussian.
TEST(gaussian_test, w2_matches_particle_w2_on_quantile_atoms) {
  const G a(VectorD::Constant(1, 0.2), MatrixD::Constant(1, 1, 2.0));
  const G b(VectorD::Constant(1, -0.4), MatrixD::Constant(1, 1, 0.5));
  const Index n = 20000;
  MatrixD xa(n, 1), xb(n, 1);
  for (Index i = 0; i < n; ++i) {
    // Standard normal quantile at (i + 1/2) / n by Newton on the erfc form.
    const double p = (static_cast<double>(i) + 0.5) / static_cast<double>(n);
    double z = 0;
    for (int it = 0; it < 60; ++it) {
      const double cdf = 0.5 * std::erfc(-z / std::sqrt(2.0));
      z -= (cdf - p) / (std::exp(-z * z / 2) / std::sqrt(2 * M_PI));
    }
    xa(i, 0) = 0.2 + std::sqrt(2.0) * z;
    xb(i, 0) = -0.4 + std::sqrt(0.5) * z;
  }
  WassersteinOptions o;
  o.p = 2;
  const auto r = wasserstein_1d(MeasureD::empirical(xa), MeasureD::empirical(xb), o);
  EXPECT_NEAR(r.value, gaussian_w2(a, b), 2e-3);
}

// float: the closed form in float matches double to float rounding; a rank-deficient
// output covariance rounded to float is still accepted.
TEST(gaussian_test, float_precision) {
  const Model<double> model = Model<double>::random(3, 1, true, 61);
  const G g = random_gaussian(3, 63);
  const G exact = gaussian_attention(model, g);
  const GaussianMeasure<float> gf = g.cast<float>();
  const GaussianMeasure<float> out = gaussian_attention(model.cast<float>(), gf);
  EXPECT_LT((out.mean().cast<double>() - exact.mean()).cwiseAbs().maxCoeff(), 1e-5);
  EXPECT_LT((out.cov().cast<double>() - exact.cov()).cwiseAbs().maxCoeff(), 1e-5);
  MatrixD rank1(3, 3);
  rank1.setConstant(0.3);
  rank1(0, 1) = rank1(1, 0) = 0.3000001;
  EXPECT_NO_THROW(GaussianMeasure<float>(VectorF::Zero(3), rank1.cast<float>()));
  const auto flowed = gaussian_flow(model.cast<float>(), gf, GaussianFlowOptions{});
  EXPECT_EQ(flowed.status, Status::completed);
}

TEST(gaussian_test, gauss_hermite_moments_are_exact) {
  const G g = random_gaussian(3, 51);
  const MeasureD mu = gauss_hermite_measure(g, 3);
  EXPECT_EQ(mu.size(), 27);
  EXPECT_LT(distance(gaussian_moments(mu), g), 1e-14);
}

}  // namespace
}  // namespace measattn
