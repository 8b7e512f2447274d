// Transport on a given cost matrix (any real costs): the exact solver by column
// generation over LEMON's network simplex, and Sinkhorn in stabilized form.
//
// Exact: the restricted problem starts from the `neighbours` smallest costs of every
// row and of every column plus the north-west corner plan of the integer supplies
// (which makes it feasible), and grows by the most negative reduced costs
// C_ij - f_i - g_j of a full sweep until none is left (then the duals are feasible for
// the whole matrix and the plan is optimal). Re-solves are handed the reduced costs
// under the previous duals, as in exact.cpp.
//
// Sinkhorn: the kernel K_ij = exp(F_i + G_j - C_ij / reg) is stored with absorbed
// log-potentials F, G, and the scalings u, v are iterated on it (two matrix-vector
// products per iteration); scalings leaving [1e-30, 1e30] are absorbed into F, G and
// the kernel rebuilt, and a zero or non-finite denominator is replaced by the exact
// log-sum-exp update. Column sums are taken over fixed column blocks in row order, row
// sums per row, so every number is the same whatever the thread count.
// GCC 12 reports a false "used uninitialized" inside its AVX-512 intrinsics
// when Eigen vectorizes exp (intrinsic header, not our code).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "common/huge_buffer.hpp"
#include "common/parallel.hpp"
#include "measattn/error.hpp"
#include "measattn/interrupt.hpp"
#include "measattn/wasserstein.hpp"
#include "wasserstein/detail.hpp"

