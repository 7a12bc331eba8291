"""The file-system rules of the package, stated once, and the helpers that keep them.

1. **Nothing is written, created or deleted outside the dataset** (compared as resolved paths: a symlinked folder
   or sidecar that leads out of the dataset is outside it). Only the files a user names on the command line
   (``--jsonl``, ``--failures``, ``--ray-output``) may lie elsewhere. A sidecar whose real path is outside is a
   counted failure naming the link (:func:`inside`).
2. **Only files the package created and can recognise as its own are deleted or rewritten**: sidecars (only our
   keys change), our temporary files and locks (exact name patterns), and a failures file whose every line is a
   failure record. A user's file is appended to (``--jsonl``) or left alone, never truncated or removed.
3. **One output path cannot serve two roles** (``--jsonl`` and ``--failures`` the same file, an output that is
   also an input): a usage error before anything runs.
4. **Every file read is opened as a regular file, with a size bound** (:func:`read_regular_file`,
   :func:`open_regular_file`): a FIFO, socket, device or directory is an error naming it, never a hang, and
   ``/dev/zero`` or a 50 GB file never fills the memory.
5. **A record that cannot be read is skipped with a warning, never fatal** (failures file lines, list entries).

A FIFO named ``<track>.INFO`` once hung a whole batch in its first scan: opening a FIFO for reading waits for a
writer, forever. So the type is checked before opening, the file is opened non-blocking and checked again on the
descriptor.
"""

from __future__ import annotations

import os
import stat
import time
from typing import BinaryIO

PathLike = str | os.PathLike

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)

# Size bounds of what the package reads (rule 4). Generous for real use, small enough that a wrong file is refused
# instead of filling the memory.
MAX_SIDECAR_BYTES = 1 << 30  # sidecars of other tools reach 20 MB; a GB is not a sidecar
MAX_LIST_BYTES = 256 << 20  # --from-list: a million paths of 250 bytes
MAX_FAILURES_BYTES = 1 << 30  # a failures file of millions of records
MAX_PROMPTS_BYTES = 1 << 20  # a prompts YAML file


class NotARegularFileError(OSError):
    """The path exists (through any symlinks) but is a FIFO, socket, device or directory."""


class FileTooLargeError(OSError):
    """A file is larger than what the package reads of its kind."""


