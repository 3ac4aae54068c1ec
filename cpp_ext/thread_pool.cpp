// A small persistent thread pool: workers sleep on a condition variable and are woken per
// parallel region, so a call costs a wake-up, not a thread start. One region runs at a time;
// a second caller (another Python thread, since the GIL is released) runs its chunks itself.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>

#include "native_common.hpp"

namespace cfrg {
namespace {

constexpr int kMaxThreads = 64;

class Pool {
public:
    void run(int chunks, int threads, const std::function<void(int)>& body) {
        std::unique_lock<std::mutex> region(region_mutex_, std::try_to_lock);
        if (!region.owns_lock() || threads <= 1 || chunks <= 1) {
            for (int i = 0; i < chunks; ++i) body(i);
            return;
        }
        grow(threads - 1);
        {
            std::lock_guard<std::mutex> lk(mutex_);
            body_ = &body;
            chunks_ = chunks;
            next_.store(0);
            helpers_wanted_ = threads - 1;
            helpers_joined_ = 0;
            error_ = nullptr;
            ++generation_;
        }
        wake_.notify_all();
        work();
        std::unique_lock<std::mutex> lk(mutex_);
        helpers_wanted_ = 0;  // late wakers must not join a finished region
        done_.wait(lk, [&] { return active_ == 0; });
        body_ = nullptr;
        if (error_) std::rethrow_exception(error_);
    }

private:
    void grow(int helpers) {
        helpers = std::min(helpers, kMaxThreads - 1);
        std::lock_guard<std::mutex> lk(mutex_);
        // A new worker starts from the current generation, so it joins the region about to start.
        while (static_cast<int>(workers_.size()) < helpers)
            workers_.emplace_back([this, start = generation_] { loop(start); });
    }

    void work() {
        for (;;) {
            int i = next_.fetch_add(1);
            if (i >= chunks_) return;
            try {
                (*body_)(i);
            } catch (...) {
                std::lock_guard<std::mutex> lk(mutex_);
                if (!error_) error_ = std::current_exception();
            }
        }
    }

    void loop(uint64_t seen) {
        std::unique_lock<std::mutex> lk(mutex_);
        for (;;) {
            wake_.wait(lk, [&] { return generation_ != seen; });
            seen = generation_;
            if (helpers_joined_ >= helpers_wanted_) continue;
            ++helpers_joined_;
            ++active_;
            lk.unlock();
            work();
            lk.lock();
            if (--active_ == 0) done_.notify_all();
        }
    }

    std::mutex region_mutex_;
    std::mutex mutex_;
    std::condition_variable wake_, done_;
    std::vector<std::thread> workers_;
    const std::function<void(int)>* body_ = nullptr;
    int chunks_ = 0;
    std::atomic<int> next_{0};
    int helpers_wanted_ = 0, helpers_joined_ = 0, active_ = 0;
    uint64_t generation_ = 0;
    std::exception_ptr error_;
};

Pool& pool() {
    // Never destroyed (workers may be asleep at interpreter exit); rebuilt in a forked child,
    // where the parent's workers do not exist.
    static Pool* instance = nullptr;
    static pid_t owner = 0;
    static std::mutex guard;
    std::lock_guard<std::mutex> lk(guard);
    if (instance == nullptr || owner != getpid()) {
        instance = new Pool();
        owner = getpid();
    }
    return *instance;
}

}  // namespace

int hardware_threads() {
    unsigned n = std::thread::hardware_concurrency();
    return n == 0 ? 1 : static_cast<int>(std::min<unsigned>(n, kMaxThreads));
}

int resolve_threads(int requested, int64_t work, int64_t work_per_thread) {
    if (requested < 0) fail("threads must be >= 0 (0 = automatic); got " + std::to_string(requested));
    if (requested > 0) return std::min(requested, kMaxThreads);
    int64_t useful = work_per_thread > 0 ? std::max<int64_t>(1, work / work_per_thread) : 1;
    return static_cast<int>(std::min<int64_t>(hardware_threads(), useful));
}

void parallel_chunks(int chunks, int threads, const std::function<void(int)>& body) {
    if (chunks <= 0) return;
    pool().run(chunks, std::min(threads, chunks), body);
}

}  // namespace cfrg
