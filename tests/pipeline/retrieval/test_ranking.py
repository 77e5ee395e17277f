"""The rankers: order, scores, offsets, truncation, one index and one encoding per user."""
import dataclasses
import hashlib
import importlib.util
import re

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from personalize_t5x.pipeline import examples as examples_lib
from personalize_t5x import feature_names
from personalize_t5x.pipeline.corpus.records import Document, join_title_and_text
from personalize_t5x.pipeline.retrieval import encoders, ranking
from personalize_t5x.pipeline.retrieval import text as text_lib

TOPICS = {
    "coffee": "espresso grind sour bitter roast bean water temperature crema shot".split(),
    "cats": "cat sofa sleep purr whiskers mouse litter kitten nap window".split(),
    "code": "python function bug compile test error stack debug commit merge".split(),
}


class HashingEncoder:
    """A deterministic bag-of-words encoder: cosine follows word overlap. Counts calls."""

    dim = 64

    def __init__(self):
        self.calls = []

    def encode(self, texts, *, batch_size=64, progress=False):
        self.calls.append(list(texts))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1.0
            out[i, 0] += 1e-3  # no zero vectors
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    @property
    def encoded(self):
        return [t for call in self.calls for t in call]


def make_user(num_docs=8, seed=0, user="u1"):
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(num_docs):
        topic = list(TOPICS)[i % 3]
        sentences = []
        for _ in range(int(rng.integers(2, 12))):
            words = rng.choice(TOPICS[topic] + "the a of and to is".split(), size=int(rng.integers(5, 15)))
            sentences.append(" ".join(words).capitalize() + ".")
        docs.append(Document(user, f"d{i}", 1_000 + 10 * i, f"About {topic} {i}", " ".join(sentences)))
    return docs


def make_examples(docs, min_profile=0):
    return examples_lib.one_example_per_document(docs, min_profile_docs=min_profile)


