"""The experiment runner's overhead beyond the work it drives, and the demo's time per step.

    python bench/run_bench.py [--steps 20] [--demo-output demo_output]

Overhead: one small experiment (the synthetic demo personas, 2 rows, a tiny model) is run
twice in this process on fresh folders:
  peer    the stages called by hand, in order, through personalize_t5x.experiment.stages
          (what a user running the seven commands does, without process start-up), then
          the report;
  runner  `run_experiment` on the same configuration (fingerprints, step records,
          progress lines, task registration, resumability checks).
Overhead = runner / peer - 1 (target: under 5%). The peer runs first; JAX compiles every
row's step functions anew in both (a new Trainer each time), so neither inherits the
other's compilation.

Demo per step: with --demo-output, the wall and CPU seconds of each step of a finished
`make demo` (its steps/*.json), and their totals.

The machine this was measured on is shared; the script prints `uptime` so the figures
can be read with the load they were taken under.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _config(root: str, steps: int):
    from personalize_t5x.experiment import config as config_lib
    from personalize_t5x.pipeline import examples as examples_lib
    from personalize_t5x.pipeline.corpus.records import write_documents
    from personalize_t5x.pipeline.synthetic import generate_demo_corpus

    corpus = os.path.join(root, "corpus.jsonl.gz")
    if not os.path.exists(corpus):
        write_documents(corpus, generate_demo_corpus(num_users=60, docs_per_user=8, seed=7))
    return config_lib.ExperimentConfig(
        name="bench", output_dir=os.path.join(root, "out"), corpus=config_lib.CorpusSpec("jsonl", (corpus,)),
        variants=("immed_ctx", "rank_doc_bm25"),
        examples=examples_lib.ExampleConfig(context_chars=50, min_target_chars=150),
        retrieval=config_lib.RetrievalSpec(strategies=("rank_doc_bm25",), summary_ranker="rank_doc_bm25",
                                           max_chars=450, direct_num_workers=1),
        vocab_size=600,
        model=config_lib.ModelSpec(emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64),
        budget=config_lib.Budget(train_steps=steps, batch_size=16, inputs_length=144, targets_length=72,
                                 checkpoint_period=steps, learning_rate=0.02))


def _by_hand(config) -> float:
    """The peer: every stage in order, no runner."""
    from personalize_t5x.experiment import report as report_lib
    from personalize_t5x.experiment import runner
    from personalize_t5x.experiment import stages

    paths = runner.Paths(config)
    started = time.perf_counter()
    stages.convert_corpus(corpus=config.corpus, output=paths.documents)
    stats = stages.build_examples(documents_path=paths.documents, output_dir=paths.examples,
                                  config=dataclasses.replace(config.examples, seed=config.seed))
    stages.train_vocabulary(examples_dir=paths.examples, output=paths.vocabulary, vocab_size=config.vocab_size,
                            seed=config.seed)
    stages.compute_features(examples_dir=paths.examples, output_dir=paths.features, retrieval=config.retrieval)
    results = stages.evaluate_retrieval(features_dir=paths.features, strategies=config.retrieval.strategies,
                                        split=config.budget.eval_split)
    from personalize_t5x.io import files as io_lib

    io_lib.write_json(paths.retrieval, results)
    stages.register_tasks(name=config.name, features_dir=paths.features, vocabulary_path=paths.vocabulary,
                          summary_ranker=config.retrieval.summary_ranker)
    vocab_size = stages.model_vocab_size(paths.vocabulary)
    predictions = {}
    for row in config.variants:
        task = runner._row_task(config, row)
        stages.train_row(task_name=task, model_dir=paths.train_dir(row), model=config.model, budget=config.budget,
                         vocab_size=vocab_size, seed=config.seed)
        predictions[row] = stages.predict_row(task_name=runner._eval_task(config, row), model_dir=paths.train_dir(row),
                                              output_dir=paths.predictions_dir(row), model=config.model,
                                              budget=config.budget, vocab_size=vocab_size, seed=config.seed)
    report_lib.write_report(config=config, predictions=predictions, examples_dir=paths.examples,
                            retrieval_path=paths.retrieval, dataset_stats=stats, output_dir=paths.report,
                            step_timings={}, features_dir=paths.features)
    return time.perf_counter() - started


def _with_runner(config) -> tuple[float, float]:
    import io

    from personalize_t5x.experiment import runner

    started = time.perf_counter()
    runner.run_experiment(config=config, stream=io.StringIO())
    first = time.perf_counter() - started
    started = time.perf_counter()
    runner.run_experiment(config=config, stream=io.StringIO())
    return first, time.perf_counter() - started


def _demo_table(folder: str) -> None:
    steps_dir = os.path.join(folder, "steps")
    rows, wall, cpu = [], 0.0, 0.0
    for name in sorted(os.listdir(steps_dir), key=lambda n: os.path.getmtime(os.path.join(steps_dir, n))):
        with open(os.path.join(steps_dir, name)) as f:
            marker = json.load(f)
        rows.append((name[:-5], marker["wall_s"], marker["cpu_s"]))
        wall += marker["wall_s"]
        cpu += marker["cpu_s"]
    print(f"\ndemo steps ({folder}):")
    print(f"{'step':<34} {'wall s':>8} {'CPU s':>8}")
    for name, w, c in rows:
        print(f"{name:<34} {w:>8.1f} {c:>8.1f}")
    print(f"{'total':<34} {wall:>8.1f} {cpu:>8.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="training steps per row")
    parser.add_argument("--demo-output", default=None, help="a finished demo's output folder: print its step times")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    with tempfile.TemporaryDirectory() as root:
        peer_root, runner_root = os.path.join(root, "peer"), os.path.join(root, "runner")
        os.makedirs(peer_root)
        os.makedirs(runner_root)
        peer = _by_hand(_config(peer_root, args.steps))
        first, rerun = _with_runner(_config(runner_root, args.steps))
    print(f"stages by hand (peer): {peer:8.1f} s")
    print(f"run_experiment:        {first:8.1f} s   ratio {first / peer:.3f}x, overhead {100 * (first / peer - 1):+.1f}% "
          f"(target < +5%)")
    print(f"rerun (nothing to do): {rerun:8.1f} s")
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    if args.demo_output:
        _demo_table(args.demo_output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
