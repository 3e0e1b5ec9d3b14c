"""Issue 15, "A new user's first day": `process` (API and CLI) on the mistakes and accidents of a
first day: an output folder that holds other files, an input edited between two runs, a sentinel
level, a resume with another model, missing optional dependencies, the progress report, and
outages in the data. Tiny ONNX models (tests/_tiny_models.py), synthetic archives."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from _tiny_models import classifier_metadata, make_classifier
from archives_testutil import NS, T0, grid_times, levels, write_parquet
from conftest import subprocess_env
from spectral_transcoder import archives, cli
from spectral_transcoder.archives import process as P
from spectral_transcoder.errors import InvalidInputError, SpectralTranscoderError
from spectral_transcoder.metadata import Label

MODES = ["api", "cli"]


@pytest.fixture(scope="module")
def tiny(tiny: dict[str, Path], tmp_path_factory) -> dict[str, Path]:
    """The session's tiny models, and two classifiers with 521 long labels (a resume with another model)."""
    d = tmp_path_factory.mktemp("tiny_big")
    many = [Label(i, f"/m/{i:05d}", f"a rather long class name number {i}") for i in range(521)]
    return {
        **tiny,
        "big_a": make_classifier(d / "big_a.onnx", meta=classifier_metadata("big-a", labels=many), seed=1),
        "big_b": make_classifier(d / "big_b.onnx", meta=classifier_metadata("big-b", labels=many[::-1]), seed=2),
    }


def _dbfs(n: int, seed: int = 0) -> np.ndarray:
    return levels(n, seed=seed) - 100.0  # -70..-30 dBFS


