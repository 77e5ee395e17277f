"""BM25 over a profile equals rank_bm25.BM25Okapi built on exactly that profile."""
import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from personalize_t5x.pipeline.retrieval import text as text_lib
from personalize_t5x.pipeline.retrieval.bm25 import BM25Index, BM25Params

TOLERANCE = 1e-6


def okapi(docs, query, params):
    return BM25Okapi([list(d) for d in docs], k1=params.k1, b=params.b, epsilon=params.epsilon).get_scores(list(query))


def random_corpus(rng, num_docs, vocab, max_len, allow_empty=False):
    return [[f"w{x}" for x in rng.integers(0, vocab, rng.integers(0 if allow_empty else 1, max_len + 1))] for _ in range(num_docs)]


@pytest.mark.parametrize("seed", range(12))
def test_every_prefix_equals_okapi(seed):
    rng = np.random.default_rng(seed)
    # Small vocabularies make many terms occur in more than half of the documents, so the
    # epsilon * average-idf floor is exercised; larger ones exercise the ordinary idf.
    vocab = int(rng.choice([4, 10, 60, 500]))
    docs = random_corpus(rng, int(rng.integers(1, 40)), vocab, 50, allow_empty=bool(seed % 3 == 0))
    params = BM25Params(k1=float(rng.uniform(0.2, 3.0)), b=float(rng.uniform(0.0, 1.0)), epsilon=float(rng.uniform(0.0, 1.0)))
    index = BM25Index(docs, params)
    for _ in range(3):
        # Repeated query terms and terms absent from the corpus included.
        query = [f"w{x}" for x in rng.integers(0, vocab + 5, rng.integers(1, 10))]
        for k in range(1, len(docs) + 1):
            if not any(docs[:k]):
                continue  # BM25Okapi divides by zero on a profile without tokens
            got = index.prefix_scores(query, k)
            assert got.shape == (k,)
            np.testing.assert_allclose(got, okapi(docs[:k], query, params), rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("seed", range(8))
def test_arbitrary_subsets_equal_okapi(seed):
    rng = np.random.default_rng(100 + seed)
    docs = random_corpus(rng, 30, int(rng.choice([5, 40, 300])), 40)
    params = BM25Params()
    index = BM25Index(docs, params)
    for _ in range(10):
        rows = rng.choice(len(docs), size=int(rng.integers(1, len(docs) + 1)), replace=False)
        query = [f"w{x}" for x in rng.integers(0, 50, 6)]
        np.testing.assert_allclose(index.subset_scores(query, rows), okapi([docs[r] for r in rows], query, params), rtol=0, atol=TOLERANCE)


def test_negative_idf_floor_is_epsilon_times_average_idf():
    # "common" is in 3 of 4 documents: ln(1.5) - ln(3.5) < 0, floored to eps * mean idf.
    docs = [["common", "a"], ["common", "b"], ["common", "c", "c"], ["d"]]
    params = BM25Params(epsilon=0.5)
    index = BM25Index(docs, params)
    reference = BM25Okapi(docs, epsilon=0.5)
    assert reference.idf["common"] == pytest.approx(0.5 * reference.average_idf)
    for query in (["common"], ["common", "c"], ["c", "c", "zzz"], ["zzz"]):
        np.testing.assert_allclose(index.prefix_scores(query, 4), reference.get_scores(query), atol=TOLERANCE)


def test_profile_statistics_are_the_profiles():
    # Same corpus, different profiles: idf and avgdl must follow the profile, not the user.
    docs = [["apple", "pie"], ["apple", "tart"], ["banana"], ["banana", "split", "banana"], ["cherry"]]
    index = BM25Index(docs)
    full = index.prefix_scores(["apple"], 5)
    two = index.prefix_scores(["apple"], 2)
    assert not np.allclose(full[:2], two)
    np.testing.assert_allclose(two, BM25Okapi(docs[:2]).get_scores(["apple"]), atol=TOLERANCE)


def test_real_text_with_project_tokenizer():
    texts = [
        "Why does my espresso taste sour? I grind fine and tamp hard.",
        "Espresso is sour when under-extracted: grind finer, raise the water temperature.",
        "My cat sleeps on the sofa all day long.",
        "Der Kaffee schmeckt sauer. Espresso!",
        "咖啡很酸。我喜欢浓缩咖啡。",
    ]
    tokenizer = text_lib.Tokenizer()
    index = BM25Index.from_texts(texts, tokenizer=tokenizer)
    query = tokenizer("sour espresso 咖啡")
    np.testing.assert_allclose(index.prefix_scores(query, 5), BM25Okapi([tokenizer(t) for t in texts]).get_scores(query), atol=TOLERANCE)
    np.testing.assert_allclose(index.prefix_scores(query, 3), BM25Okapi([tokenizer(t) for t in texts[:3]]).get_scores(query), atol=TOLERANCE)


def test_degenerate_profiles_give_zeros():
    index = BM25Index([[], [], ["a"]])
    np.testing.assert_array_equal(index.prefix_scores(["a"], 2), [0.0, 0.0])  # no tokens at all
    np.testing.assert_array_equal(index.prefix_scores(["a"], 0), np.zeros(0))
    np.testing.assert_array_equal(index.subset_scores(["a"], []), np.zeros(0))
    np.testing.assert_array_equal(index.prefix_scores([], 3), np.zeros(3))
    # b == 1 and an empty document: BM25Okapi gives NaN, we give 0 for it.
    scores = BM25Index([[], ["a", "b"], ["b"]], BM25Params(b=1.0)).prefix_scores(["a"], 3)
    assert np.isfinite(scores).all() and scores[0] == 0.0
    with pytest.raises(ValueError):
        index.prefix_scores(["a"], 4)
    with pytest.raises(ValueError):
        index.subset_scores(["a"], [3])


@pytest.mark.parametrize("kwargs", [{"k1": -1}, {"b": 1.5}, {"b": -0.1}, {"epsilon": -1}, {"k1": float("nan")}, {"k1": "1"}])
def test_params_validated(kwargs):
    with pytest.raises(ValueError):
        BM25Params(**kwargs)


def test_large_user_prefix_statistics_are_fast():
    rng = np.random.default_rng(7)
    docs = random_corpus(rng, 3000, 20_000, 120)
    index = BM25Index(docs)
    import time

    started = time.perf_counter()
    for k in range(2, 3000, 60):
        index.prefix_scores([f"w{x}" for x in rng.integers(0, 20_000, 20)], k)
    assert time.perf_counter() - started < 20
    k = 1234
    query = [f"w{x}" for x in rng.integers(0, 2000, 20)]
    np.testing.assert_allclose(index.prefix_scores(query, k), okapi(docs[:k], query, BM25Params()), atol=TOLERANCE)
