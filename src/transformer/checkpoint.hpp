// The checkpoint importer's in-memory entry point (internal: for the fuzzer
// and the tests). load_transformer reads the files and calls it.
#pragma once

#include <optional>
#include <string>

#include "measattn/transformer.hpp"

namespace measattn::detail {

/// Limits on config.json: its size, nesting depth and number of JSON values.
constexpr std::uint64_t kMaxConfigBytes = 16u << 20;
constexpr int kMaxConfigDepth = 32;
constexpr std::uint64_t kMaxConfigValues = 1u << 20;

/// Builds a Transformer from the text of config.json (named `config_name` in
/// messages; std::nullopt for a bare torch-encoder state dict, whose config is
/// its __metadata__) and the bytes of the safetensors file (`weights_name`).
/// Throws invalid_argument("<name>: <field or tensor>: <reason>").
template <class Scalar>
Transformer<Scalar> parse_transformer(const std::optional<std::string>& config_text,
                                      const std::string& config_name,
                                      const std::string& safetensors_bytes,
                                      const std::string& weights_name);

}  // namespace measattn::detail
