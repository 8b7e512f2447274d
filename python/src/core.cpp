// Bindings of measure.hpp, attention.hpp and io.hpp: Measure, Model, attention,
// load_model / save_model. Thin: argument conversion, then one library call with
// the GIL released.
#include <optional>
#include <sstream>

#include "convert.hpp"
#include "measattn/attention.hpp"
#include "measattn/io.hpp"
#include "measattn/measure.hpp"

namespace measattn::python {
namespace {

using namespace pybind11::literals;

// ---- Measure ---------------------------------------------------------------------

template <class Scalar>
PyMeasure new_measure(const py::handle& atoms, const py::handle& weights) {
  Matrix<Scalar> x = matrix_copy<Scalar>(atoms, "atoms");
  if (weights.is_none()) return PyMeasure{Measure<Scalar>::empirical(std::move(x))};
  return PyMeasure{Measure<Scalar>(std::move(x), vector_copy<Scalar>(weights, "weights"))};
}

std::string measure_repr(const PyMeasure& pm) {
  std::ostringstream s;
  std::visit(
      [&](const auto& mu) {
        s << "Measure(size=" << mu.size() << ", dim=" << mu.dim()
          << ", dtype=" << dtype_name(pm.dtype()) << (mu.is_uniform() ? ", uniform" : "") << ")";
      },
      pm.m);
  return s.str();
}

constexpr const char* kMeasureDoc = R"doc(
A weighted discrete probability measure on R^d.

    mu = sum_i w_i delta_{x_i},   w_i >= 0,   sum_i w_i = 1.

Parameters
----------
atoms : array_like, shape (n, d)
    One atom x_i per row (float32 or float64; other real dtypes are converted).
weights : array_like, shape (n,), optional
    Non-negative with a positive total; normalized to sum one. None means
    uniform (the empirical measure of the rows).
dtype : {"float32", "float64"}, optional
    None = float32 for float32 atoms, else float64.

Raises
------
ValueError
    Negative, NaN or infinite weights, a zero total, NaN or infinite
    coordinates, no atoms, or a weight count different from the atom count
    (the message names the argument).

Notes
-----
Exact: the atoms are stored as given and the weights divided by their sum once.
Every function of the package that takes ``tokens`` (and ``weights``) also takes
a Measure.

Examples
--------
>>> mu = measattn.Measure([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], weights=[1, 1, 2])
>>> mu
Measure(size=3, dim=2, dtype=float64)
>>> mu.weights
array([0.25, 0.25, 0.5 ])
>>> mu.mean(), mu.radius()
(array([0.25, 1.  ]), 2.0)

References
----------
docs/theory.md, section "Measures"; docs/python.md, "Measures".
)doc";

constexpr const char* kEmpiricalDoc = R"doc(
The empirical measure of the rows of `atoms`.

    mu_X = (1/n) sum_i delta_{x_i}

Parameters
----------
atoms : array_like, shape (n, d)
dtype : {"float32", "float64"}, optional
    None = float32 for float32 atoms, else float64.

Returns
-------
Measure
    Uniform weights 1/n (exact).

Examples
--------
>>> mu = measattn.Measure.empirical(np.eye(2))
>>> mu.weights, mu.is_uniform()
(array([0.5, 0.5]), True)
)doc";

constexpr const char* kMergedDoc = R"doc(
The same measure with nearby atoms merged.

Atoms closer than `tolerance` in the max-norm are merged into the first of
them, which carries their summed weight; zero-weight atoms are dropped.

Parameters
----------
tolerance : float, default 0.0
    Max-norm distance under which two atoms are one (0 = identical atoms only).

Returns
-------
Measure
    Same mass, fewer atoms (exact sums of the weights).

Examples
--------
>>> mu = measattn.Measure([[0.0], [1e-9], [1.0]])
>>> mu.merged(1e-6).weights
array([0.666667, 0.333333])
)doc";

constexpr const char* kPushForwardDoc = R"doc(
The push-forward T#mu of the measure by a map T given on its atoms.

    T#mu = sum_i w_i delta_{T(x_i)}

Parameters
----------
images : array_like, shape (n, d')
    Row i is T(x_i).

Returns
-------
Measure
    The images as atoms, with the weights of mu.

Examples
--------
>>> mu = measattn.Measure([[0.0], [1.0]], weights=[3, 1])
>>> nu = mu.push_forward([[2.0, 0.0], [3.0, 1.0]])
>>> nu.atoms, nu.weights
(array([[2., 0.],
       [3., 1.]]), array([0.75, 0.25]))
)doc";

constexpr const char* kMeasureAstypeDoc = R"doc(
The same measure in float32 or float64.

Parameters
----------
dtype : {"float32", "float64"} or a NumPy float dtype

Returns
-------
Measure
    Atoms and weights rounded to `dtype`; the weights are renormalized after
    rounding.

Examples
--------
>>> measattn.Measure(np.eye(2)).astype("float32").dtype
dtype('float32')
)doc";

