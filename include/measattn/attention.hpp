// measattn/attention.hpp — attention as a map on probability measures.
//
// A Model is one multi-head attention layer with PyTorch nn.MultiheadAttention's
// parameters (docs/theory.md#attention). With E the embedding size, H heads and
// k = E / H the head size, head h uses rows [h k, (h+1) k) of w_q, w_k, w_v:
//
//   q(x) = Q_h x + b_q,h     kappa(y) = K_h y + b_k,h     v(y) = V_h y + b_v,h
//   G(x,y) = <q(x), kappa(y)> / tau            (Potential::dot, the Transformer's)
//   G(x,y) = -||q(x) - kappa(y)||^2 / tau      (Potential::l2, Kim et al. 2021)
//   G(x,y) = <q(x), kappa(y)> / (||q(x)|| ||kappa(y)|| tau)   (Potential::cosine;
//            a zero projection has normalized vector 0, so G = 0 there, never NaN)
//   pi_j(x) = softmax_j( G(x, x_j) + log w_j )                  the kernel K_mu(x, .)
//   Gamma^h_mu(x) = sum_j pi_j(x) v(x_j)                       the head's field
//   Gamma_mu(x) = W_O [Gamma^1_mu(x); ...; Gamma^H_mu(x)] + b_O
//
// Self-attention F(mu) = (Gamma_mu)#mu, cross-attention F(nu; mu) = (Gamma_mu)#nu,
// residual F_res(mu) = (id + Gamma_mu)#mu. Causal attention lets query i see
// keys j <= i only (positions are atom indices).
//
// The implementation streams over key blocks with an online log-sum-exp: memory
// is O((n + m) E), never O(n m); no finite input yields inf or NaN. Query blocks
// run in parallel (OpenMP) and every row is computed by the same sequence of
// operations whatever the thread count, so results are bit-identical across
// thread counts.
#pragma once

#include <functional>
#include <string>

#include "measattn/communicator.hpp"
#include "measattn/error.hpp"
#include "measattn/measure.hpp"
#include "measattn/options.hpp"
#include "measattn/status.hpp"
#include "measattn/types.hpp"

namespace measattn {

enum class Potential { dot, l2, custom, cosine };

/// "dot" / "l2" / "cosine" / "custom".
std::string to_string(Potential p);
/// Parses "dot", "l2" or "cosine"; throws invalid_argument naming `field` otherwise.
Potential parse_potential(const std::string& name, const std::string& field = "potential");

/// A user potential G(q(x), kappa(y)) evaluated on the projected query and key
/// (each of length head_dim), already including 1/tau if wanted. Used with
/// Potential::custom; the streaming still applies, without the blocked GEMM.
template <class Scalar>
using PotentialFunction = std::function<Scalar(const Scalar* q, const Scalar* k, Index head_dim)>;

/// One head in the notation of docs/theory.md#attention (a view extracted from a Model).
template <class Scalar>
struct Head {
  Matrix<Scalar> q, k, v;  // k x d_q, k x d_kv, k x d_kv
  Vector<Scalar> b_q, b_k, b_v;
  Scalar tau;
  Potential potential;
};

/// One multi-head attention layer (PyTorch nn.MultiheadAttention layout).
/// Empty bias vectors mean zero bias.
template <class Scalar>
struct Model {
  Index num_heads = 1;
  Potential potential = Potential::dot;
  Scalar scale = 0;                            // tau; 0 means the default sqrt(head_dim)
  Matrix<Scalar> w_q;                          // E x d_q      (in_proj_weight rows [0, E))
  Matrix<Scalar> w_k;                          // E x d_kv     (rows [E, 2E))
  Matrix<Scalar> w_v;                          // E x d_kv     (rows [2E, 3E))
  Vector<Scalar> b_q, b_k, b_v;                // E each, or empty
  Matrix<Scalar> w_o;                          // d_out x E    (out_proj.weight)
  Vector<Scalar> b_o;                          // d_out, or empty
  PotentialFunction<Scalar> custom_potential;  // only for Potential::custom

  Index embed_dim() const { return w_q.rows(); }
  Index head_dim() const { return w_q.rows() / num_heads; }
  Index query_dim() const { return w_q.cols(); }
  Index key_dim() const { return w_k.cols(); }
  Index out_dim() const { return w_o.rows(); }
  /// tau: `scale` if positive, else sqrt(head_dim).
  Scalar tau() const;
  bool has_bias() const;

  /// Throws invalid_argument naming the offending parameter: shapes must agree,
  /// E divisible by num_heads, every entry finite, scale >= 0, a custom
  /// potential needs a function.
  void validate() const;

  /// Head h as (Q, K, V, biases, tau), zero biases made explicit.
  Head<Scalar> head(Index h) const;

  /// The canonical model of the particle literature (docs/theory.md#flow):
  /// one head, Q = K = V = W_O = I_d, no biases, G(x,y) = beta <x,y>.
  static Model canonical(Index dim, Scalar beta);

  /// A model with random weights (entries N(0, 1/d)), seeded; for examples and tests.
  static Model random(Index dim, Index num_heads, bool bias, unsigned long long seed,
                      Potential potential = Potential::dot);

