// measattn — the command-line tool. Exit codes: 0 success, 2 bad input (one
// line on stderr naming the file/field and the reason), 1 internal error,
// 128 + N after signal N (SIGINT 130, SIGTERM 143, SIGHUP 129).
#include <CLI/CLI.hpp>
#include <csignal>
#include <iostream>
#include <string>

#include "command.hpp"
#include "flags.hpp"
#include "measattn/error.hpp"
#include "measattn/version.hpp"
#include "signals.hpp"

int main(int argc, char** argv) {
  // SIGINT/SIGTERM/SIGHUP: temporaries removed, exit 128 + signal (signals.hpp).
  measattn::cli::install_signal_handlers();
  CLI::App app{"measattn: attention as a map on probability measures"};
  app.set_version_flag("--version", std::string("measattn ") + measattn::version);
  app.require_subcommand(1);
  for (const auto& command : measattn::cli::commands()) {
    CLI::App* sub = app.add_subcommand(command.name, command.description);
    command.setup(*sub);
  }
  measattn::cli::set_command_line(argc, argv);
  // Under an MPI launcher the ranks share the work (docs/distributed.md);
  // every rank parses and checks the same flags and files, rank 0 alone
  // writes and prints, so that an error reads as one line, once.
  if (measattn::Communicator::mpi_enabled() && measattn::Communicator::launched_by_mpi()) {
    try {
      measattn::cli::set_communicator(measattn::Communicator::world());
    } catch (const std::exception& e) {
      std::cerr << "measattn: internal error: MPI: " << e.what() << "\n";
      return 1;
    }
  }
  const bool speaks = measattn::cli::writes_outputs();
  // Hidden: the flags bound to library Options fields, with their defaults, as
  // JSON (tests/python/test_options.py compares them with the Python keywords).
  if (argc == 2 && std::string(argv[1]) == "--options-json") {
    std::cout << measattn::cli::bound_options_json().dump(1) << "\n";
    return 0;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    if (speaks) std::cerr << "measattn: error: " << e.what() << "\n";
    return 2;
  } catch (const measattn::interrupted&) {
    const int sig = measattn::cli::received_signal() ? measattn::cli::received_signal() : SIGINT;
    if (speaks) std::cerr << "measattn: interrupted by " << measattn::cli::signal_name(sig) << "\n";
    return 128 + sig;
  } catch (const measattn::invalid_argument& e) {
    // Library fields become the subcommand's flags (flags.hpp: one table).
    std::string subcommand;
    for (const CLI::App* sub : app.get_subcommands()) subcommand = sub->get_name();
    if (speaks) {
      std::cerr << "measattn: error: " << measattn::cli::cli_message(subcommand, e) << "\n";
    }
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "measattn: internal error: " << e.what() << "\n";
    return 1;
  }
  if (const int sig = measattn::cli::received_signal()) {  // after the outputs were complete
    std::cerr << "measattn: interrupted by " << measattn::cli::signal_name(sig) << "\n";
    return 128 + sig;
  }
  return 0;
}
