// Tests of the particle flow (docs/theory.md#flow): Euler = weight-shared residual
// network, convergence orders, the energy identity, the orthogonal-start closed
// form, clustering, the unnormalized field, checkpoints and bit-identical resume.
#include <gtest/gtest.h>
#include <omp.h>
#include <unistd.h>
#include <zlib.h>
#include <Eigen/QR>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "attention/kernels.hpp"
#include "common/vector_exp.hpp"
#include "flow/checkpoint.hpp"
#include "flow/internal.hpp"
#include "measattn/error.hpp"
#include "measattn/flow.hpp"

namespace measattn {
namespace {

using ModelD = Model<double>;

MatrixD random_points(Index n, Index d, unsigned seed, double scale = 1) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0, scale);
  MatrixD x(n, d);
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < d; ++j) x(i, j) = normal(rng);
  return x;
}

VectorD random_weights(Index n, unsigned seed, bool with_zero = false) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0.2, 1.0);
  VectorD w(n);
  for (Index i = 0; i < n; ++i) w[i] = u(rng);
  if (with_zero) w[n / 2] = 0;
  return w / w.sum();
}

double max_distance(const MatrixD& a, const MatrixD& b) {
  return (a - b).rowwise().norm().maxCoeff();
}

// A random model with W_K = W_Q and no query/key bias (logits symmetric).
ModelD tied_model(Index k, Index heads, bool bias, unsigned seed) {
  auto model = ModelD::random(k * heads, heads, bias, seed);
  model.w_k = model.w_q;
  if (model.b_q.size()) model.b_q.setZero();
  if (model.b_k.size()) model.b_k.setZero();
  return model;
}

using detail::FieldKernel;

// The kernel layer's attention field with keys x and queries x (the same matrix
// when `self`, else a copy of it), after checking that its entry point takes
// `kernel` for them.
MatrixD kernel_field(FieldKernel kernel, const ModelD& model, const VectorD& w, const MatrixD& x,
                     bool self = true, const AttendOptions& options = {}) {
  EXPECT_EQ(detail::field_kernel(model, options, self), kernel);
  const MatrixD copy = x;
  MatrixD out;
  detail::attention_field_kernel<double>(model, x, detail::key_weights(w),
                                         self ? MatrixRef<double>(x) : MatrixRef<double>(copy),
                                         options, out);
  return out;
}

// A flow-field kernel against the core streaming kernel, relative to the field's size.
void expect_matches_core(const MatrixD& fast, const ModelD& model, const MatrixD& x,
                         const VectorD& w, double rel, const std::string& what) {
  const MatrixD ref = attention_field(model, MeasureD(x, w), x);
  ASSERT_TRUE(fast.allFinite()) << what;
  EXPECT_LT((fast - ref).cwiseAbs().maxCoeff(), rel * (1 + ref.cwiseAbs().maxCoeff())) << what;
}

// Least-squares slope of log(err) against log(L).
double fitted_order(const std::vector<Index>& steps, const std::vector<double>& errors) {
  const size_t n = steps.size();
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (size_t i = 0; i < n; ++i) {
    const double x = std::log(double(steps[i])), y = std::log(errors[i]);
    sx += x;
    sy += y;
    sxx += x * x;
    sxy += x * y;
  }
  return -(n * sxy - sx * sy) / (n * sxx - sx * sx);
}

std::string temp_path(const std::string& name) {
  return ::testing::TempDir() + "/flow_test_" + std::to_string(::getpid()) + "_" + name;
}

TEST(flow_test, euler_is_weight_shared_residual_network) {
  for (unsigned seed = 0; seed < 6; ++seed) {
    const Index d = seed % 2 ? 4 : 8;
    const auto model = ModelD::random(d, seed % 3 == 0 ? 1 : 2, seed % 2 == 0, seed);
    const MatrixD x0 = random_points(20, d, 100 + seed);
    const VectorD w = random_weights(20, 200 + seed, seed == 3);
    const MeasureD mu0(x0, w);
    FlowOptions options;
    options.time = 1.5;
    options.steps = 7;
    const auto result = flow(model, mu0, options);
    // The network computed layer by layer with the core attention kernel.
    MatrixD x = mu0.atoms();
    const double h = 1.5 / 7;
    for (int l = 0; l < 7; ++l) {
      const MeasureD mu(x, mu0.weights());
      x = x + h * attention_field(model, mu, x);
    }
    EXPECT_LT(max_distance(result.particles, x), 1e-12 * (1 + x.norm())) << seed;
    EXPECT_EQ(result.steps, 7);
    EXPECT_EQ(result.evaluations, 7);
    EXPECT_EQ(result.time, 1.5);
    EXPECT_EQ(result.status, Status::completed);
  }
}

TEST(flow_test, small_dimension_kernel_matches_core_kernel) {
  for (unsigned seed = 0; seed < 12; ++seed) {
    const Index d = 1 + seed % 8;
    const Index heads = (d % 2 == 0 && seed % 3 == 0) ? 2 : 1;
    const auto model = ModelD::random(d, heads, seed % 2 == 1, seed);
    const Index n = 50 + 300 * (seed % 4);  // crosses key-block boundaries
    const MatrixD x = random_points(n, d, seed, seed % 5 == 0 ? 6.0 : 1.0);
    const VectorD w = random_weights(n, seed, seed % 4 == 1);
    const MatrixD fast = kernel_field(FieldKernel::small_dim, model, w, x);
    const MatrixD ref = attention_field(model, MeasureD(x, w), x);
    EXPECT_LT((fast - ref).cwiseAbs().maxCoeff(), 1e-12 * (1 + ref.cwiseAbs().maxCoeff())) << seed;
  }
  // Large logits: the upper-bound shift is far above the true maximum for some
  // rows, which must fall back to the exact two-pass evaluation.
  const auto model = ModelD::canonical(3, 400.0);
  MatrixD x = random_points(300, 3, 7);
  x.row(0) *= 30;
  const VectorD w = VectorD::Constant(300, 1.0 / 300);
  const MatrixD fast = kernel_field(FieldKernel::small_dim, model, w, x, false);
  const MatrixD ref = attention_field(model, MeasureD(x, w), x);
  ASSERT_TRUE(fast.allFinite());
  EXPECT_LT((fast - ref).cwiseAbs().maxCoeff(), 1e-9 * (1 + ref.cwiseAbs().maxCoeff()));
}

