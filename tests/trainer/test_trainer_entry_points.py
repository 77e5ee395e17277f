"""`personalize-t5x train|eval|infer` end to end on a tiny task, and their one-line errors."""
import json
import pathlib

import numpy as np
import pytest

import tiny_task
from personalize_t5x import cli

MODEL_GIN = "--gin_file=models/t5_1_1_tiny.gin"
TASK_FLAGS = [
    f"--gin.MIXTURE_OR_TASK_NAME='{tiny_task.TASK_NAME}'",
    "--gin.MIXTURE_OR_TASK_MODULE='tiny_task'",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 16}",
    "--gin.PREDICT_OPTIONS={'method': 'greedy'}",
]


def train_args(model_dir, steps=4, extra=()):
    return ["train", MODEL_GIN, "--gin_file=runs/finetune.gin", f"--gin.MODEL_DIR='{model_dir}'",
            *TASK_FLAGS, f"--gin.TRAIN_STEPS={steps}", "--gin.BATCH_SIZE=8", "--gin.EVAL_PERIOD=4",
            "--gin.EVAL_STEPS=1", "--gin.CHECKPOINT_PERIOD=2", "--gin.LOG_PERIOD=2", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("run") / "model"
    assert cli.main(train_args(model_dir)) == 0
    return model_dir


def test_train_writes_checkpoints_config_model_info_and_summaries(trained, capsys):
    from personalize_t5x.network import t5

    assert sorted(p.name for p in trained.glob("checkpoint_*")) == ["checkpoint_2", "checkpoint_4"]
    config = (trained / "config.gin").read_text()
    assert "TRAIN_STEPS = 4" in config and "t5.T5Config" in config and "DROPOUT_RATE = 0.1" in config
    info = (trained / "model-info.txt").read_text().splitlines()
    expected = t5.T5Config(vocab_size=128, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
                           num_encoder_layers=2, num_decoder_layers=2,
                           mlp_activations=("gelu", "linear")).num_params
    assert info[-1] == f"Total number of parameters: {expected}"
    mlp = [line for line in info if "encoder/layers_0/mlp/wi_0/kernel" in line]
    assert mlp and "logical_axes ('embed', 'mlp')" in mlp[0] and "shape (32, 64)" in mlp[0]
    tags = _summary_tags(trained / "train")
    assert {"loss", "learning_rate", "timing/examples_per_second", "timing/tokens_per_second"} <= set(tags)
    assert tags["learning_rate"][0] > 0 and all(step in (2, 4) for step in tags["loss"])
    assert list((trained / "training_eval" / tiny_task.TASK_NAME).glob("events.out.tfevents.*"))
    metrics = (trained / "inference_eval" / f"{tiny_task.TASK_NAME}-metrics.jsonl").read_text()
    assert '"exact_match"' in metrics and '"step": 4' in metrics


def _summary_tags(logdir: pathlib.Path) -> dict:
    """{tag: [steps]} of the TensorBoard event files in logdir."""
    import tensorflow as tf

    tags: dict = {}
    for path in logdir.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(event.step)
    return tags


def test_gin_bindings_flag_and_shorthand_are_the_same_binding():
    from personalize_t5x.trainer import gin_utils

    rewritten = gin_utils.rewrite_gin_args(["--gin.TRAIN_STEPS=7", "--gin_file=x.gin", "--gin_bindings=A = 1"])
    assert rewritten == ["--gin_bindings=TRAIN_STEPS = 7", "--gin_file=x.gin", "--gin_bindings=A = 1"]
    assert gin_utils.DEFAULT_GIN_SEARCH_PATHS[0].endswith("gin")


def test_eval_writes_metrics_json(trained, tmp_path):
    out = tmp_path / "eval"
    args = ["eval", MODEL_GIN, "--gin_file=runs/eval.gin", f"--gin.CHECKPOINT_PATH='{trained}'",
            "--gin.utils.RestoreCheckpointConfig.mode='latest'", f"--gin.EVAL_OUTPUT_DIR='{out}'", *TASK_FLAGS]
    assert cli.main(args) == 0
    result = json.loads((out / "metrics.json").read_text())
    assert result["step"] == 4 and result["split"] == "test"
    task_metrics = result["metrics"][tiny_task.TASK_NAME]
    assert 0.0 <= task_metrics["exact_match"] <= 1.0
    assert task_metrics["teacher_forced/loss"] > 0
    assert task_metrics["teacher_forced/nonpadding_target_tokens"] > 12  # every test target counted


def test_infer_writes_one_jsonl_record_per_example(trained, tmp_path):
    out = tmp_path / "infer"
    args = ["infer", MODEL_GIN, "--gin_file=runs/infer.gin", f"--gin.CHECKPOINT_PATH='{trained}/checkpoint_4'",
            f"--gin.INFER_OUTPUT_DIR='{out}'", *TASK_FLAGS]
    assert cli.main(args) == 0
    lines = (out / f"{tiny_task.TASK_NAME}-test.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["example_id"] for r in records] == [f"test-{i}" for i in range(12)]
    for record in records:
        assert record["target"] == record["inputs"][::-1]  # the task reverses its inputs
        assert isinstance(record["prediction"], list) and len(record["prediction"]) <= 16
        assert all(isinstance(t, int) and 0 < t < 128 for t in record["prediction"])


def _one_line_error(capsys, args, *needles):
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    message = [line for line in err if line.startswith("error: ")]
    assert len(message) == 1, err
    assert "Traceback" not in "\n".join(err)
    for needle in needles:
        assert needle in message[0], message[0]
    return message[0]


def test_gin_typo_in_a_binding_and_in_a_file(tmp_path, capsys):
    _one_line_error(capsys, train_args(tmp_path / "m", extra=["--gin.trainer.Trainer.num_microbatchs=2"]),
                    "num_microbatchs")
    bad = tmp_path / "bad.gin"
    bad.write_text("from __gin__ import dynamic_registration\nfrom personalize_t5x.trainer import trainer\n"
                   "trainer.Trainer.num_microbatchs = 2\n")
    _one_line_error(capsys, train_args(tmp_path / "m", extra=[f"--gin_file={bad}"]), "num_microbatchs", "bad.gin")


def test_unknown_task_names_the_close_match(tmp_path, capsys):
    args = train_args(tmp_path / "m", extra=["--gin.MIXTURE_OR_TASK_NAME='trainer_test_revers'"])
    _one_line_error(capsys, args, "unknown seqio task or mixture 'trainer_test_revers'", tiny_task.TASK_NAME)


def test_unwritable_model_dir(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    _one_line_error(capsys, train_args(blocker / "model"), "MODEL_DIR", "is not writable")


def test_checkpoint_of_the_wrong_shape(trained, tmp_path, capsys):
    args = train_args(tmp_path / "m", extra=[f"--gin.INITIAL_CHECKPOINT_PATH='{trained}'",
                                             "--gin.t5.T5Config.mlp_dim=48"])
    _one_line_error(capsys, args, "has shape", "(32, 64)", "(32, 48)")


def test_missing_required_macro(tmp_path, capsys):
    args = [a for a in train_args(tmp_path / "m") if not a.startswith("--gin.TRAIN_STEPS")]
    _one_line_error(capsys, args, "TRAIN_STEPS")
