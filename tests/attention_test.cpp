#include "measattn/attention.hpp"

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "attention/logit_tiles.hpp"
#include "attention/potential.hpp"
#include "measattn/error.hpp"
#include "test_measures.hpp"

using namespace measattn;

namespace {

double rel_error(const MatrixD& a, const MatrixD& b) {
  const double scale = std::max(b.cwiseAbs().maxCoeff(), 1e-300);
  return (a - b).cwiseAbs().maxCoeff() / scale;
}

using measattn::testing::random_measure;

}  // namespace

TEST(attention_test, streaming_equals_transformer_formula) {
  for (auto potential : {Potential::dot, Potential::l2}) {
    for (Index heads : {1, 2, 4}) {
      for (bool bias : {false, true}) {
        for (bool causal : {false, true}) {
          for (Index n : {1, 5, 67, 300}) {
            const Index d = 8;
            const auto model = Model<double>::random(d, heads, bias, 100 + n, potential);
            const auto mu = random_measure(n, d, static_cast<unsigned>(n), causal ? 0 : 3);
            AttendOptions opt;
            opt.causal = causal;
            for (Index qb : {0, 1, 7}) {
              for (Index kb : {0, 3, 64}) {
                opt.query_block = qb;
                opt.key_block = kb;
                const MatrixD fast = attention_field(model, mu, mu.atoms(), opt);
                const MatrixD ref = transformer_attention(model, mu, mu.atoms(), opt);
                ASSERT_LE(rel_error(fast, ref), 1e-13)
                    << to_string(potential) << " H=" << heads << " bias=" << bias
                    << " causal=" << causal << " n=" << n << " qb=" << qb << " kb=" << kb;
              }
            }
          }
        }
      }
    }
  }
}

TEST(attention_test, cross_attention_and_residual) {
  const auto model = Model<double>::random(6, 3, true, 5);
  const auto mu = random_measure(40, 6, 1);
  const auto nu = random_measure(17, 6, 2);
  AttendOptions opt;
  opt.residual = true;
  const auto out = cross_attention(model, nu, mu, opt);
  EXPECT_EQ(out.size(), 17);
  EXPECT_EQ(out.weights(), nu.weights());
  const MatrixD ref = transformer_attention(model, mu, nu.atoms(), opt);
  EXPECT_LE(rel_error(out.atoms(), ref), 1e-13);
  opt.residual = false;
  const MatrixD plain = attention_field(model, mu, nu.atoms(), opt);
  EXPECT_LE(rel_error(out.atoms() - nu.atoms(), plain), 1e-12);
}

TEST(attention_test, kernel_rows_are_probabilities) {
  const auto model = Model<double>::random(4, 2, true, 9);
  const auto mu = random_measure(30, 4, 3, 3);
  for (Index h = 0; h < 2; ++h) {
    const MatrixD p = attention_kernel(model, mu, mu.atoms(), h);
    for (Index i = 0; i < p.rows(); ++i) {
      EXPECT_NEAR(p.row(i).sum(), 1.0, 1e-14);
      EXPECT_GE(p.row(i).minCoeff(), 0.0);
      for (Index j = 0; j < p.cols(); ++j)
        if (mu.weight(j) == 0) {
          EXPECT_EQ(p(i, j), 0.0);
        }
    }
  }
}

TEST(attention_test, custom_potential_matches_dot) {
  auto model = Model<double>::random(6, 2, true, 11);
  const auto mu = random_measure(50, 6, 4);
  const MatrixD dot = attention_field(model, mu, mu.atoms());
  const double tau = model.tau();
  model.potential = Potential::custom;
  model.custom_potential = [tau](const double* q, const double* k, Index dim) {
    double s = 0;
    for (Index c = 0; c < dim; ++c) s += q[c] * k[c];
    return s / tau;
  };
  EXPECT_LE(rel_error(attention_field(model, mu, mu.atoms()), dot), 1e-13);
}

TEST(attention_test, deterministic_whatever_the_thread_count) {
  const auto model = Model<double>::random(16, 4, true, 13);
  const auto mu = random_measure(1000, 16, 5);
  omp_set_num_threads(1);
  const MatrixD one = attention_field(model, mu, mu.atoms());
  omp_set_num_threads(2);
  const MatrixD two = attention_field(model, mu, mu.atoms());
  omp_set_num_threads(3);
  const MatrixD three = attention_field(model, mu, mu.atoms());
  EXPECT_TRUE(one == two);
  EXPECT_TRUE(one == three);
}

