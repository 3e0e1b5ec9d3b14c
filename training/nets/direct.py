"""The direct student: third-octave levels straight to the teacher's logits, no Mel.

The paper's "retrained classifier" reference point: a network that sees the same input as
the transcoder (the chunk and its neighbouring seconds) and is trained on the teacher's
outputs, but skips the Mel and the teacher. It bounds what the levels alone can tell
about the teacher's decision with a network of this size; it cannot feed another
classifier, so it is a row in the fidelity table, not a product.
"""

from __future__ import annotations

import torch
from torch import nn

from .context import LEVEL_CENTRE, LEVEL_SCALE, _Block

__all__ = ["DirectStudent"]


class DirectStudent(nn.Module):
    """``levels (B, F, n_bands) dBFS -> logits (B, n_classes)``, F = fpc (1 + 2 context).

    A 1-D dilated residual trunk over all level frames (the context transcoder's trunk),
    mean- and max-pooled over the chunk's own frames, then a linear layer per class.
    """

    def __init__(
        self,
        *,
        n_bands: int = 29,
        n_classes: int,
        frames_per_chunk: int = 8,
        context: int = 1,
        channels: int = 192,
        dilations: tuple[int, ...] = (1, 2, 4, 8, 1),
    ) -> None:
        super().__init__()
        self.config = dict(
            n_bands=n_bands,
            n_classes=n_classes,
            frames_per_chunk=frames_per_chunk,
            context=context,
            channels=channels,
            dilations=list(dilations),
            arch="direct",
        )
        self.inp = nn.Conv1d(n_bands, channels, 3, padding=1, padding_mode="replicate")
        self.blocks = nn.Sequential(*[_Block(channels, d) for d in dilations])
        self.out = nn.Linear(2 * channels, n_classes)

    def forward(self, levels: torch.Tensor) -> torch.Tensor:
        fpc, ctx = self.config["frames_per_chunk"], self.config["context"]
        h = self.blocks(self.inp((levels.transpose(1, 2) - LEVEL_CENTRE) / LEVEL_SCALE))
        h = h[:, :, ctx * fpc : (ctx + 1) * fpc]
        return self.out(torch.cat([h.mean(-1), h.amax(-1)], dim=1))
