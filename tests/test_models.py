"""Model files: found locally without network, downloaded from the right repositories when missing, refused with a
useful message offline or on errors. Downloads go to a real HTTP server on loopback that speaks the part of the
Hugging Face Hub protocol the downloader uses (GET ``/{repo}/resolve/{revision}/{file}``, Range). The last section
runs the installed huggingface_hub against the same server to pin why models.py does not use hf_hub_download."""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import huggingface_hub  # noqa: F401  (a core dependency: missing must fail, not skip)
import pytest
from conftest import child_env

from music_flamingo.errors import ModelFileError
from music_flamingo.models import FILE_REPOSITORIES, MMPROJ_FILE, MODEL_FILES, default_model_dir, resolve_model_files

STATIC = "mradermacher/music-flamingo-hf-GGUF"
IMATRIX = "mradermacher/music-flamingo-hf-i1-GGUF"


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    authorization: str | None


@dataclass
class FakeHub:
    """The repositories' contents and everything the server was asked."""

    files: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (repo, filename) -> bytes
    commits: dict[str, str] = field(default_factory=dict)  # repo -> 40-hex commit
    cut_first_get: dict[str, int] = field(default_factory=dict)  # filename -> bytes sent before dropping the link
    stall_first_get: dict[str, int] = field(default_factory=dict)  # filename -> bytes sent before stalling
    stalled: threading.Event = field(default_factory=threading.Event)  # set once a stalled GET has sent its bytes
    release: threading.Event = field(default_factory=threading.Event)  # ends the stall (the connection is closed)
    wrong_bytes: set[str] = field(default_factory=set)  # filenames served with one byte changed, ETag unchanged
    requests: list[Request] = field(default_factory=list)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, repo: str, filename: str, size: int = 50_000) -> bytes:
        data = os.urandom(size)
        self.files[(repo, filename)] = data
        self.commits.setdefault(repo, secrets.token_hex(20))
        return data

    def paths(self, method: str | None = None) -> list[str]:
        return [r.path for r in self.requests if method is None or r.method == method]


class HubHandler(BaseHTTPRequestHandler):
    server_version = "FakeHub/1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002  keep test output quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        hub: FakeHub = self.server.hub  # type: ignore[attr-defined]
        path = unquote(self.path.split("?", 1)[0])
        rng = self.headers.get("Range")
        with hub.lock:
            hub.requests.append(Request(self.command, path, rng, self.headers.get("Authorization")))
        parts = path.lstrip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return self._error(404, None, None)
        repo, revision, filename = f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:])
        if repo not in hub.commits:
            return self._error(404, "RepoNotFound", None)
        commit = hub.commits[repo]
        if revision not in ("main", commit):
            return self._error(404, "RevisionNotFound", commit)
        data = hub.files.get((repo, filename))
        if data is None:
            return self._error(404, "EntryNotFound", commit)

        start = 0
        if rng is not None:
            assert rng.startswith("bytes=") and rng.endswith("-"), f"unexpected Range {rng!r}"
            start = int(rng[len("bytes=") : -1])
        status = 206 if start else 200
        self.send_response(status)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data) - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if not body:
            return
        if filename in hub.wrong_bytes:  # what a broken mirror or proxy would send: same length, other content
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        stall = hub.stall_first_get.pop(filename, None) if start == 0 else None
        if stall is not None:  # the client stops here until the test kills it
            self.wfile.write(data[:stall])
            self.wfile.flush()
            hub.stalled.set()
            hub.release.wait(timeout=60)
            self.close_connection = True
            return
        cut = hub.cut_first_get.pop(filename, None) if start == 0 else None
        if cut is not None:  # a dropped connection mid-file
            self.wfile.write(data[:cut])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(data[start:])

    def _error(self, status: int, code: str | None, commit: str | None) -> None:
        body = b'{"error": "not found"}'
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", code)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


@pytest.fixture
def hub(monkeypatch, tmp_path: Path):
    """A fake Hub on 127.0.0.1:<ephemeral>, reached through HF_ENDPOINT; no other network, no user token/cache."""
    from huggingface_hub import constants

    # Without this, huggingface_hub's first request of a process builds a user agent by fetching
    # {ENDPOINT frozen at import}/api/agent-harnesses (huggingface.co, not our endpoint).
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    for var in (
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "MUSIC_FLAMINGO_MODEL_DIR",
    ):
        monkeypatch.delenv(var, raising=False)

    fake = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), HubHandler)
    server.daemon_threads = True
    server.hub = fake  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    try:
        yield fake
    finally:
        fake.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def publish_all(hub: FakeHub) -> dict[str, bytes]:
    return {name: hub.add(repo, name) for name, repo in FILE_REPOSITORIES.items()}


