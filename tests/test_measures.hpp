// Random weighted measures shared by the GoogleTest suites.
#pragma once

#include <random>

#include "measattn/measure.hpp"

namespace measattn::testing {

/// n atoms in R^d with N(0, spread^2) coordinates and U(0.05, 1) weights; every
/// `zero_every`-th weight (indices zero_every-1, 2 zero_every-1, ...) is set to
/// zero when zero_every > 0. Deterministic in `seed`.
inline MeasureD random_measure(Index n, Index d, unsigned seed, int zero_every = 0,
                               double spread = 1) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, spread);
  std::uniform_real_distribution<double> uniform(0.05, 1.0);
  MatrixD x(n, d);
  VectorD w(n);
  for (Index i = 0; i < n; ++i) {
    for (Index c = 0; c < d; ++c) x(i, c) = normal(rng);
    w[i] = uniform(rng);
    if (zero_every > 0 && i % zero_every == zero_every - 1) w[i] = 0;
  }
  return MeasureD(x, w);
}

}  // namespace measattn::testing
