"""Downstream check on UrbanSound8K: the paper's 2-FC head on frozen classifier outputs (§6b).

``python -m training downstream CACHE_DIR [--run RUN_DIR...] [--published CKPT] [--no-pinv]``

A clip is described by the teacher's probabilities averaged over its regular 1-s
chunks, with the classifier frozen. The head is ``Linear(C → 100) → Linear(100 → 10) →
sigmoid``, with **no non-linearity between the two layers**, as in the paper. It is
trained with BCE on one-hot labels, Adam (lr 1e-3), 30 epochs and batch 32, and the
last epoch is kept. Cross-validation runs over the folds present in the cache (here
folds 1 and 2): for each fold the head is trained on the other folds and tested on
it. Accuracy is argmax(output) against the label, pooled over all files.

Features are computed once from the ground-truth Mels (the cache's ``probs``, or
recomputed from audio for another Mel spec) and once per transcoder (the teacher on
the transcoded Mels of the same chunks).

Labels come from the UrbanSound8K file names, ``fsID-classID-occurrenceID-sliceID``.
The fold comes from the directory name, ``foldN``. Files that do not follow this
scheme are ignored.

⚠ A transcoder trained on some of these folds has seen their audio. Its accuracy on
those folds is optimistic. The result also reports the per-fold accuracies, so the
held-out folds can be read on their own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spectral_transcoder.errors import InvalidInputError

from .cache import SPLITS, ChunkStore
from .evaluate import (
    Method,
    Reference,
    audio_reference,
    cached_reference,
    file_means,
    pinv_method,
    published_method,
    run_method,
)
from .teachers import Teacher, load_teacher

__all__ = [
    "US8K_CLASSES",
    "us8k_label",
    "us8k_fold",
    "FCHead",
    "train_head",
    "cross_validate",
    "clip_features",
    "run_downstream",
    "add_parser",
]

US8K_CLASSES = (
    "air_conditioner",
    "car_horn",
    "children_playing",
    "dog_bark",
    "drilling",
    "engine_idling",
    "gun_shot",
    "jackhammer",
    "siren",
    "street_music",
)
_NAME = re.compile(r"^(\d+)-(\d)-(\d+)-(\d+)$")
_FOLD = re.compile(r"^fold(\d+)$")


def us8k_label(key: str) -> int | None:
    """Class id (0-9) from an UrbanSound8K file name ``fsID-classID-occurrence-slice``; None if not one."""
    m = _NAME.match(Path(key).stem)
    return int(m.group(2)) if m else None


def us8k_fold(key: str) -> int | None:
    """Fold number from the key's directory (``foldN/...``); None if not one."""
    m = _FOLD.match(key.split("/")[0])
    return int(m.group(1)) if m else None


class FCHead(nn.Module):
    """Linear(C → hidden) → Linear(hidden → n_classes) → sigmoid; no non-linearity between (the paper's FC)."""

    def __init__(self, n_features: int, n_classes: int = 10, hidden: int = 100) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_features, hidden)
        self.fc2 = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc2(self.fc1(x)))


