// Communicator and the collectives of collectives.hpp, over MPI when measattn is
// built with MEASATTN_MPI, else for the calling process alone.
#include "measattn/communicator.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "common/collectives.hpp"
#include "measattn/error.hpp"

#if MEASATTN_HAS_MPI
#include <mpi.h>
#endif

namespace measattn {

#if MEASATTN_HAS_MPI
namespace detail {

struct CommunicatorImpl {
  MPI_Comm comm = MPI_COMM_NULL;
  int rank = 0, size = 1;
  ~CommunicatorImpl() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && comm != MPI_COMM_NULL) MPI_Comm_free(&comm);
  }
};

namespace {

void check(int code, const char* what) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  throw std::runtime_error(std::string("MPI: ") + what + ": " + std::string(text, length));
}

MPI_Datatype mpi_type(Datatype t) {
  switch (t) {
    case Datatype::f32:
      return MPI_FLOAT;
    case Datatype::f64:
      return MPI_DOUBLE;
    case Datatype::f80:
      return MPI_LONG_DOUBLE;
    case Datatype::i64:
      return MPI_INT64_T;
    case Datatype::u8:
      return MPI_UNSIGNED_CHAR;
  }
  return MPI_BYTE;
}

std::size_t type_size(Datatype t) {
  int bytes = 0;
  MPI_Type_size(mpi_type(t), &bytes);
  return static_cast<std::size_t>(bytes);
}

// MPI counts are int: longer messages go in pieces of at most 2^30 elements.
constexpr std::size_t kPiece = std::size_t(1) << 30;

MPI_Comm mpi_comm(const Communicator& c) { return c.impl() ? c.impl()->comm : MPI_COMM_NULL; }

std::shared_ptr<const CommunicatorImpl> duplicate(MPI_Comm source) {
  auto impl = std::make_shared<CommunicatorImpl>();
  check(MPI_Comm_dup(source, &impl->comm), "MPI_Comm_dup");
  // Errors come back as codes (check() turns them into exceptions), never abort.
  MPI_Comm_set_errhandler(impl->comm, MPI_ERRORS_RETURN);
  MPI_Comm_rank(impl->comm, &impl->rank);
  MPI_Comm_size(impl->comm, &impl->size);
  return impl;
}

void finalize_at_exit() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

}  // namespace

struct Pending::Impl {
  std::vector<MPI_Request> requests;
};

}  // namespace detail

int Communicator::rank() const { return impl_ ? impl_->rank : 0; }
int Communicator::size() const { return impl_ ? impl_->size : 1; }
bool Communicator::mpi_enabled() { return true; }

Communicator Communicator::world() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    detail::check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided),
                  "MPI_Init_thread");
    std::atexit(detail::finalize_at_exit);
  }
  return Communicator(detail::duplicate(MPI_COMM_WORLD));
}

Communicator Communicator::from_fortran(std::int64_t handle) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) {
    throw invalid_argument("communicator: MPI is not initialized (or already finalized)");
  }
  const MPI_Comm comm = MPI_Comm_f2c(static_cast<MPI_Fint>(handle));
  if (comm == MPI_COMM_NULL) throw invalid_argument("communicator: the null communicator");
  int inter = 0;
  if (MPI_Comm_test_inter(comm, &inter) != MPI_SUCCESS) {
    throw invalid_argument("communicator: not a valid MPI communicator handle");
  }
  if (inter)
    throw invalid_argument("communicator: an intercommunicator (need an intracommunicator)");
  return Communicator(detail::duplicate(comm));
}

#else  // no MPI

namespace detail {
struct CommunicatorImpl {};
struct Pending::Impl {};
}  // namespace detail

int Communicator::rank() const { return 0; }
int Communicator::size() const { return 1; }
bool Communicator::mpi_enabled() { return false; }
Communicator Communicator::world() {
  throw invalid_argument("communicator: this measattn was built without MPI (MEASATTN_MPI=OFF)");
}
Communicator Communicator::from_fortran(std::int64_t) {
  throw invalid_argument("communicator: this measattn was built without MPI (MEASATTN_MPI=OFF)");
}

#endif

