// Tests of the flow's normalization placements (post, pre, none) against the
// equiangular-start reference, of causal flows (token 0 leads) and of Sinkhorn
// (Sinkformer) flows, with checkpoints and bit-identical resume
// (docs/theory.md#equiangular, #causal-flow, #sinkhorn-flow).
#include <gtest/gtest.h>
#include <unistd.h>

#include <Eigen/QR>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "flow/internal.hpp"
#include "measattn/attention.hpp"
#include "measattn/error.hpp"
#include "measattn/flow.hpp"

namespace measattn {
namespace {

using ModelD = Model<double>;

// n tokens r0 u_i, |u_i| = 1, <u_i, u_j> = rho (rho >= 0), in R^d (d > n),
// turned by a random rotation so that no coordinate is special.
MatrixD equiangular_start(Index n, Index d, double rho, double r0, unsigned seed) {
  MatrixD u = MatrixD::Zero(n, d);
  for (Index i = 0; i < n; ++i) {
    u(i, i) = std::sqrt(1 - rho);
    u(i, n) = std::sqrt(rho);
  }
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  MatrixD g(d, d);
  for (Index i = 0; i < d; ++i)
    for (Index j = 0; j < d; ++j) g(i, j) = normal(rng);
  const MatrixD q = Eigen::HouseholderQR<MatrixD>(g).householderQ();
  return r0 * u * q;
}

MatrixD random_points(Index n, Index d, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  MatrixD x(n, d);
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < d; ++j) x(i, j) = normal(rng);
  return x;
}

// Mean over pairs of 1 - cos(x_i, x_j), as |u_i - u_j|^2 / 2 (no cancellation).
double mean_one_minus_cosine(const MatrixD& x) {
  const Index n = x.rows();
  MatrixD u = x;
  for (Index i = 0; i < n; ++i) u.row(i) /= x.row(i).norm();
  double sum = 0;
  for (Index i = 0; i < n; ++i)
    for (Index j = i + 1; j < n; ++j) sum += (u.row(i) - u.row(j)).squaredNorm() / 2;
  return sum / static_cast<double>(n * (n - 1) / 2);
}

double mean_norm(const MatrixD& x) { return x.rowwise().norm().mean(); }

// Least-squares slope of y against x.
double slope(const std::vector<double>& x, const std::vector<double>& y) {
  const double n = static_cast<double>(x.size());
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    sx += x[i];
    sy += y[i];
    sxx += x[i] * x[i];
    sxy += x[i] * y[i];
  }
  return (n * sxy - sx * sy) / (n * sxx - sx * sx);
}

std::string temp_path(const std::string& name) {
  return ::testing::TempDir() + "/flow_norm_test_" + std::to_string(::getpid()) + "_" + name;
}

bool same_bits(const MatrixD& a, const MatrixD& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(double) * static_cast<size_t>(a.size())) == 0;
}

// Geometric times from t0 to t1 (count of them).
std::vector<double> geometric(double t0, double t1, int count) {
  std::vector<double> t;
  for (int k = 0; k < count; ++k) t.push_back(t0 * std::pow(t1 / t0, double(k) / (count - 1)));
  return t;
}

// ---- the reference itself --------------------------------------------------------

TEST(flow_norm_test, post_reference_is_the_orthogonal_start_closed_form) {
  for (const Index n : {2, 5}) {
    for (const double beta : {0.5, 3.0}) {
      const auto ref = equiangular_reference(NormPlacement::post, n, beta, 0.0, 1.0, {0.5, 2.0});
      EXPECT_NEAR(ref[0].rho, orthogonal_start_cosine(n, beta, 0.5), 1e-12);
      EXPECT_NEAR(ref[1].rho, orthogonal_start_cosine(n, beta, 2.0), 1e-12);
      EXPECT_EQ(ref[1].norm, 1.0);
      EXPECT_NEAR(ref[1].rho + ref[1].one_minus_rho, 1.0, 1e-15);
    }
  }
}

