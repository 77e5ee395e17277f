"""`personalize-t5x eval-retrieval`: ROUGE of each ranker's text against the target."""
from __future__ import annotations

import argparse

from personalize_t5x import feature_names
from personalize_t5x.commands import check_output_folder, config_values, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--features-dir", required=True, help="output folder of `personalize-t5x features`")
    parser.add_argument("--output-dir", required=True, help="where retrieval_rouge.{json,txt,png} go")
    parser.add_argument("--splits", nargs="+", default=["validation", "test"], choices=feature_names.SPLITS)
    parser.add_argument("--strategies", nargs="+", default=None, choices=feature_names.RANKING_STRATEGIES,
                        help="default: those the features stage computed")
    parser.add_argument("--max-examples", type=positive_int, default=None, help="score the first N examples of each split")
    parser.add_argument("--per-example", action="store_true",
                        help="keep each example's scores in the JSON (for a paired t-test between rankers)")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from personalize_t5x.tasks import retrieval_eval

    check_output_folder(args.output_dir, "--output-dir")
    with config_values():
        config = retrieval_eval.RetrievalEvalConfig(
            splits=tuple(args.splits), strategies=tuple(args.strategies) if args.strategies else None,
            max_examples=args.max_examples, keep_per_example=args.per_example)
    results = retrieval_eval.evaluate_retrieval(features_dir=args.features_dir, config=config, progress=not args.no_progress)
    paths = retrieval_eval.write_outputs(results, args.output_dir)
    print(retrieval_eval.format_table(results))
    print("wrote " + ", ".join(paths.values()))
    return 0
