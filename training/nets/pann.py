"""PANN ResNet38 and Cnn14 (Kong et al. 2020), cut after the log-Mel extractor.

docs/conventions.md §7. The networks take the ``pann`` MelSpec output (dB log-Mel,
64 bins) and keep ``bn0`` (a BatchNorm over the Mel axis) as their first layer.
Module names reproduce the official checkpoints' keys (``ResNet38_mAP=0.434.pth``,
``Cnn14_mAP=0.431.pth``, Zenodo record 3987831) minus the waveform front end
(``spectrogram_extractor.*``, ``logmel_extractor.*``), which the converter drops.
Dropout and SpecAugment are training-only upstream and absent here (eval == inference).

Head (both): mean over Mel, then max + mean over time, fc1 + ReLU (the 2048-d
``embedding``), ``fc_audioset`` (527 ``logits``), sigmoid. T >= 32 frames
(five 2x2 poolings).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import ClassifierOutput

__all__ = ["ResNet38", "Cnn14", "MIN_FRAMES"]

#: Shortest input (frames) both networks accept: 2^5 for their five 2x2 poolings.
MIN_FRAMES = 32


def _conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=1, padding=1, bias=False)


class _ConvBlock(nn.Module):
    """2 x [conv 3x3 (no bias) -> BN -> ReLU], then average pooling."""

    def __init__(self, c_in: int, c_out: int, pool: tuple[int, int] = (2, 2)) -> None:
        super().__init__()
        self.pool = pool
        self.conv1 = _conv3x3(c_in, c_out)
        self.conv2 = _conv3x3(c_out, c_out)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.bn2 = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        if self.pool != (1, 1):
            x = F.avg_pool2d(x, kernel_size=self.pool)
        return x


class _BasicBlock(nn.Module):
    """PANN's ResNet basic block: a stride-2 block average-pools 2x2 before conv1."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv1 = _conv3x3(c_in, c_out)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = _conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample: nn.Module | None = None
        if stride == 2:  # keys downsample.1 (conv 1x1) and downsample.2 (BN)
            self.downsample = nn.Sequential(
                nn.AvgPool2d(2), nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out)
            )
        elif c_in != c_out:  # never the case in ResNet38, kept for completeness (keys .0, .1)
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.avg_pool2d(x, kernel_size=2) if self.stride == 2 else x
        out = F.relu(self.bn1(self.conv1(out)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class _ResNet(nn.Module):
    def __init__(self, blocks: tuple[int, ...], widths: tuple[int, ...], c_in: int) -> None:
        super().__init__()
        for i, (n, w) in enumerate(zip(blocks, widths), start=1):
            stride = 1 if i == 1 else 2
            layer = [_BasicBlock(c_in, w, stride)] + [_BasicBlock(w, w, 1) for _ in range(n - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*layer))
            c_in = w
        self.n_layers = len(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.n_layers + 1):
            x = getattr(self, f"layer{i}")(x)
        return x


class _PannBase(nn.Module):
    n_features = 2048

    def __init__(self, n_classes: int, n_mels: int) -> None:
        super().__init__()
        self.n_classes, self.n_mels = n_classes, n_mels
        self.bn0 = nn.BatchNorm2d(n_mels)

    def _body(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, mel: torch.Tensor) -> ClassifierOutput:
        """``mel`` (B, T, 64) dB log-Mel, T >= 32 -> :class:`ClassifierOutput` (527 classes, 2048-d embedding)."""
        # bn0 normalises per Mel bin: put the Mel axis on the channel axis and back.
        x = self.bn0(mel.transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2)
        x = self._body(x.unsqueeze(1))  # (B, C, T', M')
        x = x.mean(dim=3)
        x = x.amax(dim=2) + x.mean(dim=2)
        embedding = F.relu(self.fc1(x))
        logits = self.fc_audioset(embedding)
        return ClassifierOutput(torch.sigmoid(logits), logits, embedding)


class ResNet38(_PannBase):
    """PANN ResNet38: ConvBlock(1->64) + ResNet [3, 4, 6, 3] x 64..512 + ConvBlock(512->2048).

    73 783 247 trainable parameters (without the waveform front end).
    """

    def __init__(self, n_classes: int = 527, n_mels: int = 64) -> None:
        super().__init__(n_classes, n_mels)
        self.conv_block1 = _ConvBlock(1, 64)
        self.resnet = _ResNet((3, 4, 6, 3), (64, 128, 256, 512), 64)
        self.conv_block_after1 = _ConvBlock(512, 2048, pool=(1, 1))
        self.fc1 = nn.Linear(2048, 2048)
        self.fc_audioset = nn.Linear(2048, n_classes)

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_block1(x)
        x = self.resnet(x)
        x = F.avg_pool2d(x, kernel_size=2)
        return self.conv_block_after1(x)


class Cnn14(_PannBase):
    """PANN Cnn14: six ConvBlocks 64..2048 with 2x2 average pools (the last one 1x1)."""

    def __init__(self, n_classes: int = 527, n_mels: int = 64) -> None:
        super().__init__(n_classes, n_mels)
        widths = (64, 128, 256, 512, 1024, 2048)
        c_in = 1
        for i, w in enumerate(widths, start=1):
            setattr(self, f"conv_block{i}", _ConvBlock(c_in, w, pool=(2, 2) if i < len(widths) else (1, 1)))
            c_in = w
        self.fc1 = nn.Linear(2048, 2048)
        self.fc_audioset = nn.Linear(2048, n_classes)

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, 7):
            x = getattr(self, f"conv_block{i}")(x)
        return x
