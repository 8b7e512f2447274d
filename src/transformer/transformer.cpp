// Whole Transformer blocks as maps on measures (measattn/transformer.hpp):
// LayerNorm, the MLP, residuals, the attention of a block, embeddings, and the
// stack in Hugging Face's output_hidden_states convention.
//
// Every token-wise step (projections, LayerNorm, activation, residual) and the
// attention itself are computed on fixed row blocks of kRows tokens, the
// blocks distributed over OpenMP threads: each row sees the same sequence of
// operations whatever the thread count, so results are bit-identical across
// thread counts. The attention of a block is the dot-potential attention of
// its Model with uniform weights (attention.hpp), evaluated densely per query
// block: S = Q_b K^T / tau, a row-wise softmax (causal: keys 0..i), P V.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "common/parallel.hpp"
#include "measattn/attention.hpp"
#include "measattn/error.hpp"
#include "measattn/transformer.hpp"
#include "measattn/types.hpp"

namespace measattn {

namespace {

// Tokens per row block (fixed, whatever the thread count: determinism). The
// projections and the MLP use large blocks, so that each weight matrix is
// packed for the GEMM kernel few times; the attention uses small query blocks
// (with every head, enough units for the threads).
constexpr Index kRows = 64;       // attention query blocks, LayerNorms
constexpr Index kGemmRows = 256;  // projections and the MLP

Index row_blocks(Index n, Index rows = kRows) { return (n + rows - 1) / rows; }

std::string shape_text(Index r, Index c) {
  return "[" + std::to_string(r) + ", " + std::to_string(c) + "]";
}

template <class Scalar>
void check_finite(const Matrix<Scalar>& m, const std::string& name) {
  if (!m.allFinite()) throw invalid_argument(name + ": contains a NaN or infinite entry");
}
template <class Scalar>
void check_finite(const Vector<Scalar>& v, const std::string& name) {
  if (!v.allFinite()) throw invalid_argument(name + ": contains a NaN or infinite entry");
}

// Runs body(r0, rows) over the fixed row blocks of n rows, in parallel.
template <class F>
void for_row_blocks(Index n, F&& body, Index rows = kRows) {
  const Index blocks = row_blocks(n, rows);
  detail::RegionGuard guard;
#pragma omp parallel for schedule(static) if (blocks > 1)
  for (Index b = 0; b < blocks; ++b) {
    guard.run([&] {
      const Index r0 = b * rows;
      body(r0, std::min(rows, n - r0));
    });
  }
  guard.finish();
}

template <class Scalar>
Scalar gelu_erf(Scalar x) {
  return Scalar(0.5) * x * (Scalar(1) + std::erf(x * Scalar(0.70710678118654752440)));
}

template <class Scalar>
Scalar gelu_tanh(Scalar x) {
  const Scalar c = Scalar(0.79788456080286535588);  // sqrt(2 / pi)
  return Scalar(0.5) * x * (Scalar(1) + std::tanh(c * (x + Scalar(0.044715) * x * x * x)));
}

template <class Scalar, class Rows>
void activate(Rows&& h, Activation a) {
  Scalar* p = h.data();
  const Index count = h.size();
  switch (a) {
    case Activation::gelu:
      for (Index i = 0; i < count; ++i) p[i] = gelu_erf(p[i]);
      break;
    case Activation::gelu_tanh:
      for (Index i = 0; i < count; ++i) p[i] = gelu_tanh(p[i]);
      break;
    case Activation::relu:
      for (Index i = 0; i < count; ++i) p[i] = std::max(p[i], Scalar(0));
      break;
  }
}

// LayerNorm of rows [r0, r0 + rows) of x into the same rows of y (y may be x).
template <class Scalar>
void layer_norm_rows(const LayerNorm<Scalar>& ln, const Scalar* x, Scalar* y, Index rows, Index d) {
  for (Index i = 0; i < rows; ++i) {
    const Scalar* xi = x + i * d;
    Scalar* yi = y + i * d;
    Scalar mean = 0;
    for (Index j = 0; j < d; ++j) mean += xi[j];
    mean /= Scalar(d);
    Scalar var = 0;
    for (Index j = 0; j < d; ++j) {
      const Scalar c = xi[j] - mean;
      var += c * c;
    }
    var /= Scalar(d);
    const Scalar rstd = Scalar(1) / std::sqrt(var + ln.eps);
    for (Index j = 0; j < d; ++j) yi[j] = (xi[j] - mean) * rstd * ln.gamma[j] + ln.beta[j];
  }
}

// y rows = x rows W^T + b for one row block.
template <class Scalar, class In, class Out>
void affine_rows(const In& x, const Matrix<Scalar>& w, const Vector<Scalar>& b, Out&& y) {
  y.noalias() = x * w.transpose();
  if (b.size() != 0) y.rowwise() += b.transpose();
}

// The block's attention output Gamma_mu(x_i) for all rows of x (the points the
// attention acts on), mu the uniform measure on the rows of x.
template <class Scalar>
Matrix<Scalar> block_attention(const Block<Scalar>& block, const Matrix<Scalar>& x) {
  const Model<Scalar>& m = block.attention;
  const Index n = x.rows();
  const Index e = m.embed_dim();
  const Index heads = m.num_heads;
  const Index k = m.head_dim();
  const Scalar tau = m.tau();
  Matrix<Scalar> q(n, e), kk(n, e), v(n, e);
  for_row_blocks(
      n,
      [&](Index r0, Index rows) {
        const auto xb = x.middleRows(r0, rows);
        affine_rows(xb, m.w_q, m.b_q, q.middleRows(r0, rows));
        affine_rows(xb, m.w_k, m.b_k, kk.middleRows(r0, rows));
        affine_rows(xb, m.w_v, m.b_v, v.middleRows(r0, rows));
      },
      kGemmRows);
  Matrix<Scalar> context(n, e);
  const Index blocks = row_blocks(n);
  detail::RegionGuard guard;
#pragma omp parallel if (blocks * heads > 1)
  {
    Matrix<Scalar> s;
#pragma omp for schedule(static)
    for (Index unit = 0; unit < blocks * heads; ++unit) {
      guard.run([&] {
        const Index h = unit % heads;
        const Index r0 = (unit / heads) * kRows;
        const Index rows = std::min(kRows, n - r0);
        const Index keys = block.causal ? r0 + rows : n;
        s.resize(rows, keys);
        s.noalias() = q.block(r0, h * k, rows, k) * kk.block(0, h * k, keys, k).transpose();
        for (Index i = 0; i < rows; ++i) {
          const Index visible = block.causal ? r0 + i + 1 : keys;
          auto row = s.row(i).head(visible);
          row /= tau;
          const Scalar top = row.maxCoeff();
          row.array() = (row.array() - top).exp();
          const Scalar sum = row.sum();
          row /= sum;
          if (visible < keys) s.row(i).tail(keys - visible).setZero();
        }
        context.block(r0, h * k, rows, k).noalias() = s * v.block(0, h * k, keys, k);
      });
    }
  }
  guard.finish();
  Matrix<Scalar> out(n, m.out_dim());
  for_row_blocks(
      n,
      [&](Index r0, Index rows) {
        affine_rows(context.middleRows(r0, rows), m.w_o, m.b_o, out.middleRows(r0, rows));
      },
      kGemmRows);
  return out;
}

// x + MLP(LN(x)) (pre) or LN(x + MLP(x)) (post), row block by row block.
template <class Scalar>
void mlp_residual(const Block<Scalar>& block, Matrix<Scalar>& x) {
  const Index n = x.rows();
  const Index d = block.dim();
  const Index ff = block.ff_dim();
  for_row_blocks(n, [&](Index r0, Index rows) {
    auto xb = x.middleRows(r0, rows);
    Matrix<Scalar> in(rows, d);
    if (block.norm == NormPlacement::pre) {
      layer_norm_rows(block.ln2, xb.data(), in.data(), rows, d);
    } else {
      in = xb;
    }
    Matrix<Scalar> h(rows, ff);
    affine_rows(in, block.w1, block.b1, h);
    activate<Scalar>(h, block.activation);
    Matrix<Scalar> y(rows, d);
    affine_rows(h, block.w2, block.b2, y);
    xb += y;
    if (block.norm == NormPlacement::post)
      layer_norm_rows(block.ln2, xb.data(), xb.data(), rows, d);
  });
}

template <class Scalar>
Matrix<Scalar> layer_norm_all(const LayerNorm<Scalar>& ln, const MatrixRef<Scalar>& x) {
  Matrix<Scalar> y(x.rows(), x.cols());
  const Matrix<Scalar>* src = nullptr;
  Matrix<Scalar> copy;
  if (x.outerStride() != x.cols()) {
    copy = x;
    src = &copy;
  }
  const Scalar* base = src ? src->data() : x.data();
  for_row_blocks(x.rows(), [&](Index r0, Index rows) {
    layer_norm_rows(ln, base + r0 * x.cols(), y.data() + r0 * x.cols(), rows, x.cols());
  });
  return y;
}

template <class Scalar>
void check_points(const Transformer<Scalar>& model, const MatrixRef<Scalar>& x, const char* field) {
  if (x.rows() == 0) throw invalid_argument(std::string(field) + ": empty sequence (0 tokens)");
  if (x.cols() != model.dim()) {
    throw invalid_argument(std::string(field) + ": tokens have dimension " +
                           std::to_string(x.cols()) +
                           ", the model has d = " + std::to_string(model.dim()));
  }
  if (!x.allFinite()) {
    throw invalid_argument(std::string(field) + ": contains a NaN or infinite entry");
  }
}

}  // namespace

// ---- names -------------------------------------------------------------------

std::string to_string(Architecture a) {
  switch (a) {
    case Architecture::bert:
      return "bert";
    case Architecture::gpt2:
      return "gpt2";
    case Architecture::torch_encoder:
      return "torch_encoder";
  }
  return "bert";
}

std::string to_string(Activation a) {
  switch (a) {
    case Activation::gelu:
      return "gelu";
    case Activation::gelu_tanh:
      return "gelu_tanh";
    case Activation::relu:
      return "relu";
  }
  return "gelu";
}

Activation parse_activation(const std::string& name, const std::string& field) {
  if (name == "gelu") return Activation::gelu;
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_tanh") {
    return Activation::gelu_tanh;
  }
  if (name == "relu") return Activation::relu;
  std::string shown;
  for (char c : name.substr(0, 40)) shown += (c >= 0x20 && c < 0x7f) ? c : '?';
  throw invalid_argument(field, "unsupported activation '" + shown +
                                    "' (expected gelu, gelu_new, gelu_pytorch_tanh, "
                                    "gelu_tanh or relu)");
}

