// Token-level Jacobian internals shared by token.cpp (products, search),
// token_krylov.cpp (the top singular value) and token_bound.cpp (the proved
// bound on B_R^n and the sweep over n).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "lipschitz/engine.hpp"
#include "measattn/types.hpp"

namespace measattn::detail {

/// Refuses empty, mis-shaped or non-finite tokens and tokens whose norm puts the
/// layer out of double's range (invalid_argument naming `field`).
void check_tokens(const LayerParams& p, const MatrixD& x, const char* field);

/// J(X) Xdot, J(X)^T Gbar and d/dX <U, J(X) V> (forward over reverse), uniform weights.
MatrixD token_jvp_raw(const LayerParams& p, const MatrixD& x, const MatrixD& x_dot);
MatrixD token_vjp_raw(const LayerParams& p, const MatrixD& x, const MatrixD& g_bar);
MatrixD token_second_raw(const LayerParams& p, const MatrixD& x, const MatrixD& v,
                         const MatrixD& u);

/// J(X) Xdot and J(X)^T Gbar when every head has the dot potential, by dense
/// products over blocks of query rows (token_fast.cpp); the same values as the
/// dual-number products up to rounding, O(H n^2 k) in GEMMs, O(n k) memory per
/// head plus one block of the attention matrix per thread.
class DotProducts {
 public:
  static bool applies(const LayerParams& p);
  DotProducts(const LayerParams& p, const MatrixD& x);
  MatrixD jvp(const MatrixD& x_dot) const;
  MatrixD vjp(const MatrixD& g_bar) const;

 private:
  struct Head {
    MatrixD q, k, v;  // n x k: projected tokens
    VectorD lse;      // log-sum-exp of each query's logits
    double inv_tau = 1;
  };
  MatrixD probabilities(const Head& h, Index i0, Index b) const;
  int threads() const;
  const LayerParams& p_;
  const MatrixD& x_;
  std::vector<Head> heads_;
};

/// The top singular triple of J(X) from Lanczos on J^T J (Spectra), with the
/// explicit residual of the returned pair.
struct TopSingular {
  double value = 0;           ///< ||J v||, v the unit Ritz vector
  double residual = 0;        ///< ||J^T J v - value^2 v||
  double upper = 0;           ///< sqrt(value^2 + residual)
  MatrixD v, u;               ///< unit right singular vector estimate, u = J v / ||J v||
  int iterations = 0;         ///< Krylov restarts
  std::int64_t products = 0;  ///< applications of J^T J (one JVP and one VJP each)
  bool converged = false;     ///< residual <= tolerance value^2
  std::string method;         ///< "lanczos" or "direct" (n d = 1)
};
TopSingular top_singular(const LayerParams& p, const MatrixD& x, const MatrixD& start,
                         int max_restarts, double tolerance);

}  // namespace measattn::detail
