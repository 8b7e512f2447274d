#include "tokenize.hpp"

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "measattn/error.hpp"
#include "measattn/io.hpp"

extern char** environ;

namespace measattn::cli {
namespace {

// The child: argv[1] = tokenizer.json; the text arrives on stdin (UTF-8), the
// ids leave on stdout as one JSON list; one line on stderr and exit 3 on error.
constexpr const char* kScript = R"PY(
import json, sys
try:
    from tokenizers import Tokenizer
except ImportError:
    sys.stderr.write("the Python package 'tokenizers' is not installed (scripts/venv.sh installs it)\n")
    sys.exit(3)
try:
    text = sys.stdin.buffer.read().decode("utf-8")
except UnicodeDecodeError as e:
    sys.stderr.write("the text is not UTF-8 (byte %d)\n" % e.start)
    sys.exit(3)
try:
    tok = Tokenizer.from_file(sys.argv[1])
except Exception as e:
    sys.stderr.write("%s: not a tokenizer file: %s\n" % (sys.argv[1], str(e).splitlines()[0] if str(e) else type(e).__name__))
    sys.exit(3)
tok.no_truncation()
tok.no_padding()
sys.stdout.write(json.dumps(tok.encode(text).ids))
)PY";

std::string python_executable() {
  if (const char* p = std::getenv("MEASATTN_PYTHON"); p != nullptr && *p != '\0') return p;
#ifdef MEASATTN_DEFAULT_PYTHON
  return MEASATTN_DEFAULT_PYTHON;
#else
  return "python3";
#endif
}

struct ChildOutput {
  int status = 0;
  std::string out, err;
};

// Runs python -c kScript <tokenizer> with `input` on stdin; no shell.
ChildOutput run_tokenizer(const std::string& tokenizer, const std::string& input,
                          const std::string& what) {
  int in_pipe[2], out_pipe[2], err_pipe[2];
  if (pipe2(in_pipe, O_CLOEXEC) != 0 || pipe2(out_pipe, O_CLOEXEC) != 0 ||
      pipe2(err_pipe, O_CLOEXEC) != 0) {
    throw invalid_argument(what +
                           ": cannot create a pipe for the tokenizer: " + std::strerror(errno));
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in_pipe[0], 0);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err_pipe[1], 2);
  const std::string python = python_executable();
  std::vector<std::string> args = {python, "-I", "-c", kScript, tokenizer};
  // -I (isolated) ignores PYTHONPATH and the user's site directory, so the
  // current directory cannot shadow `tokenizers`; a venv's python still sees
  // its own site-packages.
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, python.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(in_pipe[0]);
  close(out_pipe[1]);
  close(err_pipe[1]);
  if (rc != 0) {
    close(in_pipe[1]);
    close(out_pipe[0]);
    close(err_pipe[0]);
    throw invalid_argument(what + ": cannot run the tokenizer's Python (" + python +
                           "): " + std::strerror(rc) + " (set MEASATTN_PYTHON)");
  }
  // Feed stdin and drain stdout/stderr together so that neither side blocks.
  ChildOutput result;
  std::size_t written = 0;
  int in_fd = in_pipe[1];
  if (input.empty()) {
    close(in_fd);
    in_fd = -1;
  }
  int out_fd = out_pipe[0], err_fd = err_pipe[0];
  constexpr std::size_t kMaxOutput = std::size_t{1} << 28;
  while (out_fd >= 0 || err_fd >= 0) {
    pollfd fds[3];
    int n = 0;
    if (in_fd >= 0) fds[n++] = {in_fd, POLLOUT, 0};
    if (out_fd >= 0) fds[n++] = {out_fd, POLLIN, 0};
    if (err_fd >= 0) fds[n++] = {err_fd, POLLIN, 0};
    if (poll(fds, n, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int k = 0; k < n; ++k) {
      if (fds[k].revents == 0) continue;
      if (fds[k].fd == in_fd) {
        const ssize_t w = write(in_fd, input.data() + written, input.size() - written);
        if (w > 0) written += static_cast<std::size_t>(w);
        if (w < 0 && errno != EINTR && errno != EAGAIN) written = input.size();
        if (written == input.size()) {
          close(in_fd);
          in_fd = -1;
        }
        continue;
      }
      char buffer[65536];
      const ssize_t r = read(fds[k].fd, buffer, sizeof buffer);
      if (r < 0 && errno == EINTR) continue;
      std::string& sink = fds[k].fd == out_fd ? result.out : result.err;
      if (r > 0 && sink.size() < kMaxOutput) sink.append(buffer, static_cast<std::size_t>(r));
      if (r <= 0) {
        close(fds[k].fd);
        (fds[k].fd == out_fd ? out_fd : err_fd) = -1;
      }
    }
  }
  if (in_fd >= 0) close(in_fd);
  while (waitpid(pid, &result.status, 0) < 0 && errno == EINTR) {
  }
  return result;
}

std::string last_line(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  const auto nl = s.rfind('\n');
  if (nl != std::string::npos) s = s.substr(nl + 1);
  return s.substr(0, 300);
}

}  // namespace

std::string tokenizer_path(const std::string& model_path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path p(model_path);
  const fs::path dir = fs::is_directory(p, ec) ? p : p.parent_path();
  return (dir.empty() ? fs::path("tokenizer.json") : dir / "tokenizer.json").string();
}

std::vector<std::int64_t> tokenize_string(const std::string& model_path, const std::string& text,
                                          const std::string& what) {
  if (text.find_first_not_of(" \t\r\n\f\v") == std::string::npos) {
    throw invalid_argument(what + ": the text is empty");
  }
  const std::string tokenizer = tokenizer_path(model_path);
  struct stat st {};
  if (stat(tokenizer.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    throw invalid_argument(what + ": " + tokenizer +
                           ": no tokenizer file beside the model (pass --input-ids instead)");
  }
  const ChildOutput child = run_tokenizer(tokenizer, text, what);
  if (!WIFEXITED(child.status) || WEXITSTATUS(child.status) != 0) {
    const std::string why = last_line(child.err);
    throw invalid_argument(
        what + ": tokenizing failed: " +
        (why.empty() ? std::string("the tokenizer process did not finish") : why));
  }
  std::vector<std::int64_t> ids;
  try {
    ids = nlohmann::json::parse(child.out).get<std::vector<std::int64_t>>();
  } catch (const nlohmann::json::exception&) {
    throw invalid_argument(what + ": the tokenizer returned no list of ids");
  }
  if (ids.empty()) throw invalid_argument(what + ": the text has no tokens");
  return ids;
}

std::vector<std::int64_t> tokenize_text(const std::string& model_path, const std::string& text_path,
                                        const std::string& flag) {
  std::string text;
  try {
    text = read_file(text_path, std::uint64_t{64} << 20);
  } catch (const invalid_argument& e) {
    throw invalid_argument(flag + ": " + e.what());
  }
  return tokenize_string(model_path, text, flag + ": " + text_path);
}

}  // namespace measattn::cli
