// OpenCV-exact resampling engines (see resize_core.hpp for the rules reproduced).
#include "resize_core.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <array>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace cfrg {

typedef float v4f __attribute__((vector_size(16)));

static inline v4f load4(const float* p) {
    v4f v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

static inline uint8_t saturate_u8(float v) {
    // v >= 0 here (non-negative weights); OpenCV rounds half to even, then saturates.
    float r = round_half_even_small(std::min(v, 1024.0f));
    return static_cast<uint8_t>(r > 255.0f ? 255.0f : r);
}

void* thread_scratch(int slot, size_t bytes) {
    thread_local std::vector<std::vector<unsigned char>> buffers(24);
    if (slot >= static_cast<int>(buffers.size())) buffers.resize(slot + 1);
    std::vector<unsigned char>& b = buffers[slot];
    if (b.size() < bytes + 64) b.resize(bytes + 64);
    uintptr_t p = reinterpret_cast<uintptr_t>(b.data());
    return reinterpret_cast<void*>((p + 63) & ~static_cast<uintptr_t>(63));
}

// Source position and fraction of each destination index, as cv::resize computes them.
// clamp=true for x (OpenCV clamps the position and zeroes the fraction at the borders);
// y is not clamped (the rows are), which changes the rounding of the uint8 vertical pass.
static void linear_coeffs(int ssize, int dsize, bool clamp, std::vector<int>& ofs, std::vector<float>& frac) {
    ofs.resize(dsize);
    frac.resize(dsize);
    const double scale = 1.0 / (static_cast<double>(dsize) / ssize);
    for (int d = 0; d < dsize; ++d) {
        float f = static_cast<float>((d + 0.5) * scale - 0.5);
        int s = static_cast<int>(std::floor(f));
        f -= static_cast<float>(s);
        if (clamp) {
            if (s < 0) f = 0.f, s = 0;
            if (s >= ssize - 1) f = 0.f, s = ssize - 1;
        }
        ofs[d] = s;
        frac[d] = f;
    }
}

static inline int fixed_weight(float w) {  // saturate_cast<short>(w * INTER_RESIZE_COEF_SCALE)
    long v = std::lrint(w * 2048.0f);
    return static_cast<int>(std::max(-32768L, std::min(32767L, v)));
}

namespace {

// Coefficient tables depend on the geometry only: each thread keeps the last ones it built, so
// a stream of same-size frames allocates and computes them once.
using GeometryKey = std::array<int, 5>;
template <class Tables, class Build>
const Tables& cached_tables(const GeometryKey& key, Build build) {
    thread_local Tables tables;
    thread_local GeometryKey held{-1, -1, -1, -1, -1};
    if (held != key) {
        build(tables);
        held = key;
    }
    return tables;
}

// ---- identity: the destination is the source ------------------------------------------------
class CopyU8 {
public:
    CopyU8(const ImageU8& src, bool swap) : src_(src), swap_(swap && src.channels == 3) {}
    void run(int dy0, int dy1, const RowEmitter& emit) const {
        const int w = src_.width;
        uint8_t* gather = scratch_of<uint8_t>(0, static_cast<size_t>(w) * src_.channels);
        uint8_t* out = scratch_of<uint8_t>(3, static_cast<size_t>(w) * src_.channels);
        for (int dy = dy0; dy < dy1; ++dy) {
            const uint8_t* row = src_.packed_row(dy, gather);
            if (!swap_) {
                emit(dy, row);  // straight from the frame when its pixels are packed
                continue;
            }
            for (int x = 0; x < w; ++x) {
                out[3 * x] = row[3 * x + 2];
                out[3 * x + 1] = row[3 * x + 1];
                out[3 * x + 2] = row[3 * x];
            }
            emit(dy, out);
        }
    }

private:
    const ImageU8& src_;
    bool swap_;
};

// ---- uint8 bilinear --------------------------------------------------------------------------
class LinearU8 {
public:
    struct Tables {
        std::vector<int> x0, x1, a0, a1, y0, y1, b0, b1, ofs;
        std::vector<int32_t> wpair;
        std::vector<float> frac;
        int simd_end = 0;
    };

    LinearU8(const ImageU8& src, int dw, int dh, bool swap)
        : src_(src), dw_(dw), dh_(dh), cn_(src.channels), swap_(swap && src.channels == 3),
          t_(cached_tables<Tables>({src.width, src.height, dw, dh, src.channels},
                                   [&](Tables& t) { build(t, src.width, src.height, dw, dh, src.channels); })) {}

    static void build(Tables& t, int sw, int sh, int dw, int dh, int cn) {
        linear_coeffs(sw, dw, true, t.ofs, t.frac);
        t.x0.resize(dw), t.x1.resize(dw), t.a0.resize(dw), t.a1.resize(dw), t.wpair.resize(dw);
        t.simd_end = 0;
        for (int d = 0; d < dw; ++d) {
            t.x0[d] = t.ofs[d] * cn;
            t.x1[d] = std::min(t.ofs[d] + 1, sw - 1) * cn;
            t.a0[d] = fixed_weight(1.f - t.frac[d]);
            t.a1[d] = fixed_weight(t.frac[d]);
            // Both weights in one int32 for _mm_madd_epi16; x1 is x0 + 1 or a zero weight.
            t.wpair[d] = static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint16_t>(t.a0[d])) |
                                              (static_cast<uint32_t>(static_cast<uint16_t>(t.a1[d])) << 16));
            // SIMD loads read pixels x0 .. x0 + 2 (cn=3) or x0 .. x0 + 1 (cn=1): stay inside the row.
            if (t.ofs[d] + (cn == 3 ? 2 : 1) < sw) t.simd_end = d + 1;
        }
        linear_coeffs(sh, dh, false, t.ofs, t.frac);
        t.y0.resize(dh), t.y1.resize(dh), t.b0.resize(dh), t.b1.resize(dh);
        for (int d = 0; d < dh; ++d) {
            t.y0[d] = std::min(std::max(t.ofs[d], 0), sh - 1);
            t.y1[d] = std::min(std::max(t.ofs[d] + 1, 0), sh - 1);
            t.b0[d] = fixed_weight(1.f - t.frac[d]);
            t.b1[d] = fixed_weight(t.frac[d]);
        }
    }

    void run(int dy0, int dy1, const RowEmitter& emit) const {
        const int n = dw_ * cn_;
        uint8_t* gather = scratch_of<uint8_t>(0, static_cast<size_t>(src_.width) * cn_);
        int32_t* rows[2] = {scratch_of<int32_t>(1, n + 4), scratch_of<int32_t>(2, n + 4)};
        int held[2] = {-1, -1};
        uint8_t* out = scratch_of<uint8_t>(3, n);
        uint8_t* gather2 = scratch_of<uint8_t>(4, static_cast<size_t>(src_.width) * cn_);
        auto fetch = [&](int y, int keep) -> const int32_t* {
            for (int s = 0; s < 2; ++s)
                if (held[s] == y) return rows[s];
            int s = held[0] == keep ? 1 : 0;
            const uint8_t* src = src_.packed_row(y, gather);
            hrows<1>(&src, &rows[s]);
            held[s] = y;
            return rows[s];
        };
        for (int dy = dy0; dy < dy1; ++dy) {
            const int ya = t_.y0[dy], yb = t_.y1[dy];
            if (ya != yb && held[0] != ya && held[1] != ya && held[0] != yb && held[1] != yb) {
                // Both rows new (shrinking): one pass over the two rows, two memory streams at once.
                const uint8_t* src[2] = {src_.packed_row(ya, gather), src_.packed_row(yb, gather2)};
                hrows<2>(src, rows);
                held[0] = ya, held[1] = yb;
            }
            const int32_t* r0 = fetch(ya, yb);
            const int32_t* r1 = fetch(yb, ya);
            const int b0 = t_.b0[dy], b1 = t_.b1[dy];
            // OpenCV's SIMD vertical pass: ((r >> 4) * b) >> 16 per row, summed, (+2) >> 2.
            int i = 0;
#if defined(__SSE2__)
            const __m128i vb0 = _mm_set1_epi16(static_cast<int16_t>(b0)), vb1 = _mm_set1_epi16(static_cast<int16_t>(b1));
            const __m128i two = _mm_set1_epi16(2);
            for (; i + 8 <= n; i += 8) {
                const __m128i* p0 = reinterpret_cast<const __m128i*>(r0 + i);
                const __m128i* p1 = reinterpret_cast<const __m128i*>(r1 + i);
                __m128i s0 = _mm_packs_epi32(_mm_srai_epi32(_mm_loadu_si128(p0), 4), _mm_srai_epi32(_mm_loadu_si128(p0 + 1), 4));
                __m128i s1 = _mm_packs_epi32(_mm_srai_epi32(_mm_loadu_si128(p1), 4), _mm_srai_epi32(_mm_loadu_si128(p1 + 1), 4));
                __m128i v = _mm_add_epi16(_mm_mulhi_epi16(s0, vb0), _mm_mulhi_epi16(s1, vb1));
                v = _mm_srai_epi16(_mm_add_epi16(v, two), 2);
                _mm_storel_epi64(reinterpret_cast<__m128i*>(out + i), _mm_packus_epi16(v, v));
            }
#endif
            for (; i < n; ++i) {
                int v = (((r0[i] >> 4) * b0) >> 16) + (((r1[i] >> 4) * b1) >> 16);
                v = (v + 2) >> 2;
                out[i] = static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
            }
            emit(dy, out);
        }
    }

private:
    // Horizontal pass of R rows at once (R = 2 when shrinking: two memory streams, shared
    // weights). Exact integers: p0 * a0 + p1 * a1 per channel, channels reversed if swap_.
    template <int R>
    void hrows(const uint8_t* const* s, int32_t* const* d) const {
        int x = 0;
#if defined(__SSE2__)
        const __m128i zero = _mm_setzero_si128();
        if (cn_ == 1) {
            for (; x + 4 <= t_.simd_end; x += 4) {
                const __m128i wt = _mm_loadu_si128(reinterpret_cast<const __m128i*>(t_.wpair.data() + x));
                for (int r = 0; r < R; ++r) {
                    uint16_t w[4];  // the pixel pair (x0, x0 + 1) of 4 outputs, as int16 pairs
                    for (int j = 0; j < 4; ++j) std::memcpy(&w[j], s[r] + t_.x0[x + j], 2);
                    __m128i px = _mm_unpacklo_epi8(_mm_setr_epi16(w[0], w[1], w[2], w[3], 0, 0, 0, 0), zero);
                    _mm_storeu_si128(reinterpret_cast<__m128i*>(d[r] + x), _mm_madd_epi16(px, wt));
                }
            }
        } else {
            for (; x < t_.simd_end; ++x) {
                const __m128i wt = _mm_set1_epi32(t_.wpair[x]);
                for (int r = 0; r < R; ++r) {
                    const uint8_t* p = s[r] + t_.x0[x];
                    int32_t lo, hi;
                    std::memcpy(&lo, p, 4);
                    std::memcpy(&hi, p + 3, 4);
                    __m128i px = _mm_unpacklo_epi8(_mm_unpacklo_epi8(_mm_cvtsi32_si128(lo), _mm_cvtsi32_si128(hi)), zero);
                    __m128i v = _mm_madd_epi16(px, wt);  // (c0, c1, c2, next pixel's c0)
                    if (swap_) v = _mm_shuffle_epi32(v, _MM_SHUFFLE(3, 0, 1, 2));
                    // The 4th int lands on the next pixel's first channel, rewritten next.
                    _mm_storeu_si128(reinterpret_cast<__m128i*>(d[r] + 3 * x), v);
                }
            }
        }
#endif
        for (; x < dw_; ++x) {
            const int a0 = t_.a0[x], a1 = t_.a1[x];
            for (int r = 0; r < R; ++r) {
                const uint8_t* p0 = s[r] + t_.x0[x];
                const uint8_t* p1 = s[r] + t_.x1[x];
                for (int c = 0; c < cn_; ++c) {
                    const int sc = swap_ ? cn_ - 1 - c : c;
                    d[r][cn_ * x + c] = p0[sc] * a0 + p1[sc] * a1;
                }
            }
        }
    }

    const ImageU8& src_;
    int dw_, dh_, cn_;
    bool swap_;
    const Tables& t_;
};

