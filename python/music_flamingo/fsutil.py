"""Reading files a user (or another tool) put in a dataset, without hanging on what is not a file.

A FIFO named ``<track>.INFO`` once hung a whole batch in its first scan: opening a FIFO for reading waits for a
writer, forever. Every reader of user files checks the type before opening and opens non-blocking, so a FIFO, a
socket, a device or a directory under a track's name is an error that names it, never a hang.
"""

from __future__ import annotations

import os
import stat

PathLike = str | os.PathLike

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


class NotARegularFileError(OSError):
    """The path exists (through any symlinks) but is a FIFO, socket, device or directory."""


def _kind(mode: int) -> str | None:
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


def _check(path: PathLike, st: os.stat_result) -> None:
    kind = _kind(st.st_mode)
    if kind is not None:
        raise NotARegularFileError(f"{os.fspath(path)} is {kind}, not a regular file")


def require_regular_file(path: PathLike) -> None:
    """Raise ``FileNotFoundError`` or :class:`NotARegularFileError` unless ``path`` is a regular file (symlinks
    followed). For files another library opens by name (audio decoders)."""
    _check(path, os.stat(path))


def read_regular_file(path: PathLike) -> bytes:
    """The bytes of ``path``, which must be a regular file: checked before opening (opening a device can have
    effects of its own), opened non-blocking, and checked again on the descriptor in case it was swapped."""
    require_regular_file(path)
    fd = os.open(path, _OPEN_FLAGS)
    with open(fd, "rb") as f:
        _check(path, os.fstat(fd))
        return f.read()


__all__ = ["NotARegularFileError", "read_regular_file", "require_regular_file"]
