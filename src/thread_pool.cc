#include "gquant/thread_pool.h"

#define EIGEN_USE_THREADS
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <unsupported/Eigen/CXX11/ThreadPool>

namespace gquant {
namespace {

// Ranges per thread: a few more than one, so a thread that is slow (or busy
// with another call) does not hold up the whole loop.
constexpr int64_t kChunksPerThread = 4;

// One ParallelFor call. Shared with the helper tasks, which may start after
// the call has returned (they then find no chunk left and touch nothing else).
struct ForState {
  std::atomic<int64_t> next{0};
  int64_t num_chunks = 0;
  int64_t n = 0;
  const std::function<void(int64_t, int64_t)>* fn = nullptr;  // valid while chunks remain
  std::mutex mu;
  std::condition_variable all_done;
  int64_t done = 0;

  // Chunk c covers [c*q + min(c, r), ...): sizes differ by at most one, and
  // each is >= grain because num_chunks <= n / grain.
  int64_t Begin(int64_t c) const {
    const int64_t q = n / num_chunks, r = n % num_chunks;
    return c * q + std::min(c, r);
  }

  // Claims and runs chunks until none are left.
  void RunChunks() {
    for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < num_chunks;) {
      (*fn)(Begin(c), Begin(c + 1));
      std::lock_guard<std::mutex> lock(mu);
      if (++done == num_chunks) all_done.notify_all();
    }
  }
};

}  // namespace

struct ThreadPool::Impl {
  explicit Impl(int workers) : pool(workers) {}
  Eigen::ThreadPool pool;
};

ThreadPool::ThreadPool(int num_threads) {
  if (num_threads <= 0) num_threads = static_cast<int>(std::thread::hardware_concurrency());
  num_threads_ = std::max(num_threads, 1);
  if (num_threads_ > 1) impl_ = std::make_unique<Impl>(num_threads_ - 1);
}

ThreadPool::~ThreadPool() = default;

void ThreadPool::ParallelFor(int64_t n, int64_t grain,
                             const std::function<void(int64_t begin, int64_t end)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  if (impl_ == nullptr || n <= grain) {
    fn(0, n);
    return;
  }
  auto state = std::make_shared<ForState>();
  state->n = n;
  state->num_chunks = std::min(n / grain, kChunksPerThread * num_threads_);
  state->fn = &fn;
  if (state->num_chunks == 1) {
    fn(0, n);
    return;
  }
  const int64_t helpers = std::min<int64_t>(num_threads_ - 1, state->num_chunks - 1);
  for (int64_t i = 0; i < helpers; ++i) {
    impl_->pool.Schedule([state] { state->RunChunks(); });
  }
  state->RunChunks();
  std::unique_lock<std::mutex> lock(state->mu);
  state->all_done.wait(lock, [&] { return state->done == state->num_chunks; });
}

}  // namespace gquant
