"""Training the context transcoder on the data engine, checkpointed, resumable, selected by fidelity.

``python -m training fit ENGINE_DIR --teacher yamnet -o RUN_DIR --steps 30000``

Rerun the same command to resume (the run folder holds ``last.pt`` with the optimiser and
RNG state; ``best.pt`` is the checkpoint with the best validation selection score, the
domain-balanced clip and overall macro PtoPa-FC on the engine's ``valid`` split, never
the loss; see :func:`training.metrics.selection_score`).
New engine shards are picked up at every validation, so training can start while the
engine is still building.

Batches hold whole scenes (all their target seconds), so the loss has a clip-level term.
Per example: BCE of the student's sigmoid outputs against the teacher's (the paper's
CNN-logits, gradients through the frozen teacher), plus a softmax distillation term at
temperature 2 on the logits (it rewards the *ranking* of classes, which decides PtoPa-FC),
plus a small Mel MSE anchor; per scene: BCE of the scene-mean probabilities. With
``--balance A`` the per-example terms are weighted by ``freq(c)^-A``, c the teacher's top-1
class of the example (frequencies over the whole engine), against collapse onto the prior. Each
neighbour of the chunk is dropped (replaced by the chunk, as at a stream's end) with
probability ``p_drop_context``. Learning rate: linear warm-up, then cosine decay. The
teacher runs under bf16 autocast on the CPU when ``--bf16``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from spectral_transcoder.pinv import pinv_chunks
from spectral_transcoder.specs import get_band_spec

from .engine_store import HeldoutStore, SceneStore, centre_frames
from .metrics import selection_score
from .nets.context import ContextTranscoder
from .runs import add_config_arguments, model_from_checkpoint, save_checkpoint

__all__ = ["FitConfig", "fit", "load_fit", "add_parser"]

#: Level frames per 1-s chunk of the engine's band spec (cense_fast).
FPC = get_band_spec("cense_fast").frames_per_chunk


@dataclass(frozen=True)
class FitConfig:
    teacher: str
    steps: int = 30000
    scenes_per_batch: int = 8
    lr: float = 2e-3
    warmup: int = 500
    weight_decay: float = 1e-4
    w_bce: float = 1.0
    w_kd: float = 1.0
    kd_temperature: float = 2.0
    w_clip: float = 0.5
    w_mel: float = 0.02
    p_drop_context: float = 0.25
    channels: int = 96
    refine_channels: int = 8
    eval_every: int = 500
    balance: float = 0.0
    """Class balancing: examples weighted by (frequency of their teacher top-1 class)^-balance (0: off)."""
    texture: bool = False
    """The learned within-frame upsampling head (``ContextTranscoder(texture=True)``)."""
    init_from: str = ""
    """A run folder whose best weights start a new run (layers it lacks start at zero)."""
    bf16: bool = True
    seed: int = 0


def _lr(cfg: Any, step: int) -> float:
    """Linear warm-up over ``cfg.warmup`` steps, then cosine decay to 2 % over ``cfg.steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


def _pinv(centre: np.ndarray, mel_spec: str) -> torch.Tensor:
    return torch.from_numpy(pinv_chunks(centre, mel_spec, band_spec=get_band_spec("cense_fast")))


def predict(model: ContextTranscoder, levels: np.ndarray, mel_spec: str, *, batch: int = 256) -> np.ndarray:
    """Mels (N, T, M) of context windows ``levels`` (N, F, 29), in torch, no grad."""
    fpc, ctx = model.config["frames_per_chunk"], model.config["context"]
    out = []
    model.eval()
    with torch.no_grad():
        for s in range(0, levels.shape[0], batch):
            lv = np.asarray(levels[s : s + batch], np.float32)
            out.append(model(_pinv(centre_frames(lv, fpc, ctx), mel_spec), torch.from_numpy(lv)).numpy())
    return np.concatenate(out)


