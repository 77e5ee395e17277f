"""orbax checkpoints of the train state in T5X's layout, verified on restore.

Layout (T5X's `OrbaxCheckpointManagerInterface`; docs/checkpoints.md has the details):

    MODEL_DIR/checkpoint_<step>/
        _CHECKPOINT_METADATA      orbax's step metadata (item handlers)
        state/                    orbax PyTree (OCDBT) of T5X's state dict:
                                    target/<param path>                      parameters
                                    state/step                               int32 step
                                    state/param_states/<param path>/{m,v,v_row,v_col}
                                  plus, in state/_METADATA's custom_metadata, one crc32c
                                  per array (this project's addition; T5X ignores it)
        dataset/                  the train input iterator (tf.data checkpoint, T5X's
                                  `train_ds-<shard>-of-<shards>` names) or a JSON position

Checkpoints written before this layout (`checkpoint_<step>/default/`, keys `step`,
`params`, `opt_state`) still load.

Every restore is checked name by name and shape by shape against the model, each array
against its crc32c, and every floating array for NaN/Inf; a failure is one
`CheckpointError` line naming the checkpoint and the array.

An initial checkpoint (INITIAL_CHECKPOINT_PATH) may also be a T5X checkpoint (legacy
msgpack + tensorstore, read by `personalize_t5x.network.checkpoint_importer`) or a
Hugging Face T5 directory (read by `personalize_t5x.network.hf_checkpoints`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import re
import shutil
import time
from typing import Any, Callable, Mapping, Optional

import flax.traverse_util
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp

from personalize_t5x.errors import PersonalizeError
from personalize_t5x.io import orbax_loops

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint"
STATE_ITEM = "state"        # T5X's item name for the train state
DATASET_ITEM = "dataset"    # T5X's item name for the input iterator
LEGACY_ITEM = "default"     # this project's item name before the T5X layout
CHECKSUM_METADATA_KEY = "personalize_t5x.crc32c"
QUARANTINE_PREFIX = "bad_"  # a bad checkpoint set aside by the fallback (not a step folder)
_STEP_DIR = re.compile(rf"^{CHECKPOINT_PREFIX}_(\d+)$")


class CheckpointError(PersonalizeError):
    """A checkpoint that cannot be used as asked (missing, corrupt, wrong shapes, non-finite)."""


def ensure_writable_dir(path: str, what: str = "MODEL_DIR") -> pathlib.Path:
    """Creates `path` if needed and proves it writable, or raises one clear error."""
    directory = pathlib.Path(path).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write_probe-{os.getpid()}"  # one per host: hosts share MODEL_DIR
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise CheckpointError(f"{what} {str(directory)!r} is not writable: {error.strerror or error}") from None
    return directory


def flatten(tree: Any) -> dict[str, Any]:
    """{'encoder/layers_0/mlp/wo/kernel': leaf, ...} for a nested dict of arrays."""
    return flax.traverse_util.flatten_dict(_as_dict(tree), sep="/")


def _as_dict(tree: Any) -> Any:
    """Nested plain dicts (flax FrozenDicts and orbax metadata trees included)."""
    if isinstance(tree, Mapping):
        return {str(k): _as_dict(v) for k, v in tree.items()}
    return tree


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__


def _shape(leaf: Any) -> Optional[tuple]:
    if isinstance(leaf, _Shape):
        return None if leaf.shape is None else tuple(leaf.shape)
    return tuple(np.shape(leaf))


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
        a, b = _shape(got[name]), _shape(want[name])
        if a is not None and a != b:
            raise CheckpointError(f"checkpoint {source}: parameter {name!r} has shape {a}, the model expects {b}; "
                                  "the checkpoint was written for a different model config")


# ---------------------------------------------------------------------------
# T5X's tree names <-> optax's Adafactor state
# ---------------------------------------------------------------------------
def _optax_nodes(opt_state: Any) -> list:
    """The optimizer's state records (namedtuples), depth first through chains."""
    if isinstance(opt_state, tuple) and not hasattr(opt_state, "_fields"):
        return [node for part in opt_state for node in _optax_nodes(part)]
    if isinstance(opt_state, list):
        return [node for part in opt_state for node in _optax_nodes(part)]
    return [opt_state]


def _rebuild(opt_state: Any, replace: Callable[[Any], Any]) -> Any:
    if isinstance(opt_state, tuple) and not hasattr(opt_state, "_fields"):
        return tuple(_rebuild(part, replace) for part in opt_state)
    if isinstance(opt_state, list):
        return [_rebuild(part, replace) for part in opt_state]
    return replace(opt_state)


