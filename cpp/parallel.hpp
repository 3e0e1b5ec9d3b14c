// Parallel drivers for the spectral_transcoder kernels: how many threads a job
// gets, a std::thread loop over contiguous blocks, and the lane-group driver that
// the frame kernels (third_octave.cpp, mel_frontend.cpp) share.
#pragma once

#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstddef>
#include <exception>
#include <thread>
#include <utility>
#include <vector>

namespace st {

// Number of worker threads to use for `n_items` independent items, each costing
// roughly `cost_per_item` arbitrary units; small jobs stay on the calling thread
// because spawning threads costs ~20 us each.
inline unsigned choose_threads(std::size_t n_items, double cost_per_item, int requested) {
    if (n_items <= 1) return 1;
    unsigned hw = std::max(1u, std::thread::hardware_concurrency());
    unsigned cap = requested > 0 ? static_cast<unsigned>(requested) : hw;
    constexpr double kMinWorkPerThread = 2e5;  // ~0.1 ms of work
    double total = cost_per_item * static_cast<double>(n_items);
    unsigned by_work = static_cast<unsigned>(std::max(1.0, total / kMinWorkPerThread));
    return std::max(1u, std::min({cap, by_work, static_cast<unsigned>(n_items)}));
}

// Run fn(begin, end) over [0, n) split into contiguous blocks, one per thread.
// Exceptions thrown by workers are re-thrown on the calling thread, so nothing
// escapes a std::thread (which would terminate the interpreter). Call this with
// the GIL released.
template <class Fn>
void parallel_for(std::size_t n, unsigned n_threads, Fn&& fn) {
    if (n == 0) return;
    n_threads = std::max(1u, std::min<unsigned>(n_threads, static_cast<unsigned>(n)));
    if (n_threads == 1) {
        fn(std::size_t{0}, n);
        return;
    }
    std::vector<std::thread> workers;
    std::vector<std::exception_ptr> errors(n_threads);
    workers.reserve(n_threads - 1);
    const std::size_t block = (n + n_threads - 1) / n_threads;
    for (unsigned t = 1; t < n_threads; ++t) {
        std::size_t b = t * block, e = std::min(n, b + block);
        if (b >= e) break;
        workers.emplace_back([&, t, b, e] {
            try {
                fn(b, e);
            } catch (...) {
                errors[t] = std::current_exception();
            }
        });
    }
    try {
        fn(std::size_t{0}, std::min(n, block));
    } catch (...) {
        errors[0] = std::current_exception();
    }
    for (auto& w : workers) w.join();
    for (auto& e : errors)
        if (e) std::rethrow_exception(e);
}

// The frame kernels' driver. Items [0, n_items) (frames) are processed `lanes` at a
// time (one SIMD-vector FFT call per group), so the work is split by whole groups:
// each thread gets a contiguous run of groups, and only the last group may be short.
//
// With the GIL released (the kernels touch no Python object), `make_plan()` is called
// once and its result (a pointer-like plan: pocketfft's get_plan returns a shared_ptr)
// is shared by every thread: the plan cache is mutex-protected and a plan's exec() is
// const with its own scratch. Then run(plan, first, last) runs on choose_threads
// threads, `cost_per_group` being the work of one group in choose_threads' units.
template <class MakePlan, class Run>
void run_lane_groups(std::size_t n_items, std::size_t lanes, double cost_per_group, int n_threads,
                     MakePlan&& make_plan, Run&& run) {
    if (n_items == 0) return;
    pybind11::gil_scoped_release release;
    const auto plan = make_plan();
    const std::size_t groups = (n_items + lanes - 1) / lanes;
    const unsigned threads = choose_threads(groups, cost_per_group, n_threads);
    parallel_for(groups, threads, [&](std::size_t gb, std::size_t ge) {
        run(*plan, gb * lanes, std::min(n_items, ge * lanes));
    });
}

}  // namespace st
