// measattn/options.hpp — the field tables of the Options structs.
//
// Every Options struct of the public API (WassersteinOptions, FlowOptions,
// AttendOptions, ...) has, next to it, one table of its user-facing fields:
//
//   template <class Visitor> void for_each_field(WassersteinOptions& o, Visitor&& visit);
//
// which calls, for each field in order,
//
//   visit("tolerance", o.tolerance, "doc line")                 bool, integers, double, string
//   visit("method", o.method, "doc line", EnumSpelling<E>{...})  enumerations
//
// The name is the C++ field's name, which is also the Python keyword, the key
// of the field in JSON outputs, and (as "--" + name with '_' -> '-') the CLI
// flag, so the three cannot drift: the CLI and the Python module bind their
// flags and keywords through these tables and take their defaults from a
// default-constructed Options. Each struct's validate() names these fields.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace measattn {

/// How an enumeration field is written and read: to_string(value) and
/// parse(text, field), which throws invalid_argument naming `field`.
template <class E>
struct EnumSpelling {
  std::string (*to_string)(E);
  E (*parse)(const std::string& name, const std::string& field);
};

/// The CLI flag of a field: "--" + name with '_' replaced by '-'
/// ("max_iterations" -> "--max-iterations").
inline std::string flag_name(std::string_view field) {
  std::string flag = "--";
  for (char c : field) flag += c == '_' ? '-' : c;
  return flag;
}

/// The names of the fields in the table of `Options`, in order.
template <class Options>
std::vector<std::string> field_names() {
  Options options{};
  std::vector<std::string> names;
  for_each_field(
      options, [&](const char* name, auto&, const char*, auto&&...) { names.emplace_back(name); });
  return names;
}

}  // namespace measattn
