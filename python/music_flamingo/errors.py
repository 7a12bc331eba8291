"""Exceptions of the package. The native module raises these too (by name), so callers catch one hierarchy.

Also the process exit codes, the command line's report of the same outcomes: 0 all done, 1 some tracks failed,
2 usage or configuration error (bad arguments, missing model files, bad prompts YAML, no worker could load its
engine), 130 interrupted (Ctrl-C or SIGTERM, as shells report Ctrl-C).
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class MusicFlamingoError(Exception):
    """Base class of every error this package raises on purpose."""


class ModelFileError(MusicFlamingoError, ValueError):
    """A model or mmproj file is missing, unreadable, not a GGUF, or the wrong kind of GGUF."""


class InvalidInputError(MusicFlamingoError, ValueError):
    """Audio or prompts the engine cannot take: empty, wrong format, non-finite, too long for the context."""


class AudioDecodeError(InvalidInputError):
    """An audio file could not be read or decoded."""


class EngineError(MusicFlamingoError, RuntimeError):
    """llama.cpp failed while running (out of memory, decode failure) or the engine was closed."""


class SidecarError(MusicFlamingoError):
    """A ``.INFO`` sidecar exists but is not a JSON object, or cannot be read, locked or written.

    Raised instead of repairing or overwriting: sidecars hold other tools' results, so the file is left as it was.
    """


class PromptConfigError(MusicFlamingoError, ValueError):
    """A prompt catalogue (packaged or user YAML) is invalid, or a prompt name asked for is not in it.

    The message names the file, the prompt entry and the field, so a user can fix their YAML without reading code.
    """


class WorkerDied(MusicFlamingoError, RuntimeError):
    """A track was in hand each time its worker process or Ray actor died (crashed, killed, or taken for frozen
    and killed): it is not tried a third time. Listed in the failures file, so ``--retry-failed`` takes it."""


class NoWorker(MusicFlamingoError, RuntimeError):
    """A track was left undone because every place for a worker had lost its workers (``--workers``/``--devices``)."""


class OutputFileError(MusicFlamingoError, OSError):
    """An output file a user named (``--jsonl``) cannot be opened or written whole (a FIFO, a folder, a full disk)."""