def test_strategies_and_config():
    assert ranking.STRATEGIES == feature_names.RANKING_STRATEGIES
    config = ranking.RankingConfig()
    assert (config.max_chars, config.snippet_chars, config.bm25_k1, config.bm25_b, config.bm25_epsilon, config.max_entries) == (2500, 250, 1.5, 0.75, 0.25, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_chars = 3
    for bad in ({"max_chars": 0}, {"snippet_chars": -1}, {"bm25_k1": -0.5}, {"bm25_b": 2.0}, {"bm25_epsilon": -1.0},
                {"max_entries": 0}, {"max_chars": 2.5}, {"max_entries": True}, {"separator": None}):
        with pytest.raises(ValueError):
            ranking.RankingConfig(**bad)


def test_every_strategy_over_exactly_the_profile():
    docs = make_user(9)
    examples = make_examples(docs)
    encoder = HashingEncoder()
    results = ranking.rank_user_examples(docs, examples, encoder=encoder, config=ranking.RankingConfig())
    assert [e for e, _ in results] == examples
    by_id = {d.doc_id: d for d in docs}
    for example, rankings in results:
        assert tuple(rankings) == ranking.STRATEGIES
        profile = set(example["profile"])
        for strategy, result in rankings.items():
            assert result.strategy == strategy
            assert {e.doc_id for e in result.entries} <= profile
            if strategy != ranking.RANK_SNIPPET:
                assert sorted(e.doc_id for e in result.entries) == sorted(profile)
                for entry in result.entries:
                    full = join_title_and_text(by_id[entry.doc_id].title, by_id[entry.doc_id].text)
                    assert (entry.text, entry.start, entry.end) == (full, 0, len(full))
            scores = [e.score for e in result.entries]
            assert scores == sorted(scores, reverse=True)
            assert len(result.text) <= 2500
        if not profile:
            assert all(r.entries == [] and r.text == "" for r in rankings.values())


def test_recent_doc_is_most_recent_first():
    docs = make_user(6)
    shuffled = [docs[i] for i in (3, 0, 5, 1, 4, 2)]  # input order does not matter
    example = make_examples(docs)[-1]
    [(_, rankings)] = ranking.rank_user_examples(shuffled, [example], encoder=None, config=ranking.RankingConfig(), strategies=["recent_doc"])
    assert [e.doc_id for e in rankings["recent_doc"].entries] == ["d4", "d3", "d2", "d1", "d0"]
    assert [e.score for e in rankings["recent_doc"].entries] == [1040.0, 1030.0, 1020.0, 1010.0, 1000.0]


def test_bm25_equals_okapi_on_the_profile():
    docs = make_user(12, seed=3)
    examples = make_examples(docs)
    config = ranking.RankingConfig(bm25_k1=1.2, bm25_b=0.6, bm25_epsilon=0.3)
    results = ranking.rank_user_examples(docs, examples, encoder=None, config=config, strategies=("rank_doc_bm25",))
    by_id = {d.doc_id: d for d in docs}
    tokenize = config.tokenizer
    for example, rankings in results[1:]:
        profile = example["profile"]
        okapi = BM25Okapi([tokenize(join_title_and_text(by_id[i].title, by_id[i].text)) for i in profile], k1=1.2, b=0.6, epsilon=0.3)
        want = dict(zip(profile, okapi.get_scores(tokenize(example["immediate_context"]))))
        got = {e.doc_id: e.score for e in rankings["rank_doc_bm25"].entries}
        assert got.keys() == want.keys()
        for doc_id in want:
            assert got[doc_id] == pytest.approx(want[doc_id], abs=1e-6)


def test_bm25_profile_that_is_not_a_prefix():
    docs = make_user(8, seed=5)
    example = make_examples(docs)[-1]
    example = {**example, "profile": ["d6", "d1", "d4"]}  # a hand-made, non-prefix profile
    [(_, rankings)] = ranking.rank_user_examples(docs, [example], encoder=None, config=ranking.RankingConfig(), strategies=("rank_doc_bm25",))
    by_id = {d.doc_id: d for d in docs}
    tokenize = text_lib.Tokenizer()
    ids = ["d1", "d4", "d6"]
    okapi = BM25Okapi([tokenize(join_title_and_text(by_id[i].title, by_id[i].text)) for i in ids])
    want = dict(zip(ids, okapi.get_scores(tokenize(example["immediate_context"]))))
    assert {e.doc_id: pytest.approx(e.score, abs=1e-6) for e in rankings["rank_doc_bm25"].entries} == want


def test_dense_strategies_scores_and_snippets():
    docs = make_user(7, seed=1)
    examples = make_examples(docs)
    encoder = HashingEncoder()
    config = ranking.RankingConfig(snippet_chars=120)
    results = ranking.rank_user_examples(docs, examples, encoder=encoder, config=config)
    by_id = {d.doc_id: d for d in docs}
    reference = HashingEncoder()
    for example, rankings in results[1:]:
        query = reference.encode([example["immediate_context"]])[0]
        for entry in rankings["rank_doc_dense"].entries:
            full = join_title_and_text(by_id[entry.doc_id].title, by_id[entry.doc_id].text)
            assert entry.score == pytest.approx(float(reference.encode([full])[0] @ query), abs=1e-5)
        snippets = rankings["rank_snippet"].entries
        expected_snippets = [s for doc_id in example["profile"] for s in text_lib.make_snippets(doc_id, join_title_and_text(by_id[doc_id].title, by_id[doc_id].text), snippet_chars=120)]
        assert sorted((s.doc_id, s.start, s.end) for s in snippets) == sorted((s.doc_id, s.start, s.end) for s in expected_snippets)
        for entry in snippets:
            full = join_title_and_text(by_id[entry.doc_id].title, by_id[entry.doc_id].text)
            assert full[entry.start:entry.end] == entry.text
            assert entry.score == pytest.approx(float(reference.encode([entry.text])[0] @ query), abs=1e-5)
        best = {}
        for entry in snippets:
            best[entry.doc_id] = max(best.get(entry.doc_id, -2.0), entry.score)
        by_snpt = rankings["rank_doc_by_snpt"].entries
        assert {e.doc_id: pytest.approx(e.score, abs=1e-6) for e in by_snpt} == best
        assert [e.doc_id for e in by_snpt] == sorted(best, key=lambda d: (-best[d], -docs[int(d[1:])].timestamp))


def test_each_text_encoded_once_per_user_in_one_call():
    docs = make_user(10, seed=2)
    examples = make_examples(docs)
    encoder = HashingEncoder()
    ranking.rank_user_examples(docs, examples, encoder=encoder, config=ranking.RankingConfig())
    assert len(encoder.calls) == 1  # one batched call for the whole user
    assert len(encoder.encoded) == len(set(encoder.encoded))
    # What was encoded: the 9 documents that are in some profile, their snippets, the queries.
    full = {join_title_and_text(d.title, d.text) for d in docs}
    assert len(full & set(encoder.encoded)) == 9
    # A shared cache: a second pass encodes nothing new.
    cache = encoders.EmbeddingCache(HashingEncoder())
    ranking.rank_user_examples(docs, examples, encoder=cache, config=ranking.RankingConfig())
    encoded = cache.num_encoded
    ranking.rank_user_examples(docs, examples, encoder=cache, config=ranking.RankingConfig())
    assert cache.num_encoded == encoded


def test_sparse_only_needs_no_encoder_and_dense_does():
    docs = make_user(4)
    examples = make_examples(docs)
    results = ranking.rank_user_examples(docs, examples, encoder=None, config=ranking.RankingConfig(), strategies=("recent_doc", "rank_doc_bm25"))
    assert all(set(r) == {"recent_doc", "rank_doc_bm25"} for _, r in results)
    with pytest.raises(ValueError, match="encoder"):
        ranking.rank_user_examples(docs, examples, encoder=None, config=ranking.RankingConfig(), strategies=("rank_snippet",))
    with pytest.raises(ValueError, match="unknown ranking strategy"):
        ranking.rank_user_examples(docs, examples, encoder=None, config=ranking.RankingConfig(), strategies=("rank_everything",))


def test_truncation_separator_and_max_entries():
    docs = make_user(6)
    example = make_examples(docs)[-1]
    config = ranking.RankingConfig(max_chars=300, separator=" || ", max_entries=3)
    [(_, rankings)] = ranking.rank_user_examples(docs, [example], encoder=HashingEncoder(), config=config)
    for result in rankings.values():
        assert len(result.entries) <= 3
        assert len(result.text) <= 300
        assert result.text == ranking.join_entries([e.text for e in result.entries], separator=" || ", max_chars=300)
        assert result.text.startswith(result.entries[0].text[:300])
    assert ranking.join_entries(["abc", "def"], separator="--", max_chars=100) == "abc--def"
    assert ranking.join_entries(["abc", "def"], separator="--", max_chars=5) == "abc"  # no dangling separator
    assert ranking.join_entries(["abc", "def"], separator="--", max_chars=6) == "abc--d"
    assert ranking.join_entries(["abcdef"], max_chars=4) == "abcd"
    assert ranking.join_entries([], max_chars=4) == ""


def test_empty_profile_and_bad_examples():
    docs = make_user(3)
    lonely = {"example_id": "u1/x", "user_id": "u1", "doc_id": "x", "immediate_context": "hello", "profile": []}
    [(_, rankings)] = ranking.rank_user_examples(docs, [lonely], encoder=HashingEncoder(), config=ranking.RankingConfig())
    assert {s: (r.entries, r.text) for s, r in rankings.items()} == {s: ([], "") for s in ranking.STRATEGIES}
    # No documents at all, only an empty-profile example (a hand-made example file).
    [(_, rankings)] = ranking.rank_user_examples([], [lonely], encoder=HashingEncoder(), config=ranking.RankingConfig())
    assert all(r.text == "" for r in rankings.values())
    with pytest.raises(ValueError, match="not among"):
        ranking.rank_user_examples(docs, [{**lonely, "profile": ["missing"]}], encoder=None, config=ranking.RankingConfig(), strategies=("recent_doc",))
    with pytest.raises(ValueError, match="immediate_context"):
        ranking.rank_user_examples(docs, [{**lonely, "immediate_context": None}], encoder=None, config=ranking.RankingConfig(), strategies=("recent_doc",))
    with pytest.raises(ValueError, match="user"):
        ranking.rank_user_examples(docs, [{**lonely, "user_id": "someone-else"}], encoder=None, config=ranking.RankingConfig(), strategies=("recent_doc",))
    with pytest.raises(ValueError, match="duplicate"):
        ranking.rank_user_examples(docs + docs[:1], [lonely], encoder=None, config=ranking.RankingConfig(), strategies=("recent_doc",))


def test_bad_documents_stay_well_formed():
    docs = [
        Document("u", "huge", 1, "A huge one", "This is a sentence of ordinary length. " * 26_000),  # ~1 MB
        Document("u", "nopunct", 2, "", " ".join(["word"] * 3000)),
        Document("u", "cjk", 3, "中文", "我今天去了商店。天气很好！" * 50),
        Document("u", "ar", 4, "عنوان", "هذه جملة باللغة العربية. " * 40),
        Document("u", "tiny", 5, "", "x"),
        Document("u", "target", 6, "Target", "A sentence about the weather."),
    ]
    example = make_examples(docs)[-1]
    [(_, rankings)] = ranking.rank_user_examples(docs, [example], encoder=HashingEncoder(), config=ranking.RankingConfig())
    for result in rankings.values():
        assert 0 < len(result.text) <= 2500
        assert all(np.isfinite(e.score) for e in result.entries)
    assert {e.doc_id for e in rankings["rank_doc_by_snpt"].entries} == {"huge", "nopunct", "cjk", "ar", "tiny"}
    assert max(len(e.text) for e in rankings["rank_snippet"].entries) <= 750


@pytest.mark.skipif(importlib.util.find_spec(encoders.DEFAULT_MODEL_PACKAGE) is None, reason=f"the {encoders.DEFAULT_MODEL_PIP} wheel is not installed")
def test_real_encoder_matches_per_example_encoding():
    docs = make_user(5, seed=4)
    examples = make_examples(docs)[-2:]
    encoder = encoders.SentenceEncoder.from_pretrained()
    results = ranking.rank_user_examples(docs, examples, encoder=encoder, config=ranking.RankingConfig(), strategies=("rank_doc_dense", "rank_snippet"))
    by_id = {d.doc_id: d for d in docs}
    for example, rankings in results:
        query = encoder.encode([example["immediate_context"]], batch_size=16)[0]
        texts = [join_title_and_text(by_id[i].title, by_id[i].text) for i in example["profile"]]
        want = dict(zip(example["profile"], encoder.encode(texts, batch_size=16) @ query))
        got = {e.doc_id: e.score for e in rankings["rank_doc_dense"].entries}
        assert got.keys() == want.keys()
        assert all(abs(got[k] - want[k]) < 1e-4 for k in want)
        assert [e.doc_id for e in rankings["rank_doc_dense"].entries] == sorted(want, key=lambda k: -want[k])
