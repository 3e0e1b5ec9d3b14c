#include "common.hpp"

namespace st {
void register_third_octave(py::module_& m) { (void)m; }
}  // namespace st
