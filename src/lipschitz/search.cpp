// Certified lower bounds on the W1 Lipschitz constant: a search for the pair of
// measures (mu, nu) in B_R maximizing W1(F(mu), F(nu)) / W1(mu, nu).
//
// Variables: atom positions and softmax logits of the weights of both measures.
// Objective: log W1(F(mu), F(nu)) - log W1(mu, nu). Gradients are exact almost
// everywhere: through the attention layer by reverse mode (engine.hpp) and
// through each W1 by the envelope theorem (optimal plan for the ground costs,
// Kantorovich potentials for the weights). Steps are normalized gradient steps
// with backtracking; positions are projected back onto B_R after each step.
// GCC 12 false positive inside its AVX-512 intrinsics when Eigen kernels are inlined.
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <omp.h>

#include <Eigen/Eigenvalues>
#include <Eigen/SVD>

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "common/collectives.hpp"
#include "common/parallel.hpp"
#include "lipschitz/engine.hpp"
#include "measattn/error.hpp"
#include "measattn/interrupt.hpp"
#include "measattn/lipschitz.hpp"
#include "measattn/progress.hpp"
#include "measattn/threads.hpp"
#include "measattn/wasserstein.hpp"

namespace measattn {

namespace detail {

/// W1 with its gradient with respect to the atoms and weights of both measures.
struct TransportGrad {
  double value = 0;
  MatrixD gx, gy;  // d value / d atoms
  VectorD fa, gb;  // d value / d weights (Kantorovich potentials)
};

TransportGrad transport_grad(const MatrixD& x, const VectorD& a, const MatrixD& y,
                             const VectorD& b) {
  WassersteinOptions o;
  o.want_plan = true;
  o.want_potentials = true;
  const WassersteinResult r = wasserstein_exact(MeasureD(x, a), MeasureD(y, b), o);
  TransportGrad t;
  t.value = r.value;
  t.gx = MatrixD::Zero(x.rows(), x.cols());
  t.gy = MatrixD::Zero(y.rows(), y.cols());
  if (r.plan) {
    for (const auto& e : r.plan->entries) {
      const auto diff = (x.row(e.i) - y.row(e.j)).eval();
      const double nn = diff.norm();
      if (nn > 1e-300) {
        t.gx.row(e.i) += e.mass / nn * diff;
        t.gy.row(e.j) -= e.mass / nn * diff;
      }
    }
  }
  if (r.potentials) {
    t.fa = r.potentials->f;
    t.gb = r.potentials->g;
  } else {
    t.fa = VectorD::Zero(x.rows());
    t.gb = VectorD::Zero(y.rows());
  }
  return t;
}

}  // namespace detail

namespace {

using detail::LayerParams;

struct PairState {
  MatrixD x, y;  // positions
  VectorD a, b;  // logits
};

struct Eval {
  double ratio = 0;  // W1 out / W1 in (0 when W1 in vanishes)
  double w_in = 0, w_out = 0;
  MatrixD gx, gy;  // gradient of log ratio
  VectorD ga, gb;
  bool valid = false;
};

VectorD log_softmax(const VectorD& a) {
  const double mx = a.maxCoeff();
  const double lse = mx + std::log((a.array() - mx).exp().sum());
  return (a.array() - lse).matrix();
}

MatrixD forward(const LayerParams& p, const MatrixD& x, const VectorD& lw) {
  MatrixD out(x.rows(), p.d_out);
  detail::layer_forward(p, x.data(), lw.data(), x.rows(), out.data());
  return out;
}

/// W1 out / W1 in made safe against rounding: the attention outputs carry an
/// absolute error of a few ulps of their magnitude, so W1 out is reduced by
/// 1e-12 (1 + max |output|) and pairs with W1 in below 1e-12 (1 + max |atom|)
/// (atoms that coincide up to rounding) give 0.
double safe_ratio(double w_in, double w_out, double in_scale, double out_scale) {
  if (!(w_in > 1e-12 * (1 + in_scale))) return 0;
  return std::max(0.0, w_out - 1e-12 * (1 + out_scale)) / w_in;
}

/// An upper bound on W1(mu, nu) by an explicit coupling, for the two structured
/// kinds of pairs of the search (the tiny-atom and extremal-pair seeds): equal
/// weights (the identity coupling, sum_i w_i ||x_i - y_i||) or equal atoms (mass
/// kept where it is, the surplus moved greedily to the deficit). Accurate to
/// the relative rounding of its own arithmetic however small it is, unlike the
/// solver's value, whose absolute error is a few ulps of the mass times R.
/// Negative when the pair has neither structure.
template <class T>
T coupling_upper_bound(const MatrixD& x, const VectorD& wx, const MatrixD& y, const VectorD& wy) {
  if (x.rows() != y.rows()) return T(-1);
  const Index n = x.rows(), d = x.cols();
  auto dist = [&](Index i, Index j) {
    T s(0);
    for (Index c = 0; c < d; ++c) {
      const T t = static_cast<T>(x(i, c)) - static_cast<T>(y(j, c));
      s += t * t;
    }
    using std::sqrt;
    return sqrt(s);
  };
  if (wx == wy) {
    T s(0);
    for (Index i = 0; i < n; ++i) s += static_cast<T>(wx[i]) * dist(i, i);
    return s;
  }
  if (x == y) {
    std::vector<T> surplus(static_cast<size_t>(n)), deficit(static_cast<size_t>(n));
    for (Index i = 0; i < n; ++i) {
      const T diff = static_cast<T>(wx[i]) - static_cast<T>(wy[i]);
      surplus[static_cast<size_t>(i)] = diff > 0 ? diff : T(0);
      deficit[static_cast<size_t>(i)] = diff < 0 ? -diff : T(0);
    }
    // The total surplus and deficit differ by the rounding of the weights'
    // normalization; the larger one is transported (the rest is charged at 2R'
    // below, R' the largest distance), so the coupling is never short.
    T cost(0), diam(0);
    for (Index i = 0; i < n; ++i)
      for (Index j = 0; j < n; ++j) diam = std::max(diam, dist(i, j));
    Index j = 0;
    for (Index i = 0; i < n; ++i) {
      T m = surplus[static_cast<size_t>(i)];
      while (m > 0 && j < n) {
        const T t = std::min(m, deficit[static_cast<size_t>(j)]);
        cost += t * dist(i, j);
        m -= t;
        deficit[static_cast<size_t>(j)] -= t;
        if (deficit[static_cast<size_t>(j)] <= 0) ++j;
      }
      cost += m * diam;
    }
    for (; j < n; ++j) cost += deficit[static_cast<size_t>(j)] * diam;
    return cost;
  }
  return T(-1);
}

Eval evaluate(const LayerParams& p, const PairState& s, bool want_grad) {
  Eval e;
  const VectorD lmu = log_softmax(s.a), lnu = log_softmax(s.b);
  const VectorD wmu = lmu.array().exp().matrix(), wnu = lnu.array().exp().matrix();
  const MatrixD fmu = forward(p, s.x, lmu), fnu = forward(p, s.y, lnu);
  const detail::TransportGrad tin = detail::transport_grad(s.x, wmu, s.y, wnu);
  e.w_in = tin.value;
  const double in_scale = std::max(s.x.cwiseAbs().maxCoeff(), s.y.cwiseAbs().maxCoeff());
  double w_in = tin.value;
  if (!(tin.value > 1e-12 * (1 + in_scale))) {
    // Structured pairs (equal weights or equal atoms) keep an exact upper bound
    // on W1(mu, nu) down to any size; the output side keeps its margin.
    const double c = coupling_upper_bound<double>(s.x, wmu, s.y, wnu);
    if (!(c > 0)) return e;
    w_in = c;
    e.w_in = c;
  }
  const detail::TransportGrad tout = detail::transport_grad(fmu, wmu, fnu, wnu);
  e.w_out = tout.value;
  const double out_scale = std::max(fmu.cwiseAbs().maxCoeff(), fnu.cwiseAbs().maxCoeff());
  e.ratio = w_in == tin.value ? safe_ratio(w_in, tout.value, in_scale, out_scale)
                              : std::max(0.0, tout.value - 1e-12 * (1 + out_scale)) / w_in;
  e.valid = e.ratio > 0;
  if (!e.valid) return e;
  if (!want_grad) return e;
  const double ci = 1.0 / w_in;
  const double co = tout.value > 0 ? 1.0 / tout.value : 0.0;
  // d log ratio = d W_out / W_out - d W_in / W_in.
  e.gx = -ci * tin.gx;
  e.gy = -ci * tin.gy;
  VectorD lbar_mu = wmu.cwiseProduct(co * tout.fa - ci * tin.fa);  // d/d log w via w_i
  VectorD lbar_nu = wnu.cwiseProduct(co * tout.gb - ci * tin.gb);
  if (co > 0) {
    const MatrixD gmu = co * tout.gx, gnu = co * tout.gy;
    MatrixD xb = MatrixD::Zero(s.x.rows(), p.d), yb = MatrixD::Zero(s.y.rows(), p.d);
    VectorD lb1 = VectorD::Zero(s.x.rows()), lb2 = VectorD::Zero(s.y.rows());
    detail::layer_vjp(p, s.x.data(), lmu.data(), s.x.rows(), gmu.data(), xb.data(), lb1.data());
    detail::layer_vjp(p, s.y.data(), lnu.data(), s.y.rows(), gnu.data(), yb.data(), lb2.data());
    e.gx += xb;
    e.gy += yb;
    lbar_mu += lb1;
    lbar_nu += lb2;
  }
  // log w = a - lse(a): d/da_j = lbar_j - w_j sum lbar.
  e.ga = lbar_mu - wmu * lbar_mu.sum();
  e.gb = lbar_nu - wnu * lbar_nu.sum();
  return e;
}

void clamp_logits(VectorD& a) {
  a.array() -= a.maxCoeff();
  a = a.cwiseMax(-40.0);
}

MatrixD uniform_ball(std::mt19937_64& rng, Index n, Index d, double radius) {
  std::normal_distribution<double> nd(0.0, 1.0);
  std::uniform_real_distribution<double> ud(0.0, 1.0);
  MatrixD x(n, d);
  for (Index i = 0; i < n; ++i) {
    for (Index c = 0; c < d; ++c) x(i, c) = nd(rng);
    const double nn = std::max(x.row(i).norm(), 1e-300);
    // Half of the atoms on the sphere (extremes matter), half inside.
    const double t = ud(rng) < 0.5 ? 1.0 : std::pow(ud(rng), 1.0 / static_cast<double>(d));
    x.row(i) *= radius * t / nn;
  }
  return x;
}

MatrixD gaussian(std::mt19937_64& rng, Index n, Index d, double s) {
  std::normal_distribution<double> nd(0.0, s);
  MatrixD x(n, d);
  for (Index i = 0; i < n; ++i)
    for (Index c = 0; c < d; ++c) x(i, c) = nd(rng);
  return x;
}

MatrixD castin_seed(const Model<double>& model, Index n, double radius, bool top) {
  const Head<double> hd = model.head(0);
  const MatrixD a = hd.q.transpose() * hd.k / hd.tau;
  const MatrixD sym = 0.5 * (a + a.transpose());
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(sym);
  const VectorD u = es.eigenvectors().col(top ? sym.rows() - 1 : 0);
  MatrixD x(n, sym.rows());
  for (Index i = 0; i < n; ++i) {
    const double f = top ? (i == 0 ? 1.0 : 0.5) : (i == 0 ? -1.0 : 1.0);
    x.row(i) = radius * f * u.transpose();
  }
  return x;
}

MatrixD covariance_seed(const Model<double>& model, Index n, double radius) {
  const Head<double> hd = model.head(0);
  const MatrixD a = hd.q.transpose() * hd.k / hd.tau;
  const VectorD c = hd.k.transpose() * hd.b_q / hd.tau;
  const Index d = a.rows();
  // u maximizing ||V u|| ||A u|| among the top right singular vectors of A and V.
  VectorD best = VectorD::Unit(d, 0);
  double score = -1;
  for (const MatrixD* m : {&a, &hd.v}) {
    Eigen::JacobiSVD<Eigen::MatrixXd> svd(*m, Eigen::ComputeFullV);
    for (Index j = 0; j < std::min<Index>(d, 2); ++j) {
      const VectorD u = svd.matrixV().col(j);
      const double sc = (hd.v * u).norm() * (a * u).norm();
      if (sc > score) {
        score = sc;
        best = u;
      }
    }
  }
  const VectorD au = a * best;
  VectorD x0 = VectorD::Zero(d);
  if (au.squaredNorm() > 0) x0 = -(best.dot(c) / au.squaredNorm()) * au;
  if (x0.norm() > radius) x0 *= radius / x0.norm();
  MatrixD x(n, d);
  x.row(0) = radius * best.transpose();
  x.row(1) = -radius * best.transpose();
  for (Index i = 2; i < n; ++i) x.row(i) = x0.transpose();
  return x;
}

/// A bulk query x0 and a point y that x0 weighs e^Delta times more than
/// itself (Delta = max over heads of the logit gain), the direction u in which
/// moving a tiny atom at y moves the output most, and the first-order value of
/// the ratio (the surrogate) for the tiny-atom pair.
struct AtomSeed {
  VectorD x0, y, u;
  double gain = 0;       // Delta
  double mass = 0;       // the tiny atom's mass eps ~ 1e-3 e^-Delta
  double surrogate = 0;  // sigma_max of M below
};

/// Delta(x0, y): per head, log(pi_{0,1} / pi_{0,0}) for the two-atom measure
/// (x0, y) with equal weights; the max over heads.
double logit_gain(const LayerParams& p, const VectorD& x0, const VectorD& y) {
  const Index d = p.d;
  MatrixD x(2, d);
  x.row(0) = x0.transpose();
  x.row(1) = y.transpose();
  const VectorD lw = VectorD::Zero(2);
  MatrixD out(2, p.d_out);
  std::vector<detail::HeadCache<double>> caches;
  detail::layer_forward(p, x.data(), lw.data(), 2, out.data(), &caches);
  double best = -INFINITY;
  for (const auto& c : caches)
    if (c.pi[0] > 0 && c.pi[1] > 0) best = std::max(best, std::log(c.pi[1] / c.pi[0]));
  return best;
}

/// The surrogate of the tiny-atom pair mu = (1 - eps) delta_x0 + eps delta_y,
/// nu = the same with y moved to y + h u: as h -> 0 the ratio tends to
/// ||M u|| with M = (1/eps) d/dy [(1 - eps) F_0 + eps F_1] (F_i the output at atom
/// i; the distance of the means is a lower bound on W1 of the outputs, eps h is
/// W1 of the inputs). M by forward mode, one dual pass per coordinate of y.
MatrixD tiny_atom_jacobian(const LayerParams& p, const VectorD& x0, const VectorD& y, double eps) {
  using detail::Dual;
  const Index d = p.d, dout = p.d_out;
  std::vector<Dual> x(static_cast<size_t>(2 * d)), lw(2), out(static_cast<size_t>(2 * dout));
  lw[0] = Dual(std::log1p(-eps));
  lw[1] = Dual(std::log(eps));
  MatrixD m(dout, d);
  for (Index c = 0; c < d; ++c) {
    for (Index j = 0; j < d; ++j) {
      x[static_cast<size_t>(j)] = Dual(x0[j]);
      x[static_cast<size_t>(d + j)] = Dual(y[j], j == c ? 1.0 : 0.0);
    }
    detail::layer_forward<Dual>(p, x.data(), lw.data(), 2, out.data());
    for (Index o = 0; o < dout; ++o)
      m(o, c) =
          ((1 - eps) * out[static_cast<size_t>(o)].e + eps * out[static_cast<size_t>(dout + o)].e) /
          eps;
  }
  return m;
}

/// The candidates of the tiny-atom and extremal-pair seeds, best first
/// (deterministic: fixed candidates, one seeded generator, stable sorts).
/// Points: +-R times eigenvectors of the symmetric part and singular vectors of
/// each head's A = Q^T K / tau, +-R c / ||c||, random directions, the origin;
/// for the dot potential also y = R a(x0) / ||a(x0)||, the maximizer of the
/// logit <a(x0), y> over B_R. The pairs (x0, y) of largest gain Delta get their
/// surrogate. `by_gain` holds the same seeds sorted by Delta instead.
struct SeedTable {
  std::vector<AtomSeed> by_surrogate, by_gain;
};

SeedTable seed_table(const LayerParams& p, double radius, std::uint64_t seed) {
  const Index d = p.d;
  std::vector<VectorD> dirs;
  auto add = [&](VectorD v) {
    const double nn = v.norm();
    if (nn > 0 && std::isfinite(nn)) {
      dirs.push_back(v / nn);
      dirs.push_back(-v / nn);
    }
  };
  // At most 48 structured directions in all (fewer per head when there are many
  // heads), so that the table costs O(64^2 H d) for the dot potential.
  const Index nh = static_cast<Index>(p.heads.size());
  const Index per = std::max<Index>(1, std::min<Index>(std::min<Index>(d, 3), 4 / nh));
  for (const auto& hp : p.heads) {
    const MatrixD a = hp.q.transpose() * hp.k / hp.tau;
    const MatrixD sym = 0.5 * (a + a.transpose());
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(sym);
    // Singular vectors of A from the eigenvectors of A A^T and A^T A.
    for (Index j = 0; j < per; ++j) {
      add(es.eigenvectors().col(j));
      add(es.eigenvectors().col(d - 1 - j));
    }
    if (d <= 64) {
      Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> left(a * a.transpose()),
          right(a.transpose() * a);
      for (Index j = 0; j < per; ++j) {
        add(left.eigenvectors().col(d - 1 - j));
        add(right.eigenvectors().col(d - 1 - j));
      }
    }
    add(hp.k.transpose() * hp.bq / hp.tau);
    if (static_cast<Index>(dirs.size()) >= 96) break;
  }
  std::mt19937_64 rng(seed * 0x2545F4914F6CDD1DULL + 0x9E3779B97F4A7C15ULL);
  std::normal_distribution<double> nd(0.0, 1.0);
  for (int r = 0; r < 12; ++r) {
    VectorD v(d);
    for (Index c = 0; c < d; ++c) v[c] = nd(rng);
    add(v);
  }
  std::vector<VectorD> pts;
  for (const auto& v : dirs) pts.push_back(radius * v);
  pts.push_back(VectorD::Zero(d));
  const bool dot = std::all_of(p.heads.begin(), p.heads.end(),
                               [](const auto& hp) { return hp.potential == Potential::dot; });
  struct Pair {
    Index i;
    VectorD y;
    double gain;
  };
  std::vector<Pair> pairs;
  for (Index i = 0; i < static_cast<Index>(pts.size()); ++i) {
    const VectorD& x0 = pts[static_cast<size_t>(i)];
    std::vector<VectorD> ys = pts;
    if (dot)
      for (const auto& hp : p.heads) {
        const VectorD av = hp.k.transpose() * (hp.q * x0 + hp.bq) / hp.tau;
        if (av.norm() > 0) ys.push_back(radius * av / av.norm());
      }
    // Dot potential: Delta_h = a_h(x0) . (y - x0) with a_h(x0) = K^T (Q x0 + b_q) / tau.
    std::vector<VectorD> av;
    if (dot)
      for (const auto& hp : p.heads) av.push_back(hp.k.transpose() * (hp.q * x0 + hp.bq) / hp.tau);
    for (const auto& y : ys) {
      if ((y - x0).norm() <= 1e-9 * radius) continue;
      double g = -INFINITY;
      if (dot)
        for (const auto& v : av) g = std::max(g, v.dot(y - x0));
      else
        g = logit_gain(p, x0, y);
      if (std::isfinite(g)) pairs.push_back({i, y, g});
    }
  }
  std::stable_sort(pairs.begin(), pairs.end(),
                   [](const Pair& a, const Pair& b) { return a.gain > b.gain; });
  const size_t keep = std::min<size_t>(pairs.size(), d > 64 ? 8 : 24);
  SeedTable t;
  for (size_t q = 0; q < keep; ++q) {
    AtomSeed sd;
    sd.x0 = pts[static_cast<size_t>(pairs[q].i)];
    sd.y = pairs[q].y;
    sd.gain = pairs[q].gain;
    // eps ~ 1e-3 e^-Delta: the atom's share of x0's kernel stays ~ 1e-3.
    sd.mass = std::clamp(1e-3 * std::exp(-std::max(sd.gain, 0.0)), 1e-13, 1e-3);
    if (d <= 64) {
      const MatrixD m = tiny_atom_jacobian(p, sd.x0, sd.y, sd.mass);
      Eigen::BDCSVD<Eigen::MatrixXd> svd(m, Eigen::ComputeFullV);
      sd.surrogate = svd.singularValues().size() ? svd.singularValues()[0] : 0.0;
      sd.u = svd.matrixV().col(0);
    } else {
      // Large d: u is the top right singular vector of sum_h W_O^h V_h (power
      // iteration), the value part of M; the surrogate is ranked by the gain.
      MatrixD b = MatrixD::Zero(p.d_out, d);
      for (const auto& hp : p.heads) b += hp.wo * hp.v;
      VectorD u = VectorD::Constant(d, 1.0 / std::sqrt(static_cast<double>(d)));
      for (int it = 0; it < 30; ++it) {
        const VectorD w = b.transpose() * (b * u);
        if (!(w.norm() > 0)) break;
        u = w / w.norm();
      }
      sd.u = u;
      sd.surrogate = sd.gain;
    }
    if (sd.u.dot(sd.y) > 0) sd.u = -sd.u;  // inward where y is on the sphere
    if (!std::isfinite(sd.surrogate)) continue;
    t.by_gain.push_back(sd);
  }
  t.by_surrogate = t.by_gain;
  std::stable_sort(t.by_surrogate.begin(), t.by_surrogate.end(),
                   [](const AtomSeed& a, const AtomSeed& b) { return a.surrogate > b.surrogate; });
  return t;
}

struct RestartOut {
  double ratio = 0;  // certified
  PairState best;
  std::string origin;
  std::string certification;
  double separation = 1;
  std::int64_t evals = 0;
  bool valid = false;
};

/// How a reported ratio was certified (LipschitzWitness::certification).
constexpr const char* kDoubleExact = "double, exact W1 on both sides";
constexpr const char* kLongDouble =
    "long double: the layer recomputed in extended precision, W1(mu, nu) bounded above by an "
    "explicit coupling, W1(F(mu), F(nu)) below by a 1-Lipschitz Kantorovich dual function";

/// The recheck in long double for the structured pairs (equal weights or equal
/// atoms): the measures are the double atoms and weights as given; the layer is
/// evaluated in long double; W1(mu, nu) <= an explicit coupling's cost; and
/// W1(F(mu), F(nu)) >= int f d(F(mu) - F(nu)) for the 1-Lipschitz function
/// f(z) = min_j (g_j + ||z - F(nu)_j||) built from the solver's potential g on F(nu)
/// (any g gives a 1-Lipschitz f), and >= the distance of the two means. The output
/// side is reduced by 1e-15 (1 + max |output|), thousands of long double ulps.
/// Returns 0 when the pair has neither structure.
double certify_long_double(const LayerParams& p, const MatrixD& x, const VectorD& lmu,
                           const MatrixD& y, const VectorD& lnu, double* w_in, double* w_out) {
  using LD = long double;
  const VectorD wmu = lmu.array().exp().matrix(), wnu = lnu.array().exp().matrix();
  const LD cin = coupling_upper_bound<LD>(x, wmu, y, wnu);
  if (!(cin > 0)) return 0;
  const Index n = x.rows(), m = y.rows(), d = p.d, dout = p.d_out;
  auto run = [&](const MatrixD& z, const VectorD& w) {
    std::vector<LD> zl(static_cast<size_t>(z.rows() * d)), ll(static_cast<size_t>(z.rows())),
        out(static_cast<size_t>(z.rows() * dout));
    for (Index i = 0; i < z.rows(); ++i) {
      for (Index c = 0; c < d; ++c) zl[static_cast<size_t>(i * d + c)] = z(i, c);
      ll[static_cast<size_t>(i)] = std::log(static_cast<LD>(w[i]));
    }
    detail::layer_forward<LD>(p, zl.data(), ll.data(), z.rows(), out.data());
    return out;
  };
  const std::vector<LD> fm = run(x, wmu), fn = run(y, wnu);
  for (const LD v : fm)
    if (!std::isfinite(v)) return 0;
  for (const LD v : fn)
    if (!std::isfinite(v)) return 0;
  // The solver's potential on F(nu), from the double outputs.
  MatrixD fmd(n, dout), fnd(m, dout);
  for (Index i = 0; i < n; ++i)
    for (Index o = 0; o < dout; ++o) fmd(i, o) = static_cast<double>(fm[i * dout + o]);
  for (Index j = 0; j < m; ++j)
    for (Index o = 0; o < dout; ++o) fnd(j, o) = static_cast<double>(fn[j * dout + o]);
  const detail::TransportGrad t = detail::transport_grad(fmd, wmu, fnd, wnu);
  auto f = [&](const LD* z) {
    LD best = std::numeric_limits<LD>::infinity();
    for (Index j = 0; j < m; ++j) {
      LD s2 = 0;
      for (Index o = 0; o < dout; ++o) {
        const LD u = z[o] - fn[j * dout + o];
        s2 += u * u;
      }
      best = std::min(best, static_cast<LD>(t.gb[j]) + std::sqrt(s2));
    }
    return best;
  };
  LD dual = 0;
  for (Index i = 0; i < n; ++i) dual += static_cast<LD>(wmu[i]) * f(&fm[i * dout]);
  for (Index j = 0; j < m; ++j) dual -= static_cast<LD>(wnu[j]) * f(&fn[j * dout]);
  std::vector<LD> mean(static_cast<size_t>(dout), 0);
  for (Index i = 0; i < n; ++i)
    for (Index o = 0; o < dout; ++o) mean[o] += static_cast<LD>(wmu[i]) * fm[i * dout + o];
  for (Index j = 0; j < m; ++j)
    for (Index o = 0; o < dout; ++o) mean[o] -= static_cast<LD>(wnu[j]) * fn[j * dout + o];
  LD mn = 0, scale = 0;
  for (Index o = 0; o < dout; ++o) mn += mean[o] * mean[o];
  for (const LD v : fm) scale = std::max(scale, std::abs(v));
  for (const LD v : fn) scale = std::max(scale, std::abs(v));
  const LD lower = std::max(std::abs(dual), std::sqrt(mn));
  const LD cert = lower - static_cast<LD>(1e-15) * (1 + scale);
  if (w_in) *w_in = static_cast<double>(cin);
  if (w_out) *w_out = static_cast<double>(cert > 0 ? cert : 0);  // the certified part
  return cert > 0 ? static_cast<double>(cert / cin) : 0.0;
}

/// Exact recomputation in double: the attention outputs, then W1 by the
/// wasserstein module's exact solver on both sides; for structured pairs also
/// in long double (certify_long_double), the larger certified value kept.
double certify(const LayerParams& p, const PairState& s, MatrixD* fmu, MatrixD* fnu, double* w_in,
               double* w_out, std::string* how = nullptr) {
  const VectorD lmu = log_softmax(s.a), lnu = log_softmax(s.b);
  const MatrixD fm = forward(p, s.x, lmu), fn = forward(p, s.y, lnu);
  const MeasureD mu(s.x, lmu.array().exp().matrix()), nu(s.y, lnu.array().exp().matrix());
  const double wi = wasserstein_exact_value(mu, nu, 1.0);
  const double wo =
      wasserstein_exact_value(MeasureD(fm, mu.weights()), MeasureD(fn, nu.weights()), 1.0);
  const double in_scale = std::max(s.x.cwiseAbs().maxCoeff(), s.y.cwiseAbs().maxCoeff());
  const double out_scale = std::max(fm.cwiseAbs().maxCoeff(), fn.cwiseAbs().maxCoeff());
  // The output side as certified: reduced by the rounding margin (safe_ratio).
  if (w_in) *w_in = wi;
  if (w_out) *w_out = std::max(0.0, wo - 1e-12 * (1 + out_scale));
  if (fmu) *fmu = fm;
  if (fnu) *fnu = fn;
  if (how) *how = kDoubleExact;
  const double plain = safe_ratio(wi, wo, in_scale, out_scale);
  double li = 0, lo = 0;
  const double ext = certify_long_double(p, s.x, lmu, s.y, lnu, &li, &lo);
  // Kept only where it resolves more than double does (a relative gain above
  // 1e-6): elsewhere both agree and the double value is reported.
  if (ext > plain * (1 + 1e-6)) {
    if (w_in) *w_in = li;
    if (w_out) *w_out = lo;
    if (how) *how = kLongDouble;
    return ext;
  }
  return plain;
}

RestartOut run_restart(const Model<double>& model, const LayerParams& p, double radius,
                       const LipschitzSearchOptions& o, const SeedTable& seeds, int r) {
  std::mt19937_64 rng(o.seed * 0x9E3779B97F4A7C15ULL + 0x632BE59BD9B4E019ULL * (r + 1));
  const Index n = o.atoms, d = p.d;
  std::normal_distribution<double> nd(0.0, 1.0);
  PairState s;
  // Nearby moves keep nu = mu + (D, E) and move (mu, D, E).
  bool nearby = false;
  std::string origin;
  // Restart kinds: 0, 1 Castin's seeds; then cycling random (2), nearby
  // positions (3), nearby weights (4), both (5), Castin (6).
  // The covariance seed is one extra restart (index = restarts) when n >= 3.
  // Restarts 2 and 3 and two of every further seven are the structured
  // families: tiny atom (7) and extremal pair (8); `slot` picks their candidate.
  const bool cov_seed = r == o.restarts;
  int kind = 0, slot = 0;
  if (r < 2) {
    kind = r;
  } else if (r < 4) {
    kind = r == 2 ? 7 : 8;
  } else {
    const int c = (r - 4) % 7;
    slot = 1 + (r - 4) / 7;
    kind = c < 5 ? 2 + c : (c == 5 ? 7 : 8);
  }
  if (kind >= 7 && (n < 2 || seeds.by_gain.empty())) kind = 2;
  bool freeze_positions = false, freeze_weights = false;
  const double delta = o.nearby;
  auto random_logits = [&](Index m) {
    VectorD a(m);
    for (Index i = 0; i < m; ++i) a[i] = nd(rng);
    return a;
  };
  if (cov_seed) {
    // Two heavy atoms at +-R u split the kernel of light query atoms placed where
    // both logits are equal: there the Jacobian of Gamma_mu is R^2 (V u)(A u)^T
    // (the covariance is R^2 u u^T), the largest the x-part allows. Moving the
    // light atoms a little gives a ratio close to R^2 ||V u|| ||A u||.
    origin = "covariance";
    s.x = covariance_seed(model, n, radius);
    s.a = VectorD::Constant(n, -6.0);
    s.a[0] = s.a[1] = 0;
    s.b = s.a;
    s.y = s.x;
    s.y.bottomRows(n - 2) += gaussian(rng, n - 2, d, delta * radius);
    detail::project_rows_to_ball(s.y, radius);
    nearby = true;
  } else if (kind == 7 || kind == 8) {
    // A heavy bulk at x0 and a tiny atom at y, which x0 weighs e^Delta times more
    // than itself. Tiny atom: nu moves the atom by 1e-3 R in the direction that
    // moves the output most (equal weights). Extremal pair: nu puts mass
    // eps ~ 1e-3 e^-Delta at y that mu lacks (equal atoms); in one dimension
    // delta_{-R} against (1 - eps) delta_{-R} + eps delta_R.
    const bool tiny = kind == 7;
    const auto& list = tiny ? seeds.by_surrogate : seeds.by_gain;
    const AtomSeed& sd = list[static_cast<size_t>(slot) % list.size()];
    origin = tiny ? "tiny_atom" : "extremal_pair";
    s.x = MatrixD(n, d);
    s.x.row(0) = sd.x0.transpose();
    s.x.row(1) = sd.y.transpose();
    for (Index i = 2; i < n; ++i) s.x.row(i) = sd.x0.transpose();
    if (n > 2) s.x.bottomRows(n - 2) += gaussian(rng, n - 2, d, 1e-3 * radius);
    if (slot >= static_cast<int>(list.size())) s.x += gaussian(rng, n, d, 1e-2 * radius);
    detail::project_rows_to_ball(s.x, radius);
    const double eps = sd.mass, bulk = std::log((1 - eps) / static_cast<double>(n - 1));
    s.a = VectorD::Constant(n, bulk);
    s.y = s.x;
    s.b = s.a;
    if (tiny) {
      s.a[1] = s.b[1] = std::log(eps);
      s.y.row(1) += 1e-3 * radius * sd.u.transpose();
      detail::project_rows_to_ball(s.y, radius);
      freeze_weights = true;
    } else {
      s.a[1] = bulk - 40;
      s.b[1] = std::log(eps);
      freeze_positions = true;
    }
    clamp_logits(s.a);
    clamp_logits(s.b);
    if (tiny) s.b = s.a;
    nearby = true;
  } else if (kind <= 1 || kind == 6) {
    origin = "adversarial";
    // Castin et al.'s sequences as the first measure, a nearby second one:
    // R (u, u/2, ..., u/2) with u the top eigenvector of sym(A), and
    // R (-u, u, ..., u) with u the eigenvector of the most negative eigenvalue.
    const bool top = kind == 0 || (kind == 6 && (r / 5) % 2 == 0);
    MatrixD x = castin_seed(model, n, radius, top);
    x += gaussian(rng, n, d, 1e-2 * radius);
    detail::project_rows_to_ball(x, radius);
    s.x = x;
    s.a = VectorD::Zero(n);
    s.y = x + gaussian(rng, n, d, delta * radius);
    detail::project_rows_to_ball(s.y, radius);
    s.b = s.a;
    nearby = true;
  } else if (kind == 2) {
    origin = "random";
    s.x = uniform_ball(rng, n, d, radius);
    s.y = uniform_ball(rng, n, d, radius);
    s.a = random_logits(n);
    s.b = random_logits(n);
  } else {
    nearby = true;
    s.x = uniform_ball(rng, n, d, radius);
    s.a = random_logits(n);
    s.y = s.x;
    s.b = s.a;
    if (kind == 3 || kind == 5) {
      s.y += gaussian(rng, n, d, delta * radius);
      detail::project_rows_to_ball(s.y, radius);
    }
    if (kind == 4 || kind == 5) s.b += gaussian(rng, n, 1, delta).col(0);
    origin = kind == 4 ? "weights" : "nearby";
  }
  RestartOut out;
  out.origin = origin;
  Eval cur = evaluate(p, s, true);
  ++out.evals;
  if (!cur.valid) {
    // Degenerate start (mu == nu): separate them a little.
    s.y += gaussian(rng, n, d, delta * radius);
    detail::project_rows_to_ball(s.y, radius);
    cur = evaluate(p, s, true);
    ++out.evals;
  }
  PairState best = s;
  double best_ratio = cur.valid ? cur.ratio : 0;
  double eta = o.step_size;
  // Nearby restarts: the difference (D, E) moves at the scale of the perturbation.
  double eta_diff = nearby ? o.step_size * delta * 10 : 0;
  for (int step = 0; step < o.steps && cur.valid && eta > 1e-10; ++step) {
    measattn::detail::check_interrupt();  // Ctrl-C (rate-limited; captured by the guard)
    PairState t = s;
    if (!nearby) {
      const double gn = std::sqrt(radius * radius * (cur.gx.squaredNorm() + cur.gy.squaredNorm()) +
                                  cur.ga.squaredNorm() + cur.gb.squaredNorm());
      if (!(gn > 0)) break;
      t.x += (eta * radius * radius / gn) * cur.gx;
      t.y += (eta * radius * radius / gn) * cur.gy;
      t.a += (eta / gn) * cur.ga;
      t.b += (eta / gn) * cur.gb;
    } else {
      // Variables (X, a) and (D, E) = (Y - X, b - a).
      const MatrixD gX = cur.gx + cur.gy;
      const VectorD gA = cur.ga + cur.gb;
      const double g1 = std::sqrt(radius * radius * gX.squaredNorm() + gA.squaredNorm());
      const double g2 = std::sqrt(radius * radius * cur.gy.squaredNorm() + cur.gb.squaredNorm());
      const MatrixD dxy = s.y - s.x;
      const VectorD dab = s.b - s.a;
      if (g1 > 0) {
        t.x += (eta * radius * radius / g1) * gX;
        t.a += (eta / g1) * gA;
      }
      t.y = t.x + dxy;
      t.b = t.a + dab;
      if (g2 > 0) {
        if (!freeze_positions) t.y += (eta_diff * radius * radius / g2) * cur.gy;
        if (!freeze_weights) t.b += (eta_diff / g2) * cur.gb;
      }
    }
    detail::project_rows_to_ball(t.x, radius);
    detail::project_rows_to_ball(t.y, radius);
    clamp_logits(t.a);
    clamp_logits(t.b);
    if (freeze_positions) t.y = t.x;
    if (freeze_weights) t.b = t.a;
    Eval nxt = evaluate(p, t, true);
    ++out.evals;
    if (nxt.valid && nxt.ratio > cur.ratio) {
      s = std::move(t);
      cur = std::move(nxt);
      eta *= 1.3;
      eta_diff *= 1.3;
      if (cur.ratio > best_ratio) {
        best_ratio = cur.ratio;
        best = s;
      }
    } else {
      eta *= 0.5;
      eta_diff *= 0.5;
    }
  }
  out.best = best;
  out.ratio = certify(p, best, nullptr, nullptr, nullptr, nullptr, &out.certification);
  if (freeze_positions || freeze_weights) {
    // Moved apart: the difference (D, E) scaled up by 2, 4, ... until the pair is
    // resolved in double by any independent check (the output distance above
    // 1e-5 (1 + max |output|), certified in double); that pair is kept when its
    // ratio is within 5% of the unscaled one (or above it), else the unscaled pair
    // with its extended-precision certificate. Larger ratios on the way are kept.
    const PairState base = best;
    const double base_ratio = out.ratio;
    for (double k = 2; k <= 1024; k *= 2) {
      PairState t = base;
      t.y = t.x + k * (base.y - base.x);
      t.b = t.a + k * (base.b - base.a);
      detail::project_rows_to_ball(t.y, radius);
      clamp_logits(t.b);
      if (freeze_weights) t.b = t.a;
      if (freeze_positions) t.y = t.x;
      std::string how;
      MatrixD fm, fn;
      double wi = 0, wo = 0;
      const double v = certify(p, t, &fm, &fn, &wi, &wo, &how);
      ++out.evals;
      const double scale = std::max(fm.cwiseAbs().maxCoeff(), fn.cwiseAbs().maxCoeff());
      const bool resolved = how == kDoubleExact && wo >= 1e-5 * (1 + scale);
      if (v > out.ratio || (resolved && v >= 0.95 * base_ratio)) {
        out.ratio = v;
        out.best = std::move(t);
        out.certification = how;
        out.separation = k;
      }
      if (resolved || v < 0.95 * base_ratio) break;
    }
  }
  out.valid = out.ratio > 0;
  return out;
}

// Every rank gets every restart's outcome (each rank ran its shard_rows share):
// the scalars and origins of all of them, the best pair of the best one only
// (the reduction needs nothing else), sent by the rank that ran it.
void exchange_restarts(const Communicator& comm, Index d, std::vector<RestartOut>& outs) {
  const Index total = static_cast<Index>(outs.size());
  std::vector<double> ratio(outs.size()), separation(outs.size());
  std::vector<std::int64_t> evals(outs.size()), valid(outs.size());
  std::vector<std::string> origin(outs.size());
  for (size_t r = 0; r < outs.size(); ++r) {
    ratio[r] = outs[r].ratio;
    separation[r] = outs[r].separation;
    evals[r] = outs[r].evals;
    valid[r] = outs[r].valid ? 1 : 0;
    origin[r] = outs[r].origin;
  }
  detail::all_gather_items(comm, total, ratio);
  detail::all_gather_items(comm, total, separation);
  detail::all_gather_items(comm, total, evals);
  detail::all_gather_items(comm, total, valid);
  detail::all_gather_items(comm, total, origin);
  int best = -1;
  for (size_t r = 0; r < outs.size(); ++r) {
    outs[r].ratio = ratio[r];
    outs[r].separation = separation[r];
    outs[r].evals = evals[r];
    outs[r].valid = valid[r] != 0;
    outs[r].origin = std::move(origin[r]);
    if (outs[r].valid && (best < 0 || outs[r].ratio > outs[static_cast<size_t>(best)].ratio))
      best = static_cast<int>(r);
  }
  if (best < 0) return;
  const int owner = detail::owner_of(total, comm.size(), best);
  PairState& s = outs[static_cast<size_t>(best)].best;
  std::int64_t shape[2] = {s.x.rows(), s.y.rows()};
  detail::broadcast(comm, shape, 2, owner);
  if (comm.rank() != owner) {
    s.x.resize(shape[0], d);
    s.y.resize(shape[1], d);
    s.a.resize(shape[0]);
    s.b.resize(shape[1]);
  }
  // MatrixD is column-major; the bytes are sent as they lie.
  detail::broadcast(comm, s.x.data(), static_cast<std::size_t>(s.x.size()), owner);
  detail::broadcast(comm, s.y.data(), static_cast<std::size_t>(s.y.size()), owner);
  detail::broadcast(comm, s.a.data(), static_cast<std::size_t>(s.a.size()), owner);
  detail::broadcast(comm, s.b.data(), static_cast<std::size_t>(s.b.size()), owner);
}

}  // namespace

detail::PairObjective detail::pair_objective(const LayerParams& p, const MatrixD& x,
                                             const VectorD& a, const MatrixD& y, const VectorD& b) {
  PairState s{x, y, a, b};
  Eval e = evaluate(p, s, true);
  PairObjective o;
  o.valid = e.valid;
  o.ratio = e.ratio;
  o.w_in = e.w_in;
  o.w_out = e.w_out;
  o.gx = std::move(e.gx);
  o.gy = std::move(e.gy);
  o.ga = std::move(e.ga);
  o.gb = std::move(e.gb);
  return o;
}

void LipschitzSearchOptions::validate() const {
  if (atoms < 1) throw invalid_argument("atoms: must be >= 1");
  if (restarts < 1) throw invalid_argument("restarts: must be >= 1");
  if (steps < 0) throw invalid_argument("steps: must be >= 0");
  if (!(step_size > 0) || !std::isfinite(step_size))
    throw invalid_argument("step_size: must be positive and finite");
  if (!(nearby > 0) || !std::isfinite(nearby) || nearby > 1)
    throw invalid_argument("nearby: must be in (0, 1]");
  if (threads < 0 || threads > kMaxThreads)
    throw invalid_argument("threads: must be in [0, " + std::to_string(kMaxThreads) + "]");
}

double lipschitz_ratio(const Model<double>& model, const MeasureD& mu, const MeasureD& nu,
                       bool residual) {
  const LayerParams p = LayerParams::from(model, residual);
  if (mu.dim() != p.d)
    throw invalid_argument("mu: dimension differs from the model's input dimension");
  if (nu.dim() != p.d)
    throw invalid_argument("nu: dimension differs from the model's input dimension");
  {
    double r_mu = 0, r_nu = 0;
    for (Index i = 0; i < mu.size(); ++i) r_mu = std::max(r_mu, mu.atoms().row(i).stableNorm());
    for (Index i = 0; i < nu.size(); ++i) r_nu = std::max(r_nu, nu.atoms().row(i).stableNorm());
    detail::check_layer_range(p, r_mu, "mu");
    detail::check_layer_range(p, r_nu, "nu");
  }
  PairState s{mu.atoms(), nu.atoms(), mu.weights().array().log().matrix(),
              nu.weights().array().log().matrix()};
  // log(0) = -inf for atoms of zero weight: drop them.
  auto drop = [](MatrixD& x, VectorD& l) {
    Index k = 0;
    for (Index i = 0; i < x.rows(); ++i)
      if (std::isfinite(l[i])) {
        x.row(k) = x.row(i);
        l[k++] = l[i];
      }
    x.conservativeResize(k, Eigen::NoChange);
    l.conservativeResize(k);
  };
  drop(s.x, s.a);
  drop(s.y, s.b);
  return certify(p, s, nullptr, nullptr, nullptr, nullptr);
}

LipschitzSearchResult lipschitz_lower_bound(const Model<double>& model, double radius,
                                            const LipschitzSearchOptions& options) {
  options.validate();
  if (!(radius > 0) || !std::isfinite(radius))
    throw invalid_argument("radius: must be positive and finite");
  const LayerParams p = LayerParams::from(model, options.residual);
  detail::check_layer_range(p, radius, radius > 1 ? "radius" : "model");
  const int total = options.restarts + (options.atoms >= 3 ? 1 : 0);
  std::vector<RestartOut> outs(static_cast<size_t>(total));
  const SeedTable seeds =
      options.atoms >= 2 && total > 2 ? seed_table(p, radius, options.seed) : SeedTable{};
  const int threads =
      options.threads > 0 ? options.threads : std::min(omp_get_max_threads(), kMaxThreads);
  // Distributed: each rank runs its contiguous share of the restarts (every
  // restart has its own seed, so where it runs does not change it); their
  // outcomes are exchanged by index and reduced in restart order on every rank.
  const Communicator& comm = options.communicator;
  const RowRange mine = shard_rows(total, comm);
  Progress progress("lipschitz search", mine.size(), options.progress_callback,
                    options.progress && comm.rank() == 0);
  const bool show = options.progress || static_cast<bool>(options.progress_callback);
  std::mutex mtx;
  int done = 0;
  double best_so_far = 0;
  std::exception_ptr error;
  try {
    // An exception or Ctrl-C in one restart stops the others (at their next
    // step) and reaches the caller after the loop.
    detail::RegionGuard guard;
    const int first = static_cast<int>(mine.begin), last = static_cast<int>(mine.end);
#pragma omp parallel for schedule(dynamic) num_threads(threads)
    for (int r = first; r < last; ++r) {
      guard.run([&] {
        outs[static_cast<size_t>(r)] = run_restart(model, p, radius, options, seeds, r);
        if (show) {
          std::lock_guard<std::mutex> lock(mtx);
          ++done;
          best_so_far = std::max(best_so_far, outs[static_cast<size_t>(r)].ratio);
          progress.update(done, "best ratio " + std::to_string(best_so_far));
        }
      });
    }
    if (show) progress.finish();
    guard.finish();
  } catch (...) {
    error = std::current_exception();
  }
  detail::agree(comm, error);
  if (comm.distributed()) exchange_restarts(comm, p.d, outs);
  LipschitzSearchResult res;
  int best = -1;
  for (int r = 0; r < total; ++r) {
    const auto& o = outs[static_cast<size_t>(r)];
    res.evaluations += o.evals;
    res.restart_ratios.push_back(o.ratio);
    if (o.valid && (best < 0 || o.ratio > res.ratio)) {
      best = r;
      res.ratio = o.ratio;
    }
  }
  if (best < 0) {
    res.status = Status::degenerate;
    res.message = "no pair with W1(mu, nu) > 0 was found";
    return res;
  }
  const auto& o = outs[static_cast<size_t>(best)];
  LipschitzWitness& w = res.witness;
  w.mu_atoms = o.best.x;
  w.nu_atoms = o.best.y;
  w.mu_weights = log_softmax(o.best.a).array().exp().matrix();
  w.nu_weights = log_softmax(o.best.b).array().exp().matrix();
  res.ratio =
      certify(p, o.best, &w.f_mu_atoms, &w.f_nu_atoms, &w.w1_input, &w.w1_output, &w.certification);
  w.separation = o.separation;
  w.origin = o.origin;
  w.restart = best;
  res.status = Status::completed;
  res.message = "best of " + std::to_string(total) + " restarts (restart " + std::to_string(best) +
                ", " + o.origin + ")";
  return res;
}

}  // namespace measattn
