"""The paper's rankers (METHOD.md, stage 2), as pure functions of one user's data.

`rank_user_examples(documents, examples, encoder=..., config=...)` takes all of one user's
Documents and that user's Example dicts (docs/contracts.md) and returns, for every
example, one `Ranking` per requested strategy over exactly the example's profile (its
`profile` list: the user's documents strictly earlier than the target). The query is the
example's `immediate_context`.

Strategies (`STRATEGIES`, the order of the paper's results table):
  recent_doc        profile documents, most recent first (score = timestamp, seconds).
  rank_doc_bm25     documents by BM25 over the profile (`bm25.py`: equal to rank-bm25's
                    BM25Okapi built on the profile; k1, b, epsilon and the tokenizer from
                    the config).
  rank_doc_dense    documents by cosine between the document's embedding and the query's.
  rank_snippet      snippets (`text.make_snippets`: sentences up to `snippet_chars`) of the
                    profile documents by cosine with the query.
  rank_doc_by_snpt  documents scored by the max cosine of their snippets.

Entries. A document-level entry's text is the document's title + "\\n" + body
(`records.join_title_and_text`) and its offsets are [0, len(text)); a snippet entry's
text is the snippet, with [start, end) offsets into that same title + "\\n" + body string.
Ties are broken by recency (the more recent document first; within a document, the
earlier snippet first), so rankings are deterministic.

Ranked text. Entries' texts joined with `config.separator` (default "\\n\\n": a blank line
between entries; T5's SentencePiece vocabulary reads it as whitespace) in rank order, then
cut to `config.max_chars` characters (2,500 as in the paper). Joining stops before a
separator that would not fit, so the text never ends in a dangling separator.
`config.max_entries` (default: all) caps the entries first.

Efficiency. For one user, one BM25 index (`bm25.BM25Index`) is built over all documents,
and every document, snippet and query is encoded once through one `EmbeddingCache` (one
batched call), however many examples share it; each example then costs a few vector
operations over its profile. An example with an empty profile gets empty rankings with
text "" (the caller counts them).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from personalize_t5x import feature_names
from personalize_t5x.pipeline.corpus.records import Document, Example, join_title_and_text
from personalize_t5x.pipeline.retrieval import bm25 as bm25_lib
from personalize_t5x.pipeline.retrieval import encoders as encoders_lib
from personalize_t5x.pipeline.retrieval import text as text_lib

STRATEGIES: tuple[str, ...] = feature_names.RANKING_STRATEGIES
RECENT_DOC, RANK_DOC_BM25, RANK_DOC_DENSE, RANK_SNIPPET, RANK_DOC_BY_SNPT = STRATEGIES
DENSE_STRATEGIES = (RANK_DOC_DENSE, RANK_SNIPPET, RANK_DOC_BY_SNPT)
SNIPPET_STRATEGIES = (RANK_SNIPPET, RANK_DOC_BY_SNPT)
DEFAULT_SEPARATOR = "\n\n"


@dataclasses.dataclass(frozen=True)
class RankingConfig:
    """How rankings are built.

    Attributes:
      max_chars: the joined ranked text is cut to this many characters (paper: 2,500).
      snippet_chars: a snippet closes once it reaches this many characters (paper: 250).
      bm25_k1, bm25_b, bm25_epsilon: BM25Okapi's parameters (rank-bm25 defaults).
      max_entries: keep at most this many entries per ranking (None: all).
      separator: put between entries in the joined text.
      tokenizer: the BM25 tokenizer (`text.Tokenizer`: lowercase, Unicode word runs,
        CJK characters one by one).
      batch_size: encoder batch size.
    """

    max_chars: int = 2500
    snippet_chars: int = text_lib.DEFAULT_SNIPPET_CHARS
    bm25_k1: float = 1.5
    bm25_b: float = 0.75
    bm25_epsilon: float = 0.25
    max_entries: int | None = None
    separator: str = DEFAULT_SEPARATOR
    tokenizer: text_lib.Tokenizer = dataclasses.field(default_factory=text_lib.Tokenizer)
    batch_size: int = encoders_lib.DEFAULT_BATCH_SIZE

    def __post_init__(self):
        for name in ("max_chars", "snippet_chars", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"RankingConfig.{name} must be a positive integer, got {value!r}")
        if self.max_entries is not None and (isinstance(self.max_entries, bool) or not isinstance(self.max_entries, int) or self.max_entries < 1):
            raise ValueError(f"RankingConfig.max_entries must be a positive integer or None, got {self.max_entries!r}")
        if not isinstance(self.separator, str):
            raise ValueError(f"RankingConfig.separator must be a string, got {self.separator!r}")
        if not isinstance(self.tokenizer, text_lib.Tokenizer):
            raise ValueError(f"RankingConfig.tokenizer must be a text.Tokenizer, got {type(self.tokenizer).__name__}")
        self.bm25_params  # validates k1, b, epsilon

    @property
    def bm25_params(self) -> bm25_lib.BM25Params:
        try:
            return bm25_lib.BM25Params(k1=self.bm25_k1, b=self.bm25_b, epsilon=self.bm25_epsilon)
        except ValueError as e:
            raise ValueError(f"RankingConfig: {e}") from None


@dataclasses.dataclass
class RankedEntry:
    """One ranked unit: a document or a snippet, with [start, end) offsets into the
    document's title + "\\n" + body (a whole document: [0, len(text)))."""

    doc_id: str
    text: str
    score: float
    start: int
    end: int


