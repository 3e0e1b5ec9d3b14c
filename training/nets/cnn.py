"""The residual CNN transcoder (docs/conventions.md §4).

Input and output are time-major Mels ``(batch, frames, n_mels)``: the input is the
PINV output in the target MelSpec's units (dB for PANN, ln for YAMNet), the output
the corrected Mel in the same units. ``out = x - convs(x)``.

The default configuration is the paper's: 5 layers of replication padding +
(3 time x 5 mel) conv, 64 channels, ReLU after every layer but the last, which
gives 186 497 parameters and the published ``mod_conv.{1,4,7,10,13}`` keys
(the index is the position in the Sequential: pad, conv, relu, pad, conv, ...).

``calibrated=True`` adds a fixed per-Mel-bin affine map in front of the stack,
``x = in_scale * mel + in_bias`` (buffers, saved in the state dict and exported as
ONNX constants). The PINV projects band *power* for every target, as the reference
does, so for a magnitude target such as the official YAMNet front end its log-Mel is
about twice the target's, with a tilt across bins; the trainer fits the map on the
training split (least squares of the target on the PINV, per bin) so that the CNN
starts from a Mel on the target's scale instead of spending its capacity on that.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CNNTranscoder"]


class CNNTranscoder(nn.Module):
    """Residual CNN on a time-major Mel chunk: ``(B, T, M) -> (B, T, M)``.

    Args:
        n_layers: conv layers (>= 2); ReLU after all but the last.
        channels: hidden channels.
        kernel_time: kernel height along time (odd).
        kernel_mel: kernel width along Mel bins (odd).
        dilation: Mel-axis dilation of the hidden layers 2 .. n_layers - 1 (the
            reference applies it there only, with the padding scaled to match).
    """

    def __init__(
        self,
        *,
        n_layers: int = 5,
        channels: int = 64,
        kernel_time: int = 3,
        kernel_mel: int = 5,
        dilation: int = 1,
        calibrated: bool = False,
        n_mels: int | None = None,
    ) -> None:
        super().__init__()
        if n_layers < 2:
            raise ValueError(f"n_layers must be >= 2, got {n_layers}")
        if kernel_time % 2 == 0 or kernel_mel % 2 == 0:
            raise ValueError(f"kernels must be odd, got ({kernel_time}, {kernel_mel})")
        if dilation < 1:
            raise ValueError(f"dilation must be >= 1, got {dilation}")
        if calibrated and not n_mels:
            raise ValueError("calibrated=True needs n_mels")
        self.config = dict(
            n_layers=n_layers, channels=channels, kernel_time=kernel_time, kernel_mel=kernel_mel, dilation=dilation
        )
        if calibrated:
            self.config.update(calibrated=True, n_mels=int(n_mels))
            self.register_buffer("in_scale", torch.ones(int(n_mels)))
            self.register_buffer("in_bias", torch.zeros(int(n_mels)))
        layers: list[nn.Module] = []
        for i in range(n_layers):
            c_in = 1 if i == 0 else channels
            c_out = 1 if i == n_layers - 1 else channels
            d = dilation if 0 < i < n_layers - 1 else 1
            pt, pm = kernel_time // 2, d * (kernel_mel // 2)
            # Replication (edge) padding, not zeros: the chunk edges see their own values.
            layers.append(nn.ReplicationPad2d((pm, pm, pt, pt)))
            layers.append(nn.Conv2d(c_in, c_out, (kernel_time, kernel_mel), dilation=(1, d)))
            if i < n_layers - 1:  # the last layer has no ReLU (the residual can be negative)
                layers.append(nn.ReLU())
        self.mod_conv = nn.Sequential(*layers)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """``mel`` (B, T, M) -> (B, T, M); out = x - convs(x) (subtractive residual), with
        ``x = in_scale * mel + in_bias`` when calibrated, else ``x = mel``."""
        if "calibrated" in self.config:
            mel = mel * self.in_scale + self.in_bias
        x = mel.unsqueeze(1)
        return (x - self.mod_conv(x)).squeeze(1)
