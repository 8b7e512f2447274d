// measattn/gaussian.hpp — Gaussian measures as exact mean-field references
// (docs/theory.md#gaussian).
//
// For mu = N(m, Sigma) the attention kernel K_mu(x, .) of the dot and l2
// potentials is a Gaussian tilt of mu, so the attention field is affine:
//
//   Gamma_mu(x) = L x + c                                      (gaussian_field)
//
// and the push-forward F(mu) = (Gamma_mu)#mu = N(L m + c, L Sigma L^T) is Gaussian
// (gaussian_attention). Per head, with q(x) = Qx + b_q, kappa(y) = Ky + b_k:
//
//   dot:  K_mu(x, .) = N(m + Sigma K^T q(x) / tau, Sigma)
//   l2:   K_mu(x, .) = N(B (m + Sigma b(x)), B Sigma),  B = (I + Sigma P)^{-1},
//         P = 2 K^T K / tau, b(x) = 2 K^T (q(x) - b_k) / tau
//
// and the head's field is V E[y | x] + b_v. Sinkhorn (doubly stochastic)
// attention is the conditional mean of the entropic plan of (mu, mu) with cost
// -G; that plan is Gaussian with cross-covariance Sigma^{1/2} R Sigma^{1/2},
// R = 2 (I + (I + 4 C~ C~^T)^{1/2})^{-1} C~, C~ = Sigma^{1/2} C Sigma^{1/2}, where
// y^T C x is the cross term of G (C = K^T Q / tau for dot, 2 K^T Q / tau for l2).
//
// The self-attention flow dx/dt = Gamma_{mu_t}(x) keeps Gaussians Gaussian:
//   m' = L m + c,   Sigma' = L Sigma + Sigma L^T,
// integrated through the transport matrix P (Sigma = P Sigma_0 P^T, P' = L P),
// so Sigma stays positive semi-definite whatever the step (gaussian_flow).
// gaussian_w2 is the closed-form W2 between Gaussians (Bures).
#pragma once

#include <string>

#include "measattn/attention.hpp"
#include "measattn/error.hpp"
#include "measattn/measure.hpp"
#include "measattn/options.hpp"
#include "measattn/status.hpp"
#include "measattn/types.hpp"

namespace measattn {

/// N(mean, cov) on R^d. Construction validates: d >= 1, cov is d x d, every
/// entry finite, cov symmetric (to eps relative) and positive semi-definite
/// (smallest eigenvalue >= -eps times the largest in magnitude), eps = 1e-10
/// for double and 100 ulps (1.2e-5) for float; otherwise invalid_argument naming
/// "mean" or "cov". The stored cov is symmetrized.
template <class Scalar>
class GaussianMeasure {
 public:
  GaussianMeasure(Vector<Scalar> mean, Matrix<Scalar> cov);

  Index dim() const { return mean_.size(); }
  const Vector<Scalar>& mean() const { return mean_; }
  const Matrix<Scalar>& cov() const { return cov_; }

  template <class Other>
  GaussianMeasure<Other> cast() const {
    return GaussianMeasure<Other>(mean_.template cast<Other>(), cov_.template cast<Other>());
  }

