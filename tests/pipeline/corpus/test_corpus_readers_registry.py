"""The reader registry (`readers.FORMATS`, `readers.read_corpus`) and the canonical JSONL reader."""
import gzip
import json
import pathlib
import shutil

import pytest

from personalize_t5x.pipeline.corpus import readers
from personalize_t5x.errors import InputError, StageReport
from personalize_t5x.pipeline.corpus.records import Document, write_documents

SAMPLES = pathlib.Path(__file__).parent / "samples"
SAMPLE_FOR = {
    "stackexchange": SAMPLES / "stackexchange" / "brew.stackexchange.com" / "Posts.xml",
    "amazon": SAMPLES / "amazon_2023.jsonl",
    "reddit": SAMPLES / "reddit_submissions.jsonl",
    "mbox": SAMPLES / "brewers.mbox",
    "longlamp": SAMPLES / "longlamp_product_review_user.json",
}


def test_formats():
    assert readers.FORMATS == ("jsonl", "stackexchange", "amazon", "reddit", "mbox", "longlamp")


def test_unknown_format():
    with pytest.raises(InputError) as info:
        readers.read_corpus("csv", ["in.csv"], report=StageReport())
    assert (info.value.path, info.value.line, info.value.field) == ("in.csv", 0, "format")
    assert str(info.value) == (
        "in.csv: field 'format': unknown format 'csv'; choose from jsonl, stackexchange, amazon, reddit, mbox, longlamp"
    )


def test_no_inputs_and_missing_files(tmp_path):
    with pytest.raises(InputError, match="no input files"):
        readers.read_corpus("jsonl", [], report=StageReport())
    missing = tmp_path / "missing.jsonl"
    # a missing file fails before anything is read, skip_bad or not
    with pytest.raises(InputError) as info:
        readers.read_corpus("amazon", [str(SAMPLE_FOR["amazon"]), str(missing)], report=StageReport(skip_bad=True))
    assert info.value.path == str(missing) and "no such file" in info.value.reason
    with pytest.raises(InputError, match="is a directory"):
        readers.read_corpus("mbox", [str(tmp_path)], report=StageReport())


@pytest.mark.parametrize("fmt", sorted(SAMPLE_FOR))
def test_every_format_reads_gzip_the_same(tmp_path, fmt):
    plain = SAMPLE_FOR[fmt]
    folder = tmp_path / plain.parent.name
    folder.mkdir()
    packed = folder / (plain.name + ".gz")
    with open(plain, "rb") as src, gzip.open(packed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    expected = list(readers.read_corpus(fmt, [str(plain)], report=StageReport()))
    assert expected
    assert list(readers.read_corpus(fmt, [str(packed)], report=StageReport())) == expected


@pytest.mark.parametrize("fmt", sorted(SAMPLE_FOR))
def test_every_format_counts_kept_and_streams(fmt):
    report = StageReport()
    iterator = readers.read_corpus(fmt, [str(SAMPLE_FOR[fmt])], report=report)
    first = next(iterator)
    assert isinstance(first, Document)
    rest = list(iterator)
    assert report.kept == 1 + len(rest)
    # Every Document is valid in the canonical format.
    from personalize_t5x.pipeline.corpus.records import document_from_json

    for document in [first, *rest]:
        assert document_from_json(document.to_json()) == document


@pytest.mark.parametrize("fmt", sorted(SAMPLE_FOR))
def test_converted_samples_round_trip_through_canonical_jsonl(tmp_path, fmt):
    documents = list(readers.read_corpus(fmt, [str(SAMPLE_FOR[fmt])], report=StageReport()))
    out = tmp_path / "docs.jsonl.gz"
    write_documents(out, documents)
    report = StageReport()
    assert list(readers.read_corpus("jsonl", [str(out)], report=report)) == documents
    assert report.kept == len(documents)


def canonical(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


DOC = {"user_id": "u1", "doc_id": "d1", "timestamp": 1420070400, "title": "t", "text": "body"}


def test_jsonl_reads_canonical_documents(tmp_path):
    path = canonical(tmp_path / "a.jsonl", [DOC, {**DOC, "doc_id": "d2", "title": None, "user_id": 7}])
    report = StageReport()
    documents = list(readers.read_corpus("jsonl", [path], report=report))
    assert documents == [Document("u1", "d1", 1420070400, "t", "body"), Document("7", "d2", 1420070400, "", "body")]
    assert report.kept == 2


@pytest.mark.parametrize(
    "line, field, reason",
    [
        ('{"user_id": "u1",', "<line>", "malformed JSON"),
        (json.dumps({**DOC, "doc_id": "d2", "text": "  "}), "text", "empty text"),
        (json.dumps({k: v for k, v in DOC.items() if k != "user_id"} | {"doc_id": "d2"}), "user_id", "missing"),
        (json.dumps({**DOC, "doc_id": "d2", "timestamp": 1420070400000}), "timestamp", "looks like milliseconds"),
        (json.dumps(DOC), "doc_id", "duplicate doc id"),
    ],
)
def test_jsonl_malformed_line_is_located(tmp_path, line, field, reason):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(DOC) + "\n" + line + "\n" + json.dumps({**DOC, "doc_id": "d3"}) + "\n")
    with pytest.raises(InputError) as info:
        list(readers.read_corpus("jsonl", [str(path)], report=StageReport()))
    assert (info.value.line, info.value.field) == (2, field) and reason in info.value.reason
    report = StageReport(skip_bad=True)
    assert [d.doc_id for d in readers.read_corpus("jsonl", [str(path)], report=report)] == ["d1", "d3"]
    assert sum(report.bad.values()) == 1 and report.kept == 2


def test_jsonl_invalid_utf8(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(json.dumps(DOC).encode() + b"\n" + b'{"user_id": "\xff"}\n')
    with pytest.raises(InputError) as info:
        list(readers.read_corpus("jsonl", [str(path)], report=StageReport()))
    assert info.value.line == 2 and "invalid UTF-8" in info.value.reason


def test_jsonl_duplicate_across_files(tmp_path):
    first = canonical(tmp_path / "a.jsonl", [DOC])
    second = canonical(tmp_path / "b.jsonl", [{**DOC, "doc_id": "d2"}, DOC])
    with pytest.raises(InputError) as info:
        list(readers.read_corpus("jsonl", [first, second], report=StageReport()))
    assert info.value.path == second and info.value.field == "doc_id" and first in info.value.reason
    report = StageReport(skip_bad=True)
    assert [d.doc_id for d in readers.read_corpus("jsonl", [first, second], report=report)] == ["d1", "d2"]
    assert report.kept == 2 and sum(report.bad.values()) == 1
