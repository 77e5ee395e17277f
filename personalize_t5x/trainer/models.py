"""Model wrapper around the T5 network: losses, scoring and prediction.

``EncoderDecoderModel`` mirrors T5X's ``t5x.models.EncoderDecoderModel`` for
what a trainer, evaluator and inference loop need:

* ``get_initial_variables(rng, input_shapes)``: ``params`` + ``params_axes``;
* ``loss_fn(params, batch, dropout_rng)`` -> ``(loss, metrics)`` with T5X's
  cross entropy (z-loss, label smoothing, loss normalizing factor);
* ``score_batch(params, batch)``: per-sequence sum of target log-probs
  weighted by ``decoder_loss_weights`` (no z-loss);
* ``predict_batch`` / ``predict_batch_with_aux``: beam search (default),
  greedy or temperature sampling with the KV cache.

Batches use seqio's ``EncDecFeatureConverter`` feature names:
``encoder_input_tokens``, ``decoder_input_tokens``, ``decoder_target_tokens``,
``decoder_loss_weights`` and, when packed, ``encoder_segment_ids``,
``decoder_segment_ids``, ``encoder_positions``, ``decoder_positions``.

None of these methods is jitted: wrap them in ``jax.jit`` (or a partitioned
jit) with the static arguments fixed, as T5X's trainer does.
"""
from __future__ import annotations

import enum
import functools
from typing import Any, Callable, Mapping, Optional, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from personalize_t5x.trainer import decoding

Batch = Mapping[str, jax.Array]
PyTree = Any


# ---------------------------------------------------------------------------
# Losses (T5X's t5x/losses.py semantics).
# ---------------------------------------------------------------------------
@jax.custom_vjp
def cross_entropy_with_logits(logits: jax.Array, targets: jax.Array, z_loss: float) -> Tuple[jax.Array, jax.Array]:
    """Cross entropy against soft ``targets`` plus ``z_loss * log(Z)^2``.

    Returns ``(loss, z_loss_term)``, both ``[batch, length]``; ``loss``
    already includes the z-loss term.  The gradient is computed in closed
    form (softmax - targets, plus the z-loss factor), which is numerically
    stable in bfloat16.
    """
    log_z = jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True)
    loss = -jnp.sum(targets * (logits - log_z), axis=-1)
    z_term = z_loss * jax.lax.square(jnp.squeeze(log_z, axis=-1))
    return loss + z_term, z_term


def _xent_fwd(logits, targets, z_loss=0.0):
    max_logit = logits.max(axis=-1, keepdims=True)
    shifted = logits - max_logit
    exp_shifted = jnp.exp(shifted)
    sum_exp = jnp.sum(exp_shifted, axis=-1, keepdims=True)
    log_softmax = shifted - jnp.log(sum_exp)
    loss = -jnp.sum(targets * log_softmax, axis=-1)
    log_z = jnp.squeeze(jnp.log(sum_exp) + max_logit, axis=-1)
    z_term = z_loss * jax.lax.square(log_z)
    return (loss + z_term, z_term), (logits, targets, z_loss, exp_shifted, sum_exp, log_softmax, log_z)


def _xent_bwd(res, g):
    g = g[0]  # the z-loss output is for logging only
    logits, targets, z_loss, exp_shifted, sum_exp, log_softmax, log_z = res
    deriv = jnp.expand_dims(1 + 2 * z_loss * log_z, -1) * exp_shifted / sum_exp - targets
    g_logits = jnp.expand_dims(g, -1) * deriv
    g_targets = -jnp.expand_dims(g, -1) * log_softmax
    return jnp.asarray(g_logits, logits.dtype), jnp.asarray(g_targets, targets.dtype), jnp.array(0.0)


cross_entropy_with_logits.defvjp(_xent_fwd, _xent_bwd)


def onehot(labels: jax.Array, num_classes: int, on_value: float = 1.0, off_value: float = 0.0) -> jax.Array:
    x = labels[..., None] == jnp.arange(num_classes).reshape((1,) * labels.ndim + (-1,))
    return jnp.where(x, jnp.asarray(on_value, jnp.float32), jnp.asarray(off_value, jnp.float32))


