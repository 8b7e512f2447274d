// Doubly-stochastic ("Sinkhorn") attention (docs/theory.md#maxent; Sander, Ablin,
// Blondel, Peyré, Sinkformers, AISTATS 2022), streamed in the log domain.
//
// Over the support S of mu (atoms of positive weight w, log-weights lw), the
// coupling of (mu, mu) maximizing <G, pi> - KL(pi || mu x mu) (entropic OT with
// cost -G and epsilon = 1) is pi_ij = w_i w_j exp(f_i + G_ij + g_j); its row
// conditionals K_ij = w_j exp(f_i + G_ij + g_j) are the attention kernel. The
// potentials are found by alternating half-steps
//   f_i = -log sum_{j in S} exp(G_ij + lw_j + g_j)     (rows sum to one)
//   g_j = -log sum_{i in S} exp(G_ij + lw_i + f_i)     (sum_i w_i K_ij = w_j)
// starting from g = 0, so that iteration 0 is exactly softmax attention and
// every further iteration is one column half-step followed by one row
// half-step (the kernel stays row-stochastic). Each half-step is one pass of
// online log-sum-exp over tiles of G recomputed from the projections: memory
// is O(n k) per head, never O(n^2); time O(n^2 k) per half-step.
//
// Atoms of zero weight: as keys they get probability 0; as queries their row
// is w_j exp(f_i + G_ij + g_j) with the same column potential g (the natural
// extension of the kernel to any query), which is the softmax row when there
// are no iterations.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "attention/internal.hpp"
#include "attention/logit_tiles.hpp"
#include "common/parallel.hpp"
#include "measattn/attention.hpp"
#include "measattn/error.hpp"
#include "measattn/interrupt.hpp"

