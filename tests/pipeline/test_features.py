"""The features stage (Beam pipeline): every feature written, same text as ranking
directly, no leakage, determinism, resumability, bad input counted."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import pathlib
import sys

import numpy as np
import pytest

from personalize_t5x import feature_names

from personalize_t5x.pipeline import examples as examples_lib
from personalize_t5x.pipeline import features
from personalize_t5x.errors import InputError
from personalize_t5x.pipeline.corpus.records import Document, example_from_json, join_title_and_text
from personalize_t5x.pipeline.retrieval import encoders, ranking

DAY = 86_400
T0 = 1_500_000_000


class HashingEncoder:
    """A deterministic bag-of-words encoder (hashed token counts, L2-normalized).

    Cheap and dependency-free, so most tests run every dense strategy in milliseconds;
    words shared between texts still raise their cosine, so rankings are meaningful.
    """

    fingerprint = "test-hashing-encoder-64"
    dim = 64

    def encode(self, texts, *, batch_size=32, progress=False):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for token in text.lower().split():
                bucket = int.from_bytes(hashlib.md5(token.encode()).digest()[:4], "little") % self.dim
                out[row, bucket] += 1.0
            out[row, row % self.dim] += 1e-3  # never a zero vector, even for empty text
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def make_hashing_encoder():
    return HashingEncoder()


make_hashing_encoder.fingerprint = HashingEncoder.fingerprint

# Worker processes of the multi-process runner cannot import this test module; pickle
# its functions and classes by value instead of by reference.
from apache_beam.internal.cloudpickle import cloudpickle  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])

TOPICS = ["espresso grinder burr crema", "trail ridge boots summit", "skillet garlic braise stock",
          "compiler unit tests refactor", "aperture lens shutter tripod", "chain saddle cadence gravel"]


def _doc(user: str, index: int, *, text: str | None = None) -> Document:
    topic = TOPICS[(index + len(user)) % len(TOPICS)]
    marker = f"marker{user}x{index}"
    body = text if text is not None else (
        f"I wrote about the {topic} again, {marker}. The {topic.split()[0]} mattered most this week. "
        f"Next time the {topic.split()[1]} gets more attention. Some filler words for length here.")
    return Document(user_id=user, doc_id=f"{user}-d{index}", timestamp=T0 + index * DAY, title=f"Post {index} of {user}", text=body)


def _example(doc: Document, profile: list[Document], split: str) -> dict:
    target = join_title_and_text(doc.title, doc.text)
    return {
        "example_id": f"{doc.user_id}/{doc.doc_id}", "user_id": doc.user_id, "split": split,
        "doc_id": doc.doc_id, "timestamp": doc.timestamp, "title": doc.title,
        "immediate_context": target[:150], "target": target, "profile": [d.doc_id for d in profile],
    }


def _write_jsonl(path: pathlib.Path, records) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for record in records:
            f.write((record if isinstance(record, str) else json.dumps(record, ensure_ascii=False)) + "\n")


def write_examples_dir(root: pathlib.Path, *, extra_documents=(), extra_examples=None, raw_example_lines=None) -> dict:
    """A small examples folder per docs/contracts.md: 5 users, 6 documents each.

    Users a..c are train, d validation, e test. Every document carries a unique marker
    word, so leakage of a later document into a ranked text is visible.
    """
    root.mkdir(parents=True, exist_ok=True)
    splits = {"ua": "train", "ub": "train", "uc": "train", "ud": "validation", "ue": "test"}
    documents: list[Document] = []
    examples = {s: [] for s in feature_names.SPLITS}
    for user, split in splits.items():
        docs = [_doc(user, i) for i in range(6)]
        documents.extend(docs)
        for i in range(2, 6):
            examples[split].append(_example(docs[i], docs[:i], split))
    documents.extend(extra_documents)
    for split, records in (extra_examples or {}).items():
        examples[split].extend(records)
    _write_jsonl(root / "documents.jsonl.gz", [d.to_json() for d in sorted(documents, key=lambda d: (d.user_id, d.timestamp, d.doc_id))])
    for split in feature_names.SPLITS:
        lines = [*examples[split], *((raw_example_lines or {}).get(split, []))]
        _write_jsonl(root / f"{split}.jsonl.gz", lines)
        pairs = [{"text_a": e["target"], "text_b": f"other text {k}", "label": "true" if k % 2 else "false", "user_id": e["user_id"]}
                 for k, e in enumerate(examples[split])]
        _write_jsonl(root / f"author_pairs_{split}.jsonl.gz", pairs)
        examples_lib.write_author_pair_records(root, split, pairs)
    examples_lib.write_finished_marker(root, {})  # the features command reads only finished folders
    return {"documents": documents, "examples": examples}


def fast_config(**overrides) -> features.FeaturesConfig:
    values = dict(encoder_factory=make_hashing_encoder, direct_running_mode="in_memory", direct_num_workers=1, num_shards=2)
    values.update(overrides)
    return features.FeaturesConfig(**values)


def read_records(path: str) -> list[bytes]:
    import tensorflow as tf

    return [r.numpy() for r in tf.data.TFRecordDataset(path)]


def read_all(features_dir: pathlib.Path, split: str) -> dict[str, dict[str, str]]:
    return {r[feature_names.EXAMPLE_ID]: r for r in features.read_generation_examples(str(features_dir), split)}


def read_pairs(features_dir: pathlib.Path, split: str) -> list[dict[str, str]]:
    import tensorflow as tf

    spec = {n: tf.io.FixedLenFeature([], tf.string) for n in feature_names.AUTHOR_PAIR_FEATURES}
    files = sorted(tf.io.gfile.glob(feature_names.author_pairs_file_pattern(str(features_dir), split)))
    out = []
    for path in files:
        for record in tf.data.TFRecordDataset(path):
            out.append({k: v.numpy().decode() for k, v in tf.io.parse_single_example(record, spec).items()})
    return out


def shard_bytes(features_dir: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(features_dir.glob("*.tfrecord-*"))}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One pipeline run over the small examples folder, shared by the read-only tests."""
    root = tmp_path_factory.mktemp("features")
    data = write_examples_dir(root / "examples")
    result = features.run_features(examples_dir=str(root / "examples"), output_dir=str(root / "features"), config=fast_config(), progress=False)
    return root, data, result


