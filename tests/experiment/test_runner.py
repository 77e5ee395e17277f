"""run_experiment end to end on a small synthetic corpus: every step, the report, a rerun
that does nothing, and a crash in training that a rerun continues from its checkpoint."""
from __future__ import annotations

import io
import json
import math

import pytest

from personalize_t5x.experiment import config as config_lib
from personalize_t5x.experiment import runner
from personalize_t5x.pipeline import examples as examples_lib
from personalize_t5x.pipeline.corpus.records import write_documents
from personalize_t5x.pipeline.synthetic import generate_demo_corpus


def _config(tmp_path, **budget):
    corpus = tmp_path / "corpus.jsonl.gz"
    if not corpus.exists():
        write_documents(str(corpus), generate_demo_corpus(num_users=30, docs_per_user=7, seed=5))
    return config_lib.ExperimentConfig(
        name="tiny", output_dir=str(tmp_path / "out"), corpus=config_lib.CorpusSpec("jsonl", (str(corpus),)),
        variants=("immed_ctx", "recent_doc"),
        examples=examples_lib.ExampleConfig(context_chars=60, min_target_chars=200),
        retrieval=config_lib.RetrievalSpec(strategies=("recent_doc",), summary_ranker="recent_doc", max_chars=300,
                                           direct_num_workers=1),
        vocab_size=300,
        model=config_lib.ModelSpec(emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32, num_encoder_layers=1,
                                   num_decoder_layers=1),
        budget=config_lib.Budget(**{"train_steps": 4, "batch_size": 8, "inputs_length": 96, "targets_length": 24,
                                    "checkpoint_period": 2, **budget}),
        report=config_lib.ReportSpec(html_examples=5))


def test_run_report_rerun_and_resume(tmp_path, monkeypatch):
    config = _config(tmp_path)
    calls = {"n": 0}
    original = runner.Progress.training

    def crash_at_step_3(self, head, step, total, started):
        calls["n"] += 1
        if "recent_doc" in head and step == 3:
            raise KeyboardInterrupt("simulated crash")
        return original(self, head, step, total, started)

    monkeypatch.setattr(runner.Progress, "training", crash_at_step_3)
    out = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        runner.run_experiment(config=config, stream=out)
    paths = runner.Paths(config)
    assert (tmp_path / "out" / "steps" / "predict_immed_ctx.json").exists()
    assert not (tmp_path / "out" / "steps" / "train_recent_doc.json").exists()
    # Checkpoints are committed asynchronously (orbax): wait for the step-2 one to land.
    import pathlib
    import time

    from personalize_t5x.trainer import checkpoints as checkpoints_lib

    train_dir = pathlib.Path(tmp_path / "out" / "rows" / "recent_doc" / "train")
    deadline = time.monotonic() + 60
    while checkpoints_lib.latest_step_dir(train_dir) is None and time.monotonic() < deadline:
        time.sleep(0.5)
    latest = checkpoints_lib.latest_step_dir(train_dir)
    assert latest is not None and latest.name == "checkpoint_2"
    monkeypatch.setattr(runner.Progress, "training", original)

    out = io.StringIO()
    result = runner.run_experiment(config=config, stream=out)
    ran = [s.name for s in result.steps if not s.skipped]
    assert ran == ["train/recent_doc", "predict/recent_doc", "report"]
    text = out.getvalue()
    assert "[ 1/10] convert" in text and "finished earlier; skipped" in text
    # resumed from checkpoint_2: the progress counted the 2 steps left, not 4
    assert "step 2/2" in text

    report = json.loads(open(result.report_paths["json"]).read())
    assert [r["row"] for r in report["rows"]] == ["immed_ctx", "recent_doc", "copy_start"]
    for row in report["rows"]:
        assert all(math.isfinite(row["metrics"][m]) for m in ("bleu", "rouge1", "rouge2", "rougeL"))
    recent = report["rows"][1]
    assert recent["parent"] == "immed_ctx"
    assert set(recent["vs_immed_ctx"]) == {"bleu", "rouge1", "rouge2", "rougeL"}
    assert all(isinstance(t["significant"], bool) and 0 <= t["p"] <= 1 for t in recent["vs_immed_ctx"].values())
    assert report["retrieval"]["rankers"][0]["per_example"]["example_id"]
    assert report["examples"] == len(report["per_example"]["immed_ctx"]["rougeL"]) > 0
    assert report["dataset"]["splits"]["test"]["examples"] == report["examples"]
    for key in ("markdown", "csv", "json", "metrics_png", "gains_png", "html", "retrieval_csv"):
        assert open(result.report_paths[key], "rb").read(), key
    assert "report: " + result.report_paths["markdown"] in text

    again = io.StringIO()
    result = runner.run_experiment(config=config, stream=again)
    assert result.did_nothing
    assert "nothing to do" in again.getvalue()
    assert paths.report in result.report_paths["markdown"]


