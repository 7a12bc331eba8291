"""Interpreter exit with a live engine, possibly with a (daemon) thread still inside it.

At exit Python finalizes, then the C library runs llama.cpp's and ggml's static destructors. A thread still
inside the engine at that moment works on freed memory: a daemon thread running the batch at interpreter exit
crashed the process about 2 times in 10. So before finalization (an :mod:`atexit` hook, which runs while other
threads still run) every live engine is closed — :meth:`MusicFlamingoGGUF.close` waits for a call in progress to
return — and from then on every engine call and every batch step raises ``KeyboardInterrupt``, so a batch still
running in a thread stops as on Ctrl-C (counted as interrupted, nothing recorded as failed) instead of calling a
closed engine.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from typing import Any

from ._logging import logger

_live: weakref.WeakSet[Any] = weakref.WeakSet()
_exiting = threading.Event()


def track(obj: Any) -> None:
    """Close ``obj`` (anything with ``close()``) at interpreter exit if it is still alive then."""
    _live.add(obj)


def raise_if_exiting() -> None:
    """Stop the caller as on Ctrl-C once the interpreter has started to exit."""
    if _exiting.is_set():
        raise KeyboardInterrupt("the interpreter is exiting")


def _close_all_at_exit() -> None:
    _exiting.set()
    for obj in list(_live):
        try:
            obj.close()
        except Exception as exc:  # exit goes on whatever happens: never raise from an atexit hook
            logger.debug("closing %r at exit failed: %s", obj, exc)


atexit.register(_close_all_at_exit)

__all__ = ["raise_if_exiting", "track"]
