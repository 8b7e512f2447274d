// The right-hand side of the particle flow (docs/theory.md#flow): the attention
// field of the particles' own measure (through the kernel layer's entry point,
// attention/kernels.hpp), its tangent projection on the sphere, the
// unnormalized ("USA") field, and the observables E_beta and cluster counts.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "attention/kernels.hpp"
#include "common/collectives.hpp"
#include "common/parallel.hpp"
#include "flow/internal.hpp"
#include "measattn/error.hpp"

namespace measattn {

template <class Scalar>
bool is_canonical(const Model<Scalar>& model, double* beta) {
  if (model.num_heads != 1 || !detail::dot_potential(model) || model.has_bias()) return false;
  const Index d = model.w_q.rows();
  auto identity = [d](const Matrix<Scalar>& m) { return m.rows() == d && detail::is_identity(m); };
  if (!identity(model.w_q) || !identity(model.w_k) || !identity(model.w_v) ||
      !identity(model.w_o)) {
    return false;
  }
  if (beta) *beta = 1.0 / static_cast<double>(model.tau());
  return true;
}

namespace detail {

namespace {

// Rows per query block and keys per key block of the unnormalized field.
constexpr Index kRowBlock = 64;
constexpr Index kKeyBlock = 256;
// Below this many query-key pairs a field evaluation runs on one thread.
constexpr Index kParallelWork = 1 << 16;

// sum_j w_j exp(beta <x_i, x_j>) x_j for each row i (no projection). O(n^2 d).
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
  RegionGuard guard;  // exceptions and Ctrl-C, per row block
#pragma omp parallel if (n * n > kParallelWork)
  {
    Array s;
    guard.run([&] { s.resize(kKeyBlock); });
#pragma omp for schedule(dynamic, 1)
    for (Index blk = 0; blk < blocks; ++blk) {
      guard.run([&] {
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
      });
    }
  }
  guard.finish();
  return out;
}

}  // namespace

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
    // Scaled norm: the plain one under- or overflows for entries near 1e-160 or 1e155.
    const Scalar norm = x.row(i).stableNorm();
    if (!(norm > 0) || !std::isfinite(norm)) {
      if (what && *what) {
        throw invalid_argument(std::string(what) + ": atom " + std::to_string(i) +
                               (x.row(i).allFinite() ? " has zero length" : " is not finite") +
                               " and cannot be put on the unit sphere");
      }
      return false;
    }
    x.row(i) /= norm;
  }
  return true;
}

template <class Scalar>
Matrix<Scalar> unit_directions(const MatrixRef<Scalar>& x) {
  Matrix<Scalar> u(x.rows(), x.cols());
  for (Index i = 0; i < x.rows(); ++i) {
    const Scalar norm = x.row(i).stableNorm();
    if (norm > 0) {
      u.row(i) = x.row(i) / norm;
    } else {
      u.row(i).setZero();  // the origin has no direction: read as the origin
    }
  }
  return u;
}

// What flow_field checks before it evaluates (flow() checks the same once).
template <class Scalar>
void check_field_inputs(const Model<Scalar>& model, const Vector<Scalar>& weights,
                        const MatrixRef<Scalar>& particles) {
  model.validate();
  const Index n = particles.rows(), d = particles.cols();
  if (n == 0) throw invalid_argument("particles: no particles");
  if (model.query_dim() != d || model.key_dim() != d) {
    throw invalid_argument("particles: dimension " + std::to_string(d) +
                           " but the model's queries and keys have dimensions " +
                           std::to_string(model.query_dim()) + " and " +
                           std::to_string(model.key_dim()));
  }
  if (weights.size() != n) {
    throw invalid_argument("weights: " + std::to_string(weights.size()) + " weights for " +
                           std::to_string(n) + " particles");
  }
  if (particles.allFinite()) return;  // one pass in storage order; the row only on failure
  for (Index i = 0; i < n; ++i) {
    if (!particles.row(i).allFinite()) {
      throw invalid_argument("particles: particle " + std::to_string(i) + " is not finite");
    }
  }
}

