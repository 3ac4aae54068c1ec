// Pre-processing in one pass: resize (OpenCV-exact bilinear or area), colour conversion and packing
// straight into one slot of a caller-owned uint8 NHWC batch buffer.
#include <cstring>

#include "resize_core.hpp"

namespace cfrg {
namespace {

enum class Convert { Copy, GrayFromBGR, GrayFromRGB, Replicate };  // after the resize

// Writes model-size rows into out[index] with colour conversion.
struct Writer {
    uint8_t* base = nullptr;           // out[index]
    ptrdiff_t sy = 0, sx = 0, sc = 0;  // byte strides of row, column, channel
    int out_c = 3, out_h = 0, out_w = 0;
    Convert convert = Convert::Copy;

    // px: n pixels of the source's channels -> n pixels of out_c channels.
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

    void write_row(int y, const uint8_t* px) const {
        uint8_t* row = base + static_cast<ptrdiff_t>(y) * sy;
        if (sx == out_c && sc == 1) {  // packed pixels: convert in place
            convert_pixels(px, out_w, row);
            return;
        }
        const uint8_t* vals = px;
        if (convert != Convert::Copy) {
            uint8_t* converted = scratch_of<uint8_t>(8, static_cast<size_t>(out_w) * out_c);
            convert_pixels(px, out_w, converted);
            vals = converted;
        }
        for (int i = 0; i < out_w; ++i)
            for (int c = 0; c < out_c; ++c) row[i * sx + c * sc] = vals[i * out_c + c];
    }
};

void preprocess(const py::object& frame_obj, const py::object& out_obj, int index, const std::string& color_in,
                const std::string& color_out, const std::string& interpolation, int threads) {
    const char* frame_expected = "uint8 H x W, H x W x 1 or H x W x 3";
    py::array frame = require_array(frame_obj, "frame", frame_expected);
    const ImageU8 src = image_view(frame, "frame");

    const char* out_expected = "uint8 (N, H, W, C), C = 1 or 3";
    py::array out = require_array(out_obj, "out", out_expected);
    Writer w;
    if (!is_u8(out) || out.ndim() != 4) fail(std::string("out must be ") + out_expected + "; got " + describe(out));
    w.out_h = static_cast<int>(out.shape(1));
    w.out_w = static_cast<int>(out.shape(2));
    w.out_c = static_cast<int>(out.shape(3));
    w.sy = out.strides(1), w.sx = out.strides(2), w.sc = out.strides(3);
    if ((w.out_c != 1 && w.out_c != 3) || w.out_h < 1 || w.out_w < 1)
        fail(std::string("out must be ") + out_expected + "; got " + describe(out));
    if (!out.writeable()) fail("out must be writeable; got " + describe(out));
    const int batch = static_cast<int>(out.shape(0));
    if (index < 0 || index >= batch)
        fail("index must be in [0, " + std::to_string(batch) + ") for out of batch size " + std::to_string(batch) +
             "; got " + std::to_string(index));
    w.base = static_cast<uint8_t*>(out.mutable_data()) + static_cast<ptrdiff_t>(index) * out.strides(0);

    if (color_in != "bgr" && color_in != "rgb") fail("color_in must be 'bgr' or 'rgb'; got '" + color_in + "'");
    if (color_out != "bgr" && color_out != "rgb" && color_out != "gray")
        fail("color_out must be 'rgb', 'bgr' or 'gray'; got '" + color_out + "'");
    const int want_c = color_out == "gray" ? 1 : 3;
    if (want_c != w.out_c)
        fail("color_out '" + color_out + "' needs " + std::to_string(want_c) + " channel(s) in out; got " +
             describe(out));
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
        if (w.out_w > src.width || w.out_h > src.height)
            fail("interpolation 'area' only shrinks: the frame is " + std::to_string(src.width) + "x" +
                 std::to_string(src.height) + " and the target " + std::to_string(w.out_w) + "x" +
                 std::to_string(w.out_h) + "; use 'linear'");
    } else {
        fail("interpolation must be 'linear' or 'area'; got '" + interpolation + "'");
    }

    const int64_t work = interp == Interp::Area
                             ? static_cast<int64_t>(src.width) * src.height * src.channels
                             : static_cast<int64_t>(w.out_w) * w.out_h * src.channels * 4;
    const int nthreads = resolve_threads(threads, work, 1 << 20);

    py::gil_scoped_release release;
    resize_u8(src, w.out_w, w.out_h, interp, nthreads, [&](int y, const uint8_t* px) { w.write_row(y, px); },
              swap_rb);
}

}  // namespace

void register_preprocess(py::module_& m) {
    m.def("preprocess", &preprocess, py::arg("frame"), py::arg("out"), py::arg("index") = 0,
          py::arg("color_in") = "bgr", py::arg("color_out") = "rgb", py::arg("interpolation") = "linear",
          py::arg("threads") = 0,
          "Frame (uint8 HxW[x1|3], any strides) -> out[index] (uint8 NHWC): resized to the model input\n"
          "with 'linear' or 'area' (cv2.resize-exact), then colour-converted. threads=0: automatic.\n"
          "Releases the GIL.");
}

}  // namespace cfrg
