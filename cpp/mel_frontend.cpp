// Classifier Mel front ends (PANN, YAMNet official and torch port, EfficientAT:
// docs/conventions.md §2), one generic kernel:
//   x (L samples) -> optional zero padding at the end to P samples
//   -> optional pre-emphasis y[n] = x[n+1] - a x[n] (M = P - 1 samples, else M = P)
//   -> frames: centred (n_fft // 2 of reflect or zero padding each side, frame t
//      centred on hop*t, T = 1 + M // hop) or not (frame t = y[hop*t, hop*t + win),
//      T = 1 + (M - win) // hop)
//   -> window (n_fft taps, zero outside its support) -> real FFT (pocketfft, float32)
//   -> power or magnitude -> Mel projection -> 10 log10(max(v, floor)) or ln(v + floor)
//   -> (value + norm_offset) / norm_scale.
// Padding and pre-emphasis are applied on the fly while filling the FFT buffer,
// so the long signal is never copied.
//
// kLanes frames are transformed per pocketfft call (its real FFT accepts a SIMD
// vector element type: 16 lanes with AVX-512, 8 with AVX). The Mel projection
// walks each band's contiguous non-zero bin range only, in float32 (the goldens
// are float32 computations; see tests/test_mel.py for the measured parity).
#include "common.hpp"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <utility>