_COUNT_STATES = (optax.ScaleByScheduleState,)


def _momentum_of(node: Any) -> Optional[str]:
    """The params-shaped momentum field of a momentum state (T5X's `m`), if any."""
    name = type(node).__name__
    if name == "EmaState":
        return "ema"
    if name == "TraceState":
        return "trace"
    return None


def t5x_state_dict(step: Any, params: Any, opt_state: Any, *, placeholder: Callable[[Any], Any]) -> dict:
    """T5X's state dict {'target': params, 'state': {'step', 'param_states'}} from optax's state.

    Works on any leaves (arrays, ShapeDtypeStructs, shardings): `placeholder(param_leaf)`
    supplies T5X's shape-[1] `m` where the optimizer keeps no momentum.
    Raises CheckpointError for an optimizer state T5X has no name for.
    """
    factored, momentum = None, None
    for node in _optax_nodes(opt_state):
        if isinstance(node, (optax.EmptyState, *_COUNT_STATES)):
            continue
        if type(node).__name__ == "FactoredState":
            factored = node
        elif _momentum_of(node):
            momentum = getattr(node, _momentum_of(node))
        else:
            raise CheckpointError(f"optimizer state {type(node).__name__} has no T5X name: only optax "
                                  "Adafactor (optionally with momentum) is written in T5X's layout")
    if factored is None:
        raise CheckpointError("the optimizer is not Adafactor: T5X's layout holds Adafactor's state only")
    flat_params = flatten(params)
    fields = {"v_row": flatten(factored.v_row), "v_col": flatten(factored.v_col), "v": flatten(factored.v)}
    fields["m"] = flatten(momentum) if momentum is not None else {k: placeholder(v) for k, v in flat_params.items()}
    param_states = {}
    for name in flat_params:
        for field, values in fields.items():
            param_states[f"{name}/{field}"] = values[name]
    return {"target": _as_dict(params),
            "state": {"step": step, "param_states": flax.traverse_util.unflatten_dict(param_states, sep="/")}}


def optax_state_from_t5x(tree: Mapping[str, Any], template_opt_state: Any) -> tuple[Any, Any, Any]:
    """(step, params, opt_state) from a T5X state dict, opt_state shaped like `template_opt_state`."""
    step = tree["state"]["step"]
    params = tree["target"]
    flat_states = flatten(tree["state"]["param_states"])

    def field_tree(template: Any, field: str) -> Any:
        return jax.tree_util.tree_map_with_path(
            lambda path, _: flat_states["/".join(_key(k) for k in path) + "/" + field], template)

    def replace(node):
        name = type(node).__name__
        if name == "FactoredState":
            return node._replace(count=_like(step, node.count), v_row=field_tree(node.v_row, "v_row"),
                                 v_col=field_tree(node.v_col, "v_col"), v=field_tree(node.v, "v"))
        if isinstance(node, _COUNT_STATES):
            return node._replace(count=_like(step, node.count))
        if _momentum_of(node):
            fields = {_momentum_of(node): field_tree(getattr(node, _momentum_of(node)), "m")}
            if hasattr(node, "count"):
                fields["count"] = _like(step, node.count)
            return node._replace(**fields)
        return node

    return step, params, _rebuild(template_opt_state, replace)


def _key(entry: Any) -> str:
    return str(getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry))))


def _like(value: Any, template: Any) -> Any:
    """A copy of the step for an optimizer count: one buffer each (the train step donates them)."""
    dtype = getattr(template, "dtype", None)
    return jax.numpy.array(value, dtype=dtype, copy=True)


# ---------------------------------------------------------------------------
# Checksums and finiteness
# ---------------------------------------------------------------------------
def array_crc32c(value: Any) -> str:
    """crc32c (hex) of an array's bytes in C order."""
    import google_crc32c

    host = np.ascontiguousarray(np.asarray(value))
    return f"{google_crc32c.value(host.reshape(-1).view(np.uint8).tobytes()):08x}"


def checksums_of(tree: Mapping[str, Any]) -> dict[str, Optional[str]]:
    """{'target/encoder/...': crc32c} for every array this process holds whole (else None)."""
    out = {}
    for name, leaf in flatten(tree).items():
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            out[name] = None  # multi-host shard: orbax writes it; no one process sees all bytes
        else:
            out[name] = array_crc32c(jax.device_get(leaf))
    return out


