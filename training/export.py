"""Self-describing ONNX export (schema and tensor conventions: ``spectral_transcoder.metadata``).

Every file has one input ``mel``, time-major ``(batch, frames, n_mels)``, with a
dynamic batch axis; frames are dynamic except for YAMNet (fixed 96). Transcoders
output ``mel_out`` of the same shape (an ONNX graph cannot reuse the input's name);
classifiers output ``probs`` (sigmoid) first, then ``logits`` and ``embedding``.
The :class:`~spectral_transcoder.metadata.ModelMetadata` is stored in
``metadata_props``. After export the file is run once with ONNX Runtime against
PyTorch on the example input; the max differences are stored in the metadata
(``st.extra["export_check"]``) and a gross mismatch is an error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spectral_transcoder.errors import ModelError
from spectral_transcoder.metadata import ModelMetadata

__all__ = [
    "export_onnx",
    "scrub_machine_paths",
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "CLASSIFIER_OUTPUTS",
    "TRANSCODER_OUTPUTS",
]

DEFAULT_OPSET = 18
INPUT_NAME = "mel"
CLASSIFIER_OUTPUTS = ("probs", "logits", "embedding")
#: ONNX forbids an output named like the input: the transcoder's output is ``mel_out``.
TRANSCODER_OUTPUTS = ("mel_out",)
#: A float32 export that differs from PyTorch by more than this (on probabilities or
#: on a transcoder's Mel) is broken, not noisy.
_GROSS_ERROR = 1e-3


@contextlib.contextmanager
def _quiet_export():
    """Silence the exporters' progress prints and unrelated registry warnings."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _export_dynamo(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    names: tuple[str, ...],
    outputs: tuple[str, ...],
    dyn_frames: bool,
    min_frames: int,
    opset: int,
    path: Path,
) -> None:
    from torch.export import Dim

    batch = Dim("batch", min=1)
    dims: dict[int, Any] = {0: batch}
    if dyn_frames:
        dims[1] = Dim("frames", min=max(1, min_frames))
    shapes = {n: (dims if i == 0 else {0: batch}) for i, n in enumerate(names)}
    prog = torch.onnx.export(
        module,
        example,
        input_names=list(names),
        output_names=list(outputs),
        dynamic_shapes=shapes,
        opset_version=opset,
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    prog.save(str(path))


def _export_torchscript(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    names: tuple[str, ...],
    outputs: tuple[str, ...],
    dyn_frames: bool,
    opset: int,
    path: Path,
) -> None:
    axes = {0: "batch", 1: "frames"} if dyn_frames else {0: "batch"}
    dynamic_axes = {
        names[0]: axes,
        **{n: {0: "batch"} for n in names[1:]},
        **{n: (axes if n.startswith("mel") else {0: "batch"}) for n in outputs},
    }
    torch.onnx.export(
        module,
        example,
        str(path),
        input_names=list(names),
        output_names=list(outputs),
        dynamic_axes=dynamic_axes,
        opset_version=opset,
        dynamo=False,
        do_constant_folding=True,
    )


#: An absolute path of two or more components whose first has two or more characters (not
#: "1/3", "dB/s" or AudioSet ids like "/m/09x0r"): kept as its last component.
_ABS_PATH = re.compile(r"(?<![\w.:/])/[\w.+=@-]{2,}/(?:[\w.+=@-]+/)*([\w.+=@-]+)")


def scrub_machine_paths(model: Any) -> Any:
    """Remove what names the machine a model was built on from an ``onnx.ModelProto``, in place.

    The torch exporters store each node's Python stack trace and source file in the node's
    ``metadata_props`` and ``doc_string``: debugging aids that name the trainer's folders.
    They are dropped (in the graph, its subgraphs and local functions). In the model's own
    ``metadata_props`` and ``doc_string`` an absolute path is cut to its last component
    (``/home/x/runs/run-a`` -> ``run-a``), which keeps provenance readable.
    """
    import onnx

    def graphs(g: Any) -> Any:
        yield g
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    yield from graphs(attr.g)
                for sub in attr.graphs:
                    yield from graphs(sub)

    nodes = [n for g in graphs(model.graph) for n in g.node] + [n for f in model.functions for n in f.node]
    for node in nodes:
        del node.metadata_props[:]
        node.doc_string = ""
    for prop in model.metadata_props:
        if prop.key != "st.labels":  # label ids are not paths
            prop.value = _ABS_PATH.sub(r"\1", prop.value)
    model.doc_string = _ABS_PATH.sub(r"\1", model.doc_string)
    return model


def _as_tuple(out: Any) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def export_onnx(
    module: nn.Module,
    metadata: ModelMetadata,
    path: str | Path,
    *,
    example: torch.Tensor,
    dynamic_frames: bool,
    extra_inputs: dict[str, torch.Tensor] | None = None,
    min_frames: int = 1,
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
) -> Path:
    """Export ``module`` (eval mode, float32) to ``path`` with ``metadata`` in ``metadata_props``.

    Args:
        module: a network of :mod:`training.nets` (time-major input).
        metadata: what the file says about itself; ``extra`` gains ``onnx_outputs``,
            ``min_frames``, ``exporter`` and ``export_check``.
        path: output ``.onnx`` file, written atomically (temp file + rename).
        example: an input ``(batch >= 2, frames, n_mels)``; the batch must be > 1
            so that the exporter keeps it symbolic.
        dynamic_frames: frames axis symbolic (CNN, PANN, EfficientAT) or fixed (YAMNet).
        min_frames: the smallest valid frame count (PANN: 32).
        opset: ONNX opset (>= 17).
        exporter: ``"dynamo"`` (torch.export based, clean graphs) or ``"torchscript"``
            (the legacy tracer); ``"dynamo"`` falls back to ``"torchscript"`` on failure.
        extra_inputs: further named inputs after ``mel`` (batch axis dynamic, the rest fixed),
            e.g. a context transcoder's ``levels`` (batch, frames, n_bands).
    Returns:
        The path written.
    """
    import onnx
    import onnxruntime as ort

    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    if example.ndim != 3 or example.shape[0] < 2:
        raise ValueError(f"example must be (batch >= 2, frames, n_mels), got {tuple(example.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval().float()
    outputs = CLASSIFIER_OUTPUTS if metadata.kind == "classifier" else TRANSCODER_OUTPUTS
    names = (INPUT_NAME, *(extra_inputs or {}))
    args = (example, *(extra_inputs or {}).values())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    used = exporter
    try:
        with torch.no_grad(), _quiet_export():
            if exporter == "dynamo":
                try:
                    _export_dynamo(module, args, names, outputs, dynamic_frames, min_frames, opset, tmp)
                except Exception as exc:  # noqa: BLE001 - any exporter failure: try the legacy path
                    used = f"torchscript (dynamo failed: {type(exc).__name__})"
                    _export_torchscript(module, args, names, outputs, dynamic_frames, opset, tmp)
            elif exporter == "torchscript":
                _export_torchscript(module, args, names, outputs, dynamic_frames, opset, tmp)
            else:
                raise ValueError(f"exporter must be 'dynamo' or 'torchscript', got {exporter!r}")

        # One run of the file against PyTorch on the example input.
        with torch.no_grad():
            ref = [t.numpy() for t in _as_tuple(module(*args))]
        sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = sess.run(list(outputs), {n: a.numpy() for n, a in zip(names, args)})
        diffs = {n: float(np.max(np.abs(a - b))) for n, a, b in zip(outputs, got, ref)}
        key = outputs[0]
        if not diffs[key] <= _GROSS_ERROR:
            raise ModelError(f"ONNX export of {metadata.name} differs from PyTorch by {diffs[key]:.3g} on {key!r}")
        del sess

        model = onnx.load(str(tmp))
        metadata.extra = {
            **metadata.extra,
            "onnx_outputs": list(outputs),
            "min_frames": int(min_frames),
            "fixed_frames": None if dynamic_frames else int(example.shape[1]),
            "exporter": used,
            "export_check": {"input_shape": list(example.shape), "max_abs_diff": diffs},
        }
        props = metadata.to_props()
        kept = [p for p in model.metadata_props if p.key not in props]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
        for k, v in props.items():
            model.metadata_props.add(key=k, value=v)
        model.producer_name = "spectral_transcoder.training"
        model.doc_string = (
            f"{metadata.kind} {metadata.name}: input 'mel' (batch, frames, n_mels) time-major; "
            f"outputs {', '.join(outputs)}. Metadata keys st.*."
        )
        scrub_machine_paths(model)
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