namespace measattn {

namespace {

using detail::RegionGuard;
constexpr double kInf = std::numeric_limits<double>::infinity();

long double total_of(const Eigen::Ref<const VectorD>& w) {
  long double t = 0;
  for (Index k = 0; k < w.size(); ++k) t += w[k];
  return t;
}

void check_cost(const MatrixRef<double>& c) {
  if (c.rows() == 0 || c.cols() == 0)
    throw invalid_argument("cost: empty cost matrix (" + std::to_string(c.rows()) + " x " +
                           std::to_string(c.cols()) + ")");
  if (c.rows() > std::numeric_limits<int>::max() / 2 ||
      c.cols() > std::numeric_limits<int>::max() / 2)
    throw invalid_argument("cost: too many rows or columns");
  for (Index i = 0; i < c.rows(); ++i)
    for (Index j = 0; j < c.cols(); ++j)
      if (!std::isfinite(c(i, j)))
        throw invalid_argument("cost: entry (" + std::to_string(i) + ", " + std::to_string(j) +
                               ") is not finite");
}

void check_weights(const Eigen::Ref<const VectorD>& w, const std::string& name, Index expected,
                   const char* what) {
  if (w.size() != expected)
    throw invalid_argument(name + ": " + std::to_string(w.size()) + " weights for the " +
                           std::to_string(expected) + " " + what + " of cost");
  for (Index k = 0; k < w.size(); ++k)
    if (!(w[k] >= 0) || !std::isfinite(w[k]))
      throw invalid_argument(name + ": weight " + std::to_string(k) + " is negative or not finite");
  if (!(total_of(w) > 0)) throw invalid_argument(name + ": the weights sum to 0");
}

/// The k smallest entries of vals (ties by the smaller index), as indices.
void smallest(std::vector<double>& vals, std::vector<double>& scratch, int k,
              std::vector<int>& out) {
  scratch = vals;
  std::nth_element(scratch.begin(), scratch.begin() + (k - 1), scratch.end());
  const double kth = scratch[static_cast<size_t>(k - 1)];
  out.clear();
  for (size_t j = 0; j < vals.size(); ++j)
    if (vals[j] < kth) out.push_back(static_cast<int>(j));
  for (size_t j = 0; j < vals.size() && static_cast<int>(out.size()) < k; ++j)
    if (vals[j] == kth) out.push_back(static_cast<int>(j));
}

}  // namespace

TransportResult transport_exact(const VectorD& a_in, const VectorD& b_in,
                                const MatrixRef<double>& C, const WassersteinOptions& o) {
  o.validate();
  check_cost(C);
  const Index n = C.rows(), m = C.cols();
  check_weights(a_in, "a", n, "rows");
  check_weights(b_in, "b", m, "columns");
  const double ta = static_cast<double>(total_of(a_in)), tb = static_cast<double>(total_of(b_in));
  check_mass(ta, tb, o.mass);
  VectorD a = a_in, b = b_in;
  if (o.mass == MassPolicy::renormalize) {
    a /= ta;
    b /= tb;
  } else {
    b *= ta / tb;  // the difference the check allows goes onto b (as POT)
  }
  const std::vector<std::int64_t> A = detail::integer_weights(a);
  const std::vector<std::int64_t> B = detail::integer_weights(b);
  double scale = 0;
  for (Index i = 0; i < n; ++i) scale = std::max(scale, C.row(i).cwiseAbs().maxCoeff());
  const double tol = 1e-11 * std::max(scale, 1e-300);

  std::vector<std::vector<int>> cols(static_cast<size_t>(n));
  const double nm = static_cast<double>(n) * static_cast<double>(m);
  const bool dense = nm <= static_cast<double>(o.dense_arc_limit);
  const bool parallel = nm > 1e6;
  if (dense) {
    for (auto& c : cols) {
      c.resize(static_cast<size_t>(m));
      std::iota(c.begin(), c.end(), 0);
    }
  } else {
    const int kr = static_cast<int>(std::min<Index>(o.neighbours, m));
    const int kc = static_cast<int>(std::min<Index>(o.neighbours, n));
    std::vector<std::vector<int>> by_col(static_cast<size_t>(m));
    RegionGuard guard;  // exceptions and Ctrl-C, per row / column
#pragma omp parallel if (parallel)
    {
      std::vector<double> vals, scratch;
#pragma omp for schedule(static)
      for (Index i = 0; i < n; ++i) {
        guard.run([&] {
          vals.assign(C.row(i).data(), C.row(i).data() + m);
          smallest(vals, scratch, kr, cols[static_cast<size_t>(i)]);
        });
      }
#pragma omp for schedule(static)
      for (Index j = 0; j < m; ++j) {
        guard.run([&] {
          vals.resize(static_cast<size_t>(n));
          for (Index i = 0; i < n; ++i) vals[static_cast<size_t>(i)] = C(i, j);
          smallest(vals, scratch, kc, by_col[static_cast<size_t>(j)]);
        });
      }
    }
    guard.finish();
    for (Index j = 0; j < m; ++j)
      for (int i : by_col[static_cast<size_t>(j)])
        cols[static_cast<size_t>(i)].push_back(static_cast<int>(j));
    // North-west corner plan of the integer supplies: feasible.
    size_t i = 0, j = 0;
    std::int64_t ra = A[0], rb = B[0];
    while (i < static_cast<size_t>(n) && j < static_cast<size_t>(m)) {
      cols[i].push_back(static_cast<int>(j));
      const std::int64_t t = std::min(ra, rb);
      ra -= t;
      rb -= t;
      if (ra == 0 && ++i < static_cast<size_t>(n)) ra = A[i];
      if (rb == 0 && ++j < static_cast<size_t>(m)) rb = B[j];
    }
    for (auto& c : cols) {
      std::sort(c.begin(), c.end());
      c.erase(std::unique(c.begin(), c.end()), c.end());
    }
  }

  std::vector<std::pair<int, int>> arcs;
  std::vector<double> costs, reduced;
  detail::NetworkSolution sol;
  std::vector<double> min_reduced(static_cast<size_t>(n), 0);
  int rounds = 0;
  double previous_objective = kInf;
  bool optimal = false;
  while (true) {
    detail::check_interrupt();
    ++rounds;
    arcs.clear();
    costs.clear();
    for (Index i = 0; i < n; ++i) {
      for (int j : cols[static_cast<size_t>(i)]) {
        arcs.emplace_back(static_cast<int>(i), j);
        costs.push_back(C(i, j));
      }
    }
    if (rounds == 1) {
      sol = detail::solve_network(n, m, A, B, arcs, costs);
    } else {
      const VectorD f0 = sol.f, g0 = sol.g;
      reduced.resize(costs.size());
      for (size_t k = 0; k < arcs.size(); ++k)
        reduced[k] = costs[k] - f0[arcs[k].first] - g0[arcs[k].second];
      sol = detail::solve_network(n, m, A, B, arcs, reduced);
      if (sol.ok) {
        sol.f += f0;
        sol.g += g0;
      }
    }
    if (!sol.ok) throw std::runtime_error("transport_exact: network simplex failed (infeasible)");
    std::vector<std::vector<int>> added(static_cast<size_t>(n));
    std::vector<size_t> offset(static_cast<size_t>(n) + 1, 0);
    for (Index i = 0; i < n; ++i)
      offset[static_cast<size_t>(i) + 1] =
          offset[static_cast<size_t>(i)] + cols[static_cast<size_t>(i)].size();
    double objective = 0;
    for (size_t k = 0; k < arcs.size(); ++k)
      objective += static_cast<double>(sol.flow[k]) * costs[k];
    const bool decreased = objective < previous_objective - 1e-12 * std::abs(previous_objective);
    previous_objective = objective;
    const bool prune = !dense && decreased && rounds <= o.prune_rounds && std::isfinite(o.prune);
    const double prune_above = o.prune * scale;
    const size_t per_round = static_cast<size_t>(std::max(1, o.arcs_per_round));
    // Full reduced-cost sweep (also certifies the dense solve and gives the c-transform).
    RegionGuard guard;
#pragma omp parallel if (parallel)
    {
      std::vector<std::pair<double, int>> cand;
#pragma omp for schedule(static)
      for (Index i = 0; i < n; ++i) {
        guard.run([&] {
          cand.clear();
          const double fi = sol.f[i];
          const auto row = C.row(i).array();
          const double lo = std::min(0.0, (row - fi - sol.g.transpose().array()).minCoeff());
          min_reduced[static_cast<size_t>(i)] = lo;
          if (dense) return;
          if (lo < -tol) {
            for (Index j = 0; j < m; ++j) {
              const double r = C(i, j) - fi - sol.g[j];
              if (r < -tol) cand.emplace_back(r, static_cast<int>(j));
            }
          }
          auto& have = cols[static_cast<size_t>(i)];
          if (prune) {
            size_t keep = 0;
            for (size_t q = 0; q < have.size(); ++q) {
              const int j = have[q];
              if (sol.flow[offset[static_cast<size_t>(i)] + q] > 0 ||
                  C(i, j) - fi - sol.g[j] <= prune_above)
                have[keep++] = j;
            }
            have.resize(keep);
          }
          if (cand.empty()) return;
          const size_t take = std::min(cand.size(), per_round);
          std::partial_sort(cand.begin(), cand.begin() + static_cast<std::ptrdiff_t>(take),
                            cand.end());
          auto& out = added[static_cast<size_t>(i)];
          for (size_t q = 0; q < take; ++q)
            if (!std::binary_search(have.begin(), have.end(), cand[q].second))
              out.push_back(cand[q].second);
        });
      }
    }
    guard.finish();
    if (dense) {
      optimal = true;
      break;
    }
    std::int64_t count = 0;
    for (Index i = 0; i < n; ++i) {
      auto& add = added[static_cast<size_t>(i)];
      if (add.empty()) continue;
      count += static_cast<std::int64_t>(add.size());
      auto& c = cols[static_cast<size_t>(i)];
      c.insert(c.end(), add.begin(), add.end());
      std::sort(c.begin(), c.end());
    }
    if (count == 0) {
      optimal = true;
      break;
    }
    if (rounds >= o.max_rounds) break;
  }

  std::vector<std::pair<int, int>> support;
  std::vector<std::int64_t> support_flow;
  for (size_t k = 0; k < arcs.size(); ++k) {
    if (sol.flow[k] > 0) {
      support.push_back(arcs[k]);
      support_flow.push_back(sol.flow[k]);
    }
  }
  std::vector<double> flow;
  TransportResult r;
  r.marginal_violation = detail::polish_flows(n, m, a, b, support, support_flow, flow);
  long double cost = 0;
  for (size_t k = 0; k < support.size(); ++k)
    cost += static_cast<long double>(flow[k]) * C(support[k].first, support[k].second);
  r.cost = static_cast<double>(cost);
  r.iterations = rounds;
  r.f = sol.f;
  r.g = sol.g;
  // Feasible everywhere: f_i + g_j <= C_ij (the c-transform step on f).
  for (Index i = 0; i < n; ++i) r.f[i] += min_reduced[static_cast<size_t>(i)];
  if (optimal) {
    r.status = Status::optimal;
    r.message = "optimal: network simplex on " + std::to_string(arcs.size()) + " of " +
                std::to_string(n * m) + " arcs, " + std::to_string(rounds) + " round(s)";
  } else {
    r.status = Status::iteration_limit;
    r.message = "column generation stopped at max_rounds = " + std::to_string(o.max_rounds) +
                "; the plan is feasible, not certified optimal";
  }
  if (o.want_dense_plan || o.want_plan) {
    r.plan = MatrixD::Zero(n, m);
    for (size_t k = 0; k < support.size(); ++k)
      r.plan(support[k].first, support[k].second) += flow[k];
  }
  return r;
}

namespace {

/// Sinkhorn on one histogram pair with the kernel stored once (see the top of the file).
class CostSinkhorn {
 public:
  CostSinkhorn(const MatrixRef<double>& C, double reg)
      : C_(C),
        n_(C.rows()),
        m_(C.cols()),
        eps_(reg),
        parallel_(static_cast<double>(n_) * static_cast<double>(m_) > 2e6) {
    kernel_ = detail::huge_buffer(static_cast<size_t>(n_) * static_cast<size_t>(m_));
  }

