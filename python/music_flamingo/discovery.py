"""Which audio files of a dataset are tracks: the layout the users' pipeline writes, as one table-driven rule.

The users caption datasets laid out by a larger MIR pipeline (public: Taikakim/mir-feature-extraction; the facts are
in ``shared/notes/dataset-layout.md``). Every audio file found is given a *kind*; the kind says whether it is a
track. Per folder, first row that applies:

=================================================  ===================================  ===========  ==============
folder                                             audio file                           kind         a track?
=================================================  ===================================  ===========  ==============
below the root, hidden (``.name``)                 (not walked, not reported)           —            no
below the root, on the pipeline's skip list        (not walked; the folder is reported) skip_folder  no
below the root, named ``augmentations``            (not walked; the folder is reported) augmentation no
organized folder: holds ``full_mix.<ext>``         ``full_mix.<ext>``                   full_mix     yes
                                                   Demucs / DrumSep stem (``drums``…)    stem         with ``stems``
                                                   any other audio                      extra        no
crops folder: named ``crops``/``_crops``, or       ``<crop>_<Demucs/DrumSep stem>``      crop_stem    with ``stems``
holding a ``<name>_<integer>`` audio file          ``<name>_<integer>``                 crop         yes
anywhere else (and other files of a crops folder)  any audio                            loose        yes
=================================================  ===================================  ===========  ==============

* A crops folder is ``<track folder>/crops/`` or the cropper's ``<output dir>/<Track Name>/``; the latter has no
  fixed name, so a folder without a full mix that holds a ``<name>_<integer>`` file is one (the pipeline's own
  ``find_crop_folders`` rule). A crop's ``<crop>.json`` (its position) is not audio and is never read or written;
  its sidecar is ``<crop>.INFO`` (:func:`music_flamingo.sidecar.sidecar_path`).
* ``crops`` and ``_crops`` are on the pipeline's skip list only because its crops pass walks them separately; here
  they are walked as crops folders. The root itself is never skipped: naming it is choosing it.
* ``<track>/augmentations/<variant>/`` holds the pipeline's augmented copies of a track (pitch, tempo, EQ ...):
  they inherit their parent's caption, so they are never described (the dry run's "excluded: augmentation
  variant").
* Names are compared exactly as the pipeline writes them (``full_mix``, folder names); stem names ignore case.
* Symlinked folders are not followed (no cycles); symlinked files are taken.

:class:`Selection` then narrows the tracks: ``only`` (``full_mix`` — the organized folders' mixes and, with
``stems``, their stems; ``crops`` — crops and crop stems; ``loose``), ``stems``, ``include``/``exclude`` globs and an
explicit list of ``paths`` (``--from-list``, ``--retry-failed``), which are classified by the same rule, and
``sample``: a reproducible share of the tracks (:func:`sample_draw`: a hash of the path below the root and
``sample_seed``, so the same seed takes the same tracks again, and a larger share keeps every track a smaller one
took).
:func:`discover_tracks` returns every file it looked at with the reason it is in or out; it needs no model, so a
scheduler can call it on its own.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

from ._logging import logger
from .fsutil import MAX_LIST_BYTES, inside, read_bounded_stream, read_regular_file
from .sidecar import ORGANIZED_MIX_STEM

# Preference order when a folder holds several full mixes (the pipeline's extensions first): one sidecar, one track.
AUDIO_EXTENSIONS: tuple[str, ...] = (
    ".flac",
    ".wav",
    ".mp3",
    ".ogg",
    ".m4a",
    ".aiff",
    ".aif",
    ".opus",
    ".aac",
    ".wma",
    ".alac",
    ".mp4",
    ".webm",
    ".mka",
)
DEMUCS_STEMS = ("drums", "bass", "other", "vocals")
DRUMSEP_STEMS = ("kick", "snare", "cymbals", "toms", "percussion")
STEM_NAMES = DEMUCS_STEMS + DRUMSEP_STEMS
CROPS_FOLDERS = frozenset({"crops", "_crops"})
AUGMENTATION_FOLDERS = frozenset({"augmentations"})  # <track>/augmentations/<variant>/: copies, never described
# The pipeline never descends into these when it looks for tracks (src/core/file_utils.py SKIP_DIRECTORIES).
SKIP_FOLDERS = (
    frozenset(
        {
            ".venv",
            "venv",
            ".env",
            "env",
            "node_modules",
            "__pycache__",
            ".git",
            ".tox",
            ".pytest_cache",
            ".mypy_cache",
            "site-packages",
            "dist-packages",
            ".cache",
            "build",
            "dist",
            "eggs",
            "repos",
            "test data",
            "bs roformer output",
            "bs roformer optimized output",
        }
    )
    | CROPS_FOLDERS
)

_CROP = re.compile(r".+_[0-9]+")
_CROP_STEM = re.compile(r".+_[0-9]+_(?:" + "|".join(STEM_NAMES) + r")", re.IGNORECASE)

# Kinds: what the layout says a path is.
FULL_MIX, STEM, EXTRA, CROP, CROP_STEM, LOOSE = "full_mix", "stem", "extra", "crop", "crop_stem", "loose"
SKIP_FOLDER, MISSING, NOT_AUDIO, OUTSIDE = "skip_folder", "missing", "not_audio", "outside_root"
AUGMENTATION = "augmentation"
BAD_PATH = "bad_path"  # a listed line that is no usable path (NUL bytes, a name over 255 bytes, too long)
TRACK_KINDS = frozenset({FULL_MIX, CROP, LOOSE})
# Why a path is not taken, in a word or two (the dry run's rows): by kind, else NOT_SELECTED.
EXCLUDED_AS = {
    STEM: "stem",
    CROP_STEM: "crop stem",
    EXTRA: "other audio in an organized folder",
    SKIP_FOLDER: "skip folder",
    AUGMENTATION: "augmentation variant",
    MISSING: "listed, not found",
    NOT_AUDIO: "listed, not audio",
    OUTSIDE: "listed, outside the root",
    BAD_PATH: "listed, not a usable path",
}
NOT_SELECTED = "not selected (--only/--include/--exclude)"
NOT_SAMPLED = "not sampled (--sample)"
STEM_KINDS = frozenset({STEM, CROP_STEM})
# --only groups: an organized folder's files belong to full_mix, a crops folder's to crops.
GROUPS = ("full_mix", "crops", "loose")
_GROUP_OF = {
    FULL_MIX: "full_mix",
    STEM: "full_mix",
    EXTRA: "full_mix",
    CROP: "crops",
    CROP_STEM: "crops",
    LOOSE: "loose",
}


def is_audio(p: str | os.PathLike) -> bool:
    """An audio file by its name: a known extension, not hidden (macOS ``._name`` copies are not audio)."""
    name = os.path.basename(p)
    return os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS and not name.startswith(".")


def _ext_rank(name: str) -> int:
    return AUDIO_EXTENSIONS.index(os.path.splitext(name)[1].lower())


def classify_folder(folder_name: str, audio_names: Iterable[str]) -> list[tuple[str, str, str]]:
    """``(file name, kind, reason)`` for each audio file of one folder, by the table in the module docstring.

    Pure: it looks only at the names, so the rule can be tested as a table.
    """
    names = sorted(audio_names)
    stems = {n: os.path.splitext(n)[0] for n in names}
    mixes = [n for n in names if stems[n] == ORGANIZED_MIX_STEM]
    out: list[tuple[str, str, str]] = []
    if mixes:
        mix = min(mixes, key=_ext_rank)
        for n in names:
            s = stems[n]
            if n == mix:
                out.append((n, FULL_MIX, "the full mix of an organized folder"))
            elif s == ORGANIZED_MIX_STEM:
                out.append((n, EXTRA, f"a second full mix; {mix} is this folder's track"))
            elif s.lower() in DEMUCS_STEMS:
                out.append((n, STEM, "a Demucs stem of an organized folder"))
            elif s.lower() in DRUMSEP_STEMS:
                out.append((n, STEM, "a DrumSep stem of an organized folder"))
            else:
                out.append((n, EXTRA, "other audio in an organized folder (its track is the full mix)"))
        return out
    crops_folder = folder_name in CROPS_FOLDERS or any(
        _CROP.fullmatch(s) and not _CROP_STEM.fullmatch(s) for s in stems.values()
    )
    for n in names:
        s = stems[n]
        if crops_folder and _CROP_STEM.fullmatch(s):
            out.append((n, CROP_STEM, "a crop's stem (<crop>_<stem>) in a crops folder"))
        elif crops_folder and _CROP.fullmatch(s):
            out.append((n, CROP, "a crop (<name>_<n>) in a crops folder"))
        else:
            out.append((n, LOOSE, "a loose audio file"))
    return out


@dataclass(frozen=True)
class Selection:
    """Which tracks a run takes, besides the layout rule (the CLI's selection options).

    ``only``: any of :data:`GROUPS`. ``stems``: stems and crop stems are tracks too. ``include``/``exclude``: globs
    on the path relative to the root (see :func:`glob_matches`); a track must match one ``include`` (when any are
    given) and no ``exclude``. ``paths``: take only these files instead of walking the root (relative ones are
    relative to the root, or failing that to the current folder); they are classified by the same rule.
    """

    only: frozenset[str] = frozenset(GROUPS)
    stems: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    paths: tuple[str | os.PathLike, ...] | None = None
    sample: float | None = None  # take this share of the tracks (0, 1]; None: all
    sample_seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "only", frozenset(self.only))
        unknown = sorted(self.only - set(GROUPS))
        if unknown or not self.only:
            raise ValueError(f"--only takes {', '.join(GROUPS)} (any combination), got {', '.join(unknown) or 'none'}")
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if self.paths is not None:
            object.__setattr__(self, "paths", tuple(self.paths))
        if self.sample is not None and (isinstance(self.sample, bool) or not 0 < self.sample <= 1):
            raise ValueError(f"--sample takes a share in (0, 1], got {self.sample!r}")


@dataclass(frozen=True)
class Track:
    """One path discovery looked at: what the layout says it is (``kind``), whether this run takes it
    (``selected``) and why, in words (``reason``). ``path`` is the root joined with the relative path (a folder for
    ``skip_folder``)."""

    path: Path
    kind: str
    selected: bool
    reason: str
    rel: str = field(default="", compare=False)  # path relative to the root, "/"-separated (for globs and display)
    excluded_as: str | None = None  # None when selected; else EXCLUDED_AS[kind] or NOT_SELECTED

    @property
    def group(self) -> str | None:
        """``full_mix``, ``crops`` or ``loose`` (the ``--only`` group), None for what is not in a group."""
        return _GROUP_OF.get(self.kind)


def glob_matches(rel: str, pattern: str) -> bool:
    """Whether ``rel`` (a "/"-separated path relative to the root) matches an ``--include``/``--exclude`` glob.

    Shell wildcards (``*``, ``?``, ``[...]``), case-sensitive. A pattern without ``/`` is tried on every component
    (``'*.mp3'``, ``'*Live*'``, ``crops``); one with ``/`` on the whole path and on each folder above the file, so a
    folder selects what is below it (``'Rock/Artist*'``); ``*`` crosses ``/`` and a leading ``**/`` may match nothing.
    """
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    pat = pattern.strip()
    while pat.startswith("./"):
        pat = pat[2:]
    pat = pat.strip("/")
    if not pat:
        return False
    if "/" not in pat:
        return any(fnmatchcase(p, pat) for p in parts)
    pats = [pat, pat[3:]] if pat.startswith("**/") else [pat]
    return any(fnmatchcase("/".join(parts[:i]), p) for i in range(1, len(parts) + 1) for p in pats)


def _track(path: Path, kind: str, reason: str, rel: str, sel: Selection) -> Track:
    """The layout's verdict, then the selection's."""

    def out(why: str, label: str | None = None) -> Track:
        return Track(path, kind, False, why, rel, label or EXCLUDED_AS.get(kind, NOT_SELECTED))

    if kind in STEM_KINDS:
        if not sel.stems:
            return out(f"{reason}; not a track (--stems takes it)")
        reason += " (--stems)"
    elif kind not in TRACK_KINDS:
        return out(reason)
    if _GROUP_OF[kind] not in sel.only:
        return out(f"{reason}; not selected: --only {','.join(g for g in GROUPS if g in sel.only)}", NOT_SELECTED)
    if sel.include and not any(glob_matches(rel, p) for p in sel.include):
        return out(f"{reason}; matches no --include", NOT_SELECTED)
    hit = next((p for p in sel.exclude if glob_matches(rel, p)), None)
    if hit is not None:
        return out(f"{reason}; matches --exclude {hit}", NOT_SELECTED)
    if sel.sample is not None and sel.sample < 1:
        draw = sample_draw(rel, sel.sample_seed)
        how = f"--sample {sel.sample:g}, --sample-seed {sel.sample_seed}"
        if draw >= sel.sample:
            return out(f"{reason}; not sampled: its draw {draw:.4f} >= {sel.sample:g} ({how})", NOT_SAMPLED)
        reason += f"; sampled: its draw {draw:.4f} < {sel.sample:g} ({how})"
    return Track(path, kind, True, reason, rel)


def sample_draw(rel: str, seed: int = 0) -> float:
    """A track's draw in [0, 1) for ``--sample``: from the sha256 of the seed and its path below the root, so it is
    the same on every run and machine, and independent of the other tracks. A track is sampled when its draw is
    below the share asked."""
    digest = hashlib.sha256(f"{int(seed)}\0{rel}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _excluded(path: Path, kind: str, reason: str, rel: str) -> Track:
    return Track(path, kind, False, reason, rel, EXCLUDED_AS[kind])


def _rel(root: Path, path: Path) -> str | None:
    """``path`` relative to ``root`` ("/"-separated, lexically: no symlink resolution), None when outside it."""
    try:
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    except ValueError:  # another drive (Windows)
        return None
    if rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
        return None
    return "" if rel == os.curdir else rel.replace(os.sep, "/")


def _skip_reason(folder_name: str) -> str | None:
    """Why a folder below the root is not walked, None if it is."""
    if folder_name in CROPS_FOLDERS:
        return None
    if folder_name.startswith("."):
        return "a hidden folder"
    if folder_name in SKIP_FOLDERS:
        return f"'{folder_name}' is on the pipeline's skip list; not walked"
    if folder_name in AUGMENTATION_FOLDERS:
        return "augmented copies of a track (augmentations/<variant>/): they inherit its caption; not walked"
    return None


def _folder_kind(folder_name: str) -> str:
    """The kind of a folder that is not walked (:func:`_skip_reason`)."""
    return AUGMENTATION if folder_name in AUGMENTATION_FOLDERS else SKIP_FOLDER


def _walk(root: Path, sel: Selection) -> Iterator[Track]:
    def unreadable(err: OSError) -> None:
        logger.warning("cannot list %s (%s): its tracks are not found", err.filename, err.strerror)

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        here = Path(dirpath)
        rel_dir = _rel(root, here) or ""
        keep = []
        for d in sorted(dirnames):
            why = _skip_reason(d)
            if why is None:
                keep.append(d)
            elif not d.startswith("."):  # hidden folders (.git, our own .music-flamingo) are not worth a line
                yield _excluded(here / d, _folder_kind(d), why, f"{rel_dir}/{d}".lstrip("/"))
        dirnames[:] = keep
        for name, kind, reason in classify_folder(here.name, [f for f in filenames if is_audio(f)]):
            yield _track(here / name, kind, reason, f"{rel_dir}/{name}".lstrip("/"), sel)


def _resolve_listed(root: Path, p: str | os.PathLike) -> Path:
    """A listed path: absolute as is; relative to the root, or to the current folder when only that exists."""
    path = Path(p)
    if path.is_absolute():
        return path
    under_root = root / path
    if not os.path.lexists(under_root) and os.path.lexists(path):
        return path.absolute()
    return under_root


def _listed(root: Path, sel: Selection) -> Iterator[Track]:
    """The files of ``sel.paths``, in their order, once each, classified in their own folder's context. A line
    that is no usable path (NUL bytes, binary garbage, a name part over 255 bytes) is left out and counted."""
    folders: dict[Path, dict[str, tuple[str, str]]] = {}
    seen: set[str] = set()
    for item in sel.paths or ():
        try:
            if "\x00" in os.fspath(item):
                raise ValueError("embedded null byte")
            path = _resolve_listed(root, item)
            key = os.path.normpath(os.path.abspath(path))
            if key in seen:
                continue
            seen.add(key)
            track = _listed_one(root, path, sel, folders)
        except (OSError, ValueError) as e:  # ENAMETOOLONG, "embedded null byte" ...
            shown = ascii(os.fspath(item))[:200]
            track = _excluded(Path("?"), BAD_PATH, f"listed line {shown} is not a usable path: {e}", shown)
        yield track


def _listed_one(root: Path, path: Path, sel: Selection, folders: dict[Path, dict[str, tuple[str, str]]]) -> Track:
    """One listed path's verdict. Outside the root is judged on resolved folders, not on the text: a listed
    ``linked/x.flac`` whose folder ``linked`` is a symlink out of the dataset is outside it (its sidecar would be
    written there); a symlinked *file* in a folder of the dataset is taken, as in a walk."""
    rel = _rel(root, path)
    if rel is None or not inside(path.parent, root):
        return _excluded(path, OUTSIDE, f"outside {root} (folders compared with symlinks resolved)", str(path))
    if not path.is_file():
        return _excluded(path, MISSING, "listed but not found (or not a file)", rel)
    if not is_audio(path):
        return _excluded(path, NOT_AUDIO, "listed but not an audio file", rel)
    skip = next(((d, why) for d in rel.split("/")[:-1] if (why := _skip_reason(d)) is not None), None)
    if skip is not None:
        return _excluded(path, _folder_kind(skip[0]), f"in a folder that is not walked: {skip[1]}", rel)
    folder = path.parent
    if folder not in folders:
        try:
            names = [f.name for f in folder.iterdir() if f.is_file() and is_audio(f)]
        except OSError:  # a folder we may read files in but not list: the file alone decides
            names = [path.name]
        folders[folder] = {n: (k, r) for n, k, r in classify_folder(folder.name, names)}
    kind, reason = folders[folder].get(path.name, (LOOSE, "a loose audio file"))
    return _track(path, kind, reason, rel, sel)


def discover_tracks(root: str | os.PathLike, selection: Selection | None = None) -> list[Track]:
    """Every audio file under ``root`` (or in ``selection.paths``) and every folder not walked, each with its kind,
    whether this selection takes it and why: folder by folder, names sorted; listed paths keep the list's order.

    ``[t.path for t in discover_tracks(root, sel) if t.selected]`` are the tracks to describe. ``root`` may be one
    audio file, classified in its folder's context.
    """
    root = Path(root)
    sel = selection or Selection()
    if sel.paths is None and root.is_file():
        one = Selection(sel.only, sel.stems, sel.include, sel.exclude, (root.absolute(),))  # one file: no --sample
        return list(_listed(root.parent, one))
    return list(_listed(root, sel) if sel.paths is not None else _walk(root, sel))


def read_path_list(source: str | os.PathLike) -> list[str]:
    """One path a line from a file, or from stdin for ``-`` (``--from-list``). Bytes are decoded as the file system
    does, so any file name round-trips; line endings are dropped, blank lines skipped. The file must be a regular
    file (a FIFO or ``/dev/zero`` is refused, never read for ever) of at most ``MAX_LIST_BYTES``; ``OSError`` else."""
    import sys

    if str(source) == "-":
        data = read_bounded_stream(sys.stdin.buffer, "the list on stdin", MAX_LIST_BYTES)
    else:
        data = read_regular_file(source, MAX_LIST_BYTES)
    lines = (line.rstrip(b"\r") for line in data.split(b"\n"))
    return [os.fsdecode(line) for line in lines if line.strip()]


__all__ = [
    "AUDIO_EXTENSIONS",
    "AUGMENTATION_FOLDERS",
    "CROPS_FOLDERS",
    "DEMUCS_STEMS",
    "DRUMSEP_STEMS",
    "EXCLUDED_AS",
    "GROUPS",
    "NOT_SAMPLED",
    "NOT_SELECTED",
    "SKIP_FOLDERS",
    "STEM_NAMES",
    "Selection",
    "Track",
    "classify_folder",
    "discover_tracks",
    "glob_matches",
    "is_audio",
    "read_path_list",
    "sample_draw",
]
