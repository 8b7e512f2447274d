// lipschitz_sweep: the proved upper bound and the certified lower bound of the
// W1 constant over a grid of radii and inverse temperatures, the grid shared by
// the ranks of a communicator.
#include <cmath>
#include <cstdio>
#include <exception>
#include <limits>
#include <string>
#include <vector>

#include "common/collectives.hpp"
#include "measattn/error.hpp"
#include "measattn/lipschitz.hpp"
#include "measattn/progress.hpp"

namespace measattn {

void LipschitzSweepOptions::validate() const {
  if (radii.empty()) throw invalid_argument("radii: at least one radius is needed");
  for (double r : radii)
    if (!(r > 0) || !std::isfinite(r))
      throw invalid_argument("radii: every radius must be positive and finite");
  if (betas.empty()) throw invalid_argument("betas: at least one beta is needed");
  for (double b : betas)
    if (!(b > 0) || !std::isfinite(b))
      throw invalid_argument("betas: every beta must be positive and finite");
  search.validate();
}

namespace {

std::string number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

LipschitzSweepPoint sweep_point(const Model<double>& model, double radius, double beta,
                                const LipschitzSearchOptions& search) {
  Model<double> m = model;
  m.scale = model.tau() / beta;
  if (!(m.scale > 0) || !std::isfinite(m.scale))
    throw invalid_argument("betas: beta = " + number(beta) +
                           " makes the temperature tau / beta leave double's range");
  UpperBoundOptions uo;
  uo.radius = radius;
  uo.residual = search.residual;
  uo.tokens = search.atoms;
  const UpperBoundResult ub = lipschitz_upper_bounds(m, uo);
  LipschitzSearchResult lo;
  try {
    lo = lipschitz_lower_bound(m, radius, search);
  } catch (const invalid_argument& e) {
    // The layer's range check names the model or the radius; here the grid
    // point is the cause: say which (the options themselves were validated).
    std::string why = e.what();
    for (const char* field : {"model: ", "radius: "})
      if (why.rfind(field, 0) == 0) why = why.substr(std::char_traits<char>::length(field));
    throw invalid_argument("betas: at beta = " + number(beta) + ", R = " + number(radius) + ": " +
                           why);
  }
  LipschitzSweepPoint pt;
  pt.radius = radius;
  pt.beta = beta;
  pt.best_upper = ub.best_w1;
  pt.best_name = ub.best_name;
  pt.search_ratio = lo.ratio;
  pt.witness_origin = lo.status == Status::completed ? lo.witness.origin : std::string();
  pt.evaluations = lo.evaluations;
  return pt;
}

}  // namespace

LipschitzSweepResult lipschitz_sweep(const Model<double>& model,
                                     const LipschitzSweepOptions& options) {
  options.validate();
  const Communicator& comm = options.search.communicator;
  const Index count = static_cast<Index>(options.radii.size() * options.betas.size());
  // Points split over the ranks when there are enough of them; otherwise the
  // restarts of every point are (lipschitz_lower_bound with the communicator).
  const bool split_points = comm.distributed() && count >= comm.size();
  const RowRange mine = split_points ? shard_rows(count, comm) : RowRange{0, count};
  LipschitzSearchOptions search = options.search;
  search.progress_callback = {};
  search.progress = false;
  if (split_points) search.communicator = Communicator();
  std::vector<LipschitzSweepPoint> points(static_cast<std::size_t>(count));
  Progress progress("lipschitz sweep", mine.size(), options.search.progress_callback,
                    options.search.progress && comm.rank() == 0);
  std::exception_ptr error;
  try {
    for (Index i = mine.begin; i < mine.end; ++i) {
      const std::size_t nr = options.radii.size();
      const double beta = options.betas[static_cast<std::size_t>(i) / nr];
      const double radius = options.radii[static_cast<std::size_t>(i) % nr];
      points[static_cast<std::size_t>(i)] = sweep_point(model, radius, beta, search);
      progress.update(i - mine.begin + 1);
    }
    progress.finish();
  } catch (...) {
    error = std::current_exception();
  }
  // Only the split form needs the agreement: the shared searches agree inside.
  if (split_points)
    detail::agree(comm, error);
  else if (error)
    std::rethrow_exception(error);
  if (split_points) {
    std::vector<double> values[2];
    std::vector<std::int64_t> evals(static_cast<std::size_t>(count));
    std::vector<std::string> names(static_cast<std::size_t>(count)),
        origins(static_cast<std::size_t>(count));
    for (auto& v : values) v.resize(static_cast<std::size_t>(count));
    for (std::size_t i = 0; i < points.size(); ++i) {
      values[0][i] = points[i].best_upper, values[1][i] = points[i].search_ratio;
      evals[i] = points[i].evaluations;
      names[i] = points[i].best_name, origins[i] = points[i].witness_origin;
    }
    for (auto& v : values) detail::all_gather_items(comm, count, v);
    detail::all_gather_items(comm, count, evals);
    detail::all_gather_items(comm, count, names);
    detail::all_gather_items(comm, count, origins);
    const std::size_t nr = options.radii.size();
    for (std::size_t i = 0; i < points.size(); ++i) {
      LipschitzSweepPoint& pt = points[i];
      pt.radius = options.radii[i % nr];
      pt.beta = options.betas[i / nr];
      pt.best_upper = values[0][i], pt.search_ratio = values[1][i];
      pt.evaluations = evals[i];
      pt.best_name = std::move(names[i]), pt.witness_origin = std::move(origins[i]);
    }
  }
  // A pair found in B_r is also one in B_R for r <= R: each point's lower bound is
  // the best search at its beta and any radius up to its own (the first such in the
  // grid's order on ties).
  const std::size_t nr = options.radii.size();
  std::vector<std::string> own_origin(points.size());
  for (std::size_t i = 0; i < points.size(); ++i) own_origin[i] = points[i].witness_origin;
  for (std::size_t i = 0; i < points.size(); ++i) {
    LipschitzSweepPoint& pt = points[i];
    const std::size_t row = i / nr * nr;
    std::size_t best = i;
    for (std::size_t j = row; j < row + nr; ++j)
      if (points[j].radius <= pt.radius && points[j].search_ratio > points[best].search_ratio)
        best = j;
    pt.lower = points[best].search_ratio;
    pt.witness_radius = pt.lower > 0 ? points[best].radius : 0;
    pt.witness_origin = pt.lower > 0 ? own_origin[best] : std::string();
    pt.gap = pt.lower > 0 ? pt.best_upper / pt.lower : std::numeric_limits<double>::infinity();
  }
  LipschitzSweepResult res;
  for (const auto& pt : points) res.evaluations += pt.evaluations;
  res.points = std::move(points);
  return res;
}

}  // namespace measattn
