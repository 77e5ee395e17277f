"""The typed configuration of one experiment: corpus, variants, model, budget, seed.

Library code takes an `ExperimentConfig`; gin only fills it in the command layer
(personalize_t5x/commands/run.py, gin/experiments/*.gin). Every dataclass checks its
values in __post_init__, so a bad experiment fails before any stage starts.

A *row* of the report is a generation variant of personalize_t5x.tasks.prompts.VARIANTS
(trained on its own task) or `<variant>_author_mix` (the variant mixed 1:1 with the
author-distinction task; AuthorPred is `syn_ctx_author_mix`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Mapping

from personalize_t5x import feature_names
from personalize_t5x.pipeline import examples as examples_lib
from personalize_t5x.tasks import prompts

MIX_SUFFIX = "_author_mix"
CORPUS_FORMATS = ("jsonl", "stackexchange", "amazon", "reddit", "mbox", "longlamp")


def base_variant(row: str) -> str:
    """The generation variant a row is scored on (`syn_ctx_author_mix` -> `syn_ctx`)."""
    return row[: -len(MIX_SUFFIX)] if row.endswith(MIX_SUFFIX) else row


def row_label(row: str) -> str:
    """The paper's name of a row (`syn_ctx_author_mix` -> AuthorPred)."""
    if row == "syn_ctx" + MIX_SUFFIX:
        return "AuthorPred"
    if row.endswith(MIX_SUFFIX):
        return prompts.PAPER_ROWS[base_variant(row)] + "+Author"
    return prompts.PAPER_ROWS[row]


def check_row(row: str) -> str:
    if base_variant(row) not in prompts.VARIANTS:
        raise ValueError(f"variants: unknown row {row!r}; choose among {prompts.VARIANTS} "
                         f"(optionally with {MIX_SUFFIX!r})")
    return row


def _positive(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}.{name} must be a positive integer, got {value!r}")


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    """Where the documents come from: a public format and its input files."""

    format: str
    inputs: tuple[str, ...]
    skip_bad: bool = False

    def __post_init__(self):
        if self.format not in CORPUS_FORMATS:
            raise ValueError(f"corpus.format must be one of {CORPUS_FORMATS}, got {self.format!r}")
        inputs = (self.inputs,) if isinstance(self.inputs, str) else tuple(self.inputs)
        if not inputs or not all(isinstance(p, str) and p for p in inputs):
            raise ValueError(f"corpus.inputs must name at least one file, got {self.inputs!r}")
        object.__setattr__(self, "inputs", inputs)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """T5 1.1 network size (personalize_t5x.network.t5.T5Config fields) and where it starts.

    `initial_checkpoint` None trains from scratch; otherwise a checkpoint of this
    project, a T5X checkpoint or a Hugging Face T5 folder of the same size.
    """

    emb_dim: int = 64
    num_heads: int = 4
    head_dim: int = 16
    mlp_dim: int = 256
    num_encoder_layers: int = 2
    num_decoder_layers: int = 2
    dropout_rate: float = 0.0
    dtype: str = "float32"
    initial_checkpoint: str | None = None
    num_partitions: int = 1

    def __post_init__(self):
        for name in ("emb_dim", "num_heads", "head_dim", "mlp_dim", "num_encoder_layers", "num_decoder_layers",
                     "num_partitions"):
            _positive("model", name, getattr(self, name))
        if not 0.0 <= float(self.dropout_rate) < 1.0:
            raise ValueError(f"model.dropout_rate must be in [0, 1), got {self.dropout_rate!r}")


