"""Shared fixtures: the resolved llama.cpp tree, a tiny random Music Flamingo made from it, the reference
llama-mtmd-cli, real music from Debian packages, and one resident engine for the whole session."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "cmake"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fetch_llama_cpp  # noqa: E402  (the build's own resolver: the tests use the tree the package was built from)
from mtmd_cli import ensure_mtmd_cli  # noqa: E402
from tiny_model import ensure_tiny_model  # noqa: E402

CACHE = fetch_llama_cpp.cache_root()
SR = 16000
DEFAULT_KEYS = ["music_flamingo_full", "music_flamingo_technical", "music_flamingo_genre_mood",
                "music_flamingo_instrumentation", "music_flamingo_structure"]


@pytest.fixture(scope="session")
def llama_cpp_dir() -> Path:
    if os.environ.get("LLAMA_CPP_DIR"):
        return Path(os.environ["LLAMA_CPP_DIR"])
    return fetch_llama_cpp.resolve()


@pytest.fixture(scope="session")
def tiny(llama_cpp_dir):
    return ensure_tiny_model(llama_cpp_dir, CACHE / "test-models")


@pytest.fixture(scope="session")
def mtmd_cli(llama_cpp_dir) -> Path:
    return ensure_mtmd_cli(llama_cpp_dir, CACHE / "test-tools")


@pytest.fixture(scope="session")
def music_dir() -> Path:
    """Real music (MP3 and Ogg Vorbis from Debian's asc-music and drascula-music), fetched once into the cache."""
    out = Path(os.environ.get("MUSIC_FLAMINGO_TEST_MUSIC", CACHE / "corpus"))
    if not (any(out.glob("mp3/*.mp3")) and any(out.glob("ogg/*.ogg"))):
        script = REPO.parent / "shared" / "corpus" / "dev-music.sh"
        subprocess.run(["sh", str(script), str(out)], check=True)
    return out


@pytest.fixture(scope="session")
def track(music_dir) -> np.ndarray:
    """The first MP3 of the corpus as float32 mono 16 kHz (a 2-4 minute piece of real music)."""
    from music_flamingo.audio import load_audio

    mp3 = sorted(music_dir.glob("mp3/*.mp3"))[0]
    return load_audio(mp3)


def clip(track: np.ndarray, seconds: float, offset: float = 20.0) -> np.ndarray:
    start = int(offset * SR)
    n = int(round(seconds * SR))
    assert start + n <= len(track), "corpus track too short for this clip"
    return np.ascontiguousarray(track[start:start + n])


@pytest.fixture(scope="session")
def clips(track) -> dict[str, np.ndarray]:
    """5 s, exactly 30 s (mtmd adds a silent window there) and 45 s of real music."""
    return {"5s": clip(track, 5), "30s": clip(track, 30), "45s": clip(track, 45)}


def write_clip(path: Path, track: np.ndarray, seconds: float, offset: float) -> Path:
    """``seconds`` of real music from ``offset`` into ``path`` (format from the suffix), folders created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    a = int(offset * SR)
    sf.write(str(path), track[a:a + int(seconds * SR)], SR)
    return path


def write_float_wav(path: Path, pcm: np.ndarray) -> Path:
    """float32 WAV: llama-mtmd-cli reads it bit-exactly (no int16 rounding on either side)."""
    sf.write(str(path), pcm, SR, subtype="FLOAT")
    return path


@pytest.fixture(scope="session")
def engine(tiny):
    """One resident engine for the session, with the numerics the exactness tests need (flash attention off)."""
    from music_flamingo import MusicFlamingoGGUF

    eng = MusicFlamingoGGUF(model_path=tiny.model_gguf, mmproj_path=tiny.mmproj_gguf, flash_attn=False,
                            n_threads=1, warmup=False)
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def small_prompts(tmp_path_factory) -> Path:
    """The default five prompts with short limits, so a track takes well under a second."""
    p = tmp_path_factory.mktemp("prompts") / "small.yaml"
    p.write_text("prompts:\n" + "".join(f"  {n}: {{max_tokens: 6}}\n" for n in
                                        ["full", "technical", "genre_mood", "instrumentation", "structure"]))
    return p


@pytest.fixture(scope="module")
def analyzer(tiny, small_prompts):
    """A resident engine with the short prompts, one per test module (the batch and product tests)."""
    from music_flamingo import MusicFlamingoGGUF

    mf = MusicFlamingoGGUF(model_path=tiny.model_gguf, mmproj_path=tiny.mmproj_gguf, n_threads=1, warmup=False,
                           prompts_files=[small_prompts])
    yield mf
    mf.close()
