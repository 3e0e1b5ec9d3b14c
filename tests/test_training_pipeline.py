"""training.dataset / train / cards / evaluate / downstream: the teacher-student pipeline.

Fast: tiny synthetic audio folders written in tmp dirs, a tiny frozen teacher (conv + BN +
linear, time-major yamnet Mels) and tiny CNNs. One test uses the real YAMNet teacher and
two UrbanSound8K clips from ../shared (skipped when absent).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sf = pytest.importorskip("soundfile")

from conftest import shared_file  # noqa: E402
from spectral_transcoder import frontends  # noqa: E402
from spectral_transcoder.analysis import third_octave  # noqa: E402
from spectral_transcoder.errors import InvalidInputError, ModelError, SpecMismatchError  # noqa: E402
from spectral_transcoder.pinv import pinv_chunks, pinv_matrix  # noqa: E402
from spectral_transcoder.specs import get_band_spec, get_mel_spec  # noqa: E402
from training.cache import SPLITS, ChunkStore, read_manifest  # noqa: E402
from training.cards import data_licences, export_run, ship  # noqa: E402
from training.chunks import file_chunks  # noqa: E402
from training.dataset import build_dataset  # noqa: E402
from training.dataset_split import BuildConfig, assign_split  # noqa: E402
from training.downstream import FCHead, cross_validate, us8k_fold, us8k_label  # noqa: E402
from training.evaluate import (  # noqa: E402
    Method,
    cached_reference,
    evaluate_methods,
    file_means,
    kl_divergence,
    mel_mse,
    pinv_method,
    ptopafc,
    run_method,
)
from training.nets import ClassifierOutput  # noqa: E402
from training.teachers import Teacher, load_teacher  # noqa: E402
from training.train import TrainConfig, load_run, train  # noqa: E402

pytestmark = pytest.mark.torch

N_CLASSES = 7
SR = 22050
TINY = dict(n_layers=3, channels=4)


# ---------------------------------------------------------------------- fixtures
class TinyClassifier(torch.nn.Module):
    """(B, T, M) -> ClassifierOutput; BatchNorm so that eval mode is observable."""

    def __init__(self, n_classes: int = N_CLASSES) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, n_classes)
        with torch.no_grad():
            self.fc.weight.mul_(10.0)  # confident, input-dependent probabilities
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward_with_maps(self, mel):
        h = self.conv(mel.unsqueeze(1))
        x = torch.relu(self.bn(h))
        emb = x.mean(dim=(2, 3))
        logits = self.fc(emb)
        return ClassifierOutput(torch.sigmoid(logits), logits, emb), [h, x]

    def forward(self, mel):
        return self.forward_with_maps(mel)[0]


def tiny_teacher(seed: int = 0) -> Teacher:
    torch.manual_seed(seed)
    module = TinyClassifier()
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.numpy().tobytes())
    return Teacher(
        name="tiny",
        module=module,
        mel_spec=get_mel_spec("yamnet"),
        source="tiny",
        sha256=h.hexdigest(),
        n_classes=N_CLASSES,
    )


def _tone(seconds: float, freq: float, sr: int = SR, seed: int = 0, noise: float = 0.05) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    return (
        0.3 * np.sin(2 * np.pi * freq * t) * (1 + 0.5 * np.sin(2 * np.pi * 1.5 * t))
        + noise * rng.standard_normal(t.size)
    ).astype(np.float32)


def write_audio_tree(root: Path) -> list[Path]:
    """fold1 (train), fold2 (held out), field (hash split) + silence, too short, corrupt."""
    dirs = [root / "fold1", root / "fold2", root / "field"]
    for d in dirs:
        d.mkdir(parents=True)
    for i in range(6):
        sf.write(root / "fold1" / f"100{i}-{i % 3}-0-{i}.wav", _tone(2.5, 200 + 300 * i, seed=i), SR, subtype="PCM_16")
    for i in range(4):
        sf.write(
            root / "fold2" / f"200{i}-{i % 3}-0-{i}.wav", _tone(2.0, 350 + 400 * i, seed=10 + i), SR, subtype="PCM_16"
        )
    for i in range(4):  # stereo at another rate: mixed to mono, resampled
        x = _tone(3.0, 1000 + 500 * i, sr=44100, seed=20 + i)
        sf.write(root / "field" / f"rec-{i}.flac", np.stack([x, 0.5 * x], axis=1), 44100)
    sf.write(root / "fold1" / "silence.wav", np.zeros(2 * SR, np.float32), SR, subtype="PCM_16")
    sf.write(root / "fold1" / "short.wav", _tone(0.5, 440), SR, subtype="PCM_16")
    (root / "fold1" / "bad.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage, not audio" * 3)
    return dirs


CONFIG = BuildConfig(teacher="tiny", crops_per_chunk=1, gain_db=(-6.0, 0.0), seed=3)


@pytest.fixture(scope="module")
def audio_dirs(tmp_path_factory) -> list[Path]:
    return write_audio_tree(tmp_path_factory.mktemp("audio"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory, audio_dirs) -> Path:
    out = tmp_path_factory.mktemp("cache") / "c"
    build_dataset(audio_dirs, out, teacher=tiny_teacher(), config=CONFIG, shard_size=8, progress=False)
    return out


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def _all_arrays(cache_dir: Path) -> dict[str, np.ndarray]:
    store = ChunkStore(cache_dir)
    rows = np.arange(store.n_rows)
    d = store.get(rows, ("levels", "mel", "probs", "file_id", "offset", "crop", "gain_db", "split"))
    keys = np.array([store.files_by_id[int(i)] for i in d["file_id"]])
    order = np.lexsort((d["offset"], d["crop"], keys))
    return {**{k: v[order] for k, v in d.items() if k != "file_id"}, "key": keys[order]}


# ---------------------------------------------------------------------- builder
def test_build_shapes_and_manifest(cache):
    m = read_manifest(cache)
    store = ChunkStore(cache)
    band, mel = get_band_spec("cense_fast"), get_mel_spec("yamnet")
    assert store.band_spec == band and store.mel_spec == mel
    assert m["teacher"]["sha256"] == tiny_teacher().sha256 and m["teacher"]["n_classes"] == N_CLASSES
    # 6 tones + silence in fold1, 4 in fold2, 4 in field; short and bad are skipped
    assert len(m["files"]) == 15
    d = store.get(np.arange(store.n_rows), ("levels", "mel", "probs", "split", "crop"))
    n = store.n_rows
    assert d["levels"].shape == (n, 8, 29) and d["levels"].dtype == np.float32
    assert d["mel"].shape == (n, 96, 64) and d["mel"].dtype == np.float32
    assert d["probs"].shape == (n, N_CLASSES) and ((d["probs"] >= 0) & (d["probs"] <= 1)).all()
    assert sum(s["rows"] for s in m["shards"]) == n
    assert all((cache / "shards" / s["name"] / "levels.npy").is_file() for s in m["shards"])
    # regular chunks per file = floor(duration); train files get as many crops
    for key, e in m["files"].items():
        dur = e["duration_s"]
        assert e["n_chunks"] == int(dur), key
        assert e["n_crops"] == (e["n_chunks"] if e["split"] == "train" else 0), key
    counts = m["counts"]["chunks"]
    assert sum(counts.values()) == n
    assert counts == {s: int(np.sum(d["split"] == i)) for i, s in enumerate(SPLITS)}
    # a shard holds whole files only
    by_file: dict[str, set] = {}
    for s in m["shards"]:
        ids = np.load(cache / "shards" / s["name"] / "file_id.npy")
        for i in np.unique(ids):
            by_file.setdefault(store.files_by_id[int(i)], set()).add(s["name"])
    assert all(len(v) == 1 for v in by_file.values())


def test_cached_arrays_are_the_package_functions(cache, audio_dirs):
    """Levels, Mels and probabilities of a regular chunk equal a direct computation."""
    store = ChunkStore(cache)
    key = "fold2/2001-1-0-1.wav"
    fid = store.manifest["files"][key]["id"]
    rows = store.rows("eval", regular_only=True).tolist() + store.rows("valid", regular_only=True).tolist()
    d = store.get(np.array(rows), ("levels", "mel", "probs", "file_id", "offset"))
    sel = np.flatnonzero(d["file_id"] == fid)
    sel = sel[np.argsort(d["offset"][sel])]
    x, sr = sf.read(audio_dirs[1] / "2001-1-0-1.wav", dtype="float32")
    x = x / np.abs(x).max()
    from spectral_transcoder._validation import resample

    x32, x16 = resample(x, sr, 32000), resample(x, sr, 16000)
    chunk32 = np.stack([x32[i * 32000 : (i + 1) * 32000] for i in range(2)])
    chunk16 = np.stack([x16[i * 16000 : (i + 1) * 16000] for i in range(2)])
    np.testing.assert_array_equal(d["levels"][sel], third_octave(chunk32, 32000, "cense_fast"))
    want_mel = frontends.mel(chunk16, 16000, "yamnet")[:, :96]
    np.testing.assert_array_equal(d["mel"][sel], want_mel)
    with torch.no_grad():
        want = tiny_teacher().module(torch.from_numpy(want_mel)).probs.numpy()
    np.testing.assert_allclose(d["probs"][sel], want, atol=1e-6)


def test_silence_gives_finite_floors(cache):
    store = ChunkStore(cache)
    fid = store.manifest["files"]["fold1/silence.wav"]["id"]
    d = store.get(store.rows("train"), ("levels", "mel", "probs", "file_id"))
    sel = d["file_id"] == fid
    assert sel.sum() == 4  # 2 chunks + 2 crops
    band, mel = store.band_spec, store.mel_spec
    for k in ("levels", "mel", "probs"):
        assert np.isfinite(d[k][sel]).all()
    np.testing.assert_allclose(d["levels"][sel], 20 * np.log10(band.level_floor), atol=1e-3)
    np.testing.assert_allclose(d["mel"][sel], np.log(mel.log_floor), atol=1e-6)


def test_corrupt_and_short_files_are_reported_and_skipped(cache):
    m = read_manifest(cache)
    assert set(m["skipped"]) == {"fold1/bad.wav", "fold1/short.wav"}
    assert "unreadable audio" in m["skipped"]["fold1/bad.wav"]["reason"]
    assert "shorter than one 1-s chunk" in m["skipped"]["fold1/short.wav"]["reason"]
    assert not set(m["skipped"]) & set(m["files"])


def test_resume_adds_nothing(cache, audio_dirs, tmp_path):
    c = _copy(cache, tmp_path)
    before = _all_arrays(c)
    shards = sorted(p.name for p in (c / "shards").iterdir())
    report = build_dataset(audio_dirs, c, teacher=tiny_teacher(), config=CONFIG, shard_size=8, progress=False)
    assert report.added == [] and report.new_shards == [] and report.already_done == 15
    assert set(report.skipped) == {"fold1/bad.wav", "fold1/short.wav"}  # reported again, still skipped
    assert sorted(p.name for p in (c / "shards").iterdir()) == shards
    after = _all_arrays(c)
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


def test_killed_build_rebuilds_the_partial_shard(cache, audio_dirs, tmp_path):
    c = _copy(cache, tmp_path)
    full = _all_arrays(c)
    m = read_manifest(c)
    last = m["shards"].pop()
    lost = [k for k, e in m["files"].items() if e["shard"] == last["name"]]
    for k in lost:
        del m["files"][k]
    (c / "manifest.json").write_text(json.dumps(m))  # the shard dir exists but is unrecorded
    (c / "shards" / ".tmp-shard-00099-1").mkdir()  # and a half-written one
    (c / "shards" / ".tmp-shard-00099-1" / "levels.npy").write_bytes(b"partial")
    report = build_dataset(audio_dirs, c, teacher=tiny_teacher(), config=CONFIG, shard_size=8, progress=False)
    assert sorted(report.removed_partial) == sorted([last["name"], ".tmp-shard-00099-1"])
    assert sorted(report.added) == sorted(lost)
    rebuilt = _all_arrays(c)
    for k in full:  # seeded per file: the same crops, gains and values
        np.testing.assert_array_equal(full[k], rebuilt[k])


def test_resume_with_other_settings_is_refused(cache, audio_dirs, tmp_path):
    c = _copy(cache, tmp_path)
    with pytest.raises(SpecMismatchError, match="crops_per_chunk"):
        build_dataset(
            audio_dirs,
            c,
            teacher=tiny_teacher(),
            config=BuildConfig(teacher="tiny", crops_per_chunk=2, gain_db=(-6.0, 0.0), seed=3),
            progress=False,
        )
    with pytest.raises(SpecMismatchError, match="teacher_sha256"):
        build_dataset(audio_dirs, c, teacher=tiny_teacher(seed=1), config=CONFIG, progress=False)


def test_split_never_leaks(cache):
    store = ChunkStore(cache)
    m = store.manifest
    for key, e in m["files"].items():
        if key.startswith("fold2/"):
            assert e["split"] in ("valid", "eval"), key
    train_ids = set(np.unique(store.get(store.rows("train"), ("file_id",))["file_id"]).tolist())
    held = {e["id"] for e in m["files"].values() if e["split"] != "train"}
    assert train_ids and held and not train_ids & held
    for s in ("valid", "eval"):  # no augmentation on held-out files
        d = store.get(store.rows(s), ("crop", "gain_db"))
        assert not d["crop"].any() and not d["gain_db"].any()
    assert store.rows("valid").size and store.rows("eval").size
    # the split of a file depends on its key only (not the seed or the other files)
    for key in m["files"]:
        d = key.split("/")[0]
        assert assign_split(key, d, BuildConfig(teacher="x", seed=99)) == m["files"][key]["split"]


def test_file_chunks_crops_align_both_rates():
    """A crop covers the same samples at both rates: with gain 0 and the same offset a crop equals a regular chunk."""
    band, mel = get_band_spec("cense_fast"), get_mel_spec("yamnet")
    x = _tone(3.0, 700, sr=16000)
    ch = file_chunks(x, 16000, band, mel, crops_per_chunk=20, rng=np.random.default_rng(0))
    assert ch["levels"].shape == (3 + 60, 8, 29) and ch["mel"].shape == (63, 96, 64)
    assert (ch["offset"][ch["crop"]] <= 2.0).all()
    whole = np.flatnonzero(ch["crop"] & (ch["offset"] == np.round(ch["offset"])))
    ref = file_chunks(x, 16000, band, mel)
    for i in whole:
        j = int(ch["offset"][i])
        np.testing.assert_array_equal(ch["levels"][i], ref["levels"][j])
        np.testing.assert_array_equal(ch["mel"][i], ref["mel"][j])


# ---------------------------------------------------------------------- trainer
def _snapshot(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _excess_bce(model, store: ChunkStore, teacher: Teacher, rows: np.ndarray) -> float:
    """BCE against the teacher minus its floor (the teacher's own entropy): a mean Bernoulli KL >= 0."""
    import torch.nn.functional as F

    d = store.get(rows, ("levels", "probs"))
    q = torch.from_numpy(d["probs"]).double()
    x = torch.from_numpy(pinv_chunks(d["levels"], store.mel_spec, band_spec=store.band_spec))
    with torch.no_grad():
        logits = teacher.module(model(x)).logits.double()
    floor = F.binary_cross_entropy(q, q)
    return float(F.binary_cross_entropy_with_logits(logits, q) - floor)


def test_training_decreases_loss_and_keeps_the_teacher_frozen(cache, tmp_path):
    from training.nets import CNNTranscoder

    teacher = tiny_teacher()
    before = _snapshot(teacher.module)
    res = train(
        cache,
        tmp_path / "run",
        TrainConfig(epochs=6, lr=1e-2, batch_size=16, **TINY),
        teacher=teacher,
        progress=False,
        log=None,
    )
    losses = [h["train_loss"] for h in res.history[1:]]
    assert losses[-1] < losses[0]
    store = ChunkStore(cache)
    rows = store.rows("train")
    torch.manual_seed(0)
    initial = _excess_bce(CNNTranscoder(**TINY), store, teacher, rows)
    final = _excess_bce(load_run(tmp_path / "run", which="last")[0], store, teacher, rows)
    assert final < 0.5 * initial, (initial, final)
    for k, v in teacher.module.state_dict().items():  # weights and BN statistics unchanged
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None and not p.requires_grad for p in teacher.module.parameters())
    assert not teacher.module.training
    lines = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,train_loss,val_loss,val_top1") and len(lines) == 1 + 7
    # the logged top-1 agreement on the validation chunks, recomputed by hand for the last epoch
    model, meta, _ = load_run(tmp_path / "run", which="last")
    vrows = store.rows("valid")
    d = store.get(vrows, ("levels", "probs"))
    x = pinv_chunks(
        d["levels"], store.mel_spec, band_spec=store.band_spec, matrix=np.asarray(meta["pinv_matrix"], np.float64)
    )
    with torch.no_grad():
        pred = teacher.module(model(torch.from_numpy(x))).logits.argmax(-1).numpy()
    assert res.history[-1]["val_top1"] == pytest.approx(float(np.mean(pred == d["probs"].argmax(-1))))
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 7


