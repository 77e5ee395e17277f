"""Hand-made predictions of a few rows over the same examples, for the report tests."""
from __future__ import annotations

import random

from personalize_t5x.experiment import config as config_lib
from personalize_t5x.pipeline import examples as examples_lib
from personalize_t5x.tasks import significance

WORDS = "the a coffee grinder beans roast kettle water morning cup tastes bitter sweet".split()


def make_config(tmp_path, variants=("immed_ctx", "rank_doc_bm25", "syn_ctx", "syn_ctx_author_mix")):
    return config_lib.ExperimentConfig(
        name="fixture", output_dir=str(tmp_path / "out"),
        corpus=config_lib.CorpusSpec("jsonl", (str(tmp_path / "none.jsonl"),)), variants=tuple(variants),
        retrieval=config_lib.RetrievalSpec(strategies=("recent_doc", "rank_doc_bm25"), summary_ranker="rank_doc_bm25"),
        examples=examples_lib.ExampleConfig())


def make_predictions(n: int = 30, seed: int = 0):
    """targets, contexts, and per row predictions: rank/syn rows copy more of the target
    than immed_ctx does (a clear gain), syn_ctx_author_mix about as much as syn_ctx."""
    rng = random.Random(seed)
    targets, contexts = {}, {}
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(30)]
        targets[f"u{i // 5}/d{i}"] = " ".join(words)
        contexts[f"u{i // 5}/d{i}"] = " ".join(words[:8])
    rows = {}
    for row, keep in (("immed_ctx", 10), ("rank_doc_bm25", 24), ("syn_ctx", 25), ("syn_ctx_author_mix", 25)):
        preds = []
        for example_id, target in targets.items():
            words = target.split()
            noise = [rng.choice(WORDS) for _ in range(30 - keep)]
            preds.append(significance.Prediction(example_id, target, " ".join(words[:keep] + noise)))
        rows[row] = preds
    return targets, contexts, rows
