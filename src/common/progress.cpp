#include "measattn/progress.hpp"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>

namespace measattn {

bool Progress::enabled() {
  if (const char* env = std::getenv("MEASATTN_PROGRESS")) return std::strcmp(env, "0") != 0;
  return isatty(STDERR_FILENO) == 1;
}

Progress::Progress(std::string label, std::int64_t total)
    : label_(std::move(label)),
      total_(total),
      active_(enabled()),
      start_(std::chrono::steady_clock::now()),
      last_(start_ - std::chrono::seconds(1)) {}

Progress::Progress(std::string label, std::int64_t total, ProgressCallback callback, bool line)
    : label_(std::move(label)),
      total_(total),
      callback_(std::move(callback)),
      active_(line && enabled()),
      start_(std::chrono::steady_clock::now()),
      last_(start_ - std::chrono::seconds(1)) {}

Progress::~Progress() { finish(); }

void Progress::update(std::int64_t done, const std::string& note) {
  if (callback_) callback_(done, total_);
  if (!active_ || finished_) return;
  const auto now = std::chrono::steady_clock::now();
  if (now - last_ < std::chrono::milliseconds(200) && done != total_) return;
  last_ = now;
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  if (total_ > 0) {
    const double frac = static_cast<double>(done) / static_cast<double>(total_);
    const double eta = frac > 0 ? elapsed * (1 - frac) / frac : 0;
    std::fprintf(stderr, "\r%s: %lld/%lld (%3.0f%%) %.1fs, eta %.1fs %s\033[K", label_.c_str(),
                 static_cast<long long>(done), static_cast<long long>(total_), 100 * frac, elapsed,
                 eta, note.c_str());
  } else {
    std::fprintf(stderr, "\r%s: %lld %.1fs %s\033[K", label_.c_str(), static_cast<long long>(done),
                 elapsed, note.c_str());
  }
  std::fflush(stderr);
}

void Progress::finish() {
  if (!active_ || finished_) return;
  finished_ = true;
  std::fprintf(stderr, "\n");
  std::fflush(stderr);
}

}  // namespace measattn
