"""process() on a real dask.distributed LocalCluster (worker processes): the same Parquet rows,
row for row, as a single-process run; models loaded once per worker; resume across modes."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dask.distributed")

import spectral_transcoder as st
from _tiny_models import make_classifier, make_transcoder
from archives_testutil import NS, T0, grid_times, levels, write_parquet
from spectral_transcoder import archives
from spectral_transcoder.archives import process as P

PACKAGE_PARENT = str(Path(st.__file__).resolve().parent.parent)


@pytest.fixture(scope="module")
def client():
    """A LocalCluster of 2 single-threaded worker processes (they import this checkout's package)."""
    from dask.distributed import Client, LocalCluster

    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([PACKAGE_PARENT] + ([old] if old else []))
    try:
        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.ERROR
        )
        c = Client(cluster)
        yield c
        c.close()
        cluster.close()
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("dask")
    paths = []
    for i in range(3):
        n = 8 * (50 + 17 * i)
        lv = levels(n, seed=i) - 100.0
        lv[30 + i] = np.nan
        t = grid_times(n, start=T0 + np.timedelta64(i, "h"))
        t[n // 2 :] += 3 * int(0.125 * NS)
        paths.append(write_parquet(d / f"sensor{i}.parquet", t, lv))
    return {"dir": d, "paths": paths, "tr": make_transcoder(d / "tr.onnx"), "clf": make_classifier(d / "clf.onnx")}


def _process(data, out, **kw):
    return P.process(
        data["paths"] if "paths" not in kw else kw.pop("paths"),
        out,
        classifier=data["clf"],
        transcoder=data["tr"],
        progress=False,
        block_seconds=20,
        probabilities=True,
        **kw,
    )


def test_dask_rows_equal_single_process_and_models_load_once(tmp_path, client, data):
    single = _process(data, tmp_path / "single")
    dist = _process(data, tmp_path / "dask", scheduler=client)
    assert dist.workers == 2 and dist.blocks_done == single.blocks_done == 12
    a, b = archives.read_results(tmp_path / "single"), archives.read_results(tmp_path / "dask")
    assert a.num_rows > 0 and b.equals(a)  # row for row, in the same order
    assert (
        archives.read_run_info(tmp_path / "dask")["options"] == archives.read_run_info(tmp_path / "single")["options"]
    )
    assert dist.stages["cnn"] > 0 and dist.stages["wait"] > 0
    # each worker loaded the models once (lazily: at its first block), however many blocks it ran
    counts = client.run(P.load_counts)
    assert len(counts) == 2
    loads = [n for per_worker in counts.values() for n in per_worker.values()]
    assert loads and all(n == 1 for n in loads)
    # a second run, through the scheduler's address (as --scheduler does): the workers keep their models
    _process(data, tmp_path / "dask2", scheduler=client.scheduler.address)
    assert archives.read_results(tmp_path / "dask2").equals(a)
    assert all(n == 1 for w in client.run(P.load_counts).values() for n in w.values())


def test_local_workers_option_resumes_a_single_process_run(tmp_path, data):
    ref = tmp_path / "ref"
    _process(data, ref)
    out = tmp_path / "out"
    first = _process(data, out, paths=data["paths"][:1])
    s = _process(data, out, workers=2)  # its own LocalCluster; the first file's blocks are skipped
    assert s.blocks_skipped == first.blocks_done == 3 and s.blocks_done == 9 and s.errors == []
    key = [("source", "ascending"), ("window", "ascending"), ("window_start", "ascending")]
    assert archives.read_results(out).sort_by(key).equals(archives.read_results(ref).sort_by(key))


def test_errors_in_files_and_in_workers(tmp_path, client, data):
    bad = data["dir"] / "bad.parquet"
    bad.write_bytes(b"not parquet")
    s = _process(data, tmp_path / "out", scheduler=client, paths=[data["paths"][0], bad])
    assert [Path(e["path"]).name for e in s.errors] == ["bad.parquet"] and s.blocks_done == 3
    # a level far beyond any sound (a 999 sentinel) is masked by the reader, like a NaN row
    lv = levels(8 * 60, seed=5) - 100.0
    lv[400, 3] = 1000.0
    loud = write_parquet(data["dir"] / "loud.parquet", grid_times(len(lv)), lv)
    s = _process(data, tmp_path / "loud", scheduler=client, paths=[loud])
    assert s.errors == [] and s.blocks_done == 3 and s.read_stats[str(loud.resolve())]["out_of_range_rows"] == 1
    # a block the worker refuses (given directly, past the reader): the error reaches the driver
    # and fails that source only, at that block; the blocks before it stay committed

    def blocks():
        for b in archives.open_many([data["paths"][0], loud], block_seconds=20):
            if b.sensor == "loud" and b.position.index == 1:
                bad = np.array(b.levels)
                bad[0, 3] = 1000.0
                bad.setflags(write=False)
                b = dataclasses.replace(b, levels=bad)
            yield b

    s = P.process(
        blocks(),
        tmp_path / "refused",
        classifier=data["clf"],
        transcoder=data["tr"],
        progress=False,
        scheduler=client,
        probabilities=True,
    )
    (e,) = s.errors
    assert Path(e["path"]).name == "loud.parquet" and e["position"].startswith("block 1 (")
    assert "far above full scale" in e["message"]  # refused by the block function's level check
    t = archives.read_results(tmp_path / "refused")
    assert sorted(set(zip(t.column("sensor").to_pylist(), t.column("block").to_pylist()))) == [
        ("loud", 0),
        ("sensor0", 0),
        ("sensor0", 1),
        ("sensor0", 2),
    ]
