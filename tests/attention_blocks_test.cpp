// The register-tiled streaming kernel (src/attention/attention.cpp) against the
// dense Transformer formula (transformer_attention) over many block sizes, head
// sizes that are not multiples of the SIMD width, both precisions, causal masks,
// zero weights, custom potentials and cross-attention; plus the invariances the
// kernel promises (thread count and query block size change no bit).
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <random>

#include "measattn/attention.hpp"
#include "test_measures.hpp"

using namespace measattn;

namespace {

template <class Scalar>
double rel_error(const Matrix<Scalar>& a, const Matrix<Scalar>& b) {
  const double scale = std::max<double>(b.cwiseAbs().maxCoeff(), 1e-300);
  return static_cast<double>((a - b).cwiseAbs().maxCoeff()) / scale;
}

using measattn::testing::random_measure;

}  // namespace

TEST(attention_blocks_test, many_block_sizes_and_head_sizes_double) {
  int cases = 0;
  for (Index head_dim : {1, 3, 8, 17}) {
    for (Index heads : {1, 2}) {
      for (auto potential : {Potential::dot, Potential::l2}) {
        for (bool causal : {false, true}) {
          const Index d = head_dim * heads;
          const Index n = 37 + 61 * heads + head_dim;
          const auto model = Model<double>::random(d, heads, true, 7 * d + heads, potential);
          const auto mu = random_measure(n, d, static_cast<unsigned>(n + d), causal ? 0 : 4);
          AttendOptions opt;
          opt.causal = causal;
          const MatrixD ref = transformer_attention(model, mu, mu.atoms(), opt);
          for (Index qb : {0, 5, 1000}) {
            for (Index kb : {0, 1, 17, 48, 100, 1000}) {
              opt.query_block = qb;
              opt.key_block = kb;
              const MatrixD fast = attention_field(model, mu, mu.atoms(), opt);
              ASSERT_LE(rel_error(fast, ref), 1e-13)
                  << "k=" << head_dim << " H=" << heads << " " << to_string(potential)
                  << " causal=" << causal << " qb=" << qb << " kb=" << kb;
              ++cases;
            }
          }
        }
      }
    }
  }
  EXPECT_EQ(cases, 4 * 2 * 2 * 2 * 18);
}

TEST(attention_blocks_test, float_kernel_matches_double_reference) {
  for (Index head_dim : {2, 16, 20, 64}) {
    for (bool causal : {false, true}) {
      const Index n = 150;
      const auto model = Model<double>::random(head_dim, 1, true, 31 + head_dim);
      const auto mu = random_measure(n, head_dim, 77, causal ? 0 : 5);
      AttendOptions opt;
      opt.causal = causal;
      const MatrixD ref = transformer_attention(model, mu, mu.atoms(), opt);
      const auto modelf = model.cast<float>();
      const auto muf = mu.cast<float>();
      for (Index kb : {0, 16, 33}) {
        opt.key_block = kb;
        const MatrixF fast = attention_field(modelf, muf, muf.atoms(), opt);
        EXPECT_LE(rel_error<double>(fast.cast<double>(), ref), 2e-5)
            << "k=" << head_dim << " causal=" << causal << " kb=" << kb;
      }
    }
  }
}

TEST(attention_blocks_test, cross_attention_residual_and_custom_potential) {
  auto model = Model<double>::random(12, 3, true, 41);
  const auto mu = random_measure(131, 12, 3, 7);
  const auto nu = random_measure(59, 12, 4);
  AttendOptions opt;
  opt.residual = true;
  for (Index kb : {0, 7, 64}) {
    opt.key_block = kb;
    EXPECT_LE(rel_error(attention_field(model, mu, nu.atoms(), opt),
                        transformer_attention(model, mu, nu.atoms(), opt)),
              1e-13);
  }
  model.potential = Potential::custom;
  model.custom_potential = [](const double* q, const double* k, Index dim) {
    double s = 0;
    for (Index c = 0; c < dim; ++c) s += std::sin(q[c]) * k[c];
    return s;
  };
  for (Index kb : {0, 5}) {
    opt.key_block = kb;
    EXPECT_LE(rel_error(attention_field(model, mu, nu.atoms(), opt),
                        transformer_attention(model, mu, nu.atoms(), opt)),
              1e-13);
  }
}

TEST(attention_blocks_test, widely_spread_logits_underflow_to_exact_zeros) {
  // Logits spread over thousands: most e^{s - max} underflow; masked keys and
  // zero weights must still contribute nothing and nothing may become NaN.
  for (auto potential : {Potential::dot, Potential::l2}) {
    auto model = Model<double>::random(8, 2, true, 51, potential);
    model.scale = 0.01;
    const auto mu = random_measure(200, 8, 9, 3, 3.0);
    for (bool causal : {false, true}) {
      AttendOptions opt;
      opt.causal = causal;
      const MeasureD m = causal ? random_measure(200, 8, 9, 0, 3.0) : mu;
      const MatrixD fast = attention_field(model, m, m.atoms(), opt);
      ASSERT_TRUE(fast.allFinite());
      EXPECT_LE(rel_error(fast, transformer_attention(model, m, m.atoms(), opt)), 1e-11);
      const auto mf = m.cast<float>();
      const MatrixF f = attention_field(model.cast<float>(), mf, mf.atoms(), opt);
      EXPECT_TRUE(f.allFinite());
    }
  }
}

TEST(attention_blocks_test, thread_count_and_query_block_change_no_bit) {
  const auto model = Model<double>::random(32, 2, true, 61);
  const auto mu = random_measure(700, 32, 11, 9);
  for (bool causal : {false, true}) {
    AttendOptions opt;
    opt.causal = causal;
    opt.key_block = 96;
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    const MatrixD one = attention_field(model, mu, mu.atoms(), opt);
    for (int threads : {2, 3, 5}) {
      omp_set_num_threads(threads);
      for (Index qb : {0, 1, 48, 500}) {
        opt.query_block = qb;
        const MatrixD other = attention_field(model, mu, mu.atoms(), opt);
        EXPECT_TRUE(other == one) << "threads=" << threads << " qb=" << qb;
      }
      opt.query_block = 0;
    }
    omp_set_num_threads(saved);
    // The float path too.
    const auto mf = mu.cast<float>();
    const auto modelf = model.cast<float>();
    omp_set_num_threads(1);
    const MatrixF f1 = attention_field(modelf, mf, mf.atoms(), opt);
    omp_set_num_threads(2);
    const MatrixF f2 = attention_field(modelf, mf, mf.atoms(), opt);
    EXPECT_TRUE(f1 == f2);
    omp_set_num_threads(saved);
  }
}
