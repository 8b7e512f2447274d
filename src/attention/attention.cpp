// Streaming multi-head attention on measures (docs/theory.md#attention).
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
#include <stdexcept>
#include <string>
#include <vector>

#include "attention/internal.hpp"
#include "attention/potential.hpp"
#include "attention/tiles.hpp"
#include "common/parallel.hpp"
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
  check_options(model, options);
}

template <class Scalar>
void check_options(const Model<Scalar>& model, const AttendOptions& options) {
  if (options.residual && model.out_dim() != model.query_dim()) {
    throw invalid_argument("residual: the output dimension " + std::to_string(model.out_dim()) +
                           " differs from the query dimension " +
                           std::to_string(model.query_dim()));
  }
  if (options.query_block < 0) throw invalid_argument("query_block: must be >= 0");
  if (options.key_block < 0) throw invalid_argument("key_block: must be >= 0");
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
  RegionGuard guard;
#pragma omp parallel for schedule(static)
  for (Index blk = 0; blk < blocks; ++blk) {
    guard.run([&] {
      const Index r0 = blk * kBlock;
      const Index r = std::min(kBlock, n - r0);
      out.middleRows(r0, r).noalias() = x.middleRows(r0, r) * w.transpose();
      if (b.size()) out.middleRows(r0, r).rowwise() += b.transpose();
    });
  }
  guard.finish();
  return out;
}

// ---- The streaming kernel ----------------------------------------------------
//
// Layout, per head (packed once per head, reused by every query block):
//   Q   projected per query block (bq x k), normalized when the potential's split
//       says so (cosine) and multiplied by its query scale (1/tau dot, 2/tau l2);
//   Kt  one panel per key block: k x bk, column j = key j0 + j (zero-padded,
//       normalized for cosine);
//   V   m x k_pad row-major (columns past k are zero);
//   bias_j = log w_j - d(kappa(x_j)), d the potential's key shift (|kappa|^2 / tau
//       for l2, else 0); its query term (-|q(y_i)|^2 / tau for l2) is constant
//       along a row and drops out of the softmax.
// Per query block (rows padded to a multiple of 8) and key block:
//   S = Q_blk Kt_blk + bias            register-tiled, 8 rows x 3 packets
//   row max over the visible prefix, rescale l and acc only if the max grew,
//   P = exp(S - max) in place (Eigen's vectorized exp), l += row sums,
//   acc += P V_blk                     register-tiled, R rows x KV packets.
// Every row is computed by the same operations whatever its query block and
// the thread count: results depend on the key block size only (last bits).
// Masked (causal) keys and padding get probability exactly 0.

/// Online softmax step for one row of S (length `width`, a multiple of L):
/// entries [0, visible) are logits, the rest are ignored and set to 0. Updates
/// the running max and sum, rescales the accumulator row if the max grew, and
/// overwrites the row with exp(s - max).
template <class Scalar>
void softmax_row(Scalar* s, Index width, Index visible, Scalar& row_max, Scalar& row_sum,
                 Scalar* acc, Index k_pad) {
  using namespace Eigen::internal;
  using Packet = typename Simd<Scalar>::Packet;
  constexpr int L = Simd<Scalar>::L;
  if (visible <= 0) {
    std::fill(s, s + width, Scalar(0));
    return;
  }
  const Index full = visible / L * L;
  Scalar mx = -std::numeric_limits<Scalar>::infinity();
  if (full > 0) {
    Packet pm = ploadu<Packet>(s);
    for (Index c = L; c < full; c += L) pm = pmax(pm, ploadu<Packet>(s + c));
    mx = predux_max(pm);
  }
  for (Index c = full; c < visible; ++c) mx = std::max(mx, s[c]);
  if (mx > row_max) {
    // Rescale the previous sum and accumulator by e^{old - new} (0 on the first block).
    const Scalar alpha = std::exp(row_max - mx);
    row_max = mx;
    row_sum *= alpha;
    const Packet pa = pset1<Packet>(alpha);
    for (Index c = 0; c < k_pad; c += L) pstoreu(acc + c, pmul(pa, ploadu<Packet>(acc + c)));
  }
  const Packet shift = pset1<Packet>(row_max);
  Packet sum = pset1<Packet>(Scalar(0));
  for (Index c = 0; c < full; c += L) {
    const Packet e = pexp(psub(ploadu<Packet>(s + c), shift));
    pstoreu(s + c, e);
    sum = padd(sum, e);
  }
  Index c = full;
  if (c < visible) {
    // The last, partial packet: exp, then exact zeros past `visible`.
    Scalar tail[L];
    pstoreu(tail, pexp(psub(ploadu<Packet>(s + c), shift)));
    for (Index t = visible - c; t < L; ++t) tail[t] = 0;
    const Packet e = ploadu<Packet>(tail);
    pstoreu(s + c, e);
    sum = padd(sum, e);
    c += L;
  }
  std::fill(s + c, s + width, Scalar(0));
  row_sum += predux(sum);
}

