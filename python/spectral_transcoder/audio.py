"""Reading audio files: :func:`load_audio`, the one reader the package's tools share.

Every file format libsndfile reads (WAV, FLAC, OGG, AIFF, ...) through ``soundfile``;
samples come back as float32 full scale (integer PCM scaled to [-1, 1)), mono.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._validation import check_sample_rate, resample
from .errors import InputTypeError, InvalidInputError

__all__ = ["load_audio"]


def load_audio(
    path: str | os.PathLike[str],
    *,
    sample_rate: int | None = None,
    channel: int | None = None,
    offset: float = 0.0,
    duration: float | None = None,
) -> tuple[np.ndarray, int]:
    """Read an audio file as mono float32 samples: ``(samples, sample_rate)``.

    Parameters
    ----------
    path:
        Any file ``soundfile`` reads (wav, flac, ogg, aiff, ...).
    sample_rate:
        Resample to this rate in Hz (python-soxr, "HQ": the filter :func:`third_octave`
        and :func:`mel` use); None keeps the file's own rate.
    channel:
        Keep this channel (0-based); None mixes to mono by the mean of the channels
        (as ``librosa.load`` does).
    offset, duration:
        Read only ``duration`` seconds (None: to the end) from ``offset`` seconds, in the
        file's time; a window past the end gives fewer samples, or none.

    Returns
    -------
    (samples, rate):
        C-contiguous float32 ``(samples,)`` and its sample rate in Hz (``sample_rate``
        when given, else the file's).

    Raises
    ------
    InvalidInputError
        The file does not exist or cannot be decoded, ``channel`` is not one of its
        channels, or an argument is out of range; the message names the file.
    """
    import soundfile as sf

    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"audio file {str(p)!r} does not exist")
    if sample_rate is not None:
        sample_rate = int(check_sample_rate(sample_rate))
    if channel is not None and (isinstance(channel, bool) or not isinstance(channel, int)):
        raise InputTypeError(f"channel must be None (mix to mono) or an integer, got {type(channel).__name__}")
    if not (np.isfinite(offset) and offset >= 0) or (
        duration is not None and not (np.isfinite(duration) and duration >= 0)
    ):
        raise InvalidInputError(f"{str(p)!r}: offset and duration must be >= 0 seconds, got {offset!r}, {duration!r}")
    try:
        with sf.SoundFile(str(p)) as f:
            sr, channels, frames = int(f.samplerate), int(f.channels), int(f.frames)
            if channel is not None and not 0 <= channel < channels:
                raise InvalidInputError(
                    f"{str(p)!r} has {channels} channel(s): channel must be None (mix to mono) "
                    f"or 0..{channels - 1}, got {channel}"
                )
            start = min(int(round(offset * sr)), frames)
            if start:
                f.seek(start)
            n = -1 if duration is None else min(frames - start, int(round(duration * sr)))  # -1: to the end
            data = f.read(n, dtype="float32", always_2d=True)
    except InvalidInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - soundfile raises LibsndfileError / RuntimeError / TypeError
        raise InvalidInputError(f"cannot read audio file {str(p)!r}: {exc}") from None
    x = data[:, channel] if channel is not None else data.mean(axis=1, dtype=np.float32)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if sample_rate is not None and sample_rate != sr:
        x, sr = resample(x, float(sr), sample_rate), sample_rate
    return x, sr
