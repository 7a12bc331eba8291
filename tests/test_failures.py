"""The failures file (defect 5 of issue 11): one record per track under a lock, complete with several processes,
cleared when a track succeeds, no stale record after a clean rerun, torn lines and killed rewrites survived."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

import pytest

from music_flamingo.errors import AudioDecodeError
from music_flamingo.failures import FailureLog


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def tracks(tmp_path: Path, n: int) -> list[Path]:
    out = []
    for i in range(n):
        p = tmp_path / "data" / f"t{i:03d}.wav"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()
        out.append(p)
    return out


def test_one_record_per_track_replaced_then_cleared(tmp_path):
    t = tracks(tmp_path, 3)
    log = FailureLog(tmp_path / "state" / "failures.jsonl")
    log.start()
    log.record(t[0], AudioDecodeError("first"))
    log.record(t[1], ValueError("other"))
    log.record(t[0], AudioDecodeError("second"))
    recs = lines(log.path)
    assert [r["path"] for r in recs] == [str(t[1]), str(t[0])]  # no second line for t0; the newer one wins
    assert recs[1]["message"] == "second" and recs[1]["error"] == "AudioDecodeError"
    assert {"time", "host", "pid"} <= set(recs[0])
    assert log.clear(t[1]) == 1 and log.clear(t[2]) == 0
    assert [r["path"] for r in lines(log.path)] == [str(t[0])]
    assert log.clear([t[0], t[2]]) == 1
    assert not log.path.exists(), "a clean run leaves no failures file"


def test_records_of_deleted_files_and_killed_rewrites_are_dropped_at_start(tmp_path):
    t = tracks(tmp_path, 2)
    log = FailureLog(tmp_path / "failures.jsonl")
    log.record(t[0], ValueError("a"))
    log.record(t[1], ValueError("b"))
    t[0].unlink()
    stale_tmp = tmp_path / ".failures.jsonl.ab12cd_9.tmp"  # what a rewrite killed before its rename leaves
    stale_tmp.write_text("half")
    other = tmp_path / ".failures.jsonl.notours.tmp"
    other.write_text("keep")
    FailureLog(log.path).start()
    assert [r["path"] for r in lines(log.path)] == [str(t[1])]
    assert not stale_tmp.exists() and other.exists()


def test_torn_last_line_of_a_killed_append_is_skipped_and_sealed(tmp_path, caplog):
    t = tracks(tmp_path, 2)
    log = FailureLog(tmp_path / "failures.jsonl")
    log.record(t[0], ValueError("a"))
    with open(log.path, "ab") as f:
        f.write(b'{"path": "/x", "err')  # SIGKILL in the middle of a write
    log2 = FailureLog(log.path)
    log2.start()
    log2.record(t[1], ValueError("b"))
    good = [json.loads(x) for x in log.path.read_text().splitlines() if x.startswith('{"path": "/') and x.endswith("}")]
    assert [r["path"] for r in good] == [str(t[0]), str(t[1])]
    assert [r["path"] for r in log2.records()] == [str(t[0]), str(t[1])]
    log2.clear(t[0])  # a rewrite drops the torn line
    assert [r["path"] for r in lines(log.path)] == [str(t[1])]


def test_failed_elsewhere_means_during_this_run(tmp_path):
    t = tracks(tmp_path, 2)
    path = tmp_path / "failures.jsonl"
    FailureLog(path).record(t[0], ValueError("yesterday"))
    mine, other = FailureLog(path), FailureLog(path)
    mine.start()
    other.start()
    assert not mine.failed_elsewhere(t[0]), "a failure of an earlier run is retried"
    other.record(t[1], ValueError("now"))
    assert mine.failed_elsewhere(t[1])
    other.record(t[0], ValueError("again, now"))
    assert mine.failed_elsewhere(t[0]), "failed again during this run: not retried by every process"


def test_undecodable_file_names_are_kept_as_valid_json(tmp_path):
    name = os.fsdecode(b"bad-\xff-name.wav")  # not UTF-8: a surrogate in Python
    p = tmp_path / name
    p.touch()
    log = FailureLog(tmp_path / "failures.jsonl")
    log.record(p, ValueError("x"))
    assert lines(log.path)[0]["path"] == str(p)


def _worker(path: str, files: list[str], clear_every: int, barrier) -> None:
    log = FailureLog(path)
    log.start()
    barrier.wait()
    for i, f in enumerate(files):
        log.record(f, RuntimeError(f"failed {i}"))
        if i % clear_every == 0:
            log.clear(f)


def test_four_processes_lose_no_record(tmp_path):
    """4 processes record 40 failures each at the same time and clear every third of their own: the file holds
    exactly the others, once each, every line valid JSON."""
    t = [str(p) for p in tracks(tmp_path, 160)]
    path = tmp_path / "failures.jsonl"
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_worker, args=(str(path), t[i::4], 3, barrier)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    expected = {f for i in range(4) for k, f in enumerate(t[i::4]) if k % 3}
    got = [r["path"] for r in lines(path)]
    assert len(got) == len(set(got)), "a track listed twice"
    assert set(got) == expected


@pytest.mark.parametrize("bad_dir", ["read-only"])
def test_an_unwritable_failures_file_is_logged_not_raised(tmp_path, caplog, bad_dir):
    if os.geteuid() == 0:
        target = tmp_path / "a-file" / "failures.jsonl"  # root ignores permissions: a file where a folder must be
        (tmp_path / "a-file").write_text("")
    else:
        ro = tmp_path / bad_dir
        ro.mkdir()
        ro.chmod(0o500)
        target = ro / "failures.jsonl"
    log = FailureLog(target)
    log.start()
    log.record(tmp_path / "x.wav", ValueError("x"))
    assert log.clear(tmp_path / "x.wav") == 0
    assert any("failures file" in r.getMessage() for r in caplog.records)
