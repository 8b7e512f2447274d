// Multiscale Sinkhorn between point clouds: O(n + m) memory, epsilon scaling,
// coarse-to-fine starts and kernel truncation with a bound on what is neglected.
//
// Potentials are kept in weight-free ("hat") form, P_ij = a_i b_j exp((F_i + G_j - C_ij) / eps),
// and every update is a log-sum-exp pass
//   F_i = -eps log sum_j b_j exp((G_j - C_ij) / eps)   (G_j from F by symmetry).
// Both clouds are sorted into the cells of one grid (about kPerCell atoms per cell). A
// cell of the other cloud is skipped for a row (or a whole cell of rows) when the lower
// bound Cmin - F_i - max_J G > tau eps holds, tau = -log(truncation): the skipped terms
// are then bounded by B_J exp((max_J G - Cmin) / eps), B_J the cell's mass, and their sum
// N_i is accumulated; a row whose bound exceeds `accept` times its kept sum is
// recomputed over every column. The epsilon-scaling passes and the iterations at the
// final eps up to a first convergence use a loose truncation (tau = 12, accept = 1e-3:
// they only bring the potentials near the fixed point, and touch far fewer pairs); from
// there on tau = -log(truncation) and accept = truncation, so that the last updates,
// the stopping test and the final pass are exact to a relative error in each row's sum
// of at most `truncation` (reported), and the certificates use the bounds as well.
// The cells' weighted centroids form the coarse problem, solved recursively with epsilon
// scaling down to eps = (cell diagonal)^p, whose potentials (constant per cell) start
// the fine level. Rows are independent and each sums its columns in a fixed order;
// reductions are serial: the same numbers whatever the thread count.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "common/parallel.hpp"
#include "common/vector_exp.hpp"
#include "measattn/error.hpp"
#include "measattn/interrupt.hpp"
#include "measattn/progress.hpp"
#include "measattn/wasserstein.hpp"
#include "wasserstein/detail.hpp"

