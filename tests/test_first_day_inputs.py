"""Issue 15, "a new user's first day": a catalogue of bad inputs a new user gives, each
class exercised through the Python API and the command line (`cli.main`, in process,
or `python -m spectral_transcoder` where the process boundary is the point).

Every input class must end in a clear error (naming the file, the position and the
problem, in the caller's language: keywords in Python, flags on the command line),
or be read correctly with a warning that says what was done.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import spectral_transcoder as st
from _tiny_models import make_transcoder, transcoder_metadata
from archives_testutil import NC_FREQS, T0, grid_times, write_csv, write_noisecapture
from conftest import REPO, shared_file, subprocess_env
from spectral_transcoder import archives, cli
from spectral_transcoder.errors import InputWarning, LevelWarning
from spectral_transcoder.pinv import PartialChunkWarning
from spectral_transcoder.specs import get_band_spec

sf = pytest.importorskip("soundfile")

FAST = get_band_spec("cense_fast")
VIA = ["api", "cli"]


@pytest.fixture(scope="module")
def tiny(tiny: dict[str, Path], tmp_path_factory) -> dict[str, Path]:
    """The session's tiny models, and a transcoder for NoiseCapture bands."""
    d = tmp_path_factory.mktemp("tiny_nc")
    return {
        **tiny,
        "tr_nc": make_transcoder(d / "tr_nc.onnx", meta=transcoder_metadata("tiny-nc", band="noisecapture")),
    }


def _dbfs(n: int, seed: int = 0) -> np.ndarray:
    """(n, 29) float32 levels, -70..-30 dB re full scale: what audio analysed by the package gives."""
    return np.random.default_rng(seed).uniform(-70.0, -30.0, (n, 29)).astype(np.float32)


def _noise(seconds: float, sr: int, channels: int | None = None, seed: int = 0) -> np.ndarray:
    shape = (int(round(seconds * sr)),) + ((channels,) if channels else ())
    return (np.random.default_rng(seed).standard_normal(shape) * 0.1).astype(np.float32)


def _npz(path: Path, lv: np.ndarray) -> Path:
    np.savez(path, levels=lv, band_spec=np.array(FAST.to_json()))
    return path


def _run(capsys, *argv: object) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _classify_cli(tiny, capsys, inputs, out: Path, *extra: object) -> tuple[int, str, str]:
    return _run(
        capsys,
        "classify",
        *inputs,
        "-o",
        out,
        "-c",
        tiny["clf"],
        "-t",
        tiny["tr"],
        "--no-progress",
        "--block-seconds",
        "20",
        *extra,
    )


# ------------------------------------------------------------------ 4. stereo / time-major audio
@pytest.mark.parametrize("via", VIA)
def test_time_major_and_too_short_audio(via, tmp_path, capsys):
    stereo = _noise(1.5, 48000, channels=2)  # what sf.read gives: (samples, channels)
    if via == "api":
        for fn in (st.third_octave, st.mel):
            with pytest.raises(st.InvalidInputError, match=r"\(72000, 2\).*audio\.mean\(axis=1\).*\.T"):
                fn(stereo, 48000)
        # a batch of real signals (channels, samples) is still a batch
        assert st.third_octave(np.ascontiguousarray(stereo.T), 48000).shape == (2, 12, 29)
        with pytest.raises(st.InvalidInputError, match=r"4000 samples at 32000 Hz.*one analysis frame.*4096"):
            st.third_octave(_noise(0.125, 32000), 32000)
        with pytest.raises(st.InvalidInputError, match=r"shorter than one analysis frame"):
            st.third_octave(_noise(0.1, 48000), 48000)
    else:
        wav = tmp_path / "stereo.wav"
        sf.write(wav, stereo, 48000, subtype="FLOAT")
        code, _out, err = _run(capsys, "analyze", wav, "-o", tmp_path / "s.npz")
        assert code == 0, err
        with np.load(tmp_path / "s.npz") as z:  # the command line mixes the channels down itself
            np.testing.assert_array_equal(z["levels"], st.third_octave(stereo.mean(axis=1), 48000))
        short = tmp_path / "short.wav"
        sf.write(short, _noise(0.05, 48000), 48000)
        code, _out, err = _run(capsys, "analyze", short, "-o", tmp_path / "x.npz")
        assert code == 1 and "short.wav" in err and "shorter than one analysis frame" in err
        assert "Traceback" not in err


