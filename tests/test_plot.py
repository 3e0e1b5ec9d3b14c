"""plot: time windows of archives and audio, the pipeline figure, `spectral-transcoder plot`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from archives_testutil import NS, T0, grid_times, levels, write_parquet
from spectral_transcoder import cli
from spectral_transcoder.errors import InvalidInputError, SpecMismatchError
from spectral_transcoder.plot import pipeline_figure, plot_file, read_window
from spectral_transcoder.specs import get_band_spec, get_mel_spec

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[Path, np.ndarray]:
    d = tmp_path_factory.mktemp("arch")
    lv = levels(8 * 40) - 100.0
    lv[85] = np.nan
    t = grid_times(len(lv))
    t[200:] += 4 * int(0.125 * NS)  # 4 missing frames
    return write_parquet(d / "s.parquet", t, lv), lv


@pytest.fixture(scope="module")
def wav(tmp_path_factory) -> Path:
    import soundfile as sf

    sr = 22050
    t = np.arange(int(6.5 * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * 1000 * t) + 0.05 * np.random.default_rng(0).standard_normal(t.size)
    path = tmp_path_factory.mktemp("wav") / "tone.wav"
    sf.write(path, x.astype(np.float32), sr)
    return path


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_read_window_takes_the_frames_on_the_grid(archive):
    path, lv = archive
    w = read_window(path, start=10, duration=20, block_seconds=10)
    assert w.levels.shape == (160, 29) and w.offset_s == 10.0
    assert w.start == T0 + np.timedelta64(10, "s")
    grid = np.full((324, 29), np.nan, np.float32)
    grid[np.r_[np.arange(200), np.arange(204, 324)]] = lv
    np.testing.assert_array_equal(w.levels, grid[80:240])
    assert list(np.flatnonzero(~w.valid)) == [5, 120, 121, 122, 123]  # the NaN row and the 4 missing frames
    tail = read_window(path, start=35, duration=30)  # past the end: cut to the data, whole chunks
    assert tail.levels.shape == (48, 29) and tail.valid[:44].all() and not tail.valid[44:].any()
    with pytest.raises(InvalidInputError, match="no frames"):
        read_window(path, start=100, duration=5)
    with pytest.raises(InvalidInputError, match="duration"):
        read_window(path, duration=0)


def test_plot_audio_with_ground_truth(tmp_path, tiny, wav):
    out = tmp_path / "a" / "tone.png"
    r = plot_file(wav, out, classifier=tiny["clf"], transcoder=tiny["tr"], duration=10, top=3)
    assert r["ground_truth"] and r["chunks"] == 7 and r["classified"] == 6  # the last 0.5 s is padding
    assert r["transcoder"].startswith("tiny-cnn@") and len(r["top"]) == 3
    w, h = _png_size(out)
    assert w > 800 and h > 800


def test_plot_archive_with_gaps(tmp_path, tiny, archive):
    path, _ = archive
    r = plot_file(
        path,
        tmp_path / "s.png",
        classifier=tiny["clf"],
        transcoder=tiny["tr"],
        start=5,
        duration=30,
        reference="SPL",
        spl_offset=-10.0,
    )
    assert not r["ground_truth"] and r["chunks"] == 30 and r["classified"] == 28  # the NaN row, the 4-frame gap
    assert _png_size(tmp_path / "s.png")[0] > 800
    with pytest.raises(SpecMismatchError, match="cense_slow"):
        plot_file(path, tmp_path / "x.png", classifier=tiny["clf"], transcoder=tiny["tr"], spec="cense_slow")


def test_pipeline_figure_panels():
    spec, mspec = get_band_spec("cense_fast"), get_mel_spec("yamnet_torchport")
    lv = levels(24) - 100.0
    mels = np.random.default_rng(0).normal(size=(3, 96, 64)).astype(np.float32)
    probs = np.array([[0.1, 0.9], [np.nan, np.nan], [0.3, 0.2]], np.float32)
    fig = pipeline_figure(
        lv,
        band_spec=spec,
        mels=mels,
        mel_spec=mspec,
        probs=probs,
        labels=["a", "b"],
        ground_truth=np.zeros((301, 64), np.float32),
        title="t",
    )
    main = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    assert len(main) == 4 and fig.axes[-1].get_label() == "<colorbar>"
    ticks = [t.get_text() for t in main[-1].get_yticklabels()]
    assert ticks == ["b", "a"]  # top classes by mean over the classified chunks
    assert main[0].get_xlim() == (0.0, 3.0)
    fig = pipeline_figure(lv, band_spec=spec, mels=mels, mel_spec=mspec, probs=probs, labels=["a", "b"])
    assert len([a for a in fig.axes if a.get_label() != "<colorbar>"]) == 3


def test_cli_plot(tmp_path, tiny, archive, capsys):
    path, _ = archive
    out = tmp_path / "p.png"
    assert (
        cli.main(
            [
                "plot",
                str(path),
                "-o",
                str(out),
                "-c",
                str(tiny["clf"]),
                "-t",
                str(tiny["tr"]),
                "--duration",
                "12",
                "--start",
                "2",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "2-14 s, 11/12 chunks classified" in text and "mean probabilities:" in text
    assert _png_size(out)[0] > 800
    assert (
        cli.main(
            ["plot", str(tmp_path / "nope.parquet"), "-o", str(out), "-c", str(tiny["clf"]), "-t", str(tiny["tr"])]
        )
        == 1
    )
    assert "no such file" in capsys.readouterr().err
