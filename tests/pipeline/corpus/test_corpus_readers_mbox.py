"""mbox reader: sender, subject, date, plain text without quotes or signatures."""
import gzip
import pathlib

import pytest

from personalize_t5x.pipeline.corpus import readers
from personalize_t5x.errors import InputError, StageReport
from personalize_t5x.pipeline.corpus.readers import mbox
from personalize_t5x.pipeline.corpus.records import Document

SAMPLE = pathlib.Path(__file__).parent / "samples" / "brewers.mbox"

EXPECTED = [
    # quoted reply, "On ... wrote:" line and "-- " signature removed; ">From" unescaped
    Document("alice@example.com", "20150105100000.A1@example.com", 1420470000, "Re: Yeast starter size",
             "I use a 2 liter starter for lagers.\nFrom experience, smaller ones stall."),
    # multipart/alternative: the quoted-printable text/plain part, encoded-word subject
    Document("joerg@example.de", "abc.123@example.de", 1420533000, "Treffen nächste Woche",
             "Grüße an alle,\n\nthe meeting moves to Room 4 – see you there.\n\nJörg"),
    # HTML only (base64): converted, the gmail quote and its attribution removed
    Document("carol@example.net", "html-only@example.net", 1420545600, "Re: Kegerator",
             "Thanks, I will bring the kegerator on Friday."),
    # pipermail "dave at example.org", zone name EST, no Message-ID, list footer removed
    Document("dave@example.org", "sha1:16306400a0b144562f87", 1420640102, "[Brewers] Dry hopping",
             "Dry hop for 3 days, no more.\n\nDave"),
    # windows-1252 body, no Date header (the "From " line's date), folded attribution,
    # Outlook "-----Original Message-----" block
    Document("frank@example.com", "outlook-1@example.com", 1420821900, "RE: Grain order", "Order placed – 50 lb of 2-row."),
]
EXPECTED_DROPS = {"empty_text": 1, "duplicate_doc_id": 1, "no_text_part": 1}


def read(paths, skip_bad=False):
    report = StageReport(skip_bad=skip_bad)
    documents = list(readers.read_corpus("mbox", [str(p) for p in paths], report=report))
    return documents, report


def test_sample():
    documents, report = read([SAMPLE])
    assert documents == EXPECTED
    assert dict(report.dropped) == EXPECTED_DROPS
    assert report.kept == len(EXPECTED)


def test_gzipped(tmp_path):
    path = tmp_path / "brewers.mbox.gz"
    path.write_bytes(gzip.compress(SAMPLE.read_bytes()))
    documents, _ = read([path])
    assert documents == EXPECTED


def test_agrees_with_stdlib_mailbox_on_message_boundaries():
    import email
    import mailbox

    def key(message):
        return str(message.get("Message-ID")), str(message.get("Date")), str(message.get("Subject"))

    box = mailbox.mbox(str(SAMPLE), create=False)
    try:
        expected = [key(message) for message in box]
    finally:
        box.close()
    ours = [key(email.message_from_bytes(data)) for _, _, data in mbox.iter_raw_messages(str(SAMPLE), StageReport())]
    assert len(ours) == 8
    assert ours == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Hi.\n\n-- \nsig", "Hi."),
        ("Hi.\n--\nsig", "Hi."),
        ("Top post.\n\nOn Mon, Jan 5, 2015 at 8:12 PM, Bob <bob@x.org> wrote:\n> quoted\n>> deeper", "Top post."),
        ("Interleaved:\n> q1\nanswer 1\n> q2\nanswer 2", "Interleaved:\nanswer 1\nanswer 2"),
        ("Reply.\nOn Mon, Jan 5, 2015 at 8:12 PM, Bob Brewer <\nbob@x.org> wrote:\n\n> q", "Reply."),
        ("Reply.\nBob Brewer <bob@x.org> wrote:\n> q", "Reply."),
        ("Ja.\nAm 05.01.2015 um 20:12 schrieb Bob:\n> q", "Ja."),
        ("Oui.\nLe 5 janv. 2015 à 20:12, Bob a écrit :\n> q", "Oui."),
        ("Mine.\n\n-----Original Message-----\nFrom: Bob\n\ntheirs", "Mine."),
        ("Mine.\n---------- Forwarded message ---------\nFrom: Bob\ntheirs", "Mine."),
        ("Mine.\n________________________________\nFrom: Bob\ntheirs", "Mine."),
        # a line that merely ends with a colon is the sender's own writing
        ("Here is what I wrote:\n\nthe list", "Here is what I wrote:\n\nthe list"),
        ("He wrote: nothing\nmore", "He wrote: nothing\nmore"),
        ("a\r\n> q\r\nb", "a\nb"),
        ("> only a quote", ""),
    ],
)
def test_strip_quotes_and_signature(text, expected):
    assert mbox.strip_quotes_and_signature(text) == expected


