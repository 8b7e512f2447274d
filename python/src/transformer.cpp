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

Transformer.load(path, dtype=None) reads a Hugging Face checkpoint directory
(config.json + model.safetensors; model_type "bert" or "gpt2") or a PyTorch
nn.TransformerEncoder(Layer) state dict (a directory whose config.json has
model_type "torch_encoder", or one .safetensors file whose metadata carries
d_model, nhead, ...). Transformer.from_torch(module, dtype=None) converts an
nn.TransformerEncoderLayer, an nn.TransformerEncoder or a Hugging Face
BertModel / GPT2Model (through a temporary checkpoint and the same checks).

Attributes
----------
dtype : numpy.dtype
    float64 or float32 (every computation runs in it).
num_layers, dim, num_heads : int
    L, the width d and the heads per block.
causal : bool
    Token i attends to tokens 0..i (GPT-2).
parameter_count : int
    The parameters used (ignored heads such as BERT's pooler not counted).
blocks : list of TransformerBlock

Notes
-----
A sequence of n tokens is the uniform measure mu = (1/n) sum_i delta_{x_i};
each block is a map on token measures (Gamma_mu the block's attention):

    post-LN:  y = LN1(x + Gamma_mu(x)),        x' = LN2(y + MLP(y))
    pre-LN:   y = x + Gamma_{LN1#mu}(LN1 x),   x' = y + MLP(LN2 y)

forward() returns the hidden states in the convention of Hugging Face's
output_hidden_states: entry 0 the embedding output (or the given points), entry
l block l's output (the final norm, GPT-2's ln_f or a TransformerEncoder's
norm, applied to the last entry). The results are a forward pass in the model's
dtype (not bounds), equal to PyTorch / transformers to rounding (1e-10
relative in float64) and bit-identical whatever the thread count.

Examples
--------
A PyTorch encoder layer, no download needed:

>>> import torch
>>> _ = torch.manual_seed(0)
>>> layer = torch.nn.TransformerEncoderLayer(8, nhead=2, dim_feedforward=16,
...                                          dtype=torch.float64).eval()
>>> t = measattn.Transformer.from_torch(layer)
>>> t
Transformer(architecture=torch_encoder, layers=1, heads=2, dim=8, dtype=float64)
>>> t.summary()["norm"], t.summary()["activation"], t.parameter_count
('post', 'relu', 600)
>>> x = torch.randn(5, 8, dtype=torch.float64)
>>> h = t.forward(x.numpy())
>>> h.shape
(2, 5, 8)
>>> with torch.no_grad():
...     reference = layer(x).numpy()
>>> bool(np.allclose(h[-1], reference, rtol=0, atol=1e-12))
True

References
----------
Vaswani et al., "Attention is all you need" (2017); Sander, Ablin, Blondel and
Peyre, "Sinkformers" (2022) and Geshkovski, Letrouit, Polyanskiy and Rigollet,
"A mathematical perspective on Transformers" (2023) for blocks as maps on
measures; docs/transformers.md; docs/python.md, "Whole Transformers".
)doc";

constexpr const char* kTransformerLoadDoc = R"doc(
Loads a checkpoint.

Parameters
----------
path : str
    A directory with config.json and model.safetensors (Hugging Face BERT or
    GPT-2, or model_type "torch_encoder"), or one .safetensors file of a torch
    encoder with its configuration in the metadata.
dtype : {"float32", "float64"}, optional
    None = float64; every tensor is converted to it (F16 and BF16 exactly).

Returns
-------
Transformer

Raises
------
ValueError
    A missing file, an unknown model_type, a bad or unsupported config field, a
    missing, misshapen or non-finite tensor (the message names the file and
    the field or tensor); nothing is computed before every check passed.

Examples
--------
A one-block GPT-2 written by hand (random weights):

>>> import json, os, tempfile
>>> from measattn._interop import write_safetensors
>>> d, vocab, positions = 4, 10, 8
>>> shapes = {"wte.weight": (vocab, d), "wpe.weight": (positions, d),
...           "ln_f.weight": (d,), "ln_f.bias": (d,)}
>>> for name, shape in [("ln_1", (d,)), ("ln_2", (d,)), ("attn.c_attn", (d, 3 * d)),
...                     ("attn.c_proj", (d, d)), ("mlp.c_fc", (d, 4 * d)),
...                     ("mlp.c_proj", (4 * d, d))]:
...     shapes[f"h.0.{name}.weight"], shapes[f"h.0.{name}.bias"] = shape, shape[-1:]
>>> rng = np.random.default_rng(0)
>>> weights = {k: rng.normal(size=s) for k, s in shapes.items()}
>>> tmp = tempfile.TemporaryDirectory()
>>> write_safetensors(os.path.join(tmp.name, "model.safetensors"), weights)
>>> with open(os.path.join(tmp.name, "config.json"), "w") as f:
...     json.dump({"model_type": "gpt2", "n_embd": d, "n_head": 2, "n_layer": 1,
...                "n_positions": positions, "vocab_size": vocab}, f)
>>> t = measattn.Transformer.load(tmp.name)
>>> tmp.cleanup()
>>> t
Transformer(architecture=gpt2, layers=1, heads=2, dim=4, dtype=float64)
>>> t.causal, t.blocks[0].norm, t.parameter_count
(True, 'pre', 324)
>>> ids = np.array([3, 1, 4, 1, 5])
>>> bool(np.allclose(t.embed(ids), weights["wte.weight"][ids] + weights["wpe.weight"][:5]))
True
>>> h = t.forward(ids)
>>> h.shape
(2, 5, 4)
>>> h[-1, 0]
array([-0.888378,  0.189975, -2.672392,  1.323956])

References
----------
docs/transformers.md, "Checkpoints" (the tensors and config fields read).
)doc";