@dataclasses.dataclass
class Ranking:
    strategy: str
    entries: list[RankedEntry]
    text: str


def _field(example: dict | Example, name: str, default: Any = None) -> Any:
    """A field of an Example record or of an example dict (hand-made inputs, tests)."""
    return example.get(name, default) if isinstance(example, dict) else getattr(example, name, default)


def join_entries(texts: Sequence[str], *, separator: str = DEFAULT_SEPARATOR, max_chars: int = 2500) -> str:
    """Joins texts in order with `separator`, cut to `max_chars` (see the module doc)."""
    parts: list[str] = []
    total = 0
    for text in texts:
        if parts:
            if total + len(separator) >= max_chars:
                break
            parts.append(separator)
            total += len(separator)
        parts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return "".join(parts)[:max_chars]


class UserCorpus:
    """One user's documents in time order, with the per-user indexes the rankers share.

    Built once per user; BM25 statistics, snippets and embeddings are computed lazily,
    once, for whatever the requested strategies need.
    """

    def __init__(self, documents: Sequence[Document], config: RankingConfig):
        self.config = config
        self.documents = sorted(documents, key=lambda d: (d.timestamp, d.doc_id))
        self.row_of: dict[str, int] = {}
        for row, document in enumerate(self.documents):
            if document.doc_id in self.row_of:
                raise ValueError(f"duplicate doc id {document.doc_id!r} among the user's documents")
            self.row_of[document.doc_id] = row
        users = {d.user_id for d in self.documents}
        if len(users) > 1:
            raise ValueError(f"documents of several users passed as one user's: {sorted(users)[:5]}")
        self.user_id = next(iter(users)) if users else None
        self.texts = [join_title_and_text(d.title, d.text) for d in self.documents]
        self.timestamps = np.array([d.timestamp for d in self.documents], dtype=np.float64)
        self._bm25: bm25_lib.BM25Index | None = None
        # Snippets, flattened over rows in time order: snippet_ptr[row]..snippet_ptr[row + 1].
        self.snippets: list[text_lib.Snippet] | None = None
        self.snippet_ptr: np.ndarray | None = None
        self.snippet_row: np.ndarray | None = None
        self.snippet_rank_in_doc: np.ndarray | None = None
        self.doc_vectors: np.ndarray | None = None  # [num_docs, d]; rows never needed stay 0
        self.snippet_vectors: np.ndarray | None = None

    # -- profile ------------------------------------------------------------------------

    def profile_rows(self, example: dict[str, Any]) -> np.ndarray:
        """The rows of the example's profile documents, ascending (oldest first)."""
        profile = _field(example, "profile")
        example_id = _field(example, "example_id", "<unknown example>")
        if not isinstance(profile, (list, tuple)):
            raise ValueError(f"example {example_id!r}: 'profile' must be a list of doc ids, got {type(profile).__name__}")
        rows = []
        for doc_id in profile:
            row = self.row_of.get(doc_id)
            if row is None:
                raise ValueError(f"example {example_id!r}: profile doc id {doc_id!r} is not among the user's documents")
            rows.append(row)
        return np.unique(np.asarray(rows, dtype=np.int64))

    # -- sparse ---------------------------------------------------------------------------

    @property
    def bm25(self) -> bm25_lib.BM25Index:
        if self._bm25 is None:
            self._bm25 = bm25_lib.BM25Index([self.config.tokenizer(t) for t in self.texts], self.config.bm25_params)
        return self._bm25

    # -- dense ----------------------------------------------------------------------------

    def build_snippets(self, rows: np.ndarray) -> None:
        """Cuts the documents at `rows` into snippets (a document whose text yields none
        gets its whole text as its one snippet, so every document has a snippet score)."""
        wanted = np.zeros(len(self.documents), dtype=bool)
        wanted[rows] = True
        snippets: list[text_lib.Snippet] = []
        ptr = np.zeros(len(self.documents) + 1, dtype=np.int64)
        owner: list[int] = []
        rank: list[int] = []
        for row, document in enumerate(self.documents):
            if wanted[row]:
                text = self.texts[row]
                pieces = text_lib.make_snippets(document.doc_id, text, snippet_chars=self.config.snippet_chars) or [text_lib.Snippet(document.doc_id, 0, len(text), text)]
                snippets.extend(pieces)
                owner.extend([row] * len(pieces))
                rank.extend(range(len(pieces)))
            ptr[row + 1] = len(snippets)
        self.snippets = snippets
        self.snippet_ptr = ptr
        self.snippet_row = np.asarray(owner, dtype=np.int64)
        self.snippet_rank_in_doc = np.asarray(rank, dtype=np.int64)

    def snippet_indices(self, rows: np.ndarray) -> np.ndarray:
        assert self.snippet_ptr is not None
        ptr = self.snippet_ptr
        if len(rows) and rows[-1] == len(rows) - 1:  # a prefix (rows are unique and sorted)
            return np.arange(ptr[len(rows)])
        if not len(rows):
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.arange(ptr[r], ptr[r + 1]) for r in rows])

    def embed(self, cache: encoders_lib.EmbeddingCache, rows: np.ndarray, queries: Sequence[str], *, documents: bool, snippets: bool) -> np.ndarray:
        """Encodes (in one batched call through the cache) the documents at `rows`, their
        snippets and the queries; returns the query vectors."""
        doc_texts = [self.texts[r] for r in rows] if documents else []
        snippet_texts = [s.text for s in self.snippets] if snippets and self.snippets is not None else []
        vectors = cache.encode(doc_texts + snippet_texts + list(queries))
        dim = vectors.shape[1] if vectors.ndim == 2 else 0
        if documents:
            self.doc_vectors = np.zeros((len(self.documents), dim), dtype=np.float32)
            self.doc_vectors[rows] = vectors[:len(doc_texts)]
        if snippets:
            self.snippet_vectors = vectors[len(doc_texts):len(doc_texts) + len(snippet_texts)]
        return vectors[len(doc_texts) + len(snippet_texts):]

    # -- entries --------------------------------------------------------------------------

    def doc_entry(self, row: int, score: float) -> RankedEntry:
        text = self.texts[row]
        return RankedEntry(self.documents[row].doc_id, text, float(score), 0, len(text))

    def snippet_entry(self, index: int, score: float) -> RankedEntry:
        snippet = self.snippets[index]
        return RankedEntry(snippet.doc_id, snippet.text, float(score), snippet.start, snippet.end)


