"""Scene synthesis for the data engine: random crops, mixtures, gains, speed, band limits, reverb.

A *scene* is ``context + seconds + context`` seconds of mono audio at 32 kHz, mixed from
1 to 3 source files of the training split (``training.sources`` index records). Every
draw comes from a ``numpy.random.Generator``, so a scene is a pure function of its seed:
the builder seeds scene ``i`` of shard ``s`` from ``(seed, s, i)`` and a resumed build
redraws exactly the same audio.

What is varied, and why (the transcoders must hold on sensors and places they never saw):

- **crop**: any offset in the file, not a fixed grid;
- **mixture**: 1, 2 or 3 sources; the others sit at a random SNR below the first, and
  the background source is drawn preferentially from ambient domains (urban, field);
- **level**: the scene's peak is set uniformly in ``level_db`` dBFS, so quiet scenes
  (a peak of -45 dBFS is a calm street read through a typical sensor gain) are as
  common as loud ones;
- **speed**: tape-style resampling by a factor near 1 (shifts pitch and tempo together);
- **band limit**: a smooth low-pass and/or high-pass (cheap microphones, windscreens);
- **reverb**: an exponentially decaying noise impulse response with a random RT60.

Short sources (shorter than the scene) are placed at a random position in silence, as
an event would be.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from spectral_transcoder._validation import resample

__all__ = ["SceneConfig", "SourcePool", "synthesize_scene", "SCENE_RATE"]

#: Scenes are mixed at the band analysis rate (cense_fast: 32 kHz).
SCENE_RATE = 32000


@dataclass(frozen=True)
class SceneConfig:
    """The distribution scenes are drawn from (recorded in the cache, fixed for a build)."""

    seconds: int = 4
    """Target seconds per scene: each becomes one training example (a 1-s chunk)."""
    context: int = 1
    """Seconds of context before and after (levels only; the model may look at them)."""
    source_probs: tuple[float, ...] = (0.45, 0.35, 0.20)
    """P(1 source), P(2), P(3)."""
    snr_db: tuple[float, float] = (-3.0, 20.0)
    """Level of the first source over each further source (dB, RMS)."""
    level_db: tuple[float, float] = (-45.0, 0.0)
    """Scene peak, dBFS (uniform)."""
    p_speed: float = 0.5
    speed: tuple[float, float] = (0.9, 1.1)
    p_bandlimit: float = 0.2
    p_reverb: float = 0.25
    rt60_s: tuple[float, float] = (0.2, 1.2)
    domain_weights: dict[str, float] = field(
        default_factory=lambda: {
            "urban": 0.30,
            "field": 0.20,
            "environment": 0.10,
            "speech": 0.15,
            "sfx": 0.13,
            "music": 0.12,
        }
    )
    """Weight of each domain when drawing the first source (missing domains are skipped)."""
    background_domains: tuple[str, ...] = ("urban", "field", "environment")
    """Preferred domains for the further sources (chosen with probability 0.6)."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @property
    def total_seconds(self) -> int:
        return self.seconds + 2 * self.context


@dataclass
class SourcePool:
    """Training sources grouped by domain: ``paths[domain]`` and their durations (s)."""

    paths: dict[str, list[str]]
    durations: dict[str, np.ndarray]

    @classmethod
    def from_records(cls, records: Sequence[Any]) -> SourcePool:
        """From index records with ``path``, ``domain`` and ``duration_s`` (attributes or keys)."""
        paths: dict[str, list[str]] = {}
        durs: dict[str, list[float]] = {}
        for r in records:
            get = (lambda k: r[k]) if isinstance(r, dict) else (lambda k: getattr(r, k))  # noqa: B023 - used right here
            paths.setdefault(get("domain"), []).append(str(get("path")))
            durs.setdefault(get("domain"), []).append(float(get("duration_s")))
        return cls(paths, {k: np.asarray(v) for k, v in durs.items()})

    def draw(self, rng: np.random.Generator, domains: dict[str, float]) -> tuple[str, str, float]:
        """A (domain, path, duration) with the domain drawn by weight, then a file with
        probability growing as the square root of its duration (long files give many
        distinct crops, without drowning the many short ones)."""
        names = [d for d in domains if self.paths.get(d)]
        if not names:
            names = [d for d in self.paths if self.paths[d]]
            w = np.ones(len(names))
        else:
            w = np.asarray([domains[d] for d in names], float)
        dom = names[int(rng.choice(len(names), p=w / w.sum()))]
        dw = np.sqrt(self.durations[dom])
        i = int(rng.choice(len(dw), p=dw / dw.sum()))
        return dom, self.paths[dom][i], float(self.durations[dom][i])


