// Gaussian measures: validation, the affine attention field of N(m, Sigma)
// (dot, l2, Sinkhorn), the push-forward, Bures W2, Gauss–Hermite atoms.
// Derivations: docs/theory.md#gaussian. Everything is computed in double.
#include <Eigen/Eigenvalues>
#include <Eigen/LU>
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "gaussian/internal.hpp"
#include "measattn/error.hpp"
#include "measattn/gaussian.hpp"

namespace measattn {

namespace {

std::string number(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

}  // namespace

namespace detail {

Eigen::MatrixXd symmetric_function(const Eigen::MatrixXd& s, double (*f)(double)) {
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(s);
  const Eigen::VectorXd values = eig.eigenvalues().unaryExpr(f);
  return eig.eigenvectors() * values.asDiagonal() * eig.eigenvectors().transpose();
}

Eigen::MatrixXd psd_sqrt(const Eigen::MatrixXd& s) {
  return symmetric_function(s, [](double v) { return std::sqrt(std::max(v, 0.0)); });
}

void check_gaussian_model(const Model<double>& model, Index dim, const std::string& what) {
  model.validate();
  if (model.potential != Potential::dot && model.potential != Potential::l2) {
    throw invalid_argument(
        "potential: the Gaussian closed form needs the dot or l2 potential, "
        "got " +
        to_string(model.potential) + " (not a Gaussian tilt)");
  }
  if (model.query_dim() != dim || model.key_dim() != dim) {
    throw invalid_argument(what + ": dimension " + std::to_string(dim) +
                           " differs from the model's query/key dimensions " +
                           std::to_string(model.query_dim()) + "/" +
                           std::to_string(model.key_dim()));
  }
}

Affine affine_field(const Model<double>& model, const Eigen::VectorXd& m,
                    const Eigen::MatrixXd& sigma, Normalization normalization) {
  const Index d = m.size();
  const Index k = model.head_dim();
  const Index e = model.embed_dim();
  Eigen::MatrixXd lin(e, d);
  Eigen::VectorXd off(e);
  const Eigen::MatrixXd id = Eigen::MatrixXd::Identity(d, d);
  // Sinkhorn: the whitening of Sigma is shared by every head.
  Eigen::MatrixXd root, pinv_root;
  if (normalization == Normalization::sinkhorn) {
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(sigma);
    const Eigen::VectorXd ev = eig.eigenvalues();
    const double top = std::max(ev.cwiseAbs().maxCoeff(), 0.0);
    Eigen::VectorXd r(d), ri(d);
    for (Index i = 0; i < d; ++i) {
      const bool kept = ev[i] > 1e-13 * top && ev[i] > 0;
      r[i] = kept ? std::sqrt(ev[i]) : 0.0;
      ri[i] = kept ? 1 / r[i] : 0.0;
    }
    root = eig.eigenvectors() * r.asDiagonal() * eig.eigenvectors().transpose();
    pinv_root = eig.eigenvectors() * ri.asDiagonal() * eig.eigenvectors().transpose();
  }
  for (Index h = 0; h < model.num_heads; ++h) {
    const Head<double> head = model.head(h);
    const Eigen::MatrixXd q = head.q, kk = head.k, v = head.v;
    const Eigen::VectorXd bq = head.b_q, bk = head.b_k, bv = head.b_v;
    const double tau = head.tau;
    Eigen::MatrixXd lh;  // k x d: linear part of the conditional mean E[y | x]
    Eigen::VectorXd ch;  // its offset
    if (normalization == Normalization::sinkhorn) {
      // Cross term y^T C x of G; the rest of G is absorbed by the potentials f, g.
      const double factor = head.potential == Potential::l2 ? 2.0 : 1.0;
      const Eigen::MatrixXd c = factor * kk.transpose() * q / tau;
      const Eigen::MatrixXd ct = root * c * root;
      const Eigen::MatrixXd gram = ct * ct.transpose();
      const Eigen::MatrixXd shrink = symmetric_function(
          gram, [](double l) { return 2.0 / (1.0 + std::sqrt(1.0 + 4.0 * std::max(l, 0.0))); });
      const Eigen::MatrixXd t = root * (shrink * ct) * pinv_root;  // E[y|x] = m + T (x - m)
      lh = t;
      ch = m - t * m;
    } else if (head.potential == Potential::dot) {
      // Tilt exp(<a(x), y>), a(x) = K^T (Q x + b_q) / tau: N(m + Sigma a(x), Sigma).
      const Eigen::MatrixXd sk = sigma * kk.transpose() / tau;  // d x k
      lh = sk * q;
      ch = m + sk * bq;
    } else {
      // Tilt exp(-y^T P y / 2 + <b(x), y>): mean (I + Sigma P)^{-1} (m + Sigma b(x)).
      const Eigen::MatrixXd p = 2.0 * kk.transpose() * kk / tau;
      const Eigen::PartialPivLU<Eigen::MatrixXd> lu(id + sigma * p);
      const Eigen::MatrixXd bs = lu.solve(sigma * (2.0 / tau) * kk.transpose());  // d x k
      lh = bs * q;
      ch = lu.solve(m) + bs * (bq - bk);
    }
    lin.middleRows(h * k, k) = v * lh;
    off.segment(h * k, k) = v * ch + bv;
  }
  const Eigen::MatrixXd wo = model.w_o;
  Affine out;
  out.linear = wo * lin;
  out.offset = wo * off;
  if (model.b_o.size() > 0) out.offset += Eigen::VectorXd(model.b_o);
  return out;
}

}  // namespace detail

template <class Scalar>
GaussianMeasure<Scalar>::GaussianMeasure(Vector<Scalar> mean, Matrix<Scalar> cov)
    : mean_(std::move(mean)), cov_(std::move(cov)) {
  const Index d = mean_.size();
  if (d == 0) throw invalid_argument("mean: empty (dimension 0)");
  if (!mean_.allFinite()) throw invalid_argument("mean: an entry is NaN or infinite");
  if (cov_.rows() != d || cov_.cols() != d) {
    throw invalid_argument("cov: shape " + std::to_string(cov_.rows()) + " x " +
                           std::to_string(cov_.cols()) + ", expected " + std::to_string(d) + " x " +
                           std::to_string(d) + " (the mean has length " + std::to_string(d) + ")");
  }
  if (!cov_.allFinite()) throw invalid_argument("cov: an entry is NaN or infinite");
  const Eigen::MatrixXd c = cov_.template cast<double>();
  // Relative tolerances: 1e-10, or 100 ulps of Scalar when that is larger (float).
  const double rel =
      std::max(1e-10, 100.0 * static_cast<double>(std::numeric_limits<Scalar>::epsilon()));
  const double scale = std::max(c.cwiseAbs().maxCoeff(), 1e-300);
  const double asym = (c - c.transpose()).cwiseAbs().maxCoeff();
  if (asym > rel * scale) {
    throw invalid_argument("cov: not symmetric (max |cov - cov^T| = " + number(asym) + ")");
  }
  const Eigen::MatrixXd sym = (c + c.transpose()) / 2;
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(sym, Eigen::EigenvaluesOnly);
  const double lowest = eig.eigenvalues()[0];
  const double top = eig.eigenvalues().cwiseAbs().maxCoeff();
  if (lowest < -rel * std::max(top, 1e-300)) {
    throw invalid_argument("cov: not positive semi-definite (smallest eigenvalue " +
                           number(lowest) + ")");
  }
  cov_ = sym.template cast<Scalar>();
}

template <class Scalar>
AffineField<Scalar> gaussian_field(const Model<Scalar>& model, const GaussianMeasure<Scalar>& g,
                                   const GaussianAttentionOptions& options) {
  options.validate();
  const Model<double> md = model.template cast<double>();
  detail::check_gaussian_model(md, g.dim(), "mean");
  if (options.residual && md.out_dim() != g.dim()) {
    throw invalid_argument("residual: the model's output dimension " +
                           std::to_string(md.out_dim()) + " differs from the dimension " +
                           std::to_string(g.dim()));
  }
  detail::Affine a = detail::affine_field(md, g.mean().template cast<double>(),
                                          g.cov().template cast<double>(), options.normalization);
  if (options.residual) a.linear += Eigen::MatrixXd::Identity(g.dim(), g.dim());
  if (!a.linear.allFinite() || !a.offset.allFinite()) {
    throw invalid_argument("mean: the field is not finite (inputs too large)");
  }
  return {a.linear.cast<Scalar>(), a.offset.cast<Scalar>()};
}

template <class Scalar>
GaussianMeasure<Scalar> gaussian_attention(const Model<Scalar>& model,
                                           const GaussianMeasure<Scalar>& g,
                                           const GaussianAttentionOptions& options) {
  const AffineField<Scalar> f = gaussian_field(model, g, options);
  const Eigen::MatrixXd l = f.linear.template cast<double>();
  const Eigen::VectorXd mean =
      l * g.mean().template cast<double>() + f.offset.template cast<double>();
  Eigen::MatrixXd cov = l * g.cov().template cast<double>() * l.transpose();
  cov = (cov + cov.transpose()) / 2;
  if (!mean.allFinite() || !cov.allFinite()) {
    throw invalid_argument("mean: the output is not finite (inputs too large)");
  }
  return GaussianMeasure<Scalar>(mean.cast<Scalar>(), Matrix<Scalar>(cov.cast<Scalar>()));
}

template <class Scalar>
double gaussian_w2(const GaussianMeasure<Scalar>& a, const GaussianMeasure<Scalar>& b) {
  if (a.dim() != b.dim()) {
    throw invalid_argument("b: dimension " + std::to_string(b.dim()) + " differs from a's " +
                           std::to_string(a.dim()));
  }
  const Eigen::MatrixXd s1 = a.cov().template cast<double>();
  const Eigen::MatrixXd s2 = b.cov().template cast<double>();
  const Eigen::MatrixXd r1 = detail::psd_sqrt(s1);
  Eigen::MatrixXd inner = r1 * s2 * r1;
  inner = (inner + inner.transpose()) / 2;
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(inner, Eigen::EigenvaluesOnly);
  double cross = 0;
  for (Index i = 0; i < inner.rows(); ++i) cross += std::sqrt(std::max(eig.eigenvalues()[i], 0.0));
  const double dm = (a.mean() - b.mean()).template cast<double>().squaredNorm();
  const double w2sq = dm + s1.trace() + s2.trace() - 2 * cross;
  return std::sqrt(std::max(w2sq, 0.0));
}

template <class Scalar>
Measure<Scalar> gauss_hermite_measure(const GaussianMeasure<Scalar>& g, Index points) {
  if (points < 1) throw invalid_argument("points: must be >= 1");
  const Index d = g.dim();
  double total = 1;
  for (Index i = 0; i < d; ++i) {
    total *= static_cast<double>(points);
    if (total > 1e7) throw invalid_argument("points: points^d exceeds 10^7 atoms");
  }
  // Golub–Welsch for the probabilists' Hermite polynomials (weight e^{-z^2/2}/sqrt(2 pi)):
  // Jacobi matrix with zero diagonal and off-diagonal sqrt(i).
  Eigen::MatrixXd jac = Eigen::MatrixXd::Zero(points, points);
  for (Index i = 1; i < points; ++i) {
    jac(i, i - 1) = jac(i - 1, i) = std::sqrt(static_cast<double>(i));
  }
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(jac);
  const Eigen::VectorXd nodes = eig.eigenvalues();
  Eigen::VectorXd w1 = eig.eigenvectors().row(0).transpose().array().square();
  w1 /= w1.sum();
  const Index n = static_cast<Index>(total);
  Eigen::MatrixXd z(n, d);
  Eigen::VectorXd w(n);
  for (Index i = 0; i < n; ++i) {
    Index rest = i;
    double wi = 1;
    for (Index j = d - 1; j >= 0; --j) {
      const Index idx = rest % points;
      rest /= points;
      z(i, j) = nodes[idx];
      wi *= w1[idx];
    }
    w[i] = wi;
  }
  const Eigen::MatrixXd root = detail::psd_sqrt(g.cov().template cast<double>());
  const Eigen::MatrixXd atoms = (z * root).rowwise() + g.mean().template cast<double>().transpose();
  return Measure<Scalar>(Matrix<Scalar>(atoms.cast<Scalar>()), w.cast<Scalar>());
}

template <class Scalar>
GaussianMeasure<Scalar> gaussian_moments(const Measure<Scalar>& mu) {
  const Eigen::MatrixXd x = mu.atoms().template cast<double>();
  const Eigen::VectorXd w = mu.weights().template cast<double>();
  const Eigen::VectorXd m = x.transpose() * w;
  const Eigen::MatrixXd c = x.rowwise() - m.transpose();
  Eigen::MatrixXd cov = c.transpose() * w.asDiagonal() * c;
  cov = (cov + cov.transpose()) / 2;
  return GaussianMeasure<Scalar>(m.cast<Scalar>(), Matrix<Scalar>(cov.cast<Scalar>()));
}

#define MEASATTN_GAUSSIAN(S)                                                                 \
  template class GaussianMeasure<S>;                                                         \
  template AffineField<S> gaussian_field(const Model<S>&, const GaussianMeasure<S>&,         \
                                         const GaussianAttentionOptions&);                   \
  template GaussianMeasure<S> gaussian_attention(const Model<S>&, const GaussianMeasure<S>&, \
                                                 const GaussianAttentionOptions&);           \
  template double gaussian_w2(const GaussianMeasure<S>&, const GaussianMeasure<S>&);         \
  template Measure<S> gauss_hermite_measure(const GaussianMeasure<S>&, Index);               \
  template GaussianMeasure<S> gaussian_moments(const Measure<S>&);
MEASATTN_GAUSSIAN(float)
MEASATTN_GAUSSIAN(double)
#undef MEASATTN_GAUSSIAN

}  // namespace measattn
