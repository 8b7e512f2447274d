// Tiles of one head's logit matrix recomputed on demand from the projections,
// so that streamed passes (Sinkhorn half-steps, entropy statistics) never hold
// the n x m matrix. Used by the Sinkhorn normalization (sinkhorn.cpp) and by
// the maxent module's entropy diagnostics (maxent depends on attention, never
// the reverse).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

#include "attention/potential.hpp"
#include "measattn/attention.hpp"

namespace measattn::detail {

/// x W_h^T + b_h for the rows [h k, (h+1) k) of w (b may be empty).
template <class Scalar>
Matrix<Scalar> project_head(const MatrixRef<Scalar>& x, const Matrix<Scalar>& w,
                            const Vector<Scalar>& b, Index h, Index k) {
  Matrix<Scalar> out(x.rows(), k);
  out.noalias() = x * w.middleRows(h * k, k).transpose();
  if (b.size()) out.rowwise() += b.segment(h * k, k).transpose();
  return out;
}

/// The logit matrix L of head h between projected rows `a` (r x k) and
/// projected columns `b` (c x k): L(i, j) = G(a_i, b_j) when a holds queries
/// and b keys, or L(i, j) = G(b_j, a_i) when `swapped` (a keys, b queries: the
/// transpose of a query-key logit matrix). The dot, l2 and cosine formulas are
/// symmetric in their two arguments; only custom potentials see the swap. The
/// rows of a and b are stored as the potential's split wants them (normalized
/// for cosine), so a() and b() are the split's A and B.
template <class Scalar>
class LogitTiles {
 public:
  LogitTiles(const Model<Scalar>& model, Matrix<Scalar> a, Matrix<Scalar> b, bool swapped)
      : a_(std::move(a)),
        b_(std::move(b)),
        inv_tau_(Scalar(1) / model.tau()),
        potential_(model.potential),
        custom_(&model.custom_potential),
        swapped_(swapped) {
    with_potential(potential_, [&](auto pot) {
      using P = decltype(pot);
      if constexpr (P::kNormalized) {
        for (Index i = 0; i < a_.rows(); ++i)
          normalize_scaled<Scalar>(a_.row(i).data(), a_.cols(), 1, Scalar(1));
        for (Index j = 0; j < b_.rows(); ++j)
          normalize_scaled<Scalar>(b_.row(j).data(), b_.cols(), 1, Scalar(1));
      }
      if constexpr (P::kKeyShift) {  // the split's row and column terms need the norms
        an_ = a_.rowwise().squaredNorm();
        bn_ = b_.rowwise().squaredNorm();
      }
    });
  }

  Index rows() const { return a_.rows(); }
  Index cols() const { return b_.rows(); }
  const Matrix<Scalar>& a() const { return a_; }
  const Matrix<Scalar>& b() const { return b_; }

  /// Writes L[r0 : r0 + nr, c0 : c0 + nc] into the top-left corner of `out`
  /// (which must be at least nr x nc). Identical operations whatever the thread.
  void tile(Index r0, Index nr, Index c0, Index nc, Matrix<Scalar>& out) const {
    auto t = out.topLeftCorner(nr, nc);
    const Index k = a_.cols();
    with_potential(potential_, [&](auto pot) {
      using P = decltype(pot);
      if constexpr (P::kTiled) {
        P::template tile<Scalar>(a_.middleRows(r0, nr), b_.middleRows(c0, nc), an_, bn_, r0, c0,
                                 inv_tau_, t);
      } else {
        for (Index r = 0; r < nr; ++r) {
          for (Index c = 0; c < nc; ++c) {
            const Scalar* x = a_.row(r0 + r).data();
            const Scalar* y = b_.row(c0 + c).data();
            t(r, c) = swapped_ ? (*custom_)(y, x, k) : (*custom_)(x, y, k);
          }
        }
      }
    });
  }

 private:
  Matrix<Scalar> a_, b_;
  Vector<Scalar> an_, bn_;
  Scalar inv_tau_;
  Potential potential_;
  const PotentialFunction<Scalar>* custom_;
  bool swapped_;
};

/// Online log-sum-exp update of one row: folds the values x[0..len) into the
/// running maximum `mx` and running sum `sum` of e^{x - mx}. Returns the factor
/// e^{mx_old - mx_new} applied to the old sum (1 when nothing changed), so that
/// callers can rescale their own accumulators. -inf entries contribute nothing.
template <class Scalar, class Row>
Scalar online_lse_update(const Row& x, Scalar& mx, Scalar& sum) {
  constexpr Scalar kNegInf = -std::numeric_limits<Scalar>::infinity();
  const Scalar bm = x.maxCoeff();
  const Scalar nm = std::max(mx, bm);
  if (nm == kNegInf) return Scalar(1);
  const Scalar alpha = mx == kNegInf ? Scalar(0) : std::exp(mx - nm);
  mx = nm;
  sum = sum * alpha + (x.array() - nm).exp().sum();
  return alpha;
}

}  // namespace measattn::detail
