"""BM25 over one user's documents, scored over any profile (subset) of them.

The scores are those of rank-bm25's `BM25Okapi` (version 0.2.2) built on exactly the
profile's tokenized documents: for a query q (a token list; a repeated token counts each
time) and a profile P of N documents,

    score(d) = sum_{t in q} idf_P(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl_P))
    idf_P(t) = ln(N - n_P(t) + 0.5) - ln(n_P(t) + 0.5)      for t occurring in P,
             = epsilon * mean_{t' in vocab(P)} idf_P(t')      where that is negative
                                                               (t in more than half of P),
             = 0                                              for t not occurring in P,

with n_P(t) the number of profile documents containing t and avgdl_P the mean token count
of the profile's documents. IDF and avgdl depend on the corpus, which is the profile, so
the profile-restricted statistics are what make this equal to a BM25Okapi built per example.

Parameters (`BM25Params`): k1 (term-frequency saturation, default 1.5), b (length
normalization, 0..1, default 0.75) and epsilon (the IDF floor as a fraction of the
profile's average IDF, default 0.25): the defaults of `BM25Okapi`.

Where BM25Okapi fails this returns zeros instead: a profile whose documents have no
tokens at all (BM25Okapi divides by a zero vocabulary size or a zero avgdl), and a
zero-length document when b == 1 (0/0 in BM25Okapi, a NaN score).

Efficiency: `BM25Index` is built once per user over all of the user's documents in time
order (a sparse term-frequency matrix, plus for every term the sorted list of documents
that contain it). The profile of an example is the set of documents strictly earlier than
its target, i.e. a *prefix* of that order, so n_P(t) for a query term is one binary search,
avgdl a prefix sum, and the average IDF over the profile vocabulary comes from a per-prefix
histogram of document frequencies computed once per user (O(documents^2) small numpy
steps). Profiles that are not a prefix are scored exactly too, from the sparse rows of the
subset (O(profile tokens)).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np
import scipy.sparse

from personalize_t5x.pipeline.retrieval import text as text_lib


@dataclasses.dataclass(frozen=True)
class BM25Params:
    """BM25Okapi's parameters; defaults equal rank_bm25.BM25Okapi's."""

    k1: float = 1.5
    b: float = 0.75
    epsilon: float = 0.25

    def __post_init__(self):
        for name in ("k1", "b", "epsilon"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"BM25 {name} must be a finite number, got {value!r}")
        if self.k1 < 0:
            raise ValueError(f"BM25 k1 must be >= 0, got {self.k1}")
        if not 0.0 <= self.b <= 1.0:
            raise ValueError(f"BM25 b must be in [0, 1], got {self.b}")
        if self.epsilon < 0:
            raise ValueError(f"BM25 epsilon must be >= 0, got {self.epsilon}")


class BM25Index:
    """Term statistics of one user's documents (in the order given: oldest first).

    Args:
      tokenized: one token list per document, in time order (profiles are prefixes of it).
      params: k1, b, epsilon.
    """

    def __init__(self, tokenized: Sequence[Sequence[str]], params: BM25Params = BM25Params()):
        self.params = params
        self.num_docs = len(tokenized)
        vocab: dict[str, int] = {}
        rows: list[int] = []
        cols: list[int] = []
        doc_len = np.zeros(self.num_docs, dtype=np.float64)
        for i, tokens in enumerate(tokenized):
            doc_len[i] = len(tokens)
            ids = [vocab.setdefault(t, len(vocab)) for t in tokens]
            cols.extend(ids)
            rows.extend([i] * len(ids))
        self.vocab = vocab
        data = np.ones(len(cols), dtype=np.float64)
        # COO -> CSR sums duplicate (doc, term) entries: the term frequencies.
        tf = scipy.sparse.csr_matrix((data, (np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64))), shape=(self.num_docs, len(vocab)))
        tf.sum_duplicates()
        tf.sort_indices()
        self._tf_csr = tf
        csc = tf.tocsc()
        csc.sort_indices()
        self._tf_csc = csc
        self.doc_len = doc_len
        self._cum_len = np.concatenate([[0.0], np.cumsum(doc_len)])
        self._prefix_avg_idf: np.ndarray | None = None

    @classmethod
    def from_texts(cls, texts: Sequence[str], *, tokenizer: Callable[[str], list[str]] = text_lib.DEFAULT_TOKENIZER, params: BM25Params = BM25Params()) -> "BM25Index":
        return cls([tokenizer(t) for t in texts], params)

    # -- statistics ---------------------------------------------------------------------

    def _compute_prefix_avg_idf(self) -> np.ndarray:
        """avg[k] = BM25Okapi's average_idf over documents [0, k) (nan where undefined)."""
        n = self.num_docs
        avg = np.full(n + 1, np.nan)
        df = np.zeros(len(self.vocab), dtype=np.int64)
        hist = np.zeros(n + 2, dtype=np.int64)  # hist[d] = number of terms with df == d (d >= 1)
        csr = self._tf_csr
        for k in range(n):
            terms = csr.indices[csr.indptr[k]:csr.indptr[k + 1]]  # unique per row
            if len(terms):
                old = df[terms]
                np.subtract.at(hist, old, 1)
                np.add.at(hist, old + 1, 1)
                df[terms] = old + 1
            size = k + 1
            counts = hist[1:size + 1]
            vocab_size = counts.sum()
            if vocab_size:
                d = np.arange(1, size + 1, dtype=np.float64)
                idf = np.log(size - d + 0.5) - np.log(d + 0.5)
                avg[size] = float(np.dot(counts, idf)) / vocab_size
        return avg

    def prefix_average_idf(self, k: int) -> float:
        if self._prefix_avg_idf is None:
            self._prefix_avg_idf = self._compute_prefix_avg_idf()
        return float(self._prefix_avg_idf[k])

    # -- scoring --------------------------------------------------------------------------

    def _query_columns(self, query: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        counts: dict[int, int] = {}
        for token in query:
            col = self.vocab.get(token)
            if col is not None:
                counts[col] = counts.get(col, 0) + 1
        cols = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        mult = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
        return cols, mult

    def _combine(self, tf: np.ndarray, n_docs: int, df: np.ndarray, mult: np.ndarray, avg_idf: float, doc_len: np.ndarray, avgdl: float) -> np.ndarray:
        p = self.params
        idf = np.log(n_docs - df + 0.5) - np.log(df + 0.5)
        idf = np.where(idf < 0, p.epsilon * avg_idf, idf)
        idf = np.where(df > 0, idf, 0.0)  # absent from the profile: BM25Okapi's idf.get() -> 0
        norm = p.k1 * (1.0 - p.b + p.b * doc_len / avgdl)  # [n_docs]
        denom = tf + norm[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            part = np.where(tf > 0, tf * (p.k1 + 1.0) / denom, 0.0)
        return part @ (idf * mult)

    def prefix_scores(self, query: Sequence[str], k: int) -> np.ndarray:
        """Scores of documents [0, k) for a tokenized query, as BM25Okapi over them."""
        if not 0 <= k <= self.num_docs:
            raise ValueError(f"prefix length {k} outside [0, {self.num_docs}]")
        scores = np.zeros(k, dtype=np.float64)
        if k == 0:
            return scores
        avgdl = self._cum_len[k] / k
        cols, mult = self._query_columns(query)
        if avgdl == 0 or len(cols) == 0:
            return scores
        csc = self._tf_csc
        df = np.empty(len(cols), dtype=np.float64)
        tf = np.zeros((k, len(cols)), dtype=np.float64)
        for j, col in enumerate(cols):
            lo, hi = csc.indptr[col], csc.indptr[col + 1]
            doc_rows = csc.indices[lo:hi]
            cnt = int(np.searchsorted(doc_rows, k))
            df[j] = cnt
            tf[doc_rows[:cnt], j] = csc.data[lo:lo + cnt]
        if not df.any():
            return scores
        return self._combine(tf, k, df, mult, self.prefix_average_idf(k), self.doc_len[:k], avgdl)

    def subset_scores(self, query: Sequence[str], rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Scores of the documents `rows` (any subset, any order) as BM25Okapi over them."""
        rows = np.asarray(rows, dtype=np.int64)
        n = len(rows)
        if n and (rows.min() < 0 or rows.max() >= self.num_docs):
            raise ValueError(f"document rows must lie in [0, {self.num_docs})")
        if np.array_equal(rows, np.arange(n)):
            return self.prefix_scores(query, n)
        scores = np.zeros(n, dtype=np.float64)
        if n == 0:
            return scores
        doc_len = self.doc_len[rows]
        avgdl = float(doc_len.sum()) / n
        cols, mult = self._query_columns(query)
        if avgdl == 0 or len(cols) == 0:
            return scores
        sub = self._tf_csr[rows]
        df_all = np.bincount(sub.indices, minlength=len(self.vocab))
        present = df_all[df_all > 0].astype(np.float64)
        idf_all = np.log(n - present + 0.5) - np.log(present + 0.5)
        avg_idf = float(idf_all.sum()) / len(present)
        df = df_all[cols].astype(np.float64)
        if not df.any():
            return scores
        tf = sub[:, cols].toarray()
        return self._combine(tf, n, df, mult, avg_idf, doc_len, avgdl)
