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
    _, _, _, records = beer
    for r in records["train"]:
        ranked = r[fn.ranked_text_feature("rank_doc_by_snpt")]
        label = r[fn.KEYWORDS_CTX_WEAK_LABEL]
        entry_words = set(keywords.keyword_words(ranked))
        assert all(w in entry_words for w in label.split(", ") if w)
        # the summary label is made of the ranked text's snippets: every word of it is there
        ranked_tokens = set(ranked.split())
        assert set(r[fn.SUMMARY_CTX_WEAK_LABEL].split()) <= ranked_tokens
