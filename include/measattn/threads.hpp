// measattn/threads.hpp — the documented limit on thread counts.
#pragma once

namespace measattn {

/// The largest thread count measattn accepts: LipschitzSearchOptions::threads,
/// TokenSearchOptions::threads, Python's set_num_threads and the CLI's
/// --threads refuse larger values with invalid_argument (ValueError, exit 2).
/// Beyond it threads only cost memory (a stack and work buffers each); the
/// OpenMP runtime crashed when asked for 100000.
inline constexpr int kMaxThreads = 1024;

}  // namespace measattn
