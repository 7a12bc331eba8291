"""``.INFO`` sidecar files: where captions go, next to the audio, shared with every other analysis tool.

A sidecar is one JSON object per track. Other tools have written their results into the same file for weeks, so
the rules here are about never losing their data:

* a sidecar that exists but is not a JSON object (or has duplicate keys, which a rewrite would silently collapse)
  is refused with :class:`~music_flamingo.errors.SidecarError` and left byte-for-byte as it was;
* an update changes only the keys it names. Every other top-level entry is copied from the old file as raw text,
  so numbers such as ``1e-7``, ``1.50`` or ``3.14159265358979323846`` (which a float round trip would reformat or
  round) and nested objects keep their exact bytes and their order;
* the new file is written to a temporary file in the same folder, fsynced and renamed over the old one, so readers
  and crashes see either the old or the new file, never half of one;
* writers of one sidecar are serialised across threads and processes with a lock file (``<sidecar>.lock``) and the
  file is re-read inside the lock, so concurrent updates of different keys all land. The lock file exists only
  while a write is under way: it is removed on release, safely against waiting writers
  (:class:`~music_flamingo.fsutil.SelfRemovingLock`), so a dataset keeps no empty lock file per track (for names
  near the 255-byte limit, lock and temporary file are named after a hash of the sidecar's name:
  :func:`companion_stem`);
* the temporary file of a write that was killed (SIGKILL, power loss), and the empty ``<sidecar>.lock`` files that
  earlier versions left beside every sidecar, are removed by the next batch run (:func:`remove_stale_temp_files`),
  only once no writer holds that sidecar's lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ._logging import logger
from .errors import SidecarError
from .fsutil import MAX_SIDECAR_BYTES, SelfRemovingLock, read_regular_file

PathLike = str | os.PathLike

SIDECAR_SUFFIX = ".INFO"
# In an organized track folder the mix is ``<folder>/full_mix.<ext>`` and the sidecar is named after the folder.
ORGANIZED_MIX_STEM = "full_mix"
# Writers hold the lock for milliseconds; a wait this long means something is stuck, which should be reported
# rather than waited on forever by a batch job.
LOCK_TIMEOUT_S = 120.0

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
_UMASK_LOCK = threading.Lock()


def sidecar_path(audio_path: PathLike) -> Path:
    """The ``.INFO`` file that belongs to ``audio_path``.

    ``<dir>/full_mix.<ext>`` is the mix of an organized track folder, whose sidecar is ``<dir>/<dir name>.INFO``;
    any other file (loose tracks, crops such as ``song_crop_03.flac``) gets ``<file name without suffix>.INFO``
    beside it. Only the last suffix is dropped, so names with dots keep the rest (``a.b.flac`` -> ``a.b.INFO``).
    """
    audio_path = Path(audio_path)
    parent = audio_path.parent
    if audio_path.stem == ORGANIZED_MIX_STEM and audio_path.suffix:
        # abspath, not parent.name: a relative "full_mix.flac" or "../full_mix.flac" must still name the real folder
        folder_name = Path(os.path.abspath(parent)).name
        if folder_name:  # "/" has no name: fall through to the plain rule
            return parent / f"{folder_name}{SIDECAR_SUFFIX}"
    return parent / f"{audio_path.stem}{SIDECAR_SUFFIX}"


def read_sidecar(path: PathLike) -> dict[str, Any]:
    """The sidecar's JSON object, ``{}`` when there is no sidecar yet.

    Raises :class:`SidecarError` when the file exists but cannot be read or is not a JSON object, so callers never
    mistake a damaged sidecar for an empty one and overwrite it.
    """
    path = Path(path)
    text = _read_text(path)
    if text is None:
        return {}
    return _parse_object(text, path)


def has_keys(path: PathLike, keys: Iterable[str]) -> bool:
    """Whether the sidecar has every top-level key in ``keys`` (a missing sidecar has none).

    Meant for skipping tracks that are already done; a damaged sidecar raises :class:`SidecarError` rather than
    answering ``False``, which would queue work whose result could not be written anyway.
    """
    wanted = [keys] if isinstance(keys, str) else list(keys)
    data = read_sidecar(path)
    return all(key in data for key in wanted)


def update_sidecar(path: PathLike, updates: Mapping[str, Any]) -> dict[str, Any]:
    """Set the top-level keys in ``updates`` and keep everything else exactly; returns the merged object.

    Values are serialised before the file is touched: one that JSON cannot hold (a set, NaN, a non-string key)
    raises :class:`SidecarError` and the sidecar stays as it was. Existing keys keep their position, new keys are
    appended in the order given. See the module docstring for the locking and atomic-write guarantees.
    """
    path = Path(path)
    if not updates:
        return read_sidecar(path)  # nothing to change: do not create or rewrite a file
    rendered: dict[str, str] = {}
    for key, value in updates.items():
        if not isinstance(key, str):
            raise SidecarError(f"sidecar keys must be strings, got {key!r}; {path} was left untouched")
        try:
            text = json.dumps(value, indent=2, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise SidecarError(
                f"value for key {key!r} cannot be stored as JSON ({exc}); {path} was left untouched"
            ) from exc
        rendered[key] = text.replace("\n", "\n  ")  # nested lines indented as json.dump(indent=2) would

    # Write through symlinks instead of replacing them, and lock the file that is actually written.
    target = Path(os.path.realpath(path))
    lock = sidecar_lock(target)
    try:
        lock.acquire(LOCK_TIMEOUT_S)
    except TimeoutError as exc:
        raise SidecarError(
            f"could not lock sidecar {path} within {LOCK_TIMEOUT_S:.0f} s ({lock.path} is held); it was left untouched"
        ) from exc
    except OSError as exc:
        raise SidecarError(f"could not lock sidecar {path} ({exc}); it was left untouched") from exc
    try:
        # Re-read inside the lock: another writer may have added its keys since the caller last looked.
        old_text = _read_text(target)
        entries = _top_level_entries(old_text, target) if old_text is not None else {}
        for key, value_text in rendered.items():
            raw_key = entries[key][0] if key in entries else json.dumps(key, ensure_ascii=False)
            entries[key] = (raw_key, value_text)
        if entries:
            new_text = "{\n" + ",\n".join(f"  {k}: {v}" for k, v in entries.values()) + "\n}\n"
        else:
            new_text = "{}\n"
        if new_text != old_text:
            atomic_write_text(target, new_text)
            logger.debug("updated %s: %s", path, ", ".join(rendered))
    finally:
        lock.release()
    return json.loads(new_text)


NAME_MAX = 255  # bytes in one file name on every common Linux/macOS filesystem


def companion_stem(target: Path) -> str:
    """What the lock (``<stem>.lock``) and temporary files (``.<stem>.<8 chars>.tmp``) of ``target`` are named after:
    its own name, or — for a name too long to take those 14 extra bytes (a 250-byte track name is legal) — the
    sha1 of it, so that such a track still gets its sidecar."""
    name = os.fsencode(target.name)
    if len(name) + 14 <= NAME_MAX:
        return target.name
    return hashlib.sha1(name).hexdigest() + target.suffix


def sidecar_lock(target: Path) -> SelfRemovingLock:
    """The lock every writer of the sidecar ``target`` (its real path) holds: ``<sidecar>.lock`` beside it, present
    only while held."""
    return SelfRemovingLock(target.parent / (companion_stem(target) + ".lock"))


def _read_text(path: Path) -> str | None:
    """The sidecar's text, ``None`` if it does not exist. A FIFO, device or directory named like a sidecar is
    refused (:mod:`.fsutil`): it once hung a batch forever."""
    try:
        data = read_regular_file(path, MAX_SIDECAR_BYTES)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SidecarError(f"cannot read sidecar {path} ({exc}); it was left untouched") from exc
    try:
        return data.decode("utf-8-sig")  # tolerate a BOM from Windows tools; it carries no data
    except UnicodeDecodeError as exc:
        raise SidecarError(f"sidecar {path} is not UTF-8 text ({exc}); it was left untouched") from exc


class _DuplicateKeyError(ValueError):
    pass


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKeyError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def _parse_object(text: str, path: Path) -> dict[str, Any]:
    """Parse a whole sidecar; anything but a JSON object without duplicate keys is refused."""
    try:
        data = json.loads(text, object_pairs_hook=_reject_duplicates)
    except (ValueError, RecursionError) as exc:
        raise SidecarError(f"sidecar {path} is not valid JSON ({exc}); it was left untouched") from exc
    if not isinstance(data, dict):
        raise SidecarError(f"sidecar {path} holds a JSON {type(data).__name__}, not an object; it was left untouched")
    return data


def _top_level_entries(text: str, path: Path) -> dict[str, tuple[str, str]]:
    """``key -> (raw key text, raw value text)`` for each top-level entry, in file order.

    The whole text is validated first; the raw slices are what lets a rewrite keep other tools' values bytewise.
    """
    _parse_object(text, path)
    entries: dict[str, tuple[str, str]] = {}
    i = _WHITESPACE.match(text, 0).end()
    i = _WHITESPACE.match(text, i + 1).end()  # past "{"
    if text[i] == "}":
        return entries
    while True:
        key, key_end = _DECODER.raw_decode(text, i)
        raw_key = text[i:key_end]
        i = _WHITESPACE.match(text, key_end).end() + 1  # past ":"
        i = _WHITESPACE.match(text, i).end()
        _, value_end = _DECODER.raw_decode(text, i)
        entries[key] = (raw_key, text[i:value_end])
        i = _WHITESPACE.match(text, value_end).end()
        if text[i] == "}":
            return entries
        i = _WHITESPACE.match(text, i + 1).end()  # past ","


def _current_umask() -> int:
    """The process umask, read without changing it where the platform allows (os.umask races other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable. Best effort: by now the new file is in place, so a failure here is not an error."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # e.g. Windows, where directories cannot be opened; the rename itself is already atomic
    try:
        os.fsync(fd)
    except OSError as exc:
        logger.debug("fsync of directory %s failed: %s", directory, exc)
    finally:
        os.close(fd)


def atomic_write_text(target: Path, text: str) -> None:
    """Replace ``target`` with ``text`` so that any reader or crash sees the old or the new file, never a mix.

    The replacement keeps the old file's permission bits (and owner where allowed); a new file gets the mode a plain
    ``open()`` would give it rather than mkstemp's private 0600. On any failure the temporary file is removed and
    the old file is untouched.
    """
    directory = target.parent
    try:
        old_stat: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        old_stat = None
    except OSError as exc:
        raise SidecarError(f"cannot stat {target} ({exc}); it was left untouched") from exc
    try:
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{companion_stem(target)}.", suffix=".tmp")
    except OSError as exc:
        raise SidecarError(f"cannot create a temporary file beside {target} ({exc}); it was left untouched") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            mode = stat.S_IMODE(old_stat.st_mode) if old_stat is not None else 0o666 & ~_current_umask()
            os.chmod(tmp_name, mode)
            if old_stat is not None and hasattr(os, "fchown"):
                st = os.fstat(f.fileno())
                if (st.st_uid, st.st_gid) != (old_stat.st_uid, old_stat.st_gid):
                    try:
                        os.fchown(f.fileno(), old_stat.st_uid, old_stat.st_gid)
                    except OSError:
                        pass  # only root may give files away; the data matters more than the owner
            os.fsync(f.fileno())
        os.replace(tmp_name, target)
    except BaseException as exc:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        except OSError as cleanup_exc:
            logger.warning("could not remove temporary file %s: %s", tmp_name, cleanup_exc)
        if isinstance(exc, OSError):
            raise SidecarError(f"cannot write {target} ({exc}); it was left untouched") from exc
        raise
    _fsync_directory(directory)


# What atomic_write_text leaves behind when the process is killed between mkstemp and the rename:
# "." + the sidecar's companion stem + "." + mkstemp's 8 random characters + ".tmp".
_TEMP_RE = re.compile(r"^\.(?P<target>.+" + re.escape(SIDECAR_SUFFIX) + r")\.[a-z0-9_]{8}\.tmp$")


def remove_stale_temp_files(root: PathLike) -> list[Path]:
    """Remove what killed or earlier writers left under ``root``: the temporary files of sidecar writes that were
    killed (``.<name>.INFO.<random>.tmp``, 10-20 MB each with large sidecars) and the empty ``<name>.INFO.lock``
    files that versions before the self-removing lock left beside every sidecar; returns what was removed. Hidden
    folders are not entered.

    Safe with other processes writing in the same dataset: only names of exactly these patterns are considered (a
    lock file only when empty, not a link, and beside the sidecar it locks), and one is removed only while holding
    its sidecar's lock, which every writer holds from creating its temporary file until renaming it — so a file
    found unlocked belongs to no live writer.
    """
    removed: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        here = Path(dirpath)
        names = set(filenames)
        stale = [(here / n, m["target"]) for n in filenames if (m := _TEMP_RE.match(n)) is not None]
        old_locks = [
            here / (companion_stem(here / n) + ".lock")
            for n in filenames
            if n.endswith(SIDECAR_SUFFIX) and companion_stem(here / n) + ".lock" in names
        ]
        for tmp, target in stale:
            if _remove_unlocked(tmp, SelfRemovingLock(here / (target + ".lock"))):
                removed.append(tmp)
        for lock_file in old_locks:
            if _is_empty_file(lock_file) and _remove_unlocked(None, SelfRemovingLock(lock_file)):
                removed.append(lock_file)
    if removed:
        logger.info("removed %d leftover file(s) of earlier sidecar writes (temporary files, lock files)", len(removed))
    return removed


def _is_empty_file(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == 0


def _remove_unlocked(tmp: Path | None, lock: SelfRemovingLock) -> bool:
    """Remove ``tmp`` while holding ``lock`` (which is removed on release, so ``tmp=None`` removes an old lock
    file itself); False when a writer holds it now or ``tmp`` is gone."""
    try:
        lock.acquire(timeout=0)
    except TimeoutError:
        return False  # being written right now
    except OSError as exc:
        logger.warning("could not lock %s: %s", lock.path, exc)
        return False
    try:
        if tmp is None:
            return True
        if not tmp.is_symlink() and tmp.is_file():
            tmp.unlink()
            return True
    except FileNotFoundError:
        pass  # another process removed it first
    except OSError as exc:
        logger.warning("could not remove stale temporary file %s: %s", tmp, exc)
    finally:
        lock.release()
    return False


__all__ = [
    "LOCK_TIMEOUT_S",
    "SIDECAR_SUFFIX",
    "atomic_write_text",
    "has_keys",
    "read_sidecar",
    "remove_stale_temp_files",
    "sidecar_lock",
    "sidecar_path",
    "update_sidecar",
]
