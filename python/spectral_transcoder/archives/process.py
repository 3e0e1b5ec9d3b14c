"""Archives -> predictions at scale: :func:`process` and its pure per-block function.

::

    import spectral_transcoder as st

    summary = st.process(["sensor-a.parquet", "sensor-b.parquet"], "out/",
                         classifier="yamnet-torchport", transcoder="yamnet-cnn-logits",
                         reference="SPL", spl_offset=94.0)
    table = st.archives.read_results("out/")

**Flow.** The archives are read as fixed-size blocks (:func:`~.open_many`,
``block_seconds`` = 60 by default), so memory is bounded whatever their length.
Each block goes through :func:`process_block`: its whole 1-s chunks (8 fast frames)
-> PINV -> CNN -> classifier (ONNX Runtime, in batches of ``batch_size`` chunks, 8 by
default: never one run per second) -> rows. :func:`~.run_blocks` appends the rows as one Parquet row
group per block and keeps the manifest, so a killed run resumes with no loss and
no duplicates when the same call is made again.

**Rows** (after the engine's leading columns ``source, sensor, block,
window_start, window_s, level_reference, level_offset_db``):

=================  ===============================  ===========================================
``window``         string                           ``"1s"``: one 1-s chunk; ``"10s"``: a 10-s mean;
                                                    ``"gap"``: an outage (no data), see **Gaps**
``chunks``         int16                            1-s chunks classified in the window (0: none)
``top_labels``     fixed_size_list<string>[k]       the ``top_k`` most probable classes, best first
``top_scores``     fixed_size_list<float32>[k]      their probabilities
``top_indices``    fixed_size_list<int16>[k]        their positions in the classifier's output
``probs``          fixed_size_list<float32>[C]      every class (only with ``probabilities=True``)
=================  ===============================  ===========================================

``windows`` chooses the rows: ``"1s"`` (one row per second), ``"10s"`` (the paper's
10-s means: the mean of the window's classified 1-s probability vectors, then its
top-k), or ``"both"`` (default; 1-s rows first in each block). A 10-s window never
spans two blocks (``block_seconds`` must then be a multiple of 10 s); the last one of
a segment may be shorter (``window_s`` says how long).

**Gaps: "no data" is never "nothing heard".** Missing data is shown, never filled:

- A 1-s chunk holding a gap frame (a missing frame, a bad row: NaN, Inf or an
  out-of-range level such as a 999 sentinel; or the end padding; see :mod:`.blocks`)
  is *not classified*: probabilities are never computed from, or filled with, NaN.
  With ``gap_rows="mark"`` (default) its 1-s row is kept with ``chunks = 0`` and null
  labels, scores and probabilities, so a timeline shows the hole; a 10-s mean
  averages the window's classified chunks (``chunks`` < 10 tells) and is null only
  when none is.
- An outage too long to mask (a jump longer than ``max_mask_gap_s``, 60 s by default,
  so that a sensor offline for a month does not yield a month of empty rows), or any
  gap or bad row under ``gaps="split"``, is **one row** with ``window = "gap"``:
  ``window_start`` is the end of the last frame before it, ``window_s`` its length
  (any length, to the frame), ``chunks = 0`` and null labels, scores and
  probabilities. It comes first among the rows of the block after the outage.

So, within one source, the ``"1s"`` (or the ``"10s"``) rows and the ``"gap"`` rows
together tile the time from the first frame to the end of the last chunk: coverage is
the sum of ``chunks`` (seconds classified) over that span, and an hour whose ``"1s"``
rows all hold ``chunks = 0``, or that a ``"gap"`` row spans, had no usable data.
(A hole between two files of the same sensor is not a row: each file is its own
source.) ``gap_rows="omit"`` leaves out every row with ``chunks = 0``, gap rows
included.

**Metadata.** The run's options (``_run.json`` and every part's ``st.run``) hold the
reader's choices (band spec, level reference and offset, gap and duplicate policy,
block length) and, under ``user.process``, the transcoder and classifier ids and
sha256, the Mel spec, the windows, ``top_k``, the gap-row policy and the label list.
Speed settings (threads, batch size, workers) are not recorded: a run may be
resumed with other ones. Threads and workers give the same rows bit for bit; another
batch size may move probabilities in their last bits (about 1e-7).

**Distributed.** :func:`process_block` is pure: ``(block, ProcessTask) -> table``,
where :class:`ProcessTask` (small, picklable) names the model files by path and
sha256. Each process loads the models once, lazily, in a cache keyed by them
(:func:`loaded_pipeline`). With ``workers=N`` (a local ``dask.distributed`` cluster of N
processes) or ``scheduler=ADDRESS`` (an existing cluster, or a ``Client``), the
driver reads the blocks, the workers run :func:`process_block`, and the driver
writes the rows in block order: the output is the same, row for row, as a
single-process run. The model paths must be readable by the workers.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .._validation import check_level_range
from ..errors import InputTypeError, InvalidInputError, ModelError
from ..specs import BandSpec

if TYPE_CHECKING:
    from ..pipeline import Pipeline

__all__ = [
    "process",
    "process_block",
    "ProcessTask",
    "ProcessOptions",
    "ModelRef",
    "ProcessSummary",
    "make_task",
    "loaded_models",
    "loaded_pipeline",
    "load_counts",
    "check_band_spec",
    "WINDOWS",
    "GAP_ROWS",
    "DEFAULT_BLOCK_SECONDS",
    "DEFAULT_BATCH_SIZE",
]

Windows = Literal["1s", "10s", "both"]
GapRows = Literal["mark", "omit"]
WINDOWS = ("1s", "10s", "both")
GAP_ROWS = ("mark", "omit")
DEFAULT_BLOCK_SECONDS = 60.0
"""Process's block length: one Parquet row group and one manifest entry per minute."""
DEFAULT_BATCH_SIZE = 8
"""1-s chunks per ONNX Runtime run. Measured on CPU (benchmarks/bench_archive.py): batches of
4-16 chunks run the CNN as fast as 60, and a 60-chunk batch holds ~1 GB of CNN activations
(64 channels x 96 x 64 floats per chunk, per layer) where 8 hold ~0.25 GB."""


