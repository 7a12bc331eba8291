"""Real music for the tests and the benchmarks, fetched by the project itself and kept in its cache.

Two Debian packages of game soundtracks (Debian main, freely redistributable), fetched by name with apt and only
unpacked, never installed:

- ``asc-music``: 3 tracks, MP3, 5-7 minutes each (the tests' long track is the first of them);
- ``drascula-music``: about 30 tracks, Ogg Vorbis, 0.1-3 minutes each.

The folder (``$MUSIC_FLAMINGO_TEST_MUSIC``, else ``corpus`` in the project's cache) ends up holding ``mp3/*.mp3`` and
``ogg/*.ogg``, each kind whole or not at all. apt checks the packages against Debian's signed lists; ``apt-get
update`` runs only when apt cannot find them (a fresh container, where CI runs as root). A folder that already holds
both kinds at ``$MUSIC_FLAMINGO_SHARED_CORPUS`` (default ``shared/corpus`` beside the clone: a team's copy; set it
empty to ignore one) is copied instead, which saves the download and nothing else.

Command line, from the repository root: ``python -m testkit.corpus [OUT_DIR]``.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import CACHE, REPO

PACKAGES = ("asc-music", "drascula-music")
KINDS = ("mp3", "ogg")  # the folder of each kind, named by its files' suffix
SR = 16000  # the model's sample rate: what music_flamingo.audio.load_audio returns


class CorpusError(RuntimeError):
    """The test music could not be fetched: what failed and what to do instead."""


def corpus_dir() -> Path:
    """Where the test music lives: ``$MUSIC_FLAMINGO_TEST_MUSIC``, else ``corpus`` in the project's cache."""
    return Path(os.environ.get("MUSIC_FLAMINGO_TEST_MUSIC") or CACHE / "corpus")


def shared_copy() -> Path | None:
    """A complete copy beside the clone (``$MUSIC_FLAMINGO_SHARED_CORPUS``, default ``../shared/corpus``), if any."""
    where = os.environ.get("MUSIC_FLAMINGO_SHARED_CORPUS", str(REPO.parent / "shared" / "corpus"))
    return Path(where) if where and is_complete(Path(where)) else None


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds music of every kind."""
    return all(any((folder / kind).glob(f"*.{kind}")) for kind in KINDS)


def ensure_corpus(out: Path | None = None) -> Path:
    """The folder of test music (``out``, else :func:`corpus_dir`), fetched on first use; one process fetches while
    others wait for it."""
    out = Path(out) if out is not None else corpus_dir()
    if is_complete(out):
        return out
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_complete(out):
            return out
        # staged inside ``out``, so each kind's folder moves in with one rename on the same file system
        with tempfile.TemporaryDirectory(prefix=".fetch-", dir=out) as tmp:
            staged = _gather(shared_copy() or _unpack(_download(Path(tmp)), Path(tmp) / "root"), Path(tmp) / "music")
            for kind in KINDS:
                shutil.rmtree(out / kind, ignore_errors=True)  # a kind left by an older, partial corpus
                os.replace(staged / kind, out / kind)
    return out


def _download(work: Path) -> list[Path]:
    """The packages' .deb files in ``work``, fetched by name from this machine's apt sources."""
    apt = shutil.which("apt-get")
    if apt is None:
        raise CorpusError(
            "the test music comes from Debian packages and fetching them needs apt-get (Debian, Ubuntu); elsewhere "
            "set MUSIC_FLAMINGO_TEST_MUSIC to a folder holding mp3/*.mp3 and ogg/*.ogg fetched on such a machine"
        )
    download = [apt, "download", *PACKAGES]
    got = subprocess.run(download, cwd=work, capture_output=True, text=True)
    if got.returncode != 0:  # most often: the package lists are missing (containers ship without them)
        update = subprocess.run([apt, "update", "-qq"], capture_output=True, text=True)
        got = subprocess.run(download, cwd=work, capture_output=True, text=True)
        if got.returncode != 0:
            raise CorpusError(
                f"apt-get download {' '.join(PACKAGES)} failed: {got.stderr.strip()[-1000:]}"
                + (f"; apt-get update failed too: {update.stderr.strip()[-1000:]}" if update.returncode else "")
            )
    return sorted(work.glob("*.deb"))


def _unpack(debs: list[Path], root: Path) -> Path:
    """The files of every package under ``root`` (dpkg-deb comes with apt)."""
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, capture_output=True)
    return root


def _gather(source: Path, staged: Path) -> Path:
    """Every file of each kind found under ``source``, copied into ``staged/KIND/``; refuses a kind that is missing."""
    for kind in KINDS:
        (staged / kind).mkdir(parents=True)
        for f in sorted(source.rglob(f"*.{kind}")):
            shutil.copy2(f, staged / kind / f.name)
    if not is_complete(staged):
        missing = [k for k in KINDS if not any((staged / k).iterdir())]
        raise CorpusError(f"no {' or '.join(missing)} files in {source}: {PACKAGES} no longer hold the expected music")
    return staged


def write_clip(path: Path, track, seconds: float, offset: float) -> Path:
    """``seconds`` of real music (``track``, 16 kHz) from ``offset`` into ``path`` (format from the suffix), folders
    created."""
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    a = int(offset * SR)
    sf.write(str(path), track[a : a + int(seconds * SR)], SR)
    return path


def load_music(seconds_needed: float):
    """Real music, 16 kHz mono: the corpus MP3s in order, from 20 s into the first, joined until long enough (the
    first alone covers 7 minutes; 10 minutes need two)."""
    import numpy as np

    from music_flamingo.audio import load_audio

    parts, n = [], -20 * SR
    for mp3 in sorted(ensure_corpus().glob("mp3/*.mp3")):
        parts.append(load_audio(mp3))
        n += len(parts[-1])
        if n >= seconds_needed * SR:
            return np.concatenate(parts)[20 * SR :]
    raise AssertionError(f"the corpus holds less than {seconds_needed} s of music")


def main() -> None:
    out = ensure_corpus(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
    counts = ", ".join(f"{len(list((out / k).glob(f'*.{k}')))} {k}" for k in KINDS)
    print(f"{counts} in {out}")


if __name__ == "__main__":
    try:
        main()
    except CorpusError as e:
        sys.exit(f"testkit.corpus: {e}")
