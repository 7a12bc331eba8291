"""``music-flamingo convert OWNER/NAME OUT_DIR``: a checkpoint fetched from the Hub with the package's downloader
(models.fetch_hub_file: resumed, sha256-checked) and converted. The Hub is the real HTTP server on loopback of
tests/test_models.py serving the tiny musicflamingo checkpoint; no other network."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CACHE
from test_models import FakeHub, hub  # noqa: F401  (the loopback Hub fixture)

from music_flamingo.convert import main as convert_main
from music_flamingo.errors import EXIT_USAGE
from music_flamingo.gguf_meta import model_facts, read_gguf
from testkit.tiny_musicflamingo import ensure_tiny_musicflamingo

REPO = "test-org/music-flamingo-think-2601-hf"


@pytest.fixture(scope="session")
def tiny_mf(llama_cpp_dir):
    return ensure_tiny_musicflamingo(llama_cpp_dir, CACHE / "test-models")


def publish(hub: FakeHub, repo: str, folder: Path) -> dict[str, bytes]:  # noqa: F811  (a parameter, not the fixture)
    """Every file of ``folder`` as the repository ``repo``, the weights behind a shard index as published
    checkpoints have them."""
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    files["model.safetensors.index.json"] = b'{"metadata": {}, "weight_map": {"a": "model.safetensors"}}'
    for name, data in files.items():
        hub.files[(repo, name)] = data
    hub.commits[repo] = "ab" * 20
    return files


def test_converts_a_hub_id(hub, tiny_mf, tmp_path, capsys):  # noqa: F811
    served = publish(hub, REPO, tiny_mf.hf_dir)
    out = tmp_path / "out"
    assert convert_main([REPO, str(out), "--outtype", "f32", "-q"]) == 0
    name = REPO.split("/")[1]
    fetched = out / name
    # every file the conversion reads, byte for byte; the config asked first (a missing repository fails there)
    assert {p.name: p.read_bytes() for p in fetched.iterdir()} == served
    gets = hub.paths("GET")
    assert gets[0] == f"/{REPO}/resolve/main/config.json"
    model, mmproj = out / f"{name}.F32.gguf", out / f"{name}.mmproj-f32.gguf"
    assert capsys.readouterr().out.split() == [str(model), str(mmproj)]
    # the same tensors as the local folder's conversion, named after the repository (not the cache's hash)
    assert read_gguf(model, tensors=True)[1] == read_gguf(tiny_mf.model_gguf, tensors=True)[1]
    facts = model_facts(model)
    assert (facts.checkpoint, facts.reasoning) == (name, "think")
    # a second run into the same folder fetches nothing it has (only the optional files the repository lacks)
    n = len(hub.requests)
    assert convert_main([REPO, str(out), "--outtype", "f32", "-q"]) == 0
    asked = {r.path.rsplit("/", 1)[1] for r in hub.requests[n:]}
    assert asked and not asked & set(served)


def test_a_missing_repository_is_a_clear_error(hub, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    assert convert_main(["test-org/no-such-model", str(out), "-q"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "could not fetch config.json of test-org/no-such-model" in err
    assert "RepoNotFound" in err and "no such repository" in err
    assert list(out.iterdir()) == []  # no empty checkpoint folder, no GGUF


def test_offline_refuses_a_hub_id(hub, tmp_path, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert convert_main([REPO, str(tmp_path / "out"), "-q"]) == EXIT_USAGE
    assert "HF_HUB_OFFLINE is set" in capsys.readouterr().err
    assert hub.requests == []


def test_a_shard_index_cannot_lead_outside_the_folder(hub, tiny_mf, tmp_path, capsys):  # noqa: F811
    publish(hub, REPO, tiny_mf.hf_dir)
    hub.files[(REPO, "model.safetensors.index.json")] = b'{"weight_map": {"a": "../../evil.safetensors"}}'
    out = tmp_path / "out"
    assert convert_main([REPO, str(out), "-q"]) == EXIT_USAGE
    assert "names no safetensors file" in capsys.readouterr().err
    assert not (tmp_path / "evil.safetensors").exists() and not any(p.suffix == ".gguf" for p in out.iterdir())
    assert not any("evil" in p for p in hub.paths())
