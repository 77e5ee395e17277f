"""Reddit in Pushshift form (JSON lines of submissions and/or comments) -> Documents.

A line with a `title` is a post (submission: `author`, `created_utc`, `title`,
`selftext`, `id`, `name`); a line with a `body` is a comment (`author`, `created_utc`,
`body`, `id`, `link_id` = "t3_<post id>"). Posts and comments may share a file or come
in separate files, in any order.

Mapping: `user_id` = `author`; `doc_id` = the Reddit fullname (`name`, else "t3_<id>"
for posts and "t1_<id>" for comments); `timestamp` = `created_utc` (int, or a numeric
string as in some dumps); `text` = `selftext` / `body` with HTML entities unescaped
(Pushshift stores `&amp;`, `&gt;`, `&lt;`), Markdown quote lines (starting with ">":
text quoted from someone else) removed, and whitespace normalized; `title` = the
post's title for a post, and for a comment the title of its thread's post when that post
is anywhere in the input, else "".

Comments may come before their post (comment dumps are often listed before submission
dumps), so the reader makes two passes over the input: the first collects post titles
(id -> title; lines without a `"title"` key are skipped unparsed), the second converts.
Memory: one title per post.

Dropped and counted: deleted authors (`author` "[deleted]", "[removed]", empty or
missing: `deleted_author`), removed bodies ("[removed]", "[deleted]":
`removed_body`), posts with no self text (link posts: `empty_text`), comments with an
empty body or nothing but quotes (`empty_text`), a fullname already read (`duplicate_doc_id`). Malformed lines
(bad JSON, invalid UTF-8, neither a title nor a body, no id, bad `created_utc`) are
located errors.
"""
from __future__ import annotations

import functools

import html
from typing import Any, Iterator, Sequence

from personalize_t5x.io import files as io_lib
from personalize_t5x.pipeline.corpus import cleaning
from personalize_t5x.errors import InputError, StageReport
from personalize_t5x.pipeline.corpus.readers import _common
from personalize_t5x.pipeline.corpus.records import Document

DELETED_AUTHORS = frozenset(["[deleted]", "[removed]", ""])
REMOVED_BODIES = frozenset(["[removed]", "[deleted]", "[ Removed by Reddit ]", "[removed by reddit]"])


def read(paths: Sequence[str], report: StageReport) -> Iterator[Document]:
    titles = collect_post_titles(paths)
    seen = _common.SeenIds()
    for path in paths:
        yield from _common.kept_documents(
            (functools.partial(convert, obj, path, line, report, titles)
             for line, obj in _common.iter_json_lines(path, report)),
            report=report, seen=seen)


def post_title(raw_title: str) -> str:
    return cleaning.normalize_inline(html.unescape(raw_title)) if "&" in raw_title else cleaning.normalize_inline(raw_title)


def collect_post_titles(paths: Sequence[str]) -> dict[str, str]:
    """First pass: post id (without "t3_") -> cleaned title, for every well-formed post.

    Malformed lines are ignored here; the second pass reports them.
    """
    titles: dict[str, str] = {}
    for path in paths:
        try:
            for number, raw in io_lib.iter_binary_lines(path):
                if b'"title"' not in raw:
                    continue
                try:
                    obj = io_lib.decode_json_line(raw, path=path, line=number)
                except InputError:
                    continue
                if not isinstance(obj, dict) or not isinstance(obj.get("title"), str):
                    continue
                post_id = _post_id(obj)
                if post_id:
                    titles[post_id] = post_title(obj["title"])
        except InputError:
            continue  # an unreadable file: the second pass reports it
    return titles


def _post_id(obj: dict[str, Any]) -> str | None:
    post_id = _common.string_field(obj, "id")
    if post_id:
        return post_id[3:] if post_id.startswith("t3_") else post_id
    name = _common.string_field(obj, "name")
    if name and name.startswith("t3_"):
        return name[3:]
    return None


def _timestamp(obj: dict[str, Any], path: str, line: int) -> int:
    value = obj.get("created_utc")
    if value is None:
        raise InputError(path, line, "created_utc", "missing")
    try:
        return _common.parse_epoch_seconds(value)
    except ValueError as e:
        raise InputError(path, line, "created_utc", str(e)) from None


def _string(obj: dict[str, Any], key: str, path: str, line: int) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InputError(path, line, key, f"expected a string, got {type(value).__name__}")
    return value


def convert(obj: dict[str, Any], path: str, line: int, report: StageReport, titles: dict[str, str]) -> Document | None:
    """One Pushshift line -> Document; None when dropped (counted in `report`)."""
    is_post = "title" in obj
    if not is_post and "body" not in obj:
        raise InputError(path, line, "body", "missing: a line is a post (has 'title') or a comment (has 'body')")
    author = obj.get("author")
    if author is not None and not isinstance(author, str):
        raise InputError(path, line, "author", f"expected a string, got {type(author).__name__}")
    if author is None or author.strip() in DELETED_AUTHORS:
        report.drop("deleted_author")
        return None
    if is_post:
        post_id = _post_id(obj)
        if not post_id:
            raise InputError(path, line, "id", "missing")
        doc_id = f"t3_{post_id}"
        raw_text = _string(obj, "selftext", path, line)
        title = post_title(_string(obj, "title", path, line))
    else:
        comment_id = _common.string_field(obj, "id")
        name = _common.string_field(obj, "name")
        if comment_id:
            doc_id = comment_id if comment_id.startswith("t1_") else f"t1_{comment_id}"
        elif name:
            doc_id = name
        else:
            raise InputError(path, line, "id", "missing")
        raw_text = _string(obj, "body", path, line)
        link_id = _common.string_field(obj, "link_id") or ""
        title = titles.get(link_id[3:] if link_id.startswith("t3_") else link_id, "")
    timestamp = _timestamp(obj, path, line)
    if raw_text.strip() in REMOVED_BODIES:
        report.drop("removed_body")
        return None
    text = cleaning.unescape_and_normalize(raw_text)
    if ">" in text:
        text = cleaning.normalize_whitespace("\n".join(line for line in text.split("\n") if not line.startswith(">")))
    if not text:
        report.drop("empty_text")
        return None
    return _common.document(path, line, author.strip(), doc_id, timestamp, title, text, timestamp_field="created_utc")
