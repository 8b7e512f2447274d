// measattn wasserstein — W_p between two weighted point clouds.
//
//   measattn wasserstein A.npy B.npy [--wa a.npy] [--wb b.npy] [--p P]
//                        [--method auto|exact|1d|sliced|sinkhorn] [--mass strict|renormalize]
//                        [--reg EPS]
//                        [--tolerance T] [--max-iterations K] [--projections L] [--seed S]
//                        [--plan OUT.npy] [--json]
//
// A (n x d) and B (m x d) hold one atom per row; weights default to uniform (total 1).
// Weights of different totals are an error (--mass strict, the default, as POT) unless
// --mass renormalize is given, which divides each weight vector by its total.
// The options are WassersteinOptions' fields (flags from its field table;
// --tol and --max-iter are kept as aliases of --tolerance and --max-iterations).
// Prints value, certified lower/upper bounds, kind (exact/lower/upper/estimate),
// method and status; --json prints one JSON object (infinite bounds as null)
// including "seconds", the wall time of the library call alone (no file I/O).
// --plan writes the dense n x m coupling (exact, 1d; the rounded feasible plan
// for sinkhorn) atomically.
//
//   measattn wasserstein --cost M.npy [--wa a.npy] [--wb b.npy] [--method exact|sinkhorn]
//
// transports on a given n x m cost matrix (any real costs): --wa has n weights, --wb m;
// prints the cost <P, M> (POT's emd2 / sinkhorn2); --plan writes P.
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
#include "flags.hpp"
#include "inputs.hpp"
#include "measattn/error.hpp"
#include "measattn/io.hpp"
#include "measattn/measure.hpp"
#include "measattn/wasserstein.hpp"
#include "output.hpp"

