#!/usr/bin/env python3
"""Resolve the pinned llama.cpp source tree and print its path (last line of stdout).

Why a script and not CMake's FetchContent: the pin is a *registry package* (the llama-cpp-python sdist), fetched by
name with pip so the user's pip configuration (index, proxy, certificates) applies, and verified against the sha256
in third_party/llama-cpp.json. Only its ``vendor/llama.cpp`` tree is unpacked, into a cache outside the build folder,
so rebuilds and CI reruns on one machine download nothing. The build (CMake) and the tests (which need the tree's
converter and vocabulary files) both call this one script.

Usage: python fetch_llama_cpp.py [--pin third_party/llama-cpp.json] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_PIN = HERE.parent / "third_party" / "llama-cpp.json"
MARKER = ".music-flamingo-source.json"


def cache_root(explicit: str | None = None) -> Path:
    """The cache folder: --cache-dir, $MUSIC_FLAMINGO_CACHE, $XDG_CACHE_HOME/music-flamingo, ~/.cache/music-flamingo."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("MUSIC_FLAMINGO_CACHE"):
        return Path(os.environ["MUSIC_FLAMINGO_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "music-flamingo"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def locked(path: Path):
    """Exclusive lock so parallel builds/tests on one machine fetch once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def download_sdist(pin: dict, dest: Path) -> Path:
    """pip download the pinned sdist into dest, with pip's own hash check; returns the archive path."""
    req = dest / "requirements.txt"
    req.write_text(f"{pin['package']}=={pin['version']} --hash=sha256:{pin['sha256']}\n")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--require-hashes",
        "-r",
        str(req),
        "-d",
        str(dest),
    ]
    # pip prepares the sdist's metadata after downloading it. Without build isolation it reuses the
    # scikit-build-core of this environment (present in our own build env) instead of installing one (~minutes).
    if importlib.util.find_spec("scikit_build_core") is not None:
        cmd.insert(4, "--no-build-isolation")
    print("fetch_llama_cpp: " + " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    archives = [p for p in dest.iterdir() if p.name.endswith((".tar.gz", ".zip"))]
    if len(archives) != 1:
        raise SystemExit(f"fetch_llama_cpp: expected one sdist in {dest}, found {[p.name for p in archives]}")
    return archives[0]


def unpack_tree(archive: Path, subdir: str, target: Path) -> None:
    """Extract only <top>/<subdir>/ of the sdist into target (atomically: temp folder, then rename)."""
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
    try:
        with tarfile.open(archive) as tf:
            top = tf.getmembers()[0].name.split("/")[0]
            prefix = f"{top}/{subdir.strip('/')}/"
            members = []
            for m in tf.getmembers():
                if m.name.startswith(prefix) and (m.isfile() or m.isdir() or m.issym()):
                    m.name = m.name[len(prefix) :]
                    if m.name:
                        members.append(m)
            if not members:
                raise SystemExit(f"fetch_llama_cpp: {archive.name} has no {subdir}/")
            tf.extractall(tmp, members=members, filter="data")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def resolve(pin_path: Path = DEFAULT_PIN, cache_dir: str | None = None) -> Path:
    pin = json.loads(Path(pin_path).read_text())
    root = cache_root(cache_dir)
    target = root / f"llama.cpp-{pin['llama_cpp_commit']}-{pin['sha256'][:12]}"
    if (target / MARKER).is_file():
        return target
    with locked(root / ".fetch.lock"):
        if (target / MARKER).is_file():
            return target
        with tempfile.TemporaryDirectory(prefix="dl-", dir=root) as d:
            archive = download_sdist(pin, Path(d))
            digest = sha256_of(archive)
            if digest != pin["sha256"]:
                raise SystemExit(f"fetch_llama_cpp: sha256 mismatch for {archive.name}: {digest} != {pin['sha256']}")
            unpack_tree(archive, pin["subdir"], target)
        (target / MARKER).write_text(json.dumps(pin, indent=2) + "\n")
    return target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pin", default=str(DEFAULT_PIN))
    ap.add_argument("--cache-dir", default=None)
    a = ap.parse_args()
    print(resolve(Path(a.pin), a.cache_dir))


if __name__ == "__main__":
    main()
