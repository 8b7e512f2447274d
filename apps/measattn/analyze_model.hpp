// The sections of `measattn analyze --model CHECKPOINT (--text FILE | --input-ids IDS.npy)`:
// the theory measured on a pretrained Transformer at its real input, layer by
// layer and head by head (docs/analyze.md, "The real-model report").
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "measattn/transformer.hpp"
#include "report.hpp"

namespace measattn::cli {

struct ModelAnalysisInput {
  Transformer<double> model;
  std::string model_path;  // the checkpoint (its tokenizer tokenizes the perturbed texts)
  std::string source;      // what the ids came from, for the report
  std::string text;        // the text; empty with --input-ids (no text to perturb)
  std::vector<std::int64_t> ids;
  unsigned long long seed = 2020;
};

/// A perturbed copy of the text, tokenized and run through the stack.
struct Perturbation {
  std::string kind;  // "typo", "drop", "swap"
  int edits = 0;     // words edited
  std::string text;
  std::vector<std::int64_t> ids;
  std::vector<Matrix<double>> hidden;  // entry 0 the embedding output, entry l block l's output
};

struct ModelContext {
  const ModelAnalysisInput& in;
  std::string dir;
  Report& report;
  std::string& summary;
  nlohmann::json& json;  // report.json: one key per section
  // The stack at the real input: hidden[0] = embedding output, hidden[l + 1] =
  // block l's output (no final norm); attention_in[l] = the points block l's
  // attention acts on (attention_input of hidden[l]).
  std::vector<Matrix<double>> hidden;
  std::vector<Matrix<double>> attention_in;
  std::vector<Perturbation> perturbations;
  // Filled by the token-Lipschitz section, read by the W1-bounds section.
  std::vector<double> token_lipschitz;  // per layer, whole attention map
  // Filled by the mis-specification section: per layer, the largest W1 ratio of
  // the attention map between the real and a perturbed attention input.
  std::vector<double> local_w1_ratio;
};

/// Writes report.md, report.html, report.json, the PNGs and CSVs into `dir`;
/// returns a short text summary for the terminal.
std::string write_model_analysis(const ModelAnalysisInput& in, const std::string& dir);

/// One attention head of `model` as a one-head model (its rows of W_Q, W_K,
/// W_V, its biases, its columns of W_O; same tau; no output bias).
Model<double> single_head(const Model<double>& model, Index head);

/// Renders a plot and adds it to the report; when gnuplot fails the report
/// keeps a note with the reason instead.
bool add_model_plot(ModelContext& ctx, const std::string& png, const std::string& script,
                    const std::string& caption, const std::string& csv, int width = 900,
                    int height = 600);

/// A JSON number, or null when it is not finite (report.json never holds inf or NaN).
nlohmann::json json_number(double v);

/// Least-squares fit of log(y) = log(c) + p log(x) over the points with y > 0:
/// {p, c}; NaN when fewer than two points remain.
std::pair<double, double> power_fit(const std::vector<double>& x, const std::vector<double>& y);

void model_section_entropy(ModelContext& ctx);
void model_section_depth(ModelContext& ctx);
void model_section_token_lipschitz(ModelContext& ctx);
void model_section_misspec(ModelContext& ctx);
void model_section_w1_bounds(ModelContext& ctx);

}  // namespace measattn::cli
