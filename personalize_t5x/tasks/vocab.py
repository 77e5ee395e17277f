"""SentencePiece vocabularies with T5's conventions, trained on the training split.

T5 conventions: id 0 is `<pad>`, 1 is `</s>` (EOS), 2 is `<unk>`, there is no BOS, and
SeqIO adds `extra_ids` sentinel ids (`<extra_id_0>` ... , 100 by default) on top of the
model's pieces. Text is normalized with SentencePiece's default `nmt_nfkc` rule, as in
T5's own vocabulary (newlines become spaces).

Training text (`training_sentences`): the `target` and `immediate_context` of every record
of `<examples_dir>/train.jsonl.gz` (docs/contracts.md), optionally the `text_a` / `text_b`
of `author_pairs_train.jsonl.gz`, and the fixed prompt text of personalize_t5x.tasks.prompts
once (its characters are also `required_chars`, so no prompt character is ever unknown). Validation and test text is never read.
Each text is split into lines; lines longer than MAX_SENTENCE_BYTES are cut at spaces.
When there are more than `max_sentences` lines, a uniform sample is kept (reservoir
sampling with the given seed). The same input and seed give a byte-identical model.

Any SentencePiece model works through configuration (e.g. T5's own
`sentencepiece.model` for users starting from T5 checkpoints): see `get_vocabulary`.
"""
from __future__ import annotations

import os
import random
from typing import Iterable, Iterator

from personalize_t5x.io import files as io_lib
from personalize_t5x.tasks import prompts
from personalize_t5x.errors import InputError

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
DEFAULT_EXTRA_IDS = 100
MAX_SENTENCE_BYTES = 4096
DEFAULT_MAX_SENTENCES = 1_000_000
# Every character of the fixed prompt text is kept whatever its frequency.
PROMPT_CHARS = "".join(sorted(set("".join(prompts.FIXED_TEXTS)) - {" "}))


def split_into_sentences(text: str, max_bytes: int = MAX_SENTENCE_BYTES) -> Iterator[str]:
    """Non-empty stripped lines of `text`, long lines cut at spaces into <= max_bytes pieces."""
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            continue
        if len(line.encode("utf-8")) <= max_bytes:
            yield line
            continue
        piece: list[str] = []
        size = 0
        for word in line.split(" "):
            word_size = len(word.encode("utf-8")) + 1
            if piece and size + word_size > max_bytes:
                yield " ".join(piece)
                piece, size = [], 0
            if word_size > max_bytes:  # one "word" longer than the limit: cut by characters
                encoded = word.encode("utf-8")[: max_bytes - 1]
                word = encoded.decode("utf-8", errors="ignore")
                word_size = len(word.encode("utf-8")) + 1
            piece.append(word)
            size += word_size
        if piece:
            yield " ".join(piece)


def _iter_jsonl_texts(path: str, fields: tuple[str, ...]) -> Iterator[str]:
    for number, record in io_lib.iter_json_objects(path):
        for field in fields:
            value = record.get(field)
            if not isinstance(value, str):
                raise InputError(path, number, field, "missing or not a string")
            yield value


def training_sentences(
    examples_dir: str,
    *,
    include_author_pairs: bool = False,
    max_sentences: int | None = DEFAULT_MAX_SENTENCES,
    seed: int = 0,
) -> list[str]:
    """The vocabulary's training lines, from the training split only (module docstring)."""
    texts: list[Iterable[str]] = [
        _iter_jsonl_texts(os.path.join(examples_dir, "train.jsonl.gz"), ("target", "immediate_context"))
    ]
    if include_author_pairs:
        texts.append(_iter_jsonl_texts(os.path.join(examples_dir, "author_pairs_train.jsonl.gz"), ("text_a", "text_b")))

    rng = random.Random(seed)
    kept: list[str] = []
    seen = 0
    for stream in texts:
        for text in stream:
            for sentence in split_into_sentences(text):
                seen += 1
                if max_sentences is None or len(kept) < max_sentences:
                    kept.append(sentence)
                else:  # reservoir sampling: every line kept with probability max/seen
                    slot = rng.randrange(seen)
                    if slot < max_sentences:
                        kept[slot] = sentence
    return kept + list(prompts.FIXED_TEXTS)


def train_sentencepiece(
    sentences: Iterable[str],
    output_path: str,
    vocab_size: int,
    *,
    model_type: str = "unigram",
    character_coverage: float = 0.9995,
    byte_fallback: bool = False,
    hard_vocab_limit: bool = False,
    seed: int = 0,
    num_threads: int | None = None,
) -> int:
    """Trains a SentencePiece model with T5's special ids; writes it atomically.

    `vocab_size` counts the model's pieces (SeqIO's extra ids come on top). With
    `hard_vocab_limit=False` a corpus too small for `vocab_size` gives a smaller model
    instead of an error. Returns the model's piece count.
    """
    import io

    import sentencepiece as spm

    sentences = list(sentences)
    if not sentences:
        raise ValueError("no training text: the training split is empty")
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        byte_fallback=byte_fallback,
        hard_vocab_limit=hard_vocab_limit,
        pad_id=PAD_ID, pad_piece="<pad>",
        eos_id=EOS_ID, eos_piece="</s>",
        unk_id=UNK_ID, unk_piece="<unk>",
        bos_id=-1,
        required_chars=PROMPT_CHARS,
        max_sentence_length=MAX_SENTENCE_BYTES * 2,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        num_threads=num_threads or min(16, os.cpu_count() or 1),
        minloglevel=2,
    )
    data = model.getvalue()
    with io_lib.atomic_output(output_path, "wb") as f:
        f.write(data)
    return spm.SentencePieceProcessor(model_proto=data).get_piece_size()


def get_vocabulary(path: str, extra_ids: int = DEFAULT_EXTRA_IDS):
    """A seqio.SentencePieceVocabulary over any SentencePiece model file (local or gs://)."""
    import seqio

    return seqio.SentencePieceVocabulary(os.fspath(path), extra_ids=extra_ids)
