"""st.load_audio: any file soundfile reads -> mono float32, optionally one channel, a window, resampled."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

import spectral_transcoder as st
from spectral_transcoder._validation import resample
from spectral_transcoder.errors import InputTypeError, InvalidInputError


def _tone(n: int, sr: int, f: float = 440.0, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * f * np.arange(n) / sr)).astype(np.float32)


def test_mono_float_file_round_trips(tmp_path):
    x = _tone(8000, 16000)
    path = tmp_path / "mono.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    y, sr = st.load_audio(path)
    assert sr == 16000 and y.dtype == np.float32 and y.ndim == 1 and y.flags.c_contiguous
    np.testing.assert_array_equal(y, x)


def test_stereo_is_the_mean_of_the_channels_or_one_channel(tmp_path):
    left, right = _tone(4000, 8000), _tone(4000, 8000, f=1000.0, amp=0.25)
    path = tmp_path / "stereo.flac"
    sf.write(path, np.stack([left, right], axis=1), 8000, subtype="PCM_24")
    data, _ = sf.read(path, dtype="float32", always_2d=True)
    y, sr = st.load_audio(path)
    assert sr == 8000 and y.shape == (4000,)
    np.testing.assert_array_equal(y, data.mean(axis=1, dtype=np.float32))
    np.testing.assert_array_equal(st.load_audio(path, channel=1)[0], data[:, 1])
    with pytest.raises(InvalidInputError, match=r"stereo\.flac.*2 channel.*0\.\.1, got 2"):
        st.load_audio(path, channel=2)
    with pytest.raises(InputTypeError, match="channel"):
        st.load_audio(path, channel=1.0)  # type: ignore[arg-type]


def test_int16_is_scaled_to_full_scale(tmp_path):
    pcm = np.array([0, 16384, -32768, 32767], dtype=np.int16)
    path = tmp_path / "int16.wav"
    sf.write(path, pcm, 8000, subtype="PCM_16")
    y, _ = st.load_audio(path)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, pcm.astype(np.float32) / 32768)


def test_resampled_with_the_analysis_resampler(tmp_path):
    x = _tone(44100, 44100)
    path = tmp_path / "cd.wav"
    sf.write(path, x, 44100, subtype="FLOAT")
    y, sr = st.load_audio(path, sample_rate=32000)
    assert sr == 32000 and y.dtype == np.float32 and y.shape == (32000,)
    np.testing.assert_array_equal(y, resample(x, 44100.0, 32000))  # the same soxr "HQ" as third_octave
    same, sr_same = st.load_audio(path, sample_rate=44100)
    assert sr_same == 44100
    np.testing.assert_array_equal(same, x)
    with pytest.raises(InvalidInputError, match="sample_rate"):
        st.load_audio(path, sample_rate=0)


def test_a_window_in_seconds(tmp_path):
    x = np.arange(8000, dtype=np.float32) / 8000
    path = tmp_path / "ramp.wav"
    sf.write(path, x, 8000, subtype="FLOAT")
    np.testing.assert_array_equal(st.load_audio(path, offset=0.25, duration=0.5)[0], x[2000:6000])
    np.testing.assert_array_equal(st.load_audio(path, offset=0.75)[0], x[6000:])
    np.testing.assert_array_equal(st.load_audio(path, offset=0.5, duration=10.0)[0], x[4000:])  # cut at the end
    assert st.load_audio(path, offset=2.0)[0].shape == (0,)  # past the end: no samples
    with pytest.raises(InvalidInputError, match="ramp.wav.*offset"):
        st.load_audio(path, offset=-1.0)


def test_bad_files_are_named(tmp_path):
    missing = tmp_path / "missing.wav"
    with pytest.raises(InvalidInputError, match=r"audio file '.*missing\.wav' does not exist"):
        st.load_audio(missing)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all" * 10)
    with pytest.raises(InvalidInputError, match=r"cannot read audio file '.*junk\.wav'"):
        st.load_audio(junk)
    with pytest.raises(InvalidInputError, match="does not exist"):
        st.load_audio(tmp_path)  # a folder is not a file


def test_exported_from_the_package():
    assert "load_audio" in st.__all__ and st.load_audio is __import__("spectral_transcoder.audio").audio.load_audio
