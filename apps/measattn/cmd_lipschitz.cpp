// measattn lipschitz — certified upper and lower bounds on the W1 Lipschitz
// constant of an attention layer on measures supported in B_R.
//
//   measattn lipschitz --model M.safetensors --radius R [--atoms N] [--restarts K]
//                      [--steps T] [--step-size S] [--seed S] [--threads P]
//                      [--residual] [--witness DIR] [--json]
//
// Prints every upper bound that applies to the model (name -> value, with its
// meaning), the best one, the best certified lower bound found by the search
// (W1 exact on both sides) and the gap best_upper / lower_bound; token_level is
// the largest spectral norm of the token-level Jacobian found on B_R^N (N =
// --atoms), a certified lower bound on the token-level constant. --witness DIR
// saves the worst pair (mu_atoms.npy, mu_weights.npy, nu_atoms.npy,
// nu_weights.npy, f_mu_atoms.npy, f_nu_atoms.npy, witness.json), each file atomically.
//
//   measattn lipschitz --token --model M --radius R [--sizes 2,5,10,...]
//                      [--token-restarts K] [--steps T] [--step-size S] [--seed S]
//                      [--threads P] [--residual] [--json] [--csv FILE] [--plot FILE]
//
//   measattn lipschitz --model M --radii R1,R2,... [--betas B1,B2,...] [search flags]
//                      [--residual] [--json] [--csv FILE] [--plot FILE]
//
// The sweep (lipschitz_sweep): at each (beta, R) of the grid, the logits
// multiplied by beta, the best proved bound, the certified lower bound and the
// gap; --csv and --plot write the table and both sides against R per beta.
//
//   measattn lipschitz --local --model M --tokens X.npy [--weights w.npy] --eps E
//                      [--radius R] [--restarts K] [--seed S] [--residual] [--json]
//
// The local certificate (lipschitz_local_bound) around mu = (X, w): an upper
// bound on W1(F(nu), F(mu)) / W1(nu, mu) over nu in B_R (R = mu's radius unless
// given) with W1(nu, mu) <= E, from mu's own attention weights, beside the
// global bound and a lower bound found around mu.
//
// Under mpirun every form shares its restarts (and the sweep its points) over
// the ranks, with the one-process result; rank 0 writes and prints.
//
// The token level on B_R^n for each n of --sizes (token_lipschitz_sweep): the
// certified lower bound of the search, Castin's sequence's local constant, the
// proved bound token_ball_l2 (dot potential), and the exponents of log value
// against log n; --csv and --plot write the table and its log-log picture.
// GCC 12 false positive inside its AVX-512 intrinsics when Eigen kernels are inlined.
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "command.hpp"
#include "flags.hpp"
#include "inputs.hpp"
#include "measattn/error.hpp"
#include "measattn/io.hpp"
#include "measattn/lipschitz.hpp"
#include "output.hpp"
#include "plot.hpp"

