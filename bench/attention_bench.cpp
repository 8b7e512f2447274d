// Benchmarks of the streaming attention kernel (src/attention/attention.cpp).
//
// What is timed (and what bench/attention_vs_torch.py times on the PyTorch side):
//   BM_attention<S>/n/k   one call of attention_field() on a single-head model with
//                         E = d = k (Q, K, V, O projections included: 8 n k^2 FLOPs,
//                         under 2% of the 4 n^2 k FLOPs of attention proper at k <= 64),
//                         uniform weights, self-attention (queries = atoms).
//   BM_gemm<S>/n          C = A B for n x n matrices with Eigen's kernel compiled
//                         with -march=native, the two halves of C's rows on the two
//                         OpenMP threads: the machine's matrix-multiply peak that
//                         every attention figure is compared with (2 n^3 FLOPs).
// Counters: "GFLOPs" = FLOPs per second / 1e9 with the FLOP counts above
// (attention: 4 n^2 k, the two matrix products of every head).
//
// Large mode (not a Google Benchmark run):
//   attention_bench --large=N [--dim=16] [--heads=1] [--float]
// runs one self-attention on N random tokens and prints the wall time and the
// peak resident memory (getrusage ru_maxrss) as one JSON line.
#include <benchmark/benchmark.h>
#include <omp.h>
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>

#include "measattn/attention.hpp"
#include "measattn/measure.hpp"

using namespace measattn;

namespace {

template <class Scalar>
Matrix<Scalar> random_matrix(Index rows, Index cols, unsigned long long seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  Matrix<Scalar> m(rows, cols);
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < cols; ++j) m(i, j) = static_cast<Scalar>(normal(rng));
  return m;
}

template <class Scalar>
void BM_attention(benchmark::State& state) {
  const Index n = state.range(0);
  const Index k = state.range(1);
  const auto model = Model<Scalar>::random(k, 1, false, 7);
  const Measure<Scalar> mu(random_matrix<Scalar>(n, k, 11), Vector<Scalar>::Constant(n, 1));
  AttendOptions options;
  options.query_block = state.range(2);
  options.key_block = state.range(3);
  for (auto _ : state) {
    Matrix<Scalar> out = attention_field(model, mu, mu.atoms(), options);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const double flops = 4.0 * static_cast<double>(n) * static_cast<double>(n) * k;
  state.counters["GFLOPs"] =
      benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = omp_get_max_threads();
}

template <class Scalar>
void BM_gemm(benchmark::State& state) {
  const Index n = state.range(0);
  const Matrix<Scalar> a = random_matrix<Scalar>(n, n, 1);
  const Matrix<Scalar> b = random_matrix<Scalar>(n, n, 2);
  Matrix<Scalar> c(n, n);
  c.setZero();  // first touch outside the timing
  for (auto _ : state) {
#pragma omp parallel
    {
      const int t = omp_get_thread_num();
      const int nt = omp_get_num_threads();
      const Index r0 = n * t / nt;
      const Index r1 = n * (t + 1) / nt;
      c.middleRows(r0, r1 - r0).noalias() = a.middleRows(r0, r1 - r0) * b;
    }
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  const double flops = 2.0 * static_cast<double>(n) * n * n;
  state.counters["GFLOPs"] =
      benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = omp_get_max_threads();
}

void attention_args(benchmark::internal::Benchmark* b) {
  for (long n : {1024, 4096, 16384})
    for (long k : {16, 64}) b->Args({n, k, 0, 0});
  b->Unit(benchmark::kMillisecond)->UseRealTime()->MeasureProcessCPUTime();
}

void block_args(benchmark::internal::Benchmark* b) {
  // Block-size sweep at n = 4096, k = 64 (for tuning; not run by the driver).
  for (long qb : {48, 96, 192})
    for (long kb : {128, 256, 512}) b->Args({4096, 64, qb, kb});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK_TEMPLATE(BM_attention, float)->Apply(attention_args);
BENCHMARK_TEMPLATE(BM_attention, double)->Apply(attention_args);
BENCHMARK_TEMPLATE(BM_attention, float)->Name("BM_blocks<float>")->Apply(block_args);
BENCHMARK_TEMPLATE(BM_attention, double)->Name("BM_blocks<double>")->Apply(block_args);
BENCHMARK_TEMPLATE(BM_gemm, float)
    ->Arg(2048)
    ->Arg(4096)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_gemm, double)
    ->Arg(2048)
    ->Arg(4096)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

template <class Scalar>
int run_large(Index n, Index dim, Index heads) {
  const auto model = Model<Scalar>::random(dim, heads, false, 3);
  Measure<Scalar> mu(random_matrix<Scalar>(n, dim, 5), Vector<Scalar>::Constant(n, 1));
  const auto t0 = std::chrono::steady_clock::now();
  const Measure<Scalar> out = self_attention(model, mu);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  std::printf(
      "{\"n\": %ld, \"dim\": %ld, \"heads\": %ld, \"scalar\": \"%s\", \"threads\": %d, "
      "\"seconds\": %.3f, \"maxrss_mib\": %.1f, \"finite\": %s, \"gflops\": %.1f}\n",
      static_cast<long>(n), static_cast<long>(dim), static_cast<long>(heads),
      sizeof(Scalar) == 4 ? "float32" : "float64", omp_get_max_threads(), seconds,
      static_cast<double>(usage.ru_maxrss) / 1024.0, out.atoms().allFinite() ? "true" : "false",
      4.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(dim) / seconds *
          1e-9);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  long large = 0, dim = 16, heads = 1;
  bool use_float = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--large=", 8) == 0) large = std::atol(argv[i] + 8);
    if (std::strncmp(argv[i], "--dim=", 6) == 0) dim = std::atol(argv[i] + 6);
    if (std::strncmp(argv[i], "--heads=", 8) == 0) heads = std::atol(argv[i] + 8);
    if (std::strcmp(argv[i], "--float") == 0) use_float = true;
  }
  if (large > 0) {
    return use_float ? run_large<float>(large, dim, heads) : run_large<double>(large, dim, heads);
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