def compute_weighted_cross_entropy(
    logits: jax.Array,
    targets: jax.Array,
    weights: Optional[jax.Array] = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    loss_normalizing_factor: Optional[Union[float, jax.Array]] = None,
) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """Summed (optionally normalized) cross entropy, as T5X computes it.

    Label smoothing puts ``1 - label_smoothing`` on the target and spreads the
    rest over the other classes; the loss is shifted by the entropy of that
    soft target so a perfect prediction scores 0.

    Returns:
      ``(loss, z_loss, weight_sum)``: scalars; ``loss`` includes ``z_loss``.
    """
    if logits.ndim != targets.ndim + 1:
        raise ValueError(f"incorrect shapes: logits {logits.shape} vs targets {targets.shape}")
    vocab_size = logits.shape[-1]
    confidence = 1.0 - label_smoothing
    low_confidence = (1.0 - confidence) / (vocab_size - 1)
    normalizing_constant = -(
        confidence * jnp.log(confidence) + (vocab_size - 1) * low_confidence * jnp.log(low_confidence + 1e-20)
    )
    soft_targets = onehot(targets, vocab_size, on_value=confidence, off_value=low_confidence)
    total_loss, total_z_loss = cross_entropy_with_logits(logits, soft_targets, z_loss)
    total_loss = total_loss - normalizing_constant

    weight_sum = np.prod(targets.shape)
    if weights is not None:
        total_loss = total_loss * weights
        total_z_loss = total_z_loss * weights
        weight_sum = jnp.sum(weights)
    if loss_normalizing_factor is not None:
        total_loss = total_loss / loss_normalizing_factor
        total_z_loss = total_z_loss / loss_normalizing_factor
    return jnp.sum(total_loss), jnp.sum(total_z_loss), weight_sum


@enum.unique
class SpecialLossNormalizingFactor(enum.Enum):
    """Loss normalizing factors computed from the batch (T5X's names).

    NUM_REAL_TARGET_TOKENS: sum of the loss weights (non-padding targets).
    NUM_TOTAL_TARGET_TOKENS: batch size x target length.
    AVERAGE_PER_SEQUENCE: each sequence's loss averaged over its tokens, then
      averaged over sequences (packed segments count separately).
    """

    NUM_REAL_TARGET_TOKENS = 1
    NUM_TOTAL_TARGET_TOKENS = 2
    AVERAGE_PER_SEQUENCE = 3


def convert_special_loss_normalizing_factor_to_enum(x: str) -> SpecialLossNormalizingFactor:
    """'num_real_target_tokens' (any case) -> enum member; ValueError otherwise."""
    try:
        return SpecialLossNormalizingFactor[x.upper()]
    except KeyError:
        raise ValueError(
            f"unknown loss_normalizing_factor {x!r}; expected a number or one of "
            f"{[m.name for m in SpecialLossNormalizingFactor]}"
        ) from None


def _repeat_last_nonzero(xs: jax.Array, reverse: bool = False) -> jax.Array:
    def step(prev, x):
        y = jnp.where(x == 0, prev, x)
        return y, y

    return jax.lax.scan(step, jnp.zeros_like(xs[0]), xs, reverse=reverse)[1]


@jax.vmap
def sum_weights_per_segment(positions: jax.Array, segment_ids: jax.Array, weights: jax.Array) -> jax.Array:
    """For each position, the total weight of its packed segment (padding at end)."""
    starts = positions == 0
    final = jnp.concatenate([starts[1:], jnp.ones(1, dtype=starts.dtype)]).astype(weights.dtype)
    final = final * (segment_ids != 0)
    final_cumulative = final * jnp.cumsum(weights)
    final_totals = jnp.concatenate(
        [final_cumulative[0:1], jnp.diff(_repeat_last_nonzero(final_cumulative))]
    )
    return _repeat_last_nonzero(final_totals, reverse=True)


