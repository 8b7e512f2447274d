// The shared machinery of src/common: error fields, the interrupt handler and
// the parallel-region guard (exceptions and interrupts inside OpenMP regions).
#include <gtest/gtest.h>
#include <omp.h>

#include <atomic>
#include <chrono>
#include <new>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/parallel.hpp"
#include "measattn/error.hpp"
#include "measattn/interrupt.hpp"
#include "measattn/status.hpp"

using measattn::interrupted;
using measattn::invalid_argument;
using measattn::set_interrupt_handler;
using measattn::detail::RegionGuard;

namespace {

// Removes any handler when a test ends, whatever happened.
struct HandlerReset {
  ~HandlerReset() { set_interrupt_handler({}); }
};

constexpr int kThreads = 4;

// A unit long enough that every thread of the team, the polling one too, gets
// units (trivial units can all be taken before thread 0 starts its share).
void unit_of_work() { std::this_thread::sleep_for(std::chrono::microseconds(20)); }

}  // namespace

TEST(common_test, invalid_argument_field_and_reason) {
  const invalid_argument two("radius", "must be positive");
  EXPECT_STREQ(two.what(), "radius: must be positive");
  EXPECT_EQ(two.field(), "radius");
  EXPECT_EQ(two.reason(), "must be positive");

  const invalid_argument one("step_size: must be positive and finite");
  EXPECT_EQ(one.field(), "step_size");
  EXPECT_EQ(one.reason(), "must be positive and finite");

  // No plain identifier before the first ": ": no field, the whole message.
  for (const char* message : {"--radius: must be positive", "sinkhorn tolerance: must be >= 0",
                              "no field here", ": empty", "2d: starts with a digit"}) {
    const invalid_argument e(message);
    EXPECT_EQ(e.field(), "") << message;
    EXPECT_EQ(e.reason(), message);
    EXPECT_STREQ(e.what(), message);
  }
  // Only the first ": " counts.
  const invalid_argument nested("weights: w.npy: weight 2 is negative");
  EXPECT_EQ(nested.field(), "weights");
  EXPECT_EQ(nested.reason(), "w.npy: weight 2 is negative");
}

// The one status vocabulary of every Result (measattn/status.hpp): each value
// prints as its own name, and the names are distinct.
TEST(common_test, status_names_are_the_enumerators) {
  using measattn::Status;
  const std::vector<std::pair<Status, std::string>> names = {
      {Status::optimal, "optimal"},         {Status::converged, "converged"},
      {Status::completed, "completed"},     {Status::iteration_limit, "iteration_limit"},
      {Status::bounds_only, "bounds_only"}, {Status::step_size_underflow, "step_size_underflow"},
      {Status::non_finite, "non_finite"},   {Status::interrupted, "interrupted"},
      {Status::degenerate, "degenerate"}};
  std::set<std::string> seen;
  for (const auto& [status, name] : names) {
    EXPECT_EQ(measattn::to_string(status), name);
    EXPECT_TRUE(seen.insert(name).second) << name;
  }
}

TEST(common_test, guard_runs_every_unit_without_errors) {
  std::vector<int> seen(1000, 0);
  RegionGuard guard;
#pragma omp parallel for num_threads(kThreads)
  for (int i = 0; i < 1000; ++i) guard.run([&] { seen[static_cast<size_t>(i)] += 1; });
  EXPECT_NO_THROW(guard.finish());
  for (int v : seen) EXPECT_EQ(v, 1);
}

TEST(common_test, exception_in_one_iteration_reaches_the_caller) {
  for (int bad : {0, 17, 999}) {
    std::atomic<int> ran{0};
    RegionGuard guard;
#pragma omp parallel for schedule(dynamic, 1) num_threads(kThreads)
    for (int i = 0; i < 1000; ++i) {
      guard.run([&] {
        ran.fetch_add(1, std::memory_order_relaxed);
        if (i == bad) throw invalid_argument("atoms", "iteration " + std::to_string(i));
      });
    }
    try {
      guard.finish();
      FAIL() << "no exception";
    } catch (const invalid_argument& e) {
      EXPECT_EQ(e.field(), "atoms");
      EXPECT_EQ(e.reason(), "iteration " + std::to_string(bad));
    }
    EXPECT_LE(ran.load(), 1000);
  }
}

TEST(common_test, first_exception_wins_and_others_are_dropped) {
  RegionGuard guard;
#pragma omp parallel num_threads(kThreads)
  {
    guard.run([] { throw std::runtime_error("from every thread"); });
  }
  EXPECT_THROW(guard.finish(), std::runtime_error);
}