  TransportResult solve(const VectorD& a, const VectorD& b, const VectorD& log_u0,
                        const WassersteinOptions& o) {
    a_ = &a;
    b_ = &b;
    F_ = log_u0;
    G_ = VectorD::Zero(m_);
    for (Index i = 0; i < n_; ++i)
      if (a[i] == 0) F_[i] = -kInf;
    for (Index j = 0; j < m_; ++j)
      if (b[j] == 0) G_[j] = -kInf;
    u_ = VectorD::Ones(n_);
    v_ = VectorD::Ones(m_);
    rebuild();
    TransportResult r;
    VectorD ktu(m_), kv(n_);
    double err = kInf;
    bool converged = false;
    std::int64_t it = 0;
    for (; it < o.max_iterations; ++it) {
      detail::check_interrupt();
      kt_times(u_, ktu);
      if (!divide(b, ktu, v_)) log_update_v();
      k_times(v_, kv);
      if (!divide(a, kv, u_)) log_update_u();
      if (out_of_range(u_) || out_of_range(v_)) absorb();
      if (it % 10 == 0) {
        kt_times(u_, ktu);
        double e = 0;
        for (Index j = 0; j < m_; ++j) {
          const double t = v_[j] * ktu[j] - b[j];
          e += t * t;
        }
        err = std::sqrt(e);
        r.errors.push_back(err);
        if (err < o.tolerance) {
          converged = true;
          ++it;
          break;
        }
      }
    }
    r.iterations = it;
    r.marginal_violation = err;
    r.status = converged ? Status::converged : Status::iteration_limit;
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.3e", err);
    r.message = converged ? std::string("converged: ||P^T 1 - b||_2 = ") + buf
                          : "iteration cap max_iterations = " + std::to_string(o.max_iterations) +
                                " reached with ||P^T 1 - b||_2 = " + buf;
    finish(o, r);
    return r;
  }

