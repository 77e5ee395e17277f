"""`personalize-t5x demo`: the whole pipeline on the bundled synthetic demo corpus.

Every stage is the same code a user runs on a real corpus, through the same functions the
other commands call; each writes its folder under --output-dir and is skipped on a rerun
once finished.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from importlib import resources

from personalize_t5x.pipeline import examples as examples_lib
from personalize_t5x.commands import corpus as corpus_command


def demo_corpus_path() -> str:
    return str(resources.files("personalize_t5x").joinpath("demo/demo_corpus.jsonl.gz"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", default="demo_output", help="where every stage writes its folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop-after", choices=("examples", "vocab", "all"), default="all",
                        help="stop after this stage (default: run everything)")
    parser.add_argument("--variant", default="rank_doc_by_snpt",
                        help="which paper row to train (mixed 1:1 with author distinction)")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--vocab-size", type=int, default=1000, help="SentencePiece pieces for the demo vocabulary")
    parser.add_argument("--direct-num-workers", type=int, default=2, help="Beam DirectRunner worker processes")


def _banner(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)), flush=True)


def _quiet_logs() -> None:
    """The demo is read by people: keep Beam's and TensorFlow's chatter out of it."""
    import logging

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in ("apache_beam", "absl", "root"):
        logging.getLogger(name if name != "root" else None).setLevel(logging.ERROR)


def run(args: argparse.Namespace) -> int:
    _quiet_logs()
    started = time.perf_counter()
    out = args.output_dir
    os.makedirs(out, exist_ok=True)

    _banner("1. corpus convert (Document JSONL)")
    documents_path = os.path.join(out, "corpus", "documents.jsonl.gz")
    if not os.path.exists(documents_path):
        report = corpus_command.convert(fmt="jsonl", inputs=[demo_corpus_path()], output=documents_path)
        print(f"wrote {report.kept:,} documents to {documents_path}")
    else:
        print(f"{documents_path} exists; skipped")

    _banner("2. examples build (paper filters, 85/5/10 user split, author pairs)")
    examples_dir = os.path.join(out, "examples")
    if not os.path.exists(os.path.join(examples_dir, examples_lib.STATS_FILE)):
        from personalize_t5x.pipeline.corpus.records import read_documents

        result = examples_lib.build_examples(read_documents(documents_path),
                                             config=examples_lib.ExampleConfig(seed=args.seed))
        examples_lib.write_examples(result, examples_dir)
        stats = result.stats
    else:
        import json

        with open(os.path.join(examples_dir, examples_lib.STATS_FILE)) as f:
            stats = json.load(f)
        print(f"{examples_dir} exists; skipped")
    print(examples_lib.format_stats_table(stats))
    if args.stop_after == "examples":
        return _finish(started, out)

    # The tasks registry finds datasets as DATA_DIR/<name>/{features,vocab/spm.model}.
    data_dir = os.path.join(out, "data")
    features_dir = os.path.join(data_dir, DATASET, "features")
    vocab_path = os.path.join(data_dir, DATASET, "vocab", "spm.model")

    _banner("3. features (Apache Beam, DirectRunner): BM25, MiniLM, the five rankers")
    _cli("features", "--examples-dir", examples_dir, "--output-dir", features_dir,
         "--direct-num-workers", str(args.direct_num_workers), "--default_sdk_harness_log_level=ERROR")

    _banner("4. eval-retrieval: ROUGE of each ranker's text against the target")
    retrieval_dir = os.path.join(out, "retrieval_eval")
    _cli("eval-retrieval", "--features-dir", features_dir, "--output-dir", retrieval_dir)

    _banner("5. vocab: SentencePiece on the training split (T5 ids: pad 0, eos 1, unk 2)")
    if not os.path.exists(vocab_path):
        _cli("vocab", "--examples-dir", examples_dir, "--output", vocab_path, "--vocab-size", str(args.vocab_size))
    else:
        print(f"{vocab_path} exists; skipped")
    if args.stop_after == "vocab":
        return _finish(started, out)

    vocab_size = _model_vocab_size(vocab_path)
    env = {**os.environ, "PERSONALIZE_T5X_DATA_DIR": os.path.abspath(data_dir)}
    model_dir = os.path.join(out, "model")
    mixture = f"personalize_{DATASET}_{args.variant}_author_mix"
    generation_task = f"personalize_{DATASET}_{args.variant}"
    common = [f"--gin.VOCAB_SIZE={vocab_size}", f"--gin.RANDOM_SEED={args.seed}"]

    _banner(f"6. train: tiny T5 1.1 from scratch on {mixture} ({args.train_steps} steps)")
    _python("personalize_t5x.trainer.train", "--gin_file=experiments/demo_tiny_cpu.gin",
            f"--gin.MODEL_DIR='{model_dir}'", f"--gin.MIXTURE_OR_TASK_NAME='{mixture}'",
            f"--gin.TRAIN_STEPS={args.train_steps}", *common, env=env)

    _banner(f"7. infer + eval on the test users: {generation_task}")
    infer_dir = os.path.join(out, "infer")
    _python("personalize_t5x.trainer.infer", "--gin_file=models/t5_1_1_tiny.gin", "--gin_file=runs/infer.gin",
            f"--gin.CHECKPOINT_PATH='{model_dir}'", f"--gin.MIXTURE_OR_TASK_NAME='{generation_task}'",
            f"--gin.INFER_OUTPUT_DIR='{infer_dir}'", "--gin.MIXTURE_OR_TASK_SPLIT='test'",
            f"--gin.TASK_FEATURE_LENGTHS={FEATURE_LENGTHS}", *common, env=env)

    _banner("8. report: the paper's metrics against a copy-the-start baseline, paired t-test")
    predictions_path = os.path.join(infer_dir, f"{generation_task}-test.jsonl")
    write_report(predictions_path=predictions_path, examples_dir=examples_dir, report_dir=os.path.join(out, "report"))
    return _finish(started, out)


def write_report(*, predictions_path: str, examples_dir: str, report_dir: str) -> dict:
    """Scores the model against the simplest baseline on the same test examples: a
    prediction that only repeats the immediate context (what the model was given)."""
    from personalize_t5x.io import files as io_lib
    from personalize_t5x.tasks import significance

    model = significance.read_predictions(predictions_path)
    contexts = {e["example_id"]: e["immediate_context"] for e in examples_lib.read_examples(examples_dir, "test")}
    baseline = [significance.Prediction(p.example_id, p.target, contexts[p.example_id]) for p in model]
    os.makedirs(report_dir, exist_ok=True)
    baseline_path = os.path.join(report_dir, "copy_start_baseline-test.jsonl")
    significance.write_predictions(baseline_path, baseline)
    _cli("compare", predictions_path, baseline_path, "--json", os.path.join(report_dir, "compare.json"))
    with open(os.path.join(report_dir, "compare.json")) as f:
        comparison = json.load(f)
    io_lib.write_json(os.path.join(report_dir, "report.json"), comparison)
    plot_comparison(comparison, os.path.join(report_dir, "report.png"))
    print(f"plot: {os.path.join(report_dir, 'report.png')}")
    return comparison



DATASET = "demo"
FEATURE_LENGTHS = "{'inputs': 128, 'targets': 64}"  # as gin/experiments/demo_tiny_cpu.gin


def _cli(*argv: str) -> None:
    from personalize_t5x import cli

    status = cli.main(list(argv))
    if status:
        raise SystemExit(status)


def _python(module: str, *argv: str, env: dict) -> None:
    """Runs a trainer entry point in a fresh process (its own JAX and gin state)."""
    import subprocess
    import sys

    command = [sys.executable, "-m", module, *argv]
    print("$ " + " ".join(command), flush=True)
    status = subprocess.run(command, env=env).returncode
    if status:
        raise SystemExit(status)


def _model_vocab_size(vocab_path: str) -> int:
    """SentencePiece pieces plus SeqIO's 100 extra ids, rounded up to a multiple of 128
    (as T5's 32,100 ids become a 32,128-row embedding) so the matrix tiles evenly."""
    import sentencepiece as spm

    pieces = spm.SentencePieceProcessor(model_file=vocab_path).get_piece_size()
    return -(-(pieces + 100) // 128) * 128


def _finish(started: float, out: str) -> int:
    print(f"\ndemo finished in {time.perf_counter() - started:.1f} s; outputs under {out}/")
    return 0


def plot_comparison(comparison: dict, path: str) -> None:
    """Bars of the paper's four metrics for the model (A) and the baseline (B)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = comparison["metrics"]
    names = [r["metric"] for r in rows]
    positions = range(len(names))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar([p - 0.2 for p in positions], [r["a"] for r in rows], width=0.4, label="tiny T5 (rank_doc_by_snpt + author)")
    ax.bar([p + 0.2 for p in positions], [r["b"] for r in rows], width=0.4, label="copy the immediate context")
    for p, r in zip(positions, rows):
        if r["significant"]:
            ax.annotate("*", (p, max(r["a"], r["b"]) + 0.5), ha="center")
    ax.set_xticks(list(positions), names)
    ax.set_ylabel("score (%)")
    ax.set_title(f"demo test users, {comparison['examples']} examples (* paired t-test p < {comparison['alpha']:g})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
