"""Summaries of the ranked entries (METHOD.md stage 3): SumCtxInd and the SumCtx weak labels.

Pure functions of one example's ranked entries, its target and their dense vectors (the
sentence encoder of `retrieval.encoders`, all-MiniLM-L6-v2 by default, the one the
rankers use; vectors are L2-normalized, so cosine = dot product).

Units. `entry_snippets`: the snippets (`retrieval.text.make_snippets`, sentences up to 250
characters, the paper's snippet; the rankers' own snippets of each document) of the ranked
entries that begin inside the example's ranked text (the entries joined and cut to
`RankingConfig.max_chars`, 2,500 characters, as `ranking.join_entries` cuts them), in
ranked-text order. A snippet entry (RankSnippet) is already one.

SumCtxInd, extractive (`extractive_summary`, the offline default: the paper's T5-11B
summarizer is not reachable): snippets are scored by continuous LexRank (Erkan & Radev
2004): the cosine-similarity graph of the snippets (negative cosines set to 0, rows
normalized to sum 1), PageRank with damping 0.85 by power iteration. The most central
snippets are taken greedily while the summary, snippets joined by one space, stays within
`budget_chars` (default 600 characters, about a quarter of the ranked text; a snippet that
would overflow is passed over for the next); the chosen snippets are output in their
ranked-text order. When not even the most central snippet fits, it is cut to the budget.

SumCtx weak label (`weak_label_summary`): for each snippet of the target (in order), the
ranked-entry snippet of highest cosine with it that no earlier target snippet picked; the
picks are joined by one space in the target's order. When every entry snippet is taken,
later target snippets pick nothing. No length cap (the paper gives none); the SeqIO task
truncates to its target length.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from personalize_t5x.pipeline.retrieval import text as text_lib

SUMMARY_MODES = ("extractive", "abstractive")


@dataclasses.dataclass(frozen=True)
class SummaryConfig:
    """Attributes:
      mode: "extractive" (LexRank, default) or "abstractive" (the `summarize` function the
        features stage is given, e.g. a user's T5 summarization checkpoint).
      budget_chars: the extractive summary's length limit in characters.
      separator: joins the chosen snippets (extractive and weak label).
      damping, max_iterations, tolerance: LexRank's power iteration.
    """

    mode: str = "extractive"
    budget_chars: int = 600
    separator: str = " "
    damping: float = 0.85
    max_iterations: int = 100
    tolerance: float = 1e-8

    def __post_init__(self):
        if self.mode not in SUMMARY_MODES:
            raise ValueError(f"SummaryConfig.mode must be one of {SUMMARY_MODES}, got {self.mode!r}")
        if self.budget_chars < 1:
            raise ValueError(f"SummaryConfig.budget_chars must be >= 1, got {self.budget_chars}")
        if not 0 < self.damping < 1:
            raise ValueError(f"SummaryConfig.damping must be in (0, 1), got {self.damping}")


# A batch summarizer: texts in, one summary per text out (the abstractive mode).
Summarize = Callable[[Sequence[str]], Sequence[str]]


def entry_snippets(entry_texts: Sequence[str], *, max_chars: int, separator: str,
                   snippet_chars: int = text_lib.DEFAULT_SNIPPET_CHARS) -> list[str]:
    """Snippets of the entries that begin inside the ranked text, in ranked-text order.

    Each entry is cut into snippets whole (exactly the rankers' snippets of that document,
    so their vectors are already in the user's embedding cache); those that start before
    the ranked text's `max_chars` cut are kept, so the last one may run past the cut by
    less than a snippet.
    """
    snippets: list[str] = []
    total = 0
    for index, text in enumerate(entry_texts):
        if index:
            if total + len(separator) >= max_chars:
                break
            total += len(separator)
        room = max_chars - total
        cut = text_lib.make_snippets("", text, snippet_chars=snippet_chars)
        if not cut and text.strip():
            cut = [text_lib.Snippet("", 0, len(text), text)]
        snippets.extend(s.text for s in cut if s.start < room)
        total += min(len(text), room)
        if total >= max_chars:
            break
    return snippets


def target_snippets(target: str, *, snippet_chars: int = text_lib.DEFAULT_SNIPPET_CHARS) -> list[str]:
    return [s.text for s in text_lib.make_snippets("", target, snippet_chars=snippet_chars)]


def lexrank_scores(vectors: np.ndarray, *, damping: float = 0.85, max_iterations: int = 100,
                   tolerance: float = 1e-8) -> np.ndarray:
    """Continuous LexRank centrality of each row (L2-normalized vectors), summing to 1."""
    n = len(vectors)
    if n == 0:
        return np.zeros(0)
    similarity = np.clip(np.asarray(vectors, dtype=np.float64) @ np.asarray(vectors, dtype=np.float64).T, 0.0, None)
    row_sums = similarity.sum(axis=1, keepdims=True)
    transition = np.divide(similarity, row_sums, out=np.full_like(similarity, 1.0 / n), where=row_sums > 0)
    scores = np.full(n, 1.0 / n)
    for _ in range(max_iterations):
        updated = (1 - damping) / n + damping * (transition.T @ scores)
        done = np.abs(updated - scores).sum() < tolerance
        scores = updated
        if done:
            break
    return scores


def extractive_summary(snippets: Sequence[str], vectors: np.ndarray, config: SummaryConfig) -> str:
    """SumCtxInd: the most central snippets within the budget, in their original order."""
    if not snippets:
        return ""
    scores = lexrank_scores(vectors, damping=config.damping, max_iterations=config.max_iterations,
                            tolerance=config.tolerance)
    # Most central first; ties: the earlier snippet (a stable sort on -score).
    order = np.argsort(-scores, kind="stable")
    chosen: list[int] = []
    total = 0
    for index in order.tolist():
        cost = len(snippets[index]) + (len(config.separator) if chosen else 0)
        if total + cost <= config.budget_chars:
            chosen.append(index)
            total += cost
    if not chosen:
        return snippets[int(order[0])][: config.budget_chars]
    return config.separator.join(snippets[i] for i in sorted(chosen))


def weak_label_picks(target_vectors: np.ndarray, entry_vectors: np.ndarray) -> list[int]:
    """For each target snippet in order, the best entry snippet not picked before."""
    picks: list[int] = []
    if not len(target_vectors) or not len(entry_vectors):
        return picks
    similarity = np.asarray(target_vectors, dtype=np.float64) @ np.asarray(entry_vectors, dtype=np.float64).T
    taken = np.zeros(len(entry_vectors), dtype=bool)
    for row in similarity:
        # Highest cosine first; ties: the earlier entry snippet.
        for index in np.argsort(-row, kind="stable").tolist():
            if not taken[index]:
                taken[index] = True
                picks.append(index)
                break
        if taken.all():
            break
    return picks


def weak_label_summary(target_vectors: np.ndarray, snippets: Sequence[str], entry_vectors: np.ndarray,
                       config: SummaryConfig) -> str:
    """SumCtx weak label: the picks joined in the target's order."""
    return config.separator.join(snippets[i] for i in weak_label_picks(target_vectors, entry_vectors))
