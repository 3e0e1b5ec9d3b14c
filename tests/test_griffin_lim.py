"""st.griffin_lim: a Mel back to audio whose own Mel gives the input back.

The STFT pieces are checked exactly (framing against the C++ front end, least-squares
inverse STFT, pre-emphasis integration, the non-negative Mel inversion); the whole chain
by re-analysis: Mel -> griffin_lim -> st.mel -> the same Mel, within these bounds
(mean absolute log-Mel error in dB of Mel power, ``inverse.db_per_unit``). Measured with
the defaults (64 iterations, seed 0): synthetic 0.36-0.46 dB mean, 1.2-2.0 dB p95; street
0.30-0.39 dB mean, 1.0-1.5 dB p95; PINV PANN 0.24 dB (docs/griffin-lim.md has 10-s clips):

- synthetic chirp + noise, 2 s, 64 iterations: mean < 0.8 dB, 95th percentile < 3 dB;
- 2 s of the reference street recording: mean < 0.8 dB, 95th percentile < 3 dB;
- the PINV-transcoded PANN Mel of the same street audio: mean < 0.8 dB;
- phase reconstruction works: 64 iterations beat the random initial phase (0 iterations,
  about 4-6 dB) by more than 5x on the mean error, and the Mel spectral convergence
  ``||m_out - m_in|| / ||m_in||`` (linear Mel values) falls below a third of its
  random-phase value.
"""

from __future__ import annotations

import numpy as np
import pytest

import spectral_transcoder as st
from conftest import shared_file
from spectral_transcoder import cli, tables
from spectral_transcoder.errors import InputTypeError, InvalidInputError, UnknownSpecError
from spectral_transcoder.inverse import (
    _deemphasis,
    _min_frames,
    _SpecStft,
    _undo_log,
    db_per_unit,
    mel_to_linear,
    output_length,
)

#: Mel specs of the shipped classifiers (every registered Mel spec).
SPECS = sorted(st.MEL_SPECS)
MEAN_DB, P95_DB = 0.8, 3.0


