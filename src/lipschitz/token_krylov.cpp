// The top singular value of the token Jacobian J(X) by implicitly restarted
// Lanczos (Spectra) on v -> J^T J v, one JVP and one VJP per application; the
// returned pair is checked by its explicit residual (docs/theory.md, token level).
// GCC 12 false positive inside its AVX-512 intrinsics when Eigen kernels are inlined.
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <Spectra/SymEigsSolver.h>
#include <Eigen/Eigenvalues>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <stdexcept>

#include "lipschitz/token.hpp"
#include "measattn/error.hpp"
#include "measattn/interrupt.hpp"

namespace measattn::detail {

namespace {

/// v -> J^T J v on vec(X) (Eigen's storage order of an n x d MatrixD).
class NormalOperator {
 public:
  using Scalar = double;
  NormalOperator(const LayerParams& p, const MatrixD& x, const DotProducts* fast)
      : p_(p), x_(x), fast_(fast) {}
  Eigen::Index rows() const { return x_.size(); }
  Eigen::Index cols() const { return x_.size(); }
  void perform_op(const double* in, double* out) const {
    measattn::detail::check_interrupt();  // Ctrl-C from Python (no-op without a handler)
    const MatrixD v = Eigen::Map<const MatrixD>(in, x_.rows(), x_.cols());
    const MatrixD w =
        fast_ ? fast_->vjp(fast_->jvp(v)) : token_vjp_raw(p_, x_, token_jvp_raw(p_, x_, v));
    Eigen::Map<MatrixD>(out, x_.rows(), x_.cols()) = w;
  }

 private:
  const LayerParams& p_;
  const MatrixD& x_;
  const DotProducts* fast_;
};

/// Spectra's solver, with the top Ritz vector of its current Lanczos
/// factorization available whether or not it converged.
class Solver : public Spectra::SymEigsSolver<NormalOperator> {
 public:
  using Spectra::SymEigsSolver<NormalOperator>::SymEigsSolver;
  VectorD top_ritz_vector() const {
    const MatrixD h = m_fac.matrix_H();
    Eigen::SelfAdjointEigenSolver<MatrixD> es(h);
    const Eigen::Index last = h.rows() - 1;
    VectorD y = m_fac.matrix_V() * es.eigenvectors().col(last);
    return y;
  }
};

}  // namespace

TopSingular top_singular(const LayerParams& p, const MatrixD& x, const MatrixD& start,
                         int max_restarts, double tolerance) {
  TopSingular r;
  const Eigen::Index dim = x.size();
  MatrixD v = start;
  if (!(v.allFinite() && v.stableNorm() > 0)) v = MatrixD::Ones(x.rows(), x.cols());
  r.method = dim == 1 ? "direct" : "lanczos";
  if (dim == 1) v.setOnes();
  // Dense products for the dot potential from n = 256 tokens on (the dual-number
  // products below that, where they are about as fast).
  std::unique_ptr<DotProducts> fast;
  if (x.rows() >= 256 && DotProducts::applies(p)) fast = std::make_unique<DotProducts>(p, x);
  // Rounds: Spectra from v (its test, with a margin: |Ritz estimate| <
  // tolerance / 8 max(|theta|, eps^(2/3))), then the explicit residual of the
  // pair; a pair that fails it starts the next round while restarts are left.
  double best_rel = INFINITY;
  for (int round = 0;; ++round) {
    if (dim > 1) {
      NormalOperator op(p, x, fast.get());
      // Two wanted pairs: a cluster at the top is resolved, not averaged.
      const Eigen::Index nev = std::min<Eigen::Index>(2, dim - 1);
      // Spectra gives up (TridiagEigen fails) when the Krylov space of J^T J is much
      // smaller than ncv (few distinct eigenvalues, e.g. repeated tokens): smaller
      // spaces and a scrambled start are tried before the round is given up.
      const Eigen::Index sizes[] = {24, 10, 4};
      for (int attempt = 0; attempt < 3; ++attempt) {
        const Eigen::Index ncv = std::min<Eigen::Index>(dim, std::max(sizes[attempt], nev + 1));
        Solver eigs(op, nev, ncv);
        // A later round starts near the last pair, not on it (Lanczos from an
        // eigenvector breaks down at once); a later attempt starts far from it.
        MatrixD v0 = v;
        if (round > 0 || attempt > 0) {
          std::mt19937_64 rng(static_cast<std::uint64_t>(16 * round + attempt));
          const double size = attempt > 0 ? 0.5 : 1e-3;
          std::normal_distribution<double> nd(
              0.0, size * v.stableNorm() / std::sqrt(static_cast<double>(dim)));
          for (Eigen::Index i = 0; i < v0.size(); ++i) v0.data()[i] += nd(rng);
        }
        eigs.init(v0.data());
        bool ok = true;
        try {
          eigs.compute(Spectra::SortRule::LargestAlge, std::max(1, max_restarts - r.iterations),
                       std::max(tolerance, 0.0) / 8, Spectra::SortRule::LargestAlge);
        } catch (const interrupted&) {
          throw;  // Ctrl-C, polled in perform_op
        } catch (const invalid_argument&) {
          throw;
        } catch (const std::runtime_error&) {
          ok = false;  // Spectra's TridiagEigen
        }
        r.iterations += static_cast<int>(std::max<Eigen::Index>(eigs.num_iterations(), 1));
        r.products += eigs.num_operations();
        if (!ok) continue;
        const VectorD y = eigs.top_ritz_vector();
        if (y.allFinite() && y.stableNorm() > 0)
          v = Eigen::Map<const MatrixD>(y.data(), x.rows(), x.cols());
        break;
      }
    }
    v /= v.stableNorm();
    // theta = ||J v||^2 is a Rayleigh quotient of J^T J.
    const MatrixD jv = fast ? fast->jvp(v) : token_jvp_raw(p, x, v);
    const double s = jv.stableNorm();
    const MatrixD jtjv = fast ? fast->vjp(jv) : token_vjp_raw(p, x, jv);
    r.products += 1;
    const double res = (jtjv - (s * s) * v).stableNorm();
    // r / s^2 without forming s^2 (tiny Jacobians: s^2 may underflow).
    const double rel = s > 0 ? res / s / s : (res > 0 ? INFINITY : 0.0);
    // Keep the pair with the smaller relative residual.
    if (round == 0 || rel < best_rel) {
      best_rel = rel;
      r.value = s;
      r.residual = res;
      // sqrt(s^2 + r) = s sqrt(1 + r / s^2), never below s.
      r.upper = s > 0 ? std::max(s, s * std::sqrt(1 + rel)) : std::sqrt(res);
      if (!std::isfinite(r.upper)) r.upper = std::max(s, std::sqrt(s * s + res));
      r.v = v;
      r.u = s > 0 ? MatrixD(jv / s) : MatrixD(MatrixD::Zero(jv.rows(), jv.cols()));
      r.converged = rel <= tolerance;
    }
    if (r.converged || dim == 1 || round >= 3 || r.iterations >= max_restarts) break;
    v = r.v;
  }
  r.iterations = std::max(r.iterations, 1);
  return r;
}

}  // namespace measattn::detail
