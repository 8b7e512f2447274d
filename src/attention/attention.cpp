// Streaming multi-head attention on measures (THEORY Section 2).
//
// For each head and each block of queries, keys are visited block by block; a
// running row maximum m, a running normalizer l and a running weighted sum of
// values acc are kept (online log-sum-exp):
//   s_ij = G(y_i, x_j) + log w_j,  m' = max(m, max_j s_ij),
//   l' = l e^{m - m'} + sum_j e^{s_ij - m'},  acc' = acc e^{m - m'} + sum_j e^{s_ij - m'} v_j,
// and Gamma^h(y_i) = acc / l at the end. Memory is O((n + m) E + blocks).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "attention/internal.hpp"
#include "measattn/attention.hpp"
#include "measattn/error.hpp"

namespace measattn {

namespace detail {

template <class Scalar>
void check_inputs(const Model<Scalar>& model, const Measure<Scalar>& mu,
                  const MatrixRef<Scalar>& queries, const AttendOptions& options) {
  model.validate();
  if (mu.dim() != model.key_dim()) {
    throw invalid_argument("tokens: atoms have dimension " + std::to_string(mu.dim()) +
                           " but the model's keys have dimension " +
                           std::to_string(model.key_dim()));
  }
  if (queries.cols() != model.query_dim()) {
    throw invalid_argument("queries: dimension " + std::to_string(queries.cols()) +
                           " but the model's queries have dimension " +
                           std::to_string(model.query_dim()));
  }
  if (queries.rows() == 0) throw invalid_argument("queries: no queries");
  if (!queries.allFinite()) throw invalid_argument("queries: contains a NaN or infinite entry");
  if (options.residual && model.out_dim() != model.query_dim()) {
    throw invalid_argument("residual: the output dimension " + std::to_string(model.out_dim()) +
                           " differs from the query dimension " +
                           std::to_string(model.query_dim()));
  }
  if (options.query_block < 0 || options.key_block < 0) {
    throw invalid_argument("block sizes: must be >= 0");
  }
  if (options.sinkhorn_iterations < 0) {
    throw invalid_argument("sinkhorn_iterations: must be >= 0");
  }
}

template <class Scalar>
KeySet<Scalar> positive_keys(const Measure<Scalar>& mu) {
  KeySet<Scalar> keys;
  for (Index j = 0; j < mu.size(); ++j) {
    if (mu.weight(j) > 0) keys.index.push_back(j);
  }
  const Index m = static_cast<Index>(keys.index.size());
  keys.atoms.resize(m, mu.dim());
  keys.log_weights.resize(m);
  for (Index t = 0; t < m; ++t) {
    keys.atoms.row(t) = mu.atoms().row(keys.index[static_cast<size_t>(t)]);
    keys.log_weights[t] = std::log(mu.weight(keys.index[static_cast<size_t>(t)]));
  }
  return keys;
}

template <class Scalar>
Matrix<Scalar> project(const MatrixRef<Scalar>& x, const Matrix<Scalar>& w,
                       const Vector<Scalar>& b) {
  const Index n = x.rows();
  Matrix<Scalar> out(n, w.rows());
  constexpr Index kBlock = 1024;
  const Index blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
  for (Index blk = 0; blk < blocks; ++blk) {
    const Index r0 = blk * kBlock;
    const Index r = std::min(kBlock, n - r0);
    out.middleRows(r0, r).noalias() = x.middleRows(r0, r) * w.transpose();
    if (b.size()) out.middleRows(r0, r).rowwise() += b.transpose();
  }
  return out;
}

template <class Scalar>
Matrix<Scalar> streaming_head_fields(const Model<Scalar>& model, const Measure<Scalar>& mu,
                                     const MatrixRef<Scalar>& queries,
                                     const AttendOptions& options) {
  const KeySet<Scalar> keys = positive_keys(mu);
  const Index n = queries.rows();
  const Index m = keys.atoms.rows();
  const Index heads = model.num_heads;
  const Index k = model.head_dim();
  const Index e = model.embed_dim();
  const Scalar inv_tau = Scalar(1) / model.tau();
  const Potential potential = model.potential;

  if (options.causal) {
    // Query i sees the keys at positions <= i; the first key of positive
    // weight must therefore come no later than the first query.
    if (keys.index.front() > 0) {
      throw invalid_argument("weights: with --causal, query 0 sees only tokens of zero weight");
    }
  }

  const Matrix<Scalar> qp = project<Scalar>(queries, model.w_q, model.b_q);
  const Matrix<Scalar> kp = project<Scalar>(keys.atoms, model.w_k, model.b_k);
  const Matrix<Scalar> vp = project<Scalar>(keys.atoms, model.w_v, model.b_v);

  // For the l2 potential: -||q - k||^2 / tau = (2 <q,k> - |q|^2 - |k|^2) / tau.
  Matrix<Scalar> qn, kn;  // n x H, m x H squared norms per head
  if (potential == Potential::l2) {
    qn.resize(n, heads);
    kn.resize(m, heads);
    for (Index h = 0; h < heads; ++h) {
      qn.col(h) = qp.middleCols(h * k, k).rowwise().squaredNorm();
      kn.col(h) = kp.middleCols(h * k, k).rowwise().squaredNorm();
    }
  }

  const Index bq = options.query_block > 0 ? options.query_block : 64;
  const Index bk = options.key_block > 0 ? options.key_block : 256;
  const Index query_blocks = (n + bq - 1) / bq;
  constexpr Scalar kNegInf = -std::numeric_limits<Scalar>::infinity();

  Matrix<Scalar> out(n, e);

#pragma omp parallel
  {
    // Work buffers: allocated once per thread, reused for every block.
    Matrix<Scalar> s(bq, bk);
    Matrix<Scalar> acc(bq, k);
    Vector<Scalar> row_max(bq), row_sum(bq), block_max(bq), alpha(bq);

#pragma omp for schedule(dynamic, 1)
    for (Index qb = 0; qb < query_blocks; ++qb) {
      const Index i0 = qb * bq;
      const Index rows = std::min(bq, n - i0);
      const Index i_last = i0 + rows - 1;
      // Causal: keys at original positions <= i_last are the only ones visible.
      Index key_end = m;
      if (options.causal) {
        key_end = static_cast<Index>(
            std::upper_bound(keys.index.begin(), keys.index.end(), i_last) - keys.index.begin());
      }
      for (Index h = 0; h < heads; ++h) {
        auto q_blk = qp.block(i0, h * k, rows, k);
        acc.topRows(rows).setZero();
        row_max.head(rows).setConstant(kNegInf);
        row_sum.head(rows).setZero();
        for (Index j0 = 0; j0 < key_end; j0 += bk) {
          const Index cols = std::min(bk, key_end - j0);
          auto sb = s.topLeftCorner(rows, cols);
          auto k_blk = kp.block(j0, h * k, cols, k);
          if (potential == Potential::custom) {
            for (Index r = 0; r < rows; ++r) {
              const Vector<Scalar> qr = q_blk.row(r).transpose();
              for (Index c = 0; c < cols; ++c) {
                const Vector<Scalar> kc = k_blk.row(c).transpose();
                sb(r, c) = model.custom_potential(qr.data(), kc.data(), k);
              }
            }
          } else {
            sb.noalias() = q_blk * k_blk.transpose();
            if (potential == Potential::dot) {
              sb *= inv_tau;
            } else {
              sb =
                  (Scalar(2) * sb.array() - qn.col(h).segment(i0, rows).replicate(1, cols).array() -
                   kn.col(h).segment(j0, cols).transpose().replicate(rows, 1).array()) *
                  inv_tau;
            }
          }
          sb.rowwise() += keys.log_weights.segment(j0, cols).transpose();
          if (options.causal && keys.index[static_cast<size_t>(j0 + cols - 1)] > i0) {
            for (Index r = 0; r < rows; ++r) {
              for (Index c = 0; c < cols; ++c) {
                if (keys.index[static_cast<size_t>(j0 + c)] > i0 + r) sb(r, c) = kNegInf;
              }
            }
          }
          block_max.head(rows) = sb.rowwise().maxCoeff();
          for (Index r = 0; r < rows; ++r) {
            const Scalar new_max = std::max(row_max[r], block_max[r]);
            if (new_max == kNegInf) {
              // Every key so far is masked for this row: nothing to add.
              alpha[r] = 1;
              sb.row(r).setZero();
              continue;
            }
            alpha[r] = row_max[r] == kNegInf ? Scalar(0) : std::exp(row_max[r] - new_max);
            row_max[r] = new_max;
            sb.row(r).array() -= new_max;
          }
          sb = sb.array().exp().matrix();
          row_sum.head(rows) =
              row_sum.head(rows).cwiseProduct(alpha.head(rows)) + sb.rowwise().sum();
          acc.topRows(rows) = alpha.head(rows).asDiagonal() * acc.topRows(rows);
          acc.topRows(rows).noalias() += sb * vp.block(j0, h * k, cols, k);
        }
        for (Index r = 0; r < rows; ++r) {
          // row_sum >= 1 after the key attaining the maximum: never zero here.
          out.block(i0 + r, h * k, 1, k) = acc.row(r) / row_sum[r];
        }
      }
    }
  }
  return out;
}

}  // namespace detail

template <class Scalar>
Matrix<Scalar> head_fields(const Model<Scalar>& model, const Measure<Scalar>& mu,
                           const MatrixRef<Scalar>& queries, const AttendOptions& options) {
  detail::check_inputs(model, mu, queries, options);
  if (options.normalization == Normalization::sinkhorn) {
    return detail::sinkhorn_head_fields(model, mu, queries, options);
  }
  return detail::streaming_head_fields(model, mu, queries, options);
}

template <class Scalar>
Matrix<Scalar> attention_field(const Model<Scalar>& model, const Measure<Scalar>& mu,
                               const MatrixRef<Scalar>& queries, const AttendOptions& options) {
  const Matrix<Scalar> heads = head_fields(model, mu, queries, options);
  Matrix<Scalar> out = detail::project<Scalar>(heads, model.w_o, model.b_o);
  if (options.residual) out += queries;
  return out;
}

template <class Scalar>
Matrix<Scalar> attention_kernel(const Model<Scalar>& model, const Measure<Scalar>& mu,
                                const MatrixRef<Scalar>& queries, Index head,
                                const AttendOptions& options) {
  detail::check_inputs(model, mu, queries, options);
  if (head < 0 || head >= model.num_heads) throw invalid_argument("head: index out of range");
  if (options.normalization == Normalization::sinkhorn) {
    return detail::sinkhorn_kernel(model, mu, queries, head, options);
  }
  return detail::dense_kernel(model, mu, queries, head, options);
}

template <class Scalar>
Measure<Scalar> self_attention(const Model<Scalar>& model, const Measure<Scalar>& mu,
                               const AttendOptions& options) {
  return mu.push_forward(attention_field(model, mu, mu.atoms(), options));
}

template <class Scalar>
Measure<Scalar> cross_attention(const Model<Scalar>& model, const Measure<Scalar>& nu,
                                const Measure<Scalar>& mu, const AttendOptions& options) {
  if (options.normalization == Normalization::sinkhorn) {
    throw invalid_argument("normalization: sinkhorn attention is defined for self-attention only");
  }
  return nu.push_forward(attention_field(model, mu, nu.atoms(), options));
}

#define MEASATTN_INSTANTIATE(S)                                                                 \
  template Matrix<S> head_fields(const Model<S>&, const Measure<S>&, const MatrixRef<S>&,       \
                                 const AttendOptions&);                                         \
  template Matrix<S> attention_field(const Model<S>&, const Measure<S>&, const MatrixRef<S>&,   \
                                     const AttendOptions&);                                     \
  template Matrix<S> attention_kernel(const Model<S>&, const Measure<S>&, const MatrixRef<S>&,  \
                                      Index, const AttendOptions&);                             \
  template Measure<S> self_attention(const Model<S>&, const Measure<S>&, const AttendOptions&); \
  template Measure<S> cross_attention(const Model<S>&, const Measure<S>&, const Measure<S>&,    \
                                      const AttendOptions&);                                    \
  template void detail::check_inputs(const Model<S>&, const Measure<S>&, const MatrixRef<S>&,   \
                                     const AttendOptions&);                                     \
  template detail::KeySet<S> detail::positive_keys(const Measure<S>&);                          \
  template Matrix<S> detail::project(const MatrixRef<S>&, const Matrix<S>&, const Vector<S>&);

MEASATTN_INSTANTIATE(float)
MEASATTN_INSTANTIATE(double)
#undef MEASATTN_INSTANTIATE

}  // namespace measattn
