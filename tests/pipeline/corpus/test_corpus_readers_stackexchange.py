"""Stack Exchange Posts.xml reader, on a sample shaped like the dump and on the real dumps."""
import collections
import gzip
import html
import pathlib
import re
import shutil

import pytest

from shared_paths import require_shared
from personalize_t5x.pipeline.corpus import readers
from personalize_t5x.errors import InputError, StageReport
from personalize_t5x.pipeline.corpus.readers import stackexchange
from personalize_t5x.pipeline.corpus.records import Document

SAMPLES = pathlib.Path(__file__).parent / "samples"
SAMPLE = SAMPLES / "stackexchange" / "brew.stackexchange.com" / "Posts.xml"
SITE = "brew.stackexchange.com"

Q1_TITLE = "How should I store whole bean coffee?"
Q5_TITLE = "How fine should I grind coffee for drip & pour over?"

# The sample's rows, in file order, and what becomes of each:
#  1 question (user 4)                  -> kept
#  2 answer to 5, BEFORE its question   -> kept, released right after question 5, with its title
#  3 answer to 1                        -> kept, title of 1
#  4 answer, no OwnerUserId             -> no_owner
#  5 question (user 9)                  -> kept
#  6 tag wiki (5), Community-owned      -> post_type_5_tag_wiki
#  7 tag wiki excerpt (4)               -> post_type_4_tag_wiki_excerpt
#  8 tag wiki (5)                       -> post_type_5_tag_wiki
#  9 notice (7)                         -> post_type_7_wiki_placeholder
# 10 question, no OwnerUserId           -> no_owner
# 11 answer to 99 (not in the file)     -> kept at the end of the file, empty title
# 12 answer whose body is only an image -> empty_text
# 13 question owned by Community (-1)   -> community_user
EXPECTED = [
    Document(f"{SITE}:4", f"{SITE}:1", 1422389372, Q1_TITLE,
             "I just got a pound of microroasted coffee & want to store it.\n\nWhat temperature?\nWhat humidity?"),
    Document(f"{SITE}:8", f"{SITE}:3", 1422390005, Q1_TITLE, "Airtight, opaque, cool:\n\nno fridge\nno sunlight"),
    Document(f"{SITE}:9", f"{SITE}:5", 1422389638, Q5_TITLE, "How fine for pour-over? It's <1 mm now."),
    Document(f"{SITE}:8", f"{SITE}:2", 1422389701, Q5_TITLE,
             "Use a burr grinder; the code I use to time it:\n\nfor s in range(30):\n    grind(s)\n\nSee this guide."),
    Document(f"{SITE}:4", f"{SITE}:11", 1422691200, "", "Answer to a question not in this dump."),
]
EXPECTED_DROPS = {
    "no_owner": 2,
    "post_type_4_tag_wiki_excerpt": 1,
    "post_type_5_tag_wiki": 2,
    "post_type_7_wiki_placeholder": 1,
    "empty_text": 1,
    "community_user": 1,
}


def read(paths, skip_bad=False):
    report = StageReport(skip_bad=skip_bad)
    documents = list(readers.read_corpus("stackexchange", [str(p) for p in paths], report=report))
    return documents, report


def test_sample_documents_and_drops():
    documents, report = read([SAMPLE])
    assert documents == EXPECTED
    assert dict(report.dropped) == EXPECTED_DROPS
    assert report.kept == len(EXPECTED)
    assert not report.bad


def test_gzipped_and_named_by_stem(tmp_path):
    target = tmp_path / "brew-posts.xml.gz"
    with open(SAMPLE, "rb") as src, gzip.open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    documents, report = read([target])
    assert [d.doc_id for d in documents] == [d.doc_id.replace(SITE, "brew-posts") for d in EXPECTED]
    assert dict(report.dropped) == EXPECTED_DROPS


def test_site_name():
    assert stackexchange.site_name("/d/beer.stackexchange.com/Posts.xml") == "beer.stackexchange.com"
    assert stackexchange.site_name("/d/coffee/Posts.xml.gz") == "coffee"
    assert stackexchange.site_name("/d/beer-Posts.xml") == "beer-Posts"