TEST(flow_test, convergence_orders) {
  const Index d = 4, n = 12;
  const auto model = ModelD::random(d, 2, true, 11);
  const MeasureD mu0 = MeasureD::empirical(random_points(n, d, 12));
  FlowOptions ref_options;
  ref_options.time = 1;
  ref_options.scheme = FlowScheme::rk4;
  ref_options.steps = 4000;
  const MatrixD reference = flow(model, mu0, ref_options).particles;
  const std::vector<Index> steps = {8, 16, 32, 64};
  struct Case {
    FlowScheme scheme;
    double order;
  };
  for (const Case c :
       {Case{FlowScheme::euler, 1}, Case{FlowScheme::heun, 2}, Case{FlowScheme::rk4, 4}}) {
    std::vector<double> errors;
    for (Index L : steps) {
      FlowOptions o = ref_options;
      o.scheme = c.scheme;
      o.steps = L;
      errors.push_back(max_distance(flow(model, mu0, o).particles, reference));
    }
    const double p = fitted_order(steps, errors);
    EXPECT_NEAR(p, c.order, 0.1 * c.order)
        << to_string(c.scheme) << " errors " << errors[0] << " .. " << errors.back();
  }
  // Sphere dynamics: the same orders.
  const auto canonical = ModelD::canonical(d, 2.0);
  ref_options.sphere = true;
  const MatrixD sphere_ref = flow(canonical, mu0, ref_options).particles;
  for (const Case c : {Case{FlowScheme::euler, 1}, Case{FlowScheme::rk4, 4}}) {
    std::vector<double> errors;
    for (Index L : steps) {
      FlowOptions o = ref_options;
      o.scheme = c.scheme;
      o.steps = L;
      errors.push_back(max_distance(flow(canonical, mu0, o).particles, sphere_ref));
    }
    EXPECT_NEAR(fitted_order(steps, errors), c.order, 0.1 * c.order) << to_string(c.scheme);
  }
}

TEST(flow_test, dopri5_meets_its_tolerance) {
  const auto model = ModelD::random(4, 1, true, 21);
  const MeasureD mu0 = MeasureD::empirical(random_points(10, 4, 22));
  FlowOptions ref;
  ref.time = 2;
  ref.scheme = FlowScheme::rk4;
  ref.steps = 4000;
  const MatrixD reference = flow(model, mu0, ref).particles;
  double previous = 1;
  for (double tol : {1e-4, 1e-7, 1e-10}) {
    FlowOptions o = ref;
    o.scheme = FlowScheme::dopri5;
    o.tolerance = tol;
    const auto r = flow(model, mu0, o);
    ASSERT_EQ(r.status, Status::completed);
    EXPECT_EQ(r.time, 2.0);
    const double err = max_distance(r.particles, reference);
    EXPECT_LT(err, 100 * tol) << tol;
    EXPECT_LE(err, previous);
    previous = err;
    // FSAL: six evaluations per attempted step, plus the first and hinit's one.
    EXPECT_EQ(r.evaluations, 6 * (r.steps + r.rejected) + 2);
  }
  FlowOptions capped = ref;
  capped.scheme = FlowScheme::dopri5;
  capped.tolerance = 1e-12;
  capped.max_steps = 3;
  const auto r = flow(model, mu0, capped);
  EXPECT_EQ(r.status, Status::iteration_limit);
  EXPECT_LT(r.time, 2.0);
}

TEST(flow_test, energy_never_decreases) {
  for (unsigned seed = 0; seed < 8; ++seed) {
    const Index d = 3 + seed % 3;
    const double beta = 0.5 + seed;
    const auto model = ModelD::canonical(d, beta);
    const MeasureD mu0(random_points(25, d, 300 + seed), random_weights(25, seed));
    for (bool sphere : {true, false}) {
      FlowOptions o;
      o.time = sphere ? 8 : 1;
      o.steps = 200;
      o.scheme = FlowScheme::rk4;
      o.sphere = sphere;
      o.save_every = 5;
      const auto r = flow(model, mu0, o);
      ASSERT_EQ(r.energies.size(), r.frames.size());
      ASSERT_GE(r.energies.size(), 40u);
      for (size_t f = 1; f < r.energies.size(); ++f) {
        EXPECT_GE(r.energies[f], r.energies[f - 1] * (1 - 1e-12)) << seed << " frame " << f;
      }
      if (sphere) {
        // Energy at most its value at a single cluster, e^beta / (2 beta).
        EXPECT_LE(r.energies.back(), std::exp(beta) / (2 * beta) * (1 + 1e-12));
        for (Index i = 0; i < r.particles.rows(); ++i) {
          EXPECT_NEAR(r.particles.row(i).norm(), 1.0, 1e-14);
        }
      }
    }
  }
}

TEST(flow_test, energy_identity_derivative) {
  // dE/dt = sum_i w_i Z_i ||f_i||^2, checked by a centred difference along the flow.
  const Index d = 3;
  const double beta = 1.7;
  const auto model = ModelD::canonical(d, beta);
  MatrixD x = random_points(15, d, 5);
  detail::normalize_rows(x, "x");
  const VectorD w = random_weights(15, 6);
  FlowOptions o;
  o.sphere = true;
  const MatrixD f = flow_field(model, w, x, o);
  double rate = 0;
  for (Index i = 0; i < 15; ++i) {
    double z = 0;
    for (Index j = 0; j < 15; ++j) z += w[j] * std::exp(beta * x.row(i).dot(x.row(j)));
    rate += w[i] * z * f.row(i).squaredNorm();
  }
  const double eps = 1e-5;
  const MatrixD xp = x + eps * f, xm = x - eps * f;
  const double numeric =
      (sphere_energy<double>(xp, w, beta) - sphere_energy<double>(xm, w, beta)) / (2 * eps);
  EXPECT_NEAR(numeric, rate, 1e-7 * (1 + rate));
  EXPECT_GT(rate, 0);
}

TEST(flow_test, orthogonal_start_closed_form) {
  for (const auto& [n, d, beta] :
       {std::tuple<Index, Index, double>{4, 4, 1.0}, {3, 6, 4.0}, {5, 8, 0.3}, {2, 3, 9.0}}) {
    MatrixD x = MatrixD::Zero(n, d);
    for (Index i = 0; i < n; ++i) x(i, i) = 1;
    // A random rotation must not matter.
    Eigen::HouseholderQR<Eigen::MatrixXd> qr(random_points(d, d, 77));
    const Eigen::MatrixXd rot = qr.householderQ();
    x = x * rot;
    const auto model = ModelD::canonical(d, beta);
    for (FlowScheme scheme : {FlowScheme::rk4, FlowScheme::dopri5}) {
      FlowOptions o;
      o.sphere = true;
      o.time = 3;
      o.scheme = scheme;
      o.steps = 1500;
      o.tolerance = 1e-12;
      o.save_every = scheme == FlowScheme::rk4 ? 300 : 0;
      const auto r = flow(model, MeasureD::empirical(x), o);
      ASSERT_EQ(r.status, Status::completed);
      const double gamma = orthogonal_start_cosine(n, beta, 3.0);
      for (Index i = 0; i < n; ++i)
        for (Index j = i + 1; j < n; ++j) {
          EXPECT_NEAR(r.particles.row(i).dot(r.particles.row(j)), gamma, 1e-8)
              << n << " " << beta << " " << to_string(scheme);
        }
      for (size_t f = 0; f < r.frames.size(); ++f) {
        const double g = orthogonal_start_cosine(n, beta, r.frame_times[f]);
        EXPECT_NEAR(r.frames[f].row(0).dot(r.frames[f].row(n - 1)), g, 1e-8);
      }
    }
  }
  // The scalar reference itself: gamma is increasing to 1 and RK4 converged.
  EXPECT_NEAR(orthogonal_start_cosine(4, 1.0, 2.0, 2000), orthogonal_start_cosine(4, 1.0, 2.0),
              1e-12);
  EXPECT_GT(orthogonal_start_cosine(4, 1.0, 20.0), 0.999);
}

