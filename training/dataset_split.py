"""The dataset builder's files and splits (:mod:`training.dataset`), without torch.

:class:`BuildConfig`: what determines a cache's content; :func:`discover_audio`: the audio
files (:data:`AUDIO_EXTENSIONS`) under each folder, keyed ``<dir name>/<relative path>``;
:func:`assign_split`: a file's split, decided from its key, never from the seed or from which
other files exist: every file of a held-out directory (default ``fold2``) is held out, every
file of a training directory (default ``fold1``) is trained on, a fixed hash-chosen fraction of
the other directories' files (e.g. the field recordings) is held out, and held-out files are
divided between ``valid`` (model selection) and ``eval`` (reported metrics).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spectral_transcoder.errors import InvalidInputError

__all__ = ["AUDIO_EXTENSIONS", "BuildConfig", "assign_split", "discover_audio"]

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".mp3")


@dataclass(frozen=True)
class BuildConfig:
    """What determines the cache's content (a resumed build must use the same)."""

    teacher: str
    band_spec: str = "cense_fast"
    crops_per_chunk: int = 0
    """Random-offset crops per regular chunk, training files only."""
    gain_db: tuple[float, float] | None = None
    """Uniform random gain range in dB applied to every training chunk (None: no gain)."""
    seed: int = 0
    heldout_dirs: tuple[str, ...] = ("fold2",)
    """Audio directories (by name) held out entirely."""
    train_dirs: tuple[str, ...] = ("fold1",)
    """Audio directories (by name) used entirely for training."""
    heldout_fraction: float = 0.25
    """Fraction of the other directories' files held out (chosen by a hash of the key)."""
    eval_fraction: float = 0.5
    """Fraction of held-out files in ``eval`` (the rest are ``valid``)."""
    peak_normalise: bool = True

    def __post_init__(self) -> None:
        if self.crops_per_chunk < 0:
            raise InvalidInputError(f"crops_per_chunk must be >= 0, got {self.crops_per_chunk}")
        for name in ("heldout_fraction", "eval_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise InvalidInputError(f"{name} must be in [0, 1], got {v}")
        if set(self.heldout_dirs) & set(self.train_dirs):
            raise InvalidInputError(
                f"directories both held out and trained on: {set(self.heldout_dirs) & set(self.train_dirs)}"
            )
        if self.gain_db is not None:
            lo, hi = self.gain_db
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise InvalidInputError(f"gain_db must be a finite range (low, high), got {self.gain_db}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["heldout_dirs"] = list(self.heldout_dirs)
        d["train_dirs"] = list(self.train_dirs)
        d["gain_db"] = list(self.gain_db) if self.gain_db is not None else None
        return d


def _unit_hash(*parts: str) -> float:
    """A uniform number in [0, 1) from strings (stable across runs and machines)."""
    h = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def assign_split(key: str, dir_name: str, config: BuildConfig) -> str:
    """``train``, ``valid`` or ``eval`` for the file ``key`` of directory ``dir_name``.

    Depends only on the key and the split parameters (not on the seed, the file order
    or the other files), so adding files or resuming never moves a file between splits.
    """
    if dir_name in config.train_dirs:
        return "train"
    held = dir_name in config.heldout_dirs or _unit_hash("heldout", key) < config.heldout_fraction
    if not held:
        return "train"
    return "eval" if _unit_hash("eval", key) < config.eval_fraction else "valid"


def discover_audio(
    audio_dirs: Sequence[str | os.PathLike], *, max_files_per_dir: int | None = None
) -> list[tuple[str, str, Path]]:
    """Audio files under each directory (recursively), as ``(key, dir_name, path)``.

    ``key`` is ``<dir name>/<path relative to the dir>``. With ``max_files_per_dir`` a
    fixed hash-chosen subset of each directory is kept (the same subset every time,
    spread over the whole directory). Sorted by key.
    """
    out: list[tuple[str, str, Path]] = []
    names: dict[str, Path] = {}
    for d in audio_dirs:
        root = Path(d)
        if not root.is_dir():
            raise InvalidInputError(f"audio directory {str(root)!r} does not exist or is not a directory")
        name = root.resolve().name
        if name in names and names[name] != root.resolve():
            raise InvalidInputError(
                f"two audio directories are named {name!r} ({names[name]} and {root.resolve()}): file keys "
                "are '<dir name>/<relative path>', so directory names must differ"
            )
        names[name] = root.resolve()
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
        entries = [(f"{name}/{p.relative_to(root).as_posix()}", name, p) for p in files]
        if max_files_per_dir is not None:
            entries = sorted(entries, key=lambda e: _unit_hash("subset", e[0]))[: max(0, max_files_per_dir)]
        out.extend(entries)
    return sorted(out)
