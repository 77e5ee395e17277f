"""orbax checkpoints of the train state, automatic resume, and initial checkpoints.

Checkpoints live in MODEL_DIR as `checkpoint_<step>/` folders (T5X's naming), written
by an orbax `CheckpointManager` (asynchronous, atomic: a run killed mid-save leaves
only a temporary folder that is never mistaken for a finished checkpoint).

An initial checkpoint (INITIAL_CHECKPOINT_PATH) may be one of this project's own
checkpoints, a T5X checkpoint (legacy msgpack + tensorstore or orbax layout, read by
`personalize_t5x.network.checkpoint_importer`) or a Hugging Face T5 directory (read by
`personalize_t5x.network.hf_checkpoints`).
Every load is checked name by name and shape by shape against the model, and a
mismatch is reported in one line.
"""
from __future__ import annotations

import logging
import os
import pathlib
import re
from typing import Any, Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from personalize_t5x.errors import PersonalizeError

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint"
_STEP_DIR = re.compile(rf"^{CHECKPOINT_PREFIX}_(\d+)$")


class CheckpointError(PersonalizeError):
    """A checkpoint that cannot be used as asked (missing, wrong shapes, unreadable)."""


def ensure_writable_dir(path: str, what: str = "MODEL_DIR") -> pathlib.Path:
    """Creates `path` if needed and proves it writable, or raises one clear error."""
    directory = pathlib.Path(path).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".write_probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise CheckpointError(f"{what} {str(directory)!r} is not writable: {error.strerror or error}") from None
    return directory


def flatten(tree: Any) -> dict[str, Any]:
    """{'encoder/layers_0/mlp/wo/kernel': leaf, ...} for a nested params dict."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out["/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)] = leaf
    return out


def check_params_match(loaded: Any, expected: Any, *, source: str) -> None:
    """Raises CheckpointError naming the first missing/extra/misshapen parameter."""
    got, want = flatten(loaded), flatten(expected)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    if missing:
        raise CheckpointError(f"checkpoint {source}: parameter {missing[0]!r} is missing "
                              f"({len(missing)} missing in all); is it a checkpoint of this model?")
    if extra:
        raise CheckpointError(f"checkpoint {source}: unexpected parameter {extra[0]!r} "
                              f"({len(extra)} unexpected in all); is it a checkpoint of this model?")
    for name in sorted(want):
        a, b = tuple(np.shape(got[name])), tuple(np.shape(want[name]))
        if a != b:
            raise CheckpointError(f"checkpoint {source}: parameter {name!r} has shape {a}, the model expects {b}; "
                                  "the checkpoint was written for a different model config")


class TrainStateCheckpointer:
    """Saves every `period` steps into `model_dir`, keeps the last `keep`, restores the latest."""

    def __init__(self, model_dir: str, *, period: int = 1000, keep: Optional[int] = None,
                 asynchronous: bool = True):
        if period < 1:
            raise ValueError(f"checkpoint period must be >= 1; got {period}")
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be >= 1 or None (keep all); got {keep}")
        self.model_dir = ensure_writable_dir(model_dir)
        self.period = period
        self.manager = ocp.CheckpointManager(
            os.fspath(self.model_dir.absolute()),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, step_prefix=CHECKPOINT_PREFIX, create=True,
                enable_async_checkpointing=asynchronous, cleanup_tmp_directories=True))

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, state: Any, *, step: Optional[int] = None, force: bool = False) -> bool:
        """Saves `state` (a TrainState) when its step is due (or `force`); returns whether it did.

        Pass the host-side `step` when known: reading `state.step` waits for the device.
        """
        step = int(jax.device_get(state.step)) if step is None else int(step)
        if not force and step % self.period:
            return False
        if step in self.manager.all_steps():
            return False
        self.manager.save(step, args=ocp.args.StandardSave(state.state_dict()), force=True)
        return True

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def restore(self, abstract_state: Any, shardings: Any, step: Optional[int] = None) -> dict:
        """The saved state dict at `step` (latest if None), placed with `shardings`."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.model_dir}")
        return restore_state_dict(self.model_dir / f"{CHECKPOINT_PREFIX}_{step}", abstract_state, shardings)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _item_dir(path: pathlib.Path) -> pathlib.Path:
    """The orbax item folder inside a step folder (`default/`), or the path itself."""
    return path / "default" if (path / "default").is_dir() else path


