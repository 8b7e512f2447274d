#include "output.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <set>

#include "measattn/error.hpp"
#include "measattn/io.hpp"
#include "signals.hpp"

namespace measattn::cli {
namespace {

namespace fs = std::filesystem;

std::string errno_text(int err) { return std::strerror(err); }

std::string dirname_of(const std::string& path) {
  const auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Follows symbolic links of the last component (as write_file_atomic does).
std::string follow_links(const std::string& path, const std::string& flag) {
  std::string p = path;
  for (int depth = 0; depth < 40; ++depth) {
    struct stat st {};
    if (::lstat(p.c_str(), &st) != 0 || !S_ISLNK(st.st_mode)) return p;
    std::error_code ec;
    std::string target = fs::read_symlink(p, ec).string();
    if (ec) throw invalid_argument(flag + ": " + path + ": cannot read the link: " + ec.message());
    if (!target.empty() && target[0] != '/' && p.find('/') != std::string::npos) {
      target = dirname_of(p) + "/" + target;
    }
    p = target;
  }
  throw invalid_argument(flag + ": " + path + ": too many levels of symbolic links");
}

// Entry names of a directory (not . and ..), sorted.
std::vector<std::string> list_dir(const std::string& dir, const std::string& what) {
  std::vector<std::string> names;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    names.push_back(it->path().filename().string());
  }
  if (ec) throw invalid_argument(what + ": cannot list the directory: " + ec.message());
  std::sort(names.begin(), names.end());
  return names;
}

// ".<name>.tmp.XXXXXX": the temporary of one of `names` left by a killed run.
bool is_leftover(const std::string& entry, const std::set<std::string>& names) {
  if (entry.size() < 13 || entry[0] != '.') return false;
  const auto pos = entry.rfind(".tmp.");
  if (pos == std::string::npos || pos < 2 || entry.size() - pos != 11) return false;
  const std::string base = entry.substr(1, pos - 1);
  return names.count(base) > 0 || base == kOutputMarker;
}

bool valid_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name != kOutputMarker;
}

bool is_prefix(const fs::path& a, const fs::path& b) {  // a is b or an ancestor of b
  auto ia = a.begin(), ib = b.begin();
  for (; ia != a.end(); ++ia, ++ib) {
    if (ia->empty()) continue;  // a trailing separator
    if (ib == b.end() || *ia != *ib) return false;
  }
  return true;
}

std::string join(const std::string& dir, const std::string& name) {
  return dir == "/" ? "/" + name : dir + "/" + name;
}

}  // namespace

void check_output_file(const std::string& path, const std::string& flag) {
  if (path.empty()) throw invalid_argument(flag + ": empty file name");
  const auto fail = [&](const std::string& why) {
    throw invalid_argument(flag + ": " + path + ": " + why);
  };
  if (path.back() == '/') fail("is a directory name, not a file");
  const std::string real = follow_links(path, flag);
  struct stat st {};
  if (::stat(real.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) fail("is a directory");
    if (S_ISCHR(st.st_mode) || S_ISFIFO(st.st_mode)) return;  // written through
    if (!S_ISREG(st.st_mode)) fail("is neither a regular file nor a character device or FIFO");
    if (::access(real.c_str(), W_OK) != 0) fail("is not writable");
  } else if (errno != ENOENT && errno != ENOTDIR) {
    fail("cannot stat: " + errno_text(errno));
  }
  const std::string dir = dirname_of(real);
  struct stat ds {};
  if (::stat(dir.c_str(), &ds) != 0) fail("directory " + dir + " does not exist");
  if (!S_ISDIR(ds.st_mode)) fail(dir + " is not a directory");
  if (::access(dir.c_str(), W_OK | X_OK) != 0) fail("directory " + dir + " is not writable");
}

