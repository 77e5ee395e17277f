"""Damaged checkpoints: each fault ends in one `error:` line naming the checkpoint and array.

A real run writes checkpoint_2 and checkpoint_4; each test damages a copy the way a
disk, a killed copy or a bad optimizer step would, and resumes with the real command
line (a subprocess, so a traceback printed at interpreter exit would be seen too).
"""
import json
import os
import re
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
TRAINER_TESTS = REPO / "tests" / "trainer"
sys.path.insert(0, str(TRAINER_TESTS))

import tiny_task  # noqa: E402

from personalize_t5x import cli  # noqa: E402
from personalize_t5x.io import orbax_loops  # noqa: E402

STEPS = 4

# An exception raised where nothing can catch it (a callback on another thread) fails the
# test it happens in, instead of passing as a warning.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


def _flags(model_dir, steps=STEPS, extra=()):
    return ["--gin_file=models/t5_1_1_tiny.gin", "--gin_file=runs/finetune.gin", f"--gin.MODEL_DIR='{model_dir}'",
            f"--gin.MIXTURE_OR_TASK_NAME='{tiny_task.TASK_NAME}'", "--gin.MIXTURE_OR_TASK_MODULE='tiny_task'",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 16}", f"--gin.TRAIN_STEPS={steps}",
            "--gin.BATCH_SIZE=8", "--gin.EVAL_PERIOD=None", "--gin.CHECKPOINT_PERIOD=2", "--gin.LOG_PERIOD=1",
            "--gin.RANDOM_SEED=5", *extra]


