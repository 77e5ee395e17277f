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

import flax
import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util
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
    params = flax.core.unfreeze(variables["params"])
    flat_params = traverse_util.flatten_dict(params)
    flat_axes = {}
    if "params_axes" in variables:
        axes = nn.partitioning.get_axis_names(flax.core.unfreeze(variables["params_axes"]))
        flat_axes = traverse_util.flatten_dict(flax.core.unfreeze(axes))
    return traverse_util.unflatten_dict({
        path: PartitionSpec(*leaf.names) if isinstance(leaf, nn.Partitioned) else flat_axes.get(path)
        for path, leaf in flat_params.items()})


def unbox(tree: Any) -> Any:
    """Strips flax partitioning boxes, leaving plain arrays."""
    return flax_meta.unbox(tree)


# optax's factored second moment (Adafactor, `scale_by_factored_rms`) keeps, per factored
# parameter, `v_row` without the parameter's largest dimension and `v_col` without its
# second largest; every other per-parameter leaf has the parameter's own shape or is a
# shape-[1] placeholder.
_FACTORED_FIELDS = ("v_row", "v_col")


def _factored_dims(shape: Sequence[int]) -> tuple[int, int]:
    """(second largest, largest) dimension of a factored parameter, as optax picks them.

    optax's own rule (argsort order, which also settles square matrices), so the state's
    axes are named from the dimensions optax really reduced, never from a shape match.
    """
    from optax._src import factorized

    dims = factorized._factored_dims(tuple(shape), True, 0)  # min size 0: the pair, always
    if dims is None:
        raise ValueError(f"a parameter of shape {tuple(shape)} has no two dimensions to factor")
    return dims


def optimizer_state_logical_axes(opt_state: Any, params: Any, params_axes: Any) -> Any:
    """Logical PartitionSpecs for an optax optimizer state, from the parameters' axis names.

    optax keeps per-parameter state in subtrees shaped like the params tree (`v`, `mu`,
    `nu`, Adafactor's `v_row` / `v_col`). Each leaf there takes its parameter's logical
    axes: all of them for a leaf of the parameter's rank; for a factored moment, those of
    the dimensions optax kept (`v_row` drops the largest dimension, `v_col` the second
    largest); none (replicated) for placeholders. Leaves outside such subtrees (step
    counts, schedule state) are replicated.
    """
    params_def = jax.tree.structure(params)

    def mirrors_params(node: Any) -> bool:
        return (not isinstance(node, (jax.Array, np.ndarray, jax.ShapeDtypeStruct))
                and jax.tree.structure(node) == params_def)

    def axes_of_leaf(field: Optional[str], leaf: Any, param: Any, axes: Optional[PartitionSpec]):
        shape, param_shape = tuple(np.shape(leaf)), tuple(np.shape(param))
        names = list(axes) + [None] * (len(param_shape) - len(axes)) if axes is not None else None
        if field in _FACTORED_FIELDS and len(param_shape) >= 2 and int(np.prod(shape)) > 1:
            second, largest = _factored_dims(param_shape)
            dropped = largest if field == "v_row" else second
            kept_shape = param_shape[:dropped] + param_shape[dropped + 1:]
            if kept_shape != shape:
                raise ValueError(f"optimizer state {field} of shape {shape} does not drop dimension {dropped} of "
                                 f"its parameter's shape {param_shape}: an optax factoring rule this code does not know")
            return None if names is None else PartitionSpec(*(names[:dropped] + names[dropped + 1:]))
        if shape == param_shape:
            return axes
        if int(np.prod(shape)) <= 1:
            return None  # a placeholder ([1] or scalar)
        logger.warning("optimizer state %s of shape %s beside a parameter of shape %s: replicated",
                       field, shape, param_shape)
        return None

    def for_node(path, node):
        if not mirrors_params(node):
            return jax.tree.map(lambda _: None, node)
        field = getattr(path[-1], "name", None) if path else None
        return jax.tree.map(lambda leaf, param, axes: axes_of_leaf(field, leaf, param, axes),
                            node, params, params_axes, is_leaf=lambda x: x is None or isinstance(x, PartitionSpec))

    return jax.tree_util.tree_map_with_path(for_node, opt_state, is_leaf=mirrors_params)


def optimizer_state_shardings(partitioner: PjitPartitioner, opt_state: Any, params: Any, params_axes: Any) -> Any:
    """NamedShardings of an optax state: its logical axes (above) through the mesh rules."""
    logical = optimizer_state_logical_axes(opt_state, params, params_axes)
    return jax.tree.map(lambda spec, leaf: partitioner.logical_to_sharding(spec, np.shape(leaf)),
                        logical, opt_state, is_leaf=lambda x: x is None or isinstance(x, PartitionSpec))
