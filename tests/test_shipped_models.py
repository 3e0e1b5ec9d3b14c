"""The transcoders shipped inside the package (``spectral_transcoder/models_data/``).

They load by registry name from any install, carry their own description (specs, PINV
matrix, licence, training metrics, model card), and on real held-out audio they bring the
teacher's output closer to its output on the ground-truth Mel than the PINV alone does.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import spectral_transcoder as st
from conftest import shared_file
from spectral_transcoder import registry
from spectral_transcoder.models import Classifier, Transcoder
from spectral_transcoder.pinv import split_chunks

#: registry name -> the MelSpec it produces (= its teacher's input)
SHIPPED = {"yamnet": "yamnet", "efficientat-mn04": "efficientat"}


@pytest.fixture
def package_only(tmp_path, monkeypatch):
    """An empty user registry: only the packaged transcoders are visible."""
    monkeypatch.setenv(registry.ENV_HOME, str(tmp_path / "home"))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_transcoder_loads_by_name_and_describes_itself(name, package_only):
    entry = registry.resolve(name, "transcoder")
    assert entry.origin == "package"
    index = json.loads((registry.package_dir() / "index.json").read_text())
    assert entry.sha256 == index["models"]["transcoder"][name]["sha256"] == registry.sha256_file(entry.path)
    assert entry.path.stat().st_size < 2_000_000  # small: the network and the PINV matrix, about 1.5 MB

    tr = Transcoder.load(name)
    md = tr.metadata
    assert md.kind == "transcoder" and md.name == name
    assert tr.input_spec == st.get_band_spec("cense_fast")
    assert tr.output_spec == st.get_mel_spec(SHIPPED[name])
    assert md.license.startswith("MIT")
    assert np.asarray(md.pinv["matrix"]).shape == (tr.output_spec.n_mels, 29)
    test = md.metrics["test"]  # the held-out test split's figures, with the baselines beside the model
    assert "PINV" in test and any(k.startswith("context transcoder") for k in test)
    assert all(0.0 <= r["clip_ptopafc"] <= 1.0 and "commonest_baseline" in r for r in test.values())
    assert md.extra["context_chunks"] == tr.context_chunks == 1
    card = entry.path.with_suffix(".md").read_text()
    assert f"`{name}`" in card and "PtoPa-FC" in card and "$" not in card


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_transcoder_outputs(name, package_only):
    tr = Transcoder.load(name, n_threads=1)
    spec = tr.output_spec
    frames = spec.frames_for_chunk(1.0)
    lv = np.random.default_rng(0).uniform(-90.0, -20.0, (2, 3, 8, 29)).astype(np.float32)
    y = tr.transcode_chunks(lv)
    assert y.shape == (2, 3, frames, spec.n_mels) and y.dtype == np.float32 and np.isfinite(y).all()
    # deterministic, each stream (leading axis) on its own, a chunk alone as at a stream's ends,
    # and more than the PINV
    np.testing.assert_allclose(tr.transcode_chunks(lv[1]), y[1], rtol=0, atol=1e-5)
    alone = tr.transcode_chunks(lv[1, 2])
    np.testing.assert_allclose(alone, tr.transcode_chunks(lv[1, 2:3])[0], rtol=0, atol=1e-5)
    pinv = Transcoder.pinv(spec).transcode_chunks(lv)
    assert np.abs(y - pinv).max() > 1e-2
    # silence at any floor stays finite (no NaN / -inf)
    for floor in (-200.0, -120.0):
        assert np.isfinite(tr.transcode_chunks(np.full((1, 8, 29), floor, np.float32))).all()


@pytest.mark.shared
@pytest.mark.torch
def test_shipped_yamnet_beats_the_pinv_against_its_teacher(yamnet_teacher, package_only):
    """Real held-out audio (the three reference clips are not in the training data):
    the teacher on transcoded Mels is closer (KL) to the teacher on ground-truth Mels
    with the shipped CNN than with the PINV alone."""
    import soundfile as sf

    from training.chunks import file_chunks  # the training set's own chunking, one definition
    from training.evaluate import kl_divergence  # the paper's KL (docs/conventions.md §6)

    clf = Classifier.from_file(yamnet_teacher, n_threads=1)
    tr = Transcoder.load("yamnet", n_threads=1)
    pinv = Transcoder.pinv("yamnet")
    kl_cnn, kl_pinv = [], []
    for clip in ("street_pedestrian-paris-152-4607-a.wav", "birds.wav", "voice_male.wav"):
        audio, sr = sf.read(shared_file("reference", "audio", clip), dtype="float32", always_2d=True)
        c = file_chunks(audio.mean(axis=1), sr, st.get_band_spec("cense_fast"), st.get_mel_spec("yamnet"))
        oracle = clf(c["mel"]).mean(axis=0, keepdims=True)  # one file: (1, C) mean probabilities
        kl_cnn.append(kl_divergence(oracle, clf(tr.transcode_chunks(c["levels"])).mean(axis=0, keepdims=True)))
        kl_pinv.append(kl_divergence(oracle, clf(pinv.transcode_chunks(c["levels"])).mean(axis=0, keepdims=True)))
    print(f"KL per clip: shipped CNN {np.round(kl_cnn, 5)}, PINV {np.round(kl_pinv, 5)}")
    assert np.mean(kl_cnn) < np.mean(kl_pinv)


def _scene_levels(seconds: float = 6.0, sr: int = 32000) -> np.ndarray:
    """1-s chunks (n, 8, 29) dBFS of a synthetic street-like scene: pink-ish noise,
    a 300-Hz hum and a chirp, peak-normalised as the training audio."""
    rng = np.random.default_rng(7)
    t = np.arange(int(seconds * sr)) / sr
    noise = np.cumsum(rng.normal(size=t.size)) * 1e-3
    noise -= np.convolve(noise, np.ones(400) / 400, mode="same")
    x = noise + 0.3 * np.sin(2 * np.pi * 300 * t) + 0.2 * np.sin(2 * np.pi * (500 + 400 * t) * t)
    lv = st.third_octave((x / np.abs(x).max()).astype(np.float32), sr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", st.PartialChunkWarning)  # the frames after the last whole chunk
        return split_chunks(lv, "cense_fast", partial="drop")[0]


def test_every_shipped_file_is_indexed_and_every_quantised_one_names_its_float_model(package_only):
    """The package index lists exactly the files in models_data, with their sha256; a quantised copy
    (``extra.quantization``) must name the sha256 of a float transcoder shipped beside it (a copy of a
    withdrawn model must go with it)."""
    idx = json.loads((registry.package_dir() / "index.json").read_text())
    entries = idx["models"]["transcoder"]
    assert {e["file"] for e in entries.values()} == {p.name for p in registry.package_dir().glob("*.onnx")}
    shas = {e["sha256"] for e in entries.values()}
    for name, e in entries.items():
        assert registry.sha256_file(registry.package_dir() / e["file"]) == e["sha256"], name
        q = Transcoder.load(name, n_threads=1).metadata.extra.get("quantization")
        if q:
            assert any(sha in q["from"] for sha in shas - {e["sha256"]}), f"{name}: its float model is not shipped"


def test_shipped_context_transcoders_use_their_neighbours(package_only):
    """The shipped transcoders see the neighbouring seconds: changing one chunk's levels changes
    its neighbour's Mel and leaves a chunk two seconds away alone."""
    lv = _scene_levels()
    for name in SHIPPED:
        tr = Transcoder.load(name, n_threads=1)
        if not tr.context_chunks:
            continue
        y = tr.transcode_chunks(lv)
        other = lv.copy()
        other[0] += 6.0
        y2 = tr.transcode_chunks(other)
        assert np.isfinite(y).all() and not np.allclose(y2[1], y[1]) and np.array_equal(y2[3], y[3])


