"""ONNX Runtime models: :class:`Transcoder` and :class:`Classifier` (public through :mod:`.models`).

- :class:`Transcoder`: third-octave levels ``(..., frames, n_bands)`` dB -> the PINV
  (C++) -> optionally a residual CNN (ONNX) -> Mel ``(..., frames, n_mels)`` in the
  output :class:`~spectral_transcoder.specs.MelSpec`'s units.
- :class:`Classifier`: Mel ``(..., frames, n_mels)`` -> sigmoid probabilities
  ``(..., n_classes)``.

Model files are ONNX with ``st.*`` metadata (:mod:`spectral_transcoder.metadata`);
short names resolve through :mod:`spectral_transcoder.registry`. The pair is resolved and
checked by :class:`~spectral_transcoder.pipeline.Pipeline`. This module never imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import registry
from ._onnx import _ModelFile, _open_model
from ._validation import as_float32_levels, as_float32_mel
from .errors import InputTypeError, InvalidInputError, ModelError, SpecMismatchError
from .metadata import Label, ModelMetadata
from .pinv import pinv_target
from .specs import BandSpec, MelSpec, Spec, get_band_spec, get_mel_spec

__all__ = ["Transcoder", "Classifier"]

Layout = Literal["stitched", "chunks", "concat"]
Partial = Literal["error", "drop", "pad"]


# ------------------------------------------------------------------ ONNX Runtime
def _check_batch_size(batch_size: object) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


def _static(dim: object) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def _run_batched(model: _ModelFile, x: np.ndarray, batch_size: int, levels: np.ndarray | None = None) -> np.ndarray:
    """Run ``x`` (N, frames, n_mels) through the session in batches of ``batch_size``
    (with ``levels`` (N, frames, n_bands), a context transcoder's second input).

    A model exported with a fixed batch dimension gets exactly that many items per
    run (the last batch is padded with copies of its last item, then cut back).
    """
    n = x.shape[0]  # callers never pass an empty batch
    fixed = _static(model.input_shape[0])
    step = fixed or batch_size
    outs = []
    for start in range(0, n, step):
        xb = x[start : start + step]
        m = xb.shape[0]
        feed = {model.input_name: xb}
        if levels is not None and model.levels_input:
            feed[model.levels_input] = levels[start : start + step]
        if fixed and m < fixed:
            feed = {k: np.concatenate([v, np.repeat(v[-1:], fixed - m, axis=0)]) for k, v in feed.items()}
        try:
            (y,) = model.session.run([model.output_name], {k: np.ascontiguousarray(v) for k, v in feed.items()})
        except Exception as exc:  # noqa: BLE001 - ORT raises its own pybind types
            raise ModelError(
                f"{model.path}: ONNX Runtime failed on an input of shape {tuple(xb.shape)} "
                f"(model input {model.input_shape}): {type(exc).__name__}: {exc}"
            ) from None
        outs.append(np.asarray(y, dtype=np.float32)[:m])
    return np.concatenate(outs, axis=0)


def _spec_diff(a: Spec, b: Spec) -> list[str]:
    """Fields (other than the preset name) in which two specs differ."""
    if type(a) is not type(b):
        return ["type"]
    return [f.name for f in fields(a) if f.name != "name" and getattr(a, f.name) != getattr(b, f.name)]


def _short(sha256: str) -> str:
    return sha256[:12]


# -------------------------------------------------------------------- Transcoder
class Transcoder:
    """Third-octave levels -> the Mel spectrogram a classifier expects.

    The PINV (always, C++) is followed by an optional residual CNN run with ONNX
    Runtime. Build one with :meth:`pinv` (PINV only), :meth:`from_file` (an ONNX
    transcoder) or :meth:`load` (a registry name such as ``"pann-cnn-logits"``).

    Levels are time-major ``(..., frames, n_bands)`` in dB of the input
    :class:`BandSpec` (dB re full scale by default; pass ``band_spec=`` with another
    ``db_offset``, e.g. 26 for the paper's Cense convention). The output is
    ``(..., frames, n_mels)`` in the units of :attr:`output_spec`.
    """

    def __init__(
        self,
        *,
        input_spec: BandSpec,
        output_spec: MelSpec,
        model: _ModelFile | None = None,
        matrix: np.ndarray | None = None,
        batch_size: int = 32,
    ) -> None:
        self._input_spec = input_spec
        self._output_spec = output_spec
        self._model = model
        self._matrix = matrix
        self.batch_size = _check_batch_size(batch_size)
        if model is not None:
            t, m = model.input_shape[1], model.input_shape[2]
            frames = output_spec.frames_for_chunk(input_spec.chunk_duration)
            if _static(m) not in (None, output_spec.n_mels) or _static(t) not in (None, frames):
                raise ModelError(
                    f"{model.path}: CNN input shape {model.input_shape} does not fit the output spec "
                    f"{output_spec.name!r} (batch, {frames}, {output_spec.n_mels})"
                )

    # ------------------------------------------------------------ constructors
    @classmethod
    def pinv(cls, target: str | MelSpec = "pann", band_spec: str | BandSpec = "cense_fast") -> Transcoder:
        """The PINV alone (no CNN): ``band_spec`` levels -> ``target`` Mels."""
        return cls(input_spec=get_band_spec(band_spec), output_spec=get_mel_spec(target))

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        n_threads: int | None = None,
        batch_size: int = 32,
        providers: Sequence[str] | None = None,
        expected_sha256: str | None = None,
    ) -> Transcoder:
        """Load an ONNX transcoder CNN (``st.kind = transcoder``).

        ``n_threads``: ONNX Runtime intra-op threads (None: physical cores).
        ``batch_size``: 1-s chunks per ONNX Runtime run. ``providers``: default
        CUDA (when available) then CPU. ``expected_sha256``: fail unless the file
        has this checksum (the registry passes the one recorded at import).
        """
        model = _open_model(
            path, n_threads=n_threads, providers=providers, expected_sha256=expected_sha256, kind="transcoder"
        )
        meta = model.metadata
        assert isinstance(meta.input_spec, BandSpec) and isinstance(meta.output_spec, MelSpec)
        matrix = None
        if meta.pinv and meta.pinv.get("matrix") is not None:
            matrix = np.ascontiguousarray(meta.pinv["matrix"], dtype=np.float32)
            want = (meta.output_spec.n_mels, meta.input_spec.n_bands)
            if matrix.shape != want or not np.isfinite(matrix).all():
                raise ModelError(f"{model.path}: st.pinv matrix has shape {matrix.shape}, expected finite {want}")
        return cls(
            input_spec=meta.input_spec,
            output_spec=meta.output_spec,
            model=model,
            matrix=matrix,
            batch_size=batch_size,
        )

    @classmethod
    def load(cls, name: str, **kwargs: Any) -> Transcoder:
        """Load a transcoder by registry name (``pann-cnn-logits``, ...); see :meth:`from_file` for kwargs."""
        entry = registry.resolve(name, "transcoder")
        return cls.from_file(entry.path, expected_sha256=entry.sha256, **kwargs)

    @classmethod
    def coerce(cls, transcoder: Transcoder | str | os.PathLike[str], **kwargs: Any) -> Transcoder:
        """An instance passes through; ``"pinv:TARGET"`` is the PINV alone (:meth:`pinv`); a path
        to an existing or ``.onnx`` file is loaded; anything else is a registry name."""
        if isinstance(transcoder, Transcoder):
            return transcoder
        target = pinv_target(transcoder)
        if target is not None:
            return cls.pinv(target)
        if isinstance(transcoder, (str, os.PathLike)):
            if _looks_like_path(transcoder):
                return cls.from_file(transcoder, **kwargs)
            return cls.load(str(transcoder), **kwargs)
        raise InputTypeError(
            f"transcoder must be a Transcoder, a registry name or a path, got {type(transcoder).__name__}"
        )

    # -------------------------------------------------------------- properties
    @property
    def input_spec(self) -> BandSpec:
        """The band representation the transcoder accepts."""
        return self._input_spec

    @property
    def output_spec(self) -> MelSpec:
        """The Mel representation it produces."""
        return self._output_spec

    @property
    def metadata(self) -> ModelMetadata | None:
        """The CNN file's metadata; None for a PINV-only transcoder."""
        return self._model.metadata if self._model else None

    @property
    def has_cnn(self) -> bool:
        return self._model is not None

    @property
    def context_chunks(self) -> int:
        """Neighbouring 1-s chunks on each side that the CNN looks at (0: each chunk alone)."""
        if self._model is None or not self._model.levels_input:
            return 0
        return int(self._model.metadata.extra.get("context_chunks", 0))

    @property
    def name(self) -> str:
        return self._model.metadata.name if self._model else f"pinv-{self._output_spec.name}"

    @property
    def model_id(self) -> str:
        """``name@sha256-prefix`` of the file (``pinv-<target>`` for the PINV alone)."""
        return f"{self.name}@{_short(self._model.sha256)}" if self._model else self.name

    def __repr__(self) -> str:
        return f"Transcoder({self.model_id}: {self._input_spec.name} -> {self._output_spec.name})"

    # ------------------------------------------------------------------ checks
    def check_band_spec(self, band_spec: str | BandSpec | None) -> BandSpec:
        """The band spec to read input levels with.

        None means :attr:`input_spec`. Another spec must describe the same analysis:
        only ``db_offset`` (the level convention, subtracted by the PINV) and the
        preset name may differ; anything else raises :class:`SpecMismatchError`.
        """
        if band_spec is None:
            return self._input_spec
        spec = get_band_spec(band_spec)
        diff = [d for d in _spec_diff(spec, self._input_spec) if d != "db_offset"]
        if diff:
            raise SpecMismatchError(
                f"band_spec {spec.name!r} does not match the transcoder {self.model_id}'s input spec "
                f"{self._input_spec.name!r} (they differ in: {', '.join(diff)})"
            )
        return spec

    # ----------------------------------------------------------------- compute
    def __call__(
        self,
        levels: object,
        *,
        band_spec: str | BandSpec | None = None,
        layout: Layout = "stitched",
        partial: Partial = "error",
    ) -> np.ndarray:
        """Transcode levels ``(..., frames, n_bands)`` dB into Mels.

        The frames are cut into chunks of ``input_spec.frames_per_chunk`` (1 s).
        ``partial`` says what to do with a trailing incomplete chunk: ``"error"``,
        ``"drop"`` it, or ``"pad"`` it (see :func:`spectral_transcoder.pinv.split_chunks`).
        ``layout``: ``"stitched"`` (..., frames, n_mels) joined as the paper does
        (PANN: 100 n + 1 frames), ``"chunks"`` (..., n_chunks, T, n_mels), or
        ``"concat"`` (..., n_chunks * T, n_mels).
        """
        from .pinv import split_chunks, stitch_chunks

        if layout not in ("stitched", "chunks", "concat"):
            raise InvalidInputError(f"layout must be 'stitched', 'chunks' or 'concat', got {layout!r}")
        spec = self.check_band_spec(band_spec)
        levels = as_float32_levels(levels, spec.n_bands, "levels", spec.name)
        chunks, _ = split_chunks(levels, spec, partial)
        mels = self.transcode_chunks(chunks, band_spec=spec)
        if layout == "chunks":
            return mels
        if layout == "concat":
            return mels.reshape(*mels.shape[:-3], mels.shape[-3] * mels.shape[-2], mels.shape[-1])
        return stitch_chunks(mels, self._output_spec)

    def transcode_chunks(self, chunks: object, *, band_spec: str | BandSpec | None = None) -> np.ndarray:
        """Transcode 1-s chunks ``(..., n_chunks, frames_per_chunk, n_bands)`` dB into
        ``(..., n_chunks, T, n_mels)`` (``T = output_spec.frames_for_chunk(input_spec.chunk_duration)``). The CNN sees
        them in batches of :attr:`batch_size`. For a transcoder with :attr:`context_chunks`, the chunks along
        ``n_chunks`` are consecutive seconds of one stream, and each is transcoded seeing its neighbours
        (:func:`spectral_transcoder.pinv.context_windows`); otherwise each chunk is independent."""
        mels = self.pinv_chunks(chunks, band_spec=band_spec)
        if self._model is None:
            return mels
        return self.run_cnn(mels, levels=self.context_levels(chunks))

    def context_levels(self, chunks: object, valid: np.ndarray | None = None) -> np.ndarray | None:
        """What a context CNN reads besides the PINV: chunks ``(..., n_chunks, fpc, n_bands)`` with their
        neighbours (``(..., n_chunks, fpc (1 + 2 context), n_bands)`` float32; ``valid`` marks chunks that may
        serve as neighbours); None for a CNN that reads the PINV alone."""
        from .pinv import context_windows

        if not self.context_chunks:
            return None
        x = np.asarray(chunks, dtype=np.float32)
        if x.ndim == 2:  # one chunk on its own: it stands in for its neighbours, as at a stream's ends
            one: np.ndarray = context_windows(x[None], self.context_chunks, valid)[0]
            return one
        return context_windows(x, self.context_chunks, valid)

    def pinv_chunks(self, chunks: object, *, band_spec: str | BandSpec | None = None) -> np.ndarray:
        """The PINV stage alone (what the CNN receives): chunks ``(..., n_chunks,
        frames_per_chunk, n_bands)`` dB -> ``(..., n_chunks, T, n_mels)``, with the
        file's PINV matrix when it carries one."""
        from .pinv import pinv_chunks

        spec = self.check_band_spec(band_spec)
        return pinv_chunks(chunks, self._output_spec, band_spec=spec, matrix=self._matrix)  # validates chunks

    def run_cnn(self, mels: object, *, levels: np.ndarray | None = None) -> np.ndarray:
        """Apply the CNN alone to PINV Mels ``(..., T, n_mels)`` (identity without a CNN); a context CNN also
        needs ``levels`` from :meth:`context_levels` (same leading shape)."""
        spec = self._output_spec
        x = as_float32_mel(mels, spec.n_mels, "mels", spec.name)
        if self._model is None:
            return x
        t = _static(self._model.input_shape[1])
        if t is not None and x.shape[-2] != t:
            raise InvalidInputError(f"mels has shape {x.shape}: the CNN expects (..., {t}, {spec.n_mels})")
        flat = x.reshape(-1, x.shape[-2], x.shape[-1])
        lv = None
        if self._model.levels_input:
            if levels is None or np.shape(levels)[:-2] != x.shape[:-2]:
                raise InvalidInputError(
                    f"{self.model_id} looks at neighbouring chunks: pass levels=transcoder.context_levels(chunks) "
                    f"with leading shape {x.shape[:-2]}, or use transcode_chunks"
                )
            lv = np.ascontiguousarray(levels, np.float32).reshape(flat.shape[0], *np.shape(levels)[-2:])
        if flat.shape[0] == 0:
            empty: np.ndarray = x.copy()
            return empty
        y = _run_batched(self._model, flat, self.batch_size, lv)
        if y.shape != flat.shape:
            raise ModelError(f"{self._model.path}: the CNN returned shape {y.shape} for input {flat.shape}")
        return y.reshape(x.shape)


# -------------------------------------------------------------------- Classifier
class Classifier:
    """An ONNX audio classifier on Mel spectrograms (``st.kind = classifier``).

    Input: time-major Mels ``(..., frames, n_mels)`` in :attr:`input_spec`'s units.
    Output: sigmoid probabilities ``(..., n_classes)``, ordered as :attr:`labels`.
    A patch model (``input_spec.patch_frames`` set, e.g. YAMNet: 96 frames) is run
    on every complete patch (hop ``patch_hop_frames``) and the patch probabilities
    are averaged, as YAMNet does; others (PANN, EfficientAT) take any length.
    """

    def __init__(self, model: _ModelFile, *, batch_size: int = 16) -> None:
        self._model = model
        self.batch_size = _check_batch_size(batch_size)
        spec = model.metadata.input_spec
        assert isinstance(spec, MelSpec)
        self._spec = spec
        t, m = _static(model.input_shape[1]), _static(model.input_shape[2])
        if m is not None and m != spec.n_mels:
            raise ModelError(f"{model.path}: input shape {model.input_shape} has {m} Mel bins, spec says {spec.n_mels}")
        if t is not None and t != spec.patch_frames:
            raise ModelError(
                f"{model.path}: the input has a fixed {t} frames but the spec {spec.name!r} sets "
                f"patch_frames={spec.patch_frames}"
            )

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        n_threads: int | None = None,
        batch_size: int = 16,
        providers: Sequence[str] | None = None,
        expected_sha256: str | None = None,
    ) -> Classifier:
        """Load an ONNX classifier. ``n_threads``: ONNX Runtime intra-op threads (None:
        physical cores); ``batch_size``: inputs (or patches) per run."""
        model = _open_model(
            path, n_threads=n_threads, providers=providers, expected_sha256=expected_sha256, kind="classifier"
        )
        return cls(model, batch_size=batch_size)

    @classmethod
    def load(cls, name: str, **kwargs: Any) -> Classifier:
        """Load a classifier by registry name (``yamnet``, ``pann-resnet38``, ...)."""
        entry = registry.resolve(name, "classifier")
        return cls.from_file(entry.path, expected_sha256=entry.sha256, **kwargs)

    @classmethod
    def coerce(cls, classifier: Classifier | str | os.PathLike[str], **kwargs: Any) -> Classifier:
        """An instance passes through; a path to an existing file is loaded; anything else is a registry name."""
        if isinstance(classifier, Classifier):
            return classifier
        if isinstance(classifier, (str, os.PathLike)):
            if _looks_like_path(classifier):
                return cls.from_file(classifier, **kwargs)
            return cls.load(str(classifier), **kwargs)
        raise InputTypeError(
            f"classifier must be a Classifier, a registry name or a path, got {type(classifier).__name__}"
        )

    @property
    def input_spec(self) -> MelSpec:
        return self._spec

    @property
    def labels(self) -> list[Label]:
        return list(self._model.metadata.labels)

    @property
    def metadata(self) -> ModelMetadata:
        return self._model.metadata

    @property
    def name(self) -> str:
        return self._model.metadata.name

    @property
    def model_id(self) -> str:
        return f"{self.name}@{_short(self._model.sha256)}"

    def __repr__(self) -> str:
        return f"Classifier({self.model_id}: {self._spec.name}, {len(self._model.metadata.labels)} labels)"

    def check_input(self, mel_spec: str | MelSpec) -> None:
        """Raise :class:`SpecMismatchError` unless ``mel_spec`` is this classifier's input spec."""
        spec = get_mel_spec(mel_spec)
        diff = _spec_diff(spec, self._spec)
        if diff:
            raise SpecMismatchError(
                f"Mel spec {spec.name!r} does not match the classifier {self.model_id}'s input spec "
                f"{self._spec.name!r} (they differ in: {', '.join(diff)})"
            )

    def __call__(self, mel: object, *, mel_spec: str | MelSpec | None = None) -> np.ndarray:
        """Probabilities ``(..., n_classes)`` for Mels ``(..., frames, n_mels)``.

        ``mel_spec``, when given, is checked against :attr:`input_spec` first.
        """
        p = self.patch_probabilities(mel, mel_spec=mel_spec)
        return p.mean(axis=-2, dtype=np.float64).astype(np.float32) if p.shape[-2] > 1 else p[..., 0, :]

    def patch_probabilities(self, mel: object, *, mel_spec: str | MelSpec | None = None) -> np.ndarray:
        """Per-patch probabilities ``(..., n_patches, n_classes)``; one "patch" (the
        whole input) for variable-length models."""
        if mel_spec is not None:
            self.check_input(mel_spec)
        spec = self._spec
        x = as_float32_mel(mel, spec.n_mels, "mel", spec.name)
        if spec.patch_frames is not None:
            if x.shape[-2] < spec.patch_frames:
                raise InvalidInputError(
                    f"mel has shape {x.shape}: the classifier {self.name!r} needs at least {spec.patch_frames} "
                    f"frames (one patch), got {x.shape[-2]}"
                )
            x = _patches(x, spec)  # (..., n_patches, patch_frames, n_mels)
        else:
            x = x[..., None, :, :]
        lead = x.shape[:-2]
        flat = x.reshape(-1, x.shape[-2], x.shape[-1])
        n_classes = len(self._model.metadata.labels)
        if flat.shape[0] == 0:
            return np.zeros((*lead, n_classes), dtype=np.float32)
        y = _run_batched(self._model, flat, self.batch_size)
        if y.ndim != 2 or (n_classes and y.shape[1] != n_classes):
            raise ModelError(
                f"{self._model.path}: output {self._model.output_name!r} has shape {y.shape}, expected "
                f"(batch, {n_classes or 'n_classes'})"
            )
        return y.reshape(*lead, y.shape[-1])


def _patches(x: np.ndarray, spec: MelSpec) -> np.ndarray:
    """Complete patches of ``spec.patch_frames`` frames every ``patch_hop_frames``."""
    from .frontends import patches

    return np.ascontiguousarray(patches(x, spec), dtype=np.float32)


def _looks_like_path(x: str | os.PathLike[str]) -> bool:
    s = os.fspath(x)
    return isinstance(x, os.PathLike) or s.endswith(".onnx") or os.sep in s or Path(s).is_file()
