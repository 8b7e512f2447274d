// Sinkhorn between point clouds in O(n + m) memory: the costs ||x_i - y_j||^p are
// computed on the fly and never stored. Log-domain updates
//   f_i = reg log a_i - reg LSE_j((g_j - C_ij) / reg),  g_j = the same with the roles swapped,
// each a streaming pass over blocks of the other cloud with an online log-sum-exp (one
// running maximum and sum per row, rescaled when the maximum grows). Epsilon scaling:
// one f/g update per regularization reg_t = max_cost 2^-t down to reg, then updates at
// reg until POT's criterion ||P^T 1 - b||_2 < tolerance, which the g pass gives for free
// (the column sums of the plan of (f, g_old) are b_j exp((g_old_j - g_new_j) / reg)).
// Rows are independent and each sums its blocks in order: the same numbers whatever the
// thread count.
// GCC 12 reports a false "used uninitialized" inside its AVX-512 intrinsics
// when Eigen vectorizes exp (intrinsic header, not our code).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "common/parallel.hpp"
#include "measattn/error.hpp"
#include "measattn/interrupt.hpp"
#include "measattn/progress.hpp"
#include "measattn/wasserstein.hpp"
#include "wasserstein/detail.hpp"

namespace measattn::detail {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr Index kBlock = 1024;

/// out_i = eps log w_i - eps LSE_j((h_j - C_ij) / eps) for the rows i of s against the
/// columns of tt (d x nt). With `err`, also sum_i (w_i exp((old_i - out_i) / eps) - w_i)^2.
void lse_pass(const MatrixD& s, const MatrixD& tt, const VectorD& h, const VectorD& log_w,
              double eps, double p, VectorD& out, double* err) {
  const Index ns = s.rows(), nt = tt.cols();
  const VectorD old = out;
  const bool parallel = static_cast<double>(ns) * static_cast<double>(nt) > 1e6;
  RegionGuard guard;
#pragma omp parallel if (parallel)
  {
    Eigen::ArrayXd c;
    guard.run([&] { c.resize(kBlock); });
#pragma omp for schedule(dynamic, 64)
    for (Index i = 0; i < ns; ++i) {
      guard.run([&] {
        if (log_w[i] == -kInf) {
          out[i] = -kInf;
          return;
        }
        double mx = -kInf, sum = 0;
        for (Index j0 = 0; j0 < nt; j0 += kBlock) {
          const Index w = std::min(kBlock, nt - j0);
          auto cw = c.head(w);
          cost_row_range(s, i, tt, j0, j0 + w, p, cw.data());
          cw = (h.segment(j0, w).array() - cw) / eps;
          const double bm = cw.maxCoeff();
          if (bm == -kInf) continue;
          if (bm > mx) {
            sum *= std::exp(mx - bm);
            mx = bm;
          }
          sum += (cw - mx).exp().sum();
        }
        out[i] = eps * log_w[i] - eps * (mx + std::log(sum));
      });
    }
  }
  guard.finish();
  if (err != nullptr) {
    double e = 0;
    for (Index i = 0; i < ns; ++i) {
      if (log_w[i] == -kInf) continue;
      const double w = std::exp(log_w[i]);
      const double t = w * std::exp((old[i] - out[i]) / eps) - w;
      e += t * t;
    }
    *err = std::sqrt(e);
  }
}

}  // namespace

