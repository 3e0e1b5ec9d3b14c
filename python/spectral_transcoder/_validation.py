"""Input checks shared by the public functions: Python validates, C++ computes.

Every check raises a subclass of :class:`~spectral_transcoder.errors.SpectralTranscoderError`
whose message names the argument, the position and the problem.
"""

from __future__ import annotations

import math
import numbers
import os
import sys
import warnings
from types import FrameType
from typing import TYPE_CHECKING

import numpy as np

from .errors import (
    InputTypeError,
    InputWarning,
    InvalidInputError,
    LevelWarning,
    MissingDependencyError,
    option,
    speaking_cli,
)

if TYPE_CHECKING:
    from .specs import BandSpec

#: Integer PCM is scaled to [-1, 1) full scale by these divisors (uint8 is offset by 128 first).
INT_FULL_SCALE = {
    np.dtype(np.int8): 2.0**7,
    np.dtype(np.int16): 2.0**15,
    np.dtype(np.int32): 2.0**31,
    np.dtype(np.int64): 2.0**63,
    np.dtype(np.uint8): 2.0**7,
}


def require_module(module: str, extra: str, purpose: str) -> None:
    """Raise :class:`MissingDependencyError` naming the pip extra when ``module`` (an optional
    dependency) cannot be imported: checked before any work, so a missing package never
    surfaces as a traceback half-way through a run (with files already written)."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{purpose} needs the optional package {module!r}, which is not installed ({exc}): "
            f'pip install "spectral-transcoder[{extra}]"'
        ) from None


def check_sample_rate(sample_rate: object, name: str = "sample_rate") -> float:
    """Return ``sample_rate`` as a positive finite float, or raise."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Real):
        raise InputTypeError(f"{name} must be a number in Hz, got {type(sample_rate).__name__}")
    sr = float(sample_rate)
    if not np.isfinite(sr) or sr <= 0:
        raise InvalidInputError(f"{name} must be a positive number of Hz, got {sample_rate!r}")
    return sr


#: Audio at a lower rate is taken for a slip (``32`` for ``32000``, ``1``): refused. 8 kHz is the
#: lowest sample rate of audio in common use (telephony).
MIN_AUDIO_RATE = 8000.0


def check_audio_rate(sample_rate: float, name: str = "sample_rate", what: str = "audio") -> None:
    """Refuse a sample rate below :data:`MIN_AUDIO_RATE`.

    Such a rate is a slip, not audio: resampled to the analysis rate, ``32`` for ``32000``
    makes a thousand-fold longer signal (GBs of memory, ``std::bad_alloc`` at 1 Hz).
    """
    if sample_rate < MIN_AUDIO_RATE:
        raise InvalidInputError(
            f"{name} {sample_rate:g} Hz is below the floor of {MIN_AUDIO_RATE:.0f} Hz (the lowest rate of {what} "
            f"in common use): is it a slip, such as 32 for 32000, or a rate in kHz?"
        )


def check_band_sample_rate(sample_rate: float, spec: BandSpec, name: str = "sample_rate") -> None:
    """Refuse a slip of the sample rate (:func:`check_audio_rate`), and warn
    (:class:`~spectral_transcoder.errors.InputWarning`) when the audio's Nyquist frequency
    is below the upper edge of the band spec's top band.

    Full-band levels need ``2 * spec.upper_edges[-1]`` Hz (28 251 Hz for the presets: the
    12.5-kHz band reaches 14 125 Hz). Resampling cannot create what the audio never held:
    the bands above its Nyquist frequency read the resampler's noise floor. That is a
    property of the recording (UrbanSound8K holds 22 050-Hz files), not an error.
    """
    check_audio_rate(sample_rate, name)
    upper = spec.upper_edges
    floor = 2.0 * float(upper[-1])
    if sample_rate < floor:
        nyquist = sample_rate / 2.0
        cut = spec.center_frequencies[upper > nyquist]
        warnings.warn(
            f"{name} {sample_rate:g} Hz: the audio holds nothing above {nyquist:g} Hz, but the band spec "
            f"{spec.name!r} reaches {upper[-1]:.0f} Hz (full-band levels need {math.ceil(floor)} Hz or more): "
            f"its {len(cut)} top band(s), from {cut[0]:.0f} Hz up, read low or empty, unlike those of the "
            "full-band audio the transcoders were trained on",
            InputWarning,
            stacklevel=_outside_stacklevel(),
        )


