"""Audio in: any path or array -> float32 mono PCM at the engine's sample rate (16 kHz).

The engine takes exactly one format; everything else is converted here, where a failure can be a clear Python
exception that names the file. soundfile (libsndfile) reads wav/flac/ogg/opus/mp3; PyAV (ffmpeg inside its wheel)
reads m4a/aac/wma/alac and whatever libsndfile refuses; soxr resamples. Both decoders hand over the file's own
channels and rate, so downmix and resampling are the same code whichever decoder ran.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._logging import logger
from .errors import AudioDecodeError, InvalidInputError
from .fsutil import require_regular_file
from .validation import MIN_AUDIO_SAMPLES

TARGET_SAMPLE_RATE = 16000
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8000, 768000  # telephone audio .. 2x DXD (hi-res masters are 352.8/384 kHz)
MIN_SAMPLES = MIN_AUDIO_SAMPLES  # what the engine is ever given, after conversion (20 ms: the first audio token)

AudioSource = str | os.PathLike | np.ndarray

# libsndfile cannot read these containers/codecs: go straight to ffmpeg.
_PYAV_FIRST = {".m4a", ".mp4", ".aac", ".wma", ".alac", ".webm", ".mka", ".ac3", ".amr", ".3gp"}


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
    return require_min_length(np.ascontiguousarray(x, dtype=np.float32))


def require_min_length(pcm: np.ndarray) -> np.ndarray:
    """``pcm`` (16 kHz) if it holds at least :data:`MIN_SAMPLES`; shorter audio is refused here, in Python, because
    llama.cpp aborts the whole process on a few samples instead of reporting an error."""
    if pcm.size == 0:
        raise InvalidInputError("audio is empty")
    if pcm.size < MIN_SAMPLES:
        raise InvalidInputError(
            f"audio is too short: {pcm.size} samples at {TARGET_SAMPLE_RATE} Hz "
            f"({pcm.size / TARGET_SAMPLE_RATE * 1000:.1f} ms) after conversion; audio shorter "
            f"than 20 ms gives the model no audio token (at least {MIN_SAMPLES} samples)"
        )
    return pcm


def _read_soundfile(p: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    data, sr = sf.read(os.fsencode(p), dtype="float32", always_2d=True)  # bytes: names that are not UTF-8 too
    return data, int(sr)


def _read_pyav(p: Path) -> tuple[np.ndarray, int]:
    """Decode the first audio stream with ffmpeg (PyAV) to float32 ``(n, channels)`` at its own rate."""
    import av

    with av.open(str(p)) as container:
        stream = next((s for s in container.streams if s.type == "audio"), None)
        if stream is None:
            raise AudioDecodeError(f"no audio stream in {p}")
        rate = stream.rate or stream.codec_context.sample_rate
        channels = stream.codec_context.channels or 1
        resampler = av.AudioResampler(format="flt", layout=stream.layout.name if stream.layout else None, rate=rate)
        parts: list[np.ndarray] = []
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                parts.append(out.to_ndarray().reshape(-1, channels))
        for out in resampler.resample(None):
            parts.append(out.to_ndarray().reshape(-1, channels))
    if not parts:
        return np.zeros((0, channels), np.float32), int(rate)
    return np.concatenate(parts).astype(np.float32, copy=False), int(rate)


def read_file(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode an audio file to float32 ``(n, channels)`` and its sample rate (soundfile, then PyAV)."""
    p = Path(path)
    try:
        require_regular_file(p)  # a FIFO named like a track would hang the decoder
    except FileNotFoundError:
        raise AudioDecodeError(f"audio file not found: {p}") from None
    except OSError as e:
        raise AudioDecodeError(f"cannot read audio file {p}: {e}") from None
    errors = []
    readers = (_read_pyav,) if p.suffix.lower() in _PYAV_FIRST else (_read_soundfile, _read_pyav)
    for reader in readers:
        try:
            data, sr = reader(p)
        except AudioDecodeError:
            raise
        except Exception as e:  # libsndfile and ffmpeg raise many types; all mean "cannot decode this"
            errors.append(f"{reader.__name__.removeprefix('_read_')}: {e}")
            continue
        if data.size == 0:
            raise AudioDecodeError(f"audio file has no samples: {p}")
        if errors:
            logger.debug("decoded %s with %s after %s", p, reader.__name__, errors)
        return data, sr
    raise AudioDecodeError(f"could not decode audio file {p}: " + "; ".join(errors))


def probe_duration(path: str | os.PathLike) -> float | None:
    """Seconds of audio in a file, read from its header without decoding (for the dry run's hours); None when
    neither decoder can tell. Same decoder order as :func:`read_file`."""
    p = Path(path)
    try:
        require_regular_file(p)  # a FIFO named like a track would hang the decoders' open
    except OSError:
        return None
    if p.suffix.lower() not in _PYAV_FIRST:
        try:
            import soundfile as sf

            info = sf.info(str(p))
            if info.samplerate > 0 and info.frames > 0:
                return info.frames / info.samplerate
        except Exception:  # libsndfile refuses it: ask ffmpeg
            pass
    try:
        import av

        with av.open(str(p)) as container:
            stream = next((s for s in container.streams if s.type == "audio"), None)
            if stream is not None and stream.duration and stream.time_base:
                return float(stream.duration * stream.time_base)
            if container.duration:
                return container.duration / av.time_base
    except Exception:  # not decodable: the run will report it
        pass
    return None


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


