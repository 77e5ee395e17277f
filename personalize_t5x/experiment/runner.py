"""`run_experiment`: a corpus to the paper's results table, every step resumable.

The steps, in order (each one progress line; training and inference with an ETA):

    convert -> examples -> vocab -> features -> retrieval
      -> (aux_train, aux_predict) per auxiliary model a row reads -> aux_join
      -> (train, predict) per row -> report

Layout of `output_dir`:

    corpus/documents.jsonl.gz        examples/                      data/<name>/vocab/spm.model
    data/<name>/features/            retrieval/retrieval.json       rows/<row>/train/ (checkpoints)
    aux/<model>/train/, predictions/ rows/<row>/predictions/*.jsonl   report/ (report.md, .csv, .json, .html, PNGs)
    steps/<step>.json                what each finished step did, its fingerprint and timings

Resuming: a step is finished when `steps/<step>.json` exists and its fingerprint (the
step's configuration and the fingerprints of the steps it reads) matches. A finished step
is skipped; an unfinished one runs again (training continues from its latest checkpoint,
unless the configuration it was started with differs: then its folder is cleared first).
A rerun after success skips everything and says so.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from typing import Any, Callable

from personalize_t5x.experiment import config as config_lib
from personalize_t5x.experiment import stages
from personalize_t5x.io import files as io_lib

STEPS_DIR = "steps"
REPORT_DIR = "report"


@dataclasses.dataclass
class StepRecord:
    name: str
    fingerprint: str
    skipped: bool
    wall_s: float
    cpu_s: float
    result: Any


@dataclasses.dataclass
class ExperimentResult:
    steps: list[StepRecord]
    report_paths: dict[str, str]

    @property
    def did_nothing(self) -> bool:
        return all(step.skipped for step in self.steps)


class Paths:
    """Where every step of one experiment reads and writes."""

    def __init__(self, config: config_lib.ExperimentConfig):
        root = config.output_dir
        self.root = root
        self.documents = os.path.join(root, "corpus", "documents.jsonl.gz")
        self.examples = os.path.join(root, "examples")
        self.dataset = os.path.join(root, "data", config.name)
        self.vocabulary = os.path.join(self.dataset, "vocab", "spm.model")
        self.features = os.path.join(self.dataset, "features")
        self.retrieval = os.path.join(root, "retrieval", "retrieval.json")
        self.steps = os.path.join(root, STEPS_DIR)
        self.report = os.path.join(root, REPORT_DIR)

    def aux(self, model: str) -> str:
        return os.path.join(self.root, "aux", model)

    def row(self, row: str) -> str:
        return os.path.join(self.root, "rows", row)

    def train_dir(self, row: str) -> str:
        return os.path.join(self.row(row), stages.TRAIN_DIR)

    def predictions_dir(self, row: str) -> str:
        return os.path.join(self.row(row), stages.PREDICTIONS_DIR)


def _format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """One line per step; training updates its line in place on a terminal."""

    def __init__(self, total: int, stream=None):
        self.total, self.index = total, 0
        self.stream = stream or sys.stdout
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_fraction = 0.0

    def start(self, name: str) -> str:
        self.index += 1
        self._last_fraction = 0.0
        return f"[{self.index:>2}/{self.total}] {name:<34}"

    def line(self, text: str, *, final: bool = True) -> None:
        if self.tty:
            self.stream.write("\r" + text.ljust(110) + ("\n" if final else ""))
        elif final:
            self.stream.write(text + "\n")
        self.stream.flush()

    def training(self, head: str, step: int, total: int, started: float) -> None:
        elapsed = time.perf_counter() - started
        fraction = step / max(total, 1)
        if not self.tty and fraction < self._last_fraction + 0.25 and step != total:
            return
        self._last_fraction = fraction
        rate = step / elapsed if elapsed > 0 else 0.0
        eta = (total - step) / rate if rate > 0 else float("nan")
        self.line(f"{head} step {step}/{total}, {rate:.2f} steps/s, ETA {_format_seconds(eta)}",
                  final=not self.tty)


class _Steps:
    """Runs, records and skips the experiment's steps (steps/<name>.json)."""

    def __init__(self, paths: Paths, progress: Progress):
        self.paths, self.progress = paths, progress
        self.records: list[StepRecord] = []
        os.makedirs(paths.steps, exist_ok=True)

    def _marker(self, name: str) -> str:
        return os.path.join(self.paths.steps, name.replace("/", "_") + ".json")

    def finished(self, name: str, fingerprint: str) -> dict | None:
        path = self._marker(name)
        if not os.path.exists(path):
            return None
        with open(path, encoding="utf-8") as f:
            marker = json.load(f)
        return marker if marker.get("fingerprint") == fingerprint else None

    def run(self, name: str, fingerprint: str, body: Callable[[str], Any], *, eta: str = "") -> Any:
        head = self.progress.start(name)
        marker = self.finished(name, fingerprint)
        if marker is not None:
            self.progress.line(f"{head} finished earlier; skipped")
            self.records.append(StepRecord(name, fingerprint, True, 0.0, 0.0, marker["result"]))
            return marker["result"]
        if eta:
            self.progress.line(f"{head} running, {eta}", final=not self.progress.tty)
        with stages.Stopwatch() as watch:
            result = body(head)
        io_lib.write_json(self._marker(name), {"fingerprint": fingerprint, "result": result,
                                               "wall_s": watch.wall, "cpu_s": watch.cpu})
        self.progress.line(f"{head} done in {_format_seconds(watch.wall)} (CPU {_format_seconds(watch.cpu)})")
        self.records.append(StepRecord(name, fingerprint, False, watch.wall, watch.cpu, result))
        return result