@dataclasses.dataclass(frozen=True)
class Budget:
    """What every row is trained and decoded under: the same for all rows of a report.

    Attributes:
      train_steps, batch_size: optimizer steps and examples per step.
      inputs_length, targets_length: token lengths (inputs are cut, targets decoded to).
      learning_rate: Adafactor's base rate.
      schedule: 'constant' (from-scratch demo models) or 'paper' (warm-up then inverse
        square root, METHOD.md).
      warmup_steps: the paper schedule's linear warm-up.
      decoding: 'greedy' or 'beam' (beam_size beams, brevity alpha 0.6, as T5X).
      eval_split: the split the report scores (the paper: test users).
      checkpoint_period: steps between checkpoints (a crash loses at most this many).
    """

    train_steps: int = 400
    batch_size: int = 16
    inputs_length: int = 256
    targets_length: int = 128
    learning_rate: float = 0.01
    schedule: str = "constant"
    warmup_steps: int = 1000
    decoding: str = "greedy"
    beam_size: int = 4
    eval_split: str = "test"
    checkpoint_period: int = 200

    def __post_init__(self):
        for name in ("train_steps", "batch_size", "inputs_length", "targets_length", "beam_size", "checkpoint_period"):
            _positive("budget", name, getattr(self, name))
        if self.schedule not in ("constant", "paper"):
            raise ValueError(f"budget.schedule must be 'constant' or 'paper', got {self.schedule!r}")
        if self.decoding not in ("greedy", "beam"):
            raise ValueError(f"budget.decoding must be 'greedy' or 'beam', got {self.decoding!r}")
        if self.eval_split not in feature_names.SPLITS:
            raise ValueError(f"budget.eval_split must be one of {feature_names.SPLITS}, got {self.eval_split!r}")
        if not float(self.learning_rate) > 0:
            raise ValueError(f"budget.learning_rate must be > 0, got {self.learning_rate!r}")

    @property
    def predict_options(self) -> dict[str, Any]:
        if self.decoding == "greedy":
            return {"method": "greedy"}
        return {"method": "beam", "num_decodes": self.beam_size, "alpha": 0.6}


@dataclasses.dataclass(frozen=True)
class RetrievalSpec:
    """The features stage's choices: rankers to compute and the length of ranked text."""

    strategies: tuple[str, ...] = feature_names.RANKING_STRATEGIES
    max_chars: int = 2500
    snippet_chars: int = 250
    summary_ranker: str = prompts.DEFAULT_SUMMARY_RANKER
    direct_num_workers: int = 2
    one_core_per_worker: bool = False

    def __post_init__(self):
        object.__setattr__(self, "strategies", tuple(self.strategies))
        for s in self.strategies:
            feature_names.ranked_text_feature(s)  # validates
        if self.summary_ranker not in self.strategies:
            raise ValueError(f"retrieval.summary_ranker {self.summary_ranker!r} is not among the computed "
                             f"strategies {self.strategies}")
        _positive("retrieval", "max_chars", self.max_chars)
        _positive("retrieval", "snippet_chars", self.snippet_chars)
        _positive("retrieval", "direct_num_workers", self.direct_num_workers)


@dataclasses.dataclass(frozen=True)
class AuxSpec:
    """The SumCtx and SynCtx auxiliary models (METHOD.md stages 3-4), trained by `run`
    before any row that reads their predictions (`summary_ctx`, `keywords_ctx`).

    Each is the experiment's model, trained from scratch on the weak labels of the seeded
    auxiliary half of the training users, then decoded greedily over every split.
    Attributes:
      train_steps: optimizer steps of each auxiliary model (None: the rows' budget).
      targets_length: tokens of a predicted summary or keyword list (None: the rows').
      train_inputs: what fills the training split of the generation features:
        'predicted' (the paper's design: the same kind of text the model reads at test
        time) or 'weak_label' (an ablation; pipeline.aux_join says why it is not default).
    """

    train_steps: int | None = None
    targets_length: int | None = None
    train_inputs: str = "predicted"

    def __post_init__(self):
        for name in ("train_steps", "targets_length"):
            if getattr(self, name) is not None:
                _positive("aux", name, getattr(self, name))
        if self.train_inputs not in ("predicted", "weak_label"):
            raise ValueError(f"aux.train_inputs must be 'predicted' or 'weak_label', got {self.train_inputs!r}")

    def budget(self, rows: Budget) -> Budget:
        """The budget of one auxiliary model: the rows' own, with this spec's overrides."""
        return dataclasses.replace(
            rows, train_steps=self.train_steps or rows.train_steps,
            targets_length=self.targets_length or rows.targets_length, decoding="greedy")


