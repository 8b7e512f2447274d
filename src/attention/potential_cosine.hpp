// The cosine potential, end to end (included by potential.hpp only, after
// DotPotential):
//
//   G(x, y) = <q(x), kappa(y)> / (||q(x)|| ||kappa(y)|| tau) = <u(q), u(kappa)> / tau,
//
// with u(z) = z / ||z|| and, by our choice, u(0) = 0: a zero projection gives
// G = 0 against every key (its softmax row is then the weights themselves),
// never NaN. |G| <= 1 / tau whatever the inputs. The tiled kernels normalize
// the projected query and key rows once (A = B = u, scale 1/tau, no shifts);
// the Lipschitz engine differentiates G through u (du/dz = (I - u u^T) / ||z||,
// gradient 0 chosen at z = 0); the W1 bound is docs/theory.md's cosine section.
#pragma once

#include <Eigen/SVD>
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "measattn/attention.hpp"

namespace measattn::detail {

/// x <- factor * x / ||x|| for x of length k with stride `stride`, and x <- 0
/// when x = 0. Scaled by max |x_c| first, so that the squares neither overflow
/// nor underflow (finite x gives finite results).
template <class Scalar>
void normalize_scaled(Scalar* x, Index k, Index stride, Scalar factor) {
  Scalar big = 0;
  for (Index c = 0; c < k; ++c) big = std::max(big, std::abs(x[c * stride]));
  if (!(big > 0)) {
    for (Index c = 0; c < k; ++c) x[c * stride] = 0;
    return;
  }
  Scalar s = 0;
  for (Index c = 0; c < k; ++c) {
    const Scalar t = x[c * stride] / big;
    s += t * t;
  }
  const Scalar f = factor / (big * std::sqrt(s));
  for (Index c = 0; c < k; ++c) x[c * stride] *= f;
}

/// A lower bound on min over ||x|| <= r of ||W x + b|| (W: k x d), by weak
/// duality of the trust-region problem: with W = U S V^T, b = U beta + b_perp,
/// for every lambda >= 0
///   min ||W x + b||^2 >= D(lambda) = sum_i beta_i^2 lambda / (s_i^2 + lambda)
///                                  - lambda r^2 + ||b_perp||^2,
/// (the Lagrangian's minimum over all z = V^T x), whatever lambda; lambda is
/// chosen by bisection on D'(lambda) = 0 (D is concave). Returns 0 when the
/// bound is not positive (then W x + b may vanish in the ball).
inline double min_affine_norm(const MatrixD& w, const VectorD& b, double r) {
  if (b.size() == 0 || b.isZero(0)) return 0;
  Eigen::JacobiSVD<Eigen::MatrixXd> svd(w, Eigen::ComputeThinU);
  const VectorD s = svd.singularValues();
  const VectorD beta = svd.matrixU().transpose() * b;
  const double cut = s.size() && s[0] > 0 ? s[0] * 1e-13 * static_cast<double>(w.cols()) : 0;
  double perp2 = std::max((b - svd.matrixU() * beta).squaredNorm(), 0.0);
  for (Index i = 0; i < s.size(); ++i)
    if (!(s[i] > cut)) perp2 += beta[i] * beta[i];  // no x reaches this direction
  auto dual = [&](double lambda) {
    double v = perp2 - lambda * r * r;
    for (Index i = 0; i < s.size(); ++i)
      if (s[i] > cut) v += beta[i] * beta[i] * lambda / (s[i] * s[i] + lambda);
    return v;
  };
  auto slope = [&](double lambda) {
    double v = -r * r;
    for (Index i = 0; i < s.size(); ++i)
      if (s[i] > cut) {
        const double t = s[i] * s[i] + lambda;
        v += beta[i] * beta[i] * s[i] * s[i] / (t * t);
      }
    return v;
  };
  double lo = 0, hi = 1;
  if (slope(0) > 0) {
    while (slope(hi) > 0 && hi < 1e300) hi *= 2;
    for (int it = 0; it < 200; ++it) {
      const double mid = 0.5 * (lo + hi);
      (slope(mid) > 0 ? lo : hi) = mid;
    }
  } else {
    hi = 0;
  }
  // Either end is a valid dual point; a relative margin covers the rounding.
  const double d = std::max(dual(lo), dual(hi)) * (1 - 1e-9);
  return d > 0 ? std::sqrt(d) : 0.0;
}

/// The dot potential's split on normalized projections: query_scale 1/tau, no
/// key shift and the same tiles (on rows that LogitTiles normalized once) come
/// from DotPotential; everything else is cosine's own.
struct CosinePotential : DotPotential {
  static constexpr Potential id = Potential::cosine;
  static constexpr const char* name = "cosine";
  static constexpr bool kNormalized = true;

