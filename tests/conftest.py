"""Shared fixtures: the resolved llama.cpp tree, a tiny random Music Flamingo made from it, the reference
llama-mtmd-cli, real music from Debian packages, and one resident engine for the whole session."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

# testkit: what the tests share with the benchmarks, importable from the repository root (pyproject.toml's pytest
# pythonpath); fetch_llama_cpp is the build's own resolver: the tests use the tree the package was built from.
from testkit import CACHE, REPO, fetch_llama_cpp  # noqa: F401  (REPO: for the tests)
from testkit.corpus import SR, ensure_corpus, write_clip
from testkit.mtmd_cli import ensure_mtmd_cli
from testkit.tiny_model import ensure_tiny_model

# A suite started in the background by a shell without job control (`nohup … &`) inherits SIGINT ignored, and so
# would every child it starts: the Ctrl-C tests would then test nothing. Python's own handler here is reset to the
# default in each child at exec, so the children handle Ctrl-C as a user's terminal would make them.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def model_args(tiny, prompts: Path | None = None) -> list[str]:
    """The command-line options that load the tiny model (and a prompts file)."""
    files = ["--model-path", str(tiny.model_gguf), "--mmproj", str(tiny.mmproj_gguf)]
    return files + (["--prompts-file", str(prompts)] if prompts is not None else [])


def batch_cli(root: Path, tiny, *args: str, prompts: Path | None = None) -> list[str]:
    """The command line of the batch runner over ``root`` with the tiny model (and a prompts file)."""
    return [sys.executable, "-m", "music_flamingo", str(root), "--batch", *model_args(tiny, prompts), *args]


def run_cli(*args: str, stdin: str | None = None, **kw) -> subprocess.CompletedProcess:
    """``python -m music_flamingo ARGS`` in a child, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "music_flamingo", *args], capture_output=True, text=True, input=stdin, timeout=600, **kw
    )


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child Python that must import the same music_flamingo as this process: the parent's
    whole import path, so an installed wheel (CI) and a source tree with a built module (dev) both work."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), **extra}


def tree_state(folder: Path, skip: Sequence[Path] = ()) -> dict[str, tuple]:
    """Every entry below ``folder`` (links not followed) with what a write, creation or removal would change: type,
    size, mtime, link target. Entries in ``skip`` (and below them) are left out."""
    skipped = {os.path.abspath(p) for p in skip}
    state: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if os.path.abspath(os.path.join(dirpath, d)) not in skipped]
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if os.path.abspath(p) in skipped:
                continue
            st = os.lstat(p)
            link = os.readlink(p) if os.path.islink(p) else None
            kind = "dir" if stat.S_ISDIR(st.st_mode) else stat.S_IFMT(st.st_mode)
            size = None if kind == "dir" else st.st_size  # a folder's own size and mtime change with its entries
            mtime = None if kind == "dir" else st.st_mtime_ns
            state[os.path.relpath(p, folder)] = (kind, size, mtime, link)
    return state


@contextlib.contextmanager
def nothing_changes_outside(dataset: Path, allow: Sequence[Path] = ()):
    """Asserts that a run on ``dataset`` wrote, created or deleted nothing outside it: the dataset's parent folder
    is compared before and after, the dataset itself and ``allow`` (the files a user named: --jsonl ...) left out.
    For a single-file run pass the file's folder."""
    parent = Path(dataset).parent
    skip = [Path(dataset), *allow]
    before = tree_state(parent, skip)
    yield
    after = tree_state(parent, skip)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"changed outside the dataset {dataset}: {changed}"


DEFAULT_KEYS = [
    "music_flamingo_full",
    "music_flamingo_technical",
    "music_flamingo_genre_mood",
    "music_flamingo_instrumentation",
    "music_flamingo_structure",
]


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
    """Real music (MP3 and Ogg Vorbis from Debian's asc-music and drascula-music), fetched once into the cache by
    testkit/corpus.py."""
    return ensure_corpus()


