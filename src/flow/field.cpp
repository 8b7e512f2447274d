// The right-hand side of the particle flow (THEORY Section 3): the attention
// field of the particles' own measure, its tangent projection on the sphere, the
// unnormalized ("USA") field, and the observables E_beta and cluster counts.
#include <omp.h>

// GCC 12 reports a false "used uninitialized" inside its own AVX-512 intrinsics
// when Eigen's vectorized exp is inlined into the fused expressions below.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "flow/internal.hpp"
#include "measattn/error.hpp"

namespace measattn {

template <class Scalar>
bool is_canonical(const Model<Scalar>& model, double* beta) {
  if (model.num_heads != 1 || model.potential != Potential::dot || model.has_bias()) return false;
  const Index d = model.w_q.rows();
  auto identity = [d](const Matrix<Scalar>& m) {
    return m.rows() == d && m.cols() == d && m == Matrix<Scalar>::Identity(d, d);
  };
  if (!identity(model.w_q) || !identity(model.w_k) || !identity(model.w_v) ||
      !identity(model.w_o)) {
    return false;
  }
  if (beta) *beta = 1.0 / static_cast<double>(model.tau());
  return true;
}

namespace detail {

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

// exp(x) for x <= 709 in double precision without a division (Eigen's exp uses a
// rational approximation): x = k ln 2 + r, |r| <= ln(2)/2, exp(r) by its Taylor
// polynomial of degree 13 (truncation < 5e-18 relative), times 2^k built in the
// exponent bits. Arguments below -708 return exp(-708) ~ 3e-308 instead of a
// subnormal or zero (harmless here: the row's normalizer is >= 1e-280 or the row
// is recomputed exactly). Relative error a few ulp. A plain loop that GCC
// vectorizes (no branches, no reductions).
inline void exp_shifted_logits3(double* out, const double* lw, const double* k0, const double* k1,
                                const double* k2, double q0, double q1, double q2, double shift,
                                Index count) {
  constexpr double log2e = 1.4426950408889634074;
  constexpr double ln2_hi = 6.93145751953125e-1;
  constexpr double ln2_lo = 1.42860682030941723212e-6;
  constexpr double magic = 6755399441055744.0;  // 1.5 * 2^52: round to nearest integer
  for (Index j = 0; j < count; ++j) {
    double x = lw[j] + q0 * k0[j] + q1 * k1[j] + q2 * k2[j] - shift;
    x = x < -708.0 ? -708.0 : (x > 709.0 ? 709.0 : x);
    const double t = x * log2e + magic;
    const double k = t - magic;
    const double r = (x - k * ln2_hi) - k * ln2_lo;
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    const std::int64_t ki = std::bit_cast<std::int64_t>(t) - std::bit_cast<std::int64_t>(magic);
    out[j] = p * std::bit_cast<double>((ki + 1023) << 52);
  }
}

}  // namespace

template <class Scalar>
Matrix<Scalar> small_dim_attention_field(const Model<Scalar>& model, const Vector<Scalar>& weights,
                                         const MatrixRef<Scalar>& x) {
  using Array = Eigen::Array<Scalar, Eigen::Dynamic, 1>;
  const Index n = x.rows();
  const Index heads = model.num_heads;
  const Index k = model.head_dim();
  const Index e = model.embed_dim();
  const Scalar inv_tau = Scalar(1) / model.tau();

  // Keys of positive weight.
  std::vector<Index> keep;
  keep.reserve(static_cast<size_t>(n));
  for (Index j = 0; j < n; ++j) {
    if (weights[j] > 0) keep.push_back(j);
  }
  const Index m = static_cast<Index>(keep.size());
  Matrix<Scalar> keys(m, x.cols());
  Array log_w(m);
  for (Index t = 0; t < m; ++t) {
    keys.row(t) = x.row(keep[static_cast<size_t>(t)]);
    log_w[t] = std::log(weights[keep[static_cast<size_t>(t)]]);
  }
  const Scalar log_w_max = log_w.maxCoeff();

  // Projections: queries pre-scaled by 1/tau (n x E); keys and values transposed
  // (E x m) so that a head's coordinate is a contiguous row.
  Matrix<Scalar> q = x * model.w_q.transpose();
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
#pragma omp parallel if (n * m > kParallelWork)
  {
    Array s(kKeyBlock);
    Array shift(kRowBlock), sum(kRowBlock);
    Matrix<Scalar> acc(kRowBlock, k);
#pragma omp for schedule(dynamic, 1)
    for (Index b = 0; b < blocks; ++b) {
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
            // Logits and exponentials in one fused pass for the smallest head sizes.
            switch (k) {
              case 1:
                sr = (lw + qr[0] * key(0) - sh).exp();
                break;
              case 2:
                sr = (lw + qr[0] * key(0) + qr[1] * key(1) - sh).exp();
                break;
              case 3:
                if constexpr (std::is_same_v<Scalar, double>) {
                  exp_shifted_logits3(sr.data(), lw.data(), &kt(h * k, j0), &kt(h * k + 1, j0),
                                      &kt(h * k + 2, j0), qr[0], qr[1], qr[2], sh, cols);
                } else {
                  sr = (lw + qr[0] * key(0) + qr[1] * key(1) + qr[2] * key(2) - sh).exp();
                }
                break;
              case 4:
                sr = (lw + qr[0] * key(0) + qr[1] * key(1) + qr[2] * key(2) + qr[3] * key(3) - sh)
                         .exp();
                break;
              default:
                sr = lw - sh;
                for (Index c = 0; c < k; ++c) sr += qr[c] * key(c);
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
    }
  }
  Matrix<Scalar> result = out * model.w_o.transpose();
  if (model.b_o.size()) result.rowwise() += model.b_o.transpose();
  return result;
}

template <class Scalar>
Matrix<Scalar> particle_attention_field(const Model<Scalar>& model, const Vector<Scalar>& weights,
                                        const MatrixRef<Scalar>& particles,
                                        const AttendOptions& options) {
  if (model.potential == Potential::dot && model.head_dim() <= 8 && options.query_block == 0 &&
      options.key_block == 0) {
    return small_dim_attention_field(model, weights, particles);
  }
  const Measure<Scalar> mu(Matrix<Scalar>(particles), weights);
  return attention_field(model, mu, particles, options);
}

template <class Scalar>
Matrix<Scalar> unnormalized_field(const Vector<Scalar>& weights, const MatrixRef<Scalar>& x,
                                  double beta) {
  using Array = Eigen::Array<Scalar, Eigen::Dynamic, 1>;
  const Index n = x.rows();
  const Index d = x.cols();
  const Matrix<Scalar> xt = x.transpose();  // d x n, coordinates contiguous
  const Scalar b = static_cast<Scalar>(beta);
  Matrix<Scalar> out(n, d);
  const Index blocks = (n + kRowBlock - 1) / kRowBlock;
#pragma omp parallel if (n * n > kParallelWork)
  {
    Array s(kKeyBlock);
#pragma omp for schedule(dynamic, 1)
    for (Index blk = 0; blk < blocks; ++blk) {
      const Index i0 = blk * kRowBlock;
      const Index rows = std::min(kRowBlock, n - i0);
      out.middleRows(i0, rows).setZero();
      for (Index j0 = 0; j0 < n; j0 += kKeyBlock) {
        const Index cols = std::min(kKeyBlock, n - j0);
        for (Index r = 0; r < rows; ++r) {
          auto sr = s.head(cols);
          sr.setZero();
          for (Index c = 0; c < d; ++c) {
            sr += (b * x(i0 + r, c)) * xt.row(c).segment(j0, cols).transpose().array();
          }
          sr = sr.exp() * weights.segment(j0, cols).array();
          for (Index c = 0; c < d; ++c) {
            out(i0 + r, c) += (sr * xt.row(c).segment(j0, cols).transpose().array()).sum();
          }
        }
      }
    }
  }
  return out;
}

template <class Scalar>
void project_tangent(const MatrixRef<Scalar>& x, Matrix<Scalar>& y) {
  for (Index i = 0; i < x.rows(); ++i) {
    const Scalar dot = x.row(i).dot(y.row(i));
    y.row(i) -= dot * x.row(i);
  }
}

template <class Scalar>
bool normalize_rows(Matrix<Scalar>& x, const char* what) {
  for (Index i = 0; i < x.rows(); ++i) {
    const Scalar norm = x.row(i).norm();
    if (!(norm > 0) || !std::isfinite(norm)) {
      if (what && *what) {
        throw invalid_argument(std::string(what) + ": atom " + std::to_string(i) +
                               " has zero length and cannot be put on the unit sphere");
      }
      return false;
    }
    x.row(i) /= norm;
  }
  return true;
}

}  // namespace detail

template <class Scalar>
Matrix<Scalar> flow_field(const Model<Scalar>& model, const Vector<Scalar>& weights,
                          const MatrixRef<Scalar>& particles, const FlowOptions& options) {
  Matrix<Scalar> f;
  if (options.field == FlowField::unnormalized) {
    double beta = 0;
    if (!is_canonical(model, &beta)) {
      throw invalid_argument("field: the unnormalized field needs the canonical model");
    }
    f = detail::unnormalized_field(weights, particles, beta);
  } else {
    f = detail::particle_attention_field(model, weights, particles, options.attention);
  }
  if (options.sphere) detail::project_tangent<Scalar>(particles, f);
  return f;
}

template <class Scalar>
double sphere_energy(const MatrixRef<Scalar>& particles, const Vector<Scalar>& weights,
                     double beta) {
  if (!(beta > 0) || !std::isfinite(beta)) throw invalid_argument("beta: must be positive");
  if (weights.size() != particles.rows()) throw invalid_argument("weights: size mismatch");
  const Index n = particles.rows();
  const Index d = particles.cols();
  const Eigen::MatrixXd x = particles.template cast<double>();
  const Eigen::MatrixXd xt = x.transpose();
  const Eigen::VectorXd w = weights.template cast<double>();
  // log of row i's term: log w_i + log sum_j w_j exp(beta <x_i, x_j>), all in double.
  Eigen::VectorXd log_row(n);
#pragma omp parallel if (n * n > detail::kParallelWork)
  {
    Eigen::ArrayXd s(n);
#pragma omp for schedule(dynamic, 16)
    for (Index i = 0; i < n; ++i) {
      s.setZero();
      for (Index c = 0; c < d; ++c) s += (beta * x(i, c)) * xt.row(c).transpose().array();
      double mx = -std::numeric_limits<double>::infinity();
      for (Index j = 0; j < n; ++j) {
        if (w[j] > 0) mx = std::max(mx, s[j]);
      }
      double total = 0;
      for (Index j = 0; j < n; ++j) {
        if (w[j] > 0) total += w[j] * std::exp(s[j] - mx);
      }
      log_row[i] = w[i] > 0 ? std::log(w[i]) + mx + std::log(total)
                            : -std::numeric_limits<double>::infinity();
    }
  }
  const double mx = log_row.maxCoeff();
  double total = 0;
  for (Index i = 0; i < n; ++i) total += std::exp(log_row[i] - mx);
  return std::exp(mx + std::log(total)) / (2 * beta);
}

namespace {

struct UnionFind {
  std::vector<Index> parent;
  explicit UnionFind(Index n) : parent(static_cast<size_t>(n)) {
    std::iota(parent.begin(), parent.end(), Index{0});
  }
  Index find(Index a) {
    while (parent[static_cast<size_t>(a)] != a) {
      parent[static_cast<size_t>(a)] = parent[static_cast<size_t>(parent[static_cast<size_t>(a)])];
      a = parent[static_cast<size_t>(a)];
    }
    return a;
  }
  bool unite(Index a, Index b) {
    a = find(a);
    b = find(b);
    if (a == b) return false;
    if (a < b) std::swap(a, b);
    parent[static_cast<size_t>(a)] = b;
    return true;
  }
};

}  // namespace

Index cluster_count(const MatrixRef<double>& particles, double tolerance, Index max_points) {
  if (!(tolerance >= 0) || !std::isfinite(tolerance)) {
    throw invalid_argument("cluster tolerance: must be finite and >= 0");
  }
  if (max_points < 1) throw invalid_argument("max_points: must be >= 1");
  const Index total = particles.rows();
  if (total == 0) return 0;
  // Deterministic evenly spaced subsample above max_points.
  const Index n = std::min(total, max_points);
  Eigen::MatrixXd x(n, particles.cols());
  for (Index t = 0; t < n; ++t) {
    const Index i = n == total ? t : static_cast<Index>((static_cast<double>(t) * total) / n);
    x.row(t) = particles.row(i);
  }
  // First principal direction by a few power iterations (deterministic start).
  const Eigen::RowVectorXd mean = x.colwise().mean();
  const Eigen::MatrixXd centered = x.rowwise() - mean;
  Eigen::VectorXd dir = Eigen::VectorXd::Ones(x.cols()) / std::sqrt(double(x.cols()));
  for (int it = 0; it < 30; ++it) {
    Eigen::VectorXd next = centered.transpose() * (centered * dir);
    const double norm = next.norm();
    if (!(norm > 0)) break;
    dir = next / norm;
  }
  Eigen::VectorXd proj = x * dir;
  std::vector<Index> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), Index{0});
  std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) { return proj[a] < proj[b]; });
  UnionFind uf(n);
  Index components = n;
  const double tol2 = tolerance * tolerance;
  for (size_t a = 0; a < order.size(); ++a) {
    const Index i = order[a];
    for (size_t b = a + 1; b < order.size(); ++b) {
      const Index j = order[b];
      if (proj[j] - proj[i] > tolerance) break;
      if (uf.find(i) == uf.find(j)) continue;
      if ((x.row(i) - x.row(j)).squaredNorm() <= tol2 && uf.unite(i, j)) --components;
    }
  }
  return components;
}