OutputDirectory::OutputDirectory(const std::string& path, std::string command, std::string flag)
    : arg_(path), command_(std::move(command)), flag_(std::move(flag)) {
  if (arg_.empty()) throw invalid_argument(flag_ + ": empty directory name");
  const auto fail = [&](const std::string& why) {
    throw invalid_argument(flag_ + ": " + arg_ + ": " + why);
  };
  std::error_code ec;
  fs::path p = fs::absolute(arg_, ec);
  if (ec) fail("cannot resolve: " + ec.message());
  struct stat lst {};
  if (::lstat(p.c_str(), &lst) == 0 && S_ISLNK(lst.st_mode)) {
    p = fs::canonical(p, ec);
    if (ec) fail("is a symbolic link to a missing directory");
  }
  fs::path resolved = fs::weakly_canonical(p, ec);
  if (ec) fail("cannot resolve: " + ec.message());
  if (!resolved.has_filename() && resolved.has_parent_path() && resolved != resolved.root_path()) {
    resolved = resolved.parent_path();  // "dir/" -> "dir"
  }
  const fs::path cwd = fs::current_path(ec);
  if (!ec && is_prefix(resolved, cwd)) {
    fail("contains the working directory; refusing to use it as an output directory");
  }
  name_ = resolved.filename().string();
  if (!valid_name(name_)) fail("is not a usable directory name");
  real_ = resolved.string();
  parent_ = resolved.parent_path().string();
  struct stat ps {};
  if (::stat(parent_.c_str(), &ps) != 0) {
    fail("the parent directory " + parent_ +
         " does not exist (only the last component is created)");
  }
  if (!S_ISDIR(ps.st_mode)) fail(parent_ + " is not a directory");
  if (::access(parent_.c_str(), W_OK | X_OK) != 0) {
    fail("the parent directory " + parent_ + " is not writable");
  }
  inspect();
}