void bind_measure(py::module_& m) {
  py::class_<PyMeasure>(m, "Measure", kMeasureDoc)
      .def(
          py::init([](const py::object& atoms, const py::object& weights, const py::object& dtype) {
            return dispatch(choose_dtype(atoms, dtype),
                            [&](auto s) { return new_measure<decltype(s)>(atoms, weights); });
          }),
          "atoms"_a, "weights"_a = py::none(), "dtype"_a = py::none())
      .def_static(
          "empirical",
          [](const py::object& atoms, const py::object& dtype) {
            return dispatch(choose_dtype(atoms, dtype),
                            [&](auto s) { return new_measure<decltype(s)>(atoms, py::none()); });
          },
          "atoms"_a, "dtype"_a = py::none(), kEmpiricalDoc)
      .def_property_readonly(
          "atoms",
          [](const py::object& self) -> py::array {
            const auto& pm = self.cast<const PyMeasure&>();
            return std::visit(
                [&](const auto& mu) -> py::array { return readonly_view(mu.atoms(), self); }, pm.m);
          },
          "The atoms x_i as a read-only (n, d) array (a view into the measure, no copy).")
      .def_property_readonly(
          "weights",
          [](const py::object& self) -> py::array {
            const auto& pm = self.cast<const PyMeasure&>();
            return std::visit(
                [&](const auto& mu) -> py::array { return readonly_view(mu.weights(), self); },
                pm.m);
          },
          "The normalized weights w_i as a read-only (n,) array (a view, no copy).")
      .def_property_readonly(
          "size",
          [](const PyMeasure& pm) {
            return std::visit([](const auto& mu) { return mu.size(); }, pm.m);
          },
          "Number of atoms n.")
      .def_property_readonly(
          "dim",
          [](const PyMeasure& pm) {
            return std::visit([](const auto& mu) { return mu.dim(); }, pm.m);
          },
          "Dimension d of the atoms.")
      .def_property_readonly(
          "dtype", [](const PyMeasure& pm) { return numpy_dtype(pm.dtype()); },
          "numpy.float32 or numpy.float64.")
      .def("__len__",
           [](const PyMeasure& pm) {
             return std::visit([](const auto& mu) { return mu.size(); }, pm.m);
           })
      .def(
          "is_uniform",
          [](const PyMeasure& pm) {
            return std::visit([](const auto& mu) { return mu.is_uniform(); }, pm.m);
          },
          "True when every stored weight equals 1/n exactly.\n\n"
          "Examples\n--------\n"
          ">>> measattn.Measure(np.eye(3)).is_uniform()\nTrue\n"
          ">>> measattn.Measure(np.eye(3), weights=[1, 1, 2]).is_uniform()\nFalse\n")
      .def(
          "mean",
          [](const PyMeasure& pm) -> py::array {
            return std::visit([](const auto& mu) -> py::array { return to_numpy(mu.mean()); },
                              pm.m);
          },
          "The barycenter sum_i w_i x_i, shape (d,) (the measure's dtype).\n\n"
          "Examples\n--------\n"
          ">>> measattn.Measure([[0.0, 0.0], [4.0, 2.0]], weights=[3, 1]).mean()\n"
          "array([1. , 0.5])\n")
      .def(
          "radius",
          [](const PyMeasure& pm) {
            return std::visit([](const auto& mu) { return static_cast<double>(mu.radius()); },
                              pm.m);
          },
          "max_i ||x_i|| (Euclidean) over atoms of positive weight: the smallest R with\n"
          "supp(mu) in the closed ball B_R (exact up to rounding). The Lipschitz bounds hold\n"
          "on B_R (docs/theory.md, \"Lipschitz continuity of attention in W1\").\n\n"
          "Examples\n--------\n"
          ">>> measattn.Measure([[3.0, 4.0], [0.0, 1.0]]).radius()\n5.0\n"
          ">>> measattn.Measure([[3.0, 4.0], [0.0, 1.0]], weights=[0, 1]).radius()\n1.0\n")
      .def(
          "merged",
          [](const PyMeasure& pm, double tolerance) {
            return std::visit(
                [&](const auto& mu) {
                  using S = typename std::decay_t<decltype(mu)>::MatrixType::Scalar;
                  return PyMeasure{mu.merged(static_cast<S>(tolerance))};
                },
                pm.m);
          },
          "tolerance"_a = 0.0, kMergedDoc)
      .def(
          "push_forward",
          [](const PyMeasure& pm, const py::object& images) {
            return std::visit(
                [&](const auto& mu) {
                  using S = typename std::decay_t<decltype(mu)>::MatrixType::Scalar;
                  return PyMeasure{mu.push_forward(matrix_copy<S>(images, "images"))};
                },
                pm.m);
          },
          "images"_a, kPushForwardDoc)
      .def(
          "astype",
          [](const PyMeasure& pm, const py::object& dtype) {
            return dispatch(parse_dtype_arg(dtype, pm.dtype()),
                            [&](auto s) { return PyMeasure{pm.as<decltype(s)>()}; });
          },
          "dtype"_a, kMeasureAstypeDoc)
      .def("__repr__", &measure_repr);
}

// ---- Model -----------------------------------------------------------------------

template <class Scalar>
Vector<Scalar> optional_vector(const py::handle& obj, const char* field) {
  if (obj.is_none()) return {};
  return vector_copy<Scalar>(obj, field);
}

template <class Scalar>
PyModel new_model(const py::handle& w_q, const py::handle& w_k, const py::handle& w_v,
                  const py::handle& w_o, const py::handle& b_q, const py::handle& b_k,
                  const py::handle& b_v, const py::handle& b_o, Index num_heads,
                  const std::string& potential, double scale) {
  Model<Scalar> model;
  model.num_heads = num_heads;
  model.potential = parse_potential(potential);
  model.scale = static_cast<Scalar>(scale);
  model.w_q = matrix_copy<Scalar>(w_q, "w_q");
  model.w_k = matrix_copy<Scalar>(w_k, "w_k");
  model.w_v = matrix_copy<Scalar>(w_v, "w_v");
  model.w_o = matrix_copy<Scalar>(w_o, "w_o");
  model.b_q = optional_vector<Scalar>(b_q, "b_q");
  model.b_k = optional_vector<Scalar>(b_k, "b_k");
  model.b_v = optional_vector<Scalar>(b_v, "b_v");
  model.b_o = optional_vector<Scalar>(b_o, "b_o");
  model.validate();
  return PyModel{std::move(model)};
}

// The value of sinkhorn_iterations given the deprecated keyword sinkhorn_iters
// (same meaning, kept for existing callers; it warns with DeprecationWarning).
int sinkhorn_iterations_arg(int sinkhorn_iterations, const std::optional<int>& sinkhorn_iters) {
  if (!sinkhorn_iters) return sinkhorn_iterations;
  if (PyErr_WarnEx(PyExc_DeprecationWarning,
                   "sinkhorn_iters is deprecated: use sinkhorn_iterations", 1) < 0) {
    throw py::error_already_set();
  }
  if (sinkhorn_iterations != AttendOptions{}.sinkhorn_iterations &&
      sinkhorn_iterations != *sinkhorn_iters) {
    throw invalid_argument(
        "sinkhorn_iters: deprecated spelling of sinkhorn_iterations, give only one of them");
  }
  return *sinkhorn_iters;
}

