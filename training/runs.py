"""What every training run folder (and dataset cache) shares: options from its config dataclass,
atomic writes (checkpoints, text and JSON files), the RNG states a checkpoint resumes from, a
progress bar, and rebuilding a network from a checkpoint's ``model_config``."""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "add_config_arguments",
    "save_checkpoint",
    "write_text_atomic",
    "write_json_atomic",
    "rng_state",
    "set_rng_state",
    "progress_bar",
    "model_from_checkpoint",
]


def add_config_arguments(
    parser: argparse.ArgumentParser, config_cls: type, *, skip: tuple[str, ...] = ("teacher",)
) -> None:
    """One ``--field-name`` option per field of the dataclass ``config_cls``, with its default
    (booleans as ``--x/--no-x``)."""
    for f in config_cls.__dataclass_fields__.values():
        if f.name in skip:
            continue
        flag = f"--{f.name.replace('_', '-')}"
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default)


def save_checkpoint(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file, so a kill never leaves a half-written checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` through a hidden temporary file beside ``path``, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any) -> None:
    """:func:`write_text_atomic` of ``data`` as JSON (indent 1, keys in insertion order)."""
    write_text_atomic(path, json.dumps(data, indent=1))


def rng_state() -> dict[str, Any]:
    """The torch, CUDA, Python and numpy RNG states, storable in a checkpoint (numpy's as plain lists)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }


def set_rng_state(s: dict[str, Any]) -> None:
    """Restore the RNG states of :func:`rng_state` (a resumed run continues the same random streams)."""
    torch.set_rng_state(s["torch"])
    if s.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    py = s["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = s["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], np.uint32), n[2], n[3], n[4]))


def progress_bar(items: Sequence[Any], enabled: bool, unit: str) -> Iterable[Any]:
    """``items`` wrapped in a tqdm bar on stderr when ``enabled`` (and tqdm is installed)."""
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the archives/training extras
        return items
    return tqdm(items, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)


def model_from_checkpoint(ck: dict[str, Any], model_cls: type[torch.nn.Module]) -> torch.nn.Module:
    """``model_cls(**model_config)`` with the checkpoint's weights, in eval mode."""
    cfg = {k: v for k, v in dict(ck.get("model_config") or ck["meta"]["model_config"]).items() if k != "arch"}
    cfg["dilations"] = tuple(cfg["dilations"])
    model = model_cls(**cfg)
    model.load_state_dict(ck["model"])
    return model.eval()
