"""Files that are not what their names say (issue 11, defect 4) and what killed writes leave behind (defect 6).
Fast: no model is loaded here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from music_flamingo.errors import AudioDecodeError, PromptConfigError, SidecarError
from music_flamingo.sidecar import companion_stem, has_keys, read_sidecar, remove_stale_temp_files, update_sidecar


def _no_hang(fn, *args, **kwargs):
    """Run ``fn`` and fail (instead of hanging the suite) if it blocks: a FIFO read would wait forever."""
    import threading

    out: list = []

    def run() -> None:
        try:
            out.append(("ok", fn(*args, **kwargs)))
        except BaseException as e:  # noqa: BLE001
            out.append(("raised", e))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(10)
    assert out, f"{fn.__name__} blocked"
    return out[0]


@pytest.mark.parametrize("kind", ["fifo", "dir", "device", "symlink-to-fifo"])
def test_a_sidecar_that_is_not_a_regular_file_is_refused_without_hanging(tmp_path, kind):
    side = tmp_path / "song.INFO"
    if kind == "fifo":
        os.mkfifo(side)
    elif kind == "dir":
        side.mkdir()
    elif kind == "device":
        side.symlink_to("/dev/zero")
    else:
        os.mkfifo(tmp_path / "pipe")
        side.symlink_to(tmp_path / "pipe")
    for fn, args in ((read_sidecar, (side,)), (has_keys, (side, ["k"])), (update_sidecar, (side, {"k": 1}))):
        status, value = _no_hang(fn, *args)
        assert status == "raised" and isinstance(value, SidecarError), (fn.__name__, value)
        assert "not a regular file" in str(value)
    assert os.path.lexists(side) and not side.is_file()  # left as it was


def test_a_fifo_named_like_a_prompt_file_or_a_track_is_refused(tmp_path):
    from music_flamingo.audio import load_audio
    from music_flamingo.prompts import load_catalogue

    os.mkfifo(tmp_path / "p.yaml")
    os.mkfifo(tmp_path / "t.wav")
    status, err = _no_hang(load_catalogue, [tmp_path / "p.yaml"])
    assert status == "raised" and isinstance(err, PromptConfigError) and "FIFO" in str(err)
    status, err = _no_hang(load_audio, tmp_path / "t.wav")
    assert status == "raised" and isinstance(err, AudioDecodeError) and "FIFO" in str(err)


def test_stale_temp_files_are_removed_only_when_ours_and_unlocked(tmp_path):
    d = tmp_path / "data" / "album"
    d.mkdir(parents=True)
    stale = d / ".song.INFO.ab_12cd3.tmp"
    busy = d / ".busy.INFO.zz9_yy8x.tmp"
    not_ours = [
        d / ".song.INFO.short.tmp",
        d / ".song.json.abcdefgh.tmp",
        d / "song.INFO.abcdefgh.tmp",
        d / ".song.INFO.abcdefgh.tmp.bak",
    ]
    hidden = tmp_path / "data" / ".music-flamingo" / ".x.INFO.abcdefgh.tmp"
    hidden.parent.mkdir()
    for p in [stale, busy, *not_ours, hidden]:
        p.write_text("{")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from filelock import FileLock; "
            f"l = FileLock({str(d / 'busy.INFO.lock')!r}); l.acquire(); print(1, flush=True); "
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "1"  # a live writer holds busy.INFO's lock
        removed = remove_stale_temp_files(tmp_path / "data")
    finally:
        holder.kill()
        holder.wait()
    assert removed == [stale]
    assert busy.exists() and hidden.exists() and all(p.exists() for p in not_ours)
    assert remove_stale_temp_files(tmp_path / "data") == [busy]  # its writer is gone


def test_a_killed_write_leaves_a_temp_file_that_the_sweep_removes(tmp_path):
    """A real SIGKILL in the middle of update_sidecar (held in fsync by a huge value), then the sweep."""
    side = tmp_path / "song.INFO"
    side.write_text(json.dumps({"bpm": 120}))
    code = (
        "import sys, os; sys.path.insert(0, {!r})\n"
        "from music_flamingo import sidecar\n"
        "real = os.fsync\n"
        "def slow(fd):\n"
        "    print('writing', flush=True); import time; time.sleep(60)\n"
        "sidecar.os.fsync = slow\n"
        "sidecar.update_sidecar({!r}, {{'music_flamingo_full': 'x' * 1000}})\n"
    ).format(str(Path(__file__).resolve().parents[1] / "python"), str(side))
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    p.kill()
    p.wait()
    temps = list(tmp_path.glob(".song.INFO.*.tmp"))
    assert len(temps) == 1
    assert json.loads(side.read_text()) == {"bpm": 120}  # the old file, whole
    assert remove_stale_temp_files(tmp_path) == temps
    assert list(tmp_path.glob(".*.tmp")) == []


def test_names_near_the_limit_get_a_hashed_lock_and_temp_name(tmp_path):
    long = tmp_path / ("x" * 246 + ".INFO")  # 251 bytes: legal, but name.lock and .name.XXXXXXXX.tmp are not
    assert companion_stem(long) != long.name and companion_stem(long).endswith(".INFO")
    assert companion_stem(tmp_path / "song.INFO") == "song.INFO"
    update_sidecar(long, {"a": 1})
    update_sidecar(long, {"b": 2})
    assert read_sidecar(long) == {"a": 1, "b": 2}
    multibyte = tmp_path / ("é" * 124 + ".INFO")  # 253 bytes in UTF-8
    update_sidecar(multibyte, {"a": 1})
    assert read_sidecar(multibyte) == {"a": 1}


COUNTER = """
import sys
from music_flamingo.fsutil import SelfRemovingLock
lock_path, counter, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for _ in range(n):
    with SelfRemovingLock(lock_path):
        with open(counter) as f:
            value = int(f.read())
        with open(counter, "w") as f:  # read-modify-write: any two holders at once would lose a count
            f.write(str(value + 1))
"""


def test_self_removing_locks_exclude_across_processes_and_leave_no_file(tmp_path):
    """Issue 20 item 7: lock files remove themselves on release, and a writer waiting on the removed file takes
    the lock again on the new one, so removal never lets two holders in."""
    counter = tmp_path / "counter"
    counter.write_text("0")
    lock = tmp_path / "song.INFO.lock"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    procs = [
        subprocess.Popen([sys.executable, "-c", COUNTER, str(lock), str(counter), "150"], env=env) for _ in range(4)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0, 0]
    assert counter.read_text() == "600"
    assert not lock.exists()


def test_empty_lock_files_of_earlier_versions_are_removed_beside_our_sidecars_only(tmp_path):
    d = tmp_path / "data" / "album"
    d.mkdir(parents=True)
    long_side = d / ("x" * 246 + ".INFO")
    for side in (d / "a.INFO", d / "b.INFO", long_side):
        side.write_text("{}")
    old = [d / "a.INFO.lock", d / (companion_stem(long_side) + ".lock")]  # as filelock left them
    kept = [
        d / "b.INFO.lock",  # not empty: not a lock file of ours
        d / "orphan.INFO.lock",  # no sidecar beside it
        d / "notes.lock",
    ]
    for p in old + kept:
        p.write_bytes(b"")
    kept[0].write_text("someone's data")
    (d / "link.INFO").write_text("{}")
    (d / "link.INFO.lock").symlink_to(kept[2])  # a link is never ours
    assert sorted(remove_stale_temp_files(tmp_path / "data")) == sorted(old)
    assert all(p.exists() for p in kept) and (d / "link.INFO.lock").is_symlink()
    assert kept[0].read_text() == "someone's data"
