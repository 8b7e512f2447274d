// Bindings of wasserstein.hpp: measattn.wasserstein(...) -> WassersteinResult.
#include "measattn/wasserstein.hpp"

#include <limits>
#include <optional>
#include <vector>

#include "convert.hpp"

namespace measattn::python {
namespace {

using namespace pybind11::literals;

// Applies keyword options to a WassersteinOptions: the fields of its table
// (names and parsing from wasserstein.hpp's for_each_field) and plan /
// dense_plan / potentials for the want_* requests.
void apply_options(WassersteinOptions& o, const py::dict& kw) {
  std::vector<std::string> known = {"plan", "dense_plan", "potentials"};
  for (const std::string& name : field_names<WassersteinOptions>()) {
    if (name != "p" && name != "method") known.push_back(name);  // explicit arguments
  }
  reject_unknown(kw, known, "wasserstein");
  auto get = [&](const char* k, bool& field) {
    if (kw.contains(k)) field = kw[k].cast<bool>();
  };
  get("plan", o.want_plan);
  get("dense_plan", o.want_dense_plan);
  get("potentials", o.want_potentials);
  if (o.want_dense_plan) o.want_plan = true;
  apply_fields(o, kw, {"p", "method"});
}

/// The total of weights as given (None: uniform, total 1); NaN when they are not
/// a readable real array (MeasureArg reports that).
double raw_total(const py::handle& w) {
  if (w.is_none()) return 1.0;
  try {
    auto arr = py::array_t<double, py::array::forcecast>::ensure(w);
    if (!arr) {
      PyErr_Clear();
      return std::numeric_limits<double>::quiet_NaN();
    }
    long double total = 0;
    const double* d = arr.data();
    for (py::ssize_t k = 0; k < arr.size(); ++k) total += d[k];
    return static_cast<double>(total);
  } catch (const py::error_already_set&) {
    return std::numeric_limits<double>::quiet_NaN();
  }
}

template <class Scalar>
WassersteinResult run(const py::handle& a, const py::handle& b, const py::handle& wa,
                      const py::handle& wb, const WassersteinOptions& options) {
  MeasureArg<Scalar> mu(a, wa, "a");
  MeasureArg<Scalar> nu(b, wb, "b");
  // The measures hold normalized weights: the strict check reads the raw ones.
  if (!wa.is_none() || !wb.is_none())
    check_mass(raw_total(wa), raw_total(wb), options.mass, "wa", "wb");
  py::gil_scoped_release release;
  return wasserstein(mu.get(), nu.get(), options);
}

constexpr const char* kDoc = R"doc(
Wasserstein distance between two discrete measures,

    W_p(mu, nu)^p = min_{pi in Pi(wa, wb)} sum_ij pi_ij ||a_i - b_j||^p,

mu = sum_i wa_i delta_{a_i} (a: (n, d)), nu = sum_j wb_j delta_{b_j} (b: (m, d));
a and b may also be Measures (then wa / wb must be None). Weights None = uniform.

Weights of different totals raise ValueError (mass="strict", the default, as
POT); mass="renormalize" divides each weight vector by its total.

p >= 1. method: "exact" (network simplex, certified optimal), "1d" (quantile
formula, d = 1), "sliced" (certified lower and upper bounds), "sinkhorn"
(entropic estimate with a certified upper bound), "auto" (the default, as in
C++ and the CLI: 1d when d = 1, exact when n m <= 2.5e7, else sliced).

Options (keyword): plan=True (sparse coupling), dense_plan=True (also the
(n, m) matrix), potentials=True (Kantorovich potentials f, g),
dense_arc_limit, neighbours, arcs_per_round, prune, prune_rounds,
max_rounds (exact); projections,
max_sliced_restarts, max_sliced_iterations, seed (sliced); reg, tolerance,
max_iterations, max_dense_bytes (sinkhorn); progress.

Returns a WassersteinResult: value (W_p itself, not its p-th power), kind
("exact", "lower", "upper", "estimate"), certified lower <= W_p <= upper, cost
(= value^p), status, message, iterations, plan, potentials.
)doc";

/// A TransportResult as a dict (the arrays in float64; measattn.ot casts them).
py::dict transport_dict(TransportResult&& r, bool with_plan) {
  py::dict d;
  d["cost"] = r.cost;
  d["plan"] = with_plan ? py::object(to_numpy(std::move(r.plan))) : py::object(py::none());
  d["f"] = to_numpy(std::move(r.f));
  d["g"] = to_numpy(std::move(r.g));
  d["status"] = to_string(r.status);
  d["message"] = r.message;
  d["iterations"] = r.iterations;
  d["marginal_violation"] = r.marginal_violation;
  d["errors"] = to_numpy(r.errors);
  return d;
}

/// Options of the cost-matrix calls: WassersteinOptions' fields by name.
WassersteinOptions transport_options(const py::dict& kw, const char* function) {
  WassersteinOptions o;
  reject_unknown(kw, apply_fields(o, kw), function);
  o.validate();
  return o;
}

}  // namespace

