"""The model hash cache: each model file is hashed once per (path, size, mtime), remembered across runs and
processes, hashed again when the file changes, and a damaged cache file is ignored."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from music_flamingo.provenance import FileHashCache


def swap_content_keep_stat(path: Path, content: bytes) -> None:
    """New bytes of the same size with the old mtime: invisible to a (size, mtime) cache, so a cache hit returns
    the old hash and a re-read would return the new one."""
    st = path.stat()
    assert len(content) == st.st_size
    path.write_bytes(content)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_hash_cache_computes_once_and_persists(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    a, b = os.urandom(3 << 20), os.urandom(3 << 20)
    model.write_bytes(a)
    cache = FileHashCache(tmp_path / "cache")
    assert cache.sha256(model) == sha(a)
    swap_content_keep_stat(model, b)
    assert cache.sha256(model) == sha(a)  # served from memory: the file was not read again
    assert FileHashCache(tmp_path / "cache").sha256(model) == sha(a)  # served from hashes.json in a new instance
    stored = json.loads((tmp_path / "cache" / "hashes.json").read_text())
    assert stored["files"][str(model.resolve())]["sha256"] == sha(a)


def test_hash_cache_recomputes_after_change(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    a, b = os.urandom(1000), os.urandom(1000)
    model.write_bytes(a)
    cache = FileHashCache(tmp_path / "cache")
    assert cache.sha256(model) == sha(a)
    st = model.stat()
    model.write_bytes(b)
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # same size, newer mtime
    assert cache.sha256(model) == sha(b)
    model.write_bytes(b + b"x")  # different size
    assert cache.sha256(model) == sha(b + b"x")
    assert FileHashCache(tmp_path / "cache").sha256(model) == sha(b + b"x")


def test_hash_cache_ignores_corrupt_cache_file(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"weights")
    (tmp_path / "cache").mkdir()
    for junk in ("{not json", "[1]", '{"version": 1, "files": {"x": 3}}'):
        (tmp_path / "cache" / "hashes.json").write_text(junk)
        assert FileHashCache(tmp_path / "cache").sha256(model) == sha(b"weights")
        stored = json.loads((tmp_path / "cache" / "hashes.json").read_text())  # rewritten as a valid cache
        assert stored["files"][str(model.resolve())]["sha256"] == sha(b"weights")


def test_hash_cache_default_dir_from_env(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MUSIC_FLAMINGO_CACHE", str(tmp_path / "c"))
    assert FileHashCache().cache_file == tmp_path / "c" / "hashes.json"
    monkeypatch.delenv("MUSIC_FLAMINGO_CACHE")
    assert FileHashCache().cache_file == Path.home() / ".cache" / "music-flamingo" / "hashes.json"


def test_hash_cache_from_many_threads(tmp_path: Path) -> None:
    files = []
    for i in range(3):
        f = tmp_path / f"m{i}.gguf"
        f.write_bytes(os.urandom(1 << 20))
        files.append(f)
    cache = FileHashCache(tmp_path / "cache")
    results: list[tuple[int, str]] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        h = cache.sha256(files[i % 3])
        with lock:
            results.append((i % 3, h))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 12
    for i, h in results:
        assert h == sha(files[i].read_bytes())
    stored = json.loads((tmp_path / "cache" / "hashes.json").read_text())["files"]
    assert set(stored) == {str(f.resolve()) for f in files}