#include "pocketfft.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace st {
namespace {

namespace pf = pocketfft::detail;

#ifndef POCKETFFT_NO_VECTORS
constexpr std::size_t kLanes = pf::VLEN<float>::val;
using vfloat = pf::vtype_t<float>;
#else
constexpr std::size_t kLanes = 1;
using vfloat = float;
#endif
static_assert(sizeof(vfloat) == kLanes * sizeof(float), "unexpected SIMD layout");

// Non-zero bins of one Mel band: weights[offset + c] multiplies bin first + c.
struct Band {
    std::size_t first = 0, count = 0, offset = 0;
};

struct Params {
    const float* audio = nullptr;
    std::size_t n_samples = 0;  // L, per row
    std::ptrdiff_t sig_len = 0;   // M, length of the analysed signal y
    bool has_pre = false;
    float pre = 0.0f;
    bool reflect = false;        // centred with reflect padding (else zeros outside y)
    std::ptrdiff_t origin = 0;   // y index of FFT buffer position 0 in frame 0
    std::size_t hop = 0, n_fft = 0, n_frames = 0;
    std::size_t t0 = 0, t1 = 0;  // buffer positions filled: the window's support, widened to whole tiles
    const float* window = nullptr;
    bool magnitude = false;
    bool db = true;
    float floor = 0.0f, offset = 0.0f, scale = 1.0f;
    std::vector<Band> bands;
    std::vector<float> weights;
    std::size_t bin_lo = 0, bin_hi = 0;  // bins any band uses, [bin_lo, bin_hi)
    float* out = nullptr;        // (rows * n_frames, n_mels)
};

// x zero-extended past its end (the end padding), i >= 0.
inline float x_at(const float* x, std::size_t n, std::ptrdiff_t i) {
    return i < static_cast<std::ptrdiff_t>(n) ? x[i] : 0.0f;
}

// y[j] for any j: pre-emphasised, zero-extended, and reflected (mirror without
// repeating the edge) or zero outside [0, M). The caller guarantees that a
// reflected index lands inside [0, M) (M > n_fft / 2).
inline float y_at(const Params& p, const float* x, std::ptrdiff_t j) {
    if (j < 0 || j >= p.sig_len) {
        if (!p.reflect) return 0.0f;
        j = j < 0 ? -j : 2 * (p.sig_len - 1) - j;
    }
    if (p.has_pre) return x_at(x, p.n_samples, j + 1) - p.pre * x_at(x, p.n_samples, j);
    return x_at(x, p.n_samples, j);
}

// The frame `item` starts at y index ys; its samples come from input row x.
struct Lane {
    const float* x = nullptr;
    std::ptrdiff_t ys = 0;
    bool interior = false;  // every sample of [t0, t1) is a real input sample
};

inline Lane make_lane(const Params& p, std::size_t item) {
    Lane l;
    const std::size_t row = item / p.n_frames, t = item % p.n_frames;
    l.x = p.audio + row * p.n_samples;
    l.ys = p.origin + static_cast<std::ptrdiff_t>(p.hop * t);
    const std::ptrdiff_t lo = l.ys + static_cast<std::ptrdiff_t>(p.t0);
    const std::ptrdiff_t hi = l.ys + static_cast<std::ptrdiff_t>(p.t1) - 1 + (p.has_pre ? 1 : 0);
    l.interior = lo >= 0 && hi < static_cast<std::ptrdiff_t>(p.n_samples);
    return l;
}

// Window samples [i0, i1) of one frame, scalar (edge frames, buffer tails).
inline void fill_scalar(const Params& p, const Lane& l, float* fb, std::size_t j, std::size_t i0, std::size_t i1) {
    for (std::size_t i = i0; i < i1; ++i)
        fb[i * kLanes + j] = y_at(p, l.x, l.ys + static_cast<std::ptrdiff_t>(i)) * p.window[i];
}

#ifndef POCKETFFT_NO_VECTORS
using vint = int __attribute__((vector_size(kLanes * sizeof(int))));

template <std::size_t... I>
constexpr vint zip_mask(std::index_sequence<I...>, int base) {
    // lane 2i takes a[base + i], lane 2i + 1 takes b[base + i] (b's lanes are numbered from kLanes)
    return vint{(static_cast<int>(I % 2 ? kLanes : 0) + base + static_cast<int>(I / 2))...};
}
constexpr vint kZipLo = zip_mask(std::make_index_sequence<kLanes>{}, 0);
constexpr vint kZipHi = zip_mask(std::make_index_sequence<kLanes>{}, static_cast<int>(kLanes / 2));

// In-register kLanes x kLanes transpose: log2(kLanes) rounds of interleaving row i
// with row i + kLanes/2 turn r[j][l] into r[l][j].
inline void transpose(vfloat* r) {
    vfloat t[kLanes];
    for (std::size_t s = 1; s < kLanes; s *= 2) {
        for (std::size_t i = 0; i < kLanes / 2; ++i) {
            t[2 * i] = __builtin_shuffle(r[i], r[i + kLanes / 2], kZipLo);
            t[2 * i + 1] = __builtin_shuffle(r[i], r[i + kLanes / 2], kZipHi);
        }
        for (std::size_t i = 0; i < kLanes; ++i) r[i] = t[i];
    }
}

inline vfloat load(const float* a) {
    vfloat v;
    std::memcpy(&v, a, sizeof v);
    return v;
}
#endif

// Fill the interleaved FFT buffer (sample i of lane j at fb[i * kLanes + j]) with
// the windowed frames of `lanes`; lanes past `used` are zeros.
inline void fill_frames(const Params& p, const Lane* lanes, std::size_t used, vfloat* buf) {
    const vfloat zero{};
    float* fb = reinterpret_cast<float*>(buf);
    for (std::size_t i = 0; i < p.t0; ++i) buf[i] = zero;
    for (std::size_t i = p.t1; i < p.n_fft; ++i) buf[i] = zero;
    std::size_t i0 = p.t0;
#ifndef POCKETFFT_NO_VECTORS
    // Whole tiles of kLanes samples x kLanes frames: contiguous loads per frame,
    // then a register transpose into the lane-interleaved layout.
    vfloat r[kLanes];
    for (; i0 + kLanes <= p.t1; i0 += kLanes) {
        const vfloat w = load(p.window + i0);
        for (std::size_t j = 0; j < kLanes; ++j) {
            if (j >= used) {
                r[j] = zero;
            } else if (lanes[j].interior) {
                const float* src = lanes[j].x + lanes[j].ys + static_cast<std::ptrdiff_t>(i0);
                r[j] = p.has_pre ? (load(src + 1) - p.pre * load(src)) * w : load(src) * w;
            } else {
                float tmp[kLanes];
                for (std::size_t l = 0; l < kLanes; ++l)
                    tmp[l] = y_at(p, lanes[j].x, lanes[j].ys + static_cast<std::ptrdiff_t>(i0 + l));
                r[j] = load(tmp) * w;
            }
        }
        transpose(r);
        for (std::size_t l = 0; l < kLanes; ++l) buf[i0 + l] = r[l];
    }
#endif
    for (std::size_t j = 0; j < kLanes; ++j) {
        if (j < used) {
            fill_scalar(p, lanes[j], fb, j, i0, p.t1);
        } else {
            for (std::size_t i = i0; i < p.t1; ++i) fb[i * kLanes + j] = 0.0f;
        }
    }
}

// |X_k|^2 from pocketfft's packed real-to-halfcomplex layout
// (r0, r1, i1, r2, i2, ..., [r_{N/2}] when N is even).
inline vfloat bin_power(const vfloat* c, std::size_t k, std::size_t n) {
    if (k == 0) return c[0] * c[0];
    if (2 * k == n) return c[n - 1] * c[n - 1];
    return c[2 * k - 1] * c[2 * k - 1] + c[2 * k] * c[2 * k];
}

// Square root of every lane. std::sqrt does not vectorise (errno), so use the
// x86 instruction of the vector's width where there is one (V is a template
// parameter so that only the matching branch is instantiated).
template <class V>
inline V vsqrt(V x) {
#ifndef POCKETFFT_NO_VECTORS
#if defined(__AVX512F__)
    // (the zero-masked form: GCC 12 warns about _mm512_sqrt_ps's undefined passthrough)
    if constexpr (sizeof(V) == sizeof(__m512))
        return reinterpret_cast<V>(_mm512_maskz_sqrt_ps(static_cast<__mmask16>(0xFFFF), reinterpret_cast<__m512>(x)));
#endif
#if defined(__AVX__)
    if constexpr (sizeof(V) == sizeof(__m256)) return reinterpret_cast<V>(_mm256_sqrt_ps(reinterpret_cast<__m256>(x)));
#endif
#if defined(__SSE2__)
    if constexpr (sizeof(V) == sizeof(__m128)) return reinterpret_cast<V>(_mm_sqrt_ps(reinterpret_cast<__m128>(x)));
#endif
    for (std::size_t l = 0; l < kLanes; ++l) x[l] = std::sqrt(x[l]);
    return x;
#else
    return std::sqrt(x);
#endif
}

// Natural log of every lane. Positive normal lanes take a vectorised path
// (x = 2^e m with m in [sqrt(1/2), sqrt(2)), ln m = 2 atanh((m - 1) / (m + 1)) by
// its odd series; error a few ulp); zero, subnormal, infinite or NaN lanes fall
// back to std::log.
inline vfloat vlog(vfloat x) {
#ifndef POCKETFFT_NO_VECTORS
    const vint ix = reinterpret_cast<vint>(x);
    vint e = ((ix >> 23) & 0xff) - 127;
    vfloat m = reinterpret_cast<vfloat>((ix & 0x007fffff) | 0x3f800000);  // [1, 2)
    const vint big = m > 1.41421356f;
    m = big ? m * 0.5f : m;
    e -= big;  // a true comparison lane is -1
    const vfloat s = (m - 1.0f) / (m + 1.0f);
    const vfloat z = s * s;
    const vfloat series = 1.0f + z * (1.0f / 3 + z * (1.0f / 5 + z * (1.0f / 7 + z * (1.0f / 9))));
    const vfloat ef = __builtin_convertvector(e, vfloat);
    // ln 2 split in a part exact in float and a remainder, so e * ln2_hi is exact.
    vfloat r = ef * 0.693359375f + (2.0f * s * series + ef * -2.12194440e-4f);
    const vint bad = (x < std::numeric_limits<float>::min()) | (x > std::numeric_limits<float>::max()) | (x != x);
    bool any = false;
    for (std::size_t l = 0; l < kLanes; ++l) any |= bad[l] != 0;
    if (any)
        for (std::size_t l = 0; l < kLanes; ++l)
            if (bad[l]) r[l] = std::log(x[l]);
    return r;
#else
    return std::log(x);
#endif
}

// Frames with flat indices [first, last) (item = row * n_frames + t).
void process_range(const Params& p, const pf::pocketfft_r<float>& plan, std::size_t first, std::size_t last) {
    const std::size_t n = p.n_fft, n_mels = p.bands.size();
    pf::arr<vfloat> buf(n);
    pf::arr<vfloat> mel(n_mels);
    const float* ml = reinterpret_cast<const float*>(mel.data());
    // dB = 10 log10(v) = ln(v) * 10 / ln(10); then (value + offset) / scale.
    const float log_gain = p.db ? static_cast<float>(10.0 / std::log(10.0)) : 1.0f;
    for (std::size_t g = first; g < last; g += kLanes) {
        const std::size_t used = std::min(kLanes, last - g);
        Lane lanes[kLanes];
        for (std::size_t j = 0; j < used; ++j) lanes[j] = make_lane(p, g + j);
        fill_frames(p, lanes, used, buf.data());
        plan.exec(buf.data(), 1.0f, true);
        // In place: bin k's power goes to buf[k], which no later bin reads (bin k' > k reads 2k' - 1 and 2k').
        vfloat* spec = buf.data();
        for (std::size_t k = p.bin_lo; k < p.bin_hi; ++k) spec[k] = bin_power(spec, k, n);
        if (p.magnitude)
            for (std::size_t k = p.bin_lo; k < p.bin_hi; ++k) spec[k] = vsqrt(spec[k]);
        for (std::size_t m = 0; m < n_mels; ++m) {
            const Band& b = p.bands[m];
            const float* wt = p.weights.data() + b.offset;
            const vfloat* s = spec + b.first;
            vfloat acc{};
            for (std::size_t c = 0; c < b.count; ++c) acc += wt[c] * s[c];
            const vfloat arg = p.db ? (acc > p.floor ? acc : p.floor) : acc + p.floor;
            mel[m] = (vlog(arg) * log_gain + p.offset) / p.scale;
        }
        // mel[m][j] -> out[g + j][m]: transpose kLanes x kLanes tiles, scalar tail.
        std::size_t m0 = 0;
#ifndef POCKETFFT_NO_VECTORS
        for (; m0 + kLanes <= n_mels; m0 += kLanes) {
            vfloat r[kLanes];
            for (std::size_t l = 0; l < kLanes; ++l) r[l] = mel[m0 + l];
            transpose(r);
            for (std::size_t j = 0; j < used; ++j) std::memcpy(p.out + (g + j) * n_mels + m0, &r[j], sizeof(vfloat));
        }
#endif
        for (std::size_t j = 0; j < used; ++j)
            for (std::size_t m = m0; m < n_mels; ++m) p.out[(g + j) * n_mels + m] = ml[m * kLanes + j];
    }
}

py::array_t<float> mel_spectrogram(f32_array audio, f32_array window, f32_array mel_fb, std::int64_t hop,
                                   bool center, std::int64_t win_length, const std::string& pad_mode,
                                   std::int64_t padded_length, double preemphasis, bool magnitude,
                                   const std::string& log_kind, double log_floor, double norm_offset,
                                   double norm_scale, int n_threads) {
    require(audio.ndim() == 2, "mel_spectrogram: audio must be (batch, samples)");
    require(window.ndim() == 1 && window.shape(0) >= 2, "mel_spectrogram: window must be (n_fft,) with n_fft >= 2");
    require(mel_fb.ndim() == 2 && mel_fb.shape(0) == window.shape(0) / 2 + 1 && mel_fb.shape(1) >= 1,
            "mel_spectrogram: mel_fb must be (n_fft // 2 + 1, n_mels)");
    require(hop >= 1, "mel_spectrogram: hop must be >= 1");
    require(win_length >= 1 && win_length <= window.shape(0), "mel_spectrogram: need 1 <= win_length <= n_fft");
    require(pad_mode == "reflect" || pad_mode == "constant",
            "mel_spectrogram: pad_mode must be 'reflect' or 'constant'");
    require(log_kind == "db" || log_kind == "ln", "mel_spectrogram: log_kind must be 'db' or 'ln'");
    require(std::isfinite(log_floor) && log_floor > 0.0, "mel_spectrogram: log_floor must be positive");
    require(std::isfinite(norm_offset) && std::isfinite(norm_scale) && norm_scale != 0.0,
            "mel_spectrogram: norm_offset must be finite and norm_scale finite and non-zero");
    require(std::isfinite(preemphasis), "mel_spectrogram: preemphasis must be finite");

    Params p;
    p.n_fft = static_cast<std::size_t>(window.shape(0));
    p.hop = static_cast<std::size_t>(hop);
    const std::size_t rows = static_cast<std::size_t>(audio.shape(0));
    p.n_samples = static_cast<std::size_t>(audio.shape(1));
    const std::size_t padded = std::max<std::size_t>(p.n_samples, padded_length > 0 ? padded_length : 0);
    p.has_pre = preemphasis != 0.0;
    p.pre = static_cast<float>(preemphasis);
    require(padded >= (p.has_pre ? 2u : 1u), "mel_spectrogram: signal too short");
    p.sig_len = static_cast<std::ptrdiff_t>(padded - (p.has_pre ? 1 : 0));
    const auto M = static_cast<std::size_t>(p.sig_len);
    const auto win = static_cast<std::size_t>(win_length);
    if (center) {
        p.reflect = pad_mode == "reflect";
        require(!p.reflect || M > p.n_fft / 2,
                "mel_spectrogram: reflect padding needs more than n_fft // 2 samples (after pre-emphasis)");
        p.origin = -static_cast<std::ptrdiff_t>(p.n_fft / 2);
        p.n_frames = 1 + M / p.hop;
    } else {
        require(M >= win, "mel_spectrogram: an uncentred STFT needs at least win_length samples");
        p.origin = -static_cast<std::ptrdiff_t>((p.n_fft - win) / 2);
        p.n_frames = 1 + (M - win) / p.hop;
    }
    p.window = window.data();
    // The window's support, widened to whole kLanes tiles: samples outside it are never read.
    std::size_t s0 = p.n_fft, s1 = 0;
    for (std::size_t i = 0; i < p.n_fft; ++i)
        if (p.window[i] != 0.0f) {
            s0 = std::min(s0, i);
            s1 = i + 1;
        }
    if (s1 <= s0) s0 = s1 = 0;
    p.t0 = s0 / kLanes * kLanes;
    p.t1 = std::min(p.n_fft, (s1 + kLanes - 1) / kLanes * kLanes);
    p.magnitude = magnitude;
    p.db = log_kind == "db";
    p.floor = static_cast<float>(log_floor);
    p.offset = static_cast<float>(norm_offset);
    p.scale = static_cast<float>(norm_scale);

    // Sparse Mel projection: each band's non-zero weights form one contiguous
    // bin range [first, last] (triangular filters), stored back to back.
    const std::size_t n_bins = p.n_fft / 2 + 1, n_mels = static_cast<std::size_t>(mel_fb.shape(1));
    const float* W = mel_fb.data();
    p.bands.resize(n_mels);
    p.bin_lo = n_bins;
    p.bin_hi = 0;
    for (std::size_t m = 0; m < n_mels; ++m) {
        std::size_t a = n_bins, e = 0;
        for (std::size_t k = 0; k < n_bins; ++k)
            if (W[k * n_mels + m] != 0.0f) {
                a = std::min(a, k);
                e = k + 1;
            }
        Band& b = p.bands[m];
        b.offset = p.weights.size();
        if (e > a) {
            b.first = a;
            b.count = e - a;
            for (std::size_t k = a; k < e; ++k) p.weights.push_back(W[k * n_mels + m]);
            p.bin_lo = std::min(p.bin_lo, a);
            p.bin_hi = std::max(p.bin_hi, e);
        }
    }
    if (p.bin_hi <= p.bin_lo) p.bin_lo = p.bin_hi = 0;
    p.audio = audio.data();

    py::array_t<float> out({static_cast<py::ssize_t>(rows), static_cast<py::ssize_t>(p.n_frames),
                            static_cast<py::ssize_t>(n_mels)});
    p.out = out.mutable_data();
    // choose_threads' cost unit is ~0.5 ns; a vectorised frame costs roughly n_fft / 2 ns.
    const double cost = static_cast<double>(kLanes) * static_cast<double>(p.n_fft);
    run_lane_groups(
        rows * p.n_frames, kLanes, cost, n_threads, [&] { return pf::get_plan<pf::pocketfft_r<float>>(p.n_fft); },
        [&](const pf::pocketfft_r<float>& plan, std::size_t first, std::size_t last) {
            process_range(p, plan, first, last);
        });
    return out;
}

}  // namespace