TEST(flow_test, particles_cluster) {
  const Index d = 3;
  const auto model = ModelD::canonical(d, 4.0);
  const MeasureD mu0 = MeasureD::empirical(random_points(40, d, 31));
  FlowOptions o;
  o.sphere = true;
  o.time = 40;
  o.steps = 800;
  o.scheme = FlowScheme::rk4;
  o.save_every = 100;
  o.cluster_tolerance = 1e-2;
  const auto r = flow(model, mu0, o);
  EXPECT_EQ(r.cluster_counts.front(), 40);
  EXPECT_LT(r.cluster_counts.back(), 40);
  for (size_t f = 1; f < r.cluster_counts.size(); ++f) {
    EXPECT_LE(r.cluster_counts[f], r.cluster_counts[f - 1]);
  }
}

TEST(flow_test, cluster_count_matches_brute_force) {
  for (unsigned seed = 0; seed < 20; ++seed) {
    const Index n = 60 + seed * 7, d = 1 + seed % 5;
    MatrixD x = random_points(n, d, seed);
    // A few tight groups plus noise.
    for (Index i = 0; i < n; i += 3) x.row(i) = x.row(0) + 1e-3 * x.row(i);
    const double tol = 0.05 + 0.1 * (seed % 4);
    // Brute force: BFS over all pairs.
    std::vector<int> label(static_cast<size_t>(n), -1);
    Index components = 0;
    for (Index s = 0; s < n; ++s) {
      if (label[s] >= 0) continue;
      std::vector<Index> stack{s};
      label[s] = int(components);
      while (!stack.empty()) {
        const Index i = stack.back();
        stack.pop_back();
        for (Index j = 0; j < n; ++j) {
          if (label[j] < 0 && (x.row(i) - x.row(j)).norm() <= tol) {
            label[j] = int(components);
            stack.push_back(j);
          }
        }
      }
      ++components;
    }
    EXPECT_EQ(cluster_count(x, tol), components) << seed;
  }
  EXPECT_EQ(cluster_count(MatrixD::Zero(500, 3), 0.0), 1);
  EXPECT_EQ(cluster_count(MatrixD::Identity(5, 5), 1.0), 5);
  EXPECT_EQ(cluster_count(MatrixD::Identity(5, 5), 1.5), 1);
  EXPECT_THROW(cluster_count(MatrixD::Identity(5, 5), -1.0), invalid_argument);
}

TEST(flow_test, unnormalized_field) {
  const Index d = 4, n = 30;
  const double beta = 3;
  const auto model = ModelD::canonical(d, beta);
  MatrixD x = random_points(n, d, 41);
  detail::normalize_rows(x, "x");
  const VectorD w = random_weights(n, 42, true);
  FlowOptions o;
  o.sphere = true;
  o.field = FlowField::unnormalized;
  const MatrixD f = flow_field(model, w, x, o);
  for (Index i = 0; i < n; ++i) {
    Eigen::RowVectorXd s = Eigen::RowVectorXd::Zero(d);
    for (Index j = 0; j < n; ++j) s += w[j] * std::exp(beta * x.row(i).dot(x.row(j))) * x.row(j);
    s -= s.dot(x.row(i)) * x.row(i);
    EXPECT_LT((f.row(i) - s).norm(), 1e-12 * (1 + s.norm()));
  }
  // Plain gradient ascent of E_beta: the energy increases.
  o.time = 2;
  o.steps = 100;
  o.scheme = FlowScheme::rk4;
  o.save_every = 10;
  const auto r = flow(model, MeasureD(x, w), o);
  for (size_t k = 1; k < r.energies.size(); ++k) EXPECT_GE(r.energies[k], r.energies[k - 1]);
  // Needs the sphere, the canonical model and beta <= 700.
  FlowOptions flat = o;
  flat.sphere = false;
  EXPECT_THROW(flow(model, MeasureD(x, w), flat), invalid_argument);
  EXPECT_THROW(flow(ModelD::random(d, 1, false, 1), MeasureD(x, w), o), invalid_argument);
  EXPECT_THROW(flow(ModelD::canonical(d, 800.0), MeasureD(x, w), o), invalid_argument);
  // Large beta (700) on the sphere: finite.
  FlowOptions usa;
  usa.sphere = true;
  usa.field = FlowField::unnormalized;
  const MatrixD big = flow_field(ModelD::canonical(d, 700.0), w, x, usa);
  EXPECT_TRUE(big.allFinite());
}

void expect_bit_identical(const FlowResult<double>& a, const FlowResult<double>& b) {
  ASSERT_EQ(a.particles.rows(), b.particles.rows());
  EXPECT_EQ(0, std::memcmp(a.particles.data(), b.particles.data(),
                           sizeof(double) * size_t(a.particles.size())));
  EXPECT_EQ(a.time, b.time);
  EXPECT_EQ(a.steps, b.steps);
  EXPECT_EQ(a.rejected, b.rejected);
  EXPECT_EQ(a.evaluations, b.evaluations);
  ASSERT_EQ(a.frames.size(), b.frames.size());
  for (size_t f = 0; f < a.frames.size(); ++f) {
    EXPECT_EQ(a.frames[f], b.frames[f]);
    EXPECT_EQ(a.frame_times[f], b.frame_times[f]);
  }
  EXPECT_EQ(a.energies, b.energies);
  EXPECT_EQ(a.cluster_counts, b.cluster_counts);
}

TEST(flow_test, progress_callback_counts_steps_and_can_stop) {
  const Index d = 3;
  const MeasureD mu0(random_points(20, d, 61), random_weights(20, 62));
  const auto model = ModelD::random(d, 1, true, 63);
  for (FlowScheme scheme : {FlowScheme::euler, FlowScheme::dopri5}) {
    FlowOptions o;
    o.time = 0.7;
    o.steps = 9;
    o.scheme = scheme;
    const auto plain = flow(model, mu0, o);
    std::vector<std::pair<std::int64_t, std::int64_t>> calls;
    o.progress_callback = [&](std::int64_t done, std::int64_t total) {
      calls.emplace_back(done, total);
    };
    const auto watched = flow(model, mu0, o);
    EXPECT_EQ(watched.particles, plain.particles);  // bit for bit
    const std::int64_t total = scheme == FlowScheme::dopri5 ? 1000 : 9;
    ASSERT_EQ(static_cast<Index>(calls.size()), watched.steps);
    for (size_t i = 0; i < calls.size(); ++i) {
      EXPECT_EQ(calls[i].second, total);
      if (i > 0) {
        EXPECT_GE(calls[i].first, calls[i - 1].first);
      }
    }
    EXPECT_EQ(calls.back().first, total);
  }
  // An exception thrown by the callback stops the run and propagates.
  FlowOptions o;
  o.steps = 100;
  int seen = 0;
  o.progress_callback = [&](std::int64_t done, std::int64_t) {
    seen = static_cast<int>(done);
    if (done == 3) throw std::runtime_error("stop");
  };
  EXPECT_THROW(flow(model, mu0, o), std::runtime_error);
  EXPECT_EQ(seen, 3);
}

