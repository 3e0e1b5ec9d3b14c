"""The hand-written type stub ``_core.pyi`` must describe the compiled ``_core`` exactly.

pybind11 writes each function's signature as the first line of its docstring
(``name(arg: type, ...) -> type``); both that line and the stub are parsed with
``ast`` and reduced to comparable facts: names, parameter names and order, which
parameters have defaults and their values, array dtypes and scalar kinds, return
types. The stub is read from next to the imported module, so against an installed
wheel this also checks that the wheel ships it.
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from spectral_transcoder import _core

STUB = Path(_core.__file__).with_name("_core.pyi")


class Param(NamedTuple):
    name: str
    kind: str  # "positional", "*args", "keyword-only", "**kwargs"
    type: str  # canonical: "array[float32]", "int", "float", "bool", "str", ...
    default: Any  # _NO_DEFAULT when required


class Sig(NamedTuple):
    params: tuple[Param, ...]
    returns: str


_NO_DEFAULT = "<required>"
# numpy names that are containers or modules, not dtypes.
_NOT_DTYPES = {"typing", "ndarray", "NDArray", "ArrayLike", "dtype"}


def canonical_type(node: ast.expr | None) -> str:
    """One spelling per type across pybind11 2.x/3.x signatures and the stub."""
    if node is None:
        return "<none>"
    text = ast.unparse(node)
    if re.search(r"\b(ndarray|NDArray|ArrayLike)\b", text):
        dtypes = [d for d in re.findall(r"\b(?:numpy|np)\.(\w+)", text) if d not in _NOT_DTYPES]
        return f"array[{','.join(dtypes)}]"
    # pybind11 3 annotates scalar parameters with the protocols it accepts.
    if "SupportsFloat" in text:
        return "float"
    if "SupportsInt" in text:
        return "int"
    if text.startswith(("Literal[", "typing.Literal[")):  # the stub narrows str options
        values = ast.literal_eval(node.slice)  # type: ignore[attr-defined]
        values = values if isinstance(values, tuple) else (values,)
        return type(values[0]).__name__
    return {"typing.Final[int]": "int", "Final[int]": "int"}.get(text, text)


def _params(args: ast.arguments) -> tuple[Param, ...]:
    out: list[Param] = []
    positional = args.posonlyargs + args.args
    pad = [None] * (len(positional) - len(args.defaults))
    for a, d in zip(positional, pad + list(args.defaults)):
        out.append(Param(a.arg, "positional", canonical_type(a.annotation), _default(d)))
    if args.vararg:
        out.append(Param(args.vararg.arg, "*args", canonical_type(args.vararg.annotation), _NO_DEFAULT))
    for a, d in zip(args.kwonlyargs, args.kw_defaults):
        out.append(Param(a.arg, "keyword-only", canonical_type(a.annotation), _default(d)))
    if args.kwarg:
        out.append(Param(args.kwarg.arg, "**kwargs", canonical_type(args.kwarg.annotation), _NO_DEFAULT))
    return tuple(out)


def _default(node: ast.expr | None) -> Any:
    if node is None:
        return _NO_DEFAULT
    try:
        return ast.literal_eval(node)
    except ValueError:  # e.g. a stub's `...`, which would hide the value: keep it visible
        return ast.unparse(node)


def _sig(fn: ast.FunctionDef) -> Sig:
    return Sig(_params(fn.args), canonical_type(fn.returns))


def stub_facts(source: str) -> tuple[dict[str, list[Sig]], dict[str, str]]:
    """Top-level functions (overloads in order) and annotated constants of a stub."""
    funcs: dict[str, list[Sig]] = {}
    consts: dict[str, str] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef):
            funcs.setdefault(node.name, []).append(_sig(node))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            consts[node.target.id] = canonical_type(node.annotation)
    return funcs, consts


def pybind_signatures(name: str, fn: Any) -> list[Sig]:
    """Signatures from a pybind11 function's docstring (several when overloaded)."""
    doc = fn.__doc__ or ""
    lines = doc.splitlines()
    if len(lines) > 1 and lines[1].strip() == "Overloaded function.":
        texts = [m.group(1) for m in re.finditer(rf"^\d+\. ({re.escape(name)}\(.*)$", doc, re.M)]
    else:
        texts = lines[:1]
    if not texts or not texts[0].startswith(f"{name}("):
        pytest.fail(f"_core.{name}: no pybind11 signature line in its docstring: {doc[:200]!r}")
    return [_sig(ast.parse(f"def {t}: ...").body[0]) for t in texts]  # type: ignore[arg-type]


