// Pretrained checkpoints (measattn/transformer.hpp, docs/transformers.md):
// config.json and model.safetensors of a Hugging Face BERT or GPT-2, or a
// PyTorch nn.TransformerEncoder(Layer) state dict. Everything is checked
// before anything is computed: the config's fields (types, ranges, unsupported
// features), every tensor the family needs (present, floating-point, the shape
// the config implies, finite), the number of layers against the config, and
// no unexpected tensor inside the backbone.
#include "transformer/checkpoint.hpp"

#include <sys/stat.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "io/input.hpp"
#include "io/safetensors.hpp"
#include "measattn/attention.hpp"
#include "measattn/error.hpp"
#include "measattn/io.hpp"
#include "measattn/transformer.hpp"

namespace measattn {

namespace {

using json = nlohmann::json;
using detail::printable_name;
using detail::SafetensorsFile;

std::string shape_text(const std::vector<std::int64_t>& s) {
  return detail::safetensors_shape_text(s);
}

using detail::one_line;

// ---- the configuration ---------------------------------------------------------

// config.json (typed JSON values) or a state dict's __metadata__ (strings).
class Config {
 public:
  Config(json values, std::string name, bool strings)
      : j_(std::move(values)), name_(std::move(name)), strings_(strings) {}

  [[noreturn]] void fail(const std::string& field, const std::string& why) const {
    throw invalid_argument(name_ + ": " + field + ": " + why);
  }
  const std::string& name() const { return name_; }

  bool has(const std::string& field) const {
    const auto it = j_.find(field);
    return it != j_.end() && !it->is_null();
  }

  std::string string(const std::string& field, const std::optional<std::string>& fallback) const {
    const json* v = find(field, fallback.has_value());
    if (!v) return *fallback;
    if (!v->is_string()) fail(field, "expected a string, got " + kind(*v));
    return v->get<std::string>();
  }

  // An integer in [lo, 2^31).
  Index integer(const std::string& field, std::optional<Index> fallback, Index lo = 1) const {
    const json* v = find(field, fallback.has_value());
    if (!v) return *fallback;
    std::int64_t x = 0;
    if (v->is_number_integer()) {
      x = v->is_number_unsigned() && v->get<std::uint64_t>() > (std::uint64_t{1} << 40)
              ? (std::int64_t{1} << 40)
              : v->get<std::int64_t>();
    } else if (strings_ && v->is_string() && parse_decimal(v->get<std::string>(), x)) {
    } else {
      fail(field, "expected an integer, got " + shown(*v));
    }
    if (x < lo || x >= (std::int64_t{1} << 31)) {
      fail(field,
           "expected an integer in [" + std::to_string(lo) + ", 2^31), got " + std::to_string(x));
    }
    return static_cast<Index>(x);
  }

  double number(const std::string& field, std::optional<double> fallback) const {
    const json* v = find(field, fallback.has_value());
    if (!v) return *fallback;
    double x = 0;
    if (v->is_number()) {
      x = v->get<double>();
    } else if (strings_ && v->is_string()) {
      const std::string& t = v->get_ref<const std::string&>();
      char* end = nullptr;
      x = t.empty() ? NAN : std::strtod(t.c_str(), &end);
      if (t.empty() || end != t.c_str() + t.size())
        fail(field, "expected a number, got " + shown(*v));
    } else {
      fail(field, "expected a number, got " + shown(*v));
    }
    if (!std::isfinite(x)) fail(field, "expected a finite number, got " + shown(*v));
    return x;
  }

  bool boolean(const std::string& field, bool fallback) const {
    const json* v = find(field, true);
    if (!v) return fallback;
    if (v->is_boolean()) return v->get<bool>();
    if (strings_ && v->is_string()) {
      const std::string& t = v->get_ref<const std::string&>();
      if (t == "true" || t == "True" || t == "1") return true;
      if (t == "false" || t == "False" || t == "0") return false;
    }
    fail(field, "expected true or false, got " + shown(*v));
  }

