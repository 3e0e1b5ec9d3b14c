"""Pictures of the pipeline: third-octave levels, the transcoded Mel (and the classifier's own
Mel of the audio, when there is audio) and a class-probability timeline, in one PNG.

- :func:`read_window`: a time window of any archive or audio file as levels (gap frames NaN);
- :func:`pipeline_figure`: the figure from arrays;
- :func:`plot_file`: both, plus the models, for ``spectral-transcoder plot``.

matplotlib is imported here only (``pip install "spectral-transcoder[plot]"``; without it,
the error says so before any work), with the non-interactive Agg backend when none was chosen.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._validation import require_module
from .errors import InvalidInputError
from .specs import BandSpec, MelSpec

__all__ = ["LevelWindow", "read_window", "pipeline_figure", "plot_file"]


@dataclass
class LevelWindow:
    """Levels of one time window of a file."""

    levels: np.ndarray
    """(frames, n_bands) float32 dB (stored + the level reference's offset); NaN on gap frames."""
    valid: np.ndarray
    """(frames,) bool."""
    band_spec: BandSpec
    start: np.datetime64
    """UTC time of frame 0 (the Unix epoch + elapsed time for sources without time stamps)."""
    offset_s: float
    """Seconds from the file's first block to frame 0."""
    level_reference: Any
    source: str


def read_window(
    path: str | os.PathLike[str], *, start: float = 0.0, duration: float = 30.0, **read_options: Any
) -> LevelWindow:
    """Levels of ``[start, start + duration)`` seconds from the start of ``path`` (any
    format :func:`~.archives.open_archive` reads, audio included), cut to whole 1-s
    chunks; memory is bounded by the window. ``read_options`` go to the reader."""
    from .archives import open_archive

    if not (np.isfinite(start) and start >= 0):
        raise InvalidInputError(f"start must be a number of seconds >= 0, got {start!r}")
    if not (np.isfinite(duration) and duration > 0):
        raise InvalidInputError(f"duration must be a number of seconds > 0, got {duration!r}")
    read_options.setdefault("block_seconds", 60.0)  # small blocks: a short window reads little past its end
    reader = open_archive(path, **read_options)
    spec = reader.band_spec
    fpc = spec.frames_per_chunk
    f0 = int(round(start / spec.chunk_duration)) * fpc
    n = max(1, int(round(duration / spec.chunk_duration))) * fpc
    levels = np.full((n, spec.n_bands), np.nan, dtype=np.float32)
    valid = np.zeros(n, dtype=bool)
    first_ns: int | None = None
    t0: np.datetime64 | None = None
    got = 0
    period_ns = spec.frame_period * 1e9
    for block in reader:
        b0 = int(block.start.astype("datetime64[ns]").astype(np.int64))
        if first_ns is None:
            first_ns = b0
        # the block's frames on the grid of the file's first block (segments may jump in time)
        g0 = int(round((b0 - first_ns) / period_ns))
        lo, hi = max(f0, g0), min(f0 + n, g0 + block.n_frames)
        if hi > lo:
            levels[lo - f0 : hi - f0] = block.levels[lo - g0 : hi - g0]
            valid[lo - f0 : hi - f0] = block.valid[lo - g0 : hi - g0]
            got += hi - lo
        if g0 + block.n_frames >= f0 + n:
            break
    if first_ns is None or got == 0:
        raise InvalidInputError(f"{path}: no frames in [{start:g}, {start + duration:g}) s from its start")
    t0 = np.datetime64(first_ns + int(round(f0 * period_ns)), "ns")
    last = int(np.flatnonzero(valid)[-1]) + 1 if valid.any() else n  # cut the window to its data
    n_keep = -(-last // fpc) * fpc
    return LevelWindow(
        levels[:n_keep], valid[:n_keep], spec, t0, f0 * spec.frame_period, reader.level_reference, str(path)
    )


def _mel_on_grid(chunks: np.ndarray, spec: MelSpec, chunk_s: float, n_chunks: int) -> np.ndarray:
    """Per-chunk Mels (n_chunks, T, n_mels) (NaN for chunks not transcoded) on a uniform grid of
    ``spec.frame_period``: each grid time shows the nearest frame of its chunk (a chunk's T
    frames may cover less than the chunk, e.g. YAMNet's 96 of 100)."""
    h = spec.frame_period
    n = int(round(n_chunks * chunk_s / h))
    t = np.arange(n) * h
    k = np.minimum((t // chunk_s).astype(np.int64), n_chunks - 1)
    j = np.minimum(np.rint((t - k * chunk_s) / h).astype(np.int64), chunks.shape[1] - 1)
    grid: np.ndarray = chunks[k, j]
    return grid


def pipeline_figure(
    levels: np.ndarray,
    *,
    band_spec: BandSpec,
    mels: np.ndarray,
    mel_spec: MelSpec,
    probs: np.ndarray,
    labels: Sequence[str],
    ground_truth: np.ndarray | None = None,
    top: int = 8,
    title: str | None = None,
    level_unit: str = "dB re full scale",
    mel_title: str = "transcoded Mel",
) -> Any:
    """The figure: levels ``(frames, n_bands)`` dB (NaN = gap), per-chunk Mels
    ``(n_chunks, T, n_mels)`` and probabilities ``(n_chunks, n_classes)`` (NaN rows for
    chunks not classified), optionally the classifier's own Mel of the audio
    ``(frames, n_mels)``. Time in seconds from the window's start. Returns a
    ``matplotlib.figure.Figure``."""
    require_module("matplotlib", "plot", "plotting")
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "ps", "cairo") and "DISPLAY" not in os.environ:
        matplotlib.use("Agg")
    from matplotlib.figure import Figure

    levels = np.asarray(levels, dtype=np.float32)
    n_chunks = mels.shape[0]
    chunk_s = band_spec.chunk_duration
    dur = n_chunks * chunk_s
    rows = 4 if ground_truth is not None else 3
    fig = Figure(figsize=(12, 2.6 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, 1, sharex=True, squeeze=True)
    ax = axes[0]
    fc = band_spec.center_frequencies
    im = ax.imshow(
        levels.T,
        origin="lower",
        aspect="auto",
        interpolation="nearest",
        cmap="magma",
        extent=(0, levels.shape[0] * band_spec.frame_period, -0.5, band_spec.n_bands - 0.5),
    )
    ticks = np.arange(0, band_spec.n_bands, max(1, band_spec.n_bands // 7))
    ax.set_yticks(ticks, [f"{fc[i]:.0f}" if fc[i] < 1000 else f"{fc[i] / 1000:.3g}k" for i in ticks])
    ax.set_ylabel("band centre (Hz)")
    ax.set_title(
        f"third-octave levels ({band_spec.name}, {band_spec.n_bands} bands, "
        f"{band_spec.frame_period * 1000:g} ms frames)"
    )
    fig.colorbar(im, ax=ax, label=level_unit, pad=0.01)

    def mel_panel(a: Any, m: np.ndarray, name: str, extent_s: float) -> None:
        finite = m[np.isfinite(m)]
        lo, hi = np.percentile(finite, [1, 99.5]) if finite.size else (0, 1)
        mi = a.imshow(
            m.T,
            origin="lower",
            aspect="auto",
            interpolation="nearest",
            cmap="viridis",
            vmin=lo,
            vmax=hi,
            extent=(0, extent_s, -0.5, m.shape[1] - 0.5),
        )
        a.set_ylabel("Mel bin")
        a.set_title(name)
        fig.colorbar(mi, ax=a, label=f"{mel_spec.name} units", pad=0.01)

    grid = _mel_on_grid(mels, mel_spec, chunk_s, n_chunks)
    mel_panel(axes[1], grid, f"{mel_title} ({mel_spec.name}, {mel_spec.n_mels} bins)", dur)
    if ground_truth is not None:
        gt = np.asarray(ground_truth, dtype=np.float32)
        mel_panel(
            axes[2],
            gt,
            f"the classifier's own Mel of the audio as recorded ({mel_spec.name})",
            gt.shape[0] * mel_spec.frame_period,
        )
    ax = axes[-1]
    p = np.asarray(probs, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(p, axis=0) if np.isfinite(p).any() else np.zeros(p.shape[1])
    order = np.argsort(-np.nan_to_num(mean, nan=-1.0), kind="stable")[: min(top, p.shape[1])]
    pm = ax.imshow(
        p[:, order].T,
        origin="upper",
        aspect="auto",
        interpolation="nearest",
        cmap="Greens",
        vmin=0,
        vmax=1,
        extent=(0, dur, len(order) - 0.5, -0.5),
    )
    ax.set_yticks(np.arange(len(order)), [str(labels[i])[:28] for i in order])
    ax.set_title(f"class probabilities per {chunk_s:g} s (top {len(order)} by mean; blank = not classified)")
    ax.set_xlabel("time (s from the window start)")
    fig.colorbar(pm, ax=ax, label="probability", pad=0.01)
    for a in axes:
        a.set_xlim(0, dur)
    if title:
        fig.suptitle(title)
    return fig


def plot_file(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    classifier: Any,
    transcoder: Any = None,
    audio: str | os.PathLike[str] | None = None,
    start: float = 0.0,
    duration: float = 30.0,
    top: int = 8,
    n_threads: int | None = None,
    dpi: int = 110,
    **read_options: Any,
) -> dict[str, Any]:
    """Plot ``[start, start + duration)`` s of ``input`` (an archive or an audio file) to the PNG
    ``output``: levels, transcoded Mel, class probabilities per 1-s chunk (chunks with a gap
    are not classified), and the classifier's own Mel when audio is at hand (``input`` itself,
    or ``audio``: the recording the archive was computed from, aligned on its start), from the
    samples as recorded: the level reference (``reference=``) applies to the archive's levels only.
    Returns what was plotted (model ids, window, top classes)."""
    require_module("matplotlib", "plot", "plotting")  # before the models are loaded and the file read
    from ._validation import check_level_range
    from .archives import AudioReader, open_archive
    from .pipeline import Pipeline

    pipe = Pipeline.resolve(classifier, transcoder, n_threads=n_threads)
    tr, clf = pipe.transcoder, pipe.classifier
    where = os.fspath(input)
    pipe.band_spec(open_archive(input, **read_options).band_spec, where=where)  # before reading anything
    win = read_window(input, start=start, duration=duration, **read_options)
    spec = pipe.band_spec(win.band_spec, where=where)
    # after the level reference, as transcoded
    check_level_range(win.levels, spec, where=f"{input}: ", reference=win.level_reference.mode)
    fpc = spec.frames_per_chunk
    n = win.levels.shape[0] // fpc
    ok = win.valid.reshape(n, fpc).all(axis=1)
    mspec = tr.output_spec
    mels = np.full((n, mspec.chunk_frames, mspec.n_mels), np.nan, dtype=np.float32)
    probs = np.full((n, len(clf.labels)), np.nan, dtype=np.float32)
    if ok.any():
        m = tr.transcode_chunks(win.levels.reshape(n, fpc, spec.n_bands)[ok], band_spec=spec)
        mels[ok] = m
        probs[ok] = clf(m)
    gt = None
    if audio is None and open_reader_class(input) is AudioReader:
        audio = input
    ref = win.level_reference
    if audio is not None:
        # The audio as recorded (dB re full scale): the archive's level reference (an "auto" or SPL
        # offset) describes the archive's levels, not this file's samples.
        gt = _ground_truth(audio, mspec, win.offset_s, n * spec.chunk_duration, n_threads)
    unit = "dB re full scale" if ref.offset_db == 0 else f"dB re full scale ({ref.mode}, {ref.offset_db:+g} dB)"
    title = (
        f"{Path(str(input)).name}: {win.offset_s:g}-{win.offset_s + n * spec.chunk_duration:g} s "
        f"(UTC {str(win.start)[:19]}), {tr.model_id} -> {clf.model_id}"
    )
    fig = pipeline_figure(
        win.levels,
        band_spec=spec,
        mels=mels,
        mel_spec=mspec,
        probs=probs,
        labels=[lb.name for lb in clf.labels],
        ground_truth=gt,
        top=top,
        title=title,
        level_unit=unit,
        mel_title=f"transcoded Mel ({tr.model_id})",
    )
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    mean = np.nanmean(probs[ok], axis=0) if ok.any() else np.zeros(len(clf.labels))
    best = np.argsort(-mean, kind="stable")[:top]
    return {
        "output": str(out),
        "transcoder": tr.model_id,
        "classifier": clf.model_id,
        "start_s": win.offset_s,
        "seconds": n * spec.chunk_duration,
        "chunks": int(n),
        "classified": int(ok.sum()),
        "ground_truth": gt is not None,
        "top": [(clf.labels[i].name, float(mean[i])) for i in best],
    }


def open_reader_class(path: str | os.PathLike[str]) -> type | None:
    """The reader class :func:`~.archives.open_archive` would use for ``path`` (by extension)."""
    from .archives.readers import _READERS

    return _READERS.get(Path(str(path)).suffix.lower())


def _ground_truth(
    path: str | os.PathLike[str], spec: MelSpec, offset_s: float, seconds: float, n_threads: int | None
) -> np.ndarray:
    """The classifier's own Mel ``(frames, n_mels)`` of ``seconds`` of audio from ``offset_s`` s
    (mono mean), the samples as recorded (full scale, no level offset)."""
    from .audio import load_audio
    from .frontends import mel

    mono, sr = load_audio(path, offset=offset_s, duration=seconds)
    if mono.shape[0] == 0:
        raise InvalidInputError(f"{path}: no audio in [{offset_s:g}, {offset_s + seconds:g}) s")
    return mel(mono, sr, spec=spec, n_threads=n_threads or 0)