def _sensor(
    folder: Path,
    name: str,
    n: int = 8 * 40,
    seed: int = 0,
    lv: np.ndarray | None = None,
    times: np.ndarray | None = None,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lv = _dbfs(n, seed) if lv is None else lv
    return write_parquet(folder / f"{name}.parquet", grid_times(len(lv)) if times is None else times, lv)


class Result:
    """What one `process` call gave, through the API or the CLI."""

    def __init__(
        self, summary=None, error: Exception | None = None, rc: int | None = None, out: str = "", err: str = ""
    ):
        self.summary, self.error, self.rc, self.out, self.err = summary, error, rc, out, err

    @property
    def failed(self) -> bool:
        return self.error is not None or (self.rc is not None and self.rc != 0)

    @property
    def message(self) -> str:
        return str(self.error) if self.error is not None else self.err


def _process(
    mode: str, paths, out, tiny, capsys=None, *, classifier: str = "clf", progress: bool = False, **kw
) -> Result:
    """Run `process` through the API (errors caught) or `cli.main` (output captured)."""
    kw.setdefault("block_seconds", 20)
    if mode == "api":
        try:
            return Result(
                summary=P.process(
                    [str(p) for p in paths],
                    out,
                    classifier=tiny[classifier],
                    transcoder=tiny["tr"],
                    progress=progress,
                    **kw,
                )
            )
        except SpectralTranscoderError as exc:
            return Result(error=exc)
    argv = ["process", *map(str, paths), "-o", str(out), "-c", str(tiny[classifier]), "-t", str(tiny["tr"])]
    for k, v in kw.items():
        flag = "--" + k.replace("_", "-")
        argv += [flag] if v is True else [flag, str(v)]
    if not progress:
        argv.append("--no-progress")
    capsys.readouterr()
    rc = cli.main(argv)
    got = capsys.readouterr()
    return Result(rc=rc, out=got.out, err=got.err)


def _listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ------------------------------------------------------------------ 1. the output folder
@pytest.mark.parametrize("mode", MODES)
def test_resume_cleanup_touches_only_this_runs_files(tmp_path, tiny, capsys, mode):
    """Resume cleanup deletes the run's own leftovers (its temporary part, a part renamed but
    never recorded) and nothing else: not the user's *.tmp, not a part-NNNNNN.parquet of theirs."""
    src = _sensor(tmp_path / "in", "s0")
    out = tmp_path / "out"
    first = _process(mode, [src], out, tiny, capsys, blocks_per_part=1)
    assert not first.failed, first.message
    ref = archives.read_results(out)
    run_id = json.loads((out / "_run.json").read_text())["run_id"]
    # the user's own files, dropped into the folder between the two runs
    mine = {
        "notes.tmp": b"my notes",
        ".draft.tmp": b"draft",
        "part-000042.parquet": b"the user's own part",
        ".part-000007.parquet.tmp": b"not this run's",
    }
    for name, data in mine.items():
        (out / name).write_bytes(data)
    # this run's leftovers from a kill: a half-written part and a part renamed but not recorded
    (out / f".st-{run_id}-part-000003.parquet.tmp").write_bytes(b"PAR1 half a part")
    pq.write_table(pq.read_table(out / "part-000000.parquet"), out / "part-000005.parquet")
    with pytest.warns(UserWarning, match=r"part-000042\.parquet, which its manifest does not list"):
        second = _process(mode, [src], out, tiny, capsys, blocks_per_part=1)
    assert not second.failed, second.message
    for name, data in mine.items():
        assert (out / name).read_bytes() == data, f"{name} was changed or deleted"
    assert not (out / f".st-{run_id}-part-000003.parquet.tmp").exists()
    assert not (out / "part-000005.parquet").exists()
    assert archives.read_results(out).equals(ref)
    assert not (out / "_lock").exists()


@pytest.mark.parametrize("mode", MODES)
def test_non_empty_folder_that_is_not_an_earlier_run_is_refused(tmp_path, tiny, capsys, mode):
    src = _sensor(tmp_path / "in", "s0")
    out = tmp_path / "my folder"
    out.mkdir()
    (out / "field notes.tmp").write_bytes(b"do not delete")
    (out / "part-000000.parquet").write_bytes(b"a user's file with our name")
    before = _listing(out)
    r = _process(mode, [src], out, tiny, capsys)
    assert r.failed
    assert str(out) in r.message and "not empty" in r.message and "earlier run" in r.message
    assert _listing(out) == before  # nothing written, nothing deleted: no _lock, no _run.json
    if mode == "cli":
        assert "Traceback" not in r.err


def test_output_dot_in_a_working_folder_is_refused(tmp_path, tiny, capsys, monkeypatch):
    """`-o .` in a folder holding the user's files (among them the archive itself) deletes nothing."""
    work = tmp_path / "work"
    src = _sensor(work, "day")
    (work / "analysis.tmp").write_bytes(b"half an hour of work")
    before = _listing(work)
    monkeypatch.chdir(work)
    r = _process("cli", [Path("day.parquet")], Path("."), tiny, capsys)
    assert r.rc == 1 and "'.'" in r.err and "not empty" in r.err
    assert _listing(work) == before and src.exists()


def test_empty_or_new_folder_and_earlier_run_are_accepted(tmp_path, tiny, capsys):
    src = _sensor(tmp_path / "in", "s0")
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "empty", tmp_path / "new" / "deeper"):
        r = _process("api", [src], out, tiny)
        assert not r.failed, r.message
        again = _process("api", [src], out, tiny)  # an earlier run of the same command: resumed
        assert not again.failed and again.summary.blocks_skipped == r.summary.blocks_done


# ------------------------------------------------------------------ 2. an input changed between runs
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("change", ["content", "content_same_mtime", "mtime"])
def test_resume_after_an_input_changed_names_the_file(tmp_path, tiny, capsys, mode, change):
    a = _sensor(tmp_path / "in", "a", seed=1)
    b = _sensor(tmp_path / "in", "b", seed=2)
    out = tmp_path / "out"
    first = _process(mode, [a, b], out, tiny, capsys)
    assert not first.failed, first.message
    entries = archives.read_manifest(out / "_manifest.jsonl")
    recorded = {src: fp for e in entries for src, fp in e.get("inputs", {}).items()}
    st_b = b.stat()
    fp = recorded[str(b.resolve())]
    assert fp["size"] == st_b.st_size and fp["mtime_ns"] == st_b.st_mtime_ns and len(fp["sample_sha256"]) == 64
    rows = archives.read_results(out)
    if change == "mtime":
        os.utime(b, ns=(st_b.st_atime_ns, st_b.st_mtime_ns + 5 * NS))
    else:
        lv = _dbfs(8 * 40, seed=2)
        lv[8 * 3 : 8 * 5] += 12.0  # the sensor's file was re-exported with corrected levels
        _sensor(tmp_path / "in", "b", lv=lv)
        if change == "content_same_mtime":
            os.utime(b, ns=(st_b.st_atime_ns, st_b.st_mtime_ns))
    r = _process(mode, [a, b], out, tiny, capsys)
    assert r.failed
    assert str(b) in r.message and "changed" in r.message and str(a) not in r.message
    if change == "mtime":
        assert "modified" in r.message
    assert archives.read_results(out).equals(rows)  # nothing stale was kept silently, nothing lost
    assert not (out / "_lock").exists()


