// The Lipschitz engine's layer parameters (engine.hpp): a model flattened per
// head for the kernels that differentiate attention, and the range check that
// keeps their exponentials finite.
#include <algorithm>
#include <cmath>
#include <string>

#include "lipschitz/engine.hpp"
#include "measattn/error.hpp"

namespace measattn::detail {

LayerParams LayerParams::from(const Model<double>& model, bool residual) {
  model.validate();
  if (!with_potential(model.potential, [](auto pot) { return decltype(pot)::kDifferentiable; }))
    throw invalid_argument("potential: custom potentials have no analytic derivatives here");
  if (model.query_dim() != model.key_dim())
    throw invalid_argument("model: self-attention needs equal query and key dimensions");
  if (residual && model.out_dim() != model.query_dim())
    throw invalid_argument("residual: the output dimension differs from the input dimension");
  LayerParams p;
  p.d = model.query_dim();
  p.d_out = model.out_dim();
  p.k = model.head_dim();
  p.residual = residual;
  p.bo = model.b_o.size() ? model.b_o : VectorD::Zero(p.d_out);
  for (Index h = 0; h < model.num_heads; ++h) {
    const Head<double> hd = model.head(h);
    HeadP hp;
    hp.q = hd.q;
    hp.k = hd.k;
    hp.v = hd.v;
    hp.bq = hd.b_q;
    hp.bk = hd.b_k;
    hp.bv = hd.b_v;
    hp.wo = model.w_o.middleCols(h * p.k, p.k);
    hp.tau = hd.tau;
    hp.potential = hd.potential;
    p.heads.push_back(std::move(hp));
  }
  return p;
}

void check_layer_range(const LayerParams& p, double radius, const std::string& field) {
  constexpr double kLimit = 1e150;
  const double log_limit = std::log(kLimit);
  // log(a R + b) without forming a R when it would overflow.
  auto log_affine = [&](double a, double b) {
    const double lr = std::log(radius);
    const double la = a > 0 && radius > 0 ? std::log(a) + lr : -INFINITY;
    const double lb = b > 0 ? std::log(b) : -INFINITY;
    const double hi = std::max(la, lb);
    if (hi == -INFINITY) return hi;
    return hi + std::log1p(std::exp(std::min(la, lb) - hi));
  };
  auto fail = [&](Index h, const char* what, double log_value) {
    char buf[320];
    std::snprintf(buf, sizeof buf,
                  "%s: with inputs of norm up to %.3g, the %s of head %lld can reach about "
                  "1e%.0f, beyond what double can carry through the layer and its derivatives "
                  "(limit 1e150); %s",
                  field.c_str(), radius, what, static_cast<long long>(h),
                  log_value / std::log(10.0),
                  field == "model" ? "the weights are too large"
                                   : "use smaller inputs (or a model with smaller weights)");
    throw invalid_argument(buf);
  };
  double log_out = -INFINITY;
  for (size_t h = 0; h < p.heads.size(); ++h) {
    const auto& hp = p.heads[h];
    const Index hh = static_cast<Index>(h);
    // Frobenius norms: upper bounds on the operator norms.
    const double lq = log_affine(hp.q.stableNorm(), hp.bq.stableNorm());
    const double lk = log_affine(hp.k.stableNorm(), hp.bk.stableNorm());
    const double lv = log_affine(hp.v.stableNorm(), hp.bv.stableNorm());
    if (lq > log_limit) fail(hh, "queries", lq);
    if (lk > log_limit) fail(hh, "keys", lk);
    if (lv > log_limit) fail(hh, "values", lv);
    const double lt = std::log(hp.tau);
    const double logit = with_potential(hp.potential, [&](auto pot) -> double {
      using P = decltype(pot);
      if constexpr (P::kDifferentiable)
        return P::log_logit_bound(lq, lk, lt);
      else
        return -INFINITY;  // not reached: LayerParams::from refuses the others
    });
    if (logit > log_limit) fail(hh, "logits", logit);
    const double lo = std::log(hp.wo.stableNorm()) + lv;
    log_out = std::max(log_out, lo + std::log(static_cast<double>(p.heads.size())));
  }
  if (log_out > log_limit) fail(0, "outputs", log_out);
}

}  // namespace measattn::detail
