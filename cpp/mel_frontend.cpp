#include "common.hpp"

namespace st {
void register_mel_frontend(py::module_& m) { (void)m; }
}  // namespace st
