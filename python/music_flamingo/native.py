"""Facts about the compiled module: the llama.cpp commit it was built from, its ggml backends and the devices they
found. Low in the package (the CLI, the workers and the Ray runner ask it before any engine exists)."""

from __future__ import annotations

from typing import Any

from ._logging import install_native_logging
from ._version import __version__


def system_info() -> dict[str, Any]:
    """The llama.cpp commit this package was built from, the compiled ggml backends and the devices found."""
    from . import _core

    install_native_logging()
    info: dict[str, Any] = dict(_core.build_info())
    info["backends"] = info["backends"].split(",") if info["backends"] else []
    info["devices"] = [dict(d) for d in _core.list_devices()]
    info["version"] = __version__
    return info
