// The Gaussian flow ODE (gaussian_flow): one adaptive Dormand–Prince step of
// (m, P) costs 6 evaluations of the affine field of N(m, P Sigma_0 P^T), each
// O(d^3) dense products. Timed: gaussian_flow from N(0, 0.1 I) (mean 0.1 per
// coordinate) to T = 1 at tolerance 1e-8 for Model::random(d, heads, bias, seed 1);
// the counter us_per_step is the time per accepted step, steps the accepted steps.
//
//   gaussian_bench --benchmark_filter='flow/64/1$'
#include <benchmark/benchmark.h>

#include "measattn/gaussian.hpp"

namespace {

using measattn::Index;

void flow(benchmark::State& state) {
  const Index d = state.range(0), heads = state.range(1);
  const auto model = measattn::Model<double>::random(d, heads, true, 1);
  const measattn::GaussianMeasure<double> g(measattn::VectorD::Constant(d, 0.1),
                                            0.1 * measattn::MatrixD::Identity(d, d));
  measattn::GaussianFlowOptions options;
  options.time = 1;
  options.tolerance = 1e-8;
  double steps = 0;
  Index per_flow = 0;
  for (auto _ : state) {
    const auto r = measattn::gaussian_flow(model, g, options);
    benchmark::DoNotOptimize(r.measure.cov().data());
    steps += static_cast<double>(r.steps + r.rejected);
    per_flow = r.steps;
  }
  state.counters["steps"] = static_cast<double>(per_flow);
  state.counters["us_per_step"] =
      benchmark::Counter(steps * 1e-6, benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

void field(benchmark::State& state) {
  const Index d = state.range(0), heads = state.range(1);
  const auto model = measattn::Model<double>::random(d, heads, true, 1);
  const measattn::GaussianMeasure<double> g(measattn::VectorD::Constant(d, 0.1),
                                            0.1 * measattn::MatrixD::Identity(d, d));
  for (auto _ : state) {
    const auto f = measattn::gaussian_field(model, g);
    benchmark::DoNotOptimize(f.linear.data());
  }
}

}  // namespace

BENCHMARK(flow)->Args({2, 1})->Args({8, 2})->Args({16, 2})->Args({32, 4})->Args({64, 1})->Args({64,
                                                                                                8});
BENCHMARK(field)->Args({2, 1})->Args({8, 2})->Args({16, 2})->Args({32, 4})->Args({64, 1})->Args(
    {64, 8});

BENCHMARK_MAIN();
