"""Many machines (music_flamingo.distributed) on a real local Ray cluster (`ray.init(num_cpus=2)`, one for the
module) with the tiny model: 20 good and 4 broken tracks through Ray Data actors — every good track described
exactly once, the broken ones reported, one row per track written as Parquet and read back, the sidecars as one
process writes them; the CLI's `--ray ADDRESS --ray-output DIR` and a rerun that resumes."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq  # the test extra installs ray[data], which brings pyarrow
import pytest
import ray
from conftest import DEFAULT_KEYS, assert_written_like_local, batch_cli, local_reference, scaling_dataset, write_clip


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the module: 2 CPUs, no dashboard, a small object store."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 << 20, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def test_ray_actors_describe_each_good_track_once_and_return_one_row_each(
    cluster, tiny, small_prompts, track, analyzer, tmp_path
):
    from music_flamingo.batch import BatchOptions
    from music_flamingo.distributed import describe_with_ray, row_schema
    from music_flamingo.sidecar import sidecar_path

    root = tmp_path / "data"
    g = scaling_dataset(root, track)
    jsonl = tmp_path / "manifest.jsonl"
    engine = {
        "model_path": tiny.model_gguf,
        "mmproj_path": tiny.mmproj_gguf,
        "prompts_files": [small_prompts],
        "warmup": False,
    }
    s = describe_with_ray(
        root,
        engine,
        options=BatchOptions(jsonl=jsonl, tracks_in_flight=2),
        actors=2,
        batch_size=4,
        output=tmp_path / "rows",
    )
    assert (s.done, s.failed, s.skipped_complete, s.skipped_locked) == (
        len(g["good"]),
        len(g["broken"]),
        len(g["done"]),
        0,
    ), s.line()
    assert s.total == len(g["good"] + g["broken"] + g["done"]) and s.excluded == {"stem": len(g["stems"])}
    assert s.exit_code == 1 and "2 Ray actors" in s.line()

    rows = pq.read_table(tmp_path / "rows")  # every run's rows; this is the first
    assert rows.schema == row_schema(DEFAULT_KEYS)
    by_path = {r["path"]: r for r in rows.to_pylist()}
    assert Counter(r["path"] for r in rows.to_pylist()) == Counter(str(p) for p in g["good"] + g["broken"])
    for p in g["good"]:
        r = by_path[str(p)]
        assert r["status"] == "done" and r["error"] == "" and r["model"].startswith("gguf_")
        assert r["total_ms"] > 0 and r["audio_seconds"] == pytest.approx(2.0, abs=0.01)
        assert all(r[k] for k in DEFAULT_KEYS)
        assert {k: r[k] for k in DEFAULT_KEYS} == {
            k: v for k, v in json.loads(sidecar_path(p).read_text(encoding="utf-8")).items() if k in DEFAULT_KEYS
        }
    errors = {Path(r["path"]).name: r["error"] for r in by_path.values() if r["status"] == "failed"}
    assert errors.keys() == {p.name for p in g["broken"]}
    assert errors["damaged sidecar.flac"] == "SidecarError" and errors["empty.flac"] == "AudioDecodeError"
    assert all(by_path[str(p)][k] is None for p in g["broken"] for k in DEFAULT_KEYS)

    manifest = Counter(json.loads(line)["path"] for line in jsonl.read_text(encoding="utf-8").splitlines())
    assert manifest == Counter({str(p): 1 for p in g["good"]})  # described exactly once, each
    reference = local_reference(analyzer, g["good"][-1], tmp_path / "reference")
    for p in g["good"]:
        assert_written_like_local(sidecar_path(p), reference)
    assert (root / "loose" / "damaged sidecar.INFO").read_text() == '{"bpm": 120, "oops": '
    assert json.loads((root / "loose" / "described before.INFO").read_text())[DEFAULT_KEYS[0]] == "earlier"


def test_cli_ray_writes_rows_and_a_rerun_resumes(cluster, tiny, small_prompts, track, tmp_path):
    root = tmp_path / "data"
    good = [write_clip(root / f"take {i}.flac", track, 2, 20 + 3 * i) for i in range(3)]
    (root / "broken.ogg").write_bytes(b"OggS but not really")
    out = tmp_path / "rows"
    cmd = batch_cli(root, tiny, "--ray", cluster, "--ray-output", str(out), prompts=small_prompts)
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 1, first.stderr
    line = [x for x in first.stderr.splitlines() if " done, " in x][-1]
    assert line.startswith("3 done, 0 skipped (complete), 0 skipped (locked), 1 failed of 4 tracks"), line
    assert "1 Ray actors" in line and f"rows: {out}" in line
    first_rows = pq.read_table(out).to_pylist()
    assert sorted((Path(r["path"]).name, r["status"]) for r in first_rows) == [
        ("broken.ogg", "failed"),
        *[(p.name, "done") for p in good],
    ]

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 1, again.stderr
    line = [x for x in again.stderr.splitlines() if " done, " in x][-1]
    assert line.startswith("0 done, 3 skipped (complete), 0 skipped (locked), 1 failed of 4 tracks"), line
    rows = pq.read_table(out).to_pylist()  # both runs' rows: the rerun added only the retried broken track
    assert len(rows) == len(first_rows) + 1 and len(list(out.iterdir())) == 2


def test_a_track_that_kills_its_actor_is_failed_after_two_deaths_and_its_batch_mates_described(
    cluster, tiny, small_prompts, track, tmp_path
):
    """One batch of 8 tracks; the actor is SIGKILLed whenever it holds one of them (a real crash, every time).
    Ray restarts it and retries the batch; the track is back in hand once (alone), then failed and recorded —
    a row and a failures-file record — and its 7 batch-mates are described, once each."""
    from conftest import KillWhoeverLocks

    from music_flamingo.batch import failures_path
    from music_flamingo.failures import FailureLog

    root = tmp_path / "data"
    tracks = [write_clip(root / f"take {i}.flac", track, 2, 20 + 3 * i) for i in range(8)]
    guilty = tracks[3]
    out, jsonl = tmp_path / "rows", tmp_path / "manifest.jsonl"
    cmd = batch_cli(
        root, tiny, "--ray", cluster, "--ray-output", str(out), "--jsonl", str(jsonl), prompts=small_prompts
    )
    with KillWhoeverLocks(root, [guilty]) as killer:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert [t for _, t in killer.kills] == [guilty, guilty], (killer.kills, run.stderr[-3000:])
    assert run.returncode == 1, run.stderr[-3000:]
    line = [x for x in run.stderr.splitlines() if " done, " in x][-1]
    assert line.startswith("7 done, 0 skipped (complete), 0 skipped (locked), 1 failed of 8 tracks"), line
    rows = {Path(r["path"]).name: r for r in pq.read_table(out).to_pylist()}
    assert len(rows) == 8 and rows[guilty.name]["status"] == "failed" and rows[guilty.name]["error"] == "WorkerDied"
    assert all(r["status"] == "done" for name, r in rows.items() if name != guilty.name)
    records = FailureLog(failures_path(root)).records()
    assert [(r["path"], r["error"]) for r in records] == [(str(guilty), "WorkerDied")]
    manifest = Counter(json.loads(x)["path"] for x in jsonl.read_text(encoding="utf-8").splitlines())
    assert manifest == Counter({str(p): 1 for p in tracks if p != guilty})


def test_cli_ray_interrupted_prints_the_summary(cluster, tiny, track, tmp_path):
    import signal
    import time

    root = tmp_path / "data"
    for i in range(12):
        write_clip(root / f"take {i}.flac", track, 2, 20 + 3 * i)
    # the default prompts: long answers
    proc = subprocess.Popen(batch_cli(root, tiny, "--ray", cluster), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not list(root.glob("*.INFO")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=300)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    line = [x for x in err.splitlines() if " done, " in x][-1]
    assert "(interrupted)" in line and "1 Ray actors" in line, line
    # The 12 tracks are one batch, which never returned: the tracks it had finished are counted all the same (a
    # track in hand may still have been finished after that, before the actor ended with the driver).
    done = int(line.split(" done, ")[0])
    assert 1 <= done <= len(list(root.glob("*.INFO"))) < 12, line
    assert line.endswith("0 failed of 12 tracks", 0, line.index(" in ")), line


def _descendants(pid: int) -> dict[int, bytes]:
    """The live processes below ``pid`` in the process tree, each with its start time (so a reused pid is not
    taken for one of them)."""
    import os

    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    children.setdefault(int(f.read().rsplit(b")", 1)[1].split()[1]), []).append(int(name))
            except OSError:
                pass
    found, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            start = _start_time(child)
            if start is not None:
                found[child] = start
                todo.append(child)
    return found


def _start_time(pid: int) -> bytes | None:
    """Start time of a live process (None when gone, or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == b"Z" else fields[19]


def test_a_local_cluster_dies_with_its_driver_even_on_sigkill(tiny, small_prompts, track, tmp_path):
    """`--ray` with no cluster starts a local one; SIGKILL the driver mid-run: within a short grace period no
    process of that cluster is left (the raylet's agents and workers ran on for a minute or more)."""
    import os
    import signal
    import time

    from conftest import child_env

    root = tmp_path / "data"
    for i in range(30):
        write_clip(root / f"take {i}.flac", track, 2, 20 + 3 * i)
    env = {k: v for k, v in child_env().items() if k != "RAY_ADDRESS"}
    cmd = batch_cli(root, tiny, "--ray", prompts=small_prompts)
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    cluster_processes: dict[int, bytes] = {}
    try:
        deadline = time.monotonic() + 300
        while not list(root.glob("*.INFO")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert proc.poll() is None and list(root.glob("*.INFO")), "the run did not start working"
        cluster_processes = _descendants(proc.pid)
        assert any(b"raylet" in open(f"/proc/{p}/cmdline", "rb").read() for p in cluster_processes)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 15
        alive = cluster_processes
        while alive and time.monotonic() < deadline:
            time.sleep(0.5)
            alive = {p: s for p, s in cluster_processes.items() if _start_time(p) == s}
        names = {p: open(f"/proc/{p}/cmdline", "rb").read()[:60] for p in alive if _start_time(p) is not None}
        assert not alive, f"still running 15 s after the driver was killed: {names}"
    finally:
        for p, s in cluster_processes.items():  # never leave a failed run's cluster behind
            if _start_time(p) == s:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
