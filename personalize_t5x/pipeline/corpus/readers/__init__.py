"""Readers that convert public corpus formats into canonical Documents.

    from personalize_t5x.pipeline.corpus import readers
    report = StageReport(skip_bad=False)
    for document in readers.read_corpus("stackexchange", ["beer/Posts.xml"], report=report):
        ...

Every reader streams its input, and follows one contract:

- each Document it yields is counted in `report.kept`;
- records that are not user writing (tag wikis, deleted authors, removed bodies, empty
  texts, repeated ids ...) are dropped and counted with `report.drop(reason)`; the
  reasons are listed in each reader's module docstring;
- malformed records go through `report.bad_record(InputError(path, line, field, reason))`:
  a located one-line error, or (with skip_bad) a counted skip.

Formats (one module each; see its docstring for the exact field mapping):

- `jsonl`: the canonical Document JSONL (`personalize_t5x.pipeline.corpus.records`).
- `stackexchange`: Stack Exchange dump `Posts.xml`.
- `amazon`: Amazon reviews JSON lines, 2014/2018 and 2023 forms (detected per line).
- `reddit`: Pushshift Reddit JSON lines, posts and comments.
- `mbox`: email in mbox form.
- `longlamp`: LongLaMP records (JSON array or JSON lines) with a user `profile`.

All inputs may be gzipped (`*.gz`).
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

from personalize_t5x.errors import InputError, StageReport
from personalize_t5x.pipeline.corpus.readers import _common, amazon, jsonl, longlamp, mbox, reddit, stackexchange
from personalize_t5x.pipeline.corpus.records import Document

Reader = Callable[[Sequence[str], StageReport], Iterator[Document]]

_READERS: dict[str, Reader] = {
    "jsonl": jsonl.read,
    "stackexchange": stackexchange.read,
    "amazon": amazon.read,
    "reddit": reddit.read,
    "mbox": mbox.read,
    "longlamp": longlamp.read,
}
FORMATS: tuple[str, ...] = tuple(_READERS)


def read_corpus(fmt: str, paths: Sequence[str], *, report: StageReport) -> Iterator[Document]:
    """Streams the Documents of `paths`, read as format `fmt`, in input order.

    Raises InputError for an unknown format, an empty `paths`, or a missing file before
    reading anything; malformed records are handled through `report` (see above).
    """
    if isinstance(paths, str):
        paths = [paths]
    paths = [str(p) for p in paths]
    reader = _READERS.get(fmt)
    if reader is None:
        raise InputError(paths[0] if paths else "<input>", 0, "format", f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if not paths:
        raise InputError("<input>", 0, "input", "no input files given")
    _common.require_files(paths)
    return reader(paths, report)


__all__ = ["FORMATS", "read_corpus"]
