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

# The quantizations mradermacher publishes for nvidia/music-flamingo-hf (its usual sets): static quants, and imatrix
# quants, named with the ``i1-`` prefix. A bare name (``Q6_K``) means either file of that quantization: the one in
# the model folder (the static one first), else the static one is downloaded (the imatrix one where there is no
# static one, as for ``IQ3_M``); ``i1-Q6_K`` means the imatrix file only.
STATIC_REPOSITORY = "mradermacher/music-flamingo-hf-GGUF"
IMATRIX_REPOSITORY = "mradermacher/music-flamingo-hf-i1-GGUF"
STATIC_QUANTS = (
    "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "IQ4_XS", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0", "f16",
)  # fmt: skip
IMATRIX_QUANTS = (
    "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "Q2_K_S", "Q2_K", "IQ3_XXS", "IQ3_XS", "Q3_K_S",
    "IQ3_S", "IQ3_M", "Q3_K_M", "Q3_K_L", "IQ4_XS", "IQ4_NL", "Q4_0", "Q4_K_S", "Q4_K_M", "Q4_1", "Q5_K_S",
    "Q5_K_M", "Q6_K",
)  # fmt: skip
DEFAULT_MODEL = "Q6_K"  # the one place the default quantization is named (CLI, MusicFlamingoGGUF, Ray)
IMATRIX_PREFIX = "i1-"
_FILE = "music-flamingo-hf.{}.gguf"


def _model_files() -> dict[str, str]:
    """Every accepted name -> the file it downloads: ``Q6_K`` (static, else imatrix), ``i1-Q6_K`` (imatrix)."""
    files = {f"{IMATRIX_PREFIX}{q}": _FILE.format(f"{IMATRIX_PREFIX}{q}") for q in IMATRIX_QUANTS}
    files.update({q: _FILE.format(f"{IMATRIX_PREFIX}{q}") for q in IMATRIX_QUANTS})
    files.update({q: _FILE.format(q) for q in STATIC_QUANTS})
    return files


MODEL_FILES: dict[str, str] = _model_files()
MMPROJ_FILE = "music-flamingo-hf.mmproj-f16.gguf"
# The quantization used where none is named (MusicFlamingoGGUF, the CLI's --model, the Ray runner).
DEFAULT_MODEL = "Q6_K"

# Hugging Face repository of every file above; the one place to edit when files move.
FILE_REPOSITORIES: dict[str, str] = {
    **{f: IMATRIX_REPOSITORY if f".{IMATRIX_PREFIX}" in f else STATIC_REPOSITORY for f in MODEL_FILES.values()},
    MMPROJ_FILE: STATIC_REPOSITORY,
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


def hub_file_url(repo: str, filename: str, endpoint: str | None = None) -> str:
    """Where ``filename`` of any Hub repository ``repo`` is downloaded from."""
    return f"{_endpoint(endpoint) or DEFAULT_ENDPOINT}/{repo}/resolve/{REVISION}/{filename}"


def fetch_hub_file(repo: str, filename: str, dest: Path, endpoint: str | None = None) -> None:
    """``filename`` of Hub repository ``repo`` into ``dest`` by :func:`_download` (resumed, sha256-checked; the
    token as for the model files); urllib's HTTPError for a 404, 401 or 403 (checkpoints to convert: convert.py)."""
    from huggingface_hub import get_token

    _download(hub_file_url(repo, filename, endpoint), dest, os.environ.get("HF_TOKEN") or get_token())


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


def canonical_model_name(model_name: str) -> str:
    """A published quantization's name as :data:`MODEL_FILES` spells it (``q6_k`` -> ``Q6_K``, ``I1-q4_k_m`` ->
    ``i1-Q4_K_M``); ModelFileError naming them all for any other."""
    if model_name in MODEL_FILES:
        return model_name
    by_folded = {n.casefold(): n for n in MODEL_FILES}
    name = by_folded.get(str(model_name).strip().casefold())
    if name is None:
        static = ", ".join(STATIC_QUANTS)
        imatrix = ", ".join(f"{IMATRIX_PREFIX}{q}" for q in IMATRIX_QUANTS)
        raise ModelFileError(f"unknown model_name {model_name!r}; published: {static}; imatrix: {imatrix}")
    return name


def model_candidates(model_name: str) -> list[str]:
    """The files that are quantization ``model_name``, in the order a model folder is searched: for a bare name
    the static file, then the imatrix (``i1-``) one; for an ``i1-`` name only that."""
    name = canonical_model_name(model_name)
    if name.startswith(IMATRIX_PREFIX):
        return [MODEL_FILES[name]]
    out = [_FILE.format(name)] if name in STATIC_QUANTS else []
    if name in IMATRIX_QUANTS:
        out.append(_FILE.format(IMATRIX_PREFIX + name))
    return out


def _say_which(name: str, model: Path) -> None:
    """Which file a name was resolved to: worth a warning when it is not the file the name downloads (``Q6_K``
    served by ``i1-Q6_K`` found in the folder), else an info line."""
    if model.name != MODEL_FILES[name]:
        logger.warning(
            "model %s: using %s found in %s (%s is not there)", name, model.name, model.parent, MODEL_FILES[name]
        )
    else:
        logger.info("model %s: using %s in %s", name, model.name, model.parent)


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

    ``model_name``: any published quantization (:data:`MODEL_FILES`, case ignored). A bare name (``Q6_K``) takes
    whichever of its files the folder holds — the static ``music-flamingo-hf.Q6_K.gguf`` first, else the imatrix
    ``music-flamingo-hf.i1-Q6_K.gguf`` (logged) — and downloads the static one when neither is there; ``i1-Q6_K``
    takes (or downloads) the imatrix one only.
    """
    name = canonical_model_name(model_name)
    directory = Path(model_dir).expanduser() if model_dir is not None else default_model_dir()
    model = next((directory / f for f in model_candidates(name) if (directory / f).is_file()), None)
    if model is not None:
        _say_which(name, model)
    else:
        model = directory / MODEL_FILES[name]
    mmproj = directory / MMPROJ_FILE
    missing = [p for p in (model, mmproj) if not p.is_file()]
    if not missing:
        return model, mmproj

    listing = "\n".join(f"  {p}  <-  {file_url(p.name, endpoint)}" for p in missing)
    others = [f for f in model_candidates(name) if f != model.name]
    if model in missing and others:
        listing += f"\n  ({name} is also any of: {', '.join(others)}, in {directory})"
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
    "DEFAULT_MODEL",
    "DEFAULT_MODEL_DIR",
    "FILE_REPOSITORIES",
    "MMPROJ_FILE",
    "MODEL_FILES",
    "REVISION",
    "default_model_dir",
    "file_url",
    "canonical_model_name",
    "hub_offline",
    "model_candidates",
    "resolve_model_files",
]
