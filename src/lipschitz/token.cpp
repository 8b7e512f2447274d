// Token-level Jacobian of self-attention: exact JVP (dual numbers), VJP (reverse
// mode), power iteration for ||J(X)||_2 and a search maximizing it over X.
// GCC 12 false positive inside its AVX-512 intrinsics when Eigen kernels are inlined.
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <omp.h>

#include <Eigen/Eigenvalues>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "common/parallel.hpp"
#include "lipschitz/engine.hpp"
#include "measattn/error.hpp"
#include "measattn/interrupt.hpp"
#include "measattn/lipschitz.hpp"
#include "measattn/threads.hpp"

namespace measattn {

namespace {

using detail::Dual;
using detail::LayerParams;

void check_tokens(const LayerParams& p, const MatrixD& x, const char* field) {
  if (x.rows() >= 1 && x.cols() == p.d && x.allFinite()) {
    double r = 0;
    for (Index i = 0; i < x.rows(); ++i) r = std::max(r, x.row(i).stableNorm());
    detail::check_layer_range(p, r, field);
  }
  if (x.rows() < 1) throw invalid_argument(std::string(field) + ": no tokens");
  if (x.cols() != p.d)
    throw invalid_argument(std::string(field) + ": tokens have dimension " +
                           std::to_string(x.cols()) + ", the model expects " + std::to_string(p.d));
  if (!x.allFinite()) throw invalid_argument(std::string(field) + ": non-finite entry");
}

MatrixD jvp_impl(const LayerParams& p, const MatrixD& x, const MatrixD& xd) {
  const Index n = x.rows();
  std::vector<Dual> xx(static_cast<size_t>(n * p.d)), lw(static_cast<size_t>(n)),
      out(static_cast<size_t>(n * p.d_out));
  for (Index i = 0; i < n; ++i)
    for (Index c = 0; c < p.d; ++c) xx[i * p.d + c] = Dual(x(i, c), xd(i, c));
  const double l = -std::log(static_cast<double>(n));
  for (auto& v : lw) v = Dual(l);
  detail::layer_forward(p, xx.data(), lw.data(), n, out.data());
  MatrixD r(n, p.d_out);
  for (Index i = 0; i < n; ++i)
    for (Index o = 0; o < p.d_out; ++o) r(i, o) = out[i * p.d_out + o].e;
  return r;
}

MatrixD vjp_impl(const LayerParams& p, const MatrixD& x, const MatrixD& g) {
  const Index n = x.rows();
  std::vector<double> lw(static_cast<size_t>(n), -std::log(static_cast<double>(n))),
      lbar(static_cast<size_t>(n), 0.0);
  MatrixD xbar = MatrixD::Zero(n, p.d);
  detail::layer_vjp(p, x.data(), lw.data(), n, g.data(), xbar.data(), lbar.data());
  return xbar;
}

/// d/dX <u, J(X) v> exactly: the eps-part of the VJP at X + eps v (forward over reverse).
MatrixD second_impl(const LayerParams& p, const MatrixD& x, const MatrixD& v, const MatrixD& u) {
  const Index n = x.rows();
  std::vector<Dual> xx(static_cast<size_t>(n * p.d)), lw(static_cast<size_t>(n)),
      g(static_cast<size_t>(n * p.d_out)), xbar(static_cast<size_t>(n * p.d), Dual(0.0)),
      lbar(static_cast<size_t>(n), Dual(0.0));
  for (Index i = 0; i < n; ++i)
    for (Index c = 0; c < p.d; ++c) xx[i * p.d + c] = Dual(x(i, c), v(i, c));
  for (Index i = 0; i < n; ++i)
    for (Index o = 0; o < p.d_out; ++o) g[i * p.d_out + o] = Dual(u(i, o));
  const double l = -std::log(static_cast<double>(n));
  for (auto& w : lw) w = Dual(l);
  detail::layer_vjp(p, xx.data(), lw.data(), n, g.data(), xbar.data(), lbar.data());
  MatrixD r(n, p.d);
  for (Index i = 0; i < n; ++i)
    for (Index c = 0; c < p.d; ++c) r(i, c) = xbar[i * p.d + c].e;
  return r;
}

struct Power {
  double value = 0;
  MatrixD v, u;  // unit right / left singular vectors (estimates)
  int iterations = 0;
  bool converged = false;
};

Power power_iteration(const LayerParams& p, const MatrixD& x, MatrixD v, int iterations,
                      double tol) {
  Power r;
  v /= std::max(v.stableNorm(), 1e-300);
  double prev = -1;
  for (int it = 0; it < iterations; ++it) {
    measattn::detail::check_interrupt();  // Ctrl-C from Python (no-op without a handler)
    const MatrixD jv = jvp_impl(p, x, v);
    const double s = jv.stableNorm();
    r.value = s;
    r.v = v;
    r.u = s > 0 ? MatrixD(jv / s) : MatrixD(MatrixD::Zero(jv.rows(), jv.cols()));
    r.iterations = it + 1;
    if (s == 0) {
      r.converged = true;
      break;
    }
    if (prev >= 0 && std::abs(s - prev) <= tol * s) {
      r.converged = true;
      break;
    }
    prev = s;
    // J^T (J v / s): the same direction as J^T J v, without squaring s.
    MatrixD w = vjp_impl(p, x, r.u);
    const double wn = w.stableNorm();
    if (!(wn > 0)) {
      r.converged = true;
      break;
    }
    v = w / wn;
  }
  return r;
}

MatrixD random_matrix(std::mt19937_64& rng, Index r, Index c, double scale) {
  std::normal_distribution<double> nd(0.0, 1.0);
  MatrixD m(r, c);
  for (Index i = 0; i < r; ++i)
    for (Index j = 0; j < c; ++j) m(i, j) = scale * nd(rng);
  return m;
}

void project_rows_to_ball(MatrixD& x, double radius) {
  if (!(radius > 0)) return;
  for (Index i = 0; i < x.rows(); ++i) {
    const double nn = x.row(i).norm();
    if (nn > radius) x.row(i) *= radius / nn;
  }
}

}  // namespace

void TokenJacobianOptions::validate() const {
  if (iterations < 1) throw invalid_argument("iterations: must be >= 1");
  if (!(tolerance >= 0)) throw invalid_argument("tolerance: must be >= 0");
}

void TokenSearchOptions::validate() const {
  if (tokens < 1) throw invalid_argument("tokens: must be >= 1");
  if (restarts < 1) throw invalid_argument("restarts: must be >= 1");
  if (steps < 0) throw invalid_argument("steps: must be >= 0");
  if (!(step_size > 0) || !std::isfinite(step_size))
    throw invalid_argument("step_size: must be positive");
  if (!(radius >= 0) || !std::isfinite(radius)) throw invalid_argument("radius: must be >= 0");
  if (threads < 0 || threads > kMaxThreads)
    throw invalid_argument("threads: must be in [0, " + std::to_string(kMaxThreads) + "]");
}

MatrixD token_jvp(const Model<double>& model, const MatrixD& x, const MatrixD& x_dot,
                  bool residual) {
  const LayerParams p = LayerParams::from(model, residual);
  check_tokens(p, x, "tokens");
  if (x_dot.rows() != x.rows() || x_dot.cols() != x.cols())
    throw invalid_argument("x_dot: shape differs from the tokens");
  return jvp_impl(p, x, x_dot);
}

MatrixD token_vjp(const Model<double>& model, const MatrixD& x, const MatrixD& g_bar,
                  bool residual) {
  const LayerParams p = LayerParams::from(model, residual);
  check_tokens(p, x, "tokens");
  if (g_bar.rows() != x.rows() || g_bar.cols() != p.d_out)
    throw invalid_argument("g_bar: shape must be n x d_out");
  return vjp_impl(p, x, g_bar);
}

MatrixD token_jacobian(const Model<double>& model, const MatrixD& x, bool residual) {
  const LayerParams p = LayerParams::from(model, residual);
  check_tokens(p, x, "tokens");
  const Index n = x.rows();
  MatrixD jac(n * p.d_out, n * p.d);
  MatrixD e = MatrixD::Zero(n, p.d);
  for (Index i = 0; i < n; ++i)
    for (Index c = 0; c < p.d; ++c) {
      e(i, c) = 1;
      const MatrixD col = jvp_impl(p, x, e);
      e(i, c) = 0;
      for (Index r = 0; r < n; ++r)
        for (Index o = 0; o < p.d_out; ++o) jac(r * p.d_out + o, i * p.d + c) = col(r, o);
    }
  return jac;
}

TokenJacobianResult token_jacobian_norm(const Model<double>& model, const MatrixD& x,
                                        const TokenJacobianOptions& options) {
  options.validate();
  const LayerParams p = LayerParams::from(model, options.residual);
  check_tokens(p, x, "tokens");
  std::mt19937_64 rng(options.seed);
  const Power pw = power_iteration(p, x, random_matrix(rng, x.rows(), p.d, 1.0), options.iterations,
                                   options.tolerance);
  TokenJacobianResult r;
  r.value = pw.value;
  r.iterations = pw.iterations;
  r.status = pw.converged ? Status::converged : Status::iteration_limit;
  r.message = pw.converged ? "relative change below tolerance after " +
                                 std::to_string(pw.iterations) + " iterations"
                           : "iteration cap " + std::to_string(options.iterations) + " reached";
  return r;
}

MatrixD castin_adversarial_tokens(const Model<double>& model, Index n, double radius) {
  if (n < 1) throw invalid_argument("tokens: must be >= 1");
  const Head<double> hd = model.head(0);
  const MatrixD a = hd.q.transpose() * hd.k / hd.tau;
  if (a.rows() != a.cols()) throw invalid_argument("model: query and key dimensions differ");
  const MatrixD s = 0.5 * (a + a.transpose());
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(s);
  const auto& ev = es.eigenvalues();
  const Index last = ev.size() - 1;
  const bool positive = std::abs(ev[last]) >= std::abs(ev[0]);
  VectorD u = es.eigenvectors().col(positive ? last : 0);
  MatrixD x(n, a.rows());
  for (Index i = 0; i < n; ++i) {
    double f;
    if (positive)
      f = i == 0 ? 1.0 : 0.5;
    else
      f = i == 0 ? -1.0 : 1.0;
    x.row(i) = radius * f * u.transpose();
  }
  return x;
}

TokenSearchResult token_lipschitz_lower_bound(const Model<double>& model,
                                              const TokenSearchOptions& options) {
  options.validate();
  const LayerParams p = LayerParams::from(model, options.residual);
  detail::check_layer_range(p, options.radius > 0 ? options.radius : 1.0, "radius");
  const Index n = options.tokens, d = p.d;
  const double scale = options.radius > 0 ? options.radius : 1.0;
  const bool outlier_starts = detail::with_potential(
      model.potential, [](auto pot) { return decltype(pot)::kOutlierStarts; });
  struct Out {
    double value = 0;
    MatrixD x;
    std::int64_t evals = 0;
  };
  std::vector<Out> outs(static_cast<size_t>(options.restarts));
  const int threads =
      options.threads > 0 ? options.threads : std::min(omp_get_max_threads(), kMaxThreads);
  detail::RegionGuard guard;  // exceptions and Ctrl-C (polled per power iteration)
#pragma omp parallel for schedule(dynamic) num_threads(threads)
  for (int r = 0; r < options.restarts; ++r) {
    guard.run([&] {
      std::mt19937_64 rng(options.seed * 0x9E3779B97F4A7C15ULL + static_cast<std::uint64_t>(r));
      MatrixD x;
      const int kind = r % 4;
      if (kind == 1 || (kind == 3 && outlier_starts)) {
        // One outlier at distance t from a cluster at 0 (Kim's worst cases).
        x = random_matrix(rng, n, d, 1e-3 * scale);
        VectorD e = random_matrix(rng, d, 1, 1.0).col(0);
        e /= std::max(e.norm(), 1e-300);
        const double t = scale * (0.5 + 0.5 * (r / 4 % 6));
        x.row(0) += t * e.transpose();
      } else if (kind == 3) {
        x = castin_adversarial_tokens(model, n, scale);
        x += random_matrix(rng, n, d, 1e-3 * scale);
      } else {
        x = random_matrix(rng, n, d, scale / std::sqrt(static_cast<double>(d)));
      }
      project_rows_to_ball(x, options.radius);
      Out o;
      Power pw = power_iteration(p, x, random_matrix(rng, n, d, 1.0), 60, 1e-10);
      o.evals += pw.iterations;
      o.value = pw.value;
      o.x = x;
      double eta = options.step_size;
      for (int step = 0; step < options.steps && eta > 1e-9; ++step) {
        const MatrixD g = second_impl(p, x, pw.v, pw.u);
        const double gn = g.norm();
        if (!(gn > 0)) break;
        MatrixD xn = x + (eta * scale / gn) * g;
        project_rows_to_ball(xn, options.radius);
        Power pn = power_iteration(p, xn, pw.v, 30, 1e-10);
        o.evals += pn.iterations;
        if (pn.value > pw.value) {
          x = std::move(xn);
          pw = std::move(pn);
          eta *= 1.25;
          if (pw.value > o.value) {
            o.value = pw.value;
            o.x = x;
          }
        } else {
          eta *= 0.5;
        }
      }
      // Certify: a long power iteration at the best point (||J v|| <= ||J||).
      const Power fin = power_iteration(p, o.x, random_matrix(rng, n, d, 1.0), 500, 1e-13);
      o.evals += fin.iterations;
      o.value = std::max(fin.value, 0.0);
      outs[static_cast<size_t>(r)] = std::move(o);
    });
  }
  guard.finish();
  TokenSearchResult res;
  for (auto& o : outs) {
    res.evaluations += o.evals;
    if (o.value > res.value || res.tokens.size() == 0) {
      res.value = o.value;
      res.tokens = o.x;
    }
  }
  return res;
}

}  // namespace measattn