 private:
  double* row(Index i) { return kernel_.get() + static_cast<size_t>(i) * static_cast<size_t>(m_); }

  void rebuild() {
    RegionGuard guard;
#pragma omp parallel for schedule(dynamic, 16) if (parallel_)
    for (Index i = 0; i < n_; ++i) {
      guard.run([&] {
        Eigen::Map<Eigen::ArrayXd> k(row(i), m_);
        if (F_[i] == -kInf) {
          k.setZero();
          return;
        }
        k = (F_[i] + G_.array() - C_.row(i).transpose().array() / eps_).exp();
      });
    }
    guard.finish();
  }

  /// out = K^T w over fixed column blocks, rows in order (deterministic).
  void kt_times(const VectorD& w, VectorD& out) {
    out.setZero(m_);
    constexpr Index kBlock = 256;
    const Index blocks = (m_ + kBlock - 1) / kBlock;
    RegionGuard guard;
#pragma omp parallel for schedule(dynamic, 1) if (parallel_)
    for (Index blk = 0; blk < blocks; ++blk) {
      guard.run([&] {
        const Index j0 = blk * kBlock;
        const Index len = std::min(kBlock, m_ - j0);
        double* acc = out.data() + j0;
        Index i = 0;
        for (; i + 4 <= n_; i += 4) {
          const double w0 = w[i], w1 = w[i + 1], w2 = w[i + 2], w3 = w[i + 3];
          const double* r0 = row(i) + j0;
          const double* r1 = row(i + 1) + j0;
          const double* r2 = row(i + 2) + j0;
          const double* r3 = row(i + 3) + j0;
#pragma omp simd
          for (Index j = 0; j < len; ++j)
            acc[j] += ((w0 * r0[j] + w1 * r1[j]) + (w2 * r2[j] + w3 * r3[j]));
        }
        for (; i < n_; ++i) {
          const double wi = w[i];
          const double* r = row(i) + j0;
#pragma omp simd
          for (Index j = 0; j < len; ++j) acc[j] += wi * r[j];
        }
      });
    }
    guard.finish();
  }

