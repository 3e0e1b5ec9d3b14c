"""One audio file -> its 1-s chunks: third-octave levels and the teacher's ground-truth Mel.

:func:`file_chunks` is the one definition of how training audio is cut, used by the dataset
builder (:mod:`training.dataset`), the evaluation on held-out files (:mod:`training.evaluate`)
and the shipped-model checks. The file is peak-normalised as a whole (the paper's
``librosa.util.normalize``; here at the file's own rate, so that both resampled views get the
same gain; a silent file is left as is), resampled to each spec's rate with the package's soxr
resampler and cut into 1-s chunks (``band_spec.chunk_duration``) on a regular grid, plus
optional seeded random-offset crops and a seeded random gain.
"""

from __future__ import annotations

import math
import os

import numpy as np

from spectral_transcoder import frontends
from spectral_transcoder._validation import resample
from spectral_transcoder.analysis import third_octave
from spectral_transcoder.audio import load_audio
from spectral_transcoder.errors import InvalidInputError
from spectral_transcoder.specs import BandSpec, MelSpec

__all__ = ["read_audio", "chunk_lengths", "first_patch", "file_chunks"]


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Mono float32 samples (channel mean) and the sample rate of an audio file."""
    return load_audio(path)


def chunk_lengths(band: BandSpec, mel: MelSpec) -> tuple[int, int, int]:
    """Samples per chunk at the band and Mel rates, and the common grid rate (gcd)."""
    dur = band.chunk_duration
    lb = band.frames_per_chunk * band.hop_length
    lm = dur * mel.sample_rate
    if abs(lm - round(lm)) > 1e-9:
        raise InvalidInputError(f"a {dur} s chunk is not a whole number of samples at {mel.sample_rate} Hz")
    return lb, int(round(lm)), math.gcd(band.sample_rate, mel.sample_rate)


def first_patch(mel: np.ndarray, spec: MelSpec) -> np.ndarray:
    """The Mel the classifier sees for one chunk: the first patch (YAMNet) or all frames."""
    if spec.patch_frames is not None:
        return frontends.patches(mel, spec)[..., 0, :, :]
    if mel.shape[-2] != spec.chunk_frames:
        raise InvalidInputError(f"a chunk gave {mel.shape[-2]} {spec.name!r} frames, expected {spec.chunk_frames}")
    return mel


def file_chunks(
    audio: np.ndarray,
    sample_rate: int,
    band_spec: BandSpec,
    mel_spec: MelSpec,
    *,
    crops_per_chunk: int = 0,
    gain_db: tuple[float, float] | None = None,
    rng: np.random.Generator | None = None,
    peak_normalise: bool = True,
    n_threads: int = 0,
) -> dict[str, np.ndarray]:
    """Levels and target Mels of one file's 1-s chunks (no teacher).

    The file is peak-normalised as a whole (skipped when silent), resampled to both
    specs' rates, then cut into ``floor(duration)`` regular chunks at offsets 0, 1, 2 s
    and ``crops_per_chunk`` times as many crops at random offsets (drawn on the common
    grid of both rates, so both views cover the same samples). With ``gain_db`` every
    chunk is scaled by a random gain in that range. Returns ``levels`` (n, F, n_bands),
    ``mel`` (n, T, n_mels), ``offset`` (n,) s, ``crop`` (n,) bool and ``gain_db`` (n,),
    regular chunks first; n = 0 for a file shorter than one chunk.
    """
    x = np.asarray(audio, dtype=np.float32)
    if peak_normalise:
        peak = float(np.max(np.abs(x))) if x.size else 0.0
        if peak > 0.0:
            x = x / peak
    lb, lm, g = chunk_lengths(band_spec, mel_spec)
    xb = resample(x, float(sample_rate), band_spec.sample_rate)
    xm = resample(x, float(sample_rate), mel_spec.sample_rate)
    # Lengths on the common grid (g Hz): chunk offsets k are exact at both rates.
    len_g = min(xb.shape[-1] * g // band_spec.sample_rate, xm.shape[-1] * g // mel_spec.sample_rate)
    chunk_g = lb * g // band_spec.sample_rate
    n_regular = len_g // chunk_g
    offsets = [i * chunk_g for i in range(n_regular)]
    crop = [False] * n_regular
    if crops_per_chunk and n_regular:
        if rng is None:
            raise InvalidInputError("random crops need an rng")
        k = rng.integers(0, len_g - chunk_g + 1, size=crops_per_chunk * n_regular)
        offsets += [int(v) for v in k]
        crop += [True] * len(k)
    n = len(offsets)
    gains = np.zeros(n, np.float32)
    if gain_db is not None and n:
        if rng is None:
            raise InvalidInputError("random gains need an rng")
        gains = rng.uniform(gain_db[0], gain_db[1], size=n).astype(np.float32)
    if n == 0:
        return {
            "levels": np.zeros((0, band_spec.frames_per_chunk, band_spec.n_bands), np.float32),
            "mel": np.zeros((0, mel_spec.chunk_frames, mel_spec.n_mels), np.float32),
            "offset": np.zeros(0),
            "crop": np.zeros(0, bool),
            "gain_db": gains,
        }
    rb, rm = band_spec.sample_rate // g, mel_spec.sample_rate // g
    cb = np.stack([xb[o * rb : o * rb + lb] for o in offsets])
    cm = np.stack([xm[o * rm : o * rm + lm] for o in offsets])
    if gain_db is not None:
        lin = (10.0 ** (gains.astype(np.float64) / 20.0)).astype(np.float32)[:, None]
        cb, cm = cb * lin, cm * lin
    levels = third_octave(cb, band_spec.sample_rate, band_spec, n_threads=n_threads)
    mel = first_patch(frontends.mel(cm, mel_spec.sample_rate, mel_spec, n_threads=n_threads), mel_spec)
    return {
        "levels": np.ascontiguousarray(levels, np.float32),
        "mel": np.ascontiguousarray(mel, np.float32),
        "offset": np.asarray(offsets, np.float64) / g,
        "crop": np.asarray(crop, bool),
        "gain_db": gains,
    }
