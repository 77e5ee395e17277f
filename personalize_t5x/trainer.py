"""The training step, T5X style: Adafactor, loss normalization, z-loss, microbatches.

Library code (gin-free). `Trainer` owns a T5 `Transformer` module, an optax optimizer
and a `PjitPartitioner`; it creates a sharded `TrainState`, runs jitted train steps on
batches produced by seqio's `EncDecFeatureConverter`, evaluates teacher-forced loss,
and decodes (beam search or sampling) for seqio's `Evaluator`.

Determinism: parameters come from `init_rng`, dropout from `fold_in(dropout_rng, step)`
(and the microbatch index), so a resumed run replays exactly what an uninterrupted
one computes.
"""
from __future__ import annotations

import dataclasses
import enum
import logging
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from personalize_t5x import partitioning

logger = logging.getLogger(__name__)

Batch = Mapping[str, jnp.ndarray]

# Features seqio's EncDecFeatureConverter produces and the model consumes.
MODEL_FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")
PACKING_FEATURES = ("encoder_segment_ids", "decoder_segment_ids", "encoder_positions", "decoder_positions")


# ---------------------------------------------------------------------------
# Learning rate and optimizer
# ---------------------------------------------------------------------------
_LR_FACTORS = ("constant", "linear_warmup", "rsqrt_decay", "rsqrt_normalized_decay",
               "decay_every", "cosine_decay", "linear_decay")


def create_learning_rate_scheduler(
    factors: str = "constant * linear_warmup * rsqrt_normalized_decay",
    base_learning_rate: float = 0.001,
    warmup_steps: int = 1000,
    decay_factor: float = 0.5,
    steps_per_decay: int = 20000,
    steps_per_cycle: int = 100000,
    step_offset: int = 0,
    min_learning_rate: float = 1e-8,
) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """A step -> learning rate schedule built from T5X's factor names.

    The default is the paper's schedule: `base_learning_rate` reached linearly over
    `warmup_steps`, then decaying as the inverse square root of the step, normalized
    so the decay starts at exactly `base_learning_rate` (`rsqrt_normalized_decay`).
    `rsqrt_decay` is T5's original unnormalized form.
    """
    names = [n.strip() for n in factors.split("*")]
    for name in names:
        if name not in _LR_FACTORS:
            raise ValueError(f"unknown learning-rate factor {name!r} in {factors!r}; known: {', '.join(_LR_FACTORS)}")
    if warmup_steps < 0 or base_learning_rate <= 0:
        raise ValueError("warmup_steps must be >= 0 and base_learning_rate > 0")

    def schedule(step):
        step = jnp.maximum(0, jnp.asarray(step, jnp.float32) - step_offset)
        lr = jnp.asarray(1.0, jnp.float32)
        warm = float(max(warmup_steps, 1))
        for name in names:
            if name == "constant":
                lr *= base_learning_rate
            elif name == "linear_warmup":
                lr *= jnp.minimum(1.0, step / warm)
            elif name == "rsqrt_decay":
                lr /= jnp.sqrt(jnp.maximum(step, warm))
            elif name == "rsqrt_normalized_decay":
                lr *= jnp.sqrt(warm) / jnp.sqrt(jnp.maximum(step, warm))
            elif name == "decay_every":
                lr *= decay_factor ** (step // steps_per_decay)
            elif name == "cosine_decay":
                progress = jnp.maximum(0.0, (step - warmup_steps) / float(steps_per_cycle))
                lr *= jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(jnp.pi * (progress % 1.0))))
            elif name == "linear_decay":
                progress = jnp.maximum(0.0, (step - warmup_steps) / float(steps_per_cycle))
                lr *= jnp.maximum(0.0, 1.0 - progress)
        return jnp.maximum(lr, min_learning_rate)

    return schedule