def _read_segment(path: str, duration: float, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """``seconds`` of mono audio at SCENE_RATE from a random offset; a shorter file is
    placed at a random position in silence."""
    import soundfile as sf

    n_out = int(round(seconds * SCENE_RATE))
    with sf.SoundFile(path) as f:
        sr = f.samplerate
        need = int(math.ceil(seconds * sr)) + 64
        if f.frames > need:
            f.seek(int(rng.integers(0, f.frames - need + 1)))
            x = f.read(need, dtype="float32", always_2d=True)
        else:
            x = f.read(dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if sr != SCENE_RATE:
        x = resample(x, float(sr), SCENE_RATE)
    out = np.zeros(n_out, np.float32)
    if x.shape[0] >= n_out:
        out[:] = x[:n_out]
    else:
        o = int(rng.integers(0, n_out - x.shape[0] + 1))
        out[o : o + x.shape[0]] = x
    return out


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def _speed(x: np.ndarray, factor: float, n_out: int) -> np.ndarray:
    """Play ``x`` ``factor`` times faster (resampling), cut or zero-padded to ``n_out``."""
    y = resample(x, SCENE_RATE * factor, SCENE_RATE)
    out = np.zeros(n_out, np.float32)
    out[: min(n_out, y.shape[0])] = y[:n_out]
    return out


def _bandlimit(x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, float]]:
    """A smooth (raised-cosine over an octave) low-pass and/or high-pass in the FFT domain."""
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(x.shape[0], 1.0 / SCENE_RATE)
    gain = np.ones_like(f)
    info: dict[str, float] = {}
    kind = rng.integers(0, 3)  # 0 low-pass, 1 high-pass, 2 both
    if kind in (0, 2):
        fc = float(np.exp(rng.uniform(np.log(3000.0), np.log(12000.0))))
        t = np.clip(np.log2(np.maximum(f, 1.0) / fc) + 0.5, 0.0, 1.0)  # one octave, centred on fc
        gain *= 0.5 * (1 + np.cos(np.pi * t))
        info["lowpass_hz"] = fc
    if kind in (1, 2):
        fc = float(np.exp(rng.uniform(np.log(80.0), np.log(500.0))))
        t = np.clip(np.log2(fc / np.maximum(f, 1.0)) + 0.5, 0.0, 1.0)
        gain *= 0.5 * (1 + np.cos(np.pi * t))
        info["highpass_hz"] = fc
    return np.fft.irfft(spec * gain, n=x.shape[0]).astype(np.float32), info


def _reverb(x: np.ndarray, rng: np.random.Generator, rt60: tuple[float, float]) -> tuple[np.ndarray, float]:
    """Convolution with decaying noise (RT60 uniform in ``rt60``), mixed wet/dry."""
    t60 = float(rng.uniform(*rt60))
    n = int(t60 * SCENE_RATE)
    t = np.arange(n) / SCENE_RATE
    ir = rng.standard_normal(n) * np.exp(-6.9078 * t / t60)  # -60 dB at t60
    ir[0] = 0.0
    ir /= np.sqrt(np.sum(ir**2)) + 1e-12
    size = 1 << int(math.ceil(math.log2(x.shape[0] + n)))
    wet = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(ir, size), size)[: x.shape[0]]
    mix = float(rng.uniform(0.2, 0.8))
    dry_rms, wet_rms = _rms(x), _rms(wet)
    if wet_rms > 0:
        wet *= dry_rms / wet_rms
    return ((1 - mix) * x + mix * wet).astype(np.float32), t60


def synthesize_scene(
    pool: SourcePool,
    config: SceneConfig,
    rng: np.random.Generator,
    *,
    extra_samples: int = 0,
    reader: Callable[[str, float, float, np.random.Generator], np.ndarray] = _read_segment,
) -> tuple[np.ndarray, dict[str, Any]]:
    """One scene: ``(total_seconds * 32000 + extra_samples,)`` float32 audio and what was drawn.

    ``extra_samples`` lengthens the scene (e.g. so that the last analysis frame is whole).
    The returned dict lists the sources (domain, path), the SNRs, the level and each
    augmentation, for the cache's per-scene records.
    """
    n = config.total_seconds * SCENE_RATE + extra_samples
    seconds = n / SCENE_RATE
    k = int(rng.choice(len(config.source_probs), p=np.asarray(config.source_probs) / sum(config.source_probs))) + 1
    info: dict[str, Any] = {"sources": [], "snr_db": []}
    mix = np.zeros(n, np.float32)
    first_rms = 0.0
    for j in range(k):
        if j == 0:
            weights = config.domain_weights
        elif rng.random() < 0.6:
            weights = {d: 1.0 for d in config.background_domains}
        else:
            weights = {d: 1.0 for d in config.domain_weights}
        dom, path, dur = pool.draw(rng, weights)
        speed = float(rng.uniform(*config.speed)) if rng.random() < config.p_speed else 1.0
        x = reader(path, dur, seconds * speed, rng)
        if speed != 1.0:
            x = _speed(x, speed, n)
        r = _rms(x)
        if r <= 0:
            continue
        if first_rms == 0.0:
            first_rms = r
            snr = 0.0
        else:
            snr = float(rng.uniform(*config.snr_db))
            x = x * (first_rms / r / 10 ** (snr / 20))
        mix += x
        info["sources"].append({"domain": dom, "path": path, "speed": speed})
        info["snr_db"].append(snr)
    if config.p_bandlimit and rng.random() < config.p_bandlimit:
        mix, bl = _bandlimit(mix, rng)
        info.update(bl)
    if config.p_reverb and rng.random() < config.p_reverb:
        mix, info["rt60_s"] = _reverb(mix, rng, config.rt60_s)
    peak = float(np.max(np.abs(mix))) if mix.size else 0.0
    level = float(rng.uniform(*config.level_db))
    if peak > 0:
        mix *= 10 ** (level / 20) / peak
    info["level_db"] = level if peak > 0 else None
    return mix.astype(np.float32), info