// ---- uint8 area, integer factors -------------------------------------------------------------
class AreaFastU8 {
public:
    AreaFastU8(const ImageU8& src, int dw, int kx, int ky, bool swap)
        : src_(src), dw_(dw), kx_(kx), ky_(ky), swap_(swap && src.channels == 3) {}

    void run(int dy0, int dy1, const RowEmitter& emit) const {
        const int cn = src_.channels, n = dw_ * cn;
        uint8_t* gather = scratch_of<uint8_t>(0, static_cast<size_t>(src_.width) * cn);
        int32_t* acc = scratch_of<int32_t>(1, n);
        uint8_t* out = scratch_of<uint8_t>(3, n);
        const int area = kx_ * ky_;
        const float inv_area = 1.f / static_cast<float>(area);
        for (int dy = dy0; dy < dy1; ++dy) {
            std::fill(acc, acc + n, 0);
            for (int r = 0; r < ky_; ++r) {
                const uint8_t* s = src_.packed_row(dy * ky_ + r, gather);
                for (int dx = 0; dx < dw_; ++dx) {
                    const uint8_t* p = s + static_cast<ptrdiff_t>(dx) * kx_ * cn;
                    for (int c = 0; c < cn; ++c) {
                        const int sc = swap_ ? cn - 1 - c : c;
                        int sum = 0;
                        for (int j = 0; j < kx_; ++j) sum += p[j * cn + sc];
                        acc[dx * cn + c] += sum;
                    }
                }
            }
            if (kx_ == 2 && ky_ == 2) {  // OpenCV's 2x2 kernel rounds half up
                for (int i = 0; i < n; ++i) out[i] = static_cast<uint8_t>((acc[i] + 2) >> 2);
            } else {  // sum * (1/area) in float, rounded half to even
                for (int i = 0; i < n; ++i) out[i] = saturate_u8(static_cast<float>(acc[i]) * inv_area);
            }
            emit(dy, out);
        }
    }

private:
    const ImageU8& src_;
    int dw_, kx_, ky_;
    bool swap_;
};

