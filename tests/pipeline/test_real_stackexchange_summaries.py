"""Stages 3 and 4 on the real Stack Exchange beer dump (the paper's data filters), with
WordNet 3.0 and the packaged GloVe vectors: the fields the paper's rows read are filled, and
nothing of validation or test reaches the IDF table, a weak label or an auxiliary task.

The dense vectors come from a hashed bag-of-words encoder: MiniLM over this corpus (~10k
texts) takes minutes on a shared CPU, and whether a field is filled does not depend on
which encoder ranks the snippets (tests/pipeline/test_features.py runs the real MiniLM)."""
from __future__ import annotations

import collections
import hashlib
import json
import sys

import numpy as np

import pytest

from shared_paths import require_shared
from personalize_t5x import feature_names as fn
from personalize_t5x.errors import StageReport
from personalize_t5x.pipeline import examples as ex
from personalize_t5x.pipeline import features, keywords
from personalize_t5x.pipeline.corpus import readers
from personalize_t5x.pipeline.corpus.records import join_title_and_text
from personalize_t5x.tasks import prompts

pytestmark = pytest.mark.integration


class HashingEncoder:
    """Hashed token counts, L2-normalized: deterministic, instant, shared words raise cosines."""

    fingerprint = "test-hashing-encoder-256"
    dim = 256

    def encode(self, texts, *, batch_size=32, progress=False):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for token in text.lower().split():
                out[row, int.from_bytes(hashlib.md5(token.encode()).digest()[:4], "little") % self.dim] += 1.0
            out[row, row % self.dim] += 1e-3
        return out / np.linalg.norm(out, axis=1, keepdims=True)


from apache_beam.internal.cloudpickle import cloudpickle  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def beer(tmp_path_factory):
    path = require_shared("data/stackexchange/beer/Posts.xml")
    documents = list(readers.read_corpus("stackexchange", [str(path)], report=StageReport()))
    result = ex.build_examples(documents, config=ex.ExampleConfig())  # the paper's filters
    root = tmp_path_factory.mktemp("beer")
    ex.write_examples(result, root / "examples")
    config = features.FeaturesConfig(num_shards=1, direct_running_mode="in_memory", direct_num_workers=1,
                                     encoder_factory=HashingEncoder)
    run = features.run_features(examples_dir=str(root / "examples"), output_dir=str(root / "features"), config=config, progress=False)
    records = {s: list(features.read_generation_examples(str(root / "features"), s)) for s in fn.SPLITS}
    return root, result, run, records


# The fields stage 1 fills for every split, and the weak labels (training split only).
FILLED_BY_FEATURES = (fn.SUMMARY_CTX_IND, fn.KEYWORDS_CTX_IND)


def test_every_row_reading_the_ctx_ind_fields_has_them_in_95_percent_of_examples(beer):
    _, result, _, records = beer
    assert all(len(records[s]) == len(result.examples[s]) > 0 for s in fn.SPLITS)
    rows = {v: [f for f in prompts.generation_layout(v).required_features if f in FILLED_BY_FEATURES] for v in prompts.VARIANTS}
    rows = {v: names for v, names in rows.items() if names}
    assert set(rows) == {"sum_ctx_ind", "syn_ctx_ind"}
    for variant, names in rows.items():
        for split in fn.SPLITS:
            for name in names:
                filled = sum(1 for r in records[split] if r[name].strip()) / len(records[split])
                assert filled >= 0.95, (variant, split, name, filled)


def test_weak_labels_are_filled_for_95_percent_of_training_examples_and_absent_elsewhere(beer):
    _, _, _, records = beer
    train = records["train"]
    for name in (fn.SUMMARY_CTX_WEAK_LABEL, fn.KEYWORDS_CTX_WEAK_LABEL):
        filled = sum(1 for r in train if r[name].strip()) / len(train)
        assert filled >= 0.95, (name, filled)
    for split in ("validation", "test"):
        for r in records[split]:
            assert r[fn.SUMMARY_CTX_WEAK_LABEL] == r[fn.KEYWORDS_CTX_WEAK_LABEL] == r[fn.AUX_HALF] == ""
            assert r[fn.SUMMARY_CTX] == r[fn.KEYWORDS_CTX] == ""
    halves = collections.Counter(r[fn.AUX_HALF] for r in train)
    assert set(halves) == set(fn.AUX_HALVES)
    by_user = collections.defaultdict(set)
    for r in train:
        by_user[r[fn.USER_ID]].add(r[fn.AUX_HALF])
    assert all(len(h) == 1 for h in by_user.values())  # a user is in one half