// ---- LayerNorm, Block, Transformer -------------------------------------------

template <class Scalar>
Matrix<Scalar> LayerNorm<Scalar>::apply(const MatrixRef<Scalar>& x) const {
  if (x.cols() != dim()) {
    throw invalid_argument("x: has " + std::to_string(x.cols()) +
                           " columns, the LayerNorm has dimension " + std::to_string(dim()));
  }
  return layer_norm_all(*this, x);
}

template <class Scalar>
void LayerNorm<Scalar>::validate(const std::string& name) const {
  if (gamma.size() == 0) throw invalid_argument(name + ".gamma: empty");
  if (beta.size() != gamma.size()) {
    throw invalid_argument(name + ".beta: expected length " + std::to_string(gamma.size()) +
                           ", got " + std::to_string(beta.size()));
  }
  check_finite(gamma, name + ".gamma");
  check_finite(beta, name + ".beta");
  if (!(eps > 0) || !std::isfinite(eps)) {
    throw invalid_argument(name + ".eps: must be positive and finite");
  }
}

template <class Scalar>
void Block<Scalar>::validate(const std::string& name) const {
  try {
    attention.validate();
  } catch (const invalid_argument& e) {
    throw invalid_argument(name + ".attention." + e.what());
  }
  if (attention.potential != Potential::dot) {
    throw invalid_argument(name +
                           ".attention.potential: a Transformer block uses the dot potential");
  }
  const Index d = attention.query_dim();
  if (attention.key_dim() != d || attention.out_dim() != d || attention.embed_dim() != d) {
    throw invalid_argument(name + ".attention: expected E = d_q = d_kv = d_out, got E = " +
                           std::to_string(attention.embed_dim()) + ", d_q = " + std::to_string(d) +
                           ", d_kv = " + std::to_string(attention.key_dim()) +
                           ", d_out = " + std::to_string(attention.out_dim()));
  }
  if (norm != NormPlacement::post && norm != NormPlacement::pre) {
    throw invalid_argument(name + ".norm: a Transformer block is post or pre, not " +
                           to_string(norm));
  }
  ln1.validate(name + ".ln1");
  ln2.validate(name + ".ln2");
  if (ln1.dim() != d) {
    throw invalid_argument(name + ".ln1.gamma: expected length " + std::to_string(d) + ", got " +
                           std::to_string(ln1.dim()));
  }
  if (ln2.dim() != d) {
    throw invalid_argument(name + ".ln2.gamma: expected length " + std::to_string(d) + ", got " +
                           std::to_string(ln2.dim()));
  }
  if (w1.rows() == 0 || w1.cols() != d) {
    throw invalid_argument(name + ".w1: expected shape [ff, " + std::to_string(d) +
                           "] with ff > 0, got " + shape_text(w1.rows(), w1.cols()));
  }
  if (b1.size() != w1.rows()) {
    throw invalid_argument(name + ".b1: expected length " + std::to_string(w1.rows()) + ", got " +
                           std::to_string(b1.size()));
  }
  if (w2.rows() != d || w2.cols() != w1.rows()) {
    throw invalid_argument(name + ".w2: expected shape " + shape_text(d, w1.rows()) + ", got " +
                           shape_text(w2.rows(), w2.cols()));
  }
  if (b2.size() != d) {
    throw invalid_argument(name + ".b2: expected length " + std::to_string(d) + ", got " +
                           std::to_string(b2.size()));
  }
  check_finite(w1, name + ".w1");
  check_finite(b1, name + ".b1");
  check_finite(w2, name + ".w2");
  check_finite(b2, name + ".b2");
}

