"""Evaluate a checkpoint on a seqio Task or Mixture; write metrics JSON (T5X's eval.py).

    personalize-t5x eval --gin_file=models/t5_1_1_small.gin --gin_file=runs/eval.gin \\
        --gin.CHECKPOINT_PATH="'/tmp/run/checkpoint_1000'" --gin.EVAL_OUTPUT_DIR="'/tmp/run/eval'" \\
        --gin.MIXTURE_OR_TASK_NAME="'personalize_x_y'"

Decoded metrics come from `seqio.Evaluator` (the task's own metric functions on the
model's predictions); teacher-forced loss and token accuracy are added per task.
EVAL_OUTPUT_DIR/metrics.json holds everything, keyed by task.

CHECKPOINT_PATH is read as T5X reads it, by RestoreCheckpointConfig.mode: 'specific' (the
default) a checkpoint_<step> folder (or a T5X / Hugging Face checkpoint); 'latest' the
newest checkpoint_<step> of a MODEL_DIR; 'all' every one of them, oldest first, one line
each in EVAL_OUTPUT_DIR/metrics.jsonl, skipping those an earlier run listed in
EVAL_OUTPUT_DIR/eval.<mixture>.ckpt. RestoreCheckpointConfig.dtype is the dtype the
parameters are restored and run in.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import pathlib
import re
import sys
from typing import Any, Callable, Iterator, Optional, Sequence

import jax
import numpy as np

from personalize_t5x.trainer import checkpoints as checkpoints_lib
from personalize_t5x.trainer import partitioning
from personalize_t5x.trainer import trainer as trainer_lib
from personalize_t5x.trainer import utils

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"        # the one checkpoint of mode 'specific' / 'latest'
STEP_METRICS_FILE = "metrics.jsonl"  # mode 'all': one line per checkpoint, in step order


def default_evaluator_loggers() -> list:
    """seqio loggers that work here: python logging and JSON (+ TensorBoard if installed)."""
    import seqio

    loggers = [seqio.PyLoggingLogger, seqio.JSONLogger]
    try:
        import tensorboard  # noqa: F401  (seqio's TensorBoardLogger needs it)

        loggers.append(seqio.TensorBoardLogger)
    except ImportError:
        pass
    return loggers


def inference_feature_converter():
    """The one feature converter of decoding and scoring (seqio.Evaluator's and infer's):
    T5X's EncDecFeatureConverter, unpacked, so row i of a batch is example i."""
    import seqio

    return seqio.EncDecFeatureConverter(pack=False)


def host_batches(ds, batch_size: int, data_size: int) -> Iterator[tuple[np.ndarray, dict, int]]:
    """(global indices, this host's rows of a global batch, real rows) from an enumerated
    (index, model features) dataset that every host reads whole and in the same order.

    Each host feeds only its own rows (its devices' part of the `data` axis, hosts in
    process order as `jax.devices()` lists them), so hosts split the decoding between them;
    the jitted step returns the whole batch's results to every host. A global batch is a
    multiple of the data axis and of the host count, so the last partial batch is filled
    with copies of its first row, which callers drop (`real`).
    """
    hosts, host = jax.process_count(), jax.process_index()
    multiple = math.lcm(data_size, hosts)
    size = max(batch_size, multiple)
    size += (-size) % multiple
    local = size // hosts
    for indices, features in ds.batch(size).as_numpy_iterator():
        real = len(indices)
        batch = {}
        for key, value in features.items():
            value = np.asarray(value)
            if real < size:
                value = np.concatenate([value, np.repeat(value[:1], size - real, axis=0)], axis=0)
            batch[key] = value[host * local:(host + 1) * local]
        yield np.asarray(indices), batch, real


def map_batches(trainer: trainer_lib.Trainer, ds, batch_size: int,
                fn: Callable[[dict], Sequence[Any]]) -> list[tuple[int, Any]]:
    """[(example index, fn's row)] over an enumerated model-feature dataset, every host
    feeding its own rows (`host_batches`); `fn` maps a host batch to the global batch's rows."""
    out = []
    for indices, batch, real in host_batches(ds, batch_size, trainer.partitioner.data_size):
        rows = fn(batch)
        out.extend((int(i), row) for i, row in zip(indices[:real], rows[:real]))
    return out


