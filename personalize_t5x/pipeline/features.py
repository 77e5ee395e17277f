"""The features stage: an Apache Beam pipeline that ranks each user's past documents.

Reads an examples folder (docs/contracts.md), keys documents and examples by user,
groups them (CoGroupByKey), and for each user calls
`personalize_t5x.pipeline.retrieval.ranking.rank_user_examples` once: one BM25 index and one
embedding cache per user, shared by all of that user's examples. The sentence encoder
is loaded once per worker (DoFn.setup), never per element.

Outputs, in `output_dir` (names from personalize_t5x/feature_names.py):
  <split>.tfrecord-SSSSS-of-NNNNN               one tf.train.Example per example
  author_pairs_<split>.tfrecord-SSSSS-of-NNNNN  text_a, text_b, label
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
from typing import Any, Callable, Iterable, Iterator, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

import personalize_t5x
from personalize_t5x.pipeline import cpu_pinning
from personalize_t5x import feature_names
from personalize_t5x.io import files as io_lib
from personalize_t5x.io import tfrecords
from personalize_t5x.errors import InputError, StageReport
from personalize_t5x.pipeline.corpus.records import Document, document_from_json
from personalize_t5x.pipeline.retrieval import ranking

_LOG = logging.getLogger(__name__)

METRICS_NAMESPACE = "personalize_t5x.pipeline.features"
MANIFEST_NAME = "manifest.json"
REPORT_NAME = "features_report.json"
MANIFEST_VERSION = 1

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

    @property
    def needs_encoder(self) -> bool:
        return any(s in DENSE_STRATEGIES for s in self.strategies)

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


def author_pairs_path(examples_dir: str, split: str) -> str:
    return posixpath.join(examples_dir, f"author_pairs_{split}.jsonl.gz")


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


_EXAMPLE_STRING_FIELDS = ("example_id", "user_id", "split", "doc_id", "immediate_context", "target")


def parse_example_line(path: str, number: int, line: bytes, *, split: str) -> dict[str, Any]:
    """One <split>.jsonl line -> a validated Example dict, or a located InputError."""
    obj = _decode_json_line(path, number, line)
    if not isinstance(obj, dict):
        raise InputError(path, number, "<record>", f"expected a JSON object, got {type(obj).__name__}")
    example: dict[str, Any] = {}
    for field in _EXAMPLE_STRING_FIELDS:
        value = obj.get(field)
        if not isinstance(value, str):
            raise InputError(path, number, field, "missing" if value is None else f"expected a string, got {type(value).__name__}")
        example[field] = value
    for field in ("example_id", "user_id", "doc_id"):
        if not example[field].strip():
            raise InputError(path, number, field, "empty")
    if example["split"] != split:
        raise InputError(path, number, "split", f"{example['split']!r} in the file of split {split!r}")
    timestamp = obj.get("timestamp")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        raise InputError(path, number, "timestamp", f"expected an integer, got {timestamp!r}")
    example["timestamp"] = timestamp
    title = obj.get("title", "")
    example["title"] = title if isinstance(title, str) else ""
    profile = obj.get("profile")
    if not isinstance(profile, list) or not all(isinstance(p, str) for p in profile):
        raise InputError(path, number, "profile", "expected a list of document ids")
    example["profile"] = list(profile)
    return example


def parse_author_pair_line(path: str, number: int, line: bytes) -> dict[str, str]:
    obj = _decode_json_line(path, number, line)
    if not isinstance(obj, dict):
        raise InputError(path, number, "<record>", f"expected a JSON object, got {type(obj).__name__}")
    pair = {}
    for field in feature_names.AUTHOR_PAIR_FEATURES:
        value = obj.get(field)
        if not isinstance(value, str):
            raise InputError(path, number, field, "missing" if value is None else f"expected a string, got {type(value).__name__}")
        pair[field] = value
    if pair[feature_names.LABEL] not in ("true", "false"):
        raise InputError(path, number, feature_names.LABEL, f"expected 'true' or 'false', got {pair[feature_names.LABEL]!r}")
    return pair


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
    """(path, split) -> (user_id, example dict); bad lines are logged, skipped and counted."""

    def process(self, element):
        path, split = element
        for number, line in _read_numbered_lines(path):
            try:
                example = parse_example_line(path, number, line, split=split)
            except InputError as error:
                _LOG.warning("skipped: %s", error)
                _counter("examples_bad_skipped").inc()
                continue
            _counter(f"examples_read.{split}").inc()
            yield example["user_id"], example


class _ReadAuthorPairsFn(_WorkerDoFn):
    """(path, split) -> (split, (sort key, pair)); bad lines are logged, skipped and counted."""

    def process(self, element):
        path, split = element
        for number, line in _read_numbered_lines(path):
            try:
                pair = parse_author_pair_line(path, number, line)
            except InputError as error:
                _LOG.warning("skipped: %s", error)
                _counter("author_pairs_bad_skipped").inc()
                continue
            _counter(f"author_pairs_read.{split}").inc()
            # The line number orders the pairs inside a shard, as in the input file.
            yield split, (f"{number:012d}", pair)


# ---------------------------------------------------------------------------- ranking


def load_encoder(config: FeaturesConfig) -> Any:
    """The sentence encoder the dense strategies use, or None when none is requested."""
    if not config.needs_encoder:
        return None
    if config.encoder_factory is not None:
        return config.encoder_factory()
    from personalize_t5x.pipeline.retrieval import encoders# imports JAX: only where it is needed

    return encoders.SentenceEncoder.from_pretrained(config.encoder_path or encoders.default_encoder_path())


def clean_user_inputs(
    documents: Iterable[Document], examples: Iterable[dict[str, Any]]
) -> tuple[list[Document], list[dict[str, Any]], dict[str, int]]:
    """Orders one user's records and makes every profile safe to rank.

    Returns documents sorted by (timestamp, doc_id), examples sorted by (timestamp,
    example_id) with profiles restricted to known documents strictly earlier than the
    example (defence against hand-made files: ranking must never see the future), and
    counts of what was removed.
    """
    counts: dict[str, int] = {}

    def count(name: str, n: int = 1) -> None:
        if n:
            counts[name] = counts.get(name, 0) + n

    documents = sorted(documents, key=lambda d: (d.timestamp, d.doc_id))
    by_id: dict[str, Document] = {}
    for document in documents:
        if document.doc_id in by_id:
            count("documents_duplicate_id_dropped")
            continue
        by_id[document.doc_id] = document
    documents = list(by_id.values())
    cleaned = []
    for example in sorted(examples, key=lambda e: (e["timestamp"], e["example_id"])):
        profile = []
        seen: set[str] = set()
        for doc_id in example["profile"]:
            document = by_id.get(doc_id)
            if document is None:
                count("profile_ids_unknown_dropped")
            elif document.timestamp >= example["timestamp"] or doc_id == example["doc_id"]:
                count("profile_ids_not_earlier_dropped")
            elif doc_id in seen:
                count("profile_ids_duplicate_dropped")
            else:
                seen.add(doc_id)
                profile.append(doc_id)
        if not example["profile"]:
            count("examples_with_empty_profile")
        elif not profile:
            count("examples_with_profile_emptied_by_cleaning")
        cleaned.append({**example, "profile": profile})
    return documents, cleaned, counts


def serialize_generation_example(example: dict[str, Any], ranked_texts: dict[str, str]) -> bytes:
    """One tf.train.Example with every name of GENERATION_TEXT_FEATURES (bytes, UTF-8)."""
    values = {
        feature_names.EXAMPLE_ID: example["example_id"],
        feature_names.USER_ID: example["user_id"],
        feature_names.DOC_ID: example["doc_id"],
        feature_names.SPLIT: example["split"],
        feature_names.IMMEDIATE_CONTEXT: example["immediate_context"],
        feature_names.TARGET: example["target"],
    }
    for strategy in feature_names.RANKING_STRATEGIES:
        values[feature_names.ranked_text_feature(strategy)] = ranked_texts.get(strategy, "")
    for name in feature_names.SUMMARY_AND_KEYWORD_FEATURES:
        values[name] = ""  # filled by the summary/keyword stage
    assert tuple(values) == feature_names.GENERATION_TEXT_FEATURES
    return tfrecords.serialize_bytes_example({k: v.encode("utf-8") for k, v in values.items()})


def serialize_author_pair(pair: dict[str, str]) -> bytes:
    return tfrecords.serialize_bytes_example({k: pair[k].encode("utf-8") for k in feature_names.AUTHOR_PAIR_FEATURES})


def _serialize_keyed_pair(element):
    split, (key, pair) = element
    return split, (key, serialize_author_pair(pair))


class RankUserFn(_WorkerDoFn):
    """(user_id, {"documents": [...], "examples": [...]}) -> (split, (example_id, tf.Example bytes)).

    The encoder is loaded once per worker in setup(); each user gets one call of
    rank_user_examples, so its BM25 index and embedding cache serve all its examples.
    """

    def __init__(self, config: FeaturesConfig):
        super().__init__(config.one_core_per_worker)
        self._config = config
        self._encoder = None

    def setup(self) -> None:
        super().setup()  # before the encoder brings in JAX
        self._encoder = load_encoder(self._config)
        self._users_done = self._examples_done = 0
        self._last_log = time.monotonic()

    def process(self, element):
        user_id, grouped = element
        examples = list(grouped["examples"])
        if examples:  # users without examples in the requested splits have nothing to rank
            yield from self._rank_user(grouped["documents"], examples)

    def _rank_user(self, documents, examples):
        documents, examples, counts = clean_user_inputs(documents, examples)
        for name, n in counts.items():
            _counter(name).inc(n)
        if not documents:
            _counter("users_without_documents").inc()
        _counter("users").inc()
        results = ranking.rank_user_examples(
            documents,
            examples,
            encoder=self._encoder,
            config=self._config.ranking,
            strategies=self._config.strategies,
        )
        for example, rankings in results:
            ranked_texts = {strategy: rankings[strategy].text for strategy in self._config.strategies}
            if all(not text for text in ranked_texts.values()):
                _counter("examples_with_empty_ranked_texts").inc()
            _counter(f"examples_written.{example['split']}").inc()
            yield example["split"], (example["example_id"], serialize_generation_example(example, ranked_texts))
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


def build_pipeline(pipeline: beam.Pipeline, *, examples_dir: str, output_dir: str, splits: Sequence[str], config: FeaturesConfig) -> None:
    """Adds the features stage for `splits` to `pipeline` (reads, ranks, writes)."""
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
        | "RankUsers" >> beam.ParDo(RankUserFn(config)).with_output_types(Any)
    )
    _write_sharded(ranked, kind="examples", output_dir=output_dir, config=config, label="Examples")
    pairs = (
        pipeline
        | "AuthorPairPaths" >> beam.Create([(author_pairs_path(examples_dir, s), s) for s in splits])
        | "ReadAuthorPairs" >> beam.ParDo(_ReadAuthorPairsFn(config.one_core_per_worker))
        | "SerializeAuthorPairs" >> beam.Map(_serialize_keyed_pair).with_output_types(Any)
    )
    _write_sharded(pairs, kind="author_pairs", output_dir=output_dir, config=config, label="AuthorPairs")


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


def input_fingerprint(examples_dir: str, split: str, config: FeaturesConfig, *, file_hashes: dict[str, tuple[str, int]] | None = None) -> str:
    """sha256 over the configuration and the bytes of every input the split depends on.

    `file_hashes` caches (sha256, size) per path across splits (documents are shared).
    """
    file_hashes = {} if file_hashes is None else file_hashes
    digest = hashlib.sha256(json.dumps(config.fingerprint_dict(), sort_keys=True).encode())
    for path in (documents_path(examples_dir), examples_path(examples_dir, split), author_pairs_path(examples_dir, split)):
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
    for split in tqdm(config.splits, desc="features: checking inputs and finished outputs", disable=not progress, unit="split"):
        fingerprints[split] = input_fingerprint(examples_dir, split, config, file_hashes=file_hashes)
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
    build_pipeline(pipeline, examples_dir=examples_dir, output_dir=output_dir, splits=todo, config=config)
    result = pipeline.run()
    _wait_with_progress(result, progress=progress)
    counters = _collect_counters(result)

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