  void k_times(const VectorD& w, VectorD& out) {
    out.resize(n_);
    RegionGuard guard;
#pragma omp parallel for schedule(dynamic, 32) if (parallel_)
    for (Index i = 0; i < n_; ++i)
      guard.run([&] { out[i] = Eigen::Map<const VectorD>(row(i), m_).dot(w); });
    guard.finish();
  }

  /// out = w / d (0 where w is 0); false when some d with w > 0 is 0 or not finite.
  static bool divide(const VectorD& w, const VectorD& d, VectorD& out) {
    for (Index k = 0; k < w.size(); ++k) {
      if (w[k] == 0) {
        out[k] = 0;
      } else if (d[k] > 0 && d[k] < kInf) {
        out[k] = w[k] / d[k];
        if (!(out[k] < kInf)) return false;
      } else {
        return false;
      }
    }
    return true;
  }

  bool out_of_range(const VectorD& s) const {
    for (Index k = 0; k < s.size(); ++k)
      if (s[k] != 0 && (s[k] > 1e30 || s[k] < 1e-30)) return true;
    return false;
  }

  void absorb() {
    for (Index i = 0; i < n_; ++i)
      if (u_[i] > 0) F_[i] += std::log(u_[i]);
    for (Index j = 0; j < m_; ++j)
      if (v_[j] > 0) G_[j] += std::log(v_[j]);
    u_.setOnes();
    v_.setOnes();
    rebuild();
  }

  /// Exact G_j = log b_j - LSE_i(F_i + log u_i - C_ij / eps), then u = v = 1.
  void log_update_v() {
    for (Index i = 0; i < n_; ++i)
      if (u_[i] > 0 && u_[i] < kInf) F_[i] += std::log(u_[i]);
    u_.setOnes();
    VectorD mx = VectorD::Constant(m_, -kInf), s = VectorD::Zero(m_);
    for (Index i = 0; i < n_; ++i) {
      if (F_[i] == -kInf) continue;
      mx = mx.cwiseMax((F_[i] - C_.row(i).transpose().array() / eps_).matrix());
    }
    for (Index i = 0; i < n_; ++i) {
      if (F_[i] == -kInf) continue;
      s.array() += (F_[i] - C_.row(i).transpose().array() / eps_ - mx.array()).exp();
    }
    for (Index j = 0; j < m_; ++j)
      G_[j] = (*b_)[j] == 0 ? -kInf : std::log((*b_)[j]) - (mx[j] + std::log(s[j]));
    v_.setOnes();
    rebuild();
  }

  /// Exact F_i = log a_i - LSE_j(G_j + log v_j - C_ij / eps), then u = v = 1.
  void log_update_u() {
    for (Index j = 0; j < m_; ++j)
      if (v_[j] > 0 && v_[j] < kInf) G_[j] += std::log(v_[j]);
    v_.setOnes();
    for (Index i = 0; i < n_; ++i) {
      if ((*a_)[i] == 0) {
        F_[i] = -kInf;
        continue;
      }
      const Eigen::ArrayXd t = G_.array() - C_.row(i).transpose().array() / eps_;
      const double mx = t.maxCoeff();
      F_[i] = std::log((*a_)[i]) - (mx + std::log((t - mx).exp().sum()));
    }
    u_.setOnes();
    rebuild();
  }

