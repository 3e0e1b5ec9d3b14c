"""Fidelity of a transcoder to its teacher, reported so that collapse is visible.

Pure numpy (no torch): importable by any tool. The *teacher* is the classifier on the
true Mel of the audio, the *model* the same classifier on the transcoded Mel. Inputs
are per 1-s chunk; a *clip* is one source file or recording segment (its chunks are
averaged, as in the paper), a *group* is the recording a clip comes from (clips of one
group are correlated, so the bootstrap resamples groups, never chunks or clips).

Per domain and overall, :func:`fidelity_report` gives the paper's PtoPa-FC and KL, a
class-balanced (macro) PtoPa-FC, chunk-level and top-5 agreement, the Mel MSE, the score
of always answering the teacher's commonest class, and how often the model gives its
own commonest answer (a collapsed model gives it on every clip). :func:`selection_score`
ranks checkpoints; :mod:`training.metrics_tables` renders reports as Markdown tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from spectral_transcoder.errors import InvalidInputError

__all__ = [
    "EPS",
    "CI_METRICS",
    "file_means",
    "kl_divergence",
    "ptopafc",
    "mel_mse",
    "fidelity_report",
    "commonest_method",
    "selection_score",
]

#: The paper's stabiliser inside the logs of the KL.
EPS = 1e-10
#: Metrics that get a bootstrap interval.
CI_METRICS = ("clip_ptopafc", "macro_ptopafc", "chunk_agreement", "top5_overlap", "kl")


# ------------------------------------------------------------------ paper metrics
def _sum_by(values: np.ndarray, inverse: np.ndarray, n: int) -> np.ndarray:
    """Row sums of ``values (N, ...)`` per label ``inverse (N,)`` in ``0..n-1``: ``(n, ...)``."""
    out = np.zeros((n, *values.shape[1:]))
    if values.shape[0] == 0:
        return out
    order = np.argsort(inverse, kind="stable")
    sorted_inv = inverse[order]
    starts = np.flatnonzero(np.r_[True, sorted_inv[1:] != sorted_inv[:-1]])
    out[sorted_inv[starts]] = np.add.reduceat(values[order], starts, axis=0)
    return out


def file_means(values: np.ndarray, file_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-file means of per-chunk rows ``values (N, ...)``: ``(unique ids (n_files,), means (n_files, ...))``."""
    values = np.asarray(values, np.float64)
    file_ids = np.asarray(file_ids)
    if file_ids.shape != values.shape[:1]:
        raise InvalidInputError(f"file_ids must have shape {values.shape[:1]}, got {file_ids.shape}")
    ids, inverse = np.unique(file_ids, return_inverse=True)
    inverse = inverse.reshape(-1)
    counts = np.bincount(inverse, minlength=ids.size).reshape(-1, *([1] * (values.ndim - 1)))
    return ids, _sum_by(values, inverse, ids.size) / counts