def test_best_checkpoint_is_the_lowest_validation_loss(cache, tmp_path):
    res = train(
        cache,
        tmp_path / "a",
        TrainConfig(epochs=4, lr=3e-2, batch_size=16, **TINY),
        teacher=tiny_teacher(),
        progress=False,
        log=None,
    )
    vals = [h["val_loss"] for h in res.history]
    assert res.best_epoch == int(np.argmin(vals)) and res.best_val_loss == min(vals)
    _model, _, ck = load_run(tmp_path / "a")
    assert ck["epoch"] == res.best_epoch
    # lr 0: the weights never change, the loss never improves, epoch 0 stays the best
    res0 = train(cache, tmp_path / "b", TrainConfig(mode="mels", epochs=2, lr=0.0, **TINY), progress=False, log=None)
    assert res0.best_epoch == 0
    m0, _, _ = load_run(tmp_path / "b")
    torch.manual_seed(0)
    from training.nets import CNNTranscoder

    init = CNNTranscoder(**TINY)
    for k, v in init.state_dict().items():
        assert torch.equal(v, m0.state_dict()[k])


@pytest.mark.parametrize("mode", ["logits", "mels", "distill", "hybrid"])
def test_resume_matches_an_uninterrupted_run(cache, tmp_path, mode):
    cfg = dict(batch_size=16, **TINY)
    full = train(
        cache,
        tmp_path / "full",
        TrainConfig(mode=mode, epochs=3, **cfg),
        teacher=tiny_teacher(),
        progress=False,
        log=None,
    )
    train(
        cache,
        tmp_path / "cut",
        TrainConfig(mode=mode, epochs=1, **cfg),
        teacher=tiny_teacher(),
        progress=False,
        log=None,
    )
    resumed = train(
        cache,
        tmp_path / "cut",
        TrainConfig(mode=mode, epochs=3, **cfg),
        teacher=tiny_teacher(),
        progress=False,
        log=None,
    )
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2, 3]
    for a, b in zip(full.history, resumed.history):
        assert a["train_loss"] == b["train_loss"] and a["val_loss"] == b["val_loss"]
    for which in ("last", "best"):
        ma, _, _ = load_run(tmp_path / "full", which=which)
        mb, _, _ = load_run(tmp_path / "cut", which=which)
        for k, v in ma.state_dict().items():
            assert torch.equal(v, mb.state_dict()[k]), (which, k)
    with pytest.raises(SpecMismatchError, match="channels"):
        train(
            cache,
            tmp_path / "cut",
            TrainConfig(mode=mode, epochs=4, batch_size=16, n_layers=3, channels=8),
            teacher=tiny_teacher(),
            progress=False,
            log=None,
        )


