"""Train a T5 model on a seqio Task or Mixture (T5X's train.py flags and gin macros).

    personalize-t5x train --gin_file=models/t5_1_1_small.gin --gin_file=runs/finetune.gin \\
        --gin.MODEL_DIR="'/tmp/run'" --gin.MIXTURE_OR_TASK_NAME="'personalize_x_y'" \\
        --gin.TASK_FEATURE_LENGTHS="{'inputs': 512, 'targets': 512}" --gin.TRAIN_STEPS=1000

(`python -m personalize_t5x.trainer.train` takes the same flags.) Running the same command
again after an interruption resumes from the latest checkpoint in MODEL_DIR.
`train()` itself is plain Python; gin only supplies its arguments (gin/runs/finetune.gin).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import pathlib
import sys
import time
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np

from personalize_t5x.trainer import checkpoints as checkpoints_lib
from personalize_t5x.trainer import partitioning
from personalize_t5x.trainer import trainer as trainer_lib
from personalize_t5x.trainer import utils

logger = logging.getLogger(__name__)

MODEL_INFO_FILE = "model-info.txt"


@dataclasses.dataclass
class TrainResult:
    step: int
    state: Any
    train_metrics: dict
    eval_metrics: dict


def _console(message: str) -> None:
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)


def _input_shapes(batch: dict[str, np.ndarray], global_batch: int) -> dict[str, tuple]:
    return {k: (global_batch,) + tuple(v.shape[1:]) for k, v in batch.items()}


def _tokens_in(batch: dict[str, np.ndarray]) -> int:
    """Non-padding input + target tokens of a host batch."""
    return int(np.count_nonzero(batch["encoder_input_tokens"]) + np.count_nonzero(batch["decoder_target_tokens"]))


def _examples_in(batch: dict[str, np.ndarray]) -> int:
    """Examples in a host batch (packed rows hold several: one per segment id)."""
    segments = batch.get("decoder_segment_ids")
    if segments is None:
        return int(batch["decoder_target_tokens"].shape[0])
    return int(np.max(segments, axis=1).sum())


def write_model_info(model_dir: pathlib.Path, trainer: trainer_lib.Trainer, abstract_state: Any) -> pathlib.Path:
    """MODEL_DIR/model-info.txt: every parameter's name, size, shape, logical axes, mesh axes."""
    lines = trainer_lib.model_info_lines(abstract_state.params, trainer.params_axes, trainer.state_shardings.params)
    path = model_dir / MODEL_INFO_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def train(
    *,
    model: Any,
    model_dir: str,
    train_dataset_cfg: utils.DatasetConfig,
    checkpoint_cfg: utils.CheckpointConfig,
    partitioner: partitioning.PjitPartitioner,
    trainer_cls: Callable[..., trainer_lib.Trainer] = trainer_lib.Trainer,
    total_steps: int,
    train_eval_dataset_cfg: Optional[utils.DatasetConfig] = None,
    infer_eval_dataset_cfg: Optional[utils.DatasetConfig] = None,
    eval_steps: int = 20,
    eval_period: Optional[int] = 1000,
    random_seed: Optional[int] = 0,
    log_period: int = 10,
    summarize_config_fn: Optional[Callable[[str], Any]] = None,
    inference_evaluator_cls: Optional[Callable[..., Any]] = None,
    predict_options: Optional[dict] = None,
    fallback_to_previous_checkpoint: bool = False,
) -> TrainResult:
    """Trains `model` for `total_steps` steps, resuming from MODEL_DIR when it holds a checkpoint.

    Args:
      model: an EncoderDecoderModel (loss, scoring, decoding of the T5 network).
      model_dir: checkpoints, config.gin, model-info.txt and summaries go here.
      train_dataset_cfg: the training input (packed, shuffled).
      checkpoint_cfg: save period / keep, and the initial checkpoint to start from.
      partitioner: the device mesh and logical axis rules.
      trainer_cls: builds the Trainer (`trainer_cls(model=..., partitioner=...)`).
      total_steps: the step to stop at (counted from 0, resumed runs included).
      train_eval_dataset_cfg: teacher-forced evaluation input (None: none).
      infer_eval_dataset_cfg: decoded evaluation through seqio.Evaluator (None: none).
      eval_steps: batches of teacher-forced evaluation per evaluation.
      eval_period: evaluate every this many steps (and at the end); None/0: never.
      random_seed: fixes parameter init, data order and dropout.
      log_period: console line and summaries every this many steps.
      summarize_config_fn: called with model_dir to record the configuration.
      inference_evaluator_cls: seqio.Evaluator-compatible class for decoded metrics.
      predict_options: keyword arguments for model.predict_batch (method, num_decodes...).
      fallback_to_previous_checkpoint: when the newest checkpoint in MODEL_DIR is bad
        (corrupt, truncated, non-finite), set it aside as `bad_checkpoint_<step>-<time>`
        and resume from the previous one (gin: RESUME_FALLBACK); otherwise stop with
        one line naming it and this option.
    """
    from personalize_t5x.trainer import eval as evaluate_lib

    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 0:
        raise utils.ConfigError(f"TRAIN_STEPS must be a non-negative integer; got {total_steps!r}")
    if log_period < 1:
        raise utils.ConfigError(f"log_period must be >= 1; got {log_period}")
    seed = 0 if random_seed is None else int(random_seed)
    save_cfg = checkpoint_cfg.save or utils.SaveCheckpointConfig()
    restore_cfg = checkpoint_cfg.restore
    if restore_cfg is not None and restore_cfg.path and restore_cfg.mode == "all":
        raise utils.ConfigError("RestoreCheckpointConfig.mode 'all' is for evaluation; training restores "
                                "one checkpoint ('specific' or 'latest'), as in T5X")
    directory = checkpoints_lib.ensure_writable_dir(model_dir, "MODEL_DIR")
    trainer = trainer_cls(model=model, partitioner=partitioner)

    # Input first: a bad task or split fails before any checkpoint machinery starts,
    # its shapes size the model, and the mesh checks the batch size.
    num_shards, shard_id = jax.process_count(), jax.process_index()
    try:
        partitioner.batch_sharding(train_dataset_cfg.batch_size)
    except ValueError as error:  # partitioning's own message, already one line
        raise utils.ConfigError(str(error)) from None
    task = utils.get_mixture_or_task(train_dataset_cfg.mixture_or_task_name, train_dataset_cfg.module)
    utils.verify_matching_vocab_size(getattr(getattr(model, "config", None), "vocab_size", None), task)
    train_ds = utils.get_dataset(train_dataset_cfg, shard_id=shard_id, num_shards=num_shards, seed=seed,
                                 num_epochs=None)
    input_shapes = {k: (train_dataset_cfg.batch_size,) + tuple(spec.shape[1:])
                    for k, spec in train_ds.element_spec.items()}
    train_input = utils.CheckpointableInput(train_ds)

    rng = jax.random.PRNGKey(seed)
    init_rng, dropout_rng = jax.random.split(rng)
    abstract, shardings, _ = trainer.abstract_state(input_shapes)
    # 1. The newest good checkpoint in MODEL_DIR (T5X: MODEL_DIR first, then the path).
    resumed = checkpoints_lib.resume(
        directory, abstract, shardings, fallback=bool(fallback_to_previous_checkpoint),
        fallback_option="--gin.RESUME_FALLBACK=True", on_fallback=_console)
    if resumed is not None:
        step_dir, restored = resumed
        _console(f"[train] resuming from {step_dir}")
        state = trainer.state_from_dict(restored)
        start_step = int(jax.device_get(state.step))
        how = checkpoints_lib.restore_dataset(step_dir, train_input, shard=shard_id, num_shards=num_shards)
        if how is None:  # a checkpoint written before dataset/ existed: replay the batches
            train_input.skip_to(start_step)
            how = "position"
        _console(f"[train] input resumed at batch {train_input.position} "
                 f"({'tf.data iterator state' if how == 'iterator' else 'replayed by skipping batches'})")
    elif restore_cfg is not None and restore_cfg.path:
        # 2. INITIAL_CHECKPOINT_PATH. As in T5X, a full train state (an orbax step folder,
        # ours or T5X's) brings its step and optimizer state; the step continues from it.
        (initial,) = checkpoints_lib.checkpoint_paths(restore_cfg.path, restore_cfg.mode)
        state = _initial_state(trainer, initial, abstract, shardings, restore_cfg.dtype, init_rng, input_shapes)
        start_step = int(jax.device_get(state.step))
        _console(f"[train] initial {'train state' if start_step else 'parameters'} from {initial}"
                 + (f" at step {start_step}" if start_step else ""))
    else:
        state = trainer.init_state(init_rng, input_shapes)
        start_step = 0
    if total_steps < start_step:
        raise utils.ConfigError(f"TRAIN_STEPS {total_steps} is below the checkpoint's step {start_step}: steps "
                                f"count on from the checkpoint (T5X), so set TRAIN_STEPS to {start_step} + N")
    first = next(train_input, None)
    if first is None:
        raise utils.ConfigError(f"task {train_dataset_cfg.mixture_or_task_name!r} split "
                                f"{train_dataset_cfg.split!r} yields no batch of {train_dataset_cfg.batch_size}")
    if summarize_config_fn is not None and jax.process_index() == 0:
        summarize_config_fn(os.fspath(directory))
    if jax.process_index() == 0:
        write_model_info(directory, trainer, abstract)
    _console(f"[train] {trainer_lib.param_count(abstract.params):,} parameters, mesh "
             f"{dict(partitioner.mesh.shape)}, steps {start_step} -> {total_steps}, model_dir {directory}")

    checkpointer = checkpoints_lib.TrainStateCheckpointer(
        os.fspath(directory), period=save_cfg.period, keep=save_cfg.keep, shard=shard_id, num_shards=num_shards)
    dataset_to_save = train_input if save_cfg.save_dataset else None
    writer = utils.SummaryWriter(directory / "train", enabled=jax.process_index() == 0)
    step = start_step
    last_metrics: dict = {}
    eval_metrics: dict = {}
    try:
        evaluators = evaluate_lib.EvalRunner(
            trainer=trainer, model_dir=directory, train_eval_dataset_cfg=train_eval_dataset_cfg,
            infer_eval_dataset_cfg=infer_eval_dataset_cfg, eval_steps=eval_steps,
            inference_evaluator_cls=inference_evaluator_cls, predict_options=predict_options, seed=seed)
        window_start, window_tokens, window_examples, window_steps = time.time(), 0, 0, 0
        pending = first
        while step < total_steps:
            batch = pending if pending is not None else next(train_input)
            pending = None
            state, metrics = trainer.train_step(state, batch, dropout_rng)
            step += 1
            window_tokens += _tokens_in(batch)
            window_examples += _examples_in(batch)
            window_steps += 1
            if step % log_period == 0 or step == total_steps:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                elapsed = max(time.time() - window_start, 1e-9)
                metrics["timing/steps_per_second"] = window_steps / elapsed
                metrics["timing/examples_per_second"] = window_examples / elapsed
                metrics["timing/tokens_per_second"] = window_tokens / elapsed
                writer.scalars(step, metrics)
                _console(f"[train] step {step}/{total_steps} loss {metrics['loss']:.4f} "
                         f"acc {metrics['accuracy']:.3f} lr {metrics.get('learning_rate', float('nan')):.2e} "
                         f"{metrics['timing/steps_per_second']:.2f} steps/s "
                         f"{metrics['timing/tokens_per_second']:.0f} tokens/s")
                last_metrics = metrics
                window_start, window_tokens, window_examples, window_steps = time.time(), 0, 0, 0
            checkpointer.save(state, step=step, dataset=dataset_to_save)
            if eval_period and (step % eval_period == 0 or step == total_steps):
                eval_metrics = evaluators.run(state.params, step)
        checkpointer.save(state, step=step, force=True, dataset=dataset_to_save)
    finally:
        writer.close()
        checkpointer.close()
    _console(f"[train] done at step {step}; checkpoints in {directory}")
    return TrainResult(step=step, state=state, train_metrics=last_metrics, eval_metrics=eval_metrics)


