"""The resumable block engine: stream blocks, call a per-block function, append results.

:func:`run_blocks` is deliberately small and pure in its contract, so that the same
per-block function can later run under another driver (e.g. Dask): it reads
blocks, skips those the manifest lists as done, calls ``fn(block)``, and hands the
rows to :class:`~.writer.ResultWriter`, which commits them crash-safely.

**The block function** ``fn(block) -> rows`` returns a ``pyarrow.Table`` /
``RecordBatch`` or a mapping of equal-length columns (1-D arrays or lists; a 2-D
array becomes a fixed-size list column, e.g. a probability vector per row; a
scalar is repeated). One row per output window. It must give the window's start,
as ``offset_s`` (seconds from ``block.start``) or ``window_start`` (UTC
``datetime64``), and ``window_s`` (its length in seconds). ``None`` or zero rows
records the block as done with no rows. The engine puts these columns first, in
this order:

==================  ======================  ==================================================
``source``          string                  the block's source (file) id
``sensor``          string
``block``           int64                   the block's index in its source
``window_start``    timestamp[ns, UTC]      UTC start of the output window
``window_s``        float64                 window length (s)
``level_reference`` string                  ``dBFS``, ``SPL`` or ``auto``
``level_offset_db`` float64                 dB added to the stored levels
...                                         the function's other columns, in its order
==================  ======================  ==================================================

The schema is fixed by the first non-empty result and every later one is cast to
it. The run's options (the reader's description: gaps, reference, block length,
band spec...; and ``metadata``, where the caller puts e.g. the model ids) are
stored in ``_run.json`` and in every part's key-value metadata, and must be the
same when a run is resumed (a refusal names each setting that differs).

**Changed inputs.** Each manifest line records, for the source files of its blocks,
their size, modification time and a sha256 of their first and last 64 KiB
(:func:`input_fingerprint`). A resume first compares every input file that has
committed blocks with what was recorded, and refuses, naming each changed file and
what changed, rather than silently keeping the results of the old content next to
those of the new (the output is append-only: rows already committed cannot be
redone in place).

**Failures.** A file that cannot be read is reported in ``RunSummary.errors`` (by
``open_many``). With ``on_block_error="skip_source"``, a block that the block
function refuses (a :class:`~spectral_transcoder.errors.SpectralTranscoderError`)
also fails only its source: the error is reported with the block and its time, the
blocks before it stay committed, the rest of that source is skipped and the other
sources go on.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .._validation import require_module
from ..errors import InvalidInputError, SpectralTranscoderError
from .blocks import ArchiveError, Block, _fmt_ns
from .writer import MANIFEST_NAME, RUN_NAME, ResultWriter, read_manifest

__all__ = [
    "run_blocks",
    "RunSummary",
    "read_results",
    "read_run_info",
    "input_fingerprint",
    "require_archives",
    "LEADING_COLUMNS",
]

LEADING_COLUMNS = ("source", "sensor", "block", "window_start", "window_s", "level_reference", "level_offset_db")
_CONSUMED = ("offset_s", "window_start", "window_s")


@dataclass
class RunSummary:
    """What a run did."""

    output: str
    blocks_done: int = 0
    """Blocks processed by this call."""
    blocks_skipped: int = 0
    """Blocks found done in the manifest (a resumed run)."""
    rows: int = 0
    audio_seconds: float = 0.0
    """Seconds of valid frames processed by this call."""
    wall_seconds: float = 0.0
    errors: list[dict[str, Any]] = field(default_factory=list)
    """Files that failed: ``path``, ``position``, ``message``, ``blocks_read`` (its blocks
    given before the failure). From ``open_many`` (unreadable files, broken rules), and
    blocks refused by the block function under ``on_block_error="skip_source"``."""
    read_stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Source -> what its reader met (:class:`~.blocks.ReadStats` as a dict, with ``path``):
    rows, masked gap frames, bad rows, out-of-range rows and the first one's position..."""

    @property
    def real_time_factor(self) -> float:
        """Audio seconds processed per wall-clock second (``x real time``)."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else float("inf")


def require_archives(progress: bool = False) -> None:
    """Raise :class:`~spectral_transcoder.errors.MissingDependencyError` naming the pip extra
    when the Parquet writer (or the progress bar) is not installed: before any file is
    written, so that a missing package leaves no lock or half-made output behind."""
    require_module("pyarrow", "archives", "Parquet output")
    if progress:
        require_module("tqdm", "archives", "the progress bar (progress=False / --no-progress goes without)")


_SAMPLE_BYTES = 1 << 16


def input_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What an input file is now: ``size`` (bytes), ``mtime_ns`` and ``sample_sha256``, the
    sha256 of its first and last 64 KiB. Cheap whatever the size (two reads), and enough to
    tell a re-export, an append or a truncation; a change in the middle of a large file with
    the same size, time stamp and ends goes unseen."""
    st = os.stat(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(_SAMPLE_BYTES))
        if st.st_size > _SAMPLE_BYTES:
            f.seek(max(_SAMPLE_BYTES, st.st_size - _SAMPLE_BYTES))
            h.update(f.read(_SAMPLE_BYTES))
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns), "sample_sha256": h.hexdigest()}