bool Communicator::launched_by_mpi() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK",
                           "MPI_LOCALNRANKS", "MV2_COMM_WORLD_SIZE"}) {
    if (std::getenv(name) != nullptr) return true;
  }
  return false;
}

RowRange shard_rows(Index n, int rank, int size) {
  if (n < 0) throw invalid_argument("rows: must be >= 0");
  if (size < 1 || rank < 0 || rank >= size) {
    throw invalid_argument("rank: " + std::to_string(rank) + " is not in [0, " +
                           std::to_string(size) + ")");
  }
  const Index base = n / size, extra = n % size;
  const Index begin = rank * base + std::min<Index>(rank, extra);
  return RowRange{begin, begin + base + (rank < extra ? 1 : 0)};
}

namespace detail {

Pending::Pending() = default;
Pending::Pending(Pending&&) noexcept = default;
Pending& Pending::operator=(Pending&& other) noexcept {
  if (this != &other) {
    wait();
    impl = std::move(other.impl);
  }
  return *this;
}
Pending::~Pending() {
  try {
    wait();
  } catch (...) {
    // A destructor must not throw; the operation's error was or will be seen
    // by the collective that follows.
  }
}

#if MEASATTN_HAS_MPI

void Pending::wait() {
  if (!impl || impl->requests.empty()) return;
  check(MPI_Waitall(static_cast<int>(impl->requests.size()), impl->requests.data(),
                    MPI_STATUSES_IGNORE),
        "MPI_Waitall");
  impl->requests.clear();
}

void Pending::absorb(Pending&& other) {
  if (!other.impl) return;
  if (!impl) impl = std::make_unique<Impl>();
  for (MPI_Request r : other.impl->requests) impl->requests.push_back(r);
  other.impl->requests.clear();
}

bool Pending::test() {
  if (!impl || impl->requests.empty()) return true;
  int done = 0;
  check(MPI_Testall(static_cast<int>(impl->requests.size()), impl->requests.data(), &done,
                    MPI_STATUSES_IGNORE),
        "MPI_Testall");
  if (done) impl->requests.clear();
  return done != 0;
}

void barrier(const Communicator& comm) {
  if (comm.distributed()) check(MPI_Barrier(mpi_comm(comm)), "MPI_Barrier");
}

std::vector<std::int64_t> allgather(const Communicator& comm, std::int64_t value) {
  std::vector<std::int64_t> out(static_cast<std::size_t>(comm.size()), value);
  if (comm.distributed()) {
    check(MPI_Allgather(&value, 1, MPI_INT64_T, out.data(), 1, MPI_INT64_T, mpi_comm(comm)),
          "MPI_Allgather");
  }
  return out;
}

void broadcast_raw(const Communicator& comm, void* data, std::size_t count, Datatype type,
                   int root) {
  ibroadcast_raw(comm, data, count, type, root).wait();
}

Pending ibroadcast_raw(const Communicator& comm, void* data, std::size_t count, Datatype type,
                       int root) {
  Pending pending;
  if (!comm.distributed() || count == 0) return pending;
  pending.impl = std::make_unique<Pending::Impl>();
  const std::size_t bytes = type_size(type);
  for (std::size_t offset = 0; offset < count; offset += kPiece) {
    const int piece = static_cast<int>(std::min(kPiece, count - offset));
    MPI_Request request;
    check(MPI_Ibcast(static_cast<char*>(data) + offset * bytes, piece, mpi_type(type), root,
                     mpi_comm(comm), &request),
          "MPI_Ibcast");
    pending.impl->requests.push_back(request);
  }
  return pending;
}

namespace {

// Point-to-point exchange of variable-sized blocks in pieces: every rank sends
// its block to `root` (or to every rank when root < 0).
void gather_blocks(const Communicator& comm, const void* local, const std::vector<Index>& counts,
                   void* out, Datatype type, int root) {
  const int p = comm.size(), me = comm.rank();
  const std::size_t bytes = type_size(type);
  std::vector<std::size_t> offsets(static_cast<std::size_t>(p) + 1, 0);
  for (int r = 0; r < p; ++r) {
    offsets[static_cast<std::size_t>(r) + 1] =
        offsets[static_cast<std::size_t>(r)] + static_cast<std::size_t>(counts[r]);
  }
  const bool all = root < 0;
  const bool receive = all || me == root;
  if (receive && out != nullptr && counts[me] > 0) {
    std::memcpy(static_cast<char*>(out) + offsets[static_cast<std::size_t>(me)] * bytes, local,
                static_cast<std::size_t>(counts[me]) * bytes);
  }
  std::vector<MPI_Request> requests;
  constexpr int kTag = 7301;
  auto post = [&](bool send, void* buffer, std::size_t count, int peer) {
    for (std::size_t offset = 0; offset < count; offset += kPiece) {
      const int piece = static_cast<int>(std::min(kPiece, count - offset));
      MPI_Request request;
      char* at = static_cast<char*>(buffer) + offset * bytes;
      if (send) {
        check(MPI_Isend(at, piece, mpi_type(type), peer, kTag, mpi_comm(comm), &request),
              "MPI_Isend");
      } else {
        check(MPI_Irecv(at, piece, mpi_type(type), peer, kTag, mpi_comm(comm), &request),
              "MPI_Irecv");
      }
      requests.push_back(request);
    }
  };
  for (int r = 0; r < p; ++r) {
    if (r == me) continue;
    if (receive && counts[r] > 0) {
      post(false, static_cast<char*>(out) + offsets[static_cast<std::size_t>(r)] * bytes,
           static_cast<std::size_t>(counts[r]), r);
    }
    if ((all || r == root) && counts[me] > 0) {
      post(true, const_cast<void*>(local), static_cast<std::size_t>(counts[me]), r);
    }
  }
  if (!requests.empty()) {
    check(MPI_Waitall(static_cast<int>(requests.size()), requests.data(), MPI_STATUSES_IGNORE),
          "MPI_Waitall");
  }
}

}  // namespace

void all_gather_raw(const Communicator& comm, const void* local, const std::vector<Index>& counts,
                    void* out, Datatype type) {
  if (!comm.distributed()) {
    if (counts[0] > 0)
      std::memcpy(out, local, static_cast<std::size_t>(counts[0]) * type_size(type));
    return;
  }
  gather_blocks(comm, local, counts, out, type, -1);
}

void gather_raw(const Communicator& comm, const void* local, const std::vector<Index>& counts,
                void* out, Datatype type, int root) {
  if (!comm.distributed()) {
    if (counts[0] > 0)
      std::memcpy(out, local, static_cast<std::size_t>(counts[0]) * type_size(type));
    return;
  }
  gather_blocks(comm, local, counts, out, type, root);
}

long double ordered_sum(const Communicator& comm, const std::vector<long double>& local_terms) {
  long double total = 0;
  const int me = comm.rank(), p = comm.size();
  constexpr int kTag = 7302;
  if (me > 0) {
    check(MPI_Recv(&total, 1, MPI_LONG_DOUBLE, me - 1, kTag, mpi_comm(comm), MPI_STATUS_IGNORE),
          "MPI_Recv");
  }
  for (const long double t : local_terms) total += t;
  if (p > 1) {
    if (me < p - 1) {
      check(MPI_Send(&total, 1, MPI_LONG_DOUBLE, me + 1, kTag, mpi_comm(comm)), "MPI_Send");
    }
    check(MPI_Bcast(&total, 1, MPI_LONG_DOUBLE, p - 1, mpi_comm(comm)), "MPI_Bcast");
  }
  return total;
}

void agree(const Communicator& comm, std::exception_ptr local_error) {
  if (!comm.distributed()) {
    if (local_error) std::rethrow_exception(local_error);
    return;
  }
  // 0 none, 1 invalid_argument, 2 interrupted, 3 anything else.
  int kind = 0;
  std::string message;
  if (local_error) {
    try {
      std::rethrow_exception(local_error);
    } catch (const invalid_argument& e) {
      kind = 1;
      message = e.what();
    } catch (const interrupted& e) {
      kind = 2;
      message = e.what();
    } catch (const std::exception& e) {
      kind = 3;
      message = e.what();
    } catch (...) {
      kind = 3;
      message = "unknown error";
    }
  }
  const int mine = kind ? comm.rank() : comm.size();
  int first = comm.size();
  check(MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, mpi_comm(comm)), "MPI_Allreduce");
  if (first == comm.size()) return;
  std::int64_t header[2] = {kind, static_cast<std::int64_t>(message.size())};
  broadcast(comm, header, 2, first);
  message.resize(static_cast<std::size_t>(header[1]));
  broadcast(comm, message.data(), message.size(), first);
  if (comm.rank() == first) std::rethrow_exception(local_error);
  if (header[0] == 1) throw invalid_argument(message);
  if (header[0] == 2) throw interrupted(message);
  throw std::runtime_error("rank " + std::to_string(first) + ": " + message);
}

