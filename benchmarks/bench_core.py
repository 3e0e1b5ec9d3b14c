"""Throughput of the C++ kernels against plain vectorised numpy, side by side in one run.

    python benchmarks/bench_core.py [--only third_octave,pinv,mel] [--seconds S] [--chunks N]
                                    [--repeats R] [--threads T]

Each stage is a ``bench_<stage>(args) -> list[Result]`` function registered in
``STAGES``; it times our kernel and a numpy implementation of the same computation
written here, takes the best of ``--repeats`` runs of each, and reports seconds of
audio processed per wall-clock second ("x real time") and the ratio. Numbers are
only comparable within one run on one machine.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from spectral_transcoder import get_band_spec, get_mel_spec, tables
from spectral_transcoder.analysis import third_octave
from spectral_transcoder.frontends import mel as mel_frontend
from spectral_transcoder.pinv import band_power_gain, interpolation_matrix, pinv_chunks, pinv_matrix


@dataclass
class Result:
    stage: str
    impl: str
    audio_seconds: float
    wall_seconds: float
    threads: str
    max_abs_diff: float | None = None  # vs our kernel, in the output's units

    @property
    def realtime(self) -> float:
        return self.audio_seconds / self.wall_seconds


def best_of(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls (after one warm-up call) and the last output."""
    out = fn()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def settle() -> None:
    """Let OpenBLAS worker threads, which spin for a while after numpy's linear
    algebra, go idle before timing our kernels on a small machine."""
    time.sleep(0.3)


def _threads_label(n_threads: int) -> str:
    return f"{n_threads}" if n_threads else f"auto (<= {os.cpu_count()})"


# ----------------------------------------------------------------- third octave
def numpy_third_octave(audio: np.ndarray, spec) -> np.ndarray:
    """Same computation as the kernel: framing (stride tricks), window, rfft, band sums, dB."""
    n, hop = spec.frame_length, spec.hop_length
    frames = spec.n_frames(audio.shape[-1])
    padded = np.zeros((n + (frames - 1) * hop,), np.float32)
    padded[: audio.shape[-1]] = audio
    view = np.lib.stride_tricks.sliding_window_view(padded, n)[::hop]
    window = tables.band_window(spec).astype(np.float32)
    spectrum = np.fft.rfft(view * window, axis=-1)
    power = spectrum.real**2 + spectrum.imag**2
    band_power = power @ tables.band_basis(spec).T.astype(np.float32)
    rms = np.sqrt(band_power / 2) / (n / 2) * tables.band_energy_correction(spec)
    rms = np.where(rms > 0, rms, spec.level_floor)
    return (20 * np.log10(rms) + spec.db_offset).astype(np.float32)


def bench_third_octave(args: argparse.Namespace) -> list[Result]:
    spec = get_band_spec("cense_fast")
    seconds = args.seconds
    audio = (np.random.default_rng(0).standard_normal(int(seconds * spec.sample_rate)) * 0.1).astype(np.float32)
    settle()
    t_ours, ours = best_of(lambda: third_octave(audio, spec.sample_rate, spec, n_threads=args.threads), args.repeats)
    t_np, ref = best_of(lambda: numpy_third_octave(audio, spec), args.repeats)
    diff = float(np.abs(np.asarray(ours) - np.asarray(ref)).max())
    return [
        Result("third_octave", "spectral_transcoder", seconds, t_ours, _threads_label(args.threads)),
        Result("third_octave", "numpy", seconds, t_np, "numpy + BLAS", diff),
    ]