template <class Scalar>
Index Transformer<Scalar>::dim() const {
  if (!blocks.empty()) return blocks.front().dim();
  if (word_embeddings.size() != 0) return word_embeddings.cols();
  return 0;
}

template <class Scalar>
Index Transformer<Scalar>::num_heads() const {
  return blocks.empty() ? 0 : blocks.front().attention.num_heads;
}

template <class Scalar>
bool Transformer<Scalar>::causal() const {
  if (blocks.empty()) return false;
  return std::all_of(blocks.begin(), blocks.end(), [](const Block<Scalar>& b) { return b.causal; });
}

template <class Scalar>
std::int64_t Transformer<Scalar>::parameter_count() const {
  std::int64_t n =
      word_embeddings.size() + position_embeddings.size() + token_type_embeddings.size();
  auto ln = [](const LayerNorm<Scalar>& l) {
    return static_cast<std::int64_t>(l.gamma.size() + l.beta.size());
  };
  if (embedding_norm) n += ln(*embedding_norm);
  if (final_norm) n += ln(*final_norm);
  for (const Block<Scalar>& b : blocks) {
    const Model<Scalar>& a = b.attention;
    n += a.w_q.size() + a.w_k.size() + a.w_v.size() + a.w_o.size() + a.b_q.size() + a.b_k.size() +
         a.b_v.size() + a.b_o.size();
    n += ln(b.ln1) + ln(b.ln2);
    n += b.w1.size() + b.b1.size() + b.w2.size() + b.b2.size();
  }
  return n;
}

