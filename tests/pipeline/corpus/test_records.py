"""The canonical Document JSONL: round trip, byte determinism, and located errors."""
import gzip
import json

import pytest

from personalize_t5x.errors import InputError, StageReport
from personalize_t5x.pipeline.corpus.records import Document, read_documents, write_documents


def _docs():
    return [
        Document("u1", "d1", 1_420_070_400, "Title one", "Body one."),
        Document("u1", "d2", 1_420_070_500, "", "Body without title, ünïcode, 日本語."),
        Document("u2", "d3", 1_420_070_600, "T", "B"),
    ]


@pytest.mark.parametrize("name", ["docs.jsonl", "docs.jsonl.gz"])
def test_round_trip_and_byte_identical_rewrites(tmp_path, name):
    path_a, path_b = tmp_path / ("a_" + name), tmp_path / ("b_" + name)
    assert write_documents(path_a, _docs()) == 3
    write_documents(path_b, _docs())
    assert list(read_documents(path_a)) == _docs()
    assert path_a.read_bytes() == path_b.read_bytes()


def _write_lines(path, lines):
    data = b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines) + b"\n"
    path.write_bytes(gzip.compress(data) if str(path).endswith(".gz") else data)


GOOD = json.dumps({"user_id": "u", "doc_id": "ok", "timestamp": 5, "title": "t", "text": "x"})


@pytest.mark.parametrize(
    "bad_line, field, fragment",
    [
        ("{not json", "<line>", "malformed JSON"),
        (json.dumps({"user_id": "u", "doc_id": "a", "title": "t", "text": "x"}), "timestamp", "missing"),
        (json.dumps({"user_id": "u", "doc_id": "a", "timestamp": "2015", "title": "t", "text": "x"}), "timestamp", "expected an integer"),
        (json.dumps({"user_id": "u", "doc_id": "a", "timestamp": 1_420_070_400_000, "title": "t", "text": "x"}), "timestamp", "milliseconds"),
        (json.dumps({"user_id": "u", "doc_id": "a", "timestamp": 5, "title": "t", "text": "   "}), "text", "empty text"),
        (json.dumps({"user_id": "", "doc_id": "a", "timestamp": 5, "title": "t", "text": "x"}), "user_id", "non-empty"),
        (json.dumps({"user_id": "u", "doc_id": "a", "timestamp": 5, "title": 3, "text": "x"}), "title", "expected a string"),
        (b'{"user_id": "u", "doc_id": "a", "timestamp": 5, "title": "\xff", "text": "x"}', "<line>", "invalid UTF-8"),
        (GOOD, "doc_id", "duplicate doc id"),
    ],
)
def test_bad_lines_raise_located_errors_or_are_counted(tmp_path, bad_line, field, fragment):
    path = tmp_path / "docs.jsonl"
    _write_lines(path, [GOOD, bad_line, json.dumps({"user_id": "u", "doc_id": "z", "timestamp": 6, "title": "", "text": "y"})])
    with pytest.raises(InputError) as info:
        list(read_documents(path))
    error = info.value
    assert (error.path, error.line, error.field) == (str(path), 2, field)
    assert fragment in str(error)
    assert str(error).startswith(f"{path}:2: field '{field}'")
    report = StageReport(skip_bad=True)
    kept = list(read_documents(path, report=report))
    assert [d.doc_id for d in kept] == ["ok", "z"]
    assert sum(report.bad.values()) == 1 and report.kept == 2
    # Counts group by reason, not by the offending value.
    assert list(report.bad) == [f"{field}: {str(error).split(': ')[2].split(':')[0]}"]
    assert report.bad_examples == [str(error)]


def test_missing_file_is_a_located_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        list(read_documents(tmp_path / "absent.jsonl"))
