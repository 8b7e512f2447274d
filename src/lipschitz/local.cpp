// lipschitz_local_bound: the W1 Lipschitz certificate of one layer around a
// given measure mu, from mu's own attention weights (docs/theory.md, lipschitz:
// local certificate), and a lower bound found by moving mass around mu.
#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "lipschitz/engine.hpp"
#include "measattn/error.hpp"
#include "measattn/interrupt.hpp"
#include "measattn/lipschitz.hpp"
#include "measattn/wasserstein.hpp"

namespace measattn {

void LocalBoundOptions::validate() const {
  if (!(eps > 0) || !std::isfinite(eps)) throw invalid_argument("eps: must be positive and finite");
  if (!(radius >= 0) || !std::isfinite(radius))
    throw invalid_argument("radius: must be >= 0 and finite (0 = mu's own radius)");
  if (restarts < 0) throw invalid_argument("restarts: must be >= 0");
}

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// log sum_j exp(v_j) over the entries with finite v (online: one pass).
double log_sum_exp(const VectorD& v) {
  double m = -kInf, s = 0;
  for (Index j = 0; j < v.size(); ++j) {
    if (!std::isfinite(v[j])) continue;
    if (v[j] > m) {
      s = s * std::exp(m - v[j]) + 1;
      m = v[j];
    } else {
      s += std::exp(v[j] - m);
    }
  }
  return m + std::log(s);
}

}  // namespace

