"""A new user's first day, the setup part (issue 15, items 15 and 23): the README's commands run as
written on a root machine, a rerun with nothing changed does not reinstall, and the main job
registers the teachers where the Python API looks."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), flags=re.S)


def test_readme_main_commands_need_no_sudo():
    main_job, tests = _readme_commands()[:2]
    assert "sudo" not in main_job and "tools/run.sh" in main_job  # sudo is absent on a root machine
    assert tests.strip() == "bash tools/test.sh"
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^(exec )?bash tools/test\.sh$", ci, flags=re.M)  # CI runs the README's test command
    assert re.search(r"^[^#]*bash tools/sanitize\.sh$", ci, flags=re.M)  # and the sanitizer build


def test_main_job_registers_where_the_api_looks():
    run_sh = (REPO / "tools" / "run.sh").read_text()
    assert "out/registry" not in run_sh  # it used to register into out/registry, unseen by st.classify
    assert "SPECTRAL_TRANSCODER_HOME=" not in run_sh
    assert "from spectral_transcoder.registry import home" in run_sh
    assert "~/.cache/spectral_transcoder" in (REPO / "README.md").read_text()


def _tree(root: Path) -> Path:
    """A miniature project: the setup script and the files the install is built from, with a
    stand-in .venv whose python imports anything."""
    (root / "tools").mkdir(parents=True)
    shutil.copy(REPO / "tools" / "setup.sh", root / "tools" / "setup.sh")
    for f, text in [
        ("pyproject.toml", "[project]\n"),
        ("CMakeLists.txt", "project(x)\n"),
        ("cpp/k.cpp", "int k;\n"),
        ("python/spectral_transcoder/__init__.py", ""),
        ("training/cli.py", ""),
    ]:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text(text)
    py = root / ".venv" / "bin" / "python"
    py.parent.mkdir(parents=True)
    py.write_text("#!/bin/sh\nexit 0\n")
    py.chmod(0o755)
    return root


def _setup(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(root / "tools" / "setup.sh"), *args], capture_output=True, text=True)


def test_setup_rerun_with_nothing_changed_installs_nothing(tmp_path):
    root = _tree(tmp_path / "p")
    assert _setup(root, "--check").returncode == 1  # never installed
    (root / ".venv" / ".spectral-transcoder-install").write_text(_setup(root, "--hash").stdout)
    assert _setup(root, "--check").returncode == 0
    r = _setup(root)  # a plain rerun: seconds, no pip
    assert r.returncode == 0 and "nothing to do" in r.stdout
    (root / "cpp" / "k.cpp").write_text("int k = 1;\n")  # a source changed: reinstall needed
    assert _setup(root, "--check").returncode == 1
    (root / "cpp" / "k.cpp").write_text("int k;\n")
    (root / "python" / "spectral_transcoder" / "__pycache__").mkdir()
    (root / "python" / "spectral_transcoder" / "__pycache__" / "x.pyc").write_bytes(b"0")  # not a source
    assert _setup(root, "--check").returncode == 0


def test_this_venv_is_up_to_date_after_the_test_command():
    """tools/test.sh runs setup first, so the suite itself must see an up-to-date stamp."""
    if Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
        pytest.skip("not running from the repository's .venv")
    r = _setup(REPO, "--check")
    if r.returncode and not os.environ.get("ST_REQUIRE_SHARED"):
        pytest.skip("sources changed since the last `bash tools/setup.sh` (run it, or tools/test.sh)")
    assert r.returncode == 0, r.stdout + r.stderr


def test_training_tools_run_from_any_folder(tmp_path):
    """`python -m training` worked only from the repository root; the install now carries the
    tools as the console script spectral-transcoder-train (and spectral_transcoder_training)."""
    exe = Path(sys.executable).parent / "spectral-transcoder-train"
    assert exe.is_file(), "the package's install has no spectral-transcoder-train (run bash tools/setup.sh)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing from the clone
    r = subprocess.run([str(exe), "--help"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    for command in ("convert", "engine", "fit", "fidelity", "export-fit", "direct"):
        assert command in r.stdout
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib.resources as r, spectral_transcoder_training.paths as p; "
            "print(p.repo_root(), (r.files('spectral_transcoder_training') / 'MODEL_CARD.md.in').is_file())",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.stdout.split() == ["None", "True"], r.stderr  # defaults never point into site-packages
