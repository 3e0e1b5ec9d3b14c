"""Constant tables derived from the representation specs.

Windows, third-octave band bins and Mel filterbanks are computed here, in float64
numpy, once per spec (results are cached, specs being frozen and hashable). The
C++ kernels receive these tables; ``training/`` and the PINV read the same ones.
Nothing here hard-codes a representation constant: everything comes from the spec.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .specs import BandSpec, MelSpec

__all__ = [
    "band_window",
    "band_energy_correction",
    "band_bin_ranges",
    "band_basis",
    "stft_window",
    "mel_filterbank",
    "hz_to_mel",
]


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


# ----------------------------------------------------------------- third octaves
@functools.cache
def band_window(spec: BandSpec) -> np.ndarray:
    """Analysis window of a :class:`BandSpec`, shape (frame_length,), float64.

    The Tukey window follows the Cense code (docs/conventions.md §1): it is
    slightly asymmetric (w[0] = 0, w[-1] > 0).
    """
    m = spec.frame_length
    if spec.window == "rectangular":
        return _readonly(np.ones(m))
    i = np.arange(m, dtype=np.float64)
    if spec.window == "hann":
        return _readonly(0.5 - 0.5 * np.cos(2 * np.pi * i / m))
    alpha = spec.window_alpha
    w = np.ones(m)
    n0 = int(math.floor(alpha / 2 * m))
    head = i < n0
    tail = i >= m - n0
    w[head] = 0.5 * (1 + np.cos(2 * np.pi / alpha * (i[head] / m - alpha / 2)))
    w[tail] = 0.5 * (1 + np.cos(2 * np.pi / alpha * (i[tail] / m - 1 + alpha / 2)))
    return _readonly(w)


def band_energy_correction(spec: BandSpec) -> float:
    """1 / sqrt(mean(w^2)): restores the energy the window removes (1.0690 for Tukey 0.2)."""
    w = band_window(spec)
    return float(1.0 / np.sqrt(np.mean(w * w)))


@functools.cache
def band_bin_ranges(spec: BandSpec) -> tuple[np.ndarray, np.ndarray]:
    """First and last rfft bin of each band, both inclusive, int64 arrays (n_bands,).

    ``ceil(f_lo / df) .. ceil(f_hi / df)``: neighbouring bands share one bin.
    """
    df = spec.sample_rate / spec.frame_length
    # The tiny relative nudge keeps ceil() from jumping a bin when f/df is an
    # integer up to rounding error (never the case for the presets).
    lo = np.ceil(spec.lower_edges / df * (1 - 1e-12)).astype(np.int64)
    hi = np.ceil(spec.upper_edges / df * (1 - 1e-12)).astype(np.int64)
    n_bins = spec.frame_length // 2 + 1
    if hi[-1] >= n_bins or lo[0] < 0:
        raise ValueError(f"band spec {spec.name!r}: bands exceed the FFT range")
    return _readonly(lo), _readonly(hi)


@functools.cache
def band_basis(spec: BandSpec) -> np.ndarray:
    """0/1 band-membership matrix, shape (n_bands, frame_length // 2 + 1), float64."""
    lo, hi = band_bin_ranges(spec)
    basis = np.zeros((spec.n_bands, spec.frame_length // 2 + 1))
    for b, (a, e) in enumerate(zip(lo, hi)):
        basis[b, a : e + 1] = 1.0
    return _readonly(basis)


# ----------------------------------------------------------------------- STFT
@functools.cache
def stft_window(spec: MelSpec) -> np.ndarray:
    """Analysis window of a :class:`MelSpec`, zero-padded centred to n_fft, float64 (n_fft,)."""
    n = spec.win_length
    period = n if spec.window_periodic else n - 1
    w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / period)
    left = (spec.n_fft - n) // 2
    out = np.zeros(spec.n_fft)
    out[left : left + n] = w
    return _readonly(out)


def hz_to_mel(f: np.ndarray | float, scale: str) -> np.ndarray:
    """Hz -> mel on the ``slaney``, ``htk`` (2595 log10) or natural-log HTK (1127 ln) scale."""
    f = np.asarray(f, dtype=np.float64)
    if scale == "slaney":
        f_sp = 200.0 / 3
        min_log_hz, logstep = 1000.0, math.log(6.4) / 27.0
        lin = f / f_sp
        return np.where(f >= min_log_hz, min_log_hz / f_sp + np.log(np.maximum(f, 1e-300) / min_log_hz) / logstep, lin)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    if scale == "ln":
        return 1127.0 * np.log(1.0 + f / 700.0)
    raise ValueError(scale)


def _mel_to_hz(m: np.ndarray, scale: str) -> np.ndarray:
    if scale == "slaney":
        f_sp = 200.0 / 3
        min_log_hz, logstep = 1000.0, math.log(6.4) / 27.0
        min_log_mel = min_log_hz / f_sp
        return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    raise ValueError(scale)


def _triangles(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Triangles on axis x (bins,) with corners edges (n_mels + 2,) -> (bins, n_mels)."""
    lower = (x[:, None] - edges[None, :-2]) / (edges[1:-1] - edges[:-2])[None, :]
    upper = (edges[None, 2:] - x[:, None]) / (edges[2:] - edges[1:-1])[None, :]
    tri: np.ndarray = np.maximum(0.0, np.minimum(lower, upper))
    return tri


@functools.cache
def mel_filterbank(spec: MelSpec, sample_rate: int | None = None, n_fft: int | None = None) -> np.ndarray:
    """Mel filterbank of ``spec``'s design, shape (n_fft // 2 + 1, n_mels), float64.

    ``sample_rate`` and ``n_fft`` default to the spec's own; the PINV evaluates the
    same design on the third-octave FFT grid (e.g. 32 kHz, 4096 points).
    """
    sr = spec.sample_rate if sample_rate is None else sample_rate
    nfft = spec.n_fft if n_fft is None else n_fft
    n_bins = nfft // 2 + 1
    n_mels, fmin, fmax = spec.n_mels, spec.fmin, spec.fmax
    kind = spec.filterbank
    if kind == "slaney":  # librosa.filters.mel(htk=False, norm="slaney")
        freqs = np.linspace(0.0, sr / 2, n_bins)
        edges = _mel_to_hz(np.linspace(hz_to_mel(fmin, "slaney"), hz_to_mel(fmax, "slaney"), n_mels + 2), "slaney")
        fb = _triangles(freqs, edges)
        fb *= (2.0 / (edges[2:] - edges[:-2]))[None, :]
    elif kind == "htk":  # torchaudio melscale_fbanks(mel_scale="htk", norm=None): triangles in Hz
        freqs = np.linspace(0.0, sr // 2, n_bins)
        edges = _mel_to_hz(np.linspace(hz_to_mel(fmin, "htk"), hz_to_mel(fmax, "htk"), n_mels + 2), "htk")
        fb = _triangles(freqs, edges)
    elif kind == "tf":  # tf.signal.linear_to_mel_weight_matrix: triangles in mel, DC row zero
        mel = hz_to_mel(np.linspace(0.0, sr / 2, n_bins)[1:], "ln")
        edges = np.linspace(hz_to_mel(fmin, "ln"), hz_to_mel(fmax, "ln"), n_mels + 2)
        fb = np.vstack([np.zeros((1, n_mels)), _triangles(mel, edges)])
    elif kind == "kaldi":  # torchaudio.compliance.kaldi.get_mel_banks, plus a zero Nyquist row
        mel = hz_to_mel(np.arange(nfft // 2) * (sr / nfft), "ln")
        lo, hi = hz_to_mel(fmin, "ln"), hz_to_mel(fmax, "ln")
        edges = lo + np.arange(n_mels + 2) * ((hi - lo) / (n_mels + 1))
        fb = np.vstack([_triangles(mel, edges), np.zeros((1, n_mels))])
    else:  # pragma: no cover - guarded by the spec's Literal type
        raise ValueError(f"unknown filterbank {kind!r}")
    return _readonly(np.ascontiguousarray(fb))
