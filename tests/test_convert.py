"""``music-flamingo convert``: the preview converted as llama.cpp's own converter converts it (tensor names, shapes,
types, every key llama.cpp reads), the musicflamingo architecture with its RoTE parameters and audio tokens, the
quantizations through the compiled llama.cpp, and clear errors that leave nothing half-written."""

from __future__ import annotations

import json
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CACHE

from music_flamingo.convert import ConvertError, convert
from music_flamingo.errors import ModelFileError
from music_flamingo.gguf_meta import read_gguf
from testkit.tiny_musicflamingo import ensure_tiny_musicflamingo

# what differs by design: the names llama.cpp guesses from the folder, and the keys this package adds
NOT_COMPARED = ("general.name", "general.size_label", "music_flamingo.")


def comparable(path: Path) -> tuple[dict, dict]:
    meta, tensors = read_gguf(path, tensors=True)
    return {k: v for k, v in meta.items() if not k.startswith(NOT_COMPARED)}, tensors


def llama_cpp_convert(llama_cpp_dir: Path, hf_dir: Path, outfile: Path, mmproj: bool, outtype: str) -> None:
    """The llama.cpp tree's own converter (as testkit/tiny_model.py runs it)."""
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    env["PYTHONPATH"] = str(llama_cpp_dir / "gguf-py")
    cmd = [sys.executable, str(llama_cpp_dir / "convert_hf_to_gguf.py"), str(hf_dir), "--outtype", outtype]
    cmd += ["--outfile", str(outfile)] + (["--mmproj"] if mmproj else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="session")
def tiny_mf(llama_cpp_dir):
    return ensure_tiny_musicflamingo(llama_cpp_dir, CACHE / "test-models")


@pytest.fixture(scope="module")
def ours_f16(tiny, tmp_path_factory) -> tuple[Path, Path]:
    r = convert(tiny.hf_dir, tmp_path_factory.mktemp("ours"), outtype="f16", progress=False)
    return r.model, r.mmproj


def test_preview_f32_matches_llama_cpps_converter(tiny, tmp_path):
    # the tiny model's own GGUFs were written by the llama.cpp tree's converter (testkit/tiny_model.py)
    r = convert(tiny.hf_dir, tmp_path, outtype="f32", progress=False)
    assert comparable(r.model) == comparable(tiny.model_gguf)
    assert comparable(r.mmproj) == comparable(tiny.mmproj_gguf)
    # the same bytes for every tensor (the mmproj holds every kind of tensor rule: conv, position, norms, biases)
    import gguf

    ref = {t.name: t.data.tobytes() for t in gguf.GGUFReader(tiny.mmproj_gguf).tensors}
    assert {t.name: t.data.tobytes() for t in gguf.GGUFReader(r.mmproj).tensors} == ref


def test_preview_f16_matches_llama_cpps_converter(tiny, llama_cpp_dir, ours_f16, tmp_path):
    for ours, mmproj in zip(ours_f16, (False, True)):
        ref = tmp_path / f"ref-{mmproj}.gguf"
        llama_cpp_convert(llama_cpp_dir, tiny.hf_dir, ref, mmproj, outtype="f16")
        assert comparable(ours) == comparable(ref), ours.name


def test_musicflamingo_metadata(tiny_mf):
    mm, mm_tensors = read_gguf(tiny_mf.mmproj_gguf, tensors=True)
    cfg = json.loads((tiny_mf.hf_dir / "config.json").read_text())
    assert mm["clip.projector_type"] == "musicflamingo" and mm["clip.has_audio_encoder"] is True
    assert mm["music_flamingo.architecture"] == "musicflamingo"
    assert mm["music_flamingo.rote.dim"] == int(cfg["audio_config"]["hidden_size"] * 0.2)
    assert mm["music_flamingo.rote.theta"] == cfg["rope_parameters"]["rope_theta"] == 1200
    text = read_gguf(tiny_mf.model_gguf)[0]
    assert text["music_flamingo.max_audio_seconds"] == 1200
    assert (text["music_flamingo.audio_bos_token_id"], text["music_flamingo.audio_eos_token_id"]) == (
        cfg["audio_bos_token_id"],
        cfg["audio_eos_token_id"],
    )
    assert text["tokenizer.ggml.tokens"][cfg["audio_bos_token_id"]] == "<|sound_bos|>"
    assert "You are Music Flamingo" in text["tokenizer.chat_template"]
    # the text model's rope theta is the text config's, not the RoTE's at the top of the config
    assert text["qwen2.rope.freq_base"] == cfg["text_config"]["rope_parameters"]["rope_theta"]
    assert text["qwen2.context_length"] == cfg["text_config"]["max_position_embeddings"]
    assert "a.blk.2.attn_q.weight" in mm_tensors and "mm.a.mlp.2.weight" in mm_tensors


def test_quantize_through_llama_cpp(ours_f16, tmp_path):
    from music_flamingo.convert import quantize

    out = quantize(ours_f16[0], tmp_path / "m.Q8_0.gguf", "Q8_0")
    meta, tensors = read_gguf(out, tensors=True)
    assert meta["general.file_type"] == 7  # LLAMA_FTYPE_MOSTLY_Q8_0
    assert tensors["blk.0.attn_q.weight"].ggml_type == 8  # GGML_TYPE_Q8_0
    assert not list(tmp_path.glob(".*.part"))