  template <class Other>
  Model<Other> cast() const;
};

enum class Normalization {
  softmax,   // standard attention: rows of the kernel sum to one
  sinkhorn,  // doubly-stochastic attention (docs/theory.md#maxent), self-attention only
};

std::string to_string(Normalization n);
Normalization parse_normalization(const std::string& name,
                                  const std::string& field = "normalization");

/// Where a layer normalization sits relative to the residual update: the
/// vocabulary of Transformer blocks (transformer.hpp: post-LN BERT, pre-LN
/// GPT-2) and of the particle flows (flow.hpp: post = the dynamics on the unit
/// sphere, pre = attention reads x / |x| and the update is added unnormalized,
/// none = plain).
enum class NormPlacement {
  post,  // normalize after the residual sum (BERT; norm_first = false)
  pre,   // normalize the input of attention (GPT-2; norm_first = true)
  none,  // no normalization (flows only; a Transformer block is post or pre)
};
/// "post" / "pre" / "none".
std::string to_string(NormPlacement p);
/// Parses "post" / "pre" / "none"; throws invalid_argument naming `field` otherwise.
NormPlacement parse_norm_placement(const std::string& name, const std::string& field = "norm");

struct AttendOptions {
  bool causal = false;    // query i sees keys j <= i
  bool residual = false;  // add the query to the output (needs d_out == d_q)
  Normalization normalization = Normalization::softmax;
  int sinkhorn_iterations = 0;  // Sinkhorn iterations (columns, then rows) beyond softmax
                                // (0 = softmax)
  /// Rows per query block and key block of the streaming kernel; 0 = automatic.
  /// Results do not depend on the thread count; they may depend on block sizes
  /// only in the last bits.
  Index query_block = 0;
  Index key_block = 0;
  /// The ranks that share the work (communicator.hpp); the calling process
  /// alone by default. With several ranks, attention_field and self_attention
  /// take the whole measure and queries on every rank, split the queries and
  /// the keys over the ranks, and return the whole result on every rank;
  /// attention_field_shard takes and returns each rank's part only. Either
  /// way the result is bit-identical to one process whatever the rank count.
  /// Softmax normalization only.
  Communicator communicator;