void register_mel_frontend(py::module_& m) {
    m.def("mel_spectrogram", &mel_spectrogram, py::arg("audio"), py::arg("window"), py::arg("mel_fb"),
          py::arg("hop"), py::arg("center"), py::arg("win_length"), py::arg("pad_mode"), py::arg("padded_length"),
          py::arg("preemphasis"), py::arg("magnitude"), py::arg("log_kind"), py::arg("log_floor"),
          py::arg("norm_offset"), py::arg("norm_scale"), py::arg("n_threads") = 0,
          "Log-Mel spectrogram of audio (batch, samples) float32 -> (batch, frames, n_mels) float32.\n"
          "window (n_fft,) holds the analysis window zero-padded centred to n_fft; mel_fb is\n"
          "(n_fft // 2 + 1, n_mels). The signal is zero-padded at the end to padded_length (if\n"
          "longer), pre-emphasised (y[n] = x[n+1] - preemphasis x[n], when non-zero), then framed:\n"
          "center=True pads n_fft // 2 each side ('reflect' or 'constant'), T = 1 + M // hop;\n"
          "center=False gives frame t = y[hop t, hop t + win_length), T = 1 + (M - win_length) // hop.\n"
          "Spectrum |X|^2 (or |X| if magnitude), Mel projection, then 10 log10(max(v, log_floor))\n"
          "('db') or ln(v + log_floor) ('ln'), then (value + norm_offset) / norm_scale.\n"
          "n_threads = 0 picks automatically.");
    m.attr("mel_lanes") = py::int_(kLanes);
}

}  // namespace st