@dataclass
class PreparedAudio:
    """PCM ready for the engine plus what the sidecar metadata records about it: the track's length, the seconds
    analysed (always its start: ``[0, analysed_seconds]``), whether ``max_seconds`` cut it, and for an excerpt
    (``trim_frac``) the share asked and the seconds of the fade-out before the cut."""

    pcm: np.ndarray
    source_seconds: float
    analysed_seconds: float
    truncated: bool
    trim_frac: float | None = None
    fade_seconds: float = 0.0


FADE_SHARE = 0.05  # an excerpt fades out over the last 5 % of the track's length before its cut (the pipeline's)


def excerpt(pcm: np.ndarray, trim_frac: float, max_samples: int | None = None) -> tuple[np.ndarray, int]:
    """The first ``trim_frac`` of ``pcm`` (at most ``max_samples``), faded out linearly to silence over the last
    5 % of the whole track's length before the cut, and the fade's length in samples. ``trim_frac`` 1 with no
    cut returns the audio as it is (nothing is cut, so nothing fades)."""
    end = min(len(pcm), int(round(len(pcm) * trim_frac)))
    if max_samples is not None:
        end = min(end, max_samples)
    if end >= len(pcm):
        return pcm, 0
    out = np.array(pcm[:end], dtype=np.float32)  # a copy: the caller's array stays as it was
    fade = min(end, int(round(len(pcm) * FADE_SHARE)))
    if fade > 0:
        out[end - fade :] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return out, fade


def prepare_audio(
    source: AudioSource,
    sample_rate: int | None = None,
    max_seconds: float | None = None,
    name: str = "audio",
    trim_frac: float | None = None,
) -> PreparedAudio:
    """Load and convert, then keep at most ``max_seconds``: longer audio is analysed on its first part, with a
    warning, and ``truncated`` set so the sidecar says so (never a silent context overflow). With ``trim_frac``
    only that share of the track is kept (an excerpt, :func:`excerpt`: faded out before the cut), within
    ``max_seconds``."""
    pcm = load_audio(source, sample_rate)
    total = len(pcm) / TARGET_SAMPLE_RATE
    truncated = max_seconds is not None and total > max_seconds
    max_samples = int(max_seconds * TARGET_SAMPLE_RATE) if truncated else None
    fade = 0
    if trim_frac is not None:
        pcm, fade = excerpt(pcm, trim_frac, max_samples)
        truncated = truncated and total * trim_frac > max_seconds
    elif truncated:
        pcm = pcm[:max_samples]
    if truncated:
        logger.warning("%s is %.1f s long; analysing its first %.1f s (max_duration)", name, total, max_seconds)
    pcm = require_min_length(np.ascontiguousarray(pcm))
    return PreparedAudio(
        pcm=pcm,
        source_seconds=total,
        analysed_seconds=len(pcm) / TARGET_SAMPLE_RATE,
        truncated=truncated,
        trim_frac=trim_frac,
        fade_seconds=fade / TARGET_SAMPLE_RATE,
    )


def as_engine_audio(audio: str | os.PathLike | np.ndarray, sample_rate: int = TARGET_SAMPLE_RATE) -> np.ndarray:
    """What both backends' ``generate()`` take, checked here once for both: a path is decoded to float32 mono
    16 kHz; an array must already be that — float32 in native byte order, 1-D, at 16 kHz, finite, at least 20 ms —
    else InvalidInputError says what to do (:func:`load_audio` converts anything else). The GGUF engine checks
    dtype, shape, rate and values again, as the last guard of the native boundary."""
    if int(sample_rate) != TARGET_SAMPLE_RATE:
        raise InvalidInputError(
            f"audio must be sampled at {TARGET_SAMPLE_RATE} Hz (got {sample_rate}); "
            "music_flamingo.audio.load_audio(samples, sample_rate) converts it"
        )
    if isinstance(audio, (str, os.PathLike)):
        return load_audio(audio)
    if not isinstance(audio, np.ndarray):
        raise TypeError(f"audio must be a path or a numpy array, got {type(audio).__name__}")
    dt = audio.dtype
    if dt.kind != "f" or dt.itemsize != 4 or not dt.isnative:
        raise InvalidInputError(
            f"audio must be a float32 array (got {dt}); music_flamingo.audio.load_audio() converts anything else"
        )
    if audio.ndim != 1:
        raise InvalidInputError(f"audio must be mono, a 1-D array (got shape {audio.shape})")
    if dt is not np.dtype(np.float32):
        # An array that crossed a process boundary (pickle, multiprocessing) has an equal but distinct float32
        # descriptor. The native check compares type numbers, so it accepts either; the view (free) makes such an
        # array indistinguishable from a local one for any code that compares descriptors by identity.
        audio = audio.view(np.float32)
    require_min_length(audio)
    if not np.isfinite(audio).all():
        raise InvalidInputError("audio contains NaN or infinite samples")
    return audio
