"""PINV transcoder: parity with the reference, folded tables, chunking, properties, errors."""

from __future__ import annotations

import dataclasses
import math
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st_

import spectral_transcoder as st
from spectral_transcoder import _core, tables
from spectral_transcoder.analysis import third_octave
from spectral_transcoder.pinv import (
    PartialChunkWarning,
    band_power_gain,
    interpolation_matrix,
    n_valid_mel_frames,
    pinv,
    pinv_chunks,
    pinv_matrix,
    split_chunks,
    stitch_chunks,
)
from spectral_transcoder.specs import CENSE_DB_OFFSET

FAST = st.get_band_spec("cense_fast")
PAPER = dataclasses.replace(FAST, db_offset=CENSE_DB_OFFSET)  # the goldens' +26 dB convention
TARGETS = ["pann", "yamnet_torchport", "yamnet", "efficientat"]
GOLDEN_KEYS = {"pann": "pann", "yamnet_torchport": "yamnet"}


def _levels(seed: int, lead: tuple[int, ...], lo: float = -90.0, hi: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(lo, hi, (*lead, 29)).astype(np.float32)


def _reference(levels: np.ndarray, band: st.BandSpec, mel: st.MelSpec) -> np.ndarray:
    """The folded PINV in float64 numpy, from the spec's formulas (independent oracle)."""
    n = band.frame_length
    k = (n / math.sqrt(2)) ** 2 * ((1 + mel.n_fft // 2) / (1 + n // 2) * 0.5) ** 2
    a = tables.mel_filterbank(mel, band.sample_rate, n).T @ np.maximum(
        np.linalg.pinv(tables.band_basis(band), rcond=1e-15), 0
    )
    f, t = band.frames_per_chunk, mel.frames_for_chunk(band.chunk_duration)
    w = np.zeros((t, f))
    for j in range(t):
        s = max(0.0, (j + 0.5) * f / t - 0.5)
        i0 = int(math.floor(s))
        w[j, i0] += 1 - (s - i0)
        w[j, min(i0 + 1, f - 1)] += s - i0
    power = k * 10 ** ((levels.astype(np.float64) - band.db_offset) / 10)
    y = w @ power @ a.T
    y = 10 * np.log10(np.maximum(y, mel.log_floor)) if mel.log == "db" else np.log(y + mel.log_floor)
    return (y + mel.norm_offset) / mel.norm_scale


def _stored_matrix(reference_matrices, target):
    return pinv_matrix(PAPER, target, phi_plus=reference_matrices["tho_basis_pinv_relu"])


# ---------------------------------------------------------------------- golden parity
@pytest.mark.shared
@pytest.mark.parametrize("target", ["pann", "yamnet_torchport"])
def test_golden_chunks_with_stored_phi_plus(golden_clip, reference_matrices, target):
    key = GOLDEN_KEYS[target]
    x = golden_clip["tho_db_chunks"].astype(np.float32)  # the reference's input
    a = _stored_matrix(reference_matrices, target)
    chunks = pinv_chunks(x, target, band_spec=PAPER, matrix=a)
    ref = golden_clip[f"mel_{key}_pinv_chunks"]
    assert chunks.shape == ref.shape and chunks.dtype == np.float32
    np.testing.assert_allclose(chunks, ref, rtol=0, atol=1e-3)
    flat = x.reshape(-1, 29)
    concat = pinv(flat, target, band_spec=PAPER, layout="concat", matrix=a)
    np.testing.assert_allclose(concat, golden_clip[f"file_mel_{key}_pinv"], rtol=0, atol=1e-3)
    np.testing.assert_array_equal(pinv(flat, target, band_spec=PAPER, layout="chunks", matrix=a), chunks)
    stitched = pinv(flat, target, band_spec=PAPER, matrix=a)
    t = ref.shape[1]
    expected = np.concatenate([ref[:-1, : t - 1].reshape(-1, 64), ref[-1]])  # drop rule of §4
    assert stitched.shape == (10 * (t - 1) + 1, 64)
    np.testing.assert_allclose(stitched, expected, rtol=0, atol=1e-3)


@pytest.mark.shared
@pytest.mark.parametrize("target", ["pann", "yamnet_torchport"])
def test_golden_chunks_with_exact_phi_plus(golden_clip, target):
    # The float64 Φ⁺ differs from the reference's float32 one by ~1e-6 per entry,
    # which weak low bands amplify (golden README §7): measured max 9.1e-3 dB
    # (birds, PANN), 2.5e-3 (birds, YAMNet), 2.2e-3 dB / 5.2e-4 (street).
    x = golden_clip["tho_db_chunks"].astype(np.float32)
    chunks = pinv_chunks(x, target, band_spec=PAPER)
    np.testing.assert_allclose(chunks, golden_clip[f"mel_{GOLDEN_KEYS[target]}_pinv_chunks"], rtol=0, atol=1e-2)


@pytest.mark.shared
def test_golden_from_audio_in_dbfs(golden_clip, reference_matrices):
    # The level convention cancels: dBFS levels with the dBFS band spec give the
    # same Mel as +26 levels with the +26 spec.
    levels = third_octave(golden_clip["audio_32k"].reshape(10, -1), FAST.sample_rate)  # 1-s chunks
    a = _stored_matrix(reference_matrices, "pann")
    mels = pinv_chunks(levels, "pann", band_spec=FAST, matrix=a)
    np.testing.assert_allclose(mels, golden_clip["mel_pann_pinv_chunks"], rtol=0, atol=1e-3)


@pytest.mark.shared
def test_stored_phi_plus_relu_is_applied(reference_matrices):
    raw = pinv_matrix(PAPER, "pann", phi_plus=reference_matrices["tho_basis_pinv_raw"])
    relu = pinv_matrix(PAPER, "pann", phi_plus=reference_matrices["tho_basis_pinv_relu"])
    np.testing.assert_array_equal(raw, relu)
    exact = pinv_matrix(PAPER, "pann")
    np.testing.assert_allclose(exact, relu, rtol=1e-4, atol=1e-7)


@pytest.mark.shared
def test_folded_gain_matches_reference_tables(golden_street, reference_matrices):
    assert band_power_gain(FAST, "pann") == pytest.approx(8388608 * float(reference_matrices["energy_comp_pann"]))
    assert band_power_gain(FAST, "yamnet_torchport") == pytest.approx(
        8388608 * float(reference_matrices["energy_comp_yamnet"])
    )


# ------------------------------------------------------------------- constant inputs
def test_constant_input_golden_values():
    bins = [0, 10, 20, 30, 40, 50, 63]
    zero = pinv(np.zeros((8, 29)), "pann", band_spec=PAPER, layout="chunks")[0]
    expected = [13.759, 3.3007, 0.4768, -1.5129, -4.3207, -6.481, -9.4571]
    np.testing.assert_allclose(zero[:, bins], np.broadcast_to(expected, (101, 7)), atol=1e-3)
    forty = pinv(np.full((8, 29), 40.0), "pann", band_spec=PAPER, layout="chunks")[0]
    np.testing.assert_allclose(forty - zero, 40.0, atol=1e-4)
    yam = pinv(np.zeros((8, 29)), "yamnet_torchport", band_spec=PAPER, layout="chunks")[0]
    expected = [4.474, 3.435, 3.0806, 2.9542, 2.8233, 2.7677, 2.5854]
    np.testing.assert_allclose(yam[:, bins], np.broadcast_to(expected, (96, 7)), atol=1e-3)


def test_gains_and_compensation():
    # docs/conventions.md §3 step 2
    assert band_power_gain(FAST, "pann") == pytest.approx(131456.0936, abs=1e-3)
    assert band_power_gain(FAST, "yamnet_torchport") == pytest.approx(32992.2731, abs=1e-3)
    assert band_power_gain(FAST, "pann") / 8388608 == pytest.approx(0.0156707875, rel=1e-8)


def test_interpolation_matrix():
    w = interpolation_matrix(8, 101)
    assert w.shape == (101, 8) and not w.flags.writeable
    np.testing.assert_allclose(w.sum(1), 1.0)
    np.testing.assert_array_equal(w[:6], np.eye(8)[[0] * 6])  # frames 0-5 = input frame 0
    np.testing.assert_array_equal(w[95:], np.eye(8)[[7] * 6])  # frames 95-100 = frame 7
    np.testing.assert_allclose(w[50], 0.5 * (np.eye(8)[3] + np.eye(8)[4]))
    np.testing.assert_array_equal(interpolation_matrix(8, 8), np.eye(8))


@pytest.mark.parametrize("target", TARGETS)
def test_pinv_matrix(target):
    mel = st.get_mel_spec(target)
    a = pinv_matrix("cense_fast", target)
    assert a.shape == (mel.n_mels, 29) and a.dtype == np.float64
    assert (a >= 0).all() and not a.flags.writeable
    assert pinv_matrix(FAST, mel) is a  # cached per (BandSpec, MelSpec)


def test_pinv_matrix_bad_phi_plus():
    with pytest.raises(st.InvalidInputError, match=r"phi_plus must have shape \(2049, 29\)"):
        pinv_matrix(FAST, "pann", phi_plus=np.zeros((29, 2049)))
    bad = np.zeros((2049, 29))
    bad[5, 3] = np.nan
    with pytest.raises(st.InvalidInputError, match=r"phi_plus contains nan at index \(5, 3\)"):
        pinv_matrix(FAST, "pann", phi_plus=bad)


# -------------------------------------------------------------- kernel vs float64 oracle
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("band", [FAST, PAPER, st.get_band_spec("cense_slow")], ids=["fast", "paper", "slow"])
def test_kernel_matches_float64_formula(target, band):
    mel = st.get_mel_spec(target)
    x = _levels(1, (5, band.frames_per_chunk), -100 + band.db_offset, band.db_offset)
    got = pinv_chunks(x, mel, band_spec=band)
    assert got.shape == (5, mel.frames_for_chunk(band.chunk_duration), mel.n_mels) and np.isfinite(got).all()
    np.testing.assert_allclose(got, _reference(x, band, mel), rtol=0, atol=2e-4)


@given(seed=st_.integers(0, 2**16), shift=st_.floats(-40, 40), target=st_.sampled_from(TARGETS))
def test_kernel_properties(seed, shift, target):
    mel = st.get_mel_spec(target)
    x = _levels(seed, (3, 8), -60, -10)
    y = pinv_chunks(x, mel, band_spec=FAST)
    np.testing.assert_allclose(y, _reference(x, FAST, mel), rtol=0, atol=2e-4)
    # batched equals per chunk, whatever the thread count
    for c in range(3):
        np.testing.assert_array_equal(pinv_chunks(x[c], mel, band_spec=FAST, n_threads=1), y[c])
    if mel.log == "db":  # a level shift is a Mel shift (the floor is far away)
        shifted = pinv_chunks(x + np.float32(shift), mel, band_spec=FAST)
        np.testing.assert_allclose(shifted - y, shift, atol=1e-3)


def test_threads_and_concurrency():
    x = _levels(5, (300, 8))
    ref = pinv_chunks(x, "pann", band_spec=FAST, n_threads=1)
    for n in (0, 2, 3):
        np.testing.assert_array_equal(pinv_chunks(x, "pann", band_spec=FAST, n_threads=n), ref)
    inputs = [_levels(s, (40, 8)) for s in range(8)]
    serial = [pinv(v, "yamnet_torchport") for v in inputs]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda v: pinv(v, "yamnet_torchport", n_threads=2), inputs))
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


def test_log_and_exp_accuracy():
    # The kernel's own vectorised log and exp (pinv.cpp), over every octave of
    # normal floats and densely around 1.
    bits = np.random.default_rng(0).integers(0x00800000, 0x7F7FFFFF, 300000, dtype=np.uint32)
    x = np.concatenate([bits.view(np.float32), np.linspace(0.5, 2.0, 100001, dtype=np.float32)])
    x = x[x != 1.0]
    exact = np.log(x.astype(np.float64))
    err = np.abs(_core._ln_approx(x).astype(np.float64) - exact)
    assert (err / np.abs(exact)).max() < 2e-7  # the goal was < 1e-6
    assert (err / np.spacing(np.abs(exact).astype(np.float32))).max() <= 1.0  # within 1 ulp
    assert _core._ln_approx(np.float32([1.0]))[0] == 0.0
    t = np.linspace(-1000, 1000, 400001)
    np.testing.assert_allclose(_core._exp2_approx(t), np.exp2(t), rtol=1e-11)


# ------------------------------------------------------------------- chunks and layouts
@pytest.mark.parametrize(
    "target,frames", [("pann", 100 * 3 + 1), ("yamnet_torchport", 95 * 3 + 1), ("yamnet", 96 * 3), ("efficientat", 300)]
)
def test_layouts(target, frames):
    x = _levels(2, (2, 24))
    mel = st.get_mel_spec(target)
    chunks = pinv(x, target, layout="chunks")
    assert chunks.shape == (2, 3, mel.chunk_frames, mel.n_mels)
    assert pinv(x, target, layout="concat").shape == (2, 3 * mel.chunk_frames, mel.n_mels)
    stitched = pinv(x, target)
    assert stitched.shape == (2, frames, mel.n_mels)
    np.testing.assert_array_equal(stitched, stitch_chunks(chunks, mel))
    assert np.isfinite(stitched).all()


def test_stitch_edge_cases():
    m = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    out = stitch_chunks(m, "pann")
    np.testing.assert_array_equal(out, np.concatenate([m[0, :4], m[1]]))
    assert stitch_chunks(m[:1], "pann").shape == (5, 3)
    assert stitch_chunks(m[:0], "pann").shape == (0, 3)
    assert stitch_chunks(m, "efficientat").shape == (10, 3)
    with pytest.raises(st.InvalidInputError, match="n_chunks, T, n_mels"):
        stitch_chunks(m[0], "pann")


def test_split_exact_and_empty():
    x = _levels(3, (2, 16))
    chunks, n_valid = split_chunks(x, FAST)
    assert chunks.shape == (2, 2, 8, 29) and n_valid == 8
    np.testing.assert_array_equal(chunks.reshape(2, 16, 29), x)
    empty, n_valid = split_chunks(np.zeros((0, 29)), FAST)
    assert empty.shape == (0, 8, 29) and n_valid == 0
    assert pinv(np.zeros((0, 29))).shape == (0, 64)


def test_partial_error_says_what_is_left():
    with pytest.raises(st.InvalidInputError, match=r"13 frames.*1 whole chunk.*5 frame\(s\) left over.*'drop'.*'pad'"):
        pinv(_levels(0, (13,)))


def test_partial_drop():
    x = _levels(4, (13,))
    with pytest.warns(PartialChunkWarning, match="dropped the last 5 frame") as rec:
        out = pinv(x, "pann", partial="drop", layout="chunks")
    assert rec[0].filename == __file__  # points at the caller, not at the package
    np.testing.assert_array_equal(out, pinv(x[:8], "pann", layout="chunks"))
    with pytest.warns(PartialChunkWarning):
        chunks, n_valid = split_chunks(x[:5], FAST, "drop")
    assert chunks.shape == (0, 8, 29) and n_valid == 0


def test_partial_pad():
    x = _levels(5, (12,))
    with pytest.warns(PartialChunkWarning, match="padded the last chunk with 4 copies") as rec:
        chunks, n_valid = split_chunks(x, FAST, "pad")
    assert rec[0].filename == __file__
    assert chunks.shape == (2, 8, 29) and n_valid == 4
    np.testing.assert_array_equal(chunks[1, :4], x[8:])
    np.testing.assert_array_equal(chunks[1, 4:], np.repeat(x[-1:], 4, axis=0))
    with pytest.warns(PartialChunkWarning):
        mels = pinv(x, "pann", partial="pad", layout="chunks")
    assert mels.shape == (2, 101, 64)
    real = n_valid_mel_frames(n_valid, FAST, "pann")
    assert real == 51  # 0.5 s of PANN frames
    # every Mel frame past the real ones reads the repeated last frame only
    np.testing.assert_allclose(mels[1, real:], np.broadcast_to(mels[1, -1], (101 - real, 64)), atol=1e-4)


def test_partial_option_checked():
    with pytest.raises(st.InvalidInputError, match="partial must be one of"):
        split_chunks(_levels(0, (8,)), FAST, "stretch")
    with pytest.raises(st.InvalidInputError, match="layout must be one of"):
        pinv(_levels(0, (8,)), layout="flat")


# ---------------------------------------------------------------------------- errors
def test_bad_levels():
    with pytest.raises(st.InvalidInputError, match="28 bands.*'cense_fast' has 29"):
        pinv(np.zeros((8, 28)))
    with pytest.raises(st.InvalidInputError, match=r"shape \(\.\.\., frames, bands\)"):
        pinv(np.zeros(29))
    x = np.zeros((2, 8, 29), np.float32)
    x[1, 3, 20] = np.nan
    with pytest.raises(st.InvalidInputError, match=r"nan at index \(1, 3, 20\)"):
        pinv(x)
    x[1, 3, 20] = np.inf
    with pytest.raises(st.InvalidInputError, match=r"inf at index \(1, 3, 20\)"):
        pinv_chunks(x, "pann", band_spec=FAST)
    x[1, 3, 20] = 400
    with pytest.raises(st.InvalidInputError, match=r"400.0 dB at index \(1, 3, 20\)"):
        pinv(x)
    with pytest.raises(st.InputTypeError, match="levels"):
        pinv("loud")
    with pytest.raises(st.InputTypeError, match="levels"):
        pinv(np.array([["a"] * 29] * 8))


def test_bad_target_and_matrix():
    x = np.zeros((8, 29))
    with pytest.raises(st.UnknownSpecError, match="pann"):
        pinv(x, "pan")
    with pytest.raises(st.UnknownSpecError, match="cense_fast"):
        pinv(x, band_spec="cense")
    with pytest.raises(st.InvalidInputError, match=r"matrix must have shape \(n_mels, n_bands\) = \(64, 29\)"):
        pinv(x, matrix=np.ones((29, 64)))
    bad = np.ones((64, 29))
    bad[2, 3] = -0.5
    with pytest.raises(st.InvalidInputError, match=r"-0.5 at index \(2, 3\)"):
        pinv(x, matrix=bad)
    with pytest.raises(st.InvalidInputError, match="chunks must have 8 frames"):
        pinv_chunks(np.zeros((2, 7, 29)), "pann", band_spec=FAST)
    with pytest.raises(st.InvalidInputError, match="n_threads"):
        pinv(x, n_threads=-2)


def test_user_matrix_is_used():
    x = _levels(9, (8,))
    a = np.asarray(pinv_matrix(FAST, "pann")) * 2.0  # +3.01 dB everywhere
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        doubled = pinv(x, "pann", matrix=a)
    np.testing.assert_allclose(doubled - pinv(x, "pann"), 10 * np.log10(2.0), atol=1e-4)


def test_slow_chunks_keep_the_mel_frame_rate():
    """A 10-s cense_slow chunk becomes 1001 PANN frames (10 ms each), never squeezed into 101."""
    slow = st.get_band_spec("cense_slow")
    x = np.full((2 * slow.frames_per_chunk, slow.n_bands), -40.0, np.float32)
    assert pinv(x, "pann", band_spec=slow, layout="chunks").shape == (2, 1001, 64)
    assert pinv(x, "pann", band_spec=slow).shape == (2001, 64)  # stitched: 1000 n + 1
    assert pinv(x, "efficientat", band_spec=slow, layout="chunks").shape == (2, 1000, 128)
