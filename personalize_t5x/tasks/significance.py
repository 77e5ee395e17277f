"""The paper's significance test: a paired t-test per metric between two systems.

Prediction files (what `personalize-t5x infer` writes, what `compare` reads): JSON lines
(gzip ok), one object per example:

    {"example_id": "u17/d42", "target": "the reference text", "prediction": "the output"}

`reference` is accepted in place of `target`; other fields are ignored. Example ids are
unique within a file. Two files are comparable only when they hold the same example ids
with the same targets (the order may differ); otherwise `compare` refuses them.

For each metric of personalize_t5x.tasks.metrics.GENERATION_METRICS, the per-example scores
of A and B (sentence BLEU, ROUGE F-measures) are compared with scipy.stats.ttest_rel
(two-sided); a difference is significant when p < alpha (0.01, as in the paper). The
table also shows each system's corpus-level value (corpus BLEU, mean ROUGE), i.e. the
paper's numbers. When all per-example differences are equal the t statistic is
undefined: p is 1 if they are all zero and 0 otherwise.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Sequence

from personalize_t5x.io import files as io_lib
from personalize_t5x.tasks import metrics
from personalize_t5x.errors import InputError

DEFAULT_ALPHA = 0.01


@dataclasses.dataclass(frozen=True)
class Prediction:
    example_id: str
    target: str
    prediction: str


@dataclasses.dataclass(frozen=True)
class MetricComparison:
    metric: str
    a: float  # corpus-level value of A (%)
    b: float
    mean_difference: float  # mean over examples of (B - A) per-example scores
    t: float
    p: float
    significant: bool

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def write_predictions(path: str, predictions: Iterable[Prediction]) -> int:
    """Writes a prediction file in the format above (gzip for `*.gz`), atomically."""
    return io_lib.write_jsonl(path, (dataclasses.asdict(p) for p in predictions))


def read_predictions(path: str) -> list[Prediction]:
    """Reads a prediction file; bad lines raise InputError naming file, line and field."""
    records: list[Prediction] = []
    seen: dict[str, int] = {}
    for number, record in io_lib.iter_json_objects(path):
        target_field = "target" if "target" in record else "reference"
        for field in ("example_id", target_field, "prediction"):
            if not isinstance(record.get(field), str):
                raise InputError(path, number, field, "missing or not a string")
        example_id = record["example_id"]
        if example_id in seen:
            raise InputError(path, number, "example_id", f"duplicate id {example_id!r} (first on line {seen[example_id]})")
        seen[example_id] = number
        records.append(Prediction(example_id, record[target_field], record["prediction"]))
    return records


def align(a: Sequence[Prediction], b: Sequence[Prediction], *, path_a: str = "A", path_b: str = "B"
          ) -> list[tuple[Prediction, Prediction]]:
    """Pairs A's and B's predictions by example id (in A's order); refuses differing examples."""
    by_id = {p.example_id: p for p in b}
    ids_a = [p.example_id for p in a]
    only_a = [i for i in ids_a if i not in by_id]
    only_b = sorted(set(by_id) - set(ids_a))
    if only_a or only_b:
        sample = lambda ids: ", ".join(repr(i) for i in ids[:3]) + (" ..." if len(ids) > 3 else "")  # noqa: E731
        parts = []
        if only_a:
            parts.append(f"{len(only_a)} only in {path_a} ({sample(only_a)})")
        if only_b:
            parts.append(f"{len(only_b)} only in {path_b} ({sample(only_b)})")
        raise InputError(path_b, 0, "example_id", "the files hold different examples: " + "; ".join(parts))
    pairs = []
    for pa in a:
        pb = by_id[pa.example_id]
        if pa.target != pb.target:
            raise InputError(path_b, 0, "target", f"example {pa.example_id!r} has a different target than in {path_a}")
        pairs.append((pa, pb))
    if len(pairs) < 2:
        raise InputError(path_b, 0, "example_id", f"a paired t-test needs at least 2 examples, got {len(pairs)}")
    return pairs


def paired_t(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    from scipy import stats

    differences = [y - x for x, y in zip(a, b)]
    if all(d == differences[0] for d in differences):  # zero variance: t undefined
        if differences[0] == 0:
            return 0.0, 1.0
        return math.copysign(math.inf, differences[0]), 0.0
    result = stats.ttest_rel(b, a)
    return float(result.statistic), float(result.pvalue)


def compare(a: Sequence[Prediction], b: Sequence[Prediction], *, alpha: float = DEFAULT_ALPHA,
            path_a: str = "A", path_b: str = "B") -> list[MetricComparison]:
    """The paired t-test of every generation metric between two aligned prediction sets."""
    pairs = align(a, b, path_a=path_a, path_b=path_b)
    targets = [pa.target for pa, _ in pairs]
    preds_a = [pa.prediction for pa, _ in pairs]
    preds_b = [pb.prediction for _, pb in pairs]
    corpus_a = metrics.generation_metrics(targets, preds_a)
    corpus_b = metrics.generation_metrics(targets, preds_b)
    scores_a = metrics.per_example_scores(targets, preds_a)
    scores_b = metrics.per_example_scores(targets, preds_b)
    rows = []
    for name in metrics.GENERATION_METRICS:
        t, p = paired_t(scores_a[name], scores_b[name])
        mean_difference = sum(y - x for x, y in zip(scores_a[name], scores_b[name])) / len(pairs)
        rows.append(MetricComparison(name, corpus_a[name], corpus_b[name], mean_difference, t, p, p < alpha))
    return rows


def format_table(rows: Sequence[MetricComparison], *, alpha: float = DEFAULT_ALPHA) -> str:
    header = ("metric", "A", "B", "B-A", "mean diff", "t", "p", f"p<{alpha:g}")
    body = [
        (r.metric, f"{r.a:.2f}", f"{r.b:.2f}", f"{r.b - r.a:+.2f}", f"{r.mean_difference:+.2f}",
         f"{r.t:.3f}", f"{r.p:.2e}", "yes" if r.significant else "no")
        for r in rows
    ]
    widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in (header, *body)]
    return "\n".join(lines)
