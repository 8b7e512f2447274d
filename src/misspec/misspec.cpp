// Mis-specified inputs: the certified bound L W1(mu', mu) next to the realized
// output deviation W1(F(mu'), F(mu)) for sampling, noise and corruption.
// GCC 12 false positive inside its AVX-512 intrinsics when Eigen kernels are inlined.
#pragma GCC diagnostic ignored "-Wuninitialized"

#include "measattn/misspec.hpp"

#include <Eigen/Eigenvalues>
#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>
#include <random>
#include <vector>

#include "common/collectives.hpp"
#include "measattn/error.hpp"
#include "measattn/interrupt.hpp"
#include "measattn/lipschitz.hpp"
#include "measattn/progress.hpp"
#include "measattn/wasserstein.hpp"

namespace measattn {

std::string to_string(MisspecKind k) {
  switch (k) {
    case MisspecKind::sample:
      return "sample";
    case MisspecKind::noise:
      return "noise";
    case MisspecKind::corrupt:
      return "corrupt";
  }
  return "unknown";
}

MisspecKind parse_misspec_kind(const std::string& name, const std::string& field) {
  if (name == "sample") return MisspecKind::sample;
  if (name == "noise") return MisspecKind::noise;
  if (name == "corrupt") return MisspecKind::corrupt;
  throw invalid_argument(field + ": unknown kind '" + name +
                         "' (expected sample, noise or corrupt)");
}

void MisspecOptions::validate() const {
  if (repeats < 1) throw invalid_argument("repeats: must be >= 1");
  if (!(radius >= 0) || !std::isfinite(radius)) throw invalid_argument("radius: must be >= 0");
  switch (kind) {
    case MisspecKind::sample:
      if (sizes.empty()) throw invalid_argument("sizes: at least one size");
      for (Index n : sizes)
        if (n < 1) throw invalid_argument("sizes: sizes must be >= 1");
      break;
    case MisspecKind::noise:
      if (sigmas.empty()) throw invalid_argument("sigmas: at least one value");
      for (double s : sigmas)
        if (!(s >= 0) || !std::isfinite(s)) throw invalid_argument("sigmas: must be >= 0");
      break;
    case MisspecKind::corrupt:
      if (eps.empty()) throw invalid_argument("eps: at least one value");
      for (double e : eps)
        if (!(e >= 0 && e <= 1)) throw invalid_argument("eps: must be in [0, 1]");
      break;
  }
}

double expected_gaussian_norm(Index d) {
  if (d < 1) throw invalid_argument("d: must be >= 1");
  const double h = 0.5 * static_cast<double>(d);
  return std::sqrt(2.0) * std::exp(std::lgamma(h + 0.5) - std::lgamma(h));
}

double loglog_slope(const std::vector<double>& x, const std::vector<double>& y) {
  std::vector<double> lx, ly;
  for (size_t i = 0; i < x.size() && i < y.size(); ++i)
    if (x[i] > 0 && y[i] > 0) {
      lx.push_back(std::log(x[i]));
      ly.push_back(std::log(y[i]));
    }
  if (lx.size() < 2) return std::numeric_limits<double>::quiet_NaN();
  const double n = static_cast<double>(lx.size());
  double mx = 0, my = 0;
  for (size_t i = 0; i < lx.size(); ++i) {
    mx += lx[i] / n;
    my += ly[i] / n;
  }
  double sxy = 0, sxx = 0;
  for (size_t i = 0; i < lx.size(); ++i) {
    sxy += (lx[i] - mx) * (ly[i] - my);
    sxx += (lx[i] - mx) * (lx[i] - mx);
  }
  return sxx > 0 ? sxy / sxx : std::numeric_limits<double>::quiet_NaN();
}

namespace {

struct Draw {
  double parameter;
  MeasureD mu_prime;
  double a_priori_w1;  // sigma E||xi|| or 2 R eps style bound on W1 in (NaN if none)
};

MeasureD sample_measure(const MeasureD& mu, Index n, std::mt19937_64& rng) {
  std::vector<double> cdf(static_cast<size_t>(mu.size()));
  double acc = 0;
  for (Index i = 0; i < mu.size(); ++i) cdf[static_cast<size_t>(i)] = acc += mu.weight(i);
  std::uniform_real_distribution<double> u(0.0, acc);
  MatrixD x(n, mu.dim());
  for (Index s = 0; s < n; ++s) {
    const double t = u(rng);
    auto it = std::upper_bound(cdf.begin(), cdf.end(), t);
    Index i = std::min<Index>(static_cast<Index>(it - cdf.begin()), mu.size() - 1);
    while (i > 0 && mu.weight(i) == 0) --i;
    x.row(s) = mu.atoms().row(i);
  }
  return MeasureD::empirical(std::move(x));
}

MeasureD corrupt_measure(const MeasureD& mu, double eps, const VectorD& z) {
  MatrixD x(mu.size() + 1, mu.dim());
  VectorD w(mu.size() + 1);
  x.topRows(mu.size()) = mu.atoms();
  x.row(mu.size()) = z.transpose();
  w.head(mu.size()) = (1 - eps) * mu.weights();
  w[mu.size()] = eps;
  if (eps >= 1) w.head(mu.size()).setZero();
  return MeasureD(std::move(x), std::move(w));
}

std::vector<VectorD> corruption_candidates(const Model<double>& model, Index d, double radius,
                                           std::mt19937_64& rng, bool adversarial) {
  std::vector<VectorD> out;
  std::normal_distribution<double> nd(0.0, 1.0);
  auto random_dir = [&]() {
    VectorD v(d);
    for (Index c = 0; c < d; ++c) v[c] = nd(rng);
    return VectorD(v / std::max(v.norm(), 1e-300));
  };
  if (!adversarial) {
    // One uniformly random point of B_R.
    std::uniform_real_distribution<double> u(0.0, 1.0);
    out.push_back(random_dir() * radius * std::pow(u(rng), 1.0 / static_cast<double>(d)));
    return out;
  }
  for (Index h = 0; h < model.num_heads; ++h) {
    const Head<double> hd = model.head(h);
    const MatrixD a = hd.q.transpose() * hd.k / hd.tau;
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(0.5 * (a + a.transpose()));
    for (Index c : {Index{0}, d - 1}) {
      out.push_back(radius * es.eigenvectors().col(c));
      out.push_back(-radius * es.eigenvectors().col(c));
    }
  }
  for (Index c = 0; c < std::min<Index>(d, 4); ++c) {
    VectorD e = VectorD::Zero(d);
    e[c] = radius;
    out.push_back(e);
    out.push_back(-e);
  }
  for (int r = 0; r < 8; ++r) out.push_back(radius * random_dir());
  return out;
}

}  // namespace

MisspecResult misspecification(const Model<double>& model, const MeasureD& mu,
                               const MisspecOptions& options) {
  options.validate();
  model.validate();
  if (mu.dim() != model.query_dim() || mu.dim() != model.key_dim())
    throw invalid_argument("tokens: dimension " + std::to_string(mu.dim()) +
                           " does not match the model's input dimension " +
                           std::to_string(model.query_dim()));
  AttendOptions ao;
  ao.residual = options.residual;
  const MeasureD f_mu = self_attention(model, mu, ao);
  std::mt19937_64 rng(options.seed);
  const Index d = mu.dim();
  const Communicator& comm = options.communicator;
  const double r_corrupt = options.radius > 0 ? options.radius : mu.radius();

  // Draw every mu' first: the radius of L must contain all of them.
  std::vector<Draw> draws;
  const std::size_t values = options.kind == MisspecKind::sample  ? options.sizes.size()
                             : options.kind == MisspecKind::noise ? options.sigmas.size()
                                                                  : options.eps.size();
  const auto units = static_cast<std::int64_t>(values) * options.repeats;
  const bool corrupt = options.kind == MisspecKind::corrupt;
  Progress progress("misspec", corrupt ? 2 * units : units, options.progress_callback, false);
  std::int64_t done = 0;
  if (options.kind == MisspecKind::sample) {
    for (Index n : options.sizes)
      for (int q = 0; q < options.repeats; ++q)
        draws.push_back({static_cast<double>(n), sample_measure(mu, n, rng),
                         std::numeric_limits<double>::quiet_NaN()});
  } else if (options.kind == MisspecKind::noise) {
    const double en = expected_gaussian_norm(d);
    std::normal_distribution<double> nd(0.0, 1.0);
    for (double s : options.sigmas)
      for (int q = 0; q < options.repeats; ++q) {
        MatrixD x = mu.atoms();
        for (Index i = 0; i < x.rows(); ++i)
          for (Index c = 0; c < d; ++c) x(i, c) += s * nd(rng);
        draws.push_back({s, MeasureD(std::move(x), mu.weights()), s * en});
      }
  } else {
    // The candidates of every draw first, from the one random stream (the same
    // on every rank); then each rank chooses among the candidates of its own
    // draws, and the choices are exchanged by index.
    std::vector<std::vector<VectorD>> candidates;
    std::vector<double> eps_of;
    for (double e : options.eps)
      for (int q = 0; q < options.repeats; ++q) {
        candidates.push_back(
            corruption_candidates(model, d, std::max(r_corrupt, 1e-300), rng, options.adversarial));
        eps_of.push_back(e);
      }
    const Index count = static_cast<Index>(candidates.size());
    const RowRange mine = shard_rows(count, comm);
    std::vector<std::int64_t> choice(static_cast<size_t>(count), 0);
    std::exception_ptr error;
    try {
      for (Index t = mine.begin; t < mine.end; ++t) {
        const auto& cands = candidates[static_cast<size_t>(t)];
        double best = -1;
        for (size_t c = 0; c < cands.size(); ++c) {
          detail::check_interrupt();  // Ctrl-C, once per candidate (rate-limited)
          const MeasureD mp = corrupt_measure(mu, eps_of[static_cast<size_t>(t)], cands[c]);
          const double dev = cands.size() == 1
                                 ? 0.0
                                 : wasserstein_exact_value(self_attention(model, mp, ao), f_mu);
          if (dev > best) {
            best = dev;
            choice[static_cast<size_t>(t)] = static_cast<std::int64_t>(c);
          }
        }
        progress.update(++done);
      }
    } catch (...) {
      error = std::current_exception();
    }
    detail::agree(comm, error);
    detail::all_gather_items(comm, count, choice);
    for (Index t = 0; t < count; ++t) {
      const double e = eps_of[static_cast<size_t>(t)];
      const auto& cands = candidates[static_cast<size_t>(t)];
      MeasureD chosen =
          cands.empty()
              ? mu
              : corrupt_measure(mu, e, cands[static_cast<size_t>(choice[static_cast<size_t>(t)])]);
      draws.push_back({e, std::move(chosen), 2 * std::max(r_corrupt, mu.radius()) * e});
    }
  }
  double radius = std::max(options.radius, mu.radius());
  for (const auto& dr : draws) radius = std::max(radius, dr.mu_prime.radius());
  if (!(radius > 0)) radius = 1e-12;  // every atom at the origin: any R works

  MisspecResult res;
  res.kind = options.kind;
  res.radius = radius;
  UpperBoundOptions uo;
  uo.radius = radius;
  uo.residual = options.residual;
  const UpperBoundResult ub = lipschitz_upper_bounds(model, uo);
  res.lipschitz = ub.best_w1;
  res.bound_name = ub.best_name;
  const double L = ub.best_w1;
  // L may be +inf (the bound overflows double at large R; documented): L * 0 is 0
  // (no deviation in, none out), never NaN.
  auto times_l = [&](double w) { return w == 0 ? 0.0 : L * w; };

  // Each rank evaluates its share of the draws (two exact W1 and one attention
  // pass each); the values are exchanged by index and reduced in draw order on
  // every rank, as one process does.
  const Index count = static_cast<Index>(draws.size());
  std::vector<double> w_ins(static_cast<size_t>(count)), w_outs(static_cast<size_t>(count));
  {
    const RowRange mine = shard_rows(count, comm);
    std::exception_ptr error;
    try {
      for (Index t = mine.begin; t < mine.end; ++t) {
        detail::check_interrupt();  // Ctrl-C, once per draw (rate-limited)
        const MeasureD& mp = draws[static_cast<size_t>(t)].mu_prime;
        w_ins[static_cast<size_t>(t)] = wasserstein_exact_value(mp, mu);
        w_outs[static_cast<size_t>(t)] =
            wasserstein_exact_value(self_attention(model, mp, ao), f_mu);
        progress.update(++done);
      }
    } catch (...) {
      error = std::current_exception();
    }
    detail::agree(comm, error);
    detail::all_gather_items(comm, count, w_ins);
    detail::all_gather_items(comm, count, w_outs);
  }
  size_t at = 0;
  while (at < draws.size()) {
    MisspecRow row;
    row.parameter = draws[at].parameter;
    if (options.kind != MisspecKind::sample) row.a_priori = times_l(draws[at].a_priori_w1);
    int count = 0;
    for (; at < draws.size() && draws[at].parameter == row.parameter && count < options.repeats;
         ++at, ++count) {
      const double w_in = w_ins[at];
      const double w_out = w_outs[at];
      row.w1_input += w_in / options.repeats;
      row.w1_output += w_out / options.repeats;
      row.bound += times_l(w_in) / options.repeats;
      // Allow the rounding of two exact solvers and two attention passes.
      if (w_out > times_l(w_in) * (1 + 1e-9) + 1e-12) res.violated = true;
      if (w_in > 0) row.max_ratio = std::max(row.max_ratio, w_out / (L * w_in));
    }
    res.rows.push_back(row);
  }
  if (options.kind == MisspecKind::sample) {
    std::vector<double> ns, wo, wi;
    for (const auto& r : res.rows) {
      ns.push_back(r.parameter);
      wo.push_back(r.w1_output);
      wi.push_back(r.w1_input);
    }
    res.output_rate = loglog_slope(ns, wo);
    res.input_rate = loglog_slope(ns, wi);
  }
  return res;
}

}  // namespace measattn