def test_same_dump_twice_is_dropped_as_duplicates():
    documents, report = read([SAMPLE, SAMPLE])
    assert documents == EXPECTED
    assert report.dropped["duplicate_doc_id"] == len(EXPECTED)


def write_posts(tmp_path, rows, name="Posts.xml", prefix='<?xml version="1.0" encoding="utf-8"?>\n<posts>\n', suffix="</posts>\n"):
    folder = tmp_path / "site"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_bytes((prefix + "".join(f"  {r}\n" for r in rows) + suffix).encode("utf-8") if isinstance(rows, list) else rows)
    return path


GOOD = '<row Id="1" PostTypeId="1" CreationDate="2015-01-27T20:09:32.720" Body="&lt;p&gt;ok&lt;/p&gt;" OwnerUserId="4" Title="T" />'


@pytest.mark.parametrize(
    "row, line, field",
    [
        ('<row PostTypeId="1" CreationDate="2015-01-27T20:09:32.720" Body="x" OwnerUserId="4" />', 4, "Id"),
        ('<row Id="2" CreationDate="2015-01-27T20:09:32.720" Body="x" OwnerUserId="4" />', 4, "PostTypeId"),
        ('<row Id="2" PostTypeId="one" CreationDate="2015-01-27T20:09:32.720" Body="x" OwnerUserId="4" />', 4, "PostTypeId"),
        ('<row Id="2" PostTypeId="1" CreationDate="27/01/2015" Body="x" OwnerUserId="4" />', 4, "CreationDate"),
        ('<row Id="2" PostTypeId="1" Body="x" OwnerUserId="4" />', 4, "CreationDate"),
        ('<row Id="2" PostTypeId="2" CreationDate="2015-01-27T20:09:32.720" Body="x" OwnerUserId="4" />', 4, "ParentId"),
    ],
)
def test_malformed_row_is_located(tmp_path, row, line, field):
    path = write_posts(tmp_path, [GOOD, row, GOOD.replace('<row Id="1"', '<row Id="3"')])
    with pytest.raises(InputError) as info:
        read([path])
    assert (info.value.path, info.value.line, info.value.field) == (str(path), line, field)
    assert str(info.value).startswith(f"{path}:{line}: field '{field}': ")
    documents, report = read([path], skip_bad=True)
    assert [d.doc_id for d in documents] == ["site:1", "site:3"]
    assert sum(report.bad.values()) == 1
    assert report.bad_examples[0] == str(info.value)


def test_truncated_xml(tmp_path):
    path = write_posts(tmp_path, [GOOD, '<row Id="2" PostTypeId="1" CreationDate="2015-01-27T20:09:32.720" Body="cut'], suffix="")
    with pytest.raises(InputError) as info:
        read([path])
    assert info.value.field == "<xml>" and info.value.line == 4 and "malformed XML" in info.value.reason
    documents, report = read([path], skip_bad=True)
    assert [d.doc_id for d in documents] == ["site:1"]  # rows before the damage are kept
    assert sum(report.bad.values()) == 1


def test_invalid_utf8_is_located(tmp_path):
    head = '<?xml version="1.0" encoding="utf-8"?>\n<posts>\n  ' + GOOD + "\n"
    bad = '  <row Id="2" PostTypeId="1" CreationDate="2015-01-27T20:09:32.720" Body="caf\xe9" OwnerUserId="4" />\n'
    data = head.encode() + bad.encode("latin-1") + b"</posts>\n"
    path = write_posts(tmp_path, data)
    with pytest.raises(InputError) as info:
        read([path])
    assert info.value.line == 4 and info.value.field == "<xml>"
    documents, report = read([path], skip_bad=True)
    assert [d.doc_id for d in documents] == ["site:1"]


