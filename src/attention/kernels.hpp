// The attention-field kernel layer (field_kernels.cpp): one entry point that
// takes keys, their prepared log-weights and queries to the attention field
// Gamma_mu(y_i) = W_O [sum_j P^h_ij v^h(x_j)]_h + b_O, choosing among the
// small-head-dimension kernel, the tied (W_Q = W_K) kernels and the streaming
// kernel of attention.cpp. Callers that evaluate the field many times for the
// same weights (the particle flow) validate their inputs once and prepare the
// weights once (key_weights), then call attention_field_kernel per evaluation.
#pragma once

#include <vector>

#include "measattn/attention.hpp"

namespace measattn::detail {

/// True when the model's logits are the dot potential <q(y), kappa(x)> / tau:
/// the potential the small-dimension and tied kernels compute. The one test of
/// the potential in this layer.
template <class Scalar>
inline bool dot_potential(const Model<Scalar>& model) {
  return model.potential == Potential::dot;
}

/// True when m is a square identity matrix.
template <class Scalar>
inline bool is_identity(const Matrix<Scalar>& m) {
  return m.rows() == m.cols() && m == Matrix<Scalar>::Identity(m.rows(), m.cols());
}

/// True when the logits are symmetric: W_Q = W_K, no query/key bias, dot potential.
bool tied_query_key(const Model<double>& model);

/// The keys' weights w_j (m of them) prepared for the kernels: computed once
/// for as many field evaluations as keep these weights.
template <class Scalar>
struct KeyWeights {
  /// w_j as given: finite, >= 0, positive total (not renormalized).
  Vector<Scalar> weights;
  /// log w_j (std::log), -inf where w_j = 0.
  Vector<Scalar> log_weights;
  /// log w_j by Eigen's vectorized logarithm of the whole vector (the tied
  /// head_dim <= 8 kernel's; it differs from std::log in the last bit for a
  /// fifth of the entries, and is kept so that kernel's results are unchanged).
  Vector<Scalar> packed_log_weights;
  /// The j with w_j > 0, increasing.
  std::vector<Index> positive;
  /// max_j log w_j.
  Scalar max_log_weight = 0;
  /// The streaming kernel's log-weights: log of w_j / sum w, normalized as a
  /// Measure normalizes its weights, for the j in `positive` (in that order),
  /// so that its results equal attention_field's on the Measure of the keys.
  Vector<Scalar> positive_log_weights;
  /// True when sum w overflows Scalar (which a Measure rejects).
  bool total_overflows = false;
};

/// Checks the weights (field `weights`: finite, >= 0, positive total; throws
/// invalid_argument) and prepares them. O(m).
template <class Scalar>
KeyWeights<Scalar> key_weights(const Vector<Scalar>& weights);

/// The kernels of attention_field_kernel.
enum class FieldKernel {
  small_dim,       ///< head_dim <= 8, dot potential: fused single pass per key block
  tied_small_dim,  ///< also W_Q = W_K (double, keys = queries): one exponential per pair
  tied_gemm,       ///< W_Q = W_K, head_dim > 8 (double, keys = queries): register tiles
  streaming,       ///< any other case: the streaming kernel (attention_field)
};

/// The kernel attention_field_kernel runs for this model and options, with
/// `self` true when the queries are the keys themselves. Block sizes other
/// than the default (0) select the streaming kernel, whose results they shape;
/// so do a causal mask and Sinkhorn iterations (zero iterations is softmax).
template <class Scalar>
FieldKernel field_kernel(const Model<Scalar>& model, const AttendOptions& options, bool self);

/// The attention field of the queries (n x d_q) under the measure
/// mu = sum_j w_j delta_{x_j} of the keys (m x d_kv), into out (n x d_out;
/// resized, its storage reused when the size matches). Softmax attention
/// without residual; with options.causal query row i (global position
/// query_offset + i) sees the keys at positions <= query_offset + i (the
/// streaming kernel; the keys are at positions 0..m-1). Sinkhorn normalization
/// goes through attention_field on the measure of the keys (self-attention
/// only). Nothing is validated here: the caller has checked
/// the model (validate()), the dimensions, finite keys and queries, and
/// prepared `weights` from m weights with key_weights. The queries count as
/// the keys (`self` in field_kernel) when they are the same matrix (same data,
/// shape and stride). out must not alias keys or queries.
/// Deterministic whatever the thread count. O(n m d).
template <class Scalar>
void attention_field_kernel(const Model<Scalar>& model, const MatrixRef<Scalar>& keys,
                            const KeyWeights<Scalar>& weights, const MatrixRef<Scalar>& queries,
                            const AttendOptions& options, Matrix<Scalar>& out,
                            Index query_offset = 0);

}  // namespace measattn::detail
