// Post-processing: anomaly map -> frame resolution (OpenCV-exact float bilinear), threshold,
// 8-connected components on runs, minimum-area filter and region statistics, all in one pass
// over the rows; and the overlay (heat map blended on the frame, region contours).
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>

#include "resize_core.hpp"

namespace cfrg {
namespace {

// A horizontal run of foreground pixels [x0, x1) on row y, with the sum and maximum of the map over it.
struct Run {
    int y, x0, x1;
    float max;
    double sum;
};

// The runs of a band of rows, with union-find parents (the root is the smallest index, i.e. the
// component's first run in raster order).
struct Band {
    int row0 = 0, row1 = 0;
    std::vector<Run> runs;
    std::vector<int> parent;
    std::vector<int> row_start;  // runs of row row0 + i are [row_start[i], row_start[i + 1])
};

inline int find_root(std::vector<int>& parent, int i) {
    while (parent[i] != i) {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    return i;
}

inline void unite(std::vector<int>& parent, int a, int b) {
    a = find_root(parent, a);
    b = find_root(parent, b);
    if (a != b) parent[std::max(a, b)] = std::min(a, b);
}

// Unites 8-connected runs of two consecutive rows: runs [pa, pb) above, [ca, cb) below.
// `base` offsets the run indices into `parent`.
void connect_rows(const std::vector<Run>& above, int pa, int pb, const std::vector<Run>& below, int ca, int cb,
                  std::vector<int>& parent, int base_above, int base_below) {
    int i = pa;
    for (int c = ca; c < cb; ++c) {
        const Run& r = below[c];
        while (i < pb && above[i].x1 < r.x0) ++i;  // ends left of r's left neighbour
        for (int j = i; j < pb && above[j].x0 <= r.x1; ++j) unite(parent, base_above + j, base_below + c);
    }
}

inline uint64_t load_u64(const uint8_t* p) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    return v;
}

struct Outputs {
    MapF32 map;
    uint8_t* mask = nullptr;
    ptrdiff_t mask_row = 0, mask_col = 1;
    uint8_t* mask_at(int y, int x) const {
        return mask + static_cast<ptrdiff_t>(y) * mask_row + static_cast<ptrdiff_t>(x) * mask_col;
    }
    void put_mask(int y, int x, const uint8_t* vals, int n) const {
        uint8_t* d = mask_at(y, x);
        if (mask_col == 1) {
            std::memcpy(d, vals, n);
        } else {
            for (int i = 0; i < n; ++i) d[i * mask_col] = vals[i];
        }
    }
    void clear_mask(int y, int x, int n) const {
        uint8_t* d = mask_at(y, x);
        if (mask_col == 1) {
            std::memset(d, 0, n);
        } else {
            for (int i = 0; i < n; ++i) d[i * mask_col] = 0;
        }
    }
};

// Writes map row y of the resize into the output map (through tmp when its columns are not packed).
inline float* resized_row(const LinearF32& resizer, const MapF32& out, int y, float* tmp, LinearF32::Cache& cache) {
    float* m = out.cols_packed() ? out.row(y) : tmp;
    resizer.row(y, m, cache);
    if (!out.cols_packed()) {
        uint8_t* d = reinterpret_cast<uint8_t*>(out.row(y));
        for (int x = 0; x < out.width; ++x) std::memcpy(d + x * out.col_stride, m + x, 4);
    }
    return m;
}

// Resize, threshold and label the runs of rows [band.row0, band.row1), and write the mask rows
// (mask_value on foreground; small regions are cleared after the merge).
void process_band(Band& band, const LinearF32& resizer, const Outputs& o, float threshold, uint8_t mask_value) {
    const int rw = o.map.width;
    LinearF32::Cache cache = resizer.make_cache(10);
    float* tmp_map = scratch_of<float>(13, rw);
    uint8_t* keep = scratch_of<uint8_t>(14, rw + 8);
    band.runs.clear();
    band.row_start.clear();
    for (int y = band.row0; y < band.row1; ++y) {
        band.row_start.push_back(static_cast<int>(band.runs.size()));
        const float* m = resized_row(resizer, o.map, y, tmp_map, cache);
        for (int x = 0; x < rw; ++x) keep[x] = m[x] >= threshold ? 0xff : 0;
        // Runs: skip 8 background (or foreground) pixels at a time.
        int x = 0;
        while (x < rw) {
            while (x + 8 <= rw && load_u64(keep + x) == 0) x += 8;
            while (x < rw && !keep[x]) ++x;
            if (x >= rw) break;
            const int start = x;
            while (x + 8 <= rw && load_u64(keep + x) == ~0ull) x += 8;
            while (x < rw && keep[x]) ++x;
            if (mask_value != 0xff) std::memset(keep + start, mask_value, x - start);
            Run r{y, start, x, m[start], 0.0};
            for (int i = start; i < x; ++i) {
                r.sum += m[i];
                r.max = std::max(r.max, m[i]);
            }
            band.runs.push_back(r);
        }
        o.put_mask(y, 0, keep, rw);
    }
    band.row_start.push_back(static_cast<int>(band.runs.size()));
    band.parent.resize(band.runs.size());
    for (size_t i = 0; i < band.parent.size(); ++i) band.parent[i] = static_cast<int>(i);
    for (int y = band.row0 + 1; y < band.row1; ++y) {
        const int i = y - band.row0;
        connect_rows(band.runs, band.row_start[i - 1], band.row_start[i], band.runs, band.row_start[i],
                     band.row_start[i + 1], band.parent, 0, 0);
    }
}

py::array_t<double> postprocess(const py::object& map_obj, int frame_h, int frame_w, double threshold,
                                int64_t min_area, const py::object& out_map_obj, const py::object& out_mask_obj, int mask_value,
                                int threads) {
    py::array amap = require_array(map_obj, "anomaly_map", "float32 (H, W)");
    MapF32 src = map_view(amap, "anomaly_map", false);
    if (frame_h < 1 || frame_w < 1)
        fail("frame_shape must be positive; got (" + std::to_string(frame_h) + ", " + std::to_string(frame_w) + ")");
    const std::string shape = "(" + std::to_string(frame_h) + ", " + std::to_string(frame_w) + ")";
    py::array out_map = require_array(out_map_obj, "out_map", "float32 " + shape);
    Outputs o;
    o.map = map_view(out_map, "out_map", true);
    if (o.map.height != frame_h || o.map.width != frame_w)
        fail("out_map must be a float32 array of shape " + shape + "; got " + describe(out_map));
    py::array out_mask = require_array(out_mask_obj, "out_mask", "uint8 " + shape);
    if (!is_u8(out_mask) || out_mask.ndim() != 2 || out_mask.shape(0) != frame_h || out_mask.shape(1) != frame_w)
        fail("out_mask must be a uint8 array of shape " + shape + "; got " + describe(out_mask));
    if (!out_mask.writeable()) fail("out_mask must be writeable; got " + describe(out_mask));
    o.mask = static_cast<uint8_t*>(out_mask.mutable_data());
    o.mask_row = out_mask.strides(0);
    o.mask_col = out_mask.strides(1);
    if (min_area < 0) fail("min_area must be >= 0; got " + std::to_string(min_area));
    if (mask_value < 1 || mask_value > 255) fail("mask_value must be in [1, 255]; got " + std::to_string(mask_value));

    const float thr = static_cast<float>(threshold);  // compared in float32, as NumPy does
    const int nthreads = resolve_threads(threads, static_cast<int64_t>(frame_w) * frame_h, 1 << 19);

    // Reused between calls of this (Python) thread. Bound to references: inside the worker
    // lambda a thread_local name would mean the worker's own, empty instance.
    thread_local std::vector<Band> band_store;
    thread_local std::vector<int> parent_store, root_store, offset_store;
    thread_local std::vector<Run> stats_store;  // per root: x0 = min x, x1 = max x1, y = max y
    thread_local std::vector<int64_t> area_store;
    std::vector<Band>& bands = band_store;
    std::vector<int>& parent = parent_store;
    std::vector<int>& roots = root_store;
    std::vector<int>& offset = offset_store;
    std::vector<Run>& stats = stats_store;
    std::vector<int64_t>& areas = area_store;
    std::vector<std::array<double, 7>> regions;
    {
        py::gil_scoped_release release;
        const LinearF32 resizer(src.data, src.height, src.width, src.row_stride, src.col_stride, frame_h, frame_w);
        const int nb = nthreads <= 1 ? 1 : std::min(frame_h, nthreads * 4);
        if (static_cast<int>(bands.size()) < nb) bands.resize(nb);
        for (int b = 0; b < nb; ++b) {
            int64_t r0, r1;
            chunk_range(frame_h, nb, b, r0, r1);
            bands[b].row0 = static_cast<int>(r0);
            bands[b].row1 = static_cast<int>(r1);
        }
        parallel_chunks(nb, nthreads, [&](int b) { process_band(bands[b], resizer, o, thr, static_cast<uint8_t>(mask_value)); });

        // Merge the bands: global run index = band offset + local index.
        offset.assign(nb + 1, 0);
        for (int b = 0; b < nb; ++b) offset[b + 1] = offset[b] + static_cast<int>(bands[b].runs.size());
        const int total = offset[nb];
        parent.resize(total);
        for (int b = 0; b < nb; ++b)
            for (int i = 0; i < static_cast<int>(bands[b].runs.size()); ++i)
                parent[offset[b] + i] = offset[b] + find_root(bands[b].parent, i);
        for (int b = 1; b < nb; ++b) {
            const Band& up = bands[b - 1];
            const Band& dn = bands[b];
            if (up.row1 <= up.row0 || dn.row1 <= dn.row0) continue;
            const int last = up.row1 - up.row0 - 1;
            connect_rows(up.runs, up.row_start[last], up.row_start[last + 1], dn.runs, dn.row_start[0],
                         dn.row_start[1], parent, offset[b - 1], offset[b]);
        }
        // Statistics per root; roots in index order are the components in raster order of
        // their first pixel.
        stats.resize(total);
        areas.assign(total, 0);
        roots.resize(total);
        for (int b = 0; b < nb; ++b) {
            for (int i = 0; i < static_cast<int>(bands[b].runs.size()); ++i) {
                const int g = offset[b] + i;
                const Run& r = bands[b].runs[i];
                const int root = find_root(parent, g);
                roots[g] = root;
                Run& s = stats[root];
                if (root == g) {
                    s = r;
                } else {
                    s.x0 = std::min(s.x0, r.x0);
                    s.x1 = std::max(s.x1, r.x1);
                    s.y = std::max(s.y, r.y);
                    s.max = std::max(s.max, r.max);
                    s.sum += r.sum;
                }
                areas[root] += r.x1 - r.x0;
            }
        }
        for (int b = 0; b < nb; ++b) {
            for (int i = 0; i < static_cast<int>(bands[b].runs.size()); ++i) {
                const int g = offset[b] + i;
                const Run& r = bands[b].runs[i];
                if (areas[roots[g]] < min_area) {
                    o.clear_mask(r.y, r.x0, r.x1 - r.x0);
                } else if (roots[g] == g) {
                    const Run& s = stats[g];
                    const double area = static_cast<double>(areas[g]);
                    regions.push_back({double(s.x0), double(r.y), double(s.x1 - s.x0),
                                       double(s.y - r.y + 1), area, double(s.max),
                                       double(static_cast<float>(s.sum / area))});
                }
            }
        }
    }
    py::array_t<double> result({static_cast<py::ssize_t>(regions.size()), static_cast<py::ssize_t>(7)});
    if (!regions.empty()) std::memcpy(result.mutable_data(), regions.data(), regions.size() * sizeof(regions[0]));
    return result;
}

// The map resized (float bilinear) into out_map: what postprocess writes as its full map.
void resize_map(const py::object& map_obj, const py::object& out_map_obj, int threads) {
    py::array amap = require_array(map_obj, "anomaly_map", "float32 (H, W)");
    const MapF32 src = map_view(amap, "anomaly_map", false);
    py::array out_map = require_array(out_map_obj, "out_map", "float32 (H, W)");
    const MapF32 out = map_view(out_map, "out_map", true);
    const int nthreads = resolve_threads(threads, static_cast<int64_t>(out.width) * out.height, 1 << 19);

    py::gil_scoped_release release;
    const LinearF32 resizer(src.data, src.height, src.width, src.row_stride, src.col_stride, out.height, out.width);
    const int chunks = nthreads <= 1 ? 1 : std::min(out.height, nthreads * 4);
    parallel_chunks(chunks, nthreads, [&](int chunk) {
        int64_t y0, y1;
        chunk_range(out.height, chunks, chunk, y0, y1);
        LinearF32::Cache cache = resizer.make_cache(10);
        float* tmp = scratch_of<float>(13, out.width);
        for (int y = static_cast<int>(y0); y < y1; ++y) resized_row(resizer, out, y, tmp, cache);
    });
}

// Heat map (colour LUT of the map scaled to [lo, lo + 255 / scale]) blended on the frame, and
// the region contours (mask pixels with a 4-neighbour outside the mask or the image) in `color`.
void overlay(const py::object& frame_obj, const py::object& map_obj, const py::object& mask_obj,
             const py::object& out_obj, float lo, float scale, float alpha, float inv_alpha, const py::object& lut_obj,
             std::array<int, 3> color, int threads) {
    py::array frame_a = require_array(frame_obj, "frame", "uint8 H x W, H x W x 1 or H x W x 3");
    ImageU8 frame = image_view(frame_a, "frame");
    const int h = frame.height, w = frame.width;
    const std::string shape = "(" + std::to_string(h) + ", " + std::to_string(w) + ")";
    py::array map_a = require_array(map_obj, "anomaly_map", "float32 " + shape);
    MapF32 map = map_view(map_a, "anomaly_map", false);
    if (map.height != h || map.width != w)
        fail("anomaly_map must be a float32 array of the frame's shape " + shape + "; got " + describe(map_a));
    py::array mask_a = require_array(mask_obj, "mask", "uint8 " + shape);
    if (!is_u8(mask_a) || mask_a.ndim() != 2 || mask_a.shape(0) != h || mask_a.shape(1) != w)
        fail("mask must be a uint8 array of the frame's shape " + shape + "; got " + describe(mask_a));
    py::array out_a = require_array(out_obj, "out", "uint8 (H, W, 3)");
    if (!is_u8(out_a) || out_a.ndim() != 3 || out_a.shape(0) != h || out_a.shape(1) != w || out_a.shape(2) != 3)
        fail("out must be a uint8 array of shape (" + std::to_string(h) + ", " + std::to_string(w) + ", 3); got " +
             describe(out_a));
    if (!out_a.writeable()) fail("out must be writeable; got " + describe(out_a));
    py::array lut_a = require_array(lut_obj, "lut", "uint8 (256, 3)");
    if (!is_u8(lut_a) || lut_a.ndim() != 2 || lut_a.shape(0) != 256 || lut_a.shape(1) != 3)
        fail("lut must be a uint8 array of shape (256, 3); got " + describe(lut_a));
    std::array<uint8_t, 768> lut;
    for (int i = 0; i < 256; ++i)
        for (int c = 0; c < 3; ++c)
            lut[i * 3 + c] = *(static_cast<const uint8_t*>(lut_a.data()) + i * lut_a.strides(0) + c * lut_a.strides(1));
    for (int c : color)
        if (c < 0 || c > 255) fail("contour colour values must be in [0, 255]");

    const uint8_t* mask = static_cast<const uint8_t*>(mask_a.data());
    const ptrdiff_t mrs = mask_a.strides(0), mcs = mask_a.strides(1);
    uint8_t* out = static_cast<uint8_t*>(out_a.mutable_data());
    const ptrdiff_t ors = out_a.strides(0), ocs = out_a.strides(1), occ = out_a.strides(2);
    const int nthreads = resolve_threads(threads, static_cast<int64_t>(h) * w, 1 << 19);

    py::gil_scoped_release release;
    auto m_at = [&](int y, int x) { return mask[y * mrs + x * mcs] != 0; };
    const int chunks = nthreads <= 1 ? 1 : std::min(h, nthreads * 4);
    parallel_chunks(chunks, nthreads, [&](int chunk) {
        int64_t y0, y1;
        chunk_range(h, chunks, chunk, y0, y1);
        uint8_t* px = scratch_of<uint8_t>(15, static_cast<size_t>(w) * 3);
        for (int y = static_cast<int>(y0); y < y1; ++y) {
            const uint8_t* f = frame.packed_row(y, px);
            const float* m = map.cols_packed() ? map.row(y) : nullptr;
            const uint8_t* mrow = reinterpret_cast<const uint8_t*>(map.row(y));
            uint8_t* orow = out + y * ors;
            for (int x = 0; x < w; ++x) {
                float v;
                if (m) {
                    v = m[x];
                } else {
                    std::memcpy(&v, mrow + x * map.col_stride, 4);
                }
                float t = (v - lo) * scale;
                t = t >= 0.f ? (t > 255.f ? 255.f : t) : 0.f;  // NaN -> 0
                const uint8_t* heat = &lut[static_cast<int>(round_half_even_small(t)) * 3];
                uint8_t* o = orow + x * ocs;
                const bool edge = m_at(y, x) && (y == 0 || y == h - 1 || x == 0 || x == w - 1 || !m_at(y - 1, x) ||
                                                 !m_at(y + 1, x) || !m_at(y, x - 1) || !m_at(y, x + 1));
                for (int c = 0; c < 3; ++c) {
                    if (edge) {
                        o[c * occ] = static_cast<uint8_t>(color[c]);
                        continue;
                    }
                    const float fv = static_cast<float>(frame.channels == 3 ? f[x * 3 + c] : f[x]);
                    const float b = round_half_even_small(fv * inv_alpha + static_cast<float>(heat[c]) * alpha);
                    o[c * occ] = static_cast<uint8_t>(b > 255.f ? 255.f : b);
                }
            }
        }
    });
}

}  // namespace

void register_postprocess(py::module_& m) {
    m.def("postprocess", &postprocess, py::arg("anomaly_map"), py::arg("frame_h"), py::arg("frame_w"),
          py::arg("threshold"), py::arg("min_area"), py::arg("out_map"),
          py::arg("out_mask"), py::arg("mask_value") = 255, py::arg("threads") = 0,
          "anomaly_map resized (float bilinear) into out_map (frame size),\n"
          "out_mask = mask_value where map >= threshold (float32 compare) in 8-connected regions of at least\n"
          "min_area pixels. Returns (K, 7) float64 rows: x, y, w, h, area, max_score, mean_score\n"
          "(scores rounded to float32), regions in raster order of their first pixel. Releases the GIL.");
    m.def("resize_map", &resize_map, py::arg("anomaly_map"), py::arg("out_map"), py::arg("threads") = 0,
          "anomaly_map resized (float bilinear, OpenCV's own INTER_LINEAR arithmetic) into out_map, as\n"
          "postprocess resizes it. Releases the GIL.");
    m.def("overlay", &overlay, py::arg("frame"), py::arg("anomaly_map"), py::arg("mask"), py::arg("out"),
          py::arg("lo"), py::arg("scale"), py::arg("alpha"), py::arg("inv_alpha"), py::arg("lut"),
          py::arg("color"), py::arg("threads") = 0,
          "out = rint(frame * inv_alpha + lut[rint(clip((map - lo) * scale, 0, 255))] * alpha), with\n"
          "mask contour pixels set to color. All float32 arithmetic. Releases the GIL.");
}

}  // namespace cfrg