def resolve_path(repo: str, filename: str) -> str:
    return f"/{repo}/resolve/main/{filename}"


# --- tables ------------------------------------------------------------------------------------------------------


def test_every_file_has_a_repository() -> None:
    assert set(FILE_REPOSITORIES) == set(MODEL_FILES.values()) | {MMPROJ_FILE}
    for filename, repo in FILE_REPOSITORIES.items():
        assert repo == (IMATRIX if ".i1-" in filename else STATIC)


def test_default_model_dir(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MUSIC_FLAMINGO_MODEL_DIR", raising=False)
    assert default_model_dir() == Path("models/music_flamingo")
    monkeypatch.setenv("MUSIC_FLAMINGO_MODEL_DIR", str(tmp_path))
    assert default_model_dir() == tmp_path


def test_unknown_model_name_lists_choices(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match=r"Q6_K.*Q8_0.*i1-IQ3_M.*i1-Q4_K_M.*i1-Q6_K"):
        resolve_model_files("Q7_K", tmp_path)
    assert hub.requests == []


# --- the pipeline's model folder, every published quantization (issue 20) -----------------------------------------


def test_the_pipelines_folder_is_used_as_it_is(hub: FakeHub, tmp_path: Path, caplog) -> None:
    """Its models/music_flamingo/ holds the imatrix Q6_K beside the static Q8_0: --model Q6_K takes the i1 file,
    says so, and downloads nothing (it used to fetch the static Q6_K, 5.9 GB)."""
    publish_all(hub)
    for name in ("music-flamingo-hf.i1-Q6_K.gguf", "music-flamingo-hf.Q8_0.gguf", MMPROJ_FILE):
        (tmp_path / name).write_bytes(b"theirs")
    with caplog.at_level("INFO", logger="music_flamingo"):
        model, mmproj = resolve_model_files("Q6_K", tmp_path)
    assert (model, mmproj) == (tmp_path / "music-flamingo-hf.i1-Q6_K.gguf", tmp_path / MMPROJ_FILE)
    assert hub.requests == []
    taken = [r for r in caplog.records if "music-flamingo-hf.i1-Q6_K.gguf" in r.getMessage()]
    assert taken and taken[0].levelname == "WARNING" and "Q6_K" in taken[0].getMessage()
    assert resolve_model_files("Q8_0", tmp_path)[0] == tmp_path / "music-flamingo-hf.Q8_0.gguf"
    assert hub.requests == []


def test_a_bare_name_prefers_the_static_file_when_both_are_there(hub: FakeHub, tmp_path: Path) -> None:
    for name in ("music-flamingo-hf.i1-Q6_K.gguf", "music-flamingo-hf.Q6_K.gguf", MMPROJ_FILE):
        (tmp_path / name).write_bytes(b"x")
    assert resolve_model_files("Q6_K", tmp_path)[0].name == "music-flamingo-hf.Q6_K.gguf"
    assert resolve_model_files("i1-Q6_K", tmp_path)[0].name == "music-flamingo-hf.i1-Q6_K.gguf"
    assert hub.requests == []


@pytest.mark.parametrize(
    ("asked", "filename", "repo"),
    [
        ("i1-Q4_K_M", "music-flamingo-hf.i1-Q4_K_M.gguf", IMATRIX),
        ("I1-q4_k_m", "music-flamingo-hf.i1-Q4_K_M.gguf", IMATRIX),  # case ignored
        ("Q4_K_M", "music-flamingo-hf.Q4_K_M.gguf", STATIC),
        ("i1-IQ2_M", "music-flamingo-hf.i1-IQ2_M.gguf", IMATRIX),
        ("IQ1_S", "music-flamingo-hf.i1-IQ1_S.gguf", IMATRIX),  # published as imatrix only
        ("f16", "music-flamingo-hf.f16.gguf", STATIC),
    ],
)
def test_every_published_quant_is_downloaded_by_name(
    hub: FakeHub, tmp_path: Path, asked: str, filename: str, repo: str
) -> None:
    served = publish_all(hub)
    (tmp_path / MMPROJ_FILE).write_bytes(b"p")
    model, _ = resolve_model_files(asked, tmp_path)
    assert model == tmp_path / filename and model.read_bytes() == served[filename]
    assert hub.paths("GET") == [resolve_path(repo, filename)]


def test_an_i1_name_never_takes_the_static_file(hub: FakeHub, tmp_path: Path) -> None:
    served = publish_all(hub)
    for name in ("music-flamingo-hf.Q6_K.gguf", MMPROJ_FILE):
        (tmp_path / name).write_bytes(b"static")
    model, _ = resolve_model_files("i1-Q6_K", tmp_path)
    assert model.name == "music-flamingo-hf.i1-Q6_K.gguf"
    assert model.read_bytes() == served["music-flamingo-hf.i1-Q6_K.gguf"]
    assert hub.paths("GET") == [resolve_path(IMATRIX, "music-flamingo-hf.i1-Q6_K.gguf")]


def test_offline_names_both_files_a_bare_name_can_be(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError) as excinfo:
        resolve_model_files("Q6_K", tmp_path, offline=True)
    msg = str(excinfo.value)
    assert "music-flamingo-hf.Q6_K.gguf" in msg and "music-flamingo-hf.i1-Q6_K.gguf" in msg


# --- local files -------------------------------------------------------------------------------------------------


def test_present_files_need_no_network(hub: FakeHub, tmp_path: Path) -> None:
    (tmp_path / MODEL_FILES["Q6_K"]).write_bytes(b"local model")
    (tmp_path / MMPROJ_FILE).write_bytes(b"local mmproj")
    assert resolve_model_files("Q6_K", tmp_path) == (tmp_path / MODEL_FILES["Q6_K"], tmp_path / MMPROJ_FILE)
    assert hub.requests == []
    assert (tmp_path / MODEL_FILES["Q6_K"]).read_bytes() == b"local model"


def test_model_dir_from_environment(hub: FakeHub, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / MODEL_FILES["Q8_0"]).write_bytes(b"m")
    (tmp_path / MMPROJ_FILE).write_bytes(b"p")
    monkeypatch.setenv("MUSIC_FLAMINGO_MODEL_DIR", str(tmp_path))
    assert resolve_model_files("Q8_0") == (tmp_path / MODEL_FILES["Q8_0"], tmp_path / MMPROJ_FILE)
    assert hub.requests == []


@pytest.mark.parametrize("how", ["argument", "HF_HUB_OFFLINE"])
def test_offline_lists_expected_paths_and_sources(hub: FakeHub, tmp_path: Path, monkeypatch, how: str) -> None:
    publish_all(hub)
    model_dir = tmp_path / "models"
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelFileError) as excinfo:
        resolve_model_files("IQ3_M", model_dir, offline=how == "argument")
    msg = str(excinfo.value)
    assert str(model_dir / MODEL_FILES["IQ3_M"]) in msg and str(model_dir / MMPROJ_FILE) in msg
    assert f"{hub.url}/{IMATRIX}/resolve/main/{MODEL_FILES['IQ3_M']}" in msg
    assert f"{hub.url}/{STATIC}/resolve/main/{MMPROJ_FILE}" in msg
    assert hub.requests == []
    assert not model_dir.exists()


