// Distributed attention (docs/distributed.md): queries split over the ranks,
// keys and values sent from rank to rank in key order, the online log-sum-exp
// state of every query row carried across the pieces.
//
// Bit-identity with one process. The streaming kernel visits the key blocks of
// size bk in key order and keeps, per query row, a running maximum, sum and
// accumulator; floating-point merging of such states is not associative, so
// the distributed computation must present every row with the same blocks in
// the same order. Each step broadcasts one rank's keys (its positive-weight
// atoms, log-weights and global positions), in rank order, to every rank
// (MPI_Ibcast, the next rank's keys in flight while this step computes); a
// staging buffer cuts the stream into the one-process key blocks (the same bk,
// derived from the total key count), and the kernel continues each row's state
// from block to block (StreamState). A rotating ring would move the same
// volume, but would visit the blocks in a rank-dependent order.
//
// The weights are normalized by the total over all ranks summed in index
// order in long double (ordered_sum), as Measure does, so the log-weights are
// the same bits; the queries are projected row by row as in one process.
#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>
#include <string>
#include <vector>

#include "attention/internal.hpp"
#include "attention/tiles.hpp"
#include "common/collectives.hpp"
#include "measattn/attention.hpp"
#include "measattn/error.hpp"

namespace measattn {
namespace detail {
namespace {

/// One rank's keys as they travel: m rows of atoms, log-weights, positions.
template <class Scalar>
struct KeyPart {
  Matrix<Scalar> atoms;
  std::vector<Scalar> log_weights;
  std::vector<Index> positions;
  void resize(Index m, Index d) {
    atoms.resize(m, d);
    log_weights.resize(static_cast<size_t>(m));
    positions.resize(static_cast<size_t>(m));
  }
};

std::string count_text(Index n) { return std::to_string(n); }

/// The shard driver: `weights` are this rank's normalized weights (the whole
/// measure's, divided by the total over all ranks).
template <class Scalar>
Matrix<Scalar> distributed_field(const Model<Scalar>& model, const MatrixRef<Scalar>& atoms,
                                 const Vector<Scalar>& weights, Index key_offset,
                                 const MatrixRef<Scalar>& queries, Index query_offset,
                                 const AttendOptions& options) {
  const Communicator& comm = options.communicator;
  const int ranks = comm.size(), me = comm.rank();
  const Index d = atoms.cols();
  const Index n = queries.rows();
  const Index heads = model.num_heads;
  constexpr Index L = Simd<Scalar>::L;
  const Index k_pad = round_up(model.head_dim(), L);

  // This rank's keys: the atoms of positive weight, with global positions.
  KeyPart<Scalar> own;
  {
    Index m = 0;
    for (Index j = 0; j < atoms.rows(); ++j) m += weights[j] > 0 ? 1 : 0;
    own.resize(m, d);
    Index t = 0;
    for (Index j = 0; j < atoms.rows(); ++j) {
      if (!(weights[j] > 0)) continue;
      own.atoms.row(t) = atoms.row(j);
      own.log_weights[static_cast<size_t>(t)] = std::log(weights[j]);
      own.positions[static_cast<size_t>(t)] = key_offset + j;
      ++t;
    }
  }
  const std::vector<std::int64_t> counts = allgather(comm, own.atoms.rows());
  const std::vector<std::int64_t> firsts =
      allgather(comm, own.atoms.rows() ? own.positions[0] : std::numeric_limits<Index>::max());
  Index total_keys = 0;
  for (const auto c : counts) total_keys += c;
  if (total_keys == 0) throw invalid_argument("weights: every token has weight zero");
  if (options.causal && *std::min_element(firsts.begin(), firsts.end()) > 0) {
    throw invalid_argument("weights: with causal masking, query 0 sees only tokens of zero weight");
  }

  // The one-process key block (attention.cpp: streaming_attention).
  const Index chunk = kLogitPackets * L;
  const Index bk = std::min(round_up(options.key_block > 0 ? options.key_block : 256, chunk),
                            round_up(total_keys, chunk));
  AttendOptions block_options = options;
  block_options.key_block = bk;
  block_options.communicator = Communicator();

  StreamState<Scalar> state;
  state.rows = n;
  state.k_pad = k_pad;
  state.max.assign(static_cast<size_t>(heads * n), -std::numeric_limits<Scalar>::infinity());
  state.sum.assign(static_cast<size_t>(heads * n), Scalar(0));
  state.acc.assign(static_cast<size_t>(heads * n * k_pad), Scalar(0));

  // The ranks whose keys travel, in rank order.
  std::vector<int> senders;
  for (int r = 0; r < ranks; ++r)
    if (counts[static_cast<size_t>(r)] > 0) senders.push_back(r);

  KeyPart<Scalar> inbox[2];
  KeyPart<Scalar> staged;  // keys received and not yet computed: < bk of them between steps
  staged.resize(0, d);
  Index staged_rows = 0;
  Matrix<Scalar> result(n, model.out_dim());
  // Declared after the buffers they fill: destroyed (waited for) before them.
  Pending flight[2];

  auto part_of = [&](size_t step) -> KeyPart<Scalar>& {
    return senders[step] == me ? own : inbox[step % 2];
  };
  auto start = [&](size_t step) {
    const int root = senders[step];
    KeyPart<Scalar>& part = part_of(step);
    if (root != me) part.resize(counts[static_cast<size_t>(root)], d);
    const size_t m = static_cast<size_t>(part.atoms.rows());
    Pending all = ibroadcast(comm, part.atoms.data(), m * static_cast<size_t>(d), root);
    all.absorb(ibroadcast(comm, part.log_weights.data(), m, root));
    all.absorb(ibroadcast(comm, part.positions.data(), m, root));
    flight[step % 2] = std::move(all);
  };

  if (!senders.empty()) start(0);
  for (size_t step = 0; step < senders.size(); ++step) {
    flight[step % 2].wait();
    if (step + 1 < senders.size()) start(step + 1);  // in flight while this step computes
    std::exception_ptr error;
    try {
      const KeyPart<Scalar>& part = part_of(step);
      const Index m = part.atoms.rows();
      if (staged.atoms.rows() < staged_rows + m) {
        const Index capacity = staged_rows + m;
        staged.atoms.conservativeResize(capacity, d);
        staged.log_weights.resize(static_cast<size_t>(capacity));
        staged.positions.resize(static_cast<size_t>(capacity));
      }
      staged.atoms.middleRows(staged_rows, m) = part.atoms;
      std::copy_n(part.log_weights.begin(), m, staged.log_weights.begin() + staged_rows);
      std::copy_n(part.positions.begin(), m, staged.positions.begin() + staged_rows);
      staged_rows += m;
      // Whole key blocks now, keeping at least one key back for the last call
      // (which divides and projects); everything at the last step.
      const bool last = step + 1 == senders.size();
      const Index take = last ? staged_rows : (staged_rows - 1) / bk * bk;
      if (take > 0 && n > 0) {
        state.finalize = last;
        Matrix<Scalar> out = streaming_attention<Scalar>(
            model,
            StreamKeys<Scalar>{staged.atoms.topRows(take), staged.log_weights.data(),
                               staged.positions.data()},
            queries, block_options, true, &state, query_offset);
        if (last) result = std::move(out);
      }
      if (take > 0 && take < staged_rows) {
        const Index rest = staged_rows - take;
        // Rows move to the front (rest < bk <= take: the ranges do not overlap).
        staged.atoms.topRows(rest) = staged.atoms.middleRows(take, rest).eval();
        std::copy_n(staged.log_weights.begin() + take, rest, staged.log_weights.begin());
        std::copy_n(staged.positions.begin() + take, rest, staged.positions.begin());
      }
      staged_rows -= take;
    } catch (...) {
      error = std::current_exception();
    }
    agree(comm, error);
  }
  return result;
}

template <class Scalar>
void check_shard(const Model<Scalar>& model, const MatrixRef<Scalar>& atoms,
                 const Eigen::Ref<const Vector<Scalar>>& weights, const MatrixRef<Scalar>& queries,
                 const AttendOptions& options) {
  model.validate();
  if (options.normalization != Normalization::softmax) {
    throw invalid_argument(
        "normalization: distributed attention is softmax attention only (sinkhorn needs every "
        "token's column sums on every rank)");
  }
  check_options(model, options);
  if (atoms.cols() != model.key_dim()) {
    throw invalid_argument("tokens: atoms have dimension " + count_text(atoms.cols()) +
                           " but the model's keys have dimension " + count_text(model.key_dim()));
  }
  if (queries.cols() != model.query_dim()) {
    throw invalid_argument("queries: dimension " + count_text(queries.cols()) +
                           " but the model's queries have dimension " +
                           count_text(model.query_dim()));
  }
  if (weights.size() != atoms.rows()) {
    throw invalid_argument("weights: " + count_text(weights.size()) + " weights for " +
                           count_text(atoms.rows()) + " atoms");
  }
  for (Index i = 0; i < atoms.rows(); ++i) {
    for (Index c = 0; c < atoms.cols(); ++c) {
      if (!std::isfinite(atoms(i, c))) {
        throw invalid_argument("atoms: coordinate " + count_text(c) + " of local atom " +
                               count_text(i) + " is not finite");
      }
    }
    const Scalar w = weights[i];
    if (std::isnan(w)) throw invalid_argument("weights: local weight " + count_text(i) + " is NaN");
    if (!std::isfinite(w)) {
      throw invalid_argument("weights: local weight " + count_text(i) + " is infinite");
    }
    if (w < 0) throw invalid_argument("weights: local weight " + count_text(i) + " is negative");
  }
  if (!queries.allFinite()) throw invalid_argument("queries: contains a NaN or infinite entry");
}

}  // namespace
}  // namespace detail

template <class Scalar>
Matrix<Scalar> attention_field_shard(
    const Model<Scalar>& model, const MatrixRef<Scalar>& atoms,
    const Eigen::Ref<const Vector<std::type_identity_t<Scalar>>>& weights,
    const MatrixRef<Scalar>& queries, const AttendOptions& options) {
  const Communicator& comm = options.communicator;
  std::exception_ptr error;
  try {
    detail::check_shard<Scalar>(model, atoms, weights, queries, options);
  } catch (...) {
    error = std::current_exception();
  }
  detail::agree(comm, error);
  // Where this rank's rows start, and the total weight summed in index order
  // (as Measure's constructor does in one process).
  const std::vector<std::int64_t> key_counts = detail::allgather(comm, atoms.rows());
  const std::vector<std::int64_t> query_counts = detail::allgather(comm, queries.rows());
  Index key_offset = 0, query_offset = 0, total_queries = 0;
  for (int r = 0; r < comm.size(); ++r) {
    if (r < comm.rank()) {
      key_offset += key_counts[static_cast<size_t>(r)];
      query_offset += query_counts[static_cast<size_t>(r)];
    }
    total_queries += query_counts[static_cast<size_t>(r)];
  }
  if (total_queries == 0) throw invalid_argument("queries: no queries");
  std::vector<long double> terms(static_cast<size_t>(weights.size()));
  for (Index i = 0; i < weights.size(); ++i) terms[static_cast<size_t>(i)] = weights[i];
  const long double total = detail::ordered_sum(comm, terms);
  if (!(total > 0)) throw invalid_argument("weights: the weights sum to zero");
  if (!std::isfinite(static_cast<double>(total))) {
    throw invalid_argument("weights: the sum of the weights overflows");
  }
  Vector<Scalar> normalized = weights;
  if (total != 1) {
    for (Index i = 0; i < normalized.size(); ++i) {
      normalized[i] = static_cast<Scalar>(static_cast<long double>(weights[i]) / total);
    }
  }
  Matrix<Scalar> out = detail::distributed_field<Scalar>(model, atoms, normalized, key_offset,
                                                         queries, query_offset, options);
  error = nullptr;
  try {
    detail::check_finite_result<Scalar>(model, atoms, queries, false, out);
  } catch (...) {
    error = std::current_exception();
  }
  detail::agree(comm, error);
  return out;
}

namespace detail {

template <class Scalar>
Matrix<Scalar> distributed_attention_field(const Model<Scalar>& model, const Measure<Scalar>& mu,
                                           const MatrixRef<Scalar>& queries,
                                           const AttendOptions& options) {
  const Communicator& comm = options.communicator;
  const RowRange keys = shard_rows(mu.size(), comm);
  const RowRange rows = shard_rows(queries.rows(), comm);
  const Vector<Scalar> weights = mu.weights().segment(keys.begin, keys.size());
  const Matrix<Scalar> local = distributed_field<Scalar>(
      model, mu.atoms().middleRows(keys.begin, keys.size()), weights, keys.begin,
      queries.middleRows(rows.begin, rows.size()), rows.begin, options);
  // Every rank gets the whole result.
  Matrix<Scalar> out(queries.rows(), model.out_dim());
  all_gather_shards(comm, queries.rows(), model.out_dim(), local.data(), out.data());
  return out;
}

#define MEASATTN_INSTANTIATE(S)                                                      \
  template Matrix<S> distributed_attention_field(const Model<S>&, const Measure<S>&, \
                                                 const MatrixRef<S>&, const AttendOptions&);
MEASATTN_INSTANTIATE(float)
MEASATTN_INSTANTIATE(double)
#undef MEASATTN_INSTANTIATE

}  // namespace detail

#define MEASATTN_INSTANTIATE(S)                                                  \
  template Matrix<S> attention_field_shard(const Model<S>&, const MatrixRef<S>&, \
                                           const Eigen::Ref<const Vector<S>>&,   \
                                           const MatrixRef<S>&, const AttendOptions&);
MEASATTN_INSTANTIATE(float)
MEASATTN_INSTANTIATE(double)
#undef MEASATTN_INSTANTIATE

}  // namespace measattn
