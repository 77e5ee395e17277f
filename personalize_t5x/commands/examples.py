"""`personalize-t5x examples build`: the paper's examples, splits, author pairs and stats."""
from __future__ import annotations

import argparse
import json
import os
import time

from personalize_t5x.commands import check_output_folder, fraction, non_negative_float, non_negative_int, positive_int, seed_int
from personalize_t5x.pipeline import examples as examples_lib
from personalize_t5x.errors import StageReport
from personalize_t5x.pipeline.corpus.records import read_documents


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = sub.add_parser("build", help="build examples, splits and author pairs from Document JSONL",
                           description="Build the paper's examples (METHOD.md) from Document JSONL.")
    defaults = examples_lib.ExampleConfig()
    build.add_argument("--input", required=True, help="Document JSONL (.jsonl or .jsonl.gz)")
    build.add_argument("--output-dir", required=True, help="folder for the splits, pairs and stats.json")
    build.add_argument("--seed", type=seed_int, default=defaults.seed)
    build.add_argument("--split-mode", choices=examples_lib.SPLIT_MODES, default=defaults.split_mode,
                       help="'user': whole users 85/5/10 (the paper); 'time': each user's latest examples to validation/test")
    build.add_argument("--split-fractions", type=fraction, nargs=3, default=list(defaults.split_fractions),
                       metavar=("TRAIN", "VALIDATION", "TEST"))
    build.add_argument("--min-target-chars", type=non_negative_int, default=defaults.min_target_chars,
                       help="a target must be longer than this many characters")
    build.add_argument("--min-profile-docs", type=non_negative_int, default=defaults.min_profile_docs,
                       help="a target needs at least this many strictly earlier documents")
    build.add_argument("--min-examples-per-user", type=positive_int, default=defaults.min_examples_per_user)
    build.add_argument("--max-examples-per-user", type=positive_int, default=defaults.max_examples_per_user)
    build.add_argument("--context-chars", type=non_negative_int, default=defaults.context_chars,
                       help="length of the immediate context (title + newline + text)")
    build.add_argument("--author-pairs-per-example", type=non_negative_float, default=defaults.author_pairs_per_example)
    build.add_argument("--skip-bad", action="store_true", help="skip and count malformed documents")
    build.add_argument("--overwrite", action="store_true", help="rebuild even if OUTPUT_DIR/stats.json exists")


def run(args: argparse.Namespace) -> int:
    stats_path = os.path.join(args.output_dir, examples_lib.STATS_FILE)
    check_output_folder(args.output_dir, "--output-dir")
    if args.overwrite:
        examples_lib.remove_finished_marker(args.output_dir)  # before anything else can fail
    elif os.path.exists(stats_path):
        problem = examples_lib.finished_problem(args.output_dir)
        if problem is None:
            print(f"{args.output_dir} is already built (stats.json vouches for its files); pass --overwrite to rebuild")
            with open(stats_path, encoding="utf-8") as f:
                print(examples_lib.format_stats_table(json.load(f)))
            return 0
        print(f"{args.output_dir} is not a finished build ({problem}); rebuilding")
        examples_lib.remove_finished_marker(args.output_dir)
    removed = examples_lib.remove_stale_temporaries(args.output_dir)
    if removed:
        print(f"removed {removed} temporary file(s) a killed build left in {args.output_dir}")
    config = examples_lib.ExampleConfig(
        min_target_chars=args.min_target_chars, min_profile_docs=args.min_profile_docs,
        min_examples_per_user=args.min_examples_per_user, max_examples_per_user=args.max_examples_per_user,
        context_chars=args.context_chars, split_mode=args.split_mode, split_fractions=tuple(args.split_fractions),
        author_pairs_per_example=args.author_pairs_per_example, seed=args.seed)
    started = time.perf_counter()
    report = StageReport(skip_bad=args.skip_bad)
    result = examples_lib.build_examples(read_documents(args.input, report=report), config=config,
                                         report=report, progress=True)
    examples_lib.write_examples(result, args.output_dir)
    print(examples_lib.format_stats_table(result.stats))
    print(f"\nwrote {args.output_dir} in {time.perf_counter() - started:.1f} s")
    return 0