def _outside_stacklevel() -> int:
    """``stacklevel`` that points a warning at the first caller outside this package."""
    # frame 2 is the function that called the one issuing the warning: stacklevel 2
    frame: FrameType | None = sys._getframe(2)
    level = 2
    package_dir = os.path.dirname(os.path.abspath(__file__))
    while frame is not None and frame.f_code.co_filename.startswith(package_dir):
        frame, level = frame.f_back, level + 1
    return level


def _first_bad(a: np.ndarray) -> tuple[tuple[int, ...], float]:
    bad = ~np.isfinite(a)
    idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), a.shape))
    return idx, float(a[idx])


def check_finite(a: np.ndarray, name: str) -> None:
    """Raise if ``a`` holds NaN or +-Inf, naming the first offending index."""
    if a.size and not np.isfinite(a).all():
        idx, val = _first_bad(a)
        raise InvalidInputError(f"{name} contains {val} at index {idx}; only finite values are accepted")


def as_float32_signal(audio: object, name: str = "audio", min_ndim: int = 1) -> np.ndarray:
    """Convert audio to a C-contiguous float32 array of shape (..., samples).

    Floating input is taken as full scale (1.0 = 0 dBFS). Integer PCM is scaled by
    :data:`INT_FULL_SCALE` (int16 / 32768, ...). Bool, complex and object arrays are
    rejected, as are NaN and Inf.
    """
    if isinstance(audio, (str, bytes)) or audio is None:
        raise InputTypeError(f"{name} must be an array of samples, got {type(audio).__name__}")
    a = np.asarray(audio)
    if a.dtype.kind in "iu":
        if a.dtype not in INT_FULL_SCALE:
            raise InputTypeError(f"{name}: unsupported integer dtype {a.dtype}")
        unsigned = a.dtype.kind == "u"
        scale = INT_FULL_SCALE[a.dtype]
        a = a.astype(np.float64)
        if unsigned:  # 8-bit WAV convention: unsigned with a 128 offset
            a = a - 128.0
        a = a / scale
    elif a.dtype.kind != "f":
        raise InputTypeError(f"{name} must hold real floating-point or integer PCM samples, got dtype {a.dtype}")
    if a.ndim < min_ndim:
        raise InvalidInputError(
            f"{name} must have at least {min_ndim} dimension(s) (..., samples), got shape {a.shape}"
        )
    check_finite(a, name)
    return np.ascontiguousarray(a, dtype=np.float32)


#: python-soxr's channel limit; larger batches are resampled in blocks of this many rows.
SOXR_MAX_CHANNELS = 65536


def resample(audio: np.ndarray, sample_rate: float, target_rate: int, quality: str = "HQ") -> np.ndarray:
    """Resample float32 (..., samples) along the last axis with python-soxr."""
    if sample_rate == target_rate:
        return audio
    import soxr

    lead = audio.shape[:-1]
    flat = audio.reshape(-1, audio.shape[-1])
    if flat.shape[0] == 0:  # soxr needs a channel: take the output length from a silent one
        n_out = resample(np.zeros((1, audio.shape[-1]), np.float32), sample_rate, target_rate, quality).shape[-1]
        return np.zeros((*lead, n_out), np.float32)
    # soxr takes (frames, channels): treat the flattened batch as channels, in blocks.
    blocks = []
    for b in range(0, flat.shape[0], SOXR_MAX_CHANNELS):
        part = flat[b : b + SOXR_MAX_CHANNELS]
        out = soxr.resample(np.ascontiguousarray(part.T), sample_rate, target_rate, quality=quality)
        blocks.append(np.asarray(out, dtype=np.float32).reshape(-1, part.shape[0]).T)
    out = np.ascontiguousarray(np.concatenate(blocks) if len(blocks) > 1 else blocks[0])
    return out.reshape(*lead, out.shape[-1])


#: Time-major audio: a last axis of at most this many entries under a longer axis is taken for
#: the channels of ``(samples, channels)`` audio (what ``soundfile.read`` returns), not for samples.
MAX_CHANNELS = 8