constexpr const char* kSummaryDoc = R"doc(
The architecture as a dict (the keys of `measattn inspect --json`).

Returns
-------
dict
    architecture, model_type, layers, heads, dim, head_dim, ff_dim,
    vocab_size and max_positions (0 for a torch encoder), norm ("post" or
    "pre"), activation, causal, embedding_norm, final_norm, parameters.

Examples
--------
>>> import torch
>>> _ = torch.manual_seed(0)
>>> layer = torch.nn.TransformerEncoderLayer(8, nhead=2, dim_feedforward=16,
...                                          norm_first=True, activation="gelu")
>>> s = measattn.Transformer.from_torch(layer.eval()).summary()
>>> s["layers"], s["heads"], s["head_dim"], s["ff_dim"], s["norm"], s["activation"]
(1, 2, 4, 16, 'pre', 'gelu')
>>> s["parameters"] == sum(p.numel() for p in layer.parameters())
True
)doc";

constexpr const char* kEmbedDoc = R"doc(
The embedding output of one sequence of token ids.

    x_i = word[id_i] + position[i] (+ type[0], then the embedding LayerNorm: BERT)

Parameters
----------
input_ids : array_like of int, shape (n,)
    In [0, vocab_size), n <= max_positions (NumPy, list or torch tensor).

Returns
-------
numpy.ndarray, shape (n, d)
    In the model's dtype (exact sums of the embedding rows, then LN).

Raises
------
ValueError
    Non-integer ids, an id out of range, too many tokens, or a model without
    word embeddings (a torch encoder: give it points).

Examples
--------
Transformer.load's example embeds ids of a GPT-2; a torch encoder has no
embeddings:

>>> import torch
>>> layer = torch.nn.TransformerEncoderLayer(8, nhead=2, dim_feedforward=16).eval()
>>> measattn.Transformer.from_torch(layer).embed([1, 2])
Traceback (most recent call last):
    ...
ValueError: input_ids: the model (torch_encoder) has no word embeddings; give tokens (points) instead
)doc";

constexpr const char* kForwardDoc = R"doc(
The hidden states of the blocks [first, last).

Parameters
----------
x : array_like
    A 1-D integer array of token ids, shape (n,) (positions 0..n-1, token
    type 0; needs embeddings), or an (n, d) array of points: the input of
    block `first` (float arrays and torch tensors).
