"""The keyword rules (METHOD.md stage 4) on small hand-checked cases."""
from __future__ import annotations

import math

import numpy as np
import pytest

from personalize_t5x.pipeline import keywords, lexicons

# N = 100 training documents: idf = ln(100 / df).
IDF = keywords.IdfTable(100, {"common": 30, "rare": 20, "hops": 10, "malt": 10, "yeast": 5, "car": 5, "automobile": 5})
CONFIG = keywords.KeywordConfig()


def test_idf_is_ln_n_over_df_and_unseen_words_count_as_df_one():
    assert IDF.idf("common") == pytest.approx(math.log(100 / 30))  # 1.20 < 1.5
    assert IDF.idf("rare") == pytest.approx(math.log(5))  # 1.61 >= 1.5
    assert IDF.idf("never-seen") == pytest.approx(math.log(100))
    table = keywords.build_idf_table(["Hops and malt.", "Malt, malt, malt!", "Yeast"])
    assert table.n_documents == 3 and table.document_frequency == {"hops": 1, "and": 1, "malt": 2, "yeast": 1}


def test_keyword_words_are_lowercase_letter_runs_of_two_or_more():
    assert keywords.keyword_words("Don't brew 2 IPAs_now; a x-ray!") == ["don", "brew", "ipas", "now", "ray"]


def test_word_seen_once_is_excluded():
    assert keywords.context_independent_keywords(["hops hops malt"], IDF, CONFIG) == ["hops"]


def test_idf_threshold_excludes_common_words():
    # "common" (idf 1.20) is below 1.5 however often it appears; "rare" (1.61) passes.
    assert keywords.context_independent_keywords(["common common common rare rare"], IDF, CONFIG) == ["rare"]


def test_stopwords_are_excluded():
    assert keywords.context_independent_keywords(["the the the hops hops"], IDF, CONFIG) == ["hops"]


def test_at_most_twenty_keywords():
    words = [f"word{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(25)]
    words = ["".join(c for c in w if c.isalpha()) for w in words]
    result = keywords.context_independent_keywords([" ".join(words * 2)], IDF, CONFIG)
    assert len(result) == 20
    assert result == sorted(words)[:20]  # all tie on count and idf: alphabetical


def test_sort_by_frequency_then_idf_then_word():
    # yeast x3; hops x2 and malt x2 tie on count and idf (ln 10): alphabetical; rare x2 has
    # the same count but a lower idf (ln 5) than hops and malt, so it comes after them.
    text = "rare rare malt malt hops hops yeast yeast yeast"
    assert keywords.context_independent_keywords([text], IDF, CONFIG) == ["yeast", "hops", "malt", "rare"]
    # Profile texts are counted together.
    assert keywords.context_independent_keywords(["rare", "rare"], IDF, CONFIG) == ["rare"]


def test_weak_label_identical_words_sorted_by_picks_then_idf():
    matcher = keywords.WordMatcher()
    # target: malt x3, hops x1, yeast x1, the x5 (stopword), common x2 (idf < 1.5)
    target = "malt malt malt hops yeast the the the the the common common"
    entries = "hops yeast malt common the lager"
    assert keywords.context_dependent_keywords(target, entries, IDF, matcher, CONFIG) == ["malt", "yeast", "hops"]


def test_weak_label_wordnet_synonym_matches():
    wordnet = lexicons.WordNet()
    assert wordnet.are_synonyms("car", "automobile")
    matcher = keywords.WordMatcher(wordnet=wordnet)
    assert keywords.context_dependent_keywords("my automobile broke", "the car is old", IDF, matcher, CONFIG) == ["car"]
    assert keywords.context_dependent_keywords("my automobile broke", "the car is old", IDF, keywords.WordMatcher(), CONFIG) == []


def test_glove_threshold_decides_a_near_and_a_far_pair():
    vectors = np.array([[0, 0], [3, 0], [4, 0]], dtype=np.float32)
    glove = lexicons.GloveVectors({"ale": 0, "lager": 1, "tractor": 2}, vectors, source="hand", fingerprint="hand")
    matcher = keywords.WordMatcher(glove=glove, glove_threshold=3.55)
    assert matcher.matches(["ale"], ["lager", "tractor"]) == [[0]]  # 3.0 < 3.55 <= 4.0
    assert keywords.context_dependent_keywords("ale", "tractor lager", IDF, matcher, CONFIG) == ["lager"]


def test_packaged_glove_threshold_on_real_vectors():
    glove = lexicons.load_glove()
    matcher = keywords.WordMatcher(glove=glove)
    assert matcher.glove_threshold == keywords.GLOVE_50D_THRESHOLD
    # lager-ale 2.54 (near), beer-tractor 5.92 (far) in glove.6B.50d
    assert matcher.matches(["lager", "beer"], ["ale", "tractor"]) == [[0], []]


def test_a_target_word_picks_every_entry_word_it_matches_once_per_occurrence():
    vectors = np.array([[0, 0], [1, 0], [0, 1]], dtype=np.float32)
    glove = lexicons.GloveVectors({"ale": 0, "lager": 1, "stout": 2}, vectors, source="hand", fingerprint="hand")
    matcher = keywords.WordMatcher(glove=glove, glove_threshold=1.2)
    # "ale" x2 picks lager and stout twice each; "stout" x1 picks stout (identical) and not lager (1.41)
    result = keywords.context_dependent_keywords("ale ale stout", "lager stout", IDF, matcher, CONFIG)
    assert result == ["stout", "lager"]


def test_idf_table_round_trip(tmp_path):
    path = tmp_path / "idf.json"
    keywords.write_idf_table(path, IDF)
    again = keywords.read_idf_table(path)
    assert again == IDF and again.fingerprint == IDF.fingerprint
