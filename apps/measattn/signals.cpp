#include "signals.hpp"

#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>

#include "measattn/error.hpp"
#include "measattn/interrupt.hpp"
#include "measattn/temporaries.hpp"

namespace measattn::cli {
namespace {

std::atomic<int> g_signal{0};
std::atomic<pid_t> g_child{0};
constexpr unsigned kGraceSeconds = 1;

const int kHandled[] = {SIGINT, SIGTERM, SIGHUP};

void write_stderr(const char* s) {
  const ssize_t ignored = ::write(2, s, std::strlen(s));
  (void)ignored;
}

[[noreturn]] void die(int sig) {
  const pid_t child = g_child.load();
  if (child > 0) {
    ::kill(child, SIGKILL);
    ::waitpid(child, nullptr, 0);  // so it can no longer create anything
  }
  remove_registered_temporaries();
  write_stderr(sig == SIGINT    ? "measattn: interrupted by SIGINT\n"
               : sig == SIGTERM ? "measattn: interrupted by SIGTERM\n"
               : sig == SIGHUP  ? "measattn: interrupted by SIGHUP\n"
                                : "measattn: interrupted\n");
  ::_exit(128 + sig);
}

void on_signal(int sig) {
  int expected = 0;
  if (g_signal.compare_exchange_strong(expected, sig)) {
    ::alarm(kGraceSeconds);  // the run gets this long to unwind by itself
    return;
  }
  die(expected);
}

void on_alarm(int) {
  const int sig = g_signal.load();
  if (sig != 0) die(sig);
}

sigset_t handled_set() {
  sigset_t set;
  sigemptyset(&set);
  for (int s : kHandled) sigaddset(&set, s);
  sigaddset(&set, SIGALRM);
  return set;
}

}  // namespace

void install_signal_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sa.sa_mask = handled_set();
  sa.sa_flags = 0;  // no SA_RESTART: blocking waits return EINTR and look at the flag
  for (int s : kHandled) {
    struct sigaction old {};
    if (::sigaction(s, nullptr, &old) == 0 && old.sa_handler == SIG_IGN) continue;
    ::sigaction(s, &sa, nullptr);
  }
  struct sigaction alarm_sa {};
  alarm_sa.sa_handler = on_alarm;
  alarm_sa.sa_mask = handled_set();
  ::sigaction(SIGALRM, &alarm_sa, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  ::signal(SIGXFSZ, SIG_IGN);
  set_interrupt_handler([] { return g_signal.load(std::memory_order_relaxed) != 0; });
}

int received_signal() { return g_signal.load(); }

std::string signal_name(int sig) {
  switch (sig) {
    case SIGINT:
      return "SIGINT";
    case SIGTERM:
      return "SIGTERM";
    case SIGHUP:
      return "SIGHUP";
    default:
      return "signal " + std::to_string(sig);
  }
}

void check_signal() {
  if (received_signal() != 0) throw interrupted("interrupted");
}

void set_child_process(pid_t pid) { g_child.store(pid); }

SignalBlock::SignalBlock() {
  const sigset_t set = handled_set();
  ::pthread_sigmask(SIG_BLOCK, &set, &old_);
}

SignalBlock::~SignalBlock() { ::pthread_sigmask(SIG_SETMASK, &old_, nullptr); }

}  // namespace measattn::cli
