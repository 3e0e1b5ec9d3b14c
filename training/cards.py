"""Publishing a paper-style training run: its ONNX export with metadata and model card, and shipping.

``python -m training export-run RUN_DIR -o MODEL.onnx [--notes STATUS.md]``
``python -m training ship MODEL.onnx`` (into the package's ``models_data/``)

:func:`export_run` writes a run's best checkpoint (:mod:`training.train`) as a self-describing
ONNX transcoder: the cache's BandSpec and MelSpec, the PINV matrix the CNN was trained with,
the teacher, the training data and their licences (:func:`data_licences`), the metrics; beside
it the model card ``<stem>.md``, rendered from ``training/MODEL_CARD.md.in``
(:func:`render_model_card`). :func:`ship` copies a file and its card into the package and
records its sha256 in the registry's index.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import string
from pathlib import Path
from typing import Any

import torch

from spectral_transcoder.errors import InvalidInputError
from spectral_transcoder.metadata import ModelMetadata
from spectral_transcoder.specs import BandSpec, MelSpec

from .checkpoints import sha256_file
from .losses import loss_text
from .nets import count_parameters
from .paths import package_models_dir
from .runs import write_text_atomic
from .train import TrainConfig, load_run

__all__ = [
    "export_run",
    "ship",
    "PACKAGE_MODELS_DIR",
    "render_model_card",
    "data_licences",
    "WEIGHTS_LICENSE",
    "add_parsers",
]

WEIGHTS_LICENSE = "MIT (transcoder weights trained by the spectral_transcoder project)"
_CARD_TEMPLATE = Path(__file__).with_name("MODEL_CARD.md.in")


# ---------------------------------------------------------------------- model card
_DATA_LICENCES = (
    # (test on a manifest file key, licence text)
    (
        lambda key: key.split("/")[0].lower().startswith("fold") or "urbansound" in key.lower(),
        "UrbanSound8K (Salamon, Jacoby & Bello 2014): CC BY-NC 3.0, non-commercial",
    ),
    (lambda key: _is_tau(key), "TAU Urban Acoustic Scenes 2020 Mobile (Tampere University): research use only"),
)


def _is_tau(key: str) -> bool:
    stem = Path(key).stem
    parts = stem.split("-")
    return len(parts) >= 5 and parts[-1] in ("a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6")


def data_licences(manifest: dict[str, Any]) -> list[str]:
    """Licences of the training data of a cache, recognised from its file keys.

    UrbanSound8K folds (``foldN/...``) and TAU clips (``scene-city-loc-seg-device``) are
    recognised; any other file is listed under "licence not recorded" by its directory.
    """
    out: list[str] = []
    unknown: set[str] = set()
    for key in manifest["files"]:
        for test, text in _DATA_LICENCES:
            if test(key):
                if text not in out:
                    out.append(text)
                break
        else:
            unknown.add(key.split("/")[0])
    if unknown:
        out.append(
            f"other recordings in {', '.join(sorted(unknown))}: licence not recorded by this project "
            "(check each source before redistribution)"
        )
    return out


_KIND_TEXT = {
    "logits": "CNN-logits: BCE against the frozen teacher's sigmoid outputs on 1-s chunks",
    "distill": "CNN-logits with distillation: BCE against the frozen teacher's sigmoid outputs on 1-s chunks "
    "plus a softmax distillation term on its logits",
    "hybrid": "hybrid: Mel MSE plus BCE against the frozen teacher's sigmoid outputs",
    "mels": "CNN-mels: MSE against the ground-truth Mel",
    "logit_mse": "CNN-logits by logit matching: MSE against the frozen teacher's logits on 1-s chunks",
    "embed_mse": "CNN-logits with feature matching: MSE against the frozen teacher's embedding plus BCE "
    "against its sigmoid outputs on 1-s chunks",
    "feature_stats": "CNN-logits with texture matching: the per-channel mean and spread of the frozen teacher's "
    "feature maps matched to those on the ground-truth Mel, plus BCE against its sigmoid "
    "outputs on 1-s chunks",
}


def _default_name(teacher: str, mode: str) -> str:
    base = {"yamnet": "yamnet", "efficientat": "efficientat-mn04"}.get(teacher, teacher)
    return f"{base}-cnn-mels" if mode == "mels" else base


def _training_data_text(manifest: dict[str, Any], teacher: dict[str, Any], mode: str) -> str:
    c = manifest.get("counts", {})
    files, chunks = c.get("files", {}), c.get("chunks", {})
    dirs = ", ".join(d["name"] for d in manifest["audio_dirs"])
    kind = _KIND_TEXT[mode]
    return (
        f"{kind}; teacher {teacher['name']} ({teacher['source']}, sha256 {teacher['sha256'][:12]}...); "
        f"audio folders {dirs}; peak-normalised files cut into 1-s chunks; "
        f"train {files.get('train', '?')} files / {chunks.get('train', '?')} chunks, "
        f"valid {files.get('valid', '?')} / {chunks.get('valid', '?')}, "
        f"eval {files.get('eval', '?')} / {chunks.get('eval', '?')} (held out: {manifest.get('split_rule', '')})"
    )


def _start_text(meta: dict[str, Any]) -> str:
    src = meta.get("init_from")
    if not src:
        return "random (seeded) initialisation"
    return (
        f"the best weights (epoch {src['epoch']}) of the {src['mode']} run {Path(src['run']).name} "
        f"(best.pt sha256 {src['best_pt_sha256'][:12]}...), trained on the same data"
    )


def render_model_card(values: dict[str, Any]) -> str:
    """Fill ``training/MODEL_CARD.md.in`` (``$name`` placeholders) with ``values``."""
    template = string.Template(_CARD_TEMPLATE.read_text())
    return template.substitute({k: ("" if v is None else str(v)) for k, v in values.items()})


def _metrics_table(metrics: dict[str, Any]) -> str:
    rows = metrics.get("methods") if isinstance(metrics, dict) else None
    if not rows:
        return "(no evaluation recorded: run `python -m training evaluate ... --write-run-metrics`)"

    def f(v: Any, fmt: str, scale: float = 1.0) -> str:
        return "–" if v is None else format(scale * v, fmt)

    lines = ["| method | Mel spec | Mel MSE | KL | PtoPa-FC % | files |", "|---|---|---|---|---|---|"]
    for name, m in rows.items():
        lines.append(
            f"| {name} | {m.get('mel_spec', '')} | {f(m.get('mel_mse'), '.4g')} | {f(m.get('kl'), '.6f')} | "
            f"{f(m.get('ptopafc'), '.1f', 100.0)} | {m.get('n_files', '')} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------- export and ship
def export_run(
    run_dir: str | os.PathLike,
    output: str | os.PathLike,
    *,
    name: str | None = None,
    metrics: dict[str, Any] | None = None,
    exporter: str = "dynamo",
    card: bool = True,
    notes: str = "",
) -> ModelMetadata:
    """Export a run's best checkpoint to a self-describing ONNX transcoder (+ a model card).

    Uses h3's :func:`training.export.export_onnx`. The metadata holds: kind
    ``transcoder``, the cache's BandSpec (input) and MelSpec (output), the PINV matrix
    the CNN was trained with, the training data and split, the teacher, the metrics
    (``metrics`` or ``RUN_DIR/metrics.json`` written by ``evaluate --write-run-metrics``),
    the licence of the weights (MIT) and of the data. The model card is written beside
    the file as ``<stem>.md``, with ``notes`` (Markdown: status, caveats) as its
    "Status" section. Returns the metadata.
    """
    from .export import export_onnx

    run = Path(run_dir)
    model, meta, ck = load_run(run, which="best")
    cfg = TrainConfig(**meta["config"])
    manifest = (
        json.loads((Path(meta["cache_dir"]) / "manifest.json").read_text())
        if (Path(meta["cache_dir"]) / "manifest.json").is_file()
        else {"files": {}, "audio_dirs": []}
    )
    from spectral_transcoder.specs import spec_from_json

    band: BandSpec = spec_from_json(json.dumps(meta["cache"]["band_spec"]))  # type: ignore[assignment]
    mel: MelSpec = spec_from_json(json.dumps(meta["cache"]["mel_spec"]))  # type: ignore[assignment]
    teacher = manifest.get(
        "teacher", {"name": meta["cache"]["teacher"], "source": "?", "sha256": meta["cache"]["teacher_sha256"]}
    )
    if metrics is None and (run / "metrics.json").is_file():
        metrics = json.loads((run / "metrics.json").read_text())
    history = json.loads((run / "log.jsonl").read_text().splitlines()[-1]) if (run / "log.jsonl").is_file() else {}
    licences = data_licences(manifest)
    name = name or _default_name(teacher["name"], cfg.mode)
    best_pt = run / "best.pt"
    md = ModelMetadata(
        kind="transcoder",
        name=name,
        input_spec=band,
        output_spec=mel,
        source=f"{run.name}/best.pt (epoch {ck['epoch']})",
        source_sha256=sha256_file(best_pt),
        license=f"{WEIGHTS_LICENSE}; trained on: " + "; ".join(licences),
        training_data=_training_data_text(manifest, teacher, cfg.mode),
        metrics={
            "best_epoch": int(ck["epoch"]),
            "best_val_loss": float(ck["val_loss"]),
            "val_loss_kind": loss_text(cfg),
            **({"evaluation": metrics} if metrics else {}),
        },
        pinv={"matrix": meta["pinv_matrix"], "phi_plus": meta.get("pinv_matrix_from", "")},
        extra={
            "architecture": {"kind": "cnn_pinv", **model.config},
            "n_parameters": count_parameters(model),
            "training": {
                **cfg.to_dict(),
                "epochs_run": history.get("epoch"),
                "optimizer": "Adam",
                "loss": loss_text(cfg),
                **({"init_from": meta["init_from"]} if "init_from" in meta else {}),
            },
            "training_kind": cfg.mode,
            "teacher": {k: teacher.get(k) for k in ("name", "kind", "source", "sha256", "n_classes", "mel_spec")},
            "data_licences": licences,
            "input": "PINV Mel of one 1-s chunk (chunk_frames x n_mels) in the output spec's units",
        },
    )
    example = torch.randn(2, mel.chunk_frames, mel.n_mels, generator=torch.Generator().manual_seed(0))
    export_onnx(model, md, output, example=example, dynamic_frames=True, min_frames=1, exporter=exporter)
    if card:
        text = render_model_card(
            {
                "name": name,
                "kind": cfg.mode,
                "file": Path(output).name,
                "input_spec": band.name,
                "output_spec": mel.name,
                "chunk_frames": mel.chunk_frames,
                "n_mels": mel.n_mels,
                "teacher": f"{teacher['name']} ({teacher.get('source', '?')}, sha256 {teacher['sha256'][:12]}...)",
                "front_end": mel.name,
                "architecture": json.dumps(model.config),
                "n_parameters": count_parameters(model),
                "epochs": history.get("epoch", "?"),
                "start": _start_text(meta),
                "best_epoch": ck["epoch"],
                "best_val_loss": f"{float(ck['val_loss']):.6g}",
                "loss": md.extra["training"]["loss"],
                "batch_size": cfg.batch_size,
                "lr": cfg.lr,
                "seed": cfg.seed,
                "training_data": md.training_data,
                "data_licences": "\n".join(f"  - {x}" for x in licences),
                "weights_license": WEIGHTS_LICENSE,
                "metrics_table": _metrics_table(metrics or {}),
                "metrics_note": (metrics or {}).get("note", ""),
                "notes": f"\n## Status\n{notes.strip()}\n" if notes.strip() else "",
                "date": _dt.date.today().isoformat(),
            }
        )
        write_text_atomic(Path(output).with_suffix(".md"), text)
    return md


#: Where transcoders shipped with the package live in the repository (None outside a clone).
PACKAGE_MODELS_DIR = package_models_dir()


def ship(model: str | os.PathLike, *, dest: str | os.PathLike | None = PACKAGE_MODELS_DIR) -> dict[str, Any]:
    """Put an exported transcoder (and its model card ``<stem>.md``) into the package.

    The file is copied to ``dest/<metadata name>.onnx`` (the registry name users load,
    e.g. ``Transcoder.load("yamnet")``), the card beside it as ``<name>.md``, and its
    sha256 is recorded in ``dest/index.json``, which the registry checks at every load.
    Returns the index record.
    """
    import shutil

    from spectral_transcoder.models import read_metadata
    from spectral_transcoder.registry import read_index, write_index

    src = Path(model)
    meta, sha = read_metadata(src)
    if meta.kind != "transcoder":
        raise InvalidInputError(f"{src}: only transcoders ship with the package, this is a {meta.kind}")
    card = src.with_suffix(".md")
    if not card.is_file():
        raise InvalidInputError(f"{src}: no model card {card.name} beside it (export-run writes one)")
    if dest is None:
        raise InvalidInputError(
            "ship: outside a clone of the repository there is no package folder to ship "
            "into; give --dest DIR (python/spectral_transcoder/models_data of your clone)"
        )
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, out / f"{meta.name}.onnx")
    shutil.copyfile(card, out / f"{meta.name}.md")
    index = read_index(out / "index.json")  # the registry's own index format and atomic writer
    record = {
        "file": f"{meta.name}.onnx",
        "sha256": sha,
        "card": f"{meta.name}.md",
        "input_spec": meta.input_spec.name,
        "output_spec": meta.output_spec.name if meta.output_spec else None,
    }
    index["models"]["transcoder"][meta.name] = record
    write_index(out / "index.json", index)
    return record


# ---------------------------------------------------------------------- CLI
def add_parsers(sub: Any) -> None:
    """Register ``export-run`` and ``ship`` on an argparse subparsers object."""
    e = sub.add_parser(
        "export-run",
        help="export a run's best checkpoint to an ONNX transcoder with metadata and a model card",
    )
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("-o", "--output", required=True, metavar="MODEL.onnx")
    e.add_argument("--name", help="model name in the metadata (default: yamnet / efficientat-mn04 / ...-cnn-mels)")
    e.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo")
    e.add_argument("--notes", metavar="FILE.md", help="Markdown put in the model card's Status section")
    e.set_defaults(func=_cmd_export)

    s = sub.add_parser(
        "ship",
        help="put an exported transcoder and its model card into the package (models_data/ + sha256)",
        description="Copy MODEL.onnx and its card MODEL.md into python/spectral_transcoder/models_data/ under the "
        "model's metadata name, and record its sha256 in models_data/index.json. The package then loads it "
        "with Transcoder.load(NAME) from any install.",
    )
    s.add_argument("model", metavar="MODEL.onnx")
    s.add_argument(
        "--dest",
        default=PACKAGE_MODELS_DIR,
        help="models folder (default: the repository's package "
        "folder python/spectral_transcoder/models_data; required outside a clone)",
    )
    s.set_defaults(func=_cmd_ship)


def _cmd_export(args: Any) -> int:
    notes = Path(args.notes).read_text() if args.notes else ""
    md = export_run(args.run_dir, args.output, name=args.name, exporter=args.exporter, notes=notes)
    print(
        f"wrote {args.output} ({md.name}: {md.input_spec.name} -> {md.output_spec.name}) and "
        f"{Path(args.output).with_suffix('.md')}"
    )
    return 0


def _cmd_ship(args: Any) -> int:
    rec = ship(args.model, dest=args.dest)
    print(
        f"shipped {rec['file']} (sha256 {rec['sha256'][:12]}..., {rec['input_spec']} -> {rec['output_spec']}) "
        f"and {rec['card']} in {args.dest}"
    )
    return 0