def _named_leaves(tree: Any) -> dict[str, Any]:
    """Every array leaf by its '/'-joined path; unlike `flatten`, goes through tuples
    (the older layout's optax state) too. For nested dicts the names equal `flatten`'s."""
    return {"/".join(_key(k) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def verify_arrays(tree: Mapping[str, Any], checksums: Optional[Mapping[str, Optional[str]]], *,
                  source: str) -> None:
    """Raises CheckpointError for the first array whose crc32c differs or that holds NaN/Inf."""
    for name, leaf in sorted(_named_leaves(tree).items()):
        whole = not (isinstance(leaf, jax.Array) and not leaf.is_fully_addressable)
        if whole:
            host = np.asarray(jax.device_get(leaf))
            if checksums is not None:
                want = checksums.get(name)
                if want is not None and array_crc32c(host) != want:
                    raise CheckpointError(f"checkpoint {source}: array {name!r} fails its crc32c check "
                                          f"(stored {want}, read {array_crc32c(host)}): the file is corrupt")
            finite = not np.issubdtype(host.dtype, np.inexact) or bool(np.isfinite(host).all())
        else:
            import jax.numpy as jnp

            finite = not jnp.issubdtype(leaf.dtype, jnp.inexact) or bool(jnp.isfinite(leaf).all())
        if not finite:
            raise CheckpointError(f"checkpoint {source}: array {name!r} holds NaN or Inf; "
                                  "refusing a non-finite train state")


# ---------------------------------------------------------------------------
# Finding checkpoints
# ---------------------------------------------------------------------------
def _item_dir(step_dir: pathlib.Path) -> pathlib.Path:
    """The orbax item folder of a step folder: T5X's `state/`, the older `default/`, or itself."""
    for name in (STATE_ITEM, LEGACY_ITEM):
        if (step_dir / name).is_dir():
            return step_dir / name
    return step_dir


def _is_own_step_dir(path: pathlib.Path) -> bool:
    """A finished orbax step folder in either layout (T5X's orbax checkpoints included).

    orbax renames the temporary folder only after the commit and writes
    _CHECKPOINT_METADATA into it, so a save killed midway never matches.
    """
    return ((path / "_CHECKPOINT_METADATA").exists()
            and ((path / STATE_ITEM / "_METADATA").exists() or (path / LEGACY_ITEM).is_dir()))


def is_own_checkpoint(path: str) -> bool:
    """Whether `path` is an orbax step folder (or a MODEL_DIR of them) this loader restores."""
    p = pathlib.Path(path)
    return _is_own_step_dir(p) or latest_step_dir(p) is not None


def step_dirs(model_dir: pathlib.Path, *, damaged_too: bool = False) -> list[tuple[int, pathlib.Path]]:
    """[(step, folder)] of the finished orbax step folders in `model_dir`, oldest first.

    `damaged_too` also lists `checkpoint_<step>` folders whose metadata is missing (orbax
    names a folder so only after its commit, so on resume such a folder is damage to
    report, not an unfinished save to pass over); T5X legacy folders (a `checkpoint`
    msgpack file) are never listed.
    """
    model_dir = pathlib.Path(model_dir)
    if not model_dir.is_dir():
        return []
    found = []
    for child in model_dir.iterdir():
        match = _STEP_DIR.match(child.name)
        if not match or not child.is_dir():
            continue
        if _is_own_step_dir(child) or (damaged_too and not (child / "checkpoint").is_file()):
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_step_dir(model_dir: pathlib.Path) -> Optional[pathlib.Path]:
    steps = step_dirs(model_dir)
    return steps[-1][1] if steps else None


def step_of(step_dir: pathlib.Path) -> Optional[int]:
    match = _STEP_DIR.match(pathlib.Path(step_dir).name)
    return int(match.group(1)) if match else None


def _is_t5x_legacy_step_dir(path: pathlib.Path) -> bool:
    """A T5X legacy (msgpack + tensorstore) step folder: its `checkpoint` file is written last."""
    return (path / "checkpoint").is_file()


def restorable_step_dirs(model_dir: pathlib.Path) -> list[tuple[int, pathlib.Path]]:
    """[(step, folder)] a restore can read, oldest first: finished orbax step folders and T5X
    legacy ones (the importer reads those), as T5X's `checkpoints.all_steps` lists them.

    Unlike T5X's glob, a `checkpoint_<step>` folder orbax never finished is passed over.
    """
    found = dict(step_dirs(model_dir))
    model_dir = pathlib.Path(model_dir)
    if model_dir.is_dir():
        for child in model_dir.iterdir():
            match = _STEP_DIR.match(child.name)
            if match and child.is_dir() and _is_t5x_legacy_step_dir(child):
                found.setdefault(int(match.group(1)), child)
    return sorted(found.items())


def is_model_dir(path: pathlib.Path) -> bool:
    """Whether `path` is a folder of checkpoint_<step> folders rather than one checkpoint."""
    p = pathlib.Path(path)
    if not p.is_dir() or _is_own_step_dir(p) or _is_t5x_legacy_step_dir(p):
        return False
    return any(_STEP_DIR.match(child.name) and child.is_dir() for child in p.iterdir())


def checkpoint_paths(path: str, mode: str) -> list[pathlib.Path]:
    """RestoreCheckpointConfig's `path` and `mode` (T5X's rules) as step folders to restore.

    'specific': `path` itself (a step folder or any importable checkpoint);
    'latest': the newest step folder in `path` (a MODEL_DIR);
    'all': every step folder in `path`, oldest first (evaluation of a whole run).
    Step folders are those of `restorable_step_dirs`, ordered by step number.
    """
    p = pathlib.Path(path).expanduser()
    if mode == "specific":
        return [p]
    if not p.is_dir():
        raise CheckpointError(f"checkpoint {path}: no such directory (RestoreCheckpointConfig.mode={mode!r} "
                              "expects a MODEL_DIR of checkpoint_<step> folders)")
    steps = restorable_step_dirs(p)
    if not steps and (_is_own_step_dir(p) or _is_t5x_legacy_step_dir(p)):
        raise CheckpointError(f"checkpoint {path}: is one checkpoint, not a MODEL_DIR of checkpoint_<step> "
                              f"folders (RestoreCheckpointConfig.mode={mode!r}): use mode 'specific' for it")
    if not steps:
        raise CheckpointError(f"checkpoint {path}: holds no finished checkpoint_<step> folder "
                              f"(RestoreCheckpointConfig.mode={mode!r})")
    if mode == "latest":
        return [steps[-1][1]]
    if mode == "all":
        return [folder for _, folder in steps]
    raise CheckpointError(f"RestoreCheckpointConfig.mode must be 'specific', 'latest' or 'all'; got {mode!r}")


# ---------------------------------------------------------------------------
# Reading one step folder
# ---------------------------------------------------------------------------
def _read_json(path: pathlib.Path, *, source: pathlib.Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {source}: {path.name} is missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {source}: {path.relative_to(source)} is unreadable "
                              f"({_one_line(error)})") from None


@dataclasses.dataclass
class _ItemTree:
    """What a step folder's metadata says about its tree, before reading any array."""

    layout: str  # 't5x' (state/) or 'legacy' (default/)
    item_dir: pathlib.Path
    shapes: dict  # flat name -> shape, in this layout's names
    checksums: Optional[dict]


def _inspect(step_dir: pathlib.Path) -> _ItemTree:
    step_dir = pathlib.Path(step_dir)
    if not step_dir.is_dir():
        raise CheckpointError(f"checkpoint {step_dir}: no such directory")
    _read_json(step_dir / "_CHECKPOINT_METADATA", source=step_dir)
    item = _item_dir(step_dir)
    layout = "t5x" if item.name == STATE_ITEM else "legacy"
    metadata = _read_json(item / "_METADATA", source=step_dir)
    if not isinstance(metadata, dict) or not isinstance(metadata.get("tree_metadata"), dict):
        raise CheckpointError(f"checkpoint {step_dir}: {item.name}/_METADATA has no tree")
    # Global shapes come from the arrays' own metadata (_METADATA's write_shape is the
    # shard written, not the array).
    try:
        names = ["/".join(str(k["key"]) for k in entry["key_metadata"])
                 for entry in metadata["tree_metadata"].values()]
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"checkpoint {step_dir}: {item.name}/_METADATA has no readable tree "
                              f"({_one_line(error)})") from None
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        with orbax_loops.draining_orbax_loops():  # a damaged array's metadata read fails like a restore
            tree = checkpointer.metadata(os.fspath(item.absolute()))
        tree = getattr(getattr(tree, "item_metadata", tree), "tree", tree)
        shapes = {name: (None if getattr(leaf, "shape", None) is None else tuple(leaf.shape))
                  for name, leaf in flatten(tree).items()}
    except Exception:  # a damaged array: the restore that follows names it
        shapes = {name: None for name in names}
    finally:
        checkpointer.close()
    custom = metadata.get("custom_metadata") or {}
    checksums = custom.get(CHECKSUM_METADATA_KEY) if isinstance(custom, dict) else None
    return _ItemTree(layout=layout, item_dir=item, shapes=shapes, checksums=checksums)


def _sub(shapes: Mapping[str, tuple], prefix: str) -> dict:
    """The params-shaped sub-tree {name: shape} of the flat names under `prefix/`."""
    cut = len(prefix) + 1
    return flax.traverse_util.unflatten_dict(
        {k[cut:]: _Shape(v) for k, v in shapes.items()
         if k.startswith(prefix + "/")}, sep="/")


@dataclasses.dataclass(frozen=True)
class _Shape:
    shape: Optional[tuple]


def _restore_item(item_dir: pathlib.Path, target: Any, *, source: pathlib.Path, partial: bool = False) -> Any:
    """orbax restore of `target` (ShapeDtypeStructs with shardings), failures in one line.

    When the whole restore fails, each array is read on its own to name the first bad one.
    """
    try:
        return _orbax_restore(item_dir, target, partial=partial)
    except Exception as error:  # tensorstore/orbax raise many types for damaged files
        where = _locate(error, target) or _first_unreadable(item_dir, target)
        raise CheckpointError(f"checkpoint {source}: {item_dir.name}/ cannot be read "
                              f"({where}{_one_line(error)})") from None


def _orbax_restore(item_dir: pathlib.Path, target: Any, *, partial: bool) -> Any:
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        restore_args = ocp.checkpoint_utils.construct_restore_args(target)
        with orbax_loops.draining_orbax_loops():
            return checkpointer.restore(os.fspath(item_dir.absolute()), args=ocp.args.PyTreeRestore(
                item=target, restore_args=restore_args, partial_restore=partial))
    finally:
        checkpointer.close()


def _first_unreadable(item_dir: pathlib.Path, target: Any) -> str:
    for name, leaf in sorted(flatten(target).items()):
        try:
            _orbax_restore(item_dir, flax.traverse_util.unflatten_dict({name: leaf}, sep="/"), partial=True)
        except Exception:
            return f"array {name!r}: "
    return ""


def _locate(error: BaseException, target: Any) -> str:
    """'array NAME: ' when the error text names one of the target's arrays."""
    text = str(error)
    for name in sorted(flatten(target), key=len, reverse=True):
        if name.replace("/", ".") in text or name in text:
            return f"array {name!r}: "
    return ""


def _restore_verified(step_dir: pathlib.Path, abstract_state: Any, shardings: Any,
                      *, params_only: bool = False) -> dict:
    """{'step', 'params', 'opt_state'} from either layout, checksums and finiteness checked."""
    step_dir = pathlib.Path(step_dir)
    info = _inspect(step_dir)
    params_prefix = "target" if info.layout == "t5x" else "params"
    check_params_match(_sub(info.shapes, params_prefix), _shapes_of(abstract_state.params), source=str(step_dir))

    def struct(a, s):
        return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)

    if params_only:
        target = {params_prefix: jax.tree.map(struct, _as_dict(abstract_state.params), _as_dict(shardings.params))}
        restored = _restore_partial(info.item_dir, target, source=step_dir)
        verify_arrays(restored, info.checksums, source=str(step_dir))
        return {"params": restored[params_prefix]}

    if info.layout == "t5x":
        def placeholder_struct(a):
            return jax.ShapeDtypeStruct((1,), np.float32)

        abstract_tree = t5x_state_dict(abstract_state.step, abstract_state.params, abstract_state.opt_state,
                                       placeholder=placeholder_struct)
        sharding_tree = t5x_state_dict(shardings.step, shardings.params, shardings.opt_state,
                                       placeholder=lambda s: _replicated_like(s))
        flat_abstract, flat_sharding = flatten(abstract_tree), flatten(sharding_tree)
        missing = sorted(set(flat_abstract) - set(info.shapes))
        if missing:
            raise CheckpointError(f"checkpoint {step_dir}: array {missing[0]!r} is missing "
                                  f"({len(missing)} in all); was it written with another optimizer?")
        for name, a in flat_abstract.items():
            if info.shapes[name] is not None and tuple(info.shapes[name]) != tuple(a.shape):
                raise CheckpointError(f"checkpoint {step_dir}: array {name!r} has shape {tuple(info.shapes[name])}, "
                                      f"the optimizer expects {tuple(a.shape)}")
        target = flax.traverse_util.unflatten_dict(
            {k: struct(v, flat_sharding[k]) for k, v in flat_abstract.items()}, sep="/")
        restored = _restore_item(info.item_dir, target, source=step_dir)
        verify_arrays(restored, info.checksums, source=str(step_dir))
        step, params, opt_state = optax_state_from_t5x(restored, abstract_state.opt_state)
        return {"step": step, "params": params, "opt_state": opt_state}

    # The layout before T5X's: {'step', 'params', 'opt_state'} in default/.
    target = jax.tree.map(struct, abstract_state.state_dict(), shardings.state_dict())
    restored = _restore_item(info.item_dir, target, source=step_dir)
    verify_arrays(restored, info.checksums, source=str(step_dir))
    opt_treedef = jax.tree.structure(abstract_state.opt_state)
    opt_state = jax.tree.unflatten(opt_treedef, jax.tree.leaves(restored["opt_state"]))
    return {"step": restored["step"], "params": restored["params"], "opt_state": opt_state}


