// Shared pieces of sdk._native: strided image views, argument checks with messages that say what
// was expected and what came, and the thread pool used by every kernel.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace py = pybind11;

namespace cfrg {

// A read-only uint8 image with byte strides (any sign): rows, pixels within a row, channels.
struct ImageU8 {
    const uint8_t* data = nullptr;
    int height = 0, width = 0, channels = 1;
    ptrdiff_t row_stride = 0, pixel_stride = 1, channel_stride = 1;

    bool pixels_packed() const {
        return pixel_stride == channels && (channels == 1 || channel_stride == 1);
    }
    const uint8_t* row(int y) const { return data + static_cast<ptrdiff_t>(y) * row_stride; }
    // Pointer to row y as packed pixels: the row itself when packed, else a copy into scratch.
    const uint8_t* packed_row(int y, uint8_t* scratch) const;
};

// A writable float32 2-D map with byte strides.
struct MapF32 {
    uint8_t* data = nullptr;
    int height = 0, width = 0;
    ptrdiff_t row_stride = 0, col_stride = 4;
    float* row(int y) const { return reinterpret_cast<float*>(data + static_cast<ptrdiff_t>(y) * row_stride); }
    bool cols_packed() const { return col_stride == 4; }
};

// "float32 array of shape (480, 640, 3)" / "list": used in every error message.
std::string describe(const py::handle& obj);
std::string dtype_name(const py::array& a);
[[noreturn]] void fail(const std::string& message);

bool is_u8(const py::array& a);
bool is_f32(const py::array& a);

// Checks that obj is a numpy array (not a list that would be copied); `what` names the argument.
py::array require_array(const py::object& obj, const char* what, const std::string& expected);
// A uint8 frame H x W, H x W x 1 or H x W x 3 as a strided view.
ImageU8 image_view(const py::array& a, const char* what);
// A float32 H x W map as a strided (possibly writable) view.
MapF32 map_view(const py::array& a, const char* what, bool writable);

// Round half to even for 0 <= v < 2^22, as cvRound does in the default FP mode.
inline float round_half_even_small(float v) {
    const float magic = 12582912.0f;  // 1.5 * 2^23
    return (v + magic) - magic;
}

// Threads: 0 = auto (hardware threads, but only as many as the work pays for).
int hardware_threads();
int resolve_threads(int requested, int64_t work, int64_t work_per_thread);
// Runs body(chunk) for chunk in [0, chunks) on up to `threads` threads (the caller included).
// Chunks are handed out dynamically. If the pool is busy (another Python thread is inside a
// native call) the chunks run on the calling thread.
void parallel_chunks(int chunks, int threads, const std::function<void(int)>& body);
// Splits [0, n) into `chunks` near-equal ranges; returns the range of chunk i.
inline void chunk_range(int64_t n, int chunks, int i, int64_t& begin, int64_t& end) {
    begin = n * i / chunks;
    end = n * (i + 1) / chunks;
}

void register_preprocess(py::module_& m);
void register_postprocess(py::module_& m);
void register_tiling(py::module_& m);

}  // namespace cfrg
