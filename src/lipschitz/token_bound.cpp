// The proved bound on the token-level Jacobian on B_R^n for dot-product
// attention (docs/theory.md, "Token level: a bound on B_R^n"), and the sweep
// over n that sets the search's lower bounds beside it.
// GCC 12 false positive inside its AVX-512 intrinsics when Eigen kernels are inlined.
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "measattn/error.hpp"
#include "measattn/lipschitz.hpp"
#include "measattn/progress.hpp"

namespace measattn {

TokenBallBound token_ball_upper_bound(const Model<double>& model, double radius, Index tokens,
                                      bool residual) {
  model.validate();
  if (!(radius > 0) || !std::isfinite(radius))
    throw invalid_argument("radius: must be positive and finite");
  if (tokens < 1) throw invalid_argument("tokens: must be >= 1");
  if (model.potential != Potential::dot)
    throw invalid_argument("potential: the token-level bound on B_R^n is proved for dot only");
  if (model.query_dim() != model.key_dim())
    throw invalid_argument("model: self-attention needs equal query and key dimensions");
  if (residual && model.out_dim() != model.query_dim())
    throw invalid_argument("residual: the output dimension differs from the input dimension");
  const double r = radius, n = static_cast<double>(tokens);
  const Index k = model.head_dim();
  TokenBallBound b;
  double stacked = 0, per_head = 0;  // (sum_h ||V_h||^2 L_h^2), sum_h ||W_O^h V_h|| L_h
  b.mean_field = true;
  for (Index h = 0; h < model.num_heads; ++h) {
    const Head<double> hd = model.head(h);
    const MatrixD a = hd.q.transpose() * hd.k / hd.tau;
    const double an = spectral_norm(a);
    const double cn = (hd.k.transpose() * hd.b_q).norm() / hd.tau;
    const double rho = an * r + cn;
    // Column sums of the attention matrix: at most n, and at most e^{2 R rho}.
    const double osc = 2 * r * rho;
    const double col = osc < std::log(n) ? std::exp(osc) : n;
    if (!(osc < std::log(n))) b.mean_field = false;
    const double lh = an * r * r + std::sqrt(col) * (1 + r * rho);
    b.head_constants.push_back(lh);
    b.column_sums.push_back(col);
    const double vn = spectral_norm(hd.v);
    const double pv = spectral_norm(model.w_o.middleCols(h * k, k) * hd.v);
    auto times = [](double norm, double c) { return norm == 0 ? 0.0 : norm * c; };
    stacked += times(vn, lh) * times(vn, lh);
    per_head += times(pv, lh);
  }
  const double wo = spectral_norm(model.w_o);
  const double tx = wo == 0 ? 0.0 : wo * std::sqrt(stacked);
  b.value = std::min(tx, per_head) + (residual ? 1.0 : 0.0);
  if (!std::isfinite(b.value)) b.value = std::numeric_limits<double>::infinity();
  return b;
}

namespace {

/// Least-squares slope of log y against log x over the points with y > 0.
double log_slope(const std::vector<Index>& x, const std::vector<double>& y) {
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  int m = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    if (!(y[i] > 0) || !std::isfinite(y[i])) continue;
    const double lx = std::log(static_cast<double>(x[i])), ly = std::log(y[i]);
    sx += lx, sy += ly, sxx += lx * lx, sxy += lx * ly;
    ++m;
  }
  const double den = m * sxx - sx * sx;
  if (m < 2 || !(den > 0)) return 0;
  return (m * sxy - sx * sy) / den;
}

}  // namespace

TokenSweepResult token_lipschitz_sweep(const Model<double>& model, const std::vector<Index>& sizes,
                                       const TokenSearchOptions& options) {
  if (sizes.empty()) throw invalid_argument("sizes: empty");
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (sizes[i] < 1) throw invalid_argument("sizes: every size must be >= 1");
    if (i > 0 && sizes[i] <= sizes[i - 1]) throw invalid_argument("sizes: must be increasing");
  }
  TokenSearchOptions o = options;
  o.progress_callback = {};  // the sweep reports per size, its searches nothing
  o.tokens = sizes.front();
  o.validate();
  if (!(o.radius > 0)) throw invalid_argument("radius: the sweep needs a ball B_R (radius > 0)");
  TokenSweepResult res;
  res.sizes = sizes;
  const bool dot = model.potential == Potential::dot;
  Progress progress("token sweep", static_cast<std::int64_t>(sizes.size()),
                    options.progress_callback, false);
  std::int64_t done = 0;
  for (Index n : sizes) {
    o.tokens = n;
    const TokenSearchResult s = token_lipschitz_lower_bound(model, o);
    res.lower.push_back(s.value);
    res.origins.push_back(s.origin);
    res.evaluations += s.evaluations;
    const TokenJacobianResult c = token_jacobian_norm(
        model, castin_adversarial_tokens(model, n, o.radius), {.residual = o.residual});
    res.castin.push_back(c.value);
    if (dot) res.upper.push_back(token_ball_upper_bound(model, o.radius, n, o.residual).value);
    progress.update(++done);
  }
  res.exponent_lower = log_slope(sizes, res.lower);
  res.exponent_castin = log_slope(sizes, res.castin);
  if (dot) res.exponent_upper = log_slope(sizes, res.upper);
  for (size_t i = 1; i < sizes.size(); ++i) {
    const std::vector<Index> xs = {sizes[i - 1], sizes[i]};
    res.local_exponents.push_back(log_slope(xs, {res.lower[i - 1], res.lower[i]}));
  }
  return res;
}

}  // namespace measattn
