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
Wasserstein distance between two discrete measures.

    W_p(mu, nu)^p = min_{pi in Pi(wa, wb)} sum_ij pi_ij ||a_i - b_j||^p,

mu = sum_i wa_i delta_{a_i}, nu = sum_j wb_j delta_{b_j}, Pi(wa, wb) the
couplings (pi >= 0, pi 1 = wa, pi^T 1 = wb), ||.|| the Euclidean norm.

Parameters
----------
a : array_like, shape (n, d), or Measure
    The atoms of mu (float32 runs in float32, see dtype).
b : array_like, shape (m, d), or Measure
    The atoms of nu (same d).
wa, wb : array_like, shape (n,) and (m,), optional
    Non-negative weights; None = uniform. Must be None for a Measure.
p : float, default 1.0
    The exponent, 1 <= p <= 1e6.
method : {"auto", "exact", "1d", "sliced", "sinkhorn"}, default "auto"
    "exact": network simplex with column generation, certified optimal.
    "1d": the quantile formula (d = 1), exact. "sliced": certified lower
    and upper bounds from projections (max-sliced search and the lifted
    monotone plans). "sinkhorn": entropic estimate, with a certified upper
    bound from the rounded plan. "auto" (as in C++ and the CLI): 1d when
    d = 1, exact when n m <= 2.5e7, else sliced.
dtype : {"float32", "float64"}, optional
    None = float32 for float32 atoms, else float64 (the solvers compute in
    double; float32 only changes the dtype of the plan and potentials).
mass : {"strict", "renormalize"}, default "strict"
    Keyword. Weights of different totals raise ValueError naming both totals
    ("strict", as POT); "renormalize" divides each weight vector by its total.
plan, dense_plan, potentials : bool, default False
    Keywords: the sparse coupling (TransportPlan), also its dense (n, m)
    matrix, the Kantorovich potentials (f, g).
dense_arc_limit, neighbours, arcs_per_round, prune, prune_rounds, max_rounds
    Keywords of the exact solver (complete graph up to dense_arc_limit arcs,
    then column generation).
projections, max_sliced_restarts, max_sliced_iterations, seed
    Keywords of the sliced bounds (seeded: the same bounds for the same seed).
reg, tolerance, max_iterations, max_dense_bytes, online, epsilon_scaling, multiscale, truncation
    Keywords of Sinkhorn: epsilon (cost units, default 0.05), stop when
    ||P^T 1 - wb||_2 < tolerance, the iteration cap, the kernel memory cap,
    online=True computes the costs on the fly (O(n + m) memory, no plan),
    epsilon_scaling the factor of each regularization step (online and
    multiscale), multiscale=True the coarse-to-fine Sinkhorn on grid cells
    with kernel truncation (d <= 8, O(n + m) memory, no plan), truncation its
    bound on the neglected kernel mass per row (relative, default 1e-12).
progress : bool, default False
    Keyword: a progress line on stderr (a terminal only) for large problems.

Returns
-------
WassersteinResult
    value is W_p itself (not its p-th power; cost = value^p); kind says what
    it is ("exact", "lower", "upper" or "estimate"), and lower <= W_p <= upper
    always holds (certified).

Raises
------
ValueError
    Bad shapes, NaN or infinite atoms or weights, p outside [1, 1e6], an
    unknown method or keyword, weights of different totals with
    mass="strict".

Notes
-----
The exact solver is LEMON's network simplex on integer-scaled supplies and
costs, polished to the double weights; optimality is certified by a sweep of
all n m reduced costs (LP duality). The 1-D formula is
W_p^p = int_0^1 |F^-1(t) - G^-1(t)|^p dt. Projections x -> <theta, x> are
1-Lipschitz, so W_p(theta#mu, theta#nu) <= W_p(mu, nu). Sinkhorn minimizes
<P, C> + reg sum P log P. The same result whatever the thread count; the GIL
is released.

Examples
--------
Moving mass 1/3 by 1 twice:

>>> x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
>>> y = np.array([[0.0, 0.0], [2.0, 0.0]])
>>> r = measattn.wasserstein(x, y, wb=[2/3, 1/3], p=1, plan=True)
>>> r.kind, round(r.value, 6), r.status
('exact', 0.666667, 'optimal')
>>> r.plan.rows, r.plan.cols
(array([0, 1, 2]), array([0, 1, 0]))

On the line (the quantile formula), W_2 and its cost:

>>> r = measattn.wasserstein([[0.0], [1.0]], [[2.0], [3.0]], p=2)
>>> r.method, r.value, r.cost
('1d', 2.0, 4.0)

Certified bounds and an entropic estimate on random clouds:

>>> rng = np.random.default_rng(0)
>>> a, b = rng.normal(size=(50, 3)), rng.normal(size=(40, 3)) + 0.5
>>> round(measattn.wasserstein(a, b, p=2, method="exact").value, 6)
1.29693
>>> s = measattn.wasserstein(a, b, p=2, method="sliced")
>>> s.kind, round(s.lower, 6), round(s.upper, 6)
('lower', 0.806332, 1.915067)
>>> e = measattn.wasserstein(a, b, p=2, method="sinkhorn")
>>> e.kind, e.status, round(e.lower, 6), round(e.upper, 6)
('estimate', 'converged', 1.294028, 1.298841)

References
----------
Villani, "Optimal transport, old and new" (2009); Peyre and Cuturi,
"Computational optimal transport" (2019); Cuturi (2013); docs/theory.md,
"Wasserstein distances"; docs/python.md, "Wasserstein distances".
)doc";

