"""Blocks: grid placement, gaps, bad rows, duplicates, time order, level reference, block sizes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

import spectral_transcoder as st
from archives_testutil import NS, T0, grid_times, levels, valid_frames, write_parquet
from spectral_transcoder import archives
from spectral_transcoder.archives.blocks import broadband_db

P = 0.125  # cense_fast frame period


def _blocks(tmp_path, times, lv, name="a.parquet", **opts):
    path = write_parquet(tmp_path / name, times, lv)
    reader = archives.open_archive(path, **opts)
    return reader, list(reader)


def _signature(blocks):
    return [(b.position, str(b.start), b.levels.tobytes(), b.valid.tobytes(), b.dropped_duplicates) for b in blocks]


def _check_shapes(blocks, spec, block_frames):
    for b in blocks:
        assert b.levels.shape == (b.n_frames, spec.n_bands) and b.levels.dtype == np.float32
        assert b.valid.shape == (b.n_frames,) and b.valid.dtype == bool
        assert 0 < b.n_frames <= block_frames and b.n_frames % spec.frames_per_chunk == 0
        assert np.isnan(b.levels[~b.valid]).all() and np.isfinite(b.levels[b.valid]).all()
        assert not b.levels.flags.writeable and not b.valid.flags.writeable


# ------------------------------------------------------------------ the grid
@settings(max_examples=25)
@given(
    steps=hs.lists(hs.sampled_from([1] * 12 + [2, 3, 7, 40]), min_size=1, max_size=120),
    jitter=hs.floats(0.0, 0.2),
    bad=hs.sets(hs.integers(0, 119), max_size=6),
    batch_rows=hs.sampled_from([1, 5, 64]),
    gaps=hs.sampled_from(["mask", "split"]),
)
def test_frames_land_on_their_slots(tmp_path_factory, steps, jitter, bad, batch_rows, gaps):
    tmp_path = tmp_path_factory.mktemp("grid")
    n = len(steps)
    slots = np.cumsum([0, *steps[1:]])
    rng = np.random.default_rng(n)
    times = (int(T0.astype(np.int64)) + np.rint((slots + rng.uniform(-jitter, jitter, n)) * P * NS)).astype(np.int64)
    lv = levels(n, seed=n)
    bad_rows = sorted(i for i in bad if i < n)
    lv[bad_rows, 3] = np.nan
    spec = st.get_band_spec("cense_fast")
    # 3 s blocks; a 40-frame jump (5 s) exceeds max_mask_gap_s=4 and starts a new segment
    reader, blocks = _blocks(tmp_path, times, lv, block_seconds=3, max_mask_gap_s=4.0, batch_rows=batch_rows, gaps=gaps)
    _check_shapes(blocks, spec, 24)
    good = np.ones(n, bool)
    good[bad_rows] = False
    t, got = valid_frames(blocks)
    np.testing.assert_array_equal(got, lv[good])  # every good row once, in order, unchanged
    assert np.abs(t - times[good]).max(initial=0) <= 0.5 * P * NS  # on its slot, within the jitter
    assert sum(b.n_valid for b in blocks) == good.sum()
    stats = reader.stats
    assert stats.rows == n and stats.bad_rows == len(bad_rows)
    # blocks never span a segment and stay aligned on whole chunks of their segment
    for b in blocks:
        assert b.position.frame_start % 24 == 0
        assert b.position.frame_stop - b.position.frame_start <= b.n_frames
    if gaps == "mask":
        masked = sum(b.n_frames - b.n_valid for b in blocks)
        pad = sum(b.n_frames - (b.position.frame_stop - b.position.frame_start) for b in blocks)
        small = [s - 1 for s in steps[1:] if 2 <= s <= 32]
        assert masked - pad == sum(small) + len(bad_rows) == stats.gap_frames + stats.bad_rows
    else:  # split: only end padding is invalid
        for b in blocks:
            k = b.position.frame_stop - b.position.frame_start
            assert b.valid[:k].all() and not b.valid[k:].any()
    # the read batch size never changes the blocks
    _, again = _blocks(
        tmp_path, times, lv, name="b.parquet", block_seconds=3, max_mask_gap_s=4.0, batch_rows=1000, gaps=gaps
    )
    assert _signature(again) == _signature(blocks)


def test_block_start_follows_stored_times(tmp_path):
    n = 100
    times = grid_times(n)
    times[50:] += 3 * int(P * NS)  # 3 missing frames before row 50
    lv = levels(n)
    _, blocks = _blocks(tmp_path, times, lv, block_seconds=2)  # 16 frames a block
    assert [b.n_frames for b in blocks] == [16] * 6 + [8]
    assert blocks[0].start == T0
    for b in blocks:
        assert b.start == T0 + np.timedelta64(int(b.position.frame_start * P * NS), "ns")
    assert blocks[3].valid.tolist() == [True] * 2 + [False] * 3 + [True] * 11  # rows 48, 49, gap, 50..
    assert blocks[-1].position.frame_stop == 103 and blocks[-1].valid.tolist() == [True] * 7 + [False]
    assert blocks[-1].position.row_stop == 100 and blocks[3].position.row_start == 48


def test_clock_drift_makes_no_gap(tmp_path):
    # a clock 0.3 % slow: 1000 frames drift by 3 periods, and yet no frame is missing
    times = int(T0.astype(np.int64)) + np.rint(np.arange(1000) * P * 1.003 * NS).astype(np.int64)
    reader, blocks = _blocks(tmp_path, times, levels(1000), block_seconds=10, gaps="error")
    assert sum(b.n_valid for b in blocks) == 1000 and reader.stats.gaps == 0
    # and each block starts at its first row's time
    for b in blocks:
        assert b.start == np.datetime64(int(times[b.position.row_start]), "ns")


def test_long_gap_splits_even_in_mask_mode(tmp_path):
    times = grid_times(40)
    times[20:] += 3600 * NS  # an hour offline
    reader, blocks = _blocks(tmp_path, times, levels(40), block_seconds=60)
    assert [b.position.segment for b in blocks] == [0, 1]
    assert blocks[1].start == np.datetime64(int(times[20]), "ns")
    assert reader.stats.gap_frames == 0 and reader.stats.gaps == 1
    _, blocks = _blocks(tmp_path, times, levels(40), name="b.parquet", block_seconds=60, max_mask_gap_s=None)
    assert sum(b.n_frames for b in blocks) > 28000  # masked: an hour of gap frames, in bounded blocks
    assert max(b.n_frames for b in blocks) == 480


# -------------------------------------------------------------- gap options
def test_gap_and_bad_row_errors_name_the_position(tmp_path):
    times = grid_times(30)
    times[12:] += int(P * NS)
    with pytest.raises(archives.ArchiveError, match=r"a\.parquet, row 12 \(2024-03-01T12:00:01\.625.*1 missing frame"):
        _blocks(tmp_path, times, levels(30), gaps="error")
    lv = levels(30)
    lv[7, 0] = np.nan
    with pytest.raises(archives.ArchiveError, match=r"row 7 .*NaN"):
        _blocks(tmp_path, grid_times(30), lv, name="b.parquet", gaps="error")
    with pytest.raises(ValueError):  # ArchiveError is a ValueError (InvalidInputError)
        _blocks(tmp_path, grid_times(30), lv, name="c.parquet", gaps="error")


def test_split_on_bad_rows(tmp_path):
    lv = levels(40)
    lv[10:12] = np.nan
    lv[39] = np.inf
    reader, blocks = _blocks(tmp_path, grid_times(40), lv, gaps="split", block_seconds=60)
    assert [(b.position.segment, b.position.row_start, b.position.row_stop) for b in blocks] == [
        (0, 0, 10),
        (1, 12, 39),
    ]
    assert blocks[1].start == np.datetime64(int(grid_times(40)[12]), "ns")
    assert reader.stats.bad_rows == 3 and reader.stats.segments == 2


def test_duplicates_and_time_order(tmp_path):
    times = grid_times(20)
    times = np.insert(times, 8, times[7] + 10_000_000)  # a second row 10 ms after row 7
    lv = levels(21)
    with pytest.raises(archives.ArchiveError, match=r"row 8 .*duplicated frame"):
        _blocks(tmp_path, times, lv)
    reader, blocks = _blocks(tmp_path, times, lv, name="b.parquet", duplicates="drop")
    _t, got = valid_frames(blocks)
    np.testing.assert_array_equal(got, np.delete(lv, 8, axis=0))  # the first of the pair is kept
    assert reader.stats.dropped_duplicates == 1 and sum(b.dropped_duplicates for b in blocks) == 1
    back = grid_times(20)
    back[[5, 6]] = back[[6, 5]]
    for dup in ("error", "drop"):
        with pytest.raises(archives.ArchiveError, match=r"row 6 .*go backwards"):
            _blocks(tmp_path, back, levels(20), name=f"c{dup}.parquet", duplicates=dup)


@pytest.mark.parametrize("problem", ["backwards", "duplicate", "gap", "nan"])
def test_blocks_before_an_error_do_not_depend_on_batch_size(tmp_path, problem):
    n = 100
    times, lv, opts = grid_times(n), levels(n), {}
    if problem == "backwards":
        times[70:] -= 20 * int(P * NS)
    elif problem == "duplicate":
        times[70] = times[69]
    elif problem == "gap":
        times[70:] += int(P * NS)
        opts["gaps"] = "error"
    else:
        lv[70, 1] = np.nan
        opts["gaps"] = "error"
    path = write_parquet(tmp_path / "a.parquet", times, lv)
    seen = []
    for batch_rows in (1, 7, 64, 1000):
        got = []
        with pytest.raises(archives.ArchiveError, match=r"a\.parquet, row 70 "):
            for b in archives.open_archive(path, block_seconds=2, batch_rows=batch_rows, **opts):
                got.append(b)
        seen.append(_signature(got))
    # rows 0-63: 4 whole blocks of 16, then rows 64-69 (before the error) as a short last block
    assert len(got) == 5 and all(s == seen[0] for s in seen)
    assert (got[-1].position.row_start, got[-1].position.row_stop) == (64, 70) and got[-1].valid.sum() == 6


def test_untimed_clips_are_segments():
    lv = levels(3 * 50).reshape(3, 50, 29)
    reader = archives.ArrayReader(lv, start="2024-01-01T00:00:00+01:00", block_seconds=4)
    blocks = list(reader)
    assert [b.position.clip for b in blocks] == [0, 0, 1, 1, 2, 2]
    assert [b.n_frames for b in blocks] == [32, 24] * 3
    assert blocks[0].start == np.datetime64("2023-12-31T23:00:00", "ns")
    assert blocks[2].start == blocks[0].start + np.timedelta64(int(50 * P * NS), "ns")  # contiguous clips
    assert blocks[1].valid.tolist() == [True] * 18 + [False] * 6
    np.testing.assert_array_equal(blocks[3].levels[:18], lv[1, 32:])
    clips = archives.ArrayReader(
        lv, clip_starts=["2024-01-01T00:00:00", "2024-02-01T00:00:00", "2024-03-01T00:00:00"], block_seconds=4
    )
    assert [str(b.start)[:10] for b in clips][::2] == ["2024-01-01", "2024-02-01", "2024-03-01"]


# ---------------------------------------------------------- level reference
def test_level_references(tmp_path):
    lv = levels(400, seed=3)
    path = write_parquet(tmp_path / "a.parquet", grid_times(400), lv)
    plain = list(archives.open_archive(path))
    assert plain[0].level_reference == archives.LevelReference(mode="dBFS", offset_db=0.0)
    spl = list(archives.open_archive(path, reference="SPL", spl_offset=94.0))
    assert spl[0].level_reference.offset_db == -94.0 and spl[0].level_reference.spl_offset == 94.0
    np.testing.assert_allclose(spl[0].levels, plain[0].levels - 94.0, atol=1e-4)

    bb = broadband_db(lv)
    np.testing.assert_allclose(bb, 10 * np.log10(np.sum(10 ** (lv.astype(np.float64) / 10), axis=1)), rtol=1e-12)
    ref = archives.auto_offset(path)
    assert ref.mode == "auto" and ref.percentile == 99.0 and ref.n_frames_measured == 400
    assert abs(ref.measured_db - np.percentile(bb, 99, method="inverted_cdf")) <= 0.006
    assert ref.offset_db == pytest.approx(-ref.measured_db)
    auto = list(archives.open_archive(path, reference="auto", auto_target_db=-10.0))
    assert auto[0].level_reference.offset_db == pytest.approx(-10.0 - ref.measured_db)
    after = broadband_db(np.concatenate([b.levels[b.valid] for b in auto]))
    assert abs(np.percentile(after, 99, method="inverted_cdf") + 10.0) <= 0.006  # P99 now at the target
    # a window: only the first 10 s (80 frames) are measured
    lv2 = lv.copy()
    lv2[80:] += 30.0
    path2 = write_parquet(tmp_path / "b.parquet", grid_times(400), lv2)
    win = archives.auto_offset(path2, auto_window_s=10.0)
    assert win.n_frames_measured == 80 and win.window_s == 10.0
    assert abs(win.measured_db - np.percentile(bb[:80], 99, method="inverted_cdf")) <= 0.006


def test_option_errors(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", grid_times(10), levels(10))
    with pytest.raises(st.InvalidInputError, match="spl_offset"):
        archives.open_archive(path, reference="SPL")
    with pytest.raises(st.InvalidInputError, match="only used"):
        archives.open_archive(path, spl_offset=3.0)
    with pytest.raises(st.InvalidInputError, match="gaps must be one of"):
        archives.open_archive(path, gaps="fill")
    with pytest.raises(st.InvalidInputError, match=r"unknown option\(s\) \['blok_seconds'\]"):
        archives.open_archive(path, blok_seconds=3)
    with pytest.raises(st.InvalidInputError, match="block_seconds"):
        archives.open_archive(path, block_seconds=0)


def test_block_sizes_are_whole_chunks():
    lv = levels(1000, n_bands=23).reshape(1, 1000, 23)
    nc = archives.ArrayReader(lv, spec="noisecapture", block_seconds=600)
    assert [b.n_frames for b in nc] == [600, 400]  # 1-s frames, one per chunk
    fast = archives.ArrayReader(levels(100).reshape(1, 100, 29), block_seconds=0.3)
    assert {b.n_frames for b in fast} == {8}  # rounded up to one whole 1-s chunk
    b = next(iter(fast))
    assert b.chunk_valid().tolist() == [True] and b.duration == 1.0 and b.key == ("array", 0)
    assert b.frame_times()[1] - b.frame_times()[0] == np.timedelta64(125_000_000, "ns")
