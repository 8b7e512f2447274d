// The potentials G(q, kappa) of attention as types (internal). With q = q(x)
// and kappa = kappa(y) the projected query and key of one head (length k) and
// tau the temperature, each potential is a struct of static members:
//
//   id, name            the public Potential and its name ("dot", ...)
//   kTiled              G has a GEMM split  G(q, kappa) = s <A(q), B(kappa)> + c(q) + d(kappa)
//                       used by the tiled kernels; c(q) is constant along a softmax row and
//                       dropped there. A(q) = q, or q / ||q|| when kNormalized (B likewise).
//   kNormalized         A and B normalize their argument (the zero vector to zero)
//   kKeyShift           d is not identically zero
//   query_scale(tau)    s, folded into the tiled kernels' query rows
//   key_shift(b, tau)   d(kappa) from B(kappa) (only when kKeyShift)
//   tile(...)           a block of G between rows of A(q) and B(kappa) (LogitTiles)
//   direct(q, kappa, k, tau, custom)   the formula itself (the dense reference)
//   logit / logit_vjp   G and its gradient pieces for the Lipschitz engine, on
//                       double or dual numbers (forward-over-reverse gives the
//                       Hessian-vector products); always inlined, so that the
//                       compiler contracts G / tau + log w exactly as when the
//                       formula was written in the engine's loop
//   log_logit_bound     log of a bound on |G| given log bounds on ||q||, ||kappa||, tau
//   bound_constants     the constants of the W1 Lipschitz bound (docs/theory.md)
//
// with_potential(p, f) is the one place that turns the run-time Potential
// into a type: f(DotPotential{}) etc. A new potential is one struct (see
// potential_cosine.hpp) plus a line in with_potential and in the enum.
#pragma once

#include <cmath>
#include <limits>
#include <string>

#include "measattn/attention.hpp"
#include "measattn/error.hpp"

namespace measattn::detail {

/// The value of a scalar (the engine adds an overload for its dual numbers).
inline double value_of(double a) { return a; }

/// The constants of one head's W1 Lipschitz bound on B_R (docs/theory.md,
/// Lipschitz sections 2, 3 and the cosine section): the logit g_x(y) (terms
/// without y dropped) has y-gradient at most `rho`, oscillation over B_R at most
/// `oscillation`, and Lip(Gamma_mu) <= ||V|| x_core. `infinite_reason` is set
/// (and the constants are +inf) when no finite bound holds.
struct PotentialBound {
  double rho = 0, oscillation = 0, x_core = 0;
  std::string infinite_reason;
};

struct DotPotential {
  static constexpr Potential id = Potential::dot;
  static constexpr const char* name = "dot";
  static constexpr bool kTiled = true, kNormalized = false, kKeyShift = false;
  static constexpr bool kDifferentiable = true;
  /// Whether the token-level search should also start from Kim's outlier
  /// configurations (distance-based potentials).
  static constexpr bool kOutlierStarts = false;

  template <class Scalar>
  static Scalar query_scale(Scalar tau) {
    return Scalar(1) / tau;
  }
  template <class Scalar, class Column>
  static Scalar key_shift(const Column&, Scalar) {
    return 0;
  }
  /// t = G(a_i, b_j) for a block of rows of a and b (an, bn: their squared norms,
  /// unused here).
  template <class Scalar, class Tile, class Rows>
  static void tile(const Rows& a, const Rows& b, const Vector<Scalar>&, const Vector<Scalar>&,
                   Index, Index, Scalar inv_tau, Tile& t) {
    t.noalias() = a * b.transpose();
    t *= inv_tau;
  }
  template <class Scalar>
  static Scalar direct(const Scalar* q, const Scalar* kappa, Index k, Scalar tau,
                       const PotentialFunction<Scalar>*) {
    Scalar s = 0;
    for (Index c = 0; c < k; ++c) s += q[c] * kappa[c];
    return s / tau;
  }
  /// Dense logits n x m between projected queries and keys (the reference).
  template <class Scalar>
  static void dense(const Matrix<Scalar>& q, const Matrix<Scalar>& kk, Scalar tau,
                    const PotentialFunction<Scalar>*, Matrix<Scalar>& s) {
    s = q * kk.transpose() / tau;
  }
  template <class T>
  [[gnu::always_inline]] static T logit(const T* q, const T* kappa, Index k, double inv_tau) {
    T g(0.0);
    for (Index a = 0; a < k; ++a) g += q[a] * kappa[a];
    return g * inv_tau;
  }
  /// qbar += sb dG/dq, kbar += sb dG/dkappa.
  template <class T>
  [[gnu::always_inline]] static void logit_vjp(const T* q, const T* kappa, Index k, double inv_tau,
                                               const T& sb, T* qbar, T* kbar) {
    for (Index a = 0; a < k; ++a) {
      qbar[a] += sb * kappa[a] * inv_tau;
      kbar[a] += sb * q[a] * inv_tau;
    }
  }
  static double log_logit_bound(double log_q, double log_k, double log_tau) {
    return log_q + log_k - log_tau;
  }
  template <class Norm>
  static PotentialBound bound_constants(const Head<double>& hd, double r, const Norm& norm) {
    // g_x(y) = <A^T x + c, y>, A = Q^T K / tau, c = K^T b_q / tau (Section 2).
    const MatrixD a = hd.q.transpose() * hd.k / hd.tau;
    const double an = norm(a);
    const double cn = (hd.k.transpose() * hd.b_q).norm() / hd.tau;
    PotentialBound b;
    b.rho = an * r + cn;
    b.oscillation = 2 * r * b.rho;
    b.x_core = an * r * r;
    return b;
  }
};

struct L2Potential {
  static constexpr Potential id = Potential::l2;
  static constexpr const char* name = "l2";
  static constexpr bool kTiled = true, kNormalized = false, kKeyShift = true;
  static constexpr bool kDifferentiable = true;
  static constexpr bool kOutlierStarts = true;