def test_teacher_losses_by_hand():
    from training.losses import loss_fn

    teacher = tiny_teacher()
    mel = torch.randn(5, 96, 64, generator=torch.Generator().manual_seed(1))
    target = torch.rand(5, N_CLASSES, generator=torch.Generator().manual_seed(2))
    mel_t = torch.randn(5, 96, 64, generator=torch.Generator().manual_seed(3))
    t = {"probs": target, "mel": mel_t}

    def value(**cfg):
        got, logits = loss_fn(TrainConfig(**cfg), teacher)(mel, t)
        assert torch.equal(logits, teacher.module(mel).logits)  # what validation scores top-1 agreement on
        return float(got)

    w, temp = 0.3, 2.0
    got = value(mode="distill", kd_weight=w, kd_temperature=temp)
    bce = value(mode="logits")
    # by hand, in float64: KL(softmax(t / T) || softmax(s / T)) per row, mean over rows, times T^2
    out = teacher.module(mel)
    s = out.logits.detach().double().numpy()
    q = np.clip(target.double().numpy(), 1e-6, 1 - 1e-6)
    tl = np.log(q / (1 - q))

    def log_softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    lt, ls = log_softmax(tl / temp), log_softmax(s / temp)
    kl = float(np.mean(np.sum(np.exp(lt) * (lt - ls), axis=1))) * temp**2
    assert kl > 0 and got == pytest.approx(bce + w * kl, rel=1e-5)
    assert value(mode="distill", kd_weight=0.0) == pytest.approx(bce)
    # hybrid (the paper's): (1 - p/100) MSE(Mel) + k (p/100) BCE
    mse = float(torch.mean((mel - mel_t) ** 2))
    assert value(mode="hybrid", prop_logit=40.0, hybrid_k=10.0) == pytest.approx(0.6 * mse + 4.0 * bce, rel=1e-5)
    # logit matching: mean squared difference to the teacher's logits
    assert value(mode="logit_mse") == pytest.approx(float(np.mean((s - tl) ** 2)), rel=1e-5)
    # feature matching: MSE to the teacher's embedding of the ground-truth Mel, plus BCE
    e_t = teacher.module(mel_t).embedding.detach().double().numpy()
    e_s = out.embedding.detach().double().numpy()
    assert value(mode="embed_mse") == pytest.approx(float(np.mean((e_s - e_t) ** 2)) + bce, rel=1e-5)
    # texture matching: per layer, per-channel mean and std of the maps vs the ground truth's,
    # each MSE over the mean square of the reference, averaged over the 2 layers x 2 statistics
    _, maps_s = teacher.module.forward_with_maps(mel)
    _, maps_t = teacher.module.forward_with_maps(mel_t)
    terms = []
    for a, b in zip(maps_s, maps_t):
        a, b = a.detach().double().numpy(), b.detach().double().numpy()
        for st in (lambda z: z.mean(axis=(2, 3)), lambda z: z.reshape(*z.shape[:2], -1).std(axis=-1, ddof=1)):
            terms.append(np.mean((st(a) - st(b)) ** 2) / (np.mean(st(b) ** 2) + 1e-6))
    assert value(mode="feature_stats") == pytest.approx(float(np.mean(terms)) + bce, rel=1e-5)
    # CNN-mels has no classifier: no logits to score
    got, logits = loss_fn(TrainConfig(mode="mels"), None)(mel, t)
    assert logits is None and float(got) == pytest.approx(mse, rel=1e-6)