// ---- uint8 area, general factors (float weights, OpenCV's accumulation order) ---------------
struct AreaTab {
    std::vector<int> start, count, src;
    std::vector<float> weight;
};

static void area_tab(int ssize, int dsize, double scale, AreaTab& t) {
    t.start.assign(dsize, 0);
    t.count.assign(dsize, 0);
    t.src.clear();
    t.weight.clear();
    for (int d = 0; d < dsize; ++d) {
        const double f1 = d * scale, f2 = f1 + scale;
        const double cell = std::min(scale, ssize - f1);
        int s1 = static_cast<int>(std::ceil(f1)), s2 = static_cast<int>(std::floor(f2));
        s2 = std::min(s2, ssize - 1);
        s1 = std::min(s1, s2);
        t.start[d] = static_cast<int>(t.src.size());
        if (s1 - f1 > 1e-3) {
            t.src.push_back(s1 - 1);
            t.weight.push_back(static_cast<float>((s1 - f1) / cell));
        }
        for (int s = s1; s < s2; ++s) {
            t.src.push_back(s);
            t.weight.push_back(static_cast<float>(1.0 / cell));
        }
        if (f2 - s2 > 1e-3) {
            t.src.push_back(s2);
            t.weight.push_back(static_cast<float>(std::min(std::min(f2 - s2, 1.), cell) / cell));
        }
        t.count[d] = static_cast<int>(t.src.size()) - t.start[d];
    }
}