AttendOptions attend_options(bool causal, bool residual, const std::string& normalization,
                             int sinkhorn_iterations, Index query_block, Index key_block,
                             const py::object& communicator = py::none()) {
  AttendOptions o;
  o.communicator = communicator_arg(communicator);
  o.causal = causal;
  o.residual = residual;
  o.normalization = parse_normalization(normalization);
  o.sinkhorn_iterations = sinkhorn_iterations;
  o.query_block = query_block;
  o.key_block = key_block;
  return o;
}

enum class FieldKind { field, heads, reference };

// Gamma_mu(y_i) for the queries (default: the atoms of mu).
template <class Scalar>
py::array field_call(const PyModel& pm, const py::handle& tokens, const py::handle& weights,
                     const py::handle& queries, const AttendOptions& options, FieldKind kind) {
  ModelArg<Scalar> model(pm);
  MeasureArg<Scalar> mu(tokens, weights);
  std::optional<MatrixArg<Scalar>> q;
  if (!queries.is_none()) q.emplace(matrix_arg<Scalar>(queries, "queries"));
  Matrix<Scalar> out;
  {
    py::gil_scoped_release release;
    const MatrixRef<Scalar> y = q ? MatrixRef<Scalar>(q->map) : MatrixRef<Scalar>(mu.get().atoms());
    switch (kind) {
      case FieldKind::field:
        out = attention_field(model.get(), mu.get(), y, options);
        break;
      case FieldKind::heads:
        out = head_fields(model.get(), mu.get(), y, options);
        break;
      case FieldKind::reference:
        out = transformer_attention(model.get(), mu.get(), y, options);
        break;
    }
  }
  return to_numpy(std::move(out));
}

template <class Scalar>
py::array kernel_call(const PyModel& pm, const py::handle& tokens, const py::handle& weights,
                      const py::handle& queries, Index head, const AttendOptions& options) {
  ModelArg<Scalar> model(pm);
  MeasureArg<Scalar> mu(tokens, weights);
  std::optional<MatrixArg<Scalar>> q;
  if (!queries.is_none()) q.emplace(matrix_arg<Scalar>(queries, "queries"));
  Matrix<Scalar> out;
  {
    py::gil_scoped_release release;
    const MatrixRef<Scalar> y = q ? MatrixRef<Scalar>(q->map) : MatrixRef<Scalar>(mu.get().atoms());
    out = attention_kernel(model.get(), mu.get(), y, head, options);
  }
  return to_numpy(std::move(out));
}

template <class Scalar>
PyMeasure self_call(const PyModel& pm, const py::handle& tokens, const py::handle& weights,
                    const AttendOptions& options) {
  ModelArg<Scalar> model(pm);
  MeasureArg<Scalar> mu(tokens, weights);
  py::gil_scoped_release release;
  return PyMeasure{self_attention(model.get(), mu.get(), options)};
}

template <class Scalar>
PyMeasure cross_call(const PyModel& pm, const py::handle& nu_obj, const py::handle& mu_obj,
                     const AttendOptions& options) {
  ModelArg<Scalar> model(pm);
  MeasureArg<Scalar> nu(nu_obj, py::none(), "nu");
  MeasureArg<Scalar> mu(mu_obj, py::none(), "mu");
  py::gil_scoped_release release;
  return PyMeasure{cross_attention(model.get(), nu.get(), mu.get(), options)};
}

// Model fields as read-only views into the model (kept alive by the arrays).
#define MEASATTN_FIELD_GETTER(name)                                                              \
  [](const py::object& self) -> py::object {                                                     \
    const auto& pm = self.cast<const PyModel&>();                                                \
    return std::visit(                                                                           \
        [&](const auto& model) -> py::object { return readonly_view(model.name, self); }, pm.m); \
  }

std::string model_repr(const PyModel& pm) {
  std::ostringstream s;
  std::visit(
      [&](const auto& model) {
        s << "Model(embed_dim=" << model.embed_dim() << ", num_heads=" << model.num_heads
          << ", query_dim=" << model.query_dim() << ", key_dim=" << model.key_dim()
          << ", out_dim=" << model.out_dim() << ", potential='" << to_string(model.potential)
          << "', tau=" << static_cast<double>(model.tau())
          << ", bias=" << (model.has_bias() ? "True" : "False")
          << ", dtype=" << dtype_name(pm.dtype()) << ")";
      },
      pm.m);
  return s.str();
}

template <class F>
auto on_model(F f) {
  return [f](const PyModel& pm) { return std::visit(f, pm.m); };
}

constexpr const char* kModelDoc = R"doc(
One multi-head attention layer in PyTorch nn.MultiheadAttention's layout.

Parameters
----------
w_q : array_like, shape (E, d_q)
    Query projection (E the embedding size, H heads, head size k = E / H).
w_k, w_v : array_like, shape (E, d_kv)
    Key and value projections.
w_o : array_like, shape (d_out, E)
    Output projection.
b_q, b_k, b_v : array_like, shape (E,), optional
    Biases; None = zero.
b_o : array_like, shape (d_out,), optional
    Output bias; None = zero.
num_heads : int, default 1
    H, a divisor of E.
potential : {"dot", "l2", "cosine"}, default "dot"
    The logit G of each head (below).
scale : float, default 0.0
    The temperature tau; 0 means sqrt(E / num_heads), PyTorch's.
dtype : {"float32", "float64"}, optional
    None = that of w_q (float32 stays float32, anything else is float64).