def test_a_run_can_start_from_another_runs_best_weights(cache, tmp_path):
    teacher = tiny_teacher()
    train(
        cache,
        tmp_path / "a",
        TrainConfig(epochs=2, lr=1e-2, batch_size=16, **TINY),
        teacher=teacher,
        progress=False,
        log=None,
    )
    cfg = TrainConfig(mode="feature_stats", epochs=0, batch_size=16, init_from=str(tmp_path / "a"), **TINY)
    res = train(cache, tmp_path / "b", cfg, teacher=teacher, progress=False, log=None)
    a, _, ck_a = load_run(tmp_path / "a")
    b, meta, _ = load_run(tmp_path / "b")
    for k, v in a.state_dict().items():  # epoch 0 of b is a's best
        assert torch.equal(v, b.state_dict()[k]), k
    assert meta["init_from"]["epoch"] == ck_a["epoch"] and meta["init_from"]["mode"] == "logits"
    assert res.history[0]["val_loss"] > 0
    md = export_run(tmp_path / "b", tmp_path / "b.onnx", name="tiny-continued")
    assert md.extra["training"]["init_from"] == meta["init_from"]
    card = (tmp_path / "b.md").read_text()
    assert f"**Start:** the best weights (epoch {ck_a['epoch']}) of the logits run a " in card
    other = TrainConfig(epochs=0, init_from=str(tmp_path / "a"), **{**TINY, "channels": TINY["channels"] + 1})
    with pytest.raises(SpecMismatchError, match="architecture"):
        train(cache, tmp_path / "c", other, teacher=teacher, progress=False, log=None)
    with pytest.raises(InvalidInputError, match="not a training run"):
        train(
            cache,
            tmp_path / "d",
            dataclasses.replace(cfg, init_from=str(tmp_path / "nothing")),
            teacher=teacher,
            progress=False,
            log=None,
        )


