"""Where a description came from: :class:`FileHashCache` hashes multi-gigabyte model files once per (path, size,
mtime), so the model's sha256 can be recorded in each sidecar without rereading gigabytes per track.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from ._logging import logger
from .errors import SidecarError
from .sidecar import LOCK_TIMEOUT_S, PathLike, atomic_write_text


def default_hash_cache_dir() -> Path:
    """``$MUSIC_FLAMINGO_CACHE``, else ``~/.cache/music-flamingo``; read at call time so tests and jobs can move it."""
    env = os.environ.get("MUSIC_FLAMINGO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "music-flamingo"


_HASH_CACHE_VERSION = 1
_HASH_CHUNK = 8 << 20


@dataclass
class FileHashCache:
    """sha256 of big files (model GGUFs), computed once and remembered across runs in ``<cache_dir>/hashes.json``.

    An entry is keyed by the file's resolved absolute path and is valid only while its size and ``mtime_ns`` are
    unchanged, so a replaced or re-downloaded model is hashed again. Thread-safe: concurrent calls for one file hash
    it once. The cache is only an optimisation, so an unreadable or corrupt cache file is ignored (and rewritten)
    and a cache that cannot be saved is logged, not raised.
    """

    cache_dir: Path = field(default_factory=default_hash_cache_dir)
    _entries: dict[str, dict[str, Any]] | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _file_locks: dict[str, threading.Lock] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.cache_dir = Path(self.cache_dir)

    @property
    def cache_file(self) -> Path:
        return self.cache_dir / "hashes.json"

    def sha256(self, path: PathLike) -> str:
        """Hex sha256 of the file at ``path``, from the cache when its size and mtime still match."""
        resolved = Path(path).resolve()
        key = str(resolved)
        with self._lock:
            file_lock = self._file_locks.setdefault(key, threading.Lock())
        with file_lock:  # one hash per file at a time; other files proceed in parallel
            st = os.stat(resolved)
            cached = self._lookup(key, st)
            if cached is not None:
                return cached
            digest, st = _hash_stable(resolved)
            entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
            with self._lock:
                self._load()[key] = entry
                self._save(key, entry)
            return digest

    def _lookup(self, key: str, st: os.stat_result) -> str | None:
        with self._lock:
            entry = self._load().get(key)
        if entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
            return entry.get("sha256")
        return None

    def _load(self) -> dict[str, dict[str, Any]]:
        """The in-memory entries, read from disk on first use. Caller holds ``_lock``."""
        if self._entries is None:
            self._entries = self._read_disk()
        return self._entries

    def _read_disk(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.cache_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable hash cache %s: %s", self.cache_file, exc)
            return {}
        files = data.get("files") if isinstance(data, dict) and data.get("version") == _HASH_CACHE_VERSION else None
        if not isinstance(files, dict):
            logger.warning("ignoring hash cache %s: unexpected format", self.cache_file)
            return {}
        return {
            k: v
            for k, v in files.items()
            if isinstance(v, dict)
            and isinstance(v.get("sha256"), str)
            and isinstance(v.get("size"), int)
            and isinstance(v.get("mtime_ns"), int)
        }

    def _save(self, key: str, entry: dict[str, Any]) -> None:
        """Merge ``entry`` into the cache file; other processes' entries written meanwhile are kept."""
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            with FileLock(str(self.cache_file) + ".lock", timeout=LOCK_TIMEOUT_S):
                on_disk = self._read_disk()
                on_disk[key] = entry
                for k, v in on_disk.items():
                    self._entries.setdefault(k, v)  # type: ignore[union-attr]
                text = (
                    json.dumps({"version": _HASH_CACHE_VERSION, "files": on_disk}, indent=2, ensure_ascii=False) + "\n"
                )
                atomic_write_text(self.cache_file, text)
        except (OSError, SidecarError) as exc:
            logger.warning("could not save hash cache %s: %s", self.cache_file, exc)


def _hash_stable(path: Path, attempts: int = 3) -> tuple[str, os.stat_result]:
    """sha256 of ``path`` and the stat it belongs to; retried if the file changed while being read."""
    for _ in range(attempts):
        before = os.stat(path)
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                h.update(chunk)
            after = os.fstat(f.fileno())
        if (before.st_size, before.st_mtime_ns, before.st_ino) == (after.st_size, after.st_mtime_ns, after.st_ino):
            return h.hexdigest(), after
        logger.debug("%s changed while it was hashed; hashing again", path)
    raise OSError(f"{path} kept changing while it was hashed")


__all__ = ["FileHashCache", "default_hash_cache_dir"]