/// y_r = (x_r W^T + b) * scale for `rows` rows, with wt = W^T (in x out, row-major):
/// every entry summed in the order t = 0 .. in-1 whatever the rows, so results do
/// not depend on how rows are grouped into blocks (or on the thread count).
template <class Scalar>
void project_rows(const Scalar* x, Index x_stride, Index rows, const Scalar* __restrict wt,
                  Index in, Index out, const Scalar* b, Scalar scale, Scalar* __restrict y,
                  Index y_stride) {
  for (Index r = 0; r < rows; ++r) {
    Scalar* __restrict yr = y + r * y_stride;
    const Scalar* xr = x + r * x_stride;
    for (Index c = 0; c < out; ++c) yr[c] = 0;
    for (Index t = 0; t < in; ++t) {
      const Scalar xv = xr[t];
      const Scalar* __restrict wr = wt + t * out;
      for (Index c = 0; c < out; ++c) yr[c] += xv * wr[c];
    }
    if (b != nullptr)
      for (Index c = 0; c < out; ++c) yr[c] += b[c];
    if (scale != Scalar(1))
      for (Index c = 0; c < out; ++c) yr[c] *= scale;
  }
}

/// The head fields (n x E) and, when `project_out`, the attention field
/// W_O [fields] + b_O (+ the query when residual) computed in the same pass: the
/// output rows of a query block are projected as soon as its last head is done.
/// The potential's split (potential.hpp) sets the query scale, the
/// normalization of query and key rows and the per-key logit offsets; it is
/// read once into run-time values, so that the hot loop is compiled once per
/// scalar type (one instantiation per potential measured 10 % slower at k = 16
/// in float, bench/attention_bench, 4096 tokens).
template <class Scalar>
Matrix<Scalar> streaming_attention(const Model<Scalar>& model, const StreamKeys<Scalar>& keys,
                                   const MatrixRef<Scalar>& queries, const AttendOptions& options,
                                   bool project_out, StreamState<Scalar>* state,
                                   Index query_offset) {
  constexpr Index L = Simd<Scalar>::L;
  const Index n = queries.rows();
  const Index heads = model.num_heads;
  const Index k = model.head_dim();
  const Index e = model.embed_dim();
  const Scalar tau = model.tau();

  const MatrixRef<Scalar>& key_atoms = keys.atoms;
  const Index m = key_atoms.rows();
  if (m == 0) throw invalid_argument("weights: every token has weight zero");
  const Scalar* const log_w = keys.log_weights;
  const Index* const positions = keys.index;
  auto key_index = [positions](Index j) { return positions == nullptr ? j : positions[j]; };
  if (options.causal && state == nullptr && key_index(0) > 0) {
    // Query i sees the keys at positions <= i; the first key of positive
    // weight must therefore come no later than the first query.
    throw invalid_argument("weights: with causal masking, query 0 sees only tokens of zero weight");
  }

  // Block sizes: results depend on bk only (rounded to whole packets); bq only
  // sets the unit of parallel work.
  const Index bq = std::min(round_up(options.query_block > 0 ? options.query_block : 96, kTileRows),
                            round_up(n, kTileRows));
  const Index chunk = kLogitPackets * L;
  const Index bk = std::min(round_up(options.key_block > 0 ? options.key_block : 256, chunk),
                            round_up(m, chunk));
  const Index k_pad = round_up(k, L);
  const Index key_blocks = (m + bk - 1) / bk;
  const Index query_blocks = (n + bq - 1) / bq;
  // Carried state: rows start from it, and end in it unless this call finishes.
  const bool resume = state != nullptr;
  const bool finish = !resume || state->finalize;
  if (resume && (state->rows != n || state->k_pad != round_up(k, L))) {
    throw std::logic_error("streaming_attention: the carried state does not fit the queries");
  }
  struct Split {
    Scalar q_scale;
    bool tiled, normalized;
  };
  const Split split = with_potential(model.potential, [&](auto pot) {
    using P = decltype(pot);
    return Split{P::template query_scale<Scalar>(tau), P::kTiled, P::kNormalized};
  });
  const Scalar q_scale = split.q_scale;

  // Work arrays, allocated once per call and reused by every head.
  Matrix<Scalar> kt(key_blocks * k, bk);                                 // key panels
  Matrix<Scalar> vh(key_blocks * bk, k_pad);                             // values, zero-padded
  Vector<Scalar> bias(key_blocks * bk);                                  // per-key logit offsets
  Matrix<Scalar> kh(split.tiled ? 0 : m, k);                             // custom: keys, row-major
  Matrix<Scalar> out(finish ? n : 0, e);                                 // head fields
  Matrix<Scalar> field(project_out && finish ? n : 0, model.out_dim());  // W_O out + b_O
  const Matrix<Scalar> wo_t = model.w_o.transpose();                     // E x d_out
  const Index d_in = queries.cols();

  // A single block of queries and keys is not worth waking the thread team
  // (tens of microseconds, and much more on a loaded machine).
  // Exceptions (allocation, a custom potential) and interrupts: every unit of
  // work (a thread's setup, a key block, a query block) runs under the guard;
  // Ctrl-C is polled per query block.
  RegionGuard guard;
#pragma omp parallel if (query_blocks > 1 || key_blocks > 1)
  {
    std::vector<Scalar> s_buf, acc_buf, max_buf, sum_buf, q_buf;
    Matrix<Scalar> panel;  // one key block, before packing
    guard.run([&] {
      s_buf.resize(static_cast<size_t>(bq * bk));
      acc_buf.resize(static_cast<size_t>(bq * k_pad));
      max_buf.resize(static_cast<size_t>(bq));
      sum_buf.resize(static_cast<size_t>(bq));
      panel.resize(k, bk);
      q_buf.resize(static_cast<size_t>(bq * k));  // the block's queries
    });
    Scalar* s = s_buf.data();
    Scalar* acc = acc_buf.data();
    Scalar* q = q_buf.data();

    for (Index h = 0; h < heads; ++h) {
      Matrix<Scalar> wq_t, wk, wv;  // wq_t: d_q x k
      Vector<Scalar> bq_h, bk_h, bv_h;
      guard.run([&] {
        wq_t = model.w_q.middleRows(h * k, k).transpose();
        wk = model.w_k.middleRows(h * k, k);
        wv = model.w_v.middleRows(h * k, k);
        auto bias_of = [&](const Vector<Scalar>& b) -> Vector<Scalar> {
          return b.size() ? Vector<Scalar>(b.segment(h * k, k)) : Vector<Scalar>::Zero(k);
        };
        bq_h = bias_of(model.b_q);
        bk_h = bias_of(model.b_k);
        bv_h = bias_of(model.b_v);
      });

#pragma omp for schedule(static)
      for (Index b = 0; b < key_blocks; ++b) {
        guard.run([&] {
          const Index j0 = b * bk;
          const Index cols = std::min(bk, m - j0);
          panel.leftCols(cols).noalias() = wk * key_atoms.middleRows(j0, cols).transpose();
          panel.leftCols(cols).colwise() += bk_h;
          if (split.normalized) {
            for (Index j = 0; j < cols; ++j)
              normalize_scaled<Scalar>(panel.data() + j, k, panel.cols(), Scalar(1));
          }
          if (cols < bk) panel.rightCols(bk - cols).setZero();
          Scalar* dst = kt.data() + b * k * bk;
          for (Index t = 0; t < bk / chunk; ++t)
            for (Index c = 0; c < k; ++c)
              for (Index jj = 0; jj < chunk; ++jj)
                dst[(t * k + c) * chunk + jj] = panel(c, t * chunk + jj);
          if (!split.tiled) kh.middleRows(j0, cols) = panel.leftCols(cols).transpose();
          auto vblk = vh.middleRows(j0, bk);
          vblk.topLeftCorner(cols, k).noalias() = key_atoms.middleRows(j0, cols) * wv.transpose();
          vblk.topLeftCorner(cols, k).rowwise() += bv_h.transpose();
          if (k_pad > k) vblk.rightCols(k_pad - k).setZero();
          if (cols < bk) vblk.bottomRows(bk - cols).setZero();
          with_potential(model.potential, [&](auto pot) {
            using P = decltype(pot);
            for (Index j = 0; j < bk; ++j) {
              Scalar bj = 0;
              if (j < cols) {
                bj = log_w[j0 + j];
                if constexpr (P::kKeyShift) bj -= P::template key_shift<Scalar>(panel.col(j), tau);
              }
              bias[j0 + j] = bj;
            }
          });
        });
      }

#pragma omp for schedule(dynamic, 1)
      for (Index qb = 0; qb < query_blocks; ++qb) {
        // The hot loop: the guard's proceed/capture written out instead of
        // guard.run's out-of-line unit, which kept the block's pointers in a
        // closure and cost 10 % at k = 16 (bench/attention_bench, 4096 tokens).
        if (!guard.proceed()) continue;
        try {
          const Index i0 = qb * bq;
          const Index rows_real = std::min(bq, n - i0);
          const Index rows = round_up(rows_real, kTileRows);
          const Index i_last = query_offset + i0 + rows_real - 1;
          Index key_end = m;
          if (options.causal) {
            // Keys are in increasing position order: the visible ones form a prefix.
            Index lo = 0, hi = m;
            while (lo < hi) {
              const Index mid = (lo + hi) / 2;
              if (key_index(mid) <= i_last)
                lo = mid + 1;
              else
                hi = mid;
            }
            key_end = lo;
          }
          std::fill(acc, acc + rows * k_pad, Scalar(0));
          std::fill(max_buf.begin(), max_buf.begin() + rows,
                    -std::numeric_limits<Scalar>::infinity());
          std::fill(sum_buf.begin(), sum_buf.begin() + rows, Scalar(0));
          const size_t row0 = static_cast<size_t>(h * n + i0);
          if (resume) {
            std::copy_n(state->max.begin() + row0, rows_real, max_buf.begin());
            std::copy_n(state->sum.begin() + row0, rows_real, sum_buf.begin());
            std::copy_n(state->acc.begin() + row0 * k_pad, rows_real * k_pad, acc);
          }
          project_rows<Scalar>(queries.data() + i0 * queries.outerStride(), queries.outerStride(),
                               rows_real, wq_t.data(), d_in, k, bq_h.data(),
                               split.normalized ? Scalar(1) : q_scale, q, k);
          if (split.normalized) {
            for (Index r = 0; r < rows_real; ++r)
              normalize_scaled<Scalar>(q + r * k, k, 1, q_scale);
          }
          std::fill(q + rows_real * k, q + rows * k, Scalar(0));
          for (Index j0 = 0; j0 < key_end; j0 += bk) {
            if (!guard.proceed()) break;  // stopping: this block's result is discarded
            const Index b = j0 / bk;
            const Index cols = std::min(bk, key_end - j0);
            const Index width = round_up(cols, L);
            if (!split.tiled) {
              for (Index r = 0; r < rows; ++r) {
                for (Index c = 0; c < cols; ++c) {
                  s[r * bk + c] = (r < rows_real ? model.custom_potential(
                                                       q + r * k, kh.data() + (j0 + c) * k, k)
                                                 : Scalar(0)) +
                                  bias[j0 + c];
                }
              }
            } else {
              logits_block<Scalar>(q, rows, k, kt.data() + b * k * bk, chunk, width / L,
                                   bias.data() + j0, s, bk);
            }
            for (Index r = 0; r < rows; ++r) {
              Index vis = cols;
              if (options.causal && key_index(j0 + cols - 1) > query_offset + i0 + r) {
                Index lo = 0, hi = cols;
                while (lo < hi) {
                  const Index mid = (lo + hi) / 2;
                  if (key_index(j0 + mid) <= query_offset + i0 + r)
                    lo = mid + 1;
                  else
                    hi = mid;
                }
                vis = lo;
              }
              softmax_row<Scalar>(s + r * bk, width, vis, max_buf[static_cast<size_t>(r)],
                                  sum_buf[static_cast<size_t>(r)], acc + r * k_pad, k_pad);
            }
            values_block<Scalar>(s, bk, rows, cols, vh.data() + j0 * k_pad, k_pad, acc);
          }
          if (guard.stopped()) continue;
          if (!finish) {
            std::copy_n(max_buf.begin(), rows_real, state->max.begin() + row0);
            std::copy_n(sum_buf.begin(), rows_real, state->sum.begin() + row0);
            std::copy_n(acc, rows_real * k_pad, state->acc.begin() + row0 * k_pad);
            continue;
          }
          for (Index r = 0; r < rows_real; ++r) {
            // The row sum is >= 1 (the key attaining the maximum contributes e^0).
            const Scalar l = sum_buf[static_cast<size_t>(r)];
            for (Index c = 0; c < k; ++c) out(i0 + r, h * k + c) = acc[r * k_pad + c] / l;
          }
          if (project_out && h == heads - 1) {
            // Every head of these rows is done (earlier heads finished before the
            // barrier that ended their loop).
            project_rows<Scalar>(out.data() + i0 * e, e, rows_real, wo_t.data(), e, model.out_dim(),
                                 model.b_o.size() ? model.b_o.data() : nullptr, Scalar(1),
                                 field.data() + i0 * field.cols(), field.cols());
            if (options.residual)
              field.middleRows(i0, rows_real) += queries.middleRows(i0, rows_real);
          }
        } catch (...) {
          guard.capture(std::current_exception());
        }
      }
    }
  }
  guard.finish();
  if (!finish) return Matrix<Scalar>();
  return project_out ? field : out;
}

