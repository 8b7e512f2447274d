// Internals of the attention module shared by its translation units (and by
// the modules that differentiate or re-normalize attention).
#pragma once

#include <vector>

#include "measattn/attention.hpp"

namespace measattn::detail {

/// The atoms of mu with positive weight, their log-weights, and their original
/// indices (positions, for causal masks). Zero-weight atoms contribute nothing
/// to any kernel, so they are dropped once, here.
template <class Scalar>
struct KeySet {
  Matrix<Scalar> atoms;
  Vector<Scalar> log_weights;
  std::vector<Index> index;
};

template <class Scalar>
KeySet<Scalar> positive_keys(const Measure<Scalar>& mu);

/// Validates model, measure, queries and options together (throws invalid_argument).
/// Throws invalid_argument naming tokens / queries and the projection that
/// overflowed when `out` (computed from finite inputs) is not finite.
template <class Scalar>
void check_finite_result(const Model<Scalar>& model, const Measure<Scalar>& mu,
                         const MatrixRef<Scalar>& queries, const Matrix<Scalar>& out);

template <class Scalar>
void check_inputs(const Model<Scalar>& model, const Measure<Scalar>& mu,
                  const MatrixRef<Scalar>& queries, const AttendOptions& options);

/// x w^T + b, row blocks in parallel (deterministic).
template <class Scalar>
Matrix<Scalar> project(const MatrixRef<Scalar>& x, const Matrix<Scalar>& w,
                       const Vector<Scalar>& b);

/// Logits s_ij = G_h(y_i, x_j) for head h (without log-weights), n x m dense.
template <class Scalar>
Matrix<Scalar> dense_logits(const Model<Scalar>& model, const Measure<Scalar>& mu,
                            const MatrixRef<Scalar>& queries, Index head);

/// Softmax kernel of head h, dense n x m (zero-weight atoms get probability 0).
template <class Scalar>
Matrix<Scalar> dense_kernel(const Model<Scalar>& model, const Measure<Scalar>& mu,
                            const MatrixRef<Scalar>& queries, Index head,
                            const AttendOptions& options);

/// Head fields and kernel under doubly-stochastic (Sinkhorn) normalization.
template <class Scalar>
Matrix<Scalar> sinkhorn_head_fields(const Model<Scalar>& model, const Measure<Scalar>& mu,
                                    const MatrixRef<Scalar>& queries, const AttendOptions& options);
template <class Scalar>
Matrix<Scalar> sinkhorn_kernel(const Model<Scalar>& model, const Measure<Scalar>& mu,
                               const MatrixRef<Scalar>& queries, Index head,
                               const AttendOptions& options);

}  // namespace measattn::detail
