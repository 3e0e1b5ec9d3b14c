"""The level reference of levels held in memory: ``reference=`` / ``spl_offset=`` in Python,
``--reference`` / ``--spl-offset`` on the command line.

What the stored levels are, and the offset that makes them what a transcoder expects,
is computed by the same code as for archives (:func:`~.archives.blocks.make_reference`,
with :class:`~.archives.blocks.BlockOptions` validating the choice):

- ``"dBFS"`` (default): the levels are in the band spec's convention already; unchanged.
- ``"SPL"``: calibrated dB SPL; ``spl_offset`` (the dB SPL of 0 dBFS, the user's
  calibration) is subtracted.
- ``"auto"``: scaled as the peak-normalised training audio was: the 99th percentile of
  the per-frame broadband level is mapped to 0 dB re full scale. It does not depend on
  the levels' own convention: levels shifted by a constant give the same output.

The result is then expressed in the band spec's convention (``+ band_spec.db_offset``),
which is 0 for the presets.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from .specs import BandSpec

__all__ = ["REFERENCES", "apply_reference"]

REFERENCES = ("dBFS", "SPL", "auto")


def apply_reference(
    levels: np.ndarray,
    band_spec: BandSpec,
    reference: Literal["dBFS", "SPL", "auto"] = "dBFS",
    spl_offset: float | None = None,
    *,
    name: str = "levels",
) -> tuple[np.ndarray, np.ndarray]:
    """Apply a level reference to validated levels.

    Parameters
    ----------
    levels:
        float32 dB, shape ``(..., frames, n_bands)``, finite (as the package's validators
        return them). Each ``(frames, n_bands)`` series of the leading axes is one
        recording: with ``"auto"`` its offset is measured on it alone, as the archive
        readers measure one per source.
    band_spec:
        The spec the output is for (its ``db_offset`` is the output's convention).
    reference, spl_offset:
        See the module docstring.
    name:
        The argument's name, for messages.

    Returns
    -------
    (levels, offset_db)
        ``levels + offset_db`` as float32 ``(..., frames, n_bands)``, and ``offset_db``,
        float64 of shape ``(...)`` (0-d for a single series), in dB.
    """
    from .archives.blocks import BlockOptions, make_reference

    opts = BlockOptions(reference=reference, spl_offset=spl_offset)  # the readers' checks and messages
    lead = levels.shape[:-2]
    flat = levels.reshape(-1, *levels.shape[-2:])
    offsets = np.zeros(flat.shape[0], dtype=np.float64)
    if opts.reference != "dBFS" and flat.shape[1] > 0:
        seconds = np.arange(flat.shape[1]) * band_spec.frame_period
        for i, series in enumerate(flat):
            where = name if flat.shape[0] == 1 else f"{name}[{i}]"
            ref = make_reference(opts, iter([(series, seconds)]), where=where)
            offsets[i] = ref.offset_db + band_spec.db_offset
    if not offsets.any():
        return levels, offsets.reshape(lead)
    out = (flat + offsets[:, None, None].astype(np.float32)).astype(np.float32, copy=False)
    return out.reshape(levels.shape), offsets.reshape(lead)