def _what_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The differences between two fingerprints, in words (empty: the same file)."""
    out = []
    if old.get("size") != new.get("size"):
        out.append(f"size was {old.get('size')} bytes, now {new.get('size')}")
    if old.get("sample_sha256") != new.get("sample_sha256"):
        out.append("its content differs (sha256 of its first and last 64 KiB)")
    if old.get("mtime_ns") != new.get("mtime_ns"):
        was, now = (
            _fmt_ns(int(x)) if isinstance(x, int) else str(x) for x in (old.get("mtime_ns"), new.get("mtime_ns"))
        )
        out.append(f"modified {was}, now {now}")
    return out


class _Inputs:
    """The input files behind the blocks' sources: their fingerprints (taken once, when a
    source is first met) and the check against the ones an earlier run recorded."""

    def __init__(self, blocks: Any, recorded: Mapping[str, Mapping[str, Any]], done: set[tuple[str, int]]):
        self.paths: dict[str, str | None] = {}  # source -> its file (None: not a file)
        if hasattr(blocks, "source_paths"):
            try:
                self.paths = dict(blocks.source_paths())
            except Exception:  # noqa: BLE001 - only a help: sources are then looked up one by one
                self.paths = {}
        self.recorded, self.done = recorded, done
        self.fingerprints: dict[str, dict[str, Any] | None] = {}

    def path(self, source: str) -> str | None:
        if source not in self.paths:
            self.paths[source] = source if os.path.isfile(source) else None
        return self.paths[source]

    def fingerprint(self, source: str) -> dict[str, Any] | None:
        if source not in self.fingerprints:
            p = self.path(source)
            try:
                self.fingerprints[source] = input_fingerprint(p) if p is not None else None
            except OSError:
                self.fingerprints[source] = None  # the reader reports an unreadable file itself
        return self.fingerprints[source]

    def changed(self, source: str) -> str | None:
        """What changed in ``source``'s file since an earlier run read it, in words; None when
        unchanged, or unknown (no record, or not a file)."""
        old = self.recorded.get(source)
        new = self.fingerprint(source) if old is not None else None
        if old is None or new is None:
            return None
        what = _what_changed(old, new)
        if not what:
            return None
        n = sum(1 for s, _ in self.done if s == source)
        text = (
            f"changed since this output's earlier run read it ({'; '.join(what)}); "
            f"{n} of its blocks were computed from the old content"
        )
        if what == [w for w in what if w.startswith("modified")]:
            ns = int(old["mtime_ns"])
            path = shlex.quote(str(self.path(source)))
            text += (
                f" (only its modification time differs: if the content is the same, "
                f"`touch -d @{ns // 1_000_000_000}.{ns % 1_000_000_000:09d} {path}` restores it)"
            )
        return text

    def check_all(self) -> None:
        """Refuse, before any work, when a known input changed since its blocks were written."""
        bad = [
            f"{self.path(src)}: {msg}"
            for src, msg in ((src, self.changed(src)) for src in list(self.paths) if src in self.recorded)
            if msg
        ]
        if bad:
            raise InvalidInputError(
                "resuming would mix results of two versions of an input file:\n  "
                + "\n  ".join(bad)
                + "\nWrite to a new output folder, or put the file(s) back as they were"
            )


def _read_seconds(block: Block) -> float:
    """Seconds of the input file a block stands for (its rows: valid, bad or duplicate),
    the unit of the readers' ``duration_hint``, so that the progress bar ends on its total."""
    p = block.position
    return max(0, p.row_stop - p.row_start) * block.frame_period