def test_texture_matching_needs_feature_maps():
    from training.losses import loss_fn
    from training.nets import Cnn14

    t = dataclasses.replace(tiny_teacher(), module=Cnn14())
    with pytest.raises(InvalidInputError, match="feature maps"):
        loss_fn(TrainConfig(mode="feature_stats"), t)


def test_trainer_rejects_another_teacher(cache, tmp_path):
    with pytest.raises(SpecMismatchError, match="teacher"):
        train(
            cache, tmp_path / "r", TrainConfig(epochs=1, **TINY), teacher=tiny_teacher(seed=5), progress=False, log=None
        )


# ---------------------------------------------------------------------- export
def test_export_loads_in_the_inference_package_and_matches_torch(cache, tmp_path):
    from spectral_transcoder.models import Transcoder

    run = tmp_path / "run"
    train(
        cache,
        run,
        TrainConfig(epochs=1, lr=1e-2, batch_size=16, **TINY),
        teacher=tiny_teacher(),
        progress=False,
        log=None,
    )
    out = tmp_path / "model.onnx"
    md = export_run(run, out, name="tiny-transcoder", notes="Smoke run: **one** epoch.")
    assert out.is_file() and out.with_suffix(".md").is_file()
    t = Transcoder.from_file(out)
    meta = t.metadata
    assert meta.kind == "transcoder" and meta.name == "tiny-transcoder"
    assert t.input_spec == get_band_spec("cense_fast") and t.output_spec == get_mel_spec("yamnet")
    assert meta.license.startswith("MIT") and "CC BY-NC 3.0" in meta.license
    assert "teacher tiny" in meta.training_data and meta.metrics["best_epoch"] == md.metrics["best_epoch"]
    run_meta = json.loads((run / "run.json").read_text())
    np.testing.assert_allclose(np.asarray(meta.pinv["matrix"]), np.asarray(run_meta["pinv_matrix"]))
    np.testing.assert_allclose(
        np.asarray(meta.pinv["matrix"]), pinv_matrix(get_band_spec("cense_fast"), get_mel_spec("yamnet"))
    )
    store = ChunkStore(cache)
    levels = store.get(store.rows("eval"), ("levels",))["levels"]
    got = t.transcode_chunks(levels)
    model, _, _ = load_run(run)
    with torch.no_grad():
        want = model(torch.from_numpy(pinv_chunks(levels, "yamnet", band_spec="cense_fast"))).numpy()
    assert np.max(np.abs(got - want)) <= 1e-4
    card = out.with_suffix(".md").read_text()
    assert "tiny-transcoder" in card and "$" not in card
    assert "## Status\nSmoke run: **one** epoch.\n" in card

    # ship: into a models_data folder, under the metadata name, with the card and the sha256 the registry checks
    from spectral_transcoder import registry

    dest = tmp_path / "models_data"
    rec = ship(out, dest=dest)
    assert (dest / "tiny-transcoder.onnx").read_bytes() == out.read_bytes()
    assert (dest / "tiny-transcoder.md").read_text() == card
    index = json.loads((dest / "index.json").read_text())
    assert index["models"]["transcoder"]["tiny-transcoder"]["sha256"] == rec["sha256"] == registry.sha256_file(out)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(registry, "package_dir", lambda: dest)
        mp.setenv(registry.ENV_HOME, str(tmp_path / "empty-home"))
        loaded = Transcoder.load("tiny-transcoder")
        assert loaded.metadata.name == "tiny-transcoder"
        np.testing.assert_array_equal(loaded.transcode_chunks(levels), got)
        (dest / "tiny-transcoder.onnx").write_bytes(out.read_bytes()[:-1] + b"x")  # damaged after shipping
        with pytest.raises(ModelError, match="checksum"):
            Transcoder.load("tiny-transcoder")
    with pytest.raises(InvalidInputError, match="model card"):
        out.with_suffix(".md").unlink()
        ship(out, dest=dest)


