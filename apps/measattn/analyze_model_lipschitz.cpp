// Real-model section 3: the token-level Lipschitz constant at the real input,
// ||J(X)||_2 of X -> (Gamma_{mu_X}(x_i))_i (docs/theory.md#lipschitz), per layer
// and per head, and its growth with the sequence length n on adversarial
// sequences and on prefixes of the real text, against C sqrt(n) (Castin, Ablin
// and Peyre). Every value is restarted Lanczos (token_jacobian_norm) on J^T J
// through exact JVPs/VJPs (no dense Jacobian): s = ||J v|| for the top Ritz
// vector v, a certified lower bound on ||J||_2, with the residual bracket
// sqrt(s^2 + r) above it.
#include <algorithm>
#include <cmath>

#include "analyze_model.hpp"
#include "measattn/lipschitz.hpp"
#include "plot.hpp"

namespace measattn::cli {

namespace {

// Lanczos settings of this report (a budget: the value at any stop is a
// certified lower bound, and the table gives the bracket and whether the
// relative residual reached the tolerance).
TokenJacobianOptions layer_options(unsigned long long seed) {
  TokenJacobianOptions o;
  o.iterations = 4;
  o.tolerance = 1e-8;
  o.seed = seed;
  return o;
}
TokenJacobianOptions head_options(unsigned long long seed) {
  TokenJacobianOptions o;
  o.iterations = 2;
  o.tolerance = 1e-6;
  o.seed = seed;
  return o;
}

double max_norm(const Matrix<double>& x) { return x.rowwise().norm().maxCoeff(); }

}  // namespace

void model_section_token_lipschitz(ModelContext& ctx) {
  const auto& blocks = ctx.in.model.blocks;
  auto& r = ctx.report;
  const Index layers = static_cast<Index>(blocks.size());
  const Index heads = ctx.in.model.num_heads();
  const Index n = static_cast<Index>(ctx.in.ids.size());
  const Index d = ctx.in.model.dim();
  r.heading(2, "3. Token-level Lipschitz constant at the real input");
  r.paragraph(
      "For the tokens X (n x d = " + std::to_string(n) + " x " + std::to_string(d) +
      ") entering block l's attention, the spectral norm of the Jacobian J(X) of the "
      "attention map `X -> (Gamma_{mu_X}(x_i))_i` on R^{n x d} (without the residual and the "
      "norms): the local Lipschitz constant of the attention at the real input. It is computed "
      "by restarted Lanczos (Spectra) on J^T J with exact Jacobian-vector and vector-Jacobian "
      "products (`token_jacobian_norm`; a dense Jacobian would have (n d)^2 = " +
      fmt(static_cast<double>(n * d) * static_cast<double>(n * d), 3) +
      " entries). The value s = ||J v|| for the top Ritz vector v is a **certified lower "
      "bound** on ||J(X)||_2; with the residual r = ||J^T J v - s^2 v||, J^T J has an "
      "eigenvalue in [s^2 - r, s^2 + r], so `upper` = sqrt(s^2 + r) bounds ||J(X)||_2 once that "
      "eigenvalue is the top one (what Lanczos from a random start finds with probability one: "
      "an **estimate**, not a proof). Budget: 4 restarts and relative residual 1e-8 for a whole "
      "layer, 2 and 1e-6 per head." +
      std::string(blocks.front().causal
                      ? " The model is causal, but the library's token Jacobian has no causal "
                        "mask: these values are those of the unmasked attention map."
                      : ""));

  Table t;
  t.columns = {"layer", "head", "jacobian_norm", "upper", "iterations", "converged"};
  std::vector<std::vector<std::string>> rows;
  nlohmann::json jl = nlohmann::json::array();
  ctx.token_lipschitz.assign(static_cast<size_t>(layers), 0.0);
  std::string line = "token Lipschitz at the real input (per layer):";
  for (Index l = 0; l < layers; ++l) {
    const auto& x = ctx.attention_in[static_cast<size_t>(l)];
    const auto& att = blocks[static_cast<size_t>(l)].attention;
    const auto whole = token_jacobian_norm(att, x, layer_options(ctx.in.seed));
    ctx.token_lipschitz[static_cast<size_t>(l)] = whole.value;
    t.rows.push_back({static_cast<double>(l), -1.0, whole.value, whole.upper,
                      static_cast<double>(whole.iterations),
                      whole.status == Status::converged ? 1.0 : 0.0});
    std::vector<std::string> row{std::to_string(l), fmt(max_norm(x), 4), fmt(whole.value, 4)};
    nlohmann::json jh = nlohmann::json::array();
    double best = 0;
    Index best_head = 0;
    for (Index h = 0; h < heads; ++h) {
      const auto res = token_jacobian_norm(single_head(att, h), x, head_options(ctx.in.seed));
      t.rows.push_back({static_cast<double>(l), static_cast<double>(h), res.value, res.upper,
                        static_cast<double>(res.iterations),
                        res.status == Status::converged ? 1.0 : 0.0});
      jh.push_back({{"head", h},
                    {"value", json_number(res.value)},
                    {"upper", json_number(res.upper)},
                    {"iterations", res.iterations},
                    {"status", to_string(res.status)}});
      if (res.value > best) {
        best = res.value;
        best_head = h;
      }
    }
    row.push_back(fmt(best, 4) + " (head " + std::to_string(best_head) + ")");
    row.push_back(fmt(whole.upper, 4));
    row.push_back(std::to_string(whole.iterations) + ", " + to_string(whole.status));
    rows.push_back(row);
    jl.push_back({{"layer", l},
                  {"radius", json_number(max_norm(x))},
                  {"value", json_number(whole.value)},
                  {"upper", json_number(whole.upper)},
                  {"residual", json_number(whole.residual)},
                  {"iterations", whole.iterations},
                  {"status", to_string(whole.status)},
                  {"heads", jh}});
    line += " " + fmt(whole.value, 4);
  }
  r.table({"layer", "max token norm", "spectral norm of J(X), all heads", "largest head value",
           "residual bracket sqrt(s^2 + r)", "restarts, status"},
          rows,
          "Local token-level Lipschitz constant of each layer's attention at the real input "
          "(certified lower bounds; estimates of the norm). Per-head values are in "
          "model_token_lipschitz.csv (head -1: the whole layer).");
  write_csv(ctx.dir + "/model_token_lipschitz.csv", t);

  // Growth with n: layer 0, head 0 (the reference's choice), at the radius of
  // the real tokens entering layer 0.
  const auto& att0 = blocks.front().attention;
  const Model<double> head0 = single_head(att0, 0);
  const Matrix<double>& x0 = ctx.attention_in.front();
  const double radius = max_norm(x0);
  Table g;  // the values computed (the search runs for n <= 8, the prefixes up to n)
  g.columns = {"n", "sequence(0=castin,1=search,2=real_prefix)", "jacobian_norm"};
  nlohmann::json jg = nlohmann::json::array();
  std::vector<double> ns, adversarial, prefix_n, prefix;
  std::vector<std::vector<std::string>> grows;
  std::string refused;
  TokenJacobianOptions go = head_options(ctx.in.seed);
  go.iterations = 60;
  go.tolerance = 1e-6;
  std::vector<Index> lengths;
  for (Index m = 2; m < std::max<Index>(n, 128); m *= 2) lengths.push_back(m);
  lengths.push_back(std::max<Index>(n, 128));
  for (Index m : lengths) {
    double castin = std::nan(""), search = std::nan(""), real = std::nan("");
    try {
      castin = token_jacobian_norm(head0, castin_adversarial_tokens(head0, m, radius), go).value;
      if (m <= 8) {
        TokenSearchOptions so;
        so.tokens = m;
        so.restarts = 2;
        so.steps = 20;
        so.radius = radius;
        so.seed = ctx.in.seed;
        search = token_lipschitz_lower_bound(head0, so).value;
      }
    } catch (const std::exception& e) {
      refused = e.what();
    }
    if (m <= n) real = token_jacobian_norm(head0, x0.topRows(m), go).value;
    if (std::isfinite(castin)) {
      ns.push_back(static_cast<double>(m));
      adversarial.push_back(castin);
    }
    if (std::isfinite(real)) {
      prefix_n.push_back(static_cast<double>(m));
      prefix.push_back(real);
    }
    const double values[] = {castin, search, real};
    for (int kind = 0; kind < 3; ++kind)
      if (std::isfinite(values[kind]))
        g.rows.push_back({static_cast<double>(m), static_cast<double>(kind), values[kind]});
    jg.push_back({{"n", m},
                  {"castin_sequence", json_number(castin)},
                  {"search", json_number(search)},
                  {"real_prefix", json_number(real)}});
    grows.push_back({std::to_string(m), fmt(castin, 4), std::isnan(search) ? "-" : fmt(search, 4),
                     std::isnan(real) ? "-" : fmt(real, 4)});
  }
  const auto [p_adv, c_adv] = power_fit(ns, adversarial);
  const auto [p_real, c_real] = power_fit(prefix_n, prefix);
  // C of C sqrt(n): least squares in log with the exponent fixed at 1/2.
  double c_sqrt = std::nan("");
  if (!ns.empty()) {
    double s = 0;
    for (size_t i = 0; i < ns.size(); ++i) s += std::log(adversarial[i]) - 0.5 * std::log(ns[i]);
    c_sqrt = std::exp(s / static_cast<double>(ns.size()));
  }
  r.paragraph(
      "Growth with the sequence length, layer 0, head 0, in the ball of radius R = " +
      fmt(radius, 4) +
      " (the largest norm of the real tokens entering layer 0): ||J||_2 on Castin, Ablin and "
      "Peyre's adversarial sequence `castin_adversarial_tokens` (R (u, u/2, ..., u/2) with u "
      "the top eigenvector of the symmetrized Q^T K / tau), on the best configuration of a "
      "short gradient search (`token_lipschitz_lower_bound`, 2 restarts of 20 steps, n <= 8), "
      "and on the first n tokens of the real input. Each is a **certified lower bound** on "
      "the token-level constant on B_R^n; the fitted exponents and C (on the Castin "
      "sequence and on the real prefixes) are **estimates** (least squares in log-log)." +
      (refused.empty() ? std::string() : " (Some lengths were refused: " + refused + ".)"));
  r.table({"n", "Castin sequence", "search", "real prefix"}, grows,
          "||J(X)||_2 of layer 0, head 0 against n (certified lower bounds).");
  r.table({"quantity", "measured here", "reference (labelled)"},
          {{"C in C sqrt(n), Castin sequence", fmt(c_sqrt, 4),
            "Castin, Ablin, Peyre: C = 4.39 (BERT-base, layer 0, head 0, R = 15.5)"},
           {"fitted exponent p in n^p, Castin sequence", fmt(p_adv, 3), "sqrt(n): p = 0.5"},
           {"fitted exponent p in n^p, real text", fmt(p_real, 3),
            "Castin, Ablin, Peyre: p = 0.26 - 0.51 on real text (GPT-2)"}},
          "Growth of the token-level constant with n (estimates), beside the published "
          "figures for other models.");
  write_csv(ctx.dir + "/model_lipschitz_growth.csv", g);
  add_model_plot(
      ctx, "model_lipschitz_growth.png",
      g.gnuplot_block("G") + "set logscale xy\nset xlabel 'sequence length n'\n" +
          "set ylabel '||J(X)||_2 (layer 0, head 0)'\nset grid\nset key top left\n" +
          "set title 'Token-level Lipschitz constant against n at R = " + fmt(radius, 4) +
          " (certified lower bounds)'\n" +
          "plot $G using 1:($2 == 0 ? $3 : 1/0) with linespoints lw 2 pt 7 title 'Castin "
          "sequence', $G using 1:($2 == 1 ? $3 : 1/0) with points pt 5 ps 1.5 title 'search', "
          "$G using 1:($2 == 2 ? $3 : 1/0) with linespoints lw 2 pt 9 title 'real prefix', " +
          fmt(c_sqrt, 17) + " * sqrt(x) with lines dt 2 lc 'gray' title 'C sqrt(n), C = " +
          fmt(c_sqrt, 3) + " (fit)'\n",
      "Growth of the local constant of layer 0, head 0 with n: adversarial, searched "
      "and real sequences, with the fitted C sqrt(n)",
      "model_lipschitz_growth.csv");
  const auto layer_plot = [&] {
    std::string block = "$L << EOD\n";
    for (const auto& row : t.rows)
      if (row[1] < 0) block += fmt(row[0], 17) + " " + fmt(row[2], 17) + "\n";
    block += "EOD\n$H << EOD\n";
    for (const auto& row : t.rows)
      if (row[1] >= 0)
        block += fmt(row[0] + 0.6 * (row[1] / static_cast<double>(heads) - 0.5), 17) + " " +
                 fmt(row[2], 17) + "\n";
    return block + "EOD\n";
  };
  add_model_plot(ctx, "model_token_lipschitz.png",
                 layer_plot() +
                     "set xlabel 'layer (heads spread around it)'\nset ylabel '||J(X)||_2'\n"
                     "set logscale y\nset grid\nset key top left\nset title 'Local token-level "
                     "Lipschitz constant at the real input (certified lower bounds)'\n"
                     "plot $L using 1:2 with linespoints lw 2 pt 7 title 'whole layer', "
                     "$H using 1:2 with points pt 6 title 'single heads'\n",
                 "Token-level Lipschitz constant of each layer's attention (line) and of each "
                 "head (points) at the real input",
                 "model_token_lipschitz.csv");

  ctx.json["token_lipschitz"] = {
      {"kind",
       "certified lower bound (Lanczos Ritz value of ||J(X)||_2; upper: residual "
       "bracket, an estimate)"},
      {"layers", jl},
      {"growth",
       {{"layer", 0},
        {"head", 0},
        {"radius", json_number(radius)},
        {"kind", "certified lower bounds; fits are estimates"},
        {"rows", jg},
        {"c_sqrt_n", json_number(c_sqrt)},
        {"exponent_adversarial", json_number(p_adv)},
        {"exponent_real", json_number(p_real)},
        {"reference",
         {{"castin_c", 4.39},
          {"castin_c_setting", "BERT-base layer 0 head 0, R = 15.5"},
          {"castin_real_text_exponent", {0.26, 0.51}},
          {"castin_real_text_setting", "GPT-2"}}}}}};
  ctx.summary += line + "\n";
  ctx.summary += "growth (layer 0 head 0, R = " + fmt(radius, 4) +
                 "): C sqrt(n) with C = " + fmt(c_sqrt, 4) + ", exponent " + fmt(p_adv, 3) +
                 " adversarial, " + fmt(p_real, 3) +
                 " real text (Castin et al.: C = 4.39 for BERT-base)\n";
  (void)c_adv;
  (void)c_real;
}

}  // namespace measattn::cli
