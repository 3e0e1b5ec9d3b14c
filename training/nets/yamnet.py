"""YAMNet (MobileNet v1 body, 521 AudioSet classes), docs/conventions.md §9.

One definition, in the BatchNorm form of the torch_audioset port (key names
``layer1.fused.{conv,bn}``, ``layerN.{depthwise_conv,pointwise_conv}.{conv,bn}``,
``classifier``; 3 740 425 parameters). BatchNorm has eps 1e-4 and no learnt scale
upstream (TF ``scale=False``), so ``bn.weight`` stays 1; folded checkpoints (the
tflite files) load with running_mean 0 and running_var 1 - eps, which makes the BN
an exact identity plus bias.

TF "SAME" padding is explicit: the pad is computed from the input size, with any
odd pad at the bottom/right ((0, 1) at stride 2 for the even sizes of a 96x64 patch).
A PyTorch ``padding=1`` at stride 2 would shift the sampling grid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .common import ClassifierOutput

__all__ = ["YAMNet", "YAMNET_LAYERS", "BN_EPS", "same_padding"]

#: BatchNorm epsilon of YAMNet (TF), not PyTorch's default 1e-5.
BN_EPS = 1e-4

#: (stride, output channels) of layers 2..14 (depthwise 3x3 + pointwise 1x1).
YAMNET_LAYERS: tuple[tuple[int, int], ...] = (
    (1, 64),
    (2, 128),
    (1, 128),
    (2, 256),
    (1, 256),
    (2, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (2, 1024),
    (1, 1024),
)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) along one axis of length ``size``."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _ConvBN(nn.Module):
    """Conv (no bias) -> BN(eps 1e-4) -> ReLU with TF-SAME padding."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, groups: int = 1) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=BN_EPS)
        # TF has no BN scale: keep it fixed at 1 (it is still a parameter, as in the port).
        nn.init.ones_(self.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel > 1:
            # Python ints from the static shape: the ONNX export uses a fixed 96x64 input.
            top, bottom = same_padding(int(x.shape[-2]), self.kernel, self.stride)
            left, right = same_padding(int(x.shape[-1]), self.kernel, self.stride)
            x = F.pad(x, (left, right, top, bottom))
        return F.relu(self.bn(self.conv(x)))


class _Layer1(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fused = _ConvBN(1, 32, 3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused(x)


class _Separable(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.depthwise_conv = _ConvBN(c_in, c_in, 3, stride, groups=c_in)
        self.pointwise_conv = _ConvBN(c_in, c_out, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class YAMNet(nn.Module):
    """YAMNet on time-major log-Mel patches ``(B, 96, 64)`` -> :class:`ClassifierOutput`.

    ``probs``/``logits`` are (B, 521) (YAMNet class order), ``embedding`` (B, 1024)
    is the global mean of the last ReLU output. The input is ln(mel + 0.001) of the
    MelSpec the model was converted for (``yamnet`` or ``yamnet_torchport``).
    """

    n_features = 1024

    def __init__(self, n_classes: int = 521) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.layer1 = _Layer1()
        c_in = 32
        for i, (stride, c_out) in enumerate(YAMNET_LAYERS, start=2):
            setattr(self, f"layer{i}", _Separable(c_in, c_out, stride))
            c_in = c_out
        self.classifier = nn.Linear(c_in, n_classes)

    def layers(self) -> list[nn.Module]:
        return [getattr(self, f"layer{i}") for i in range(1, len(YAMNET_LAYERS) + 2)]

    def forward_with_maps(self, mel: torch.Tensor) -> tuple[ClassifierOutput, list[torch.Tensor]]:
        """The output and the feature map of each of the 14 layers, (B, C, time, mel)."""
        x = mel.unsqueeze(1)  # (B, 1, time, mel): H = time, W = mel, as in TF's NHWC
        maps = []
        for layer in self.layers():
            x = layer(x)
            maps.append(x)
        embedding = x.mean(dim=(2, 3))
        logits = self.classifier(embedding)
        return ClassifierOutput(torch.sigmoid(logits), logits, embedding), maps

    def forward(self, mel: torch.Tensor) -> ClassifierOutput:
        return self.forward_with_maps(mel)[0]
