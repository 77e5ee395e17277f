"""What stages 3 and 4 cost the features stage, and the auxiliary models' inference speed.

0. CPU time, in one process, of the per-user work with and without stages 3-4 (the ranking
   the stage always does vs summary_and_keyword_fields on top of it, sharing the embedding
   cache), and the one-off loads: robust to a shared machine, where wall-clock is not.
1. Features time with and without summaries + keywords + weak labels (the peer: the same
   features stage with `summaries_and_keywords=False`, measured in the same run on the same
   examples): a synthetic corpus (personalize_t5x.pipeline.synthetic, the features bench's
   generator; default 100 users x 30 documents), every ranking strategy, the real
   all-MiniLM-L6-v2 encoder, DirectRunner with 2 worker processes. Runs alternate
   (off, on, on, off, ...) and the best of each side is kept. Target: at most +20%.
2. With --aux-steps N > 0: the SumCtx and SynCtx tasks trained N steps on that corpus's
   features (tiny T5 1.1, gin/experiments/aux_*.gin, `python -m personalize_t5x.trainer.train`)
   and their inference (`python -m personalize_t5x.trainer.infer`, greedy, split
   infer_validation) timed: examples/s and mean predicted characters. The tiny model is
   the throughput of the code path, not of a useful model.

    python bench/keywords_bench.py [--users 100] [--docs-per-user 30] [--repeats 2] [--aux-steps 20]

Quote `uptime` with the figures: the machine is shared.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPIECE = os.path.join(REPO, "tests", "fixtures", "hf_t5_tiny", "gtr", "spiece.model")


def run_features(examples_dir: str, output_dir: str, *, summaries: bool, workers: int) -> tuple[float, int]:
    from personalize_t5x.pipeline import features

    config = features.FeaturesConfig(num_shards=2, direct_num_workers=workers, direct_running_mode="multi_processing",
                                     summaries_and_keywords=summaries)
    start = time.perf_counter()
    result = features.run_features(examples_dir=examples_dir, output_dir=output_dir, config=config, force=True, progress=False)
    elapsed = time.perf_counter() - start
    return elapsed, sum(v for k, v in result.counters.items() if k.startswith("examples_written."))


def cpu_breakdown(documents, result, *, users: int) -> list[str]:
    """In one process, per user: CPU seconds (time.process_time: this process only, so the
    neighbours' load does not count) of the ranking the features stage always does, and of
    stages 3-4 on top of it (same EmbeddingCache), plus the once-per-worker loads."""
    import collections

    from personalize_t5x.pipeline import features, keywords
    from personalize_t5x.pipeline.corpus.records import example_from_json, join_title_and_text
    from personalize_t5x.pipeline.retrieval import encoders, ranking

    config = features.FeaturesConfig()
    encoder = encoders.SentenceEncoder.from_pretrained(encoders.default_encoder_path())
    by_user = collections.defaultdict(list)
    for d in result.documents:
        by_user[d.user_id].append(d)
    examples = collections.defaultdict(list)
    for split in result.examples:
        for e in result.examples[split]:
            examples[e["user_id"]].append(example_from_json(e))
    start = time.process_time()
    train_ids = {i for e in result.examples["train"] for i in (e["doc_id"], *e["profile"])}
    idf = keywords.build_idf_table(join_title_and_text(d.title, d.text) for d in result.documents if d.doc_id in train_ids)
    idf_seconds = time.process_time() - start
    start = time.process_time()
    resources = features.load_summary_resources(config, idf=idf, with_weak_labels=True)
    load_seconds = time.process_time() - start
    encoder.encode(["warm up the compiled shapes"] * 8)
    rank_seconds = stage_seconds = 0.0
    n = 0
    for user in sorted(examples)[:users]:
        cache = encoders.EmbeddingCache(encoder, batch_size=config.ranking.batch_size)
        t0 = time.process_time()
        results = ranking.rank_user_examples(by_user[user], examples[user], encoder=cache, config=config.ranking)
        t1 = time.process_time()
        features.summary_and_keyword_fields(by_user[user], results, cache=cache, resources=resources, config=config)
        t2 = time.process_time()
        rank_seconds += t1 - t0
        stage_seconds += t2 - t1
        n += len(results)
    return [
        f"CPU seconds over {n} examples of {min(users, len(examples))} users (in-process, time.process_time):",
        f"  ranking (every strategy, MiniLM)      {rank_seconds:8.1f}",
        f"  stages 3-4 on top (same cache)        {stage_seconds:8.1f}  = {stage_seconds / rank_seconds * 100:+.1f}% of ranking",
        f"  once per run: IDF table {idf_seconds:.1f} s; once per worker: WordNet + GloVe load {load_seconds:.1f} s",
    ]


def aux_inference(data_dir: str, workdir: str, steps: int) -> list[str]:
    import sentencepiece

    vocab_size = sentencepiece.SentencePieceProcessor(model_file=SPIECE).vocab_size() + 100
    env = {**os.environ, "PYTHONPATH": REPO, "PERSONALIZE_T5X_DATA_DIR": data_dir}
    lengths = "{'inputs': 512, 'targets': 64}"
    lines = []
    for model in ("sum_ctx", "syn_ctx"):
        model_dir = os.path.join(workdir, f"aux_{model}")
        common = ["--gin_file=models/t5_1_1_tiny.gin", "--gin.DATASET='bench'", f"--gin.VOCAB_SIZE={vocab_size}",
                  f"--gin.TASK_FEATURE_LENGTHS={lengths}", "--gin.PREDICT_OPTIONS={'method': 'greedy'}"]
        subprocess.run([sys.executable, "-m", "personalize_t5x.trainer.train", f"--gin_file=experiments/aux_{model}.gin", *common,
                        f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={steps}", "--gin.BATCH_SIZE=8",
                        f"--gin.EVAL_PERIOD={steps}", "--gin.EVAL_STEPS=1", f"--gin.CHECKPOINT_PERIOD={steps}"],
                       env=env, check=True, capture_output=True, cwd=REPO)
        predictions = os.path.join(workdir, "predictions")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "personalize_t5x.trainer.infer", f"--gin_file=experiments/aux_{model}_infer.gin", *common,
                        f"--gin.CHECKPOINT_PATH='{model_dir}'", f"--gin.INFER_OUTPUT_DIR='{predictions}'",
                        "--gin.MIXTURE_OR_TASK_SPLIT='infer_validation'", "--gin.utils.DatasetConfig.batch_size=32"],
                       env=env, check=True, capture_output=True, cwd=REPO)
        elapsed = time.perf_counter() - start
        with open(os.path.join(predictions, f"personalize_bench_aux_{model}-infer_validation.jsonl")) as f:
            records = [json.loads(line) for line in f]
        chars = sum(len(r["prediction"]) for r in records) / max(len(records), 1)
        lines.append(f"aux {model}: {len(records)} examples in {elapsed:.1f} s (process start, restore, compile included) = "
                     f"{len(records) / elapsed:.2f} examples/s; mean prediction {chars:.0f} chars (tiny T5, {steps} steps, greedy)")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--docs-per-user", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="pipeline runs of each side (0: only the CPU breakdown)")
    parser.add_argument("--cpu-users", type=int, default=10, help="users in the in-process CPU-time breakdown")
    parser.add_argument("--aux-steps", type=int, default=0, help="train the auxiliary models this many steps and time their inference")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(), flush=True)
    workdir = tempfile.mkdtemp(prefix="keywords-bench-")
    try:
        return _run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run(args, workdir: str) -> int:
    from personalize_t5x.pipeline import examples as examples_lib
    from personalize_t5x.pipeline import synthetic

    dataset_dir = os.path.join(workdir, "data", "bench")
    examples_dir = os.path.join(dataset_dir, "examples")
    documents = synthetic.generate_corpus(num_users=args.users, docs_per_user=args.docs_per_user, seed=args.seed)
    result = examples_lib.build_examples(documents, config=examples_lib.ExampleConfig(seed=args.seed))
    examples_lib.write_examples(result, examples_dir)
    n = sum(len(v) for v in result.examples.values())
    print(f"corpus: {args.users} users x {args.docs_per_user} documents -> {n} examples "
          f"({len(result.examples['train'])} train); {args.workers} DirectRunner workers", flush=True)
    for line in cpu_breakdown(documents, result, users=args.cpu_users):
        print(line, flush=True)
    best: dict[bool, float] = {}
    for repeat in range(args.repeats):
        for summaries in ((False, True) if repeat % 2 == 0 else (True, False)):
            out = os.path.join(dataset_dir, "features" if summaries else "features-off")
            elapsed, written = run_features(examples_dir, out, summaries=summaries, workers=args.workers)
            best[summaries] = min(best.get(summaries, elapsed), elapsed)
            print(f"  summaries+keywords {'on ' if summaries else 'off'} run {repeat + 1}: {written} examples in {elapsed:6.1f} s", flush=True)
    if not best:
        return 0
    print(f"features time, best of {args.repeats}: without {best[False]:.1f} s, with {best[True]:.1f} s: "
          f"{best[True] / best[False]:.3f}x ({(best[True] / best[False] - 1) * 100:+.1f}%; target <= +20%)")
    if args.aux_steps > 0:
        with open(os.path.join(dataset_dir, "tasks.json"), "w") as f:
            json.dump({"vocabulary": SPIECE}, f)
        for line in aux_inference(os.path.join(workdir, "data"), workdir, args.aux_steps):
            print(line)
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
