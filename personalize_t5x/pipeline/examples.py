"""Example construction exactly as the paper prepares its data (METHOD.md, "Data preparation").

From a stream of Documents this module builds, per user:
  1. dedup: identical documents (same title and text) in a user's history are kept once,
     the earliest copy wins;
  2. candidate targets: documents whose target text is longer than `min_target_chars`
     and that have at least `min_profile_docs` documents strictly earlier in time;
  3. users with at least `min_examples_per_user` candidates are kept, and at most
     `max_examples_per_user` of their candidates are sampled (seeded, per user);
  4. a split: by user 85/5/10 (the paper's), or by time (each user's latest examples go
     to validation and test, as LongLaMP also evaluates);
  5. author-distinction pairs from each split's own users (only the train pairs are ever
     trained on; validation/test pairs exist for evaluation).

The immediate context is the first `context_chars` characters of title + "\\n" + text
(`records.join_title_and_text`); the target is that whole string (the paper keeps the
start in the target). A profile lists the ids of the user's documents whose timestamp is
strictly earlier than the target's, oldest first: documents written at the same second
are never in each other's profile.

Every function here is a pure function of its inputs and the seed. Randomness is drawn
from generators seeded by (seed, user id), so a user's sample does not depend on which
other users are in the corpus or in which order documents arrive.
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import gc
import glob
import hashlib
import math
import operator
import os
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from personalize_t5x.io import files as io_lib
from personalize_t5x.errors import OptionError, StageReport
from personalize_t5x.pipeline.corpus.records import Document, join_title_and_text

SPLITS = ("train", "validation", "test")
SPLIT_MODES = ("user", "time")


@dataclasses.dataclass(frozen=True)
class ExampleConfig:
    """Thresholds of the paper's data preparation; the defaults are the paper's values."""

    min_target_chars: int = 300
    min_profile_docs: int = 2
    min_examples_per_user: int = 5
    max_examples_per_user: int = 50
    context_chars: int = 150
    split_mode: str = "user"
    split_fractions: tuple[float, float, float] = (0.85, 0.05, 0.10)
    author_pairs_per_example: float = 1.0
    seed: int = 0

    def __post_init__(self):
        def refuse(name: str, reason: str) -> None:
            # Named as the CLI option that sets it, so a command's one-line error points at it.
            raise OptionError(f"--{name.replace('_', '-')}", f"ExampleConfig.{name} {reason}")

        for name in ("min_target_chars", "min_profile_docs", "context_chars", "min_examples_per_user",
                     "max_examples_per_user", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                refuse(name, f"must be an integer, got {value!r}")
        for name in ("min_target_chars", "min_profile_docs", "context_chars", "seed"):
            if getattr(self, name) < 0:
                refuse(name, f"must be >= 0, got {getattr(self, name)}")
        if self.seed >= 2 ** 63:
            refuse("seed", f"must be below 2**63, got {self.seed}")
        if self.min_examples_per_user < 1:
            refuse("min_examples_per_user", f"must be >= 1, got {self.min_examples_per_user}")
        if self.max_examples_per_user < self.min_examples_per_user:
            refuse("max_examples_per_user", f"({self.max_examples_per_user}) must be >= "
                   f"--min-examples-per-user ({self.min_examples_per_user})")
        if self.split_mode not in SPLIT_MODES:
            refuse("split_mode", f"must be one of {SPLIT_MODES}, got {self.split_mode!r}")
        try:
            fractions = tuple(float(f) for f in self.split_fractions)
        except (TypeError, ValueError):
            refuse("split_fractions", f"must be 3 numbers, got {self.split_fractions!r}")
        if (len(fractions) != 3 or not all(math.isfinite(f) and f >= 0 for f in fractions)
                or abs(sum(fractions) - 1.0) > 1e-6):
            refuse("split_fractions", f"must be 3 non-negative numbers summing to 1, got {self.split_fractions}")
        object.__setattr__(self, "split_fractions", fractions)
        if not (math.isfinite(self.author_pairs_per_example) and 0 <= self.author_pairs_per_example <= 1000):
            refuse("author_pairs_per_example", f"must be a number in [0, 1000], got {self.author_pairs_per_example}")


def user_rng(seed: int, user_id: str, purpose: str) -> np.random.Generator:
    """A generator that depends only on (seed, user, purpose), not on corpus order."""
    digest = hashlib.blake2b(f"{seed}\x00{purpose}\x00{user_id}".encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


# ---------------------------------------------------------------------------
# Per-user steps (pure functions of one user's documents).
# ---------------------------------------------------------------------------

_TIME_THEN_ID = operator.attrgetter("timestamp", "doc_id")


def dedup_user_documents(documents: Iterable[Document]) -> tuple[list[Document], int]:
    """Drops repeated (title, text) within one user's history; keeps the earliest copy.

    Returns the kept documents sorted by (timestamp, doc_id) and the number dropped.
    """
    ordered = sorted(documents, key=_TIME_THEN_ID)
    seen: set[tuple[str, str]] = set()
    kept = []
    for document in ordered:
        key = (document.title, document.text)
        if key in seen:
            continue
        seen.add(key)
        kept.append(document)
    return kept, len(ordered) - len(kept)


def _count_strictly_earlier(timestamps: Sequence[int]) -> list[int]:
    """For timestamps sorted ascending, how many entries are strictly smaller than each."""
    counts, start_of_run = [], 0
    for index, timestamp in enumerate(timestamps):
        if index and timestamp != timestamps[index - 1]:
            start_of_run = index
        counts.append(start_of_run)
    return counts


def build_user_examples(
    documents: Sequence[Document], *, config: ExampleConfig, report: StageReport
) -> list[dict[str, Any]]:
    """The examples of one user (before splitting), in time order.

    `documents` must already be deduplicated and sorted by (timestamp, doc_id).
    Returns [] when the user has too few candidates (counted in `report`).
    """
    earlier_counts = _count_strictly_earlier([d.timestamp for d in documents])
    candidates = []
    for index, document in enumerate(documents):
        title_chars = len(document.title.strip())
        target_chars = title_chars + 1 + len(document.text) if title_chars else len(document.text)
        if target_chars <= config.min_target_chars:
            report.drop("target_too_short")
            continue
        if earlier_counts[index] < config.min_profile_docs:
            report.drop("too_few_earlier_documents")
            continue
        candidates.append(index)
    if len(candidates) < config.min_examples_per_user:
        report.drop("user_too_few_examples(users)")
        report.drop("user_too_few_examples(candidate_targets)", len(candidates))
        return []
    if len(candidates) > config.max_examples_per_user:
        rng = user_rng(config.seed, documents[0].user_id, "sample")
        chosen = np.sort(rng.choice(len(candidates), size=config.max_examples_per_user, replace=False))
        report.drop("over_max_examples_per_user", len(candidates) - len(chosen))
        candidates = [candidates[i] for i in chosen]
    doc_ids = [d.doc_id for d in documents]
    examples = []
    for index in candidates:
        document = documents[index]
        target = join_title_and_text(document.title, document.text)
        examples.append({
            "example_id": f"{document.user_id}/{document.doc_id}",
            "user_id": document.user_id,
            "doc_id": document.doc_id,
            "timestamp": document.timestamp,
            "title": document.title,
            "immediate_context": target[: config.context_chars],
            "target": target,
            "profile": doc_ids[: earlier_counts[index]],
        })
    return examples


def one_example_per_document(
    documents: Sequence[Document], *, min_profile_docs: int = 0, split: str = "train"
) -> list[dict[str, Any]]:
    """Every document with at least `min_profile_docs` strictly earlier ones, as an example
    of `split`, with none of the paper's other filters: inputs for testing and benchmarking
    the later stages on small hand-made corpora."""
    ordered = sorted(documents, key=_TIME_THEN_ID)
    config = ExampleConfig(min_target_chars=0, min_profile_docs=min_profile_docs, min_examples_per_user=1,
                           max_examples_per_user=max(1, len(ordered)))
    examples = build_user_examples(ordered, config=config, report=StageReport())
    for example in examples:
        example["split"] = split
    return examples


# ---------------------------------------------------------------------------
# Splits.
# ---------------------------------------------------------------------------

def split_users(user_ids: Iterable[str], *, fractions: Sequence[float], seed: int) -> dict[str, str]:
    """Assigns whole users to splits in the given proportions, deterministically for a seed.

    Users are sorted, then shuffled with the seed, then cut at the cumulative fractions,
    so the result depends only on the set of users and the seed.
    """
    users = sorted(set(user_ids))
    order = np.random.default_rng(seed).permutation(len(users))
    n = len(users)
    train_end = int(round(fractions[0] * n))
    validation_end = int(round((fractions[0] + fractions[1]) * n))
    assignment = {}
    for rank, position in enumerate(order):
        split = "train" if rank < train_end else "validation" if rank < validation_end else "test"
        assignment[users[position]] = split
    return assignment


def split_user_examples_by_time(examples: Sequence[dict[str, Any]], *, fractions: Sequence[float]) -> list[str]:
    """Splits of one user's time-ordered examples: the latest go to test, then validation.

    Each non-empty evaluation share gets at least one example while the user keeps at
    least one training example.
    """
    n = len(examples)
    n_test = max(1, int(round(fractions[2] * n))) if fractions[2] > 0 else 0
    n_validation = max(1, int(round(fractions[1] * n))) if fractions[1] > 0 else 0
    while n_test + n_validation >= n and (n_test or n_validation):
        if n_validation >= n_test and n_validation:
            n_validation -= 1
        else:
            n_test -= 1
    n_train = n - n_test - n_validation
    return ["train"] * n_train + ["validation"] * n_validation + ["test"] * n_test


# ---------------------------------------------------------------------------
# Author-distinction pairs.
# ---------------------------------------------------------------------------

def build_author_pairs(
    examples: Sequence[dict[str, Any]],
    documents_by_user: dict[str, list[Document]],
    *,
    seed: int,
    pairs_per_example: float = 1.0,
    split: str = "train",
) -> list[dict[str, Any]]:
    """Pairs (a target of user u, another document) labelled "true" iff both are u's.

    Only the users of `examples` (one split) are drawn from, for both the positive and the
    negative side, so pairs of one split never contain another split's writing. Exactly
    half the pairs are positive (the extra one of an odd count is negative).
    """
    all_users = sorted({e["user_id"] for e in examples})
    users_with_two = {u for u in all_users if len(documents_by_user[u]) >= 2}
    if len(all_users) < 2 or not users_with_two:
        return []
    rng = np.random.default_rng([seed, int.from_bytes(split.encode(), "little")])
    eligible = [e for e in examples if e["user_id"] in users_with_two]
    n_pairs = int(round(pairs_per_example * len(examples)))
    # Anchors in example order: consecutive pairs then touch the same user's records
    # (the pairs' order in the file carries no meaning; training shuffles them).
    anchor_indices = np.sort(rng.integers(0, len(eligible), size=n_pairs))
    labels = np.zeros(n_pairs, dtype=bool)
    labels[rng.permutation(n_pairs)[: n_pairs // 2]] = True
    # One draw per pair from the other users: index among n-1, shifted past the anchor.
    other_draws = rng.integers(0, len(all_users) - 1, size=n_pairs)
    doc_draws = rng.random(n_pairs)

    pools = [documents_by_user[u] for u in all_users]
    pool_sizes = np.array([len(pool) for pool in pools])
    user_rank = {u: i for i, u in enumerate(all_users)}
    eligible_user = np.empty(len(eligible), dtype=np.int64)
    eligible_position = np.empty(len(eligible), dtype=np.int64)
    positions: dict[str, int] = {}
    # Most documents drawn as the other side are some example's target: reuse that string
    # instead of joining a second copy of it (hundreds of MB at a million documents).
    target_at: dict[tuple[int, int], str] = {}
    for i, example in enumerate(eligible):  # eligible examples are grouped by user
        rank = user_rank[example["user_id"]]
        if i == 0 or rank != eligible_user[i - 1]:
            positions = {d.doc_id: p for p, d in enumerate(pools[rank])}
        eligible_user[i] = rank
        eligible_position[i] = position = positions[example["doc_id"]]
        target_at[rank, position] = example["target"]

    anchor_user = eligible_user[anchor_indices]
    # Positive: any of the user's documents but the anchor (draw among n-1, shift past it).
    positive_position = np.floor(doc_draws * (pool_sizes[anchor_user] - 1)).astype(np.int64)
    positive_position += positive_position >= eligible_position[anchor_indices]
    # Negative: a document of another user of the same split.
    negative_user = other_draws + (other_draws >= anchor_user)
    negative_position = np.floor(doc_draws * pool_sizes[negative_user]).astype(np.int64)
    other_user = np.where(labels, anchor_user, negative_user)
    other_position = np.where(labels, positive_position, negative_position)

    # Join the other side's texts in (user, position) order, again for memory locality.
    other_texts: list[str] = [""] * n_pairs
    other_user_list, other_position_list = other_user.tolist(), other_position.tolist()
    for k in np.lexsort((other_position, other_user)).tolist():
        user, position = other_user_list[k], other_position_list[k]
        text = target_at.get((user, position))
        if text is None:
            document = pools[user][position]
            text = join_title_and_text(document.title, document.text)
        other_texts[k] = text
    return [
        {
            "text_a": eligible[anchor]["target"],
            "text_b": text_b,
            "label": "true" if positive else "false",
            "user_id": all_users[user],
            "other_user_id": all_users[other],
        }
        for anchor, text_b, positive, user, other in zip(
            anchor_indices.tolist(), other_texts, labels.tolist(), anchor_user.tolist(), other_user_list)
    ]


# ---------------------------------------------------------------------------
# The whole stage.
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class ExamplesResult:
    """Everything `build_examples` produces, in memory."""

    examples: dict[str, list[dict[str, Any]]]
    author_pairs: dict[str, list[dict[str, Any]]]
    documents: list[Document]
    report: StageReport
    stats: dict[str, Any]


def group_documents_by_user(documents: Iterable[Document]) -> dict[str, list[Document]]:
    by_user: dict[str, list[Document]] = collections.defaultdict(list)
    for document in documents:
        by_user[document.user_id].append(document)
    return by_user


def build_examples(
    documents: Iterable[Document], *, config: ExampleConfig, report: StageReport | None = None,
    progress: bool = False,
) -> ExamplesResult:
    """Builds examples, splits and author pairs from a stream of Documents."""
    # Millions of long-lived, acyclic records make every full garbage collection walk them
    # all (seconds over a run); nothing here builds reference cycles worth collecting.
    with _garbage_collection_paused():
        return _build_examples(documents, config=config, report=report, progress=progress)


@contextlib.contextmanager
def _garbage_collection_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _build_examples(
    documents: Iterable[Document], *, config: ExampleConfig, report: StageReport | None, progress: bool,
) -> ExamplesResult:
    report = report if report is not None else StageReport()
    by_user = group_documents_by_user(documents)
    n_input_documents = sum(len(v) for v in by_user.values())
    users = sorted(by_user)
    iterator: Iterable[str] = users
    if progress:
        from tqdm import tqdm

        iterator = tqdm(users, desc="examples: users", unit="user", mininterval=1.0)
    user_examples: dict[str, list[dict[str, Any]]] = {}
    deduped: dict[str, list[Document]] = {}
    for user in iterator:
        kept, n_duplicates = dedup_user_documents(by_user.pop(user))
        if n_duplicates:
            report.drop("duplicate_within_user", n_duplicates)
        examples = build_user_examples(kept, config=config, report=report)
        if examples:
            user_examples[user] = examples
            deduped[user] = kept
    by_split: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    if config.split_mode == "user":
        assignment = split_users(user_examples, fractions=config.split_fractions, seed=config.seed)
        for user in sorted(user_examples):
            for example in user_examples[user]:
                example["split"] = assignment[user]
                by_split[assignment[user]].append(example)
    else:
        for user in sorted(user_examples):
            examples = user_examples[user]
            for example, split in zip(examples, split_user_examples_by_time(examples, fractions=config.split_fractions)):
                example["split"] = split
                by_split[split].append(example)
    train_pools = _keep_evaluation_targets_out_of_training(by_split, deduped, config=config, report=report)
    author_pairs: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        if config.split_mode == "time" and split != "train":
            # Users are shared across splits here; evaluation pairs would pair documents
            # the model trained on, so only the training pairs are meaningful.
            author_pairs[split] = []
        else:
            author_pairs[split] = build_author_pairs(
                by_split[split], train_pools if split == "train" else deduped, seed=config.seed,
                pairs_per_example=config.author_pairs_per_example, split=split)
    kept_documents = [d for user in sorted(deduped) for d in deduped[user]]
    report.kept = sum(len(v) for v in by_split.values())
    stats = dataset_stats(by_split, author_pairs, n_input_documents=n_input_documents,
                          n_kept_documents=len(kept_documents), report=report, config=config)
    return ExamplesResult(by_split, author_pairs, kept_documents, report, stats)


def _keep_evaluation_targets_out_of_training(
    by_split: dict[str, list[dict[str, Any]]], deduped: dict[str, list[Document]], *,
    config: ExampleConfig, report: StageReport,
) -> dict[str, list[Document]]:
    """Enforces docs/contracts.md's no-leak rule on the training side; returns the pools
    the training author pairs may draw from.

    No evaluation (validation or test) target may appear in anything trained on: a
    training target, a training profile, or a training author pair. By user, evaluation
    users are disjoint from training users, so only text shared across users (cross-posts)
    can leak. By time, a user's evaluation targets are their latest examples: the training
    side of that user ends at their first evaluation target, so none of their documents
    from there on (targets or not) is drawn into a training pair. Removed training
    examples and profile entries are counted in the report.
    """
    evaluation_texts = {e["target"] for split in SPLITS if split != "train" for e in by_split[split]}
    first_evaluation_doc: dict[str, str] = {}
    if config.split_mode == "time":
        for split in SPLITS:
            if split != "train":
                for e in by_split[split]:
                    first = first_evaluation_doc.get(e["user_id"])
                    if first is None or (e["timestamp"], e["doc_id"]) < first:
                        first_evaluation_doc[e["user_id"]] = (e["timestamp"], e["doc_id"])
    pools: dict[str, list[Document]] = {}
    # Documents of a training user whose text is some evaluation target (a cross-post, or
    # a repeat the within-user dedup could not see): never trained on.
    leaked: dict[str, set[str]] = {}
    train_users = {e["user_id"] for e in by_split["train"]}
    for user in sorted(train_users):
        end = first_evaluation_doc.get(user)
        pool = []
        for document in deduped[user]:
            if end is not None and (document.timestamp, document.doc_id) >= end:
                break  # from the first evaluation target on, this user's writing is evaluation's
            if join_title_and_text(document.title, document.text) in evaluation_texts:
                leaked.setdefault(user, set()).add(document.doc_id)
            else:
                pool.append(document)
        pools[user] = pool
    if not leaked:
        return pools
    kept = []
    for example in by_split["train"]:
        excluded = leaked.get(example["user_id"])
        if excluded:
            if example["doc_id"] in excluded:
                report.drop("train_target_is_an_evaluation_target")
                continue
            # A profile lists only documents earlier than its target, which comes before the
            # user's first evaluation target: only the text-shared ones can be in it.
            profile = [doc_id for doc_id in example["profile"] if doc_id not in excluded]
            if len(profile) != len(example["profile"]):
                report.drop("train_profile_document_is_an_evaluation_target", len(example["profile"]) - len(profile))
                example["profile"] = profile
        kept.append(example)
    by_split["train"][:] = kept
    return pools


def dataset_stats(
    by_split: dict[str, list[dict[str, Any]]], author_pairs: dict[str, list[dict[str, Any]]], *,
    n_input_documents: int, n_kept_documents: int, report: StageReport, config: ExampleConfig,
) -> dict[str, Any]:
    """METHOD.md's dataset table per split, plus the drop counts."""
    table = {}
    for split in SPLITS:
        examples = by_split[split]
        n = len(examples)
        pairs = author_pairs.get(split, [])
        table[split] = {
            "users": len({e["user_id"] for e in examples}),
            "examples": n,
            "avg_chars_current_doc": round(sum(len(e["target"]) for e in examples) / n, 1) if n else 0.0,
            "avg_past_docs": round(sum(len(e["profile"]) for e in examples) / n, 1) if n else 0.0,
            "author_pairs": len(pairs),
            "author_pairs_positive": sum(p["label"] == "true" for p in pairs),
        }
    return {
        "config": dataclasses.asdict(config),
        "input_documents": n_input_documents,
        "documents_kept_in_users": n_kept_documents,
        "splits": table,
        "report": report.to_json(),
    }