template <class Scalar>
void Transformer<Scalar>::validate() const {
  if (blocks.empty()) throw invalid_argument("blocks: a Transformer needs at least one block");
  const Index d = dim();
  for (std::size_t l = 0; l < blocks.size(); ++l) {
    const std::string name = "blocks[" + std::to_string(l) + "]";
    blocks[l].validate(name);
    if (blocks[l].dim() != d) {
      throw invalid_argument(name + ": dimension " + std::to_string(blocks[l].dim()) +
                             " differs from blocks[0]'s " + std::to_string(d));
    }
  }
  auto check_table = [&](const Matrix<Scalar>& m, const char* name) {
    if (m.size() != 0 && m.cols() != d) {
      throw invalid_argument(std::string(name) + ": expected " + std::to_string(d) +
                             " columns, got " + std::to_string(m.cols()));
    }
    check_finite(m, name);
  };
  check_table(word_embeddings, "word_embeddings");
  check_table(position_embeddings, "position_embeddings");
  check_table(token_type_embeddings, "token_type_embeddings");
  if (word_embeddings.size() == 0 &&
      (position_embeddings.size() != 0 || token_type_embeddings.size() != 0)) {
    throw invalid_argument(
        "word_embeddings: empty, while position or token type embeddings "
        "are given");
  }
  auto check_norm = [&](const std::optional<LayerNorm<Scalar>>& ln, const char* name) {
    if (!ln) return;
    ln->validate(name);
    if (ln->dim() != d) {
      throw invalid_argument(std::string(name) + ".gamma: expected length " + std::to_string(d) +
                             ", got " + std::to_string(ln->dim()));
    }
  };
  check_norm(embedding_norm, "embedding_norm");
  check_norm(final_norm, "final_norm");
}

