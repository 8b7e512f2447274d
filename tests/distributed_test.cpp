// Distributed attention (docs/distributed.md): bit-identical to one process
// whatever the number of ranks and the split of the rows.
//
// Run as one process (ctest's discovered tests: the Communicator is the
// process alone) and under `mpirun --oversubscribe -np P` for P = 2, 3, 4
// (tests/CMakeLists.txt, the mpi.* tests): every rank computes the
// one-process reference itself and compares its rows with it.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>

#include "measattn/attention.hpp"
#include "measattn/communicator.hpp"
#include "measattn/error.hpp"
#include "measattn/flow.hpp"
#include "test_communicator.hpp"
#include "test_measures.hpp"

namespace measattn {
namespace {

const Communicator& comm() { return testing::test_communicator(); }

template <class Scalar>
bool same_bits(const Matrix<Scalar>& a, const Matrix<Scalar>& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
  // +0 and -0 compare equal; everything else must be the same bits.
  for (Index i = 0; i < a.size(); ++i) {
    if (!(a.data()[i] == b.data()[i])) return false;
  }
  return true;
}

template <class Scalar>
void expect_distributed_equals_one_process(const Model<Scalar>& model, const Measure<Scalar>& mu,
                                           const Matrix<Scalar>& queries, AttendOptions options,
                                           const std::string& what) {
  const Matrix<Scalar> reference = attention_field(model, mu, queries, options);
  options.communicator = comm();
  const Matrix<Scalar> whole = attention_field(model, mu, queries, options);
  EXPECT_TRUE(same_bits(reference, whole)) << what << " on " << comm().size() << " ranks";
}

TEST(distributed_test, shard_rows_cover_every_row_once_in_rank_order) {
  for (Index n : {0, 1, 5, 16, 97}) {
    for (int p = 1; p <= 7; ++p) {
      Index next = 0;
      for (int r = 0; r < p; ++r) {
        const RowRange range = shard_rows(n, r, p);
        EXPECT_EQ(range.begin, next);
        EXPECT_GE(range.size(), n / p);
        EXPECT_LE(range.size(), n / p + 1);
        next = range.end;
      }
      EXPECT_EQ(next, n);
    }
  }
  EXPECT_THROW(shard_rows(4, 3, 3), invalid_argument);
  EXPECT_THROW(shard_rows(-1, 0, 1), invalid_argument);
}

TEST(distributed_test, self_cross_causal_residual_bit_identical) {
  const MeasureD mu = testing::random_measure(203, 6, 11);
  const MeasureD holes = testing::random_measure(203, 6, 12, /*zero_every=*/4);
  const MatrixD queries = testing::random_measure(77, 6, 13).atoms();
  for (const Potential potential : {Potential::dot, Potential::l2, Potential::cosine}) {
    const Model<double> model = Model<double>::random(6, 2, true, 5, potential);
    const std::string name = to_string(potential);
    for (const Index key_block : {Index(0), Index(24), Index(48)}) {
      AttendOptions o;
      o.key_block = key_block;
      const std::string kb = " key_block " + std::to_string(key_block);
      expect_distributed_equals_one_process(model, mu, mu.atoms(), o, name + " self" + kb);
      expect_distributed_equals_one_process(model, holes, holes.atoms(), o,
                                            name + " zero weights" + kb);
      expect_distributed_equals_one_process(model, mu, queries, o, name + " cross" + kb);
      o.causal = true;
      expect_distributed_equals_one_process(model, mu, mu.atoms(), o, name + " causal" + kb);
      expect_distributed_equals_one_process(model, holes, holes.atoms(), o,
                                            name + " causal, zero weights" + kb);
      o.residual = true;
      expect_distributed_equals_one_process(model, mu, mu.atoms(), o,
                                            name + " causal residual" + kb);
    }
  }
}

TEST(distributed_test, float_and_fewer_tokens_than_ranks) {
  const MeasureF mu = testing::random_measure(203, 4, 21).cast<float>();
  const Model<float> model = Model<double>::random(4, 1, true, 9).cast<float>();
  expect_distributed_equals_one_process(model, mu, mu.atoms(), AttendOptions{}, "float self");
  const MeasureD tiny = testing::random_measure(2, 4, 22);
  expect_distributed_equals_one_process(Model<double>::random(4, 2, false, 3), tiny, tiny.atoms(),
                                        AttendOptions{}, "two tokens");
  AttendOptions causal;
  causal.causal = true;
  expect_distributed_equals_one_process(Model<double>::random(4, 2, false, 3), tiny, tiny.atoms(),
                                        causal, "two tokens, causal");
}

// The shard form: each rank passes only its rows, of any size (here uneven,
// one rank empty when P >= 3), with weights that do not sum to one.
TEST(distributed_test, shards_of_any_size_with_unnormalized_weights) {
  const Index n = 150;
  const MeasureD mu = testing::random_measure(n, 5, 31, /*zero_every=*/7);
  VectorD raw = mu.weights() * 3.7;  // the whole measure divides by the total
  const Model<double> model = Model<double>::random(5, 1, true, 17);
  const int p = comm().size(), me = comm().rank();
  // Rank r holds a share proportional to r + 1, rank 1 none when p >= 3.
  std::vector<Index> sizes(static_cast<size_t>(p));
  Index assigned = 0, total_share = 0;
  for (int r = 0; r < p; ++r) total_share += (p >= 3 && r == 1) ? 0 : r + 1;
  for (int r = 0; r < p; ++r) {
    const Index share = (p >= 3 && r == 1) ? 0 : r + 1;
    sizes[static_cast<size_t>(r)] = r == p - 1 ? n - assigned : n * share / total_share;
    assigned += sizes[static_cast<size_t>(r)];
  }
  Index begin = 0;
  for (int r = 0; r < me; ++r) begin += sizes[static_cast<size_t>(r)];
  const Index rows = sizes[static_cast<size_t>(me)];
  for (const bool causal : {false, true}) {
    AttendOptions o;
    o.causal = causal;
    o.key_block = 24;
    const MatrixD reference = attention_field(model, MeasureD(mu.atoms(), raw), mu.atoms(), o);
    o.communicator = comm();
    const MatrixD mine =
        attention_field_shard(model, mu.atoms().middleRows(begin, rows), raw.segment(begin, rows),
                              mu.atoms().middleRows(begin, rows), o);
    EXPECT_TRUE(same_bits(MatrixD(reference.middleRows(begin, rows)), mine))
        << "rank " << me << " of " << p << (causal ? " causal" : "");
  }
}

TEST(distributed_test, an_error_on_one_rank_is_thrown_on_every_rank) {
  const MeasureD mu = testing::random_measure(40, 3, 41);
  const Model<double> model = Model<double>::random(3, 1, false, 2);
  const RowRange mine = shard_rows(40, comm());
  MatrixD atoms = mu.atoms().middleRows(mine.begin, mine.size());
  VectorD w = mu.weights().segment(mine.begin, mine.size());
  const int bad = comm().size() - 1;  // the last rank has a negative weight
  if (comm().rank() == bad && w.size() > 0) w[0] = -1;
  AttendOptions o;
  o.communicator = comm();
  try {
    attention_field_shard(model, atoms, w, atoms, o);
    ADD_FAILURE() << "no error on rank " << comm().rank();
  } catch (const invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()), "weights: local weight 0 is negative");
  }
  o.normalization = Normalization::sinkhorn;
  o.sinkhorn_iterations = 3;
  if (comm().distributed()) {
    EXPECT_THROW(attention_field(model, mu, mu.atoms(), o), invalid_argument);
  }
}