def _env(cache):
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(TRAINER_TESTS), str(REPO)]),
                JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def _command(model_dir, steps=STEPS, extra=()):
    return [sys.executable, "-m", "personalize_t5x.trainer.train", *_flags(model_dir, steps, extra)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished run (checkpoint_2, checkpoint_4) and a compilation cache for the reruns."""
    root = tmp_path_factory.mktemp("faults")
    model_dir = root / "model"
    assert cli.main(["train", *_flags(model_dir)]) == 0
    assert sorted(p.name for p in model_dir.glob("checkpoint_*")) == ["checkpoint_2", "checkpoint_4"]
    return model_dir, root / "xla_cache"


@pytest.fixture
def damaged(trained, tmp_path):
    model_dir, cache = trained
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    for path in copy.rglob("*"):  # orbax leaves some files read-only
        path.chmod(0o755 if path.is_dir() else 0o644)
    return copy, cache


def _resume_fails(model_dir, cache, *must_name):
    """Resumes (TRAIN_STEPS 6); asserts exit 2, one line, no traceback, naming `must_name`."""
    result = subprocess.run(_command(model_dir, steps=6), cwd=REPO, env=_env(cache), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    stderr = result.stderr
    assert "Traceback" not in stderr and 'File "' not in stderr, stderr[-3000:]
    assert "Event loop is closed" not in stderr and "never retrieved" not in stderr, stderr[-3000:]
    assert not re.search(r"^\w*(Error|Exception)\b", stderr, re.M), stderr[-3000:]
    assert "cannot schedule new futures" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    for text in must_name:
        assert text in errors[0], errors[0]
    assert not (model_dir / "checkpoint_6").exists()  # nothing trained on from a bad state
    return errors[0]


def _data_files(step_dir):
    """OCDBT data files, largest first (ties by name, so every run tries the same order)."""
    return sorted((step_dir / "state").rglob("d/*"), key=lambda p: (-p.stat().st_size, p.name))


def _raw_leaves(state_dir):
    """The arrays as plain orbax reads them (no checks of ours), or None if it cannot.

    Its loops drain as the library's do: a failed plain read here would otherwise print
    late `Event loop is closed` tracebacks into this test process."""
    import orbax.checkpoint as ocp

    from personalize_t5x.trainer import checkpoints

    try:
        with orbax_loops.draining_orbax_loops():
            tree = ocp.PyTreeCheckpointer().restore(os.fspath(state_dir))
    except Exception:
        return None
    return {k: np.asarray(v) for k, v in checkpoints.flatten(tree).items()}


def _flip_64_bytes(step_dir, *, read_fails, flip=lambda chunk: bytes(b ^ 0xFF for b in chunk)):
    """Flips 64 bytes of a data file with one chosen effect on a plain orbax restore.

    `read_fails`: the restore fails (TensorStore's own checks refuse the bytes); otherwise
    it succeeds with other values (damage only our crc32c can see). Which bytes have which
    effect depends on the layout: values up to 1 KB are inlined into OCDBT b-tree nodes,
    which carry TensorStore's CRC-32C (the trained tiny model's 8-way shards all are), larger
    ones are zstd frames of their own (most flips change values, a flip in the framing fails
    the read), and data files may hold bytes nothing refers to (the trained checkpoint's
    per-process files, whose values the merged b-tree holds inline). So flips go into the data files in
    a fixed order at fixed positions, each one undone unless it has the effect asked for.
    Returns the file.
    """
    original = _raw_leaves(step_dir / "state")
    for data in _data_files(step_dir):
        before = data.read_bytes()
        for fraction in (0.5, 0.25, 0.75, 0.1, 0.9):
            raw = bytearray(before)
            at = int(len(raw) * fraction)
            raw[at:at + 64] = flip(raw[at:at + 64])
            data.write_bytes(bytes(raw))
            now = _raw_leaves(step_dir / "state")
            if read_fails and now is None:
                return data
            if not read_fails and now is not None and any(
                    not np.array_equal(now[k], original[k], equal_nan=True) for k in original):
                return data
        data.write_bytes(before)
    raise AssertionError(f"no 64-byte flip in {step_dir} {'failed' if read_fails else 'changed'} a plain orbax read")


def _rewrite_state_from_one_device(step_dir):
    """Rewrites step_dir/state with plain orbax from one device, checksums of what it writes.

    Whole arrays from one device are chunks of over 1 KB, stored outside the b-tree nodes
    as in any real-size model.
    """
    import jax
    import orbax.checkpoint as ocp

    from personalize_t5x.trainer import checkpoints

    state_dir = step_dir / "state"
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    tree = jax.tree.map(np.asarray, ocp.PyTreeCheckpointer().restore(os.fspath(state_dir)))
    tree = jax.tree.map(lambda v: jax.device_put(v, one), tree)
    shutil.rmtree(state_dir)
    ocp.PyTreeCheckpointer().save(os.fspath(state_dir), args=ocp.args.PyTreeSave(
        tree, custom_metadata={checkpoints.CHECKSUM_METADATA_KEY: checkpoints.checksums_of(tree)}))


def _truncate_a_data_file_that_matters(step_dir):
    """Truncates data files (largest first) to a third until a plain orbax restore fails."""
    original = _raw_leaves(step_dir / "state")
    for data in _data_files(step_dir):
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])
        now = _raw_leaves(step_dir / "state")
        if now is None or any(not np.array_equal(now[k], original[k], equal_nan=True) for k in original):
            return data
    raise AssertionError(f"no truncation in {step_dir} changed what orbax reads")


def test_flipped_bytes_in_a_b_tree_node_are_refused_naming_checkpoint_and_array(damaged):
    """TensorStore's CRC-32C of the node refuses them: orbax fails, one line, no traceback."""
    model_dir, cache = damaged
    _flip_64_bytes(model_dir / "checkpoint_4", read_fails=True)
    line = _resume_fails(model_dir, cache, "checkpoint_4", "array '", "checkpoint_2", "--gin.RESUME_FALLBACK=True")
    assert "state/ cannot be read" in line, line


def test_flipped_bytes_in_an_array_value_fail_its_crc32c(damaged):
    """Bytes orbax reads without complaint, other values: only our crc32c sees them."""
    model_dir, cache = damaged
    _rewrite_state_from_one_device(model_dir / "checkpoint_4")
    _flip_64_bytes(model_dir / "checkpoint_4", read_fails=False)
    line = _resume_fails(model_dir, cache, "checkpoint_4", "checkpoint_2", "--gin.RESUME_FALLBACK=True")
    assert re.search(r"array '[^']+' fails its crc32c check \(stored [0-9a-f]{8}, read [0-9a-f]{8}\)", line), line


def test_failed_restores_leave_no_late_callbacks(damaged, trained, monkeypatch):
    """In one process: failed restores print nothing afterwards (orbax's loops drain).

    Without the drain each failed restore left TensorStore reads whose completions later
    raised `RuntimeError: Event loop is closed` as unraisable exceptions, hundreds per run.
    """
    import flax.traverse_util
    import jax

    from personalize_t5x.trainer import checkpoints

    model_dir, _ = damaged
    manifest = model_dir / "checkpoint_4" / "state" / "manifest.ocdbt"
    manifest.write_bytes(manifest.read_bytes()[:10])
    good = {k[len("target/"):]: v for k, v in _leaves(trained[0] / "checkpoint_4").items() if k.startswith("target/")}
    abstract = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype),
                            flax.traverse_util.unflatten_dict(good, sep="/"))
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    for _ in range(3):
        with pytest.raises(checkpoints.CheckpointError, match="checkpoint_4: state/ cannot be read"):
            checkpoints.load_initial_params(os.fspath(model_dir / "checkpoint_4"), abstract)
    time.sleep(1.0)  # TensorStore's late completions came within milliseconds
    assert [f"{u.exc_type.__name__}: {u.exc_value}" for u in unraisable] == []


def test_truncated_data_file_is_refused(damaged):
    model_dir, cache = damaged
    _truncate_a_data_file_that_matters(model_dir / "checkpoint_4")
    _resume_fails(model_dir, cache, "checkpoint_4", "array '")


