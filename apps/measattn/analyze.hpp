// The sections of `measattn analyze`, one function per result of the theory.
#pragma once

#include <memory>
#include <string>

#include "measattn/attention.hpp"
#include "measattn/measure.hpp"
#include "report.hpp"

namespace measattn::cli {

/// The default of analyze's --seed (AnalysisInput::seed).
inline constexpr unsigned long long kAnalyzeSeed = 2020;

struct AnalysisInput {
  Model<double> model;
  std::shared_ptr<Measure<double>> tokens;
  std::string model_name, tokens_name;
  double radius = 1;
  unsigned long long seed = kAnalyzeSeed;
};

/// The built-in example layer: d = 8, 2 heads, dot potential, biases, seed 2020.
Model<double> example_model();
/// The built-in example tokens: 48 points in R^d in three clusters, scaled into B_1.
std::shared_ptr<Measure<double>> example_tokens(Index dim);

/// Writes report.md, report.html, the PNGs and CSVs into `dir`; returns a
/// short text summary for the terminal.
std::string write_analysis(const AnalysisInput& in, const std::string& dir);

/// Where a section writes and what it adds to the report.
struct SectionContext {
  const AnalysisInput& in;
  std::string dir;
  Report& report;
  std::string& summary;
};

/// Renders a section's plot and adds it to the report; when gnuplot fails (say,
/// no positive value on a log axis for inputs near 1e-300) the report keeps a note
/// with the reason instead, so a plot can never lose the report.
bool render_or_note(SectionContext& ctx, const std::string& png, const std::string& script,
                    int width = 900, int height = 600);
bool add_plot(SectionContext& ctx, const std::string& png, const std::string& script,
              const std::string& caption, const std::string& csv = "", int width = 900,
              int height = 600);

void section_equivalence(SectionContext& ctx);
void section_entropy(SectionContext& ctx);
void section_lipschitz(SectionContext& ctx);
void section_misspec(SectionContext& ctx);
void section_flow(SectionContext& ctx);

}  // namespace measattn::cli
