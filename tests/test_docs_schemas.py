"""docs/archive-formats.md stays true to the code (issue 15, item 18).

- every extension and format ``open_archive`` accepts, and every reader option (Python and command line),
  is documented, and the documented option table names no option the code lacks;
- the output columns of ``process`` (found by running it on a tiny archive with the tiny ONNX models of
  tests/_tiny_models.py) are exactly the documented ones, in order, with their Arrow types; so are the
  window kinds and the files of the output folder;
- the page's examples run: its CSV block is written to a file, its Python blocks run in order as one
  script in a temporary folder (the ``process`` example with a tiny classifier registered as ``yamnet``
  beside the shipped ``yamnet`` transcoder), and what each prints equals the output the page shows.

HTML comments before a code block say what to do with it: ``<!-- doctest: file NAME -->`` (write it to
NAME), ``<!-- doctest: skip ... -->`` (do not run it), ``<!-- doctest: output -->`` (the stdout of the
Python block before it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from _tiny_models import classifier_metadata, make_classifier, make_transcoder  # noqa: E402
from archives_testutil import NS, grid_times, levels, write_parquet  # noqa: E402
from spectral_transcoder import archives, cli, cli_process, registry  # noqa: E402
from spectral_transcoder.archives import blocks, readers, writer  # noqa: E402
from spectral_transcoder.archives import process as P  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "archive-formats.md"
DOC_LINK = "docs/archive-formats.md"

_FENCE = re.compile(
    r"(?:^<!--\s*doctest:\s*(?P<marker>.*?)\s*-->[ \t]*\n)?^```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^```[ \t]*$",
    re.S | re.M,
)


def _doc() -> str:
    assert DOC.is_file(), f"{DOC_LINK} is missing: the archive input and output schemas are undocumented"
    return DOC.read_text(encoding="utf-8")


def _blocks(text: str) -> list[tuple[str, str, str]]:
    """The fenced code blocks: (doctest marker or "", language, body)."""
    return [(m["marker"] or "", m["lang"], m["body"]) for m in _FENCE.finditer(text)]


def _section(text: str, heading: str) -> str:
    """The text under a markdown heading, up to the next heading of any level."""
    m = re.search(rf"^#+ {re.escape(heading)}[ \t]*$(.*?)(?=^#+ |\Z)", text, re.S | re.M)
    assert m, f"{DOC_LINK} has no section {heading!r}"
    return m.group(1)


def _table(section: str) -> list[list[str]]:
    """The rows (cells, stripped) of the first markdown table in ``section``, header and rule left out."""
    rows = [ln for ln in section.splitlines() if ln.startswith("|")]
    assert len(rows) > 2, "no table"
    return [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows[2:]]


def _code(cell: str) -> list[str]:
    """The `code` spans of a table cell."""
    return re.findall(r"`([^`]+)`", cell)


# ------------------------------------------------------------------ links
def test_the_page_is_linked_from_the_readme_and_the_readers_module():
    _doc()
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    archives_part = readme.split("### Archives", 1)[1].split("\n### ", 1)[0]
    assert f"]({DOC_LINK})" in archives_part, "README's Archives section does not link the archive formats page"
    assert DOC_LINK in (readers.__doc__ or ""), "archives/readers.py's docstring does not point to the page"


# ------------------------------------------------------------------ inputs
def test_every_format_and_extension_open_archive_accepts_is_documented():
    text = _doc()
    at_a_glance = _table(_section(text, "1. Formats at a glance"))
    documented_ext = {e for row in at_a_glance for e in _code(row[0])}
    documented_fmt = {f for row in at_a_glance for f in _code(row[1])}
    assert documented_ext == set(readers._READERS), "extensions in the table differ from open_archive's"
    assert documented_fmt == set(readers._FORMATS), "format= names in the table differ from open_archive's"
    for row in at_a_glance:  # each row names the reader that open_archive picks for its extensions
        classes = {readers._READERS[e].__name__ for e in _code(row[0])}
        assert classes == set(_code(row[2])), row
        assert {readers._FORMATS[f].__name__ for f in _code(row[1])} == classes, row
        default = {inspect.signature(readers._READERS[e].__init__).parameters["spec"].default for e in _code(row[0])}
        assert default == set(_code(row[3])), f"default band spec of {row[0]}"
    for name in {"cense_fast", "cense_slow", "noisecapture"}:
        assert f"| `{name}` |" in _section(text, "2.1 Band specs: how many bands, in which order")


def _python_options() -> set[str]:
    """Every keyword the readers take: the shared BlockOptions and each reader's own."""
    names = {f.name for f in dataclasses.fields(blocks.BlockOptions)} | {"format"}
    for cls in set(readers._READERS.values()):
        for p in list(inspect.signature(cls.__init__).parameters.values())[2:]:
            if p.kind is p.KEYWORD_ONLY:
                names.add(p.name)
    return names


def _cli_read_options() -> dict[str, str]:
    """Command-line option -> the reader option it sets (found by giving it and looking at what changes)."""
    parser = cli.build_parser()
    base = ["process", "a.parquet", "-o", "out", "-c", "clf"]
    default = cli_process._read_options(parser.parse_args(base), blocks=True)
    probe = argparse.ArgumentParser()
    cli_process._add_read_args(probe, blocks=True)
    out = {}
    for action in probe._actions:
        if not action.option_strings or action.dest == "help":
            continue
        opt = action.option_strings[-1]
        if action.choices:
            value = next(str(c) for c in action.choices if c != action.default)
        else:
            value = "7.5" if action.type is float else "x"
        extra = ["--spl-offset", "94"] if opt == "--reference" and value == "SPL" else []
        got = cli_process._read_options(parser.parse_args([*base, opt, value, *extra]), blocks=True)
        changed = [k for k in got if k != "spl_offset" or opt == "--spl-offset" if got.get(k) != default.get(k)]
        assert len(changed) == 1, (opt, changed)
        out[opt] = changed[0]
    return out


