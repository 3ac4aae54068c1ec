// Argument checks and strided views shared by the kernels.
#include "native_common.hpp"

#include <cstring>
#include <sstream>

namespace cfrg {

const uint8_t* ImageU8::packed_row(int y, uint8_t* scratch) const {
    const uint8_t* src = row(y);
    if (pixels_packed()) return src;
    for (int x = 0; x < width; ++x) {
        const uint8_t* px = src + static_cast<ptrdiff_t>(x) * pixel_stride;
        for (int c = 0; c < channels; ++c) scratch[x * channels + c] = px[c * channel_stride];
    }
    return scratch;
}

std::string dtype_name(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

std::string describe(const py::handle& obj) {
    if (obj.is_none()) return "None";
    if (py::isinstance<py::array>(obj)) {
        py::array a = py::reinterpret_borrow<py::array>(obj);
        std::ostringstream s;
        s << dtype_name(a) << " array of shape (";
        for (py::ssize_t i = 0; i < a.ndim(); ++i) s << (i ? ", " : "") << a.shape(i);
        s << (a.ndim() == 1 ? ",)" : ")");
        if (!a.writeable()) s << " (read-only)";
        return s.str();
    }
    return py::str(py::type::of(obj).attr("__name__")).cast<std::string>();
}

void fail(const std::string& message) { throw py::value_error(message); }

static bool native_order(const py::array& a) { return a.dtype().byteorder() != '>'; }
bool is_u8(const py::array& a) { return a.dtype().kind() == 'u' && a.itemsize() == 1; }
bool is_f32(const py::array& a) { return a.dtype().kind() == 'f' && a.itemsize() == 4 && native_order(a); }

py::array require_array(const py::object& obj, const char* what, const std::string& expected) {
    if (!py::isinstance<py::array>(obj))
        fail(std::string(what) + " must be a numpy array (" + expected + "); got " + describe(obj));
    return py::reinterpret_borrow<py::array>(obj);
}

ImageU8 image_view(const py::array& a, const char* what) {
    const char* expected = "uint8 array of shape (H, W), (H, W, 1) or (H, W, 3)";
    bool ok = is_u8(a) && (a.ndim() == 2 || (a.ndim() == 3 && (a.shape(2) == 1 || a.shape(2) == 3)));
    if (!ok) fail(std::string(what) + " must be a " + expected + "; got " + describe(a));
    if (a.shape(0) < 1 || a.shape(1) < 1) fail(std::string(what) + " must not be empty; got " + describe(a));
    ImageU8 v;
    v.data = static_cast<const uint8_t*>(a.data());
    v.height = static_cast<int>(a.shape(0));
    v.width = static_cast<int>(a.shape(1));
    v.channels = a.ndim() == 3 ? static_cast<int>(a.shape(2)) : 1;
    v.row_stride = a.strides(0);
    v.pixel_stride = a.strides(1);
    v.channel_stride = a.ndim() == 3 ? a.strides(2) : 1;
    return v;
}

MapF32 map_view(const py::array& a, const char* what, bool writable) {
    if (!is_f32(a) || a.ndim() != 2)
        fail(std::string(what) + " must be a float32 array of shape (H, W); got " + describe(a));
    if (a.shape(0) < 1 || a.shape(1) < 1) fail(std::string(what) + " must not be empty; got " + describe(a));
    if (writable && !a.writeable()) fail(std::string(what) + " must be writeable; got " + describe(a));
    if (a.strides(1) % 4 != 0 || a.strides(0) % 4 != 0)
        fail(std::string(what) + " must have float-aligned strides; got strides (" + std::to_string(a.strides(0)) +
             ", " + std::to_string(a.strides(1)) + ")");
    MapF32 m;
    m.data = static_cast<uint8_t*>(const_cast<void*>(a.data()));
    m.height = static_cast<int>(a.shape(0));
    m.width = static_cast<int>(a.shape(1));
    m.row_stride = a.strides(0);
    m.col_stride = a.strides(1);
    return m;
}

}  // namespace cfrg
