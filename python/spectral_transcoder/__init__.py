"""spectral_transcoder: third-octave spectra -> classifier Mel spectrograms -> AudioSet probabilities.

Arrays are time-major: levels ``(..., frames, bands)`` in dB re full scale (by
default), Mels ``(..., frames, n_mels)`` in the classifier's own units.

- :func:`load_audio` — an audio file -> mono float32 samples (optionally resampled).
- :func:`third_octave` — audio -> third-octave levels (C++).
- :func:`mel` — audio -> a classifier's Mel front end (C++).
- :func:`pinv` — levels -> Mel by the folded pseudo-inverse (C++).
- :func:`griffin_lim` — a Mel (true or transcoded) back to audio, for listening checks.
- :class:`Transcoder`, :class:`Classifier`, :func:`classify` — ONNX Runtime models.
- :class:`Pipeline` — a transcoder and its classifier, resolved and checked once.
- :mod:`spectral_transcoder.archives` — streaming readers and the resumable engine.
- :func:`process` — archives -> Parquet predictions, resumable, optionally on Dask
  (:mod:`spectral_transcoder.archives.process`).

See :mod:`spectral_transcoder.specs` for the representations.
"""

from __future__ import annotations

import importlib
from typing import Any

from .analysis import third_octave
from .audio import load_audio
from .errors import (
    InputTypeError,
    InputWarning,
    InvalidInputError,
    LevelWarning,
    MissingDependencyError,
    ModelError,
    SpecMismatchError,
    SpectralTranscoderError,
    SpectralTranscoderWarning,
    UnknownSpecError,
)
from .frontends import mel, patches
from .inverse import griffin_lim
from .pinv import PartialChunkWarning, pinv
from .specs import BAND_SPECS, MEL_SPECS, BandSpec, MelSpec, get_band_spec, get_mel_spec, spec_from_json

__version__ = "0.1.0"

# Names backed by ONNX Runtime (or pyarrow) load on first use: `import spectral_transcoder`
# stays fast for users of the kernels alone.
_LAZY = {
    "Transcoder": "models",
    "Classifier": "models",
    "ClassificationResult": "models",
    "classify": "models",
    "Pipeline": "pipeline",
    "process": "archives.process",
    "registry": None,
    "archives": None,
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name] or name}", __name__)
        value = module if _LAZY[name] is None else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "load_audio",
    "third_octave",
    "mel",
    "patches",
    "pinv",
    "griffin_lim",
    "PartialChunkWarning",
    "Transcoder",
    "Classifier",
    "ClassificationResult",
    "classify",
    "Pipeline",
    "process",
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
    "MissingDependencyError",
    "UnknownSpecError",
    "SpecMismatchError",
    "ModelError",
    "SpectralTranscoderWarning",
    "InputWarning",
    "LevelWarning",
]
