"""YAMNet weights from Google's published formats, into :class:`~training.nets.YAMNet`.

Two readers, neither needs TensorFlow:

* :func:`read_tflite` reads an int8 ``yamnet.tflite`` (hybrid quantisation, per-tensor
  or per-channel) with the PyPI ``tflite`` flatbuffer package: layers are found by
  operator order (models/README.md §2), DEQUANTIZE producers are followed back to
  their int8 constants, and weights are dequantised ``w = scale * (q - zero_point)``
  (one scale per tensor, or per channel along ``QuantizedDimension``). BatchNorm is
  folded in those files, so the result loads with running_mean 0 and running_var
  1 - eps (identity BN plus bias).
* :func:`read_h5` reads the official Keras-2 ``yamnet.h5`` weights file with h5py,
  by the dataset paths of docs/conventions.md §9 (110 datasets; the classifier group is
  ``logits`` in the official file and ``dense`` in a Keras-2 rebuild).

Both return a state dict for :class:`~training.nets.YAMNet` plus a description.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from spectral_transcoder.errors import ModelError

from .checkpoints import CheckpointError, _short, check_source_file
from .nets.yamnet import BN_EPS, YAMNET_LAYERS

__all__ = ["read_tflite", "read_h5", "state_dict_from_folded", "h5_dataset_paths"]

# tflite BuiltinOperator codes (schema.fbs) and TensorType codes used here.
_CONV_2D, _DEPTHWISE_CONV_2D, _DEQUANTIZE, _FULLY_CONNECTED = 3, 4, 6, 9
_FLOAT32, _INT8 = 0, 9
_PADDING_SAME = 0
_N_CLASSES, _N_FEATURES = 521, 1024


def _layer_names() -> list[str]:
    parts = ("depthwise_conv", "pointwise_conv")
    return ["layer1"] + [f"layer{i}.{part}" for i in range(2, len(YAMNET_LAYERS) + 2) for part in parts]


def state_dict_from_folded(
    folded: dict[str, tuple[np.ndarray, np.ndarray]], classifier: tuple[np.ndarray, np.ndarray]
) -> dict[str, torch.Tensor]:
    """BN-form YAMNet state dict from folded (weight OIHW, bias) pairs keyed by :func:`_layer_names`.

    The BN becomes an exact identity plus bias: weight 1, running_mean 0,
    running_var 1 - eps (so that running_var + eps = 1), bias = folded bias.
    """
    sd: dict[str, torch.Tensor] = {}
    for name, (w, b) in folded.items():
        prefix = "layer1.fused" if name == "layer1" else name
        c = w.shape[0]
        sd[f"{prefix}.conv.weight"] = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
        sd[f"{prefix}.bn.weight"] = torch.ones(c)
        sd[f"{prefix}.bn.bias"] = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))
        sd[f"{prefix}.bn.running_mean"] = torch.zeros(c)
        sd[f"{prefix}.bn.running_var"] = torch.full((c,), 1.0 - BN_EPS)
        sd[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(0)
    sd["classifier.weight"] = torch.from_numpy(np.ascontiguousarray(classifier[0], dtype=np.float32))
    sd["classifier.bias"] = torch.from_numpy(np.ascontiguousarray(classifier[1], dtype=np.float32))
    return sd


# ---------------------------------------------------------------------- tflite
class _TFLite:
    """Thin accessor over a parsed flatbuffer (tensors as dequantised numpy arrays)."""

    def __init__(self, path: Path) -> None:
        import tflite

        self.path = path
        buf = path.read_bytes()
        # A FlatBuffer's file identifier sits at bytes 4..8; TFLite's is "TFL3".
        if len(buf) < 8 or buf[4:8] != b"TFL3":
            raise ModelError(f"{str(path)!r} is not a TFLite model (no 'TFL3' flatbuffer identifier)")
        self.buf = buf
        self.model = tflite.Model.GetRootAsModel(buf, 0)
        if self.model.SubgraphsLength() < 1:
            raise ModelError(f"{str(path)!r}: TFLite model has no subgraph")
        self.graph = self.model.Subgraphs(0)
        self.tflite = tflite
        # tensor index -> input tensor of the DEQUANTIZE op that produces it
        self.dequantized_from: dict[int, int] = {}
        for op in self.ops():
            if self.opcode(op) == _DEQUANTIZE:
                self.dequantized_from[int(op.OutputsAsNumpy()[0])] = int(op.InputsAsNumpy()[0])

    def ops(self):
        return [self.graph.Operators(i) for i in range(self.graph.OperatorsLength())]

    def opcode(self, op) -> int:
        oc = self.model.OperatorCodes(op.OpcodeIndex())
        # Codes >= 127 live in BuiltinCode(); DeprecatedBuiltinCode() holds the small ones of old files.
        return max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode()))

    def shape(self, idx: int) -> tuple[int, ...]:
        return tuple(int(s) for s in self.graph.Tensors(idx).ShapeAsNumpy())

    def array(self, idx: int) -> tuple[np.ndarray, str]:
        """Tensor ``idx`` as float32 (dequantised), and its quantisation ('float32', 'per-tensor', 'per-channel')."""
        idx = self.dequantized_from.get(idx, idx)
        t = self.graph.Tensors(idx)
        data = self.model.Buffers(t.Buffer()).DataAsNumpy()
        shape = self.shape(idx)
        if isinstance(data, int) or data.size == 0:
            raise ModelError(f"{str(self.path)!r}: weight tensor #{idx} {t.Name()!r} has no constant data")
        ttype = t.Type()
        if ttype == _FLOAT32:
            return np.frombuffer(data.tobytes(), dtype="<f4").reshape(shape).astype(np.float32), "float32"
        if ttype != _INT8:
            raise ModelError(
                f"{str(self.path)!r}: weight tensor #{idx} has unsupported type {ttype} (expected float32 or int8)"
            )
        q = np.frombuffer(data.tobytes(), dtype=np.int8).reshape(shape).astype(np.float64)
        qp = t.Quantization()
        scale = qp.ScaleAsNumpy() if qp is not None else 0
        zero = qp.ZeroPointAsNumpy() if qp is not None else 0
        if isinstance(scale, int) or scale.size == 0:
            raise ModelError(f"{str(self.path)!r}: int8 tensor #{idx} has no quantisation scale")
        zero = np.zeros_like(scale) if isinstance(zero, int) or zero.size == 0 else zero.astype(np.float64)
        if scale.size == 1:
            return (scale[0] * (q - zero[0])).astype(np.float32), "per-tensor"
        axis = int(qp.QuantizedDimension())
        if scale.size != shape[axis]:
            raise ModelError(
                f"{str(self.path)!r}: tensor #{idx} has {scale.size} scales for axis {axis} of size {shape[axis]}"
            )
        bshape = [1] * len(shape)
        bshape[axis] = -1
        return (scale.reshape(bshape) * (q - zero.reshape(bshape))).astype(np.float32), "per-channel"

    def conv_options(self, op, code: int) -> tuple[int, int, int]:
        opts = self.tflite.Conv2DOptions() if code == _CONV_2D else self.tflite.DepthwiseConv2DOptions()
        table = op.BuiltinOptions()
        if table is None:
            raise ModelError(f"{str(self.path)!r}: a convolution has no options")
        opts.Init(table.Bytes, table.Pos)
        return int(opts.StrideH()), int(opts.StrideW()), int(opts.Padding())


def read_tflite(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """State dict for :class:`~training.nets.YAMNet` from an int8 YAMNet ``.tflite`` file.

    Returns ``(state_dict, info)``; ``info["quantization"]`` summarises how the
    weights were stored (e.g. ``{"per-tensor": 41, "float32": 15}``).
    """
    p = check_source_file(path, "YAMNet tflite file")
    try:
        tf = _TFLite(p)
        return _read_tflite_layers(tf)
    except ModelError:
        raise
    except Exception as exc:  # flatbuffer accessors fail in many ways on corrupt data
        raise ModelError(
            f"{str(p)!r} is not a readable YAMNet TFLite file (truncated or corrupt): {type(exc).__name__}: {exc}"
        ) from exc


def _read_tflite_layers(tf: _TFLite) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    where = str(tf.path)
    convs: list[tuple[int, Any]] = []
    head = None
    for op in tf.ops():
        code = tf.opcode(op)
        if code in (_CONV_2D, _DEPTHWISE_CONV_2D):
            convs.append((code, op))
        elif code == _FULLY_CONNECTED:
            w_idx = int(op.InputsAsNumpy()[1])
            if tf.shape(tf.dequantized_from.get(w_idx, w_idx)) == (_N_CLASSES, _N_FEATURES):
                head = op
    expected = [_CONV_2D] + [_DEPTHWISE_CONV_2D, _CONV_2D] * len(YAMNET_LAYERS)
    if [c for c, _ in convs] != expected or head is None:
        raise ModelError(
            f"{where!r}: not a YAMNet model: expected 1 CONV_2D then 13 DEPTHWISE_CONV_2D/CONV_2D pairs and a "
            f"[521, 1024] FULLY_CONNECTED head, found {len(convs)} convolutions"
            + ("" if head is not None else " and no such head")
        )
    strides = [2] + [s for s, _ in YAMNET_LAYERS for s in (s, 1)]
    folded: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    quant: dict[str, int] = {}
    for name, (code, op), stride in zip(_layer_names(), convs, strides):
        sh, sw, pad = tf.conv_options(op, code)
        if (sh, sw) != (stride, stride) or pad != _PADDING_SAME:
            raise ModelError(
                f"{where!r}: {name} has stride ({sh}, {sw}) / padding {pad}; YAMNet expects {stride} / SAME"
            )
        inputs = op.InputsAsNumpy()
        w, qw = tf.array(int(inputs[1]))
        b, qb = tf.array(int(inputs[2]))
        quant[qw] = quant.get(qw, 0) + 1
        quant[qb] = quant.get(qb, 0) + 1
        # OHWI -> OIHW for CONV_2D; 1HWC -> C1HW for DEPTHWISE_CONV_2D.
        w = w.transpose(0, 3, 1, 2) if code == _CONV_2D else w.transpose(3, 0, 1, 2)
        folded[name] = (w, b)
    inputs = head.InputsAsNumpy()
    fc_w, qw = tf.array(int(inputs[1]))  # [out, in], as torch.nn.Linear
    fc_b, qb = tf.array(int(inputs[2]))
    quant[qw] = quant.get(qw, 0) + 1
    quant[qb] = quant.get(qb, 0) + 1
    info = {
        "format": "tflite",
        "quantization": dict(sorted(quant.items())),
        "weights": "int8 dequantised (w = scale * (q - zero_point)), BatchNorm folded",
    }
    return state_dict_from_folded(folded, (fc_w, fc_b)), info


# ------------------------------------------------------------------------ h5
def h5_dataset_paths(classifier_group: str = "logits") -> dict[str, tuple[int, ...] | None]:
    """The 110 dataset paths of a Keras-2 ``yamnet.h5`` (docs/conventions.md §9), with their shapes."""
    paths: dict[str, tuple[int, ...] | None] = {}

    def bn(prefix: str, c: int) -> None:
        for v in ("beta", "moving_mean", "moving_variance"):
            paths[f"{prefix}/bn/{prefix}/bn/{v}:0"] = (c,)

    paths["layer1/conv/layer1/conv/kernel:0"] = (3, 3, 1, 32)
    bn("layer1/conv", 32)
    c_in = 32
    for i, (_, c_out) in enumerate(YAMNET_LAYERS, start=2):
        d, pw = f"layer{i}/depthwise_conv", f"layer{i}/pointwise_conv"
        paths[f"{d}/{d}/depthwise_kernel:0"] = (3, 3, c_in, 1)
        bn(d, c_in)
        paths[f"{pw}/{pw}/kernel:0"] = (1, 1, c_in, c_out)
        bn(pw, c_out)
        c_in = c_out
    g = classifier_group
    paths[f"{g}/{g}/kernel:0"] = (_N_FEATURES, _N_CLASSES)
    paths[f"{g}/{g}/bias:0"] = (_N_CLASSES,)
    return paths


def read_h5(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """State dict for :class:`~training.nets.YAMNet` from the official Keras ``yamnet.h5`` weights file.

    Kernels: HWIO -> OIHW; depthwise (3, 3, C, 1) -> (C, 1, 3, 3); Dense kernel
    transposed. BN (no gamma upstream): weight 1, bias = beta, running stats copied.
    """
    import h5py

    p = check_source_file(path, "YAMNet h5 file")
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise ModelError(f"{str(p)!r} is not a readable HDF5 file (truncated or corrupt): {exc}") from exc
    with f:
        found: dict[str, tuple[int, ...]] = {}

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                found[name] = tuple(obj.shape)

        try:
            f.visititems(visit)
        except (OSError, RuntimeError, KeyError) as exc:
            raise ModelError(f"{str(p)!r}: corrupt HDF5 file: {exc}") from exc
        group = "dense" if "dense/dense/kernel:0" in found and "logits/logits/kernel:0" not in found else "logits"
        expected = h5_dataset_paths(group)
        missing = [k for k in expected if k not in found]
        unexpected = [k for k in found if k not in expected]
        shapes = [f"{k} {found[k]} (expected {v})" for k, v in expected.items() if k in found and found[k] != v]
        problems = []
        if missing:
            problems.append(f"missing datasets: {_short(missing)}")
        if unexpected:
            problems.append(f"unexpected datasets: {_short(unexpected)}")
        if shapes:
            problems.append(f"wrong shapes: {_short(shapes)}")
        if problems:
            raise CheckpointError(
                f"{str(p)!r} is not a Keras-2 yamnet.h5 weights file ({len(expected)} datasets expected): "
                + "; ".join(problems)
            )
        try:
            data = {k: np.asarray(f[k][()], dtype=np.float32) for k in expected}
        except (OSError, RuntimeError) as exc:
            raise ModelError(f"{str(p)!r}: cannot read the HDF5 datasets (truncated or corrupt): {exc}") from exc

    sd: dict[str, torch.Tensor] = {}

    def put_bn(torch_prefix: str, keras_prefix: str) -> None:
        beta = data[f"{keras_prefix}/bn/{keras_prefix}/bn/beta:0"]  # no gamma: scale=False upstream
        sd[f"{torch_prefix}.bn.weight"] = torch.ones(beta.shape[0])
        sd[f"{torch_prefix}.bn.bias"] = torch.from_numpy(beta)
        bn_path = f"{keras_prefix}/bn/{keras_prefix}/bn"
        sd[f"{torch_prefix}.bn.running_mean"] = torch.from_numpy(data[f"{bn_path}/moving_mean:0"])
        sd[f"{torch_prefix}.bn.running_var"] = torch.from_numpy(data[f"{bn_path}/moving_variance:0"])
        sd[f"{torch_prefix}.bn.num_batches_tracked"] = torch.tensor(0)

    def t(a: np.ndarray, *axes: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a.transpose(*axes)))

    sd["layer1.fused.conv.weight"] = t(data["layer1/conv/layer1/conv/kernel:0"], 3, 2, 0, 1)
    put_bn("layer1.fused", "layer1/conv")
    for i in range(2, len(YAMNET_LAYERS) + 2):
        d, pw = f"layer{i}/depthwise_conv", f"layer{i}/pointwise_conv"
        sd[f"layer{i}.depthwise_conv.conv.weight"] = t(data[f"{d}/{d}/depthwise_kernel:0"], 2, 3, 0, 1)
        put_bn(f"layer{i}.depthwise_conv", d)
        sd[f"layer{i}.pointwise_conv.conv.weight"] = t(data[f"{pw}/{pw}/kernel:0"], 3, 2, 0, 1)
        put_bn(f"layer{i}.pointwise_conv", pw)
    sd["classifier.weight"] = t(data[f"{group}/{group}/kernel:0"], 1, 0)
    sd["classifier.bias"] = torch.from_numpy(data[f"{group}/{group}/bias:0"])
    info = {"format": "keras-h5", "classifier_group": group, "weights": "float32, BatchNorm kept (eps 1e-4, no gamma)"}
    return sd, info
