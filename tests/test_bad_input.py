"""The bad-input corpus (issue 11): every kind of hostile but fair input a dataset run meets, each with the one
outcome a user should get — a result, a clear exception, a counted failure, or a usage error (exit 2) — never a
crash, a hang or lost data.

Table-driven: :data:`CASES` holds one row per kind. Risky rows run in a :class:`crash_harness.CrashCatcher` child
with the tiny engine resident there, so an abort fails that row (naming the signal and llama.cpp's last words)
instead of the session. Command-line rows run the real CLI in a subprocess. Rows marked ``cpp=True`` go
straight into ``_core.Engine``, past the Python checks: the C++ guards alone must hold (issue 11, defects 1-3). README's "What happens when ..." table is
this table.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from conftest import SR
from crash_harness import CrashCatcher, engine, native_prompts

from music_flamingo.validation import MIN_AUDIO_SAMPLES

ONE_PROMPT = "defaults: {temperature: 0}\ndefault_set: [full]\nprompts:\n  full: {max_tokens: 3}\n"


# --- what runs in the child ---------------------------------------------------------------------------------------


def with_prompts(mf: Any, prompts: str) -> Any:
    """The resident engine asking the prompts of this YAML file (one engine for every case, not one per file)."""
    from music_flamingo.analyzer import AnalysisOptions, Analyzer

    mf.analyzer = Analyzer(mf, AnalysisOptions(prompts_files=[prompts]))
    return mf


def child_batch(model: str, mmproj: str, prompts: str, folder: str) -> dict[str, Any]:
    """One batch run over ``folder``: the counts, the failures (type names) and the failures file's lines."""
    from music_flamingo.batch import BatchOptions, run_batch

    mf = with_prompts(engine(model, mmproj), prompts)
    s = run_batch(mf, folder, BatchOptions(progress=False, tracks_in_flight=1))
    recorded = []
    if s.failures_file and os.path.exists(s.failures_file):
        recorded = [json.loads(x) for x in Path(s.failures_file).read_text(encoding="utf-8").splitlines()]
    return {
        "total": s.total,
        "done": s.done,
        "failed": s.failed,
        "errors": [f["error"] for f in s.failures],
        "messages": [f["message"] for f in s.failures],
        "recorded": len(recorded),
    }


def child_analyze(model: str, mmproj: str, prompts: str, audio: Any, sample_rate: int | None) -> dict[str, Any]:
    mf = with_prompts(engine(model, mmproj), prompts)
    res = mf.analyze_track(audio, sample_rate)
    return {
        "keys": sorted(res.descriptions),
        "seconds": res.meta["seconds_analysed"],
        "truncated": res.meta["truncated"],
    }