# ------------------------------------------------------------------ the task
@dataclass(frozen=True)
class ModelRef:
    """A model a worker loads: a file (path and the sha256 it must have) or, for a
    transcoder, the PINV alone (``pinv_target``)."""

    kind: Literal["transcoder", "classifier"]
    path: str | None = None
    sha256: str | None = None
    pinv_target: str | None = None


@dataclass(frozen=True)
class ProcessOptions:
    """What the rows hold (``windows``, ``top_k``, ``probabilities``, ``gap_rows``) and
    how fast they are made (``n_threads``, ``batch_size``). The thread count never changes
    the rows; another ``batch_size`` may move probabilities in their last bits (ONNX
    Runtime blocks some sums by batch shape; about 1e-7)."""

    windows: Windows = "both"
    top_k: int = 5
    probabilities: bool = False
    gap_rows: GapRows = "mark"
    n_threads: int | None = None
    """ONNX Runtime intra-op threads per session (None or 0: the loading process's physical cores)."""
    batch_size: int | None = DEFAULT_BATCH_SIZE
    """1-s chunks per ONNX Runtime run (None: the whole block in one run)."""

    def __post_init__(self) -> None:
        if self.windows not in WINDOWS:
            raise InvalidInputError(f"windows must be one of {WINDOWS}, got {self.windows!r}")
        if self.gap_rows not in GAP_ROWS:
            raise InvalidInputError(f"gap_rows must be one of {GAP_ROWS}, got {self.gap_rows!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise InvalidInputError(f"top_k must be an integer >= 1, got {self.top_k!r}")
        if not isinstance(self.probabilities, bool):
            raise InputTypeError(f"probabilities must be True or False, got {self.probabilities!r}")
        if self.n_threads is not None and (
            isinstance(self.n_threads, bool) or not isinstance(self.n_threads, int) or self.n_threads < 0
        ):
            raise InvalidInputError(
                f"n_threads must be None or an integer >= 0 (0 = physical cores), got {self.n_threads!r}"
            )
        if self.batch_size is not None and (
            isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1
        ):
            raise InvalidInputError(
                f"batch_size must be None (one run per block) or an integer >= 1, got {self.batch_size!r}"
            )

    def result_dict(self) -> dict[str, Any]:
        """The options that change the rows (recorded in the output)."""
        return {
            "windows": self.windows,
            "top_k": self.top_k,
            "probabilities": self.probabilities,
            "gap_rows": self.gap_rows,
        }


@dataclass(frozen=True)
class ProcessTask:
    """Everything :func:`process_block` needs besides the block: small and picklable."""

    transcoder: ModelRef
    classifier: ModelRef
    options: ProcessOptions = ProcessOptions()


def _model_ref(model: str | os.PathLike[str], kind: Literal["transcoder", "classifier"]) -> ModelRef:
    """A registry name, a path or ``"pinv:TARGET"`` -> :class:`ModelRef`, with the checksum
    of the file as it is now (the registry's, for a name), which every worker then checks."""
    from .. import registry
    from ..models import _looks_like_path
    from ..pinv import pinv_target

    if not isinstance(model, (str, os.PathLike)):
        raise InputTypeError(
            f"{kind} must be a registry name, a path or 'pinv:TARGET' (the models are loaded "
            f"by each worker), got {type(model).__name__}"
        )
    target = pinv_target(model) if kind == "transcoder" else None
    if target is not None:
        from ..specs import get_mel_spec

        return ModelRef(kind, pinv_target=get_mel_spec(target).name)
    if _looks_like_path(model):
        path = Path(model).resolve()
        sha = registry.sha256_file(path) if path.is_file() else None  # a missing file fails at load, with help
    else:
        entry = registry.resolve(str(model), kind)
        path, sha = entry.path.resolve(), entry.sha256
    return ModelRef(kind, path=str(path), sha256=sha)


def make_task(
    *, classifier: str | os.PathLike[str], transcoder: str | os.PathLike[str] | None = None, **options: Any
) -> ProcessTask:
    """Resolve the models (registry names, paths or ``"pinv:TARGET"``; ``transcoder=None``
    takes the registry's default for the classifier), load them in this process and check
    that they fit each other; ``options`` are :class:`ProcessOptions` fields."""
    from .. import registry
    from ..models import read_metadata

    opts = ProcessOptions(**options)
    clf = _model_ref(classifier, "classifier")
    if transcoder is None:
        assert clf.path is not None  # a classifier is always a file
        name = registry.default_transcoder(read_metadata(clf.path)[0].name)
        if name is None:
            raise ModelError(
                f"no default transcoder for the classifier {str(classifier)!r}: pass transcoder= (a "
                "name from `spectral-transcoder models list`, a path, or 'pinv:TARGET')"
            )
        transcoder = name
    task = ProcessTask(_model_ref(transcoder, "transcoder"), clf, opts)
    _, model = loaded_models(task)  # specs, kinds, checksums and labels are checked before any work
    if opts.top_k > len(model.labels):
        raise InvalidInputError(
            f"top_k={opts.top_k} but the classifier {model.model_id} has {len(model.labels)} classes"
        )
    return task


# ------------------------------------------------------------------ worker-local models
_CACHE: collections.OrderedDict[tuple[Any, ...], Pipeline] = collections.OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 4
_LOADS: collections.Counter[tuple[Any, ...]] = collections.Counter()


def _cache_key(task: ProcessTask) -> tuple[Any, ...]:
    o = task.options
    return (task.transcoder, task.classifier, o.n_threads, o.batch_size)


def loaded_models(task: ProcessTask) -> tuple[Any, Any]:
    """This process's ``(Transcoder, Classifier)`` for ``task``: :func:`loaded_pipeline`'s pair."""
    pipe = loaded_pipeline(task)
    return pipe.transcoder, pipe.classifier


def loaded_pipeline(task: ProcessTask) -> Pipeline:
    """This process's :class:`~spectral_transcoder.pipeline.Pipeline` for ``task``, loaded on
    first use and cached (keyed by the model paths and sha256, and the speed options).

    A file whose checksum changed since the task was made is an error; a transcoder
    whose output spec is not the classifier's input spec raises :class:`SpecMismatchError`.
    """
    key = _cache_key(task)
    with _CACHE_LOCK:  # one load per process even when threads ask at once
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
        pipe = _load(task)
        _CACHE[key] = pipe
        _LOADS[key] += 1
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        return pipe


def load_counts() -> dict[tuple[Any, ...], int]:
    """How many times this process loaded each task's models (for tests and diagnostics)."""
    with _CACHE_LOCK:
        return dict(_LOADS)


def _load(task: ProcessTask) -> Pipeline:
    from ..models import Classifier, Transcoder
    from ..pipeline import Pipeline

    o = task.options
    big = 1 << 30  # batch_size None: every chunk of a block in one run
    t, c = task.transcoder, task.classifier
    assert c.path is not None  # a classifier is always a file; a transcoder a file or a PINV target
    if t.pinv_target is not None:
        tr = Transcoder.pinv(t.pinv_target)
    else:
        assert t.path is not None
        tr = Transcoder.from_file(
            t.path, n_threads=o.n_threads, batch_size=o.batch_size or big, expected_sha256=t.sha256
        )
    clf = Classifier.from_file(c.path, n_threads=o.n_threads, batch_size=o.batch_size or big, expected_sha256=c.sha256)
    pipe = Pipeline.resolve(clf, tr)  # the files as checksummed, then the specs checked once
    if not clf.labels:
        raise ModelError(f"the classifier {clf.model_id} has no labels in its metadata")
    return pipe


# ------------------------------------------------------------------ the block function
def _group_chunks(spec: BandSpec) -> int:
    from ..models import GROUP_SECONDS

    return max(1, int(round(GROUP_SECONDS / spec.chunk_duration)))


def check_band_spec(transcoder: Any, spec: BandSpec, where: str = "") -> BandSpec:
    """``transcoder.check_band_spec(spec)``, with the archive ``where`` named in the error
    (:meth:`.Pipeline.band_spec`, for a transcoder alone)."""
    from ..pipeline import check_archive_band_spec

    return check_archive_band_spec(transcoder, spec, where)


def _check_windows(task: ProcessTask, spec: BandSpec, block_frames: int, where: str = "") -> None:
    if task.options.windows == "1s":
        return
    g = _group_chunks(spec) * spec.frames_per_chunk
    if block_frames % g:
        raise InvalidInputError(
            f"{where + ': ' if where else ''}blocks of {block_frames * spec.frame_period:g} s cannot hold whole "
            f"{g * spec.frame_period:g}-s windows: choose block_seconds as a multiple of "
            f"{g * spec.frame_period:g} (or windows='1s')"
        )


def _fixed_list(values: np.ndarray, ok: np.ndarray, value_type: Any) -> Any:
    """(n, k) values -> fixed_size_list<value_type>[k], null where ``ok`` is False."""
    import pyarrow as pa

    _, k = values.shape
    flat = pa.array(values.reshape(-1), type=value_type)
    mask = None if ok.all() else pa.array(~ok)
    return pa.FixedSizeListArray.from_arrays(flat, k, mask=mask)


def _timed_block(block: Any, task: ProcessTask) -> tuple[Any, dict[str, float]]:
    """:func:`process_block` with the seconds spent in each stage."""
    import pyarrow as pa

    clock = time.perf_counter
    times = {"pinv": 0.0, "cnn": 0.0, "classifier": 0.0, "rows": 0.0}
    pipe = loaded_pipeline(task)
    tr, clf = pipe.transcoder, pipe.classifier
    spec = pipe.band_spec(block.band_spec, where=block.source)
    # SPL read as dBFS would classify as "Music" everywhere: that file fails with the way out
    check_level_range(block.levels, block.band_spec, where=f"{block.source}: ", reference=block.level_reference.mode)
    opts = task.options
    fpc = spec.frames_per_chunk
    n = block.n_frames // fpc  # a block is a whole number of chunks
    labels = clf.labels
    n_classes = len(labels)
    ok = block.chunk_valid()  # a chunk with any gap frame is not classified
    probs = np.zeros((n, n_classes), dtype=np.float32)
    if ok.any():
        chunks = np.ascontiguousarray(block.levels.reshape(n, fpc, spec.n_bands)[ok])
        t0 = clock()
        mels = tr.pinv_chunks(chunks, band_spec=spec)
        t1 = clock()
        ctx = tr.context_levels(block.levels.reshape(n, fpc, spec.n_bands), valid=ok)
        mels = tr.run_cnn(mels, levels=None if ctx is None else ctx[ok])
        t2 = clock()
        p = clf(mels)
        t3 = clock()
        times["pinv"], times["cnn"], times["classifier"] = t1 - t0, t2 - t1, t3 - t2
        if not np.isfinite(p).all():
            raise ModelError(
                f"{block.source}: block {block.position.index}: the classifier {clf.model_id} "
                "returned non-finite probabilities"
            )
        probs[ok] = p
    t0 = clock()
    d = spec.chunk_duration
    parts = []  # (window, offset_s, window_s, chunks, probs)
    if block.gap_before_s > 0:  # the outage before this segment: one row, so "no data" never reads as silence
        g_s = float(block.gap_before_s)
        parts.append(
            ("gap", np.array([-g_s]), np.array([g_s]), np.zeros(1, np.int16), np.zeros((1, n_classes), np.float32))
        )
    if opts.windows in ("1s", "both"):
        parts.append(("1s", np.arange(n) * d, np.full(n, d), ok.astype(np.int16), probs))
    if opts.windows in ("10s", "both"):
        g = _group_chunks(spec)  # windows start at the block start (_preflight checks the block length)
        starts = np.arange(0, n, g)
        counts = np.add.reduceat(ok.astype(np.int64), starts)
        sums = np.add.reduceat(np.where(ok[:, None], probs, 0).astype(np.float64), starts, axis=0)
        means = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
        lengths = np.minimum(g, n - starts)
        parts.append(("10s", starts * d, lengths * d, counts.astype(np.int16), means))
    window = np.concatenate([np.full(len(p[1]), p[0], dtype=object) for p in parts])
    offset = np.concatenate([p[1] for p in parts])
    length = np.concatenate([p[2] for p in parts])
    count = np.concatenate([p[3] for p in parts])
    pr = np.concatenate([p[4] for p in parts])
    if opts.gap_rows == "omit":
        keep = count > 0
        window, offset, length, count, pr = window[keep], offset[keep], length[keep], count[keep], pr[keep]
    has = count > 0
    k = opts.top_k
    top = np.argsort(-pr, axis=1, kind="stable")[:, :k]
    scores = np.take_along_axis(pr, top, axis=1)
    names = np.array([lb.name for lb in labels], dtype=object)
    cols: dict[str, Any] = {
        "offset_s": pa.array(offset, pa.float64()),
        "window_s": pa.array(length, pa.float64()),
        "window": pa.array(list(window), pa.string()),
        "chunks": pa.array(count, pa.int16()),
        "top_labels": _fixed_list(names[top], has, pa.string()),
        "top_scores": _fixed_list(scores.astype(np.float32), has, pa.float32()),
        "top_indices": _fixed_list(top.astype(np.int16), has, pa.int16()),
    }
    if opts.probabilities:
        cols["probs"] = _fixed_list(pr, has, pa.float32())
    table = pa.table(cols)
    times["rows"] = clock() - t0
    return table, times


def process_block(block: Any, task: ProcessTask) -> Any:
    """Classify one :class:`~.Block`: a ``pyarrow.Table`` of rows for
    :func:`~.run_blocks` (columns in the module docstring, with ``offset_s``
    from the block start). Pure: the same block and task give the same table, in any
    process; the models come from this process's cache (:func:`loaded_models`)."""
    return _timed_block(block, task)[0]


# ------------------------------------------------------------------ driving it
@dataclass
class ProcessSummary:
    """What :func:`process` did: the engine's :class:`~.RunSummary` plus the
    models used and where the time went."""

    run: Any
    transcoder: str
    classifier: str
    stages: dict[str, float] = field(default_factory=dict)
    """Seconds per stage: ``read`` (archive reading, in the driver), ``pinv``, ``cnn``,
    ``classifier``, ``rows`` (building the tables; these four summed over all
    workers and threads), ``wait`` (the driver waiting for workers or threads; runs
    with more than one),
    ``write`` (Parquet writer, manifest and engine: the rest of the driver's wall time)."""
    workers: int = 1
    """Blocks computed at once: Dask worker threads, or this process's block threads."""

    def __getattr__(self, name: str) -> Any:  # blocks_done, rows, real_time_factor, errors...
        if name == "run":
            raise AttributeError(name)
        return getattr(self.run, name)


class _Wrapped:
    """An iterable of blocks that forwards what :func:`~.run_blocks` asks of the one it
    wraps (its options, size, failures, statistics, files and formats), so that a wrapped
    reader is recorded and reported as the reader itself."""

    _FORWARDED = ("describe", "duration_hint", "errors", "stats", "source", "source_paths", "formats", "skip_source")

    def __init__(self, inner: Iterable[Any]):
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        if name in self._FORWARDED:
            return getattr(self.inner, name)
        raise AttributeError(name)


class _TimedReader(_Wrapped):
    def __init__(self, inner: Iterable[Any]):
        super().__init__(inner)
        self.seconds = 0.0

    def __iter__(self) -> Iterator[Any]:
        it = iter(self.inner)
        while True:
            t0 = time.perf_counter()
            try:
                block = next(it)
            except StopIteration:
                self.seconds += time.perf_counter() - t0
                return
            self.seconds += time.perf_counter() - t0
            yield block


class _Pipelined(_Wrapped):
    """Blocks whose results are computed ahead on an executor (``submit(fn, *args)`` ->
    future with ``result()`` and ``cancel()``: a ``dask.distributed.Client`` or a
    ``concurrent.futures`` executor). Blocks come out in input order; ``fn(block)``
    returns the block's precomputed result. At most ``depth`` results are pending."""

    def __init__(self, inner: Iterable[Any], submit: Callable[[Any], Any], depth: int, done: set[tuple[str, int]]):
        super().__init__(inner)
        self.submit, self.depth, self.done = submit, max(1, depth), done
        self.ready: dict[tuple[str, int], Any] = {}

    def __iter__(self) -> Iterator[Any]:
        window: collections.deque[tuple[Any, Any]] = collections.deque()
        try:
            for block in self.inner:
                window.append((block, None if block.key in self.done else self.submit(block)))
                if len(window) > self.depth:
                    yield self._next(window)
            while window:
                yield self._next(window)
        finally:
            for _, fut in window:
                if fut is not None:
                    fut.cancel()
            for fut in self.ready.values():
                fut.cancel()
            self.ready.clear()

    def _next(self, window: collections.deque[tuple[Any, Any]]) -> Any:
        block, fut = window.popleft()
        if fut is not None:
            self.ready[block.key] = fut
        return block

    def result(self, block: Any) -> Any:
        return self.ready.pop(block.key).result()


def _open_inputs(inputs: Any, block_seconds: float | None, read_options: dict[str, Any]) -> Any:
    from . import ArchiveSet, BlockReader, open_many

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if isinstance(inputs, (BlockReader, ArchiveSet)) or not isinstance(inputs, (list, tuple)):
        if read_options or block_seconds is not None:
            raise InvalidInputError(
                "read options (block_seconds, gaps, reference, ...) apply to paths; an opened reader or an "
                "iterable of blocks comes with its own, got "
                f"{sorted(read_options) + (['block_seconds'] if block_seconds is not None else [])}"
            )
        return inputs
    bad = [p for p in inputs if not isinstance(p, (str, os.PathLike))]
    if bad:
        raise InputTypeError(f"inputs must be archive paths, got {type(bad[0]).__name__}")
    if not inputs:
        raise InvalidInputError("inputs: no archive given")
    return open_many(
        inputs, block_seconds=DEFAULT_BLOCK_SECONDS if block_seconds is None else block_seconds, **read_options
    )


def _preflight(task: ProcessTask, blocks: Any) -> None:
    """Check every file's band spec (and the block length) before any work: a
    NoiseCapture archive, say, fails here and not after an hour of other files."""
    from . import ArchiveError, ArchiveSet, BlockReader, open_archive

    if isinstance(blocks, BlockReader):
        readers = [blocks]
    elif isinstance(blocks, ArchiveSet):
        readers = []
        for p in blocks.paths:
            try:
                readers.append(open_archive(p, **blocks.options))
            except ArchiveError:
                continue  # an unreadable file is reported by the set when its turn comes
    else:
        return  # a plain iterable of blocks: checked block by block
    pipe = loaded_pipeline(task)
    for r in readers:
        spec = pipe.band_spec(r.band_spec, where=r.path)
        _check_windows(task, spec, r.options.block_frames(spec), r.path)


def _physical_cores() -> int:
    from ..models import physical_cores

    return physical_cores()


def process(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | Iterable[Any],
    output: str | os.PathLike[str],
    *,
    classifier: str | os.PathLike[str],
    transcoder: str | os.PathLike[str] | None = None,
    windows: Windows = "both",
    top_k: int = 5,
    probabilities: bool = False,
    gap_rows: GapRows = "mark",
    block_seconds: float | None = None,
    n_threads: int | None = None,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    scheduler: Any = None,
    progress: bool = True,
    blocks_per_part: int = 16,
    resume: bool = True,
    **read_options: Any,
) -> ProcessSummary:
    """Classify third-octave archives into a Parquet dataset of predictions.

    ``inputs``: archive paths (any format :func:`~.open_archive` reads; a file
    that fails, unreadable or breaking a rule, or a block the models refuse, is
    reported in ``summary.errors`` with its position, the blocks before it are kept and
    the other files are processed), or an opened reader / ``open_many`` set / iterable
    of blocks. Out-of-range levels (a 999 sentinel) are masked like NaN and counted in
    ``summary.read_stats``. ``output``: the result directory (see :mod:`.writer`): new,
    empty, or an earlier run of the same call, which is then resumed (a killed run, or
    one given more files); another non-empty folder is refused, and so is a resume
    after an input file changed. ``classifier`` / ``transcoder``: registry
    names or ``.onnx`` paths (``"pinv:TARGET"`` for the PINV alone; None: the
    registry's default transcoder for the classifier). ``windows``, ``top_k``,
    ``probabilities``, ``gap_rows``: the rows (module docstring). ``block_seconds``
    (default 60) and ``read_options`` (``spec``, ``gaps``, ``duplicates``,
    ``reference``, ``spl_offset``, ``time_column``, ...) go to
    :func:`~.open_many`. Levels are dB re full scale unless
    ``reference``/``spl_offset`` say otherwise.

    Speed only (the rows do not change): ``n_threads`` (the threads of this process;
    None or 0: physical cores). A single process runs that many blocks at once, each
    through one-threaded ONNX Runtime sessions, which on 2 cores is about twice as fast
    as one block at a time through two-threaded sessions (``benchmarks/bench_block_threads.py``);
    with ``workers``/``scheduler`` each worker gives them to its sessions instead (None:
    physical cores divided among the local workers). ``batch_size``
    (chunks per ONNX Runtime run, default 8; None: one run per block), ``workers`` (a local
    Dask cluster of that many processes) or ``scheduler`` (a Dask scheduler address
    or ``distributed.Client``), ``blocks_per_part`` (blocks per committed part: the
    most a kill loses). ``progress``: a tqdm bar with ETA and x real time.

    Raises :class:`SpecMismatchError` before any work when an archive's band spec
    does not fit the transcoder (e.g. a 23-band NoiseCapture export), or the
    transcoder's output does not fit the classifier.
    """
    from . import read_manifest, run_blocks
    from .engine import require_archives
    from .writer import MANIFEST_NAME

    require_archives(progress)  # before any model is loaded or file written
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise InvalidInputError(f"workers must be an integer >= 1, got {workers!r}")
    if workers is not None and scheduler is not None:
        raise InvalidInputError("give workers (a local cluster) or scheduler (an existing one), not both")
    distributed = workers is not None or scheduler is not None
    block_threads = 1
    if distributed:
        if n_threads is None and workers is not None:
            n_threads = max(1, _physical_cores() // workers)  # the workers share this machine's cores
    else:
        from ..models import _check_n_threads

        block_threads, n_threads = _check_n_threads(n_threads), 1  # blocks in parallel, not ops
    pipelined = distributed or block_threads > 1
    task = make_task(
        classifier=classifier,
        transcoder=transcoder,
        windows=windows,
        top_k=top_k,
        probabilities=probabilities,
        gap_rows=gap_rows,
        n_threads=n_threads,
        batch_size=batch_size,
    )
    tr, clf = loaded_models(task)
    blocks = _open_inputs(inputs, block_seconds, read_options)
    _preflight(task, blocks)
    metadata = {
        "process": {
            "transcoder": tr.model_id,
            "transcoder_sha256": task.transcoder.sha256,
            "classifier": clf.model_id,
            "classifier_sha256": task.classifier.sha256,
            "band_spec": tr.input_spec.name,
            "mel_spec": tr.output_spec.name,
            **task.options.result_dict(),
            "group_seconds": _group_chunks(tr.input_spec) * tr.input_spec.chunk_duration,
            "labels": [[lb.index, lb.mid, lb.name] for lb in clf.labels],
        }
    }
    stages: collections.defaultdict[str, float] = collections.defaultdict(
        float, {"read": 0.0, "pinv": 0.0, "cnn": 0.0, "classifier": 0.0, "rows": 0.0}
    )
    reader = _TimedReader(blocks)
    t_start = time.perf_counter()  # reset once a cluster is up: its start-up is not the run's
    fn_seconds = 0.0

    def add(times: dict[str, float]) -> None:
        for k, v in times.items():
            stages[k] += v

    n_workers = 1
    if not pipelined:

        def fn(block: Any) -> Any:
            nonlocal fn_seconds
            t0 = time.perf_counter()
            table, times = _timed_block(block, task)
            add(times)
            fn_seconds += time.perf_counter() - t0
            return table

        run = run_blocks(
            reader,
            fn,
            output,
            progress=progress,
            blocks_per_part=blocks_per_part,
            metadata=metadata,
            resume=resume,
            on_block_error="skip_source",
        )
    else:
        with _block_executor(task, scheduler, workers, block_threads) as (submit, n_workers):
            done = (
                {
                    (e["source"], int(e["index"]))
                    for e in read_manifest(Path(output) / MANIFEST_NAME)
                    for e in e.get("blocks", [])
                }
                if resume
                else set()
            )
            t_start = time.perf_counter()
            pipe = _Pipelined(reader, submit, depth=2 * n_workers + 2, done=done)

            def fn(block: Any) -> Any:
                nonlocal fn_seconds
                t0 = time.perf_counter()
                table, times = pipe.result(block)
                add(times)
                fn_seconds += time.perf_counter() - t0
                return table

            run = run_blocks(
                pipe,
                fn,
                output,
                progress=progress,
                blocks_per_part=blocks_per_part,
                metadata=metadata,
                resume=resume,
                on_block_error="skip_source",
            )
    wall = time.perf_counter() - t_start
    stages["read"] = reader.seconds
    if pipelined:
        stages["wait"] = fn_seconds
    stages["write"] = max(0.0, wall - reader.seconds - fn_seconds)  # what is left of the driver's time
    return ProcessSummary(
        run=run, transcoder=tr.model_id, classifier=clf.model_id, stages=dict(stages), workers=n_workers
    )


@contextlib.contextmanager
def _block_executor(
    task: ProcessTask, scheduler: Any, workers: int | None, block_threads: int
) -> Iterator[tuple[Callable[[Any], Any], int]]:
    """``(submit(block) -> future of _timed_block's result, blocks computed at once)``: on
    a Dask cluster when ``scheduler`` or ``workers`` is given, else on ``block_threads``
    threads of this process (the models' ONNX Runtime sessions are safe to share)."""
    if scheduler is None and workers is None:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(block_threads, thread_name_prefix="spectral_transcoder-block") as pool:
            yield (lambda b: pool.submit(_timed_block, b, task)), block_threads
        return
    with _dask_client(scheduler, workers) as client:
        yield ((lambda b: client.submit(_timed_block, b, task, pure=False)), max(1, sum(client.nthreads().values())))


class _dask_client:
    """Context manager: a ``distributed.Client`` for ``scheduler`` (address or Client), or
    a local cluster of ``workers`` single-threaded processes; closes what it opened."""

    def __init__(self, scheduler: Any, workers: int | None):
        self.scheduler, self.workers = scheduler, workers
        self.owned: list[Any] = []

    def __enter__(self) -> Any:
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError as exc:
            raise InvalidInputError(
                "workers= / scheduler= need dask.distributed: pip install 'dask[distributed]'"
            ) from exc
        if self.scheduler is not None:
            if hasattr(self.scheduler, "submit"):
                return self.scheduler
            client = Client(str(self.scheduler))
            self.owned.append(client)
            return client
        import logging

        cluster = LocalCluster(
            n_workers=self.workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        )
        self.owned.append(cluster)
        client = Client(cluster)
        self.owned.append(client)
        return client

    def __exit__(self, *exc: Any) -> None:
        for x in reversed(self.owned):
            try:
                x.close()
            except Exception:  # noqa: BLE001 - closing must not hide the run's own error
                pass
