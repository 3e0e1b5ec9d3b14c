"""Tiny ONNX models with spectral_transcoder metadata, built with onnx.helper (no torch).

- transcoder CNN: (batch, T, n_mels) -> x - conv3x3(x) (one channel, zero padding);
- classifier: (batch, T, n_mels) -> sigmoid(mean_t(x) @ W + b), outputs ``probs`` and ``logits``.

The numpy references (:func:`cnn_reference`, :func:`classifier_reference`) give what
the models must compute.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from spectral_transcoder.metadata import Label, ModelMetadata  # noqa: E402
from spectral_transcoder.specs import BandSpec, MelSpec, get_band_spec, get_mel_spec  # noqa: E402

OPSET = 17
LABELS = [
    Label(0, "/m/09x0r", "Speech"),
    Label(137, "/m/04rlf", "Music"),
    Label(300, "/m/07yv9", "Vehicle"),
    Label(111, "/m/015p6", "Bird"),
    Label(74, "/m/0bt9lr", "Dog"),
]


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def cnn_kernel(seed: int = 0) -> np.ndarray:
    return (_rng(seed).standard_normal((3, 3)) * 0.1).astype(np.float32)


def cnn_reference(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """x - conv3x3(x) over (time, mel) with zero padding, for x (..., T, M)."""
    x = np.asarray(x, dtype=np.float64)
    p = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)])
    t, m = x.shape[-2:]
    conv = sum(kernel[i, j] * p[..., i : i + t, j : j + m] for i in range(3) for j in range(3))
    return x - conv


def classifier_weights(n_mels: int, n_classes: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    r = _rng(seed)
    return (r.standard_normal((n_mels, n_classes)) * 0.05).astype(np.float32), (
        r.standard_normal(n_classes) * 0.1
    ).astype(np.float32)


def classifier_reference(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    z = np.asarray(x, dtype=np.float64).mean(axis=-2) @ w + b
    return 1.0 / (1.0 + np.exp(-z))


def _model(graph: onnx.GraphProto, meta: ModelMetadata | None) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tests")
    model.ir_version = 8  # loadable by any onnxruntime >= 1.14
    if meta is not None:
        helper.set_model_props(model, meta.to_props())
    onnx.checker.check_model(model)
    return model


def transcoder_metadata(
    name: str = "tiny-cnn", band: str | BandSpec = "cense_fast", mel: str | MelSpec = "pann", matrix=None
) -> ModelMetadata:
    return ModelMetadata(
        kind="transcoder",
        name=name,
        input_spec=get_band_spec(band),
        output_spec=get_mel_spec(mel),
        source="tests/_tiny_models.py",
        source_sha256="0" * 64,
        license="MIT",
        training_data="none",
        metrics={"mse": 1.5},
        pinv=None if matrix is None else {"matrix": np.asarray(matrix).tolist()},
    )


def classifier_metadata(name: str = "tiny-clf", mel: str | MelSpec = "pann", labels=LABELS) -> ModelMetadata:
    return ModelMetadata(
        kind="classifier",
        name=name,
        input_spec=get_mel_spec(mel),
        output_spec=None,
        source="tests/_tiny_models.py",
        source_sha256="1" * 64,
        license="Apache-2.0",
        labels=list(labels),
    )


def make_transcoder(
    path: Path,
    *,
    kernel: np.ndarray | None = None,
    meta: ModelMetadata | None = None,
    with_meta: bool = True,
    batch: int | str = "batch",
) -> Path:
    """Write a CNN transcoder: y = x - conv3x3(x); T dynamic."""
    meta = meta or transcoder_metadata()
    n_mels = meta.output_spec.n_mels if meta.output_spec is not None else 64
    k = cnn_kernel() if kernel is None else kernel
    nodes = [
        helper.make_node("Unsqueeze", ["mel", "axes1"], ["x4"]),
        helper.make_node("Conv", ["x4", "w"], ["c4"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Squeeze", ["c4", "axes1"], ["c3"]),
        helper.make_node("Sub", ["mel", "c3"], ["mel_out"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([1], np.int64), "axes1"),
        numpy_helper.from_array(k.reshape(1, 1, 3, 3).astype(np.float32), "w"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("mel", TensorProto.FLOAT, [batch, "frames", n_mels])],
        [helper.make_tensor_value_info("mel_out", TensorProto.FLOAT, [batch, "frames", n_mels])],
        inits,
    )
    onnx.save(_model(graph, meta if with_meta else None), path)
    return path


def make_classifier(
    path: Path,
    *,
    meta: ModelMetadata | None = None,
    frames: int | str = "frames",
    batch: int | str = "batch",
    logits_first: bool = False,
    seed: int = 1,
) -> Path:
    """Write a classifier: probs = sigmoid(mean over time @ W + b)."""
    meta = meta or classifier_metadata()
    spec = meta.input_spec
    w, b = classifier_weights(spec.n_mels, len(meta.labels), seed)
    c = len(meta.labels)
    nodes = [
        helper.make_node("ReduceMean", ["mel"], ["pooled"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "B"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["probs"]),
    ]
    outs = [
        helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, c]),
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, c]),
    ]
    if logits_first:
        outs.reverse()
    graph = helper.make_graph(
        nodes,
        "tiny_classifier",
        [helper.make_tensor_value_info("mel", TensorProto.FLOAT, [batch, frames, spec.n_mels])],
        outs,
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    onnx.save(_model(graph, meta), path)
    return path


def cense26() -> BandSpec:
    return replace(get_band_spec("cense_fast"), db_offset=26.0)
