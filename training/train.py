"""Trainer of the CNN transcoder (specs/transcoder.md §5) and its ONNX export.

``python -m training train CACHE_DIR -o RUN_DIR --mode logits|mels|hybrid|distill|logit_mse|embed_mse|feature_stats [--calibrate]``
``python -m training export-run RUN_DIR -o MODEL.onnx [--notes STATUS.md]``
``python -m training ship MODEL.onnx`` (into the package's ``models_data/``)

The network is h3's :class:`~training.nets.CNNTranscoder` (paper configuration by
default) applied to the PINV of the cached third-octave levels. The PINV is the
package's C++ kernel :func:`spectral_transcoder.pinv.pinv_chunks`, run on each batch
with the folded matrix ``A`` recorded in the run (``run.json``) and later in the ONNX
metadata, so training and inference use one definition.

- ``logits`` (CNN-logits): BCE between the frozen teacher's probabilities on the
  ground-truth Mel (cached) and the teacher's output on the transcoded Mel. The teacher
  is in eval mode with ``requires_grad_(False)`` on its parameters: gradients flow
  through it to the CNN, none are kept for its weights, and it is not in the optimiser.
  (BCE is computed from the logits, which equals BCE on the sigmoid probabilities
  without torch's log clamp.)
- ``mels`` (CNN-mels): MSE to the ground-truth Mel.
- ``hybrid``: the paper's ``(1 - p/100) MSE + k (p/100) BCE`` (not used for its released models).
- ``distill``: BCE plus a softmax distillation term on the logits (weighs the class ranking).
- ``logit_mse``: MSE between the classifier's logits and the teacher's (logit matching).
- ``embed_mse``: MSE to the teacher's pooled embedding on the ground-truth Mel, plus BCE.
- ``feature_stats``: the per-channel mean and std of every teacher layer's feature maps
  matched to those on the ground-truth Mel (position-free texture statistics), plus BCE.
- ``--calibrate``: a per-bin affine map from the PINV Mel to the target, fitted on the
  training split, in front of the CNN (for magnitude targets such as official YAMNet).

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
import random
import string
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from spectral_transcoder.errors import InvalidInputError, SpecMismatchError
from spectral_transcoder.metadata import ModelMetadata
from spectral_transcoder.pinv import pinv_chunks, pinv_matrix
from spectral_transcoder.specs import BandSpec, MelSpec

from .checkpoints import sha256_file, torch_load
from .dataset import ChunkStore, Teacher, progress_bar, load_teacher
from .nets import CNNTranscoder, count_parameters
from .paths import package_models_dir

__all__ = [
    "MODES",
    "TrainConfig",
    "TrainResult",
    "train",
    "load_run",
    "resolve_device",
    "export_run",
    "ship",
    "PACKAGE_MODELS_DIR",
    "render_model_card",
    "data_licences",
    "WEIGHTS_LICENSE",
    "add_parsers",
]

MODES = ("logits", "mels", "distill", "hybrid", "logit_mse", "embed_mse", "feature_stats")
RUN_FORMAT = "spectral_transcoder.training.run/1"
WEIGHTS_LICENSE = "MIT (transcoder weights trained by the spectral_transcoder project)"
_CARD_TEMPLATE = Path(__file__).with_name("MODEL_CARD.md.in")


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
    """``hybrid`` only: the paper's k (10 for YAMNet, 1500 for PANN; specs/transcoder.md §5)."""
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
        a: dict[str, Any] = dict(n_layers=self.n_layers, channels=self.channels, kernel_time=self.kernel_time,
                                 kernel_mel=self.kernel_mel, dilation=self.dilation)
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
def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    if s.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    py = s["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = s["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], np.uint32), n[2], n[3], n[4]))


def _epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    # Depends on (seed, epoch) only: a resumed run shuffles exactly like an uninterrupted one.
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


class _Batches:
    """PINV input of cached rows and the targets its loss reads, as torch tensors on
    ``device``: a dict with the teacher's probabilities (``probs``) and/or the
    ground-truth Mel (``mel``)."""

    _TARGETS = {"mels": ("mel",), "hybrid": ("mel", "probs"), "embed_mse": ("mel", "probs"),
                "feature_stats": ("mel", "probs")}

    def __init__(self, store: ChunkStore, matrix: np.ndarray, mode: str, device: torch.device) -> None:
        self.store, self.matrix, self.device = store, matrix, device
        self.targets = self._TARGETS.get(mode, ("probs",))
        self.fields = ("levels", *self.targets)

    def __call__(self, rows: np.ndarray) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        d = self.store.get(rows, self.fields)
        x = pinv_chunks(d["levels"], self.store.mel_spec, band_spec=self.store.band_spec, matrix=self.matrix)
        t = {k: torch.from_numpy(np.ascontiguousarray(d[k])).to(self.device) for k in self.targets}
        return torch.from_numpy(x).to(self.device), t


