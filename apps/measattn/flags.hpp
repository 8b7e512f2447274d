// The CLI's one table from library fields to command-line flags.
//
// Library errors (measattn::invalid_argument) name the C++/Python field:
// "radius: must be positive and finite", "weights: must be >= 0". Each
// subcommand registers, in its setup, which flag sets each field (and, for an
// input file, the path the user gave); main() rewrites every invalid_argument
// that reaches it through this table, so the CLI prints
//   --radius: must be positive and finite
//   --weights: w.npy: must be >= 0
//   --model: m.safetensors: w_q: contains a NaN or infinite entry
// The flag replaces the field; after a file name, a field that is not the
// flag's own name stays as detail (--model m.safetensors: w_q: ...). Several rows for one field are
// tried in order; a row with a file that the user did not give is skipped (weights: --weights
// w.npy, else --tokens). Messages without a field, or with a field no row names, are printed as
// they are (the CLI's own messages already start with the flag).
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "measattn/error.hpp"

namespace measattn::cli {

struct FieldFlag {
  std::string field;                  ///< library field ("radius", "weights")
  std::string flag;                   ///< "--radius"
  const std::string* file = nullptr;  ///< the flag's file argument, when it names a file
};

/// Registers the table of subcommand `app` (call from its setup; the strings
/// pointed to must outlive the run, e.g. members of the shared argument struct).
void register_fields(const CLI::App& app, std::vector<FieldFlag> rows);

/// The fields of a model file's contents (Model::validate and the readers),
/// all set by `flag` (usually "--model") from `file`.
std::vector<FieldFlag> model_fields(const std::string& flag, const std::string* file);

/// The fields of a token measure read from --tokens (atoms, tokens) and
/// --weights (weights; --tokens when no weights file was given).
std::vector<FieldFlag> token_fields(const std::string* tokens, const std::string* weights);

/// The message the CLI prints for `error` raised while running `subcommand`.
std::string cli_message(const std::string& subcommand, const invalid_argument& error);

}  // namespace measattn::cli
