// Pre-processing in one pass: crop (a view), resize (OpenCV-exact bilinear or area), colour
// conversion and packing straight into one slot of a caller-owned batch buffer.
#include <pybind11/stl.h>

#include <cstring>

#include "resize_core.hpp"

namespace cfrg {
namespace {

enum class Layout { NhwcU8, NchwF32, NchwF16 };
enum class Convert { Copy, GrayFromBGR, GrayFromRGB, Replicate };  // after the resize

// float -> IEEE half, round to nearest even (what numpy's astype(float16) does).
uint16_t f32_to_f16(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t exp = (x >> 23) & 0xffu;
    uint32_t mant = x & 0x7fffffu;
    if (exp == 0xffu) return static_cast<uint16_t>(sign | 0x7c00u | (mant ? 0x200u | (mant >> 13) : 0u));
    const int e = static_cast<int>(exp) - 127 + 15;
    if (e >= 0x1f) return static_cast<uint16_t>(sign | 0x7c00u);
    if (e <= 0) {  // half subnormal or zero
        if (e < -10) return static_cast<uint16_t>(sign);
        mant |= 0x800000u;
        const int shift = 14 - e;
        uint32_t h = mant >> shift;
        const uint32_t rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1u))) ++h;
        return static_cast<uint16_t>(sign | h);
    }
    uint32_t h = sign | (static_cast<uint32_t>(e) << 10) | (mant >> 13);
    const uint32_t rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry may reach inf: correct
    return static_cast<uint16_t>(h);
}

// Writes model-size rows into out[index] with colour conversion and the layout's packing.
struct Writer {
    Layout layout = Layout::NhwcU8;
    uint8_t* base = nullptr;           // out[index]
    ptrdiff_t sy = 0, sx = 0, sc = 0;  // byte strides of row, column, channel
    int out_c = 3, out_h = 0, out_w = 0;
    Rect content;
    int src_c = 3;
    Convert convert = Convert::Copy;
    float mean[3] = {0, 0, 0}, stdv[3] = {1, 1, 1};
    float lut_f32[3][256];
    uint16_t lut_f16[3][256];

    // px: n pixels of src_c channels -> n pixels of out_c channels.
    void convert_pixels(const uint8_t* px, int n, uint8_t* dst) const {
        switch (convert) {
            case Convert::Copy:
                std::memcpy(dst, px, static_cast<size_t>(n) * out_c);
                break;
            case Convert::GrayFromBGR:
            case Convert::GrayFromRGB: {
                // cv2.cvtColor(..., COLOR_BGR2GRAY) coefficients (15-bit fixed point).
                const int bi = convert == Convert::GrayFromBGR ? 0 : 2;
                for (int i = 0; i < n; ++i) {
                    const uint8_t* p = px + 3 * i;
                    dst[i] = static_cast<uint8_t>((p[bi] * 3735 + p[1] * 19235 + p[2 - bi] * 9798 + 16384) >> 15);
                }
                break;
            }
            case Convert::Replicate:
                for (int i = 0; i < n; ++i) dst[3 * i] = dst[3 * i + 1] = dst[3 * i + 2] = px[i];
                break;
        }
    }

    // vals: n pixels of out_c uint8 channels, written at row y from column x0.
    void put(int y, int x0, int n, const uint8_t* vals) const {
        uint8_t* row = base + static_cast<ptrdiff_t>(y) * sy + static_cast<ptrdiff_t>(x0) * sx;
        if (layout == Layout::NhwcU8) {
            if (sx == out_c && sc == 1) {
                std::memcpy(row, vals, static_cast<size_t>(n) * out_c);
            } else {
                for (int i = 0; i < n; ++i)
                    for (int c = 0; c < out_c; ++c) row[i * sx + c * sc] = vals[i * out_c + c];
            }
            return;
        }
        // Float layouts: a table per channel of (v - mean) / std for the 256 values (the same
        // float32 operations as the twin, done once per call instead of once per pixel).
        const bool f32 = layout == Layout::NchwF32;
        const size_t item = f32 ? 4 : 2;
        for (int c = 0; c < out_c; ++c) {
            uint8_t* plane = row + c * sc;
            const uint8_t* v = vals + c;
            if (f32 && sx == 4 && reinterpret_cast<uintptr_t>(plane) % 4 == 0) {
                float* p = reinterpret_cast<float*>(plane);
                for (int i = 0; i < n; ++i) p[i] = lut_f32[c][v[i * out_c]];
            } else if (!f32 && sx == 2 && reinterpret_cast<uintptr_t>(plane) % 2 == 0) {
                uint16_t* p = reinterpret_cast<uint16_t*>(plane);
                for (int i = 0; i < n; ++i) p[i] = lut_f16[c][v[i * out_c]];
            } else {
                for (int i = 0; i < n; ++i) {
                    const void* value = f32 ? static_cast<const void*>(&lut_f32[c][v[i * out_c]])
                                            : static_cast<const void*>(&lut_f16[c][v[i * out_c]]);
                    std::memcpy(plane + i * sx, value, item);
                }
            }
        }
    }

