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
- ``_lock``: held (``flock``) while a process writes, so two runs cannot mix; removed
  when the run ends, whether it succeeds or fails (a ``kill -9`` leaves it, harmlessly:
  the kernel releases the ``flock``).

**Ownership.** An output folder is new, empty, or an earlier run (it holds ``_run.json``
or the manifest): a non-empty folder that is neither is refused before anything is
written, so ``-o .`` or ``-o ~/data`` never mixes results with the user's files. Each
output has a random ``run_id`` (in ``_run.json``, kept across resumes); its temporary
files are named ``.st-RUNID-*.tmp`` and every part carries it in its key-value metadata
(``st.run_id``). The writer only ever deletes files that it can prove are its own.

**Commit protocol** (robust to ``kill -9`` at any instruction):

1. write the part to ``.st-RUNID-part-N.parquet.tmp``, close it (footer), ``fsync`` it;
2. ``rename`` it to ``part-N.parquet`` (atomic) and ``fsync`` the directory;
3. append the manifest line and ``fsync`` the manifest.

The manifest is the truth: a block is done if and only if a complete manifest line
lists it. On start (resume), the writer cuts a torn last manifest line, deletes this
run's ``.st-RUNID-*.tmp`` files and every ``part-*.parquet`` that no line lists but
whose ``st.run_id`` is this run's (a kill between steps 2 and 3), and checks that
every listed part exists with its recorded size. Any other file is left alone (a
``part-*.parquet`` of someone else's, with a warning, since Parquet readers of the
folder would read it). The blocks of the dropped parts are simply redone: no loss,
no duplicates. A kill costs at most the blocks of one uncommitted part
(``blocks_per_part``).

**Inputs.** A manifest line may hold ``inputs``: for each source file of its blocks, the
``size``, ``mtime_ns`` and ``sample_sha256`` (sha256 of its first and last 64 KiB) the
file had when the run read it (see :func:`~.engine.input_fingerprint`), so that a resume
can tell that a file changed since its blocks were written.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import os
import re
import secrets
import warnings
from pathlib import Path
from typing import Any

from .._io import atomic_write_bytes, fsync_dir, replace_file
from ..errors import InvalidInputError
from .blocks import ArchiveError

__all__ = ["ResultWriter", "read_manifest", "describe_differences", "MANIFEST_NAME", "RUN_NAME"]

MANIFEST_NAME = "_manifest.jsonl"
RUN_NAME = "_run.json"
LOCK_NAME = "_lock"
_PART_RE = re.compile(r"^part-(\d{6,})\.parquet$")
_TMP_RE = re.compile(r"^\.st-([0-9a-f]{16})-.+\.tmp$")
RUN_ID_KEY = "st.run_id"
"""Key of the run id in every part's key-value metadata: the proof that a part is this run's."""
RUN_FORMAT = 1
_MISSING = object()


def _tmp_name(run_id: str, name: str) -> str:
    """The temporary name of ``name`` for run ``run_id`` (``.st-RUNID-NAME.tmp``)."""
    return f".st-{run_id}-{name}.tmp"


def read_manifest(path: str | os.PathLike[str], *, repair: bool = False) -> list[dict[str, Any]]:
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
            if data[nl + 1 :].strip():
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


def _brief(value: Any) -> str:
    """A short rendering of one option value for a difference report."""
    if value is _MISSING:
        return "(not set)"
    if isinstance(value, (list, tuple)):
        return f"{len(value)} items"
    if isinstance(value, dict):
        return f"{len(value)} settings"
    if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value):
        return repr(value[:12] + "...")  # a sha256: its start tells two files apart
    text = repr(value)
    return text if len(text) <= 72 else text[:69] + "..."


