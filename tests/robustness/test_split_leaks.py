"""No evaluation target reaches anything trained on, in both split modes (issue 11, item 3).

Independent of the builder: the stage is run through the CLI and only its output files are
read. The rule is docs/contracts.md's "No leak across splits".
"""
import collections
import gzip
import json
import pathlib

import pytest

from personalize_t5x import cli

DEMO = pathlib.Path(__file__).resolve().parents[2] / "personalize_t5x" / "demo" / "demo_corpus.jsonl.gz"


def _read(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _joined(document):
    title = document["title"].strip()
    return f"{title}\n{document['text']}" if title else document["text"]


@pytest.fixture(scope="module", params=["user", "time"])
def built(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"examples-{request.param}")
    assert cli.main(["examples", "build", "--input", str(DEMO), "--output-dir", str(out),
                     "--split-mode", request.param, "--seed", "3",
                     # the demo corpus's thresholds (gin/experiments/demo.gin): its posts are short
                     "--context-chars", "50", "--min-target-chars", "150"]) == 0
    return request.param, out


def test_no_evaluation_target_in_anything_trained_on(built):
    mode, out = built
    splits = {s: _read(out / f"{s}.jsonl.gz") for s in ("train", "validation", "test")}
    pairs = _read(out / "author_pairs_train.jsonl.gz")
    documents = {d["doc_id"]: d for d in _read(out / "documents.jsonl.gz")}
    evaluation = {e["target"] for s in ("validation", "test") for e in splits[s]}
    assert splits["train"] and pairs and evaluation, "the demo corpus must give every split something"

    assert not evaluation & {e["target"] for e in splits["train"]}
    leaked_pairs = [p for p in pairs if p["text_a"] in evaluation or p["text_b"] in evaluation]
    assert not leaked_pairs, f"{len(leaked_pairs)} of {len(pairs)} training pairs hold an evaluation target"
    profile_texts = {_joined(documents[i]) for e in splits["train"] for i in e["profile"]}
    assert not evaluation & profile_texts

    train_users = {e["user_id"] for e in splits["train"]}
    assert {p["user_id"] for p in pairs} | {p["other_user_id"] for p in pairs} <= train_users
    if mode == "user":
        evaluation_users = {e["user_id"] for s in ("validation", "test") for e in splits[s]}
        assert not train_users & evaluation_users
    else:
        # Every text a training pair holds is a document written before its author's first
        # evaluation target, in (timestamp, doc_id) order.
        first_evaluation = {}
        for s in ("validation", "test"):
            for e in splits[s]:
                key = (e["timestamp"], e["doc_id"])
                first_evaluation[e["user_id"]] = min(first_evaluation.get(e["user_id"], key), key)
        by_user_text = collections.defaultdict(dict)
        for d in documents.values():
            by_user_text[d["user_id"]][_joined(d)] = (d["timestamp"], d["doc_id"])
        for p in pairs:
            other = p["user_id"] if p["label"] == "true" else p["other_user_id"]
            for user, text in ((p["user_id"], p["text_a"]), (other, p["text_b"])):
                written = by_user_text[user][text]
                assert user not in first_evaluation or written < first_evaluation[user], (user, written)
        assert not (out / "author_pairs_validation.jsonl.gz").exists() or not _read(out / "author_pairs_validation.jsonl.gz")


def test_a_cross_posted_evaluation_target_is_removed_from_training_and_counted(tmp_path):
    """User mode: a training user posting the very text an evaluation user's target holds."""
    documents = []
    for u in range(20):
        for d in range(8):
            documents.append({"user_id": f"u{u:02d}", "doc_id": f"u{u:02d}-d{d}", "timestamp": 1000 + d,
                              "title": "", "text": f"user {u} document {d} " + "words " * 80})
    corpus = tmp_path / "corpus.jsonl"
    out = tmp_path / "first"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in documents))
    assert cli.main(["examples", "build", "--input", str(corpus), "--output-dir", str(out)]) == 0
    test_target = _read(out / "test.jsonl.gz")[0]
    train_user = _read(out / "train.jsonl.gz")[0]["user_id"]
    # The training user cross-posts that target, early enough to be in profiles and a target.
    copy = {"user_id": train_user, "doc_id": f"{train_user}-copy", "timestamp": 1003, "title": "",
            "text": test_target["target"]}
    corpus.write_text("".join(json.dumps(d) + "\n" for d in documents + [copy]))
    out = tmp_path / "second"
    assert cli.main(["examples", "build", "--input", str(corpus), "--output-dir", str(out)]) == 0
    train = _read(out / "train.jsonl.gz")
    assert test_target["target"] in {e["target"] for e in _read(out / "test.jsonl.gz")}
    assert all(e["target"] != test_target["target"] for e in train)
    assert all(copy["doc_id"] not in e["profile"] for e in train)
    pairs = _read(out / "author_pairs_train.jsonl.gz")
    assert all(test_target["target"] not in (p["text_a"], p["text_b"]) for p in pairs)
    dropped = json.loads((out / "stats.json").read_text())["report"]["dropped"]
    assert dropped["train_target_is_an_evaluation_target"] == 1
    assert dropped["train_profile_document_is_an_evaluation_target"] >= 1
