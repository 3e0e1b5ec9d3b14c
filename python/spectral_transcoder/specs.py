"""Representation specs: the single source of truth for every constant.

A :class:`BandSpec` describes a third-octave representation (how levels are
computed from audio, and what the numbers in an archive mean); a :class:`MelSpec`
describes the Mel spectrogram a classifier expects. The C++ kernels, the PINV,
``training/`` and the metadata embedded in model files all read these objects;
no constant of a representation is written anywhere else.

Presets (what each constant means: ``docs/conventions.md`` §1-2):

========================  =============================================================
``cense_fast``            32 kHz, 4096-sample Tukey(0.2) frames every 4000 samples (125 ms), 29 bands 20 Hz-12.5 kHz
``cense_slow``            the 1-s variant: 32758-sample frames every 32000 samples
``noisecapture``          NoiseCapture app exports: 23 bands 100 Hz-16 kHz, one frame per second (48 kHz, Hann)
``pann``                  PANN: 32 kHz, STFT 1024/320 centred, power, Slaney mel 64 x 50-14000 Hz, 10 log10
``yamnet``                official YAMNet TF front end: 16 kHz, 400/160 not centred, magnitude, TF-HTK mel,
                          ln(x + 0.001)
``yamnet_torchport``      the paper's YAMNet port: centred reflect STFT, magnitude, torchaudio HTK mel, ln(x + 0.001)
``efficientat``           EfficientAT mn04: pre-emphasis 0.97, symmetric Hann 800 in 1024, Kaldi mel 128 x 0-15000 Hz,
                          (ln(x + 1e-5) + 4.5) / 5
========================  =============================================================

Specs are frozen dataclasses; derive variants with :func:`dataclasses.replace`
(e.g. ``replace(get_band_spec("cense_fast"), db_offset=26.0)`` for the paper's
"+26 dB" Cense convention). They round-trip through JSON with :meth:`to_json` /
:func:`spec_from_json`, which is how model files embed them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, TypeVar, cast

import numpy as np

from .errors import InvalidInputError, UnknownSpecError

__all__ = [
    "BandSpec",
    "MelSpec",
    "Spec",
    "BAND_SPECS",
    "MEL_SPECS",
    "get_band_spec",
    "get_mel_spec",
    "spec_from_json",
    "CENSE_DB_OFFSET",
]

#: The paper's Cense level convention adds this many dB to dBFS (docs/conventions.md §1,
#: described upstream as the "-26 dB sensitivity of Cense microphones").
CENSE_DB_OFFSET = 26.0


@dataclass(frozen=True)
class BandSpec:
    """A fractional-octave band representation and the analysis that produces it.

    Band ``i`` (``band_index_min <= i <= band_index_max``) has the base-10 centre
    frequency ``fc = 1000 * 10 ** (i / 10)`` Hz and edges ``fc * 10 ** (-+1 / 20)``.
    Levels are ``20 log10(rms) + db_offset`` where ``rms`` is the band RMS amplitude
    in full-scale units: with the default ``db_offset = 0`` they are dB re full
    scale (a full-scale sine reads -3.01 dB in its band).
    """

    name: str
    sample_rate: int
    """Analysis sample rate in Hz; audio at other rates is resampled first."""
    frame_length: int
    """Samples per analysis frame, which is also the FFT length (no zero-padding)."""
    hop_length: int
    """Samples between frame starts. Frames are not centred."""
    band_index_min: int = -17
    band_index_max: int = 11
    window: Literal["tukey", "hann", "rectangular"] = "tukey"
    window_alpha: float = 0.2
    """Tukey taper fraction (ignored by the other windows)."""
    bin_rule: Literal["ceil_ceil_inclusive"] = "ceil_ceil_inclusive"
    """FFT bins ``ceil(f_lo/df) .. ceil(f_hi/df)`` inclusive; neighbours share one bin."""
    db_offset: float = 0.0
    """dB added to 20 log10(rms): 0 = dBFS, 26 = the paper's Cense convention."""
    level_floor: float = 1e-9
    """RMS values <= 0 are replaced by this before the log (-180 dB re FS)."""
    frames_per_chunk: int = 8
    """Frames per transcoder chunk (1 s for ``cense_fast``)."""

    # ------------------------------------------------------------------ derived
    @property
    def n_bands(self) -> int:
        return self.band_index_max - self.band_index_min + 1

    @property
    def band_indices(self) -> np.ndarray:
        return np.arange(self.band_index_min, self.band_index_max + 1)

    @property
    def center_frequencies(self) -> np.ndarray:
        """Exact base-10 centre frequencies in Hz, shape (n_bands,)."""
        f: np.ndarray = 1000.0 * 10.0 ** (self.band_indices / 10.0)
        return f

    @property
    def lower_edges(self) -> np.ndarray:
        f: np.ndarray = self.center_frequencies * 10.0 ** (-1.0 / 20.0)
        return f

    @property
    def upper_edges(self) -> np.ndarray:
        f: np.ndarray = self.center_frequencies * 10.0 ** (1.0 / 20.0)
        return f

    @property
    def frame_period(self) -> float:
        """Seconds between frames."""
        return self.hop_length / self.sample_rate

    @property
    def chunk_duration(self) -> float:
        """Seconds covered by one transcoder chunk (``frames_per_chunk`` hops)."""
        return self.frames_per_chunk * self.frame_period

    def n_frames(self, n_samples: int) -> int:
        """Frames produced from ``n_samples`` samples (the signal is zero-padded at
        the end up to the next whole frame; anything shorter than a frame gives 1)."""
        if n_samples <= self.frame_length:
            return 1
        return -(-(n_samples - self.frame_length) // self.hop_length) + 1

    def to_dict(self) -> dict[str, Any]:
        return {"type": "BandSpec", **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


@dataclass(frozen=True)
class MelSpec:
    """A classifier's Mel front end, exactly: framing, window, spectrum, filterbank, log.

    The output of :func:`spectral_transcoder.mel` is time-major, shape
    ``(..., frames, n_mels)``, in the units of ``log`` (see below).
    """

    name: str
    sample_rate: int
    n_fft: int
    win_length: int
    """Window length; a shorter window is zero-padded centred inside ``n_fft``."""
    hop_length: int
    n_mels: int
    fmin: float
    fmax: float
    window: Literal["hann"] = "hann"
    window_periodic: bool = True
    """Periodic (DFT-even) window if True, symmetric if False."""
    center: bool = True
    """Centre frames on ``hop * t`` by padding ``n_fft // 2`` samples at each end."""
    pad_mode: Literal["reflect", "constant"] = "reflect"
    pad_to_patches: bool = False
    """YAMNet official: zero-pad the end so complete patches cover the signal
    (min length = window of one patch; then whole patch hops)."""
    preemphasis: float = 0.0
    """If non-zero, y[n] = x[n+1] - preemphasis * x[n] (the signal loses one sample)."""
    magnitude: bool = False
    """Use |X| instead of the power |X|^2."""
    filterbank: Literal["slaney", "htk", "tf", "kaldi"] = "slaney"
    """slaney: librosa (Slaney scale, area norm); htk: torchaudio HTK, triangles in Hz,
    no norm; tf: tf.signal HTK (1127 ln), triangles in mel, DC excluded; kaldi:
    triangles in mel (1127 ln), DC included, Nyquist column zero."""
    log: Literal["db", "ln"] = "db"
    """db: 10 log10(max(x, log_floor)); ln: ln(x + log_floor)."""
    log_floor: float = 1e-10
    norm_offset: float = 0.0
    norm_scale: float = 1.0
    """Output = (log value + norm_offset) / norm_scale."""
    chunk_frames: int = 101
    """Mel frames the transcoder produces per 1-s chunk (the target T)."""
    stitch_drop_last: bool = False
    """When stitching 1-s chunks, drop the last frame of every chunk but the final one."""
    patch_frames: int | None = None
    """Frames per classifier patch (YAMNet: 96); None = variable length."""
    patch_hop_frames: int | None = None

    # ------------------------------------------------------------------ derived
    @property
    def frame_period(self) -> float:
        return self.hop_length / self.sample_rate

    @property
    def n_bins(self) -> int:
        return self.n_fft // 2 + 1

    def padded_length(self, n_samples: int) -> int:
        """Length after the YAMNet-style end padding (``pad_to_patches``); otherwise unchanged."""
        if not self.pad_to_patches:
            return n_samples
        assert self.patch_frames is not None and self.patch_hop_frames is not None
        min_len = (self.patch_frames - 1) * self.hop_length + self.win_length
        hop = self.patch_hop_frames * self.hop_length
        k = max(0, -(-(max(n_samples, min_len) - min_len) // hop))
        return min_len + hop * k

    def min_samples(self) -> int:
        """Shortest accepted input, in samples at ``sample_rate``."""
        n = 1 + (1 if self.preemphasis else 0)
        if self.center and self.pad_mode == "reflect":
            # reflect padding of n_fft // 2 needs a longer signal (after pre-emphasis)
            n = self.n_fft // 2 + 1 + (1 if self.preemphasis else 0)
        elif not self.center and not self.pad_to_patches:
            # one whole window (after pre-emphasis)
            n = self.win_length + (1 if self.preemphasis else 0)
        return n

    def n_frames(self, n_samples: int) -> int:
        """Frames produced from ``n_samples`` samples at ``sample_rate``."""
        n = self.padded_length(n_samples) - (1 if self.preemphasis else 0)
        if self.center:
            return 1 + n // self.hop_length
        return 1 + (n - self.win_length) // self.hop_length

    def frames_for_chunk(self, chunk_seconds: float) -> int:
        """Mel frames the transcoder produces for one chunk of ``chunk_seconds``.

        For the paper's 1-s chunks this is ``chunk_frames`` (101 PANN, 96 YAMNet);
        other chunk lengths (the 10-s ``cense_slow`` chunks) get the front end's own
        frame count for that much audio (1001 for PANN).
        """
        if abs(chunk_seconds - 1.0) < 1e-9:
            return self.chunk_frames
        return self.n_frames(int(round(chunk_seconds * self.sample_rate)))

    def to_dict(self) -> dict[str, Any]:
        return {"type": "MelSpec", **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


Spec: TypeAlias = BandSpec | MelSpec

BAND_SPECS: dict[str, BandSpec] = {
    "cense_fast": BandSpec(name="cense_fast", sample_rate=32000, frame_length=4096, hop_length=4000),
    # docs/conventions.md §1: N = 32758 (not 32768), hop 32000, 10 frames per 10-s chunk.
    "cense_slow": BandSpec(
        name="cense_slow", sample_rate=32000, frame_length=32758, hop_length=32000, frames_per_chunk=10
    ),
    # NoiseCapture (Android app) exports: 23 bands 100 Hz-16 kHz nominal (indices -10..12), one
    # frame per second, stored as calibrated dB; 48 kHz Hann analysis. No transcoder exists yet.
    "noisecapture": BandSpec(
        name="noisecapture",
        sample_rate=48000,
        frame_length=48000,
        hop_length=48000,
        band_index_min=-10,
        band_index_max=12,
        window="hann",
        frames_per_chunk=1,
    ),
}

MEL_SPECS: dict[str, MelSpec] = {
    "pann": MelSpec(
        name="pann",
        sample_rate=32000,
        n_fft=1024,
        win_length=1024,
        hop_length=320,
        n_mels=64,
        fmin=50.0,
        fmax=14000.0,
        filterbank="slaney",
        log="db",
        log_floor=1e-10,
        chunk_frames=101,
        stitch_drop_last=True,
    ),
    "yamnet": MelSpec(
        name="yamnet",
        sample_rate=16000,
        n_fft=512,
        win_length=400,
        hop_length=160,
        n_mels=64,
        fmin=125.0,
        fmax=7500.0,
        center=False,
        pad_to_patches=True,
        magnitude=True,
        filterbank="tf",
        log="ln",
        log_floor=0.001,
        chunk_frames=96,
        patch_frames=96,
        patch_hop_frames=48,
    ),
    "yamnet_torchport": MelSpec(
        name="yamnet_torchport",
        sample_rate=16000,
        n_fft=512,
        win_length=400,
        hop_length=160,
        n_mels=64,
        fmin=125.0,
        fmax=7500.0,
        magnitude=True,
        filterbank="htk",
        log="ln",
        log_floor=0.001,
        chunk_frames=96,
        stitch_drop_last=True,
        patch_frames=96,
        patch_hop_frames=100,
    ),
    "efficientat": MelSpec(
        name="efficientat",
        sample_rate=32000,
        n_fft=1024,
        win_length=800,
        hop_length=320,
        n_mels=128,
        fmin=0.0,
        fmax=15000.0,
        window_periodic=False,
        preemphasis=0.97,
        filterbank="kaldi",
        log="ln",
        log_floor=1e-5,
        norm_offset=4.5,
        norm_scale=5.0,
        chunk_frames=100,
    ),
}


_S = TypeVar("_S", BandSpec, MelSpec)


def _lookup(kind: str, table: dict[str, _S], spec: object, cls: type[_S]) -> _S:
    if isinstance(spec, cls):
        return spec
    if isinstance(spec, str):
        try:
            return table[spec]
        except KeyError:
            raise UnknownSpecError(f"unknown {kind} spec {spec!r}; known presets: {', '.join(sorted(table))}") from None
    if isinstance(spec, dict):
        return cast(_S, spec_from_json(json.dumps(spec)))  # not checked against cls (as before)
    raise UnknownSpecError(f"expected a {kind} spec name or {cls.__name__}, got {type(spec).__name__}")


def get_band_spec(spec: str | BandSpec | dict[str, Any]) -> BandSpec:
    """Return the :class:`BandSpec` for a preset name (or pass a spec through)."""
    return _lookup("band", BAND_SPECS, spec, BandSpec)


def get_mel_spec(spec: str | MelSpec | dict[str, Any]) -> MelSpec:
    """Return the :class:`MelSpec` for a preset name (or pass a spec through)."""
    return _lookup("Mel", MEL_SPECS, spec, MelSpec)


def spec_from_json(text: str | bytes) -> Spec:
    """Rebuild a :class:`BandSpec` or :class:`MelSpec` from :meth:`to_json` output."""
    try:
        data = json.loads(text)
        kind = data.pop("type")
        cls: type[BandSpec] | type[MelSpec] = {"BandSpec": BandSpec, "MelSpec": MelSpec}[kind]
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise InvalidInputError(f"{kind} JSON has unknown fields: {sorted(unknown)}")
        return cls(**data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        if isinstance(exc, InvalidInputError):
            raise
        raise InvalidInputError(f"not a valid spec JSON: {exc}") from exc


def _check_presets() -> None:
    # Cheap self-consistency guards on the presets (run at import).
    for s in BAND_SPECS.values():
        assert s.upper_edges[-1] < s.sample_rate / 2, s.name
    for m in MEL_SPECS.values():
        assert m.fmax <= m.sample_rate / 2 and m.win_length <= m.n_fft, m.name
        assert math.isfinite(m.log_floor) and m.log_floor > 0, m.name


_check_presets()
