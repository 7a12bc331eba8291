"""Audio in: any path or array -> float32 mono PCM at the engine's sample rate (16 kHz).

The engine takes exactly one format; everything else is converted here, where a failure can be a clear Python
exception that names the file. soundfile (libsndfile) reads wav/flac/ogg/opus/mp3; soxr resamples.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np

from .errors import AudioDecodeError, InvalidInputError

TARGET_SAMPLE_RATE = 16000
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8000, 192000

AudioSource = Union[str, os.PathLike, np.ndarray]


def _to_float32(x: np.ndarray) -> np.ndarray:
    """Integer PCM to [-1, 1) floats; floats to float32."""
    if x.dtype == np.float32:
        return x
    if np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float32)
    if x.dtype == np.uint8:  # 8-bit WAV convention: unsigned, centred on 128
        return (x.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(x.dtype, np.signedinteger):
        return (x.astype(np.float64) / float(2 ** (8 * x.dtype.itemsize - 1))).astype(np.float32)
    raise InvalidInputError(f"audio array has unsupported dtype {x.dtype}")


def to_mono_16k(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Array ``(n,)`` or ``(n, channels)`` of any common dtype at ``sample_rate`` -> float32 mono 16 kHz."""
    x = np.asarray(samples)
    if x.ndim not in (1, 2):
        raise InvalidInputError(f"audio array must be (n,) or (n, channels), got shape {x.shape}")
    if x.size == 0:
        raise InvalidInputError("audio is empty")
    if not (MIN_SAMPLE_RATE <= int(sample_rate) <= MAX_SAMPLE_RATE):
        raise InvalidInputError(f"sample_rate {sample_rate} is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz")
    x = _to_float32(x)
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]
    if not np.isfinite(x).all():
        raise InvalidInputError("audio contains NaN or infinite samples")
    if int(sample_rate) != TARGET_SAMPLE_RATE:
        import soxr

        x = soxr.resample(x, int(sample_rate), TARGET_SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)
    return np.ascontiguousarray(x, dtype=np.float32)


def read_file(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode an audio file to float32 ``(n, channels)`` and its sample rate."""
    import soundfile as sf

    p = Path(path)
    if not p.is_file():
        raise AudioDecodeError(f"audio file not found: {p}")
    try:
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile raises several types (LibsndfileError, RuntimeError, TypeError)
        raise AudioDecodeError(f"could not decode audio file {p}: {e}") from e
    if data.size == 0:
        raise AudioDecodeError(f"audio file has no samples: {p}")
    return data, int(sr)


def load_audio(source: AudioSource, sample_rate: int | None = None) -> np.ndarray:
    """A path, or an array with its ``sample_rate``, -> float32 mono 16 kHz, ready for the engine."""
    if isinstance(source, np.ndarray):
        if sample_rate is None:
            raise InvalidInputError("sample_rate= is required with an audio array")
        return to_mono_16k(source, sample_rate)
    if isinstance(source, (str, os.PathLike)):
        data, sr = read_file(source)
        try:
            return to_mono_16k(data, sr)
        except InvalidInputError as e:
            raise AudioDecodeError(f"{source}: {e}") from e
    raise TypeError(f"audio must be a path or a numpy array, got {type(source).__name__}")
