"""One machine, several engines (music_flamingo.workers): `--workers 2` on CPU over 20 good and 4 broken tracks
with real worker processes and the tiny model — every good track described exactly once, the broken ones reported,
one summary and exit code, the sidecars as one process writes them, a rerun resuming; a worker SIGKILLed mid-run
(reported, its tracks back in the queue once, the run completes); the device plan per backend."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import assert_written_like_local, batch_cli, local_reference, model_args, scaling_dataset, write_clip


def manifest(path: Path) -> Counter:
    """How many times each track was described (one manifest line per description)."""
    if not path.exists():
        return Counter()
    return Counter(json.loads(line)["path"] for line in path.read_text(encoding="utf-8").splitlines())


def summary_line(stderr: str) -> str:
    return [line for line in stderr.splitlines() if " done, " in line][-1]


def test_two_workers_describe_each_good_track_once_and_report_the_broken(
    tiny, small_prompts, track, analyzer, tmp_path
):
    from music_flamingo.batch import failures_path, read_failed_tracks
    from music_flamingo.sidecar import sidecar_path

    root = tmp_path / "data"
    g = scaling_dataset(root, track)
    jsonl = tmp_path / "manifest.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "music_flamingo",
        str(root),
        "--batch",
        *model_args(tiny, small_prompts),
        "--workers",
        "2",
        "--tracks-in-flight",
        "2",
        "--jsonl",
        str(jsonl),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stderr  # some tracks failed
    line = summary_line(run.stderr)
    assert line.startswith(
        f"{len(g['good'])} done, {len(g['done'])} skipped (complete), 0 skipped (locked), "
        f"{len(g['broken'])} failed of {len(g['good'] + g['broken'] + g['done'])} tracks"
    ), line
    assert "2 workers" in line and "not taken: 4 stem" in line and "died" not in line
    assert manifest(jsonl) == Counter({str(p): 1 for p in g["good"]})  # each good track once, nothing else
    reference = local_reference(analyzer, g["good"][-1], tmp_path / "reference")
    for p in g["good"]:
        assert_written_like_local(sidecar_path(p), reference)
    for p in g["stems"]:
        assert not sidecar_path(p).exists()
    assert (root / "loose" / "damaged sidecar.INFO").read_text() == '{"bpm": 120, "oops": '  # left as it was
    # Each worker writes the failures file as one process does; until the failures log of issue 11 is merged, the
    # last worker to finish writes it whole, so it lists only broken tracks, and at least one.
    listed = set(read_failed_tracks(failures_path(root)))
    assert listed and listed <= {str(p) for p in g["broken"]}
    for p in g["broken"]:
        assert f"failed: {p}" in run.stderr  # each reported, from its worker, with the reason

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 1
    assert summary_line(again.stderr).startswith(
        f"0 done, {len(g['good'] + g['done'])} skipped (complete), 0 skipped (locked), {len(g['broken'])} failed"
    )
    assert manifest(jsonl) == Counter({str(p): 1 for p in g["good"]})  # the rerun described nothing again


def test_a_killed_worker_is_reported_and_its_tracks_go_back_to_the_queue_once(tiny, small_prompts, track, tmp_path):
    from conftest import DEFAULT_KEYS

    from music_flamingo.batch import BatchOptions
    from music_flamingo.sidecar import sidecar_path
    from music_flamingo.workers import WorkerSlot, run_workers

    root = tmp_path / "data"
    g = scaling_dataset(root, track)
    jsonl = tmp_path / "manifest.jsonl"
    command = [
        sys.executable,
        "-m",
        "music_flamingo",
        str(root),
        "--batch",
        *model_args(tiny, small_prompts),
        "--tracks-in-flight",
        "1",
        "--jsonl",
        str(jsonl),
        "--threads",
        "1",
    ]
    slots = [WorkerSlot("worker 0"), WorkerSlot("worker 1")]
    killed: list[int] = []

    def kill_worker_1_after_its_first_track(slot: WorkerSlot, pid: int, event: dict) -> None:
        if slot.label == "worker 1" and event.get("status") == "done" and not killed:
            os.kill(pid, signal.SIGKILL)  # it holds its next track(s), being decoded and described
            killed.append(pid)

    s = run_workers(
        root,
        command,
        slots,
        DEFAULT_KEYS,
        BatchOptions(progress=False, tracks_in_flight=1),
        on_event=kill_worker_1_after_its_first_track,
    )
    assert killed
    assert [(d["worker"], d["pid"], d["how"], d["at"]) for d in s.deaths] == [
        ("worker 1", killed[0], "killed by SIGKILL", "work")
    ]
    held = s.deaths[0]["tracks"]
    assert held and s.requeued == len(held)  # back in the queue, once each
    # A track the dead worker finished just before the kill is found complete by the next one: done either way.
    assert s.done + s.skipped_complete == len(g["good"] + g["done"]), s.line()
    assert s.failed == len(g["broken"]) and {f["path"] for f in s.failures} == {str(p) for p in g["broken"]}
    assert s.exit_code == 1 and "1 worker(s) died (worker 1: killed by SIGKILL)" in s.line()
    assert manifest(jsonl) == Counter({str(p): 1 for p in g["good"]})
    for p in g["good"]:
        assert set(DEFAULT_KEYS) <= set(json.loads(sidecar_path(p).read_text(encoding="utf-8")))


def test_device_plan_sets_the_backends_variable_within_what_the_parent_sees():
    from music_flamingo.workers import plan_slots, visibility_variables

    cuda = visibility_variables(["CUDA", "CPU"])
    assert cuda == ["CUDA_VISIBLE_DEVICES"]
    slots = plan_slots(["0", "1"], 1, cuda, environ={})
    assert [dict(s.env) for s in slots] == [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    # a scheduler already gave this job GPUs 2 and 3: device 1 is GPU 3
    slots = plan_slots(["1"], 2, cuda, environ={"CUDA_VISIBLE_DEVICES": "2,3"})
    assert [(s.label, dict(s.env)) for s in slots] == [
        ("device 1#0", {"CUDA_VISIBLE_DEVICES": "3"}),
        ("device 1#1", {"CUDA_VISIBLE_DEVICES": "3"}),
    ]
    with pytest.raises(ValueError, match="leaves devices 0 to 1 visible"):
        plan_slots(["2"], 1, cuda, environ={"CUDA_VISIBLE_DEVICES": "2,3"})
    assert [dict(s.env) for s in plan_slots(["3"], 1, visibility_variables(["ROCm", "CPU"]), environ={})] == [
        {"HIP_VISIBLE_DEVICES": "3"}
    ]
    assert [dict(s.env) for s in plan_slots(["1"], 1, visibility_variables(["Vulkan", "CPU"]), environ={})] == [
        {"GGML_VK_VISIBLE_DEVICES": "1"}
    ]
    with pytest.raises(ValueError, match="no GPU backend"):
        plan_slots(["0"], 1, visibility_variables(["CPU"]))
    # CPU engines share the cores one engine would use: half the logical CPUs, split among the workers
    cpu = plan_slots(None, 2, [])
    assert [s.args for s in cpu] == [("--threads", str(max(1, (os.cpu_count() or 2) // 4)))] * 2
    assert [s.env for s in cpu] == [{}, {}]


def test_scaling_usage_errors_exit_2_before_any_model_loads(tmp_path):
    (tmp_path / "a.flac").write_bytes(b"")
    for args, message in [
        (["--devices", "0"], "no GPU backend"),
        (["--workers", "0"], "at least 1"),
        (["--ray-output", str(tmp_path / "rows")], "only with --ray"),
        (["--ray", "--devices", "0"], "--ray and --devices"),
        (["--workers", "2", "--track-timeout", "0"], "must be a finite number of seconds >= 1"),
        (["--workers", "2", "--track-timeout", "nan"], "must be a finite number of seconds >= 1"),
        (["--ray", "--track-timeout", "60"], "--track-timeout: only with --devices/--workers"),
    ]:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "music_flamingo",
                str(tmp_path),
                "--batch",
                "--model-path",
                str(tmp_path / "none.gguf"),
                "--mmproj",
                str(tmp_path / "none.gguf"),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)


def test_ctrl_c_stops_every_worker_with_one_summary(tiny, track, tmp_path):
    root = tmp_path / "data"
    for i in range(6):
        write_clip(root / f"take {i}.flac", track, 4, 10 + 5 * i)
    # the default prompts: long answers
    proc = subprocess.Popen(
        batch_cli(root, tiny, "--workers", "2", "--tracks-in-flight", "1", "--no-progress", "-v"),
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    for line in proc.stderr:  # wait until both engines are loaded and working
        seen.append(line)
        if sum("] INFO music_flamingo: loaded:" in x for x in seen) == 2:
            break
    proc.send_signal(signal.SIGINT)  # the workers run in sessions of their own: only the parent gets it
    err = "".join(seen) + proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err
    assert summary_line(err).endswith("(interrupted); 2 workers") and "died" not in err
    pids = [int(x.rsplit("(pid ", 1)[1].rstrip(")\n")) for x in err.splitlines() if "started worker" in x]
    assert len(pids) == 2
    for pid in pids:  # both ended (the parent reaped them), none left running
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not list(root.glob(".*.INFO.*"))  # no sidecar left half-written


def test_a_frozen_worker_is_killed_after_its_deadline_and_replaced(tiny, small_prompts, track, tmp_path):
    """SIGSTOP, as a hung GPU driver would freeze it: the parent notices, names it, kills it, gives its tracks to
    the queue and starts a fresh worker in its place; the run completes (--track-timeout 10: a healthy worker on
    a busy machine stays well within it)."""
    import threading
    import time

    root = tmp_path / "data"
    tracks = [write_clip(root / f"take {i:02}.flac", track, 2, 10 + 3 * i) for i in range(12)]
    jsonl = tmp_path / "manifest.jsonl"
    args = ["--workers", "2", "--tracks-in-flight", "1", "--no-progress", "-v", "--jsonl", str(jsonl)]
    cmd = batch_cli(root, tiny, *args, "--track-timeout", "10", prompts=small_prompts)
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(proc.stderr), daemon=True)
    reader.start()
    stopped = None
    try:
        deadline = time.monotonic() + 300
        while stopped is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            started = [x for x in list(seen) if "started worker 1 (pid" in x]
            if started and manifest(jsonl):  # both engines loaded a while ago, worker 1 holds tracks
                stopped = int(started[0].rsplit("(pid ", 1)[1].split(")")[0].split(",")[0])
                os.kill(stopped, signal.SIGSTOP)
        assert stopped is not None, "".join(seen)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        if stopped is not None:
            try:
                os.kill(stopped, signal.SIGKILL)
            except ProcessLookupError:
                pass
    reader.join(30)
    err = "".join(seen)
    assert proc.returncode == 0, err
    assert f"worker 1 (pid {stopped}) made no progress in" in err and "taken for frozen and killed" in err, err
    line = summary_line(err)
    assert line.startswith("12 done, 0 skipped (complete), 0 skipped (locked), 0 failed of 12 tracks"), line
    assert "1 worker(s) died (worker 1: frozen: no progress in 10 s, killed)" in line, line
    assert sum("started worker 1 (pid" in x for x in err.splitlines()) == 2  # a fresh one took its place
    with pytest.raises(ProcessLookupError):
        os.kill(stopped, 0)  # killed and reaped
    assert manifest(jsonl) == Counter({str(p): 1 for p in tracks})  # its tracks described by others, once


def test_a_worker_that_never_loads_is_killed_after_the_load_deadline(tmp_path):
    """A worker stuck before its engine is ready (a driver hung at initialisation): killed at the load deadline,
    reported, not replaced; no worker could start, so the run ends as a setup error."""
    import time

    from music_flamingo.batch import BatchOptions
    from music_flamingo.workers import Deadlines, WorkerSlot, run_workers

    root = tmp_path / "data"
    root.mkdir()
    (root / "a.flac").write_bytes(b"")
    hung = [sys.executable, "-c", "import time; time.sleep(600)"]
    t0 = time.monotonic()
    s = run_workers(
        root, hung, [WorkerSlot("worker 0")], ["k"], BatchOptions(progress=False), deadlines=Deadlines(load_s=2)
    )
    assert time.monotonic() - t0 < 60
    assert [(d["worker"], d["at"], d["how"]) for d in s.deaths] == [
        ("worker 0", "start-up", "frozen: no progress in 2 s, killed")
    ]
    assert s.no_worker and s.exit_code == 2


def test_the_deadline_follows_the_measured_pace_and_the_audio_in_hand(track, tmp_path):
    from music_flamingo.errors import InvalidInputError
    from music_flamingo.workers import Deadlines

    d = Deadlines()
    assert d.for_tracks(3, 90.0, 0, 0.0, 0.0) == d.first_s  # nothing finished yet: the generous default
    # 4 tracks of 30 s in 40 s: 10 s a track, 1/3 s per second of audio
    assert d.for_tracks(3, 15.0, 4, 120.0, 40.0) == d.floor_s  # 3 short ones: 3 x 10 s x 3 < the floor
    assert d.for_tracks(3, 600.0, 4, 120.0, 40.0) == pytest.approx(3 * 600 / 3)  # a long one: its audio counts
    assert d.for_tracks(30, 60.0, 4, 120.0, 40.0) == pytest.approx(3 * 30 * 10)  # many short ones: per track
    assert Deadlines(track_timeout=7).for_tracks(3, 600.0, 4, 120.0, 40.0) == 7
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(InvalidInputError, match="track_timeout"):
            Deadlines(track_timeout=bad)
    # the audio a track counts for, from its header, capped at what the engine analyses
    assert d.seconds_of(str(write_clip(tmp_path / "a.flac", track, 2, 10))) == pytest.approx(2.0, abs=0.01)
    assert Deadlines(max_seconds=1.5).seconds_of(str(tmp_path / "a.flac")) == 1.5
    os.mkfifo(tmp_path / "fifo.flac")  # never opened: it would block the parent
    assert d.seconds_of(str(tmp_path / "fifo.flac")) == d.max_seconds
    assert d.seconds_of(str(tmp_path / "missing.flac")) == d.max_seconds


def test_tracks_failed_for_their_workers_are_listed_for_retry_failed(tiny, small_prompts, track, tmp_path):
    """One place for a worker; two tracks kill whoever describes them (far apart in the queue). The first is back
    in the queue once, then failed (WorkerDied); the third death gives the place up and the tracks left are failed
    (NoWorker). Both kinds are in the failures file, so --retry-failed takes them."""
    from conftest import KillWhoeverLocks

    from music_flamingo.batch import BatchOptions, failures_path
    from music_flamingo.failures import FailureLog
    from music_flamingo.workers import WorkerSlot, run_workers

    root = tmp_path / "data"
    tracks = [write_clip(root / f"take {i:02}.flac", track, 2, 10 + 3 * i) for i in range(24)]
    command = [*batch_cli(root, tiny, prompts=small_prompts), "--tracks-in-flight", "1", "--threads", "1"]
    first, second = tracks[2], tracks[21]
    with KillWhoeverLocks(root, [first, second]) as killer:
        s = run_workers(root, command, [WorkerSlot("worker 0")], ["music_flamingo_full"], BatchOptions(progress=False))
    assert [t for _, t in killer.kills] == [first, first, second], killer.kills
    assert len(s.deaths) == 3 and s.exit_code == 1 and s.done + s.failed == len(tracks)
    errors = {f["path"]: f["error"] for f in s.failures}
    assert errors[str(first)] == "WorkerDied" and errors[str(second)] == "NoWorker", errors
    assert set(errors.values()) == {"WorkerDied", "NoWorker"}
    listed = {r["path"]: r["error"] for r in FailureLog(failures_path(root)).records()}
    assert listed == errors
    r = subprocess.run(
        [*batch_cli(root, tiny, prompts=small_prompts), "--retry-failed", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    retried = {line.split("\t")[1] for line in r.stdout.splitlines() if line.startswith("failed last time\t")}
    assert retried == {os.path.relpath(p, root) for p in errors}