def _input_label(blocks: Any) -> str:
    """The progress bar's label: what is being read."""
    try:
        formats = set(blocks.formats()) if hasattr(blocks, "formats") else set()
    except Exception:  # noqa: BLE001 - only a label
        formats = set()
    if not formats:
        return "blocks"
    if formats == {"audio"}:
        return "audio"
    return f"{formats.pop()} archives" if len(formats) == 1 else "archives"


def _read_stats(blocks: Any, inputs: _Inputs) -> dict[str, dict[str, Any]]:
    stats = getattr(blocks, "stats", None)
    if stats is None:
        return {}
    if not isinstance(stats, Mapping):  # one reader
        stats = {getattr(blocks, "source", "?"): stats}
    out = {}
    for src, st in stats.items():
        d = st.to_dict() if hasattr(st, "to_dict") else dict(st)
        out[str(src)] = {"path": inputs.path(str(src)) or str(src), **d}
    return out


def _column(name: str, value: Any, n: int | None) -> tuple[Any, int | None]:
    import pyarrow as pa

    if isinstance(value, (pa.Array, pa.ChunkedArray)):
        return value, len(value)
    if np.isscalar(value) or value is None:
        return ("scalar", value), n
    a = np.asarray(value)
    if a.ndim == 0:
        return ("scalar", a.item()), n
    if a.ndim == 1:
        return (pa.array(a) if a.dtype != object else pa.array(list(value))), len(a)
    if a.ndim == 2:
        flat = pa.array(np.ascontiguousarray(a).reshape(-1))
        return pa.FixedSizeListArray.from_arrays(flat, a.shape[1]), a.shape[0]
    raise InvalidInputError(f"block function: column {name!r} has {a.ndim} dimensions (at most 2)")