class AreaU8 {
public:
    // Lanes of the horizontal pass: channels (cn=3, pixel stride 3 floats) or 4 rows (cn=1,
    // interleaved, stride 4). Entries are padded to the same count per output with zero weights
    // (acc + v * 0 == acc exactly), so 4 outputs can accumulate side by side.
    struct Tables {
        AreaTab xt, yt;
        std::vector<int> xsrc;  // padded to k entries per output, offsets premultiplied by the stride
        std::vector<float> xw;
        int k = 1;
    };

    AreaU8(const ImageU8& src, int dw, int dh, double scale_x, double scale_y, bool swap)
        : src_(src), dw_(dw), swap_(swap && src.channels == 3),
          t_(cached_tables<Tables>({src.width, src.height, dw, dh, src.channels}, [&](Tables& t) {
              build(t, src.width, src.height, dw, dh, scale_x, scale_y, src.channels);
          })),
          k_(t_.k) {}

    static void build(Tables& t, int sw, int sh, int dw, int dh, double scale_x, double scale_y, int cn) {
        area_tab(sw, dw, scale_x, t.xt);
        area_tab(sh, dh, scale_y, t.yt);
        const int stride = cn == 3 ? 3 : 4;
        t.k = *std::max_element(t.xt.count.begin(), t.xt.count.end());
        t.xsrc.assign(static_cast<size_t>(dw) * t.k, 0);
        t.xw.assign(static_cast<size_t>(dw) * t.k, 0.f);
        for (int d = 0; d < dw; ++d) {
            for (int k = 0; k < t.k; ++k) {
                const int e = t.xt.start[d] + std::min(k, t.xt.count[d] - 1);
                t.xsrc[d * t.k + k] = t.xt.src[e] * stride;
                t.xw[d * t.k + k] = k < t.xt.count[d] ? t.xt.weight[e] : 0.f;
            }
        }
    }

