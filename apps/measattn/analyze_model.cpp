// The real-model report: the stack run at the real input once, then one
// section per result of the theory (analyze_model_*.cpp), written as
// report.md, report.html and report.json with a PNG and a CSV behind every figure.
#include "analyze_model.hpp"

#include <omp.h>

#include <chrono>
#include <cmath>
#include <ctime>

#include "measattn/io.hpp"
#include "measattn/progress.hpp"
#include "measattn/version.hpp"
#include "plot.hpp"

namespace measattn::cli {

Model<double> single_head(const Model<double>& model, Index head) {
  const Index k = model.head_dim();
  Model<double> m;
  m.num_heads = 1;
  m.potential = model.potential;
  m.scale = model.tau();
  m.custom_potential = model.custom_potential;
  m.w_q = model.w_q.middleRows(head * k, k);
  m.w_k = model.w_k.middleRows(head * k, k);
  m.w_v = model.w_v.middleRows(head * k, k);
  if (model.b_q.size() > 0) m.b_q = model.b_q.segment(head * k, k);
  if (model.b_k.size() > 0) m.b_k = model.b_k.segment(head * k, k);
  if (model.b_v.size() > 0) m.b_v = model.b_v.segment(head * k, k);
  m.w_o = model.w_o.middleCols(head * k, k);
  return m;
}

bool add_model_plot(ModelContext& ctx, const std::string& png, const std::string& script,
                    const std::string& caption, const std::string& csv, int width, int height) {
  try {
    render_png(ctx.dir + "/" + png, script, width, height);
  } catch (const std::exception& e) {
    ctx.report.paragraph("(The plot " + png + " could not be drawn: " + e.what() +
                         "; the data are in " + csv + ".)");
    return false;
  }
  ctx.report.image(png, caption, csv);
  return true;
}

nlohmann::json json_number(double v) {
  if (!std::isfinite(v)) return nullptr;
  return v;
}

std::pair<double, double> power_fit(const std::vector<double>& x, const std::vector<double>& y) {
  double sx = 0, sy = 0, sxx = 0, sxy = 0, n = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    if (!(y[i] > 0) || !std::isfinite(y[i]) || !(x[i] > 0)) continue;
    n += 1;
    const double a = std::log(x[i]), b = std::log(y[i]);
    sx += a;
    sy += b;
    sxx += a * a;
    sxy += a * b;
  }
  const double den = n * sxx - sx * sx;
  if (n < 2 || !(std::abs(den) > 0)) return {std::nan(""), std::nan("")};
  const double p = (n * sxy - sx * sy) / den;
  return {p, std::exp((sy - p * sx) / n)};
}

std::string write_model_analysis(const ModelAnalysisInput& in, const std::string& dir) {
  Report report;
  std::string summary;
  nlohmann::json json;
  ModelContext ctx{in, dir, report, summary, json, {}, {}, {}, {}, {}};
  const auto start = std::chrono::steady_clock::now();
  const auto& model = in.model;
  const TransformerSummary s = summarize(model);

  // The stack at the real input, block by block (no final norm: every entry is
  // a block's output, so that the weight-shared flows compare like with like).
  ctx.hidden.push_back(embed(model, in.ids));
  for (const auto& block : model.blocks) {
    ctx.attention_in.push_back(attention_input(block, ctx.hidden.back()));
    ctx.hidden.push_back(block_forward(block, ctx.hidden.back()));
  }

  report.heading(1, "measattn analysis of a pretrained model");
  const std::time_t now = std::time(nullptr);
  char stamp[64];
  std::strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S UTC", std::gmtime(&now));
  const std::string shape = std::to_string(s.layers) + " / " + std::to_string(s.heads) + " / " +
                            std::to_string(s.dim) + " / " + std::to_string(s.head_dim) + " / " +
                            std::to_string(s.ff_dim);
  report.table(
      {"item", "value"},
      {{"measattn version", version},
       {"model", in.model_path},
       {"architecture (model_type)", s.architecture + " (" + s.model_type + ")"},
       {"layers / heads / d / head dim / ff", shape},
       {"norm placement / activation / causal",
        s.norm + "-LN / " + s.activation + " / " + (s.causal ? "yes" : "no")},
       {"parameters", std::to_string(s.parameters)},
       {"input", in.source},
       {"tokens n", std::to_string(in.ids.size())},
       {"seed", std::to_string(in.seed)},
       {"threads", std::to_string(omp_get_max_threads())},
       {"date", stamp}},
      "Run parameters: with the same inputs, version and seed the numbers repeat bit for bit "
      "(results do not depend on the thread count).");
  report.paragraph(
      "Every number below is labelled **exact** (computed by a finite formula or an exact "
      "solver, up to rounding), **certified** (a proved upper bound, or a lower bound "
      "realized by an explicit witness) or **estimate** (an iterative value that is not "
      "certified to be the quantity itself; its direction is stated). The points of each "
      "layer are the tokens as the block's attention sees them: `attention_input` of the "
      "hidden state entering the block (the hidden state itself for post-LN BERT, LN1 of it "
      "for pre-LN GPT-2).");
  json["measattn_version"] = version;
  json["model"] = {{"path", in.model_path},
                   {"architecture", s.architecture},
                   {"model_type", s.model_type},
                   {"layers", s.layers},
                   {"heads", s.heads},
                   {"dim", s.dim},
                   {"head_dim", s.head_dim},
                   {"ff_dim", s.ff_dim},
                   {"norm", s.norm},
                   {"activation", s.activation},
                   {"causal", s.causal},
                   {"parameters", s.parameters}};
  json["input"] = {{"source", in.source}, {"tokens", in.ids.size()}, {"ids", in.ids}};
  json["seed"] = in.seed;

  const std::pair<const char*, void (*)(ModelContext&)> sections[] = {
      {"entropy", model_section_entropy},
      {"depth", model_section_depth},
      {"token lipschitz", model_section_token_lipschitz},
      {"misspec", model_section_misspec},
      {"w1 bounds", model_section_w1_bounds}};
  Progress progress("analyze", static_cast<std::int64_t>(std::size(sections)));
  std::int64_t done = 0;
  std::vector<std::vector<std::string>> timing;
  nlohmann::json jt = nlohmann::json::object();
  for (const auto& [name, section] : sections) {
    progress.update(done, name);
    const auto t0 = std::chrono::steady_clock::now();
    const std::clock_t c0 = std::clock();
    section(ctx);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double cpu = static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC;
    timing.push_back({name, fmt(dt, 3), fmt(cpu, 3)});
    jt[name] = {{"wall", dt}, {"cpu", cpu}};
    progress.update(++done, name);
  }
  progress.finish();
  report.table({"section", "wall seconds", "CPU seconds (all threads)"}, timing,
               "Time per section: wall clock, and processor time summed over the threads.");
  json["section_seconds"] = jt;

  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  report.paragraph("Total time: " + fmt(seconds, 3) + " s.");
  json["seconds"] = seconds;
  write_file_atomic(dir + "/report.md", report.markdown());
  write_file_atomic(dir + "/report.html", report.html("measattn analysis of a pretrained model"));
  write_file_atomic(dir + "/report.json", json.dump(2) + "\n");
  return summary;
}

}  // namespace measattn::cli