TEST(common_test, bad_alloc_in_setup_skips_that_threads_units) {
  std::atomic<int> ran{0};
  RegionGuard guard;
#pragma omp parallel num_threads(kThreads)
  {
    std::vector<double> buffer;
    guard.run([&] {
      if (omp_get_thread_num() == 0) throw std::bad_alloc();
      buffer.resize(8);
    });
#pragma omp for
    for (int i = 0; i < 100; ++i) {
      guard.run([&] {
        // Never reached by the thread whose setup failed.
        ASSERT_EQ(buffer.size(), 8u);
        ran.fetch_add(1);
      });
    }
  }
  EXPECT_THROW(guard.finish(), std::bad_alloc);
}

TEST(common_test, nested_guards_carry_the_exception_out) {
  RegionGuard outer;
#pragma omp parallel for num_threads(kThreads)
  for (int r = 0; r < 8; ++r) {
    outer.run([&] {
      RegionGuard inner;  // an inner region inside a unit (inactive when nested)
#pragma omp parallel for
      for (int i = 0; i < 10; ++i) {
        inner.run([&] {
          if (r == 5 && i == 3) throw std::out_of_range("inner");
        });
      }
      inner.finish();
    });
  }
  EXPECT_THROW(outer.finish(), std::out_of_range);
}

TEST(common_test, interrupt_stops_a_region_and_is_rethrown_after_it) {
  HandlerReset reset;
  std::atomic<int> polls{0};
  set_interrupt_handler(
      [&] {
        // Only the thread that entered the region polls.
        EXPECT_EQ(omp_get_thread_num(), 0);
        return polls.fetch_add(1) >= 3;
      },
      0.0);
  std::atomic<int> ran{0};
  const int total = 20000;
  RegionGuard guard;
#pragma omp parallel for schedule(dynamic, 1) num_threads(kThreads)
  for (int i = 0; i < total; ++i) {
    guard.run([&] {
      ran.fetch_add(1, std::memory_order_relaxed);
      unit_of_work();
    });
  }
  EXPECT_THROW(guard.finish(), interrupted);
  EXPECT_LT(ran.load(), total);
  EXPECT_GE(polls.load(), 4);

  // The request was consumed: without a handler the next region runs fully.
  set_interrupt_handler({});
  ran = 0;
  RegionGuard again;
#pragma omp parallel for num_threads(kThreads)
  for (int i = 0; i < 1000; ++i) again.run([&] { ran.fetch_add(1); });
  EXPECT_NO_THROW(again.finish());
  EXPECT_EQ(ran.load(), 1000);
}

TEST(common_test, check_interrupt_inside_a_region_is_captured) {
  HandlerReset reset;
  std::atomic<int> polls{0};
  set_interrupt_handler([&] { return polls.fetch_add(1) >= 10; }, 0.0);
  // A one-thread team too: omp_in_parallel() is false there, which is how
  // the old check_interrupt() threw out of a region (std::terminate).
  for (int threads : {1, kThreads}) {
    polls = 0;
    RegionGuard g;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int i = 0; i < 20000; ++i) {
      g.run([&] {
        for (int k = 0; k < 3; ++k) measattn::detail::check_interrupt();
        unit_of_work();
      });
    }
    EXPECT_THROW(g.finish(), interrupted) << threads;
    EXPECT_FALSE(measattn::detail::interrupt_pending());
  }
}

TEST(common_test, interrupt_outside_regions_throws_and_clears) {
  HandlerReset reset;
  bool stop = false;
  set_interrupt_handler([&] { return stop; }, 0.0);
  EXPECT_NO_THROW(measattn::detail::check_interrupt());
  stop = true;
  EXPECT_THROW(measattn::detail::check_interrupt(), interrupted);
  EXPECT_FALSE(measattn::detail::interrupt_pending());
  stop = false;
  EXPECT_NO_THROW(measattn::detail::check_interrupt());
}

TEST(common_test, interrupt_wins_over_an_error_it_races_with) {
  HandlerReset reset;
  set_interrupt_handler([] { return true; }, 0.0);
  RegionGuard guard;
#pragma omp parallel num_threads(kThreads)
  {
    if (omp_get_thread_num() == 0) guard.run([] {});  // the master polls: stop requested
#pragma omp barrier
    if (omp_get_thread_num() == 1) guard.capture(std::make_exception_ptr(std::logic_error("x")));
  }
  EXPECT_THROW(guard.finish(), interrupted);
}