    void run(int dy0, int dy1, const RowEmitter& emit) const {
        if (src_.channels == 3)
            run3(dy0, dy1, emit);
        else
            run1(dy0, dy1, emit);
    }

private:
    void hpass(const float* base, v4f* out) const {
        const int K = k_;
        int dx = 0;
        for (; dx + 4 <= dw_; dx += 4) {
            const int* s = t_.xsrc.data() + static_cast<size_t>(dx) * K;
            const float* w = t_.xw.data() + static_cast<size_t>(dx) * K;
            v4f a0 = {0.f, 0.f, 0.f, 0.f}, a1 = a0, a2 = a0, a3 = a0;
            for (int k = 0; k < K; ++k) {
                a0 = a0 + load4(base + s[k]) * w[k];
                a1 = a1 + load4(base + s[K + k]) * w[K + k];
                a2 = a2 + load4(base + s[2 * K + k]) * w[2 * K + k];
                a3 = a3 + load4(base + s[3 * K + k]) * w[3 * K + k];
            }
            out[dx] = a0, out[dx + 1] = a1, out[dx + 2] = a2, out[dx + 3] = a3;
        }
        for (; dx < dw_; ++dx) {
            const int* s = t_.xsrc.data() + static_cast<size_t>(dx) * K;
            const float* w = t_.xw.data() + static_cast<size_t>(dx) * K;
            v4f a = {0.f, 0.f, 0.f, 0.f};
            for (int k = 0; k < K; ++k) a = a + load4(base + s[k]) * w[k];
            out[dx] = a;
        }
    }

