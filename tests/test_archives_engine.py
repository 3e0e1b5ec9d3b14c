"""The resumable block engine: output rows and metadata, crash points, resume, a real kill -9."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import spectral_transcoder as st
from archives_testutil import NS, T0, grid_times, levels, per_second, write_parquet
from conftest import kill_9_after_manifest_lines
from spectral_transcoder import archives

TESTS = Path(__file__).resolve().parent
PACKAGE_PARENT = Path(st.__file__).resolve().parent.parent  # the child imports the package this process uses


def _archive(tmp_path: Path, n_files: int = 3, frames: int = 2000) -> list[Path]:
    paths = []
    for i in range(n_files):
        lv = levels(frames, seed=i)
        lv[100 + i] = np.nan
        times = grid_times(frames, start=T0 + np.timedelta64(i, "D"))
        times[frames // 2 :] += 5 * int(0.125 * NS)  # a gap of 5 frames
        paths.append(write_parquet(tmp_path / f"sensor{i}.parquet", times, lv))
    return paths


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([("source", "ascending"), ("window_start", "ascending")])


def test_run_writes_rows_and_metadata(tmp_path):
    paths = _archive(tmp_path, n_files=2, frames=500)
    blocks = archives.open_many(paths, block_seconds=10, reference="SPL", spl_offset=90.0)
    out = tmp_path / "out"
    summary = archives.run_blocks(
        blocks, per_second, out, progress=False, blocks_per_part=3, metadata={"models": ["test-fn"]}
    )
    # 500 frames + 5 masked = 505 -> blocks of 80 frames: 6 full + 1 of 25 padded to 32, per file
    assert summary.blocks_done == 14 and summary.blocks_skipped == 0 and summary.errors == []
    assert summary.audio_seconds == pytest.approx(2 * 499 * 0.125) and summary.real_time_factor > 0
    table = archives.read_results(out)
    assert table.column_names[:7] == list(archives.LEADING_COLUMNS)
    assert table.column_names[7:] == ["mean_db", "valid_fraction"]
    assert table.num_rows == summary.rows == 2 * 64
    assert table.schema.field("window_start").type == pa.timestamp("ns", tz="UTC")
    first = table.slice(0, 1).to_pylist()[0]
    assert first["source"] == str(paths[0].resolve()) and first["sensor"] == "sensor0" and first["block"] == 0
    assert first["window_s"] == 1.0 and first["level_reference"] == "SPL" and first["level_offset_db"] == -90.0
    starts = table.column("window_start").cast(pa.int64()).to_numpy()[:64]
    np.testing.assert_array_equal(np.diff(starts), np.full(63, NS))  # masked gap keeps the grid
    vf = table.column("valid_fraction").to_numpy()[:64]
    assert vf[12] == 7 / 8 and vf[31] == 3 / 8 and vf[63] == 1 / 8  # NaN row, the 5-frame gap, end padding
    # one row group per block, the run's options in every part
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) == 5 and sum(pq.ParquetFile(p).num_row_groups for p in parts) == 14
    run = json.loads(pq.ParquetFile(parts[0]).schema_arrow.metadata[b"st.run"])
    assert run["options"]["user"] == {"models": ["test-fn"]}
    assert run["options"]["input"]["block_options"]["reference"] == "SPL"
    assert run["options"]["input"]["block_options"]["spl_offset"] == 90.0
    assert archives.read_run_info(out)["options"] == run["options"]
    # the directory is a plain Parquet dataset
    import pyarrow.dataset as ds

    assert ds.dataset(out).to_table().num_rows == table.num_rows
    # running again does nothing: every block is in the manifest
    again = archives.run_blocks(
        archives.open_many(paths, block_seconds=10, reference="SPL", spl_offset=90.0),
        per_second,
        out,
        progress=False,
        blocks_per_part=3,
        metadata={"models": ["test-fn"]},
    )
    assert again.blocks_done == 0 and again.blocks_skipped == 14
    assert archives.read_results(out).equals(table)


def test_resume_refuses_other_options_and_existing_output(tmp_path):
    paths = _archive(tmp_path, n_files=1, frames=200)
    out = tmp_path / "out"
    archives.run_blocks(archives.open_many(paths, block_seconds=10), per_second, out, progress=False)
    with pytest.raises(st.InvalidInputError, match="other options"):
        archives.run_blocks(archives.open_many(paths, block_seconds=20), per_second, out, progress=False)
    with pytest.raises(st.InvalidInputError, match="other options"):
        archives.run_blocks(
            archives.open_many(paths, block_seconds=10), per_second, out, progress=False, metadata={"model": "other"}
        )
    with pytest.raises(st.InvalidInputError, match="already holds results"):
        archives.run_blocks(archives.open_many(paths, block_seconds=10), per_second, out, progress=False, resume=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(st.InvalidInputError, match="not a directory"):
        archives.run_blocks([], per_second, tmp_path / "file", progress=False)


def test_block_function_contract(tmp_path):
    blocks = list(archives.ArrayReader(levels(64).reshape(1, 64, 29), block_seconds=4))

    def run(fn, name):
        return archives.run_blocks(blocks, fn, tmp_path / name, progress=False)

    with pytest.raises(st.InvalidInputError, match="window_s and exactly one of offset_s"):
        run(lambda b: {"offset_s": [0.0], "x": [1]}, "a")
    with pytest.raises(st.InvalidInputError, match="reserved"):
        run(lambda b: {"offset_s": [0.0], "window_s": 1.0, "sensor": ["x"]}, "b")
    with pytest.raises(st.InvalidInputError, match="has 2 rows, others have 1"):
        run(lambda b: {"offset_s": [0.0], "window_s": 1.0, "x": [1, 2]}, "c")
    calls = []

    def changing(b):  # the schema is fixed by the first block
        calls.append(b.position.index)
        return {"offset_s": [0.0], "window_s": 1.0, ("x" if len(calls) == 1 else "y"): [1.0]}

    with pytest.raises(st.InvalidInputError, match="schema is fixed per run"):
        run(changing, "d")
    assert archives.read_results(tmp_path / "d").num_rows == 1  # the first block was committed

    # tables, 2-D columns (e.g. probability vectors), window_start, and empty results
    def probs(b):
        if b.position.index == 1:
            return {"offset_s": [], "window_s": [], "p": np.zeros((0, 3))}
        return pa.table(
            {
                "window_start": pa.array([b.start]).cast(pa.timestamp("ns")),
                "window_s": [4.0],
                "p": pa.array([[0.1, 0.2, 0.7]], pa.list_(pa.float32(), 3)),
            }
        )

    s = run(probs, "e")
    t = archives.read_results(tmp_path / "e")
    assert s.blocks_done == 2 and t.num_rows == 1 and t.column("p").to_pylist() == [pytest.approx([0.1, 0.2, 0.7])]
    s = run(lambda b: {"offset_s": [0.0, 2.0], "window_s": 2.0, "p": np.ones((2, 5), np.float32)}, "f")
    assert archives.read_results(tmp_path / "f").schema.field("p").type == pa.list_(pa.float32(), 5)


def test_fn_error_keeps_finished_blocks_and_rerun_completes(tmp_path):
    paths = _archive(tmp_path, n_files=2, frames=400)
    out = tmp_path / "out"

    def flaky(b):
        if b.sensor == "sensor1" and b.position.index == 2:
            raise RuntimeError("model crashed")
        return per_second(b)

    with pytest.raises(RuntimeError, match="model crashed"):
        archives.run_blocks(archives.open_many(paths, block_seconds=10), flaky, out, progress=False, blocks_per_part=4)
    done = archives.read_results(out)
    assert done.num_rows == 51 + 20  # sensor0's 6 blocks (5 x 10 s + 1 s) and sensor1's first 2: committed
    s = archives.run_blocks(
        archives.open_many(paths, block_seconds=10), per_second, out, progress=False, blocks_per_part=4
    )
    assert s.blocks_skipped == 8 and s.blocks_done == 4
    archives.run_blocks(archives.open_many(paths, block_seconds=10), per_second, tmp_path / "ref", progress=False)
    assert _sorted(archives.read_results(out)).equals(_sorted(archives.read_results(tmp_path / "ref")))


@pytest.mark.parametrize("crash", ["tmp_part", "renamed_part", "torn_manifest"])
def test_every_crash_point_resumes_exactly(tmp_path, crash):
    paths = _archive(tmp_path, n_files=2, frames=400)
    ref_out, out = tmp_path / "ref", tmp_path / "out"
    archives.run_blocks(archives.open_many(paths, block_seconds=10), per_second, ref_out, progress=False)
    ref = _sorted(archives.read_results(ref_out))

    # a run stopped after 5 blocks in parts of 2: two parts committed, the 5th block pending
    part_blocks = list(archives.open_many(paths, block_seconds=10))[:5]
    with archives.ResultWriter(
        out,
        run_info={"options": {"input": archives.open_many(paths, block_seconds=10).describe(), "user": {}}},
        blocks_per_part=2,
    ) as w:
        from spectral_transcoder.archives.engine import _block_info, _result_table

        for b in part_blocks[:4]:
            w.add(b.key, _block_info(b), _result_table(per_second(b), b))
    manifest = out / "_manifest.jsonl"
    lines = manifest.read_bytes().splitlines(keepends=True)
    assert len(lines) == 2
    committed = pq.read_table(out / "part-000001.parquet")
    if crash == "tmp_part":  # killed while writing part 2: a half-written temporary file, named for this run
        run_id = json.loads((out / "_run.json").read_text())["run_id"]
        (out / f".st-{run_id}-part-000002.parquet.tmp").write_bytes(b"PAR1 half a part")
    elif crash == "renamed_part":  # killed after the rename, before the manifest line
        pq.write_table(committed, out / "part-000002.parquet")
    else:  # killed while appending the manifest line of part 1: its line is torn
        manifest.write_bytes(lines[0] + lines[1][:37])
    archives.run_blocks(archives.open_many(paths, block_seconds=10), per_second, out, progress=False, blocks_per_part=2)
    got = _sorted(archives.read_results(out))
    assert got.equals(ref)
    assert not list(out.glob(".*.tmp"))
    import pyarrow.dataset as ds

    assert _sorted(ds.dataset(out).to_table().replace_schema_metadata(None)).equals(ref)  # no orphan left


def test_second_writer_is_refused(tmp_path):
    w = archives.ResultWriter(tmp_path / "out", run_info={"options": {}})
    try:
        with pytest.raises(st.InvalidInputError, match="being written by another process"):
            archives.ResultWriter(tmp_path / "out", run_info={"options": {}})
    finally:
        w.close()
    archives.ResultWriter(tmp_path / "out", run_info={"options": {}}).close()  # free again


def test_progress_bar_shows_real_time_factor(tmp_path, capsys):
    paths = _archive(tmp_path, n_files=1, frames=400)
    archives.run_blocks(archives.open_many(paths, block_seconds=10), per_second, tmp_path / "out", progress=True)
    err = capsys.readouterr().err
    assert "x real time" in err and "/50.0 [" in err  # total from the reader: 400 rows of 125 ms


def test_summary_reports_failed_files(tmp_path):
    good = _archive(tmp_path, n_files=1, frames=200)[0]
    (tmp_path / "bad.csv").write_text("time,a\n")
    s = archives.run_blocks(
        archives.open_many([good, tmp_path / "bad.csv"], block_seconds=10), per_second, tmp_path / "out", progress=False
    )
    assert s.blocks_done == 3 and len(s.errors) == 1 and s.errors[0]["path"].endswith("bad.csv")


_CHILD = textwrap.dedent("""
    import sys, time
    from spectral_transcoder import archives
    from archives_testutil import per_second

    def slow(block):
        time.sleep(0.03)
        return per_second(block)

    out, paths = sys.argv[1], sys.argv[2:]
    archives.run_blocks(archives.open_many(paths, block_seconds=5), slow, out, progress=False, blocks_per_part=2)
