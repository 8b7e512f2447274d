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
Self-attention as interacting particles: integrates the tokens along the flow.

    dx_i/dt = Gamma_{mu_t}(x_i),   mu_t = sum_i w_i delta_{x_i(t)},

from the tokens at t = 0 to time T. Explicit Euler with L steps of h = T / L is
the weight-shared residual network x <- x + h Gamma_mu(x) with L layers.

Parameters
----------
model : Model
    With d_q = d_kv = d_out = d (e.g. Model.canonical(d, beta)).
tokens : array_like, shape (n, d), or Measure
    The particles at t = 0 (float32 runs in float32).
weights : array_like, shape (n,), optional
    Particle weights (fixed along the flow); None = uniform.
time : float, default 1.0
    T > 0.
steps : int, default 10
    L, for the fixed-step schemes.
scheme : {"euler", "heun", "rk4", "dopri5"}, default "euler"
    "dopri5": adaptive Dormand-Prince 5(4) with atol = rtol = tolerance,
    max_steps attempted steps and initial_step (0 = automatic).
sphere : bool, default False
    Layer-norm dynamics on the unit sphere: f = P_x Gamma (the starts are
    normalized, every step renormalized). The same as norm="post".
field : {"attention", "unnormalized"}, default "attention"
    "unnormalized": the canonical model on the sphere only.
save_every : int, default 0
    Keep a frame every k accepted steps (0 = none; frame 0 = the start, the
    final state always).
cluster_tolerance : float
    Cluster count per frame at this distance (0 = none).
checkpoint_every, checkpoint_path, resume
    Atomic checkpoints; a resumed run ends bit-identical to an uninterrupted one.
progress : None, bool or callable, optional
    None or False: nothing. A callable progress(done, total) is called after
    every accepted step, with the GIL held: (step, steps) for the fixed-step
    schemes, (floor(1000 t / T), 1000) for dopri5; an exception it raises stops
    the flow and propagates. True: a tqdm bar when tqdm imports, else a line on
    stderr. The result does not depend on it.
query_block, key_block : int, default 0
    Block sizes of the field kernel (0 = automatic; no effect on the result).
dtype : {"float32", "float64"}, optional
communicator : mpi4py communicator, optional (keyword only)
    The ranks that share each stage's field (docs/distributed.md): every rank
    passes the same arguments and gets the same result, bit-identical to one
    process; rank 0 alone writes checkpoints.
norm : {"none", "post", "pre"}, default "none" (keyword only)
    Where the normalization sits: "post" = the sphere dynamics (sphere=True);
    "pre" = tokens in R^d, attention reads x / |x| (a token at the origin is
    read as the origin) and the update is added unnormalized.
causal : bool, default False (keyword only)
    Token i attends to tokens j <= i in every stage: token 0 sees only itself
    (with V = I on the sphere it never moves) and leads the others.
normalization : {"softmax", "sinkhorn"}, default "softmax" (keyword only)
    "sinkhorn": the doubly stochastic kernel every stage (Sinkformer flow;
    one process only, not causal).
sinkhorn_iterations : int, default 0 (keyword only)
    Sinkhorn iterations beyond softmax (0 = softmax).

Returns
-------
FlowResult
    The particles at the time reached (a numerical solution of the ODE: exact
    arithmetic of the scheme, not a bound), the frames, and a status.

Notes
-----
Cost O(L s n^2 d) for s field evaluations per step (1, 2, 4, 6-7). Ctrl-C
raises KeyboardInterrupt between steps. The same result whatever the thread
count. On the sphere the canonical flow increases the energy
E_beta = (1/(2 beta)) sum_ij w_i w_j exp(beta <x_i, x_j>) (sphere_energy) and
the tokens cluster.

Examples
--------
>>> model = measattn.Model.canonical(3, beta=1.0)
>>> x = np.random.default_rng(0).normal(size=(8, 3))
>>> r = measattn.flow(model, x, time=1.0, steps=20, sphere=True, save_every=5)
>>> r
FlowResult(time=1.0, steps=20, status='completed')
>>> r.frames.shape, r.frame_times
((5, 8, 3), array([0.  , 0.25, 0.5 , 0.75, 1.  ]))
>>> r.energies
array([0.635965, 0.643048, 0.651089, 0.660276, 0.670849])
>>> long = measattn.flow(model, x, time=10.0, scheme="dopri5", sphere=True,
...                      save_every=50, cluster_tolerance=1e-3)
>>> long.status, long.cluster_counts
('completed', array([8, 3]))
>>> seen = []
>>> _ = measattn.flow(model, x, steps=4, progress=lambda done, total: seen.append(done))
>>> seen
[1, 2, 3, 4]
>>> lead = measattn.flow(model, x, time=5.0, steps=50, norm="post", causal=True)
>>> float(np.abs(lead.particles[0] - x[0] / np.linalg.norm(x[0])).max()) < 1e-15  # token 0 stays
True

