#include "transformer_summary.hpp"

#include <sstream>

#include "measattn/error.hpp"

namespace measattn::cli {

nlohmann::json summary_json(const TransformerSummary& s) {
  return {{"architecture", s.architecture},
          {"model_type", s.model_type},
          {"layers", s.layers},
          {"heads", s.heads},
          {"dim", s.dim},
          {"head_dim", s.head_dim},
          {"ff_dim", s.ff_dim},
          {"vocab_size", s.vocab_size},
          {"max_positions", s.max_positions},
          {"norm", s.norm},
          {"activation", s.activation},
          {"causal", s.causal},
          {"embedding_norm", s.embedding_norm},
          {"final_norm", s.final_norm},
          {"parameters", s.parameters}};
}

std::string summary_text(const TransformerSummary& s, const std::string& path) {
  std::ostringstream o;
  o << path << "\n";
  o << "  architecture     " << s.architecture << " (model_type " << s.model_type << ")\n";
  o << "  layers           " << s.layers << "\n";
  o << "  heads            " << s.heads << "\n";
  o << "  dimensions       d = " << s.dim << ", head dim = " << s.head_dim
    << ", feed-forward = " << s.ff_dim << "\n";
  o << "  norm placement   " << s.norm << "-LN" << (s.embedding_norm ? ", embedding LayerNorm" : "")
    << (s.final_norm ? ", final LayerNorm" : "") << "\n";
  o << "  activation       " << s.activation << "\n";
  o << "  attention        " << (s.causal ? "causal (token i sees 0..i)" : "bidirectional") << "\n";
  o << "  vocabulary       "
    << (s.vocab_size > 0 ? std::to_string(s.vocab_size) : "none (points in)") << "\n";
  o << "  positions        "
    << (s.max_positions > 0 ? std::to_string(s.max_positions) + " (absolute)" : "none") << "\n";
  o << "  parameters       " << s.parameters << "\n";
  return o.str();
}

template <class Scalar>
Transformer<Scalar> load_checkpoint(const std::string& path, const std::string& flag) {
  try {
    return load_transformer<Scalar>(path);
  } catch (const invalid_argument& e) {
    throw invalid_argument(flag + ": " + e.what());
  }
}

template Transformer<float> load_checkpoint<float>(const std::string&, const std::string&);
template Transformer<double> load_checkpoint<double>(const std::string&, const std::string&);

}  // namespace measattn::cli
