"""training.metrics: hand-computed cases, collapse visibility, group bootstrap, validation."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import REPO, subprocess_env
from spectral_transcoder.errors import InvalidInputError
from training.metrics import (
    CI_METRICS,
    commonest_method,
    fidelity_report,
    file_means,
    kl_divergence,
    mel_mse,
    ptopafc,
    selection_score,
)
from training.metrics_tables import compare_table, domain_table

C = 8


def onehot(k: int, hi: float = 0.8, lo: float = 0.01, c: int = C) -> np.ndarray:
    v = np.full(c, lo)
    v[k] = hi
    return v


def tiny() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """4 clips, 6 chunks. Clip top-1 (teacher, model): (0, 0), (0, 1), (0, 0), (2, 1).

    Chunk top-1 agreement: clip 0 chunk 1 disagrees (model 0.4 on class 1) though the
    clip mean agrees; clip 1 and both chunks of clip 3 disagree: 2 of 6 chunks agree.
    """
    m0b = onehot(0, 0.3)
    m0b[1] = 0.4
    m3 = onehot(1, 0.5)
    m3[2] = 0.2
    teacher = np.stack([onehot(0), onehot(0), onehot(0), onehot(0), onehot(2, 0.7), onehot(2, 0.7)])
    model = np.stack([onehot(0, 0.9), m0b, onehot(1), onehot(0), m3, m3])
    return teacher, model, np.array([10, 10, 11, 12, 13, 13])


def random_case(seed: int = 0, n_clips: int = 300, per_group: int = 3, noise: float = 0.15):
    rng = np.random.default_rng(seed)
    clip = np.repeat(np.arange(n_clips), 4)
    teacher = rng.random((clip.size, 20)) ** 6
    model = np.clip(teacher + noise * rng.standard_normal(teacher.shape), 0, 1)
    return teacher, model, clip, clip // per_group, (clip // per_group) % 3


def flat(d, prefix=""):
    """(key path, value) pairs of a nested report."""
    if isinstance(d, dict):
        return [kv for k, v in d.items() for kv in flat(v, f"{prefix}/{k}")]
    if isinstance(d, list):
        return [kv for i, v in enumerate(d) for kv in flat(v, f"{prefix}[{i}]")]
    return [(prefix, d)]


def assert_reports_close(a, b):
    fa, fb = flat(a), flat(b)
    assert [k for k, _ in fa] == [k for k, _ in fb]
    for (k, x), (_, y) in zip(fa, fb):
        assert (x == pytest.approx(y, rel=1e-9, abs=1e-12)) if isinstance(x, float) else x == y, k


# --------------------------------------------------------------- paper metrics
def test_paper_metrics_hand_cases():
    ids, means = file_means(np.array([[1.0, 0], [3, 2], [5, 5], [0, 1]]), np.array([7, 7, 3, 9]))
    assert ids.tolist() == [3, 7, 9] and means.tolist() == [[5, 5], [2, 1], [0, 1]]
    q, p = np.array([[0.5, 0.25]]), np.array([[0.25, 0.5]])
    assert kl_divergence(q, p) == pytest.approx(0.125 * math.log(2), rel=1e-8)
    assert kl_divergence(q, q) == 0.0
    assert ptopafc(np.array([[1.0, 0], [0, 1]]), np.array([[1.0, 0], [1, 0]])) == 0.5
    ref, est = np.zeros((4, 2, 3)), np.zeros((4, 2, 3))
    est[0] += 2.0
    est[1] += 1.0
    assert mel_mse(ref, est, np.array([1, 2, 2, 2])) == pytest.approx((4 + 1 / 3) / 2)
    with pytest.raises(InvalidInputError, match="estimate"):
        mel_mse(ref, est[:3], np.array([1, 2, 2]))


# --------------------------------------------------------------- report metrics
def test_tiny_hand_computed():
    teacher, model, clip = tiny()
    s = fidelity_report(teacher, model, clip, n_boot=0)["all"]
    assert s["clip_ptopafc"] == 0.5
    assert s["macro_ptopafc"] == pytest.approx((2 / 3 + 0) / 2)  # class 0: 2 of 3 clips; class 2: 0 of 1
    assert s["chunk_agreement"] == pytest.approx(2 / 6)
    assert (s["n_clips"], s["n_chunks"], s["n_groups"], s["n_teacher_classes"], s["n_model_classes"]) == (4, 6, 4, 2, 2)
    b = s["commonest_baseline"]
    assert (b["class"], b["clip_ptopafc"], b["macro_ptopafc"]) == (0, 0.75, 0.5)
    assert b["chunk_agreement"] == pytest.approx(4 / 6)  # chunks whose teacher top-1 is class 0
    assert (s["teacher_commonest_class"], s["teacher_commonest_share"]) == (0, 0.75)
    assert (s["model_commonest_class"], s["model_commonest_share"]) == (0, 0.5)  # tie 0/1: lowest class
    assert s["collapse_excess"] == pytest.approx(-25.0)
    assert s["mel_mse"] is None and all(v is None for v in s["ci"].values())
    assert selection_score({"all": s}) == pytest.approx((0.5 + 1 / 3) / 2)


def test_top5_kl_and_mel_use_clip_means():
    c = 10
    t1 = np.linspace(1.0, 0.1, c)  # top-5 {0..4}
    m1 = np.roll(t1, 3)  # top-5 {3..7}: overlap {3, 4}
    teacher = np.stack([t1, t1, np.r_[0.4, 0.3, np.zeros(c - 2)], np.r_[0.6, 0.2, np.zeros(c - 2)]])
    model = np.stack([m1, m1, np.r_[0.25, 0.5, np.zeros(c - 2)], np.r_[0.25, 0.5, np.zeros(c - 2)]])
    clip = np.array([0, 0, 1, 1])
    mel_t, mel_m = np.zeros((4, 3, 2)), np.zeros((4, 3, 2))
    mel_m[0] = 2.0  # clip 0: chunks 4 and 0 -> 2; clip 1: 0
    s = fidelity_report(teacher, model, clip, teacher_mel=mel_t, model_mel=mel_m, n_boot=0)["all"]
    assert s["top5_overlap"] == pytest.approx((2 / 5 + 1.0) / 2)  # clip 1: top-5 ties broken by index
    kl0 = np.sum((t1 + 1e-10) * (np.log(t1 + 1e-10) - np.log(m1 + 1e-10))) / c
    kl1 = (0.5 * math.log(2) - 0.25 * math.log(2)) / c  # clip mean [0.5, 0.25] vs [0.25, 0.5]
    assert s["kl"] == pytest.approx((kl0 + kl1) / 2, rel=1e-6)
    assert s["mel_mse"] == pytest.approx(1.0)


def test_collapsed_model_is_visible():
    rng = np.random.default_rng(3)
    k = 4
    top = np.r_[np.zeros(12, int), np.repeat(np.arange(1, k), 4)]  # 12 of 24 clips in class 0
    teacher = np.stack([onehot(t) + 0.01 * rng.random(C) for t in top])
    model = np.tile(onehot(0, 0.6), (top.size, 1))  # always class 0
    r = fidelity_report(teacher, model, np.arange(top.size), n_boot=200)
    s = r["all"]
    assert s["macro_ptopafc"] == pytest.approx(1 / k)
    assert s["model_commonest_share"] == 1.0 and s["n_model_classes"] == 1
    assert s["clip_ptopafc"] == 0.5 == s["commonest_baseline"]["clip_ptopafc"]  # no better than the baseline
    assert s["macro_ptopafc"] < s["clip_ptopafc"] - 0.2 and s["collapse_excess"] == pytest.approx(50.0)
    assert selection_score(r) == pytest.approx((0.5 + 1 / k) / 2)
    table = compare_table({"collapsed": r}, label_names=[f"L{i}" for i in range(C)])
    row = next(ln for ln in table.splitlines() if ln.startswith("| collapsed"))
    assert "| 25.0 |" in row and "100.0 (L0)" in row


def test_perfect_model():
    teacher, _, clip, groups, dom = random_case(1, n_clips=60)
    mel = np.random.default_rng(0).random((clip.size, 5, 4))
    r = fidelity_report(teacher, teacher.copy(), clip, dom, groups=groups, teacher_mel=mel, model_mel=mel, n_boot=100)
    for s in (r["all"], *r["by_domain"].values()):
        for m in ("clip_ptopafc", "macro_ptopafc", "chunk_agreement", "top5_overlap"):
            assert s[m] == 1.0 and s["ci"][m] == [1.0, 1.0]
        assert s["kl"] == 0.0 and s["mel_mse"] == 0.0 and s["collapse_excess"] == 0.0


# --------------------------------------------------------------- bootstrap
def test_bootstrap_contains_point_and_is_deterministic():
    teacher, model, clip, groups, dom = random_case(2)
    kw = dict(groups=groups, domain_names={0: "street", 1: "park", 2: "home"}, n_boot=500, seed=7)
    r = fidelity_report(teacher, model, clip, dom, **kw)
    json.dumps(r)  # plain Python types
    assert r == fidelity_report(teacher, model, clip, dom, **kw)
    assert r["all"]["ci"] != fidelity_report(teacher, model, clip, dom, **{**kw, "seed": 8})["all"]["ci"]
    assert set(r["by_domain"]) == {"street", "park", "home"} and (r["n_boot"], r["seed"]) == (500, 7)
    for s in (r["all"], *r["by_domain"].values()):
        for m in CI_METRICS:
            lo, hi = s["ci"][m]
            assert lo <= s[m] <= hi and lo < hi, m


def test_domain_subset_equals_report_of_that_subset():
    teacher, model, clip, groups, dom = random_case(4)
    r = fidelity_report(teacher, model, clip, dom, groups=groups, n_boot=200, seed=1)
    keep = dom == 1
    alone = fidelity_report(teacher[keep], model[keep], clip[keep], groups=groups[keep], n_boot=200, seed=1)
    assert r["by_domain"]["1"] == alone["all"] and alone["by_domain"] == {}


def test_bootstrap_resamples_groups():
    # Each group holds one agreeing and one disagreeing clip: any resample of groups
    # scores exactly 0.5, while resampling clips would spread.
    n = 40
    top_t = np.zeros(n, int)
    top_m = np.where(np.arange(n) % 2 == 0, 0, 1)
    teacher = np.stack([onehot(t) for t in top_t])
    model = np.stack([onehot(t) for t in top_m])
    clip, groups = np.arange(n), np.arange(n) // 2
    by_group = fidelity_report(teacher, model, clip, groups=groups, n_boot=300)["all"]
    by_clip = fidelity_report(teacher, model, clip, n_boot=300)["all"]
    assert by_group["ci"]["clip_ptopafc"] == [0.5, 0.5] and by_group["n_groups"] == n // 2
    lo, hi = by_clip["ci"]["clip_ptopafc"]
    assert lo < 0.45 and hi > 0.55
    # Two recordings of 10 clips each, one all right, one all wrong: resamples score 0, 0.5 or 1.
    g2 = np.arange(n) // 20
    model2 = np.stack([onehot(0 if g == 0 else 1) for g in g2])
    s2 = fidelity_report(teacher, model2, clip, groups=g2, n_boot=1000)["all"]
    assert s2["clip_ptopafc"] == 0.5 and s2["ci"]["clip_ptopafc"] == [0.0, 1.0]


def test_invariant_to_chunk_order():
    teacher, model, clip, groups, dom = random_case(5, n_clips=120)
    mel_t = np.random.default_rng(1).random((clip.size, 3, 2))
    mel_m = mel_t + 0.1
    kw = dict(n_boot=200, seed=3)
    r = fidelity_report(teacher, model, clip, dom, groups=groups, teacher_mel=mel_t, model_mel=mel_m, **kw)
    perm = np.random.default_rng(9).permutation(clip.size)
    rp = fidelity_report(
        teacher[perm],
        model[perm],
        clip[perm],
        dom[perm],
        groups=groups[perm],
        teacher_mel=mel_t[perm],
        model_mel=mel_m[perm],
        **kw,
    )
    assert_reports_close(r, rp)


@given(st.integers(1, 6), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_bounds_and_baseline_properties(n_clips, chunks_per_clip, seed):
    rng = np.random.default_rng(seed)
    clip = np.repeat(np.arange(n_clips), chunks_per_clip)
    teacher, model = rng.random((clip.size, 7)), rng.random((clip.size, 7))
    s = fidelity_report(teacher, model, clip, n_boot=20, seed=seed)["all"]
    for m in ("clip_ptopafc", "macro_ptopafc", "chunk_agreement", "top5_overlap"):
        assert 0.0 <= s[m] <= 1.0
    assert s["commonest_baseline"]["macro_ptopafc"] == pytest.approx(1 / s["n_teacher_classes"])
    assert s["teacher_commonest_share"] == s["commonest_baseline"]["clip_ptopafc"]
    assert 1 / s["n_clips"] <= s["model_commonest_share"] <= 1.0


# --------------------------------------------------------------- tables
def test_tables_and_commonest_method():
    teacher, model, clip, groups, dom = random_case(6, n_clips=90)
    ours = fidelity_report(teacher, model, clip, dom, groups=groups, domain_names=["a", "b", "c"], n_boot=100)
    worse = fidelity_report(
        teacher, np.roll(model, 1, axis=1), clip, dom, groups=groups, domain_names=["a", "b", "c"], n_boot=100
    )
    base = commonest_method(ours)
    b = ours["all"]["commonest_baseline"]
    assert base["all"]["clip_ptopafc"] == b["clip_ptopafc"] and base["all"]["kl"] is None
    assert base["all"]["macro_ptopafc"] == 1 / ours["all"]["n_teacher_classes"]
    assert base["all"]["model_commonest_share"] == 1.0 and set(base["by_domain"]) == {"a", "b", "c"}
    table = compare_table({"PINV": worse, "ours": ours})
    lines = table.splitlines()
    assert lines[0].startswith("| method | clip PtoPa-FC % [95 % CI] |") and len(lines) == 5
    assert lines[2].startswith("| always commonest |") and lines[3].startswith("| PINV |")
    assert f"{100 * ours['all']['clip_ptopafc']:.1f} [" in lines[4]
    assert compare_table({"ours": ours}, baseline=None).count("\n") == 2
    assert "| a |" not in compare_table({"ours": ours}, domain="a")  # rows are methods
    with pytest.raises(InvalidInputError, match="nowhere"):
        compare_table({"ours": ours}, domain="nowhere")
    dt = domain_table(ours, label_names=[f"L{i}" for i in range(20)]).splitlines()
    assert [ln.split(" | ")[0] for ln in dt[2:]] == ["| a", "| b", "| c", "| all"]


# --------------------------------------------------------------- validation
@pytest.mark.parametrize("name", ["model_probs", "clip_ids", "domains", "groups", "teacher_mel", "model_mel"])
def test_mismatched_shapes_name_the_argument(name):
    teacher, model, clip = tiny()
    kw = dict(
        teacher_probs=teacher,
        model_probs=model,
        clip_ids=clip,
        domains=np.zeros(6, int),
        groups=clip,
        teacher_mel=np.zeros((6, 2, 3)),
        model_mel=np.zeros((6, 2, 3)),
    )
    bad = {
        "model_probs": model[:, :5],
        "clip_ids": clip[:5],
        "domains": np.zeros(7, int),
        "groups": clip[:, None],
        "teacher_mel": np.zeros((5, 2, 3)),
        "model_mel": np.zeros((6, 3, 2)),
    }
    with pytest.raises(InvalidInputError, match=name) as e:
        fidelity_report(**{**kw, name: bad[name]})
    assert isinstance(e.value, ValueError)


def test_other_invalid_inputs():
    teacher, model, clip = tiny()
    with pytest.raises(InvalidInputError, match="domains"):
        fidelity_report(teacher, model, clip, np.arange(6))  # a clip spans two domains
    with pytest.raises(InvalidInputError, match="groups"):
        fidelity_report(teacher, model, clip, groups=np.arange(6))
    with pytest.raises(InvalidInputError, match="teacher_probs"):
        fidelity_report(teacher[:0], model[:0], clip[:0])
    with pytest.raises(InvalidInputError, match="model_probs"):
        fidelity_report(teacher, np.where(model > 0.5, np.nan, model), clip)
    with pytest.raises(InvalidInputError, match="together"):
        fidelity_report(teacher, model, clip, teacher_mel=np.zeros((6, 2, 3)))
    with pytest.raises(InvalidInputError, match="domain_names"):
        fidelity_report(teacher, model, clip, np.zeros(6, int), domain_names={1: "y"})


def test_metrics_module_does_not_import_torch():
    code = "import sys, training.metrics, training.metrics_tables; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env()).returncode == 0


def test_evaluate_reexports_the_metrics():
    pytest.importorskip("torch")
    from training import evaluate, metrics

    for name in ("EPS", "file_means", "kl_divergence", "ptopafc", "mel_mse"):
        assert getattr(evaluate, name) is getattr(metrics, name) and name in evaluate.__all__


def test_selection_score_balances_domains():
    """A model that is right on a big easy domain and wrong on a smaller one ranks below one
    that is right on both halves as often, although the overall clip figures favour it."""

    def dom(n, clip):
        return {"n_clips": n, "clip_ptopafc": clip}

    easy_only = {
        "all": {"clip_ptopafc": 0.8, "macro_ptopafc": 0.2},
        "by_domain": {"speech": dom(80, 1.0), "urban": dom(20, 0.0), "field": dom(3, 1.0)},
    }
    balanced = {
        "all": {"clip_ptopafc": 0.7, "macro_ptopafc": 0.2},
        "by_domain": {"speech": dom(80, 0.7), "urban": dom(20, 0.7), "field": dom(3, 0.0)},
    }
    assert selection_score(easy_only) == pytest.approx((0.5 + 0.2) / 2)  # the 3-clip domain is ignored
    assert selection_score(balanced) == pytest.approx((0.7 + 0.2) / 2)
    assert selection_score(balanced) > selection_score(easy_only)
