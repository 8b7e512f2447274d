// Internals of the flow module shared by its translation units.
#pragma once

#include "measattn/flow.hpp"

namespace measattn::detail {

/// Gamma_{mu_X}(x_i) for all i without any projection; chooses the small-dimension
/// kernel (small_dim_attention_field) when it applies, else attention_field.
/// Written into out (resized; its storage reused when the size matches). out
/// must not alias particles.
template <class Scalar>
void particle_attention_field(const Model<Scalar>& model, const Vector<Scalar>& weights,
                              const MatrixRef<Scalar>& particles, const AttendOptions& options,
                              Matrix<Scalar>& out);

/// Streaming attention specialized to small head dimensions (k <= 8): a fused
/// single pass per key block with a per-row upper bound on the logits as shift
/// (Cauchy–Schwarz), falling back to the exact two-pass online log-sum-exp for
/// rows whose bound is far above the true maximum. Returns n x d_out.
template <class Scalar>
Matrix<Scalar> small_dim_attention_field(const Model<Scalar>& model, const Vector<Scalar>& weights,
                                         const MatrixRef<Scalar>& particles);

/// True when the logits are symmetric: W_Q = W_K, no query/key bias, dot potential.
bool tied_query_key(const Model<double>& model);

/// The field for tied query/key projections and head_dim <= 8 (field.cpp):
/// one exponential per unordered pair, deterministic for any thread count.
/// Written into out (resized; not aliasing particles).
void tied_small_dim_attention_field(const Model<double>& model, const VectorD& weights,
                                    const MatrixRef<double>& particles, MatrixD& out);

/// The same for head_dim > 8, on the register-tiled blocks of the attention
/// kernel: half the logits and half the exponentials of the general kernel.
/// Written into out (resized; not aliasing particles).
void tied_gemm_attention_field(const Model<double>& model, const VectorD& weights,
                               const MatrixRef<double>& particles, MatrixD& out);

/// sum_j w_j exp(beta <x_i, x_j>) x_j for each row i (no projection). O(n^2 d).
template <class Scalar>
Matrix<Scalar> unnormalized_field(const Vector<Scalar>& weights, const MatrixRef<Scalar>& particles,
                                  double beta);

/// y_i <- y_i - <x_i, y_i> x_i for each row.
template <class Scalar>
void project_tangent(const MatrixRef<Scalar>& x, Matrix<Scalar>& y);

/// x_i <- x_i / ||x_i|| for each row (throws invalid_argument on a zero row when
/// `what` is non-empty; returns false on a zero or non-finite row otherwise).
template <class Scalar>
bool normalize_rows(Matrix<Scalar>& x, const char* what);

}  // namespace measattn::detail
