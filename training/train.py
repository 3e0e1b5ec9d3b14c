"""The paper-style trainer of the CNN transcoder (docs/conventions.md §5): training loop and run folders.

``python -m training train CACHE_DIR -o RUN_DIR [--calibrate]
--mode logits|mels|hybrid|distill|logit_mse|embed_mse|feature_stats`` (the command line is
:mod:`training.train_cli`)

The network is h3's :class:`~training.nets.CNNTranscoder` (paper configuration by
default) applied to the PINV of the cached third-octave levels. The PINV is the
package's C++ kernel :func:`spectral_transcoder.pinv.pinv_chunks`, run on each batch
with the folded matrix ``A`` recorded in the run (``run.json``) and later in the ONNX
metadata, so training and inference use one definition. The loss of each ``--mode`` is
in :mod:`training.losses`; ``--calibrate`` puts a per-bin affine map from the PINV Mel to
the target, fitted on the training split, in front of the CNN (for magnitude targets such
as official YAMNet). A run is exported and shipped with :mod:`training.cards`.

Adam (lr 1e-3), batch 64, seeded init and per-epoch shuffles. The validation loss is
computed before training (epoch 0) and after every epoch; ``best.pt`` keeps the lowest
(ties keep the earlier epoch). ``last.pt`` (model, optimiser, epoch, best, history, RNG
states) is rewritten after every epoch, so a killed run resumes from the last finished
epoch and reaches the same weights as an uninterrupted run. ``log.csv`` / ``log.jsonl``
hold one row per epoch.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spectral_transcoder.errors import InvalidInputError, SpecMismatchError
from spectral_transcoder.pinv import pinv_matrix

from .cache import ChunkStore
from .checkpoints import sha256_file, torch_load
from .losses import MODES, Batches, Loss, fit_calibration, loss_fn
from .nets import CNNTranscoder, count_parameters
from .runs import progress_bar, rng_state, save_checkpoint, set_rng_state, write_text_atomic
from .teachers import Teacher, load_teacher

__all__ = [
    "TrainConfig",
    "TrainResult",
    "train",
    "load_run",
    "resolve_device",
]

RUN_FORMAT = "spectral_transcoder.training.run/1"


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters (a resumed run must use the same, except ``epochs``)."""

    mode: str = "logits"
    epochs: int = 200
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    n_layers: int = 5
    channels: int = 64
    kernel_time: int = 3
    kernel_mel: int = 5
    dilation: int = 1
    kd_weight: float = 0.05
    """``distill`` only: weight of the softmax distillation term."""
    kd_temperature: float = 2.0
    """``distill`` only: temperature of both softmaxes."""
    prop_logit: float = 50.0
    """``hybrid`` only: the paper's p (percent): (1 - p/100) MSE(Mel) + k (p/100) BCE."""
    hybrid_k: float = 10.0
    """``hybrid`` only: the paper's k (10 for YAMNet, 1500 for PANN; docs/conventions.md §5)."""
    calibrate: bool = False
    """Fit a fixed per-bin affine map from the PINV Mel to the target Mel on the training
    split, applied in front of the CNN (:class:`~training.nets.CNNTranscoder` ``calibrated``)."""
    init_from: str = ""
    """A run directory whose best weights start this run (same cache and architecture),
    for example CNN-logits continued with another loss. Empty: the seeded random init."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidInputError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.epochs < 0 or self.batch_size < 1:
            raise InvalidInputError(f"epochs must be >= 0 and batch_size >= 1, got {self.epochs}, {self.batch_size}")
        if not (math.isfinite(self.lr) and self.lr >= 0):
            raise InvalidInputError(f"lr must be a finite number >= 0, got {self.lr}")

    def arch(self, n_mels: int) -> dict[str, Any]:
        """Keyword arguments of :class:`~training.nets.CNNTranscoder` for a target with ``n_mels`` bins."""
        a: dict[str, Any] = dict(
            n_layers=self.n_layers,
            channels=self.channels,
            kernel_time=self.kernel_time,
            kernel_mel=self.kernel_mel,
            dilation=self.dilation,
        )
        if self.calibrate:
            a.update(calibrated=True, n_mels=n_mels)
        return a

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_val_loss: float
    history: list[dict[str, Any]] = field(default_factory=list)


def resolve_device(device: str) -> torch.device:
    """``cpu`` (default), ``cuda[:i]``, or ``auto`` (CUDA when available, else CPU)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device {device!r} requested but CUDA is not available (use --device cpu)")
    return d