def _result_table(result: Any, block: Block) -> Any | None:
    """The block function's result -> the output table (leading columns first), None if empty."""
    import pyarrow as pa

    if result is None:
        return None
    if isinstance(result, pa.RecordBatch):
        result = pa.Table.from_batches([result])
    if isinstance(result, pa.Table):
        cols: dict[str, Any] = {name: result.column(name) for name in result.column_names}
        n: int | None = result.num_rows
    elif isinstance(result, Mapping):
        cols, n = {}, None
        for name, value in result.items():
            col, m = _column(str(name), value, n)
            if not (isinstance(col, tuple) and col[0] == "scalar"):
                if n is not None and m != n:
                    raise InvalidInputError(f"block function: column {name!r} has {m} rows, others have {n}")
                n = m
            cols[str(name)] = col
    else:
        raise InvalidInputError(
            f"the block function must return a pyarrow Table or a mapping of columns, got {type(result).__name__}"
        )
    if n is None:
        raise InvalidInputError("block function: no column with one value per window (all scalars)")
    if n == 0:
        return None
    for name, col in cols.items():
        if isinstance(col, tuple):
            cols[name] = pa.array([col[1]] * n)
    if "window_s" not in cols or ("offset_s" in cols) == ("window_start" in cols):
        raise InvalidInputError(
            "the block function must return window_s and exactly one of offset_s (seconds from block.start) "
            f"or window_start; it returned {list(cols)}"
        )
    clash = [c for c in LEADING_COLUMNS if c in cols and c not in _CONSUMED]
    if clash:
        raise InvalidInputError(f"block function: columns {clash} are reserved (the engine adds them)")
    start_ns = int(block.start.astype("datetime64[ns]").astype(np.int64))
    if "offset_s" in cols:
        off = np.asarray(cols["offset_s"].to_numpy(zero_copy_only=False), dtype=np.float64)
        ws = start_ns + np.rint(off * 1e9).astype(np.int64)
    else:
        w = cols["window_start"]
        if not pa.types.is_timestamp(w.type):
            raise InvalidInputError(f"block function: window_start must hold UTC times, got {w.type}")
        ws = w.cast(pa.timestamp("ns", tz="UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False)
    ref = block.level_reference
    out = {
        "source": pa.array([block.source] * n, pa.string()),
        "sensor": pa.array([block.sensor] * n, pa.string()),
        "block": pa.array(np.full(n, block.position.index, dtype=np.int64)),
        "window_start": pa.array(np.asarray(ws, dtype=np.int64), pa.int64()).cast(pa.timestamp("ns", tz="UTC")),
        "window_s": cols["window_s"].cast(pa.float64()),
        "level_reference": pa.array([ref.mode] * n, pa.string()),
        "level_offset_db": pa.array(np.full(n, ref.offset_db, dtype=np.float64)),
    }
    for name, col in cols.items():
        if name not in _CONSUMED:
            out[name] = col
    return pa.table(out)


def _block_info(block: Block) -> dict[str, Any]:
    p = block.position
    return {
        "frame_start": p.frame_start,
        "frame_stop": p.frame_stop,
        "segment": p.segment,
        "start": str(block.start) + "Z",
        "frames": block.n_frames,
        "valid": block.n_valid,
    }


def run_blocks(
    blocks: Iterable[Block],
    fn: Callable[[Block], Any],
    output: str | os.PathLike[str],
    *,
    manifest: str | os.PathLike[str] | None = None,
    progress: bool = True,
    blocks_per_part: int = 16,
    metadata: Mapping[str, Any] | None = None,
    total_seconds: float | None = None,
    resume: bool = True,
    on_block_error: Literal["raise", "skip_source"] = "raise",
    progress_label: str | None = None,
) -> RunSummary:
    """Run ``fn`` on every block and append its rows to the Parquet dataset ``output``.

    ``blocks``: any iterable of :class:`Block` (a reader from ``open_archive``, an
    ``open_many`` set, ...); its ``describe()`` (if any) is recorded with
    ``metadata`` as the run's options. ``output``: a directory (see
    :mod:`.writer`: new, empty, or an earlier run); ``manifest`` defaults to
    ``output/_manifest.jsonl``. A block whose key ``(source, index)`` the manifest lists
    is skipped, so re-running the same command resumes a killed run with no loss and no
    duplicates (``resume=False`` refuses an existing output instead); an input file
    that changed since its blocks were written is refused (module docstring).
    ``blocks_per_part``: blocks per part file, i.e. the most work a kill can lose.
    ``on_block_error``: ``"raise"`` stops the run at an error of ``fn`` (the blocks
    before it stay committed); ``"skip_source"`` fails only the block's source (module
    docstring). ``progress``: a tqdm bar on stderr, labelled by the input kind
    (``progress_label`` overrides), in seconds of input with the ETA and the speed in x
    real time (seconds of valid frames per wall second); ``total_seconds`` defaults to
    ``blocks.duration_hint()``.

    Returns a :class:`RunSummary` (with the failed files and the readers' statistics).
    """
    if on_block_error not in ("raise", "skip_source"):
        raise InvalidInputError(f"on_block_error must be 'raise' or 'skip_source', got {on_block_error!r}")
    require_archives(progress)
    info: dict[str, Any] = {
        "options": {
            "input": blocks.describe() if hasattr(blocks, "describe") else None,
            "user": dict(metadata) if metadata is not None else {},
        }
    }
    try:
        from .. import __version__ as version
    except ImportError:  # pragma: no cover
        version = "unknown"
    info["package"] = f"spectral_transcoder {version}"
    json.dumps(info, default=str)  # fail early on metadata that cannot be recorded
    if progress and total_seconds is None and hasattr(blocks, "duration_hint"):
        try:
            total_seconds = blocks.duration_hint()
        except Exception:  # noqa: BLE001 - only a progress hint
            total_seconds = None
    writer = ResultWriter(output, run_info=info, manifest=manifest, blocks_per_part=blocks_per_part, resume=resume)
    summary = RunSummary(output=str(output))
    inputs = _Inputs(blocks, writer.inputs, writer.done)
    failed: dict[str, dict[str, Any]] = {}  # source -> its failure (on_block_error="skip_source")
    given: dict[str, int] = {}  # source -> blocks of it met so far
    bar = None
    t0 = time.perf_counter()
    ok = False
    try:  # from here on, every way out releases the output (and its lock)
        inputs.check_all()
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=total_seconds,
                unit="s",
                unit_scale=True,
                desc=progress_label or _input_label(blocks),
                dynamic_ncols=True,
                file=sys.stderr,
                smoothing=0.1,
            )
        seen: set[tuple[str, int]] = set()
        for block in blocks:
            key = block.key
            if key in seen:
                raise InvalidInputError(f"block {key} was given twice in one run")
            seen.add(key)
            if block.source in failed:
                continue  # the rest of a failed source (blocks read ahead before it failed)
            if block.source not in given:
                given[block.source] = 0
                changed = inputs.changed(block.source)  # a source that check_all could not name
                if changed:
                    raise ArchiveError(
                        inputs.path(block.source) or block.source,
                        None,
                        changed + "; resuming would mix results of two versions of the file. "
                        "Write to a new output folder, or put the file back as it was",
                    )
            given[block.source] += 1
            if writer.is_done(key):
                summary.blocks_skipped += 1
                if bar is not None and bar.total is not None:
                    bar.total = max(bar.n, bar.total - _read_seconds(block))  # keep the ETA about the work left
                    bar.refresh()
                continue
            try:
                table = _result_table(fn(block), block)
            except SpectralTranscoderError as exc:
                if on_block_error == "raise":
                    raise
                failed[block.source] = {
                    "path": inputs.path(block.source) or block.source,
                    "position": f"block {block.position.index} ({_fmt_ns(int(block.start.astype(np.int64)))})",
                    "message": str(exc),
                    "blocks_read": given[block.source] - 1,
                }
                if hasattr(blocks, "skip_source"):
                    blocks.skip_source(block.source)  # stop reading it
                continue
            try:
                writer.add(key, _block_info(block), table, input_fingerprint=inputs.fingerprint(block.source))
            except InvalidInputError:
                raise
            except BaseException:
                writer.abort()  # the open part may be damaged: its blocks will be redone
                raise
            summary.blocks_done += 1
            summary.rows += 0 if table is None else table.num_rows
            summary.audio_seconds += block.data_seconds
            if bar is not None:
                wall = time.perf_counter() - t0
                bar.update(_read_seconds(block))
                bar.set_postfix_str(
                    f"{summary.audio_seconds / max(wall, 1e-9):.0f}x real time, {summary.blocks_done} blocks",
                    refresh=False,
                )
        ok = True
    finally:
        try:
            writer.close()  # commits the blocks completed so far, even when fn raised
        finally:
            summary.wall_seconds = time.perf_counter() - t0
            if bar is not None:
                if ok and bar.total is not None:
                    bar.n = bar.total  # done: rows left out between segments or read by a failed file count too
                    bar.refresh()
                bar.close()
    if ok:
        summary.errors = [e.to_dict() if hasattr(e, "to_dict") else dict(e) for e in getattr(blocks, "errors", [])]
        summary.errors += list(failed.values())
        summary.read_stats = _read_stats(blocks, inputs)
    return summary


def read_run_info(output: str | os.PathLike[str]) -> dict[str, Any]:
    """The run's stored options (``_run.json``) without the schema."""
    info: dict[str, Any] = json.loads((Path(output) / RUN_NAME).read_text())
    info.pop("schema", None)
    return info


def read_results(output: str | os.PathLike[str], *, manifest: str | os.PathLike[str] | None = None) -> Any:
    """All committed rows of ``output`` as one ``pyarrow.Table``, in commit order.

    Only parts listed in the manifest are read, so this is exact even after a kill
    that was not resumed yet. (For outputs larger than memory, open the directory
    with ``pyarrow.dataset`` instead, after a completed or resumed run.)
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(output)
    entries = read_manifest(Path(manifest) if manifest is not None else out / MANIFEST_NAME)
    tables = [pq.read_table(out / e["part"]) for e in entries if e.get("part")]
    if not tables:
        run = out / RUN_NAME
        if run.exists():
            import base64

            s = json.loads(run.read_text()).get("schema")
            if s:
                return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(s))).empty_table()
        return pa.table({})
    return pa.concat_tables(t.replace_schema_metadata(None) for t in tables)