constexpr const char* kTransportPlanDoc = R"doc(
A coupling pi in Pi(wa, wb) of a WassersteinResult (plan=True).

Attributes
----------
rows, cols : numpy.ndarray of int64, shape (k,)
    The indices (i, j) of the non-zero entries, in row-major order.
mass : numpy.ndarray, shape (k,)
    pi_ij of those entries (float32 for a float32 call, else float64).
dense : numpy.ndarray, shape (n, m), or None
    The matrix, when dense_plan=True was asked.
marginal_error : float
    max(||pi 1 - wa||_1, ||pi^T 1 - wb||_1): how far the plan is from
    Pi(wa, wb) (about 1e-15 or less).

Notes
-----
An exact plan is a basic solution: at most n + m - 1 non-zero entries.
len(plan) is k. The plan of method "sinkhorn" is the rounded one (a coupling,
so its cost is the certified upper bound); "sliced" returns none.

Examples
--------
>>> x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
>>> y = np.array([[0.0, 0.0], [2.0, 0.0]])
>>> plan = measattn.wasserstein(x, y, wb=[2/3, 1/3], dense_plan=True).plan
>>> len(plan), plan.mass
(3, array([0.333333, 0.333333, 0.333333]))
>>> plan.dense
array([[0.333333, 0.      ],
       [0.      , 0.333333],
       [0.333333, 0.      ]])
>>> plan.marginal_error < 1e-15
True
)doc";

constexpr const char* kWassersteinResultDoc = R"doc(
The result of measattn.wasserstein: W_p, or certified bounds on it.

Attributes
----------
value : float
    W_p (not its p-th power) when kind is "exact"; else the bound or estimate
    named by kind. float(result) is value.
kind : {"exact", "lower", "upper", "estimate"}
    "exact": certified optimal (exact, 1d); "lower": the best certified lower
    bound (sliced); "estimate": the entropic transport cost <P, C>^(1/p)
    (sinkhorn), clamped into [lower, upper].
lower, upper : float
    Certified bounds: lower <= W_p <= upper for every method (equal to value
    when kind is "exact").
cost : float
    value ** p (the transport cost for exact results).
p : float
method : str
    The method that ran ("exact", "1d", "sliced", "sinkhorn"; "auto" resolved).
status : {"optimal", "converged", "iteration_limit", "bounds_only"}
    optimal (exact, 1d), converged / iteration_limit (sinkhorn; also exact at
    max_rounds, then value is the cost of a feasible plan), bounds_only (sliced).
message : str
    What the solver did, in words.
iterations : int
    Column generation rounds, Sinkhorn or max-sliced ascent iterations.
plan : TransportPlan or None
    With plan=True or dense_plan=True.
potentials : tuple of numpy.ndarray or None
    (f, g), shapes (n,) and (m,), with potentials=True: f_i + g_j <=
    ||a_i - b_j||^p for all i, j and sum_i wa_i f_i + sum_j wb_j g_j = W_p^p
    at optimality (the dual certificate).
entropic_cost, transport_cost, rounded_cost, marginal_violation : float or None
    Sinkhorn only (None otherwise): <P, C> + reg sum P log P; <P, C> of the
    unrounded plan (what POT's ot.sinkhorn2 returns); <R(P), C> of the plan
    rounded onto Pi(wa, wb) (upper = rounded_cost^(1/p)); ||P^T 1 - wb||_2 at
    stop.

Examples
--------
>>> r = measattn.wasserstein([[0.0], [1.0]], [[2.0], [3.0]], p=2, method="exact",
...                          potentials=True)
>>> r
WassersteinResult(value=2.0, kind='exact', lower=2.0, upper=2.0, status='optimal')
>>> f, g = r.potentials
>>> float(0.5 * f.sum() + 0.5 * g.sum()) == r.cost == 4.0
True
>>> x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
>>> s = measattn.wasserstein(x, x + [1.0, 0.0], p=2, method="sinkhorn", reg=0.5)
>>> s.kind, s.status, s.lower <= 1.0 <= s.upper
('estimate', 'converged', True)
>>> round(s.transport_cost, 6), round(s.rounded_cost, 6), round(s.upper ** 2, 6)
(1.1699, 1.1699, 1.1699)

References
----------
docs/theory.md, "Wasserstein distances" (Duality, Entropic OT).
)doc";