template <class Scalar>
template <class Other>
Transformer<Other> Transformer<Scalar>::cast() const {
  auto cast_ln = [](const LayerNorm<Scalar>& l) {
    LayerNorm<Other> o;
    o.gamma = l.gamma.template cast<Other>();
    o.beta = l.beta.template cast<Other>();
    o.eps = static_cast<Other>(l.eps);
    return o;
  };
  Transformer<Other> t;
  t.architecture = architecture;
  t.model_type = model_type;
  t.word_embeddings = word_embeddings.template cast<Other>();
  t.position_embeddings = position_embeddings.template cast<Other>();
  t.token_type_embeddings = token_type_embeddings.template cast<Other>();
  if (embedding_norm) t.embedding_norm = cast_ln(*embedding_norm);
  if (final_norm) t.final_norm = cast_ln(*final_norm);
  for (const Block<Scalar>& b : blocks) {
    Block<Other> o;
    o.norm = b.norm;
    o.causal = b.causal;
    o.attention = b.attention.template cast<Other>();
    o.ln1 = cast_ln(b.ln1);
    o.ln2 = cast_ln(b.ln2);
    o.w1 = b.w1.template cast<Other>();
    o.b1 = b.b1.template cast<Other>();
    o.w2 = b.w2.template cast<Other>();
    o.b2 = b.b2.template cast<Other>();
    o.activation = b.activation;
    t.blocks.push_back(std::move(o));
  }
  return t;
}