namespace measattn {

void SinkhornAttentionOptions::validate() const {
  if (iterations < 0) throw invalid_argument("sinkhorn iterations: must be >= 0");
  if (!(tolerance >= 0) || !std::isfinite(tolerance)) {
    throw invalid_argument("sinkhorn tolerance: must be finite and >= 0");
  }
  if (block < 0) throw invalid_argument("sinkhorn block: must be >= 0");
}

namespace detail {

namespace {

constexpr Index kDefaultBlock = 256;

/// One streamed pass of online log-sum-exp over the rows of L + bias (column
/// blocks in order, row blocks in parallel; each row is reduced in a fixed
/// order whatever the thread). Without `values`: out_i = log sum_j exp(L_ij +
/// bias_j) in column 0 of the result. With `values` (m x k): the rows of
/// softmax_j(L_ij + bias_j) applied to them (n x k).
template <class Scalar>
Matrix<Scalar> row_softmax_pass(const LogitTiles<Scalar>& logits, const Vector<Scalar>& bias,
                                const Matrix<Scalar>* values, Index block) {
  constexpr Scalar kNegInf = -std::numeric_limits<Scalar>::infinity();
  const Index n = logits.rows();
  const Index m = logits.cols();
  const Index k = values ? values->cols() : 1;
  const Index row_blocks = (n + block - 1) / block;
  Matrix<Scalar> out(n, k);
  RegionGuard guard;
#pragma omp parallel if (row_blocks > 1)
  {
    Matrix<Scalar> t, acc;
    Vector<Scalar> mx, sum;
    guard.run([&] {
      t.resize(block, block);
      if (values) acc.resize(block, k);
      mx.resize(block);
      sum.resize(block);
    });
#pragma omp for schedule(dynamic, 1)
    for (Index rb = 0; rb < row_blocks; ++rb) {
      guard.run([&] {
        const Index r0 = rb * block;
        const Index nr = std::min(block, n - r0);
        mx.head(nr).setConstant(kNegInf);
        sum.head(nr).setZero();
        if (values) acc.topRows(nr).setZero();
        for (Index c0 = 0; c0 < m; c0 += block) {
          const Index nc = std::min(block, m - c0);
          logits.tile(r0, nr, c0, nc, t);
          auto tb = t.topLeftCorner(nr, nc);
          tb.rowwise() += bias.segment(c0, nc).transpose();
          for (Index r = 0; r < nr; ++r) {
            const Scalar alpha = online_lse_update(tb.row(r), mx[r], sum[r]);
            if (!values) continue;
            acc.row(r) *= alpha;
            tb.row(r) = (tb.row(r).array() - mx[r]).exp().matrix();
          }
          if (values) acc.topRows(nr).noalias() += tb * values->middleRows(c0, nc);
        }
        for (Index r = 0; r < nr; ++r) {
          if (values)
            out.row(r0 + r) = acc.row(r) / sum[r];
          else
            out(r0 + r, 0) = mx[r] + std::log(sum[r]);
        }
      });
    }
  }
  guard.finish();
  return out;
}

/// out_i = log sum_j exp(L_ij + bias_j) for every row of L, streamed.
template <class Scalar>
Vector<Scalar> row_logsumexp(const LogitTiles<Scalar>& logits, const Vector<Scalar>& bias,
                             Index block) {
  return row_softmax_pass<Scalar>(logits, bias, nullptr, block).col(0);
}

/// Rows of softmax_j(L_ij + bias_j) applied to `values` (m x k), streamed.
template <class Scalar>
Matrix<Scalar> row_softmax_times(const LogitTiles<Scalar>& logits, const Vector<Scalar>& bias,
                                 const Matrix<Scalar>& values, Index block) {
  return row_softmax_pass<Scalar>(logits, bias, &values, block);
}

template <class Scalar>
Vector<Scalar> gather(const Vector<Scalar>& v, const std::vector<Index>& index) {
  Vector<Scalar> out(static_cast<Index>(index.size()));
  for (Index t = 0; t < out.size(); ++t) out[t] = v[index[static_cast<size_t>(t)]];
  return out;
}

template <class Scalar>
Matrix<Scalar> gather_rows(const Matrix<Scalar>& x, const std::vector<Index>& index) {
  Matrix<Scalar> out(static_cast<Index>(index.size()), x.cols());
  for (Index t = 0; t < out.rows(); ++t) out.row(t) = x.row(index[static_cast<size_t>(t)]);
  return out;
}

/// Everything a streamed Sinkhorn solve of head h needs and produces.
template <class Scalar>
struct SinkhornState {
  KeySet<Scalar> keys;         // the support S: atoms, log-weights, indices
  LogitTiles<Scalar> rows;     // n x |S|: G(x_i, x_j), i all atoms, j in S
  LogitTiles<Scalar> columns;  // n x |S|: G(x_i, x_j) transposed: row j all atoms, column i in S
  Vector<Scalar> f, g;         // potentials over all n atoms
  Vector<Scalar> g_support;    // g restricted to S
  Scalar column_error = 0;
  int iterations = 0;
  bool converged = false;
};

template <class Scalar>
SinkhornState<Scalar> make_state(const Model<Scalar>& model, const Measure<Scalar>& mu, Index h) {
  const Index k = model.head_dim();
  KeySet<Scalar> keys = positive_keys(mu);
  Matrix<Scalar> q_all = project_head<Scalar>(mu.atoms(), model.w_q, model.b_q, h, k);
  Matrix<Scalar> k_all = project_head<Scalar>(mu.atoms(), model.w_k, model.b_k, h, k);
  Matrix<Scalar> q_support = gather_rows(q_all, keys.index);
  Matrix<Scalar> k_support = gather_rows(k_all, keys.index);
  return SinkhornState<Scalar>{
      std::move(keys),
      LogitTiles<Scalar>(model, std::move(q_all), std::move(k_support), false),
      LogitTiles<Scalar>(model, std::move(k_all), std::move(q_support), true),
      {},
      {},
      {},
      0,
      0,
      false};
}

/// Runs the scaling. With `tolerance` > 0 it stops once the column error of
/// the current (row-stochastic) kernel is <= tolerance; with `want_error` the
/// error of the final kernel is computed (one extra column pass when needed).
template <class Scalar>
void solve(SinkhornState<Scalar>& s, int iterations, double tolerance, bool want_error,
           Index block) {
  const Vector<Scalar>& lw = s.keys.log_weights;
  const Index n = s.rows.rows();
  s.g = Vector<Scalar>::Zero(n);
  s.g_support = Vector<Scalar>::Zero(lw.size());
  s.f = -row_logsumexp(s.rows, lw, block);  // iteration 0: softmax
  auto column_error = [&](const Vector<Scalar>& g_old, const Vector<Scalar>& g_new) {
    // sum_j w_j |exp(g_old_j - g_new_j) - 1|: the column marginal of the kernel
    // with potential g_old is w_j exp(g_old_j - g_new_j).
    Scalar err = 0;
    for (Index j = 0; j < lw.size(); ++j) {
      err += std::exp(lw[j]) * std::abs(std::expm1(g_old[j] - g_new[j]));
    }
    return err;
  };
  bool error_known = false;
  for (int it = 0; it < iterations || (want_error && !error_known); ++it) {
    measattn::detail::check_interrupt();  // Ctrl-C from Python (no-op without a handler)
    const Vector<Scalar> f_support = gather(s.f, s.keys.index);
    Vector<Scalar> g_new = -row_logsumexp(s.columns, Vector<Scalar>(lw + f_support), block);
    Vector<Scalar> g_new_support = gather(g_new, s.keys.index);
    if (want_error || tolerance > 0) {
      s.column_error = column_error(s.g_support, g_new_support);
      error_known = true;
      if (tolerance > 0 && s.column_error <= tolerance) {
        s.converged = true;
        return;
      }
    }
    if (it >= iterations) return;  // only the error of the final kernel was wanted
    s.g = std::move(g_new);
    s.g_support = std::move(g_new_support);
    s.f = -row_logsumexp(s.rows, Vector<Scalar>(lw + s.g_support), block);
    s.iterations = it + 1;
    error_known = false;
  }
}

template <class Scalar>
void check_self_attention(const Measure<Scalar>& mu, const MatrixRef<Scalar>& queries,
                          const AttendOptions& options) {
  if (options.causal) {
    throw invalid_argument("normalization: sinkhorn attention does not support causal masking");
  }
  if (queries.rows() != mu.size() || queries != mu.atoms()) {
    throw invalid_argument("normalization: sinkhorn attention is defined for self-attention only");
  }
}

}  // namespace

template <class Scalar>
Matrix<Scalar> sinkhorn_kernel(const Model<Scalar>& model, const Measure<Scalar>& mu,
                               const MatrixRef<Scalar>& queries, Index head,
                               const AttendOptions& options) {
  check_self_attention(mu, queries, options);
  if (options.sinkhorn_iterations == 0) {
    AttendOptions softmax = options;
    softmax.normalization = Normalization::softmax;
    return dense_kernel(model, mu, queries, head, softmax);
  }
  SinkhornState<Scalar> s = make_state(model, mu, head);
  solve(s, options.sinkhorn_iterations, 0.0, false, kDefaultBlock);
  // Dense kernel: each row normalized directly (the same as using f_i).
  const Index n = mu.size();
  const Index m = s.rows.cols();
  Matrix<Scalar> t(n, m);
  s.rows.tile(0, n, 0, m, t);
  t.rowwise() += (s.keys.log_weights + s.g_support).transpose();
  Matrix<Scalar> kernel = Matrix<Scalar>::Zero(n, n);
  for (Index i = 0; i < n; ++i) {
    const Scalar mx = t.row(i).maxCoeff();
    t.row(i) = (t.row(i).array() - mx).exp().matrix();
    t.row(i) /= t.row(i).sum();
    for (Index b = 0; b < m; ++b) kernel(i, s.keys.index[static_cast<size_t>(b)]) = t(i, b);
  }
  return kernel;
}

template <class Scalar>
Matrix<Scalar> sinkhorn_head_fields(const Model<Scalar>& model, const Measure<Scalar>& mu,
                                    const MatrixRef<Scalar>& queries,
                                    const AttendOptions& options) {
  check_self_attention(mu, queries, options);
  if (options.sinkhorn_iterations == 0) {
    // Zero iterations is softmax attention: the same streaming code, bit for bit.
    AttendOptions softmax = options;
    softmax.normalization = Normalization::softmax;
    return head_fields(model, mu, queries, softmax);
  }
  const Index k = model.head_dim();
  const Index block = options.key_block > 0 ? options.key_block : kDefaultBlock;
  Matrix<Scalar> out(queries.rows(), model.embed_dim());
  for (Index h = 0; h < model.num_heads; ++h) {
    SinkhornState<Scalar> s = make_state(model, mu, h);
    solve(s, options.sinkhorn_iterations, 0.0, false, block);
    const Matrix<Scalar> v = project_head<Scalar>(s.keys.atoms, model.w_v, model.b_v, h, k);
    out.middleCols(h * k, k) =
        row_softmax_times(s.rows, Vector<Scalar>(s.keys.log_weights + s.g_support), v, block);
  }
  return out;
}

}  // namespace detail

template <class Scalar>
SinkhornAttentionResult<Scalar> sinkhorn_attention(const Model<Scalar>& model,
                                                   const Measure<Scalar>& mu, Index head,
                                                   const SinkhornAttentionOptions& options) {
  options.validate();
  AttendOptions attend;
  detail::check_inputs(model, mu, mu.atoms(), attend);
  if (head < 0 || head >= model.num_heads) throw invalid_argument("head: index out of range");
  detail::SinkhornState<Scalar> s = detail::make_state(model, mu, head);
  const Index block = options.block > 0 ? options.block : detail::kDefaultBlock;
  detail::solve(s, options.iterations, options.tolerance, true, block);
  if (!s.f.allFinite() || !s.g.allFinite()) {
    const Matrix<Scalar> nan =
        Matrix<Scalar>::Constant(1, 1, std::numeric_limits<Scalar>::quiet_NaN());
    detail::check_finite_result(model, mu, mu.atoms(), nan);
  }
  SinkhornAttentionResult<Scalar> r;
  r.f = std::move(s.f);
  r.g = std::move(s.g);
  r.column_error = s.column_error;
  r.iterations = s.iterations;
  r.status = s.converged ? Status::converged : Status::iteration_limit;
  r.message = s.converged
                  ? "column marginal error " + std::to_string(s.column_error) +
                        " <= tolerance after " + std::to_string(s.iterations) + " iterations"
                  : "ran " + std::to_string(s.iterations) + " iterations; column marginal error " +
                        std::to_string(s.column_error);
  return r;
}

#define MEASATTN_INSTANTIATE(S)                                                                 \
  template Matrix<S> detail::sinkhorn_kernel(const Model<S>&, const Measure<S>&,                \
                                             const MatrixRef<S>&, Index, const AttendOptions&); \
  template Matrix<S> detail::sinkhorn_head_fields(const Model<S>&, const Measure<S>&,           \
                                                  const MatrixRef<S>&, const AttendOptions&);   \
  template SinkhornAttentionResult<S> sinkhorn_attention(const Model<S>&, const Measure<S>&,    \
                                                         Index, const SinkhornAttentionOptions&);

MEASATTN_INSTANTIATE(float)
MEASATTN_INSTANTIATE(double)
#undef MEASATTN_INSTANTIATE

}  // namespace measattn
