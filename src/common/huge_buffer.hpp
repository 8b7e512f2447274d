// Large work arrays of doubles on huge pages (internal, not installed).
#pragma once

#include <sys/mman.h>

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>

namespace measattn::detail {

struct FreeDeleter {
  void operator()(double* p) const { std::free(p); }
};

using HugeBuffer = std::unique_ptr<double[], FreeDeleter>;

/// `count` doubles (uninitialized), 2 MiB aligned and advised to use huge
/// pages: first touch of fresh 4 KiB pages costs ~11 us each on this kind of
/// machine, of 2 MiB pages a small fraction of that.
inline HugeBuffer huge_buffer(std::size_t count) {
  constexpr std::size_t kHuge = std::size_t{2} << 20;
  const std::size_t bytes =
      std::max<std::size_t>(kHuge, (count * sizeof(double) + kHuge - 1) / kHuge * kHuge);
  void* p = std::aligned_alloc(kHuge, bytes);
  if (!p) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
  madvise(p, bytes, MADV_HUGEPAGE);
#endif
  return HugeBuffer(static_cast<double*>(p));
}

}  // namespace measattn::detail
