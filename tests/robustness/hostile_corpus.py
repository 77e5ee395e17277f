"""A generated hostile corpus: for every input format, files a hostile tester would feed it.

Each case is a file (name + bytes) that holds GOOD well-formed records and, unless the
case is benign, one hostile record (or a file-level fault such as a truncated gzip
stream). `expect` says what the rule requires:

- "bad": exit 2 with one line naming file, line and field; with --skip-bad, exit 0
  with the bad record counted (never a silent success);
- "ok": the input is odd but legal (a BOM, CRLF, a huge document, fractional seconds,
  an escaped NUL): exit 0 and all GOOD records kept.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
from typing import Callable

GOOD = 4  # good records around each hostile one


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    filename: str
    data: bytes
    expect: str  # "bad" or "ok"
    kept: int = GOOD  # documents a --skip-bad (or benign) run must keep, at least


def _lines(records: list) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records)


def _json_cases(fmt: str, good: Callable[[int], dict], specific: list[tuple[str, object, str]]) -> list[Case]:
    """JSON-lines hostility common to every JSON format, plus the format's own records."""
    g = [good(i) for i in range(GOOD)]
    ext = "jsonl"

    def around(bad, expect="bad", kept=GOOD):
        return _lines(g[:2] + [bad] + g[2:])

    cases = [
        Case("malformed_json", f"{fmt}-malformed.{ext}", around(b'{"user_id": "u", '), "bad"),
        Case("deep_json", f"{fmt}-deep.{ext}", around(b"[" * 100_000 + b"]" * 100_000), "bad"),
        Case("deep_object", f"{fmt}-deepobj.{ext}", around(b'{"a":' * 50_000 + b"1" + b"}" * 50_000), "bad"),
        Case("not_an_object", f"{fmt}-array.{ext}", around(b"[1, 2, 3]"), "bad"),
        Case("invalid_utf8", f"{fmt}-utf8.{ext}", around(json.dumps(good(90)).encode().replace(b"9", b"\xff\xfe", 1)), "bad"),
        Case("lone_surrogate", f"{fmt}-surrogate.{ext}", around(json.dumps(good(91)).replace("9", "\\ud800", 1).encode()), "bad"),
        Case("raw_nul", f"{fmt}-nul.{ext}", around(json.dumps(good(92)).encode().replace(b"9", b"\x00", 1)), "bad"),
        Case("int_over_64_bits", f"{fmt}-bigint.{ext}", around(json.dumps({**good(93), "extra": 2 ** 70}).encode()), "bad"),
        Case("nan", f"{fmt}-nan.{ext}", around(json.dumps(good(94)).encode()[:-1] + b', "x": NaN}'), "bad"),
        Case("bom", f"{fmt}-bom.{ext}", b"\xef\xbb\xbf" + _lines(g), "ok"),
        Case("crlf", f"{fmt}-crlf.{ext}", _lines(g).replace(b"\n", b"\r\n"), "ok"),
        Case("blank_lines", f"{fmt}-blank.{ext}", _lines(g).replace(b"\n", b"\n\n  \n"), "ok"),
        Case("truncated_gzip", f"{fmt}-cut.{ext}.gz", gzip.compress(_lines(g * 2000))[:-40], "bad", kept=0),
        Case("not_gzip", f"{fmt}-plain.{ext}.gz", _lines(g), "bad", kept=0),
        Case("gzip_garbage", f"{fmt}-garbage.{ext}.gz", b"\x1f\x8b\x08\x00" + bytes(range(256)) * 8, "bad", kept=0),
    ]
    for name, bad, expect in specific:
        if expect == "ok":
            cases.append(Case(name, f"{fmt}-{name}.{ext}", _lines(g + [bad]), "ok", kept=GOOD + 1))
        else:
            cases.append(Case(name, f"{fmt}-{name}.{ext}", around(bad), expect))
    return cases


def jsonl_good(i: int) -> dict:
    return {"user_id": f"u{i % 2}", "doc_id": f"d{i}", "timestamp": 1420070400 + i, "title": "t", "text": f"body {i}"}