template <class Scalar>
TransformerSummary summarize(const Transformer<Scalar>& model) {
  TransformerSummary s;
  s.architecture = to_string(model.architecture);
  s.model_type = model.model_type;
  s.layers = model.num_layers();
  s.heads = model.num_heads();
  s.dim = model.dim();
  if (!model.blocks.empty()) {
    const Block<Scalar>& b = model.blocks.front();
    s.head_dim = b.attention.head_dim();
    s.ff_dim = b.ff_dim();
    s.norm = to_string(b.norm);
    s.activation = to_string(b.activation);
  }
  s.vocab_size = model.vocab_size();
  s.max_positions = model.max_positions();
  s.causal = model.causal();
  s.embedding_norm = model.embedding_norm.has_value();
  s.final_norm = model.final_norm.has_value();
  s.parameters = model.parameter_count();
  return s;
}

// ---- the maps ----------------------------------------------------------------

template <class Scalar>
Matrix<Scalar> embed(const Transformer<Scalar>& model, const std::vector<std::int64_t>& ids) {
  if (model.word_embeddings.size() == 0) {
    throw invalid_argument("input_ids: the model (" + to_string(model.architecture) +
                           ") has no word embeddings; give tokens (points) instead");
  }
  const Index n = static_cast<Index>(ids.size());
  if (n == 0) throw invalid_argument("input_ids: empty sequence (0 tokens)");
  if (model.position_embeddings.size() != 0 && n > model.max_positions()) {
    throw invalid_argument("input_ids: " + std::to_string(n) + " tokens, more than the model's " +
                           std::to_string(model.max_positions()) + " positions");
  }
  const Index vocab = model.vocab_size();
  for (Index i = 0; i < n; ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      throw invalid_argument("input_ids: entry " + std::to_string(i) + " is " +
                             std::to_string(ids[i]) + ", outside [0, " + std::to_string(vocab) +
                             ") (the vocabulary)");
    }
  }
  const Index d = model.word_embeddings.cols();
  Matrix<Scalar> x(n, d);
  for (Index i = 0; i < n; ++i) {
    // HF order: (word + token_type) + position.
    x.row(i) = model.word_embeddings.row(static_cast<Index>(ids[i]));
    if (model.token_type_embeddings.size() != 0) x.row(i) += model.token_type_embeddings.row(0);
    if (model.position_embeddings.size() != 0) x.row(i) += model.position_embeddings.row(i);
  }
  if (model.embedding_norm) x = layer_norm_all(*model.embedding_norm, x);
  return x;
}

template <class Scalar>
Matrix<Scalar> attention_input(const Block<Scalar>& block, const MatrixRef<Scalar>& x) {
  if (x.cols() != block.dim()) {
    throw invalid_argument("x: tokens have dimension " + std::to_string(x.cols()) +
                           ", the block has d = " + std::to_string(block.dim()));
  }
  if (block.norm == NormPlacement::pre) return layer_norm_all(block.ln1, x);
  return x;
}

namespace detail {

template <class Scalar>
Matrix<Scalar> run_block(const Block<Scalar>& block, Matrix<Scalar> x) {
  const Index n = x.rows();
  const Index d = x.cols();
  if (block.norm == NormPlacement::pre) {
    const Matrix<Scalar> a = block_attention(block, layer_norm_all(block.ln1, x));
    x += a;
  } else {
    const Matrix<Scalar> a = block_attention(block, x);
    x += a;
    for_row_blocks(n, [&](Index r0, Index rows) {
      Scalar* p = x.data() + r0 * d;
      layer_norm_rows(block.ln1, p, p, rows, d);
    });
  }
  mlp_residual(block, x);
  return x;
}

}  // namespace detail

template <class Scalar>
Matrix<Scalar> block_forward(const Block<Scalar>& block, const MatrixRef<Scalar>& x) {
  block.validate("block");
  if (x.rows() == 0) throw invalid_argument("x: empty sequence (0 tokens)");
  if (x.cols() != block.dim()) {
    throw invalid_argument("x: tokens have dimension " + std::to_string(x.cols()) +
                           ", the block has d = " + std::to_string(block.dim()));
  }
  if (!x.allFinite()) throw invalid_argument("x: contains a NaN or infinite entry");
  return detail::run_block(block, Matrix<Scalar>(x));
}