def _restore_partial(item_dir: pathlib.Path, target: Any, *, source: pathlib.Path) -> Any:
    return _restore_item(item_dir, target, source=source, partial=True)


def _shapes_of(tree: Any) -> Any:
    return jax.tree.map(lambda a: _Shape(tuple(a.shape)), tree)


def _zeros_placeholder(param: Any) -> Any:
    sharding = getattr(param, "sharding", None)
    zeros = np.zeros((1,), np.float32)
    if sharding is None:
        return jax.numpy.asarray(zeros)
    return jax.make_array_from_callback((1,), _replicated_like(sharding), lambda index: zeros[index])


def _replicated_like(sharding: Any) -> Any:
    mesh = getattr(sharding, "mesh", None)
    if mesh is None:
        return sharding
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def restore_state_dict(step_dir: pathlib.Path, abstract_state: Any, shardings: Any,
                       *, dtype: Optional[str] = None) -> dict:
    """Restores {'step', 'params', 'opt_state'} from a step folder into `shardings`, verified.

    `dtype` (RestoreCheckpointConfig.dtype) casts the parameters after verification, as
    T5X's `restore_dtype` does (optimizer state and step keep their own types).
    """
    restored = _restore_verified(step_dir, abstract_state, shardings)
    if dtype is not None:
        restored["params"] = jax.tree.map(lambda x: x.astype(dtype), restored["params"])
    return restored


