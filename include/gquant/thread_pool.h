// A fixed-size pool of worker threads with a blocking parallel-for, used to
// spread quantization over rows. Wraps Eigen's non-blocking thread pool; the
// Eigen header stays out of this one.
#ifndef GQUANT_THREAD_POOL_H_
#define GQUANT_THREAD_POOL_H_

#include <cstdint>
#include <functional>
#include <memory>

namespace gquant {

class ThreadPool {
 public:
  // `num_threads` is the parallelism of ParallelFor, calling thread included
  // (the pool starts num_threads - 1 workers); <= 0 means the hardware
  // concurrency.
  explicit ThreadPool(int num_threads);
  ~ThreadPool();

  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return num_threads_; }

  // Calls fn(begin, end) on disjoint ranges covering [0, n), each at least
  // `grain` long (grain < 1 counts as 1), and returns when all have run. The
  // calling thread takes part, so calls may nest or come from several threads
  // at once. Runs fn(0, n) inline when the pool has one thread or n <= grain.
  // Which thread runs which range is unspecified: callers that reduce must
  // keep per-range results and combine them in a fixed order.
  void ParallelFor(int64_t n, int64_t grain,
                   const std::function<void(int64_t begin, int64_t end)>& fn);

 private:
  struct Impl;
  int num_threads_;
  std::unique_ptr<Impl> impl_;  // null when num_threads_ == 1
};

// ParallelFor on `pool`, or fn(0, n) inline when pool is null.
inline void ParallelFor(ThreadPool* pool, int64_t n, int64_t grain,
                        const std::function<void(int64_t begin, int64_t end)>& fn) {
  if (pool != nullptr) {
    pool->ParallelFor(n, grain, fn);
  } else if (n > 0) {
    fn(0, n);
  }
}

}  // namespace gquant

#endif  // GQUANT_THREAD_POOL_H_
