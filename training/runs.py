"""What every training run folder shares: options from its config dataclass, atomic checkpoint
writes, and rebuilding a network from a checkpoint's ``model_config``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["add_config_arguments", "save_checkpoint", "model_from_checkpoint"]


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type, *, skip: tuple[str, ...] = ("teacher",)) -> None:
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


def model_from_checkpoint(ck: dict[str, Any], model_cls: type[torch.nn.Module]) -> torch.nn.Module:
    """``model_cls(**model_config)`` with the checkpoint's weights, in eval mode."""
    cfg = {k: v for k, v in dict(ck.get("model_config") or ck["meta"]["model_config"]).items() if k != "arch"}
    cfg["dilations"] = tuple(cfg["dilations"])
    model = model_cls(**cfg)
    model.load_state_dict(ck["model"])
    return model.eval()
