// SIGINT, SIGTERM and SIGHUP in the CLI.
//
// The first signal sets a flag: the library's interrupt handler returns it, so
// long loops throw measattn::interrupted, RAII guards remove the temporaries as
// the stack unwinds, and main() prints one line and exits 128 + signal. If the
// run has not ended a second later (a phase that does not poll), or on a second
// signal, the handler itself removes every registered temporary (see
// common/temporaries.hpp), kills a running gnuplot and calls _exit(128 + signal).
// SIGPIPE and SIGXFSZ are ignored, so that write errors are reported as errors.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <string>

namespace measattn::cli {

/// Installs the handlers (signals ignored at startup, as under nohup, stay ignored).
void install_signal_handlers();
/// The first signal received (0 = none).
int received_signal();
/// "SIGINT", "SIGTERM", "SIGHUP" or "signal N".
std::string signal_name(int sig);
/// Throws measattn::interrupted if a signal was received.
void check_signal();
/// A child process to kill (and wait for) if the handler has to end the run.
void set_child_process(pid_t pid);

/// Blocks SIGINT/SIGTERM/SIGHUP/SIGALRM while alive (a commit of a few renames
/// runs to its end; the signal is then handled).
class SignalBlock {
 public:
  SignalBlock();
  ~SignalBlock();
  SignalBlock(const SignalBlock&) = delete;
  SignalBlock& operator=(const SignalBlock&) = delete;

 private:
  sigset_t old_;
};

}  // namespace measattn::cli