# --- downloads ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", ["Q8_0", "Q6_K", "IQ3_M"])
def test_downloads_missing_files_from_the_right_repositories(hub: FakeHub, tmp_path: Path, model_name: str) -> None:
    served = publish_all(hub)
    model_dir = tmp_path / "models" / "music_flamingo"
    model, mmproj = resolve_model_files(model_name, model_dir)
    filename = MODEL_FILES[model_name]
    assert (model, mmproj) == (model_dir / filename, model_dir / MMPROJ_FILE)
    assert model.read_bytes() == served[filename]
    assert mmproj.read_bytes() == served[MMPROJ_FILE]
    model_url = resolve_path(IMATRIX if model_name == "IQ3_M" else STATIC, filename)
    mmproj_url = resolve_path(STATIC, MMPROJ_FILE)
    assert set(hub.paths()) == {model_url, mmproj_url}
    assert hub.paths("GET") == [model_url, mmproj_url]
    # nothing but the two files (no partial files left)
    assert sorted(p.name for p in model_dir.iterdir()) == sorted([filename, MMPROJ_FILE])

    hub.requests.clear()
    assert resolve_model_files(model_name, model_dir) == (model, mmproj)  # second time: local, no request
    assert hub.requests == []


def test_only_the_missing_file_is_downloaded(hub: FakeHub, tmp_path: Path) -> None:
    served = publish_all(hub)
    (tmp_path / MMPROJ_FILE).write_bytes(b"my own mmproj")
    model, mmproj = resolve_model_files("Q6_K", tmp_path)
    assert model.read_bytes() == served[MODEL_FILES["Q6_K"]]
    assert mmproj.read_bytes() == b"my own mmproj"
    assert set(hub.paths()) == {resolve_path(STATIC, MODEL_FILES["Q6_K"])}