constexpr const char* kTransportExactDoc = R"doc(
Exact OT on a cost matrix (the solver behind measattn.ot.emd / emd2).

    min_{G in Pi(a, b)} <G, M>

Parameters
----------
a, b : array_like, shape (n,) and (m,)
    Histograms of equal totals (float64).
cost : array_like, shape (n, m)
    M, any finite real values.
plan : bool, default True
    Return the dense plan.
**kw
    WassersteinOptions fields (dense_arc_limit, max_rounds, ...).

Returns
-------
dict
    cost (exact: certified optimal when status is "optimal"), plan (n, m) or
    None, f and g (dual potentials: f_i + g_j <= M_ij, <a, f> + <b, g> =
    cost), status, message, iterations, marginal_violation, errors (empty).

Examples
--------
>>> r = measattn._measattn._transport_exact([0.5, 0.5], [0.5, 0.5], [[0.0, 1.0], [1.0, 0.0]])
>>> r["cost"], r["status"]
(0.0, 'optimal')
>>> r["plan"]
array([[0.5, 0. ],
       [0. , 0.5]])
)doc";

constexpr const char* kTransportSinkhornDoc = R"doc(
Sinkhorn on a cost matrix for each column of b (the solver behind
measattn.ot.sinkhorn / sinkhorn2).

    P = diag(u) exp(-M / reg) diag(v) = argmin_{P in Pi(a, b_k)} <P, M> + reg sum P log P

Parameters
----------
a : array_like, shape (n,)
b : array_like, shape (m,) or (m, k)
    One target histogram per column.
cost : array_like, shape (n, m)
log_u0 : array_like, shape (n,) or (n, k), optional
    Starting log-scalings (a warm start); None = one exact log-domain update.
plan : bool, default True
**kw
    reg, tolerance (on ||P^T 1 - b||_2), max_iterations, max_dense_bytes, ...

Returns
-------
list of dict
    One per column: cost = <P, M> (an estimate of the unregularized cost),
    plan or None, f = reg log u, g = reg log v, status ("converged" or
    "iteration_limit"), message, iterations, marginal_violation, errors (the
    marginal violation per iteration).

Examples
--------
>>> r, = measattn._measattn._transport_sinkhorn([0.5, 0.5], [0.5, 0.5],
...                                             [[0.0, 1.0], [1.0, 0.0]], reg=1.0)
>>> round(r["cost"], 6), r["status"]
(0.268941, 'converged')
>>> r["plan"]
array([[0.365529, 0.134471],
       [0.134471, 0.365529]])
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
  py::class_<TransportPlan>(m, "TransportPlan", kTransportPlanDoc, py::dynamic_attr())
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
      .def(
          "__len__", [](const TransportPlan& p) { return p.entries.size(); },
          "The number of non-zero entries.");

  py::class_<WassersteinResult>(m, "WassersteinResult", kWassersteinResultDoc, py::dynamic_attr())
      .def_readonly("value", &WassersteinResult::value,
                    "W_p (or the bound / estimate named by kind).")
      .def_property_readonly(
          "kind", [](const WassersteinResult& r) { return to_string(r.kind); },
          "\"exact\", \"lower\", \"upper\" or \"estimate\".")
      .def_readonly("lower", &WassersteinResult::lower, "Certified lower bound on W_p.")
      .def_readonly("upper", &WassersteinResult::upper, "Certified upper bound on W_p.")
      .def_readonly("cost", &WassersteinResult::cost, "value ** p.")
      .def_readonly("p", &WassersteinResult::p, "The exponent p.")
      .def_property_readonly(
          "method", [](const WassersteinResult& r) { return to_string(r.method); },
          "The method that ran (\"auto\" resolved): \"exact\", \"1d\", \"sliced\" or "
          "\"sinkhorn\".")
      .def_property_readonly(
          "status", [](const WassersteinResult& r) { return to_string(r.status); },
          "\"optimal\", \"converged\", \"iteration_limit\" or \"bounds_only\".")
      .def_readonly("message", &WassersteinResult::message, "What the solver did, in words.")
      .def_readonly("iterations", &WassersteinResult::iterations,
                    "Column generation rounds, Sinkhorn or max-sliced ascent iterations.")
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
      .def(
          "__float__", [](const WassersteinResult& r) { return r.value; }, "value.")
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
      "a"_a, "b"_a, "cost"_a, "plan"_a = true, kTransportExactDoc);
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
      "a"_a, "b"_a, "cost"_a, "log_u0"_a = py::none(), "plan"_a = true, kTransportSinkhornDoc);
}

}  // namespace measattn::python
