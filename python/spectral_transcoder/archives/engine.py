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
same when a run is resumed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ..errors import InvalidInputError
from .blocks import Block
from .writer import MANIFEST_NAME, RUN_NAME, ResultWriter, read_manifest

__all__ = ["run_blocks", "RunSummary", "read_results", "read_run_info", "LEADING_COLUMNS"]

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
    """Files that failed (from ``open_many``): path, position, message, blocks_read."""

    @property
    def real_time_factor(self) -> float:
        """Audio seconds processed per wall-clock second (``x real time``)."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else float("inf")


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
            f"the block function must return a pyarrow Table or a mapping of columns, got {type(result).__name__}")
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
            f"or window_start; it returned {list(cols)}")
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
    return {"frame_start": p.frame_start, "frame_stop": p.frame_stop, "segment": p.segment,
            "start": str(block.start) + "Z", "frames": block.n_frames, "valid": block.n_valid}


def run_blocks(
    blocks: Iterable[Block],
    fn: Callable[[Block], Any],
    output: str | os.PathLike,
    *,
    manifest: str | os.PathLike | None = None,
    progress: bool = True,
    blocks_per_part: int = 16,
    metadata: Mapping[str, Any] | None = None,
    total_seconds: float | None = None,
    resume: bool = True,
) -> RunSummary:
    """Run ``fn`` on every block and append its rows to the Parquet dataset ``output``.

    ``blocks``: any iterable of :class:`Block` (a reader from ``open_archive``, an
    ``open_many`` set, ...); its ``describe()`` (if any) is recorded with
    ``metadata`` as the run's options. ``output``: a directory (see
    :mod:`.writer`); ``manifest`` defaults to ``output/_manifest.jsonl``. A block whose
    key ``(source, index)`` the manifest lists is skipped, so re-running the same
    command resumes a killed run with no loss and no duplicates (``resume=False``
    refuses an existing output instead). ``blocks_per_part``: blocks per part file,
    i.e. the most work a kill can lose. ``progress``: a tqdm bar on stderr with the
    ETA and the speed in x real time (seconds of valid frames per wall second);
    ``total_seconds`` defaults to ``blocks.duration_hint()``.

    Returns a :class:`RunSummary` (with the failed files of an ``open_many`` set).
    """
    info: dict[str, Any] = {"options": {
        "input": blocks.describe() if hasattr(blocks, "describe") else None,
        "user": dict(metadata) if metadata is not None else {},
    }}
    try:
        from .. import __version__ as version
    except ImportError:  # pragma: no cover
        version = "unknown"
    info["package"] = f"spectral_transcoder {version}"
    json.dumps(info, default=str)  # fail early on metadata that cannot be recorded
    writer = ResultWriter(output, run_info=info, manifest=manifest, blocks_per_part=blocks_per_part,
                          resume=resume)
    summary = RunSummary(output=str(output))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        if total_seconds is None and hasattr(blocks, "duration_hint"):
            try:
                total_seconds = blocks.duration_hint()
            except Exception:  # noqa: BLE001 - only a progress hint
                total_seconds = None
        bar = tqdm(total=total_seconds, unit="s", unit_scale=True, desc="audio", dynamic_ncols=True,
                   file=sys.stderr, smoothing=0.1)
    t0 = time.perf_counter()
    seen: set[tuple[str, int]] = set()
    ok = False
    try:
        for block in blocks:
            key = block.key
            if key in seen:
                raise InvalidInputError(f"block {key} was given twice in one run")
            seen.add(key)
            if writer.is_done(key):
                summary.blocks_skipped += 1
                if bar is not None and bar.total is not None:
                    bar.total = max(bar.n, bar.total - block.data_seconds)  # keep the ETA about the work left
                    bar.refresh()
                continue
            table = _result_table(fn(block), block)
            try:
                writer.add(key, _block_info(block), table)
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
                bar.update(block.data_seconds)
                bar.set_postfix_str(f"{summary.audio_seconds / max(wall, 1e-9):.0f}x real time, "
                                    f"{summary.blocks_done} blocks", refresh=False)
        ok = True
    finally:
        try:
            writer.close()  # commits the blocks completed so far, even when fn raised
        finally:
            summary.wall_seconds = time.perf_counter() - t0
            if bar is not None:
                bar.close()
    if ok:
        summary.errors = [e.to_dict() if hasattr(e, "to_dict") else dict(e) for e in getattr(blocks, "errors", [])]
    return summary


def read_run_info(output: str | os.PathLike) -> dict[str, Any]:
    """The run's stored options (``_run.json``) without the schema."""
    info = json.loads((Path(output) / RUN_NAME).read_text())
    info.pop("schema", None)
    return info


def read_results(output: str | os.PathLike, *, manifest: str | os.PathLike | None = None) -> Any:
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
