"""`personalize-t5x corpus convert|stats`: bring a public corpus into Document JSONL."""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Iterable, Iterator

from personalize_t5x.errors import InputError, StageReport
from personalize_t5x.pipeline.corpus.records import Document, read_documents, write_documents


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    convert = sub.add_parser("convert", help="convert a corpus in a public format to Document JSONL",
                             description="Convert a corpus in a public format to Document JSONL (gzip for *.gz).")
    convert.add_argument("--format", required=True,
                         help="input format: jsonl, stackexchange, amazon, reddit, mbox, longlamp")
    convert.add_argument("--input", required=True, nargs="+", help="input file(s)")
    convert.add_argument("--output", required=True, help="output Document JSONL (.jsonl or .jsonl.gz)")
    convert.add_argument("--skip-bad", action="store_true",
                         help="skip malformed records and count them instead of stopping at the first")
    convert.add_argument("--report", help="where to write the conversion report JSON (default: OUTPUT.report.json)")
    stats = sub.add_parser("stats", help="statistics of a Document JSONL corpus",
                           description="Print statistics of a Document JSONL corpus.")
    stats.add_argument("--input", required=True, help="Document JSONL (.jsonl or .jsonl.gz)")
    stats.add_argument("--skip-bad", action="store_true", help="skip and count malformed records")
    stats.add_argument("--json", action="store_true", help="print the statistics as JSON")


def unique_doc_ids(documents: Iterable[Document], *, source: str, report: StageReport) -> Iterator[Document]:
    """Passes documents through, reporting a repeated doc id as a located error."""
    seen: set[str] = set()
    for index, document in enumerate(documents, start=1):
        if document.doc_id in seen:
            report.bad_record(InputError(source, 0, "doc_id", f"duplicate doc id: {document.doc_id!r} (document #{index})"))
            continue
        seen.add(document.doc_id)
        yield document


def convert(*, fmt: str, inputs: list[str], output: str, skip_bad: bool = False) -> StageReport:
    from personalize_t5x.pipeline.corpus import readers

    for path in inputs:
        if not os.path.exists(path):
            raise InputError(path, 0, "<file>", "no such file")
    report = StageReport(skip_bad=skip_bad)
    documents = readers.read_corpus(fmt, inputs, report=report)
    written = write_documents(output, unique_doc_ids(documents, source=",".join(inputs), report=report))
    report.kept = written
    return report


def corpus_stats(documents: Iterable[Document]) -> dict:
    docs_per_user: dict[str, int] = {}
    chars = 0
    n = 0
    first = last = None
    for document in documents:
        n += 1
        docs_per_user[document.user_id] = docs_per_user.get(document.user_id, 0) + 1
        chars += len(document.title) + len(document.text)
        first = document.timestamp if first is None else min(first, document.timestamp)
        last = document.timestamp if last is None else max(last, document.timestamp)
    counts = sorted(docs_per_user.values())
    return {
        "documents": n,
        "users": len(counts),
        "avg_chars": round(chars / n, 1) if n else 0.0,
        "docs_per_user_median": counts[len(counts) // 2] if counts else 0,
        "docs_per_user_max": counts[-1] if counts else 0,
        "users_with_at_least_5_docs": sum(c >= 5 for c in counts),
        "first_timestamp_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(first)) if first is not None else None,
        "last_timestamp_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(last)) if last is not None else None,
    }


def run(args: argparse.Namespace) -> int:
    if args.action == "convert":
        report = convert(fmt=args.format, inputs=args.input, output=args.output, skip_bad=args.skip_bad)
        report_path = args.report or f"{args.output}.report.json"
        from personalize_t5x.io import files as io_lib

        io_lib.write_json(report_path, {"format": args.format, "inputs": args.input, **report.to_json()})
        print(f"wrote {report.kept:,} documents to {args.output}")
        for reason, count in sorted(report.dropped.items()):
            print(f"  dropped {reason}: {count:,}")
        for reason, count in sorted(report.bad.items()):
            print(f"  skipped bad record ({reason}): {count:,}")
        print(f"report: {report_path}")
        return 0
    report = StageReport(skip_bad=args.skip_bad)
    stats = corpus_stats(read_documents(args.input, report=report))
    stats["bad_skipped"] = dict(report.bad)
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True))
    else:
        width = max(len(k) for k in stats)
        for key, value in stats.items():
            print(f"{key.ljust(width)}  {value:,}" if isinstance(value, int) else f"{key.ljust(width)}  {value}")
    return 0
