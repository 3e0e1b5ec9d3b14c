"""Each archive reader on small generated files: layouts, time columns, errors with positions."""

from __future__ import annotations

import tracemalloc
import zipfile

import numpy as np
import pytest

import spectral_transcoder as st
from archives_testutil import (
    NC_FREQS,
    NS,
    T0,
    grid_times,
    levels,
    valid_frames,
    write_csv,
    write_noisecapture,
    write_parquet,
)
from spectral_transcoder import archives


def _frames(reader):
    return valid_frames(list(reader))


# ------------------------------------------------------------------ Parquet
@pytest.mark.parametrize("time_type", ["ts_utc", "ts_naive_ms", "int_ms", "iso"])
@pytest.mark.parametrize("layout", ["wide", "list"])
def test_parquet_layouts_and_time_types(tmp_path, layout, time_type):
    n = 300
    times = grid_times(n)
    lv = levels(n)
    lv[17] = np.nan  # a null row
    path = write_parquet(
        tmp_path / "x.parquet",
        times,
        lv,
        layout=layout,
        time_type=time_type,
        row_group_size=64,
        extra={"sensor_name": ["s1"] * n},
    )  # a string column is not a band
    opts = {"time_unit": "ms"} if time_type == "int_ms" else {}
    reader = archives.open_archive(path, batch_rows=50, sensor="s1", **opts)
    assert isinstance(reader, archives.ParquetReader) and reader.duration_hint() == n * 0.125
    t, got = _frames(reader)
    keep = np.ones(n, bool)
    keep[17] = False
    np.testing.assert_array_equal(got, lv[keep])
    np.testing.assert_array_equal(t, times[keep])
    assert reader.stats.bad_rows == 1 and reader.describe()["time_column"] == "timestamp"


def test_parquet_named_columns_and_errors(tmp_path):
    n = 40
    names = [f"leq_{i}" for i in range(29)]
    path = write_parquet(tmp_path / "x.parquet", grid_times(n), levels(n), names=names, extra={"LAeq": np.zeros(n)})
    with pytest.raises(archives.ArchiveError, match=r"x\.parquet: columns \['LAeq', 'leq_0'.* 30 bands .* 29"):
        archives.open_archive(path)  # the extra numeric column makes 30 bands: a clear error
    reader = archives.open_archive(path, band_columns=names)
    assert reader.band_columns == names and len(list(reader)) == 1
    with pytest.raises(archives.ArchiveError, match="band columns .*'nope'.* not found"):
        archives.open_archive(path, band_columns=[*names[:-1], "nope"])
    with pytest.raises(archives.ArchiveError, match="time_unit"):
        list(archives.open_archive(write_parquet(tmp_path / "i.parquet", grid_times(n), levels(n), time_type="int_ms")))
    # a list column with a wrong length names the row
    lv = levels(n)
    path = write_parquet(tmp_path / "l.parquet", grid_times(n), lv, layout="list")
    import pyarrow as pa
    import pyarrow.parquet as pq

    tab = pq.read_table(path)
    rows = tab.column("levels").to_pylist()
    rows[33] = rows[33][:28]
    pq.write_table(tab.set_column(1, "levels", pa.array(rows, pa.list_(pa.float32()))), path)
    with pytest.raises(archives.ArchiveError, match=r"l\.parquet, row 33: .*28 values .* 29"):
        list(archives.open_archive(path))


def test_parquet_truncated_and_corrupt(tmp_path):
    path = write_parquet(tmp_path / "x.parquet", grid_times(500), levels(500), row_group_size=100)
    data = path.read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(archives.ArchiveError, match=r"cut\.parquet, file footer: not a readable Parquet"):
        archives.open_archive(tmp_path / "cut.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1" + b"\x00" * 100)
    with pytest.raises(archives.ArchiveError, match="junk.parquet"):
        archives.open_archive(tmp_path / "junk.parquet")
    # damaged pages inside the file: the footer reads, the data does not
    bad = bytearray(data)
    bad[200:4000] = b"\xff" * 3800
    (tmp_path / "bad.parquet").write_bytes(bytes(bad))
    with pytest.raises(archives.ArchiveError, match=r"bad\.parquet, rows 0\.\..*cannot read"):
        list(archives.open_archive(tmp_path / "bad.parquet"))