#else  // no MPI: one process

void Pending::wait() {}
bool Pending::test() { return true; }
void Pending::absorb(Pending&&) {}
void barrier(const Communicator&) {}
std::vector<std::int64_t> allgather(const Communicator&, std::int64_t value) { return {value}; }
void broadcast_raw(const Communicator&, void*, std::size_t, Datatype, int) {}
Pending ibroadcast_raw(const Communicator&, void*, std::size_t, Datatype, int) { return {}; }

namespace {
std::size_t type_size(Datatype t) {
  switch (t) {
    case Datatype::f32:
      return sizeof(float);
    case Datatype::f64:
      return sizeof(double);
    case Datatype::f80:
      return sizeof(long double);
    case Datatype::i64:
      return sizeof(std::int64_t);
    case Datatype::u8:
      return 1;
  }
  return 1;
}
}  // namespace

void all_gather_raw(const Communicator&, const void* local, const std::vector<Index>& counts,
                    void* out, Datatype type) {
  if (counts[0] > 0) std::memcpy(out, local, static_cast<std::size_t>(counts[0]) * type_size(type));
}
void gather_raw(const Communicator&, const void* local, const std::vector<Index>& counts, void* out,
                Datatype type, int) {
  if (counts[0] > 0) std::memcpy(out, local, static_cast<std::size_t>(counts[0]) * type_size(type));
}
long double ordered_sum(const Communicator&, const std::vector<long double>& local_terms) {
  long double total = 0;
  for (const long double t : local_terms) total += t;
  return total;
}
void agree(const Communicator&, std::exception_ptr local_error) {
  if (local_error) std::rethrow_exception(local_error);
}

