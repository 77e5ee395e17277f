"""Keywords (METHOD.md stage 4, "synthesis"): SynCtxInd and the SynCtx weak labels.

Pure functions of one example's texts plus two shared read-only tables (the training
split's IDF table and the word matcher), so the Beam stage, the tests and the benchmarks
call the same code.

Words. `keyword_words(text)`: lowercase runs of Unicode letters of two or more
characters (`KEYWORD_TOKENIZER`, a `retrieval.text.Tokenizer` with the pattern
`[^\\W\\d_]+`: digits, underscores and punctuation split words and are dropped), so
"don't" gives "don" and "t", both stopwords. Stopwords: `lexicons.ENGLISH_STOPWORDS`
(NLTK's English list).

IDF. `idf(w) = ln(N / df(w))` over the training split's documents (every document that is
the target or a profile entry of a training example, each counted once; df counts
documents containing the word). A word absent from the table (a validation/test word never
seen in training) is treated as df = 1, the rarest a training word can be. With the
paper's threshold 1.5, a word found in more than N / e^1.5 (22%) of training documents is
too common to be a keyword.

SynCtxInd (`context_independent_keywords`): the profile's words without stopwords, words
seen once in the profile, and words with IDF < 1.5; sorted by count in the profile
(descending), then IDF (descending), then the word itself (so ties are deterministic);
at most 20.

SynCtx weak label (`context_dependent_keywords`): words of the target and words of the
ranked entries, both without stopwords and IDF < 1.5. A target word matches an entry
word when they are identical, WordNet synonyms, or closer than the GloVe threshold. Each
occurrence of a target word picks every entry word it matches; the picked entry words are
sorted by how often they were picked (descending), then IDF (descending), then the word,
and at most `max_keywords` are kept (the paper gives no cap; 20, as for SynCtxInd). The
label lists entry words (what the SynCtx model can see in its input), not target words.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import os
from typing import Iterable, Mapping, Sequence

import numpy as np

from personalize_t5x.io import files as io_lib
from personalize_t5x.errors import InputError
from personalize_t5x.pipeline import lexicons
from personalize_t5x.pipeline.retrieval import text as text_lib

KEYWORD_TOKENIZER = text_lib.Tokenizer(lowercase=True, pattern=r"[^\W\d_]+", min_length=2)
KEYWORD_TOKENIZER_NAME = "lowercase [^\\W\\d_]+ runs, length >= 2"
# glove.6B 50-d: bench/glove_threshold_bench.py (0.085% of random frequent-word pairs closer).
GLOVE_50D_THRESHOLD = 3.55
# The paper's value for its uncased Common Crawl 300-d vectors: the default for a user's file.
PAPER_GLOVE_THRESHOLD = 4.0
IDF_TABLE_VERSION = 1


def keyword_words(text: str) -> list[str]:
    return KEYWORD_TOKENIZER(text)


@dataclasses.dataclass(frozen=True)
class KeywordConfig:
    """The keyword rules' parameters; the defaults are the paper's where it gives them.

    Attributes:
      max_keywords: at most this many keywords (paper: 20 for SynCtxInd).
      min_idf: words with a smaller IDF are skipped (paper: 1.5).
      min_count: SynCtxInd keeps words seen at least this often in the profile (paper:
        words seen once are removed, so 2).
      separator: joins the keywords into the feature's text.
      use_wordnet, use_glove: the SynCtx match rules beyond identity.
      glove_threshold: Euclidean distance below which two GloVe words match; None = 3.55
        for the packaged 50-d vectors, 4.0 (the paper's) for a user's file.
    """

    max_keywords: int = 20
    min_idf: float = 1.5
    min_count: int = 2
    separator: str = ", "
    use_wordnet: bool = True
    use_glove: bool = True
    glove_threshold: float | None = None

    def __post_init__(self):
        if self.max_keywords < 1:
            raise ValueError(f"KeywordConfig.max_keywords must be >= 1, got {self.max_keywords}")
        if self.min_count < 1:
            raise ValueError(f"KeywordConfig.min_count must be >= 1, got {self.min_count}")
        if self.glove_threshold is not None and self.glove_threshold <= 0:
            raise ValueError(f"KeywordConfig.glove_threshold must be > 0, got {self.glove_threshold}")


# ---------------------------------------------------------------------------- IDF


@dataclasses.dataclass(frozen=True)
class IdfTable:
    """Document frequencies over the training split's documents."""

    n_documents: int
    document_frequency: Mapping[str, int]

    def idf(self, word: str) -> float:
        return math.log(max(self.n_documents, 1) / max(self.document_frequency.get(word, 0), 1))

    def to_json(self) -> dict:
        return {"version": IDF_TABLE_VERSION, "tokenizer": KEYWORD_TOKENIZER_NAME, "idf": "ln(N / df)",
                "n_documents": self.n_documents,
                "document_frequency": dict(sorted(self.document_frequency.items()))}

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def build_idf_table(document_texts: Iterable[str]) -> IdfTable:
    """df over the given documents (each text one document)."""
    frequency: collections.Counter = collections.Counter()
    n = 0
    for text in document_texts:
        n += 1
        frequency.update(set(keyword_words(text)))
    return IdfTable(n, dict(frequency))


def write_idf_table(path: str | os.PathLike, table: IdfTable) -> None:
    io_lib.write_json(path, table.to_json())


def read_idf_table(path: str | os.PathLike) -> IdfTable:
    path = os.fspath(path)
    try:
        with io_lib.open_binary_for_read(path) as f:
            obj = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise InputError(path, 0, "<file>", "no such file") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(path, 0, "<file>", f"not a JSON IDF table ({e})") from None
    if not isinstance(obj, dict) or obj.get("version") != IDF_TABLE_VERSION:
        raise InputError(path, 0, "version", f"expected IDF table version {IDF_TABLE_VERSION}")
    return IdfTable(int(obj["n_documents"]), dict(obj["document_frequency"]))


# ---------------------------------------------------------------------------- SynCtxInd


def _ranked(counts: Mapping[str, int], idf: IdfTable, limit: int) -> list[str]:
    return sorted(counts, key=lambda w: (-counts[w], -idf.idf(w), w))[:limit]


def context_independent_keywords(profile_texts: Iterable[str], idf: IdfTable, config: KeywordConfig) -> list[str]:
    """SynCtxInd: the profile's frequent informative words (module docstring)."""
    counts = collections.Counter(w for t in profile_texts for w in keyword_words(t) if w not in lexicons.ENGLISH_STOPWORDS)
    kept = {w: c for w, c in counts.items() if c >= config.min_count and idf.idf(w) >= config.min_idf}
    return _ranked(kept, idf, config.max_keywords)


# ---------------------------------------------------------------------------- SynCtx


class WordMatcher:
    """Which entry words a target word matches: identity, WordNet synonymy, GloVe distance."""

    def __init__(self, *, wordnet: lexicons.WordNet | None = None, glove: lexicons.GloveVectors | None = None,
                 glove_threshold: float | None = None):
        self.wordnet = wordnet
        self.glove = glove
        if glove is not None and glove_threshold is None:
            glove_threshold = GLOVE_50D_THRESHOLD if glove.fingerprint.startswith(lexicons.GLOVE_PIP) else PAPER_GLOVE_THRESHOLD
        self.glove_threshold = glove_threshold

    @property
    def fingerprint(self) -> dict:
        return {"wordnet": self.wordnet.fingerprint if self.wordnet else None,
                "glove": self.glove.fingerprint if self.glove else None,
                "glove_threshold": self.glove_threshold}

    def matches(self, target_words: Sequence[str], entry_words: Sequence[str]) -> list[list[int]]:
        """For each (distinct) target word, the indices of the (distinct) entry words it matches."""
        result = [[] for _ in target_words]
        if not target_words or not entry_words:
            return result
        matched = [set() for _ in target_words]
        entry_index = {w: j for j, w in enumerate(entry_words)}
        for i, word in enumerate(target_words):
            j = entry_index.get(word)
            if j is not None:
                matched[i].add(j)
        if self.wordnet is not None:
            # Both directions (morphy makes synonymy asymmetric: "hops" reaches "hop", not
            # back): entry words indexed by each of their synonyms.
            entries_by_synonym: dict[str, list[int]] = collections.defaultdict(list)
            for j, word in enumerate(entry_words):
                for synonym in self.wordnet.synonyms(word):
                    entries_by_synonym[synonym].append(j)
            for i, word in enumerate(target_words):
                for synonym in self.wordnet.synonyms(word):
                    j = entry_index.get(synonym)
                    if j is not None:
                        matched[i].add(j)
                matched[i].update(entries_by_synonym.get(word, ()))
        if self.glove is not None:
            t_rows = [(i, self.glove.row_of[w]) for i, w in enumerate(target_words) if w in self.glove.row_of]
            e_rows = [(j, self.glove.row_of[w]) for j, w in enumerate(entry_words) if w in self.glove.row_of]
            if t_rows and e_rows:
                t_vectors = np.asarray(self.glove.vectors[[r for _, r in t_rows]], dtype=np.float32)
                e_vectors = np.asarray(self.glove.vectors[[r for _, r in e_rows]], dtype=np.float32)
                squared = ((t_vectors ** 2).sum(1)[:, None] + (e_vectors ** 2).sum(1)[None, :] - 2 * t_vectors @ e_vectors.T)
                close = np.argwhere(squared < self.glove_threshold ** 2)
                for a, b in close.tolist():
                    matched[t_rows[a][0]].add(e_rows[b][0])
        return [sorted(m) for m in matched]


def _informative(words: Iterable[str], idf: IdfTable, min_idf: float) -> list[str]:
    return [w for w in words if w not in lexicons.ENGLISH_STOPWORDS and idf.idf(w) >= min_idf]


def context_dependent_keywords(target_text: str, entries_text: str, idf: IdfTable, matcher: WordMatcher,
                               config: KeywordConfig) -> list[str]:
    """The SynCtx weak label: entry words matched by the target's words (module docstring)."""
    target_counts = collections.Counter(_informative(keyword_words(target_text), idf, config.min_idf))
    entry_words = list(dict.fromkeys(_informative(keyword_words(entries_text), idf, config.min_idf)))
    target_words = list(target_counts)
    picks: collections.Counter = collections.Counter()
    for word, matched in zip(target_words, matcher.matches(target_words, entry_words)):
        for j in matched:
            picks[entry_words[j]] += target_counts[word]
    return _ranked(picks, idf, config.max_keywords)
