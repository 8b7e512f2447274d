// A checkpoint's architecture as the CLI prints it (inspect, forward's
// summary.json): one JSON object whose keys are TransformerSummary's fields
// (the keys of Python's Transformer.summary()), and the same as text.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "measattn/transformer.hpp"

namespace measattn::cli {

nlohmann::json summary_json(const TransformerSummary& s);
std::string summary_text(const TransformerSummary& s, const std::string& path);

/// Loads a checkpoint for the CLI: errors become "<flag>: <path>: ...".
template <class Scalar>
Transformer<Scalar> load_checkpoint(const std::string& path, const std::string& flag);

}  // namespace measattn::cli