#endif

// Written on the collectives above, so the same for one process and for MPI.
void all_gather_items(const Communicator& comm, Index count, std::vector<std::string>& items) {
  if (!comm.distributed()) return;
  const RowRange mine = shard_rows(count, comm);
  // Each rank sends its strings' lengths, then their bytes concatenated.
  std::vector<std::int64_t> lengths(static_cast<std::size_t>(count), 0);
  std::string bytes;
  for (Index i = mine.begin; i < mine.end; ++i) {
    lengths[static_cast<std::size_t>(i)] =
        static_cast<std::int64_t>(items[static_cast<std::size_t>(i)].size());
    bytes += items[static_cast<std::size_t>(i)];
  }
  all_gather_items(comm, count, lengths);
  const std::vector<std::int64_t> per_rank =
      allgather(comm, static_cast<std::int64_t>(bytes.size()));
  std::vector<Index> counts(per_rank.begin(), per_rank.end());
  std::int64_t total = 0;
  for (std::int64_t c : per_rank) total += c;
  std::string all(static_cast<std::size_t>(total), '\0');
  all_gather(comm, bytes.data(), counts, all.data());
  std::size_t at = 0;
  for (Index i = 0; i < count; ++i) {
    const auto len = static_cast<std::size_t>(lengths[static_cast<std::size_t>(i)]);
    items[static_cast<std::size_t>(i)] = all.substr(at, len);
    at += len;
  }
}

int owner_of(Index count, int size, Index item) {
  if (item < 0 || item >= count) throw invalid_argument("item: out of range");
  for (int r = 0; r < size; ++r) {
    const RowRange range = shard_rows(count, r, size);
    if (item >= range.begin && item < range.end) return r;
  }
  return size - 1;  // unreachable: the shards cover [0, count)
}

}  // namespace detail
}  // namespace measattn
