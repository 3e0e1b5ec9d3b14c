"""The data engine: scene synthesis, resumable shard building, held-out set, fidelity CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")
pytest.importorskip("torch")

from spectral_transcoder.pinv import context_windows  # noqa: E402
from training.augment import SCENE_RATE, SceneConfig, SourcePool, synthesize_scene  # noqa: E402

RATE = 16000


def _write(path: Path, seconds: float, seed: int, rate: int = RATE) -> dict:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * (200 + 100 * seed) * t) + 0.05 * rng.standard_normal(t.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x.astype(np.float32), rate)
    return {"path": str(path), "duration_s": seconds}


@pytest.fixture(scope="module")
def pool_records(tmp_path_factory) -> list[dict]:
    root = tmp_path_factory.mktemp("audio")
    recs = []
    for i, (dom, secs) in enumerate([("urban", 4.0), ("urban", 9.0), ("speech", 1.5), ("music", 12.0), ("field", 0.7)]):
        r = _write(root / dom / f"f{i}.wav", secs, i)
        r.update(domain=dom, source=f"src-{dom}", group=f"{dom}:{i}", licence="CC0", sample_rate=RATE, channels=1)
        recs.append(r)
    return recs


def test_scene_is_a_pure_function_of_its_seed(pool_records):
    pool = SourcePool.from_records(pool_records)
    cfg = SceneConfig()
    a, ia = synthesize_scene(pool, cfg, np.random.default_rng(7), extra_samples=96)
    b, ib = synthesize_scene(pool, cfg, np.random.default_rng(7), extra_samples=96)
    assert a.shape == (cfg.total_seconds * SCENE_RATE + 96,) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert ia == ib
    c, _ = synthesize_scene(pool, cfg, np.random.default_rng(8), extra_samples=96)
    assert not np.array_equal(a, c)


def test_scene_level_and_sources_follow_the_config(pool_records):
    pool = SourcePool.from_records(pool_records)
    cfg = SceneConfig(level_db=(-30.0, -30.0), source_probs=(0.0, 0.0, 1.0), p_reverb=1.0, p_bandlimit=1.0)
    x, info = synthesize_scene(pool, cfg, np.random.default_rng(3))
    assert np.isfinite(x).all()
    assert 20 * np.log10(np.max(np.abs(x))) == pytest.approx(-30.0, abs=1e-3)
    assert len(info["sources"]) == 3 and "rt60_s" in info
    assert info["snr_db"][0] == 0.0
    assert {s["domain"] for s in info["sources"]} <= {"urban", "speech", "music", "field"}


def test_pool_draws_only_weighted_domains(pool_records):
    pool = SourcePool.from_records(pool_records)
    rng = np.random.default_rng(0)
    doms = {pool.draw(rng, {"music": 1.0, "nonexistent": 5.0})[0] for _ in range(50)}
    assert doms == {"music"}


def test_context_windows_repeat_the_chunk_at_stream_ends():
    lv = np.arange(3 * 8 * 2, dtype=np.float32).reshape(24, 2)
    w = context_windows(lv.reshape(3, 8, 2), 1)
    assert w.shape == (3, 24, 2)
    np.testing.assert_array_equal(w[1], lv)  # the middle chunk sees both real neighbours
    np.testing.assert_array_equal(w[0, :8], lv[:8])  # no previous chunk: itself
    np.testing.assert_array_equal(w[0, 8:], lv[:16])
    np.testing.assert_array_equal(w[2, 16:], lv[16:])  # no next chunk: itself
    g = context_windows(lv.reshape(3, 8, 2), 1, valid=np.array([True, False, True]))
    np.testing.assert_array_equal(g[0, 16:], lv[:8])  # an invalid neighbour (a gap) is not used
    assert context_windows(np.stack([lv.reshape(3, 8, 2)] * 2), 1).shape == (2, 3, 24, 2)


def _index(tmp_path: Path, pool_records: list[dict], extra: list[dict]) -> Path:
    from training.sources import INDEX_FORMAT

    recs = [{"fold": None, **r} for r in pool_records + extra]
    p = tmp_path / "index.json"
    p.write_text(json.dumps({"format": INDEX_FORMAT, "records": recs}))
    return p


def test_build_resume_and_read(tmp_path, pool_records, shared):
    from training.engine import HeldoutConfig, build_heldout, build_scenes
    from training.engine_store import HeldoutStore, SceneStore

    models = str(shared / "models")
    held = [
        dict(
            _write(tmp_path / "held" / "us.wav", 3.5, 9),
            domain="urban",
            source="us8k",
            group="us8k:1",
            licence="CC-BY-NC-3.0",
            sample_rate=RATE,
            channels=1,
            fold=2,
        )
    ]
    index = str(_index(tmp_path, pool_records, held))
    out = tmp_path / "engine"
    cfg = HeldoutConfig(heldout_fraction=0.0, valid_fraction=0.0)
    kw = dict(teachers=["yamnet"], heldout=cfg, shard_scenes=2, workers=1, models_dir=models, log=lambda m: None)
    assert build_scenes(index, out, n_scenes=2, **kw) == 1
    first = np.load(out / "train" / "shard-00000" / "levels.npy")
    assert build_scenes(index, out, n_scenes=4, **kw) == 2  # extends; shard 0 untouched
    np.testing.assert_array_equal(np.load(out / "train" / "shard-00000" / "levels.npy"), first)
    with pytest.raises(ValueError, match="seed"):
        build_scenes(index, out, n_scenes=4, **dict(kw, seed=1))

    store = SceneStore(out, "yamnet")
    assert store.n_examples == 4 * 4
    ex = store.examples(np.array([0, 5, 15]))
    assert ex["levels"].shape == (3, 24, 29) and ex["mel"].shape == (3, 96, 64) and ex["logits"].shape == (3, 521)
    assert np.isfinite(ex["levels"]).all() and ex["levels"].max() <= 0.0
    # Example 5 (scene 1, second 1) sees seconds 1..3 of its scene (context included).
    np.testing.assert_array_equal(ex["levels"][1], store.levels[0][1, 8:32].astype(np.float32))

    counts = build_heldout(index, out, teachers=["yamnet"], heldout=cfg, models_dir=models, log=lambda m: None)
    assert counts["valid"] + counts["test"] == 3  # the fold-2 file: three 1-s chunks, in one split only
    split = "valid" if counts["valid"] else "test"
    h = HeldoutStore(out, split, "yamnet")
    assert h.levels.shape == (3, 24, 29) and h.centre_levels().shape == (3, 8, 29)
    assert h.domains == ["urban"] and set(h.clip.tolist()) == {0}


def test_fidelity_cli_on_a_tiny_engine(tmp_path, pool_records, shared, capsys):
    from training.engine import HeldoutConfig, build_heldout
    from training.fidelity import evaluate_fidelity, format_report, merge_results

    models = str(shared / "models")
    held = [
        dict(
            _write(tmp_path / "held" / f"h{i}.wav", 2.5, 20 + i),
            domain=d,
            source="x",
            group=f"g{i}",
            licence="CC0",
            sample_rate=RATE,
            channels=1,
        )
        for i, d in enumerate(["urban", "speech", "urban"])
    ]
    index = str(_index(tmp_path, [], held))
    cfg = HeldoutConfig(heldout_fraction=1.0, valid_fraction=0.0)
    build_heldout(index, tmp_path / "e", teachers=["yamnet"], heldout=cfg, models_dir=models, log=lambda m: None)
    res = evaluate_fidelity(tmp_path / "e", "yamnet", ["pinv"], n_boot=50, models_dir=models, log=lambda m: None)
    rep = res["reports"]["PINV"]
    assert rep["all"]["n_clips"] == 3 and rep["all"]["n_chunks"] == 6
    assert set(rep["by_domain"]) == {"urban", "speech"}
    assert rep["all"]["mel_mse"] > 0
    text = format_report(res)
    assert "always commonest" in text and "PINV" in text
    json.dumps(res)
    # Rows evaluated earlier join the table (renamed, first); other held-out sets are refused.
    later = {**res, "reports": {"new": rep}}
    merged = merge_results(later, res, rename={"PINV": "PINV (earlier)"})
    assert list(merged["reports"]) == ["PINV (earlier)", "new"]
    with pytest.raises(ValueError, match="n_chunks"):
        merge_results(later, {**res, "n_chunks": 7})


@pytest.mark.parametrize("out_frames", [96, 100])  # YAMNet: 12 Mel frames per level frame; EfficientAT: 12.5
def test_texture_head_starts_at_zero_and_renders_within_frame_detail(out_frames):
    import torch

    from training.nets.context import ContextTranscoder

    torch.manual_seed(0)
    plain = ContextTranscoder(n_mels=16, out_frames=out_frames, channels=8).eval()
    tex = ContextTranscoder(n_mels=16, out_frames=out_frames, channels=8, texture=True).eval()
    missing, unexpected = tex.load_state_dict(plain.state_dict(), strict=False)
    assert set(missing) == {"texture.weight", "texture.bias"} and not unexpected
    lv, pinv = torch.randn(2, 24, 29) * 10 - 50, torch.randn(2, out_frames, 16)
    with torch.no_grad():
        np.testing.assert_array_equal(tex(pinv, lv).numpy(), plain(pinv, lv).numpy())
        tex.texture.weight.normal_(0, 0.1)
        d = (tex(pinv, lv) - plain(pinv, lv)).numpy()
    assert d.shape == (2, out_frames, 16)
    # Linear interpolation between level frames has a zero second difference along time
    # inside each frame; the texture head does not.
    assert np.abs(np.diff(d, n=2, axis=1)).mean() > 1e-3


def test_context_transcoder_starts_as_the_affine_pinv_and_sees_its_neighbours():
    import torch

    from training.nets.context import ContextTranscoder

    torch.manual_seed(0)
    m = ContextTranscoder(n_mels=64, out_frames=96, context=1, channels=16).eval()
    lv = torch.randn(3, 24, 29) * 10 - 50
    pinv = torch.randn(3, 96, 64)
    with torch.no_grad():
        np.testing.assert_allclose(m(pinv, lv).numpy(), pinv.numpy(), atol=1e-6)  # zero-initialised corrections
        for p in m.head.parameters():
            p.normal_(0, 0.1)
        y0 = m(pinv, lv)
        lv2 = lv.clone()
        lv2[:, :8] += 20.0  # only the previous second changes
        assert not torch.allclose(m(pinv, lv2), y0)  # the trunk's receptive field reaches it
        assert m(pinv, lv).shape == (3, 96, 64)


def test_fit_runs_resumes_and_selects_by_fidelity(tmp_path, pool_records, shared):
    from training.engine import HeldoutConfig, build_heldout, build_scenes
    from training.fidelity import evaluate_fidelity
    from training.loop import FitConfig, fit, load_fit

    models = str(shared / "models")
    held = [
        dict(
            _write(tmp_path / "held" / f"h{i}.wav", 2.5, 30 + i),
            domain="urban",
            source="x",
            group=f"g{i}",
            licence="CC0",
            sample_rate=RATE,
            channels=1,
            fold=None,
        )
        for i in range(2)
    ]
    index = str(_index(tmp_path, pool_records, held))
    out = tmp_path / "engine"
    cfg = HeldoutConfig(heldout_fraction=0.0, valid_fraction=0.0)
    # Scenes come from the pool; the valid split from a second index holding only the two held-out files.
    build_scenes(
        index,
        out,
        n_scenes=4,
        teachers=["yamnet"],
        heldout=cfg,
        shard_scenes=2,
        workers=1,
        models_dir=models,
        log=lambda m: None,
    )
    (tmp_path / "i2").mkdir()
    index2 = str(_index(tmp_path / "i2", [], held))
    build_heldout(
        index2,
        out,
        teachers=["yamnet"],
        heldout=HeldoutConfig(heldout_fraction=1.0, valid_fraction=1.0),
        models_dir=models,
        log=lambda m: None,
    )
    fc = FitConfig(teacher="yamnet", steps=2, eval_every=1, scenes_per_batch=2, channels=8, warmup=1)
    logs: list[str] = []
    r = fit(out, tmp_path / "run", fc, models_dir=models, log=logs.append)
    assert r["step"] == 2 and len(r["history"]) == 2
    assert {"val_clip", "val_macro", "val_commonest_share", "teacher_commonest_share"} <= set(r["history"][0])
    r2 = fit(out, tmp_path / "run", FitConfig(**{**fc.__dict__, "steps": 3}), models_dir=models, log=logs.append)
    assert r2["step"] == 3 and any("resumed at step 2" in m for m in logs)
    # A new run with the texture head starts from this run's best weights: same output at step 0.
    warm = FitConfig(**{**fc.__dict__, "steps": 1, "texture": True, "init_from": str(tmp_path / "run")})
    fit(out, tmp_path / "run-texture", warm, models_dir=models, log=logs.append)
    assert any(f"started from {tmp_path / 'run'}" in m and "texture.weight" in m for m in logs)
    assert load_fit(tmp_path / "run-texture")[0].config["texture"] is True
    with pytest.raises(ValueError, match="lr"):
        fit(out, tmp_path / "run", FitConfig(**{**fc.__dict__, "steps": 4, "lr": 1.0}), models_dir=models)
    _model, ck = load_fit(tmp_path / "run")
    assert ck["report"]["all"]["n_clips"] == 2
    # The direct student trains on the same engine from the stored teacher logits, and is
    # scored beside the transcoder from its own probabilities (no Mel, so no Mel MSE).
    from training.direct import DirectConfig, fit_direct

    d = fit_direct(
        out,
        tmp_path / "direct",
        DirectConfig(teacher="yamnet", steps=2, eval_every=1, batch=4, channels=8, warmup=1),
        log=lambda m: None,
    )
    assert d["step"] == 2 and len(d["history"]) == 2 and (tmp_path / "direct" / "best.pt").is_file()
    res = evaluate_fidelity(
        out,
        "yamnet",
        [f"fit:{tmp_path / 'run'}", f"direct:{tmp_path / 'direct'}"],
        split="valid",
        n_boot=10,
        models_dir=models,
        log=lambda m: None,
    )
    (fit_rep, direct_rep) = res["reports"].values()
    assert fit_rep["all"]["mel_mse"] is not None and direct_rep["all"]["mel_mse"] is None
    assert direct_rep["all"]["n_clips"] == 2


@pytest.mark.parametrize("texture", [False, True])
def test_exported_context_transcoder_runs_in_the_package_as_in_torch(tmp_path, texture):
    import torch

    import spectral_transcoder as st
    from spectral_transcoder.errors import InvalidInputError
    from training.export_fit import export_fit
    from training.loop import load_fit, predict
    from training.nets.context import ContextTranscoder

    torch.manual_seed(1)
    model = ContextTranscoder(n_mels=64, out_frames=96, context=1, channels=8, texture=texture)
    with torch.no_grad():
        extra = [*model.texture.parameters()] if texture else []
        for p in [*model.head.parameters(), *model.refine[2].parameters(), *extra]:
            p.normal_(0, 0.05)
    run = tmp_path / "run"
    run.mkdir()
    meta = {
        "config": {"steps": 1, "kd_temperature": 2.0},
        "mel_spec": "yamnet",
        "band_spec": "cense_fast",
        "teacher": {
            "name": "yamnet",
            "kind": "yamnet-tflite",
            "source": "t.tflite",
            "sha256": "0" * 64,
            "n_classes": 521,
        },
    }
    torch.save(
        {
            "model": model.state_dict(),
            "model_config": model.config,
            "step": 1,
            "report": {"all": {"clip_ptopafc": 0.5}},
            "meta": meta,
        },
        run / "best.pt",
    )
    out = tmp_path / "ctx.onnx"
    export_fit(run, out, name="ctx-test")
    card = out.with_suffix(".md").read_text()
    assert "ctx-test" in card and str(tmp_path) not in card

    tr = st.Transcoder.from_file(out, n_threads=1)
    assert tr.context_chunks == 1
    rng = np.random.default_rng(0)
    chunks = (rng.standard_normal((5, 8, 29)) * 8 - 45).astype(np.float32)
    got = tr.transcode_chunks(chunks)
    want = predict(load_fit(run)[0], context_windows(chunks, 1), "yamnet")
    np.testing.assert_allclose(got, want, atol=1e-4)
    # Each chunk depends on its neighbours: changing chunk 0 changes chunk 1's Mel, not chunk 3's.
    other = chunks.copy()
    other[0] += 12.0
    g2 = tr.transcode_chunks(other)
    assert not np.allclose(g2[1], got[1]) and np.array_equal(g2[3], got[3])
    with pytest.raises(InvalidInputError, match="context_levels"):
        tr.run_cnn(tr.pinv_chunks(chunks))


def test_class_weights_favour_rare_teacher_answers():
    from types import SimpleNamespace

    from training.loop import class_weights

    logits = np.full((1, 4, 3), -5.0, np.float16)
    logits[0, :3, 0] = 5.0  # three examples answer class 0
    logits[0, 3, 2] = 5.0  # one answers class 2
    store = SimpleNamespace(logits=[logits])
    assert class_weights(store, 0.0) is None
    w = class_weights(store, 1.0)
    top = np.array([0, 0, 0, 2])
    assert np.mean(w[top]) == pytest.approx(1.0)
    assert w[2] == pytest.approx(3 * w[0]) and w[1] == 0.0  # inverse frequency; an unseen class gets none