def _differences(old: Any, new: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any, Any]]:
    """The leaves where two JSON-like option trees differ: ``(path, old, new)``."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[tuple[tuple[str, ...], Any, Any]] = []
        for k in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(k, _MISSING), new.get(k, _MISSING), (*path, str(k)))
        return out
    same = (
        json.dumps(old, sort_keys=True, default=str) == json.dumps(new, sort_keys=True, default=str)
        if old is not _MISSING and new is not _MISSING
        else old is new
    )
    return [] if same else [(path, old, new)]


# Containers whose names only add noise to a difference report ("user.process.transcoder" -> "transcoder").
_NOISE = (("user", "process"), ("user",), ("input", "block_options"), ("input", "reader_options"), ("input",))


def describe_differences(old: Any, new: Any, limit: int = 12) -> list[str]:
    """One line per differing setting, ``"NAME: was X, now Y"`` (lists by their length, long
    values cut), at most ``limit`` lines: what a user needs to see, not the two whole trees."""
    lines = []
    for path, a, b in _differences(old, new):
        for prefix in _NOISE:
            if path[: len(prefix)] == prefix and len(path) > len(prefix):
                path = path[len(prefix) :]
                break
        name = ".".join(path) or "options"
        if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            n = sum(json.dumps(x, default=str) != json.dumps(y, default=str) for x, y in zip(a, b))
            lines.append(f"{name}: {n} of {len(a)} items differ")
        else:
            lines.append(f"{name}: was {_brief(a)}, now {_brief(b)}")
    if len(lines) > limit:
        lines = [*lines[:limit], f"... and {len(lines) - limit} more"]
    return lines


def _folder_is_not_ours(folder: Path, manifest: Path) -> bool:
    """True when ``folder`` holds files but no earlier run (no ``_run.json``, no manifest).
    A lock file and run-named temporary files (a run killed while it claimed the folder)
    do not count: they are this package's own."""
    if (folder / RUN_NAME).exists() or manifest.exists():
        return False
    return any(p.name != LOCK_NAME and not _TMP_RE.match(p.name) for p in folder.iterdir())


