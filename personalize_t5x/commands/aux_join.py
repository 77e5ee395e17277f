"""`personalize-t5x aux-join`: puts the SumCtx / SynCtx models' predictions into the features.

Reads the prediction files `personalize-t5x infer` / `python -m personalize_t5x.trainer.infer`
wrote for the auxiliary tasks (INFER_OUTPUT_DIR/personalize_<dataset>_aux_<model>-infer_<split>.jsonl)
and fills summary_ctx / keywords_ctx of the features folder by example_id
(personalize_t5x/pipeline/aux_join.py; docs/summaries_and_keywords.md).
"""
from __future__ import annotations

import argparse
import os

from personalize_t5x import feature_names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--features-dir", required=True, help="output folder of `personalize-t5x features`")
    parser.add_argument("--predictions-dir", required=True, help="INFER_OUTPUT_DIR of the auxiliary models' inference")
    parser.add_argument("--dataset", required=True, help="the dataset name the tasks were registered under")
    parser.add_argument("--models", nargs="+", default=["sum_ctx", "syn_ctx"], choices=["sum_ctx", "syn_ctx", "sum_ctx_ind"],
                        help="sum_ctx_ind: the abstractive SumCtxInd (task personalize_<dataset>_summarize_ranked)")
    parser.add_argument("--splits", nargs="+", default=list(feature_names.SPLITS), choices=feature_names.SPLITS)
    parser.add_argument("--train-inputs", default="predicted", choices=["predicted", "weak_label"],
                        help="what fills the training split: the predictions (default, as the paper) or the weak labels")


def prediction_file(predictions_dir: str, dataset: str, model: str, split: str) -> str:
    from personalize_t5x.tasks import registry
    from personalize_t5x.trainer.infer import prediction_file_name

    task = registry.summarize_task_name(dataset) if model == "sum_ctx_ind" else registry.aux_task_name(dataset, model)
    return os.path.join(predictions_dir, prediction_file_name(task, f"infer_{split}"))


def run(args: argparse.Namespace) -> int:
    from personalize_t5x.pipeline import aux_join

    files = {m: {s: prediction_file(args.predictions_dir, args.dataset, m, s) for s in args.splits} for m in args.models}
    counts = aux_join.join_aux_predictions(features_dir=args.features_dir, prediction_files=files,
                                           train_inputs=args.train_inputs, splits=tuple(args.splits))
    for split, n in counts.items():
        print(f"{split}: {n} examples joined")
    return 0
