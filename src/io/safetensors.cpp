// safetensors models: an 8-byte little-endian header length N, N bytes of JSON
// ({"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
// {string: string}}), then the tensor bytes, offsets relative to the end of the
// header. Tensor names are those of PyTorch's nn.MultiheadAttention state dict.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "io/input.hpp"
#include "io/safetensors.hpp"
#include "measattn/error.hpp"
#include "measattn/io.hpp"

namespace measattn {

namespace {

using json = nlohmann::json;
using detail::SafetensorsFile;

std::string printable(const std::string& s) { return detail::printable_name(s); }
std::string shape_text(const std::vector<std::int64_t>& shape) {
  return detail::safetensors_shape_text(shape);
}

// Strict "positive decimal integer".
bool parse_positive_int(const std::string& s, Index& out) {
  if (s.empty() || s.size() > 9) return false;
  Index v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  out = v;
  return v > 0;
}

template <class Scalar>
Model<Scalar> build_model(const SafetensorsFile& file) {
  const auto& tensors = file.tensors();
  const auto& meta = file.metadata();
  std::set<std::string> used;
  auto has = [&](const std::string& k) { return tensors.count(k) > 0; };
  auto shape_of = [&](const std::string& k) -> const std::vector<std::int64_t>& {
    used.insert(k);
    return tensors.at(k).shape;
  };
  auto expect_shape = [&](const std::string& k, const std::string& symbolic,
                          const std::vector<std::int64_t>& want) {
    const auto& got = shape_of(k);
    if (got != want) {
      file.fail(k + ": expected shape " + symbolic + " = " + shape_text(want) + ", got " +
                shape_text(got));
    }
  };
  auto matrix = [&](const std::string& k, Index rows, Index cols, Index row0 = 0) {
    const auto v = file.values<Scalar>(k);
    Matrix<Scalar> m(rows, cols);
    std::copy_n(v.begin() + row0 * cols, rows * cols, m.data());
    return m;
  };
  auto vector = [&](const std::string& k, Index n, Index i0 = 0) {
    const auto v = file.values<Scalar>(k);
    Vector<Scalar> out(n);
    std::copy_n(v.begin() + i0, n, out.data());
    return out;
  };

  Model<Scalar> model;
  // num_heads, potential, scale (strings, as safetensors metadata always are).
  const auto heads = meta.find("num_heads");
  if (heads == meta.end()) file.fail("__metadata__: missing num_heads");
  if (!parse_positive_int(heads->second, model.num_heads)) {
    file.fail("__metadata__.num_heads: expected a positive integer, got '" +
              printable(heads->second) + "'");
  }
  if (const auto p = meta.find("potential"); p != meta.end()) {
    if (p->second == "dot" || p->second == "l2" || p->second == "cosine") {
      model.potential = parse_potential(p->second);
    } else {
      file.fail("__metadata__.potential: expected 'dot', 'l2' or 'cosine', got '" +
                printable(p->second) + "'");
    }
  }
  if (const auto s = meta.find("scale"); s != meta.end()) {
    const std::string& text = s->second;
    char* end = nullptr;
    const double v = text.empty() ? NAN : std::strtod(text.c_str(), &end);
    if (text.empty() || end != text.c_str() + text.size() || !std::isfinite(v) || v < 0 ||
        !std::isfinite(static_cast<Scalar>(v))) {
      file.fail("__metadata__.scale: expected a finite number >= 0 (0 = sqrt(head_dim)), got '" +
                printable(text) + "'");
    }
    model.scale = static_cast<Scalar>(v);
  }

  const bool packed = has("in_proj_weight");
  const bool separate = has("q_proj_weight") || has("k_proj_weight") || has("v_proj_weight");
  if (packed && separate) {
    file.fail("in_proj_weight and q_proj_weight/k_proj_weight/v_proj_weight are both present");
  }
  Index e = 0;
  if (packed) {
    const auto& s = shape_of("in_proj_weight");
    if (s.size() != 2) {
      file.fail("in_proj_weight: expected shape [3E, E], got " + shape_text(s));
    }
    e = (s[0] % 3 == 0 && s[0] > 0) ? s[0] / 3 : s[1];
    if (e == 0)
      file.fail("in_proj_weight: expected shape [3E, E] with E > 0, got " + shape_text(s));
    expect_shape("in_proj_weight", "[3E, E]", {3 * e, e});
    model.w_q = matrix("in_proj_weight", e, e, 0);
    model.w_k = matrix("in_proj_weight", e, e, e);
    model.w_v = matrix("in_proj_weight", e, e, 2 * e);
  } else if (separate) {
    for (const char* k : {"q_proj_weight", "k_proj_weight", "v_proj_weight"}) {
      if (!has(k)) file.fail(std::string("missing tensor ") + k);
    }
    const auto& sq = shape_of("q_proj_weight");
    if (sq.size() != 2 || sq[0] == 0 || sq[1] == 0) {
      file.fail("q_proj_weight: expected shape [E, E] (or [E, query_dim]) with E > 0, got " +
                shape_text(sq));
    }
    e = sq[0];
    const Index dq = sq[1];
    const auto& sk = shape_of("k_proj_weight");
    if (sk.size() != 2 || sk[0] != e || sk[1] == 0) {
      file.fail("k_proj_weight: expected shape [E, kdim] = [" + std::to_string(e) +
                ", kdim] with kdim > 0, got " + shape_text(sk));
    }
    const Index dkv = sk[1];
    const auto& sv = shape_of("v_proj_weight");
    if (sv.size() != 2 || sv[0] != e) {
      file.fail("v_proj_weight: expected shape [E, vdim] = [" + std::to_string(e) +
                ", vdim], got " + shape_text(sv));
    }
    if (sv[1] != dkv) {
      file.fail("v_proj_weight: vdim " + std::to_string(sv[1]) + " differs from kdim " +
                std::to_string(dkv) +
                " (k_proj_weight columns); measattn needs keys and values from the same tokens");
    }
    model.w_q = matrix("q_proj_weight", e, dq);
    model.w_k = matrix("k_proj_weight", e, dkv);
    model.w_v = matrix("v_proj_weight", e, dkv);
  } else {
    file.fail("missing tensor in_proj_weight (or q_proj_weight, k_proj_weight, v_proj_weight)");
  }
  if (has("in_proj_bias")) {
    expect_shape("in_proj_bias", "[3E]", {3 * e});
    model.b_q = vector("in_proj_bias", e, 0);
    model.b_k = vector("in_proj_bias", e, e);
    model.b_v = vector("in_proj_bias", e, 2 * e);
  }
  if (!has("out_proj.weight")) file.fail("missing tensor out_proj.weight");
  const auto& so = shape_of("out_proj.weight");
  if (so.size() != 2 || so[1] != e || so[0] == 0) {
    file.fail("out_proj.weight: expected shape [E_out, E] = [E_out, " + std::to_string(e) +
              "] with E_out > 0, got " + shape_text(so));
  }
  const Index dout = so[0];
  model.w_o = matrix("out_proj.weight", dout, e);
  if (has("out_proj.bias")) {
    expect_shape("out_proj.bias", "[E_out]", {dout});
    model.b_o = vector("out_proj.bias", dout);
  }
  for (const auto& [k, t] : tensors) {
    if (!used.count(k)) {
      file.fail("unexpected tensor '" + printable(k) +
                "' (an nn.MultiheadAttention state dict without add_bias_kv is expected)");
    }
  }
  if (e % model.num_heads != 0) {
    file.fail("__metadata__.num_heads: " + std::to_string(model.num_heads) +
              " does not divide the embedding dimension E = " + std::to_string(e));
  }
  try {
    model.validate();
  } catch (const invalid_argument& err) {
    file.fail(err.what());
  }
  return model;
}

template <class T>
void append_le(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.append(b, sizeof(T));
}

std::string format_double(double v) {
  std::ostringstream s;
  s.imbue(std::locale::classic());
  s.precision(17);
  s << v;
  return s.str();
}

}  // namespace

template <class Scalar>
Model<Scalar> parse_model(const std::string& bytes, const std::string& name) {
  detail::MemorySource src(bytes, name);
  const SafetensorsFile file(src);
  return build_model<Scalar>(file);
}

template <class Scalar>
Model<Scalar> load_model(const std::string& path) {
  detail::InputFile src(path);
  const SafetensorsFile file(src);
  return build_model<Scalar>(file);
}

template <class Scalar>
void save_model(const std::string& path, const Model<Scalar>& model, DType dtype) {
  if (model.potential == Potential::custom) {
    throw invalid_argument(path + ": a model with a custom potential cannot be saved");
  }
  try {
    model.validate();
  } catch (const invalid_argument& err) {
    throw invalid_argument(path + ": " + err.what());
  }
  const Index e = model.embed_dim();
  // name -> (shape, values in C order)
  std::vector<std::pair<std::string, std::pair<std::vector<std::int64_t>, std::vector<double>>>>
      tensors;
  auto add_matrix = [&](const std::string& k, const std::vector<const Matrix<Scalar>*>& blocks) {
    std::vector<double> v;
    Index rows = 0;
    const Index cols = blocks.front()->cols();
    for (const auto* m : blocks) {
      rows += m->rows();
      v.insert(v.end(), m->data(), m->data() + m->size());
    }
    tensors.push_back({k, {{rows, cols}, std::move(v)}});
  };
  auto bias_or_zero = [&](const Vector<Scalar>& b, Index n) {
    return b.size() == 0 ? Vector<Scalar>::Zero(n).eval() : b;
  };
  if (model.query_dim() == e && model.key_dim() == e) {
    add_matrix("in_proj_weight", {&model.w_q, &model.w_k, &model.w_v});
  } else {
    add_matrix("q_proj_weight", {&model.w_q});
    add_matrix("k_proj_weight", {&model.w_k});
    add_matrix("v_proj_weight", {&model.w_v});
  }
  if (model.b_q.size() || model.b_k.size() || model.b_v.size()) {
    std::vector<double> v;
    for (const Vector<Scalar>& b :
         {bias_or_zero(model.b_q, e), bias_or_zero(model.b_k, e), bias_or_zero(model.b_v, e)}) {
      v.insert(v.end(), b.data(), b.data() + b.size());
    }
    tensors.push_back({"in_proj_bias", {{3 * e}, std::move(v)}});
  }
  add_matrix("out_proj.weight", {&model.w_o});
  if (model.b_o.size()) {
    tensors.push_back(
        {"out_proj.bias",
         {{model.out_dim()}, {model.b_o.data(), model.b_o.data() + model.b_o.size()}}});
  }

  json header = json::object();
  json meta = json::object();
  meta["num_heads"] = std::to_string(model.num_heads);
  meta["potential"] = to_string(model.potential);  // custom was refused above
  if (model.scale > 0) meta["scale"] = format_double(static_cast<double>(model.scale));
  meta["format"] = "pt";
  header["__metadata__"] = meta;
  std::string data;
  for (const auto& [k, t] : tensors) {
    const std::uint64_t begin = data.size();
    for (double v : t.second) {
      if (dtype == DType::f32) {
        const float f = static_cast<float>(v);
        if (!std::isfinite(f)) {
          throw invalid_argument(path + ": " + k + ": a value overflows float32");
        }
        append_le(data, f);
      } else {
        append_le(data, v);
      }
    }
    header[k] = {{"dtype", dtype == DType::f32 ? "F32" : "F64"},
                 {"shape", t.first},
                 {"data_offsets", {begin, static_cast<std::uint64_t>(data.size())}}};
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out;
  out.reserve(8 + text.size() + data.size());
  append_le(out, static_cast<std::uint64_t>(text.size()));
  out += text;
  out += data;
  write_file_atomic(path, out);
}

template Model<float> parse_model<float>(const std::string&, const std::string&);
template Model<double> parse_model<double>(const std::string&, const std::string&);
template Model<float> load_model<float>(const std::string&);
template Model<double> load_model<double>(const std::string&);
template void save_model<float>(const std::string&, const Model<float>&, DType);
template void save_model<double>(const std::string&, const Model<double>&, DType);

}  // namespace measattn
