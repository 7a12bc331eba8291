"""The watchdog of a local Ray cluster started by ``--ray``: when the driver that started it dies — SIGKILL
included — every process of that cluster dies too.

``ray.init()`` starts a local cluster whose head processes (GCS, raylet, dashboard, monitors) die with the driver
(Ray sets ``PR_SET_PDEATHSIG`` on them), and which the driver shuts down at a normal exit. But the raylet's own
children — the dashboard and runtime-env agents, idle workers, actors — are not bound to the driver: after a
SIGKILL of the driver they ran on for a minute or more (the agents until a health check noticed), holding memory,
GPUs and the dataset's track locks.

This script is started by :mod:`music_flamingo.distributed` as ``python _raywatch.py RAYLET_PID PID:START ...``
(by path, stdlib only, so it runs whatever the driver's import path was), in a session of its own, with its stdin
a pipe whose other end only the driver holds. It waits for that pipe to close — which happens however the driver
ends — then SIGKILLs the cluster's processes: the head processes it was given (checked by their start time, so a
reused pid is left alone) and every process whose environment names that raylet (``RAY_RAYLET_PID``: Ray sets it
in each process the raylet starts). Linux only (it reads ``/proc``); elsewhere it is not started.
"""

from __future__ import annotations

import os
import signal
import sys
import time


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22), None if it is gone or a
    zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == b"Z" else int(fields[19])


def children_of(raylet_pid: int) -> list[int]:
    """The live processes whose environment says this raylet started them."""
    marker = b"RAY_RAYLET_PID=%d" % raylet_pid
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if marker in f.read().split(b"\0"):
                    found.append(int(name))
        except OSError:  # gone, or not ours to read
            continue
    return found


def sweep(raylet_pid: int, heads: dict[int, int]) -> int:
    """SIGKILL the cluster's processes still alive; returns how many were signalled."""
    victims = [pid for pid, start in heads.items() if start_time(pid) == start] + children_of(raylet_pid)
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return len(victims)


def main(argv: list[str]) -> int:
    raylet_pid = int(argv[0])
    heads = {int(p): int(s) for p, s in (a.split(":") for a in argv[1:])}
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver's Ctrl-C is the driver's to handle
    while sys.stdin.buffer.read(65536):  # returns b"" once the driver, the only writer, is gone
        pass
    # Twice: a process the raylet was starting at that moment appears a moment later.
    for _ in range(2):
        sweep(raylet_pid, heads)
        time.sleep(1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