def adafactor(
    learning_rate: Union[float, Callable],
    *,
    decay_rate: float = 0.8,
    step_offset: int = 0,
    min_dim_size_to_factor: int = 128,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: Optional[float] = 1.0,
    beta1: Optional[float] = None,
    epsilon1: float = 1e-30,
    factored: bool = True,
    weight_decay_rate: Optional[float] = None,
) -> optax.GradientTransformation:
    """optax Adafactor with T5X's defaults and T5X's argument names.

    T5X's `adafactor.Adafactor`: decay rate 0.8 (step^-0.8 second-moment decay), second
    moments factored for dimensions of at least 128, no momentum, update clipping at
    RMS 1.0, updates scaled by the parameter's RMS (floor 1e-3), epsilon 1e-30.
    """
    return optax.adafactor(
        learning_rate=learning_rate, min_dim_size_to_factor=min_dim_size_to_factor,
        decay_rate=decay_rate, decay_offset=step_offset,
        multiply_by_parameter_scale=multiply_by_parameter_scale,
        clipping_threshold=clipping_threshold, momentum=beta1, eps=epsilon1,
        factored=factored, weight_decay_rate=weight_decay_rate)


# ---------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------
class SpecialLossNormalizingFactor(enum.Enum):
    """T5X's names for loss normalizers computed from the batch."""

    NUM_REAL_TARGET_TOKENS = 1
    NUM_TOTAL_TARGET_TOKENS = 2
    AVERAGE_PER_SEQUENCE = 3


LossNormalizingFactor = Union[None, float, int, str, SpecialLossNormalizingFactor]


def canonical_loss_normalizing_factor(value: LossNormalizingFactor):
    """None, a positive number, or a SpecialLossNormalizingFactor (names accepted)."""
    if value is None or isinstance(value, SpecialLossNormalizingFactor):
        return value
    if isinstance(value, str):
        name = value.split(".")[-1]
        if name not in SpecialLossNormalizingFactor.__members__:
            raise ValueError(f"loss_normalizing_factor {value!r} is not a number or one of "
                             f"{', '.join(SpecialLossNormalizingFactor.__members__)}")
        return SpecialLossNormalizingFactor[name]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    raise ValueError(f"loss_normalizing_factor must be None, a positive number or a special name; got {value!r}")


def loss_weights_and_factor(batch: Batch, loss_normalizing_factor) -> tuple[jnp.ndarray, Any]:
    """Per-token loss weights and the divisor for the summed loss (T5X's semantics)."""
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights")
    weights = (targets > 0) if weights is None else weights
    weights = weights.astype(jnp.float32)
    factor = loss_normalizing_factor
    if factor is None:
        return weights, None
    if isinstance(factor, float):
        return weights, factor
    if factor is SpecialLossNormalizingFactor.NUM_REAL_TARGET_TOKENS:
        return weights, jnp.sum(weights)
    if factor is SpecialLossNormalizingFactor.NUM_TOTAL_TARGET_TOKENS:
        return weights, jnp.asarray(float(np.prod(targets.shape)), jnp.float32)
    # AVERAGE_PER_SEQUENCE: every (packed) sequence counts once, whatever its length.
    segments = batch.get("decoder_segment_ids")
    if segments is None:
        segments = (targets > 0).astype(jnp.int32)
    same = (segments[:, :, None] == segments[:, None, :]) & (segments[:, None, :] > 0)
    tokens_in_segment = jnp.einsum("bij,bj->bi", same.astype(jnp.float32), weights)
    per_token = jnp.where(tokens_in_segment > 0, weights / jnp.maximum(tokens_in_segment, 1.0), 0.0)
    num_sequences = jnp.sum(per_token)  # each sequence contributes exactly 1
    return per_token, jnp.maximum(num_sequences, 1e-8)


def cross_entropy_with_z_loss(logits: jnp.ndarray, targets: jnp.ndarray, z_loss: float):
    """Per-token cross entropy plus z_loss * log(Z)^2 (both float32), as T5X computes."""
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    cross_entropy = log_z - target_logit
    return cross_entropy + z_loss * jnp.square(log_z), cross_entropy


# ---------------------------------------------------------------------------
# Train state
# ---------------------------------------------------------------------------
@flax.struct.dataclass
class TrainState:
    """Everything a checkpoint holds: step, parameters and optimizer state."""

    step: jnp.ndarray
    params: Any
    opt_state: Any

    def state_dict(self) -> dict:
        return {"step": self.step, "params": self.params, "opt_state": self.opt_state}