TEST(attention_test, huge_logits_stay_finite) {
  auto model = Model<double>::random(4, 1, false, 17);
  model.scale = 1e-6;  // logits of magnitude ~1e6
  auto mu = random_measure(64, 4, 6);
  for (auto potential : {Potential::dot, Potential::l2}) {
    model.potential = potential;
    const MatrixD out = attention_field(model, mu, mu.atoms());
    EXPECT_TRUE(out.allFinite());
    const MatrixD ref = transformer_attention(model, mu, mu.atoms());
    EXPECT_LE(rel_error(out, ref), 1e-9);
  }
}

TEST(attention_test, invariances_of_section_2) {
  const auto model = Model<double>::random(5, 1, true, 19);
  const auto mu = random_measure(20, 5, 7);
  const MatrixD base = attention_field(model, mu, mu.atoms());
  // Permutation of the tokens permutes the outputs.
  std::vector<Index> perm(20);
  std::iota(perm.begin(), perm.end(), 0);
  std::mt19937 rng(3);
  std::shuffle(perm.begin(), perm.end(), rng);
  MatrixD px(20, 5);
  VectorD pw(20);
  for (Index i = 0; i < 20; ++i) {
    px.row(i) = mu.atoms().row(perm[static_cast<size_t>(i)]);
    pw[i] = mu.weight(perm[static_cast<size_t>(i)]);
  }
  const MatrixD permuted = attention_field(model, MeasureD(px, pw), px);
  for (Index i = 0; i < 20; ++i)
    EXPECT_LE((permuted.row(i) - base.row(perm[static_cast<size_t>(i)])).norm(), 1e-13);
  // Repeating every token 3 times changes no output.
  MatrixD rx(60, 5);
  VectorD rw(60);
  for (Index i = 0; i < 60; ++i) {
    rx.row(i) = mu.atoms().row(i % 20);
    rw[i] = mu.weight(i % 20);
  }
  const MatrixD repeated = attention_field(model, MeasureD(rx, rw), mu.atoms());
  EXPECT_LE(rel_error(repeated, base), 1e-13);
  // Two identical tokens with weights a and b act as one token of weight a + b.
  MatrixD sx(21, 5);
  VectorD sw(21);
  sx.topRows(20) = mu.atoms();
  sw.head(20) = mu.weights();
  sx.row(20) = mu.atoms().row(4);
  sw[20] = 0.3 * mu.weight(4);
  sw[4] = 0.7 * mu.weight(4);
  const MeasureD split(sx, sw);
  EXPECT_LE(rel_error(attention_field(model, split, mu.atoms()), base), 1e-13);
  EXPECT_LE(rel_error(attention_field(model, split.merged(), mu.atoms()), base), 1e-13);
}

TEST(attention_test, float_path_agrees_with_double) {
  const auto model = Model<double>::random(16, 2, true, 23);
  const auto mu = random_measure(200, 16, 8);
  const MatrixD d = attention_field(model, mu, mu.atoms());
  const auto modelf = model.cast<float>();
  const auto muf = mu.cast<float>();
  const MatrixF f = attention_field(modelf, muf, muf.atoms());
  EXPECT_LE(rel_error(f.cast<double>(), d), 1e-5);
}

TEST(attention_test, rejects_bad_input) {
  const auto model = Model<double>::random(4, 2, true, 29);
  const auto mu = random_measure(5, 4, 9);
  EXPECT_THROW(attention_field(model, mu, MatrixD::Zero(3, 5)), invalid_argument);
  EXPECT_THROW(attention_field(model, random_measure(5, 3, 1), MatrixD::Zero(3, 4)),
               invalid_argument);
  auto broken = model;
  broken.num_heads = 3;
  EXPECT_THROW(attention_field(broken, mu, mu.atoms()), invalid_argument);
  broken = model;
  broken.w_v(0, 0) = std::nan("");
  EXPECT_THROW(attention_field(broken, mu, mu.atoms()), invalid_argument);
  MatrixD q = mu.atoms();
  q(0, 0) = std::numeric_limits<double>::infinity();
  EXPECT_THROW(attention_field(model, mu, q), invalid_argument);
  // Causal with a first token of zero weight: query 0 sees nothing.
  VectorD w = VectorD::Ones(5);
  w[0] = 0;
  AttendOptions causal;
  causal.causal = true;
  EXPECT_THROW(attention_field(model, MeasureD(mu.atoms(), w), mu.atoms(), causal),
               invalid_argument);
}

TEST(attention_test, canonical_model_is_beta_dot_product) {
  const auto model = Model<double>::canonical(3, 2.5);
  const auto mu = random_measure(10, 3, 10);
  const MatrixD p = attention_kernel(model, mu, mu.atoms(), 0);
  for (Index i = 0; i < 10; ++i) {
    VectorD logits(10);
    for (Index j = 0; j < 10; ++j)
      logits[j] = 2.5 * mu.atoms().row(i).dot(mu.atoms().row(j)) + std::log(mu.weight(j));
    logits = (logits.array() - logits.maxCoeff()).exp();
    logits /= logits.sum();
    EXPECT_LE((p.row(i).transpose() - logits).cwiseAbs().maxCoeff(), 1e-14);
  }
}