def test_unchanged_inputs_resume_and_new_inputs_are_recorded(tmp_path, tiny):
    a = _sensor(tmp_path / "in", "a", seed=1)
    b = _sensor(tmp_path / "in", "b", seed=2)
    out = tmp_path / "out"
    _process("api", [a], out, tiny)
    r = _process("api", [a, b], out, tiny)  # a resumed run may be given more files
    assert not r.failed and r.summary.blocks_skipped == 2 and r.summary.blocks_done == 2
    recorded = {src for e in archives.read_manifest(out / "_manifest.jsonl") for src in e.get("inputs", {})}
    assert recorded == {str(a.resolve()), str(b.resolve())}


# ------------------------------------------------------------------ 3. one out-of-range value
def _with_sentinel(folder: Path, name: str, row: int, value: float = 999.0, seed: int = 3) -> Path:
    lv = _dbfs(8 * 40, seed)
    lv[row, 4] = value
    return _sensor(folder, name, lv=lv)


@pytest.mark.parametrize("mode", MODES)
def test_sentinel_level_is_masked_counted_and_the_run_goes_on(tmp_path, tiny, capsys, mode):
    a = _with_sentinel(tmp_path / "in", "a", row=8 * 25 + 3)
    b = _sensor(tmp_path / "in", "b", seed=4)
    out = tmp_path / "out"
    r = _process(mode, [a, b], out, tiny, capsys, windows="1s")
    assert not r.failed, r.message
    t = archives.read_results(out)
    ones = {s: [x["chunks"] for x in t.to_pylist() if x["sensor"] == s] for s in ("a", "b")}
    assert len(ones["a"]) == 40 and len(ones["b"]) == 40
    assert [i for i, c in enumerate(ones["a"]) if c == 0] == [25]  # the sentinel's second, masked like a NaN
    when = str(T0 + np.timedelta64(int((8 * 25 + 3) * 0.125 * NS), "ns"))[:19]
    if mode == "api":
        stats = r.summary.read_stats[str(a.resolve())]
        assert stats["out_of_range_rows"] == 1 and stats["first_out_of_range"].startswith(f"row {8 * 25 + 3}")
        assert when in stats["first_out_of_range"]
    else:
        assert r.rc == 0
        assert f"{a}" in r.err and f"row {8 * 25 + 3}" in r.err and when in r.err and "masked" in r.err


@pytest.mark.parametrize("mode", MODES)
def test_gaps_error_fails_only_that_file_with_its_position(tmp_path, tiny, capsys, mode):
    a = _with_sentinel(tmp_path / "in", "a", row=8 * 25 + 3)
    b = _sensor(tmp_path / "in", "b", seed=4)
    out = tmp_path / "out"
    r = _process(mode, [a, b], out, tiny, capsys, windows="1s", gaps="error")
    t = archives.read_results(out)
    sensors = t.column("sensor").to_pylist()
    assert sensors.count("b") == 40  # the file after the bad one was processed
    # a's seconds before the bad row are kept: 25 classified, then the second it cuts short (not classified)
    assert [x["chunks"] for x in t.to_pylist() if x["sensor"] == "a"] == [1] * 25 + [0]
    when = str(T0 + np.timedelta64(int((8 * 25 + 3) * 0.125 * NS), "ns"))[:19]
    if mode == "api":
        (e,) = r.summary.errors
        assert e["path"] == str(a) and e["position"].startswith(f"row {8 * 25 + 3}") and when in e["position"]
        assert "999" in e["message"]
    else:
        assert r.rc == 1
        assert f"{a}, row {8 * 25 + 3}" in r.err and when in r.err
        assert "1 of 2 files failed" in r.err