@pytest.mark.parametrize(
    "path",
    sorted(registry.package_dir().glob("*.onnx")) + sorted(registry.package_dir().glob("*.md")),
    ids=lambda p: p.name,
)
def test_shipped_files_name_no_machine_paths(path):
    """Shipped model files and cards carried the trainer's folders (issue 15, item 18)."""
    import re as _re

    found = _re.findall(rb"(?:/(?:work|home|root|tmp|Users|mnt)/|site-packages)[^\"\s,)]*", path.read_bytes())
    assert not found, f"{path.name} names machine paths: {sorted(set(found))[:5]}"


def test_scrub_machine_paths_keeps_the_model_and_its_provenance_readable():
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("torch")
    from training.export import scrub_machine_paths

    m = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["x"], ["y"], doc_string="File /home/me/src/net.py, line 3")],
            "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        )
    )
    m.graph.node[0].metadata_props.add(key="pkg.torch.onnx.stack_trace", value="/root/venv/lib/x.py")
    m.metadata_props.add(
        key="st.metrics",
        value='{"run": "/work/runs/full/run-a, best epoch 4", "ratio": "1/3 octave", "top": "/m/09x0r"}',
    )
    scrub_machine_paths(m)
    onnx.checker.check_model(m)
    assert m.graph.node[0].doc_string == "" and len(m.graph.node[0].metadata_props) == 0
    assert m.metadata_props[0].value == '{"run": "run-a, best epoch 4", "ratio": "1/3 octave", "top": "/m/09x0r"}'
