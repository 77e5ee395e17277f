"""Names of the fields the features stage writes and the SeqIO tasks read.

The features stage writes one tf.train.Example per example (bytes features holding UTF-8
text, one value each) into `features/<split>.tfrecord-SSSSS-of-NNNNN`, and author pairs
into `features/author_pairs_<split>.tfrecord-SSSSS-of-NNNNN`. Keeping the names here,
in a module that imports nothing heavy, lets both sides agree without importing each other.
"""

# Identity and text of the example.
EXAMPLE_ID = "example_id"
USER_ID = "user_id"
DOC_ID = "doc_id"
SPLIT = "split"
IMMEDIATE_CONTEXT = "immediate_context"
TARGET = "target"

# The paper's rankers, in the order of its results table. The ranked text of strategy S
# is stored under "ranked_" + S (entries joined, truncated to the configured length).
RANKING_STRATEGIES = ("recent_doc", "rank_doc_bm25", "rank_doc_dense", "rank_snippet", "rank_doc_by_snpt")


def ranked_text_feature(strategy: str) -> str:
    if strategy not in RANKING_STRATEGIES:
        raise ValueError(f"unknown ranking strategy {strategy!r}; choose from {RANKING_STRATEGIES}")
    return f"ranked_{strategy}"


# Summary and keyword features (METHOD.md stages 3 and 4), over the summary ranker's
# entries (docs/summaries_and_keywords.md). The features stage writes the context-
# independent ones for every split, and the weak labels of the context-dependent ones for
# the training split (empty elsewhere: they read the target). The context-dependent
# features themselves are the auxiliary models' predictions, joined in afterwards
# (`personalize_t5x.pipeline.aux_join`); empty until then.
SUMMARY_CTX_IND = "summary_ctx_ind"
SUMMARY_CTX = "summary_ctx"
KEYWORDS_CTX_IND = "keywords_ctx_ind"
KEYWORDS_CTX = "keywords_ctx"
SUMMARY_AND_KEYWORD_FEATURES = (SUMMARY_CTX_IND, SUMMARY_CTX, KEYWORDS_CTX_IND, KEYWORDS_CTX)
SUMMARY_CTX_WEAK_LABEL = "summary_ctx_weak_label"
KEYWORDS_CTX_WEAK_LABEL = "keywords_ctx_weak_label"
# Which half of the training users an example's user is in: "aux" (the auxiliary SumCtx
# and SynCtx models train on these), "generation" (the other half), "" (validation, test).
AUX_HALF = "aux_half"
AUX_HALVES = ("aux", "generation")
WEAK_LABEL_FEATURES = (SUMMARY_CTX_WEAK_LABEL, KEYWORDS_CTX_WEAK_LABEL, AUX_HALF)

GENERATION_TEXT_FEATURES = (
    EXAMPLE_ID, USER_ID, DOC_ID, SPLIT, IMMEDIATE_CONTEXT, TARGET,
    *(ranked_text_feature(s) for s in RANKING_STRATEGIES),
    *SUMMARY_AND_KEYWORD_FEATURES,
    *WEAK_LABEL_FEATURES,
)

# Author-distinction pairs.
TEXT_A = "text_a"
TEXT_B = "text_b"
LABEL = "label"  # "true" or "false"
AUTHOR_PAIR_FEATURES = (TEXT_A, TEXT_B, LABEL)

SPLITS = ("train", "validation", "test")


def generation_file_pattern(features_dir: str, split: str) -> str:
    return f"{features_dir}/{split}.tfrecord-*"


def author_pairs_file_pattern(features_dir: str, split: str) -> str:
    return f"{features_dir}/author_pairs_{split}.tfrecord-*"
