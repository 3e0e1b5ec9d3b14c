"""Subcommands of the teacher-student pipeline: build-dataset, train, export-run, ship, quantize, evaluate, downstream;
and ``sources`` (the training-audio index, training/sources.py).

:func:`register` adds them to an argparse subparsers object; every subcommand sets
``func`` (``args.func(args)`` returns the exit status). Until ``training/cli.py``
registers them, run them as ``python -m training.pipeline_cli COMMAND ...``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from spectral_transcoder.errors import SpectralTranscoderError

__all__ = ["COMMANDS", "register", "main"]

COMMANDS = (
    "build-dataset",
    "train",
    "export-run",
    "ship",
    "quantize",
    "evaluate",
    "downstream",
    "sources",
    "engine",
    "fidelity",
    "fit",
    "export-fit",
    "direct",
)


def register(sub: Any) -> None:
    """Add the pipeline's subcommands to ``sub`` (from ``ArgumentParser.add_subparsers``)."""
    from . import (
        cards,
        dataset,
        direct,
        downstream,
        engine,
        evaluate,
        export_fit,
        fidelity,
        loop,
        quantize,
        sources,
        train_cli,
    )

    dataset.add_parser(sub)
    train_cli.add_parser(sub)
    cards.add_parsers(sub)
    quantize.add_parser(sub)
    evaluate.add_parser(sub)
    downstream.add_parser(sub)
    sources.add_parser(sub)
    engine.add_parser(sub)
    fidelity.add_parser(sub)
    loop.add_parser(sub)
    export_fit.add_parser(sub)
    direct.add_parser(sub)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one pipeline subcommand; errors print one line and return 1."""
    parser = argparse.ArgumentParser(
        prog="python -m training.pipeline_cli", description="Teacher-student training pipeline of spectral_transcoder."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    register(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (SpectralTranscoderError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
