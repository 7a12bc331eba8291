"""Which GGUF files make up each Music Flamingo quantization, where they live locally, and where to fetch them.

mradermacher publishes nvidia/music-flamingo-hf as GGUF in two repositories: static quants (and the audio
encoder's mmproj) in one, imatrix quants (``i1-*``) in the other. Missing files are downloaded with
``huggingface_hub`` into the model folder on first use, so a fresh machine needs no manual step; ``offline=True``
or ``HF_HUB_OFFLINE=1`` turns that off and reports exactly which files to put where instead.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from ._logging import logger
from .errors import ModelFileError

PathLike = Union[str, os.PathLike]

# The quantizations published for nvidia/music-flamingo-hf.
MODEL_FILES: dict[str, str] = {
    "Q8_0": "music-flamingo-hf.Q8_0.gguf",
    "Q6_K": "music-flamingo-hf.Q6_K.gguf",
    "IQ3_M": "music-flamingo-hf.i1-IQ3_M.gguf",
}
MMPROJ_FILE = "music-flamingo-hf.mmproj-f16.gguf"

# Hugging Face repository of every file above; the one place to edit when files move or new quants appear.
FILE_REPOSITORIES: dict[str, str] = {
    "music-flamingo-hf.Q8_0.gguf": "mradermacher/music-flamingo-hf-GGUF",
    "music-flamingo-hf.Q6_K.gguf": "mradermacher/music-flamingo-hf-GGUF",
    "music-flamingo-hf.mmproj-f16.gguf": "mradermacher/music-flamingo-hf-GGUF",
    "music-flamingo-hf.i1-IQ3_M.gguf": "mradermacher/music-flamingo-hf-i1-GGUF",
}
REVISION = "main"
DEFAULT_MODEL_DIR = "models/music_flamingo"
DEFAULT_ENDPOINT = "https://huggingface.co"

_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's spelling of a true environment flag


def default_model_dir() -> Path:
    """``$MUSIC_FLAMINGO_MODEL_DIR``, else ``models/music_flamingo`` (relative to the working directory)."""
    return Path(os.environ.get("MUSIC_FLAMINGO_MODEL_DIR", DEFAULT_MODEL_DIR)).expanduser()


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set now.

    Read at call time: huggingface_hub reads it once at import, which would miss a job that sets it later.
    """
    return any(os.environ.get(name, "").strip().upper() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _endpoint(endpoint: str | None) -> str | None:
    """The explicit endpoint, else ``$HF_ENDPOINT`` as it is now (huggingface_hub froze it at import)."""
    value = endpoint or os.environ.get("HF_ENDPOINT") or None
    return value.rstrip("/") if value else None


def file_url(filename: str, endpoint: str | None = None) -> str:
    """Where ``filename`` is downloaded from, for messages and for people fetching it by hand."""
    base = _endpoint(endpoint) or DEFAULT_ENDPOINT
    return f"{base}/{FILE_REPOSITORIES[filename]}/resolve/{REVISION}/{filename}"


def resolve_model_files(
    model_name: str,
    model_dir: PathLike | None = None,
    *,
    offline: bool = False,
    endpoint: str | None = None,
) -> tuple[Path, Path]:
    """The text GGUF and the mmproj of quantization ``model_name`` in ``model_dir``, downloading missing ones.

    Files already present are used as they are, without asking the network. Missing files are fetched with
    :func:`huggingface_hub.hf_hub_download` into ``model_dir`` (progress bar, ``HF_TOKEN`` and ``HF_ENDPOINT``
    handled there; ``endpoint`` overrides the latter). With ``offline=True`` or ``HF_HUB_OFFLINE=1`` nothing is
    downloaded and the error lists the expected paths and their download URLs.

    Note: huggingface_hub 2.x downloads each file into a fresh temporary file, so an interrupted process starts
    that file again from zero; only a connection dropped during one call is resumed (with a Range request).
    """
    if model_name not in MODEL_FILES:
        raise ModelFileError(f"unknown model_name {model_name!r}; choose one of {sorted(MODEL_FILES)}")
    directory = Path(model_dir).expanduser() if model_dir is not None else default_model_dir()
    model, mmproj = directory / MODEL_FILES[model_name], directory / MMPROJ_FILE
    missing = [p for p in (model, mmproj) if not p.is_file()]
    if not missing:
        return model, mmproj

    listing = "\n".join(f"  {p}  <-  {file_url(p.name, endpoint)}" for p in missing)
    if offline or hub_offline():
        why = "offline=True" if offline else "HF_HUB_OFFLINE is set"
        raise ModelFileError(f"model files not found and not downloaded ({why}); expected:\n{listing}")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise ModelFileError(
            f"model files not found, and huggingface_hub (needed to download them) is not installed; "
            f"pip install huggingface_hub, or fetch them by hand:\n{listing}") from exc

    for path in missing:
        repo = FILE_REPOSITORIES[path.name]
        logger.info("downloading %s from %s into %s", path.name, repo, directory)
        try:
            hf_hub_download(repo_id=repo, filename=path.name, revision=REVISION, local_dir=directory,
                            endpoint=_endpoint(endpoint))
        except Exception as exc:  # huggingface_hub raises many types (HTTP, offline, OS); all mean "not downloaded"
            raise ModelFileError(
                f"could not download {path.name} from {repo} ({file_url(path.name, endpoint)}): "
                f"{type(exc).__name__}: {exc}") from exc
        if not path.is_file():
            raise ModelFileError(f"downloaded {path.name} from {repo} but {path} is not there")
        logger.info("downloaded %s (%d bytes)", path, path.stat().st_size)
    return model, mmproj


__all__ = ["DEFAULT_MODEL_DIR", "FILE_REPOSITORIES", "MMPROJ_FILE", "MODEL_FILES", "REVISION", "default_model_dir",
           "file_url", "hub_offline", "resolve_model_files"]