@pytest.mark.parametrize(
    "header, expected",
    [
        ("Alice <Alice@Example.COM>", "alice@example.com"),
        ('"Doe, John" <john.doe@x.org>', "john.doe@x.org"),
        ("bare@x.org", "bare@x.org"),
        ("dave at example.org (Dave Smith)", "dave@example.org"),
        ("Nobody", None),
    ],
)
def test_sender_address(header, expected):
    assert mbox.sender_address(header) == expected


GOOD = """From a@x.org Mon Jan  5 10:00:00 2015
From: A <a@x.org>
Subject: s
Date: Mon, 05 Jan 2015 10:00:00 +0000
Message-ID: <{id}@x.org>

body {id}
"""


@pytest.mark.parametrize(
    "bad, field, reason",
    [
        ("From a@x.org Mon Jan  5 10:00:00 2015\nSubject: s\nDate: Mon, 05 Jan 2015 10:00:00 +0000\n\nbody\n", "From", "missing"),
        ("From a@x.org Mon Jan  5 10:00:00 2015\nFrom: Nobody\nDate: Mon, 05 Jan 2015 10:00:00 +0000\n\nbody\n", "From", "no email address"),
        ("From MAILER-DAEMON\nFrom: A <a@x.org>\nDate: someday\n\nbody\n", "Date", "unparsable: 'someday'"),
        ("From MAILER-DAEMON\nFrom: A <a@x.org>\n\nbody\n", "Date", "missing"),
    ],
)
def test_malformed_message_is_located(tmp_path, bad, field, reason):
    path = tmp_path / "box.mbox"
    path.write_text(GOOD.format(id=1) + "\n" + bad + "\n" + GOOD.format(id=3))
    with pytest.raises(InputError) as info:
        read([path])
    assert (info.value.path, info.value.line, info.value.field) == (str(path), 9, field)
    assert reason in info.value.reason
    documents, report = read([path], skip_bad=True)
    assert [d.doc_id for d in documents] == ["1@x.org", "3@x.org"]
    assert sum(report.bad.values()) == 1


def test_not_an_mbox(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("just some notes\n\n" + GOOD.format(id=1))
    with pytest.raises(InputError) as info:
        read([path])
    assert (info.value.line, info.value.field) == (1, "<file>") and "not an mbox" in info.value.reason
    documents, report = read([path], skip_bad=True)
    assert [d.doc_id for d in documents] == ["1@x.org"] and sum(report.bad.values()) == 1


def test_undecodable_charset_is_read_leniently(tmp_path):
    path = tmp_path / "box.mbox"
    raw = GOOD.format(id=1).replace("Message-ID", "Content-Type: text/plain; charset=x-unknown\nMessage-ID")
    path.write_bytes(raw.encode() + b"caf\xe9\n")
    documents, _ = read([path])
    assert documents[0].text == "body 1\ncaf\ufffd"
