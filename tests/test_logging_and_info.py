"""Native log lines reach Python logging (quietly by default), from worker threads and at exit; system_info()."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import music_flamingo
from music_flamingo import MusicFlamingoGGUF, Prompt

PIN = json.loads((Path(__file__).resolve().parents[1] / "third_party" / "llama-cpp.json").read_text())


def native(records):
    return [r for r in records if r.name == "music_flamingo.native"]


def test_verbose_native_logs_reach_python_logging(tiny, caplog):
    caplog.set_level(logging.DEBUG, logger="music_flamingo")
    eng = MusicFlamingoGGUF(
        model_path=tiny.model_gguf, mmproj_path=tiny.mmproj_gguf, n_threads=1, warmup=False, verbose=True
    )
    eng.close()
    lines = native(caplog.records)
    assert any("llama_model_loader" in r.getMessage() for r in lines)
    assert any(r.levelno == logging.INFO for r in lines)
    assert all("\n" not in r.getMessage() for r in lines)  # fragments joined into whole lines


def _harmless(records):
    """mtmd's "audio input is in experimental stage" warning (two lines), printed whenever it loads the mmproj."""
    return [r for r in records if "experimental stage" in r.getMessage() or "discussions/13759" in r.getMessage()]


@pytest.mark.parametrize("verbose", [False, True])
def test_quiet_by_default_and_known_harmless_warnings_are_debug(tiny, clips, caplog, verbose):
    caplog.set_level(logging.DEBUG, logger="music_flamingo")
    eng = MusicFlamingoGGUF(
        model_path=tiny.model_gguf, mmproj_path=tiny.mmproj_gguf, n_threads=1, warmup=False, verbose=verbose
    )
    eng.generate(clips["5s"], "Hi", max_tokens=2, framing="llamacpp")  # loads mtmd, which prints the warning
    eng.close()
    records = native(caplog.records)
    if verbose:  # still there for whoever asks, as DEBUG, both lines of the message
        assert [r.levelno for r in _harmless(records)] == [logging.DEBUG, logging.DEBUG]
    else:
        assert all(r.levelno >= logging.WARNING for r in records)
        assert _harmless(records) == []


def test_logs_from_a_worker_thread(tiny, clips, caplog):
    caplog.set_level(logging.DEBUG, logger="music_flamingo")
    out = {}

    def work():
        with MusicFlamingoGGUF(
            model_path=tiny.model_gguf, mmproj_path=tiny.mmproj_gguf, n_threads=1, warmup=False, verbose=True
        ) as eng:
            out["text"] = eng.generate(clips["5s"], [Prompt("Describe it.", max_tokens=4)]).texts[0]

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert "text" in out
    assert any(r.threadName == t.name for r in native(caplog.records))


def test_interpreter_exit_with_a_live_engine_is_clean(tiny):
    code = textwrap.dedent(f"""
        import logging, numpy as np
        logging.basicConfig(level=logging.DEBUG)
        import music_flamingo as mf
        eng = mf.MusicFlamingoGGUF(model_path={str(tiny.model_gguf)!r}, mmproj_path={str(tiny.mmproj_gguf)!r},
                                   n_threads=1, warmup=False, verbose=True)
        eng.generate(np.zeros(16000, np.float32), ["Describe it."], max_tokens=2)
        print("DONE")
        # no close(): the engine is torn down during interpreter exit
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "DONE" in r.stdout
    assert "Fatal Python error" not in r.stderr


def test_system_info_names_commit_backends_and_devices():
    info = music_flamingo.system_info()
    assert info["llama_cpp_commit"] == PIN["llama_cpp_commit"]
    assert "CPU" in info["backends"]
    assert any(d["type"] == "cpu" for d in info["devices"])
    assert info["version"] == music_flamingo.__version__
