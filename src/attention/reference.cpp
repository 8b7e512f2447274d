// Dense (materialized) attention: the Transformer formula computed directly.
// Used as an independent reference for the streaming kernel and for inspecting
// kernels on small inputs.
#include <cmath>
#include <limits>

#include "attention/internal.hpp"
#include "attention/potential.hpp"
#include "measattn/attention.hpp"
#include "measattn/error.hpp"
#include "measattn/interrupt.hpp"

namespace measattn {

namespace detail {

template <class Scalar>
Matrix<Scalar> dense_logits(const Model<Scalar>& model, const Measure<Scalar>& mu,
                            const MatrixRef<Scalar>& queries, Index h) {
  const Head<Scalar> head = model.head(h);
  const Matrix<Scalar> q = (queries * head.q.transpose()).rowwise() + head.b_q.transpose();
  const Matrix<Scalar> kk = (mu.atoms() * head.k.transpose()).rowwise() + head.b_k.transpose();
  Matrix<Scalar> s(q.rows(), kk.rows());
  with_potential(model.potential, [&](auto pot) {
    decltype(pot)::template dense<Scalar>(q, kk, head.tau, &model.custom_potential, s);
  });
  return s;
}

template <class Scalar>
Matrix<Scalar> dense_kernel(const Model<Scalar>& model, const Measure<Scalar>& mu,
                            const MatrixRef<Scalar>& queries, Index h,
                            const AttendOptions& options) {
  constexpr Scalar kNegInf = -std::numeric_limits<Scalar>::infinity();
  Matrix<Scalar> s = dense_logits(model, mu, queries, h);
  for (Index i = 0; i < s.rows(); ++i) {
    check_interrupt();  // Ctrl-C, once per row (rate-limited, see interrupt.hpp)
    for (Index j = 0; j < s.cols(); ++j) {
      const bool visible = mu.weight(j) > 0 && (!options.causal || j <= i);
      s(i, j) = visible ? s(i, j) + std::log(mu.weight(j)) : kNegInf;
    }
    const Scalar mx = s.row(i).maxCoeff();
    if (mx == kNegInf) {
      throw invalid_argument("weights: query " + std::to_string(i) +
                             " sees only tokens of zero weight");
    }
    // Eigen's vectorized exp maps -inf to a denormal, not to 0: invisible
    // entries are zeroed explicitly so that masked keys get exactly zero mass.
    for (Index j = 0; j < s.cols(); ++j) s(i, j) = s(i, j) == kNegInf ? 0 : std::exp(s(i, j) - mx);
    s.row(i) /= s.row(i).sum();
  }
  return s;
}

}  // namespace detail

template <class Scalar>
Matrix<Scalar> transformer_attention(const Model<Scalar>& model, const Measure<Scalar>& mu,
                                     const MatrixRef<Scalar>& queries,
                                     const AttendOptions& options) {
  detail::check_inputs(model, mu, queries, options);
  const Index k = model.head_dim();
  Matrix<Scalar> concat(queries.rows(), model.embed_dim());
  for (Index h = 0; h < model.num_heads; ++h) {
    const Head<Scalar> head = model.head(h);
    const Matrix<Scalar> v = (mu.atoms() * head.v.transpose()).rowwise() + head.b_v.transpose();
    const Matrix<Scalar> p = options.normalization == Normalization::sinkhorn
                                 ? detail::sinkhorn_kernel(model, mu, queries, h, options)
                                 : detail::dense_kernel(model, mu, queries, h, options);
    concat.middleCols(h * k, k) = p * v;
  }
  Matrix<Scalar> out = concat * model.w_o.transpose();
  if (model.b_o.size()) out.rowwise() += model.b_o.transpose();
  if (options.residual) out += queries;
  return out;
}

template <class Scalar>
Matrix<Scalar> attention_logits(const Model<Scalar>& model, const Measure<Scalar>& mu,
                                const MatrixRef<Scalar>& queries, Index head) {
  detail::check_inputs(model, mu, queries, AttendOptions{});
  if (head < 0 || head >= model.num_heads) {
    throw invalid_argument("head: " + std::to_string(head) + " is not in [0, " +
                           std::to_string(model.num_heads) + ")");
  }
  return detail::dense_logits(model, mu, queries, head);
}

#define MEASATTN_INSTANTIATE(S)                                                                    \
  template Matrix<S> detail::dense_logits(const Model<S>&, const Measure<S>&, const MatrixRef<S>&, \
                                          Index);                                                  \
  template Matrix<S> detail::dense_kernel(const Model<S>&, const Measure<S>&, const MatrixRef<S>&, \
                                          Index, const AttendOptions&);                            \
  template Matrix<S> attention_logits(const Model<S>&, const Measure<S>&, const MatrixRef<S>&,     \
                                      Index);                                                      \
  template Matrix<S> transformer_attention(const Model<S>&, const Measure<S>&,                     \
                                           const MatrixRef<S>&, const AttendOptions&);

MEASATTN_INSTANTIATE(float)
MEASATTN_INSTANTIATE(double)
#undef MEASATTN_INSTANTIATE

}  // namespace measattn
