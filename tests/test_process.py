"""process(): archives -> Parquet predictions. Plumbing on tiny ONNX models (no torch), a real
kill -9 of the CLI and its resume, damaged archives, and the real YAMNet pipeline (torch +
../shared) against classify()."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import spectral_transcoder as st
from _tiny_models import classifier_metadata, make_classifier, make_transcoder
from archives_testutil import NS, T0, grid_times, levels, write_noisecapture, write_parquet
from conftest import kill_9_after_manifest_lines
from spectral_transcoder import archives, cli
from spectral_transcoder.archives import process as P
from spectral_transcoder.errors import InvalidInputError, SpecMismatchError
from spectral_transcoder.models import classify

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
PACKAGE_PARENT = Path(st.__file__).resolve().parent.parent
LEAD = list(archives.LEADING_COLUMNS)
OWN = ["window", "chunks", "top_labels", "top_scores", "top_indices"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """This module's own copies of the tiny models (not the session's): the load-count test needs
    model files that no other test module has loaded into the process-wide model cache."""
    d = tmp_path_factory.mktemp("tiny_process")
    return {
        "tr": make_transcoder(d / "tr.onnx"),
        "clf": make_classifier(d / "clf.onnx"),
        "clf_yamnet": make_classifier(
            d / "clf_y.onnx", meta=classifier_metadata("tiny-y", mel="yamnet_torchport"), frames=96
        ),
    }


def _dbfs(n: int, seed: int = 0) -> np.ndarray:
    return levels(n, seed=seed) - 100.0  # -70..-30 dBFS


def _sensor(
    tmp_path: Path,
    name: str = "s0",
    n: int = 8 * 45,
    seed: int = 0,
    gap_at: int | None = 150,
    nan_row: int | None = 20,
    start=T0,
) -> tuple[Path, np.ndarray]:
    lv = _dbfs(n, seed)
    if nan_row is not None:
        lv[nan_row] = np.nan
    t = grid_times(n, start=start)
    if gap_at is not None:
        t[gap_at:] += 5 * int(0.125 * NS)  # 5 missing frames
    return write_parquet(tmp_path / f"{name}.parquet", t, lv), lv


def _run(paths, out, tiny, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("block_seconds", 20)
    return P.process([str(p) for p in paths], out, classifier=tiny["clf"], transcoder=tiny["tr"], **kw)


def _rows(table: pa.Table, window: str) -> list[dict]:
    return [r for r in table.to_pylist() if r["window"] == window]


# ------------------------------------------------------------------ rows and metadata
def test_rows_match_classify_and_gaps_are_not_classified(tmp_path, tiny):
    path, lv = _sensor(tmp_path)
    s = _run([path], tmp_path / "out", tiny, probabilities=True, top_k=3)
    assert s.blocks_done == 3 and s.errors == [] and s.transcoder.startswith("tiny-cnn@")
    t = archives.read_results(tmp_path / "out")
    assert t.column_names == LEAD + OWN + ["probs"]
    assert t.schema.field("probs").type == pa.list_(pa.float32(), 5)
    ones = _rows(t, "1s")
    # 360 rows + 5 masked frames = 365 frames -> 46 chunks; chunk 2 (NaN row 20), chunks 18-19
    # (the 5 missing frames 150..154) and chunk 45 (end padding) are not classified
    assert len(ones) == 46
    skipped = [i for i, r in enumerate(ones) if r["chunks"] == 0]
    assert skipped == [2, 18, 19, 45]
    for i in skipped:
        assert ones[i]["top_labels"] is None and ones[i]["probs"] is None
    starts = [r["window_start"].timestamp() for r in ones]
    np.testing.assert_allclose(np.diff(starts), 1.0)  # the masked gap keeps the time grid
    # the classified rows equal classify() on the same chunks
    grid = np.full((365, 29), np.nan, np.float32)
    keep = np.r_[np.arange(150), np.arange(155, 365)]
    grid[keep] = lv
    ok = [i for i in range(46) if i not in skipped]
    res = classify(grid[:360].reshape(45, 8, 29)[ok].reshape(-1, 29), classifier=tiny["clf"], transcoder=tiny["tr"])
    got = np.array([ones[i]["probs"] for i in ok], np.float32)
    np.testing.assert_allclose(got, res.probs, rtol=0, atol=1e-6)
    for i, row in zip(ok, got):
        order = np.argsort(-row, kind="stable")[:3]
        assert ones[i]["top_indices"] == order.tolist()
        assert ones[i]["top_labels"] == [res.labels[j].name for j in order]
        np.testing.assert_allclose(ones[i]["top_scores"], row[order], atol=1e-7)
    # 10-s means: the mean of the window's classified seconds; windows never span two blocks
    tens = _rows(t, "10s")
    assert [(r["window_s"], r["chunks"]) for r in tens] == [(10.0, 9), (10.0, 8), (10.0, 10), (10.0, 10), (6.0, 5)]
    for g, r in enumerate(tens):
        members = [ones[i]["probs"] for i in range(10 * g, min(10 * g + 10, 46)) if ones[i]["chunks"]]
        np.testing.assert_allclose(r["probs"], np.mean(members, axis=0), atol=1e-6)
    for col in ("top_scores", "probs"):
        vals = pa.compute.list_flatten(t.column(col)).to_numpy()
        assert np.isfinite(vals).all()  # never NaN probabilities
    meta = archives.read_run_info(tmp_path / "out")["options"]
    pm = meta["user"]["process"]
    assert pm["transcoder"] == s.transcoder and pm["classifier"] == s.classifier
    assert len(pm["transcoder_sha256"]) == 64 and pm["mel_spec"] == "pann" and pm["band_spec"] == "cense_fast"
    assert pm["windows"] == "both" and pm["gap_rows"] == "mark" and pm["top_k"] == 3
    assert [lb[2] for lb in pm["labels"]] == [lb.name for lb in res.labels]
    assert meta["input"]["block_options"]["gaps"] == "mask"
    assert meta["input"]["block_options"]["reference"] == "dBFS"


def test_window_and_gap_options(tmp_path, tiny):
    path, _ = _sensor(tmp_path)
    _run([path], tmp_path / "both", tiny)
    both = archives.read_results(tmp_path / "both")
    assert "probs" not in both.column_names
    _run([path], tmp_path / "one", tiny, windows="1s", gap_rows="omit")
    one = archives.read_results(tmp_path / "one")
    assert set(one.column("window").to_pylist()) == {"1s"} and one.num_rows == 42
    assert min(one.column("chunks").to_pylist()) == 1
    _run([path], tmp_path / "ten", tiny, windows="10s")
    ten = archives.read_results(tmp_path / "ten")
    assert ten.to_pylist() == _rows(both, "10s")
    with pytest.raises(InvalidInputError, match="multiple of 10"):
        _run([path], tmp_path / "x", tiny, block_seconds=15)
    assert not (tmp_path / "x").exists()  # refused before any work
    _run([path], tmp_path / "x1", tiny, block_seconds=15, windows="1s")  # fine without 10-s windows
    for bad in ({"windows": "5s"}, {"gap_rows": "drop"}, {"top_k": 0}, {"batch_size": 0}, {"workers": 0}):
        with pytest.raises(InvalidInputError):
            _run([path], tmp_path / "y", tiny, **bad)
    with pytest.raises(InvalidInputError, match="top_k=9 but the classifier"):
        _run([path], tmp_path / "y", tiny, top_k=9)


def test_speed_options_do_not_change_rows(tmp_path, tiny):
    path, _ = _sensor(tmp_path, n=8 * 70)
    _run([path], tmp_path / "a", tiny, probabilities=True, n_threads=2)
    _run([path], tmp_path / "b", tiny, probabilities=True, n_threads=1, blocks_per_part=1)
    a = archives.read_results(tmp_path / "a")
    assert a.equals(archives.read_results(tmp_path / "b"))  # threads and part sizes: identical rows
    # another ORT batch size may move probabilities in their last bits (ORT blocks its sums by shape)
    _run([path], tmp_path / "c", tiny, probabilities=True, batch_size=3)
    c = archives.read_results(tmp_path / "c")
    assert c.drop_columns(["top_scores", "probs"]).equals(a.drop_columns(["top_scores", "probs"]))
    pa_, pc = (np.array([p for p in t.column("probs").to_pylist() if p is not None]) for t in (a, c))
    np.testing.assert_allclose(pc, pa_, rtol=0, atol=1e-6)


def test_block_threads_commit_in_order_and_mask_an_impossible_level(tmp_path, tiny):
    """n_threads=2 runs two blocks at once; rows still come in block order, as one thread
    gives them. A level far beyond any sound is masked like a NaN row and counted, never a
    reason to stop the run (a block the models refuse fails only its file:
    test_first_day_process.py)."""
    lv = _dbfs(8 * 200, seed=5)
    lv[8 * 130, 3] = 1000.0  # in block 6 of 20-s blocks
    loud = write_parquet(tmp_path / "loud.parquet", grid_times(len(lv)), lv)
    outs = {}
    for threads in (1, 2):
        out = tmp_path / f"t{threads}"
        s = _run([loud], out, tiny, n_threads=threads, blocks_per_part=1)
        assert s.errors == [] and s.blocks_done == 10
        (stats,) = s.read_stats.values()
        assert stats["out_of_range_rows"] == 1 and stats["first_out_of_range"].startswith("row 1040 (")
        outs[threads] = archives.read_results(out)
    assert outs[2].equals(outs[1]) and sorted(set(outs[2].column("block").to_pylist())) == list(range(10))
    ones = _rows(outs[1], "1s")
    assert [i for i, r in enumerate(ones) if r["chunks"] == 0] == [130]
    clean = write_parquet(tmp_path / "clean.parquet", grid_times(len(lv)), _dbfs(len(lv), seed=5))
    ok = _run([clean], tmp_path / "fine", tiny, n_threads=2)
    assert ok.workers == 2 and "wait" in ok.stages and ok.blocks_done == 10


def test_process_block_is_pure_and_models_load_once(tmp_path, tiny):
    path, _ = _sensor(tmp_path)
    task = P.make_task(classifier=tiny["clf"], transcoder=tiny["tr"], probabilities=True, n_threads=1)
    block = next(iter(archives.open_archive(path, block_seconds=20)))
    a, b = P.process_block(block, task), P.process_block(block, task)
    assert a.equals(b) and a.num_rows == 20 + 2
    key = P._cache_key(task)
    assert P.load_counts()[key] == 1
    assert P.loaded_models(task)[0] is P.loaded_models(task)[0]
    # the task is small and picklable (it travels to Dask workers); the models do not
    import pickle

    assert pickle.loads(pickle.dumps(task)) == task and len(pickle.dumps(task)) < 2000


def test_pinv_transcoder_and_registry_default(tmp_path, tiny):
    path, _ = _sensor(tmp_path, gap_at=None, nan_row=None, n=8 * 20)
    s = P.process(
        [path], tmp_path / "p", classifier=tiny["clf"], transcoder="pinv:pann", progress=False, block_seconds=20
    )
    assert s.transcoder == "pinv-pann" and s.rows == 22
    with pytest.raises(st.ModelError, match="no default transcoder"):
        P.process([path], tmp_path / "q", classifier=tiny["clf"], progress=False)


# ------------------------------------------------------------------ refusals before any work
def test_noisecapture_archive_fails_before_any_work(tmp_path, tiny):
    good, _ = _sensor(tmp_path)
    t_ms = (T0.astype(np.int64) // 1_000_000) + np.arange(30) * 1000
    nc = write_noisecapture(tmp_path / "track.zip", t_ms, levels(30, n_bands=23))
    with pytest.raises(SpecMismatchError, match=r"track\.zip.*'noisecapture'.*23 bands.*'cense_fast'.*29 bands"):
        _run([good, nc], tmp_path / "out", tiny)
    assert not (tmp_path / "out").exists()


def test_transcoder_classifier_mismatch(tmp_path, tiny):
    path, _ = _sensor(tmp_path)
    with pytest.raises(SpecMismatchError, match="'pann' but the classifier .* expects 'yamnet_torchport'"):
        P.process([path], tmp_path / "out", classifier=tiny["clf_yamnet"], transcoder=tiny["tr"], progress=False)
    with pytest.raises(st.ModelError, match="does not exist"):
        P.process([path], tmp_path / "out", classifier=tmp_path / "nope.onnx", transcoder=tiny["tr"])


# ------------------------------------------------------------------ damaged archives
def test_damaged_files_are_reported_and_the_rest_processed(tmp_path, tiny):
    good, _ = _sensor(tmp_path, "good")
    times = grid_times(400)
    times[[200, 201]] = times[[201, 200]]
    backwards = write_parquet(tmp_path / "backwards.parquet", times, _dbfs(400))
    dup_t = grid_times(400)
    dup_t[300] = dup_t[299]
    dups = write_parquet(tmp_path / "dups.parquet", dup_t, _dbfs(400))
    data = good.read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    wrong = write_parquet(tmp_path / "wrong.parquet", grid_times(80), _dbfs(80)[:, :28])
    paths = [good, backwards, tmp_path / "cut.parquet", dups, wrong]
    s = _run(paths, tmp_path / "out", tiny)
    errs = {Path(e["path"]).name: e for e in s.errors}
    assert set(errs) == {"backwards.parquet", "cut.parquet", "dups.parquet", "wrong.parquet"}
    assert (
        errs["backwards.parquet"]["position"].startswith("row 201")
        and "backwards" in errs["backwards.parquet"]["message"]
    )
    # rows 0..159 (one whole block), then rows 160..200 read before the bad row: a short last block
    assert errs["backwards.parquet"]["blocks_read"] == 2
    assert errs["cut.parquet"]["position"] == "file footer"
    assert (
        errs["dups.parquet"]["position"].startswith("row 300")
        and 'duplicates="drop"' in errs["dups.parquet"]["message"]
    )
    assert "28 bands" in errs["wrong.parquet"]["message"] or "has 28" in errs["wrong.parquet"]["message"]
    t = archives.read_results(tmp_path / "out")
    by_sensor = {k: t.column("sensor").to_pylist().count(k) for k in set(t.column("sensor").to_pylist())}
    # 1-s rows + 10-s rows; the short last blocks: backwards rows 160..200 (5 s + 1 frame -> 6 + 1 rows),
    # dups rows 160..299 (17.5 s -> 18 + 2 rows)
    assert by_sensor == {"good": 46 + 5, "backwards": 20 + 2 + 6 + 1, "dups": 20 + 2 + 18 + 2}
    # the documented repair for duplicates: keep the first
    s2 = _run([dups], tmp_path / "out2", tiny, duplicates="drop")
    assert s2.errors == [] and s2.blocks_done == 3


# ------------------------------------------------------------------ the CLI, kill -9 and resume
def _cli_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE_PARENT), os.environ.get("PYTHONPATH", "")])}


def test_cli_process_and_alias(tmp_path, tiny, capsys):
    path, _ = _sensor(tmp_path)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"garbage")
    argv = [
        str(path),
        str(bad),
        "-o",
        str(tmp_path / "out"),
        "-c",
        str(tiny["clf"]),
        "-t",
        str(tiny["tr"]),
        "--block-seconds",
        "20",
        "--no-progress",
        "--top-k",
        "2",
        "--reference",
        "SPL",
        "--spl-offset",
        "94",
        "--threads",
        "2",
    ]
    assert cli.main(["process", *argv]) == 1  # a file failed; the other was processed
    out, err = capsys.readouterr()
    assert "3 blocks" in out and "x real time" in out and "tiny-cnn@" in out and "cnn" in out
    assert "2 blocks at once (threads)" in out
    assert "bad.parquet, file footer" in err
    t = archives.read_results(tmp_path / "out")
    assert t.num_rows == 51 and set(t.column("level_offset_db").to_pylist()) == {-94.0}
    assert cli.main(["classify", *argv]) == 1  # the alias resumes the same output
    assert "resumed: 3 blocks were already done" in capsys.readouterr().out
    assert archives.read_results(tmp_path / "out").equals(t)


def test_kill_9_then_resume_gives_the_same_rows(tmp_path, tiny):
    paths = []
    for i in range(3):  # 3 sensors x 30 min = 540 blocks of 10 s, one part per block
        lv = _dbfs(8 * 1800, seed=i)
        lv[100 * (i + 1)] = np.nan
        paths.append(write_parquet(tmp_path / f"sensor{i}.parquet", grid_times(8 * 1800, start=T0), lv))
    common = [
        "-c",
        str(tiny["clf"]),
        "-t",
        str(tiny["tr"]),
        "--block-seconds",
        "10",
        "--no-progress",
        "--probabilities",
        "--threads",
        "1",
    ]
    ref = tmp_path / "ref"
    assert cli.main(["process", *map(str, paths), "-o", str(ref), *common]) == 0
    out = tmp_path / "out"
    args = [
        sys.executable,
        "-m",
        "spectral_transcoder",
        "process",
        *map(str, paths),
        "-o",
        str(out),
        *common,
        "--blocks-per-part",
        "1",
    ]
    kill_9_after_manifest_lines(
        args,
        out / "_manifest.jsonl",
        20,
        env=_cli_env(),
        timeout=60,
        poll=0.005,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    n_ref = archives.read_results(ref).num_rows
    assert 0 < archives.read_results(out).num_rows < n_ref
    r = subprocess.run(args, env=_cli_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "resumed:" in r.stdout
    key = [("source", "ascending"), ("window", "ascending"), ("window_start", "ascending")]
    got, want = archives.read_results(out).sort_by(key), archives.read_results(ref).sort_by(key)
    assert got.equals(want)
    keys = list(zip(*(got.column(c).to_pylist() for c in ("source", "window", "window_start"))))
    assert len(set(keys)) == len(keys) == n_ref  # no loss, no duplicates


# ------------------------------------------------------------------ the real pipeline


@pytest.mark.torch
@pytest.mark.shared
def test_real_yamnet_archive_equals_classify(tmp_path, real_yamnet, golden_clip):
    tr_path, clf_path = real_yamnet
    tho = golden_clip["tho_db_chunks"].astype(np.float32).reshape(-1, 29)  # 10 s, Cense "+26" levels
    lv = np.concatenate([tho, tho - 6.0, tho + 3.0])  # 30 s
    lv[100] = np.nan
    path = write_parquet(tmp_path / "clip.parquet", grid_times(len(lv)), lv)
    s = P.process(
        [path],
        tmp_path / "out",
        classifier=clf_path,
        transcoder=tr_path,
        progress=False,
        block_seconds=10,
        probabilities=True,
        reference="SPL",
        spl_offset=26.0,
    )
    assert s.blocks_done == 3 and s.errors == []
    t = archives.read_results(tmp_path / "out")
    ones = _rows(t, "1s")
    assert [r["chunks"] for r in ones].count(0) == 1 and ones[12]["chunks"] == 0  # frame 100 is in chunk 12
    ok = [i for i in range(30) if i != 12]
    res = classify((lv - 26.0).reshape(30, 8, 29)[ok].reshape(-1, 29), classifier=clf_path, transcoder=tr_path)
    np.testing.assert_allclose([ones[i]["probs"] for i in ok], res.probs, rtol=0, atol=1e-6)
    assert len(ones[0]["probs"]) == 521
    assert (
        json.loads(json.dumps(archives.read_run_info(tmp_path / "out")))["options"]["input"]["block_options"][
            "spl_offset"
        ]
        == 26.0
    )


# ------------------------------------------------------------------ bench
def test_level_archive_and_cli_bench(tmp_path, tiny, capsys):
    import pyarrow.parquet as pq

    from spectral_transcoder.cli_process import make_level_archive

    clips = [_dbfs(37, seed=1), _dbfs(50, seed=2)]
    path = make_level_archive(tmp_path / "a.parquet", clips, seconds=100, row_group_s=30, seed=3)
    pf = pq.ParquetFile(path)
    assert pf.metadata.num_rows == 800 and pf.metadata.num_row_groups == 4
    t = pf.read()
    ns = t.column("timestamp").cast(pa.int64()).to_numpy()
    assert (np.diff(ns) == 125_000_000).all()
    lv = np.stack([t.column(i + 1).to_numpy() for i in range(29)], axis=1)
    # loops of the clips with a gain offset per repetition and small noise
    first = min((lv[: len(c)] - c for c in clips), key=np.std)  # whichever clip the shuffle put first
    assert np.std(first) < 1.0 and abs(np.mean(first)) < 12.5
    assert (
        cli.main(
            ["bench", "-c", str(tiny["clf"]), "-t", str(tiny["tr"]), "--minutes", "0.5", "--dir", str(tmp_path / "b")]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "single process:" in out and "x real time (30 s in" in out and "RSS peak" in out and "cnn" in out
