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
A weighted discrete probability measure on R^d,

    mu = sum_i w_i delta_{x_i},   w_i >= 0,   sum_i w_i = 1.

Measure(atoms, weights=None, dtype=None)

atoms:   array-like (n, d), one atom per row.
weights: array-like (n,), non-negative with a positive total; normalized to sum
         one. None means uniform (the empirical measure of the rows).
dtype:   "float32" or "float64"; None = float32 for float32 atoms, else float64.

Negative/NaN/infinite weights, a zero total, NaN or infinite coordinates, no
atoms, or a weight count different from the atom count raise ValueError.
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
          "atoms"_a, "dtype"_a = py::none(),
          "The empirical measure mu_X = (1/n) sum_i delta_{x_i} of the rows of atoms (n, d).")
      .def_property_readonly(
          "atoms",
          [](const py::object& self) -> py::array {
            const auto& pm = self.cast<const PyMeasure&>();
            return std::visit(
                [&](const auto& mu) -> py::array { return readonly_view(mu.atoms(), self); }, pm.m);
          },
          "The atoms x_i as a read-only (n, d) array (a view, no copy).")
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
          "True when every stored weight equals 1/n exactly.")
      .def(
          "mean",
          [](const PyMeasure& pm) -> py::array {
            return std::visit([](const auto& mu) -> py::array { return to_numpy(mu.mean()); },
                              pm.m);
          },
          "The barycenter sum_i w_i x_i, shape (d,).")
      .def(
          "radius",
          [](const PyMeasure& pm) {
            return std::visit([](const auto& mu) { return static_cast<double>(mu.radius()); },
                              pm.m);
          },
          "max_i ||x_i|| over atoms of positive weight: the smallest R with supp(mu) in B_R.")
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
          "tolerance"_a = 0.0,
          "The same measure with atoms closer than `tolerance` (max-norm) merged into the\n"
          "first of them, carrying the summed weight; zero-weight atoms dropped.")
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
          "images"_a,
          "T#mu = sum_i w_i delta_{T(x_i)} with T given by its values on the atoms:\n"
          "images (n, d'), row i = T(x_i). The weights are kept.")
      .def(
          "astype",
          [](const PyMeasure& pm, const py::object& dtype) {
            return dispatch(parse_dtype_arg(dtype, pm.dtype()),
                            [&](auto s) { return PyMeasure{pm.as<decltype(s)>()}; });
          },
          "dtype"_a,
          "The same measure in float32 or float64 (weights renormalized after rounding).")
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
                             int sinkhorn_iterations, Index query_block, Index key_block) {
  AttendOptions o;
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

With E the embedding size, H heads and k = E / H, head h uses rows
[h k, (h+1) k) of w_q, w_k, w_v:

    q(x) = Q_h x + b_q,h,   kappa(y) = K_h y + b_k,h,   v(y) = V_h y + b_v,h
    G(x, y) = <q(x), kappa(y)> / tau          potential "dot" (the Transformer's)
    G(x, y) = -||q(x) - kappa(y)||^2 / tau    potential "l2"  (Kim et al. 2021)
    G(x, y) = <q(x), kappa(y)> / (||q(x)|| ||kappa(y)|| tau)   potential "cosine"
              (a zero projection normalizes to 0: G = 0 there)
    pi_j(x) = softmax_j(G(x, x_j) + log w_j)
    Gamma_mu(x) = W_O [sum_j pi^1_j(x) v^1(x_j); ...; sum_j pi^H_j(x) v^H(x_j)] + b_O

Model(w_q, w_k, w_v, w_o, b_q=None, b_k=None, b_v=None, b_o=None,
      num_heads=1, potential="dot", scale=0.0, dtype=None)

w_q (E, d_q), w_k (E, d_kv), w_v (E, d_kv), w_o (d_out, E); biases (E,), b_o
(d_out,), or None for zero. scale = tau (0 means sqrt(E / num_heads)). dtype:
None = that of w_q (float32 stays float32), else "float32"/"float64". The
parameters are copied and validated (ValueError naming the parameter).
Parameters read back as read-only NumPy views.
)doc";

constexpr const char* kAttendArgs = R"doc(
tokens:   (m, d_kv) array (the atoms x_j of mu) or a measattn.Measure.
weights:  (m,) weights of the tokens (normalized); None = uniform. Must be None
          when tokens is a Measure.
queries:  (n, d_q) array of query points y_i; None = the tokens (self-attention).
causal:   query i sees keys j <= i only.
residual: add the query: y_i + Gamma_mu(y_i) (needs d_out == d_q).
normalization: "softmax" or "sinkhorn" (doubly stochastic, self-attention only).
sinkhorn_iterations: Sinkhorn half-steps beyond softmax (with "sinkhorn");
          sinkhorn_iters is its deprecated spelling (keyword only).
query_block, key_block: block sizes of the streaming kernel (0 = automatic).
dtype:    "float32" / "float64"; None = float32 when tokens are float32, else float64.
)doc";

