"""Retrieval quality before any training: ROUGE of each ranker's text against the target.

For every split and strategy, ROUGE-1/2/L F-measures in percent, between
`ranked_<strategy>` and `target` of the features stage's TFRecords, averaged over
examples. The scores are those of personalize_t5x.tasks.metrics (the one ROUGE of the
project: rouge_score, Porter stemming), so a ranker's retrieval ROUGE and a model's
ROUGE are the same measurement. With `keep_per_example` the per-example scores are kept
too (by example id), so two rankers can be compared with the paired t-test. A ranker whose text shares more with the document the user
went on to write gives the generator more to copy style and content from; this table
lets a user pick a ranker before spending accelerator time.

rouge_score's tokenizer keeps only [a-z0-9] runs, so text in non-Latin scripts scores 0
here; the table reports how many examples had no scorable tokens.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable, Iterator, Sequence

from personalize_t5x import feature_names
from personalize_t5x.io import files as io_lib
from personalize_t5x.tasks.metrics import ROUGE_TYPES

RESULTS_JSON = "retrieval_rouge.json"
RESULTS_PNG = "retrieval_rouge.png"
RESULTS_TABLE = "retrieval_rouge.txt"


@dataclasses.dataclass(frozen=True)
class RetrievalEvalConfig:
    """What to score.

    Attributes:
      splits: splits to score (each must have shards in the features folder).
      strategies: strategies to score; None = those the features stage computed
        (from its report), or all when the report is absent.
      max_examples: score at most this many examples per split (the first ones in shard
        order, so the sample is the same every run); None = all.
      keep_per_example: also return each example's scores (`per_example`: strategy ->
        {"example_id": [...], "rouge1": [...], ...}); an empty ranked text scores 0.
    """

    splits: tuple[str, ...] = ("validation", "test")
    strategies: tuple[str, ...] | None = None
    max_examples: int | None = None
    keep_per_example: bool = False

    def __post_init__(self):
        splits = tuple(self.splits)
        if not splits or any(s not in feature_names.SPLITS for s in splits):
            raise ValueError(f"splits: expected names from {feature_names.SPLITS}, got {splits}")
        object.__setattr__(self, "splits", splits)
        if self.strategies is not None:
            strategies = tuple(self.strategies)
            if not strategies or any(s not in feature_names.RANKING_STRATEGIES for s in strategies):
                raise ValueError(f"strategies: expected names from {feature_names.RANKING_STRATEGIES}, got {strategies}")
            object.__setattr__(self, "strategies", strategies)
        if self.max_examples is not None and self.max_examples < 1:
            raise ValueError(f"max_examples: expected >= 1 or None, got {self.max_examples}")


def computed_strategies(features_dir: str) -> tuple[str, ...]:
    """The strategies the features stage computed, per its report; all when unknown."""
    path = os.path.join(features_dir, "features_report.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            strategies = json.load(f).get("config", {}).get("strategies")
        if strategies:
            return tuple(s for s in feature_names.RANKING_STRATEGIES if s in strategies)
    return feature_names.RANKING_STRATEGIES


def iter_split_records(features_dir: str, split: str, strategies: Sequence[str]) -> Iterator[dict[str, str]]:
    """Yields {example_id, target, ranked_<s>...} of one split, shard by shard, in order."""
    from apache_beam.io.filesystems import FileSystems

    from personalize_t5x.errors import InputError
    from personalize_t5x.io import tfrecords

    pattern = feature_names.generation_file_pattern(features_dir, split)
    files = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    if not files:
        raise InputError(pattern, 0, "<file>", "no shards match; run `personalize-t5x features` first")
    names = [feature_names.EXAMPLE_ID, feature_names.TARGET, *(feature_names.ranked_text_feature(s) for s in strategies)]
    for path in files:
        for number, features in tfrecords.read_bytes_examples(path):
            missing = [name for name in names if name not in features]
            if missing:
                raise InputError(path, number, missing[0], "not a features record: feature missing")
            try:
                yield {name: features[name].decode("utf-8") for name in names}
            except UnicodeDecodeError as error:
                raise InputError(path, number, "<record>", f"invalid UTF-8 in a feature at byte {error.start}") from None


def score_records(records: Iterable[dict[str, str]], strategies: Sequence[str], *, keep_per_example: bool = False,
                  progress: bool = False, desc: str = "") -> dict[str, dict[str, Any]]:
    """Mean ROUGE F-measures (percent) per strategy, plus counts of unscorable texts.

    An empty ranked text (an empty profile) scores 0 and is counted in
    `empty_ranked_texts`. With keep_per_example, each strategy's row also holds
    `per_example`: {"example_id": [...], "rouge1": [...], "rouge2": [...], "rougeL": [...]}.
    """
    from tqdm import tqdm

    from personalize_t5x.tasks import metrics  # the project's one ROUGE

    records = list(tqdm(records, desc=desc, disable=not progress, unit="ex"))
    targets = [record[feature_names.TARGET] for record in records]
    results: dict[str, dict[str, Any]] = {}
    for strategy in strategies:
        ranked = [record[feature_names.ranked_text_feature(strategy)] for record in records]
        scores = metrics.rouge_per_example(targets, ranked)
        empty = [i for i, text in enumerate(ranked) if not text.strip()]
        for i in empty:
            for rouge_type in ROUGE_TYPES:
                scores[rouge_type][i] = 0.0
        count = len(records)
        row: dict[str, Any] = {r: (sum(scores[r]) / count if count else 0.0) for r in ROUGE_TYPES}
        row["examples"] = count
        row["empty_ranked_texts"] = len(empty)
        if keep_per_example:
            row["per_example"] = {"example_id": [record[feature_names.EXAMPLE_ID] for record in records],
                                  **{r: list(scores[r]) for r in ROUGE_TYPES}}
        results[strategy] = row
    return results


def evaluate_retrieval(*, features_dir: str, config: RetrievalEvalConfig, progress: bool = True) -> dict[str, Any]:
    """{"splits": {split: {strategy: {rouge1, rouge2, rougeL, examples, empty_ranked_texts}}}}."""
    import itertools

    strategies = config.strategies or computed_strategies(features_dir)
    results: dict[str, Any] = {"strategies": list(strategies), "max_examples": config.max_examples,
                               "use_stemmer": True, "splits": {}}
    for split in config.splits:
        records: Iterable[dict[str, str]] = iter_split_records(features_dir, split, strategies)
        if config.max_examples is not None:
            records = itertools.islice(records, config.max_examples)
        results["splits"][split] = score_records(records, strategies, keep_per_example=config.keep_per_example,
                                                 progress=progress, desc=f"eval-retrieval: {split}")
    return results


def format_table(results: dict[str, Any]) -> str:
    """A plain-text table: one row per (split, strategy), ROUGE in percent."""
    header = f"{'split':<11} {'strategy':<17} {'ROUGE-1':>8} {'ROUGE-2':>8} {'ROUGE-L':>8} {'examples':>9} {'empty':>6}"
    lines = [header, "-" * len(header)]
    for split, by_strategy in results["splits"].items():
        for strategy, row in by_strategy.items():
            lines.append(f"{split:<11} {strategy:<17} {row['rouge1']:>8.2f} {row['rouge2']:>8.2f} {row['rougeL']:>8.2f} "
                         f"{row['examples']:>9} {row['empty_ranked_texts']:>6}")
    return "\n".join(lines)


def plot_results(results: dict[str, Any], path: str) -> None:
    """Grouped bar chart: one panel per split, ROUGE-1/2/L bars per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    splits = list(results["splits"])
    strategies = list(results["strategies"])
    fig, axes = plt.subplots(1, len(splits), figsize=(1.6 + 2.2 * len(strategies) * len(splits), 4.2), squeeze=False, sharey=True)
    width = 0.8 / len(ROUGE_TYPES)
    x = np.arange(len(strategies))
    for ax, split in zip(axes[0], splits):
        for k, rouge_type in enumerate(ROUGE_TYPES):
            values = [results["splits"][split][s][rouge_type] for s in strategies]
            ax.bar(x + (k - 1) * width, values, width, label={"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L"}[rouge_type])
        ax.set_xticks(x)
        ax.set_xticklabels(strategies, rotation=30, ha="right", fontsize=8)
        n = next(iter(results["splits"][split].values()))["examples"] if strategies else 0
        ax.set_title(f"{split} ({n} examples)")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("F-measure vs target (%)")
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, not over them
    fig.suptitle("Ranked text vs the document the user wrote next")
    fig.tight_layout()
    with io_lib.atomic_output(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)


def write_outputs(results: dict[str, Any], output_dir: str) -> dict[str, str]:
    """Writes the JSON, the text table and the PNG; returns their paths."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {name: os.path.join(output_dir, name) for name in (RESULTS_JSON, RESULTS_TABLE, RESULTS_PNG)}
    io_lib.write_json(paths[RESULTS_JSON], results)
    with io_lib.atomic_output(paths[RESULTS_TABLE]) as f:
        f.write(format_table(results) + "\n")
    plot_results(results, paths[RESULTS_PNG])
    return paths
