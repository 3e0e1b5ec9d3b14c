"""The context transcoder: a trunk at the third-octave frame rate, upsampled to the Mel frames.

Input: levels ``(B, 8 (1 + 2 context), 29)`` dBFS, the chunk and its neighbours (a missing
neighbour repeats the chunk), and the PINV Mel of the chunk ``(B, T, M)`` in the target's
units. Output: the Mel ``(B, T, M)``.

Why this shape. The paper's CNN works on the PINV Mel at 100 frames/s with a receptive
field of 11 frames (110 ms): less than one third-octave frame, so it cannot see what the
sound *is* over the second that the classifier looks at. Here a 1-D residual trunk runs
at 8 frames/s over all bands (cheap: 24 frames), with dilations that cover the whole
chunk and its neighbouring seconds. Its features are linearly interpolated to the Mel
frames (the PINV's own time interpolation) and a 1x1 head adds a per-frame, per-bin
correction to a learned per-bin affine map of the PINV. A thin 2-D refinement at full
resolution then shapes detail within frames. About 8 MMAC per 1-s chunk, a tenth of the
16-channel paper-style CNN.
"""

from __future__ import annotations

import torch
from torch import nn

from spectral_transcoder.pinv import interpolation_matrix

__all__ = ["ContextTranscoder"]

#: Fixed input normalisation of dBFS levels (a typical band sits near -50 dBFS, spread ~25 dB).
LEVEL_CENTRE, LEVEL_SCALE = -50.0, 25.0


class _Block(nn.Module):
    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation, padding_mode="replicate")
        self.mix = nn.Conv1d(channels, channels, 1)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(self.act(self.conv(x)))


class ContextTranscoder(nn.Module):
    """``(pinv (B, T, n_mels), levels (B, F, n_bands)) -> (B, T, n_mels)`` (the ONNX inputs ``mel``, ``levels``).

    Args:
        n_bands, n_mels, out_frames: the band and Mel shapes (T = ``out_frames``).
        frames_per_chunk: level frames per 1-s chunk (8 for cense_fast).
        context: neighbouring chunks on each side in the input (F = fpc (1 + 2 context)).
        channels, dilations: the trunk.
        refine_channels: hidden channels of the full-resolution refinement (0: none).
        texture: a learned upsampling head besides the linear one: each level frame's features
            are decoded into its own ``ceil(T / fpc)`` Mel frames (resampled to T), so that the
            model can render texture within a 125-ms frame (onsets, modulation) that linear
            interpolation smooths away. Zero-initialised: it starts as the model without it.
    """

    def __init__(
        self,
        *,
        n_bands: int = 29,
        n_mels: int,
        out_frames: int,
        frames_per_chunk: int = 8,
        context: int = 1,
        channels: int = 96,
        dilations: tuple[int, ...] = (1, 2, 4, 8, 1),
        refine_channels: int = 8,
        texture: bool = False,
    ) -> None:
        super().__init__()
        self.config = dict(
            n_bands=n_bands,
            n_mels=n_mels,
            out_frames=out_frames,
            frames_per_chunk=frames_per_chunk,
            context=context,
            channels=channels,
            dilations=list(dilations),
            refine_channels=refine_channels,
            arch="context",
            texture=bool(texture),
        )
        self.inp = nn.Conv1d(n_bands, channels, 3, padding=1, padding_mode="replicate")
        self.blocks = nn.Sequential(*[_Block(channels, d) for d in dilations])
        self.head = nn.Conv1d(channels, n_mels, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.pinv_scale = nn.Parameter(torch.ones(n_mels))
        self.pinv_bias = nn.Parameter(torch.zeros(n_mels))
        # Time interpolation from the chunk's level frames to its Mel frames (as the PINV does).
        w = torch.tensor(interpolation_matrix(frames_per_chunk, out_frames), dtype=torch.float32)
        self.register_buffer("interp", w.T.contiguous(), persistent=False)  # (fpc, T)
        self.texture = None
        if texture:
            self.sub = -(-out_frames // frames_per_chunk)  # Mel frames decoded per level frame
            self.texture = nn.Conv1d(channels, n_mels * self.sub, 1)
            nn.init.zeros_(self.texture.weight)
            nn.init.zeros_(self.texture.bias)
            w = torch.tensor(interpolation_matrix(frames_per_chunk * self.sub, out_frames), dtype=torch.float32)
            self.register_buffer("texture_resample", w.T.contiguous(), persistent=False)  # (fpc * sub, T)
        self.refine = None
        if refine_channels:
            self.refine = nn.Sequential(
                nn.Conv2d(1, refine_channels, 3, padding=1), nn.GELU(), nn.Conv2d(refine_channels, 1, 3, padding=1)
            )
            nn.init.zeros_(self.refine[2].weight)
            nn.init.zeros_(self.refine[2].bias)

    def forward(self, pinv: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        fpc, ctx = self.config["frames_per_chunk"], self.config["context"]
        x = (levels.transpose(1, 2) - LEVEL_CENTRE) / LEVEL_SCALE  # (B, bands, F)
        h = self.blocks(self.inp(x))
        h = h[:, :, ctx * fpc : (ctx + 1) * fpc]  # the chunk's own frames, seen with context
        r = self.head(h) @ self.interp  # (B, M, T)
        if self.texture is not None:
            b, m = h.shape[0], self.config["n_mels"]
            t = self.texture(h).view(b, m, self.sub, fpc).transpose(2, 3).reshape(b, m, fpc * self.sub)
            r = r + t @ self.texture_resample
        y = pinv * self.pinv_scale + self.pinv_bias + r.transpose(1, 2)
        if self.refine is not None:
            y = y + self.refine(y.unsqueeze(1)).squeeze(1)
        return y