""")


def test_kill_9_and_resume(tmp_path):
    """A real SIGKILL mid-run, then a resume: the same rows as an uninterrupted run, no duplicates."""
    paths = _archive(tmp_path, n_files=3, frames=1200)  # 3 x 31 blocks of 5 s
    ref_out, out = tmp_path / "ref", tmp_path / "out"
    archives.run_blocks(archives.open_many(paths, block_seconds=5), per_second, ref_out, progress=False)
    ref = _sorted(archives.read_results(ref_out))
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE_PARENT), str(TESTS)])}
    args = [sys.executable, str(script), str(out)] + [str(p) for p in paths]
    # a few parts committed, then kill -9
    kill_9_after_manifest_lines(args, out / "_manifest.jsonl", 6, env=env, timeout=30)
    partial = archives.read_results(out).num_rows
    assert 0 < partial < ref.num_rows
    s = archives.run_blocks(
        archives.open_many(paths, block_seconds=5), per_second, out, progress=False, blocks_per_part=2
    )
    assert s.blocks_skipped >= 12 and s.blocks_skipped + s.blocks_done == 93
    got = _sorted(archives.read_results(out))
    assert got.equals(ref)
    keys = list(zip(got.column("source").to_pylist(), got.column("window_start").to_pylist()))
    assert len(set(keys)) == len(keys)  # no duplicates