void bind_wasserstein(py::module_& m) {
  // Results of a float32 call carry the attribute _float32: their plans and
  // potentials come out in float32 (the solvers compute in double).
  py::class_<TransportPlan>(m, "TransportPlan",
                            "A coupling pi in Pi(wa, wb): its non-zero entries in row-major "
                            "order and, on request, the dense matrix.",
                            py::dynamic_attr())
      .def_property_readonly(
          "rows",
          [](const TransportPlan& p) {
            py::array_t<std::int64_t> out(static_cast<py::ssize_t>(p.entries.size()));
            auto* d = out.mutable_data();
            for (size_t t = 0; t < p.entries.size(); ++t) d[t] = p.entries[t].i;
            return out;
          },
          "Row indices i of the non-zero entries (int64).")
      .def_property_readonly(
          "cols",
          [](const TransportPlan& p) {
            py::array_t<std::int64_t> out(static_cast<py::ssize_t>(p.entries.size()));
            auto* d = out.mutable_data();
            for (size_t t = 0; t < p.entries.size(); ++t) d[t] = p.entries[t].j;
            return out;
          },
          "Column indices j of the non-zero entries (int64).")
      .def_property_readonly(
          "mass",
          [](const py::object& self) -> py::object {
            const auto& p = self.cast<const TransportPlan&>();
            std::vector<double> mass(p.entries.size());
            for (size_t t = 0; t < p.entries.size(); ++t) mass[t] = p.entries[t].mass;
            if (py::hasattr(self, "_float32"))
              return to_numpy(std::vector<float>(mass.begin(), mass.end()));
            return to_numpy(mass);
          },
          "Masses pi_ij of the non-zero entries (float32 for float32 inputs).")
      .def_property_readonly(
          "dense",
          [](const py::object& self) -> py::object {
            const auto& p = self.cast<const TransportPlan&>();
            if (!p.dense) return py::none();
            if (py::hasattr(self, "_float32")) return to_numpy(MatrixF(p.dense->cast<float>()));
            return to_numpy(MatrixD(*p.dense));
          },
          "The (n, m) matrix when dense_plan=True was asked, else None (float32 for float32 "
          "inputs).")
      .def_readonly("marginal_error", &TransportPlan::marginal_error,
                    "max(||pi 1 - wa||_1, ||pi^T 1 - wb||_1).")
      .def("__len__", [](const TransportPlan& p) { return p.entries.size(); });

  py::class_<WassersteinResult>(m, "WassersteinResult", "The result of measattn.wasserstein.",
                                py::dynamic_attr())
      .def_readonly("value", &WassersteinResult::value,
                    "W_p (or the bound / estimate named by kind).")
      .def_property_readonly(
          "kind", [](const WassersteinResult& r) { return to_string(r.kind); },
          "\"exact\", \"lower\", \"upper\" or \"estimate\".")
      .def_readonly("lower", &WassersteinResult::lower, "Certified lower bound on W_p.")
      .def_readonly("upper", &WassersteinResult::upper, "Certified upper bound on W_p.")
      .def_readonly("cost", &WassersteinResult::cost, "value ** p.")
      .def_readonly("p", &WassersteinResult::p)
      .def_property_readonly("method",
                             [](const WassersteinResult& r) { return to_string(r.method); })
      .def_property_readonly(
          "status", [](const WassersteinResult& r) { return to_string(r.status); },
          "\"optimal\", \"converged\", \"iteration_limit\" or \"bounds_only\".")
      .def_readonly("message", &WassersteinResult::message)
      .def_readonly("iterations", &WassersteinResult::iterations)
      .def_property_readonly(
          "plan",
          [](const py::object& self) -> py::object {
            const auto& r = self.cast<const WassersteinResult&>();
            if (!r.plan) return py::none();
            py::object plan = py::cast(*r.plan);
            if (py::hasattr(self, "_float32")) plan.attr("_float32") = true;
            return plan;
          },
          "TransportPlan when plan=True / dense_plan=True was asked, else None.")
      .def_property_readonly(
          "potentials",
          [](const py::object& self) -> py::object {
            const auto& r = self.cast<const WassersteinResult&>();
            if (!r.potentials) return py::none();
            if (py::hasattr(self, "_float32"))
              return py::make_tuple(to_numpy(VectorF(r.potentials->f.cast<float>())),
                                    to_numpy(VectorF(r.potentials->g.cast<float>())));
            return py::make_tuple(to_numpy(VectorD(r.potentials->f)),
                                  to_numpy(VectorD(r.potentials->g)));
          },
          "(f, g) with f_i + g_j <= ||a_i - b_j||^p when potentials=True, else None.")
      // Sinkhorn-only fields: None for the other methods.
      .def_readonly("entropic_cost", &WassersteinResult::entropic_cost,
                    "Sinkhorn: <P, C> + reg sum P log P (None otherwise).")
      .def_readonly("transport_cost", &WassersteinResult::transport_cost,
                    "Sinkhorn: <P, C> of the unrounded plan (= ot.sinkhorn2; None otherwise).")
      .def_readonly("rounded_cost", &WassersteinResult::rounded_cost,
                    "Sinkhorn: <R(P), C>, R(P) rounded onto Pi(wa, wb) (None otherwise).")
      .def_readonly("marginal_violation", &WassersteinResult::marginal_violation,
                    "Sinkhorn: ||P^T 1 - wb||_2 at stop (None otherwise).")
      .def("__float__", [](const WassersteinResult& r) { return r.value; })
      .def("__repr__", [](const WassersteinResult& r) {
        return "WassersteinResult(value=" + py::repr(py::float_(r.value)).cast<std::string>() +
               ", kind='" + to_string(r.kind) +
               "', lower=" + py::repr(py::float_(r.lower)).cast<std::string>() +
               ", upper=" + py::repr(py::float_(r.upper)).cast<std::string>() + ", status='" +
               to_string(r.status) + "')";
      });

  const WassersteinOptions defaults;  // the keywords' defaults (never copies)
  m.def(
      "wasserstein",
      [](const py::object& a, const py::object& b, const py::object& wa, const py::object& wb,
         double p, const std::string& method, const py::object& dtype, const py::kwargs& kw) {
        WassersteinOptions o;
        o.p = p;
        o.method = parse_wasserstein_method(method);
        apply_options(o, kw);
        o.validate();
        const DT dt = call_dtype(a, dtype);
        py::object out =
            py::cast(dispatch(dt, [&](auto s) { return run<decltype(s)>(a, b, wa, wb, o); }));
        if (dt == DT::f32) out.attr("_float32") = true;  // float32 plans and potentials
        return out;
      },
      "a"_a, "b"_a, "wa"_a = py::none(), "wb"_a = py::none(), "p"_a = defaults.p,
      "method"_a = to_string(defaults.method), "dtype"_a = py::none(), kDoc);
  register_option_fields("wasserstein", &option_fields_of<WassersteinOptions>);

  // The cost-matrix solvers behind measattn.ot (private: ot.py gives them POT's API).
  m.def(
      "_transport_exact",
      [](const py::object& a, const py::object& b, const py::object& cost, bool plan,
         const py::kwargs& kw) {
        WassersteinOptions o = transport_options(kw, "_transport_exact");
        o.want_dense_plan = plan;
        const VectorD av = vector_copy<double>(a, "a");
        const VectorD bv = vector_copy<double>(b, "b");
        const auto c = matrix_arg<double>(cost, "cost");
        TransportResult r;
        {
          py::gil_scoped_release release;
          r = transport_exact(av, bv, c.map, o);
        }
        return transport_dict(std::move(r), plan);
      },
      "a"_a, "b"_a, "cost"_a, "plan"_a = true,
      "Exact OT on a cost matrix (measattn.ot.emd): a dict with cost, plan, f, g, status, "
      "message, iterations, marginal_violation.");
  m.def(
      "_transport_sinkhorn",
      [](const py::object& a, const py::object& b, const py::object& cost, const py::object& log_u0,
         bool plan, const py::kwargs& kw) {
        WassersteinOptions o = transport_options(kw, "_transport_sinkhorn");
        o.want_dense_plan = plan;
        const VectorD av = vector_copy<double>(a, "a");
        const auto bm = matrix_arg<double>(b, "b", true);
        const auto c = matrix_arg<double>(cost, "cost");
        std::optional<MatrixD> start;
        if (!log_u0.is_none()) start = matrix_copy<double>(log_u0, "log_u0", true);
        std::vector<TransportResult> rs;
        {
          py::gil_scoped_release release;
          rs = transport_sinkhorn(av, bm.map, c.map, o, start ? &*start : nullptr);
        }
        py::list out;
        for (auto& r : rs) out.append(transport_dict(std::move(r), plan));
        return out;
      },
      "a"_a, "b"_a, "cost"_a, "log_u0"_a = py::none(), "plan"_a = true,
      "Sinkhorn on a cost matrix for each column of b (measattn.ot.sinkhorn): a list of dicts "
      "with cost, plan, f = reg log u, g = reg log v, status, message, iterations, "
      "marginal_violation, errors.");
}

}  // namespace measattn::python
