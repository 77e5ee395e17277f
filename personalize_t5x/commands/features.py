"""`personalize-t5x features`: the Beam features stage (ranking, summary and keyword features as TFRecords).

Flags this command does not know are Beam pipeline options and go to PipelineOptions
untouched (`--runner=DataflowRunner --project=... --region=...`, `--flink_master=...`),
so any runner works without a code change. Without `--runner`, the DirectRunner runs
with `--direct-num-workers` worker processes.
"""
from __future__ import annotations

import argparse
import functools
import logging
import sys
from typing import Any, Sequence

from personalize_t5x import feature_names
from personalize_t5x.commands import check_output_folder, config_values, positive_int


def _parse_args_forwarding_unknown(parser: argparse.ArgumentParser, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:
    parsed, unknown = parser.parse_known_args(args, namespace)
    parsed.beam_args = [*parsed.beam_args, *unknown]
    return parsed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--examples-dir", required=True, help="output folder of `personalize-t5x examples build`")
    parser.add_argument("--output-dir", required=True, help="where the TFRecord shards, manifest and report go (local or any Beam filesystem)")
    parser.add_argument("--strategies", nargs="+", default=list(feature_names.RANKING_STRATEGIES),
                        choices=feature_names.RANKING_STRATEGIES, help="ranking strategies to compute (default: all)")
    parser.add_argument("--splits", nargs="+", default=list(feature_names.SPLITS), choices=feature_names.SPLITS)
    parser.add_argument("--encoder", default=None, help="sentence-transformers checkpoint folder (default: bundled all-MiniLM-L6-v2)")
    parser.add_argument("--encode-batch-size", type=positive_int, default=None, help="encoder batch size (default: the encoder's)")
    parser.add_argument("--max-chars", type=positive_int, default=2500, help="length of each ranked text")
    parser.add_argument("--snippet-chars", type=positive_int, default=250)
    parser.add_argument("--num-shards", type=positive_int, default=None, help="shards per split (default: one per --examples-per-shard examples)")
    parser.add_argument("--examples-per-shard", type=positive_int, default=5000)
    parser.add_argument("--runner", default=None, help="Beam runner (default DirectRunner); other Beam flags pass through")
    parser.add_argument("--direct-num-workers", type=positive_int, default=2)
    parser.add_argument("--direct-running-mode", default="multi_processing", choices=("in_memory", "multi_threading", "multi_processing"))
    parser.add_argument("--one-core-per-worker", action="store_true",
                        help="pin each DirectRunner worker process to a core of its own, so the encoder runs one thread per "
                             "worker and N workers use N cores (multi_processing only)")
    parser.add_argument("--no-summaries-and-keywords", action="store_true",
                        help="skip METHOD.md stages 3 and 4 (summary_ctx_ind, keywords_ctx_ind, the weak labels)")
    parser.add_argument("--summary-ranker", default=None, choices=feature_names.RANKING_STRATEGIES,
                        help="the ranker whose entries are summarized (default: rank_doc_by_snpt when computed)")
    parser.add_argument("--summary-mode", default="extractive", choices=["extractive", "abstractive"],
                        help="SumCtxInd: extractive LexRank (default), or abstractive: left empty here and filled by "
                             "`aux-join --models sum_ctx_ind` from a user's summarization checkpoint "
                             "(gin/experiments/sum_ctx_ind_abstractive_infer.gin)")
    parser.add_argument("--summary-budget-chars", type=int, default=600, help="length limit of the extractive SumCtxInd summary")
    parser.add_argument("--wordnet-dir", default=None,
                        help="WordNet 3.0 database folder (default: $PERSONALIZE_T5X_WORDNET_DIR, else /usr/share/wordnet, "
                             "which `apt-get install wordnet-base` fills)")
    parser.add_argument("--glove-path", default=None,
                        help="a GloVe text file (e.g. the paper's glove.840B.300d.txt; threshold 4 unless --glove-threshold); "
                             "default: the packaged glove.6B 50-d vectors (threshold 3.55)")
    parser.add_argument("--glove-threshold", type=float, default=None, help="Euclidean distance below which two GloVe words match")
    parser.add_argument("--aux-seed", type=int, default=0, help="seeds which half of the training users the auxiliary models train on")
    parser.add_argument("--force", action="store_true", help="recompute even the splits the manifest marks finished")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("beam_args", nargs="*", help=argparse.SUPPRESS)
    # Beam's flags are open-ended (each runner adds its own): keep unknown ones for
    # PipelineOptions instead of rejecting them.
    parser.parse_args = functools.partial(_parse_args_forwarding_unknown, parser)


def format_summary(result: Any) -> str:
    lines = [f"{'split':<11} {'status':<9} {'examples':>9} {'author pairs':>13} {'shards':>7}"]
    for split, entry in sorted(result.manifest["splits"].items(), key=lambda kv: feature_names.SPLITS.index(kv[0])):
        status = "computed" if split in result.computed_splits else "skipped"
        shards = sum(1 for name in entry["files"] if name.startswith(f"{split}.tfrecord-"))
        lines.append(f"{split:<11} {status:<9} {entry['examples']:>9} {entry['author_pairs']:>13} {shards:>7}")
    if result.computed_splits:
        lines.append("counters of this run:")
        lines.extend(f"  {name}: {value}" for name, value in result.counters.items())
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from personalize_t5x.pipeline import features, keywords, summaries
    from personalize_t5x.pipeline.retrieval import ranking

    from personalize_t5x.errors import InputError
    from personalize_t5x.pipeline import examples as examples_lib

    # The features stage trusts its input folder: only a finished examples build, whose
    # stats.json fingerprints every file, is read (a truncated or replaced file is refused
    # here, in one line, rather than inside a Beam worker).
    check_output_folder(args.output_dir, "--output-dir")
    if "://" not in args.examples_dir:
        problem = examples_lib.finished_problem(args.examples_dir)
        if problem is not None:
            raise InputError(args.examples_dir, 0, "<folder>",
                             f"not a finished `examples build` output ({problem}); rebuild it")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    beam_args = list(getattr(args, "beam_args", []))
    batch = {} if args.encode_batch_size is None else {"batch_size": args.encode_batch_size}
    with config_values():
        config = features.FeaturesConfig(
            strategies=tuple(args.strategies),
            ranking=ranking.RankingConfig(max_chars=args.max_chars, snippet_chars=args.snippet_chars, **batch),
            encoder_path=args.encoder,
            splits=tuple(args.splits),
            num_shards=args.num_shards,
            examples_per_shard=args.examples_per_shard,
            runner=args.runner or "DirectRunner",
            direct_num_workers=args.direct_num_workers,
            direct_running_mode=args.direct_running_mode,
            one_core_per_worker=args.one_core_per_worker,
            pipeline_args=tuple(beam_args),
            summaries_and_keywords=not args.no_summaries_and_keywords,
            summary_ranker=args.summary_ranker,
            summary=summaries.SummaryConfig(mode=args.summary_mode, budget_chars=args.summary_budget_chars),
            keywords=keywords.KeywordConfig(glove_threshold=args.glove_threshold),
            wordnet_dir=args.wordnet_dir,
            glove_path=args.glove_path,
            aux_seed=args.aux_seed,
        )
    result = features.run_features(examples_dir=args.examples_dir, output_dir=args.output_dir, config=config,
                                   force=args.force, progress=not args.no_progress)
    print(format_summary(result))
    print(f"features written to {args.output_dir} (report: {features.REPORT_NAME}, manifest: {features.MANIFEST_NAME})")
    return 0