# ---------------------------------------------------------------------- CSV
def test_csv(tmp_path):
    n = 500
    times = grid_times(n)
    times[250:] += 2 * int(0.125 * NS)  # two missing frames
    lv = levels(n)
    lv[3, 5] = np.nan
    path = write_csv(tmp_path / "x.csv", times, lv)
    reader = archives.open_archive(path, batch_rows=64)
    t, got = _frames(reader)
    keep = np.arange(n) != 3
    np.testing.assert_allclose(got, lv[keep], rtol=1e-6)
    np.testing.assert_array_equal(t, times[keep])
    assert reader.stats.gap_frames == 2 and reader.stats.bad_rows == 1
    # truncated in the middle of a line: an error with the file and the rows
    text = path.read_text()
    (tmp_path / "cut.csv").write_text(text[: len(text) - 300])
    with pytest.raises(archives.ArchiveError, match=r"cut\.csv, rows .*cannot read.*columns"):
        list(archives.open_archive(tmp_path / "cut.csv", batch_rows=64))
    # a wrong band count in the header
    (tmp_path / "w.csv").write_text("time,a,b\n2024-01-01T00:00:00,1,2\n")
    with pytest.raises(archives.ArchiveError, match=r"w\.csv: columns \['a', 'b'\] has 2 bands"):
        archives.open_archive(tmp_path / "w.csv")


# --------------------------------------------------------------------- HDF5
def test_hdf5_fast_to_ears_layout(tmp_path):
    import h5py

    lv = levels(5 * 480).reshape(5, 480, 29)
    path = tmp_path / "sensor42.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("fast_125ms", data=lv, chunks=(1, 120, 29))
        f.attrs["start"] = "2024-05-01T08:00:00Z"
    reader = archives.open_archive(path, block_seconds=20, batch_rows=100)
    assert isinstance(reader, archives.Hdf5Reader) and reader.sensor == "sensor42"
    blocks = list(reader)
    assert len(blocks) == 5 * 3 and blocks[0].start == np.datetime64("2024-05-01T08:00:00", "ns")
    assert blocks[3].start == np.datetime64("2024-05-01T08:01:00", "ns")  # clip 1 follows clip 0
    _t, got = valid_frames(blocks)
    np.testing.assert_array_equal(got, lv.reshape(-1, 29))
    assert reader.describe()["start_known"] is True
    with h5py.File(tmp_path / "w.h5", "w") as f:
        f.create_dataset("fast_125ms", data=np.zeros((2, 8, 31), np.float32))
    with pytest.raises(archives.ArchiveError, match=r"w\.h5: dataset 'fast_125ms' \(shape \(2, 8, 31\)\) has 31"):
        archives.open_archive(tmp_path / "w.h5")
    with pytest.raises(archives.ArchiveError, match=r"no dataset 'slow_1s'"):
        archives.open_archive(path, dataset="slow_1s")
    data = path.read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 3])
    with pytest.raises(archives.ArchiveError, match=r"cut\.h5"):
        list(archives.open_archive(tmp_path / "cut.h5"))