TEST(flow_norm_test, reference_validation) {
  const std::vector<double> t = {1.0};
  EXPECT_THROW(equiangular_reference(NormPlacement::pre, 1, 1.0, 0.0, 1.0, t), invalid_argument);
  EXPECT_THROW(equiangular_reference(NormPlacement::pre, 3, 0.0, 0.0, 1.0, t), invalid_argument);
  EXPECT_THROW(equiangular_reference(NormPlacement::pre, 3, 1.0, -0.6, 1.0, t), invalid_argument);
  EXPECT_THROW(equiangular_reference(NormPlacement::pre, 3, 1.0, 1.5, 1.0, t), invalid_argument);
  EXPECT_THROW(equiangular_reference(NormPlacement::pre, 3, 1.0, 0.2, 0.0, t), invalid_argument);
  EXPECT_THROW(equiangular_reference(NormPlacement::pre, 3, 1.0, 0.2, 1.0, {2.0, 1.0}),
               invalid_argument);
  EXPECT_THROW(equiangular_reference(NormPlacement::pre, 3, 1.0, 0.2, 1.0, t, 0), invalid_argument);
  // rho0 = 1 stays there; the plain flow's norm overflows at large t: refused, never inf.
  const auto one = equiangular_reference(NormPlacement::none, 3, 1.0, 1.0, 1.0, {5.0});
  EXPECT_EQ(one[0].one_minus_rho, 0.0);
  EXPECT_NEAR(one[0].norm, std::exp(5.0), 1e-9 * std::exp(5.0));
  EXPECT_THROW(equiangular_reference(NormPlacement::none, 3, 1.0, 0.3, 1.0, {800.0}, 1000),
               invalid_argument);
  EXPECT_EQ(parse_norm_placement("pre"), NormPlacement::pre);
  EXPECT_EQ(to_string(NormPlacement::none), "none");
  try {
    parse_norm_placement("mid");
    FAIL();
  } catch (const invalid_argument& e) {
    EXPECT_EQ(e.field(), "norm");
  }
}

// ---- the particle systems against the reference ----------------------------------

struct Variant {
  NormPlacement norm;
  double time;
  double r0;
};

// n = 6 equiangular tokens in R^8, beta = 1.5, rho0 = 0.2; dopri5 at 1e-12.
// Every frame: 1 - rho (mean over pairs) and the mean norm against the ODE.
TEST(flow_norm_test, particles_match_the_equiangular_reference) {
  const Index n = 6, d = 8;
  const double beta = 1.5, rho0 = 0.2;
  for (const Variant v :
       {Variant{NormPlacement::post, 6.0, 1.0}, Variant{NormPlacement::pre, 60.0, 1.5},
        Variant{NormPlacement::none, 3.0, 0.8}}) {
    const std::string what = to_string(v.norm);
    const MeasureD mu0 = MeasureD::empirical(equiangular_start(n, d, rho0, v.r0, 7));
    FlowOptions o;
    o.norm = v.norm;
    o.time = v.time;
    o.scheme = FlowScheme::dopri5;
    o.tolerance = 1e-12;
    o.save_every = 1;
    o.cluster_tolerance = 0;
    const auto r = flow(ModelD::canonical(d, beta), mu0, o);
    ASSERT_EQ(r.status, Status::completed) << what;
    const auto ref = equiangular_reference(v.norm, n, beta, rho0, v.r0, r.frame_times, 2000);
    double worst_u = 0, worst_r = 0;
    for (size_t f = 0; f < r.frames.size(); ++f) {
      const double u = mean_one_minus_cosine(r.frames[f]);
      worst_u = std::max(worst_u, std::abs(u - ref[f].one_minus_rho) / ref[f].one_minus_rho);
      worst_r = std::max(worst_r, std::abs(mean_norm(r.frames[f]) - ref[f].norm) / ref[f].norm);
    }
    std::printf(
        "%s: %zu frames to t = %g, 1 - rho = %.3e; max relative error 1 - rho %.2e, "
        "norm %.2e\n",
        what.c_str(), r.frames.size(), v.time, ref.back().one_minus_rho, worst_u, worst_r);
    EXPECT_LT(worst_u, 1e-8) << what;
    EXPECT_LT(worst_r, 1e-10) << what;
  }
}

// The four schemes reach the reference at their order: RK4 with 400 steps to T = 4.
TEST(flow_norm_test, fixed_step_schemes_approach_the_reference) {
  const Index n = 4, d = 6;
  for (const NormPlacement norm : {NormPlacement::post, NormPlacement::pre, NormPlacement::none}) {
    const MeasureD mu0 = MeasureD::empirical(equiangular_start(n, d, 0.1, 1.0, 11));
    const double exact = equiangular_reference(norm, n, 2.0, 0.1, 1.0, {2.0})[0].one_minus_rho;
    double previous = 1;
    for (const FlowScheme scheme : {FlowScheme::euler, FlowScheme::heun, FlowScheme::rk4}) {
      FlowOptions o;
      o.norm = norm;
      o.time = 2;
      o.steps = 400;
      o.scheme = scheme;
      const auto r = flow(ModelD::canonical(d, 2.0), mu0, o);
      const double err = std::abs(mean_one_minus_cosine(r.particles) - exact) / exact;
      EXPECT_LT(err, previous) << to_string(norm) << " " << to_string(scheme);
      previous = err;
    }
    EXPECT_LT(previous, 1e-9) << to_string(norm);
  }
}

