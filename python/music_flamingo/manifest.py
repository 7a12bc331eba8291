"""The ``--jsonl`` manifest: one JSON line per described track, appended by every process of a run.

A line is whole or absent. It once was not: on a full disk a buffered write left half a line, the next run's line
was glued onto it, and closing the file raised a traceback instead of printing the summary. Now each line is one
``write()`` of the whole line on an ``O_APPEND`` descriptor (no buffer left to flush at close), under an ``flock``
of the manifest so processes sharing it never interleave; a write that fails part-way is cut back to where the
line started (:func:`~music_flamingo.fsutil.append_whole`; the track is then counted as failed, its message naming
the manifest), and a line torn by a killed
process is ended with a newline before the next one, so it stays a line of its own that readers skip.
The file is only ever appended to: a user's existing file keeps every byte (:mod:`.fsutil`, rule 2).
"""

from __future__ import annotations

import json
import os
from typing import Any

from ._logging import logger
from .errors import OutputFileError
from .fsutil import PathLike, append_whole, file_kind


def _flock(fd: int, take: bool) -> None:
    """Exclude the other processes appending to this manifest (``--workers``); where there is no ``flock``
    (Windows) each line is still one ``write()`` on an ``O_APPEND`` descriptor."""
    try:
        import fcntl
    except ImportError:
        return
    fcntl.flock(fd, fcntl.LOCK_EX if take else fcntl.LOCK_UN)


class Manifest:
    """``--jsonl``: opened once per run; :meth:`write` raises :class:`OutputFileError` for a line it could not
    write whole (nothing of it is left in the file)."""

    def __init__(self, path: PathLike) -> None:
        self.path = os.fspath(path)
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK  # a FIFO: no hang (no reader wait)
        try:
            self._fd: int | None = os.open(self.path, flags, 0o666)
        except OSError as e:
            raise OutputFileError(f"cannot open the manifest {self.path}: {e}") from e
        kind = file_kind(os.fstat(self._fd).st_mode)
        if kind is not None:
            os.close(self._fd)
            self._fd = None
            raise OutputFileError(f"cannot use the manifest {self.path}: it is {kind}, not a regular file")

    def write(self, record: dict[str, Any]) -> None:
        text = json.dumps(record, ensure_ascii=False) + "\n"
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:  # a file name that is not UTF-8 (surrogates): only the escaped form carries it
            data = (json.dumps(record, ensure_ascii=True) + "\n").encode("ascii")
        fd = self._fd
        if fd is None:
            raise OutputFileError(f"the manifest {self.path} is closed")
        _flock(fd, True)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # a line torn by a killed writer: ours starts on a line of its own
            append_whole(fd, data)
        except OSError as e:
            raise OutputFileError(f"could not append a line to the manifest {self.path}: {e}") from e
        finally:
            _flock(fd, False)

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError as e:
                logger.error("closing the manifest %s: %s", self.path, e)
            self._fd = None


__all__ = ["Manifest"]