  /// Throws invalid_argument naming the field on a bad value.
  void validate() const {
    if (sinkhorn_iterations < 0) throw invalid_argument("sinkhorn_iterations: must be >= 0");
    if (query_block < 0) throw invalid_argument("query_block: must be >= 0");
    if (key_block < 0) throw invalid_argument("key_block: must be >= 0");
  }
};

/// The user-facing fields of AttendOptions (options.hpp).
template <class Visitor>
void for_each_field(AttendOptions& o, Visitor&& visit) {
  visit("causal", o.causal, "Query i sees tokens 0..i only");
  visit("residual", o.residual, "Add the query to the output (x + Gamma(x))");
  visit("normalization", o.normalization,
        "softmax (standard) or sinkhorn (doubly stochastic, self-attention only)",
        EnumSpelling<Normalization>{[](Normalization n) { return to_string(n); },
                                    &parse_normalization});
  visit("sinkhorn_iterations", o.sinkhorn_iterations,
        "Sinkhorn iterations beyond softmax (with normalization sinkhorn)");
  visit("query_block", o.query_block, "Rows per query block (0 = automatic)");
  visit("key_block", o.key_block, "Rows per key block (0 = automatic)");
}

/// Gamma_mu(y_i) (plus y_i when residual) for each row y_i of `queries`
/// (n x d_q); keys and values are the atoms of mu (m x d_kv). Returns n x d_out.
/// O(n m E) time, O((n + m) E) memory.
template <class Scalar>
Matrix<Scalar> attention_field(const Model<Scalar>& model, const Measure<Scalar>& mu,
                               const MatrixRef<Scalar>& queries, const AttendOptions& options = {});

/// Distributed attention on a measure split over the ranks of
/// options.communicator: rank r passes rows [o_r, o_r + m_r) of the whole
/// measure's atoms (`atoms`, m_r x d_kv) with their weights (`weights`, m_r
/// values, not normalized: the whole measure divides every weight by the total
/// over all ranks), and rows [p_r, p_r + n_r) of the queries (n_r x d_q; for
/// self-attention, the rank's atoms again); the parts follow one another in
/// rank order (o_r = m_0 + ... + m_{r-1}, the same for p_r; shard_rows gives a
/// balanced split, any split is allowed, parts may be empty). Returns this
/// rank's n_r rows of Gamma_mu (plus the query when residual), bit-identical to
/// the same rows of attention_field on the whole measure in one process,
/// whatever the rank count and split. The keys and values travel from rank to
/// rank in key order while the blocks already received are computed (online
/// log-sum-exp carried across them), so a rank never holds more than its own
/// part, one other rank's part in flight and one key block: memory per rank
/// O((n_r + m_r + max_s m_s + key_block) E). Causal masks use global positions
/// (query p_r + i sees keys at positions <= p_r + i). Collective: every rank
/// must call it; an error on any rank is thrown on every rank (the lowest
/// failing rank's message). Softmax normalization only.
template <class Scalar>
Matrix<Scalar> attention_field_shard(
    const Model<Scalar>& model, const MatrixRef<Scalar>& atoms,
    const Eigen::Ref<const Vector<std::type_identity_t<Scalar>>>& weights,
    const MatrixRef<Scalar>& queries, const AttendOptions& options);

/// The fields of each head before the output projection: n x E, head h in
/// columns [h k, (h+1) k). Same streaming algorithm.
template <class Scalar>
Matrix<Scalar> head_fields(const Model<Scalar>& model, const Measure<Scalar>& mu,
                           const MatrixRef<Scalar>& queries, const AttendOptions& options = {});

/// The kernel of head h materialized: row i = pi(y_i) over the m atoms of mu
/// (n x m). For inspection and tests on small inputs; O(n m) memory.
template <class Scalar>
Matrix<Scalar> attention_kernel(const Model<Scalar>& model, const Measure<Scalar>& mu,
                                const MatrixRef<Scalar>& queries, Index head,
                                const AttendOptions& options = {});

/// Self-attention F(mu) = (Gamma_mu)#mu (or (id + Gamma_mu)#mu when residual).
template <class Scalar>
Measure<Scalar> self_attention(const Model<Scalar>& model, const Measure<Scalar>& mu,
                               const AttendOptions& options = {});

/// Cross-attention F(nu; mu) = (Gamma_mu)#nu: queries from nu, keys/values from mu.
template <class Scalar>
Measure<Scalar> cross_attention(const Model<Scalar>& model, const Measure<Scalar>& nu,
                                const Measure<Scalar>& mu, const AttendOptions& options = {});

/// The logits s_ij = G_h(y_i, x_j) of head h between the queries (rows y_i) and
/// the atoms x_j of mu, without the log-weights: n x m, dense (O(n m) memory).
/// Validates its arguments as attention_field does and `head` in [0, num_heads).
template <class Scalar>
Matrix<Scalar> attention_logits(const Model<Scalar>& model, const Measure<Scalar>& mu,
                                const MatrixRef<Scalar>& queries, Index head);

/// The Transformer formula computed directly, as a reference: for each head
/// softmax(S + log w) V with the full n x m logit matrix S materialized, the
/// heads concatenated and projected. O(n m) memory: for checks, not for speed.
template <class Scalar>
Matrix<Scalar> transformer_attention(const Model<Scalar>& model, const Measure<Scalar>& mu,
                                     const MatrixRef<Scalar>& queries,
                                     const AttendOptions& options = {});

// ---- Doubly-stochastic (Sinkhorn) attention ---------------------------------
//
// The potentials f, g of the entropic coupling of (mu, mu) with cost -G; the
// kernel row i is K_ij = w_j exp(f_i + G_ij + g_j) (docs/theory.md#maxent). Sander,
// Ablin, Blondel, Peyré, "Sinkformers: Transformers with Doubly Stochastic
// Attention", AISTATS 2022. attend's Normalization::sinkhorn uses the same solver.

struct SinkhornAttentionOptions {
  int iterations = 100;  // full iterations (columns then rows) beyond softmax; >= 0
  double tolerance = 0;  // stop early once the column-marginal error <= tolerance (0: never)
  Index block = 0;       // tile size of the streamed passes; 0 = automatic
  void validate() const;
};

/// The user-facing fields of SinkhornAttentionOptions (options.hpp).
template <class Visitor>
void for_each_field(SinkhornAttentionOptions& o, Visitor&& visit) {
  visit("iterations", o.iterations, "Sinkhorn iterations (columns then rows) beyond softmax");
  visit("tolerance", o.tolerance, "Stop once the column-marginal error <= tolerance (0: never)");
  visit("block", o.block, "Tile size of the streamed passes (0 = automatic)");
}

/// Potentials of head h over the atoms of mu (zero-weight atoms included: their
/// row potential f_i is the row normalizer, their g_j is defined but unused):
/// K_ij = w_j exp(f_i + G_ij + g_j) with sum_j K_ij = 1 for every i, and
/// column_error = sum_j | sum_i w_i K_ij - w_j | (L1 violation of the second marginal).
template <class Scalar>
struct SinkhornAttentionResult {
  Vector<Scalar> f, g;
  Scalar column_error = 0;
  int iterations = 0;
  Status status = Status::iteration_limit;  // converged or iteration_limit (status.hpp)
  std::string message;
};

/// Streamed log-domain Sinkhorn scaling of the self-attention logits of head h:
/// each half-step is one pass of online log-sum-exp over tiles of G recomputed
/// from the projections, so memory stays O(n E). Iteration 0 is softmax (g = 0,
/// f = -log sum_j w_j e^{G_ij}); each iteration sets g from the columns, then f
/// from the rows. status = converged when tolerance > 0 and reached.
/// Time O(iterations n^2 k). Throws invalid_argument on bad input.
template <class Scalar>
SinkhornAttentionResult<Scalar> sinkhorn_attention(const Model<Scalar>& model,
                                                   const Measure<Scalar>& mu, Index head,
                                                   const SinkhornAttentionOptions& options = {});

}  // namespace measattn
