"""The test music is the project's own (testkit/corpus.py): real music of both kinds, fetched with nothing beside the
clone, and a fetch that cannot happen says what to do instead of leaving half a corpus."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO, SR, child_env

from music_flamingo.audio import load_audio
from testkit.corpus import KINDS, PACKAGES, is_complete


def looks_like_music(pcm: np.ndarray) -> bool:
    """Loudness that changes from second to second and a spectrum that is neither a few tones nor flat: music, not
    silence, a test tone or noise (a sine: spread 0, peak share 1.0; white noise: spread 0.01, peak share 0.003;
    the corpus: 0.15-0.45 and 0.2-0.55)."""
    seconds = pcm[: len(pcm) // SR * SR].reshape(-1, SR)
    rms = np.sqrt((seconds.astype(np.float64) ** 2).mean(axis=1))
    if rms.mean() < 0.01:
        return False
    power = np.sort(np.abs(np.fft.rfft(pcm[: 20 * SR])) ** 2)[::-1]
    peak_share = power[:50].sum() / power.sum()  # of the 50 strongest of 160,000 frequency bins
    return rms.std() / rms.mean() > 0.05 and 0.02 < peak_share < 0.9


def test_the_check_tells_music_from_tones_noise_and_silence(track):
    t = np.arange(30 * SR) / SR
    assert looks_like_music(track)
    assert not looks_like_music((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32))
    assert not looks_like_music(np.random.default_rng(0).normal(0, 0.1, len(t)).astype(np.float32))
    assert not looks_like_music(np.zeros(len(t), np.float32))


def test_the_corpus_is_real_music_of_both_kinds(music_dir):
    mp3s, oggs = sorted(music_dir.glob("mp3/*.mp3")), sorted(music_dir.glob("ogg/*.ogg"))
    assert len(mp3s) == 3 and len(oggs) >= 25  # asc-music's three pieces, drascula-music's ~30
    assert {(sf.info(str(f)).format, sf.info(str(f)).subtype) for f in mp3s} == {("MP3", "MPEG_LAYER_III")}
    assert {(sf.info(str(f)).format, sf.info(str(f)).subtype) for f in oggs} == {("OGG", "VORBIS")}
    lengths = [len(load_audio(f)) / SR for f in mp3s]
    assert all(240 < s < 480 for s in lengths), lengths  # the tests cut up to 45 s from 20 s in; fidelity needs 10 min
    for f in [mp3s[0], oggs[0], oggs[len(oggs) // 2]]:
        assert looks_like_music(load_audio(f)), f


def corpus_cli(out, **env: str) -> subprocess.CompletedProcess:
    """``python -m testkit.corpus OUT`` from the repository root, with no team copy to take a shortcut from."""
    return subprocess.run(
        [sys.executable, "-m", "testkit.corpus", str(out)],
        cwd=REPO,
        env=child_env(**{"MUSIC_FLAMINGO_SHARED_CORPUS": "", **env}),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_without_apt_the_fetch_says_what_to_do_and_leaves_no_music(tmp_path):
    (tmp_path / "bin").mkdir()  # a PATH without apt-get, as on macOS
    r = corpus_cli(tmp_path / "corpus", PATH=str(tmp_path / "bin"))
    assert r.returncode == 1, r.stderr
    assert "needs apt-get" in r.stderr and "MUSIC_FLAMINGO_TEST_MUSIC" in r.stderr
    assert not list((tmp_path / "corpus").rglob("*.mp3")) and not list((tmp_path / "corpus").rglob("*.ogg"))


def test_a_failing_apt_is_updated_once_then_reported_with_its_own_words(tmp_path):
    # apt-get itself is not what is tested here: a stand-in that fails as a machine without package lists does
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text(
        f'#!/bin/sh\necho "$*" >> {calls}\necho "E: Unable to locate package $2" >&2\nexit 100\n'
    )
    (bin_dir / "apt-get").chmod(0o755)
    r = corpus_cli(tmp_path / "corpus", PATH=f"{bin_dir}:/usr/bin:/bin")
    assert r.returncode == 1, r.stderr
    assert "Unable to locate package asc-music" in r.stderr
    assert calls.read_text().splitlines() == [f"download {' '.join(PACKAGES)}", "update -qq"] + [
        f"download {' '.join(PACKAGES)}"
    ]
    assert not is_complete(tmp_path / "corpus")


def test_a_team_copy_beside_the_clone_is_taken_without_apt(music_dir, tmp_path):
    (tmp_path / "bin").mkdir()  # no apt-get: the copy is the only way
    r = corpus_cli(tmp_path / "out", PATH=str(tmp_path / "bin"), MUSIC_FLAMINGO_SHARED_CORPUS=str(music_dir))
    assert r.returncode == 0, r.stderr
    got = sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").glob("*/*.*"))
    assert got == sorted(p.relative_to(music_dir) for p in music_dir.glob("*/*.*"))


@pytest.mark.parametrize("kind", KINDS)
def test_a_team_copy_that_lacks_a_kind_is_not_taken(music_dir, tmp_path, kind):
    partial = tmp_path / "partial"
    (partial / kind).mkdir(parents=True)
    for f in sorted(music_dir.glob(f"{kind}/*"))[:2]:
        (partial / kind / f.name).write_bytes(f.read_bytes())
    (tmp_path / "bin").mkdir()
    r = corpus_cli(tmp_path / "out", PATH=str(tmp_path / "bin"), MUSIC_FLAMINGO_SHARED_CORPUS=str(partial))
    assert r.returncode == 1 and "needs apt-get" in r.stderr
    assert not list((tmp_path / "out").rglob(f"*.{kind}"))