@pytest.fixture(scope="session")
def track(music_dir) -> np.ndarray:
    """The first MP3 of the corpus as float32 mono 16 kHz (a 7-minute piece of real music)."""
    from music_flamingo.audio import load_audio

    mp3 = sorted(music_dir.glob("mp3/*.mp3"))[0]
    return load_audio(mp3)


def clip(track: np.ndarray, seconds: float, offset: float = 20.0) -> np.ndarray:
    start = int(offset * SR)
    n = int(round(seconds * SR))
    assert start + n <= len(track), "corpus track too short for this clip"
    return np.ascontiguousarray(track[start : start + n])


@pytest.fixture(scope="session")
def clips(track) -> dict[str, np.ndarray]:
    """5 s, exactly 30 s (mtmd adds a silent window there) and 45 s of real music."""
    return {"5s": clip(track, 5), "30s": clip(track, 30), "45s": clip(track, 45)}


def write_float_wav(path: Path, pcm: np.ndarray) -> Path:
    """float32 WAV: llama-mtmd-cli reads it bit-exactly (no int16 rounding on either side)."""
    sf.write(str(path), pcm, SR, subtype="FLOAT")
    return path


@pytest.fixture(scope="session")
def engine(tiny):
    """One resident engine for the session, with the numerics the exactness tests need (flash attention off)."""
    eng = exact_engine(tiny)
    yield eng
    eng.close()


def exact_engine(tiny, **settings):
    """An engine of the tiny model with the numerics the exactness tests compare across (flash attention off, one
    thread, no warmup), plus ``settings``: the session's ``engine`` is ``exact_engine(tiny)``."""
    from music_flamingo import MusicFlamingoGGUF

    return MusicFlamingoGGUF(
        model_path=tiny.model_gguf,
        mmproj_path=tiny.mmproj_gguf,
        flash_attn=False,
        n_threads=1,
        warmup=False,
        **settings,
    )


@pytest.fixture(scope="session")
def small_prompts(tmp_path_factory) -> Path:
    """The default five prompts with short limits, so a track takes well under a second."""
    p = tmp_path_factory.mktemp("prompts") / "small.yaml"
    p.write_text(
        "prompts:\n"
        + "".join(
            f"  {n}: {{max_tokens: 6}}\n" for n in ["full", "technical", "genre_mood", "instrumentation", "structure"]
        )
    )
    return p


@pytest.fixture(scope="module")
def analyzer(tiny, small_prompts):
    """A resident engine with the short prompts, one per test module (the batch and product tests)."""
    from music_flamingo import MusicFlamingoGGUF

    mf = MusicFlamingoGGUF(
        model_path=tiny.model_gguf,
        mmproj_path=tiny.mmproj_gguf,
        n_threads=1,
        warmup=False,
        prompts_files=[small_prompts],
    )
    yield mf
    mf.close()


# --- a dataset for the scaled-out runners (tests/test_workers.py, tests/test_distributed.py) -----------------------


def scaling_dataset(root: Path, track: np.ndarray) -> dict[str, list[Path]]:
    """20 good tracks of 2 s real music (4 organized folders with a stem each, 4 crops, 12 loose files), 4 broken
    ones (zero bytes, text named .mp3, a FLAC cut after its header, a damaged sidecar) and one already described.
    Returns the track paths by group: good, broken, done, stems."""
    import json

    g: dict[str, list[Path]] = {"good": [], "broken": [], "done": [], "stems": []}
    offsets = iter(range(2, 200, 2))
    for i in range(4):
        folder = root / f"Artist - Song {i}"
        g["good"].append(write_clip(folder / "full_mix.flac", track, 2, next(offsets)))
        g["stems"].append(write_clip(folder / "vocals.flac", track, 1, 5))
    for j in range(4):
        g["good"].append(
            write_clip(root / "Artist - Song 0" / "crops" / f"Artist - Song 0_{j}.flac", track, 2, next(offsets))
        )
    for k in range(12):
        g["good"].append(write_clip(root / "loose" / f"take {k}.flac", track, 2, next(offsets)))
    loose = root / "loose"
    (loose / "empty.flac").write_bytes(b"")
    (loose / "not audio.mp3").write_text("this is not an mp3\n")
    cut = write_clip(loose / "cut.flac", track, 2, 9)
    cut.write_bytes(cut.read_bytes()[:120])
    damaged = write_clip(loose / "damaged sidecar.flac", track, 2, 11)
    (loose / "damaged sidecar.INFO").write_text('{"bpm": 120, "oops": ')
    g["broken"] += [loose / "empty.flac", loose / "not audio.mp3", cut, damaged]
    done = write_clip(loose / "described before.flac", track, 2, 13)
    (loose / "described before.INFO").write_text(json.dumps({k: "earlier" for k in DEFAULT_KEYS}))
    g["done"].append(done)
    return g


