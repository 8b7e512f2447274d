// Exact W_p: min-cost flow with LEMON's network simplex, by column generation.
//
// Supplies are integers: the weights are scaled to 2^53 units with exact
// largest-remainder rounding, so that LEMON balances them exactly (its
// documented requirement); costs are quantized to int64 for the simplex only
// (see solve_network), so that it runs in exact arithmetic and cannot cycle.
// Every reported number uses the exact double costs. The optimal integer flow is then
// re-solved on its own support forest with the exact double weights ("polish"),
// which gives the plan for the true weights; its marginal error is reported.
//
// Large problems start from a sparse arc set (k nearest neighbours of every
// source atom plus the monotone plan along one direction, which makes the
// restricted problem feasible), solve it, and sweep all n*m reduced costs
// c_ij - f_i - g_j with the duals of the restricted problem; arcs with negative
// reduced cost are added and the problem re-solved until none is left. Then the
// duals are feasible for the full problem, so the plan is optimal.
//
// The defaults of WassersteinOptions (neighbours, arcs_per_round, prune,
// prune_rounds) were tuned on uniform measures in R^8, n = 500..4000
// (docs/performance.md).
//
// LEMON's simplex cannot be warm-started from a basis, and a cold re-solve of
// the whole arc set each round dominated the run time. Two things make the
// re-solves cheap: (1) every re-solve is handed the reduced costs
// c_ij - f_i - g_j under the previous duals instead of c_ij (the same optimal
// plans, and the duals shift back by f, g): the previous optimal support then
// costs zero, and LEMON's initial pivots (cheapest arc into every sink) and
// block search find a near-optimal tree at once; (2) during the first
// prune_rounds rounds, arcs off the support whose reduced cost is above
// prune * max cost are dropped (only after a round that strictly lowered the
// objective; see the sweep), so the simplex sees a few arcs per row instead of an
// ever-growing set. Column generation terminates for every option value;
// optimality is certified by the full sweep either way. Measured at n = 4000 in
// R^8: 12 rounds / 2.7 s before, 7 rounds / 0.7 s after (docs/performance.md).
// GCC 12 reports a false "used uninitialized" inside its AVX-512 intrinsics
// when Eigen vectorizes exp/pow/sqrt (intrinsic header, not our code).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wall"
#pragma GCC diagnostic ignored "-Wextra"
#include <lemon/network_simplex.h>
#include <lemon/static_graph.h>
#pragma GCC diagnostic pop

#include "common/parallel.hpp"
#include "measattn/error.hpp"
#include "measattn/interrupt.hpp"
#include "measattn/progress.hpp"
#include "measattn/wasserstein.hpp"
#include "wasserstein/detail.hpp"

