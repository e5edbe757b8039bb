#include "thread_pool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace edge {
namespace {

// One parallel_for call. Helpers hold it by shared_ptr, so one that wakes late (the machine is often
// oversubscribed) finds every chunk claimed and leaves without touching the caller's function. The caller
// waits for finished chunks, not for helpers to check in, so a descheduled helper never stalls a call.
struct Job {
  const std::function<void(int64_t, int64_t)>* fn = nullptr;
  int64_t n = 0, chunk = 1;
  std::atomic<int64_t> next{0}, done{0};
  std::mutex mu;
  std::condition_variable cv;

  void work() {
    for (;;) {
      const int64_t begin = next.fetch_add(chunk);
      if (begin >= n) return;
      const int64_t end = std::min(n, begin + chunk);
      (*fn)(begin, end);
      if (done.fetch_add(end - begin) + (end - begin) == n) {
        std::lock_guard<std::mutex> lk(mu);
        cv.notify_all();
      }
    }
  }
};

class Pool {
 public:
  static Pool& get() {
    static Pool* pool = new Pool();  // leaked on purpose: no join at interpreter exit
    return *pool;
  }

  void run(int64_t n, int n_threads, const std::function<void(int64_t, int64_t)>& fn) {
    std::lock_guard<std::mutex> serial(run_mu_);
    ensure_workers(n_threads - 1);
    auto job = std::make_shared<Job>();
    job->fn = &fn;
    job->n = n;
    job->chunk = std::max<int64_t>(1, (n + n_threads * 4 - 1) / (n_threads * 4));
    {
      std::lock_guard<std::mutex> lk(mu_);
      job_ = job;
      helpers_ = n_threads - 1;
      ++generation_;
    }
    cv_.notify_all();
    job->work();
    std::unique_lock<std::mutex> lk(job->mu);
    job->cv.wait(lk, [&] { return job->done.load() == n; });
  }

 private:
  void ensure_workers(int count) {
    while (static_cast<int>(workers_.size()) < count) {
      const int id = static_cast<int>(workers_.size());
      workers_.emplace_back([this, id] { loop(id); });
      workers_.back().detach();
    }
  }

  void loop(int id) {
    uint64_t seen = 0;
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return generation_ != seen; });
        seen = generation_;
        if (id >= helpers_) continue;
        job = job_;
      }
      job->work();
    }
  }

  std::mutex run_mu_, mu_;
  std::condition_variable cv_;
  std::vector<std::thread> workers_;
  std::shared_ptr<Job> job_;
  uint64_t generation_ = 0;
  int helpers_ = 0;
};

}  // namespace

void parallel_for(int64_t n, int n_threads, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  n_threads = std::max(1, std::min({n_threads, hw * 2, 256}));
  n_threads = static_cast<int>(std::min<int64_t>(n_threads, n));
  if (n_threads == 1) {
    fn(0, n);
    return;
  }
  Pool::get().run(n, n_threads, fn);
}

}  // namespace edge
