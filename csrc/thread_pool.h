// A small persistent thread pool: spawning threads per call costs tens of microseconds, which is the
// whole budget of a pruning call; OpenMP is avoided so we never load a second libgomp beside torch's.
#pragma once
#include <cstdint>
#include <functional>

namespace edge {

// Runs fn(begin, end) over [0, n) split into chunks on up to n_threads threads (the caller included).
// Calls are serialised; fn must not throw.
void parallel_for(int64_t n, int n_threads, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace edge
