// Dense self-attention on small measures with exact derivatives (internal).
//
// Layer: s_ij = G_h(x_i, x_j) + l_j, pi = softmax_j(s), m^h_i = sum_j pi_ij v_h(x_j),
// out_i = sum_h W_O^h m^h_i + b_O (+ x_i when residual), l_j = log w_j.
// Everything is templated on the scalar so that the same code runs in double
// (forward, reverse mode) and on dual numbers (forward mode; forward-over-reverse
// for second directional derivatives). O(H n^2 k + H n k d) per call.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "attention/potential.hpp"
#include "measattn/attention.hpp"
#include "measattn/types.hpp"

namespace measattn::detail {

/// a + eps b with eps^2 = 0.
struct Dual {
  double v = 0, e = 0;
  Dual() = default;
  Dual(double value) : v(value), e(0) {}  // NOLINT: implicit by design
  Dual(double value, double eps) : v(value), e(eps) {}
};
inline Dual operator+(Dual a, Dual b) { return {a.v + b.v, a.e + b.e}; }
inline Dual operator-(Dual a, Dual b) { return {a.v - b.v, a.e - b.e}; }
inline Dual operator-(Dual a) { return {-a.v, -a.e}; }
inline Dual operator*(Dual a, Dual b) { return {a.v * b.v, a.e * b.v + a.v * b.e}; }
inline Dual operator/(Dual a, Dual b) { return {a.v / b.v, (a.e * b.v - a.v * b.e) / (b.v * b.v)}; }
inline Dual& operator+=(Dual& a, Dual b) { return a = a + b; }
inline Dual& operator-=(Dual& a, Dual b) { return a = a - b; }
inline Dual& operator*=(Dual& a, Dual b) { return a = a * b; }
inline Dual exp(Dual a) {
  const double x = std::exp(a.v);
  return {x, x * a.e};
}
inline Dual sqrt(Dual a) {
  const double s = std::sqrt(a.v);
  return {s, a.e / (2 * s)};
}
inline double value_of(Dual a) { return a.v; }

/// x, with the compiler barred from fusing the operation that produced it into
/// the next one (no multiply-add across this point): the forward pass rounds
/// the scaled logit before adding the log-weight, as when each potential's
/// formula was a branch of this loop (results stay bit-identical).
inline double unfused(double x) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  asm("" : "+x"(x));
#elif defined(__GNUC__) && defined(__aarch64__)
  asm("" : "+w"(x));
#elif defined(__GNUC__)
  asm("" : "+m"(x));
#endif
  return x;
}
inline Dual unfused(Dual a) { return {unfused(a.v), unfused(a.e)}; }
/// The extended-precision recheck of the search runs the same kernels in long
/// double (no fusion concern there: it is only compared with itself).
inline long double unfused(long double x) { return x; }
inline long double value_of(long double a) { return a; }

/// Parameters of one layer flattened for the kernels (double).
struct LayerParams {
  struct HeadP {
    MatrixD q, k, v;     // k x d
    VectorD bq, bk, bv;  // k
    MatrixD wo;          // d_out x k
    double tau = 1;
    Potential potential = Potential::dot;  // its logit pieces: attention/potential.hpp
  };
  Index d = 0, d_out = 0, k = 0;
  std::vector<HeadP> heads;
  VectorD bo;  // d_out (zeros when absent)
  bool residual = false;

  static LayerParams from(const Model<double>& model, bool residual);
};

/// The overflow story of the search and the Jacobian kernels: with inputs of norm
/// at most `radius`, bounds (in log form) on every projection, logit and output of
/// the layer must stay below 1e150 (so that their squares and products with the
/// derivatives stay finite in double). Throws invalid_argument naming `field` and
/// saying which quantity overflows otherwise.
void check_layer_range(const LayerParams& p, double radius, const std::string& field);

