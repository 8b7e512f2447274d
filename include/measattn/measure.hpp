// measattn/measure.hpp — weighted discrete probability measures on R^d.
//
//   mu = sum_i w_i delta_{x_i},  w_i >= 0,  sum_i w_i = 1      (docs/theory.md#measure)
//
// Atoms are the rows of an n x d row-major matrix. Construction validates and
// normalizes: weights that do not sum to one are divided by their total; a
// negative, NaN or infinite weight, a zero total, a NaN or infinite coordinate,
// an empty atom set or a weight count different from the atom count throws
// measattn::invalid_argument naming the field ("atoms" or "weights") and reason.
#pragma once

#include <functional>
#include <string>

#include "measattn/types.hpp"

namespace measattn {

template <class Scalar>
class Measure {
 public:
  using MatrixType = Matrix<Scalar>;
  using VectorType = Vector<Scalar>;

  /// mu = sum_i w_i delta_{x_i} with w normalized to sum 1. O(n d).
  Measure(MatrixType atoms, VectorType weights);

  /// Empirical measure mu_X = (1/n) sum_i delta_{x_i}.
  static Measure empirical(MatrixType atoms);

  Index size() const { return atoms_.rows(); }
  Index dim() const { return atoms_.cols(); }
  const MatrixType& atoms() const { return atoms_; }
  const VectorType& weights() const { return weights_; }
  Scalar weight(Index i) const { return weights_[i]; }
  auto atom(Index i) const { return atoms_.row(i); }

  /// True when every weight equals 1/n exactly (as stored).
  bool is_uniform() const;

  /// Barycenter sum_i w_i x_i.
  VectorType mean() const;

  /// max_i ||x_i|| over atoms of positive weight: the smallest R with supp(mu) in B_R.
  Scalar radius() const;

  /// The same measure with atoms closer than `tolerance` (max-norm) merged into
  /// one atom (the first in input order) carrying the summed weight; atoms of
  /// zero weight are dropped. tolerance = 0 merges exact duplicates. Order of
  /// the surviving atoms is the order of their first occurrence. O(n log n d).
  Measure merged(Scalar tolerance = 0) const;

  /// Push-forward T#mu = sum_i w_i delta_{T(x_i)}, T given by its values on
  /// the atoms (row i = T(x_i)); the weights are kept. Throws if the row count
  /// differs or a value is not finite.
  Measure push_forward(MatrixType images) const;

  /// Push-forward by a map applied to each atom (row vector in, vector out).
  Measure push_forward_map(
      const std::function<VectorType(const Eigen::Ref<const VectorType>&)>& map) const;

  /// The same measure in another precision (weights renormalized after rounding).
  template <class Other>
  Measure<Other> cast() const {
    return Measure<Other>(atoms_.template cast<Other>(), weights_.template cast<Other>());
  }

 private:
  MatrixType atoms_;
  VectorType weights_;
};

/// Mean cosine similarity between distinct atoms under mu x mu:
///
///   c(mu) = sum_{i != j} w_i w_j <x_i, x_j> / (||x_i|| ||x_j||)  /  sum_{i != j} w_i w_j,
///
/// the clustering statistic of the particle literature (1 when every atom points
/// the same way). Computed in O(n d) as (||sum_i w_i u_i||^2 - sum_i w_i^2) /
/// (1 - sum_i w_i^2), u_i = x_i / ||x_i||. Atoms of zero weight do not enter; a
/// measure with a single atom of positive weight gives 1 (no pair, one direction).
/// Throws invalid_argument("atoms: ...") when an atom of positive weight is the
/// zero vector (it has no direction).
template <class Scalar>
double mean_pairwise_cosine(const Measure<Scalar>& mu);

using MeasureD = Measure<double>;
using MeasureF = Measure<float>;

extern template class Measure<float>;
extern template class Measure<double>;
extern template double mean_pairwise_cosine(const Measure<float>&);
extern template double mean_pairwise_cosine(const Measure<double>&);

}  // namespace measattn
