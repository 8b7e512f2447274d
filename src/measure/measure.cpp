#include "measattn/measure.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "measattn/error.hpp"

namespace measattn {

namespace {

template <class Scalar>
void validate_atoms(const Matrix<Scalar>& atoms) {
  if (atoms.rows() == 0) throw invalid_argument("atoms: the measure has no atoms");
  if (atoms.cols() == 0) throw invalid_argument("atoms: atoms have dimension 0");
  for (Index i = 0; i < atoms.rows(); ++i) {
    for (Index c = 0; c < atoms.cols(); ++c) {
      if (!std::isfinite(atoms(i, c))) {
        throw invalid_argument("atoms: coordinate " + std::to_string(c) + " of atom " +
                               std::to_string(i) + " is not finite");
      }
    }
  }
}

}  // namespace

template <class Scalar>
Measure<Scalar>::Measure(MatrixType atoms, VectorType weights)
    : atoms_(std::move(atoms)), weights_(std::move(weights)) {
  validate_atoms(atoms_);
  if (weights_.size() != atoms_.rows()) {
    throw invalid_argument("weights: " + std::to_string(weights_.size()) + " weights for " +
                           std::to_string(atoms_.rows()) + " atoms");
  }
  // Sum in long double so that normalization does not depend on summation order
  // more than necessary; a finite total of finite non-negative weights can
  // still overflow in Scalar, so it is checked too.
  long double total = 0;
  for (Index i = 0; i < weights_.size(); ++i) {
    const Scalar w = weights_[i];
    if (std::isnan(w)) throw invalid_argument("weights: weight " + std::to_string(i) + " is NaN");
    if (!std::isfinite(w)) {
      throw invalid_argument("weights: weight " + std::to_string(i) + " is infinite");
    }
    if (w < 0) throw invalid_argument("weights: weight " + std::to_string(i) + " is negative");
    total += w;
  }
  if (!(total > 0)) throw invalid_argument("weights: the weights sum to zero");
  if (!std::isfinite(static_cast<double>(total))) {
    throw invalid_argument("weights: the sum of the weights overflows");
  }
  if (total != 1) {
    for (Index i = 0; i < weights_.size(); ++i) {
      weights_[i] = static_cast<Scalar>(static_cast<long double>(weights_[i]) / total);
    }
  }
}

template <class Scalar>
Measure<Scalar> Measure<Scalar>::empirical(MatrixType atoms) {
  const Index n = atoms.rows();
  if (n == 0) throw invalid_argument("atoms: the measure has no atoms");
  VectorType w = VectorType::Constant(n, Scalar(1) / static_cast<Scalar>(n));
  return Measure(std::move(atoms), std::move(w));
}

template <class Scalar>
bool Measure<Scalar>::is_uniform() const {
  const Scalar u = Scalar(1) / static_cast<Scalar>(size());
  return (weights_.array() == u).all();
}

template <class Scalar>
typename Measure<Scalar>::VectorType Measure<Scalar>::mean() const {
  return (atoms_.transpose() * weights_).eval();
}

template <class Scalar>
Scalar Measure<Scalar>::radius() const {
  Scalar r = 0;
  for (Index i = 0; i < size(); ++i) {
    if (weights_[i] > 0) r = std::max(r, atoms_.row(i).norm());
  }
  return r;
}

template <class Scalar>
Measure<Scalar> Measure<Scalar>::merged(Scalar tolerance) const {
  if (!(tolerance >= 0)) throw invalid_argument("tolerance: must be >= 0");
  const Index n = size();
  const Index d = dim();
  // Sort atom indices lexicographically; within a tolerance, candidates for a
  // merge then lie in a window along the first coordinate.
  std::vector<Index> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), Index{0});
  std::sort(order.begin(), order.end(), [&](Index a, Index b) {
    for (Index c = 0; c < d; ++c) {
      if (atoms_(a, c) != atoms_(b, c)) return atoms_(a, c) < atoms_(b, c);
    }
    return a < b;
  });
  std::vector<Index> representative(static_cast<size_t>(n), -1);
  for (size_t s = 0; s < order.size(); ++s) {
    const Index i = order[s];
    if (weights_[i] <= 0 || representative[static_cast<size_t>(i)] >= 0) continue;
    representative[static_cast<size_t>(i)] = i;
    for (size_t t = s + 1; t < order.size(); ++t) {
      const Index j = order[t];
      if (atoms_(j, 0) - atoms_(i, 0) > tolerance) break;
      if (representative[static_cast<size_t>(j)] >= 0 || weights_[j] <= 0) continue;
      if ((atoms_.row(j) - atoms_.row(i)).cwiseAbs().maxCoeff() <= tolerance) {
        representative[static_cast<size_t>(j)] = i;
      }
    }
  }
  // The representative of a group is its first atom in input order.
  std::vector<Index> first(static_cast<size_t>(n), -1);
  for (Index i = 0; i < n; ++i) {
    const Index r = representative[static_cast<size_t>(i)];
    if (r < 0) continue;
    if (first[static_cast<size_t>(r)] < 0) first[static_cast<size_t>(r)] = i;
  }
  std::vector<Index> kept;
  std::vector<Index> slot(static_cast<size_t>(n), -1);
  for (Index i = 0; i < n; ++i) {
    const Index r = representative[static_cast<size_t>(i)];
    if (r < 0) continue;
    if (slot[static_cast<size_t>(r)] < 0) {
      slot[static_cast<size_t>(r)] = static_cast<Index>(kept.size());
      kept.push_back(first[static_cast<size_t>(r)]);
    }
  }
  MatrixType atoms(static_cast<Index>(kept.size()), d);
  VectorType weights = VectorType::Zero(static_cast<Index>(kept.size()));
  for (size_t k = 0; k < kept.size(); ++k) atoms.row(static_cast<Index>(k)) = atoms_.row(kept[k]);
  for (Index i = 0; i < n; ++i) {
    const Index r = representative[static_cast<size_t>(i)];
    if (r >= 0) weights[slot[static_cast<size_t>(r)]] += weights_[i];
  }
  return Measure(std::move(atoms), std::move(weights));
}

