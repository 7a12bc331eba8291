"""Audio in: files and arrays of any common layout become float32 mono 16 kHz, or a clear error."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from music_flamingo import AudioDecodeError, InvalidInputError, load_audio


def test_real_mp3_and_ogg_decode_to_16k_mono(music_dir):
    for path in [sorted(music_dir.glob("mp3/*.mp3"))[0], sorted(music_dir.glob("ogg/*.ogg"))[0]]:
        info = sf.info(str(path))
        x = load_audio(path)
        assert x.dtype == np.float32 and x.ndim == 1
        assert len(x) == pytest.approx(info.duration * 16000, rel=0.01)
        assert np.abs(x).max() > 0.01  # music, not silence


def test_int16_stereo_44k_array_is_converted(track):
    stereo = np.stack([track[: 16000 * 3], track[: 16000 * 3]], axis=1)
    import soxr

    at44 = soxr.resample(stereo, 16000, 44100)
    pcm16 = np.clip(at44 * 32767, -32768, 32767).astype(np.int16)
    x = load_audio(pcm16, sample_rate=44100)
    assert x.dtype == np.float32 and x.ndim == 1
    assert len(x) == pytest.approx(16000 * 3, abs=2)
    # same music back, within resampling and 16-bit error
    ref = track[: 16000 * 3]
    corr = np.corrcoef(x[1000:-1000], ref[1000:-1000])[0, 1]
    assert corr > 0.99


@pytest.mark.parametrize("dtype, scale", [(np.int16, 2**15), (np.int32, 2**31), (np.float64, 1.0)])
def test_dtypes_scale_to_unit_range(dtype, scale):
    x = load_audio((np.array([0.5, -0.5] * 8000) * scale).astype(dtype), sample_rate=16000)
    assert np.allclose(x[:2], [0.5, -0.5], atol=1e-4)


@pytest.mark.parametrize(
    "bad, sr, message",
    [
        (np.zeros(0, np.float32), 16000, "empty"),
        (np.zeros((2, 2, 2), np.float32), 16000, "shape"),
        (np.full(100, np.nan, np.float32), 16000, "NaN"),
        (np.zeros(100, np.float32), 4000, "sample_rate"),
        (np.zeros(100, np.float32), None, "sample_rate= is required"),
    ],
)
def test_bad_arrays_raise(bad, sr, message):
    with pytest.raises(InvalidInputError, match=message):
        load_audio(bad, sample_rate=sr)


def test_unreadable_files_raise(tmp_path):
    junk = tmp_path / "junk.flac"
    junk.write_bytes(b"this is not audio" * 100)
    with pytest.raises(AudioDecodeError, match="junk.flac"):
        load_audio(junk)
    with pytest.raises(AudioDecodeError, match="not found"):
        load_audio(tmp_path / "missing.wav")