    void build_tables() {
        for (int c = 0; c < out_c; ++c)
            for (int v = 0; v < 256; ++v) {
                lut_f32[c][v] = (static_cast<float>(v) - mean[c]) / stdv[c];
                lut_f16[c][v] = f32_to_f16(lut_f32[c][v]);
            }
    }

    void write_row(int dy, const uint8_t* px) const {
        const int y = content.y + dy;
        if (layout == Layout::NhwcU8 && sx == out_c && sc == 1) {  // packed pixels: convert in place
            convert_pixels(px, content.w, base + static_cast<ptrdiff_t>(y) * sy + static_cast<ptrdiff_t>(content.x) * sx);
            return;
        }
        if (convert == Convert::Copy) {
            put(y, content.x, content.w, px);
            return;
        }
        uint8_t* vals = scratch_of<uint8_t>(8, static_cast<size_t>(content.w) * out_c);
        convert_pixels(px, content.w, vals);
        put(y, content.x, content.w, vals);
    }

    // Pad value everywhere outside the content rectangle (letterbox borders).
    void fill_padding(uint8_t pad) const {
        uint8_t* vals = scratch_of<uint8_t>(9, static_cast<size_t>(out_w) * out_c);
        std::memset(vals, pad, static_cast<size_t>(out_w) * out_c);
        for (int y = 0; y < out_h; ++y) {
            if (y < content.y || y >= content.y + content.h) {
                put(y, 0, out_w, vals);
            } else {
                if (content.x > 0) put(y, 0, content.x, vals);
                const int right = content.x + content.w;
                if (right < out_w) put(y, right, out_w - right, vals);
            }
        }
    }
};

