// One explicit-Euler step of the particle flow, x <- x + h Gamma_{mu_x}(x), for
// the canonical model (V = I, G(x,y) = beta <x,y>, beta = 1) on n uniform
// particles in R^d (standard normal, seed 1). Timed: flow_field (the streaming
// attention of all n particles against all n) plus the axpy, into work matrices
// kept across steps as the integrator does; not timed: process
// start-up, input generation. Peak RSS of the process (getrusage) is reported as
// the counter peak_rss_mib. bench/flow_vs_numpy.py runs one case per process.
//
//   flow_bench --benchmark_filter='euler_step/16000/3$'
#include <benchmark/benchmark.h>
#include <sys/resource.h>

#include <random>

#include "measattn/flow.hpp"

namespace {

using measattn::FlowOptions;
using measattn::Index;
using measattn::MatrixD;
using measattn::VectorD;

void euler_step(benchmark::State& state) {
  const Index n = state.range(0), d = state.range(1);
  std::mt19937_64 rng(1);
  std::normal_distribution<double> normal(0, 1);
  MatrixD x(n, d);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = normal(rng);
  const VectorD w = VectorD::Constant(n, 1.0 / static_cast<double>(n));
  const auto model = measattn::Model<double>::canonical(d, 1.0);
  const FlowOptions options;
  const double h = 0.1;
  // As the integrator takes a step (src/flow/flow.cpp): the field into a work
  // matrix, then the update into the next state, both kept across steps.
  MatrixD field, next(n, d);
  for (auto _ : state) {
    measattn::flow_field(model, w, x, options, field);
    next.noalias() = x + h * field;
    benchmark::DoNotOptimize(next.data());
    benchmark::ClobberMemory();
  }
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  state.counters["peak_rss_mib"] = static_cast<double>(usage.ru_maxrss) / 1024.0;
  state.counters["pairs_per_s"] =
      benchmark::Counter(static_cast<double>(n) * static_cast<double>(n),
                         benchmark::Counter::kIsIterationInvariantRate);
}

BENCHMARK(euler_step)
    ->ArgsProduct({{1000, 4000, 16000}, {3, 64}})
    ->Args({100000, 3})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
