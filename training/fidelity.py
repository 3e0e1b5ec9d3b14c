"""Honest fidelity evaluation on the engine's multi-domain held-out set.

``python -m training fidelity ENGINE_DIR --teacher yamnet --method pinv --method onnx:yamnet
--method published:CKPT -o fidelity.json --markdown fidelity.md``

Every method turns the held-out chunks' third-octave levels into the teacher's Mel; the
frozen teacher classifies it; :func:`training.metrics.fidelity_report` compares that with
the teacher on the true Mel, per domain and overall, with 95 % intervals from a
bootstrap over source recordings. The table always starts with "always the teacher's
commonest answer", so a collapsed transcoder shows at a glance.

Methods (``--method``):

- ``pinv``: the PINV alone (the package's C++ kernel);
- ``onnx:NAME_OR_PATH``: a transcoder file or a shipped/registry name, run by the inference
  package exactly as users run it (a context model gets the chunk's neighbours);
- ``published:CKPT``: a published checkpoint of the paper (through the converter). The
  published YAMNet transcoder outputs the paper's ``yamnet_torchport`` Mel; it is scored
  against the same official-front-end teacher as every other row, which is what a user
  of that teacher gets (the front end alone costs it some agreement; the report says so);
- ``run:RUN_DIR``: a paper-style training run's best checkpoint, in torch;
- ``fit:RUN_DIR``: a context transcoder run's best checkpoint (``python -m training fit``), in torch;
- ``direct:RUN_DIR``: a direct student (``python -m training direct``): levels straight to
  the teacher's probabilities, no Mel and no teacher (the paper's retrained-classifier row).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spectral_transcoder.specs import get_band_spec

from .engine_store import HeldoutStore
from .metrics_tables import compare_table, domain_table

__all__ = ["evaluate_fidelity", "resolve_method", "merge_results", "format_report", "add_parser"]

#: Method: (name, levels-with-context (N, F, 29) -> Mel (N, T, M), output Mel spec name), or for a
#: direct student -> probabilities (N, C) with spec None.
Method = tuple[str, Callable[[np.ndarray, np.ndarray], np.ndarray], str | None]


def resolve_method(spec: str, teacher_spec: str) -> Method:
    """A ``--method`` string -> (name, fn(centre levels, context levels) -> Mel, Mel spec name)."""
    from spectral_transcoder.pinv import pinv_chunks

    band = get_band_spec("cense_fast")
    if spec == "pinv":
        return "PINV", lambda c, ctx: pinv_chunks(c, teacher_spec, band_spec=band), teacher_spec
    kind, _, arg = spec.partition(":")
    if kind == "onnx":
        from spectral_transcoder.models import Transcoder

        tr = Transcoder.coerce(arg, n_threads=2)

        def run(c: np.ndarray, ctx: np.ndarray) -> np.ndarray:
            if not tr.context_chunks:
                return tr.transcode_chunks(c)
            want = c.shape[-2] * (1 + 2 * tr.context_chunks)
            if ctx.shape[-2] != want:
                raise ValueError(f"{tr.model_id} needs {want} frames of context, the held-out set has {ctx.shape[-2]}")
            return tr.run_cnn(tr.pinv_chunks(c), levels=ctx)

        return f"{tr.name} ({Path(arg).name})", run, tr.output_spec.name
    if kind == "published":
        from .evaluate import published_method

        m = published_method(arg)
        return f"published checkpoint ({m.mel_spec.name})", lambda c, ctx: m.transcode(c), m.mel_spec.name
    if kind == "run":
        from .evaluate import run_method

        m = run_method(arg)
        return f"run {Path(arg).name}", lambda c, ctx: m.transcode(c), m.mel_spec.name
    if kind == "fit":
        from .loop import load_fit, predict

        model, ck = load_fit(arg)
        return (
            f"context transcoder {Path(arg).name} (step {ck['step']})",
            lambda c, ctx: predict(model, ctx, teacher_spec),
            teacher_spec,
        )
    if kind == "direct":  # probabilities, not a Mel: the teacher is skipped
        from .direct import load_direct, predict_direct

        student, ck = load_direct(arg)
        return f"direct student {Path(arg).name} (step {ck['step']})", lambda c, ctx: predict_direct(student, ctx), None
    raise ValueError(f"--method {spec!r}: expected pinv, onnx:NAME, published:CKPT, run:DIR, fit:DIR or direct:DIR")


def evaluate_fidelity(
    engine_dir: str | os.PathLike,
    teacher_name: str,
    methods: Sequence[str],
    *,
    split: str = "test",
    n_boot: int = 1000,
    models_dir: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Reports of every method (and the front-end oracle when a method needs another Mel spec).

    Returns ``{"split", "teacher", "n_chunks", "n_clips", "domains", "reports": {method: report}}``
    where each report is :func:`training.metrics.fidelity_report`'s.
    """
    from .teachers import load_teacher

    store = HeldoutStore(engine_dir, split, teacher_name)
    teacher = load_teacher(teacher_name, models_dir=models_dir)
    q = store.teacher_probs()
    centre, ctx = store.centre_levels(), np.asarray(store.levels, np.float32)
    reports: dict[str, Any] = {}
    for spec in methods:
        name, fn, mel_spec = resolve_method(spec, teacher.mel_spec.name)
        est = np.asarray(fn(centre, ctx), np.float32)
        if mel_spec is None:  # a direct student gives the probabilities itself
            p, est = est.astype(np.float64), None
        else:
            p = teacher.probs(est, batch_size=128).astype(np.float64)
        same = mel_spec == teacher.mel_spec.name
        reports[name] = store.report(p, model_mel=est if same else None, n_boot=n_boot, teacher_probs=q)
        reports[name]["mel_spec"] = mel_spec
        a = reports[name]["all"]
        log(
            f"{name}: clip {100 * a['clip_ptopafc']:.1f} %, macro {100 * a['macro_ptopafc']:.1f} %, "
            f"chunk {100 * a['chunk_agreement']:.1f} %, KL {a['kl']:.5f}"
        )
    return {
        "split": split,
        "teacher": {"name": teacher_name, "source": teacher.source, "sha256": teacher.sha256},
        "n_chunks": int(store.clip.size),
        "n_clips": int(store.meta["n_clips"]),
        "domains": store.domains,
        "reports": reports,
        "labels": [lb.name for lb in teacher.labels],
    }


