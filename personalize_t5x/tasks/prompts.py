"""The input layouts of every generation variant and of the author-distinction task.

This module is the one place where prompts are defined. Each variant is a `Layout`:
an instruction and an ordered list of `Part`s (a prefix and the feature whose text
follows it). Two renderers read the same `Layout`: `render_inputs` / `render_targets`
on plain dicts of strings (pure Python, used by tests, scripts and reports), and
`render_tf` on a dict of scalar tf.string tensors (used by the SeqIO tasks). Tests
check both against the same exact strings.

Joining (METHOD.md, "Generation"), exactly:

    <instruction>. <prefix 1>: <text 1> <prefix 2>: <text 2> ...

i.e. the instruction, then ". ", then each part as "<prefix>: <text>", parts separated
by one space. Texts are inserted verbatim (no stripping or whitespace normalization;
SentencePiece normalizes whitespace when tokenizing). A part whose text is empty keeps
its prefix, so a variant always has the same shape. For example (syn_ctx):

    Finish the passage in the user voice. passage start: <immediate context>
    summary: <summary> important words: <keywords> past passages: <ranked entries>

(on one line). The variants, in the order of the paper's results table:

| variant | paper row | parts (in order) | target |
|---|---|---|---|
| immed_ctx | ImmedCtx | passage start | document |
| user_id | UserID | user id, passage start | document |
| recent_doc, rank_doc_bm25, rank_doc_dense, rank_snippet, rank_doc_by_snpt | RecentDoc ... RankDocBySnpt | passage start, past passages (that ranker's text) | document |
| sum_ctx_ind | SumCtxInd | passage start, summary (context-independent), past passages (R) | document |
| sum_ctx | SumCtx | passage start, summary (context-dependent), past passages (R) | document |
| syn_ctx_ind | SynCtxInd | passage start, summary (ctx-dep.), important words (ctx-indep.), past passages (R) | document |
| syn_ctx | SynCtx | passage start, summary (ctx-dep.), important words (ctx-dep.), past passages (R) | document |
| no_ranked_entries | NoRankedEntries | syn_ctx without past passages | document |
| remove_doc_start | RemoveDocStart | as syn_ctx | document without its immediate context |
| immed_ctx_at_end | ImmedCtxAtEnd | summary, important words, past passages, passage start | document |

R is the ranker the summary and synthesis rows build on ("summary rows build on the
best ranker; synthesis rows on SumCtx"): `rank_doc_by_snpt` unless configured. The
three ablations of Table 5 are changes against AuthorPred (= syn_ctx mixed with the
author task), so they are built on syn_ctx.

Author distinction (METHOD.md, "Multitask"):

    Predict whether two passages are from the same author. passage 1: <text_a> passage 2: <text_b>

with the target `true` or `false`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from personalize_t5x import feature_names as fn

INSTRUCTION = "Finish the passage in the user voice"
AUTHOR_INSTRUCTION = "Predict whether two passages are from the same author"

PREFIX_USER_ID = "user id"
PREFIX_PASSAGE_START = "passage start"
PREFIX_SUMMARY = "summary"
PREFIX_KEYWORDS = "important words"
PREFIX_PAST_PASSAGES = "past passages"
PREFIX_PASSAGE_1 = "passage 1"
PREFIX_PASSAGE_2 = "passage 2"

INSTRUCTION_SEPARATOR = ". "
PREFIX_SEPARATOR = ": "
PART_SEPARATOR = " "

AUTHOR_LABELS = ("true", "false")

# Every generation variant, in the order of the paper's results table, then Table 5.
RANKER_VARIANTS = fn.RANKING_STRATEGIES
VARIANTS = (
    "immed_ctx",
    "user_id",
    *RANKER_VARIANTS,
    "sum_ctx_ind",
    "sum_ctx",
    "syn_ctx_ind",
    "syn_ctx",
    "no_ranked_entries",
    "remove_doc_start",
    "immed_ctx_at_end",
)
DEFAULT_SUMMARY_RANKER = "rank_doc_by_snpt"

# The paper's name of each variant's row (results table and Table 5).
PAPER_ROWS = {
    "immed_ctx": "ImmedCtx",
    "user_id": "UserID",
    "recent_doc": "RecentDoc",
    "rank_doc_bm25": "RankDocBM25",
    "rank_doc_dense": "RankDocDense",
    "rank_snippet": "RankSnippet",
    "rank_doc_by_snpt": "RankDocBySnpt",
    "sum_ctx_ind": "SumCtxInd",
    "sum_ctx": "SumCtx",
    "syn_ctx_ind": "SynCtxInd",
    "syn_ctx": "SynCtx",
    "no_ranked_entries": "NoRankedEntries",
    "remove_doc_start": "RemoveDocStart",
    "immed_ctx_at_end": "ImmedCtxAtEnd",
}

# Fixed text that appears in inputs or targets; the vocabulary trainer adds it once
# to its corpus so that no character of a prompt is ever out of vocabulary.
FIXED_TEXTS = (
    INSTRUCTION, AUTHOR_INSTRUCTION, PREFIX_USER_ID, PREFIX_PASSAGE_START, PREFIX_SUMMARY,
    PREFIX_KEYWORDS, PREFIX_PAST_PASSAGES, PREFIX_PASSAGE_1, PREFIX_PASSAGE_2, *AUTHOR_LABELS,
)


@dataclasses.dataclass(frozen=True)
class Part:
    """One prefixed piece of an input: `<prefix>: <text of feature>`."""

    prefix: str
    feature: str


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one task turns a feature dict into its `inputs` and `targets` strings.

    Attributes:
      name: the variant (or "author_distinction").
      instruction: the sentence that opens the input (without its final period).
      parts: the prefixed pieces, in order.
      target_feature: the feature the target is taken from.
      drop_start_from_target: when True the target loses its first
        len(immediate_context) characters if it starts with the immediate context
        (the RemoveDocStart ablation).
    """

    name: str
    instruction: str
    parts: tuple[Part, ...]
    target_feature: str = fn.TARGET
    drop_start_from_target: bool = False

    @property
    def required_features(self) -> tuple[str, ...]:
        """The features the renderers read, in a stable order, without repeats."""
        names = [part.feature for part in self.parts] + [self.target_feature]
        if self.drop_start_from_target:
            names.append(fn.IMMEDIATE_CONTEXT)
        return tuple(dict.fromkeys(names))