# ------------------------------------------------------------------------- PINV
def numpy_pinv(levels: np.ndarray, band, mel, a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The folded PINV in float32 numpy: exp, (F x nb)(nb x M) product, time interpolation, log."""
    k = np.float32(band_power_gain(band, mel))
    power = k * np.power(np.float32(10), (levels - np.float32(band.db_offset)) / np.float32(10))
    mel_power = w @ (power @ a.T)  # (B, T, M)
    if mel.log == "db":
        y = 10 * np.log10(np.maximum(mel_power, np.float32(mel.log_floor)))
    else:
        y = np.log(mel_power + np.float32(mel.log_floor))
    return (y + np.float32(mel.norm_offset)) / np.float32(mel.norm_scale)


def bench_pinv(args: argparse.Namespace) -> list[Result]:
    band = get_band_spec("cense_fast")
    results = []
    for target in args.targets.split(","):
        mel = get_mel_spec(target)
        levels = np.random.default_rng(1).uniform(-90, 0, (args.chunks, band.frames_per_chunk, band.n_bands))
        levels = levels.astype(np.float32)
        a = pinv_matrix(band, mel).astype(np.float32)
        w = interpolation_matrix(band.frames_per_chunk, mel.chunk_frames).astype(np.float32)
        seconds = args.chunks * band.chunk_duration
        pinv_chunks(levels[:1], mel, band_spec=band)  # builds and caches the tables
        settle()
        t_ours, ours = best_of(lambda: pinv_chunks(levels, mel, band_spec=band, n_threads=args.threads), args.repeats)
        t_np, ref = best_of(lambda: numpy_pinv(levels, band, mel, a, w), args.repeats)
        diff = float(np.abs(np.asarray(ours) - np.asarray(ref)).max())
        results += [
            Result(f"pinv[{target}]", "spectral_transcoder", seconds, t_ours, _threads_label(args.threads)),
            Result(f"pinv[{target}]", "numpy", seconds, t_np, "numpy + BLAS", diff),
        ]
    return results


# -------------------------------------------------------------------- Mel front ends
def numpy_mel(audio: np.ndarray, spec) -> np.ndarray:
    """Same computation as the kernel: end padding, pre-emphasis, reflect pad, framing
    (stride tricks), window, rfft, power (or magnitude), dense Mel matmul, log, normalisation."""
    x = audio
    if spec.pad_to_patches:
        x = np.pad(x, (0, spec.padded_length(x.shape[-1]) - x.shape[-1]))
    if spec.preemphasis:
        x = x[1:] - np.float32(spec.preemphasis) * x[:-1]
    n_fft, hop = spec.n_fft, spec.hop_length
    window = tables.stft_window(spec).astype(np.float32)
    if spec.center:
        x = np.pad(x, n_fft // 2, mode=spec.pad_mode)
    else:  # frame t = x[hop t, hop t + win): the centred window starts (n_fft - win) // 2 early
        left = (n_fft - spec.win_length) // 2
        x = np.pad(x, (left, n_fft - spec.win_length - left))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    spectrum = np.fft.rfft(frames * window, axis=-1)
    power = spectrum.real**2 + spectrum.imag**2
    if spec.magnitude:
        power = np.sqrt(power)
    mel = power.astype(np.float32) @ tables.mel_filterbank(spec).astype(np.float32)
    if spec.log == "db":
        y = 10 * np.log10(np.maximum(mel, np.float32(spec.log_floor)))
    else:
        y = np.log(mel + np.float32(spec.log_floor))
    return ((y + np.float32(spec.norm_offset)) / np.float32(spec.norm_scale)).astype(np.float32)


def bench_mel(args: argparse.Namespace) -> list[Result]:
    results = []
    for name in args.mel_specs.split(","):
        spec = get_mel_spec(name)
        seconds = args.seconds
        audio = np.random.default_rng(2).standard_normal(int(seconds * spec.sample_rate)) * 0.1
        audio = audio.astype(np.float32)
        t_ours, ours = best_of(
            lambda: mel_frontend(audio, spec.sample_rate, spec, n_threads=args.threads), args.repeats
        )
        t_np, ref = best_of(lambda: numpy_mel(audio, spec), args.repeats)
        diff = float(np.abs(np.asarray(ours) - np.asarray(ref)).max())
        results += [
            Result(f"mel[{name}]", "spectral_transcoder", seconds, t_ours, _threads_label(args.threads)),
            Result(f"mel[{name}]", "numpy", seconds, t_np, "numpy + BLAS", diff),
        ]
    return results


# ---------------------------------------------------------------------- driver
STAGES: dict[str, Callable[[argparse.Namespace], list[Result]]] = {
    "third_octave": bench_third_octave,
    "pinv": bench_pinv,
    "mel": bench_mel,
}


def report(results: list[Result]) -> None:
    print(
        f"{'stage':<22} {'implementation':<20} {'audio s':>9} {'wall s':>9} {'x real time':>13} "
        f"{'ratio':>8}  threads / max |diff|"
    )
    ours: dict[str, float] = {}
    for r in results:
        if r.impl == "spectral_transcoder":
            ours[r.stage] = r.realtime
        ratio = ours.get(r.stage, r.realtime) / r.realtime
        extra = r.threads + (f" / {r.max_abs_diff:.2g}" if r.max_abs_diff is not None else "")
        print(
            f"{r.stage:<22} {r.impl:<20} {r.audio_seconds:>9.0f} {r.wall_seconds:>9.4f} {r.realtime:>13,.0f} "
            f"{ratio:>7.1f}x  {extra}"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(STAGES), help=f"comma-separated stages of {', '.join(STAGES)}")
    p.add_argument("--seconds", type=float, default=60.0, help="seconds of audio for the audio stages")
    p.add_argument("--chunks", type=int, default=10000, help="1-s chunks for the PINV stage")
    p.add_argument("--targets", default="pann,yamnet_torchport", help="PINV targets (Mel spec names)")
    p.add_argument(
        "--mel-specs",
        default="pann,yamnet_torchport,yamnet,efficientat",
        help="Mel front ends for the mel stage (Mel spec names)",
    )
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per implementation (best is kept)")
    p.add_argument("--threads", type=int, default=0, help="kernel threads (0 = automatic)")
    args = p.parse_args(argv)
    stages = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        p.error(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    print(f"{os.cpu_count()} CPUs; ratio = our x-real-time / this row's; best of {args.repeats}")
    results: list[Result] = []
    for s in stages:
        results += STAGES[s](args)
    report(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
