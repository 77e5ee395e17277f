"""`personalize-t5x compare A B`: the paper's paired t-test between two prediction files.

    personalize-t5x compare runs/syn_ctx/predictions.jsonl runs/author_pred/predictions.jsonl

Both files are JSON lines with `example_id`, `target` (or `reference`) and `prediction`
(see personalize_t5x/tasks/significance.py) over the same examples; files whose example ids
or targets differ are refused with a one-line error (exit status 2). Prints, per metric
(BLEU, ROUGE-1/2/L, in %), both systems' corpus-level values, the t statistic and p of
the paired test on per-example scores, and whether p < --alpha (0.01).
"""
from __future__ import annotations

import argparse

from personalize_t5x.commands import open_unit_interval


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", help="prediction file of system A (JSONL, gzip ok)")
    parser.add_argument("b", help="prediction file of system B, same examples")
    parser.add_argument("--alpha", type=open_unit_interval, default=0.01, help="significance level (default 0.01, the paper's)")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the comparison as JSON here")


def run(args: argparse.Namespace) -> int:
    from personalize_t5x.io import files as io_lib
    from personalize_t5x.tasks import significance

    a = significance.read_predictions(args.a)
    b = significance.read_predictions(args.b)
    rows = significance.compare(a, b, alpha=args.alpha, path_a=args.a, path_b=args.b)
    print(f"A: {args.a}")
    print(f"B: {args.b}")
    print(f"{len(a)} examples; paired t-test (scipy.stats.ttest_rel) on per-example scores")
    print(significance.format_table(rows, alpha=args.alpha))
    if args.json_path:
        io_lib.write_json(args.json_path, {
            "a": args.a, "b": args.b, "examples": len(a), "alpha": args.alpha,
            "metrics": [row.to_json() for row in rows],
        })
    return 0