void preprocess(const py::object& frame_obj, const py::object& out_obj, int index, const py::object& roi_obj,
                const std::string& color_in, const std::string& color_out, const py::object& content_obj,
                const std::string& interpolation, const std::vector<double>& mean, const std::vector<double>& stdv,
                int pad_value, int threads) {
    const char* frame_expected = "uint8 H x W, H x W x 1 or H x W x 3";
    py::array frame = require_array(frame_obj, "frame", frame_expected);
    ImageU8 src = image_view(frame, "frame");

    Rect roi{0, 0, src.width, src.height};
    if (!roi_obj.is_none()) {
        roi = parse_rect(roi_obj, "roi");
        check_rect_inside(roi, src.width, src.height, "roi", "the frame");
    }
    src.data = src.row(roi.y) + static_cast<ptrdiff_t>(roi.x) * src.pixel_stride;
    src.width = roi.w;
    src.height = roi.h;

    const char* out_expected =
        "uint8 (N, H, W, C) for 'nhwc_u8', float32 or float16 (N, C, H, W) for 'nchw_f32'/'nchw_f16', C = 1 or 3";
    py::array out = require_array(out_obj, "out", out_expected);
    Writer w;
    if (is_u8(out) && out.ndim() == 4) {
        w.layout = Layout::NhwcU8;
        w.out_h = static_cast<int>(out.shape(1));
        w.out_w = static_cast<int>(out.shape(2));
        w.out_c = static_cast<int>(out.shape(3));
        w.sy = out.strides(1), w.sx = out.strides(2), w.sc = out.strides(3);
    } else if ((is_f32(out) || is_f16(out)) && out.ndim() == 4) {
        w.layout = is_f32(out) ? Layout::NchwF32 : Layout::NchwF16;
        w.out_c = static_cast<int>(out.shape(1));
        w.out_h = static_cast<int>(out.shape(2));
        w.out_w = static_cast<int>(out.shape(3));
        w.sc = out.strides(1), w.sy = out.strides(2), w.sx = out.strides(3);
    } else {
        fail(std::string("out must be ") + out_expected + "; got " + describe(out));
    }
    if ((w.out_c != 1 && w.out_c != 3) || w.out_h < 1 || w.out_w < 1)
        fail(std::string("out must be ") + out_expected + "; got " + describe(out));
    if (!out.writeable()) fail("out must be writeable; got " + describe(out));
    const int batch = static_cast<int>(out.shape(0));
    if (index < 0 || index >= batch)
        fail("index must be in [0, " + std::to_string(batch) + ") for out of batch size " + std::to_string(batch) +
             "; got " + std::to_string(index));
    w.base = static_cast<uint8_t*>(out.mutable_data()) + static_cast<ptrdiff_t>(index) * out.strides(0);

    w.content = Rect{0, 0, w.out_w, w.out_h};
    if (!content_obj.is_none()) {
        w.content = parse_rect(content_obj, "content");
        check_rect_inside(w.content, w.out_w, w.out_h, "content", "the model input");
    }

    if (color_in != "bgr" && color_in != "rgb") fail("color_in must be 'bgr' or 'rgb'; got '" + color_in + "'");
    if (color_out != "bgr" && color_out != "rgb" && color_out != "gray")
        fail("color_out must be 'rgb', 'bgr' or 'gray'; got '" + color_out + "'");
    const int want_c = color_out == "gray" ? 1 : 3;
    if (want_c != w.out_c)
        fail("color_out '" + color_out + "' needs " + std::to_string(want_c) + " channel(s) in out; got " +
             describe(out));
    w.src_c = src.channels;
    bool swap_rb = false;  // done by the resampler (free there), not by the writer
    if (src.channels == 1)
        w.convert = w.out_c == 1 ? Convert::Copy : Convert::Replicate;
    else if (w.out_c == 1)
        w.convert = color_in == "bgr" ? Convert::GrayFromBGR : Convert::GrayFromRGB;
    else
        w.convert = Convert::Copy, swap_rb = color_in != color_out;

    Interp interp;
    if (interpolation == "linear") {
        interp = Interp::Linear;
    } else if (interpolation == "area") {
        interp = Interp::Area;
        if (w.content.w > roi.w || w.content.h > roi.h)
            fail("interpolation 'area' only shrinks: the crop is " + std::to_string(roi.w) + "x" +
                 std::to_string(roi.h) + " and the target " + std::to_string(w.content.w) + "x" +
                 std::to_string(w.content.h) + "; use 'linear'");
    } else {
        fail("interpolation must be 'linear' or 'area'; got '" + interpolation + "'");
    }

    if (w.layout == Layout::NhwcU8) {
        if (!mean.empty() || !stdv.empty()) fail("mean/std apply to float layouts only; out is " + describe(out));
    } else {
        auto fill = [&](const std::vector<double>& v, float* dst, float dflt, const char* name) {
            if (v.size() != 0 && v.size() != 1 && static_cast<int>(v.size()) != w.out_c)
                fail(std::string(name) + " must have 1 or " + std::to_string(w.out_c) + " values; got " +
                     std::to_string(v.size()));
            for (int c = 0; c < w.out_c; ++c)
                dst[c] = v.empty() ? dflt : static_cast<float>(v[v.size() == 1 ? 0 : c]);
        };
        fill(mean, w.mean, 0.f, "mean");
        fill(stdv, w.stdv, 1.f, "std");
        for (int c = 0; c < w.out_c; ++c)
            if (w.stdv[c] == 0.f) fail("std must not contain zeros");
        w.build_tables();
    }
    if (pad_value < 0 || pad_value > 255) fail("pad_value must be in [0, 255]; got " + std::to_string(pad_value));

    const int64_t work = interp == Interp::Area
                             ? static_cast<int64_t>(roi.w) * roi.h * src.channels
                             : static_cast<int64_t>(w.content.w) * w.content.h * src.channels * 4;
    const int nthreads = resolve_threads(threads, work, 1 << 20);

    py::gil_scoped_release release;
    const bool letterboxed = w.content.x != 0 || w.content.y != 0 || w.content.w != w.out_w || w.content.h != w.out_h;
    if (letterboxed) w.fill_padding(static_cast<uint8_t>(pad_value));
    resize_u8(src, w.content.w, w.content.h, interp, nthreads, [&](int dy, const uint8_t* px) { w.write_row(dy, px); },
              swap_rb);
}

}  // namespace

void register_preprocess(py::module_& m) {
    m.def("preprocess", &preprocess, py::arg("frame"), py::arg("out"), py::arg("index") = 0,
          py::arg("roi") = py::none(), py::arg("color_in") = "bgr", py::arg("color_out") = "rgb",
          py::arg("content") = py::none(), py::arg("interpolation") = "linear",
          py::arg("mean") = std::vector<double>(), py::arg("std") = std::vector<double>(), py::arg("pad_value") = 0,
          py::arg("threads") = 0,
          "Frame (uint8 HxW[x1|3], any strides) -> out[index] (uint8 NHWC or float32/float16 NCHW).\n"
          "roi=(x, y, w, h) crops the frame (a view); the crop is resized to content=(x, y, w, h) of the\n"
          "model input (default: all of it) with 'linear' or 'area' (cv2.resize-exact), colour-converted\n"
          "(resize first, then conversion), normalised as (v - mean) / std for float layouts; pixels\n"
          "outside content get pad_value. threads=0: automatic. Releases the GIL.");
    m.def("float_to_half_bits", [](float v) { return f32_to_f16(v); }, py::arg("value"),
          "IEEE half bits of a float32 value, rounded to nearest even (used by the tests).");
}

}  // namespace cfrg
