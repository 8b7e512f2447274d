// Certified upper bounds on the W1 Lipschitz constant of attention layers
// (docs/theory.md (lipschitz) gives the proofs) and Kim et al.'s token-level bounds.
// GCC 12 false positive inside its AVX-512 intrinsics when Eigen kernels are inlined.
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <Eigen/Eigenvalues>
#include <Eigen/SVD>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>

#include "attention/potential.hpp"
#include "measattn/error.hpp"
#include "measattn/lipschitz.hpp"

namespace measattn {

double spectral_norm(const MatrixD& m) {
  if (m.size() == 0) return 0;
  if (m.rows() == 1 || m.cols() == 1) return m.norm();
  Eigen::BDCSVD<Eigen::MatrixXd> svd(m);
  return svd.singularValues().size() ? svd.singularValues()[0] : 0.0;
}

namespace {

double inf_norm(const MatrixD& m) {  // max absolute row sum
  return m.size() ? m.cwiseAbs().rowwise().sum().maxCoeff() : 0.0;
}
double one_norm(const MatrixD& m) {  // max absolute column sum
  return m.size() ? m.cwiseAbs().colwise().sum().maxCoeff() : 0.0;
}

void check_self_attention(const Model<double>& model, bool residual) {
  model.validate();
  if (!detail::with_potential(model.potential,
                              [](auto pot) { return decltype(pot)::kDifferentiable; })) {
    throw invalid_argument("potential: no Lipschitz bound is known for a custom potential");
  }
  if (model.query_dim() != model.key_dim()) {
    throw invalid_argument("model: self-attention needs equal query and key dimensions (" +
                           std::to_string(model.query_dim()) + " vs " +
                           std::to_string(model.key_dim()) + ")");
  }
  if (residual && model.out_dim() != model.query_dim()) {
    throw invalid_argument("residual: the output dimension " + std::to_string(model.out_dim()) +
                           " differs from the input dimension " +
                           std::to_string(model.query_dim()));
  }
}

MatrixD output_block(const Model<double>& model, Index h) {
  const Index k = model.head_dim();
  return model.w_o.middleCols(h * k, k);
}

}  // namespace

void UpperBoundOptions::validate() const {
  if (!(radius > 0) || !std::isfinite(radius))
    throw invalid_argument("radius: must be positive and finite");
  if (tokens < 0) throw invalid_argument("tokens: must be >= 0");
}

double UpperBoundResult::get(const std::string& name) const {
  for (const auto& b : bounds)
    if (b.name == name) return b.value;
  return std::numeric_limits<double>::quiet_NaN();
}

double kim_phi_inverse(double y) {
  // Solves w e^{w + 1} = y, i.e. w = W_0(y / e), for y >= 0 (Halley iteration).
  if (!(y >= 0)) throw invalid_argument("n_minus_one: must be >= 0");
  const double z = y / std::exp(1.0);
  if (z == 0) return 0;
  double w = z < 1 ? z : std::log(z) - std::log(std::log(z) + 1.0);
  if (!(w > -1)) w = 0;
  for (int it = 0; it < 100; ++it) {
    const double ew = std::exp(w);
    const double f = w * ew - z;
    const double wp1 = w + 1;
    const double step = f / (ew * wp1 - (w + 2) * f / (2 * wp1));
    w -= step;
    if (std::abs(step) <= 1e-15 * (1 + std::abs(w))) break;
  }
  return w;
}

KimApplicabilityResult kim_applicability(const Model<double>& model, double tolerance) {
  KimApplicabilityResult out;
  if (model.potential != Potential::l2) {
    out.reason = "the potential is not l2";
    return out;
  }
  if (model.query_dim() != model.key_dim()) {
    out.reason = "query and key dimensions differ";
    return out;
  }
  const Index heads = model.num_heads;
  for (Index h = 0; h < heads; ++h) {
    const Head<double> hd = model.head(h);
    const double qn = std::max(hd.q.norm(), 1e-300);
    if ((hd.q - hd.k).norm() > tolerance * qn) {
      out.reason = "the query and key projections of head " + std::to_string(h) +
                   " are not tied (W^Q != W^K)";
      out.value_factor.clear();
      return out;
    }
    if ((hd.b_q - hd.b_k).norm() > tolerance * std::max({hd.b_q.norm(), hd.b_k.norm(), qn})) {
      out.reason = "the query and key biases of head " + std::to_string(h) + " differ";
      out.value_factor.clear();
      return out;
    }
    // V_h = M_h A_h with A_h = Q_h^T Q_h / tau; min-norm M_h = V_h A_h^+.
    const MatrixD a = hd.q.transpose() * hd.q / hd.tau;
    Eigen::JacobiSVD<Eigen::MatrixXd> svd(a, Eigen::ComputeFullU | Eigen::ComputeFullV);
    const auto& sv = svd.singularValues();
    const double cut = sv.size() ? sv[0] * 1e-12 * static_cast<double>(a.rows()) : 0;
    Eigen::VectorXd inv(sv.size());
    for (Index i = 0; i < sv.size(); ++i) inv[i] = sv[i] > cut ? 1.0 / sv[i] : 0.0;
    const MatrixD pinv = svd.matrixV() * inv.asDiagonal() * svd.matrixU().transpose();
    MatrixD m = hd.v * pinv;
    const double vn = hd.v.norm();
    const double res = vn > 0 ? (hd.v - m * a).norm() / vn : 0.0;
    out.residual = std::max(out.residual, res);
    if (res > std::max(tolerance, 1e-9)) {
      out.reason = "the value map of head " + std::to_string(h) +
                   " is not of Kim's form V = M Q^T Q / tau (relative residual " +
                   std::to_string(res) + ")";
      out.value_factor.clear();
      return out;
    }
    out.value_factor.push_back(std::move(m));
  }
  out.applies = true;
  return out;
}

double attention_output_radius(const Model<double>& model, double radius, bool residual) {
  const Index heads = model.num_heads;
  double s2 = 0, per_head = 0;
  for (Index h = 0; h < heads; ++h) {
    const Head<double> hd = model.head(h);
    const double t = spectral_norm(hd.v) * radius + hd.b_v.norm();
    s2 += t * t;
    const MatrixD wo = output_block(model, h);
    per_head += spectral_norm(wo * hd.v) * radius + (wo * hd.b_v).norm();
  }
  const double bo = model.b_o.size() ? model.b_o.norm() : 0.0;
  const double r = std::min(spectral_norm(model.w_o) * std::sqrt(s2), per_head) + bo;
  return r + (residual ? radius : 0.0);
}

KeyReach key_reach(const MatrixD& a, const VectorD& c, double radius) {
  // max_{||x|| <= R} ||A^T x + c||^2 = ||c||^2 + max x^T M x + 2 g^T x, M = A A^T,
  // g = A c. Dual: for lambda > lambda_max(M), phi(lambda) = lambda R^2 + ||c||^2 +
  // g^T (lambda I - M)^{-1} g bounds it (complete the square); phi is convex and
  // its minimum (the secular equation phi'(lambda) = 0) equals the maximum.
  KeyReach out;
  const Index d = a.rows();
  const MatrixD m = a * a.transpose();
  const VectorD g = a * c;
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(m);
  const VectorD mu = es.eigenvalues();
  const VectorD gt = es.eigenvectors().transpose() * g;
  const double top = d ? mu[d - 1] : 0.0;
  const double c2 = c.squaredNorm(), r2 = radius * radius;
  // Any lambda above lambda_max certifies; keep a margin over the eigenvalue's
  // rounding so that the certificate holds for the exact M.
  const double floor = top + 1e-12 * (std::abs(top) + 1) + 1e-300;
  auto phi = [&](double lam) {
    double s = lam * r2 + c2;
    for (Index i = 0; i < d; ++i) s += gt[i] * gt[i] / (lam - mu[i]);
    return s;
  };
  auto dphi = [&](double lam) {
    double s = r2;
    for (Index i = 0; i < d; ++i) s -= gt[i] * gt[i] / ((lam - mu[i]) * (lam - mu[i]));
    return s;
  };
  double lam = floor;
  if (dphi(floor) < 0) {
    // phi' increases from -inf (or below 0) to R^2: bisect on a bracket.
    double lo = floor, hi = std::max(floor * 2, floor + g.norm() / std::max(radius, 1e-300) + 1);
    while (dphi(hi) < 0) hi = floor + 2 * (hi - floor);
    for (int it = 0; it < 200; ++it) {
      const double mid = 0.5 * (lo + hi);
      if (dphi(mid) < 0)
        lo = mid;
      else
        hi = mid;
    }
    lam = hi;
  }  // else the hard case (g has no weight on the top eigenvectors): lambda -> lambda_max
  out.lambda = lam;
  out.value = std::sqrt(std::max(0.0, phi(lam)));
  out.hard_case = !(dphi(floor) < 0);
  // Primal: x = (lambda - M)^{-1} g scaled onto the sphere, plus the top
  // eigenvector in the hard case; its value is a lower bound.
  VectorD x = VectorD::Zero(d);
  for (Index i = 0; i < d; ++i) x += es.eigenvectors().col(i) * (gt[i] / (lam - mu[i]));
  const double xn = x.norm();
  if (d > 0) {
    if (xn < radius) {
      // ||x + t e|| = R for the top eigenvector e.
      const VectorD e = es.eigenvectors().col(d - 1);
      const double xe = x.dot(e), disc = std::sqrt(std::max(0.0, xe * xe + r2 - xn * xn));
      VectorD x1 = x + (-xe + disc) * e, x2 = x + (-xe - disc) * e;
      if (x1.norm() > radius) x1 *= radius / x1.norm();
      if (x2.norm() > radius) x2 *= radius / x2.norm();
      x = (a.transpose() * x1 + c).norm() >= (a.transpose() * x2 + c).norm() ? x1 : x2;
    } else if (xn > 0) {
      x *= radius / xn;
    }
  }
  out.primal = (a.transpose() * x + c).norm();
  out.value = std::max(out.value, out.primal);
  return out;
}

UpperBoundResult lipschitz_upper_bounds(const Model<double>& model,
                                        const UpperBoundOptions& options) {
  options.validate();
  check_self_attention(model, options.residual);
  const double r = options.radius;
  UpperBoundResult out;
  out.radius = r;
  out.residual = options.residual;
  const Index heads = model.num_heads;
  double px = 0, pm = 0;
  std::string infinite_reason;  // a potential's reason why no finite bound holds
  VectorD x_parts = VectorD::Zero(heads), m_parts = VectorD::Zero(heads);
  for (Index h = 0; h < heads; ++h) {
    const Head<double> hd = model.head(h);
    HeadBound hb;
    hb.value_norm = spectral_norm(hd.v);
    hb.projected_value_norm = spectral_norm(output_block(model, h) * hd.v);
    // The potential's constants (attention/potential.hpp, docs/theory.md).
    const detail::PotentialBound pb =
        detail::with_potential(model.potential, [&](auto pot) -> detail::PotentialBound {
          using P = decltype(pot);
          if constexpr (P::kDifferentiable)
            return P::bound_constants(hd, r, [](const MatrixD& m) { return spectral_norm(m); });
          else
            return {};  // refused by check_self_attention
        });
    hb.rho = pb.rho;
    hb.oscillation = pb.oscillation;
    hb.x_core = pb.x_core;
    if (infinite_reason.empty()) infinite_reason = pb.infinite_reason;
    hb.measure_core = (1 + 2 * r * hb.rho) * std::exp(hb.oscillation);
    // 0 * inf (a zero value map, an overflowing exponential) is 0: the head adds nothing.
    auto times = [](double norm, double core) { return norm == 0 ? 0.0 : norm * core; };
    hb.x_part = times(hb.value_norm, hb.x_core);
    hb.measure_part = times(hb.value_norm, hb.measure_core);
    x_parts[h] = hb.x_part;
    m_parts[h] = hb.measure_part;
    px += times(hb.projected_value_norm, hb.x_core);
    pm += times(hb.projected_value_norm, hb.measure_core);
    out.heads.push_back(hb);
  }
  // Scaled norms: the parts may be near the top of double's range.
  const double sx = x_parts.stableNorm(), sm = m_parts.stableNorm();
  const double wo = spectral_norm(model.w_o);
  const double res = options.residual ? 1.0 : 0.0;
  const double tx = wo == 0 ? 0.0 : wo * sx, tm = wo == 0 ? 0.0 : wo * sm;
  const std::string pot = to_string(model.potential);
  const std::string scope = " on measures supported in B_R (W1 Lipschitz constant of mu -> F(mu))";
  out.bounds.push_back(
      {"w1_theorem", tx + tm + res, "w1",
       "||W_O|| ((sum_h Lx_h^2)^1/2 + (sum_h Lm_h^2)^1/2) for the " + pot + " potential" + scope});
  out.bounds.push_back({"w1_per_head", px + pm + res, "w1",
                        "sum_h ||W_O^h V_h|| (x_core_h + measure_core_h)" + scope});
  out.bounds.push_back({"w1_combined", std::min(tx, px) + std::min(tm, pm) + res, "w1",
                        "min of the two x-parts + min of the two measure parts" + scope});
  if (model.potential == Potential::dot) {
    // Sharper bounds (docs/theory.md, lipschitz: sharper bounds), dot potential.
    double sx2 = 0, sm2 = 0, cd = 0, xh = 0;
    MatrixD stack(model.out_dim(), heads * model.query_dim());
    const Index dd = model.query_dim();
    for (Index h = 0; h < heads; ++h) {
      const Head<double> hd = model.head(h);
      const MatrixD a = hd.q.transpose() * hd.k / hd.tau;
      const VectorD c = hd.k.transpose() * hd.b_q / hd.tau;
      const MatrixD ph = output_block(model, h) * hd.v;
      stack.middleCols(h * dd, dd) = ph;
      const double rs = key_reach(a, c, r).value;
      HeadBound& hb = out.heads[static_cast<size_t>(h)];
      hb.rho_star = rs;
      const double mcore = (1 + 2 * r * rs) * std::exp(2 * r * rs);
      sx2 += hb.x_core * hb.x_core;
      sm2 += mcore * mcore;
      xh += hb.projected_value_norm == 0 ? 0.0 : hb.projected_value_norm * hb.x_core;
      // Column density with the PSD split B = t A_sym+, t on a grid.
      const MatrixD sym = 0.5 * (a + a.transpose());
      Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(sym);
      const VectorD ev = es.eigenvalues().cwiseMax(0.0);
      const MatrixD bplus = es.eigenvectors() * ev.asDiagonal() * es.eigenvectors().transpose();
      const double lb = ev.size() ? ev.maxCoeff() : 0.0;
      double best_exp = 2 * r * rs, best_t = 0;
      const int grid = dd > 128 ? 0 : 20;
      for (int i = 1; i <= grid; ++i) {
        const double t = static_cast<double>(i) / grid;
        const double e = t * lb * r * r / 4 + 2 * r * key_reach(a - t * bplus, c, r).value;
        if (e < best_exp) {
          best_exp = e;
          best_t = t;
        }
      }
      // Then a local search over B = U diag(t_k lambda_k+) U^T, one t_k in [0, 4] per positive
      // eigenvalue of sym(A) (U its eigenvectors), from the best t of the grid:
      // coordinate steps, halved when none improves. Every such B is PSD, so every
      // value tried is a valid exponent and the minimum found needs no certificate.
      // O(evaluations d^3): only for d <= 64, at most 600 evaluations (150 past d = 16).
      if (dd <= 64 && lb > 0) {
        VectorD t = VectorD::Constant(ev.size(), best_t);
        auto exponent = [&](const VectorD& tt) {
          const VectorD scaled = tt.cwiseProduct(ev);
          const MatrixD b = es.eigenvectors() * scaled.asDiagonal() * es.eigenvectors().transpose();
          return scaled.maxCoeff() * r * r / 4 + 2 * r * key_reach(a - b, c, r).value;
        };
        double step = 0.25;
        const int budget = dd <= 16 ? 600 : 150;  // evaluations, O(d^3) each
        for (int evals = 0; step > 1e-3 && evals < budget;) {
          bool moved = false;
          for (Index k = 0; k < ev.size(); ++k) {
            if (!(ev[k] > 0)) continue;
            for (const double dir : {step, -step}) {
              VectorD trial = t;
              trial[k] = std::clamp(t[k] + dir, 0.0, 4.0);
              if (trial[k] == t[k]) continue;
              const double e = exponent(trial);
              ++evals;
              if (e < best_exp) {
                best_exp = e;
                t = trial;
                moved = true;
                break;
              }
            }
          }
          if (!moved) step /= 2;
        }
      }
      hb.column_exponent = best_exp;
      hb.psd_t = best_t;
      cd += hb.projected_value_norm == 0
                ? 0.0
                : hb.projected_value_norm * (1 + 2 * r * rs) * std::exp(best_exp);
    }
    const double pn = spectral_norm(stack);
    const double stx = pn == 0 ? 0.0 : pn * std::sqrt(sx2);
    const double stm = pn == 0 ? 0.0 : pn * std::sqrt(sm2);
    out.bounds.push_back({"w1_stacked_reach", stx + stm + res, "w1",
                          "||[W_O^1 V_1 ... W_O^H V_H]|| ((sum_h x_core_h^2)^1/2 + (sum_h "
                          "((1 + 2 R rho*_h) e^{2 R rho*_h})^2)^1/2), rho*_h the exact reach "
                          "of the key direction (trust region, dual certificate)" +
                              scope});
    out.bounds.push_back({"w1_column_density", std::min({tx, px, stx}) + cd + res, "w1",
                          "best x-part + sum_h ||W_O^h V_h|| (1 + 2 R rho*_h) "
                          "exp(lambda_max(B_h) R^2 / 4 + 2 R rho*(A_h - B_h, c_h)), B_h PSD "
                          "in sym(A_h)'s eigenvectors, scaled by t on a grid, then one t_k per "
                          "eigenvalue in [0, 4] by a local search (PSD-splitting lemma)" +
                              scope});
    (void)xh;
  }
  // Upper bounds past double's range are +inf (documented), never NaN, and say so.
  double osc = 0;
  for (const auto& hb : out.heads) osc = std::max(osc, hb.oscillation);
  for (auto& b : out.bounds) {
    if (std::isfinite(b.value)) continue;
    b.value = std::numeric_limits<double>::infinity();
    if (!infinite_reason.empty()) {
      b.meaning += "; +inf: " + infinite_reason;
      continue;
    }
    char buf[160];
    std::snprintf(buf, sizeof buf,
                  "; +inf: the bound overflows double (e^oscillation with oscillation %.3g at "
                  "R = %.3g)",
                  osc, r);
    b.meaning += buf;
  }
  out.best_w1 = std::numeric_limits<double>::infinity();
  for (const auto& b : out.bounds)
    if (b.kind == "w1" && b.value < out.best_w1) {
      out.best_w1 = b.value;
      out.best_name = b.name;
    }
  if (out.best_name.empty()) out.best_name = "w1_combined";  // every W1 bound is +inf
  out.output_radius = attention_output_radius(model, r, options.residual);

  if (options.tokens >= 1 && model.potential == Potential::dot) {
    // Proved in docs/theory.md (token level on B_R^n); token_bound.cpp.
    const TokenBallBound tb = token_ball_upper_bound(model, r, options.tokens, options.residual);
    out.bounds.push_back(
        {"token_ball_l2", tb.value, "token_l2_ball",
         "spectral norm of the token-level Jacobian of X -> (Gamma_{mu_X}(x_i))_i for X in "
         "B_R^N, N = " +
             std::to_string(options.tokens) + " (dot potential, uniform weights" +
             (tb.mean_field ? "; past sqrt(N) growth: independent of N from here" : "") +
             "); not a bound on the W1 constant"});
  }
  if (options.tokens >= 1) {
    const KimApplicabilityResult kim = kim_applicability(model);
    if (kim.applies) {
      const double nn = static_cast<double>(options.tokens);
      const double phi = kim_phi_inverse(nn - 1);
      const double k = static_cast<double>(model.head_dim());
      double sum = 0, maxq = 0, maxv = 0;
      for (Index h = 0; h < heads; ++h) {
        const Head<double> hd = model.head(h);
        const double s = std::sqrt(std::sqrt(k) / hd.tau);            // W^{Q,h} = Q_h^T s
        const MatrixD& m = kim.value_factor[static_cast<size_t>(h)];  // W^{V,h} = M_h^T
        const double qn = spectral_norm(hd.q) * s;
        const double vn = spectral_norm(m);
        sum += qn * qn * qn * qn * vn * vn;  // ||W^{Q,h}||^4 ||W^{V,h}||^2 (see docs)
        maxq = std::max(maxq, s * s * one_norm(hd.q) * inf_norm(hd.q));
        maxv = std::max(maxv, inf_norm(m));
      }
      const double l2b = std::sqrt(nn) / std::sqrt(k) * (4 * phi + 1) * std::sqrt(sum) * wo + res;
      const double linf = (4 * phi + 1 / std::sqrt(k)) * inf_norm(model.w_o) * maxq * maxv + res;
      const std::string tok =
          " of the token-level Jacobian of X -> (Gamma_{mu_X}(x_i))_i on "
          "all of R^{N x d}, N = " +
          std::to_string(options.tokens) + " (Kim et al. 2021); not a bound on the W1 constant";
      out.bounds.push_back({"kim_token_l2", l2b, "token_l2", "spectral norm" + tok});
      out.bounds.push_back({"kim_token_linf", linf, "token_linf", "l_inf operator norm" + tok});
    }
  }
  return out;
}

StackBoundResult lipschitz_stack_upper_bound(const std::vector<Model<double>>& layers,
                                             double radius, bool residual) {
  if (layers.empty()) throw invalid_argument("layers: empty stack");
  StackBoundResult out;
  out.radii.push_back(radius);
  out.value = 1;
  for (size_t l = 0; l < layers.size(); ++l) {
    UpperBoundOptions o;
    o.radius = out.radii.back();
    o.residual = residual;
    const UpperBoundResult b = lipschitz_upper_bounds(layers[l], o);
    out.constants.push_back(b.best_w1);
    out.value *= b.best_w1;
    out.radii.push_back(b.output_radius);
  }
  return out;
}

}  // namespace measattn