TEST(distributed_test, zero_total_weight_and_causal_without_a_first_token) {
  const MeasureD mu = testing::random_measure(30, 3, 51);
  const Model<double> model = Model<double>::random(3, 1, false, 2);
  const RowRange mine = shard_rows(30, comm());
  MatrixD atoms = mu.atoms().middleRows(mine.begin, mine.size());
  AttendOptions o;
  o.communicator = comm();
  VectorD zero = VectorD::Zero(mine.size());
  EXPECT_THROW(attention_field_shard(model, atoms, zero, atoms, o), invalid_argument);
  VectorD w = mu.weights().segment(mine.begin, mine.size());
  if (mine.begin == 0 && w.size() > 0) w[0] = 0;
  o.causal = true;
  try {
    attention_field_shard(model, atoms, w, atoms, o);
    ADD_FAILURE() << "causal attention without a token at position 0 did not fail";
  } catch (const invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("query 0 sees only tokens of zero weight"),
              std::string::npos);
  }
}

// Flows: every rank holds the particles, the ranks split each stage's field.
// Small head size (the small-dimension kernel), larger (streaming), the tied
// canonical model (not split), every scheme, on and off the sphere.
TEST(distributed_test, flows_bit_identical_for_every_scheme_and_kernel) {
  const MeasureD mu = testing::random_measure(61, 4, 61);
  const MeasureD mu16 = testing::random_measure(45, 16, 62);
  const Model<double> small = Model<double>::random(4, 1, true, 63);
  const Model<double> wide = Model<double>::random(16, 1, true, 64);
  const Model<double> canonical = Model<double>::canonical(4, 2.0);
  struct Case {
    const Model<double>* model;
    const MeasureD* mu;
    FlowScheme scheme;
    bool sphere;
  };
  for (const Case c :
       {Case{&small, &mu, FlowScheme::euler, false}, Case{&small, &mu, FlowScheme::heun, true},
        Case{&wide, &mu16, FlowScheme::rk4, false}, Case{&wide, &mu16, FlowScheme::dopri5, false},
        Case{&canonical, &mu, FlowScheme::dopri5, true},
        Case{&small, &mu, FlowScheme::dopri5, false}}) {
    FlowOptions o;
    o.time = 1.5;
    o.steps = 13;
    o.scheme = c.scheme;
    o.tolerance = 1e-7;
    o.sphere = c.sphere;
    o.save_every = 3;
    const auto one = flow(*c.model, *c.mu, o);
    o.attention.communicator = comm();
    const auto many = flow(*c.model, *c.mu, o);
    ASSERT_EQ(one.status, Status::completed);
    EXPECT_EQ(one.steps, many.steps) << to_string(c.scheme);
    EXPECT_TRUE(same_bits(one.particles, many.particles))
        << to_string(c.scheme) << (c.sphere ? " sphere" : "") << " on " << comm().size()
        << " ranks";
    ASSERT_EQ(one.frames.size(), many.frames.size());
    for (size_t f = 0; f < one.frames.size(); ++f) {
      EXPECT_TRUE(same_bits(one.frames[f], many.frames[f])) << "frame " << f;
    }
  }
}