// Post-LN clusters exponentially: log(1 - rho) falls linearly in t with slope
// -2 (the limit of -2 c s as rho -> 1). Pre-LN only algebraically: log(1 - rho)
// against log t has slope -2 (1 - rho ~ 1/t^2, as r ~ t). Fitted on the particles.
TEST(flow_norm_test, post_clusters_exponentially_pre_algebraically) {
  const Index n = 5, d = 7;
  const double beta = 1.0;
  const MeasureD mu0 = MeasureD::empirical(equiangular_start(n, d, 0.3, 1.0, 13));
  FlowOptions o;
  o.scheme = FlowScheme::dopri5;
  o.tolerance = 1e-12;
  o.cluster_tolerance = 0;
  o.save_every = 1;

  o.norm = NormPlacement::post;
  o.time = 14;
  const auto post = flow(ModelD::canonical(d, beta), mu0, o);
  ASSERT_EQ(post.status, Status::completed);
  std::vector<double> t, logu;
  for (size_t f = 0; f < post.frames.size(); ++f) {
    if (post.frame_times[f] < 7) continue;
    t.push_back(post.frame_times[f]);
    logu.push_back(std::log(mean_one_minus_cosine(post.frames[f])));
  }
  const double rate = slope(t, logu);

  o.norm = NormPlacement::pre;
  o.time = 2000;
  const auto pre = flow(ModelD::canonical(d, beta), mu0, o);
  ASSERT_EQ(pre.status, Status::completed);
  std::vector<double> logt, logu_pre;
  for (size_t f = 0; f < pre.frames.size(); ++f) {
    if (pre.frame_times[f] < 200) continue;
    logt.push_back(std::log(pre.frame_times[f]));
    logu_pre.push_back(std::log(mean_one_minus_cosine(pre.frames[f])));
  }
  const double exponent = slope(logt, logu_pre);
  // The reference's own slopes over the same windows.
  const auto ref_pre =
      equiangular_reference(NormPlacement::pre, n, beta, 0.3, 1.0, geometric(200, 2000, 20), 2000);
  std::vector<double> rt, ru;
  for (const auto& s : ref_pre) {
    rt.push_back(std::log(s.t));
    ru.push_back(std::log(s.one_minus_rho));
  }
  const double ref_exponent = slope(rt, ru);
  std::printf(
      "post: d log(1 - rho)/dt = %.5f on t in [7, 14] (%zu frames); pre: d log(1 - rho) "
      "/ d log t = %.5f on t in [200, 2000] (%zu frames; the ODE: %.5f)\n",
      rate, t.size(), exponent, logt.size(), ref_exponent);
  EXPECT_NEAR(rate, -2.0, 0.01);
  EXPECT_NEAR(exponent, -2.0, 0.05);
  EXPECT_NEAR(exponent, ref_exponent, 1e-3);
  // And post is not algebraic, pre not exponential: over the last doubling of
  // time post's 1 - rho falls by e^-14 and more, pre's by about a quarter.
  const double post_ratio = mean_one_minus_cosine(post.particles) /
                            mean_one_minus_cosine(post.frames[post.frames.size() / 2]);
  EXPECT_LT(post_ratio, 1e-5);
}

// Pre-LN: a token at the origin is read as the origin (no NaN): its query sees
// every key with logit 0, so its first Euler step is h times the mean direction.
TEST(flow_norm_test, pre_norm_token_at_the_origin) {
  MatrixD x = random_points(5, 3, 21);
  x.row(2).setZero();
  const MeasureD mu0 = MeasureD::empirical(x);
  FlowOptions o;
  o.norm = NormPlacement::pre;
  o.time = 0.1;
  o.steps = 1;
  const auto r = flow(ModelD::canonical(3, 2.0), mu0, o);
  ASSERT_EQ(r.status, Status::completed);
  ASSERT_TRUE(r.particles.allFinite());
  MatrixD u = detail::unit_directions<double>(x);
  EXPECT_EQ(u.row(2).squaredNorm(), 0.0);
  const Eigen::RowVectorXd expected = 0.1 * u.colwise().mean();
  EXPECT_LT((r.particles.row(2) - expected).norm(), 1e-15);
  // The field is the attention field of the directions, unprojected.
  const MatrixD f = flow_field(ModelD::canonical(3, 2.0), mu0.weights(), x, o);
  const MatrixD g = attention_field(ModelD::canonical(3, 2.0), MeasureD::empirical(u), u);
  EXPECT_LT((f - g).cwiseAbs().maxCoeff(), 1e-14);
}