# ------------------------------------------------------------------ 5. implausible levels
@pytest.mark.parametrize("via", VIA)
@pytest.mark.parametrize("shift", [100.0, 39.0, 200.0])
def test_levels_far_above_full_scale(via, shift, tiny, tmp_path, capsys):
    lv = _dbfs(40) + shift  # SPL data read as dBFS (+100), or a slip of the level convention
    if via == "api":
        with pytest.raises(st.InvalidInputError) as ei:
            st.classify(lv, classifier=tiny["clf"], transcoder=tiny["tr"])
        msg = str(ei.value)
        assert "dB re full scale" in msg and "reference='SPL'" in msg and "spl_offset=" in msg
        assert "reference='auto'" in msg and "--" not in msg
        # the documented way out
        res = st.classify(lv, classifier=tiny["clf"], transcoder=tiny["tr"], reference="auto")
        assert res.probs.shape == (5, 5)
    else:
        src = _npz(tmp_path / "spl.npz", lv)
        code, _out, err = _run(capsys, "transcode", src, "-o", tmp_path / "m.npz", "--transcoder", tiny["tr"])
        assert code == 1 and "spl.npz" in err
        assert "--reference SPL --spl-offset" in err and "--reference auto" in err and "reference=" not in err
        code, _out, err = _run(
            capsys, "transcode", src, "-o", tmp_path / "m.npz", "--transcoder", tiny["tr"], "--reference", "auto"
        )
        assert code == 0, err


@pytest.mark.parametrize("via", VIA)
def test_levels_slightly_above_full_scale_warn(via, tiny, tmp_path, capsys):
    lv = _dbfs(16)
    lv[3, 17] = 4.0  # a band above 0 dBFS: more than full-scale audio gives, but not absurd
    if via == "api":
        with pytest.warns(LevelWarning, match=r"\+4 dB.*frame 3.*1000 Hz"):
            st.classify(lv, classifier=tiny["clf"], transcoder=tiny["tr"])
    else:
        code, _out, err = _run(
            capsys, "transcode", _npz(tmp_path / "l.npz", lv), "-o", tmp_path / "m.npz", "--transcoder", tiny["tr"]
        )
        assert code == 0 and "warning:" in err and "+4 dB" in err


# ------------------------------------------------------------------ 6. sample-rate slips
@pytest.mark.parametrize("via", VIA)
@pytest.mark.parametrize("rate", [1, 32, 7999])
def test_sample_rate_slip_is_refused(via, rate, tiny, tmp_path, capsys):
    floor = "8000 Hz"
    wav = tmp_path / "low.wav"
    sf.write(wav, np.full(max(100, rate), 0.1, np.float32), rate)
    if via == "api":
        with pytest.raises(st.InvalidInputError, match=rf"sample_rate {rate} Hz.*floor of {floor}.*32 for 32000"):
            st.third_octave(np.full(max(100, rate), 0.1, np.float32), rate)
        with pytest.raises(st.InvalidInputError, match=rf"sample_rate {rate} Hz.*floor of {floor}"):
            st.mel(np.full(max(100, rate), 0.1, np.float32), rate)
        with pytest.raises(archives.ArchiveError, match=rf"low\.wav.*{rate} Hz.*{floor}"):
            archives.open_archive(wav)
    else:
        code, out, err = _run(capsys, "analyze", wav, "-o", tmp_path / "x.npz")
        assert code == 1 and "low.wav" in err and f"{rate} Hz" in err and floor in err and "bad_alloc" not in err
        code, out, err = _classify_cli(tiny, capsys, [wav], tmp_path / "out")
        assert code == 1 and "low.wav" in err and floor in err and "Silence" not in out


@pytest.mark.parametrize("via", VIA)
def test_band_limited_audio_is_warned_about(via, tmp_path, capsys):
    x = _noise(1.0, 22050)  # UrbanSound8K's rate: real audio, but nothing above 11 025 Hz
    if via == "api":
        with pytest.warns(
            InputWarning, match=r"22050 Hz.*nothing above 11025 Hz.*28251 Hz.*2 top band.*from 10000 Hz up"
        ):
            lv = st.third_octave(x, 22050)
        assert lv.shape == (8, 29)
    else:
        wav = tmp_path / "us8k.wav"
        sf.write(wav, x, 22050)
        code, _out, err = _run(capsys, "analyze", wav, "-o", tmp_path / "x.npz")
        assert code == 0 and "warning:" in err and "nothing above 11025 Hz" in err