def _validate(model: ContextTranscoder, teacher: Any, held: HeldoutStore, mel_spec: str) -> dict[str, Any]:
    est = predict(model, np.asarray(held.levels, np.float32), mel_spec)
    return held.report(teacher.probs(est, batch_size=256).astype(np.float64))


def _fit_affine(
    store: SceneStore, mel_spec: str, rng: np.random.Generator, n: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin least squares of the target Mel on the PINV Mel (the starting affine map)."""
    ex = store.examples(rng.choice(store.n_examples, size=min(n, store.n_examples), replace=False))
    x = _pinv(centre_frames(ex["levels"], FPC, store.context), mel_spec).numpy().astype(np.float64)
    y = ex["mel"].astype(np.float64)
    xm, ym = x.mean(axis=(0, 1)), y.mean(axis=(0, 1))
    cov = ((x - xm) * (y - ym)).mean(axis=(0, 1))
    scale = cov / np.maximum(((x - xm) ** 2).mean(axis=(0, 1)), 1e-9)
    return scale.astype(np.float32), (ym - scale * xm).astype(np.float32)


def _drop_context(lv: np.ndarray, context: int, p_drop: float, rng: np.random.Generator) -> np.ndarray:
    """Context windows ``lv`` (n, F, bands) with each neighbour replaced by the chunk itself
    with probability ``p_drop`` (as at a stream's ends), in place."""
    centre = centre_frames(lv, FPC, context)
    for k in range(context):
        for side in (slice(k * FPC, (k + 1) * FPC), slice(lv.shape[1] - (k + 1) * FPC, lv.shape[1] - k * FPC)):
            drop = rng.random(lv.shape[0]) < p_drop
            lv[drop, side] = centre[drop]
    return lv


def _batch(store: SceneStore, rng: np.random.Generator, cfg: FitConfig) -> dict[str, np.ndarray]:
    scenes = rng.choice(store.n_scenes, size=cfg.scenes_per_batch, replace=False)
    idx = (scenes[:, None] * store.seconds + np.arange(store.seconds)[None]).ravel()
    ex = store.examples(idx)
    ex["levels"] = _drop_context(ex["levels"], store.context, cfg.p_drop_context, rng)
    return ex


def class_weights(store: SceneStore, balance: float) -> np.ndarray | None:
    """Per-class weights ``freq(c)^-balance`` of the teachers' top-1 classes over the engine (mean 1 over
    examples), or None when ``balance`` is 0."""
    if not balance:
        return None
    top = np.concatenate([np.asarray(lg).reshape(-1, lg.shape[-1]).argmax(-1) for lg in store.logits])
    freq = np.bincount(top, minlength=store.logits[0].shape[-1]).astype(np.float64) / top.size
    w = np.where(freq > 0, np.maximum(freq, 1e-6) ** -balance, 0.0)
    return (w / np.mean(w[top])).astype(np.float32)


def distillation_terms(
    logits: torch.Tensor, t_logits: torch.Tensor, temperature: float, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-example teacher-student terms, averaged over the batch (weighted by ``weights`` (B,)):
    BCE of the student's sigmoid outputs against the teacher's, and the softmax distillation
    KL(teacher || student) at ``temperature``, scaled by temperature². The student's logits come
    through the frozen teacher (``fit``) or straight from the levels (the direct student)."""
    w = torch.ones(logits.shape[0]) if weights is None else weights
    bce = (F.binary_cross_entropy_with_logits(logits, torch.sigmoid(t_logits), reduction="none").mean(-1) * w).mean()
    tt = temperature
    kl = F.kl_div(F.log_softmax(logits / tt, -1), F.log_softmax(t_logits / tt, -1), log_target=True, reduction="none")
    return bce, (kl.sum(-1) * w).mean() * tt * tt


def _loss(
    cfg: FitConfig,
    model: ContextTranscoder,
    teacher: Any,
    ex: dict[str, np.ndarray],
    mel_spec: str,
    seconds: int,
    weights: np.ndarray | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    lv = torch.from_numpy(ex["levels"])
    pin = _pinv(centre_frames(ex["levels"], model.config["frames_per_chunk"], model.config["context"]), mel_spec)
    mel = model(pin, lv)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
        logits = teacher.module(mel).logits.float()
    t_logits = torch.from_numpy(ex["logits"])
    q = torch.sigmoid(t_logits)
    w = None if weights is None else torch.from_numpy(weights[t_logits.argmax(-1).numpy()])
    bce, kd = distillation_terms(logits, t_logits, cfg.kd_temperature, w)
    p_clip = torch.sigmoid(logits).view(-1, seconds, logits.shape[-1]).mean(1).clamp(1e-6, 1 - 1e-6)
    clip = F.binary_cross_entropy(p_clip, q.view(-1, seconds, q.shape[-1]).mean(1))
    mse = F.mse_loss(mel, torch.from_numpy(ex["mel"]))
    total = cfg.w_bce * bce + cfg.w_kd * kd + cfg.w_clip * clip + cfg.w_mel * mse
    top1 = (logits.argmax(-1) == t_logits.argmax(-1)).float().mean()
    parts = {"loss": total, "bce": bce, "kd": kd, "clip": clip, "mel_mse": mse, "top1": top1}
    return total, {k: float(v.detach()) for k, v in parts.items()}


def fit(
    engine_dir: str | os.PathLike,
    run_dir: str | os.PathLike,
    cfg: FitConfig,
    *,
    models_dir: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train (or resume) a context transcoder; returns the run's summary."""
    from .teachers import load_teacher

    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    teacher = load_teacher(cfg.teacher, models_dir=models_dir)
    mel_spec = teacher.mel_spec
    store = SceneStore(engine_dir, cfg.teacher)
    held = HeldoutStore(engine_dir, "valid", cfg.teacher)
    model = ContextTranscoder(
        n_mels=mel_spec.n_mels,
        out_frames=mel_spec.frames_for_chunk(1.0),
        context=store.context,
        channels=cfg.channels,
        refine_channels=cfg.refine_channels,
        texture=cfg.texture,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    step, best, history = 0, -1.0, []
    if (run / "last.pt").is_file():
        ck = torch.load(run / "last.pt", weights_only=False)
        diff = [k for k in ck["config"] if ck["config"][k] != asdict(cfg).get(k) and k != "steps"]
        if diff:  # only --steps may change on resume (it stretches the remaining decay)
            raise ValueError(f"{run}: resumed with other settings ({', '.join(diff)}); use a new run folder")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, best, history = ck["step"], ck["best"], ck["history"]
        if (run / "best.pt").is_file():  # rescore: the selection rule may have changed since
            best = selection_score(torch.load(run / "best.pt", weights_only=False)["report"])
        rng.bit_generator.state = ck["rng"]
        log(f"resumed at step {step} (best selection score {best:.3f})")
    elif cfg.init_from:
        start = torch.load(Path(cfg.init_from) / "best.pt", weights_only=False)
        missing, unexpected = model.load_state_dict(start["model"], strict=False)
        if unexpected or any(not k.startswith("texture.") for k in missing):
            raise ValueError(
                f"--init-from {cfg.init_from}: its network does not fit this one "
                f"(missing {missing}, unexpected {unexpected})"
            )
        log(f"started from {cfg.init_from} (step {start['step']}); new layers: {missing or 'none'}")
    else:
        s, b = _fit_affine(store, mel_spec.name, rng)
        with torch.no_grad():
            model.pinv_scale.copy_(torch.from_numpy(s))
            model.pinv_bias.copy_(torch.from_numpy(b))
    meta = {
        "config": asdict(cfg),
        "model_config": model.config,
        "teacher": teacher.describe(),
        "mel_spec": mel_spec.name,
        "band_spec": "cense_fast",
        "engine": str(Path(engine_dir).name),
    }
    (run / "run.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    weights = class_weights(store, cfg.balance)
    t0, agg = time.perf_counter(), []
    while step < cfg.steps:
        model.train()
        for g in opt.param_groups:
            g["lr"] = _lr(cfg, step)
        loss, parts = _loss(cfg, model, teacher, _batch(store, rng, cfg), mel_spec.name, store.seconds, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        step += 1
        agg.append(parts)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            rep = _validate(model, teacher, held, mel_spec.name)
            score = selection_score(rep)
            a = rep["all"]
            row = {
                "step": step,
                "seconds": round(time.perf_counter() - t0, 1),
                "lr": _lr(cfg, step),
                **{k: float(np.mean([p[k] for p in agg])) for k in agg[0]},
                "val_clip": a["clip_ptopafc"],
                "val_macro": a["macro_ptopafc"],
                "val_chunk": a["chunk_agreement"],
                "val_kl": a["kl"],
                "val_commonest_share": a["model_commonest_share"],
                "teacher_commonest_share": a["teacher_commonest_share"],
                "score": score,
                "val_domain_clip": {d: r["clip_ptopafc"] for d, r in rep["by_domain"].items()},
                "train_examples": store.n_examples,
            }
            history.append(row)
            agg = []
            log(
                f"step {step}: loss {row['loss']:.4f} train top1 {100 * row['top1']:.1f} % | valid clip "
                f"{100 * a['clip_ptopafc']:.1f} % macro {100 * a['macro_ptopafc']:.1f} % chunk "
                f"{100 * a['chunk_agreement']:.1f} % KL {a['kl']:.5f} "
                f"commonest {100 * a['model_commonest_share']:.1f} % "
                f"(teacher {100 * a['teacher_commonest_share']:.1f} %) | by domain "
                + " ".join(f"{d} {100 * v:.0f}" for d, v in row["val_domain_clip"].items())
                + f" | score {score:.3f} | {store.n_examples} examples"
            )
            if score > best:
                best = score
                save_checkpoint(
                    {
                        "model": model.state_dict(),
                        "model_config": model.config,
                        "step": step,
                        "report": rep,
                        "meta": meta,
                    },
                    run / "best.pt",
                )
            save_checkpoint(
                {
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "step": step,
                    "best": best,
                    "history": history,
                    "rng": rng.bit_generator.state,
                    "config": asdict(cfg),
                },
                run / "last.pt",
            )
            (run / "history.json").write_text(json.dumps(history, indent=1), encoding="utf-8")
            store = SceneStore(engine_dir, cfg.teacher)  # pick up shards built meanwhile
    return {"step": step, "best_score": best, "history": history}


def load_fit(run_dir: str | os.PathLike, which: str = "best") -> tuple[ContextTranscoder, dict[str, Any]]:
    """The model of a run's ``best.pt`` (or ``last.pt``) and its checkpoint dict."""
    ck = torch.load(Path(run_dir) / f"{which}.pt", weights_only=False)
    return model_from_checkpoint(ck, ContextTranscoder), ck


def add_parser(sub: Any) -> None:
    """Register ``fit`` on an argparse subparsers object."""
    p = sub.add_parser(
        "fit",
        help="train (or resume) a context transcoder on an engine folder",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("engine_dir")
    p.add_argument("--teacher", required=True, choices=["yamnet", "efficientat"])
    p.add_argument("-o", "--out", required=True, help="run folder (rerun the same command to resume)")
    add_config_arguments(p, FitConfig)
    p.add_argument("--models-dir", default=None)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = FitConfig(**{k: getattr(args, k) for k in FitConfig.__dataclass_fields__})
    fit(args.engine_dir, args.out, cfg, models_dir=args.models_dir, log=lambda m: print(m, flush=True))
    return 0