TEST(flow_norm_test, validation) {
  const auto model = ModelD::canonical(3, 1.0);
  const MeasureD mu0 = MeasureD::empirical(random_points(5, 3, 1));
  auto bad = [&](auto mutate, const std::string& field) {
    FlowOptions o;
    mutate(o);
    try {
      flow(model, mu0, o);
      ADD_FAILURE() << field;
    } catch (const invalid_argument& e) {
      EXPECT_EQ(e.field(), field) << e.what();
    }
  };
  bad(
      [](FlowOptions& o) {
        o.sphere = true;
        o.norm = NormPlacement::pre;
      },
      "norm");
  bad(
      [](FlowOptions& o) {
        o.attention.causal = true;
        o.attention.normalization = Normalization::sinkhorn;
      },
      "normalization");
  bad([](FlowOptions& o) { o.attention.sinkhorn_iterations = -1; }, "sinkhorn_iterations");
  bad(
      [](FlowOptions& o) {
        o.norm = NormPlacement::pre;
        o.field = FlowField::unnormalized;
      },
      "field");
  bad(
      [](FlowOptions& o) {
        o.norm = NormPlacement::post;
        o.field = FlowField::unnormalized;
        o.attention.causal = true;
      },
      "field");
  // sphere and norm post are one option: the same flow, the same fingerprint.
  FlowOptions a, b;
  a.sphere = true;
  b.norm = NormPlacement::post;
  EXPECT_EQ(flow_fingerprint(model, mu0, a), flow_fingerprint(model, mu0, b));
  EXPECT_TRUE(same_bits(flow(model, mu0, a).particles, flow(model, mu0, b).particles));
  FlowOptions c;
  c.norm = NormPlacement::pre;
  EXPECT_NE(flow_fingerprint(model, mu0, c), flow_fingerprint(model, mu0, FlowOptions{}));
  // Causal flows need a positive weight on token 0 (it sees only itself).
  VectorD w = VectorD::Ones(5);
  w[0] = 0;
  FlowOptions causal;
  causal.attention.causal = true;
  EXPECT_THROW(flow(model, MeasureD(mu0.atoms(), w), causal), invalid_argument);
}

// ---- causal flows ----------------------------------------------------------------

// Canonical model on the sphere: token 0 attends to itself only, Gamma(x_0) =
// x_0 exactly and P_{x_0} x_0 = 0: it never moves, bit for bit (its start is a
// unit vector whose normalization is exact), in every scheme; the others are
// pulled towards it: their mean cosine to token 0 rises to 1.
TEST(flow_norm_test, causal_first_token_never_moves_and_leads) {
  const Index n = 12, d = 4;
  MatrixD x = random_points(n, d, 31);
  x.row(0) << 0, 1, 0, 0;
  const MeasureD mu0 = MeasureD::empirical(x);
  for (const FlowScheme scheme :
       {FlowScheme::euler, FlowScheme::heun, FlowScheme::rk4, FlowScheme::dopri5}) {
    FlowOptions o;
    o.norm = NormPlacement::post;
    o.attention.causal = true;
    o.time = 20;
    o.steps = 400;
    o.scheme = scheme;
    o.tolerance = 1e-9;
    o.save_every = 10;
    const auto r = flow(ModelD::canonical(d, 1.0), mu0, o);
    ASSERT_EQ(r.status, Status::completed) << to_string(scheme);
    for (const auto& frame : r.frames) {
      ASSERT_TRUE(frame(0, 0) == 0 && frame(0, 1) == 1 && frame(0, 2) == 0 && frame(0, 3) == 0)
          << to_string(scheme);
    }
    auto mean_cosine_to_leader = [&](const MatrixD& f) {
      double s = 0;
      for (Index i = 1; i < n; ++i) s += f.row(i).dot(f.row(0)) / f.row(i).norm();
      return s / static_cast<double>(n - 1);
    };
    const double start = mean_cosine_to_leader(r.frames.front());
    const double end = mean_cosine_to_leader(r.particles);
    EXPECT_GT(end, 0.999) << to_string(scheme) << " from " << start;
    EXPECT_LT(start, 0.5);
  }
}