def test_not_a_posts_file(tmp_path):
    path = write_posts(tmp_path, '<?xml version="1.0"?>\n<comments>\n<row Id="1" PostId="1" Text="hi" />\n</comments>\n'.encode())
    with pytest.raises(InputError, match="root element is <comments>") as info:
        read([path], skip_bad=True)  # the wrong file altogether: not skippable
    assert info.value.line == 2


def test_empty_file(tmp_path):
    path = write_posts(tmp_path, b"")
    with pytest.raises(InputError) as info:
        read([path])
    assert info.value.field == "<xml>" and "no element found" in info.value.reason


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read([tmp_path / "nope.xml"])


# -- the real dumps ---------------------------------------------------------------

README_ROWS = {"beer": (2354, 663, 1572), "coffee": (592, 225, 327)}


def independent_counts(path):
    """What the reader should produce, counted from the raw XML text with regexes only."""
    raw = path.read_text(encoding="utf-8-sig")
    rows = [dict(re.findall(r'(\w+)="([^"]*)"', r)) for r in re.findall(r"<row\b[^>]*/>", raw)]
    types = collections.Counter(r["PostTypeId"] for r in rows)
    drops = collections.Counter()
    kept = []
    for r in rows:
        if r["PostTypeId"] not in ("1", "2"):
            drops[f"post_type_{r['PostTypeId']}"] += 1
        elif "OwnerUserId" not in r:
            drops["no_owner"] += 1
        elif r["OwnerUserId"] == "-1":
            drops["community_user"] += 1
        elif not re.sub(r"<[^>]*>", "", html.unescape(html.unescape(r["Body"]))).strip():
            drops["empty_text"] += 1
        else:
            kept.append(r)
    titles = {r["Id"]: html.unescape(r["Title"]) for r in rows if r["PostTypeId"] == "1"}
    return rows, types, drops, kept, titles


@pytest.mark.integration
def test_real_dumps_counts():
    paths = {site: require_shared(f"data/stackexchange/{site}/Posts.xml") for site in ("beer", "coffee")}
    documents, report = read(list(paths.values()))
    expected_drops = collections.Counter()
    expected_docs = 0
    by_id = {d.doc_id: d for d in documents}
    assert len(by_id) == len(documents)  # doc ids unique across both sites
    for site, path in paths.items():
        rows, types, drops, kept, titles = independent_counts(path)
        # The independent count agrees with the data README's table.
        assert (len(rows), types["1"], types["2"]) == README_ROWS[site]
        expected_docs += len(kept)
        for reason, count in drops.items():
            name = reason if not reason.startswith("post_type_") else stackexchange.drop_reason_for_post_type(reason.split("_")[-1])
            expected_drops[name] += count
        for r in kept:
            document = by_id[f"{site}:{r['Id']}"]
            assert document.user_id == f"{site}:{r['OwnerUserId']}"
            own_title = r.get("Title") if r["PostTypeId"] == "1" else titles.get(r["ParentId"], "")
            assert document.title == " ".join(html.unescape(own_title).split())
            assert "<p>" not in document.text and "&lt;" not in document.text
    assert len(documents) == expected_docs == report.kept
    assert report.dropped == expected_drops
    assert not report.bad
    # The README's "users with >= 5 posts" counts every owned row (tag wikis included);
    # among user writing alone (questions and answers) there are a few fewer.
    per_user = collections.Counter(d.user_id for d in documents)
    assert sum(1 for site in paths for u, n in per_user.items() if u.startswith(f"{site}:") and n >= 5) == 92 + 34


@pytest.mark.integration
def test_real_dump_answer_titles_and_times():
    path = require_shared("data/stackexchange/coffee/Posts.xml")
    documents, _ = read([path])
    first = documents[0]
    assert first == Document("coffee:4", "coffee:1", 1422389372, "How should I store whole bean coffee?",
                             "I just got a pound of microroasted, local coffee and am curious what the optimal way "
                             "to store it is (what temperature, humidity, etc)")
    answers = [d for d in documents if d.title == first.title and d.doc_id != first.doc_id]
    assert len(answers) == 3  # AnswerCount="3" on question 1