def _is_own_step_dir(path: pathlib.Path) -> bool:
    # T5X's orbax checkpoints also carry _CHECKPOINT_METADATA, but keep their tree in
    # `state/`; this project's CheckpointManager writes the `default/` item.
    return (path / "_CHECKPOINT_METADATA").exists() and (path / "default").is_dir()


def is_own_checkpoint(path: str) -> bool:
    """Whether `path` is a step folder (or a MODEL_DIR of step folders) this project wrote."""
    p = pathlib.Path(path)
    return _is_own_step_dir(p) or latest_step_dir(p) is not None


def latest_step_dir(model_dir: pathlib.Path) -> Optional[pathlib.Path]:
    if not model_dir.is_dir():
        return None
    steps = [(int(m.group(1)), child) for child in model_dir.iterdir()
             if (m := _STEP_DIR.match(child.name)) and _is_own_step_dir(child)]
    return max(steps)[1] if steps else None


def restore_state_dict(step_dir: pathlib.Path, abstract_state: Any, shardings: Any) -> dict:
    """Restores {'step', 'params', 'opt_state'} from a step folder into `shardings`."""
    step_dir = pathlib.Path(step_dir)
    checkpointer = ocp.StandardCheckpointer()
    try:
        metadata = checkpointer.metadata(os.fspath(_item_dir(step_dir).absolute()))
    except Exception as error:  # orbax raises many types for unreadable folders
        raise CheckpointError(f"checkpoint {step_dir}: cannot be read ({type(error).__name__}: {error})") from None
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    check_params_match(tree["params"], abstract_state.params, source=str(step_dir))
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract_state.state_dict(), shardings.state_dict())
    return checkpointer.restore(os.fspath(_item_dir(step_dir).absolute()), target)


def restore_params_only(step_dir: pathlib.Path, abstract_params: Any) -> Any:
    """Host numpy params from one of this project's step folders (optimizer state ignored)."""
    checkpointer = ocp.StandardCheckpointer()
    item = os.fspath(_item_dir(step_dir).absolute())
    metadata = checkpointer.metadata(item)
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    check_params_match(tree["params"], abstract_params, source=str(step_dir))
    # Restore only the params subtree: other entries are left out of the target.
    target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), dict(tree))
    restored = checkpointer.restore(item, target)
    return jax.tree.map(np.asarray, restored["params"])


def load_initial_params(path: str, abstract_params: Any) -> Any:
    """Params (host numpy, float32) for INITIAL_CHECKPOINT_PATH, checked against the model."""
    p = pathlib.Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"checkpoint {path}: no such file or directory")
    if is_own_checkpoint(p):
        step_dir = p if _is_own_step_dir(p) else latest_step_dir(p)
        params = restore_params_only(step_dir, abstract_params)
    elif (p / "config.json").is_file():
        # A Hugging Face T5 directory (safetensors or pytorch_model.bin).
        from personalize_t5x.network import hf_checkpoints as checkpoints_hf

        try:
            _, params = checkpoints_hf.import_hf_t5(p)
        except ValueError as error:
            raise CheckpointError(f"checkpoint {path}: {error}") from None
        check_params_match(params, abstract_params, source=str(path))
    else:
        from personalize_t5x.network import checkpoint_importer as checkpoint_import

        try:
            params = checkpoint_import.load_t5x_params(os.fspath(p), expected_shapes=abstract_params)
        except ValueError as error:  # CheckpointImportError: already one line, naming the path
            message = str(error)
            raise CheckpointError(message if str(path) in message else f"checkpoint {path}: {message}") from None
        check_params_match(params, abstract_params, source=str(path))
    return jax.tree.map(lambda x: np.asarray(x, np.float32), params)
