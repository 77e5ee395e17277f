"""kill -9 at random points of `examples build` and `features`, then rerun (issue 11, items 2 and 10).

After the rerun the folder must be byte-identical to an uninterrupted build: nothing lost,
nothing duplicated, no temporary left, and never a finished-marker over a mix of two
builds. Subprocesses here, because kill -9 is the point; everything else runs in-process.
"""
from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from personalize_t5x import cli
from personalize_t5x.pipeline import examples as examples_lib
from shared_paths import REPO_ROOT

DEMO = REPO_ROOT / "personalize_t5x" / "demo" / "demo_corpus.jsonl.gz"


def _corpus(path, users: int, docs_per_user: int) -> None:
    rng = random.Random(5)
    words = "espresso grinder burr crema trail ridge boots summit skillet garlic braise stock".split()
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for u in range(users):
            for d in range(docs_per_user):
                text = " ".join(rng.choice(words) for _ in range(80))
                f.write(json.dumps({"user_id": f"u{u:05d}", "doc_id": f"u{u:05d}-{d}", "timestamp": 1_400_000_000 + 3600 * d,
                                    "title": f"post {d}", "text": text}) + "\n")


def _folder_bytes(folder) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT)}


def _start(argv):
    return subprocess.Popen([sys.executable, "-m", "personalize_t5x.cli", *map(str, argv)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_after(process, seconds: float) -> bool:
    """kill -9 after `seconds`; False when the process had already finished."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return True


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "documents.jsonl.gz"
    _corpus(path, users=1500, docs_per_user=12)
    return path


def _timed_subprocess(argv) -> float:
    """Wall time of one uninterrupted subprocess run (interpreter start included), which
    is the window the kills are spread over."""
    started = time.monotonic()
    process = _start(argv)
    assert process.wait() == 0
    return time.monotonic() - started


def _build(corpus, out, seed, *extra):
    argv = ["examples", "build", "--input", str(corpus), "--output-dir", str(out), "--seed", str(seed), *extra]
    assert cli.main(argv) == 0


@pytest.mark.slow
def test_examples_build_killed_anywhere_then_rerun_is_identical(tmp_path, corpus):
    reference = tmp_path / "reference"
    duration = _timed_subprocess(["examples", "build", "--input", corpus, "--output-dir", reference, "--seed", 7])
    expected = _folder_bytes(reference)
    rng = random.Random(11)
    kills = 0
    for attempt in range(6):
        out = tmp_path / f"killed{attempt}"
        process = _start(["examples", "build", "--input", corpus, "--output-dir", out, "--seed", 7])
        kills += _kill_after(process, rng.uniform(0.1, 0.95) * duration)
        assert examples_lib.finished_problem(out) is not None or _folder_bytes(out) == expected
        _build(corpus, out, 7)
        assert _folder_bytes(out) == expected, f"attempt {attempt}: the rerun differs from an uninterrupted build"
        assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]
    assert kills >= 3, "the runs finished before the kills: the corpus is too small to test anything"


@pytest.mark.slow
def test_interrupted_overwrite_is_never_taken_as_finished(tmp_path, corpus):
    """The issue's case: a finished folder of another seed, `--overwrite` killed midway,
    then a plain rerun. The folder must end as one whole build, never a mix."""
    one, seven = tmp_path / "seed1", tmp_path / "seed7"
    _build(corpus, one, 1)
    duration = _timed_subprocess(["examples", "build", "--input", corpus, "--output-dir", seven, "--seed", 7])
    builds = {1: _folder_bytes(one), 7: _folder_bytes(seven)}
    assert builds[1] != builds[7]
    rng = random.Random(3)
    overwritten = 0
    for attempt in range(5):
        out = tmp_path / f"folder{attempt}"
        _build(corpus, out, 1)
        process = _start(["examples", "build", "--input", corpus, "--output-dir", out, "--seed", 7, "--overwrite"])
        if attempt == 0:
            _kill_after(process, rng.uniform(0.05, 0.3) * duration)  # early: maybe before it began
        else:
            # Inside the overwrite: once the old marker is gone, at a random point of the rest.
            deadline = time.monotonic() + 10 * duration
            while (out / examples_lib.STATS_FILE).exists() and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
            _kill_after(process, rng.uniform(0.0, 0.5) * duration)
        if examples_lib.finished_problem(out) is None:
            # Still marked finished: then it is wholly one build (killed before it began, or done).
            assert _folder_bytes(out) in (builds[1], builds[7])
        else:
            overwritten += 1
        _build(corpus, out, 7)  # the plain rerun
        now = _folder_bytes(out)
        assert now in (builds[1], builds[7]), "a finished-marker over a mix of two builds"
        if now == builds[1]:
            assert examples_lib.finished_problem(out) is None
    assert overwritten >= 2, f"only {overwritten} kills landed inside an overwrite"


def _features_argv(examples_dir, out):
    return ["features", "--examples-dir", examples_dir, "--output-dir", out, "--strategies", "recent_doc", "rank_doc_bm25",
            "--direct-running-mode", "in_memory", "--direct-num-workers", "1", "--num-shards", "2", "--no-progress"]


def _features_bytes(folder) -> dict[str, bytes]:
    # The report holds timings; the manifest and shards are the output.
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))
            if name != "features_report.json" and not name.startswith(".")}


@pytest.mark.slow
def test_features_killed_anywhere_then_rerun_is_identical(tmp_path):
    examples_dir = tmp_path / "examples"
    assert cli.main(["examples", "build", "--input", str(DEMO), "--output-dir", str(examples_dir)]) == 0
    reference = tmp_path / "reference"
    duration = _timed_subprocess(_features_argv(examples_dir, reference))
    expected = _features_bytes(reference)
    assert any(name.startswith("train.tfrecord-") for name in expected)
    rng = random.Random(2)
    for attempt in range(3):
        out = tmp_path / f"killed{attempt}"
        process = _start(_features_argv(examples_dir, out))
        _kill_after(process, rng.uniform(0.2, 0.95) * duration)
        assert cli.main([str(a) for a in _features_argv(examples_dir, out)]) == 0
        assert _features_bytes(out) == expected, f"attempt {attempt}: the rerun differs"
