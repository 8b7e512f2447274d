// measattn forward — a checkpoint's hidden states on one sequence.
//
//   measattn forward --model PATH (--input-ids IDS.npy | --text FILE | --tokens X.npy)
//                    [--layers A:B] [--dtype f64|f32] --out DIR
//
// --input-ids: a 1-D integer .npy of token ids (positions 0..n-1, token type 0);
// --text: a UTF-8 text tokenized by the checkpoint's tokenizer.json (Hugging
// Face `tokenizers`, special tokens added); --tokens: n x d points given
// directly as the input of block A (a torch encoder has no embeddings).
// --layers A:B runs blocks [A, B) (a Python slice; default all): DIR/hidden_states.npy
// has shape (B - A + 1, n, d), entry 0 the input of block A (the embedding
// output when A = 0), entry k the output of block A + k - 1 (GPT-2's last
// entry with ln_f applied), in Hugging Face's output_hidden_states convention;
// float64 by default, float32 (computed in float32) with --dtype f32.
// DIR/summary.json: the model's summary, the input, n, the layers, the dtype
// and the norms of the tokens at each entry. DIR is created if absent; a
// directory measattn did not write is never replaced (output.hpp).
#include <cmath>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "command.hpp"
#include "flags.hpp"
#include "measattn/error.hpp"
#include "measattn/io.hpp"
#include "measattn/transformer.hpp"
#include "output.hpp"
#include "tokenize.hpp"
#include "transformer_summary.hpp"

