// Real-model section 2: the token measure across depth (docs/theory.md#flow,
// #blocks). W1 between consecutive layers' empirical measures, the mean
// pairwise cosine of the tokens per layer (the clustering of Geshkovski et al.
// observed in the trained stack), and beside it the weight-shared flow of every
// block: block l applied L times from the embedding output.
#include <cmath>

#include "analyze_model.hpp"
#include "measattn/wasserstein.hpp"
#include "plot.hpp"

namespace measattn::cli {

void model_section_depth(ModelContext& ctx) {
  const auto& blocks = ctx.in.model.blocks;
  auto& r = ctx.report;
  const Index layers = static_cast<Index>(blocks.size());
  r.heading(2, "2. The token measure across depth");
  r.paragraph(
      "Entry l is the empirical measure of the n tokens after l blocks (l = 0: the embedding "
      "output; block outputs without a final norm). W1 between consecutive entries is "
      "computed by the exact solver (**exact**); the mean pairwise cosine "
      "`sum_{i != j} <x_i, x_j> / (||x_i|| ||x_j|| n (n - 1))` (measure.hpp, "
      "`mean_pairwise_cosine`; **exact**) tends to 1 when the tokens cluster in one "
      "direction, as Geshkovski, Letrouit, Polyanskiy and Rigollet prove for the "
      "weight-shared, normalized dynamics. Beside the trained stack, for **every** layer l, "
      "the weight-shared flow: block l applied L = " +
      std::to_string(layers) +
      " times from the embedding output (a network with the same weights at every depth, "
      "the setting of that theory), with its cosine at each depth (**exact**).");

  std::vector<double> cosine, w1, norm;
  for (const auto& h : ctx.hidden) {
    const auto mu = Measure<double>::empirical(h);
    cosine.push_back(mean_pairwise_cosine(mu));
    norm.push_back(h.rowwise().norm().mean());
  }
  for (size_t l = 0; l + 1 < ctx.hidden.size(); ++l) {
    w1.push_back(wasserstein_exact_value(Measure<double>::empirical(ctx.hidden[l]),
                                         Measure<double>::empirical(ctx.hidden[l + 1]), 1));
  }
  // shared[b][k]: cosine after k applications of block b.
  std::vector<std::vector<double>> shared(static_cast<size_t>(layers));
  std::vector<double> shared_w1_end(static_cast<size_t>(layers));
  for (Index b = 0; b < layers; ++b) {
    Matrix<double> x = ctx.hidden.front();
    auto& c = shared[static_cast<size_t>(b)];
    c.push_back(cosine.front());
    for (Index k = 0; k < layers; ++k) {
      x = block_forward(blocks[static_cast<size_t>(b)], x);
      c.push_back(mean_pairwise_cosine(Measure<double>::empirical(x)));
    }
    shared_w1_end[static_cast<size_t>(b)] = wasserstein_exact_value(
        Measure<double>::empirical(x), Measure<double>::empirical(ctx.hidden.back()), 1);
  }

  Table t;
  t.columns = {"depth", "cosine_trained", "w1_to_previous", "mean_norm"};
  for (Index b = 0; b < layers; ++b) t.columns.push_back("cosine_shared_block" + std::to_string(b));
  std::vector<std::vector<std::string>> rows;
  nlohmann::json jd = nlohmann::json::array();
  for (size_t k = 0; k < ctx.hidden.size(); ++k) {
    std::vector<double> row{static_cast<double>(k), cosine[k], k ? w1[k - 1] : 0.0, norm[k]};
    std::vector<std::string> cells{std::to_string(k), fmt(cosine[k], 4),
                                   k ? fmt(w1[k - 1], 4) : std::string("-"), fmt(norm[k], 4)};
    nlohmann::json sh = nlohmann::json::array();
    for (Index b = 0; b < layers; ++b) {
      row.push_back(shared[static_cast<size_t>(b)][k]);
      cells.push_back(fmt(shared[static_cast<size_t>(b)][k], 4));
      sh.push_back(json_number(shared[static_cast<size_t>(b)][k]));
    }
    t.rows.push_back(row);
    rows.push_back(cells);
    jd.push_back({{"depth", k},
                  {"mean_cosine", json_number(cosine[k])},
                  {"w1_to_previous", k ? json_number(w1[k - 1]) : nlohmann::json(nullptr)},
                  {"mean_norm", json_number(norm[k])},
                  {"shared_mean_cosine", sh}});
  }
  std::vector<std::string> columns{"depth l", "cosine (trained)", "W1(l-1, l)", "mean token norm"};
  for (Index b = 0; b < layers; ++b) columns.push_back("shared block " + std::to_string(b));
  r.table(columns, rows,
          "The trained stack (cosine, W1 to the previous entry, mean token norm) and the "
          "weight-shared flows (cosine after l applications of one block). All exact.");
  std::string w1_end;
  for (Index b = 0; b < layers; ++b)
    w1_end += std::string(b ? ", " : "") + "block " + std::to_string(b) + ": " +
              fmt(shared_w1_end[static_cast<size_t>(b)], 4);
  r.paragraph(
      "W1 between the weight-shared flow of each block after L applications and the "
      "trained stack's output (exact): " +
      w1_end + ".");
  write_csv(ctx.dir + "/model_depth.csv", t);

  std::string plot = t.gnuplot_block("D") +
                     "set xlabel 'depth l (blocks applied)'\nset ylabel 'mean pairwise cosine'\n"
                     "set grid\nset key outside right\nset title 'Clustering across depth: "
                     "trained stack and weight-shared flows (exact)'\n"
                     "plot $D using 1:2 with linespoints lw 3 pt 7 lc 'black' title 'trained'";
  for (Index b = 0; b < layers; ++b)
    plot += ", $D using 1:" + std::to_string(5 + b) + " with linespoints dt 2 title 'block " +
            std::to_string(b) + " shared'";
  add_model_plot(ctx, "model_cosine.png", plot + "\n",
                 "Mean pairwise cosine of the tokens against depth: the trained stack (black) "
                 "and every block run as a weight-shared network; exact",
                 "model_depth.csv", 1000, 600);
  add_model_plot(ctx, "model_w1_depth.png",
                 t.gnuplot_block("D") +
                     "set xlabel 'block l'\nset ylabel 'W1(mu_{l-1}, mu_l)'\nset grid\n"
                     "set key off\nset title 'How far each block moves the token measure "
                     "(exact W1)'\nplot $D every ::1 using 1:3 with linespoints lw 2 pt 7\n",
                 "W1 between the token measures entering and leaving each block; exact",
                 "model_depth.csv");

  nlohmann::json w1e = nlohmann::json::array();
  for (double v : shared_w1_end) w1e.push_back(json_number(v));
  ctx.json["depth"] = {{"kind", "exact"},
                       {"shared_flow", "every layer, L applications from the embedding output"},
                       {"depths", jd},
                       {"shared_w1_to_trained_output", w1e}};
  std::string line = "cosine across depth (trained):";
  for (double c : cosine) line += " " + fmt(c, 3);
  ctx.summary += line + "\n";
}

}  // namespace measattn::cli