    void run3(int dy0, int dy1, const RowEmitter& emit) const {
        const int sw = src_.width;
        uint8_t* gather = scratch_of<uint8_t>(0, static_cast<size_t>(sw) * 3);
        float* srow = scratch_of<float>(1, static_cast<size_t>(sw) * 3 + 4);
        v4f* buf = scratch_of<v4f>(2, dw_);
        v4f* sum = scratch_of<v4f>(4, dw_);
        uint8_t* out = scratch_of<uint8_t>(3, static_cast<size_t>(dw_) * 3);
        int buf_row = -1;
        for (int dy = dy0; dy < dy1; ++dy) {
            const int k0 = t_.yt.start[dy], k1 = k0 + t_.yt.count[dy];
            for (int k = k0; k < k1; ++k) {
                const int sy = t_.yt.src[k];
                if (sy != buf_row) {
                    const uint8_t* s = src_.packed_row(sy, gather);
                    for (int i = 0; i < sw * 3; ++i) srow[i] = static_cast<float>(s[i]);
                    srow[sw * 3] = 0.f;
                    hpass(srow, buf);
                    buf_row = sy;
                }
                const float beta = t_.yt.weight[k];
                if (k == k0)
                    for (int dx = 0; dx < dw_; ++dx) sum[dx] = buf[dx] * beta;
                else
                    for (int dx = 0; dx < dw_; ++dx) sum[dx] = sum[dx] + buf[dx] * beta;
            }
            for (int dx = 0; dx < dw_; ++dx)
                for (int c = 0; c < 3; ++c) out[3 * dx + c] = saturate_u8(sum[dx][swap_ ? 2 - c : c]);
            emit(dy, out);
        }
    }

    void run1(int dy0, int dy1, const RowEmitter& emit) const {
        const int sw = src_.width;
        uint8_t* gather = scratch_of<uint8_t>(0, sw);
        float* quad = scratch_of<float>(1, static_cast<size_t>(sw) * 4);
        v4f* buf = scratch_of<v4f>(2, dw_);
        float* sum = scratch_of<float>(4, dw_);
        uint8_t* out = scratch_of<uint8_t>(3, dw_);
        const int last_row = t_.yt.src[t_.yt.start[dy1 - 1] + t_.yt.count[dy1 - 1] - 1];
        int g0 = -1, gn = 0;  // rows g0 .. g0 + gn - 1 are in the 4 lanes of buf
        for (int dy = dy0; dy < dy1; ++dy) {
            const int k0 = t_.yt.start[dy], k1 = k0 + t_.yt.count[dy];
            for (int k = k0; k < k1; ++k) {
                const int sy = t_.yt.src[k];
                if (sy < g0 || sy >= g0 + gn) {
                    g0 = sy;
                    gn = std::min(4, last_row - sy + 1);
                    for (int l = 0; l < 4; ++l) {
                        if (l < gn) {
                            const uint8_t* s = src_.packed_row(sy + l, gather);
                            for (int x = 0; x < sw; ++x) quad[4 * x + l] = static_cast<float>(s[x]);
                        } else {
                            for (int x = 0; x < sw; ++x) quad[4 * x + l] = 0.f;
                        }
                    }
                    hpass(quad, buf);
                }
                const int lane = sy - g0;
                const float beta = t_.yt.weight[k];
                if (k == k0)
                    for (int dx = 0; dx < dw_; ++dx) sum[dx] = buf[dx][lane] * beta;
                else
                    for (int dx = 0; dx < dw_; ++dx) sum[dx] = sum[dx] + buf[dx][lane] * beta;
            }
            for (int dx = 0; dx < dw_; ++dx) out[dx] = saturate_u8(sum[dx]);
            emit(dy, out);
        }
    }

    const ImageU8& src_;
    int dw_;
    bool swap_;
    const Tables& t_;
    int k_;
};

template <class Engine>
void run_engine(const Engine& engine, int dh, int threads, const RowEmitter& emit) {
    const int chunks = threads <= 1 ? 1 : std::min(dh, threads * 4);
    parallel_chunks(chunks, threads, [&](int i) {
        int64_t b, e;
        chunk_range(dh, chunks, i, b, e);
        if (b < e) engine.run(static_cast<int>(b), static_cast<int>(e), emit);
    });
}

}  // namespace

