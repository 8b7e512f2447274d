// Lipschitz search throughput (measure pairs evaluated per second) and the gap
// best upper / certified lower bound for random layers of dimension 2, 8, 64.
//
//   build/bench/lipschitz_bench                 (benchmarks, then both tables)
//   build/bench/lipschitz_bench --gap-only      (only the tables)
//
// The second table: how fast the search gets there. One thread, restarts run in
// order, the time at which each restart finishes (the progress callback), and
// the time until the best ratio so far first reaches 95% of the final one.
// GCC 12 false positive inside its AVX-512 intrinsics when Eigen kernels are inlined.
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>

#include "measattn/lipschitz.hpp"

using namespace measattn;

namespace {

Model<double> layer(Index d, unsigned long long seed) {
  return Model<double>::random(d, d >= 8 ? 2 : 1, true, seed, Potential::dot);
}

void BM_search(benchmark::State& state) {
  const Index d = state.range(0), atoms = state.range(1);
  const Model<double> m = layer(d, 1);
  LipschitzSearchOptions o;
  o.atoms = atoms;
  o.restarts = 4;
  o.steps = 25;
  o.threads = 1;
  std::int64_t evals = 0;
  for (auto _ : state) {
    const auto r = lipschitz_lower_bound(m, 1.0, o);
    benchmark::DoNotOptimize(r.ratio);
    evals += r.evaluations;
  }
  state.counters["pairs_per_s"] =
      benchmark::Counter(static_cast<double>(evals), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_search)->Args({2, 4})->Args({8, 4})->Args({64, 4})->Args({8, 16})->Unit(
    benchmark::kMillisecond);

void BM_upper_bounds(benchmark::State& state) {
  const Model<double> m = layer(state.range(0), 2);
  for (auto _ : state) benchmark::DoNotOptimize(lipschitz_upper_bounds(m, {.radius = 1}).best_w1);
}
BENCHMARK(BM_upper_bounds)->Arg(2)->Arg(8)->Arg(64)->Unit(benchmark::kMicrosecond);

void gap_table() {
  std::printf("\n%-4s %-7s %-6s %12s %12s %12s %12s\n", "d", "R", "layer", "w1_theorem",
              "best_upper", "lower", "gap");
  for (Index d : {2, 8, 64})
    for (double r : {0.5, 1.0})
      for (unsigned long long s = 1; s <= 3; ++s) {
        const Model<double> m = layer(d, s);
        const UpperBoundResult ub = lipschitz_upper_bounds(m, {.radius = r});
        LipschitzSearchOptions o;
        o.atoms = d >= 64 ? 4 : 6;
        o.restarts = 12;
        o.steps = 60;
        const auto lo = lipschitz_lower_bound(m, r, o);
        std::printf("%-4ld %-7.2f %-6llu %12.4g %12.4g %12.4g %12.3f\n", static_cast<long>(d), r, s,
                    ub.get("w1_theorem"), ub.best_w1, lo.ratio, ub.best_w1 / lo.ratio);
      }
}

void convergence_table() {
  std::printf("\n%-4s %-5s %8s %10s %12s %12s %12s %14s\n", "d", "R", "restarts", "seconds",
              "pairs/s", "final lower", "to 95% [s]", "restart at 95%");
  for (Index d : {2, 8, 64}) {
    const Model<double> m = layer(d, 1);
    LipschitzSearchOptions o;
    o.atoms = 4;
    o.restarts = 24;
    o.steps = 60;
    o.threads = 1;  // restarts in index order: the k-th callback is restart k - 1
    std::vector<double> finished;
    const auto t0 = std::chrono::steady_clock::now();
    o.progress_callback = [&](std::int64_t, std::int64_t) {
      finished.push_back(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    };
    const auto r = lipschitz_lower_bound(m, 1.0, o);
    const double total = finished.back();
    double best = 0, at = total;
    size_t restart = 0;
    for (size_t k = 0; k < r.restart_ratios.size(); ++k) {
      best = std::max(best, r.restart_ratios[k]);
      if (best >= 0.95 * r.ratio) {
        at = finished[k];
        restart = k;
        break;
      }
    }
    std::printf("%-4ld %-5.2f %8zu %10.3f %12.0f %12.5g %12.3f %14zu\n", static_cast<long>(d), 1.0,
                r.restart_ratios.size(), total, static_cast<double>(r.evaluations) / total, r.ratio,
                at, restart);
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool gap_only = false;
  for (int i = 1; i < argc; ++i)
    if (std::strcmp(argv[i], "--gap-only") == 0) gap_only = true;
  if (!gap_only) {
    benchmark::Initialize(&argc, argv);
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
  }
  gap_table();
  convergence_table();
  return 0;
}
