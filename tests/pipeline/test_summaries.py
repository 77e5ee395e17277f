"""The summary rules (METHOD.md stage 3) on small hand-checked cases."""
from __future__ import annotations

import numpy as np

from personalize_t5x.pipeline import summaries


def _unit(rows):
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_lexrank_ranks_the_snippet_similar_to_the_others_highest():
    # Snippet 1 lies between 0 and 2; 0 and 2 are orthogonal.
    vectors = _unit([[1, 0], [1, 1], [0, 1]])
    scores = summaries.lexrank_scores(vectors)
    assert scores.sum() == np.float64(1.0) or abs(scores.sum() - 1) < 1e-9
    assert scores.argmax() == 1 and scores[0] == scores[2]


def test_extractive_summary_respects_its_budget_and_keeps_the_original_order():
    snippets = ["A" * 50, "B" * 50, "C" * 50, "D" * 50]
    # C is the most central, then B; A and D are the outliers.
    vectors = _unit([[1, 0, 0], [1, 1, 0.2], [0.9, 1, 0.3], [0, 0, 1]])
    config = summaries.SummaryConfig(budget_chars=101)
    summary = summaries.extractive_summary(snippets, vectors, config)
    assert summary == "B" * 50 + " " + "C" * 50  # two fit (101 chars), in their original order
    assert len(summary) <= 101
    assert summaries.extractive_summary(snippets, vectors, summaries.SummaryConfig(budget_chars=100)) == "C" * 50
    # When no snippet fits, the most central one is cut to the budget.
    assert summaries.extractive_summary(snippets, vectors, summaries.SummaryConfig(budget_chars=10)) == "C" * 10
    assert summaries.extractive_summary([], np.zeros((0, 3)), config) == ""


def test_extractive_summary_passes_over_a_snippet_that_would_overflow():
    snippets = ["long " * 30, "short one.", "other short."]
    vectors = _unit([[1, 1], [1, 0.9], [0.9, 1]])
    order = np.argsort(-summaries.lexrank_scores(vectors), kind="stable")
    assert order[0] == 0  # the long one is the most central but does not fit
    assert summaries.extractive_summary(snippets, vectors, summaries.SummaryConfig(budget_chars=30)) == "short one. other short."


def test_weak_label_picks_the_most_similar_and_never_the_same_snippet_twice():
    entries = ["about hops", "about malt", "about yeast"]
    entry_vectors = _unit([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    # Both target snippets are closest to "about hops"; the second takes its next best (malt).
    target_vectors = _unit([[1, 0.1, 0], [1, 0.5, 0.2]])
    assert summaries.weak_label_picks(target_vectors, entry_vectors) == [0, 1]
    assert summaries.weak_label_summary(target_vectors, entries, entry_vectors, summaries.SummaryConfig()) == "about hops about malt"


def test_weak_label_is_joined_in_target_order_and_stops_when_entries_run_out():
    entries = ["e0", "e1"]
    entry_vectors = _unit([[1, 0], [0, 1]])
    target_vectors = _unit([[0, 1], [1, 0], [1, 1]])
    assert summaries.weak_label_picks(target_vectors, entry_vectors) == [1, 0]
    assert summaries.weak_label_summary(target_vectors, entries, entry_vectors, summaries.SummaryConfig()) == "e1 e0"
    assert summaries.weak_label_picks(target_vectors, np.zeros((0, 2))) == []


def test_entry_snippets_are_those_beginning_inside_the_ranked_text():
    first = "One sentence here. " * 20  # 380 chars: two snippets (266 + 114)
    second = "Another document entirely. " * 20  # 540 chars
    snippets = summaries.entry_snippets([first, second], max_chars=400, separator="\n\n")
    # 380 + 2 separator chars: the second entry's first snippet starts inside the 400-char cut
    # and is kept whole; its later snippets start past the cut.
    second_snippets = [s.text for s in summaries.text_lib.make_snippets("", second)]
    first_snippets = [s.text for s in summaries.text_lib.make_snippets("", first)]
    assert snippets == first_snippets + second_snippets[:1]
    assert len(second_snippets) > 1
    assert summaries.entry_snippets([first], max_chars=10, separator="\n\n") == first_snippets[:1]
    assert summaries.entry_snippets([first, second], max_chars=381, separator="\n\n") == first_snippets
