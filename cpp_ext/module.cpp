// sdk._native: the C++ twin of sdk/preprocess.py, sdk/postprocess.py and sdk/tiling.py.
#include "native_common.hpp"

PYBIND11_MODULE(_native, m) {
    m.doc() = "CFRG host-side pre/post-processing and tiling (C++). Use through sdk.preprocess, "
              "sdk.postprocess and sdk.tiling; every call releases the GIL.";
    cfrg::register_preprocess(m);
    cfrg::register_postprocess(m);
    cfrg::register_tiling(m);
    m.def("hardware_threads", &cfrg::hardware_threads, "Threads used when threads=0 on large inputs.");
}