/// Each row of x scaled back onto the ball B_R when it lies outside (R <= 0: no
/// constraint, x unchanged).
inline void project_rows_to_ball(MatrixD& x, double radius) {
  if (!(radius > 0)) return;
  for (Index i = 0; i < x.rows(); ++i) {
    const double nn = x.row(i).norm();
    if (nn > radius) x.row(i) *= radius / nn;
  }
}

/// Per-head intermediates of a forward pass.
template <class T>
struct HeadCache {
  std::vector<T> q, kappa, v;  // n x k each
  std::vector<T> pi;           // n x n
  std::vector<T> m;            // n x k
};

template <class T>
void project_rows(const MatrixD& w, const VectorD& b, const T* x, Index n, Index d, T* out) {
  const Index k = w.rows();
  for (Index i = 0; i < n; ++i)
    for (Index a = 0; a < k; ++a) {
      T s = b[a];
      for (Index c = 0; c < d; ++c) s += w(a, c) * x[i * d + c];
      out[i * k + a] = s;
    }
}

/// One head of layer_forward: pi, m and the head's share of out (P: the potential).
template <class P, class T>
void head_forward(const LayerParams::HeadP& hp, HeadCache<T>& c, const T* logw, Index n,
                  double inv_tau, std::vector<T>& s, T* out) {
  using std::exp;
  const Index k = hp.q.rows(), dout = hp.wo.rows();
  for (Index i = 0; i < n; ++i) {
    // The max in the scalar's own precision (double for double and Dual numbers).
    decltype(value_of(T(0.0))) mx = -1e300;
    for (Index j = 0; j < n; ++j) {
      const T g = unfused(P::logit(&c.q[i * k], &c.kappa[j * k], k, inv_tau));
      s[j] = g + logw[j];
      mx = std::max(mx, value_of(s[j]));
    }
    T z(0.0);
    for (Index j = 0; j < n; ++j) {
      s[j] = exp(s[j] - T(mx));
      z += s[j];
    }
    for (Index j = 0; j < n; ++j) {
      const T pij = s[j] / z;
      c.pi[i * n + j] = pij;
      for (Index a = 0; a < k; ++a) c.m[i * k + a] += pij * c.v[j * k + a];
    }
    for (Index o = 0; o < dout; ++o) {
      T acc(0.0);
      for (Index a = 0; a < k; ++a) acc += hp.wo(o, a) * c.m[i * k + a];
      out[i * dout + o] += acc;
    }
  }
}

/// Forward pass: x is n x d (row-major), logw has n entries (log weights, any
/// normalization), out is n x d_out. Caches are filled when non-null.
template <class T>
void layer_forward(const LayerParams& p, const T* x, const T* logw, Index n, T* out,
                   std::vector<HeadCache<T>>* caches = nullptr) {
  using std::exp;
  const Index d = p.d, k = p.k, dout = p.d_out;
  for (Index i = 0; i < n; ++i)
    for (Index o = 0; o < dout; ++o) out[i * dout + o] = p.bo[o];
  if (p.residual)
    for (Index i = 0; i < n; ++i)
      for (Index o = 0; o < dout; ++o) out[i * dout + o] += x[i * d + o];
  HeadCache<T> local;
  if (caches) caches->resize(p.heads.size());
  std::vector<T> s(static_cast<size_t>(n));
  for (size_t h = 0; h < p.heads.size(); ++h) {
    const auto& hp = p.heads[h];
    HeadCache<T>& c = caches ? (*caches)[h] : local;
    c.q.resize(static_cast<size_t>(n * k));
    c.kappa.resize(static_cast<size_t>(n * k));
    c.v.resize(static_cast<size_t>(n * k));
    c.pi.resize(static_cast<size_t>(n * n));
    c.m.assign(static_cast<size_t>(n * k), T(0.0));
    project_rows(hp.q, hp.bq, x, n, d, c.q.data());
    project_rows(hp.k, hp.bk, x, n, d, c.kappa.data());
    project_rows(hp.v, hp.bv, x, n, d, c.v.data());
    const double inv_tau = 1.0 / hp.tau;
    with_potential(hp.potential, [&](auto pot) {
      using P = decltype(pot);
      if constexpr (P::kDifferentiable) head_forward<P>(hp, c, logw, n, inv_tau, s, out);
    });
  }
}