def _check_ranker(ranker: str) -> None:
    if ranker not in RANKER_VARIANTS:
        raise ValueError(f"unknown ranker {ranker!r}; choose from {RANKER_VARIANTS}")


def generation_layout(variant: str, *, summary_ranker: str = DEFAULT_SUMMARY_RANKER) -> Layout:
    """The layout of one generation variant (see the module docstring's table).

    Args:
      variant: one of VARIANTS.
      summary_ranker: the ranking strategy whose entries fill "past passages" in the
        summary, synthesis and Table 5 variants.
    """
    _check_ranker(summary_ranker)
    start = Part(PREFIX_PASSAGE_START, fn.IMMEDIATE_CONTEXT)
    past = Part(PREFIX_PAST_PASSAGES, fn.ranked_text_feature(summary_ranker))
    summary_ind = Part(PREFIX_SUMMARY, fn.SUMMARY_CTX_IND)
    summary = Part(PREFIX_SUMMARY, fn.SUMMARY_CTX)
    keywords_ind = Part(PREFIX_KEYWORDS, fn.KEYWORDS_CTX_IND)
    keywords = Part(PREFIX_KEYWORDS, fn.KEYWORDS_CTX)
    syn_ctx = (start, summary, keywords, past)

    def make(parts, **kwargs) -> Layout:
        return Layout(name=variant, instruction=INSTRUCTION, parts=tuple(parts), **kwargs)

    if variant == "immed_ctx":
        return make([start])
    if variant == "user_id":
        return make([Part(PREFIX_USER_ID, fn.USER_ID), start])
    if variant in RANKER_VARIANTS:
        return make([start, Part(PREFIX_PAST_PASSAGES, fn.ranked_text_feature(variant))])
    if variant == "sum_ctx_ind":
        return make([start, summary_ind, past])
    if variant == "sum_ctx":
        return make([start, summary, past])
    if variant == "syn_ctx_ind":
        return make([start, summary, keywords_ind, past])
    if variant == "syn_ctx":
        return make(syn_ctx)
    if variant == "no_ranked_entries":
        return make([start, summary, keywords])
    if variant == "remove_doc_start":
        return make(syn_ctx, drop_start_from_target=True)
    if variant == "immed_ctx_at_end":
        return make([summary, keywords, past, start])
    raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")


AUTHOR_LAYOUT = Layout(
    name="author_distinction",
    instruction=AUTHOR_INSTRUCTION,
    parts=(Part(PREFIX_PASSAGE_1, fn.TEXT_A), Part(PREFIX_PASSAGE_2, fn.TEXT_B)),
    target_feature=fn.LABEL,
)


# ----------------------------------------------------------------------------- Python


def _text(features: Mapping[str, Any], name: str) -> str:
    try:
        value = features[name]
    except KeyError:
        raise KeyError(f"feature {name!r} is missing; this layout reads {name!r}") from None
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def render_inputs(layout: Layout, features: Mapping[str, Any]) -> str:
    """The `inputs` string of one example (features: name -> str or UTF-8 bytes)."""
    parts = [part.prefix + PREFIX_SEPARATOR + _text(features, part.feature) for part in layout.parts]
    return layout.instruction + INSTRUCTION_SEPARATOR + PART_SEPARATOR.join(parts)