def test_calibrated_cnn_fits_on_train_and_exports(cache, tmp_path):
    from spectral_transcoder.models import Transcoder
    from training.losses import fit_calibration

    store = ChunkStore(cache)
    run = tmp_path / "cal"
    train(
        cache,
        run,
        TrainConfig(epochs=1, lr=0.0, batch_size=16, calibrate=True, **TINY),
        teacher=tiny_teacher(),
        progress=False,
        log=None,
    )
    meta = json.loads((run / "run.json").read_text())
    cal = meta["calibration"]
    assert len(cal["scale"]) == len(cal["bias"]) == 64 and np.isfinite(cal["scale"] + cal["bias"]).all()
    assert cal == fit_calibration(store, np.asarray(meta["pinv_matrix"]))  # deterministic, train split only
    # the fit is least squares: on the training chunks it beats the identity map, bin by bin
    d = store.get(store.rows("train"), ("levels", "mel"))
    x = pinv_chunks(d["levels"], "yamnet", band_spec="cense_fast").astype(np.float64)
    fitted = np.asarray(cal["scale"]) * x + np.asarray(cal["bias"])
    assert (((fitted - d["mel"]) ** 2).mean(axis=(0, 1)) <= ((x - d["mel"]) ** 2).mean(axis=(0, 1)) + 1e-9).all()
    model, _, _ = load_run(run)
    np.testing.assert_allclose(model.in_scale.numpy(), cal["scale"], rtol=1e-6)
    out = tmp_path / "cal.onnx"
    export_run(run, out, name="tiny-calibrated")
    levels = store.get(store.rows("eval"), ("levels",))["levels"]
    with torch.no_grad():
        want = model(torch.from_numpy(pinv_chunks(levels, "yamnet", band_spec="cense_fast"))).numpy()
    assert np.max(np.abs(Transcoder.from_file(out).transcode_chunks(levels) - want)) <= 1e-4


def test_data_licences_from_keys():
    m = {
        "files": {
            "fold1/1-2-3-4.wav": {},
            "field-recordings/park-london-96-2684-a.flac": {},
            "field-recordings/car.flac": {},
        }
    }
    text = data_licences(m)
    assert any("CC BY-NC 3.0" in t for t in text) and any("research use only" in t for t in text)
    assert any("field-recordings" in t and "not recorded" in t for t in text)


