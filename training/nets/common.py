"""Types shared by the network definitions."""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["ClassifierOutput"]


class ClassifierOutput(NamedTuple):
    """Outputs of every classifier network, in the ONNX output order."""

    probs: torch.Tensor
    """(B, n_classes) sigmoid probabilities."""
    logits: torch.Tensor
    """(B, n_classes) pre-sigmoid scores."""
    embedding: torch.Tensor
    """(B, n_features) pooled features before the head."""
