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

/// The keys as the streaming kernel takes them, prepared by its caller: m atoms
/// of positive weight, their log-weights (m values) and their original
/// positions (m increasing values, for causal masks; nullptr when atom t is at
/// position t). Views: the arrays outlive the call.
template <class Scalar>
struct StreamKeys {
  MatrixRef<Scalar> atoms;
  const Scalar* log_weights;
  const Index* index;
};

/// The running online log-sum-exp state of every query row and head, carried
/// from one call of the streaming kernel to the next when the keys arrive in
/// pieces (the distributed attention, distributed.cpp): row maxima and sums
/// [head][row], accumulators [head][row][k_pad] (k_pad = head size rounded up
/// to whole packets). A row continues exactly as if every key had been in one
/// call, provided the pieces start on the same key-block boundaries (the
/// caller fixes AttendOptions::key_block). Start: max = -inf, sum = acc = 0.
template <class Scalar>
struct StreamState {
  Index rows = 0, k_pad = 0;
  std::vector<Scalar> max, sum, acc;
  bool finalize = false;  // this call ends the stream: divide, project, return
};

/// The streaming kernel (attention.cpp): the head fields (n x E) of the queries
/// under the keys or, when `project_out`, the attention field W_O [fields] + b_O
/// (+ the queries when options.residual), softmax normalization. Nothing is
/// validated but what the keys alone decide (some key, and with causal masks a
/// key at position 0); the caller has checked the model, the dimensions, finite
/// atoms and queries, and the options (check_inputs). Deterministic whatever
/// the thread count.
///
/// With `state`: the rows start from the state and, unless state->finalize,
/// end in it (the result is then empty); keys carry their global positions
/// (keys.index) and query row i has global position query_offset + i (causal
/// masks). The check that some key sits at position 0 is the caller's.
template <class Scalar>
Matrix<Scalar> streaming_attention(const Model<Scalar>& model, const StreamKeys<Scalar>& keys,
                                   const MatrixRef<Scalar>& queries, const AttendOptions& options,
                                   bool project_out, StreamState<Scalar>* state = nullptr,
                                   Index query_offset = 0);

/// attention_field with several ranks (distributed.cpp): every rank holds the
/// whole measure and queries, computes its shard_rows of the queries against
/// the keys travelling from rank to rank, and receives the whole result.
/// Inputs already checked (check_inputs); softmax normalization.
template <class Scalar>
Matrix<Scalar> distributed_attention_field(const Model<Scalar>& model, const Measure<Scalar>& mu,
                                           const MatrixRef<Scalar>& queries,
                                           const AttendOptions& options);

/// Throws invalid_argument naming tokens / queries and the projection that
/// overflowed when `out` (computed from finite inputs) is not finite. The
/// queries count as the tokens when `self`; the Measure form sets it when the
/// queries are mu's atoms.
template <class Scalar>
void check_finite_result(const Model<Scalar>& model, const MatrixRef<Scalar>& atoms,
                         const MatrixRef<Scalar>& queries, bool self, const Matrix<Scalar>& out);
template <class Scalar>
void check_finite_result(const Model<Scalar>& model, const Measure<Scalar>& mu,
                         const MatrixRef<Scalar>& queries, const Matrix<Scalar>& out);

/// The checks of check_inputs on the options alone, given a valid model.
template <class Scalar>
void check_options(const Model<Scalar>& model, const AttendOptions& options);

/// Validates model, measure, queries and options together (throws invalid_argument).
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