def merge_results(
    result: dict[str, Any], earlier: dict[str, Any], *, rename: dict[str, str] | None = None, first: bool = True
) -> dict[str, Any]:
    """``result`` with the method reports of an earlier run of :func:`evaluate_fidelity` added
    (renamed by ``rename``; before this run's rows when ``first``), so that one table compares
    models evaluated at different times. Refuses results on another split, teacher or held-out set.
    """
    for key in ("split", "n_chunks", "n_clips", "domains"):
        if earlier[key] != result[key]:
            raise ValueError(f"cannot merge fidelity results with another {key}: {earlier[key]!r} != {result[key]!r}")
    if earlier["teacher"]["sha256"] != result["teacher"]["sha256"]:
        raise ValueError(f"cannot merge fidelity results of another teacher ({earlier['teacher']['source']})")
    rename = rename or {}
    old = {rename.get(k, k): v for k, v in earlier["reports"].items() if rename.get(k, k) not in result["reports"]}
    reports = {**old, **result["reports"]} if first else {**result["reports"], **old}
    return {**result, "reports": reports}


def format_report(result: dict[str, Any]) -> str:
    """Markdown: the comparison table overall, then per domain, then each method's domain table."""
    labels = result.get("labels") or None
    lines = [
        f"Teacher `{result['teacher']['name']}` ({result['teacher']['source']}); held-out `{result['split']}` "
        f"split: {result['n_clips']} clips, {result['n_chunks']} 1-s chunks, domains "
        f"{', '.join(result['domains'])}. 95 % intervals: bootstrap over source recordings.",
        "",
        "**All domains**",
        "",
        compare_table(result["reports"], label_names=labels),
        "",
    ]
    for d in result["domains"]:
        lines += [f"**{d}**", "", compare_table(result["reports"], domain=d, label_names=labels), ""]
    for name, rep in result["reports"].items():
        lines += [f"**{name}, per domain**", "", domain_table(rep, label_names=labels), ""]
    return "\n".join(lines)


def add_parser(sub: Any) -> None:
    """Register ``fidelity`` on an argparse subparsers object."""
    p = sub.add_parser(
        "fidelity",
        help="per-domain fidelity of transcoders on the engine's held-out set",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("engine_dir")
    p.add_argument("--teacher", required=True, choices=["yamnet", "efficientat"])
    p.add_argument(
        "--method",
        action="append",
        default=[],
        help="pinv, onnx:NAME_OR_PATH, published:CKPT, run:DIR, fit:DIR, direct:DIR",
    )
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--models-dir", default=None)
    p.add_argument("-o", "--output", help="JSON results")
    p.add_argument("--markdown", help="Markdown tables")
    p.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="JSON",
        help="earlier results (-o) on the same split and teacher, whose rows come first in the tables",
    )
    p.add_argument("--rename", action="append", default=[], metavar="OLD=NEW", help="rename an included row")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    res = evaluate_fidelity(
        args.engine_dir,
        args.teacher,
        args.method or ["pinv"],
        split=args.split,
        n_boot=args.n_boot,
        models_dir=args.models_dir,
        log=lambda m: print(m, flush=True),
    )
    rename = dict(r.split("=", 1) for r in args.rename)
    for path in reversed(args.include):
        res = merge_results(res, json.loads(Path(path).read_text(encoding="utf-8")), rename=rename)
    text = format_report(res)
    if args.output:
        Path(args.output).write_text(json.dumps(res, indent=1), encoding="utf-8")
    if args.markdown:
        Path(args.markdown).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0
