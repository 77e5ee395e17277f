"""Integration: experiments/stackexchange.gin on the real beer.stackexchange.com dump
(../shared/data), with its rows and steps reduced to fit CI: every requested row is in
the report with finite metrics and significance fields, and a second run does nothing."""
from __future__ import annotations

import io
import json
import math

from shared_paths import require_shared

from personalize_t5x.commands import run as run_command
from personalize_t5x.experiment import runner
from personalize_t5x.trainer import gin_utils

ROWS = ["immed_ctx", "recent_doc", "rank_doc_bm25", "syn_ctx", "syn_ctx_author_mix"]


def test_beer_experiment_report_and_rerun(tmp_path):
    beer = require_shared("data/stackexchange/beer/Posts.xml")
    bindings = [
        f"OUTPUT_DIR = {str(tmp_path / 'run')!r}",
        f"CORPUS_INPUTS = [{str(beer)!r}]",
        f"VARIANTS = {ROWS!r}",
        # BM25 and RecentDoc only: the dense encoder is tested elsewhere and costs minutes here.
        "STRATEGIES = ['recent_doc', 'rank_doc_bm25']",
        "SUMMARY_RANKER = 'rank_doc_bm25'",
        "VOCAB_SIZE = 600",
        "MODEL = {'emb_dim': 16, 'num_heads': 2, 'head_dim': 8, 'mlp_dim': 32, 'num_encoder_layers': 1, "
        "'num_decoder_layers': 1}",
        "TRAIN_STEPS = 3", "BATCH_SIZE = 8", "FEATURE_LENGTHS = {'inputs': 96, 'targets': 16}",
        "DECODING = 'greedy'",
        "run.experiment.beam_workers = 1",
    ]
    search = [str(gin_utils.REPO_GIN_DIR), "."]
    config = run_command.config_from_gin(["experiments/stackexchange.gin"], bindings, search)
    assert config.corpus.format == "stackexchange" and config.variants == tuple(ROWS)
    result = runner.run_experiment(config=config, stream=io.StringIO())
    report = json.loads(open(result.report_paths["json"]).read())

    rows = {r["row"]: r for r in report["rows"]}
    assert list(rows) == [*ROWS, "copy_start"]
    assert report["examples"] > 10
    for name, row in rows.items():
        assert all(math.isfinite(row["metrics"][m]) for m in ("bleu", "rouge1", "rouge2", "rougeL")), name
        if name == "immed_ctx":
            continue
        # every row is tested against ImmedCtx; trained rows also against their parent
        for key in ("vs_immed_ctx", "vs_parent") if name != "copy_start" else ("vs_immed_ctx",):
            for metric, test in row[key].items():
                assert 0.0 <= test["p"] <= 1.0 and isinstance(test["significant"], bool), (name, key, metric)
                assert math.isfinite(test["difference"])
    assert rows["syn_ctx"]["parent"] == "rank_doc_bm25"
    assert rows["syn_ctx_author_mix"]["parent"] == "syn_ctx"
    assert [r["ranker"] for r in report["retrieval"]["rankers"]] == ["recent_doc", "rank_doc_bm25"]
    assert report["dataset"]["splits"]["test"]["examples"] == report["examples"]

    again = io.StringIO()
    second = runner.run_experiment(config=run_command.config_from_gin(["experiments/stackexchange.gin"], bindings, search),
                                   stream=again)
    assert second.did_nothing and "nothing to do" in again.getvalue()
