"""The metric functions equal sacrebleu / rouge-score called directly, and hand-computed values."""
from __future__ import annotations

import statistics

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from personalize_t5x.tasks import metrics

TARGETS = [
    "The espresso tasted sour because the grind was too coarse.",
    "Dear team,\nthe meeting moves to Thursday at noon. Thanks, Ann",
    "I loved this book; the characters were running through my head for weeks.",
    "Brewing at 93 degrees gives the best extraction.",
]
PREDICTIONS = [
    "The espresso was sour since the grind was coarse.",
    "Dear team, the meeting is moved to Friday. Thanks",
    "I loved the book, its characters ran in my head for days.",
    "",
]


def test_bleu_equals_sacrebleu_corpus_bleu_with_t5_settings():
    expected = sacrebleu.corpus_bleu(PREDICTIONS, [TARGETS], smooth_method="exp", smooth_value=0.0, force=False,
                                     lowercase=False, tokenize="intl", use_effective_order=False).score
    assert metrics.bleu(TARGETS, PREDICTIONS) == {"bleu": pytest.approx(expected, abs=1e-9)}
    assert 0 < expected < 100


def test_rouge_equals_rouge_score_mean_f_measure():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    results = [scorer.score(t, p) for t, p in zip(TARGETS, PREDICTIONS)]
    expected = {k: 100 * statistics.fmean(r[k].fmeasure for r in results) for k in ("rouge1", "rouge2", "rougeL")}
    got = metrics.rouge(TARGETS, PREDICTIONS)
    assert got.keys() == expected.keys()
    for k in expected:
        assert got[k] == pytest.approx(expected[k], abs=1e-9)


def test_rouge_hand_computed_with_stemming():
    # "cats sitting" vs "the cat sits": Porter stems cat, sit match -> P = 2/2, R = 2/3, F = 0.8;
    # bigram "cat sit" is 1 of 1 predicted and 1 of 2 reference bigrams -> F = 2/3; LCS = 2 -> 0.8.
    got = metrics.rouge(["the cat sits"], ["cats sitting"])
    assert got["rouge1"] == pytest.approx(80.0)
    assert got["rouge2"] == pytest.approx(200 / 3)
    assert got["rougeL"] == pytest.approx(80.0)
    # Without stemming nothing would match: stemming is on.
    assert rouge_scorer.RougeScorer(["rouge1"]).score("the cat sits", "cats sitting")["rouge1"].fmeasure == 0


def test_perfect_and_empty_predictions():
    assert metrics.generation_metrics(TARGETS, TARGETS) == {
        "bleu": pytest.approx(100.0), "rouge1": pytest.approx(100.0),
        "rouge2": pytest.approx(100.0), "rougeL": pytest.approx(100.0)}
    assert metrics.generation_metrics(TARGETS, [""] * len(TARGETS)) == {
        "bleu": 0.0, "rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


def test_per_example_scores_equal_sentence_level_calls():
    scores = metrics.per_example_scores(TARGETS, PREDICTIONS)
    assert set(scores) == set(metrics.GENERATION_METRICS)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for i, (t, p) in enumerate(zip(TARGETS, PREDICTIONS)):
        assert scores["bleu"][i] == pytest.approx(sacrebleu.sentence_bleu(p, [t], tokenize="intl").score, abs=1e-9)
        result = scorer.score(t, p)
        for k in ("rouge1", "rouge2", "rougeL"):
            assert scores[k][i] == pytest.approx(100 * result[k].fmeasure, abs=1e-9)
    # The corpus ROUGE is the mean of the per-example values.
    assert metrics.rouge(TARGETS, PREDICTIONS)["rouge1"] == pytest.approx(statistics.fmean(scores["rouge1"]))


def test_accuracy():
    assert metrics.accuracy(["true", "false", "true", "false"], ["true", " false\n", "false", "yes"]) == {
        "accuracy": 50.0}
    assert metrics.accuracy([], []) == {"accuracy": 0.0}
    assert metrics.author_postprocess(b" True ") == "true"


def test_bytes_are_decoded_and_lengths_checked():
    assert metrics.bleu([t.encode() for t in TARGETS], PREDICTIONS) == metrics.bleu(TARGETS, PREDICTIONS)
    with pytest.raises(ValueError, match="3 targets but 4 predictions"):
        metrics.rouge(TARGETS[:3], PREDICTIONS)
