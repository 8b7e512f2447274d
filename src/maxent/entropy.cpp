// Entropy diagnostics of a model (attention entropy, effective number of
// attended tokens, temperature curve), streamed with an online log-sum-exp
// that also carries t = sum e^{a - m} (a - m) and u = sum e^{a - m} G:
// with a_ij = beta G_ij + log w_j, H_i = log l - t / l and E_i[G] = u / l.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "attention/internal.hpp"
#include "attention/logit_tiles.hpp"
#include "common/parallel.hpp"
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

namespace {

// The logits of one block (a custom potential may throw): false, with the
// exception captured, when it threw. Out of line so that the kernel around it
// holds no try block and no atomic load (either made GCC compile the loop
// 1.6x slower).
template <class Scalar>
[[gnu::noinline]] bool tile_or_capture(detail::RegionGuard& guard,
                                       const detail::LogitTiles<Scalar>& logits, Index i0,
                                       Index rows, Index j0, Index bk, Index key_end,
                                       Matrix<Scalar>& s) {
  try {
    logits.tile(i0, rows, j0, std::min(bk, key_end - j0), s);
    return true;
  } catch (...) {
    guard.capture(std::current_exception());
    return false;
  }
}

}  // namespace

template <class Scalar>
EntropyResult<Scalar> attention_entropy(const Model<Scalar>& model, const Measure<Scalar>& mu,
                                        const EntropyOptions& options) {
  options.validate();
  AttendOptions attend;
  attend.causal = options.causal;
  detail::check_inputs(model, mu, mu.atoms(), attend);
  const detail::KeySet<Scalar> keys = detail::positive_keys(mu);
  if (options.causal && keys.index.front() > 0) {
    throw invalid_argument(
        "weights: with causal attention, query 0 sees only tokens of zero weight");
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
    // Exceptions and Ctrl-C (common/parallel.hpp): polled per query and key
    // block; only the logits can throw inside the loop. The per-thread
    // buffers (about 150 KB) are constructed as before, outside the guard:
    // allocated under it and moved in, GCC lost their fixed shapes (a has one
    // row) and the loop ran 1.6x slower.
    detail::RegionGuard guard;
#pragma omp parallel if (query_blocks > 1)
    {
      Matrix<Scalar> s(bq, bk);
      Eigen::Array<Scalar, Eigen::Dynamic, Eigen::Dynamic> a(1, bk), d(1, bk), e(1, bk);
      Matrix<Scalar> mx(nb, bq), l(nb, bq), t(nb, bq), u(nb, bq);
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
        bool stopping = false;
        for (Index j0 = 0; j0 < key_end; j0 += bk) {
          if (!guard.proceed() || !tile_or_capture(guard, logits, i0, rows, j0, bk, key_end, s)) {
            stopping = true;  // this block's sums stay incomplete and are dropped
            break;
          }
          const Index cols = std::min(bk, key_end - j0);
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
        if (stopping) continue;
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
    // Finite tokens, non-finite logits (or beta * logit): refuse, saying which.
    if (!entropy.allFinite() || !expected.allFinite()) {
      const char* type = std::is_same_v<Scalar, float> ? "float32" : "float64";
      const bool own = entropy.col(0).allFinite() && expected.col(0).allFinite();
      if (own) {
        Index bad = 1;
        while (bad < nb && entropy.col(bad).allFinite() && expected.col(bad).allFinite()) ++bad;
        throw invalid_argument("betas: beta * logit overflows " + std::string(type) +
                               " at beta = " + std::to_string(betas[static_cast<size_t>(bad)]) +
                               " (head " + std::to_string(h) + ")");
      }
      throw invalid_argument("tokens: the attention logits of head " + std::to_string(h) +
                             " overflow " + type + " (inputs too large for " + type + ")");
    }
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