namespace measattn::cli {
namespace {

struct LipschitzArgs {
  std::string model, witness, csv, plot;
  std::string tokens, weights;  ///< --local: mu
  double eps = 0;               ///< --local: the W1 radius of the neighbourhood
  bool local = false;
  int token_restarts = 6;  ///< the CLI's own: restarts of the token-level search (0 = skip)
  bool json = false;
  bool token = false;  ///< --token: the sweep over --sizes instead of the W1 report
  std::vector<Index> sizes = {2, 5, 10, 20, 50};
  /// --radii (and --betas): the W1 sweep over the grid instead of one radius.
  std::vector<double> radii, betas = {1.0};
  CLI::Option* radius_flag = nullptr;
  CLI::Option* betas_flag = nullptr;
  /// Bound to the flags through their field tables (lipschitz.hpp): --radius
  /// from UpperBoundOptions, the search's flags from LipschitzSearchOptions.
  UpperBoundOptions bounds;
  LipschitzSearchOptions search;
  OptionBinder binder;
};

nlohmann::json finite_or_null(double v) {
  if (std::isfinite(v)) return v;
  return nullptr;
}

void run_token(const LipschitzArgs& args, const Model<double>& model, const UpperBoundOptions& uo,
               const LipschitzSearchOptions& so) {
  if (args.token_restarts < 1)
    throw invalid_argument("--token-restarts: must be >= 1 with --token");
  TokenSearchOptions to;
  to.restarts = args.token_restarts;
  to.steps = so.steps;
  to.step_size = so.step_size;
  to.radius = uo.radius;
  to.seed = so.seed;
  to.residual = so.residual;
  to.threads = so.threads;
  to.communicator = communicator();
  const auto start = std::chrono::steady_clock::now();
  const TokenSweepResult r = token_lipschitz_sweep(model, args.sizes, to);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!writes_outputs()) return;
  const bool has_upper = !r.upper.empty();
  Table table;
  table.columns = {"n", "lower", "castin", "upper"};
  for (size_t i = 0; i < r.sizes.size(); ++i)
    table.rows.push_back({static_cast<double>(r.sizes[i]), r.lower[i], r.castin[i],
                          has_upper ? r.upper[i] : std::nan("")});
  if (!args.csv.empty()) write_csv(args.csv, table);
  if (!args.plot.empty()) {
    std::ostringstream s;
    s << table.gnuplot_block("data");
    s << "set logscale xy\nset key top left\nset grid\nset xlabel 'n (tokens)'\n"
         "set ylabel '||J(X)||_2'\n";
    char title[240];
    std::snprintf(title, sizeof title,
                  "token level on B_R^n, R = %g; exponents in n: lower %.3f, Castin %.3f, "
                  "upper %.3f",
                  uo.radius, r.exponent_lower, r.exponent_castin, r.exponent_upper);
    s << "set title " << gnuplot_quote(title) << "\n";
    s << "plot $data using 1:2 with linespoints lw 2 title 'certified lower bound (search or "
         "Castin)', "
         "$data using 1:3 with linespoints dt 2 title 'Castin sequence'";
    if (has_upper)
      s << ", $data using 1:4 with linespoints lw 2 title 'token\\_ball\\_l2 (proved)'";
    s << "\n";
    render_png(args.plot, s.str());
  }
  if (args.json) {
    nlohmann::json j;
    j["mode"] = "token";
    j["model"] = args.model;
    j["radius"] = uo.radius;
    j["residual"] = so.residual;
    j["sizes"] = r.sizes;
    j["lower"] = r.lower;
    j["castin"] = r.castin;
    if (has_upper) {
      nlohmann::json up = nlohmann::json::array();
      for (double v : r.upper) up.push_back(finite_or_null(v));
      j["upper"] = up;
      j["upper_name"] = "token_ball_l2";
      j["exponent_upper"] = r.exponent_upper;
    }
    j["origins"] = r.origins;
    j["exponent_lower"] = r.exponent_lower;
    j["exponent_castin"] = r.exponent_castin;
    j["local_exponents"] = r.local_exponents;
    j["evaluations"] = r.evaluations;
    j["meaning"] =
        "lower: the largest ||J(X)||_2 found over X in B_R^n by the search or at Castin's "
        "sequence (certified: recomputed by Lanczos at the witness); castin: ||J|| at Castin's "
        "sequence; upper: the proved bound "
        "token_ball_l2 (dot potential); exponents: least-squares slopes of log value vs log n";
    j["seconds"] = seconds;
    std::cout << j.dump(2) << "\n";
    return;
  }
  std::cout << std::setprecision(8);
  std::cout << "token level on B_R^n, R = " << uo.radius << (so.residual ? " (residual)" : "")
            << "\n";
  std::cout << "       n          lower         castin" << (has_upper ? "  token_ball_l2" : "")
            << "  origin\n";
  for (size_t i = 0; i < r.sizes.size(); ++i) {
    std::cout << std::setw(8) << r.sizes[i] << " " << std::setw(14) << r.lower[i] << " "
              << std::setw(14) << r.castin[i];
    if (has_upper) std::cout << " " << std::setw(14) << r.upper[i];
    std::cout << "  " << r.origins[i] << "\n";
  }
  std::cout << "exponent of the lower bound  " << r.exponent_lower << "\n";
  std::cout << "exponent of Castin's value  " << r.exponent_castin << "\n";
  if (has_upper) std::cout << "exponent of the upper bound  " << r.exponent_upper << "\n";
}

void run_sweep(const LipschitzArgs& args, const Model<double>& model,
               const LipschitzSearchOptions& so) {
  LipschitzSweepOptions o;
  o.radii = args.radii;
  o.betas = args.betas;
  o.search = so;
  o.search.communicator = communicator();
  const auto start = std::chrono::steady_clock::now();
  const LipschitzSweepResult r = lipschitz_sweep(model, o);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!writes_outputs()) return;
  Table table;
  table.columns = {"beta", "radius", "best_upper", "lower_bound", "gap"};
  for (const auto& pt : r.points)
    table.rows.push_back({pt.beta, pt.radius, pt.best_upper, pt.lower, pt.gap});
  if (!args.csv.empty()) write_csv(args.csv, table);
  if (!args.plot.empty()) {
    // One block per beta (gnuplot's index), both sides against R on a log scale.
    std::ostringstream s;
    s << "$data << EOD\n";
    for (size_t b = 0; b < o.betas.size(); ++b) {
      if (b > 0) s << "\n\n";
      for (size_t i = 0; i < o.radii.size(); ++i) {
        const auto& pt = r.points[b * o.radii.size() + i];
        s << pt.radius << " " << pt.best_upper << " " << pt.lower << "\n";
      }
    }
    s << "EOD\n";
    s << "set logscale y\nset key top left\nset grid\nset xlabel 'radius R'\n"
         "set ylabel 'W1 Lipschitz constant'\n"
         "set title 'proved upper bound (solid) and certified lower bound (dashed) on B_R'\n";
    s << "plot ";
    for (size_t b = 0; b < o.betas.size(); ++b) {
      char beta[64];
      std::snprintf(beta, sizeof beta, "%g", o.betas[b]);
      if (b > 0) s << ", ";
      s << "$data index " << b << " using 1:2 with linespoints lw 2 lc " << b + 1 << " title "
        << gnuplot_quote(std::string("upper, beta = ") + beta) << ", $data index " << b
        << " using 1:3 with linespoints dt 2 lc " << b + 1 << " title "
        << gnuplot_quote(std::string("lower, beta = ") + beta);
    }
    s << "\n";
    render_png(args.plot, s.str());
  }
  if (args.json) {
    nlohmann::json j;
    j["mode"] = "sweep";
    j["model"] = args.model;
    j["residual"] = so.residual;
    j["radii"] = o.radii;
    j["betas"] = o.betas;
    nlohmann::json pts = nlohmann::json::array();
    for (const auto& pt : r.points)
      pts.push_back({{"beta", pt.beta},
                     {"radius", pt.radius},
                     {"best_upper", finite_or_null(pt.best_upper)},
                     {"best_upper_name", pt.best_name},
                     {"lower_bound", pt.lower},
                     {"search_ratio", pt.search_ratio},
                     {"witness_radius", pt.witness_radius},
                     {"witness_origin", pt.witness_origin},
                     {"gap", finite_or_null(pt.gap)},
                     {"evaluations", pt.evaluations}});
    j["points"] = pts;
    j["evaluations"] = r.evaluations;
    j["meaning"] =
        "at each (beta, R): the model's logits times beta; best_upper: the smallest proved W1 "
        "bound on B_R; lower_bound: the certified lower bound (exact W1 on both sides), the "
        "best ratio of the searches at this beta and every radius <= R (a pair in B_r lies in "
        "B_R); search_ratio: this point's own search; gap = best_upper / lower_bound";
    j["seconds"] = seconds;
    std::cout << j.dump(2) << "\n";
    return;
  }
  std::cout << std::setprecision(8);
  std::cout << "W1 constant over the grid" << (so.residual ? " (residual)" : "")
            << ": logits times beta, measures on B_R\n";
  std::cout << "      beta      radius      best_upper     lower_bound             gap  bound\n";
  for (const auto& pt : r.points)
    std::cout << std::setw(10) << pt.beta << " " << std::setw(11) << pt.radius << " "
              << std::setw(15) << pt.best_upper << " " << std::setw(15) << pt.lower << " "
              << std::setw(15) << pt.gap << "  " << pt.best_name << "\n";
}