Notes
-----
Head h uses rows [h k, (h+1) k) of w_q, w_k, w_v:

    q(x) = Q_h x + b_q,h,   kappa(y) = K_h y + b_k,h,   v(y) = V_h y + b_v,h
    G(x, y) = <q(x), kappa(y)> / tau          potential "dot" (the Transformer's)
    G(x, y) = -||q(x) - kappa(y)||^2 / tau    potential "l2"  (Kim et al. 2021)
    G(x, y) = <q(x), kappa(y)> / (||q(x)|| ||kappa(y)|| tau)   potential "cosine"
              (a zero projection normalizes to 0: G = 0 there)
    pi_j(x) = softmax_j(G(x, x_j) + log w_j)
    Gamma_mu(x) = W_O [sum_j pi^1_j(x) v^1(x_j); ...; sum_j pi^H_j(x) v^H(x_j)] + b_O

The parameters are copied and validated (ValueError naming the parameter) and
read back as read-only NumPy views. Model.from_torch copies an
nn.MultiheadAttention; Model.to_torch builds one.

Examples
--------
The canonical model (Q = K = V = W_O = I, tau = 1) on three tokens, against
the formula computed with NumPy:

>>> x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
>>> model = measattn.Model(np.eye(2), np.eye(2), np.eye(2), np.eye(2), scale=1.0)
>>> model
Model(embed_dim=2, num_heads=1, query_dim=2, key_dim=2, out_dim=2, potential='dot', tau=1, bias=False, dtype=float64)
>>> logits = x @ x.T
>>> pi = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
>>> bool(np.allclose(model.attend(x), pi @ x))
True
>>> model.attend(x)
array([[0.844638, 0.577681],
       [0.577681, 0.844638],
       [0.788058, 0.788058]])

References
----------
Vaswani et al., "Attention is all you need" (2017); Kim, Papamakarios and Mnih,
"The Lipschitz constant of self-attention" (2021); docs/theory.md, section
"Attention as a map on measures".
)doc";

constexpr const char* kValidateDoc = R"doc(
Checks the shapes, finiteness and scale of the parameters.

Raises
------
ValueError
    Naming the parameter (w_q, b_o, num_heads, scale, ...).

Examples
--------
>>> measattn.Model.random(4, num_heads=2).validate()
)doc";

constexpr const char* kHeadDoc = R"doc(
The parameters of head h.

Parameters
----------
h : int
    0 <= h < num_heads.

Returns
-------
dict
    q, k, v: (k, d) blocks of w_q, w_k, w_v (rows [h k, (h+1) k)); b_q, b_k,
    b_v: (k,) with zero biases explicit; tau (float) and potential (str).

Examples
--------
>>> head = measattn.Model.random(4, num_heads=2, seed=0).head(1)
>>> sorted(head), head["q"].shape, round(head["tau"], 6)
(['b_k', 'b_q', 'b_v', 'k', 'potential', 'q', 'tau', 'v'], (2, 4), 1.414214)
)doc";

constexpr const char* kModelAstypeDoc = R"doc(
The same model in float32 or float64 (parameters rounded to `dtype`).

Examples
--------
>>> measattn.Model.canonical(3, 1.0).astype("float32").dtype
dtype('float32')
)doc";

constexpr const char* kRandomDoc = R"doc(
A random model: E = d_q = d_kv = d_out = dim, entries N(0, 1/dim).

Parameters
----------
dim : int
num_heads : int, default 1
    A divisor of dim.
bias : bool, default True
    Random biases too (else none).
seed : int, default 0
    The same seed gives the same model on every platform and thread count.
potential : {"dot", "l2", "cosine"}, default "dot"
dtype : {"float32", "float64"}, default "float64"

Examples
--------
>>> model = measattn.Model.random(4, num_heads=2, seed=0)
>>> model.embed_dim, model.head_dim, model.has_bias
(4, 2, True)
>>> bool(np.array_equal(model.w_q, measattn.Model.random(4, num_heads=2, seed=0).w_q))
True
)doc";

constexpr const char* kCanonicalDoc = R"doc(
The canonical model of the particle literature.

One head, Q = K = V = W_O = I_dim, no biases, potential "dot" with tau = 1/beta:

    G(x, y) = beta <x, y>,   Gamma_mu(x) = sum_j w_j e^{beta <x, x_j>} x_j / Z(x).

Parameters
----------
dim : int
beta : float
    Inverse temperature (> 0).
dtype : {"float32", "float64"}, default "float64"

Examples
--------
>>> model = measattn.Model.canonical(2, beta=2.0)
>>> model.tau, model.num_heads, measattn.is_canonical(model)
(0.5, 1, (True, 2.0))

References
----------
Geshkovski, Letrouit, Polyanskiy and Rigollet, "A mathematical perspective on
Transformers" (2023); docs/theory.md, "Tokens as interacting particles".
)doc";

constexpr const char* kSaveDoc = R"doc(
Saves the model as a safetensors file, atomically.

Tensor names are PyTorch's state-dict names (in_proj_weight, in_proj_bias,
out_proj.weight, out_proj.bias); the metadata holds num_heads, potential and
scale. load_model reads it back exactly.

Parameters
----------
path : str
dtype : {"float32", "float64"}, optional
    None = the model's.

Examples
--------
>>> import os, tempfile
>>> model = measattn.Model.random(4, num_heads=2, seed=3)
>>> with tempfile.TemporaryDirectory() as d:
...     model.save(os.path.join(d, "layer.safetensors"))
...     back = measattn.load_model(os.path.join(d, "layer.safetensors"))
>>> bool(np.array_equal(back.w_o, model.w_o)), back.num_heads
(True, 2)

References
----------
docs/io.md (the safetensors layout).
)doc";

constexpr const char* kAttendArgs = R"doc(
Parameters
----------
tokens : array_like, shape (m, d_kv), or Measure
    The atoms x_j of mu (keys and values).
weights : array_like, shape (m,), optional
    Weights of the tokens (normalized); None = uniform. Must be None when
    tokens is a Measure.
queries : array_like, shape (n, d_q), optional
    Query points y_i; None = the tokens (self-attention).
causal : bool, default False
    Query i sees keys j <= i only.
residual : bool, default False
    Add the query: y_i + Gamma_mu(y_i) (needs d_out == d_q).
normalization : {"softmax", "sinkhorn"}, default "softmax"
    "sinkhorn": doubly stochastic attention (self-attention only).
sinkhorn_iterations : int
    Sinkhorn half-steps beyond softmax (with "sinkhorn"); sinkhorn_iters is its
    deprecated spelling (keyword only).
query_block, key_block : int, default 0
    Block sizes of the streaming kernel (0 = automatic; no effect on the result).
dtype : {"float32", "float64"}, optional
    None = float32 when tokens are float32, else float64.
