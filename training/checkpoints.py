"""Reading checkpoint files safely, and strict state-dict loading with clear errors.

Every torch file is read with ``torch.load(..., weights_only=True)``: no arbitrary
code runs. Old training checkpoints (PANN's) also pickle a few numpy arrays and
scalars (sampler state, iteration counters); only numpy's array/scalar
reconstructors and dtypes are allow-listed for them, which keeps the loader safe.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spectral_transcoder.errors import ModelError
from spectral_transcoder.registry import sha256_file  # one checksum for the registry and the cards

__all__ = ["CheckpointError", "sha256_file", "torch_load", "load_state_dict_strict", "check_source_file"]


class CheckpointError(ModelError):
    """A checkpoint does not match the network: missing, unexpected or mis-shaped keys."""


def check_source_file(path: str | Path, what: str) -> Path:
    """Return ``path`` as a Path if it is a non-empty readable file, else raise :class:`ModelError`."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"{what} {str(p)!r} does not exist")
    if not p.is_file():
        raise ModelError(f"{what} {str(p)!r} is not a file")
    if p.stat().st_size == 0:
        raise ModelError(f"{what} {str(p)!r} is empty")
    return p


def _numpy_safe_globals() -> list[Any]:
    """numpy array/scalar reconstructors and dtypes, under their numpy-1 and numpy-2 module names."""
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]

    entries: list[Any] = [np.ndarray, np.dtype]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        entries.append((multiarray._reconstruct, f"{mod}._reconstruct"))
        entries.append((multiarray.scalar, f"{mod}.scalar"))
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:  # numpy >= 1.25 pickles dtypes by their class; no object/void arrays
        entries.extend(
            getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType") and n not in ("ObjectDType", "VoidDType")
        )
    return entries


def torch_load(path: str | Path, what: str) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors that name the file."""
    p = check_source_file(path, what)
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(p, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, IndexError) as exc:
        raise ModelError(
            f"{what} {str(p)!r} is not a readable PyTorch checkpoint (truncated, corrupt or another format): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    except Exception as exc:  # pickle.UnpicklingError and friends
        raise ModelError(
            f"{what} {str(p)!r} could not be loaded safely with weights_only=True "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc


def _short(keys: Iterable[str], n: int = 12) -> str:
    """The first ``n`` names, comma-separated, with the total when there are more."""
    keys = list(keys)
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_state_dict_strict(
    module: nn.Module,
    state: Mapping[str, Any],
    *,
    source: str,
    ignore_prefixes: tuple[str, ...] = (),
) -> None:
    """Load ``state`` into ``module``: every key must match, with the right shape.

    Keys starting with one of ``ignore_prefixes`` are dropped first (e.g. PANN's
    waveform front end). Raises :class:`CheckpointError` naming the missing,
    unexpected and mis-shaped keys.
    """
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{source}: expected a state dict (name -> tensor), got {type(state).__name__}")
    state = {k: v for k, v in state.items() if not str(k).startswith(ignore_prefixes)}
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    bad_type = [k for k in state if k in own and not isinstance(state[k], torch.Tensor)]
    shapes = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})"
        for k in own
        if k in state and isinstance(state[k], torch.Tensor) and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_short(unexpected)}")
    if bad_type:
        problems.append(f"non-tensor values: {_short(bad_type)}")
    if shapes:
        problems.append(f"wrong shapes: {_short(shapes)}")
    if problems:
        raise CheckpointError(
            f"{source} does not match {type(module).__name__} ({len(own)} keys expected): " + "; ".join(problems)
        )
    floats = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    module.load_state_dict(floats, strict=True)
