// measattn/transformer.hpp — whole Transformer blocks as maps on measures, and
// pretrained checkpoints (Hugging Face BERT / GPT-2, PyTorch TransformerEncoder).
//
// A sequence of n tokens is the empirical measure of its points in R^d. Everything
// that acts token by token is a push-forward by a fixed map (docs/transformers.md#blocks):
//
//   LN(x)  = gamma * (x - mean(x)) / sqrt(var(x) + eps) + beta   (over coordinates)
//   MLP(x) = W_2 act(W_1 x + b_1) + b_2
//   post-LN (BERT, norm_first = false):  y = LN1(x + Gamma_mu(x)),        x' = LN2(y + MLP(y))
//   pre-LN  (GPT-2, norm_first = true):  y = x + Gamma_{LN1#mu}(LN1(x)),  x' = y + MLP(LN2(y))
//
// so a block is a composition of push-forwards and one attention map (a Model of
// attention.hpp, dot potential, tau = sqrt(head_dim)), and a stack is a
// composition of blocks. Absolute position embeddings are part of each token's
// point: the embedding output of token i is word[id_i] + position[i] (+ type[0]),
// followed by the embedding LayerNorm for BERT. A causal decoder (GPT-2) lets
// token i attend to tokens 0..i.
//
// Checkpoints (load_transformer): a directory holding config.json and
// model.safetensors —
//   model_type "bert": BERT and its family (MiniLM): post-LN encoder, hidden_act
//     gelu (erf), gelu_new / gelu_pytorch_tanh (tanh form) or relu;
//   model_type "gpt2": pre-LN causal decoder, Conv1D weights stored [in, out],
//     fused c_attn, final ln_f; activation_function gelu_new (and the others);
//   model_type "torch_encoder": a PyTorch nn.TransformerEncoderLayer /
//     nn.TransformerEncoder state dict (keys with or without "layers.N."), with
//     d_model, nhead, dim_feedforward, norm_first, activation, layer_norm_eps in
//     config.json;
// or a single .safetensors file of a torch encoder state dict whose
// __metadata__ carries those config fields as strings. Tensor names may carry
// the wrapper prefix ("bert.", "transformer."); tensors of extra heads (pooler,
// lm_head, cls.*) are ignored. An unknown model_type, a missing or misshapen
// tensor, or a config that disagrees with the weights throws invalid_argument
// naming the path and the tensor or config field.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "measattn/attention.hpp"
#include "measattn/measure.hpp"
#include "measattn/types.hpp"

namespace measattn {

enum class Architecture {
  bert,           // Hugging Face BertModel (and MiniLM)
  gpt2,           // Hugging Face GPT2Model
  torch_encoder,  // torch.nn.TransformerEncoder(Layer)
};
/// "bert" / "gpt2" / "torch_encoder".
std::string to_string(Architecture a);

// NormPlacement (attention.hpp): post = LayerNorm after each residual sum (BERT;
// norm_first = false), pre = LayerNorm before attention and MLP (GPT-2;
// norm_first = true). A block is post or pre.

enum class Activation {
  gelu,       // x Phi(x), Phi the standard normal CDF (erf form)
  gelu_tanh,  // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))  (gelu_new, gelu_pytorch_tanh)
  relu,
};
/// "gelu" / "gelu_tanh" / "relu".
std::string to_string(Activation a);
/// Accepts Hugging Face and PyTorch spellings: "gelu", "gelu_new",
/// "gelu_pytorch_tanh", "gelu_tanh", "relu"; throws invalid_argument naming
/// `field` otherwise.
Activation parse_activation(const std::string& name, const std::string& field = "hidden_act");

/// LayerNorm over the coordinates of each token.
template <class Scalar>
struct LayerNorm {
  Vector<Scalar> gamma;  // d
  Vector<Scalar> beta;   // d
  Scalar eps = Scalar(1e-5);

  Index dim() const { return gamma.size(); }
  /// Row i of the result is LN(row i of x). Finite for finite input (eps > 0).
  Matrix<Scalar> apply(const MatrixRef<Scalar>& x) const;
  /// Throws invalid_argument("<name>: ...") on a shape mismatch, a non-finite
  /// entry or eps <= 0.
  void validate(const std::string& name) const;
};

/// One Transformer block: attention, MLP, two LayerNorms and residuals.
template <class Scalar>
struct Block {
  NormPlacement norm = NormPlacement::post;
  bool causal = false;
  Model<Scalar> attention;  // E = d_q = d_kv = d_out = d, dot potential
  LayerNorm<Scalar> ln1;    // post: after attention; pre: before attention
  LayerNorm<Scalar> ln2;    // post: after the MLP;   pre: before the MLP
  Matrix<Scalar> w1;        // ff x d
  Vector<Scalar> b1;        // ff
  Matrix<Scalar> w2;        // d x ff
  Vector<Scalar> b2;        // d
  Activation activation = Activation::gelu;

