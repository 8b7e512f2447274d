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

Eval evaluate(const LayerParams& p, const PairState& s, bool want_grad) {
  Eval e;
  const VectorD lmu = log_softmax(s.a), lnu = log_softmax(s.b);
  const VectorD wmu = lmu.array().exp().matrix(), wnu = lnu.array().exp().matrix();
  const MatrixD fmu = forward(p, s.x, lmu), fnu = forward(p, s.y, lnu);
  const detail::TransportGrad tin = detail::transport_grad(s.x, wmu, s.y, wnu);
  e.w_in = tin.value;
  if (!(tin.value > 1e-12 * (1 + std::max(s.x.cwiseAbs().maxCoeff(), s.y.cwiseAbs().maxCoeff()))))
    return e;
  const detail::TransportGrad tout = detail::transport_grad(fmu, wmu, fnu, wnu);
  e.w_out = tout.value;
  e.ratio = safe_ratio(tin.value, tout.value,
                       std::max(s.x.cwiseAbs().maxCoeff(), s.y.cwiseAbs().maxCoeff()),
                       std::max(fmu.cwiseAbs().maxCoeff(), fnu.cwiseAbs().maxCoeff()));
  e.valid = e.ratio > 0;
  if (!e.valid) return e;
  if (!want_grad) return e;
  const double ci = 1.0 / tin.value;
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

void project_to_ball(MatrixD& x, double radius) {
  for (Index i = 0; i < x.rows(); ++i) {
    const double nn = x.row(i).norm();
    if (nn > radius) x.row(i) *= radius / nn;
  }
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

struct RestartOut {
  double ratio = 0;  // certified
  PairState best;
  std::string origin;
  std::int64_t evals = 0;
  bool valid = false;
};

/// Exact recomputation in double: the attention outputs, then W1 by the
/// wasserstein module's exact solver on both sides.
double certify(const LayerParams& p, const PairState& s, MatrixD* fmu, MatrixD* fnu, double* w_in,
               double* w_out) {
  const VectorD lmu = log_softmax(s.a), lnu = log_softmax(s.b);
  const MatrixD fm = forward(p, s.x, lmu), fn = forward(p, s.y, lnu);
  const MeasureD mu(s.x, lmu.array().exp().matrix()), nu(s.y, lnu.array().exp().matrix());
  const double wi = wasserstein_exact_value(mu, nu, 1.0);
  const double wo =
      wasserstein_exact_value(MeasureD(fm, mu.weights()), MeasureD(fn, nu.weights()), 1.0);
  if (w_in) *w_in = wi;
  if (w_out) *w_out = wo;
  const double in_scale = std::max(s.x.cwiseAbs().maxCoeff(), s.y.cwiseAbs().maxCoeff());
  const double out_scale = std::max(fm.cwiseAbs().maxCoeff(), fn.cwiseAbs().maxCoeff());
  if (fmu) *fmu = fm;
  if (fnu) *fnu = fn;
  return safe_ratio(wi, wo, in_scale, out_scale);
}

RestartOut run_restart(const Model<double>& model, const LayerParams& p, double radius,
                       const LipschitzSearchOptions& o, int r) {
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
  const bool cov_seed = r == o.restarts;
  const int kind = r < 2 ? r : 2 + (r - 2) % 5;
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
    project_to_ball(s.y, radius);
    nearby = true;
  } else if (kind <= 1 || kind == 6) {
    origin = "adversarial";
    // Castin et al.'s sequences as the first measure, a nearby second one:
    // R (u, u/2, ..., u/2) with u the top eigenvector of sym(A), and
    // R (-u, u, ..., u) with u the eigenvector of the most negative eigenvalue.
    const bool top = kind == 0 || (kind == 6 && (r / 5) % 2 == 0);
    MatrixD x = castin_seed(model, n, radius, top);
    x += gaussian(rng, n, d, 1e-2 * radius);
    project_to_ball(x, radius);
    s.x = x;
    s.a = VectorD::Zero(n);
    s.y = x + gaussian(rng, n, d, delta * radius);
    project_to_ball(s.y, radius);
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
      project_to_ball(s.y, radius);
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
    project_to_ball(s.y, radius);
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
        t.y += (eta_diff * radius * radius / g2) * cur.gy;
        t.b += (eta_diff / g2) * cur.gb;
      }
    }
    project_to_ball(t.x, radius);
    project_to_ball(t.y, radius);
    clamp_logits(t.a);
    clamp_logits(t.b);
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
  out.ratio = certify(p, best, nullptr, nullptr, nullptr, nullptr);
  out.valid = out.ratio > 0;
  return out;
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
  const int threads =
      options.threads > 0 ? options.threads : std::min(omp_get_max_threads(), kMaxThreads);
  Progress progress("lipschitz search", total, options.progress_callback, options.progress);
  const bool show = options.progress || static_cast<bool>(options.progress_callback);
  std::mutex mtx;
  int done = 0;
  double best_so_far = 0;
  // An exception or Ctrl-C in one restart stops the others (at their next
  // step) and reaches the caller after the loop.
  detail::RegionGuard guard;
#pragma omp parallel for schedule(dynamic) num_threads(threads)
  for (int r = 0; r < total; ++r) {
    guard.run([&] {
      outs[static_cast<size_t>(r)] = run_restart(model, p, radius, options, r);
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
  res.ratio = certify(p, o.best, &w.f_mu_atoms, &w.f_nu_atoms, &w.w1_input, &w.w1_output);
  w.origin = o.origin;
  w.restart = best;
  res.status = Status::completed;
  res.message = "best of " + std::to_string(total) + " restarts (restart " + std::to_string(best) +
                ", " + o.origin + ")";
  return res;
}

}  // namespace measattn
