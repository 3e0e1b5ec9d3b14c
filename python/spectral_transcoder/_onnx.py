"""ONNX Runtime sessions and model files: the session options the package uses, and
:func:`read_metadata` / :func:`_open_model`, which open a model file, check its sha256
and parse its ``st.*`` metadata.

It sits below both :mod:`.models` (which runs the models) and :mod:`.registry` (which
imports model files and reads their metadata), so neither has to import the other's
module to share it. ``onnxruntime`` is imported on first use, not with this module.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidInputError, ModelError
from .metadata import ModelMetadata

__all__ = ["physical_cores", "session_options", "default_providers", "read_metadata"]


def physical_cores() -> int:
    """Physical CPU cores this process may use (hyper-threads not counted).

    ONNX Runtime's intra-op pool runs best at one thread per physical core; the
    count is capped by the process's CPU affinity (containers, taskset).
    """
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    cores: set[tuple[str, str]] = set()
    try:
        phys = ""
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    phys = value.strip()
                elif key == "core id":
                    cores.add((phys, value.strip()))
    except OSError:
        pass
    n = len(cores) if cores else (os.cpu_count() or 1)
    return max(1, min(n, usable))


def _check_n_threads(n_threads: object) -> int:
    if n_threads is None:
        return physical_cores()
    if isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 0:
        raise InvalidInputError(f"n_threads must be None or an integer >= 0 (0 = physical cores), got {n_threads!r}")
    return n_threads or physical_cores()


def session_options(n_threads: int | None = None) -> Any:
    """ONNX Runtime session options, set on purpose.

    ``intra_op_num_threads`` = ``n_threads`` (None or 0: physical cores), one
    inter-op thread and sequential execution (the graphs are chains: parallel
    branches would only oversubscribe the cores), full graph optimisation.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = _check_n_threads(n_threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only: ORT's warnings are not actionable for users
    return so


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it, then the CPU (always present)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available] or ["CPUExecutionProvider"]


@dataclass(frozen=True)
class _ModelFile:
    """An opened ONNX model file: its session, parsed metadata and checksum."""

    path: Path
    sha256: str
    session: Any
    metadata: ModelMetadata
    input_name: str
    input_shape: tuple[int | str | None, ...]  # ints for static dims, str / None for dynamic ones
    output_name: str
    levels_input: str | None = None  # a context transcoder's second input: the chunks' levels


def read_metadata(path: str | os.PathLike[str]) -> tuple[ModelMetadata, str]:
    """Metadata and sha256 of a model file, without optimising its graph."""
    f = _open_model(path, n_threads=1, providers=["CPUExecutionProvider"], optimize=False)
    return f.metadata, f.sha256


def _open_model(
    path: str | os.PathLike[str],
    *,
    n_threads: int | None,
    providers: Sequence[str] | None,
    expected_sha256: str | None = None,
    kind: str | None = None,
    optimize: bool = True,
) -> _ModelFile:
    import onnxruntime as ort

    p = Path(path)
    if not p.is_file():
        raise ModelError(
            f"model file {str(p)!r} does not exist. Convert a checkpoint with `python -m training convert KIND "
            "SOURCE -o MODEL.onnx` (docs/conventions.md §7 says where the sources come from), "
            "then `spectral-transcoder models import MODEL.onnx`; `spectral-transcoder models list` shows the "
            "known names and `spectral-transcoder models info NAME` the exact commands."
        )
    data = p.read_bytes()  # read once: the checksum and the session see the same bytes
    sha = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and sha != expected_sha256:
        raise ModelError(
            f"model file {str(p)!r} fails its checksum: sha256 {sha} but the registry recorded {expected_sha256} "
            "when it was imported. The file changed or is damaged: import it again with "
            "`spectral-transcoder models import PATH --name NAME`."
        )
    so = session_options(n_threads)
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(data, sess_options=so, providers=list(providers or default_providers()))
    except Exception as exc:  # noqa: BLE001 - ORT raises its own pybind types (InvalidProtobuf, Fail, ...)
        raise ModelError(
            f"model file {str(p)!r} ({len(data)} bytes) is not a loadable ONNX model (truncated or corrupt?): "
            f"{type(exc).__name__}: {exc}"
        ) from None
    props = session.get_modelmeta().custom_metadata_map
    meta = ModelMetadata.from_props(props, where=str(p))
    if kind is not None and meta.kind != kind:
        raise ModelError(f"model file {str(p)!r} is a {meta.kind}, not a {kind}")
    inputs, outputs = session.get_inputs(), session.get_outputs()
    levels_input = None
    if meta.kind == "transcoder" and len(inputs) == 2 and inputs[1].name == "levels" and len(inputs[1].shape) == 3:
        levels_input, inputs = inputs[1].name, inputs[:1]
    if len(inputs) != 1 or len(inputs[0].shape) != 3:
        raise ModelError(
            f"model file {str(p)!r}: expected one input of rank 3 (batch, frames, n_mels), got "
            + ", ".join(f"{i.name} {i.shape}" for i in inputs)
        )
    names = [o.name for o in outputs]
    # metadata.py convention: classifiers output `probs` first; transcoders one Mel.
    out = "probs" if (meta.kind == "classifier" and "probs" in names) else names[0]
    return _ModelFile(p, sha, session, meta, inputs[0].name, tuple(inputs[0].shape), out, levels_input)
