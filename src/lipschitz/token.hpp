// Token-level Jacobian internals shared by token.cpp (products, search),
// token_krylov.cpp (the top singular value) and token_bound.cpp (the proved
// bound on B_R^n and the sweep over n).
#pragma once

#include <cstdint>
#include <string>

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
