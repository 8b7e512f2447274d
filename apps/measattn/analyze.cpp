#include "analyze.hpp"

#include <omp.h>

#include <chrono>
#include <ctime>
#include <random>

#include "measattn/io.hpp"
#include "measattn/progress.hpp"
#include "measattn/version.hpp"

namespace measattn::cli {

Model<double> example_model() {
  // Random N(0, 1/d) weights, with the query and key maps scaled up so that the
  // heads attend selectively (logits of order a few units on B_1).
  Model<double> m = Model<double>::random(8, 2, true, 2020);
  m.w_q *= 2;
  m.w_k *= 2;
  return m;
}

std::shared_ptr<Measure<double>> example_tokens(Index dim) {
  std::mt19937_64 rng(7);
  std::normal_distribution<double> normal;
  const Index n = 48, clusters = 3;
  Matrix<double> centers(clusters, dim);
  for (Index c = 0; c < clusters; ++c)
    for (Index j = 0; j < dim; ++j) centers(c, j) = normal(rng);
  Matrix<double> x(n, dim);
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < dim; ++j) x(i, j) = centers(i * clusters / n, j) + 0.3 * normal(rng);
  double r = 0;
  for (Index i = 0; i < n; ++i) r = std::max(r, x.row(i).norm());
  x /= r;
  return std::make_shared<Measure<double>>(Measure<double>::empirical(std::move(x)));
}

std::string write_analysis(const AnalysisInput& in, const std::string& dir) {
  Report report;
  std::string summary;
  SectionContext ctx{in, dir, report, summary};
  const auto start = std::chrono::steady_clock::now();

  report.heading(1, "measattn analysis");
  const std::time_t now = std::time(nullptr);
  char stamp[64];
  std::strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S UTC", std::gmtime(&now));
  report.table(
      {"item", "value"},
      {{"measattn version", version},
       {"Eigen version", std::to_string(EIGEN_WORLD_VERSION) + "." +
                             std::to_string(EIGEN_MAJOR_VERSION) + "." +
                             std::to_string(EIGEN_MINOR_VERSION)},
       {"model", in.model_name},
       {"potential", to_string(in.model.potential)},
       {"embedding / heads / head dim / out dim",
        std::to_string(in.model.embed_dim()) + " / " + std::to_string(in.model.num_heads) + " / " +
            std::to_string(in.model.head_dim()) + " / " + std::to_string(in.model.out_dim())},
       {"scale tau", fmt(in.model.tau())},
       {"tokens", in.tokens_name},
       {"tokens: n / d / radius", std::to_string(in.tokens->size()) + " / " +
                                      std::to_string(in.tokens->dim()) + " / " +
                                      fmt(in.tokens->radius())},
       {"radius R", fmt(in.radius)},
       {"seed", std::to_string(in.seed)},
       {"threads", std::to_string(omp_get_max_threads())},
       {"date", stamp}},
      "Run parameters: with the same inputs, version and seed the numbers repeat bit for "
      "bit (results do not depend on the thread count).");

  const std::pair<const char*, void (*)(SectionContext&)> sections[] = {
      {"equivalence", section_equivalence},
      {"entropy", section_entropy},
      {"lipschitz", section_lipschitz},
      {"misspec", section_misspec},
      {"flow", section_flow}};
  Progress progress("analyze", static_cast<std::int64_t>(std::size(sections)));
  std::int64_t done = 0;
  for (const auto& [name, section] : sections) {
    progress.update(done, name);
    section(ctx);
    progress.update(++done, name);
  }
  progress.finish();

  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  report.paragraph("Total time: " + fmt(seconds, 3) + " s.");
  write_file_atomic(dir + "/report.md", report.markdown());
  write_file_atomic(dir + "/report.html", report.html("measattn analysis"));
  return summary;
}

}  // namespace measattn::cli