def predict_fn(trainer: trainer_lib.Trainer, params, batch_size: int, predict_options: dict,
               rng_seed: int = 0) -> Callable:
    """seqio.Evaluator's predict_fn: (index, decoded token ids) of every example."""

    def predict(ds):
        rng = jax.random.PRNGKey(rng_seed)

        def decode(batch):
            nonlocal rng
            rng, step_rng = jax.random.split(rng)
            return [t.tolist() for t in trainer.predict_batch(params, batch, rng=step_rng, **predict_options)]

        return map_batches(trainer, ds, batch_size, decode)

    return predict


def score_fn(trainer: trainer_lib.Trainer, params, batch_size: int) -> Callable:
    """seqio.Evaluator's score_fn: (index, log-likelihood of the targets) of every example."""

    def score(ds):
        return map_batches(trainer, ds, batch_size, lambda batch: [float(s) for s in trainer.score_batch(params, batch)])

    return score


def zero_padded(batches, size: int):
    """Completes short batches with all-zero rows, which carry no loss weight."""
    for batch in batches:
        rows = len(batch["decoder_target_tokens"])
        if rows < size:
            batch = {k: np.concatenate([v, np.zeros((size - rows,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
        yield batch


class EvalRunner:
    """Teacher-forced and decoded evaluation of params at a step (used by train and eval)."""

    def __init__(self, *, trainer: trainer_lib.Trainer, model_dir: pathlib.Path,
                 train_eval_dataset_cfg: Optional[utils.DatasetConfig] = None,
                 infer_eval_dataset_cfg: Optional[utils.DatasetConfig] = None, eval_steps: Optional[int] = 20,
                 inference_evaluator_cls: Optional[Callable[..., Any]] = None,
                 predict_options: Optional[dict] = None, seed: int = 0, summaries: bool = True):
        self.trainer = trainer
        self.model_dir = pathlib.Path(model_dir)
        self.train_eval_cfg = train_eval_dataset_cfg
        self.infer_eval_cfg = infer_eval_dataset_cfg
        self.eval_steps = eval_steps
        self.predict_options = dict(predict_options or {})
        self.seed = seed
        self.summaries = summaries and jax.process_index() == 0
        self._evaluator = None
        self._evaluator_cls = inference_evaluator_cls
        self._writers: dict[str, utils.SummaryWriter] = {}

    def _writer(self, name: str) -> utils.SummaryWriter:
        if name not in self._writers:
            self._writers[name] = utils.SummaryWriter(self.model_dir / name, enabled=self.summaries)
        return self._writers[name]

    # -- teacher-forced ---------------------------------------------------
    def teacher_forced(self, params, step: int) -> dict[str, dict[str, float]]:
        cfg = self.train_eval_cfg
        if cfg is None:
            return {}
        import seqio

        task_or_mixture = utils.get_mixture_or_task(cfg.mixture_or_task_name, cfg.module)
        tasks = seqio.get_subtasks(task_or_mixture)
        results = {}
        for task in tasks:
            if cfg.split not in task.splits:
                continue
            task_cfg = utils.DatasetConfig(**{**cfg.__dict__, "mixture_or_task_name": task.name, "module": None})
            whole_split = self.eval_steps in (None, -1)
            ds = utils.get_dataset(task_cfg, shard_id=jax.process_index(), num_shards=jax.process_count(),
                                   seed=self.seed, num_epochs=1 if whole_split else None,
                                   drop_remainder=not whole_split)
            if not whole_split:
                ds = ds.take(self.eval_steps)
            per_host = task_cfg.batch_size // jax.process_count()
            metrics = self.trainer.evaluate_loss(params, zero_padded(utils.numpy_batches(ds), per_host))
            if metrics:
                results[task.name] = metrics
                self._writer(f"training_eval/{task.name}").scalars(step, metrics)
        return results

    # -- decoded (seqio.Evaluator) ------------------------------------------
    def evaluator(self):
        if self._evaluator is None and self.infer_eval_cfg is not None:
            import seqio

            cfg = self.infer_eval_cfg
            utils.get_mixture_or_task(cfg.mixture_or_task_name, cfg.module)  # clear error if unknown
            evaluator_cls = self._evaluator_cls or seqio.Evaluator
            kwargs = dict(mixture_or_task_name=cfg.mixture_or_task_name,
                          feature_converter=inference_feature_converter(),
                          eval_split=cfg.split, use_cached=cfg.use_cached, seed=cfg.seed if cfg.seed is not None else 42,
                          sequence_length=cfg.task_feature_lengths,
                          log_dir=os.fspath(self.model_dir / "inference_eval"))
            if self._evaluator_cls is None:
                kwargs["logger_cls"] = default_evaluator_loggers()
            (self.model_dir / "inference_eval").mkdir(parents=True, exist_ok=True)
            self._evaluator = evaluator_cls(**kwargs)
        return self._evaluator

    def decoded(self, params, step: int) -> dict[str, dict[str, float]]:
        evaluator = self.evaluator()
        if evaluator is None or not evaluator.eval_tasks:
            return {}
        batch_size = self.infer_eval_cfg.batch_size
        metrics, _ = evaluator.evaluate(
            compute_metrics=jax.process_index() == 0, step=step,
            predict_fn=predict_fn(self.trainer, params, batch_size, self.predict_options, self.seed),
            score_fn=score_fn(self.trainer, params, batch_size))
        results = metrics.result() if hasattr(metrics, "result") else metrics
        out = {}
        for task, values in (results or {}).items():
            out[task] = {name: _scalar(value) for name, value in values.items() if _scalar(value) is not None}
        return out

    def run(self, params, step: int) -> dict[str, dict[str, float]]:
        """All configured evaluations; returns {task: {metric: value}} and logs them."""
        merged: dict[str, dict[str, float]] = {}
        for task, values in self.teacher_forced(params, step).items():
            merged.setdefault(task, {}).update({f"teacher_forced/{k}": v for k, v in values.items()})
        for task, values in self.decoded(params, step).items():
            merged.setdefault(task, {}).update(values)
        for task, values in merged.items():
            shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(values.items()))
            if jax.process_index() == 0:
                print(f"[eval] step {step} {task}: {shown}", file=sys.stderr, flush=True)
        return merged


def _scalar(value: Any) -> Optional[float]:
    """A metric as a float (seqio metric objects, numpy scalars); None if not scalar."""
    if hasattr(value, "value"):
        value = value.value
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return float(array) if array.shape == () else None


def restore_paths(restore_cfg: Optional[utils.RestoreCheckpointConfig]) -> list[pathlib.Path]:
    """The checkpoints CHECKPOINT_PATH and RestoreCheckpointConfig.mode name, oldest first.

    T5X's rules (`utils.get_first_valid_restore_config_and_paths`): 'specific' is `path`
    itself, 'latest' the newest checkpoint_<step> in it, 'all' every one. A MODEL_DIR
    given as 'specific' is refused, as T5X's restore refuses a folder that is not a
    checkpoint_<step> (`checkpoints.get_step_from_checkpoint_dir`), rather than guessing
    which of its steps was meant.
    """
    if restore_cfg is None or not restore_cfg.path:
        raise utils.ConfigError("CHECKPOINT_PATH is not set")
    path = pathlib.Path(restore_cfg.path).expanduser()
    if restore_cfg.mode == "specific" and checkpoints_lib.is_model_dir(path):
        steps = checkpoints_lib.restorable_step_dirs(path)
        example = f" (e.g. {steps[-1][1]})" if steps else ""
        raise checkpoints_lib.CheckpointError(
            f"checkpoint {restore_cfg.path}: is a MODEL_DIR of checkpoint_<step> folders, and "
            f"RestoreCheckpointConfig.mode='specific' restores one checkpoint: name a step folder{example} "
            "or set RestoreCheckpointConfig.mode to 'latest' (or 'all' to evaluate every step)")
    return checkpoints_lib.checkpoint_paths(os.fspath(path), restore_cfg.mode)


def restore_params(trainer: trainer_lib.Trainer, path: os.PathLike | str, input_shapes: dict, *,
                   dtype: str = "float32") -> tuple[Any, Optional[int]]:
    """Sharded params of one checkpoint (a step folder or a T5X/HF checkpoint) in `dtype`, and
    the step its folder names (None for a checkpoint that is not a checkpoint_<step> folder).

    `dtype` is RestoreCheckpointConfig.dtype (T5X's `restore_dtype`): the model then runs on
    parameters of that dtype, as T5X's eval and infer do.
    """
    abstract, shardings, _ = trainer.abstract_state(input_shapes)
    path = pathlib.Path(path)
    params = checkpoints_lib.load_initial_params(os.fspath(path), abstract.params, dtype=dtype)
    placed = jax.tree.map(lambda x, s: jax.device_put(np.asarray(x), s), params, shardings.params)
    return placed, checkpoints_lib.step_of(path)


def model_input_shapes(dataset_cfg: utils.DatasetConfig, batch_size: int) -> dict:
    """Input shapes for building the model: TASK_FEATURE_LENGTHS or small defaults.

    Parameter shapes do not depend on sequence lengths, so any lengths work here.
    """
    lengths = dataset_cfg.task_feature_lengths or {}
    enc = int(lengths.get("inputs", 8))
    dec = int(lengths.get("targets", 8))
    return {"encoder_input_tokens": (batch_size, enc), "decoder_input_tokens": (batch_size, dec),
            "decoder_target_tokens": (batch_size, dec)}


def evaluated_checkpoints_file(output_dir: os.PathLike | str, mixture_or_task_name: str) -> pathlib.Path:
    """EVAL_OUTPUT_DIR/eval.<mixture>.ckpt: the checkpoints evaluated so far, one path a line
    in step order (T5X's eval writes and reads the same file, under the same name)."""
    return pathlib.Path(output_dir) / f"eval.{mixture_or_task_name}.ckpt"


def _read_lines(path: pathlib.Path) -> list[str]:
    return path.read_text().split() if path.is_file() else []


def _replace_text(path: pathlib.Path, text: str) -> None:
    # Write-then-rename: a job killed mid-write leaves the previous file whole.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _checkpoint_key(restore_cfg: utils.RestoreCheckpointConfig, folder: pathlib.Path) -> str:
    """A checkpoint's line in eval.<mixture>.ckpt, spelled as T5X spells it
    (`checkpoints.get_checkpoint_dir`: the configured path joined with the folder name), so
    T5X's eval and this one skip the same checkpoints of each other's file."""
    if restore_cfg.mode == "specific":
        return os.path.expanduser(os.fspath(restore_cfg.path))
    return os.path.join(os.path.expanduser(os.fspath(restore_cfg.path)), folder.name)


def _by_step(keys) -> list[str]:
    # T5X orders this file by step number (eval._sorted_ckpt_paths), not by text.
    def step(key):
        found = re.search(r"(\d+)/?$", key)
        return (int(found.group(1)) if found else -1, key)

    return sorted(keys, key=step)


def evaluate(
    *,
    model: Any,
    dataset_cfg: utils.DatasetConfig,
    restore_checkpoint_cfg: utils.RestoreCheckpointConfig,
    partitioner: partitioning.PjitPartitioner,
    output_dir: str,
    inference_evaluator_cls: Optional[Callable[..., Any]] = None,
    predict_options: Optional[dict] = None,
    teacher_forced: bool = True,
    random_seed: int = 0,
) -> dict:
    """Evaluates the checkpoint(s) RestoreCheckpointConfig names; writes and returns the results.

    'specific' / 'latest': one checkpoint; EVAL_OUTPUT_DIR/metrics.json holds its result,
    which is returned. 'all': every checkpoint_<step> of the MODEL_DIR, oldest first, each
    recorded in EVAL_OUTPUT_DIR/metrics.jsonl (one result a line, in step order) as soon
    as it is done; checkpoints listed in eval.<mixture>.ckpt by an earlier run are skipped,
    as T5X's eval skips them. Returns {'mode': 'all', 'results': [this call's results],
    'skipped': [checkpoints skipped], ...}. Every mode also logs per step, as T5X does:
    seqio's inference_eval/<task>-metrics.jsonl and TensorBoard events at the checkpoint's
    step, and the teacher-forced scalars under training_eval/<task>.
    """
    out_dir = checkpoints_lib.ensure_writable_dir(output_dir, "EVAL_OUTPUT_DIR")
    utils.get_mixture_or_task(dataset_cfg.mixture_or_task_name, dataset_cfg.module)
    restore_cfg = restore_checkpoint_cfg
    # Resolved before the model is built, so a wrong path or mode costs no compilation.
    paths = restore_paths(restore_cfg)
    evaluated_file = evaluated_checkpoints_file(out_dir, dataset_cfg.mixture_or_task_name)
    skipped: list[str] = []
    if restore_cfg.mode == "all":
        done = set(_read_lines(evaluated_file))
        skipped = [_checkpoint_key(restore_cfg, p) for p in paths if _checkpoint_key(restore_cfg, p) in done]
        paths = [p for p in paths if _checkpoint_key(restore_cfg, p) not in done]
        if skipped and jax.process_index() == 0:
            print(f"[eval] skipping {len(skipped)} checkpoint(s) already in {evaluated_file}",
                  file=sys.stderr, flush=True)

    trainer = trainer_lib.Trainer(model=model, partitioner=partitioner)
    data_size = partitioner.data_size
    input_shapes = model_input_shapes(dataset_cfg, data_size)
    tf_cfg = None
    if teacher_forced and dataset_cfg.task_feature_lengths is not None:
        tf_cfg = utils.DatasetConfig(**{**dataset_cfg.__dict__, "shuffle": False})
        tf_cfg.batch_size += (-tf_cfg.batch_size) % data_size
    # One runner for every checkpoint: seqio's Evaluator reads and caches the split once,
    # and the jitted steps compile once.
    runner = EvalRunner(trainer=trainer, model_dir=out_dir, train_eval_dataset_cfg=tf_cfg,
                        infer_eval_dataset_cfg=dataset_cfg, eval_steps=None,
                        inference_evaluator_cls=inference_evaluator_cls, predict_options=predict_options,
                        seed=random_seed)
    results = []
    for path in paths:
        params, step = restore_params(trainer, path, input_shapes, dtype=restore_cfg.dtype)
        if jax.process_index() == 0:
            print(f"[eval] {path} (step {step}, parameters in {restore_cfg.dtype})", file=sys.stderr, flush=True)
        metrics = runner.run(params, step if step is not None else 0)
        # Released before the next restore, so two checkpoints are never held at once.
        del params
        result = {"checkpoint": os.fspath(path), "step": step,
                  "mixture_or_task_name": dataset_cfg.mixture_or_task_name, "split": dataset_cfg.split,
                  "dtype": restore_cfg.dtype, "metrics": metrics}
        results.append(result)
        if jax.process_index() == 0:
            if restore_cfg.mode == "all":
                _record_step_result(out_dir / STEP_METRICS_FILE, result)
            else:
                _replace_text(out_dir / METRICS_FILE, json.dumps(result, indent=2, sort_keys=True) + "\n")
                print(f"[eval] wrote {out_dir / METRICS_FILE}", file=sys.stderr, flush=True)
            keys = set(_read_lines(evaluated_file)) | {_checkpoint_key(restore_cfg, path)}
            _replace_text(evaluated_file, "\n".join(_by_step(keys)))
    if restore_cfg.mode != "all":
        return results[0]
    return {"checkpoint": os.fspath(restore_cfg.path), "mode": "all",
            "mixture_or_task_name": dataset_cfg.mixture_or_task_name, "split": dataset_cfg.split,
            "results": results, "skipped": skipped}


def _record_step_result(path: pathlib.Path, result: dict) -> None:
    """Puts one checkpoint's result into metrics.jsonl, replacing an older line of the same
    checkpoint, mixture and split, and keeps the lines in step order."""
    def key(record):
        return (record.get("checkpoint"), record.get("mixture_or_task_name"), record.get("split"))

    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    records = [r for r in records if key(r) != key(result)] + [result]
    records.sort(key=lambda r: (r.get("step") if r.get("step") is not None else -1, r.get("checkpoint") or ""))
    _replace_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    print(f"[eval] step {result['step']} added to {path}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from personalize_t5x.trainer import gin_utils

    gin_utils.add_entry_point_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Parses gin, joins a multi-host job if asked, runs evaluate; one-line errors, exit 2."""
    from personalize_t5x.trainer import gin_utils

    return gin_utils.run_entry_point(args, evaluate, "evaluate")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m personalize_t5x.trainer.eval", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    # Gin files name `personalize_t5x.trainer.eval.evaluate`; run that module's copy.
    from personalize_t5x.trainer.eval import main as _main

    logging.basicConfig(level=logging.WARNING)
    sys.exit(_main())