communicator : mpi4py communicator, optional (keyword only)
    The ranks that share the work (docs/distributed.md): every rank passes
    the same tokens and queries, each computes its share of the queries
    against the keys sent from rank to rank, and every rank gets the whole
    result, bit-identical to one process. None = this process alone.
    Softmax only.
)doc";

constexpr const char* kAttendShardDoc = R"doc(
Distributed attention on this rank's part of the tokens and queries.

    rank r passes rows [o_r, o_r + m_r) of the tokens (with their weights)
    and rows [p_r, p_r + n_r) of the queries, in rank order, and gets back
    rows [p_r, p_r + n_r) of Gamma_mu,  mu = sum_j w_j delta_{x_j} / sum_j w_j

the total taken over every rank. The result is bit-identical to the same rows
of attend on the whole input in one process, whatever the number of ranks and
the split; no rank ever holds more than its own tokens, one other rank's in
flight and one key block (docs/distributed.md).

Parameters
----------
tokens : array_like, shape (m_r, d_kv)
    This rank's tokens (keys and values); may be empty.
weights : array_like, shape (m_r,), optional
    Their weights, not normalized (the whole measure divides by the total over
    every rank); None = 1 for each token.
queries : array_like, shape (n_r, d_q), optional
    This rank's queries; None = its tokens (self-attention).
causal : bool, default False
    Query p_r + i sees tokens at global positions <= p_r + i.
residual : bool, default False
    Add the query.
key_block : int, default 0
    Key block of the streaming kernel (0 = automatic).
dtype : {"float32", "float64"}, optional
    None = float32 when tokens are float32, else float64.
communicator : mpi4py communicator, optional (keyword only)
    None = this process alone (then this is attend on the given rows).

Returns
-------
numpy.ndarray, shape (n_r, d_out)
    This rank's rows of the attention field (the value computed, not a bound).

Raises
------
ValueError
    On bad input on any rank: every rank raises the lowest failing rank's
    message.

Examples
--------
>>> x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
>>> model = measattn.Model.canonical(2, beta=1.0)
>>> out = model.attend_shard(x, weights=[2.0, 2.0, 2.0])
>>> bool(np.allclose(out, model.attend(x), rtol=0, atol=1e-15))
True
>>> model.attend_shard(x, causal=True)[:2]
array([[1.      , 0.      ],
       [0.268941, 0.731059]])

References
----------
docs/distributed.md; docs/theory.md, section "Attention as a map on measures".
)doc";

constexpr const char* kAttendDoc = R"doc(
The attention field Gamma_mu(y_i) for every query y_i.

    Gamma_mu(y) = W_O [sum_j pi^h_j(y) v^h(x_j)]_h + b_O,
    pi^h_j(y) = softmax_j(G_h(y, x_j) + log w_j),   mu = sum_j w_j delta_{x_j}
)doc";

constexpr const char* kAttendMore = R"doc(
Returns
-------
numpy.ndarray, shape (n, d_out)
    Gamma_mu(y_i) per row (y_i + Gamma_mu(y_i) with residual), in the call's
    dtype; equal to PyTorch's nn.MultiheadAttention output to rounding (the
    value computed, not a bound).

Notes
-----
Streaming (online log-sum-exp over key blocks): O(n m E) time, O((n + m) E)
memory; the same result whatever the block sizes and thread count.

Examples
--------
>>> x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
>>> model = measattn.Model.canonical(2, beta=1.0)
>>> model.attend(x)
array([[0.844638, 0.577681],
       [0.577681, 0.844638],
       [0.788058, 0.788058]])
>>> model.attend(x, causal=True)[:2]
array([[1.      , 0.      ],
       [0.268941, 0.731059]])
>>> model.attend(x, queries=[[2.0, 0.0]])
array([[0.936621, 0.531689]])

References
----------
docs/theory.md, section "Attention as a map on measures"; docs/python.md,
"Models and attention".
)doc";

const std::string& attend_doc() {
  static const std::string doc = std::string(kAttendDoc) + kAttendArgs + kAttendMore;
  return doc;
}

constexpr const char* kHeadFieldsDoc = R"doc(
The per-head fields before the output projection.

    [sum_j pi^1_j(y_i) v^1(x_j); ...; sum_j pi^H_j(y_i) v^H(x_j)]

Arguments as for attend (no residual).

Returns
-------
numpy.ndarray, shape (n, E)
    Head h in columns [h k, (h+1) k); attend = this @ w_o.T + b_o.

Examples
--------
>>> model = measattn.Model.random(4, num_heads=2, seed=1)
>>> x = np.random.default_rng(0).normal(size=(5, 4))
>>> fields = model.head_fields(x)
>>> fields.shape, bool(np.allclose(fields @ model.w_o.T + model.b_o, model.attend(x)))
((5, 4), True)
)doc";

constexpr const char* kReferenceDoc = R"doc(
The Transformer formula computed directly: a reference for checks.

    softmax(Q K^T / tau + log w) V per head, then W_O and b_O,

with the full n x m logit matrix (O(n m) memory). Arguments as for attend.

Returns
-------
numpy.ndarray, shape (n, d_out)
    The same value as attend up to rounding.

Examples
--------
>>> model = measattn.Model.random(4, num_heads=2, seed=1)
>>> x = np.random.default_rng(0).normal(size=(6, 4))
>>> bool(np.allclose(model.reference(x), model.attend(x), rtol=0, atol=1e-12))
True
)doc";

constexpr const char* kKernelDoc = R"doc(
The attention kernel of one head, materialized.

    pi(y_i)_j = softmax_j(G(y_i, x_j) + log w_j)

Parameters
----------
tokens, weights, queries, causal, normalization, sinkhorn_iterations, dtype
    As for attend.
head : int, default 0
    0 <= head < num_heads.

Returns
-------
numpy.ndarray, shape (n, m)
    Row i is pi(y_i): rows sum to one; zero-weight or masked keys get exactly 0.
    O(n m) memory: for inspection of small inputs.

Examples
--------
>>> x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
>>> measattn.Model.canonical(2, beta=1.0).kernel(x)
array([[0.422319, 0.155362, 0.422319],
       [0.155362, 0.422319, 0.422319],
       [0.211942, 0.211942, 0.576117]])