def format_stats_table(stats: dict[str, Any]) -> str:
    """The dataset table as aligned text, in METHOD.md's columns."""
    header = ("split", "users", "examples", "avg chars of current doc", "avg past docs", "author pairs (pos)")
    rows = [header]
    for split in SPLITS:
        s = stats["splits"][split]
        rows.append((split, f"{s['users']:,}", f"{s['examples']:,}", f"{s['avg_chars_current_doc']:,.1f}",
                     f"{s['avg_past_docs']:,.1f}", f"{s['author_pairs']:,} ({s['author_pairs_positive']:,})"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    dropped = stats["report"]["dropped"]
    bad = stats["report"]["bad_skipped"]
    lines.append("")
    lines.append(f"input documents: {stats['input_documents']:,}")
    for reason, count in dropped.items():
        lines.append(f"dropped {reason}: {count:,}")
    for reason, count in bad.items():
        lines.append(f"skipped bad record ({reason}): {count:,}")
    return "\n".join(lines)


EXAMPLE_FILES = tuple(f"{s}.jsonl.gz" for s in SPLITS)
PAIR_FILES = tuple(f"author_pairs_{s}.jsonl.gz" for s in SPLITS)
DOCUMENTS_FILE = "documents.jsonl.gz"
STATS_FILE = "stats.json"


OUTPUT_FILES = (DOCUMENTS_FILE, *EXAMPLE_FILES, *PAIR_FILES)


def remove_finished_marker(output_dir: str | os.PathLike) -> None:
    """Un-finishes a folder before anything in it is replaced: a build killed half-way
    through an overwrite then leaves no stats.json vouching for a mix of old and new files."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(os.fspath(output_dir), STATS_FILE))


def remove_stale_temporaries(output_dir: str | os.PathLike) -> int:
    """Deletes `.tmp-*` files a killed build left (io.files.atomic_output's temporaries)."""
    output_dir = os.fspath(output_dir)
    removed = 0
    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            if name.startswith(".tmp-"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(output_dir, name))
                    removed += 1
    return removed


def _file_fingerprint(path: str) -> dict[str, Any]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
            size += len(block)
    return {"bytes": size, "sha256": digest.hexdigest()}


def finished_problem(output_dir: str | os.PathLike) -> str | None:
    """None when the folder is a finished build; otherwise why it is not.

    Finished means: stats.json parses and lists every output file with the size and
    sha256 it has now. A folder whose build was killed, or whose files were replaced
    after stats.json was written, is not finished.
    """
    output_dir = os.fspath(output_dir)
    stats_path = os.path.join(output_dir, STATS_FILE)
    if not os.path.exists(stats_path):
        return "no stats.json"
    try:
        with open(stats_path, "rb") as f:
            stats = io_lib.loads_record(f.read())
    except (OSError, ValueError) as error:
        return f"stats.json is unreadable ({error})"
    files = stats.get("files") if isinstance(stats, dict) else None
    if not isinstance(files, dict) or set(files) != set(OUTPUT_FILES):
        return "stats.json does not fingerprint the output files"
    for name in OUTPUT_FILES:
        path = os.path.join(output_dir, name)
        if not os.path.isfile(path):
            return f"{name} is missing"
        if _file_fingerprint(path) != files[name]:
            return f"{name} differs from the file stats.json vouches for"
    return None


def write_examples(result: ExamplesResult, output_dir: str | os.PathLike) -> None:
    """Writes the stage's folder (see docs/contracts.md). stats.json is removed first and
    written last, with the size and sha256 of every other file, so its presence marks a
    finished output; every file is written atomically."""
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    remove_finished_marker(output_dir)
    remove_stale_temporaries(output_dir)
    jobs: dict[str, Iterable[Any]] = {DOCUMENTS_FILE: result.documents}
    for split in SPLITS:
        jobs[f"{split}.jsonl.gz"] = result.examples[split]
        jobs[f"author_pairs_{split}.jsonl.gz"] = result.author_pairs[split]
    # zlib releases the GIL while it compresses, so files written from threads overlap
    # their compression on both cores; the output bytes do not depend on the scheduling.
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(io_lib.write_jsonl, os.path.join(output_dir, name), records)
                   for name, records in jobs.items()]
        futures += [pool.submit(write_author_pair_records, output_dir, split, result.author_pairs[split]) for split in SPLITS]
        for future in futures:
            future.result()
    write_finished_marker(output_dir, result.stats)


def write_finished_marker(output_dir: str | os.PathLike, stats: dict[str, Any]) -> None:
    """Writes stats.json with the fingerprint of every output file now in the folder: the
    last step of a build (also for folders assembled by other means, e.g. tests)."""
    output_dir = os.fspath(output_dir)
    stats["files"] = {name: _file_fingerprint(os.path.join(output_dir, name)) for name in OUTPUT_FILES}
    io_lib.write_json(os.path.join(output_dir, STATS_FILE), stats)


AUTHOR_PAIRS_PER_SHARD = 50_000


def author_pair_shard_names(split: str, n_pairs: int) -> list[str]:
    count = max(1, -(-n_pairs // AUTHOR_PAIRS_PER_SHARD))
    return [f"author_pairs_{split}.tfrecord-{i:05d}-of-{count:05d}" for i in range(count)]


def write_author_pair_records(output_dir: str | os.PathLike, split: str, pairs: Sequence[dict[str, Any]]) -> list[str]:
    """The author pairs' final form: tf.train.Examples (text_a, text_b, label), the
    records the author-distinction task reads, in file order, in shards of
    AUTHOR_PAIRS_PER_SHARD. The features stage copies them as they are."""
    from personalize_t5x import feature_names
    from personalize_t5x.io import tfrecords

    output_dir = os.fspath(output_dir)
    names = author_pair_shard_names(split, len(pairs))
    for index, name in enumerate(names):
        chunk = pairs[index * AUTHOR_PAIRS_PER_SHARD:(index + 1) * AUTHOR_PAIRS_PER_SHARD]
        records = (tfrecords.serialize_bytes_example({k: pair[k].encode("utf-8") for k in feature_names.AUTHOR_PAIR_FEATURES})
                   for pair in chunk)
        with io_lib.atomic_output(os.path.join(output_dir, name), "wb") as f:
            for record in records:
                f.write(tfrecords.frame_record(record))
    for stale in glob.glob(os.path.join(glob.escape(output_dir), f"author_pairs_{split}.tfrecord-*")):
        if os.path.basename(stale) not in names:  # shards of an earlier run with another count
            os.remove(stale)
    return names


def read_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Reads a JSONL(.gz) file this project wrote (trusted: no per-field validation)."""
    for _, record in io_lib.iter_json_lines(path):
        yield record


def read_examples(examples_dir: str | os.PathLike, split: str) -> Iterator[dict[str, Any]]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    return read_jsonl(os.path.join(os.fspath(examples_dir), f"{split}.jsonl.gz"))