  Index dim() const { return w2.rows(); }
  Index ff_dim() const { return w1.rows(); }
  /// Throws invalid_argument("<name>.<field>: ...") naming the parameter.
  void validate(const std::string& name) const;
};

/// A stack of blocks with its embeddings (a pretrained checkpoint).
template <class Scalar>
struct Transformer {
  Architecture architecture = Architecture::bert;
  std::string model_type;                           // as in config.json
  Matrix<Scalar> word_embeddings;                   // vocab x d (empty for torch_encoder)
  Matrix<Scalar> position_embeddings;               // max_positions x d (may be empty)
  Matrix<Scalar> token_type_embeddings;             // types x d (BERT; else empty)
  std::optional<LayerNorm<Scalar>> embedding_norm;  // BERT's embeddings.LayerNorm
  std::vector<Block<Scalar>> blocks;
  std::optional<LayerNorm<Scalar>> final_norm;  // GPT-2's ln_f, TransformerEncoder's norm

  Index dim() const;
  Index num_layers() const { return static_cast<Index>(blocks.size()); }
  Index num_heads() const;
  Index vocab_size() const { return word_embeddings.rows(); }
  Index max_positions() const { return position_embeddings.rows(); }
  /// True when every block is causal (GPT-2).
  bool causal() const;
  /// The number of scalar parameters (every tensor that was used).
  std::int64_t parameter_count() const;
  /// Throws invalid_argument naming the parameter.
  void validate() const;

  template <class Other>
  Transformer<Other> cast() const;
};

/// What `measattn inspect` prints.
struct TransformerSummary {
  std::string architecture;  // to_string(Architecture)
  std::string model_type;
  Index layers = 0, heads = 0, dim = 0, head_dim = 0, ff_dim = 0;
  Index vocab_size = 0, max_positions = 0;
  std::string norm;        // "post" / "pre"
  std::string activation;  // to_string(Activation)
  bool causal = false;
  bool embedding_norm = false, final_norm = false;
  std::int64_t parameters = 0;
};
template <class Scalar>
TransformerSummary summarize(const Transformer<Scalar>& model);

/// Loads a checkpoint (see the top of this header). Tensors F16, BF16, F32 or
/// F64 are converted to Scalar. Throws invalid_argument("<path>: <field>: <reason>").
template <class Scalar>
Transformer<Scalar> load_transformer(const std::string& path);

/// The embedding output for one sequence of token ids (positions 0..n-1, token
/// type 0): n x d. Throws invalid_argument("input_ids: ...") on an id outside
/// [0, vocab_size), more tokens than max_positions, an empty sequence, or a
/// model without word embeddings (torch_encoder).
template <class Scalar>
Matrix<Scalar> embed(const Transformer<Scalar>& model, const std::vector<std::int64_t>& ids);

/// The points on which the block's attention acts: LN1(x) (pre-LN) or x (post-LN).
template <class Scalar>
Matrix<Scalar> attention_input(const Block<Scalar>& block, const MatrixRef<Scalar>& x);

/// The block applied to the tokens x (n x d, the atoms of the uniform measure).
template <class Scalar>
Matrix<Scalar> block_forward(const Block<Scalar>& block, const MatrixRef<Scalar>& x);

/// Which blocks a forward pass runs: [first, last) (Python slice; last = -1
/// means num_layers()).
struct ForwardOptions {
  Index first_layer = 0;
  Index last_layer = -1;
  void validate(Index num_layers) const;
};

/// Hidden states in the convention of Hugging Face's output_hidden_states, for
/// the blocks [first, last): entry 0 is the input of block `first` (the
/// embedding output when first = 0), entry k the output of block first + k - 1.
/// For GPT-2 (and a TransformerEncoder with a final norm) the final norm is
/// applied to the last entry when last = num_layers(). Returns last - first + 1
/// matrices of n x d.
template <class Scalar>
std::vector<Matrix<Scalar>> forward(const Transformer<Scalar>& model,
                                    const std::vector<std::int64_t>& ids,
                                    const ForwardOptions& options = {});

/// The same from given points (n x d) instead of token ids: entry 0 is `x`
/// itself (for torch_encoder checkpoints, or to start from hidden states).
template <class Scalar>
std::vector<Matrix<Scalar>> forward_points(const Transformer<Scalar>& model,
                                           const MatrixRef<Scalar>& x,
                                           const ForwardOptions& options = {});

}  // namespace measattn
