"""`tasks`: every task and mixture of a dataset, built from fixture TFRecords (conftest.py)."""
from __future__ import annotations

import collections
import itertools
import json
import re

import numpy as np
import pytest
import sacrebleu
import seqio
from rouge_score import rouge_scorer

import tasks
from personalize_t5x import feature_names as fn
from personalize_t5x.tasks import prompts
from task_fixtures import AUTHOR_PAIRS, SPLIT_SIZES, author_record, generation_record, write_shards
from personalize_t5x.tasks import registry  # noqa: E402

LENGTHS = {"inputs": 512, "targets": 128}


@pytest.fixture
def dataset(features_dir):
    return tasks.register_dataset("fixture", features_dir=features_dir)


def fixture_records(split):
    return {r[fn.EXAMPLE_ID]: r for r in (generation_record(split, i) for i in range(SPLIT_SIZES[split]))}


def test_names_follow_one_pattern(dataset):
    assert len(prompts.VARIANTS) == 14
    for variant in prompts.VARIANTS:
        assert dataset.tasks[variant] == f"personalize_fixture_{variant}"
        assert dataset.mixtures[variant] == f"personalize_fixture_{variant}_author_mix"
    assert dataset.author_task == "personalize_fixture_author_distinction"
    assert set(seqio.TaskRegistry.names()) == {*dataset.tasks.values(), dataset.author_task}
    assert set(seqio.MixtureRegistry.names()) == set(dataset.mixtures.values())
    for name in dataset.all_names:
        assert re.fullmatch(r"[\w\d\.\:_]+", name)
    assert tasks.mixture_name("Avocado-Email 2", "syn_ctx") == "personalize_avocado_email_2_syn_ctx_author_mix"


@pytest.mark.parametrize("split", ["train", "test"])  # one sharded split, one single-file split
def test_every_task_yields_well_formed_examples(dataset, split):
    expected = fixture_records(split)
    vocab = dataset.vocabulary
    for variant, name in dataset.tasks.items():
        layout = prompts.generation_layout(variant)
        task = seqio.get_mixture_or_task(name)
        examples = list(task.get_dataset(LENGTHS, split=split, shuffle=False).as_numpy_iterator())
        assert len(examples) == SPLIT_SIZES[split], name
        assert {e["example_id"].decode() for e in examples} == set(expected), name
        for e in examples:
            record = expected[e["example_id"].decode()]
            # The TensorFlow layout equals the Python one (tested against literals in test_prompts.py).
            assert e["inputs_pretokenized"].decode() == prompts.render_inputs(layout, record), name
            assert e["targets_pretokenized"].decode() == prompts.render_targets(layout, record), name
            assert e["immediate_context"].decode() == record[fn.IMMEDIATE_CONTEXT]
            for feature in ("inputs", "targets"):
                tokens = e[feature]
                assert tokens.dtype == np.int32 and tokens.ndim == 1 and 1 < len(tokens) <= LENGTHS[feature]
                assert tokens[-1] == vocab.eos_id and vocab.eos_id not in tokens[:-1].tolist()
                assert vocab.unk_id not in tokens.tolist()
            assert e["inputs"].tolist() == vocab.encode(e["inputs_pretokenized"].decode()) + [1]


def test_author_task_with_assert_dataset(dataset):
    vocab = dataset.vocabulary
    task = seqio.get_mixture_or_task(dataset.author_task)
    expected = []
    for i in range(AUTHOR_PAIRS["validation"]):
        record = author_record("validation", i)
        inputs = (f"Predict whether two passages are from the same author. passage 1: {record[fn.TEXT_A]} "
                  f"passage 2: {record[fn.TEXT_B]}")
        expected.append({
            "inputs_pretokenized": inputs, "inputs": vocab.encode(inputs) + [1],
            "targets_pretokenized": record[fn.LABEL], "targets": vocab.encode(record[fn.LABEL]) + [1],
        })
    assert {e["targets_pretokenized"] for e in expected} == {"true", "false"}
    seqio.test_utils.assert_dataset(task.get_dataset(LENGTHS, split="validation", shuffle=False), expected)


def test_every_mixture_yields_examples(dataset):
    for variant, name in dataset.mixtures.items():
        mixture = seqio.get_mixture_or_task(name)
        assert {t.name for t in mixture.tasks} == {dataset.tasks[variant], dataset.author_task}
        assert mixture.get_rate(mixture.tasks[0]) == mixture.get_rate(mixture.tasks[1]) == 1.0
        ds = mixture.get_dataset(LENGTHS, split="train", shuffle=False, num_epochs=None)
        for e in itertools.islice(ds.as_numpy_iterator(), 8):
            assert set(e) == {"inputs", "targets"}
            assert e["inputs"][-1] == e["targets"][-1] == 1


