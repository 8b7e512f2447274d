// Distributed attention: compute against communication, measured in one run.
//
//   mpirun --oversubscribe -np P build/bench/distributed_bench [--reps K] [n ...]
//   mpirun --oversubscribe -np P build/bench/distributed_bench --flow [--reps K] [n ...]
//
// For each n (default 4096 16384): n tokens in R^64, a 4-head layer, the
// queries and keys split over the P ranks. Prints, on rank 0, the median
// wall time of attention_field_shard over K runs (default 3), the median time
// of the same key traffic alone (every rank's keys broadcast in rank order, as
// the attention sends them), the one-process time of attention_field on the
// whole input (rank 0 alone, P = 1 reference), the speed-up, the strong-scaling
// efficiency (speed-up / P), the share of the time the traffic would take if it
// were not overlapped, and the largest peak resident memory of a rank.
//
// --flow: one Euler step of the particle flow (flow(), steps = 1) of n
// particles in R^16 under a 1-head layer with biases (untied, so its field is
// split over the ranks), against the same step in one process. The numbers
// feed the model of docs/distributed.md.
#include <mpi.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "measattn/attention.hpp"
#include "measattn/communicator.hpp"
#include "measattn/flow.hpp"
#include "measattn/mpi.hpp"

namespace {

using measattn::Index;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The largest peak resident set of the ranks, in MiB.
double peak_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  double mine = static_cast<double>(usage.ru_maxrss) / 1024.0, most = 0;  // ru_maxrss: KiB
  MPI_Allreduce(&mine, &most, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return most;
}

// One Euler step of the flow of n particles, distributed and in one process.
void flow_step(Index n, int reps, int rank, int size) {
  const Index d = 16;
  const auto model = measattn::Model<double>::random(d, 1, true, 11);
  std::mt19937_64 rng(static_cast<unsigned long long>(n));
  std::normal_distribution<double> normal(0.0, 1.0);
  measattn::Matrix<double> x(n, d);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = normal(rng);
  const measattn::Measure<double> mu = measattn::Measure<double>::empirical(x);
  measattn::FlowOptions o;
  o.time = 0.01;
  o.steps = 1;
  o.cluster_tolerance = 0;
  std::vector<double> many;
  o.attention.communicator = measattn::from_mpi(MPI_COMM_WORLD);
  for (int repeat = 0; repeat < reps; ++repeat) {
    MPI_Barrier(MPI_COMM_WORLD);
    const auto t0 = Clock::now();
    const auto r = measattn::flow(model, mu, o);
    MPI_Barrier(MPI_COMM_WORLD);
    many.push_back(seconds_since(t0));
    if (r.particles.rows() != n) std::abort();
  }
  const double rss = peak_rss_mib();
  double one = 0;
  if (rank == 0) {
    o.attention.communicator = measattn::Communicator();
    std::vector<double> runs;
    for (int repeat = 0; repeat < reps; ++repeat) {
      const auto t0 = Clock::now();
      const auto r = measattn::flow(model, mu, o);
      runs.push_back(seconds_since(t0));
      if (r.particles.rows() != n) std::abort();
    }
    one = median(runs);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) {
    const double a = median(many);
    std::printf("%7ld %3d %12.4f %12.4f %9.2f %10.1f%% %10.0f\n", static_cast<long>(n), size, a,
                one, one / a, 100.0 * one / a / size, rss);
  }
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  std::vector<Index> sizes;
  int reps = 3;
  bool flow = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--flow") {
      flow = true;
    } else if (a == "--reps" && i + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++i]));
    } else {
      sizes.push_back(std::atol(argv[i]));
    }
  }
  if (sizes.empty()) sizes = {4096, 16384};
  if (flow) {
    if (rank == 0)
      std::printf("%7s %3s %12s %12s %9s %11s %10s\n", "n", "P", "step [s]", "1 proc [s]",
                  "speed-up", "efficiency", "rss [MiB]");
    for (const Index n : sizes) flow_step(n, reps, rank, size);
    MPI_Finalize();
    return 0;
  }
  const Index d = 64;
  const auto model = measattn::Model<double>::random(d, 4, true, 7);
  measattn::AttendOptions options;
  options.communicator = measattn::from_mpi(MPI_COMM_WORLD);
  if (rank == 0) {
    std::printf("%6s %3s %12s %12s %12s %9s %11s %11s %10s\n", "n", "P", "attend [s]",
                "traffic [s]", "1 proc [s]", "speed-up", "efficiency", "traffic %", "rss [MiB]");
  }
  for (const Index n : sizes) {
    std::mt19937_64 rng(static_cast<unsigned long long>(n));
    std::normal_distribution<double> normal(0.0, 1.0);
    measattn::Matrix<double> x(n, d);
    for (Index i = 0; i < x.size(); ++i) x.data()[i] = normal(rng);
    const measattn::RowRange mine = measattn::shard_rows(n, rank, size);
    const measattn::Matrix<double> local = x.middleRows(mine.begin, mine.size());
    const measattn::Vector<double> w = measattn::Vector<double>::Ones(mine.size());

    std::vector<double> attend, traffic;
    for (int repeat = 0; repeat < reps; ++repeat) {
      MPI_Barrier(MPI_COMM_WORLD);
      auto t0 = Clock::now();
      const auto out = measattn::attention_field_shard(model, local, w, local, options);
      MPI_Barrier(MPI_COMM_WORLD);
      attend.push_back(seconds_since(t0));
      // The same key traffic alone: each rank's atoms, log-weights and
      // positions, broadcast in rank order.
      t0 = Clock::now();
      for (int root = 0; root < size; ++root) {
        const measattn::RowRange part = measattn::shard_rows(n, root, size);
        std::vector<double> buffer(static_cast<size_t>(part.size() * (d + 2)));
        MPI_Bcast(buffer.data(), static_cast<int>(buffer.size()), MPI_DOUBLE, root, MPI_COMM_WORLD);
      }
      MPI_Barrier(MPI_COMM_WORLD);
      traffic.push_back(seconds_since(t0));
      if (out.rows() != mine.size()) std::abort();
    }
    const double rss = peak_rss_mib();
    double one = 0;
    if (rank == 0) {
      // The one-process reference on rank 0 (the other ranks wait).
      std::vector<double> runs;
      const measattn::Measure<double> mu = measattn::Measure<double>::empirical(x);
      for (int repeat = 0; repeat < reps; ++repeat) {
        const auto t0 = Clock::now();
        const auto out = measattn::attention_field(model, mu, x);
        runs.push_back(seconds_since(t0));
        if (out.rows() != n) std::abort();
      }
      one = median(runs);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) {
      const double a = median(attend), t = median(traffic);
      std::printf("%6ld %3d %12.4f %12.5f %12.4f %9.2f %10.1f%% %10.2f%% %10.0f\n",
                  static_cast<long>(n), size, a, t, one, one / a, 100.0 * one / a / size,
                  100.0 * t / a, rss);
    }
  }
  MPI_Finalize();
  return 0;
}