class ResultWriter:
    """Appends per-block result tables to an output directory (see the module docstring).

    ``run_info`` (JSON-able) is stored in ``_run.json`` and every part's metadata; on
    resume its ``"options"`` must equal the stored ones. Use as a context manager, or
    call :meth:`close` (which commits the open part). A non-empty folder that is not an
    earlier run is refused; ``_lock`` is removed on every way out but ``kill -9``.
    """

    def __init__(
        self,
        output: str | os.PathLike[str],
        *,
        run_info: dict[str, Any],
        manifest: str | os.PathLike[str] | None = None,
        blocks_per_part: int = 16,
        resume: bool = True,
    ):
        if isinstance(blocks_per_part, bool) or not isinstance(blocks_per_part, int) or blocks_per_part < 1:
            raise InvalidInputError(f"blocks_per_part must be an integer >= 1, got {blocks_per_part!r}")
        self.dir = Path(output)
        if self.dir.exists() and not self.dir.is_dir():
            raise InvalidInputError(f"output {str(self.dir)!r} exists and is not a directory")
        self.manifest_path = Path(manifest) if manifest is not None else self.dir / MANIFEST_NAME
        created = not self.dir.exists()
        # Checked before the lock file is created, so that a refused folder is left untouched.
        if not created and _folder_is_not_ours(self.dir, self.manifest_path):
            raise InvalidInputError(self._not_ours())
        self.dir.mkdir(parents=True, exist_ok=True)
        self.blocks_per_part = blocks_per_part
        self.run_info = run_info
        self._part: Any = None  # (ParquetWriter, file object, tmp path, final path)
        self._pending: list[dict[str, Any]] = []
        self._pending_rows = 0
        self._pending_inputs: dict[str, dict[str, Any]] = {}
        self._lock_fd: int | None = None
        try:
            self._lock_fd = self._lock()
            if _folder_is_not_ours(self.dir, self.manifest_path):  # again, under the lock
                raise InvalidInputError(self._not_ours())
            self._recover(resume)
            if not (self.dir / RUN_NAME).exists() or self._run_id_is_new:
                self._save_run()  # claims the folder for this run (and records the run id)
        except BaseException:
            self._unlock()
            if created:
                try:
                    self.dir.rmdir()  # a folder this call created and left empty goes too
                except OSError:
                    pass
            raise

    def _not_ours(self) -> str:
        return (
            f"output {str(self.dir)!r} is not empty and holds no earlier run of this command (no {RUN_NAME} "
            f"or {self.manifest_path.name}); nothing was written or deleted there. Choose a new or empty "
            "folder for the results"
        )

    # ------------------------------------------------------------------ setup
    def _lock(self) -> int | None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no protection against two writers
            return None
        path = self.dir / LOCK_NAME
        busy = f"output {str(self.dir)!r} is being written by another process"
        for _ in range(20):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise InvalidInputError(busy) from None
            # The holder before us unlinks the file before it releases the lock: if the path
            # no longer names the file we locked, we hold a lock nobody else will see. Retry.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)
        raise InvalidInputError(busy)

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            try:
                (self.dir / LOCK_NAME).unlink()  # while still held: see _lock
            except FileNotFoundError:
                pass
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def _recover(self, resume: bool) -> None:
        import pyarrow as pa

        run_path = self.dir / RUN_NAME
        entries = read_manifest(self.manifest_path, repair=True)
        if (run_path.exists() or entries) and not resume:
            raise InvalidInputError(
                f"output {str(self.dir)!r} already holds results; resume=True continues it, or choose a new output"
            )
        self.schema = None
        stored: dict[str, Any] = {}
        if run_path.exists():
            stored = json.loads(run_path.read_text())
            if stored.get("format") != RUN_FORMAT:
                raise InvalidInputError(f"{run_path}: unsupported run format {stored.get('format')!r}")
            old, new = stored.get("options"), self.run_info.get("options")
            if json.dumps(old, sort_keys=True, default=str) != json.dumps(new, sort_keys=True, default=str):
                diff = "\n  ".join(describe_differences(old, new)) or "(the stored options are unreadable)"
                raise InvalidInputError(
                    f"output {str(self.dir)!r} was written with other options; resuming would mix them:\n  {diff}\n"
                    "Resume with the same options, or choose a new output folder"
                )
            if stored.get("schema"):
                self.schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(stored["schema"])))
        # an output written before run ids existed gets one now (its old files stay unproven, untouched)
        self._run_id_is_new = not isinstance(stored.get("run_id"), str)
        self.run_id: str = secrets.token_hex(8) if self._run_id_is_new else stored["run_id"]
        self.done: set[tuple[str, int]] = set()
        self.inputs: dict[str, dict[str, Any]] = {}
        """Source -> the fingerprint its file had when its latest committed blocks were read."""
        committed: dict[str, int] = {}
        for e in entries:
            for b in e["blocks"]:
                self.done.add((b["source"], int(b["index"])))
            if e.get("part"):
                committed[e["part"]] = int(e["bytes"])
            self.inputs.update(e.get("inputs") or {})
        self.committed_entries = len(entries)
        # drop this run's leftovers: its temporary files and its parts renamed but not recorded
        last = -1
        foreign = []
        for p in sorted(self.dir.iterdir()):
            m = _PART_RE.match(p.name)
            t = _TMP_RE.match(p.name)
            if t and t.group(1) == self.run_id:
                p.unlink()
            elif m:
                last = max(last, int(m.group(1)))  # never reuse a number, whoever holds it
                if p.name not in committed:
                    if self._part_run_id(p) == self.run_id:
                        p.unlink()
                    else:
                        foreign.append(p.name)
        fsync_dir(self.dir)
        if foreign:
            warnings.warn(
                f"output {str(self.dir)!r} holds {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}, "
                "which its manifest does not list and which this run did not write: left alone, but Parquet "
                "readers of the folder will read them (archives.read_results reads only the manifest's parts)",
                stacklevel=3,
            )
        for name, size in committed.items():
            path = self.dir / name
            if not path.exists() or path.stat().st_size != size:
                raise ArchiveError(
                    str(path),
                    None,
                    "a committed part is missing or changed since it was written; "
                    "the output is damaged (remove the manifest line or start a new output)",
                )
        self._next_part = last + 1

    @staticmethod
    def _part_run_id(path: Path) -> str | None:
        """The run id a part file carries in its metadata (None: unreadable or none)."""
        import pyarrow.parquet as pq

        try:
            meta = pq.read_metadata(path).metadata or {}
        except Exception:  # noqa: BLE001 - not a Parquet file, or a damaged one: not provably ours
            return None
        value = meta.get(RUN_ID_KEY.encode())
        return value.decode(errors="replace") if value is not None else None

    # ------------------------------------------------------------------ writing
    def is_done(self, key: tuple[str, int]) -> bool:
        return key in self.done

    def _save_run(self) -> None:
        info = dict(self.run_info)
        info["format"] = RUN_FORMAT
        info["run_id"] = self.run_id
        info["schema"] = base64.b64encode(self.schema.serialize().to_pybytes()).decode() if self.schema else None
        # the run's own temporary name: a resume after a kill finds and removes a leftover
        atomic_write_bytes(
            self.dir / RUN_NAME,
            json.dumps(info, sort_keys=True, indent=1, default=str).encode(),
            tmp_name=_tmp_name(self.run_id, RUN_NAME),
            fsync=True,
        )

    def _conform(self, table: Any) -> Any:
        """Cast ``table`` to the run's schema (fixing it on first use)."""
        if self.schema is None:
            self.schema = table.schema.remove_metadata()
            self._save_run()
            return table
        if table.schema.names != self.schema.names:
            raise InvalidInputError(
                f"the block function returned columns {table.schema.names}, but this run's schema is "
                f"{self.schema.names}; the schema is fixed per run"
            )
        try:
            return table.cast(self.schema)
        except Exception as exc:  # ArrowInvalid / ArrowNotImplementedError
            raise InvalidInputError(
                f"the block function's columns do not fit the run's schema {self.schema}: {exc}"
            ) from exc

    def add(
        self,
        key: tuple[str, int],
        info: dict[str, Any],
        table: Any | None,
        input_fingerprint: dict[str, Any] | None = None,
    ) -> None:
        """Record block ``key`` with its result rows (one row group); None or empty = no rows.
        ``input_fingerprint``: what the block's source file was when it was read (recorded
        with the block's manifest line, so a resume can tell a changed file)."""
        if key in self.done or any((b["source"], b["index"]) == key for b in self._pending):
            raise InvalidInputError(f"block {key} was given twice (is a file listed twice under two names?)")
        rows = 0
        if table is not None and table.num_rows:
            table = self._conform(table)
            if self._part is None:
                self._open_part()
            self._part[0].write_table(table, row_group_size=table.num_rows)
            rows = table.num_rows
        self._pending.append({"source": key[0], "index": int(key[1]), "rows": rows, **info})
        self._pending_rows += rows
        if input_fingerprint is not None:
            self._pending_inputs[key[0]] = input_fingerprint
        if len(self._pending) >= self.blocks_per_part:
            self.commit()

    def _open_part(self) -> None:
        import pyarrow.parquet as pq

        name = f"part-{self._next_part:06d}.parquet"
        self._next_part += 1
        tmp = self.dir / _tmp_name(self.run_id, name)
        fh = open(tmp, "wb")  # noqa: SIM115 - the part stays open across writes; closed with its ParquetWriter
        meta = {"st.run": json.dumps(self.run_info, sort_keys=True, default=str), RUN_ID_KEY: self.run_id}
        assert self.schema is not None  # set by write() before the first part
        writer = pq.ParquetWriter(fh, self.schema.with_metadata(meta))
        self._part = (writer, fh, tmp, self.dir / name)

    def commit(self) -> None:
        """Make the pending blocks durable (steps 1-3 of the protocol)."""
        if not self._pending:
            return
        entry: dict[str, Any] = {"part": None, "bytes": 0, "rows": self._pending_rows, "blocks": self._pending}
        if self._pending_inputs:
            entry["inputs"] = self._pending_inputs
        if self._part is not None:
            writer, fh, tmp, final = self._part
            writer.close()
            fh.close()
            replace_file(tmp, final, fsync=True)  # steps 1-2: the part's bytes on disk, then its name
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
        self.inputs.update(self._pending_inputs)
        self._pending, self._pending_rows, self._pending_inputs = [], 0, {}

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
            self._pending, self._pending_rows, self._pending_inputs = [], 0, {}
        finally:
            self._unlock()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close()