const std::string& attend_doc() {
  static const std::string doc =
      std::string(
          "The attention field Gamma_mu(y_i) for every query y_i, shape (n, d_out)\n"
          "(y_i + Gamma_mu(y_i) with residual). mu = sum_j w_j delta_{x_j}.\n"
          "Streaming (online log-sum-exp): O(n m E) time, O((n + m) E) memory.\n") +
      kAttendArgs;
  return doc;
}

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
      .def_property_readonly("num_heads", on_model([](const auto& x) { return x.num_heads; }))
      .def_property_readonly("potential",
                             on_model([](const auto& x) { return to_string(x.potential); }),
                             "\"dot\" or \"l2\".")
      .def_property_readonly("scale",
                             on_model([](const auto& x) { return static_cast<double>(x.scale); }),
                             "The stored scale tau (0 = default sqrt(head_dim)); see tau.")
      .def_property_readonly("tau",
                             on_model([](const auto& x) { return static_cast<double>(x.tau()); }),
                             "The temperature in use: scale if positive, else sqrt(head_dim).")
      .def_property_readonly("embed_dim", on_model([](const auto& x) { return x.embed_dim(); }))
      .def_property_readonly("head_dim", on_model([](const auto& x) { return x.head_dim(); }))
      .def_property_readonly("query_dim", on_model([](const auto& x) { return x.query_dim(); }))
      .def_property_readonly("key_dim", on_model([](const auto& x) { return x.key_dim(); }))
      .def_property_readonly("out_dim", on_model([](const auto& x) { return x.out_dim(); }))
      .def_property_readonly("has_bias", on_model([](const auto& x) { return x.has_bias(); }))
      .def_property_readonly("dtype", [](const PyModel& pm) { return numpy_dtype(pm.dtype()); });

  cls.def("validate", on_model([](const auto& x) { x.validate(); }),
          "Checks shapes, finiteness and scale; raises ValueError naming the parameter.")
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
          "h"_a,
          "Head h as a dict: q, k, v (k x d), b_q, b_k, b_v (k,) with zero biases explicit,\n"
          "tau and potential.")
      .def(
          "astype",
          [](const PyModel& pm, const py::object& dtype) {
            return dispatch(parse_dtype_arg(dtype, pm.dtype()),
                            [&](auto s) { return PyModel{pm.as<decltype(s)>()}; });
          },
          "dtype"_a, "The same model in float32 or float64.")
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
          "dtype"_a = "float64",
          "A model with E = d_q = d_kv = d_out = dim and N(0, 1/dim) entries, seeded.")
      .def_static(
          "canonical",
          [](Index dim, double beta, const py::object& dtype) {
            return dispatch(parse_dtype_arg(dtype, DT::f64), [&](auto s) {
              using S = decltype(s);
              return PyModel{Model<S>::canonical(dim, static_cast<S>(beta))};
            });
          },
          "dim"_a, "beta"_a, "dtype"_a = "float64",
          "The canonical model of the particle literature: one head, Q = K = V = W_O = I_dim,\n"
          "no biases, G(x, y) = beta <x, y> (tau = 1 / beta).")
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
          "path"_a, "dtype"_a = py::none(),
          "Saves the model as safetensors (PyTorch state-dict names, metadata num_heads,\n"
          "potential, scale), written atomically. dtype None = the model's.")
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
            const std::optional<int>& sinkhorn_iters) {
           const auto o =
               attend_options(causal, residual, normalization,
                              sinkhorn_iterations_arg(sinkhorn_iterations, sinkhorn_iters),
                              query_block, key_block);
           return dispatch(call_dtype(tokens, dtype), [&](auto s) {
             return field_call<decltype(s)>(pm, tokens, weights, queries, o, FieldKind::field);
           });
         },
         "tokens"_a, "weights"_a = py::none(), "queries"_a = py::none(), "causal"_a = attend.causal,
         "residual"_a = attend.residual, "normalization"_a = to_string(attend.normalization),
         "sinkhorn_iterations"_a = attend.sinkhorn_iterations, "query_block"_a = attend.query_block,
         "key_block"_a = attend.key_block, "dtype"_a = py::none(), py::kw_only(),
         "sinkhorn_iters"_a = py::none(), attend_doc().c_str())
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
          "dtype"_a = py::none(), py::kw_only(), "sinkhorn_iters"_a = py::none(),
          "The per-head fields before the output projection, shape (n, E): head h in\n"
          "columns [h k, (h+1) k). Arguments as for attend.")
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
          py::kw_only(), "sinkhorn_iters"_a = py::none(),
          "The Transformer formula computed directly (softmax(S + log w) V per head with the\n"
          "full n x m logit matrix): a reference for checks, O(n m) memory. Same result as\n"
          "attend up to rounding.")
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
          py::kw_only(), "sinkhorn_iters"_a = py::none(),
          "The attention kernel of one head materialized, shape (n, m): row i is\n"
          "pi(y_i) = softmax_j(G(y_i, x_j) + log w_j) (rows sum to one; zero-weight or\n"
          "masked keys get exactly 0). O(n m) memory: for inspection of small inputs.")
      .def(
          "self_attention",
          [](const PyModel& pm, const py::object& mu, const py::object& weights, bool causal,
             bool residual, const std::string& normalization, int sinkhorn_iterations,
             const py::object& dtype, const std::optional<int>& sinkhorn_iters) {
            const auto o =
                attend_options(causal, residual, normalization,
                               sinkhorn_iterations_arg(sinkhorn_iterations, sinkhorn_iters), 0, 0);
            return dispatch(call_dtype(mu, dtype),
                            [&](auto s) { return self_call<decltype(s)>(pm, mu, weights, o); });
          },
          "mu"_a, "weights"_a = py::none(), "causal"_a = attend.causal,
          "residual"_a = attend.residual, "normalization"_a = to_string(attend.normalization),
          "sinkhorn_iterations"_a = attend.sinkhorn_iterations, "dtype"_a = py::none(),
          py::kw_only(), "sinkhorn_iters"_a = py::none(),
          "F(mu) = (Gamma_mu)#mu (with residual (id + Gamma_mu)#mu) as a Measure with the\n"
          "weights of mu. mu: a Measure or an (n, d) array (+ weights).")
      .def(
          "cross_attention",
          [](const PyModel& pm, const py::object& nu, const py::object& mu, bool residual,
             const py::object& dtype) {
            const auto o = attend_options(false, residual, "softmax", 0, 0, 0);
            return dispatch(call_dtype(mu, dtype),
                            [&](auto s) { return cross_call<decltype(s)>(pm, nu, mu, o); });
          },
          "nu"_a, "mu"_a, "residual"_a = attend.residual, "dtype"_a = py::none(),
          "F(nu; mu) = (Gamma_mu)#nu: queries from nu, keys and values from mu (Measures\n"
          "or arrays with uniform weights).");
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
      "path"_a, "dtype"_a = "float64",
      "Loads a model from a safetensors file with PyTorch nn.MultiheadAttention names\n"
      "(in_proj_weight [3E, E] or q/k/v_proj_weight, in_proj_bias, out_proj.weight,\n"
      "out_proj.bias; F32 or F64) and metadata num_heads (required), potential, scale.\n"
      "ValueError names the file and the field.");
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
      "path"_a, "model"_a, "dtype"_a = py::none(),
      "Saves `model` as safetensors, atomically (see Model.save).");
}

}  // namespace

void bind_core(py::module_& m) {
  bind_measure(m);
  bind_model(m);
  bind_io(m);
}

}  // namespace measattn::python
