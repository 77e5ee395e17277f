"""Device meshes and logical-axis sharding, T5X style.

A `PjitPartitioner` lays the devices out as a 2-D mesh with axes `data` and `model`
(`num_partitions` devices along `model`, the rest along `data`). Models name the axes of
their parameters and activations logically (`embed`, `mlp`, `heads`, `vocab`, ...);
`standard_logical_axis_rules` maps those names onto mesh axes exactly as T5X does, and
XLA's GSPMD partitioner does the rest. Parameters, optimizer state and the batch get
explicit shardings; activations follow the `with_logical_constraint` calls inside the
model, which see the rules through the context this module installs around every call.

Multi-host runs call `initialize_distributed` (the flags T5X uses: coordinator address,
process count, process index) before anything touches a device.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from flax.core import meta as flax_meta
from jax.sharding import Mesh, NamedSharding, PartitionSpec

LogicalAxisRules = Sequence[tuple[str, Optional[str]]]

DATA_AXIS = "data"
MODEL_AXIS = "model"

logger = logging.getLogger(__name__)


def standard_logical_axis_rules(
    activation_partitioning_dims: int = 1,
    parameter_partitioning_dims: int = 1,
    additional_rules: Optional[LogicalAxisRules] = None,
) -> list[tuple[str, Optional[str]]]:
    """T5X's default logical-axis -> mesh-axis rules (1-D or 2-D sharding).

    Args:
      activation_partitioning_dims: 2 also shards activations' `embed` along `model`.
      parameter_partitioning_dims: 2 also shards parameters' `embed` along `data`.
      additional_rules: appended after the standard rules (earlier rules win).
    """
    common = [("batch", DATA_AXIS), ("vocab", MODEL_AXIS), ("mlp", MODEL_AXIS),
              ("heads", MODEL_AXIS), ("kv", None), ("joined_kv", MODEL_AXIS)]
    dims = (activation_partitioning_dims, parameter_partitioning_dims)
    if dims == (1, 1):
        rules = common[:2] + [("embed", None)] + common[2:]
    elif dims == (2, 1):
        rules = common + [("embed", MODEL_AXIS)]
    elif dims == (1, 2):
        rules = common + [("embed", DATA_AXIS)]
    elif dims == (2, 2):
        rules = common + [("embed", MODEL_AXIS), ("embed", DATA_AXIS)]
    else:
        raise ValueError(
            f"activation_partitioning_dims={activation_partitioning_dims} and "
            f"parameter_partitioning_dims={parameter_partitioning_dims}: each must be 1 or 2")
    # Axes every T5X model names but never shards.
    rules += [("relpos_buckets", None), ("abspos_buckets", None), ("length", None),
              ("layers", None), ("stack", None), ("mlp_activations", None)]
    if additional_rules:
        rules += list(additional_rules)
    return rules


def initialize_distributed(*, multiprocess_gpu: bool = False,
                           coordinator_address: Optional[str] = None,
                           process_count: Optional[int] = None,
                           process_index: Optional[int] = None,
                           initialization_timeout: Optional[int] = None) -> None:
    """Joins a multi-host job (T5X's flags); a no-op for a single process.

    `initialization_timeout` (T5X's --initialization_timeout): seconds to wait for every
    process to join; None keeps jax's default.

    On Cloud TPU VMs `jax.distributed.initialize()` discovers everything itself, so
    `--multiprocess_gpu` alone (or a coordinator address) is enough to turn it on.
    """
    if not multiprocess_gpu and coordinator_address is None:
        return
    if coordinator_address is not None and (process_count is None or process_index is None):
        raise ValueError("--coordinator_address needs --process_count and --process_index too")
    if process_count is not None and process_index is not None and not 0 <= process_index < process_count:
        raise ValueError(f"--process_index={process_index} is outside [0, --process_count={process_count})")
    logger.info("jax.distributed.initialize(coordinator=%s, processes=%s, index=%s)",
                coordinator_address, process_count, process_index)
    timeout = {} if initialization_timeout is None else {"initialization_timeout": int(initialization_timeout)}
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=process_count, process_id=process_index, **timeout)


def _axis_size(mesh: Mesh, axis: Any) -> int:
    if axis is None:
        return 1
    if isinstance(axis, (tuple, list)):
        return int(np.prod([mesh.shape[a] for a in axis]))
    return int(mesh.shape[axis])


def _divisible_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """Replicates any dimension the mesh axis does not divide (XLA requires even tiles).

    T5X would fail here; a tiny test model (e.g. 6 heads on a 4-way model axis) would
    then be unusable on that mesh, so the dimension is replicated instead, with a log
    line, and everything else stays sharded.
    """
    axes = list(spec) + [None] * (len(shape) - len(spec))
    fixed = []
    for size, axis in zip(shape, axes):
        if axis is not None and size % _axis_size(mesh, axis):
            logger.info("replicating a dimension of size %d: mesh axis %s does not divide it", size, axis)
            axis = None
        fixed.append(axis)
    return PartitionSpec(*fixed)


@dataclasses.dataclass
class PjitPartitioner:
    """A `data` x `model` device mesh plus the logical axis rules (T5X's class name).

    Attributes:
      num_partitions: devices along `model` (model parallelism); the remaining
        devices form the `data` axis. 1 means pure data parallelism.
      mesh_shape: an explicit (data, model) shape instead of `num_partitions`;
        -1 in one place means "the rest of the devices".
      logical_axis_rules: logical -> mesh axis rules; T5X's standard ones if None.
      devices: the devices to use (all of `jax.devices()` if None).
    """

    num_partitions: Optional[int] = 1
    mesh_shape: Optional[Sequence[int]] = None
    logical_axis_rules: Optional[LogicalAxisRules] = None
    devices: Optional[Sequence[Any]] = None

    def __post_init__(self):
        devices = list(self.devices if self.devices is not None else jax.devices())
        count = len(devices)
        if self.mesh_shape is not None:
            shape = [int(s) for s in self.mesh_shape]
            if len(shape) != 2:
                raise ValueError(f"mesh_shape must be (data, model); got {tuple(self.mesh_shape)}")
            if shape.count(-1) > 1:
                raise ValueError("mesh_shape may hold -1 in one place only")
            if -1 in shape:
                other = shape[1 - shape.index(-1)]
                if other <= 0 or count % other:
                    raise ValueError(f"mesh_shape {tuple(shape)} does not divide {count} devices")
                shape[shape.index(-1)] = count // other
        else:
            model = int(self.num_partitions or 1)
            if model <= 0 or count % model:
                raise ValueError(f"num_partitions={self.num_partitions} does not divide the {count} devices")
            shape = [count // model, model]
        if shape[0] * shape[1] != count or min(shape) <= 0:
            raise ValueError(f"mesh shape {tuple(shape)} needs {shape[0] * shape[1]} devices; {count} are present")
        self.mesh_shape = tuple(shape)
        self.logical_axis_rules = list(self.logical_axis_rules
                                       if self.logical_axis_rules is not None
                                       else standard_logical_axis_rules())
        self.mesh = Mesh(np.asarray(devices, dtype=object).reshape(shape), (DATA_AXIS, MODEL_AXIS))

    @property
    def data_size(self) -> int:
        return self.mesh_shape[0]

    @property
    def data_sharding(self) -> NamedSharding:
        """Batch arrays: leading dimension split along `data`."""
        return NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    @contextlib.contextmanager
    def context(self):
        """The mesh and the logical rules, active for model code (activation constraints)."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.logical_axis_rules):
            yield

    def logical_to_sharding(self, logical_spec: Optional[PartitionSpec], shape: Sequence[int]) -> NamedSharding:
        """One array's NamedSharding from its logical axis names and shape."""
        if logical_spec is None:
            return self.replicated
        mesh_spec = nn.logical_to_mesh_axes(tuple(logical_spec), self.logical_axis_rules)
        return NamedSharding(self.mesh, _divisible_spec(mesh_spec, shape, self.mesh))

    def params_shardings(self, params: Any, logical_axes: Any) -> Any:
        """Shardings for a params tree given its tree of logical PartitionSpecs."""
        return jax.tree.map(lambda spec, p: self.logical_to_sharding(spec, np.shape(p)),
                            logical_axes, params,
                            is_leaf=lambda x: isinstance(x, PartitionSpec) or x is None)

    def batch_sharding(self, batch_size: int) -> NamedSharding:
        if batch_size % self.data_size:
            raise ValueError(f"batch size {batch_size} is not divisible by the data axis of the mesh "
                             f"({self.data_size}); choose a BATCH_SIZE that is")
        return self.data_sharding

    def shard_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Places a host-local batch on the mesh, split along `data`.

        With several processes each host holds its own slice of the global batch
        (seqio shards the input by process), which `make_array_from_process_local_data`
        stitches together.
        """
        out = {}
        for name, value in batch.items():
            value = np.asarray(value)
            if jax.process_count() == 1:
                out[name] = jax.device_put(value, self.batch_sharding(value.shape[0]))
            else:
                out[name] = jax.make_array_from_process_local_data(self.data_sharding, value)
        return out

    def partition(self, fn: Callable, *, in_shardings: Any = None, out_shardings: Any = None,
                  donate_argnums: Sequence[int] = (), static_argnums: Sequence[int] = ()) -> Callable:
        """`jax.jit` with shardings; calls run inside the mesh + rules context."""
        kwargs = {"donate_argnums": tuple(donate_argnums), "static_argnums": tuple(static_argnums)}
        if in_shardings is not None:
            kwargs["in_shardings"] = in_shardings
        if out_shardings is not None:
            kwargs["out_shardings"] = out_shardings
        jitted = jax.jit(fn, **kwargs)
        partitioner = self

        class _InContext:
            def __call__(self, *args, **kw):
                with partitioner.context():
                    return jitted(*args, **kw)

            def lower(self, *args, **kw):
                with partitioner.context():
                    return jitted.lower(*args, **kw)

        return _InContext()


def logical_axes_of(variables: Any) -> Any:
    """Tree of logical PartitionSpecs for `variables['params']`.

    Reads T5X's `params_axes` collection (`<name>_axes` AxisMetadata leaves) or flax's
    boxed `nn.Partitioned` metadata, whichever the model uses; parameters with neither
    are replicated (None).
    """
    params = variables["params"]
    if "params_axes" in variables:
        axes = nn.partitioning.get_axis_names(variables["params_axes"])
        flat_axes = {k: v for k, v in flax_traverse(axes)}
    else:
        flat_axes = {}
    boxed = jax.tree.map(lambda x: x, params, is_leaf=lambda x: isinstance(x, flax_meta.AxisMetadata))

    def spec_for(path, leaf):
        if isinstance(leaf, nn.Partitioned):
            return PartitionSpec(*leaf.names)
        key = tuple(_key_name(k) for k in path)
        return flat_axes.get(key)

    return jax.tree_util.tree_map_with_path(
        spec_for, boxed, is_leaf=lambda x: isinstance(x, flax_meta.AxisMetadata))


def flax_traverse(tree: Any, prefix: tuple = ()):
    """(path tuple, PartitionSpec) pairs of a nested dict of PartitionSpecs."""
    if isinstance(tree, PartitionSpec):
        yield prefix, tree
        return
    if hasattr(tree, "items"):
        for key, value in tree.items():
            yield from flax_traverse(value, prefix + (str(key),))


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def unbox(tree: Any) -> Any:
    """Strips flax partitioning boxes, leaving plain arrays."""
    return flax_meta.unbox(tree)


def derive_state_shardings(partitioner: PjitPartitioner, state: Any, params: Any,
                           params_shardings: Any) -> Any:
    """Shardings for an optimizer state whose leaves mirror the params tree.

    optax states keep one leaf per parameter under the parameter's own path (Adafactor:
    `v` of the parameter's shape, `v_row` / `v_col` with one dimension reduced). A leaf
    of the parameter's shape takes its sharding; a leaf with one dimension dropped takes
    the sharding of the remaining dimensions; anything else (step counters, dummies) is
    replicated. This is T5X's "optimizer state follows its parameter" rule, stated by
    shape so it holds for any optax optimizer.
    """
    by_path = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        by_path[tuple(_key_name(k) for k in path)] = leaf
    sharding_by_path = {}
    for path, sharding in jax.tree_util.tree_flatten_with_path(params_shardings)[0]:
        sharding_by_path[tuple(_key_name(k) for k in path)] = sharding

    def for_leaf(path, leaf):
        names = tuple(_key_name(k) for k in path)
        shape = tuple(np.shape(leaf))
        for start in range(len(names)):
            suffix = names[start:]
            if suffix in by_path:
                pshape = tuple(np.shape(by_path[suffix]))
                pspec = list(sharding_by_path[suffix].spec) + [None] * (len(pshape) - len(sharding_by_path[suffix].spec))
                if shape == pshape:
                    return sharding_by_path[suffix]
                if len(shape) == len(pshape) - 1:
                    # Adafactor drops the larger factored dim for v_row and the other
                    # for v_col; try the later dimension first (optax's order) then others.
                    for dropped in reversed(range(len(pshape))):
                        if pshape[:dropped] + pshape[dropped + 1:] == shape:
                            spec = pspec[:dropped] + pspec[dropped + 1:]
                            return NamedSharding(partitioner.mesh, PartitionSpec(*spec))
                return partitioner.replicated
        return partitioner.replicated

    return jax.tree_util.tree_map_with_path(for_leaf, state)