def render_targets(layout: Layout, features: Mapping[str, Any]) -> str:
    """The `targets` string of one example."""
    target = _text(features, layout.target_feature)
    if layout.drop_start_from_target:
        start = _text(features, fn.IMMEDIATE_CONTEXT)
        if target.startswith(start):
            target = target[len(start):]
    return target


def restore_doc_start(continuation: str, immediate_context: str, document: str) -> str:
    """The whole document a RemoveDocStart target or prediction stands for (for scoring).

    `document` is the example's full target. When it does not start with the immediate
    context, RemoveDocStart kept it whole and `continuation` is returned unchanged.
    SentencePiece decoding drops a continuation's leading whitespace, so one space is put
    back when the document has whitespace right after its start.
    """
    if not document.startswith(immediate_context):
        return continuation
    rest = document[len(immediate_context):]
    glue = " " if rest[:1].isspace() and not continuation[:1].isspace() else ""
    return immediate_context + glue + continuation


# ------------------------------------------------------------------------- TensorFlow


def render_tf(layout: Layout, features: Mapping[str, Any]) -> dict[str, Any]:
    """`{"inputs", "targets"}` as scalar tf.string tensors, byte-identical to the
    Python renderers (tested). `features` maps names to scalar tf.string tensors."""
    import tensorflow as tf  # imported here so that the Python renderers stay light

    pieces: list[Any] = [layout.instruction + INSTRUCTION_SEPARATOR]
    for index, part in enumerate(layout.parts):
        lead = PART_SEPARATOR if index else ""
        pieces.append(lead + part.prefix + PREFIX_SEPARATOR)
        pieces.append(features[part.feature])
    inputs = tf.strings.join(pieces)

    targets = features[layout.target_feature]
    if layout.drop_start_from_target:
        start = features[fn.IMMEDIATE_CONTEXT]
        # Byte offsets: a byte prefix of valid UTF-8 that equals `start` is a character
        # prefix. substr fails for a position past the end, hence the minimum.
        length = tf.strings.length(targets)
        n = tf.minimum(tf.strings.length(start), length)
        has_start = tf.equal(tf.strings.substr(targets, 0, n), start)
        rest = tf.strings.substr(targets, n, length - n)
        targets = tf.where(has_start, rest, targets)
    return {"inputs": inputs, "targets": targets}


# --------------------------------------------------------------- auxiliary models (stages 3, 4)

# The SumCtx and SynCtx models (METHOD.md stages 3 and 4): T5 trained on the weak labels
# of the auxiliary half of the training users, reading the immediate context and the
# summary ranker's entries. Their predictions become `summary_ctx` and `keywords_ctx`.
AUX_MODELS = ("sum_ctx", "syn_ctx")
AUX_SUM_CTX_INSTRUCTION = "Summarize the past passages for the passage start"
AUX_SYN_CTX_INSTRUCTION = "List the important words of the past passages for the passage start"
AUX_TARGET_FEATURES = {"sum_ctx": fn.SUMMARY_CTX_WEAK_LABEL, "syn_ctx": fn.KEYWORDS_CTX_WEAK_LABEL}
# The generation feature each auxiliary model's predictions fill.
AUX_PREDICTED_FEATURES = {"sum_ctx": fn.SUMMARY_CTX, "syn_ctx": fn.KEYWORDS_CTX}


def aux_layout(model: str, *, summary_ranker: str = DEFAULT_SUMMARY_RANKER) -> Layout:
    """The input layout of one auxiliary model:

        Summarize the past passages for the passage start. passage start: <immediate
        context> past passages: <ranked entries>            -> the SumCtx weak label
        List the important words of the past passages for the passage start. passage
        start: <immediate context> past passages: <ranked entries> -> the SynCtx weak label
    """
    if model not in AUX_MODELS:
        raise ValueError(f"unknown auxiliary model {model!r}; choose from {AUX_MODELS}")
    _check_ranker(summary_ranker)
    instruction = AUX_SUM_CTX_INSTRUCTION if model == "sum_ctx" else AUX_SYN_CTX_INSTRUCTION
    return Layout(name=f"aux_{model}", instruction=instruction,
                  parts=(Part(PREFIX_PASSAGE_START, fn.IMMEDIATE_CONTEXT),
                         Part(PREFIX_PAST_PASSAGES, fn.ranked_text_feature(summary_ranker))),
                  target_feature=AUX_TARGET_FEATURES[model])


AUX_FIXED_TEXTS = (AUX_SUM_CTX_INSTRUCTION, AUX_SYN_CTX_INSTRUCTION)
