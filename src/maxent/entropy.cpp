// Entropy diagnostics of a model (attention entropy, effective number of
// attended tokens, temperature curve), streamed with an online log-sum-exp
// that also carries t = sum e^{a - m} (a - m) and u = sum e^{a - m} G:
// with a_ij = beta G_ij + log w_j, H_i = log l - t / l and E_i[G] = u / l.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "attention/internal.hpp"
#include "common/parallel.hpp"
#include "maxent/logit_tiles.hpp"
#include "measattn/error.hpp"
#include "measattn/maxent.hpp"

namespace measattn {

void EntropyOptions::validate() const {
  for (double b : betas) {
    if (!std::isfinite(b)) throw invalid_argument("betas: every value must be finite");
  }
  if (query_block < 0 || key_block < 0) throw invalid_argument("block sizes: must be >= 0");
}

std::vector<double> default_temperature_grid() {
  std::vector<double> grid;
  for (int k = 16; k >= 0; --k) grid.push_back(-std::pow(10.0, -2.0 + 4.0 * k / 16.0));
  grid.push_back(0.0);
  for (int k = 0; k <= 16; ++k) grid.push_back(std::pow(10.0, -2.0 + 4.0 * k / 16.0));
  return grid;
}

template <class Scalar>
EntropyResult<Scalar> attention_entropy(const Model<Scalar>& model, const Measure<Scalar>& mu,
                                        const EntropyOptions& options) {
  options.validate();
  AttendOptions attend;
  attend.causal = options.causal;
  detail::check_inputs(model, mu, mu.atoms(), attend);
  const detail::KeySet<Scalar> keys = detail::positive_keys(mu);
  if (options.causal && keys.index.front() > 0) {
    throw invalid_argument("weights: with causal masking, query 0 sees only tokens of zero weight");
  }
  EntropyResult<Scalar> result;
  result.betas = options.betas.empty() ? default_temperature_grid() : options.betas;
  // Slot 0 is beta = 1 (the model's own kernel); slots 1.. the grid.
  std::vector<Scalar> betas{Scalar(1)};
  for (double b : result.betas) betas.push_back(static_cast<Scalar>(b));
  const Index nb = static_cast<Index>(betas.size());
  const Index n = mu.size();
  const Index m = keys.atoms.rows();
  const Index k = model.head_dim();
  const Index bq = options.query_block > 0 ? options.query_block : 64;
  const Index bk = options.key_block > 0 ? options.key_block : 256;
  const Index query_blocks = (n + bq - 1) / bq;
  constexpr Scalar kNegInf = -std::numeric_limits<Scalar>::infinity();

  for (Index h = 0; h < model.num_heads; ++h) {
    const detail::LogitTiles<Scalar> logits(
        model, detail::project_head<Scalar>(mu.atoms(), model.w_q, model.b_q, h, k),
        detail::project_head<Scalar>(keys.atoms, model.w_k, model.b_k, h, k), false);
    Matrix<Scalar> entropy(n, nb), expected(n, nb);  // per query and beta slot
    // Exceptions and Ctrl-C (common/parallel.hpp), polled per key block. Only
    // the buffers and the logits (a custom potential) can throw: they alone
    // run under the guard.
    detail::RegionGuard guard;
#pragma omp parallel if (query_blocks > 1)
    {
      // Allocated under the guard, then moved into locals whose address never
      // escapes (buffers passed to the guard's out-of-line call made GCC
      // reload them through memory: the loop ran 1.6x slower).
      using ArrayX = Eigen::Array<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
      Matrix<Scalar> s0, mx0, l0, t0, u0;
      ArrayX a0, d0, e0;
      guard.run([&] {
        s0.resize(bq, bk);
        a0.resize(1, bk);
        d0.resize(1, bk);
        e0.resize(1, bk);
        mx0.resize(nb, bq);
        l0.resize(nb, bq);
        t0.resize(nb, bq);
        u0.resize(nb, bq);
      });
      Matrix<Scalar> s(std::move(s0)), mx(std::move(mx0)), l(std::move(l0)), t(std::move(t0)),
          u(std::move(u0));
      ArrayX a(std::move(a0)), d(std::move(d0)), e(std::move(e0));
#pragma omp for schedule(dynamic, 1)
      for (Index qb = 0; qb < query_blocks; ++qb) {
        if (!guard.proceed()) continue;
        const Index i0 = qb * bq;
        const Index rows = std::min(bq, n - i0);
        Index key_end = m;
        if (options.causal) {
          key_end = static_cast<Index>(
              std::upper_bound(keys.index.begin(), keys.index.end(), i0 + rows - 1) -
              keys.index.begin());
        }
        mx.setConstant(kNegInf);
        l.setZero();
        t.setZero();
        u.setZero();
        for (Index j0 = 0; j0 < key_end; j0 += bk) {
          if (!guard.proceed()) break;
          const Index cols = std::min(bk, key_end - j0);
          guard.run([&] { logits.tile(i0, rows, j0, cols, s); });
          if (guard.stopped()) break;
          const auto lw = keys.log_weights.segment(j0, cols).transpose().array();
          for (Index r = 0; r < rows; ++r) {
            // Causal: the visible keys of query i0 + r are a prefix of this block.
            Index visible = cols;
            if (options.causal) {
              visible =
                  static_cast<Index>(std::upper_bound(keys.index.begin() + j0,
                                                      keys.index.begin() + j0 + cols, i0 + r) -
                                     (keys.index.begin() + j0));
            }
            if (visible == 0) continue;
            const auto g = s.row(r).head(visible).array();
            for (Index b = 0; b < nb; ++b) {
              auto ab = a.leftCols(visible);
              ab = betas[static_cast<size_t>(b)] * g + lw.head(visible);
              const Scalar old = mx(b, r);
              const Scalar nm = std::max(old, ab.maxCoeff());
              auto db = d.leftCols(visible);
              auto eb = e.leftCols(visible);
              db = ab - nm;
              eb = db.exp();
              if (old == kNegInf) {
                l(b, r) = eb.sum();
                t(b, r) = (eb * db).sum();
                u(b, r) = (eb * g).sum();
              } else {
                const Scalar alpha = std::exp(old - nm);
                t(b, r) = alpha * (t(b, r) + (old - nm) * l(b, r)) + (eb * db).sum();
                l(b, r) = alpha * l(b, r) + eb.sum();
                u(b, r) = alpha * u(b, r) + (eb * g).sum();
              }
              mx(b, r) = nm;
            }
          }
        }
        if (guard.stopped()) continue;  // this block's sums are incomplete
        for (Index r = 0; r < rows; ++r) {
          for (Index b = 0; b < nb; ++b) {
            // l >= 1 (the maximizing key contributes e^0); H >= 0 up to rounding.
            entropy(i0 + r, b) = std::max(std::log(l(b, r)) - t(b, r) / l(b, r), Scalar(0));
            expected(i0 + r, b) = u(b, r) / l(b, r);
          }
        }
      }
    }
    guard.finish();
    HeadEntropy<Scalar> he;
    he.entropy = entropy.col(0);
    he.effective_tokens = he.entropy.array().exp().matrix();
    he.expected_score = expected.col(0);
    he.curve_entropy = Vector<Scalar>::Zero(nb - 1);
    he.curve_expected_score = Vector<Scalar>::Zero(nb - 1);
    he.min_entropy = std::numeric_limits<Scalar>::infinity();
    he.max_entropy = -he.min_entropy;
    for (Index i = 0; i < n; ++i) {  // fixed order: deterministic
      const Scalar w = mu.weight(i);
      if (w <= 0) continue;
      he.mean_entropy += w * he.entropy[i];
      he.mean_effective_tokens += w * he.effective_tokens[i];
      he.min_entropy = std::min(he.min_entropy, he.entropy[i]);
      he.max_entropy = std::max(he.max_entropy, he.entropy[i]);
      for (Index b = 1; b < nb; ++b) {
        he.curve_entropy[b - 1] += w * entropy(i, b);
        he.curve_expected_score[b - 1] += w * expected(i, b);
      }
    }
    result.heads.push_back(std::move(he));
  }
  return result;
}

#define MEASATTN_INSTANTIATE(S)                                                   \
  template EntropyResult<S> attention_entropy(const Model<S>&, const Measure<S>&, \
                                              const EntropyOptions&);

MEASATTN_INSTANTIATE(float)
MEASATTN_INSTANTIATE(double)
#undef MEASATTN_INSTANTIATE

}  // namespace measattn
