"""Which GGUF files make up each Music Flamingo quantization, where they live locally, and where to fetch them.

mradermacher publishes nvidia/music-flamingo-hf as GGUF in two repositories: static quants (and the audio
encoder's mmproj) in one, imatrix quants (``i1-*``) in the other. Missing files are downloaded (resumable, with
progress; huggingface_hub supplies the token) into the model folder on first use, so a fresh machine needs no manual
step; ``offline=True``
or ``HF_HUB_OFFLINE=1`` turns that off and reports exactly which files to put where instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from ._logging import logger
from .errors import ModelFileError

PathLike = str | os.PathLike

# The quantizations published for nvidia/music-flamingo-hf.
MODEL_FILES: dict[str, str] = {
    "Q8_0": "music-flamingo-hf.Q8_0.gguf",
    "Q6_K": "music-flamingo-hf.Q6_K.gguf",
    "IQ3_M": "music-flamingo-hf.i1-IQ3_M.gguf",
}
MMPROJ_FILE = "music-flamingo-hf.mmproj-f16.gguf"
# The quantization used where none is named (MusicFlamingoGGUF, the CLI's --model, the Ray runner).
DEFAULT_MODEL = "Q6_K"

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


# Why not huggingface_hub's hf_hub_download(local_dir=...): measured against the installed huggingface_hub (2.4.0;
# tests/test_models.py, "why not hf_hub_download", runs it against the loopback Hub), it lacks both things a multi-GB
# GGUF download needs here. It does not resume across runs: each call downloads into a fresh, uniquely named
# ``.incomplete`` file (deleted on error, left behind by a killed process, never reused), so a run killed at 90 % of
# 8 GB starts again at byte 0; only a connection dropped within one call is resumed. And it does not verify content:
# after a download it checks the length only, never the sha256 the Hub states as the LFS file's ETag (it hashes only
# a file already in local_dir without metadata, to skip a download), so wrong bytes of the right length are kept.
# It also needs the Hub's HEAD headers (X-Repo-Commit, ETag), where this code needs only GET with Range, and writes
# its own ``.cache/huggingface`` folder into the model folder. (Releases before the per-process ``.incomplete`` name,
# huggingface_hub PR #4228, did resume a shared ``<etag>.incomplete``; none verifies the sha256, so the answer holds
# for the whole ``>=0.30`` range.) huggingface_hub still supplies the token.
def _download(url: str, dest: Path, token: str | None, attempts: int = 5) -> None:
    """Fetch ``url`` into ``dest`` through ``dest.part``, resuming with HTTP Range requests.

    Multi-GB GGUF files must survive a dropped connection or a killed process: the bytes received so far stay in
    ``<file>.part`` and the next attempt (in this call or the next run) asks only for the rest. When the server
    states the file's sha256 (the Hub's ETag of LFS files) the result is checked against it; a mismatch after a
    resume means a stale partial file, so the file is fetched once more from the start.
    """
    import hashlib
    import re
    from http.client import HTTPException
    from urllib.error import HTTPError, URLError
    from urllib.request import Request, urlopen

    from tqdm import tqdm

    part = dest.with_name(dest.name + ".part")
    headers = {"User-Agent": "music-flamingo"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    expected = None
    restarted = False
    for _attempt in range(attempts):
        start = part.stat().st_size if part.exists() else 0
        req = Request(url, headers={**headers, **({"Range": f"bytes={start}-"} if start else {})})
        try:
            with urlopen(req, timeout=60) as r:
                if start and r.status != 206:  # the server ignored the Range: start over
                    start = 0
                etag = (r.headers.get("X-Linked-Etag") or r.headers.get("ETag") or "").strip('W/"')
                expected = etag if re.fullmatch(r"[0-9a-f]{64}", etag) else None
                total = start + int(r.headers.get("Content-Length") or 0)
                with (
                    open(part, "ab" if start else "wb") as f,
                    tqdm(
                        total=total or None, initial=start, unit="B", unit_scale=True, desc=dest.name, disable=None
                    ) as bar,
                ):
                    while block := r.read(1 << 20):
                        f.write(block)
                        bar.update(len(block))
            received = part.stat().st_size
            if total and received < total:  # the connection ended early without an error
                raise ConnectionError(f"connection closed after {received} of {total} bytes")
        except HTTPError as e:
            if e.code in (404, 401, 403):
                raise
            logger.warning("download of %s failed (%s); retrying", dest.name, e)
            continue
        except (URLError, HTTPException, ConnectionError, TimeoutError) as e:
            logger.warning(
                "download of %s interrupted at %d bytes (%s); resuming",
                dest.name,
                part.stat().st_size if part.exists() else 0,
                e,
            )
            continue
        if expected is not None:
            h = hashlib.sha256()
            with open(part, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            if h.hexdigest() != expected:
                part.unlink()
                if restarted:
                    raise ModelFileError(f"{dest.name}: sha256 does not match the server's after a clean download")
                logger.warning(
                    "%s: checksum mismatch after resuming a stale partial file; downloading again", dest.name
                )
                restarted = True
                continue
        os.replace(part, dest)
        return
    raise ModelFileError(
        f"could not download {dest.name} after {attempts} attempts; the partial file {part} is "
        "kept and the next run resumes it"
    )


def resolve_model_files(
    model_name: str,
    model_dir: PathLike | None = None,
    *,
    offline: bool = False,
    endpoint: str | None = None,
) -> tuple[Path, Path]:
    """The text GGUF and the mmproj of quantization ``model_name`` in ``model_dir``, downloading missing ones.

    Files already present are used as they are, without asking the network. Missing files are fetched from the
    Hub (``HF_ENDPOINT``, or ``endpoint``; ``HF_TOKEN`` or the saved huggingface_hub token) with a progress bar;
    an interrupted download is resumed where it stopped, in this run or the next. With ``offline=True`` or
    ``HF_HUB_OFFLINE=1`` nothing is downloaded and the error lists the expected paths and their download URLs.
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
        from huggingface_hub import get_token
    except ImportError as exc:
        raise ModelFileError(
            f"model files not found, and huggingface_hub (needed to download them) is not installed; "
            f"pip install huggingface_hub, or fetch them by hand:\n{listing}"
        ) from exc

    directory.mkdir(parents=True, exist_ok=True)
    for path in missing:
        repo, url = FILE_REPOSITORIES[path.name], file_url(path.name, endpoint)
        logger.info("downloading %s from %s into %s", path.name, repo, directory)
        try:
            _download(url, path, os.environ.get("HF_TOKEN") or get_token())
        except ModelFileError:
            raise
        except Exception as exc:  # HTTP errors (404, 401) and OS errors all mean "not downloaded"
            raise ModelFileError(
                f"could not download {path.name} from {repo} ({url}): {type(exc).__name__}: {exc}"
            ) from exc
        logger.info("downloaded %s (%d bytes)", path, path.stat().st_size)
    return model, mmproj


__all__ = [
    "DEFAULT_MODEL_DIR",
    "FILE_REPOSITORIES",
    "MMPROJ_FILE",
    "MODEL_FILES",
    "REVISION",
    "default_model_dir",
    "file_url",
    "hub_offline",
    "resolve_model_files",
]
