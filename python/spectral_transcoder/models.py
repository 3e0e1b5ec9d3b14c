"""Model inference with ONNX Runtime: transcoders, classifiers and end-to-end classification.

- :class:`Transcoder`: third-octave levels ``(..., frames, n_bands)`` dB -> the PINV
  (C++) -> optionally a residual CNN (ONNX) -> Mel ``(..., frames, n_mels)`` in the
  output :class:`~spectral_transcoder.specs.MelSpec`'s units.
- :class:`Classifier`: Mel ``(..., frames, n_mels)`` -> sigmoid probabilities
  ``(..., n_classes)``.
- :func:`classify`: both, per 1-s chunk, with 10-s means (the paper's protocol).

The two classes live in :mod:`.onnx_models` and the resolved, checked pair in
:class:`~spectral_transcoder.pipeline.Pipeline`; every name stays public here.
Model files are ONNX with ``st.*`` metadata (:mod:`spectral_transcoder.metadata`);
short names resolve through :mod:`spectral_transcoder.registry`. This module never
imports torch.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

# Sessions and model files live in _onnx, which the registry shares; these names stay public here.
from ._onnx import (
    _check_n_threads as _check_n_threads,  # re-exported: archives.process imports it from here
)
from ._onnx import (
    default_providers,
    physical_cores,
    session_options,
)
from ._onnx import (
    read_metadata as read_metadata,  # re-exported
)
from ._validation import as_float32_levels, check_level_range
from .errors import InvalidInputError, option
from .metadata import Label
from .onnx_models import (
    Classifier,
    Partial,
    Transcoder,
)
from .onnx_models import (
    Layout as Layout,
)
from .onnx_models import (
    _looks_like_path as _looks_like_path,  # re-exported: archives.process imports it from here
)
from .onnx_models import (
    _spec_diff as _spec_diff,  # re-exported
)
from .reference import apply_reference
from .specs import BandSpec

__all__ = [
    "Transcoder",
    "Classifier",
    "ClassificationResult",
    "classify",
    "physical_cores",
    "session_options",
    "default_providers",
]

#: Seconds per group for the aggregated predictions (the paper's 10-s protocol).
GROUP_SECONDS = 10.0


# ------------------------------------------------------------------ classify()
@dataclass
class ClassificationResult:
    """What :func:`classify` returns. ``...`` are the input's leading batch axes."""

    probs: np.ndarray
    """(..., n_chunks, n_classes) sigmoid probabilities, one row per 1-s chunk."""
    times: np.ndarray
    """(n_chunks,) start of each chunk, seconds from the first input frame."""
    group_probs: np.ndarray
    """(..., n_groups, n_classes) 10-s means: each the mean of up to ten 1-s rows."""
    group_times: np.ndarray
    """(n_groups,) start of each group, seconds."""
    group_counts: np.ndarray
    """(n_groups,) chunks averaged in each group: 10, except maybe a trailing short group."""
    labels: list[Label]
    classifier_id: str
    transcoder_id: str
    chunk_duration: float
    """Seconds per chunk (1.0 for cense_fast)."""
    last_chunk_frames: int
    """Input frames of real data in the last chunk: ``frames_per_chunk`` when complete, fewer
    when it was padded, 0 when there is no chunk at all."""
    frames_per_chunk: int
    top_k: int = 5
    top_labels: list[Any] = field(default_factory=list)
    """``top(top_k)``, computed once."""
    level_reference: str = "dBFS"
    """The ``reference=`` the levels were given with: ``"dBFS"``, ``"SPL"`` or ``"auto"``."""
    level_offset_db: np.ndarray = field(default_factory=lambda: np.zeros(()))
    """(...) float64 dB added to the levels before transcoding (0-d for a single series)."""

    def __post_init__(self) -> None:
        if not self.top_labels:
            self.top_labels = self.top(self.top_k)

    @property
    def padded(self) -> bool:
        """True when the last chunk was a padded partial one (its row is then approximate)."""
        return 0 < self.last_chunk_frames < self.frames_per_chunk

    @property
    def mean_probs(self) -> np.ndarray:
        """(..., n_classes) mean of all 1-s rows (each second weighs the same)."""
        if self.probs.shape[-2] == 0:
            return np.zeros(self.probs.shape[:-2] + self.probs.shape[-1:], dtype=np.float32)
        mean: np.ndarray = self.probs.mean(axis=-2, dtype=np.float64).astype(np.float32)
        return mean

    def top(self, k: int = 5) -> list[Any]:
        """The ``k`` most probable labels of :attr:`mean_probs`, as ``(Label, probability)``
        pairs, best first; nested lists follow the leading batch axes."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise InvalidInputError(f"k must be an integer >= 0, got {k!r}")
        if self.probs.shape[-2] == 0:  # no whole chunk: nothing to rank
            k = 0
        return _top(self.mean_probs, self.labels, k)


def _top(p: np.ndarray, labels: list[Label], k: int) -> list[Any]:
    if p.ndim > 1:
        return [_top(row, labels, k) for row in p]
    order = np.argsort(-p, kind="stable")[:k]
    return [(labels[i] if i < len(labels) else Label(int(i), "", f"class {i}"), float(p[i])) for i in order]


def _warn_less_than_a_chunk(n: int, spec: BandSpec, partial: str) -> None:
    from ._validation import _outside_stacklevel
    from .pinv import PartialChunkWarning

    what = (
        f"levels hold {n} frames ({n * spec.frame_period:g} s), less than one {spec.chunk_duration:g}-s "
        f"chunk of {spec.frames_per_chunk} frames"
    )
    if partial == "drop":
        msg = f"{what}: they were dropped ({option('partial', 'drop')}), so the result holds no chunk"
    else:
        msg = (
            f"{what}: the only chunk was padded with {spec.frames_per_chunk - n} copies of the last frame, so "
            f"its probabilities rest on {n * spec.frame_period:g} s of data (result.padded is True)"
        )
    warnings.warn(msg, PartialChunkWarning, stacklevel=_outside_stacklevel())


def classify(
    levels: object,
    *,
    classifier: Classifier | str | os.PathLike[str],
    transcoder: Transcoder | str | os.PathLike[str] | None = None,
    band_spec: str | BandSpec | None = None,
    top_k: int = 5,
    partial: Partial = "pad",
    n_threads: int | None = None,
    reference: Literal["dBFS", "SPL", "auto"] = "dBFS",
    spl_offset: float | None = None,
) -> ClassificationResult:
    """Classify third-octave levels end to end: PINV -> CNN -> classifier, per 1-s chunk.

    ``levels``: ``(..., frames, n_bands)`` dB in ``band_spec`` (default: the
    transcoder's input spec, dB re full scale; give e.g.
    ``replace(get_band_spec("cense_fast"), db_offset=26)`` for Cense "+26" data).
    ``classifier`` / ``transcoder``: instances, registry names or ``.onnx`` paths;
    ``transcoder=None`` takes the registry's default for the classifier.
    ``partial``: a trailing incomplete chunk is ``"pad"``-ded and flagged
    (``result.padded``), ``"drop"``-ped, or an ``"error"``. Levels shorter than one
    chunk issue a :class:`~spectral_transcoder.pinv.PartialChunkWarning` as well: the
    whole result then rests on padding (or is empty).
    ``n_threads``: ONNX Runtime intra-op threads for models loaded here.
    ``reference``, ``spl_offset``: what the levels are, as ``--reference`` / ``--spl-offset``
    on the command line and ``reference=`` for archives (:mod:`spectral_transcoder.reference`,
    the same code): ``"dBFS"`` (default) as given; ``"SPL"``, calibrated dB SPL from which
    ``spl_offset`` (the dB SPL of 0 dBFS) is subtracted; ``"auto"``, scaled like the
    peak-normalised training audio (each ``(frames, n_bands)`` series on its own), so that
    levels shifted by a constant classify the same. The offset applied is in
    ``result.level_offset_db``.

    Each chunk's Mel goes through the classifier on its own (the teacher protocol);
    10-s means average ten consecutive 1-s rows (the paper's protocol).
    Raises :class:`SpecMismatchError` if the transcoder's output spec is not the
    classifier's input spec.
    """
    from .pinv import PartialChunkWarning, split_chunks
    from .pipeline import Pipeline

    pipe = Pipeline.resolve(classifier, transcoder, n_threads=n_threads)
    tr, clf = pipe.transcoder, pipe.classifier
    spec = pipe.band_spec(band_spec)
    x = as_float32_levels(levels, spec.n_bands, "levels", spec.name)
    x, offset_db = apply_reference(x, spec, reference, spl_offset)
    check_level_range(x, spec, reference=str(reference))  # SPL read as dBFS: loud "Music" everywhere
    f = spec.frames_per_chunk
    with warnings.catch_warnings():
        # A padded last chunk is reported in the result (last_chunk_frames), not warned about...
        warnings.simplefilter("ignore", PartialChunkWarning)
        chunks, n_valid_last = split_chunks(x, spec, partial)
    n_frames = x.shape[-2]
    if 0 < n_frames < f:  # ...unless there is no whole chunk at all: the result then looks normal but is not
        _warn_less_than_a_chunk(n_frames, spec, partial)
    mels = tr.transcode_chunks(chunks, band_spec=spec)  # (..., n_chunks, T, M)
    probs = clf(mels)  # (..., n_chunks, C)
    n_chunks = chunks.shape[-3]
    group = max(1, int(round(GROUP_SECONDS / spec.chunk_duration)))
    n_groups = -(-n_chunks // group)
    counts = np.array([min(group, n_chunks - g * group) for g in range(n_groups)], dtype=np.int64)
    gp = [probs[..., g * group : g * group + int(c), :].mean(axis=-2, dtype=np.float64) for g, c in enumerate(counts)]
    group_probs = (
        np.stack(gp, axis=-2).astype(np.float32)
        if gp
        else np.zeros((*probs.shape[:-2], 0, probs.shape[-1]), np.float32)
    )
    return ClassificationResult(
        probs=probs,
        times=np.arange(n_chunks) * spec.chunk_duration,
        group_probs=group_probs,
        group_times=np.arange(n_groups) * group * spec.chunk_duration,
        group_counts=counts,
        labels=clf.labels,
        classifier_id=clf.model_id,
        transcoder_id=tr.model_id,
        chunk_duration=spec.chunk_duration,
        last_chunk_frames=int(n_valid_last) if n_chunks else 0,
        frames_per_chunk=f,
        top_k=top_k,
        level_reference=reference,
        level_offset_db=offset_db,
    )