def test_mixture_samples_one_to_one(dataset):
    """2,000 draws; tolerance 0.05 on the author share (4.5 standard deviations of a fair coin)."""
    mixture = seqio.get_mixture_or_task(dataset.mixtures["syn_ctx"])
    ds = mixture.get_dataset(LENGTHS, split="train", seed=17, num_epochs=None, copy_pretokenized=True)
    draws = list(itertools.islice(ds.as_numpy_iterator(), 2000))
    author = sum(e["inputs_pretokenized"].startswith(prompts.AUTHOR_INSTRUCTION.encode()) for e in draws)
    generation = sum(e["inputs_pretokenized"].startswith(prompts.INSTRUCTION.encode()) for e in draws)
    assert author + generation == 2000
    assert abs(author / 2000 - 0.5) <= 0.05, author


def test_generation_metrics_through_seqio_evaluator(dataset):
    record = generation_record("validation", 1)
    raw = {"validation": {k: record[k] for k in prompts.generation_layout("syn_ctx").required_features
                          + registry.PASSTHROUGH_FEATURES}}
    prediction = record[fn.IMMEDIATE_CONTEXT] + " and a different ending"
    result = seqio.test_utils.test_postprocessing(dataset.tasks["syn_ctx"], raw, predict_output=[prediction])
    # The prediction is decoded by the vocabulary, which normalizes the newline to a space.
    decoded = prediction.replace("\n", " ")
    bleu = sacrebleu.corpus_bleu([decoded], [[record[fn.TARGET]]], smooth_method="exp", smooth_value=0.0,
                                 tokenize="intl", use_effective_order=False).score
    scores = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True).score(record[fn.TARGET], decoded)
    assert result["bleu"] == pytest.approx(bleu)
    for k in ("rouge1", "rouge2", "rougeL"):
        assert result[k] == pytest.approx(100 * scores[k].fmeasure)


def test_remove_doc_start_is_scored_on_the_whole_document(dataset):
    record = generation_record("validation", 2)
    raw = {"validation": {k: record[k] for k in prompts.generation_layout("remove_doc_start").required_features
                          + registry.PASSTHROUGH_FEATURES}}
    continuation = record[fn.TARGET][len(record[fn.IMMEDIATE_CONTEXT]):]
    assert continuation.startswith(" and the rest")  # SentencePiece decoding drops this space
    result = seqio.test_utils.test_postprocessing(dataset.tasks["remove_doc_start"], raw, predict_output=[continuation])
    # The exact continuation scores as the whole document.
    assert result == {"bleu": pytest.approx(100.0), "rouge1": pytest.approx(100.0),
                      "rouge2": pytest.approx(100.0), "rougeL": pytest.approx(100.0)}
    result = seqio.test_utils.test_postprocessing(dataset.tasks["remove_doc_start"], raw,
                                                  predict_output=["and another ending"])
    whole = record[fn.IMMEDIATE_CONTEXT].replace("\n", " ") + " and another ending"
    expected = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True).score(record[fn.TARGET], whole)["rouge1"]
    assert result["rouge1"] == pytest.approx(100 * expected.fmeasure)


def test_author_accuracy_through_seqio_evaluator(dataset):
    raw = {"validation": author_record("validation", 0)}  # label "true"
    assert seqio.test_utils.test_postprocessing(dataset.author_task, raw, predict_output=["true"]) == {"accuracy": 100.0}
    assert seqio.test_utils.test_postprocessing(dataset.author_task, raw, predict_output=["false"]) == {"accuracy": 0.0}


def test_preprocessing_single_with_injected_features(dataset):
    record = generation_record("train", 4)
    raw = {"train": {k: record[k] for k in prompts.generation_layout("user_id").required_features
                     + registry.PASSTHROUGH_FEATURES}}
    out = seqio.test_utils.test_preprocessing_single(dataset.tasks["user_id"], raw)
    assert out["inputs_pretokenized"].decode() == (
        "Finish the passage in the user voice. user id: user0 passage start: " + record[fn.IMMEDIATE_CONTEXT])


def test_summary_ranker_is_configurable(features_dir):
    registered = tasks.register_dataset("fixture", features_dir=features_dir, summary_ranker="rank_doc_bm25",
                                        variants=["sum_ctx", "rank_doc_dense"])
    assert set(registered.tasks) == {"sum_ctx", "rank_doc_dense"}
    e = next(seqio.get_mixture_or_task(registered.tasks["sum_ctx"]).get_dataset(
        LENGTHS, split="test", shuffle=False).as_numpy_iterator())
    assert b"past passages: rank_doc_bm25 entries of test" in e["inputs_pretokenized"]