double orthogonal_start_cosine(Index n, double beta, double t, Index steps) {
  if (n < 1) throw invalid_argument("n: must be >= 1");
  if (!(beta > 0) || !std::isfinite(beta) || beta > 700) {
    throw invalid_argument("beta: must be in (0, 700]");
  }
  if (!(t >= 0) || !std::isfinite(t)) throw invalid_argument("t: must be finite and >= 0");
  if (steps < 1) throw invalid_argument("steps: must be >= 1");
  const double nm1 = static_cast<double>(n - 1);
  const double eb = std::exp(beta);
  auto rhs = [&](double g) {
    const double ebg = std::exp(beta * g);
    return 2 * ebg * (1 - g) * (nm1 * g + 1) / (eb + nm1 * ebg);
  };
  const double h = t / static_cast<double>(steps);
  double g = 0;
  for (Index l = 0; l < steps; ++l) {
    const double k1 = rhs(g);
    const double k2 = rhs(g + 0.5 * h * k1);
    const double k3 = rhs(g + 0.5 * h * k2);
    const double k4 = rhs(g + h * k3);
    g += h / 6 * (k1 + 2 * k2 + 2 * k3 + k4);
  }
  return g;
}

#define MEASATTN_INSTANTIATE(S)                                                                   \
  template bool is_canonical(const Model<S>&, double*);                                           \
  template Matrix<S> flow_field(const Model<S>&, const Vector<S>&, const MatrixRef<S>&,           \
                                const FlowOptions&);                                              \
  template double sphere_energy(const MatrixRef<S>&, const Vector<S>&, double);                   \
  template Matrix<S> detail::small_dim_attention_field(const Model<S>&, const Vector<S>&,         \
                                                       const MatrixRef<S>&);                      \
  template Matrix<S> detail::particle_attention_field(const Model<S>&, const Vector<S>&,          \
                                                      const MatrixRef<S>&, const AttendOptions&); \
  template Matrix<S> detail::unnormalized_field(const Vector<S>&, const MatrixRef<S>&, double);   \
  template void detail::project_tangent(const MatrixRef<S>&, Matrix<S>&);                         \
  template bool detail::normalize_rows(Matrix<S>&, const char*);

MEASATTN_INSTANTIATE(float)
MEASATTN_INSTANTIATE(double)
#undef MEASATTN_INSTANTIATE

}  // namespace measattn
