#include "gquant/thread_pool.h"

#include <atomic>
#include <mutex>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include "test_util.h"

namespace gquant {
namespace {

// Runs ParallelFor and checks that the ranges are disjoint, at least `grain`
// long, and visit every index of [0, n) exactly once.
void CheckCoverage(ThreadPool& pool, int64_t n, int64_t grain) {
  INFO("threads " << pool.num_threads() << " n " << n << " grain " << grain);
  std::vector<std::atomic<int>> visits(static_cast<size_t>(n));
  std::mutex mu;
  std::vector<std::pair<int64_t, int64_t>> ranges;
  pool.ParallelFor(n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) visits[i].fetch_add(1);
    std::lock_guard<std::mutex> lock(mu);
    ranges.emplace_back(begin, end);
  });
  for (int64_t i = 0; i < n; ++i) REQUIRE(visits[i].load() == 1);
  for (const auto& [begin, end] : ranges) {
    REQUIRE(begin < end);
    if (n >= grain) REQUIRE(end - begin >= std::max<int64_t>(grain, 1));
  }
  if (n == 0) REQUIRE(ranges.empty());
}

TEST_CASE("ParallelFor visits every index exactly once", "[thread_pool]") {
  for (int threads : {1, 2, 3, 8}) {
    ThreadPool pool(threads);
    REQUIRE(pool.num_threads() == threads);
    for (int64_t n : {0, 1, 2, 7, 64, 1000, 100003}) {
      for (int64_t grain : {-5, 0, 1, 3, 64, 5000}) CheckCoverage(pool, n, grain);
    }
  }
}

TEST_CASE("ThreadPool(0) uses the hardware concurrency", "[thread_pool]") {
  ThreadPool pool(0);
  const int expected = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  REQUIRE(pool.num_threads() == expected);
  CheckCoverage(pool, 12345, 10);
}

TEST_CASE("ParallelFor runs inline for one thread or a small n", "[thread_pool]") {
  const std::thread::id caller = std::this_thread::get_id();
  ThreadPool one(1);
  int calls = 0;
  one.ParallelFor(1000, 1, [&](int64_t begin, int64_t end) {
    ++calls;
    REQUIRE(begin == 0);
    REQUIRE(end == 1000);
    REQUIRE(std::this_thread::get_id() == caller);
  });
  REQUIRE(calls == 1);

  ThreadPool four(4);
  calls = 0;
  four.ParallelFor(10, 10, [&](int64_t begin, int64_t end) {
    ++calls;
    REQUIRE(begin == 0);
    REQUIRE(end == 10);
    REQUIRE(std::this_thread::get_id() == caller);
  });
  REQUIRE(calls == 1);
}

TEST_CASE("ParallelFor uses several threads and can nest", "[thread_pool]") {
  ThreadPool pool(4);
  std::mutex mu;
  std::set<std::thread::id> ids;
  std::atomic<int64_t> inner_sum{0};
  pool.ParallelFor(64, 1, [&](int64_t begin, int64_t end) {
    {
      std::lock_guard<std::mutex> lock(mu);
      ids.insert(std::this_thread::get_id());
    }
    // A nested loop from inside a worker must not deadlock.
    for (int64_t i = begin; i < end; ++i) {
      pool.ParallelFor(100, 1, [&](int64_t b, int64_t e) {
        inner_sum.fetch_add(e - b);
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      });
    }
  });
  REQUIRE(inner_sum.load() == 64 * 100);
  REQUIRE(ids.size() >= 2);
}

TEST_CASE("ParallelFor from several threads at once", "[thread_pool]") {
  ThreadPool pool(3);
  std::vector<std::thread> callers;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    callers.emplace_back([&] {
      for (int rep = 0; rep < 50; ++rep) {
        std::vector<std::atomic<int>> visits(997);
        pool.ParallelFor(997, 7, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) visits[i].fetch_add(1);
        });
        for (auto& v : visits) {
          if (v.load() != 1) failures.fetch_add(1);
        }
      }
    });
  }
  for (auto& t : callers) t.join();
  REQUIRE(failures.load() == 0);
}

TEST_CASE("free ParallelFor without a pool runs inline", "[thread_pool]") {
  int calls = 0;
  ParallelFor(nullptr, 17, 100, [&](int64_t begin, int64_t end) {
    ++calls;
    REQUIRE(begin == 0);
    REQUIRE(end == 17);
  });
  REQUIRE(calls == 1);
  ParallelFor(nullptr, 0, 1, [&](int64_t, int64_t) { ++calls; });
  REQUIRE(calls == 1);
}

}  // namespace
}  // namespace gquant
