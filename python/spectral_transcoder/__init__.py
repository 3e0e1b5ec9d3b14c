"""spectral_transcoder: third-octave spectra -> classifier Mel spectrograms -> AudioSet probabilities.

Arrays are time-major: levels ``(..., frames, bands)`` in dB, Mels ``(..., frames, n_mels)``.
See :mod:`spectral_transcoder.specs` for the representations.
"""

from __future__ import annotations

from .errors import (
    InputTypeError,
    InvalidInputError,
    ModelError,
    SpecMismatchError,
    SpectralTranscoderError,
    UnknownSpecError,
)
from .specs import BAND_SPECS, MEL_SPECS, BandSpec, MelSpec, get_band_spec, get_mel_spec, spec_from_json

__version__ = "0.1.0"

__all__ = [
    "BandSpec",
    "MelSpec",
    "BAND_SPECS",
    "MEL_SPECS",
    "get_band_spec",
    "get_mel_spec",
    "spec_from_json",
    "SpectralTranscoderError",
    "InvalidInputError",
    "InputTypeError",
    "UnknownSpecError",
    "SpecMismatchError",
    "ModelError",
]
