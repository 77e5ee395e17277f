"""`personalize-t5x demo`: the whole pipeline on the bundled synthetic demo corpus.

Every stage is the same code a user runs on a real corpus, through the same functions the
other commands call; each writes its folder under --output-dir and is skipped on a rerun
once finished.
"""
from __future__ import annotations

import argparse
import os
import time
from importlib import resources

from personalize_t5x import examples as examples_lib
from personalize_t5x.commands import corpus as corpus_command


def demo_corpus_path() -> str:
    return str(resources.files("personalize_t5x").joinpath("demo/demo_corpus.jsonl.gz"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", default="demo_output", help="where every stage writes its folder")
    parser.add_argument("--seed", type=int, default=0)


def _banner(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)), flush=True)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    out = args.output_dir
    os.makedirs(out, exist_ok=True)

    _banner("1. corpus convert (Document JSONL)")
    documents_path = os.path.join(out, "corpus", "documents.jsonl.gz")
    if not os.path.exists(documents_path):
        report = corpus_command.convert(fmt="jsonl", inputs=[demo_corpus_path()], output=documents_path)
        print(f"wrote {report.kept:,} documents to {documents_path}")
    else:
        print(f"{documents_path} exists; skipped")

    _banner("2. examples build (paper filters, 85/5/10 user split, author pairs)")
    examples_dir = os.path.join(out, "examples")
    if not os.path.exists(os.path.join(examples_dir, examples_lib.STATS_FILE)):
        from personalize_t5x.corpus.records import read_documents

        result = examples_lib.build_examples(read_documents(documents_path),
                                             config=examples_lib.ExampleConfig(seed=args.seed))
        examples_lib.write_examples(result, examples_dir)
        stats = result.stats
    else:
        import json

        with open(os.path.join(examples_dir, examples_lib.STATS_FILE)) as f:
            stats = json.load(f)
        print(f"{examples_dir} exists; skipped")
    print(examples_lib.format_stats_table(stats))

    print(f"\ndemo finished in {time.perf_counter() - started:.1f} s; outputs under {out}/")
    return 0
