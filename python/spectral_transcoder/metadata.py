"""The metadata that makes an ONNX model file self-describing.

Written by ``training/`` (with the ``onnx`` package) into ``metadata_props``;
read back by the inference package from ONNX Runtime's
``session.get_modelmeta().custom_metadata_map``. Keys are namespaced ``st.*``.

Tensor conventions (all models):
- transcoder CNN: input ``mel`` (batch, frames, n_mels) = PINV output in the
  output spec's units; output ``mel_out`` of the same shape (ONNX forbids an
  output named like an input);
- classifier: input ``mel`` (batch, frames, n_mels), time-major, in its
  MelSpec's units (the graph transposes internally); output ``probs``
  (batch, n_classes) sigmoid probabilities, optionally ``logits`` and ``embedding``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ModelError
from .specs import BandSpec, MelSpec, Spec, spec_from_json

FORMAT_VERSION = "1"

KEY_FORMAT = "st.format_version"
KEY_KIND = "st.kind"
KEY_NAME = "st.name"
KEY_INPUT_SPEC = "st.input_spec"
KEY_OUTPUT_SPEC = "st.output_spec"
KEY_LABELS = "st.labels"
KEY_SOURCE = "st.source"
KEY_SOURCE_SHA256 = "st.source_sha256"
KEY_LICENSE = "st.license"
KEY_TRAINING_DATA = "st.training_data"
KEY_METRICS = "st.metrics"
KEY_PINV = "st.pinv"
KEY_EXTRA = "st.extra"

REQUIRED_KEYS = (KEY_FORMAT, KEY_KIND, KEY_NAME, KEY_INPUT_SPEC, KEY_OUTPUT_SPEC, KEY_SOURCE_SHA256, KEY_LICENSE)


@dataclass(frozen=True)
class Label:
    index: int
    """AudioSet index (class_labels_indices.csv order); for YAMNet, the AudioSet index matched by mid."""
    mid: str
    name: str


@dataclass
class ModelMetadata:
    """Everything a model file says about itself."""

    kind: Literal["transcoder", "classifier"]
    name: str
    input_spec: Spec
    """Transcoder: the BandSpec it accepts. Classifier: the MelSpec it accepts."""
    output_spec: Spec | None
    """Transcoder: the MelSpec it produces. Classifier: None."""
    source: str
    source_sha256: str
    license: str
    labels: list[Label] = field(default_factory=list)
    training_data: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    pinv: dict[str, Any] | None = None
    """Transcoder only: optional PINV constants, e.g. {"matrix": [[...]] (n_mels x n_bands)},
    the folded Mel-projection x pseudo-inverse the CNN was trained with."""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_props(self) -> dict[str, str]:
        """Serialise to ONNX ``metadata_props`` (string -> string)."""
        props = {
            KEY_FORMAT: FORMAT_VERSION,
            KEY_KIND: self.kind,
            KEY_NAME: self.name,
            KEY_INPUT_SPEC: self.input_spec.to_json(),
            KEY_OUTPUT_SPEC: self.output_spec.to_json() if self.output_spec is not None else "null",
            KEY_SOURCE: self.source,
            KEY_SOURCE_SHA256: self.source_sha256,
            KEY_LICENSE: self.license,
            KEY_LABELS: json.dumps([[lb.index, lb.mid, lb.name] for lb in self.labels]),
            KEY_TRAINING_DATA: self.training_data,
            KEY_METRICS: json.dumps(self.metrics, sort_keys=True),
            KEY_EXTRA: json.dumps(self.extra, sort_keys=True),
        }
        if self.pinv is not None:
            props[KEY_PINV] = json.dumps(self.pinv)
        return props

    @classmethod
    def from_props(cls, props: Mapping[str, str], where: str = "model") -> ModelMetadata:
        """Parse ONNX ``metadata_props``; raise :class:`ModelError` naming what is missing."""
        missing = [k for k in REQUIRED_KEYS if k not in props]
        if missing:
            raise ModelError(
                f"{where}: not a spectral_transcoder model file (metadata keys missing: {', '.join(missing)}). "
                "Convert or export it with `python -m training convert ...` / `python -m training export ...`."
            )
        if props[KEY_FORMAT] != FORMAT_VERSION:
            raise ModelError(
                f"{where}: metadata format {props[KEY_FORMAT]!r} is not supported (expected {FORMAT_VERSION!r})"
            )
        try:
            kind = props[KEY_KIND]
            if kind not in ("transcoder", "classifier"):
                raise ValueError(f"unknown kind {kind!r}")
            out = props[KEY_OUTPUT_SPEC]
            labels = [Label(int(i), str(m), str(n)) for i, m, n in json.loads(props.get(KEY_LABELS, "[]"))]
            meta = cls(
                kind=kind,  # type: ignore[arg-type]
                name=props[KEY_NAME],
                input_spec=spec_from_json(props[KEY_INPUT_SPEC]),
                output_spec=None if out == "null" else spec_from_json(out),
                source=props.get(KEY_SOURCE, ""),
                source_sha256=props[KEY_SOURCE_SHA256],
                license=props[KEY_LICENSE],
                labels=labels,
                training_data=props.get(KEY_TRAINING_DATA, ""),
                metrics=json.loads(props.get(KEY_METRICS, "{}")),
                pinv=json.loads(props[KEY_PINV]) if KEY_PINV in props else None,
                extra=json.loads(props.get(KEY_EXTRA, "{}")),
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise ModelError(f"{where}: malformed spectral_transcoder metadata: {exc}") from exc
        if kind == "transcoder" and not (
            isinstance(meta.input_spec, BandSpec) and isinstance(meta.output_spec, MelSpec)
        ):
            raise ModelError(f"{where}: a transcoder must map a BandSpec to a MelSpec")
        if kind == "classifier" and not isinstance(meta.input_spec, MelSpec):
            raise ModelError(f"{where}: a classifier's input spec must be a MelSpec")
        return meta