def file_kind(mode: int) -> str | None:
    """What a non-regular file is, in words; ``None`` for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _check(path: PathLike, st: os.stat_result, max_bytes: int | None = None) -> None:
    kind = file_kind(st.st_mode)
    if kind is not None:
        raise NotARegularFileError(f"{os.fspath(path)} is {kind}, not a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise FileTooLargeError(f"{os.fspath(path)} is {st.st_size} bytes, more than the {max_bytes} it may have")


def require_regular_file(path: PathLike) -> None:
    """Raise ``FileNotFoundError`` or :class:`NotARegularFileError` unless ``path`` is a regular file (symlinks
    followed). For files another library opens by name (audio decoders)."""
    _check(path, os.stat(path))


def open_regular_file(path: PathLike, max_bytes: int | None = None) -> BinaryIO:
    """``path`` opened for binary reading, which must be a regular file of at most ``max_bytes``: checked before
    opening (opening a device can have effects of its own), opened non-blocking, and checked again on the
    descriptor in case it was swapped. Raises ``OSError`` (:class:`NotARegularFileError`,
    :class:`FileTooLargeError`, ``FileNotFoundError`` ...)."""
    _check(path, os.stat(path), max_bytes)
    fd = os.open(path, _OPEN_FLAGS)
    f = open(fd, "rb")
    try:
        _check(path, os.fstat(fd), max_bytes)
    except BaseException:
        f.close()
        raise
    return f


def read_regular_file(path: PathLike, max_bytes: int | None = None) -> bytes:
    """The bytes of ``path`` (see :func:`open_regular_file`); at most ``max_bytes`` are read even if it grows."""
    with open_regular_file(path, max_bytes) as f:
        data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:
        raise FileTooLargeError(f"{os.fspath(path)} grew past the {max_bytes} bytes it may have")
    return data


def read_bounded_stream(stream: BinaryIO, what: str, max_bytes: int) -> bytes:
    """Everything of ``stream`` (stdin), refused past ``max_bytes`` (``/dev/zero`` piped in)."""
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FileTooLargeError(f"{what} holds more than the {max_bytes} bytes it may have")
    return data


def append_whole(fd: int, data: bytes) -> None:
    """Append ``data`` to the file open on ``fd`` (``O_APPEND``) whole or not at all: a write that fails part-way
    (a full disk writes what fits, then fails) is cut back to where it started, so no half line is left for the
    next line to be glued onto. The caller excludes other writers of the file (a lock) while it appends."""
    start = os.fstat(fd).st_size
    written = 0
    try:
        while written < len(data):
            written += os.write(fd, data[written:])
    except OSError:
        try:
            if os.fstat(fd).st_size > start:
                os.ftruncate(fd, start)
        except OSError:
            pass  # the original error says more
        raise


def real(path: PathLike) -> str:
    """``path`` with every symlink resolved (as far as they resolve: a loop or a dangling link stops there, never
    raises — ``Path.resolve`` raises ``RuntimeError`` on a loop)."""
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def inside(path: PathLike, root: PathLike) -> bool:
    """Whether ``path``, resolved, is ``root`` (resolved) or below it (rule 1). Compared as resolved paths, never
    as text: ``data/linked/x`` with ``linked -> /etc`` is outside ``data``."""
    p, r = real(path), real(root)
    return p == r or p.startswith(r.rstrip(os.sep) + os.sep)


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether two paths name one file: the same inode if both exist, else the same resolved path (rule 3)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return real(a) == real(b)


class SelfRemovingLock:
    """An exclusive lock (``flock``) on a lock file that is removed on release, so nothing stays behind (a
    dataset of 450,000 tracks once kept 450,000 empty ``*.INFO.lock`` files).

    Removing a lock file is safe against a waiting writer only with a check: a waiter that opened the file before
    the holder removed it gets the lock on an inode no path leads to any more. So after ``flock`` succeeds, the
    path must still lead to the locked inode; if not, the lock is on a dead file and is taken again on the new one.
    The holder removes the file while still holding the lock. ``filelock`` locks (``flock`` on the same path, as
    earlier versions took) exclude it and are excluded by it.
    """

    POLL_S = 0.02

    def __init__(self, path: PathLike, timeout: float = -1) -> None:
        self.path = os.fspath(path)
        self.timeout = timeout
        self._fd: int | None = None

    @property
    def is_locked(self) -> bool:
        return self._fd is not None

    def acquire(self, timeout: float | None = None) -> None:
        """Take the lock, waiting up to ``timeout`` seconds (< 0: for ever, 0: not at all); ``TimeoutError``
        when it is held elsewhere that long. ``OSError`` when the lock file cannot be created."""
        import fcntl

        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if 0 <= timeout and time.monotonic() >= deadline:
                    raise TimeoutError(f"{self.path} is held by another writer") from None
                time.sleep(self.POLL_S)
                continue
            except BaseException:
                os.close(fd)
                raise
            held = os.fstat(fd)
            try:
                now = os.lstat(self.path)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
                self._fd = fd
                return
            os.close(fd)  # the holder before us removed that file: lock the one the path leads to now

    @staticmethod
    def held_elsewhere(path: PathLike) -> bool:
        """Whether some process holds the lock at ``path`` now, found without creating or removing anything (for
        the dry run). ``OSError`` when the file exists but cannot be opened."""
        import fcntl

        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops the lock we may have taken
        return False

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # still holding it: a waiter on this inode will see it is gone and retry
        except OSError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> SelfRemovingLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


__all__ = [
    "FileTooLargeError",
    "append_whole",
    "MAX_FAILURES_BYTES",
    "MAX_LIST_BYTES",
    "MAX_PROMPTS_BYTES",
    "MAX_SIDECAR_BYTES",
    "NotARegularFileError",
    "SelfRemovingLock",
    "inside",
    "open_regular_file",
    "file_kind",
    "read_bounded_stream",
    "read_regular_file",
    "real",
    "require_regular_file",
    "same_file",
]
