// Section 4 of the report: mis-specified inputs (docs/theory.md#misspec). For each
// kind of perturbation, the certified bound L W1(mu', mu) next to the output
// deviation W1(F(mu'), F(mu)) actually realized.
#include <cmath>
#include <limits>

#include "analyze.hpp"
#include "measattn/misspec.hpp"

namespace measattn::cli {

void section_misspec(SectionContext& ctx) {
  const auto& model = ctx.in.model;
  const auto& mu = *ctx.in.tokens;
  auto& r = ctx.report;
  r.heading(2, "4. Mis-specified inputs");
  r.paragraph(
      "If the layer sees mu' instead of mu, its output moves by at most "
      "`W1(F(mu'), F(mu)) <= L W1(mu', mu)`, with L the best upper bound on the smallest "
      "ball containing both (docs/theory.md, misspec). Three ways inputs go wrong: sampling "
      "(mu' is the empirical measure of n i.i.d. draws of mu), additive Gaussian noise of "
      "size sigma, and corruption of a mass fraction eps moved to adversarial points of B_R. "
      "Each row averages 3 draws; the bound holds for every draw.");

  Table all;
  all.columns = {"kind", "parameter", "w1_input", "w1_output", "bound"};
  const std::pair<MisspecKind, const char*> kinds[] = {
      {MisspecKind::sample, "n"}, {MisspecKind::noise, "sigma"}, {MisspecKind::corrupt, "eps"}};
  std::string plot =
      "set logscale xy\nset xlabel 'W1(mu'', mu) (input deviation)'\n"
      "set ylabel 'W1(F(mu''), F(mu))'\nset grid\nset key top left\n"
      "set title 'Realized output deviation against the input deviation'\n";
  std::string plot_cmd = "plot ";
  bool violated = false;
  for (const auto& [kind, param] : kinds) {
    MisspecOptions opt;
    opt.kind = kind;
    opt.seed = ctx.in.seed;
    opt.radius = 0;
    const MisspecResult res = misspecification(model, mu, opt);
    violated = violated || res.violated;
    std::vector<std::vector<std::string>> rows;
    Table t;
    t.columns = {"parameter", "w1_input", "w1_output", "bound"};
    for (const auto& row : res.rows) {
      rows.push_back(
          {fmt(row.parameter, 4), fmt(row.w1_input, 4), fmt(row.w1_output, 4), fmt(row.bound, 4),
           !row.a_priori || std::isnan(*row.a_priori) ? std::string("-") : fmt(*row.a_priori, 4),
           fmt(row.max_ratio, 3)});
      t.rows.push_back({row.parameter, row.w1_input, row.w1_output, row.bound});
      all.rows.push_back(
          {static_cast<double>(kind), row.parameter, row.w1_input, row.w1_output, row.bound});
    }
    std::string caption = to_string(kind) + ": L = " + fmt(res.lipschitz, 5) + " (" +
                          res.bound_name + ", R = " + fmt(res.radius, 4) + ")";
    if (kind == MisspecKind::sample) {
      const double nan = std::numeric_limits<double>::quiet_NaN();
      caption += "; fitted rates in n: input " + fmt(res.input_rate.value_or(nan), 3) +
                 ", output " + fmt(res.output_rate.value_or(nan), 3) +
                 " (theory: n^(-1/d) for the input when d >= 3)";
    }
    r.table({std::string(param), "W1(mu', mu)", "W1(F(mu'), F(mu))", "bound L W1(mu', mu)",
             "a-priori bound", "max ratio to bound"},
            rows, caption);
    const std::string name = to_string(kind);
    plot += t.gnuplot_block(name);
    plot_cmd += std::string(kind == MisspecKind::sample ? "" : ", ") + "$" + name +
                " using 2:3 with linespoints lw 2 pt 7 title '" + name + "'";
  }
  all.columns[0] = "kind(0=sample,1=noise,2=corrupt)";
  write_csv(ctx.dir + "/misspec.csv", all);
  if (render_or_note(ctx, "misspec.png", plot + plot_cmd + "\n"))
    r.image("misspec.png",
            "Output deviation against input deviation for the three kinds (the certified bounds "
            "L W1(mu', mu), in the tables above, lie far above and are not drawn)",
            "misspec.csv");
  r.paragraph(violated ? "**A bound was violated: please report this.**"
                       : "No draw exceeded its bound.");
  ctx.summary += std::string("misspec: sample/noise/corrupt tables written; bound ") +
                 (violated ? "VIOLATED" : "never violated") + "\n";
}

}  // namespace measattn::cli
