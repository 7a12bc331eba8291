"""Run risky test code in a child process, so that an abort or a segfault fails that one case instead of the whole
test session — and say which case did it.

:class:`CrashCatcher` keeps one child Python process (spawned, so it shares nothing with pytest but ``sys.path`` and
the environment) and sends it calls of module-level functions by name. The child keeps what it loads (the tiny
engine) between calls, so a campaign of thousands of cases pays for the model once. When the child dies (SIGABRT
from a ``GGML_ASSERT``, SIGSEGV, the kernel's OOM killer) or overruns its time, the call returns a ``crashed`` or
``timeout`` :class:`Outcome` with the exit status and the tail of the child's stderr, and the next call starts a
fresh child. The child's address space is capped (``RLIMIT_AS``) so a runaway allocation fails inside it instead
of pushing the shared test machine into swap.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import signal
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MEMORY_LIMIT = 6 << 30


@dataclass
class Outcome:
    """What one call did: ``returned`` (``value``), ``raised`` (``error``: the exception's type name, ``message``),
    ``crashed`` (``exitcode``: minus the signal number for a signal) or ``timeout``."""

    status: str
    value: Any = None
    error: str | None = None
    message: str = ""
    error_types: list[str] = field(default_factory=list)  # the exception's classes, most derived first
    exitcode: int | None = None
    stderr_tail: str = ""

    def describe(self) -> str:
        if self.status == "returned":
            return f"returned {self.value!r}"[:500]
        if self.status == "raised":
            return f"raised {self.error}: {self.message}"[:500]
        sig = ""
        if self.exitcode is not None and self.exitcode < 0:
            try:
                sig = f" ({signal.Signals(-self.exitcode).name})"
            except ValueError:
                pass
        # ggml's crash handler appends a gdb backtrace: show the lines that say what went wrong first
        key = [
            ln
            for ln in self.stderr_tail.splitlines()
            if any(w in ln for w in ("GGML_ASSERT", "error", "Error", "terminate", "Fatal", "Abort", "what()"))
        ]
        return (
            f"{self.status}: exit {self.exitcode}{sig}; "
            + " | ".join(key[:6])
            + f"; stderr: ...{self.stderr_tail[-800:]}"
        )

    def raised(self, *names: str) -> bool:
        """Whether it raised an exception that is (a subclass of) one of the named classes."""
        return self.status == "raised" and any(n in self.error_types for n in names)


def _child(conn, stderr_path: str, memory_limit: int) -> None:
    """The child's loop: receive (module, function, args, kwargs), send back an outcome dict."""
    fd = os.open(stderr_path, os.O_WRONLY | os.O_APPEND)
    os.dup2(fd, 2)  # native code (llama.cpp, GGML_ASSERT) writes to fd 2: keep it for the report
    os.close(fd)
    if memory_limit:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        module, name, args, kwargs = msg
        try:
            fn = getattr(importlib.import_module(module), name)
            out = {"status": "returned", "value": fn(*args, **kwargs)}
        except BaseException as e:  # noqa: BLE001 - everything is reported to the parent, KeyboardInterrupt too
            out = {
                "status": "raised",
                "error": type(e).__name__,
                "message": str(e)[:4000],
                "error_types": [c.__name__ for c in type(e).__mro__],
                "value": traceback.format_exc()[-4000:],
            }
        try:
            conn.send(out)
        except Exception as e:  # an unpicklable return value
            conn.send({"status": "raised", "error": "PicklingError", "message": str(e)})


class CrashCatcher:
    """A child process that runs one call at a time and survives its own death (see the module docstring)."""

    def __init__(self, timeout_s: float = 300.0, memory_limit: int = DEFAULT_MEMORY_LIMIT) -> None:
        self.timeout_s = timeout_s
        self.memory_limit = memory_limit
        self._ctx = mp.get_context("spawn")
        self._proc = None
        self._conn = None
        self._stderr = tempfile.NamedTemporaryFile(prefix="crash-harness-", suffix=".stderr", delete=False)
        self.starts = 0

    def _start(self) -> None:
        self._stderr.truncate(0)
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_child, args=(child, self._stderr.name, self.memory_limit), daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent
        self.starts += 1

    def _stderr_tail(self, since: int = 0) -> str:
        """What the child wrote to stderr since offset ``since`` (the start of the call), at most 20 kB."""
        with open(self._stderr.name, "rb") as f:
            f.seek(max(since, os.path.getsize(self._stderr.name) - 20000))
            return f.read().decode("utf-8", "replace")

    def call(self, fn: Callable[..., Any], *args: Any, timeout_s: float | None = None, **kwargs: Any) -> Outcome:
        """Run ``fn(*args, **kwargs)`` in the child; ``fn`` must be a module-level function (found by name)."""
        if self._proc is None or not self._proc.is_alive():
            self._start()
        size_before = os.path.getsize(self._stderr.name)
        self._conn.send((fn.__module__, fn.__name__, args, kwargs))
        if self._conn.poll(timeout_s or self.timeout_s):
            try:
                out = self._conn.recv()
                return Outcome(**{k: v for k, v in out.items()})
            except (EOFError, ConnectionResetError):
                pass  # died while answering
        else:
            self._proc.kill()
            self._proc.join(30)
            self._reset()
            return Outcome("timeout", exitcode=None, stderr_tail=self._stderr_tail(size_before))
        self._proc.join(30)
        code = self._proc.exitcode
        self._reset()
        return Outcome("crashed", exitcode=code, stderr_tail=self._stderr_tail(size_before))

    def _reset(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._proc, self._conn = None, None

    def close(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            try:
                self._conn.send(None)
                self._proc.join(30)
            except (BrokenPipeError, OSError):
                pass
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(30)
        self._reset()
        self._stderr.close()
        os.unlink(self._stderr.name)


# --- what the child keeps between calls ---------------------------------------------------------------------------
_ENGINES: dict[tuple, Any] = {}


def engine(model: str, mmproj: str, **kwargs: Any):
    """The child's resident engine for these files and options (loaded on first use)."""
    from music_flamingo import MusicFlamingoGGUF

    key = (model, mmproj, tuple(sorted(kwargs.items())))
    if key not in _ENGINES:
        _ENGINES[key] = MusicFlamingoGGUF(model_path=model, mmproj_path=mmproj, n_threads=1, warmup=False, **kwargs)
    return _ENGINES[key]


def native_prompts(prompts: list[dict]) -> list:
    """Prompt dicts as the raw engine takes them (``_core.PromptRequest``), past the Python checks: ``text`` and
    ``max_tokens`` on the request, every other key a sampling field (an unknown one is a TypeError)."""
    from music_flamingo import _core

    out = []
    for p in prompts:
        p = dict(p)
        text = p.pop("text")
        limit = {"max_tokens": p.pop("max_tokens")} if "max_tokens" in p else {}
        out.append(_core.PromptRequest(text, **limit, sampling=_core.SamplingParams(**p)))
    return out