TEST(flow_test, resume_is_bit_identical) {
  const Index d = 3;
  const MeasureD mu0(random_points(40, d, 51), random_weights(40, 52));
  const auto random_model = ModelD::random(d, 1, true, 53);
  const auto canonical = ModelD::canonical(d, 2.0);
  struct Case {
    FlowScheme scheme;
    bool sphere;
  };
  for (const Case c :
       {Case{FlowScheme::euler, false}, Case{FlowScheme::heun, true}, Case{FlowScheme::rk4, false},
        Case{FlowScheme::dopri5, false}, Case{FlowScheme::dopri5, true}}) {
    const ModelD& model = c.sphere ? canonical : random_model;
    FlowOptions o;
    o.time = 3;
    o.steps = 37;
    o.scheme = c.scheme;
    o.tolerance = 1e-7;
    o.sphere = c.sphere;
    o.save_every = 4;
    const auto full = flow(model, mu0, o);
    ASSERT_EQ(full.status, Status::completed);
    ASSERT_GT(full.steps, 12);
    const std::string path = temp_path("ck_" + to_string(c.scheme) + std::to_string(c.sphere));
    FlowOptions interrupted = o;
    interrupted.checkpoint_every = 5;
    interrupted.checkpoint_path = path;
    interrupted.should_stop = [](Index step, double) { return step == 12; };  // "killed" at 12
    const auto partial = flow(model, mu0, interrupted);
    ASSERT_EQ(partial.status, Status::interrupted);
    FlowOptions resume = o;
    resume.checkpoint_path = path;
    resume.resume = true;
    const auto resumed = flow(model, mu0, resume);  // continues from step 10
    EXPECT_TRUE(resumed.resumed);
    EXPECT_EQ(resumed.resumed_from_step, 10);
    expect_bit_identical(full, resumed);
    // A different option or input is refused.
    FlowOptions other = resume;
    other.time = 3.5;
    EXPECT_THROW(flow(model, mu0, other), invalid_argument);
    MatrixD moved = mu0.atoms();
    moved(0, 0) += 1e-9;
    EXPECT_THROW(flow(model, MeasureD(moved, mu0.weights()), resume), invalid_argument);
    std::remove(path.c_str());
  }
  FlowOptions missing;
  missing.resume = true;
  missing.checkpoint_path = temp_path("missing");
  EXPECT_THROW(flow(canonical, mu0, missing), invalid_argument);
}

TEST(flow_test, tied_kernel_matches_core_kernel) {
  // W_Q = W_K (the canonical model is one): the symmetric kernel against the
  // core streaming kernel, for every head size it serves, several heads,
  // value/output biases, zero weights, sizes that are not whole vectors or
  // blocks, and the larger block size above n = 8192.
  for (unsigned seed = 0; seed < 16; ++seed) {
    const Index k = 1 + seed % 8;
    const Index heads = seed % 3 == 0 ? 2 : 1;
    const auto model = tied_model(k, heads, seed % 2 == 1, 500 + seed);
    ASSERT_TRUE(detail::tied_query_key(model));
    const Index sizes[] = {1, 7, 9, 300, 1001};
    const Index n = sizes[seed % 5];
    const MatrixD x = random_points(n, k * heads, 600 + seed, seed % 5 == 3 ? 3.0 : 1.0);
    const VectorD w = random_weights(n, 700 + seed, n > 2 && seed % 4 == 1);
    expect_matches_core(kernel_field(FieldKernel::tied_small_dim, model, w, x), model, x, w, 1e-11,
                        "seed " + std::to_string(seed));
  }
  {
    const auto model = ModelD::canonical(2, 1.0);
    const MatrixD x = random_points(9000, 2, 11);
    const VectorD w = random_weights(9000, 12, true);
    expect_matches_core(kernel_field(FieldKernel::tied_small_dim, model, w, x), model, x, w, 1e-11,
                        "n = 9000 (256-wide blocks)");
  }
  // Underflow: far-apart particles with a large beta leave some rows with a
  // vanishing shifted sum; they are recomputed exactly.
  const auto model = ModelD::canonical(3, 400.0);
  MatrixD x = random_points(300, 3, 7);
  x.row(0) *= 30;
  x.row(1) *= 0.01;
  const VectorD w = VectorD::Constant(300, 1.0 / 300);
  ASSERT_TRUE(detail::tied_query_key(model));
  expect_matches_core(kernel_field(FieldKernel::tied_small_dim, model, w, x), model, x, w, 1e-9,
                      "underflow fallback");
  // Untied models are not taken for tied ones.
  EXPECT_FALSE(detail::tied_query_key(ModelD::random(4, 1, false, 3)));
}

// Eight-lane vectors by value: without AVX-512 GCC notes an ABI difference.
#pragma GCC diagnostic ignored "-Wpsabi"
TEST(flow_test, vector_exp_is_accurate) {
  // The exponential of the tied kernels against long double: within 3 units of
  // 2^-53 relative (measured 1.8), over the whole range the kernels use and
  // many decades of small arguments; exact at 0; positive and finite beyond.
  namespace v = detail::vexp;
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> wide(-1, 708), decades(-40, 2.8);
  double worst = 0;
  for (int it = 0; it < 200000; ++it) {
    v::Vd x;
    for (int l = 0; l < v::kLanes; ++l) x[l] = it % 2 ? wide(rng) : std::pow(10.0, decades(rng));
    const v::Vd g = v::exp_negative(x);
    // The same exponential given in sixteenths of a bit (y = -16 x / ln 2).
    const v::Vd y = x * -v::kSixteenthsPerNat;
    const v::Vd g2 = v::exp2_sixteenths(y);
    for (int l = 0; l < v::kLanes; ++l) {
      const long double ref = std::exp(-static_cast<long double>(x[l]));
      worst = std::max(worst, static_cast<double>(std::fabs((g[l] - ref) / ref)));
      const long double ref2 = std::exp2(static_cast<long double>(y[l]) / 16);
      worst = std::max(worst, static_cast<double>(std::fabs((g2[l] - ref2) / ref2)));
    }
  }
  EXPECT_LT(worst, 3 * std::ldexp(1.0, -53));
  const v::Vd edge = v::exp_negative(v::Vd{0, 708, 709, 1e6, 1e300, -0.0, 1e-300, 0.5});
  EXPECT_EQ(edge[0], 1.0);
  for (int l = 1; l < 5; ++l) EXPECT_TRUE(edge[l] > 0 && edge[l] < 1e-307) << l;
  EXPECT_EQ(edge[5], 1.0);
  EXPECT_EQ(edge[6], 1.0);
  EXPECT_NEAR(edge[7], std::exp(-0.5), 1e-16);
  const v::Vd edge2 = v::exp2_sixteenths(v::Vd{0, -16343, -16400, -1e6, -1e300, -0.0, 1e-300, -8});
  EXPECT_EQ(edge2[0], 1.0);
  for (int l = 1; l < 5; ++l) EXPECT_TRUE(edge2[l] > 0 && edge2[l] < 1e-307) << l;
  EXPECT_EQ(edge2[5], 1.0);
  EXPECT_EQ(edge2[6], 1.0);
  EXPECT_NEAR(edge2[7], std::sqrt(0.5), 2e-16);
}