def test_explicit_endpoint_argument(hub: FakeHub, tmp_path: Path, monkeypatch) -> None:
    served = publish_all(hub)
    monkeypatch.delenv("HF_ENDPOINT")
    model, _ = resolve_model_files("Q8_0", tmp_path, endpoint=hub.url + "/")
    assert model.read_bytes() == served[MODEL_FILES["Q8_0"]]
    assert hub.paths("GET")


def test_hf_token_is_sent(hub: FakeHub, tmp_path: Path, monkeypatch) -> None:
    publish_all(hub)
    monkeypatch.setenv("HF_TOKEN", "hf_testtoken123")
    resolve_model_files("Q8_0", tmp_path)
    assert hub.requests and all(r.authorization == "Bearer hf_testtoken123" for r in hub.requests)


@pytest.mark.parametrize("missing", ["file", "repo"])
def test_not_found_names_file_and_repo(hub: FakeHub, tmp_path: Path, missing: str) -> None:
    publish_all(hub)
    del hub.files[(IMATRIX, MODEL_FILES["IQ3_M"])]
    if missing == "repo":
        del hub.commits[IMATRIX]
    with pytest.raises(ModelFileError) as excinfo:
        resolve_model_files("IQ3_M", tmp_path)
    msg = str(excinfo.value)
    assert MODEL_FILES["IQ3_M"] in msg and IMATRIX in msg
    assert "404" in msg  # the cause is in the message
    assert not (tmp_path / MODEL_FILES["IQ3_M"]).exists()
    assert hub.paths("GET") == [resolve_path(IMATRIX, MODEL_FILES["IQ3_M"])]  # the mmproj was not fetched after it


def test_dropped_connection_is_resumed_with_range(hub: FakeHub, tmp_path: Path) -> None:
    """A connection that drops mid-file is resumed with ``Range: bytes=<received>-``, not restarted."""
    served = publish_all(hub)
    filename = MODEL_FILES["Q6_K"]
    served[filename] = hub.add(STATIC, filename, size=13_000_000)
    hub.cut_first_get[filename] = 11_500_000
    model, _ = resolve_model_files("Q6_K", tmp_path)
    assert model.read_bytes() == served[filename]
    gets = [r for r in hub.requests if r.method == "GET" and r.path.endswith(filename)]
    assert [g.range for g in gets] == [None, "bytes=11500000-"]


def test_partial_file_of_an_interrupted_run_is_resumed(hub: FakeHub, tmp_path: Path) -> None:
    """A killed process leaves ``<file>.part``; the next run asks only for the rest."""
    served = publish_all(hub)
    filename = MODEL_FILES["Q8_0"]
    (tmp_path / (filename + ".part")).write_bytes(served[filename][:10_000])
    model, _ = resolve_model_files("Q8_0", tmp_path)
    assert model.read_bytes() == served[filename]
    gets = [r for r in hub.requests if r.method == "GET" and r.path.endswith(filename)]
    assert [g.range for g in gets] == ["bytes=10000-"]
    assert not (tmp_path / (filename + ".part")).exists()


def test_stale_partial_file_does_not_corrupt_the_download(hub: FakeHub, tmp_path: Path) -> None:
    """Wrong bytes in ``<file>.part`` (another version of the file): the sha256 the Hub states catches it and the
    file is fetched again from the start."""
    served = publish_all(hub)
    filename = MODEL_FILES["Q8_0"]
    (tmp_path / (filename + ".part")).write_bytes(b"\0" * 10_000)
    model, _ = resolve_model_files("Q8_0", tmp_path)
    assert model.read_bytes() == served[filename]
    gets = [r for r in hub.requests if r.method == "GET" and r.path.endswith(filename)]
    assert [g.range for g in gets] == ["bytes=10000-", None]


