"""Classifier Mel front ends: audio -> the exact log-Mel spectrogram a classifier expects.

One generic C++ kernel (``_core.mel_spectrogram``) runs every :class:`~spectral_transcoder.specs.MelSpec`
preset; this module validates the input, resamples it to the spec's rate and hands
the kernel the spec's tables (:func:`tables.stft_window`, :func:`tables.mel_filterbank`).

Presets (``docs/conventions.md`` §2):

====================  ==========================================================================================
``pann``              32 kHz; centred reflect STFT 1024/320, periodic Hann 1024; power; Slaney mel 64 x 50-14000 Hz
                      (Slaney area norm); ``10 log10(max(mel, 1e-10))``. dB re a mel power of 1 (unnormalised
                      FFT of full-scale audio), floor -100 dB. 1 s -> 101 frames.
``yamnet_torchport``  16 kHz; centred reflect STFT 512/160, periodic Hann 400 centred in 512; magnitude;
                      torchaudio HTK mel 64 x 125-7500 Hz (no norm); ``ln(mel + 0.001)``. Natural log of a mel
                      *magnitude*; 0 means mel = 0.999, silence gives ln(0.001) = -6.908. 1 s -> 101 frames,
                      of which the classifier uses a 96-frame patch (frames 0-95; see :func:`patches`).
``yamnet``            official TF front end, 16 kHz: zero-padded at the end to 15600 + 7680 k samples, frames
                      [160 t, 160 t + 400) (not centred), periodic Hann 400, FFT 512; magnitude; TF HTK mel
                      64 x 125-7500 Hz; ``ln(mel + 0.001)`` (same units as above). 1 s -> 144 frames, 10 s -> 1008.
``efficientat``       32 kHz; pre-emphasis ``y[n] = x[n+1] - 0.97 x[n]``; centred reflect STFT 1024/320, symmetric
                      Hann 800 centred in 1024; power; Kaldi mel 128 x 0-15000 Hz; ``(ln(mel + 1e-5) + 4.5) / 5``.
                      Normalised natural-log units: 0 means ln(mel) = -4.5, silence gives -1.4026. 1 s -> 100 frames.
====================  ==========================================================================================
"""

from __future__ import annotations

import functools

import numpy as np

from . import _core, tables
from ._validation import (
    as_float32_mel,
    as_float32_signal,
    check_audio_rate,
    check_min_length,
    check_sample_rate,
    check_samples_last,
    check_threads,
    resample,
)
from .errors import InvalidInputError
from .specs import MelSpec, get_mel_spec

__all__ = ["mel", "patches"]


@functools.lru_cache(maxsize=64)
def _kernel_tables(spec: MelSpec) -> tuple[np.ndarray, np.ndarray]:
    """float32 C-contiguous window (n_fft,) and filterbank (n_bins, n_mels) of ``spec``."""
    window = np.ascontiguousarray(tables.stft_window(spec), dtype=np.float32)
    fb = np.ascontiguousarray(tables.mel_filterbank(spec), dtype=np.float32)
    window.setflags(write=False)
    fb.setflags(write=False)
    return window, fb


