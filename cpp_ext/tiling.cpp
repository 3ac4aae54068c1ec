// Tiling for large (line-camera) frames: copy overlapping model-size tiles out of a frame, and
// stitch per-tile maps back (max, or a mean weighted towards tile centres).
#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "resize_core.hpp"

namespace cfrg {
namespace {

void make_tiles(const py::object& frame_obj, int tile_h, int tile_w, const std::vector<int>& xs,
                const std::vector<int>& ys, int pad_value, const py::object& out_obj, int threads) {
    py::array frame_a = require_array(frame_obj, "frame", "uint8 H x W, H x W x 1 or H x W x 3");
    ImageU8 f = image_view(frame_a, "frame");
    if (tile_h < 1 || tile_w < 1)
        fail("tile must be positive; got (" + std::to_string(tile_h) + ", " + std::to_string(tile_w) + ")");
    for (int x : xs)
        if (x < 0 || x >= f.width || (x + tile_w > f.width && x != 0))
            fail("tile x origins must lie in [0, " + std::to_string(std::max(0, f.width - tile_w)) + "]; got " +
                 std::to_string(x));
    for (int y : ys)
        if (y < 0 || y >= f.height || (y + tile_h > f.height && y != 0))
            fail("tile y origins must lie in [0, " + std::to_string(std::max(0, f.height - tile_h)) + "]; got " +
                 std::to_string(y));
    if (pad_value < 0 || pad_value > 255) fail("pad_value must be in [0, 255]; got " + std::to_string(pad_value));
    const int n = static_cast<int>(xs.size() * ys.size());
    const int ndim = static_cast<int>(frame_a.ndim()) + 1;  // tiles keep the frame's dims
    std::string expected = "uint8 array of shape (" + std::to_string(n) + ", " + std::to_string(tile_h) + ", " +
                           std::to_string(tile_w) + (ndim == 4 ? ", " + std::to_string(f.channels) : "") + ")";
    py::array out_a = require_array(out_obj, "out", expected);
    bool ok = is_u8(out_a) && out_a.ndim() == ndim && out_a.shape(0) == n && out_a.shape(1) == tile_h &&
              out_a.shape(2) == tile_w && (ndim == 3 || out_a.shape(3) == f.channels);
    if (!ok) fail("out must be a " + expected + "; got " + describe(out_a));
    if (!out_a.writeable()) fail("out must be writeable; got " + describe(out_a));
    uint8_t* out = static_cast<uint8_t*>(out_a.mutable_data());
    const ptrdiff_t sn = out_a.strides(0), sy = out_a.strides(1), sx = out_a.strides(2);
    const ptrdiff_t sc = ndim == 4 ? out_a.strides(3) : 1;
    const int cn = f.channels;
    const bool out_packed = sx == cn && (cn == 1 || sc == 1);
    const int nthreads = resolve_threads(threads, static_cast<int64_t>(n) * tile_h * tile_w * cn, 1 << 21);

    py::gil_scoped_release release;
    const int nx = static_cast<int>(xs.size());
    parallel_chunks(n, nthreads, [&](int t) {
        const int ox = xs[t % nx], oy = ys[t / nx];
        const int copy_w = std::min(tile_w, f.width - ox);
        uint8_t* px = scratch_of<uint8_t>(18, static_cast<size_t>(tile_w) * cn);
        for (int r = 0; r < tile_h; ++r) {
            uint8_t* dst = out + t * sn + r * sy;
            const int y = oy + r;
            const uint8_t* src;
            if (y < f.height && f.pixels_packed() && copy_w == tile_w) {
                src = f.row(y) + static_cast<ptrdiff_t>(ox) * cn;  // straight from the frame
            } else {
                int x = 0;
                if (y < f.height) {
                    const uint8_t* row = f.row(y) + static_cast<ptrdiff_t>(ox) * f.pixel_stride;
                    for (; x < copy_w; ++x)
                        for (int c = 0; c < cn; ++c) px[x * cn + c] = row[x * f.pixel_stride + c * f.channel_stride];
                }
                std::memset(px + x * cn, pad_value, static_cast<size_t>(tile_w - x) * cn);
                src = px;
            }
            if (out_packed) {
                std::memcpy(dst, src, static_cast<size_t>(tile_w) * cn);
            } else {
                for (int x = 0; x < tile_w; ++x)
                    for (int c = 0; c < cn; ++c) dst[x * sx + c * sc] = src[x * cn + c];
            }
        }
    });
}

// Tile weight along one axis: distance to the nearer tile edge, in pixels (1 at the edge).
inline float edge_weight(int i, int n) { return static_cast<float>(std::min(i + 1, n - i)); }

void stitch(const py::object& maps_obj, const py::object& origins_obj, int frame_h, int frame_w,
            const std::string& mode, const py::object& out_obj, int threads) {
    py::array maps = require_array(maps_obj, "tile_maps", "float32 (N, tile_h, tile_w)");
    if (!is_f32(maps) || maps.ndim() != 3 || maps.shape(0) < 1)
        fail("tile_maps must be a float32 array of shape (N, tile_h, tile_w); got " + describe(maps));
    if (maps.strides(2) % 4 != 0) fail("tile_maps must have float-aligned strides; got " + describe(maps));
    const int n = static_cast<int>(maps.shape(0)), th = static_cast<int>(maps.shape(1)),
              tw = static_cast<int>(maps.shape(2));
    py::array origins = require_array(origins_obj, "origins", "int64 (N, 2) of (x, y)");
    if (origins.dtype().kind() != 'i' || origins.itemsize() != 8 || origins.ndim() != 2 || origins.shape(0) != n ||
        origins.shape(1) != 2)
        fail("origins must be an int64 array of shape (" + std::to_string(n) + ", 2) holding (x, y); got " +
             describe(origins));
    if (mode != "max" && mode != "mean") fail("mode must be 'max' or 'mean'; got '" + mode + "'");
    if (frame_h < 1 || frame_w < 1)
        fail("frame_shape must be positive; got (" + std::to_string(frame_h) + ", " + std::to_string(frame_w) + ")");
    py::array out_a = require_array(out_obj, "out", "float32 (H, W)");
    MapF32 out = map_view(out_a, "out", true);
    if (out.height != frame_h || out.width != frame_w)
        fail("out must be a float32 array of shape (" + std::to_string(frame_h) + ", " + std::to_string(frame_w) +
             "); got " + describe(out_a));
    // Reused by this (Python) thread; bound to references for the worker lambda.
    thread_local std::vector<int> ox_store, oy_store;
    thread_local std::vector<float> wx_store;
    std::vector<int>& ox = ox_store;
    std::vector<int>& oy = oy_store;
    std::vector<float>& wx = wx_store;
    ox.resize(n), oy.resize(n);
    const uint8_t* ob = static_cast<const uint8_t*>(origins.data());
    for (int i = 0; i < n; ++i) {
        int64_t x, y;
        std::memcpy(&x, ob + i * origins.strides(0), 8);
        std::memcpy(&y, ob + i * origins.strides(0) + origins.strides(1), 8);
        if (x < 0 || y < 0 || x >= frame_w || y >= frame_h)
            fail("origin " + std::to_string(i) + " (x=" + std::to_string(x) + ", y=" + std::to_string(y) +
                 ") lies outside the frame of width " + std::to_string(frame_w) + " and height " +
                 std::to_string(frame_h));
        ox[i] = static_cast<int>(x);
        oy[i] = static_cast<int>(y);
    }
    const uint8_t* mb = static_cast<const uint8_t*>(maps.data());
    const ptrdiff_t mn = maps.strides(0), my = maps.strides(1), mx = maps.strides(2);
    const bool use_max = mode == "max";
    const int nthreads = resolve_threads(threads, static_cast<int64_t>(frame_h) * frame_w, 1 << 20);

    py::gil_scoped_release release;
    wx.resize(tw);
    for (int i = 0; i < tw; ++i) wx[i] = edge_weight(i, tw);
    // Bands of kBand rows: every tile contributes kBand consecutive rows at a time (contiguous
    // memory, friendly to the prefetcher), and the band's accumulators stay in cache.
    constexpr int kBand = 8;
    const int bands = (frame_h + kBand - 1) / kBand;
    const bool packed = out.cols_packed();
    parallel_chunks(bands, nthreads, [&](int band) {
        const int y0 = band * kBand, y1 = std::min(frame_h, y0 + kBand);
        float* scratch_acc = scratch_of<float>(16, static_cast<size_t>(kBand) * frame_w);
        float* wsum = scratch_of<float>(17, static_cast<size_t>(kBand) * frame_w);
        float* acc[kBand];
        for (int y = y0; y < y1; ++y) {
            acc[y - y0] = packed ? out.row(y) : scratch_acc + static_cast<size_t>(y - y0) * frame_w;
            std::fill(acc[y - y0], acc[y - y0] + frame_w, use_max ? -std::numeric_limits<float>::infinity() : 0.f);
        }
        std::fill(wsum, wsum + static_cast<size_t>(y1 - y0) * frame_w, 0.f);
        for (int t = 0; t < n; ++t) {
            const int r0 = std::max(y0, oy[t]), r1 = std::min(y1, oy[t] + th);
            const int x0 = ox[t], cw = std::min(tw, frame_w - x0);
            for (int y = r0; y < r1; ++y) {
                const int r = y - oy[t];
                const uint8_t* row = mb + t * mn + r * my;
                float* a = acc[y - y0] + x0;
                float* ws = wsum + static_cast<size_t>(y - y0) * frame_w + x0;
                const float wy = edge_weight(r, th);
                if (mx == 4 && use_max) {
                    const float* v = reinterpret_cast<const float*>(row);
                    for (int i = 0; i < cw; ++i) a[i] = a[i] < v[i] ? v[i] : a[i];
                    std::fill(ws, ws + cw, 1.f);
                } else if (mx == 4) {
                    const float* v = reinterpret_cast<const float*>(row);
                    for (int i = 0; i < cw; ++i) {
                        const float w = wy * wx[i];
                        a[i] = a[i] + w * v[i];
                        ws[i] = ws[i] + w;
                    }
                } else {
                    for (int i = 0; i < cw; ++i) {
                        float v;
                        std::memcpy(&v, row + i * mx, 4);
                        if (use_max) {
                            a[i] = a[i] < v ? v : a[i];
                            ws[i] = 1.f;
                        } else {
                            const float w = wy * wx[i];
                            a[i] = a[i] + w * v;
                            ws[i] = ws[i] + w;
                        }
                    }
                }
            }
        }
        for (int y = y0; y < y1; ++y) {
            float* a = acc[y - y0];
            const float* ws = wsum + static_cast<size_t>(y - y0) * frame_w;
            if (use_max) {
                for (int x = 0; x < frame_w; ++x) a[x] = ws[x] > 0.f ? a[x] : 0.f;
            } else {
                for (int x = 0; x < frame_w; ++x) a[x] = ws[x] > 0.f ? a[x] / ws[x] : 0.f;
            }
            if (!packed) {
                uint8_t* o = reinterpret_cast<uint8_t*>(out.row(y));
                for (int x = 0; x < frame_w; ++x) std::memcpy(o + x * out.col_stride, a + x, 4);
            }
        }
    });
}

}  // namespace

void register_tiling(py::module_& m) {
    m.def("make_tiles", &make_tiles, py::arg("frame"), py::arg("tile_h"), py::arg("tile_w"), py::arg("xs"),
          py::arg("ys"), py::arg("pad_value"), py::arg("out"), py::arg("threads") = 0,
          "Copies the tiles at origins (xs[i], ys[j]) (row-major: index j * len(xs) + i) into out\n"
          "(N, tile_h, tile_w[, C]); parts beyond the frame get pad_value. Releases the GIL.");
    m.def("stitch", &stitch, py::arg("tile_maps"), py::arg("origins"), py::arg("frame_h"), py::arg("frame_w"),
          py::arg("mode"), py::arg("out"), py::arg("threads") = 0,
          "Stitches (N, tile_h, tile_w) float32 maps placed at origins (N, 2) of (x, y) into out (H, W):\n"
          "'max' takes the maximum where tiles overlap; 'mean' the mean weighted by\n"
          "min(i + 1, n - i) along each tile axis (tile centres count more). Pixels no tile covers are 0.\n"
          "Releases the GIL.");
}

}  // namespace cfrg
