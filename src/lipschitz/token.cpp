// Token-level Jacobian of self-attention: exact JVP (dual numbers), VJP (reverse
// mode), ||J(X)||_2 by Lanczos (token_krylov.cpp) and a search maximizing it over X.
// GCC 12 false positive inside its AVX-512 intrinsics when Eigen kernels are inlined.
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <omp.h>

#include <Eigen/Eigenvalues>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "common/collectives.hpp"
#include "common/parallel.hpp"
#include "lipschitz/engine.hpp"
#include "lipschitz/token.hpp"
#include "measattn/error.hpp"
#include "measattn/interrupt.hpp"
#include "measattn/lipschitz.hpp"
#include "measattn/progress.hpp"
#include "measattn/threads.hpp"

namespace measattn {

namespace detail {

void check_tokens(const LayerParams& p, const MatrixD& x, const char* field) {
  if (x.rows() >= 1 && x.cols() == p.d && x.allFinite()) {
    double r = 0;
    for (Index i = 0; i < x.rows(); ++i) r = std::max(r, x.row(i).stableNorm());
    check_layer_range(p, r, field);
  }
  if (x.rows() < 1) throw invalid_argument(std::string(field) + ": no tokens");
  if (x.cols() != p.d)
    throw invalid_argument(std::string(field) + ": tokens have dimension " +
                           std::to_string(x.cols()) + ", the model expects " + std::to_string(p.d));
  if (!x.allFinite()) throw invalid_argument(std::string(field) + ": non-finite entry");
}

MatrixD token_jvp_raw(const LayerParams& p, const MatrixD& x, const MatrixD& xd) {
  const Index n = x.rows();
  std::vector<Dual> xx(static_cast<size_t>(n * p.d)), lw(static_cast<size_t>(n)),
      out(static_cast<size_t>(n * p.d_out));
  for (Index i = 0; i < n; ++i)
    for (Index c = 0; c < p.d; ++c) xx[i * p.d + c] = Dual(x(i, c), xd(i, c));
  const double l = -std::log(static_cast<double>(n));
  for (auto& v : lw) v = Dual(l);
  layer_forward(p, xx.data(), lw.data(), n, out.data());
  MatrixD r(n, p.d_out);
  for (Index i = 0; i < n; ++i)
    for (Index o = 0; o < p.d_out; ++o) r(i, o) = out[i * p.d_out + o].e;
  return r;
}

MatrixD token_vjp_raw(const LayerParams& p, const MatrixD& x, const MatrixD& g) {
  const Index n = x.rows();
  std::vector<double> lw(static_cast<size_t>(n), -std::log(static_cast<double>(n))),
      lbar(static_cast<size_t>(n), 0.0);
  MatrixD xbar = MatrixD::Zero(n, p.d);
  layer_vjp(p, x.data(), lw.data(), n, g.data(), xbar.data(), lbar.data());
  return xbar;
}

/// d/dX <u, J(X) v> exactly: the eps-part of the VJP at X + eps v (forward over reverse).
MatrixD token_second_raw(const LayerParams& p, const MatrixD& x, const MatrixD& v,
                         const MatrixD& u) {
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
  layer_vjp(p, xx.data(), lw.data(), n, g.data(), xbar.data(), lbar.data());
  MatrixD r(n, p.d);
  for (Index i = 0; i < n; ++i)
    for (Index c = 0; c < p.d; ++c) r(i, c) = xbar[i * p.d + c].e;
  return r;
}

}  // namespace detail

namespace {

using detail::check_tokens;
using detail::LayerParams;
using detail::token_jvp_raw;
using detail::token_second_raw;
using detail::token_vjp_raw;

MatrixD random_matrix(std::mt19937_64& rng, Index r, Index c, double scale) {
  std::normal_distribution<double> nd(0.0, 1.0);
  MatrixD m(r, c);
  for (Index i = 0; i < r; ++i)
    for (Index j = 0; j < c; ++j) m(i, j) = scale * nd(rng);
  return m;
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
  return token_jvp_raw(p, x, x_dot);
}

MatrixD token_vjp(const Model<double>& model, const MatrixD& x, const MatrixD& g_bar,
                  bool residual) {
  const LayerParams p = LayerParams::from(model, residual);
  check_tokens(p, x, "tokens");
  if (g_bar.rows() != x.rows() || g_bar.cols() != p.d_out)
    throw invalid_argument("g_bar: shape must be n x d_out");
  return token_vjp_raw(p, x, g_bar);
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
      const MatrixD col = token_jvp_raw(p, x, e);
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
  const detail::TopSingular t = detail::top_singular(p, x, random_matrix(rng, x.rows(), p.d, 1.0),
                                                     options.iterations, options.tolerance);
  TokenJacobianResult r;
  r.value = t.value;
  r.lower = t.value;
  r.upper = t.upper;
  r.residual = t.residual;
  r.iterations = t.iterations;
  r.products = t.products;
  r.method = t.method;
  r.converged = t.converged;
  r.status = t.converged ? Status::converged : Status::iteration_limit;
  char buf[200];
  std::snprintf(buf, sizeof buf, "relative residual %.3g %s tolerance %.3g after %d restarts",
                t.value > 0 ? t.residual / t.value / t.value : 0.0,
                t.converged ? "within" : "above", options.tolerance, t.iterations);
  r.message = buf;
  if (!t.converged && t.iterations >= options.iterations)
    r.message = "iteration cap " + std::to_string(options.iterations) + " reached; " + r.message;
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

namespace {

/// The other sign's sequence of castin_adversarial_tokens: u the eigenvector of
/// the extreme eigenvalue of the other sign (of the symmetric part of A, head 0).
MatrixD castin_other_tokens(const Model<double>& model, Index n, double radius) {
  const Head<double> hd = model.head(0);
  const MatrixD a = hd.q.transpose() * hd.k / hd.tau;
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(0.5 * (a + a.transpose()));
  const auto& ev = es.eigenvalues();
  const Index last = ev.size() - 1;
  const bool dominant_positive = std::abs(ev[last]) >= std::abs(ev[0]);
  const VectorD u = es.eigenvectors().col(dominant_positive ? 0 : last);
  MatrixD x(n, a.rows());
  for (Index i = 0; i < n; ++i) {
    const double f = dominant_positive ? (i == 0 ? -1.0 : 1.0) : (i == 0 ? 1.0 : 0.5);
    x.row(i) = radius * f * u.transpose();
  }
  return x;
}

}  // namespace

TokenSearchResult token_lipschitz_lower_bound(const Model<double>& model,
                                              const TokenSearchOptions& options) {
  options.validate();
  const LayerParams p = LayerParams::from(model, options.residual);
  detail::check_layer_range(p, options.radius > 0 ? options.radius : 1.0, "radius");
  const Index n = options.tokens, d = p.d;
  const double scale = options.radius > 0 ? options.radius : 1.0;
  const bool square = model.query_dim() == model.key_dim();
  struct Out {
    double value = 0, upper = 0, residual = 0;
    MatrixD x;
    std::int64_t evals = 0;
    std::string origin;
  };
  std::vector<Out> outs(static_cast<size_t>(options.restarts));
  const int threads =
      options.threads > 0 ? options.threads : std::min(omp_get_max_threads(), kMaxThreads);
  // Distributed: each rank runs its contiguous share of the restarts (each has
  // its own seed); the outcomes are exchanged by index and reduced in order.
  const Communicator& comm = options.communicator;
  const RowRange mine = shard_rows(options.restarts, comm);
  // (done, restarts of this rank) after each restart, one at a time (no effect
  // on the result).
  Progress progress("token search", mine.size(), options.progress_callback, false);
  std::mutex progress_mutex;
  int done = 0;
  std::exception_ptr error;
  try {
    detail::RegionGuard guard;  // exceptions and Ctrl-C (polled per product)
    const int first = static_cast<int>(mine.begin), last = static_cast<int>(mine.end);
#pragma omp parallel for schedule(dynamic) num_threads(threads)
    for (int r = first; r < last; ++r) {
      guard.run([&] {
        std::mt19937_64 rng(options.seed * 0x9E3779B97F4A7C15ULL + static_cast<std::uint64_t>(r));
        Out o;
        auto eval = [&](const MatrixD& xx, const MatrixD& start, int restarts, double tol = 1e-10) {
          detail::TopSingular t = detail::top_singular(p, xx, start, restarts, tol);
          o.evals += t.products;
          return t;
        };
        const int kind = r % 4;
        const bool jitter = r >= 4;
        MatrixD x;
        if (kind <= 1 && square) {
          x = kind == 0 ? castin_adversarial_tokens(model, n, scale)
                        : castin_other_tokens(model, n, scale);
          o.origin = kind == 0 ? "castin" : "castin_other";
          if (jitter) x += random_matrix(rng, n, d, 1e-2 * scale);
        } else if (kind == 2) {
          // Kim's outlier (t e, 0, ..., 0): a grid over t, then golden section.
          VectorD e = random_matrix(rng, d, 1, 1.0).col(0);
          if (!jitter && square) {
            const MatrixD c = castin_adversarial_tokens(model, 1, 1.0);
            e = c.row(0).transpose();
          }
          e /= std::max(e.norm(), 1e-300);
          const double t_max = options.radius > 0 ? options.radius : 4.0;
          const MatrixD start = random_matrix(rng, n, d, 1.0);
          auto at = [&](double t) {
            MatrixD xx = MatrixD::Zero(n, d);
            xx.row(0) = t * e.transpose();
            return xx;
          };
          auto value = [&](double t) { return eval(at(t), start, 30).value; };
          constexpr int kGrid = 12;
          double best_t = t_max, best = -1;
          for (int g = 1; g <= kGrid; ++g) {
            const double t = t_max * g / kGrid;
            const double v = value(t);
            if (v > best) best = v, best_t = t;
          }
          double lo = std::max(0.0, best_t - t_max / kGrid),
                 hi = std::min(t_max, best_t + t_max / kGrid);
          const double phi = 0.5 * (std::sqrt(5.0) - 1);
          double t1 = hi - phi * (hi - lo), t2 = lo + phi * (hi - lo);
          double f1 = value(t1), f2 = value(t2);
          for (int it = 0; it < 20; ++it) {
            if (f1 < f2) {
              lo = t1, t1 = t2, f1 = f2, t2 = lo + phi * (hi - lo), f2 = value(t2);
            } else {
              hi = t2, t2 = t1, f2 = f1, t1 = hi - phi * (hi - lo), f1 = value(t1);
            }
          }
          if (std::max(f1, f2) > best) best_t = f1 >= f2 ? t1 : t2;
          x = at(best_t);
          o.origin = "outlier";
        } else {
          x = random_matrix(rng, n, d, scale / std::sqrt(static_cast<double>(d)));
          o.origin = "random";
        }
        detail::project_rows_to_ball(x, options.radius);
        detail::TopSingular pw = eval(x, random_matrix(rng, n, d, 1.0), 60);
        o.value = pw.value;
        o.x = x;
        double eta = options.step_size;
        for (int step = 0; step < options.steps && eta > 1e-9; ++step) {
          const MatrixD g = token_second_raw(p, x, pw.v, pw.u);
          const double gn = g.norm();
          if (!(gn > 0)) break;
          MatrixD xn = x + (eta * scale / gn) * g;
          detail::project_rows_to_ball(xn, options.radius);
          detail::TopSingular pn = eval(xn, pw.v, 30);
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
        // Certify: the witness's constant recomputed from a fresh random start.
        const detail::TopSingular fin = eval(o.x, random_matrix(rng, n, d, 1.0), 300, 1e-10);
        o.value = std::max(fin.value, 0.0);
        o.upper = fin.upper;
        o.residual = fin.residual;
        outs[static_cast<size_t>(r)] = std::move(o);
        if (options.progress_callback) {
          std::lock_guard<std::mutex> lock(progress_mutex);
          progress.update(++done);
        }
      });
    }
    guard.finish();
  } catch (...) {
    error = std::current_exception();
  }
  detail::agree(comm, error);
  const Index total = options.restarts;
  if (comm.distributed()) {
    std::vector<double> value(outs.size()), upper(outs.size()), residual(outs.size());
    std::vector<std::int64_t> evals(outs.size());
    std::vector<std::string> origin(outs.size());
    for (size_t r = 0; r < outs.size(); ++r) {
      value[r] = outs[r].value, upper[r] = outs[r].upper, residual[r] = outs[r].residual;
      evals[r] = outs[r].evals, origin[r] = outs[r].origin;
    }
    detail::all_gather_items(comm, total, value);
    detail::all_gather_items(comm, total, upper);
    detail::all_gather_items(comm, total, residual);
    detail::all_gather_items(comm, total, evals);
    detail::all_gather_items(comm, total, origin);
    for (size_t r = 0; r < outs.size(); ++r) {
      outs[r].value = value[r], outs[r].upper = upper[r], outs[r].residual = residual[r];
      outs[r].evals = evals[r], outs[r].origin = std::move(origin[r]);
    }
  }
  // The first restart, then any that beats the best so far (in restart order).
  size_t best = 0;
  for (size_t r = 1; r < outs.size(); ++r)
    if (outs[r].value > outs[best].value) best = r;
  if (comm.distributed()) {
    MatrixD& x = outs[best].x;
    const int owner = detail::owner_of(total, comm.size(), static_cast<Index>(best));
    if (comm.rank() != owner) x.resize(n, d);
    detail::broadcast(comm, x.data(), static_cast<std::size_t>(x.size()), owner);
  }
  TokenSearchResult res;
  for (const auto& o : outs) {
    res.evaluations += o.evals;
    res.restart_values.push_back(o.value);
  }
  const Out& b = outs[best];
  res.value = b.value;
  res.tokens = b.x;
  res.upper = b.upper;
  res.residual = b.residual;
  res.origin = b.origin;
  return res;
}

}  // namespace measattn
