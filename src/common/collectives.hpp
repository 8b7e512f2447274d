// The few collective operations the distributed computations need, over a
// Communicator (measattn/communicator.hpp). Each is a no-op or a copy for the
// calling process alone, so callers are written once for every rank count.
// MPI is called from the calling thread only, never inside an OpenMP region.
// Counts of any size: messages longer than 2^30 elements are sent in pieces.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "measattn/communicator.hpp"
#include "measattn/types.hpp"

namespace measattn::detail {

/// The element types the collectives carry.
enum class Datatype { f32, f64, f80, i64, u8 };

template <class T>
constexpr Datatype datatype_of() {
  if constexpr (std::is_same_v<T, float>) return Datatype::f32;
  if constexpr (std::is_same_v<T, double>) return Datatype::f64;
  if constexpr (std::is_same_v<T, long double>) return Datatype::f80;
  if constexpr (std::is_same_v<T, std::int64_t> || std::is_same_v<T, Index>) return Datatype::i64;
  if constexpr (std::is_same_v<T, unsigned char> || std::is_same_v<T, char>) return Datatype::u8;
}

/// A pending non-blocking operation (MPI requests; empty for one process).
class Pending {
 public:
  Pending();
  Pending(Pending&&) noexcept;
  Pending& operator=(Pending&&) noexcept;
  Pending(const Pending&) = delete;
  Pending& operator=(const Pending&) = delete;
  /// Waits for completion (if not yet waited for).
  ~Pending();
  void wait();
  /// Lets MPI progress the operation; true when it is complete.
  bool test();
  /// Takes over `other`'s operations: wait() then waits for both.
  void absorb(Pending&& other);

  struct Impl;
  std::unique_ptr<Impl> impl;
};

void barrier(const Communicator& comm);

/// Every rank's value, in rank order.
std::vector<std::int64_t> allgather(const Communicator& comm, std::int64_t value);

/// Broadcasts `count` elements from `root` (blocking / non-blocking).
void broadcast_raw(const Communicator& comm, void* data, std::size_t count, Datatype type,
                   int root);
Pending ibroadcast_raw(const Communicator& comm, void* data, std::size_t count, Datatype type,
                       int root);

template <class T>
void broadcast(const Communicator& comm, T* data, std::size_t count, int root) {
  broadcast_raw(comm, data, count, datatype_of<T>(), root);
}
template <class T>
Pending ibroadcast(const Communicator& comm, T* data, std::size_t count, int root) {
  return ibroadcast_raw(comm, data, count, datatype_of<T>(), root);
}

/// Concatenates every rank's `local` (counts[r] elements from rank r) into
/// `out` in rank order, on every rank (all_gather) or on `root` only (gather;
/// `out` is unused elsewhere).
void all_gather_raw(const Communicator& comm, const void* local, const std::vector<Index>& counts,
                    void* out, Datatype type);
void gather_raw(const Communicator& comm, const void* local, const std::vector<Index>& counts,
                void* out, Datatype type, int root);

template <class T>
void all_gather(const Communicator& comm, const T* local, const std::vector<Index>& counts,
                T* out) {
  all_gather_raw(comm, local, counts, out, datatype_of<T>());
}
template <class T>
void gather(const Communicator& comm, const T* local, const std::vector<Index>& counts, T* out,
            int root) {
  gather_raw(comm, local, counts, out, datatype_of<T>(), root);
}

/// Rows [0, rows) split over the ranks by shard_rows, `width` elements each:
/// concatenates every rank's rows (`local`, its shard_rows(rows, comm) of them)
/// into `out` (rows x width elements, row-major) on every rank.
template <class T>
void all_gather_shards(const Communicator& comm, Index rows, Index width, const T* local, T* out) {
  std::vector<Index> counts(static_cast<std::size_t>(comm.size()));
  for (int r = 0; r < comm.size(); ++r) {
    counts[static_cast<std::size_t>(r)] = shard_rows(rows, r, comm.size()).size() * width;
  }
  all_gather(comm, local, counts, out);
}

/// Items [0, count) split over the ranks by shard_rows, each rank having
/// filled its own: afterwards every rank holds every item (in place).
template <class T>
void all_gather_items(const Communicator& comm, Index count, std::vector<T>& items) {
  if (!comm.distributed()) return;
  const RowRange mine = shard_rows(count, comm);
  const std::vector<T> local(items.begin() + mine.begin, items.begin() + mine.end);
  all_gather_shards(comm, count, 1, local.data(), items.data());
}

/// The same for strings (any length, any bytes).
void all_gather_items(const Communicator& comm, Index count, std::vector<std::string>& items);

/// The rank whose shard_rows(count, rank, size) holds item `item`.
int owner_of(Index count, int size, Index item);

/// sum_i x_i over every rank's values in rank order, added one at a time in
/// long double exactly as one process adding all of them in order would: the
/// running sum travels from rank 0 to rank P - 1 and the total is broadcast.
long double ordered_sum(const Communicator& comm, const std::vector<long double>& local_terms);

/// After a step that may have failed on some ranks only: every rank learns
/// whether any failed, and if so every rank throws the error of the lowest
/// failing rank (invalid_argument stays invalid_argument, with its message;
/// interrupted stays interrupted). Keeps ranks from waiting forever in the
/// next collective for a rank that has thrown. No-op for one process.
void agree(const Communicator& comm, std::exception_ptr local_error);

}  // namespace measattn::detail
