"""Crash-safe Parquet output: part files plus a commit manifest.

An output is a directory that any Parquet reader opens as one dataset
(``pyarrow.dataset.dataset(path)``, ``pandas.read_parquet(path)``; files starting
with ``_`` or ``.`` are ignored by them):

- ``part-000000.parquet``, ``part-000001.parquet``, ...: each holds a group of
  blocks, **one row group per block**, and the run's options in its key-value
  metadata (``st.run``);
- ``_manifest.jsonl``: one JSON line per committed part, listing its blocks by
  ``(source, index)`` (the key of a block), its rows and its byte size;
- ``_run.json``: the run's options and the fixed schema;
- ``_lock``: held (``flock``) while a process writes, so two runs cannot mix.

**Commit protocol** (robust to ``kill -9`` at any instruction):

1. write the part to ``.part-N.parquet.tmp``, close it (footer), ``fsync`` it;
2. ``rename`` it to ``part-N.parquet`` (atomic) and ``fsync`` the directory;
3. append the manifest line and ``fsync`` the manifest.

The manifest is the truth: a block is done if and only if a complete manifest line
lists it. On start (resume), the writer cuts a torn last manifest line, deletes
``*.tmp`` files and every ``part-*.parquet`` no line lists (a kill between steps 2
and 3), and checks that every listed part exists with its recorded size. The
blocks of the dropped parts are simply redone: no loss, no duplicates. A kill
costs at most the blocks of one uncommitted part (``blocks_per_part``).
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import os
import re
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from .blocks import ArchiveError

__all__ = ["ResultWriter", "read_manifest", "MANIFEST_NAME", "RUN_NAME"]

MANIFEST_NAME = "_manifest.jsonl"
RUN_NAME = "_run.json"
LOCK_NAME = "_lock"
_PART_RE = re.compile(r"^part-(\d{6,})\.parquet$")
RUN_FORMAT = 1


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory fds: rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def read_manifest(path: str | os.PathLike, *, repair: bool = False) -> list[dict[str, Any]]:
    """The committed entries of a manifest. A torn last line (a kill while appending)
    is ignored, and cut from the file when ``repair``; a bad line before the last
    one is corruption and an error."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    entries: list[dict[str, Any]] = []
    good_end = 0
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:  # no newline: the append was cut short
            break
        line = data[pos:nl]
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict) or "blocks" not in entry:
                raise ValueError("not a manifest entry")
        except ValueError as exc:
            if data[nl + 1:].strip():
                raise ArchiveError(str(path), f"byte {pos}", f"corrupt manifest line: {exc}") from None
            break
        entries.append(entry)
        pos = good_end = nl + 1
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())
    return entries


