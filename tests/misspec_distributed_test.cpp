// Mis-specification draws shared by MPI ranks (docs/distributed.md): the same
// result as one process, bit for bit, for every kind. Runs as one process and
// under `mpirun --oversubscribe -np P` (tests/CMakeLists.txt, mpi.* tests).
#include <gtest/gtest.h>

#include "measattn/communicator.hpp"
#include "measattn/misspec.hpp"
#include "test_communicator.hpp"
#include "test_measures.hpp"

namespace measattn {
namespace {

const Communicator& comm() { return testing::test_communicator(); }

TEST(misspec_distributed_test, every_kind_bit_identical_to_one_process) {
  const MeasureD mu = testing::random_measure(12, 2, 81);
  const Model<double> model = Model<double>::random(2, 1, true, 82);
  for (const MisspecKind kind : {MisspecKind::sample, MisspecKind::noise, MisspecKind::corrupt}) {
    MisspecOptions o;
    o.kind = kind;
    o.sizes = {3, 6, 12};
    o.sigmas = {0.05, 0.2};
    o.eps = {0.1, 0.3};
    o.repeats = 3;
    o.seed = 7;
    const MisspecResult one = misspecification(model, mu, o);
    o.communicator = comm();
    const MisspecResult many = misspecification(model, mu, o);
    ASSERT_EQ(one.rows.size(), many.rows.size());
    EXPECT_EQ(one.radius, many.radius);
    EXPECT_EQ(one.lipschitz, many.lipschitz);
    for (size_t i = 0; i < one.rows.size(); ++i) {
      EXPECT_EQ(one.rows[i].w1_input, many.rows[i].w1_input) << to_string(kind) << " row " << i;
      EXPECT_EQ(one.rows[i].w1_output, many.rows[i].w1_output) << to_string(kind) << " row " << i;
      EXPECT_EQ(one.rows[i].bound, many.rows[i].bound);
      EXPECT_EQ(one.rows[i].max_ratio, many.rows[i].max_ratio);
    }
    EXPECT_EQ(one.violated, many.violated);
  }
}

}  // namespace
}  // namespace measattn
