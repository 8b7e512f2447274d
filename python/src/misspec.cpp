// Bindings of misspec.hpp: measattn.misspec(...) -> MisspecResult.
#include "measattn/misspec.hpp"
#include "convert.hpp"
#include "progress_arg.hpp"

namespace measattn::python {
namespace {

using namespace pybind11::literals;

constexpr const char* kDoc = R"doc(
Mis-specified inputs: if the layer F sees mu' instead of mu (both in B_R),

    W1(F(mu'), F(mu)) <= L(R) W1(mu', mu),

with L(R) the best certified upper bound (lipschitz_upper_bounds). Reports
that bound next to the deviation actually realized, for

  kind="sample":  mu' = empirical measure of n i.i.d. draws of mu, n in sizes;
                  input_rate / output_rate = log-log slopes against n;
  kind="noise":   x'_i = x_i + sigma xi_i, xi ~ N(0, I_d), sigma in sigmas;
                  a priori W1(mu', mu) <= sigma E||xi||;
  kind="corrupt": a mass fraction eps in eps moved to points of B_R (adversarial
                  or random); a priori W1(mu', mu) <= 2 R eps.

tokens (n, d) with weights (None = uniform) or a Measure. repeats draws per
value (averaged); radius 0 = the smallest R containing every measure; seed.
Every W1 is exact. Returns a MisspecResult (rows: one MisspecRow per value).
)doc";

}  // namespace

void bind_misspec(py::module_& m) {
  py::class_<MisspecRow>(m, "MisspecRow", "One parameter value (averages over the repeats).")
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

  py::class_<MisspecResult>(m, "MisspecResult", "The result of measattn.misspec.")
      .def_property_readonly("kind", [](const MisspecResult& r) { return to_string(r.kind); })
      .def_readonly("radius", &MisspecResult::radius, "R used for L.")
      .def_readonly("lipschitz", &MisspecResult::lipschitz, "L(R), best certified upper bound.")
      .def_readonly("bound_name", &MisspecResult::bound_name)
      .def_readonly("rows", &MisspecResult::rows)
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
         std::uint64_t seed, const py::object& progress) {
        MisspecOptions o;
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
      "seed"_a = defaults.seed, "progress"_a = py::none(), kDoc);
  register_option_fields("misspec", &option_fields_of<MisspecOptions>);

  m.def("expected_gaussian_norm", &expected_gaussian_norm, "d"_a,
        "E||xi|| for xi ~ N(0, I_d): sqrt(2) Gamma((d+1)/2) / Gamma(d/2).");
}

}  // namespace measattn::python