void OutputDirectory::inspect() {
  const auto fail = [&](const std::string& why) {
    throw invalid_argument(flag_ + ": " + arg_ + ": " + why);
  };
  owned_.clear();
  struct stat st {};
  if (::lstat(real_.c_str(), &st) != 0) {
    if (errno != ENOENT) fail("cannot stat: " + errno_text(errno));
    state_ = State::absent;
    return;
  }
  if (!S_ISDIR(st.st_mode)) fail("exists and is not a directory");
  const std::vector<std::string> entries = list_dir(real_, flag_ + ": " + arg_);
  if (entries.empty()) {
    state_ = State::empty;
    return;
  }
  const std::string marker = join(real_, kOutputMarker);
  struct stat ms {};
  if (::lstat(marker.c_str(), &ms) != 0 || !S_ISREG(ms.st_mode)) {
    fail("is not empty and is not a measattn " + command_ + " output (no " + kOutputMarker +
         " inside); choose a new or an empty directory");
  }
  if (ms.st_size > (1 << 20)) fail(std::string(kOutputMarker) + " is not a measattn marker");
  const std::string text = read_file(marker);
  std::vector<std::string> lines;
  for (std::size_t start = 0; start < text.size();) {
    auto end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    lines.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  const std::string head = "measattn " + command_ + " output";
  if (lines.empty() || lines[0] != head) {
    const std::string first = lines.empty() ? "" : lines[0];
    if (first.rfind("measattn ", 0) == 0 && first.size() > 16 &&
        first.compare(first.size() - 7, 7, " output") == 0) {
      fail("is a " + first + ", not a " + command_ + " output; choose another directory");
    }
    fail(std::string("its ") + kOutputMarker + " is not a measattn " + command_ +
         " marker; choose another directory");
  }
  std::set<std::string> owned;
  for (std::size_t i = 1; i < lines.size(); ++i) {
    if (lines[i].empty()) continue;
    if (!valid_name(lines[i])) {
      fail(std::string("its ") + kOutputMarker + " names '" + lines[i] +
           "', which is not a plain file name; choose another directory");
    }
    owned.insert(lines[i]);
  }
  for (const std::string& e : entries) {
    if (e == kOutputMarker || is_leftover(e, owned)) continue;
    struct stat es {};
    if (owned.count(e) && ::lstat(join(real_, e).c_str(), &es) == 0 && S_ISREG(es.st_mode)) {
      continue;
    }
    fail("holds files measattn did not write (" + e +
         "); move them away or choose another directory");
  }
  owned_.assign(owned.begin(), owned.end());
  state_ = State::previous;
}

std::string OutputDirectory::stage() {
  for (int attempt = 0; attempt < 100; ++attempt) {
    RegisteredTemporary t(temporary_name(parent_, name_), TemporaryKind::tree);
    if (::mkdir(t.path().c_str(), 0777) == 0) {
      stage_ = std::move(t);
      return stage_.path();
    }
    const int err = errno;
    t.release();  // nothing of ours to remove
    if (err != EEXIST) {
      throw invalid_argument(flag_ + ": " + arg_ + ": cannot create a temporary directory in " +
                             parent_ + ": " + errno_text(err));
    }
  }
  throw invalid_argument(flag_ + ": " + arg_ + ": cannot create a temporary directory in " +
                         parent_);
}

void OutputDirectory::commit() {
  const auto fail = [&](const std::string& why) {
    throw invalid_argument(flag_ + ": " + arg_ + ": " + why);
  };
  check_signal();  // a signal after the last poll: do not publish anything
  const std::string staged = stage_.path();
  std::vector<std::string> files = list_dir(staged, flag_ + ": " + arg_);
  std::string marker = "measattn " + command_ + " output\n";
  for (const auto& f : files) marker += f + "\n";
  write_file_atomic(join(staged, kOutputMarker), marker);

  SignalBlock block;  // the few renames below run to their end
  inspect();          // again: the target may have changed while we worked
  switch (state_) {
    case State::absent:
      if (::rename(staged.c_str(), real_.c_str()) != 0) {
        fail("cannot move the finished output into place: " + errno_text(errno));
      }
      stage_.release();
      break;
    case State::empty: {
      files.insert(files.begin(), kOutputMarker);  // the marker first
      for (const auto& f : files) {
        if (::rename(join(staged, f).c_str(), join(real_, f).c_str()) != 0) {
          fail("cannot move " + f + " into place: " + errno_text(errno));
        }
      }
      stage_.remove();
      break;
    }
    case State::previous: {
      std::string aside;
      for (int attempt = 0; attempt < 100 && aside.empty(); ++attempt) {
        std::string candidate = join(parent_, "." + name_ + ".old." + random_suffix());
        struct stat st {};
        if (::lstat(candidate.c_str(), &st) != 0 && errno == ENOENT) aside = candidate;
      }
      if (aside.empty() || ::rename(real_.c_str(), aside.c_str()) != 0) {
        fail("cannot move the previous output aside: " + errno_text(errno));
      }
      if (::rename(staged.c_str(), real_.c_str()) != 0) {
        const int err = errno;
        ::rename(aside.c_str(), real_.c_str());  // put the previous output back
        fail("cannot move the finished output into place: " + errno_text(err));
      }
      stage_.release();
      // Remove the previous output: only the files its marker names (and the
      // marker, and leftovers of killed runs), then the directory if empty.
      const std::set<std::string> owned(owned_.begin(), owned_.end());
      std::error_code ec;
      for (const auto& e : list_dir(aside, flag_ + ": " + arg_)) {
        if (e == kOutputMarker || owned.count(e) || is_leftover(e, owned)) {
          ::unlink(join(aside, e).c_str());
        }
      }
      if (::rmdir(aside.c_str()) != 0) {
        std::cerr << "measattn: warning: the previous output is kept in " << aside
                  << " (it held files measattn did not write)\n";
      }
      break;
    }
  }
}

std::string OutputDirectory::open_in_place(const std::vector<std::string>& owned) {
  inspect();
  if (state_ == State::absent) {
    RegisteredTemporary t(real_, TemporaryKind::created_dir);
    if (::mkdir(real_.c_str(), 0777) != 0) {
      const int err = errno;
      t.release();
      throw invalid_argument(flag_ + ": " + arg_ +
                             ": cannot create the directory: " + errno_text(err));
    }
    in_place_ = std::move(t);
  } else if (state_ == State::empty) {
    in_place_ = RegisteredTemporary(real_, TemporaryKind::marked_dir);
  }
  std::set<std::string> names(owned_.begin(), owned_.end());
  names.insert(owned.begin(), owned.end());
  std::string marker = "measattn " + command_ + " output\n";
  for (const auto& n : names) marker += n + "\n";
  write_file_atomic(join(real_, kOutputMarker), marker);
  in_place_owned_.assign(names.begin(), names.end());
  return real_;
}

void OutputDirectory::finish(const std::vector<std::string>& keep) {
  const std::set<std::string> kept(keep.begin(), keep.end());
  for (const auto& n : in_place_owned_) {
    if (kept.count(n)) continue;
    const std::string p = join(real_, n);
    struct stat st {};
    if (::lstat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode)) ::unlink(p.c_str());
  }
  in_place_.release();
}

}  // namespace measattn::cli