 private:
  const json* find(const std::string& field, bool optional) const {
    const auto it = j_.find(field);
    if (it == j_.end() || it->is_null()) {
      if (optional) return nullptr;
      fail(field, "missing");
    }
    return &*it;
  }
  static std::string kind(const json& v) { return std::string(v.type_name()); }
  static std::string shown(const json& v) {
    if (v.is_string()) return "'" + printable_name(v.get<std::string>()) + "'";
    if (v.is_number() || v.is_boolean()) return one_line(v.dump());
    return kind(v);
  }
  static bool parse_decimal(const std::string& s, std::int64_t& out) {
    if (s.empty() || s.size() > 12) return false;
    std::int64_t v = 0;
    for (char c : s) {
      if (c < '0' || c > '9') return false;
      v = v * 10 + (c - '0');
    }
    out = v;
    return true;
  }

  json j_;
  std::string name_;
  bool strings_;
};

json parse_config_json(const std::string& text, const std::string& name) {
  if (text.size() > detail::kMaxConfigBytes) {
    throw invalid_argument(name + ": larger than " + std::to_string(detail::kMaxConfigBytes) +
                           " bytes (not a model configuration)");
  }
  if (const auto nul = text.find('\0'); nul != std::string::npos) {
    throw invalid_argument(name + ": not valid JSON: a NUL byte at offset " + std::to_string(nul));
  }
  json j;
  try {
    j = detail::parse_bounded_json(text, detail::kMaxConfigDepth, detail::kMaxConfigValues);
  } catch (const json::exception& e) {
    throw invalid_argument(name + ": not valid JSON: " + one_line(e.what()));
  } catch (const invalid_argument& e) {
    throw invalid_argument(name + ": not valid: " + e.what());
  }
  if (!j.is_object()) throw invalid_argument(name + ": not a JSON object");
  return j;
}

// ---- the weights -----------------------------------------------------------------

// The tensors of one checkpoint under a backbone prefix; records what was used.
template <class Scalar>
class Weights {
 public:
  Weights(const SafetensorsFile& file, std::string prefix)
      : file_(file), prefix_(std::move(prefix)) {}

  const std::string& prefix() const { return prefix_; }
  bool has(const std::string& name) const { return file_.tensors().count(prefix_ + name) > 0; }
  [[noreturn]] void fail(const std::string& why) const { file_.fail(why); }

  const detail::SafetensorsTensor& tensor(const std::string& name) {
    const std::string key = prefix_ + name;
    const auto it = file_.tensors().find(key);
    if (it == file_.tensors().end()) fail(key + ": missing tensor");
    used_.insert(key);
    if (!it->second.is_float()) {
      fail(key + ": dtype " + it->second.dtype +
           " is not a floating-point dtype (expected F16, BF16, F32 or F64)");
    }
    return it->second;
  }

  void expect(const std::string& name, const std::vector<std::int64_t>& want,
              const std::string& symbolic) {
    const auto& t = tensor(name);
    if (t.shape != want) {
      fail(prefix_ + name + ": expected shape " + symbolic + " = " + shape_text(want) + ", found " +
           shape_text(t.shape));
    }
  }

  // A [rows, cols] tensor as a matrix.
  Matrix<Scalar> matrix(const std::string& name, Index rows, Index cols,
                        const std::string& symbolic) {
    expect(name, {rows, cols}, symbolic);
    const auto v = file_.values<Scalar>(prefix_ + name);
    Matrix<Scalar> m(rows, cols);
    std::copy(v.begin(), v.end(), m.data());
    return m;
  }
  Vector<Scalar> vector(const std::string& name, Index n, const std::string& symbolic) {
    expect(name, {n}, symbolic);
    const auto v = file_.values<Scalar>(prefix_ + name);
    Vector<Scalar> out(n);
    std::copy(v.begin(), v.end(), out.data());
    return out;
  }
  LayerNorm<Scalar> layer_norm(const std::string& base, Index d, Scalar eps,
                               const std::string& symbolic) {
    LayerNorm<Scalar> ln;
    ln.gamma = vector(base + ".weight", d, symbolic);
    ln.beta = vector(base + ".bias", d, symbolic);
    ln.eps = eps;
    return ln;
  }

