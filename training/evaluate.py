"""Evaluation of transcoders on a cache's held-out files (the paper's metrics: docs/conventions.md §6).

``python -m training evaluate CACHE_DIR --run RUN_DIR... [--published CKPT] [--onnx MODEL.onnx]``

Metrics, per method, on the regular 1-s chunks of the ``eval`` files:

- **Mel MSE**: per file, the mean squared difference over its chunks x frames x bins
  (in the target's own units: dB for PANN, ln for YAMNet), then averaged over files.
- **KL**: per file, the oracle and model probabilities are each averaged over the
  file's 1-s chunks. The KL is then KL(oracle‖model) on these unnormalised multi-label
  vectors, with ε = 1e-10 and divided by C (torch's ``KLDivLoss(reduction='batchmean',
  log_target=True)`` on one 1-D vector), and averaged over files.
- **PtoPa-FC**: the share of files where the argmax of the mean oracle probabilities
  equals the argmax of the mean model probabilities.

The oracle is the frozen teacher on the ground-truth Mel of the method's own output
spec. For the cache's spec this is the stored ``probs``. For another spec (the
published YAMNet transcoder outputs the paper's ``yamnet_torchport`` Mel) the ground
truth is recomputed from the files' audio with the same chunking (:func:`audio_reference`).
In that case the metrics against the cache's oracle are also reported (``*_vs_cache``),
which compares every method with the same target.

Methods: :func:`pinv_method`, :func:`run_method` (a training run's best
checkpoint, in torch), :func:`onnx_method` (an exported file, run by the inference
package), :func:`published_method` (a published checkpoint, through h3's converter).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spectral_transcoder.errors import InvalidInputError
from spectral_transcoder.pinv import pinv_chunks
from spectral_transcoder.specs import BandSpec, MelSpec

from .cache import SPLITS, ChunkStore
from .chunks import file_chunks, read_audio

# The pure metrics (no torch) live in training.metrics; re-exported here.
from .metrics import EPS, file_means, kl_divergence, mel_mse, ptopafc
from .runs import progress_bar
from .teachers import Teacher, load_teacher

__all__ = [
    "EPS",
    "file_means",
    "kl_divergence",
    "ptopafc",
    "mel_mse",
    "Method",
    "pinv_method",
    "run_method",
    "onnx_method",
    "published_method",
    "Reference",
    "cached_reference",
    "audio_reference",
    "evaluate_methods",
    "format_table",
    "add_parser",
]


# ---------------------------------------------------------------------- methods
@dataclass
class Method:
    """A transcoder: levels ``(N, F, n_bands)`` dB -> Mels ``(N, T, n_mels)`` in ``mel_spec``."""

    name: str
    mel_spec: MelSpec
    transcode: Callable[[np.ndarray], np.ndarray]
    description: str = ""
    run_dir: Path | None = None


def pinv_method(
    band_spec: BandSpec, mel_spec: MelSpec, *, matrix: np.ndarray | None = None, name: str = "PINV"
) -> Method:
    """The PINV alone (the package's kernel; default matrix unless ``matrix``)."""
    return Method(
        name,
        mel_spec,
        lambda lv: pinv_chunks(lv, mel_spec, band_spec=band_spec, matrix=matrix),
        "folded pseudo-inverse (spectral_transcoder.pinv)",
    )


def _torch_cnn(
    module: torch.nn.Module, band: BandSpec, mel: MelSpec, matrix: np.ndarray | None, batch_size: int = 256
) -> Callable[[np.ndarray], np.ndarray]:
    module = module.eval()

    def run(levels: np.ndarray) -> np.ndarray:
        x = pinv_chunks(levels, mel, band_spec=band, matrix=matrix)
        out = []
        with torch.no_grad():
            for s in range(0, x.shape[0], batch_size):
                out.append(module(torch.from_numpy(x[s : s + batch_size])).numpy())
        return np.concatenate(out) if out else x

    return run


def run_method(run_dir: str | os.PathLike, *, name: str | None = None, which: str = "best") -> Method:
    """A training run's CNN (``best.pt``) with the PINV matrix it was trained with."""
    from spectral_transcoder.specs import spec_from_json

    from .train import load_run

    model, meta, ck = load_run(run_dir, which=which)
    band = spec_from_json(json.dumps(meta["cache"]["band_spec"]))
    mel = spec_from_json(json.dumps(meta["cache"]["mel_spec"]))
    mode = meta["config"]["mode"]
    matrix = np.asarray(meta["pinv_matrix"], np.float64)
    return Method(
        name or f"CNN-{mode} ({Path(run_dir).name})",
        mel,
        _torch_cnn(model, band, mel, matrix),  # type: ignore[arg-type]
        f"run {run_dir}, {which} epoch {ck['epoch']}",
        run_dir=Path(run_dir),
    )


def onnx_method(path: str | os.PathLike, *, name: str | None = None) -> Method:
    """An exported ONNX transcoder run by the inference package (ONNX Runtime)."""
    from spectral_transcoder.models import Transcoder

    t = Transcoder.from_file(path)
    return Method(name or f"ONNX {t.name}", t.output_spec, lambda lv: t.transcode_chunks(lv), f"file {path}")


def published_method(path: str | os.PathLike, *, name: str | None = None) -> Method:
    """A published CNN transcoder checkpoint (paperSpectralTranscoder), via h3's converter."""
    from .convert import build

    c = build("transcoder", path)
    md = c.metadata
    matrix = np.asarray(md.pinv["matrix"], np.float64) if md.pinv else None
    return Method(
        name or f"published {md.name}",
        md.output_spec,
        _torch_cnn(c.module, md.input_spec, md.output_spec, matrix),  # type: ignore[arg-type]
        f"published checkpoint {Path(path).name} ({md.output_spec.name} front end)",
    )


# ---------------------------------------------------------------------- references
@dataclass
class Reference:
    """Ground truth of some files' regular 1-s chunks for one Mel spec."""

    mel_spec: MelSpec
    levels: np.ndarray
    mel: np.ndarray
    probs: np.ndarray
    file_ids: np.ndarray
    keys: dict[int, str] = field(default_factory=dict)
    note: str = ""


def _split_rows(store: ChunkStore, splits: Sequence[str]) -> np.ndarray:
    return np.sort(np.concatenate([store.rows(s, regular_only=True) for s in splits]))


def cached_reference(store: ChunkStore, splits: Sequence[str] = ("eval",)) -> Reference:
    """The cache's own ground truth (its Mel spec) for the regular chunks of ``splits``."""
    rows = _split_rows(store, splits)
    d = store.get(rows, ("levels", "mel", "probs", "file_id"))
    ids = d["file_id"]
    return Reference(
        store.mel_spec,
        d["levels"],
        d["mel"],
        d["probs"],
        ids,
        {int(i): store.files_by_id[int(i)] for i in np.unique(ids)},
        "cache",
    )


def audio_reference(
    store: ChunkStore,
    mel_spec: MelSpec,
    teacher: Teacher,
    splits: Sequence[str] = ("eval",),
    *,
    device: str = "cpu",
    progress: bool = False,
) -> Reference:
    """Ground truth in another Mel spec, recomputed from the audio of the ``splits`` files.

    Uses :func:`training.chunks.file_chunks` with the cache's settings (peak
    normalisation, no crops, no gain), so the chunks are the cache's regular chunks;
    ``note`` reports the largest difference between the recomputed and cached levels.
    """
    cfg = store.manifest["config"]
    wanted = {SPLITS.index(s) for s in splits}
    entries = sorted((e["id"], k, e) for k, e in store.manifest["files"].items() if SPLITS.index(e["split"]) in wanted)
    lv, mels, ids = [], [], []
    for fid, _key, e in progress_bar(entries, progress, "files"):
        audio, sr = read_audio(e["path"])
        ch = file_chunks(audio, sr, store.band_spec, mel_spec, peak_normalise=cfg["peak_normalise"])
        lv.append(ch["levels"])
        mels.append(ch["mel"])
        ids.append(np.full(ch["levels"].shape[0], fid, np.int32))
    levels = (
        np.concatenate(lv)
        if lv
        else np.zeros((0, store.band_spec.frames_per_chunk, store.band_spec.n_bands), np.float32)
    )
    mel = np.concatenate(mels) if mels else np.zeros((0, mel_spec.chunk_frames, mel_spec.n_mels), np.float32)
    file_ids = np.concatenate(ids) if ids else np.zeros(0, np.int32)
    probs = teacher.probs(mel, device=device)
    cached = cached_reference(store, splits)
    note = ""
    if cached.levels.shape == levels.shape and np.array_equal(cached.file_ids, file_ids):
        diff = float(np.max(np.abs(cached.levels - levels), initial=0.0))
        note = f"recomputed from audio; levels vs cache max |diff| {diff:.3g} dB"
    else:
        note = "recomputed from audio; chunk layout differs from the cache (files changed on disk?)"
    return Reference(mel_spec, levels, mel, probs, file_ids, {fid: k for fid, k, _ in entries}, note)


# ---------------------------------------------------------------------- evaluation
def _metrics(ref: Reference, est_mel: np.ndarray | None, est_probs: np.ndarray) -> dict[str, Any]:
    ids, q = file_means(ref.probs, ref.file_ids)
    _, p = file_means(est_probs, ref.file_ids)
    out = {
        "kl": kl_divergence(q, p),
        "ptopafc": ptopafc(q, p),
        "n_files": int(ids.size),
        "n_chunks": int(ref.file_ids.size),
    }
    if est_mel is not None:
        out["mel_mse"] = mel_mse(ref.mel, est_mel, ref.file_ids)
    return out


def evaluate_methods(
    store: ChunkStore,
    methods: Sequence[Method],
    teacher: Teacher,
    *,
    splits: Sequence[str] = ("eval",),
    device: str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """Metrics of every method on the regular chunks of ``splits``.

    Returns ``{"split": ..., "teacher": ..., "methods": {name: {"mel_mse", "kl", "ptopafc",
    "n_files", "n_chunks", "mel_spec", ...}}, "references": {spec: note}}``; methods whose
    output spec is not the cache's also get ``kl_vs_cache`` / ``ptopafc_vs_cache``
    (their probabilities against the cache's oracle).
    """
    refs: dict[str, Reference] = {store.mel_spec.name: cached_reference(store, splits)}
    cache_ref = refs[store.mel_spec.name]
    if cache_ref.file_ids.size == 0:
        raise InvalidInputError(f"the cache has no regular chunks in {list(splits)}")
    results: dict[str, Any] = {}
    for m in methods:
        if m.mel_spec.name not in refs:
            refs[m.mel_spec.name] = audio_reference(
                store, m.mel_spec, teacher, splits, device=device, progress=progress
            )
        ref = refs[m.mel_spec.name]
        if m.mel_spec != ref.mel_spec:
            raise InvalidInputError(f"method {m.name}: its Mel spec differs from the preset {m.mel_spec.name!r}")
        est = m.transcode(ref.levels)
        probs = teacher.probs(est, device=device)
        r = _metrics(ref, est, probs)
        r.update({"mel_spec": m.mel_spec.name, "description": m.description})
        if ref is not cache_ref and np.array_equal(ref.file_ids, cache_ref.file_ids):
            _, q = file_means(cache_ref.probs, cache_ref.file_ids)
            _, p = file_means(probs, ref.file_ids)
            r["kl_vs_cache"] = kl_divergence(q, p)
            r["ptopafc_vs_cache"] = ptopafc(q, p)
        results[m.name] = r
    # The two oracles against each other (how much the front end alone changes the teacher).
    for name, ref in refs.items():
        if ref is not cache_ref and np.array_equal(ref.file_ids, cache_ref.file_ids):
            _, q = file_means(cache_ref.probs, cache_ref.file_ids)
            _, p = file_means(ref.probs, ref.file_ids)
            results[f"oracle {name} (front end only)"] = {
                "kl": kl_divergence(q, p),
                "ptopafc": ptopafc(q, p),
                "n_files": int(q.shape[0]),
                "n_chunks": int(ref.file_ids.size),
                "mel_spec": name,
                "description": f"teacher on ground-truth {name} Mels vs the cache's oracle ({store.mel_spec.name})",
            }
    return {
        "note": (
            f"{cache_ref.file_ids.size} regular 1-s chunks of {np.unique(cache_ref.file_ids).size} files "
            f"({'+'.join(splits)} split of {store.dir}); each method against the teacher on its own "
            "front end's ground-truth Mels"
        ),
        "splits": list(splits),
        "teacher": {k: store.teacher_info[k] for k in ("name", "source", "sha256")},
        "cache_mel_spec": store.mel_spec.name,
        "methods": results,
        "references": {k: v.note for k, v in refs.items()},
    }


def format_table(results: dict[str, Any]) -> str:
    """A Markdown table of :func:`evaluate_methods` results."""
    lines = [
        "| method | Mel spec | Mel MSE | KL | PtoPa-FC % | KL vs cache oracle | PtoPa-FC % vs cache | files |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def f(v: Any, fmt: str) -> str:
        return "–" if v is None else format(v, fmt)

    for name, m in results["methods"].items():
        pv = m.get("ptopafc_vs_cache")
        lines.append(
            f"| {name} | {m.get('mel_spec', '')} | {f(m.get('mel_mse'), '.4g')} | {m['kl']:.6f} | "
            f"{100 * m['ptopafc']:.1f} | {f(m.get('kl_vs_cache'), '.6f')} | "
            f"{'–' if pv is None else format(100 * pv, '.1f')} | {m['n_files']} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------- CLI
def add_parser(sub: Any) -> None:
    """Register ``evaluate`` on an argparse subparsers object."""
    p = sub.add_parser(
        "evaluate",
        help="compare transcoders on a cache's held-out files (Mel MSE, KL, PtoPa-FC)",
        description="Evaluate the PINV and the given transcoders on the regular 1-s chunks of the cache's held-out "
        "files, against the frozen teacher (the paper's metrics: Tailleur et al., DCASE 2023, Table 2).",
    )
    p.add_argument("cache_dir", metavar="CACHE_DIR")
    p.add_argument("--run", action="append", default=[], metavar="RUN_DIR", help="a training run (best.pt); repeatable")
    p.add_argument(
        "--onnx", action="append", default=[], metavar="MODEL.onnx", help="an exported transcoder; repeatable"
    )
    p.add_argument(
        "--published",
        action="append",
        default=[],
        metavar="CKPT",
        help="a published transcoder checkpoint (with its _settings.yaml beside it); repeatable",
    )
    p.add_argument("--no-pinv", action="store_true", help="leave the PINV out")
    p.add_argument("--split", action="append", choices=SPLITS, help="split(s) to evaluate (default eval)")
    p.add_argument("--teacher-source", metavar="FILE", help="teacher checkpoint (default: the cache's)")
    p.add_argument("-o", "--output", metavar="RESULTS.json", help="write the results as JSON")
    p.add_argument(
        "--write-run-metrics",
        action="store_true",
        help="also write RUN_DIR/metrics.json for each --run (export-run puts it in the model metadata)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: Any) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    store = ChunkStore(args.cache_dir)
    info = store.teacher_info
    teacher = load_teacher(info["name"], args.teacher_source or info["source_path"])
    methods: list[Method] = [] if args.no_pinv else [pinv_method(store.band_spec, store.mel_spec)]
    methods += [run_method(r) for r in args.run]
    methods += [onnx_method(o) for o in args.onnx]
    methods += [published_method(p) for p in args.published]
    res = evaluate_methods(
        store, methods, teacher, splits=tuple(args.split or ("eval",)), device=args.device, progress=True
    )
    print(format_table(res))
    for spec, note in res["references"].items():
        print(f"reference {spec}: {note}")
    if args.output:
        Path(args.output).write_text(json.dumps(res, indent=1))
    if args.write_run_metrics:
        for r in args.run:
            Path(r, "metrics.json").write_text(json.dumps(res, indent=1))
    return 0