References
----------
Geshkovski, Letrouit, Polyanskiy and Rigollet, "A mathematical perspective on
Transformers" (2023); docs/theory.md, section "Tokens as interacting particles"
(and its "Numerics" for the schemes).
)doc";

constexpr const char* kFlowResultDoc = R"doc(
The result of measattn.flow.

Attributes
----------
particles : numpy.ndarray, shape (n, d)
    The particles at `time`.
weights : numpy.ndarray, shape (n,)
    The normalized weights (fixed along the flow).
frames : numpy.ndarray, shape (F, n, d)
    Saved frames (F = 0 when save_every = 0), at frame_times / frame_steps.
energies, cluster_counts : numpy.ndarray, shape (F,)
    E_beta per frame (canonical model only, else empty) and cluster counts.
time, steps, rejected, evaluations
    Time reached, accepted steps, dopri5 rejected steps, field evaluations.
status, message : str
    "completed", "iteration_limit", "step_size_underflow", "non_finite" or
    "interrupted", and what happened.

Examples
--------
>>> r = measattn.flow(measattn.Model.canonical(2, 1.0), np.eye(2), steps=3, save_every=1)
>>> r.frame_steps, r.evaluations
(array([0, 1, 2, 3]), 3)
)doc";

constexpr const char* kFlowFieldDoc = R"doc(
The right-hand side f(X) of the flow at the particles X.

    f(x_i) = Gamma_{mu_X}(x_i),  mu_X = sum_j w_j delta_{x_j}
    (sphere=True: P_{x_i} Gamma = Gamma - <Gamma, x_i> x_i)

Parameters
----------
model : Model
particles : array_like, shape (n, d)
weights : array_like, shape (n,), optional
    None = uniform.
sphere : bool, default False
    Project on the tangent space of the sphere.
field : {"attention", "unnormalized"}, default "attention"
dtype : {"float32", "float64"}, optional
norm, causal, normalization, sinkhorn_iterations : keyword only
    As in measattn.flow ("pre": the attention field of x / |x|).

Returns
-------
numpy.ndarray, shape (n, d)
    The field (streaming, O(n^2 d); the value computed, not a bound).

Examples
--------
>>> model = measattn.Model.canonical(2, beta=1.0)
>>> measattn.flow_field(model, np.eye(2))
array([[0.731059, 0.268941],
       [0.268941, 0.731059]])
>>> measattn.flow_field(model, np.eye(2), sphere=True)
array([[0.      , 0.268941],
       [0.268941, 0.      ]])
)doc";

constexpr const char* kSphereEnergyDoc = R"doc(
The interaction energy of the canonical flow on the sphere.

    E_beta(mu) = (1 / (2 beta)) sum_ij w_i w_j exp(beta <x_i, x_j>)

Non-decreasing along the canonical flow on the sphere (docs/theory.md, "Layer
norm: dynamics on the sphere").

Parameters
----------
particles : array_like, shape (n, d)
beta : float
weights : array_like, shape (n,), optional
    None = uniform.

Returns
-------
float
    The exact sum (computed in float64).

Examples
--------
>>> round(measattn.sphere_energy(np.eye(2), beta=1.0), 6)
0.92957
>>> round((2 * np.e + 2) / 8, 6)
0.92957
)doc";

constexpr const char* kClusterCountDoc = R"doc(
The number of clusters of the particles.

Connected components of the graph joining particles at distance <= tolerance.

Parameters
----------
particles : array_like, shape (n, d)
tolerance : float
max_points : int, default 20000
    Larger inputs are refused (O(n^2) pairs).

Returns
-------
int

Examples
--------
>>> measattn.cluster_count([[0.0, 0.0], [0.001, 0.0], [1.0, 0.0]], tolerance=0.01)
2
)doc";

constexpr const char* kOrthogonalStartDoc = R"doc(
The common pairwise cosine gamma(t) of n orthogonal unit starts.

