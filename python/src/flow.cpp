// Bindings of flow.hpp: measattn.flow(...) -> FlowResult, flow_field, energies.
#include "measattn/flow.hpp"
#include "convert.hpp"
#include "measattn/interrupt.hpp"
#include "progress_arg.hpp"

namespace measattn::python {
namespace {

using namespace pybind11::literals;

/// FlowResult with its arrays already converted (float32 or float64).
struct PyFlowResult {
  py::object particles, weights, frames;
  double time = 0;
  Index steps = 0, rejected = 0, evaluations = 0;
  std::string status, message;
  bool resumed = false;
  Index resumed_from_step = 0;
  py::object frame_times, frame_steps, energies, cluster_counts;
};

template <class Scalar>
PyFlowResult convert(FlowResult<Scalar>&& r) {
  PyFlowResult out;
  out.particles = to_numpy(std::move(r.particles));
  out.weights = to_numpy(std::move(r.weights));
  const auto frames = static_cast<py::ssize_t>(r.frames.size());
  const py::ssize_t n = frames ? r.frames[0].rows() : 0;
  const py::ssize_t d = frames ? r.frames[0].cols() : 0;
  py::array_t<Scalar> stack({frames, n, d});
  Scalar* dst = stack.mutable_data();
  for (const auto& f : r.frames) dst = std::copy(f.data(), f.data() + f.size(), dst);
  out.frames = stack;
  out.time = r.time;
  out.steps = r.steps;
  out.rejected = r.rejected;
  out.evaluations = r.evaluations;
  out.status = to_string(r.status);
  out.message = r.message;
  out.resumed = r.resumed;
  out.resumed_from_step = r.resumed_from_step;
  out.frame_times = to_numpy(r.frame_times);
  std::vector<std::int64_t> steps(r.frame_steps.begin(), r.frame_steps.end());
  out.frame_steps = to_numpy(steps);
  out.energies = to_numpy(r.energies);
  std::vector<std::int64_t> counts(r.cluster_counts.begin(), r.cluster_counts.end());
  out.cluster_counts = to_numpy(counts);
  return out;
}

template <class Scalar>
PyFlowResult run_flow(const PyModel& pm, const py::handle& tokens, const py::handle& weights,
                      const FlowOptions& options) {
  ModelArg<Scalar> model(pm);
  MeasureArg<Scalar> mu(tokens, weights);
  FlowResult<Scalar> r;
  {
    py::gil_scoped_release release;
    r = flow(model.get(), mu.get(), options);
  }
  return convert(std::move(r));
}

constexpr const char* kFlowDoc = R"doc(
Self-attention as interacting particles: integrates

    dx_i/dt = Gamma_{mu_t}(x_i),   mu_t = sum_i w_i delta_{x_i(t)},

from the tokens (n, d) (or a Measure) to time T. Explicit Euler with L steps of
h = T / L is the weight-shared residual network x <- x + h Gamma_mu(x).

model:   a Model with d_q = d_kv = d_out = d (e.g. Model.canonical(d, beta)).
weights: (n,) particle weights (fixed along the flow); None = uniform.
time: T > 0.  steps: L (fixed-step schemes).  scheme: "euler", "heun", "rk4",
"dopri5" (adaptive, atol = rtol = tolerance; max_steps, initial_step).
sphere: layer-norm dynamics on the unit sphere (f = P_x Gamma, renormalized).
field: "attention" or "unnormalized" (canonical model on the sphere only).
save_every: keep a frame every k accepted steps (0 = none; frame 0 = start,
the final state always). cluster_tolerance: cluster count per frame (0 = none).
checkpoint_every / checkpoint_path / resume: atomic checkpoints; a resumed
run ends bit-identical to an uninterrupted one.

Ctrl-C raises KeyboardInterrupt between steps. Returns a FlowResult.
Cost: O(L s n^2 d) for s field evaluations per step.
)doc";

}  // namespace

