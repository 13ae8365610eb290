#include "parallel.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace lc {
namespace {

// Set on pool workers and on a caller while it runs chunks, so nested
// parallel_for calls run serially instead of deadlocking on the pool.
thread_local bool t_in_parallel = false;

// Set once the pool is being torn down at exit: a parallel_for issued later
// during static destruction runs serially instead of touching it.
std::atomic<bool> g_pool_dead{false};

int read_num_threads() {
  if (const char* env = std::getenv("LORA_CUDA_NUM_THREADS")) {
    errno = 0;
    char* end = nullptr;
    long v = std::strtol(env, &end, 10);
    while (end && (*end == ' ' || *end == '\t' || *end == '\n')) ++end;
    if (end != env && end && *end == '\0' && errno == 0 && v > 0)
      return static_cast<int>(std::min<long>(v, 1024));
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : static_cast<int>(std::min<unsigned>(hc, 1024));
}

struct Job {
  const std::function<void(int64_t, int64_t)>* fn;
  int64_t n, nchunks;
  std::atomic<int64_t> next{0};
  std::mutex err_mu;
  std::exception_ptr err;

  void run_chunks() {
    const int64_t q = n / nchunks, r = n % nchunks;
    for (;;) {
      int64_t c = next.fetch_add(1, std::memory_order_relaxed);
      if (c >= nchunks) return;
      int64_t b = c * q + std::min(c, r);
      int64_t e = b + q + (c < r ? 1 : 0);
      try {
        (*fn)(b, e);
      } catch (...) {
        std::lock_guard<std::mutex> lk(err_mu);
        if (!err) err = std::current_exception();
      }
    }
  }
};

class Pool {
 public:
  Pool() = default;
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  // Stops and joins the workers unless a job is in flight (exit() called from
  // a chunk, or while another thread runs one): joining or destroying the
  // condition variables then would hang, so the caller leaks the pool instead.
  bool try_shutdown() {
    if (!run_mu_.try_lock()) return false;
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    work_cv_.notify_all();
    for (auto& t : workers_)
      if (t.joinable()) t.join();
    run_mu_.unlock();
    return true;
  }

  void run(Job& job) {
    // One job at a time: several JS threads (worker_threads) may call in.
    std::lock_guard<std::mutex> run_lk(run_mu_);
    start_workers();
    {
      std::lock_guard<std::mutex> lk(mu_);
      job_ = &job;
      ++gen_;
    }
    work_cv_.notify_all();

    t_in_parallel = true;
    job.run_chunks();
    t_in_parallel = false;

    // Once job_ is cleared no worker can join; wait for those that did, so
    // `job` (on the caller's stack) is not touched after we return.
    std::unique_lock<std::mutex> lk(mu_);
    job_ = nullptr;
    done_cv_.wait(lk, [&] { return active_ == 0; });
  }

 private:
  void start_workers() {
    if (started_) return;
    started_ = true;
    int want = num_threads() - 1;
    for (int i = 0; i < want; ++i) {
      try {
        workers_.emplace_back([this] { worker(); });
      } catch (...) {
        break;  // out of threads: the caller runs whatever the workers don't
      }
    }
  }

  void worker() {
    t_in_parallel = true;
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      work_cv_.wait(lk, [&] { return stop_ || (job_ != nullptr && gen_ != seen); });
      if (stop_) return;
      seen = gen_;
      Job* job = job_;
      ++active_;
      lk.unlock();
      job->run_chunks();
      lk.lock();
      if (--active_ == 0) done_cv_.notify_all();
    }
  }

  std::mutex run_mu_;  // serialises callers; held for a whole job
  bool started_ = false;  // guarded by run_mu_
  std::vector<std::thread> workers_;

  std::mutex mu_;  // guards the fields below
  std::condition_variable work_cv_, done_cv_;
  Job* job_ = nullptr;
  uint64_t gen_ = 0;
  int active_ = 0;
  bool stop_ = false;
};

// Function-local static so the pool is built on first use and its workers are
// stopped and joined at process exit.
struct PoolHolder {
  Pool* p = new Pool;
  ~PoolHolder() {
    g_pool_dead.store(true);
    // Workers and callers mid-job have t_in_parallel set.
    if (!t_in_parallel && p->try_shutdown()) delete p;
  }
};

Pool& pool() {
  static PoolHolder h;
  return *h.p;
}

}  // namespace

int num_threads() {
  static const int n = read_num_threads();
  return n;
}

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  const int nt = num_threads();
  if (n <= grain || nt <= 1 || t_in_parallel || g_pool_dead.load()) {
    fn(0, n);
    return;
  }
  // Each chunk gets at least `grain` items.
  int64_t nchunks = std::min<int64_t>(nt, n / grain);
  if (nchunks <= 1) {
    fn(0, n);
    return;
  }
  Job job;
  job.fn = &fn;
  job.n = n;
  job.nchunks = nchunks;
  pool().run(job);
  if (job.err) std::rethrow_exception(job.err);
}

}  // namespace lc
