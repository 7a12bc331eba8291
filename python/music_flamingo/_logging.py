"""One package logger, and the bridge that feeds it llama.cpp / ggml / mtmd log lines.

Native messages are filtered in C++ before they cost anything: by default only warnings and errors cross into
Python; ``verbose=True`` on an engine (or :func:`set_native_log_level`) lets everything through. The callback may
run on llama.cpp's worker threads; it takes the GIL and hands the line to :mod:`logging`, which is thread-safe.
At interpreter exit the bridge is switched off first, so late native messages are dropped instead of touching a
half-finalised interpreter.
"""

from __future__ import annotations

import atexit
import logging

logger = logging.getLogger("music_flamingo")
native_logger = logging.getLogger("music_flamingo.native")

# ggml_log_level -> logging level
_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_installed = False


def _forward(level: int, line: bytes) -> None:
    native_logger.log(_LEVELS.get(level, logging.INFO), "%s", line.decode("utf-8", errors="replace").rstrip())


def install_native_logging() -> None:
    """Connect the native log callback to ``music_flamingo.native`` (once per process)."""
    global _installed
    if _installed:
        return
    from . import _core

    _core.set_log_callback(_forward)
    atexit.register(_core.set_log_callback, None)
    _installed = True


def set_native_log_level(verbose: bool) -> None:
    """Forward all native messages (verbose) or only warnings and errors (default)."""
    from . import _core

    install_native_logging()
    _core.set_log_level(1 if verbose else 3)
