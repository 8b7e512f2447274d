// Whole blocks and checkpoints (transformer.hpp): the block maps against a
// direct reference built from the library's dense attention formula, the
// hidden-state convention, determinism across thread counts, LayerNorm's
// numerics, and the checkpoint importer's refusals (in memory, through
// detail::parse_transformer). The importers against Hugging Face transformers
// and PyTorch are tests/python/test_transformer_import.py.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "measattn/attention.hpp"
#include "measattn/error.hpp"
#include "measattn/measure.hpp"
#include "measattn/transformer.hpp"
#include "transformer/checkpoint.hpp"

namespace measattn {
namespace {

using json = nlohmann::json;

// ---- a tiny checkpoint writer ----------------------------------------------------

struct Tensor {
  std::vector<std::int64_t> shape;
  std::vector<double> values;
  std::string dtype = "F64";
};

std::string safetensors(const std::map<std::string, Tensor>& tensors, const json& meta = {}) {
  json header = json::object();
  std::string data;
  for (const auto& [name, t] : tensors) {
    const std::uint64_t begin = data.size();
    for (double v : t.values) {
      if (t.dtype == "F32") {
        const float f = static_cast<float>(v);
        data.append(reinterpret_cast<const char*>(&f), 4);
      } else if (t.dtype == "F64") {
        data.append(reinterpret_cast<const char*>(&v), 8);
      } else if (t.dtype == "I64") {
        const auto i = static_cast<std::int64_t>(v);
        data.append(reinterpret_cast<const char*>(&i), 8);
      }
    }
    header[name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {begin, data.size()}}};
  }
  if (!meta.is_null()) header["__metadata__"] = meta;
  std::string text = header.dump();
  std::string out(8, '\0');
  const std::uint64_t n = text.size();
  std::memcpy(out.data(), &n, 8);
  return out + text + data;
}

std::mt19937_64 rng(7);
Tensor random_tensor(std::vector<std::int64_t> shape, double scale = 0.3) {
  std::normal_distribution<double> g(0, scale);
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  Tensor t{shape, std::vector<double>(static_cast<std::size_t>(n))};
  for (auto& v : t.values) v = g(rng);
  return t;
}

// A BERT checkpoint: d = 8, 2 heads, ff = 12, `layers` layers, vocab 20, 16 positions.
struct Bert {
  json config = {{"model_type", "bert"},          {"hidden_size", 8},
                 {"num_attention_heads", 2},      {"num_hidden_layers", 2},
                 {"intermediate_size", 12},       {"vocab_size", 20},
                 {"max_position_embeddings", 16}, {"type_vocab_size", 2},
                 {"hidden_act", "gelu"},          {"layer_norm_eps", 1e-12}};
  std::map<std::string, Tensor> tensors;
  explicit Bert(int layers = 2, const std::string& prefix = "") {
    config["num_hidden_layers"] = layers;
    auto add = [&](const std::string& k, std::vector<std::int64_t> s) {
      tensors[prefix + k] = random_tensor(std::move(s));
    };
    add("embeddings.word_embeddings.weight", {20, 8});
    add("embeddings.position_embeddings.weight", {16, 8});
    add("embeddings.token_type_embeddings.weight", {2, 8});
    add("embeddings.LayerNorm.weight", {8});
    add("embeddings.LayerNorm.bias", {8});
    for (int l = 0; l < layers; ++l) {
      const std::string p = "encoder.layer." + std::to_string(l) + ".";
      for (const char* m : {"attention.self.query", "attention.self.key", "attention.self.value",
                            "attention.output.dense"}) {
        add(p + m + ".weight", {8, 8});
        add(p + m + ".bias", {8});
      }
      add(p + "attention.output.LayerNorm.weight", {8});
      add(p + "attention.output.LayerNorm.bias", {8});
      add(p + "intermediate.dense.weight", {12, 8});
      add(p + "intermediate.dense.bias", {12});
      add(p + "output.dense.weight", {8, 12});
      add(p + "output.dense.bias", {8});
      add(p + "output.LayerNorm.weight", {8});
      add(p + "output.LayerNorm.bias", {8});
    }
  }
  Transformer<double> load() const {
    return detail::parse_transformer<double>(config.dump(), "ck/config.json", safetensors(tensors),
                                             "ck/model.safetensors");
  }
};

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const invalid_argument& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_ERROR(stmt, text)                                              \
  do {                                                                        \
    const std::string message_ = error_of([&] { (void)(stmt); });             \
    EXPECT_NE(message_.find(text), std::string::npos) << "got: " << message_; \
  } while (0)

// ---- a direct reference ------------------------------------------------------------

MatrixD ln_ref(const LayerNorm<double>& ln, const MatrixD& x) {
  MatrixD y(x.rows(), x.cols());
  for (Index i = 0; i < x.rows(); ++i) {
    const double mean = x.row(i).mean();
    const double var = (x.row(i).array() - mean).square().mean();
    for (Index j = 0; j < x.cols(); ++j) {
      y(i, j) = (x(i, j) - mean) / std::sqrt(var + ln.eps) * ln.gamma[j] + ln.beta[j];
    }
  }
  return y;
}

double act_ref(double x, Activation a) {
  switch (a) {
    case Activation::gelu:
      return 0.5 * x * std::erfc(-x / std::sqrt(2.0));
    case Activation::gelu_tanh:
      return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
    case Activation::relu:
      return x > 0 ? x : 0;
  }
  return 0;
}

MatrixD block_ref(const Block<double>& b, const MatrixD& x) {
  AttendOptions o;
  o.causal = b.causal;
  auto attend = [&](const MatrixD& p) {
    return transformer_attention(b.attention, Measure<double>::empirical(p), p, o);
  };
  auto mlp = [&](const MatrixD& p) {
    MatrixD h = (p * b.w1.transpose()).rowwise() + b.b1.transpose();
    for (Index i = 0; i < h.size(); ++i) h.data()[i] = act_ref(h.data()[i], b.activation);
    return MatrixD((h * b.w2.transpose()).rowwise() + b.b2.transpose());
  };
  if (b.norm == NormPlacement::post) {
    const MatrixD y = ln_ref(b.ln1, x + attend(x));
    return ln_ref(b.ln2, y + mlp(y));
  }
  const MatrixD y = x + attend(ln_ref(b.ln1, x));
  return y + mlp(ln_ref(b.ln2, y));
}

double rel(const MatrixD& a, const MatrixD& b) {
  return (a - b).cwiseAbs().maxCoeff() / std::max(1e-300, b.cwiseAbs().maxCoeff());
}

// ---- the maps --------------------------------------------------------------------

TEST(transformer_test, bert_forward_matches_direct_reference) {
  const Bert ck(2);
  const auto t = ck.load();
  const std::vector<std::int64_t> ids = {1, 5, 19, 0, 3, 3, 7};
  const auto states = forward(t, ids);
  ASSERT_EQ(states.size(), 3u);
  // Entry 0: word + type 0 + position, then the embedding LayerNorm.
  MatrixD e(7, 8);
  for (Index i = 0; i < 7; ++i) {
    e.row(i) = t.word_embeddings.row(ids[i]) + t.token_type_embeddings.row(0) +
               t.position_embeddings.row(i);
  }
  e = ln_ref(*t.embedding_norm, e);
  EXPECT_LT(rel(states[0], e), 1e-14);
  MatrixD x = e;
  for (int l = 0; l < 2; ++l) {
    x = block_ref(t.blocks[l], x);
    EXPECT_LT(rel(states[l + 1], x), 1e-13) << "layer " << l;
    EXPECT_LT(rel(block_forward(t.blocks[l], states[l]), states[l + 1]), 1e-15);
  }
  EXPECT_EQ(attention_input(t.blocks[0], states[0]), states[0]);  // post-LN: x itself
}

TEST(transformer_test, pre_ln_causal_block_matches_reference) {
  Block<double> b;
  b.norm = NormPlacement::pre;
  b.causal = true;
  b.activation = Activation::gelu_tanh;
  b.attention = Model<double>::random(6, 3, true, 3);
  b.ln1.gamma = VectorD::Random(6);
  b.ln1.beta = VectorD::Random(6);
  b.ln2.gamma = VectorD::Random(6);
  b.ln2.beta = VectorD::Random(6);
  b.w1 = MatrixD::Random(10, 6);
  b.b1 = VectorD::Random(10);
  b.w2 = MatrixD::Random(6, 10);
  b.b2 = VectorD::Random(6);
  // 150 tokens: several row blocks, the causal mask crossing them.
  const MatrixD x = MatrixD::Random(150, 6);
  EXPECT_LT(rel(block_forward(b, x), block_ref(b, x)), 1e-13);
  EXPECT_LT(rel(attention_input(b, x), ln_ref(b.ln1, x)), 1e-15);
  // Causal: token i does not depend on later tokens.
  const MatrixD head = block_forward(b, x.topRows(40));
  EXPECT_LT(rel(head, block_forward(b, x).topRows(40)), 1e-14);
  for (Activation a : {Activation::gelu, Activation::relu}) {
    b.activation = a;
    b.causal = false;
    EXPECT_LT(rel(block_forward(b, x), block_ref(b, x)), 1e-13);
  }
}

TEST(transformer_test, layer_slices_follow_the_hidden_state_convention) {
  const Bert ck(3);
  const auto t = ck.load();
  const std::vector<std::int64_t> ids = {2, 4, 6, 8};
  const auto all = forward(t, ids);
  ASSERT_EQ(all.size(), 4u);
  ForwardOptions o;
  o.first_layer = 1;
  o.last_layer = 3;
  const auto part = forward(t, ids, o);
  ASSERT_EQ(part.size(), 3u);
  for (int k = 0; k < 3; ++k) EXPECT_EQ(part[k], all[k + 1]);
  const auto from_points = forward_points(t, all[1], o);
  for (int k = 0; k < 3; ++k) EXPECT_EQ(from_points[k], all[k + 1]);
  o.first_layer = 2;
  o.last_layer = 2;
  const auto empty = forward(t, ids, o);
  ASSERT_EQ(empty.size(), 1u);
  EXPECT_EQ(empty[0], all[2]);
  o.first_layer = 2;
  o.last_layer = 1;
  EXPECT_ERROR(forward(t, ids, o), "last_layer");
  o.first_layer = 4;
  o.last_layer = -1;
  EXPECT_ERROR(forward(t, ids, o), "first_layer");
}

TEST(transformer_test, final_norm_only_on_the_last_entry) {
  const Bert ck(2);
  auto t = ck.load();
  LayerNorm<double> f;
  f.gamma = VectorD::Constant(8, 2.0);
  f.beta = VectorD::Constant(8, 0.5);
  f.eps = 1e-5;
  const auto plain = forward(t, {1, 2, 3});
  t.final_norm = f;
  const auto normed = forward(t, {1, 2, 3});
  EXPECT_EQ(normed[1], plain[1]);
  EXPECT_LT(rel(normed[2], ln_ref(f, plain[2])), 1e-15);
  ForwardOptions o;
  o.last_layer = 1;
  EXPECT_EQ(forward(t, {1, 2, 3}, o).back(), plain[1]);
}

TEST(transformer_test, bit_identical_across_thread_counts) {
  const Bert ck(2);
  auto t = ck.load();
  for (auto& b : t.blocks) b.causal = true;
  std::vector<std::int64_t> ids(16);
  for (int i = 0; i < 16; ++i) ids[i] = (i * 7) % 20;
  // 16 positions: run from points for a longer sequence too.
  const MatrixD x = MatrixD::Random(333, 8);
  const int before = omp_get_max_threads();
  omp_set_num_threads(1);
  const auto a = forward(t, ids);
  const auto pa = forward_points(t, x);
  omp_set_num_threads(3);
  const auto b = forward(t, ids);
  const auto pb = forward_points(t, x);
  omp_set_num_threads(before);
  for (std::size_t k = 0; k < a.size(); ++k) {
    EXPECT_EQ(a[k], b[k]);
    EXPECT_EQ(pa[k], pb[k]);
  }
}

TEST(transformer_test, layer_norm_is_two_pass_and_finite) {
  LayerNorm<double> ln;
  ln.gamma = VectorD::Ones(4);
  ln.beta = VectorD::Zero(4);
  ln.eps = 1e-12;
  MatrixD x(2, 4);
  x << 1e8 + 1, 1e8 - 1, 1e8 + 1, 1e8 - 1,  // a one-pass variance would cancel to 0
      3, 3, 3, 3;                           // constant row: 0, not NaN
  const MatrixD y = ln.apply(x);
  EXPECT_TRUE(y.allFinite());
  for (int j = 0; j < 4; ++j) EXPECT_NEAR(y(0, j), j % 2 == 0 ? 1.0 : -1.0, 1e-9);
  EXPECT_EQ(y.row(1), Eigen::RowVectorXd::Zero(4));
  ln.eps = 0;
  EXPECT_ERROR(ln.validate("ln"), "ln.eps");
  ln.eps = 1e-5;
  ln.beta = VectorD::Zero(3);
  EXPECT_ERROR(ln.validate("ln"), "ln.beta");
}

TEST(transformer_test, activations_and_names) {
  EXPECT_EQ(parse_activation("gelu_new"), Activation::gelu_tanh);
  EXPECT_EQ(parse_activation("gelu_pytorch_tanh"), Activation::gelu_tanh);
  EXPECT_EQ(parse_activation("relu"), Activation::relu);
  EXPECT_ERROR(parse_activation("swish"), "hidden_act");
  EXPECT_EQ(to_string(Architecture::torch_encoder), "torch_encoder");
  EXPECT_EQ(to_string(NormPlacement::pre), "pre");
}

TEST(transformer_test, embed_refuses_bad_ids) {
  const auto t = Bert(1).load();
  EXPECT_ERROR(embed(t, {}), "input_ids: empty");
  EXPECT_ERROR(embed(t, {1, 20}), "input_ids: entry 1 is 20");
  EXPECT_ERROR(embed(t, {-1}), "input_ids: entry 0 is -1");
  EXPECT_ERROR(embed(t, std::vector<std::int64_t>(17, 1)), "more than the model's 16 positions");
  EXPECT_ERROR(forward_points(t, MatrixD::Zero(3, 5)), "tokens: tokens have dimension 5");
}

TEST(transformer_test, summary_and_parameter_count) {
  const auto t = Bert(2).load();
  const auto s = summarize(t);
  EXPECT_EQ(s.architecture, "bert");
  EXPECT_EQ(s.layers, 2);
  EXPECT_EQ(s.heads, 2);
  EXPECT_EQ(s.head_dim, 4);
  EXPECT_EQ(s.ff_dim, 12);
  EXPECT_EQ(s.norm, "post");
  EXPECT_FALSE(s.causal);
  const std::int64_t per_layer = 4 * (64 + 8) + 2 * 16 + (96 + 12) + (96 + 8);
  EXPECT_EQ(s.parameters, 20 * 8 + 16 * 8 + 2 * 8 + 16 + 2 * per_layer);
  const auto f = t.cast<float>();
  EXPECT_EQ(summarize(f).parameters, s.parameters);
}

// ---- the importer's refusals ---------------------------------------------------------

TEST(transformer_test, prefixes_heads_and_buffers_are_ignored) {
  Bert ck(1, "bert.");
  ck.tensors["cls.predictions.bias"] = random_tensor({20});
  ck.tensors["bert.pooler.dense.weight"] = random_tensor({8, 8});
  ck.tensors["bert.embeddings.position_ids"] = Tensor{{1, 16}, std::vector<double>(16, 1), "I64"};
  const auto t = ck.load();
  EXPECT_EQ(t.num_layers(), 1);
  ck.tensors["bert.encoder.extra.weight"] = random_tensor({2});
  EXPECT_ERROR(ck.load(), "ck/model.safetensors: bert.encoder.extra.weight: unexpected tensor");
}

TEST(transformer_test, bad_configs_and_tensors_name_the_field_or_tensor) {
  {
    Bert ck;
    ck.config["model_type"] = "llama";
    EXPECT_ERROR(ck.load(), "ck/config.json: model_type: unknown model_type 'llama'");
  }
  {
    Bert ck;
    ck.config.erase("model_type");
    EXPECT_ERROR(ck.load(), "ck/config.json: model_type: missing");
  }
  {
    Bert ck;
    ck.tensors.erase("encoder.layer.1.attention.self.key.bias");
    EXPECT_ERROR(ck.load(), "encoder.layer.1.attention.self.key.bias: missing tensor");
  }
  {
    Bert ck;
    ck.tensors["encoder.layer.0.intermediate.dense.weight"] = random_tensor({12, 7});
    EXPECT_ERROR(ck.load(),
                 "encoder.layer.0.intermediate.dense.weight: expected shape "
                 "[intermediate_size, hidden_size] = [12, 8], found [12, 7]");
  }
  {
    Bert ck;
    ck.config["hidden_size"] = 10;
    ck.config["num_attention_heads"] = 5;
    EXPECT_ERROR(ck.load(), "[vocab_size, hidden_size] = [20, 10], found [20, 8]");
    ck.config["num_attention_heads"] = 3;
    EXPECT_ERROR(ck.load(), "num_attention_heads: 3 does not divide hidden_size = 10");
  }
  {
    Bert ck(3);
    ck.config["num_hidden_layers"] = 2;
    EXPECT_ERROR(ck.load(), "num_hidden_layers: 2 disagrees with the weights");
    ck.config["num_hidden_layers"] = 4;
    EXPECT_ERROR(ck.load(), "encoder.layer.3: missing (num_hidden_layers is 4");
  }
  {
    Bert ck;
    ck.tensors["encoder.layer.0.output.dense.bias"].values[3] = NAN;
    EXPECT_ERROR(ck.load(), "encoder.layer.0.output.dense.bias: entry 3 is NaN");
  }
  {
    Bert ck;
    ck.config["position_embedding_type"] = "relative_key";
    EXPECT_ERROR(ck.load(), "position_embedding_type: 'relative_key' is not supported");
    ck.config["position_embedding_type"] = "absolute";
    ck.config["is_decoder"] = true;
    EXPECT_ERROR(ck.load(), "is_decoder");
    ck.config["is_decoder"] = false;
    ck.config["add_cross_attention"] = true;
    EXPECT_ERROR(ck.load(), "add_cross_attention");
    ck.config["add_cross_attention"] = false;
    ck.config["hidden_act"] = "silu";
    EXPECT_ERROR(ck.load(), "ck/config.json: hidden_act: unsupported activation 'silu'");
    ck.config["hidden_act"] = 3;
    EXPECT_ERROR(ck.load(), "hidden_act: expected a string");
    ck.config["hidden_act"] = "gelu";
    ck.config["hidden_size"] = -8;
    EXPECT_ERROR(ck.load(), "hidden_size: expected an integer in [1, 2^31)");
    ck.config["hidden_size"] = 8.5;
    EXPECT_ERROR(ck.load(), "hidden_size: expected an integer");
    ck.config["hidden_size"] = 8;
    ck.config["layer_norm_eps"] = -1;
    EXPECT_ERROR(ck.load(), "layer_norm_eps: must be positive");
  }
  {
    Bert ck;
    ck.tensors["encoder.layer.0.output.dense.bias"].dtype = "I64";
    EXPECT_ERROR(ck.load(), "is not a floating-point dtype");
  }
}

TEST(transformer_test, hostile_config_json_is_refused) {
  const std::string weights = safetensors(Bert().tensors);
  auto load = [&](const std::string& config) {
    return detail::parse_transformer<double>(config, "c.json", weights, "w.safetensors");
  };
  EXPECT_ERROR(load(std::string(100000, '[') + std::string(100000, ']')), "c.json: not valid");
  EXPECT_ERROR(load("{\"model_type\": \"bert\", \"model_type\": \"gpt2\"}"), "duplicate key");
  EXPECT_ERROR(load("[1, 2]"), "c.json: not a JSON object");
  EXPECT_ERROR(load("{\"model_type\": \"bert\""), "c.json: not valid JSON");
  EXPECT_ERROR(load(std::string("{\"a\": 1}\0", 9)), "NUL byte");
  EXPECT_ERROR(load("{\"model_type\": [\"bert\"]}"), "model_type: expected a string");
}

TEST(transformer_test, half_precision_tensors_convert_exactly) {
  // A torch encoder layer whose linear1.bias is stored as F16 and BF16.
  json meta = {{"d_model", "4"}, {"nhead", "2"}, {"dim_feedforward", "3"}};
  std::map<std::string, Tensor> tensors = {
      {"self_attn.in_proj_weight", random_tensor({12, 4})},
      {"self_attn.in_proj_bias", random_tensor({12})},
      {"self_attn.out_proj.weight", random_tensor({4, 4})},
      {"self_attn.out_proj.bias", random_tensor({4})},
      {"linear1.weight", random_tensor({3, 4})},
      {"linear2.weight", random_tensor({4, 3})},
      {"linear2.bias", random_tensor({4})},
      {"norm1.weight", random_tensor({4})},
      {"norm1.bias", random_tensor({4})},
      {"norm2.weight", random_tensor({4})},
      {"norm2.bias", random_tensor({4})},
  };
  // linear1.bias written by hand: F16 0x3C00 = 1, 0xC000 = -2, 0x0001 = 2^-24.
  auto with_bias = [&](const std::string& dtype, const std::vector<std::uint16_t>& bits) {
    std::string bytes = safetensors(tensors, meta);
    std::uint64_t n;
    std::memcpy(&n, bytes.data(), 8);
    json header = json::parse(bytes.substr(8, n));
    const std::string data = bytes.substr(8 + n);
    header["linear1.bias"] = {
        {"dtype", dtype}, {"shape", {3}}, {"data_offsets", {data.size(), data.size() + 6}}};
    const std::string text = header.dump();
    std::string out(8, '\0');
    const std::uint64_t m = text.size();
    std::memcpy(out.data(), &m, 8);
    out += text + data;
    out.append(reinterpret_cast<const char*>(bits.data()), 6);
    return detail::parse_transformer<double>(std::nullopt, "", out, "enc.safetensors");
  };
  const auto f16 = with_bias("F16", {0x3C00, 0xC000, 0x0001});
  EXPECT_EQ(f16.blocks[0].b1[0], 1.0);
  EXPECT_EQ(f16.blocks[0].b1[1], -2.0);
  EXPECT_EQ(f16.blocks[0].b1[2], std::ldexp(1.0, -24));
  const auto bf16 = with_bias("BF16", {0x3F80, 0x4049, 0x0000});  // 1, 3.140625, 0
  EXPECT_EQ(bf16.blocks[0].b1[0], 1.0);
  EXPECT_EQ(bf16.blocks[0].b1[1], 3.140625);
  EXPECT_EQ(bf16.blocks[0].b1[2], 0.0);
  EXPECT_ERROR(with_bias("F16", {0x7C00, 0, 0}), "linear1.bias: entry 0 is infinite");
  EXPECT_EQ(f16.architecture, Architecture::torch_encoder);
  EXPECT_EQ(f16.blocks[0].norm, NormPlacement::post);
  EXPECT_EQ(f16.blocks[0].activation, Activation::relu);
  EXPECT_TRUE(f16.word_embeddings.size() == 0);
  EXPECT_ERROR(embed(f16, {1}), "input_ids: the model (torch_encoder) has no word embeddings");

  meta.erase("nhead");
  EXPECT_ERROR(detail::parse_transformer<double>(std::nullopt, "", safetensors(tensors, meta),
                                                 "enc.safetensors"),
               "enc.safetensors: __metadata__: nhead: missing");
}

}  // namespace
}  // namespace measattn
