"""Model registry: locations, import with checksums, resolution, messages. No network."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from _tiny_models import classifier_metadata, make_classifier, make_transcoder, transcoder_metadata
from spectral_transcoder import registry
from spectral_transcoder.errors import InvalidInputError, ModelError
from spectral_transcoder.models import Classifier, Transcoder, classify


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("reg")
    return {
        "clf": make_classifier(
            d / "clf.onnx", meta=classifier_metadata("yamnet-torchport", mel="yamnet_torchport"), frames=96
        ),
        "cnn": make_transcoder(d / "cnn.onnx", meta=transcoder_metadata("yamnet-cnn-logits", mel="yamnet_torchport")),
        "cnn_pann": make_transcoder(d / "cnn_pann.onnx", meta=transcoder_metadata("pann-cnn-logits")),
        "plain": make_transcoder(d / "plain.onnx", with_meta=False),
    }


def test_home_locations(monkeypatch, tmp_path):
    monkeypatch.delenv(registry.ENV_HOME, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert registry.home() == tmp_path / "xdg" / "spectral_transcoder"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert registry.home() == Path.home() / ".cache" / "spectral_transcoder"
    monkeypatch.setenv(registry.ENV_HOME, str(tmp_path / "mine"))
    assert registry.home() == tmp_path / "mine" and registry.index_path() == tmp_path / "mine" / "index.json"


def test_import_resolve_load(home, files):
    e = registry.import_model(files["clf"])
    assert (e.kind, e.name, e.origin) == ("classifier", "yamnet-torchport", "cache")
    assert e.path == home / "classifier" / "yamnet-torchport.onnx" and e.path.read_bytes() == files["clf"].read_bytes()
    idx = json.loads((home / "index.json").read_text())
    rec = idx["models"]["classifier"]["yamnet-torchport"]
    assert rec["sha256"] == registry.sha256_file(files["clf"]) == e.sha256
    assert rec["input_spec"] == "yamnet_torchport" and rec["source"] == str(files["clf"].resolve())
    assert registry.resolve("yamnet-torchport", "classifier") == e
    clf = Classifier.load("yamnet-torchport")
    assert clf.model_id == f"yamnet-torchport@{e.sha256[:12]}"
    # --name overrides the file's own name
    e2 = registry.import_model(files["clf"], name="my-yamnet")
    assert e2.path.name == "my-yamnet.onnx" and Classifier.load("my-yamnet").name == "yamnet-torchport"
    assert {x.name for x in registry.entries("classifier")} == {"yamnet-torchport", "my-yamnet"}


def test_namespaces_are_separate(home, files):
    registry.import_model(files["clf"], name="same")
    registry.import_model(files["cnn"], name="same")
    assert registry.resolve("same", "classifier").path.parent.name == "classifier"
    assert registry.resolve("same", "transcoder").path.parent.name == "transcoder"
    assert Transcoder.load("same").output_spec.name == "yamnet_torchport"
    assert Classifier.load("same").input_spec.name == "yamnet_torchport"


def test_classify_by_names_with_default_transcoder(home, files):
    registry.import_model(files["clf"])
    registry.import_model(files["cnn"])
    levels = np.random.default_rng(0).uniform(-70, -30, (16, 29)).astype(np.float32)
    res = classify(levels, classifier="yamnet-torchport")  # default transcoder: yamnet-cnn-logits
    assert res.transcoder_id.startswith("yamnet-cnn-logits@") and res.probs.shape == (2, 5)
    explicit = classify(levels, classifier="yamnet-torchport", transcoder="yamnet-cnn-logits")
    np.testing.assert_array_equal(res.probs, explicit.probs)


def test_checksum_mismatch_at_load(home, files):
    e = registry.import_model(files["cnn"])
    data = bytearray(e.path.read_bytes())
    data[-1] ^= 0xFF  # flip bits in the last initializer byte: still a valid model, different sha256
    e.path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="fails its checksum.*import it again"):
        Transcoder.load("yamnet-cnn-logits")


def test_missing_model_messages(home):
    with pytest.raises(ModelError) as ei:
        registry.resolve("pann-cnn-logits", "transcoder")
    msg = str(ei.value)
    assert "python -m training convert transcoder" in msg and "ts=1_model" in msg
    assert "spectral-transcoder models import pann-cnn-logits.onnx --name pann-cnn-logits" in msg
    assert str(home) in msg
    with pytest.raises(ModelError, match="yamnet_int8.tflite.*--input-spec yamnet_torchport"):
        Classifier.load("yamnet-torchport")
    with pytest.raises(ModelError, match="Zenodo record 3987831"):
        Classifier.load("pann-resnet38")
    with pytest.raises(ModelError, match="no classifier named 'nonesuch'.*Known names"):
        Classifier.load("nonesuch")
    # the packaged transcoders are not imported but installed with the package
    with pytest.raises(ModelError, match="not installed.*ships inside it .models_data/yamnet.onnx"):
        Transcoder.load("yamnet")


def test_registered_file_deleted(home, files):
    e = registry.import_model(files["cnn"])
    e.path.unlink()
    with pytest.raises(ModelError, match="registered but its file .* is missing"):
        Transcoder.load("yamnet-cnn-logits")


def test_bad_imports_leave_the_index_alone(home, files, tmp_path):
    registry.import_model(files["cnn"])
    before = (home / "index.json").read_text()
    with pytest.raises(ModelError, match="not a spectral_transcoder model file"):
        registry.import_model(files["plain"])
    data = files["cnn"].read_bytes()
    (tmp_path / "t.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelError, match="truncated or corrupt"):
        registry.import_model(tmp_path / "t.onnx")
    with pytest.raises(ModelError, match="does not exist"):
        registry.import_model(tmp_path / "absent.onnx")
    with pytest.raises(InvalidInputError, match="not valid"):
        registry.import_model(files["cnn"], name="../escape")
    assert (home / "index.json").read_text() == before
    assert sorted(p.name for p in (home / "transcoder").iterdir()) == ["yamnet-cnn-logits.onnx"]


def test_corrupt_index(home):
    home.mkdir(parents=True)
    (home / "index.json").write_text("{not json")
    with pytest.raises(ModelError, match="index.*unreadable"):
        registry.entries()


def test_packaged_transcoders(home, files, tmp_path, monkeypatch):
    pkg = tmp_path / "models_data"
    pkg.mkdir()
    (pkg / "yamnet.onnx").write_bytes(files["cnn"].read_bytes())
    monkeypatch.setattr(registry, "package_dir", lambda: pkg)
    e = registry.resolve("yamnet", "transcoder")
    assert e.origin == "package" and e.sha256 is None
    assert Transcoder.load("yamnet").output_spec.name == "yamnet_torchport"
    with pytest.raises(ModelError):
        registry.resolve("yamnet", "classifier")  # packaged files are transcoders
    # a checksum recorded beside the packaged files is verified
    (pkg / "index.json").write_text(
        json.dumps({"format": 1, "models": {"transcoder": {"yamnet": {"file": "yamnet.onnx", "sha256": "f" * 64}}}})
    )
    with pytest.raises(ModelError, match="checksum"):
        Transcoder.load("yamnet")
    # the user cache wins over the package
    registry.import_model(files["cnn_pann"], name="yamnet")
    assert registry.resolve("yamnet", "transcoder").origin == "cache"
    assert Transcoder.load("yamnet").output_spec.name == "pann"


def test_known_names_cover_the_contract():
    names = {(k.kind, k.name) for k in registry.KNOWN}
    for n in ("yamnet", "yamnet-torchport", "efficientat-mn04", "pann-resnet38", "pann-cnn14"):
        assert ("classifier", n) in names
    for n in ("pann-cnn-logits", "pann-cnn-mels", "yamnet-cnn-logits", "yamnet", "efficientat-mn04"):
        assert ("transcoder", n) in names
    for clf, tr in registry.DEFAULT_TRANSCODERS.items():
        assert ("classifier", clf) in names and ("transcoder", tr) in names
