"""The paper's metrics as SeqIO metric functions, and per-example scores.

SeqIO metric functions take `(targets, predictions)` (lists of strings, already
postprocessed) and return `{name: value}`. All values are percentages, like the paper's
tables.

- `bleu`: corpus BLEU from sacrebleu with T5's settings (those of
  `t5.evaluation.metrics.bleu`, which the paper's T5X setup most likely used): the
  "intl" tokenizer, exponential smoothing with value 0, no effective order, case kept.
  The paper does not state its BLEU tokenization (METHOD.md); `BLEU_TOKENIZE` names it.
- `rouge`: ROUGE-1, ROUGE-2 and ROUGE-L from rouge-score with stemming on; each the
  mean over examples of the F-measure (no bootstrap). ROUGE-L is the sentence-level LCS
  variant (`rougeL`), not `rougeLsum`. rouge-score's tokenizer lowercases and keeps
  [a-z0-9] tokens only.
- `accuracy`: exact match of stripped strings (the author task's `true` / `false`).

`per_example_scores` gives one score per example and metric for the paired t-test:
sentence-level BLEU (sacrebleu's `sentence_bleu` settings: exponential smoothing,
effective order, same tokenizer) and the per-example ROUGE F-measures.
"""
from __future__ import annotations

import functools
from typing import Sequence

GENERATION_METRICS = ("bleu", "rouge1", "rouge2", "rougeL")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
BLEU_TOKENIZE = "intl"


def _as_texts(name: str, values: Sequence[str]) -> list[str]:
    texts = [v.decode("utf-8") if isinstance(v, bytes) else v for v in values]
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{i}] is {type(text).__name__}, expected str")
    return texts


def _check_lengths(targets: Sequence[str], predictions: Sequence[str]) -> None:
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")


@functools.lru_cache(maxsize=None)
def _corpus_bleu_metric():
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize=BLEU_TOKENIZE, smooth_method="exp", smooth_value=0.0,
                lowercase=False, effective_order=False, force=False)


@functools.lru_cache(maxsize=None)
def _sentence_bleu_metric():
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize=BLEU_TOKENIZE, smooth_method="exp", lowercase=False, effective_order=True)


@functools.lru_cache(maxsize=None)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def bleu(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU (%) of predictions against one reference each."""
    targets, predictions = _as_texts("targets", targets), _as_texts("predictions", predictions)
    _check_lengths(targets, predictions)
    return {"bleu": float(_corpus_bleu_metric().corpus_score(predictions, [targets]).score)}


def rouge_per_example(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, list[float]]:
    """ROUGE-1/2/L F-measures (%) of each example."""
    targets, predictions = _as_texts("targets", targets), _as_texts("predictions", predictions)
    _check_lengths(targets, predictions)
    scorer = _rouge_scorer()
    scores: dict[str, list[float]] = {name: [] for name in ROUGE_TYPES}
    for target, prediction in zip(targets, predictions):
        result = scorer.score(target, prediction)
        for name in ROUGE_TYPES:
            scores[name].append(100.0 * result[name].fmeasure)
    return scores


def rouge(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure (%) over examples."""
    per_example = rouge_per_example(targets, predictions)
    n = len(per_example[ROUGE_TYPES[0]])
    return {name: (sum(values) / n if n else 0.0) for name, values in per_example.items()}


def generation_metrics(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """BLEU and ROUGE-1/2/L (%), the paper's four numbers."""
    return {**bleu(targets, predictions), **rouge(targets, predictions)}


def accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Exact-match accuracy (%) after stripping surrounding whitespace."""
    targets, predictions = _as_texts("targets", targets), _as_texts("predictions", predictions)
    _check_lengths(targets, predictions)
    if not targets:
        return {"accuracy": 0.0}
    hits = sum(t.strip() == p.strip() for t, p in zip(targets, predictions))
    return {"accuracy": 100.0 * hits / len(targets)}


def sentence_bleu(targets: Sequence[str], predictions: Sequence[str]) -> list[float]:
    """Sentence-level BLEU (%) of each example."""
    targets, predictions = _as_texts("targets", targets), _as_texts("predictions", predictions)
    _check_lengths(targets, predictions)
    metric = _sentence_bleu_metric()
    return [float(metric.sentence_score(p, [t]).score) for t, p in zip(targets, predictions)]


def per_example_scores(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, list[float]]:
    """metric name -> one score (%) per example, for GENERATION_METRICS."""
    return {"bleu": sentence_bleu(targets, predictions), **rouge_per_example(targets, predictions)}


def author_postprocess(output, example=None, is_target=False) -> str:  # noqa: ARG001 (SeqIO signature)
    """SeqIO postprocess_fn of the author task: the label text, stripped and lowercased."""
    text = output.decode("utf-8") if isinstance(output, bytes) else str(output)
    return text.strip().lower()
