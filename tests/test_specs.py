"""Representation specs and their tables: presets, JSON round trip, reference matrices."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import spectral_transcoder as st
from spectral_transcoder import tables


@pytest.mark.parametrize("name", sorted(st.BAND_SPECS) + sorted(st.MEL_SPECS))
def test_json_round_trip(name):
    spec = st.BAND_SPECS.get(name) or st.MEL_SPECS[name]
    assert st.spec_from_json(spec.to_json()) == spec


def test_variant_round_trip_and_hashable():
    spec = dataclasses.replace(st.get_band_spec("cense_fast"), db_offset=st.specs.CENSE_DB_OFFSET)
    assert st.spec_from_json(spec.to_json()).db_offset == 26.0
    assert len({spec, st.get_band_spec("cense_fast")}) == 2


def test_unknown_spec_lists_presets():
    with pytest.raises(st.UnknownSpecError, match="cense_fast"):
        st.get_band_spec("cense_fats")
    with pytest.raises(ValueError, match="pann"):
        st.get_mel_spec("pan")


def test_bad_json():
    with pytest.raises(st.InvalidInputError):
        st.spec_from_json('{"type": "MelSpec", "bogus": 1}')
    with pytest.raises(st.InvalidInputError):
        st.spec_from_json("not json")


def test_cense_fast_bands():
    spec = st.get_band_spec("cense_fast")
    lo, hi = tables.band_bin_ranges(spec)
    widths = (hi - lo + 1).tolist()
    assert widths == [
        1,
        2,
        2,
        2,
        3,
        3,
        3,
        4,
        5,
        5,
        7,
        9,
        10,
        13,
        15,
        20,
        25,
        30,
        38,
        48,
        60,
        75,
        95,
        118,
        149,
        188,
        235,
        297,
        373,
    ]
    assert (lo[1:] == hi[:-1]).all()  # neighbours share exactly one bin
    assert spec.center_frequencies[17] == 1000.0
    assert abs(tables.band_energy_correction(spec) - 1.0690449661) < 1e-9


@pytest.mark.parametrize(
    "name,n_samples,frames",
    [
        ("pann", 32000, 101),
        ("yamnet_torchport", 16000, 101),
        ("efficientat", 32000, 100),
        ("yamnet", 16000, 144),
        ("yamnet", 160000, 1008),
        ("efficientat", 320000, 1000),
    ],
)
def test_mel_frame_counts(name, n_samples, frames):
    assert st.get_mel_spec(name).n_frames(n_samples) == frames


@pytest.mark.shared
def test_tables_match_reference(reference_matrices):
    r = reference_matrices
    band = st.get_band_spec("cense_fast")
    lo, hi = tables.band_bin_ranges(band)
    np.testing.assert_array_equal(lo, r["tho_cell_floor"])
    np.testing.assert_array_equal(hi, r["tho_cell_ceil_inclusive"])
    np.testing.assert_array_equal(tables.band_basis(band), r["tho_basis"])
    np.testing.assert_allclose(tables.band_window(band), r["tukey_window"], atol=1e-12)
    pann, yam = st.get_mel_spec("pann"), st.get_mel_spec("yamnet_torchport")
    np.testing.assert_allclose(tables.mel_filterbank(pann), r["pann_mel_fb_gt_nfft1024"], atol=1e-7)
    np.testing.assert_allclose(tables.mel_filterbank(pann, 32000, 4096), r["pann_mel_fb_pinv_nfft4096"], atol=1e-7)
    np.testing.assert_allclose(tables.mel_filterbank(yam), r["yamnet_mel_fb_gt_16k_nfft512"], atol=1e-5)
    np.testing.assert_allclose(tables.mel_filterbank(yam, 32000, 4096), r["yamnet_mel_fb_pinv_32k_nfft4096"], atol=1e-5)
    np.testing.assert_allclose(tables.stft_window(pann), r["pann_stft_window_hann1024"], atol=1e-12)


@pytest.mark.shared
def test_classifier_filterbanks_match_reference(shared):
    y = np.load(shared / "reference/golden/yamnet_int8_dequant.npz")
    e = np.load(shared / "reference/golden/efficientat_mn04.npz")
    np.testing.assert_allclose(tables.mel_filterbank(st.get_mel_spec("yamnet")), y["mel_matrix"], atol=1e-5)
    eff = st.get_mel_spec("efficientat")
    np.testing.assert_allclose(tables.mel_filterbank(eff), e["mel_basis"].T, atol=2e-5)
    np.testing.assert_allclose(tables.stft_window(eff)[112:912], e["window"], atol=1e-6)