def test_empty_checkpoint_metadata_is_refused(damaged):
    model_dir, cache = damaged
    (model_dir / "checkpoint_4" / "_CHECKPOINT_METADATA").write_text("")
    _resume_fails(model_dir, cache, "checkpoint_4", "_CHECKPOINT_METADATA")


def test_truncated_manifest_is_refused(damaged):
    model_dir, cache = damaged
    manifest = model_dir / "checkpoint_4" / "state" / "manifest.ocdbt"
    manifest.write_bytes(manifest.read_bytes()[:10])
    _resume_fails(model_dir, cache, "checkpoint_4", "cannot be read")


def test_non_finite_state_with_valid_checksums_is_refused(damaged):
    """NaN written by training itself (checksums agree): the finiteness check catches it."""
    import orbax.checkpoint as ocp

    from personalize_t5x.trainer import checkpoints

    model_dir, cache = damaged
    state_dir = model_dir / "checkpoint_4" / "state"
    tree = ocp.PyTreeCheckpointer().restore(os.fspath(state_dir))
    kernel = np.array(tree["target"]["encoder"]["layers_0"]["mlp"]["wo"]["kernel"])
    kernel[0, 0] = np.nan
    tree["target"]["encoder"]["layers_0"]["mlp"]["wo"]["kernel"] = kernel
    shutil.rmtree(state_dir)
    ocp.PyTreeCheckpointer().save(os.fspath(state_dir), args=ocp.args.PyTreeSave(
        tree, custom_metadata={checkpoints.CHECKSUM_METADATA_KEY: checkpoints.checksums_of(tree)}))
    _resume_fails(model_dir, cache, "checkpoint_4", "'target/encoder/layers_0/mlp/wo/kernel'", "NaN")


def test_checksums_are_in_the_checkpoints_own_metadata(trained):
    model_dir, _ = trained
    metadata = json.loads((model_dir / "checkpoint_4" / "state" / "_METADATA").read_text())
    sums = metadata["custom_metadata"]["personalize_t5x.crc32c"]
    names = {"/".join(k["key"] for k in v["key_metadata"]) for v in metadata["tree_metadata"].values()}
    assert set(sums) == names and "state/step" in sums and all(len(v) == 8 for v in sums.values())


def test_fallback_sets_the_bad_checkpoint_aside_and_resumes_from_the_previous(damaged, trained):
    model_dir, cache = damaged
    _flip_64_bytes(model_dir / "checkpoint_4", read_fails=True)
    result = subprocess.run(_command(model_dir, extra=["--gin.RESUME_FALLBACK=True"]), cwd=REPO, env=_env(cache),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Event loop is closed" not in result.stderr, result.stderr[-3000:]
    assert f"resuming from {model_dir}/checkpoint_2" in result.stderr
    assert len(list(model_dir.glob("bad_checkpoint_4-*"))) == 1
    # Steps 3-4 retrained from checkpoint_2 land exactly on the original checkpoint_4.
    original, redone = (_leaves(d / "checkpoint_4") for d in (trained[0], model_dir))
    assert original.keys() == redone.keys()
    for name in original:
        np.testing.assert_array_equal(original[name], redone[name], err_msg=name)


def _leaves(step_dir):
    import orbax.checkpoint as ocp

    from personalize_t5x.trainer import checkpoints

    return {k: np.asarray(v) for k, v in
            checkpoints.flatten(ocp.PyTreeCheckpointer().restore(os.fspath(step_dir / "state"))).items()}


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_gives_identical_results(trained, tmp_path):
    """SIGKILL at two seeded random steps (a random few ms after the step's log line, so
    also inside checkpoint writes), then the same command finishes the run: bitwise equal."""
    model_dir, cache = trained
    steps = 10
    straight = tmp_path / "straight"
    assert subprocess.run(_command(straight, steps=steps), cwd=REPO, env=_env(cache), capture_output=True,
                          timeout=600).returncode == 0
    interrupted = tmp_path / "interrupted"
    chooser = random.Random(11)
    kill_at = sorted(chooser.sample(range(1, steps), 2))
    for at in kill_at:
        process = subprocess.Popen(_command(interrupted, steps=steps), cwd=REPO, env=_env(cache),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        seen = []
        for line in process.stderr:
            seen.append(line)
            if f"] step {at}/{steps} " in line:
                time.sleep(chooser.uniform(0.0, 0.05))
                process.send_signal(signal.SIGKILL)
                break
        process.wait()
        process.stderr.close()
        assert process.returncode == -signal.SIGKILL, "".join(seen)[-3000:]
        assert not (interrupted / f"checkpoint_{steps}").exists(), "the run finished before the kill"
    resumed = subprocess.run(_command(interrupted, steps=steps), cwd=REPO, env=_env(cache), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[train] resuming from" in resumed.stderr
    a, b = _leaves(straight / f"checkpoint_{steps}"), _leaves(interrupted / f"checkpoint_{steps}")
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
