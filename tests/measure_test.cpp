#include "measattn/measure.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "measattn/error.hpp"

using measattn::invalid_argument;
using measattn::MatrixD;
using measattn::MeasureD;
using measattn::MeasureF;
using measattn::VectorD;

TEST(measure_test, normalizes_weights) {
  MatrixD x(3, 2);
  x << 0, 0, 1, 0, 0, 1;
  VectorD w(3);
  w << 1, 2, 1;
  MeasureD mu(x, w);
  EXPECT_DOUBLE_EQ(mu.weights().sum(), 1.0);
  EXPECT_DOUBLE_EQ(mu.weight(1), 0.5);
  EXPECT_EQ(mu.size(), 3);
  EXPECT_EQ(mu.dim(), 2);
}

TEST(measure_test, empirical_is_uniform) {
  MatrixD x = MatrixD::Random(7, 3);
  auto mu = MeasureD::empirical(x);
  EXPECT_TRUE(mu.is_uniform());
  EXPECT_NEAR(mu.weights().sum(), 1.0, 1e-15);
  EXPECT_TRUE(mu.mean().isApprox(x.colwise().mean().transpose(), 1e-14));
}

TEST(measure_test, rejects_every_bad_input_of_section_1) {
  MatrixD x = MatrixD::Random(3, 2);
  auto expect_error = [&](const MatrixD& atoms, const VectorD& w, const std::string& field) {
    try {
      MeasureD mu(atoms, w);
      FAIL() << "no error for " << field;
    } catch (const invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
    }
  };
  VectorD w = VectorD::Ones(3);
  VectorD neg = w;
  neg[1] = -0.5;
  expect_error(x, neg, "weights");
  VectorD nan = w;
  nan[2] = std::nan("");
  expect_error(x, nan, "weights");
  VectorD inf = w;
  inf[0] = std::numeric_limits<double>::infinity();
  expect_error(x, inf, "weights");
  expect_error(x, VectorD::Zero(3), "weights");
  expect_error(x, VectorD::Ones(2), "weights");
  MatrixD bad = x;
  bad(1, 1) = std::nan("");
  expect_error(bad, w, "atoms");
  bad(1, 1) = -std::numeric_limits<double>::infinity();
  expect_error(bad, w, "atoms");
  expect_error(MatrixD(0, 2), VectorD(0), "atoms");
  EXPECT_THROW(MeasureD::empirical(MatrixD(0, 3)), invalid_argument);
  // A total that overflows is an error, not an inf weight.
  VectorD huge = VectorD::Constant(3, std::numeric_limits<double>::max());
  EXPECT_THROW(MeasureD(x, huge), invalid_argument);
}

TEST(measure_test, merges_duplicates_in_first_occurrence_order) {
  MatrixD x(5, 2);
  x << 1, 1, 0, 0, 1, 1, 2, 2, 0, 0;
  VectorD w(5);
  w << 0.1, 0.2, 0.3, 0.0, 0.4;
  MeasureD mu(x, w);
  auto m = mu.merged();
  ASSERT_EQ(m.size(), 2);  // the zero-weight atom (2,2) is dropped
  EXPECT_EQ(m.atoms().row(0), x.row(0));
  EXPECT_EQ(m.atoms().row(1), x.row(1));
  EXPECT_NEAR(m.weight(0), 0.4, 1e-15);
  EXPECT_NEAR(m.weight(1), 0.6, 1e-15);
}

TEST(measure_test, merge_with_tolerance) {
  MatrixD x(3, 1);
  x << 0.0, 1e-9, 1.0;
  auto mu = MeasureD::empirical(x);
  EXPECT_EQ(mu.merged().size(), 3);
  EXPECT_EQ(mu.merged(1e-8).size(), 2);
  EXPECT_THROW(mu.merged(-1), invalid_argument);
}

TEST(measure_test, push_forward_keeps_weights) {
  MatrixD x = MatrixD::Random(4, 3);
  VectorD w(4);
  w << 1, 2, 3, 4;
  MeasureD mu(x, w);
  auto pushed = mu.push_forward_map(
      [](const Eigen::Ref<const VectorD>& v) -> VectorD { return VectorD::Constant(1, v.sum()); });
  EXPECT_EQ(pushed.dim(), 1);
  EXPECT_EQ(pushed.weights(), mu.weights());
  for (int i = 0; i < 4; ++i) EXPECT_DOUBLE_EQ(pushed.atoms()(i, 0), x.row(i).sum());
  EXPECT_THROW(mu.push_forward(MatrixD::Zero(3, 3)), invalid_argument);
}

TEST(measure_test, radius_ignores_zero_weight_atoms) {
  MatrixD x(2, 2);
  x << 3, 4, 100, 0;
  VectorD w(2);
  w << 1, 0;
  EXPECT_DOUBLE_EQ(MeasureD(x, w).radius(), 5.0);
}

TEST(measure_test, float_measure_and_cast) {
  auto mu = MeasureD::empirical(MatrixD::Random(5, 2));
  MeasureF f = mu.cast<float>();
  EXPECT_EQ(f.size(), 5);
  EXPECT_NEAR(f.weights().sum(), 1.0f, 1e-6f);
}

TEST(measure_test, mean_pairwise_cosine_against_the_double_sum) {
  std::mt19937_64 rng(5);
  std::normal_distribution<double> normal;
  MatrixD x(7, 4);
  for (Eigen::Index i = 0; i < x.rows(); ++i)
    for (Eigen::Index j = 0; j < x.cols(); ++j) x(i, j) = normal(rng) + (j == 0 ? 1.5 : 0.0);
  VectorD w(7);
  w << 0.1, 0.2, 0.05, 0.3, 0.15, 0.1, 0.1;
  const MeasureD mu(x, w);
  double num = 0, den = 0;
  for (Eigen::Index i = 0; i < 7; ++i)
    for (Eigen::Index j = 0; j < 7; ++j) {
      if (i == j) continue;
      const double c = x.row(i).dot(x.row(j)) / (x.row(i).norm() * x.row(j).norm());
      num += mu.weight(i) * mu.weight(j) * c;
      den += mu.weight(i) * mu.weight(j);
    }
  EXPECT_NEAR(measattn::mean_pairwise_cosine(mu), num / den, 1e-14);
  EXPECT_NEAR(measattn::mean_pairwise_cosine(mu.cast<float>()), num / den, 1e-6);
}

TEST(measure_test, mean_pairwise_cosine_edge_cases) {
  MatrixD x(2, 2);
  x << 1, 0, -3, 0;
  EXPECT_NEAR(measattn::mean_pairwise_cosine(MeasureD::empirical(x)), -1.0, 1e-15);
  x << 1, 1, 2, 2;
  EXPECT_NEAR(measattn::mean_pairwise_cosine(MeasureD::empirical(x)), 1.0, 1e-15);
  // One atom of positive weight: no pair, value 1; a zero atom of zero weight is ignored.
  VectorD w(2);
  w << 1, 0;
  x << 1, 2, 0, 0;
  EXPECT_EQ(measattn::mean_pairwise_cosine(MeasureD(x, w)), 1.0);
  w << 0, 1;
  try {
    (void)measattn::mean_pairwise_cosine(MeasureD(x, w));
    FAIL() << "expected invalid_argument";
  } catch (const invalid_argument& e) {
    EXPECT_EQ(e.field(), "atoms");
  }
}
