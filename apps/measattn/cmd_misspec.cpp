// measattn misspec — what a layer does with a mis-specified input measure.
//
//   measattn misspec --model M.safetensors --tokens X.npy [--weights w.npy]
//                    --kind sample|noise|corrupt [--sizes 4,8,...] [--sigmas ...]
//                    [--eps ...] [--repeats K] [--radius R] [--random-corruption]
//                    [--residual] [--seed S] [--json] [--csv FILE] [--plot FILE]
//
// For each parameter value (n, sigma or eps) prints the realized input error
// W1(mu', mu), the realized output deviation W1(F(mu'), F(mu)) (exact W1), the
// certified bound L W1(mu', mu) and the a-priori bound (L sigma E||xi|| for
// noise, L 2 R eps for corruption), L the best upper bound on B_R, R the radius
// containing mu and every mu'. For sampling, the fitted log-log rate in n.
// GCC 12 false positive inside its AVX-512 intrinsics when Eigen kernels are inlined.
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <cmath>
#include <iomanip>
#include <iostream>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "command.hpp"
#include "flags.hpp"
#include "inputs.hpp"
#include "measattn/error.hpp"
#include "measattn/io.hpp"
#include "measattn/misspec.hpp"
#include "output.hpp"
#include "plot.hpp"

namespace measattn::cli {
namespace {

struct MisspecArgs {
  std::string model, tokens, weights, csv, plot;
  /// Bound to the flags through its field table (misspec.hpp), except
  /// `adversarial`, whose flag is its negation --random-corruption.
  MisspecOptions options;
  OptionBinder binder;
  bool random_corruption = false;
  bool json = false;
};

// Undefined numbers (an a-priori bound that does not exist for sampling, a rate
// fitted on fewer than two positive points) print as n/a, never as nan.
std::string text(double v) {
  if (std::isfinite(v)) {
    std::ostringstream s;
    s << std::setprecision(6) << v;
    return s.str();
  }
  return std::isnan(v) ? "n/a" : (v > 0 ? "+inf" : "-inf");
}

nlohmann::json finite_or_null(double v) {
  if (std::isfinite(v)) return v;
  return nullptr;
}

// A number that is not computed for this kind (CSV cell, text "n/a").
double or_nan(const std::optional<double>& v) {
  return v.value_or(std::numeric_limits<double>::quiet_NaN());
}

void run(const MisspecArgs& args) {
  args.binder.apply();  // --kind
  MisspecOptions o = args.options;
  if (args.random_corruption) o.adversarial = false;
  o.validate();  // its fields map to flags in main() (flags.hpp)
  // Output paths are checked before any work.
  if (!args.csv.empty()) check_output_file(args.csv, "--csv");
  if (!args.plot.empty()) check_output_file(args.plot, "--plot");

  const Model<double> model = load_model<double>(args.model);
  model.validate();  // its fields map to --model in main() (flags.hpp)
  if (model.potential == Potential::custom)
    throw invalid_argument("--model: custom potentials are not supported");
  if (model.query_dim() != model.key_dim())
    throw invalid_argument("--model: self-attention needs equal query and key dimensions");
  if (o.residual && model.out_dim() != model.query_dim())
    throw invalid_argument("--residual: the model's output dimension differs from its input");
  const auto mu = read_token_measure<double>(args.tokens, args.weights);
  if (mu->dim() != model.query_dim())
    throw invalid_argument("--tokens: " + args.tokens + ": tokens have dimension " +
                           std::to_string(mu->dim()) + ", the model expects " +
                           std::to_string(model.query_dim()));

  // Under mpirun the ranks share the draws (docs/distributed.md); rank 0 writes
  // and prints.
  o.communicator = communicator();
  const MisspecResult r = misspecification(model, *mu, o);
  if (!writes_outputs()) return;
  const std::string pname = o.kind == MisspecKind::sample  ? "n"
                            : o.kind == MisspecKind::noise ? "sigma"
                                                           : "eps";
  Table table;
  table.columns = {pname, "w1_input", "w1_output", "bound", "a_priori", "max_ratio"};
  for (const auto& row : r.rows)
    table.rows.push_back({row.parameter, row.w1_input, row.w1_output, row.bound,
                          or_nan(row.a_priori), row.max_ratio});
  if (!args.csv.empty()) write_csv(args.csv, table);
  if (!args.plot.empty()) {
    std::ostringstream s;
    s << table.gnuplot_block("data");
    s << "set logscale xy\nset key top left\nset grid\n";
    s << "set xlabel " << gnuplot_quote(pname) << "\nset ylabel 'W1'\n";
    s << "set title "
      << gnuplot_quote("mis-specified input (" + to_string(o.kind) + "): L = " +
                       std::to_string(r.lipschitz) + " on B_R, R = " + std::to_string(r.radius))
      << "\n";
    s << "plot $data using 1:3 with linespoints lw 2 title 'realized W1(F(mu''), F(mu))', "
         "$data using 1:4 with linespoints lw 2 title 'bound L W1(mu'', mu)', "
         "$data using 1:2 with linespoints dt 2 title 'W1(mu'', mu)'";
    if (o.kind != MisspecKind::sample)
      s << ", $data using 1:5 with linespoints dt 3 title 'a-priori bound'";
    s << "\n";
    render_png(args.plot, s.str());
  }
  if (args.json) {
    nlohmann::json j;
    j["kind"] = to_string(r.kind);
    j["radius"] = r.radius;
    j["lipschitz"] = r.lipschitz;
    j["bound_name"] = r.bound_name;
    j["violated"] = r.violated;
    j["parameter"] = pname;
    j["repeats"] = o.repeats;
    j["tokens"] = mu->size();
    j["dim"] = mu->dim();
    // Kind-specific numbers are present only where computed.
    if (r.output_rate) j["output_rate"] = finite_or_null(*r.output_rate);
    if (r.input_rate) j["input_rate"] = finite_or_null(*r.input_rate);
    nlohmann::json rows = nlohmann::json::array();
    for (const auto& row : r.rows) {
      nlohmann::json jr = {{pname, row.parameter},
                           {"w1_input", row.w1_input},
                           {"w1_output", row.w1_output},
                           {"bound", row.bound}};
      if (row.a_priori) jr["a_priori"] = finite_or_null(*row.a_priori);
      jr["max_ratio"] = row.max_ratio;
      rows.push_back(jr);
    }
    j["rows"] = rows;
    std::cout << j.dump(2) << "\n";
    return;
  }
  std::cout << std::setprecision(6);
  std::cout << "kind " << to_string(r.kind) << ", R = " << r.radius << ", L = " << text(r.lipschitz)
            << " (" << r.bound_name << ")\n";
  std::cout << std::setw(12) << pname << std::setw(14) << "W1(mu',mu)" << std::setw(14)
            << "W1(Fmu',Fmu)" << std::setw(14) << "L W1(mu',mu)" << std::setw(14) << "a priori"
            << "\n";
  for (const auto& row : r.rows)
    std::cout << std::setw(12) << row.parameter << std::setw(14) << row.w1_input << std::setw(14)
              << row.w1_output << std::setw(14) << text(row.bound) << std::setw(14)
              << text(or_nan(row.a_priori)) << "\n";
  if (o.kind == MisspecKind::sample)
    std::cout << "fitted rate in n: output " << text(or_nan(r.output_rate)) << ", input "
              << text(or_nan(r.input_rate)) << "\n";
  if (r.violated) std::cout << "WARNING: a bound was violated (please report)\n";
}

const bool registered = register_command(
    "misspec", "Output deviation under sampled, noisy or corrupted inputs, with its bound",
    [](CLI::App& app) {
      auto args = std::make_shared<MisspecArgs>();
      std::vector<FieldFlag> fields = token_fields(&args->tokens, &args->weights);
      for (auto& row : model_fields("--model", &args->model)) fields.push_back(row);
      register_fields(app, std::move(fields));
      app.add_option("--model", args->model, "model (.safetensors)")->required();
      app.add_option("--tokens", args->tokens, "atoms of mu (.npy, n x d)")->required();
      app.add_option("--weights", args->weights, "weights of mu (.npy, n)");
      args->binder.bind(
          app, args->options,
          {"kind", "sizes", "sigmas", "eps", "repeats", "radius", "residual", "seed"});
      app.get_option("--kind")->required();  // no default kind on the command line
      app.add_flag("--random-corruption", args->random_corruption,
                   "corrupt with random points (sets adversarial = false)");
      app.add_flag("--json", args->json, "print one JSON object");
      app.add_option("--csv", args->csv, "write the table as CSV");
      app.add_option("--plot", args->plot, "write a PNG plot (gnuplot)");
      app.callback([args]() { run(*args); });
    });

}  // namespace
}  // namespace measattn::cli
