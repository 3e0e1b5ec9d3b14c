"""PINV transcoder: third-octave levels -> a classifier's Mel spectrogram (docs/conventions.md §3).

Per chunk of ``band_spec.frames_per_chunk`` frames (1 s for ``cense_fast``) the
reference computation -- dB to band power, energy compensation, ReLU'd
pseudo-inverse of the band matrix, linear time interpolation, Mel projection,
log -- is folded into

    Y = logop( W_t · (K · 10^((X − db_offset)/10)) · Aᵀ )

with constant tables: ``A = Mᵀ·ReLU(Φ⁺)`` (:func:`pinv_matrix`, n_mels × n_bands),
``W_t`` (:func:`interpolation_matrix`, T × F) and the gain ``K`` (:func:`band_power_gain`).
The C++ kernel evaluates it for a whole batch of chunks.

Building blocks for the transcoders: :func:`split_chunks` -> :func:`pinv_chunks`
-> :func:`stitch_chunks`; :func:`pinv` chains them.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import warnings
from types import FrameType

import numpy as np

from . import _core, tables
from ._validation import as_float32_levels, check_finite, check_threads
from .errors import InputTypeError, InvalidInputError, SpectralTranscoderWarning, option
from .specs import BandSpec, MelSpec, get_band_spec, get_mel_spec

__all__ = [
    "pinv",
    "split_chunks",
    "context_windows",
    "pinv_chunks",
    "stitch_chunks",
    "pinv_matrix",
    "interpolation_matrix",
    "band_power_gain",
    "n_valid_mel_frames",
    "PartialChunkWarning",
    "MAX_LEVEL_ABOVE_OFFSET",
    "PINV_PREFIX",
    "pinv_target",
]

#: Levels more than this many dB above the band spec's ``db_offset`` are rejected:
#: their band power would overflow float32 in the kernel (far beyond any real sound).
MAX_LEVEL_ABOVE_OFFSET = 300.0

_PARTIAL = ("error", "drop", "pad")
_LAYOUTS = ("stitched", "concat", "chunks")


class PartialChunkWarning(SpectralTranscoderWarning):
    """The levels did not fill a whole number of chunks: the last one was dropped or padded.
    (A ``UserWarning``, through :class:`~spectral_transcoder.errors.SpectralTranscoderWarning`.)"""


#: Where a transcoder is named by a string, ``"pinv:TARGET"`` is the PINV alone into the Mel spec TARGET.
PINV_PREFIX = "pinv:"


def pinv_target(transcoder: object) -> str | None:
    """TARGET of a ``"pinv:TARGET"`` transcoder string; None for anything else (a registry
    name, a path, a model object). TARGET is not checked here: the caller resolves it."""
    if isinstance(transcoder, str) and transcoder.startswith(PINV_PREFIX):
        return transcoder[len(PINV_PREFIX) :]
    return None


# ------------------------------------------------------------------ tables
def band_power_gain(band_spec: str | BandSpec, mel_spec: str | MelSpec) -> float:
    """K such that the compensated band power is ``K · 10^((X − db_offset)/10)``.

    ``K = (N/√2)² · c`` with ``N = band_spec.frame_length``: ``(rms·N/√2)²`` undoes
    the level computation back to the band-summed FFT power (the window's energy
    correction is not undone, as in the reference). ``c = ((1 + n_fft/2)/(1 + N/2)
    · 0.5)²`` is the reference's energy compensation between the third-octave FFT
    and the target's FFT (``n_fft = mel_spec.n_fft``), where 0.5 is the coherent
    gain of a Hann window, squared because it applies to power. The reference
    formula is used for every target, whatever its window or sample rate, so that
    the tables match the ones the published transcoders were trained with
    (PANN: c = 0.0156708, YAMNet: c = 0.0039330).
    """
    band = get_band_spec(band_spec)
    mel = get_mel_spec(mel_spec)
    n = band.frame_length
    c = ((1 + mel.n_fft // 2) / (1 + n // 2) * 0.5) ** 2
    return (n / math.sqrt(2.0)) ** 2 * c


@functools.cache
def interpolation_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Linear time interpolation from ``n_in`` to ``n_out`` frames, shape (n_out, n_in), float64.

    PyTorch's ``interpolate(mode="linear", align_corners=False)``: output frame j
    reads the source coordinate ``s = max(0, (j + 0.5)·n_in/n_out − 0.5)``, mixing
    frames ``floor(s)`` and ``min(floor(s) + 1, n_in − 1)`` with weights
    ``1 − (s − floor(s))`` and ``s − floor(s)``. Rows sum to 1. (Read-only.)
    """
    if n_in < 1 or n_out < 1:
        raise InvalidInputError(f"interpolation needs n_in >= 1 and n_out >= 1, got {n_in}, {n_out}")
    w = np.zeros((n_out, n_in))
    s = np.maximum(0.0, (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5)
    i0 = np.minimum(np.floor(s).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = s - i0
    rows = np.arange(n_out)
    np.add.at(w, (rows, i0), 1.0 - lam)
    np.add.at(w, (rows, i1), lam)
    w.setflags(write=False)
    return w


@functools.cache
def _default_matrix(band: BandSpec, mel: MelSpec) -> np.ndarray:
    # rcond 1e-15: the band matrix has full row rank, nothing is truncated (§3 step 3).
    phi_plus = np.linalg.pinv(tables.band_basis(band), rcond=1e-15)
    a = _fold(band, mel, phi_plus)
    a.setflags(write=False)
    return a


def _fold(band: BandSpec, mel: MelSpec, phi_plus: np.ndarray) -> np.ndarray:
    fb = tables.mel_filterbank(mel, band.sample_rate, band.frame_length)  # (n_bins, n_mels)
    return np.ascontiguousarray(fb.T @ np.maximum(phi_plus, 0.0))


def pinv_matrix(
    band_spec: str | BandSpec, mel_spec: str | MelSpec, *, phi_plus: np.ndarray | None = None
) -> np.ndarray:
    """The folded PINV matrix ``A = Mᵀ · ReLU(Φ⁺)``, shape (n_mels, n_bands), float64.

    ``Φ⁺`` (n_fft_bins × n_bands, ``n_fft_bins = band_spec.frame_length // 2 + 1``) is
    the pseudo-inverse of the 0/1 band matrix :func:`tables.band_basis`, computed in
    float64 (rcond 1e-15) unless ``phi_plus`` is given (e.g. the float32 Φ⁺ a
    published transcoder was trained with); the ReLU is applied here either way.
    ``M`` is ``mel_spec``'s filterbank evaluated on the third-octave FFT grid
    (``band_spec.sample_rate``, ``band_spec.frame_length``). The PINV projects band
    *power* for every target, also for magnitude targets such as YAMNet (as the
    reference does). Without ``phi_plus`` the result is cached and read-only.
    """
    band = get_band_spec(band_spec)
    mel = get_mel_spec(mel_spec)
    if phi_plus is None:
        return _default_matrix(band, mel)
    p = _as_real_array(phi_plus, "phi_plus")
    shape = (band.frame_length // 2 + 1, band.n_bands)
    if p.shape != shape:
        raise InvalidInputError(f"phi_plus must have shape {shape} (n_fft_bins, n_bands), got {p.shape}")
    check_finite(p, "phi_plus")
    return _fold(band, mel, p.astype(np.float64))


def n_valid_mel_frames(n_valid_frames: int, band_spec: str | BandSpec, mel_spec: str | MelSpec) -> int:
    """Mel frames of a padded last chunk that cover real (not padded) input.

    A chunk of F frames becomes T Mel frames; Mel frame j sits at ``j/T`` of the
    chunk's duration, so with ``n_valid_frames`` real frames the first
    ``ceil(n_valid_frames · T / F)`` Mel frames are real and the rest cover the padding.
    """
    band = get_band_spec(band_spec)
    mel = get_mel_spec(mel_spec)
    f, t = band.frames_per_chunk, mel.frames_for_chunk(band.chunk_duration)
    return min(t, -(-int(n_valid_frames) * t // f))


# -------------------------------------------------------------- building blocks
def context_windows(chunks: np.ndarray, context: int, valid: np.ndarray | None = None) -> np.ndarray:
    """Each 1-s chunk with its neighbours, for transcoders that look beyond the chunk.

    ``chunks``: ``(..., n_chunks, frames_per_chunk, n_bands)``, consecutive along
    ``n_chunks`` (one stream). Returns ``(..., n_chunks, frames_per_chunk (1 + 2 context),
    n_bands)``: chunks ``i - context .. i + context`` joined along time. A neighbour beyond
    the stream, or marked False in ``valid`` (``(n_chunks,)``, e.g. a chunk with a gap),
    is replaced by chunk ``i`` itself: the convention the transcoders were trained with.
    """
    x = np.asarray(chunks)
    if x.ndim < 3:
        raise InvalidInputError(f"chunks must be (..., n_chunks, frames, n_bands), got shape {x.shape}")
    if context < 0:
        raise InvalidInputError(f"context must be >= 0, got {context}")
    n = x.shape[-3]
    ok = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
    if ok.shape != (n,):
        raise InvalidInputError(f"valid must have shape ({n},), got {ok.shape}")
    parts = []
    for off in range(-context, context + 1):
        idx = np.arange(n) + off
        use = (idx >= 0) & (idx < n)
        use[use] &= ok[idx[use]]
        src = np.take(x, np.clip(idx, 0, n - 1), axis=-3)
        parts.append(np.where(use[:, None, None], src, x))
    return np.concatenate(parts, axis=-2)


def split_chunks(
    levels: object, band_spec: str | BandSpec = "cense_fast", partial: str = "error"
) -> tuple[np.ndarray, int]:
    """Validate levels and cut them into whole chunks.

    Parameters
    ----------
    levels:
        dB levels, shape ``(..., frames, n_bands)``, in ``band_spec``'s convention.
    band_spec:
        The :class:`BandSpec` (or preset name) of the levels; a chunk is
        ``band_spec.frames_per_chunk`` frames.
    partial:
        What to do when ``frames`` is not a multiple of the chunk length:
        ``"error"`` raises :class:`InvalidInputError`; ``"drop"`` drops the leftover
        frames; ``"pad"`` completes the last chunk by repeating its last frame.
        ``"drop"`` and ``"pad"`` issue a :class:`PartialChunkWarning` naming the
        dropped or padded frame count. A partial chunk is never stretched.

    Returns
    -------
    (chunks, n_valid)
        ``chunks``: float32, shape ``(..., n_chunks, frames_per_chunk, n_bands)``;
        ``n_valid``: the number of real (not padded) frames in the last chunk
        (``frames_per_chunk`` unless padded; 0 when there are no chunks).
    """
    band = get_band_spec(band_spec)
    if partial not in _PARTIAL:
        raise InvalidInputError(f"partial must be one of {', '.join(map(repr, _PARTIAL))}, got {partial!r}")
    x = as_float32_levels(levels, band.n_bands, "levels", band.name)
    _check_range(x, band)
    f = band.frames_per_chunk
    lead, n = x.shape[:-2], x.shape[-2]
    whole, left = divmod(n, f)
    n_valid = f if whole else 0
    if left:
        if partial == "error":
            raise InvalidInputError(
                f"levels has {n} frames on its time axis (-2): {whole} whole chunk(s) of {f} frames and "
                f"{left} frame(s) left over; pass {option('partial', 'drop')} to drop them or "
                f"{option('partial', 'pad')} to pad the last chunk by repeating its last frame"
            )
        if partial == "drop":
            _warn(f"dropped the last {left} frame(s) of {n}: they do not fill a chunk of {f} frames")
            x = x[..., : whole * f, :]
        else:
            pad = f - left
            _warn(
                f"padded the last chunk with {pad} copies of its last frame: {left} of its {f} frames are "
                f"real (see n_valid_mel_frames for the Mel frames that cover the padding)"
            )
            tail = np.repeat(x[..., -1:, :], pad, axis=-2)
            x = np.concatenate([x, tail], axis=-2)
            whole, n_valid = whole + 1, left
    chunks = np.ascontiguousarray(x.reshape(*lead, whole, f, band.n_bands))
    return chunks, n_valid


def pinv_chunks(
    chunks: object,
    target: str | MelSpec,
    *,
    band_spec: str | BandSpec,
    matrix: np.ndarray | None = None,
    n_threads: int = 0,
) -> np.ndarray:
    """PINV Mel estimate of each chunk.

    Parameters
    ----------
    chunks:
        dB levels in ``band_spec``'s convention, shape ``(..., F, n_bands)`` with
        ``F = band_spec.frames_per_chunk`` (typically ``(..., n_chunks, F, n_bands)``
        from :func:`split_chunks`); all leading axes are batch axes. Computed in
        float32 (float64 input is cast, as the reference does); levels more than
        :data:`MAX_LEVEL_ABOVE_OFFSET` dB above ``band_spec.db_offset`` are rejected.
    target:
        The target :class:`MelSpec` or preset name (``"pann"``, ``"yamnet_torchport"``,
        ``"yamnet"``, ``"efficientat"``, ...).
    band_spec:
        The :class:`BandSpec` of the levels; its ``db_offset`` is subtracted.
    matrix:
        Overrides ``A`` (shape ``(n_mels, n_bands)``, non-negative), e.g. the matrix a
        model file carries; default :func:`pinv_matrix` ``(band_spec, target)``.
    n_threads:
        Worker threads; 0 chooses automatically.

    Returns
    -------
    numpy.ndarray
        float32, shape ``(..., T, n_mels)`` with ``T = target.frames_for_chunk(band_spec.chunk_duration)``
        (``chunk_frames`` for 1-s chunks), time-major,
        in the target's units: ``10 log10(max(mel, log_floor))`` dB for ``log="db"``
        (PANN), ``ln(mel + log_floor)`` for ``log="ln"`` (YAMNet), then
        ``(· + norm_offset) / norm_scale``. The Mel value is computed from band power
        for every target (gotcha 7 of the spec).
    """
    band = get_band_spec(band_spec)
    mel = get_mel_spec(target)
    threads = check_threads(n_threads)
    a = _matrix32(band, mel, matrix)
    x = as_float32_levels(chunks, band.n_bands, "chunks", band.name)
    f = band.frames_per_chunk
    if x.shape[-2] != f:
        raise InvalidInputError(
            f"chunks must have {f} frames on axis -2 (band spec {band.name!r}), got shape {x.shape}"
        )
    _check_range(x, band, "chunks")
    lead = x.shape[:-2]
    t = mel.frames_for_chunk(band.chunk_duration)
    out = _core.pinv_chunks(
        x.reshape(-1, f, band.n_bands),
        a,
        _interp32(f, t),
        band_power_gain(band, mel),
        float(band.db_offset),
        mel.log,
        float(mel.log_floor),
        float(mel.norm_offset),
        float(mel.norm_scale),
        threads,
    )
    return out.reshape(*lead, t, mel.n_mels)


def stitch_chunks(mels: object, mel_spec: str | MelSpec) -> np.ndarray:
    """Join per-chunk Mels ``(..., n_chunks, T, n_mels)`` into ``(..., frames, n_mels)``.

    When ``mel_spec.stitch_drop_last`` (PANN, YAMNet torch port) the last frame of
    every chunk but the final one is dropped, as the reference does: it sits at
    the same time as the next chunk's first frame, so ``n`` chunks give
    ``n·(T − 1) + 1`` frames (1001 for 10 s of PANN). Otherwise the chunks are
    concatenated (``n·T`` frames). Zero chunks give zero frames.
    """
    mel = get_mel_spec(mel_spec)
    if isinstance(mels, (str, bytes)) or mels is None:
        raise InputTypeError(f"mels must be an array, got {type(mels).__name__}")
    m = np.asarray(mels)
    if m.ndim < 3:
        raise InvalidInputError(f"mels must have shape (..., n_chunks, T, n_mels), got shape {m.shape}")
    n, t, k = m.shape[-3:]
    lead = m.shape[:-3]
    if mel.stitch_drop_last and n > 1:
        body = m[..., :-1, :-1, :].reshape(*lead, (n - 1) * (t - 1), k)
        return np.concatenate([body, m[..., -1, :, :]], axis=-2)
    return m.reshape(*lead, n * t, k)


def pinv(
    levels: object,
    target: str | MelSpec = "pann",
    *,
    band_spec: str | BandSpec = "cense_fast",
    layout: str = "stitched",
    partial: str = "error",
    matrix: np.ndarray | None = None,
    n_threads: int = 0,
) -> np.ndarray:
    """Transcode third-octave levels into ``target``'s Mel spectrogram with the PINV.

    Parameters
    ----------
    levels:
        dB levels, shape ``(..., frames, n_bands)``, in ``band_spec``'s convention
        (dB re full scale for the presets; use ``replace(get_band_spec("cense_fast"),
        db_offset=26)`` for the paper's +26 dB convention). Cut into chunks of
        ``band_spec.frames_per_chunk`` frames (1 s), each transcoded on its own.
    target:
        The target :class:`MelSpec` or preset name.
    band_spec:
        The :class:`BandSpec` of ``levels``.
    layout:
        ``"stitched"`` (default): ``(..., frames, n_mels)``, chunks joined by
        :func:`stitch_chunks` (PANN: ``100·n + 1`` frames for ``n`` chunks);
        ``"concat"``: ``(..., n_chunks·T, n_mels)``, plain concatenation (the
        reference demo path, 101 frames per second for PANN);
        ``"chunks"``: ``(..., n_chunks, T, n_mels)``.
    partial:
        ``"error"`` (default), ``"drop"`` or ``"pad"``: see :func:`split_chunks`.
        With ``"pad"`` the output covers the whole padded last chunk; its Mel frames
        from ``n_valid_mel_frames(n_valid, band_spec, target)`` on (relative to the
        chunk start) cover the padding.
    matrix:
        Overrides the folded matrix ``A`` (n_mels, n_bands); see :func:`pinv_matrix`.
    n_threads:
        Worker threads; 0 chooses automatically.

    Returns
    -------
    numpy.ndarray
        float32 Mel spectrogram in the target's units (see :func:`pinv_chunks`).
    """
    if layout not in _LAYOUTS:
        raise InvalidInputError(f"layout must be one of {', '.join(map(repr, _LAYOUTS))}, got {layout!r}")
    band = get_band_spec(band_spec)
    mel = get_mel_spec(target)
    chunks, _ = split_chunks(levels, band, partial)
    mels = pinv_chunks(chunks, mel, band_spec=band, matrix=matrix, n_threads=n_threads)
    if layout == "chunks":
        return mels
    if layout == "concat":
        return mels.reshape(*mels.shape[:-3], mels.shape[-3] * mels.shape[-2], mels.shape[-1])
    return stitch_chunks(mels, mel)


# ------------------------------------------------------------------ helpers
@functools.cache
def _interp32(n_in: int, n_out: int) -> np.ndarray:
    w = interpolation_matrix(n_in, n_out).astype(np.float32)
    w.setflags(write=False)
    return w


@functools.cache
def _default_matrix32(band: BandSpec, mel: MelSpec) -> np.ndarray:
    a = _default_matrix(band, mel).astype(np.float32)
    a.setflags(write=False)
    return a


def _as_real_array(value: object, name: str) -> np.ndarray:
    if isinstance(value, (str, bytes)) or value is None:
        raise InputTypeError(f"{name} must be an array, got {type(value).__name__}")
    a = np.asarray(value)
    if a.dtype.kind not in "fiu":
        raise InputTypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
    return a


def _matrix32(band: BandSpec, mel: MelSpec, matrix: object) -> np.ndarray:
    if matrix is None:
        return _default_matrix32(band, mel)
    a = _as_real_array(matrix, "matrix")
    if a.shape != (mel.n_mels, band.n_bands):
        raise InvalidInputError(
            f"matrix must have shape (n_mels, n_bands) = {(mel.n_mels, band.n_bands)} for "
            f"{mel.name!r} x {band.name!r}, got {a.shape}"
        )
    check_finite(a, "matrix")
    if (a < 0).any():
        idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(a < 0)), a.shape))
        raise InvalidInputError(
            f"matrix contains {float(a[idx])} at index {idx}; the PINV matrix Mᵀ·ReLU(Φ⁺) is non-negative"
        )
    return np.ascontiguousarray(a, dtype=np.float32)


def _check_range(x: np.ndarray, band: BandSpec, name: str = "levels") -> None:
    limit = band.db_offset + MAX_LEVEL_ABOVE_OFFSET
    if x.size and float(x.max()) > limit:
        idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(x)), x.shape))
        raise InvalidInputError(
            f"{name} contains {float(x[idx])} dB at index {idx}, more than {MAX_LEVEL_ABOVE_OFFSET:g} dB above "
            f"the band spec's db_offset ({band.db_offset:g} dB); check the level convention"
        )


def _warn(message: str) -> None:
    # Point the warning at the first caller outside this package.
    frame: FrameType | None = sys._getframe(1)
    level = 2
    package_dir = os.path.dirname(os.path.abspath(__file__))
    while frame is not None and frame.f_code.co_filename.startswith(package_dir):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, PartialChunkWarning, stacklevel=level)