 private:
  Vector<Scalar> mean_;
  Matrix<Scalar> cov_;
};

struct GaussianAttentionOptions {
  /// softmax, or sinkhorn: the converged doubly stochastic attention (the limit
  /// of infinitely many Sinkhorn iterations).
  Normalization normalization = Normalization::softmax;
  bool residual = false;  ///< add the query: (id + Gamma_mu)#mu (needs d_out == d)
  void validate() const {}
};

/// The user-facing fields of GaussianAttentionOptions (options.hpp).
template <class Visitor>
void for_each_field(GaussianAttentionOptions& o, Visitor&& visit) {
  visit("normalization", o.normalization,
        "softmax or sinkhorn (converged doubly stochastic attention)",
        EnumSpelling<Normalization>{[](Normalization n) { return to_string(n); },
                                    &parse_normalization});
  visit("residual", o.residual, "Add the query to the output (x + Gamma(x))");
}

struct GaussianFlowOptions {
  double time = 1;           ///< T >= 0, finite
  double tolerance = 1e-10;  ///< atol = rtol of the adaptive Dormand-Prince 5(4) pair (> 0)
  Index max_steps = 100000;  ///< cap on attempted steps (status iteration_limit)
  Normalization normalization = Normalization::softmax;
  /// Throws invalid_argument naming the field on a bad value.
  void validate() const;
};

/// The user-facing fields of GaussianFlowOptions (options.hpp).
template <class Visitor>
void for_each_field(GaussianFlowOptions& o, Visitor&& visit) {
  visit("time", o.time, "Final time T of the flow");
  visit("tolerance", o.tolerance, "Tolerance of the adaptive integrator (atol = rtol)");
  visit("max_steps", o.max_steps, "Cap on attempted steps");
  visit("normalization", o.normalization,
        "softmax or sinkhorn (converged doubly stochastic attention)",
        EnumSpelling<Normalization>{[](Normalization n) { return to_string(n); },
                                    &parse_normalization});
}

/// Gamma_mu(x) = linear x + offset.
template <class Scalar>
struct AffineField {
  Matrix<Scalar> linear;  ///< d_out x d
  Vector<Scalar> offset;  ///< d_out
};

/// The attention field of mu = g under the model (plus the identity when
/// options.residual). Requires query_dim == key_dim == g.dim() and the dot or l2
/// potential (cosine and custom are not Gaussian tilts: invalid_argument naming
/// "potential"). O(H k d^2 + d^3).
template <class Scalar>
AffineField<Scalar> gaussian_field(const Model<Scalar>& model, const GaussianMeasure<Scalar>& g,
                                   const GaussianAttentionOptions& options = {});

/// F(mu) = (Gamma_mu)#mu = N(L m + c, L Sigma L^T) (or (id + Gamma_mu)#mu).
template <class Scalar>
GaussianMeasure<Scalar> gaussian_attention(const Model<Scalar>& model,
                                           const GaussianMeasure<Scalar>& g,
                                           const GaussianAttentionOptions& options = {});

template <class Scalar>
struct GaussianFlowResult {
  GaussianMeasure<Scalar> measure;  ///< mu_t at `time`
  double time = 0;                  ///< time reached (T when completed)
  Index steps = 0;                  ///< accepted steps
  Index rejected = 0;               ///< rejected steps
  Index evaluations = 0;            ///< field evaluations
  /// Sum over accepted steps of the embedded local error estimate (max norm over
  /// the mean and the transport matrix): an estimate of the global error that
  /// ignores the propagation of local errors.
  double error_estimate = 0;
  /// completed, iteration_limit (max_steps attempts), step_size_underflow
  /// (the solution blows up: the step fell below 1e-14 T) or non_finite.
  Status status = Status::completed;
  std::string message;
};

/// The flow dx/dt = Gamma_{mu_t}(x) from mu_0 = g to options.time (no residual:
/// the field alone, as in flow()). Requires out_dim == query_dim == key_dim ==
/// g.dim(). Adaptive Dormand-Prince 5(4) on (m, P) with Sigma = P Sigma_0 P^T.
template <class Scalar>
GaussianFlowResult<Scalar> gaussian_flow(const Model<Scalar>& model,
                                         const GaussianMeasure<Scalar>& g,
                                         const GaussianFlowOptions& options = {});

/// W2(N(m1, S1), N(m2, S2)) = sqrt(|m1 - m2|^2 + tr S1 + tr S2 - 2 tr (S1^{1/2} S2 S1^{1/2})^{1/2})
/// (Bures), square roots by symmetric eigendecomposition (negative rounding
/// eigenvalues clamped to 0). Throws invalid_argument when the dimensions differ.
template <class Scalar>
double gaussian_w2(const GaussianMeasure<Scalar>& a, const GaussianMeasure<Scalar>& b);

/// The tensor-product Gauss–Hermite quadrature of g: points^d atoms
/// m + Sigma^{1/2} z with z the nodes of the probabilists' Hermite rule (exact
/// for polynomials of degree <= 2 points - 1 in each coordinate) and the
/// product weights. Requires points >= 1 and points^d <= 10^7.
template <class Scalar>
Measure<Scalar> gauss_hermite_measure(const GaussianMeasure<Scalar>& g, Index points);

/// Mean and covariance (sum_i w_i (x_i - m)(x_i - m)^T) of a discrete measure.
template <class Scalar>
GaussianMeasure<Scalar> gaussian_moments(const Measure<Scalar>& mu);

using GaussianMeasureD = GaussianMeasure<double>;

extern template class GaussianMeasure<float>;
extern template class GaussianMeasure<double>;

}  // namespace measattn