def test_every_feature_written_and_equal_to_direct_ranking(built):
    root, data, result = built
    assert result.computed_splits == list(feature_names.SPLITS)
    docs_by_user: dict[str, list[Document]] = {}
    for d in data["documents"]:
        docs_by_user.setdefault(d.user_id, []).append(d)
    encoder = HashingEncoder()
    idf = features.read_idf_artifact(str(root / "features" / features.IDF_TABLE_NAME))
    resources = features.load_summary_resources(fast_config(), idf=idf, with_weak_labels=True)
    for split in feature_names.SPLITS:
        names = sorted(p.name for p in (root / "features").glob(f"{split}.tfrecord-*"))
        assert names == [f"{split}.tfrecord-00000-of-00002", f"{split}.tfrecord-00001-of-00002"]
        written = read_all(root / "features", split)
        assert sorted(written) == sorted(e["example_id"] for e in data["examples"][split])
        for record in written.values():
            assert set(record) == set(feature_names.GENERATION_TEXT_FEATURES)
            # The context-dependent features are the auxiliary models' predictions, joined later.
            assert record[feature_names.SUMMARY_CTX] == "" and record[feature_names.KEYWORDS_CTX] == ""
            assert record[feature_names.SUMMARY_CTX_IND] != "" and record[feature_names.KEYWORDS_CTX_IND] != ""
            is_train = split == "train"
            for name in (feature_names.SUMMARY_CTX_WEAK_LABEL, feature_names.AUX_HALF):
                assert (record[name] != "") == is_train, (name, split)
            # Here each document has its own topic: a target may share no informative word
            # with its ranked entries (the Stack Exchange test measures the real rate).
            assert is_train or record[feature_names.KEYWORDS_CTX_WEAK_LABEL] == ""
        by_user: dict[str, list[dict]] = {}
        for e in data["examples"][split]:
            by_user.setdefault(e["user_id"], []).append(e)
        for user, examples in by_user.items():
            records = [example_from_json(e) for e in examples]
            direct = ranking.rank_user_examples(docs_by_user[user], records, encoder=encoder, config=ranking.RankingConfig(), strategies=feature_names.RANKING_STRATEGIES)
            assert len(direct) == len(examples)
            fields = features.summary_and_keyword_fields(docs_by_user[user], direct, cache=encoders.EmbeddingCache(encoder),
                                                         resources=resources, config=fast_config())
            for (example, rankings), summary_fields in zip(direct, fields):
                for name, value in summary_fields.items():
                    assert written[example.example_id][name] == value, name
                example = example.to_json()
                record = written[example["example_id"]]
                assert record[feature_names.TARGET] == example["target"]
                assert record[feature_names.IMMEDIATE_CONTEXT] == example["immediate_context"]
                assert record[feature_names.SPLIT] == split
                for strategy in feature_names.RANKING_STRATEGIES:
                    text = record[feature_names.ranked_text_feature(strategy)]
                    assert text == rankings[strategy].text
                    assert 0 < len(text) <= 2500
    for split in feature_names.SPLITS:
        pairs = read_pairs(root / "features", split)
        assert len(pairs) == len(data["examples"][split])
        assert {p["label"] for p in pairs} == {"true", "false"}
    manifest = json.loads((root / "features" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["examples"] == 12
    report = json.loads((root / "features" / "features_report.json").read_text())
    assert report["counters"]["examples_written.train"] == 12
    assert report["counters"]["users"] == 5


def test_ranked_texts_only_hold_strictly_earlier_documents(built):
    root, data, _ = built
    markers = {d.doc_id: f"marker{d.user_id}x{d.doc_id.rsplit('d', 1)[1]}" for d in data["documents"]}
    for split in feature_names.SPLITS:
        for e in data["examples"][split]:
            record = read_all(root / "features", split)[e["example_id"]]
            allowed = set(e["profile"])
            for strategy in feature_names.RANKING_STRATEGIES:
                text = record[feature_names.ranked_text_feature(strategy)]
                for doc_id, marker in markers.items():
                    if marker in text:
                        assert doc_id in allowed, (strategy, e["example_id"], doc_id)
                assert markers[e["doc_id"]] not in text


def test_a_second_run_with_other_bundling_gives_byte_identical_shards(built, tmp_path):
    root, _, _ = built
    first = shard_bytes(root / "features")
    # Two in-process workers split every stage's input differently from one worker.
    config = fast_config(direct_running_mode="in_memory", direct_num_workers=2)
    features.run_features(examples_dir=str(root / "examples"), output_dir=str(tmp_path / "f2"), config=config, progress=False)
    second = shard_bytes(tmp_path / "f2")
    assert first.keys() == second.keys() and len(first) == 9  # 3 x (2 example shards + 1 author-pair shard)
    assert first == second


@pytest.mark.slow  # two worker processes each import Beam, TensorFlow and JAX: ~30-60 s here
def test_multi_process_runner_gives_byte_identical_shards(built, tmp_path):
    root, _, _ = built
    first = shard_bytes(root / "features")
    # Workers pinned to a core each (the one-core-per-worker form); the unpinned default
    # runs in the demo and the end-to-end test.
    config = fast_config(direct_running_mode="multi_processing", direct_num_workers=2, one_core_per_worker=True)
    features.run_features(examples_dir=str(root / "examples"), output_dir=str(tmp_path / "f2"), config=config, progress=False)
    second = shard_bytes(tmp_path / "f2")
    assert first.keys() == second.keys() and len(first) == 9  # 3 x (2 example shards + 1 author-pair shard)
    assert first == second


def test_rerun_skips_finished_and_recomputes_changed_or_half_written(tmp_path):
    data = write_examples_dir(tmp_path / "examples")
    out = tmp_path / "features"
    config = fast_config(strategies=("recent_doc", "rank_doc_bm25"), num_shards=1)
    features.run_features(examples_dir=str(tmp_path / "examples"), output_dir=str(out), config=config, progress=False)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("*.tfrecord-*")}

    again = features.run_features(examples_dir=str(tmp_path / "examples"), output_dir=str(out), config=config, progress=False)
    assert again.computed_splits == [] and again.skipped_splits == list(feature_names.SPLITS)
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("*.tfrecord-*")} == before

    # A truncated shard (a copy interrupted, a disk filling up) is not finished.
    victim = out / "validation.tfrecord-00000-of-00001"
    victim.write_bytes(victim.read_bytes()[:10])
    rerun = features.run_features(examples_dir=str(tmp_path / "examples"), output_dir=str(out), config=config, progress=False)
    assert rerun.computed_splits == ["validation"]
    assert victim.read_bytes() == before[victim.name][1]

    # A killed run: shards of another shard count, a temporary, no manifest at all.
    (out / "manifest.json").unlink()
    (out / "train.tfrecord-00003-of-00007").write_bytes(b"partial")
    (out / ".tmp-dead-train.tfrecord-00000-of-00001").write_bytes(b"partial")
    recovered = features.run_features(examples_dir=str(tmp_path / "examples"), output_dir=str(out), config=config, progress=False)
    assert recovered.computed_splits == list(feature_names.SPLITS)
    assert {p.name: p.read_bytes() for p in out.glob("*.tfrecord-*")} == {k: v[1] for k, v in before.items()}
    assert not list(out.glob(".tmp-*"))

    # Changed input or configuration: recomputed.
    config_more = fast_config(strategies=("recent_doc",), num_shards=1)
    changed = features.run_features(examples_dir=str(tmp_path / "examples"), output_dir=str(out), config=config_more, progress=False)
    assert changed.computed_splits == list(feature_names.SPLITS)
    record = next(iter(read_all(out, "train").values()))
    assert record["ranked_rank_doc_bm25"] == "" and record["ranked_recent_doc"] != ""
    assert len(read_all(out, "test")) == len(data["examples"]["test"])