def test_register_twice_needs_overwrite(features_dir):
    tasks.register_dataset("fixture", features_dir=features_dir, variants=["immed_ctx"])
    with pytest.raises(ValueError, match="already registered; pass overwrite=True"):
        tasks.register_dataset("fixture", features_dir=features_dir)
    again = tasks.register_dataset("fixture", features_dir=features_dir, variants=["syn_ctx"], overwrite=True)
    assert set(seqio.TaskRegistry.names()) == {again.tasks["syn_ctx"], again.author_task}
    tasks.unregister_dataset("fixture")
    assert not seqio.TaskRegistry.names() and not seqio.MixtureRegistry.names()


def test_vocabulary_options(features_dir, data_dir, tmp_path, monkeypatch):
    monkeypatch.delenv(tasks.VOCAB_ENV, raising=False)
    spm_path = str(data_dir / "fixture" / "vocab" / "spm.model")
    lone = tmp_path / "lone" / "features"
    lone.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no SentencePiece model at .*lone/vocab/spm.model"):
        tasks.register_dataset("lone", features_dir=lone)
    monkeypatch.setenv(tasks.VOCAB_ENV, spm_path)
    assert tasks.register_dataset("lone", features_dir=lone).vocabulary.vocab_size == \
        tasks.register_dataset("fixture", features_dir=features_dir).vocabulary.vocab_size
    custom = seqio.SentencePieceVocabulary(spm_path, extra_ids=3)
    registered = tasks.register_dataset("other", features_dir=lone, vocabulary=custom)
    assert seqio.get_mixture_or_task(registered.author_task).output_features["targets"].vocabulary is custom
    registered = tasks.register_dataset("third", features_dir=lone, vocabulary=spm_path, extra_ids=0)
    assert registered.vocabulary.vocab_size == custom.vocab_size - 3


def test_data_dir_environment_variable(data_dir, tmp_path, monkeypatch):
    monkeypatch.delenv(tasks.VOCAB_ENV, raising=False)
    monkeypatch.setenv(tasks.DATA_DIR_ENV, str(data_dir))
    [registered] = tasks.register_data_dir()
    assert registered.name == "fixture" and len(registered.all_names) == 29
    # A second dataset with a tasks.json; folders without features/ are ignored.
    other = tmp_path / "Other-Set"
    (other / "features").mkdir(parents=True)
    (tmp_path / "notes").mkdir()
    (other / "tasks.json").write_text(json.dumps({
        "vocabulary": str(data_dir / "fixture" / "vocab" / "spm.model"), "extra_ids": 10,
        "summary_ranker": "recent_doc", "variants": ["sum_ctx"]}))
    [registered] = tasks.register_data_dir(tmp_path)
    assert registered.name == "other_set" and registered.summary_ranker == "recent_doc"
    assert list(registered.tasks.values()) == ["personalize_other_set_sum_ctx"]
    (other / "tasks.json").write_text(json.dumps({"vocab": "x"}))
    with pytest.raises(ValueError, match="keys among"):
        tasks.register_data_dir(tmp_path, overwrite=True)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        tasks.register_data_dir(tmp_path / "absent")
    monkeypatch.delenv(tasks.DATA_DIR_ENV)
    assert tasks.register_data_dir() == []


def test_missing_feature_is_named(tmp_path, data_dir):
    features = tmp_path / "features"
    features.mkdir()
    record = generation_record("test", 0)
    del record["ranked_rank_doc_bm25"]
    write_shards(features / "test", [record])
    registered = tasks.register_dataset("partial", features_dir=features,
                                        vocabulary=str(data_dir / "fixture" / "vocab" / "spm.model"))
    # Variants that do not read the missing feature work...
    ds = seqio.get_mixture_or_task(registered.tasks["recent_doc"]).get_dataset(LENGTHS, split="test", shuffle=False)
    assert len(list(ds.as_numpy_iterator())) == 1
    # ...and the one that does names it.
    ds = seqio.get_mixture_or_task(registered.tasks["rank_doc_bm25"]).get_dataset(LENGTHS, split="test", shuffle=False)
    with pytest.raises(Exception, match="ranked_rank_doc_bm25"):
        list(ds.as_numpy_iterator())


def test_train_shards_are_all_read(dataset):
    task = seqio.get_mixture_or_task(dataset.tasks["immed_ctx"])
    assert len(task.source.list_shards("train")) == 2
    counts = collections.Counter(
        e["example_id"] for e in task.get_dataset(LENGTHS, split="train", shuffle=True, seed=3).as_numpy_iterator())
    assert len(counts) == SPLIT_SIZES["train"] and set(counts.values()) == {1}