def check_samples_last(audio: np.ndarray, name: str = "audio") -> None:
    """Refuse time-major audio ``(samples, channels)``: the functions take ``(..., samples)``.

    Without this check a stereo file read by ``soundfile.read`` (shape ``(n, 2)``) is a batch
    of ``n`` signals of 2 samples each: ``n`` frames of silence, and minutes of work downstream.
    """
    if audio.ndim >= 2 and audio.shape[-1] <= MAX_CHANNELS and audio.shape[-2] > MAX_CHANNELS:
        n, c = audio.shape[-2], audio.shape[-1]
        raise InvalidInputError(
            f"{name} has shape {audio.shape}: that looks like time-major audio ({n} samples x {c} channels, "
            f"as soundfile.read returns), not {n} signals of {c} samples each. The last axis must hold the "
            f"samples: mix the channels down with {name}.mean(axis=1), or pass {name}.T to analyse each "
            "channel"
        )


def check_min_duration(n: int, sample_rate: float, frame_length: int, frame_rate: int, name: str, what: str) -> None:
    """Refuse a signal shorter than one analysis frame (``frame_length`` samples at ``frame_rate`` Hz).

    ``n`` samples at ``sample_rate`` Hz; compared by duration, before any resampling, so that
    the message speaks of the samples the caller gave.
    """
    if n * frame_rate < frame_length * sample_rate:  # n / sample_rate < frame_length / frame_rate, exactly
        need = -(-frame_length * sample_rate // frame_rate)
        at_rate = "" if sample_rate == frame_rate else f", i.e. {int(need)} samples at {sample_rate:g} Hz"
        raise InvalidInputError(
            f"{name} holds {n} samples at {sample_rate:g} Hz ({n / sample_rate:.4g} s), shorter than one analysis "
            f"frame of {what}: {frame_length} samples at {frame_rate} Hz ({frame_length / frame_rate:.4g} s)"
            f"{at_rate}. Pad it (numpy.pad) if levels of so short a sound are what you want"
        )


def check_min_length(n: int, minimum: int, name: str, what: str) -> None:
    if n < minimum:
        raise InvalidInputError(f"{name} is too short for {what}: {n} samples, the minimum is {minimum} samples")


def as_float32_frames(
    values: object, n_last: int, name: str, *, axis: str, spec_kind: str, spec_name: str = ""
) -> np.ndarray:
    """Validate a time-major array (..., frames, n_last) of finite reals -> float32 C array.

    ``axis`` names the last axis ("bands", "Mel bins") and ``spec_kind`` the spec that fixes
    its size ("band spec", "Mel spec"), for the error messages.
    """
    if isinstance(values, (str, os.PathLike)):  # a file name: the functions take arrays
        raise InputTypeError(
            f"{name} must be an array (..., frames, {axis}), got the {type(values).__name__} {str(values)!r}: "
            f"load the file first, e.g. np.load({str(values)!r}) for an .npy, or read an archive with "
            "spectral_transcoder.archives.open_archive"
        )
    if isinstance(values, bytes) or values is None:
        raise InputTypeError(f"{name} must be an array (..., frames, {axis}), got {type(values).__name__}")
    a = np.asarray(values)
    if a.dtype.kind not in "fiu":
        raise InputTypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
    if a.ndim < 2:
        raise InvalidInputError(f"{name} must have shape (..., frames, {axis}), got shape {a.shape}")
    if a.shape[-1] != n_last:
        raise InvalidInputError(
            f"{name} has {a.shape[-1]} {axis} on its last axis (shape {a.shape}), but the {spec_kind} "
            f"{spec_name!r} has {n_last}: expected (..., frames, {n_last})"
        )
    check_finite(a, name)
    return np.ascontiguousarray(a, dtype=np.float32)


def as_float32_levels(levels: object, n_bands: int, name: str = "levels", spec_name: str = "") -> np.ndarray:
    """Validate third-octave levels in dB, shape (..., frames, n_bands) -> float32 C array."""
    return as_float32_frames(levels, n_bands, name, axis="bands", spec_kind="band spec", spec_name=spec_name)


def as_float32_mel(mel: object, n_mels: int, name: str = "mel", spec_name: str = "") -> np.ndarray:
    """Validate a Mel spectrogram, shape (..., frames, n_mels) -> float32 C array."""
    return as_float32_frames(mel, n_mels, name, axis="Mel bins", spec_kind="Mel spec", spec_name=spec_name)


#: Levels are refused when any band is more than this many dB above full scale...
LEVEL_ERROR_ABOVE_FS_DB = 6.0
#: ...or when their median is above full scale; any band above full scale warns.
#: A band of audio within full scale reads at most about 0 dB re full scale (its RMS is at
#: most the signal's, at most 1; a full-scale sine reads -3.01 dB in its band), so +6 dB
#: (twice full-scale amplitude) means a level convention slip, typically dB SPL read as dBFS.
LEVEL_MEDIAN_ERROR_ABOVE_FS_DB = 0.0
LEVEL_WARN_ABOVE_FS_DB = 0.0


def check_level_range(
    levels: np.ndarray, band_spec: BandSpec, *, name: str = "levels", where: str = "", reference: str = "dBFS"
) -> None:
    """Refuse (or warn about) levels far above what full-scale audio can give.

    ``levels``: ``(..., frames, n_bands)`` dB in ``band_spec``'s convention (dB re full
    scale + ``band_spec.db_offset``), after any level reference is applied; NaN and Inf
    (gap frames) are ignored. Raises :class:`InvalidInputError` when a band is more than
    :data:`LEVEL_ERROR_ABOVE_FS_DB` dB above full scale or the median level is above
    full scale; issues a :class:`~spectral_transcoder.errors.LevelWarning` for a band
    just above full scale. The message names the highest level's position (frame, band,
    leading index) and how to say what the levels are: ``reference="SPL", spl_offset=``
    or ``reference="auto"`` (``--reference SPL --spl-offset DB`` / ``--reference auto``
    on the command line). ``where`` prefixes the message (e.g. ``"day.parquet: "``).

    The archive path (``archives.process``) can call it on each block's levels. With
    ``reference="auto"`` the levels were scaled to the training convention by construction
    (a band a little above 0 dB is expected there), so nothing is checked.
    """
    if reference == "auto":
        return
    x = np.asarray(levels)
    if x.ndim < 2 or x.size == 0:
        return
    finite = np.isfinite(x)
    if not finite.any():
        return
    fs = float(band_spec.db_offset)
    idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(np.where(finite, x, -np.inf))), x.shape))
    peak = float(x[idx]) - fs
    median = float(np.median(x[finite])) - fs
    if peak <= LEVEL_WARN_ABOVE_FS_DB and median <= LEVEL_MEDIAN_ERROR_ABOVE_FS_DB:
        return
    lead = f", index {idx[:-2]}" if len(idx) > 2 else ""
    at = f"frame {idx[-2]}, band {band_spec.center_frequencies[idx[-1]]:.0f} Hz{lead}"
    sep = " " if speaking_cli() else ", "
    advice = (
        f"If they are calibrated dB SPL, pass {option('reference', 'SPL')}{sep}"
        f"{option('spl_offset', placeholder='DB')} (the dB SPL of 0 dBFS: your calibration, e.g. 94 or 120), "
        f"or {option('reference', 'auto')} to scale them like the peak-normalised training audio"
    )
    if peak > LEVEL_ERROR_ABOVE_FS_DB or median > LEVEL_MEDIAN_ERROR_ABOVE_FS_DB:
        raise InvalidInputError(
            f"{where}{name} are far above full scale: the median band level is {median:+.3g} dB re full scale and "
            f"the highest {peak:+.3g} dB ({at}), where audio gives at most about 0 dB (a full-scale sine reads "
            f"-3 dB in its band). These look like calibrated dB SPL read as dB re full scale, or a slip of the "
            f'level convention; classified as they are, everything sounds loud ("Music"). {advice}'
        )
    warnings.warn(
        f"{where}{name} reach {peak:+.3g} dB re full scale ({at}), above what audio within full scale gives "
        f"(a full-scale sine reads -3 dB in its band): check the level convention. {advice}",
        LevelWarning,
        stacklevel=_outside_stacklevel(),
    )


def check_threads(n_threads: object) -> int:
    """0 = automatic; otherwise a positive thread count."""
    if isinstance(n_threads, bool) or not isinstance(n_threads, numbers.Integral) or n_threads < 0:
        raise InvalidInputError(f"n_threads must be an integer >= 0 (0 = automatic), got {n_threads!r}")
    return int(n_threads)