  void finish(const WassersteinOptions& o, TransportResult& r) {
    const bool want_plan = o.want_dense_plan || o.want_plan;
    if (want_plan) r.plan.resize(n_, m_);
    VectorD rowcost(n_);
    RegionGuard guard;
#pragma omp parallel for schedule(dynamic, 16) if (parallel_)
    for (Index i = 0; i < n_; ++i) {
      guard.run([&] {
        const double* k = row(i);
        double s = 0;
        for (Index j = 0; j < m_; ++j) {
          const double pij = u_[i] * k[j] * v_[j];
          s += pij * C_(i, j);
          if (want_plan) r.plan(i, j) = pij;
        }
        rowcost[i] = s;
      });
    }
    guard.finish();
    long double total = 0;
    for (Index i = 0; i < n_; ++i) total += rowcost[i];
    r.cost = static_cast<double>(total);
    r.f.resize(n_);
    r.g.resize(m_);
    for (Index i = 0; i < n_; ++i) r.f[i] = u_[i] > 0 ? eps_ * (F_[i] + std::log(u_[i])) : -kInf;
    for (Index j = 0; j < m_; ++j) r.g[j] = v_[j] > 0 ? eps_ * (G_[j] + std::log(v_[j])) : -kInf;
  }

  const MatrixRef<double>& C_;
  Index n_, m_;
  double eps_;
  // Threads from 2e6 entries on: below it an iteration takes well under a millisecond
  // serially and the region barriers cost more than they save (measured on a loaded
  // two-core machine: 3.3 ms serial against 1.1 s with two threads at n = m = 500).
  bool parallel_;
  detail::HugeBuffer kernel_;
  const VectorD* a_ = nullptr;
  const VectorD* b_ = nullptr;
  VectorD F_, G_, u_, v_;
};

}  // namespace

std::vector<TransportResult> transport_sinkhorn(const VectorD& a_in, const MatrixRef<double>& B,
                                                const MatrixRef<double>& C,
                                                const WassersteinOptions& o,
                                                const MatrixD* log_u0) {
  o.validate();
  check_cost(C);
  const Index n = C.rows(), m = C.cols();
  check_weights(a_in, "a", n, "rows");
  if (B.rows() != m || B.cols() < 1)
    throw invalid_argument("b: " + std::to_string(B.rows()) + " x " + std::to_string(B.cols()) +
                           " histograms for the " + std::to_string(m) +
                           " columns of cost (expected " + std::to_string(m) + " x k, k >= 1)");
  const double bytes = static_cast<double>(n) * static_cast<double>(m) * 8.0;
  if (bytes > static_cast<double>(o.max_dense_bytes))
    throw invalid_argument("max_dense_bytes: the Sinkhorn kernel needs " +
                           std::to_string(static_cast<long long>(bytes)) + " bytes (n*m*8), over " +
                           std::to_string(o.max_dense_bytes));
  if (log_u0 != nullptr) {
    if (log_u0->rows() != n || (log_u0->cols() != 1 && log_u0->cols() != B.cols()))
      throw invalid_argument("log_u0: " + std::to_string(log_u0->rows()) + " x " +
                             std::to_string(log_u0->cols()) + " for " + std::to_string(n) +
                             " rows and " + std::to_string(B.cols()) + " histogram(s)");
    if (!log_u0->allFinite()) throw invalid_argument("log_u0: entries must be finite");
  }
  const double ta = static_cast<double>(total_of(a_in));
  std::vector<VectorD> bs;
  for (Index k = 0; k < B.cols(); ++k) {
    const VectorD bk = B.col(k);
    const std::string name = B.cols() == 1 ? "b" : "b[:, " + std::to_string(k) + "]";
    check_weights(bk, name, m, "columns");
    const double tb = static_cast<double>(total_of(bk));
    check_mass(ta, tb, o.mass, "a", name);
    bs.push_back(o.mass == MassPolicy::renormalize ? VectorD(bk / tb) : bk);
  }
  const VectorD a = o.mass == MassPolicy::renormalize ? VectorD(a_in / ta) : a_in;
  CostSinkhorn solver(C, o.reg);
  std::vector<TransportResult> out;
  for (Index k = 0; k < B.cols(); ++k) {
    const VectorD start = log_u0 == nullptr     ? VectorD::Zero(n)
                          : log_u0->cols() == 1 ? VectorD(log_u0->col(0))
                                                : VectorD(log_u0->col(k));
    out.push_back(solver.solve(a, bs[static_cast<size_t>(k)], start, o));
  }
  return out;
}

}  // namespace measattn