def test_every_reader_option_is_documented_with_its_command_line_option():
    rows = _table(_section(_doc(), "2.5 Options in Python and on the command line"))
    table = {_code(r[0])[0]: r for r in rows}
    assert set(table) == _python_options(), "the option table and the readers' keywords differ"
    cli_map = _cli_read_options()
    for opt, name in cli_map.items():
        assert opt in _code(table[name][3]), f"{name}: its command-line option {opt} is not in the table"
    for name, row in table.items():  # no command-line option is claimed that does not exist
        for opt in (c for c in _code(row[3]) if c.startswith("--")):
            assert cli_map.get(opt) == name, f"{name}: the table names {opt}, which does not set it"


# ------------------------------------------------------------------ output
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, pa.Table, int, int]:
    """process() on a tiny archive with a bad row and an outage: every window kind, every column."""
    d = tmp_path_factory.mktemp("docs_schemas")
    lv = levels(8 * 40, seed=3) - 100.0
    lv[12] = np.nan
    t = grid_times(8 * 40)
    t[8 * 20 :] += 90 * NS  # an outage longer than max_mask_gap_s: a "gap" row
    path = write_parquet(d / "s.parquet", t, lv)
    out = d / "out"
    top_k = 2
    s = P.process(
        [str(path)],
        out,
        classifier=make_classifier(d / "clf.onnx"),
        transcoder=make_transcoder(d / "tr.onnx"),
        probabilities=True,
        top_k=top_k,
        block_seconds=10,
        progress=False,
    )
    assert s.errors == []
    return out, archives.read_results(out), top_k, len(classifier_metadata().labels)


def test_the_output_columns_and_types_are_the_documented_ones(tiny_run):
    _out, table, k, n_classes = tiny_run
    rows = _table(_section(_doc(), "4.2 Columns"))
    names = [_code(r[0])[0] for r in rows]
    assert names == table.column_names, "the documented output columns differ from what process writes"
    for r in rows:
        name, documented = _code(r[0])[0], _code(r[1])[0]
        want = documented.replace("[k]", f"[{k}]").replace("[C]", f"[{n_classes}]")
        assert want == str(table.schema.field(name).type), f"{name}: documented as {documented}"
    assert list(archives.LEADING_COLUMNS) == names[: len(archives.LEADING_COLUMNS)]


def test_the_window_kinds_and_the_output_files_are_documented(tiny_run):
    out, table, _, _ = tiny_run
    text = _doc()
    kinds = set(table.column("window").to_pylist())
    assert kinds == {"1s", "10s", "gap"}
    for kind in kinds:
        assert f'`"{kind}"`' in _section(text, "4.3 Rows: windows, gaps, top-k")
    layout = _section(text, "4.1 The output folder")
    for name in sorted(os.listdir(out)):
        shown = re.sub(r"\d{6}", "000000", name)
        assert f"`{shown}`" in layout, f"{name} (written by process) is not in the folder table"
    for name in (writer.LOCK_NAME, writer.MANIFEST_NAME, writer.RUN_NAME, writer.RUN_ID_KEY, "st.run"):
        assert f"`{name}`" in layout, name
    meta = pq.read_metadata(out / "part-000000.parquet").metadata
    assert {k.decode() for k in meta} - {"ARROW:schema"} == {"st.run", writer.RUN_ID_KEY}


# ------------------------------------------------------------------ the examples
def test_the_examples_run_and_print_what_the_page_shows(tmp_path, monkeypatch):
    pytest.importorskip("h5py")
    pytest.importorskip("soundfile")
    # the process example asks for the classifier "yamnet": a tiny one stands in for it, beside the
    # shipped yamnet transcoder (the printed output does not depend on the classifier's weights)
    monkeypatch.setenv(registry.ENV_HOME, str(tmp_path / "home"))
    clf = make_classifier(tmp_path / "yamnet.onnx", meta=classifier_metadata("yamnet", mel="yamnet"))
    registry.import_model(clf)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    namespace: dict = {"__name__": "archive_formats_doc"}
    last: tuple[str, str] | None = None  # (code, its stdout)
    ran = files = checked = 0
    for marker, lang, body in _blocks(_doc()):
        if marker.startswith("file "):
            (work / marker.split(None, 1)[1]).write_text(body, encoding="utf-8")
            files += 1
        elif marker == "output":
            assert last is not None, "an output block with no Python block before it"
            assert last[1].rstrip("\n").splitlines() == body.rstrip("\n").splitlines(), (
                f"this example prints something else than the page shows:\n{last[0]}"
            )
            checked += 1
            last = None
        elif lang == "python" and not marker.startswith("skip"):
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                exec(compile(body, f"{DOC_LINK} (example {ran + 1})", "exec"), namespace)
            last = (body, buf.getvalue())
            ran += 1
    assert files >= 1 and ran >= 8 and checked >= 8, (files, ran, checked)
    # the CSV and Parquet examples were read back by the page's own code; check the files once more
    for name, options in (("sensor-a.csv", {}), ("sensor-b.parquet", {}), ("sensor-c.parquet", {"time_unit": "ms"})):
        assert list(readers.open_archive(work / name, **options)), name
