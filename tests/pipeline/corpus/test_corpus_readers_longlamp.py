"""LongLaMP reader: review / abstract / topic / email layouts, arrays and JSON lines."""
import gzip
import json
import pathlib

import pytest

from personalize_t5x.pipeline.corpus import cleaning, readers
from personalize_t5x.errors import InputError, StageReport
from personalize_t5x.pipeline.corpus.readers import _common, longlamp
from personalize_t5x.pipeline.corpus.records import Document

SAMPLES = pathlib.Path(__file__).parent / "samples"
JAN_1_2011 = 1293840000
JAN_1_2009 = 1230768000


def h(text):
    return "h" + _common.short_hash(text)


def read(paths, skip_bad=False):
    report = StageReport(skip_bad=skip_bad)
    documents = list(readers.read_corpus("longlamp", [str(p) for p in paths], report=report))
    return documents, report


def test_product_review_array_without_dates():
    documents, report = read([SAMPLES / "longlamp_product_review_user.json"])
    user = "A2ZQ7TBQH5LJ6"
    target = "The grind is even at every setting I tried.\n\nIt is loud, though: wear ear plugs."
    assert documents == [
        # undated profile items: the user's synthetic clock, 0, 1, ... in list order
        Document(user, f"{user}:{h('Pours slowly and evenly. Handle stays cool.')}", 0, "Best kettle I have owned",
                 "Pours slowly and evenly. Handle stays cool."),
        Document(user, f"{user}:{h('Does the job.')}", 1, "Fine", "Does the job."),
        # the target: after every profile item; title = the summary stated in the prompt
        Document(user, f"{user}:{h(target)}", 2, "Solid grinder, loud motor", target),
        # a record without an output still contributes its profile
        Document("A3NOTARGET", f"A3NOTARGET:{h('Arrived chipped.')}", 0, "Chipped", "Arrived chipped."),
    ]
    assert dict(report.dropped) == {"empty_text": 1, "no_target": 1}
    assert report.kept == 4


def test_abstract_generation_jsonl_with_years():
    documents, report = read([SAMPLES / "longlamp_abstract_generation_user.jsonl"])
    user = "Jane Q. Researcher"
    target = "We study flocculation of lager yeast during cold crashing and find that it depends on calcium."
    assert documents == [
        # year -> 1 January, plus the position in the list so one year's papers keep their order
        Document(user, f"{user}:53e9a8b1b7602d97031f7b1c", JAN_1_2011 + 0, "Hop Oil Retention", "We measure hop oil retention in dry-hopped ales."),
        Document(user, f"{user}:53e9b0c2b7602d9703b6a1f0", JAN_1_2009 + 1, "Mash pH Control", "A survey of mash pH control."),
        Document(user, f"{user}:53e9aaaab7602d97031fffff", JAN_1_2011 + 2, "Hop Oils Revisited", "Second paper of 2011 on hop oils."),
        Document(user, f"{user}:{h(target)}", JAN_1_2011 + 3, "Yeast Flocculation Under Cold Stress", target),
    ]
    assert not report.dropped


def test_topic_writing_pretty_array_temporal_repeat():
    documents, report = read([SAMPLES / "longlamp_topic_writing_user.json"])
    user = "throwaway_brewer"
    first = "Boil-over everywhere. Lesson learned: watch the hot break."
    assert documents == [
        Document(user, f"{user}:3xk2ab", 0, "Bottling day", "Bottled my stout today, fingers crossed."),
        Document(user, f"{user}:3xk9zz", 1, "Beginner kit", "Which kit should a beginner buy?"),
        Document(user, f"{user}:{h(first)}", 2, "My first brew day went wrong", first),
        # the second record repeats an item and holds the first target in its profile:
        # both are dropped as already read, and its own target comes after them
        Document(user, f"{user}:{h('Everything went to plan this time.')}", 3, "Second brew day went right",
                 "Everything went to plan this time."),
    ]
    assert dict(report.dropped) == {"duplicate_doc_id": 2}


