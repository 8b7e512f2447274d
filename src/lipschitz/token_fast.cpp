// J(X) Xdot and J(X)^T Gbar for dot-product attention through dense products
// over blocks of query rows (uniform weights): the Krylov operator's fast path.
// Rows of a block are independent in the JVP; the VJP's key and value
// gradients are summed over blocks in block order, so results do not depend on
// the thread count.
// GCC 12 false positive inside its AVX-512 intrinsics when Eigen kernels are inlined.
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <omp.h>

#include <algorithm>
#include <cmath>

#include "common/parallel.hpp"
#include "lipschitz/token.hpp"
#include "measattn/threads.hpp"

namespace measattn::detail {

namespace {
constexpr Index kBlock = 128;

MatrixD affine_rows(const MatrixD& x, const MatrixD& w, const VectorD& b) {
  MatrixD out = x * w.transpose();
  out.rowwise() += b.transpose();
  return out;
}
}  // namespace

bool DotProducts::applies(const LayerParams& p) {
  for (const auto& hp : p.heads)
    if (hp.potential != Potential::dot) return false;
  return true;
}

DotProducts::DotProducts(const LayerParams& p, const MatrixD& x) : p_(p), x_(x) {
  const Index n = x.rows();
  for (const auto& hp : p.heads) {
    Head h;
    h.q = affine_rows(x, hp.q, hp.bq);
    h.k = affine_rows(x, hp.k, hp.bk);
    h.v = affine_rows(x, hp.v, hp.bv);
    h.inv_tau = 1.0 / hp.tau;
    h.lse.resize(n);
    for (Index i0 = 0; i0 < n; i0 += kBlock) {
      const Index b = std::min(kBlock, n - i0);
      const MatrixD s = (h.q.middleRows(i0, b) * h.k.transpose()) * h.inv_tau;
      for (Index i = 0; i < b; ++i) {
        const double m = s.row(i).maxCoeff();
        h.lse[i0 + i] = m + std::log((s.row(i).array() - m).exp().sum());
      }
    }
    heads_.push_back(std::move(h));
  }
}

MatrixD DotProducts::probabilities(const Head& h, Index i0, Index b) const {
  MatrixD s = (h.q.middleRows(i0, b) * h.k.transpose()) * h.inv_tau;
  s.colwise() -= h.lse.segment(i0, b);
  return s.array().exp().matrix();
}

int DotProducts::threads() const { return std::min(omp_get_max_threads(), kMaxThreads); }

MatrixD DotProducts::jvp(const MatrixD& xd) const {
  const Index n = x_.rows(), blocks = (n + kBlock - 1) / kBlock;
  MatrixD out = MatrixD::Zero(n, p_.d_out);
  if (p_.residual) out += xd;
  for (size_t hh = 0; hh < heads_.size(); ++hh) {
    const Head& h = heads_[hh];
    const auto& hp = p_.heads[hh];
    const MatrixD dq = xd * hp.q.transpose(), dk = xd * hp.k.transpose(),
                  dv = xd * hp.v.transpose();
    MatrixD dm(n, hp.q.rows());
    RegionGuard guard;
    const int nt = threads();
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (Index blk = 0; blk < blocks; ++blk) {
      guard.run([&] {
        const Index i0 = blk * kBlock, b = std::min(kBlock, n - i0);
        const MatrixD pr = probabilities(h, i0, b);
        const MatrixD ds =
            (dq.middleRows(i0, b) * h.k.transpose() + h.q.middleRows(i0, b) * dk.transpose()) *
            h.inv_tau;
        const VectorD mean = pr.cwiseProduct(ds).rowwise().sum();
        MatrixD dp = ds;
        dp.colwise() -= mean;
        dp = pr.cwiseProduct(dp);
        dm.middleRows(i0, b) = dp * h.v + pr * dv;
      });
    }
    guard.finish();
    out += dm * hp.wo.transpose();
  }
  return out;
}

MatrixD DotProducts::vjp(const MatrixD& g) const {
  const Index n = x_.rows(), blocks = (n + kBlock - 1) / kBlock;
  MatrixD xbar = MatrixD::Zero(n, p_.d);
  if (p_.residual) xbar += g;
  for (size_t hh = 0; hh < heads_.size(); ++hh) {
    const Head& h = heads_[hh];
    const auto& hp = p_.heads[hh];
    const Index k = hp.q.rows();
    const MatrixD mbar = g * hp.wo;  // n x k
    MatrixD qbar(n, k);
    std::vector<MatrixD> kpart(static_cast<size_t>(blocks)), vpart(static_cast<size_t>(blocks));
    RegionGuard guard;
    const int nt = threads();
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (Index blk = 0; blk < blocks; ++blk) {
      guard.run([&] {
        const Index i0 = blk * kBlock, b = std::min(kBlock, n - i0);
        const MatrixD pr = probabilities(h, i0, b);
        const MatrixD pbar = mbar.middleRows(i0, b) * h.v.transpose();
        const VectorD mean = pr.cwiseProduct(pbar).rowwise().sum();
        MatrixD sbar = pbar;
        sbar.colwise() -= mean;
        sbar = pr.cwiseProduct(sbar) * h.inv_tau;
        qbar.middleRows(i0, b) = sbar * h.k;
        kpart[static_cast<size_t>(blk)] = sbar.transpose() * h.q.middleRows(i0, b);
        vpart[static_cast<size_t>(blk)] = pr.transpose() * mbar.middleRows(i0, b);
      });
    }
    guard.finish();
    MatrixD kbar = MatrixD::Zero(n, k), vbar = MatrixD::Zero(n, k);
    for (Index blk = 0; blk < blocks; ++blk) {  // block order: thread-count independent
      kbar += kpart[static_cast<size_t>(blk)];
      vbar += vpart[static_cast<size_t>(blk)];
    }
    xbar += qbar * hp.q + kbar * hp.k + vbar * hp.v;
  }
  return xbar;
}

}  // namespace measattn::detail