# provenance that differs from track to track, or from one moment to the next
PER_TRACK_META = {"date", "seconds_analysed", "source_seconds", "truncated"}


def local_reference(analyzer, audio: Path, tmp: Path) -> dict:
    """The sidecar the single-process runner writes for a copy of ``audio``: what a scaled-out run must match."""
    import json
    import shutil

    from music_flamingo.batch import BatchOptions, run_batch

    tmp.mkdir(parents=True, exist_ok=True)
    shutil.copy(audio, tmp / audio.name)
    s = run_batch(analyzer, tmp, BatchOptions(progress=False))
    assert s.done == 1, s.failures
    return json.loads((tmp / f"{audio.stem}.INFO").read_text(encoding="utf-8"))


def assert_written_like_local(sidecar: Path, reference: dict) -> None:
    """The same keys, model label and provenance as the single-process runner's sidecar (texts aside)."""
    import json

    got = json.loads(sidecar.read_text(encoding="utf-8"))
    assert set(got) == set(reference), sidecar
    assert got["music_flamingo_model"] == reference["music_flamingo_model"]
    strip = lambda m: {k: v for k, v in m.items() if k not in PER_TRACK_META}  # noqa: E731
    assert strip(got["music_flamingo_meta"]) == strip(reference["music_flamingo_meta"])
    assert all(got[k] for k in DEFAULT_KEYS)


# --- a track that kills the process describing it (tests/test_workers.py, tests/test_distributed.py) --------------


class KillWhoeverLocks:
    """A real crash on a named track, without a hook in the package: a thread watches the kernel's table of file
    locks (``/proc/locks``, Linux) and SIGKILLs whatever process holds the run's lock on one of ``tracks`` — the
    lock a worker or a Ray actor takes when its engine admits the track. Every attempt at those tracks dies, as if
    the track crashed the engine. ``kills`` lists ``(pid, track)`` in order. Use as a context manager."""

    def __init__(self, root: Path, tracks: list[Path], poll_s: float = 0.01) -> None:
        from music_flamingo.batch import _lock_path, state_dir_of

        self.locks = {_lock_path(state_dir_of(root), t): t for t in tracks}
        self.poll_s = poll_s
        self.kills: list[tuple[int, Path]] = []
        self._stop = None
        self._thread = None

    def _holders(self) -> dict[int, Path]:
        """pid -> track, for the watched lock files some process holds now."""
        inodes = {}
        for lock, t in self.locks.items():
            try:
                inodes[os.stat(lock).st_ino] = t
            except FileNotFoundError:
                pass
        if not inodes:
            return {}
        found = {}
        with open("/proc/locks", encoding="ascii") as f:
            for line in f:  # "1: FLOCK  ADVISORY  WRITE 4242 08:01:131073 0 EOF"; waiters are marked "->"
                parts = line.split()
                if "->" in parts or len(parts) < 6:
                    continue
                pid, ino = int(parts[4]), int(parts[5].rsplit(":", 1)[1])
                if ino in inodes and pid != os.getpid():
                    found[pid] = inodes[ino]
        return found

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            for pid, t in self._holders().items():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                if not self.kills or self.kills[-1][0] != pid:
                    self.kills.append((pid, t))

    def __enter__(self) -> KillWhoeverLocks:
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