  // -||q - kappa||^2 / tau = (2/tau) <q, kappa> - ||kappa||^2 / tau - ||q||^2 / tau.
  template <class Scalar>
  static Scalar query_scale(Scalar tau) {
    return Scalar(2) / tau;
  }
  template <class Scalar, class Column>
  static Scalar key_shift(const Column& kappa, Scalar tau) {
    return kappa.squaredNorm() / tau;  // subtracted from the log-weight
  }
  template <class Scalar, class Tile, class Rows>
  static void tile(const Rows& a, const Rows& b, const Vector<Scalar>& an, const Vector<Scalar>& bn,
                   Index r0, Index c0, Scalar inv_tau, Tile& t) {
    const Index nr = a.rows(), nc = b.rows();
    t.noalias() = a * b.transpose();
    t = (Scalar(2) * t.array() - an.segment(r0, nr).replicate(1, nc).array() -
         bn.segment(c0, nc).transpose().replicate(nr, 1).array()) *
        inv_tau;
  }
  template <class Scalar>
  static Scalar direct(const Scalar* q, const Scalar* kappa, Index k, Scalar tau,
                       const PotentialFunction<Scalar>*) {
    Scalar s = 0;
    for (Index c = 0; c < k; ++c) s += (q[c] - kappa[c]) * (q[c] - kappa[c]);
    return -s / tau;
  }
  template <class Scalar>
  static void dense(const Matrix<Scalar>& q, const Matrix<Scalar>& kk, Scalar tau,
                    const PotentialFunction<Scalar>*, Matrix<Scalar>& s) {
    for (Index i = 0; i < q.rows(); ++i)
      for (Index j = 0; j < kk.rows(); ++j) s(i, j) = -(q.row(i) - kk.row(j)).squaredNorm() / tau;
  }
  template <class T>
  [[gnu::always_inline]] static T logit(const T* q, const T* kappa, Index k, double inv_tau) {
    T g(0.0);
    for (Index a = 0; a < k; ++a) {
      const T t = q[a] - kappa[a];
      g += t * t;
    }
    return g * (-inv_tau);
  }
  template <class T>
  [[gnu::always_inline]] static void logit_vjp(const T* q, const T* kappa, Index k, double inv_tau,
                                               const T& sb, T* qbar, T* kbar) {
    for (Index a = 0; a < k; ++a) {
      const T t = (q[a] - kappa[a]) * (2.0 * inv_tau) * sb;
      qbar[a] -= t;
      kbar[a] += t;
    }
  }
  static double log_logit_bound(double log_q, double log_k, double log_tau) {
    return 2 * (std::max(log_q, log_k) + std::log(2.0)) - log_tau;
  }
  template <class Norm>
  static PotentialBound bound_constants(const Head<double>& hd, double r, const Norm& norm) {
    // g_x(y) = <a(x), y> - ||K y||^2 / tau (Section 3).
    const double kq = norm(hd.k.transpose() * hd.q);
    const double kk = norm(hd.k);
    const double beta = 2.0 / hd.tau * (kq * r + (hd.k.transpose() * (hd.b_q - hd.b_k)).norm());
    PotentialBound b;
    b.rho = beta + 2.0 * kk * kk * r / hd.tau;
    b.oscillation = 2 * r * beta + kk * kk * r * r / hd.tau;
    b.x_core = 2.0 * kq * r * r / hd.tau;
    return b;
  }
};

/// A user function of the projected query and key (Model::custom_potential):
/// no split (the kernels call it per pair), no derivatives, no bound.
struct CustomPotential {
  static constexpr Potential id = Potential::custom;
  static constexpr const char* name = "custom";
  static constexpr bool kTiled = false, kNormalized = false, kKeyShift = false;
  static constexpr bool kDifferentiable = false;
  static constexpr bool kOutlierStarts = false;

  template <class Scalar>
  static Scalar query_scale(Scalar) {
    return 1;
  }
  template <class Scalar>
  static Scalar direct(const Scalar* q, const Scalar* kappa, Index k, Scalar,
                       const PotentialFunction<Scalar>* custom) {
    return (*custom)(q, kappa, k);
  }
  template <class Scalar>
  static void dense(const Matrix<Scalar>& q, const Matrix<Scalar>& kk, Scalar,
                    const PotentialFunction<Scalar>* custom, Matrix<Scalar>& s) {
    for (Index i = 0; i < q.rows(); ++i) {
      const Vector<Scalar> qi = q.row(i).transpose();
      for (Index j = 0; j < kk.rows(); ++j) {
        const Vector<Scalar> kj = kk.row(j).transpose();
        s(i, j) = (*custom)(qi.data(), kj.data(), q.cols());
      }
    }
  }
};

}  // namespace measattn::detail

#include "attention/potential_cosine.hpp"

namespace measattn::detail {

/// The one dispatch over Potential: calls f with the potential's type
/// (DotPotential{}, L2Potential{}, CosinePotential{}, CustomPotential{}).
template <class F>
decltype(auto) with_potential(Potential p, F&& f) {
  switch (p) {
    case Potential::dot:
      return f(DotPotential{});
    case Potential::l2:
      return f(L2Potential{});
    case Potential::cosine:
      return f(CosinePotential{});
    case Potential::custom:
      break;
  }
  return f(CustomPotential{});
}

}  // namespace measattn::detail