template <class Scalar>
Measure<Scalar> Measure<Scalar>::push_forward(MatrixType images) const {
  if (images.rows() != size()) {
    throw invalid_argument("images: " + std::to_string(images.rows()) + " images for " +
                           std::to_string(size()) + " atoms");
  }
  return Measure(std::move(images), weights_);
}

template <class Scalar>
Measure<Scalar> Measure<Scalar>::push_forward_map(
    const std::function<VectorType(const Eigen::Ref<const VectorType>&)>& map) const {
  MatrixType images;
  for (Index i = 0; i < size(); ++i) {
    const VectorType x = atoms_.row(i).transpose();
    VectorType y = map(x);
    if (i == 0) images.resize(size(), y.size());
    if (y.size() != images.cols()) {
      throw invalid_argument("map: returned vectors of differing dimension");
    }
    images.row(i) = y.transpose();
  }
  return Measure(std::move(images), weights_);
}

template <class Scalar>
double mean_pairwise_cosine(const Measure<Scalar>& mu) {
  // In double whatever Scalar is: the statistic is a difference of two sums
  // close to each other when the atoms are nearly aligned.
  const Index d = mu.dim();
  Eigen::VectorXd sum = Eigen::VectorXd::Zero(d);
  double w2 = 0, total = 0;
  for (Index i = 0; i < mu.size(); ++i) {
    const double w = static_cast<double>(mu.weight(i));
    if (!(w > 0)) continue;
    const Eigen::VectorXd x = mu.atom(i).transpose().template cast<double>();
    const double norm = x.stableNorm();
    if (!(norm > 0)) {
      throw invalid_argument("atoms: row " + std::to_string(i) +
                             " is the zero vector and has no direction (mean_pairwise_cosine)");
    }
    sum += (w / norm) * x;
    w2 += w * w;
    total += w;
  }
  // Weights sum to one up to rounding; the formula uses the stored ones.
  const double pairs = total * total - w2;
  if (!(pairs > 1e-300)) return 1.0;
  const double value = (sum.squaredNorm() - w2) / pairs;
  return std::clamp(value, -1.0, 1.0);
}

template class Measure<float>;
template class Measure<double>;
template double mean_pairwise_cosine(const Measure<float>&);
template double mean_pairwise_cosine(const Measure<double>&);

}  // namespace measattn