Under the canonical flow on the sphere, n <= d orthonormal starts keep equal
pairwise cosines gamma(t), the solution of a scalar ODE (integrated with RK4 in
`steps` steps): a closed form the flows are tested against.

Parameters
----------
n : int
beta : float
t : float
steps : int, default 100000

Returns
-------
float
    gamma(t), with gamma(0) = 0, increasing to 1.

Examples
--------
>>> round(measattn.orthogonal_start_cosine(3, beta=1.0, t=0.0), 6)
0.0
>>> round(measattn.orthogonal_start_cosine(3, beta=1.0, t=1.0), 6)
0.523677

References
----------
docs/theory.md, "Layer norm: dynamics on the sphere".
)doc";

constexpr const char* kEquiangularDoc = R"doc(
The equiangular-start reference of the flow under each normalization placement.

n tokens r0 u_i (unit u_i, pairwise cosine rho0), uniform weights, the
canonical model with beta: every variant keeps them equiangular with one norm
r(t). With E = exp(-b (1 - rho)), b = beta (post, pre) or beta r^2 (none),
c = E / (1 + (n-1) E), s = 1 + (n-1) rho, g = 1 - (n-1) (1 - rho) c:

    rho' = 2 c s (1 - rho) / (r if norm == "pre" else 1)
    r'   = 0 ("post"), g ("pre"), r g ("none")

integrated for (1 - rho, r) by RK4 with `steps` steps between consecutive times.

Parameters
----------
norm : {"post", "pre", "none"}
n : int
    n >= 2.
beta : float
rho0 : float
    In [-1/(n-1), 1].
times : array_like, shape (k,)
    Non-decreasing, >= 0.
r0 : float, default 1.0
    The common starting norm (post: 1).
steps : int, default 100000

Returns
-------
dict
    "t", "rho", "one_minus_rho" (computed as such, no cancellation) and
    "norm", arrays of shape (k,).

Examples
--------
>>> ref = measattn.equiangular_reference("post", 3, 1.0, 0.0, [1.0], steps=1000)
>>> round(float(ref["rho"][0]), 6) == round(measattn.orthogonal_start_cosine(3, 1.0, 1.0), 6)
True
>>> pre = measattn.equiangular_reference("pre", 6, 1.0, 0.2, [100.0, 1000.0], steps=2000)
>>> np.round(np.log(pre["one_minus_rho"][1] / pre["one_minus_rho"][0]) / np.log(10), 2)
-2.0

References
----------
docs/theory.md, "Normalization placements from an equiangular start".
)doc";

constexpr const char* kIsCanonicalDoc = R"doc(
Whether `model` is the canonical one, and its beta.

Returns
-------
tuple
    (True, beta) when model has one head, Q = K = V = W_O = I, no bias and the
    dot potential; else (False, None).

Examples
--------
>>> measattn.is_canonical(measattn.Model.canonical(3, beta=4.0))
(True, 4.0)
>>> measattn.is_canonical(measattn.Model.random(3))
(False, None)
)doc";

}  // namespace