namespace measattn::detail {

constexpr std::int64_t kUnits = std::int64_t{1} << 53;

/// Integer supplies summing to kUnits exactly (largest remainder rounding).
std::vector<std::int64_t> integer_weights(const VectorD& w) {
  const Index n = w.size();
  long double total = 0;
  for (Index i = 0; i < n; ++i) total += w[i];
  std::vector<std::int64_t> out(static_cast<size_t>(n));
  std::vector<std::pair<long double, Index>> frac(static_cast<size_t>(n));
  std::int64_t sum = 0;
  for (Index i = 0; i < n; ++i) {
    const long double x = static_cast<long double>(w[i]) / total * static_cast<long double>(kUnits);
    const long double f = std::floor(x);
    out[static_cast<size_t>(i)] = static_cast<std::int64_t>(f);
    sum += out[static_cast<size_t>(i)];
    frac[static_cast<size_t>(i)] = {x - f, i};
  }
  std::int64_t missing = kUnits - sum;
  if (missing > 0) {
    const auto k = static_cast<size_t>(std::min<std::int64_t>(missing, n));
    std::partial_sort(frac.begin(), frac.begin() + static_cast<std::ptrdiff_t>(k), frac.end(),
                      [](const auto& a, const auto& b) {
                        return a.first != b.first ? a.first > b.first : a.second < b.second;
                      });
    // missing < n always (each floor loses < 1 unit); the loop guards anyway.
    size_t t = 0;
    while (missing > 0) {
      ++out[static_cast<size_t>(frac[t % k].second)];
      --missing;
      ++t;
    }
  }
  return out;
}

/// Solves min sum c_e x_e over the bipartite arcs (i, j) (sorted by i) with
/// integer supplies A (sources) and demands B (sinks).
///
/// Costs may be negative (reduced costs). They are passed to LEMON as int64
/// too: c_e scaled so that the largest |c_e| is
/// 2^58 / (n + m + 1) and rounded. In integer arithmetic the simplex is exact
/// (with floating costs, rounding in the potentials makes it cycle on
/// degenerate instances); the sum of any n + m costs stays below 2^58, far
/// from overflow next to LEMON's artificial cost 2^62. The relative
/// quantization, about (n + m) 2^-58, is far below the tolerance of the
/// reduced-cost check, which uses the exact double costs.
NetworkSolution solve_network(Index n, Index m, const std::vector<std::int64_t>& A,
                              const std::vector<std::int64_t>& B,
                              const std::vector<std::pair<int, int>>& arcs,
                              const std::vector<double>& cost) {
  using Graph = lemon::StaticDigraph;
  using Simplex = lemon::NetworkSimplex<Graph, std::int64_t, std::int64_t>;
  Graph graph;
  std::vector<std::pair<int, int>> list(arcs.size());
  for (size_t k = 0; k < arcs.size(); ++k)
    list[k] = {arcs[k].first, static_cast<int>(n) + arcs[k].second};
  graph.build(static_cast<int>(n + m), list.begin(), list.end());
  double max_cost = 0;
  for (double c : cost) max_cost = std::max(max_cost, std::abs(c));
  const double scale =
      max_cost > 0 ? std::ldexp(1.0, 58) / static_cast<double>(n + m + 1) / max_cost : 1.0;
  Graph::ArcMap<std::int64_t> cmap(graph);
  Graph::NodeMap<std::int64_t> supply(graph);
  for (size_t k = 0; k < arcs.size(); ++k)
    cmap[graph.arc(static_cast<int>(k))] = std::llround(cost[k] * scale);
  for (Index i = 0; i < n; ++i) supply[graph.node(static_cast<int>(i))] = A[static_cast<size_t>(i)];
  for (Index j = 0; j < m; ++j)
    supply[graph.node(static_cast<int>(n + j))] = -B[static_cast<size_t>(j)];
  Simplex simplex(graph);
  simplex.costMap(cmap).supplyMap(supply);
  NetworkSolution sol;
  const auto type = simplex.run(Simplex::BLOCK_SEARCH);
  if (type != Simplex::OPTIMAL) return sol;
  sol.ok = true;
  sol.flow.resize(arcs.size());
  for (size_t k = 0; k < arcs.size(); ++k)
    sol.flow[k] = simplex.flow(graph.arc(static_cast<int>(k)));
  // LEMON's optimality: c_uv + pi_u - pi_v >= 0, so f_i = -pi_i, g_j = pi_j.
  sol.f.resize(n);
  sol.g.resize(m);
  for (Index i = 0; i < n; ++i)
    sol.f[i] = -static_cast<double>(simplex.potential(graph.node(static_cast<int>(i)))) / scale;
  for (Index j = 0; j < m; ++j)
    sol.g[j] = static_cast<double>(simplex.potential(graph.node(static_cast<int>(n + j)))) / scale;
  return sol;
}

/// Flows for the exact weights on the support of an integer plan: leaf
/// elimination on the support forest. Returns the marginal error.
double polish_flows(Index n, Index m, const VectorD& a, const VectorD& b,
                    const std::vector<std::pair<int, int>>& edges,
                    const std::vector<std::int64_t>& int_flow, std::vector<double>& flow) {
  const Index N = n + m;
  const size_t E = edges.size();
  flow.assign(E, 0);
  std::vector<int> deg(static_cast<size_t>(N) + 1, 0);
  for (const auto& e : edges) {
    ++deg[static_cast<size_t>(e.first) + 1];
    ++deg[static_cast<size_t>(n + e.second) + 1];
  }
  for (Index v = 0; v < N; ++v) deg[static_cast<size_t>(v) + 1] += deg[static_cast<size_t>(v)];
  std::vector<int> adj(2 * E);
  std::vector<int> fill(deg.begin(), deg.end() - 1);
  for (size_t k = 0; k < E; ++k) {
    adj[static_cast<size_t>(fill[static_cast<size_t>(edges[k].first)]++)] = static_cast<int>(k);
    adj[static_cast<size_t>(fill[static_cast<size_t>(n + edges[k].second)]++)] =
        static_cast<int>(k);
  }
  // Net supply of each node: a_i for sources, -b_j for sinks.
  std::vector<double> net(static_cast<size_t>(N));
  for (Index i = 0; i < n; ++i) net[static_cast<size_t>(i)] = a[i];
  for (Index j = 0; j < m; ++j) net[static_cast<size_t>(n + j)] = -b[j];
  std::vector<int> parent_edge(static_cast<size_t>(N), -1);
  std::vector<char> seen(static_cast<size_t>(N), 0), used(E, 0);
  std::vector<int> order;
  order.reserve(static_cast<size_t>(N));
  std::vector<int> roots;
  for (Index s = 0; s < N; ++s) {
    if (seen[static_cast<size_t>(s)]) continue;
    seen[static_cast<size_t>(s)] = 1;
    roots.push_back(static_cast<int>(s));
    size_t head = order.size();
    order.push_back(static_cast<int>(s));
    while (head < order.size()) {
      const int v = order[head++];
      for (int q = deg[static_cast<size_t>(v)]; q < deg[static_cast<size_t>(v) + 1]; ++q) {
        const int k = adj[static_cast<size_t>(q)];
        if (used[static_cast<size_t>(k)]) continue;
        used[static_cast<size_t>(k)] = 1;
        const int u = (edges[static_cast<size_t>(k)].first == v)
                          ? static_cast<int>(n) + edges[static_cast<size_t>(k)].second
                          : edges[static_cast<size_t>(k)].first;
        if (seen[static_cast<size_t>(u)]) {
          // A cycle edge (not expected from a basic solution): keep its
          // integer flow and treat it as fixed.
          const double fl =
              static_cast<double>(int_flow[static_cast<size_t>(k)]) / static_cast<double>(kUnits);
          flow[static_cast<size_t>(k)] = fl;
          net[static_cast<size_t>(edges[static_cast<size_t>(k)].first)] -= fl;
          net[static_cast<size_t>(n + edges[static_cast<size_t>(k)].second)] += fl;
          continue;
        }
        seen[static_cast<size_t>(u)] = 1;
        parent_edge[static_cast<size_t>(u)] = k;
        order.push_back(u);
      }
    }
  }
  double error = 0;
  for (size_t q = order.size(); q-- > 0;) {
    const int v = order[q];
    const int k = parent_edge[static_cast<size_t>(v)];
    if (k < 0) {
      error += std::abs(net[static_cast<size_t>(v)]);
      continue;
    }
    const auto& e = edges[static_cast<size_t>(k)];
    const bool source = v < n;
    double fl = source ? net[static_cast<size_t>(v)] : -net[static_cast<size_t>(v)];
    if (fl < 0) {
      error += -fl;
      fl = 0;
    }
    flow[static_cast<size_t>(k)] = fl;
    net[static_cast<size_t>(e.first)] -= fl;
    net[static_cast<size_t>(n + e.second)] += fl;
    net[static_cast<size_t>(v)] = 0;
  }
  return error;
}

namespace {

/// The monotone plan along theta computed on the integer supplies: its arcs make
/// the restricted problem feasible.
std::vector<std::pair<int, int>> projected_plan_arcs(const DoubleAtoms& mu, const DoubleAtoms& nu,
                                                     const VectorD& theta,
                                                     const std::vector<std::int64_t>& A,
                                                     const std::vector<std::int64_t>& B) {
  const Index n = mu.size(), m = nu.size();
  const SortedProjections proj = sorted_projections(mu, nu, theta);
  const auto& ox = proj.ox;
  const auto& oy = proj.oy;
  std::vector<std::pair<int, int>> out;
  size_t i = 0, j = 0;
  std::int64_t ra = A[ox[0]], rb = B[oy[0]];
  while (i < static_cast<size_t>(n) && j < static_cast<size_t>(m)) {
    out.emplace_back(static_cast<int>(ox[i]), static_cast<int>(oy[j]));
    const std::int64_t t = std::min(ra, rb);
    ra -= t;
    rb -= t;
    if (ra == 0 && ++i < static_cast<size_t>(n)) ra = A[ox[i]];
    if (rb == 0 && ++j < static_cast<size_t>(m)) rb = B[oy[j]];
  }
  return out;
}

/// Costs handed to one solve: ||x - y||^p itself, or (large p) the costs in units of
/// V^p, min((||x - y|| / V)^p, cap), computed in log form. See exact_transport.
struct CostTransform {
  bool active = false;
  double log_unit = 0;  ///< p log V
  double cap = std::numeric_limits<double>::infinity();
  double operator()(double squared, double p) const {
    if (!active) return cost_from_squared(squared, p);
    if (!(squared > 0)) return 0;
    return std::min(std::exp(0.5 * p * std::log(squared) - log_unit), cap);
  }
};

struct SolveOutcome {
  WassersteinResult result;
  double true_value = 0;  ///< (cost of the plan under the true costs)^(1/p), robust
  double dual = 0;        ///< certified dual value under the handed costs (<= optimum)
};

SolveOutcome solve_once(const DoubleAtoms& mu, const DoubleAtoms& nu,
                        const WassersteinOptions& options, const CostTransform& transform) {
  const Index n = mu.size(), m = nu.size(), d = mu.dim();
  const double p = options.p;
  const VectorD& a = *mu.w;
  const VectorD& b = *nu.w;
  WassersteinResult result;
  result.p = p;
  result.method = WassersteinMethod::exact;
  result.kind = Bound::exact;
  result.status = Status::optimal;

  const std::vector<std::int64_t> A = integer_weights(a);
  const std::vector<std::int64_t> B = integer_weights(b);
  auto arc_cost = [&](int i, int j) { return transform(squared_distance(*mu.x, i, *nu.x, j), p); };
  auto row_costs = [&](Index i, const MatrixD& yt_, double* out) {
    if (!transform.active) return cost_row(*mu.x, i, yt_, p, out);
    cost_row(*mu.x, i, yt_, 2.0, out);
    for (Index j = 0; j < m; ++j) out[j] = transform(out[j], p);
  };

  // Arc set: per source i, the sorted sink indices.
  std::vector<std::vector<int>> cols(static_cast<size_t>(n));
  const bool dense = static_cast<double>(n) * static_cast<double>(m) <=
                     static_cast<double>(options.dense_arc_limit);
  const MatrixD yt = dense ? MatrixD() : MatrixD(nu.x->transpose());
  const bool parallel = static_cast<double>(n) * static_cast<double>(m) > 1e6;
  if (dense) {
    for (auto& c : cols) {
      c.resize(static_cast<size_t>(m));
      std::iota(c.begin(), c.end(), 0);
    }
  } else {
    const int k = static_cast<int>(std::min<Index>(std::max(1, options.neighbours), m));
    RegionGuard guard;  // exceptions and Ctrl-C, per row
#pragma omp parallel if (parallel)
    {
      std::vector<double> row, sorted;
      guard.run([&] {
        row.resize(static_cast<size_t>(m));
        sorted.resize(static_cast<size_t>(m));
      });
#pragma omp for schedule(static)
      for (Index i = 0; i < n; ++i) {
        guard.run([&] {
          row_costs(i, yt, row.data());
          // The k-th smallest cost by selection on the values, then the k nearest
          // in index order (ties broken by the smaller index: deterministic).
          sorted = row;
          std::nth_element(sorted.begin(), sorted.begin() + (k - 1), sorted.end());
          const double kth = sorted[static_cast<size_t>(k - 1)];
          auto& c = cols[static_cast<size_t>(i)];
          c.clear();
          c.reserve(static_cast<size_t>(k) + 4);
          for (Index j = 0; j < m; ++j)
            if (row[static_cast<size_t>(j)] < kth) c.push_back(static_cast<int>(j));
          for (Index j = 0; j < m && static_cast<int>(c.size()) < k; ++j)
            if (row[static_cast<size_t>(j)] == kth) c.push_back(static_cast<int>(j));
        });
      }
    }
    guard.finish();
    VectorD theta = mu.x->colwise().mean().transpose() - nu.x->colwise().mean().transpose();
    if (!(theta.norm() > 0)) theta = VectorD::Ones(d);
    theta.normalize();
    for (const auto& e : projected_plan_arcs(mu, nu, theta, A, B))
      cols[static_cast<size_t>(e.first)].push_back(e.second);
    for (auto& c : cols) {
      std::sort(c.begin(), c.end());
      c.erase(std::unique(c.begin(), c.end()), c.end());
    }
  }

  std::vector<std::pair<int, int>> arcs;
  std::vector<double> costs, reduced;
  NetworkSolution sol;
  std::vector<double> min_reduced(static_cast<size_t>(n), 0);
  int rounds = 0;
  double previous_objective = std::numeric_limits<double>::infinity();
  bool optimal = false;
  Progress progress("wasserstein exact", options.max_rounds);
  const bool show = options.progress && !dense;
  while (true) {
    measattn::detail::check_interrupt();  // Ctrl-C from Python (no-op without a handler)
    ++rounds;
    arcs.clear();
    costs.clear();
    for (Index i = 0; i < n; ++i) {
      for (int j : cols[static_cast<size_t>(i)]) {
        arcs.emplace_back(static_cast<int>(i), j);
        costs.push_back(arc_cost(static_cast<int>(i), j));
      }
    }
    if (rounds == 1) {
      sol = solve_network(n, m, A, B, arcs, costs);
    } else {
      // Warm start through the costs: solve for the reduced costs under the
      // previous duals, then shift the new duals back.
      const VectorD f0 = sol.f, g0 = sol.g;
      reduced.resize(costs.size());
      for (size_t k = 0; k < arcs.size(); ++k)
        reduced[k] = costs[k] - f0[arcs[k].first] - g0[arcs[k].second];
      sol = solve_network(n, m, A, B, arcs, reduced);
      if (sol.ok) {
        sol.f += f0;
        sol.g += g0;
      }
    }
    if (!sol.ok) throw std::runtime_error("wasserstein_exact: network simplex failed (infeasible)");
    if (dense) {
      optimal = true;
      break;
    }
    // Full reduced-cost sweep.
    double scale = 0;
    for (double c : costs) scale = std::max(scale, c);
    const double tol = 1e-11 * std::max(scale, 1e-300);
    std::vector<std::vector<int>> added(static_cast<size_t>(n));
    const int per_round = std::max(1, options.arcs_per_round);
    // Arc k of row i sits at arcs[offset[i] + position in cols[i]].
    std::vector<size_t> offset(static_cast<size_t>(n) + 1, 0);
    for (Index i = 0; i < n; ++i)
      offset[static_cast<size_t>(i) + 1] =
          offset[static_cast<size_t>(i)] + cols[static_cast<size_t>(i)].size();
    // Pruning keeps the support, so the objective never increases. Arcs are
    // dropped only after a round that strictly lowered it: then no arc set can
    // repeat (each has one optimal value, and within a plateau of equal values
    // the set only grows), so column generation terminates whatever the options.
    double objective = 0;
    for (size_t k = 0; k < arcs.size(); ++k)
      objective += static_cast<double>(sol.flow[k]) * costs[k];
    const bool decreased = objective < previous_objective * (1 - 1e-12);
    previous_objective = objective;
    const bool prune = decreased && rounds <= options.prune_rounds && std::isfinite(options.prune);
    const double prune_above = options.prune * scale;
    RegionGuard guard;  // exceptions and Ctrl-C, per row
#pragma omp parallel if (parallel)
    {
      std::vector<double> row;
      std::vector<std::pair<double, int>> cand;
      guard.run([&] { row.resize(static_cast<size_t>(m)); });
#pragma omp for schedule(static)
      for (Index i = 0; i < n; ++i) {
        guard.run([&] {
          row_costs(i, yt, row.data());
          cand.clear();
          const double fi = sol.f[i];
          // Vectorized minimum first; candidates are collected only from rows
          // that have a violation (few, after the first rounds).
          auto rrow = Eigen::Map<const Eigen::ArrayXd>(row.data(), m) - fi - sol.g.array();
          const double lo = std::min(0.0, rrow.minCoeff());
          if (lo < -tol) {
            for (Index j = 0; j < m; ++j) {
              const double r = row[static_cast<size_t>(j)] - fi - sol.g[j];
              if (r < -tol) cand.emplace_back(r, static_cast<int>(j));
            }
          }
          min_reduced[static_cast<size_t>(i)] = lo;
          auto& have = cols[static_cast<size_t>(i)];
          if (prune) {
            size_t keep = 0;
            for (size_t q = 0; q < have.size(); ++q) {
              const int j = have[q];
              if (sol.flow[offset[static_cast<size_t>(i)] + q] > 0 ||
                  row[static_cast<size_t>(j)] - fi - sol.g[j] <= prune_above)
                have[keep++] = j;
            }
            have.resize(keep);
          }
          if (cand.empty()) return;
          const size_t take = std::min(cand.size(), static_cast<size_t>(per_round));
          std::partial_sort(cand.begin(), cand.begin() + static_cast<std::ptrdiff_t>(take),
                            cand.end());
          auto& out = added[static_cast<size_t>(i)];
          for (size_t q = 0; q < take; ++q) {
            if (!std::binary_search(have.begin(), have.end(), cand[q].second))
              out.push_back(cand[q].second);
          }
        });
      }
    }
    guard.finish();
    std::int64_t count = 0;
    for (Index i = 0; i < n; ++i) {
      auto& add = added[static_cast<size_t>(i)];
      if (add.empty()) continue;
      count += static_cast<std::int64_t>(add.size());
      auto& c = cols[static_cast<size_t>(i)];
      c.insert(c.end(), add.begin(), add.end());
      std::sort(c.begin(), c.end());
    }
    if (show) progress.update(rounds, std::to_string(arcs.size()) + " arcs");
    if (count == 0) {
      optimal = true;
      break;
    }
    if (rounds >= options.max_rounds) break;
  }
  progress.finish();

  // Support of the integer plan, re-solved for the exact weights.
  std::vector<std::pair<int, int>> support;
  std::vector<std::int64_t> support_flow;
  for (size_t k = 0; k < arcs.size(); ++k) {
    if (sol.flow[k] > 0) {
      support.push_back(arcs[k]);
      support_flow.push_back(sol.flow[k]);
    }
  }
  std::vector<double> flow;
  const double marginal_error = polish_flows(n, m, a, b, support, support_flow, flow);
  double cost = 0;
  for (size_t k = 0; k < support.size(); ++k)
    cost += flow[k] * arc_cost(support[k].first, support[k].second);
  cost = std::max(cost, 0.0);
  // Certified dual value: f_i + min_j (c_ij - f_i - g_j) (the c-transform, from the
  // last sweep; over the whole arc set when it is dense) and g.
  if (dense) {
    for (Index i = 0; i < n; ++i) min_reduced[static_cast<size_t>(i)] = 0;
    for (size_t k = 0; k < arcs.size(); ++k) {
      const double r = costs[k] - sol.f[arcs[k].first] - sol.g[arcs[k].second];
      auto& mr = min_reduced[static_cast<size_t>(arcs[k].first)];
      mr = std::min(mr, r);
    }
  }
  double dual_value = 0;
  for (Index i = 0; i < n; ++i)
    if (a[i] > 0)
      dual_value += a[i] * (sol.f[i] + std::min(0.0, min_reduced[static_cast<size_t>(i)]));
  for (Index j = 0; j < m; ++j)
    if (b[j] > 0) dual_value += b[j] * sol.g[j];
  SolveOutcome outcome;
  outcome.dual = dual_value;
  {
    // The plan's true cost, as M (sum flow (dist / M)^p)^(1/p) with M its longest arc.
    double longest = 0;
    for (size_t k = 0; k < support.size(); ++k)
      if (flow[k] > 0)
        longest = std::max(longest, std::sqrt(squared_distance(*mu.x, support[k].first, *nu.x,
                                                               support[k].second)));
    double sum = 0;
    if (longest > 0) {
      for (size_t k = 0; k < support.size(); ++k)
        if (flow[k] > 0)
          sum += flow[k] * cost_from_abs(std::sqrt(squared_distance(*mu.x, support[k].first, *nu.x,
                                                                    support[k].second)) /
                                             longest,
                                         p);
    }
    outcome.true_value = longest > 0 ? longest * std::pow(sum, 1.0 / p) : 0.0;
  }

  result.cost = cost;
  result.value = p == 1 ? cost : std::pow(cost, 1.0 / p);
  result.iterations = rounds;
  if (optimal) {
    result.lower = result.upper = result.value;
    result.message = "optimal: network simplex on " + std::to_string(arcs.size()) + " of " +
                     std::to_string(n * m) + " arcs, " + std::to_string(rounds) + " round(s)";
  } else {
    double dual = 0;
    for (Index i = 0; i < n; ++i) dual += a[i] * (sol.f[i] + min_reduced[static_cast<size_t>(i)]);
    for (Index j = 0; j < m; ++j) dual += b[j] * sol.g[j];
    dual = std::clamp(dual, 0.0, cost);
    result.kind = Bound::upper;
    result.status = Status::iteration_limit;
    result.upper = result.value;
    result.lower = p == 1 ? dual : std::pow(dual, 1.0 / p);
    result.message =
        "column generation stopped at max_rounds = " + std::to_string(options.max_rounds) +
        "; value is the cost of a feasible plan";
  }
  if (options.want_plan || options.want_dense_plan) {
    TransportPlan plan;
    plan.marginal_error = marginal_error;
    std::vector<size_t> perm(support.size());
    std::iota(perm.begin(), perm.end(), size_t{0});
    std::sort(perm.begin(), perm.end(),
              [&](size_t u, size_t v) { return support[u] < support[v]; });
    for (size_t k : perm) {
      if (flow[k] > 0) plan.entries.push_back({support[k].first, support[k].second, flow[k]});
    }
    if (options.want_dense_plan) {
      MatrixD dense_plan = MatrixD::Zero(n, m);
      for (const auto& e : plan.entries) dense_plan(e.i, e.j) += e.mass;
      plan.dense = std::move(dense_plan);
    }
    result.plan = std::move(plan);
  }
  if (options.want_potentials) {
    Potentials pot{sol.f, sol.g};
    if (!dense) {
      // Make the pair feasible everywhere (c-transform step on f).
      for (Index i = 0; i < n; ++i) pot.f[i] += std::min(0.0, min_reduced[static_cast<size_t>(i)]);
    }
    result.potentials = std::move(pot);
  }
  if (!(marginal_error <= 1e-12) && result.message.find("marginal") == std::string::npos)
    result.message += "; marginal error " + std::to_string(marginal_error);
  outcome.result = std::move(result);
  return outcome;
}

}  // namespace

// Large p. The atoms arrive rescaled so that the longest arc has length 1 (see
// NormalizedPair), so no cost overflows; but ||x - y||^p still spans far more than
// the simplex's integer costs can resolve (about 2^58 / (n + m) of the largest), and
// the arcs that matter (around the optimal value, often far shorter than the longest
// arc) would all round to cost 0. So after the first solve, the problem is solved
// again in units of V^p, V the true value of the best plan so far: costs
// min((||x - y|| / V)^p, 2^20), computed in log form. The optimum is then about 1,
// resolved to about 2^-38 (n + m); capped arcs can carry at most 2^-20 of mass in an
// optimal plan. Every solve gives a feasible plan (its true cost, computed robustly,
// is an upper bound) and dual potentials feasible for costs below the true ones (a
// certified lower bound). The value is the best plan's; kind exact when the two
// bounds agree to 1e-9, else upper with both bounds reported.
WassersteinResult exact_transport(const DoubleAtoms& mu, const DoubleAtoms& nu,
                                  const WassersteinOptions& options) {
  const double p = options.p;
  if (!(p > 2)) return solve_once(mu, nu, options, CostTransform{}).result;
  SolveOutcome best = solve_once(mu, nu, options, CostTransform{});
  // First solve: costs <= 1 (unit 1), so the dual is in true units.
  double lower = best.dual > 0 ? std::pow(best.dual, 1.0 / p) : 0.0;
  double value = best.true_value;
  double best_log_unit = 0;
  // Re-solve only when the first solve's own dual does not certify its plan.
  for (int pass = 0; pass < 4 && value > 0 && lower < value * (1 - 1e-9); ++pass) {
    check_interrupt();
    CostTransform t;
    t.active = true;
    t.log_unit = p * std::log(value);
    t.cap = std::ldexp(1.0, 20);
    SolveOutcome next = solve_once(mu, nu, options, t);
    if (next.dual > 0) lower = std::max(lower, value * std::pow(next.dual, 1.0 / p));
    const bool better = next.true_value < value;
    if (better) {
      const double previous = value;
      value = next.true_value;
      best = std::move(next);
      best_log_unit = t.log_unit;
      if (value >= previous * (1 - 1e-12)) break;
    } else {
      break;
    }
    if (lower >= value * (1 - 1e-12)) break;
  }
  // Very large p: the costs resolve only arcs within a narrow band around the unit
  // V, so the unit must sit at W_p itself. Bisection on log V: a plan whose true
  // value is below V proves W_p < V; otherwise V is (taken as) too small.
  if (lower < value * (1 - 1e-9) && value > 0) {
    double lo = lower > 0 ? std::log(lower) : std::log(value) - 40.0;
    double hi = std::log(value);
    for (int step = 0; step < 48 && hi - lo > 1e-10; ++step) {
      check_interrupt();
      const double mid = 0.5 * (lo + hi);
      CostTransform t;
      t.active = true;
      t.log_unit = p * mid;
      t.cap = std::ldexp(1.0, 20);
      SolveOutcome next = solve_once(mu, nu, options, t);
      const double u = std::exp(mid);
      if (next.dual > 0) lower = std::max(lower, u * std::pow(next.dual, 1.0 / p));
      if (next.true_value < value) {
        value = next.true_value;
        best = std::move(next);
        best_log_unit = t.log_unit;
      }
      if (value < u)
        hi = std::log(value);
      else
        lo = mid;
      if (lower >= value * (1 - 1e-12)) break;
    }
  }
  WassersteinResult r = std::move(best.result);
  lower = std::min(lower, value);
  r.value = r.upper = value;
  r.cost = std::pow(value, p);
  if (r.status == Status::optimal && lower >= value * (1 - 1e-9)) {
    r.lower = value;
    r.kind = Bound::exact;
  } else {
    r.lower = lower;
    r.kind = Bound::upper;
    char buf[200];
    std::snprintf(buf, sizeof buf,
                  "; p = %g: the costs span more than the solver resolves; value is the cost "
                  "of the best plan found, lower bound from the duals",
                  p);
    r.message += buf;
  }
  if (r.potentials && best_log_unit != 0) {
    // Feasible for the handed costs, which are at most the true costs / V^p.
    const double unit = std::exp(best_log_unit);
    r.potentials->f *= unit;
    r.potentials->g *= unit;
  }
  return r;
}

}  // namespace measattn::detail