WassersteinResult online_sinkhorn_transport(const DoubleAtoms& mu, const DoubleAtoms& nu,
                                            const WassersteinOptions& o) {
  if (o.want_plan || o.want_dense_plan)
    throw invalid_argument("online: the online Sinkhorn stores no plan (O(n + m) memory)");
  const MatrixD& x = *mu.x;
  const MatrixD& y = *nu.x;
  const VectorD& a = *mu.w;
  const VectorD& b = *nu.w;
  const Index n = x.rows(), m = y.rows();
  const double p = o.p, reg = o.reg;
  const MatrixD xt = x.transpose(), yt = y.transpose();
  VectorD log_a(n), log_b(m);
  for (Index i = 0; i < n; ++i) log_a[i] = a[i] > 0 ? std::log(a[i]) : -kInf;
  for (Index j = 0; j < m; ++j) log_b[j] = b[j] > 0 ? std::log(b[j]) : -kInf;
  // The largest cost is at most (bounding-box diameter)^p: the first regularization.
  const VectorD lo = x.colwise().minCoeff().cwiseMin(y.colwise().minCoeff()).transpose();
  const VectorD hi = x.colwise().maxCoeff().cwiseMax(y.colwise().maxCoeff()).transpose();
  const double max_cost = std::pow((hi - lo).norm(), p);
  VectorD f = VectorD::Zero(n), g = VectorD::Zero(m);
  for (Index j = 0; j < m; ++j)
    if (b[j] == 0) g[j] = -kInf;
  std::int64_t it = 0;
  for (double eps = max_cost; eps > reg; eps *= o.epsilon_scaling) {
    check_interrupt();
    lse_pass(x, yt, g, log_a, eps, p, f, nullptr);
    lse_pass(y, xt, f, log_b, eps, p, g, nullptr);
    ++it;
  }
  lse_pass(x, yt, g, log_a, reg, p, f, nullptr);
  double err = kInf;
  bool converged = false;
  Progress progress("online sinkhorn", o.max_iterations);
  const bool show = o.progress && static_cast<double>(n) * static_cast<double>(m) > 1e8;
  std::int64_t k = 0;
  VectorD g_new = g;
  for (; k < o.max_iterations; ++k) {
    check_interrupt();
    lse_pass(y, xt, f, log_b, reg, p, g_new, &err);
    // err belongs to (f, g): its rows are exact and its columns sum to b exp((g - g_new)/reg).
    if (err < o.tolerance) {
      converged = true;
      break;
    }
    g = g_new;
    lse_pass(x, yt, g, log_a, reg, p, f, nullptr);
    if (show && k % 5 == 0) progress.update(k, "err=" + std::to_string(err));
  }
  progress.finish();
  // The plan of (f, g): P_ij = exp((f_i + g_j - C_ij) / reg). Its cost, entropy and the
  // c-transform of g (a certified dual value), one more streaming pass.
  VectorD pc(n), plogp(n), ftrans(n);
  {
    const bool parallel = static_cast<double>(n) * static_cast<double>(m) > 1e6;
    RegionGuard guard;
#pragma omp parallel if (parallel)
    {
      Eigen::ArrayXd c, e;
      guard.run([&] {
        c.resize(kBlock);
        e.resize(kBlock);
      });
#pragma omp for schedule(dynamic, 64)
      for (Index i = 0; i < n; ++i) {
        guard.run([&] {
          double s1 = 0, s2 = 0, mn = kInf;
          for (Index j0 = 0; j0 < m; j0 += kBlock) {
            const Index w = std::min(kBlock, m - j0);
            auto cw = c.head(w);
            auto ew = e.head(w);
            cost_row_range(x, i, yt, j0, j0 + w, p, cw.data());
            for (Index j = 0; j < w; ++j)
              if (b[j0 + j] > 0) mn = std::min(mn, cw[j] - g[j0 + j]);
            if (a[i] == 0) continue;
            ew = (f[i] + g.segment(j0, w).array() - cw) / reg;
            const Eigen::ArrayXd pw = ew.exp();
            s1 += (pw * cw).sum();
            s2 += (pw * ew).unaryExpr([](double v) { return std::isfinite(v) ? v : 0.0; }).sum();
          }
          pc[i] = s1;
          plogp[i] = s2;
          ftrans[i] = mn;
        });
      }
    }
    guard.finish();
  }
  double transport = 0, entropy = 0, dual = 0;
  for (Index i = 0; i < n; ++i) {
    transport += pc[i];
    entropy += plogp[i];
    if (a[i] > 0) dual += a[i] * ftrans[i];
  }
  for (Index j = 0; j < m; ++j)
    if (b[j] > 0) dual += b[j] * g[j];
  // A certified upper bound: a coupling of a and b (the monotone plan along the
  // mean-difference direction).
  const double coupling = mean_difference_coupling_cost(mu, nu, p);
  auto root = [&](double c) { return p == 1 ? c : std::pow(std::max(c, 0.0), 1.0 / p); };
  WassersteinResult r;
  r.p = p;
  r.method = WassersteinMethod::sinkhorn;
  r.kind = Bound::estimate;
  r.iterations = it + k;
  r.marginal_violation = err;
  r.status = converged ? Status::converged : Status::iteration_limit;
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.3e", err);
  r.message = std::string("online (kernel not stored); ") +
              (converged ? std::string("converged: ||P^T 1 - b||_2 = ") + buf
                         : "iteration cap " + std::to_string(o.max_iterations) +
                               " reached with ||P^T 1 - b||_2 = " + buf);
  r.transport_cost = transport;
  r.entropic_cost = transport + reg * entropy;
  r.cost = transport;
  r.value = root(transport);
  r.upper = root(coupling);
  r.lower = root(std::clamp(dual, 0.0, coupling));
  if (o.want_potentials) r.potentials = Potentials{ftrans, g};
  return r;
}

}  // namespace measattn::detail