>>> measattn.Model.canonical(2, beta=1.0).kernel(x, weights=[0, 1, 1])[0]
array([0.      , 0.268941, 0.731059])
)doc";

constexpr const char* kSelfAttentionDoc = R"doc(
Self-attention as a map on measures: F(mu) = (Gamma_mu)#mu.

    F(mu) = sum_i w_i delta_{Gamma_mu(x_i)}   (residual: (id + Gamma_mu)#mu)

Parameters
----------
mu : Measure or array_like, shape (n, d)
weights : array_like, shape (n,), optional
    With an array mu; None = uniform.
causal, residual, normalization, sinkhorn_iterations, dtype, communicator
    As for attend.

Returns
-------
Measure
    The images Gamma_mu(x_i) as atoms, with the weights of mu.

Examples
--------
>>> x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
>>> out = measattn.Model.canonical(2, beta=1.0).self_attention(x, weights=[2, 1, 1])
>>> out.weights
array([0.5 , 0.25, 0.25])
>>> out.atoms[0]
array([0.890768, 0.406155])

References
----------
docs/theory.md, section "Attention as a map on measures".
)doc";

constexpr const char* kCrossAttentionDoc = R"doc(
Cross-attention: F(nu; mu) = (Gamma_mu)#nu.

Queries from nu, keys and values from mu.

Parameters
----------
nu : Measure or array_like, shape (n, d_q)
    The queries (arrays: uniform weights).
mu : Measure or array_like, shape (m, d_kv)
    The keys and values (arrays: uniform weights).
residual : bool, default False
dtype : {"float32", "float64"}, optional

Returns
-------
Measure
    sum_i nu_i delta_{Gamma_mu(y_i)}.

Examples
--------
>>> x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
>>> measattn.Model.canonical(2, beta=1.0).cross_attention(x[:1], x).atoms
array([[0.844638, 0.577681]])
)doc";

constexpr const char* kLoadModelDoc = R"doc(
Loads a model from a safetensors file.

Parameters
----------
path : str
    Tensors with PyTorch nn.MultiheadAttention names: in_proj_weight (3E, E) or
    q_proj_weight / k_proj_weight / v_proj_weight, in_proj_bias,
    out_proj.weight, out_proj.bias (F32 or F64); metadata num_heads
    (required), potential, scale.
dtype : {"float32", "float64"}, default "float64"

Returns
-------
Model

Raises
------
ValueError
    Naming the file and the field (every dtype, shape and byte count is checked
    before anything is read into the model).

Examples
--------
>>> import os, tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     measattn.save_model(os.path.join(d, "m.safetensors"), measattn.Model.canonical(3, 2.0))
...     model = measattn.load_model(os.path.join(d, "m.safetensors"))
>>> model.tau, model.w_q.shape
(0.5, (3, 3))

References
----------
docs/io.md.
)doc";

constexpr const char* kSaveModelDoc = R"doc(
Saves `model` as safetensors, atomically (see Model.save).

Parameters
----------
path : str
model : Model
dtype : {"float32", "float64"}, optional
    None = the model's.

Examples
--------
>>> import os, tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     path = os.path.join(d, "m.safetensors")
...     measattn.save_model(path, measattn.Model.random(2), dtype="float32")
...     measattn.load_model(path, dtype="float32").dtype
dtype('float32')
)doc";