void ForwardOptions::validate(Index num_layers) const {
  if (first_layer < 0 || first_layer > num_layers) {
    throw invalid_argument("first_layer: " + std::to_string(first_layer) + " is outside [0, " +
                           std::to_string(num_layers) + "]");
  }
  const Index last = last_layer == -1 ? num_layers : last_layer;
  if (last < first_layer || last > num_layers) {
    throw invalid_argument(
        "last_layer: " + std::to_string(last_layer) + " is outside [first_layer, num_layers] = [" +
        std::to_string(first_layer) + ", " + std::to_string(num_layers) + "] (-1 = num_layers)");
  }
}

template <class Scalar>
std::vector<Matrix<Scalar>> forward_points(const Transformer<Scalar>& model,
                                           const MatrixRef<Scalar>& x,
                                           const ForwardOptions& options) {
  options.validate(model.num_layers());
  check_points(model, x, "tokens");
  const Index last = options.last_layer == -1 ? model.num_layers() : options.last_layer;
  std::vector<Matrix<Scalar>> out;
  out.reserve(static_cast<std::size_t>(last - options.first_layer + 1));
  out.emplace_back(x);
  for (Index l = options.first_layer; l < last; ++l) {
    out.push_back(detail::run_block(model.blocks[static_cast<std::size_t>(l)], out.back()));
  }
  if (model.final_norm && last == model.num_layers() && last > options.first_layer) {
    out.back() = layer_norm_all(*model.final_norm, out.back());
  }
  for (const Matrix<Scalar>& h : out) {
    if (!h.allFinite()) {
      throw invalid_argument("tokens: the hidden states are not finite (inputs too large for " +
                             std::string(std::is_same_v<Scalar, float> ? "float32" : "float64") +
                             ")");
    }
  }
  return out;
}

template <class Scalar>
std::vector<Matrix<Scalar>> forward(const Transformer<Scalar>& model,
                                    const std::vector<std::int64_t>& ids,
                                    const ForwardOptions& options) {
  options.validate(model.num_layers());
  Matrix<Scalar> x = embed(model, ids);
  for (Index l = 0; l < options.first_layer; ++l) {
    x = detail::run_block(model.blocks[static_cast<std::size_t>(l)], std::move(x));
  }
  return forward_points(model, x, options);
}

#define MEASATTN_TRANSFORMER_INSTANTIATE(S)                                                        \
  template struct LayerNorm<S>;                                                                    \
  template struct Block<S>;                                                                        \
  template struct Transformer<S>;                                                                  \
  template Transformer<float> Transformer<S>::cast<float>() const;                                 \
  template Transformer<double> Transformer<S>::cast<double>() const;                               \
  template TransformerSummary summarize(const Transformer<S>&);                                    \
  template Matrix<S> embed(const Transformer<S>&, const std::vector<std::int64_t>&);               \
  template Matrix<S> attention_input(const Block<S>&, const MatrixRef<S>&);                        \
  template Matrix<S> block_forward(const Block<S>&, const MatrixRef<S>&);                          \
  template std::vector<Matrix<S>> forward(const Transformer<S>&, const std::vector<std::int64_t>&, \
                                          const ForwardOptions&);                                  \
  template std::vector<Matrix<S>> forward_points(const Transformer<S>&, const MatrixRef<S>&,       \
                                                 const ForwardOptions&);                           \
  template Matrix<S> detail::run_block(const Block<S>&, Matrix<S>);

MEASATTN_TRANSFORMER_INSTANTIATE(float)
MEASATTN_TRANSFORMER_INSTANTIATE(double)

}  // namespace measattn