def test_python_m_cli_exit_status_and_summary(tmp_path, tiny):
    a = _with_sentinel(tmp_path / "in", "a", row=30)
    b = _sensor(tmp_path / "in", "b", seed=4)
    args = [
        sys.executable,
        "-m",
        "spectral_transcoder",
        "process",
        str(a),
        str(b),
        "-o",
        str(tmp_path / "out"),
        "-c",
        str(tiny["clf"]),
        "-t",
        str(tiny["tr"]),
        "--block-seconds",
        "20",
        "--no-progress",
        "--gaps",
        "error",
    ]
    r = subprocess.run(args, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"{a}, row 30" in r.stderr and "1 of 2 files failed" in r.stderr


@pytest.mark.parametrize("threads", [1, 2])
def test_a_block_the_models_refuse_fails_its_source_only(tmp_path, tiny, threads):
    """A block that the block function refuses (here a level the PINV cannot take, in blocks
    given directly, past every reader check) fails its source at that block, with its
    time; the blocks before it and the other sources are kept, in order, with any threads."""
    a = _sensor(tmp_path / "in", "a", n=8 * 100, seed=5)
    b = _sensor(tmp_path / "in", "b", n=8 * 40, seed=6)

    def blocks():
        for blk in archives.open_many([a, b], block_seconds=20):
            if blk.sensor == "a" and blk.position.index == 2:
                lv = np.array(blk.levels)
                lv[5, 3] = 1000.0
                lv.setflags(write=False)
                blk = dataclasses.replace(blk, levels=lv)
            yield blk

    out = tmp_path / f"out{threads}"
    s = P.process(
        blocks(),
        out,
        classifier=tiny["clf"],
        transcoder=tiny["tr"],
        progress=False,
        n_threads=threads,
        blocks_per_part=1,
    )
    (e,) = s.errors
    assert e["path"] == str(a.resolve()) and e["position"].startswith("block 2 (2024-03-01T12:00:40")
    assert "far above full scale" in e["message"] and e["blocks_read"] == 2  # the block function's level check
    t = archives.read_results(out)
    per = [(x["sensor"], x["block"]) for x in t.to_pylist()]
    assert sorted({p for p in per if p[0] == "a"}) == [("a", 0), ("a", 1)]
    assert sorted({p for p in per if p[0] == "b"}) == [("b", 0), ("b", 1)]


# ------------------------------------------------------------------ 11. a resume with another model
@pytest.mark.parametrize("mode", MODES)
def test_resume_with_another_model_says_what_differs_briefly(tmp_path, tiny, capsys, mode):
    src = _sensor(tmp_path / "in", "s0")
    out = tmp_path / "out"
    assert not _process(mode, [src], out, tiny, capsys, classifier="big_a").failed
    r = _process(mode, [src], out, tiny, capsys, classifier="big_b")
    assert r.failed
    msg = r.message
    assert len(msg) < 1200, f"{len(msg)} characters: {msg[:300]}..."
    assert re.search(r"classifier: was 'big-a@[0-9a-f]+', now 'big-b@[0-9a-f]+'", msg), msg
    assert "labels: " in msg and "a rather long class name" not in msg
    assert str(out) in msg


def test_resume_with_other_read_options_names_the_option(tmp_path, tiny):
    src = _sensor(tmp_path / "in", "s0")
    out = tmp_path / "out"
    _process("api", [src], out, tiny, block_seconds=20)
    r = _process("api", [src], out, tiny, block_seconds=10)
    assert r.failed and re.search(r"block_seconds: was 20(\.0)?, now 10(\.0)?", r.message), r.message
    assert len(r.message) < 600


# ------------------------------------------------------------------ 14. optional dependencies missing
@pytest.fixture
def no_pyarrow(monkeypatch):
    """Make `import pyarrow` (and its submodules) fail, as without the [archives] extra."""
    for name in [m for m in sys.modules if m == "pyarrow" or m.startswith("pyarrow.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "pyarrow", None)


@pytest.mark.parametrize("mode", MODES)
def test_missing_pyarrow_names_the_extra_and_leaves_no_lock(tmp_path, tiny, capsys, mode, no_pyarrow):
    src = tmp_path / "in.parquet"
    src.write_bytes(b"PAR1")  # not read: the check comes first
    out = tmp_path / "out"
    r = _process(mode, [src], out, tiny, capsys)
    assert r.failed
    assert 'pip install "spectral-transcoder[archives]"' in r.message and "pyarrow" in r.message
    if mode == "api":
        assert isinstance(r.error, ImportError)
    else:
        assert "Traceback" not in r.err
    assert not (out / "_lock").exists() and not out.exists()


def test_missing_matplotlib_names_the_plot_extra(tmp_path, tiny, capsys, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    src = _sensor(tmp_path / "in", "s0")
    rc = cli.main(["plot", str(src), "-o", str(tmp_path / "p.png"), "-c", str(tiny["clf"]), "-t", str(tiny["tr"])])
    err = capsys.readouterr().err
    assert rc == 1 and 'pip install "spectral-transcoder[plot]"' in err and "Traceback" not in err
    assert not (tmp_path / "p.png").exists()


def test_an_error_mid_run_leaves_no_lock(tmp_path):
    src = _sensor(tmp_path / "in", "s0")
    out = tmp_path / "out"

    def fn(block):
        if block.position.index == 1:
            raise RuntimeError("the block function crashed")
        return {"offset_s": [0.0], "window_s": [1.0], "x": [1.0]}

    with pytest.raises(RuntimeError, match="crashed"):
        archives.run_blocks(archives.open_many([src], block_seconds=10), fn, out, progress=False)
    assert not (out / "_lock").exists()
    assert archives.read_results(out).num_rows == 1  # the block before the error is kept
    with pytest.raises(InvalidInputError, match="other options"):
        archives.run_blocks(archives.open_many([src], block_seconds=20), fn, out, progress=False)
    assert not (out / "_lock").exists()


# ------------------------------------------------------------------ 20. the progress report
@pytest.mark.parametrize("kind", ["parquet", "audio"])
def test_progress_bar_names_the_input_kind_and_ends_at_100(tmp_path, tiny, capsys, kind):
    if kind == "parquet":
        lv = _dbfs(8 * 40 + 3, seed=7)
        lv[[10, 11, 200]] = np.nan  # bad rows: read, but not valid frames
        src = _sensor(tmp_path / "in", "s0", lv=lv)
        label = "parquet archives"
    else:
        sf = pytest.importorskip("soundfile")
        x = (np.random.default_rng(0).standard_normal(32000 * 21 + 1234) * 0.05).astype(np.float32)
        src = tmp_path / "in" / "rec.wav"
        src.parent.mkdir()
        sf.write(src, x, 32000, subtype="PCM_16")
        label = "audio"
    r = _process("cli", [src], tmp_path / "out", tiny, capsys, progress=True)
    assert r.rc == 0, r.err
    bar = [x for x in r.err.replace("\r", "\n").splitlines() if "%|" in x][-1]
    assert bar.startswith(f"{label}: 100%"), r.err
    assert "audio:" not in r.err or kind == "audio"


def _shares(line: str) -> list[list[int]]:
    groups = []
    for group in line.split(";"):
        pct = [int(p) for p in re.findall(r"\((\d+)%\)", group)]
        if pct:
            groups.append(pct)
    return groups


@pytest.mark.parametrize("threads", [1, 2])
def test_stage_shares_add_up_to_100(tmp_path, tiny, capsys, threads):
    src = _sensor(tmp_path / "in", "s0", n=8 * 80)
    r = _process("cli", [src], tmp_path / "out", tiny, capsys, threads=threads)
    assert r.rc == 0, r.err
    (line,) = [x for x in r.out.splitlines() if x.startswith("time: ")]
    groups = _shares(line)
    assert groups and all(sum(g) == 100 for g in groups), line
    assert len(groups) == (1 if threads == 1 else 2), line


# ------------------------------------------------------------------ 22. outages are visible
def _outage_archive(folder: Path) -> tuple[Path, int]:
    """30 s, a 5-min outage (longer than max_mask_gap_s), 30 s; returns the gap in ns."""
    n = 8 * 30
    t = np.concatenate([grid_times(n), grid_times(n, start=T0 + np.timedelta64(330, "s"))])
    return _sensor(folder, "s0", lv=_dbfs(2 * n, seed=8), times=t), 300 * NS


@pytest.mark.parametrize("mode", MODES)
def test_an_outage_is_a_gap_row_not_silence(tmp_path, tiny, capsys, mode):
    src, gap_ns = _outage_archive(tmp_path / "in")
    out = tmp_path / "out"
    r = _process(mode, [src], out, tiny, capsys, block_seconds=10)
    assert not r.failed, r.message
    rows = archives.read_results(out).to_pylist()
    gaps = [x for x in rows if x["window"] == "gap"]
    assert len(gaps) == 1
    (g,) = gaps
    assert g["window_start"].timestamp() == pytest.approx((T0 + np.timedelta64(30, "s")).astype(np.int64) / NS)
    assert g["window_s"] == pytest.approx(gap_ns / NS)
    assert g["chunks"] == 0 and g["top_labels"] is None and g["top_scores"] is None
    # every second from the first frame to the last is accounted for: classified, marked or missing
    ones = [x for x in rows if x["window"] == "1s"]
    covered = sum(x["window_s"] for x in ones) + g["window_s"]
    assert covered == pytest.approx(360.0)


def test_gap_rows_under_split_and_omit(tmp_path, tiny):
    lv = _dbfs(8 * 30, seed=9)
    lv[100] = np.nan  # split: the bad row is left out and a new segment starts after it
    src = _sensor(tmp_path / "in", "s0", lv=lv)
    r = _process("api", [src], tmp_path / "split", tiny, gaps="split", windows="1s")
    gaps = [x for x in archives.read_results(tmp_path / "split").to_pylist() if x["window"] == "gap"]
    assert [(x["window_s"], x["chunks"]) for x in gaps] == [(0.125, 0)]
    assert gaps[0]["window_start"].timestamp() == pytest.approx(T0.astype(np.int64) / NS + 100 * 0.125)
    big, _ = _outage_archive(tmp_path / "in2")
    r = _process("api", [big], tmp_path / "omit", tiny, gap_rows="omit", block_seconds=10)
    assert not r.failed
    assert "gap" not in set(archives.read_results(tmp_path / "omit").column("window").to_pylist())


# ------------------------------------------------------------------ issue 15, item 5, on the archive path
@pytest.mark.parametrize("mode", MODES)
def test_spl_read_as_dbfs_fails_that_file_with_the_way_out(tmp_path, tiny, capsys, mode):
    """A calibrated dB SPL archive read as dBFS (+100 dB) used to classify as loud music with
    exit 0; now that file fails, naming the level options, and the other files go on."""
    a = _sensor(tmp_path / "in", "a", lv=_dbfs(8 * 40, seed=1) + 100.0)
    b = _sensor(tmp_path / "in", "b", seed=2)
    out = tmp_path / "out"
    r = _process(mode, [a, b], out, tiny, capsys, windows="1s")
    t = archives.read_results(out)
    assert set(t.column("sensor").to_pylist()) == {"b"}
    if mode == "api":
        (e,) = r.summary.errors
        text = f"{e['path']}: {e['message']}"
    else:
        text = r.err
    assert str(a) in text and "far above full scale" in text
    if mode == "api":
        assert "reference='auto'" in text
    else:
        assert r.rc == 1 and "--reference auto" in text and "--spl-offset" in text
    ok = _process(mode, [a], tmp_path / "auto", tiny, capsys, windows="1s", reference="auto")  # the way out
    assert not ok.failed, ok.message