TEST(flow_test, tied_gemm_kernel_matches_core_kernel) {
  // Head sizes above 8: the symmetric kernel on the attention module's tiles.
  for (unsigned seed = 0; seed < 10; ++seed) {
    const Index ks[] = {9, 16, 33, 64};
    const Index k = ks[seed % 4];
    const Index heads = seed % 3 == 0 ? 2 : 1;
    const auto model = tied_model(k, heads, seed % 2 == 1, 900 + seed);
    const Index sizes[] = {1, 95, 97, 300, 1001};
    const Index n = sizes[seed % 5];
    const MatrixD x = random_points(n, k * heads, 910 + seed, seed % 5 == 3 ? 2.0 : 1.0);
    const VectorD w = random_weights(n, 920 + seed, n > 2 && seed % 4 == 1);
    expect_matches_core(kernel_field(FieldKernel::tied_gemm, model, w, x), model, x, w, 1e-11,
                        "seed " + std::to_string(seed));
  }
  // From n = 2048 on the blocks are twice as large (and the last one narrower).
  {
    const auto model = tied_model(16, 1, true, 940);
    const MatrixD x = random_points(2101, 16, 941);
    const VectorD w = random_weights(2101, 942, true);
    expect_matches_core(kernel_field(FieldKernel::tied_gemm, model, w, x), model, x, w, 1e-11,
                        "n = 2101");
  }
  // Identity projections are copied, not multiplied: two heads of the
  // identity with value and output biases, and a non-identity W_O.
  for (int variant = 0; variant < 2; ++variant) {
    auto model = ModelD::canonical(32, 0.7);
    model.num_heads = 2;
    model.b_v = random_points(1, 32, 930).row(0).transpose();
    model.b_o = random_points(1, 32, 931).row(0).transpose();
    if (variant == 1) model.w_o = random_points(32, 32, 932) / 4;
    const MatrixD x = random_points(250, 32, 933 + variant);
    const VectorD w = random_weights(250, 935 + variant, variant == 1);
    ASSERT_TRUE(detail::tied_query_key(model));
    expect_matches_core(kernel_field(FieldKernel::tied_gemm, model, w, x), model, x, w, 1e-11,
                        "identity projections, variant " + std::to_string(variant));
  }
  // Underflowed rows are recomputed exactly.
  const auto model = ModelD::canonical(16, 100.0);
  MatrixD x = random_points(200, 16, 17);
  x.row(0) *= 20;
  x.row(1) *= 0.01;
  const VectorD w = VectorD::Constant(200, 1.0 / 200);
  expect_matches_core(kernel_field(FieldKernel::tied_gemm, model, w, x), model, x, w, 1e-9,
                      "underflow fallback");
  // And the flow takes it for the canonical model in R^64.
  const MatrixD x64 = random_points(150, 64, 18);
  FlowOptions o;
  o.steps = 2;
  const auto r = flow(ModelD::canonical(64, 1.0), MeasureD::empirical(x64), o);
  EXPECT_EQ(r.status, Status::completed);
}

TEST(flow_test, tied_kernel_does_not_depend_on_thread_count) {
  const int threads = omp_get_max_threads();
  for (const Index n : {700, 2101}) {
    const auto model = ModelD::canonical(n < 1000 ? 64 : 16, 1.0);
    const MatrixD x = random_points(n, model.w_q.cols(), 83);
    const VectorD w = random_weights(n, 84, true);
    MatrixD first;
    for (int t : {2, 1, 1, 3}) {
      omp_set_num_threads(t);
      const MatrixD f = kernel_field(FieldKernel::tied_gemm, model, w, x);
      if (first.size() == 0) {
        first = f;
      } else {
        EXPECT_EQ(std::memcmp(first.data(), f.data(), sizeof(double) * first.size()), 0)
            << "n = " << n << ", " << t << " threads";
      }
    }
  }
  const auto model = ModelD::canonical(3, 1.0);
  const MatrixD x = random_points(3001, 3, 81);
  const VectorD w = random_weights(3001, 82, true);
  MatrixD first;
  // Repeated calls too: buffers land at other addresses (this caught an
  // alignment-dependent rounding).
  for (int t : {2, 1, 1, 2, 3, 5}) {
    omp_set_num_threads(t);
    const MatrixD f = kernel_field(FieldKernel::tied_small_dim, model, w, x);
    if (first.size() == 0) {
      first = f;
    } else {
      EXPECT_EQ(std::memcmp(first.data(), f.data(), sizeof(double) * first.size()), 0)
          << t << " threads, max difference " << (first - f).cwiseAbs().maxCoeff();
    }
  }
  omp_set_num_threads(threads);
}

TEST(flow_test, kernel_entry_point_matches_streaming_kernel) {
  // attention_field_kernel against attention_field on random inputs, for every
  // kernel it chooses: small head dimension (self-attention, and queries that
  // are not the keys), tied small and large head dimensions, and the streaming
  // kernel itself (large untied heads, the l2 potential, explicit blocks);
  // zero weights included. Each result is the same bits on 1 and 2 threads.
  struct Case {
    ModelD model;
    bool self;
    AttendOptions options;
    FieldKernel kernel;
  };
  AttendOptions blocks;
  blocks.query_block = 40;
  blocks.key_block = 64;
  const std::vector<Case> cases = {
      {ModelD::random(5, 1, true, 801), true, {}, FieldKernel::small_dim},
      {ModelD::random(8, 2, true, 802), true, {}, FieldKernel::small_dim},
      {ModelD::random(6, 3, false, 803), false, {}, FieldKernel::small_dim},
      {ModelD::canonical(3, 2.0), false, {}, FieldKernel::small_dim},
      {tied_model(4, 2, true, 804), true, {}, FieldKernel::tied_small_dim},
      {ModelD::canonical(3, 2.0), true, {}, FieldKernel::tied_small_dim},
      {tied_model(12, 2, true, 805), true, {}, FieldKernel::tied_gemm},
      {ModelD::canonical(40, 0.5), true, {}, FieldKernel::tied_gemm},
      {ModelD::random(16, 1, true, 806), true, {}, FieldKernel::streaming},
      {tied_model(12, 1, false, 807), false, {}, FieldKernel::streaming},
      {ModelD::random(4, 1, true, 808, Potential::l2), true, {}, FieldKernel::streaming},
      {ModelD::canonical(3, 2.0), true, blocks, FieldKernel::streaming},
  };
  const int threads = omp_get_max_threads();
  for (size_t c = 0; c < cases.size(); ++c) {
    const auto& [model, self, options, kernel] = cases[c];
    const std::string what = "case " + std::to_string(c);
    const Index n = 333 + 50 * static_cast<Index>(c % 3), d = model.w_q.cols();
    const MatrixD keys = random_points(n, d, 810 + c);
    const MatrixD others = random_points(n / 2 + 7, d, 830 + c);
    const MatrixD& queries = self ? keys : others;
    const VectorD w = random_weights(n, 850 + c, c % 2 == 0);
    ASSERT_EQ(detail::field_kernel(model, options, self), kernel) << what;
    const detail::KeyWeights<double> prepared = detail::key_weights(w);
    MatrixD first;
    for (int t : {1, 2}) {
      omp_set_num_threads(t);
      MatrixD out;
      detail::attention_field_kernel<double>(model, keys, prepared, queries, options, out);
      if (first.size() == 0) {
        const MatrixD ref = attention_field(model, MeasureD(keys, w), queries, options);
        ASSERT_EQ(out.rows(), queries.rows()) << what;
        ASSERT_TRUE(out.allFinite()) << what;
        EXPECT_LT((out - ref).cwiseAbs().maxCoeff(), 1e-12 * (1 + ref.cwiseAbs().maxCoeff()))
            << what;
        first = out;
      } else {
        EXPECT_EQ(std::memcmp(first.data(), out.data(), sizeof(double) * first.size()), 0)
            << what << ", " << t << " threads";
      }
    }
  }
  omp_set_num_threads(threads);
  // Single precision: the small-dimension kernel against the streaming one.
  const auto model = ModelD::random(4, 2, true, 870).cast<float>();
  const MatrixF x = random_points(200, 4, 871).cast<float>();
  const VectorF w = random_weights(200, 872, true).cast<float>();
  ASSERT_EQ(detail::field_kernel(model, AttendOptions{}, true), FieldKernel::small_dim);
  MatrixF out;
  detail::attention_field_kernel<float>(model, x, detail::key_weights(w), x, {}, out);
  const MatrixF ref = attention_field(model, MeasureF(x, w), x);
  EXPECT_LT((out - ref).cwiseAbs().maxCoeff(), 1e-5f * (1 + ref.cwiseAbs().maxCoeff()));
}