template <class Scalar>
Matrix<Scalar> streaming_attention(const Model<Scalar>& model, const Measure<Scalar>& mu,
                                   const MatrixRef<Scalar>& queries, const AttendOptions& options,
                                   bool project_out) {
  // Keys: the atoms of positive weight (all of mu's atoms when none is zero,
  // without copying them).
  bool all_positive = true;
  for (Index j = 0; j < mu.size(); ++j) all_positive = all_positive && mu.weight(j) > 0;
  if (all_positive) {
    std::vector<Scalar> log_w(static_cast<size_t>(mu.size()));
    for (Index j = 0; j < mu.size(); ++j) log_w[static_cast<size_t>(j)] = std::log(mu.weight(j));
    return streaming_attention(model, StreamKeys<Scalar>{mu.atoms(), log_w.data(), nullptr},
                               queries, options, project_out);
  }
  const KeySet<Scalar> dropped = positive_keys(mu);
  return streaming_attention(
      model, StreamKeys<Scalar>{dropped.atoms, dropped.log_weights.data(), dropped.index.data()},
      queries, options, project_out);
}

template <class Scalar>
void check_finite_result(const Model<Scalar>& model, const MatrixRef<Scalar>& atoms,
                         const MatrixRef<Scalar>& queries, bool self, const Matrix<Scalar>& out) {
  if (out.allFinite()) return;
  // Finite inputs, non-finite result: say which projection overflowed (only on this
  // failure path, so it costs nothing otherwise).
  const char* type = std::is_same_v<Scalar, float> ? "float32" : "float64";
  auto finite = [](const MatrixRef<Scalar>& x, const Matrix<Scalar>& w, const Vector<Scalar>& b) {
    return project<Scalar>(x, w, b).allFinite();
  };
  std::string field = "tokens", cause;
  if (!finite(queries, model.w_q, model.b_q)) {
    field = self ? "tokens" : "queries";
    cause = "the query projections overflow ";
  } else if (!finite(atoms, model.w_k, model.b_k)) {
    cause = "the key projections overflow ";
  } else if (!finite(atoms, model.w_v, model.b_v)) {
    cause = "the value projections overflow ";
  } else {
    field = self ? "tokens" : "queries";
    cause = "the logits or the weighted sums overflow ";
  }
  throw invalid_argument(field + ": the attention output is not finite: " + cause + type +
                         " (inputs too large for " + type + ")");
}