TEST(attention_test, overflowing_projections_are_refused_naming_the_tokens) {
  const Model<double> m = Model<double>::random(4, 2, false, 5);
  std::mt19937_64 rng(6);
  std::normal_distribution<double> nd(0, 1);
  MatrixD x(5, 4);
  for (Index i = 0; i < x.rows(); ++i)
    for (Index k = 0; k < x.cols(); ++k) x(i, k) = 1e300 * nd(rng);
  const MeasureD mu = MeasureD::empirical(x);
  try {
    (void)self_attention(m, mu);
    FAIL() << "no exception";
  } catch (const invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()).rfind("tokens: the attention output is not finite", 0), 0u)
        << e.what();
  }
  // Huge queries against unit tokens: saturated but finite logits are fine.
  const MatrixD q = x / 1e300 * 1e200;
  const MatrixD out = attention_field(m, MeasureD::empirical(x / 1e300), q);
  EXPECT_TRUE(out.allFinite());
}

// ---- Potentials as types (attention/potential.hpp) and the cosine potential ----

namespace {

/// Projected queries and keys with a zero row each (the cosine convention).
MatrixD random_rows(std::mt19937_64& rng, Index n, Index k, bool zero_first) {
  std::normal_distribution<double> nd(0.0, 1.5);
  MatrixD x(n, k);
  for (Index i = 0; i < n; ++i)
    for (Index c = 0; c < k; ++c) x(i, c) = nd(rng);
  if (zero_first) x.row(0).setZero();
  return x;
}

template <class P>
void check_split_against_direct(std::mt19937_64& rng) {
  const Index n = 9, m = 13, k = 5;
  const double tau = 1.7;
  const MatrixD q = random_rows(rng, n, k, true), kk = random_rows(rng, m, k, true);
  // The streaming kernel's split: s <A(q), B(kappa)> - d(kappa); G minus it
  // must be constant along each query row (c(q) drops out of the softmax).
  MatrixD a = q, b = kk;
  if constexpr (P::kNormalized) {
    for (Index i = 0; i < n; ++i) detail::normalize_scaled<double>(a.row(i).data(), k, 1, 1.0);
    for (Index j = 0; j < m; ++j) detail::normalize_scaled<double>(b.row(j).data(), k, 1, 1.0);
  }
  const double s = P::template query_scale<double>(tau);
  for (Index i = 0; i < n; ++i) {
    double offset = 0;
    for (Index j = 0; j < m; ++j) {
      double split = s * a.row(i).dot(b.row(j));
      if constexpr (P::kKeyShift) split -= P::template key_shift<double>(b.row(j).transpose(), tau);
      const double g =
          P::template direct<double>(q.row(i).data(), kk.row(j).data(), k, tau, nullptr);
      ASSERT_TRUE(std::isfinite(g)) << P::name;
      if (j == 0) offset = g - split;
      EXPECT_NEAR(g - split, offset, 1e-12) << P::name << " i=" << i << " j=" << j;
    }
  }
  // The tiles of LogitTiles (the Sinkhorn and entropy passes) equal G itself.
  Model<double> model = Model<double>::random(k, 1, false, 1, P::id);
  model.scale = tau;
  const detail::LogitTiles<double> tiles(model, q, kk, false);
  MatrixD t(n, m);
  tiles.tile(0, n, 0, m, t);
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < m; ++j)
      EXPECT_NEAR(t(i, j),
                  P::template direct<double>(q.row(i).data(), kk.row(j).data(), k, tau, nullptr),
                  1e-12)
          << P::name;
  // The engine's logit is the same formula, and its gradient matches central differences.
  const double h = 1e-6;
  for (Index i = 1; i < n; ++i) {
    const double* qi = q.row(i).data();
    const double* kj = kk.row(i % m).data();
    EXPECT_NEAR(P::logit(qi, kj, k, 1 / tau), P::template direct<double>(qi, kj, k, tau, nullptr),
                1e-12);
    VectorD qbar = VectorD::Zero(k), kbar = VectorD::Zero(k);
    P::logit_vjp(qi, kj, k, 1 / tau, 1.0, qbar.data(), kbar.data());
    for (Index c = 0; c < k; ++c) {
      VectorD qp = q.row(i).transpose(), qm = qp, kp = kk.row(i % m).transpose(), km = kp;
      qp[c] += h;
      qm[c] -= h;
      kp[c] += h;
      km[c] -= h;
      EXPECT_NEAR(
          qbar[c],
          (P::logit(qp.data(), kj, k, 1 / tau) - P::logit(qm.data(), kj, k, 1 / tau)) / (2 * h),
          1e-7);
      EXPECT_NEAR(
          kbar[c],
          (P::logit(qi, kp.data(), k, 1 / tau) - P::logit(qi, km.data(), k, 1 / tau)) / (2 * h),
          1e-7);
    }
  }
}

}  // namespace