def get_loss_normalizing_factor_and_weights(
    loss_normalizing_factor: Optional[Union[float, int, str, SpecialLossNormalizingFactor]],
    batch: Batch,
) -> Tuple[Optional[Union[float, jax.Array]], Optional[jax.Array]]:
    """Resolves a (possibly special) loss normalizing factor and the loss weights."""
    weights = batch.get("decoder_loss_weights", None)
    if loss_normalizing_factor is None or not isinstance(
        loss_normalizing_factor, (str, SpecialLossNormalizingFactor)
    ):
        return loss_normalizing_factor, weights
    if isinstance(loss_normalizing_factor, str):
        loss_normalizing_factor = convert_special_loss_normalizing_factor_to_enum(loss_normalizing_factor)
    if weights is None:
        weights = jnp.asarray(batch["decoder_target_tokens"] > 0, jnp.float32)

    if loss_normalizing_factor == SpecialLossNormalizingFactor.NUM_REAL_TARGET_TOKENS:
        factor = jnp.sum(weights)
    elif loss_normalizing_factor == SpecialLossNormalizingFactor.NUM_TOTAL_TARGET_TOKENS:
        factor = np.prod(batch["decoder_target_tokens"].shape)
    elif loss_normalizing_factor == SpecialLossNormalizingFactor.AVERAGE_PER_SEQUENCE:
        if "decoder_segment_ids" in batch:
            norm = sum_weights_per_segment(
                batch["decoder_positions"], batch["decoder_segment_ids"], weights
            )
        else:
            norm = jnp.sum(weights, axis=-1, keepdims=True)
        weights = jnp.nan_to_num(weights / norm, nan=0, posinf=0, neginf=0)
        factor = jnp.sum(weights)
    else:  # pragma: no cover - enum is exhaustive
        raise ValueError(f"unsupported loss_normalizing_factor {loss_normalizing_factor}")
    return factor, weights


def compute_base_metrics(
    logits: jax.Array,
    targets: jax.Array,
    mask: Optional[jax.Array],
    loss: jax.Array,
    z_loss: jax.Array,
    segment_ids: Optional[Mapping[str, jax.Array]] = None,
) -> dict:
    """Additive per-batch sums for logging (sum over microbatches/hosts, then divide).

    Keys: ``loss``, ``z_loss``, ``cross_ent_loss`` (loss minus z-loss),
    ``correct_tokens`` and ``num_tokens`` (weighted; accuracy is their ratio),
    ``num_examples`` (sequences, packed segments counted separately),
    ``nonpadding_target_tokens`` and ``total_target_tokens``.
    """
    if mask is None:
        mask = jnp.ones(targets.shape, jnp.float32)
    mask = jnp.asarray(mask, jnp.float32)
    correct = jnp.sum((jnp.argmax(logits, -1) == targets) * mask)
    if segment_ids is not None and "decoder" in segment_ids:
        seg = segment_ids["decoder"]
        num_examples = jnp.sum(jnp.max(seg, axis=-1).astype(jnp.float32))
    else:
        num_examples = jnp.asarray(targets.shape[0], jnp.float32)
    return {
        "loss": loss,
        "z_loss": z_loss,
        "cross_ent_loss": loss - z_loss,
        "correct_tokens": correct,
        "num_tokens": jnp.sum(mask),
        "num_examples": num_examples,
        "nonpadding_target_tokens": jnp.sum(targets != 0).astype(jnp.float32),
        "total_target_tokens": jnp.asarray(np.prod(targets.shape), jnp.float32),
    }


# ---------------------------------------------------------------------------
# The model wrapper.
# ---------------------------------------------------------------------------
DECODE_METHODS = ("beam", "greedy", "sample")