template <class Scalar>
void check_finite_result(const Model<Scalar>& model, const Measure<Scalar>& mu,
                         const MatrixRef<Scalar>& queries, const Matrix<Scalar>& out) {
  if (out.allFinite()) return;
  const bool self = queries.data() == mu.atoms().data() && queries.rows() == mu.size();
  check_finite_result(model, MatrixRef<Scalar>(mu.atoms()), queries, self, out);
}

}  // namespace detail

template <class Scalar>
Matrix<Scalar> head_fields(const Model<Scalar>& model, const Measure<Scalar>& mu,
                           const MatrixRef<Scalar>& queries, const AttendOptions& options) {
  detail::check_inputs(model, mu, queries, options);
  Matrix<Scalar> out = options.normalization == Normalization::sinkhorn
                           ? detail::sinkhorn_head_fields(model, mu, queries, options)
                           : detail::streaming_attention(model, mu, queries, options, false);
  detail::check_finite_result(model, mu, queries, out);
  return out;
}

template <class Scalar>
Matrix<Scalar> attention_field(const Model<Scalar>& model, const Measure<Scalar>& mu,
                               const MatrixRef<Scalar>& queries, const AttendOptions& options) {
  if (options.normalization == Normalization::softmax) {
    detail::check_inputs(model, mu, queries, options);
    Matrix<Scalar> out = options.communicator.distributed()
                             ? detail::distributed_attention_field(model, mu, queries, options)
                             : detail::streaming_attention(model, mu, queries, options, true);
    detail::check_finite_result(model, mu, queries, out);
    return out;
  }
  if (options.communicator.distributed()) {
    throw invalid_argument(
        "normalization: distributed attention is softmax attention only (sinkhorn needs every "
        "token's column sums on every rank)");
  }
  const Matrix<Scalar> heads = head_fields(model, mu, queries, options);
  Matrix<Scalar> out = detail::project<Scalar>(heads, model.w_o, model.b_o);
  if (options.residual) out += queries;
  detail::check_finite_result(model, mu, queries, out);
  return out;
}

