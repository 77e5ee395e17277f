"""The report: the paper's table with significance against ImmedCtx and the chain, CSV,
markdown, JSON, plots; the retrieval-quality table with per-example scores."""
from __future__ import annotations

import csv
import io
import json
import math

import pytest

from personalize_t5x.experiment import report as report_lib
from report_fixtures import make_config, make_predictions


def test_parent_row_follows_the_papers_chain():
    present = ["immed_ctx", "user_id", "recent_doc", "rank_doc_by_snpt", "sum_ctx", "syn_ctx", "syn_ctx_author_mix",
               "no_ranked_entries_author_mix", "rank_doc_bm25_author_mix"]
    parent = lambda row: report_lib.parent_row(row, present, summary_ranker="rank_doc_by_snpt")  # noqa: E731
    assert parent("immed_ctx") is None
    assert parent("user_id") == "immed_ctx" and parent("recent_doc") == "immed_ctx"
    assert parent("sum_ctx") == "rank_doc_by_snpt"
    assert parent("syn_ctx") == "sum_ctx"
    assert parent("syn_ctx_author_mix") == "syn_ctx"
    assert parent("no_ranked_entries_author_mix") == "syn_ctx_author_mix"
    assert parent("rank_doc_bm25_author_mix") == "rank_doc_bm25" if "rank_doc_bm25" in present else "immed_ctx"
    # a missing link is skipped: SynCtx without SumCtx builds on the summary ranker
    assert report_lib.parent_row("syn_ctx", ["immed_ctx", "rank_doc_bm25", "syn_ctx"],
                                 summary_ranker="rank_doc_bm25") == "rank_doc_bm25"
    assert report_lib.parent_row("syn_ctx", ["immed_ctx", "syn_ctx"], summary_ranker="rank_doc_bm25") == "immed_ctx"


def _report(tmp_path):
    config = make_config(tmp_path)
    _, contexts, rows = make_predictions()
    scores = {row: report_lib.score_row(row, preds) for row, preds in rows.items()}
    scores["copy_start"] = report_lib.score_row("copy_start", report_lib.copy_start_predictions(rows["immed_ctx"], contexts))
    retrieval = {"splits": {"test": {
        "recent_doc": {"rouge1": 10.0, "rouge2": 1.0, "rougeL": 8.0, "examples": 3, "empty_ranked_texts": 0,
                       "per_example": {"example_id": ["a", "b", "c"], "rouge1": [10, 11, 9], "rouge2": [1, 1, 1],
                                       "rougeL": [8, 9, 7]}},
        "rank_doc_bm25": {"rouge1": 30.0, "rouge2": 5.0, "rougeL": 20.0, "examples": 3, "empty_ranked_texts": 0,
                          "per_example": {"example_id": ["a", "b", "c"], "rouge1": [30, 31, 29], "rouge2": [5, 4, 6],
                                          "rougeL": [20, 21, 19]}}}}}
    from personalize_t5x.pipeline import examples as examples_lib
    from personalize_t5x.pipeline.synthetic import generate_demo_corpus

    stats = examples_lib.build_examples(generate_demo_corpus(num_users=12, docs_per_user=8, seed=1),
                                        config=examples_lib.ExampleConfig(context_chars=60, min_target_chars=200)).stats
    return config, scores, report_lib.build_report(config=config, scores=scores, retrieval=retrieval,
                                                   dataset_stats=stats, step_timings={"train_immed_ctx": {"wall_s": 1.0, "cpu_s": 2.0}})


