"""The training step, T5X style: Adafactor, loss normalization, z-loss, microbatches.

Library code (gin-free). `Trainer` owns an encoder-decoder model (T5X's
EncoderDecoderModel interface), an optax optimizer and a `PjitPartitioner`; it creates a sharded `TrainState`, runs jitted train steps on
batches produced by seqio's `EncDecFeatureConverter`, evaluates teacher-forced loss,
and decodes (beam search or sampling) for seqio's `Evaluator`.

Determinism: parameters come from `init_rng`, dropout from `fold_in(dropout_rng, step)`
(and the microbatch index), so a resumed run replays exactly what an uninterrupted
one computes.
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import flax
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax

from personalize_t5x.trainer import partitioning
from personalize_t5x.trainer import models as encoder_decoder

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


class Trainer:
    """Sharded init, train step, teacher-forced eval and decoding for an encoder-decoder model.

    `model` follows T5X's EncoderDecoderModel interface (personalize_t5x.trainer.models.
    encoder_decoder): `get_initial_variables`, `loss_fn(params, batch, dropout_rng)`,
    `score_batch`, `predict_batch`, and a `loss_normalizing_factor` attribute.
    """

    def __init__(self, *, model: Any, partitioner: partitioning.PjitPartitioner,
                 learning_rate_fn: Optional[Callable] = None, num_microbatches: Optional[int] = None,
                 optimizer: Optional[optax.GradientTransformation] = None,
                 optimizer_fn: Callable[[Any], optax.GradientTransformation] = adafactor):
        """Args (T5X's names where T5X has them):
          model: the EncoderDecoderModel.
          partitioner: mesh + logical axis rules.
          learning_rate_fn: step -> learning rate (default: the paper's schedule).
          num_microbatches: split each batch into this many microbatches and sum their
            gradients (gradient accumulation); None or 1: no split. The loss normalizer
            is computed on the whole batch first, so the summed gradient equals the
            one-batch gradient.
          optimizer: a ready optax transformation; else `optimizer_fn(learning_rate_fn)`.
        """
        if num_microbatches is not None and (isinstance(num_microbatches, bool)
                                             or not isinstance(num_microbatches, int) or num_microbatches < 1):
            raise ValueError(f"num_microbatches must be a positive integer or None; got {num_microbatches!r}")
        self.model = model
        self.partitioner = partitioner
        self.learning_rate_fn = learning_rate_fn or create_learning_rate_scheduler()
        self.num_microbatches = num_microbatches
        self.optimizer = optimizer if optimizer is not None else optimizer_fn(self.learning_rate_fn)
        self._train_step = None
        self._eval_step = None
        self._predict_steps: dict = {}
        self._score_step = None
        self._state_shardings = None
        self.params_axes = None
        # The loss is always normalized here, on the whole batch, then summed over
        # microbatches; the model sees pre-divided weights and no normalizer.
        self._unnormalized_model = copy.copy(model)
        self._unnormalized_model.loss_normalizing_factor = None

    # -- initialization -----------------------------------------------------
    def _init_variables(self, rng, input_shapes: Mapping[str, Sequence[int]]):
        return self.model.get_initial_variables(rng, input_shapes)

    def abstract_state(self, input_shapes: Mapping[str, Sequence[int]]):
        """(abstract TrainState, its shardings, logical axes of the params), computing nothing."""
        abstract_vars = jax.eval_shape(lambda r: self._init_variables(r, input_shapes), jax.random.PRNGKey(0))
        logical = partitioning.logical_axes_of(abstract_vars)
        params = partitioning.unbox(abstract_vars["params"])
        param_shardings = self.partitioner.params_shardings(params, logical)
        opt_state = jax.eval_shape(self.optimizer.init, params)
        opt_shardings = partitioning.optimizer_state_shardings(self.partitioner, opt_state, params, logical)
        abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params, opt_state=opt_state)
        shardings = TrainState(step=self.partitioner.replicated, params=param_shardings, opt_state=opt_shardings)
        self.params_axes = logical
        self._state_shardings = shardings
        return abstract, shardings, logical

    def init_state(self, rng, input_shapes: Mapping[str, Sequence[int]], params: Any = None) -> TrainState:
        """A fresh sharded TrainState at step 0; `params` (host arrays) replace the random init."""
        abstract, shardings, _ = self.abstract_state(input_shapes)
        if params is None:
            def init(r):
                p = partitioning.unbox(self._init_variables(r, input_shapes)["params"])
                return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=self.optimizer.init(p))

            return self.partitioner.partition(
                init, in_shardings=(self.partitioner.replicated,), out_shardings=shardings)(rng)

        def init_from(p):
            p = jax.tree.map(lambda x, a: x.astype(a.dtype), p, abstract.params)
            return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=self.optimizer.init(p))

        placed = jax.tree.map(lambda x, s: jax.device_put(np.asarray(x), s), params, shardings.params)
        return self.partitioner.partition(
            init_from, in_shardings=(shardings.params,), out_shardings=shardings)(placed)

    def state_from_dict(self, restored: Mapping[str, Any]) -> TrainState:
        """A TrainState from a restored checkpoint dict (optax's state types put back)."""
        if self._state_shardings is None:
            raise RuntimeError("call abstract_state or init_state first")
        opt_treedef = jax.tree.structure(self._state_shardings.opt_state)
        opt_state = jax.tree.unflatten(opt_treedef, jax.tree.leaves(restored["opt_state"]))
        return TrainState(step=restored["step"], params=restored["params"], opt_state=opt_state)

    @property
    def state_shardings(self) -> TrainState:
        if self._state_shardings is None:
            raise RuntimeError("call abstract_state or init_state first")
        return self._state_shardings

    # -- loss ---------------------------------------------------------------
    def _normalized_batch(self, batch):
        """Folds the (whole-batch) loss normalizer into the loss weights."""
        factor, weights = encoder_decoder.get_loss_normalizing_factor_and_weights(
            self.model.loss_normalizing_factor, batch)
        if weights is None:
            weights = batch.get("decoder_loss_weights")
        if weights is None:
            weights = batch["decoder_target_tokens"] > 0
        weights = jnp.asarray(weights, jnp.float32)
        if factor is not None:
            weights = weights / factor
        return {**batch, "decoder_loss_weights": weights}

    def _loss(self, params, batch, dropout_rng):
        loss, metrics = self._unnormalized_model.loss_fn(params, batch, dropout_rng)
        return loss, {k: metrics[k] for k in ("z_loss", "correct_tokens", "nonpadding_target_tokens", "num_examples")}

    # -- train step ---------------------------------------------------------
    def _train_step_fn(self, state: TrainState, batch: Batch, dropout_rng):
        batch = self._normalized_batch(batch)
        step_rng = jax.random.fold_in(dropout_rng, state.step)
        grad_fn = jax.value_and_grad(self._loss, has_aux=True)
        micro = self.num_microbatches or 1
        if micro == 1:
            (loss, stats), grads = grad_fn(state.params, batch, step_rng)
        else:
            size = batch["decoder_target_tokens"].shape[0]
            if size % micro:
                raise ValueError(f"batch size {size} is not divisible by num_microbatches={micro}")
            # Strided split: row i goes to microbatch i % micro, so every microbatch
            # keeps an even share of each data shard (no cross-device reshuffle).
            split = {k: v.reshape((size // micro, micro) + v.shape[1:]).swapaxes(0, 1) for k, v in batch.items()}

            def body(carry, inputs):
                index, mb = inputs
                (l, s), g = grad_fn(state.params, mb, jax.random.fold_in(step_rng, index))
                acc_g, acc_l, acc_s = carry
                return (jax.tree.map(jnp.add, acc_g, g), acc_l + l, jax.tree.map(jnp.add, acc_s, s)), None

            zeros_s = {k: jnp.zeros((), jnp.float32) for k in
                       ("z_loss", "correct_tokens", "nonpadding_target_tokens", "num_examples")}
            (grads, loss, stats), _ = jax.lax.scan(
                body, (jax.tree.map(jnp.zeros_like, state.params), jnp.zeros((), jnp.float32), zeros_s),
                (jnp.arange(micro), split))
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "z_loss": stats["z_loss"],
            "accuracy": stats["correct_tokens"] / jnp.maximum(stats["nonpadding_target_tokens"], 1.0),
            "nonpadding_target_tokens": stats["nonpadding_target_tokens"],
            "num_examples": stats["num_examples"],
            "grad_norm": optax.global_norm(grads),
        }
        metrics["learning_rate"] = self.learning_rate_fn(state.step)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

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
        loss, stats = self._loss(params, self._normalized_batch(batch), None)
        return {"loss": loss, **stats}

    def eval_step(self, params, batch: Mapping[str, np.ndarray]) -> dict:
        """Statistics of one batch without dropout (sums; the caller aggregates)."""
        if self._eval_step is None:
            self._eval_step = self.partitioner.partition(
                self._eval_step_fn, in_shardings=(self.state_shardings.params, self.partitioner.data_sharding),
                out_shardings=self.partitioner.replicated)
        return self._eval_step(params, self.partitioner.shard_batch(batch))

    def evaluate_loss(self, params, batches: Iterable[Mapping[str, np.ndarray]]) -> dict[str, float]:
        """Teacher-forced loss (mean over batches) and token accuracy over host batches."""
        totals: dict[str, float] = {}
        count = 0
        for batch in batches:
            for key, value in jax.device_get(self.eval_step(params, batch)).items():
                totals[key] = totals.get(key, 0.0) + float(value)
            count += 1
        if not count:
            return {}
        return {
            "loss": totals["loss"] / count,
            "z_loss": totals["z_loss"] / count,
            "accuracy": totals["correct_tokens"] / max(totals["nonpadding_target_tokens"], 1.0),
            "nonpadding_target_tokens": totals["nonpadding_target_tokens"],
        }

    # -- decoding and scoring -----------------------------------------------
    def predict_batch(self, params, batch: Mapping[str, np.ndarray], *, rng=None, **decode_options) -> np.ndarray:
        """Decoded token ids [batch, length] (model.predict_batch, jitted per option set)."""
        key = tuple(sorted(decode_options.items()))
        if key not in self._predict_steps:
            options = dict(decode_options)

            def predict(p, b, r):
                return self.model.predict_batch(p, b, r, **options)

            self._predict_steps[key] = self.partitioner.partition(
                predict, in_shardings=(self.state_shardings.params, self.partitioner.data_sharding,
                                       self.partitioner.replicated),
                out_shardings=self.partitioner.replicated)
        rng = jax.random.PRNGKey(0) if rng is None else rng
        return np.asarray(jax.device_get(self._predict_steps[key](params, self.partitioner.shard_batch(batch), rng)))

    def score_batch(self, params, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        """Per-sequence log-likelihood of the targets."""
        if self._score_step is None:
            self._score_step = self.partitioner.partition(
                self.model.score_batch, in_shardings=(self.state_shardings.params, self.partitioner.data_sharding),
                out_shardings=self.partitioner.replicated)
        return np.asarray(jax.device_get(self._score_step(params, self.partitioner.shard_batch(batch))))


def param_count(params: Any) -> int:
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))


def model_info_lines(params: Any, logical_axes: Any, shardings: Any = None) -> list[str]:
    """Lines of the model-info file: name, shape, logical axes, mesh axes; then the total."""
    flat_params = traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
    flat_axes = traverse_util.flatten_dict(flax.core.unfreeze(logical_axes), sep="/")
    flat_shardings = (traverse_util.flatten_dict(flax.core.unfreeze(shardings), sep="/")
                      if shardings is not None else {})
    lines = []
    width = max(map(len, flat_params), default=10)
    for name in sorted(flat_params):
        leaf, axes, sharding = flat_params[name], flat_axes.get(name), flat_shardings.get(name)
        shape = tuple(np.shape(leaf))
        logical = tuple(axes) if axes is not None else None
        mesh = tuple(sharding.spec) if sharding is not None else None
        lines.append(f"Variable {name:<{width}} size {int(np.prod(shape)):>12} shape {shape!s:<24} "
                     f"logical_axes {logical} partition_spec {mesh}")
    lines.append(f"Total number of parameters: {param_count(params)}")
    return lines