def _kl_rows(q: np.ndarray, p: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Per row ``(1/C) Σ_c (q+ε)(ln(q+ε) − ln(p+ε))`` of ``(n, C)`` inputs: ``(n,)``."""
    q = np.asarray(q, np.float64) + eps
    p = np.asarray(p, np.float64) + eps
    return np.sum(q * (np.log(q) - np.log(p)), axis=1) / q.shape[1]


def kl_divergence(oracle: np.ndarray, model: np.ndarray, eps: float = EPS) -> float:
    """The paper's KL: mean over files of ``(1/C) Σ_c (q+ε)(ln(q+ε) − ln(p+ε))``.

    ``oracle`` (q) and ``model`` (p) are ``(n_files, C)`` per-file mean probabilities
    (see :func:`file_means`). They are unnormalised: this is KL(oracle‖model) as torch's
    ``KLDivLoss(reduction='batchmean', log_target=True)`` computes it on one 1-D vector.
    """
    q, p = np.asarray(oracle), np.asarray(model)
    if q.shape != p.shape or q.ndim != 2:
        raise InvalidInputError(f"oracle and model must both be (n_files, C), got {q.shape} and {p.shape}")
    return float(_kl_rows(q, p, eps).mean())


def ptopafc(oracle: np.ndarray, model: np.ndarray) -> float:
    """Share of files whose top-1 class agrees (argmax over all C classes) of ``(n_files, C)`` inputs, in [0, 1]."""
    oracle, model = np.asarray(oracle), np.asarray(model)
    if oracle.shape != model.shape or oracle.ndim != 2:
        raise InvalidInputError(f"oracle and model must both be (n_files, C), got {oracle.shape} and {model.shape}")
    return float(np.mean(np.argmax(oracle, axis=1) == np.argmax(model, axis=1)))


def _chunk_mse(reference: np.ndarray, estimate: np.ndarray, block: int = 1024) -> np.ndarray:
    """Per chunk mean squared difference of ``(N, ...)`` Mels, in blocks of rows: ``(N,)``."""
    reference, estimate = np.asarray(reference), np.asarray(estimate)
    if reference.shape != estimate.shape or reference.ndim < 1:
        raise InvalidInputError(
            f"reference and estimate Mels must have one shape, got {reference.shape} and {estimate.shape}"
        )
    out = np.empty(reference.shape[0])
    for s in range(0, reference.shape[0], block):
        d = estimate[s : s + block].astype(np.float64) - reference[s : s + block]
        out[s : s + block] = (d * d).reshape(d.shape[0], -1).mean(axis=1)
    return out


def mel_mse(reference: np.ndarray, estimate: np.ndarray, file_ids: np.ndarray) -> float:
    """Per file, the mean squared difference over chunks x frames x bins of ``(N, T, M)`` Mels, then averaged over
    files."""
    # Every chunk has T x M values, so a file's mean is the mean of its chunks' means.
    _, per_file = file_means(_chunk_mse(reference, estimate), file_ids)
    return float(per_file.mean())


# ------------------------------------------------------------------ report
def _labels_per_clip(values: np.ndarray, inverse: np.ndarray, n_clips: int, name: str) -> np.ndarray:
    """Per clip code ``(n_clips,)`` of a per chunk label ``(N,)``; it must be constant within each clip."""
    per_clip = np.empty(n_clips, dtype=values.dtype)
    per_clip[inverse] = values
    if not np.array_equal(per_clip[inverse], values):
        raise InvalidInputError(f"{name} must be constant within each clip (one {name[:-1]} per clip_ids value)")
    return per_clip


def _topk_overlap(q: np.ndarray, p: np.ndarray, k: int = 5) -> np.ndarray:
    """Per row ``|topk(q) ∩ topk(p)| / k`` of ``(n, C)`` inputs (ties: lower index first): ``(n,)``."""
    k = min(k, q.shape[1])
    tq = np.argsort(-q, axis=1, kind="stable")[:, :k]
    tp = np.argsort(-p, axis=1, kind="stable")[:, :k]
    return (tq[:, :, None] == tp[:, None, :]).any(axis=2).sum(axis=1) / k


def _commonest(top1: np.ndarray) -> tuple[int, float]:
    """The most frequent value of ``top1 (n,)`` (ties: lowest) and its share."""
    classes, counts = np.unique(top1, return_counts=True)
    i = int(np.argmax(counts))
    return int(classes[i]), float(counts[i] / top1.size)


def _weighted_stats(w: np.ndarray, s: np.ndarray, n_classes: int) -> np.ndarray:
    """Metrics for group weights ``w (B, G)`` and group sums ``s (G, 7 + 2K)``: ``(B, 6)``.

    Columns of ``s``: clips, agreeing clips, chunks, agreeing chunks, top-5 overlap, KL,
    clips whose teacher top-1 is the commonest, per teacher class clips (K), and agreeing
    clips (K). Output columns: :data:`CI_METRICS` then the commonest baseline.
    """
    r = w @ s
    den, num = r[:, 7 : 7 + n_classes], r[:, 7 + n_classes :]
    present = den > 0
    macro = np.where(present, num / np.where(present, den, 1.0), 0.0).sum(axis=1) / present.sum(axis=1)
    n = r[:, 0]
    return np.stack([r[:, 1] / n, macro, r[:, 3] / r[:, 2], r[:, 4] / n, r[:, 5] / n, r[:, 6] / n], axis=1)


def _subset(
    c: dict[str, np.ndarray],
    clips: np.ndarray,
    chunk_t1: np.ndarray,
    chunks: np.ndarray,
    n_boot: int,
    seed: int,
    ci: float,
) -> dict[str, Any]:
    """Report of the clips ``clips (n_clips,)`` bool (and their chunks ``chunks (N,)`` bool)."""
    t1, m1 = c["t1"][clips], c["m1"][clips]
    classes = np.unique(t1)
    k_t, share_t = _commonest(t1)
    k_m, share_m = _commonest(m1)
    agree = (t1 == m1).astype(np.float64)
    onehot = (t1[:, None] == classes[None, :]).astype(np.float64)
    x = np.column_stack(
        [
            np.ones(t1.size),
            agree,
            c["n_chunks"][clips],
            c["a_chunks"][clips],
            c["top5"][clips],
            c["kl"][clips],
            (t1 == k_t).astype(np.float64),
            onehot,
            onehot * agree[:, None],
        ]
    )
    g_ids, g = np.unique(c["group"][clips], return_inverse=True)
    n_groups = g_ids.size
    s = _sum_by(x, g.reshape(-1), n_groups)
    point = _weighted_stats(np.ones((1, n_groups)), s, classes.size)[0]
    intervals: list[list[float] | None] = [None] * point.size
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, n_groups, size=(n_boot, n_groups)) + (np.arange(n_boot) * n_groups)[:, None]
        w = np.bincount(draws.ravel(), minlength=n_boot * n_groups).reshape(n_boot, n_groups).astype(np.float64)
        lo, hi = np.percentile(_weighted_stats(w, s, classes.size), [50 * (1 - ci), 50 * (1 + ci)], axis=0)
        intervals = [[float(a), float(b)] for a, b in zip(lo, hi)]
    chunk_base = float(np.mean(chunk_t1[chunks] == k_t))
    out: dict[str, Any] = {
        "n_clips": int(t1.size),
        "n_chunks": int(chunks.sum()),
        "n_groups": int(n_groups),
        "n_teacher_classes": int(classes.size),
        "n_model_classes": int(np.unique(m1).size),
        **{name: float(v) for name, v in zip(CI_METRICS, point)},
        "mel_mse": None if c.get("mel") is None else float(c["mel"][clips].mean()),
        "ci": dict(zip(CI_METRICS, intervals)),
        "commonest_baseline": {
            "class": k_t,
            "clip_ptopafc": float(point[5]),
            "macro_ptopafc": 1.0 / classes.size,
            "chunk_agreement": chunk_base,
            "ci": {"clip_ptopafc": intervals[5]},
        },
        "teacher_commonest_class": k_t,
        "teacher_commonest_share": share_t,
        "model_commonest_class": k_m,
        "model_commonest_share": share_m,
        "collapse_excess": 100.0 * (share_m - share_t),
    }
    return out


def _check_rows(name: str, a: np.ndarray, n: int, ndim: int | None = None) -> None:
    if a.shape[:1] != (n,) or (ndim is not None and a.ndim != ndim):
        want = f"{ndim}-D with {n} rows" if ndim else f"({n},)"
        raise InvalidInputError(f"{name} must be {want} (one per chunk of teacher_probs), got shape {a.shape}")


def fidelity_report(
    teacher_probs: np.ndarray,
    model_probs: np.ndarray,
    clip_ids: np.ndarray,
    domains: np.ndarray | None = None,
    *,
    domain_names: Sequence[str] | Mapping[Any, str] | None = None,
    groups: np.ndarray | None = None,
    teacher_mel: np.ndarray | None = None,
    model_mel: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict[str, Any]:
    """Fidelity of ``model_probs`` to ``teacher_probs``, overall and per domain.

    Shapes (N chunks of 1 s, C classes): ``teacher_probs``, ``model_probs`` ``(N, C)``
    sigmoid probabilities; ``clip_ids (N,)``; ``domains (N,)`` str or int codes, named by
    ``domain_names`` (a sequence indexed by code, or a mapping) when given, constant
    within a clip; ``groups (N,)`` the source recording, constant within a clip (default:
    the clip); ``teacher_mel``, ``model_mel`` ``(N, T, M)``, both or neither.

    Returns a JSON-serialisable ``{"all": S, "by_domain": {name: S}, "n_boot", "seed",
    "ci_level"}``, where each S holds ``n_clips, n_chunks, n_groups, n_teacher_classes,
    n_model_classes``; shares in [0, 1] ``clip_ptopafc, macro_ptopafc, chunk_agreement,
    top5_overlap``; ``kl``; ``mel_mse`` (None without Mels); ``ci`` ({metric: [lo, hi]}
    percentile intervals of :data:`CI_METRICS` from ``n_boot`` seeded group resamples, or
    None when ``n_boot`` is 0); ``commonest_baseline`` ({class, clip_ptopafc, macro_ptopafc,
    chunk_agreement, ci}); ``teacher_commonest_class/_share``,
    ``model_commonest_class/_share``; ``collapse_excess`` (percentage points).
    """
    tp, mp = np.asarray(teacher_probs, np.float64), np.asarray(model_probs, np.float64)
    if tp.ndim != 2 or tp.shape[0] == 0 or tp.shape[1] == 0:
        raise InvalidInputError(f"teacher_probs must be a non-empty (N, C) array, got shape {tp.shape}")
    if mp.shape != tp.shape:
        raise InvalidInputError(f"model_probs must have the shape of teacher_probs {tp.shape}, got {mp.shape}")
    for name, a in (("teacher_probs", tp), ("model_probs", mp)):
        if not np.isfinite(a).all():
            raise InvalidInputError(f"{name} contains NaN or Inf")
    n = tp.shape[0]
    clip_ids = np.asarray(clip_ids)
    _check_rows("clip_ids", clip_ids, n, 1)
    dom = np.zeros(n, np.int64) if domains is None else np.asarray(domains)
    _check_rows("domains", dom, n, 1)
    grp = clip_ids if groups is None else np.asarray(groups)
    _check_rows("groups", grp, n, 1)
    if (teacher_mel is None) != (model_mel is None):
        raise InvalidInputError("teacher_mel and model_mel must be given together")
    if not 0 < ci < 1 or n_boot < 0:
        raise InvalidInputError(f"ci must lie in (0, 1) and n_boot be >= 0, got ci={ci}, n_boot={n_boot}")

    ids, inv = np.unique(clip_ids, return_inverse=True)
    inv = inv.reshape(-1)
    _, tq = file_means(tp, clip_ids)
    _, mq = file_means(mp, clip_ids)
    chunk_t1 = tp.argmax(axis=1)
    chunk_agree = (chunk_t1 == mp.argmax(axis=1)).astype(np.float64)
    c: dict[str, Any] = {
        "t1": tq.argmax(axis=1),
        "m1": mq.argmax(axis=1),
        "n_chunks": np.bincount(inv, minlength=ids.size).astype(np.float64),
        "a_chunks": np.bincount(inv, weights=chunk_agree, minlength=ids.size),
        "top5": _topk_overlap(tq, mq),
        "kl": _kl_rows(tq, mq),
        "group": _labels_per_clip(np.unique(grp, return_inverse=True)[1].reshape(-1), inv, ids.size, "groups"),
    }
    if teacher_mel is not None:
        tm, mm = np.asarray(teacher_mel), np.asarray(model_mel)
        _check_rows("teacher_mel", tm, n)
        if mm.shape != tm.shape:
            raise InvalidInputError(f"model_mel must have the shape of teacher_mel {tm.shape}, got {mm.shape}")
        c["mel"] = file_means(_chunk_mse(tm, mm), clip_ids)[1]
    codes, dinv = np.unique(dom, return_inverse=True)
    clip_dom = _labels_per_clip(dinv.reshape(-1), inv, ids.size, "domains")
    if domain_names is None:
        names = [str(v) for v in codes.tolist()]
    else:
        lookup = domain_names if isinstance(domain_names, Mapping) else dict(enumerate(domain_names))
        missing = [v for v in codes.tolist() if v not in lookup]
        if missing:
            raise InvalidInputError(f"domain_names has no name for domain codes {missing}")
        names = [str(lookup[v]) for v in codes.tolist()]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"domain_names gives one name to several domains: {names}")

    every = np.ones(ids.size, bool)
    report: dict[str, Any] = {"all": _subset(c, every, chunk_t1, np.ones(n, bool), n_boot, seed, ci), "by_domain": {}}
    if domains is not None:
        for i, name in enumerate(names):
            clips = clip_dom == i
            report["by_domain"][name] = _subset(c, clips, chunk_t1, clips[inv], n_boot, seed, ci)
    report.update(n_boot=int(n_boot), seed=int(seed), ci_level=float(ci))
    return report


# ------------------------------------------------------------------ summaries
def _baseline_subset(s: Mapping[str, Any]) -> dict[str, Any]:
    b = s["commonest_baseline"]
    return {
        **s,
        **{m: None for m in (*CI_METRICS, "mel_mse")},
        "clip_ptopafc": b["clip_ptopafc"],
        "macro_ptopafc": b["macro_ptopafc"],
        "chunk_agreement": b["chunk_agreement"],
        "ci": {**{m: None for m in CI_METRICS}, **b["ci"]},
        "n_model_classes": 1,
        "model_commonest_class": b["class"],
        "model_commonest_share": 1.0,
        "collapse_excess": 100.0 * (1.0 - s["teacher_commonest_share"]),
    }


def commonest_method(report: Mapping[str, Any]) -> dict[str, Any]:
    """The pseudo-method "always the teacher's commonest clip-level answer", report-shaped.

    Per subset (each with its own commonest class): clip PtoPa-FC = the share of clips
    whose teacher top-1 is that class (with its interval), macro = 1/n_teacher_classes,
    chunk agreement = share of chunks whose teacher top-1 is it; top-5, KL, Mel MSE: None.
    """
    return {
        **report,
        "all": _baseline_subset(report["all"]),
        "by_domain": {k: _baseline_subset(v) for k, v in report["by_domain"].items()},
    }


def selection_score(report: Mapping[str, Any], *, min_domain_clips: int = 20) -> float:
    """Checkpoint selection score in [0, 1]: mean of the domain-balanced clip PtoPa-FC and the
    overall macro PtoPa-FC.

    The clip figure is averaged over the held-out domains with at least ``min_domain_clips``
    clips, each weighted equally, so that one large, easy domain (speech) cannot hide a
    collapse on urban or everyday sounds; smaller domains are too noisy to steer selection.
    Without such domains (or without ``by_domain``) the overall clip figure is used.
    """
    doms = [d for d in report.get("by_domain", {}).values() if d["n_clips"] >= min_domain_clips]
    clip = float(np.mean([d["clip_ptopafc"] for d in doms])) if doms else float(report["all"]["clip_ptopafc"])
    return 0.5 * (clip + float(report["all"]["macro_ptopafc"]))