def _row_task(config: config_lib.ExperimentConfig, row: str) -> str:
    from personalize_t5x.tasks import registry

    base = config_lib.base_variant(row)
    return registry.mixture_name(config.name, base) if row != base else registry.task_name(config.name, base)


def _eval_task(config: config_lib.ExperimentConfig, row: str) -> str:
    from personalize_t5x.tasks import registry

    return registry.task_name(config.name, config_lib.base_variant(row))


def step_names(config: config_lib.ExperimentConfig) -> list[str]:
    names = ["convert", "examples", "vocab", "features", "retrieval"]
    for model in config.aux_models:
        names += [f"aux_train/{model}", f"aux_predict/{model}"]
    if config.aux_models:
        names.append("aux_join")
    for row in config.variants:
        names += [f"train/{row}", f"predict/{row}"]
    return names + ["report"]


def run_experiment(*, config: config_lib.ExperimentConfig, stream=None) -> ExperimentResult:
    """Runs (or resumes) the whole experiment; returns what each step did and the report's paths."""
    from personalize_t5x.experiment import report as report_lib

    paths = Paths(config)
    os.makedirs(paths.root, exist_ok=True)
    progress = Progress(len(step_names(config)), stream=stream)
    steps = _Steps(paths, progress)
    examples_config = dataclasses.replace(config.examples, seed=config.seed)

    f_convert = config_lib.fingerprint("convert", config.corpus, [_file_identity(p) for p in config.corpus.inputs])
    steps.run("convert", f_convert, lambda head: stages.convert_corpus(corpus=config.corpus, output=paths.documents))

    f_examples = config_lib.fingerprint("examples", f_convert, examples_config)
    dataset_stats = steps.run("examples", f_examples, lambda head: _fresh(paths.examples) or stages.build_examples(
        documents_path=paths.documents, output_dir=paths.examples, config=examples_config))

    if config.vocabulary:
        paths.vocabulary = config.vocabulary
        f_vocab = config_lib.fingerprint("vocab", _file_identity(config.vocabulary))
        steps.run("vocab", f_vocab, lambda head: {"given": config.vocabulary})
    else:
        f_vocab = config_lib.fingerprint("vocab", f_examples, config.vocab_size, config.seed)
        steps.run("vocab", f_vocab, lambda head: stages.train_vocabulary(
            examples_dir=paths.examples, output=paths.vocabulary, vocab_size=config.vocab_size, seed=config.seed))

    # What the features depend on (not how many workers compute them, nor which ranker
    # the summary rows read).
    f_features = config_lib.fingerprint("features", f_examples, config.retrieval.strategies,
                                        config.retrieval.max_chars, config.retrieval.snippet_chars)
    steps.run("features", f_features, lambda head: stages.compute_features(
        examples_dir=paths.examples, output_dir=paths.features, retrieval=config.retrieval))

    f_retrieval = config_lib.fingerprint("retrieval", f_features, config.budget.eval_split)

    def retrieval_body(head):
        results = stages.evaluate_retrieval(features_dir=paths.features, strategies=config.retrieval.strategies,
                                            split=config.budget.eval_split)
        io_lib.write_json(paths.retrieval, results)
        return {"path": paths.retrieval}

    steps.run("retrieval", f_retrieval, retrieval_body)

    vocab_size = stages.model_vocab_size(paths.vocabulary)
    f_rows_data, aux_summaries = _run_aux_models(config, paths, steps, progress, f_features=f_features,
                                                 f_vocab=f_vocab, vocab_size=vocab_size)
    registered = False
    budget_for_training = dataclasses.replace(config.budget, decoding="greedy", beam_size=1, eval_split="test")
    # wall seconds of the rows trained and decoded in this call: the next row's ETA
    train_timings: list[float] = []
    predict_timings: list[float] = []
    predictions: dict[str, str] = {}
    for row in config.variants:
        f_train = config_lib.fingerprint("train", f_rows_data, f_vocab, row, config.model, budget_for_training,
                                         config.seed, config.retrieval.summary_ranker)
        f_predict = config_lib.fingerprint("predict", f_train, config.budget)
        if not registered and not (steps.finished(f"train/{row}", f_train) and steps.finished(f"predict/{row}", f_predict)):
            stages.register_tasks(name=config.name, features_dir=paths.features, vocabulary_path=paths.vocabulary,
                                  summary_ranker=config.retrieval.summary_ranker)
            registered = True

        def train_body(head, row=row, f_train=f_train):
            train_dir = paths.train_dir(row)
            _clear_if_started_differently(train_dir, f_train)
            started = time.perf_counter()
            return stages.train_row(
                task_name=_row_task(config, row), model_dir=train_dir, model=config.model, budget=config.budget,
                vocab_size=vocab_size, seed=config.seed,
                on_step=lambda step, total: progress.training(head, step, total, started))

        eta = f"ETA {_format_seconds(train_timings[-1])} (as the last row)" if train_timings else ""
        steps.run(f"train/{row}", f_train, train_body, eta=eta)
        if not steps.records[-1].skipped:
            train_timings.append(steps.records[-1].wall_s)

        def predict_body(head, row=row):
            path = stages.predict_row(task_name=_eval_task(config, row), model_dir=paths.train_dir(row),
                                      output_dir=paths.predictions_dir(row), model=config.model,
                                      budget=config.budget, vocab_size=vocab_size, seed=config.seed)
            return {"path": path}

        eta = f"ETA {_format_seconds(predict_timings[-1])} (as the last row)" if predict_timings else ""
        predictions[row] = steps.run(f"predict/{row}", f_predict, predict_body, eta=eta)["path"]
        if not steps.records[-1].skipped:
            predict_timings.append(steps.records[-1].wall_s)

    f_report = config_lib.fingerprint("report", [r.fingerprint for r in steps.records], config.report,
                                      report_lib.REPORT_VERSION)

    def report_body(head):
        return report_lib.write_report(config=config, predictions=predictions, examples_dir=paths.examples,
                                       retrieval_path=paths.retrieval, dataset_stats=dataset_stats,
                                       output_dir=paths.report, step_timings=_timings(paths, config),
                                       features_dir=paths.features, aux_models=aux_summaries)

    report_paths = steps.run("report", f_report, report_body)
    result = ExperimentResult(steps=steps.records, report_paths=report_paths)
    out = stream or sys.stdout
    if result.did_nothing:
        out.write(f"nothing to do: every step of {config.name!r} finished earlier in {paths.root}\n")
    out.write(f"report: {report_paths['markdown']}\n")
    out.flush()
    return result