void bind_flow(py::module_& m) {
  py::class_<PyFlowResult>(m, "FlowResult", "The result of measattn.flow.")
      .def_readonly("particles", &PyFlowResult::particles, "(n, d) particles at `time`.")
      .def_readonly("weights", &PyFlowResult::weights, "(n,) normalized weights.")
      .def_readonly("frames", &PyFlowResult::frames,
                    "(F, n, d) saved frames (F = 0 when save_every = 0).")
      .def_readonly("frame_times", &PyFlowResult::frame_times)
      .def_readonly("frame_steps", &PyFlowResult::frame_steps)
      .def_readonly("energies", &PyFlowResult::energies,
                    "E_beta per frame (canonical model only, else empty).")
      .def_readonly("cluster_counts", &PyFlowResult::cluster_counts)
      .def_readonly("time", &PyFlowResult::time, "Time reached (T when completed).")
      .def_readonly("steps", &PyFlowResult::steps, "Accepted steps.")
      .def_readonly("rejected", &PyFlowResult::rejected, "dopri5 rejected steps.")
      .def_readonly("evaluations", &PyFlowResult::evaluations, "Field evaluations.")
      .def_readonly(
          "status", &PyFlowResult::status,
          "\"completed\", \"iteration_limit\", \"step_size_underflow\", \"non_finite\" or "
          "\"interrupted\" (measattn/status.hpp).")
      .def_readonly("message", &PyFlowResult::message)
      .def_readonly("resumed", &PyFlowResult::resumed)
      .def_readonly("resumed_from_step", &PyFlowResult::resumed_from_step)
      .def("__repr__", [](const PyFlowResult& r) {
        return "FlowResult(time=" + py::repr(py::float_(r.time)).cast<std::string>() +
               ", steps=" + std::to_string(r.steps) + ", status='" + r.status + "')";
      });

  const FlowOptions defaults;  // the keywords' defaults (never copies)
  m.def(
      "flow",
      [](const PyModel& model, const py::object& tokens, const py::object& weights, double time,
         Index steps, const std::string& scheme, double tolerance, Index max_steps,
         double initial_step, bool sphere, const std::string& field, Index save_every,
         double cluster_tolerance, Index checkpoint_every, const std::string& checkpoint_path,
         bool resume, const py::object& progress, Index query_block, Index key_block,
         const py::object& dtype) {
        FlowOptions o;
        o.time = time;
        o.steps = steps;
        o.scheme = parse_flow_scheme(scheme);
        o.tolerance = tolerance;
        o.max_steps = max_steps;
        o.initial_step = initial_step;
        o.sphere = sphere;
        o.field = parse_flow_field(field);
        o.save_every = save_every;
        o.cluster_tolerance = cluster_tolerance;
        o.checkpoint_every = checkpoint_every;
        o.checkpoint_path = checkpoint_path;
        o.resume = resume;
        // progress: None/False, True (tqdm bar or stderr line) or f(done, total); the
        // library's own terminal line (FlowOptions::progress) stays off.
        ProgressArg progress_arg(progress, "flow " + scheme);
        o.progress_callback = progress_arg.callback();
        o.attention.query_block = query_block;
        o.attention.key_block = key_block;
        // Ctrl-C: polled after every accepted step; raises KeyboardInterrupt.
        o.should_stop = [](Index, double) {
          detail::check_interrupt();
          return false;
        };
        o.validate();
        return dispatch(call_dtype(tokens, dtype),
                        [&](auto s) { return run_flow<decltype(s)>(model, tokens, weights, o); });
      },
      // Keywords = FlowOptions' table (flow.hpp), defaults from FlowOptions{}.
      "model"_a, "tokens"_a, "weights"_a = py::none(), "time"_a = defaults.time,
      "steps"_a = defaults.steps, "scheme"_a = to_string(defaults.scheme),
      "tolerance"_a = defaults.tolerance, "max_steps"_a = defaults.max_steps,
      "initial_step"_a = defaults.initial_step, "sphere"_a = defaults.sphere,
      "field"_a = to_string(defaults.field), "save_every"_a = defaults.save_every,
      "cluster_tolerance"_a = defaults.cluster_tolerance,
      "checkpoint_every"_a = defaults.checkpoint_every,
      "checkpoint_path"_a = defaults.checkpoint_path, "resume"_a = defaults.resume,
      "progress"_a = py::none(), "query_block"_a = defaults.attention.query_block,
      "key_block"_a = defaults.attention.key_block, "dtype"_a = py::none(), kFlowDoc);
  register_option_fields("flow", &option_fields_of<FlowOptions>);

  m.def(
      "flow_field",
      [](const PyModel& pm, const py::object& particles, const py::object& weights, bool sphere,
         const std::string& field, const py::object& dtype) {
        FlowOptions o;
        o.sphere = sphere;
        o.field = parse_flow_field(field);
        return dispatch(call_dtype(particles, dtype), [&](auto s) -> py::array {
          using S = decltype(s);
          ModelArg<S> model(pm);
          auto x = matrix_arg<S>(particles, "particles");
          Vector<S> w = weights.is_none() ? Vector<S>(Vector<S>::Constant(x.map.rows(), S(1)))
                                          : vector_copy<S>(weights, "weights");
          Matrix<S> out;
          {
            py::gil_scoped_release release;
            out = flow_field(model.get(), w, MatrixRef<S>(x.map), o);
          }
          return to_numpy(std::move(out));
        });
      },
      "model"_a, "particles"_a, "weights"_a = py::none(), "sphere"_a = false,
      "field"_a = "attention", "dtype"_a = py::none(),
      "The right-hand side f(X), shape (n, d): Gamma_{mu_X}(x_i) (projected on the tangent\n"
      "space of the sphere when sphere=True, or the unnormalized field). weights None =\n"
      "uniform. Streaming, O(n^2 d).");

  m.def(
      "sphere_energy",
      [](const py::object& particles, double beta, const py::object& weights) {
        auto x = matrix_arg<double>(particles, "particles");
        VectorD w =
            weights.is_none()
                ? VectorD(VectorD::Constant(x.map.rows(), 1.0 / static_cast<double>(x.map.rows())))
                : vector_copy<double>(weights, "weights");
        py::gil_scoped_release release;
        return sphere_energy<double>(MatrixRef<double>(x.map), w, beta);
      },
      "particles"_a, "beta"_a, "weights"_a = py::none(),
      "E_beta(mu) = (1 / (2 beta)) sum_ij w_i w_j exp(beta <x_i, x_j>) (non-decreasing along\n"
      "the canonical flow). weights None = uniform.");

  m.def(
      "cluster_count",
      [](const py::object& particles, double tolerance, Index max_points) {
        auto x = matrix_arg<double>(particles, "particles");
        py::gil_scoped_release release;
        return cluster_count(MatrixRef<double>(x.map), tolerance, max_points);
      },
      "particles"_a, "tolerance"_a, "max_points"_a = 20000,
      "Connected components of the graph joining particles at distance <= tolerance.");

  m.def("orthogonal_start_cosine", &orthogonal_start_cosine, "n"_a, "beta"_a, "t"_a,
        "steps"_a = 100000,
        "gamma(t): the common pairwise cosine of n <= d orthogonal unit starts under the\n"
        "canonical flow on the sphere (closed-form ODE, RK4).");

  m.def(
      "is_canonical",
      [](const PyModel& pm) {
        double beta = 0;
        const bool c = std::visit([&](const auto& x) { return is_canonical(x, &beta); }, pm.m);
        return py::make_tuple(c, c ? py::object(py::float_(beta)) : py::object(py::none()));
      },
      "model"_a,
      "(True, beta) when model is the canonical one (one head, Q = K = V = W_O = I, no\n"
      "bias, dot potential), else (False, None).");
}

}  // namespace measattn::python
