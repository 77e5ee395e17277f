"""Dense encoder throughput on CPU: our JAX `SentenceEncoder` vs sentence-transformers on PyTorch.

Both encode the same snippets (cut with `text.make_snippets` from the seeded synthetic
corpus of bench/ranking_bench.py) with the same model directory and batch size, on CPU,
after a warm-up; prints snippets/s for each and the ratio (target: >= 1.0x). The JAX
figure is steady state: XLA compiles each (batch, length-bucket) shape once, in the
warm-up pass, and that compile time is printed separately.

The peer needs `torch` and `sentence_transformers`; this benchmark installs nothing. If
they are not importable it says so and how to get them, and prints the JAX figure alone.
They may live in another environment: `--peer-path DIR` appends DIR (that environment's
site-packages) to sys.path *after* this environment's, for importing the peer only. E.g.

    python3 -m venv /tmp/stenv && /tmp/stenv/bin/pip install torch==2.13.0 sentence-transformers
    python bench/encoder_bench.py --peer-path /tmp/stenv/lib/python3.11/site-packages

    python bench/encoder_bench.py --snippets 2000 --batch-size 64
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402

from personalize_t5x.pipeline.retrieval import text as text_lib  # noqa: E402

INSTALL_HINT = ("pip install torch sentence-transformers  (CPU wheels; e.g. in a throwaway venv, then pass "
                "--peer-path <venv>/lib/python3.X/site-packages)")


def make_snippets(count: int, seed: int) -> list[str]:
    from ranking_bench import make_corpus

    snippets: list[str] = []
    users = 1
    while len(snippets) < count:
        corpus = make_corpus(users, 30, seed=seed)
        snippets = [s.text for docs in corpus.values() for d in docs for s in text_lib.make_snippets(d.doc_id, d.title_and_text)]
        users *= 2
    rng = np.random.default_rng(seed)
    return [snippets[i] for i in rng.permutation(len(snippets))[:count]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snippets", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", default=None, help="sentence-transformers model dir (default: the all-MiniLM-L6-v2 wheel)")
    parser.add_argument("--peer-path", action="append", default=[], help="extra site-packages for torch/sentence_transformers (appended to sys.path)")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per side, interleaved (best is reported)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from personalize_t5x.pipeline.retrieval.encoders import SentenceEncoder, default_encoder_path

    model_dir = args.model or str(default_encoder_path())
    snippets = make_snippets(args.snippets, args.seed)
    print(f"{len(snippets)} snippets (mean {np.mean([len(s) for s in snippets]):.0f} chars), batch size {args.batch_size}, model {model_dir}, {os.cpu_count()} CPUs", flush=True)

    encoder = SentenceEncoder.from_pretrained(model_dir)
    import jax

    t0 = time.perf_counter()
    ours = encoder.encode(snippets, batch_size=args.batch_size)  # warm-up: compiles the shapes it needs once
    cold = time.perf_counter() - t0
    print(f"JAX/Flax ({jax.devices()[0].platform}, jax {jax.__version__}): first pass incl. compiling {len(encoder.compiled_shapes)} shapes: {cold:.1f} s", flush=True)
    shapes = set(encoder.compiled_shapes)

    for path in args.peer_path:
        sys.path.append(path)
    model = None
    try:
        import torch
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(model_dir, device="cpu")
        model.encode(snippets[: args.batch_size * 2], batch_size=args.batch_size)  # warm-up
    except ImportError as e:
        print(f"peer unavailable: sentence-transformers on PyTorch is not importable ({e}); install it with {INSTALL_HINT}", flush=True)

    # Timed passes, the two sides interleaved so that a change in machine load hits both.
    jax_best = torch_best = float("inf")
    theirs = None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        encoder.encode(snippets, batch_size=args.batch_size)
        jax_best = min(jax_best, time.perf_counter() - t0)
        if model is not None:
            t0 = time.perf_counter()
            theirs = model.encode(snippets, batch_size=args.batch_size, convert_to_numpy=True, normalize_embeddings=True)
            torch_best = min(torch_best, time.perf_counter() - t0)
    assert encoder.compiled_shapes == shapes, "a timed pass compiled a new shape"
    jax_rate = len(snippets) / jax_best
    print(f"JAX/Flax (CPU): {jax_rate:.1f} snippets/s", flush=True)
    if model is None:
        return 0
    torch_rate = len(snippets) / torch_best
    cosine = float(np.min(np.sum(ours * theirs, axis=1)))
    print(f"sentence-transformers (torch {torch.__version__}, {torch.get_num_threads()} threads, CPU): {torch_rate:.1f} snippets/s", flush=True)
    ratio = jax_rate / torch_rate
    print(f"ratio JAX / PyTorch: {ratio:.2f}x (target >= 1.0x): {'PASS' if ratio >= 1.0 else 'FAIL'}; min cosine between the two: {cosine:.6f}")
    return 0 if ratio >= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