# ------------------------------------------------------------------ 7. CSV without a header
def _csv_rows(n: int) -> tuple[np.ndarray, np.ndarray]:
    return grid_times(n), _dbfs(n, seed=3)


def _headerless(path: Path, t: np.ndarray, lv: np.ndarray) -> Path:
    write_csv(path, t, lv)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[1:]) + "\n")
    return path


@pytest.mark.parametrize("via", VIA)
def test_csv_without_header(via, tiny, tmp_path, capsys):
    t, lv = _csv_rows(8 * 25)
    with_header = write_csv(tmp_path / "h.csv", t, lv)
    bare = _headerless(tmp_path / "bare.csv", t, lv)
    if via == "api":
        with pytest.warns(InputWarning, match=r"bare\.csv.*first row.*numbers.*no header"):
            blocks = list(archives.open_archive(bare))
        got = np.concatenate([b.levels[b.valid] for b in blocks])
        assert got.shape == (200, 29)  # not 199: the first row is data
        np.testing.assert_allclose(got, lv, atol=1e-5)
        assert blocks[0].start == T0
    else:
        code, _out, err = _classify_cli(tiny, capsys, [with_header], tmp_path / "ref")
        assert code == 0, err
        code, _out, err = _classify_cli(tiny, capsys, [bare], tmp_path / "got")
        assert code == 0, err
        assert "warning:" in err and "no header" in err
        ref, got = archives.read_results(tmp_path / "ref"), archives.read_results(tmp_path / "got")
        assert got.column("top_scores").to_pylist() == ref.column("top_scores").to_pylist()
        assert got.column("window_start").to_pylist() == ref.column("window_start").to_pylist()


# ------------------------------------------------------------------ 8. shorter than one chunk
@pytest.mark.parametrize("via", VIA)
def test_input_shorter_than_one_chunk_is_reported(via, tiny, tmp_path, capsys):
    lv = _dbfs(5)  # 0.625 s: less than one 1-s chunk
    if via == "api":
        with pytest.warns(PartialChunkWarning, match=r"5 frames.*0\.625 s.*less than one.*padded"):
            res = st.classify(lv, classifier=tiny["clf"], transcoder=tiny["tr"])
        assert res.padded and res.probs.shape == (1, 5)
        with pytest.warns(PartialChunkWarning, match=r"5 frames.*dropped.*no chunk"):
            res = st.classify(lv, classifier=tiny["clf"], transcoder=tiny["tr"], partial="drop")
        assert res.probs.shape == (0, 5)
    else:
        wav = tmp_path / "half.wav"
        sf.write(wav, _noise(0.5, 32000), 32000)
        code, out, _err = _run(capsys, "analyze", wav, "-o", tmp_path / "h.npz")
        assert code == 0 and "shorter than one 1-s chunk" in out and "padded" in out
        src = _npz(tmp_path / "l.npz", lv)
        code, out, _err = _run(
            capsys, "transcode", src, "-o", tmp_path / "m.npz", "--transcoder", tiny["tr"], "--partial", "drop"
        )
        assert code == 0 and "shorter than one 1-s chunk" in out and "dropped" in out and "empty" in out


# ------------------------------------------------------------------ 9. levels in a .npy
@pytest.mark.parametrize("via", VIA)
def test_levels_npy_file(via, tiny, tmp_path, capsys):
    lv = _dbfs(24)
    np.save(tmp_path / "x.npy", lv)
    if via == "api":
        with pytest.raises(st.InputTypeError, match=r"x\.npy.*np\.load"):
            st.classify(str(tmp_path / "x.npy"), classifier=tiny["clf"], transcoder=tiny["tr"])
    else:
        code, _out, err = _run(
            capsys, "transcode", tmp_path / "x.npy", "-o", tmp_path / "a.npz", "--transcoder", tiny["tr"]
        )
        assert code == 0, err
        code, _out, err = _run(
            capsys, "transcode", _npz(tmp_path / "x.npz", lv), "-o", tmp_path / "b.npz", "--transcoder", tiny["tr"]
        )
        with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
            np.testing.assert_array_equal(a["mel"], b["mel"])
        (tmp_path / "x.txt").write_text("1,2,3\n")
        code, _out, err = _run(
            capsys, "transcode", tmp_path / "x.txt", "-o", tmp_path / "c.npz", "--transcoder", tiny["tr"]
        )
        assert code == 1 and "x.txt" in err and ".npy" in err and "Traceback" not in err