def _initial_state(trainer: trainer_lib.Trainer, path: pathlib.Path, abstract: Any, shardings: Any,
                   dtype: str, init_rng: Any, input_shapes: dict) -> Any:
    """The train state INITIAL_CHECKPOINT_PATH gives: a whole state when it holds one, else params.

    Parameters are read in RestoreCheckpointConfig.dtype (T5X's restore dtype) and then
    held in the model's parameter dtype, which the compiled train step expects.
    """
    step_dir = path
    if not checkpoints_lib.step_of(path) and checkpoints_lib.latest_step_dir(path) is not None:
        step_dir = checkpoints_lib.latest_step_dir(path)
    if checkpoints_lib.is_own_checkpoint(os.fspath(step_dir)) and checkpoints_lib.has_optimizer_state(step_dir):
        restored = checkpoints_lib.restore_state_dict(step_dir, abstract, shardings, dtype=dtype)
        restored["params"] = jax.tree.map(lambda x, a: x.astype(a.dtype), restored["params"], abstract.params)
        return trainer.state_from_dict(restored)
    params = checkpoints_lib.load_initial_params(os.fspath(path), abstract.params, dtype=dtype)
    return trainer.init_state(init_rng, input_shapes, params=params)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from personalize_t5x.trainer import gin_utils

    gin_utils.add_entry_point_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Parses gin, joins a multi-host job if asked, runs train; one-line errors, exit 2."""
    from personalize_t5x.trainer import gin_utils

    return gin_utils.run_entry_point(args, train, "train", summarize_config_fn=gin_utils.summarize_gin_config)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m personalize_t5x.trainer.train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    # Gin files name `personalize_t5x.trainer.train.train`; run that module's copy, not __main__'s.
    from personalize_t5x.trainer.train import main as _main

    logging.basicConfig(level=logging.WARNING)
    sys.exit(_main())
