// measattn analyze — the main job: the theory applied to one attention layer,
// as a report (Markdown + HTML) with a PNG and a CSV behind every figure.
//
// Without arguments it analyzes the built-in example layer on the built-in
// example token measure. Inputs are read and validated before anything is
// written; the report is assembled in a hidden temporary directory that takes
// the place of the output directory only when complete, so a failed run leaves
// no partial report. An existing --out is used only if it is empty or a previous
// analyze report (see output.hpp); nothing else is ever deleted.
#include <cmath>
#include <filesystem>
#include <iostream>
#include <memory>
#include <random>
#include <string>

#include "analyze.hpp"
#include "command.hpp"
#include "flags.hpp"
#include "inputs.hpp"
#include "measattn/error.hpp"
#include "measattn/io.hpp"
#include "measattn/progress.hpp"
#include "measattn/version.hpp"
#include "output.hpp"
#include "signals.hpp"

namespace measattn::cli {

namespace {

// analyze's flags are CLI-only: it is a report driver, not one library call.
// --model/--tokens/--weights/--out are files; --radius (0 = the tokens' radius,
// checked against it) becomes AnalysisInput::radius, the R that the Lipschitz
// section sets in its library Options, and --seed seeds the sections' random
// choices (the Lipschitz search, the misspec draws, the equivalence samples);
// the sections' Options keep their library defaults otherwise. So no library Options struct has
// these fields, and no default here copies a library one: the seed's default is the driver's own
// (AnalysisInput, analyze.hpp).
struct AnalyzeArgs {
  std::string model_path;
  std::string tokens_path;
  std::string weights_path;
  std::string out = "analysis";
  double radius = 0;
  unsigned long long seed = kAnalyzeSeed;
};

void run_analyze(const AnalyzeArgs& args) {
  namespace fs = std::filesystem;
  // The output directory is checked before any work; the report is built in a
  // hidden temporary directory next to it and put in place only when complete.
  OutputDirectory out(args.out, "analyze", "--out");
  AnalysisInput in;
  in.seed = args.seed;
  if (args.model_path.empty()) {
    in.model = example_model();
    in.model_name = "built-in example layer (d = 8, 2 heads, dot potential, biases, seed 2020)";
  } else {
    in.model = load_model<double>(args.model_path);
    in.model_name = args.model_path;
  }
  if (args.tokens_path.empty()) {
    if (!args.weights_path.empty()) throw invalid_argument("--weights: needs --tokens");
    if (in.model.query_dim() != in.model.key_dim()) {
      throw invalid_argument("--tokens: required for a model whose query and key dims differ");
    }
    in.tokens = example_tokens(in.model.key_dim());
    in.tokens_name = "built-in example tokens (48 points in 3 clusters, radius 1)";
  } else {
    in.tokens = read_token_measure<double>(args.tokens_path, args.weights_path);
    in.tokens_name = args.tokens_path;
  }
  if (in.tokens->dim() != in.model.key_dim() || in.tokens->dim() != in.model.query_dim()) {
    throw invalid_argument((args.tokens_path.empty() ? std::string("--tokens") : args.tokens_path) +
                           ": tokens have dimension " + std::to_string(in.tokens->dim()) +
                           ", the model expects " + std::to_string(in.model.key_dim()));
  }
  if (!(args.radius >= 0) || !std::isfinite(args.radius)) {
    throw invalid_argument("--radius: must be a finite number >= 0");
  }
  in.radius = args.radius > 0 ? args.radius : in.tokens->radius();
  if (in.radius < in.tokens->radius()) {
    throw invalid_argument("--radius: " + std::to_string(args.radius) +
                           " is smaller than the tokens' radius " +
                           std::to_string(in.tokens->radius()));
  }
  if (in.radius == 0) in.radius = 1;  // every token at the origin

  check_signal();
  const std::string stage = out.stage();
  const std::string summary = write_analysis(in, stage);
  out.commit();
  const fs::path dir(args.out);
  std::cout << summary << "report: " << (dir / "report.md").string() << " and "
            << (dir / "report.html").string() << "\n";
}

const bool registered = register_command(
    "analyze", "Full report on an attention layer (default: the built-in example)",
    [](CLI::App& app) {
      auto args = std::make_shared<AnalyzeArgs>();
      register_fields(app, token_fields(&args->tokens_path, &args->weights_path));
      app.add_option("--model", args->model_path, "Model (safetensors); default: built-in")
          ->check(CLI::ExistingFile);
      app.add_option("--tokens", args->tokens_path, "Token atoms (.npy, n x d); default: built-in")
          ->check(CLI::ExistingFile);
      app.add_option("--weights", args->weights_path, "Token weights (.npy, n); default uniform")
          ->check(CLI::ExistingFile);
      app.add_option("--radius", args->radius,
                     "Radius R of the ball B_R for the Lipschitz analysis; default: the "
                     "tokens' radius");
      app.add_option("--out", args->out,
                     "Output directory: new, empty or a previous report (replaced when complete)")
          ->capture_default_str();
      app.add_option("--seed", args->seed, "Seed of every random choice")->capture_default_str();
      app.callback([args] { run_analyze(*args); });
    });

}  // namespace

}  // namespace measattn::cli