def mel(
    audio: np.ndarray,
    sample_rate: float,
    spec: str | MelSpec = "pann",
    *,
    n_threads: int = 0,
) -> np.ndarray:
    """Log-Mel spectrogram of ``audio`` exactly as the classifier of ``spec`` computes it.

    Args:
        audio: waveform(s), shape ``(..., samples)``; leading axes are batch axes. Float
            samples are full scale (1.0 = 0 dBFS); integer PCM is scaled to full scale
            (int16 / 32768, ...). NaN and Inf are rejected, and so is time-major audio
            ``(samples, channels)`` as ``soundfile.read`` returns it (pass ``audio.mean(axis=1)``).
        sample_rate: rate of ``audio`` in Hz. Audio at another rate than the spec's is
            resampled first (python-soxr, HQ).
        spec: a :class:`MelSpec` or a preset name: ``"pann"``, ``"yamnet_torchport"``,
            ``"yamnet"``, ``"efficientat"``.
        n_threads: worker threads (0 = automatic).

    Returns:
        float32 array ``(..., frames, n_mels)``, time-major, with ``frames =
        spec.n_frames(n)`` for ``n`` samples at ``spec.sample_rate``. Frame ``t`` is
        centred on sample ``hop * t`` (centred specs) or starts there (``yamnet``). Units
        per preset (see the module docstring):

        - ``pann``: dB, ``10 log10(max(mel power, 1e-10))``; 0 dB = a mel power of 1.
        - ``yamnet_torchport`` / ``yamnet``: ``ln(mel magnitude + 0.001)``; 0 = a mel magnitude of 0.999.
        - ``efficientat``: ``(ln(mel power + 1e-5) + 4.5) / 5``; 0 = a mel power of exp(-4.5) - 1e-5.

        ``yamnet_torchport`` returns all frames (101 for 1 s); its classifier reads
        96-frame patches, which :func:`patches` cuts.

    Raises:
        InvalidInputError: no samples axis, NaN/Inf (with the index), input shorter than
            ``spec.min_samples()`` samples at the spec's rate, a bad ``sample_rate`` or ``n_threads``.
        InputTypeError: non-numeric audio.
        UnknownSpecError: an unknown preset name.
    """
    spec = get_mel_spec(spec)
    sr = check_sample_rate(sample_rate)
    check_audio_rate(sr)  # before any work: a slip such as 32 for 32000 costs GBs
    threads = check_threads(n_threads)
    x = as_float32_signal(audio, "audio")
    check_samples_last(x, "audio")
    if x.shape[-1] == 0:
        check_min_length(0, spec.min_samples(), "audio", f"the {spec.name!r} Mel front end")
    x = resample(x, sr, spec.sample_rate)
    n = x.shape[-1]
    check_min_length(n, spec.min_samples(), "audio", f"the {spec.name!r} Mel front end (at {spec.sample_rate} Hz)")
    window, fb = _kernel_tables(spec)
    lead = x.shape[:-1]
    out = _core.mel_spectrogram(
        x.reshape(-1, n),
        window,
        fb,
        hop=spec.hop_length,
        center=spec.center,
        win_length=spec.win_length,
        pad_mode=spec.pad_mode,
        padded_length=spec.padded_length(n),
        preemphasis=spec.preemphasis,
        magnitude=spec.magnitude,
        log_kind=spec.log,
        log_floor=spec.log_floor,
        norm_offset=spec.norm_offset,
        norm_scale=spec.norm_scale,
        n_threads=threads,
    )
    return out.reshape(*lead, out.shape[-2], out.shape[-1])


def patches(mel: np.ndarray, spec: str | MelSpec) -> np.ndarray:
    """Cut a Mel spectrogram into the classifier's fixed-size patches (YAMNet).

    Args:
        mel: ``(..., frames, n_mels)`` time-major, as returned by :func:`mel`.
        spec: a :class:`MelSpec` (or preset name) with ``patch_frames`` set:
            ``yamnet`` (96 frames, hop 48) or ``yamnet_torchport`` (96 frames, hop 100).

    Returns:
        float32 array ``(..., n_patches, patch_frames, n_mels)``: patch ``i`` is
        frames ``[i * hop, i * hop + patch_frames)``. Only complete patches are kept,
        so ``n_patches = 1 + (frames - patch_frames) // patch_hop_frames``. For a 1-s
        ``yamnet_torchport`` chunk (101 frames) that is one patch, frames 0-95.

    Raises:
        InvalidInputError: the spec has no patches, ``mel`` does not have ``n_mels`` bins
            on its last axis, has fewer frames than one patch, or holds NaN/Inf.
    """
    spec = get_mel_spec(spec)
    if spec.patch_frames is None or spec.patch_hop_frames is None:
        raise InvalidInputError(f"Mel spec {spec.name!r} has no fixed-size patches (patch_frames is None)")
    m = as_float32_mel(mel, spec.n_mels, "mel", spec.name)
    n_frames, size, hop = m.shape[-2], spec.patch_frames, spec.patch_hop_frames
    if n_frames < size:
        raise InvalidInputError(f"mel has {n_frames} frames, fewer than one {spec.name!r} patch ({size} frames)")
    count = 1 + (n_frames - size) // hop
    windows = np.lib.stride_tricks.sliding_window_view(m, size, axis=-2)[..., : (count - 1) * hop + 1 : hop, :, :]
    # sliding_window_view puts the window axis last: (..., count, n_mels, size) -> (..., count, size, n_mels)
    return np.ascontiguousarray(np.swapaxes(windows, -1, -2), dtype=np.float32)