void run_local(const LipschitzArgs& args, const Model<double>& model,
               const LipschitzSearchOptions& so) {
  if (args.tokens.empty()) throw invalid_argument("--tokens: required with --local");
  const auto mu = read_token_measure<double>(args.tokens, args.weights);
  if (mu->dim() != model.query_dim())
    throw invalid_argument("--tokens: " + args.tokens + ": tokens have dimension " +
                           std::to_string(mu->dim()) + ", the model expects " +
                           std::to_string(model.query_dim()));
  LocalBoundOptions o;
  o.eps = args.eps;
  o.radius = args.radius_flag->count() > 0 ? args.bounds.radius : 0.0;
  o.residual = so.residual;
  o.restarts = so.restarts;
  o.seed = so.seed;
  const auto start = std::chrono::steady_clock::now();
  const LocalBoundResult r = lipschitz_local_bound(model, *mu, o);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!writes_outputs()) return;
  if (args.json) {
    nlohmann::json j;
    j["mode"] = "local";
    j["model"] = args.model;
    j["tokens"] = args.tokens;
    j["radius"] = r.radius;
    j["eps"] = r.eps;
    j["residual"] = so.residual;
    j["local_upper"] = finite_or_null(r.upper);
    j["local_upper_at_zero"] = finite_or_null(r.upper_at_zero);
    j["eps_half"] = finite_or_null(r.eps_half);
    j["local_upper_at_eps_half"] = finite_or_null(r.upper_at_eps_half);
    nlohmann::json heads = nlohmann::json::array();
    for (double v : r.head_measure_terms) heads.push_back(finite_or_null(v));
    j["head_measure_terms"] = heads;
    j["x_term"] = r.x_term;
    j["global_upper"] = finite_or_null(r.global_upper);
    j["global_upper_name"] = r.global_name;
    j["best_upper"] = finite_or_null(r.best_upper);
    j["lower_bound"] = r.lower;
    j["gap"] = r.lower > 0 ? finite_or_null(r.best_upper / r.lower) : nullptr;
    j["witness_w1"] = r.witness_w1;
    j["witness_origin"] = r.witness_origin;
    j["evaluations"] = r.evaluations;
    j["meaning"] =
        "for every nu in B_R with W1(nu, mu) <= eps: W1(F(nu), F(mu)) <= best_upper W1(nu, mu); "
        "local_upper is the local certificate from mu's own attention weights (docs/theory.md, "
        "local certificate), global_upper the best bound on all of B_R; lower_bound is the "
        "largest exact ratio found around mu";
    j["seconds"] = seconds;
    std::cout << j.dump(2) << "\n";
    return;
  }
  std::cout << std::setprecision(8);
  std::cout << "local certificate around " << args.tokens << " (" << mu->size()
            << " atoms), eps = " << r.eps << ", R = " << r.radius
            << (so.residual ? " (residual)" : "") << "\n";
  std::cout << "local upper (W1)   " << r.upper << "  (at eps -> 0: " << r.upper_at_zero << ")\n";
  std::cout << "within W1 <= " << r.eps_half << ": " << r.upper_at_eps_half
            << " (at most twice the limit)\n";
  std::cout << "global upper (W1)  " << r.global_upper << " (" << r.global_name << ")\n";
  std::cout << "best upper         " << r.best_upper << "\n";
  std::cout << "lower bound (W1)   " << r.lower << " (" << r.witness_origin
            << ", W1(nu, mu) = " << r.witness_w1 << ", " << r.evaluations << " candidates)\n";
  std::cout << "gap                " << (r.lower > 0 ? r.best_upper / r.lower : INFINITY) << "\n";
}

