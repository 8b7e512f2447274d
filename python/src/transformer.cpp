// Bindings of transformer.hpp: measattn.Transformer (a pretrained checkpoint or
// a torch encoder state dict) and measattn.TransformerBlock (one block, its
// attention a measattn.Model). Thin: argument conversion, then one library
// call with the GIL released.
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "convert.hpp"
#include "measattn/transformer.hpp"

namespace measattn::python {
namespace {

using namespace pybind11::literals;

using TransformerVariant = std::variant<Transformer<double>, Transformer<float>>;

struct PyTransformer {
  std::shared_ptr<const TransformerVariant> t;
  DT dtype() const { return t->index() == 0 ? DT::f64 : DT::f32; }
};

struct PyBlock {
  std::shared_ptr<const TransformerVariant> t;
  Index layer = 0;
};

template <class T>
struct ScalarOf;
template <class S>
struct ScalarOf<Transformer<S>> {
  using type = S;
};
template <class T>
using scalar_t = typename ScalarOf<std::decay_t<T>>::type;

template <class F>
decltype(auto) visit_model(const PyTransformer& pt, F&& f) {
  return std::visit(std::forward<F>(f), *pt.t);
}

// Token ids: a 1-D array-like of integers (NumPy, list, torch tensor via __array__).
std::vector<std::int64_t> ids_arg(const py::handle& obj, const char* field = "input_ids") {
  py::array a = py::module_::import("numpy").attr("asarray")(obj);
  const char kind = a.dtype().kind();
  if (kind != 'i' && kind != 'u' && kind != 'b') {
    throw invalid_argument(std::string(field) + ": expected integer token ids, got dtype " +
                           py::str(a.dtype()).cast<std::string>());
  }
  if (a.ndim() != 1) {
    throw invalid_argument(std::string(field) + ": expected a 1-D array of token ids, got " +
                           std::to_string(a.ndim()) + " dimensions");
  }
  if (kind == 'u' && a.dtype().itemsize() == 8) {
    auto u = py::array_t<std::uint64_t, py::array::c_style | py::array::forcecast>(a);
    std::vector<std::int64_t> out(static_cast<std::size_t>(u.size()));
    for (py::ssize_t i = 0; i < u.size(); ++i) {
      const std::uint64_t v = u.data()[i];
      if (v > static_cast<std::uint64_t>(INT64_MAX)) {
        throw invalid_argument(std::string(field) + ": entry " + std::to_string(i) +
                               " is out of range");
      }
      out[static_cast<std::size_t>(i)] = static_cast<std::int64_t>(v);
    }
    return out;
  }
  auto v = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>(a);
  return std::vector<std::int64_t>(v.data(), v.data() + v.size());
}

bool is_ids(const py::handle& obj) {
  py::array a = py::module_::import("numpy").attr("asarray")(obj);
  const char kind = a.dtype().kind();
  return a.ndim() == 1 && (kind == 'i' || kind == 'u' || kind == 'b');
}

ForwardOptions layers_arg(const py::object& layers) {
  ForwardOptions o;
  if (layers.is_none()) return o;
  py::tuple t;
  try {
    t = py::tuple(layers);
  } catch (const py::error_already_set&) {
    throw invalid_argument("layers: expected a pair (first, last) of block indices");
  }
  if (t.size() != 2) throw invalid_argument("layers: expected a pair (first, last)");
  o.first_layer = t[0].is_none() ? 0 : t[0].cast<Index>();
  o.last_layer = t[1].is_none() ? -1 : t[1].cast<Index>();
  // Negative indices would read as Python's "from the end"; they are refused.
  if (o.first_layer < 0) throw invalid_argument("first_layer: must be >= 0");
  if (!t[1].is_none() && o.last_layer < 0) {
    throw invalid_argument("last_layer: must be >= 0 (None = num_layers)");
  }
  return o;
}

template <class Scalar>
py::array_t<Scalar> stack(std::vector<Matrix<Scalar>>&& states) {
  const Index n = states.front().rows(), d = states.front().cols();
  py::array_t<Scalar> out({static_cast<py::ssize_t>(states.size()), static_cast<py::ssize_t>(n),
                           static_cast<py::ssize_t>(d)});
  Scalar* p = out.mutable_data();
  for (const auto& m : states) {
    std::copy(m.data(), m.data() + m.size(), p);
    p += m.size();
  }
  return out;
}

py::dict summary_dict(const TransformerSummary& s) {
  py::dict d;
  d["architecture"] = s.architecture;
  d["model_type"] = s.model_type;
  d["layers"] = s.layers;
  d["heads"] = s.heads;
  d["dim"] = s.dim;
  d["head_dim"] = s.head_dim;
  d["ff_dim"] = s.ff_dim;
  d["vocab_size"] = s.vocab_size;
  d["max_positions"] = s.max_positions;
  d["norm"] = s.norm;
  d["activation"] = s.activation;
  d["causal"] = s.causal;
  d["embedding_norm"] = s.embedding_norm;
  d["final_norm"] = s.final_norm;
  d["parameters"] = s.parameters;
  return d;
}

template <class Scalar>
const Block<Scalar>& block_of(const Transformer<Scalar>& t, Index layer) {
  if (layer < 0 || layer >= t.num_layers()) {
    throw invalid_argument("layer: " + std::to_string(layer) + " is outside [0, " +
                           std::to_string(t.num_layers()) + ")");
  }
  return t.blocks[static_cast<std::size_t>(layer)];
}

template <class Scalar>
py::array_t<Scalar> points_call(const Transformer<Scalar>& t, Index layer, const py::handle& x,
                                bool full) {
  const Block<Scalar>& b = block_of(t, layer);
  auto arg = matrix_arg<Scalar>(x, "x");
  Matrix<Scalar> out;
  {
    py::gil_scoped_release release;
    out = full ? block_forward(b, arg.map) : attention_input(b, arg.map);
  }
  return to_numpy(std::move(out));
}

constexpr const char* kTransformerDoc = R"doc(
A stack of Transformer blocks with its embeddings: a pretrained checkpoint.

Transformer.load(path, dtype="float64") reads a Hugging Face checkpoint directory
(config.json + model.safetensors; model_type "bert" or "gpt2") or a PyTorch
nn.TransformerEncoder(Layer) state dict (a directory whose config.json has
model_type "torch_encoder", or one .safetensors file whose metadata carries
d_model, nhead, ...). See docs/transformers.md.

Each block is a map on token measures: post-LN  x' = LN2(y + MLP(y)),
y = LN1(x + Gamma_mu(x)); pre-LN  y = x + Gamma(LN1 x), x' = y + MLP(LN2 y).
forward() returns the hidden states in the convention of Hugging Face's
output_hidden_states: entry 0 the embedding output, entry l block l's output
(GPT-2's last entry with ln_f applied).
)doc";

}  // namespace

void bind_transformer(py::module_& m) {
  py::class_<PyBlock>(m, "TransformerBlock", "One block of a Transformer (see Transformer.blocks).")
      .def_property_readonly("layer", [](const PyBlock& b) { return b.layer; })
      .def_property_readonly(
          "attention",
          [](const PyBlock& b) {
            return std::visit(
                [&](const auto& t) { return PyModel{block_of(t, b.layer).attention}; }, *b.t);
          },
          "The block's attention as a measattn.Model (a copy).")
      .def_property_readonly(
          "norm",
          [](const PyBlock& b) {
            return std::visit([&](const auto& t) { return to_string(block_of(t, b.layer).norm); },
                              *b.t);
          },
          "\"post\" or \"pre\".")
      .def_property_readonly(
          "causal",
          [](const PyBlock& b) {
            return std::visit([&](const auto& t) { return block_of(t, b.layer).causal; }, *b.t);
          })
      .def_property_readonly(
          "activation",
          [](const PyBlock& b) {
            return std::visit(
                [&](const auto& t) { return to_string(block_of(t, b.layer).activation); }, *b.t);
          })
      .def(
          "forward",
          [](const PyBlock& b, const py::object& x) -> py::object {
            return std::visit(
                [&](const auto& t) -> py::object { return points_call(t, b.layer, x, true); },
                *b.t);
          },
          "x"_a, "The block applied to the tokens x (n, d).")
      .def(
          "attention_input",
          [](const PyBlock& b, const py::object& x) -> py::object {
            return std::visit(
                [&](const auto& t) -> py::object { return points_call(t, b.layer, x, false); },
                *b.t);
          },
          "x"_a, "The points the block's attention acts on: LN1(x) (pre-LN) or x (post-LN).")
      .def("__repr__", [](const PyBlock& b) {
        return "TransformerBlock(layer=" + std::to_string(b.layer) + ")";
      });

  py::class_<PyTransformer>(m, "Transformer", kTransformerDoc)
      .def_static(
          "load",
          [](const std::string& path, const py::object& dtype) {
            const DT dt = parse_dtype_arg(dtype, DT::f64);
            PyTransformer out;
            py::gil_scoped_release release;
            if (dt == DT::f32) {
              out.t = std::make_shared<const TransformerVariant>(load_transformer<float>(path));
            } else {
              out.t = std::make_shared<const TransformerVariant>(load_transformer<double>(path));
            }
            return out;
          },
          "path"_a, "dtype"_a = py::none(),
          "Loads a checkpoint (ValueError naming the file and the tensor or config field).")
      .def(
          "summary",
          [](const PyTransformer& pt) {
            return visit_model(pt, [](const auto& t) { return summary_dict(summarize(t)); });
          },
          "The architecture as a dict (the keys of `measattn inspect --json`).")
      .def_property_readonly("dtype",
                             [](const PyTransformer& pt) { return numpy_dtype(pt.dtype()); })
      .def_property_readonly("num_layers",
                             [](const PyTransformer& pt) {
                               return visit_model(pt, [](const auto& t) { return t.num_layers(); });
                             })
      .def_property_readonly("dim",
                             [](const PyTransformer& pt) {
                               return visit_model(pt, [](const auto& t) { return t.dim(); });
                             })
      .def_property_readonly("num_heads",
                             [](const PyTransformer& pt) {
                               return visit_model(pt, [](const auto& t) { return t.num_heads(); });
                             })
      .def_property_readonly("causal",
                             [](const PyTransformer& pt) {
                               return visit_model(pt, [](const auto& t) { return t.causal(); });
                             })
      .def_property_readonly("parameter_count",
                             [](const PyTransformer& pt) {
                               return visit_model(
                                   pt, [](const auto& t) { return t.parameter_count(); });
                             })
      .def_property_readonly(
          "blocks",
          [](const PyTransformer& pt) {
            const Index n = visit_model(pt, [](const auto& t) { return t.num_layers(); });
            py::list out;
            for (Index l = 0; l < n; ++l) out.append(PyBlock{pt.t, l});
            return out;
          },
          "The blocks, in order (TransformerBlock).")
      .def(
          "embed",
          [](const PyTransformer& pt, const py::object& ids) -> py::object {
            const auto v = ids_arg(ids);
            return visit_model(pt, [&](const auto& t) -> py::object {
              using Scalar = scalar_t<decltype(t)>;
              Matrix<Scalar> x;
              {
                py::gil_scoped_release release;
                x = embed(t, v);
              }
              return to_numpy(std::move(x));
            });
          },
          "input_ids"_a, "The embedding output (n, d) of a 1-D sequence of token ids.")
      .def(
          "forward",
          [](const PyTransformer& pt, const py::object& x, const py::object& layers) -> py::object {
            const ForwardOptions options = layers_arg(layers);
            if (is_ids(x)) {
              const auto v = ids_arg(x);
              return visit_model(pt, [&](const auto& t) -> py::object {
                using Scalar = scalar_t<decltype(t)>;
                std::vector<Matrix<Scalar>> states;
                {
                  py::gil_scoped_release release;
                  states = forward(t, v, options);
                }
                return stack(std::move(states));
              });
            }
            return visit_model(pt, [&](const auto& t) -> py::object {
              using Scalar = scalar_t<decltype(t)>;
              auto arg = matrix_arg<Scalar>(x, "tokens");
              std::vector<Matrix<Scalar>> states;
              {
                py::gil_scoped_release release;
                states = forward_points(t, arg.map, options);
              }
              return stack(std::move(states));
            });
          },
          "x"_a, "layers"_a = py::none(),
          "Hidden states (L + 1, n, d) for the blocks [first, last) of layers=(first, last)\n"
          "(default all): x is a 1-D integer array of token ids (positions 0..n-1, token\n"
          "type 0), or an (n, d) array of points (the input of block `first`).")
      .def(
          "attention_input",
          [](const PyTransformer& pt, Index layer, const py::object& x) -> py::object {
            return visit_model(
                pt, [&](const auto& t) -> py::object { return points_call(t, layer, x, false); });
          },
          "layer"_a, "x"_a, "The points block `layer`'s attention acts on (LN1(x) or x).")
      .def(
          "block_forward",
          [](const PyTransformer& pt, Index layer, const py::object& x) -> py::object {
            return visit_model(
                pt, [&](const auto& t) -> py::object { return points_call(t, layer, x, true); });
          },
          "layer"_a, "x"_a, "Block `layer` applied to the tokens x (n, d).")
      .def("__repr__", [](const PyTransformer& pt) {
        return visit_model(pt, [&](const auto& t) {
          const auto s = summarize(t);
          return "Transformer(architecture=" + s.architecture +
                 ", layers=" + std::to_string(s.layers) + ", heads=" + std::to_string(s.heads) +
                 ", dim=" + std::to_string(s.dim) + ", dtype=" + dtype_name(pt.dtype()) + ")";
        });
      });
}

}  // namespace measattn::python
