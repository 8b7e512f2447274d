// Google Benchmark of the Wasserstein module's hot paths: the small exact W1
// used by the Lipschitz and flow modules, larger exact problems, Sinkhorn and
// the 1-D formula. The comparison with POT/SciPy is bench/wasserstein_vs_pot.py.
#include <benchmark/benchmark.h>

#include <random>

#include "measattn/wasserstein.hpp"

namespace {

measattn::MeasureD random_measure(std::mt19937_64& rng, measattn::Index n, measattn::Index d,
                                  double shift) {
  std::normal_distribution<double> normal;
  measattn::MatrixD x(n, d);
  for (measattn::Index i = 0; i < n; ++i)
    for (measattn::Index k = 0; k < d; ++k) x(i, k) = normal(rng) + shift;
  return measattn::MeasureD::empirical(std::move(x));
}

void BM_exact_w1(benchmark::State& state) {
  std::mt19937_64 rng(1);
  const auto n = state.range(0);
  const auto a = random_measure(rng, n, 8, 0), b = random_measure(rng, n, 8, 0.25);
  for (auto _ : state) benchmark::DoNotOptimize(measattn::wasserstein_exact_value(a, b, 1.0));
}
BENCHMARK(BM_exact_w1)->Arg(16)->Arg(64)->Arg(500)->Arg(1000)->Unit(benchmark::kMillisecond);

void BM_sinkhorn(benchmark::State& state) {
  std::mt19937_64 rng(2);
  const auto n = state.range(0);
  const auto a = random_measure(rng, n, 8, 0), b = random_measure(rng, n, 8, 0.25);
  measattn::WassersteinOptions o;
  o.reg = 0.2;
  for (auto _ : state) benchmark::DoNotOptimize(measattn::wasserstein_sinkhorn(a, b, o).value);
}
BENCHMARK(BM_sinkhorn)->Arg(500)->Arg(1000)->Unit(benchmark::kMillisecond);

void BM_one_d(benchmark::State& state) {
  std::mt19937_64 rng(3);
  std::normal_distribution<double> normal;
  std::vector<double> x(static_cast<size_t>(state.range(0))), y(x.size());
  for (auto& v : x) v = normal(rng);
  for (auto& v : y) v = normal(rng) * 2 + 1;
  for (auto _ : state) benchmark::DoNotOptimize(measattn::wasserstein_1d_values(x, {}, y, {}, 1));
}
BENCHMARK(BM_one_d)->Arg(1000000)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
