// The attention-field kernels beside the streaming kernel (kernels.hpp): the
// small-head-dimension kernel, the tied (W_Q = W_K) kernels for head_dim <= 8
// and above, and the entry point that chooses among them and attention_field.
#include <omp.h>

// GCC 12 reports a false "used uninitialized" inside its own AVX-512 intrinsics
// when Eigen's vectorized exp is inlined into the fused expressions below.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
// The 64-byte vector type of the tied kernel is passed between inline functions
// of this file only; without AVX-512 (MEASATTN_NATIVE=OFF) the compilers warn
// that its calling convention would differ from an AVX-512 build's, which
// cannot matter for functions no other translation unit calls.
#pragma GCC diagnostic ignored "-Wpsabi"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "attention/internal.hpp"
#include "attention/kernels.hpp"
#include "attention/tiles.hpp"
#include "common/huge_buffer.hpp"
#include "common/parallel.hpp"
#include "common/vector_exp.hpp"
#include "measattn/error.hpp"

namespace measattn::detail {

namespace {

// Rows per query block and keys per key block of the small-dimension kernel.
constexpr Index kRowBlock = 64;
constexpr Index kKeyBlock = 256;
// Below this many query-key pairs a field evaluation runs on one thread.
constexpr Index kParallelWork = 1 << 16;

// A row whose shifted normalizer falls below this is recomputed exactly (its
// upper-bound shift was too far above the true maximum to keep full precision).
template <class Scalar>
Scalar underflow_threshold() {
  return std::is_same_v<Scalar, float> ? Scalar(1e-28) : Scalar(1e-280);
}

// exp(s_j) in place for shifted logits s_j <= 0 (slightly positive from
// rounding), by the tied kernels' vector exponential (vector_exp.hpp, about 1
// ulp); arguments below -708 give ~3e-308 instead of a subnormal or zero
// (harmless here: the row's normalizer is >= 1e-280 or the row is recomputed
// exactly).
inline void exp_shifted_logits(double* s, Index count) {
  constexpr Index lanes = vexp::kLanes;
  Index j = 0;
  for (; j + lanes <= count; j += lanes) vexp::store(s + j, vexp::exp_negative(-vexp::load(s + j)));
  if (j < count) {
    double tail[lanes] = {};
    std::copy(s + j, s + count, tail);
    vexp::store(tail, vexp::exp_negative(-vexp::load(tail)));
    std::copy(tail, tail + (count - j), s + j);
  }
}

// Streaming attention specialized to small head dimensions (k <= 8): a fused
// single pass per key block with a per-row upper bound on the logits as shift
// (Cauchy-Schwarz), falling back to the exact two-pass online log-sum-exp for
// rows whose bound is far above the true maximum. Returns n x d_out.
template <class Scalar>
Matrix<Scalar> small_dim_attention_field(const Model<Scalar>& model, const MatrixRef<Scalar>& x,
                                         const KeyWeights<Scalar>& weights,
                                         const MatrixRef<Scalar>& queries) {
  using Array = Eigen::Array<Scalar, Eigen::Dynamic, 1>;
  const Index n = queries.rows();
  const Index heads = model.num_heads;
  const Index k = model.head_dim();
  const Index e = model.embed_dim();
  const Scalar inv_tau = Scalar(1) / model.tau();

  // Keys of positive weight.
  const std::vector<Index>& keep = weights.positive;
  const Index m = static_cast<Index>(keep.size());
  Matrix<Scalar> keys(m, x.cols());
  Array log_w(m);
  for (Index t = 0; t < m; ++t) {
    keys.row(t) = x.row(keep[static_cast<size_t>(t)]);
    log_w[t] = weights.log_weights[keep[static_cast<size_t>(t)]];
  }
  const Scalar log_w_max = weights.max_log_weight;

  // Projections: queries pre-scaled by 1/tau (n x E); keys and values transposed
  // (E x m) so that a head's coordinate is a contiguous row.
  Matrix<Scalar> q = queries * model.w_q.transpose();
  if (model.b_q.size()) q.rowwise() += model.b_q.transpose();
  q *= inv_tau;
  Matrix<Scalar> kt = model.w_k * keys.transpose();
  if (model.b_k.size()) kt.colwise() += model.b_k;
  Matrix<Scalar> vt = model.w_v * keys.transpose();
  if (model.b_v.size()) vt.colwise() += model.b_v;
  // Per head: max_j ||kappa(x_j)||.
  std::vector<Scalar> key_norm_max(static_cast<size_t>(heads));
  for (Index h = 0; h < heads; ++h) {
    key_norm_max[static_cast<size_t>(h)] = kt.middleRows(h * k, k).colwise().norm().maxCoeff();
  }

  Matrix<Scalar> out(n, e);
  const Index blocks = (n + kRowBlock - 1) / kRowBlock;
  const Scalar threshold = underflow_threshold<Scalar>();

  // Small problems stay on one thread: a parallel region costs more than it saves.
  // Exceptions and Ctrl-C: per row block (see common/parallel.hpp).
  RegionGuard guard;
#pragma omp parallel if (n * m > kParallelWork)
  {
    Array s, shift, sum;
    Matrix<Scalar> acc;
    guard.run([&] {
      s.resize(kKeyBlock);
      shift.resize(kRowBlock);
      sum.resize(kRowBlock);
      acc.resize(kRowBlock, k);
    });
#pragma omp for schedule(dynamic, 1)
    for (Index b = 0; b < blocks; ++b) {
      guard.run([&] {
        const Index i0 = b * kRowBlock;
        const Index rows = std::min(kRowBlock, n - i0);
        for (Index h = 0; h < heads; ++h) {
          const Scalar kmax = key_norm_max[static_cast<size_t>(h)];
          for (Index r = 0; r < rows; ++r) {
            shift[r] = q.row(i0 + r).segment(h * k, k).norm() * kmax + log_w_max;
          }
          sum.head(rows).setZero();
          acc.topRows(rows).setZero();
          for (Index j0 = 0; j0 < m; j0 += kKeyBlock) {
            const Index cols = std::min(kKeyBlock, m - j0);
            auto key = [&](Index c) {
              return kt.row(h * k + c).segment(j0, cols).transpose().array();
            };
            const auto lw = log_w.segment(j0, cols);
            for (Index r = 0; r < rows; ++r) {
              auto sr = s.head(cols);
              const Scalar* qr = &q(i0 + r, h * k);
              const Scalar sh = shift[r];
              // Logits (Eigen's vectorized expressions for the smallest head
              // sizes), then the exponentials in place.
              switch (k) {
                case 1:
                  sr = lw + qr[0] * key(0) - sh;
                  break;
                case 2:
                  sr = lw + qr[0] * key(0) + qr[1] * key(1) - sh;
                  break;
                case 3:
                  sr = lw + qr[0] * key(0) + qr[1] * key(1) + qr[2] * key(2) - sh;
                  break;
                case 4:
                  sr = lw + qr[0] * key(0) + qr[1] * key(1) + qr[2] * key(2) + qr[3] * key(3) - sh;
                  break;
                default:
                  sr = lw - sh;
                  for (Index c = 0; c < k; ++c) sr += qr[c] * key(c);
              }
              if constexpr (std::is_same_v<Scalar, double>) {
                exp_shifted_logits(sr.data(), cols);
              } else {
                sr = sr.exp();
              }
              sum[r] += sr.sum();
              acc.row(r).noalias() += (vt.block(h * k, j0, k, cols) * sr.matrix()).transpose();
            }
          }
          for (Index r = 0; r < rows; ++r) {
            if (!(sum[r] >= threshold) || !std::isfinite(shift[r])) {
              // Exact two-pass evaluation of this row: true maximum, then the sums.
              Scalar mx = -std::numeric_limits<Scalar>::infinity();
              Array row(m);
              row = log_w;
              for (Index c = 0; c < k; ++c) {
                row += q(i0 + r, h * k + c) * kt.row(h * k + c).transpose().array();
              }
              mx = row.maxCoeff();
              row = (row - mx).exp();
              sum[r] = row.sum();
              for (Index c = 0; c < k; ++c) {
                acc(r, c) = (row * vt.row(h * k + c).transpose().array()).sum();
              }
            }
            out.block(i0 + r, h * k, 1, k) = acc.row(r) / sum[r];
          }
        }
      });
    }
  }
  guard.finish();
  Matrix<Scalar> result = out * model.w_o.transpose();
  if (model.b_o.size()) result.rowwise() += model.b_o.transpose();
  return result;
}

// ---------------------------------------------------------------------------
// Tied query/key projections (W_Q = W_K, no query/key bias; the canonical model
// V = I, G = beta <x, y> is one): the logits <kappa_i, kappa_j> / tau are
// symmetric, and with a_i = kappa_i / sqrt(tau)
//   exp(<a_i, a_j>) = exp(|a_i|^2 / 2) exp(|a_j|^2 / 2) G_ij,
//   G_ij = exp(-|a_i - a_j|^2 / 2) in (0, 1], G_ii = 1.
// Row i's softmax is P_ij = G_ij omega_j / sum_k G_ik omega_k with
// omega_j = w_j exp(|a_j|^2 / 2 - C) in [0, 1] (C the largest exponent), so
// one exponential serves the pair (i, j) and the pair (j, i): half the
// exponentials and half the logits of the general kernel. The row sum is at
// least omega_i G_ii = omega_i; a row whose sum falls below
// underflow_threshold is recomputed exactly (two passes, true maximum).
//
// Determinism: the block pairs (I, J), I <= J, are taken in a fixed order and
// cut into a fixed number of slots (not one per thread); each slot adds into
// its own accumulators and the slots are summed in order, so the result does
// not depend on the thread count.
// ---------------------------------------------------------------------------

constexpr Index kTiedSlots = 16;
constexpr Index kLanes = vexp::kLanes;

using vexp::exp2_sixteenths;
using vexp::exp_negative;
using vexp::horizontal_sum;
using vexp::load;
using vexp::splat;
using vexp::store;
using vexp::Vd;

// The pairs of rows i, i + 1 with one vector of keys [j, j + 8): the row sums of
// i, i + 1 in den/num, and with ColSide the column sums of the keys in acc.
template <int K, bool ColSide>
inline void tied_rows_keys(const double* b, const double* norm, const double* wv,
                           const double* omega, Index np, Index j, const double (&bi)[2][K],
                           const double (&wvi)[2][K], const double (&oi)[2], const double (&ni)[2],
                           Vd (&den)[2], Vd (&num)[2][K], double* acc) {
  constexpr int R = 2;
  Vd bj[K], wvj[K];
  for (int c = 0; c < K; ++c) {
    bj[c] = load(b + c * np + j);
    wvj[c] = load(wv + c * np + j);
  }
  const Vd oj = load(omega + j);
  const Vd nj = load(norm + j);
  Vd col_den = {}, col_num[K] = {};
  for (int r = 0; r < R; ++r) {
    // y = -kappa |b_i - b_j|^2 = -kappa |b_i|^2 - kappa |b_j|^2 + 2 kappa
    // <b_i, b_j>, kappa = 16 / ln 2 (norm holds -kappa |b|^2 and bi is
    // 2 kappa b_i): four operations per pair instead of six, and the
    // exponential's range reduction needs no multiply-adds. The rounding, a
    // few 1e-16 (|b_i|^2 + |b_j|^2) in the exponent, is that of the logits
    // <a_i, a_j> themselves.
    Vd y = nj + ni[r];
    for (int c = 0; c < K; ++c) y += bi[r][c] * bj[c];
    const Vd g = exp2_sixteenths(y);
    den[r] += g * oj;
    for (int c = 0; c < K; ++c) num[r][c] += g * wvj[c];
    if constexpr (ColSide) {
      col_den += g * oi[r];
      for (int c = 0; c < K; ++c) col_num[c] += g * wvi[r][c];
    }
  }
  if constexpr (ColSide) {
    store(acc + K * np + j, load(acc + K * np + j) + col_den);
    for (int c = 0; c < K; ++c) store(acc + c * np + j, load(acc + c * np + j) + col_num[c]);
  }
}

// One block pair: rows [i0, i1) against keys [j0, j1) (both multiples of 8,
// inside the padded range). Layout: b (K x np) the keys scaled so that
// G_ij = exp(-|b_i - b_j|^2), norm = -kappa |b|^2 (kappa = 16 / ln 2), wv (K x np) omega-weighted
// values, omega (np); acc (K + 1 rows of np): numerators, then normalizers. Two rows at a time
// share every load of the keys and every update of the column sums (measured against 1, 4 and 8: 2
// spills least). In a diagonal block (i0 == j0) each 8-wide group of keys is paired once: the group
// holding the rows themselves gives row sums only (all 8 keys, the rows included), the groups after
// it give both sides, the groups before it nothing (done from their side): half the exponentials of
// the full block.
template <int K, bool Diagonal>
void tied_block_pair(const double* b, const double* norm, const double* wv, const double* omega,
                     Index np, Index i0, Index i1, Index j0, Index j1, double* acc) {
  constexpr int R = 2;
  for (Index i = i0; i < i1; i += R) {
    double bi[R][K], wvi[R][K], oi[R], ni[R];
    for (int r = 0; r < R; ++r) {
      for (int c = 0; c < K; ++c) {
        bi[r][c] = 2 * vexp::kSixteenthsPerNat * b[c * np + i + r];
        wvi[r][c] = wv[c * np + i + r];
      }
      oi[r] = omega[i + r];
      ni[r] = norm[i + r];
    }
    Vd den[R] = {}, num[R][K] = {};
    if constexpr (Diagonal) {
      const Index own = j0 + (i - i0) / kLanes * kLanes;
      tied_rows_keys<K, false>(b, norm, wv, omega, np, own, bi, wvi, oi, ni, den, num, acc);
      // Within the own group, rows i, i+1 and the other 6 rows of the group
      // pair up from both ends: the row side above covers every key of the
      // group for these two rows, and the group's other rows do the same.
      for (Index j = own + kLanes; j < j1; j += kLanes)
        tied_rows_keys<K, true>(b, norm, wv, omega, np, j, bi, wvi, oi, ni, den, num, acc);
    } else {
      for (Index j = j0; j < j1; j += kLanes)
        tied_rows_keys<K, true>(b, norm, wv, omega, np, j, bi, wvi, oi, ni, den, num, acc);
    }
    for (int r = 0; r < R; ++r) {
      for (int c = 0; c < K; ++c) acc[c * np + i + r] += horizontal_sum(num[r][c]);
      acc[K * np + i + r] += horizontal_sum(den[r]);
    }
  }
}

using TiedBlockFn = void (*)(const double*, const double*, const double*, const double*, Index,
                             Index, Index, Index, Index, double*);

template <int K>
void tied_block(const double* b, const double* norm, const double* wv, const double* omega,
                Index np, Index i0, Index i1, Index j0, Index j1, double* acc) {
  if (i0 == j0) {
    tied_block_pair<K, true>(b, norm, wv, omega, np, i0, i1, j0, j1, acc);
  } else {
    tied_block_pair<K, false>(b, norm, wv, omega, np, i0, i1, j0, j1, acc);
  }
}

TiedBlockFn tied_block_function(Index k) {
  switch (k) {
    case 1:
      return tied_block<1>;
    case 2:
      return tied_block<2>;
    case 3:
      return tied_block<3>;
    case 4:
      return tied_block<4>;
    case 5:
      return tied_block<5>;
    case 6:
      return tied_block<6>;
    case 7:
      return tied_block<7>;
    default:
      return tied_block<8>;
  }
}

// Block pairs (I, J), I <= J, of nb blocks in the order (0,0), (0,1), ...,
// (0,nb-1), (1,1), ...: the fixed order in which the tied kernels cut them into
// slots. Starts at pair number p0.
struct BlockPairCursor {
  Index nb, I = 0, J = 0;
  BlockPairCursor(Index blocks, Index p0) : nb(blocks) {
    Index p = 0;
    while (p + (nb - I) <= p0) {
      p += nb - I;
      ++I;
    }
    J = I + (p0 - p);
  }
  void next() {
    if (++J == nb) {
      ++I;
      J = I;
    }
  }
};

// The exact two-pass softmax row of a tied kernel, for a row whose shifted sum
// underflowed: logits dots_j + log w_j (dots_j = <a_i, a_j>; zero weights
// excluded), true maximum. Returns the normalizer and sets num[c] =
// sum_j e^{logit_j - max} value(c, j) for c < k.
template <class ValueAt>
double exact_tied_row(Eigen::ArrayXd dots, const KeyWeights<double>& weights, Index k,
                      ValueAt value, double* num) {
  const Index n = dots.size();
  double mx = -std::numeric_limits<double>::infinity();
  for (Index j = 0; j < n; ++j) {
    dots[j] = weights.weights[j] > 0 ? dots[j] + weights.log_weights[j]
                                     : -std::numeric_limits<double>::infinity();
    mx = std::max(mx, dots[j]);
  }
  dots = (dots - mx).exp();
  for (Index c = 0; c < k; ++c) {
    double sum = 0;
    for (Index j = 0; j < n; ++j) sum += dots[j] * value(c, j);
    num[c] = sum;
  }
  return dots.sum();
}

// The work arrays of the tied kernels, kept by the calling thread from one call
// to the next up to 64 MiB: a flow evaluates the field at every step, and fresh
// pages cost ~11 us each where this was measured. Arrays freed at the end of a
// call are no better: glibc trims the heap top and the next call faults them in
// again (~760 faults per step at n = 1000, d = 64, 20 % of the step). Larger
// work (where the pages are small next to the O(n^2 k) work) gets a buffer of
// its own, returned after the call.
double* caller_workspace(size_t count, HugeBuffer& local) {
  constexpr size_t kKeep = size_t{8} << 20;  // doubles
  thread_local HugeBuffer cached;
  thread_local size_t cached_size = 0;
  if (count > kKeep) {
    local = huge_buffer(count);
    return local.get();
  }
  if (cached_size < count) {
    cached.reset();
    cached = huge_buffer(count);
    cached_size = count;
  }
  return cached.get();
}

// Consecutive 64-byte aligned segments of one work buffer.
struct Segments {
  static size_t rounded(size_t count) { return (count + 7) / 8 * 8; }
  double* next;
  double* take(size_t count) {
    double* p = next;
    next += rounded(count);
    return p;
  }
};

// The number of slots of a tied kernel: a power of two (even shares for 1, 2,
// 4, ... threads), more of them for more block pairs (balance on larger
// machines), at most ~32 MiB of accumulators unless that leaves fewer than 4,
// never more than the pairs. Every slot is written (the d <= 8 kernel zeroes
// it first) and summed once per head: at n = 1000 the former 16-30 slots cost
// 15 % of the step. Depends on the
// sizes only, never on the thread count.
Index tied_slot_count(Index pairs, size_t slot_doubles) {
  const Index wanted = pairs < 256 ? 4 : pairs < 2048 ? 8 : kTiedSlots;
  const Index affordable = std::max<Index>(
      4, static_cast<Index>((32.0 * (1 << 20)) / (8.0 * static_cast<double>(slot_doubles))));
  return std::max<Index>(1, std::min({wanted, affordable, pairs}));
}

// Cuts of the block-pair sequence (BlockPairCursor order) into `slots` runs of
// equal work rather than equal counts: pair (I, J) costs
// width(I) width(J) (diagonal or off_diagonal). cut[s] is the first pair of
// slot s, cut[slots] = pairs.
template <class Width>
std::vector<Index> balanced_cuts(Index nb, Index slots, Width width, double diagonal,
                                 double off_diagonal) {
  const Index pairs = nb * (nb + 1) / 2;
  std::vector<double> cost;
  cost.reserve(static_cast<size_t>(pairs));
  double total = 0;
  for (BlockPairCursor pair(nb, 0); static_cast<Index>(cost.size()) < pairs; pair.next()) {
    const double c = static_cast<double>(width(pair.I) * width(pair.J)) *
                     (pair.I == pair.J ? diagonal : off_diagonal);
    cost.push_back(c);
    total += c;
  }
  std::vector<Index> cut(static_cast<size_t>(slots) + 1, pairs);
  double run = 0;
  Index s = 0;
  for (Index q = 0; q < pairs; ++q) {
    while (s < slots && run >= total * static_cast<double>(s) / static_cast<double>(slots))
      cut[static_cast<size_t>(s++)] = q;
    run += cost[static_cast<size_t>(q)];
  }
  return cut;
}

void tied_small_dim_attention_field(const Model<double>& model, const KeyWeights<double>& weights,
                                    const MatrixRef<double>& x, MatrixD& result) {
  const Index n = x.rows();
  const Index heads = model.num_heads;
  const Index k = model.head_dim();
  const Index e = model.embed_dim();
  // Keys a = kappa / sqrt(tau) and values, E x n (coordinates contiguous).
  const MatrixD at = (model.w_k * x.transpose()) / std::sqrt(static_cast<double>(model.tau()));
  MatrixD vt = model.w_v * x.transpose();
  if (model.b_v.size()) vt.colwise() += model.b_v;
  // Padded to whole vectors; padding particles have omega = 0 (no effect on
  // any row) and their own rows are discarded. Blocks depend on n only.
  const Index np = (n + kLanes - 1) / kLanes * kLanes;
  const Index block = n <= 8192 ? 128 : 256;
  const Index nb = (np + block - 1) / block;
  const Index pairs = nb * (nb + 1) / 2;
  auto width = [np, block](Index blk) { return std::min(block, np - blk * block); };
  const size_t slot_size = static_cast<size_t>((k + 1) * np);
  const Index slots = tied_slot_count(pairs, slot_size);
  // A diagonal block takes half the exponentials of an off-diagonal one.
  const std::vector<Index> cut = balanced_cuts(nb, slots, width, 1.0, 2.0);
  const TiedBlockFn kernel = tied_block_function(k);
  const double threshold = underflow_threshold<double>();
  const bool output_identity = is_identity(model.w_o);
  result.resize(n, model.w_o.rows());  // storage kept when the size matches
  // Work arrays (64-byte aligned segments, kept by the caller): bh, wv (k x np),
  // omega, norm (np), out (n x e unless W_O = I), the slots ((k + 1) x np each).
  const size_t kn = static_cast<size_t>(k * np);
  const size_t out_size = output_identity ? 0 : static_cast<size_t>(n * e);
  HugeBuffer local;
  const auto seg = Segments::rounded;
  Segments w{caller_workspace(2 * seg(kn) + 2 * seg(static_cast<size_t>(np)) + seg(out_size) +
                                  static_cast<size_t>(slots) * seg(slot_size),
                              local)};
  double* bh = w.take(kn);
  double* wv = w.take(kn);
  double* omega = w.take(static_cast<size_t>(np));
  double* norm = w.take(static_cast<size_t>(np));
  double* out = output_identity ? result.data() : w.take(out_size);
  double* acc = w.next;
  const size_t slot_stride = seg(slot_size);
  const bool parallel = n * n > kParallelWork;
  for (Index h = 0; h < heads; ++h) {
    const auto a = at.middleRows(h * k, k);
    const auto v = vt.middleRows(h * k, k);
    // omega_j = w_j exp(|a_j|^2 / 2 - C), C the largest exponent (vectorized
    // log and exp: scalar libm calls cost 7 % of the step at n = 1000).
    Eigen::ArrayXd half_norm(n);
    for (Index j = 0; j < n; ++j) {
      double sq = 0;
      for (Index c = 0; c < k; ++c) sq += a(c, j) * a(c, j);
      half_norm[j] = 0.5 * sq;
    }
    Eigen::ArrayXd log_omega = weights.packed_log_weights.array() + half_norm;
    for (Index j = 0; j < n; ++j)
      if (!(weights.weights[j] > 0)) log_omega[j] = -std::numeric_limits<double>::infinity();
    const double top = log_omega.maxCoeff();
    const Eigen::ArrayXd om = (log_omega - top).exp();
    const double root_half = std::sqrt(0.5);
    for (Index c = 0; c < k; ++c) {
      for (Index j = 0; j < n; ++j) {
        bh[c * np + j] = root_half * a(c, j);
        wv[c * np + j] = om[j] * v(c, j);
      }
      std::fill(bh + c * np + n, bh + (c + 1) * np, 0.0);
      std::fill(wv + c * np + n, wv + (c + 1) * np, 0.0);
    }
    for (Index j = 0; j < np; ++j) {
      omega[j] = j < n ? om[j] : 0.0;
      norm[j] = j < n ? -vexp::kSixteenthsPerNat * half_norm[j] : 0.0;
    }
    // One parallel region: the slots (each zeroed by the thread that fills
    // it), then, after the loop's barrier, the sum over slots by row blocks.
    RegionGuard guard;  // exceptions and Ctrl-C, per slot and row block
#pragma omp parallel if (parallel)
    {
#pragma omp for schedule(dynamic, 1)
      for (Index sl = 0; sl < slots; ++sl) {
        guard.run([&] {
          const Index p0 = cut[static_cast<size_t>(sl)], p1 = cut[static_cast<size_t>(sl) + 1];
          double* mine = acc + static_cast<size_t>(sl) * slot_stride;
          std::fill(mine, mine + slot_size, 0.0);
          BlockPairCursor pair(nb, p0);
          for (Index q = p0; q < p1; ++q, pair.next()) {
            kernel(bh, norm, wv, omega, np, pair.I * block, pair.I * block + width(pair.I),
                   pair.J * block, pair.J * block + width(pair.J), mine);
          }
        });
      }
      // The slots summed in order into the first (vectorized over contiguous
      // rows); exact fallback for rows whose sum underflowed.
#pragma omp for schedule(static)
      for (Index blk = 0; blk < nb; ++blk) {
        guard.run([&] {
          const Index r0 = blk * block, r1 = r0 + width(blk);
          for (Index sl = 1; sl < slots; ++sl) {
            const double* mine = acc + static_cast<size_t>(sl) * slot_stride;
            for (Index c = 0; c <= k; ++c)
              for (Index i = r0; i < r1; ++i) acc[c * np + i] += mine[c * np + i];
          }
          for (Index i = r0; i < std::min(n, r1); ++i) {
            double num[8], den = acc[k * np + i];
            for (Index c = 0; c < k; ++c) num[c] = acc[c * np + i];
            if (!(den >= threshold) || !std::isfinite(den)) {
              den = exact_tied_row((a.transpose() * a.col(i)).array(), weights, k,
                                   [&](Index c, Index j) { return v(c, j); }, num);
            }
            for (Index c = 0; c < k; ++c) out[i * e + h * k + c] = num[c] / den;
          }
        });
      }
    }
    guard.finish();
  }
  if (!output_identity)
    result.noalias() = Eigen::Map<const MatrixD>(out, n, e) * model.w_o.transpose();
  if (model.b_o.size()) result.rowwise() += model.b_o.transpose();
}

// One block pair of the tied GEMM kernel after its logits (rows x cols, both
// multiples of 8, row stride `stride`): G = exp(S - h_i) in place (S_ij =
// <a_i, a_j> - h_j, so G_ij = exp(-|a_i - a_j|^2 / 2) <= 1), the row sums
// sum_j G_ij omega_j into den_I and, for an off-diagonal pair, the column
// sums sum_i G_ij omega_i into den_J (no transposed copy of G needed). With
// set_i (set_j) the sums are stored rather than added: the slot's first
// contribution to that block.
template <bool OffDiagonal>
void tied_exponentials(double* S, Index stride, Index rows, Index cols, const double* minus_h_i,
                       const double* omega_i, const double* omega_j, double* den_i, double* den_j,
                       bool set_i, bool set_j, double* colsum) {
  if constexpr (OffDiagonal) std::fill(colsum, colsum + cols, 0.0);
  for (Index r = 0; r < rows; ++r) {
    double* sr = S + r * stride;
    const double hi = minus_h_i[r];
    const Vd oi = splat(omega_i[r]);
    Vd rowsum = {};
    for (Index c = 0; c < cols; c += kLanes) {
      const Vd g = exp_negative(-(load(sr + c) + hi));
      store(sr + c, g);
      rowsum += g * load(omega_j + c);
      if constexpr (OffDiagonal) store(colsum + c, load(colsum + c) + g * oi);
    }
    den_i[r] = (set_i ? 0.0 : den_i[r]) + horizontal_sum(rowsum);
  }
  if constexpr (OffDiagonal)
    for (Index c = 0; c < cols; ++c) den_j[c] = (set_j ? 0.0 : den_j[c]) + colsum[c];
}

// acc (rows x k_pad) = or += P V (values_block), by a flag known at run time.
template <bool Transposed>
void tied_values(bool set, const double* p, Index p_stride, Index rows, Index cols, const double* v,
                 Index k_pad, double* acc) {
  if (set) {
    values_block<double, Transposed, true>(p, p_stride, rows, cols, v, k_pad, acc);
  } else {
    values_block<double, Transposed, false>(p, p_stride, rows, cols, v, k_pad, acc);
  }
}

void tied_gemm_attention_field(const Model<double>& model, const KeyWeights<double>& weights,
                               const MatrixRef<double>& x, MatrixD& result) {
  constexpr Index L = Simd<double>::L;
  const Index n = x.rows();
  const Index heads = model.num_heads;
  const Index k = model.head_dim();
  const Index e = model.embed_dim();
  // Blocks of B particles, the last one narrower: rows are padded to a
  // multiple of 24 only (the values tiles take 6 or 8 rows, the exponentials
  // 8 lanes; the logits' last column chunk may be narrow). Padding to whole
  // blocks of 96 was 11 % more work at n = 1000. Blocks of 192 halve the
  // pairs (the per-pair passes over S and the accumulators) and run 4 % faster
  // at n = 4000, 9 % at 16000, but balance the slots worse below ~2000.
  // Blocks and slots depend on n and k only.
  const Index B = n < 2048 ? 96 : 192;
  static_assert(96 % kTileRows == 0 && kTileRows % kLanes == 0);
  constexpr int kNS = 4, kR = 6;  // logits tiles: 6 rows x 4 packets (B % 32 == 0)
  const Index chunk = kNS * L;
  const Index np = round_up(n, kTileRows);
  const Index nb = (np + B - 1) / B;
  auto width = [np, B](Index blk) { return std::min(B, np - blk * B); };
  const Index k_pad = round_up(k, L);
  const Index pairs = nb * (nb + 1) / 2;
  const size_t slot_size = static_cast<size_t>(np * (k_pad + 1));
  const Index slots = tied_slot_count(pairs, slot_size);
  // A diagonal pair applies its block once, an off-diagonal one twice (logits
  // + values: 2 against 3 units per entry).
  const std::vector<Index> cut = balanced_cuts(nb, slots, width, 2.0, 3.0);
  const double threshold = underflow_threshold<double>();
  const bool parallel = nb > 1;

  // The canonical model's projections are identities: copies, not products.
  const bool key_identity = is_identity(model.w_k);
  const bool value_identity = is_identity(model.w_v);
  const bool output_identity = is_identity(model.w_o);
  const double inv_root_tau = 1.0 / std::sqrt(static_cast<double>(model.tau()));
  result.resize(n, model.w_o.rows());  // storage kept when the size matches

  // Work arrays (64-byte aligned segments), per head, zero-padded to np rows:
  // A (np x k) the scaled keys a = kappa / sqrt(tau), KT the same as key panels
  // (per block: k x B in chunks of `chunk` columns), V (np x k) the values, WV
  // (np x k_pad) the omega-weighted values, minus_h = -|a|^2 / 2, omega; out
  // (n x e, row-major) unless W_O = I (then the result itself); the slots.
  const size_t nk = static_cast<size_t>(np * k);
  const size_t kt_size = static_cast<size_t>(nb * B * k);
  const size_t out_size = output_identity ? 0 : static_cast<size_t>(n * e);
  const auto seg = Segments::rounded;
  const size_t total = 2 * seg(nk) + seg(kt_size) + seg(static_cast<size_t>(np * k_pad)) +
                       3 * seg(static_cast<size_t>(np)) + seg(out_size) +
                       static_cast<size_t>(slots) * seg(slot_size);
  HugeBuffer local;
  Segments w{caller_workspace(total, local)};
  double* A = w.take(nk);
  double* V = w.take(nk);
  double* KT = w.take(kt_size);
  double* WV = w.take(static_cast<size_t>(np * k_pad));
  double* minus_h = w.take(static_cast<size_t>(np));
  double* omega = w.take(static_cast<size_t>(np));
  double* log_omega = w.take(static_cast<size_t>(np));
  double* out = output_identity ? result.data() : w.take(out_size);
  double* acc_base = w.next;
  const size_t slot_stride = seg(slot_size);
  // touched[s nb + I]: slot s has written row block I in this head.
  std::vector<unsigned char> touched(static_cast<size_t>(slots * nb));
  using RowMajorMap = Eigen::Map<MatrixD>;

  for (Index h = 0; h < heads; ++h) {
    const MatrixD wk_t = model.w_k.middleRows(h * k, k).transpose() * inv_root_tau;  // d x k
    const MatrixD wv_t = model.w_v.middleRows(h * k, k).transpose();
    const VectorD bv = model.b_v.size() ? VectorD(model.b_v.segment(h * k, k)) : VectorD::Zero(k);
    // Prepared in parallel over the row blocks (the projections are 10 % of
    // the work at n = 1000, d = 64 when they are products).
    RegionGuard prepare;
#pragma omp parallel for schedule(static) if (parallel)
    for (Index blk = 0; blk < nb; ++blk) {
      prepare.run([&] {
        const Index r0 = blk * B, wb = width(blk);
        const Index rows = std::clamp<Index>(n - r0, 0, wb);
        RowMajorMap a(A + r0 * k, wb, k), v(V + r0 * k, wb, k);
        // Only the padding rows are zeroed: the others are written next (at
        // n = 1000, d = 64, zeroing all of A and V was a third of this loop).
        a.bottomRows(wb - rows).setZero();
        v.bottomRows(wb - rows).setZero();
        if (rows > 0) {
          if (key_identity) {
            a.topRows(rows) = x.block(r0, h * k, rows, k) * inv_root_tau;
          } else {
            a.topRows(rows).noalias() = x.middleRows(r0, rows) * wk_t;
          }
          if (value_identity) {
            v.topRows(rows) = x.block(r0, h * k, rows, k);
          } else {
            v.topRows(rows).noalias() = x.middleRows(r0, rows) * wv_t;
          }
          v.topRows(rows).rowwise() += bv.transpose();
        }
        // |a_j|^2 by Eigen's vectorized reduction (a scalar loop is one chain
        // of dependent additions: 20 % of this loop at d = 64).
        Eigen::Map<VectorD> mh(minus_h + r0, wb);
        mh.noalias() = -0.5 * a.rowwise().squaredNorm();
        for (Index j = r0; j < r0 + wb; ++j) {
          log_omega[j] = j < n && weights.weights[j] > 0 ? weights.log_weights[j] - minus_h[j]
                                                         : -std::numeric_limits<double>::infinity();
        }
        // The key panels: A's columns, transposed in runs of 8 rows (the 8
        // source rows stay in L1 while their k columns are read).
        double* dst = KT + blk * k * B;
        for (Index t = 0; t * chunk < wb; ++t) {
          const Index cols = std::min(chunk, wb - t * chunk);
          for (Index j0 = 0; j0 < cols; j0 += kLanes) {
            const double* src = A + (r0 + t * chunk + j0) * k;
            double* d0 = dst + t * k * chunk + j0;
            for (Index c = 0; c < k; ++c)
              for (Index jj = 0; jj < std::min<Index>(kLanes, cols - j0); ++jj)
                d0[c * chunk + jj] = src[jj * k + c];
          }
        }
      });
    }
    prepare.finish();
    const double top = *std::max_element(log_omega, log_omega + np);
    // (No guard: plain arithmetic on preallocated arrays, nothing can throw.)
#pragma omp parallel for schedule(static) if (parallel)
    for (Index blk = 0; blk < nb; ++blk) {
      for (Index j = blk * B; j < blk * B + width(blk); ++j) {
        omega[j] = std::exp(log_omega[j] - top);  // exp(-inf) = 0 for padding
        for (Index c = 0; c < k; ++c) WV[j * k_pad + c] = omega[j] * V[j * k + c];
        for (Index c = k; c < k_pad; ++c) WV[j * k_pad + c] = 0;
      }
    }
    RegionGuard guard;  // exceptions and Ctrl-C, per slot and row block
#pragma omp parallel if (parallel)
    {
      // The block of logits and exponentials: one per thread, kept by the
      // (pooled) threads across calls.
      thread_local Eigen::ArrayXd s_buf;
      guard.run([&] {
        if (s_buf.size() < B * B + B) s_buf.resize(B * B + B);
      });
      double* S = s_buf.data();
      double* colsum = S + B * B;
#pragma omp for schedule(dynamic, 1)
      for (Index sl = 0; sl < slots; ++sl) {
        guard.run([&] {
          const Index p0 = cut[static_cast<size_t>(sl)], p1 = cut[static_cast<size_t>(sl) + 1];
          double* num = acc_base + static_cast<size_t>(sl) * slot_stride;
          double* den = num + np * k_pad;
          // No zeroing: a slot's first contribution to a row block is stored,
          // later ones added (zeroing 4 slots was 2-3 % of the step, slowed by
          // the stores' misses; a slot never touches the blocks left of its
          // first pair's I).
          unsigned char* seen = touched.data() + sl * nb;
          std::fill(seen, seen + nb, 0);
          BlockPairCursor pair(nb, p0);
          for (Index q = p0; q < p1; ++q, pair.next()) {
            const Index i0 = pair.I * B, j0 = pair.J * B;
            const Index wi = width(pair.I), wj = width(pair.J);
            const bool set_i = !seen[pair.I], set_j = !seen[pair.J] && pair.I != pair.J;
            seen[pair.I] = seen[pair.J] = 1;
            // S_ij = <a_i, a_j> - h_j, then G_ij = exp(S_ij - h_i).
            logits_block<double, kNS, kR>(A + i0 * k, wi, k, KT + pair.J * k * B, chunk, wj / L,
                                          minus_h + j0, S, B);
            if (pair.I == pair.J) {
              tied_exponentials<false>(S, B, wi, wj, minus_h + i0, omega + i0, omega + j0, den + i0,
                                       nullptr, set_i, false, colsum);
              tied_values<false>(set_i, S, B, wi, wj, WV + j0 * k_pad, k_pad, num + i0 * k_pad);
            } else {
              tied_exponentials<true>(S, B, wi, wj, minus_h + i0, omega + i0, omega + j0, den + i0,
                                      den + j0, set_i, set_j, colsum);
              tied_values<false>(set_i, S, B, wi, wj, WV + j0 * k_pad, k_pad, num + i0 * k_pad);
              // The pairs (j, i): G^T, read by columns, against the rows of block I.
              tied_values<true>(set_j, S, B, wj, wi, WV + i0 * k_pad, k_pad, num + j0 * k_pad);
            }
          }
        });
      }
      // Per row: the slots that touched its block, summed in slot order (the
      // same bits as adding all slots to zeros), divided by the row's sum into
      // the output; the exact fallback for rows whose sum underflowed. Every
      // block is touched by the slot holding its diagonal pair.
#pragma omp for schedule(static)
      for (Index blk = 0; blk < nb; ++blk) {
        guard.run([&] {
          const Index r0 = blk * B;
          for (Index i = r0; i < std::min(n, r0 + width(blk)); ++i) {
            double* o = out + i * e + h * k;
            double dsum = 0;
            bool first = true;
            for (Index sl = 0; sl < slots; ++sl) {
              if (!touched[static_cast<size_t>(sl * nb + blk)]) continue;
              const double* num = acc_base + static_cast<size_t>(sl) * slot_stride + i * k_pad;
              const double den = acc_base[static_cast<size_t>(sl) * slot_stride + np * k_pad + i];
              if (first) {
                std::copy(num, num + k, o);
                dsum = den;
                first = false;
              } else {
                for (Index c = 0; c < k; ++c) o[c] += num[c];
                dsum += den;
              }
            }
            if (!(dsum >= threshold) || !std::isfinite(dsum)) {
              const Eigen::Map<const MatrixD> a(A, n, k);
              dsum = exact_tied_row((a * a.row(i).transpose()).array(), weights, k,
                                    [&](Index c, Index j) { return V[j * k + c]; }, o);
            }
            for (Index c = 0; c < k; ++c) o[c] /= dsum;
          }
        });
      }
    }
    guard.finish();
  }
  if (!output_identity) {
    // W_O, in parallel over the row blocks.
    const MatrixD wo_t = model.w_o.transpose();
    const Eigen::Map<const MatrixD> o(out, n, e);
    RegionGuard guard;
#pragma omp parallel for schedule(static) if (parallel)
    for (Index blk = 0; blk < nb; ++blk) {
      guard.run([&] {
        const Index r0 = blk * B;
        const Index rows = std::clamp<Index>(n - r0, 0, width(blk));
        if (rows > 0) result.middleRows(r0, rows).noalias() = o.middleRows(r0, rows) * wo_t;
      });
    }
    guard.finish();
  }
  if (model.b_o.size()) result.rowwise() += model.b_o.transpose();
}

}  // namespace

bool tied_query_key(const Model<double>& model) {
  auto zero = [](const VectorD& b) { return b.size() == 0 || b.isZero(0); };
  return dot_potential(model) && zero(model.b_q) && zero(model.b_k) && model.w_q == model.w_k;
}

template <class Scalar>
KeyWeights<Scalar> key_weights(const Vector<Scalar>& weights) {
  KeyWeights<Scalar> w;
  w.weights = weights;
  const Index m = weights.size();
  w.log_weights.resize(m);
  w.positive.reserve(static_cast<size_t>(m));
  w.max_log_weight = -std::numeric_limits<Scalar>::infinity();
  // Equal weights (uniform ones above all) share one logarithm.
  Scalar last = 0, last_log = -std::numeric_limits<Scalar>::infinity();
  for (Index j = 0; j < m; ++j) {
    const Scalar wj = weights[j];
    if (!std::isfinite(wj)) {
      throw invalid_argument("weights: weight " + std::to_string(j) +
                             (std::isnan(wj) ? " is NaN" : " is infinite"));
    }
    if (wj < 0) throw invalid_argument("weights: weight " + std::to_string(j) + " is negative");
    if (wj > 0) {
      w.positive.push_back(j);
      if (wj != last) {
        last = wj;
        last_log = std::log(wj);
      }
      w.log_weights[j] = last_log;
      w.max_log_weight = std::max(w.max_log_weight, last_log);
    } else {
      w.log_weights[j] = -std::numeric_limits<Scalar>::infinity();
    }
  }
  if (w.positive.empty()) throw invalid_argument("weights: the weights sum to zero");
  // The normalized weights as the Measure constructor computes them (long
  // double total, w_j / total rounded to Scalar unless the total is 1).
  long double total = 0;
  for (Index j = 0; j < m; ++j) total += weights[j];
  w.total_overflows = !std::isfinite(static_cast<double>(total));
  w.positive_log_weights.resize(static_cast<Index>(w.positive.size()));
  last = 0;
  last_log = 0;
  for (size_t t = 0; t < w.positive.size(); ++t) {
    const Scalar wj = weights[w.positive[t]];
    const Scalar normalized =
        total != 1 ? static_cast<Scalar>(static_cast<long double>(wj) / total) : wj;
    if (t == 0 || normalized != last) {
      last = normalized;
      last_log = std::log(normalized);
    }
    w.positive_log_weights[static_cast<Index>(t)] = last_log;
  }
  // Eigen's logarithm of the whole vector, as the tied head_dim <= 8 kernel
  // computed it per call (the packets depend on the positions in the vector).
  w.packed_log_weights = weights.array().log().matrix();
  return w;
}

template <class Scalar>
FieldKernel field_kernel(const Model<Scalar>& model, const AttendOptions& options, bool self) {
  const bool default_blocks = options.query_block == 0 && options.key_block == 0;
  // The causal mask and Sinkhorn iterations are the streaming path's alone
  // (Sinkhorn with zero iterations is softmax).
  const bool sinkhorn =
      options.normalization != Normalization::softmax && options.sinkhorn_iterations > 0;
  if (!dot_potential(model) || !default_blocks || options.causal || sinkhorn) {
    return FieldKernel::streaming;
  }
  bool tied = false;
  if constexpr (std::is_same_v<Scalar, double>) tied = self && tied_query_key(model);
  if (model.head_dim() <= 8) return tied ? FieldKernel::tied_small_dim : FieldKernel::small_dim;
  return tied ? FieldKernel::tied_gemm : FieldKernel::streaming;
}

template <class Scalar>
void attention_field_kernel(const Model<Scalar>& model, const MatrixRef<Scalar>& keys,
                            const KeyWeights<Scalar>& weights, const MatrixRef<Scalar>& queries,
                            const AttendOptions& options, Matrix<Scalar>& out, Index query_offset) {
  const bool self = keys.data() == queries.data() && keys.rows() == queries.rows() &&
                    keys.cols() == queries.cols() && keys.outerStride() == queries.outerStride();
  const FieldKernel kernel = field_kernel(model, options, self);
  if (kernel == FieldKernel::small_dim) {
    out = small_dim_attention_field(model, keys, weights, queries);
    return;
  }
  if constexpr (std::is_same_v<Scalar, double>) {
    if (kernel == FieldKernel::tied_small_dim)
      return tied_small_dim_attention_field(model, weights, keys, out);
    if (kernel == FieldKernel::tied_gemm)
      return tied_gemm_attention_field(model, weights, keys, out);
  }
  // The streaming kernel, on the keys of positive weight (gathered when some
  // weight is zero) and the log-weights prepared once in key_weights.
  if (options.normalization != Normalization::softmax) {
    // Not the flow's (flow() rejects it): attention_field on the measure of the keys.
    out = attention_field(model, Measure<Scalar>(Matrix<Scalar>(keys), weights.weights), queries,
                          options);
    return;
  }
  check_options(model, options);  // O(1): what the Measure path checked besides the inputs
  if (weights.total_overflows) throw invalid_argument("weights: the sum of the weights overflows");
  const Index p = static_cast<Index>(weights.positive.size());
  const bool all_positive = p == keys.rows();
  Matrix<Scalar> gathered;
  if (!all_positive) {
    gathered.resize(p, keys.cols());
    for (Index t = 0; t < p; ++t)
      gathered.row(t) = keys.row(weights.positive[static_cast<size_t>(t)]);
  }
  const StreamKeys<Scalar> stream{all_positive ? keys : MatrixRef<Scalar>(gathered),
                                  weights.positive_log_weights.data(),
                                  all_positive ? nullptr : weights.positive.data()};
  out = streaming_attention<Scalar>(model, stream, queries, options, true, nullptr, query_offset);
  // The Measure the streaming kernel took before held a copy of the keys: the
  // queries never counted as its atoms.
  check_finite_result(model, keys, queries, false, out);
}

#define MEASATTN_INSTANTIATE(S)                                                                    \
  template KeyWeights<S> key_weights(const Vector<S>&);                                            \
  template FieldKernel field_kernel(const Model<S>&, const AttendOptions&, bool);                  \
  template void attention_field_kernel(const Model<S>&, const MatrixRef<S>&, const KeyWeights<S>&, \
                                       const MatrixRef<S>&, const AttendOptions&, Matrix<S>&,      \
                                       Index);

MEASATTN_INSTANTIATE(float)
MEASATTN_INSTANTIATE(double)
#undef MEASATTN_INSTANTIATE

}  // namespace measattn::detail