def jsonl_cases() -> list[Case]:
    huge = {**jsonl_good(50), "text": "word " * 4_000_000}  # a 20 MB document
    return _json_cases("jsonl", jsonl_good, [
        ("year_9999", {**jsonl_good(60), "timestamp": 253402214400}, "bad"),
        ("timestamp_over_64_bits", {**jsonl_good(61), "timestamp": 2 ** 70}, "bad"),
        ("timestamp_string", {**jsonl_good(62), "timestamp": "yesterday"}, "bad"),
        ("text_is_a_list", {**jsonl_good(63), "text": ["a"]}, "bad"),
        ("user_is_an_object", {**jsonl_good(64), "user_id": {"a": 1}}, "bad"),
        ("empty_text", {**jsonl_good(65), "text": "   "}, "bad"),
        ("duplicate_doc_id", jsonl_good(0), "bad"),
        ("fractional_seconds", {**jsonl_good(66), "timestamp": 1420070400.75}, "ok"),
        ("escaped_nul", {**jsonl_good(67), "text": "a\u0000b"}, "ok"),
        ("huge_document", huge, "ok"),
    ])


def amazon_good(i: int) -> dict:
    return {"reviewerID": f"R{i % 2}", "asin": f"A{i}", "reviewText": f"fine {i}", "summary": "s",
            "unixReviewTime": 1400000000 + i}


def amazon_cases() -> list[Case]:
    return _json_cases("amazon", amazon_good, [
        ("timestamp_1e17_ms", {"user_id": "U1", "asin": "B1", "title": "t", "text": "x", "timestamp": 10 ** 17}, "bad"),
        ("year_9999", {**amazon_good(60), "unixReviewTime": 253402214400}, "bad"),
        ("text_is_a_number", {**amazon_good(61), "reviewText": 5}, "bad"),
        ("fractional_seconds", {**amazon_good(62), "unixReviewTime": 1400000000.5}, "ok"),
    ])


def reddit_good(i: int) -> dict:
    return {"author": f"a{i % 2}", "body": f"hi {i}", "created_utc": 1420070400 + i, "id": f"c{i}", "link_id": "t3_x"}


def reddit_cases() -> list[Case]:
    return _json_cases("reddit", reddit_good, [
        ("year_9999", {**reddit_good(60), "created_utc": 253402214400}, "bad"),
        ("timestamp_over_64_bits", {**reddit_good(61), "created_utc": 2 ** 70}, "bad"),
        ("body_is_a_list", {**reddit_good(62), "body": []}, "bad"),
        ("fractional_seconds", {**reddit_good(63), "created_utc": 1420070400.5}, "ok"),
    ])


def longlamp_good(i: int) -> dict:
    return {"id": f"r{i}", "user_id": f"u{i}", "output": f"target {i}", "profile": [{"id": f"p{i}", "text": f"past {i}"}]}


def longlamp_cases() -> list[Case]:
    cases = _json_cases("longlamp", longlamp_good, [
        ("year_9999", {**longlamp_good(60), "date": "9999-12-31T00:00:00"}, "bad"),
        ("profile_item_year_9999", {**longlamp_good(61), "profile": [{"text": "p", "date": "9999-12-31"}]}, "bad"),
        ("profile_is_a_string", {**longlamp_good(62), "profile": "x"}, "bad"),
    ])
    g = [longlamp_good(i) for i in range(GOOD)]

    def array(bad: bytes) -> bytes:  # the JSON-array form LongLaMP ships; a bad element ends the file
        return b"[\n" + b",\n".join([json.dumps(r).encode() for r in g] + [bad]) + b"\n]\n"

    for name, bad in [("array_deep", b"[" * 100_000 + b"]" * 100_000),
                      ("array_lone_surrogate", json.dumps(longlamp_good(80)).replace("8", "\\ud800", 1).encode()),
                      ("array_nan", json.dumps(longlamp_good(81)).encode()[:-1] + b', "x": NaN}'),
                      ("array_int_over_64_bits", json.dumps({**longlamp_good(82), "x": 2 ** 70}).encode()),
                      ("array_year_9999", json.dumps({**longlamp_good(83), "date": "9999-12-31"}).encode()),
                      ("array_truncated", array(b"{}")[:-20])]:
        truncated = name == "array_truncated"  # cuts the last good record too
        cases.append(Case(name, f"longlamp-{name}.json", bad if truncated else array(bad), "bad",
                          kept=GOOD - 1 if truncated else GOOD))
    cases.append(Case("array_bom", "longlamp-array-bom.json", b"\xef\xbb\xbf" + array(json.dumps(longlamp_good(84)).encode()),
                      "ok", kept=GOOD + 1))
    # LongLaMP records hold two documents each (target + one profile item).
    return [dataclasses.replace(c, kept=2 * c.kept) for c in cases]


