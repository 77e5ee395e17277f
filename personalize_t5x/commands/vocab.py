"""`personalize-t5x vocab`: train a SentencePiece vocabulary on the training split.

    personalize-t5x vocab --examples-dir runs/avocado/examples \\
        --output data/avocado/vocab/spm.model --vocab-size 32000

Reads `train.jsonl.gz` (and with --include-author-pairs `author_pairs_train.jsonl.gz`)
of an examples folder; never validation or test. T5 conventions (pad 0, EOS 1, unk 2,
no BOS); SeqIO adds the extra ids when the tasks load the model. See
personalize_t5x/tasks/vocab.py. The same input and seed give a byte-identical model.
"""
from __future__ import annotations

import argparse
import os

from personalize_t5x.commands import non_negative_int, open_unit_interval, positive_int, seed_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--examples-dir", required=True, help="output folder of `personalize-t5x examples build`")
    parser.add_argument("--output", required=True, help="path of the model to write, e.g. DATA/<dataset>/vocab/spm.model")
    parser.add_argument("--vocab-size", type=positive_int, default=32000,
                        help="pieces in the model, before SeqIO's extra ids (default 32000)")
    parser.add_argument("--model-type", default="unigram", choices=("unigram", "bpe", "char", "word"))
    parser.add_argument("--character-coverage", type=open_unit_interval, default=0.9995)
    parser.add_argument("--byte-fallback", action="store_true", help="unknown characters become UTF-8 byte pieces")
    parser.add_argument("--hard-vocab-limit", action="store_true",
                        help="fail when the corpus cannot give --vocab-size pieces (default: a smaller model)")
    parser.add_argument("--include-author-pairs", action="store_true",
                        help="also train on the texts of author_pairs_train.jsonl.gz")
    parser.add_argument("--max-sentences", type=non_negative_int, default=None,
                        help="keep a seeded uniform sample of this many lines (default 1,000,000; 0 keeps all)")
    parser.add_argument("--seed", type=seed_int, default=0)
    parser.add_argument("--num-threads", type=positive_int, default=None)


def run(args: argparse.Namespace) -> int:
    from personalize_t5x.tasks import vocab

    max_sentences = vocab.DEFAULT_MAX_SENTENCES if args.max_sentences is None else (args.max_sentences or None)
    sentences = vocab.training_sentences(
        args.examples_dir,
        include_author_pairs=args.include_author_pairs,
        max_sentences=max_sentences,
        seed=args.seed,
    )
    if not sentences:
        from personalize_t5x.errors import InputError

        raise InputError(os.path.join(args.examples_dir, "train.jsonl.gz"), 0, "<file>",
                         "no training text: the training split is empty")
    size = vocab.train_sentencepiece(
        sentences,
        args.output,
        args.vocab_size,
        model_type=args.model_type,
        character_coverage=args.character_coverage,
        byte_fallback=args.byte_fallback,
        hard_vocab_limit=args.hard_vocab_limit,
        seed=args.seed,
        num_threads=args.num_threads,
    )
    note = "" if size == args.vocab_size else f" (asked for {args.vocab_size}; the corpus is too small for more)"
    print(f"wrote {args.output}: {size} pieces{note} from {len(sentences)} lines; "
          f"pad {vocab.PAD_ID}, eos {vocab.EOS_ID}, unk {vocab.UNK_ID}, no bos")
    return 0