void bind_flow(py::module_& m) {
  py::class_<PyFlowResult>(m, "FlowResult", kFlowResultDoc)
      .def_readonly("particles", &PyFlowResult::particles, "(n, d) particles at `time`.")
      .def_readonly("weights", &PyFlowResult::weights, "(n,) normalized weights.")
      .def_readonly("frames", &PyFlowResult::frames,
                    "(F, n, d) saved frames (F = 0 when save_every = 0).")
      .def_readonly("frame_times", &PyFlowResult::frame_times, "(F,) times of the frames.")
      .def_readonly("frame_steps", &PyFlowResult::frame_steps,
                    "(F,) accepted steps of the frames (int64).")
      .def_readonly("energies", &PyFlowResult::energies,
                    "E_beta per frame (canonical model only, else empty).")
      .def_readonly("cluster_counts", &PyFlowResult::cluster_counts,
                    "(F,) clusters per frame at cluster_tolerance (int64; empty when 0).")
      .def_readonly("time", &PyFlowResult::time, "Time reached (T when completed).")
      .def_readonly("steps", &PyFlowResult::steps, "Accepted steps.")
      .def_readonly("rejected", &PyFlowResult::rejected, "dopri5 rejected steps.")
      .def_readonly("evaluations", &PyFlowResult::evaluations, "Field evaluations.")
      .def_readonly(
          "status", &PyFlowResult::status,
          "\"completed\", \"iteration_limit\", \"step_size_underflow\", \"non_finite\" or "
          "\"interrupted\" (measattn/status.hpp).")
      .def_readonly("message", &PyFlowResult::message, "What happened, in words.")
      .def_readonly("resumed", &PyFlowResult::resumed, "True when started from a checkpoint.")
      .def_readonly("resumed_from_step", &PyFlowResult::resumed_from_step,
                    "The checkpoint's step (0 when not resumed).")
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
         const py::object& dtype, const py::object& communicator, const std::string& norm,
         bool causal, const std::string& normalization, int sinkhorn_iterations) {
        FlowOptions o;
        o.attention.communicator = communicator_arg(communicator);
        o.norm = parse_norm_placement(norm);
        o.attention.causal = causal;
        o.attention.normalization = parse_normalization(normalization);
        o.attention.sinkhorn_iterations = sinkhorn_iterations;
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
      "key_block"_a = defaults.attention.key_block, "dtype"_a = py::none(), py::kw_only(),
      "communicator"_a = py::none(), "norm"_a = to_string(defaults.norm),
      "causal"_a = defaults.attention.causal,
      "normalization"_a = to_string(defaults.attention.normalization),
      "sinkhorn_iterations"_a = defaults.attention.sinkhorn_iterations, kFlowDoc);
  register_option_fields("flow", &option_fields_of<FlowOptions>);

  m.def(
      "flow_field",
      [](const PyModel& pm, const py::object& particles, const py::object& weights, bool sphere,
         const std::string& field, const py::object& dtype, const std::string& norm, bool causal,
         const std::string& normalization, int sinkhorn_iterations) {
        FlowOptions o;
        o.sphere = sphere;
        o.field = parse_flow_field(field);
        o.norm = parse_norm_placement(norm);
        o.attention.causal = causal;
        o.attention.normalization = parse_normalization(normalization);
        o.attention.sinkhorn_iterations = sinkhorn_iterations;
        // The new keywords' combinations are checked (the older ones as before).
        if (o.norm != NormPlacement::none || causal ||
            o.attention.normalization != Normalization::softmax) {
          o.validate();
        }
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
      "field"_a = "attention", "dtype"_a = py::none(), py::kw_only(), "norm"_a = "none",
      "causal"_a = false, "normalization"_a = "softmax", "sinkhorn_iterations"_a = 0,
      kFlowFieldDoc);

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
      "particles"_a, "beta"_a, "weights"_a = py::none(), kSphereEnergyDoc);

  m.def(
      "cluster_count",
      [](const py::object& particles, double tolerance, Index max_points) {
        auto x = matrix_arg<double>(particles, "particles");
        py::gil_scoped_release release;
        return cluster_count(MatrixRef<double>(x.map), tolerance, max_points);
      },
      "particles"_a, "tolerance"_a, "max_points"_a = 20000, kClusterCountDoc);

  m.def("orthogonal_start_cosine", &orthogonal_start_cosine, "n"_a, "beta"_a, "t"_a,
        "steps"_a = 100000, kOrthogonalStartDoc);

  m.def(
      "equiangular_reference",
      [](const std::string& norm, Index n, double beta, double rho0, const py::object& times,
         double r0, Index steps) {
        const auto t = vector_copy<double>(times, "times");
        const std::vector<double> tv(t.data(), t.data() + t.size());
        std::vector<EquiangularState> states;
        {
          py::gil_scoped_release release;
          states = equiangular_reference(parse_norm_placement(norm), n, beta, rho0, r0, tv, steps);
        }
        std::vector<double> rho, u, r;
        for (const auto& s : states) {
          rho.push_back(s.rho);
          u.push_back(s.one_minus_rho);
          r.push_back(s.norm);
        }
        py::dict out;
        out["t"] = to_numpy(tv);
        out["rho"] = to_numpy(rho);
        out["one_minus_rho"] = to_numpy(u);
        out["norm"] = to_numpy(r);
        return out;
      },
      "norm"_a, "n"_a, "beta"_a, "rho0"_a, "times"_a, "r0"_a = 1.0, "steps"_a = 100000,
      kEquiangularDoc);

  m.def(
      "is_canonical",
      [](const PyModel& pm) {
        double beta = 0;
        const bool c = std::visit([&](const auto& x) { return is_canonical(x, &beta); }, pm.m);
        return py::make_tuple(c, c ? py::object(py::float_(beta)) : py::object(py::none()));
      },
      "model"_a, kIsCanonicalDoc);
}

}  // namespace measattn::python
