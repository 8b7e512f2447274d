// Real-model section 5: the W1 Lipschitz bounds of each layer's attention at
// the radius its real tokens occupy (docs/theory.md#lipschitz), reported
// honestly: the proved upper bound carries e^{oscillation} and is astronomically
// large (or past double's range) at such radii; its log10 is evaluated in log
// space, and the local figures stand beside it.
#include <algorithm>
#include <cmath>

#include "analyze_model.hpp"
#include "measattn/lipschitz.hpp"
#include "plot.hpp"

namespace measattn::cli {

namespace {

double log_add(double a, double b) {
  if (a == -INFINITY) return b;
  if (b == -INFINITY) return a;
  const double m = std::max(a, b);
  return m + std::log1p(std::exp(-std::abs(a - b)));
}

// log10 of the per-head bound sum_h ||W_O^h V_h|| (x_core_h + (1 + 2 R rho_h)
// e^{osc_h}) evaluated in logs, so that it is finite where the value overflows.
double log10_per_head(const UpperBoundResult& b) {
  double total = -INFINITY;
  for (const auto& h : b.heads) {
    if (!(h.projected_value_norm > 0)) continue;
    const double xc = h.x_core > 0 ? std::log(h.x_core) : -INFINITY;
    const double mc = std::log1p(2 * b.radius * h.rho) + h.oscillation;
    total = log_add(total, std::log(h.projected_value_norm) + log_add(xc, mc));
  }
  return total / std::log(10.0);
}

std::string power_of_ten(double log10v) {
  if (!std::isfinite(log10v)) return "0";
  return "10^" + fmt(log10v, 5);
}

}  // namespace

void model_section_w1_bounds(ModelContext& ctx) {
  const auto& blocks = ctx.in.model.blocks;
  auto& r = ctx.report;
  const Index layers = static_cast<Index>(blocks.size());
  r.heading(2, "5. W1 Lipschitz bounds at the radius of the real tokens");
  r.paragraph(
      "On measures supported in the ball B_R, the attention map of layer l satisfies "
      "`W1(F(mu), F(nu)) <= L W1(mu, nu)`, with L the proved upper bound (`"
      "lipschitz_upper_bounds`, **certified** upper bound) and a lower bound realized by a "
      "witness pair found by search (`lipschitz_lower_bound`, 2 restarts of 20 steps, "
      "4-atom measures, every ratio recomputed with exact W1: **certified** lower bound). "
      "R is the largest norm of the real tokens entering the layer's attention. The proved "
      "bound carries `e^{oscillation}` with an oscillation of order ||Q^T K|| R^2 / tau: at the "
      "radii of real tokens it is astronomically large, often past double's range (shown as "
      "\"unbounded in double\"); its log10 is evaluated in logs and given beside it. The local "
      "figures are what the layer does at the real input: the token-level Jacobian norm of "
      "section 3 (another norm: the constant of X -> (Gamma(x_i))_i in l2, a certified lower "
      "bound at X) and the largest W1 ratio `W1(F(mu), F(mu')) / W1(mu, mu')` of the "
      "attention between the real and the perturbed inputs of section 4 (**exact**: a local "
      "lower bound on L). The local certificate (`lipschitz_local_bound`, docs/theory.md 6c) "
      "is **proved** for every measure nu in B_R within the W1 distance shown of the real "
      "token measure mu (eps_half: where it is at most twice its limit as the distance goes "
      "to 0). It divides by mu's own partition functions instead of their worst case on B_R, "
      "so it stays finite where the global bound is not. Beside it, the largest exact ratio "
      "found around mu (nu within 1e-4 R): such a pair lies in B_R, so it is also a certified "
      "lower bound on the constant on B_R.");
  Table t;
  // log10 of each figure that exists (a refused search or no text leaves it out).
  t.columns = {"layer", "radius", "figure(0=upper,1=lower,2=token_jacobian,3=local_w1_ratio)",
               "log10_value"};
  std::vector<std::vector<std::string>> rows;
  nlohmann::json jl = nlohmann::json::array();
  std::string line = "W1 bounds (log10 upper / lower / local ratio):";
  for (Index l = 0; l < layers; ++l) {
    const auto& att = blocks[static_cast<size_t>(l)].attention;
    const double radius = ctx.attention_in[static_cast<size_t>(l)].rowwise().norm().maxCoeff();
    UpperBoundOptions uo;
    uo.radius = radius;
    const UpperBoundResult ub = lipschitz_upper_bounds(att, uo);
    const double log10_upper = log10_per_head(ub);
    LipschitzSearchOptions so;
    so.atoms = 4;
    so.restarts = 2;
    so.steps = 20;
    so.seed = ctx.in.seed;
    double lower = std::nan("");
    std::string lower_note;
    try {
      lower = lipschitz_lower_bound(att, radius, so).ratio;
    } catch (const std::exception& e) {
      lower_note = e.what();
    }
    // The local certificate around the real token measure (uniform weights), for
    // nu within eps = 1e-4 R of it in W1 (lipschitz_local_bound).
    LocalBoundOptions lo;
    lo.eps = 1e-4 * std::max(radius, 1e-300);
    lo.radius = radius;
    lo.restarts = 4;
    lo.seed = ctx.in.seed;
    const LocalBoundResult cert = lipschitz_local_bound(
        att, MeasureD::empirical(ctx.attention_in[static_cast<size_t>(l)]), lo);
    const double token =
        ctx.token_lipschitz.empty() ? std::nan("") : ctx.token_lipschitz[static_cast<size_t>(l)];
    const double local =
        ctx.local_w1_ratio.empty() ? std::nan("") : ctx.local_w1_ratio[static_cast<size_t>(l)];
    const bool finite = std::isfinite(ub.best_w1);
    const std::string upper_text = finite ? fmt(ub.best_w1, 4) + " (" + ub.best_name + ")"
                                          : std::string("unbounded in double");
    double max_osc = 0;
    for (const auto& h : ub.heads) max_osc = std::max(max_osc, h.oscillation);
    rows.push_back({std::to_string(l), fmt(radius, 4), upper_text, power_of_ten(log10_upper),
                    fmt(max_osc, 4), std::isnan(lower) ? "refused: " + lower_note : fmt(lower, 4),
                    fmt(cert.upper_at_eps_half, 4) + " for W1 <= " + fmt(cert.eps_half, 3),
                    fmt(cert.lower, 4), std::isnan(token) ? "-" : fmt(token, 4),
                    std::isnan(local) ? "-" : fmt(local, 4)});
    const double logs[] = {log10_upper, lower > 0 ? std::log10(lower) : NAN,
                           token > 0 ? std::log10(token) : NAN,
                           local > 0 ? std::log10(local) : NAN};
    for (int f = 0; f < 4; ++f)
      if (std::isfinite(logs[f]))
        t.rows.push_back({static_cast<double>(l), radius, static_cast<double>(f), logs[f]});
    jl.push_back({{"layer", l},
                  {"radius", json_number(radius)},
                  {"upper_best", json_number(ub.best_w1)},
                  {"upper_best_name", ub.best_name},
                  {"upper_unbounded_in_double", !finite},
                  {"log10_upper_per_head", json_number(log10_upper)},
                  {"max_oscillation", json_number(max_osc)},
                  {"lower_bound", json_number(lower)},
                  {"lower_bound_refused", lower_note},
                  {"token_lipschitz", json_number(token)},
                  {"local_w1_ratio", json_number(local)},
                  {"local_certificate",
                   {{"eps", lo.eps},
                    {"upper", json_number(cert.upper)},
                    {"upper_at_zero", json_number(cert.upper_at_zero)},
                    {"eps_half", json_number(cert.eps_half)},
                    {"upper_at_eps_half", json_number(cert.upper_at_eps_half)},
                    {"lower_bound", cert.lower},
                    {"witness_origin", cert.witness_origin}}}});
    line += " L" + std::to_string(l) + " " + fmt(log10_upper, 4) + "/" + fmt(lower, 3) + "/" +
            fmt(local, 3);
  }
  r.table({"layer", "R", "best upper bound (certified)", "proved bound in logs (w1_per_head)",
           "max oscillation", "lower bound (certified)",
           "local certificate (proved, within the W1 radius shown)",
           "lower bound around mu (certified)", "token Jacobian norm (section 3)",
           "local W1 ratio (exact)"},
          rows,
          "The W1 constant of each layer's attention on B_R: proved upper bound, its size as a "
          "power of ten, the largest exponent e^{oscillation} among the heads, the searched "
          "lower bound, and the local figures at the real input.");
  write_csv(ctx.dir + "/model_w1_bounds.csv", t);
  add_model_plot(
      ctx, "model_w1_bounds.png",
      t.gnuplot_block("B") +
          "set xlabel 'layer'\nset ylabel 'log10 of the constant'\nset grid\n"
          "set key outside right\nset title 'W1 bounds at the real radius against "
          "the local figures (log10)'\nplot $B using 1:($3 == 0 ? $4 : 1/0) with linespoints "
          "lw 2 pt 7 title 'proved upper bound', $B using 1:($3 == 1 ? $4 : 1/0) with "
          "linespoints lw 2 pt 5 title 'searched lower bound', $B using 1:($3 == 2 ? "
          "$4 : 1/0) with linespoints lw 2 pt 9 title 'token ||J|| at X', $B using "
          "1:($3 == 3 ? $4 : 1/0) with linespoints lw 2 pt 11 title 'local W1 ratio'\n",
      "log10 of the proved W1 upper bound, the certified lower bound and the local "
      "figures per layer: the gap is the honest answer",
      "model_w1_bounds.csv", 1000, 600);
  ctx.json["w1_bounds"] = {
      {"kind",
       "upper: certified (proved); lower: certified (witness); local_w1_ratio: exact; "
       "token_lipschitz: certified lower bound"},
      {"layers", jl}};
  ctx.summary += line + "\n";
}

}  // namespace measattn::cli