def _run_aux_models(config: config_lib.ExperimentConfig, paths: Paths, steps: _Steps, progress: Progress, *,
                    f_features: str, f_vocab: str, vocab_size: int) -> tuple[str, dict[str, Any]]:
    """Trains and decodes the auxiliary models some row reads, then joins their predictions
    into the features; returns the fingerprint of the data the rows train on and what the
    report says of each model.

    The join rewrites the features' shards in place (pipeline.aux_join): running it again
    from the same predictions writes the same bytes, so a crash inside it is resumed by
    running it again, and a changed features step invalidates it through its fingerprint.
    """
    if not config.aux_models:
        return f_features, {}
    from personalize_t5x.commands import aux_join as aux_join_command
    from personalize_t5x.pipeline import aux_join
    from personalize_t5x import feature_names

    budget = config.aux.budget(config.budget)
    registered: dict[str, str] = {}

    def tasks() -> dict[str, str]:
        """{model: task}, registered the first time a step runs (none when all are done)."""
        if not registered:
            registered.update(stages.register_aux_tasks(
                name=config.name, features_dir=paths.features, vocabulary_path=paths.vocabulary,
                summary_ranker=config.retrieval.summary_ranker))
        return registered

    summaries: dict[str, Any] = {}
    prediction_files: dict[str, dict[str, str]] = {}
    fingerprints = []
    for model in config.aux_models:
        f_train = config_lib.fingerprint("aux_train", f_features, f_vocab, model, config.model, budget, config.seed,
                                         config.retrieval.summary_ranker)
        f_predict = config_lib.fingerprint("aux_predict", f_train)
        fingerprints.append(f_predict)
        train_dir = os.path.join(paths.aux(model), stages.TRAIN_DIR)
        predictions_dir = os.path.join(paths.aux(model), stages.PREDICTIONS_DIR)
        prediction_files[model] = {split: aux_join_command.prediction_file(predictions_dir, config.name, model, split)
                                   for split in feature_names.SPLITS}

        def train_body(head, model=model, train_dir=train_dir, f_train=f_train):
            _clear_if_started_differently(train_dir, f_train)
            started = time.perf_counter()
            return stages.train_row(
                task_name=tasks()[model], model_dir=train_dir, model=config.model, budget=budget,
                vocab_size=vocab_size, seed=config.seed,
                on_step=lambda step, total: progress.training(head, step, total, started))

        trained = steps.run(f"aux_train/{model}", f_train, train_body)

        def predict_body(head, model=model, train_dir=train_dir, predictions_dir=predictions_dir):
            by_aux_split = stages.predict_splits(
                task_name=tasks()[model], model_dir=train_dir, output_dir=predictions_dir, model=config.model,
                budget=budget, vocab_size=vocab_size, seed=config.seed,
                splits=[f"infer_{split}" for split in feature_names.SPLITS])
            written = {split: by_aux_split[f"infer_{split}"] for split in feature_names.SPLITS}
            read = {split: aux_join.read_predictions(path) for split, path in written.items()}
            return {"paths": written, "predictions": {split: len(p) for split, p in read.items()},
                    "empty_predictions": {split: sum(1 for text in p.values() if not text.strip())
                                          for split, p in read.items()}}

        predicted = steps.run(f"aux_predict/{model}", f_predict, predict_body)
        summaries[model] = {"step": trained["step"], "loss": trained["loss"],
                            "predictions": predicted["predictions"], "empty_predictions": predicted["empty_predictions"]}

    f_join = config_lib.fingerprint("aux_join", f_features, fingerprints, config.aux.train_inputs)
    steps.run("aux_join", f_join, lambda head: stages.join_aux_predictions(
        features_dir=paths.features, prediction_files=prediction_files, train_inputs=config.aux.train_inputs))
    return f_join, summaries


