"""Command line of ``training/``: ``python -m training convert KIND SOURCE -o MODEL.onnx``.

The teacher-student pipeline's subcommands (``training/pipeline_cli.py``) are added
to the same parser when that module is present.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from spectral_transcoder.errors import SpectralTranscoderError

__all__ = ["main", "build_parser"]

_CONVERT_EPILOG = textwrap.dedent(
    """\
    KIND and SOURCE:
      yamnet-tflite  an int8 YAMNet .tflite file (per-tensor or per-channel int8 weights;
                     e.g. ../shared/models/yamnet_int8.tflite). Needs --yamnet-class-map.
      yamnet-h5      Google's Keras weights file yamnet.h5
                     (https://storage.googleapis.com/audioset/yamnet.h5). Needs --yamnet-class-map.
      efficientat    EfficientAT's mn04_as_mAP_432.pt (github.com/fschmid56/EfficientAT
                     releases). Needs --labels.
      pann-resnet38  PANNs ResNet38_mAP=0.434.pth  } from Zenodo record 3987831
      pann-cnn14     PANNs Cnn14_mAP=0.431.pth     } (https://zenodo.org/record/3987831). Need --labels.
      transcoder     a published CNN transcoder checkpoint (paperSpectralTranscoder
                     reference_models/...ts=1_model), with its <file>_settings.yaml beside it.

    The label CSVs are not shipped with the project (licence); pass them:
      --labels            AudioSet class_labels_indices.csv (527 rows: index,mid,display_name),
                          e.g. EfficientAT's metadata/class_labels_indices.csv
      --yamnet-class-map  YAMNet's yamnet_class_map.csv (521 rows), from tensorflow/models
                          research/audioset/yamnet

    Examples:
      python -m training convert yamnet-tflite yamnet_int8.tflite -o yamnet.onnx \\
          --yamnet-class-map yamnet_class_map.csv --labels class_labels_indices.csv
      python -m training convert yamnet-tflite yamnet_int8.tflite -o yamnet-torchport.onnx \\
          --yamnet-class-map yamnet_class_map.csv --input-spec yamnet_torchport
      python -m training convert efficientat mn04_as_mAP_432.pt -o efficientat-mn04.onnx \\
          --labels class_labels_indices.csv
      python -m training convert transcoder 'classifier=PANN+...+ts=1_model' -o pann-cnn-logits.onnx

    Then register the file with the inference package:
      spectral-transcoder models import MODEL.onnx
    """
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=Path(sys.argv[0]).name if Path(sys.argv[0]).name == "spectral-transcoder-train" else "python -m training",
        description="The PyTorch side of spectral_transcoder (the only part of the project that needs "
        "torch): checkpoint converters to self-describing ONNX, and the teacher-student pipeline when present. "
        "Run `python -m training COMMAND --help` for each command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    from .convert import KINDS

    conv = sub.add_parser(
        "convert",
        help="convert an official checkpoint into a self-describing ONNX model",
        description="Convert an official checkpoint (classifier or published transcoder) into an ONNX file "
        "that the inference package loads: time-major input 'mel' (batch, frames, n_mels); classifiers "
        "output probs, logits, embedding; the file's metadata holds its input/output specs, labels, "
        "source checksum and licence.",
        epilog=_CONVERT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    conv.add_argument("kind", metavar="KIND", help=f"source format: {', '.join(KINDS)}")
    conv.add_argument("source", metavar="SOURCE", help="the checkpoint file to convert")
    conv.add_argument("-o", "--output", metavar="MODEL.onnx", required=True, help="ONNX file to write")
    conv.add_argument("--labels", metavar="CSV", help="AudioSet class_labels_indices.csv (527 classes)")
    conv.add_argument("--yamnet-class-map", metavar="CSV", help="YAMNet yamnet_class_map.csv (521 classes)")
    conv.add_argument(
        "--input-spec",
        choices=("yamnet", "yamnet_torchport"),
        help="YAMNet only: the Mel front end the model declares: 'yamnet' (default, the official TF front "
        "end) or 'yamnet_torchport' (the paper's front end, needed by the published YAMNet transcoder)",
    )
    conv.add_argument("--opset", type=int, default=None, help="ONNX opset (>= 17; default 18)")
    conv.add_argument(
        "--exporter",
        choices=("dynamo", "torchscript"),
        default="dynamo",
        help="torch ONNX exporter (default dynamo; falls back to torchscript on failure)",
    )
    conv.set_defaults(func=_cmd_convert)
    _register_pipeline(parser, sub)
    return parser


def _register_pipeline(parser: argparse.ArgumentParser, sub: argparse._SubParsersAction) -> None:
    """Add the teacher-student pipeline's subcommands (training/pipeline_cli.py) when present.

    A failure there must not take ``convert`` down: it is reported in ``--help`` instead.
    """
    try:
        from . import pipeline_cli
    except ImportError:
        return
    try:
        pipeline_cli.register(sub)
    except Exception as exc:  # noqa: BLE001 - a broken pipeline module must not break convert
        parser.epilog = f"(pipeline commands unavailable: {type(exc).__name__}: {exc})"


def _cmd_convert(args: argparse.Namespace) -> int:
    from .convert import KINDS, convert
    from .export import DEFAULT_OPSET

    if args.kind not in KINDS:
        print(
            f"error: unknown KIND {args.kind!r}; choose one of: {', '.join(KINDS)} "
            "(see python -m training convert --help)",
            file=sys.stderr,
        )
        return 2
    meta = convert(
        args.kind,
        args.source,
        args.output,
        labels=args.labels,
        yamnet_class_map=args.yamnet_class_map,
        input_spec=args.input_spec,
        opset=args.opset or DEFAULT_OPSET,
        exporter=args.exporter,
    )
    spec = meta.input_spec.name
    out = f" -> {meta.output_spec.name}" if meta.output_spec is not None else ""
    print(
        f"wrote {args.output}: {meta.kind} {meta.name!r}, input spec {spec}{out}, "
        f"{len(meta.labels)} labels, source sha256 {meta.source_sha256[:12]}..., licence: {meta.license}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (errors print one line, status 1)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (SpectralTranscoderError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