# ---------------------------------------------------------------------- helpers
def _epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    # Depends on (seed, epoch) only: a resumed run shuffles exactly like an uninterrupted one.
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def _validate(
    model: CNNTranscoder, rows: np.ndarray, batches: Batches, loss: Loss, batch_size: int
) -> tuple[float, float | None]:
    """Mean validation loss, and the share of chunks whose best class under the transcoded
    Mel is the teacher's (None without a teacher): a running view of PtoPa-FC."""
    model.eval()
    total, agree = 0.0, 0
    with torch.no_grad():
        for s in range(0, rows.size, batch_size):
            x, t = batches(rows[s : s + batch_size])
            value, logits = loss(model(x), t)
            total += float(value) * x.shape[0]
            if logits is not None:
                agree += int((logits.argmax(-1) == t["probs"].argmax(-1)).sum())
    n = max(1, rows.size)
    return total / n, (agree / n if "probs" in batches.targets else None)


def _initial_weights(config: TrainConfig, fingerprint: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """The best weights of ``config.init_from``; records where they came from in ``meta``."""
    src = Path(config.init_from)
    try:
        src_meta = json.loads((src / "run.json").read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"init_from {src}: not a training run ({exc})") from None
    src_cfg = TrainConfig(**src_meta["config"])
    n_mels = int(fingerprint["mel_spec"]["n_mels"])
    if src_meta["cache"] != fingerprint or src_cfg.arch(n_mels) != config.arch(n_mels):
        raise SpecMismatchError(f"init_from {src}: its cache or architecture differs from this run's")
    ck = torch_load(src / "best.pt", "training checkpoint")
    meta["init_from"] = {
        "run": str(src.resolve()),
        "epoch": int(ck["epoch"]),
        "mode": src_cfg.mode,
        "best_pt_sha256": sha256_file(src / "best.pt"),
    }
    if "calibration" in src_meta:
        meta["calibration"] = src_meta["calibration"]
    return ck["model"]


def _top1_text(top1: float | None) -> str:
    return "" if top1 is None else f", top-1 agreement {100 * top1:.1f} %"


def _run_fingerprint(store: ChunkStore) -> dict[str, Any]:
    return {
        "teacher_sha256": store.teacher_info["sha256"],
        "teacher": store.teacher_info["name"],
        "band_spec": store.manifest["band_spec"],
        "mel_spec": store.manifest["mel_spec"],
    }


def _write_logs(run: Path, history: list[dict[str, Any]]) -> None:
    cols = [
        "epoch",
        "train_loss",
        "val_loss",
        "val_top1",
        "best_epoch",
        "is_best",
        "seconds",
        "n_train",
        "n_val",
        "lr",
        "device",
    ]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for row in history:
        w.writerow(row)
    write_text_atomic(run / "log.csv", buf.getvalue())
    write_text_atomic(run / "log.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in history))


def _default_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- train
def train(
    cache_dir: str | os.PathLike,
    run_dir: str | os.PathLike,
    config: TrainConfig | None = None,
    *,
    teacher: Teacher | None = None,
    device: str = "cpu",
    progress: bool = True,
    log: Callable[[str], None] | None = _default_log,
) -> TrainResult:
    """Train (or resume) a CNN transcoder on the cache ``cache_dir`` into ``run_dir``.

    Args:
        cache_dir: a cache from :func:`training.dataset.build_dataset` (``train`` rows are
            trained on, ``valid`` rows select the best epoch; ``eval`` rows are never read).
        run_dir: output folder; if it holds a run, training resumes after its last
            finished epoch (``config`` must match except ``epochs``, which may grow).
        config: :class:`TrainConfig` (default: the paper's settings, CNN-logits).
        teacher: the frozen classifier; default: loaded from the cache manifest's source
            path (its sha256 must match the cache's teacher). Not needed for ``mels``.
        device: ``cpu`` (default), ``cuda`` or ``auto``.
        progress: tqdm bars over batches. log: receives one line per epoch (None: silent).
    Returns:
        :class:`TrainResult` with the best epoch, its validation loss and the history.
    """
    config = config or TrainConfig()
    dev = resolve_device(device)
    store = ChunkStore(cache_dir)
    run = Path(run_dir)
    fingerprint = _run_fingerprint(store)
    if config.mode != "mels":
        if teacher is None:
            info = store.teacher_info
            teacher = load_teacher(info["name"], info["source_path"])
        if teacher.sha256 != store.teacher_info["sha256"]:
            raise SpecMismatchError(
                f"the teacher's sha256 {teacher.sha256[:12]}... differs from the one the cache "
                f"was built with ({store.teacher_info['sha256'][:12]}...)"
            )
        teacher.module.to(dev).eval()
        for p in teacher.module.parameters():
            p.requires_grad_(False)
    train_rows, val_rows = store.rows("train"), store.rows("valid")
    if train_rows.size == 0 or val_rows.size == 0:
        raise InvalidInputError(
            f"{cache_dir}: needs 'train' and 'valid' chunks, has {train_rows.size} and "
            f"{val_rows.size} (see the split options of build-dataset)"
        )

    run.mkdir(parents=True, exist_ok=True)
    run_json = run / "run.json"
    if run_json.exists():
        meta = json.loads(run_json.read_text())
        old = {k: v for k, v in {**TrainConfig().to_dict(), **meta["config"]}.items() if k != "epochs"}
        new = {k: v for k, v in config.to_dict().items() if k != "epochs"}
        if old != new or meta["cache"] != fingerprint:
            what = [k for k in new if old.get(k) != new[k]] + (["cache"] if meta["cache"] != fingerprint else [])
            raise SpecMismatchError(
                f"{run} holds a run with other settings ({', '.join(what)}); use a new RUN_DIR or the same settings"
            )
        matrix = np.asarray(meta["pinv_matrix"], np.float64)
        meta["config"]["epochs"] = config.epochs
    else:
        matrix = np.asarray(pinv_matrix(store.band_spec, store.mel_spec), np.float64)
        meta = {
            "format": RUN_FORMAT,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "config": config.to_dict(),
            "cache": fingerprint,
            "cache_dir": str(Path(cache_dir).resolve()),
            "counts": store.manifest.get("counts", {}),
            "pinv_matrix": matrix.tolist(),
            "pinv_matrix_from": "spectral_transcoder.pinv.pinv_matrix (float64 numpy pinv, rcond 1e-15, ReLU)",
        }
    last = run / "last.pt"
    init = _initial_weights(config, fingerprint, meta) if config.init_from and not last.exists() else None
    write_text_atomic(run_json, json.dumps(meta, indent=1))

    torch.manual_seed(config.seed)
    model = CNNTranscoder(**config.arch(store.mel_spec.n_mels)).to(dev)
    if config.calibrate:
        cal = meta.get("calibration")
        if cal is None:
            cal = fit_calibration(store, matrix)
            meta["calibration"] = cal
            write_text_atomic(run_json, json.dumps(meta, indent=1))
        with torch.no_grad():
            model.in_scale.copy_(torch.tensor(cal["scale"]))
            model.in_bias.copy_(torch.tensor(cal["bias"]))
    if init is not None:
        model.load_state_dict(init)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    loss = loss_fn(config, teacher)
    batches = Batches(store, matrix, config.mode, dev)
    say = log or (lambda msg: None)

    if last.exists():
        ck = torch_load(last, "training checkpoint")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start, best, history = int(ck["epoch"]) + 1, dict(ck["best"]), list(ck["history"])
        set_rng_state(ck["rng"])
        say(f"resuming {run} after epoch {start - 1} (best: epoch {best['epoch']}, val {best['val_loss']:.6g})")
    else:
        t0 = time.perf_counter()
        val, top1 = _validate(model, val_rows, batches, loss, max(config.batch_size, 256))
        best = {"epoch": 0, "val_loss": val}
        save_checkpoint(
            {"model": model.state_dict(), "epoch": 0, "val_loss": val, "config": config.to_dict()}, run / "best.pt"
        )
        history = [
            {
                "epoch": 0,
                "train_loss": None,
                "val_loss": val,
                "val_top1": top1,
                "best_epoch": 0,
                "is_best": True,
                "seconds": time.perf_counter() - t0,
                "n_train": int(train_rows.size),
                "n_val": int(val_rows.size),
                "lr": config.lr,
                "device": str(dev),
            }
        ]
        save_checkpoint(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "epoch": 0,
                "best": best,
                "history": history,
                "rng": rng_state(),
                "config": config.to_dict(),
            },
            last,
        )
        _write_logs(run, history)
        say(
            f"epoch 0: val {val:.6g}{_top1_text(top1)} ({config.mode}, {count_parameters(model)} parameters, "
            f"{train_rows.size} train / {val_rows.size} valid chunks, {dev})"
        )
        start = 1

    for epoch in range(start, config.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        perm = train_rows[_epoch_permutation(train_rows.size, config.seed, epoch).numpy()]
        starts = range(0, perm.size, config.batch_size)
        total = 0.0
        bar = progress_bar(starts, progress, "batch")
        for s in bar:
            x, t = batches(perm[s : s + config.batch_size])
            value = loss(model(x), t)[0]
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            total += float(value.detach()) * x.shape[0]
        train_loss = total / perm.size
        val, top1 = _validate(model, val_rows, batches, loss, max(config.batch_size, 256))
        is_best = val < best["val_loss"]
        if is_best:
            best = {"epoch": epoch, "val_loss": val}
            save_checkpoint(
                {"model": model.state_dict(), "epoch": epoch, "val_loss": val, "config": config.to_dict()},
                run / "best.pt",
            )
        history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val,
                "val_top1": top1,
                "best_epoch": best["epoch"],
                "is_best": is_best,
                "seconds": time.perf_counter() - t0,
                "n_train": int(train_rows.size),
                "n_val": int(val_rows.size),
                "lr": config.lr,
                "device": str(dev),
            }
        )
        save_checkpoint(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "epoch": epoch,
                "best": best,
                "history": history,
                "rng": rng_state(),
                "config": config.to_dict(),
            },
            last,
        )
        _write_logs(run, history)
        say(
            f"epoch {epoch}/{config.epochs}: train {train_loss:.6g}, val {val:.6g}{_top1_text(top1)}"
            f"{' (best)' if is_best else ''}, {history[-1]['seconds']:.1f} s"
        )
    return TrainResult(run, int(best["epoch"]), float(best["val_loss"]), history)


def load_run(
    run_dir: str | os.PathLike, *, which: str = "best"
) -> tuple[CNNTranscoder, dict[str, Any], dict[str, Any]]:
    """The trained CNN (eval mode) of a run, its ``run.json`` and the checkpoint dict.

    ``which``: ``"best"`` (lowest validation loss) or ``"last"``.
    """
    run = Path(run_dir)
    if not (run / "run.json").is_file():
        raise InvalidInputError(f"{str(run)!r} is not a training run (no run.json)")
    meta = json.loads((run / "run.json").read_text())
    ck = torch_load(run / f"{which}.pt", f"{which} checkpoint")
    cfg = TrainConfig(**meta["config"])
    model = CNNTranscoder(**cfg.arch(int(meta["cache"]["mel_spec"]["n_mels"])))
    model.load_state_dict(ck["model"])
    return model.eval(), meta, ck
