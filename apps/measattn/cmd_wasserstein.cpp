// measattn wasserstein — W_p between two weighted point clouds.
//
//   measattn wasserstein A.npy B.npy [--wa a.npy] [--wb b.npy] [--p P]
//                        [--method auto|exact|1d|sliced|sinkhorn] [--reg EPS]
//                        [--tol T] [--max-iter K] [--projections L] [--seed S]
//                        [--plan OUT.npy] [--json]
//
// A (n x d) and B (m x d) hold one atom per row; weights default to uniform.
// Prints value, certified lower/upper bounds, kind (exact/lower/upper/estimate),
// method and status; --json prints one JSON object (infinite bounds as null)
// including "seconds", the wall time of the library call alone (no file I/O).
// --plan writes the dense n x m coupling (exact, 1d; the rounded feasible plan
// for sinkhorn) atomically.
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <iomanip>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "command.hpp"
#include "measattn/error.hpp"
#include "measattn/io.hpp"
#include "measattn/measure.hpp"
#include "measattn/wasserstein.hpp"
#include "output.hpp"

namespace measattn::cli {
namespace {

struct WassersteinArgs {
  std::string a, b, wa, wb, plan;
  double p = 1;
  std::string method = "auto";
  double reg = 0.05;
  double tol = 1e-9;
  int max_iter = 1000;
  int projections = 64;
  std::uint64_t seed = 0x5eed;
  bool json = false;
};

MeasureD load_measure(const std::string& path, const std::string& field,
                      const std::string& weights_path, const std::string& weights_field) {
  MatrixD atoms = read_npy_matrix<double>(path, field);
  if (atoms.rows() == 0) throw invalid_argument(field + ": " + path + ": no atoms (0 rows)");
  if (atoms.cols() == 0) throw invalid_argument(field + ": " + path + ": atoms of dimension 0");
  VectorD w;
  if (!weights_path.empty()) {
    w = read_npy_vector<double>(weights_path, weights_field);
    if (w.size() != atoms.rows()) {
      throw invalid_argument(weights_field + ": " + weights_path + ": " + std::to_string(w.size()) +
                             " weights for " + std::to_string(atoms.rows()) + " atoms in " + path);
    }
  } else {
    w = VectorD::Ones(atoms.rows());
  }
  try {
    return MeasureD(std::move(atoms), std::move(w));
  } catch (const invalid_argument& e) {
    const std::string what = e.what();
    if (what.rfind("weights", 0) == 0 && !weights_path.empty())
      throw invalid_argument(weights_field + ": " + weights_path + ": " + what);
    throw invalid_argument(field + ": " + path + ": " + what);
  }
}

std::string number(double v) {
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  std::ostringstream s;
  s << std::setprecision(12) << v;
  return s.str();
}

nlohmann::json finite_or_null(double v) {
  if (std::isfinite(v)) return v;
  return nullptr;
}

void run(const WassersteinArgs& args) {
  WassersteinOptions o;
  if (!(args.p >= 1) || !std::isfinite(args.p))
    throw invalid_argument("--p: must be a finite number >= 1 (got " + number(args.p) + ")");
  if (!(args.reg > 0) || !std::isfinite(args.reg))
    throw invalid_argument("--reg: must be a finite number > 0 (got " + number(args.reg) + ")");
  if (!(args.tol > 0) || !std::isfinite(args.tol))
    throw invalid_argument("--tol: must be a finite number > 0");
  if (args.max_iter < 1) throw invalid_argument("--max-iter: must be >= 1");
  if (args.projections < 1) throw invalid_argument("--projections: must be >= 1");
  if (!args.plan.empty()) check_output_file(args.plan, "--plan");  // before any work
  o.p = args.p;
  o.reg = args.reg;
  o.tolerance = args.tol;
  o.max_iterations = args.max_iter;
  o.projections = args.projections;
  o.seed = args.seed;
  o.method = parse_wasserstein_method(args.method, "--method");
  o.progress = true;
  o.want_dense_plan = !args.plan.empty();

  const MeasureD mu = load_measure(args.a, "A", args.wa, "--wa");
  const MeasureD nu = load_measure(args.b, "B", args.wb, "--wb");
  if (mu.dim() != nu.dim()) {
    throw invalid_argument("B: " + args.b + ": atoms have dimension " + std::to_string(nu.dim()) +
                           ", A (" + args.a + ") has " + std::to_string(mu.dim()));
  }
  if (o.method == WassersteinMethod::one_d && mu.dim() != 1) {
    throw invalid_argument("--method: 1d needs one-dimensional atoms, A and B have d = " +
                           std::to_string(mu.dim()));
  }
  const bool sliced = o.method == WassersteinMethod::sliced ||
                      (o.method == WassersteinMethod::automatic && mu.dim() > 1 &&
                       static_cast<double>(mu.size()) * static_cast<double>(nu.size()) > 2.5e7);
  if (!args.plan.empty() && sliced)
    throw invalid_argument("--plan: the sliced method computes bounds only, no plan");

  const auto start = std::chrono::steady_clock::now();
  const WassersteinResult r = wasserstein(mu, nu, o);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  if (!args.plan.empty()) {
    if (!r.plan || !r.plan->dense) throw std::runtime_error("no plan was computed");
    write_npy(args.plan, *r.plan->dense);
  }
  if (args.json) {
    nlohmann::json j;
    j["value"] = finite_or_null(r.value);
    j["lower"] = finite_or_null(r.lower);
    j["upper"] = finite_or_null(r.upper);
    j["kind"] = to_string(r.kind);
    j["cost"] = finite_or_null(r.cost);
    j["p"] = r.p;
    j["method"] = to_string(r.method);
    j["status"] = to_string(r.status);
    j["message"] = r.message;
    j["iterations"] = r.iterations;
    j["n"] = mu.size();
    j["m"] = nu.size();
    j["d"] = mu.dim();
    j["seconds"] = seconds;
    if (r.method == WassersteinMethod::sinkhorn) {
      j["reg"] = o.reg;
      j["tolerance"] = o.tolerance;
      // Present only where computed (always, for Sinkhorn).
      if (r.entropic_cost) j["entropic_cost"] = finite_or_null(*r.entropic_cost);
      if (r.transport_cost) j["transport_cost"] = finite_or_null(*r.transport_cost);
      if (r.rounded_cost) j["rounded_cost"] = finite_or_null(*r.rounded_cost);
      if (r.marginal_violation) j["marginal_violation"] = finite_or_null(*r.marginal_violation);
    }
    if (r.plan) j["marginal_error"] = r.plan->marginal_error;
    std::cout << j.dump() << "\n";
    return;
  }
  std::cout << "W_" << number(r.p) << " between A (" << mu.size() << " atoms) and B (" << nu.size()
            << " atoms) in R^" << mu.dim() << "\n"
            << "  value   " << number(r.value) << "  (" << to_string(r.kind) << ")\n"
            << "  lower   " << number(r.lower) << "\n"
            << "  upper   " << number(r.upper) << "\n"
            << "  method  " << to_string(r.method) << "\n"
            << "  status  " << to_string(r.status) << "\n"
            << "  note    " << r.message << "\n";
  if (r.method == WassersteinMethod::sinkhorn && r.transport_cost && r.entropic_cost &&
      r.rounded_cost) {
    std::cout << "  <P,C> = " << number(*r.transport_cost)
              << "  entropic = " << number(*r.entropic_cost)
              << "  rounded = " << number(*r.rounded_cost) << "\n";
  }
  std::cout << "  time    " << number(seconds) << " s\n";
}

const bool registered = register_command(
    "wasserstein", "Wasserstein distance W_p between two weighted point clouds (.npy)",
    [](CLI::App& app) {
      auto a = std::make_shared<WassersteinArgs>();
      app.add_option("A", a->a, "First measure's atoms: n x d .npy")->required();
      app.add_option("B", a->b, "Second measure's atoms: m x d .npy")->required();
      app.add_option("--wa", a->wa, "Weights of A: length-n .npy (default uniform)");
      app.add_option("--wb", a->wb, "Weights of B: length-m .npy (default uniform)");
      app.add_option("--p", a->p, "Exponent p >= 1")->capture_default_str();
      app.add_option("--method", a->method, "auto|exact|1d|sliced|sinkhorn")->capture_default_str();
      app.add_option("--reg", a->reg, "Sinkhorn regularization epsilon > 0 (cost units)")
          ->capture_default_str();
      app.add_option("--tol", a->tol, "Sinkhorn tolerance on ||P^T 1 - b||_2")
          ->capture_default_str();
      app.add_option("--max-iter", a->max_iter, "Sinkhorn iteration cap")->capture_default_str();
      app.add_option("--projections", a->projections, "Random directions for sliced bounds")
          ->capture_default_str();
      app.add_option("--seed", a->seed, "Seed of the random directions")->capture_default_str();
      app.add_option("--plan", a->plan, "Write the dense n x m coupling to this .npy");
      app.add_flag("--json", a->json, "Print one JSON object");
      app.callback([a] { run(*a); });
    });

}  // namespace
}  // namespace measattn::cli