def test_a_changed_budget_retrains_from_scratch(tmp_path):
    config = _config(tmp_path)
    runner.run_experiment(config=config, stream=io.StringIO())
    changed = _config(tmp_path, learning_rate=0.05)
    out = io.StringIO()
    result = runner.run_experiment(config=changed, stream=out)
    ran = [s.name for s in result.steps if not s.skipped]
    # the data steps are reused; both rows train again, from step 0
    assert ran == ["train/immed_ctx", "predict/immed_ctx", "train/recent_doc", "predict/recent_doc", "report"]
    assert "step 4/4" in out.getvalue()


def test_config_errors_are_caught_before_any_step(tmp_path):
    with pytest.raises(ValueError, match="unknown row 'rank_everything'"):
        _config(tmp_path).__class__(**{**_config(tmp_path).__dict__, "variants": ("immed_ctx", "rank_everything")})
    with pytest.raises(ValueError, match="reads 'rank_doc_bm25'"):
        config_lib.ExperimentConfig(name="x", output_dir=str(tmp_path), corpus=config_lib.CorpusSpec("jsonl", ("a",)),
                                    variants=("rank_doc_bm25",),
                                    retrieval=config_lib.RetrievalSpec(strategies=("recent_doc",), summary_ranker="recent_doc"))
    with pytest.raises(ValueError, match="budget.decoding"):
        config_lib.Budget(decoding="sampling")
    with pytest.raises(ValueError, match="corpus.format"):
        config_lib.CorpusSpec("docx", ("a",))


def test_rows_reading_summaries_and_keywords_get_the_auxiliary_models_predictions(tmp_path):
    """SynCtx reads summary_ctx and keywords_ctx: `run` trains the SumCtx and SynCtx models,
    decodes every split with them and joins the predictions before training the row."""
    from personalize_t5x import feature_names as fn
    from personalize_t5x.io import tfrecords
    from personalize_t5x.pipeline import aux_join

    base = _config(tmp_path)
    config = config_lib.ExperimentConfig(**{**base.__dict__, "variants": ("immed_ctx", "syn_ctx"),
                                            "aux": config_lib.AuxSpec(train_steps=3, targets_length=16)})
    assert config.aux_models == ("sum_ctx", "syn_ctx") and base.aux_models == ()
    out = io.StringIO()
    result = runner.run_experiment(config=config, stream=out)
    ran = [s.name for s in result.steps if not s.skipped]
    assert ran == ["convert", "examples", "vocab", "features", "retrieval",
                   "aux_train/sum_ctx", "aux_predict/sum_ctx", "aux_train/syn_ctx", "aux_predict/syn_ctx", "aux_join",
                   "train/immed_ctx", "predict/immed_ctx", "train/syn_ctx", "predict/syn_ctx", "report"]
    assert "[15/15] report" in out.getvalue()
    records = {s.name: s.result for s in result.steps}
    assert records["aux_train/sum_ctx"]["step"] == 3

    paths = runner.Paths(config)
    manifest = json.loads(open(f"{paths.features}/manifest.json").read())
    assert manifest["aux_predictions"]["models"] == ["sum_ctx", "syn_ctx"]
    for model, feature in (("sum_ctx", fn.SUMMARY_CTX), ("syn_ctx", fn.KEYWORDS_CTX)):
        predicted = records[f"aux_predict/{model}"]["paths"]
        for split in fn.SPLITS:
            by_id = aux_join.read_predictions(predicted[split])
            joined = {}
            for name in manifest["splits"][split]["files"]:
                if name.startswith(f"{split}.tfrecord-"):
                    for data in tfrecords.iter_tfrecord(f"{paths.features}/{name}"):
                        features = tfrecords.parse_bytes_example(data)
                        joined[features[fn.EXAMPLE_ID].decode()] = features[feature].decode()
            # every example of every split has the model's own prediction, nothing else
            assert joined == by_id and joined, (model, split)
        empty = records[f"aux_predict/{model}"]["empty_predictions"]
        assert set(empty) == set(fn.SPLITS)

    report = json.loads(open(result.report_paths["json"]).read())
    assert set(report["aux_models"]) == {"sum_ctx", "syn_ctx"}
    assert report["aux_models"]["syn_ctx"]["predictions"]["test"] == report["examples"]
    assert "## Auxiliary models" in open(result.report_paths["markdown"]).read()

    again = io.StringIO()
    assert runner.run_experiment(config=config, stream=again).did_nothing
