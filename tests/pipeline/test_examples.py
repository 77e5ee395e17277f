"""The paper's example construction: filters, splits, profiles, pairs, determinism."""
import collections
import json

import pytest

from personalize_t5x.pipeline import examples as ex
from personalize_t5x.errors import StageReport
from personalize_t5x.pipeline.corpus.records import Document
from personalize_t5x.pipeline.synthetic import generate_corpus


def _corpus(seed=1, users=60):
    return list(generate_corpus(num_users=users, docs_per_user=14, seed=seed, short_fraction=0.15, repost_fraction=0.05))


def _long(n=320, fill="x"):
    return fill * n


def test_filters_follow_the_paper_exactly():
    # One user: 2 earlier docs, then candidates; a duplicate, a short doc, and a same-second pair.
    docs = [
        Document("u", "a", 100, "", _long(400, "a")),
        Document("u", "b", 200, "", _long(400, "b")),
        Document("u", "dup", 250, "", _long(400, "a")),  # identical to "a": dropped
        Document("u", "short", 300, "", "too short"),
        Document("u", "c", 400, "", _long(299, "c")),  # title empty: target = text, 299 <= 300
        Document("u", "d", 500, "", _long(301, "d")),
        Document("u", "e", 600, "", _long(350, "e")),
        Document("u", "f", 700, "", _long(350, "f")),
        Document("u", "g", 800, "", _long(350, "g")),
        Document("u", "h", 800, "", _long(350, "h")),  # same second as g: not in each other's profile
    ]
    config = ex.ExampleConfig(min_examples_per_user=5)
    kept, n_dup = ex.dedup_user_documents(docs)
    assert n_dup == 1 and "dup" not in [d.doc_id for d in kept]
    report = StageReport()
    examples = ex.build_user_examples(kept, config=config, report=report)
    assert [e["doc_id"] for e in examples] == ["d", "e", "f", "g", "h"]
    by_id = {e["doc_id"]: e for e in examples}
    assert by_id["d"]["profile"] == ["a", "b", "short", "c"]
    assert by_id["g"]["profile"] == by_id["h"]["profile"] == ["a", "b", "short", "c", "d", "e", "f"]
    assert by_id["d"]["immediate_context"] == by_id["d"]["target"][:150]
    # a and b are long but have fewer than 2 earlier docs; short and c are too short.
    assert report.dropped == {"target_too_short": 2, "too_few_earlier_documents": 2}


def test_drop_reasons_are_counted_per_document():
    docs = [Document("u", f"d{i}", 100 * i, "Title", _long(400, chr(97 + i))) for i in range(6)]
    report = StageReport()
    examples = ex.build_user_examples(docs, config=ex.ExampleConfig(min_examples_per_user=4), report=report)
    assert len(examples) == 4
    assert report.dropped == {"too_few_earlier_documents": 2}
    report = StageReport()
    assert ex.build_user_examples(docs, config=ex.ExampleConfig(min_examples_per_user=5), report=report) == []
    assert report.dropped["user_too_few_examples(users)"] == 1


def test_max_examples_per_user_is_a_seeded_sample():
    docs = [Document("u", f"d{i:02d}", 100 * i, "T", _long(400, chr(65 + i % 50)) + str(i)) for i in range(30)]
    config = ex.ExampleConfig(max_examples_per_user=10, seed=3)
    first = ex.build_user_examples(docs, config=config, report=StageReport())
    again = ex.build_user_examples(docs, config=config, report=StageReport())
    other = ex.build_user_examples(docs, config=ex.ExampleConfig(max_examples_per_user=10, seed=4), report=StageReport())
    assert len(first) == 10 and first == again and first != other
    timestamps = [e["timestamp"] for e in first]
    assert timestamps == sorted(timestamps)


def test_no_profile_holds_a_document_at_or_after_its_target():
    result = ex.build_examples(_corpus(), config=ex.ExampleConfig())
    timestamps = {d.doc_id: d.timestamp for d in result.documents}
    owners = {d.doc_id: d.user_id for d in result.documents}
    checked = 0
    for split in ex.SPLITS:
        for example in result.examples[split]:
            assert example["profile"], "every target has at least 2 earlier documents"
            for doc_id in example["profile"]:
                assert timestamps[doc_id] < example["timestamp"]
                assert owners[doc_id] == example["user_id"]
                checked += 1
    assert checked > 1000


def test_no_validation_or_test_user_reaches_training_data():
    result = ex.build_examples(_corpus(), config=ex.ExampleConfig())
    users = {s: {e["user_id"] for e in result.examples[s]} for s in ex.SPLITS}
    assert all(users[s] for s in ex.SPLITS)
    assert not users["train"] & users["validation"]
    assert not users["train"] & users["test"]
    assert not users["validation"] & users["test"]
    held_out = users["validation"] | users["test"]
    held_out_texts = {e["target"] for s in ("validation", "test") for e in result.examples[s]}
    for pair in result.author_pairs["train"]:
        assert pair["user_id"] not in held_out and pair["other_user_id"] not in held_out
        assert pair["text_a"] not in held_out_texts and pair["text_b"] not in held_out_texts
    # Evaluation pairs stay inside their own split too.
    for split in ("validation", "test"):
        for pair in result.author_pairs[split]:
            assert {pair["user_id"], pair["other_user_id"]} <= users[split]


