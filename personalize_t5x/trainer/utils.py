"""Dataset and checkpoint configs, the seqio input pipeline, summaries (T5X's utils names).

Gin-free: the run gins in gin/runs/ configure these dataclasses, exactly where T5X's
gins configure `utils.DatasetConfig`, `utils.CheckpointConfig` and friends.
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import pathlib
from typing import Any, Iterator, Mapping, Optional

import numpy as np

from personalize_t5x.errors import PersonalizeError

logger = logging.getLogger(__name__)


class ConfigError(PersonalizeError):
    """A run that cannot start as configured (unknown task, bad lengths, bad gin)."""


@dataclasses.dataclass
class DatasetConfig:
    """Where batches come from (T5X's `utils.DatasetConfig` fields).

    Attributes:
      mixture_or_task_name: a registered seqio Task or Mixture.
      task_feature_lengths: {'inputs': N, 'targets': M}; None computes the maximum
        (evaluation / inference only).
      split: the split to read.
      batch_size: global batch size (all hosts together).
      shuffle: shuffle examples (training).
      seed: shuffle seed; None falls back to the run's RANDOM_SEED.
      use_cached: read seqio's cached (preprocessed) version of the task.
      pack: pack several examples into each row (EncDecFeatureConverter(pack=True)).
      module: a module to import first (T5X's deprecated MIXTURE_OR_TASK_MODULE).
    """

    mixture_or_task_name: str
    task_feature_lengths: Optional[Mapping[str, int]]
    split: str
    batch_size: int
    shuffle: bool = False
    seed: Optional[int] = None
    use_cached: bool = False
    pack: bool = False
    module: Optional[str] = None

    def __post_init__(self):
        if not isinstance(self.mixture_or_task_name, str) or not self.mixture_or_task_name:
            raise ConfigError(f"MIXTURE_OR_TASK_NAME must be a non-empty string; got {self.mixture_or_task_name!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"BATCH_SIZE must be a positive integer; got {self.batch_size!r}")
        if self.task_feature_lengths is not None:
            if not isinstance(self.task_feature_lengths, Mapping):
                raise ConfigError("TASK_FEATURE_LENGTHS must be a dict of feature lengths such as "
                                  f"{{'inputs': 512, 'targets': 512}}; got {self.task_feature_lengths!r}")
            lengths = dict(self.task_feature_lengths)
            for key, value in lengths.items():
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ConfigError(f"TASK_FEATURE_LENGTHS[{key!r}] must be a positive integer; got {value!r}")
            self.task_feature_lengths = lengths


@dataclasses.dataclass
class SaveCheckpointConfig:
    """How often to save and how many to keep (T5X's names). keep=None keeps all.

    save_dataset: save the train input's position with each checkpoint (T5X's
      `dataset/train_ds-*` item: the tf.data iterator state), so a resumed run restores
      it instead of replaying the input. Unlike T5X (default False) on by default; off,
      a resumed run replays by skipping the batches already trained on.
    """

    period: int = 1000
    keep: Optional[int] = None
    dtype: str = "float32"
    save_dataset: bool = True

    def __post_init__(self):
        if isinstance(self.period, bool) or not isinstance(self.period, int) or self.period < 1:
            raise ConfigError(f"SaveCheckpointConfig.period must be a positive integer; got {self.period!r}")
        if self.keep is not None and (not isinstance(self.keep, int) or self.keep < 1):
            raise ConfigError(f"SaveCheckpointConfig.keep must be a positive integer or None; got {self.keep!r}")
        if self.dtype != "float32":
            raise ConfigError("SaveCheckpointConfig.dtype: only 'float32' checkpoints are written")
        if not isinstance(self.save_dataset, bool):
            raise ConfigError(f"SaveCheckpointConfig.save_dataset must be True or False; got {self.save_dataset!r}")


@dataclasses.dataclass
class RestoreCheckpointConfig:
    """The checkpoint to start from (INITIAL_CHECKPOINT_PATH / CHECKPOINT_PATH), T5X's fields.

    mode: 'specific' restores `path` itself; 'latest' the newest checkpoint_<step> in
      `path` (a MODEL_DIR); 'all' every one of them, oldest first (evaluation only:
      training refuses it, as T5X does).
    dtype: the dtype the parameters are restored in (T5X's restore_dtype).
    A checkpoint already in MODEL_DIR always wins over `path` when training, so a
    restarted run resumes instead of starting over (T5X's behaviour).
    """

    path: Optional[str] = None
    mode: str = "specific"
    dtype: str = "float32"

    def __post_init__(self):
        if self.mode not in ("specific", "latest", "all"):
            raise ConfigError("RestoreCheckpointConfig.mode must be 'specific', 'latest' or 'all'; "
                              f"got {self.mode!r}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"RestoreCheckpointConfig.dtype must be 'float32' or 'bfloat16'; got {self.dtype!r}")


@dataclasses.dataclass
class CheckpointConfig:
    save: Optional[SaveCheckpointConfig] = None
    restore: Optional[RestoreCheckpointConfig] = None


# ---------------------------------------------------------------------------
# seqio input
# ---------------------------------------------------------------------------
def get_mixture_or_task(name: str, module: Optional[str] = None):
    """The registered seqio Task or Mixture, or one clear error naming close matches."""
    import importlib

    import seqio

    if module:
        importlib.import_module(module)
    try:
        return seqio.get_mixture_or_task(name)
    except ValueError:
        known = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else (
            f"; {len(known)} are registered" + (f" (e.g. {', '.join(known[:3])})" if known else
                                               " (did the gin file `import tasks`?)"))
        raise ConfigError(f"unknown seqio task or mixture {name!r}{hint}") from None


def feature_lengths_for(cfg: DatasetConfig, task: Any) -> Optional[dict]:
    """Checks that TASK_FEATURE_LENGTHS names the task's features."""
    if cfg.task_feature_lengths is None:
        return None
    features = set(task.output_features)
    for key in ("inputs", "targets"):
        if key in features and key not in cfg.task_feature_lengths:
            raise ConfigError(f"TASK_FEATURE_LENGTHS lacks {key!r} (task {task.name} has features {sorted(features)})")
    return cfg.task_feature_lengths


def get_dataset(cfg: DatasetConfig, *, shard_id: int = 0, num_shards: int = 1, seed: Optional[int] = None,
                num_epochs: Optional[int] = None, start_batch: int = 0, drop_remainder: bool = True):
    """Batched tf.data of model features (EncDecFeatureConverter) for one host.

    The per-host batch is `batch_size // num_shards`. With a fixed seed the sequence
    of batches is a function of the seed alone. Training resumes the input from the
    iterator state saved with the checkpoint (`CheckpointableInput`); `start_batch`
    skips batches instead (for pipelines tf.data cannot checkpoint).
    """
    import seqio

    task = get_mixture_or_task(cfg.mixture_or_task_name, cfg.module)
    lengths = feature_lengths_for(cfg, task)
    if cfg.batch_size % num_shards:
        raise ConfigError(f"BATCH_SIZE {cfg.batch_size} is not divisible by the {num_shards} input shards (hosts)")
    shuffle_seed = cfg.seed if cfg.seed is not None else seed
    ds = task.get_dataset(sequence_length=lengths, split=cfg.split, use_cached=cfg.use_cached,
                          shuffle=cfg.shuffle, seed=shuffle_seed,
                          shard_info=seqio.ShardInfo(index=shard_id, num_shards=num_shards),
                          num_epochs=num_epochs)
    converter = seqio.EncDecFeatureConverter(pack=cfg.pack)
    ds = converter(ds, lengths)
    ds = ds.batch(cfg.batch_size // num_shards, drop_remainder=drop_remainder)
    if start_batch:
        ds = ds.skip(start_batch)
    return ds.prefetch(2)  # overlap input work with the device step


def numpy_batches(ds) -> Iterator[dict[str, np.ndarray]]:
    for batch in ds.as_numpy_iterator():
        yield {k: np.asarray(v) for k, v in batch.items()}


def vocabulary_sizes(task: Any) -> dict[str, int]:
    """{feature: vocabulary size} of a seqio Task or Mixture's output features."""
    sizes = {}
    for name, feature in task.output_features.items():
        vocabulary = getattr(feature, "vocabulary", None)
        size = getattr(vocabulary, "vocab_size", None)
        if size is not None:
            sizes[name] = int(size)
    return sizes


def verify_matching_vocab_size(model_vocab_size: Optional[int], task: Any) -> None:
    """The model must embed every id the task's vocabularies produce (T5X's verify_matching_vocabs).

    An id at or above VOCAB_SIZE would index past the embedding table, which XLA clamps
    silently; the model may have more rows than the vocabulary (T5's 32128 > 32100).
    """
    if model_vocab_size is None:
        return
    for name, size in sorted(vocabulary_sizes(task).items()):
        if size > int(model_vocab_size):
            raise ConfigError(f"VOCAB_SIZE {model_vocab_size} is smaller than the {size} ids of task "
                              f"{task.name!r} feature {name!r}: set VOCAB_SIZE to at least {size} "
                              f"(e.g. --gin.VOCAB_SIZE={size})")


class CheckpointableInput:
    """Host batches from a tf.data pipeline whose position can be saved with a checkpoint.

    `iterator` is the tf.data iterator T5X checkpoints (`tf.train.Checkpoint(ds=...)`);
    `position` counts the batches handed out. A pipeline that tf.data cannot checkpoint
    (a Python generator source) sets `checkpointable` False at the first save, and is
    then positioned on restore by skipping `position` batches (`skip_to`).
    """

    def __init__(self, dataset: Any):
        self.dataset = dataset
        self.iterator = iter(dataset)
        self.position = 0
        self.checkpointable = True
        self.restored_from: Optional[str] = None

    def skip_to(self, position: int) -> None:
        self.iterator = iter(self.dataset.skip(int(position)))
        self.position = int(position)

    def __iter__(self) -> "CheckpointableInput":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self.iterator)
        self.position += 1
        return {k: np.asarray(v) for k, v in batch.items()}


# ---------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------
class SummaryWriter:
    """TensorBoard scalar summaries through TensorFlow's low-level summary op.

    `tf.summary.scalar` needs the tensorboard package; the raw `tf.summary.write`
    with the scalars plugin's metadata does not, and TensorBoard reads the result
    the same way.
    """

    def __init__(self, logdir: os.PathLike | str, enabled: bool = True):
        self.logdir = pathlib.Path(logdir)
        self._writer = None
        if enabled:
            import tensorflow as tf
            from tensorflow.core.framework import summary_pb2

            self._tf = tf
            self._metadata = summary_pb2.SummaryMetadata(
                plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")).SerializeToString()
            self.logdir.mkdir(parents=True, exist_ok=True)
            self._writer = tf.summary.create_file_writer(os.fspath(self.logdir))

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        if self._writer is None:
            return
        tf = self._tf
        with self._writer.as_default():
            for name, value in values.items():
                tf.summary.write(name, tf.constant(float(value), tf.float32), step=int(step),
                                 metadata=self._metadata)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