def _timings(paths: Paths, config: config_lib.ExperimentConfig) -> dict[str, dict[str, float]]:
    """Wall and CPU seconds of every finished step (from steps/*.json), in step order."""
    timings = {}
    for name in step_names(config):
        path = os.path.join(paths.steps, name.replace("/", "_") + ".json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                marker = json.load(f)
            timings[name] = {"wall_s": marker.get("wall_s", 0.0), "cpu_s": marker.get("cpu_s", 0.0)}
    return timings


def _file_identity(path: str) -> list:
    """What a corpus input's fingerprint depends on: path, size and modification time."""
    if os.path.isdir(path):
        return [path, sorted(os.listdir(path))]
    stat = os.stat(path)
    return [os.path.abspath(path), stat.st_size, int(stat.st_mtime)]


def _fresh(folder: str) -> None:
    """Removes a half-written folder of an unfinished step before the step writes it again."""
    if os.path.isdir(folder):
        shutil.rmtree(folder)


STARTED_FILE = "started_with.json"


def _clear_if_started_differently(train_dir: str, fingerprint: str) -> None:
    """A checkpoint is resumed only by the configuration that wrote it."""
    marker = os.path.join(train_dir, STARTED_FILE)
    if os.path.exists(marker):
        with open(marker, encoding="utf-8") as f:
            if json.load(f).get("fingerprint") == fingerprint:
                return
    if os.path.isdir(train_dir):
        shutil.rmtree(train_dir)
    os.makedirs(train_dir, exist_ok=True)
    io_lib.write_json(marker, {"fingerprint": fingerprint})
