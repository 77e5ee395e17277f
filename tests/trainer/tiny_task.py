"""A tiny seqio task for the trainer tests: reverse a short sequence of token ids.

Importing this module registers `trainer_test_reverse` (splits train / validation /
test) with a pass-through vocabulary of 128 ids, so the tests need no SentencePiece
model and no data on disk. The examples are a pure function of the split.
"""
import numpy as np
import seqio
import tensorflow as tf

TASK_NAME = "trainer_test_reverse"
VOCAB_SIZE = 128
_SIZES = {"train": 256, "validation": 16, "test": 12}


def _examples(split: str):
    rng = np.random.RandomState({"train": 1, "validation": 2, "test": 3}[split])
    for index in range(_SIZES[split]):
        length = rng.randint(3, 8)
        tokens = rng.randint(3, VOCAB_SIZE, size=length).astype(np.int32)
        yield {"inputs": tokens, "targets": tokens[::-1].copy(), "example_id": f"{split}-{index}"}


def _dataset_fn(split, shuffle_files=False, seed=None):
    """The examples as tensors (no Python generator), so tf.data can checkpoint the iterator."""
    del shuffle_files, seed
    examples = list(_examples(split))
    width = max(len(e["inputs"]) for e in examples)
    padded = np.zeros((len(examples), width), np.int32)
    padded_targets = np.zeros((len(examples), width), np.int32)
    lengths = np.zeros((len(examples),), np.int32)
    for row, example in enumerate(examples):
        lengths[row] = len(example["inputs"])
        padded[row, : lengths[row]] = example["inputs"]
        padded_targets[row, : lengths[row]] = example["targets"]
    ds = tf.data.Dataset.from_tensor_slices({"inputs": padded, "targets": padded_targets, "length": lengths,
                                             "example_id": [e["example_id"] for e in examples]})
    return ds.map(lambda x: {"inputs": x["inputs"][: x["length"]], "targets": x["targets"][: x["length"]],
                             "example_id": x["example_id"]})


def exact_match(targets, predictions):
    """Fraction of predictions equal to their target sequence."""
    same = [list(t) == list(p) for t, p in zip(targets, predictions)]
    return {"exact_match": float(np.mean(same)) if same else 0.0}


def register() -> None:
    if TASK_NAME in seqio.TaskRegistry.names():
        return
    vocabulary = seqio.PassThroughVocabulary(size=VOCAB_SIZE, eos_id=1)
    seqio.TaskRegistry.add(
        TASK_NAME,
        source=seqio.FunctionDataSource(_dataset_fn, splits=list(_SIZES)),
        preprocessors=[seqio.preprocessors.append_eos_after_trim],
        output_features={"inputs": seqio.Feature(vocabulary, add_eos=True),
                         "targets": seqio.Feature(vocabulary, add_eos=True)},
        metric_fns=[exact_match])


register()