void run(const LipschitzArgs& args) {
  const bool sweep = !args.radii.empty();
  if (!args.local && (!args.tokens.empty() || !args.weights.empty() || args.eps != 0))
    throw invalid_argument("--tokens/--weights/--eps: only with --local");
  if (args.local && (sweep || args.token))
    throw invalid_argument("--local: not with --radii or --token");
  if (sweep && args.radius_flag->count() > 0)
    throw invalid_argument("--radius: not with --radii (the sweep's radii)");
  if (!sweep && !args.local && args.radius_flag->count() == 0)
    throw invalid_argument("--radius: required (or --radii for a sweep over radii)");
  if (!sweep && args.betas_flag->count() > 0) throw invalid_argument("--betas: only with --radii");
  if (sweep && args.token) throw invalid_argument("--radii: not with --token");
  UpperBoundOptions uo = args.bounds;
  if (sweep || (args.local && args.radius_flag->count() == 0))
    uo.radius = 1;  // the sweep checks its own radii; --local defaults to mu's radius
  uo.validate();    // --radius
  if (args.token_restarts < 0) throw invalid_argument("--token-restarts: must be >= 0");
  LipschitzSearchOptions so = args.search;
  so.progress = true;
  so.validate();
  uo.residual = so.residual;
  uo.tokens = so.atoms;
  std::unique_ptr<OutputDirectory> witness;
  if (!args.csv.empty()) check_output_file(args.csv, "--csv");
  if (!args.plot.empty()) check_output_file(args.plot, "--plot");
  if (!args.witness.empty() && !args.token && !sweep && !args.local && writes_outputs())
    witness = std::make_unique<OutputDirectory>(args.witness, "lipschitz", "--witness");
  const Model<double> model = load_model<double>(args.model);
  model.validate();  // its fields map to --model in main() (flags.hpp)
  if (model.potential == Potential::custom)
    throw invalid_argument("--model: custom potentials are not supported");
  if (model.query_dim() != model.key_dim())
    throw invalid_argument("--model: " + args.model +
                           ": self-attention needs equal query and key dimensions");
  if (so.residual && model.out_dim() != model.query_dim())
    throw invalid_argument("--residual: the model's output dimension differs from its input");
  if (args.local) {
    if (!args.witness.empty() || !args.csv.empty() || !args.plot.empty())
      throw invalid_argument("--witness/--csv/--plot: not with --local");
    return run_local(args, model, so);
  }
  if (!args.token && !sweep && (!args.csv.empty() || !args.plot.empty()))
    throw invalid_argument("--csv/--plot: only with --token or --radii");
  if (args.token) {
    if (!args.witness.empty()) throw invalid_argument("--witness: not with --token");
    return run_token(args, model, uo, so);
  }
  if (sweep) {
    if (!args.witness.empty()) throw invalid_argument("--witness: not with --radii");
    LipschitzSweepOptions check;
    check.radii = args.radii;
    check.betas = args.betas;
    check.search = so;
    check.validate();  // before any work: the flags' names are mapped in main()
    return run_sweep(args, model, so);
  }
  // Under mpirun the ranks share the restarts (docs/distributed.md); rank 0
  // writes and prints.
  so.communicator = communicator();

  const auto start = std::chrono::steady_clock::now();
  const UpperBoundResult ub = lipschitz_upper_bounds(model, uo);
  const LipschitzSearchResult lo = lipschitz_lower_bound(model, uo.radius, so);
  TokenSearchResult tok;
  if (args.token_restarts > 0) {
    TokenSearchOptions to;
    to.tokens = so.atoms;
    to.restarts = args.token_restarts;
    to.steps = 40;
    to.radius = uo.radius;
    to.seed = so.seed;
    to.residual = so.residual;
    to.threads = so.threads;
    to.communicator = communicator();
    tok = token_lipschitz_lower_bound(model, to);
  }
  if (!writes_outputs()) return;
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double gap = lo.ratio > 0 ? ub.best_w1 / lo.ratio : INFINITY;

  if (witness && lo.status == Status::completed) {
    namespace fs = std::filesystem;
    const LipschitzWitness& w = lo.witness;
    const fs::path dir(witness->stage());
    write_npy((dir / "mu_atoms.npy").string(), w.mu_atoms);
    write_npy((dir / "mu_weights.npy").string(), w.mu_weights);
    write_npy((dir / "nu_atoms.npy").string(), w.nu_atoms);
    write_npy((dir / "nu_weights.npy").string(), w.nu_weights);
    write_npy((dir / "f_mu_atoms.npy").string(), w.f_mu_atoms);
    write_npy((dir / "f_nu_atoms.npy").string(), w.f_nu_atoms);
    nlohmann::json j;
    j["ratio"] = lo.ratio;
    j["w1_input"] = w.w1_input;
    j["w1_output"] = w.w1_output;
    j["radius"] = uo.radius;
    j["residual"] = so.residual;
    j["origin"] = w.origin;
    j["restart"] = w.restart;
    j["certification"] = w.certification;
    j["separation"] = w.separation;
    j["model"] = args.model;
    j["files"] = {"mu_atoms.npy",   "mu_weights.npy", "nu_atoms.npy",
                  "nu_weights.npy", "f_mu_atoms.npy", "f_nu_atoms.npy"};
    write_file_atomic((dir / "witness.json").string(), j.dump(2) + "\n");
    witness->commit();
  }

  if (args.json) {
    nlohmann::json j;
    j["model"] = {{"path", args.model},
                  {"input_dim", model.query_dim()},
                  {"output_dim", model.out_dim()},
                  {"num_heads", model.num_heads},
                  {"potential", to_string(model.potential)},
                  {"tau", model.tau()}};
    j["radius"] = uo.radius;
    j["residual"] = so.residual;
    nlohmann::json ubj = nlohmann::json::object(), meaning = nlohmann::json::object(),
                   kinds = nlohmann::json::object();
    for (const auto& b : ub.bounds) {
      ubj[b.name] = finite_or_null(b.value);
      meaning[b.name] = b.meaning;
      kinds[b.name] = b.kind;
    }
    j["upper_bounds"] = ubj;
    j["upper_bound_meanings"] = meaning;
    j["upper_bound_kinds"] = kinds;
    j["best_upper"] = finite_or_null(ub.best_w1);
    j["best_upper_name"] = ub.best_name;
    j["lower_bound"] = lo.ratio;
    j["gap"] = finite_or_null(gap);
    j["output_radius"] = ub.output_radius;
    nlohmann::json heads = nlohmann::json::array();
    for (const auto& h : ub.heads)
      heads.push_back({{"x_part", h.x_part},
                       {"measure_part", h.measure_part},
                       {"value_norm", h.value_norm},
                       {"projected_value_norm", h.projected_value_norm},
                       {"rho", h.rho},
                       {"oscillation", h.oscillation},
                       {"rho_star", h.rho_star},
                       {"column_exponent", h.column_exponent},
                       {"psd_t", h.psd_t}});
    j["heads"] = heads;
    j["search"] = {{"atoms", so.atoms},
                   {"restarts", so.restarts},
                   {"steps", so.steps},
                   {"seed", so.seed},
                   {"evaluations", lo.evaluations},
                   {"status", to_string(lo.status)},
                   {"message", lo.message},
                   {"restart_ratios", lo.restart_ratios},
                   {"witness_origin", lo.witness.origin},
                   {"witness_certification", lo.witness.certification},
                   {"witness_separation", lo.witness.separation},
                   {"w1_input", lo.witness.w1_input},
                   {"w1_output", lo.witness.w1_output}};
    if (!args.witness.empty()) j["witness_dir"] = args.witness;
    nlohmann::json tj;
    tj["value"] = args.token_restarts > 0 ? nlohmann::json(tok.value) : nlohmann::json(nullptr);
    tj["tokens"] = so.atoms;
    tj["evaluations"] = tok.evaluations;
    tj["meaning"] =
        "largest ||J(X)||_2 found over X in B_R^N (N = --atoms), J the Jacobian of X -> "
        "(Gamma_{mu_X}(x_i))_i with uniform weights, by Lanczos on J^T J with exact JVP/VJP: a "
        "certified lower bound on the token-level Lipschitz constant (l2 on R^{N x d}), not on "
        "the W1 constant";
    const double ball = ub.get("token_ball_l2");
    if (!std::isnan(ball)) {
      tj["token_ball_l2"] = finite_or_null(ball);
      tj["gap_token_ball"] = tok.value > 0 ? finite_or_null(ball / tok.value) : nullptr;
    }
    const double kim = ub.get("kim_token_l2");
    if (std::isfinite(kim)) {
      tj["kim_token_l2"] = kim;
      tj["gap_kim_l2"] = tok.value > 0 ? finite_or_null(kim / tok.value) : nullptr;
    }
    j["token_level"] = tj;
    j["seconds"] = seconds;
    std::cout << j.dump(2) << "\n";
    return;
  }
  std::cout << std::setprecision(8);
  std::cout << "model: " << args.model << " (d = " << model.query_dim()
            << ", heads = " << model.num_heads << ", potential " << to_string(model.potential)
            << ")\nradius R = " << uo.radius << (so.residual ? " (residual)" : "") << "\n";
  std::cout << "upper bounds:\n";
  for (const auto& b : ub.bounds)
    std::cout << "  " << std::setw(16) << std::left << b.name << std::right << " " << b.value
              << "  [" << b.kind << "]\n";
  std::cout << "best upper (W1)   " << ub.best_w1 << " (" << ub.best_name << ")\n";
  std::cout << "lower bound (W1)  " << lo.ratio << " (" << lo.message << ", " << lo.evaluations
            << " evaluations)\n";
  if (lo.status == Status::completed)
    std::cout << "  witness: " << lo.witness.origin << " seed, certified in "
              << lo.witness.certification << (lo.witness.separation > 1 ? ", moved apart x" : "")
              << (lo.witness.separation > 1
                      ? std::to_string(static_cast<int>(lo.witness.separation))
                      : std::string())
              << "\n";
  std::cout << "gap               " << gap << "\n";
  if (args.token_restarts > 0)
    std::cout << "token level       " << tok.value
              << " (largest ||J(X)||_2 found on B_R^N, N = " << so.atoms << ")\n";
}

