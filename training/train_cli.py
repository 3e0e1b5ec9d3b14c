"""``python -m training train``: the command line of the paper-style trainer (:mod:`training.train`).

:func:`add_parser` registers ``train`` on an argparse subparsers object; the command builds a
:class:`~training.train.TrainConfig` from the options and runs :func:`~training.train.train`.
"""

from __future__ import annotations

from typing import Any

import torch

from .cache import ChunkStore
from .losses import MODES
from .teachers import load_teacher
from .train import TrainConfig, train

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    """Register ``train`` on an argparse subparsers object."""
    p = sub.add_parser(
        "train",
        help="train (or resume) a CNN transcoder on a dataset cache",
        description="Train the residual CNN on the PINV of the cached third-octave levels: --mode logits "
        "(BCE against the frozen teacher, the paper's CNN-logits), --mode mels (MSE to the ground-truth Mel), "
        "--mode hybrid (the paper's mix of both), --mode distill (BCE plus softmax distillation), --mode logit_mse "
        "(MSE to the teacher's logits), --mode embed_mse (MSE to its embedding, plus BCE) or --mode feature_stats "
        "(its feature maps' per-channel mean and spread, plus BCE). Rerun the "
        "same command to resume after the last finished epoch (a larger --epochs continues training).",
    )
    p.add_argument("cache_dir", metavar="CACHE_DIR")
    p.add_argument("-o", "--output", required=True, metavar="RUN_DIR", help="run directory (created or resumed)")
    p.add_argument(
        "--mode",
        choices=MODES,
        default="logits",
        help="loss: logits (the paper's CNN-logits, BCE), mels (CNN-mels, MSE), hybrid (the paper's "
        "MSE + k BCE mix) or distill (BCE + softmax distillation); default logits",
    )
    p.add_argument("--epochs", type=int, default=200, help="epochs (default 200, the paper's)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", type=int, default=5, help="conv layers (default 5)")
    p.add_argument("--channels", type=int, default=64, help="hidden channels (default 64)")
    p.add_argument("--kernel-time", type=int, default=3)
    p.add_argument("--kernel-mel", type=int, default=5)
    p.add_argument("--dilation", type=int, default=1)
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="fit a per-bin affine map PINV -> target Mel on the training split, in front of the CNN "
        "(recommended for magnitude targets such as the official YAMNet front end)",
    )
    p.add_argument(
        "--prop-logit",
        type=float,
        default=TrainConfig.prop_logit,
        help="--mode hybrid: the paper's p in percent (default %(default)s)",
    )
    p.add_argument(
        "--hybrid-k",
        type=float,
        default=TrainConfig.hybrid_k,
        help="--mode hybrid: the paper's k (default %(default)s, YAMNet's)",
    )
    p.add_argument(
        "--kd-weight",
        type=float,
        default=TrainConfig.kd_weight,
        help="--mode distill: weight of the softmax distillation term (default %(default)s)",
    )
    p.add_argument(
        "--kd-temperature",
        type=float,
        default=TrainConfig.kd_temperature,
        help="--mode distill: softmax temperature (default %(default)s)",
    )
    p.add_argument(
        "--init-from",
        metavar="RUN_DIR",
        default="",
        help="start from the best weights of another run on the same cache and architecture",
    )
    p.add_argument("--teacher-source", metavar="FILE", help="teacher checkpoint (default: the cache's)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, or auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: Any) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(
        mode=args.mode,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        n_layers=args.layers,
        channels=args.channels,
        kernel_time=args.kernel_time,
        kernel_mel=args.kernel_mel,
        dilation=args.dilation,
        kd_weight=args.kd_weight,
        kd_temperature=args.kd_temperature,
        prop_logit=args.prop_logit,
        hybrid_k=args.hybrid_k,
        calibrate=args.calibrate,
        init_from=args.init_from,
    )
    teacher = None
    if args.teacher_source and cfg.mode != "mels":
        info = ChunkStore(args.cache_dir).teacher_info
        teacher = load_teacher(info["name"], args.teacher_source)
    res = train(args.cache_dir, args.output, cfg, teacher=teacher, device=args.device, progress=not args.no_progress)
    print(f"{res.run_dir}: best epoch {res.best_epoch}, validation loss {res.best_val_loss:.6g}")
    return 0
