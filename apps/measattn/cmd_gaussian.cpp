// measattn gaussian — the closed-form image of a Gaussian measure under one
// attention layer, or its self-attention flow (docs/theory.md#gaussian).
//
//   measattn gaussian --model M.safetensors --mean m.npy --cov S.npy [--time T]
//                     [--normalization softmax|sinkhorn] [--residual]
//                     [--tolerance TOL] [--max-steps K] [--json]
//
// Without --time: the mean and covariance of F(mu) = (Gamma_mu)#mu for
// mu = N(m, S) (GaussianAttentionOptions). With --time: of mu_T of the flow
// dx/dt = Gamma_{mu_t}(x) (GaussianFlowOptions: --time, --tolerance, --max-steps),
// with the integrator's steps and error estimate. The output is "mean" and "cov"
// (JSON keys; text: one line each, the covariance row by row).
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "command.hpp"
#include "flags.hpp"
#include "measattn/error.hpp"
#include "measattn/gaussian.hpp"
#include "measattn/io.hpp"

namespace measattn::cli {
namespace {

struct GaussianArgs {
  std::string model, mean, cov;
  bool json = false;
  GaussianAttentionOptions attention;  ///< --normalization, --residual (gaussian.hpp)
  GaussianFlowOptions flow;            ///< --time, --tolerance, --max-steps
  OptionBinder attention_binder, flow_binder;
  bool has_time = false;
};

std::string fmt(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

void run(const GaussianArgs& a) {
  a.attention_binder.apply();  // --normalization
  a.flow_binder.apply();
  const GaussianAttentionOptions& attention = a.attention;
  GaussianFlowOptions flow = a.flow;
  flow.normalization = attention.normalization;
  attention.validate();
  if (a.has_time) {
    flow.validate();
    if (attention.residual) {
      throw invalid_argument(
          "--residual: the flow has no residual (dx/dt = Gamma(x)); drop --residual or --time");
    }
  }
  const Model<double> model = load_model<double>(a.model);
  const VectorD mean = read_npy_vector<double>(a.mean, "--mean");
  const MatrixD cov = read_npy_matrix<double>(a.cov, "--cov");
  const GaussianMeasure<double> g(mean, cov);  // errors name "mean" / "cov"
  nlohmann::json out = {
      {"model", a.model}, {"dim", g.dim()}, {"normalization", to_string(attention.normalization)}};
  GaussianMeasure<double> result = g;
  if (a.has_time) {
    const GaussianFlowResult<double> r = gaussian_flow(model, g, flow);
    result = r.measure;
    out["time_requested"] = flow.time;
    out["time"] = r.time;
    out["tolerance"] = flow.tolerance;
    out["max_steps"] = flow.max_steps;
    out["steps"] = r.steps;
    out["rejected"] = r.rejected;
    out["evaluations"] = r.evaluations;
    out["error_estimate"] = r.error_estimate;
    out["status"] = to_string(r.status);
    out["message"] = r.message;
  } else {
    result = gaussian_attention(model, g, attention);
    out["residual"] = attention.residual;
  }
  std::vector<std::vector<double>> rows;
  for (Index i = 0; i < result.dim(); ++i) {
    rows.emplace_back(result.cov().row(i).data(), result.cov().row(i).data() + result.dim());
  }
  out["mean"] = std::vector<double>(result.mean().data(), result.mean().data() + result.dim());
  out["cov"] = rows;
  if (a.json) {
    std::cout << out.dump(2) << "\n";
    return;
  }
  if (a.has_time) {
    std::cout << "flow to t = " << fmt(out["time"].get<double>()) << ": "
              << out["status"].get<std::string>() << " (" << out["message"].get<std::string>()
              << ", error estimate " << fmt(out["error_estimate"].get<double>()) << ")\n";
  }
  std::cout << "mean";
  for (Index i = 0; i < result.dim(); ++i) std::cout << " " << fmt(result.mean()[i]);
  std::cout << "\ncov";
  for (Index i = 0; i < result.dim(); ++i) {
    std::cout << (i ? " ;" : "");
    for (Index j = 0; j < result.dim(); ++j) std::cout << " " << fmt(result.cov()(i, j));
  }
  std::cout << "\n";
}

const bool registered = register_command(
    "gaussian",
    "Closed-form attention (or flow, --time) of a Gaussian measure N(mean, cov): its mean and cov",
    [](CLI::App& app) {
      auto a = std::make_shared<GaussianArgs>();
      register_fields(app, {{"mean", "--mean", &a->mean}, {"cov", "--cov", &a->cov}});
      app.add_option("--model", a->model, "Model: safetensors (nn.MultiheadAttention weights)")
          ->required();
      app.add_option("--mean", a->mean, "Mean: length-d .npy")->required();
      app.add_option("--cov", a->cov, "Covariance: d x d .npy (symmetric positive semi-definite)")
          ->required();
      a->attention_binder.bind(app, a->attention, {"normalization", "residual"});
      a->flow_binder.bind(app, a->flow, {"time", "tolerance", "max_steps"});
      register_fields(app, model_fields("--model", &a->model));
      app.add_flag("--json", a->json, "Print JSON");
      app.callback([a, &app] {
        a->has_time = app.count("--time") > 0;
        run(*a);
      });
    });

}  // namespace
}  // namespace measattn::cli
