// Bindings of misspec.hpp: measattn.misspec(...) -> MisspecResult.
#include "measattn/misspec.hpp"
#include "convert.hpp"
#include "progress_arg.hpp"

namespace measattn::python {
namespace {

using namespace pybind11::literals;

constexpr const char* kDoc = R"doc(
Mis-specified inputs: the certified bound next to the deviation realized.

If the layer F sees mu' instead of mu (both supported in B_R),

    W1(F(mu'), F(mu)) <= L(R) W1(mu', mu),

with L(R) the best certified upper bound (lipschitz_upper_bounds). For each
parameter value the deviation in and out is measured with exact W1 and
compared with the bound, for three ways of getting mu' wrong:

  kind="sample":  mu' = empirical measure of n i.i.d. draws of mu, n in sizes;
                  input_rate / output_rate = log-log slopes against n;
  kind="noise":   x'_i = x_i + sigma xi_i, xi ~ N(0, I_d), sigma in sigmas;
                  a priori W1(mu', mu) <= sigma E||xi||;
  kind="corrupt": a mass fraction eps moved to points of B_R (chosen
                  adversarially among candidates, or random); a priori
                  W1(mu', mu) <= 2 R eps.

Parameters
----------
model : Model
    d_q = d_kv = d_out = d (self-attention).
tokens : array_like, shape (n, d), or Measure
weights : array_like, shape (n,), optional
    None = uniform.
kind : {"sample", "noise", "corrupt"}, default "sample"
sizes : sequence of int, optional
    kind="sample": n (None = [4, 8, 16, 32, 64, 128]).
sigmas : sequence of float, optional
    kind="noise" (None = [0.01, 0.03, 0.1, 0.3]).
eps : sequence of float, optional
    kind="corrupt", in [0, 1] (None = [0.01, 0.03, 0.1, 0.3]).
repeats : int, default 3
    Draws per value, averaged.
radius : float, default 0.0
    R; 0 = the smallest R containing mu and every mu'.
adversarial : bool, default True
    kind="corrupt": choose the corrupting point among candidates.
residual : bool, default False
    The layer is mu -> (id + Gamma_mu)#mu.
seed : int, default 1
progress : None, bool or callable, optional
    None or False: nothing. A callable progress(done, total) is called (GIL
    held) after each draw is evaluated, and for corrupt also after each draw is
    chosen (total = values x repeats, twice that for corrupt); an exception it
    raises stops the computation and propagates. True: a tqdm bar when tqdm
    imports, else a line on stderr. The result does not depend on it.
communicator : mpi4py communicator, optional (keyword only)
    The ranks that share the draws (docs/distributed.md): every rank passes the
    same arguments and gets the same result, bit-identical to one process.

Returns
-------
MisspecResult
    rows: one MisspecRow per value. Every W1 is exact; bound and a_priori are
    certified upper bounds of the output deviation (violated is never True).

Notes
-----
Cost per draw: two self-attention passes and two exact transport problems
(corrupt: one more attention pass and transport problem per candidate).

Examples
--------
>>> model = measattn.Model.random(2, seed=1)
>>> x = np.random.default_rng(1).normal(size=(10, 2))
>>> r = measattn.misspec(model, x, kind="noise", sigmas=[0.01, 0.1], repeats=2)
>>> r.kind, r.bound_name, r.violated
('noise', 'w1_column_density', False)
>>> [(row.parameter, round(row.w1_input, 6), round(row.w1_output, 6)) for row in r.rows]
[(0.01, 0.01164, 0.002073), (0.1, 0.128753, 0.041967)]
>>> all(row.w1_output <= row.bound for row in r.rows)
True

References
----------
Fournier and Guillin, "On the rate of convergence in Wasserstein distance of
the empirical measure" (2015); docs/theory.md, section "Mis-specified inputs".
)doc";

constexpr const char* kRowDoc = R"doc(
One parameter value of measattn.misspec (averages over the repeats).

Attributes
----------
parameter : float
    n (sample), sigma (noise) or eps (corrupt).
w1_input, w1_output : float
    Mean exact W1(mu', mu) and W1(F(mu'), F(mu)).
bound : float
    Mean L W1(mu', mu): certified for every draw.
a_priori : float or None
    L sigma E||xi|| (noise), L 2 R eps (corrupt), None (sample).
max_ratio : float
    Max over the draws of W1 out / (L W1 in), <= 1.

Examples
--------
>>> row = measattn.misspec(measattn.Model.random(2, seed=1), np.eye(2), kind="corrupt",
...                        eps=[0.1], repeats=1).rows[0]
>>> row.parameter, row.w1_output <= row.bound <= row.a_priori
(0.1, True)
)doc";

constexpr const char* kResultDoc = R"doc(
The result of measattn.misspec.

Attributes
----------
kind : str
radius : float
    R used for L.
lipschitz : float
    L(R), the best certified upper bound, named bound_name.
rows : list of MisspecRow
output_rate, input_rate : float or None
    kind="sample": least-squares slopes of log W1 against log n (about -1/d
    for d >= 3, -1/2 in low dimension); None otherwise.
violated : bool
    True if any draw exceeded its bound (never expected).

Examples
--------
>>> r = measattn.misspec(measattn.Model.random(2, seed=1),
...                      np.random.default_rng(1).normal(size=(10, 2)),
...                      kind="sample", sizes=[4, 16, 64], repeats=2)
>>> round(r.input_rate, 3), round(r.output_rate, 3), r.rows[0].a_priori
(-0.607, -0.655, None)
)doc";

}  // namespace

void bind_misspec(py::module_& m) {
  py::class_<MisspecRow>(m, "MisspecRow", kRowDoc)
      .def_readonly("parameter", &MisspecRow::parameter, "n, sigma or eps.")
      .def_readonly("w1_input", &MisspecRow::w1_input, "Mean exact W1(mu', mu).")
      .def_readonly("w1_output", &MisspecRow::w1_output, "Mean exact W1(F(mu'), F(mu)).")
      .def_readonly("bound", &MisspecRow::bound, "Mean L W1(mu', mu) (certified per draw).")
      .def_readonly("a_priori", &MisspecRow::a_priori,
                    "L sigma E||xi|| (noise), L 2 R eps (corrupt), None (sample).")
      .def_readonly("max_ratio", &MisspecRow::max_ratio,
                    "max over draws of W1 out / (L W1 in), <= 1.")
      .def("__repr__", [](const MisspecRow& r) {
        auto f = [](double v) { return py::repr(py::float_(v)).cast<std::string>(); };
        return "MisspecRow(parameter=" + f(r.parameter) + ", w1_input=" + f(r.w1_input) +
               ", w1_output=" + f(r.w1_output) + ", bound=" + f(r.bound) + ")";
      });

  py::class_<MisspecResult>(m, "MisspecResult", kResultDoc)
      .def_property_readonly(
          "kind", [](const MisspecResult& r) { return to_string(r.kind); },
          "\"sample\", \"noise\" or \"corrupt\".")
      .def_readonly("radius", &MisspecResult::radius, "R used for L.")
      .def_readonly("lipschitz", &MisspecResult::lipschitz, "L(R), best certified upper bound.")
      .def_readonly("bound_name", &MisspecResult::bound_name, "The name of the bound L(R).")
      .def_readonly("rows", &MisspecResult::rows, "One MisspecRow per parameter value.")
      .def_readonly("output_rate", &MisspecResult::output_rate,
                    "sample: log-log slope of W1(F(mu'), F(mu)) against n (None otherwise).")
      .def_readonly("input_rate", &MisspecResult::input_rate,
                    "sample: log-log slope of W1(mu', mu) against n (None otherwise).")
      .def_readonly("violated", &MisspecResult::violated,
                    "True if any draw exceeded its bound (never expected).");

  const MisspecOptions defaults;  // the keywords' defaults (never copies)
  m.def(
      "misspec",
      [](const PyModel& pm, const py::object& tokens, const py::object& weights,
         const std::string& kind, const py::object& sizes, const py::object& sigmas,
         const py::object& eps, int repeats, double radius, bool adversarial, bool residual,
         std::uint64_t seed, const py::object& progress, const py::object& communicator) {
        MisspecOptions o;
        o.communicator = communicator_arg(communicator);
        o.kind = parse_misspec_kind(kind, "kind");
        if (!sizes.is_none()) o.sizes = sizes.cast<std::vector<Index>>();
        if (!sigmas.is_none()) o.sigmas = sigmas.cast<std::vector<double>>();
        if (!eps.is_none()) o.eps = eps.cast<std::vector<double>>();
        o.repeats = repeats;
        o.radius = radius;
        o.adversarial = adversarial;
        o.residual = residual;
        o.seed = seed;
        o.validate();
        ModelArg<double> model(pm);
        MeasureArg<double> mu(tokens, weights);
        ProgressArg progress_arg(progress, "misspec " + kind);
        o.progress_callback = progress_arg.callback();
        MisspecResult r;
        {
          py::gil_scoped_release release;
          r = misspecification(model.get(), mu.get(), o);
        }
        return r;
      },
      // Keywords = MisspecOptions' table (misspec.hpp), defaults from MisspecOptions{};
      // sizes / sigmas / eps: None = the table's default lists.
      "model"_a, "tokens"_a, "weights"_a = py::none(), "kind"_a = to_string(defaults.kind),
      "sizes"_a = py::none(), "sigmas"_a = py::none(), "eps"_a = py::none(),
      "repeats"_a = defaults.repeats, "radius"_a = defaults.radius,
      "adversarial"_a = defaults.adversarial, "residual"_a = defaults.residual,
      "seed"_a = defaults.seed, "progress"_a = py::none(), py::kw_only(),
      "communicator"_a = py::none(), kDoc);
  register_option_fields("misspec", &option_fields_of<MisspecOptions>);

  m.def("expected_gaussian_norm", &expected_gaussian_norm, "d"_a,
        R"doc(
E||xi|| for xi ~ N(0, I_d), exactly.

    E||xi|| = sqrt(2) Gamma((d+1)/2) / Gamma(d/2)

Parameters
----------
d : int
    d >= 1.

Returns
-------
float

Examples
--------
>>> round(measattn.expected_gaussian_norm(1), 6), round(np.sqrt(2 / np.pi), 6)
(0.797885, 0.797885)
>>> round(measattn.expected_gaussian_norm(3), 6)
1.595769
)doc");
}

}  // namespace measattn::python