/// Reverse mode: given gbar (n x d_out) = dObjective/dout, adds dObjective/dx to
/// xbar (n x d) and dObjective/dlogw (logw treated as free) to lbar (n).
template <class T>
void layer_vjp(const LayerParams& p, const T* x, const T* logw, Index n, const T* gbar, T* xbar,
               T* lbar) {
  const Index d = p.d, k = p.k, dout = p.d_out;
  std::vector<HeadCache<T>> caches;
  std::vector<T> out(static_cast<size_t>(n * dout));
  layer_forward(p, x, logw, n, out.data(), &caches);
  if (p.residual)
    for (Index i = 0; i < n; ++i)
      for (Index o = 0; o < dout; ++o) xbar[i * d + o] += gbar[i * dout + o];
  std::vector<T> mbar(static_cast<size_t>(n * k)), vbar(static_cast<size_t>(n * k)),
      qbar(static_cast<size_t>(n * k)), kbar(static_cast<size_t>(n * k)),
      sbar(static_cast<size_t>(n));
  for (size_t h = 0; h < p.heads.size(); ++h) {
    const auto& hp = p.heads[h];
    const auto& c = caches[h];
    const double inv_tau = 1.0 / hp.tau;
    for (Index i = 0; i < n; ++i)
      for (Index a = 0; a < k; ++a) {
        T s(0.0);
        for (Index o = 0; o < dout; ++o) s += hp.wo(o, a) * gbar[i * dout + o];
        mbar[i * k + a] = s;
      }
    std::fill(vbar.begin(), vbar.end(), T(0.0));
    std::fill(qbar.begin(), qbar.end(), T(0.0));
    std::fill(kbar.begin(), kbar.end(), T(0.0));
    with_potential(hp.potential, [&](auto pot) {
      using P = decltype(pot);
      for (Index i = 0; i < n; ++i) {
        T mean(0.0);
        for (Index j = 0; j < n; ++j) {
          T pb(0.0);
          for (Index a = 0; a < k; ++a) pb += mbar[i * k + a] * c.v[j * k + a];
          sbar[j] = pb;
          mean += c.pi[i * n + j] * pb;
        }
        for (Index j = 0; j < n; ++j) {
          const T pij = c.pi[i * n + j];
          for (Index a = 0; a < k; ++a) vbar[j * k + a] += pij * mbar[i * k + a];
          const T sb = pij * (sbar[j] - mean);
          lbar[j] += sb;
          if constexpr (P::kDifferentiable)
            P::logit_vjp(&c.q[i * k], &c.kappa[j * k], k, inv_tau, sb, &qbar[i * k], &kbar[j * k]);
        }
      }
    });
    for (Index i = 0; i < n; ++i)
      for (Index cc = 0; cc < d; ++cc) {
        T s(0.0);
        for (Index a = 0; a < k; ++a)
          s += hp.q(a, cc) * qbar[i * k + a] + hp.k(a, cc) * kbar[i * k + a] +
               hp.v(a, cc) * vbar[i * k + a];
        xbar[i * d + cc] += s;
      }
  }
}

/// log W1(F(mu), F(nu)) - log W1(mu, nu) with its exact gradient in the
/// positions and weight logits (w = softmax(a)) of both measures (search.cpp).
struct PairObjective {
  bool valid = false;  ///< false when W1(mu, nu) vanishes
  double ratio = 0, w_in = 0, w_out = 0;
  MatrixD gx, gy;
  VectorD ga, gb;
};
PairObjective pair_objective(const LayerParams& p, const MatrixD& x, const VectorD& a,
                             const MatrixD& y, const VectorD& b);

}  // namespace measattn::detail
