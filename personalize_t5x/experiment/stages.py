"""The one in-process API through which `run` (and so the demo) starts every stage.

Each function is keyword-only, takes typed configuration, calls the same library code the
stage's own command calls, and returns what the next stage needs. Nothing here parses
command lines or gin, and nothing starts a subprocess: the features stage's Beam workers
are the only processes of their own (Beam's DirectRunner starts them), because isolation
is what they are for.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Sequence

from personalize_t5x.experiment import config as config_lib

TRAIN_DIR = "train"
PREDICTIONS_DIR = "predictions"


# ----------------------------------------------------------------------- data stages


def convert_corpus(*, corpus: config_lib.CorpusSpec, output: str) -> dict[str, Any]:
    """The corpus in Document JSONL (`personalize-t5x corpus convert`)."""
    from personalize_t5x.commands import corpus as corpus_command

    report = corpus_command.convert(fmt=corpus.format, inputs=list(corpus.inputs), output=output,
                                    skip_bad=corpus.skip_bad)
    return {"documents": report.kept, "report": report.to_json()}


def build_examples(*, documents_path: str, output_dir: str, config: Any) -> dict[str, Any]:
    """The paper's examples, splits, author pairs and stats.json (`examples build`)."""
    from personalize_t5x.errors import StageReport
    from personalize_t5x.pipeline import examples as examples_lib
    from personalize_t5x.pipeline.corpus.records import read_documents

    report = StageReport()
    result = examples_lib.build_examples(read_documents(documents_path, report=report), config=config,
                                         report=report, progress=False)
    examples_lib.write_examples(result, output_dir)
    return result.stats


def train_vocabulary(*, examples_dir: str, output: str, vocab_size: int, seed: int) -> dict[str, Any]:
    """SentencePiece on the training split (`personalize-t5x vocab`)."""
    from personalize_t5x.tasks import vocab

    sentences = vocab.training_sentences(examples_dir, include_author_pairs=False,
                                         max_sentences=vocab.DEFAULT_MAX_SENTENCES, seed=seed)
    pieces = vocab.train_sentencepiece(sentences, output, vocab_size, seed=seed)
    return {"pieces": pieces, "lines": len(sentences)}


def compute_features(*, examples_dir: str, output_dir: str, retrieval: config_lib.RetrievalSpec) -> dict[str, Any]:
    """Ranking features as TFRecords (`personalize-t5x features`, Apache Beam)."""
    from personalize_t5x.pipeline import features
    from personalize_t5x.pipeline.retrieval import ranking

    result = features.run_features(
        examples_dir=examples_dir, output_dir=output_dir, progress=False,
        config=features.FeaturesConfig(
            strategies=retrieval.strategies,
            ranking=ranking.RankingConfig(max_chars=retrieval.max_chars, snippet_chars=retrieval.snippet_chars),
            direct_num_workers=retrieval.direct_num_workers,
            one_core_per_worker=retrieval.one_core_per_worker,
            pipeline_args=("--default_sdk_harness_log_level=ERROR",),
        ))
    return {"computed_splits": result.computed_splits, "skipped_splits": result.skipped_splits,
            "splits": result.report.get("splits", {})}


def evaluate_retrieval(*, features_dir: str, strategies: Sequence[str], split: str) -> dict[str, Any]:
    """Per-example ROUGE of each ranker's text against the target (`eval-retrieval`)."""
    from personalize_t5x.tasks import retrieval_eval

    return retrieval_eval.evaluate_retrieval(
        features_dir=features_dir, progress=False,
        config=retrieval_eval.RetrievalEvalConfig(splits=(split,), strategies=tuple(strategies), keep_per_example=True))


def register_tasks(*, name: str, features_dir: str, vocabulary_path: str, summary_ranker: str) -> Any:
    """Registers the dataset's SeqIO tasks in this process (what `import tasks` does)."""
    from personalize_t5x.tasks import registry

    return registry.register_dataset(name, features_dir=features_dir, vocabulary=vocabulary_path,
                                     summary_ranker=summary_ranker, overwrite=True)


