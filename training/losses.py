"""What the paper-style trainer (:mod:`training.train`) optimises, one loss per ``--mode``.

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

:class:`Batches` reads the PINV input and the targets a mode needs from a dataset cache,
:func:`loss_fn` builds the loss, :func:`loss_text` describes it (run metadata, model card), and
:func:`fit_calibration` fits the per-bin affine input map of ``--calibrate``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from spectral_transcoder.errors import InvalidInputError
from spectral_transcoder.pinv import pinv_chunks

from .cache import ChunkStore
from .teachers import Teacher

if TYPE_CHECKING:
    from .train import TrainConfig

__all__ = ["MODES", "Batches", "Loss", "loss_fn", "loss_text", "fit_calibration"]

MODES = ("logits", "mels", "distill", "hybrid", "logit_mse", "embed_mse", "feature_stats")


class Batches:
    """PINV input of cached rows and the targets its loss reads, as torch tensors on
    ``device``: a dict with the teacher's probabilities (``probs``) and/or the
    ground-truth Mel (``mel``)."""

    _TARGETS: ClassVar[dict[str, tuple[str, ...]]] = {
        "mels": ("mel",),
        "hybrid": ("mel", "probs"),
        "embed_mse": ("mel", "probs"),
        "feature_stats": ("mel", "probs"),
    }

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


Loss = Callable[[torch.Tensor, dict[str, torch.Tensor]], tuple[torch.Tensor, "torch.Tensor | None"]]


def _teacher_logits(probs: torch.Tensor) -> torch.Tensor:
    # The cache stores probabilities; their logits, clipped away from 0 and 1 (float32
    # keeps ~7 digits, so log(p) is exact enough down to the clip).
    q = probs.clamp(1e-6, 1.0 - 1e-6)
    return torch.log(q) - torch.log1p(-q)


def loss_fn(config: TrainConfig, teacher: Teacher | None) -> Loss:
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
        kd = (
            F.kl_div(
                F.log_softmax(logits / temp, dim=-1),
                F.log_softmax(_teacher_logits(t["probs"]) / temp, dim=-1),
                log_target=True,
                reduction="batchmean",
            )
            * temp
            * temp
        )
        return F.binary_cross_entropy_with_logits(logits, t["probs"]) + w * kd, logits

    a, b = 1.0 - config.prop_logit / 100.0, config.hybrid_k * config.prop_logit / 100.0

    def hybrid(mel: torch.Tensor, t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        # The paper's hybrid loss (docs/conventions.md §5): the Mel MSE keeps the transcoded
        # Mel close to the ground truth while the BCE pulls the classifier's output.
        logits = clf(mel).logits
        return a * F.mse_loss(mel, t["mel"]) + b * F.binary_cross_entropy_with_logits(logits, t["probs"]), logits

    if config.mode == "feature_stats" and not hasattr(clf, "forward_with_maps"):
        raise InvalidInputError(
            f"--mode feature_stats needs a teacher with feature maps (YAMNet, EfficientAT), not {type(clf).__name__}"
        )
    return {
        "logits": bce,
        "logit_mse": logit_mse,
        "embed_mse": embed_mse,
        "feature_stats": feature_stats,
        "distill": distill,
        "hybrid": hybrid,
    }[config.mode]


def loss_text(config: TrainConfig) -> str:
    """The loss of ``config.mode`` in words, with its weights (run metadata and model cards)."""
    return _LOSS_TEXT[config.mode](config)


_LOSS_TEXT: dict[str, Callable[[TrainConfig], str]] = {
    "logits": lambda c: "BCE(teacher probs)",
    "mels": lambda c: "MSE(Mel)",
    "distill": lambda c: (
        f"BCE(teacher probs) + {c.kd_weight:g} x T^2 KL(softmax(teacher logits / T) || "
        f"softmax(logits / T)), T = {c.kd_temperature:g}"
    ),
    "hybrid": lambda c: (
        f"{1 - c.prop_logit / 100:g} x MSE(Mel) + {c.hybrid_k * c.prop_logit / 100:g} x "
        f"BCE(teacher probs) (the paper's hybrid, p = {c.prop_logit:g}, k = {c.hybrid_k:g})"
    ),
    "logit_mse": lambda c: "MSE(teacher logits) (logits from the cached probabilities clipped to [1e-6, 1 - 1e-6])",
    "embed_mse": lambda c: "MSE(teacher embedding on the ground-truth Mel) + BCE(teacher probs)",
    "feature_stats": lambda c: (
        "mean over layers and {mean, std} of MSE(per-channel statistic of the teacher's "
        "feature maps vs those on the ground-truth Mel) / mean square of the latter "
        "+ BCE(teacher probs)"
    ),
}
