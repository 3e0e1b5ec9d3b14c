"""Teachers: the frozen classifiers whose outputs the transcoders learn to reproduce.

:func:`load_teacher` builds one (YAMNet or EfficientAT) with the converters of
:mod:`training.convert`; a :class:`Teacher` pairs the network with the Mel spec it reads and
the checksum of its weights, which dataset caches and runs record, and runs it in batches
(:meth:`Teacher.probs`, :meth:`Teacher.logits`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spectral_transcoder.errors import ModelError
from spectral_transcoder.metadata import Label
from spectral_transcoder.specs import MelSpec, get_mel_spec

from .paths import shared_dir

__all__ = ["TEACHERS", "DEFAULT_MODELS_DIR", "Teacher", "load_teacher"]

#: Teacher name -> (converter KIND of training.convert, default file under the models
#: folder, its Mel spec, the label CSV options it needs).
TEACHERS: dict[str, dict[str, str]] = {
    "yamnet": {
        "kind": "yamnet-tflite",
        "file": "yamnet_int8_perchannel.tflite",
        "spec": "yamnet",
        "labels": "class_labels_indices.csv",
        "class_map": "yamnet_class_map.csv",
    },
    "efficientat": {
        "kind": "efficientat",
        "file": "mn04_as_mAP_432.pt",
        "spec": "efficientat",
        "labels": "class_labels_indices.csv",
    },
}
#: Where the teacher files are looked for by default ($ST_SHARED_DIR, else ../shared; training/paths.py).
DEFAULT_MODELS_DIR = shared_dir() / "models"


@dataclass
class Teacher:
    """A frozen classifier and the Mel representation it reads.

    ``module`` maps time-major Mels ``(B, T, n_mels)`` to a
    :class:`~training.nets.ClassifierOutput` (``probs`` first). ``sha256`` identifies
    the weights (the source file's checksum); caches and runs record it so that a
    trainer cannot silently use another teacher than the cache was built with.
    """

    name: str
    module: nn.Module
    mel_spec: MelSpec
    source: str
    sha256: str
    n_classes: int
    labels: list[Label] = field(default_factory=list)
    kind: str = "custom"
    source_path: str = ""

    def __post_init__(self) -> None:
        self.module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def probs(self, mel: np.ndarray, *, batch_size: int = 64, device: str | torch.device = "cpu") -> np.ndarray:
        """Sigmoid probabilities ``(N, C)`` float32 of Mels ``(N, T, n_mels)``."""
        return self._outputs(mel, "probs", batch_size, device)

    def logits(self, mel: np.ndarray, *, batch_size: int = 64, device: str | torch.device = "cpu") -> np.ndarray:
        """Pre-sigmoid scores ``(N, C)`` float32 of Mels ``(N, T, n_mels)``."""
        return self._outputs(mel, "logits", batch_size, device)

    @torch.no_grad()
    def _outputs(self, mel: np.ndarray, name: str, batch_size: int, device: str | torch.device) -> np.ndarray:
        self.module.to(device)
        out = []
        for s in range(0, mel.shape[0], batch_size):
            x = torch.from_numpy(np.ascontiguousarray(mel[s : s + batch_size], dtype=np.float32)).to(device)
            out.append(getattr(self.module(x), name).float().cpu().numpy())
        if not out:
            return np.zeros((0, self.n_classes), np.float32)
        return np.concatenate(out)

    def describe(self) -> dict[str, Any]:
        """JSON description (what the manifest and the model metadata record)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "source": self.source,
            "source_path": self.source_path,
            "sha256": self.sha256,
            "n_classes": self.n_classes,
            "mel_spec": self.mel_spec.name,
        }


def load_teacher(
    name: str, source: str | os.PathLike | None = None, *, models_dir: str | os.PathLike | None = None
) -> Teacher:
    """Load a teacher with h3's converters (:func:`training.convert.build`).

    Args:
        name: ``"yamnet"`` (``yamnet_int8_perchannel.tflite``, closer to float YAMNet;
            the official ``yamnet`` front end) or ``"efficientat"`` (``mn04_as_mAP_432.pt``).
        source: the checkpoint; default ``<models_dir>/<the file above>``.
        models_dir: where the default checkpoint and the label CSVs are looked for
            (default ``../shared/models``, beside the checkpoint when ``source`` is given).
    """
    from .convert import build

    if name not in TEACHERS:
        raise ModelError(f"unknown teacher {name!r}; choose one of: {', '.join(TEACHERS)}")
    info = TEACHERS[name]
    if source is None:
        src = Path(models_dir or DEFAULT_MODELS_DIR) / info["file"]
    else:
        src = Path(source)
    folder = Path(models_dir) if models_dir is not None else src.parent
    labels = folder / info["labels"]
    kwargs: dict[str, Any] = {"labels": labels if labels.is_file() else None}
    if "class_map" in info:
        kwargs["yamnet_class_map"] = folder / info["class_map"]
        kwargs["input_spec"] = info["spec"]
    c = build(info["kind"], src, **kwargs)
    return Teacher(
        name=name,
        module=c.module,
        mel_spec=get_mel_spec(info["spec"]),
        source=src.name,
        sha256=c.metadata.source_sha256,
        n_classes=int(c.module.n_classes),
        labels=c.metadata.labels,
        kind=info["kind"],
        source_path=str(src.resolve()),
    )
