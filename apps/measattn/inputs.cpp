#include "inputs.hpp"

#include "measattn/error.hpp"
#include "measattn/io.hpp"

namespace measattn::cli {

template <class Scalar>
std::unique_ptr<Measure<Scalar>> read_token_measure(const std::string& tokens_path,
                                                    const std::string& weights_path) {
  Matrix<Scalar> tokens = read_npy_matrix<Scalar>(tokens_path, "--tokens");
  if (tokens.rows() == 0) {
    throw invalid_argument("--tokens: " + tokens_path + ": no tokens (0 rows)");
  }
  Vector<Scalar> weights = Vector<Scalar>::Ones(tokens.rows());
  if (!weights_path.empty()) {
    weights = read_npy_vector<Scalar>(weights_path, "--weights");
    if (weights.size() != tokens.rows()) {
      throw invalid_argument("--weights: " + weights_path + ": " + std::to_string(weights.size()) +
                             " weights for " + std::to_string(tokens.rows()) + " tokens");
    }
  }
  // The measure's fields (atoms, weights) map to --tokens / --weights in
  // main() (flags.hpp: token_fields).
  return std::make_unique<Measure<Scalar>>(std::move(tokens), std::move(weights));
}

template std::unique_ptr<Measure<float>> read_token_measure(const std::string&, const std::string&);
template std::unique_ptr<Measure<double>> read_token_measure(const std::string&,
                                                             const std::string&);

}  // namespace measattn::cli
