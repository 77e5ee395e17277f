"""`personalize-t5x vocab`: T5 special ids, training split only, determinism, SeqIO use."""
from __future__ import annotations

import gzip
import json

import pytest

from personalize_t5x import cli
from personalize_t5x.tasks import prompts
from personalize_t5x.tasks import vocab

TRAIN_TEXTS = [
    "Why does my espresso taste sour?\nI grind fine and brew at 93 degrees, yet it is sour.",
    "Best beans for a pour over\nLight roasts from Ethiopia give fruity cups with a clean finish.",
    "Storing coffee\nKeep the beans in an airtight container away from light, heat and moisture.",
    "Milk frothing tips\nPurge the steam wand, keep the tip just below the surface, then sink it.",
] * 5
VALIDATION_ONLY = "Zyzzogeton qwxjk validation words never seen in training."


def write_examples(folder, texts=TRAIN_TEXTS):
    folder.mkdir(parents=True, exist_ok=True)
    for split, split_texts in (("train", texts), ("validation", [VALIDATION_ONLY]), ("test", [VALIDATION_ONLY])):
        with gzip.open(folder / f"{split}.jsonl.gz", "wt", encoding="utf-8") as f:
            for i, text in enumerate(split_texts):
                f.write(json.dumps({"example_id": f"u/{i}", "target": text, "immediate_context": text[:30]}) + "\n")
    with gzip.open(folder / "author_pairs_train.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text_a": "pair text one", "text_b": "pair text two", "label": "true", "user_id": "u"}) + "\n")
    return folder


def train(tmp_path, *extra):
    examples = write_examples(tmp_path / "examples")
    output = tmp_path / "vocab" / "spm.model"
    code = cli.main(["vocab", "--examples-dir", str(examples), "--output", str(output), "--vocab-size", "120",
                     "--num-threads", "1", *extra])
    assert code == 0
    return output


def test_t5_special_ids(tmp_path, capsys):
    import sentencepiece as spm

    output = train(tmp_path)
    assert "pad 0, eos 1, unk 2, no bos" in capsys.readouterr().out
    sp = spm.SentencePieceProcessor(model_file=str(output))
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
    assert [sp.id_to_piece(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"]
    # Every prompt character is in the vocabulary.
    for text in prompts.FIXED_TEXTS:
        assert sp.unk_id() not in sp.encode(text)


def test_seqio_vocabulary_with_extra_ids(tmp_path):
    output = train(tmp_path)
    v = vocab.get_vocabulary(str(output))
    import sentencepiece as spm

    pieces = spm.SentencePieceProcessor(model_file=str(output)).get_piece_size()
    assert v.vocab_size == pieces + 100
    assert (v.pad_id, v.eos_id, v.unk_id) == (0, 1, 2)
    assert v.decode(v.encode("the beans taste sour")) == "the beans taste sour"
    assert vocab.get_vocabulary(str(output), extra_ids=7).vocab_size == pieces + 7


def test_deterministic(tmp_path):
    a = train(tmp_path / "a").read_bytes()
    b = train(tmp_path / "b").read_bytes()
    assert a == b
    c = train(tmp_path / "c", "--byte-fallback", "--vocab-size", "400").read_bytes()
    assert c != a


def test_training_split_only(tmp_path):
    examples = write_examples(tmp_path / "examples")
    sentences = vocab.training_sentences(str(examples))
    assert not any("Zyzzogeton" in s for s in sentences)
    assert "Why does my espresso taste sour?" in sentences  # split into lines
    assert not any("pair text" in s for s in sentences)
    with_pairs = vocab.training_sentences(str(examples), include_author_pairs=True)
    assert "pair text one" in with_pairs
    assert sentences[-len(prompts.FIXED_TEXTS):] == list(prompts.FIXED_TEXTS)


def test_sampling_is_seeded(tmp_path):
    examples = write_examples(tmp_path / "examples", [f"line number {i}" for i in range(200)])
    a = vocab.training_sentences(str(examples), max_sentences=50, seed=1)
    assert len(a) == 50 + len(prompts.FIXED_TEXTS)
    assert a == vocab.training_sentences(str(examples), max_sentences=50, seed=1)
    assert a != vocab.training_sentences(str(examples), max_sentences=50, seed=2)


def test_long_lines_are_cut_at_spaces():
    text = " ".join(["word"] * 3000)  # 14,999 bytes
    pieces = list(vocab.split_into_sentences(text, max_bytes=100))
    assert all(len(p.encode()) <= 100 for p in pieces)
    assert " ".join(pieces) == text
    assert list(vocab.split_into_sentences("x" * 250, max_bytes=100)) == ["x" * 99]


def test_missing_or_bad_input_is_one_line_error(tmp_path, capsys):
    assert cli.main(["vocab", "--examples-dir", str(tmp_path), "--output", str(tmp_path / "m.model")]) == 2
    assert "train.jsonl.gz: field '<file>': no such file" in capsys.readouterr().err
    with gzip.open(tmp_path / "train.jsonl.gz", "wt") as f:
        f.write('{"target": "ok", "immediate_context": "ok"}\n{"target": 3}\n')
    assert cli.main(["vocab", "--examples-dir", str(tmp_path), "--output", str(tmp_path / "m.model")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("train.jsonl.gz:2: field 'target': missing or not a string")
    assert "\n" not in err