def fit_calibration(store: ChunkStore, matrix: np.ndarray, *, max_chunks: int = 4096) -> dict[str, Any]:
    """Per-Mel-bin least squares ``target ≈ scale * pinv + bias`` on training chunks.

    Uses the first ``max_chunks`` training chunks in storage order, crops included
    (never the held-out splits).
    Returns ``{"scale": [...], "bias": [...], "n_chunks": n, "r2": [...]}`` (JSON-able).
    """
    rows = store.rows("train")[:max_chunks]
    d = store.get(rows, ("levels", "mel"))
    x = pinv_chunks(d["levels"], store.mel_spec, band_spec=store.band_spec, matrix=matrix).astype(np.float64)
    y = d["mel"].astype(np.float64)
    x = x.reshape(-1, x.shape[-1])
    y = y.reshape(-1, y.shape[-1])
    xm, ym = x.mean(axis=0), y.mean(axis=0)
    var = ((x - xm) ** 2).mean(axis=0)
    cov = ((x - xm) * (y - ym)).mean(axis=0)
    scale = np.where(var > 1e-12, cov / np.maximum(var, 1e-12), 1.0)
    bias = ym - scale * xm
    resid = ((y - (scale * x + bias)) ** 2).mean(axis=0)
    r2 = 1.0 - resid / np.maximum(((y - ym) ** 2).mean(axis=0), 1e-12)
    return {"scale": scale.tolist(), "bias": bias.tolist(), "n_chunks": int(rows.size), "r2": r2.tolist()}


_Loss = Callable[[torch.Tensor, dict[str, torch.Tensor]], tuple[torch.Tensor, "torch.Tensor | None"]]


def _teacher_logits(probs: torch.Tensor) -> torch.Tensor:
    # The cache stores probabilities; their logits, clipped away from 0 and 1 (float32
    # keeps ~7 digits, so log(p) is exact enough down to the clip).
    q = probs.clamp(1e-6, 1.0 - 1e-6)
    return torch.log(q) - torch.log1p(-q)