def aux_models_read_by(rows: tuple[str, ...], *, summary_ranker: str) -> tuple[str, ...]:
    """The auxiliary models whose predictions some row reads, in prompts.AUX_MODELS order."""
    read = {name for row in rows
            for name in prompts.generation_layout(base_variant(row), summary_ranker=summary_ranker).required_features}
    return tuple(model for model in prompts.AUX_MODELS if prompts.AUX_PREDICTED_FEATURES[model] in read)


@dataclasses.dataclass(frozen=True)
class ReportSpec:
    """What the report shows: significance level, chain of rows, the HTML sample."""

    alpha: float = 0.01
    html_examples: int = 40
    confidence: float = 0.95

    def __post_init__(self):
        if not 0 < self.alpha < 1:
            raise ValueError(f"report.alpha must be in (0, 1), got {self.alpha!r}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"report.confidence must be in (0, 1), got {self.confidence!r}")
        _positive("report", "html_examples", self.html_examples)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: everything `run_experiment` needs.

    Attributes:
      name: the dataset name in task names (personalize_<name>_<variant>).
      output_dir: every stage writes its folder here; reruns resume from it.
      corpus: the documents.
      variants: the report's rows, each trained under `budget` (see module docstring).
      examples: the paper's filters and split (pipeline.examples.ExampleConfig).
      retrieval: the features stage's rankers.
      vocab_size: SentencePiece pieces trained on the training split.
      vocabulary: an existing SentencePiece model to use instead (e.g. T5's, which a
        pretrained checkpoint needs); the vocab step then trains nothing.
      model, budget: the network and what every row gets.
      aux: the auxiliary models, trained only when a row reads their predictions.
      seed: fixes the split, the vocabulary, parameter init and data order.
      report: what the report shows.
    """

    name: str
    output_dir: str
    corpus: CorpusSpec
    variants: tuple[str, ...]
    examples: examples_lib.ExampleConfig = dataclasses.field(default_factory=examples_lib.ExampleConfig)
    retrieval: RetrievalSpec = dataclasses.field(default_factory=RetrievalSpec)
    vocab_size: int = 32000
    vocabulary: str | None = None
    model: ModelSpec = dataclasses.field(default_factory=ModelSpec)
    budget: Budget = dataclasses.field(default_factory=Budget)
    aux: AuxSpec = dataclasses.field(default_factory=AuxSpec)
    seed: int = 0
    report: ReportSpec = dataclasses.field(default_factory=ReportSpec)

    def __post_init__(self):
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if not self.output_dir:
            raise ValueError("output_dir must be set")
        variants = tuple(check_row(v) for v in ((self.variants,) if isinstance(self.variants, str) else self.variants))
        if not variants:
            raise ValueError("variants: name at least one row")
        if len(set(variants)) != len(variants):
            raise ValueError(f"variants: duplicates in {variants}")
        object.__setattr__(self, "variants", variants)
        _positive("experiment", "vocab_size", self.vocab_size)
        needs = {fn for row in variants for fn in
                 prompts.generation_layout(base_variant(row), summary_ranker=self.retrieval.summary_ranker).required_features}
        for strategy in feature_names.RANKING_STRATEGIES:
            if feature_names.ranked_text_feature(strategy) in needs and strategy not in self.retrieval.strategies:
                raise ValueError(f"variants: a row reads {strategy!r}, which retrieval.strategies does not compute")

    @property
    def aux_models(self) -> tuple[str, ...]:
        """The auxiliary models this experiment's rows need (none for ImmedCtx or a ranker)."""
        return aux_models_read_by(self.variants, summary_ranker=self.retrieval.summary_ranker)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (a stage's configuration and inputs)."""
    text = json.dumps(parts, sort_keys=True, default=_json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _json_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return repr(value)
