"""What every ``spectral-transcoder`` subcommand module shares: the command table, the
help formatter and the small helpers for ``.npz`` files.

It imports no subcommand module, so the modules that define subcommands
(:mod:`.cli`, :mod:`.cli_process`, :mod:`.cli_griffin_lim`) all import it and never
each other's internals: :mod:`.cli` alone imports the others, to register them.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ._io import atomic_path

__all__ = ["PROG", "Handler", "Command", "COMMANDS", "register_command", "HelpFormatter", "npz_str", "save_npz"]

PROG = "spectral-transcoder"
Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    """A subcommand: ``setup`` adds its arguments to its parser and returns the handler."""

    name: str
    help: str
    description: str
    setup: Callable[[argparse.ArgumentParser], Handler]


#: Subcommands in the order ``--help`` lists them.
COMMANDS: dict[str, Command] = {}


def register_command(
    name: str, *, help: str, description: str = ""
) -> Callable[[Callable[[argparse.ArgumentParser], Handler]], Callable[[argparse.ArgumentParser], Handler]]:
    """Decorator: register ``setup(parser) -> handler`` as the subcommand ``name``."""

    def deco(setup: Callable[[argparse.ArgumentParser], Handler]) -> Callable[[argparse.ArgumentParser], Handler]:
        if name in COMMANDS:
            raise ValueError(f"subcommand {name!r} is already registered")
        COMMANDS[name] = Command(name, help, description or help, setup)
        return setup

    return deco


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' own line breaks, and shows an option's default only where it
    says something: not None or False (an unset option), not a list, not where the help
    already speaks of its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        h = action.help or ""
        d = action.default
        # identity, not ==: a default of 0 or 0.0 is worth showing, None and False are not
        if (
            not action.option_strings
            or "default" in h
            or d is None
            or d is False
            or d is argparse.SUPPRESS
            or isinstance(d, list)
        ):
            return h
        return h + " (default: %(default)s)"


def npz_str(z: np.lib.npyio.NpzFile, key: str) -> str | None:
    """The string stored under ``key`` in an open ``.npz`` (a 0-d array), or None."""
    return str(z[key][()]) if key in z.files else None


def save_npz(path: str | os.PathLike[str], **arrays: npt.ArrayLike) -> None:
    """Write ``arrays`` to a compressed ``.npz`` atomically (a killed run leaves no half file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".npz") as tmp:  # ends in .npz: numpy appends none, whatever path's name
        kwds: dict[str, Any] = arrays  # numpy's stub would also match a key to allow_pickle: bool
        np.savez_compressed(tmp, **kwds)