void bind_model(py::module_& m) {
  py::class_<PyModel> cls(m, "Model", kModelDoc);
  cls.def(py::init([](const py::object& w_q, const py::object& w_k, const py::object& w_v,
                      const py::object& w_o, const py::object& b_q, const py::object& b_k,
                      const py::object& b_v, const py::object& b_o, Index num_heads,
                      const std::string& potential, double scale, const py::object& dtype) {
            return dispatch(choose_dtype(w_q, dtype), [&](auto s) {
              return new_model<decltype(s)>(w_q, w_k, w_v, w_o, b_q, b_k, b_v, b_o, num_heads,
                                            potential, scale);
            });
          }),
          "w_q"_a, "w_k"_a, "w_v"_a, "w_o"_a, "b_q"_a = py::none(), "b_k"_a = py::none(),
          "b_v"_a = py::none(), "b_o"_a = py::none(), "num_heads"_a = 1, "potential"_a = "dot",
          "scale"_a = 0.0, "dtype"_a = py::none());

  cls.def_property_readonly("w_q", MEASATTN_FIELD_GETTER(w_q), "(E, d_q) query projection.")
      .def_property_readonly("w_k", MEASATTN_FIELD_GETTER(w_k), "(E, d_kv) key projection.")
      .def_property_readonly("w_v", MEASATTN_FIELD_GETTER(w_v), "(E, d_kv) value projection.")
      .def_property_readonly("w_o", MEASATTN_FIELD_GETTER(w_o), "(d_out, E) output projection.")
      .def_property_readonly("b_q", MEASATTN_FIELD_GETTER(b_q),
                             "(E,) query bias, or (0,) for none.")
      .def_property_readonly("b_k", MEASATTN_FIELD_GETTER(b_k), "(E,) key bias, or (0,) for none.")
      .def_property_readonly("b_v", MEASATTN_FIELD_GETTER(b_v),
                             "(E,) value bias, or (0,) for none.")
      .def_property_readonly("b_o", MEASATTN_FIELD_GETTER(b_o),
                             "(d_out,) output bias, or (0,) for none.")
      .def_property_readonly("num_heads", on_model([](const auto& x) { return x.num_heads; }),
                             "H, the number of heads.")
      .def_property_readonly("potential",
                             on_model([](const auto& x) { return to_string(x.potential); }),
                             "\"dot\", \"l2\" or \"cosine\".")
      .def_property_readonly("scale",
                             on_model([](const auto& x) { return static_cast<double>(x.scale); }),
                             "The stored scale tau (0 = default sqrt(head_dim)); see tau.")
      .def_property_readonly("tau",
                             on_model([](const auto& x) { return static_cast<double>(x.tau()); }),
                             "The temperature in use: scale if positive, else sqrt(head_dim).")
      .def_property_readonly("embed_dim", on_model([](const auto& x) { return x.embed_dim(); }),
                             "E, the rows of w_q, w_k, w_v.")
      .def_property_readonly("head_dim", on_model([](const auto& x) { return x.head_dim(); }),
                             "k = E / H.")
      .def_property_readonly("query_dim", on_model([](const auto& x) { return x.query_dim(); }),
                             "d_q, the columns of w_q.")
      .def_property_readonly("key_dim", on_model([](const auto& x) { return x.key_dim(); }),
                             "d_kv, the columns of w_k and w_v.")
      .def_property_readonly("out_dim", on_model([](const auto& x) { return x.out_dim(); }),
                             "d_out, the rows of w_o.")
      .def_property_readonly("has_bias", on_model([](const auto& x) { return x.has_bias(); }),
                             "True when any bias is stored.")
      .def_property_readonly(
          "dtype", [](const PyModel& pm) { return numpy_dtype(pm.dtype()); },
          "numpy.float32 or numpy.float64.");

  cls.def("validate", on_model([](const auto& x) { x.validate(); }), kValidateDoc)
      .def(
          "head",
          [](const PyModel& pm, Index h) {
            return std::visit(
                [&](const auto& model) {
                  auto hd = model.head(h);
                  py::dict d;
                  d["q"] = to_numpy(std::move(hd.q));
                  d["k"] = to_numpy(std::move(hd.k));
                  d["v"] = to_numpy(std::move(hd.v));
                  d["b_q"] = to_numpy(std::move(hd.b_q));
                  d["b_k"] = to_numpy(std::move(hd.b_k));
                  d["b_v"] = to_numpy(std::move(hd.b_v));
                  d["tau"] = static_cast<double>(hd.tau);
                  d["potential"] = to_string(hd.potential);
                  return d;
                },
                pm.m);
          },
          "h"_a, kHeadDoc)
      .def(
          "astype",
          [](const PyModel& pm, const py::object& dtype) {
            return dispatch(parse_dtype_arg(dtype, pm.dtype()),
                            [&](auto s) { return PyModel{pm.as<decltype(s)>()}; });
          },
          "dtype"_a, kModelAstypeDoc)
      .def_static(
          "random",
          [](Index dim, Index num_heads, bool bias, unsigned long long seed,
             const std::string& potential, const py::object& dtype) {
            return dispatch(parse_dtype_arg(dtype, DT::f64), [&](auto s) {
              using S = decltype(s);
              return PyModel{
                  Model<S>::random(dim, num_heads, bias, seed, parse_potential(potential))};
            });
          },
          "dim"_a, "num_heads"_a = 1, "bias"_a = true, "seed"_a = 0, "potential"_a = "dot",
          "dtype"_a = "float64", kRandomDoc)
      .def_static(
          "canonical",
          [](Index dim, double beta, const py::object& dtype) {
            return dispatch(parse_dtype_arg(dtype, DT::f64), [&](auto s) {
              using S = decltype(s);
              return PyModel{Model<S>::canonical(dim, static_cast<S>(beta))};
            });
          },
          "dim"_a, "beta"_a, "dtype"_a = "float64", kCanonicalDoc)
      .def(
          "save",
          [](const PyModel& pm, const std::string& path, const py::object& dtype) {
            const DT t = parse_dtype_arg(dtype, pm.dtype());
            std::visit(
                [&](const auto& model) {
                  save_model(path, model, t == DT::f32 ? DType::f32 : DType::f64);
                },
                pm.m);
          },
          "path"_a, "dtype"_a = py::none(), kSaveDoc)
      .def("__repr__", &model_repr);

  // Keywords = AttendOptions' table (attention.hpp), defaults from AttendOptions{};
  // sinkhorn_iters (keyword-only) is the deprecated spelling of sinkhorn_iterations.
  const AttendOptions attend;
  register_option_fields("attend", &option_fields_of<AttendOptions>);
  cls.def(
         "attend",
         [](const PyModel& pm, const py::object& tokens, const py::object& weights,
            const py::object& queries, bool causal, bool residual, const std::string& normalization,
            int sinkhorn_iterations, Index query_block, Index key_block, const py::object& dtype,
            const std::optional<int>& sinkhorn_iters, const py::object& communicator) {
           const auto o =
               attend_options(causal, residual, normalization,
                              sinkhorn_iterations_arg(sinkhorn_iterations, sinkhorn_iters),
                              query_block, key_block, communicator);
           return dispatch(call_dtype(tokens, dtype), [&](auto s) {
             return field_call<decltype(s)>(pm, tokens, weights, queries, o, FieldKind::field);
           });
         },
         "tokens"_a, "weights"_a = py::none(), "queries"_a = py::none(), "causal"_a = attend.causal,
         "residual"_a = attend.residual, "normalization"_a = to_string(attend.normalization),
         "sinkhorn_iterations"_a = attend.sinkhorn_iterations, "query_block"_a = attend.query_block,
         "key_block"_a = attend.key_block, "dtype"_a = py::none(), py::kw_only(),
         "sinkhorn_iters"_a = py::none(), "communicator"_a = py::none(), attend_doc().c_str())
      .def(
          "attend_shard",
          [](const PyModel& pm, const py::object& tokens, const py::object& weights,
             const py::object& queries, bool causal, bool residual, Index key_block,
             const py::object& dtype, const py::object& communicator) {
            const auto o =
                attend_options(causal, residual, "softmax", 0, 0, key_block, communicator);
            return dispatch(call_dtype(tokens, dtype), [&](auto s) -> py::array {
              using S = decltype(s);
              ModelArg<S> model(pm);
              const MatrixArg<S> x = matrix_arg<S>(tokens, "tokens");
              const Vector<S> w = weights.is_none() ? Vector<S>(Vector<S>::Ones(x.map.rows()))
                                                    : vector_copy<S>(weights, "weights");
              std::optional<MatrixArg<S>> q;
              if (!queries.is_none()) q.emplace(matrix_arg<S>(queries, "queries"));
              Matrix<S> out;
              {
                py::gil_scoped_release release;
                const MatrixRef<S> y = q ? MatrixRef<S>(q->map) : MatrixRef<S>(x.map);
                out = attention_field_shard(model.get(), MatrixRef<S>(x.map), w, y, o);
              }
              return to_numpy(std::move(out));
            });
          },
          "tokens"_a, "weights"_a = py::none(), "queries"_a = py::none(),
          "causal"_a = attend.causal, "residual"_a = attend.residual,
          "key_block"_a = attend.key_block, "dtype"_a = py::none(), py::kw_only(),
          "communicator"_a = py::none(), kAttendShardDoc)
      .def(
          "head_fields",
          [](const PyModel& pm, const py::object& tokens, const py::object& weights,
             const py::object& queries, bool causal, const std::string& normalization,
             int sinkhorn_iterations, Index query_block, Index key_block, const py::object& dtype,
             const std::optional<int>& sinkhorn_iters) {
            const auto o =
                attend_options(causal, false, normalization,
                               sinkhorn_iterations_arg(sinkhorn_iterations, sinkhorn_iters),
                               query_block, key_block);
            return dispatch(call_dtype(tokens, dtype), [&](auto s) {
              return field_call<decltype(s)>(pm, tokens, weights, queries, o, FieldKind::heads);
            });
          },
          "tokens"_a, "weights"_a = py::none(), "queries"_a = py::none(),
          "causal"_a = attend.causal, "normalization"_a = to_string(attend.normalization),
          "sinkhorn_iterations"_a = attend.sinkhorn_iterations,
          "query_block"_a = attend.query_block, "key_block"_a = attend.key_block,
          "dtype"_a = py::none(), py::kw_only(), "sinkhorn_iters"_a = py::none(), kHeadFieldsDoc)
      .def(
          "reference",
          [](const PyModel& pm, const py::object& tokens, const py::object& weights,
             const py::object& queries, bool causal, bool residual,
             const std::string& normalization, int sinkhorn_iterations, const py::object& dtype,
             const std::optional<int>& sinkhorn_iters) {
            const auto o =
                attend_options(causal, residual, normalization,
                               sinkhorn_iterations_arg(sinkhorn_iterations, sinkhorn_iters), 0, 0);
            return dispatch(call_dtype(tokens, dtype), [&](auto s) {
              return field_call<decltype(s)>(pm, tokens, weights, queries, o, FieldKind::reference);
            });
          },
          "tokens"_a, "weights"_a = py::none(), "queries"_a = py::none(),
          "causal"_a = attend.causal, "residual"_a = attend.residual,
          "normalization"_a = to_string(attend.normalization),
          "sinkhorn_iterations"_a = attend.sinkhorn_iterations, "dtype"_a = py::none(),
          py::kw_only(), "sinkhorn_iters"_a = py::none(), kReferenceDoc)
      .def(
          "kernel",
          [](const PyModel& pm, const py::object& tokens, const py::object& weights,
             const py::object& queries, Index head, bool causal, const std::string& normalization,
             int sinkhorn_iterations, const py::object& dtype,
             const std::optional<int>& sinkhorn_iters) {
            const auto o =
                attend_options(causal, false, normalization,
                               sinkhorn_iterations_arg(sinkhorn_iterations, sinkhorn_iters), 0, 0);
            return dispatch(call_dtype(tokens, dtype), [&](auto s) {
              return kernel_call<decltype(s)>(pm, tokens, weights, queries, head, o);
            });
          },
          "tokens"_a, "weights"_a = py::none(), "queries"_a = py::none(), "head"_a = 0,
          "causal"_a = attend.causal, "normalization"_a = to_string(attend.normalization),
          "sinkhorn_iterations"_a = attend.sinkhorn_iterations, "dtype"_a = py::none(),
          py::kw_only(), "sinkhorn_iters"_a = py::none(), kKernelDoc)
      .def(
          "self_attention",
          [](const PyModel& pm, const py::object& mu, const py::object& weights, bool causal,
             bool residual, const std::string& normalization, int sinkhorn_iterations,
             const py::object& dtype, const std::optional<int>& sinkhorn_iters,
             const py::object& communicator) {
            const auto o = attend_options(
                causal, residual, normalization,
                sinkhorn_iterations_arg(sinkhorn_iterations, sinkhorn_iters), 0, 0, communicator);
            return dispatch(call_dtype(mu, dtype),
                            [&](auto s) { return self_call<decltype(s)>(pm, mu, weights, o); });
          },
          "mu"_a, "weights"_a = py::none(), "causal"_a = attend.causal,
          "residual"_a = attend.residual, "normalization"_a = to_string(attend.normalization),
          "sinkhorn_iterations"_a = attend.sinkhorn_iterations, "dtype"_a = py::none(),
          py::kw_only(), "sinkhorn_iters"_a = py::none(), "communicator"_a = py::none(),
          kSelfAttentionDoc)
      .def(
          "cross_attention",
          [](const PyModel& pm, const py::object& nu, const py::object& mu, bool residual,
             const py::object& dtype) {
            const auto o = attend_options(false, residual, "softmax", 0, 0, 0);
            return dispatch(call_dtype(mu, dtype),
                            [&](auto s) { return cross_call<decltype(s)>(pm, nu, mu, o); });
          },
          "nu"_a, "mu"_a, "residual"_a = attend.residual, "dtype"_a = py::none(),
          kCrossAttentionDoc);
}

void bind_io(py::module_& m) {
  m.def(
      "load_model",
      [](const std::string& path, const py::object& dtype) {
        return dispatch(parse_dtype_arg(dtype, DT::f64), [&](auto s) {
          using S = decltype(s);
          Model<S> model;
          {
            py::gil_scoped_release release;
            model = load_model<S>(path);
          }
          return PyModel{std::move(model)};
        });
      },
      "path"_a, "dtype"_a = "float64", kLoadModelDoc);
  m.def(
      "save_model",
      [](const std::string& path, const PyModel& pm, const py::object& dtype) {
        const DT t = parse_dtype_arg(dtype, pm.dtype());
        std::visit(
            [&](const auto& model) {
              save_model(path, model, t == DT::f32 ? DType::f32 : DType::f64);
            },
            pm.m);
      },
      "path"_a, "model"_a, "dtype"_a = py::none(), kSaveModelDoc);
}

}  // namespace

void bind_core(py::module_& m) {
  bind_measure(m);
  bind_model(m);
  bind_io(m);
}

}  // namespace measattn::python