def restore_params_only(step_dir: pathlib.Path, abstract_params: Any, *, dtype: str = "float32") -> Any:
    """Host numpy params from an orbax step folder (either layout), optimizer state ignored."""
    host = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = _AbstractParamsState(params=abstract_params)
    shardings = _AbstractParamsState(params=jax.tree.map(lambda _: host, abstract_params))
    restored = _restore_verified(step_dir, abstract, shardings, params_only=True)
    return jax.tree.map(lambda x: np.asarray(x).astype(dtype), restored["params"])


@dataclasses.dataclass
class _AbstractParamsState:
    """Just enough of a TrainState for a params-only restore (no optimizer)."""

    params: Any
    step: Any = None
    opt_state: Any = None

    def state_dict(self) -> dict:
        return {"params": self.params}


def has_optimizer_state(step_dir: pathlib.Path) -> bool:
    """Whether an orbax step folder holds a whole train state (step and optimizer state)."""
    info = _inspect(pathlib.Path(step_dir))
    prefix = "state/param_states" if info.layout == "t5x" else "opt_state"
    return any(name == prefix or name.startswith(prefix + "/") for name in info.shapes)


def load_initial_params(path: str, abstract_params: Any, *, dtype: str = "float32") -> Any:
    """Params (host numpy, `dtype`) for INITIAL_CHECKPOINT_PATH, checked against the model."""
    p = pathlib.Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"checkpoint {path}: no such file or directory")
    if is_own_checkpoint(p):
        step_dir = p if _is_own_step_dir(p) else latest_step_dir(p)
        return restore_params_only(step_dir, abstract_params, dtype=dtype)
    if (p / "config.json").is_file():
        # A Hugging Face T5 directory (safetensors or pytorch_model.bin).
        from personalize_t5x.network import hf_checkpoints as checkpoints_hf

        try:
            _, params = checkpoints_hf.import_hf_t5(p)
        except ValueError as error:
            raise CheckpointError(f"checkpoint {path}: {error}") from None
    else:
        from personalize_t5x.network import checkpoint_importer as checkpoint_import

        try:
            params = checkpoint_import.load_t5x_params(os.fspath(p), expected_shapes=abstract_params)
        except ValueError as error:  # CheckpointImportError: already one line, naming the path
            message = str(error)
            raise CheckpointError(message if str(path) in message else f"checkpoint {path}: {message}") from None
    check_params_match(params, abstract_params, source=str(path))
    verify_arrays({"target": params}, None, source=str(path))
    return jax.tree.map(lambda x: np.asarray(x, np.float32).astype(dtype), params)