def test_split_proportions_and_pair_balance():
    result = ex.build_examples(_corpus(users=100), config=ex.ExampleConfig())
    table = result.stats["splits"]
    n_users = sum(table[s]["users"] for s in ex.SPLITS)
    assert table["train"]["users"] == round(0.85 * n_users)
    assert table["validation"]["users"] == round(0.90 * n_users) - round(0.85 * n_users)
    pairs = result.author_pairs["train"]
    assert len(pairs) == table["train"]["examples"]
    positives = sum(p["label"] == "true" for p in pairs)
    assert positives == len(pairs) // 2
    for pair in pairs:
        assert (pair["label"] == "true") == (pair["user_id"] == pair["other_user_id"])
        assert pair["text_a"] != pair["text_b"]


def test_time_split_puts_each_users_latest_examples_in_evaluation():
    result = ex.build_examples(_corpus(), config=ex.ExampleConfig(split_mode="time"))
    per_user = collections.defaultdict(dict)
    for split in ex.SPLITS:
        for example in result.examples[split]:
            per_user[example["user_id"]].setdefault(split, []).append(example["timestamp"])
    for user, splits in per_user.items():
        assert splits.get("train") and splits.get("test") and splits.get("validation")
        assert max(splits["train"]) < min(splits["validation"]) <= max(splits["validation"]) < min(splits["test"])
    assert result.author_pairs["validation"] == [] and result.author_pairs["train"]


def test_same_seed_gives_byte_identical_outputs_and_another_seed_changes_the_split(tmp_path):
    corpus = _corpus()
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        ex.write_examples(ex.build_examples(corpus, config=ex.ExampleConfig(seed=seed)), tmp_path / name)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    shards = [f"author_pairs_{s}.tfrecord-00000-of-00001" for s in ex.SPLITS]  # the pairs' final form
    assert files == sorted([ex.DOCUMENTS_FILE, ex.STATS_FILE, *ex.EXAMPLE_FILES, *ex.PAIR_FILES, *shards])
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    users_a = {e["user_id"] for e in ex.read_examples(tmp_path / "a", "test")}
    users_c = {e["user_id"] for e in ex.read_examples(tmp_path / "c", "test")}
    assert users_a != users_c
    # Input order does not matter either.
    shuffled = list(reversed(corpus))
    ex.write_examples(ex.build_examples(shuffled, config=ex.ExampleConfig(seed=5)), tmp_path / "d")
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "d" / name).read_bytes(), name


def test_stats_match_the_written_files(tmp_path):
    result = ex.build_examples(_corpus(), config=ex.ExampleConfig())
    ex.write_examples(result, tmp_path)
    stats = json.loads((tmp_path / ex.STATS_FILE).read_text())
    for split in ex.SPLITS:
        rows = list(ex.read_examples(tmp_path, split))
        assert stats["splits"][split]["examples"] == len(rows)
        assert stats["splits"][split]["users"] == len({r["user_id"] for r in rows})
        mean_chars = sum(len(r["target"]) for r in rows) / len(rows)
        assert stats["splits"][split]["avg_chars_current_doc"] == pytest.approx(mean_chars, abs=0.05)
    dropped = stats["report"]["dropped"]
    kept_documents = sum(1 for _ in ex.read_jsonl(tmp_path / ex.DOCUMENTS_FILE))
    # Every input document is accounted for: kept, a duplicate, or a (deduped) document
    # of a user dropped for having too few examples.
    kept_users = {d.user_id for d in result.documents}
    distinct_of_dropped_users = {(d.user_id, d.title, d.text) for d in _corpus() if d.user_id not in kept_users}
    assert stats["input_documents"] == len(_corpus())
    assert stats["input_documents"] == (
        kept_documents + dropped["duplicate_within_user"] + len(distinct_of_dropped_users))


@pytest.mark.parametrize("kwargs", [
    {"split_fractions": (0.5, 0.5, 0.5)}, {"split_mode": "random"}, {"max_examples_per_user": 2},
    {"min_examples_per_user": 0}, {"context_chars": -1},
])
def test_config_is_validated(kwargs):
    with pytest.raises(ValueError, match="ExampleConfig"):
        ex.ExampleConfig(**kwargs)


def test_author_pairs_are_written_in_their_final_form(tmp_path):
    from personalize_t5x.io import tfrecords

    result = ex.build_examples(_corpus(), config=ex.ExampleConfig(seed=5))
    ex.write_examples(result, tmp_path)
    for split in ex.SPLITS:
        names = sorted(p.name for p in tmp_path.glob(f"author_pairs_{split}.tfrecord-*"))
        records = [tfrecords.parse_bytes_example(r) for n in names for r in tfrecords.iter_tfrecord(str(tmp_path / n))]
        expected = [{k: p[k].encode() for k in ("text_a", "text_b", "label")} for p in result.author_pairs[split]]
        assert records == expected
