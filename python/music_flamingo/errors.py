"""Exceptions of the package. The native module raises these too (by name), so callers catch one hierarchy."""
from __future__ import annotations


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
