// measattn entropy — attention entropy of every head of a model on a token
// measure, the effective number of attended tokens, and the temperature curve.
//
//   measattn entropy --model M.safetensors --tokens X.npy [--weights w.npy]
//                    [--causal] [--betas b1,b2,...] [--json] [--plot FILE.png]
//
// Per head and query i: H_i = -sum_j K_ij log K_ij (natural log) of the
// self-attention kernel row, exp(H_i) the effective number of tokens, and the
// expected logit E_{K(x_i,.)}[G(x_i,.)]. The temperature curve rescales the
// logits by beta (default grid: -100..-0.01, 0, 0.01..100, log-spaced) and
// reports the mu-weighted mean entropy and expected logit per beta. Computed
// streamed (never the n x n kernel). --plot draws entropy against expected
// logit per head (beta = 1 marked) with gnuplot, written atomically, with the
// CSV of the curves next to it (FILE with extension .csv).
#include <cmath>
#include <cstdio>
#include <filesystem>
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
#include "measattn/maxent.hpp"
#include "measattn/measure.hpp"
#include "output.hpp"
#include "plot.hpp"

namespace measattn::cli {
namespace {

struct EntropyArgs {
  std::string model, tokens, weights, plot;
  bool json = false;
  /// --causal and --betas, bound through its field table (maxent.hpp); --betas
  /// keeps its comma list and messages (parse_betas; empty text = the default grid).
  EntropyOptions options;
  OptionBinder binder;
};

std::vector<double> to_vector(const VectorD& v) {
  return std::vector<double>(v.data(), v.data() + v.size());
}

std::vector<double> parse_betas(const std::string& text) {
  std::vector<double> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    try {
      size_t used = 0;
      const double v = std::stod(item, &used);
      if (used != item.size() || !std::isfinite(v)) throw std::invalid_argument(item);
      out.push_back(v);
    } catch (const std::exception&) {
      throw invalid_argument("--betas: '" + item + "' is not a finite number");
    }
  }
  if (out.empty()) throw invalid_argument("--betas: empty list");
  return out;
}

std::string fmt(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

void run(const EntropyArgs& a) {
  namespace fs = std::filesystem;
  a.binder.apply();  // --betas
  const EntropyOptions& options = a.options;
  options.validate();  // its fields map to flags in main() (flags.hpp)
  // Output paths (the PNG and the CSV beside it) are checked before any work.
  if (!a.plot.empty()) {
    check_output_file(a.plot, "--plot");
    check_output_file(fs::path(a.plot).replace_extension(".csv").string(), "--plot");
  }
  const Model<double> model = load_model<double>(a.model);
  const auto mu = read_token_measure<double>(a.tokens, a.weights);
  if (mu->dim() != model.key_dim() || model.query_dim() != model.key_dim()) {
    throw invalid_argument("--tokens: " + a.tokens + ": tokens have dimension " +
                           std::to_string(mu->dim()) + ", the model " + a.model +
                           " needs query and key dimension " + std::to_string(model.key_dim()) +
                           " (self-attention)");
  }
  // Library errors name their fields; main() maps them to flags (flags.hpp).
  const EntropyResult<double> r = attention_entropy(model, *mu, options);
  Index support = 0;
  for (Index i = 0; i < mu->size(); ++i) support += mu->weight(i) > 0;

  if (!a.plot.empty()) {
    Table table;
    table.columns = {"head", "beta", "mean_entropy", "mean_expected_logit"};
    std::ostringstream script;
    std::ostringstream blocks;
    for (size_t h = 0; h < r.heads.size(); ++h) {
      Table t;
      for (size_t b = 0; b < r.betas.size(); ++b) {
        const std::vector<double> row{static_cast<double>(h), r.betas[b],
                                      r.heads[h].curve_entropy[static_cast<Index>(b)],
                                      r.heads[h].curve_expected_score[static_cast<Index>(b)]};
        table.rows.push_back(row);
        t.rows.push_back({row[3], row[2]});
      }
      blocks << t.gnuplot_block("curve" + std::to_string(h));
      Table one;
      double e1 = 0;
      for (Index i = 0; i < mu->size(); ++i) e1 += mu->weight(i) * r.heads[h].expected_score[i];
      one.rows.push_back({e1, r.heads[h].mean_entropy});
      blocks << one.gnuplot_block("model" + std::to_string(h));
    }
    script << blocks.str();
    script << "set title " << gnuplot_quote("Attention temperature curves: " + a.model) << "\n"
           << "set xlabel 'mean expected logit E_{beta}[G] under the kernel of the logits beta G'\n"
           << "set ylabel 'mean attention entropy (nats)'\n"
           << "set key outside right\nset grid\n"
           << "set arrow from graph 0, first " << std::log(static_cast<double>(support))
           << " to graph 1, first " << std::log(static_cast<double>(support))
           << " nohead dashtype 2 lc rgb 'gray'\n"
           << "plot ";
    for (size_t h = 0; h < r.heads.size(); ++h) {
      const std::string hs = std::to_string(h);
      script << (h ? ", " : "") << "$curve" << hs << " using 1:2 with linespoints lc " << h + 1
             << " pt 7 ps 0.5 title 'head " << hs << "', $model" << hs
             << " using 1:2 with points lc " << h + 1 << " pt 9 ps 2 "
             << (h ? "notitle" : "title 'beta = 1 (the model)'");
    }
    script << "\n";
    const fs::path csv = fs::path(a.plot).replace_extension(".csv");
    render_png(a.plot, script.str(), 1000, 650);
    write_csv(csv.string(), table);
  }

  if (a.json) {
    nlohmann::json heads = nlohmann::json::array();
    for (size_t h = 0; h < r.heads.size(); ++h) {
      const auto& he = r.heads[h];
      heads.push_back({{"head", h},
                       {"mean_entropy", he.mean_entropy},
                       {"min_entropy", he.min_entropy},
                       {"max_entropy", he.max_entropy},
                       {"mean_effective_tokens", he.mean_effective_tokens},
                       {"entropy", to_vector(he.entropy)},
                       {"effective_tokens", to_vector(he.effective_tokens)},
                       {"expected_logit", to_vector(he.expected_score)},
                       {"temperature_curve",
                        {{"beta", r.betas},
                         {"mean_entropy", to_vector(he.curve_entropy)},
                         {"mean_expected_logit", to_vector(he.curve_expected_score)}}}});
    }
    nlohmann::json out = {
        {"model", a.model},
        {"tokens", a.tokens},
        {"n", mu->size()},
        {"support", support},
        {"max_entropy_possible", std::log(static_cast<double>(support))},
        {"causal", options.causal},
        {"log_base", "e"},
        {"algorithm", "streamed online log-sum-exp (no n x n kernel)"},
        {"heads", heads},
        {"plot", a.plot.empty() ? nlohmann::json(nullptr) : nlohmann::json(a.plot)}};
    std::cout << out.dump(2) << "\n";
    return;
  }
  std::cout << "tokens " << mu->size() << " (support " << support
            << ", log n = " << fmt(std::log(static_cast<double>(support))) << " nats)\n";
  std::cout << "head  mean_H      min_H       max_H       mean_eff_tokens\n";
  for (size_t h = 0; h < r.heads.size(); ++h) {
    const auto& he = r.heads[h];
    std::printf("%-5zu %-11s %-11s %-11s %s\n", h, fmt(he.mean_entropy).c_str(),
                fmt(he.min_entropy).c_str(), fmt(he.max_entropy).c_str(),
                fmt(he.mean_effective_tokens).c_str());
  }
  std::fflush(stdout);
  std::cout << "temperature curve (beta: mean entropy / mean expected logit, per head)\n";
  for (size_t b = 0; b < r.betas.size(); ++b) {
    std::cout << "  " << fmt(r.betas[b]) << ":";
    for (const auto& he : r.heads) {
      std::cout << "  " << fmt(he.curve_entropy[static_cast<Index>(b)]) << " / "
                << fmt(he.curve_expected_score[static_cast<Index>(b)]);
    }
    std::cout << "\n";
  }
  if (!a.plot.empty()) std::cout << "plot " << a.plot << "\n";
}

const bool registered = register_command(
    "entropy",
    "Attention entropy per head and query, effective tokens, temperature curve (--plot PNG)",
    [](CLI::App& app) {
      auto a = std::make_shared<EntropyArgs>();
      std::vector<FieldFlag> fields = token_fields(&a->tokens, &a->weights);
      fields.insert(fields.end(), {{"queries", "--tokens", &a->tokens}});
      for (auto& row : model_fields("--model", &a->model)) fields.push_back(row);
      register_fields(app, std::move(fields));
      app.add_option("--model", a->model, "Model: safetensors (nn.MultiheadAttention weights)")
          ->required();
      app.add_option("--tokens", a->tokens, "Tokens: n x d .npy, one per row")->required();
      app.add_option("--weights", a->weights, "Token weights: length-n .npy (default uniform)");
      EntropyOptions* options = &a->options;
      a->binder.bind(app, a->options, {"betas", "causal"}, {},
                     {{"betas", [options](const std::string& text) {
                         if (!text.empty()) options->betas = parse_betas(text);
                       }}});
      app.add_flag("--json", a->json, "Print JSON (per-query values included)");
      app.add_option("--plot", a->plot, "Write a PNG of the temperature curves (and FILE.csv)");
      app.callback([a] { run(*a); });
    });

}  // namespace
}  // namespace measattn::cli
