// spectral_transcoder._core: the numeric kernels. Each kernel family lives in its
// own translation unit and registers its functions here.
#include "common.hpp"

namespace st {
void register_third_octave(py::module_& m);
void register_mel_frontend(py::module_& m);
void register_pinv(py::module_& m);
}  // namespace st

PYBIND11_MODULE(_core, m) {
    m.doc() = "spectral_transcoder numeric kernels (float32, batched, GIL released, std::thread).";
    st::register_third_octave(m);
    st::register_mel_frontend(m);
    st::register_pinv(m);
}