layers : (first, last), optional
    A Python slice of blocks; None = all; last None = L.

Returns
-------
numpy.ndarray, shape (last - first + 1, n, d)
    Entry 0 the input of block first (the embedding output for ids and
    first = 0), entry k the output of block first + k - 1; the final norm is
    applied to the last entry when last = L (Hugging Face's
    output_hidden_states).

Examples
--------
>>> import torch
>>> _ = torch.manual_seed(0)
>>> encoder = torch.nn.TransformerEncoder(
...     torch.nn.TransformerEncoderLayer(8, nhead=2, dim_feedforward=16, dtype=torch.float64),
...     num_layers=3).eval()
>>> t = measattn.Transformer.from_torch(encoder)
>>> x = torch.randn(5, 8, dtype=torch.float64)
>>> h = t.forward(x)
>>> h.shape, t.forward(h[1], layers=(1, 2)).shape
((4, 5, 8), (2, 5, 8))
>>> with torch.no_grad():
...     reference = encoder(x).numpy()
>>> bool(np.allclose(h[-1], reference, rtol=0, atol=1e-12))
True
>>> bool(np.array_equal(t.forward(h[1], layers=(1, None))[-1], h[-1]))
True
)doc";

constexpr const char* kAttentionInputDoc = R"doc(
The points block `layer`'s attention acts on.

    LN1(x) (pre-LN)   or   x (post-LN)

Parameters
----------
layer : int
    In [0, num_layers).
x : array_like, shape (n, d)
    The block's input (a hidden state).

Returns
-------
numpy.ndarray, shape (n, d)
    blocks[layer].attention.attend(...) of it is the block's attention output.

Examples
--------
>>> import torch
>>> _ = torch.manual_seed(0)
>>> layer = torch.nn.TransformerEncoderLayer(8, nhead=2, dim_feedforward=16,
...                                          norm_first=True, dtype=torch.float64).eval()
>>> t = measattn.Transformer.from_torch(layer)
>>> x = torch.randn(5, 8, dtype=torch.float64)
>>> with torch.no_grad():
...     reference = layer.norm1(x).numpy()
>>> bool(np.allclose(t.attention_input(0, x), reference, rtol=0, atol=1e-12))
True
)doc";

constexpr const char* kBlockForwardDoc = R"doc(
Block `layer` applied to the tokens x.

Parameters
----------
layer : int
    In [0, num_layers).
x : array_like, shape (n, d)

Returns
-------
numpy.ndarray, shape (n, d)
    The block's output (without the final norm; see forward).

Examples
--------
>>> import torch
>>> _ = torch.manual_seed(0)
>>> layer = torch.nn.TransformerEncoderLayer(8, nhead=2, dim_feedforward=16,
...                                          dtype=torch.float64).eval()
>>> t = measattn.Transformer.from_torch(layer)
>>> x = torch.randn(5, 8, dtype=torch.float64)
>>> y = t.block_forward(0, x)
>>> y.shape, bool(np.array_equal(y, t.forward(x)[-1]))
((5, 8), True)
)doc";

constexpr const char* kBlockDoc = R"doc(
One block of a Transformer (see Transformer.blocks): a map on token measures.

Attributes
----------
layer : int
    Its index in the stack.
attention : Model
    The block's attention (a copy): every function on one attention layer
    (attend, lipschitz_upper_bounds, attention_entropy, ...) applies to it at
    its real input attention_input(x).
norm : {"post", "pre"}
    Where the LayerNorms sit (see Transformer).
causal : bool
activation : str
    "relu", "gelu" (exact, x Phi(x)) or "gelu_tanh".