namespace measattn::cli {
namespace {

struct WassersteinArgs {
  std::string a, b, wa, wb, plan, cost;
  bool json = false;
  WassersteinOptions options;  ///< bound to the flags through its field table
  OptionBinder binder;
};

const MeasureFiles kA{"A", "--wa", "atoms", true};
const MeasureFiles kB{"B", "--wb", "atoms", true};

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

/// The total of a weights file as given (the Measure holds them normalized);
/// uniform weights (no file) total 1, as POT's empty histograms.
double weights_total(const std::string& path, const std::string& flag) {
  if (path.empty()) return 1.0;
  const VectorD w = read_npy_vector<double>(path, flag);
  long double total = 0;
  for (Index i = 0; i < w.size(); ++i) total += w[i];
  return static_cast<double>(total);
}

std::string describe(const std::string& path, const std::string& flag) {
  return path.empty() ? std::string("the uniform weights of ") + (flag == "--wa" ? "A" : "B")
                      : flag + " (" + path + ")";
}

/// --mass strict (the default): weights of different totals are an error naming both.
void check_totals(const WassersteinArgs& args, MassPolicy policy) {
  if (policy != MassPolicy::strict || (args.wa.empty() && args.wb.empty())) return;
  const double ta = weights_total(args.wa, "--wa"), tb = weights_total(args.wb, "--wb");
  try {
    check_mass(ta, tb, policy);
  } catch (const invalid_argument&) {
    std::ostringstream s;
    s << std::setprecision(12) << (args.wb.empty() ? "--wa: " + args.wa : "--wb: " + args.wb)
      << ": the weights have different totals (" << describe(args.wa, "--wa") << " sum to " << ta
      << ", " << describe(args.wb, "--wb") << " sum to " << tb
      << "); --mass renormalize divides each by its total";
    throw invalid_argument(s.str());
  }
}

/// --cost M.npy: transport on a given n x m cost matrix (exact or Sinkhorn), weights
/// from --wa (n) and --wb (m), uniform (total 1) when absent.
void run_cost(const WassersteinArgs& args, WassersteinOptions o) {
  if (!args.a.empty() || !args.b.empty())
    throw invalid_argument("--cost: " + args.cost +
                           ": give either the atoms A and B or a cost matrix, not both");
  if (o.method != WassersteinMethod::automatic && o.method != WassersteinMethod::exact &&
      o.method != WassersteinMethod::sinkhorn)
    throw invalid_argument("--method: " + to_string(o.method) +
                           " needs atoms; with --cost the methods are exact and sinkhorn");
  const MatrixD cost = read_npy_matrix<double>(args.cost, "--cost");
  const Index n = cost.rows(), m = cost.cols();
  auto weights = [&](const std::string& path, const char* flag, Index count, const char* what) {
    if (path.empty()) return VectorD(VectorD::Constant(count, 1.0 / static_cast<double>(count)));
    VectorD w = read_npy_vector<double>(path, flag);
    if (w.size() != count)
      throw invalid_argument(std::string(flag) + ": " + path + ": " + std::to_string(w.size()) +
                             " weights for the " + std::to_string(count) + " " + what +
                             " of --cost (" + args.cost + ")");
    return w;
  };
  if (n == 0 || m == 0)
    throw invalid_argument("--cost: " + args.cost + ": empty cost matrix (" + std::to_string(n) +
                           " x " + std::to_string(m) + ")");
  const VectorD a = weights(args.wa, "--wa", n, "rows");
  const VectorD b = weights(args.wb, "--wb", m, "columns");
  check_totals(args, o.mass);
  o.want_dense_plan = !args.plan.empty();
  const bool sinkhorn = o.method == WassersteinMethod::sinkhorn;
  const auto start = std::chrono::steady_clock::now();
  TransportResult r;
  try {
    if (sinkhorn) {
      r = std::move(transport_sinkhorn(a, b, cost, o).front());
    } else {
      r = transport_exact(a, b, cost, o);
    }
  } catch (const invalid_argument& e) {
    // The library names its arguments a, b, cost: here they are files.
    const std::string& f = e.field();
    if (f == "a" || f == "b" || f == "cost") {
      const std::string flag = f == "a" ? "--wa" : f == "b" ? "--wb" : "--cost";
      const std::string& file = f == "a" ? args.wa : f == "b" ? args.wb : args.cost;
      throw invalid_argument(flag + ": " + file + ": " + e.reason());
    }
    throw;
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!args.plan.empty()) write_npy(args.plan, r.plan);
  const std::string method = sinkhorn ? "sinkhorn" : "exact";
  if (args.json) {
    nlohmann::json j;
    j["cost"] = r.cost;
    j["method"] = method;
    j["status"] = to_string(r.status);
    j["message"] = r.message;
    j["iterations"] = r.iterations;
    j["marginal_violation"] = r.marginal_violation;
    j["n"] = n;
    j["m"] = m;
    j["seconds"] = seconds;
    if (sinkhorn) {
      j["reg"] = o.reg;
      j["tolerance"] = o.tolerance;
    }
    std::cout << j.dump() << "\n";
    return;
  }
  std::cout << "Transport cost <P, C> on the " << n << " x " << m << " cost matrix " << args.cost
            << "\n"
            << "  cost    " << number(r.cost) << "\n"
            << "  method  " << method << "\n"
            << "  status  " << to_string(r.status) << "\n"
            << "  note    " << r.message << "\n"
            << "  time    " << number(seconds) << " s\n";
}

void run(WassersteinArgs& args) {
  args.binder.apply();  // --method
  WassersteinOptions o = args.options;
  o.validate();
  if (!args.plan.empty()) check_output_file(args.plan, "--plan");  // before any work
  if (!args.cost.empty()) return run_cost(args, o);
  if (args.a.empty() || args.b.empty())
    throw invalid_argument("A: the atoms of both measures (A B) or --cost M.npy are required");
  o.progress = true;
  o.want_dense_plan = !args.plan.empty();

  const auto mu_files = read_token_measure<double>(args.a, args.wa, kA);
  const auto nu_files = read_token_measure<double>(args.b, args.wb, kB);
  const MeasureD& mu = *mu_files;
  const MeasureD& nu = *nu_files;
  check_totals(args, o.mass);
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
      app.add_option("A", a->a, "First measure's atoms: n x d .npy");
      app.add_option("B", a->b, "Second measure's atoms: m x d .npy");
      app.add_option("--cost", a->cost,
                     "A given n x m cost matrix (.npy) instead of A and B: exact or sinkhorn "
                     "transport with weights --wa (n), --wb (m)");
      app.add_option("--wa", a->wa, "Weights of A: length-n .npy (default uniform)");
      app.add_option("--wb", a->wb, "Weights of B: length-m .npy (default uniform)");
      a->binder.bind(
          app, a->options,
          {"p", "method", "mass", "reg", "tolerance", "max_iterations", "projections", "seed"},
          {{"tolerance", {"--tol"}}, {"max_iterations", {"--max-iter"}}});
      app.add_option("--plan", a->plan, "Write the dense n x m coupling to this .npy");
      app.add_flag("--json", a->json, "Print one JSON object");
      app.callback([a] { run(*a); });
    });

}  // namespace
}  // namespace measattn::cli
