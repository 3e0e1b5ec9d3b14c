"""Shared fixtures. Files from ../shared are read in place, never copied.

A test that needs ../shared asks for the `shared` fixture (or calls
`shared_file(...)`): it skips with the reason when the file is absent, unless
ST_REQUIRE_SHARED=1 (set by CI), where a missing file fails the run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import settings

# Property tests are deterministic (fixed seed per test) and untimed.
settings.register_profile("st", derandomize=True, deadline=None, max_examples=40, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "st"))

REPO = Path(__file__).resolve().parents[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a child Python that must import the same spectral_transcoder as
    this process (the installed one under CI, the source tree in a dev build) and the
    repository's training/ package."""
    import spectral_transcoder

    package_parent = str(Path(spectral_transcoder.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (package_parent, str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def kill_9_after_manifest_lines(
    args: Sequence[str],
    manifest: Path,
    n_lines: int,
    *,
    env: dict[str, str],
    timeout: float,
    poll: float = 0.01,
    **popen: Any,
) -> None:
    """Run ``args`` in a child process, wait until its ``manifest`` holds ``n_lines`` committed
    lines (within ``timeout`` seconds), then ``kill -9`` it: a real crash at an arbitrary point
    of the commit protocol, not a simulated one. Fails if the child ended on its own first,
    or did not die of the signal; ``popen`` goes to :class:`subprocess.Popen`."""
    proc = subprocess.Popen(list(args), env=env, **popen)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if manifest.exists() and manifest.read_bytes().count(b"\n") >= n_lines:
                break
            assert proc.poll() is None, "the child ended before it could be killed"
            time.sleep(poll)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


SHARED = Path(os.environ.get("ST_SHARED_DIR", Path(__file__).resolve().parents[1].parent / "shared"))
REQUIRE_SHARED = os.environ.get("ST_REQUIRE_SHARED", "") == "1"


def shared_file(*parts: str) -> Path:
    """Path of a file under ../shared; skip (or fail under ST_REQUIRE_SHARED=1) if absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        msg = f"needs {path} (the read-only ../shared folder), which is absent"
        if REQUIRE_SHARED:
            pytest.fail(msg + " and ST_REQUIRE_SHARED=1", pytrace=False)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def shared() -> Path:
    return shared_file()


@pytest.fixture(scope="session")
def golden_street() -> dict[str, np.ndarray]:
    with np.load(shared_file("reference", "golden", "street_pedestrian-paris-152-4607-a.npz")) as z:
        return dict(z)


@pytest.fixture(scope="session")
def golden_birds() -> dict[str, np.ndarray]:
    with np.load(shared_file("reference", "golden", "birds.npz")) as z:
        return dict(z)


@pytest.fixture(scope="session", params=["street", "birds"])
def golden_clip(request) -> dict[str, np.ndarray]:
    name = {"street": "street_pedestrian-paris-152-4607-a.npz", "birds": "birds.npz"}[request.param]
    with np.load(shared_file("reference", "golden", name)) as z:
        return dict(z)


@pytest.fixture(scope="session")
def reference_matrices() -> dict[str, np.ndarray]:
    with np.load(shared_file("reference", "golden", "reference_matrices.npz")) as z:
        return dict(z)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty model registry: SPECTRAL_TRANSCODER_HOME under tmp_path, no packaged models."""
    from spectral_transcoder import registry

    h = tmp_path / "home"
    monkeypatch.setenv(registry.ENV_HOME, str(h))
    monkeypatch.setattr(registry, "package_dir", lambda: tmp_path / "no_package_models")
    return h


def convert_model(*args: object) -> None:
    """``python -m training convert ARGS...`` in a child process (the CLI users run); fails on error."""
    r = subprocess.run(
        [sys.executable, "-m", "training", "convert", *map(str, args)],
        env=subprocess_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.fixture(scope="session")
def real_yamnet(tmp_path_factory, shared):
    """The published YAMNet transcoder and the YAMNet classifier (torch-port spec), converted by training/."""
    pytest.importorskip("torch")
    if not (REPO / "training" / "__main__.py").exists():
        pytest.skip("training/ has no converter command yet")
    d = tmp_path_factory.mktemp("real")
    tr_src = (
        shared
        / "reference"
        / "models"
        / (
            "classifier=YamNet+dataset=full+dilation=1+epoch=200+kernel_size=5+learning_rate=-3+nb_channels=64+"
            "nb_layers=5+prop_logit=100+step=train+transcoder=cnn_pinv+ts=1_model"
        )
    )
    convert_model("transcoder", tr_src, "-o", d / "tr.onnx")
    convert_model(
        "yamnet-tflite",
        shared / "models" / "yamnet_int8.tflite",
        "-o",
        d / "clf.onnx",
        "--input-spec",
        "yamnet_torchport",
        "--yamnet-class-map",
        shared / "models" / "yamnet_class_map.csv",
        "--labels",
        shared / "models" / "class_labels_indices.csv",
    )
    return d / "tr.onnx", d / "clf.onnx"


@pytest.fixture(scope="session")
def yamnet_teacher(tmp_path_factory, shared):
    """YAMNet from the per-channel int8 tflite with the official front end (MelSpec 'yamnet'):
    the teacher of the shipped yamnet transcoder, converted by training/."""
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("teacher") / "yamnet.onnx"
    m = shared / "models"
    convert_model(
        "yamnet-tflite",
        m / "yamnet_int8_perchannel.tflite",
        "-o",
        out,
        "--yamnet-class-map",
        m / "yamnet_class_map.csv",
        "--labels",
        m / "class_labels_indices.csv",
    )
    return out


def pytest_collection_modifyitems(config, items):
    """Tests that convert the real YAMNet pipeline (about 35 s once per session) are slow."""
    for item in items:
        if "real_yamnet" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Tiny ONNX models built once per session for the API, process, plot and pipeline tests: a
    transcoder cense_fast -> pann (``tr``), a pann classifier (``clf``) and a yamnet_torchport
    classifier with fixed 96 frames (``clf_yamnet``). A module needing more overrides ``tiny``,
    extending this one."""
    from _tiny_models import classifier_metadata, make_classifier, make_transcoder

    d = tmp_path_factory.mktemp("tiny")
    return {
        "tr": make_transcoder(d / "tr.onnx"),
        "clf": make_classifier(d / "clf.onnx"),
        "clf_yamnet": make_classifier(
            d / "clf_y.onnx", meta=classifier_metadata("tiny-yamnet", mel="yamnet_torchport"), frames=96
        ),
    }