# ---------------------------------------------------------------------------
# The input iterator (T5X's dataset/ item)
# ---------------------------------------------------------------------------
class DatasetIteratorHandler(ocp.CheckpointHandler):
    """Saves and restores a tf.data iterator into the step's `dataset/` folder.

    The file is T5X's `train_ds-<shard>-of-<shards>` (a tf.train.Checkpoint of the
    iterator). A pipeline tf.data cannot checkpoint (a Python generator source) is
    recorded as its position instead (`position-<shard>-of-<shards>.json`: batches
    consumed), which the trainer then replays by skipping; it says so in the log.
    """

    def __init__(self, shard: int = 0, num_shards: int = 1):
        self.shard, self.num_shards = int(shard), int(num_shards)

    @property
    def _name(self) -> str:
        return f"train_ds-{self.shard:03}-of-{self.num_shards:03}"

    @property
    def _position_name(self) -> str:
        return f"position-{self.shard:03}-of-{self.num_shards:03}.json"

    def save(self, directory, args: "DatasetArgs") -> None:
        directory = pathlib.Path(os.fspath(directory))
        item = args.item
        if item is None:
            return
        directory.mkdir(parents=True, exist_ok=True)
        (directory / self._position_name).write_text(json.dumps({"batches": int(item.position)}))
        if item.checkpointable:
            import tensorflow as tf

            try:
                tf.train.Checkpoint(ds=item.iterator).write(os.fspath(directory / self._name))
            except (tf.errors.OpError, ValueError, TypeError) as error:
                # e.g. a from_generator source: its Python state is not in the graph.
                item.checkpointable = False
                for partial in directory.glob(f"{self._name}*"):
                    partial.unlink()
                logger.warning("the train input cannot be checkpointed by tf.data (%s); its position is "
                               "saved instead and a resumed run skips that many batches", _one_line(error))

    def restore(self, directory, args: Optional["DatasetArgs"] = None) -> Any:
        directory = pathlib.Path(os.fspath(directory))
        item = args.item if args is not None else None
        position_file = directory / self._position_name
        if item is None or not position_file.exists():
            return None
        position = int(json.loads(position_file.read_text())["batches"])
        if item.checkpointable and (directory / f"{self._name}.index").exists():
            import tensorflow as tf

            tf.train.Checkpoint(ds=item.iterator).read(os.fspath(directory / self._name)).assert_consumed()
            item.position = position
            item.restored_from = "iterator"
        else:
            item.skip_to(position)
            item.restored_from = "position"
        return item

    def metadata(self, directory) -> None:
        return None


