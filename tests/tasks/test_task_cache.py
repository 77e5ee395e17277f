"""SeqIO's Beam cache job caches a task (`--module_import=tasks` with the data directory
variable set) and the cached dataset reads back like the uncached one (USE_CACHED_TASKS)."""
from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
import seqio

import tasks

LENGTHS = {"inputs": 512, "targets": 128}


def _beam_can_write_tfrecords() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) for m in ("google_crc32c", "crcmod", "snappy"))


@pytest.mark.slow
@pytest.mark.skipif(not _beam_can_write_tfrecords(),
                    reason="Beam's TFRecord writer needs google-crc32c (apache-beam[tfrecord]); not installed")
def test_beam_cache_job_and_cached_read(data_dir, tmp_path):
    name = "personalize_fixture_syn_ctx"
    author = "personalize_fixture_author_distinction"
    cache_dir = tmp_path / "cache"
    env = dict(os.environ, **{tasks.DATA_DIR_ENV: str(data_dir)})
    env.pop(tasks.VOCAB_ENV, None)
    subprocess.run(
        [sys.executable, "-m", "seqio.scripts.cache_tasks_main", "--module_import=tasks", f"--tasks={name},{author}",
         f"--output_cache_dir={cache_dir}", "--min_shards=1", "--pipeline_options=--runner=DirectRunner"],
        check=True, env=env, cwd=tmp_path, capture_output=True, timeout=600,
    )
    task_dir = cache_dir / seqio.get_task_dir_from_name(name)
    assert (task_dir / "COMPLETED").exists()
    assert (cache_dir / seqio.get_task_dir_from_name(author) / "COMPLETED").exists()

    tasks.register_data_dir(data_dir)
    task = seqio.get_mixture_or_task(name)
    uncached = {e["example_id"]: e for e in task.get_dataset(LENGTHS, split="train", shuffle=False).as_numpy_iterator()}
    seqio.add_global_cache_dirs([str(cache_dir)])
    try:
        task = seqio.get_mixture_or_task(name)
        assert task.cache_dir == str(task_dir)
        cached = list(task.get_dataset(LENGTHS, split="train", use_cached=True, shuffle=False).as_numpy_iterator())
        # A mixture reads from the cache when both of its tasks are cached (T5X's USE_CACHED_TASKS).
        mixture = seqio.get_mixture_or_task(name + "_author_mix")
        mixed = list(itertools.islice(mixture.get_dataset(LENGTHS, split="train", use_cached=True, seed=0)
                                      .as_numpy_iterator(), 20))
    finally:
        seqio.set_global_cache_dirs([])
    assert len(cached) == len(uncached) == 6
    for e in cached:
        expected = uncached[e["example_id"]]
        assert set(e) == set(expected)
        for key in e:
            assert (e[key] == expected[key]).all() if hasattr(e[key], "all") else e[key] == expected[key]
    assert len(mixed) == 20 and all(set(e) == {"inputs", "targets"} for e in mixed)
