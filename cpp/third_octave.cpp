// Third-octave analysis (docs/conventions.md §1): framing with end zero padding,
// analysis window, real FFT (pocketfft, float32), power per bin, sums over
// inclusive bin ranges, level = 20 log10(rms) + db_offset.
//
// Frames are processed kLanes at a time: pocketfft's real FFT accepts a SIMD
// vector type as its element, so one call transforms kLanes interleaved frames
// (16 with AVX-512, 8 with AVX). Band sums are accumulated in double.
#include "common.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <limits>
#include <memory>
#include <utility>

#include "pocketfft.hpp"

namespace st {
namespace {

namespace pf = pocketfft::detail;

#ifndef POCKETFFT_NO_VECTORS
constexpr std::size_t kLanes = pf::VLEN<float>::val;
using vfloat = pf::vtype_t<float>;
typedef double vdouble __attribute__((vector_size(kLanes * sizeof(double))));
inline vdouble widen(vfloat x) { return __builtin_convertvector(x, vdouble); }
inline double lane(const vdouble& v, std::size_t j) { return v[j]; }
#else
constexpr std::size_t kLanes = 1;
using vfloat = float;
using vdouble = double;
inline vdouble widen(vfloat x) { return static_cast<double>(x); }
inline double lane(const vdouble& v, std::size_t) { return v; }
#endif
static_assert(sizeof(vfloat) == kLanes * sizeof(float), "unexpected SIMD layout");

#ifndef POCKETFFT_NO_VECTORS
// In-register transpose of kLanes × kLanes floats (kLanes a power of two): at
// level B, rows i and i + B (bit B of i clear) swap their off-diagonal B-blocks;
// after levels 1, 2, 4, ... the matrix is transposed. One two-source shuffle per
// output vector and level, instead of kLanes scalar stores per sample.
template <std::size_t B, std::size_t... K>
inline vfloat mix_lo(vfloat a, vfloat b, std::index_sequence<K...>) {
    return __builtin_shufflevector(a, b, ((K & B) ? kLanes + K - B : K)...);
}
template <std::size_t B, std::size_t... K>
inline vfloat mix_hi(vfloat a, vfloat b, std::index_sequence<K...>) {
    return __builtin_shufflevector(a, b, ((K & B) ? kLanes + K : K + B)...);
}
template <std::size_t B>
inline void transpose_levels(vfloat* r) {
    if constexpr (B < kLanes) {
        for (std::size_t i = 0; i < kLanes; ++i) {
            if (i & B) continue;
            const vfloat a = r[i], b = r[i + B];
            r[i] = mix_lo<B>(a, b, std::make_index_sequence<kLanes>{});
            r[i + B] = mix_hi<B>(a, b, std::make_index_sequence<kLanes>{});
        }
        transpose_levels<B * 2>(r);
    }
}
static_assert((kLanes & (kLanes - 1)) == 0, "kLanes must be a power of two");
#endif

// Frames of a signal of n samples: zero-padded at the end to a whole frame; a
// signal no longer than one frame (including an empty one) gives one frame.
inline std::size_t count_frames(std::size_t n, std::size_t frame, std::size_t hop) {
    if (n <= frame) return 1;
    return (n - frame + hop - 1) / hop + 1;
}

struct Params {
    const float* audio;
    std::size_t n_samples;  // per row
    std::size_t n_frames;   // per row
    const float* window;
    std::size_t frame;
    std::size_t hop;
    const std::int64_t* lo;
    const std::int64_t* hi;
    std::size_t n_bands;
    double scale;      // rms = sqrt(band power) * scale
    double db_offset;  // dB added to 20 log10(rms)
    double floor;      // rms <= 0 is replaced by this
    float* out;        // (rows * n_frames, n_bands)
};

// Power of rfft bin k from pocketfft's packed real-to-halfcomplex layout
// (r0, r1, i1, r2, i2, ..., [r_{N/2}] when N is even).
inline vfloat bin_power(const vfloat* c, std::size_t k, std::size_t n) {
    if (k == 0) return c[0] * c[0];
    if (2 * k == n) return c[n - 1] * c[n - 1];
    return c[2 * k - 1] * c[2 * k - 1] + c[2 * k] * c[2 * k];
}

constexpr std::size_t kBinBlock = 32;

// Process the frames with flat indices [first, last) (frame = row * n_frames + n).
void analyse_range(const Params& p, const pf::pocketfft_r<float>& plan, std::size_t first, std::size_t last) {
    const std::size_t n = p.frame;
    pf::arr<vfloat> buf(n);
    float* fb = reinterpret_cast<float*>(buf.data());
    std::vector<vdouble> band(p.n_bands);
    const float* src[kLanes];
    std::size_t avail[kLanes];
    for (std::size_t g = first; g < last; g += kLanes) {
        const std::size_t used = std::min(kLanes, last - g);
        // Lane j holds frame g + j: its samples start at src[j], of which avail[j]
        // exist before the end of the signal (the rest are the zero padding).
        // Unused lanes repeat lane 0; their results are discarded.
        for (std::size_t j = 0; j < kLanes; ++j) {
            const std::size_t item = g + (j < used ? j : 0);
            const std::size_t row = item / p.n_frames, fr = item % p.n_frames;
            const std::size_t start = fr * p.hop;
            src[j] = p.audio + row * p.n_samples + start;
            avail[j] = start < p.n_samples ? std::min(n, p.n_samples - start) : 0;
        }
        const std::size_t full = *std::min_element(avail, avail + kLanes);
        // Interleave: sample i of lane j goes to fb[i * kLanes + j].
        std::size_t i0 = 0;
#ifndef POCKETFFT_NO_VECTORS
        for (; i0 + kLanes <= full; i0 += kLanes) {
            vfloat r[kLanes], w;
            std::memcpy(&w, p.window + i0, sizeof w);
            for (std::size_t j = 0; j < kLanes; ++j) {
                std::memcpy(&r[j], src[j] + i0, sizeof(vfloat));
                r[j] *= w;
            }
            transpose_levels<1>(r);
            for (std::size_t j = 0; j < kLanes; ++j) buf[i0 + j] = r[j];
        }
#endif
        for (std::size_t i = i0; i < full; ++i) {
            const float w = p.window[i];
            float* d = fb + i * kLanes;
            for (std::size_t j = 0; j < kLanes; ++j) d[j] = src[j][i] * w;
        }
        for (std::size_t i = full; i < n; ++i) {
            const float w = p.window[i];
            float* d = fb + i * kLanes;
            for (std::size_t j = 0; j < kLanes; ++j) d[j] = i < avail[j] ? src[j][i] * w : 0.0f;
        }
        plan.exec(buf.data(), 1.0f, true);
        // Band sums: float partial sums over blocks of kBinBlock bins, added in
        // double (float rounding stays ~1e-7 relative, whatever the band width).
        for (std::size_t b = 0; b < p.n_bands; ++b) {
            vdouble acc{};
            const auto hi = static_cast<std::size_t>(p.hi[b]);
            for (auto k = static_cast<std::size_t>(p.lo[b]); k <= hi;) {
                const std::size_t end = std::min(hi + 1, k + kBinBlock);
                vfloat part = bin_power(buf.data(), k, n);
                for (++k; k < end; ++k) part += bin_power(buf.data(), k, n);
                acc += widen(part);
            }
            band[b] = acc;
        }
        for (std::size_t j = 0; j < used; ++j) {
            float* o = p.out + (g + j) * p.n_bands;
            for (std::size_t b = 0; b < p.n_bands; ++b) {
                double rms = std::sqrt(lane(band[b], j)) * p.scale;
                if (!(rms > 0.0)) rms = p.floor;
                o[b] = static_cast<float>(20.0 * std::log10(rms) + p.db_offset);
            }
        }
    }
}

py::array_t<float> third_octave_levels(f32_array audio, f32_array window, i64_array bin_lo, i64_array bin_hi,
                                       std::int64_t hop, double scale, double db_offset, double floor,
                                       int n_threads) {
    require(audio.ndim() == 2, "third_octave_levels: audio must be (batch, samples)");
    require(window.ndim() == 1 && window.shape(0) >= 1, "third_octave_levels: window must be (frame_length,)");
    require(bin_lo.ndim() == 1 && bin_hi.ndim() == 1 && bin_lo.shape(0) == bin_hi.shape(0),
            "third_octave_levels: bin_lo and bin_hi must be (n_bands,)");
    require(hop >= 1, "third_octave_levels: hop must be >= 1");
    require(floor > 0.0 && std::isfinite(floor), "third_octave_levels: floor must be positive");
    Params p{};
    p.frame = static_cast<std::size_t>(window.shape(0));
    p.hop = static_cast<std::size_t>(hop);
    p.n_bands = static_cast<std::size_t>(bin_lo.shape(0));
    const std::size_t rows = static_cast<std::size_t>(audio.shape(0));
    p.n_samples = static_cast<std::size_t>(audio.shape(1));
    p.n_frames = count_frames(p.n_samples, p.frame, p.hop);
    const std::size_t n_bins = p.frame / 2 + 1;
    for (std::size_t b = 0; b < p.n_bands; ++b)
        require(bin_lo.at(b) >= 0 && bin_lo.at(b) <= bin_hi.at(b) && static_cast<std::size_t>(bin_hi.at(b)) < n_bins,
                "third_octave_levels: bin ranges must satisfy 0 <= lo <= hi < frame_length/2 + 1");
    p.audio = audio.data();
    p.window = window.data();
    p.lo = bin_lo.data();
    p.hi = bin_hi.data();
    p.scale = scale;
    p.db_offset = db_offset;
    p.floor = floor;

    py::array_t<float> out({static_cast<py::ssize_t>(rows), static_cast<py::ssize_t>(p.n_frames),
                            static_cast<py::ssize_t>(p.n_bands)});
    p.out = out.mutable_data();
    // Cost units of choose_threads are ~0.5 ns; a frame costs ~0.75 N ns.
    const double cost = kLanes * 1.5 * static_cast<double>(p.frame);
    run_lane_groups(
        rows * p.n_frames, kLanes, cost, n_threads, [&] { return pf::get_plan<pf::pocketfft_r<float>>(p.frame); },
        [&](const pf::pocketfft_r<float>& plan, std::size_t first, std::size_t last) {
            analyse_range(p, plan, first, last);
        });
    return out;
}

}  // namespace

void register_third_octave(py::module_& m) {
    m.def("third_octave_levels", &third_octave_levels, py::arg("audio"), py::arg("window"), py::arg("bin_lo"),
          py::arg("bin_hi"), py::arg("hop"), py::arg("scale"), py::arg("db_offset"), py::arg("floor"),
          py::arg("n_threads") = 0,
          "Third-octave levels of audio (batch, samples) float32 -> (batch, frames, n_bands) float32 dB.\n"
          "Frame n = samples [hop*n, hop*n + N) with N = len(window), zero-padded at the end;\n"
          "level = 20 log10(sqrt(sum of |rfft|^2 over bins lo..hi inclusive) * scale) + db_offset,\n"
          "with rms <= 0 replaced by floor. n_threads = 0 picks automatically.");
    m.attr("third_octave_lanes") = py::int_(kLanes);
}

}  // namespace st
