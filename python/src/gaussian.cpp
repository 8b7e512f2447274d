// Bindings of gaussian.hpp: GaussianMeasure, gaussian_attention, gaussian_flow,
// gaussian_w2, gauss_hermite_measure (float64).
#include "measattn/gaussian.hpp"

#include "convert.hpp"

namespace measattn::python {
namespace {

using namespace pybind11::literals;
using GM = GaussianMeasure<double>;

constexpr const char* kGaussianMeasureDoc = R"doc(
A Gaussian measure N(mean, cov) on R^d (float64).

Parameters
----------
mean : array_like, shape (d,)
cov : array_like, shape (d, d)
    Symmetric positive semi-definite (a singular cov is a degenerate Gaussian).

Raises
------
ValueError
    Naming "mean" or "cov": an empty mean, a cov of another shape, a NaN or
    infinite entry, a cov that is not symmetric or not positive semi-definite.

Examples
--------
>>> g = measattn.GaussianMeasure([0.0, 1.0], np.eye(2))
>>> g.dim, g.mean, g.cov[1, 1]
(2, array([0., 1.]), 1.0)
>>> measattn.GaussianMeasure([0.0], [[-1.0]])
Traceback (most recent call last):
...
ValueError: cov: not positive semi-definite (smallest eigenvalue -1)
)doc";

constexpr const char* kAttentionDoc = R"doc(
The closed-form image of a Gaussian under one attention layer.

For mu = N(m, Sigma) the kernel of the dot and l2 potentials is a Gaussian tilt
of mu, so the attention field Gamma_mu(x) = L x + c is affine and

    F(mu) = (Gamma_mu)#mu = N(L m + c, L Sigma L^T)

(with residual: (id + Gamma_mu)#mu). Sinkhorn normalization is the converged
doubly stochastic attention: the conditional mean of the Gaussian entropic plan
of (mu, mu) with cost -G.

Parameters
----------
model : Model
    Dot or l2 potential, query and key dimension d (any heads, biases, W_O).
g : GaussianMeasure
normalization : {"softmax", "sinkhorn"}
residual : bool
    Add the query (needs the output dimension d).

Returns
-------
GaussianMeasure
    On R^{d_out}.

Examples
--------
>>> model = measattn.Model.canonical(1, 0.5)
>>> out = measattn.gaussian_attention(model, measattn.GaussianMeasure([2.0], [[1.0]]))
>>> out.mean, out.cov    # Gamma(x) = m + beta s x: N((1 + beta s) m, (beta s)^2 s)
(array([3.]), array([[0.25]]))

References
----------
Castin, Ablin, Dupuy and Peyre, "A unified perspective on the dynamics of deep
Transformers" (2025); Janati, Muzellec, Peyre and Cuturi, "Entropic optimal
transport between unbalanced Gaussian measures has a closed form" (2020);
docs/theory.md, "Gaussian measures".
)doc";

constexpr const char* kFlowDoc = R"doc(
The self-attention flow dx/dt = Gamma_{mu_t}(x) of a Gaussian, in closed form.

mu_t stays Gaussian: m' = L m + c, Sigma' = L Sigma + Sigma L^T with (L, c) the
affine field of mu_t. Integrated by the adaptive Dormand-Prince 5(4) pair on the
mean and the transport matrix P (Sigma = P Sigma_0 P^T, P' = L P), so Sigma stays
positive semi-definite.

Parameters
----------
model : Model
    Dot or l2 potential, square (d_out = d).
g : GaussianMeasure
time : float
    T >= 0.
tolerance : float
    atol = rtol of the integrator (>= 1e-14).
max_steps : int
normalization : {"softmax", "sinkhorn"}

Returns
-------
GaussianMeasure
    mu_T.

Raises
------
ValueError
    When the integrator does not reach T (the covariance blows up, or max_steps).

Examples
--------
>>> # Canonical model, d = 1: Sigma(t) = s / (1 - 2 beta s t)
>>> g = measattn.GaussianMeasure([0.0], [[0.5]])
>>> out = measattn.gaussian_flow(measattn.Model.canonical(1, 0.5), g, 1.0)
>>> round(float(out.cov[0, 0]), 8)
1.0
)doc";

constexpr const char* kW2Doc = R"doc(
W2 between Gaussian measures (the Bures formula).