def test_email_layout_with_dates():
    documents, report = read([SAMPLES / "longlamp_email.jsonl"])
    assert documents == [
        Document("u7", "u7:6001", 988588800, "Budget", "Numbers attached."),  # 2001-04-30
        Document("u7", "u7:6002", 988720200, "Lunch", "Pizza at noon?"),  # 2001-05-01T12:30:00
        Document("u7", "u7:target:600", 988848000, "", "Hi team, the audit is moved to Friday. Please send your numbers by Thursday."),
    ]
    assert not report.dropped


def test_every_profile_item_precedes_its_target():
    for name in ("longlamp_product_review_user.json", "longlamp_abstract_generation_user.jsonl",
                 "longlamp_topic_writing_user.json", "longlamp_email.jsonl"):
        path = SAMPLES / name
        records = json.loads(path.read_text()) if name.endswith(".json") else [json.loads(x) for x in path.read_text().splitlines()]
        documents, _ = read([path])
        by_text = {d.text: d for d in documents}
        for record in records:
            if not record.get("output"):
                continue
            target = by_text[cleaning.normalize_whitespace(record["output"])]
            for item in record["profile"]:
                text = next((item[k] for k in longlamp.TEXT_FIELDS if item.get(k)), "")
                if text:
                    assert by_text[cleaning.normalize_whitespace(text)].timestamp < target.timestamp, (name, item)


@pytest.mark.parametrize(
    "prompt, title",
    [
        ('Generate an abstract for the title "Yeast: A "Study"" using the following items: 1. a', 'Yeast: A "Study"'),
        ('Generate the review text written by a reviewer who has given an overall rating of "4.0" for a product with '
         'description "A "big" mug". The summary of the review text is "Nice  mug".', "Nice mug"),
        ("Generate the content for a reddit post My first brew", "My first brew"),
        ('Generate the content for a Reddit post "Quoted summary"', "Quoted summary"),
        ("Complete the following email: Hi", ""),
    ],
)
def test_title_from_input(prompt, title):
    assert longlamp.title_from_input(prompt) == title


def test_gzipped_array_and_user_fallbacks(tmp_path):
    path = tmp_path / "lamp.json.gz"
    records = [
        {"id": "310", "input": "x", "output": "target text", "profile": [{"id": "3101", "text": "past", "title": "t"}]},
        {"reviewerID": "R9", "output": "other", "profile": "[{\"reviewText\": \"as a JSON string\"}]"},
    ]
    path.write_bytes(gzip.compress(json.dumps(records).encode()))
    documents, _ = read([path])
    assert [(d.user_id, d.doc_id, d.timestamp) for d in documents] == [
        ("record:310", "record:310:3101", 0),
        ("record:310", "record:310:target:310", 1),
        ("R9", f"R9:{h('as a JSON string')}", 0),
        ("R9", f"R9:{h('other')}", 1),
    ]


GOOD = {"user_id": "u1", "output": "target", "profile": [{"text": "past"}]}


@pytest.mark.parametrize(
    "bad, field, reason",
    [
        ({"output": "t", "profile": []}, "user_id", "missing"),
        ({**GOOD, "user_id": "u2", "profile": {"text": "x"}}, "profile", "not a list: dict"),
        ({**GOOD, "user_id": "u2", "profile": ["x"]}, "profile", "not a list of objects: item 0 is a str"),
        ({**GOOD, "user_id": "u2", "output": 5}, "output", "expected a string"),
        ({**GOOD, "user_id": "u2", "profile": [{"text": "x", "year": "MMXI"}]}, "year", "not a year from 1970 on: 'MMXI' (profile item 0)"),
        ({**GOOD, "user_id": "u2", "profile": [{"text": "x", "date": "30/04/2001"}]}, "date", "not an ISO 8601 date"),
        ({**GOOD, "user_id": "u2", "date": 988588800000}, "date", "looks like milliseconds"),
    ],
)
def test_malformed_record_jsonl(tmp_path, bad, field, reason):
    path = tmp_path / "lamp.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (GOOD, bad, {**GOOD, "user_id": "u3"})) + "\n")
    with pytest.raises(InputError) as info:
        read([path])
    assert (info.value.path, info.value.line, info.value.field) == (str(path), 2, field)
    assert reason in info.value.reason
    documents, report = read([path], skip_bad=True)
    assert sorted({d.user_id for d in documents}) == ["u1", "u3"]  # the bad record yields nothing
    assert sum(report.bad.values()) == 1