def test_bad_input_keeps_output_well_formed_and_is_counted(tmp_path):
    huge = _doc("uf", 0, text=("word " * 200_000) + ".")  # 1 MB
    no_punct = _doc("uf", 1, text="no sentence punctuation at all just words " * 30)
    cyrillic = _doc("uf", 2, text="Это текст на русском языке. Он написан кириллицей! " * 10)
    japanese = _doc("uf", 3, text="これは日本語の文章です。句読点もあります。" * 20)
    empty = Document(user_id="uf", doc_id="uf-d4", timestamp=T0 + 4 * DAY, title="", text="")
    target = _doc("uf", 5)
    docs_f = [huge, no_punct, cyrillic, japanese, empty, target]
    lonely = _doc("ug", 0)
    extra_examples = {
        # (the examples stage never lists a dropped empty document in a profile)
        "train": [_example(target, docs_f[:4], "train")],
        # A hand-made example whose profile is empty.
        "test": [_example(lonely, [], "test")],
    }
    bad_lines = {"train": ['{"example_id": 3}', "not json"]}
    write_examples_dir(tmp_path / "examples", extra_documents=[*docs_f, lonely], extra_examples=extra_examples, raw_example_lines=bad_lines)
    # The empty document must reach the file as a record with empty text.
    out = tmp_path / "features"
    result = features.run_features(examples_dir=str(tmp_path / "examples"), output_dir=str(out), config=fast_config(num_shards=1), progress=False)
    counters = result.counters
    assert counters["documents_empty_dropped"] == 1
    assert counters["documents_over_100k_chars"] == 1
    assert counters["documents_without_sentence_punctuation"] == 1
    assert counters["documents_mostly_non_latin"] == 2
    assert counters["examples_bad_skipped"] == 2
    train = read_all(out, "train")
    record = train["uf/uf-d5"]
    for strategy in feature_names.RANKING_STRATEGIES:
        text = record[feature_names.ranked_text_feature(strategy)]
        assert 0 < len(text) <= 2500
    lonely_record = read_all(out, "test")["ug/ug-d0"]
    assert set(lonely_record) == set(feature_names.GENERATION_TEXT_FEATURES)
    assert all(lonely_record[feature_names.ranked_text_feature(s)] == "" for s in feature_names.RANKING_STRATEGIES)
    report = json.loads((out / "features_report.json").read_text())
    assert report["stage_report"]["bad_skipped"]["examples_bad_skipped"] == 2
    assert report["stage_report"]["dropped"]["documents_empty_dropped"] == 1


