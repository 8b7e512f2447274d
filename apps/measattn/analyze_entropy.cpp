// Section 2 of the report: attention as maximum entropy (docs/theory.md#maxent).
// Per head: the entropy of every query's kernel row, the effective number of
// attended tokens, the temperature curve, and the check that each row is the
// maximum-entropy measure at inverse temperature beta = 1.
#include <algorithm>
#include <cmath>
#include <limits>

#include "analyze.hpp"
#include "measattn/maxent.hpp"

namespace measattn::cli {

bool render_or_note(SectionContext& ctx, const std::string& png, const std::string& script,
                    int width, int height) {
  try {
    render_png(ctx.dir + "/" + png, script, width, height);
    return true;
  } catch (const std::exception& e) {
    ctx.report.paragraph("(The plot " + png + " could not be drawn: " + e.what() +
                         "; the data are in the CSV files.)");
    return false;
  }
}

bool add_plot(SectionContext& ctx, const std::string& png, const std::string& script,
              const std::string& caption, const std::string& csv, int width, int height) {
  if (!render_or_note(ctx, png, script, width, height)) return false;
  ctx.report.image(png, caption, csv);
  return true;
}

void section_entropy(SectionContext& ctx) {
  const auto& model = ctx.in.model;
  const auto& mu = *ctx.in.tokens;
  auto& r = ctx.report;
  const auto result = attention_entropy(model, mu);
  // H(mu) = -sum_j w_j log w_j with 0 log 0 = 0 (zero-weight atoms are not attended).
  const auto w = mu.weights().array();
  const double mu_entropy = -(w > 0).select(w * w.max(1e-300).log(), 0.0).sum();

  r.heading(2, "2. Attention as maximum entropy");
  r.paragraph(
      "For a query x with scores `g_j = G(x, x_j)`, the kernel row is the unique maximizer of "
      "`E_nu[g] - KL(nu || mu)` (Gibbs variational principle); equivalently, among the "
      "measures with the same expected score it is the one closest to mu in KL, the "
      "maximum-entropy measure at inverse temperature beta = 1 (docs/theory.md, maxent). Its "
      "entropy H (natural log) measures how spread the attention is: exp(H) is the effective "
      "number of attended tokens, between 1 (hard attention) and exp(H(mu)) = " +
      fmt(std::exp(mu_entropy), 4) + " (uniform over the tokens).");

  std::vector<std::vector<std::string>> rows;
  double worst_beta = 0;
  Table curve;
  curve.columns = {"beta"};
  for (Index h = 0; h < model.num_heads; ++h) {
    const auto& head = result.heads[static_cast<size_t>(h)];
    // Recover beta = 1 from each query's expected score by the constrained
    // max-entropy solve: the kernel row is nu_beta with beta = 1.
    const Matrix<double> logits = attention_logits(model, mu, mu.atoms(), h);
    for (Index i = 0; i < mu.size(); ++i) {
      const Vector<double> g = logits.row(i).transpose();
      // The range that matters is over the support of mu (zero-weight tokens are
      // not attended): constant scores there fit every beta; an expected score at
      // an end of the range (saturated, hard attention) identifies no beta.
      double lo = std::numeric_limits<double>::infinity(), hi = -lo;
      for (Index j = 0; j < mu.size(); ++j) {
        if (!(mu.weight(j) > 0)) continue;
        lo = std::min(lo, g[j]);
        hi = std::max(hi, g[j]);
      }
      const double c = head.expected_score[i];
      if (!(hi - lo >= 1e-12 * std::max(1.0, std::max(std::abs(lo), std::abs(hi))))) continue;
      if (!(c > lo && c < hi)) continue;
      const auto solved = maxent<double>(g, c, mu.weights());
      worst_beta = std::max(worst_beta, std::abs(solved.beta - 1));
    }
    rows.push_back({std::to_string(h), fmt(head.mean_entropy, 4), fmt(head.min_entropy, 4),
                    fmt(head.max_entropy, 4), fmt(head.mean_effective_tokens, 4)});
    curve.columns.push_back("entropy_head" + std::to_string(h));
    curve.columns.push_back("expected_score_head" + std::to_string(h));
  }
  for (size_t b = 0; b < result.betas.size(); ++b) {
    std::vector<double> row{result.betas[b]};
    for (const auto& head : result.heads) {
      row.push_back(head.curve_entropy[static_cast<Index>(b)]);
      row.push_back(head.curve_expected_score[static_cast<Index>(b)]);
    }
    curve.rows.push_back(row);
  }
  r.table({"head", "mean entropy", "min", "max", "mean effective tokens"}, rows,
          "Attention entropy per head (weighted by the query weights).");
  r.paragraph(
      "Solving the constrained maximum-entropy problem `E_{nu_beta}[g] = c` for every "
      "query, with c the expected score under the attention row, returns beta = 1 up "
      "to " +
      fmt(worst_beta, 3) + " (largest |beta - 1| over heads and queries).");

  // Per-query entropies.
  Table per_query;
  per_query.columns = {"query"};
  for (Index h = 0; h < model.num_heads; ++h)
    per_query.columns.push_back("entropy_head" + std::to_string(h));
  for (Index i = 0; i < mu.size(); ++i) {
    std::vector<double> row{static_cast<double>(i)};
    for (const auto& head : result.heads) row.push_back(head.entropy[i]);
    per_query.rows.push_back(row);
  }
  write_csv(ctx.dir + "/entropy_per_query.csv", per_query);
  write_csv(ctx.dir + "/temperature_curve.csv", curve);

  std::string plot_q = per_query.gnuplot_block("Q") +
                       "set xlabel 'query i'\nset ylabel 'entropy H(K_{/Symbol m}(x_i, .))'\n"
                       "set grid\nset key bottom right\nset title 'Attention entropy per query'\n"
                       "plot ";
  std::string plot_c = curve.gnuplot_block("C") +
                       "set xlabel 'expected score E[G]'\nset ylabel 'entropy'\nset grid\n"
                       "set key bottom left\n"
                       "set title 'Temperature curve: logits scaled by beta (points: beta = 1)'\n"
                       "plot ";
  const auto beta_one = std::find(result.betas.begin(), result.betas.end(), 1.0);
  const std::string one = fmt(static_cast<double>(beta_one - result.betas.begin()), 3);
  for (Index h = 0; h < model.num_heads; ++h) {
    const std::string hs = std::to_string(h);
    const std::string ce = std::to_string(2 + 2 * h), cs = std::to_string(3 + 2 * h);
    plot_q += std::string(h ? ", " : "") + "$Q using 1:" + std::to_string(2 + h) +
              " with linespoints pt 7 ps 0.5 title 'head " + hs + "'";
    plot_c += std::string(h ? ", " : "") + "$C using " + cs + ":" + ce +
              " with lines lw 2 title 'head " + hs + "', $C every ::" + one + "::" + one +
              " using " + cs + ":" + ce + " with points pt 7 ps 1.5 notitle";
  }
  add_plot(ctx, "entropy_per_query.png", plot_q + "\n",
           "Entropy of each query's attention row, per head", "entropy_per_query.csv");
  add_plot(ctx, "temperature_curve.png", plot_c + "\n",
           "Entropy against expected score as the inverse temperature beta varies (beta < 0: "
           "attention toward the lowest scores); the points mark standard attention, beta = 1",
           "temperature_curve.csv");
  std::string line = "entropy: mean per head";
  for (const auto& head : result.heads) line += " " + fmt(head.mean_entropy, 4);
  ctx.summary +=
      line + " (max possible " + fmt(std::log(static_cast<double>(mu.size())), 4) + ")\n";
}

}  // namespace measattn::cli