// The causal field is attention_field with the causal mask (then projected),
// and token 0's path depends on token 0 alone: the same bits as its one-token
// causal flow, for a random model with biases (where it does move).
TEST(flow_norm_test, causal_field_and_the_leaders_own_path) {
  const Index n = 9, d = 4;
  const MatrixD x = random_points(n, d, 41);
  const MeasureD mu0 = MeasureD::empirical(x);
  const ModelD model = ModelD::random(d, 2, true, 42);
  FlowOptions o;
  o.attention.causal = true;
  AttendOptions causal;
  causal.causal = true;
  const MatrixD f = flow_field(model, mu0.weights(), x, o);
  const MatrixD g = attention_field(model, mu0, x, causal);
  EXPECT_LT((f - g).cwiseAbs().maxCoeff(), 1e-13);
  FlowOptions sph = o;
  sph.norm = NormPlacement::pre;
  const MatrixD fp = flow_field(model, mu0.weights(), x, sph);
  const MatrixD u = detail::unit_directions<double>(x);
  EXPECT_LT((fp - attention_field(model, MeasureD::empirical(u), u, causal)).cwiseAbs().maxCoeff(),
            1e-13);
  for (const NormPlacement norm : {NormPlacement::none, NormPlacement::pre, NormPlacement::post}) {
    FlowOptions run = o;
    run.norm = norm;
    run.time = 2;
    run.steps = 25;
    run.scheme = FlowScheme::rk4;
    const auto all = flow(model, mu0, run);
    const auto alone = flow(model, MeasureD::empirical(MatrixD(x.topRows(1))), run);
    EXPECT_TRUE(same_bits(MatrixD(all.particles.topRows(1)), alone.particles)) << to_string(norm);
    EXPECT_GT((all.particles.row(0) - x.row(0)).norm(), 1e-3) << to_string(norm);
  }
}

// ---- Sinkhorn (Sinkformer) flows --------------------------------------------------

// Each stage is attention_field with the Sinkhorn kernel; zero iterations is
// the softmax flow bit for bit; the kernel is doubly stochastic, so with V = I
// the weighted mean of the field is the weighted mean of the tokens.
TEST(flow_norm_test, sinkhorn_flow_is_the_sinkformer_field) {
  const Index n = 10, d = 3;
  const MatrixD x = random_points(n, d, 51);
  VectorD w(n);
  for (Index i = 0; i < n; ++i) w[i] = 1 + 0.1 * static_cast<double>(i);
  const MeasureD mu0(x, w);
  const ModelD canonical = ModelD::canonical(d, 1.0);
  FlowOptions o;
  o.attention.normalization = Normalization::sinkhorn;
  o.attention.sinkhorn_iterations = 300;
  AttendOptions sk = o.attention;
  const MatrixD f = flow_field(canonical, mu0.weights(), x, o);
  EXPECT_LT((f - attention_field(canonical, mu0, x, sk)).cwiseAbs().maxCoeff(), 1e-14);
  const Eigen::RowVectorXd field_mean = mu0.weights().transpose() * f;
  const Eigen::RowVectorXd token_mean = mu0.weights().transpose() * x;
  EXPECT_LT((field_mean - token_mean).norm(), 1e-10);
  // Softmax rows alone do not balance the columns.
  const MatrixD soft = flow_field(canonical, mu0.weights(), x, FlowOptions{});
  EXPECT_GT((Eigen::RowVectorXd(mu0.weights().transpose() * soft) - token_mean).norm(), 1e-3);
  // One Euler step is x + h Gamma_sinkhorn(x).
  o.time = 0.25;
  o.steps = 1;
  const auto r = flow(canonical, mu0, o);
  EXPECT_LT((r.particles - (x + 0.25 * f)).cwiseAbs().maxCoeff(), 1e-15);
  // Zero iterations: softmax.
  FlowOptions zero;
  zero.attention.normalization = Normalization::sinkhorn;
  zero.time = 1;
  zero.steps = 7;
  zero.scheme = FlowScheme::heun;
  FlowOptions soft_o = zero;
  soft_o.attention.normalization = Normalization::softmax;
  const ModelD random = ModelD::random(d, 1, true, 52);
  EXPECT_TRUE(same_bits(flow(random, mu0, zero).particles, flow(random, mu0, soft_o).particles));
}