// The attention field of a flow stage over several ranks. Every rank holds
// every particle (a flow's state is O(n d), its work O(n^2 d)); the ranks
// split the query rows, each computes its rows with the kernel one process
// would choose, and the rows are gathered to every rank. The per-row kernels
// (small_dim, streaming) compute every row by the same operations whatever
// the other rows, so the field is bit-identical to one process. The tied
// kernels (Q = K, no biases: the canonical model among others) visit pairs of
// blocks and use each logit for both rows of the pair; they are not split:
// every rank computes the whole field (same result, no speed-up). Causal
// rows are independent too: each rank's rows keep their global positions
// (the streaming kernel's query offset). Sinkhorn attention needs every
// column at every iteration and is refused.
template <class Scalar>
void distributed_flow_field(const Model<Scalar>& model, const KeyWeights<Scalar>& weights,
                            const MatrixRef<Scalar>& particles, const AttendOptions& attention,
                            Matrix<Scalar>& out) {
  const Communicator& comm = attention.communicator;
  if (attention.normalization != Normalization::softmax) {
    throw invalid_argument(
        "normalization: a sinkhorn flow is not distributed (every iteration needs every "
        "token's column sums on every rank): run it on one process");
  }
  AttendOptions local_options = attention;
  local_options.communicator = Communicator();
  const FieldKernel kernel = field_kernel(model, local_options, true);
  if (kernel == FieldKernel::tied_small_dim || kernel == FieldKernel::tied_gemm) {
    attention_field_kernel(model, particles, weights, particles, local_options, out);
    return;
  }
  const Index n = particles.rows();
  const RowRange rows = shard_rows(n, comm);
  Matrix<Scalar> local;
  std::exception_ptr error;
  try {
    if (rows.size() > 0) {
      attention_field_kernel(model, particles, weights,
                             particles.middleRows(rows.begin, rows.size()), local_options, local,
                             rows.begin);
    } else {
      local.resize(0, model.out_dim());
    }
  } catch (...) {
    error = std::current_exception();
  }
  agree(comm, error);
  out.resize(n, model.out_dim());
  all_gather_shards(comm, n, model.out_dim(), local.data(), out.data());
}

template <class Scalar>
void evaluate_flow_field(const Model<Scalar>& model, const KeyWeights<Scalar>& weights,
                         const MatrixRef<Scalar>& particles, const FlowOptions& options,
                         double beta, Matrix<Scalar>& out) {
  if (options.field == FlowField::unnormalized) {
    out = unnormalized_field(weights.weights, particles, beta);
    if (!out.allFinite()) {
      // Off the sphere beta <x_i, x_j> is not bounded by beta.
      throw invalid_argument("particles: exp(beta <x_i, x_j>) overflows double");
    }
  } else {
    const NormPlacement norm = options.placement();
    // pre: attention reads the directions u_i = x_i / |x_i| (u_i = 0 at the origin).
    Matrix<Scalar> directions;
    if (norm == NormPlacement::pre) directions = unit_directions<Scalar>(particles);
    const MatrixRef<Scalar> input =
        norm == NormPlacement::pre ? MatrixRef<Scalar>(directions) : particles;
    if (!options.attention.communicator.distributed()) {
      attention_field_kernel(model, input, weights, input, options.attention, out);
    } else {
      distributed_flow_field(model, weights, input, options.attention, out);
    }
  }
  if (options.placement() == NormPlacement::post) project_tangent<Scalar>(particles, out);
}

// beta of the canonical model for the unnormalized field.
template <class Scalar>
double unnormalized_beta(const Model<Scalar>& model) {
  double beta = 0;
  if (!is_canonical(model, &beta)) {
    throw invalid_argument("field: the unnormalized field needs the canonical model");
  }
  if (beta > 700) {
    throw invalid_argument("beta: the unnormalized field overflows (exp(beta)) for beta > 700");
  }
  return beta;
}

}  // namespace detail

template <class Scalar>
void flow_field(const Model<Scalar>& model, const Vector<Scalar>& weights,
                const MatrixRef<Scalar>& particles, const FlowOptions& options,
                Matrix<Scalar>& out) {
  auto overlaps = [&] {
    if (out.size() == 0 || particles.size() == 0) return false;
    const auto* p0 = particles.data();
    const auto* p1 = p0 + (particles.rows() - 1) * particles.outerStride() + particles.cols();
    return out.data() < p1 && p0 < out.data() + out.size();
  };
  if (overlaps()) {
    // out overlaps the particles: computed aside, then moved in.
    Matrix<Scalar> f;
    flow_field(model, weights, particles, options, f);
    out = std::move(f);
    return;
  }
  const double beta =
      options.field == FlowField::unnormalized ? detail::unnormalized_beta(model) : 0.0;
  detail::check_field_inputs(model, weights, particles);
  detail::evaluate_flow_field(model, detail::key_weights(weights), particles, options, beta, out);
}