def train_head(
    x: np.ndarray,
    y: np.ndarray,
    *,
    n_classes: int = 10,
    epochs: int = 30,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
) -> FCHead:
    """Train :class:`FCHead` on features ``x`` (N, C) and labels ``y`` (N,) with BCE on one-hot targets."""
    torch.manual_seed(seed)
    head = FCHead(x.shape[1], n_classes)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    xt = torch.from_numpy(np.asarray(x, np.float32))
    target = F.one_hot(torch.from_numpy(np.asarray(y, np.int64)), n_classes).float()
    g = torch.Generator().manual_seed(seed)
    head.train()
    for _ in range(epochs):
        perm = torch.randperm(xt.shape[0], generator=g)
        for s in range(0, xt.shape[0], batch_size):
            idx = perm[s : s + batch_size]
            loss = F.binary_cross_entropy(head(xt[idx]), target[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return head.eval()


def cross_validate(
    features: np.ndarray, labels: np.ndarray, folds: np.ndarray, *, n_classes: int = 10, **kwargs: Any
) -> dict[str, Any]:
    """Leave-one-fold-out accuracy of :func:`train_head`, pooled over all files, and per fold."""
    labels, folds = np.asarray(labels), np.asarray(folds)
    unique = np.unique(folds)
    if unique.size < 2:
        raise InvalidInputError(f"cross-validation needs at least 2 folds, got {unique.tolist()}")
    correct = np.zeros(labels.size, bool)
    per_fold = {}
    for f in unique:
        test = folds == f
        head = train_head(features[~test], labels[~test], n_classes=n_classes, **kwargs)
        with torch.no_grad():
            pred = head(torch.from_numpy(np.asarray(features[test], np.float32))).argmax(1).numpy()
        correct[test] = pred == labels[test]
        per_fold[int(f)] = float(correct[test].mean())
    return {"accuracy": float(correct.mean()), "per_fold": per_fold, "n_files": int(labels.size)}


def clip_features(ref: Reference, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-clip mean probabilities of the US8K files in ``ref``: (file ids, features, labels, folds)."""
    ids, feats = file_means(probs, ref.file_ids)
    labels = np.array([us8k_label(ref.keys[int(i)]) for i in ids], dtype=object)
    folds = np.array([us8k_fold(ref.keys[int(i)]) for i in ids], dtype=object)
    ok = np.array([lb is not None and fd is not None for lb, fd in zip(labels, folds)], bool)
    return ids[ok], feats[ok], labels[ok].astype(np.int64), folds[ok].astype(np.int64)


def run_downstream(
    store: ChunkStore,
    methods: Sequence[Method],
    teacher: Teacher,
    *,
    epochs: int = 30,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """US8K fold cross-validation with ground-truth features and with each method's transcoded features."""
    refs: dict[str, Reference] = {store.mel_spec.name: cached_reference(store, SPLITS)}
    out: dict[str, Any] = {"teacher": store.teacher_info["name"], "rows": {}}
    kw = dict(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)

    def cv(ref: Reference, probs: np.ndarray) -> dict[str, Any]:
        _, feats, labels, folds = clip_features(ref, probs)
        if labels.size == 0:
            raise InvalidInputError("no UrbanSound8K files (foldN/fsID-classID-occurrence-slice.*) in the cache")
        return cross_validate(feats, labels, folds, **kw)

    out["rows"][f"ground truth ({store.mel_spec.name})"] = cv(
        refs[store.mel_spec.name], refs[store.mel_spec.name].probs
    )
    for m in methods:
        if m.mel_spec.name not in refs:
            refs[m.mel_spec.name] = audio_reference(store, m.mel_spec, teacher, SPLITS, device=device)
            r = refs[m.mel_spec.name]
            out["rows"][f"ground truth ({m.mel_spec.name})"] = cv(r, r.probs)
        ref = refs[m.mel_spec.name]
        out["rows"][m.name] = cv(ref, teacher.probs(m.transcode(ref.levels), device=device))
    return out


# ---------------------------------------------------------------------- CLI
def add_parser(sub: Any) -> None:
    """Register ``downstream`` on an argparse subparsers object."""
    p = sub.add_parser(
        "downstream",
        help="UrbanSound8K fold cross-validation of the paper's 2-FC head (ground truth vs transcoded)",
        description="Train the paper's 2-FC head (C -> 100 -> 10, sigmoid, BCE, Adam 1e-3, 30 epochs, batch 32) on "
        "per-clip mean teacher probabilities of the cache's UrbanSound8K files, leave-one-fold-out, with "
        "ground-truth Mels and with each transcoder's Mels.",
    )
    p.add_argument(
        "cache_dir", metavar="CACHE_DIR", help="a cache over UrbanSound8K folds (all files, no crops needed)"
    )
    p.add_argument("--run", action="append", default=[], metavar="RUN_DIR")
    p.add_argument("--published", action="append", default=[], metavar="CKPT")
    p.add_argument("--no-pinv", action="store_true")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--teacher-source", metavar="FILE")
    p.add_argument("-o", "--output", metavar="RESULTS.json")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_downstream)


def _cmd_downstream(args: Any) -> int:
    store = ChunkStore(args.cache_dir)
    info = store.teacher_info
    teacher = load_teacher(info["name"], args.teacher_source or info["source_path"])
    methods = [] if args.no_pinv else [pinv_method(store.band_spec, store.mel_spec)]
    methods += [run_method(r) for r in args.run] + [published_method(p) for p in args.published]
    res = run_downstream(store, methods, teacher, epochs=args.epochs, seed=args.seed, device=args.device)
    print("| features | accuracy % | per fold % | files |\n|---|---|---|---|")
    for name, r in res["rows"].items():
        folds = ", ".join(f"fold {k}: {100 * v:.1f}" for k, v in r["per_fold"].items())
        print(f"| {name} | {100 * r['accuracy']:.1f} | {folds} | {r['n_files']} |")
    if args.output:
        Path(args.output).write_text(json.dumps(res, indent=1))
    return 0
