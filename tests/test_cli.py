"""The command line: in-process `main([...])` runs, plus one real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _tiny_models import classifier_metadata, make_classifier, make_transcoder, transcoder_metadata
from conftest import shared_file, subprocess_env
from spectral_transcoder import cli, registry
from spectral_transcoder.specs import get_band_spec, get_mel_spec, spec_from_json

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def birds() -> tuple[np.ndarray, int]:
    import soundfile as sf

    data, sr = sf.read(str(shared_file("reference", "audio", "birds.wav")), dtype="float32", always_2d=True)
    return data, sr


def test_help_subprocess():
    env = subprocess_env()
    r = subprocess.run(
        [sys.executable, "-m", "spectral_transcoder", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    for word in ("analyze", "transcode", "models", "third-octave"):
        assert word in r.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["analyze", "--help"],
        ["transcode", "--help"],
        ["models", "--help"],
        ["models", "import", "--help"],
        ["models", "info", "--help"],
    ],
)
def test_subcommand_help(argv, capsys):
    with pytest.raises(SystemExit) as ei:
        cli.main(argv)
    assert ei.value.code == 0
    assert "usage: spectral-transcoder" in capsys.readouterr().out


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as ei:
        cli.main([])
    assert ei.value.code == 2


def test_command_registry_has_room():
    assert list(cli.COMMANDS)[:3] == ["analyze", "transcode", "models"]

    @cli.register_command("zz-test", help="a plug-in command")
    def _setup(p):
        p.add_argument("--x", type=int, default=1)
        return lambda args: args.x * 0

    try:
        assert cli.main(["zz-test", "--x", "3"]) == 0
        with pytest.raises(ValueError, match="already registered"):
            cli.register_command("zz-test", help="again")(_setup)
    finally:
        del cli.COMMANDS["zz-test"]


@pytest.mark.shared
def test_analyze_birds(tmp_path, birds, capsys):
    from spectral_transcoder.analysis import third_octave
    from spectral_transcoder.pinv import pinv

    wav = shared_file("reference", "audio", "birds.wav")
    out = tmp_path / "birds.npz"
    assert cli.main(["analyze", str(wav), "-o", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(wav)) and "80 x 29" in line and "1001 x 64" in line and "partial (" not in line
    with np.load(out, allow_pickle=False) as z:
        assert set(z.files) >= {"levels", "mel_pinv", "band_spec", "mel_spec", "source", "sample_rate", "frame_period"}
        levels, mel = z["levels"], z["mel_pinv"]
        assert levels.shape == (80, 29) and levels.dtype == np.float32 and mel.shape == (1001, 64)
        assert spec_from_json(str(z["band_spec"])) == get_band_spec("cense_fast")
        assert spec_from_json(str(z["mel_spec"])) == get_mel_spec("pann")
        assert str(z["source"]) == str(wav) and int(z["sample_rate"]) == 48000 and float(z["frame_period"]) == 0.125
        assert int(z["last_chunk_frames"]) == 8
    data, sr = birds
    np.testing.assert_array_equal(levels, third_octave(data.mean(axis=1), sr))
    np.testing.assert_array_equal(mel, pinv(levels, "pann"))


@pytest.mark.shared
def test_analyze_partial_and_several_files(tmp_path, birds, capsys):
    import soundfile as sf

    from spectral_transcoder.pinv import pinv

    data, sr = birds
    short = tmp_path / "short.flac"
    sf.write(short, data[: int(2.5 * sr)], sr)  # 2.5 s -> 20 frames: 2 chunks + 4 frames
    mono = tmp_path / "mono.wav"
    sf.write(mono, data[:sr, 0], sr, subtype="FLOAT")
    out = tmp_path / "out"
    assert (
        cli.main(
            ["analyze", str(short), str(mono), "-o", str(out), "--target", "yamnet_torchport", "--db-offset", "26"]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert "partial (4/8 frames = 0.5 s), padded" in lines[0] and "partial (" not in lines[1]
    assert "+26 dB" in lines[0]
    with np.load(out / "short.npz") as z:
        levels = z["levels"]
        assert levels.shape == (20, 29) and int(z["last_chunk_frames"]) == 4
        spec = spec_from_json(str(z["band_spec"]))
        assert spec.db_offset == 26.0
        assert z["mel_pinv"].shape == (3 * 95 + 1, 64)  # padded to 3 chunks, yamnet_torchport stitching
        with pytest.warns(Warning):
            np.testing.assert_array_equal(
                z["mel_pinv"], pinv(levels, "yamnet_torchport", band_spec=spec, partial="pad")
            )
    with np.load(out / "mono.npz") as z:
        assert z["levels"].shape == (8, 29)


def test_analyze_errors(tmp_path, capsys):
    assert cli.main(["analyze", str(tmp_path / "absent.wav"), "-o", str(tmp_path / "x.npz")]) == 1
    assert "absent.wav" in capsys.readouterr().err
    (tmp_path / "bad.wav").write_bytes(b"RIFF0000WAVEjunk")
    assert cli.main(["analyze", str(tmp_path / "bad.wav"), "-o", str(tmp_path / "x.npz")]) == 1
    assert "cannot read audio file" in capsys.readouterr().err
    assert cli.main(["analyze", "a.wav", "b.wav", "-o", str(tmp_path / "x.npz")]) == 1
    assert "must be a folder" in capsys.readouterr().err


def test_transcode(tmp_path, home, capsys):
    levels = np.random.default_rng(0).uniform(-70, -30, (19, 29)).astype(np.float32)
    src = tmp_path / "levels.npz"
    np.savez(src, levels=levels, band_spec=np.array(get_band_spec("cense_fast").to_json()))
    cnn = make_transcoder(tmp_path / "cnn.onnx")
    out = tmp_path / "mel.npz"
    assert cli.main(["transcode", str(src), "-o", str(out), "--transcoder", str(cnn)]) == 0
    msg = capsys.readouterr().out
    assert "partial (3/8 frames), padded" in msg and "tiny-cnn@" in msg
    from spectral_transcoder.models import Transcoder

    tr = Transcoder.from_file(cnn)
    with np.load(out) as z:
        with pytest.warns(Warning):
            np.testing.assert_array_equal(z["mel"], tr(levels, partial="pad"))
        assert str(z["transcoder"]) == tr.model_id and spec_from_json(str(z["mel_spec"])).name == "pann"
        assert int(z["last_chunk_frames"]) == 3
    # by registry name, PINV alone, and the chunks layout
    registry.import_model(cnn, name="pann-cnn-logits")
    assert (
        cli.main(
            [
                "transcode",
                str(src),
                "-o",
                str(out),
                "--transcoder",
                "pann-cnn-logits",
                "--partial",
                "drop",
                "--layout",
                "chunks",
            ]
        )
        == 0
    )
    with np.load(out) as z:
        assert z["mel"].shape == (2, 101, 64)
    assert cli.main(["transcode", str(src), "-o", str(out), "--transcoder", "pinv:yamnet_torchport"]) == 0
    with np.load(out) as z:
        assert z["mel"].shape == (3 * 95 + 1, 64)
    capsys.readouterr()
    assert (
        cli.main(["transcode", str(src), "-o", str(out), "--transcoder", "pann-cnn-logits", "--partial", "error"]) == 1
    )
    assert "left over" in capsys.readouterr().err
    np.savez(tmp_path / "nolevels.npz", x=levels)
    assert cli.main(["transcode", str(tmp_path / "nolevels.npz"), "-o", str(out), "--transcoder", "pinv:pann"]) == 1
    assert "no `levels` array" in capsys.readouterr().err


def test_models_import_list_info(tmp_path, home, capsys):
    clf = make_classifier(
        tmp_path / "c.onnx", meta=classifier_metadata("yamnet-torchport", mel="yamnet_torchport"), frames=96
    )
    cnn = make_transcoder(tmp_path / "t.onnx", meta=transcoder_metadata("my-cnn", mel="yamnet_torchport"))
    assert cli.main(["models", "import", str(clf)]) == 0
    assert cli.main(["models", "import", str(cnn), "--name", "yamnet-cnn-logits"]) == 0
    out = capsys.readouterr().out
    assert "imported classifier 'yamnet-torchport'" in out and "imported transcoder 'yamnet-cnn-logits'" in out
    assert cli.main(["models", "list"]) == 0
    out = capsys.readouterr().out
    rows = {tuple(line.split()[:3]) for line in out.splitlines()}
    assert ("classifier", "yamnet-torchport", "available") in rows
    assert ("transcoder", "yamnet-cnn-logits", "available") in rows
    assert ("classifier", "pann-resnet38", "missing") in rows
    assert cli.main(["models", "info", "yamnet-cnn-logits"]) == 0
    out = capsys.readouterr().out
    for word in (
        "kind:          transcoder",
        "name:          my-cnn",
        "matches the registry",
        "input spec:    cense_fast",
        "output spec:   yamnet_torchport",
        "licence:       MIT",
        '"mse": 1.5',
        "sha256:",
    ):
        assert word in out
    assert cli.main(["models", "info", str(clf)]) == 0
    out = capsys.readouterr().out
    assert "labels:        5 (Speech, Music, Vehicle, ...)" in out and "Apache-2.0" in out
    # missing: says how to get it, non-zero status
    assert cli.main(["models", "info", "pann-cnn-mels"]) == 1
    err = capsys.readouterr().err
    assert "python -m training convert transcoder" in err and "models import pann-cnn-mels.onnx" in err
    # checksum mismatch is reported by info
    e = registry.resolve("yamnet-torchport", "classifier")
    e.path.write_bytes(e.path.read_bytes() + b"\x00")
    assert cli.main(["models", "info", "yamnet-torchport", "--kind", "classifier"]) == 1
    assert "does not match the registry" in capsys.readouterr().err
    # importing junk fails cleanly
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    assert cli.main(["models", "import", str(tmp_path / "junk.onnx")]) == 1
    assert "junk.onnx" in capsys.readouterr().err
    assert json.loads((home / "index.json").read_text())["models"]["classifier"].keys() == {"yamnet-torchport"}