def test_every_row_has_metrics_and_both_significance_tests(tmp_path):
    _, scores, report = _report(tmp_path)
    rows = {e["row"]: e for e in report["rows"]}
    assert list(rows) == ["immed_ctx", "rank_doc_bm25", "syn_ctx", "syn_ctx_author_mix", "copy_start"]
    assert rows["immed_ctx"]["parent"] is None and "vs_immed_ctx" not in rows["immed_ctx"]
    assert rows["syn_ctx"]["parent"] == "rank_doc_bm25"
    assert rows["syn_ctx_author_mix"]["parent"] == "syn_ctx" and rows["syn_ctx_author_mix"]["label"] == "AuthorPred"
    for row in ("rank_doc_bm25", "syn_ctx", "syn_ctx_author_mix", "copy_start"):
        for metric in ("bleu", "rouge1", "rouge2", "rougeL"):
            assert math.isfinite(rows[row]["metrics"][metric])
            test = rows[row]["vs_immed_ctx"][metric]
            assert 0 <= test["p"] <= 1 and test["significant"] == (test["p"] < 0.01)
            gain = rows[row]["gain_over_immed_ctx"][metric]
            assert gain["low"] <= gain["mean"] <= gain["high"]
    # a clear gain is significant; a row about equal to its parent is not
    assert rows["rank_doc_bm25"]["vs_immed_ctx"]["rougeL"]["significant"]
    assert rows["rank_doc_bm25"]["gain_over_immed_ctx"]["rougeL"]["low"] > 0
    assert not rows["syn_ctx_author_mix"]["vs_parent"]["rougeL"]["significant"]
    assert rows["rank_doc_bm25"]["metrics"]["rougeL"] == pytest.approx(scores["rank_doc_bm25"].corpus["rougeL"])
    head = report["headline"]
    assert head["personalization_shown"] and head["vs_immed_ctx"]["p"] < 0.01
    assert head["row"] in ("syn_ctx", "syn_ctx_author_mix", "rank_doc_bm25")


def test_confidence_interval_is_the_t_interval():
    mean, low, high = report_lib.confidence_interval([1.0, 2.0, 3.0, 4.0], 0.95)
    assert mean == 2.5
    # sd = 1.291, t(0.975, 3) = 3.182: half width 2.054
    assert high - mean == pytest.approx(2.054, abs=1e-3) and mean - low == pytest.approx(2.054, abs=1e-3)


def test_retrieval_table_keeps_per_example_scores_and_tests_rankers(tmp_path):
    _, _, report = _report(tmp_path)
    table = report["retrieval"]
    assert table["reference"] == "recent_doc"
    bm25 = next(r for r in table["rankers"] if r["ranker"] == "rank_doc_bm25")
    assert bm25["per_example"]["rougeL"] == [20, 21, 19]
    assert bm25["vs_reference"]["rougeL"]["p"] < 0.01
    text = report_lib.render_retrieval_csv(table)
    assert text.splitlines()[0] == "example_id,ranker,rouge1,rouge2,rougeL" and len(text.splitlines()) == 7


def test_markdown_csv_and_json_render(tmp_path):
    _, _, report = _report(tmp_path)
    md = report_lib.render_markdown(report, plots={"metrics": "metrics.png"})
    assert "| RankDocBM25 |" in md and "| AuthorPred |" in md and "copy the start" in md
    assert "**Yes.**" in md and "## Retrieval quality" in md and "## Dataset" in md and "## Timings" in md
    immed_line = next(line for line in md.splitlines() if line.startswith("| ImmedCtx |"))
    assert "*" not in immed_line  # ImmedCtx is not tested against itself
    bm25_line = next(line for line in md.splitlines() if line.startswith("| RankDocBM25 |"))
    assert "*" in bm25_line
    rows = list(csv.DictReader(io.StringIO(report_lib.render_csv(report))))
    assert [r["row"] for r in rows] == ["immed_ctx", "rank_doc_bm25", "syn_ctx", "syn_ctx_author_mix", "copy_start"]
    assert rows[1]["rougeL_vs_immed_ctx_significant"] == "true" and float(rows[1]["rougeL_vs_immed_ctx_p"]) < 0.01
    assert rows[0]["rougeL_vs_immed_ctx_p"] == ""
    json.dumps(report)  # JSON-able


def test_plots_are_pngs(tmp_path):
    _, _, report = _report(tmp_path)
    for plot in (report_lib.plot_metrics, report_lib.plot_gains):
        path = tmp_path / f"{plot.__name__}.png"
        plot(report, str(path))
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_a_run_without_gain_says_not_shown(tmp_path):
    config = make_config(tmp_path, variants=("immed_ctx", "rank_doc_bm25"))
    _, contexts, rows = make_predictions()
    scores = {"immed_ctx": report_lib.score_row("immed_ctx", rows["immed_ctx"]),
              "rank_doc_bm25": report_lib.score_row("rank_doc_bm25", rows["immed_ctx"])}  # no better
    report = report_lib.build_report(config=config, scores=scores, retrieval=None, dataset_stats={}, step_timings={})
    assert not report["headline"]["personalization_shown"]
    assert "Not shown by this run" in report_lib.render_markdown(report, plots={})