# -- the strategies: (corpus, profile rows, query) -> Ranking ------------------------------

def _finish(strategy: str, entries: list[RankedEntry], config: RankingConfig) -> Ranking:
    if config.max_entries is not None:
        entries = entries[:config.max_entries]
    return Ranking(strategy, entries, join_entries([e.text for e in entries], separator=config.separator, max_chars=config.max_chars))


def _limit(order: np.ndarray, config: RankingConfig) -> np.ndarray:
    return order if config.max_entries is None else order[:config.max_entries]


def _rank_docs(strategy: str, corpus: UserCorpus, rows: np.ndarray, scores: np.ndarray) -> Ranking:
    # Highest score first; ties: the more recent document (higher row) first.
    order = _limit(np.lexsort((-rows, -scores)), corpus.config)
    return _finish(strategy, [corpus.doc_entry(int(rows[i]), scores[i]) for i in order], corpus.config)


def recent_doc(corpus: UserCorpus, rows: np.ndarray) -> Ranking:
    """RecentDoc: profile documents, most recent first."""
    order = _limit(rows[::-1], corpus.config)
    return _finish(RECENT_DOC, [corpus.doc_entry(int(r), corpus.timestamps[r]) for r in order], corpus.config)


def rank_doc_bm25(corpus: UserCorpus, rows: np.ndarray, query_tokens: Sequence[str]) -> Ranking:
    """RankDocBM25: documents by BM25Okapi over exactly the profile."""
    return _rank_docs(RANK_DOC_BM25, corpus, rows, corpus.bm25.subset_scores(query_tokens, rows))