    W2^2 = |m1 - m2|^2 + tr S1 + tr S2 - 2 tr (S1^{1/2} S2 S1^{1/2})^{1/2}

Parameters
----------
a, b : GaussianMeasure
    Of the same dimension.

Returns
-------
float

Examples
--------
>>> a = measattn.GaussianMeasure([0.0], [[4.0]])
>>> b = measattn.GaussianMeasure([3.0], [[1.0]])
>>> round(measattn.gaussian_w2(a, b), 10)    # sqrt(3^2 + (2 - 1)^2)
3.1622776602

References
----------
Dowson and Landau (1982); Givens and Shortt (1984); docs/theory.md,
"Gaussian measures".
)doc";

constexpr const char* kGaussHermiteDoc = R"doc(
Tensor-product Gauss-Hermite atoms of a Gaussian, as a weighted Measure.

points^d atoms m + Sigma^{1/2} z (z the nodes of the probabilists' Hermite rule)
with the product weights: exact for polynomials of degree <= 2 points - 1 in each
coordinate. The particle solver on these atoms converges to the closed forms.

Parameters
----------
g : GaussianMeasure
points : int
    Nodes per coordinate (points^d <= 10^7).

Returns
-------
Measure

Examples
--------
>>> mu = measattn.gauss_hermite_measure(measattn.GaussianMeasure([1.0], [[4.0]]), 3)
>>> mu.atoms.ravel().round(6), mu.weights.round(6)
(array([-2.464102,  1.      ,  4.464102]), array([0.166667, 0.666667, 0.166667]))
)doc";

}  // namespace

void bind_gaussian(py::module_& m) {
  register_option_fields("gaussian_attention", &option_fields_of<GaussianAttentionOptions>);
  register_option_fields("gaussian_flow", &option_fields_of<GaussianFlowOptions>);
  py::class_<GM>(m, "GaussianMeasure", kGaussianMeasureDoc)
      .def(py::init([](const py::object& mean, const py::object& cov) {
             Vector<double> mv = vector_copy<double>(mean, "mean");
             Matrix<double> cv = matrix_copy<double>(cov, "cov");
             return GM(std::move(mv), std::move(cv));
           }),
           "mean"_a, "cov"_a)
      .def_property_readonly(
          "mean", [](const GM& g) { return to_numpy(Vector<double>(g.mean())); }, "(d,) mean.")
      .def_property_readonly(
          "cov", [](const GM& g) { return to_numpy(Matrix<double>(g.cov())); },
          "(d, d) covariance.")
      .def_property_readonly("dim", &GM::dim, "d.")
      .def("__repr__",
           [](const GM& g) { return "GaussianMeasure(dim=" + std::to_string(g.dim()) + ")"; });

  m.def(
      "gaussian_attention",
      [](const PyModel& pm, const GM& g, const std::string& normalization, bool residual) {
        GaussianAttentionOptions o;
        o.normalization = parse_normalization(normalization, "normalization");
        o.residual = residual;
        o.validate();
        ModelArg<double> model(pm);
        py::gil_scoped_release release;
        return gaussian_attention(model.get(), g, o);
      },
      "model"_a, "g"_a, "normalization"_a = to_string(GaussianAttentionOptions{}.normalization),
      "residual"_a = GaussianAttentionOptions{}.residual, kAttentionDoc);

  m.def(
      "gaussian_flow",
      [](const PyModel& pm, const GM& g, double time, double tolerance, Index max_steps,
         const std::string& normalization) {
        GaussianFlowOptions o;
        o.time = time;
        o.tolerance = tolerance;
        o.max_steps = max_steps;
        o.normalization = parse_normalization(normalization, "normalization");
        o.validate();
        ModelArg<double> model(pm);
        GaussianFlowResult<double> r{g, 0, 0, 0, 0, 0, Status::completed, std::string()};
        {
          py::gil_scoped_release release;
          r = gaussian_flow(model.get(), g, o);
        }
        if (r.status != Status::completed) {
          throw invalid_argument("time: the flow stopped at t = " + std::to_string(r.time) + " (" +
                                 to_string(r.status) + ": " + r.message + ")");
        }
        return r.measure;
      },
      "model"_a, "g"_a, "time"_a, "tolerance"_a = GaussianFlowOptions{}.tolerance,
      "max_steps"_a = GaussianFlowOptions{}.max_steps,
      "normalization"_a = to_string(GaussianFlowOptions{}.normalization), kFlowDoc);

  m.def(
      "gaussian_w2", [](const GM& a, const GM& b) { return gaussian_w2(a, b); }, "a"_a, "b"_a,
      kW2Doc);

  m.def(
      "gauss_hermite_measure",
      [](const GM& g, Index points) { return PyMeasure{gauss_hermite_measure(g, points)}; }, "g"_a,
      "points"_a, kGaussHermiteDoc);
}

}  // namespace measattn::python
