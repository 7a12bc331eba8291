"""The failures file (``<dataset>/.music-flamingo/failures.jsonl``): which tracks failed and why — one JSON line
per failing track, complete with several processes on one dataset, and never stale.

Earlier each process overwrote the file with its own list at the end of its run, so with several processes
records were lost, and a track that later succeeded stayed listed. Now:

* a failure is written when it happens, under a lock (``failures.jsonl.lock``, one that removes itself), so
  several processes never lose each other's records; a track already listed gets its record replaced, never a
  second one;
* a track that succeeds (or is found complete) has its record removed, so a clean rerun leaves no stale record;
  the file is deleted when its last record goes, and records of files that no longer exist are dropped;
* a track that another process failed *during this run* is not retried by every other process (a failure listed
  before this run started is retried: that is what a rerun is for);
* appends are whole lines, fsynced; removals rewrite the file atomically (temp file + rename). A write killed
  half-way leaves at most a torn last line, which readers skip and the next rewrite drops;
* a line that is not a failure record (not JSON, nested too deep, a ``path`` that is not a string) is skipped with
  a warning, never fatal; a folder, FIFO or device under the file's name is reported and the run goes on;
* the file is rewritten or removed only while it is recognisably ours (:mod:`.fsutil`, rule 2): in the run's
  state folder, or every line a failure record. A file named with ``--failures`` that holds anything else (a
  user's notes, a manifest) is left byte for byte and nothing is recorded in it (:func:`not_a_failures_file` lets
  the command line refuse it up front).

Record: ``{"path": <absolute path>, "error": <exception type>, "message": ..., "time": <UTC ISO>, "host", "pid"}``.
Reading is incremental (only bytes appended since the last look), so checking a track costs a lock and a stat.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from ._logging import logger
from .errors import MusicFlamingoError
from .fsutil import MAX_FAILURES_BYTES, SelfRemovingLock, append_whole, open_regular_file
from .sidecar import LOCK_TIMEOUT_S, PathLike, atomic_write_text

STATE_DIR = ".music-flamingo"  # the run's state folder in a dataset (locks, the default failures file)


def _key(track: PathLike) -> str:
    return os.path.abspath(os.fspath(track))


def _line(record: dict[str, Any]) -> str:
    """One JSON line; non-ASCII text kept readable unless the path is not valid Unicode (undecodable file names
    become surrogates, which only the escaped form can carry)."""
    text = json.dumps(record, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(record, ensure_ascii=True)
    return text + "\n"


def parse_record(raw: bytes) -> dict[str, Any] | None:
    """The failure record on one line, ``None`` when the line is not one (any content: never raises)."""
    try:
        rec = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("path"), str) or not isinstance(rec.get("error"), str):
        return None
    return rec


def _torn(raw: bytes) -> bool:
    """A record line cut short by a killed append (and ended by the next append): not JSON, but the start of one of
    our records — ours, unlike a line of someone else's file."""
    if not raw.startswith(b'{"path": '):
        return False
    try:
        json.loads(raw)
    except (ValueError, RecursionError):
        return True
    return False


def not_a_failures_file(path: PathLike) -> str | None:
    """Why ``path`` cannot serve as a failures file (a user's file this package must not rewrite or delete, a
    FIFO, a folder, too large), or ``None``: it does not exist, is empty, or every complete line is a record."""
    try:
        with open_regular_file(path, MAX_FAILURES_BYTES) as f:
            data = f.read(MAX_FAILURES_BYTES)
    except FileNotFoundError:
        return None
    except OSError as e:
        return str(e)
    lines = data[: data.rfind(b"\n") + 1].splitlines()
    foreign = sum(1 for raw in lines if raw.strip() and parse_record(raw) is None and not _torn(raw))
    if foreign:
        return (
            f"{path} holds {foreign} line(s) that are not failure records of music-flamingo; it is not a failures "
            "file, and this package never rewrites or deletes a file it did not write"
        )
    return None