def test_idf_table_reads_only_training_documents(beer):
    root, result, run, _ = beer
    table = json.loads((root / "features" / features.IDF_TABLE_NAME).read_text())
    manifest = run.manifest
    assert manifest["idf_table"]["file"] == features.IDF_TABLE_NAME
    assert manifest["idf_table"]["sha256"] == features._sha256_of(str(root / "features" / features.IDF_TABLE_NAME))[0]
    by_id = {d.doc_id: d for d in result.documents}
    train_ids = {i for e in result.examples["train"] for i in (e["doc_id"], *e["profile"])}
    other_ids = {i for s in ("validation", "test") for e in result.examples[s] for i in (e["doc_id"], *e["profile"])}
    assert not train_ids & other_ids  # split by user
    expected = collections.Counter()
    for doc_id in train_ids:
        d = by_id[doc_id]
        expected.update(set(keywords.keyword_words(join_title_and_text(d.title, d.text))))
    assert table["n_documents"] == len(train_ids)
    assert table["document_frequency"] == dict(expected)
    only_elsewhere = set()
    for doc_id in other_ids:
        d = by_id[doc_id]
        only_elsewhere.update(keywords.keyword_words(join_title_and_text(d.title, d.text)))
    only_elsewhere -= set(expected)
    assert only_elsewhere and not only_elsewhere & set(table["document_frequency"])


def test_weak_labels_come_from_the_examples_own_ranked_entries(beer):
    _, result, _, records = beer
    by_id = {d.doc_id: d for d in result.documents}
    profile_of = {e["example_id"]: e["profile"] for e in result.examples["train"]}
    for r in records["train"]:
        ranked = r[fn.ranked_text_feature("rank_doc_by_snpt")]
        label = r[fn.KEYWORDS_CTX_WEAK_LABEL]
        entry_words = set(keywords.keyword_words(ranked))
        assert all(w in entry_words for w in label.split(", ") if w)
        # The summary label is made of snippets of the example's own earlier documents
        # (its ranked entries): every token of it is in them.
        profile_tokens = {t for doc_id in profile_of[r[fn.EXAMPLE_ID]]
                          for t in join_title_and_text(by_id[doc_id].title, by_id[doc_id].text).split()}
        assert set(r[fn.SUMMARY_CTX_WEAK_LABEL].split()) <= profile_tokens


SPIECE = "tests/fixtures/hf_t5_tiny/gtr/spiece.model"


def _aux_example_ids(task, split):
    dataset = task.get_dataset(sequence_length={"inputs": 64, "targets": 32}, split=split, shuffle=False)
    return [ex[fn.EXAMPLE_ID].decode() for ex in dataset.as_numpy_iterator()]


def test_auxiliary_tasks_train_on_one_half_of_the_training_users_only(beer):
    import seqio

    from personalize_t5x.tasks import registry

    root, result, _, records = beer
    vocabulary = seqio.SentencePieceVocabulary(str(registry.os.path.join(registry.os.path.dirname(__file__), "..", "..", SPIECE)))
    names = registry.register_aux_tasks("beer_leak_test", features_dir=str(root / "features"), vocabulary=vocabulary, overwrite=True)
    try:
        half_of = {r[fn.EXAMPLE_ID]: r[fn.AUX_HALF] for r in records["train"]}
        user_of = {r[fn.EXAMPLE_ID]: r[fn.USER_ID] for r in records["train"]}
        other_ids = {r[fn.EXAMPLE_ID] for s in ("validation", "test") for r in records[s]}
        for model, name in names.items():
            task = seqio.get_mixture_or_task(name)
            trained = _aux_example_ids(task, "train")
            held_out = _aux_example_ids(task, "validation")
            assert trained and held_out
            assert {half_of[i] for i in trained} == {"aux"} and {half_of[i] for i in held_out} == {"generation"}
            assert not {user_of[i] for i in trained} & {user_of[i] for i in held_out}
            assert not set(trained) & other_ids and set(trained) | set(held_out) == set(half_of)
            for split in fn.SPLITS:
                assert sorted(_aux_example_ids(task, f"infer_{split}")) == sorted(r[fn.EXAMPLE_ID] for r in records[split])
            # The model's targets are the weak labels; its inputs never hold the target.
            example = next(task.get_dataset(sequence_length=None, split="train", shuffle=False).as_numpy_iterator())
            instruction = prompts.AUX_SUM_CTX_INSTRUCTION if model == "sum_ctx" else prompts.AUX_SYN_CTX_INSTRUCTION
            # (this tiny vocabulary has no capitals: compare from the second character)
            assert instruction[1:] + ". passage start" in vocabulary.decode(example["inputs"].tolist())
    finally:
        registry.unregister_aux_tasks("beer_leak_test")