class CountingEncoderFactory:
    """Builds a HashingEncoder and appends a line to a file per load. A file, because
    the pipeline runs a pickled copy of this object, whose in-memory state is not ours."""

    fingerprint = HashingEncoder.fingerprint

    def __init__(self, log_path: pathlib.Path):
        self.log_path = str(log_path)

    def __call__(self):
        with open(self.log_path, "a") as f:
            f.write("load\n")
        return HashingEncoder()

    def loads(self) -> int:
        return len(pathlib.Path(self.log_path).read_text().splitlines()) if os.path.exists(self.log_path) else 0


def test_encoder_is_loaded_once_per_worker_not_per_user(tmp_path):
    write_examples_dir(tmp_path / "examples")
    factory = CountingEncoderFactory(tmp_path / "dense.log")
    config = fast_config(encoder_factory=factory, strategies=("rank_doc_dense",), num_shards=1)
    result = features.run_features(examples_dir=str(tmp_path / "examples"), output_dir=str(tmp_path / "f"), config=config, progress=False)
    assert result.counters["users"] == 5
    assert factory.loads() == 1
    sparse_factory = CountingEncoderFactory(tmp_path / "sparse.log")
    sparse = fast_config(encoder_factory=sparse_factory, strategies=("recent_doc", "rank_doc_bm25"), num_shards=1,
                         summaries_and_keywords=False)
    features.run_features(examples_dir=str(tmp_path / "examples"), output_dir=str(tmp_path / "g"), config=sparse, progress=False)
    assert sparse_factory.loads() == 0  # no dense strategy: no encoder at all


