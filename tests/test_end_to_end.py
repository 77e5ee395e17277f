"""End to end (issue 4, item 6): corpus -> examples -> Beam features -> vocabulary ->
the rank_doc_by_snpt mixture -> a few training steps of the tiny T5 -> evaluation with
the paper's metrics. Every stage is the real one; only the sizes are small."""
import json
import math
import os
import subprocess
import sys

import pytest

from personalize_t5x.pipeline import examples as ex
from personalize_t5x.pipeline import features as features_lib
from personalize_t5x.tasks import vocab as vocab_lib
from personalize_t5x.pipeline.synthetic import generate_corpus

DATASET = "e2e"
MIXTURE = f"personalize_{DATASET}_rank_doc_by_snpt_author_mix"
GENERATION_TASK = f"personalize_{DATASET}_rank_doc_by_snpt"
AUTHOR_TASK = f"personalize_{DATASET}_author_distinction"


def _python(module, *argv, env, cwd):
    result = subprocess.run([sys.executable, "-m", module, *argv], env=env, cwd=cwd, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.mark.slow
def test_corpus_to_trained_and_evaluated_model(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    documents = list(generate_corpus(num_users=20, docs_per_user=9, seed=11))
    result = ex.build_examples(documents, config=ex.ExampleConfig(split_fractions=(0.7, 0.15, 0.15), seed=1))
    examples_dir = tmp_path / "examples"
    ex.write_examples(result, examples_dir)
    assert all(result.examples[s] for s in ex.SPLITS)

    data_dir = tmp_path / "data"
    features_dir = data_dir / DATASET / "features"
    features_lib.run_features(
        examples_dir=str(examples_dir), output_dir=str(features_dir), progress=False,
        config=features_lib.FeaturesConfig(strategies=("rank_doc_by_snpt",), direct_running_mode="in_memory",
                                           direct_num_workers=1))
    vocab_path = data_dir / DATASET / "vocab" / "spm.model"
    pieces = vocab_lib.train_sentencepiece(vocab_lib.training_sentences(str(examples_dir)), str(vocab_path), 400)
    vocab_size = -(-(pieces + 100) // 128) * 128

    env = {**os.environ, "PERSONALIZE_T5X_DATA_DIR": str(data_dir)}
    model_dir = tmp_path / "model"
    common = [f"--gin.VOCAB_SIZE={vocab_size}", "--gin.TASK_FEATURE_LENGTHS={'inputs': 96, 'targets': 48}"]
    log = _python("personalize_t5x.trainer.train", "--gin_file=experiments/demo_tiny_cpu.gin",
                  f"--gin.MODEL_DIR='{model_dir}'", f"--gin.MIXTURE_OR_TASK_NAME='{MIXTURE}'",
                  "--gin.TRAIN_STEPS=4", "--gin.EVAL_PERIOD=0", "--gin.BATCH_SIZE=8", "--gin.LOG_PERIOD=2",
                  *common, env=env, cwd=repo)
    assert "step 4/4" in log
    assert (model_dir / "checkpoint_4").is_dir() and (model_dir / "config.gin").exists()

    eval_dir = tmp_path / "eval"
    _python("personalize_t5x.trainer.eval", "--gin_file=models/t5_1_1_tiny.gin", "--gin_file=runs/eval.gin",
            f"--gin.CHECKPOINT_PATH='{model_dir}'", "--gin.utils.RestoreCheckpointConfig.mode='latest'",
            f"--gin.MIXTURE_OR_TASK_NAME='{MIXTURE}'",
            f"--gin.EVAL_OUTPUT_DIR='{eval_dir}'", "--gin.MIXTURE_OR_TASK_SPLIT='validation'",
            "--gin.PREDICT_OPTIONS={'method': 'greedy'}", *common, env=env, cwd=repo)
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    flat = json.dumps(metrics)
    for name in ("bleu", "rouge1", "rouge2", "rougeL", "accuracy"):
        assert f'"{name}"' in flat, f"{name} missing from {flat[:500]}"

    def values(node):
        if isinstance(node, dict):
            for value in node.values():
                yield from values(value)
        elif isinstance(node, (int, float)):
            yield node

    assert all(math.isfinite(v) for v in values(metrics))
    assert GENERATION_TASK in flat and AUTHOR_TASK in flat