  /// <q, kappa> / (||q|| ||kappa|| tau) computed directly (0 if either is 0).
  template <class Scalar>
  static Scalar direct(const Scalar* q, const Scalar* kappa, Index k, Scalar tau,
                       const PotentialFunction<Scalar>*) {
    using Map = Eigen::Map<const Vector<Scalar>>;
    const Scalar nq = Map(q, k).stableNorm(), nk = Map(kappa, k).stableNorm();
    if (!(nq > 0) || !(nk > 0)) return 0;
    Scalar s = 0;
    for (Index c = 0; c < k; ++c) s += (q[c] / nq) * (kappa[c] / nk);
    return s / tau;
  }
  template <class Scalar>
  static void dense(const Matrix<Scalar>& q, const Matrix<Scalar>& kk, Scalar tau,
                    const PotentialFunction<Scalar>*, Matrix<Scalar>& s) {
    for (Index i = 0; i < q.rows(); ++i)
      for (Index j = 0; j < kk.rows(); ++j)
        s(i, j) = direct<Scalar>(q.row(i).data(), kk.row(j).data(), q.cols(), tau, nullptr);
  }
  // The engine's inputs are range-checked (check_layer_range: |q|, |kappa| <=
  // 1e150), so the plain sums of squares below stay finite.
  template <class T>
  struct Sums {
    T qq, kk, qk;  // ||q||^2, ||kappa||^2, <q, kappa>
  };
  template <class T>
  [[gnu::always_inline]] static Sums<T> sums(const T* q, const T* kappa, Index k) {
    Sums<T> r{T(0.0), T(0.0), T(0.0)};
    for (Index a = 0; a < k; ++a) {
      r.qq += q[a] * q[a];
      r.kk += kappa[a] * kappa[a];
      r.qk += q[a] * kappa[a];
    }
    return r;
  }
  template <class T>
  [[gnu::always_inline]] static T logit(const T* q, const T* kappa, Index k, double inv_tau) {
    using std::sqrt;
    const auto [qq, kk, qk] = sums(q, kappa, k);
    if (!(value_of(qq) > 0) || !(value_of(kk) > 0)) return T(0.0);
    return qk / (sqrt(qq) * sqrt(kk)) * inv_tau;
  }
  /// dG/dq = (u_k - c u_q) / (||q|| tau), dG/dkappa = (u_q - c u_k) / (||kappa|| tau),
  /// c = <u_q, u_k>; 0 when q or kappa is 0.
  template <class T>
  [[gnu::always_inline]] static void logit_vjp(const T* q, const T* kappa, Index k, double inv_tau,
                                               const T& sb, T* qbar, T* kbar) {
    using std::sqrt;
    const auto [qq, kk, qk] = sums(q, kappa, k);
    if (!(value_of(qq) > 0) || !(value_of(kk) > 0)) return;
    const T nq = sqrt(qq), nk = sqrt(kk);
    const T c = qk / (nq * nk);
    const T fq = sb * inv_tau / nq, fk = sb * inv_tau / nk;
    for (Index a = 0; a < k; ++a) {
      const T uq = q[a] / nq, uk = kappa[a] / nk;
      qbar[a] += fq * (uk - c * uq);
      kbar[a] += fk * (uq - c * uk);
    }
  }
  static double log_logit_bound(double, double, double log_tau) { return -log_tau; }

  /// docs/theory.md (cosine): rho = ||K|| / (tau k_min), oscillation 2 / tau,
  /// x_core = R ||Q|| / (tau q_min), with q_min, k_min lower bounds on ||q(x)||,
  /// ||kappa(y)|| over B_R; +inf (with the reason) when either may vanish there.
  template <class Norm>
  static PotentialBound bound_constants(const Head<double>& hd, double r, const Norm& norm) {
    PotentialBound b;
    const double q_min = min_affine_norm(hd.q, hd.b_q, r);
    const double k_min = min_affine_norm(hd.k, hd.b_k, r);
    constexpr double kInf = std::numeric_limits<double>::infinity();
    b.oscillation = 2 / hd.tau;
    b.x_core = q_min > 0 ? r * norm(hd.q) / (hd.tau * q_min) : kInf;
    b.rho = k_min > 0 ? norm(hd.k) / (hd.tau * k_min) : kInf;
    if (!(q_min > 0) || !(k_min > 0)) {
      b.infinite_reason = std::string("the ") + (q_min > 0 ? "key" : "query") +
                          " projection may vanish in B_R (no positive lower bound on ||" +
                          (q_min > 0 ? "K y + b_k" : "Q x + b_q") +
                          "|| there), where x / ||x|| is not Lipschitz: no finite W1 bound for "
                          "the cosine potential";
    }
    return b;
  }
};

}  // namespace measattn::detail