// The streaming fallback of attention_field_kernel against attention_field on
// the Measure of the keys, in one precision: the same bits, on 1 and 2 threads.
template <class Scalar>
void expect_streaming_fallback_bit_identical() {
  using M = Model<Scalar>;
  using Mat = Matrix<Scalar>;
  using Vec = Vector<Scalar>;
  AttendOptions causal;
  causal.causal = true;
  AttendOptions blocks;
  blocks.query_block = 24;
  blocks.key_block = 40;
  blocks.causal = true;
  struct Case {
    M model;
    AttendOptions options;
    bool self;
  };
  const std::vector<Case> cases = {
      {ModelD::random(16, 1, true, 901).cast<Scalar>(), {}, true},
      {ModelD::random(16, 1, true, 902).cast<Scalar>(), causal, true},
      {ModelD::random(24, 2, false, 903).cast<Scalar>(), {}, false},
      {ModelD::random(6, 2, true, 904, Potential::l2).cast<Scalar>(), causal, true},
      {ModelD::random(12, 1, true, 905, Potential::cosine).cast<Scalar>(), {}, false},
      {ModelD::random(4, 1, true, 906).cast<Scalar>(), blocks, true},
  };
  const int threads = omp_get_max_threads();
  for (size_t c = 0; c < cases.size(); ++c) {
    const auto& [model, options, self] = cases[c];
    const std::string what = "case " + std::to_string(c);
    const Index n = 301 + 37 * static_cast<Index>(c), d = model.w_q.cols();
    const Mat keys = random_points(n, d, 910 + c).cast<Scalar>();
    const Mat others = random_points(n / 3 + 5, d, 920 + c).cast<Scalar>();
    const Mat& queries = self ? keys : others;
    // Weights that do not sum to 1 (the Measure renormalizes them), with zero
    // weights inside and at the end, never at position 0 (causal masks).
    Vec w = (random_weights(n, 930 + c) * 3.7).cast<Scalar>();
    for (Index j = 5; j < n; j += 17) w[j] = 0;
    w[n - 1] = 0;
    ASSERT_EQ(detail::field_kernel(model, options, self), FieldKernel::streaming) << what;
    const detail::KeyWeights<Scalar> prepared = detail::key_weights(w);
    const Measure<Scalar> mu(keys, w);
    for (int t : {1, 2}) {
      omp_set_num_threads(t);
      const Mat ref = attention_field(model, mu, queries, options);
      Mat out;
      detail::attention_field_kernel<Scalar>(model, keys, prepared, queries, options, out);
      ASSERT_EQ(out.rows(), ref.rows()) << what;
      ASSERT_EQ(out.cols(), ref.cols()) << what;
      EXPECT_EQ(std::memcmp(out.data(), ref.data(), sizeof(Scalar) * ref.size()), 0)
          << what << ", " << t << " threads";
    }
    omp_set_num_threads(threads);
    if (options.causal) {
      // Query 0 sees only a token of zero weight: both refuse it alike.
      Vec w0 = w;
      w0[0] = 0;
      Mat out;
      EXPECT_THROW(detail::attention_field_kernel<Scalar>(model, keys, detail::key_weights(w0),
                                                          queries, options, out),
                   invalid_argument)
          << what;
      EXPECT_THROW(attention_field(model, Measure<Scalar>(keys, w0), queries, options),
                   invalid_argument)
          << what;
    }
  }
}

TEST(flow_test, streaming_fallback_equals_attention_field_bit_for_bit) {
  // The fallback takes the keys of positive weight and the log-weights that
  // key_weights prepared, without a Measure: the same operations as
  // attention_field, so the same bits.
  expect_streaming_fallback_bit_identical<double>();
  expect_streaming_fallback_bit_identical<float>();
}

TEST(flow_test, key_weights_are_checked_and_prepared_once) {
  VectorD w(5);
  w << 0.25, 0, 0.25, 0.5, 0.25;
  const auto k = detail::key_weights(w);
  EXPECT_EQ(k.weights, w);
  EXPECT_EQ(k.positive, (std::vector<Index>{0, 2, 3, 4}));
  for (Index j : k.positive) EXPECT_EQ(k.log_weights[j], std::log(w[j])) << j;
  EXPECT_EQ(k.log_weights[1], -std::numeric_limits<double>::infinity());
  EXPECT_EQ(k.max_log_weight, std::log(0.5));
  EXPECT_EQ(k.packed_log_weights, VectorD(w.array().log().matrix()));
  for (const double bad : {-0.1, std::nan(""), std::numeric_limits<double>::infinity()}) {
    VectorD v = w;
    v[2] = bad;
    EXPECT_THROW(detail::key_weights(v), invalid_argument) << bad;
  }
  EXPECT_THROW(detail::key_weights(VectorD(VectorD::Zero(3))), invalid_argument);
  // flow_field checks its inputs before it evaluates (the flow checks them once).
  const auto model = ModelD::canonical(3, 1.0);
  const MatrixD x = random_points(5, 3, 880);
  FlowOptions o;
  EXPECT_THROW(flow_field(model, VectorD(VectorD::Ones(4)), x, o), invalid_argument);
  EXPECT_THROW(flow_field(ModelD::canonical(4, 1.0), w, x, o), invalid_argument);
  MatrixD nan = x;
  nan(3, 1) = std::nan("");
  EXPECT_THROW(flow_field(model, w, nan, o), invalid_argument);
  EXPECT_THROW(flow_field(model, w, MatrixD(0, 3), o), invalid_argument);
}

