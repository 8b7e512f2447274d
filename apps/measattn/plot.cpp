#include "plot.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <stdexcept>

#include "measattn/io.hpp"
#include "measattn/temporaries.hpp"
#include "signals.hpp"

extern char** environ;

namespace measattn::cli {

namespace {

std::string number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Inf" : "-Inf";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

}  // namespace

std::string Table::csv() const {
  std::ostringstream out;
  for (size_t c = 0; c < columns.size(); ++c) out << (c ? "," : "") << columns[c];
  out << "\n";
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size(); ++c) out << (c ? "," : "") << number(row[c]);
    out << "\n";
  }
  return out.str();
}

std::string Table::gnuplot_block(const std::string& name) const {
  std::ostringstream out;
  out << "$" << name << " << EOD\n";
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size(); ++c) out << (c ? " " : "") << number(row[c]);
    out << "\n";
  }
  out << "EOD\n";
  return out.str();
}

void write_csv(const std::string& path, const Table& table) {
  write_file_atomic(path, table.csv());
}

std::string gnuplot_quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

namespace {

// Runs gnuplot with `script` on its standard input; returns its exit status and
// (up to 4 KiB of) its standard error. No shell is involved. A signal makes it
// kill gnuplot, wait for it and throw measattn::interrupted.
int run_gnuplot(const std::string& script, std::string& log) {
  int in[2], err[2];
  if (::pipe2(in, O_CLOEXEC) != 0) throw std::runtime_error("gnuplot: pipe failed");
  if (::pipe2(err, O_CLOEXEC) != 0) {
    ::close(in[0]);
    ::close(in[1]);
    throw std::runtime_error("gnuplot: pipe failed");
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in[0], 0);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, err[1], 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t defaults, empty;
  sigemptyset(&defaults);
  for (int s : {SIGPIPE, SIGXFSZ, SIGINT, SIGTERM, SIGHUP, SIGALRM}) sigaddset(&defaults, s);
  sigemptyset(&empty);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setsigmask(&attr, &empty);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
  char arg0[] = "gnuplot";
  char* argv[] = {arg0, nullptr};
  pid_t pid = 0;
  const int rc = ::posix_spawnp(&pid, "gnuplot", &actions, &attr, argv, environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  ::close(in[0]);
  ::close(err[1]);
  if (rc != 0) {
    ::close(in[1]);
    ::close(err[0]);
    throw std::runtime_error(std::string("cannot run gnuplot: ") + std::strerror(rc));
  }
  set_child_process(pid);
  ::fcntl(in[1], F_SETFL, ::fcntl(in[1], F_GETFL) | O_NONBLOCK);
  std::size_t written = 0;
  int to_child = in[1], from_child = err[0];
  bool stopped = false;
  while (to_child >= 0 || from_child >= 0) {
    if (received_signal() != 0) {
      stopped = true;
      break;
    }
    pollfd fds[2];
    nfds_t count = 0;
    if (to_child >= 0) fds[count++] = {to_child, POLLOUT, 0};
    if (from_child >= 0) fds[count++] = {from_child, POLLIN, 0};
    if (::poll(fds, count, -1) < 0) {
      if (errno == EINTR) continue;
      stopped = true;
      break;
    }
    for (nfds_t i = 0; i < count; ++i) {
      if (fds[i].revents == 0) continue;
      if (fds[i].fd == to_child) {
        const ssize_t n = ::write(to_child, script.data() + written, script.size() - written);
        if (n > 0) written += static_cast<std::size_t>(n);
        if ((n < 0 && errno != EAGAIN && errno != EINTR) || written == script.size()) {
          ::close(to_child);  // done, or gnuplot stopped reading (EPIPE)
          to_child = -1;
        }
      } else {
        char buffer[4096];
        const ssize_t n = ::read(from_child, buffer, sizeof buffer);
        if (n > 0 && log.size() < 4096) log.append(buffer, static_cast<std::size_t>(n));
        if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) {
          ::close(from_child);
          from_child = -1;
        }
      }
    }
  }
  if (to_child >= 0) ::close(to_child);
  if (from_child >= 0) ::close(from_child);
  if (stopped) ::kill(pid, SIGKILL);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  set_child_process(0);
  check_signal();
  if (stopped) throw std::runtime_error("gnuplot: poll failed");
  return status;
}

}  // namespace

void render_png(const std::string& png_path, const std::string& script, int width, int height) {
  check_signal();
  // gnuplot draws into a registered temporary of ours; the PNG then goes to its
  // target like every other output (write_file_atomic: links followed, devices
  // written through, atomic rename).
  const char* tmpdir = std::getenv("TMPDIR");
  struct stat ts {};
  const bool usable = tmpdir && *tmpdir && ::stat(tmpdir, &ts) == 0 && S_ISDIR(ts.st_mode) &&
                      ::access(tmpdir, W_OK | X_OK) == 0;
  const std::string dir = usable ? tmpdir : "/tmp";
  RegisteredTemporary tmp(temporary_name(dir, "measattn-plot.png"), TemporaryKind::file);
  std::ostringstream full;
  full << "set terminal pngcairo size " << width << "," << height
       << " enhanced font 'DejaVu Sans,10'\n"
       << "set output " << gnuplot_quote(tmp.path()) << "\n"
       << script << "\nunset output\nexit\n";
  std::string log;
  const int status = run_gnuplot(full.str(), log);
  std::string png;
  struct stat st {};
  if (::stat(tmp.path().c_str(), &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
    png = read_file(tmp.path());
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || png.empty()) {
    throw std::runtime_error(png_path + ": gnuplot failed: " + log.substr(0, 300));
  }
  write_file_atomic(png_path, png);
}

}  // namespace measattn::cli
