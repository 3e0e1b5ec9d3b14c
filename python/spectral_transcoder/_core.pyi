"""spectral_transcoder numeric kernels (float32, batched, GIL released, std::thread).

Hand-maintained stub of the pybind11 module built from cpp/. tests/test_core_stub.py
fails when it drifts from the compiled module (names, parameters, defaults, dtypes);
tools/gen-stubs.sh prints a machine-generated draft and its diff against this file.

The kernels cast any array-like to a C-contiguous array of the stated dtype, but the
package always hands them arrays that already are (no copy), hence ``NDArray`` here.
Shapes are time-major; leading axes are flattened into one batch axis by the callers.
``n_threads = 0`` lets the kernel choose (small jobs stay on the calling thread).
"""

from typing import Literal

import numpy as np
from numpy.typing import NDArray

# SIMD width (frames per pocketfft call) of the build: 16 with AVX-512, 8 with AVX, 1 without.
third_octave_lanes: int
mel_lanes: int

def third_octave_levels(
    audio: NDArray[np.float32],
    window: NDArray[np.float32],
    bin_lo: NDArray[np.int64],
    bin_hi: NDArray[np.int64],
    hop: int,
    scale: float,
    db_offset: float,
    floor: float,
    n_threads: int = 0,
) -> NDArray[np.float32]:
    """audio (batch, samples), window (N,), bin_lo/bin_hi (n_bands,) inclusive -> levels (batch, frames, n_bands) dB."""

def mel_spectrogram(
    audio: NDArray[np.float32],
    window: NDArray[np.float32],
    mel_fb: NDArray[np.float32],
    hop: int,
    center: bool,
    win_length: int,
    pad_mode: Literal["reflect", "constant"],
    padded_length: int,
    preemphasis: float,
    magnitude: bool,
    log_kind: Literal["db", "ln"],
    log_floor: float,
    norm_offset: float,
    norm_scale: float,
    n_threads: int = 0,
) -> NDArray[np.float32]:
    """audio (batch, samples), window (n_fft,), mel_fb (n_fft // 2 + 1, n_mels) -> log-Mels (batch, frames, n_mels)."""

def pinv_chunks(
    levels: NDArray[np.float32],
    A: NDArray[np.float32],
    W_t: NDArray[np.float32],
    K: float,
    db_offset: float,
    log_kind: Literal["db", "ln"],
    log_floor: float,
    norm_offset: float,
    norm_scale: float,
    n_threads: int = 0,
) -> NDArray[np.float32]:
    """levels (chunks, F, bands) dB, A (n_mels, bands), W_t (T, F) -> log-Mels (chunks, T, n_mels)."""

def _ln_approx(x: NDArray[np.float32]) -> NDArray[np.float32]:
    """x (any shape) -> ln(x) (x.size,), flat: pinv_chunks' vectorised float32 log, input clamped to normal floats."""

def _exp2_approx(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """x (any shape) -> 2**x (x.size,), flat: pinv_chunks' vectorised double exp2, input clamped to [-1000, 1000]."""
