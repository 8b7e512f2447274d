// measattn analyze — the main job: the theory applied to one attention layer,
// as a report (Markdown + HTML) with a PNG and a CSV behind every figure.
//
// Without arguments it analyzes the built-in example layer on the built-in
// example token measure. With --model CHECKPOINT_DIR --text FILE it analyzes a
// pretrained Transformer at its real input instead (analyze_model.hpp). Inputs are read and
// validated before anything is written; the report is assembled in a hidden temporary directory
// that takes the place of the output directory only when complete, so a failed run leaves no
// partial report. An existing --out is used only if it is empty or a previous analyze report (see
// output.hpp); nothing else is ever deleted.
#include <cmath>
#include <filesystem>
#include <iostream>
#include <memory>
#include <random>
#include <string>

#include "analyze.hpp"
#include "analyze_model.hpp"
#include "command.hpp"
#include "flags.hpp"
#include "inputs.hpp"
#include "measattn/error.hpp"
#include "measattn/io.hpp"
#include "measattn/progress.hpp"
#include "measattn/version.hpp"
#include "output.hpp"
#include "signals.hpp"
#include "tokenize.hpp"

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
  std::string text_path;
  std::string ids_path;
  long long max_tokens = 0;
  double radius = 0;
  unsigned long long seed = kAnalyzeSeed;
};

// A checkpoint (a directory, or --text / --input-ids given): the real-model report.
bool is_checkpoint_run(const AnalyzeArgs& args) {
  namespace fs = std::filesystem;
  std::error_code ec;
  return !args.text_path.empty() || !args.ids_path.empty() ||
         (!args.model_path.empty() && fs::is_directory(args.model_path, ec));
}

void run_model_analyze(const AnalyzeArgs& args) {
  namespace fs = std::filesystem;
  // Every input is checked before any work and before the output directory is touched.
  const std::string input_flag = args.text_path.empty() ? "--input-ids" : "--text";
  if (args.model_path.empty()) throw invalid_argument("--model: required with " + input_flag);
  if (args.text_path.empty() && args.ids_path.empty()) {
    throw invalid_argument("--text: required with the checkpoint " + args.model_path +
                           " (or --input-ids)");
  }
  if (!args.text_path.empty() && !args.ids_path.empty()) {
    throw invalid_argument("--input-ids: give either --text or --input-ids, not both");
  }
  if (!args.tokens_path.empty() || !args.weights_path.empty()) {
    throw invalid_argument(std::string(args.tokens_path.empty() ? "--weights" : "--tokens") +
                           ": not used with a checkpoint (the tokens come from --text)");
  }
  if (args.radius != 0) {
    throw invalid_argument(
        "--radius: not used with a checkpoint (each layer uses the radius "
        "of its real tokens)");
  }
  if (args.max_tokens < 0) throw invalid_argument("--max-tokens: must be >= 0");
  ModelAnalysisInput in;
  in.seed = args.seed;
  in.model_path = args.model_path;
  in.model = load_transformer<double>(args.model_path);
  if (in.model.vocab_size() == 0) {
    throw invalid_argument("--model: " + args.model_path +
                           ": the checkpoint has no word embeddings (a torch encoder state "
                           "dict): it cannot read text");
  }
  if (!args.text_path.empty()) {
    in.text = read_file(args.text_path);
    in.ids = tokenize_text(args.model_path, args.text_path, "--text");
    in.source = "--text " + args.text_path;
  } else {
    in.ids = read_npy_ids(args.ids_path, "--input-ids");
    in.source = "--input-ids " + args.ids_path;
    for (size_t i = 0; i < in.ids.size(); ++i) {
      if (in.ids[i] < 0 || in.ids[i] >= in.model.vocab_size()) {
        throw invalid_argument("--input-ids: " + args.ids_path + ": entry " + std::to_string(i) +
                               " = " + std::to_string(in.ids[i]) + " is outside [0, " +
                               std::to_string(in.model.vocab_size()) + ")");
      }
    }
  }
  const std::string input_path = args.text_path.empty() ? args.ids_path : args.text_path;
  if (args.max_tokens > 0 && in.ids.size() > static_cast<size_t>(args.max_tokens)) {
    in.ids.resize(static_cast<size_t>(args.max_tokens));
    in.source += " (first " + std::to_string(args.max_tokens) + " tokens)";
  }
  if (in.ids.size() < 2) {
    throw invalid_argument(input_flag + ": " + input_path + ": " + std::to_string(in.ids.size()) +
                           " token; the report needs at least 2");
  }
  if (in.model.max_positions() > 0 &&
      in.ids.size() > static_cast<size_t>(in.model.max_positions())) {
    throw invalid_argument(input_flag + ": " + input_path + ": " + std::to_string(in.ids.size()) +
                           " tokens, more than the model's " +
                           std::to_string(in.model.max_positions()) +
                           " positions (use --max-tokens)");
  }
  OutputDirectory out(args.out, "analyze", "--out");
  check_signal();
  const std::string stage = out.stage();
  const std::string summary = write_model_analysis(in, stage);
  out.commit();
  const fs::path dir(args.out);
  std::cout << summary << "report: " << (dir / "report.md").string() << ", "
            << (dir / "report.html").string() << " and " << (dir / "report.json").string() << "\n";
}

void run_analyze(const AnalyzeArgs& args) {
  namespace fs = std::filesystem;
  if (is_checkpoint_run(args)) return run_model_analyze(args);
  if (args.max_tokens != 0) throw invalid_argument("--max-tokens: needs --text or --input-ids");
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
      app.add_option("--model", args->model_path,
                     "Attention layer (safetensors), or a pretrained checkpoint (directory "
                     "with config.json, model.safetensors, tokenizer.json; needs --text); "
                     "default: built-in")
          ->check(CLI::ExistingPath);
      app.add_option("--text", args->text_path,
                     "Text (UTF-8) for a checkpoint, tokenized by its tokenizer.json")
          ->check(CLI::ExistingFile);
      app.add_option("--input-ids", args->ids_path,
                     "Token ids (.npy, 1-D integers) for a checkpoint, instead of --text (no "
                     "text: no mis-specification section)")
          ->check(CLI::ExistingFile);
      app.add_option("--max-tokens", args->max_tokens,
                     "Keep the first N tokens of the input (0 = all)");
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
