#include "thread_pool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace edge {
namespace {

class Pool {
 public:
  static Pool& get() {
    static Pool* pool = new Pool();  // leaked on purpose: no join at interpreter exit
    return *pool;
  }

  void run(int64_t n, int n_threads, const std::function<void(int64_t, int64_t)>& fn) {
    std::lock_guard<std::mutex> serial(run_mu_);
    ensure_workers(n_threads - 1);
    fn_ = &fn;
    n_ = n;
    chunk_ = std::max<int64_t>(1, (n + n_threads * 4 - 1) / (n_threads * 4));
    next_.store(0);
    {
      std::lock_guard<std::mutex> lk(mu_);
      helpers_ = n_threads - 1;
      done_ = 0;
      ++generation_;
    }
    cv_.notify_all();
    work();
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [&] { return done_ == helpers_; });
    fn_ = nullptr;
  }

 private:
  void ensure_workers(int count) {
    while (static_cast<int>(workers_.size()) < count) {
      int id = static_cast<int>(workers_.size());
      workers_.emplace_back([this, id] { loop(id); });
      workers_.back().detach();
    }
  }

  void work() {
    for (;;) {
      int64_t begin = next_.fetch_add(chunk_);
      if (begin >= n_) break;
      (*fn_)(begin, std::min(n_, begin + chunk_));
    }
  }

  void loop(int id) {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return generation_ != seen; });
        seen = generation_;
        if (id >= helpers_) continue;
      }
      work();
      {
        std::lock_guard<std::mutex> lk(mu_);
        ++done_;
      }
      done_cv_.notify_one();
    }
  }

  std::mutex run_mu_, mu_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> workers_;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0, chunk_ = 1;
  std::atomic<int64_t> next_{0};
  uint64_t generation_ = 0;
  int helpers_ = 0, done_ = 0;
};

}  // namespace

void parallel_for(int64_t n, int n_threads, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  n_threads = std::max(1, std::min({n_threads, hw * 2, 256}));
  if (n_threads == 1 || n == 1) {
    fn(0, n);
    return;
  }
  n_threads = static_cast<int>(std::min<int64_t>(n_threads, n));
  Pool::get().run(n, n_threads, fn);
}

}  // namespace edge
