"""Amazon reviews reader: the 2014, 2018 and 2023 JSON-lines forms."""
import json
import pathlib

import pytest

from personalize_t5x.pipeline.corpus import readers
from personalize_t5x.errors import InputError, StageReport
from personalize_t5x.pipeline.corpus.records import Document

SAMPLES = pathlib.Path(__file__).parent / "samples"


def read(paths, skip_bad=False):
    report = StageReport(skip_bad=skip_bad)
    documents = list(readers.read_corpus("amazon", [str(p) for p in paths], report=report))
    return documents, report


def test_2014_form():
    documents, report = read([SAMPLES / "amazon_2014.jsonl"])
    assert documents == [
        Document("A2SUAM1J3GNN3B", "A2SUAM1J3GNN3B:0000013714:1252800000", 1252800000, "Heavenly Highway Hymns",
                 "I bought this hymnal for my husband, who plays the piano at church. It has all the old favorites & the print is large."),
        # no unixReviewTime: "04 2, 2013" read as 2013-04-02 00:00 UTC
        Document("A1RSDE90N6RSZF", "A1RSDE90N6RSZF:0000031852:1364860800", 1364860800, "Nice", "Good songs, worn binding."),
    ]
    assert dict(report.dropped) == {"empty_text": 1}
    assert report.kept == 2


def test_2018_form_duplicates_and_missing_text():
    documents, report = read([SAMPLES / "amazon_2018.jsonl"])
    assert documents == [
        Document("A3CIUOJXQ5VDQ2", "A3CIUOJXQ5VDQ2:B0000530HU:1472688000", 1472688000, "Five Stars", "As advertised.\nReasonably priced."),
        Document("A2UEO5XR3598GI", "A2UEO5XR3598GI:B00006L9LC:1486425600", 1486425600, "OK", 'Smells like "fresh" mint.'),
    ]
    assert dict(report.dropped) == {"duplicate_doc_id": 1, "empty_text": 1}


def test_2023_form_milliseconds_and_br():
    documents, report = read([SAMPLES / "amazon_2023.jsonl"])
    assert documents == [
        Document("AGKHLEW2SOWHNMFQIJGBECAF7INQ", "AGKHLEW2SOWHNMFQIJGBECAF7INQ:B00YQ6X8EO:1588687728923", 1588687728,
                 "Lovely scent, not overpowering", "This spray is really nice.\nIt smells good and lasts all day.\n\nWould buy again."),
        Document("AGKHLEW2SOWHNMFQIJGBECAF7INQ", "AGKHLEW2SOWHNMFQIJGBECAF7INQ:B081TJ8YS3:1588615855070", 1588615855,
                 "Works", "Does what it says."),
    ]
    assert dict(report.dropped) == {"empty_text": 1}


def test_forms_mixed_in_one_file(tmp_path):
    lines = (SAMPLES / "amazon_2023.jsonl").read_text().splitlines()[:1] + (SAMPLES / "amazon_2014.jsonl").read_text().splitlines()[:1]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    documents, _ = read([path])
    assert [d.user_id for d in documents] == ["AGKHLEW2SOWHNMFQIJGBECAF7INQ", "A2SUAM1J3GNN3B"]


GOOD_2014 = {"reviewerID": "R1", "asin": "A1", "reviewText": "fine", "summary": "s", "unixReviewTime": 1400000000}
GOOD_2023 = {"user_id": "U1", "asin": "B1", "parent_asin": "B1", "title": "t", "text": "fine", "timestamp": 1588687728923}


@pytest.mark.parametrize(
    "bad_line, field, reason",
    [
        ('{"reviewerID": "R2", "asin": ', "<line>", "malformed JSON"),
        ("[1, 2]", "<record>", "expected a JSON object"),
        (json.dumps({"asin": "A1", "reviewText": "x", "unixReviewTime": 1}), "reviewerID", "missing"),
        (json.dumps({**GOOD_2014, "asin": None}), "asin", "missing"),
        (json.dumps({**GOOD_2014, "unixReviewTime": None, "reviewTime": None}), "unixReviewTime", "missing"),
        (json.dumps({**GOOD_2014, "unixReviewTime": 1400000000000}), "unixReviewTime", "looks like milliseconds"),
        (json.dumps({**GOOD_2014, "unixReviewTime": "soon"}), "unixReviewTime", "not seconds since the epoch"),
        (json.dumps({**GOOD_2014, "reviewText": 5}), "reviewText", "expected a string"),
        (json.dumps({**GOOD_2023, "timestamp": 1588687728}), "timestamp", "looks like seconds"),
        (json.dumps({**GOOD_2023, "timestamp": None}), "timestamp", "missing"),
        (json.dumps({**GOOD_2023, "asin": None, "parent_asin": None}), "asin", "missing"),
    ],
)
def test_malformed_line_is_located(tmp_path, bad_line, field, reason):
    path = tmp_path / "reviews.jsonl"
    path.write_text("\n".join([json.dumps(GOOD_2014), bad_line, json.dumps(GOOD_2023)]) + "\n")
    with pytest.raises(InputError) as info:
        read([path])
    assert (info.value.path, info.value.line, info.value.field) == (str(path), 2, field)
    assert reason in info.value.reason
    documents, report = read([path], skip_bad=True)
    assert [d.user_id for d in documents] == ["R1", "U1"]
    assert sum(report.bad.values()) == 1 and report.kept == 2


def test_invalid_utf8_is_located(tmp_path):
    path = tmp_path / "reviews.jsonl"
    path.write_bytes(json.dumps(GOOD_2014).encode() + b"\n\n" + b'{"reviewerID": "R\xff"}\n')
    with pytest.raises(InputError) as info:
        read([path])
    assert (info.value.line, info.value.field) == (3, "<line>")
    assert "invalid UTF-8" in str(info.value)
    documents, report = read([path], skip_bad=True)
    assert len(documents) == 1 and sum(report.bad.values()) == 1
