"""Training the direct student (levels -> teacher logits) on the data engine: a reference row.

``python -m training direct ENGINE_DIR --teacher yamnet -o RUN_DIR --steps 6000``

The engine stores the teacher's logits of every training example, so this loop never runs
the teacher: it is cheap, and shows how much of the teacher's decision the third-octave
levels carry for a network of this size (the paper's retrained-classifier row). Loss: the
transcoder's per-example BCE and softmax distillation terms; neighbours are dropped as in
``fit``; warm-up then cosine decay; the checkpoint with the best validation selection score
is kept (``best.pt``). ``python -m training fidelity ... --method direct:RUN_DIR`` scores it
beside the transcoders. Not resumable: a run takes minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .engine_store import HeldoutStore, SceneStore
from .metrics import selection_score
from .nets.direct import DirectStudent
from .runs import add_config_arguments, model_from_checkpoint, save_checkpoint

__all__ = ["DirectConfig", "fit_direct", "load_direct", "predict_direct", "add_parser"]


@dataclass(frozen=True)
class DirectConfig:
    teacher: str
    steps: int = 6000
    batch: int = 256
    lr: float = 2e-3
    warmup: int = 300
    weight_decay: float = 1e-4
    kd_temperature: float = 2.0
    p_drop_context: float = 0.25
    channels: int = 192
    eval_every: int = 500
    seed: int = 0


def predict_direct(model: DirectStudent, levels: np.ndarray, *, batch: int = 1024) -> np.ndarray:
    """Sigmoid probabilities (N, C) of context windows ``levels`` (N, F, 29) dBFS."""
    model.eval()
    with torch.no_grad():
        return np.concatenate(
            [
                torch.sigmoid(model(torch.from_numpy(np.asarray(levels[s : s + batch], np.float32)))).numpy()
                for s in range(0, levels.shape[0], batch)
            ]
        )


def fit_direct(
    engine_dir: str | os.PathLike, run_dir: str | os.PathLike, cfg: DirectConfig, *, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Train a direct student; returns ``{"step", "best_score", "history"}``."""
    from .loop import _drop_context, _lr, distillation_terms

    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    store, held = SceneStore(engine_dir, cfg.teacher), HeldoutStore(engine_dir, "valid", cfg.teacher)
    model = DirectStudent(n_classes=store.logits[0].shape[-1], context=store.context, channels=cfg.channels)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    q_valid, best, history, t0 = held.teacher_probs(), -1.0, [], time.perf_counter()  # fixed: computed once
    for step in range(1, cfg.steps + 1):
        model.train()
        for g in opt.param_groups:
            g["lr"] = _lr(cfg, step - 1)
        ex = store.examples(rng.choice(store.n_examples, size=cfg.batch, replace=False))
        lv = _drop_context(ex["levels"], store.context, cfg.p_drop_context, rng)
        logits, t_logits = model(torch.from_numpy(lv)), torch.from_numpy(ex["logits"])
        bce, kd = distillation_terms(logits, t_logits, cfg.kd_temperature)
        loss = bce + kd
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            p = predict_direct(model, np.asarray(held.levels, np.float32)).astype(np.float64)
            rep = held.report(p, teacher_probs=q_valid)
            score, a = selection_score(rep), rep["all"]
            history.append(
                {
                    "step": step,
                    "seconds": round(time.perf_counter() - t0, 1),
                    "loss": loss.item(),
                    "val_clip": a["clip_ptopafc"],
                    "val_macro": a["macro_ptopafc"],
                    "score": score,
                    "val_commonest_share": a["model_commonest_share"],
                }
            )
            log(
                f"step {step}: loss {loss.item():.4f} | valid clip {100 * a['clip_ptopafc']:.1f} % macro "
                f"{100 * a['macro_ptopafc']:.1f} % commonest {100 * a['model_commonest_share']:.1f} % "
                f"(teacher {100 * a['teacher_commonest_share']:.1f} %) | score {score:.3f}"
            )
            if score > best:
                best = score
                save_checkpoint(
                    {
                        "model": model.state_dict(),
                        "model_config": model.config,
                        "step": step,
                        "config": asdict(cfg),
                        "report": rep,
                    },
                    run / "best.pt",
                )
            (run / "history.json").write_text(json.dumps(history, indent=1), encoding="utf-8")
    return {"step": cfg.steps, "best_score": best, "history": history}


def load_direct(run_dir: str | os.PathLike) -> tuple[DirectStudent, dict[str, Any]]:
    """The best model of a direct-student run and its checkpoint dict."""
    ck = torch.load(Path(run_dir) / "best.pt", weights_only=False)
    return model_from_checkpoint(ck, DirectStudent), ck


def add_parser(sub: Any) -> None:
    """Register ``direct`` on an argparse subparsers object."""
    p = sub.add_parser(
        "direct",
        help="train the direct student (levels -> teacher logits), a fidelity reference row",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("engine_dir")
    p.add_argument("--teacher", required=True, choices=["yamnet", "efficientat"])
    p.add_argument("-o", "--out", required=True, help="run folder")
    add_config_arguments(p, DirectConfig)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    kw = {f: getattr(args, f) for f in DirectConfig.__dataclass_fields__ if f != "teacher"}
    fit_direct(args.engine_dir, args.out, DirectConfig(teacher=args.teacher, **kw))
    return 0
