"""The chain levels -> transcoder -> classifier, resolved and checked once.

::

    pipe = Pipeline.resolve("yamnet-torchport")  # the registry's default transcoder
    spec = pipe.band_spec(archive.band_spec, where=archive.path)

:func:`~spectral_transcoder.models.classify`, :func:`~spectral_transcoder.archives.process`
(once per worker, from its model cache) and :func:`~spectral_transcoder.plot.plot_file` all
build one: the models are coerced (registry names, paths or instances), the transcoder's
output spec is checked against the classifier's input spec, and input band sets against the
transcoder, with the same errors everywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from . import registry
from .errors import ModelError, SpecMismatchError, option
from .onnx_models import Classifier, Transcoder, _spec_diff
from .specs import BandSpec, get_band_spec

__all__ = ["Pipeline"]


@dataclass(frozen=True)
class Pipeline:
    """A transcoder and the classifier it feeds, whose specs fit (see :meth:`resolve`)."""

    transcoder: Transcoder
    classifier: Classifier

    def __post_init__(self) -> None:
        tr, clf = self.transcoder, self.classifier
        diff = _spec_diff(tr.output_spec, clf.input_spec)
        if diff:
            raise SpecMismatchError(
                f"the transcoder {tr.model_id} produces Mel spec {tr.output_spec.name!r} but the classifier "
                f"{clf.model_id} expects {clf.input_spec.name!r} (they differ in: {', '.join(diff)})"
            )

    @classmethod
    def resolve(
        cls,
        classifier: Classifier | str | os.PathLike[str],
        transcoder: Transcoder | str | os.PathLike[str] | None = None,
        *,
        n_threads: int | None = None,
        batch_size: int | None = None,
    ) -> Pipeline:
        """Both models from instances, registry names or ``.onnx`` paths (``"pinv:TARGET"`` for
        the PINV alone); ``transcoder=None`` takes the registry's default for the classifier.
        ``n_threads`` and ``batch_size`` apply to the models loaded here (None: their defaults).
        Raises :class:`SpecMismatchError` if the transcoder's output spec is not the
        classifier's input spec."""
        kwargs: dict[str, Any] = {"n_threads": n_threads}
        if batch_size is not None:
            kwargs["batch_size"] = batch_size
        clf = Classifier.coerce(classifier, **kwargs)
        tr = Transcoder.coerce(transcoder if transcoder is not None else _default_transcoder_for(clf), **kwargs)
        return cls(tr, clf)

    @property
    def input_spec(self) -> BandSpec:
        """The band set the transcoder reads."""
        return self.transcoder.input_spec

    def band_spec(self, band_spec: str | BandSpec | None = None, *, where: str | None = None) -> BandSpec:
        """The band spec to read input levels with (None: the transcoder's input spec); one
        that describes another analysis raises :class:`SpecMismatchError`.

        ``where``: None for levels given as arrays (the transcoder's own message); the file the
        band set comes from otherwise (``""`` if unnamed), which the error names along with
        what the archive's and the transcoder's band sets are."""
        if where is None:
            return self.transcoder.check_band_spec(band_spec)
        spec = self.input_spec if band_spec is None else get_band_spec(band_spec)
        return check_archive_band_spec(self.transcoder, spec, where)


def check_archive_band_spec(transcoder: Transcoder, spec: BandSpec, where: str = "") -> BandSpec:
    """``transcoder.check_band_spec(spec)``, with the archive ``where`` named in the error."""
    tr = transcoder
    try:
        return tr.check_band_spec(spec)
    except SpecMismatchError as exc:
        raise SpecMismatchError(
            f"{where + ': ' if where else ''}the archive's band spec {spec.name!r} ({spec.n_bands} bands, "
            f"{spec.frame_period:g}-s frames) cannot be classified with the transcoder {tr.model_id}, whose input "
            f"spec is {tr.input_spec.name!r} ({tr.input_spec.n_bands} bands, {tr.input_spec.frame_period:g}-s "
            f"frames): {exc}. No transcoder exists yet for this band set; it needs its own BandSpec and a "
            "transcoder trained on it."
        ) from None


def _default_transcoder_for(classifier: Classifier) -> str:
    name = registry.default_transcoder(classifier.name)
    if name is None:
        raise ModelError(
            f"no default transcoder for the classifier {classifier.name!r}: pass {option('transcoder')} (a name from "
            "`spectral-transcoder models list`, a path, or Transcoder.pinv(target=...))"
        )
    return name
