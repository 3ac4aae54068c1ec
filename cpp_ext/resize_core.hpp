// Resampling that reproduces OpenCV's cv2.resize bit for bit (OpenCV 4.x/5.x generic code paths):
//   uint8 INTER_LINEAR: 11-bit fixed-point weights, vertical pass as OpenCV's SIMD kernel rounds it;
//   uint8 INTER_AREA:   integer factors (2x2: (sum + 2) >> 2, else sum * (1/area) rounded half-even)
//                       and the general float accumulation in OpenCV's order;
//   float32 INTER_LINEAR: float weights, products rounded before the sum (no FMA), as OpenCV's own
//                       code does (cv2 with IPP enabled differs by up to ~1e-5 on float input).
// Half-pixel centres throughout. Work is done row by row so callers can fuse their own per-row
// work (colour conversion, packing, thresholding) while the row is still in cache.
#pragma once

#include <functional>
#include <vector>

#include "native_common.hpp"

namespace cfrg {

enum class Interp { Linear, Area };

// emit(dy, row): row holds dw * channels uint8 values of destination row dy (packed pixels).
// Called from worker threads, each dy exactly once.
using RowEmitter = std::function<void(int, const uint8_t*)>;

// Resizes src (any strides) to dw x dh; `threads` workers split the destination rows.
// swap_rb reverses the 3 channels on the way (free inside the resampling loops).
void resize_u8(const ImageU8& src, int dw, int dh, Interp interp, int threads, const RowEmitter& emit,
               bool swap_rb = false);

// Per-thread scratch buffers that survive between calls (no allocation once warm).
void* thread_scratch(int slot, size_t bytes);
template <class T>
T* scratch_of(int slot, size_t count) {
    return static_cast<T*>(thread_scratch(slot, count * sizeof(T)));
}

// float32 bilinear resize of a strided map, computed one destination row at a time.
class LinearF32 {
public:
    LinearF32(const uint8_t* data, int sh, int sw, ptrdiff_t row_stride, ptrdiff_t col_stride, int dh, int dw);
    // Per-thread cache of the two horizontally resampled source rows.
    struct Cache {
        float* rows[2] = {nullptr, nullptr};
        int which[2] = {-1, -1};
        float* gather = nullptr;
    };
    // Buffers from thread_scratch slots [slot, slot + 3).
    Cache make_cache(int slot) const;
    void row(int dy, float* dst, Cache& cache) const;
    int dst_width() const { return dw_; }

private:
    const float* source_row(int sy, Cache& cache) const;
    struct Tables {  // cached per thread for the last geometry
        std::vector<int> x0, x1, y0, y1, ofs;
        std::vector<float> a0, a1, b0, b1, frac;
    };
    static void build(Tables& t, int sh, int sw, int dh, int dw);
    const uint8_t* data_;
    int sh_, sw_, dh_, dw_;
    ptrdiff_t row_stride_, col_stride_;
    const Tables& t_;
};

}  // namespace cfrg