def register_aux_tasks(*, name: str, features_dir: str, vocabulary_path: str, summary_ranker: str) -> dict[str, str]:
    """Registers the SumCtx / SynCtx auxiliary tasks; returns {model: task name}."""
    from personalize_t5x.tasks import registry

    return registry.register_aux_tasks(name, features_dir=features_dir, vocabulary=vocabulary_path,
                                       summary_ranker=summary_ranker, overwrite=True)


def join_aux_predictions(*, features_dir: str, prediction_files: dict[str, dict[str, str]],
                         train_inputs: str) -> dict[str, int]:
    """Puts the auxiliary models' predictions into summary_ctx / keywords_ctx (`aux-join`)."""
    from personalize_t5x.pipeline import aux_join

    return aux_join.join_aux_predictions(features_dir=features_dir, prediction_files=prediction_files,
                                         train_inputs=train_inputs)


def model_vocab_size(vocabulary_path: str, extra_ids: int = 100) -> int:
    """SentencePiece pieces plus SeqIO's extra ids, rounded up to a multiple of 128 (as
    T5's 32,100 ids become a 32,128-row embedding) so the matrix tiles evenly."""
    import sentencepiece as spm

    pieces = spm.SentencePieceProcessor(model_file=vocabulary_path).get_piece_size()
    return -(-(pieces + extra_ids) // 128) * 128


# ------------------------------------------------------------------- trainer stages


def build_model(model: config_lib.ModelSpec, *, vocab_size: int) -> Any:
    """The T5 1.1 EncoderDecoderModel of the spec (what gin/models/*.gin build)."""
    from personalize_t5x.network import t5
    from personalize_t5x.trainer import models

    network = t5.T5Config(
        vocab_size=vocab_size, dtype=model.dtype, emb_dim=model.emb_dim, num_heads=model.num_heads,
        num_encoder_layers=model.num_encoder_layers, num_decoder_layers=model.num_decoder_layers,
        head_dim=model.head_dim, mlp_dim=model.mlp_dim, mlp_activations=("gelu", "linear"),
        dropout_rate=model.dropout_rate, logits_via_embedding=False)
    return models.EncoderDecoderModel(module=t5.Transformer(config=network), z_loss=1e-4)


def _partitioner(model: config_lib.ModelSpec) -> Any:
    from personalize_t5x.trainer import partitioning

    return partitioning.PjitPartitioner(num_partitions=model.num_partitions,
                                        logical_axis_rules=partitioning.standard_logical_axis_rules())


def _lengths(budget: config_lib.Budget) -> dict[str, int]:
    return {"inputs": budget.inputs_length, "targets": budget.targets_length}


def train_row(*, task_name: str, model_dir: str, model: config_lib.ModelSpec, budget: config_lib.Budget,
              vocab_size: int, seed: int, on_step: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Trains one row to `budget.train_steps`, resuming from model_dir's checkpoint."""
    from personalize_t5x.trainer import train as train_lib
    from personalize_t5x.trainer import trainer as trainer_lib
    from personalize_t5x.trainer import utils

    schedule = ({"factors": "constant"} if budget.schedule == "constant" else
                {"factors": "constant * linear_warmup * rsqrt_normalized_decay", "warmup_steps": budget.warmup_steps})
    learning_rate_fn = trainer_lib.create_learning_rate_scheduler(base_learning_rate=budget.learning_rate, **schedule)

    import pathlib

    from personalize_t5x.trainer import checkpoints as checkpoints_lib

    latest = checkpoints_lib.latest_step_dir(pathlib.Path(model_dir))
    counter = {"step": int(latest.name.rsplit("_", 1)[1]) if latest is not None else 0}
    first_step = counter["step"]

    class ProgressTrainer(trainer_lib.Trainer):
        """The Trainer with a callback after each step (the runner's progress line and ETA)."""

        def train_step(self, state, batch, dropout_rng):
            result = super().train_step(state, batch, dropout_rng)
            counter["step"] += 1
            if on_step is not None:
                on_step(counter["step"] - first_step, budget.train_steps - first_step)
            return result

    def make_trainer(**kwargs):
        return ProgressTrainer(learning_rate_fn=learning_rate_fn, **kwargs)

    restore = (utils.RestoreCheckpointConfig(path=model.initial_checkpoint, mode="specific")
               if model.initial_checkpoint else None)
    result = train_lib.train(
        model=build_model(model, vocab_size=vocab_size),
        model_dir=model_dir,
        train_dataset_cfg=utils.DatasetConfig(mixture_or_task_name=task_name, task_feature_lengths=_lengths(budget),
                                              split="train", batch_size=budget.batch_size, shuffle=True, pack=True),
        checkpoint_cfg=utils.CheckpointConfig(
            save=utils.SaveCheckpointConfig(period=budget.checkpoint_period, keep=1), restore=restore),
        partitioner=_partitioner(model),
        trainer_cls=make_trainer,
        total_steps=budget.train_steps,
        eval_period=None,
        random_seed=seed,
        log_period=max(1, budget.train_steps // 4),
    )
    return {"step": result.step, "loss": result.train_metrics.get("loss"),
            "accuracy": result.train_metrics.get("accuracy")}


def predict_row(*, task_name: str, model_dir: str, output_dir: str, model: config_lib.ModelSpec,
                budget: config_lib.Budget, vocab_size: int, seed: int) -> str:
    """Decodes the eval split with model_dir's latest checkpoint; returns the JSONL path."""
    return predict_splits(task_name=task_name, model_dir=model_dir, output_dir=output_dir, model=model,
                          budget=budget, vocab_size=vocab_size, seed=seed, splits=[budget.eval_split])[budget.eval_split]


def predict_splits(*, task_name: str, model_dir: str, output_dir: str, model: config_lib.ModelSpec,
                   budget: config_lib.Budget, vocab_size: int, seed: int, splits: Sequence[str]) -> dict[str, str]:
    """Decodes `splits` of one task with model_dir's latest checkpoint, restoring it and
    compiling the decoder once (an auxiliary model predicts for every split), through
    infer's own `infer_task`: the files are `infer`'s, OUTPUT/<task>-<split>.jsonl, and
    the budget's decoding. Returns {split: path}."""
    import pathlib

    from personalize_t5x.trainer import checkpoints as checkpoints_lib
    from personalize_t5x.trainer import eval as evaluate_lib
    from personalize_t5x.trainer import infer as infer_lib
    from personalize_t5x.trainer import trainer as trainer_lib
    from personalize_t5x.trainer import utils

    task = utils.get_mixture_or_task(task_name)
    out_dir = checkpoints_lib.ensure_writable_dir(output_dir, "INFER_OUTPUT_DIR")
    trainer = trainer_lib.Trainer(model=build_model(dataclasses.replace(model, dropout_rate=0.0), vocab_size=vocab_size),
                                  partitioner=_partitioner(model))
    batch_size = 64
    shapes_cfg = utils.DatasetConfig(mixture_or_task_name=task_name, task_feature_lengths=_lengths(budget),
                                     split=splits[0], batch_size=batch_size)
    latest = evaluate_lib.restore_paths(utils.RestoreCheckpointConfig(path=model_dir, mode="latest"))[-1]
    params, _ = evaluate_lib.restore_params(trainer, latest,
                                            evaluate_lib.model_input_shapes(shapes_cfg, trainer.partitioner.data_size))
    written = {}
    for split in splits:
        path = pathlib.Path(out_dir) / infer_lib.prediction_file_name(task_name, split)
        infer_lib.infer_task(trainer, params, task, split=split, lengths=_lengths(budget), batch_size=batch_size,
                             output_path=path, predict_options=budget.predict_options, rng_seed=seed)
        written[split] = os.fspath(path)
    return written


class Stopwatch:
    """Wall and CPU seconds of a block (the report quotes both: the machine may be shared)."""

    def __enter__(self) -> "Stopwatch":
        self.wall0, self.cpu0 = time.perf_counter(), _process_cpu()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = _process_cpu() - self.cpu0


def _process_cpu() -> float:
    """CPU seconds of this process and its finished children (Beam's workers)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system
