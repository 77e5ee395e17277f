"""The features stage: an Apache Beam pipeline that ranks each user's past documents.

Reads an examples folder (docs/contracts.md), keys documents and examples by user,
groups them (CoGroupByKey), and for each user calls
`personalize_t5x.pipeline.retrieval.ranking.rank_user_examples` once: one BM25 index and one
embedding cache per user, shared by all of that user's examples. The sentence encoder
is loaded once per worker (DoFn.setup), never per element.

For each user it then computes stages 3 and 4 (docs/summaries_and_keywords.md):
`summary_and_keyword_fields` over the summary ranker's entries, with the same embedding cache.

Outputs, in `output_dir` (names from personalize_t5x/feature_names.py):
  <split>.tfrecord-SSSSS-of-NNNNN               one tf.train.Example per example
  author_pairs_<split>.tfrecord-SSSSS-of-NNNNN  text_a, text_b, label (copied as the examples
                                                stage wrote them: no Beam pass)
  idf_train.json                                the training split's IDF table, computed
                                                once (before the pipeline) per input fingerprint
  features_report.json                          counters: what was read, skipped, odd
  manifest.json                                 written last; lists every shard with its
                                                size and sha256, per split

Determinism: an example goes to shard sha1(example_id) mod N, and each shard is written
sorted by example_id (author pairs: by line number), with deterministic proto
serialization. The same inputs and configuration give byte-identical shards on any
runner and any number of workers. Beam's own WriteToTFRecord is not used: it assigns
records to shards round-robin from a random start and keeps no order within a shard.
Each shard is written to a hidden temporary file and renamed into place, so a killed
worker leaves no shard that looks finished. Workers never import TensorFlow (nine seconds
and hundreds of MB per process): personalize_t5x.io.tfrecords writes the same bytes.

Resumability: `manifest.json` records, per split, a fingerprint of the inputs and the
configuration and every shard's size and sha256. A rerun skips a split whose manifest
entry still matches what is on disk; any other split is recomputed from scratch (its old
shards are removed first), so a half-written output is never mistaken for a finished one.

Runners: DirectRunner with 2 worker processes by default; any other runner (Dataflow,
Flink, Spark) through standard Beam pipeline options in `FeaturesConfig.pipeline_args`.
Remote workers need this package: pass Beam's usual `--setup_file=./setup.py` (or a
container image), and put inputs/outputs on a filesystem they can reach (gs://, s3://).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import posixpath
import time
import unicodedata
import uuid
from typing import Any, Callable, Iterator, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

import personalize_t5x
from personalize_t5x.pipeline import cpu_pinning
from personalize_t5x import feature_names
from personalize_t5x.io import files as io_lib
from personalize_t5x.io import tfrecords
from personalize_t5x.errors import InputError, StageReport
from personalize_t5x.pipeline import keywords as keywords_lib
from personalize_t5x.pipeline import lexicons
from personalize_t5x.pipeline import summaries as summaries_lib
from personalize_t5x.pipeline.corpus.records import Document, Example, document_from_json, example_from_json, join_title_and_text
from personalize_t5x.pipeline.retrieval import encoders, ranking

_LOG = logging.getLogger(__name__)

METRICS_NAMESPACE = "personalize_t5x.pipeline.features"
MANIFEST_NAME = "manifest.json"
REPORT_NAME = "features_report.json"
IDF_TABLE_NAME = "idf_train.json"
MANIFEST_VERSION = 2

# Strategies that need the sentence encoder; the others never load it.
DENSE_STRATEGIES = frozenset({"rank_doc_dense", "rank_snippet", "rank_doc_by_snpt"})
# Documents longer than this are counted (they are kept): a sign of a mis-parsed source.
LONG_DOCUMENT_CHARS = 100_000
_SENTENCE_END = frozenset(".!?。！？؟।")


@dataclasses.dataclass(frozen=True)
class FeaturesConfig:
    """Configuration of the features stage.

    Attributes:
      strategies: ranking strategies to compute; features of the others are written as
        empty strings so every record carries every name of GENERATION_TEXT_FEATURES.
      ranking: the rankers' configuration (lengths, BM25 parameters).
      encoder_path: sentence-transformers checkpoint folder; None = the bundled
        all-MiniLM-L6-v2. Ignored when `encoder_factory` is given.
      encoder_factory: a picklable zero-argument callable returning an object with
        `.encode(texts, batch_size=...)`; lets callers bring their own encoder. Its
        `fingerprint` attribute (or qualified name) enters the resume fingerprint.
      splits: which splits to process.
      num_shards: shards per split; None = ceil(examples / examples_per_shard).
      examples_per_shard: the target shard size when num_shards is None.
      runner: Beam runner name, used unless pipeline_args name one.
      direct_num_workers, direct_running_mode: DirectRunner parallelism.
      one_core_per_worker: each DirectRunner worker process claims a core of its own
        (personalize_t5x.pipeline.cpu_pinning), so XLA and BLAS run one thread per worker and N
        workers use N cores; only with direct_running_mode="multi_processing".
      pipeline_args: extra Beam flags (e.g. "--runner=DataflowRunner", "--project=..."),
        passed to PipelineOptions untouched.
      summaries_and_keywords: compute METHOD.md stages 3 and 4 (docs/summaries_and_keywords.md):
        summary_ctx_ind and keywords_ctx_ind for every split, the SumCtx/SynCtx weak labels
        and aux_half for the training split. Needs the sentence encoder and, for the
        training split, WordNet and GloVe.
      summary_ranker: the ranker whose entries are summarized (None: rank_doc_by_snpt when
        computed, else the computed ranker latest in the paper's table).
      summary: SumCtxInd's mode and budget (summaries.SummaryConfig).
      summarize: the abstractive mode's batch summarizer (texts -> summaries), picklable,
        when one runs inside the workers; without it the abstractive mode leaves
        summary_ctx_ind empty for `aux-join --models sum_ctx_ind` to fill from a user's
        summarization checkpoint's predictions (task personalize_<dataset>_summarize_ranked).
      keywords: the keyword rules (keywords.KeywordConfig).
      wordnet_dir: WordNet 3.0's folder (None: $PERSONALIZE_T5X_WORDNET_DIR or /usr/share/wordnet).
      glove_path: a GloVe text file (None: the packaged glove.6B 50-d vectors).
      aux_seed: seeds the split of the training users into the auxiliary models' half.
    """

    strategies: tuple[str, ...] = feature_names.RANKING_STRATEGIES
    ranking: ranking.RankingConfig = dataclasses.field(default_factory=ranking.RankingConfig)
    encoder_path: str | None = None
    encoder_factory: Callable[[], Any] | None = None
    splits: tuple[str, ...] = feature_names.SPLITS
    num_shards: int | None = None
    examples_per_shard: int = 5000
    runner: str = "DirectRunner"
    direct_num_workers: int = 2
    direct_running_mode: str = "multi_processing"
    one_core_per_worker: bool = False
    pipeline_args: tuple[str, ...] = ()
    summaries_and_keywords: bool = True
    summary_ranker: str | None = None
    summary: summaries_lib.SummaryConfig = dataclasses.field(default_factory=summaries_lib.SummaryConfig)
    summarize: Callable[[Sequence[str]], Sequence[str]] | None = None
    keywords: keywords_lib.KeywordConfig = dataclasses.field(default_factory=keywords_lib.KeywordConfig)
    wordnet_dir: str | None = None
    glove_path: str | None = None
    aux_seed: int = 0

    def __post_init__(self):
        strategies = tuple(self.strategies)
        if not strategies:
            raise ValueError("strategies: at least one ranking strategy is needed")
        for strategy in strategies:
            if strategy not in feature_names.RANKING_STRATEGIES:
                raise ValueError(f"strategies: unknown {strategy!r}; choose from {feature_names.RANKING_STRATEGIES}")
        if len(set(strategies)) != len(strategies):
            raise ValueError(f"strategies: duplicates in {strategies}")
        # Canonical order (the paper's), so the fingerprint does not depend on flag order.
        object.__setattr__(self, "strategies", tuple(s for s in feature_names.RANKING_STRATEGIES if s in strategies))
        splits = tuple(self.splits)
        if not splits or any(s not in feature_names.SPLITS for s in splits) or len(set(splits)) != len(splits):
            raise ValueError(f"splits: expected distinct names from {feature_names.SPLITS}, got {splits}")
        object.__setattr__(self, "splits", splits)
        if self.num_shards is not None and (not isinstance(self.num_shards, int) or self.num_shards < 1):
            raise ValueError(f"num_shards: expected a positive integer or None, got {self.num_shards!r}")
        if self.examples_per_shard < 1:
            raise ValueError(f"examples_per_shard: expected >= 1, got {self.examples_per_shard}")
        if self.direct_num_workers < 1:
            raise ValueError(f"direct_num_workers: expected >= 1, got {self.direct_num_workers}")
        if self.direct_running_mode not in ("in_memory", "multi_threading", "multi_processing"):
            raise ValueError(f"direct_running_mode: expected in_memory, multi_threading or multi_processing, got {self.direct_running_mode!r}")
        if self.one_core_per_worker and self.direct_running_mode != "multi_processing":
            raise ValueError("one_core_per_worker: needs direct_running_mode='multi_processing' "
                             f"(workers in their own processes), got {self.direct_running_mode!r}")
        if self.encoder_factory is not None and not callable(self.encoder_factory):
            raise ValueError("encoder_factory: expected a callable")
        object.__setattr__(self, "pipeline_args", tuple(self.pipeline_args))
        if self.summary_ranker is None:
            # The paper's rows build on the best ranker: RankDocBySnpt when computed, else
            # the computed ranker latest in the paper's table.
            preferred = "rank_doc_by_snpt" if "rank_doc_by_snpt" in self.strategies else self.strategies[-1]
            object.__setattr__(self, "summary_ranker", preferred)
        if self.summaries_and_keywords and self.summary_ranker not in self.strategies:
            raise ValueError(f"summary_ranker: {self.summary_ranker!r} is not among the computed strategies {self.strategies}; "
                             "the summaries and keywords are built over its entries")
        if self.summarize is not None and not callable(self.summarize):
            raise ValueError("summarize: expected a callable")

    @property
    def needs_encoder(self) -> bool:
        return self.summaries_and_keywords or any(s in DENSE_STRATEGIES for s in self.strategies)

    def lexicon_identity(self) -> dict[str, Any]:
        """What the SynCtx weak labels' word matching depends on (cheap: no lexicon loaded)."""
        keywords = self.keywords
        return {
            "wordnet": lexicons.wordnet_fingerprint(self.wordnet_dir) if keywords.use_wordnet else None,
            "glove": (self.glove_path or lexicons.GLOVE_PIP) if keywords.use_glove else None,
        }

    def encoder_identity(self) -> str | None:
        if not self.needs_encoder:
            return None
        if self.encoder_factory is not None:
            factory = self.encoder_factory
            return str(getattr(factory, "fingerprint", None) or f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', type(factory).__qualname__)}")
        if self.encoder_path is not None:
            return self.encoder_path
        return "default:all-MiniLM-L6-v2"

    def fingerprint_dict(self) -> dict[str, Any]:
        """What the outputs depend on (not how they are run: runner options are left out)."""
        return {
            "strategies": list(self.strategies),
            "ranking": dataclasses.asdict(self.ranking),
            "encoder": self.encoder_identity(),
            "num_shards": self.num_shards,
            "examples_per_shard": self.examples_per_shard,
            "package_version": personalize_t5x.__version__,
            "summaries_and_keywords": {
                "summary_ranker": self.summary_ranker,
                "summary": dataclasses.asdict(self.summary),
                "summarize": None if self.summarize is None else str(getattr(self.summarize, "fingerprint", None) or getattr(self.summarize, "__qualname__", type(self.summarize).__qualname__)),
                "keywords": dataclasses.asdict(self.keywords),
                "lexicons": self.lexicon_identity(),
                "aux_seed": self.aux_seed,
            } if self.summaries_and_keywords else None,
        }


@dataclasses.dataclass
class FeaturesResult:
    """What a run did: splits computed, splits skipped as already finished, counters."""

    computed_splits: list[str]
    skipped_splits: list[str]
    counters: dict[str, int]
    manifest: dict[str, Any]
    report: dict[str, Any]


# ---------------------------------------------------------------------------- paths


def examples_path(examples_dir: str, split: str) -> str:
    return posixpath.join(examples_dir, f"{split}.jsonl.gz")


def documents_path(examples_dir: str) -> str:
    return posixpath.join(examples_dir, "documents.jsonl.gz")


def shard_prefix(kind: str, split: str) -> str:
    """File name prefix of a split's shards: `<split>` or `author_pairs_<split>`."""
    return split if kind == "examples" else f"author_pairs_{split}"


def shard_name(prefix: str, index: int, count: int) -> str:
    return f"{prefix}.tfrecord-{index:05d}-of-{count:05d}"


# ---------------------------------------------------------------------------- input parsing


def _counter(name: str) -> Any:
    return Metrics.counter(METRICS_NAMESPACE, name)


def _read_numbered_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line bytes) of a (gzip) file on any Beam filesystem."""
    with FileSystems.open(path) as f:  # compression inferred from the extension
        for number, line in io_lib.iter_binary_lines(path, stream=f):
            if line.strip():
                yield number, line


def _decode_json_line(path: str, number: int, line: bytes) -> Any:
    return io_lib.decode_json_line(line, path=path, line=number)


def _is_mostly_non_latin(text: str) -> bool:
    letters = [c for c in text[:2000] if c.isalpha()]
    if not letters:
        return False
    latin = sum(1 for c in letters if "LATIN" in unicodedata.name(c, ""))
    return latin * 2 < len(letters)


def _has_sentence_punctuation(text: str) -> bool:
    return any(c in _SENTENCE_END for c in text)


def parse_document_line(path: str, number: int, line: bytes) -> tuple[Document | None, list[str]]:
    """One documents.jsonl line -> (Document or None when unusable, counter names).

    Raises InputError for a malformed record. An empty document is not an error here:
    it is dropped (None) and counted, and profiles that name it lose that entry.
    """
    obj = _decode_json_line(path, number, line)
    notes: list[str] = []
    try:
        document = document_from_json(obj, path=path, line=number)
    except InputError as error:
        if error.field == "text" and error.reason == "empty text":
            return None, ["documents_empty_dropped"]
        raise
    if len(document.text) > LONG_DOCUMENT_CHARS:
        notes.append("documents_over_100k_chars")
    if not _has_sentence_punctuation(document.text):
        notes.append("documents_without_sentence_punctuation")
    if _is_mostly_non_latin(document.text):
        notes.append("documents_mostly_non_latin")
    return document, notes


def parse_example_line(path: str, number: int, line: bytes) -> Example:
    """One <split>.jsonl line of the examples stage -> its Example record, trusted as written
    (the stage's output is fingerprinted); a line that is not one is a located InputError."""
    return example_from_json(_decode_json_line(path, number, line), path=path, line=number)


class _WorkerDoFn(beam.DoFn):
    """A DoFn whose worker process first claims a core of its own when asked
    (FeaturesConfig.one_core_per_worker), before any library sizes its thread pools."""

    def __init__(self, one_core_per_worker: bool = False):
        self._one_core_per_worker = one_core_per_worker

    def setup(self) -> None:
        if self._one_core_per_worker:
            cpu_pinning.claim_one_core()


class _ReadDocumentsFn(_WorkerDoFn):
    """path -> (user_id, Document); bad lines are logged, skipped and counted."""

    def process(self, path):
        for number, line in _read_numbered_lines(path):
            try:
                document, notes = parse_document_line(path, number, line)
            except InputError as error:
                _LOG.warning("skipped: %s", error)
                _counter("documents_bad_skipped").inc()
                continue
            for note in notes:
                _counter(note).inc()
            if document is not None:
                _counter("documents_read").inc()
                yield document.user_id, document


class _ReadExamplesFn(_WorkerDoFn):
    """(path, split) -> (user_id, Example); lines that are no Example are logged, skipped, counted."""

    def process(self, element):
        path, split = element
        for number, line in _read_numbered_lines(path):
            try:
                example = parse_example_line(path, number, line)
            except InputError as error:
                _LOG.warning("skipped: %s", error)
                _counter("examples_bad_skipped").inc()
                continue
            _counter(f"examples_read.{split}").inc()
            yield example.user_id, example


# ---------------------------------------------------------------------------- ranking


def load_encoder(config: FeaturesConfig) -> Any:
    """The sentence encoder the dense strategies use, or None when none is requested."""
    if not config.needs_encoder:
        return None
    if config.encoder_factory is not None:
        return config.encoder_factory()
    from personalize_t5x.pipeline.retrieval import encoders# imports JAX: only where it is needed

    return encoders.SentenceEncoder.from_pretrained(config.encoder_path or encoders.default_encoder_path())


@dataclasses.dataclass
class SummaryResources:
    """What stages 3 and 4 read besides one user's data, loaded once per worker."""

    idf: keywords_lib.IdfTable
    matcher: keywords_lib.WordMatcher | None  # None when no training example is computed


def load_summary_resources(config: FeaturesConfig, *, idf: keywords_lib.IdfTable, with_weak_labels: bool) -> SummaryResources:
    matcher = None
    if with_weak_labels:
        keywords = config.keywords
        matcher = keywords_lib.WordMatcher(
            wordnet=lexicons.WordNet(config.wordnet_dir) if keywords.use_wordnet else None,
            glove=lexicons.load_glove(config.glove_path) if keywords.use_glove else None,
            glove_threshold=keywords.glove_threshold)
    return SummaryResources(idf, matcher)


def aux_half_of(user_id: str, seed: int) -> str:
    """The half of the training users a user is in ("aux" or "generation"): a seeded hash
    of the user id, so it needs no list of all users and never depends on other users."""
    digest = hashlib.blake2b(f"{seed}\x00aux_half\x00{user_id}".encode(), digest_size=8).digest()
    return feature_names.AUX_HALVES[digest[0] & 1]


def summary_and_keyword_fields(
    documents: Sequence[Document],
    results: Sequence[tuple[Example, dict[str, ranking.Ranking]]],
    *,
    cache: Any,
    resources: SummaryResources,
    config: FeaturesConfig,
) -> list[dict[str, str]]:
    """Stages 3 and 4 for one user's ranked examples: the features of WEAK_LABEL_FEATURES
    and SUMMARY_AND_KEYWORD_FEATURES (context-dependent ones empty: the auxiliary models'
    predictions are joined in later). Weak labels only for training examples.

    `cache` is the user's EmbeddingCache (the rankers' snippets are already in it).
    """
    texts = {d.doc_id: join_title_and_text(d.title, d.text) for d in documents}
    ranking_config = config.ranking
    per_example = []
    wanted: list[str] = []
    for example, rankings in results:
        entries = rankings[config.summary_ranker].entries
        snippets = summaries_lib.entry_snippets([e.text for e in entries], max_chars=ranking_config.max_chars,
                                                separator=ranking_config.separator, snippet_chars=ranking_config.snippet_chars)
        is_train = example.split == "train"
        targets = summaries_lib.target_snippets(example.target, snippet_chars=ranking_config.snippet_chars) if is_train else []
        per_example.append((snippets, targets))
        wanted.extend(snippets)
        wanted.extend(targets)
    vectors = cache.encode(wanted) if wanted else None
    abstractive: list[str] | None = None
    if config.summary.mode == "abstractive" and config.summarize is not None:
        abstractive = list(config.summarize([rankings[config.summary_ranker].text for _, rankings in results]))
    elif config.summary.mode == "abstractive":
        # Filled later from a summarizer's predictions (registry.register_summarize_task,
        # `aux-join --models sum_ctx_ind`).
        abstractive = [""] * len(results)
    fields = []
    offset = 0
    for index, ((example, rankings), (snippets, targets)) in enumerate(zip(results, per_example)):
        entry_vectors = vectors[offset:offset + len(snippets)] if snippets else np.zeros((0, 1), np.float32)
        offset += len(snippets)
        target_vectors = vectors[offset:offset + len(targets)] if targets else np.zeros((0, 1), np.float32)
        offset += len(targets)
        keywords = config.keywords
        out = {name: "" for name in (*feature_names.SUMMARY_AND_KEYWORD_FEATURES, *feature_names.WEAK_LABEL_FEATURES)}
        out[feature_names.SUMMARY_CTX_IND] = (abstractive[index] if abstractive is not None
                                              else summaries_lib.extractive_summary(snippets, entry_vectors, config.summary))
        out[feature_names.KEYWORDS_CTX_IND] = keywords.separator.join(keywords_lib.context_independent_keywords(
            (texts[d] for d in example.profile), resources.idf, keywords))
        if example.split == "train":
            out[feature_names.AUX_HALF] = aux_half_of(example.user_id, config.aux_seed)
            out[feature_names.SUMMARY_CTX_WEAK_LABEL] = summaries_lib.weak_label_summary(
                target_vectors, snippets, entry_vectors, config.summary)
            out[feature_names.KEYWORDS_CTX_WEAK_LABEL] = keywords.separator.join(keywords_lib.context_dependent_keywords(
                example.target, rankings[config.summary_ranker].text, resources.idf, resources.matcher, keywords))
        fields.append(out)
    return fields


def serialize_generation_example(example: Example, ranked_texts: dict[str, str], summary_fields: dict[str, str] | None = None) -> bytes:
    """One tf.train.Example with every name of GENERATION_TEXT_FEATURES (bytes, UTF-8)."""
    values = {
        feature_names.EXAMPLE_ID: example.example_id,
        feature_names.USER_ID: example.user_id,
        feature_names.DOC_ID: example.doc_id,
        feature_names.SPLIT: example.split,
        feature_names.IMMEDIATE_CONTEXT: example.immediate_context,
        feature_names.TARGET: example.target,
    }
    for strategy in feature_names.RANKING_STRATEGIES:
        values[feature_names.ranked_text_feature(strategy)] = ranked_texts.get(strategy, "")
    for name in (*feature_names.SUMMARY_AND_KEYWORD_FEATURES, *feature_names.WEAK_LABEL_FEATURES):
        values[name] = (summary_fields or {}).get(name, "")
    assert tuple(values) == feature_names.GENERATION_TEXT_FEATURES
    return tfrecords.serialize_bytes_example({k: v.encode("utf-8") for k, v in values.items()})


class RankUserFn(_WorkerDoFn):
    """(user_id, {"documents": [...], "examples": [...]}) -> (split, (example_id, tf.Example bytes)).

    The encoder (and, for stages 3 and 4, the IDF table, WordNet and GloVe) is loaded once
    per worker in setup(); each user gets one call of rank_user_examples and one of
    summary_and_keyword_fields, sharing one EmbeddingCache, so the rankers' snippet
    vectors serve the summaries too. Inputs are the examples stage's fingerprinted output,
    used as written.
    """

    def __init__(self, config: FeaturesConfig, *, idf_path: str | None = None, with_weak_labels: bool = False):
        super().__init__(config.one_core_per_worker)
        self._config = config
        self._idf_path = idf_path
        self._with_weak_labels = with_weak_labels
        self._encoder = None
        self._resources = None

    def setup(self) -> None:
        super().setup()  # before the encoder brings in JAX
        self._encoder = load_encoder(self._config)
        if self._config.summaries_and_keywords:
            self._resources = load_summary_resources(self._config, idf=read_idf_artifact(self._idf_path),
                                                     with_weak_labels=self._with_weak_labels)
        self._users_done = self._examples_done = 0
        self._last_log = time.monotonic()

    def process(self, element):
        user_id, grouped = element
        examples = list(grouped["examples"])
        if examples:  # users without examples in the requested splits have nothing to rank
            yield from self._rank_user(list(grouped["documents"]), examples)

    def _rank_user(self, documents, examples):
        if not documents:
            _counter("users_without_documents").inc()
        _counter("users").inc()
        cache = encoders.EmbeddingCache(self._encoder, batch_size=self._config.ranking.batch_size) if self._encoder is not None else None
        results = ranking.rank_user_examples(
            documents,
            examples,
            encoder=cache,
            config=self._config.ranking,
            strategies=self._config.strategies,
        )
        fields: list[dict[str, str] | None] = [None] * len(results)
        if self._config.summaries_and_keywords:
            fields = summary_and_keyword_fields(documents, results, cache=cache, resources=self._resources, config=self._config)
        for (example, rankings), summary_fields in zip(results, fields):
            ranked_texts = {strategy: rankings[strategy].text for strategy in self._config.strategies}
            if all(not text for text in ranked_texts.values()):
                _counter("examples_with_empty_ranked_texts").inc()
            if summary_fields is not None:
                for name in (*feature_names.SUMMARY_AND_KEYWORD_FEATURES, feature_names.SUMMARY_CTX_WEAK_LABEL, feature_names.KEYWORDS_CTX_WEAK_LABEL):
                    if not summary_fields[name] and (example.split == "train" or name in (feature_names.SUMMARY_CTX_IND, feature_names.KEYWORDS_CTX_IND)):
                        _counter(f"examples_with_empty_{name}.{example.split}").inc()
            _counter(f"examples_written.{example.split}").inc()
            yield example.split, (example.example_id, serialize_generation_example(example, ranked_texts, summary_fields))
        self._users_done += 1
        self._examples_done += len(results)
        now = time.monotonic()
        if now - self._last_log >= 30:
            self._last_log = now
            _LOG.info("features: this worker has ranked %d users, %d examples", self._users_done, self._examples_done)


# ---------------------------------------------------------------------------- writing


def shard_of(key: str, num_shards: int) -> int:
    """Stable shard index of a record key (independent of process, run and runner)."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") % num_shards


def shards_for_count(count: int, config: FeaturesConfig) -> int:
    if config.num_shards is not None:
        return config.num_shards
    return max(1, math.ceil(count / config.examples_per_shard))


class _WriteShardFn(_WorkerDoFn):
    """((prefix, shard, of), [(sort key, record bytes)]) -> the shard's file name.

    Sorted records go to a hidden temporary file renamed into place: a retried or
    killed worker never leaves a partial file under a final shard name.
    """

    def __init__(self, output_dir: str, one_core_per_worker: bool = False):
        super().__init__(one_core_per_worker)
        self._output_dir = output_dir

    def process(self, element):
        (prefix, index, count), records = element
        name = shard_name(prefix, index, count)
        final_path = posixpath.join(self._output_dir, name)
        temp_path = posixpath.join(self._output_dir, f".tmp-{uuid.uuid4().hex}-{name}")
        tfrecords.write_tfrecord(temp_path, (record for _, record in sorted(records, key=lambda kv: kv[0])))
        FileSystems.rename([temp_path], [final_path])
        yield name


def _key_by_shard(
    element: tuple[str, tuple[str, bytes]], counts: dict[str, int], *, kind: str, config: FeaturesConfig
):  # no return annotation: Beam would pick coders from it
    split, (key, record) = element
    num_shards = shards_for_count(counts.get(split, 0), config)
    return (shard_prefix(kind, split), shard_of(key, num_shards), num_shards), (key, record)


def _write_sharded(records: beam.PCollection, *, kind: str, output_dir: str, config: FeaturesConfig, label: str) -> beam.PCollection:
    """(split, (sort key, bytes)) -> shards in output_dir; returns the shard names."""
    counts = (
        records
        | f"{label}CountKeys" >> beam.Map(lambda kv: (kv[0], 1))
        | f"{label}Count" >> beam.CombinePerKey(sum)
    )
    return (
        records
        | f"{label}KeyByShard" >> beam.Map(_key_by_shard, beam.pvalue.AsDict(counts), kind=kind, config=config).with_output_types(Any)
        | f"{label}GroupByShard" >> beam.GroupByKey()
        | f"{label}WriteShards" >> beam.ParDo(_WriteShardFn(output_dir, config.one_core_per_worker))
    )


def build_pipeline(pipeline: beam.Pipeline, *, examples_dir: str, output_dir: str, splits: Sequence[str], config: FeaturesConfig,
                   idf_path: str | None = None) -> None:
    """Adds the features stage for `splits` to `pipeline` (reads, ranks, summarizes, writes).

    `idf_path`: the training split's IDF table (`write_idf_artifact`), needed when
    config.summaries_and_keywords. Author pairs are not part of the pipeline: the examples
    stage wrote them in their final form (`copy_author_pairs`).
    """
    documents = (
        pipeline
        | "DocumentPaths" >> beam.Create([documents_path(examples_dir)])
        | "ReadDocuments" >> beam.ParDo(_ReadDocumentsFn(config.one_core_per_worker))
    )
    examples = (
        pipeline
        | "ExamplePaths" >> beam.Create([(examples_path(examples_dir, s), s) for s in splits])
        | "ReadExamples" >> beam.ParDo(_ReadExamplesFn(config.one_core_per_worker))
    )
    ranked = (
        {"documents": documents, "examples": examples}
        | "GroupByUser" >> beam.CoGroupByKey()
        | "RankUsers" >> beam.ParDo(RankUserFn(config, idf_path=idf_path, with_weak_labels="train" in splits)).with_output_types(Any)
    )
    _write_sharded(ranked, kind="examples", output_dir=output_dir, config=config, label="Examples")


# ---------------------------------------------------------------------------- author pairs


def author_pair_shard_paths(examples_dir: str, split: str) -> list[str]:
    """The author-pair TFRecord shards the examples stage wrote for `split`."""
    pattern = posixpath.join(examples_dir, f"{shard_prefix('author_pairs', split)}.tfrecord-*")
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def copy_author_pairs(examples_dir: str, output_dir: str, split: str) -> None:
    """Copies the split's author-pair shards (final form, written by the examples stage)."""
    sources = author_pair_shard_paths(examples_dir, split)
    if not sources:
        raise InputError(posixpath.join(examples_dir, f"author_pairs_{split}.tfrecord-*"), 0, "<file>",
                         "no author-pair shards: rebuild the examples folder with this version (`personalize-t5x examples build`)")
    for source in sources:
        name = posixpath.basename(source)
        temp_path = posixpath.join(output_dir, f".tmp-{uuid.uuid4().hex}-{name}")
        FileSystems.copy([source], [temp_path])
        FileSystems.rename([temp_path], [posixpath.join(output_dir, name)])


# ---------------------------------------------------------------------------- IDF table


def training_document_texts(examples_dir: str) -> Iterator[str]:
    """title + "\n" + text of every document a training example reads (target or profile
    entry), each once: the documents the IDF table is computed over."""
    wanted: set[str] = set()
    path = examples_path(examples_dir, "train")
    for number, line in _read_numbered_lines(path):
        try:
            example = parse_example_line(path, number, line)
        except InputError:
            continue  # the pipeline's reader skips, logs and counts the same line
        wanted.add(example.doc_id)
        wanted.update(example.profile)
    for number, line in _read_numbered_lines(documents_path(examples_dir)):
        obj = _decode_json_line(documents_path(examples_dir), number, line)
        if isinstance(obj, dict) and obj.get("doc_id") in wanted:
            yield join_title_and_text(obj.get("title") or "", obj.get("text") or "")


def idf_input_fingerprint(examples_dir: str, file_hashes: dict[str, tuple[str, int]]) -> str:
    digest = hashlib.sha256(f"idf v{keywords_lib.IDF_TABLE_VERSION};{keywords_lib.KEYWORD_TOKENIZER_NAME};".encode())
    for path in (documents_path(examples_dir), examples_path(examples_dir, "train")):
        if path not in file_hashes:
            if not _exists(path):
                raise InputError(path, 0, "<file>", "no such file")
            file_hashes[path] = _sha256_of(path)
        file_hash, size = file_hashes[path]
        digest.update(f"{posixpath.basename(path)}:{size}:{file_hash};".encode())
    return digest.hexdigest()


def write_idf_artifact(examples_dir: str, output_dir: str, manifest: dict[str, Any], file_hashes: dict[str, tuple[str, int]]) -> tuple[str, str]:
    """The training split's IDF table as `<output_dir>/idf_train.json`, computed once:
    reused while its inputs' fingerprint (documents + training examples) is unchanged.
    Returns (path, the table's sha256); the manifest's "idf_table" entry records both."""
    path = posixpath.join(output_dir, IDF_TABLE_NAME)
    inputs = idf_input_fingerprint(examples_dir, file_hashes)
    entry = manifest.get("idf_table") or {}
    if entry.get("inputs") == inputs and _exists(path) and _sha256_of(path)[0] == entry.get("sha256"):
        return path, entry["sha256"]
    table = keywords_lib.build_idf_table(training_document_texts(examples_dir))
    _write_json(path, table.to_json())
    file_hash, size = _sha256_of(path)
    manifest["idf_table"] = {"file": IDF_TABLE_NAME, "inputs": inputs, "sha256": file_hash, "bytes": size,
                             "n_documents": table.n_documents, "tokenizer": keywords_lib.KEYWORD_TOKENIZER_NAME,
                             "stopwords": lexicons.STOPWORDS_NAME}
    return path, file_hash


def read_idf_artifact(path: str | None) -> keywords_lib.IdfTable:
    if path is None:
        raise ValueError("the summaries and keywords need the training split's IDF table (idf_path)")
    with FileSystems.open(path, compression_type="uncompressed") as f:
        obj = json.loads(f.read().decode("utf-8"))
    return keywords_lib.IdfTable(int(obj["n_documents"]), obj["document_frequency"])


def pipeline_options(config: FeaturesConfig) -> PipelineOptions:
    """Beam options: pipeline_args as given; DirectRunner parallelism when it runs locally."""
    args = list(config.pipeline_args)
    named_runner = any(a == "--runner" or a.startswith("--runner=") for a in args)
    extra: dict[str, Any] = {}
    if not named_runner:
        extra["runner"] = config.runner
    runner = config.runner
    if named_runner:
        parsed = PipelineOptions(args).get_all_options()
        runner = parsed.get("runner") or "DirectRunner"
    if runner in ("DirectRunner", "direct", "PrismRunner") or runner is None:
        if not any(a.startswith("--direct_num_workers") for a in args):
            extra["direct_num_workers"] = config.direct_num_workers
        if not any(a.startswith("--direct_running_mode") for a in args):
            extra["direct_running_mode"] = config.direct_running_mode
    return PipelineOptions(args, **extra)


# ---------------------------------------------------------------------------- manifest


def _sha256_of(path: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with FileSystems.open(path, compression_type="uncompressed") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _exists(path: str) -> bool:
    return FileSystems.exists(path)


def _list_shards(output_dir: str, prefix: str) -> list[str]:
    pattern = posixpath.join(output_dir, f"{prefix}.tfrecord-*")
    matches = FileSystems.match([pattern])[0].metadata_list
    return sorted(posixpath.basename(m.path) for m in matches)


def input_fingerprint(examples_dir: str, split: str, config: FeaturesConfig, *, file_hashes: dict[str, tuple[str, int]] | None = None,
                      idf_sha256: str | None = None) -> str:
    """sha256 over the configuration and the bytes of every input the split depends on
    (documents, the split's examples and author-pair shards, the IDF table's bytes).

    `file_hashes` caches (sha256, size) per path across splits (documents are shared).
    """
    file_hashes = {} if file_hashes is None else file_hashes
    digest = hashlib.sha256(json.dumps(config.fingerprint_dict(), sort_keys=True).encode())
    digest.update(f"idf:{idf_sha256};".encode())
    for path in (documents_path(examples_dir), examples_path(examples_dir, split), *author_pair_shard_paths(examples_dir, split)):
        if path not in file_hashes:
            if not _exists(path):
                raise InputError(path, 0, "<file>", "no such file")
            file_hashes[path] = _sha256_of(path)
        file_hash, size = file_hashes[path]
        digest.update(f"{posixpath.basename(path)}:{size}:{file_hash};".encode())
    return digest.hexdigest()


def read_manifest(output_dir: str) -> dict[str, Any]:
    path = posixpath.join(output_dir, MANIFEST_NAME)
    if not _exists(path):
        return {"version": MANIFEST_VERSION, "splits": {}}
    try:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            manifest = json.loads(f.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        _LOG.warning("%s is unreadable; every split will be recomputed", path)
        return {"version": MANIFEST_VERSION, "splits": {}}
    if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION or not isinstance(manifest.get("splits"), dict):
        return {"version": MANIFEST_VERSION, "splits": {}}
    return manifest


def split_is_finished(output_dir: str, split: str, entry: dict[str, Any] | None, fingerprint: str) -> bool:
    """True when the manifest entry matches the inputs and every listed shard is intact."""
    if not entry or entry.get("fingerprint") != fingerprint:
        return False
    files: dict[str, Any] = entry.get("files", {})
    for kind in ("examples", "author_pairs"):
        prefix = shard_prefix(kind, split)
        listed = sorted(name for name in files if name.startswith(f"{prefix}.tfrecord-"))
        if not listed or listed != _list_shards(output_dir, prefix):
            return False
    for name, info in files.items():
        path = posixpath.join(output_dir, name)
        if not _exists(path):
            return False
        file_hash, size = _sha256_of(path)
        if size != info.get("bytes") or file_hash != info.get("sha256"):
            return False
    return True


def _remove_split_outputs(output_dir: str, split: str) -> None:
    stale = [posixpath.join(output_dir, n) for kind in ("examples", "author_pairs") for n in _list_shards(output_dir, shard_prefix(kind, split))]
    if stale:
        FileSystems.delete(stale)


def _remove_temporaries(output_dir: str) -> None:
    matches = FileSystems.match([posixpath.join(output_dir, ".tmp-*")])[0].metadata_list
    if matches:
        FileSystems.delete([m.path for m in matches])


def _write_bytes_atomically(path: str, data: bytes) -> None:
    directory = posixpath.dirname(path)
    temp_path = posixpath.join(directory, f".tmp-{uuid.uuid4().hex}-{posixpath.basename(path)}")
    with FileSystems.create(temp_path, compression_type="uncompressed") as f:
        f.write(data)
    FileSystems.rename([temp_path], [path])


def _write_json(path: str, obj: Any) -> None:
    _write_bytes_atomically(path, (json.dumps(obj, ensure_ascii=False, sort_keys=True, indent=2) + "\n").encode("utf-8"))


def _fill_missing_shards(output_dir: str, prefix: str) -> None:
    """Writes empty shards where no record hashed, so `-of-N` sets are complete; and one
    empty shard for an empty split, so readers find a file for every split."""
    names = _list_shards(output_dir, prefix)
    count = int(names[0].rsplit("-of-", 1)[1]) if names else 1
    for index in range(count):
        name = shard_name(prefix, index, count)
        if name not in names:
            tfrecords.write_tfrecord(posixpath.join(output_dir, name), [])


def _count_records(path: str) -> int:
    """Records in a TFRecord file (framing and checksums verified)."""
    return sum(1 for _ in tfrecords.iter_tfrecord(path))


def _wait_with_progress(result: Any, *, progress: bool) -> None:
    """Waits for the pipeline; for runners that return before finishing (Dataflow,
    Flink, ...), shows the users ranked so far from the live counters. The local
    DirectRunner returns when done; its workers log their own progress."""
    from apache_beam.runners.runner import PipelineState
    from tqdm import tqdm

    if PipelineState.is_terminal(result.state) or not progress:
        result.wait_until_finish()
        return
    with tqdm(desc="features: users ranked", unit="user") as bar:
        while not PipelineState.is_terminal(result.state):
            try:
                result.wait_until_finish(duration=15_000)
            except (TypeError, NotImplementedError):
                result.wait_until_finish()  # a runner without timed waits
            try:
                query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE).with_name("users"))
                bar.n = sum(int(m.attempted or 0) for m in query["counters"])
                bar.refresh()
            except Exception:  # live metrics are best effort; the final ones are checked below
                pass
    if result.state != PipelineState.DONE:
        raise RuntimeError(f"the features pipeline ended in state {result.state}")


def _collect_counters(result: Any) -> dict[str, int]:
    counters: dict[str, int] = {}
    for metric in result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]:
        value = metric.committed if metric.committed is not None else metric.attempted
        counters[metric.key.metric.name] = counters.get(metric.key.metric.name, 0) + int(value or 0)
    return dict(sorted(counters.items()))


_BAD_COUNTERS = ("documents_bad_skipped", "examples_bad_skipped", "author_pairs_bad_skipped")


def _stage_report(counters: dict[str, int]) -> StageReport:
    report = StageReport(skip_bad=True)
    report.kept = sum(v for k, v in counters.items() if k.startswith("examples_written."))
    for name, value in counters.items():
        if name.endswith("_dropped"):
            report.drop(name, value)
        elif name in _BAD_COUNTERS:
            report.bad[name] += value
    return report


def run_features(*, examples_dir: str, output_dir: str, config: FeaturesConfig, force: bool = False, progress: bool = True) -> FeaturesResult:
    """Runs the features stage; splits already finished (per the manifest) are skipped.

    Raises InputError when an input file is missing. Bad records inside files are
    skipped, logged and counted in features_report.json.
    """
    from tqdm import tqdm

    examples_dir = examples_dir.rstrip("/") or "/"
    output_dir = output_dir.rstrip("/") or "/"
    if not _exists(output_dir):
        FileSystems.mkdirs(output_dir)
    manifest = read_manifest(output_dir)
    fingerprints: dict[str, str] = {}
    todo: list[str] = []
    skipped: list[str] = []
    file_hashes: dict[str, tuple[str, int]] = {}
    idf_path = idf_sha256 = None
    if config.summaries_and_keywords:
        # Training documents only, whatever splits are computed: validation and test read
        # the training table, so nothing about them enters it.
        idf_path, idf_sha256 = write_idf_artifact(examples_dir, output_dir, manifest, file_hashes)
    for split in tqdm(config.splits, desc="features: checking inputs and finished outputs", disable=not progress, unit="split"):
        fingerprints[split] = input_fingerprint(examples_dir, split, config, file_hashes=file_hashes, idf_sha256=idf_sha256)
        if not force and split_is_finished(output_dir, split, manifest["splits"].get(split), fingerprints[split]):
            skipped.append(split)
        else:
            todo.append(split)
    if not todo:
        _LOG.info("features: every split is finished in %s; nothing to do", output_dir)
        report = read_report(output_dir)
        return FeaturesResult(computed_splits=[], skipped_splits=skipped, counters=report.get("counters", {}), manifest=manifest, report=report)

    # Recompute unfinished splits from scratch: stale shards of another shard count or a
    # killed run must not mix with the new ones. The manifest entry goes first, so a
    # crash from here on leaves the split marked unfinished.
    for split in todo:
        manifest["splits"].pop(split, None)
    _write_json(posixpath.join(output_dir, MANIFEST_NAME), manifest)
    _remove_temporaries(output_dir)
    for split in todo:
        _remove_split_outputs(output_dir, split)

    _LOG.info("features: computing splits %s into %s", todo, output_dir)
    options = pipeline_options(config)
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, examples_dir=examples_dir, output_dir=output_dir, splits=todo, config=config, idf_path=idf_path)
    result = pipeline.run()
    _wait_with_progress(result, progress=progress)
    counters = _collect_counters(result)
    for split in todo:
        copy_author_pairs(examples_dir, output_dir, split)

    for split in tqdm(todo, desc="features: hashing shards", disable=not progress, unit="split"):
        files: dict[str, Any] = {}
        for kind in ("examples", "author_pairs"):
            prefix = shard_prefix(kind, split)
            _fill_missing_shards(output_dir, prefix)
            for name in _list_shards(output_dir, prefix):
                path = posixpath.join(output_dir, name)
                file_hash, size = _sha256_of(path)
                files[name] = {"bytes": size, "sha256": file_hash, "records": _count_records(path)}
        manifest["splits"][split] = {
            "fingerprint": fingerprints[split],
            "files": files,
            "examples": sum(v["records"] for k, v in files.items() if k.startswith(f"{split}.tfrecord-")),
            "author_pairs": sum(v["records"] for k, v in files.items() if k.startswith(f"author_pairs_{split}.tfrecord-")),
        }

    report = {
        "config": config.fingerprint_dict(),
        "splits": {s: {"examples": manifest["splits"][s]["examples"], "author_pairs": manifest["splits"][s]["author_pairs"]} for s in sorted(manifest["splits"])},
        # Counters are those of the last run, which computed `computed_splits` only.
        "computed_splits": todo,
        "skipped_splits": skipped,
        "counters": counters,
        "stage_report": _stage_report(counters).to_json(),
    }
    _write_json(posixpath.join(output_dir, REPORT_NAME), report)
    # Last: the manifest is the mark of a finished split.
    _write_json(posixpath.join(output_dir, MANIFEST_NAME), manifest)
    return FeaturesResult(computed_splits=todo, skipped_splits=skipped, counters=counters, manifest=manifest, report=report)


def read_report(output_dir: str) -> dict[str, Any]:
    path = posixpath.join(output_dir, REPORT_NAME)
    if not _exists(path):
        return {}
    with FileSystems.open(path, compression_type="uncompressed") as f:
        return json.loads(f.read().decode("utf-8"))


# ---------------------------------------------------------------------------- reading back


def read_generation_examples(features_dir: str, split: str) -> Iterator[dict[str, str]]:
    """Decodes the split's tf.Examples back into {feature name: str}, shard by shard."""
    pattern = feature_names.generation_file_pattern(features_dir, split)
    for path in sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list):
        for _, features in tfrecords.read_bytes_examples(path):
            yield {name: features[name].decode("utf-8") for name in feature_names.GENERATION_TEXT_FEATURES}
