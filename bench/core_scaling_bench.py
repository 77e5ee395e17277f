"""What a second worker can add on this machine: the sentence encoder per core.

The features stage's dense strategies spend nearly all their time in the JAX encoder.
XLA spreads one process over every core it may use, so on a small machine one worker
already occupies all cores and a second worker can only add what the first leaves idle.
This script measures the ceiling directly, with the bundled all-MiniLM-L6-v2 on
generated snippets:

  A  one process, all cores (what one default worker gets)
  B  one process pinned to one core (one worker of the one-core-per-worker form)
  C  as many processes as cores, each pinned to its own core, at the same time

and prints the two ceilings for N workers against 1:
  default form   C / A  (workers share the cores one worker already used)
  one-core form  C / B

Usage: python bench/core_scaling_bench.py [--snippets 400]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

WORKER = r"""
import json, os, sys, time
core = int(sys.argv[1])
if core >= 0:
    os.sched_setaffinity(0, {core})  # before JAX starts, as the features workers do
from personalize_t5x.pipeline import synthetic
from personalize_t5x.pipeline.retrieval import encoders
n = int(sys.argv[2])
encoder = encoders.SentenceEncoder.from_pretrained(encoders.default_encoder_path())
texts = [d.text[:250] for d in synthetic.generate_corpus(num_users=max(1, n // 20), docs_per_user=30, seed=0)][:n]
encoder.encode(texts[:64])  # compile
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()  # start together
start = time.perf_counter()
encoder.encode(texts)
print(json.dumps({"texts": len(texts), "seconds": time.perf_counter() - start}), flush=True)
"""


def run_concurrently(cores: list[int], snippets: int) -> float:
    """Starts one process per entry (core, or -1 for unpinned); returns total texts/s."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    processes = [subprocess.Popen([sys.executable, "-c", WORKER, str(core), str(snippets)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env) for core in cores]
    for process in processes:
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("an encoder process failed to start")
    for process in processes:
        process.stdin.write("go\n")
        process.stdin.flush()
    results = [json.loads(process.stdout.readline()) for process in processes]
    for process in processes:
        process.stdin.close()
        process.wait()
    return sum(r["texts"] / r["seconds"] for r in results)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snippets", type=int, default=400, help="snippets each process encodes")
    args = parser.parse_args(argv)
    cores = sorted(os.sched_getaffinity(0))
    all_cores = run_concurrently([-1], args.snippets)
    one_core = run_concurrently([cores[0]], args.snippets)
    every_core_pinned = run_concurrently(cores, args.snippets)
    print(f"cores: {len(cores)}; snippets per process: {args.snippets}")
    print(f"A  1 process, all cores            {all_cores:8.1f} snippets/s")
    print(f"B  1 process, 1 core               {one_core:8.1f} snippets/s")
    print(f"C  {len(cores)} processes, 1 core each        {every_core_pinned:8.1f} snippets/s")
    print(f"ceiling of {len(cores)} workers vs 1, default form (C/A):  {every_core_pinned / all_cores:5.2f}x")
    print(f"ceiling of {len(cores)} workers vs 1, one-core form (C/B): {every_core_pinned / one_core:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
