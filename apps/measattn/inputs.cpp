#include "inputs.hpp"

#include "measattn/error.hpp"
#include "measattn/io.hpp"

namespace measattn::cli {

template <class Scalar>
std::unique_ptr<Measure<Scalar>> read_token_measure(const std::string& tokens_path,
                                                    const std::string& weights_path,
                                                    const MeasureFiles& names) {
  Matrix<Scalar> tokens = read_npy_matrix<Scalar>(tokens_path, names.atoms);
  if (tokens.rows() == 0) {
    throw invalid_argument(names.atoms + ": " + tokens_path + ": no " + names.noun + " (0 rows)");
  }
  if (names.standalone && tokens.cols() == 0) {
    throw invalid_argument(names.atoms + ": " + tokens_path + ": " + names.noun +
                           " of dimension 0");
  }
  Vector<Scalar> weights = Vector<Scalar>::Ones(tokens.rows());
  if (!weights_path.empty()) {
    weights = read_npy_vector<Scalar>(weights_path, names.weights);
    if (weights.size() != tokens.rows()) {
      throw invalid_argument(names.weights + ": " + weights_path + ": " +
                             std::to_string(weights.size()) + " weights for " +
                             std::to_string(tokens.rows()) + " " + names.noun +
                             (names.standalone ? " in " + tokens_path : std::string()));
    }
  }
  if (!names.standalone) {
    // The measure's fields (atoms, weights) map to --tokens / --weights in
    // main() (flags.hpp: token_fields).
    return std::make_unique<Measure<Scalar>>(std::move(tokens), std::move(weights));
  }
  try {
    return std::make_unique<Measure<Scalar>>(std::move(tokens), std::move(weights));
  } catch (const invalid_argument& e) {
    const std::string what = e.what();
    if (what.rfind("weights", 0) == 0 && !weights_path.empty())
      throw invalid_argument(names.weights + ": " + weights_path + ": " + what);
    throw invalid_argument(names.atoms + ": " + tokens_path + ": " + what);
  }
}

template std::unique_ptr<Measure<float>> read_token_measure(const std::string&, const std::string&,
                                                            const MeasureFiles&);
template std::unique_ptr<Measure<double>> read_token_measure(const std::string&, const std::string&,
                                                             const MeasureFiles&);

}  // namespace measattn::cli