  bool used(const std::string& key) const { return used_.count(key) > 0; }

  // The largest N + 1 over tensors named prefix + `stem` + N + "." (0 if none).
  Index count_layers(const std::string& stem) const {
    const std::string head = prefix_ + stem;
    Index count = 0;
    for (const auto& [key, t] : file_.tensors()) {
      if (key.compare(0, head.size(), head) != 0) continue;
      const auto dot = key.find('.', head.size());
      const std::string number = key.substr(head.size(), dot - head.size());
      if (number.empty() || number.size() > 6 || dot == std::string::npos) continue;
      bool digits = true;
      for (char c : number) digits = digits && c >= '0' && c <= '9';
      if (!digits) continue;
      count = std::max<Index>(count, std::stol(number) + 1);
    }
    return count;
  }

 private:
  const SafetensorsFile& file_;
  std::string prefix_;
  std::set<std::string> used_;
};

std::string dims(Index a) { return std::to_string(a); }

// The layers present must be those the config declares.
template <class Scalar>
void check_layer_count(const Weights<Scalar>& w, const Config& config, const std::string& field,
                       Index declared, const std::string& stem) {
  const Index present = w.count_layers(stem);
  if (present > declared) {
    config.fail(field, dims(declared) + " disagrees with the weights, which hold layers up to " +
                           w.prefix() + stem + dims(present - 1));
  }
  if (present < declared) {
    w.fail(w.prefix() + stem + dims(present) + ": missing (" + field + " is " + dims(declared) +
           " in " + config.name() + ")");
  }
}

// Every tensor inside the backbone must have been used; tensors of heads and
// buffers are ignored.
template <class Scalar>
void check_unused(const SafetensorsFile& file, const Weights<Scalar>& w,
                  const std::vector<std::string>& ignored_prefixes,
                  const std::vector<std::string>& ignored_suffixes, const std::string& family) {
  for (const auto& [key, t] : file.tensors()) {
    if (w.used(key)) continue;
    if (!w.prefix().empty() && key.compare(0, w.prefix().size(), w.prefix()) != 0) continue;
    const std::string name = key.substr(w.prefix().size());
    bool ignore = false;
    for (const auto& p : ignored_prefixes) ignore = ignore || name.compare(0, p.size(), p) == 0;
    for (const auto& s : ignored_suffixes) {
      ignore = ignore ||
               (name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0);
    }
    if (!ignore) {
      file.fail(printable_name(key) + ": unexpected tensor (not part of a " + family +
                " checkpoint; measattn would ignore weights the model uses)");
    }
  }
}

void check_heads(const Config& c, const std::string& heads_field, Index heads,
                 const std::string& dim_field, Index d) {
  if (d % heads != 0) {
    c.fail(heads_field, dims(heads) + " does not divide " + dim_field + " = " + dims(d));
  }
}

template <class Scalar>
Model<Scalar> attention_from(Index heads, Matrix<Scalar> wq, Matrix<Scalar> wk, Matrix<Scalar> wv,
                             Vector<Scalar> bq, Vector<Scalar> bk, Vector<Scalar> bv,
                             Matrix<Scalar> wo, Vector<Scalar> bo) {
  Model<Scalar> m;
  m.num_heads = heads;
  m.potential = Potential::dot;
  m.w_q = std::move(wq);
  m.w_k = std::move(wk);
  m.w_v = std::move(wv);
  m.b_q = std::move(bq);
  m.b_k = std::move(bk);
  m.b_v = std::move(bv);
  m.w_o = std::move(wo);
  m.b_o = std::move(bo);
  return m;
}

// ---- BERT ------------------------------------------------------------------------

template <class Scalar>
Transformer<Scalar> build_bert(const Config& c, const SafetensorsFile& file) {
  const Index d = c.integer("hidden_size", 768);
  const Index heads = c.integer("num_attention_heads", 12);
  const Index layers = c.integer("num_hidden_layers", 12);
  const Index ff = c.integer("intermediate_size", 3072);
  const Index vocab = c.integer("vocab_size", 30522);
  const Index positions = c.integer("max_position_embeddings", 512);
  const Index types = c.integer("type_vocab_size", 2);
  const Activation act = [&] {
    const std::string a = c.string("hidden_act", "gelu");
    try {
      return parse_activation(a, "hidden_act");
    } catch (const invalid_argument& e) {
      c.fail("hidden_act", e.reason());
    }
  }();
  const double eps = c.number("layer_norm_eps", 1e-12);
  if (!(eps > 0)) c.fail("layer_norm_eps", "must be positive");
  const std::string position_type = c.string("position_embedding_type", "absolute");
  if (position_type != "absolute") {
    c.fail("position_embedding_type", "'" + printable_name(position_type) +
                                          "' is not supported (only absolute position "
                                          "embeddings are)");
  }
  if (c.boolean("is_decoder", false)) {
    c.fail("is_decoder", "a BERT decoder (is_decoder = true) is not supported");
  }
  if (c.boolean("add_cross_attention", false)) {
    c.fail("add_cross_attention", "cross-attention layers are not supported");
  }
  check_heads(c, "num_attention_heads", heads, "hidden_size", d);

  const std::string prefix =
      file.tensors().count("bert.embeddings.word_embeddings.weight") ? "bert." : "";
  Weights<Scalar> w(file, prefix);
  check_layer_count(w, c, "num_hidden_layers", layers, "encoder.layer.");
  Transformer<Scalar> t;
  t.architecture = Architecture::bert;
  t.model_type = "bert";
  const Scalar e = static_cast<Scalar>(eps);
  t.word_embeddings =
      w.matrix("embeddings.word_embeddings.weight", vocab, d, "[vocab_size, hidden_size]");
  t.position_embeddings = w.matrix("embeddings.position_embeddings.weight", positions, d,
                                   "[max_position_embeddings, hidden_size]");
  t.token_type_embeddings = w.matrix("embeddings.token_type_embeddings.weight", types, d,
                                     "[type_vocab_size, hidden_size]");
  t.embedding_norm = w.layer_norm("embeddings.LayerNorm", d, e, "[hidden_size]");
  const std::string dd = "[hidden_size, hidden_size]", dv = "[hidden_size]";
  for (Index l = 0; l < layers; ++l) {
    const std::string p = "encoder.layer." + dims(l) + ".";
    Block<Scalar> b;
    b.norm = NormPlacement::post;
    b.causal = false;
    b.activation = act;
    b.attention =
        attention_from<Scalar>(heads, w.matrix(p + "attention.self.query.weight", d, d, dd),
                               w.matrix(p + "attention.self.key.weight", d, d, dd),
                               w.matrix(p + "attention.self.value.weight", d, d, dd),
                               w.vector(p + "attention.self.query.bias", d, dv),
                               w.vector(p + "attention.self.key.bias", d, dv),
                               w.vector(p + "attention.self.value.bias", d, dv),
                               w.matrix(p + "attention.output.dense.weight", d, d, dd),
                               w.vector(p + "attention.output.dense.bias", d, dv));
    b.ln1 = w.layer_norm(p + "attention.output.LayerNorm", d, e, dv);
    b.w1 = w.matrix(p + "intermediate.dense.weight", ff, d, "[intermediate_size, hidden_size]");
    b.b1 = w.vector(p + "intermediate.dense.bias", ff, "[intermediate_size]");
    b.w2 = w.matrix(p + "output.dense.weight", d, ff, "[hidden_size, intermediate_size]");
    b.b2 = w.vector(p + "output.dense.bias", d, dv);
    b.ln2 = w.layer_norm(p + "output.LayerNorm", d, e, dv);
    t.blocks.push_back(std::move(b));
  }
  check_unused(file, w, {"pooler."}, {"position_ids"}, "BERT");
  return t;
}

// ---- GPT-2 -------------------------------------------------------------------------

template <class Scalar>
Transformer<Scalar> build_gpt2(const Config& c, const SafetensorsFile& file) {
  const Index d = c.integer("n_embd", 768);
  const Index heads = c.integer("n_head", 12);
  const Index layers = c.integer("n_layer", 12);
  const Index positions = c.integer("n_positions", 1024);
  const Index vocab = c.integer("vocab_size", 50257);
  const Index ff = c.has("n_inner") ? c.integer("n_inner", std::nullopt) : 4 * d;
  const Activation act = [&] {
    const std::string a = c.string("activation_function", "gelu_new");
    try {
      return parse_activation(a, "activation_function");
    } catch (const invalid_argument& e) {
      c.fail("activation_function", e.reason());
    }
  }();
  const double eps = c.number("layer_norm_epsilon", 1e-5);
  if (!(eps > 0)) c.fail("layer_norm_epsilon", "must be positive");
  const bool scaled = c.boolean("scale_attn_weights", true);
  if (c.boolean("scale_attn_by_inverse_layer_idx", false)) {
    c.fail("scale_attn_by_inverse_layer_idx", "true is not supported (only the default false)");
  }
  if (c.boolean("reorder_and_upcast_attn", false)) {
    c.fail("reorder_and_upcast_attn", "true is not supported (only the default false)");
  }
  if (c.boolean("add_cross_attention", false)) {
    c.fail("add_cross_attention", "cross-attention layers are not supported");
  }
  check_heads(c, "n_head", heads, "n_embd", d);

  const std::string prefix = file.tensors().count("transformer.wte.weight") ? "transformer." : "";
  Weights<Scalar> w(file, prefix);
  check_layer_count(w, c, "n_layer", layers, "h.");
  Transformer<Scalar> t;
  t.architecture = Architecture::gpt2;
  t.model_type = "gpt2";
  const Scalar e = static_cast<Scalar>(eps);
  t.word_embeddings = w.matrix("wte.weight", vocab, d, "[vocab_size, n_embd]");
  t.position_embeddings = w.matrix("wpe.weight", positions, d, "[n_positions, n_embd]");
  const std::string dv = "[n_embd]";
  for (Index l = 0; l < layers; ++l) {
    const std::string p = "h." + dims(l) + ".";
    Block<Scalar> b;
    b.norm = NormPlacement::pre;
    b.causal = true;
    b.activation = act;
    b.ln1 = w.layer_norm(p + "ln_1", d, e, dv);
    // Conv1D stores [in, out]: the projection is its transpose.
    const Matrix<Scalar> qkv =
        w.matrix(p + "attn.c_attn.weight", d, 3 * d, "[n_embd, 3 n_embd]").transpose();
    const Vector<Scalar> qkv_b = w.vector(p + "attn.c_attn.bias", 3 * d, "[3 n_embd]");
    b.attention = attention_from<Scalar>(
        heads, qkv.middleRows(0, d), qkv.middleRows(d, d), qkv.middleRows(2 * d, d),
        qkv_b.segment(0, d), qkv_b.segment(d, d), qkv_b.segment(2 * d, d),
        w.matrix(p + "attn.c_proj.weight", d, d, "[n_embd, n_embd]").transpose(),
        w.vector(p + "attn.c_proj.bias", d, dv));
    if (!scaled) b.attention.scale = Scalar(1);
    b.ln2 = w.layer_norm(p + "ln_2", d, e, dv);
    b.w1 = w.matrix(p + "mlp.c_fc.weight", d, ff, "[n_embd, n_inner]").transpose();
    b.b1 = w.vector(p + "mlp.c_fc.bias", ff, "[n_inner]");
    b.w2 = w.matrix(p + "mlp.c_proj.weight", ff, d, "[n_inner, n_embd]").transpose();
    b.b2 = w.vector(p + "mlp.c_proj.bias", d, dv);
    t.blocks.push_back(std::move(b));
  }
  t.final_norm = w.layer_norm("ln_f", d, e, dv);
  check_unused(file, w, {}, {".attn.bias", ".attn.masked_bias"}, "GPT-2");
  return t;
}

// ---- torch.nn.TransformerEncoder(Layer) --------------------------------------------

template <class Scalar>
Transformer<Scalar> build_torch_encoder(const Config& c, const SafetensorsFile& file) {
  const Index d = c.integer("d_model", std::nullopt);
  const Index heads = c.integer("nhead", std::nullopt);
  const Index ff = c.integer("dim_feedforward", 2048);
  const bool norm_first = c.boolean("norm_first", false);
  const Activation act = [&] {
    const std::string a = c.string("activation", "relu");
    if (a != "relu" && a != "gelu") {
      c.fail("activation", "'" + printable_name(a) +
                               "' is not supported (torch's encoder layers use relu or gelu)");
    }
    return parse_activation(a, "activation");
  }();
  const double eps = c.number("layer_norm_eps", 1e-5);
  if (!(eps > 0)) c.fail("layer_norm_eps", "must be positive");
  check_heads(c, "nhead", heads, "d_model", d);

  Weights<Scalar> w(file, "");
  const bool stacked = w.count_layers("layers.") > 0;
  Index layers = 1;
  if (stacked) {
    layers =
        c.has("num_layers") ? c.integer("num_layers", std::nullopt) : w.count_layers("layers.");
    check_layer_count(w, c, "num_layers", layers, "layers.");
  } else if (c.has("num_layers") && c.integer("num_layers", std::nullopt) != 1) {
    c.fail("num_layers", dims(c.integer("num_layers", std::nullopt)) +
                             " disagrees with the weights, a single layer without the "
                             "'layers.N.' prefix");
  }
  Transformer<Scalar> t;
  t.architecture = Architecture::torch_encoder;
  t.model_type = "torch_encoder";
  const Scalar e = static_cast<Scalar>(eps);
  const std::string dv = "[d_model]";
  for (Index l = 0; l < layers; ++l) {
    const std::string p = stacked ? "layers." + dims(l) + "." : "";
    const Matrix<Scalar> in =
        w.matrix(p + "self_attn.in_proj_weight", 3 * d, d, "[3 d_model, d_model]");
    Vector<Scalar> in_b;
    if (w.has(p + "self_attn.in_proj_bias")) {
      in_b = w.vector(p + "self_attn.in_proj_bias", 3 * d, "[3 d_model]");
    }
    Vector<Scalar> out_b;
    if (w.has(p + "self_attn.out_proj.bias")) {
      out_b = w.vector(p + "self_attn.out_proj.bias", d, dv);
    }
    Block<Scalar> b;
    b.norm = norm_first ? NormPlacement::pre : NormPlacement::post;
    b.causal = false;
    b.activation = act;
    b.attention = attention_from<Scalar>(
        heads, in.middleRows(0, d), in.middleRows(d, d), in.middleRows(2 * d, d),
        in_b.size() ? Vector<Scalar>(in_b.segment(0, d)) : Vector<Scalar>(),
        in_b.size() ? Vector<Scalar>(in_b.segment(d, d)) : Vector<Scalar>(),
        in_b.size() ? Vector<Scalar>(in_b.segment(2 * d, d)) : Vector<Scalar>(),
        w.matrix(p + "self_attn.out_proj.weight", d, d, "[d_model, d_model]"), out_b);
    b.w1 = w.matrix(p + "linear1.weight", ff, d, "[dim_feedforward, d_model]");
    b.b1 = w.vector(p + "linear1.bias", ff, "[dim_feedforward]");
    b.w2 = w.matrix(p + "linear2.weight", d, ff, "[d_model, dim_feedforward]");
    b.b2 = w.vector(p + "linear2.bias", d, dv);
    b.ln1 = w.layer_norm(p + "norm1", d, e, dv);
    b.ln2 = w.layer_norm(p + "norm2", d, e, dv);
    t.blocks.push_back(std::move(b));
  }
  if (stacked && (w.has("norm.weight") || w.has("norm.bias"))) {
    t.final_norm = w.layer_norm("norm", d, e, dv);
  }
  check_unused(file, w, {}, {}, "torch TransformerEncoder");
  return t;
}

template <class Scalar>
Transformer<Scalar> build(const std::optional<Config>& config, const SafetensorsFile& file) {
  Transformer<Scalar> t;
  if (!config) {
    // A bare state dict: its __metadata__ is the configuration.
    json meta = json::object();
    for (const auto& [k, v] : file.metadata()) meta[k] = v;
    const Config c(std::move(meta), file.name() + ": __metadata__", true);
    const std::string type = c.string("model_type", "torch_encoder");
    if (type != "torch_encoder") {
      c.fail("model_type", "'" + printable_name(type) +
                               "': a single safetensors file must be a torch_encoder state "
                               "dict (a Hugging Face checkpoint is a directory with "
                               "config.json)");
    }
    t = build_torch_encoder<Scalar>(c, file);
  } else {
    const std::string type = config->string("model_type", std::nullopt);
    if (type == "bert") {
      t = build_bert<Scalar>(*config, file);
    } else if (type == "gpt2") {
      t = build_gpt2<Scalar>(*config, file);
    } else if (type == "torch_encoder") {
      t = build_torch_encoder<Scalar>(*config, file);
    } else {
      config->fail("model_type", "unknown model_type '" + printable_name(type) +
                                     "' (expected bert, gpt2 or torch_encoder)");
    }
  }
  try {
    t.validate();
  } catch (const invalid_argument& e) {
    file.fail(e.what());
  }
  return t;
}

std::optional<Config> make_config(const std::optional<std::string>& text, const std::string& name) {
  if (!text) return std::nullopt;
  return Config(parse_config_json(*text, name), name, false);
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

}  // namespace

namespace detail {

template <class Scalar>
Transformer<Scalar> parse_transformer(const std::optional<std::string>& config_text,
                                      const std::string& config_name,
                                      const std::string& safetensors_bytes,
                                      const std::string& weights_name) {
  const std::optional<Config> config = make_config(config_text, config_name);
  MemorySource src(safetensors_bytes, weights_name);
  const SafetensorsFile file(src, SafetensorsFile::Dtypes::checkpoint);
  return build<Scalar>(config, file);
}

template Transformer<float> parse_transformer<float>(const std::optional<std::string>&,
                                                     const std::string&, const std::string&,
                                                     const std::string&);
template Transformer<double> parse_transformer<double>(const std::optional<std::string>&,
                                                       const std::string&, const std::string&,
                                                       const std::string&);

}  // namespace detail

template <class Scalar>
Transformer<Scalar> load_transformer(const std::string& path) {
  std::optional<std::string> config_text;
  std::string config_name, weights_name;
  if (is_directory(path)) {
    const std::string dir = path.empty() || path.back() == '/' ? path : path + "/";
    config_name = dir + "config.json";
    weights_name = dir + "model.safetensors";
    if (!exists(config_name)) {
      throw invalid_argument(path +
                             ": config.json: missing (a checkpoint directory holds "
                             "config.json and model.safetensors)");
    }
    if (!exists(weights_name)) {
      throw invalid_argument(path +
                             ": model.safetensors: missing (a checkpoint directory holds "
                             "config.json and model.safetensors; sharded or .bin "
                             "checkpoints are not read)");
    }
    config_text = read_file(config_name, detail::kMaxConfigBytes);
  } else {
    if (!exists(path)) {
      throw invalid_argument(path +
                             ": no such file or directory (expected a checkpoint "
                             "directory with config.json and model.safetensors, or a "
                             "torch encoder .safetensors file)");
    }
    weights_name = path;
  }
  const std::optional<Config> config = make_config(config_text, config_name);
  detail::InputFile src(weights_name);
  const SafetensorsFile file(src, SafetensorsFile::Dtypes::checkpoint);
  return build<Scalar>(config, file);
}

template Transformer<float> load_transformer<float>(const std::string&);
template Transformer<double> load_transformer<double>(const std::string&);

}  // namespace measattn