def module_facts(module: Any) -> tuple[dict[str, list[Sig]], dict[str, str]]:
    funcs: dict[str, list[Sig]] = {}
    consts: dict[str, str] = {}
    for name in dir(module):
        if name.startswith("__"):
            continue
        value = getattr(module, name)
        if callable(value):
            funcs[name] = pybind_signatures(name, value)
        else:
            consts[name] = type(value).__name__
    return funcs, consts


def drift(stub_source: str, module: Any) -> list[str]:
    """Every difference between a stub and a module, as readable lines (empty: in sync)."""
    s_funcs, s_consts = stub_facts(stub_source)
    m_funcs, m_consts = module_facts(module)
    problems: list[str] = []
    for kind, s, m in (("function", s_funcs, m_funcs), ("constant", s_consts, m_consts)):
        for name in sorted(m.keys() - s.keys()):
            problems.append(f"{kind} {name!r} is in the module but not in the stub")
        for name in sorted(s.keys() - m.keys()):
            problems.append(f"{kind} {name!r} is in the stub but not in the module")
    for name in sorted(s_consts.keys() & m_consts.keys()):
        if s_consts[name] != m_consts[name]:
            problems.append(f"constant {name!r}: stub says {s_consts[name]}, module holds {m_consts[name]}")
    for name in sorted(s_funcs.keys() & m_funcs.keys()):
        stub_sigs, mod_sigs = s_funcs[name], m_funcs[name]
        if len(stub_sigs) != len(mod_sigs):
            problems.append(f"{name}: {len(stub_sigs)} signature(s) in the stub, {len(mod_sigs)} in the module")
            continue
        for i, (ss, ms) in enumerate(zip(stub_sigs, mod_sigs)):
            where = name if len(mod_sigs) == 1 else f"{name} (overload {i + 1})"
            s_names = [p.name for p in ss.params]
            m_names = [p.name for p in ms.params]
            if s_names != m_names:
                problems.append(f"{where}: stub parameters {s_names} != module parameters {m_names}")
                continue
            for sp, mp in zip(ss.params, ms.params):
                for field in ("kind", "type", "default"):
                    if getattr(sp, field) != getattr(mp, field):
                        problems.append(
                            f"{where}({sp.name}): stub {field} {getattr(sp, field)!r}"
                            f" != module {field} {getattr(mp, field)!r}"
                        )
            if ss.returns != ms.returns:
                problems.append(f"{where}: stub returns {ss.returns} != module returns {ms.returns}")
    return problems


# ----------------------------------------------------------------------- the stub
def test_stub_matches_module():
    problems = drift(STUB.read_text(encoding="utf-8"), _core)
    assert not problems, "_core.pyi and the compiled _core differ:\n" + "\n".join(problems)


def test_stub_sits_next_to_the_module_with_py_typed():
    assert STUB.is_file(), f"{STUB} is missing (is it shipped with the wheel?)"
    assert STUB.with_name("py.typed").is_file()


def test_every_stub_function_has_a_one_line_shape_docstring():
    tree = ast.parse(STUB.read_text(encoding="utf-8"))
    for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
        doc = ast.get_docstring(fn)
        assert doc, f"{fn.name} has no docstring"
        assert "\n" not in doc, f"{fn.name}: the docstring should be one line"
        assert "->" in doc and "(" in doc, f"{fn.name}: the docstring should state input -> output shapes"


