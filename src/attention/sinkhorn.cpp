// Doubly-stochastic ("Sinkhorn") attention (THEORY Section 4; Sander et al.,
// Sinkformers, AISTATS 2022). The coupling of (mu, mu) maximizing
// <G, pi> - KL(pi || mu x mu) is pi_ij = w_i w_j exp(f_i + G_ij + g_j); its row
// conditionals pi_ij / w_i form the kernel. Iteration 0 is the softmax kernel
// (row normalization of exp(G) w); each further iteration normalizes the
// columns to w and then the rows again, in the log domain.
#include <cmath>
#include <limits>

#include "attention/internal.hpp"
#include "measattn/attention.hpp"
#include "measattn/error.hpp"

namespace measattn::detail {

namespace {

template <class Scalar>
void log_normalize_rows(Matrix<Scalar>& log_p) {
  for (Index i = 0; i < log_p.rows(); ++i) {
    const Scalar mx = log_p.row(i).maxCoeff();
    const Scalar lse = mx + std::log((log_p.row(i).array() - mx).exp().sum());
    log_p.row(i).array() -= lse;
  }
}

}  // namespace

template <class Scalar>
Matrix<Scalar> sinkhorn_kernel(const Model<Scalar>& model, const Measure<Scalar>& mu,
                               const MatrixRef<Scalar>& queries, Index head,
                               const AttendOptions& options) {
  if (options.causal) {
    throw invalid_argument("normalization: sinkhorn attention does not support --causal");
  }
  if (queries.rows() != mu.size() || queries != mu.atoms()) {
    throw invalid_argument("normalization: sinkhorn attention is defined for self-attention only");
  }
  const KeySet<Scalar> keys = positive_keys(mu);
  // Log-kernel over the atoms of positive weight: log P_ij = G_ij + log w_j - log Z_i,
  // so that P is row-stochastic and w^T P is the column marginal.
  const Measure<Scalar> support(keys.atoms, keys.log_weights.array().exp().matrix());
  Matrix<Scalar> log_p = dense_logits(model, support, support.atoms(), head);
  log_p.rowwise() += keys.log_weights.transpose();
  log_normalize_rows(log_p);
  for (int it = 0; it < options.sinkhorn_iterations; ++it) {
    // Columns: sum_i w_i P_ij = w_j.
    for (Index j = 0; j < log_p.cols(); ++j) {
      auto col = log_p.col(j).array() + keys.log_weights.array();
      const Scalar mx = col.maxCoeff();
      const Scalar lse = mx + std::log((col - mx).exp().sum());
      log_p.col(j).array() += keys.log_weights[j] - lse;
    }
    log_normalize_rows(log_p);
  }
  Matrix<Scalar> kernel = Matrix<Scalar>::Zero(mu.size(), mu.size());
  for (Index a = 0; a < log_p.rows(); ++a)
    for (Index b = 0; b < log_p.cols(); ++b)
      kernel(keys.index[static_cast<size_t>(a)], keys.index[static_cast<size_t>(b)]) =
          std::exp(log_p(a, b));
  // Queries of zero weight: their row conditional is the softmax row.
  if (static_cast<Index>(keys.index.size()) != mu.size()) {
    AttendOptions softmax = options;
    softmax.normalization = Normalization::softmax;
    const Matrix<Scalar> plain = dense_kernel(model, mu, queries, head, softmax);
    for (Index i = 0; i < mu.size(); ++i)
      if (mu.weight(i) <= 0) kernel.row(i) = plain.row(i);
  }
  return kernel;
}

template <class Scalar>
Matrix<Scalar> sinkhorn_head_fields(const Model<Scalar>& model, const Measure<Scalar>& mu,
                                    const MatrixRef<Scalar>& queries,
                                    const AttendOptions& options) {
  const Index k = model.head_dim();
  const Matrix<Scalar> v = project<Scalar>(mu.atoms(), model.w_v, model.b_v);
  Matrix<Scalar> out(queries.rows(), model.embed_dim());
  for (Index h = 0; h < model.num_heads; ++h) {
    out.middleCols(h * k, k) =
        sinkhorn_kernel(model, mu, queries, h, options) * v.middleCols(h * k, k);
  }
  return out;
}

#define MEASATTN_INSTANTIATE(S)                                                                    \
  template Matrix<S> sinkhorn_kernel(const Model<S>&, const Measure<S>&, const MatrixRef<S>&,      \
                                     Index, const AttendOptions&);                                 \
  template Matrix<S> sinkhorn_head_fields(const Model<S>&, const Measure<S>&, const MatrixRef<S>&, \
                                          const AttendOptions&);

MEASATTN_INSTANTIATE(float)
MEASATTN_INSTANTIATE(double)
#undef MEASATTN_INSTANTIATE

}  // namespace measattn::detail