template <class Scalar>
Matrix<Scalar> flow_field(const Model<Scalar>& model, const Vector<Scalar>& weights,
                          const MatrixRef<Scalar>& particles, const FlowOptions& options) {
  Matrix<Scalar> f;
  flow_field(model, weights, particles, options, f);
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
  detail::RegionGuard guard;  // exceptions and Ctrl-C, per particle
#pragma omp parallel if (n * n > detail::kParallelWork)
  {
    Eigen::ArrayXd s;
    guard.run([&] { s.resize(n); });
#pragma omp for schedule(dynamic, 16)
    for (Index i = 0; i < n; ++i) {
      guard.run([&] {
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
      });
    }
  }
  guard.finish();
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
    throw invalid_argument("tolerance: must be finite and >= 0");
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

std::vector<EquiangularState> equiangular_reference(NormPlacement norm, Index n, double beta,
                                                    double rho0, double r0,
                                                    const std::vector<double>& times, Index steps) {
  if (norm != NormPlacement::none && norm != NormPlacement::post && norm != NormPlacement::pre) {
    throw invalid_argument("norm: expected none, post or pre");
  }
  if (n < 2) throw invalid_argument("n: must be >= 2 (a cosine needs two tokens)");
  if (!(beta > 0) || !std::isfinite(beta)) throw invalid_argument("beta: must be finite and > 0");
  const double nm1 = static_cast<double>(n - 1);
  if (!(rho0 <= 1) || !(rho0 * nm1 >= -1)) {
    throw invalid_argument("rho0: must be in [-1/(n-1), 1] (the Gram matrix of unit vectors)");
  }
  if (norm == NormPlacement::post) r0 = 1;
  if (!(r0 > 0) || !std::isfinite(r0)) throw invalid_argument("r0: must be finite and > 0");
  if (steps < 1) throw invalid_argument("steps: must be >= 1");
  for (size_t k = 0; k < times.size(); ++k) {
    if (!(times[k] >= 0) || !std::isfinite(times[k]) || (k > 0 && !(times[k] >= times[k - 1]))) {
      throw invalid_argument("times: must be finite, >= 0 and non-decreasing");
    }
  }
  // The state (u, r) = (1 - rho, norm); its derivative.
  struct Y {
    double u, r;
  };
  auto rhs = [&](const Y& y) {
    const double b = norm == NormPlacement::none ? beta * y.r * y.r : beta;
    const double e = y.u == 0 ? 1.0 : std::exp(-b * y.u);  // b = inf, u = 0 is no NaN
    const double c = e / (1 + nm1 * e);
    const double s = static_cast<double>(n) - nm1 * y.u;  // 1 + (n - 1) rho
    const double g = 1 - nm1 * y.u * c;                   // <u_i, Gamma_i>
    Y dy{-2 * c * s * y.u, 0.0};
    if (norm == NormPlacement::pre) {
      dy.u /= y.r;
      dy.r = g;
    } else if (norm == NormPlacement::none) {
      dy.r = y.r * g;
    }
    return dy;
  };
  auto axpy = [](const Y& y, double h, const Y& k) { return Y{y.u + h * k.u, y.r + h * k.r}; };
  Y y{1 - rho0, r0};
  double t = 0;
  std::vector<EquiangularState> out;
  out.reserve(times.size());
  for (const double target : times) {
    const double h = (target - t) / static_cast<double>(steps);
    if (h > 0) {
      for (Index l = 0; l < steps; ++l) {
        const Y k1 = rhs(y);
        const Y k2 = rhs(axpy(y, h / 2, k1));
        const Y k3 = rhs(axpy(y, h / 2, k2));
        const Y k4 = rhs(axpy(y, h, k3));
        y.u += h / 6 * (k1.u + 2 * k2.u + 2 * k3.u + k4.u);
        y.r += h / 6 * (k1.r + 2 * k2.r + 2 * k3.r + k4.r);
      }
    }
    if (!std::isfinite(y.r) || !std::isfinite(y.u)) {
      throw invalid_argument("times: the common norm overflows double before t = " +
                             std::to_string(target));
    }
    t = target;
    out.push_back({t, 1 - y.u, y.u, y.r});
  }
  return out;
}

#define MEASATTN_INSTANTIATE(S)                                                              \
  template bool is_canonical(const Model<S>&, double*);                                      \
  template Matrix<S> flow_field(const Model<S>&, const Vector<S>&, const MatrixRef<S>&,      \
                                const FlowOptions&);                                         \
  template void flow_field(const Model<S>&, const Vector<S>&, const MatrixRef<S>&,           \
                           const FlowOptions&, Matrix<S>&);                                  \
  template double sphere_energy(const MatrixRef<S>&, const Vector<S>&, double);              \
  template void detail::evaluate_flow_field(const Model<S>&, const detail::KeyWeights<S>&,   \
                                            const MatrixRef<S>&, const FlowOptions&, double, \
                                            Matrix<S>&);                                     \
  template void detail::project_tangent(const MatrixRef<S>&, Matrix<S>&);                    \
  template bool detail::normalize_rows(Matrix<S>&, const char*);                             \
  template Matrix<S> detail::unit_directions(const MatrixRef<S>&);

MEASATTN_INSTANTIATE(float)
MEASATTN_INSTANTIATE(double)
#undef MEASATTN_INSTANTIATE

}  // namespace measattn