@dataclasses.dataclass
class TrainerConfig:
    """Trainer hyper-parameters (T5X names where T5X has them).

    Attributes:
      num_microbatches: split each batch into this many microbatches and sum their
        gradients (gradient accumulation); None or 1 means no split.
      z_loss: coefficient of the log(Z)^2 auxiliary loss (T5X: 1e-4).
      loss_normalizing_factor: None (sum), a number, or 'NUM_REAL_TARGET_TOKENS',
        'NUM_TOTAL_TARGET_TOKENS', 'AVERAGE_PER_SEQUENCE'.
      label_smoothing: not supported beyond 0.0 (T5 1.1 trains without it).
    """

    num_microbatches: Optional[int] = None
    z_loss: float = 1e-4
    loss_normalizing_factor: LossNormalizingFactor = None
    label_smoothing: float = 0.0

    def __post_init__(self):
        if self.num_microbatches is not None and (not isinstance(self.num_microbatches, int) or self.num_microbatches < 1):
            raise ValueError(f"num_microbatches must be a positive integer or None; got {self.num_microbatches!r}")
        if self.z_loss < 0:
            raise ValueError(f"z_loss must be >= 0; got {self.z_loss}")
        if self.label_smoothing != 0.0:
            raise ValueError("label_smoothing other than 0.0 is not supported")
        self.loss_normalizing_factor = canonical_loss_normalizing_factor(self.loss_normalizing_factor)