namespace measattn::detail {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kPerCell = 32;        // target atoms per grid cell
constexpr double kCoarsenPairs = 4e6;  // problems with more pairs get a coarse level
constexpr int kMaxMultiscaleDim = 8;
// The fine level takes over at eps = kSwitch (cell diagonal)^p: below the coarse
// level's resolution, where the truncation already skips most cells.
constexpr double kSwitch = 0.25;
// The truncation of the passes before the last iterations at reg: cells beyond
// kLooseTau eps (exp(-12) = 6e-6 of a kept term), rows recomputed in full only when
// the bound on their neglected part exceeds kLooseAccept of the kept one.
constexpr double kLooseTau = 12;
constexpr double kLooseAccept = 1e-3;
// Over-relaxation at reg: the contraction rate is measured between the plain
// iterations kRateFrom and kRateTo.
constexpr std::int64_t kRateFrom = 2, kRateTo = 5;
constexpr double kMaxOmega = 1.95;
constexpr std::int64_t kCheckEvery = 10;  // iterations between over-relaxed checks

inline double cost_of_sq(double s, double p) {
  if (p == 2) return s;
  if (p == 1) return std::sqrt(s);
  return std::pow(s, 0.5 * p);
}

// exp(z) for a skipped cell's bound, z < 0: below z = -700 the bound exp(-700) < 1e-304
// (no underflow, which would also cost a slow path in the math library).
inline double skipped_exp(double z) { return z < -700 ? 1e-304 : std::exp(z); }

/// An upper bound on sum_k exp(z_k), z_k <= 0: the vector exponential (about 1 ulp,
/// and exp(-708) for anything below), raised by 1e-14 relative.
double sum_exp_bound(const std::vector<double>& z) {
  namespace v = vexp;
  const std::size_t n = z.size();
  v::Vd acc = v::splat(0.0);
  std::size_t k = 0;
  for (; k + v::kLanes <= n; k += v::kLanes) acc += v::exp_negative(-v::load(z.data() + k));
  double sum = v::horizontal_sum(acc);
  for (; k < n; ++k) sum += skipped_exp(z[k]);
  return sum * (1 + 1e-14);
}

/// One cloud sorted by grid cell.
struct Side {
  Eigen::MatrixXd x;         // sorted atoms, column-major (coordinate k contiguous)
  VectorD w, lw;             // sorted weights and their logs (-inf for zero)
  std::vector<Index> order;  // order[s] = original index of sorted atom s
  std::vector<Index> cell;   // cell of sorted atom s
  std::vector<Index> begin;  // cell c holds [begin[c], begin[c + 1])
  MatrixD lo, hi;            // cells x d bounding boxes of the atoms
  VectorD mass, lmass;       // cell total weight and its log
  Index cells() const { return static_cast<Index>(begin.size()) - 1; }
  Index size() const { return x.rows(); }
};

struct Grid {
  VectorD origin;
  double h = 1;
  std::vector<std::int64_t> count;
};

Grid make_grid(const VectorD& lo, const VectorD& hi, Index atoms) {
  const Index d = lo.size();
  const double diam = (hi - lo).norm();
  double log_vol = 0;
  for (Index k = 0; k < d; ++k)
    log_vol += std::log(std::max(hi[k] - lo[k], std::max(diam, 1e-300) * 1e-3));
  Grid g;
  g.origin = lo;
  g.h = std::exp((log_vol + std::log(kPerCell) - std::log(static_cast<double>(atoms))) /
                 static_cast<double>(d));
  if (!(g.h > 0) || !std::isfinite(g.h)) g.h = std::max(diam, 1e-300);
  g.count.resize(d);
  for (Index k = 0; k < d; ++k)
    g.count[k] = std::min<std::int64_t>(
        static_cast<std::int64_t>(std::floor((hi[k] - lo[k]) / g.h)) + 1, std::int64_t{1} << 20);
  return g;
}

Side build_side(const MatrixD& x, const VectorD& w, const Grid& g) {
  const Index n = x.rows(), d = x.cols();
  std::vector<std::pair<std::int64_t, Index>> key(n);
  for (Index i = 0; i < n; ++i) {
    std::int64_t k = 0;
    for (Index c = 0; c < d; ++c) {
      auto q = static_cast<std::int64_t>(std::floor((x(i, c) - g.origin[c]) / g.h));
      q = std::clamp<std::int64_t>(q, 0, g.count[c] - 1);
      k = k * g.count[c] + q;  // d <= 8 and count <= 2^20: bounded by the cells' count
    }
    key[i] = {k, i};
  }
  std::sort(key.begin(), key.end());
  Side s;
  s.x.resize(n, d);
  s.w.resize(n);
  s.lw.resize(n);
  s.order.resize(n);
  s.cell.resize(n);
  for (Index t = 0; t < n; ++t) {
    const Index i = key[t].second;
    s.order[t] = i;
    s.x.row(t) = x.row(i);
    s.w[t] = w[i];
    s.lw[t] = w[i] > 0 ? std::log(w[i]) : -kInf;
    if (t == 0 || key[t].first != key[t - 1].first) s.begin.push_back(t);
    s.cell[t] = static_cast<Index>(s.begin.size()) - 1;
  }
  s.begin.push_back(n);
  const Index nc = s.cells();
  s.lo.resize(nc, d);
  s.hi.resize(nc, d);
  s.mass.resize(nc);
  s.lmass.resize(nc);
  for (Index c = 0; c < nc; ++c) {
    const Index b0 = s.begin[c], b1 = s.begin[c + 1];
    s.lo.row(c) = s.x.middleRows(b0, b1 - b0).colwise().minCoeff();
    s.hi.row(c) = s.x.middleRows(b0, b1 - b0).colwise().maxCoeff();
    long double m = 0;
    for (Index t = b0; t < b1; ++t) m += s.w[t];
    s.mass[c] = static_cast<double>(m);
    s.lmass[c] = m > 0 ? std::log(s.mass[c]) : -kInf;
  }
  return s;
}

/// The cells as a measure: weighted centroids (plain means for massless cells), masses.
void coarse_measure(const Side& s, MatrixD& x, VectorD& w) {
  const Index nc = s.cells(), d = s.x.cols();
  x.resize(nc, d);
  w = s.mass;
  for (Index c = 0; c < nc; ++c) {
    const Index b0 = s.begin[c], b1 = s.begin[c + 1];
    if (s.mass[c] > 0) {
      Eigen::RowVectorXd acc = Eigen::RowVectorXd::Zero(d);
      for (Index t = b0; t < b1; ++t) acc += s.w[t] * s.x.row(t);
      x.row(c) = acc / s.mass[c];
    } else {
      x.row(c) = s.x.middleRows(b0, b1 - b0).colwise().mean();
    }
  }
}

inline double box_box_sq(const Side& r, Index I, const Side& c, Index J) {
  double s = 0;
  for (Index k = 0; k < r.x.cols(); ++k) {
    const double t = std::max({0.0, r.lo(I, k) - c.hi(J, k), c.lo(J, k) - r.hi(I, k)});
    s += t * t;
  }
  return s;
}

inline double point_box_sq(const double* xi, const Side& c, Index J) {
  double s = 0;
  for (Index k = 0; k < c.x.cols(); ++k) {
    const double t = std::max({0.0, c.lo(J, k) - xi[k], xi[k] - c.hi(J, k)});
    s += t * t;
  }
  return s;
}

/// The truncation of a pass: cells are skipped beyond tau eps, and rows whose
/// neglected part exceeds `accept` times their kept sum are recomputed in full.
struct Truncation {
  double tau, accept;
};

/// Per-row results of the final pass.
struct FinalRows {
  VectorD transport, entropy, ctransform;
};

/// One log-sum-exp pass over the rows of `r` against the columns of `c`:
/// out_i = -eps log sum_j w_j exp((gh_j - C_ij) / eps), pruned with the row potentials
/// `old` (see the file comment); rel_i bounds the neglected part of row i's sum
/// relative to its kept part. With `final`, instead of updating, accumulates the plan
/// P_ij = r.w_i c.w_j exp((old_i + gh_j - C_ij) / eps)'s cost and entropy and the
/// c-transform min_j (C_ij - gh_j) (bounded below on skipped cells) per row.
void lse_pass(const Side& r, const VectorD& old, const Side& c, const VectorD& gh, double eps,
              double p, Truncation trunc, VectorD& out, VectorD& rel, FinalRows* final) {
  const double tau = trunc.tau, accept = trunc.accept;
  const Index nr = r.size(), nc = c.size(), d = r.x.cols();
  const Index cells_r = r.cells(), cells_c = c.cells();
  const double inv_eps = 1 / eps;
  // Column terms t_j = gh_j + eps log w_j, cell maxima of gh over atoms with mass.
  VectorD t(nc), ghmax(cells_c);
  for (Index j = 0; j < nc; ++j) t[j] = c.lw[j] == -kInf ? -kInf : gh[j] + eps * c.lw[j];
  for (Index J = 0; J < cells_c; ++J) {
    double mx = -kInf;
    for (Index j = c.begin[J]; j < c.begin[J + 1]; ++j)
      if (c.lw[j] > -kInf) mx = std::max(mx, gh[j]);
    ghmax[J] = mx;
  }
  out.resize(nr);
  rel.resize(nr);
  if (final != nullptr) {
    final->transport.resize(nr);
    final->entropy.resize(nr);
    final->ctransform.resize(nr);
  }
  const bool parallel = static_cast<double>(nr) * static_cast<double>(nc) > 1e6;
  RegionGuard guard;
#pragma omp parallel if (parallel)
  {
    std::vector<double> cb, vb, zcell, zrow;
    std::vector<Index> kept, skipped_cell, skipped_row;
    std::vector<std::pair<Index, Index>> ranges;
    guard.run([&] {
      cb.resize(nc + 8);
      vb.resize(nc + 8);
      kept.reserve(cells_c);
    });
#pragma omp for schedule(dynamic, 1)
    for (Index I = 0; I < cells_r; ++I) {
      guard.run([&] {
        const Index i0 = r.begin[I], i1 = r.begin[I + 1];
        double fmax = -kInf;
        for (Index i = i0; i < i1; ++i) fmax = std::max(fmax, old[i]);
        // Cell-level pruning, with the bound on what it skips.
        kept.clear();
        skipped_cell.clear();
        // Skipped terms in linear form relative to exp(-fmax / eps): each is below
        // exp(-tau) (lmass <= 0), so nothing overflows.
        double cmin_skip_cell = kInf;
        zcell.clear();
        for (Index J = 0; J < cells_c; ++J) {
          if (ghmax[J] == -kInf) continue;
          const double cmin = cost_of_sq(box_box_sq(r, I, c, J), p);
          if (cmin - fmax - ghmax[J] > tau * eps) {
            zcell.push_back(c.lmass[J] + (ghmax[J] - cmin + fmax) * inv_eps);
            cmin_skip_cell = std::min(cmin_skip_cell, cmin - ghmax[J]);
            if (final != nullptr) skipped_cell.push_back(J);
          } else {
            kept.push_back(J);
          }
        }
        const double skip_cell = sum_exp_bound(zcell);
        double xi[kMaxMultiscaleDim];
        for (Index i = i0; i < i1; ++i) {
          for (Index k = 0; k < d; ++k) xi[k] = r.x(i, k);
          for (int full = 0; full < 2; ++full) {
            // Relative to exp(-old_i / eps); old_i <= fmax, so the cells' sum only shrinks.
            double skip = full ? 0.0 : skip_cell * skipped_exp((old[i] - fmax) * inv_eps);
            double cmin_skip = full ? kInf : cmin_skip_cell;
            ranges.clear();
            skipped_row.clear();
            zrow.clear();
            if (full) {
              ranges.emplace_back(0, nc);
            } else {
              for (const Index J : kept) {
                const double cmin = cost_of_sq(point_box_sq(xi, c, J), p);
                if (cmin - old[i] - ghmax[J] > tau * eps) {
                  zrow.push_back(c.lmass[J] + (ghmax[J] - cmin + old[i]) * inv_eps);
                  cmin_skip = std::min(cmin_skip, cmin - ghmax[J]);
                  if (final != nullptr) skipped_row.push_back(J);
                } else if (!ranges.empty() && ranges.back().second == c.begin[J]) {
                  ranges.back().second = c.begin[J + 1];
                } else {
                  ranges.emplace_back(c.begin[J], c.begin[J + 1]);
                }
              }
            }
            skip += sum_exp_bound(zrow);
            // Costs and exponents of the kept columns, gathered, and their maximum.
            Index len = 0;
            vexp::Vd mx8 = vexp::splat(-kInf);
            double mx = -kInf;
            for (const auto& [j0, j1] : ranges) {
              const Index w = j1 - j0;
              double* cw = cb.data() + len;
              double* vw = vb.data() + len;
              const double* tw = t.data() + j0;
              Index j = 0;
              if (p == 2) {
                // Costs and exponents in one sweep of whole vectors.
                namespace v = vexp;
                for (; j + v::kLanes <= w; j += v::kLanes) {
                  v::Vd sq = v::splat(0.0);
                  for (Index k = 0; k < d; ++k) {
                    const v::Vd u = v::load(c.x.col(k).data() + j0 + j) - v::splat(xi[k]);
                    sq += u * u;
                  }
                  v::store(cw + j, sq);
                  const v::Vd e = (v::load(tw + j) - sq) * v::splat(inv_eps);
                  v::store(vw + j, e);
                  mx8 = e > mx8 ? e : mx8;
                }
              }
              if (j < w) {
                const double* y0 = c.x.col(0).data() + j0;
                for (Index q = j; q < w; ++q) {
                  const double u = y0[q] - xi[0];
                  cw[q] = u * u;
                }
                for (Index k = 1; k < d; ++k) {
                  const double* yk = c.x.col(k).data() + j0;
                  const double xk = xi[k];
                  for (Index q = j; q < w; ++q) {
                    const double u = yk[q] - xk;
                    cw[q] += u * u;
                  }
                }
                if (p == 1) {
                  for (Index q = j; q < w; ++q) cw[q] = std::sqrt(cw[q]);
                } else if (p != 2) {
                  for (Index q = j; q < w; ++q) cw[q] = std::pow(cw[q], 0.5 * p);
                }
                for (; j + vexp::kLanes <= w; j += vexp::kLanes) {
                  const vexp::Vd e =
                      (vexp::load(tw + j) - vexp::load(cw + j)) * vexp::splat(inv_eps);
                  vexp::store(vw + j, e);
                  mx8 = e > mx8 ? e : mx8;
                }
                for (; j < w; ++j) {
                  vw[j] = (tw[j] - cw[j]) * inv_eps;
                  mx = std::max(mx, vw[j]);
                }
              }
              len += w;
            }
            for (int l = 0; l < vexp::kLanes; ++l) mx = std::max(mx, mx8[l]);
            double log_sum = -kInf;
            if (mx > -kInf) {
              namespace v = vexp;
              v::Vd acc = v::splat(0.0);
              Index j = 0;
              for (; j + v::kLanes <= len; j += v::kLanes)
                acc += v::exp_negative(mx - v::load(vb.data() + j));
              if (j < len) {
                // The last, partial vector: lanes past len masked out after the exponential.
                v::Vd lane, tail = v::splat(mx);
                for (int l = 0; l < v::kLanes; ++l) {
                  lane[l] = l;
                  if (j + l < len) tail[l] = vb[j + l];
                }
                const v::Vd e = v::exp_negative(mx - tail);
                acc += lane < v::splat(static_cast<double>(len - j)) ? e : v::splat(0.0);
              }
              log_sum = mx + std::log(v::horizontal_sum(acc));
            }
            const double ratio = skip > 0 ? skip * std::exp(-old[i] * inv_eps - log_sum) : 0.0;
            // Recompute over every column when the bound is too weak or nothing was kept.
            if (!full && (!(ratio <= accept) || log_sum == -kInf)) continue;
            rel[i] = ratio;
            if (final == nullptr) {
              out[i] = -eps * log_sum;
            } else {
              out[i] = old[i];
              double s1 = 0, s2 = 0, mn = kInf;
              const double shift = r.lw[i] + old[i] * inv_eps;
              Index pos = 0;
              for (const auto& [j0, j1] : ranges) {
                for (Index j = j0; j < j1; ++j, ++pos) {
                  if (c.lw[j] == -kInf) continue;
                  mn = std::min(mn, cb[pos] - gh[j]);
                  if (r.lw[i] == -kInf) continue;
                  const double e = shift + vb[pos];  // log P_ij
                  const double pij = std::exp(e);
                  s1 += pij * cb[pos];
                  if (pij > 0) s2 += pij * e;
                }
              }
              // The c-transform over the skipped cells: exact where their bound could
              // be the minimum, the bound itself nowhere else (it is never smaller).
              if (cmin_skip < mn && !full) {
                for (const auto* list : {&skipped_cell, &skipped_row}) {
                  for (const Index J : *list) {
                    for (Index j = c.begin[J]; j < c.begin[J + 1]; ++j) {
                      if (c.lw[j] == -kInf) continue;
                      double sq = 0;
                      for (Index k = 0; k < d; ++k) {
                        const double u = c.x(j, k) - xi[k];
                        sq += u * u;
                      }
                      mn = std::min(mn, cost_of_sq(sq, p) - gh[j]);
                    }
                  }
                }
              }
              final->transport[i] = s1;
              final->entropy[i] = s2;
              final->ctransform[i] = mn;
            }
            break;
          }
        }
      });
    }
  }
  guard.finish();
}

struct Level {
  Side X, Y;
};

struct Context {
  double p;
  Truncation trunc;  // of the epsilon-scaling passes (the loose one)
  double factor;
  std::int64_t passes = 0;
};

/// Epsilon scaling on (x, a), (y, b) from eps_start down to eps_end, starting from a
/// coarse level when the problem is large; leaves the sorted sides in L and the hat
/// potentials (sorted order) in F, G.
void descend(const MatrixD& x, const VectorD& a, const MatrixD& y, const VectorD& b,
             double eps_start, double eps_end, Context& ctx, Level& L, VectorD& F, VectorD& G) {
  const Index n = x.rows(), m = y.rows(), d = x.cols();
  const VectorD lo = x.colwise().minCoeff().cwiseMin(y.colwise().minCoeff()).transpose();
  const VectorD hi = x.colwise().maxCoeff().cwiseMax(y.colwise().maxCoeff()).transpose();
  const Grid grid = make_grid(lo, hi, std::max(n, m));
  L.X = build_side(x, a, grid);
  L.Y = build_side(y, b, grid);
  F = VectorD::Zero(n);
  G = VectorD::Zero(m);
  double eps = eps_start;
  const bool coarsen = static_cast<double>(n) * static_cast<double>(m) > kCoarsenPairs &&
                       4 * L.X.cells() <= n && 4 * L.Y.cells() <= m;
  if (coarsen) {
    const double eps_switch =
        std::max(eps_end, kSwitch * cost_of_sq(grid.h * grid.h * static_cast<double>(d), ctx.p));
    if (eps_switch < eps_start) {
      MatrixD cx, cy;
      VectorD ca, cb, CF, CG;
      coarse_measure(L.X, cx, ca);
      coarse_measure(L.Y, cy, cb);
      Level C;
      descend(cx, ca, cy, cb, eps_start, eps_switch, ctx, C, CF, CG);
      // Coarse atom k is cell k of this level; C sorted it to position s, order[s] = k.
      VectorD cf(C.X.size()), cg(C.Y.size());
      for (Index s = 0; s < C.X.size(); ++s) cf[C.X.order[s]] = CF[s];
      for (Index s = 0; s < C.Y.size(); ++s) cg[C.Y.order[s]] = CG[s];
      for (Index i = 0; i < n; ++i) F[i] = cf[L.X.cell[i]];
      for (Index j = 0; j < m; ++j) G[j] = cg[L.Y.cell[j]];
      eps = eps_switch;
    }
  }
  VectorD rel, Fn, Gn;
  for (;;) {
    check_interrupt();
    lse_pass(L.X, F, L.Y, G, eps, ctx.p, ctx.trunc, Fn, rel, nullptr);
    F.swap(Fn);
    lse_pass(L.Y, G, L.X, F, eps, ctx.p, ctx.trunc, Gn, rel, nullptr);
    G.swap(Gn);
    ++ctx.passes;
    if (eps <= eps_end) break;
    eps = std::max(eps * ctx.factor, eps_end);
  }
}

}  // namespace

