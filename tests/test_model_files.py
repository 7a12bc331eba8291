"""Wrong model files give a Python exception, never a dead process. Each case runs in a child process, so a crash
(abort, segfault) would show as a bad exit code instead of taking the test runner down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def make_gguf(path: Path, llama_cpp_dir: Path, kv: dict) -> Path:
    """A metadata-only GGUF written by the tree's own gguf-py (no tensors)."""
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(llama_cpp_dir / "gguf-py")!r})
        import gguf
        w = gguf.GGUFWriter({str(path)!r}, arch="clip")
        for k, v in {kv!r}.items():
            (w.add_bool if isinstance(v, bool) else w.add_string)(k, v)
        w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    """)
    subprocess.run([sys.executable, "-c", code], check=True)
    return path


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, tiny, llama_cpp_dir) -> dict[str, tuple[str, str]]:
    d = tmp_path_factory.mktemp("bad")
    (d / "noise.gguf").write_bytes(os.urandom(4096))
    model_bytes = Path(tiny.model_gguf).read_bytes()
    (d / "truncated.gguf").write_bytes(model_bytes[:100_000])  # cut inside the header (the vocabulary)
    (d / "short.gguf").write_bytes(model_bytes[: len(model_bytes) // 2])  # header intact, tensor data cut
    (d / "folder.gguf").mkdir()
    vision = make_gguf(
        d / "vision.gguf", llama_cpp_dir, {"clip.has_vision_encoder": True, "clip.has_audio_encoder": False}
    )
    other = make_gguf(
        d / "qwen2a.gguf", llama_cpp_dir, {"clip.has_audio_encoder": True, "clip.audio.projector_type": "qwen2a"}
    )
    m, p = str(tiny.model_gguf), str(tiny.mmproj_gguf)
    return {  # case: (model_path, mmproj_path)
        "missing model": (str(d / "nope.gguf"), p),
        "missing mmproj": (m, str(d / "nope.gguf")),
        "model is a folder": (str(d / "folder.gguf"), p),
        "model not a gguf": (str(d / "noise.gguf"), p),
        "mmproj not a gguf": (m, str(d / "noise.gguf")),
        "model truncated": (str(d / "truncated.gguf"), p),
        "model data truncated": (str(d / "short.gguf"), p),
        "text model as mmproj": (m, m),
        "mmproj as model": (p, p),
        "mmproj without audio encoder": (m, str(vision)),
        "mmproj with another projector": (m, str(other)),
    }


CHILD = textwrap.dedent("""
    import json, sys
    import music_flamingo as mf
    out = {}
    for case, (model, mmproj) in json.loads(sys.argv[1]).items():
        try:
            mf.MusicFlamingoGGUF(model_path=model, mmproj_path=mmproj, n_threads=1, warmup=False)
            out[case] = ["no error", ""]
        except Exception as e:
            out[case] = [type(e).__name__, str(e)]
    print(json.dumps(out))
""")

EXPECTED = {
    "missing model": "not found",
    "missing mmproj": "not found",
    "model is a folder": "directory",
    "model not a gguf": "not a GGUF",
    "mmproj not a gguf": "not a GGUF",
    "model truncated": "truncated GGUF header",
    "model data truncated": "could not load the model",
    "text model as mmproj": "looks like a text model",
    "mmproj as model": "is an mmproj",
    "mmproj without audio encoder": "no audio encoder",
    "mmproj with another projector": "'qwen2a', expected 'musicflamingo'",
}


def test_wrong_model_files_raise_in_a_process_that_survives(bad_files):
    r = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(bad_files)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, f"child process died ({r.returncode}):\n{r.stderr[-3000:]}"
    results = json.loads(r.stdout.strip().splitlines()[-1])
    for case, needle in EXPECTED.items():
        cls, msg = results[case]
        assert cls == "ModelFileError", f"{case}: {cls}: {msg}"
        assert needle in msg, f"{case}: {msg!r} lacks {needle!r}"


def test_model_name_without_files_lists_expected_paths(tmp_path):
    from music_flamingo import ModelFileError, MusicFlamingoGGUF

    with pytest.raises(ModelFileError, match=r"music-flamingo-hf\.Q6_K\.gguf"):
        MusicFlamingoGGUF(model_name="Q6_K", model_dir=tmp_path)
    with pytest.raises(ModelFileError, match="unknown model_name"):
        MusicFlamingoGGUF(model_name="Q2_XS", model_dir=tmp_path)
