"""Subcommands ``process`` (alias ``classify``), ``plot`` and ``bench`` of ``spectral-transcoder``,
and the archive benchmark they share with ``benchmarks/bench_archive.py``:

- :func:`make_level_archive`: a long Parquet archive looped from short level recordings
  (gain offsets, small noise, shuffled order), written in row groups (bounded memory);
- :class:`RssSampler`: the resident memory of this process and its children, sampled
  from a thread;
- :func:`run_bench`: :func:`~.process.process` on such an archive, with the figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._cli_base import PROG, Handler, register_command
from .audio import load_audio
from .errors import InvalidInputError
from .specs import BAND_SPECS

__all__ = ["make_level_archive", "synthetic_levels", "audio_levels", "RssSampler", "run_bench", "format_stages"]


# ------------------------------------------------------------------ shared arguments
def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models")
    g.add_argument(
        "-c",
        "--classifier",
        required=True,
        metavar="NAME|PATH",
        help="classifier: registry name (see `models list`) or .onnx file",
    )
    g.add_argument(
        "-t",
        "--transcoder",
        default=None,
        metavar="NAME|PATH",
        help="transcoder: registry name, .onnx file, or 'pinv:TARGET' for the PINV alone "
        "(default: the registry's transcoder for the classifier)",
    )
    g.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="threads (default: physical cores). One process runs N blocks at once, each with "
        "one-threaded models; with --workers/--scheduler, each worker's models get N threads "
        "(default: the cores shared among --workers)",
    )


def _add_read_args(p: argparse.ArgumentParser, *, blocks: bool) -> None:
    g = p.add_argument_group("reading the archives (see the archives module for every rule)")
    g.add_argument(
        "--format",
        default=None,
        choices=["parquet", "csv", "hdf5", "npy", "noisecapture", "audio"],
        help="archive format (default: from the file extension)",
    )
    g.add_argument(
        "--spec",
        default=None,
        choices=sorted(BAND_SPECS),
        help="band spec of the archives (default: the format's own, cense_fast for most)",
    )
    g.add_argument(
        "--reference",
        default="dBFS",
        choices=["dBFS", "SPL", "auto"],
        help="what the stored levels are: dBFS as stored; SPL = calibrated dB SPL, --spl-offset "
        "is subtracted (26 for the paper's Cense '+26' convention); auto = scaled like the "
        "peak-normalised training audio (99th percentile of the broadband level -> 0 dB)",
    )
    g.add_argument(
        "--spl-offset",
        type=float,
        default=None,
        metavar="DB",
        help="--reference SPL: the dB SPL that corresponds to 0 dBFS",
    )
    g.add_argument(
        "--gaps",
        default="mask",
        choices=["mask", "split", "error"],
        help="missing frames / NaN rows: mask them (their 1-s chunks are not classified), split "
        "the stream there, or stop with an error",
    )
    g.add_argument(
        "--max-mask-gap",
        type=float,
        default=60.0,
        metavar="S",
        help="--gaps mask: a longer jump starts a new segment instead of masked frames",
    )
    g.add_argument(
        "--duplicates",
        default="error",
        choices=["error", "drop"],
        help="two rows in one 125-ms slot: an error, or keep the first",
    )
    g.add_argument("--time-column", default=None, metavar="NAME", help="Parquet/CSV time column (default: found)")
    g.add_argument(
        "--time-unit",
        default=None,
        choices=["s", "ms", "us", "ns"],
        help="Parquet/CSV numeric time column: unit since the Unix epoch (UTC)",
    )
    g.add_argument(
        "--dataset",
        default=None,
        metavar="NAME",
        help="HDF5: the dataset of levels, (clips, frames, bands) (default: fast_125ms)",
    )
    if blocks:
        g.add_argument(
            "--block-seconds",
            type=float,
            default=60.0,
            metavar="S",
            help="seconds per block: one Parquet row group and one manifest entry each "
            "(a multiple of 10 with --windows 10s/both)",
        )


def _read_options(args: argparse.Namespace, *, blocks: bool) -> dict[str, Any]:
    """Only the options given (or that differ from the defaults): readers reject unknown names."""
    opts: dict[str, Any] = {
        "reference": args.reference,
        "gaps": args.gaps,
        "duplicates": args.duplicates,
        "max_mask_gap_s": args.max_mask_gap,
    }
    if args.spl_offset is not None:
        opts["spl_offset"] = args.spl_offset
    for name in ("format", "spec", "time_column", "time_unit", "dataset"):
        if getattr(args, name) is not None:
            opts[name] = getattr(args, name)
    if blocks:
        opts["block_seconds"] = args.block_seconds
    return opts


def _percentages(values: Sequence[float]) -> list[int]:
    """Whole percentages of ``values`` that add up to exactly 100 (largest remainders)."""
    total = float(sum(values))
    if total <= 0:
        return [0] * len(values)
    exact = [100.0 * v / total for v in values]
    out = [int(x) for x in exact]
    for i in sorted(range(len(exact)), key=lambda i: out[i] - exact[i])[: 100 - sum(out)]:
        out[i] += 1
    return out


def _shares(stages: dict[str, float]) -> str:
    pct = _percentages(list(stages.values()))
    return ", ".join(f"{k} {v:.2f} s ({p}%)" for (k, v), p in zip(stages.items(), pct))


_COMPUTE_STAGES = ("pinv", "cnn", "classifier", "rows")


def format_stages(stages: dict[str, float], workers: int = 1) -> str:
    """Where the time went, each group's shares adding up to 100 %. One process computing
    one block at a time: every stage is a share of the wall time. Blocks computed
    elsewhere (threads, Dask workers; ``stages`` then has ``wait``): the driver's wall time
    (read, wait for results, write) and the compute time summed over the ``workers``
    (PINV, CNN, classifier, rows) are two wholes, shown apart."""
    if "wait" not in stages:
        return _shares(stages)
    driver = {k: v for k, v in stages.items() if k not in _COMPUTE_STAGES}
    compute = {k: v for k, v in stages.items() if k in _COMPUTE_STAGES}
    return f"driver: {_shares(driver)}; blocks (summed over {workers} at once): {_shares(compute)}"


# ------------------------------------------------------------------ process / classify
_PROCESS_DESCRIPTION = textwrap.dedent(
    """\
    Classify third-octave archives (Parquet, CSV, HDF5, NPY/NPZ, NoiseCapture .zip, or audio files
    analysed on the fly) into a Parquet dataset of predictions, streaming fixed-size blocks so that
    memory stays bounded whatever the archive's length.

    Per block: whole 1-s chunks -> PINV -> CNN transcoder -> classifier (ONNX Runtime, in batches
    of --batch-size chunks). A 1-s chunk holding a gap (missing frame, NaN row, end padding) is not classified:
    with --gap-rows mark its row is kept with chunks=0 and null labels; with omit it is left out.

    OUT is a directory any Parquet reader opens as one dataset, one row group per block, columns:
      source, sensor, block, window_start (UTC), window_s, level_reference, level_offset_db,
      window ('1s', '10s' or 'gap'), chunks (1-s chunks classified in the window),
      top_labels, top_scores, top_indices (the --top-k best classes), probs (--probabilities)
    The model ids and sha256, the band and Mel specs, the level reference, the gap policy and the
    label list are stored in OUT/_run.json and in every part file's metadata.

    An outage longer than --max-mask-gap (or any gap under --gaps split) is one row with
    window='gap' (window_start: the end of the last frame before it, window_s: its length,
    chunks=0, null labels), so that "no data" never reads as "nothing heard".

    OUT must be new, empty, or the output of an earlier run of the same command: another
    non-empty folder is refused, and only files the run can prove are its own are ever
    deleted. Re-running the same command resumes a killed run: the manifest
    (OUT/_manifest.jsonl) lists the finished blocks, so nothing is lost or written twice; an
    input file changed since (size, time or content) is refused, by name. A file that cannot
    be read, or breaks a rule, is reported with its position, its blocks before the problem
    are kept and the other files are processed (exit status 1, with a summary at the end).
    Levels beyond any sound (a 999 'no data' sentinel) are masked like NaN rows and counted.
    """
)

_PROCESS_EPILOG = textwrap.dedent(
    f"""\
    examples:
      {PROG} process sensor-*.parquet -o out/ -c yamnet                # its shipped transcoder
      {PROG} process day.parquet -o out/ -c clf.onnx -t tr.onnx --reference SPL --spl-offset 94
      {PROG} process day.parquet -o out/ -c efficientat-mn04 --workers 4
    """
)


def _setup_process(p: argparse.ArgumentParser) -> Handler:
    p.epilog = _PROCESS_EPILOG
    p.add_argument("archives", nargs="+", type=Path, metavar="ARCHIVE", help="archive or audio file(s)")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        type=Path,
        metavar="OUT",
        help="output directory (created; an existing one is resumed)",
    )
    _add_model_args(p)
    g = p.add_argument_group("output rows")
    g.add_argument(
        "--windows",
        default="both",
        choices=["1s", "10s", "both"],
        help="1-s rows, 10-s means of the classified 1-s probabilities (the paper's protocol), or both",
    )
    g.add_argument("--top-k", type=int, default=5, metavar="K", help="labels and scores kept per row")
    g.add_argument("--probabilities", action="store_true", help="also store every class probability per row")
    g.add_argument(
        "--gap-rows",
        default="mark",
        choices=["mark", "omit"],
        help="rows of windows with no classified chunk: kept with chunks=0 and nulls, or left out",
    )
    _add_read_args(p, blocks=True)
    g = p.add_argument_group("speed (never changes the rows)")
    g.add_argument(
        "--batch-size",
        type=int,
        default=8,
        metavar="N",
        help="1-s chunks per ONNX Runtime run; on CPU 4-16 run the CNN as fast as larger batches, "
        "and 60 take ~1 GB of memory",
    )
    g.add_argument(
        "--workers", type=int, default=None, metavar="N", help="run on a local Dask cluster of N worker processes"
    )
    g.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="run on an existing Dask cluster (e.g. tcp://host:8786); the model files must be "
        "readable at the same paths on its workers",
    )
    g.add_argument(
        "--blocks-per-part",
        type=int,
        default=16,
        metavar="N",
        help="blocks per committed part file: the most work a kill can lose",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return _run_process


def _run_process(args: argparse.Namespace) -> int:
    from .archives.process import process

    s = process(
        [str(a) for a in args.archives],
        args.output,
        classifier=args.classifier,
        transcoder=args.transcoder,
        windows=args.windows,
        top_k=args.top_k,
        probabilities=args.probabilities,
        gap_rows=args.gap_rows,
        n_threads=args.threads,
        batch_size=args.batch_size,
        workers=args.workers,
        scheduler=args.scheduler,
        progress=not args.no_progress,
        blocks_per_part=args.blocks_per_part,
        **_read_options(args, blocks=True),
    )
    speed = f": {s.real_time_factor:.1f}x real time" if s.blocks_done else ""
    print(
        f"{s.blocks_done} blocks ({s.audio_seconds:.0f} s of valid frames) in {s.wall_seconds:.1f} s{speed}; "
        f"{s.rows} rows -> {args.output}"
    )
    if s.blocks_skipped:
        print(f"resumed: {s.blocks_skipped} blocks were already done")
    at_once = (
        ""
        if s.workers == 1
        else f"; {s.workers} blocks at once" + (" (Dask)" if args.workers or args.scheduler else " (threads)")
    )
    print(f"models: {s.transcoder} -> {s.classifier}{at_once}")
    print(f"time: {format_stages(s.stages, s.workers)}")
    for st in s.read_stats.values():
        if st.get("out_of_range_rows"):
            print(
                f"{PROG}: warning: {st['path']}: {st['out_of_range_rows']} row(s) with levels beyond any sound "
                f"(a 'no data' sentinel such as 999?) were masked like NaN rows, so their seconds are not "
                f"classified; the first at {st['first_out_of_range']}",
                file=sys.stderr,
            )
    for e in s.errors:
        where = f", {e['position']}" if e.get("position") else ""
        print(
            f"{PROG}: error: {e['path']}{where}: {e['message']} ({e['blocks_read']} blocks of it before the "
            "problem were processed)",
            file=sys.stderr,
        )
    if s.errors:
        n_files = len({str(Path(a).resolve()) for a in args.archives})
        print(
            f"{PROG}: {len(s.errors)} of {n_files} files failed (listed above); what was computed is kept, "
            "the other files were processed. Fix them and run the same command again to resume",
            file=sys.stderr,
        )
    return 1 if s.errors else 0


register_command(
    "process",
    help="archives -> class predictions (Parquet), resumable, bounded memory",
    description=_PROCESS_DESCRIPTION,
)(_setup_process)
register_command("classify", help="the same as `process`", description=_PROCESS_DESCRIPTION)(_setup_process)


# ------------------------------------------------------------------ plot
def _setup_plot(p: argparse.ArgumentParser) -> Handler:
    p.epilog = textwrap.dedent(
        f"""\
        examples:
          {PROG} plot birds.wav -o birds.png -c yamnet --reference auto
          {PROG} plot day.parquet -o noon.png -c yamnet --start 43200 --duration 60
        """
    )
    p.add_argument("input", type=Path, metavar="INPUT", help="an archive file or an audio file")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUT.png", help="PNG to write")
    _add_model_args(p)
    p.add_argument(
        "--audio",
        type=Path,
        default=None,
        metavar="AUDIO",
        help="the recording an archive was computed from, to add its ground-truth Mel "
        "(aligned on the archive's start; automatic when INPUT is audio)",
    )
    p.add_argument("--start", type=float, default=0.0, metavar="S", help="seconds from the start of INPUT")
    p.add_argument("--duration", type=float, default=30.0, metavar="S", help="seconds to plot")
    p.add_argument("--top", type=int, default=8, metavar="N", help="classes in the probability timeline")
    _add_read_args(p, blocks=False)
    return _run_plot


def _run_plot(args: argparse.Namespace) -> int:
    from .plot import plot_file

    r = plot_file(
        args.input,
        args.output,
        classifier=args.classifier,
        transcoder=args.transcoder,
        audio=args.audio,
        start=args.start,
        duration=args.duration,
        top=args.top,
        n_threads=args.threads,
        **_read_options(args, blocks=False),
    )
    best = ", ".join(f"{name} {p:.2f}" for name, p in r["top"][:5])
    print(
        f"{args.input}: {r['start_s']:g}-{r['start_s'] + r['seconds']:g} s, {r['classified']}/{r['chunks']} "
        f"chunks classified ({r['transcoder']} -> {r['classifier']})"
        + ("; with the ground-truth Mel" if r["ground_truth"] else "")
        + f" -> {r['output']}"
    )
    print(f"mean probabilities: {best}")
    return 0


register_command(
    "plot",
    help="a PNG of the levels, the transcoded Mel and the class probabilities over time",
    description=textwrap.dedent(
        """\
        Plot a window of an archive or audio file: its third-octave levels, the transcoded Mel,
        the classifier's own Mel of the audio (when there is audio) and the probabilities of
        the top classes per 1-s chunk (chunks with a gap are not classified: left blank).
        """
    ),
)(_setup_plot)


# ------------------------------------------------------------------ the benchmark
def synthetic_levels(seconds: float = 60.0, seed: int = 0) -> list[np.ndarray]:
    """Levels (frames, 29) dBFS of a few synthetic scenes (noise, tones, chirps, clicks),
    for benchmarks without recordings."""
    from .analysis import third_octave

    sr = 32000
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    white = rng.standard_normal(n).astype(np.float32)
    brown = np.cumsum(rng.standard_normal(n)).astype(np.float32)
    brown -= np.convolve(brown, np.ones(3200) / 3200, mode="same").astype(np.float32)
    scenes = [
        0.05 * white,
        0.3 * brown / (np.abs(brown).max() + 1e-9) + 0.02 * np.sin(2 * np.pi * 440 * t),
        0.2 * np.sin(2 * np.pi * (200 + 1800 * (t % 4) / 4) * t) + 0.01 * white,
        (rng.random(n) < 2e-4).astype(np.float32) * 0.8 + 0.005 * white,
    ]
    return [third_octave(np.asarray(s, dtype=np.float32), sr) for s in scenes]


def audio_levels(paths: Iterable[str | os.PathLike[str]]) -> list[np.ndarray]:
    """Levels (frames, 29) dBFS of each audio file, peak-normalised first (as the
    transcoders' training audio)."""
    from .analysis import third_octave

    out = []
    for p in paths:
        x, sr = load_audio(p)
        peak = float(np.abs(x).max())
        if peak > 0:
            out.append(third_octave(x / peak, sr))
    if not out:
        raise InvalidInputError("no audio with samples among the given files")
    return out


def make_level_archive(
    path: str | os.PathLike[str],
    clips: Sequence[np.ndarray],
    *,
    seconds: float,
    start: str = "2024-06-01T00:00:00",
    seed: int = 0,
    gain_db: float = 12.0,
    noise_db: float = 0.5,
    row_group_s: float = 3600.0,
) -> Path:
    """A Parquet archive of ``seconds`` of 125-ms frames (``timestamp`` UTC + 29 float32 band
    columns), made by looping ``clips`` (frames, 29) in shuffled order, each repetition with
    a gain offset (uniform +-``gain_db``) and Gaussian noise (``noise_db``). Written one row
    group at a time: memory stays bounded whatever ``seconds``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .specs import get_band_spec

    spec = get_band_spec("cense_fast")
    total = int(round(seconds / spec.frame_period))
    per_group = max(1, int(round(row_group_s / spec.frame_period)))
    rng = np.random.default_rng(seed)
    t0 = int(np.datetime64(start, "ns").astype(np.int64))
    period = int(round(spec.frame_period * 1e9))
    names = [f"L{int(round(f))}" for f in spec.center_frequencies]
    schema = pa.schema([("timestamp", pa.timestamp("ns", tz="UTC"))] + [(n, pa.float32()) for n in names])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pending: list[np.ndarray] = []
    have = 0
    done = 0
    with pq.ParquetWriter(path, schema) as w:
        while done < total:
            while have < min(per_group, total - done):
                for i in rng.permutation(len(clips)):
                    c = clips[i] + rng.uniform(-gain_db, gain_db) + rng.normal(0, noise_db, clips[i].shape)
                    pending.append(c.astype(np.float32))
                    have += len(c)
            buf = np.concatenate(pending)
            m = min(per_group, total - done)
            rows, rest = buf[:m], buf[m:]
            pending, have = [rest], len(rest)
            ts = pa.array(t0 + (done + np.arange(m, dtype=np.int64)) * period).cast(pa.timestamp("ns", tz="UTC"))
            w.write_table(pa.table([ts] + [pa.array(rows[:, j]) for j in range(rows.shape[1])], schema=schema))
            done += m
    return path


def _rss_tree(proc: Any) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except Exception:  # noqa: BLE001 - a child may end between the listing and the read
            pass
    return total


class RssSampler:
    """Samples the resident memory (bytes) of this process plus its children (Dask
    workers) every ``interval`` s from a thread: ``with RssSampler() as r: ...``, then
    :attr:`samples` ((seconds, bytes) pairs) and :attr:`peak`."""

    def __init__(self, interval: float = 0.5, children: bool = True):
        self.interval, self.children = interval, children
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()

    def _read(self) -> int:
        try:
            import psutil

            me = psutil.Process()
            return _rss_tree(me) if self.children else me.memory_info().rss
        except ImportError:  # Linux without psutil: this process only
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        return 0

    def _loop(self) -> None:
        t0 = time.perf_counter()
        while not self._stop.is_set():
            self.samples.append((time.perf_counter() - t0, self._read()))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> int:
        return max((b for _, b in self.samples), default=0)

    def series(self, points: int = 12) -> str:
        """A compact series: ``points`` samples evenly spread, in MB."""
        if not self.samples:
            return "-"
        idx = np.unique(np.linspace(0, len(self.samples) - 1, min(points, len(self.samples))).astype(int))
        return " ".join(f"{self.samples[i][0]:.0f}s:{self.samples[i][1] / 2**20:.0f}" for i in idx) + " (MB)"


def run_bench(
    archive: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    classifier: str,
    transcoder: str | None,
    workers: int | None = None,
    n_threads: int | None = None,
    batch_size: int | None = 8,
    progress: bool = False,
    block_seconds: float = 60.0,
    interval: float = 0.5,
) -> dict[str, Any]:
    """:func:`~.process.process` of ``archive`` into a fresh ``output``, with the RSS sampled.
    Returns the figures: x real time, stage seconds, RSS peak and series."""
    import shutil

    from .archives.process import process

    shutil.rmtree(output, ignore_errors=True)
    with RssSampler(interval=interval) as rss:
        s = process(
            [archive],
            output,
            classifier=classifier,
            transcoder=transcoder,
            workers=workers,
            n_threads=n_threads,
            batch_size=batch_size,
            progress=progress,
            block_seconds=block_seconds,
        )
    return {
        "audio_s": s.audio_seconds,
        "wall_s": s.wall_seconds,
        "x_real_time": s.real_time_factor,
        "blocks": s.blocks_done,
        "rows": s.rows,
        "stages": s.stages,
        "workers": s.workers,
        "rss_peak_mb": rss.peak / 2**20,
        "rss_series": rss.series(),
        "rss_samples": rss.samples,
        "transcoder": s.transcoder,
        "classifier": s.classifier,
        "errors": s.errors,
    }


def _setup_bench(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("-c", "--classifier", required=True, metavar="NAME|PATH", help="classifier (name or .onnx)")
    p.add_argument(
        "-t",
        "--transcoder",
        default=None,
        metavar="NAME|PATH",
        help="transcoder (name, .onnx or 'pinv:TARGET'; default: the registry's for the classifier)",
    )
    p.add_argument("--minutes", type=float, default=5.0, metavar="M", help="archive length to generate")
    p.add_argument(
        "--audio",
        nargs="*",
        type=Path,
        default=None,
        metavar="AUDIO",
        help="recordings to loop into the archive (default: synthetic scenes)",
    )
    p.add_argument(
        "--workers",
        type=int,
        nargs="*",
        default=[],
        metavar="N",
        help="also run on local Dask clusters of N worker processes (e.g. --workers 1 2)",
    )
    p.add_argument("--threads", type=int, default=None, metavar="N", help="threads, as for process --threads")
    p.add_argument(
        "--dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where to write the archive and outputs (default: a temporary directory, removed)",
    )
    return _run_bench


def _run_bench(args: argparse.Namespace) -> int:
    tmp = None
    if args.dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="st-bench-")
        root = Path(tmp.name)
    else:
        root = args.dir
    try:
        clips = audio_levels(args.audio) if args.audio else synthetic_levels()
        archive = make_level_archive(root / "archive.parquet", clips, seconds=args.minutes * 60)
        print(
            f"archive: {args.minutes:g} min of 125-ms frames looped from {len(clips)} "
            f"{'recordings' if args.audio else 'synthetic scenes'} -> {archive}"
        )
        runs = [("single process", None)] + [(f"dask, {w} worker(s)", w) for w in args.workers]
        for name, w in runs:
            r = run_bench(
                archive,
                root / f"out-{w or 0}",
                classifier=args.classifier,
                transcoder=args.transcoder,
                workers=w,
                n_threads=args.threads,
            )
            print(
                f"{name}: {r['x_real_time']:.1f}x real time ({r['audio_s']:.0f} s in {r['wall_s']:.1f} s), "
                f"RSS peak {r['rss_peak_mb']:.0f} MB"
            )
            print(f"  time: {format_stages(r['stages'], r['workers'])}")
            print(f"  RSS: {r['rss_series']}")
        print(f"models: {r['transcoder']} -> {r['classifier']}")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


register_command(
    "bench",
    help="benchmark `process` on a generated archive (x real time, memory, where the time goes)",
    description=textwrap.dedent(
        """\
        Generate a third-octave archive of --minutes (looped from --audio recordings, or synthetic
        scenes), classify it with `process`, and print the speed in x real time (seconds of audio
        per wall-clock second), where the time goes (read, PINV, CNN, classifier, rows, write) and
        the resident memory over time (this process and its workers). The full sensor-day
        benchmark is benchmarks/bench_archive.py in the source tree.
        """
    ),
)(_setup_bench)