class Trainer:
    """Sharded init, train step, teacher-forced eval and decoding for a T5 module."""

    def __init__(self, *, module: nn.Module, optimizer: optax.GradientTransformation,
                 partitioner: partitioning.PjitPartitioner, config: TrainerConfig = TrainerConfig(),
                 learning_rate_fn: Optional[Callable] = None):
        self.module = module
        self.optimizer = optimizer
        self.partitioner = partitioner
        self.config = config
        self.learning_rate_fn = learning_rate_fn
        self._train_step = None
        self._eval_step = None
        self._state_shardings = None
        self.params_axes = None

    # -- initialization -----------------------------------------------------
    def _init_variables(self, rng, input_shapes: Mapping[str, Sequence[int]]):
        enc = jnp.ones(input_shapes["encoder_input_tokens"], jnp.int32)
        dec = jnp.ones(input_shapes["decoder_input_tokens"], jnp.int32)
        return self.module.init({"params": rng, "dropout": rng}, enc, dec, dec, enable_dropout=False)

    def abstract_state(self, input_shapes: Mapping[str, Sequence[int]]):
        """(abstract TrainState, its shardings, logical axes of the params) without computing."""
        abstract_vars = jax.eval_shape(lambda r: self._init_variables(r, input_shapes), jax.random.PRNGKey(0))
        logical = partitioning.logical_axes_of(abstract_vars)
        params = partitioning.unbox(abstract_vars["params"])
        param_shardings = self.partitioner.params_shardings(params, logical)
        opt_state = jax.eval_shape(self.optimizer.init, params)
        opt_shardings = partitioning.derive_state_shardings(self.partitioner, opt_state, params, param_shardings)
        abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params, opt_state=opt_state)
        shardings = TrainState(step=self.partitioner.replicated, params=param_shardings, opt_state=opt_shardings)
        self.params_axes = logical
        self._state_shardings = shardings
        return abstract, shardings, logical

    def init_state(self, rng, input_shapes: Mapping[str, Sequence[int]], params: Any = None) -> TrainState:
        """A fresh sharded TrainState; `params` (host arrays) replace the random init."""
        abstract, shardings, _ = self.abstract_state(input_shapes)

        def init(r, given):
            if given is None:
                p = partitioning.unbox(self._init_variables(r, input_shapes)["params"])
            else:
                p = jax.tree.map(lambda x, a: jnp.asarray(x, a.dtype), given, abstract.params)
            return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=self.optimizer.init(p))

        given_shardings = None if params is None else shardings.params
        jitted = self.partitioner.partition(
            init, in_shardings=(self.partitioner.replicated, given_shardings), out_shardings=shardings)
        if params is not None:
            params = jax.tree.map(lambda x, s: jax.device_put(np.asarray(x), s), params, shardings.params)
        return jitted(rng, params)

    @property
    def state_shardings(self):
        if self._state_shardings is None:
            raise RuntimeError("call abstract_state or init_state first")
        return self._state_shardings

    # -- loss ---------------------------------------------------------------
    def _loss_sum(self, params, batch, dropout_rng, normalizer):
        """Summed (weighted) loss of one (micro)batch divided by the full batch's normalizer."""
        logits = self.module.apply(
            {"params": params},
            batch["encoder_input_tokens"], batch["decoder_input_tokens"], batch["decoder_target_tokens"],
            encoder_segment_ids=batch.get("encoder_segment_ids"),
            decoder_segment_ids=batch.get("decoder_segment_ids"),
            encoder_positions=batch.get("encoder_positions"),
            decoder_positions=batch.get("decoder_positions"),
            enable_dropout=dropout_rng is not None,
            rngs=None if dropout_rng is None else {"dropout": dropout_rng})
        weights = batch["_loss_weights"]
        total, cross_entropy = cross_entropy_with_z_loss(logits, batch["decoder_target_tokens"], self.config.z_loss)
        loss = jnp.sum(total * weights)
        if normalizer is not None:
            loss = loss / normalizer
        stats = {
            "cross_ent_sum": jnp.sum(cross_entropy * (batch["decoder_target_tokens"] > 0)),
            "z_loss_sum": jnp.sum((total - cross_entropy) * (batch["decoder_target_tokens"] > 0)),
            "num_target_tokens": jnp.sum(batch["decoder_target_tokens"] > 0).astype(jnp.float32),
            "accuracy_sum": jnp.sum((jnp.argmax(logits, -1) == batch["decoder_target_tokens"])
                                    * (batch["decoder_target_tokens"] > 0)).astype(jnp.float32),
        }
        return loss, stats

    def _prepare(self, batch):
        batch = dict(batch)
        weights, normalizer = loss_weights_and_factor(batch, self.config.loss_normalizing_factor)
        batch["_loss_weights"] = weights
        batch.pop("decoder_loss_weights", None)
        return batch, normalizer

    # -- train step ---------------------------------------------------------
    def _train_step_fn(self, state: TrainState, batch: Batch, dropout_rng):
        batch, normalizer = self._prepare(batch)
        step_rng = jax.random.fold_in(dropout_rng, state.step)
        grad_fn = jax.value_and_grad(self._loss_sum, has_aux=True)
        micro = self.config.num_microbatches or 1
        if micro == 1:
            (loss, stats), grads = grad_fn(state.params, batch, step_rng, normalizer)
        else:
            size = batch["decoder_target_tokens"].shape[0]
            if size % micro:
                raise ValueError(f"batch size {size} is not divisible by num_microbatches={micro}")
            # Strided split: row i goes to microbatch i % micro, so each microbatch keeps
            # an even share of every data shard (no cross-device reshuffle).
            split = {k: v.reshape((size // micro, micro) + v.shape[1:]).swapaxes(0, 1) for k, v in batch.items()}

            def body(carry, inputs):
                index, mb = inputs
                (l, s), g = grad_fn(state.params, mb, jax.random.fold_in(step_rng, index), normalizer)
                acc_g, acc_l, acc_s = carry
                return (jax.tree.map(jnp.add, acc_g, g), acc_l + l, jax.tree.map(jnp.add, acc_s, s)), None

            zeros_g = jax.tree.map(jnp.zeros_like, state.params)
            zeros_s = {k: jnp.zeros((), jnp.float32) for k in
                       ("cross_ent_sum", "z_loss_sum", "num_target_tokens", "accuracy_sum")}
            (grads, loss, stats), _ = jax.lax.scan(
                body, (zeros_g, jnp.zeros((), jnp.float32), zeros_s), (jnp.arange(micro), split))
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = self._metrics(loss, stats)
        metrics["grad_norm"] = optax.global_norm(grads)
        if self.learning_rate_fn is not None:
            metrics["learning_rate"] = self.learning_rate_fn(state.step)
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    @staticmethod
    def _metrics(loss, stats):
        tokens = jnp.maximum(stats["num_target_tokens"], 1.0)
        return {
            "loss": loss,
            "cross_ent_loss_per_target_token": stats["cross_ent_sum"] / tokens,
            "z_loss_per_target_token": stats["z_loss_sum"] / tokens,
            "accuracy": stats["accuracy_sum"] / tokens,
            "num_target_tokens": stats["num_target_tokens"],
        }

    def _compiled_train_step(self):
        if self._train_step is None:
            self._train_step = self.partitioner.partition(
                self._train_step_fn,
                in_shardings=(self.state_shardings, self.partitioner.data_sharding, self.partitioner.replicated),
                out_shardings=(self.state_shardings, self.partitioner.replicated),
                donate_argnums=(0,))
        return self._train_step

    def train_step(self, state: TrainState, batch: Mapping[str, np.ndarray], dropout_rng) -> tuple[TrainState, dict]:
        """One optimizer step on a host batch; returns the new state and device metrics."""
        return self._compiled_train_step()(state, self.partitioner.shard_batch(batch), dropout_rng)

    def compile_train_step(self, state: TrainState, batch: Mapping[str, np.ndarray], dropout_rng):
        """Lowers and compiles the train step (lets callers time compilation on its own)."""
        return self._compiled_train_step().lower(state, self.partitioner.shard_batch(batch), dropout_rng).compile()

    # -- teacher-forced eval ------------------------------------------------
    def _eval_step_fn(self, params, batch):
        batch, normalizer = self._prepare(batch)
        loss, stats = self._loss_sum(params, batch, None, normalizer)
        return {"loss": loss, **stats}

    def eval_step(self, params, batch: Mapping[str, np.ndarray]) -> dict:
        """Summed statistics of one batch (no dropout); caller aggregates."""
        sharded = self.partitioner.shard_batch(batch)
        if self._eval_step is None:
            self._eval_step = self.partitioner.partition(
                self._eval_step_fn, in_shardings=(self.state_shardings.params, self.partitioner.data_sharding),
                out_shardings=self.partitioner.replicated)
        return self._eval_step(params, sharded)

    def evaluate_loss(self, params, batches) -> dict[str, float]:
        """Teacher-forced metrics over an iterable of host batches."""
        totals: dict[str, float] = {}
        count = 0
        for batch in batches:
            out = jax.device_get(self.eval_step(params, batch))
            for key, value in out.items():
                totals[key] = totals.get(key, 0.0) + float(value)
            count += 1
        if not count:
            return {}
        tokens = max(totals["num_target_tokens"], 1.0)
        return {
            "loss": totals["loss"] / count,
            "cross_ent_loss_per_target_token": totals["cross_ent_sum"] / tokens,
            "accuracy": totals["accuracy_sum"] / tokens,
            "num_target_tokens": totals["num_target_tokens"],
        }


def param_count(params: Any) -> int:
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))


def model_info_lines(params: Any, logical_axes: Any, shardings: Any = None) -> list[str]:
    """Lines of the model-info file: name, shape, logical axes, mesh axes; then the total."""
    flat_params = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_axes = jax.tree.leaves(logical_axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec) or x is None)
    flat_shardings = jax.tree.leaves(shardings) if shardings is not None else [None] * len(flat_params)
    lines = []
    width = max((len("/".join(partitioning._key_name(k) for k in path)) for path, _ in flat_params), default=10)
    for (path, leaf), axes, sharding in zip(flat_params, flat_axes, flat_shardings):
        name = "/".join(partitioning._key_name(k) for k in path)
        shape = tuple(np.shape(leaf))
        logical = tuple(axes) if axes is not None else None
        mesh = tuple(sharding.spec) if sharding is not None else None
        lines.append(f"Variable {name:<{width}} size {int(np.prod(shape)):>12} shape {shape!s:<24} "
                     f"logical_axes {logical} partition_spec {mesh}")
    lines.append(f"Total number of parameters: {param_count(params)}")
    return lines