def _posts(rows: list[str], *, header: str = '<?xml version="1.0" encoding="utf-8"?>\n') -> bytes:
    return (header + "<posts>\n" + "".join(f"  {r}\n" for r in rows) + "</posts>\n").encode("utf-8")


def _row(i: int, **attrs) -> str:
    values = {"Id": str(i), "PostTypeId": "1", "CreationDate": "2015-01-27T20:09:32.720",
              "Body": f"&lt;p&gt;ok {i}&lt;/p&gt;", "OwnerUserId": str(4 + i % 2), "Title": f"T{i}", **attrs}
    return "<row " + " ".join(f'{k}="{v}"' for k, v in values.items()) + " />"


def stackexchange_cases() -> list[Case]:
    g = [_row(i) for i in range(1, GOOD + 1)]

    def around(bad: str) -> list[str]:
        return g[:2] + [bad] + g[2:]

    bomb = ('<?xml version="1.0"?>\n<!DOCTYPE posts [<!ENTITY a "aaaaaaaaaa">'
            + "".join(f'<!ENTITY {chr(98 + k)} "{("&" + chr(97 + k) + ";") * 10}">' for k in range(8)) + "]>\n")
    return [
        Case("year_9999", "se-9999.xml", _posts(around(_row(90, CreationDate="9999-12-31T00:00:00.000"))), "bad"),
        Case("bad_date", "se-date.xml", _posts(around(_row(91, CreationDate="soon"))), "bad"),
        Case("malformed_xml", "se-malformed.xml", _posts(around('<row Id="92" Body="x"')), "bad", kept=2),
        Case("raw_nul", "se-nul.xml", _posts(around(_row(93)).copy()).replace(b"ok 93", b"ok \x00"), "bad", kept=2),
        Case("invalid_utf8", "se-utf8.xml", _posts(around(_row(94))).replace(b"ok 94", b"ok \xff"), "bad", kept=2),
        Case("entity_bomb", "se-bomb.xml", _posts(g + [_row(95, Body="&i;")], header=bomb), "bad", kept=0),
        Case("bom", "se-bom.xml", b"\xef\xbb\xbf" + _posts(g), "ok"),
        Case("crlf", "se-crlf.xml", _posts(g).replace(b"\n", b"\r\n"), "ok"),
        Case("truncated_gzip", "se-cut.xml.gz", gzip.compress(_posts([_row(i) for i in range(1, 20000)]))[:-40], "bad", kept=0),
        Case("not_gzip", "se-plain.xml.gz", _posts(g), "bad", kept=0),
    ]


def _message(i: int, date: str = "Mon, 05 Jan 2015 10:00:00 +0000", from_date: str = "Mon Jan  5 10:00:00 2015") -> str:
    return (f"From a{i % 2}@x.org {from_date}\nFrom: A <a{i % 2}@x.org>\nSubject: s{i}\nDate: {date}\n"
            f"Message-ID: <{i}@x.org>\n\nbody {i}\n\n")


def mbox_cases() -> list[Case]:
    g = [_message(i) for i in range(GOOD)]

    def around(bad: str) -> bytes:
        return "".join(g[:2] + [bad] + g[2:]).encode()

    return [
        Case("year_9999", "mbox-9999.mbox", around(_message(90, "Fri, 31 Dec 9999 00:00:00 +0000", "Fri Dec 31 00:00:00 9999")), "bad"),
        Case("no_date", "mbox-nodate.mbox", around(_message(91, "never", "whenever")), "bad"),
        Case("bom_keeps_the_first_message", "mbox-bom.mbox", b"\xef\xbb\xbf" + "".join(g).encode(), "ok"),
        Case("crlf", "mbox-crlf.mbox", "".join(g).replace("\n", "\r\n").encode(), "ok"),
        Case("truncated_gzip", "mbox-cut.mbox.gz", gzip.compress("".join(_message(i) for i in range(20000)).encode())[:-40], "bad", kept=0),
        Case("not_gzip", "mbox-plain.mbox.gz", "".join(g).encode(), "bad", kept=0),
    ]


FORMAT_CASES: dict[str, Callable[[], list[Case]]] = {
    "jsonl": jsonl_cases,
    "amazon": amazon_cases,
    "reddit": reddit_cases,
    "longlamp": longlamp_cases,
    "stackexchange": stackexchange_cases,
    "mbox": mbox_cases,
}


def all_cases() -> list[tuple[str, Case]]:
    return [(fmt, case) for fmt, make in FORMAT_CASES.items() for case in make()]
