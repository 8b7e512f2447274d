#include "measattn/attention.hpp"

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

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
