"""Benchmark: `corpus convert` (JSONL) and `examples build` at 1M documents / 100k users.

Targets (issue 2): examples build >= 50k documents/s on the 2-core reference machine,
peak memory < 3 GiB. Each stage runs as its own process through the real CLI, so the
figures include reading, validation, gzip and writing; peak memory is that process's
maximum resident set size.

Peer, measured in the same run: the floor any JSONL stage pays, a bare
`gzip + json.loads` pass over the same file with no validation and no output. The ratio
says how close each stage comes to that floor.

    python bench/examples_bench.py [--users 100000] [--docs-per-user 10] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from personalize_t5x.pipeline.corpus.records import write_documents  # noqa: E402
from personalize_t5x.pipeline.synthetic import generate_corpus  # noqa: E402

PEER_SCRIPT = """
import gzip, json, sys
n = 0
with gzip.open(sys.argv[1], "rt", encoding="utf-8") as f:
    for line in f:
        json.loads(line)
        n += 1
print(n)
"""


def run_timed(command: list[str]) -> tuple[float, float]:
    """Runs a command; returns (wall seconds, peak RSS of that child in GiB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak_kib < before:  # ru_maxrss is a max over all children so far
        peak_kib = before
    return elapsed, peak_kib / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--docs-per-user", type=int, default=10)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="examples_bench_")
    raw = os.path.join(workdir, "raw.jsonl.gz")
    n_docs = args.users * args.docs_per_user
    started = time.perf_counter()
    write_documents(raw, generate_corpus(num_users=args.users, docs_per_user=args.docs_per_user, seed=0,
                                         short_fraction=0.1, repost_fraction=0.02))
    print(f"generated {n_docs:,} documents of {args.users:,} users in {time.perf_counter() - started:.1f} s "
          f"({os.path.getsize(raw) / 2**20:.0f} MiB gzipped) in {workdir}")
    cli = [sys.executable, "-m", "personalize_t5x.cli"]
    # Peak RSS of children is a running maximum, so measure the lightest stage first.
    peer_s, peer_gib = run_timed([sys.executable, "-c", PEER_SCRIPT, raw])
    convert_s, convert_gib = run_timed([*cli, "corpus", "convert", "--format", "jsonl", "--input", raw,
                                        "--output", os.path.join(workdir, "docs.jsonl.gz")])
    build_s, build_gib = run_timed([*cli, "examples", "build", "--input", os.path.join(workdir, "docs.jsonl.gz"),
                                    "--output-dir", os.path.join(workdir, "examples"), "--overwrite"])
    with open(os.path.join(workdir, "examples", "stats.json")) as f:
        splits = json.load(f)["splits"]
    rows = [
        ("peer: gzip+json.loads only", peer_s, peer_gib),
        ("corpus convert (jsonl)", convert_s, convert_gib),
        ("examples build", build_s, build_gib),
    ]
    print(f"\n{'stage':30s} {'seconds':>8s} {'docs/s':>10s} {'peak GiB':>9s} {'ratio to peer':>14s}")
    for name, seconds, gib in rows:
        print(f"{name:30s} {seconds:8.1f} {n_docs / seconds:10,.0f} {gib:9.2f} {peer_s / seconds:14.2f}")
    print(f"\nexamples: " + ", ".join(f"{s} {v['examples']:,}" for s, v in splits.items()))
    print(f"targets: examples build >= 50,000 docs/s -> {'met' if n_docs / build_s >= 50_000 else 'NOT met'}; "
          f"peak < 3 GiB -> {'met' if build_gib < 3 and convert_gib < 3 else 'NOT met'}")
    print("note: peak GiB is the running maximum over child processes, so each row is an upper bound.")


if __name__ == "__main__":
    main()
