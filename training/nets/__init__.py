"""PyTorch definitions of every network of the project, one each.

All take time-major Mels ``(batch, frames, n_mels)``. The transcoder returns a Mel of
the same shape; the classifiers return a :class:`ClassifierOutput`
``(probs, logits, embedding)``.
"""

from __future__ import annotations

from .cnn import CNNTranscoder
from .common import ClassifierOutput
from .efficientat import EfficientATMN
from .pann import Cnn14, ResNet38
from .yamnet import YAMNet

__all__ = ["CNNTranscoder", "ClassifierOutput", "EfficientATMN", "Cnn14", "ResNet38", "YAMNet", "count_parameters"]


def count_parameters(module, trainable_only: bool = True) -> int:
    """Number of parameters (``requires_grad`` ones only by default); buffers are never counted."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
