// measattn flow — tokens as interacting particles: the infinitely deep
// weight-shared attention network as an ODE on measures (THEORY Section 3).
//
//   measattn flow (--model M.safetensors | --builtin sa --beta B) --tokens X0.npy
//                 [--weights w.npy] --time T [--steps L] [--scheme euler|heun|rk4|dopri5]
//                 [--tol TOL] [--sphere] [--unnormalized] [--save-every K]
//                 [--checkpoint-every K] [--resume] [--cluster-tol EPS] [--no-plot] --out DIR
//
// Writes DIR/final.npy (n x d), DIR/trajectory.npy (frames x n x d, frame 0 the
// start; with --save-every), DIR/summary.json and DIR/trajectories.png (gnuplot;
// d > 2 projected on the top-2 principal directions of all saved points).
// --checkpoint-every K writes DIR/checkpoint.bin every K accepted steps; --resume
// continues from it (refused, exit 2, if it was written for other arguments).
// Every input is validated before the computation; every output is written
// atomically, and only once the run has finished.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iomanip>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include <Eigen/Eigenvalues>

#include "command.hpp"
#include "flags.hpp"
#include "inputs.hpp"
#include "measattn/attention.hpp"
#include "measattn/error.hpp"
#include "measattn/flow.hpp"
#include "measattn/io.hpp"
#include "measattn/measure.hpp"
#include "output.hpp"
#include "plot.hpp"

