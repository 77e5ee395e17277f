"""A tiny features folder (the features stage's TFRecords) and its vocabulary, for the task tests.

The fixture writes, under a data directory laid out as tasks/README.md says:

    <data>/fixture/features/{train,validation,test}.tfrecord-SSSSS-of-NNNNN
    <data>/fixture/features/author_pairs_{train,validation,test}.tfrecord-...
    <data>/fixture/vocab/spm.model      (trained with personalize_t5x.tasks.vocab)

with every field of personalize_t5x.feature_names filled with text that names its
example and field, so a layout that reads the wrong field shows in the strings.
"""
from __future__ import annotations

import gzip
import json
import pathlib

import tensorflow as tf

from personalize_t5x import feature_names as fn
from personalize_t5x.tasks import vocab as vocab_lib

SPLIT_SIZES = {"train": 6, "validation": 3, "test": 3}
TRAIN_SHARDS = 2
AUTHOR_PAIRS = {"train": 6, "validation": 2, "test": 2}
WORDS = "coffee grind espresso beans roast brew water milk kettle filter cup taste sour bitter".split()


def generation_record(split: str, i: int) -> dict[str, str]:
    """One example's features; every text names its example and field."""
    user = f"user{i % 2}"
    words = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(6))
    start = f"Title {split} {i}\nThe {words} start"
    target = start + f" and the rest of document {i} of {split} about {words}."
    record = {
        fn.EXAMPLE_ID: f"{user}/{split}-d{i}",
        fn.USER_ID: user,
        fn.DOC_ID: f"{split}-d{i}",
        fn.SPLIT: split,
        fn.IMMEDIATE_CONTEXT: start,
        fn.TARGET: target,
    }
    for strategy in fn.RANKING_STRATEGIES:
        record[fn.ranked_text_feature(strategy)] = f"{strategy} entries of {split} {i}: {words}"
    for name in fn.SUMMARY_AND_KEYWORD_FEATURES:
        record[name] = f"{name} of {split} {i}"
    return record


def author_record(split: str, i: int) -> dict[str, str]:
    return {
        fn.TEXT_A: f"first passage {split} {i} {WORDS[i % len(WORDS)]}",
        fn.TEXT_B: f"second passage {split} {i} {WORDS[(i + 3) % len(WORDS)]}",
        fn.LABEL: "true" if i % 2 == 0 else "false",
    }


def _serialize(record: dict[str, str]) -> bytes:
    feature = {
        k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode("utf-8")])) for k, v in record.items()
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_shards(pattern_prefix: pathlib.Path, records: list[dict[str, str]], shards: int = 1) -> None:
    for shard in range(shards):
        path = f"{pattern_prefix}.tfrecord-{shard:05d}-of-{shards:05d}"
        with tf.io.TFRecordWriter(path) as writer:
            for record in records[shard::shards]:
                writer.write(_serialize(record))


def write_fixture_dataset(folder: pathlib.Path) -> None:
    features = folder / "features"
    features.mkdir(parents=True)
    examples = folder / "examples"
    examples.mkdir()
    for split, n in SPLIT_SIZES.items():
        records = [generation_record(split, i) for i in range(n)]
        write_shards(features / split, records, TRAIN_SHARDS if split == "train" else 1)
        write_shards(features / f"author_pairs_{split}", [author_record(split, i) for i in range(AUTHOR_PAIRS[split])])
        with gzip.open(examples / f"{split}.jsonl.gz", "wt", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps({"target": r[fn.TARGET], "immediate_context": r[fn.IMMEDIATE_CONTEXT]}) + "\n")
    # The vocabulary reads the training split only; add every fixture text to it so the
    # tiny model covers all characters (the test vocabulary, not the pipeline's).
    all_text = [v for split, n in SPLIT_SIZES.items() for i in range(n) for v in generation_record(split, i).values()]
    all_text += [v for split, n in AUTHOR_PAIRS.items() for i in range(n) for v in author_record(split, i).values()]
    sentences = vocab_lib.training_sentences(str(examples)) + [s for t in all_text for s in vocab_lib.split_into_sentences(t)]
    vocab_lib.train_sentencepiece(sentences, str(folder / "vocab" / "spm.model"), 300, num_threads=1)