# ------------------------------------------------------------------ NPY/NPZ
def test_npy_and_npz(tmp_path):
    lv = levels(3 * 200).reshape(3, 200, 29)
    np.save(tmp_path / "a.npy", lv)
    np.savez(tmp_path / "b.npz", levels=lv, other=np.zeros(3))
    np.savez_compressed(tmp_path / "c.npz", lv)
    np.savez(tmp_path / "f.npz", levels=np.asfortranarray(lv))
    ref = _frames(archives.ArrayReader(lv, block_seconds=7))
    for name in ("a.npy", "b.npz", "c.npz", "f.npz"):
        reader = archives.open_archive(tmp_path / name, block_seconds=7, batch_rows=37)
        t, got = _frames(reader)
        np.testing.assert_array_equal(got, ref[1], err_msg=name)
        np.testing.assert_array_equal(t, ref[0], err_msg=name)
    np.save(tmp_path / "w.npy", np.zeros((10, 23), np.float32))
    with pytest.raises(archives.ArchiveError, match=r"w\.npy: array \(shape \(1, 10, 23\)\) has 23 bands"):
        archives.open_archive(tmp_path / "w.npy")
    assert len(list(archives.open_archive(tmp_path / "w.npy", spec="noisecapture"))) == 1
    data = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:-1000])
    with pytest.raises(archives.ArchiveError, match=r"cut\.npy, file header: not a readable \.npy"):
        archives.open_archive(tmp_path / "cut.npy")
    z = (tmp_path / "b.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(z[: len(z) // 2])
    with pytest.raises(archives.ArchiveError, match=r"cut\.npz"):
        list(archives.open_archive(tmp_path / "cut.npz"))


def test_memory_is_bounded(tmp_path):
    # 160 000 frames x 29 bands (18.6 MB as float32): reading keeps one batch and one block
    n = 160_000
    big = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32, shape=(1, n, 29))
    for a in range(0, n, 20_000):
        big[0, a : a + 20_000] = levels(20_000, seed=a)
    del big
    write_parquet(
        tmp_path / "big.parquet", grid_times(n), np.load(tmp_path / "big.npy", mmap_mode="r")[0], row_group_size=8192
    )
    import pyarrow as pa

    for name in ("big.npy", "big.parquet"):
        reader = archives.open_archive(tmp_path / name, block_seconds=60, batch_rows=8192)
        count = 0
        arrow_base, arrow_peak = pa.total_allocated_bytes(), 0  # Arrow's own pool: tracemalloc does not see it
        tracemalloc.start()
        for b in reader:
            count += b.n_valid
            arrow_peak = max(arrow_peak, pa.total_allocated_bytes() - arrow_base)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert count == n
        assert peak < 4_000_000, (name, peak)  # << 18.6 MB
        # the Parquet reader must not keep the row groups it has read (pyarrow's pre-buffering does)
        assert arrow_peak < 8_000_000, (name, arrow_peak)  # the file holds 20 MB


