// Reading the token measure every subcommand takes: --tokens (n x d atoms,
// .npy) and optional --weights (n, .npy; uniform when absent).
#pragma once

#include <memory>
#include <string>

#include "measattn/measure.hpp"

namespace measattn::cli {

/// How the files of a measure are named in messages.
struct MeasureFiles {
  std::string atoms = "--tokens";     ///< names the atoms file
  std::string weights = "--weights";  ///< names the weights file
  std::string noun = "tokens";        ///< "no tokens (0 rows)", "3 weights for 4 tokens"
  /// The subcommand has no field table for the measure (wasserstein's A, B):
  /// the Measure's own errors and dimension 0 are reported here, with flag and
  /// file, and a weight count mismatch names the atoms file too.
  bool standalone = false;
};

/// The measure sum_i w_i delta_{x_i} of the files. Every error names the flag
/// and the file: "--tokens: X.npy: ..." or "--weights: w.npy: ...".
template <class Scalar>
std::unique_ptr<Measure<Scalar>> read_token_measure(const std::string& tokens_path,
                                                    const std::string& weights_path,
                                                    const MeasureFiles& names = {});

}  // namespace measattn::cli
