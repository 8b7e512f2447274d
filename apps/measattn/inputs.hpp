// Reading the token measure every subcommand takes: --tokens (n x d atoms,
// .npy) and optional --weights (n, .npy; uniform when absent).
#pragma once

#include <memory>
#include <string>

#include "measattn/measure.hpp"

namespace measattn::cli {

/// The measure sum_i w_i delta_{x_i} of the files. Every error names the flag
/// and the file: "--tokens: X.npy: ..." or "--weights: w.npy: ...".
template <class Scalar>
std::unique_ptr<Measure<Scalar>> read_token_measure(const std::string& tokens_path,
                                                    const std::string& weights_path);

}  // namespace measattn::cli
