// The Gibbs variational principle and constrained maximum entropy
// (docs/theory.md#maxent): the log-partition, the Gibbs measure, duality gaps of
// candidates, and the inverse temperature reaching a target expected score.
#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>

#include "measattn/error.hpp"
#include "measattn/maxent.hpp"

namespace measattn {

void MaxEntOptions::validate() const {
  if (!(beta_tolerance >= 0 && beta_tolerance < 1)) {
    throw invalid_argument("beta_tolerance: must be in [0, 1)");
  }
  if (max_iterations < 1) throw invalid_argument("max_iterations: must be >= 1");
}

namespace {

template <class Scalar>
std::string num(Scalar x) {
  std::ostringstream out;
  out.precision(17);
  out << static_cast<double>(x);
  return out.str();
}

template <class Scalar>
void check_scores(const Vector<Scalar>& scores) {
  if (scores.size() == 0) throw invalid_argument("scores: empty");
  if (!scores.allFinite()) throw invalid_argument("scores: contains a NaN or infinite entry");
}

/// Normalized log-weights of a non-negative vector (-inf where zero); `field`
/// names it in messages. Empty `weights` = uniform over m atoms.
template <class Scalar>
Vector<Scalar> log_probabilities(const Vector<Scalar>& weights, Index m, const std::string& field) {
  if (weights.size() == 0) return Vector<Scalar>::Constant(m, -std::log(static_cast<Scalar>(m)));
  if (weights.size() != m) {
    throw invalid_argument(field + ": length " + std::to_string(weights.size()) +
                           " differs from the number of scores " + std::to_string(m));
  }
  for (Index j = 0; j < m; ++j) {
    if (!std::isfinite(weights[j]) || weights[j] < 0) {
      throw invalid_argument(field + ": entry " + std::to_string(j) + " = " + num(weights[j]) +
                             " is not a finite non-negative number");
    }
  }
  const Scalar wmax = weights.maxCoeff();
  if (!(wmax > 0)) throw invalid_argument(field + ": all entries are zero");
  // Scale by the maximum first so that the total cannot overflow.
  const Scalar log_total = std::log((weights / wmax).sum());
  Vector<Scalar> lw(m);
  for (Index j = 0; j < m; ++j) {
    lw[j] = weights[j] > 0 ? std::log(weights[j] / wmax) - log_total
                           : -std::numeric_limits<Scalar>::infinity();
  }
  return lw;
}

/// The Gibbs measure p ∝ exp(beta u + lw) of centered scores u = g - center,
/// with everything MaxEntResult reports. Zero reference weights get p = 0.
template <class Scalar>
void fill(const Vector<Scalar>& scores, const Vector<Scalar>& lw, Scalar beta, Scalar center,
          MaxEntResult<Scalar>& r) {
  const Index m = scores.size();
  constexpr Scalar kNegInf = -std::numeric_limits<Scalar>::infinity();
  Vector<Scalar> a(m);
  for (Index j = 0; j < m; ++j)
    a[j] = lw[j] == kNegInf ? kNegInf : beta * (scores[j] - center) + lw[j];
  const Scalar mx = a.maxCoeff();
  Scalar l = 0;
  for (Index j = 0; j < m; ++j) l += std::exp(a[j] - mx);
  const Scalar log_l = std::log(l);
  r.beta = beta;
  r.probabilities.resize(m);
  Scalar eu = 0, entropy = 0, kl = 0;
  for (Index j = 0; j < m; ++j) {
    if (a[j] == kNegInf) {
      r.probabilities[j] = 0;
      continue;
    }
    const Scalar lp = (a[j] - mx) - log_l;
    const Scalar p = std::exp(lp);
    r.probabilities[j] = p;
    // p = 0 (underflow: a score ~1e308 below the top) contributes 0 log 0 = 0,
    // not 0 * -inf = NaN.
    if (!(p > 0)) continue;
    eu += p * (scores[j] - center);
    entropy -= p * lp;
    kl += p * (lp - lw[j]);
  }
  Scalar var = 0;
  for (Index j = 0; j < m; ++j) {
    if (r.probabilities[j] > 0) {
      const Scalar d = scores[j] - center - eu;
      var += r.probabilities[j] * d * d;
    }
  }
  r.expected_score = center + eu;
  r.residual = r.expected_score - r.target;
  r.entropy = std::max(entropy, Scalar(0));
  r.kl = std::max(kl, Scalar(0));
  r.log_partition = beta * center + mx + log_l;
  r.variance = var;
}

/// E and Var of u under p ∝ exp(beta u + lw), u already centered at the target.
template <class Scalar>
std::pair<Scalar, Scalar> moments(const Vector<Scalar>& u, const Vector<Scalar>& lw, Scalar beta) {
  const Index m = u.size();
  Scalar mx = -std::numeric_limits<Scalar>::infinity();
  for (Index j = 0; j < m; ++j) mx = std::max(mx, beta * u[j] + lw[j]);
  Scalar l = 0, s1 = 0;
  for (Index j = 0; j < m; ++j) {
    const Scalar e = std::exp(beta * u[j] + lw[j] - mx);
    l += e;
    s1 += e * u[j];
  }
  const Scalar mean = s1 / l;
  Scalar s2 = 0;
  for (Index j = 0; j < m; ++j) {
    const Scalar d = u[j] - mean;
    s2 += std::exp(beta * u[j] + lw[j] - mx) * d * d;
  }
  return {mean, s2 / l};
}

}  // namespace

template <class Scalar>
Scalar log_partition(const Vector<Scalar>& scores, const Vector<Scalar>& weights) {
  return gibbs(scores, weights).log_partition;
}

template <class Scalar>
GibbsResult<Scalar> gibbs(const Vector<Scalar>& scores, const Vector<Scalar>& weights) {
  check_scores(scores);
  const Vector<Scalar> lw = log_probabilities(weights, scores.size(), "weights");
  MaxEntResult<Scalar> r;
  fill(scores, lw, Scalar(1), Scalar(0), r);
  GibbsResult<Scalar> out;
  out.probabilities = std::move(r.probabilities);
  out.log_partition = r.log_partition;
  out.expected_score = r.expected_score;
  out.entropy = r.entropy;
  out.kl = r.kl;
  return out;
}

template <class Scalar>
GibbsBoundResult<Scalar> gibbs_bound(const Vector<Scalar>& scores, const Vector<Scalar>& candidate,
                                     const Vector<Scalar>& weights) {
  check_scores(scores);
  const Index m = scores.size();
  if (candidate.size() != m) {
    throw invalid_argument("candidate: length " + std::to_string(candidate.size()) +
                           " differs from the number of scores " + std::to_string(m));
  }
  const Vector<Scalar> lw = log_probabilities(weights, m, "weights");
  const Vector<Scalar> ln = log_probabilities(candidate, m, "candidate");
  constexpr Scalar kNegInf = -std::numeric_limits<Scalar>::infinity();
  for (Index j = 0; j < m; ++j) {
    if (ln[j] > kNegInf && lw[j] == kNegInf) {
      throw invalid_argument("candidate: puts mass " + num(std::exp(ln[j])) + " on atom " +
                             std::to_string(j) +
                             " whose reference weight is zero (not absolutely continuous; "
                             "the objective is -inf)");
    }
  }
  MaxEntResult<Scalar> star;
  fill(scores, lw, Scalar(1), Scalar(0), star);
  GibbsBoundResult<Scalar> b;
  b.log_partition = star.log_partition;
  Scalar e = 0, kl = 0, gap = 0;
  for (Index j = 0; j < m; ++j) {
    if (ln[j] == kNegInf) continue;
    const Scalar p = std::exp(ln[j]);
    e += p * scores[j];
    kl += p * (ln[j] - lw[j]);
    // log nu*_j = g_j + lw_j - log Z, formed from differences of moderate size.
    const Scalar log_star = (scores[j] - star.log_partition) + lw[j];
    gap += p * (ln[j] - log_star);
  }
  b.objective = e - kl;
  b.gap = std::max(gap, Scalar(0));
  return b;
}

template <class Scalar>
MaxEntResult<Scalar> maxent_at_beta(const Vector<Scalar>& scores, Scalar beta,
                                    const Vector<Scalar>& weights) {
  check_scores(scores);
  if (!std::isfinite(beta)) throw invalid_argument("beta: must be finite");
  const Vector<Scalar> lw = log_probabilities(weights, scores.size(), "weights");
  MaxEntResult<Scalar> r;
  Scalar lo = std::numeric_limits<Scalar>::infinity(), hi = -lo;
  for (Index j = 0; j < scores.size(); ++j) {
    if (std::isfinite(lw[j])) {
      lo = std::min(lo, scores[j]);
      hi = std::max(hi, scores[j]);
    }
  }
  r.score_min = lo;
  r.score_max = hi;
  // Center at the score of largest weight-adjusted logit: the dominant atoms
  // then carry small centered scores (accurate expected score at large |beta|).
  const Scalar center = beta >= 0 ? hi : lo;
  fill(scores, lw, beta, center, r);
  r.target = r.expected_score;
  r.residual = 0;
  r.beta_lower = r.beta_upper = beta;
  r.message = "Gibbs measure at the given beta";
  return r;
}

template <class Scalar>
MaxEntResult<Scalar> maxent(const Vector<Scalar>& scores, Scalar target,
                            const Vector<Scalar>& weights, const MaxEntOptions& options) {
  options.validate();
  check_scores(scores);
  const Index m = scores.size();
  const Vector<Scalar> lw = log_probabilities(weights, m, "weights");
  Scalar gmin = std::numeric_limits<Scalar>::infinity(), gmax = -gmin;
  for (Index j = 0; j < m; ++j) {
    if (std::isfinite(lw[j])) {
      gmin = std::min(gmin, scores[j]);
      gmax = std::max(gmax, scores[j]);
    }
  }
  MaxEntResult<Scalar> r;
  r.target = target;
  r.score_min = gmin;
  r.score_max = gmax;
  if (!std::isfinite(target)) throw invalid_argument("target: must be finite");
  constexpr Scalar eps = std::numeric_limits<Scalar>::epsilon();
  if (gmin == gmax) {
    if (std::abs(target - gmin) > 4 * eps * std::abs(gmin)) {
      throw invalid_argument("target: the scores are constant (" + num(gmin) +
                             ") on the support of the reference, so " + num(gmin) +
                             " is the only feasible target, not " + num(target));
    }
    fill(scores, lw, Scalar(0), gmin, r);
    r.target = target;
    r.residual = r.expected_score - target;
    r.message = "constant scores: every beta gives the reference measure; beta = 0 returned";
    return r;
  }
  if (!(target > gmin && target < gmax)) {
    throw invalid_argument("target: " + num(target) + " is outside the open interval (" +
                           num(gmin) + ", " + num(gmax) +
                           ") of expected scores reachable by a Gibbs measure (min and max of "
                           "the scores on the support of the reference)");
  }
  const Vector<Scalar> u = (scores.array() - target).matrix();
  const Scalar unit = Scalar(1) / (gmax - gmin);  // natural scale of beta
  int iterations = 0;
  auto done = [&](Scalar beta, Status status, std::string message) {
    fill(scores, lw, beta, target, r);
    r.target = target;
    r.residual = r.expected_score - target;
    r.iterations = iterations;
    r.status = status;
    r.message = std::move(message);
    return r;
  };

  // Bracket [lo, hi] with E(lo) < 0 < E(hi), by doubling away from beta = 0.
  auto [f0, v0] = moments(u, lw, Scalar(0));
  if (f0 == 0) {
    r.beta_lower = r.beta_upper = 0;
    return done(0, Status::converged, "the reference measure meets the target");
  }
  const Scalar dir = f0 < 0 ? Scalar(1) : Scalar(-1);
  Scalar near = 0, fnear = f0, vnear = v0;  // the end on the side of beta = 0
  Scalar far = dir * unit;
  auto [ffar, vfar] = moments(u, lw, far);
  while ((ffar < 0) == (f0 < 0) && ffar != 0) {
    ++iterations;
    if (iterations >= options.max_iterations) {
      r.beta_lower = std::min(near, far);
      r.beta_upper = std::max(near, far);
      return done(far, Status::iteration_limit,
                  "iteration cap reached while expanding the bracket");
    }
    near = far;
    fnear = ffar;
    vnear = vfar;
    far *= 2;
    std::tie(ffar, vfar) = moments(u, lw, far);
  }
  if (ffar == 0) {
    r.beta_lower = r.beta_upper = far;
    return done(far, Status::converged, "bracket end meets the target exactly");
  }
  Scalar lo = std::min(near, far), hi = std::max(near, far);
  // Start Newton from the end with the smaller |E - c|.
  Scalar beta = std::abs(fnear) < std::abs(ffar) ? near : far;
  Scalar f = beta == near ? fnear : ffar;
  Scalar v = beta == near ? vnear : vfar;
  bool last_newton_poor = false;
  while (true) {
    ++iterations;
    Scalar cand = std::numeric_limits<Scalar>::quiet_NaN();
    Scalar step = 0;
    if (v > 0 && !last_newton_poor) {
      step = f / v;
      cand = beta - step;
    }
    if (!std::isnan(cand) &&
        std::abs(step) <= options.beta_tolerance * std::max(std::abs(beta), unit)) {
      // Converged; the last step may leave the bracket by rounding: clamp it.
      r.beta_lower = lo;
      r.beta_upper = hi;
      return done(std::clamp(cand, lo, hi), Status::converged, "Newton step below beta_tolerance");
    }
    const bool newton = cand > lo && cand < hi;
    if (!newton) cand = lo + (hi - lo) / 2;
    auto [fc, vc] = moments(u, lw, cand);
    last_newton_poor = newton && std::abs(fc) > Scalar(0.5) * std::abs(f);
    beta = cand;
    f = fc;
    v = vc;
    if (f == 0) {
      r.beta_lower = r.beta_upper = beta;
      return done(beta, Status::converged, "expected score equals the target");
    }
    (f < 0 ? lo : hi) = beta;
    r.beta_lower = lo;
    r.beta_upper = hi;
    if (hi - lo <= 2 * eps * std::max(std::abs(lo), std::abs(hi))) {
      return done(beta, Status::converged, "bracket collapsed to adjacent numbers");
    }
    if (iterations >= options.max_iterations) {
      return done(beta, Status::iteration_limit, "iteration cap reached");
    }
  }
}

#define MEASATTN_INSTANTIATE(S)                                                                   \
  template GibbsResult<S> gibbs(const Vector<S>&, const Vector<S>&);                              \
  template S log_partition(const Vector<S>&, const Vector<S>&);                                   \
  template GibbsBoundResult<S> gibbs_bound(const Vector<S>&, const Vector<S>&, const Vector<S>&); \
  template MaxEntResult<S> maxent(const Vector<S>&, S, const Vector<S>&, const MaxEntOptions&);   \
  template MaxEntResult<S> maxent_at_beta(const Vector<S>&, S, const Vector<S>&);

MEASATTN_INSTANTIATE(float)
MEASATTN_INSTANTIATE(double)
#undef MEASATTN_INSTANTIATE

}  // namespace measattn
