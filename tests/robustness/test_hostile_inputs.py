"""Every reader and CLI entry point over a generated hostile corpus (issue 11, item 10).

The rule (docs/guarantees.md): a run ends in exit 0 (bad records counted when skipped) or
in exit 2 with ONE line naming file, line and field. Never a traceback, never a silent
success. Entry points run in-process (`personalize_t5x.cli.main(argv)`): an uncaught
exception fails the test with its traceback, which is exactly what must not happen.
"""
from __future__ import annotations

import gzip
import json
import os
import re
import shutil

import pytest

from personalize_t5x import cli
from personalize_t5x.pipeline import examples as examples_lib
from hostile_corpus import FORMAT_CASES, GOOD, all_cases, jsonl_cases, jsonl_good

LOCATED = re.compile(r"^error: (?P<path>\S*?)(?::(?P<line>\d+))?: field '(?P<field>[^']+)': (?P<reason>.+)$")
OPTION = re.compile(r"^(error: option --[\w-]+: .+|personalize-t5x [\w -]+: error: argument --[\w-]+: .+)$")


def run(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc in (0, 2), (rc, err)
    assert "Traceback" not in err and "Traceback" not in out
    return rc, out, err


def assert_one_located_line(err: str, filename: str) -> re.Match:
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    match = LOCATED.match(err.strip())
    assert match, f"not 'error: FILE[:LINE]: field 'F': reason': {err!r}"
    assert os.path.basename(match["path"]).startswith(filename.split(".")[0]) or filename in match["path"], (filename, err)
    return match


def _write(tmp_path, case):
    path = tmp_path / case.filename
    path.write_bytes(case.data)
    return path


def _count_lines(path) -> int:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        return sum(1 for line in f if line.strip())


@pytest.mark.parametrize("fmt, case", all_cases(), ids=[f"{f}-{c.name}" for f, c in all_cases()])
@pytest.mark.parametrize("skip_bad", [False, True], ids=["strict", "skip_bad"])
def test_corpus_convert(tmp_path, capsys, fmt, case, skip_bad):
    source = _write(tmp_path, case)
    output = tmp_path / "out" / "documents.jsonl.gz"
    rc, out, err = run(["corpus", "convert", "--format", fmt, "--input", source, "--output", output]
                       + (["--skip-bad"] if skip_bad else []), capsys)
    if case.expect == "bad" and not skip_bad:
        assert rc == 2, f"a hostile {case.name} was accepted: {out}"
        assert_one_located_line(err, case.filename)
        assert not output.exists(), "a refused run must not leave an output"
        return
    assert rc == 0, err
    report = json.loads((tmp_path / "out" / "documents.jsonl.gz.report.json").read_text())
    written = _count_lines(output)
    assert written == report["kept"] >= case.kept
    if case.expect == "bad":
        assert sum(report["bad_skipped"].values()) >= 1, "skipped silently: nothing counted"
        assert report["bad_examples"] and case.filename in report["bad_examples"][0]
    else:
        assert not report["bad_skipped"], report
    # What a stage writes, its next stage reads (issue 11, item 7).
    rc, out, err = run(["corpus", "stats", "--input", output, "--json"], capsys)
    assert rc == 0, err
    assert json.loads(out)["documents"] == written


@pytest.mark.parametrize("case", jsonl_cases(), ids=lambda c: c.name)
@pytest.mark.parametrize("skip_bad", [False, True], ids=["strict", "skip_bad"])
def test_corpus_stats(tmp_path, capsys, case, skip_bad):
    source = _write(tmp_path, case)
    rc, out, err = run(["corpus", "stats", "--input", source, "--json"] + (["--skip-bad"] if skip_bad else []), capsys)
    if case.expect == "bad" and not skip_bad:
        assert rc == 2
        assert_one_located_line(err, case.filename)
        return
    assert rc == 0, err
    stats = json.loads(out)
    assert stats["documents"] >= case.kept
    assert bool(stats["bad_skipped"]) == (case.expect == "bad")


def _enough_documents(i: int) -> dict:
    """Documents that survive the paper's filters: 6 users x 10 long documents."""
    return {**jsonl_good(i), "user_id": f"u{i % 6}", "text": f"document {i} " + "words " * 70}


@pytest.mark.parametrize("case", [c for c in jsonl_cases() if c.name != "huge_document"], ids=lambda c: c.name)
@pytest.mark.parametrize("skip_bad", [False, True], ids=["strict", "skip_bad"])
def test_examples_build(tmp_path, capsys, case, skip_bad):
    # The hostile file's records, after 60 documents that give every split something.
    good = b"".join(json.dumps(_enough_documents(100 + i)).encode() + b"\n" for i in range(60))
    data = case.data
    if case.filename.endswith(".gz"):
        source = tmp_path / case.filename
        source.write_bytes(data)
    else:
        source = tmp_path / case.filename
        source.write_bytes(data[:3] + good + data[3:] if data.startswith(b"\xef\xbb\xbf") else good + data)
    out = tmp_path / "examples"
    rc, stdout, err = run(["examples", "build", "--input", source, "--output-dir", out, "--min-examples-per-user", "2",
                           "--min-target-chars", "50"] + (["--skip-bad"] if skip_bad else []), capsys)
    if case.expect == "bad" and not skip_bad:
        assert rc == 2
        assert_one_located_line(err, case.filename)
        assert not (out / examples_lib.STATS_FILE).exists()
        return
    assert rc == 0, err
    assert examples_lib.finished_problem(out) is None
    stats = json.loads((out / examples_lib.STATS_FILE).read_text())
    assert bool(stats["report"]["bad_skipped"]) == (case.expect == "bad")


@pytest.mark.parametrize("argv, option", [
    (["--min-examples-per-user", "0"], "--min-examples-per-user"),
    (["--max-examples-per-user", "1", "--min-examples-per-user", "3"], "--max-examples-per-user"),
    (["--split-fractions", "0.5", "0.5", "0.5"], "--split-fractions"),
    (["--split-fractions", "nan", "0", "0"], "--split-fractions"),
    (["--split-fractions", "0.9", "0.1"], "--split-fractions"),
    (["--seed", "-1"], "--seed"),
    (["--seed", "99999999999999999999999"], "--seed"),
    (["--seed", "x"], "--seed"),
    (["--context-chars", "-1"], "--context-chars"),
    (["--author-pairs-per-example", "inf"], "--author-pairs-per-example"),
    (["--split-mode", "random"], "--split-mode"),
])
def test_examples_build_refuses_invalid_options(tmp_path, capsys, argv, option):
    source = tmp_path / "d.jsonl"
    source.write_text("".join(json.dumps(_enough_documents(i)) + "\n" for i in range(60)))
    rc, _, err = run(["examples", "build", "--input", source, "--output-dir", tmp_path / "e", *argv], capsys)
    assert rc == 2 and err.count("\n") == 1, err
    assert option in err and (OPTION.match(err.strip()) or "invalid choice" in err), err
    assert not (tmp_path / "e").exists()


def _outputs_that_cannot_be(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    a_folder = tmp_path / "a_folder"
    (a_folder / "documents.jsonl.gz").mkdir(parents=True)
    cases = {"under_a_file": a_file / "out.jsonl", "is_a_folder": a_folder / "documents.jsonl.gz"}
    if os.geteuid() != 0:  # root writes anywhere: the permission case needs an ordinary user
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        cases["unwritable_folder"] = locked / "out.jsonl"
    return cases


@pytest.mark.parametrize("where", ["under_a_file", "is_a_folder", "unwritable_folder"])
def test_unwritable_outputs_are_one_line_errors(tmp_path, capsys, where):
    outputs = _outputs_that_cannot_be(tmp_path)
    if where not in outputs:
        pytest.skip("running as root: permission bits do not stop root (the other two cases still run)")
    target = outputs[where]
    source = tmp_path / "d.jsonl"
    source.write_text("".join(json.dumps(_enough_documents(i)) + "\n" for i in range(60)))
    rc, _, err = run(["corpus", "convert", "--format", "jsonl", "--input", source, "--output", target], capsys)
    assert rc == 2 and err.count("\n") == 1 and str(target) in err, err
    folder = target if where != "is_a_folder" else tmp_path / "a_file"
    rc, _, err = run(["examples", "build", "--input", source, "--output-dir", folder], capsys)
    assert rc == 2 and err.count("\n") == 1 and ("--output-dir" in err or str(folder) in err), err


@pytest.fixture(scope="module")
def built_examples(tmp_path_factory):
    root = tmp_path_factory.mktemp("built")
    source = root / "d.jsonl"
    source.write_text("".join(json.dumps(_enough_documents(i)) + "\n" for i in range(120)))
    assert cli.main(["examples", "build", "--input", str(source), "--output-dir", str(root / "examples"),
                     "--min-examples-per-user", "2", "--min-target-chars", "50"]) == 0
    return root / "examples"


def _hostile_examples_dir(tmp_path, built, case):
    """A copy of a finished examples folder whose train.jsonl.gz holds a hostile case."""
    folder = tmp_path / "examples"
    shutil.copytree(built, folder)
    if case.filename.endswith(".gz"):
        (folder / "train.jsonl.gz").write_bytes(case.data)
    else:
        (folder / "train.jsonl.gz").write_bytes(gzip.compress(case.data))
    return folder


VOCAB_CASES = [c for c in jsonl_cases() if c.expect == "bad" and c.name not in ("duplicate_doc_id",)]


@pytest.mark.parametrize("case", VOCAB_CASES, ids=lambda c: c.name)
def test_vocab_over_hostile_training_files(tmp_path, capsys, built_examples, case):
    folder = _hostile_examples_dir(tmp_path, built_examples, case)
    rc, out, err = run(["vocab", "--examples-dir", folder, "--output", tmp_path / "v" / "spm.model",
                        "--vocab-size", "60"], capsys)
    # vocab reads only target/immediate_context: records that are hostile as Documents
    # (a bad timestamp) are legal there; JSON-level faults are not.
    if rc == 0:
        assert (tmp_path / "v" / "spm.model").exists()
        assert case.name in ("year_9999", "timestamp_over_64_bits", "timestamp_string", "user_is_an_object",
                             "empty_text", "text_is_a_list", "int_over_64_bits"), f"{case.name} accepted: {out}"
    else:
        assert_one_located_line(err, "train")
        assert not (tmp_path / "v" / "spm.model").exists()


@pytest.mark.parametrize("argv", [["--vocab-size", "0"], ["--character-coverage", "2"], ["--seed", "-1"],
                                  ["--num-threads", "0"]])
def test_vocab_refuses_invalid_options(tmp_path, capsys, built_examples, argv):
    rc, _, err = run(["vocab", "--examples-dir", built_examples, "--output", tmp_path / "m.model", *argv], capsys)
    assert rc == 2 and err.count("\n") == 1 and argv[0] in err, err


def _predictions(n: int, *, start: int = 0) -> list[dict]:
    return [{"example_id": f"u/{i}", "target": f"the target {i} words", "prediction": f"a guess {i} words"}
            for i in range(start, start + n)]


COMPARE_CASES = [c for c in jsonl_cases() if c.expect == "bad" and c.name in (
    "malformed_json", "deep_json", "not_an_object", "invalid_utf8", "lone_surrogate", "raw_nul", "int_over_64_bits",
    "nan", "truncated_gzip", "not_gzip", "gzip_garbage")]


@pytest.mark.parametrize("case", COMPARE_CASES, ids=lambda c: c.name)
def test_compare_over_hostile_prediction_files(tmp_path, capsys, case):
    good = tmp_path / "a.jsonl"
    good.write_text("".join(json.dumps(p) + "\n" for p in _predictions(6)))
    bad = tmp_path / case.filename
    if case.filename.endswith(".gz"):
        bad.write_bytes(case.data)
    else:
        bad.write_bytes(b"".join(json.dumps(p).encode() + b"\n" for p in _predictions(6))[:-1] + b"\n"
                        + case.data.splitlines()[2] + b"\n")
    rc, _, err = run(["compare", good, bad], capsys)
    assert rc == 2
    assert_one_located_line(err, case.filename)


@pytest.mark.parametrize("argv", [["--alpha", "0"], ["--alpha", "nan"], ["--alpha", "1.5"]])
def test_compare_refuses_invalid_options(tmp_path, capsys, argv):
    a = tmp_path / "a.jsonl"
    a.write_text("".join(json.dumps(p) + "\n" for p in _predictions(6)))
    rc, _, err = run(["compare", a, a, *argv], capsys)
    assert rc == 2 and err.count("\n") == 1 and "--alpha" in err, err


def test_compare_missing_and_mismatched_files(tmp_path, capsys):
    a = tmp_path / "a.jsonl"
    a.write_text("".join(json.dumps(p) + "\n" for p in _predictions(6)))
    b = tmp_path / "b.jsonl"
    b.write_text("".join(json.dumps(p) + "\n" for p in _predictions(6, start=3)))
    rc, _, err = run(["compare", a, tmp_path / "missing.jsonl"], capsys)
    assert rc == 2 and "missing.jsonl" in err and err.count("\n") == 1
    rc, _, err = run(["compare", a, b], capsys)
    assert rc == 2 and "b.jsonl" in err and err.count("\n") == 1


def test_eval_retrieval_over_missing_corrupt_and_truncated_shards(tmp_path, capsys):
    from personalize_t5x import feature_names
    from personalize_t5x.io import tfrecords

    features = tmp_path / "features"
    features.mkdir()
    rc, _, err = run(["eval-retrieval", "--features-dir", features, "--output-dir", tmp_path / "r", "--splits", "test",
                      "--no-progress"], capsys)
    assert rc == 2 and "no shards match" in err and err.count("\n") == 1
    shard = features / "test.tfrecord-00000-of-00001"
    names = [feature_names.EXAMPLE_ID, feature_names.TARGET,
             *(feature_names.ranked_text_feature(s) for s in feature_names.RANKING_STRATEGIES)]
    records = [tfrecords.serialize_bytes_example({n: f"{n} {i}".encode() for n in names}) for i in range(5)]
    tfrecords.write_tfrecord(str(shard), records)
    whole = shard.read_bytes()
    for damage, expected in [(whole[:-3], "truncated data"), (whole[:30] + bytes([whole[30] ^ 1]) + whole[31:], "corrupt"),
                             (tfrecords.frame_record(b"\xff not a proto"), "not a tf.train.Example"),
                             (tfrecords.frame_record(tfrecords.serialize_bytes_example({"x": b"1"})), "feature missing")]:
        shard.write_bytes(damage)
        rc, _, err = run(["eval-retrieval", "--features-dir", features, "--output-dir", tmp_path / "r",
                          "--splits", "test", "--no-progress"], capsys)
        assert rc == 2 and expected in err, err
        assert_one_located_line(err, "test.tfrecord")
    rc, _, err = run(["eval-retrieval", "--features-dir", features, "--output-dir", tmp_path / "r",
                      "--max-examples", "0"], capsys)
    assert rc == 2 and "--max-examples" in err and err.count("\n") == 1


def test_features_refuses_an_unfinished_or_damaged_examples_folder(tmp_path, capsys, built_examples):
    """Checked before Beam starts: a missing folder, a truncated file, a missing stats.json."""
    rc, _, err = run(["features", "--examples-dir", tmp_path / "nope", "--output-dir", tmp_path / "f"], capsys)
    assert rc == 2 and "nope" in err and err.count("\n") == 1, err
    folder = tmp_path / "examples"
    shutil.copytree(built_examples, folder)
    data = (folder / "documents.jsonl.gz").read_bytes()
    (folder / "documents.jsonl.gz").write_bytes(data[: len(data) // 2])
    rc, _, err = run(["features", "--examples-dir", folder, "--output-dir", tmp_path / "f"], capsys)
    assert rc == 2 and "documents.jsonl.gz differs" in err and err.count("\n") == 1, err
    (folder / "stats.json").unlink()
    rc, _, err = run(["features", "--examples-dir", folder, "--output-dir", tmp_path / "f"], capsys)
    assert rc == 2 and "no stats.json" in err, err
    rc, _, err = run(["features", "--examples-dir", built_examples, "--output-dir", tmp_path / "f",
                      "--examples-per-shard", "0"], capsys)
    assert rc == 2 and "--examples-per-shard" in err and err.count("\n") == 1, err
    assert not (tmp_path / "f").exists()


def test_every_format_has_cases():
    assert set(FORMAT_CASES) == {"jsonl", "amazon", "reddit", "longlamp", "stackexchange", "mbox"}
    assert all(len(make()) >= 5 for make in FORMAT_CASES.values())
    assert GOOD >= 2


def test_every_command_refuses_an_output_under_a_file_in_one_line(tmp_path, capsys, built_examples):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    predictions = tmp_path / "p.jsonl"
    predictions.write_text("".join(json.dumps(p) + "\n" for p in _predictions(6)))
    for argv in (
        ["vocab", "--examples-dir", built_examples, "--output", a_file / "spm.model", "--vocab-size", "60"],
        ["vocab", "--examples-dir", built_examples, "--output", built_examples, "--vocab-size", "60"],
        ["features", "--examples-dir", built_examples, "--output-dir", a_file / "features"],
        ["features", "--examples-dir", built_examples, "--output-dir", a_file],
        ["eval-retrieval", "--features-dir", tmp_path, "--output-dir", a_file / "r"],
        ["compare", predictions, predictions, "--json", a_file / "c.json"],
        ["corpus", "convert", "--format", "jsonl", "--input", built_examples / "documents.jsonl.gz",
         "--output", tmp_path / "ok.jsonl", "--report", a_file / "r.json"],
    ):
        rc, _, err = run(argv, capsys)
        assert rc == 2 and err.count("\n") == 1 and ("a_file" in err or str(built_examples) in err), (argv, err)