class EncoderDecoderModel:
    """T5X-style wrapper of an encoder-decoder ``nn.Module`` (``t5.Transformer``).

    Args:
      module: the flax module (T5X ``Transformer`` interface).
      input_vocabulary / output_vocabulary: optional seqio vocabularies; the
        output vocabulary's ``eos_id`` is used when ``eos_id`` is not given.
      optimizer_def: kept for interface compatibility (unused here).
      decode_fn: decoding function for ``predict_batch_with_aux`` without a
        ``method`` (default beam search, as T5X).
      label_smoothing, z_loss, loss_normalizing_factor: loss settings (T5X's
        meaning; ``loss_normalizing_factor`` may be a number, None, or a
        ``SpecialLossNormalizingFactor`` / its name).
      eos_id: end-of-sequence id (default: output vocabulary's, else 1).
    """

    def __init__(
        self,
        module: nn.Module,
        input_vocabulary: Any = None,
        output_vocabulary: Any = None,
        optimizer_def: Any = None,
        decode_fn: Callable[..., Tuple[jax.Array, jax.Array]] = decoding.beam_search,
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        loss_normalizing_factor: Optional[Union[float, int, str, SpecialLossNormalizingFactor]] = None,
        eos_id: Optional[int] = None,
    ):
        self.module = module
        self.input_vocabulary = input_vocabulary
        self.output_vocabulary = output_vocabulary
        self.optimizer_def = optimizer_def
        self.decode_fn = decode_fn
        self.label_smoothing = float(label_smoothing)
        self.z_loss = float(z_loss)
        if isinstance(loss_normalizing_factor, str):
            loss_normalizing_factor = convert_special_loss_normalizing_factor_to_enum(loss_normalizing_factor)
        self.loss_normalizing_factor = loss_normalizing_factor
        if eos_id is None:
            eos_id = getattr(output_vocabulary, "eos_id", None)
        self.eos_id = 1 if eos_id is None else int(eos_id)

    @property
    def config(self):
        return self.module.config

    # -- variables ---------------------------------------------------------
    def get_initial_variables(
        self,
        rng: jax.Array,
        input_shapes: Mapping[str, Tuple[int, ...]],
        input_types: Optional[Mapping[str, Any]] = None,
    ) -> dict:
        """``module.init`` on dummy inputs; returns ``{'params', 'params_axes'}``."""
        input_types = input_types or {}

        def ones(name, default_dtype=jnp.int32):
            if name not in input_shapes:
                return None
            return jnp.ones(input_shapes[name], input_types.get(name, default_dtype))

        dec_shape = input_shapes["decoder_input_tokens"]
        dec_type = input_types.get("decoder_input_tokens", jnp.int32)
        return self.module.init(
            rng,
            ones("encoder_input_tokens"),
            jnp.ones(dec_shape, dec_type),
            jnp.ones(dec_shape, dec_type),
            encoder_segment_ids=ones("encoder_segment_ids"),
            decoder_segment_ids=ones("decoder_segment_ids"),
            encoder_positions=ones("encoder_positions"),
            decoder_positions=ones("decoder_positions"),
            decode=False,
            enable_dropout=False,
        )

    # -- teacher-forced --------------------------------------------------------
    def compute_logits(
        self,
        params: PyTree,
        batch: Batch,
        dropout_rng: Optional[jax.Array] = None,
        mutable: Any = False,
        flax_mutables: Optional[PyTree] = None,
    ):
        """Forward pass; dropout is on exactly when ``dropout_rng`` is given."""
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
        return self.module.apply(
            {"params": params, **(flax_mutables or {})},
            batch["encoder_input_tokens"],
            batch["decoder_input_tokens"],
            batch["decoder_target_tokens"],
            encoder_segment_ids=batch.get("encoder_segment_ids"),
            decoder_segment_ids=batch.get("decoder_segment_ids"),
            encoder_positions=batch.get("encoder_positions"),
            decoder_positions=batch.get("decoder_positions"),
            decode=False,
            enable_dropout=rngs is not None,
            rngs=rngs,
            mutable=mutable,
        )

    _compute_logits = compute_logits  # T5X's private name

    def loss_fn(
        self, params: PyTree, batch: Batch, dropout_rng: Optional[jax.Array], flax_mutables: Optional[PyTree] = None
    ) -> Tuple[jax.Array, dict]:
        """Weighted cross entropy (+ z-loss) summed over tokens, T5X-style.

        Returns ``(loss, metrics)``; see ``compute_base_metrics`` for the keys.
        """
        logits = self.compute_logits(params, batch, dropout_rng, flax_mutables=flax_mutables)
        factor, weights = get_loss_normalizing_factor_and_weights(self.loss_normalizing_factor, batch)
        loss, z_loss, _ = compute_weighted_cross_entropy(
            logits,
            targets=batch["decoder_target_tokens"],
            weights=weights,
            label_smoothing=self.label_smoothing,
            z_loss=self.z_loss,
            loss_normalizing_factor=factor,
        )
        segment_ids = {k[: -len("_segment_ids")]: v for k, v in batch.items() if k.endswith("_segment_ids")}
        metrics = compute_base_metrics(
            logits=logits,
            targets=batch["decoder_target_tokens"],
            mask=weights if weights is not None else batch["decoder_target_tokens"] > 0,
            loss=loss,
            z_loss=z_loss,
            segment_ids=segment_ids or None,
        )
        return loss, metrics

    def eval_fn(self, params: PyTree, batch: Batch, flax_mutables: Optional[PyTree] = None) -> Tuple[jax.Array, dict]:
        """``loss_fn`` without dropout."""
        return self.loss_fn(params, batch, None, flax_mutables=flax_mutables)

    def score_batch(self, params: PyTree, batch: Batch, return_intermediates: bool = False):
        """Per-sequence log-likelihood: ``sum(log_softmax(logits)[target] * weights)``.

        ``decoder_loss_weights`` defaults to ``decoder_target_tokens > 0``.
        With ``return_intermediates`` also returns ``{'token_scores': ...}``.
        """
        targets = batch["decoder_target_tokens"]
        weights = batch.get("decoder_loss_weights")
        if weights is None:
            weights = targets > 0
        logits = self.compute_logits(params, batch)
        token_scores = -cross_entropy_with_logits(logits, onehot(targets, logits.shape[-1]), 0.0)[0] * weights
        scores = token_scores.sum(-1)
        if return_intermediates:
            return scores, {"token_scores": token_scores}
        return scores

    # -- decoding ------------------------------------------------------------
    def _compute_logits_from_slice(
        self,
        decoding_state: decoding.DecodingState,
        params: PyTree,
        encoded_inputs: jax.Array,
        raw_inputs: jax.Array,
        max_decode_length: int,
    ) -> Tuple[jax.Array, PyTree]:
        """One decoder step with the cache: ``[n, 1]`` token -> ``[n, vocab]`` logits."""
        flat_ids = decoding_state.cur_token
        logits, new_vars = self.module.apply(
            {"params": params, "cache": decoding_state.cache},
            encoded_inputs,
            raw_inputs,
            flat_ids,
            flat_ids,
            enable_dropout=False,
            decode=True,
            max_decode_length=max_decode_length,
            mutable=["cache"],
            method=self.module.decode,
        )
        return jnp.squeeze(logits, axis=1), new_vars["cache"]

    def init_cache(self, params: PyTree, encoder_input_tokens: jax.Array, decoder_length: int) -> PyTree:
        """Zero-filled ``cache`` collection for a batch (``[batch, heads, head_dim, length]``)."""
        batch = encoder_input_tokens.shape[0]
        dec = jnp.ones((batch, decoder_length), jnp.int32)
        _, variables = self.module.apply(
            {"params": params},
            jnp.ones_like(encoder_input_tokens),
            dec,
            dec,
            decode=True,
            enable_dropout=False,
            mutable=["cache"],
        )
        return variables["cache"]

    def predict_batch_with_aux(
        self,
        params: PyTree,
        batch: Batch,
        rng: Optional[jax.Array] = None,
        decoder_params: Optional[Mapping[str, Any]] = None,
        return_all_decodes: bool = False,
        num_decodes: Optional[int] = None,
        prompt_with_targets: bool = False,
        *,
        method: Optional[str] = None,
        alpha: Optional[float] = None,
        temperature: Optional[float] = None,
        topk: Optional[int] = None,
        topp: Optional[float] = None,
        rescale_log_probs: Optional[bool] = None,
        max_decode_length: Optional[int] = None,
    ) -> Tuple[jax.Array, dict]:
        """Decodes a batch; returns ``(tokens, {'scores': scores})``.

        With ``method=None`` the model's ``decode_fn`` is called with
        ``decoder_params`` exactly as T5X does.  ``method`` selects instead:

        * ``'beam'``: beam search, ``num_decodes`` beams (default 4), brevity
          ``alpha`` (default 0.6); scores are length-normalized log-probs;
        * ``'greedy'``: argmax decoding (one decode); scores are the summed
          log-probs of the chosen tokens;
        * ``'sample'``: temperature sampling (``temperature`` default 1.0,
          optional ``topk`` / ``topp``, ``rng`` default PRNGKey(0),
          ``num_decodes`` default 1); scores are summed log-probs, of the
          rescaled distribution only if ``rescale_log_probs``.

        The decode length is ``decoder_input_tokens.shape[1]`` (or
        ``max_decode_length`` when the batch has no decoder inputs).  With
        ``return_all_decodes`` the results are ``[batch, num_decodes, length]``
        and ``[batch, num_decodes]`` sorted ascending (best last); otherwise the
        best ``[batch, length]`` and ``[batch]``.
        """
        encoder_input_tokens = batch["encoder_input_tokens"]
        if "decoder_input_tokens" in batch:
            decoder_input_tokens = batch["decoder_input_tokens"]
        elif max_decode_length is not None:
            decoder_input_tokens = jnp.zeros((encoder_input_tokens.shape[0], max_decode_length), jnp.int32)
        else:
            raise ValueError("the batch has no decoder_input_tokens; pass max_decode_length")
        length = decoder_input_tokens.shape[1]

        if prompt_with_targets:
            prompt = decoder_input_tokens * (decoder_input_tokens != self.eos_id)
        else:
            prompt = jnp.zeros_like(decoder_input_tokens)

        decoder_params = dict(decoder_params or {})
        if method is None:
            decode_fn = self.decode_fn
            if num_decodes is None:
                num_decodes = 1
            if rng is not None:
                if decoder_params.get("decode_rng") is not None:
                    raise ValueError("got an rng both as `rng` and as decoder_params['decode_rng']")
                decoder_params["decode_rng"] = rng
        elif method == "beam":
            decode_fn = decoding.beam_search
            num_decodes = 4 if num_decodes is None else num_decodes
            decoder_params["alpha"] = 0.6 if alpha is None else alpha
        elif method == "greedy":
            decode_fn = decoding.temperature_sample
            num_decodes = 1
            decoder_params.update(
                temperature=0.0,
                topk=0,
                rescale_log_probs=False if rescale_log_probs is None else rescale_log_probs,
            )
        elif method == "sample":
            decode_fn = decoding.temperature_sample
            num_decodes = 1 if num_decodes is None else num_decodes
            decoder_params.update(
                temperature=1.0 if temperature is None else temperature,
                topk=0 if topk is None else topk,
                topp=0.0 if topp is None else topp,
                rescale_log_probs=False if rescale_log_probs is None else rescale_log_probs,
                decode_rng=jax.random.PRNGKey(0) if rng is None else rng,
            )
        else:
            raise ValueError(f"unknown decoding method {method!r}; expected one of {DECODE_METHODS}")

        encoded = self.module.apply(
            {"params": params}, encoder_input_tokens, enable_dropout=False, method=self.module.encode
        )
        cache = self.init_cache(params, encoder_input_tokens, length)
        tokens_to_logits = functools.partial(
            self._compute_logits_from_slice,
            params=params,
            encoded_inputs=decoding.flat_batch_beam_expand(encoded, num_decodes),
            raw_inputs=decoding.flat_batch_beam_expand(encoder_input_tokens, num_decodes),
            max_decode_length=length,
        )
        decoder_params.setdefault("eos_id", self.eos_id)
        decodes, scores = decode_fn(
            inputs=prompt,
            cache=cache,
            tokens_to_logits=tokens_to_logits,
            num_decodes=num_decodes,
            cache_offset=0,
            **decoder_params,
        )
        if return_all_decodes:
            return decodes, {"scores": scores}
        return decodes[:, -1, :], {"scores": scores[:, -1]}

    def predict_batch(
        self,
        params: PyTree,
        batch: Batch,
        rng: Optional[jax.Array] = None,
        *,
        num_decodes: Optional[int] = None,
        alpha: float = 0.6,
        method: str = "beam",
        temperature: Optional[float] = None,
        topk: Optional[int] = None,
        topp: Optional[float] = None,
        rescale_log_probs: Optional[bool] = None,
        return_all_decodes: bool = False,
        max_decode_length: Optional[int] = None,
    ) -> jax.Array:
        """Decoded tokens only (see ``predict_batch_with_aux`` for the options)."""
        return self.predict_batch_with_aux(
            params,
            batch,
            rng,
            num_decodes=num_decodes,
            return_all_decodes=return_all_decodes,
            method=method,
            alpha=alpha,
            temperature=temperature,
            topk=topk,
            topp=topp,
            rescale_log_probs=rescale_log_probs,
            max_decode_length=max_decode_length,
        )[0]