TEST(flow_test, field_into_a_work_matrix) {
  // The in-place form gives the same bits as the returning one: into an empty
  // matrix, one of the right size (storage kept where promised), one of another
  // size, and the particles' own matrix; for each kernel family.
  const std::vector<std::pair<ModelD, FlowOptions>> cases = [] {
    FlowOptions sphere;
    sphere.sphere = true;
    FlowOptions unnormalized;
    unnormalized.field = FlowField::unnormalized;
    return std::vector<std::pair<ModelD, FlowOptions>>{
        {ModelD::canonical(3, 2.0), FlowOptions{}},
        {ModelD::canonical(3, 2.0), sphere},
        {ModelD::canonical(3, 2.0), unnormalized},
        {ModelD::canonical(24, 0.5), FlowOptions{}},
        {ModelD::random(6, 2, true, 51), FlowOptions{}}};
  }();
  for (size_t c = 0; c < cases.size(); ++c) {
    const auto& [model, options] = cases[c];
    MatrixD x = random_points(130, model.w_q.cols(), 60 + c);
    if (options.sphere) x.rowwise().normalize();
    const VectorD w = random_weights(130, 70 + c);
    const MatrixD ref = flow_field(model, w, x, options);
    MatrixD out;
    flow_field(model, w, x, options, out);
    EXPECT_EQ(out, ref) << c;
    const double* storage = out.data();
    flow_field(model, w, x, options, out);
    EXPECT_EQ(out, ref) << c;
    // Storage is reused by the tied query/key kernels (not the unnormalized
    // field nor untied models).
    if (c != 2 && c != 4) {
      EXPECT_EQ(out.data(), storage) << c;
    }
    MatrixD other(3, 2);
    flow_field(model, w, x, options, other);
    EXPECT_EQ(other, ref) << c;
    MatrixD self = x;
    flow_field(model, w, self, options, self);
    EXPECT_EQ(self, ref) << c;
  }
}

TEST(flow_test, results_do_not_depend_on_thread_count) {
  const auto model = ModelD::random(6, 2, true, 61);
  const MeasureD mu0 = MeasureD::empirical(random_points(700, 6, 62));
  FlowOptions o;
  o.steps = 3;
  o.scheme = FlowScheme::heun;
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const auto one = flow(model, mu0, o);
  omp_set_num_threads(std::max(2, threads));
  const auto many = flow(model, mu0, o);
  omp_set_num_threads(threads);
  expect_bit_identical(one, many);
}

TEST(flow_test, float_precision) {
  const auto model = ModelD::random(4, 1, false, 71);
  const MeasureD mu0 = MeasureD::empirical(random_points(30, 4, 72));
  FlowOptions o;
  o.steps = 20;
  o.scheme = FlowScheme::rk4;
  const auto r64 = flow(model, mu0, o);
  const auto r32 = flow(model.cast<float>(), mu0.cast<float>(), o);
  EXPECT_LT(max_distance(r32.particles.cast<double>(), r64.particles), 1e-4);
}

TEST(flow_test, validation) {
  const auto model = ModelD::canonical(3, 1.0);
  const MeasureD mu0 = MeasureD::empirical(random_points(5, 3, 1));
  auto bad = [&](auto mutate) {
    FlowOptions o;
    mutate(o);
    EXPECT_THROW(flow(model, mu0, o), invalid_argument);
  };
  bad([](FlowOptions& o) { o.time = 0; });
  bad([](FlowOptions& o) { o.time = std::nan(""); });
  bad([](FlowOptions& o) { o.steps = 0; });
  bad([](FlowOptions& o) { o.tolerance = -1; });
  bad([](FlowOptions& o) { o.save_every = -1; });
  bad([](FlowOptions& o) { o.checkpoint_every = 2; });  // no path
  bad([](FlowOptions& o) {  // causal flows exist (flow_norm_test); not causal Sinkhorn ones
    o.attention.causal = true;
    o.attention.normalization = Normalization::sinkhorn;
  });
  bad([](FlowOptions& o) { o.attention.residual = true; });
  bad([](FlowOptions& o) { o.cluster_tolerance = -1; });
  EXPECT_THROW(parse_flow_scheme("rk45"), invalid_argument);
  EXPECT_EQ(parse_flow_scheme("dopri5"), FlowScheme::dopri5);
  // Output dimension must equal the input dimension.
  ModelD wide = ModelD::random(3, 1, false, 2);
  wide.w_o = MatrixD::Ones(4, 3);
  EXPECT_THROW(flow(wide, mu0, FlowOptions{}), invalid_argument);
  // A zero atom cannot be normalized onto the sphere.
  MatrixD zero = mu0.atoms();
  zero.row(2).setZero();
  FlowOptions sphere;
  sphere.sphere = true;
  EXPECT_THROW(flow(model, MeasureD::empirical(zero), sphere), invalid_argument);
  double beta = 0;
  EXPECT_TRUE(is_canonical(ModelD::canonical(3, 2.5), &beta));
  EXPECT_NEAR(beta, 2.5, 1e-15);
  EXPECT_FALSE(is_canonical(ModelD::random(3, 1, false, 3)));
}

TEST(flow_test, non_finite_is_a_status) {
  // A model with huge values blows up under Euler with a large step.
  ModelD model = ModelD::canonical(2, 1.0);
  model.w_v *= 1e300;
  model.w_o *= 1e10;
  FlowOptions o;
  o.steps = 5;
  const auto r = flow(model, MeasureD::empirical(random_points(4, 2, 9)), o);
  EXPECT_EQ(r.status, Status::non_finite);
  EXPECT_TRUE(r.particles.allFinite());
}

// ---- checkpoint integrity (format: src/flow/checkpoint.hpp) ---------------------

std::string read_bytes(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  std::string out;
  char buf[4096];
  for (std::size_t n; f && (n = std::fread(buf, 1, sizeof buf, f)) > 0;) out.append(buf, n);
  if (f) std::fclose(f);
  return out;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  std::fwrite(bytes.data(), 1, bytes.size(), f);
  std::fclose(f);
}