def _loss_fn(config: TrainConfig, teacher: Teacher | None) -> _Loss:
    """``loss(mel, targets) -> (value, classifier logits or None)`` for ``config.mode``."""
    if config.mode == "mels":
        return lambda mel, t: (F.mse_loss(mel, t["mel"]), None)
    assert teacher is not None
    clf = teacher.module

    def bce(mel: torch.Tensor, t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = clf(mel).logits
        return F.binary_cross_entropy_with_logits(logits, t["probs"]), logits

    def logit_mse(mel: torch.Tensor, t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        # Logit matching (Ba & Caruana 2014): every class pulls with a gradient that does
        # not vanish when its probability is near 0, so a flat Mel that makes the teacher
        # say "nothing" (which the mostly-zero BCE terms reward) is no longer a good answer.
        logits = clf(mel).logits
        return F.mse_loss(logits, _teacher_logits(t["probs"])), logits

    def embed_mse(mel: torch.Tensor, t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        # Feature matching on the teacher's pooled embedding (its input to the last layer),
        # plus the paper's BCE: the embedding carries the whole ranking of the classes.
        out = clf(mel)
        with torch.no_grad():
            target = clf(t["mel"]).embedding
        value = F.mse_loss(out.embedding, target) + F.binary_cross_entropy_with_logits(out.logits, t["probs"])
        return value, out.logits

    def feature_stats(mel: torch.Tensor, t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        # Texture matching through the teacher: per layer and channel, the mean and the
        # standard deviation over time and frequency of its feature maps on the transcoded
        # Mel against those on the ground truth (normalised per layer), plus BCE. Position-
        # free statistics ask for the activity the teacher expects (which a flat or smeared
        # Mel lacks) without asking for detail that the third-octave levels do not hold.
        out, maps = clf.forward_with_maps(mel)
        with torch.no_grad():
            _, ref = clf.forward_with_maps(t["mel"])
        terms = []
        for m, r in zip(maps, ref):
            for stat in (lambda z: z.mean(dim=(2, 3)), lambda z: z.std(dim=(2, 3))):
                a, b = stat(m), stat(r)
                terms.append(F.mse_loss(a, b) / (b.pow(2).mean() + 1e-6))
        value = torch.stack(terms).mean() + F.binary_cross_entropy_with_logits(out.logits, t["probs"])
        return value, out.logits

    w, temp = config.kd_weight, config.kd_temperature

    def distill(mel: torch.Tensor, t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        # BCE (the paper's CNN-logits loss) plus Hinton-style distillation on the softmax of
        # the logits: it weighs the ranking of the classes, hence the teacher's top class,
        # which the 521 mostly-zero BCE terms barely see.
        logits = clf(mel).logits
        kd = F.kl_div(F.log_softmax(logits / temp, dim=-1), F.log_softmax(_teacher_logits(t["probs"]) / temp, dim=-1),
                      log_target=True, reduction="batchmean") * temp * temp
        return F.binary_cross_entropy_with_logits(logits, t["probs"]) + w * kd, logits

    a, b = 1.0 - config.prop_logit / 100.0, config.hybrid_k * config.prop_logit / 100.0

    def hybrid(mel: torch.Tensor, t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        # The paper's hybrid loss (specs/transcoder.md §5): the Mel MSE keeps the transcoded
        # Mel close to the ground truth while the BCE pulls the classifier's output.
        logits = clf(mel).logits
        return a * F.mse_loss(mel, t["mel"]) + b * F.binary_cross_entropy_with_logits(logits, t["probs"]), logits

    if config.mode == "feature_stats" and not hasattr(clf, "forward_with_maps"):
        raise InvalidInputError(f"--mode feature_stats needs a teacher with feature maps (YAMNet, EfficientAT), "
                                f"not {type(clf).__name__}")
    return {"logits": bce, "logit_mse": logit_mse, "embed_mse": embed_mse, "feature_stats": feature_stats,
            "distill": distill, "hybrid": hybrid}[config.mode]


def _validate(model: CNNTranscoder, rows: np.ndarray, batches: _Batches, loss: _Loss,
              batch_size: int) -> tuple[float, float | None]:
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
    meta["init_from"] = {"run": str(src.resolve()), "epoch": int(ck["epoch"]), "mode": src_cfg.mode,
                         "best_pt_sha256": sha256_file(src / "best.pt")}
    if "calibration" in src_meta:
        meta["calibration"] = src_meta["calibration"]
    return ck["model"]


def _top1_text(top1: float | None) -> str:
    return "" if top1 is None else f", top-1 agreement {100 * top1:.1f} %"


def _run_fingerprint(store: ChunkStore) -> dict[str, Any]:
    return {"teacher_sha256": store.teacher_info["sha256"], "teacher": store.teacher_info["name"],
            "band_spec": store.manifest["band_spec"], "mel_spec": store.manifest["mel_spec"]}


def _write_logs(run: Path, history: list[dict[str, Any]]) -> None:
    cols = ["epoch", "train_loss", "val_loss", "val_top1", "best_epoch", "is_best", "seconds", "n_train", "n_val", "lr", "device"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for row in history:
        w.writerow(row)
    _write_text_atomic(run / "log.csv", buf.getvalue())
    _write_text_atomic(run / "log.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in history))


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
            raise SpecMismatchError(f"the teacher's sha256 {teacher.sha256[:12]}... differs from the one the cache "
                                    f"was built with ({store.teacher_info['sha256'][:12]}...)")
        teacher.module.to(dev).eval()
        for p in teacher.module.parameters():
            p.requires_grad_(False)
    train_rows, val_rows = store.rows("train"), store.rows("valid")
    if train_rows.size == 0 or val_rows.size == 0:
        raise InvalidInputError(f"{cache_dir}: needs 'train' and 'valid' chunks, has {train_rows.size} and "
                                f"{val_rows.size} (see the split options of build-dataset)")

    run.mkdir(parents=True, exist_ok=True)
    run_json = run / "run.json"
    if run_json.exists():
        meta = json.loads(run_json.read_text())
        old = {k: v for k, v in {**TrainConfig().to_dict(), **meta["config"]}.items() if k != "epochs"}
        new = {k: v for k, v in config.to_dict().items() if k != "epochs"}
        if old != new or meta["cache"] != fingerprint:
            what = [k for k in new if old.get(k) != new[k]] + (["cache"] if meta["cache"] != fingerprint else [])
            raise SpecMismatchError(f"{run} holds a run with other settings ({', '.join(what)}); "
                                    "use a new RUN_DIR or the same settings")
        matrix = np.asarray(meta["pinv_matrix"], np.float64)
        meta["config"]["epochs"] = config.epochs
    else:
        matrix = np.asarray(pinv_matrix(store.band_spec, store.mel_spec), np.float64)
        meta = {
            "format": RUN_FORMAT, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "config": config.to_dict(), "cache": fingerprint, "cache_dir": str(Path(cache_dir).resolve()),
            "counts": store.manifest.get("counts", {}),
            "pinv_matrix": matrix.tolist(),
            "pinv_matrix_from": "spectral_transcoder.pinv.pinv_matrix (float64 numpy pinv, rcond 1e-15, ReLU)",
        }
    last = run / "last.pt"
    init = _initial_weights(config, fingerprint, meta) if config.init_from and not last.exists() else None
    _write_text_atomic(run_json, json.dumps(meta, indent=1))

    torch.manual_seed(config.seed)
    model = CNNTranscoder(**config.arch(store.mel_spec.n_mels)).to(dev)
    if config.calibrate:
        cal = meta.get("calibration")
        if cal is None:
            cal = fit_calibration(store, matrix)
            meta["calibration"] = cal
            _write_text_atomic(run_json, json.dumps(meta, indent=1))
        with torch.no_grad():
            model.in_scale.copy_(torch.tensor(cal["scale"]))
            model.in_bias.copy_(torch.tensor(cal["bias"]))
    if init is not None:
        model.load_state_dict(init)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    loss = _loss_fn(config, teacher)
    batches = _Batches(store, matrix, config.mode, dev)
    say = log or (lambda msg: None)

    if last.exists():
        ck = torch_load(last, "training checkpoint")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start, best, history = int(ck["epoch"]) + 1, dict(ck["best"]), list(ck["history"])
        _set_rng_state(ck["rng"])
        say(f"resuming {run} after epoch {start - 1} (best: epoch {best['epoch']}, val {best['val_loss']:.6g})")
    else:
        t0 = time.perf_counter()
        val, top1 = _validate(model, val_rows, batches, loss, max(config.batch_size, 256))
        best = {"epoch": 0, "val_loss": val}
        _atomic_save({"model": model.state_dict(), "epoch": 0, "val_loss": val, "config": config.to_dict()},
                     run / "best.pt")
        history = [{"epoch": 0, "train_loss": None, "val_loss": val, "val_top1": top1, "best_epoch": 0, "is_best": True,
                    "seconds": time.perf_counter() - t0, "n_train": int(train_rows.size), "n_val": int(val_rows.size),
                    "lr": config.lr, "device": str(dev)}]
        _atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 0, "best": best,
                      "history": history, "rng": _rng_state(), "config": config.to_dict()}, last)
        _write_logs(run, history)
        say(f"epoch 0: val {val:.6g}{_top1_text(top1)} ({config.mode}, {count_parameters(model)} parameters, "
            f"{train_rows.size} train / {val_rows.size} valid chunks, {dev})")
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
            _atomic_save({"model": model.state_dict(), "epoch": epoch, "val_loss": val, "config": config.to_dict()},
                         run / "best.pt")
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val, "val_top1": top1,
                        "best_epoch": best["epoch"],
                        "is_best": is_best, "seconds": time.perf_counter() - t0, "n_train": int(train_rows.size),
                        "n_val": int(val_rows.size), "lr": config.lr, "device": str(dev)})
        _atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "best": best,
                      "history": history, "rng": _rng_state(), "config": config.to_dict()}, last)
        _write_logs(run, history)
        say(f"epoch {epoch}/{config.epochs}: train {train_loss:.6g}, val {val:.6g}{_top1_text(top1)}"
            f"{' (best)' if is_best else ''}, {history[-1]['seconds']:.1f} s")
    return TrainResult(run, int(best["epoch"]), float(best["val_loss"]), history)


def load_run(run_dir: str | os.PathLike, *, which: str = "best") -> tuple[CNNTranscoder, dict[str, Any], dict[str, Any]]:
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


# ---------------------------------------------------------------------- export
_DATA_LICENCES = (
    # (test on a manifest file key, licence text)
    (lambda key: key.split("/")[0].lower().startswith("fold") or "urbansound" in key.lower(),
     "UrbanSound8K (Salamon, Jacoby & Bello 2014): CC BY-NC 3.0, non-commercial"),
    (lambda key: _is_tau(key),
     "TAU Urban Acoustic Scenes 2020 Mobile (Tampere University): research use only"),
)


def _is_tau(key: str) -> bool:
    stem = Path(key).stem
    parts = stem.split("-")
    return len(parts) >= 5 and parts[-1] in ("a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6")


def data_licences(manifest: dict[str, Any]) -> list[str]:
    """Licences of the training data of a cache, recognised from its file keys.

    UrbanSound8K folds (``foldN/...``) and TAU clips (``scene-city-loc-seg-device``) are
    recognised; any other file is listed under "licence not recorded" by its directory.
    """
    out: list[str] = []
    unknown: set[str] = set()
    for key in manifest["files"]:
        for test, text in _DATA_LICENCES:
            if test(key):
                if text not in out:
                    out.append(text)
                break
        else:
            unknown.add(key.split("/")[0])
    if unknown:
        out.append(f"other recordings in {', '.join(sorted(unknown))}: licence not recorded by this project "
                   "(check each source before redistribution)")
    return out


_LOSS_TEXT: dict[str, Callable[[TrainConfig], str]] = {
    "logits": lambda c: "BCE(teacher probs)",
    "mels": lambda c: "MSE(Mel)",
    "distill": lambda c: (f"BCE(teacher probs) + {c.kd_weight:g} x T^2 KL(softmax(teacher logits / T) || "
                          f"softmax(logits / T)), T = {c.kd_temperature:g}"),
    "hybrid": lambda c: (f"{1 - c.prop_logit / 100:g} x MSE(Mel) + {c.hybrid_k * c.prop_logit / 100:g} x "
                         f"BCE(teacher probs) (the paper's hybrid, p = {c.prop_logit:g}, k = {c.hybrid_k:g})"),
    "logit_mse": lambda c: "MSE(teacher logits) (logits from the cached probabilities clipped to [1e-6, 1 - 1e-6])",
    "embed_mse": lambda c: "MSE(teacher embedding on the ground-truth Mel) + BCE(teacher probs)",
    "feature_stats": lambda c: ("mean over layers and {mean, std} of MSE(per-channel statistic of the teacher's "
                                "feature maps vs those on the ground-truth Mel) / mean square of the latter "
                                "+ BCE(teacher probs)"),
}


_KIND_TEXT = {
    "logits": "CNN-logits: BCE against the frozen teacher's sigmoid outputs on 1-s chunks",
    "distill": "CNN-logits with distillation: BCE against the frozen teacher's sigmoid outputs on 1-s chunks "
               "plus a softmax distillation term on its logits",
    "hybrid": "hybrid: Mel MSE plus BCE against the frozen teacher's sigmoid outputs",
    "mels": "CNN-mels: MSE against the ground-truth Mel",
    "logit_mse": "CNN-logits by logit matching: MSE against the frozen teacher's logits on 1-s chunks",
    "embed_mse": "CNN-logits with feature matching: MSE against the frozen teacher's embedding plus BCE "
                 "against its sigmoid outputs on 1-s chunks",
    "feature_stats": "CNN-logits with texture matching: the per-channel mean and spread of the frozen teacher's "
                     "feature maps matched to those on the ground-truth Mel, plus BCE against its sigmoid "
                     "outputs on 1-s chunks",
}


def _default_name(teacher: str, mode: str) -> str:
    base = {"yamnet": "yamnet", "efficientat": "efficientat-mn04"}.get(teacher, teacher)
    return f"{base}-cnn-mels" if mode == "mels" else base


def _training_data_text(manifest: dict[str, Any], teacher: dict[str, Any], mode: str) -> str:
    c = manifest.get("counts", {})
    files, chunks = c.get("files", {}), c.get("chunks", {})
    dirs = ", ".join(d["name"] for d in manifest["audio_dirs"])
    kind = _KIND_TEXT[mode]
    return (f"{kind}; teacher {teacher['name']} ({teacher['source']}, sha256 {teacher['sha256'][:12]}...); "
            f"audio folders {dirs}; peak-normalised files cut into 1-s chunks; "
            f"train {files.get('train', '?')} files / {chunks.get('train', '?')} chunks, "
            f"valid {files.get('valid', '?')} / {chunks.get('valid', '?')}, "
            f"eval {files.get('eval', '?')} / {chunks.get('eval', '?')} (held out: {manifest.get('split_rule', '')})")


def _start_text(meta: dict[str, Any]) -> str:
    src = meta.get("init_from")
    if not src:
        return "random (seeded) initialisation"
    return (f"the best weights (epoch {src['epoch']}) of the {src['mode']} run {Path(src['run']).name} "
            f"(best.pt sha256 {src['best_pt_sha256'][:12]}...), trained on the same data")


def render_model_card(values: dict[str, Any]) -> str:
    """Fill ``training/MODEL_CARD.md.in`` (``$name`` placeholders) with ``values``."""
    template = string.Template(_CARD_TEMPLATE.read_text())
    return template.substitute({k: ("" if v is None else str(v)) for k, v in values.items()})


def _metrics_table(metrics: dict[str, Any]) -> str:
    rows = metrics.get("methods") if isinstance(metrics, dict) else None
    if not rows:
        return "(no evaluation recorded: run `python -m training evaluate ... --write-run-metrics`)"
    def f(v: Any, fmt: str, scale: float = 1.0) -> str:
        return "–" if v is None else format(scale * v, fmt)

    lines = ["| method | Mel spec | Mel MSE | KL | PtoPa-FC % | files |", "|---|---|---|---|---|---|"]
    for name, m in rows.items():
        lines.append(f"| {name} | {m.get('mel_spec', '')} | {f(m.get('mel_mse'), '.4g')} | {f(m.get('kl'), '.6f')} | "
                     f"{f(m.get('ptopafc'), '.1f', 100.0)} | {m.get('n_files', '')} |")
    return "\n".join(lines)


def export_run(
    run_dir: str | os.PathLike,
    output: str | os.PathLike,
    *,
    name: str | None = None,
    metrics: dict[str, Any] | None = None,
    exporter: str = "dynamo",
    card: bool = True,
    notes: str = "",
) -> ModelMetadata:
    """Export a run's best checkpoint to a self-describing ONNX transcoder (+ a model card).

    Uses h3's :func:`training.export.export_onnx`. The metadata holds: kind
    ``transcoder``, the cache's BandSpec (input) and MelSpec (output), the PINV matrix
    the CNN was trained with, the training data and split, the teacher, the metrics
    (``metrics`` or ``RUN_DIR/metrics.json`` written by ``evaluate --write-run-metrics``),
    the licence of the weights (MIT) and of the data. The model card is written beside
    the file as ``<stem>.md``, with ``notes`` (Markdown: status, caveats) as its
    "Status" section. Returns the metadata.
    """
    from .export import export_onnx

    run = Path(run_dir)
    model, meta, ck = load_run(run, which="best")
    cfg = TrainConfig(**meta["config"])
    manifest = json.loads((Path(meta["cache_dir"]) / "manifest.json").read_text()) \
        if (Path(meta["cache_dir"]) / "manifest.json").is_file() else {"files": {}, "audio_dirs": []}
    from spectral_transcoder.specs import spec_from_json

    band: BandSpec = spec_from_json(json.dumps(meta["cache"]["band_spec"]))  # type: ignore[assignment]
    mel: MelSpec = spec_from_json(json.dumps(meta["cache"]["mel_spec"]))  # type: ignore[assignment]
    teacher = manifest.get("teacher", {"name": meta["cache"]["teacher"], "source": "?",
                                       "sha256": meta["cache"]["teacher_sha256"]})
    if metrics is None and (run / "metrics.json").is_file():
        metrics = json.loads((run / "metrics.json").read_text())
    history = json.loads((run / "log.jsonl").read_text().splitlines()[-1]) if (run / "log.jsonl").is_file() else {}
    licences = data_licences(manifest)
    name = name or _default_name(teacher["name"], cfg.mode)
    best_pt = run / "best.pt"
    md = ModelMetadata(
        kind="transcoder",
        name=name,
        input_spec=band,
        output_spec=mel,
        source=f"{run.name}/best.pt (epoch {ck['epoch']})",
        source_sha256=sha256_file(best_pt),
        license=f"{WEIGHTS_LICENSE}; trained on: " + "; ".join(licences),
        training_data=_training_data_text(manifest, teacher, cfg.mode),
        metrics={"best_epoch": int(ck["epoch"]), "best_val_loss": float(ck["val_loss"]),
                 "val_loss_kind": _LOSS_TEXT[cfg.mode](cfg),
                 **({"evaluation": metrics} if metrics else {})},
        pinv={"matrix": meta["pinv_matrix"], "phi_plus": meta.get("pinv_matrix_from", "")},
        extra={"architecture": {"kind": "cnn_pinv", **model.config},
               "n_parameters": count_parameters(model),
               "training": {**cfg.to_dict(), "epochs_run": history.get("epoch"), "optimizer": "Adam",
                            "loss": _LOSS_TEXT[cfg.mode](cfg),
                            **({"init_from": meta["init_from"]} if "init_from" in meta else {})},
               "training_kind": cfg.mode,
               "teacher": {k: teacher.get(k) for k in ("name", "kind", "source", "sha256", "n_classes", "mel_spec")},
               "data_licences": licences,
               "input": "PINV Mel of one 1-s chunk (chunk_frames x n_mels) in the output spec's units"},
    )
    example = torch.randn(2, mel.chunk_frames, mel.n_mels, generator=torch.Generator().manual_seed(0))
    export_onnx(model, md, output, example=example, dynamic_frames=True, min_frames=1, exporter=exporter)
    if card:
        text = render_model_card({
            "name": name, "kind": cfg.mode, "file": Path(output).name,
            "input_spec": band.name, "output_spec": mel.name, "chunk_frames": mel.chunk_frames,
            "n_mels": mel.n_mels, "teacher": f"{teacher['name']} ({teacher.get('source', '?')}, sha256 "
                                             f"{teacher['sha256'][:12]}...)",
            "front_end": mel.name, "architecture": json.dumps(model.config),
            "n_parameters": count_parameters(model), "epochs": history.get("epoch", "?"),
            "start": _start_text(meta),
            "best_epoch": ck["epoch"], "best_val_loss": f"{float(ck['val_loss']):.6g}",
            "loss": md.extra["training"]["loss"], "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed,
            "training_data": md.training_data, "data_licences": "\n".join(f"  - {x}" for x in licences),
            "weights_license": WEIGHTS_LICENSE, "metrics_table": _metrics_table(metrics or {}),
            "metrics_note": (metrics or {}).get("note", ""),
            "notes": f"\n## Status\n{notes.strip()}\n" if notes.strip() else "",
            "date": _dt.date.today().isoformat(),
        })
        _write_text_atomic(Path(output).with_suffix(".md"), text)
    return md


#: Where transcoders shipped with the package live in the repository (None outside a clone).
PACKAGE_MODELS_DIR = package_models_dir()


def ship(model: str | os.PathLike, *, dest: str | os.PathLike | None = PACKAGE_MODELS_DIR) -> dict[str, Any]:
    """Put an exported transcoder (and its model card ``<stem>.md``) into the package.

    The file is copied to ``dest/<metadata name>.onnx`` (the registry name users load,
    e.g. ``Transcoder.load("yamnet")``), the card beside it as ``<name>.md``, and its
    sha256 is recorded in ``dest/index.json``, which the registry checks at every load.
    Returns the index record.
    """
    import shutil

    from spectral_transcoder.models import read_metadata
    from spectral_transcoder.registry import read_index, write_index

    src = Path(model)
    meta, sha = read_metadata(src)
    if meta.kind != "transcoder":
        raise InvalidInputError(f"{src}: only transcoders ship with the package, this is a {meta.kind}")
    card = src.with_suffix(".md")
    if not card.is_file():
        raise InvalidInputError(f"{src}: no model card {card.name} beside it (export-run writes one)")
    if dest is None:
        raise InvalidInputError("ship: outside a clone of the repository there is no package folder to ship "
                                "into; give --dest DIR (python/spectral_transcoder/models_data of your clone)")
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, out / f"{meta.name}.onnx")
    shutil.copyfile(card, out / f"{meta.name}.md")
    index = read_index(out / "index.json")  # the registry's own index format and atomic writer
    record = {"file": f"{meta.name}.onnx", "sha256": sha, "card": f"{meta.name}.md",
              "input_spec": meta.input_spec.name, "output_spec": meta.output_spec.name if meta.output_spec else None}
    index["models"]["transcoder"][meta.name] = record
    write_index(out / "index.json", index)
    return record


# ---------------------------------------------------------------------- CLI
def add_parsers(sub: Any) -> None:
    """Register ``train`` and ``export-run`` on an argparse subparsers object."""
    p = sub.add_parser(
        "train", help="train (or resume) a CNN transcoder on a dataset cache",
        description="Train the residual CNN on the PINV of the cached third-octave levels: --mode logits "
        "(BCE against the frozen teacher, the paper's CNN-logits), --mode mels (MSE to the ground-truth Mel), "
        "--mode hybrid (the paper's mix of both), --mode distill (BCE plus softmax distillation), --mode logit_mse "
        "(MSE to the teacher's logits), --mode embed_mse (MSE to its embedding, plus BCE) or --mode feature_stats "
        "(its feature maps' per-channel mean and spread, plus BCE). Rerun the "
        "same command to resume after the last finished epoch (a larger --epochs continues training).",
    )
    p.add_argument("cache_dir", metavar="CACHE_DIR")
    p.add_argument("-o", "--output", required=True, metavar="RUN_DIR", help="run directory (created or resumed)")
    p.add_argument("--mode", choices=MODES, default="logits",
                   help="loss: logits (the paper's CNN-logits, BCE), mels (CNN-mels, MSE), hybrid (the paper's "
                   "MSE + k BCE mix) or distill (BCE + softmax distillation); default logits")
    p.add_argument("--epochs", type=int, default=200, help="epochs (default 200, the paper's)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", type=int, default=5, help="conv layers (default 5)")
    p.add_argument("--channels", type=int, default=64, help="hidden channels (default 64)")
    p.add_argument("--kernel-time", type=int, default=3)
    p.add_argument("--kernel-mel", type=int, default=5)
    p.add_argument("--dilation", type=int, default=1)
    p.add_argument("--calibrate", action="store_true",
                   help="fit a per-bin affine map PINV -> target Mel on the training split, in front of the CNN "
                   "(recommended for magnitude targets such as the official YAMNet front end)")
    p.add_argument("--prop-logit", type=float, default=TrainConfig.prop_logit,
                   help="--mode hybrid: the paper's p in percent (default %(default)s)")
    p.add_argument("--hybrid-k", type=float, default=TrainConfig.hybrid_k,
                   help="--mode hybrid: the paper's k (default %(default)s, YAMNet's)")
    p.add_argument("--kd-weight", type=float, default=TrainConfig.kd_weight,
                   help="--mode distill: weight of the softmax distillation term (default %(default)s)")
    p.add_argument("--kd-temperature", type=float, default=TrainConfig.kd_temperature,
                   help="--mode distill: softmax temperature (default %(default)s)")
    p.add_argument("--init-from", metavar="RUN_DIR", default="",
                   help="start from the best weights of another run on the same cache and architecture")
    p.add_argument("--teacher-source", metavar="FILE", help="teacher checkpoint (default: the cache's)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, or auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_train)

    e = sub.add_parser(
        "export-run", help="export a run's best checkpoint to an ONNX transcoder with metadata and a model card",
    )
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("-o", "--output", required=True, metavar="MODEL.onnx")
    e.add_argument("--name", help="model name in the metadata (default: yamnet / efficientat-mn04 / ...-cnn-mels)")
    e.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo")
    e.add_argument("--notes", metavar="FILE.md", help="Markdown put in the model card's Status section")
    e.set_defaults(func=_cmd_export)

    s = sub.add_parser(
        "ship", help="put an exported transcoder and its model card into the package (models_data/ + sha256)",
        description="Copy MODEL.onnx and its card MODEL.md into python/spectral_transcoder/models_data/ under the "
        "model's metadata name, and record its sha256 in models_data/index.json. The package then loads it "
        "with Transcoder.load(NAME) from any install.",
    )
    s.add_argument("model", metavar="MODEL.onnx")
    s.add_argument("--dest", default=PACKAGE_MODELS_DIR, help="models folder (default: the repository's package "
                   "folder python/spectral_transcoder/models_data; required outside a clone)")
    s.set_defaults(func=_cmd_ship)


def _cmd_train(args: Any) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(mode=args.mode, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      n_layers=args.layers, channels=args.channels, kernel_time=args.kernel_time,
                      kernel_mel=args.kernel_mel, dilation=args.dilation, kd_weight=args.kd_weight,
                      kd_temperature=args.kd_temperature, prop_logit=args.prop_logit, hybrid_k=args.hybrid_k,
                      calibrate=args.calibrate, init_from=args.init_from)
    teacher = None
    if args.teacher_source and cfg.mode != "mels":
        info = ChunkStore(args.cache_dir).teacher_info
        teacher = load_teacher(info["name"], args.teacher_source)
    res = train(args.cache_dir, args.output, cfg, teacher=teacher, device=args.device, progress=not args.no_progress)
    print(f"{res.run_dir}: best epoch {res.best_epoch}, validation loss {res.best_val_loss:.6g}")
    return 0


def _cmd_export(args: Any) -> int:
    notes = Path(args.notes).read_text() if args.notes else ""
    md = export_run(args.run_dir, args.output, name=args.name, exporter=args.exporter, notes=notes)
    print(f"wrote {args.output} ({md.name}: {md.input_spec.name} -> {md.output_spec.name}) and "
          f"{Path(args.output).with_suffix('.md')}")
    return 0


def _cmd_ship(args: Any) -> int:
    rec = ship(args.model, dest=args.dest)
    print(f"shipped {rec['file']} (sha256 {rec['sha256'][:12]}..., {rec['input_spec']} -> {rec['output_spec']}) "
          f"and {rec['card']} in {args.dest}")
    return 0