namespace measattn::cli {
namespace {

namespace fs = std::filesystem;

struct ForwardArgs {
  std::string model, input_ids, text, tokens, layers, out;
  std::string dtype = "f64";
};

// "A:B", "A:", ":B" or ":" (a Python slice of blocks, A, B >= 0).
ForwardOptions parse_layers(const std::string& text) {
  ForwardOptions o;
  if (text.empty()) return o;
  const auto colon = text.find(':');
  auto number = [&](const std::string& s, Index fallback) -> Index {
    if (s.empty()) return fallback;
    if (s.size() > 6 || s.find_first_not_of("0123456789") != std::string::npos) {
      throw invalid_argument(
          "--layers: expected A:B with block indices A, B >= 0 (a Python "
          "slice, e.g. 0:6 or 2:), got '" +
          text + "'");
    }
    return static_cast<Index>(std::stol(s));
  };
  if (colon == std::string::npos) {
    throw invalid_argument(
        "--layers: expected A:B (a Python slice of blocks, e.g. 0:6 or 2:), "
        "got '" +
        text + "'");
  }
  o.first_layer = number(text.substr(0, colon), 0);
  o.last_layer = number(text.substr(colon + 1), -1);
  return o;
}

template <class Scalar>
void run_forward(const ForwardArgs& a, const ForwardOptions& layers, OutputDirectory& out) {
  const Transformer<Scalar> model = load_checkpoint<Scalar>(a.model, "--model");
  layers.validate(model.num_layers());
  std::vector<std::int64_t> ids;
  Matrix<Scalar> points;
  std::string kind, input;
  if (!a.input_ids.empty()) {
    ids = read_npy_ids(a.input_ids, "input_ids");
    kind = "input_ids";
    input = a.input_ids;
  } else if (!a.text.empty()) {
    ids = tokenize_text(a.model, a.text, "--text");
    kind = "text";
    input = a.text;
  } else {
    points = read_npy_matrix<Scalar>(a.tokens, "tokens");
    kind = "tokens";
    input = a.tokens;
  }
  const std::vector<Matrix<Scalar>> states =
      kind == "tokens" ? forward_points(model, points, layers) : forward(model, ids, layers);
  const Index n = states.front().rows(), d = states.front().cols();
  const Index last = layers.last_layer == -1 ? model.num_layers() : layers.last_layer;

  std::vector<double> values;
  values.reserve(states.size() * static_cast<std::size_t>(n * d));
  nlohmann::json entries = nlohmann::json::array();
  for (std::size_t k = 0; k < states.size(); ++k) {
    const Matrix<Scalar>& h = states[k];
    values.insert(values.end(), h.data(), h.data() + h.size());
    double mean_norm = 0, max_norm = 0;
    for (Index i = 0; i < n; ++i) {
      const double r = static_cast<double>(h.row(i).stableNorm());
      mean_norm += r / static_cast<double>(n);
      max_norm = std::max(max_norm, r);
    }
    const Index block = layers.first_layer + static_cast<Index>(k) - 1;
    std::string what;
    if (k == 0) {
      what = layers.first_layer == 0 && kind != "tokens"
                 ? "embedding output"
                 : "input of block " + std::to_string(layers.first_layer);
    } else {
      what = "output of block " + std::to_string(block);
    }
    const bool normed =
        model.final_norm && k + 1 == states.size() && k > 0 && last == model.num_layers();
    if (normed) what += ", final LayerNorm applied";
    entries.push_back(
        {{"entry", k}, {"what", what}, {"mean_norm", mean_norm}, {"max_norm", max_norm}});
  }
  nlohmann::json model_json = summary_json(summarize(model));
  model_json["path"] = a.model;
  nlohmann::json summary = {
      {"command", "forward"},
      {"model", model_json},
      {"input", {{"kind", kind}, {"path", input}}},
      {"n", n},
      {"layers", {{"first", layers.first_layer}, {"last", last}}},
      {"dtype", std::is_same_v<Scalar, float> ? "f32" : "f64"},
      {"shape", {static_cast<std::int64_t>(states.size()), n, d}},
      {"hidden_states", "hidden_states.npy"},
      {"convention",
       "Hugging Face output_hidden_states: entry 0 the input of block first, entry k the "
       "output of block first + k - 1"},
      {"entries", entries}};
  if (kind != "tokens") summary["input_ids"] = ids;

  const std::string stage = out.stage();
  write_npy((fs::path(stage) / "hidden_states.npy").string(), values,
            {static_cast<std::int64_t>(states.size()), static_cast<std::int64_t>(n),
             static_cast<std::int64_t>(d)},
            std::is_same_v<Scalar, float> ? DType::f32 : DType::f64);
  write_file_atomic((fs::path(stage) / "summary.json").string(), summary.dump(2) + "\n");
  out.commit();
  std::cout << "hidden states (" << states.size() << " x " << n << " x " << d << ", "
            << (std::is_same_v<Scalar, float> ? "float32" : "float64")
            << "): " << (fs::path(a.out) / "hidden_states.npy").string() << "\n";
}

const bool registered = register_command(
    "forward", "Hidden states of a checkpoint (BERT, GPT-2, torch encoder) on one sequence",
    [](CLI::App& app) {
      auto a = std::make_shared<ForwardArgs>();
      register_fields(app, {{"input_ids", "--input-ids", &a->input_ids},
                            {"input_ids", "--text", &a->text},
                            {"tokens", "--tokens", &a->tokens},
                            {"first_layer", "--layers", nullptr},
                            {"last_layer", "--layers", nullptr}});
      app.add_option("--model", a->model,
                     "Checkpoint: a directory with config.json and model.safetensors, or a "
                     "torch encoder .safetensors")
          ->required();
      auto* ids = app.add_option("--input-ids", a->input_ids,
                                 "Token ids: a 1-D integer .npy (positions 0..n-1)");
      auto* text = app.add_option("--text", a->text,
                                  "A UTF-8 text, tokenized by the checkpoint's tokenizer.json");
      auto* tokens = app.add_option("--tokens", a->tokens,
                                    "Points n x d .npy, the input of block A (torch encoders)");
      ids->excludes(text)->excludes(tokens);
      text->excludes(tokens);
      app.add_option("--layers", a->layers, "Blocks A:B to run (a Python slice; default all)");
      app.add_option("--dtype", a->dtype, "Precision of the computation and the output: f64|f32")
          ->capture_default_str();
      app.add_option("--out", a->out, "Output directory (hidden_states.npy, summary.json)")
          ->required();
      app.callback([a] {
        const DType dtype = parse_dtype(a->dtype, "--dtype");
        if (a->input_ids.empty() && a->text.empty() && a->tokens.empty()) {
          throw invalid_argument("--input-ids: give one of --input-ids, --text or --tokens");
        }
        const ForwardOptions layers = parse_layers(a->layers);
        OutputDirectory out(a->out, "forward", "--out");  // before any work
        if (dtype == DType::f32) {
          run_forward<float>(*a, layers, out);
        } else {
          run_forward<double>(*a, layers, out);
        }
      });
    });

}  // namespace
}  // namespace measattn::cli