@ocp.args.register_with_handler(DatasetIteratorHandler, for_save=True, for_restore=True)
@dataclasses.dataclass
class DatasetArgs(ocp.args.CheckpointArgs):
    item: Any = None


# ---------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------
class TrainStateCheckpointer:
    """Saves every `period` steps into `model_dir` in T5X's layout, keeps the last `keep`."""

    def __init__(self, model_dir: str, *, period: int = 1000, keep: Optional[int] = None,
                 asynchronous: bool = True, shard: int = 0, num_shards: int = 1):
        if period < 1:
            raise CheckpointError(f"checkpoint period must be >= 1; got {period}")
        if keep is not None and keep < 1:
            raise CheckpointError(f"keep must be >= 1 or None (keep all); got {keep}")
        self.model_dir = ensure_writable_dir(model_dir)
        self.period = period
        self.manager = ocp.CheckpointManager(
            os.fspath(self.model_dir.absolute()),
            item_handlers={STATE_ITEM: ocp.PyTreeCheckpointHandler(use_ocdbt=True),
                           DATASET_ITEM: DatasetIteratorHandler(shard, num_shards)},
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, step_prefix=CHECKPOINT_PREFIX, create=True,
                enable_async_checkpointing=asynchronous, cleanup_tmp_directories=True))

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, state: Any, *, step: Optional[int] = None, force: bool = False,
             dataset: Any = None) -> bool:
        """Saves `state` (a TrainState) when its step is due (or `force`); returns whether it did.

        Pass the host-side `step` when known: reading `state.step` waits for the device.
        `dataset` (a `trainer.utils.CheckpointableInput`) is saved as T5X's dataset item.
        """
        step = int(jax.device_get(state.step)) if step is None else int(step)
        if not force and step % self.period:
            return False
        if step in self.manager.all_steps():
            return False
        # T5X's shape-[1] `m` placeholders, placed like the state (replicated jax.Arrays).
        tree = t5x_state_dict(state.step, state.params, state.opt_state, placeholder=_zeros_placeholder)
        # The checksums are of the host bytes orbax is about to write (float32 as trained).
        metadata = {CHECKSUM_METADATA_KEY: checksums_of(tree)}
        self.manager.save(step, args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.PyTreeSave(tree, custom_metadata=metadata),
            DATASET_ITEM: DatasetArgs(dataset)}), force=True)
        return True

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def restore(self, abstract_state: Any, shardings: Any, step: Optional[int] = None) -> dict:
        """The verified state dict at `step` (latest if None), placed with `shardings`."""
        self.manager.wait_until_finished()
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.model_dir}")
        return restore_state_dict(self.model_dir / f"{CHECKPOINT_PREFIX}_{step}", abstract_state, shardings)

    def close(self) -> None:
        try:
            self.manager.wait_until_finished()
        finally:
            self.manager.close()