// From an equiangular start with uniform weights the softmax kernel is already
// doubly stochastic: the Sinkformer flow on the sphere follows the same ODE.
TEST(flow_norm_test, sinkhorn_flow_from_an_equiangular_start) {
  const Index n = 5, d = 6;
  const MeasureD mu0 = MeasureD::empirical(equiangular_start(n, d, 0.25, 1.0, 61));
  FlowOptions o;
  o.norm = NormPlacement::post;
  o.attention.normalization = Normalization::sinkhorn;
  o.attention.sinkhorn_iterations = 5;
  o.time = 3;
  o.scheme = FlowScheme::dopri5;
  o.tolerance = 1e-11;
  const auto r = flow(ModelD::canonical(d, 2.0), mu0, o);
  ASSERT_EQ(r.status, Status::completed);
  const double ref =
      equiangular_reference(NormPlacement::post, n, 2.0, 0.25, 1.0, {3.0})[0].one_minus_rho;
  EXPECT_LT(std::abs(mean_one_minus_cosine(r.particles) - ref) / ref, 1e-7);
}

// ---- checkpoints ------------------------------------------------------------------

// Stopped at step 12 with checkpoints every 5, resumed from step 10: the same
// bits as an uninterrupted run, for causal, Sinkhorn and pre-LN flows in every
// scheme; a checkpoint of another variant is refused.
TEST(flow_norm_test, resume_is_bit_identical_for_every_variant) {
  const Index d = 3;
  const MeasureD mu0(random_points(30, d, 71), VectorD::LinSpaced(30, 1.0, 2.0));
  const ModelD model = ModelD::random(d, 1, true, 72);
  const ModelD canonical = ModelD::canonical(d, 2.0);
  struct Case {
    const char* name;
    bool causal;
    bool sinkhorn;
    NormPlacement norm;
  };
  const Case cases[] = {{"causal", true, false, NormPlacement::none},
                        {"causal_post", true, false, NormPlacement::post},
                        {"sinkhorn", false, true, NormPlacement::none},
                        {"sinkhorn_pre", false, true, NormPlacement::pre},
                        {"pre", false, false, NormPlacement::pre}};
  for (const Case& c : cases) {
    for (const FlowScheme scheme :
         {FlowScheme::euler, FlowScheme::heun, FlowScheme::rk4, FlowScheme::dopri5}) {
      const std::string what = std::string(c.name) + " " + to_string(scheme);
      FlowOptions o;
      o.time = 3;
      o.steps = 37;
      o.scheme = scheme;
      o.tolerance = 1e-9;
      o.norm = c.norm;
      o.attention.causal = c.causal;
      if (c.sinkhorn) {
        o.attention.normalization = Normalization::sinkhorn;
        o.attention.sinkhorn_iterations = 4;
      }
      o.save_every = 4;
      const ModelD& m = c.norm == NormPlacement::post ? canonical : model;
      const auto full = flow(m, mu0, o);
      ASSERT_EQ(full.status, Status::completed) << what;
      ASSERT_GT(full.steps, 12) << what;
      const std::string path = temp_path(std::string(c.name) + to_string(scheme));
      FlowOptions stopped = o;
      stopped.checkpoint_every = 5;
      stopped.checkpoint_path = path;
      stopped.should_stop = [](Index step, double) { return step == 12; };
      ASSERT_EQ(flow(m, mu0, stopped).status, Status::interrupted) << what;
      FlowOptions resume = o;
      resume.checkpoint_path = path;
      resume.resume = true;
      const auto resumed = flow(m, mu0, resume);
      EXPECT_TRUE(resumed.resumed) << what;
      EXPECT_EQ(resumed.resumed_from_step, 10) << what;
      EXPECT_TRUE(same_bits(full.particles, resumed.particles)) << what;
      ASSERT_EQ(full.frames.size(), resumed.frames.size()) << what;
      for (size_t f = 0; f < full.frames.size(); ++f)
        EXPECT_TRUE(same_bits(full.frames[f], resumed.frames[f])) << what << " frame " << f;
      // The checkpoint of this variant does not resume another one.
      FlowOptions other = resume;
      other.attention.causal = !c.causal;
      if (other.attention.causal) other.attention.normalization = Normalization::softmax;
      EXPECT_THROW(flow(m, mu0, other), invalid_argument) << what;
      std::remove(path.c_str());
    }
  }
}

}  // namespace
}  // namespace measattn