def _write_imatrix(path: Path, model: Path) -> None:
    """An importance matrix in llama-imatrix's GGUF format for every 2-D weight of ``model``."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(path, "imatrix")
    for name, info in read_gguf(model, tensors=True)[1].items():
        if len(info.shape) == 2 and name.startswith("blk."):
            w.add_tensor(f"{name}.in_sum2", rng.random(info.shape[0], dtype=np.float32) * 100)
            w.add_tensor(f"{name}.counts", np.array([10.0], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_quantize_with_an_importance_matrix(ours_f16, tmp_path):
    from music_flamingo.convert import quantize

    _write_imatrix(tmp_path / "imatrix.gguf", ours_f16[0])
    plain = quantize(ours_f16[0], tmp_path / "plain.gguf", "Q4_K_M")
    weighted = quantize(ours_f16[0], tmp_path / "weighted.gguf", "Q4_K_M", imatrix=tmp_path / "imatrix.gguf")
    assert plain.read_bytes() != weighted.read_bytes()  # the importance moved the rounding
    with pytest.raises(ConvertError, match="no importance data"):
        quantize(ours_f16[0], tmp_path / "x.gguf", "Q4_K_M", imatrix=ours_f16[1])  # a GGUF without importance data


def test_unknown_architecture_and_missing_files(tiny, tmp_path):
    src = tmp_path / "llama"
    shutil.copytree(tiny.hf_dir, src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["architectures"] = ["LlamaForCausalLM"]
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFileError, match="LlamaForCausalLM.*not one this converts"):
        convert(src, tmp_path / "out", progress=False)
    with pytest.raises(ConvertError, match="does not exist"):
        convert(tmp_path / "nowhere", tmp_path / "out", progress=False)
    (src / "model.safetensors").unlink()
    cfg["architectures"] = ["AudioFlamingo3ForConditionalGeneration"]
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFileError, match="no \\*.safetensors"):
        convert(src, tmp_path / "out", progress=False)
    with pytest.raises(ConvertError, match="unknown quantization 'Q9_9'"):
        convert(tiny.hf_dir, tmp_path / "out", quants=["Q9_9"], progress=False)


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))


def test_a_write_that_fails_leaves_nothing(tiny, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "music_flamingo", "convert", str(tiny.hf_dir), str(out), "-q"],
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size,  # the 4 MB limit stands in for a full disk: the text model is ~40 MB
    )
    assert proc.returncode != 0
    assert "error" in proc.stderr.lower()
    # the mmproj (under the limit) is complete; the text model is neither there nor left as a temporary file
    assert sorted(p.name for p in out.iterdir()) == ["hf.mmproj-f16.gguf"]


def test_audio_flamingo_next_layout(tiny_mf, tmp_path):
    """AF-Next loads through the same class with 30 minutes of audio and a long-context (YaRN) text model: both
    reach the GGUF from the checkpoint's own files."""
    src = tmp_path / "audio-flamingo-next-hf"
    shutil.copytree(tiny_mf.hf_dir, src)
    proc = json.loads((src / "processor_config.json").read_text())
    proc["max_audio_len"] = 1800
    (src / "processor_config.json").write_text(json.dumps(proc))
    cfg = json.loads((src / "config.json").read_text())
    cfg["text_config"]["max_position_embeddings"] = 131072
    cfg["text_config"]["rope_parameters"] = {
        "rope_type": "yarn",
        "rope_theta": 5e6,
        "factor": 4.0,
        "original_max_position_embeddings": 32768,
    }
    (src / "config.json").write_text(json.dumps(cfg))
    r = convert(src, tmp_path / "out", outtype="f32", progress=False)
    text = read_gguf(r.model)[0]
    assert text["music_flamingo.max_audio_seconds"] == 1800 and text["music_flamingo.checkpoint"] == src.name
    assert text["qwen2.rope.scaling.type"] == "yarn" and text["qwen2.rope.scaling.factor"] == 4.0
    assert text["qwen2.rope.scaling.original_context_length"] == 32768
    assert (text["qwen2.rope.freq_base"], text["qwen2.context_length"]) == (5e6, 131072)
    assert (
        r.model.name == "audio-flamingo-next-hf.F32.gguf" and r.mmproj.name == "audio-flamingo-next-hf.mmproj-f32.gguf"
    )


def test_a_bf16_checkpoint_is_widened_exactly(tiny_mf, tmp_path):
    """The published checkpoints are bf16: each value widened to f32 exactly (what torch's bf16 -> f32 gives),
    through the memory-saving in-place shift."""
    import gguf
    import torch
    from safetensors.torch import load_file, save_file

    src = tmp_path / "mf-bf16"
    shutil.copytree(tiny_mf.hf_dir, src)
    tensors = {k: v.to(torch.bfloat16) for k, v in load_file(src / "model.safetensors").items()}
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    r = convert(src, tmp_path / "out", outtype="f32", progress=False)
    got = {t.name: t.data for t in gguf.GGUFReader(r.model).tensors}
    expected = tensors["language_model.model.embed_tokens.weight"].to(torch.float32).numpy()
    assert got["token_embd.weight"].tobytes() == expected.tobytes()
    norm = tensors["language_model.model.layers.1.input_layernorm.weight"].to(torch.float32).numpy()
    assert got["blk.1.attn_norm.weight"].tobytes() == norm.tobytes()
