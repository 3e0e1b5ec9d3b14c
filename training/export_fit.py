"""Export a context transcoder run (``python -m training fit``) to a self-describing ONNX file and its card.

``python -m training export-fit RUN_DIR -o yamnet.onnx --name yamnet --fidelity fidelity.json``

The file takes two inputs, ``mel`` (the chunk's PINV Mel, as every transcoder) and
``levels`` (the chunk with its neighbours, ``(batch, 8 (1 + 2 context), 29)`` dBFS);
``st.extra["context_chunks"]`` tells the inference package to build them
(:meth:`spectral_transcoder.Transcoder.context_levels`). The card carries the fidelity
tables of ``python -m training fidelity`` (per domain, with the baselines). Nothing in
the file or the card names a path of the machine it was trained on.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
from pathlib import Path
from typing import Any

import torch

from spectral_transcoder.metadata import ModelMetadata
from spectral_transcoder.pinv import pinv_matrix
from spectral_transcoder.specs import get_band_spec, get_mel_spec

from .checkpoints import sha256_file
from .export import export_onnx
from .loop import load_fit
from .nets import count_parameters

__all__ = ["export_fit", "add_parser"]

WEIGHTS_LICENSE = "MIT (weights trained by spectral_transcoder)"
DATA_TEXT = (
    "Data engine scenes (training/engine.py) mixed from the training groups of the audio index: "
    "UrbanSound8K fold 1, field recordings and Debian-packaged speech, sound effects, ambiences and "
    "MIDI music rendered with FluidR3_GM (docs/training-data.md lists every source and licence)."
)


def export_fit(
    run_dir: str | Path, output: str | Path, *, name: str, fidelity: dict[str, Any] | None = None, notes: str = ""
) -> ModelMetadata:
    """Export ``RUN_DIR/best.pt`` to ``output`` (+ ``<stem>.md``); returns the metadata."""
    from .fidelity import format_report

    run = Path(run_dir)
    model, ck = load_fit(run)
    meta = ck["meta"]
    band, mel = get_band_spec(meta["band_spec"]), get_mel_spec(meta["mel_spec"])
    ctx = int(model.config["context"])
    fpc = int(model.config["frames_per_chunk"])
    summary = {}
    if fidelity:
        summary = {k: fidelity["reports"][k]["all"] for k in fidelity["reports"]}
    md = ModelMetadata(
        kind="transcoder",
        name=name,
        input_spec=band,
        output_spec=mel,
        source=f"{run.name}/best.pt (step {ck['step']})",
        source_sha256=sha256_file(run / "best.pt"),
        license=f"{WEIGHTS_LICENSE}; trained on audio under the licences of docs/training-data.md",
        # the PINV the network was trained behind, so that the file describes its whole chain
        pinv={"matrix": pinv_matrix(band, mel).tolist(), "phi_plus": "spectral_transcoder.pinv.pinv_matrix (float64)"},
        training_data=DATA_TEXT,
        metrics={"best_step": int(ck["step"]), "valid": ck["report"]["all"], **({"test": summary} if summary else {})},
        extra={
            "architecture": {"kind": "context", **model.config},
            "n_parameters": count_parameters(model),
            "context_chunks": ctx,
            "training": meta["config"],
            "teacher": {k: meta["teacher"].get(k) for k in ("name", "kind", "source", "sha256", "n_classes")},
            "input": "mel: PINV Mel of the 1-s chunk; levels: the chunk and its neighbours (dBFS)",
        },
    )
    g = torch.Generator().manual_seed(0)
    example = torch.randn(2, mel.chunk_frames, mel.n_mels, generator=g)
    levels = torch.randn(2, fpc * (1 + 2 * ctx), band.n_bands, generator=g) * 10 - 50
    export_onnx(model, md, output, example=example, dynamic_frames=False, extra_inputs={"levels": levels})
    tables = format_report(fidelity) if fidelity else "(no fidelity evaluation given)"
    cfg = meta["config"]
    texture = (
        "; a learned within-frame upsampling head renders detail inside each 125-ms frame"
        if model.config.get("texture")
        else ""
    )
    start = f", started from run `{Path(cfg['init_from']).name}`" if cfg.get("init_from") else ""
    balance = f"; examples weighted by freq(teacher's top-1 class)^-{cfg['balance']}" if cfg.get("balance") else ""
    card = f"""# `{name}`: context transcoder, cense_fast third-octaves -> `{mel.name}` Mel

- Teacher: {meta["teacher"]["name"]} (`{meta["teacher"]["source"]}`, sha256 {meta["teacher"]["sha256"][:12]}...)
- Architecture: third-octave trunk at 8 frames/s over the chunk and {ctx} neighbouring second(s) each side,
  interpolated to the Mel frames, over a learned per-bin affine map of the PINV, plus a thin 2-D refinement{texture}
  ({count_parameters(model)} parameters; `{json.dumps(model.config)}`).
- Training: step {ck["step"]} of {cfg["steps"]}{start}, the best validation selection score (mean of the
  domain-balanced clip PtoPa-FC and the macro PtoPa-FC on the engine's `valid` split); losses BCE + softmax
  distillation (T {cfg["kd_temperature"]}) + scene-level BCE + Mel MSE anchor{balance}; AdamW, warm-up then cosine decay.
- Data: {DATA_TEXT}
- Licence of the weights: {WEIGHTS_LICENSE}.
- Exported {_dt.date.today().isoformat()}.

## Fidelity on the held-out test split

{tables}
{("## Status" + chr(10) + notes.strip() + chr(10)) if notes.strip() else ""}"""  # noqa: E501 - the card's Markdown lines
    Path(output).with_suffix(".md").write_text(card, encoding="utf-8")
    return md


def add_parser(sub: Any) -> None:
    """Register ``export-fit`` on an argparse subparsers object."""
    p = sub.add_parser("export-fit", help="export a context transcoder run to ONNX with its model card")
    p.add_argument("run_dir")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--name", required=True, help="registry name (e.g. yamnet)")
    p.add_argument("--fidelity", help="JSON of python -m training fidelity, for the card")
    p.add_argument("--notes", default="", help="Markdown for the card's Status section")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    fid = json.loads(Path(args.fidelity).read_text(encoding="utf-8")) if args.fidelity else None
    export_fit(args.run_dir, args.output, name=args.name, fidelity=fid, notes=args.notes)
    print(f"wrote {args.output} and {Path(args.output).with_suffix('.md')}")
    return 0
