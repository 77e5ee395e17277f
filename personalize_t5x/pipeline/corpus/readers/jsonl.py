"""Canonical Document JSONL (the project's own format) -> Documents.

Delegates to `records.read_documents` for each file (validation, located errors,
duplicate ids within a file). Across files, a doc id already read from an earlier file
is a bad record too (doc ids must be unique in a corpus): field `doc_id`, line 0 (the
per-file reader does not expose line numbers).
"""
from __future__ import annotations

from typing import Iterator, Sequence

from personalize_t5x.errors import InputError, StageReport
from personalize_t5x.pipeline.corpus.records import Document, read_documents


def read(paths: Sequence[str], report: StageReport) -> Iterator[Document]:
    first_seen: dict[str, str] = {}  # doc id -> the file it came from
    for path in paths:
        for document in read_documents(path, report=report):
            other = first_seen.get(document.doc_id)
            if other is not None:
                report.kept -= 1  # read_documents counted it
                report.bad_record(InputError(path, 0, "doc_id", f"duplicate doc id: {document.doc_id!r} (also in {other})"))
                continue
            if len(paths) > 1:
                first_seen[document.doc_id] = path
            yield document