// Causal flows: the ranks split the rows, which keep their global positions
// (small head: the small-dimension kernel is not used with a mask; wide; the
// canonical model, whose tied kernels are not used with a mask either), under
// each normalization placement. Sinkhorn flows are refused on several ranks.
TEST(distributed_test, causal_flows_bit_identical_sinkhorn_flows_refused) {
  const MeasureD mu = testing::random_measure(61, 4, 81);
  const MeasureD mu16 = testing::random_measure(45, 16, 82);
  const Model<double> small = Model<double>::random(4, 1, true, 83);
  const Model<double> wide = Model<double>::random(16, 2, true, 84);
  const Model<double> canonical = Model<double>::canonical(4, 2.0);
  struct Case {
    const Model<double>* model;
    const MeasureD* mu;
    FlowScheme scheme;
    NormPlacement norm;
  };
  for (const Case c : {Case{&small, &mu, FlowScheme::euler, NormPlacement::none},
                       Case{&small, &mu, FlowScheme::rk4, NormPlacement::pre},
                       Case{&wide, &mu16, FlowScheme::dopri5, NormPlacement::none},
                       Case{&canonical, &mu, FlowScheme::heun, NormPlacement::post},
                       Case{&canonical, &mu, FlowScheme::dopri5, NormPlacement::pre}}) {
    FlowOptions o;
    o.time = 1.5;
    o.steps = 13;
    o.scheme = c.scheme;
    o.tolerance = 1e-7;
    o.norm = c.norm;
    o.attention.causal = true;
    o.save_every = 3;
    const auto one = flow(*c.model, *c.mu, o);
    o.attention.communicator = comm();
    const auto many = flow(*c.model, *c.mu, o);
    ASSERT_EQ(one.status, Status::completed);
    EXPECT_EQ(one.steps, many.steps);
    EXPECT_TRUE(same_bits(one.particles, many.particles))
        << to_string(c.scheme) << " " << to_string(c.norm) << " causal on " << comm().size()
        << " ranks";
    ASSERT_EQ(one.frames.size(), many.frames.size());
    for (size_t f = 0; f < one.frames.size(); ++f) {
      EXPECT_TRUE(same_bits(one.frames[f], many.frames[f])) << "frame " << f;
    }
  }
  FlowOptions sinkhorn;
  sinkhorn.attention.normalization = Normalization::sinkhorn;
  sinkhorn.attention.sinkhorn_iterations = 3;
  sinkhorn.attention.communicator = comm();
  if (comm().distributed()) {
    try {
      flow(small, mu, sinkhorn);
      ADD_FAILURE() << "a sinkhorn flow ran on " << comm().size() << " ranks";
    } catch (const invalid_argument& e) {
      EXPECT_EQ(e.field(), "normalization");
      EXPECT_NE(std::string(e.what()).find("one process"), std::string::npos) << e.what();
    }
  } else {
    EXPECT_EQ(flow(small, mu, sinkhorn).status, Status::completed);
  }
}

// A run stopped at step 9 on P ranks (rank 0 writes the checkpoint), resumed
// on P ranks, equals one uninterrupted process.
TEST(distributed_test, flow_checkpoint_written_by_rank_0_resumes_bit_identically) {
  const MeasureD mu = testing::random_measure(50, 4, 71);
  const Model<double> model = Model<double>::random(4, 2, true, 72);
  FlowOptions o;
  o.time = 2;
  o.steps = 20;
  o.scheme = FlowScheme::rk4;
  const auto full = flow(model, mu, o);
  const std::string path =
      ::testing::TempDir() + "measattn_distributed_np" + std::to_string(comm().size()) + ".ckpt";
  FlowOptions stopped = o;
  stopped.attention.communicator = comm();
  stopped.checkpoint_every = 3;
  stopped.checkpoint_path = path;
  stopped.should_stop = [](Index step, double) { return step == 9; };
  const auto partial = flow(model, mu, stopped);
  ASSERT_EQ(partial.status, Status::interrupted);
  FlowOptions resume = stopped;
  resume.should_stop = nullptr;
  resume.resume = true;
  const auto resumed = flow(model, mu, resume);
  EXPECT_TRUE(resumed.resumed);
  EXPECT_EQ(resumed.resumed_from_step, 9);
  EXPECT_TRUE(same_bits(full.particles, resumed.particles));
}

}  // namespace
}  // namespace measattn