// Expects invalid_argument whose message contains `fragment`.
template <class F>
void expect_refused(F&& f, const std::string& fragment) {
  try {
    f();
    ADD_FAILURE() << "accepted; expected a refusal mentioning '" << fragment << "'";
  } catch (const invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

// A small run (canonical model: energies; cluster counts; frames) stopped at step
// 4 with a checkpoint there, and its uninterrupted result.
struct SmallCheckpoint {
  ModelD model = ModelD::canonical(2, 1.5);
  MeasureD mu0{random_points(3, 2, 81), random_weights(3, 82)};
  FlowOptions options;
  std::string path = temp_path("ck_small");
  std::string bytes;
  SmallCheckpoint() {
    options.time = 1;
    options.steps = 6;
    options.scheme = FlowScheme::heun;
    options.save_every = 2;
    FlowOptions first = options;
    first.checkpoint_every = 4;
    first.checkpoint_path = path;
    first.should_stop = [](Index step, double) { return step == 4; };
    flow(model, mu0, first);
    bytes = read_bytes(path);
    options.checkpoint_path = path;
    options.resume = true;
  }
  ~SmallCheckpoint() { std::remove(path.c_str()); }
};

TEST(flow_test, checkpoint_round_trip_in_memory) {
  SmallCheckpoint ck;
  ASSERT_GT(ck.bytes.size(), 100u);
  detail::CheckpointState<double> s;
  FlowResult<double> r;
  detail::parse_checkpoint<double>(ck.bytes, "ck", s, r);
  EXPECT_EQ(s.step, 4);
  EXPECT_EQ(s.fingerprint, flow_fingerprint(ck.model, ck.mu0, ck.options));
  EXPECT_EQ(r.frames.size(), 3u);
  EXPECT_EQ(r.energies.size(), 3u);
  EXPECT_EQ(r.cluster_counts.size(), 3u);
  EXPECT_EQ(detail::format_checkpoint(s, r), ck.bytes);
  // The other precision is refused by name.
  detail::CheckpointState<float> sf;
  FlowResult<float> rf;
  expect_refused([&] { detail::parse_checkpoint<float>(ck.bytes, "ck", sf, rf); },
                 "another precision");
}

TEST(flow_test, checkpoint_every_flipped_byte_is_refused) {
  SmallCheckpoint ck;
  const auto intact = flow(ck.model, ck.mu0, ck.options);
  ASSERT_TRUE(intact.resumed);
  for (std::size_t i = 0; i < ck.bytes.size(); ++i) {
    for (unsigned char mask : {0x01, 0x80, 0xff}) {
      std::string bad = ck.bytes;
      bad[i] = static_cast<char>(bad[i] ^ mask);
      detail::CheckpointState<double> s;
      FlowResult<double> r;
      try {
        detail::parse_checkpoint<double>(bad, "ck", s, r);
        ADD_FAILURE() << "a flip of byte " << i << " (mask " << int(mask) << ") was accepted";
      } catch (const invalid_argument&) {
      }
    }
    // Through the file and resume (one flip per byte): refused, or (only for a
    // byte nothing depends on; there is none) the same result.
    std::string bad = ck.bytes;
    bad[i] = static_cast<char>(bad[i] ^ 0x10);
    write_bytes(ck.path, bad);
    try {
      const auto r = flow(ck.model, ck.mu0, ck.options);
      ADD_FAILURE() << "a flip of byte " << i << " was accepted";
      EXPECT_EQ(r.particles, intact.particles);
    } catch (const invalid_argument& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(ck.path), std::string::npos) << what;
      if (i >= 16) {
        EXPECT_NE(what.find("checksum mismatch"), std::string::npos) << i << what;
      }
    }
  }
  // The message for a flip in the middle.
  std::string bad = ck.bytes;
  bad[bad.size() / 2] ^= 0x04;
  write_bytes(ck.path, bad);
  expect_refused([&] { flow(ck.model, ck.mu0, ck.options); },
                 ck.path + ": checksum mismatch: the checkpoint is corrupt");
}

TEST(flow_test, checkpoint_truncated_extended_or_old_is_refused) {
  SmallCheckpoint ck;
  for (std::size_t n = 0; n < ck.bytes.size(); ++n) {
    detail::CheckpointState<double> s;
    FlowResult<double> r;
    EXPECT_THROW(detail::parse_checkpoint<double>(ck.bytes.substr(0, n), "ck", s, r),
                 invalid_argument)
        << n;
  }
  write_bytes(ck.path, ck.bytes.substr(0, ck.bytes.size() - 8));
  expect_refused([&] { flow(ck.model, ck.mu0, ck.options); }, "the file has");
  write_bytes(ck.path, ck.bytes + "x");
  expect_refused([&] { flow(ck.model, ck.mu0, ck.options); }, "checksum mismatch");
  write_bytes(ck.path, ck.bytes.substr(0, 10));
  expect_refused([&] { flow(ck.model, ck.mu0, ck.options); }, "truncated checkpoint");
  write_bytes(ck.path, "not a checkpoint at all");
  expect_refused([&] { flow(ck.model, ck.mu0, ck.options); }, "not a measattn flow checkpoint");
  // Version 1 (no checksum) is refused with a clear message.
  std::string v1 = ck.bytes;
  const std::uint32_t one = 1;
  std::memcpy(v1.data() + 8, &one, 4);
  write_bytes(ck.path, v1);
  expect_refused([&] { flow(ck.model, ck.mu0, ck.options); },
                 "checkpoint format version 1 is not supported");
  // Devices: refused at the preamble.
  FlowOptions dev = ck.options;
  dev.checkpoint_path = "/dev/zero";
  expect_refused([&] { flow(ck.model, ck.mu0, dev); }, "not a measattn flow checkpoint");
}

TEST(flow_test, checkpoint_with_valid_checksum_but_bad_content_is_refused) {
  SmallCheckpoint ck;
  // Rewrites a field and fixes the checksum, as a crafted file would.
  auto crafted = [&](std::size_t at, const void* value, std::size_t n) {
    std::string b = ck.bytes;
    std::memcpy(b.data() + at, value, n);
    uLong crc = crc32(0L, Z_NULL, 0);
    crc = crc32(crc, reinterpret_cast<const Bytef*>(b.data()), 12);
    crc =
        crc32(crc, reinterpret_cast<const Bytef*>(b.data() + 16), static_cast<uInt>(b.size() - 16));
    const auto c = static_cast<std::uint32_t>(crc);
    std::memcpy(b.data() + 12, &c, 4);
    return b;
  };
  auto expect_corrupt = [&](const std::string& b, const std::string& fragment) {
    detail::CheckpointState<double> s;
    FlowResult<double> r;
    expect_refused([&] { detail::parse_checkpoint<double>(b, "ck", s, r); }, fragment);
  };
  // Body: 24 precision(4) fingerprint(8) time(8) step(8) ...
  const double nan = std::nan("");
  expect_corrupt(crafted(36, &nan, 8), "time is not finite");
  const std::int64_t minus = -1;
  expect_corrupt(crafted(44, &minus, 8), "step is negative");
  const std::uint64_t longer = ck.bytes.size();
  expect_corrupt(crafted(16, &longer, 8), "corrupt checkpoint (length)");
  // The particles' shape (after 4 + 8 + 8 + 4 * 8 + 8 + 8 + 1 = 69 bytes of fields).
  const std::int64_t rows = 1'000'000'000'000;
  expect_corrupt(crafted(24 + 69, &rows, 8), "particles shape");
  // An empty but enormous shape (2^40 x 0; found by fuzz_checkpoint: Eigen
  // visits every row of an empty row-major matrix).
  const std::int64_t empty_shape[2] = {std::int64_t{1} << 40, 0};
  expect_corrupt(crafted(24 + 69, empty_shape, 16), "particles shape");
  // A different run's fingerprint: refused as not matching.
  const std::uint64_t other = 12345;
  write_bytes(ck.path, crafted(28, &other, 8));
  expect_refused([&] { flow(ck.model, ck.mu0, ck.options); }, "does not match the arguments");
}

}  // namespace
}  // namespace measattn