def test_missing_input_file_is_a_located_error(tmp_path):
    write_examples_dir(tmp_path / "examples")
    (tmp_path / "examples" / "validation.jsonl.gz").unlink()
    with pytest.raises(InputError, match="validation.jsonl.gz"):
        features.run_features(examples_dir=str(tmp_path / "examples"), output_dir=str(tmp_path / "f"), config=fast_config(), progress=False)


def test_example_lines_are_trusted_records_and_errors_name_file_line_and_field():
    record = {"example_id": "u/d", "user_id": "u", "split": "train", "doc_id": "d", "timestamp": 1, "title": "",
              "immediate_context": "c", "target": "t", "profile": ["d0"]}
    example = features.parse_example_line("x.jsonl.gz", 7, json.dumps(record).encode())
    assert example.profile == ("d0",) and example.to_json() == record
    with pytest.raises(InputError, match=r"x.jsonl.gz:7: field 'profile'"):
        features.parse_example_line("x.jsonl.gz", 7, json.dumps({k: v for k, v in record.items() if k != "profile"}).encode())
    with pytest.raises(InputError, match=r"x.jsonl.gz:2: field '<line>'"):
        features.parse_example_line("x.jsonl.gz", 2, b"not json")


def test_config_validation_and_runner_options():
    with pytest.raises(ValueError, match="strategies"):
        features.FeaturesConfig(strategies=("rank_everything",))
    with pytest.raises(ValueError, match="num_shards"):
        features.FeaturesConfig(num_shards=0)
    with pytest.raises(ValueError, match="direct_running_mode"):
        features.FeaturesConfig(direct_running_mode="threads")
    with pytest.raises(ValueError, match="one_core_per_worker"):
        features.FeaturesConfig(direct_running_mode="in_memory", one_core_per_worker=True)
    assert features.FeaturesConfig(strategies=("rank_snippet", "recent_doc")).strategies == ("recent_doc", "rank_snippet")
    assert not features.FeaturesConfig(strategies=("recent_doc",), summaries_and_keywords=False).needs_encoder
    assert features.FeaturesConfig(strategies=("recent_doc",)).needs_encoder  # the summaries embed snippets

    local = features.pipeline_options(features.FeaturesConfig()).get_all_options()
    assert (local["runner"], local["direct_num_workers"], local["direct_running_mode"]) == ("DirectRunner", 2, "multi_processing")
    flink = features.pipeline_options(features.FeaturesConfig(pipeline_args=("--runner=FlinkRunner", "--flink_master=host:8081", "--parallelism=4")))
    flink_options = flink.get_all_options()
    assert flink_options["runner"] == "FlinkRunner"
    assert flink_options["flink_master"] == "host:8081" and flink_options["parallelism"] == 4


