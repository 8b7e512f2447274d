// Lipschitz searches and sweeps shared by MPI ranks (docs/distributed.md): the
// same result as one process, bit for bit. Runs as one process and under
// `mpirun --oversubscribe -np P` (tests/CMakeLists.txt, mpi.* tests).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "common/collectives.hpp"
#include "measattn/communicator.hpp"
#include "measattn/error.hpp"
#include "measattn/lipschitz.hpp"
#include "test_communicator.hpp"

namespace measattn {
namespace {

const Communicator& comm() { return testing::test_communicator(); }

TEST(lipschitz_distributed_test, strings_gathered_by_item) {
  // Empty strings, embedded NULs and more items than ranks (and fewer).
  for (const Index count : {Index(1), Index(2), Index(7)}) {
    std::vector<std::string> all(static_cast<size_t>(count));
    for (Index i = 0; i < count; ++i)
      all[static_cast<size_t>(i)] =
          i % 3 == 0 ? std::string() : std::string(i, 'a' + i) + '\0' + "z";
    std::vector<std::string> mine(static_cast<size_t>(count), "stale");
    const RowRange own = shard_rows(count, comm());
    for (Index i = own.begin; i < own.end; ++i)
      mine[static_cast<size_t>(i)] = all[static_cast<size_t>(i)];
    detail::all_gather_items(comm(), count, mine);
    EXPECT_EQ(mine, all) << count;
    for (Index i = 0; i < count; ++i) {
      const int owner = detail::owner_of(count, comm().size(), i);
      const RowRange range = shard_rows(count, owner, comm().size());
      EXPECT_TRUE(i >= range.begin && i < range.end);
    }
  }
}

void expect_same(const LipschitzSearchResult& one, const LipschitzSearchResult& many) {
  EXPECT_EQ(one.ratio, many.ratio);
  EXPECT_EQ(one.restart_ratios, many.restart_ratios);
  EXPECT_EQ(one.evaluations, many.evaluations);
  EXPECT_EQ(one.status, many.status);
  EXPECT_EQ(one.message, many.message);
  const LipschitzWitness &a = one.witness, &b = many.witness;
  EXPECT_EQ(a.mu_atoms, b.mu_atoms);
  EXPECT_EQ(a.nu_atoms, b.nu_atoms);
  EXPECT_EQ(a.mu_weights, b.mu_weights);
  EXPECT_EQ(a.nu_weights, b.nu_weights);
  EXPECT_EQ(a.f_mu_atoms, b.f_mu_atoms);
  EXPECT_EQ(a.f_nu_atoms, b.f_nu_atoms);
  EXPECT_EQ(a.w1_input, b.w1_input);
  EXPECT_EQ(a.w1_output, b.w1_output);
  EXPECT_EQ(a.origin, b.origin);
  EXPECT_EQ(a.restart, b.restart);
  EXPECT_EQ(a.certification, b.certification);
  EXPECT_EQ(a.separation, b.separation);
}

TEST(lipschitz_distributed_test, search_bit_identical_to_one_process) {
  // Restart counts below, at and above the rank counts the tests run (2-4),
  // one and several atoms (the covariance seed from 3 atoms on), residual.
  const Model<double> model = Model<double>::random(4, 2, true, 91);
  for (const int restarts : {1, 3, 9}) {
    for (const Index atoms : {Index(1), Index(3)}) {
      LipschitzSearchOptions o;
      o.atoms = atoms;
      o.restarts = restarts;
      o.steps = 12;
      o.seed = 5;
      o.residual = restarts == 3;
      const LipschitzSearchResult one = lipschitz_lower_bound(model, 1.0, o);
      o.communicator = comm();
      const LipschitzSearchResult many = lipschitz_lower_bound(model, 1.0, o);
      SCOPED_TRACE("restarts " + std::to_string(restarts) + ", atoms " + std::to_string(atoms));
      expect_same(one, many);
    }
  }
}

TEST(lipschitz_distributed_test, token_search_and_sweep_bit_identical_to_one_process) {
  const Model<double> model = Model<double>::random(4, 2, true, 92);
  TokenSearchOptions o;
  o.tokens = 4;
  o.restarts = 6;
  o.steps = 8;
  o.radius = 1.5;
  o.seed = 3;
  const TokenSearchResult one = token_lipschitz_lower_bound(model, o);
  const TokenSweepResult sweep_one = token_lipschitz_sweep(model, {2, 3, 5}, o);
  o.communicator = comm();
  const TokenSearchResult many = token_lipschitz_lower_bound(model, o);
  EXPECT_EQ(one.value, many.value);
  EXPECT_EQ(one.tokens, many.tokens);
  EXPECT_EQ(one.upper, many.upper);
  EXPECT_EQ(one.residual, many.residual);
  EXPECT_EQ(one.origin, many.origin);
  EXPECT_EQ(one.restart_values, many.restart_values);
  EXPECT_EQ(one.evaluations, many.evaluations);
  const TokenSweepResult sweep_many = token_lipschitz_sweep(model, {2, 3, 5}, o);
  EXPECT_EQ(sweep_one.lower, sweep_many.lower);
  EXPECT_EQ(sweep_one.castin, sweep_many.castin);
  EXPECT_EQ(sweep_one.upper, sweep_many.upper);
  EXPECT_EQ(sweep_one.origins, sweep_many.origins);
  EXPECT_EQ(sweep_one.exponent_lower, sweep_many.exponent_lower);
  EXPECT_EQ(sweep_one.evaluations, sweep_many.evaluations);
}

TEST(lipschitz_distributed_test, radius_beta_sweep_bit_identical_to_one_process) {
  const Model<double> model = Model<double>::random(4, 2, true, 93);
  // Six points (split over the ranks), then one point (its restarts split).
  for (const auto& grid : std::vector<std::pair<std::vector<double>, std::vector<double>>>{
           {{0.25, 0.5, 1.0}, {0.5, 2.0}}, {{0.75}, {1.0}}}) {
    LipschitzSweepOptions o;
    o.radii = grid.first;
    o.betas = grid.second;
    o.search.atoms = 3;
    o.search.restarts = 4;
    o.search.steps = 10;
    const LipschitzSweepResult one = lipschitz_sweep(model, o);
    o.search.communicator = comm();
    const LipschitzSweepResult many = lipschitz_sweep(model, o);
    ASSERT_EQ(one.points.size(), o.radii.size() * o.betas.size());
    ASSERT_EQ(one.points.size(), many.points.size());
    EXPECT_EQ(one.evaluations, many.evaluations);
    for (size_t i = 0; i < one.points.size(); ++i) {
      const LipschitzSweepPoint &a = one.points[i], &b = many.points[i];
      EXPECT_EQ(a.radius, o.radii[i % o.radii.size()]);
      EXPECT_EQ(a.beta, o.betas[i / o.radii.size()]);
      EXPECT_EQ(a.radius, b.radius);
      EXPECT_EQ(a.beta, b.beta);
      EXPECT_EQ(a.best_upper, b.best_upper) << i;
      EXPECT_EQ(a.best_name, b.best_name);
      EXPECT_EQ(a.lower, b.lower) << i;
      EXPECT_EQ(a.witness_origin, b.witness_origin);
      EXPECT_EQ(a.search_ratio, b.search_ratio);
      EXPECT_EQ(a.witness_radius, b.witness_radius);
      // The lower bound on B_R is the best search at radii <= R (same beta).
      EXPECT_GE(a.lower, a.search_ratio);
      EXPECT_LE(a.witness_radius, a.radius);
      if (i % o.radii.size() > 0) {
        EXPECT_GE(a.lower, one.points[i - 1].lower);
      }
      EXPECT_EQ(a.gap, b.gap);
      EXPECT_EQ(a.evaluations, b.evaluations);
      // The proved bound is above the certified lower bound at every point.
      EXPECT_GE(a.best_upper, a.lower);
      EXPECT_GT(a.lower, 0);
    }
  }
}

TEST(lipschitz_distributed_test, sweep_point_that_fails_fails_on_every_rank) {
  // Only the last point overflows the layer's range: whichever rank owns it,
  // every rank throws its message (no rank left waiting in a collective).
  const Model<double> model = Model<double>::random(4, 2, true, 94);
  LipschitzSweepOptions o;
  o.radii = {0.5, 1.0};
  o.betas = {1.0, 1e300};
  o.search.restarts = 2;
  o.search.steps = 3;
  o.search.communicator = comm();
  try {
    lipschitz_sweep(model, o);
    FAIL() << "expected invalid_argument";
  } catch (const invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("betas: at beta = 1e+300"), std::string::npos) << e.what();
  }
}

TEST(lipschitz_distributed_test, sweep_options_are_checked) {
  const Model<double> model = Model<double>::random(2, 1, false, 95);
  LipschitzSweepOptions o;
  EXPECT_THROW(lipschitz_sweep(model, o), invalid_argument);  // no radii
  o.radii = {1.0, -1.0};
  EXPECT_THROW(lipschitz_sweep(model, o), invalid_argument);
  o.radii = {1.0};
  o.betas = {};
  EXPECT_THROW(lipschitz_sweep(model, o), invalid_argument);
  o.betas = {std::nan("")};
  EXPECT_THROW(lipschitz_sweep(model, o), invalid_argument);
}

}  // namespace
}  // namespace measattn