# ---------------------------------------------------------------------- metrics
def test_kl_hand_computed_and_torch_definition():
    q = np.array([[0.5, 0.5], [0.9, 0.0]])
    p = np.array([[0.25, 0.75], [0.9, 0.1]])
    e = 1e-10
    f0 = ((0.5 + e) * np.log((0.5 + e) / (0.25 + e)) + (0.5 + e) * np.log((0.5 + e) / (0.75 + e))) / 2
    f1 = (0.0 + (0.0 + e) * np.log(e / (0.1 + e))) / 2
    assert kl_divergence(q, p) == pytest.approx((f0 + f1) / 2, rel=1e-12)
    assert kl_divergence(q, q) == 0.0
    # the paper's code: KLDivLoss(batchmean, log_target) on one 1-D vector per file
    rng = np.random.default_rng(0)
    q, p = rng.uniform(0, 1, (3, 521)), rng.uniform(0, 1, (3, 521))
    kl = torch.nn.KLDivLoss(reduction="batchmean", log_target=True)
    ref = np.mean([float(kl(torch.log(torch.tensor(p[i] + e)), torch.log(torch.tensor(q[i] + e)))) for i in range(3)])
    assert kl_divergence(q, p) == pytest.approx(ref, rel=1e-9)


def test_ptopafc_and_file_means():
    probs = np.array([[0.9, 0.1, 0.0], [0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    ids, means = file_means(probs, np.array([5, 5, 7, 9]))
    assert ids.tolist() == [5, 7, 9]
    np.testing.assert_allclose(means[0], [0.8, 0.15, 0.05])
    model = np.array([[0.1, 0.2, 0.0], [0.0, 0.9, 0.0], [0.5, 0.1, 0.4]])
    assert ptopafc(means, model) == pytest.approx(1 / 3)  # file 7 agrees only
    assert ptopafc(means, means) == 1.0


def test_mel_mse_averages_files_not_chunks():
    ref = np.zeros((4, 2, 3))
    est = np.zeros((4, 2, 3))
    est[0] = 2.0  # file 1 (one chunk): MSE 4; file 2 (three chunks, one off by 1): MSE 1/3
    est[1] = 1.0
    assert mel_mse(ref, est, np.array([1, 2, 2, 2])) == pytest.approx((4 + 1 / 3) / 2)


def test_evaluate_methods_oracle_and_pinv(cache):
    store = ChunkStore(cache)
    teacher = tiny_teacher()
    ref = cached_reference(store)
    lookup = {ref.levels[i].tobytes(): ref.mel[i] for i in range(ref.levels.shape[0])}
    oracle = Method("oracle", store.mel_spec, lambda lv: np.stack([lookup[x.tobytes()] for x in lv]))
    res = evaluate_methods(store, [oracle, pinv_method(store.band_spec, store.mel_spec)], teacher)
    o = res["methods"]["oracle"]
    # The teacher runs the oracle's Mels in other batches than the reference's: float32 round-off
    # moves the probabilities by ~1e-7, and the paper's unnormalised KL by ~1e-9 either way.
    assert o["kl"] == pytest.approx(0.0, abs=1e-6) and o["ptopafc"] == 1.0 and o["mel_mse"] == 0.0
    p = res["methods"]["PINV"]
    assert p["n_files"] == len({e["id"] for e in store.manifest["files"].values() if e["split"] == "eval"})
    # the paper's KL is on unnormalised multi-label vectors: it is not bounded below by 0
    assert p["kl"] != 0 and p["mel_mse"] > 0 and np.isfinite([p["kl"], p["mel_mse"]]).all()


def test_run_method_equals_the_trained_model(cache, tmp_path):
    train(cache, tmp_path / "r", TrainConfig(mode="mels", epochs=1, **TINY), progress=False, log=None)
    m = run_method(tmp_path / "r")
    store = ChunkStore(cache)
    lv = store.get(store.rows("eval"), ("levels",))["levels"]
    model, _, _ = load_run(tmp_path / "r")
    with torch.no_grad():
        want = model(torch.from_numpy(pinv_chunks(lv, "yamnet", band_spec="cense_fast"))).numpy()
    np.testing.assert_allclose(m.transcode(lv), want, atol=1e-6)
    assert m.name == "CNN-mels (r)"


# ---------------------------------------------------------------------- downstream
def test_us8k_names():
    assert us8k_label("fold1/101415-3-0-2.flac") == 3 and us8k_fold("fold1/101415-3-0-2.flac") == 1
    assert us8k_label("field-recordings/car.flac") is None and us8k_fold("field-recordings/car.flac") is None


def test_fc_head_is_two_linear_layers_and_cross_validation_learns():
    head = FCHead(521)
    assert [type(m).__name__ for m in head.children()] == ["Linear", "Linear"]
    assert head.fc1.out_features == 100 and head.fc2.out_features == 10
    x = torch.randn(3, 521)
    with torch.no_grad():
        want = torch.sigmoid(
            head.fc2.weight @ (head.fc1.weight @ x.T + head.fc1.bias[:, None]) + head.fc2.bias[:, None]
        ).T
        torch.testing.assert_close(head(x), want)
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1, (10, 16))
    labels = np.repeat(np.arange(10), 30)
    feats = centers[labels] + 0.1 * rng.normal(0, 1, (labels.size, 16))
    folds = np.tile([1, 2], labels.size // 2)
    res = cross_validate(feats, labels, folds, epochs=30)
    assert res["accuracy"] > 0.9 and set(res["per_fold"]) == {1, 2} and res["n_files"] == 300
    with pytest.raises(InvalidInputError, match="2 folds"):
        cross_validate(feats, labels, np.ones_like(folds))


# ---------------------------------------------------------------------- CLI + real teacher
def test_cli_reports_errors(tmp_path, capsys):
    from training.pipeline_cli import main

    assert main(["train", str(tmp_path / "none"), "-o", str(tmp_path / "run"), "--mode", "mels"]) == 1
    assert "not a dataset cache" in capsys.readouterr().err


def test_real_yamnet_teacher_on_two_us8k_clips(tmp_path):
    src = shared_file("data", "urbansound8k-subset", "fold1")
    shared_file("models", "yamnet_int8_perchannel.tflite")
    d = tmp_path / "fold1"
    d.mkdir()
    for name in ("101415-3-0-2.flac", "102305-6-0-0.flac"):
        (d / name).symlink_to(src / name)
    teacher = load_teacher("yamnet", models_dir=src.parents[2] / "models")
    assert teacher.mel_spec.name == "yamnet" and teacher.n_classes == 521 and len(teacher.labels) == 521
    report = build_dataset([d], tmp_path / "c", teacher=teacher, progress=False)
    assert len(report.added) == 2 and not report.skipped
    store = ChunkStore(tmp_path / "c")
    assert store.n_rows == 8 and store.rows("train").size == 8  # 4-s clips, fold1 = train
    data = store.get(np.arange(8), ("mel", "probs"))
    np.testing.assert_allclose(data["probs"], teacher.probs(data["mel"]), atol=1e-6)
    assert np.isfinite(data["probs"]).all() and data["probs"].max() > 0.1


def test_quantize_writes_a_measured_int8_transcoder(cache, tmp_path):
    import onnx

    from spectral_transcoder import registry
    from spectral_transcoder.models import Transcoder
    from training.quantize import quantize_transcoder

    run = tmp_path / "run"
    train(
        cache,
        run,
        TrainConfig(epochs=1, lr=1e-2, batch_size=16, **TINY),
        teacher=tiny_teacher(),
        progress=False,
        log=None,
    )
    src = tmp_path / "float.onnx"
    export_run(run, src, name="tiny-transcoder")
    out = tmp_path / "q" / "int8.onnx"
    from _tiny_models import classifier_metadata, make_classifier

    clf = make_classifier(tmp_path / "clf.onnx", meta=classifier_metadata(mel="yamnet"))
    fid = quantize_transcoder(src, out, cache_dir=cache, calibration_chunks=16, classifier=clf)
    f, q = Transcoder.from_file(src), Transcoder.from_file(out)
    md = q.metadata
    assert md.name == "tiny-transcoder-int8" and q.input_spec == f.input_spec and q.output_spec == f.output_spec
    np.testing.assert_array_equal(np.asarray(md.pinv["matrix"]), np.asarray(f.metadata.pinv["matrix"]))
    assert md.metrics["float_model"] == f.metadata.metrics and md.metrics["int8_vs_float"] == fid
    assert registry.sha256_file(src) in md.extra["quantization"]["from"]
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load(str(out)).graph.node}
    # measured on the eval split, and what the file says is what it does
    store = ChunkStore(cache)
    rows = store.rows("eval", regular_only=True)
    levels = store.get(rows, ("levels",))["levels"]
    yf, yq = f.transcode_chunks(levels), q.transcode_chunks(levels)
    assert fid["eval_chunks"] == len(rows) and fid["calibration_chunks"] == 16
    assert fid["mel_mse"] == pytest.approx(float(np.mean((yq - yf) ** 2, dtype=np.float64)), rel=1e-4)
    assert 0 < fid["mel_mse"] < 0.01 * fid["mel_var"]  # int8, but close
    _, groups = store.file_groups(rows)
    assert fid["files"] == len(groups) and fid["classifier"].startswith("tiny-clf@")
    assert 0.0 <= fid["max_abs_prob_diff"] < 0.05 and fid["top1_agreement"] > 0.5
    card = out.with_suffix(".md").read_text()
    assert "`tiny-transcoder-int8`" in card and "Mel MSE int8 vs float" in card and "best class unchanged" in card
    # refusals: a classifier, and a cache built for another Mel spec
    with pytest.raises(InvalidInputError, match="only transcoders"):
        quantize_transcoder(clf, tmp_path / "x.onnx", cache_dir=cache)
    with pytest.raises(InvalidInputError, match="the cache holds"):
        manifest = json.loads((cache / "manifest.json").read_text())
        other = tmp_path / "other-cache"
        shutil.copytree(cache, other)
        manifest["mel_spec"] = json.loads(get_mel_spec("pann").to_json())
        (other / "manifest.json").write_text(json.dumps(manifest))
        quantize_transcoder(src, tmp_path / "x.onnx", cache_dir=other)
