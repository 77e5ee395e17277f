"""Readers for checkpoints written by upstream T5X (no T5X install needed).

Two layouts exist, and both are read:

* **legacy** (``t5x.checkpoints.Checkpointer``, ``use_orbax=False``):
  ``checkpoint_N/checkpoint`` is a msgpack file holding
  ``{'version', 'optimizer': {'target': params, 'state': {'step',
  'param_states'}}}``.  Large arrays are stored as zarr TensorStore arrays in
  sibling directories and the msgpack holds their TensorStore spec (with a
  path relative to the checkpoint directory); small arrays are inline.
* **orbax** (``OrbaxCheckpointManagerInterface``, T5X's default):
  ``checkpoint_N/state/`` is an orbax PyTree checkpoint (OCDBT + zarr) whose
  tree is ``{'target': params, 'state': {'step', 'param_states'}}``.

``load_t5x_params(path)`` returns the parameters as nested dicts of numpy
arrays keyed exactly like the model's ``params`` (``encoder/layers_0/...``);
``load_t5x_checkpoint(path, with_optimizer_state=True)`` also returns the
Adafactor state and step.  ``path`` may be the ``checkpoint_N`` directory, the
legacy ``checkpoint`` file, the orbax ``state`` directory, or a model directory
holding ``checkpoint_N`` subdirectories (the highest N is used).

Every failure raises ``CheckpointImportError`` with a one-line message naming
the path and the problem (missing path, unknown layout, missing parameter,
wrong shape).
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
from flax import traverse_util

from personalize_t5x.errors import PersonalizeError
from personalize_t5x.io import files as io_files

PyTree = Any

LEGACY = "legacy"
ORBAX = "orbax"


class CheckpointImportError(PersonalizeError):
    """A T5X checkpoint could not be read or does not fit the model."""


@dataclasses.dataclass
class T5XCheckpoint:
    """What a T5X checkpoint holds.

    Attributes:
      params: nested dicts of numpy arrays (the model's ``params``).
      optimizer_state: ``{'param_states': ..., 'step': ...}`` as stored (Adafactor
        ``m``/``v``/``v_row``/``v_col`` per parameter), or None when not loaded.
      step: the training step stored in the checkpoint (None if absent).
      format: ``'legacy'`` or ``'orbax'``.
      path: the checkpoint directory that was read.
    """

    params: Dict[str, Any]
    optimizer_state: Optional[Dict[str, Any]]
    step: Optional[int]
    format: str
    path: str


# ---------------------------------------------------------------------------
# Path resolution.
# ---------------------------------------------------------------------------
def _is_orbax_state_dir(path: str) -> bool:
    return os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, name)) for name in ("_METADATA", "manifest.ocdbt", "_sharding")
    )


_STEP_DIR = re.compile(r"^checkpoint_(\d+)$")


def resolve_checkpoint(path: str) -> Tuple[str, str]:
    """Returns ``(format, location)`` for a checkpoint path.

    ``location`` is the legacy checkpoint directory (holding ``checkpoint``) or
    the orbax ``state`` directory.
    """
    path = os.fspath(path)
    if "://" in path:
        raise CheckpointImportError(
            f"T5X checkpoint {path}: only local paths are supported; copy the checkpoint to local disk first"
        )
    if not os.path.exists(path):
        raise CheckpointImportError(f"T5X checkpoint not found: {path}")
    if os.path.isfile(path):
        if os.path.basename(path) == "checkpoint":
            return LEGACY, os.path.dirname(os.path.abspath(path))
        raise CheckpointImportError(
            f"T5X checkpoint {path}: a file other than a legacy 'checkpoint' msgpack; "
            "pass the checkpoint_N directory"
        )
    if os.path.isfile(os.path.join(path, "checkpoint")):
        return LEGACY, os.path.abspath(path)
    if _is_orbax_state_dir(os.path.join(path, "state")):
        return ORBAX, os.path.abspath(os.path.join(path, "state"))
    if _is_orbax_state_dir(path):
        return ORBAX, os.path.abspath(path)
    steps = sorted(
        (int(m.group(1)), name)
        for name in os.listdir(path)
        if (m := _STEP_DIR.match(name)) and os.path.isdir(os.path.join(path, name))
    )
    for _, name in reversed(steps):
        try:
            return resolve_checkpoint(os.path.join(path, name))
        except CheckpointImportError:
            continue
    raise CheckpointImportError(
        f"not a T5X checkpoint: {path} (expected a legacy 'checkpoint' msgpack file, an orbax "
        "'state/' directory, or checkpoint_N subdirectories)"
    )


def detect_format(path: str) -> str:
    """``'legacy'`` or ``'orbax'`` (raises ``CheckpointImportError`` otherwise)."""
    return resolve_checkpoint(path)[0]


# ---------------------------------------------------------------------------
# Tree helpers.
# ---------------------------------------------------------------------------
def flatten(tree: Mapping[str, Any]) -> Dict[str, Any]:
    """Nested dicts -> ``{'a/b/c': leaf}``."""
    return traverse_util.flatten_dict(dict(tree), sep="/")


def unflatten(flat: Mapping[str, Any]) -> Dict[str, Any]:
    """``{'a/b/c': leaf}`` -> nested dicts."""
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def _shape_of(x: Any) -> Tuple[int, ...]:
    if hasattr(x, "shape"):
        return tuple(int(d) for d in x.shape)
    return tuple(int(d) for d in x)


def _normalize_expected(expected: Any) -> Dict[str, Tuple[int, ...]]:
    """Accepts nested or flat dicts of shapes / arrays / ShapeDtypeStructs."""
    if hasattr(expected, "unfreeze"):
        expected = expected.unfreeze()
    if isinstance(expected, Mapping) and "params" in expected and isinstance(expected["params"], Mapping):
        expected = expected["params"]

    def is_leaf(v):
        return not isinstance(v, Mapping)

    flat: Dict[str, Tuple[int, ...]] = {}

    def walk(node, prefix):
        for key, value in node.items():
            name = f"{prefix}/{key}" if prefix else str(key)
            if is_leaf(value):
                flat[name] = _shape_of(value)
            else:
                walk(value, name)

    walk(expected, "")
    return flat


def check_shapes(
    found: Mapping[str, Tuple[int, ...]], expected: Any, where: str
) -> None:
    """Raises a one-line ``CheckpointImportError`` unless names and shapes match."""
    want = _normalize_expected(expected)
    missing = sorted(set(want) - set(found))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointImportError(
            f"T5X checkpoint {where} has no parameter '{missing[0]}'{more} that the model expects"
        )
    extra = sorted(set(found) - set(want))
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise CheckpointImportError(
            f"T5X checkpoint {where} has parameter '{extra[0]}'{more} that the model does not; "
            "is the model config the checkpoint's?"
        )
    for name in sorted(want):
        if tuple(found[name]) != tuple(want[name]):
            raise CheckpointImportError(
                f"T5X checkpoint {where}: parameter '{name}' has shape {tuple(found[name])} "
                f"but the model expects {tuple(want[name])}; is the model config the checkpoint's?"
            )


def expected_param_shapes(config: Any) -> Dict[str, Tuple[int, ...]]:
    """Flat ``{path: shape}`` of the params a ``t5.T5Config`` builds (no allocation)."""
    import jax
    import jax.numpy as jnp

    from personalize_t5x.network import t5

    module = t5.Transformer(config)
    tokens = jnp.ones((1, 1), jnp.int32)
    shapes = jax.eval_shape(
        lambda: module.init(jax.random.PRNGKey(0), tokens, tokens, tokens, enable_dropout=False)
    )
    return {k: tuple(v.shape) for k, v in flatten(shapes["params"]).items()}


# ---------------------------------------------------------------------------
# Legacy (msgpack + TensorStore) reader.
# ---------------------------------------------------------------------------
def _is_ts_spec(x: Any) -> bool:
    return isinstance(x, Mapping) and "driver" in x and "kvstore" in x


# What a T5X legacy checkpoint's TensorStore specs hold (t5x.checkpoints._get_spec): a zarr
# array on a local "file" kvstore, at a path relative to the checkpoint folder. Anything
# else (another driver such as "json", "cast" or "array", an absolute path, a ".." that
# climbs out) could make a crafted checkpoint read arbitrary files, so it is refused.
ALLOWED_ARRAY_DRIVERS = ("zarr",)
ALLOWED_KVSTORE_DRIVERS = ("file",)
_SPEC_KEYS = {"driver", "dtype", "kvstore", "metadata", "path"}
_KVSTORE_KEYS = {"driver", "path"}


def _absolute_spec(spec: Mapping[str, Any], ckpt_dir: str, name: str) -> Dict[str, Any]:
    """A clean TensorStore spec for one array, confined to `ckpt_dir`.

    Only the fields a T5X spec holds are carried over; the result is built afresh rather
    than edited, so no other field of the stored spec reaches TensorStore.
    """
    where = f"T5X checkpoint {ckpt_dir}: array '{name}'"
    driver = spec.get("driver")
    if driver not in ALLOWED_ARRAY_DRIVERS:
        raise CheckpointImportError(f"{where} uses TensorStore driver {driver!r}; only {ALLOWED_ARRAY_DRIVERS} "
                                    "arrays are part of a T5X checkpoint")
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise CheckpointImportError(f"{where}: unexpected spec field {unknown[0]!r}")
    kvstore = spec["kvstore"]
    if isinstance(kvstore, str):
        kvstore = {"driver": "file", "path": kvstore}
    if not isinstance(kvstore, Mapping):
        raise CheckpointImportError(f"{where}: kvstore is {type(kvstore).__name__}, not a spec")
    if kvstore.get("driver") not in ALLOWED_KVSTORE_DRIVERS:
        raise CheckpointImportError(
            f"{where} is stored on '{kvstore.get('driver')}', "
            "only local ('file') arrays can be read; copy the checkpoint to local disk first"
        )
    unknown = sorted(set(kvstore) - _KVSTORE_KEYS)
    if unknown:
        raise CheckpointImportError(f"{where}: unexpected kvstore field {unknown[0]!r}")
    sub = kvstore.get("path", "")
    inner = spec.get("path")
    if not isinstance(sub, str) or (inner is not None and not isinstance(inner, str)):
        raise CheckpointImportError(f"{where}: spec paths must be strings")
    if inner is not None:  # older specs: kvstore is the directory, path the array
        if os.path.isabs(inner):
            raise CheckpointImportError(f"{where}: path {inner!r} is absolute; a T5X spec's path is relative")
        sub = os.path.join(sub, inner)
    if not sub:
        raise CheckpointImportError(f"{where}: spec has no path")
    try:
        confined = io_files.resolve_inside(ckpt_dir, sub, what=f"array '{name}'", error=CheckpointImportError)
    except CheckpointImportError as error:
        raise CheckpointImportError(f"T5X checkpoint {ckpt_dir}: {error.message}") from None
    clean: Dict[str, Any] = {"driver": driver, "kvstore": {"driver": "file", "path": confined.rstrip(os.sep) + os.sep}}
    if isinstance(spec.get("dtype"), str):
        clean["dtype"] = spec["dtype"]
    return clean


def _read_tensorstore(spec: Mapping[str, Any], ckpt_dir: str, name: str) -> np.ndarray:
    import tensorstore as ts

    full = _absolute_spec(spec, ckpt_dir, name)
    if not os.path.exists(full["kvstore"]["path"]):
        raise CheckpointImportError(
            f"T5X checkpoint {ckpt_dir}: array directory for '{name}' is missing: {full['kvstore']['path']}"
        )
    _refuse_escaping_links(full["kvstore"]["path"], ckpt_dir, name)
    try:
        return np.asarray(ts.open(full, open=True, read=True).result().read().result())
    except Exception as exc:  # tensorstore raises ValueError with long text
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointImportError(f"T5X checkpoint {ckpt_dir}: cannot read array '{name}': {first}") from None


def _refuse_escaping_links(array_dir: str, ckpt_dir: str, name: str) -> None:
    """A symlink inside an array folder must not lead out of the checkpoint folder either."""
    root = os.path.realpath(ckpt_dir)
    for folder, dirs, files in os.walk(array_dir):
        for entry in dirs + files:
            full = os.path.join(folder, entry)
            if os.path.islink(full) and os.path.commonpath([os.path.realpath(full), root]) != root:
                raise CheckpointImportError(
                    f"T5X checkpoint {ckpt_dir}: array '{name}' links {full} to {os.path.realpath(full)}, "
                    "outside the checkpoint folder")


def _spec_shape(spec: Mapping[str, Any]) -> Optional[Tuple[int, ...]]:
    meta = spec.get("metadata") or {}
    shape = meta.get("shape")
    return tuple(int(d) for d in shape) if shape is not None else None


def _read_legacy_tree(ckpt_dir: str) -> Dict[str, Any]:
    from flax import serialization

    file = os.path.join(ckpt_dir, "checkpoint")
    try:
        with open(file, "rb") as f:
            raw = f.read()
        tree = serialization.msgpack_restore(raw)
    except Exception as exc:
        raise CheckpointImportError(f"T5X checkpoint {file}: not a readable msgpack checkpoint ({exc})") from None
    if not isinstance(tree, Mapping):
        raise CheckpointImportError(f"T5X checkpoint {file}: unexpected content (not a dict)")
    return tree


def _legacy_parts(tree: Mapping[str, Any], where: str) -> Tuple[Mapping[str, Any], Optional[Mapping[str, Any]]]:
    if "optimizer" in tree and isinstance(tree["optimizer"], Mapping):
        opt = tree["optimizer"]
        if "target" not in opt:
            raise CheckpointImportError(f"T5X checkpoint {where}: 'optimizer' has no 'target' (params)")
        return opt["target"], opt.get("state")
    if "target" in tree:
        return tree["target"], tree.get("state")
    raise CheckpointImportError(f"T5X checkpoint {where}: neither 'optimizer/target' nor 'target' in the msgpack")


def _materialize_legacy(flat: Mapping[str, Any], ckpt_dir: str, prefix: str) -> Dict[str, np.ndarray]:
    out = {}
    for name, leaf in flat.items():
        if _is_ts_spec(leaf):
            out[name] = _read_tensorstore(leaf, ckpt_dir, f"{prefix}{name}")
        else:
            out[name] = np.asarray(leaf)
    return out


def _flatten_legacy(tree: Mapping[str, Any]) -> Dict[str, Any]:
    """Flattens, keeping TensorStore spec dicts as leaves."""
    return traverse_util.flatten_dict(dict(tree), is_leaf=lambda _, node: _is_ts_spec(node), sep="/")


def _load_legacy(ckpt_dir: str, expected_shapes: Any, with_optimizer_state: bool) -> T5XCheckpoint:
    tree = _read_legacy_tree(ckpt_dir)
    target, state = _legacy_parts(tree, ckpt_dir)
    flat = _flatten_legacy(target)
    if expected_shapes is not None:
        shapes = {}
        for name, leaf in flat.items():
            shape = _spec_shape(leaf) if _is_ts_spec(leaf) else np.shape(leaf)
            if shape is None:  # spec without metadata: read to learn the shape
                shape = _read_tensorstore(leaf, ckpt_dir, f"target/{name}").shape
            shapes[name] = tuple(shape)
        check_shapes(shapes, expected_shapes, ckpt_dir)
    params = unflatten(_materialize_legacy(flat, ckpt_dir, "target/"))

    step = None
    optimizer_state = None
    if isinstance(state, Mapping):
        if "step" in state:
            step = int(np.asarray(state["step"]))
        if with_optimizer_state:
            optimizer_state = unflatten(_materialize_legacy(_flatten_legacy(state), ckpt_dir, "state/"))
    return T5XCheckpoint(params, optimizer_state, step, LEGACY, ckpt_dir)


# ---------------------------------------------------------------------------
# Orbax reader.
# ---------------------------------------------------------------------------
def _orbax_tree_metadata(state_dir: str) -> Mapping[str, Any]:
    import orbax.checkpoint as ocp

    from personalize_t5x.io import orbax_loops

    try:
        with orbax_loops.draining_orbax_loops():  # no late TensorStore callbacks after a failure
            meta = ocp.PyTreeCheckpointer().metadata(state_dir)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointImportError(f"T5X checkpoint {state_dir}: unreadable orbax metadata: {first}") from None
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    if not isinstance(tree, Mapping) or "target" not in tree:
        raise CheckpointImportError(f"T5X checkpoint {state_dir}: the orbax tree has no 'target' (params)")
    # Orbax names each array's files after its tree path: a key holding a separator or
    # "..", read from a crafted _METADATA, would point outside the checkpoint folder.
    for name in flatten(tree):
        for part in name.split("/"):
            if part in ("", ".", "..") or "\\" in part or "\x00" in part or part.startswith("~"):
                raise CheckpointImportError(f"T5X checkpoint {state_dir}: tree key {name!r} is not a plain name")
    return tree


def _load_orbax(state_dir: str, expected_shapes: Any, with_optimizer_state: bool) -> T5XCheckpoint:
    import jax
    import orbax.checkpoint as ocp

    tree = _orbax_tree_metadata(state_dir)
    if expected_shapes is not None:
        shapes = {name: tuple(m.shape) for name, m in flatten(tree["target"]).items()}
        check_shapes(shapes, expected_shapes, state_dir)

    state_meta = tree.get("state", {}) if isinstance(tree.get("state"), Mapping) else {}
    wanted: Dict[str, Any] = {"target": tree["target"]}
    if with_optimizer_state and state_meta:
        wanted["state"] = state_meta
    elif "step" in state_meta:
        wanted["state"] = {"step": state_meta["step"]}

    restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
    from personalize_t5x.io import orbax_loops

    try:
        with orbax_loops.draining_orbax_loops():
            restored = ocp.PyTreeCheckpointer().restore(
                state_dir,
                args=ocp.args.PyTreeRestore(item=wanted, restore_args=restore_args, partial_restore=True),
            )
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointImportError(f"T5X checkpoint {state_dir}: orbax restore failed: {first}") from None

    params = unflatten({k: np.asarray(v) for k, v in flatten(restored["target"]).items()})
    state = restored.get("state") or {}
    step = int(np.asarray(state["step"])) if "step" in state else None
    optimizer_state = None
    if with_optimizer_state:
        optimizer_state = unflatten({k: np.asarray(v) for k, v in flatten(state).items()})
    return T5XCheckpoint(params, optimizer_state, step, ORBAX, os.path.dirname(state_dir))


# ---------------------------------------------------------------------------
# Public entry points.
# ---------------------------------------------------------------------------
def _cast(tree: Dict[str, Any], dtype: Any) -> Dict[str, Any]:
    return unflatten({k: np.asarray(v).astype(dtype) for k, v in flatten(tree).items()})


def load_t5x_checkpoint(
    path: str,
    *,
    expected_shapes: Any = None,
    with_optimizer_state: bool = False,
    dtype: Any = None,
) -> T5XCheckpoint:
    """Reads a T5X checkpoint in either layout.

    Args:
      path: checkpoint directory (see module docstring for accepted forms).
      expected_shapes: optional target to check against before any array is
        read: nested or flat (``'a/b'``-keyed) dicts of shapes, arrays or
        ``jax.ShapeDtypeStruct`` (e.g. ``jax.eval_shape`` of ``init``), or the
        result of ``expected_param_shapes(config)``.
      with_optimizer_state: also read the Adafactor state.
      dtype: cast every parameter to this dtype (default: as stored).
    """
    fmt, location = resolve_checkpoint(path)
    if fmt == LEGACY:
        ckpt = _load_legacy(location, expected_shapes, with_optimizer_state)
    else:
        ckpt = _load_orbax(location, expected_shapes, with_optimizer_state)
    if dtype is not None:
        ckpt.params = _cast(ckpt.params, dtype)
    return ckpt


def load_t5x_params(path: str, *, expected_shapes: Any = None, dtype: Any = None) -> Dict[str, Any]:
    """The parameters of a T5X checkpoint as nested dicts of numpy arrays."""
    return load_t5x_checkpoint(path, expected_shapes=expected_shapes, dtype=dtype).params