# --- why not hf_hub_download -------------------------------------------------------------------------------------
# The hand-written downloader stays only while huggingface_hub cannot do the same. These tests run the installed
# huggingface_hub against the same loopback Hub (it speaks enough of the protocol: HEAD with X-Repo-Commit and
# ETag, then GET) and pin the two differences that decide it. If one of them starts failing, huggingface_hub has
# gained the feature and models.py can switch to hf_hub_download(local_dir=...).


def test_wrong_bytes_are_refused_here_but_accepted_by_hf_hub_download(hub: FakeHub, tmp_path: Path) -> None:
    """Bytes whose sha256 differs from the ETag the Hub states for an LFS file: refused by our downloader (after
    one clean retry); hf_hub_download checks only the length and keeps them."""
    from huggingface_hub import hf_hub_download

    served = publish_all(hub)
    filename = MODEL_FILES["Q8_0"]
    hub.wrong_bytes.add(filename)
    with pytest.raises(ModelFileError, match="sha256 does not match"):
        resolve_model_files("Q8_0", tmp_path / "ours")
    assert not (tmp_path / "ours" / filename).exists()
    assert not (tmp_path / "ours" / (filename + ".part")).exists()

    got = Path(hf_hub_download(STATIC, filename, local_dir=tmp_path / "hf", endpoint=hub.url))
    assert got == tmp_path / "hf" / filename
    assert len(got.read_bytes()) == len(served[filename]) and got.read_bytes() != served[filename]
    assert hashlib.sha256(got.read_bytes()).hexdigest() != hashlib.sha256(served[filename]).hexdigest()


def _kill_mid_download(hub: FakeHub, code: str, partial: Path, pattern: str) -> int:
    """Run ``code`` in a child process, let it receive part of a file, SIGKILL it; the size of its partial file."""
    env = child_env(
        HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_CACHE=str(partial / "hf-cache"), HF_TOKEN_PATH=str(partial / "no-token")
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        assert hub.stalled.wait(timeout=120), "the child never started the download"
        deadline = time.monotonic() + 60
        while not [p for p in partial.rglob(pattern) if p.stat().st_size > 0]:
            assert time.monotonic() < deadline and child.poll() is None, "no partial file appeared"
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait(timeout=30)
    hub.release.set()
    (left,) = [p for p in partial.rglob(pattern) if p.stat().st_size > 0]
    return left.stat().st_size


def test_a_killed_run_is_resumed_here_but_restarted_by_hf_hub_download(hub: FakeHub, tmp_path: Path) -> None:
    """A process killed mid-download (SIGKILL, no cleanup): the next run of our downloader asks only for the rest;
    hf_hub_download (local_dir) starts again from byte 0 (each run writes a fresh uniquely named ``.incomplete``
    file, deleted on error and left behind on a kill)."""
    from huggingface_hub import hf_hub_download

    served = publish_all(hub)
    filename = MODEL_FILES["Q8_0"]
    big = served[filename] = hub.add(STATIC, filename, size=24 << 20)
    stall = 21 << 20  # past two of huggingface_hub's 10 MiB chunks, so its partial file is not empty

    ours = tmp_path / "ours"
    hub.stall_first_get[filename] = stall
    kept = _kill_mid_download(
        hub,
        f"from music_flamingo.models import resolve_model_files; resolve_model_files('Q8_0', {str(ours)!r})",
        ours,
        filename + ".part",
    )
    hub.requests.clear()
    model, _ = resolve_model_files("Q8_0", ours)
    assert model.read_bytes() == big
    assert [r.range for r in hub.requests if r.method == "GET" and r.path.endswith(filename)] == [f"bytes={kept}-"]

    theirs = tmp_path / "hf"
    hub.stalled.clear()
    hub.release.clear()
    hub.stall_first_get[filename] = stall
    code = (
        f"from huggingface_hub import hf_hub_download; "
        f"hf_hub_download({STATIC!r}, {filename!r}, local_dir={str(theirs)!r}, endpoint={hub.url!r})"
    )
    assert _kill_mid_download(hub, code, theirs, "*.incomplete") > 0
    hub.requests.clear()
    got = Path(hf_hub_download(STATIC, filename, local_dir=theirs, endpoint=hub.url))
    assert got.read_bytes() == big
    assert [r.range for r in hub.requests if r.method == "GET" and r.path.endswith(filename)] == [None]
    assert list(theirs.rglob("*.incomplete"))  # the killed run's partial file is still there, never reused