void resize_u8(const ImageU8& src, int dw, int dh, Interp interp, int threads, const RowEmitter& emit,
               bool swap_rb) {
    if (src.width == dw && src.height == dh) {
        run_engine(CopyU8(src, swap_rb), dh, threads, emit);
    } else if (interp == Interp::Linear) {
        run_engine(LinearU8(src, dw, dh, swap_rb), dh, threads, emit);
    } else {
        // cv::resize's test for the integer-factor area kernel.
        const double scale_x = 1.0 / (static_cast<double>(dw) / src.width);
        const double scale_y = 1.0 / (static_cast<double>(dh) / src.height);
        const int ix = static_cast<int>(std::lrint(scale_x)), iy = static_cast<int>(std::lrint(scale_y));
        if (std::fabs(scale_x - ix) < DBL_EPSILON && std::fabs(scale_y - iy) < DBL_EPSILON)
            run_engine(AreaFastU8(src, dw, ix, iy, swap_rb), dh, threads, emit);
        else
            run_engine(AreaU8(src, dw, dh, scale_x, scale_y, swap_rb), dh, threads, emit);
    }
}

// ---- float32 bilinear ------------------------------------------------------------------------
LinearF32::LinearF32(const uint8_t* data, int sh, int sw, ptrdiff_t row_stride, ptrdiff_t col_stride, int dh,
                     int dw)
    : data_(data), sh_(sh), sw_(sw), dh_(dh), dw_(dw), row_stride_(row_stride), col_stride_(col_stride),
      t_(cached_tables<Tables>({sw, sh, dw, dh, 0}, [&](Tables& t) { build(t, sh, sw, dh, dw); })) {}

void LinearF32::build(Tables& t, int sh, int sw, int dh, int dw) {
    linear_coeffs(sw, dw, true, t.ofs, t.frac);
    t.x0.resize(dw), t.x1.resize(dw), t.a0.resize(dw), t.a1.resize(dw);
    for (int d = 0; d < dw; ++d) {
        t.x0[d] = t.ofs[d];
        t.x1[d] = std::min(t.ofs[d] + 1, sw - 1);
        t.a0[d] = 1.f - t.frac[d];
        t.a1[d] = t.frac[d];
    }
    linear_coeffs(sh, dh, false, t.ofs, t.frac);
    t.y0.resize(dh), t.y1.resize(dh), t.b0.resize(dh), t.b1.resize(dh);
    for (int d = 0; d < dh; ++d) {
        t.y0[d] = std::min(std::max(t.ofs[d], 0), sh - 1);
        t.y1[d] = std::min(std::max(t.ofs[d] + 1, 0), sh - 1);
        t.b0[d] = 1.f - t.frac[d];
        t.b1[d] = t.frac[d];
    }
}

LinearF32::Cache LinearF32::make_cache(int slot) const {
    Cache c;
    c.rows[0] = scratch_of<float>(slot, dw_);
    c.rows[1] = scratch_of<float>(slot + 1, dw_);
    c.gather = scratch_of<float>(slot + 2, sw_);
    return c;
}

const float* LinearF32::source_row(int sy, Cache& c) const {
    const uint8_t* r = data_ + static_cast<ptrdiff_t>(sy) * row_stride_;
    const float* s;
    if (col_stride_ == 4) {
        s = reinterpret_cast<const float*>(r);
    } else {
        for (int x = 0; x < sw_; ++x) std::memcpy(c.gather + x, r + static_cast<ptrdiff_t>(x) * col_stride_, 4);
        s = c.gather;
    }
    return s;
}

void LinearF32::row(int dy, float* dst, Cache& c) const {
    auto fetch = [&](int y, int keep) -> const float* {
        for (int s = 0; s < 2; ++s)
            if (c.which[s] == y) return c.rows[s];
        int s = c.which[0] == keep ? 1 : 0;
        const float* src = source_row(y, c);
        float* d = c.rows[s];
        for (int x = 0; x < dw_; ++x) d[x] = src[t_.x0[x]] * t_.a0[x] + src[t_.x1[x]] * t_.a1[x];
        c.which[s] = y;
        return d;
    };
    const float* r0 = fetch(t_.y0[dy], t_.y1[dy]);
    const float* r1 = fetch(t_.y1[dy], t_.y0[dy]);
    const float b0 = t_.b0[dy], b1 = t_.b1[dy];
    for (int x = 0; x < dw_; ++x) dst[x] = r0[x] * b0 + r1[x] * b1;
}

}  // namespace cfrg
