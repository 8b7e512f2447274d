// measattn flow — tokens as interacting particles: the infinitely deep
// weight-shared attention network as an ODE on measures (docs/theory.md#flow).
//
//   measattn flow (--model M.safetensors | --builtin sa --beta B) --tokens X0.npy
//                 [--weights w.npy] --time T [--steps L] [--scheme euler|heun|rk4|dopri5]
//                 [--tol TOL] [--sphere | --norm none|post|pre] [--causal]
//                 [--normalization softmax|sinkhorn --sinkhorn-iterations K]
//                 [--unnormalized] [--save-every K]
//                 [--checkpoint-every K] [--resume] [--cluster-tol EPS] [--no-plot] --out DIR
//
// Writes DIR/final.npy (n x d), DIR/trajectory.npy (frames x n x d, frame 0 the
// start; with --save-every), DIR/summary.json and DIR/trajectories.png (gnuplot;
// d > 2 projected on the top-2 principal directions of all saved points).
// --checkpoint-every K writes DIR/checkpoint.bin every K accepted steps; --resume
// continues from it (refused, exit 2, if it was written for other arguments).
// With --norm, --causal or --normalization sinkhorn the frames also report the
// clustering (mean 1 - cos over pairs, and to token 0), in summary.json and
// DIR/cosines.csv, plotted in DIR/cosines.png (log-log); from an equiangular
// start of the canonical model the ODE reference (equiangular_reference) is
// written and drawn beside it.
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
  std::string model, builtin, tokens, weights, out;
  double beta = 0;
  bool unnormalized = false, no_plot = false;
  FlowOptions options;  ///< bound to the flags through its field table (flow.hpp)
  OptionBinder binder;
  const CLI::Option* steps = nullptr;                ///< --steps, to tell whether it was given
  const CLI::Option* sinkhorn_iterations = nullptr;  ///< --sinkhorn-iterations, likewise
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
  const Eigen::MatrixXd basis = d <= 2 ? Eigen::MatrixXd(Eigen::MatrixXd::Identity(d, d))
                                       : principal_directions<Eigen::MatrixXd>(frames, 2);
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

// Clustering observables of one frame, O(n d) and without cancellation: the
// mean over pairs of 1 - cos(x_i, x_j) is sum_i |u_i - u_mean|^2 / (n - 1) for
// the directions u_i = x_i / |x_i| (u = 0 at the origin), and the mean over
// i >= 1 of 1 - cos(x_i, x_0) is the mean of |u_i - u_0|^2 / 2.
struct Clustering {
  double one_minus_cosine = 0, one_minus_cosine_to_first = 0;
};

Eigen::MatrixXd directions(const MatrixD& x) {
  Eigen::MatrixXd u(x.rows(), x.cols());
  for (Index i = 0; i < x.rows(); ++i) {
    const double norm = x.row(i).stableNorm();
    u.row(i) = norm > 0 ? Eigen::RowVectorXd(x.row(i) / norm) : Eigen::RowVectorXd::Zero(x.cols());
  }
  return u;
}

Clustering clustering(const MatrixD& x) {
  Clustering c;
  const Index n = x.rows();
  if (n < 2) return c;
  const Eigen::MatrixXd u = directions(x);
  const Eigen::RowVectorXd mean = u.colwise().mean();
  c.one_minus_cosine = (u.rowwise() - mean).squaredNorm() / static_cast<double>(n - 1);
  c.one_minus_cosine_to_first =
      (u.bottomRows(n - 1).rowwise() - u.row(0)).squaredNorm() / (2.0 * static_cast<double>(n - 1));
  return c;
}

// (rho0, r0) when the start is equiangular: n >= 2 tokens of one norm r0 (to
// 1e-12 relative; any norms when `directions_only`, the sphere normalizes the
// starts) and one pairwise cosine rho0 (to 1e-12); at most 4000 tokens are
// examined (O(n^2 d)).
bool equiangular(const MatrixD& x, bool directions_only, double* rho0, double* r0) {
  const Index n = x.rows();
  if (n < 2 || n > 4000) return false;
  const Eigen::VectorXd norms = x.rowwise().norm();
  const double r = directions_only ? 1.0 : norms.mean();
  if (!(norms.minCoeff() > 0)) return false;
  if (!directions_only && (norms.array() - r).abs().maxCoeff() > 1e-12 * r) return false;
  const Eigen::MatrixXd u = directions(x);
  const Eigen::MatrixXd gram = u * u.transpose();
  const double rho = gram(0, 1);
  for (Index i = 0; i < n; ++i)
    for (Index j = i + 1; j < n; ++j)
      if (std::abs(gram(i, j) - rho) > 1e-12) return false;
  if (!(rho * static_cast<double>(n - 1) >= -1)) return false;
  *rho0 = std::min(rho, 1.0);
  *r0 = r;
  return true;
}