def test_shard_assignment_is_stable():
    assert [features.shard_of(f"u/d{i}", 4) for i in range(8)] == [features.shard_of(f"u/d{i}", 4) for i in range(8)]
    assert len({features.shard_of(f"u/d{i}", 4) for i in range(200)}) == 4
    assert features.shards_for_count(12_001, features.FeaturesConfig(examples_per_shard=4000)) == 4


def test_command_line_runs_the_stage(tmp_path, capsys):
    from personalize_t5x import cli

    write_examples_dir(tmp_path / "examples")
    out = tmp_path / "features"
    status = cli.main(["features", "--examples-dir", str(tmp_path / "examples"), "--output-dir", str(out),
                       "--strategies", "recent_doc", "rank_doc_bm25", "--num-shards", "1", "--no-progress",
                       "--direct_running_mode=in_memory", "--direct_num_workers=1"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "train" in printed and "12" in printed
    assert len(read_all(out, "train")) == 12
    status = cli.main(["features", "--examples-dir", str(tmp_path / "nowhere"), "--output-dir", str(out), "--no-progress"])
    assert status == 2
    assert "nowhere" in capsys.readouterr().err


def test_real_minilm_encoder_matches_direct_ranking(tmp_path):
    from personalize_t5x.pipeline.retrieval import encoders

    path = encoders.default_encoder_path()
    data = write_examples_dir(tmp_path / "examples")
    config = features.FeaturesConfig(strategies=("rank_doc_dense", "rank_doc_by_snpt"), splits=("validation",), num_shards=1,
                                     direct_running_mode="in_memory", direct_num_workers=1)
    features.run_features(examples_dir=str(tmp_path / "examples"), output_dir=str(tmp_path / "f"), config=config, progress=False)
    written = read_all(tmp_path / "f", "validation")
    encoder = encoders.SentenceEncoder.from_pretrained(path)
    docs = [d for d in data["documents"] if d.user_id == "ud"]
    direct = ranking.rank_user_examples(docs, [example_from_json(e) for e in data["examples"]["validation"]], encoder=encoder,
                                        config=ranking.RankingConfig(), strategies=config.strategies)
    for example, rankings in direct:
        for strategy in config.strategies:
            assert written[example.example_id][feature_names.ranked_text_feature(strategy)] == rankings[strategy].text


def test_missing_wordnet_stops_the_stage_with_how_to_get_it(tmp_path):
    write_examples_dir(tmp_path / "examples")
    config = fast_config(wordnet_dir=str(tmp_path / "no-wordnet"))
    with pytest.raises(InputError, match="apt-get install wordnet-base"):
        features.run_features(examples_dir=str(tmp_path / "examples"), output_dir=str(tmp_path / "f"), config=config, progress=False)
    assert not list((tmp_path / "f").glob("*.tfrecord-*"))


def test_idf_table_is_written_once_and_reused_while_its_inputs_are_unchanged(tmp_path):
    write_examples_dir(tmp_path / "examples")
    out = tmp_path / "f"
    first = features.run_features(examples_dir=str(tmp_path / "examples"), output_dir=str(out), config=fast_config(), progress=False)
    idf_path = out / features.IDF_TABLE_NAME
    table = json.loads(idf_path.read_text())
    assert table["n_documents"] == 18  # the 3 training users' 6 documents; nothing of ud, ue
    assert not any(f"markerud" in w or f"markerue" in w for w in table["document_frequency"])
    assert first.manifest["idf_table"]["sha256"] == hashlib.sha256(idf_path.read_bytes()).hexdigest()
    mtime = idf_path.stat().st_mtime_ns
    again = features.run_features(examples_dir=str(tmp_path / "examples"), output_dir=str(out), config=fast_config(),
                                  progress=False, force=True)
    assert idf_path.stat().st_mtime_ns == mtime and again.manifest["idf_table"] == first.manifest["idf_table"]
