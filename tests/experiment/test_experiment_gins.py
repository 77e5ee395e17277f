"""gin/experiments/*.gin: each parses into a valid ExperimentConfig that reads like the
experiment (corpus, variants, model, budget, seed), and the demo gin names the rows the
demo must show."""
from __future__ import annotations

import os

import pytest

from personalize_t5x.commands import run as run_command
from personalize_t5x.trainer import gin_utils
from personalize_t5x.trainer.utils import ConfigError

SEARCH = [str(gin_utils.REPO_GIN_DIR), "."]


def _config(name, *bindings):
    return run_command.config_from_gin([f"experiments/{name}.gin"], list(bindings), SEARCH)


def test_demo_gin_runs_the_bundled_corpus_with_the_required_rows():
    config = _config("demo")
    assert config.corpus.format == "jsonl" and len(config.corpus.inputs) == 1
    assert os.path.exists(config.corpus.inputs[0]) and config.corpus.inputs[0].endswith("demo/demo_corpus.jsonl.gz")
    assert config.variants[0] == "immed_ctx"
    assert {"syn_ctx", "syn_ctx_author_mix"} <= set(config.variants)
    assert any(v.startswith("rank_") or v == "recent_doc" for v in config.variants)
    assert config.model.initial_checkpoint is None  # trained from scratch


def test_stackexchange_and_enron_gins_read_the_shared_corpora():
    se = _config("stackexchange")
    assert se.corpus.format == "stackexchange" and [os.path.basename(p) for p in se.corpus.inputs] == ["Posts.xml"] * 2
    enron = _config("enron")
    assert enron.corpus.format == "mbox"
    if os.path.isdir("../shared/data/enron/mbox"):
        assert len(enron.corpus.inputs) > 100 and all(p.endswith(".sent_items.gz") for p in enron.corpus.inputs)
    for config in (se, enron):
        assert "syn_ctx_author_mix" in config.variants and config.variants[0] == "immed_ctx"


def test_paper_gin_needs_a_corpus_checkpoint_and_vocabulary():
    with pytest.raises(ConfigError, match="CORPUS_FORMAT|CORPUS_INPUTS|INITIAL_CHECKPOINT|VOCABULARY"):
        _config("paper")
    config = _config("paper", "CORPUS_FORMAT = 'mbox'", "CORPUS_INPUTS = ['/data/avocado.mbox']",
                     "INITIAL_CHECKPOINT = '/ckpt/xxl'", "VOCABULARY = '/ckpt/spm.model'")
    assert config.model.emb_dim == 4096 and config.model.num_partitions == 8
    assert config.budget.schedule == "paper" and config.budget.learning_rate == 0.001
    assert config.budget.decoding == "beam" and config.budget.beam_size == 4
    assert config.variants[-3:] == ("no_ranked_entries_author_mix", "remove_doc_start_author_mix",
                                    "immed_ctx_at_end_author_mix")


def test_overrides_and_mistakes():
    config = _config("demo", "TRAIN_STEPS = 7", "OUTPUT_DIR = '/tmp/x'")
    assert config.budget.train_steps == 7 and config.output_dir == "/tmp/x"
    with pytest.raises(ConfigError):
        _config("demo", "TRAIN_STEPZ = 7", "run.experiment.nonsense = 1")
    with pytest.raises(ValueError, match="unknown row"):
        _config("demo", "VARIANTS = ['immed_ctx', 'best_row']")


def test_resolve_inputs_globs_and_package_paths(tmp_path):
    (tmp_path / "b.gz").write_text("x")
    (tmp_path / "a.gz").write_text("x")
    assert run_command.resolve_inputs([str(tmp_path / "*.gz")]) == (str(tmp_path / "a.gz"), str(tmp_path / "b.gz"))
    assert run_command.resolve_inputs([str(tmp_path / "none*.gz")]) == (str(tmp_path / "none*.gz"),)
    assert run_command.resolve_inputs(["package:demo/README.md"])[0].endswith("personalize_t5x/demo/README.md")


def test_the_readme_commands_find_the_experiment_gins_from_any_directory(tmp_path, monkeypatch):
    """`personalize-t5x run --gin_file=experiments/demo.gin` (the README's main command, `make
    demo`) and `personalize-t5x demo` parse their command line as the CLI does, in a folder
    that holds no gin files: the project's gin/ folder is searched after --gin_search_paths."""
    import argparse

    from personalize_t5x.commands import demo as demo_command

    monkeypatch.chdir(tmp_path)
    parser = argparse.ArgumentParser()
    run_command.add_arguments(parser)
    args = parser.parse_args(["--gin_file=experiments/demo.gin", "--gin.TRAIN_STEPS=7"])
    config = run_command.config_from_args(args)
    assert config.name == "demo" and config.budget.train_steps == 7
    assert config.aux_models == ("sum_ctx", "syn_ctx")

    parser = argparse.ArgumentParser()
    demo_command.add_arguments(parser)
    args = demo_command.as_run_args(parser.parse_args(["--output-dir", str(tmp_path / "out")]))
    config = run_command.config_from_args(args)
    assert config.name == "demo" and config.output_dir == str(tmp_path / "out")
