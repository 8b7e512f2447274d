// Tiles of one head's logit matrix recomputed on demand from the projections,
// so that streamed passes (Sinkhorn half-steps, entropy statistics) never hold
// the n x m matrix. Shared by src/attention/sinkhorn.cpp and src/maxent/.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

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
/// transpose of a query-key logit matrix). The dot and l2 formulas are
/// symmetric in their two arguments; only custom potentials see the swap.
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
    if (potential_ == Potential::l2) {
      an_ = a_.rowwise().squaredNorm();
      bn_ = b_.rowwise().squaredNorm();
    }
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
    switch (potential_) {
      case Potential::dot:
        t.noalias() = a_.middleRows(r0, nr) * b_.middleRows(c0, nc).transpose();
        t *= inv_tau_;
        break;
      case Potential::l2:
        t.noalias() = a_.middleRows(r0, nr) * b_.middleRows(c0, nc).transpose();
        t = (Scalar(2) * t.array() - an_.segment(r0, nr).replicate(1, nc).array() -
             bn_.segment(c0, nc).transpose().replicate(nr, 1).array()) *
            inv_tau_;
        break;
      case Potential::custom:
        for (Index r = 0; r < nr; ++r) {
          for (Index c = 0; c < nc; ++c) {
            const Scalar* x = a_.row(r0 + r).data();
            const Scalar* y = b_.row(c0 + c).data();
            t(r, c) = swapped_ ? (*custom_)(y, x, k) : (*custom_)(x, y, k);
          }
        }
        break;
    }
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