class FailureLog:
    """One process's view of a failures file. Not thread-safe: the batch runner uses it from one thread.

    Every method takes the file's lock itself and logs (rather than raises) when the file cannot be locked, read or
    written: the failures file must never be the reason a dataset run stops.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self._lock = SelfRemovingLock(str(self.path) + ".lock", timeout=LOCK_TIMEOUT_S)
        # Ours to rewrite whatever it holds only in the state folder; elsewhere only while every line is a record.
        self._ours_by_place = self.path.parent.name == STATE_DIR
        self._foreign = 0  # lines read that are not records
        self.disabled = False  # not ours: read, never written
        self.unwritten = 0  # records that could not be written (full disk, not ours ...)
        self._records: dict[str, tuple[dict[str, Any], str]] = {}  # key -> (record, its line), as last read
        self._file: BinaryIO | None = None  # the file last read, kept open (see _refresh)
        self._offset = 0  # bytes of it already parsed
        self._at_start: dict[str, dict[str, Any]] = {}
        self._temp_re = re.compile(r"^\." + re.escape(self.path.name) + r"\.[a-z0-9_]{8}\.tmp$")

    # --- public -------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Read the file as earlier runs left it, drop records of files that no longer exist and the temporary
        file of a rewrite that was killed. Failures listed now are retried by this run (see :meth:`failed_elsewhere`)."""
        with self._locked("read") as ok:
            if not ok:
                return
            for name in os.listdir(self.path.parent) if self.path.parent.is_dir() else []:
                if self._temp_re.match(name):  # no writer is live: we hold the lock every writer holds
                    try:
                        os.unlink(self.path.parent / name)
                    except OSError as exc:
                        logger.warning("could not remove %s: %s", self.path.parent / name, exc)
            self._refresh()
            if self._foreign and not self._ours_by_place:
                self.disabled = True
                logger.error("%s", not_a_failures_file(self.path) or f"{self.path} is not a failures file")
                return
            gone = [k for k in self._records if not os.path.lexists(k)]
            if gone:
                logger.info("failures file: dropping %d record(s) of files that no longer exist", len(gone))
                self._rewrite_without(gone)
            self._at_start = {k: rec for k, (rec, _) in self._records.items()}

    def record(self, track: PathLike, error: BaseException) -> dict[str, Any]:
        """List ``track`` as failed with ``error`` (replacing an older record of it); returns the record."""
        key = _key(track)
        rec = {
            "path": key,
            "error": type(error).__name__,
            "message": str(error),
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        written = False
        with self._locked("record a failure in") as ok:
            if ok and not self.disabled:
                self._refresh()
                if key in self._records:
                    self._rewrite_without([key])
                self._append(rec)
                written = True
        if not written:
            self.unwritten += 1
        return rec

    def clear(self, tracks: PathLike | Iterable[PathLike]) -> int:
        """Remove the records of ``tracks`` (one path or several: they succeeded or are complete); returns how
        many there were. Costs a lock and a stat when none of them is listed."""
        keys = {_key(tracks)} if isinstance(tracks, (str, os.PathLike)) else {_key(t) for t in tracks}
        if not keys:
            return 0
        with self._locked("clear records in") as ok:
            if not ok or self.disabled:
                return 0
            self._refresh()
            listed = [k for k in keys if k in self._records]
            if listed:
                self._rewrite_without(listed)
            return len(listed)
        return 0  # the file could not be read or written (logged)

    def failed_elsewhere(self, track: PathLike) -> bool:
        """Whether another process recorded ``track`` as failed since this run started (so this run does not try
        it again). Call it while holding the track's lock."""
        key = _key(track)
        with self._locked("read") as ok:
            if not ok:
                return False
            self._refresh()
        entry = self._records.get(key)
        return entry is not None and entry[0] != self._at_start.get(key)

    def records(self) -> list[dict[str, Any]]:
        """Every record in the file now, in file order."""
        with self._locked("read") as ok:
            if ok:
                self._refresh()
        return [rec for rec, _ in self._records.values()]

    # --- inside the lock ----------------------------------------------------------------------------------------
    def _locked(self, what: str):
        return _Locked(self, what)

    def close(self) -> None:
        """Close the file kept open between reads."""
        self._forget()

    def _forget(self) -> None:
        if self._file is not None:
            self._file.close()
        self._records, self._file, self._offset, self._foreign = {}, None, 0, 0

    def _refresh(self) -> None:
        """Bring ``_records`` up to date: only appended bytes are parsed unless the file was replaced.

        The file last read stays open: while it is, its inode cannot be reused, so "the path still has the inode
        of the open file" proves it is the same file, grown by appends only. (Compared by number alone, a rewrite
        by another process could reuse the number at once, and the appended-bytes shortcut would then parse a
        different file from the middle — the 4-process test caught exactly that.)
        """
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._forget()
            return
        if self._file is not None:
            held = os.fstat(self._file.fileno())
            if (held.st_dev, held.st_ino) != (st.st_dev, st.st_ino) or st.st_size < self._offset:
                self._forget()
        if self._file is None:
            self._file = open_regular_file(self.path, MAX_FAILURES_BYTES)  # never a FIFO (a hang) or a folder
        self._file.seek(self._offset)
        data = self._file.read(MAX_FAILURES_BYTES)
        end = data.rfind(b"\n") + 1  # a torn last line (killed append) is left for later or for the next rewrite
        for raw in data[:end].splitlines():
            rec = parse_record(raw)
            if rec is None:
                if raw.strip():
                    self._foreign += not _torn(raw)
                    logger.warning("failures file %s: skipping a line that is not a failure record", self.path)
                continue
            key = rec["path"]
            self._records.pop(key, None)  # the last record of a track wins, and moves to the end
            self._records[key] = (rec, raw.decode("utf-8") + "\n")
        self._offset += end

    def _append(self, rec: dict[str, Any]) -> None:
        data = _line(rec).encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK, 0o666)
        try:
            if os.fstat(fd).st_size > self._offset:  # a torn line from a killed writer: end it so ours stays separate
                data = b"\n" + data
            append_whole(fd, data)  # whole or not at all (a full disk): we hold the lock every writer holds
            os.fsync(fd)
        finally:
            os.close(fd)
        self._refresh()

    def _rewrite_without(self, keys: Iterable[str]) -> None:
        if self._foreign and not self._ours_by_place:  # a file that is not all ours is never rewritten
            raise MusicFlamingoError(f"{self.path} holds lines that are not failure records; left as it is")
        for k in keys:
            self._records.pop(k, None)
        if self._records:
            atomic_write_text(self.path, "".join(line for _, line in self._records.values()))
        else:
            try:
                os.unlink(self.path)  # nothing failed: no file, as in a dataset that never had a failure
            except FileNotFoundError:
                pass
        self._forget()
        self._refresh()


class _Locked:
    """``with log._locked(what) as ok``: holds the failures lock; ``ok`` is False (and a warning logged) when it
    cannot be taken, and errors while reading or writing the file are logged instead of raised."""

    def __init__(self, log: FailureLog, what: str) -> None:
        self.log, self.what = log, what

    def __enter__(self) -> bool:
        try:
            self.log.path.parent.mkdir(parents=True, exist_ok=True)
            self.log._lock.acquire()
            return True
        except OSError as exc:  # TimeoutError included
            logger.error("could not lock the failures file %s to %s it: %s", self.log.path, self.what, exc)
            return False

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.log._lock.is_locked:
            self.log._lock.release()
        if isinstance(exc, (OSError, MusicFlamingoError)):
            logger.error("could not %s the failures file %s: %s", self.what, self.log.path, exc)
            self.log._forget()  # reread from scratch next time
            return True
        return False


__all__ = ["STATE_DIR", "FailureLog", "not_a_failures_file", "parse_record"]