def test_stub_imports_only_typing_and_numpy():
    tree = ast.parse(STUB.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots = {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots = {(node.module or "").split(".")[0]}
        else:
            continue
        assert roots <= {"typing", "numpy", "__future__"}, ast.unparse(node)


def test_module_exposes_pybind11_signatures():
    # The checks above rely on them; a module built with signatures disabled would make them vacuous.
    funcs, _ = module_facts(_core)
    assert {"third_octave_levels", "mel_spectrogram", "pinv_chunks"} <= funcs.keys()
    assert all(sig.params for sigs in funcs.values() for sig in sigs)


# ------------------------------------------------ the drift check itself detects drift
def _mutated(old: str, new: str) -> str:
    source = STUB.read_text(encoding="utf-8")
    assert old in source, f"test fixture out of date: {old!r} not in the stub"
    return source.replace(old, new, 1)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("    bin_hi: NDArray[np.int64],\n", "", "stub parameters"),  # dropped parameter
        ("    hop: int,\n    scale", "    hop_length: int,\n    scale", "stub parameters"),  # renamed
        ("bin_lo: NDArray[np.int64]", "bin_lo: NDArray[np.int32]", "array[int32]"),  # dtype
        ("    hop: int,\n    scale", "    hop: float,\n    scale", "stub type"),  # scalar kind
        (
            '    n_threads: int = 0,\n) -> NDArray[np.float32]:\n    """levels',
            '    n_threads: int = 1,\n) -> NDArray[np.float32]:\n    """levels',
            "stub default",
        ),  # default value
        (
            '    n_threads: int = 0,\n) -> NDArray[np.float32]:\n    """levels',
            '    n_threads: int,\n) -> NDArray[np.float32]:\n    """levels',
            "stub default",
        ),  # default dropped
        ('-> NDArray[np.float32]:\n    """levels', '-> NDArray[np.float64]:\n    """levels', "returns"),
        ("mel_lanes: int\n", "", "constant 'mel_lanes' is in the module"),
        ("mel_lanes: int\n", "mel_lanes: str\n", "constant 'mel_lanes': stub says str"),
    ],
)
def test_drift_is_detected(old, new, expected):
    problems = drift(_mutated(old, new), _core)
    assert any(expected in p for p in problems), problems


def test_missing_and_extra_functions_are_detected():
    extra = STUB.read_text(encoding="utf-8") + '\ndef gone(x: int) -> int:\n    """x () -> y ()."""\n'
    assert "function 'gone' is in the stub but not in the module" in drift(extra, _core)
    tree = ast.parse(STUB.read_text(encoding="utf-8"))
    tree.body = [n for n in tree.body if not (isinstance(n, ast.FunctionDef) and n.name == "_ln_approx")]
    assert "function '_ln_approx' is in the module but not in the stub" in drift(ast.unparse(tree), _core)


def test_pybind11_overloads_are_parsed():
    class Fake:  # the docstring pybind11 writes for an overloaded function
        __doc__ = textwrap.dedent(
            """\
            f(*args, **kwargs)
            Overloaded function.

            1. f(x: typing.SupportsInt | typing.SupportsIndex) -> int

            2. f(x: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], n: bool = False) -> None
            """
        )

    sigs = pybind_signatures("f", Fake())
    assert [[(p.name, p.type, p.default) for p in s.params] for s in sigs] == [
        [("x", "int", _NO_DEFAULT)],
        [("x", "array[float32]", _NO_DEFAULT), ("n", "bool", False)],
    ]
    assert [s.returns for s in sigs] == ["int", "None"]


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("numpy.ndarray[numpy.float32]", "array[float32]"),  # pybind11 2.x
        ("typing.Annotated[numpy.typing.ArrayLike, numpy.int64]", "array[int64]"),  # pybind11 3.x input
        ("numpy.typing.NDArray[numpy.float64]", "array[float64]"),
        ("NDArray[np.float32]", "array[float32]"),
        ("typing.SupportsFloat | typing.SupportsIndex", "float"),
        ("typing.SupportsInt | typing.SupportsIndex", "int"),
        ("Literal['db', 'ln']", "str"),
        ("float", "float"),
    ],
)
def test_type_spellings_are_canonicalised(text, canonical):
    assert canonical_type(ast.parse(text, mode="eval").body) == canonical
