"""The measurement behind the 50-d GloVe threshold of the SynCtx weak labels.

The paper matches a target word and a ranked-entry word when their uncased Common Crawl
300-d GloVe vectors are closer than Euclidean distance 4. The packaged vectors are
glove.6B 50-d, whose distances live on another scale, so the threshold is re-chosen here
from two populations of word pairs among the `--top` most frequent GloVe words that are
not stopwords:
  - related pairs: single-word WordNet 3.0 synonyms (what the paper's second rule matches);
  - unrelated pairs: uniformly random pairs (what a threshold must mostly reject).
It prints distance quantiles of both, and for candidate thresholds the share of random
pairs matched (false matches) and of synonym pairs matched (recall). The chosen threshold
is the largest one whose random-pair match rate stays at or below `--false-rate`
(default 0.1%), rounded down to 0.05. docs/summaries_and_keywords.md quotes the figures.

    python bench/glove_threshold_bench.py [--top 50000] [--false-rate 0.001]
"""
from __future__ import annotations

import argparse
import subprocess
import time

import numpy as np

from personalize_t5x.pipeline import lexicons


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--top", type=int, default=50_000)
    parser.add_argument("--random-pairs", type=int, default=2_000_000)
    parser.add_argument("--false-rate", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    start = time.perf_counter()
    glove = lexicons.load_glove()
    wordnet = lexicons.WordNet()
    words = [w for w, row in sorted(glove.row_of.items(), key=lambda kv: kv[1])[: args.top * 2]
             if w.isalpha() and w not in lexicons.ENGLISH_STOPWORDS][: args.top]
    _, vectors = glove.lookup(words)
    position = {w: i for i, w in enumerate(words)}
    synonym_pairs = set()
    for word in words:
        for other in wordnet.synonyms(word):
            j = position.get(other)
            if j is not None:
                i = position[word]
                synonym_pairs.add((min(i, j), max(i, j)))
    pairs = np.array(sorted(synonym_pairs), dtype=np.int64)
    synonym_distances = np.linalg.norm(vectors[pairs[:, 0]] - vectors[pairs[:, 1]], axis=1)
    rng = np.random.default_rng(args.seed)
    a = rng.integers(0, len(words), args.random_pairs)
    b = rng.integers(0, len(words), args.random_pairs)
    keep = a != b
    random_distances = np.linalg.norm(vectors[a[keep]] - vectors[b[keep]], axis=1)
    print(f"GloVe {glove.source}: {len(words):,} frequent non-stopwords; {len(pairs):,} WordNet synonym pairs; "
          f"{keep.sum():,} random pairs ({time.perf_counter() - start:.1f} s)")
    quantiles = (0.01, 0.05, 0.25, 0.5, 0.75)
    print("distance quantiles", quantiles)
    print("  synonyms:", " ".join(f"{q:.2f}" for q in np.quantile(synonym_distances, quantiles)))
    print("  random:  ", " ".join(f"{q:.2f}" for q in np.quantile(random_distances, quantiles)))
    print("threshold  random matched  synonyms matched")
    for threshold in np.arange(2.0, 5.01, 0.25):
        false_rate = float((random_distances < threshold).mean())
        recall = float((synonym_distances < threshold).mean())
        print(f"  {threshold:5.2f}   {false_rate:12.4%}   {recall:14.2%}")
    sorted_random = np.sort(random_distances)
    limit = sorted_random[int(args.false_rate * len(sorted_random))]
    chosen = np.floor(limit * 20) / 20
    print(f"chosen threshold: {chosen:.2f} (random-pair match rate {float((random_distances < chosen).mean()):.4%} "
          f"<= {args.false_rate:.2%}; synonym recall {float((synonym_distances < chosen).mean()):.2%})")


if __name__ == "__main__":
    main()
