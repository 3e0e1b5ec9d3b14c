"""Reading an engine folder built by :mod:`training.engine` (memory-mapped, no torch).

:class:`SceneStore`: the training examples of the finished scene shards (``train/shard-*``);
:class:`HeldoutStore`: one held-out split (``heldout/valid`` or ``heldout/test``) with its
per-clip metadata; :func:`centre_frames`: a chunk's own frames of its context window.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import fidelity_report

__all__ = ["SceneStore", "HeldoutStore", "centre_frames"]


def centre_frames(levels: np.ndarray, fpc: int, context: int) -> np.ndarray:
    """The chunk's own frames ``(N, fpc, bands)`` of context windows ``(N, fpc (1 + 2 context), bands)``."""
    return np.ascontiguousarray(levels[:, context * fpc : (context + 1) * fpc])


class SceneStore:
    """Memory-mapped training scenes of an engine folder (all finished shards)."""

    def __init__(self, engine_dir: str | os.PathLike, teacher: str) -> None:
        self.dir = Path(engine_dir)
        self.info = json.loads((self.dir / "engine.json").read_text(encoding="utf-8"))
        if teacher not in self.info["teachers"]:
            raise ValueError(f"{self.dir} holds no targets for teacher {teacher!r} ({self.info['teachers']})")
        self.teacher = teacher
        self.shards = sorted(p for p in (self.dir / "train").glob("shard-*") if p.is_dir())
        self.levels = [np.load(p / "levels.npy", mmap_mode="r") for p in self.shards]
        self.mel = [np.load(p / f"mel_{teacher}.npy", mmap_mode="r") for p in self.shards]
        self.logits = [np.load(p / f"logits_{teacher}.npy", mmap_mode="r") for p in self.shards]
        self.shard_scenes = int(self.info["shard_scenes"])
        self.seconds = int(self.info["scene"]["seconds"])
        self.context = int(self.info["scene"]["context"])

    @property
    def n_scenes(self) -> int:
        return len(self.shards) * self.shard_scenes

    @property
    def n_examples(self) -> int:
        return self.n_scenes * self.seconds

    def examples(self, idx: np.ndarray, *, fpc: int = 8) -> dict[str, np.ndarray]:
        """Examples ``idx`` (scene * seconds + second): ``levels`` (n, fpc (1 + 2 context), 29)
        float32, ``mel`` (n, T, M) and ``logits`` (n, C) float32."""
        idx = np.asarray(idx, np.int64)
        scene, sec = np.divmod(idx, self.seconds)
        shard, local = np.divmod(scene, self.shard_scenes)
        lv, mel, lg = [], [], []
        for i in range(idx.size):
            s, j, k = shard[i], local[i], sec[i]
            lv.append(self.levels[s][j, k * fpc : (k + 1 + 2 * self.context) * fpc])
            mel.append(self.mel[s][j, k])
            lg.append(self.logits[s][j, k])
        return {
            "levels": np.stack(lv).astype(np.float32),
            "mel": np.stack(mel).astype(np.float32),
            "logits": np.stack(lg).astype(np.float32),
        }


class HeldoutStore:
    """One held-out split: per-chunk arrays (memory-mapped) and per-clip metadata."""

    def __init__(self, engine_dir: str | os.PathLike, split: str, teacher: str) -> None:
        d = Path(engine_dir) / "heldout" / split
        if not (d / "meta.json").is_file():
            raise FileNotFoundError(f"{d}: no held-out {split!r} set (python -m training engine build ... builds it)")
        self.meta = json.loads((d / "meta.json").read_text(encoding="utf-8"))
        self.levels = np.load(d / "levels.npy", mmap_mode="r")
        self.mel = np.load(d / f"mel_{teacher}.npy", mmap_mode="r")
        self.logits = np.load(d / f"logits_{teacher}.npy", mmap_mode="r")
        self.clip = np.load(d / "clip.npy")
        self.domain = np.load(d / "domain.npy")
        self.group = np.load(d / "group.npy")
        self.domains: list[str] = self.meta["domains"]
        self.context = int(self.meta["context"])

    def centre_levels(self, fpc: int = 8) -> np.ndarray:
        """The chunks' own levels (N, fpc, 29) float32 (no context)."""
        return centre_frames(np.asarray(self.levels, np.float32), fpc, self.context)

    def teacher_probs(self) -> np.ndarray:
        """The teacher's sigmoid probabilities (N, C) float64 on the true Mels (from the stored logits)."""
        return 1.0 / (1.0 + np.exp(-np.asarray(self.logits, np.float64)))

    def report(
        self,
        model_probs: np.ndarray,
        *,
        model_mel: np.ndarray | None = None,
        n_boot: int = 0,
        teacher_probs: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """:func:`training.metrics.fidelity_report` of a model's probabilities ``(N, C)`` on this split's
        chunks against the teacher's, per clip, domain and source group; with ``model_mel`` (the teacher's
        Mel spec), the Mel MSE against the true Mels too. ``teacher_probs`` spares recomputing them."""
        q = self.teacher_probs() if teacher_probs is None else teacher_probs
        return fidelity_report(
            q,
            model_probs,
            self.clip,
            self.domain,
            domain_names=self.domains,
            groups=self.group,
            teacher_mel=None if model_mel is None else np.asarray(self.mel, np.float32),
            model_mel=model_mel,
            n_boot=n_boot,
        )