// 1 - cos against t on log-log axes (t > 0), particles and, when given, the ODE.
bool plot_cosines(const std::vector<double>& t, const std::vector<Clustering>& c,
                  const std::vector<double>& reference, bool causal, const std::string& png,
                  const std::string& title) {
  std::ostringstream script;
  script << std::setprecision(12) << "$c << EOD\n";
  size_t rows = 0;
  for (size_t f = 0; f < t.size(); ++f) {
    if (!(t[f] > 0) || !(c[f].one_minus_cosine > 0) || !(c[f].one_minus_cosine_to_first > 0))
      continue;
    script << t[f] << " " << c[f].one_minus_cosine << " " << c[f].one_minus_cosine_to_first << " "
           << (f < reference.size() && reference[f] > 0 ? reference[f] : 0.0) << "\n";
    ++rows;
  }
  if (rows == 0) return false;
  script << "EOD\n"
         << "set termoption noenhanced\n"
         << "set title " << gnuplot_quote(title) << "\n"
         << "set logscale xy\nset format y '%.0e'\nset key bottom left\n"
         << "set xlabel 't'\nset ylabel '1 - cos'\n"
         << "plot $c using 1:2 with linespoints pt 7 ps 0.4 lc rgb '#1f77b4' title "
         << "'1 - rho: mean over pairs'";
  if (causal) {
    script << ", $c using 1:3 with linespoints pt 5 ps 0.4 lc rgb '#d62728' title "
           << "'1 - cos(x_i, x_0): the pull of token 0'";
  }
  if (!reference.empty()) {
    script << ", $c using 1:($4 > 0 ? $4 : 1/0) with lines lw 2 dt 2 lc rgb '#2ca02c' title "
           << "'equiangular ODE (equiangular_reference)'";
  }
  script << "\n";
  try {
    render_png(png, script.str(), 900, 700);
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

void run_flow(FlowArgs& a) {
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
  a.binder.apply();  // --scheme
  FlowOptions options = a.options;
  const FlowScheme scheme = options.scheme;
  const bool steps_given = a.steps->count() > 0;
  // The fixed-step schemes need the number of steps from the user (the
  // library's default is not a choice the CLI makes for them); dopri5 ignores it.
  if (scheme != FlowScheme::dopri5 && !steps_given) {
    throw invalid_argument("--steps: the " + to_string(scheme) + " scheme needs --steps L >= 1");
  }
  if (scheme == FlowScheme::dopri5)
    options.steps = steps_given && options.steps != 0 ? options.steps : 1;
  if (options.attention.normalization == Normalization::sinkhorn &&
      a.sinkhorn_iterations->count() == 0) {
    throw invalid_argument(
        "--sinkhorn-iterations: --normalization sinkhorn needs --sinkhorn-iterations K >= 1 "
        "(0 iterations is softmax attention)");
  }
  const NormPlacement norm = options.placement();
  if (a.unnormalized && (!builtin || norm != NormPlacement::post)) {
    throw invalid_argument(
        "--unnormalized: the unnormalized field needs the canonical model and the sphere "
        "(--builtin sa --beta B --sphere)");
  }
  if (a.unnormalized && a.beta > 700) {
    throw invalid_argument("--beta: the unnormalized field overflows (exp(beta)) for beta > 700");
  }
  namespace fs = std::filesystem;
  const std::string checkpoint = (fs::path(a.out) / "checkpoint.bin").string();
  options.field = a.unnormalized ? FlowField::unnormalized : FlowField::attention;
  options.checkpoint_path = checkpoint;
  // Under mpirun the ranks split each stage's field (docs/distributed.md);
  // rank 0 alone shows progress and writes the outputs and checkpoints.
  options.attention.communicator = communicator();
  options.progress = writes_outputs();
  // Without --save-every the summary still reports the start and the end.
  const Index save_every = options.save_every;
  if (options.save_every == 0) options.save_every = std::numeric_limits<Index>::max();
  options.validate();

  // The output directory is checked before any work: created (last component
  // only) when the results are written, or now when checkpoints go into it.
  OutputDirectory out(a.out, "flow", "--out");
  const std::vector<std::string> owned = {"final.npy",        "trajectory.npy", "summary.json",
                                          "trajectories.png", "checkpoint.bin", "cosines.csv",
                                          "cosines.png"};
  std::error_code ec;
  if (options.resume && !fs::exists(checkpoint, ec)) {
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
  if (norm == NormPlacement::post) {
    for (Index i = 0; i < n; ++i) {
      if (!(mu->atoms().row(i).stableNorm() > 0)) {
        throw invalid_argument("--tokens: " + a.tokens + ": token " + std::to_string(i) +
                               " is zero and cannot be put on the unit sphere (--sphere)");
      }
    }
  }

  std::string dir;
  if ((options.checkpoint_every > 0 || options.resume) && writes_outputs()) {
    dir = out.open_in_place(owned);
  }
  const auto started = std::chrono::steady_clock::now();
  const FlowResult<double> r = flow(model, *mu, options);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  if (r.status == Status::non_finite) {
    throw invalid_argument("--time: " + r.message + "; nothing written (try smaller steps)");
  }

  // ---- outputs ----------------------------------------------------------------
  if (!writes_outputs()) return;  // rank 0 writes (the ranks hold the same result)
  if (dir.empty()) dir = out.open_in_place(owned);
  write_npy((fs::path(dir) / "final.npy").string(), r.particles);
  if (save_every > 0) {
    std::vector<double> values;
    values.reserve(r.frames.size() * static_cast<size_t>(n * d));
    for (const auto& f : r.frames) values.insert(values.end(), f.data(), f.data() + f.size());
    write_npy((fs::path(dir) / "trajectory.npy").string(), values,
              {static_cast<std::int64_t>(r.frames.size()), static_cast<std::int64_t>(n),
               static_cast<std::int64_t>(d)});
  }
  double beta = 0;
  const bool canonical = is_canonical(model, &beta);
  // The new variants report their clustering per frame (the outputs of the
  // flows that existed before them are unchanged).
  const bool variant = options.norm != NormPlacement::none || options.attention.causal ||
                       options.attention.normalization == Normalization::sinkhorn;
  std::vector<Clustering> cl;
  std::vector<double> reference;
  double rho0 = 0, r0 = 1;
  const bool uniform = (r.weights.array() == r.weights[0]).all();
  if (variant) {
    for (const auto& f : r.frames) cl.push_back(clustering(f));
    if (canonical && uniform && !options.attention.causal &&
        options.attention.normalization == Normalization::softmax &&
        equiangular(mu->atoms(), norm == NormPlacement::post, &rho0, &r0)) {
      try {
        for (const auto& s : equiangular_reference(norm, n, beta, rho0, r0, r.frame_times, 2000))
          reference.push_back(s.one_minus_rho);
      } catch (const invalid_argument&) {
        reference.clear();  // the plain flow's norm overflowed: no reference
      }
    }
  }
  nlohmann::json frames = nlohmann::json::array();
  for (size_t f = 0; f < r.frames.size(); ++f) {
    nlohmann::json fr = {{"step", r.frame_steps[f]}, {"time", r.frame_times[f]}};
    if (f < r.energies.size()) fr["energy"] = number_or_null(r.energies[f]);
    if (f < r.cluster_counts.size()) fr["clusters"] = r.cluster_counts[f];
    if (variant) {
      fr["one_minus_cosine"] = cl[f].one_minus_cosine;
      fr["one_minus_cosine_to_first"] = cl[f].one_minus_cosine_to_first;
      if (!reference.empty()) fr["reference_one_minus_cosine"] = reference[f];
    }
    frames.push_back(fr);
  }
  std::string cosines_png;
  if (variant) {
    std::ostringstream csv;
    csv << std::setprecision(17)
        << "step,time,one_minus_cosine,one_minus_cosine_to_first,reference_one_minus_cosine\n";
    for (size_t f = 0; f < r.frames.size(); ++f) {
      csv << r.frame_steps[f] << "," << r.frame_times[f] << "," << cl[f].one_minus_cosine << ","
          << cl[f].one_minus_cosine_to_first << ",";
      if (!reference.empty()) csv << reference[f];
      csv << "\n";
    }
    write_file_atomic((fs::path(dir) / "cosines.csv").string(), csv.str());
    if (!a.no_plot) {
      std::ostringstream title;
      title << "measattn flow: norm " << to_string(norm)
            << (options.attention.causal ? ", causal" : "")
            << (options.attention.normalization == Normalization::sinkhorn ? ", sinkhorn" : "")
            << ", n = " << n << ", d = " << d;
      if (builtin) title << ", beta = " << a.beta;
      if (!reference.empty()) title << ", equiangular start rho0 = " << rho0;
      const std::string path = (fs::path(dir) / "cosines.png").string();
      if (plot_cosines(r.frame_times, cl, reference, options.attention.causal, path, title.str()))
        cosines_png = "cosines.png";
    }
  }
  std::string png;
  if (!a.no_plot) {
    std::ostringstream title;
    title << "measattn flow: " << to_string(scheme)
          << (norm == NormPlacement::post  ? ", sphere"
              : norm == NormPlacement::pre ? ", pre-LN"
                                           : "")
          << (options.attention.causal ? ", causal" : "")
          << (options.attention.normalization == Normalization::sinkhorn ? ", sinkhorn" : "")
          << (a.unnormalized ? ", unnormalized" : "") << ", n = " << n << ", d = " << d
          << ", T = " << options.time;
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
      {"sphere", norm == NormPlacement::post},
      {"time_requested", options.time},
      {"time", r.time},
      {"steps_requested",
       scheme == FlowScheme::dopri5 ? nlohmann::json(nullptr) : nlohmann::json(options.steps)},
      {"tolerance",
       scheme == FlowScheme::dopri5 ? nlohmann::json(options.tolerance) : nlohmann::json(nullptr)},
      {"steps", r.steps},
      {"rejected_steps", r.rejected},
      {"field_evaluations", r.evaluations},
      {"status", to_string(r.status)},
      {"message", r.message},
      {"resumed", r.resumed},
      {"resumed_from_step", r.resumed_from_step},
      {"save_every", save_every},
      {"cluster_tolerance", options.cluster_tolerance},
      {"energy_defined", canonical},
      {"energy_formula", "E_beta = 1/(2 beta) sum_ij w_i w_j exp(beta <x_i, x_j>)"},
      {"frames", frames},
      {"fingerprint", fp.str()},
      {"seconds", seconds},
      {"outputs",
       {{"final", "final.npy"},
        {"trajectory", save_every > 0 ? nlohmann::json("trajectory.npy") : nlohmann::json(nullptr)},
        {"plot", png.empty() ? nlohmann::json(nullptr) : nlohmann::json(png)}}}};
  if (variant) {
    summary["norm"] = to_string(norm);
    summary["causal"] = options.attention.causal;
    summary["normalization"] = to_string(options.attention.normalization);
    summary["sinkhorn_iterations"] = options.attention.sinkhorn_iterations;
    summary["equiangular_start"] =
        reference.empty() ? nlohmann::json(nullptr) : nlohmann::json({{"rho0", rho0}, {"r0", r0}});
    summary["outputs"]["cosines"] = "cosines.csv";
    summary["outputs"]["cosines_plot"] =
        cosines_png.empty() ? nlohmann::json(nullptr) : nlohmann::json(cosines_png);
  }
  write_file_atomic((fs::path(dir) / "summary.json").string(), summary.dump(2) + "\n");
  std::vector<std::string> keep = {"final.npy", "summary.json", "checkpoint.bin"};
  if (save_every > 0) keep.push_back("trajectory.npy");
  if (!png.empty()) keep.push_back(png);
  if (variant) keep.push_back("cosines.csv");
  if (!cosines_png.empty()) keep.push_back(cosines_png);
  out.finish(keep);
}

const bool registered = register_command(
    "flow",
    "Run tokens as interacting particles: dx_i/dt = Gamma_mu(x_i) (deep weight-shared attention)",
    [](CLI::App& app) {
      auto a = std::make_shared<FlowArgs>();
      std::vector<FieldFlag> fields = token_fields(&a->tokens, &a->weights);
      for (auto& row : model_fields("--model", &a->model)) fields.push_back(row);
      // FlowOptions' fields; --unnormalized sets `field`.
      fields.push_back({"field", "--unnormalized"});
      register_fields(app, std::move(fields));
      app.add_option("--model", a->model, "Model: safetensors with nn.MultiheadAttention weights");
      app.add_option("--builtin", a->builtin,
                     "Built-in model instead of --model: sa (V = I, G(x,y) = beta <x,y>)");
      app.add_option("--beta", a->beta, "Inverse temperature of --builtin sa");
      app.add_option("--tokens", a->tokens, "Starting particles: n x d .npy")->required();
      app.add_option("--weights", a->weights, "Particle weights: length-n .npy (default uniform)");
      a->binder.bind(
          app, a->options,
          {"time", "steps", "scheme", "tolerance", "sphere", "norm", "causal", "normalization",
           "sinkhorn_iterations", "save_every", "cluster_tolerance", "checkpoint_every", "resume"},
          {{"tolerance", {"--tol"}}, {"cluster_tolerance", {"--cluster-tol"}}});
      app.get_option("--time")->required();
      a->steps = app.get_option("--steps");
      a->sinkhorn_iterations = app.get_option("--sinkhorn-iterations");
      app.add_flag("--unnormalized", a->unnormalized,
                   "Unnormalized field P_x(sum_j w_j e^{beta<x,x_j>} x_j) (--builtin sa --sphere)");
      app.add_flag("--no-plot", a->no_plot, "Do not draw DIR/trajectories.png");
      app.add_option("--out", a->out, "Output directory")->required();
      app.callback([a] { run_flow(*a); });
    });

}  // namespace
}  // namespace measattn::cli
