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
#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "measattn/error.hpp"
#include "measattn/options.hpp"

namespace measattn::cli {

struct FieldFlag {
  std::string field;                  ///< library field ("radius", "weights")
  std::string flag;                   ///< "--radius"
  const std::string* file = nullptr;  ///< the flag's file argument, when it names a file
  /// Other spellings of the flag (kept from earlier releases: "--tol"); a
  /// message names the spelling the user typed.
  std::vector<std::string> aliases = {};
};

/// Remembers the command line, so that messages name the flag as typed.
void set_command_line(int argc, const char* const* argv);

/// One flag bound to an Options field (the machine-readable dump, --options-json).
struct BoundOption {
  std::string field;
  std::string flag;
  std::vector<std::string> aliases;
  nlohmann::json default_value;
  std::string doc;
};

/// Records the bound options of subcommand `command` (for --options-json).
void record_bound_option(const std::string& command, BoundOption option);

/// {"wasserstein": [{"field": ..., "flag": ..., "aliases": [...], "default": ...}], ...}
nlohmann::json bound_options_json();

/// Binds the fields of an Options struct to flags through its field table
/// (options.hpp): flag = flag_name(field) plus the aliases given; the default
/// shown is the default-constructed value; enumerations are read as text and
/// parsed by apply(), which the subcommand calls before validate(). Every bound
/// field joins the subcommand's field -> flag table.
class OptionBinder {
 public:
  /// Aliases: field -> older spellings of its flag.
  using Aliases = std::map<std::string, std::vector<std::string>>;
  /// Fields read as one text and parsed by the subcommand (a list with its own
  /// syntax and messages: entropy's --betas): field -> parse(text), which sets
  /// the field. apply() calls it only when the flag was given.
  using Parsers = std::map<std::string, std::function<void(const std::string&)>>;

  /// Binds the fields of `options` named in `only` (in the table's order).
  /// Lists (std::vector fields) take several values, comma-separated or not.
  template <class Options>
  void bind(CLI::App& app, Options& options, const std::vector<std::string>& only,
            const Aliases& aliases = {}, const Parsers& parsers = {}) {
    for_each_field(options, [&](const char* name, auto& value, const char* doc, auto&&... enum_) {
      if (std::find(only.begin(), only.end(), name) == only.end()) return;
      if constexpr (sizeof...(enum_) == 0) {
        const auto parser = parsers.find(name);
        if (parser != parsers.end()) {
          bind_text(app, name, nlohmann::json(value), doc, aliases, parser->second);
          return;
        }
      }
      bind_one(app, name, value, doc, aliases, enum_...);
    });
    for (const std::string& name : only) {
      if (std::find(bound_.begin(), bound_.end(), name) == bound_.end())
        throw std::logic_error("OptionBinder: no field " + name);  // a typo in a subcommand
    }
  }

  /// Parses the enumeration flags given (throws invalid_argument naming the field).
  void apply() const {
    for (const auto& parse : parsers_) parse();
  }

 private:
  static std::string names(const std::string& flag, const std::vector<std::string>& aliases) {
    std::string out = flag;
    for (const std::string& a : aliases) out += "," + a;
    return out;
  }

  template <class T>
  void bind_one(CLI::App& app, const char* name, T& value, const char* doc,
                const Aliases& aliases) {
    const std::string flag = flag_name(name);
    const auto it = aliases.find(name);
    const std::vector<std::string> other =
        it == aliases.end() ? std::vector<std::string>{} : it->second;
    if constexpr (std::is_same_v<T, bool>) {
      app.add_flag(names(flag, other), value, doc);
    } else {
      CLI::Option* option = app.add_option(names(flag, other), value, doc);
      option->capture_default_str();
      if constexpr (is_vector<T>::value) option->delimiter(',');
    }
    finish(app, name, flag, other, nlohmann::json(value), doc);
  }

  template <class T>
  struct is_vector : std::false_type {};
  template <class T, class A>
  struct is_vector<std::vector<T, A>> : std::true_type {};

  void bind_text(CLI::App& app, const char* name, nlohmann::json default_value, const char* doc,
                 const Aliases& aliases, std::function<void(const std::string&)> parse) {
    const std::string flag = flag_name(name);
    const auto it = aliases.find(name);
    const std::vector<std::string> other =
        it == aliases.end() ? std::vector<std::string>{} : it->second;
    auto text = std::make_shared<std::string>();
    CLI::Option* option = app.add_option(names(flag, other), *text, doc);
    parsers_.push_back([text, option, parse] {
      if (option->count() > 0) parse(*text);
    });
    finish(app, name, flag, other, std::move(default_value), doc);
  }

  template <class E>
  void bind_one(CLI::App& app, const char* name, E& value, const char* doc, const Aliases& aliases,
                const EnumSpelling<E>& spelling) {
    const std::string flag = flag_name(name);
    const auto it = aliases.find(name);
    const std::vector<std::string> other =
        it == aliases.end() ? std::vector<std::string>{} : it->second;
    auto text = std::make_shared<std::string>(spelling.to_string(value));
    app.add_option(names(flag, other), *text, doc)->capture_default_str();
    std::string field = name;
    E* target = &value;
    parsers_.push_back([text, target, spelling, field] { *target = spelling.parse(*text, field); });
    finish(app, name, flag, other, nlohmann::json(*text), doc);
  }

  void finish(CLI::App& app, const std::string& name, const std::string& flag,
              const std::vector<std::string>& aliases, nlohmann::json default_value,
              const std::string& doc);

  std::vector<std::string> bound_;
  std::vector<std::function<void()>> parsers_;
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