WassersteinResult multiscale_sinkhorn_transport(const DoubleAtoms& mu, const DoubleAtoms& nu,
                                                const WassersteinOptions& o) {
  if (o.want_plan || o.want_dense_plan)
    throw invalid_argument("multiscale: the multiscale Sinkhorn stores no plan (O(n + m) memory)");
  const MatrixD& x = *mu.x;
  const MatrixD& y = *nu.x;
  const Index n = x.rows(), m = y.rows(), d = x.cols();
  if (d > kMaxMultiscaleDim)
    throw invalid_argument("multiscale: the grid needs dimension d <= 8 (got d = " +
                           std::to_string(d) + "); use online for higher dimensions");
  const double p = o.p, reg = o.reg;
  const VectorD lo = x.colwise().minCoeff().cwiseMin(y.colwise().minCoeff()).transpose();
  const VectorD hi = x.colwise().maxCoeff().cwiseMax(y.colwise().maxCoeff()).transpose();
  const double max_cost = std::pow((hi - lo).norm(), p);
  // The requested truncation holds from the last iterations at reg on; the passes
  // before only move the potentials towards the fixed point, with a looser one.
  const Truncation tight{-std::log(o.truncation), o.truncation};
  const Truncation loose{std::min(tight.tau, kLooseTau), std::max(tight.accept, kLooseAccept)};
  Context ctx{p, loose, o.epsilon_scaling};
  Level L;
  VectorD F, G;
  descend(x, *mu.w, y, *nu.w, std::max(max_cost, reg), reg, ctx, L, F, G);
  // At reg: g-updates give POT's criterion for (F, G_old); stop below tolerance.
  const VectorD& b = L.Y.w;
  double err = kInf, err_trunc = kInf, max_rel = 0;
  bool converged = false;
  Progress progress("multiscale sinkhorn", o.max_iterations);
  const bool show = o.progress && static_cast<double>(n) * static_cast<double>(m) > 1e8;
  std::int64_t k = 0;
  VectorD rel, Fn, Gn;
  Truncation trunc = loose;
  bool warm = loose.tau < tight.tau;
  lse_pass(L.X, F, L.Y, G, reg, p, trunc, Fn, rel, nullptr);
  F.swap(Fn);
  // Over-relaxation: after kRateTo plain iterations, whose errors give the contraction
  // rate rho per iteration, both updates move omega = 2 / (1 + sqrt(1 - rho)) times as
  // far (the optimal factor for two-cyclic fixed-point iterations), checked every 10
  // iterations with a plain f-update (so that the rows of the plan are exact). The early
  // rate underestimates the asymptotic one: at each check the observed rate lambda under
  // omega gives the plain rate back by the two-cyclic relation
  // (lambda + omega - 1)^2 = lambda omega^2 rho, and omega is raised to its optimum for
  // that rho. A check that finds a larger error than the one before takes back the last
  // raise (and stops raising), or drops the over-relaxation for good.
  double omega = 1, omega_good = 1, err10 = kInf, last_check = kInf;
  std::int64_t last_k = 0;
  bool raised = false, adapt = true;
  bool pure = true;
  for (; k < o.max_iterations; ++k) {
    check_interrupt();
    lse_pass(L.Y, G, L.X, F, reg, p, trunc, Gn, rel, nullptr);
    if (pure) {
      // Column sums of the plan of (F, G) are c_j = b_j exp((G_j - Gn_j) / reg) up to
      // the neglected part, at most c_j rel_j; its rows are exact (F = T(G)).
      double e2 = 0, t2 = 0;
      for (Index j = 0; j < m; ++j) {
        if (!(b[j] > 0)) continue;
        const double cj = b[j] * std::exp((G[j] - Gn[j]) / reg);
        e2 += (cj - b[j]) * (cj - b[j]);
        t2 += (cj * rel[j]) * (cj * rel[j]);
        if (!warm) max_rel = std::max(max_rel, rel[j]);
      }
      err_trunc = std::sqrt(e2);
      err = err_trunc + std::sqrt(t2);
      if (warm && (err < o.tolerance || err_trunc < std::sqrt(t2))) {
        // Converged under the loose truncation, or down to what its bound can tell:
        // from here on the requested one, with plain updates (F = T(G) again first,
        // so that the next check is exact).
        warm = false;
        trunc = tight;
        omega = 1;
        lse_pass(L.X, F, L.Y, G, reg, p, trunc, Fn, rel, nullptr);
        F.swap(Fn);
        for (Index i = 0; i < n; ++i) max_rel = std::max(max_rel, rel[i]);
        pure = true;
        continue;
      }
      if (err < o.tolerance) {
        converged = true;
        break;
      }
      if (omega > 1 && err > last_check) {
        omega = raised ? omega_good : 1;
        adapt = raised = false;
      } else if (omega > 1 && adapt && k > last_k && last_check < kInf) {
        const double lambda = std::pow(err / last_check, 1.0 / static_cast<double>(k - last_k));
        raised = false;
        if (lambda > omega - 1 && lambda < 1) {
          const double rho = (lambda + omega - 1) * (lambda + omega - 1) / (lambda * omega * omega);
          const double w = rho < 1 ? std::min(kMaxOmega, 2 / (1 + std::sqrt(1 - rho))) : omega;
          if (w > omega * 1.001) {
            omega_good = omega;
            omega = w;
            raised = true;
          }
        }
      }
      if (k == kRateFrom) err10 = err;
      if (k == kRateTo && omega == 1 && err < err10 && err10 < kInf) {
        const double rho = std::pow(err / err10, 1.0 / (kRateTo - kRateFrom));
        omega = std::min(kMaxOmega, 2 / (1 + std::sqrt(1 - rho)));
      }
      last_check = err;
      last_k = k;
    }
    for (Index j = 0; j < m; ++j)
      if (omega != 1 && std::isfinite(Gn[j] - G[j])) Gn[j] = G[j] + omega * (Gn[j] - G[j]);
    G.swap(Gn);
    lse_pass(L.X, F, L.Y, G, reg, p, trunc, Fn, rel, nullptr);
    pure = omega == 1 || (k + 1) % kCheckEvery == 0;
    for (Index i = 0; i < n; ++i)
      if (!pure && std::isfinite(Fn[i] - F[i])) Fn[i] = F[i] + omega * (Fn[i] - F[i]);
    F.swap(Fn);
    if (!warm)
      for (Index i = 0; i < n; ++i) max_rel = std::max(max_rel, rel[i]);
    if (show && k % 5 == 0) progress.update(k, "err=" + std::to_string(err));
  }
  progress.finish();
  // The plan of (F, G): cost, entropy and the c-transform of G (certified on every pair).
  FinalRows fr;
  lse_pass(L.X, F, L.Y, G, reg, p, tight, Fn, rel, &fr);
  double transport = 0, entropy = 0, dual = 0, final_rel = 0;
  for (Index i = 0; i < n; ++i) {
    transport += fr.transport[i];
    entropy += fr.entropy[i];
    if (L.X.w[i] > 0) dual += L.X.w[i] * fr.ctransform[i];
    final_rel = std::max(final_rel, rel[i]);
  }
  for (Index j = 0; j < m; ++j)
    if (b[j] > 0) dual += b[j] * G[j];
  const double coupling = mean_difference_coupling_cost(mu, nu, p);
  auto root = [&](double c) { return p == 1 ? c : std::pow(std::max(c, 0.0), 1.0 / p); };
  WassersteinResult r;
  r.p = p;
  r.method = WassersteinMethod::sinkhorn;
  r.kind = Bound::estimate;
  r.iterations = ctx.passes + k;
  r.marginal_violation = err;
  r.status = converged ? Status::converged : Status::iteration_limit;
  char buf[200];
  std::snprintf(buf, sizeof buf, "%.3e (truncated kernel: neglected relative mass per row <= %.1e)",
                err, std::max(max_rel, final_rel));
  r.message = std::string("multiscale (kernel not stored); ") +
              (converged ? std::string("converged: ||P^T 1 - b||_2 <= ") + buf
                         : "iteration cap " + std::to_string(o.max_iterations) +
                               " reached with ||P^T 1 - b||_2 <= " + buf);
  r.transport_cost = transport;
  r.entropic_cost = transport + reg * entropy;
  r.cost = transport;
  r.value = root(transport);
  r.upper = root(coupling);
  r.lower = root(std::clamp(dual, 0.0, coupling));
  if (o.want_potentials) {
    VectorD f(n), g(m);
    for (Index s = 0; s < n; ++s) f[L.X.order[s]] = fr.ctransform[s];
    for (Index s = 0; s < m; ++s) g[L.Y.order[s]] = G[s];
    r.potentials = Potentials{f, g};
  }
  return r;
}

}  // namespace measattn::detail
