"""Structure of the source tree: no import cycle inside the package, every module importable
on its own, and no citation of documents that are not in the repository."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import spectral_transcoder
from conftest import REPO, subprocess_env

PACKAGE_DIR = Path(spectral_transcoder.__file__).resolve().parent
PACKAGE = PACKAGE_DIR.name


def _modules() -> dict[str, Path]:
    """Dotted name -> source file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_extension(package: str, name: str) -> bool:
    """``package.name`` is a compiled module (``_core``): a leaf, it imports nothing of ours."""
    folder = PACKAGE_DIR.parent.joinpath(*package.split("."))
    return any(folder.glob(f"{name}.*.so")) or any(folder.glob(f"{name}.*.pyd")) or (folder / f"{name}.pyi").exists()


def _imports(module: str, path: Path, *, top_level: bool) -> set[str]:
    """The package's modules that ``module`` imports: at module level only (what runs at
    import time), or anywhere (function-level imports included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if top_level:
        nodes: list[ast.AST] = []

        def walk(body: list[ast.stmt]) -> None:  # module level, including if/try blocks, not defs
            for node in body:
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    nodes.append(node)
                elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    for field in ("body", "orelse", "finalbody", "handlers"):
                        sub = getattr(node, field, None)
                        if isinstance(sub, list):
                            walk(sub)

        walk(tree.body)
    else:
        nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
            continue
        base = (
            ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
            if node.level
            else (node.module or "")
        )
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in MODULES:
                found.add(sub)  # `from . import registry`: the submodule
            elif not _is_extension(base, alias.name):
                found.add(base)  # `from .specs import BandSpec`: the module that defines the name
    return {m for m in found if m in MODULES and m != module}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_scan_finds_the_modules():
    assert {f"{PACKAGE}.cli", f"{PACKAGE}.models", f"{PACKAGE}.archives.process"} <= set(MODULES)
    graph = {m: _imports(m, p, top_level=True) for m, p in MODULES.items()}
    assert f"{PACKAGE}.registry" in graph[f"{PACKAGE}.onnx_models"]  # `from . import registry`
    assert f"{PACKAGE}.errors" in graph[f"{PACKAGE}.archives.writer"]  # `from ..errors import ...`
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("top_level", [True, False], ids=["module-level", "all-imports"])
def test_no_import_cycle(top_level):
    """Module-level cycles break depending on which module is imported first; function-level
    ones (a lazy import back into a module that imports you) are the same knot, tied later."""
    graph = {m: _imports(m, p, top_level=top_level) for m, p in MODULES.items()}
    assert _cycles(graph) == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not m.endswith("__main__")))
def test_each_module_imports_first_in_a_fresh_interpreter(module):
    r = subprocess.run(
        [sys.executable, "-c", f"import {module}"], env=subprocess_env(), capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]


# ------------------------------------------------------------------ citations
#: A citation of a specification file kept outside the repository (built in two pieces so that
#: this file does not match itself).
_OUTSIDE_SPEC = re.compile("specs" r"/[\w.\-]+\.md")
_SCANNED = ("python", "cpp", "training", "tests", "benchmarks", "docs", "README.md")


def _tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--", *_SCANNED], cwd=REPO, capture_output=True, check=True, timeout=60
        ).stdout
        files = [REPO / name for name in out.decode().split("\0") if name]
    except (OSError, subprocess.SubprocessError):  # not a git checkout: every file under the folders
        files = [
            p for d in _SCANNED for p in ([REPO / d] if (REPO / d).is_file() else (REPO / d).rglob("*")) if p.is_file()
        ]
    return [p for p in files if p.is_file() and b"\0" not in p.read_bytes()[:8192]]  # text only


def test_no_citation_of_files_outside_the_repository():
    """Method facts cite the paper or a doc under docs/ (docs/conventions.md), which a reader has."""
    files = _tracked_text_files()
    assert any(p.name == "conventions.md" for p in files)
    hits = [
        f"{p.relative_to(REPO)}:{i}: {line.strip()[:120]}"
        for p in files
        for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if _OUTSIDE_SPEC.search(line)
    ]
    assert hits == []
