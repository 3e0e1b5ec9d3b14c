"""Third-octave analysis: parity with the reference, physical properties, layouts, errors."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st_

import spectral_transcoder as st
from spectral_transcoder import _core
from spectral_transcoder._validation import resample
from spectral_transcoder.analysis import third_octave
from spectral_transcoder.specs import CENSE_DB_OFFSET

FAST = st.get_band_spec("cense_fast")
SR = FAST.sample_rate
SINE_DB = 20 * math.log10(1 / math.sqrt(2))  # -3.0103 dB: RMS of a unit sine re full scale


def _noise(seed: int, n: int, lead: tuple[int, ...] = ()) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((*lead, n)).astype(np.float32) * 0.1


def _sine(freq: float, n: int, sr: float = SR, amp: float = 1.0, phase: float = 0.0) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / sr + phase)).astype(np.float32)


# --------------------------------------------------------------------- reference parity
@pytest.mark.shared
def test_golden_levels_cense_convention(golden_clip):
    chunks = golden_clip["audio_32k"].reshape(10, SR)
    levels = third_octave(chunks, SR, db_offset=CENSE_DB_OFFSET)
    assert levels.shape == (10, 8, 29) and levels.dtype == np.float32
    np.testing.assert_allclose(levels, golden_clip["tho_db_chunks"], rtol=0, atol=1e-3)


@pytest.mark.shared
def test_golden_levels_default_is_dbfs(golden_clip):
    chunks = golden_clip["audio_32k"].reshape(10, SR)
    levels = third_octave(chunks, SR)
    np.testing.assert_allclose(levels, golden_clip["tho_db_chunks"] - CENSE_DB_OFFSET, rtol=0, atol=1e-3)


@pytest.mark.shared
def test_golden_levels_via_spec_offset(golden_street):
    import dataclasses

    spec = dataclasses.replace(FAST, db_offset=CENSE_DB_OFFSET)
    levels = third_octave(golden_street["audio_32k"].reshape(10, SR), SR, spec)
    np.testing.assert_allclose(levels, golden_street["tho_db_chunks"], rtol=0, atol=1e-3)


# --------------------------------------------------------------------------- physics
def test_full_scale_sine_at_1khz():
    levels = third_octave(_sine(1000.0, SR), SR)
    band = int(np.argmin(np.abs(FAST.center_frequencies - 1000.0)))
    # All 8 frames of the 1-s chunk, including the one with the 96 padded zeros
    # (the Tukey taper makes that loss negligible).
    np.testing.assert_allclose(levels[:, band], SINE_DB, atol=2e-3)
    cense = third_octave(_sine(1000.0, SR), SR, db_offset=CENSE_DB_OFFSET)
    np.testing.assert_allclose(cense[:7, band], 22.99, atol=5e-3)
    half = third_octave(_sine(1000.0, SR, amp=0.5), SR, db_offset=CENSE_DB_OFFSET)
    np.testing.assert_allclose(half[:7, band], 16.97, atol=5e-3)


@given(gain=st_.floats(1e-3, 1e3), seed=st_.integers(0, 2**16))
def test_gain_shifts_levels(gain, seed):
    x = _noise(seed, 20000)
    ref = third_octave(x, SR)
    scaled = third_octave(x * np.float32(gain), SR)
    np.testing.assert_allclose(scaled - ref, 20 * np.log10(np.float32(gain)), atol=2e-3)


@given(
    band=st_.integers(1, 28),
    amp=st_.floats(1e-3, 1.0),
    phase=st_.floats(0, 2 * np.pi),
)
def test_sine_at_band_centre_lands_in_its_band(band, amp, phase):
    # Band 0 is a single FFT bin (23.4 Hz) above its own centre (19.95 Hz): a sine
    # at 19.95 Hz leaks mostly into band 1, so the property starts at band 1.
    fc = FAST.center_frequencies[band]
    levels = third_octave(_sine(fc, 2 * SR, amp=amp, phase=phase), SR)
    inner = levels[: FAST.n_frames(2 * SR) - 1]  # frames not touching the padded tail
    assert (inner.argmax(axis=-1) == band).all()
    np.testing.assert_allclose(inner[:, band], SINE_DB + 20 * np.log10(amp), atol=0.6)


@given(n_chunks=st_.integers(1, 4), seed=st_.integers(0, 2**16))
def test_chunked_framing_equals_whole_signal(n_chunks, seed):
    chunk = SR  # 1 s = 8 hops exactly, so chunks and the whole signal share the frame grid
    x = _noise(seed, n_chunks * chunk)
    whole = third_octave(x, SR)
    parts = third_octave(x.reshape(n_chunks, chunk), SR)
    per_chunk = chunk // FAST.hop_length
    inside = [n for n in range(per_chunk) if n * FAST.hop_length + FAST.frame_length <= chunk]
    assert inside == list(range(7))
    for c in range(n_chunks):
        np.testing.assert_allclose(parts[c, inside], whole[c * per_chunk + np.array(inside)], atol=1e-4)


def test_silence_reads_the_floor():
    levels = third_octave(np.zeros(SR, np.float32), SR)
    np.testing.assert_array_equal(levels, np.float32(20 * np.log10(FAST.level_floor)))


# ----------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("n,frames", [(4096, 1), (4097, 2), (8096, 2), (8097, 3), (32000, 8)])
def test_frame_counts(n, frames):
    levels = third_octave(_noise(n, n), SR)
    assert levels.shape == (frames, 29)
    assert FAST.n_frames(n) == frames


def test_last_frame_is_zero_padded():
    x = _noise(3, 5000)
    padded = np.concatenate([x, np.zeros(FAST.hop_length + FAST.frame_length - 5000, np.float32)])
    np.testing.assert_array_equal(third_octave(x, SR), third_octave(padded, SR))


@pytest.mark.parametrize("n", [1, 1000, 4095])
def test_shorter_than_one_frame_is_refused(n):
    # issue 15: a sub-frame signal used to give one frame of mostly zero padding, silently
    with pytest.raises(st.InvalidInputError, match=rf"{n} samples at 32000 Hz.*shorter than one analysis frame"):
        third_octave(_noise(n, n), SR)


def test_cense_slow():
    spec = st.get_band_spec("cense_slow")
    levels = third_octave(_sine(1000.0, 10 * SR), SR, "cense_slow")
    assert levels.shape == (10, 29) == (spec.n_frames(10 * SR), spec.n_bands)
    np.testing.assert_allclose(levels[:9, 17], SINE_DB, atol=2e-3)
    assert (levels[:9].argmax(-1) == 17).all()


def test_empty_leading_axis():
    assert third_octave(np.zeros((0, 5000), np.float32), SR).shape == (0, 2, 29)


# ---------------------------------------------------------------- layouts and batching
def test_memory_layouts_agree():
    x = _noise(7, 3 * 9000).reshape(3, 9000)
    ref = third_octave(np.ascontiguousarray(x), SR)
    np.testing.assert_array_equal(third_octave(np.asfortranarray(x), SR), ref)
    wide = np.zeros((3, 18000), np.float32)
    wide[:, ::2] = x
    np.testing.assert_array_equal(third_octave(wide[:, ::2], SR), ref)
    np.testing.assert_array_equal(third_octave(x.astype(np.float64), SR), ref)


@given(rows=st_.integers(1, 5), n=st_.integers(FAST.frame_length, 20000), seed=st_.integers(0, 2**16))
def test_batch_equals_rows(rows, n, seed):
    x = _noise(seed, n, (rows,))
    batch = third_octave(x, SR)
    for r in range(rows):
        np.testing.assert_array_equal(batch[r], third_octave(x[r], SR))


def test_nd_batch_and_threads():
    x = _noise(11, 12000, (2, 3))
    out = third_octave(x, SR)
    assert out.shape == (2, 3, 3, 29)
    np.testing.assert_array_equal(out.reshape(6, 3, 29), third_octave(x.reshape(6, -1), SR))
    big = _noise(12, 5 * SR)
    ref = third_octave(big, SR, n_threads=1)
    for n in (0, 2, 3):
        np.testing.assert_array_equal(third_octave(big, SR, n_threads=n), ref)


def test_concurrent_calls_equal_serial():
    signals = [_noise(s, 3 * SR) for s in range(8)]
    serial = [third_octave(x, SR) for x in signals]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda x: third_octave(x, SR, n_threads=2), signals))
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------ sample rates
def test_resampled_input_44k1():
    sr = 44100
    x = _sine(1000.0, sr, sr=sr)
    levels = third_octave(x, sr)
    n32 = resample(x, sr, SR).shape[-1]
    assert levels.shape == (FAST.n_frames(n32), 29) == (8, 29)
    assert (levels[:7].argmax(-1) == 17).all()
    np.testing.assert_allclose(levels[:7, 17], SINE_DB, atol=0.02)


def test_int16_is_scaled_to_full_scale():
    x = _sine(1000.0, SR, amp=0.5)
    pcm = np.round(x * 32767).astype(np.int16)
    np.testing.assert_allclose(third_octave(pcm, SR), third_octave(pcm.astype(np.float32) / 32768, SR), atol=1e-4)
    np.testing.assert_allclose(third_octave(pcm, SR)[:7, 17], SINE_DB + 20 * np.log10(0.5), atol=2e-3)


# ------------------------------------------------------------------------------ errors
def test_empty_audio_states_the_minimum():
    with pytest.raises(st.InvalidInputError, match=r"0 samples.*one analysis frame.*4096 samples"):
        third_octave(np.zeros(0, np.float32), SR)
    with pytest.raises(st.InvalidInputError, match=r"one analysis frame.*4096 samples"):
        third_octave(np.zeros((3, 0)), SR)


def test_nan_and_inf_name_the_index():
    x = np.zeros((2, 100), np.float32)
    x[1, 42] = np.nan
    with pytest.raises(st.InvalidInputError, match=r"nan at index \(1, 42\)"):
        third_octave(x, SR)
    x[1, 42] = 0
    x[0, 7] = -np.inf
    with pytest.raises(st.InvalidInputError, match=r"-inf at index \(0, 7\)"):
        third_octave(x, SR)


@pytest.mark.parametrize(
    "audio,error",
    [
        (np.float32(1.0), st.InvalidInputError),  # rank 0
        ("noise", st.InputTypeError),
        (None, st.InputTypeError),
        (np.array(["a", "b"]), st.InputTypeError),
        (np.ones(10, dtype=complex), st.InputTypeError),
        (np.ones(10, dtype=bool), st.InputTypeError),
    ],
)
def test_bad_audio(audio, error):
    with pytest.raises(error, match="audio"):
        third_octave(audio, SR)


@pytest.mark.parametrize(
    "sr,error",
    [
        (0, st.InvalidInputError),
        (-8000, st.InvalidInputError),
        (float("nan"), st.InvalidInputError),
        ("32k", st.InputTypeError),
    ],
)
def test_bad_sample_rate(sr, error):
    with pytest.raises(error, match="sample_rate"):
        third_octave(np.zeros(100, np.float32), sr)


def test_bad_options():
    x = np.zeros(100, np.float32)
    with pytest.raises(st.UnknownSpecError, match="cense_fast"):
        third_octave(x, SR, "cense_medium")
    with pytest.raises(st.InvalidInputError, match="db_offset"):
        third_octave(x, SR, db_offset=float("inf"))
    with pytest.raises(st.InputTypeError, match="db_offset"):
        third_octave(x, SR, db_offset="26")
    with pytest.raises(st.InvalidInputError, match="n_threads"):
        third_octave(x, SR, n_threads=-1)


def test_kernel_rejects_inconsistent_tables():
    x = np.zeros((1, 100), np.float32)
    w = np.ones(64, np.float32)
    with pytest.raises(ValueError, match="bin ranges"):
        _core.third_octave_levels(x, w, np.array([0]), np.array([40]), 32, 1.0, 0.0, 1e-9)
    with pytest.raises(ValueError, match="hop"):
        _core.third_octave_levels(x, w, np.array([0]), np.array([3]), 0, 1.0, 0.0, 1e-9)