class ResultWriter:
    """Appends per-block result tables to an output directory (see the module docstring).

    ``run_info`` (JSON-able) is stored in ``_run.json`` and every part's metadata; on
    resume its ``"options"`` must equal the stored ones. Use as a context manager, or
    call :meth:`close` (which commits the open part).
    """

    def __init__(self, output: str | os.PathLike, *, run_info: dict[str, Any],
                 manifest: str | os.PathLike | None = None, blocks_per_part: int = 16, resume: bool = True):
        if isinstance(blocks_per_part, bool) or not isinstance(blocks_per_part, int) or blocks_per_part < 1:
            raise InvalidInputError(f"blocks_per_part must be an integer >= 1, got {blocks_per_part!r}")
        self.dir = Path(output)
        if self.dir.exists() and not self.dir.is_dir():
            raise InvalidInputError(f"output {str(self.dir)!r} exists and is not a directory")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manifest_path = Path(manifest) if manifest is not None else self.dir / MANIFEST_NAME
        self.blocks_per_part = blocks_per_part
        self.run_info = run_info
        self._lock_fd = self._lock()
        try:
            self._recover(resume)
        except BaseException:
            self._unlock()
            raise
        self._part: Any = None  # (ParquetWriter, file object, tmp path, final path)
        self._pending: list[dict[str, Any]] = []
        self._pending_rows = 0

    # ------------------------------------------------------------------ setup
    def _lock(self) -> int | None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no protection against two writers
            return None
        fd = os.open(self.dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise InvalidInputError(f"output {str(self.dir)!r} is being written by another process") from None
        return fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def _recover(self, resume: bool) -> None:
        import pyarrow as pa

        run_path = self.dir / RUN_NAME
        entries = read_manifest(self.manifest_path, repair=True)
        existing = run_path.exists() or entries or any(_PART_RE.match(p.name) for p in self.dir.iterdir())
        if existing and not resume:
            raise InvalidInputError(
                f"output {str(self.dir)!r} already holds results; resume=True continues it, or choose a new output")
        self.schema = None
        if run_path.exists():
            stored = json.loads(run_path.read_text())
            if stored.get("format") != RUN_FORMAT:
                raise InvalidInputError(f"{run_path}: unsupported run format {stored.get('format')!r}")
            old, new = stored.get("options"), self.run_info.get("options")
            if json.dumps(old, sort_keys=True, default=str) != json.dumps(new, sort_keys=True, default=str):
                raise InvalidInputError(
                    f"output {str(self.dir)!r} was written with other options; resuming would mix them.\n"
                    f"  stored: {json.dumps(old, sort_keys=True, default=str)}\n"
                    f"  now:    {json.dumps(new, sort_keys=True, default=str)}")
            if stored.get("schema"):
                self.schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(stored["schema"])))
        self.done: set[tuple[str, int]] = set()
        committed: dict[str, int] = {}
        for e in entries:
            for b in e["blocks"]:
                self.done.add((b["source"], int(b["index"])))
            if e.get("part"):
                committed[e["part"]] = int(e["bytes"])
        self.committed_entries = len(entries)
        # drop what no manifest line lists: temporary files and parts renamed but not recorded
        last = -1
        for p in sorted(self.dir.iterdir()):
            m = _PART_RE.match(p.name)
            if p.name.endswith(".tmp"):
                p.unlink()
            elif m:
                if p.name not in committed:
                    p.unlink()
                else:
                    last = max(last, int(m.group(1)))
        _fsync_dir(self.dir)
        for name, size in committed.items():
            path = self.dir / name
            if not path.exists() or path.stat().st_size != size:
                raise ArchiveError(str(path), None, "a committed part is missing or changed since it was written; "
                                   "the output is damaged (remove the manifest line or start a new output)")
            m = _PART_RE.match(name)
            if m:
                last = max(last, int(m.group(1)))
        self._next_part = last + 1

    # ------------------------------------------------------------------ writing
    def is_done(self, key: tuple[str, int]) -> bool:
        return key in self.done

    def _save_run(self) -> None:
        info = dict(self.run_info)
        info["format"] = RUN_FORMAT
        info["schema"] = base64.b64encode(self.schema.serialize().to_pybytes()).decode() if self.schema else None
        _atomic_write(self.dir / RUN_NAME, json.dumps(info, sort_keys=True, indent=1, default=str).encode())

    def _conform(self, table: Any) -> Any:
        """Cast ``table`` to the run's schema (fixing it on first use)."""
        if self.schema is None:
            self.schema = table.schema.remove_metadata()
            self._save_run()
            return table
        if table.schema.names != self.schema.names:
            raise InvalidInputError(
                f"the block function returned columns {table.schema.names}, but this run's schema is "
                f"{self.schema.names}; the schema is fixed per run")
        try:
            return table.cast(self.schema)
        except Exception as exc:  # noqa: BLE001 - ArrowInvalid / ArrowNotImplementedError
            raise InvalidInputError(f"the block function's columns do not fit the run's schema {self.schema}: {exc}") \
                from exc

    def add(self, key: tuple[str, int], info: dict[str, Any], table: Any | None) -> None:
        """Record block ``key`` with its result rows (one row group); None or empty = no rows."""
        if key in self.done or any((b["source"], b["index"]) == key for b in self._pending):
            raise InvalidInputError(f"block {key} was given twice (is a file listed twice under two names?)")
        rows = 0
        if table is not None and table.num_rows:
            table = self._conform(table)
            if self._part is None:
                self._open_part()
            self._part[0].write_table(table, row_group_size=table.num_rows)
            rows = table.num_rows
        elif not (self.dir / RUN_NAME).exists():
            self._save_run()
        self._pending.append({"source": key[0], "index": int(key[1]), "rows": rows, **info})
        self._pending_rows += rows
        if len(self._pending) >= self.blocks_per_part:
            self.commit()

    def _open_part(self) -> None:
        import pyarrow.parquet as pq

        name = f"part-{self._next_part:06d}.parquet"
        self._next_part += 1
        tmp = self.dir / f".{name}.tmp"
        fh = open(tmp, "wb")
        meta = {"st.run": json.dumps(self.run_info, sort_keys=True, default=str)}
        writer = pq.ParquetWriter(fh, self.schema.with_metadata(meta))
        self._part = (writer, fh, tmp, self.dir / name)

    def commit(self) -> None:
        """Make the pending blocks durable (steps 1-3 of the protocol)."""
        if not self._pending:
            return
        entry: dict[str, Any] = {"part": None, "bytes": 0, "rows": self._pending_rows, "blocks": self._pending}
        if self._part is not None:
            writer, fh, tmp, final = self._part
            writer.close()
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            os.replace(tmp, final)
            _fsync_dir(self.dir)
            entry["part"], entry["bytes"] = final.name, final.stat().st_size
            self._part = None
        entry["committed_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        line = (json.dumps(entry, sort_keys=True, default=str) + "\n").encode()
        with open(self.manifest_path, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        for b in self._pending:
            self.done.add((b["source"], b["index"]))
        self.committed_entries += 1
        self._pending, self._pending_rows = [], 0

    def close(self) -> None:
        """Commit the open part and release the output."""
        try:
            self.commit()
        finally:
            self._unlock()

    def abort(self) -> None:
        """Drop the uncommitted part (its blocks will be redone) and release the output."""
        try:
            if self._part is not None:
                writer, fh, tmp, _ = self._part
                try:
                    writer.close()
                finally:
                    fh.close()
                    tmp.unlink(missing_ok=True)
                self._part = None
            self._pending = []
        finally:
            self._unlock()

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close()
