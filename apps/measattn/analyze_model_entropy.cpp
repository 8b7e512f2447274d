// Real-model section 1: attention entropy and the effective number of attended
// tokens, per head and layer, at the real input (docs/theory.md#maxent).
#include <cmath>

#include "analyze_model.hpp"
#include "measattn/maxent.hpp"
#include "plot.hpp"

namespace measattn::cli {

void model_section_entropy(ModelContext& ctx) {
  const auto& blocks = ctx.in.model.blocks;
  auto& r = ctx.report;
  const Index layers = static_cast<Index>(blocks.size());
  const Index heads = ctx.in.model.num_heads();
  const double n = static_cast<double>(ctx.in.ids.size());
  r.heading(2, "1. Attention entropy per head and layer");
  r.paragraph(
      "For each query token the attention row of a head is a probability measure on the "
      "tokens; its entropy H (natural log) says how spread it is and exp(H) is the effective "
      "number of attended tokens, between 1 (one token) and n = " +
      fmt(n, 6) + " (uniform" +
      std::string(blocks.front().causal ? "; query i of a causal "
                                          "model sees i + 1 tokens"
                                        : "") +
      "). The table gives the mean over the query tokens of H and of exp(H). **exact** (a "
      "finite formula, streamed).");
  Table t;
  t.columns = {"layer",       "head",        "mean_entropy",
               "min_entropy", "max_entropy", "mean_effective_tokens"};
  nlohmann::json js = nlohmann::json::array();
  std::vector<std::vector<std::string>> rows;
  std::vector<std::vector<double>> eff(static_cast<size_t>(layers));
  std::string line = "entropy (mean exp(H) per layer, over heads):";
  for (Index l = 0; l < layers; ++l) {
    const auto& block = blocks[static_cast<size_t>(l)];
    EntropyOptions opt;
    opt.betas = {1.0};
    opt.causal = block.causal;
    const auto mu = Measure<double>::empirical(ctx.attention_in[static_cast<size_t>(l)]);
    const auto res = attention_entropy(block.attention, mu, opt);
    std::vector<std::string> row{std::to_string(l)};
    nlohmann::json jl = nlohmann::json::array();
    double mean_eff = 0;
    for (Index h = 0; h < heads; ++h) {
      const auto& he = res.heads[static_cast<size_t>(h)];
      t.rows.push_back({static_cast<double>(l), static_cast<double>(h), he.mean_entropy,
                        he.min_entropy, he.max_entropy, he.mean_effective_tokens});
      row.push_back(fmt(he.mean_entropy, 3) + " (" + fmt(he.mean_effective_tokens, 3) + ")");
      eff[static_cast<size_t>(l)].push_back(he.mean_effective_tokens);
      mean_eff += he.mean_effective_tokens / static_cast<double>(heads);
      jl.push_back({{"head", h},
                    {"mean_entropy", json_number(he.mean_entropy)},
                    {"min_entropy", json_number(he.min_entropy)},
                    {"max_entropy", json_number(he.max_entropy)},
                    {"mean_effective_tokens", json_number(he.mean_effective_tokens)}});
    }
    rows.push_back(row);
    js.push_back({{"layer", l}, {"heads", jl}});
    line += " " + fmt(mean_eff, 3);
  }
  std::vector<std::string> columns{"layer"};
  for (Index h = 0; h < heads; ++h) columns.push_back("head " + std::to_string(h));
  r.table(columns, rows,
          "Mean attention entropy H, and in parentheses the mean effective number of attended "
          "tokens exp(H), per layer (rows) and head (columns). exact.");
  write_csv(ctx.dir + "/model_entropy.csv", t);

  // Heat map of the effective number of tokens: layers x heads.
  std::string block = "$E << EOD\n";
  for (Index l = 0; l < layers; ++l) {
    for (Index h = 0; h < heads; ++h)
      block += std::to_string(h) + " " + std::to_string(l) + " " +
               fmt(eff[static_cast<size_t>(l)][static_cast<size_t>(h)], 17) + "\n";
    block += "\n";
  }
  block += "EOD\n";
  add_model_plot(ctx, "model_entropy.png",
                 block +
                     "set xlabel 'head'\nset ylabel 'layer'\nset cblabel 'mean exp(H) "
                     "(effective attended tokens)'\nset yrange [-0.5:" +
                     fmt(static_cast<double>(layers) - 0.5, 6) +
                     "] reverse\nset xrange [-0.5:" + fmt(static_cast<double>(heads) - 0.5, 6) +
                     "]\nset palette rgb 33,13,10\nset title 'Effective number of attended "
                     "tokens per head and layer (exact)'\nplot $E using 1:2:3 with image notitle\n",
                 "Mean effective number of attended tokens exp(H) per head (x) and layer (y); "
                 "exact",
                 "model_entropy.csv");
  ctx.json["entropy"] = {{"kind", "exact"}, {"tokens", ctx.in.ids.size()}, {"layers", js}};
  ctx.summary += line + " (n = " + fmt(n, 6) + ")\n";
}

}  // namespace measattn::cli
