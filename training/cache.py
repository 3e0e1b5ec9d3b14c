"""The dataset cache on disk: its layout, its manifest, the shard writer and the reader :class:`ChunkStore`.

A cache (built by ``python -m training build-dataset``, :mod:`training.dataset`) holds for each
1-s chunk:

========== ======================= ===============================================================
``levels`` (n, 8, 29) float32       ``cense_fast`` third-octave levels, dB re full scale (db_offset 0)
``mel``    (n, T, n_mels) float32   the teacher's ground-truth Mel in its own units: ``yamnet`` (the
                                   official front end, first 96-frame patch of the chunk, T = 96) or
                                   ``efficientat`` (T = 100)
``probs``  (n, C) float32           the frozen teacher's sigmoid probabilities on that Mel
``file_id`` (n,) int32              the file's id in the manifest
``offset`` (n,) float64             chunk start in the file, seconds
``crop``   (n,) bool                True for an augmentation crop (False: the regular grid)
``gain_db`` (n,) float32            gain applied after peak normalisation
``split``  (n,) uint8               index into :data:`SPLITS`
========== ======================= ===============================================================

Layout: ``CACHE_DIR/manifest.json`` and ``CACHE_DIR/shards/shard-NNNNN/<array>.npy``. A
shard holds whole files only (about ``shard_size`` chunks), is written to a temporary
directory and renamed when complete, then recorded in the manifest (atomic rewrite).
So at most one shard is in memory, a killed build loses at most the shard in progress,
and a rerun skips every file already in the manifest (an unrecorded shard directory is
deleted and its files are redone: :func:`clean_partial`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spectral_transcoder.errors import InvalidInputError
from spectral_transcoder.specs import BandSpec, MelSpec, spec_from_json

from .runs import write_json_atomic

__all__ = [
    "CACHE_FORMAT",
    "SPLITS",
    "ARRAYS",
    "MANIFEST",
    "SHARDS",
    "timestamp",
    "read_manifest",
    "save_manifest",
    "ShardWriter",
    "clean_partial",
    "ChunkStore",
]

CACHE_FORMAT = "spectral_transcoder.training.cache/1"
SPLITS = ("train", "valid", "eval")
ARRAYS = ("levels", "mel", "probs", "file_id", "offset", "crop", "gain_db", "split")
MANIFEST = "manifest.json"
SHARDS = "shards"


# ---------------------------------------------------------------------- manifest
def timestamp() -> str:
    """The current UTC time, ISO 8601 to the second (the manifest's ``created`` and ``updated``)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def read_manifest(cache_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a cache (raises :class:`InvalidInputError` if it is not one)."""
    p = Path(cache_dir) / MANIFEST
    if not p.is_file():
        raise InvalidInputError(
            f"{str(cache_dir)!r} is not a dataset cache (no {MANIFEST}); build one with "
            "`python -m training build-dataset AUDIO_DIR... -o CACHE_DIR`"
        )
    try:
        m = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{p}: unreadable manifest: {exc}") from exc
    if m.get("format") != CACHE_FORMAT:
        raise InvalidInputError(f"{p}: format {m.get('format')!r}, expected {CACHE_FORMAT!r}")
    return m


def save_manifest(cache_dir: Path, m: dict[str, Any]) -> None:
    """Stamp ``m``'s ``updated`` time and per-split ``counts``, and rewrite the manifest atomically."""
    m["updated"] = timestamp()
    m["counts"] = _counts(m)
    write_json_atomic(cache_dir / MANIFEST, m)


def _counts(m: dict[str, Any]) -> dict[str, Any]:
    files = {s: 0 for s in SPLITS}
    for e in m["files"].values():
        files[e["split"]] += 1
    chunks = {s: sum(sh["rows_per_split"][s] for sh in m["shards"]) for s in SPLITS}
    return {"files": files, "chunks": chunks, "skipped": len(m["skipped"])}


# ---------------------------------------------------------------------- writing
class ShardWriter:
    """Buffers whole files' chunks and writes a shard when it holds ``shard_size`` chunks; each shard
    is recorded in the manifest, and its name appended to ``new_shards``."""

    def __init__(self, cache_dir: Path, manifest: dict[str, Any], shard_size: int, new_shards: list[str]) -> None:
        self.dir = cache_dir / SHARDS
        self.m, self.size, self.new_shards = manifest, shard_size, new_shards
        self.buf: list[dict[str, np.ndarray]] = []
        self.files: list[tuple[str, dict[str, Any]]] = []
        self.rows = 0

    def add(self, key: str, entry: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.buf.append(arrays)
        self.files.append((key, entry))
        self.rows += arrays["levels"].shape[0]
        if self.rows >= self.size:
            self.flush()

    def flush(self) -> None:
        if not self.files:
            return
        name = f"shard-{len(self.m['shards']):05d}"
        final = self.dir / name
        if final.exists():  # left by a build killed between the rename and the manifest update
            shutil.rmtree(final)
        tmp = self.dir / f".tmp-{name}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        rows = self.rows
        if rows:
            for k in ARRAYS:
                np.save(tmp / f"{k}.npy", np.concatenate([b[k] for b in self.buf]))
        split = np.concatenate([b["split"] for b in self.buf]) if rows else np.zeros(0, np.uint8)
        os.replace(tmp, final)
        self.m["shards"].append(
            {
                "name": name,
                "rows": int(rows),
                "rows_per_split": {s: int(np.sum(split == i)) for i, s in enumerate(SPLITS)},
            }
        )
        for key, entry in self.files:
            entry["shard"] = name if entry["n_chunks"] + entry["n_crops"] else None
            self.m["files"][key] = entry
        self.m["next_file_id"] = max([e["id"] for _, e in self.files] + [self.m["next_file_id"] - 1]) + 1
        save_manifest(self.dir.parent, self.m)
        self.new_shards.append(name)
        self.buf, self.files, self.rows = [], [], 0


def clean_partial(cache_dir: Path, manifest: dict[str, Any]) -> list[str]:
    """Remove shard directories the manifest does not list (a killed build's leftovers)."""
    shard_dir = cache_dir / SHARDS
    known = {s["name"] for s in manifest["shards"]}
    removed = []
    if shard_dir.is_dir():
        for p in sorted(shard_dir.iterdir()):
            if p.name not in known:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
                removed.append(p.name)
    return removed


# ---------------------------------------------------------------------- reading
class ChunkStore:
    """Read access to a cache: memory-mapped shards, rows selected by split.

    Rows are addressed by a global index (shards in manifest order). Arrays are
    memory-mapped, so only the rows a batch reads are paged in.
    """

    def __init__(self, cache_dir: str | os.PathLike) -> None:
        self.dir = Path(cache_dir)
        self.manifest = read_manifest(self.dir)
        self.band_spec: BandSpec = spec_from_json(json.dumps(self.manifest["band_spec"]))  # type: ignore[assignment]
        self.mel_spec: MelSpec = spec_from_json(json.dumps(self.manifest["mel_spec"]))  # type: ignore[assignment]
        self.teacher_info: dict[str, Any] = self.manifest["teacher"]
        self._arrays: list[dict[str, np.ndarray]] = []
        starts = [0]
        for sh in self.manifest["shards"]:
            d = self.dir / SHARDS / sh["name"]
            if sh["rows"]:
                arrs = {k: np.load(d / f"{k}.npy", mmap_mode="r") for k in ARRAYS}
                if arrs["levels"].shape[0] != sh["rows"]:
                    raise InvalidInputError(f"{d}: {arrs['levels'].shape[0]} rows, the manifest says {sh['rows']}")
            else:
                arrs = {}
            self._arrays.append(arrs)
            starts.append(starts[-1] + sh["rows"])
        self._starts = np.asarray(starts, np.int64)
        self.n_rows = int(starts[-1])
        self.files_by_id = {e["id"]: k for k, e in self.manifest["files"].items()}

    def _column(self, name: str) -> np.ndarray:
        parts = [a[name] for a in self._arrays if a]
        if not parts:
            return np.zeros(0)
        return np.concatenate([np.asarray(p) for p in parts])

    def rows(self, split: str, *, regular_only: bool = False) -> np.ndarray:
        """Global row indices of ``split`` (``regular_only``: without crops), in storage order."""
        if split not in SPLITS:
            raise InvalidInputError(f"split must be one of {SPLITS}, got {split!r}")
        if self.n_rows == 0:
            return np.zeros(0, np.int64)
        mask = self._column("split") == SPLITS.index(split)
        if regular_only:
            mask &= ~self._column("crop").astype(bool)
        return np.flatnonzero(mask).astype(np.int64)

    def get(self, rows: np.ndarray, fields: Sequence[str] = ("levels", "mel", "probs")) -> dict[str, np.ndarray]:
        """The arrays of ``rows`` (any order), as in-memory copies."""
        rows = np.asarray(rows, np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_rows):
            raise InvalidInputError(f"rows out of range [0, {self.n_rows})")
        shard = np.searchsorted(self._starts, rows, side="right") - 1
        out: dict[str, np.ndarray] = {}
        for f in fields:
            if f not in ARRAYS:
                raise InvalidInputError(f"unknown field {f!r}; the cache holds {ARRAYS}")
            first = next((a[f] for a in self._arrays if a), None)
            shape = (rows.size, *first.shape[1:]) if first is not None else (0,)
            res = np.empty(shape, first.dtype if first is not None else np.float32)
            for s in np.unique(shard):
                sel = np.flatnonzero(shard == s)
                local = rows[sel] - self._starts[s]
                order = np.argsort(local, kind="stable")  # memmap reads in increasing order
                res[sel[order]] = self._arrays[s][f][local[order]]
            out[f] = res
        return out

    def file_groups(self, rows: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Group ``rows`` by file: (file ids, per file the positions into ``rows`` ordered by offset)."""
        meta = self.get(rows, ("file_id", "offset"))
        ids = np.unique(meta["file_id"])
        groups = []
        for i in ids:
            pos = np.flatnonzero(meta["file_id"] == i)
            groups.append(pos[np.argsort(meta["offset"][pos], kind="stable")])
        return ids, groups