const bool registered = register_command(
    "lipschitz", "Certified upper and lower bounds on the W1 Lipschitz constant of a layer",
    [](CLI::App& app) {
      auto args = std::make_shared<LipschitzArgs>();
      // UpperBoundOptions::tokens and TokenSearchOptions::tokens are --atoms.
      // UpperBoundOptions::tokens is set from --atoms.
      std::vector<FieldFlag> fields = {{"tokens", "--atoms"},
                                       {"radii", "--radii"},
                                       {"betas", "--betas"},
                                       {"eps", "--eps"},
                                       {"mu", "--tokens"}};
      for (auto& row : model_fields("--model", &args->model)) fields.push_back(row);
      register_fields(app, std::move(fields));
      app.add_option("--model", args->model, "model (.safetensors)")->required();
      args->binder.bind(app, args->bounds, {"radius"});
      args->radius_flag = app.get_option("--radius");  // required unless --radii
      args->binder.bind(app, args->search,
                        {"atoms", "restarts", "steps", "step_size", "seed", "threads", "residual"});
      app.add_option("--token-restarts", args->token_restarts,
                     "restarts of the token-level search (0 = skip)");
      app.add_option("--witness", args->witness, "directory for the worst pair found");
      app.add_flag("--token", args->token,
                   "token level: sweep n over --sizes (search, Castin, token_ball_l2)");
      app.add_option("--sizes", args->sizes, "with --token: increasing token counts n")
          ->delimiter(',');
      app.add_option("--radii", args->radii,
                     "sweep: radii R (instead of --radius), each point's bounds and search")
          ->delimiter(',');
      args->betas_flag =
          app.add_option("--betas", args->betas,
                         "with --radii: inverse temperatures beta (logits times beta), default 1")
              ->delimiter(',');
      app.add_flag("--local", args->local,
                   "the local certificate around --tokens for W1(nu, mu) <= --eps");
      app.add_option("--tokens", args->tokens, "with --local: atoms of mu (.npy, n x d)");
      app.add_option("--weights", args->weights, "with --local: weights of mu (.npy, n)");
      app.add_option("--eps", args->eps, "with --local: the W1 radius eps > 0 around mu");
      app.add_option("--csv", args->csv, "with --token or --radii: write the table as CSV");
      app.add_option("--plot", args->plot, "with --token or --radii: write a PNG plot (gnuplot)");
      app.add_flag("--json", args->json, "print one JSON object");
      app.callback([args]() { run(*args); });
    });

}  // namespace
}  // namespace measattn::cli