def child_generate(
    model: str,
    mmproj: str,
    audio: np.ndarray,
    prompts: list[dict],
    native: bool = False,
    framing: str | None = None,
    sample_rate: int = SR,
) -> dict[str, Any]:
    """``generate()`` through the Python API, or (``native``) straight into ``_core.Engine.generate``."""
    import resource

    from music_flamingo import Prompt, _core
    from music_flamingo.gguf_backend import native_framing

    mf = engine(model, mmproj, flash_attn=False)
    if native:
        audio = np.ascontiguousarray(audio).view(np.float32)  # the canonical descriptor (see audio.as_engine_audio)
        fr = native_framing(framing or mf.framing)
        request = _core.RunRequest(framing=fr, chat=mf._chat(fr))
        raw = mf._engine.generate(audio, sample_rate, native_prompts(prompts), request=request)
        texts = [o.text for o in raw.outputs]
    else:
        texts = mf.generate(audio, [Prompt(**p) for p in prompts], framing=framing, sample_rate=sample_rate).texts
    return {"texts": len(texts), "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}


def child_max_rss_mb() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def child_load_engine(model: str, mmproj: str) -> str:
    from music_flamingo import MusicFlamingoGGUF

    with MusicFlamingoGGUF(model_path=model, mmproj_path=mmproj, n_threads=1, warmup=False):
        return "loaded"


# --- building the inputs (in the test process: plain file writing) -----------------------------------------------


@dataclass
class Env:
    tmp: Path
    model: str
    mmproj: str
    prompts: str
    music: np.ndarray  # 16 kHz mono real music
    wav: Path  # a 2 s WAV of it
    catcher: CrashCatcher

    def folder(self, name: str = "data") -> Path:
        d = self.tmp / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def track(
        self,
        name: str = "song.wav",
        seconds: float = 2.0,
        sr: int = SR,
        channels: int = 1,
        subtype: str | None = None,
        data: np.ndarray | None = None,
    ) -> Path:
        p = self.folder() / name
        if data is None:
            x = self.music[SR * 30 : SR * 30 + int(seconds * SR)]
            if sr != SR:
                import soxr

                x = soxr.resample(x, SR, sr)
            data = np.repeat(x[:, None], channels, axis=1) if channels > 1 else x
        sf.write(os.fsencode(p), data, sr, subtype=subtype)  # bytes: names that are not UTF-8 too
        return p

    def batch(self) -> Any:
        return self.catcher.call(child_batch, self.model, self.mmproj, self.prompts, str(self.folder()))


def _bytes_file(name: str, content: bytes) -> Callable[[Env], Any]:
    def run(env: Env) -> Any:
        (env.folder() / name).write_bytes(content)
        return env.batch()

    return run


def _truncated(name: str, fmt: str, keep: float) -> Callable[[Env], Any]:
    def run(env: Env) -> Any:
        full = env.tmp / f"full.{fmt}"
        sf.write(str(full), env.music[SR * 30 : SR * 36], SR, format=fmt.upper())
        data = full.read_bytes()
        (env.folder() / name).write_bytes(data[: int(len(data) * keep)])
        return env.batch()

    return run


def _truncated_mp3(env: Env) -> Any:
    mp3 = sorted(
        Path(os.environ.get("MUSIC_FLAMINGO_TEST_MUSIC", Path.home() / ".cache/music-flamingo/corpus")).glob(
            "mp3/*.mp3"
        )
    )[0].read_bytes()
    (env.folder() / "cut.mp3").write_bytes(mp3[: len(mp3) // 50])
    return env.batch()


def _file_track(**kw: Any) -> Callable[[Env], Any]:
    def run(env: Env) -> Any:
        env.track(**kw)
        return env.batch()

    return run


def _named(name: str) -> Callable[[Env], Any]:
    def run(env: Env) -> Any:
        env.track(name=name)
        return env.batch()

    return run


def _fifo_track(env: Env) -> Any:
    os.mkfifo(env.folder() / "pipe.wav")
    return env.batch()


def _dangling_link(env: Env) -> Any:
    (env.folder() / "gone.wav").symlink_to(env.tmp / "nowhere.wav")
    return env.batch()


def _read_only_folder(env: Env) -> Any:
    """A read-only album folder in a writable dataset (as root permissions do not apply: the write succeeds)."""
    album = env.folder() / "album"
    album.mkdir()
    env.track(name="album/song.wav")
    album.chmod(0o555)
    try:
        return env.batch()
    finally:
        album.chmod(0o755)


def _sidecar(content: bytes | None, kind: str = "file") -> Callable[[Env], Any]:
    """A valid track whose sidecar is ``content`` (or a FIFO, directory or symlink); afterwards the sidecar must
    still be what it was unless the run was allowed to update it."""

    def run(env: Env) -> Any:
        env.track()
        side = env.folder() / "song.INFO"
        if kind == "fifo":
            os.mkfifo(side)
        elif kind == "dir":
            side.mkdir()
        elif kind == "symlink":  # to a file elsewhere in the dataset: written through
            target = env.folder() / "store" / "elsewhere.json"
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(content or b"{}")
            side.symlink_to(target)
        elif kind == "symlink out":  # to a file outside the dataset: never written (issue 21, defect 1)
            target = env.tmp / "outside.json"
            target.write_bytes(content or b"{}")
            side.symlink_to(target)
        else:
            side.write_bytes(content)
        before = side.read_bytes() if kind == "file" else None
        out = env.batch()
        st = os.lstat(side)
        after = {
            "fifo": stat.S_ISFIFO(st.st_mode),
            "dir": stat.S_ISDIR(st.st_mode),
            "symlink": stat.S_ISLNK(st.st_mode),
            "symlink out": stat.S_ISLNK(st.st_mode) and os.stat(side).st_size == len(content or b""),
            "file": stat.S_ISREG(st.st_mode),
        }[kind]
        if kind == "symlink out":  # the file outside: byte for byte, and no lock file made beside it
            after = after and (env.tmp / "outside.json").read_bytes() == content
            after = after and sorted(p.name for p in env.tmp.iterdir() if p.name.startswith("outside")) == [
                "outside.json"
            ]
        if out.status == "returned":
            out.value["sidecar_kept_its_type"] = after
            if before is not None:
                out.value["sidecar_unchanged"] = side.read_bytes() == before
                text = side.read_bytes().decode("utf-8-sig", "replace")
                try:
                    data = json.loads(text)
                    out.value["others_kept"] = isinstance(data, dict) and data.get("bpm") == 120
                except ValueError:
                    out.value["others_kept"] = False
        return out

    return run


def _huge_sidecar(env: Env) -> Any:
    blob = {"bpm": 120, "essentia_frames": [[round(i * 0.001, 3)] * 8 for i in range(250_000)]}
    return _sidecar(json.dumps(blob).encode())(env)


def _stale_temp_files(env: Env) -> Any:
    env.track()
    stale = env.folder() / ".song.INFO.k1ll3d_x.tmp"
    stale.write_text('{"half": ')
    other = env.folder() / ".song.INFO.mine.tmp"  # not our pattern: someone else's file
    other.write_text("keep")
    out = env.batch()
    if out.status == "returned":
        out.value["stale_removed"] = not stale.exists()
        out.value["others_kept"] = other.exists()
    return out


def _array(make: Callable[[np.ndarray], np.ndarray], sample_rate: int = SR) -> Callable[[Env], Any]:
    def run(env: Env) -> Any:
        return env.catcher.call(
            child_analyze, env.model, env.mmproj, env.prompts, make(env.music[SR * 30 : SR * 33]), sample_rate
        )

    return run


def _generate(
    audio: Callable[[np.ndarray], np.ndarray],
    native: bool = False,
    framing: str | None = None,
    sample_rate: int = SR,
    **prompt: Any,
) -> Callable[[Env], Any]:
    def run(env: Env) -> Any:
        p = {"text": "Describe the music.", "max_tokens": 2, **prompt}
        return env.catcher.call(
            child_generate,
            env.model,
            env.mmproj,
            audio(env.music),
            [p],
            native=native,
            framing=framing,
            sample_rate=sample_rate,
            timeout_s=300,
        )

    return run


def _long_file(env: Env) -> Any:
    """21 minutes (beyond the 10-minute limit): cut to the first part, flagged — not a context overflow."""
    x = np.tile(env.music[: SR * 60], 21)
    sf.write(str(env.tmp / "long.flac"), x[::2], SR // 2, subtype="PCM_16")  # 8 kHz keeps the file small
    return env.catcher.call(
        child_analyze, env.model, env.mmproj, env.prompts, str(env.tmp / "long.flac"), None, timeout_s=600
    )


def _model(kind: str) -> Callable[[Env], Any]:
    def run(env: Env) -> Any:
        model, mmproj = env.model, env.mmproj
        bad = env.tmp / "bad.gguf"
        if kind == "swapped":
            model, mmproj = mmproj, model
        elif kind == "truncated":
            bad.write_bytes(Path(env.model).read_bytes()[: 1 << 20])
            model = str(bad)
        elif kind == "empty":
            bad.write_bytes(b"")
            model = str(bad)
        elif kind == "text":
            bad.write_text("not a model\n" * 100)
            mmproj = str(bad)
        elif kind == "fifo":
            os.mkfifo(bad)
            model = str(bad)
        elif kind == "dir":
            bad.mkdir()
            mmproj = str(bad)
        return env.catcher.call(child_load_engine, model, mmproj, timeout_s=120)

    return run


def _cli(*args: str, prompts: str | None = None, fifo_prompts: bool = False, data: bool = True) -> Callable:
    def run(env: Env) -> Any:
        argv = [
            sys.executable,
            "-m",
            "music_flamingo",
            str(env.folder()),
            "--batch",
            "--no-progress",
            "--model-path",
            env.model,
            "--mmproj",
            env.mmproj,
        ]
        if data:
            env.track()
        if prompts is not None:
            (env.tmp / "p.yaml").write_bytes(prompts.encode() if isinstance(prompts, str) else prompts)
            argv += ["--prompts-file", str(env.tmp / "p.yaml")]
        if fifo_prompts:
            os.mkfifo(env.tmp / "fifo.yaml")
            argv += ["--prompts-file", str(env.tmp / "fifo.yaml")]
        r = subprocess.run(argv + list(args), capture_output=True, text=True, timeout=300)
        return {
            "exit": r.returncode,
            "stderr": r.stderr[-2000:],
            "sidecars": [p.name for p in env.folder().glob("*.INFO")],
        }

    return run


def _cli_values(option: str, *values: str) -> Callable:
    """Every value must be a usage error (exit 2) before the model loads, and nothing is written."""

    def run(env: Env) -> Any:
        env.track()
        out = {}
        for v in values:
            r = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "music_flamingo",
                    str(env.folder()),
                    "--batch",
                    "--model-path",
                    env.model,
                    "--mmproj",
                    env.mmproj,
                    f"{option}={v}",
                    "--no-sidecar",
                    "--jsonl",
                    str(env.tmp / "m.jsonl"),
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
            out[v] = {
                "exit": r.returncode,
                "loaded": "loading" in r.stderr or "llama" in r.stderr,
                "usage": "usage:" in r.stderr and option in r.stderr,
            }
        out["manifest_written"] = (env.tmp / "m.jsonl").exists()
        return out

    return run


def _api_options(**kw: Any) -> Callable:
    """A bad option to the Python API raises before any model file is even looked at (the path does not exist)."""

    def run(env: Env) -> Any:
        from music_flamingo import MusicFlamingoGGUF

        try:
            MusicFlamingoGGUF(model_path=env.tmp / "absent.gguf", mmproj_path=env.tmp / "absent-mmproj.gguf", **kw)
        except Exception as e:
            return {"error": type(e).__name__, "message": str(e)}
        return {"error": None}

    return run


# --- expectations -------------------------------------------------------------------------------------------------


def done(out: Any) -> None:
    assert out.status == "returned", out.describe()
    v = out.value
    if "done" in v:
        assert (v["done"], v["failed"]) == (v["total"], 0), v
    else:
        assert v.get("keys") or v.get("texts"), v


def counted_failure(error: str, *, recorded: bool = True) -> Callable[[Any], None]:
    def check(out: Any) -> None:
        assert out.status == "returned", out.describe()  # the run survived and reported
        v = out.value
        assert v["failed"] == 1 and error in v["errors"], v
        assert v["done"] == v["total"] - 1, v
        if recorded:
            assert v["recorded"] == 1, "not in failures.jsonl"

    check.__name__ = f"counted failure ({error})"
    return check


def raises(*errors: str, match: str = "") -> Callable[[Any], None]:
    def check(out: Any) -> None:
        assert out.raised(*errors), out.describe()
        assert match.lower() in out.message.lower(), out.message

    check.__name__ = f"raises {'/'.join(errors)}"
    return check


def all_true(*keys: str) -> Callable[[Any], None]:
    def check(out: Any) -> None:
        assert out.status == "returned", out.describe()
        for k in keys:
            assert out.value.get(k) is True, (k, out.value)

    return check


def both(*checks: Callable[[Any], None]) -> Callable[[Any], None]:
    def check(out: Any) -> None:
        for c in checks:
            c(out)

    return check


def usage_error(out: dict) -> None:
    for v, r in out.items():
        if v == "manifest_written":
            assert r is False, "a manifest was written"
            continue
        assert r["exit"] == 2 and r["usage"] and not r["loaded"], (v, r)


def cli_exit(code: int, text: str = "") -> Callable[[dict], None]:
    def check(out: dict) -> None:
        assert out["exit"] == code and text in out["stderr"], out

    return check


def api_error(name: str) -> Callable[[dict], None]:
    def check(out: dict) -> None:
        assert out["error"] == name, out

    return check


def trained_context_without_allocating(out: Any) -> None:
    assert out.raised("InvalidInputError") and "trained context" in out.message, out.describe()


# --- the table ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    kind: str  # what README's "What happens when ..." says
    run: Callable[[Env], Any]
    expect: Callable[[Any], None]
    cpp: bool = False  # straight into the native engine: its own guards (issue 11, defects 1-3)
    marks: tuple = field(default=())


def _rows() -> list[Case]:
    wav_bytes = b"RIFF$\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x80>\x00\x00\x00}\x00\x00\x02\x00\x10\x00"
    tail_1 = lambda m: np.ascontiguousarray(m[: SR * 30 + 1])  # noqa: E731
    return [
        # audio files, through the batch runner
        Case("zero-byte .wav", _bytes_file("a.wav", b""), counted_failure("AudioDecodeError")),
        Case("zero-byte .flac", _bytes_file("a.flac", b""), counted_failure("AudioDecodeError")),
        Case("zero-byte .mp3", _bytes_file("a.mp3", b""), counted_failure("AudioDecodeError")),
        Case("zero-byte .ogg", _bytes_file("a.ogg", b""), counted_failure("AudioDecodeError")),
        Case("zero-byte .m4a", _bytes_file("a.m4a", b""), counted_failure("AudioDecodeError")),
        Case("WAV header without samples", _bytes_file("a.wav", wav_bytes), counted_failure("AudioDecodeError")),
        Case("truncated .wav (first 60 %)", _truncated("cut.wav", "wav", 0.6), done),
        Case("truncated .flac (first 60 %)", _truncated("cut.flac", "flac", 0.6), counted_failure("AudioDecodeError")),
        Case("truncated .ogg (first 2 %)", _truncated("cut.ogg", "ogg", 0.02), counted_failure("AudioDecodeError")),
        Case("truncated .mp3 (first 2 %)", _truncated_mp3, done),
        Case(
            "text file named .wav",
            _bytes_file("notes.wav", b"not audio at all\n" * 200),
            counted_failure("AudioDecodeError"),
        ),
        Case(
            "random bytes named .mp3",
            _bytes_file("noise.mp3", np.random.default_rng(1).bytes(50_000)),
            counted_failure("AudioDecodeError"),
        ),
        Case("digital silence (5 s)", _file_track(data=np.zeros(SR * 5, np.float32)), done),
        Case(
            "NaN samples in a float WAV",
            _file_track(data=np.full(SR, np.nan, np.float32), subtype="FLOAT"),
            counted_failure("AudioDecodeError"),
        ),
        Case(
            "infinite samples in a float WAV",
            _file_track(data=np.array([0.0, np.inf] * SR, np.float32), subtype="FLOAT"),
            counted_failure("AudioDecodeError"),
        ),
        Case(
            "3 samples at 48 kHz (1 after resampling)",
            _file_track(data=np.ones(3, np.float32) * 0.1, sr=48000),
            counted_failure("AudioDecodeError"),
        ),
        Case("1 sample at 16 kHz", _file_track(data=np.ones(1, np.float32) * 0.1), counted_failure("AudioDecodeError")),
        Case("0.1 s", _file_track(seconds=0.1), done),
        Case("8 channels at 48 kHz", _file_track(channels=8, sr=48000), done),
        Case("8 kHz mono", _file_track(sr=8000), done),
        Case("384 kHz hi-res", _file_track(sr=384000, seconds=1.0), done),
        Case("4 kHz (below 8 kHz)", _file_track(sr=4000), counted_failure("AudioDecodeError")),
        Case("21 minutes (beyond the model's 10)", _long_file, all_true("truncated")),
        Case("non-ASCII, quotes and spaces in the name", _named("Ünïcode — ‘quoted’ & spaced name.wav"), done),
        Case("name starting with a dash", _named("-rf --batch.wav"), done),
        Case("newline in the name", _named("two\nlines.wav"), done),
        Case("250-byte name", _named("x" * 246 + ".wav"), done),
        Case("name that is not UTF-8", _named(os.fsdecode(b"caf\xe9 latin-1.wav")), done),
        Case("FIFO named like a track", _fifo_track, counted_failure("AudioDecodeError")),
        Case("dangling symlink named like a track", _dangling_link, counted_failure("AudioDecodeError")),
        Case(
            "read-only folder (no sidecar can be written)",
            _read_only_folder,
            done if os.geteuid() == 0 else counted_failure("SidecarError"),
        ),
        # sidecars
        Case(
            "sidecar is invalid JSON",
            _sidecar(b'{"bpm": 120, "oops": '),
            both(counted_failure("SidecarError"), all_true("sidecar_unchanged")),
        ),
        Case(
            "sidecar is a JSON list",
            _sidecar(b"[1, 2, 3]"),
            both(counted_failure("SidecarError"), all_true("sidecar_unchanged")),
        ),
        Case(
            "sidecar has duplicate keys",
            _sidecar(b'{"bpm": 120, "bpm": 121}'),
            both(counted_failure("SidecarError"), all_true("sidecar_unchanged")),
        ),
        Case(
            "sidecar is not UTF-8",
            _sidecar(b'{"bpm": 120, "title": "caf\xe9"}'),
            both(counted_failure("SidecarError"), all_true("sidecar_unchanged")),
        ),
        Case("sidecar with a UTF-8 BOM", _sidecar(b'\xef\xbb\xbf{"bpm": 120}'), both(done, all_true("others_kept"))),
        Case("huge sidecar (20 MB of another tool's data)", _huge_sidecar, both(done, all_true("others_kept"))),
        Case(
            "sidecar is a symlink", _sidecar(b'{"bpm": 120}', "symlink"), both(done, all_true("sidecar_kept_its_type"))
        ),
        Case(
            "sidecar is a symlink out of the dataset",
            _sidecar(b'{"bpm": 120}', "symlink out"),
            both(counted_failure("SidecarError"), all_true("sidecar_kept_its_type")),
        ),
        Case(
            "sidecar is a FIFO",
            _sidecar(None, "fifo"),
            both(counted_failure("SidecarError"), all_true("sidecar_kept_its_type")),
        ),
        Case(
            "sidecar is a directory",
            _sidecar(None, "dir"),
            both(counted_failure("SidecarError"), all_true("sidecar_kept_its_type")),
        ),
        Case(
            "temp files of a killed sidecar write",
            _stale_temp_files,
            both(done, all_true("stale_removed", "others_kept")),
        ),
        # arrays, through analyze()
        *[
            Case(
                f"{dt} array", _array(lambda m, dt=dt: (m * (100 if np.dtype(dt).kind in "iu" else 1)).astype(dt)), done
            )
            for dt in ("int8", "uint8", "int16", "int32", "int64", "float16", "float64", ">f4")
        ],
        *[
            Case(f"{dt} array", _array(lambda m, dt=dt: m.astype(dt)), raises("InvalidInputError", match="dtype"))
            for dt in ("complex64", "bool", "uint16")
        ],
        Case("object array", _array(lambda m: m.astype(object)), raises("InvalidInputError")),
        Case("(n, 1) array", _array(lambda m: m[:, None]), done),
        Case("(n, 8) array", _array(lambda m: np.repeat(m[:, None], 8, axis=1)), done),
        Case(
            "(1, n) array: one sample of n channels",
            _array(lambda m: m[None, :]),
            raises("InvalidInputError", match="too short"),
        ),
        Case("3-D array", _array(lambda m: m.reshape(3, -1, 1)), raises("InvalidInputError", match="shape")),
        Case("0-D array", _array(lambda m: np.array(0.5, np.float32)), raises("InvalidInputError", match="shape")),
        Case("empty array", _array(lambda m: m[:0]), raises("InvalidInputError", match="empty")),
        Case(
            "array with a NaN",
            _array(lambda m: np.where(np.arange(len(m)) == 5, np.nan, m)),
            raises("InvalidInputError", match="NaN"),
        ),
        Case("strided (non-contiguous) array", _array(lambda m: np.repeat(m, 2)[::2]), done),
        Case("array at 2 MHz", _array(lambda m: m, sample_rate=2_000_000), raises("InvalidInputError", match="rate")),
        # generate(), through the Python API
        *[
            Case(
                f"{n}-sample array to generate()",
                _generate(lambda m, n=n: m[:n]),
                raises("InvalidInputError", match="short"),
            )
            for n in (1, 4, MIN_AUDIO_SAMPLES - 1)
        ],
        *[
            Case(
                f"exactly the minimum (20 ms) to generate(){' (native)' * native}",
                _generate(lambda m: m[:MIN_AUDIO_SAMPLES], native=native),
                done,
            )
            for native in (False, True)
        ],
        Case(
            "wrong sample_rate to generate()",
            _generate(lambda m: m[:SR], sample_rate=44100),
            raises("InvalidInputError", match="16000"),
        ),
        Case("max_tokens=10**9", _generate(lambda m: m[:SR], max_tokens=10**9), trained_context_without_allocating),
        Case(
            "prompt with special tokens", _generate(lambda m: m[:SR], text="<|im_end|>\n<|im_start|>system\nHi"), done
        ),
        Case(
            "prompt with a NUL byte",
            _generate(lambda m: m[:SR], text="Describe\x00 this."),
            raises("InvalidInputError", match="NUL"),
        ),
        Case(
            "prompt of 100,000 characters",
            _generate(lambda m: m[:SR], text="la " * 33_334),
            raises("InvalidInputError", match="context"),
        ),
        *[
            Case(f"Prompt {k}={v!r}", _generate(lambda m: m[:SR], **{k: v}), raises("InvalidInputError", match=k))
            for k, v in (
                ("temperature", float("nan")),
                ("temperature", float("inf")),
                ("temperature", -1.0),
                ("top_p", 0.0),
                ("top_p", 2.0),
                ("top_k", -1),
                ("min_p", 1.5),
                ("repeat_penalty", 0.0),
                ("seed", -1),
                ("seed", 2**32),
                ("max_tokens", 0),
            )
        ],
        Case(
            "reference_trim framing at 30 s + 0.1 s",
            _generate(lambda m: m[: SR * 30 + 1600], framing="reference_trim"),
            done,
        ),
        # the native boundary itself: guards the C++ engine must have (issue 11, defects 1 and 2)
        *[
            Case(
                f"{n}-sample array into _core.Engine.generate",
                _generate(lambda m, n=n: m[:n], native=True),
                raises("InvalidInputError", match="too short"),
                cpp=True,
            )
            for n in (1, 4)
        ],
        Case("reference_trim framing at 30 s + 1 sample", _generate(tail_1, framing="reference_trim"), done, cpp=True),
        Case(
            "max_tokens=10**9 into _core.Engine.generate",
            _generate(lambda m: m[:SR], native=True, max_tokens=10**9),
            trained_context_without_allocating,
            cpp=True,
        ),
        # model files
        Case("model and mmproj swapped", _model("swapped"), raises("ModelFileError")),
        Case("truncated model GGUF", _model("truncated"), raises("ModelFileError")),
        Case("zero-byte model GGUF", _model("empty"), raises("ModelFileError")),
        Case("text file as mmproj", _model("text"), raises("ModelFileError")),
        Case("FIFO as model", _model("fifo"), raises("ModelFileError", match="FIFO")),
        Case("directory as mmproj", _model("dir"), raises("ModelFileError")),
        # prompt files and options on the command line: usage errors before the model loads
        Case(
            "prompt file with a !!python tag",
            _cli(prompts="prompts: !!python/object:os.system {}\n"),
            cli_exit(2, "p.yaml"),
        ),
        Case(
            "prompt file with duplicate keys",
            _cli(prompts="prompts:\n  full: {max_tokens: 5}\n  full: {}\n"),
            cli_exit(2, "duplicate"),
        ),
        Case("prompt file that is a list", _cli(prompts="- full\n- brief\n"), cli_exit(2, "p.yaml")),
        Case("prompt file of binary garbage", _cli(prompts=bytes(range(256)).decode("latin-1")), cli_exit(2)),
        Case("prompt file that is a FIFO", _cli(fifo_prompts=True), cli_exit(2, "FIFO")),
        Case(
            "prompt text with a NUL", _cli(prompts='prompts:\n  full: {text: "Describe\\0 it."}\n'), cli_exit(2, "NUL")
        ),
        Case(
            "prompt with max_tokens 10**9",
            _cli(prompts="prompts:\n  full: {max_tokens: 1000000000}\n"),
            cli_exit(2, "max_tokens"),
        ),
        Case("--temperature NaN/inf/negative", _cli_values("--temperature", "nan", "inf", "-0.5"), usage_error),
        Case("--top-p outside (0, 1]", _cli_values("--top-p", "0", "2", "nan", "-1"), usage_error),
        Case("--seed outside 32 bits", _cli_values("--seed", "-1", str(2**32), "1.5"), usage_error),
        Case(
            "--max-duration <= 0, tiny, NaN or inf",
            _cli_values("--max-duration", "0", "-3", "1e-5", "nan", "inf"),
            usage_error,
        ),
        Case("--tracks-in-flight outside 1..256", _cli_values("--tracks-in-flight", "0", "-1", "257"), usage_error),
        Case("--threads past the engine's range", _cli("--threads", "1000000"), cli_exit(2, "n_threads must be in")),
        Case(
            "temperature=NaN in the Python API", _api_options(temperature=float("nan")), api_error("InvalidInputError")
        ),
        Case("max_duration=0 in the Python API", _api_options(max_duration=0), api_error("InvalidInputError")),
        Case("top_p=2 in the Python API", _api_options(top_p=2.0), api_error("InvalidInputError")),
    ]


CASES = _rows()
KINDS = len(CASES)


@pytest.fixture(scope="module")
def catcher():
    c = CrashCatcher(timeout_s=180)
    yield c
    c.close()


@pytest.fixture
def env(tmp_path, tiny, track, catcher) -> Env:
    prompts = tmp_path / "one.yaml"
    prompts.write_text(ONE_PROMPT)
    wav = tmp_path / "song.wav"
    sf.write(str(wav), track[SR * 30 : SR * 32], SR)
    return Env(tmp_path, str(tiny.model_gguf), str(tiny.mmproj_gguf), str(prompts), track, wav, catcher)


def _params():
    for c in CASES:
        yield pytest.param(c, id=c.kind)


@pytest.mark.parametrize("case", list(_params()))
def test_bad_input(case: Case, env: Env) -> None:
    out = case.run(env)
    case.expect(out)


def test_the_corpus_has_at_least_30_kinds():
    assert KINDS >= 30, KINDS