Examples
--------
>>> import torch
>>> _ = torch.manual_seed(0)
>>> layer = torch.nn.TransformerEncoderLayer(8, nhead=2, dim_feedforward=16,
...                                          dtype=torch.float64).eval()
>>> block = measattn.Transformer.from_torch(layer).blocks[0]
>>> block, block.norm, block.activation, block.causal
(TransformerBlock(layer=0), 'post', 'relu', False)
>>> block.attention.num_heads, block.attention.tau
(2, 2.0)
>>> x = torch.randn(5, 8, dtype=torch.float64)
>>> with torch.no_grad():
...     reference = layer.self_attn(x, x, x, need_weights=False)[0].numpy()
>>> out = block.attention.attend(block.attention_input(x))
>>> bool(np.allclose(out, reference, rtol=0, atol=1e-12))
True
>>> block.forward(x).shape
(5, 8)
)doc";

constexpr const char* kBlockAttentionInputDoc =
    "The points the block's attention acts on: LN1(x) (pre-LN) or x (post-LN), shape (n, d).";

}  // namespace

void bind_transformer(py::module_& m) {
  py::class_<PyBlock>(m, "TransformerBlock", kBlockDoc)
      .def_property_readonly(
          "layer", [](const PyBlock& b) { return b.layer; }, "Its index in the stack.")
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
          },
          "Token i attends to tokens 0..i.")
      .def_property_readonly(
          "activation",
          [](const PyBlock& b) {
            return std::visit(
                [&](const auto& t) { return to_string(block_of(t, b.layer).activation); }, *b.t);
          },
          "The MLP's activation: \"relu\", \"gelu\" or \"gelu_tanh\".")
      .def(
          "forward",
          [](const PyBlock& b, const py::object& x) -> py::object {
            return std::visit(
                [&](const auto& t) -> py::object { return points_call(t, b.layer, x, true); },
                *b.t);
          },
          "x"_a, "The block applied to the tokens x (n, d); shape (n, d).")
      .def(
          "attention_input",
          [](const PyBlock& b, const py::object& x) -> py::object {
            return std::visit(
                [&](const auto& t) -> py::object { return points_call(t, b.layer, x, false); },
                *b.t);
          },
          "x"_a, kBlockAttentionInputDoc)
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
          "path"_a, "dtype"_a = py::none(), kTransformerLoadDoc)
      .def(
          "summary",
          [](const PyTransformer& pt) {
            return visit_model(pt, [](const auto& t) { return summary_dict(summarize(t)); });
          },
          kSummaryDoc)
      .def_property_readonly(
          "dtype", [](const PyTransformer& pt) { return numpy_dtype(pt.dtype()); },
          "float64 or float32 (every computation runs in it).")
      .def_property_readonly(
          "num_layers",
          [](const PyTransformer& pt) {
            return visit_model(pt, [](const auto& t) { return t.num_layers(); });
          },
          "L, the number of blocks.")
      .def_property_readonly(
          "dim",
          [](const PyTransformer& pt) {
            return visit_model(pt, [](const auto& t) { return t.dim(); });
          },
          "d, the width of the hidden states.")
      .def_property_readonly(
          "num_heads",
          [](const PyTransformer& pt) {
            return visit_model(pt, [](const auto& t) { return t.num_heads(); });
          },
          "Attention heads per block.")
      .def_property_readonly(
          "causal",
          [](const PyTransformer& pt) {
            return visit_model(pt, [](const auto& t) { return t.causal(); });
          },
          "Token i attends to tokens 0..i (GPT-2).")
      .def_property_readonly(
          "parameter_count",
          [](const PyTransformer& pt) {
            return visit_model(pt, [](const auto& t) { return t.parameter_count(); });
          },
          "The parameters used (ignored heads not counted).")
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
          "input_ids"_a, kEmbedDoc)
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
          "x"_a, "layers"_a = py::none(), kForwardDoc)
      .def(
          "attention_input",
          [](const PyTransformer& pt, Index layer, const py::object& x) -> py::object {
            return visit_model(
                pt, [&](const auto& t) -> py::object { return points_call(t, layer, x, false); });
          },
          "layer"_a, "x"_a, kAttentionInputDoc)
      .def(
          "block_forward",
          [](const PyTransformer& pt, Index layer, const py::object& x) -> py::object {
            return visit_model(
                pt, [&](const auto& t) -> py::object { return points_call(t, layer, x, true); });
          },
          "layer"_a, "x"_a, kBlockForwardDoc)
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
