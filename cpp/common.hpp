// Shared plumbing for the spectral_transcoder kernels: array access helpers, and
// (parallel.hpp) the std::thread drivers. Kernels are pure functions on contiguous
// float32 buffers; Python (spectral_transcoder/*.py) validates inputs before calling.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "parallel.hpp"

namespace st {

namespace py = pybind11;

// C-contiguous float32 array, cast on the way in (Python already hands us
// float32 C arrays, so this is normally a no-copy view).
using f32_array = py::array_t<float, py::array::c_style | py::array::forcecast>;
using f64_array = py::array_t<double, py::array::c_style | py::array::forcecast>;
using i64_array = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>;

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
