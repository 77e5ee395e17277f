"""The console script: --help everywhere, one-line errors, and the corpus/examples commands."""
import json
import subprocess
import sys

import pytest

from personalize_t5x import cli

DEMO = "personalize_t5x/demo/demo_corpus.jsonl.gz"


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "personalize_t5x.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_every_command_has_help():
    assert cli.main(["--help"]) == 0
    for name in cli.COMMANDS:
        result = _run(name, "--help")
        assert result.returncode == 0, f"{name}: {result.stderr[-2000:]}"
        assert "usage: personalize-t5x " + name in result.stdout


def test_unknown_command_is_refused():
    result = _run("frobnicate")
    assert result.returncode == 2 and "unknown command 'frobnicate'" in result.stderr


def test_bad_input_is_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"user_id": "u", "doc_id": "a", "timestamp": 1420070400000, "title": "", "text": "x"}\n')
    result = _run("examples", "build", "--input", str(bad), "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: {bad}:1: field 'timestamp': looks like milliseconds: 1420070400000; the format wants seconds since the epoch"


def test_unknown_format_is_one_line(tmp_path):
    result = _run("corpus", "convert", "--format", "docx", "--input", DEMO, "--output", str(tmp_path / "o.jsonl"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "field 'format'" in result.stderr and "unknown format 'docx'" in result.stderr


def test_convert_then_build_on_the_demo_corpus(tmp_path):
    docs = tmp_path / "docs.jsonl.gz"
    result = _run("corpus", "convert", "--format", "jsonl", "--input", DEMO, "--output", str(docs))
    assert result.returncode == 0, result.stderr
    stats = _run("corpus", "stats", "--input", str(docs), "--json")
    assert json.loads(stats.stdout)["documents"] == 2000
    out = tmp_path / "examples"
    # the demo's thresholds (gin/experiments/demo.gin): its posts are short
    demo_thresholds = ("--context-chars", "50", "--min-target-chars", "150")
    result = _run("examples", "build", "--input", str(docs), "--output-dir", str(out), *demo_thresholds)
    assert result.returncode == 0, result.stderr
    assert "avg chars of current doc" in result.stdout
    table = json.loads((out / "stats.json").read_text())["splits"]
    for split in ("train", "validation", "test"):
        assert table[split]["examples"] > 0 and table[split]["author_pairs"] > 0
    again = _run("examples", "build", "--input", str(docs), "--output-dir", str(out), *demo_thresholds)
    assert again.returncode == 0 and "already built" in again.stdout
