// Section 1 of the report: attention on measures equals the Transformer formula
// (docs/theory.md#attention), with the invariances that the measure view predicts.
#include <algorithm>
#include <numeric>
#include <random>

#include "analyze.hpp"
#include "measattn/io.hpp"

namespace measattn::cli {

namespace {

double rel_error(const Matrix<double>& a, const Matrix<double>& b) {
  const double scale = std::max(b.cwiseAbs().maxCoeff(), 1e-300);
  return (a - b).cwiseAbs().maxCoeff() / scale;
}

}  // namespace

void section_equivalence(SectionContext& ctx) {
  const auto& model = ctx.in.model;
  const auto& mu = *ctx.in.tokens;
  const Index n = mu.size();
  const Matrix<double>& x = mu.atoms();

  const Matrix<double> field = attention_field(model, mu, x);
  const Matrix<double> dense = transformer_attention(model, mu, x);
  const double err = rel_error(field, dense);

  const auto mf = model.cast<float>();
  const auto muf = mu.cast<float>();
  const double err_f32 = rel_error(attention_field(mf, muf, muf.atoms()).cast<double>(), dense);

  // Permutation: permuting tokens permutes outputs.
  std::vector<Index> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), Index{0});
  std::mt19937_64 rng(ctx.in.seed);
  std::shuffle(perm.begin(), perm.end(), rng);
  Matrix<double> px(n, mu.dim());
  Vector<double> pw(n);
  for (Index i = 0; i < n; ++i) {
    px.row(i) = x.row(perm[static_cast<size_t>(i)]);
    pw[i] = mu.weight(perm[static_cast<size_t>(i)]);
  }
  const Matrix<double> pf = attention_field(model, Measure<double>(px, pw), px);
  Matrix<double> unpermuted(n, field.cols());
  for (Index i = 0; i < n; ++i) unpermuted.row(perm[static_cast<size_t>(i)]) = pf.row(i);
  const double err_perm = rel_error(unpermuted, field);

  // Duplication: every token twice, same outputs.
  Matrix<double> dx(2 * n, mu.dim());
  Vector<double> dw(2 * n);
  dx << x, x;
  dw << mu.weights(), mu.weights();
  const double err_dup = rel_error(attention_field(model, Measure<double>(dx, dw), x), field);

  // Merging: token 0 split into two identical atoms of weights 0.3 w and 0.7 w.
  Matrix<double> sx(n + 1, mu.dim());
  Vector<double> sw(n + 1);
  sx << x, x.row(0);
  sw << mu.weights(), 0.3 * mu.weight(0);
  sw[0] = 0.7 * mu.weight(0);
  const double err_split = rel_error(attention_field(model, Measure<double>(sx, sw), x), field);

  auto& r = ctx.report;
  r.heading(2, "1. Attention on measures equals the Transformer");
  r.paragraph(
      "The layer acts on the token measure mu = sum_i w_i delta_{x_i}: each query x is sent to "
      "`Gamma_mu(x) = W_O [sum_j pi^h_j(x) v^h(x_j)]_h + b_O` with the kernel "
      "`pi^h_j(x) = softmax_j(G_h(x, x_j) + log w_j)` (docs/theory.md, attention). measattn "
      "computes it streaming over key blocks with an online log-sum-exp; the Transformer "
      "formula materializes softmax(QK^T/tau + log w) V. Their agreement, and the invariances "
      "the measure view predicts, are checked here.");
  r.table({"check", "max relative error"},
          {{"streaming vs Transformer formula (float64)", fmt(err, 3)},
           {"float32 path vs float64 formula", fmt(err_f32, 3)},
           {"permuted tokens give permuted outputs", fmt(err_perm, 3)},
           {"every token duplicated: same outputs", fmt(err_dup, 3)},
           {"a token split into two atoms (0.3 w, 0.7 w): same outputs", fmt(err_split, 3)}},
          "Equivalence and invariances (rounding level is ~1e-16 in float64, ~1e-7 in float32).");

  // Outputs and kernels.
  write_npy(ctx.dir + "/outputs.npy", field);
  Table outputs;
  outputs.columns.push_back("weight");
  for (Index c = 0; c < field.cols(); ++c) outputs.columns.push_back("y" + std::to_string(c));
  for (Index i = 0; i < n; ++i) {
    std::vector<double> row{mu.weight(i)};
    for (Index c = 0; c < field.cols(); ++c) row.push_back(field(i, c));
    outputs.rows.push_back(row);
  }
  write_csv(ctx.dir + "/outputs.csv", outputs);

  const Index shown = std::min<Index>(n, 200);
  for (Index h = 0; h < model.num_heads; ++h) {
    const Matrix<double> p = attention_kernel(model, mu, x.topRows(shown), h);
    Table t;
    t.columns = {"query", "key", "probability"};
    for (Index i = 0; i < shown; ++i)
      for (Index j = 0; j < std::min<Index>(p.cols(), shown); ++j)
        t.rows.push_back({static_cast<double>(i), static_cast<double>(j), p(i, j)});
    const std::string base = "kernel_head" + std::to_string(h);
    write_csv(ctx.dir + "/" + base + ".csv", t);
    const bool drawn = render_or_note(
        ctx, base + ".png",
        t.gnuplot_block("K") + "set title 'Attention kernel K_{/Symbol m}(x_i, x_j), head " +
            std::to_string(h) + "'\nset xlabel 'key j'\nset ylabel 'query i'\n" +
            "set xrange [-0.5:" + std::to_string(shown) + "-0.5]\nset yrange [" +
            std::to_string(shown) + "-0.5:-0.5]\n" +
            "set palette defined (0 'white', 1 '#2166ac')\nset size ratio -1\n"
            "plot $K using 2:1:3 with image notitle\n",
        700, 600);
    if (drawn)
      r.image(base + ".png",
              "Kernel of head " + std::to_string(h) + " (first " + std::to_string(shown) +
                  " tokens): row i is the probability measure the query x_i puts on the tokens",
              base + ".csv");
  }
  r.paragraph(
      "The outputs (one row per token, its weight first) are in `outputs.csv` and "
      "`outputs.npy`.");
  ctx.summary += "equivalence: max relative error vs the Transformer formula " + fmt(err, 3) +
                 " (float32: " + fmt(err_f32, 3) + ")\n";
}

}  // namespace measattn::cli