namespace measattn::cli {
namespace {

struct FlowArgs {
  std::string model, builtin, tokens, weights, out, scheme = "euler";
  double beta = 0, time = 0, tol = 1e-6, cluster_tol = 1e-2;
  long long steps = 0, save_every = 0, checkpoint_every = 0;
  bool sphere = false, unnormalized = false, resume = false, no_plot = false;
};

// Trajectories projected to 2-D (top-2 principal directions of all saved points
// when d > 2), at most 400 particles drawn; PNG via gnuplot pngcairo (render_png:
// no temporary outside the registry, written atomically). Returns false (and
// writes nothing) when gnuplot fails; an interrupt propagates.
bool plot_trajectories(const std::vector<MatrixD>& frames, const std::string& png,
                       const std::string& title) {
  if (frames.empty()) return false;
  const Index n = frames[0].rows(), d = frames[0].cols();
  const Index count = static_cast<Index>(frames.size());
  Eigen::MatrixXd basis(d, std::min<Index>(d, 2));
  if (d <= 2) {
    basis = Eigen::MatrixXd::Identity(d, d);
  } else {
    Eigen::RowVectorXd mean = Eigen::RowVectorXd::Zero(d);
    for (const auto& f : frames) mean += f.colwise().sum();
    mean /= static_cast<double>(n * count);
    Eigen::MatrixXd cov = Eigen::MatrixXd::Zero(d, d);
    for (const auto& f : frames) {
      const Eigen::MatrixXd c = f.rowwise() - mean;
      cov += c.transpose() * c;
    }
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(cov);
    basis.col(0) = eig.eigenvectors().col(d - 1);
    basis.col(1) = eig.eigenvectors().col(d - 2);
  }
  std::ostringstream script;
  script << std::setprecision(9) << "$traj << EOD\n";
  const Index step = std::max<Index>(1, n / 400);
  for (Index i = 0; i < n; i += step) {
    for (Index f = 0; f < count; ++f) {
      const Eigen::RowVectorXd p = frames[static_cast<size_t>(f)].row(i) * basis;
      if (d == 1) {
        script << f << " " << p[0] << "\n";
      } else {
        script << p[0] << " " << p[1] << "\n";
      }
    }
    script << "\n\n";
  }
  script << "EOD\n"
         << "set termoption noenhanced\n"
         << "set title " << gnuplot_quote(title) << "\n"
         << "unset key\n"
         << (d == 1   ? "set xlabel 'frame'\nset ylabel 'x'\n"
             : d == 2 ? "set xlabel 'x_1'\nset ylabel 'x_2'\nset size ratio -1\n"
                      : "set xlabel 'principal direction 1'\nset ylabel 'principal "
                        "direction 2'\nset size ratio -1\n")
         << "plot $traj using 1:2 with lines lc rgb '#7f1f77b4' lw 1, "
         << "$traj using 1:2 every ::0::0 with points pt 7 ps 0.5 lc rgb "
         << "'#2ca02c', $traj using 1:2 every ::" << (count - 1) << "::" << (count - 1)
         << " with points pt 7 ps 0.8 lc rgb '#d62728'\n";
  try {
    render_png(png, script.str(), 900, 800);
  } catch (const interrupted&) {
    throw;
  } catch (const std::runtime_error&) {
    return false;
  }
  return true;
}

nlohmann::json number_or_null(double v) {
  return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
}

void run_flow(const FlowArgs& a) {
  // ---- validate every argument before computing anything ----------------------
  const bool builtin = !a.builtin.empty();
  if (builtin == !a.model.empty()) {
    throw invalid_argument("--model: give exactly one of --model M.safetensors or --builtin sa");
  }
  if (builtin && a.builtin != "sa") {
    throw invalid_argument("--builtin: unknown model '" + a.builtin +
                           "' (expected sa: V = I, G(x,y) = beta <x,y>)");
  }
  if (builtin && !(a.beta > 0 && std::isfinite(a.beta))) {
    throw invalid_argument("--beta: --builtin sa needs --beta B with B > 0");
  }
  if (!builtin && a.beta != 0) throw invalid_argument("--beta: only with --builtin sa");
  const FlowScheme scheme = parse_flow_scheme(a.scheme, "--scheme");
  if (!(a.time > 0) || !std::isfinite(a.time)) throw invalid_argument("--time: must be > 0");
  if (scheme != FlowScheme::dopri5 && a.steps < 1) {
    throw invalid_argument("--steps: the " + a.scheme + " scheme needs --steps L >= 1");
  }
  if (a.steps < 0) throw invalid_argument("--steps: must be >= 1");
  if (!(a.tol > 0) || !std::isfinite(a.tol)) throw invalid_argument("--tol: must be > 0");
  if (a.save_every < 0) throw invalid_argument("--save-every: must be >= 0");
  if (a.checkpoint_every < 0) throw invalid_argument("--checkpoint-every: must be >= 0");
  if (!(a.cluster_tol >= 0) || !std::isfinite(a.cluster_tol)) {
    throw invalid_argument("--cluster-tol: must be >= 0");
  }
  if (a.unnormalized && (!builtin || !a.sphere)) {
    throw invalid_argument(
        "--unnormalized: the unnormalized field needs the canonical model and the sphere "
        "(--builtin sa --beta B --sphere)");
  }
  if (a.unnormalized && a.beta > 700) {
    throw invalid_argument("--beta: the unnormalized field overflows (exp(beta)) for beta > 700");
  }

  // The output directory is checked before any work: created (last component
  // only) when the results are written, or now when checkpoints go into it.
  namespace fs = std::filesystem;
  OutputDirectory out(a.out, "flow", "--out");
  const std::vector<std::string> owned = {"final.npy", "trajectory.npy", "summary.json",
                                          "trajectories.png", "checkpoint.bin"};
  const std::string checkpoint = (fs::path(a.out) / "checkpoint.bin").string();
  std::error_code ec;
  if (a.resume && !fs::exists(checkpoint, ec)) {
    throw invalid_argument("--resume: " + checkpoint + " does not exist");
  }

  const auto mu = read_token_measure<double>(a.tokens, a.weights);
  const Index n = mu->size(), d = mu->dim();
  Model<double> model = builtin ? Model<double>::canonical(d, a.beta) : load_model<double>(a.model);
  if (model.query_dim() != d || model.key_dim() != d || model.out_dim() != d) {
    throw invalid_argument(
        "--model: " + a.model + ": a flow needs d_out == d_q == d_kv == " + std::to_string(d) +
        " (the token dimension); the model has d_out " + std::to_string(model.out_dim()) +
        ", d_q " + std::to_string(model.query_dim()) + ", d_kv " + std::to_string(model.key_dim()));
  }
  if (a.sphere) {
    for (Index i = 0; i < n; ++i) {
      if (!(mu->atoms().row(i).stableNorm() > 0)) {
        throw invalid_argument("--tokens: " + a.tokens + ": token " + std::to_string(i) +
                               " is zero and cannot be put on the unit sphere (--sphere)");
      }
    }
  }

  FlowOptions options;
  options.time = a.time;
  options.steps = scheme == FlowScheme::dopri5 ? std::max<long long>(a.steps, 1) : a.steps;
  options.scheme = scheme;
  options.tolerance = a.tol;
  options.sphere = a.sphere;
  options.field = a.unnormalized ? FlowField::unnormalized : FlowField::attention;
  options.save_every = a.save_every;
  options.cluster_tolerance = a.cluster_tol;
  options.checkpoint_every = a.checkpoint_every;
  options.checkpoint_path = checkpoint;
  options.resume = a.resume;
  options.progress = true;
  // Without --save-every the summary still reports the start and the end.
  if (options.save_every == 0) options.save_every = std::numeric_limits<Index>::max();
  options.validate();

  std::string dir;
  if (a.checkpoint_every > 0 || a.resume) dir = out.open_in_place(owned);
  const auto started = std::chrono::steady_clock::now();
  const FlowResult<double> r = flow(model, *mu, options);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  if (r.status == Status::non_finite) {
    throw invalid_argument("--time: " + r.message + "; nothing written (try smaller steps)");
  }

  // ---- outputs ----------------------------------------------------------------
  if (dir.empty()) dir = out.open_in_place(owned);
  write_npy((fs::path(dir) / "final.npy").string(), r.particles);
  if (a.save_every > 0) {
    std::vector<double> values;
    values.reserve(r.frames.size() * static_cast<size_t>(n * d));
    for (const auto& f : r.frames) values.insert(values.end(), f.data(), f.data() + f.size());
    write_npy((fs::path(dir) / "trajectory.npy").string(), values,
              {static_cast<std::int64_t>(r.frames.size()), static_cast<std::int64_t>(n),
               static_cast<std::int64_t>(d)});
  }
  double beta = 0;
  const bool canonical = is_canonical(model, &beta);
  nlohmann::json frames = nlohmann::json::array();
  for (size_t f = 0; f < r.frames.size(); ++f) {
    nlohmann::json fr = {{"step", r.frame_steps[f]}, {"time", r.frame_times[f]}};
    if (f < r.energies.size()) fr["energy"] = number_or_null(r.energies[f]);
    if (f < r.cluster_counts.size()) fr["clusters"] = r.cluster_counts[f];
    frames.push_back(fr);
  }
  std::string png;
  if (!a.no_plot) {
    std::ostringstream title;
    title << "measattn flow: " << a.scheme << (a.sphere ? ", sphere" : "")
          << (a.unnormalized ? ", unnormalized" : "") << ", n = " << n << ", d = " << d
          << ", T = " << a.time;
    if (builtin) title << ", beta = " << a.beta;
    const std::string path = (fs::path(dir) / "trajectories.png").string();
    if (plot_trajectories(r.frames, path, title.str())) png = "trajectories.png";
  }
  std::ostringstream fp;
  fp << std::hex << std::setw(16) << std::setfill('0') << flow_fingerprint(model, *mu, options);
  nlohmann::json summary = {
      {"command", "flow"},
      {"model", builtin ? nlohmann::json("builtin sa") : nlohmann::json(a.model)},
      {"canonical", canonical},
      {"beta", canonical ? nlohmann::json(beta) : nlohmann::json(nullptr)},
      {"tokens", a.tokens},
      {"n", n},
      {"d", d},
      {"scheme", to_string(scheme)},
      {"field", to_string(options.field)},
      {"sphere", a.sphere},
      {"time_requested", a.time},
      {"time", r.time},
      {"steps_requested",
       scheme == FlowScheme::dopri5 ? nlohmann::json(nullptr) : nlohmann::json(a.steps)},
      {"tolerance", scheme == FlowScheme::dopri5 ? nlohmann::json(a.tol) : nlohmann::json(nullptr)},
      {"steps", r.steps},
      {"rejected_steps", r.rejected},
      {"field_evaluations", r.evaluations},
      {"status", to_string(r.status)},
      {"message", r.message},
      {"resumed", r.resumed},
      {"resumed_from_step", r.resumed_from_step},
      {"save_every", a.save_every},
      {"cluster_tolerance", a.cluster_tol},
      {"energy_defined", canonical},
      {"energy_formula", "E_beta = 1/(2 beta) sum_ij w_i w_j exp(beta <x_i, x_j>)"},
      {"frames", frames},
      {"fingerprint", fp.str()},
      {"seconds", seconds},
      {"outputs",
       {{"final", "final.npy"},
        {"trajectory",
         a.save_every > 0 ? nlohmann::json("trajectory.npy") : nlohmann::json(nullptr)},
        {"plot", png.empty() ? nlohmann::json(nullptr) : nlohmann::json(png)}}}};
  write_file_atomic((fs::path(dir) / "summary.json").string(), summary.dump(2) + "\n");
  std::vector<std::string> keep = {"final.npy", "summary.json", "checkpoint.bin"};
  if (a.save_every > 0) keep.push_back("trajectory.npy");
  if (!png.empty()) keep.push_back(png);
  out.finish(keep);
}

const bool registered = register_command(
    "flow",
    "Run tokens as interacting particles: dx_i/dt = Gamma_mu(x_i) (deep weight-shared attention)",
    [](CLI::App& app) {
      auto a = std::make_shared<FlowArgs>();
      std::vector<FieldFlag> fields = token_fields(&a->tokens, &a->weights);
      for (auto& row : model_fields("--model", &a->model)) fields.push_back(row);
      // FlowOptions::validate names its fields; the flags that set them.
      for (const auto& [field, flag] : std::vector<std::pair<std::string, std::string>>{
               {"time", "--time"},
               {"steps", "--steps"},
               {"scheme", "--scheme"},
               {"tolerance", "--tol"},
               {"save_every", "--save-every"},
               {"cluster_tolerance", "--cluster-tol"},
               {"checkpoint_every", "--checkpoint-every"},
               {"field", "--unnormalized"}})
        fields.push_back({field, flag});
      register_fields(app, std::move(fields));
      app.add_option("--model", a->model, "Model: safetensors with nn.MultiheadAttention weights");
      app.add_option("--builtin", a->builtin,
                     "Built-in model instead of --model: sa (V = I, G(x,y) = beta <x,y>)");
      app.add_option("--beta", a->beta, "Inverse temperature of --builtin sa");
      app.add_option("--tokens", a->tokens, "Starting particles: n x d .npy")->required();
      app.add_option("--weights", a->weights, "Particle weights: length-n .npy (default uniform)");
      app.add_option("--time", a->time, "Final time T")->required();
      app.add_option("--steps", a->steps,
                     "Number of steps L (h = T/L; Euler = an L-layer weight-shared residual net)");
      app.add_option("--scheme", a->scheme, "euler | heun | rk4 | dopri5")->capture_default_str();
      app.add_option("--tol", a->tol, "dopri5 tolerance (atol = rtol)")->capture_default_str();
      app.add_flag("--sphere", a->sphere,
                   "Layer-norm dynamics on the unit sphere (starts are normalized)");
      app.add_flag("--unnormalized", a->unnormalized,
                   "Unnormalized field P_x(sum_j w_j e^{beta<x,x_j>} x_j) (--builtin sa --sphere)");
      app.add_option("--save-every", a->save_every,
                     "Save a frame every K steps (DIR/trajectory.npy; frame 0 the start)");
      app.add_option("--checkpoint-every", a->checkpoint_every,
                     "Write DIR/checkpoint.bin every K steps");
      app.add_flag("--resume", a->resume, "Continue from DIR/checkpoint.bin");
      app.add_option("--cluster-tol", a->cluster_tol,
                     "Distance under which particles count as one cluster (0 = no counts)")
          ->capture_default_str();
      app.add_flag("--no-plot", a->no_plot, "Do not draw DIR/trajectories.png");
      app.add_option("--out", a->out, "Output directory")->required();
      app.callback([a] { run_flow(*a); });
    });

}  // namespace
}  // namespace measattn::cli