LocalBoundResult lipschitz_local_bound(const Model<double>& model, const MeasureD& mu,
                                       const LocalBoundOptions& options) {
  options.validate();
  model.validate();
  if (model.potential != Potential::dot)
    throw invalid_argument("model: the local certificate needs the dot potential (potential " +
                           to_string(model.potential) + ")");
  if (model.query_dim() != model.key_dim())
    throw invalid_argument("model: self-attention needs equal query and key dimensions");
  if (mu.dim() != model.query_dim())
    throw invalid_argument("mu: dimension " + std::to_string(mu.dim()) +
                           " differs from the model's input dimension " +
                           std::to_string(model.query_dim()));
  if (options.residual && model.out_dim() != model.query_dim())
    throw invalid_argument("residual: the model's output dimension differs from its input");
  const double r_mu = mu.radius();
  const double radius = options.radius > 0 ? options.radius : std::max(r_mu, 1e-300);
  if (r_mu > radius * (1 + 1e-12))
    throw invalid_argument("radius: mu has an atom of norm " + std::to_string(r_mu) +
                           " outside B_R, R = " + std::to_string(radius));
  const double eps = options.eps;

  LocalBoundResult res;
  res.radius = radius;
  res.eps = eps;
  UpperBoundOptions uo;
  uo.radius = radius;
  uo.residual = options.residual;
  const UpperBoundResult global = lipschitz_upper_bounds(model, uo);  // checks the layer's range
  res.global_upper = global.best_w1;
  res.global_name = global.best_name;

  // The upper bound, head by head.
  const Index k = model.head_dim(), n = mu.size();
  const VectorD log_w = mu.weights().array().log().matrix();  // -inf for zero weights
  // Each atom's term, kept for L_loc(eps_half) (computed after the largest q is known).
  struct Term {
    double weight, log_q;  // P_h mu_i (1 + 2 R |a|) S, log(|a| S)
  };
  std::vector<Term> terms;
  double log_q_max = -kInf, independent = 0;
  double total = 0, total_at_zero = 0, x_term = 0;
  // Per head, a_i = K^T (Q x_i + b_q) / tau (rows) and log S_i: the upper bound's
  // pieces, reused by the search below (tiny atoms, gradient moves).
  std::vector<MatrixD> grads(static_cast<size_t>(model.num_heads));
  std::vector<VectorD> log_ss(static_cast<size_t>(model.num_heads));
  for (Index h = 0; h < model.num_heads; ++h) {
    const Head<double> hd = model.head(h);
    const double p = spectral_norm(model.w_o.middleCols(h * k, k) * hd.v);
    const double x_core = global.heads[static_cast<size_t>(h)].x_core;
    x_term += p == 0 ? 0.0 : 3 * p * x_core;
    const MatrixD qx = (mu.atoms() * hd.q.transpose()).rowwise() + hd.b_q.transpose();
    MatrixD& a = grads[static_cast<size_t>(h)];
    a = qx * hd.k / hd.tau;                         // n x d
    const MatrixD ax = a * mu.atoms().transpose();  // n x n: <a_i, x_j>
    VectorD& log_s_of = log_ss[static_cast<size_t>(h)];
    log_s_of = VectorD::Constant(n, -kInf);  // -inf: an atom of zero weight
    double head = 0, head_at_zero = 0;
    for (Index i = 0; i < n; ++i) {
      if (!(mu.weight(i) > 0)) continue;
      const double an = a.row(i).norm();
      const VectorD logits = ax.row(i).transpose() + log_w;
      const double log_s = radius * an - log_sum_exp(logits);  // log S_i (<= 2 R |a_i|)
      log_s_of[i] = log_s;
      const double s = std::exp(log_s);
      const double c = mu.weight(i) * (1 + 2 * radius * an) * s;
      head_at_zero += c;
      const double q = eps * an * s;
      head = q < 1 && std::isfinite(head) ? head + c / (1 - q) : kInf;
      if (p > 0 && an > 0) {
        const double log_q = std::log(an) + log_s;
        log_q_max = std::max(log_q_max, log_q);
        terms.push_back({p * c, log_q});
      } else if (p > 0) {
        independent += p * c;  // a = 0: this atom's term does not depend on eps
      }
    }
    const double term = p == 0 ? 0.0 : p * head;
    res.head_measure_terms.push_back(term);
    total += term;
    total_at_zero += p == 0 ? 0.0 : p * head_at_zero;
  }
  const double id = options.residual ? 1.0 : 0.0;
  res.x_term = x_term + id;
  res.upper = std::isfinite(total) ? total + x_term + id : kInf;
  res.upper_at_zero = total_at_zero + x_term + id;
  res.best_upper = std::min(res.upper, res.global_upper);
  res.eps_half = std::isfinite(log_q_max) ? std::exp(std::log(0.5) - log_q_max) : kInf;
  // L_loc(eps_half): every term with its factor 1 / (1 - q), q <= 1/2 by construction.
  double at_half = independent;
  for (const Term& t : terms)
    at_half += t.weight / (1 - 0.5 * std::exp(t.log_q - log_q_max));  // q = eps_half |a| S
  res.upper_at_eps_half = at_half + x_term + id;

  // The lower bound: candidates nu in B_R with 0 < W1(nu, mu) <= eps.
  double best = 0;
  auto consider = [&](MatrixD atoms, VectorD weights, const char* origin) {
    detail::check_interrupt();
    detail::project_rows_to_ball(atoms, radius);
    const MeasureD nu(atoms, weights);
    ++res.evaluations;
    const double w = wasserstein_exact_value(nu, mu);
    if (!(w > 0) || w > eps) return;
    const double ratio = lipschitz_ratio(model, nu, mu, options.residual);
    if (ratio > best) {
      best = ratio;
      res.lower = ratio;
      res.witness_w1 = w;
      res.witness_origin = origin;
      res.witness_atoms = nu.atoms();
      res.witness_weights = nu.weights();
    }
  };
  const MatrixD& x = mu.atoms();
  const VectorD& wt = mu.weights();
  // (1) A tiny atom at the point of B_R that query i weighs most, R a_i / |a_i|,
  // for the queries of the largest S (each head), at three masses.
  for (Index h = 0; h < model.num_heads; ++h) {
    const MatrixD& a = grads[static_cast<size_t>(h)];
    std::vector<std::pair<double, Index>> order;
    for (Index i = 0; i < n; ++i)
      if (wt[i] > 0) order.push_back({log_ss[static_cast<size_t>(h)][i], i});
    std::sort(order.begin(), order.end(), std::greater<>());
    for (size_t t = 0; t < std::min<size_t>(order.size(), 3); ++t) {
      const Index i = order[t].second;
      const double an = a.row(i).norm();
      if (!(an > 0)) continue;
      const VectorD y = radius * a.row(i).transpose() / an;
      const double far = (x.rowwise() - y.transpose()).rowwise().norm().maxCoeff();
      for (const double scale : {1.0, 0.1, 0.01}) {
        const double delta = std::min(0.5, scale * eps / std::max(far, 1e-300));
        MatrixD atoms(n + 1, x.cols());
        atoms << x, y.transpose();
        VectorD weights(n + 1);
        weights << (1 - delta) * wt, delta;
        consider(std::move(atoms), std::move(weights), "tiny_atom");
      }
    }
  }
  // (2) Every atom moved by eps along its own logit gradient (sum over heads of
  // a_i / |a_i|), both signs; (3) random unit moves of size eps.
  {
    MatrixD dir = MatrixD::Zero(n, x.cols());
    for (const MatrixD& a : grads) {
      for (Index i = 0; i < n; ++i) {
        const double an = a.row(i).norm();
        if (an > 0) dir.row(i) += a.row(i) / an;
      }
    }
    for (Index i = 0; i < n; ++i) {
      const double dn = dir.row(i).norm();
      if (dn > 0) dir.row(i) /= dn;
    }
    for (const double sign : {1.0, -1.0}) consider(x + sign * eps * dir, wt, "gradient_move");
  }
  std::mt19937_64 rng(options.seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  for (int r = 0; r < options.restarts; ++r) {
    MatrixD dir(n, x.cols());
    for (Index i = 0; i < dir.size(); ++i) dir.data()[i] = normal(rng);
    for (Index i = 0; i < n; ++i) dir.row(i) /= std::max(dir.row(i).norm(), 1e-300);
    const double t = eps * std::pow(0.1, r % 3);
    consider(x + t * dir, wt, "random_move");
  }
  return res;
}

}  // namespace measattn