# ------------------------------------------------------------- NoiseCapture
def test_noisecapture_export(tmp_path):
    n = 90
    rng = np.random.default_rng(2)
    t_ms = 1_709_294_400_000 + np.arange(n) * 1000 + rng.integers(-40, 40, n)  # jittered 1-s stamps
    t_ms[60:] += 2000  # two seconds lost
    lv = levels(n, n_bands=23)
    lv[5, 2] = np.nan  # a null band value
    path = write_noisecapture(tmp_path / "track_1234.zip", t_ms, lv)
    reader = archives.open_archive(path, block_seconds=30, reference="SPL", spl_offset=100.0)
    assert isinstance(reader, archives.NoiseCaptureReader)
    assert reader.band_spec == st.get_band_spec("noisecapture") and reader.sensor == "3f1c2a9e-user"
    assert reader.band_keys == [f"leq_{f}" for f in NC_FREQS]
    assert reader.describe()["noisecapture"]["gain_calibration"] == "-3.50"
    assert reader.properties["tags"] == "road,test:escaped"
    blocks = list(reader)
    assert [b.n_frames for b in blocks] == [30, 30, 30, 2] and blocks[0].frame_period == 1.0
    t, got = valid_frames(blocks)
    keep = np.arange(n) != 5
    np.testing.assert_allclose(got, lv[keep] - 100.0, atol=1e-4)
    assert np.abs(t // 1_000_000 - t_ms[keep]).max() <= 80
    assert reader.stats.gap_frames == 2
    # the stamps are snapped to a 1-s grid (issue 15): the start is the first stamp's grid time
    assert reader.snap_report.max_shift_s <= 0.08 and reader.snap_report.collisions == 0
    assert abs(blocks[0].start - np.datetime64(int(t_ms[0]), "ms")) <= np.timedelta64(80, "ms")
    assert archives.nominal_frequencies(st.get_band_spec("cense_fast"))[:3] == [20.0, 25.0, 31.5]


def test_noisecapture_validation(tmp_path):
    t_ms = 1_709_294_400_000 + np.arange(10) * 1000
    lv = levels(10, n_bands=23)
    with pytest.raises(archives.ArchiveError, match=r"feature 0: 22 band levels .*missing \['leq_1250'\]"):
        list(archives.open_archive(write_noisecapture(tmp_path / "a.zip", t_ms, lv, drop_band="leq_1250")))
    with pytest.raises(archives.ArchiveError, match=r"24 band levels .*unexpected \['leq_20000'\]"):
        list(archives.open_archive(write_noisecapture(tmp_path / "b.zip", t_ms, lv, extra_band="leq_20000")))
    with pytest.raises(
        archives.ArchiveError,
        match=r"c\.zip, zip directory: not a NoiseCapture export: "
        r"\['track\.geojson'\] missing",
    ):
        archives.open_archive(write_noisecapture(tmp_path / "c.zip", t_ms, lv, members=("meta.properties",)))
    data = write_noisecapture(tmp_path / "d.zip", t_ms, lv).read_bytes()
    (tmp_path / "cut.zip").write_bytes(data[: len(data) // 2])
    with pytest.raises(archives.ArchiveError, match=r"cut\.zip.*unreadable NoiseCapture export"):
        archives.open_archive(tmp_path / "cut.zip")
    with zipfile.ZipFile(tmp_path / "e.zip", "w") as zf:
        zf.writestr("meta.properties", "uuid=x\n")
        zf.writestr("track.geojson", '{"type": "FeatureCollection", "features": [')
    with pytest.raises(archives.ArchiveError, match=r"e\.zip, track\.geojson: unreadable .*JSONDecodeError"):
        archives.open_archive(tmp_path / "e.zip")
    with pytest.raises(archives.ArchiveError, match=r"23 band levels where the band spec 'cense_fast' has 29"):
        archives.open_archive(tmp_path / "d.zip", spec="cense_fast")


# -------------------------------------------------------------------- audio
@pytest.mark.parametrize("rate,channels,seconds", [(44100, 2, 5.3), (32000, 1, 2.0), (48000, 1, 0.15)])
def test_audio_stream_equals_whole_file(tmp_path, rate, channels, seconds):
    sf = pytest.importorskip("soundfile")
    from spectral_transcoder.analysis import third_octave

    x = (np.random.default_rng(rate).standard_normal((int(rate * seconds), channels)) * 0.1).astype(np.float32)
    path = tmp_path / "a.flac"
    sf.write(path, x, rate, subtype="PCM_16")
    y, _ = sf.read(path, dtype="float32", always_2d=True)
    whole = third_octave(y.mean(axis=1), rate)
    reader = archives.open_archive(path, block_seconds=2, read_seconds=0.37, start="2024-01-01T00:00:00Z")
    blocks = list(reader)
    t, got = valid_frames(blocks)
    np.testing.assert_array_equal(got, whole)  # bit-exact: streaming resampler and frame grid
    assert blocks[0].start == np.datetime64("2024-01-01T00:00:00", "ns") and len(t) == whole.shape[0]
    assert reader.duration_hint() == pytest.approx(seconds, abs=1e-4)
    if channels == 2:
        _t1, right = valid_frames(archives.open_archive(path, channel=1))
        np.testing.assert_array_equal(right, third_octave(y[:, 1], rate))


def test_audio_truncated_and_bad(tmp_path):
    sf = pytest.importorskip("soundfile")
    x = np.zeros(32000 * 3, np.float32)
    sf.write(tmp_path / "a.wav", x, 32000, subtype="PCM_16")
    data = (tmp_path / "a.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    got = []
    with pytest.raises(
        archives.ArchiveError,
        match=r"cut\.wav, sample 47989: the file is truncated: its header "
        r"announces 192000 bytes of data, it holds 95978",
    ):
        for block in archives.open_archive(tmp_path / "cut.wav", block_seconds=1):
            got.append(block)
    assert sum(b.n_valid for b in got) == 12  # 1.5 s readable: its 12 frames come first, then the error
    sf.write(tmp_path / "a.flac", x + 0.1, 32000, subtype="PCM_16")
    data = (tmp_path / "a.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(data[: len(data) // 2])
    with pytest.raises(archives.ArchiveError, match=r"cut\.flac, samples \d+\.\.\d+: cannot read"):
        list(archives.open_archive(tmp_path / "cut.flac"))
    (tmp_path / "junk.wav").write_bytes(b"RIFF" + b"\x01" * 60)
    with pytest.raises(archives.ArchiveError, match=r"junk\.wav, file header: not a readable audio"):
        archives.open_archive(tmp_path / "junk.wav")


# ------------------------------------------------------------ dispatch/many
def test_open_archive_dispatch(tmp_path):
    with pytest.raises(archives.ArchiveError, match=r"unknown archive extension '\.txt'"):
        archives.open_archive(tmp_path / "a.txt")
    with pytest.raises(archives.ArchiveError, match="no such file"):
        archives.open_archive(tmp_path / "a.parquet")
    p = write_parquet(tmp_path / "data.bin", grid_times(8), levels(8))
    assert isinstance(archives.open_archive(p, format="parquet"), archives.ParquetReader)


def test_open_many_collects_errors_and_goes_on(tmp_path):
    good1 = write_parquet(tmp_path / "s1.parquet", grid_times(100), levels(100))
    times = grid_times(100)
    times[[60, 61]] = times[[61, 60]]
    unsorted = write_parquet(tmp_path / "s2.parquet", times, levels(100))
    (tmp_path / "s3.parquet").write_bytes(b"garbage")
    good2 = write_csv(tmp_path / "s4.csv", grid_times(50, start=T0 + np.timedelta64(1, "D")), levels(50))
    again = f"{tmp_path}/../{tmp_path.name}/s1.parquet"  # the same file, spelt differently
    many = archives.open_many([good1, unsorted, tmp_path / "s3.parquet", again, good2], block_seconds=5)
    assert len(many) == 4  # the duplicate path is read once
    blocks = list(many)
    # s2's rows before its error at row 61 all come out, whatever the read batch size: its first
    # block (rows 0-39), then a last short block with rows 40-60; nothing read is lost
    assert [(b.sensor, b.position.index) for b in blocks] == [
        ("s1", 0),
        ("s1", 1),
        ("s1", 2),
        ("s2", 0),
        ("s2", 1),
        ("s4", 0),
        ("s4", 1),
    ]
    short = blocks[4]
    assert (short.position.row_start, short.position.row_stop) == (40, 61)
    assert short.valid.sum() == 21
    assert [(e.path.split("/")[-1], e.position, e.blocks_read) for e in many.errors] == [
        ("s2.parquet", "row 61 (2024-03-01T12:00:07.500000000Z)", 2),
        ("s3.parquet", "file footer", 0),
    ]
    assert "go backwards" in many.errors[0].message
    with pytest.raises(st.InvalidInputError, match="gaps"):
        archives.open_many([good1], gaps="nope")


def test_nan_in_a_float_time_column_is_a_missing_stamp(tmp_path):
    """A NaN epoch read as a jump backwards ("after NaT"); it is a missing stamp at its row."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from spectral_transcoder.archives import ArchiveError, open_archive

    t = 1.7e9 + 0.125 * np.arange(16)
    t[5] = np.nan
    cols = {"t": pa.array(t)} | {f"b{i}": pa.array(np.full(16, -50.0)) for i in range(29)}
    path = tmp_path / "nan-time.parquet"
    pq.write_table(pa.table(cols), path)
    with pytest.raises(ArchiveError, match=r"row 5: missing time stamp"):
        list(open_archive(path, time_unit="s"))
