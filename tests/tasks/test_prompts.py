"""Every layout of personalize_t5x.tasks.prompts against exact expected strings."""
from __future__ import annotations

import pytest

from personalize_t5x import feature_names as fn
from personalize_t5x.tasks import prompts

START = "Dear Bob,\nthe start"
DOCUMENT = "Dear Bob,\nthe start of it all."
FEATURES = {
    fn.EXAMPLE_ID: "u7/d3",
    fn.USER_ID: "u7",
    fn.IMMEDIATE_CONTEXT: START,
    fn.TARGET: DOCUMENT,
    "ranked_recent_doc": "R-recent",
    "ranked_rank_doc_bm25": "R-bm25",
    "ranked_rank_doc_dense": "R-dense",
    "ranked_rank_snippet": "R-snippet",
    "ranked_rank_doc_by_snpt": "R-bysnpt",
    fn.SUMMARY_CTX_IND: "S-ind",
    fn.SUMMARY_CTX: "S-ctx",
    fn.KEYWORDS_CTX_IND: "K-ind",
    fn.KEYWORDS_CTX: "K-ctx",
}
I = "Finish the passage in the user voice. "
P = "passage start: Dear Bob,\nthe start"

EXPECTED_INPUTS = {
    "immed_ctx": I + P,
    "user_id": I + "user id: u7 " + P,
    "recent_doc": I + P + " past passages: R-recent",
    "rank_doc_bm25": I + P + " past passages: R-bm25",
    "rank_doc_dense": I + P + " past passages: R-dense",
    "rank_snippet": I + P + " past passages: R-snippet",
    "rank_doc_by_snpt": I + P + " past passages: R-bysnpt",
    "sum_ctx_ind": I + P + " summary: S-ind past passages: R-bysnpt",
    "sum_ctx": I + P + " summary: S-ctx past passages: R-bysnpt",
    "syn_ctx_ind": I + P + " summary: S-ctx important words: K-ind past passages: R-bysnpt",
    "syn_ctx": I + P + " summary: S-ctx important words: K-ctx past passages: R-bysnpt",
    "no_ranked_entries": I + P + " summary: S-ctx important words: K-ctx",
    "remove_doc_start": I + P + " summary: S-ctx important words: K-ctx past passages: R-bysnpt",
    "immed_ctx_at_end": I + "summary: S-ctx important words: K-ctx past passages: R-bysnpt " + P,
}
EXPECTED_TARGETS = {v: DOCUMENT for v in prompts.VARIANTS} | {"remove_doc_start": " of it all."}


def test_every_variant_has_an_expected_string():
    assert set(EXPECTED_INPUTS) == set(prompts.VARIANTS) == set(prompts.PAPER_ROWS)
    assert len(prompts.VARIANTS) == 14


@pytest.mark.parametrize("variant", prompts.VARIANTS)
def test_generation_layouts_exact(variant):
    layout = prompts.generation_layout(variant)
    assert prompts.render_inputs(layout, FEATURES) == EXPECTED_INPUTS[variant]
    assert prompts.render_targets(layout, FEATURES) == EXPECTED_TARGETS[variant]


def test_bytes_features_render_like_strings():
    as_bytes = {k: v.encode("utf-8") for k, v in FEATURES.items()}
    layout = prompts.generation_layout("syn_ctx")
    assert prompts.render_inputs(layout, as_bytes) == EXPECTED_INPUTS["syn_ctx"]


def test_summary_ranker_is_configurable():
    layout = prompts.generation_layout("sum_ctx", summary_ranker="rank_doc_bm25")
    assert prompts.render_inputs(layout, FEATURES) == I + P + " summary: S-ctx past passages: R-bm25"
    # The ranker rows always use their own ranker.
    layout = prompts.generation_layout("recent_doc", summary_ranker="rank_doc_bm25")
    assert prompts.render_inputs(layout, FEATURES) == EXPECTED_INPUTS["recent_doc"]
    with pytest.raises(ValueError, match="unknown ranker"):
        prompts.generation_layout("sum_ctx", summary_ranker="bm42")
    with pytest.raises(ValueError, match="unknown variant"):
        prompts.generation_layout("sum_everything")


def test_author_layout_exact():
    features = {fn.TEXT_A: "one text", fn.TEXT_B: "another text", fn.LABEL: "false"}
    assert prompts.render_inputs(prompts.AUTHOR_LAYOUT, features) == (
        "Predict whether two passages are from the same author. passage 1: one text passage 2: another text"
    )
    assert prompts.render_targets(prompts.AUTHOR_LAYOUT, features) == "false"


def test_remove_doc_start_keeps_target_that_does_not_start_with_context():
    layout = prompts.generation_layout("remove_doc_start")
    features = dict(FEATURES, **{fn.TARGET: "Something else entirely."})
    assert prompts.render_targets(layout, features) == "Something else entirely."
    features = dict(FEATURES, **{fn.TARGET: START})
    assert prompts.render_targets(layout, features) == ""
    # Scoring puts the start back, with the space SentencePiece decoding drops.
    assert prompts.restore_doc_start(" of it all.", START, DOCUMENT) == DOCUMENT
    assert prompts.restore_doc_start("of it all.", START, DOCUMENT) == DOCUMENT
    assert prompts.restore_doc_start("rt of it", "Dear Bob,\nthe sta", DOCUMENT) == "Dear Bob,\nthe start of it"
    assert prompts.restore_doc_start("Whole text.", "Other start", DOCUMENT) == "Whole text."


def test_empty_parts_keep_their_prefix():
    features = dict(FEATURES, **{fn.SUMMARY_CTX: "", fn.KEYWORDS_CTX: ""})
    assert prompts.render_inputs(prompts.generation_layout("no_ranked_entries"), features) == (
        I + P + " summary:  important words: "
    )


def test_missing_feature_is_named():
    with pytest.raises(KeyError, match="summary_ctx"):
        prompts.render_inputs(prompts.generation_layout("sum_ctx"), {fn.IMMEDIATE_CONTEXT: "x"})


def test_required_features():
    assert prompts.generation_layout("immed_ctx").required_features == (fn.IMMEDIATE_CONTEXT, fn.TARGET)
    assert prompts.generation_layout("remove_doc_start").required_features == (
        fn.IMMEDIATE_CONTEXT, fn.SUMMARY_CTX, fn.KEYWORDS_CTX, "ranked_rank_doc_by_snpt", fn.TARGET)
    assert prompts.AUTHOR_LAYOUT.required_features == (fn.TEXT_A, fn.TEXT_B, fn.LABEL)


@pytest.mark.parametrize("variant", prompts.VARIANTS)
def test_tensorflow_renderer_matches_python(variant):
    tf = pytest.importorskip("tensorflow")
    layout = prompts.generation_layout(variant)
    for features in (FEATURES, dict(FEATURES, **{fn.TARGET: "No match, ünïcode ☕."}),
                     dict(FEATURES, **{fn.TARGET: "short"}), dict(FEATURES, **{fn.IMMEDIATE_CONTEXT: "ünï", fn.TARGET: "ünïcode"})):
        tensors = {k: tf.constant(v) for k, v in features.items()}
        out = prompts.render_tf(layout, tensors)
        assert out["inputs"].numpy().decode("utf-8") == prompts.render_inputs(layout, features)
        assert out["targets"].numpy().decode("utf-8") == prompts.render_targets(layout, features)
