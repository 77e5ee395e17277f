"""Reddit (Pushshift JSON lines) reader: posts, comments, deleted and removed items."""
import json
import pathlib

import pytest

from personalize_t5x.pipeline.corpus import readers
from personalize_t5x.errors import InputError, StageReport
from personalize_t5x.pipeline.corpus.records import Document

SAMPLES = pathlib.Path(__file__).parent / "samples"
COMMENTS = SAMPLES / "reddit_comments.jsonl"
POSTS = SAMPLES / "reddit_submissions.jsonl"
TITLE = "Storing hops: fridge & or freezer?"

# Comments file first: its first comment's thread title is only known from the posts file.
EXPECTED = [
    # the quoted line ("&gt; best way ...") is someone else's text and goes
    Document("hopsandbarley", "t1_cnas8zv", 1420071000, TITLE, "Vacuum-sealed, in the freezer. Works for me & my club."),
    # its thread's post is not in the input: no title
    Document("yeastie", "t1_cnasz01", 1420072000, "", "Thread I never saw the post of."),
    Document("yeastie", "t3_2qyr1a", 1420070668, TITLE, "Bought a pound of Citra & Mosaic.\n\nFridge or freezer?"),
]
EXPECTED_DROPS = {
    "deleted_author": 2,  # a "[deleted]" comment author, a null post author
    "removed_body": 2,  # a "[removed]" comment body, a "[removed]" self text
    "empty_text": 1,  # a link post (no self text)
}


def read(paths, skip_bad=False):
    report = StageReport(skip_bad=skip_bad)
    documents = list(readers.read_corpus("reddit", [str(p) for p in paths], report=report))
    return documents, report


def test_comments_before_posts():
    documents, report = read([COMMENTS, POSTS])
    assert documents == EXPECTED
    assert dict(report.dropped) == EXPECTED_DROPS
    assert report.kept == 3


def test_posts_before_comments():
    documents, report = read([POSTS, COMMENTS])
    assert documents == [EXPECTED[2], EXPECTED[0], EXPECTED[1]]
    assert dict(report.dropped) == EXPECTED_DROPS


def test_one_mixed_file(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text(COMMENTS.read_text() + POSTS.read_text())
    documents, report = read([path])
    assert documents == EXPECTED


def test_comment_without_its_post_has_no_title():
    documents, _ = read([COMMENTS])
    assert [d.title for d in documents] == ["", ""]


def test_only_quotes_is_empty(tmp_path):
    path = tmp_path / "rc.jsonl"
    path.write_text(json.dumps({"author": "a", "body": "&gt; all quote", "created_utc": 1, "id": "c1", "link_id": "t3_x"}) + "\n")
    documents, report = read([path])
    assert documents == [] and dict(report.dropped) == {"empty_text": 1}


def test_repeated_item_is_dropped(tmp_path):
    path = tmp_path / "rc.jsonl"
    line = json.dumps({"author": "a", "body": "hi", "created_utc": 1420070400, "id": "c1", "link_id": "t3_x"})
    path.write_text(line + "\n" + line + "\n")
    documents, report = read([path])
    assert len(documents) == 1 and dict(report.dropped) == {"duplicate_doc_id": 1}


GOOD = {"author": "a", "body": "hi", "created_utc": 1420070400, "id": "c1", "link_id": "t3_x"}


@pytest.mark.parametrize(
    "bad_line, field, reason",
    [
        ('{"author": "a", "body": "x"', "<line>", "malformed JSON"),
        (json.dumps({"author": "a", "created_utc": 1, "id": "c2"}), "body", "missing"),
        (json.dumps({**GOOD, "id": None}), "id", "missing"),
        (json.dumps({**GOOD, "id": "c2", "created_utc": None}), "created_utc", "missing"),
        (json.dumps({**GOOD, "id": "c2", "created_utc": "yesterday"}), "created_utc", "not seconds since the epoch"),
        (json.dumps({**GOOD, "id": "c2", "created_utc": 1420070400000}), "created_utc", "looks like milliseconds"),
        (json.dumps({**GOOD, "id": "c2", "author": 7}), "author", "expected a string"),
        (json.dumps({**GOOD, "id": "c2", "body": ["x"]}), "body", "expected a string"),
        (json.dumps({"author": "a", "title": "t", "selftext": "x", "created_utc": 1}), "id", "missing"),
    ],
)
def test_malformed_line_is_located(tmp_path, bad_line, field, reason):
    path = tmp_path / "rc.jsonl"
    path.write_text("\n".join([json.dumps(GOOD), bad_line, json.dumps({**GOOD, "id": "c3"})]) + "\n")
    with pytest.raises(InputError) as info:
        read([path])
    assert (info.value.path, info.value.line, info.value.field) == (str(path), 2, field)
    assert reason in info.value.reason
    documents, report = read([path], skip_bad=True)
    assert [d.doc_id for d in documents] == ["t1_c1", "t1_c3"]
    assert sum(report.bad.values()) == 1


def test_created_utc_as_string_or_float():
    from personalize_t5x.pipeline.corpus.readers import reddit

    report = StageReport()
    for value in ("1420070400", 1420070400, 1420070400.0, "1420070400.0"):
        document = reddit.convert({**GOOD, "created_utc": value}, "p", 1, report, {})
        assert document.timestamp == 1420070400


def test_invalid_utf8_is_located(tmp_path):
    path = tmp_path / "rc.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"author": "\xc3\x28"}\n')
    with pytest.raises(InputError) as info:
        read([path])
    assert (info.value.line, info.value.field) == (2, "<line>") and "invalid UTF-8" in info.value.reason
    documents, report = read([path], skip_bad=True)
    assert len(documents) == 1 and sum(report.bad.values()) == 1