TEST(attention_test, each_potential_split_equals_its_direct_formula) {
  std::mt19937_64 rng(7);
  for (int rep = 0; rep < 5; ++rep) {
    check_split_against_direct<detail::DotPotential>(rng);
    check_split_against_direct<detail::L2Potential>(rng);
    check_split_against_direct<detail::CosinePotential>(rng);
  }
  // One name per potential, parsed back.
  for (auto p : {Potential::dot, Potential::l2, Potential::cosine})
    EXPECT_EQ(parse_potential(to_string(p)), p);
  EXPECT_EQ(to_string(Potential::custom), "custom");
  EXPECT_THROW(parse_potential("custom"), invalid_argument);
}

TEST(attention_test, cosine_streaming_equals_transformer_formula) {
  for (Index heads : {1, 2, 4}) {
    for (bool bias : {false, true}) {
      for (bool causal : {false, true}) {
        for (Index n : {1, 5, 67, 300}) {
          const auto model = Model<double>::random(8, heads, bias, 300 + n, Potential::cosine);
          const auto mu = random_measure(n, 8, static_cast<unsigned>(n), causal ? 0 : 3);
          AttendOptions opt;
          opt.causal = causal;
          for (Index kb : {0, 3, 64}) {
            opt.key_block = kb;
            const MatrixD fast = attention_field(model, mu, mu.atoms(), opt);
            const MatrixD ref = transformer_attention(model, mu, mu.atoms(), opt);
            ASSERT_LE(rel_error(fast, ref), 1e-13)
                << "H=" << heads << " bias=" << bias << " causal=" << causal << " n=" << n;
          }
        }
      }
    }
  }
  // Cross-attention, Sinkhorn normalization and float agree with the reference too.
  const auto model = Model<double>::random(6, 3, true, 5, Potential::cosine);
  const auto mu = random_measure(40, 6, 1), nu = random_measure(17, 6, 2);
  EXPECT_LE(rel_error(attention_field(model, mu, nu.atoms()),
                      transformer_attention(model, mu, nu.atoms())),
            1e-13);
  AttendOptions sk;
  sk.normalization = Normalization::sinkhorn;
  sk.sinkhorn_iterations = 4;
  EXPECT_LE(rel_error(attention_field(model, mu, mu.atoms(), sk),
                      transformer_attention(model, mu, mu.atoms(), sk)),
            1e-11);
  const MatrixF f =
      attention_field(model.cast<float>(), mu.cast<float>(), mu.atoms().cast<float>());
  EXPECT_LE(rel_error(f.cast<double>(), attention_field(model, mu, mu.atoms())), 1e-4);
}

TEST(attention_test, cosine_logits_are_bounded_and_zero_projections_give_the_weights) {
  auto model = Model<double>::random(4, 2, true, 9, Potential::cosine);
  model.scale = 0.25;
  // Huge tokens: |G| <= 1 / tau whatever their size, so the kernel stays finite.
  auto mu = random_measure(30, 4, 4, 0, 1e100);
  const MatrixD kernel = attention_kernel(model, mu, mu.atoms(), 0);
  ASSERT_TRUE(kernel.allFinite());
  const double ratio_bound = std::exp(2 / model.tau());  // e^{2/tau} (docs/theory.md)
  for (Index i = 0; i < kernel.rows(); ++i)
    for (Index j = 0; j < kernel.cols(); ++j)
      EXPECT_LE(kernel(i, j) / (mu.weight(j) / mu.weights().sum()), ratio_bound * (1 + 1e-12));
  // Zero key projections: every normalized key is 0, G = 0, the kernel is the weights.
  model.w_k.setZero();
  model.b_k.setZero();
  const auto small = random_measure(12, 4, 5, 4);
  const MatrixD k0 = attention_kernel(model, small, small.atoms(), 1);
  const VectorD w = small.weights() / small.weights().sum();
  for (Index i = 0; i < k0.rows(); ++i) EXPECT_LT((k0.row(i).transpose() - w).norm(), 1e-15);
  EXPECT_TRUE(attention_field(model, small, small.atoms()).allFinite());
  // Zero query projections likewise.
  auto zq = Model<double>::random(4, 1, false, 3, Potential::cosine);
  zq.w_q.setZero();
  const MatrixD kq = attention_kernel(zq, small, small.atoms(), 0);
  for (Index i = 0; i < kq.rows(); ++i) EXPECT_LT((kq.row(i).transpose() - w).norm(), 1e-15);
}