template <class Scalar>
Matrix<Scalar> attention_kernel(const Model<Scalar>& model, const Measure<Scalar>& mu,
                                const MatrixRef<Scalar>& queries, Index head,
                                const AttendOptions& options) {
  detail::check_inputs(model, mu, queries, options);
  if (head < 0 || head >= model.num_heads) throw invalid_argument("head: index out of range");
  Matrix<Scalar> out = options.normalization == Normalization::sinkhorn
                           ? detail::sinkhorn_kernel(model, mu, queries, head, options)
                           : detail::dense_kernel(model, mu, queries, head, options);
  detail::check_finite_result(model, mu, queries, out);
  return out;
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

#define MEASATTN_INSTANTIATE(S)                                                                   \
  template Matrix<S> head_fields(const Model<S>&, const Measure<S>&, const MatrixRef<S>&,         \
                                 const AttendOptions&);                                           \
  template Matrix<S> attention_field(const Model<S>&, const Measure<S>&, const MatrixRef<S>&,     \
                                     const AttendOptions&);                                       \
  template Matrix<S> attention_kernel(const Model<S>&, const Measure<S>&, const MatrixRef<S>&,    \
                                      Index, const AttendOptions&);                               \
  template Measure<S> self_attention(const Model<S>&, const Measure<S>&, const AttendOptions&);   \
  template Measure<S> cross_attention(const Model<S>&, const Measure<S>&, const Measure<S>&,      \
                                      const AttendOptions&);                                      \
  template void detail::check_inputs(const Model<S>&, const Measure<S>&, const MatrixRef<S>&,     \
                                     const AttendOptions&);                                       \
  template void detail::check_options(const Model<S>&, const AttendOptions&);                     \
  template detail::KeySet<S> detail::positive_keys(const Measure<S>&);                            \
  template void detail::check_finite_result(const Model<S>&, const Measure<S>&,                   \
                                            const MatrixRef<S>&, const Matrix<S>&);               \
  template void detail::check_finite_result(const Model<S>&, const MatrixRef<S>&,                 \
                                            const MatrixRef<S>&, bool, const Matrix<S>&);         \
  template Matrix<S> detail::streaming_attention(const Model<S>&, const detail::StreamKeys<S>&,   \
                                                 const MatrixRef<S>&, const AttendOptions&, bool, \
                                                 detail::StreamState<S>*, Index);                 \
  template Matrix<S> detail::project(const MatrixRef<S>&, const Matrix<S>&, const Vector<S>&);

MEASATTN_INSTANTIATE(float)
MEASATTN_INSTANTIATE(double)
#undef MEASATTN_INSTANTIATE

}  // namespace measattn
