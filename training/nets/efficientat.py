"""EfficientAT MobileNetV3 ("MN"), width 0.4, AudioSet MLP head (docs/conventions.md §10).

Module names reproduce the checkpoint's state-dict keys exactly (312 keys of
``mn04_as_mAP_432.pt``, strict load): ``features.0`` stem, ``features.1..15``
inverted residual blocks whose ``block.j`` index counts only the sub-layers that
exist (expand, depthwise, SE, project), ``features.16`` last conv, ``classifier``.
Squeeze-excitation is EfficientAT's own (Linear + ReLU + Linear + sigmoid, channel
only), not torchvision's. BatchNorm eps is 1e-3.
"""

from __future__ import annotations

import torch
from torch import nn

from .common import ClassifierOutput

__all__ = ["EfficientATMN", "make_divisible", "MN_BASE_CONFIG"]

BN_EPS = 1e-3

#: MobileNetV3-Large blocks at width 1.0: (in, kernel, expanded, out, SE, activation, stride).
MN_BASE_CONFIG: tuple[tuple[int, int, int, int, bool, str, int], ...] = (
    (16, 3, 16, 16, False, "RE", 1),
    (16, 3, 64, 24, False, "RE", 2),
    (24, 3, 72, 24, False, "RE", 1),
    (24, 5, 72, 40, True, "RE", 2),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2),
    (80, 3, 200, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 480, 112, True, "HS", 1),
    (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2),
    (160, 5, 960, 160, True, "HS", 1),
    (160, 5, 960, 160, True, "HS", 1),
)


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round a width to a multiple of ``divisor``, never below 90 % of ``v``."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _act(name: str) -> nn.Module:
    return nn.ReLU() if name == "RE" else nn.Hardswish()


def _conv_bn(
    c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act: str | None = None
) -> nn.Sequential:
    """Conv (no bias, symmetric zero padding) -> BN(eps 1e-3) [-> activation]: keys ``.0``, ``.1``."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=(kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out, eps=BN_EPS),
    ]
    if act is not None:
        layers.append(_act(act))
    return nn.Sequential(*layers)


class _SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, squeeze)
        self.fc2 = nn.Linear(squeeze, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3))
        a = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))
        return x * a[:, :, None, None]


class _ConcurrentSE(nn.Module):
    """EfficientAT's container for SE variants; mn04 has a single channel SE (max over one = identity)."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.conc_se_layers = nn.ModuleList([_SqueezeExcitation(channels, squeeze)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conc_se_layers[0](x)


class _InvertedResidual(nn.Module):
    def __init__(self, c_in: int, kernel: int, expanded: int, c_out: int, se: bool, act: str, stride: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if expanded != c_in:
            layers.append(_conv_bn(c_in, expanded, 1, act=act))
        layers.append(_conv_bn(expanded, expanded, kernel, stride=stride, groups=expanded, act=act))
        if se:
            layers.append(_ConcurrentSE(expanded, make_divisible(expanded // 4, 8)))
        layers.append(_conv_bn(expanded, c_out, 1))  # linear bottleneck: no activation
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return y + x if self.use_residual else y


class EfficientATMN(nn.Module):
    """EfficientAT MobileNetV3 on time-major Mels ``(B, T, 128)`` -> :class:`ClassifierOutput`.

    The input is the ``efficientat`` MelSpec output ((ln(mel + 1e-5) + 4.5) / 5);
    any T >= 1. ``probs``/``logits`` are (B, 527) in AudioSet order, ``embedding``
    (B, 384) the global mean of ``features.16``.
    """

    def __init__(self, width_mult: float = 0.4, n_classes: int = 527, n_mels: int = 128) -> None:
        super().__init__()
        self.n_classes, self.n_mels = n_classes, n_mels
        w = width_mult
        cfg = [
            (make_divisible(i * w), k, make_divisible(e * w), make_divisible(o * w), se, a, s)
            for i, k, e, o, se, a, s in MN_BASE_CONFIG
        ]
        stem = cfg[0][0]
        last_out = cfg[-1][3]
        last_conv = 6 * last_out  # not rounded (EfficientAT)
        hidden = make_divisible(1280 * width_mult)
        self.n_features = last_conv
        self.features = nn.Sequential(
            _conv_bn(1, stem, 3, stride=2, act="HS"),
            *[_InvertedResidual(*c) for c in cfg],
            _conv_bn(last_out, last_conv, 1, act="HS"),
        )
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(last_conv, hidden),
            nn.Hardswish(),
            nn.Dropout(0.2),
            nn.Linear(hidden, n_classes),
        )

    def forward_with_maps(self, mel: torch.Tensor) -> tuple[ClassifierOutput, list[torch.Tensor]]:
        """The output and the feature map of each block of ``features``, (B, C, mel, time)."""
        x = mel.transpose(1, 2).unsqueeze(1)  # (B, 1, mel, time): H = mel, W = time
        maps = []
        for block in self.features:
            x = block(x)
            maps.append(x)
        embedding = x.mean(dim=(2, 3))
        logits = self.classifier(x)
        return ClassifierOutput(torch.sigmoid(logits), logits, embedding), maps

    def forward(self, mel: torch.Tensor) -> ClassifierOutput:
        return self.forward_with_maps(mel)[0]
