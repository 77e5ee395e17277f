"""Stack Exchange data dump `Posts.xml` -> Documents.

The dump is one `<posts>` element holding one self-closing `<row .../>` per post, with
attributes `Id`, `PostTypeId`, `ParentId` (answers), `CreationDate` (ISO 8601, UTC, no
zone), `OwnerUserId` (absent for deleted users), `Title` (questions), `Body` (HTML).

Mapping:

- `user_id` = `"<site>:<OwnerUserId>"` and `doc_id` = `"<site>:<Id>"`, where `<site>` is
  the name of the folder holding the file when it is called `Posts.xml` (or
  `Posts.xml.gz`), as in the published dumps (`beer.stackexchange.com/Posts.xml`), else
  the file name without its `.xml`/`.gz` suffixes. User ids are per site in the dumps
  (user 4 on one site is not user 4 on another), hence the site prefix on both.
- `timestamp` = `CreationDate` as whole seconds UTC (fraction dropped).
- `text` = `Body` converted by `cleaning.html_to_text` (paragraphs kept, tags dropped,
  entities unescaped, code blocks kept as text).
- `title`: a question (PostTypeId 1) keeps its `Title`; an answer (2) takes its
  question's title (also when the question itself is dropped, e.g. its user was
  deleted). Answers usually follow their question, but the reader does not rely on it:
  an answer whose question has not been read yet is held back (the finished Document,
  keyed by `ParentId`) and released right after its question's row (and the question's
  own Document, if kept); answers whose question never appears in the file are
  released at the end of the file with an empty title. Memory: one title per question
  read, plus the held-back answers.

Dropped and counted (not user writing):

- rows of any other PostTypeId: `post_type_<n>_<name>` (3 orphaned tag wiki, 4 tag wiki
  excerpt, 5 tag wiki, 6 moderator nomination, 7 wiki placeholder / site notice, 8
  privilege wiki, ...);
- rows without `OwnerUserId` (deleted users): `no_owner`;
- rows owned by the Community user (`OwnerUserId="-1"`, the site's bot): `community_user`;
- rows whose body is empty once converted to text: `empty_text`;
- a post id met twice (the same site's dump passed twice): `duplicate_doc_id`.

Malformed rows (no `Id`, unknown `PostTypeId` form, unparsable `CreationDate`, answer
without `ParentId`) are located errors (file, line, attribute). Malformed XML and
invalid UTF-8 stop the file at that point: an error, or with skip_bad a counted one
(the rows before it are kept).

Parsing streams with the stdlib expat parser (the engine under
`xml.etree.ElementTree.iterparse`), driven directly: no element tree is built at all,
and every row knows its line number for error messages.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Iterator, Sequence
from xml.parsers import expat

from personalize_t5x.pipeline.corpus import cleaning
from personalize_t5x.errors import InputError, StageReport
from personalize_t5x.pipeline.corpus.readers import _common
from personalize_t5x.pipeline.corpus.records import Document

POST_TYPE_NAMES = {
    "1": "question",
    "2": "answer",
    "3": "orphaned_tag_wiki",
    "4": "tag_wiki_excerpt",
    "5": "tag_wiki",
    "6": "moderator_nomination",
    "7": "wiki_placeholder",
    "8": "privilege_wiki",
    "9": "article",
    "10": "collective_discussion",
    "11": "announcement",
    "12": "collective_collection",
    "13": "collective_wiki",
    "14": "curated_answer",
    "15": "curated_collection",
    "16": "curated_collective_collection",
}
COMMUNITY_USER_ID = "-1"
_CHUNK = 1 << 20


def site_name(path: str) -> str:
    """The site a Posts.xml belongs to: its folder for `.../<site>/Posts.xml`, else its stem."""
    base = os.path.basename(path)
    stem = base[:-3] if base.endswith(".gz") else base
    if stem.lower() == "posts.xml":
        folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
        if folder:
            return folder
    return stem[:-4] if stem.lower().endswith(".xml") else stem


def drop_reason_for_post_type(post_type: str) -> str:
    name = POST_TYPE_NAMES.get(post_type, "unknown")
    return f"post_type_{post_type}_{name}"


def read(paths: Sequence[str], report: StageReport) -> Iterator[Document]:
    seen = _common.SeenIds()
    for path in paths:
        yield from _read_file(path, report, seen)


def _read_file(path: str, report: StageReport, seen: _common.SeenIds) -> Iterator[Document]:
    site = site_name(path)
    titles: dict[str, str] = {}
    # ParentId -> answers (finished Documents with an empty title) waiting for it.
    waiting: dict[str, list[Document]] = {}

    rows: list[tuple[int, dict[str, str]]] = []
    root: list[str] = []
    parser = expat.ParserCreate()
    parser.buffer_text = True

    def start(name: str, attrs: dict[str, str]) -> None:
        if not root:
            root.append(name)
            if name != "posts":
                raise _WrongRoot(name, parser.CurrentLineNumber)
        elif name == "row":
            rows.append((parser.CurrentLineNumber, attrs))

    parser.StartElementHandler = start

    def convert(line: int, attrs: dict[str, str]) -> Iterator[Document]:
        post_id = attrs.get("Id")
        if not post_id:
            report.bad_record(InputError(path, line, "Id", "missing"))
            return
        post_type = attrs.get("PostTypeId")
        if not post_type:
            report.bad_record(InputError(path, line, "PostTypeId", "missing"))
            return
        if post_type not in ("1", "2"):
            if not post_type.isdigit():
                report.bad_record(InputError(path, line, "PostTypeId", f"not an integer: {post_type!r}"))
                return
            report.drop(drop_reason_for_post_type(post_type))
            return
        if post_type == "1":
            # Recorded before any drop: a deleted user's question still titles its answers.
            titles[post_id] = cleaning.normalize_inline(attrs.get("Title", ""))
        owner = attrs.get("OwnerUserId", "").strip()
        if not owner:
            report.drop("no_owner")
            return
        if owner == COMMUNITY_USER_ID:
            report.drop("community_user")
            return
        created = attrs.get("CreationDate")
        if not created:
            report.bad_record(InputError(path, line, "CreationDate", "missing"))
            return
        try:
            timestamp = _common.parse_iso_utc(created)
        except ValueError:
            report.bad_record(InputError(path, line, "CreationDate", f"not an ISO 8601 date-time: {created!r}"))
            return
        if timestamp < 0:
            report.bad_record(InputError(path, line, "CreationDate", f"before 1970: {created!r}"))
            return
        parent = None
        if post_type == "2":
            parent = attrs.get("ParentId")
            if not parent:
                report.bad_record(InputError(path, line, "ParentId", "missing on an answer (PostTypeId 2)"))
                return
        text = cleaning.html_to_text(attrs.get("Body", ""))
        if not text:
            report.drop("empty_text")
            return
        doc_id = f"{site}:{post_id}"
        if not seen.is_new(doc_id, report):
            return
        user_id = f"{site}:{owner}"
        try:
            document = _common.document(path, line, user_id, doc_id, timestamp,
                                        titles[post_id] if post_type == "1" else titles.get(parent) or "", text,
                                        timestamp_field="CreationDate")
        except InputError as error:
            report.bad_record(error)
            return
        if post_type == "1":
            report.kept += 1
            yield document
        else:
            title = titles.get(parent)
            if title is None:
                waiting.setdefault(parent, []).append(document)
            else:
                report.kept += 1
                yield document

    with _common.open_binary(path, report=report) as f:
        while True:
            chunk = f.read(_CHUNK)
            error: InputError | None = None
            try:
                parser.Parse(chunk, not chunk)
            except _WrongRoot as e:
                raise InputError(path, e.line, "<xml>", f"not a Stack Exchange Posts.xml: the root element is <{e.name}>, expected <posts>") from None
            except expat.ExpatError as e:
                error = InputError(path, e.lineno, "<xml>", f"malformed XML: {expat.ErrorString(e.code)} at column {e.offset + 1}")
            for line, attrs in rows:
                yield from convert(line, attrs)
                if waiting and attrs.get("PostTypeId") == "1" and attrs.get("Id") in waiting:
                    title = titles.get(attrs["Id"], "")
                    for answer in waiting.pop(attrs["Id"]):
                        report.kept += 1
                        yield dataclasses.replace(answer, title=title)
            rows.clear()
            if error is not None:
                report.bad_record(error)
                break
            if not chunk:
                break
    # Answers whose question is not in this file: kept, with no title.
    for answers in waiting.values():
        for answer in answers:
            report.kept += 1
            yield answer


class _WrongRoot(Exception):
    def __init__(self, name: str, line: int):
        super().__init__(name)
        self.name, self.line = name, line
