// measattn maxent — the maximum-entropy (Gibbs) measure for a target expected
// score or a given inverse temperature.
//
//   measattn maxent --scores g.npy [--weights w.npy] (--target c | --beta b)
//                   [--max-iterations N] [--tolerance t] [--json]
//
// With --target: the beta with E_{nu_beta}[g] = c, nu_beta ∝ w e^{beta g} (the
// minimizer of KL(nu || mu) under that constraint). With --beta: nu_beta
// directly. Prints beta, the probabilities, expected_score, entropy, kl,
// log_partition (log sum w e^{beta g}) and gap (duality gap of the returned
// probabilities in the Gibbs principle for the scores beta g: ~0), plus the
// solver's status, iterations and the admissible interval of targets.
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "command.hpp"
#include "flags.hpp"
#include "measattn/error.hpp"
#include "measattn/io.hpp"
#include "measattn/maxent.hpp"

namespace measattn::cli {
namespace {

struct MaxEntArgs {
  std::string scores, weights;
  double target = 0, beta = 0;
  bool json = false;
  MaxEntOptions options;  ///< bound to the flags through its field table (maxent.hpp)
  OptionBinder binder;
};

nlohmann::json number_or_null(double v) {
  return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
}

std::string fmt(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

void run(const MaxEntArgs& a, bool has_target, bool has_beta) {
  if (has_target == has_beta) {
    throw invalid_argument("--target/--beta: give exactly one of them");
  }
  const MaxEntOptions options = a.options;
  options.validate();  // its fields map to flags in main() (flags.hpp)
  const VectorD g = read_npy_vector<double>(a.scores, "--scores");
  VectorD w;
  if (!a.weights.empty()) w = read_npy_vector<double>(a.weights, "--weights");
  const MaxEntResult<double> r =
      has_target ? maxent(g, a.target, w, options) : maxent_at_beta(g, a.beta, w);
  const VectorD scaled = r.beta * g;
  if (!scaled.allFinite()) {
    throw invalid_argument("beta: beta * scores overflows double precision");
  }
  const GibbsBoundResult<double> bound = gibbs_bound(scaled, r.probabilities, w);
  if (a.json) {
    nlohmann::json out = {
        {"beta", r.beta},
        {"probabilities", std::vector<double>(r.probabilities.data(),
                                              r.probabilities.data() + r.probabilities.size())},
        {"expected_score", r.expected_score},
        {"target", has_target ? nlohmann::json(a.target) : nlohmann::json(nullptr)},
        {"residual", r.residual},
        {"entropy", r.entropy},
        {"kl", r.kl},
        {"log_partition", r.log_partition},
        {"gap", bound.gap},
        {"variance", r.variance},
        {"score_min", r.score_min},
        {"score_max", r.score_max},
        {"beta_bracket", {number_or_null(r.beta_lower), number_or_null(r.beta_upper)}},
        {"iterations", r.iterations},
        {"status", to_string(r.status)},
        {"message", r.message}};
    std::cout << out.dump(2) << "\n";
    return;
  }
  std::cout << "beta            " << fmt(r.beta) << "\n";
  if (has_target) std::cout << "target          " << fmt(a.target) << "\n";
  std::cout << "expected_score  " << fmt(r.expected_score) << "\n"
            << "residual        " << fmt(r.residual) << "\n"
            << "entropy         " << fmt(r.entropy) << "\n"
            << "kl              " << fmt(r.kl) << "\n"
            << "log_partition   " << fmt(r.log_partition) << "\n"
            << "gap             " << fmt(bound.gap) << "\n"
            << "variance        " << fmt(r.variance) << "\n"
            << "admissible      (" << fmt(r.score_min) << ", " << fmt(r.score_max) << ")\n"
            << "status          " << to_string(r.status) << " after " << r.iterations
            << " iterations (" << r.message << ")\n"
            << "probabilities  ";
  for (Index j = 0; j < r.probabilities.size(); ++j) std::cout << " " << fmt(r.probabilities[j]);
  std::cout << "\n";
}

const bool registered = register_command(
    "maxent",
    "Maximum-entropy (Gibbs) measure of scores for a target expected score or a given beta",
    [](CLI::App& app) {
      auto a = std::make_shared<MaxEntArgs>();
      register_fields(app, {{"target", "--target"},
                            {"beta", "--beta"},
                            {"weights", "--weights", &a->weights},
                            {"scores", "--scores", &a->scores}});
      app.add_option("--scores", a->scores, "Scores g: length-m .npy")->required();
      app.add_option("--weights", a->weights,
                     "Reference weights: length-m .npy, non-negative (default uniform)");
      auto* target = app.add_option("--target", a->target,
                                    "Target expected score c, strictly between min and max of g");
      auto* beta = app.add_option("--beta", a->beta, "Inverse temperature (no solve)");
      target->excludes(beta);
      a->binder.bind(app, a->options, {"beta_tolerance", "max_iterations"},
                     {{"beta_tolerance", {"--tolerance"}}});
      app.add_flag("--json", a->json, "Print JSON instead of text");
      app.callback([a, target, beta] { run(*a, target->count() > 0, beta->count() > 0); });
    });

}  // namespace
}  // namespace measattn::cli
