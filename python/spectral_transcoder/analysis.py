"""Third-octave analysis of audio (docs/conventions.md §1), computed by the C++ core.

:func:`third_octave` turns audio into the levels a sensor would have stored:
time-major ``(..., frames, n_bands)`` float32 dB, one frame per ``spec.hop_length``
samples at ``spec.sample_rate``.
"""

from __future__ import annotations

import functools
import math
import numbers

import numpy as np

from . import _core, tables
from ._validation import (
    as_float32_signal,
    check_band_sample_rate,
    check_min_duration,
    check_sample_rate,
    check_samples_last,
    check_threads,
    resample,
)
from .errors import InputTypeError, InvalidInputError
from .specs import BandSpec, get_band_spec

__all__ = ["third_octave"]


def third_octave(
    audio: object,
    sample_rate: float,
    spec: str | BandSpec = "cense_fast",
    *,
    db_offset: float | None = None,
    n_threads: int = 0,
) -> np.ndarray:
    """Third-octave band levels of ``audio``, in dB, time-major.

    Parameters
    ----------
    audio:
        Samples, shape ``(..., samples)``; leading axes are batch axes (e.g.
        channels or 1-s chunks). Floating-point audio is full scale (1.0 = 0 dBFS);
        integer PCM is scaled to full scale (int16 by 1/32768, ...). At least one
        analysis frame long (``spec.frame_length`` samples at ``spec.sample_rate``:
        128 ms for the presets' 4096 samples at 32 kHz); NaN and Inf are rejected.
        Time-major audio ``(samples, channels)``, as ``soundfile.read`` returns it,
        is refused (a last axis of at most 8 under a longer one): pass
        ``audio.mean(axis=1)`` (mono) or ``audio.T`` (each channel).
    sample_rate:
        Rate of ``audio`` in Hz. Audio at another rate than ``spec.sample_rate``
        (32 kHz for the presets) is resampled first (soxr, HQ). Rates below 8 kHz are
        refused (a slip such as ``32`` for ``32000``); below twice the upper edge of
        the top band (28 251 Hz for the presets) an :class:`~.errors.InputWarning`
        says which top bands the audio cannot fill.
    spec:
        A :class:`~spectral_transcoder.specs.BandSpec` or a preset name:
        ``"cense_fast"`` (4096-sample Tukey frames every 4000 samples, 125 ms) or
        ``"cense_slow"`` (32758-sample frames every 32000 samples, 1 s).
    db_offset:
        dB added to ``20 log10(rms)``; ``None`` takes ``spec.db_offset`` (0 for the
        presets). With 0 the levels are **dB re full scale**: 0 dB is the level of a
        band whose RMS amplitude is 1 in full-scale units, so a full-scale sine
        (amplitude 1) reads -3.01 dB in its band. The paper's Cense convention is
        ``db_offset=26`` (``specs.CENSE_DB_OFFSET``), i.e. dBFS + 26: the same sine
        reads 22.99 dB.
    n_threads:
        Worker threads; 0 chooses from the work size and the CPU count.

    Returns
    -------
    numpy.ndarray
        float32, shape ``(..., frames, n_bands)``. Frame ``n`` covers samples
        ``[hop*n, hop*n + frame_length)`` of the (resampled) signal, which is
        zero-padded at its end up to a whole frame, so
        ``frames = spec.n_frames(samples)`` (1 s at 32 kHz gives 8 frames for
        ``cense_fast``; exactly one frame gives 1 frame). Band ``i`` has
        the centre frequency ``spec.center_frequencies[i]``. A band with zero power
        reads ``20 log10(spec.level_floor) + db_offset`` (-180 dB re FS).
    """
    spec = get_band_spec(spec)
    sr = check_sample_rate(sample_rate)
    check_band_sample_rate(sr, spec)  # before any work: a slip such as 32 for 32000 costs GBs
    x = as_float32_signal(audio, "audio")
    n_threads = check_threads(n_threads)
    if db_offset is None:
        offset = float(spec.db_offset)
    else:
        if isinstance(db_offset, bool) or not isinstance(db_offset, numbers.Real):
            raise InputTypeError(f"db_offset must be a number of dB or None, got {type(db_offset).__name__}")
        offset = float(db_offset)
        if not math.isfinite(offset):
            raise InvalidInputError(f"db_offset must be finite, got {db_offset!r}")
    # The shape checks come last: a bad option is named before a bad signal.
    check_samples_last(x, "audio")
    check_min_duration(x.shape[-1], sr, spec.frame_length, spec.sample_rate, "audio", f"the band spec {spec.name!r}")

    x = resample(x, sr, spec.sample_rate)
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])
    n = spec.frame_length
    lo, hi = tables.band_bin_ranges(spec)
    # rms = sqrt(S/2)/(N/2)·ec with S the band power (docs/conventions.md §1).
    scale = tables.band_energy_correction(spec) / (n / 2) / math.sqrt(2.0)
    levels = _core.third_octave_levels(
        flat,
        _window32(spec),
        lo,
        hi,
        spec.hop_length,
        scale,
        offset,
        spec.level_floor,
        n_threads,
    )
    return levels.reshape(*lead, levels.shape[1], levels.shape[2])


@functools.cache
def _window32(spec: BandSpec) -> np.ndarray:
    w = np.ascontiguousarray(tables.band_window(spec), dtype=np.float32)
    w.setflags(write=False)
    return w