def rank_doc_dense(corpus: UserCorpus, rows: np.ndarray, query_vector: np.ndarray) -> Ranking:
    """RankDocDense: documents by cosine(document embedding, query embedding)."""
    return _rank_docs(RANK_DOC_DENSE, corpus, rows, corpus.doc_vectors[rows] @ query_vector)


def _snippet_scores(corpus: UserCorpus, rows: np.ndarray, query_vector: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    indices = corpus.snippet_indices(rows)
    return indices, corpus.snippet_vectors[indices] @ query_vector


def rank_snippet(corpus: UserCorpus, rows: np.ndarray, query_vector: np.ndarray) -> Ranking:
    """RankSnippet: snippets of the profile documents by cosine with the query."""
    indices, scores = _snippet_scores(corpus, rows, query_vector)
    # Highest first; ties: the more recent document, then the earlier snippet in it.
    order = _limit(np.lexsort((corpus.snippet_rank_in_doc[indices], -corpus.snippet_row[indices], -scores)), corpus.config)
    return _finish(RANK_SNIPPET, [corpus.snippet_entry(int(indices[i]), scores[i]) for i in order], corpus.config)


def rank_doc_by_snpt(corpus: UserCorpus, rows: np.ndarray, query_vector: np.ndarray) -> Ranking:
    """RankDocBySnpt: documents scored by the max cosine of their snippets."""
    indices, scores = _snippet_scores(corpus, rows, query_vector)
    doc_scores = np.full(len(corpus.documents), -np.inf, dtype=np.float64)
    np.maximum.at(doc_scores, corpus.snippet_row[indices], scores.astype(np.float64))
    return _rank_docs(RANK_DOC_BY_SNPT, corpus, rows, doc_scores[rows])


def _check_strategies(strategies: Sequence[str]) -> tuple[str, ...]:
    if isinstance(strategies, str):
        strategies = (strategies,)
    strategies = tuple(strategies)
    for strategy in strategies:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown ranking strategy {strategy!r}; choose from {STRATEGIES}")
    return tuple(dict.fromkeys(strategies))


def _query(example: dict[str, Any] | Example) -> str:
    query = _field(example, "immediate_context")
    if not isinstance(query, str):
        raise ValueError(f"example {_field(example, 'example_id', '<unknown example>')!r}: 'immediate_context' must be a string, got {type(query).__name__}")
    return query


def rank_user_examples(
    documents: Sequence[Document],
    examples: Sequence[dict],
    *,
    encoder: encoders_lib.Encoder | encoders_lib.EmbeddingCache | None,
    config: RankingConfig = RankingConfig(),
    strategies: Sequence[str] = STRATEGIES,
) -> list[tuple[dict, dict[str, Ranking]]]:
    """Ranks every example of one user over its profile, with every requested strategy.

    Args:
      documents: all of the user's Documents (any order; at least those in the profiles).
      examples: the user's Example dicts (`immediate_context`, `profile` and ids; see
        docs/contracts.md), in any order.
      encoder: a sentence encoder (`SentenceEncoder` or anything with `encode(texts,
        batch_size=...)` returning L2-normalized rows), wrapped in a fresh per-user
        `EmbeddingCache`; or an `EmbeddingCache` to share (e.g. across users of a worker).
        May be None when no dense strategy is requested.
      config: see `RankingConfig`.
      strategies: which of `STRATEGIES` to compute.

    Returns:
      [(example, {strategy: Ranking})] in the order of `examples`.

    Raises:
      ValueError: unknown strategy; a dense strategy without an encoder; an example whose
        profile names a document not given, or whose fields have the wrong types;
        documents of several users, or a duplicate doc id.
    """
    strategies = _check_strategies(strategies)
    corpus = UserCorpus(documents, config)
    prepared = []
    for example in examples:
        if not isinstance(example, (dict, Example)):
            raise ValueError(f"an example must be an Example or a dict, got {type(example).__name__}")
        if corpus.user_id is not None and _field(example, "user_id", corpus.user_id) != corpus.user_id:
            raise ValueError(f"example {_field(example, 'example_id')!r} of user {_field(example, 'user_id')!r} ranked against the documents of user {corpus.user_id!r}")
        prepared.append((example, corpus.profile_rows(example), _query(example)))

    needs_dense = [s for s in strategies if s in DENSE_STRATEGIES]
    query_vectors: list[np.ndarray | None] = [None] * len(prepared)
    if needs_dense:
        if encoder is None:
            raise ValueError(f"strategies {needs_dense} need a sentence encoder; pass encoder=SentenceEncoder.from_pretrained(...)")
        cache = encoder if isinstance(encoder, encoders_lib.EmbeddingCache) else encoders_lib.EmbeddingCache(encoder, batch_size=config.batch_size)
        ranked = [i for i, (_, rows, _) in enumerate(prepared) if len(rows)]
        used_rows = np.unique(np.concatenate([prepared[i][1] for i in ranked])) if ranked else np.zeros(0, dtype=np.int64)
        wants_snippets = any(s in SNIPPET_STRATEGIES for s in needs_dense)
        if wants_snippets:
            corpus.build_snippets(used_rows)
        vectors = corpus.embed(cache, used_rows, [prepared[i][2] for i in ranked], documents=RANK_DOC_DENSE in needs_dense, snippets=wants_snippets)
        for i, vector in zip(ranked, vectors):
            query_vectors[i] = vector

    results: list[tuple[dict, dict[str, Ranking]]] = []
    for (example, rows, query), query_vector in zip(prepared, query_vectors):
        rankings: dict[str, Ranking] = {}
        if not len(rows):
            rankings = {s: Ranking(s, [], "") for s in strategies}
            results.append((example, rankings))
            continue
        query_tokens = config.tokenizer(query) if RANK_DOC_BM25 in strategies else ()
        for strategy in strategies:
            if strategy == RECENT_DOC:
                rankings[strategy] = recent_doc(corpus, rows)
            elif strategy == RANK_DOC_BM25:
                rankings[strategy] = rank_doc_bm25(corpus, rows, query_tokens)
            elif strategy == RANK_DOC_DENSE:
                rankings[strategy] = rank_doc_dense(corpus, rows, query_vector)
            elif strategy == RANK_SNIPPET:
                rankings[strategy] = rank_snippet(corpus, rows, query_vector)
            else:
                rankings[strategy] = rank_doc_by_snpt(corpus, rows, query_vector)
        results.append((example, rankings))
    return results