def restore_dataset(step_dir: pathlib.Path, dataset: Any, *, shard: int = 0, num_shards: int = 1) -> Optional[str]:
    """Positions `dataset` (a CheckpointableInput) as saved in `step_dir/dataset/`.

    Returns how: 'iterator' (tf.data state restored), 'position' (replayed by skipping),
    or None when the checkpoint holds no dataset item (then the caller skips `step` batches).
    """
    folder = pathlib.Path(step_dir) / DATASET_ITEM
    if not folder.is_dir():
        return None
    try:
        item = DatasetIteratorHandler(shard, num_shards).restore(folder, DatasetArgs(dataset))
    except Exception as error:  # tf.errors.* for a damaged or foreign iterator checkpoint
        raise CheckpointError(f"checkpoint {step_dir}: dataset/ cannot be restored ({_one_line(error)})") from None
    return None if item is None else item.restored_from


def quarantine(step_dir: pathlib.Path) -> pathlib.Path:
    """Moves a bad step folder aside (`bad_checkpoint_<step>-<time>`) so nothing resumes from it."""
    step_dir = pathlib.Path(step_dir)
    target = step_dir.with_name(f"{QUARANTINE_PREFIX}{step_dir.name}-{int(time.time())}")
    shutil.move(os.fspath(step_dir), os.fspath(target))
    return target


def resume(model_dir: pathlib.Path, abstract_state: Any, shardings: Any, *, fallback: bool,
           fallback_option: str, on_fallback: Callable[[str], None] = logger.warning,
           restore_fn: Optional[Callable[[pathlib.Path], dict]] = None) -> Optional[tuple[pathlib.Path, dict]]:
    """(step folder, restored state dict) of the newest good checkpoint in MODEL_DIR, or None.

    A bad newest checkpoint raises CheckpointError naming it, the previous one and
    `fallback_option`; with `fallback` the bad one is moved aside (`bad_checkpoint_*`) and
    the next older one is tried, and so on.
    """
    restore_fn = restore_fn or (lambda d: restore_state_dict(d, abstract_state, shardings))
    candidates = step_dirs(model_dir, damaged_too=True)
    while candidates:
        step, folder = candidates[-1]
        try:
            return folder, restore_fn(folder)
        except CheckpointError as error:
            previous = candidates[-2][1] if len(candidates) > 1 else None
            if not fallback or previous is None:
                hint = (f"; the previous checkpoint is {previous.name}: rerun with {fallback_option} to set "
                        f"{folder.name} aside and resume from it" if previous is not None else
                        f"; there is no older checkpoint: move {folder.name} away to start over")
                raise CheckpointError(f"{error} (MODEL_DIR resumes from its latest checkpoint){hint}") from None
            moved = quarantine(folder)
            on_fallback(f"[train] {error}; set aside as {moved.name}, falling back to "
                        f"{previous.name if previous else 'a fresh start'}")
            candidates = candidates[:-1]
    return None