def test_joined_predictions_fill_every_row_of_the_paper(beer, tmp_path):
    import shutil

    from personalize_t5x.pipeline import aux_join

    root, _, _, records = beer
    features_dir = tmp_path / "features"
    shutil.copytree(root / "features", features_dir)
    files = {}
    for model in ("sum_ctx", "syn_ctx"):
        files[model] = {}
        for split in fn.SPLITS:
            path = tmp_path / f"{model}-{split}.jsonl"
            path.write_text("".join(json.dumps({"example_id": r[fn.EXAMPLE_ID], "prediction": f"{model} prediction for {r[fn.EXAMPLE_ID]}"}) + "\n"
                                    for r in records[split]))
            files[model][split] = str(path)
    counts = aux_join.join_aux_predictions(features_dir=str(features_dir), prediction_files=files)
    assert counts == {s: len(records[s]) for s in fn.SPLITS}
    joined = {s: list(features.read_generation_examples(str(features_dir), s)) for s in fn.SPLITS}
    for split in fn.SPLITS:
        for before, after in zip(records[split], joined[split]):
            assert after[fn.SUMMARY_CTX] == f"sum_ctx prediction for {before[fn.EXAMPLE_ID]}"
            assert after[fn.KEYWORDS_CTX] == f"syn_ctx prediction for {before[fn.EXAMPLE_ID]}"
            assert {k: v for k, v in after.items() if k not in (fn.SUMMARY_CTX, fn.KEYWORDS_CTX)} == \
                   {k: v for k, v in before.items() if k not in (fn.SUMMARY_CTX, fn.KEYWORDS_CTX)}
    reading = {v: [f for f in prompts.generation_layout(v).required_features if f in fn.SUMMARY_AND_KEYWORD_FEATURES]
               for v in prompts.VARIANTS}
    for variant, names in reading.items():
        for split in fn.SPLITS:
            for name in names:
                assert sum(1 for r in joined[split] if r[name].strip()) / len(joined[split]) >= 0.95, (variant, split, name)
    # The features stage still sees the joined splits as finished (manifest updated).
    config = features.FeaturesConfig(num_shards=1, direct_running_mode="in_memory", direct_num_workers=1, encoder_factory=HashingEncoder)
    rerun = features.run_features(examples_dir=str(root / "examples"), output_dir=str(features_dir), config=config, progress=False)
    assert rerun.computed_splits == [] and rerun.manifest["aux_predictions"]["train_inputs"] == "predicted"
    # weak_label mode: the training split reads the weak labels, the others the predictions.
    aux_join.join_aux_predictions(features_dir=str(features_dir), prediction_files=files, train_inputs="weak_label")
    train = list(features.read_generation_examples(str(features_dir), "train"))
    assert all(r[fn.SUMMARY_CTX] == r[fn.SUMMARY_CTX_WEAK_LABEL] and r[fn.KEYWORDS_CTX] == r[fn.KEYWORDS_CTX_WEAK_LABEL] for r in train)
    (tmp_path / "sum_ctx-test.jsonl").write_text("")
    with pytest.raises(Exception, match="no prediction for"):
        aux_join.join_aux_predictions(features_dir=str(features_dir), prediction_files=files, splits=("test",))


def test_abstractive_sum_ctx_ind_task_and_join(beer, tmp_path):
    import shutil

    import seqio

    from personalize_t5x.pipeline import aux_join
    from personalize_t5x.tasks import registry

    root, _, _, records = beer
    vocabulary = seqio.SentencePieceVocabulary(str(registry.os.path.join(registry.os.path.dirname(__file__), "..", "..", SPIECE)))
    name = registry.register_summarize_task("beer_summarize_test", features_dir=str(root / "features"), vocabulary=vocabulary,
                                            overwrite=True)
    try:
        task = seqio.get_mixture_or_task(name)
        assert set(task.splits) == {"infer_train", "infer_validation", "infer_test"}
        example = next(task.get_dataset(sequence_length=None, split="infer_test", shuffle=False).as_numpy_iterator())
        first = records["test"][0]
        assert example[fn.EXAMPLE_ID].decode() == first[fn.EXAMPLE_ID]
        assert example["inputs_pretokenized"].decode() == "summarize: " + first[fn.ranked_text_feature("rank_doc_by_snpt")]
    finally:
        seqio.TaskRegistry.remove(name)
    features_dir = tmp_path / "features"
    shutil.copytree(root / "features", features_dir)
    path = tmp_path / "summaries-test.jsonl"
    path.write_text("".join(json.dumps({"example_id": r[fn.EXAMPLE_ID], "prediction": f"abstract {i}"}) + "\n"
                            for i, r in enumerate(records["test"])))
    aux_join.join_aux_predictions(features_dir=str(features_dir), prediction_files={"sum_ctx_ind": {"test": str(path)}},
                                  splits=("test",))
    joined = list(features.read_generation_examples(str(features_dir), "test"))
    assert [r[fn.SUMMARY_CTX_IND] for r in joined] == [f"abstract {i}" for i in range(len(records["test"]))]
    assert [r[fn.SUMMARY_CTX] for r in joined] == [r[fn.SUMMARY_CTX] for r in records["test"]]