def _chirp_noise(spec: st.MelSpec, seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """An exponential chirp 100 Hz -> 0.45 sr with a slow tremolo, plus white noise 34 dB below."""
    sr = spec.sample_rate
    t = np.arange(int(seconds * sr)) / sr
    f0, f1 = 100.0, 0.45 * sr
    k = np.log(f1 / f0) / seconds
    chirp = np.sin(2 * np.pi * f0 * (np.exp(k * t) - 1) / k) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    noise = np.random.default_rng(seed).standard_normal(t.size) * 0.01
    return (0.25 * chirp + noise).astype(np.float32)


def _errors(m_in: np.ndarray, audio: np.ndarray, spec: st.MelSpec) -> tuple[float, float, float]:
    """(mean, p95) absolute log-Mel error in dB and the linear Mel spectral convergence."""
    m_out = st.mel(audio, spec.sample_rate, spec)[..., : m_in.shape[-2], :]
    d = np.abs(m_out - m_in) * db_per_unit(spec)
    a, b = _undo_log(m_in, spec), _undo_log(m_out, spec)
    return float(d.mean()), float(np.percentile(d, 95)), float(np.linalg.norm(b - a) / np.linalg.norm(a))


# ------------------------------------------------------------------ the pieces, exactly
@pytest.mark.parametrize("name", SPECS)
def test_stft_is_the_front_ends(name):
    """The inverse's STFT, through the spec's filterbank and log, is st.mel (the C++ kernel)."""
    spec = st.get_mel_spec(name)
    n_frames = 40
    x = _chirp_noise(spec, 1.0)[: output_length(n_frames, spec)]
    y = x.astype(np.float64)[None]
    if spec.preemphasis:
        y = y[:, 1:] - spec.preemphasis * y[:, :-1]
    spec_ = _SpecStft(spec, n_frames, y.shape[1])
    p = np.abs(spec_.stft(y))
    p = p if spec.magnitude else p**2
    m = p @ tables.mel_filterbank(spec)
    ref = 10 * np.log10(np.maximum(m, spec.log_floor)) if spec.log == "db" else np.log(m + spec.log_floor)
    ref = (ref + spec.norm_offset) / spec.norm_scale
    got = st.mel(x, spec.sample_rate, spec)[:n_frames]
    assert np.abs(got - ref[0]).max() * db_per_unit(spec) < 1e-3


@pytest.mark.parametrize("name", SPECS)
def test_istft_inverts_stft(name):
    """Least-squares overlap-add (sum of squared windows, reflect padding folded back) is an
    exact inverse on every sample the windows see by more than the documented floor."""
    spec = st.get_mel_spec(name)
    n_frames = 30
    n = output_length(n_frames, spec) - (1 if spec.preemphasis else 0)
    y = np.random.default_rng(1).standard_normal((2, n))
    op = _SpecStft(spec, n_frames, n)
    raw = op._fold(op._overlap_add(np.broadcast_to(op.window**2, (1, n_frames, spec.n_fft))))[0]
    seen = raw >= 0.1 * raw.max()
    np.testing.assert_allclose(op.istft(op.stft(y))[:, seen], y[:, seen], atol=1e-12)
    # Centred specs see every sample well; a non-centred one (yamnet) misses only the Hann tails
    # at its two ends (76 samples each, w < 0.32), which the inverse fades in and out.
    if spec.center:
        assert seen.all()
    else:
        assert not seen[: spec.win_length // 2].all() and seen[spec.win_length // 2 : -spec.win_length // 2].all()


def test_deemphasis_inverts_preemphasis():
    x = np.random.default_rng(2).standard_normal((3, 1000))
    x[:, 0] = 0.0  # the sample pre-emphasis cannot give back
    y = x[:, 1:] - 0.97 * x[:, :-1]
    np.testing.assert_allclose(_deemphasis(y, 0.97), x, atol=1e-12)


@pytest.mark.parametrize("name", SPECS)
def test_mel_inversion_is_non_negative_and_fits(name):
    spec = st.get_mel_spec(name)
    m = st.mel(_chirp_noise(spec, 0.5), spec.sample_rate, spec)
    lin = mel_to_linear(_undo_log(m, spec), spec)
    assert lin.shape == (m.shape[0], spec.n_bins) and (lin >= 0).all()
    back = lin @ tables.mel_filterbank(spec)
    ref = 10 * np.log10(np.maximum(back, spec.log_floor)) if spec.log == "db" else np.log(back + spec.log_floor)
    ref = (ref + spec.norm_offset) / spec.norm_scale
    assert np.abs(ref - m).mean() * db_per_unit(spec) < 0.05


# ------------------------------------------------------------------ the whole chain
@pytest.mark.parametrize("name", SPECS)
def test_roundtrip_synthetic(name):
    spec = st.get_mel_spec(name)
    m = st.mel(_chirp_noise(spec), spec.sample_rate, spec)
    base = _errors(m, st.griffin_lim(m, spec=spec, n_iter=0), spec)
    out = st.griffin_lim(m, spec=spec)
    mean, p95, sc = _errors(m, out, spec)
    assert out.dtype == np.float32 and out.shape == (output_length(m.shape[0], spec),)
    assert mean < MEAN_DB and p95 < P95_DB, (mean, p95)
    assert mean < base[0] / 5, (mean, base)
    assert sc < base[2] / 3, (sc, base)


@pytest.mark.shared
@pytest.mark.parametrize("name", SPECS)
def test_roundtrip_real_clip(name):
    import soundfile as sf

    wav = shared_file("reference", "audio", "street_pedestrian-paris-152-4607-a.wav")
    x, sr = sf.read(str(wav), dtype="float32", start=2 * 44100, frames=2 * 44100)
    spec = st.get_mel_spec(name)
    m = st.mel(x, sr, spec)
    mean, p95, _ = _errors(m, st.griffin_lim(m, spec=spec), spec)
    assert mean < MEAN_DB and p95 < P95_DB, (mean, p95)


@pytest.mark.shared
def test_roundtrip_transcoded_mel():
    """A PINV-transcoded Mel (no audio has exactly it) still comes back closely."""
    import soundfile as sf

    wav = shared_file("reference", "audio", "street_pedestrian-paris-152-4607-a.wav")
    x, sr = sf.read(str(wav), dtype="float32", frames=2 * 44100)
    m = st.pinv(st.third_octave(x, sr), "pann")  # 2 s -> 201 frames
    mean, _, _ = _errors(m, st.griffin_lim(m, spec="pann"), st.get_mel_spec("pann"))
    assert mean < MEAN_DB, mean


def test_phase_iterations_improve_monotonically_enough():
    spec = st.get_mel_spec("yamnet_torchport")
    m = st.mel(_chirp_noise(spec, 1.0), spec.sample_rate, spec)
    errs = [_errors(m, st.griffin_lim(m, spec=spec, n_iter=n), spec)[0] for n in (0, 4, 16, 64)]
    assert errs[0] > errs[1] > errs[2] > errs[3], errs


# ------------------------------------------------------------------ lengths, batches, determinism
@pytest.mark.parametrize("name", SPECS)
def test_output_length_gives_the_frames_back(name):
    spec = st.get_mel_spec(name)
    n_frames = 96 + 48 if spec.pad_to_patches else 57
    m = st.mel(_chirp_noise(spec, 1.0), spec.sample_rate, spec)[:n_frames]
    assert m.shape[0] == n_frames
    out = st.griffin_lim(m, spec=spec, n_iter=2)
    want = (n_frames - 1) * spec.hop_length + (0 if spec.center else spec.win_length) + (1 if spec.preemphasis else 0)
    assert out.shape == (want,) and output_length(n_frames, spec) == want
    assert spec.n_frames(want) == n_frames
    assert st.griffin_lim(m, spec=spec, n_iter=2, length=want + 7).shape == (want + 7,)
    np.testing.assert_array_equal(st.griffin_lim(m, spec=spec, n_iter=2, length=100), out[:100])


def test_batch_axes_and_seed():
    spec = st.get_mel_spec("pann")
    a = st.mel(_chirp_noise(spec, 0.5, seed=1), spec.sample_rate, spec)
    b = st.mel(_chirp_noise(spec, 0.5, seed=2), spec.sample_rate, spec)
    both = st.griffin_lim(np.stack([a, b])[None], spec="pann", n_iter=8)
    assert both.shape == (1, 2, output_length(a.shape[0], spec))
    one = st.griffin_lim(a, spec="pann", n_iter=8)
    np.testing.assert_array_equal(one, st.griffin_lim(a, spec="pann", n_iter=8))  # seeded: reproducible
    assert not np.array_equal(one, st.griffin_lim(a, spec="pann", n_iter=8, seed=1))
    # batch rows draw their phases from one generator: each row is still a valid reconstruction
    assert _errors(a, both[0, 0], spec)[0] < 1.5 and _errors(b, both[0, 1], spec)[0] < 1.5


def test_silence_gives_silence():
    spec = st.get_mel_spec("efficientat")
    m = st.mel(np.zeros(8000, np.float32), spec.sample_rate, spec)
    out = st.griffin_lim(m, spec=spec, n_iter=4)
    assert np.abs(out).max() < 1e-3


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "mel, kwargs, error, words",
    [
        (np.full((20, 64), np.nan, np.float32), {}, InvalidInputError, ["mel", "nan", "(0, 0)"]),
        (np.zeros((20, 128), np.float32), {}, InvalidInputError, ["mel", "128", "64", "pann"]),
        (np.zeros(64, np.float32), {}, InvalidInputError, ["mel", "shape"]),
        (np.zeros((2, 64), np.float32), {}, InvalidInputError, ["mel", "2 frame", "at least 3"]),
        ("mel.npy", {}, InputTypeError, ["mel"]),
        (np.zeros((20, 64)), {"n_iter": -1}, InvalidInputError, ["n_iter"]),
        (np.zeros((20, 64)), {"n_iter": 2.5}, InputTypeError, ["n_iter"]),
        (np.zeros((20, 64)), {"momentum": 1.5}, InvalidInputError, ["momentum"]),
        (np.zeros((20, 64)), {"length": 0}, InvalidInputError, ["length"]),
        (np.zeros((20, 64)), {"spec": "nope"}, UnknownSpecError, ["nope"]),
        (np.full((20, 64), 1e30), {}, InvalidInputError, ["mel", "1e+30", "(0, 0)", "400 dB"]),
    ],
)
def test_bad_input(mel, kwargs, error, words):
    kwargs = {"spec": "pann", **kwargs}
    with pytest.raises(error) as ei:
        st.griffin_lim(mel, **kwargs)
    msg = str(ei.value).lower()
    for w in words:
        assert w.lower() in msg, (w, msg)


def test_min_frames():
    assert _min_frames(st.get_mel_spec("yamnet")) == 1
    for name in ("pann", "yamnet_torchport", "efficientat"):
        spec = st.get_mel_spec(name)
        t = _min_frames(spec)
        assert output_length(t, spec) >= spec.min_samples() > output_length(t - 1, spec)


# ------------------------------------------------------------------ the command line
def test_cli_npy_to_wav(tmp_path, capsys):
    import soundfile as sf

    spec = st.get_mel_spec("efficientat")
    m = st.mel(_chirp_noise(spec, 1.0), spec.sample_rate, spec)
    np.save(tmp_path / "m.npy", m)
    out = tmp_path / "sub" / "m.wav"
    assert (
        cli.main(
            ["griffin-lim", str(tmp_path / "m.npy"), "-o", str(out), "--spec", "efficientat", "--iterations", "16"]
        )
        == 0
    )
    line = capsys.readouterr().out
    assert "efficientat" in line and "16 iterations" in line and "dB" in line and str(out) in line
    audio, sr = sf.read(str(out), dtype="float32")
    assert sr == spec.sample_rate and audio.shape == (output_length(m.shape[0], spec),)
    np.testing.assert_allclose(audio, st.griffin_lim(m, spec=spec, n_iter=16), atol=1e-7)


def test_cli_audio_and_npz(tmp_path, capsys):
    import soundfile as sf

    spec = st.get_mel_spec("yamnet_torchport")
    wav = tmp_path / "in.wav"
    sf.write(str(wav), _chirp_noise(spec, 1.0), spec.sample_rate)
    out = tmp_path / "true.wav"
    assert (
        cli.main(
            ["griffin-lim", str(wav), "-o", str(out), "--spec", "yamnet_torchport", "--iterations", "8", "--normalize"]
        )
        == 0
    )
    audio, sr = sf.read(str(out), dtype="float32")
    assert sr == 16000 and abs(np.abs(audio).max() - 10 ** (-1 / 20)) < 1e-4
    # an .npz as `transcode` writes it: the Mel and its spec's JSON; chunks are stitched
    mel = st.pinv(st.third_octave(_chirp_noise(spec, 1.0), spec.sample_rate), "pann", layout="chunks")
    np.savez(tmp_path / "t.npz", mel=mel, mel_spec=np.array(st.get_mel_spec("pann").to_json()))
    assert cli.main(["griffin-lim", str(tmp_path / "t.npz"), "-o", str(tmp_path / "t.wav"), "--iterations", "4"]) == 0
    audio, sr = sf.read(str(tmp_path / "t.wav"))
    assert sr == 32000 and audio.shape == (output_length(101, "pann"),)
    capsys.readouterr()


def test_cli_transcoder_pinv(tmp_path, capsys):
    import soundfile as sf

    wav = tmp_path / "in.wav"
    sf.write(str(wav), _chirp_noise(st.get_mel_spec("pann"), 2.0), 32000)
    assert (
        cli.main(
            ["griffin-lim", str(wav), "-o", str(tmp_path / "o.wav"), "--transcoder", "pinv:pann", "--iterations", "4"]
        )
        == 0
    )
    assert "pinv-pann" in capsys.readouterr().out
    audio, sr = sf.read(str(tmp_path / "o.wav"))
    assert sr == 32000 and audio.shape == (output_length(201, "pann"),)


@pytest.mark.parametrize(
    "argv_tail, words",
    [
        (["--iterations", "2"], ["needs --spec"]),  # .npy without --spec
        (["--spec", "yamnet"], ["128", "64", "yamnet"]),  # m.npy has 128 bins: an efficientat Mel
        (["--spec", "efficientat", "--transcoder", "yamnet"], ["--transcoder"]),
    ],
)
def test_cli_errors(tmp_path, capsys, argv_tail, words):
    np.save(tmp_path / "m.npy", np.zeros((20, 128), np.float32))
    assert cli.main(["griffin-lim", str(tmp_path / "m.npy"), "-o", str(tmp_path / "o.wav"), *argv_tail]) == 1
    err = capsys.readouterr().err
    assert err.startswith("spectral-transcoder: error:")
    for w in words:
        assert w in err, (w, err)
    assert not (tmp_path / "o.wav").exists()


def test_cli_spec_mismatch(tmp_path, capsys):
    """An .npz carries its Mel spec; a different --spec is refused, not silently used."""
    np.savez(
        tmp_path / "t.npz", mel=np.zeros((20, 64), np.float32), mel_spec=np.array(st.get_mel_spec("pann").to_json())
    )
    assert cli.main(["griffin-lim", str(tmp_path / "t.npz"), "-o", str(tmp_path / "o.wav"), "--spec", "yamnet"]) == 1
    assert "does not match the Mel spec 'pann'" in capsys.readouterr().err
