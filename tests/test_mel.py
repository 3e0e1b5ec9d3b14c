"""Classifier Mel front ends: parity with the goldens, an independent float64 reference,
invariances (batching, layouts, threads), physics (gain, sine peak), frame counts and errors."""

from __future__ import annotations

import dataclasses
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st_

import spectral_transcoder as st
from spectral_transcoder import _core, _validation, tables
from spectral_transcoder._validation import resample
from spectral_transcoder.frontends import mel, patches

PRESETS = ["pann", "yamnet_torchport", "yamnet", "efficientat"]
SPECS = {name: st.get_mel_spec(name) for name in PRESETS}


def _noise(seed: int, shape: tuple[int, ...], amp: float = 0.1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * amp).astype(np.float32)


def _sine(freq: float, n: int, sr: float, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / sr)).astype(np.float32)


def _reference(audio: np.ndarray, spec: st.MelSpec) -> np.ndarray:
    """Float64 numpy re-statement of the spec (one row at the spec's rate) -> (frames, n_mels)."""
    n = audio.shape[-1]
    x = np.asarray(audio, np.float64)
    x = np.pad(x, (0, spec.padded_length(n) - n))
    if spec.preemphasis:
        x = x[1:] - spec.preemphasis * x[:-1]
    n_fft, hop = spec.n_fft, spec.hop_length
    if spec.center:
        x = np.pad(x, n_fft // 2, mode=spec.pad_mode)
    else:  # frame t = y[hop t, hop t + win) sits centred in the n_fft buffer
        x = np.pad(x, ((n_fft - spec.win_length) // 2, n_fft))
    t = spec.n_frames(n)
    frames = np.stack([x[i * hop : i * hop + n_fft] for i in range(t)])
    s = np.abs(np.fft.rfft(frames * tables.stft_window(spec), axis=-1)) ** 2
    if spec.magnitude:
        s = np.sqrt(s)
    m = s @ tables.mel_filterbank(spec).astype(np.float32).astype(np.float64)
    y = 10 * np.log10(np.maximum(m, spec.log_floor)) if spec.log == "db" else np.log(m + spec.log_floor)
    return (y + spec.norm_offset) / spec.norm_scale


def _band_edges_hz(spec: st.MelSpec) -> np.ndarray:
    """The n_mels + 2 triangle corners of the spec's design, Hz (centres are [1:-1])."""
    scale = {"slaney": "slaney", "htk": "htk", "tf": "ln", "kaldi": "ln"}[spec.filterbank]
    grid = np.linspace(0.0, spec.sample_rate / 2, 400001)
    lo, hi = tables.hz_to_mel(spec.fmin, scale), tables.hz_to_mel(spec.fmax, scale)
    return np.interp(np.linspace(lo, hi, spec.n_mels + 2), tables.hz_to_mel(grid, scale), grid)


# ------------------------------------------------------------------ golden parity
@pytest.mark.shared
def test_golden_pann_chunks(golden_clip):
    out = mel(golden_clip["audio_32k"].reshape(10, 32000), 32000, "pann")
    assert out.shape == (10, 101, 64) and out.dtype == np.float32
    # float32 FFT noise in weak bands: 3.3e-4 dB measured (spec §7: float32 tol 1e-3)
    np.testing.assert_allclose(out, golden_clip["mel_pann_gt_chunks"], rtol=0, atol=1e-3)


@pytest.mark.shared
def test_golden_pann_whole_file(golden_clip):
    out = mel(golden_clip["audio_32k"], 32000, "pann")
    assert out.shape == (1001, 64)
    np.testing.assert_allclose(out, golden_clip["file_mel_pann_gt"], rtol=0, atol=1e-3)


@pytest.mark.shared
def test_golden_yamnet_torchport_chunks(golden_clip):
    out = mel(golden_clip["audio_16k"].reshape(10, 16000), 16000, "yamnet_torchport")
    assert out.shape == (10, 101, 64)
    np.testing.assert_allclose(out[:, :96], golden_clip["mel_yamnet_gt_chunks"], rtol=0, atol=1e-4)
    # the classifier's patch of a 1-s chunk is frames 0-95
    p = patches(out, "yamnet_torchport")
    assert p.shape == (10, 1, 96, 64)
    np.testing.assert_array_equal(p[:, 0], out[:, :96])


@pytest.mark.shared
def test_golden_yamnet_official(shared):
    with np.load(shared / "reference/golden/yamnet_int8_dequant.npz") as z:
        g = dict(z)
    out = mel(g["wave_16k"], 16000, "yamnet")
    assert out.shape == (1008, 64)
    np.testing.assert_allclose(out, g["logmel"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(patches(out, "yamnet"), g["patches"], rtol=0, atol=1e-4)
    out1 = mel(g["wave_1s_16k"], 16000, "yamnet")
    assert out1.shape == (144, 64)
    np.testing.assert_allclose(out1, g["logmel_1s"], rtol=0, atol=1e-4)
    p1 = patches(out1, "yamnet")
    assert p1.shape == (2, 96, 64)
    np.testing.assert_allclose(p1, g["patches_1s"], rtol=0, atol=1e-4)
    # the padded tail of the 1-s input sits at the floor ln(0.001)
    assert np.allclose(out1[-1], math.log(0.001), atol=1e-6)


@pytest.mark.shared
def test_golden_efficientat(shared):
    with np.load(shared / "reference/golden/efficientat_mn04.npz") as z:
        g = dict(z)
    out = mel(g["wave_32k"], 32000, "efficientat")
    assert out.shape == (1000, 128)
    np.testing.assert_allclose(out, g["mel"].T, rtol=0, atol=1e-4)
    out1 = mel(g["wave_1s_32k"], 32000, "efficientat")
    assert out1.shape == (100, 128)
    np.testing.assert_allclose(out1, g["mel_1s"].T, rtol=0, atol=1e-4)


@pytest.mark.shared
def test_torchport_golden_equals_patches_torchport(golden_street, shared):
    with np.load(shared / "reference/golden/yamnet_int8_dequant.npz") as z:
        ref = z["patches_torchport"]
    out = patches(mel(golden_street["audio_16k"].reshape(10, 16000), 16000, "yamnet_torchport"), "yamnet_torchport")
    np.testing.assert_allclose(out[:, 0], ref, rtol=0, atol=1e-4)


# ----------------------------------------------------- independent float64 reference
@pytest.mark.parametrize("name", PRESETS)
@given(seed=st_.integers(0, 2**31), extra=st_.integers(0, 1500), log_amp=st_.floats(-5, 1))
def test_matches_float64_reference(name, seed, extra, log_amp):
    spec = SPECS[name]
    n = spec.min_samples() + extra
    x = _noise(seed, (n,), amp=10.0**log_amp)
    out = mel(x, spec.sample_rate, spec)
    ref = _reference(x, spec)
    assert out.shape == ref.shape == (spec.n_frames(n), spec.n_mels)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-3 if spec.log == "db" else 1e-4)


@pytest.mark.parametrize(
    "variant",
    [
        {"pad_mode": "constant"},
        {"center": False},
        {"preemphasis": 0.5, "center": False},
        {"preemphasis": 0.9, "pad_mode": "constant", "magnitude": True},
    ],
    ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()),
)
def test_custom_spec_variants(variant):
    spec = dataclasses.replace(SPECS["pann"], name="custom", **variant)
    for n in (spec.min_samples(), spec.min_samples() + 977):
        x = _noise(n, (n,))
        np.testing.assert_allclose(mel(x, spec.sample_rate, spec), _reference(x, spec), rtol=0, atol=1e-3)
    with pytest.raises(st.InvalidInputError, match=f"minimum is {spec.min_samples()} samples"):
        mel(np.zeros(spec.min_samples() - 1, np.float32), spec.sample_rate, spec)


@pytest.mark.parametrize("name", PRESETS)
def test_silence_gives_the_floor(name):
    spec = SPECS[name]
    out = mel(np.zeros(spec.sample_rate, np.float32), spec.sample_rate, spec)
    floor = 10 * math.log10(spec.log_floor) if spec.log == "db" else math.log(spec.log_floor)
    np.testing.assert_allclose(out, (floor + spec.norm_offset) / spec.norm_scale, rtol=1e-6)


def test_subnormal_floor_takes_the_scalar_log():
    spec = dataclasses.replace(SPECS["pann"], name="tiny_floor", log_floor=1e-40)
    out = mel(np.zeros(2000, np.float32), 32000, spec)
    np.testing.assert_allclose(out, 10 * np.log10(np.float64(np.float32(1e-40))), rtol=1e-5)


# ------------------------------------------------------------------------ physics
@given(gain=st_.floats(1e-3, 1e2), seed=st_.integers(0, 2**31))
def test_pann_gain_shifts_db(gain, seed):
    x = _noise(seed, (8000,))
    a = mel(x, 32000, "pann")
    b = mel((x * np.float32(gain)).astype(np.float32), 32000, "pann")
    above = (a > -90) & (b > -90)  # away from the -100 dB floor
    assert above.mean() > 0.99
    np.testing.assert_allclose((b - a)[above], 20 * math.log10(np.float32(gain)), atol=2e-3)


@pytest.mark.parametrize("name", PRESETS)
@given(data=st_.data())
def test_sine_peaks_in_nearest_band(name, data):
    spec = SPECS[name]
    edges = _band_edges_hz(spec)
    bin_hz = spec.sample_rate / spec.n_fft
    # bands wide enough to resolve a windowed sine (main lobe +-2 bins)
    wide = [m for m in range(spec.n_mels) if edges[m + 2] - edges[m] >= 8 * bin_hz]
    m = data.draw(st_.sampled_from(wide), label="band")
    u = data.draw(st_.floats(-0.2, 0.2), label="offset in band spacings")
    lo, c, hi = edges[m : m + 3]
    f = c + u * ((hi - c) if u > 0 else (c - lo))
    out = mel(_sine(f, spec.sample_rate // 2, spec.sample_rate), spec.sample_rate, spec)
    nearest = int(np.argmin(np.abs(edges[1:-1] - f)))
    assert nearest == m
    assert int(np.argmax(out.mean(axis=0))) == m


# ------------------------------------------------------------------- frame counts
@pytest.mark.parametrize("name", PRESETS)
@given(data=st_.data())
def test_frame_counts_around_minimum(name, data):
    spec = SPECS[name]
    n = data.draw(st_.integers(spec.min_samples(), spec.min_samples() + 4 * spec.hop_length), label="n")
    out = mel(np.zeros(n, np.float32), spec.sample_rate, spec)
    assert out.shape == (spec.n_frames(n), spec.n_mels)


@pytest.mark.parametrize(
    "name,n,frames",
    [
        ("pann", 32000, 101),
        ("pann", 320000, 1001),
        ("pann", 513, 2),
        ("yamnet_torchport", 16000, 101),
        ("yamnet_torchport", 257, 2),
        ("yamnet", 1, 96),
        ("yamnet", 15600, 96),
        ("yamnet", 15601, 144),
        ("yamnet", 16000, 144),
        ("yamnet", 23280, 144),
        ("yamnet", 23281, 192),
        ("yamnet", 160000, 1008),
        ("efficientat", 32000, 100),
        ("efficientat", 320000, 1000),
        ("efficientat", 514, 2),
    ],
)
def test_known_frame_counts(name, n, frames):
    spec = SPECS[name]
    assert spec.n_frames(n) == frames
    assert mel(_noise(n, (n,)), spec.sample_rate, spec).shape == (frames, spec.n_mels)


@pytest.mark.parametrize(
    "name,minimum", [("pann", 513), ("yamnet_torchport", 257), ("yamnet", 1), ("efficientat", 514)]
)
def test_minimum_length(name, minimum):
    spec = SPECS[name]
    assert spec.min_samples() == minimum
    mel(_noise(0, (minimum,)), spec.sample_rate, spec)
    with pytest.raises(st.InvalidInputError, match=f"minimum is {minimum} samples"):
        mel(np.zeros(minimum - 1, np.float32), spec.sample_rate, spec)


def test_reflect_padding_needs_more_than_half_a_frame():
    # the real constraint behind min_samples, straight at the kernel
    window = tables.stft_window(SPECS["pann"]).astype(np.float32)
    fb = tables.mel_filterbank(SPECS["pann"]).astype(np.float32)
    args = dict(
        hop=320,
        center=True,
        win_length=1024,
        pad_mode="reflect",
        padded_length=0,
        preemphasis=0.0,
        magnitude=False,
        log_kind="db",
        log_floor=1e-10,
        norm_offset=0.0,
        norm_scale=1.0,
    )
    _core.mel_spectrogram(np.zeros((1, 513), np.float32), window, fb, **args)
    with pytest.raises(ValueError, match="reflect padding"):
        _core.mel_spectrogram(np.zeros((1, 512), np.float32), window, fb, **args)
    with pytest.raises(ValueError, match="pad_mode"):
        _core.mel_spectrogram(np.zeros((1, 600), np.float32), window, fb, **{**args, "pad_mode": "edge"})
    with pytest.raises(ValueError, match="mel_fb"):
        _core.mel_spectrogram(np.zeros((1, 600), np.float32), window, fb[:-1], **args)


# --------------------------------------------------------------------- invariances
@pytest.mark.parametrize("name", PRESETS)
@given(rows=st_.integers(1, 5), extra=st_.integers(0, 3000), seed=st_.integers(0, 2**31))
def test_batched_equals_per_row(name, rows, extra, seed):
    spec = SPECS[name]
    x = _noise(seed, (rows, spec.min_samples() + extra))
    out = mel(x, spec.sample_rate, spec)
    for r in range(rows):
        np.testing.assert_array_equal(out[r], mel(x[r], spec.sample_rate, spec))


def test_leading_axes_are_batch_axes():
    x = _noise(1, (2, 3, 4000))
    out = mel(x, 32000, "pann")
    assert out.shape == (2, 3, SPECS["pann"].n_frames(4000), 64)
    np.testing.assert_array_equal(out.reshape(6, -1, 64), mel(x.reshape(6, 4000), 32000, "pann"))


@given(seed=st_.integers(0, 2**31), step=st_.integers(2, 3))
def test_layouts_give_identical_results(seed, step):
    big = _noise(seed, (3, 9000 * step))
    view = big[:, ::step]  # non-contiguous
    ref = mel(np.ascontiguousarray(view), 32000, "efficientat")
    np.testing.assert_array_equal(mel(view, 32000, "efficientat"), ref)
    np.testing.assert_array_equal(mel(np.asfortranarray(view), 32000, "efficientat"), ref)
    np.testing.assert_array_equal(mel(view.astype(np.float64), 32000, "efficientat"), ref)
    np.testing.assert_array_equal(mel(big.T[::step].T, 32000, "efficientat"), ref)


@pytest.mark.parametrize("name", PRESETS)
def test_threads_and_concurrent_calls_agree(name):
    spec = SPECS[name]
    inputs = [_noise(s, (2, spec.sample_rate + 37 * s)) for s in range(6)]
    serial = [mel(x, spec.sample_rate, spec, n_threads=1) for x in inputs]
    for x, ref in zip(inputs, serial):
        np.testing.assert_array_equal(mel(x, spec.sample_rate, spec, n_threads=2), ref)
        np.testing.assert_array_equal(mel(x, spec.sample_rate, spec, n_threads=7), ref)
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            results = list(pool.map(lambda x: mel(x, spec.sample_rate, spec), inputs))
            for got, ref in zip(results, serial):
                np.testing.assert_array_equal(got, ref)


def test_output_layout():
    out = mel(_noise(0, (32000,)), 32000)  # default spec: pann
    assert out.shape == (101, 64) and out.dtype == np.float32 and out.flags.c_contiguous


# ------------------------------------------------------------------- input forms
def test_int16_is_scaled_to_full_scale():
    pcm = (np.random.default_rng(3).integers(-32768, 32768, 16000)).astype(np.int16)
    np.testing.assert_array_equal(mel(pcm, 16000, "yamnet"), mel(pcm.astype(np.float32) / 32768, 16000, "yamnet"))


def test_other_rates_are_resampled():
    x = _noise(4, (44100,))
    out = mel(x, 44100, "pann")
    y = resample(x, 44100.0, 32000)
    assert out.shape == (SPECS["pann"].n_frames(y.shape[-1]), 64)
    np.testing.assert_array_equal(out, mel(y, 32000, "pann"))
    # a 1 kHz tone at 48 kHz peaks where the same tone at 16 kHz does
    a = mel(_sine(1000.0, 48000, 48000), 48000, "yamnet_torchport").mean(axis=0)
    b = mel(_sine(1000.0, 16000, 16000), 16000, "yamnet_torchport").mean(axis=0)
    assert int(np.argmax(a)) == int(np.argmax(b))


def test_empty_batches():
    assert mel(np.zeros((0, 32000), np.float32), 32000).shape == (0, 101, 64)
    assert mel(np.zeros((2, 0, 48000), np.float32), 48000, "yamnet").shape == (2, 0, 144, 64)


def test_resample_batches_beyond_soxr_channel_limit(monkeypatch):
    monkeypatch.setattr(_validation, "SOXR_MAX_CHANNELS", 3)  # soxr's real limit is 65536
    x = _noise(6, (2, 4, 4800))
    y = mel(x, 48000, "pann")
    for i in range(2):
        for j in range(4):
            np.testing.assert_array_equal(y[i, j], mel(x[i, j], 48000, "pann"))


def test_spec_objects_are_accepted():
    x = _noise(5, (20000,))
    spec = SPECS["efficientat"]
    np.testing.assert_array_equal(mel(x, 32000, spec), mel(x, 32000, "efficientat"))
    np.testing.assert_array_equal(mel(x, 32000, spec.to_dict()), mel(x, 32000, "efficientat"))


# ------------------------------------------------------------------------- errors
def test_bad_inputs():
    x = _noise(0, (32000,))
    with pytest.raises(st.InvalidInputError, match="dimension"):
        mel(np.float32(0.5), 32000)
    bad = _noise(0, (2, 4000))
    bad[1, 1234] = np.nan
    with pytest.raises(st.InvalidInputError, match=r"nan at index \(1, 1234\)"):
        mel(bad, 32000)
    bad[1, 1234] = -np.inf
    with pytest.raises(st.InvalidInputError, match=r"-inf at index \(1, 1234\)"):
        mel(bad, 32000)
    with pytest.raises(st.InvalidInputError, match="minimum is 513 samples"):
        mel(x[:512], 32000, "pann")
    with pytest.raises(st.InvalidInputError, match="minimum is 513 samples"):
        mel(x[:100], 8000, "pann")  # 400 samples once resampled to 32 kHz
    with pytest.raises(st.InvalidInputError, match="minimum is 514 samples"):
        mel(np.zeros((3, 0), np.float32), 32000, "efficientat")
    with pytest.raises(st.UnknownSpecError, match="pann"):
        mel(x, 32000, "panns")
    for sr in (0, -16000, float("nan")):
        with pytest.raises(st.InvalidInputError, match="sample_rate"):
            mel(x, sr)
    with pytest.raises(st.InputTypeError, match="sample_rate"):
        mel(x, "32000")
    with pytest.raises(st.InputTypeError):
        mel(x.astype(np.complex64), 32000)
    with pytest.raises(st.InputTypeError):
        mel("audio.wav", 32000)
    with pytest.raises(st.InvalidInputError, match="n_threads"):
        mel(x, 32000, n_threads=-1)


# ------------------------------------------------------------------------ patches
@given(frames=st_.integers(96, 700), lead=st_.integers(1, 3))
def test_patches_cut_complete_windows(frames, lead):
    m = np.arange(lead * frames * 64, dtype=np.float32).reshape(lead, frames, 64)
    for name in ("yamnet", "yamnet_torchport"):
        spec = SPECS[name]
        p = patches(m, name)
        count = 1 + (frames - 96) // spec.patch_hop_frames
        assert p.shape == (lead, count, 96, 64) and p.flags.c_contiguous
        for i in range(count):
            np.testing.assert_array_equal(p[:, i], m[:, i * spec.patch_hop_frames : i * spec.patch_hop_frames + 96])


def test_patches_errors():
    with pytest.raises(st.InvalidInputError, match="no fixed-size patches"):
        patches(np.zeros((101, 64), np.float32), "pann")
    with pytest.raises(st.InvalidInputError, match="fewer than one"):
        patches(np.zeros((95, 64), np.float32), "yamnet")
    with pytest.raises(st.InvalidInputError, match=r"\(\.\.\., frames, 64\)"):
        patches(np.zeros((100, 128), np.float32), "yamnet")
    m = np.zeros((100, 64), np.float32)
    m[3, 7] = np.inf
    with pytest.raises(st.InvalidInputError, match=r"inf at index \(3, 7\)"):
        patches(m, "yamnet")
