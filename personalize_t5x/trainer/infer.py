"""Write a checkpoint's predictions on a seqio Task or Mixture as JSONL (T5X's infer.py).

    personalize-t5x infer --gin_file=models/t5_1_1_small.gin --gin_file=runs/infer.gin \\
        --gin.CHECKPOINT_PATH="'/tmp/run/checkpoint_1000'" --gin.INFER_OUTPUT_DIR="'/tmp/run/infer'" \\
        --gin.MIXTURE_OR_TASK_NAME="'personalize_x_y'" \\
        --gin.TASK_FEATURE_LENGTHS="{'inputs': 512, 'targets': 512}"

One file per task, INFER_OUTPUT_DIR/<task>-<split>.jsonl, one record per example in
the split's order: `example_id` (when the task has that feature), `inputs`, `target`,
`prediction` (decoded text; token ids for vocabularies without text), `prediction_tokens`
(the decoded ids up to the first padding id, as T5X's infer writes them with
`output_ids=True`) and `target_score`.

CHECKPOINT_PATH is a checkpoint_<step> folder (or a T5X / Hugging Face checkpoint) with
RestoreCheckpointConfig.mode 'specific' (the default; a MODEL_DIR is refused, as T5X's infer
refuses it), or a MODEL_DIR with 'latest' (its newest step; T5X's infer ignores the mode and
restores `path` as one checkpoint, so this is the project's addition). 'all' is refused:
one run writes one checkpoint's predictions. RestoreCheckpointConfig.dtype is the dtype
the parameters are restored and decoded in.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import sys
from typing import Any, Optional, Sequence

import jax
import numpy as np

from personalize_t5x.trainer import checkpoints as checkpoints_lib
from personalize_t5x.trainer import partitioning
from personalize_t5x.trainer import trainer as trainer_lib
from personalize_t5x.trainer import utils

logger = logging.getLogger(__name__)


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return value.tolist() if value.dtype.kind != "S" and value.dtype.kind != "O" else [_text(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _decode(vocabulary: Any, ids: Sequence[int]) -> Any:
    """Text for ids up to the first EOS; lists stay lists (pass-through vocabularies)."""
    ids = [int(i) for i in ids]
    eos = getattr(vocabulary, "eos_id", None)
    if eos is not None and eos in ids:
        ids = ids[:ids.index(eos)]
    ids = [i for i in ids if i != 0]
    decoded = vocabulary.decode(ids)
    return _text(decoded)


def prediction_file_name(task_name: str, split: str) -> str:
    """INFER_OUTPUT_DIR/<this>: the predictions of one task split (T5X infer's naming)."""
    return f"{task_name}-{split}.jsonl"


def prediction_tokens(ids: Sequence[int]) -> list[int]:
    """The decoded ids up to the first padding id, EOS included (T5X infer's `prediction_tokens`)."""
    ids = [int(i) for i in ids]
    return ids[:ids.index(0)] if 0 in ids else ids


def infer_task(trainer: trainer_lib.Trainer, params: Any, task: Any, *, split: str, lengths: dict,
               batch_size: int, output_path: pathlib.Path, predict_options: dict, rng_seed: int = 0) -> int:
    """Decodes every example of one task split into `output_path` (JSONL); returns the count.

    Batches come from the same feature converter and host split as seqio.Evaluator's
    (eval.inference_feature_converter, eval.map_batches): with several hosts each decodes
    its own rows, every host receives all results, and process 0 alone writes the file.
    """
    from personalize_t5x.trainer import eval as evaluate_lib

    task_ds = task.get_dataset(sequence_length=lengths, split=split, shuffle=False, num_epochs=1,
                               shard_info=None, use_cached=False)
    features = evaluate_lib.inference_feature_converter()(task_ds, lengths).enumerate()
    decode = evaluate_lib.predict_fn(trainer, params, batch_size, predict_options, rng_seed)
    score = evaluate_lib.score_fn(trainer, params, batch_size)
    predictions, scores = dict(decode(features)), dict(score(features))
    if jax.process_index() != 0:
        return len(predictions)
    vocab_in = task.output_features["inputs"].vocabulary
    vocab_out = task.output_features["targets"].vocabulary
    tmp = output_path.with_suffix(output_path.suffix + ".tmp")
    count = 0
    with open(tmp, "w", encoding="utf-8") as out:
        for index, ex in enumerate(task_ds.as_numpy_iterator()):
            prediction = predictions[index]
            record = {}
            if "example_id" in ex:
                record["example_id"] = _text(ex["example_id"])
            record["inputs"] = (_text(ex["inputs_pretokenized"]) if "inputs_pretokenized" in ex
                                else _decode(vocab_in, ex["inputs"]))
            target = (_text(ex["targets_pretokenized"]) if "targets_pretokenized" in ex
                      else _decode(vocab_out, ex["targets"]))
            # As seqio.Evaluator scores them: after the task's postprocessor (e.g.
            # remove_doc_start puts the document's start back on both sides), so
            # prediction files of every paper row compare on the same targets.
            record["target"] = task.postprocess_fn(target, example=ex, is_target=True)
            record["prediction"] = task.postprocess_fn(_decode(vocab_out, prediction), example=ex, is_target=False)
            record["prediction_tokens"] = prediction_tokens(prediction)
            record["target_score"] = scores[index]
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    os.replace(tmp, output_path)
    return count


def infer(
    *,
    model: Any,
    dataset_cfg: utils.DatasetConfig,
    restore_checkpoint_cfg: utils.RestoreCheckpointConfig,
    partitioner: partitioning.PjitPartitioner,
    output_dir: str,
    mode: str = "predict",
    predict_options: Optional[dict] = None,
    random_seed: int = 0,
) -> dict[str, str]:
    """Writes predictions of every task in the mixture; returns {task: jsonl path}."""
    import seqio

    from personalize_t5x.trainer import eval as evaluate_lib

    if mode != "predict":
        raise utils.ConfigError(f"infer.mode {mode!r} is not supported; only 'predict'")
    if restore_checkpoint_cfg is not None and restore_checkpoint_cfg.mode == "all":
        # T5X's infer restores one checkpoint (`create_checkpoint_manager_and_restore` of
        # `path`), and one output file per task has room for one checkpoint's predictions.
        raise utils.ConfigError("RestoreCheckpointConfig.mode 'all' is for evaluation; infer writes one "
                                "checkpoint's predictions: use 'specific' with a checkpoint_<step> folder or 'latest'")
    if dataset_cfg.task_feature_lengths is None:
        raise utils.ConfigError("TASK_FEATURE_LENGTHS must be set for inference (e.g. {'inputs': 512, 'targets': 512})")
    lengths = dict(dataset_cfg.task_feature_lengths)
    out_dir = checkpoints_lib.ensure_writable_dir(output_dir, "INFER_OUTPUT_DIR")
    mixture = utils.get_mixture_or_task(dataset_cfg.mixture_or_task_name, dataset_cfg.module)
    utils.feature_lengths_for(dataset_cfg, mixture)
    (checkpoint,) = evaluate_lib.restore_paths(restore_checkpoint_cfg)
    trainer = trainer_lib.Trainer(model=model, partitioner=partitioner)
    params, step = evaluate_lib.restore_params(trainer, checkpoint,
                                               evaluate_lib.model_input_shapes(dataset_cfg, partitioner.data_size),
                                               dtype=restore_checkpoint_cfg.dtype)
    if jax.process_index() == 0:
        print(f"[infer] {checkpoint} (step {step}, parameters in {restore_checkpoint_cfg.dtype})",
              file=sys.stderr, flush=True)
    written = {}
    for task in seqio.get_subtasks(mixture):
        if dataset_cfg.split not in task.splits:
            logger.warning("task %s has no split %s; skipped", task.name, dataset_cfg.split)
            continue
        path = out_dir / prediction_file_name(task.name, dataset_cfg.split)
        count = infer_task(trainer, params, task, split=dataset_cfg.split, lengths=lengths,
                           batch_size=dataset_cfg.batch_size, output_path=path,
                           predict_options=dict(predict_options or {}), rng_seed=random_seed)
        if jax.process_index() == 0:
            print(f"[infer] {task.name}: {count} predictions -> {path}", file=sys.stderr, flush=True)
        written[task.name] = os.fspath(path)
    if not written:
        raise utils.ConfigError(f"no task of {dataset_cfg.mixture_or_task_name!r} has split {dataset_cfg.split!r}")
    return written


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from personalize_t5x.trainer import gin_utils

    gin_utils.add_entry_point_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Parses gin, joins a multi-host job if asked, runs infer; one-line errors, exit 2."""
    from personalize_t5x.trainer import gin_utils

    return gin_utils.run_entry_point(args, infer, "infer")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m personalize_t5x.trainer.infer", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    # Gin files name `personalize_t5x.trainer.infer.infer`; run that module's copy.
    from personalize_t5x.trainer.infer import main as _main

    logging.basicConfig(level=logging.WARNING)
    sys.exit(_main())
