"""Markdown tables of fidelity reports (:func:`training.metrics.fidelity_report`).

:func:`compare_table`: one row per method for one subset ("all" or a domain), with a first row
"always the teacher's commonest answer" (:func:`training.metrics.commonest_method`);
:func:`domain_table`: one row per domain of one report, and a last row "all". Pure Python.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from spectral_transcoder.errors import InvalidInputError

from .metrics import commonest_method

__all__ = ["compare_table", "domain_table"]


def _pct(x: float | None, interval: Sequence[float] | None = None) -> str:
    if x is None:
        return "—"
    return f"{100 * x:.1f}" + ("" if interval is None else f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]")


def _num(x: float | None, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def _label(k: int, label_names: Sequence[str] | None) -> str:
    name = f"#{k}" if label_names is None or not 0 <= k < len(label_names) else str(label_names[k])
    return name.replace("|", "\\|")


def _cells(s: Mapping[str, Any], label_names: Sequence[str] | None) -> list[str]:
    return [
        _pct(s["clip_ptopafc"], s["ci"]["clip_ptopafc"]),
        _pct(s["macro_ptopafc"]),
        _pct(s["chunk_agreement"]),
        _num(s["top5_overlap"], ".3f"),
        _num(s["kl"], ".4g"),
        _num(s["mel_mse"], ".4g"),
        f"{_pct(s['teacher_commonest_share'])} ({_label(s['teacher_commonest_class'], label_names)})",
        f"{_pct(s['model_commonest_share'])} ({_label(s['model_commonest_class'], label_names)})",
    ]


_HEAD = [
    "clip PtoPa-FC % [95 % CI]",
    "macro %",
    "chunk %",
    "top-5 overlap",
    "KL",
    "Mel MSE",
    "commonest share % (teacher's)",
    "commonest share % (model's)",
]


def _markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def compare_table(
    reports: Mapping[str, Mapping[str, Any]],
    *,
    domain: str = "all",
    label_names: Sequence[str] | None = None,
    baseline: str | None = "always commonest",
) -> str:
    """Markdown table, one row per method, of the reports' ``domain`` ("all" or a domain name).

    Unless ``baseline`` is None or already a key, a first row of that name gives
    :func:`commonest_method` of the first report (its class in the last columns). The
    teacher's commonest share is per row: rows with different teachers differ there.
    """
    items = list(reports.items())
    if not items:
        raise InvalidInputError("reports must hold at least one report")
    if baseline is not None and baseline not in reports:
        items.insert(0, (baseline, commonest_method(items[0][1])))
    rows = []
    for name, r in items:
        s = r["all"] if domain == "all" else r["by_domain"].get(domain)
        if s is None:
            raise InvalidInputError(f"domain {domain!r} is not in the report of {name!r}")
        rows.append([str(name).replace("|", "\\|"), *_cells(s, label_names)])
    return _markdown(["method", *_HEAD], rows)


def domain_table(report: Mapping[str, Any], *, label_names: Sequence[str] | None = None) -> str:
    """Markdown table of one report, one row per domain and a last row "all".

    The teacher's commonest share is also the clip PtoPa-FC of always giving that answer.
    """
    subsets = [*report["by_domain"].items(), ("all", report["all"])]
    rows = []
    for name, s in subsets:
        b = s["commonest_baseline"]
        rows.append(
            [
                str(name).replace("|", "\\|"),
                str(s["n_clips"]),
                str(s["n_groups"]),
                *_cells(s, label_names),
                _pct(b["macro_ptopafc"]),
                f"{s['collapse_excess']:+.1f}",
            ]
        )
    return _markdown(
        ["domain", "clips", "groups", *_HEAD, "always commonest macro %", "collapse excess (points)"], rows
    )