def test_malformed_record_in_pretty_array_is_located_by_line(tmp_path):
    path = tmp_path / "lamp.json"
    path.write_text(json.dumps([GOOD, {"output": "t"}, {**GOOD, "user_id": "u3"}], indent=2))
    lines = path.read_text().splitlines()
    start_of_second = [i for i, text in enumerate(lines) if text == "  {"][1] + 1
    with pytest.raises(InputError) as info:
        read([path])
    assert (info.value.line, info.value.field) == (start_of_second, "user_id")
    assert info.value.reason.endswith(" (array element 1)")
    documents, _ = read([path], skip_bad=True)
    assert sorted({d.user_id for d in documents}) == ["u1", "u3"]


@pytest.mark.parametrize(
    "data, line, reason",
    [
        (b'[{"user_id": "u1", "output": "t"},\n {"user_id": "u2", "output": "t" "x"},\n {"user_id": "u3", "output": "t"}]', 2, "malformed JSON: array element 1: "),
        (b'[{"user_id": "u1", "output": "t"},\n {"user_id": "u2", "output": "t"}', 2, "unterminated JSON array"),
        (b'[{"user_id": "u1", "output": "t"}\n {"user_id": "u2", "output": "t"}]', 2, "expected ',' or ']'"),
        (b'[{"user_id": "u1", "output": "t"},\n {"user_id": "u2", "output": "caf\xe9"}]', 2, "invalid UTF-8"),
        (b'[{"user_id": "u1", "output": "t"}] []', 1, "extra data after the JSON array"),
    ],
)
def test_broken_array(tmp_path, data, line, reason):
    path = tmp_path / "lamp.json"
    path.write_bytes(data)
    with pytest.raises(InputError) as info:
        read([path])
    assert info.value.line == line and reason in info.value.reason
    documents, report = read([path], skip_bad=True)
    # what came before the damage is kept; the rest of the array cannot be trusted
    assert documents[0].user_id == "u1" and sum(report.bad.values()) == 1


def test_array_streams_across_read_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(_common, "_READ_CHUNK", 7)
    records = [{"user_id": f"u{i}", "output": "é" * (i + 1) + " done", "profile": [{"text": "past " + "x" * i, "year": 2000 + i}]}
               for i in range(40)]
    path = tmp_path / "lamp.json"
    path.write_text(json.dumps(records, indent=1, ensure_ascii=False), encoding="utf-8")
    documents, report = read([path])
    assert len(documents) == 80 and report.kept == 80
    assert [d.user_id for d in documents[::2]] == [f"u{i}" for i in range(40)]


def test_skipped_records_are_counted_under_stable_keys(tmp_path):
    """The report counts skips by "field: reason up to its first colon": locations and
    values come after it, so the stats gather one count per kind of problem."""
    path = tmp_path / "lamp.json"
    records = [{"output": "t"}, {"output": "t"}, {**GOOD, "profile": [{"text": "x", "year": "MMXI"}]},
               {**GOOD, "profile": [{"text": "x", "year": "1850"}]}]
    path.write_text(json.dumps(records))
    _, report = read([path], skip_bad=True)
    assert dict(report.bad) == {"user_id: missing": 2, "year: not a year from 1970 on": 2}
