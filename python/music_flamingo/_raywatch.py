"""The watchdog of a local Ray cluster started by ``--ray``: when the driver that started it dies — SIGKILL
included — every process of that cluster dies too.

``ray.init()`` starts a local cluster whose head processes (GCS, raylet, dashboard, monitors) die with the driver
(Ray sets ``PR_SET_PDEATHSIG`` on them), and which the driver shuts down at a normal exit. But the raylet's own
children — the dashboard and runtime-env agents, idle workers, actors — are not bound to the driver: after a
SIGKILL of the driver they ran on for a minute or more (the agents until a health check noticed), holding memory,
GPUs and the dataset's track locks.

This script is started by :mod:`music_flamingo.distributed` as ``python _raywatch.py PID:START ...`` — the
cluster's head processes with their start times — (by path, stdlib only, so it runs whatever the driver's import
path was), in a session of its own, with its stdin a pipe whose other end only the driver holds. While it waits
for that pipe to close — which happens however the driver ends — it notes, once a second, every process below the
head processes in the process tree (they are reparented when their parent dies, so the tree must be seen while it
stands). Then it SIGKILLs them all, each checked by its start time so that a reused pid is left alone. (The
environment cannot tell a cluster's processes: Ray's workers rewrite their title over it.) Linux only (it reads
``/proc``); elsewhere it is not started.
"""

from __future__ import annotations

import os
import select
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


def processes() -> dict[int, tuple[int, int]]:
    """Every live process: pid -> (parent pid, start time)."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != b"Z":
            found[int(name)] = (int(fields[1]), int(fields[19]))
    return found


def below(roots: dict[int, int]) -> dict[int, int]:
    """``roots`` (pid -> start time) that are still alive and every process below them: pid -> start time."""
    table = processes()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found = {pid: start for pid, start in roots.items() if table.get(pid, (0, None))[1] == start}
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found and child != os.getpid():
                found[child] = table[child][1]
                todo.append(child)
    return found


def kill(known: dict[int, int]) -> int:
    """SIGKILL the processes of ``known`` (pid -> start time) that are still those processes; returns how many."""
    n = 0
    for pid, start in known.items():
        if start_time(pid) == start:
            try:
                os.kill(pid, signal.SIGKILL)
                n += 1
            except (ProcessLookupError, PermissionError):
                pass
    return n


def main(argv: list[str]) -> int:
    heads = {int(p): int(s) for p, s in (a.split(":") for a in argv)}
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver's Ctrl-C is the driver's to handle
    known = below(heads)
    while True:
        ready, _, _ = select.select([sys.stdin.buffer], [], [], 1.0)
        if ready and not os.read(sys.stdin.fileno(), 65536):
            break  # end of file: the driver, the only writer, is gone
        known.update(below(heads))  # the raylet's agents, workers and actors, as they come
    known.update(below(known))  # and what was started since the last look, while its parent still lives
    kill(known)
    time.sleep(1.0)
    kill(below(known))  # a process that was being started then
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
