"""`eval-retrieval`: ROUGE of ranked text vs target, per split and strategy; table, JSON, PNG."""
from __future__ import annotations

import json
import pathlib

import pytest

from personalize_t5x import feature_names

from personalize_t5x.tasks import retrieval_eval
from personalize_t5x.errors import InputError


def _write_features(directory: pathlib.Path, split: str, records: list[dict[str, str]], shards: int = 2) -> None:
    """TFRecord shards with the features stage's field names (every name present)."""
    import tensorflow as tf

    directory.mkdir(parents=True, exist_ok=True)
    for shard in range(shards):
        with tf.io.TFRecordWriter(str(directory / f"{split}.tfrecord-{shard:05d}-of-{shards:05d}")) as writer:
            for record in records[shard::shards]:
                values = {name: record.get(name, "") for name in feature_names.GENERATION_TEXT_FEATURES}
                feature = {k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode()])) for k, v in values.items()}
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


TARGETS = [
    "The espresso grinder was running hot, so I cleaned the burrs and the crema came back.",
    "We hiked the ridge trail at dawn and the fog lifted right at the summit.",
    "Braising the short ribs in stock with garlic took four hours but was worth it.",
]


def _records(split: str) -> list[dict[str, str]]:
    out = []
    for i, target in enumerate(TARGETS):
        out.append({
            feature_names.EXAMPLE_ID: f"u{i}/d{i}", feature_names.SPLIT: split, feature_names.TARGET: target,
            # recent_doc: the target itself (perfect); rank_doc_bm25: half of its words; the
            # others: unrelated text or nothing at all.
            "ranked_recent_doc": target,
            "ranked_rank_doc_bm25": " ".join(target.split()[: len(target.split()) // 2]),
            "ranked_rank_doc_dense": "Completely unrelated words about tax forms and printers.",
            "ranked_rank_snippet": "",
            "ranked_rank_doc_by_snpt": "これは日本語です。",
        })
    return out


def test_scores_order_rankers_and_match_rouge_score(tmp_path):
    from rouge_score import rouge_scorer

    _write_features(tmp_path / "f", "validation", _records("validation"))
    config = retrieval_eval.RetrievalEvalConfig(splits=("validation",))
    results = retrieval_eval.evaluate_retrieval(features_dir=str(tmp_path / "f"), config=config, progress=False)
    rows = results["splits"]["validation"]
    assert set(rows) == set(feature_names.RANKING_STRATEGIES)
    assert rows["recent_doc"]["rouge1"] == pytest.approx(100.0)
    assert rows["recent_doc"]["rougeL"] == pytest.approx(100.0)
    assert 30 < rows["rank_doc_bm25"]["rouge1"] < 100
    assert rows["rank_doc_dense"]["rouge2"] == pytest.approx(0.0)
    assert rows["rank_snippet"]["empty_ranked_texts"] == 3 and rows["rank_snippet"]["rouge1"] == 0.0
    assert rows["rank_doc_by_snpt"]["rouge1"] == 0.0  # no scorable tokens: counted as 0
    assert all(r["examples"] == 3 for r in rows.values())

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    expected = sum(scorer.score(r[feature_names.TARGET], r["ranked_rank_doc_bm25"])["rouge2"].fmeasure for r in _records("validation")) / 3
    assert rows["rank_doc_bm25"]["rouge2"] == pytest.approx(100 * expected)


def test_outputs_table_json_and_png(tmp_path):
    _write_features(tmp_path / "f", "validation", _records("validation"))
    _write_features(tmp_path / "f", "test", _records("test")[:2], shards=1)
    (tmp_path / "f" / "features_report.json").write_text(json.dumps({"config": {"strategies": ["rank_doc_bm25", "recent_doc"]}}))
    config = retrieval_eval.RetrievalEvalConfig(splits=("validation", "test"))
    results = retrieval_eval.evaluate_retrieval(features_dir=str(tmp_path / "f"), config=config, progress=False)
    assert results["strategies"] == ["recent_doc", "rank_doc_bm25"]  # only what the stage computed
    assert results["splits"]["test"]["recent_doc"]["examples"] == 2
    paths = retrieval_eval.write_outputs(results, str(tmp_path / "o"))
    table = pathlib.Path(paths["retrieval_rouge.txt"]).read_text()
    assert "rank_doc_bm25" in table and "test" in table and "100.00" in table
    assert json.loads(pathlib.Path(paths["retrieval_rouge.json"]).read_text()) == json.loads(json.dumps(results))
    png = pathlib.Path(paths["retrieval_rouge.png"]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_max_examples_takes_the_first_records_in_shard_order(tmp_path):
    _write_features(tmp_path / "f", "test", _records("test"), shards=1)
    config = retrieval_eval.RetrievalEvalConfig(splits=("test",), strategies=("rank_doc_bm25",), max_examples=1)
    results = retrieval_eval.evaluate_retrieval(features_dir=str(tmp_path / "f"), config=config, progress=False)
    row = results["splits"]["test"]["rank_doc_bm25"]
    assert row["examples"] == 1
    from rouge_score import rouge_scorer

    first = _records("test")[0]
    expected = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True).score(first["target"], first["ranked_rank_doc_bm25"])["rouge1"].fmeasure
    assert row["rouge1"] == pytest.approx(100 * expected)


def test_missing_split_and_bad_config_are_errors(tmp_path):
    _write_features(tmp_path / "f", "test", _records("test"), shards=1)
    with pytest.raises(InputError, match="validation.tfrecord"):
        retrieval_eval.evaluate_retrieval(features_dir=str(tmp_path / "f"), config=retrieval_eval.RetrievalEvalConfig(splits=("validation",)), progress=False)
    with pytest.raises(ValueError, match="strategies"):
        retrieval_eval.RetrievalEvalConfig(strategies=("best",))
    with pytest.raises(ValueError, match="max_examples"):
        retrieval_eval.RetrievalEvalConfig(max_examples=0)


def test_command_line(tmp_path, capsys):
    from personalize_t5x import cli

    _write_features(tmp_path / "f", "validation", _records("validation"))
    _write_features(tmp_path / "f", "test", _records("test"))
    status = cli.main(["eval-retrieval", "--features-dir", str(tmp_path / "f"), "--output-dir", str(tmp_path / "o"), "--no-progress"])
    assert status == 0
    out = capsys.readouterr().out
    assert "ROUGE-1" in out and "recent_doc" in out
    assert (tmp_path / "o" / "retrieval_rouge.png").exists()
    status = cli.main(["eval-retrieval", "--features-dir", str(tmp_path / "none"), "--output-dir", str(tmp_path / "o"), "--no-progress"])
    assert status == 2


def test_per_example_scores_are_kept_and_are_the_metrics_modules_rouge(tmp_path):
    from personalize_t5x.tasks import metrics

    _write_features(tmp_path / "f", "test", _records("test"), shards=1)
    config = retrieval_eval.RetrievalEvalConfig(splits=("test",), strategies=("rank_doc_bm25", "rank_snippet"),
                                                keep_per_example=True)
    row = retrieval_eval.evaluate_retrieval(features_dir=str(tmp_path / "f"), config=config, progress=False)["splits"]["test"]
    per = row["rank_doc_bm25"]["per_example"]
    records = _records("test")
    assert per["example_id"] == [r[feature_names.EXAMPLE_ID] for r in records]
    # the project's one ROUGE (tasks.metrics), example by example
    expected = metrics.rouge_per_example([r["target"] for r in records], [r["ranked_rank_doc_bm25"] for r in records])
    for name in ("rouge1", "rouge2", "rougeL"):
        assert per[name] == pytest.approx(expected[name])
        assert row["rank_doc_bm25"][name] == pytest.approx(sum(expected[name]) / len(records))
    assert row["rank_snippet"]["per_example"]["rougeL"] == [0.0, 0.0, 0.0]  # empty ranked texts
    without = retrieval_eval.evaluate_retrieval(features_dir=str(tmp_path / "f"), progress=False,
                                                config=retrieval_eval.RetrievalEvalConfig(splits=("test",)))
    assert "per_example" not in without["splits"]["test"]["rank_doc_bm25"]
