#include "flags.hpp"

#include <map>
#include <utility>

namespace measattn::cli {

namespace {

std::map<std::string, std::vector<FieldFlag>>& tables() {
  static std::map<std::string, std::vector<FieldFlag>> t;
  return t;
}

std::vector<std::string>& command_line() {
  static std::vector<std::string> args;
  return args;
}

std::map<std::string, std::vector<BoundOption>>& bound_options() {
  static std::map<std::string, std::vector<BoundOption>> t;
  return t;
}

// The spelling of `row`'s flag that the user typed (the flag itself when none was).
std::string typed_flag(const FieldFlag& row) {
  for (const std::string& arg : command_line()) {
    for (const std::string& alias : row.aliases) {
      if (arg == alias || arg.rfind(alias + "=", 0) == 0) return alias;
    }
  }
  return row.flag;
}

}  // namespace

void set_command_line(int argc, const char* const* argv) {
  command_line().assign(argv, argv + argc);
}

void record_bound_option(const std::string& command, BoundOption option) {
  bound_options()[command].push_back(std::move(option));
}

nlohmann::json bound_options_json() {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [command, options] : bound_options()) {
    nlohmann::json list = nlohmann::json::array();
    for (const BoundOption& o : options) {
      list.push_back({{"field", o.field},
                      {"flag", o.flag},
                      {"aliases", o.aliases},
                      {"default", o.default_value},
                      {"doc", o.doc}});
    }
    out[command] = list;
  }
  return out;
}

void OptionBinder::finish(CLI::App& app, const std::string& name, const std::string& flag,
                          const std::vector<std::string>& aliases, nlohmann::json default_value,
                          const std::string& doc) {
  bound_.push_back(name);
  register_fields(app, {{name, flag, nullptr, aliases}});
  record_bound_option(app.get_name(), {name, flag, aliases, std::move(default_value), doc});
}

void register_fields(const CLI::App& app, std::vector<FieldFlag> rows) {
  auto& table = tables()[app.get_name()];
  for (auto& row : rows) table.push_back(std::move(row));
}

std::vector<FieldFlag> model_fields(const std::string& flag, const std::string* file) {
  std::vector<FieldFlag> rows;
  for (const char* field : {"model", "num_heads", "w_q", "w_k", "w_v", "w_o", "b_q", "b_k", "b_v",
                            "b_o", "scale", "potential", "normalization"}) {
    rows.push_back({field, flag, file});
  }
  return rows;
}

std::vector<FieldFlag> token_fields(const std::string* tokens, const std::string* weights) {
  return {{"weights", "--weights", weights},
          {"weights", "--tokens", tokens},
          {"atoms", "--tokens", tokens},
          {"tokens", "--tokens", tokens}};
}

std::string cli_message(const std::string& subcommand, const invalid_argument& error) {
  const std::string& field = error.field();
  const auto it = tables().find(subcommand);
  if (field.empty() || it == tables().end()) return error.what();
  for (const FieldFlag& row : it->second) {
    if (row.field != field) continue;
    if (row.file != nullptr && row.file->empty()) continue;  // not given: the next row
    std::string out = typed_flag(row);
    if (row.file != nullptr) out += ": " + *row.file;
    // The flag replaces the field; after a file, a field other than the
    // flag's own name stays as detail (what in the file is wrong).
    std::string own = "--" + field;
    for (char& c : own)
      if (c == '_') c = '-';
    const bool keep_field = row.file != nullptr && row.flag != own;
    out += ": " + (keep_field ? std::string(error.what()) : error.reason());
    return out;
  }
  return error.what();
}

}  // namespace measattn::cli