# ------------------------------------------------------------------ 10. a closed pipe
class _ClosedPipe:
    """stdout after the reader (`head`) has gone: writing fails, or (buffered) only the flush."""

    def __init__(self, buffered: bool):
        self.buffered = buffered

    def write(self, s: str) -> int:
        if not self.buffered:
            raise BrokenPipeError(32, "Broken pipe")
        return len(s)

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


@pytest.mark.parametrize("via", ["write", "flush", "subprocess"])
def test_output_into_a_closed_pipe(via, home, monkeypatch, capsys):
    if via != "subprocess":
        monkeypatch.setattr(sys, "stdout", _ClosedPipe(buffered=via == "flush"))
        assert cli.main(["models", "list"]) == 1
        assert capsys.readouterr().err == ""  # quietly: no traceback, no message
        return
    # `spectral-transcoder models list | head -0`: the reader is gone before the first line
    p = subprocess.Popen(
        [sys.executable, "-m", "spectral_transcoder", "models", "list"],
        cwd=REPO,
        env=subprocess_env(SPECTRAL_TRANSCODER_HOME=str(home)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    p.stdout.close()
    err = p.stderr.read().decode()
    p.wait(timeout=120)
    assert err == "" and p.returncode == 1


# ------------------------------------------------------------------ 12. a typo in a CSV cell
@pytest.mark.parametrize("via", VIA)
@pytest.mark.parametrize("row", [3, 6000])  # in the first block read (types inferred) and far after it
def test_csv_cell_typo_names_the_cell(via, row, tiny, tmp_path, capsys):
    t, lv = _csv_rows(8 * 800)
    path = write_csv(tmp_path / "typo.csv", t, lv)
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[row + 1].split(",")
    cells[6] = "4O.5"
    lines[row + 1] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    want = rf"typo\.csv, row {row} \(line {row + 2}\), column '{header[6]}': '4O\.5' is not a number"
    if via == "api":
        with pytest.raises(archives.ArchiveError, match=want):  # small read blocks: the typo is in a later one
            list(archives.open_archive(path, batch_rows=256))
    else:
        code, _out, err = _classify_cli(tiny, capsys, [path], tmp_path / "out")
        assert code == 1
        import re

        assert re.search(want, err), err
        assert "28 bands" not in err


# ------------------------------------------------------------------ 13. the caller's language
@pytest.mark.parametrize("via", VIA)
def test_errors_speak_the_callers_language(via, tiny, tmp_path, capsys):
    h5py = pytest.importorskip("h5py")
    lv = _dbfs(20)  # 2 chunks and 4 frames
    h5 = tmp_path / "other.h5"
    with h5py.File(h5, "w") as f:
        f["levels"] = _dbfs(80)[None]
    if via == "api":
        with pytest.raises(st.InvalidInputError, match=r"partial='drop'") as ei:
            st.pinv(lv, "pann")
        assert "--partial" not in str(ei.value)
        with pytest.raises(archives.ArchiveError, match=r"no dataset 'fast_125ms'.*dataset='levels'"):
            archives.open_archive(h5)
    else:
        src = _npz(tmp_path / "l.npz", lv)
        code, _out, err = _run(
            capsys, "transcode", src, "-o", tmp_path / "m.npz", "--transcoder", tiny["tr"], "--partial", "error"
        )
        assert code == 1 and "--partial drop" in err and "--partial pad" in err and "partial='" not in err
        code, _out, err = _classify_cli(tiny, capsys, [h5], tmp_path / "out")
        assert code == 1 and "no dataset 'fast_125ms'" in err
        # the command line has a flag for the dataset, and the message names it
        assert "--dataset levels" in err
        assert "pass dataset=)" not in err and not err.rstrip().endswith("pass dataset=")
        code, _out, err = _classify_cli(tiny, capsys, [h5], tmp_path / "out2", "--dataset", "levels")
        assert code == 0, err


# ------------------------------------------------------------------ 16. reference= and spl_offset= in Python
@pytest.mark.parametrize("via", VIA)
def test_level_reference_options(via, tiny, tmp_path, capsys):
    lv = _dbfs(8 * 12, seed=5)
    if via == "api":
        kw = dict(classifier=tiny["clf"], transcoder=tiny["tr"])
        a = st.classify(lv, reference="auto", **kw)
        for shift in (23.0, -17.5):
            b = st.classify(lv + shift, reference="auto", **kw)
            np.testing.assert_allclose(b.probs, a.probs, atol=2e-4)
            assert [lb.name for lb, _ in b.top(3)] == [lb.name for lb, _ in a.top(3)]
            assert float(b.level_offset_db) == pytest.approx(float(a.level_offset_db) - shift, abs=0.011)
        assert a.level_reference == "auto"
        spl = st.classify(lv + 94.0, reference="SPL", spl_offset=94.0, **kw)
        np.testing.assert_allclose(spl.probs, st.classify(lv, **kw).probs, atol=1e-5)
        assert float(spl.level_offset_db) == -94.0
        # a batch: each series is referenced on its own, like one archive source
        both = st.classify(np.stack([lv, lv + 30.0]), reference="auto", **kw)
        np.testing.assert_allclose(both.probs[1], both.probs[0], atol=2e-4)
        with pytest.raises(st.InvalidInputError, match="spl_offset"):
            st.classify(lv, reference="SPL", **kw)
        with pytest.raises(st.InvalidInputError, match="reference"):
            st.classify(lv, reference="dbfs", **kw)
    else:
        tr = tiny["tr"]
        code, _, err = _run(
            capsys,
            "transcode",
            _npz(tmp_path / "a.npz", lv),
            "-o",
            tmp_path / "ma.npz",
            "--transcoder",
            tr,
            "--reference",
            "auto",
        )
        assert code == 0, err
        code, out, err = _run(
            capsys,
            "transcode",
            _npz(tmp_path / "b.npz", lv + 23.0),
            "-o",
            tmp_path / "mb.npz",
            "--transcoder",
            tr,
            "--reference",
            "auto",
        )
        assert code == 0 and "auto" in out
        code, _, err = _run(
            capsys,
            "transcode",
            _npz(tmp_path / "c.npz", lv + 94.0),
            "-o",
            tmp_path / "mc.npz",
            "--transcoder",
            tr,
            "--reference",
            "SPL",
            "--spl-offset",
            "94",
        )
        assert code == 0, err
        code, _, err = _run(
            capsys, "transcode", _npz(tmp_path / "d.npz", lv), "-o", tmp_path / "md.npz", "--transcoder", tr
        )
        with np.load(tmp_path / "ma.npz") as a, np.load(tmp_path / "mb.npz") as b:
            np.testing.assert_allclose(b["mel"], a["mel"], atol=0.02)
            assert float(b["level_offset_db"]) == pytest.approx(float(a["level_offset_db"]) - 23.0, abs=0.011)
        with np.load(tmp_path / "mc.npz") as c, np.load(tmp_path / "md.npz") as d:
            np.testing.assert_allclose(c["mel"], d["mel"], atol=1e-3)
        code, _, err = _run(
            capsys, "transcode", tmp_path / "a.npz", "-o", tmp_path / "x.npz", "--transcoder", tr, "--reference", "SPL"
        )
        assert code == 1 and "--spl-offset" in err


# ------------------------------------------------------------------ 19. plot --audio
@pytest.mark.parametrize("via", VIA)
def test_plot_audio_panel_is_the_audio_as_recorded(via, tiny, tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    from spectral_transcoder import plot

    x = _noise(4.0, 32000, seed=2) * np.float32(0.3)
    wav = tmp_path / "rec.wav"
    sf.write(wav, x, 32000, subtype="FLOAT")
    lv = st.third_octave(x, 32000)
    np.save(tmp_path / "rec.npy", lv + 40.0)  # the archive stores the levels 40 dB up (calibrated SPL, say)
    seen = {}
    real = plot.pipeline_figure

    def spy(levels, **kw):
        seen["gt"] = kw.get("ground_truth")
        return real(levels, **kw)

    monkeypatch.setattr(plot, "pipeline_figure", spy)
    if via == "api":
        r = plot.plot_file(
            tmp_path / "rec.npy",
            tmp_path / "p.png",
            classifier=tiny["clf"],
            transcoder=tiny["tr"],
            audio=wav,
            reference="auto",
        )
        assert r["ground_truth"]
    else:
        code, _out, err = _run(
            capsys,
            "plot",
            tmp_path / "rec.npy",
            "-o",
            tmp_path / "p.png",
            "-c",
            tiny["clf"],
            "-t",
            tiny["tr"],
            "--audio",
            wav,
            "--reference",
            "auto",
        )
        assert code == 0, err
    want = st.mel(x, 32000, "pann")
    np.testing.assert_allclose(seen["gt"], want[: seen["gt"].shape[0]], atol=1e-4)


# ------------------------------------------------------------------ 21. NoiseCapture time-stamp jitter
def _nc_levels(n: int) -> np.ndarray:
    return np.random.default_rng(7).uniform(40.0, 70.0, (n, len(NC_FREQS))).astype(np.float32)


@pytest.mark.parametrize("via", VIA)
def test_noisecapture_jittered_stamps_are_snapped(via, tiny, tmp_path, capsys):
    real = shared_file("data", "noisecapture", "track_07efe9f7-bda1-4e49-8514-f3a2a1fc576d.zip")
    if via == "api":
        with pytest.warns(InputWarning, match=r"track_07efe9f7.*snapped (\d+) of 115 time stamps.*largest shift"):
            blocks = list(archives.open_archive(real))
        assert sum(b.n_valid for b in blocks) == 115 and sum(b.n_frames for b in blocks) == 115
        # synthetic: +-0.2 s of jitter on a 1-s grid reads whole, and says by how much it moved
        t_ms = int(T0.astype(np.int64) // 1_000_000) + np.arange(60) * 1000
        jitter = np.random.default_rng(1).uniform(-200, 200, 60).astype(np.int64)
        path = write_noisecapture(tmp_path / "jit.zip", t_ms + jitter, _nc_levels(60))
        with pytest.warns(InputWarning, match=r"largest shift 0\.\d+ s"):
            blocks = list(archives.open_archive(path))
        assert sum(b.n_valid for b in blocks) == 60
        # a phone clock that runs fast (a stamp every 0.975 s) plus jitter: no false duplicate, no false gap
        drift = int(T0.astype(np.int64) // 1_000_000) + np.arange(300) * 975 + jitter.repeat(5)[:300] // 2
        path = write_noisecapture(tmp_path / "drift.zip", drift, _nc_levels(300))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InputWarning)
            reader = archives.open_archive(path)
            blocks = list(reader)
        assert sum(b.n_valid for b in blocks) == sum(b.n_frames for b in blocks) == 300
        assert reader.snap_report.period_s == pytest.approx(0.975, abs=0.002)
        # a clean export: snapped by a few ms, silently
        clean = shared_file("data", "noisecapture", "track_umik.zip")
        with warnings.catch_warnings():
            warnings.simplefilter("error", InputWarning)
            assert sum(b.n_valid for b in archives.open_archive(clean)) == 16
        # a true duplicate (the same stamp twice) is still an error with the file and the position
        dup = t_ms.copy()
        dup[30] = dup[29]
        path = write_noisecapture(tmp_path / "dup.zip", dup, _nc_levels(60))
        with pytest.raises(archives.ArchiveError, match=r"dup\.zip, row 30 .*duplicated frame"):
            list(archives.open_archive(path))
    else:
        code, _out, err = _run(
            capsys,
            "classify",
            real,
            "-o",
            tmp_path / "out",
            "-c",
            tiny["clf"],
            "-t",
            tiny["tr_nc"],
            "--no-progress",
            "--reference",
            "auto",
            "--windows",
            "1s",
        )
        assert code == 0, err
        assert "warning:" in err and "snapped" in err and "largest shift" in err
        t = archives.read_results(tmp_path / "out")
        assert sum(t.column("chunks").to_pylist()) == 115


def test_auto_reference_levels_just_above_full_scale_are_not_warned_about():
    """--reference auto maps the 99th percentile of the broadband level to 0 dB: a band a little
    above 0 dB is expected there, and warning about it would only teach users to ignore warnings."""
    import warnings

    from spectral_transcoder._validation import check_level_range

    spec = st.get_band_spec("cense_fast")
    lv = np.full((16, spec.n_bands), -40.0)
    lv[3, 10] = 2.0
    with pytest.warns(st.LevelWarning):
        check_level_range(lv, spec)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_level_range(lv, spec, reference="auto")
