// Shared plumbing for the spectral_transcoder kernels: array access helpers and a
// std::thread parallel loop. Kernels are pure functions on contiguous float32
// buffers; Python (spectral_transcoder/*.py) validates inputs before calling.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstddef>
#include <exception>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace st {

namespace py = pybind11;

// C-contiguous float32 array, cast on the way in (Python already hands us
// float32 C arrays, so this is normally a no-copy view).
using f32_array = py::array_t<float, py::array::c_style | py::array::forcecast>;
using f64_array = py::array_t<double, py::array::c_style | py::array::forcecast>;
using i64_array = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>;

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

// Defensive checks at the C++ boundary. Python raises the user-facing errors;
// these only stop a misuse of _core from reading out of bounds.
inline void require(bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument(what);
}

// Product of all but the last `keep` dimensions: the batch size of (..., a, b).
inline std::size_t leading_size(const py::array& a, int keep) {
    std::size_t n = 1;
    for (py::ssize_t d = 0; d + keep < a.ndim(); ++d) n *= static_cast<std::size_t>(a.shape(d));
    return n;
}

}  // namespace st
