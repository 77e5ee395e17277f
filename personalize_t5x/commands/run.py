"""`personalize-t5x run --gin_file=experiments/<name>.gin [--gin.X=Y]`: a whole experiment.

Convert, examples, vocabulary, features, retrieval quality, the auxiliary SumCtx/SynCtx
models when a row reads them, training and prediction of every row under one budget, and
the report (personalize_t5x/experiment/). Each step is
resumable: a rerun after success does nothing and says so; a rerun after a crash goes on
where it stopped.

This module is the gin layer: `experiment` below is the configurable an experiment gin
binds (its macros at the top read like the experiment: corpus, variants, model, budget,
seed), and it returns the typed `ExperimentConfig` the library runs. Nothing below this
module reads gin.

Corpus inputs may be glob patterns (sorted) and may start with `package:` for files
shipped inside this package (the demo corpus: `package:demo/demo_corpus.jsonl.gz`).
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
from importlib import resources
from typing import Any, Sequence

import gin

PACKAGE_PREFIX = "package:"


def resolve_inputs(patterns: Sequence[str]) -> tuple[str, ...]:
    """`package:` paths inside the installed package, globs expanded (a pattern that
    matches nothing is kept as written, so the convert step names it in its error)."""
    resolved: list[str] = []
    for pattern in ([patterns] if isinstance(patterns, str) else patterns):
        if pattern.startswith(PACKAGE_PREFIX):
            resolved.append(str(resources.files("personalize_t5x").joinpath(pattern[len(PACKAGE_PREFIX):])))
            continue
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
        resolved.extend(matches or [pattern])
    return tuple(resolved)


@gin.configurable(module="run")
def experiment(
    *,
    name: str = gin.REQUIRED,
    output_dir: str = gin.REQUIRED,
    corpus_format: str = gin.REQUIRED,
    corpus_inputs: Sequence[str] = gin.REQUIRED,
    variants: Sequence[str] = gin.REQUIRED,
    seed: int = 0,
    skip_bad: bool = False,
    # the paper's data preparation (METHOD.md's values by default)
    context_chars: int = 150,
    min_target_chars: int = 300,
    min_profile_docs: int = 2,
    min_examples_per_user: int = 5,
    max_examples_per_user: int = 50,
    split_mode: str = "user",
    split_fractions: Sequence[float] = (0.85, 0.05, 0.10),
    # retrieval
    strategies: Sequence[str] | None = None,
    summary_ranker: str = "rank_doc_by_snpt",
    ranked_max_chars: int = 2500,
    snippet_chars: int = 250,
    beam_workers: int = 2,
    one_core_per_worker: bool = False,
    vocab_size: int = 32000,
    vocabulary: str | None = None,
    # model
    model: dict[str, Any] | None = None,
    initial_checkpoint: str | None = None,
    num_partitions: int = 1,
    # budget: the same for every row
    train_steps: int = 400,
    batch_size: int = 16,
    feature_lengths: dict[str, int] | None = None,
    learning_rate: float = 0.01,
    schedule: str = "constant",
    warmup_steps: int = 1000,
    decoding: str = "greedy",
    beam_size: int = 4,
    eval_split: str = "test",
    checkpoint_period: int = 200,
    # the SumCtx / SynCtx auxiliary models (trained only when a row reads them)
    aux_train_steps: int | None = None,
    aux_targets_length: int | None = None,
    aux_train_inputs: str = "predicted",
    # report
    alpha: float = 0.01,
    html_examples: int = 40,
) -> Any:
    """The ExperimentConfig an experiment gin describes (see gin/experiments/*.gin)."""
    from personalize_t5x import feature_names
    from personalize_t5x.experiment import config as config_lib
    from personalize_t5x.pipeline import examples as examples_lib

    lengths = dict(feature_lengths or {"inputs": 256, "targets": 128})
    return config_lib.ExperimentConfig(
        name=name,
        output_dir=output_dir,
        corpus=config_lib.CorpusSpec(format=corpus_format, inputs=resolve_inputs(corpus_inputs), skip_bad=skip_bad),
        variants=tuple(variants),
        examples=examples_lib.ExampleConfig(
            min_target_chars=min_target_chars, min_profile_docs=min_profile_docs,
            min_examples_per_user=min_examples_per_user, max_examples_per_user=max_examples_per_user,
            context_chars=context_chars, split_mode=split_mode, split_fractions=tuple(split_fractions), seed=seed),
        retrieval=config_lib.RetrievalSpec(
            strategies=tuple(strategies or feature_names.RANKING_STRATEGIES), max_chars=ranked_max_chars,
            snippet_chars=snippet_chars, summary_ranker=summary_ranker, direct_num_workers=beam_workers,
            one_core_per_worker=one_core_per_worker),
        vocab_size=vocab_size,
        vocabulary=vocabulary,
        model=config_lib.ModelSpec(**dict(model or {}), initial_checkpoint=initial_checkpoint,
                                   num_partitions=num_partitions),
        budget=config_lib.Budget(
            train_steps=train_steps, batch_size=batch_size, inputs_length=lengths["inputs"],
            targets_length=lengths["targets"], learning_rate=learning_rate, schedule=schedule,
            warmup_steps=warmup_steps, decoding=decoding, beam_size=beam_size, eval_split=eval_split,
            checkpoint_period=checkpoint_period),
        aux=config_lib.AuxSpec(train_steps=aux_train_steps, targets_length=aux_targets_length,
                               train_inputs=aux_train_inputs),
        seed=seed,
        report=config_lib.ReportSpec(alpha=alpha, html_examples=html_examples),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from personalize_t5x.trainer import gin_utils

    gin_utils.add_gin_arguments(parser)
    gin_utils.accept_gin_shorthand(parser)


def _quiet_logs() -> None:
    """The run is read by people: keep TensorFlow's, absl's and Beam's chatter out of it."""
    import logging

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in ("apache_beam", "absl", "tensorflow", "jax", "orbax"):
        logging.getLogger(name).setLevel(logging.ERROR)


def config_from_gin(gin_files: Sequence[str], gin_bindings: Sequence[str], search_paths: Sequence[str]) -> Any:
    """Parses the experiment gin (one-line ConfigError on a mistake) and builds its config."""
    from personalize_t5x.trainer import gin_utils

    gin_utils.parse_gin_flags(search_paths, gin_files, gin_bindings)
    return gin_utils.call_configured(gin.get_configurable(experiment), "run")


def config_from_args(args: argparse.Namespace) -> Any:
    """The experiment the command line names: --gin_search_paths, then the project's gin/
    folder (T5X's rule), so `--gin_file=experiments/demo.gin` works from any directory."""
    from personalize_t5x.trainer import gin_utils

    return config_from_gin(args.gin_file, args.gin_bindings, gin_utils.search_paths_from_args(args))


def run(args: argparse.Namespace) -> int:
    from personalize_t5x.experiment import runner
    from personalize_t5x.trainer.utils import ConfigError

    _quiet_logs()
    try:
        config = config_from_args(args)
    except (ConfigError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    runner.run_experiment(config=config)
    return 0
