"""Building blocks of the T5 1.1 network, numerically equivalent to T5X's.

Every parameter is created with ``flax.linen.partitioning.param_with_axes`` so
that ``Module.init`` returns, next to ``params``, a ``params_axes`` collection
holding the logical axis names T5X uses (``vocab``, ``embed``, ``joined_kv``,
``heads``, ``kv``, ``mlp``, ``relpos_buckets``).  Activations are annotated
with ``nn.with_logical_constraint`` on the logical axes ``batch``, ``length``,
``embed``, ``heads``, ``kv``, ``mlp`` and ``vocab``; these are no-ops unless a
mesh and logical axis rules are active, so a trainer can shard by T5X-style
rules while single-device code is unaffected.

Numerical conventions follow T5X's ``t5x/examples/t5/layers.py``: masks become
additive biases of -1e10, the relative-position bias is added to the mask bias
before it is added to the attention logits, RMS layer norm is computed in
float32 and cast to the activation dtype, attention logits are not scaled by
1/sqrt(head_dim) (that factor lives in the query initializer), and parameters
are stored in float32 whatever the activation dtype.
"""
from __future__ import annotations

import functools
import operator
from typing import Any, Callable, Iterable, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen import partitioning as nn_partitioning
from jax import lax

Array = jax.Array
DType = Any
Initializer = Callable[..., Array]

param_with_axes = nn_partitioning.param_with_axes

# Value a masked attention logit is pushed to (T5X uses the same constant).
MASK_BIAS = -1e10

default_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
attention_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
embedding_init = nn.initializers.normal(stddev=1.0)
relpos_embedding_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")


def constrain(x: Array, axes: Tuple[Optional[str], ...]) -> Array:
    """Logical sharding annotation for an activation (no-op without a mesh/rules)."""
    return nn.with_logical_constraint(x, axes)


def _as_tuple(x: Union[int, Iterable[int]]) -> Tuple[int, ...]:
    if isinstance(x, Iterable):
        return tuple(x)
    return (x,)


# ---------------------------------------------------------------------------
# Low-precision matmuls that accumulate in float32, forward and backward.
# ---------------------------------------------------------------------------
LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def _swap_last(x: Array) -> Array:
    return jnp.swapaxes(x, -1, -2)


@jax.custom_vjp
def _f32_accumulating_matmul(a: Array, b: Array) -> Array:
    return jnp.matmul(a, b, preferred_element_type=jnp.float32).astype(a.dtype)


def _f32_accumulating_matmul_fwd(a, b):
    return _f32_accumulating_matmul(a, b), (a, b)


def _f32_accumulating_matmul_bwd(residuals, g):
    a, b = residuals
    g = g.astype(a.dtype)
    grad_a = jnp.matmul(g, _swap_last(b), preferred_element_type=jnp.float32).astype(a.dtype)
    grad_b = jnp.matmul(_swap_last(a), g, preferred_element_type=jnp.float32).astype(b.dtype)
    return grad_a, grad_b


_f32_accumulating_matmul.defvjp(_f32_accumulating_matmul_fwd, _f32_accumulating_matmul_bwd)


def matmul(a: Array, b: Array) -> Array:
    """``a @ b`` over ``[..., m, k] x [..., k, n]`` (same batch dims), in the inputs' dtype.

    The same numbers as ``jnp.matmul`` on bfloat16 (inputs rounded to bfloat16, products
    summed in float32, the result rounded once), but asked for in the form XLA lowers to
    the machine's native low-precision units: on CPU a bfloat16 dot whose result type is
    bfloat16 is computed by upcasting everything to float32 (measured 112 GFLOP/s on this
    project's 2-core AVX-512/AMX machine), while one that requests a float32 result runs
    oneDNN's bfloat16 kernels (743 GFLOP/s). JAX's own transpose of such a dot would mix a
    float32 cotangent with bfloat16 operands and fall back to the slow path, so the
    backward pass is written out here with the same rounding: cotangents in bfloat16,
    both gradient products accumulated in float32 and rounded to the operand dtype, as
    the plain bfloat16 dot's transpose rounds them. float32 inputs take ``jnp.matmul``.
    """
    if a.dtype in LOW_PRECISION and b.dtype == a.dtype:
        return _f32_accumulating_matmul(a, b)
    return jnp.matmul(a, b)


# ---------------------------------------------------------------------------
# Dense projection without bias, stored as a 2-D kernel as T5X stores it.
# ---------------------------------------------------------------------------
class DenseGeneral(nn.Module):
    """Linear map over one or more trailing axes, no bias.

    The kernel parameter is kept 2-D, ``[prod(input axes), prod(features)]``
    (the layout T5X checkpoints hold), and reshaped for the contraction.
    """

    features: Union[int, Sequence[int]]
    axis: Union[int, Sequence[int]] = -1
    dtype: DType = jnp.float32
    kernel_init: Initializer = default_kernel_init
    kernel_axes: Tuple[str, ...] = ()

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        features = _as_tuple(self.features)
        inputs = jnp.asarray(inputs, self.dtype)
        axis = tuple(a if a >= 0 else inputs.ndim + a for a in _as_tuple(self.axis))
        in_shape = tuple(inputs.shape[a] for a in axis)
        kernel = param_with_axes(
            "kernel",
            self.kernel_init,
            (int(np.prod(in_shape)), int(np.prod(features))),
            jnp.float32,
            axes=self.kernel_axes,
        )
        kernel = jnp.asarray(kernel, self.dtype)
        if axis == tuple(range(inputs.ndim - len(axis), inputs.ndim)):
            # Trailing axes (every T5 projection): one [rows, in] x [in, out] matmul.
            batch_shape = inputs.shape[: inputs.ndim - len(axis)]
            flat = jnp.reshape(inputs, (int(np.prod(batch_shape)), kernel.shape[0]))
            return jnp.reshape(matmul(flat, kernel), batch_shape + features)
        kernel = jnp.reshape(kernel, in_shape + features)
        contracting = (axis, tuple(range(len(axis))))
        return lax.dot_general(inputs, kernel, (contracting, ((), ())))


# ---------------------------------------------------------------------------
# Token embedding shared by encoder, decoder (and optionally the logits).
# ---------------------------------------------------------------------------
class Embed(nn.Module):
    """Token embedding table ``[vocab, embed]``.

    ``one_hot=True`` (what the T5 network uses) looks tokens up by a one-hot
    contraction, which partitions cleanly when the vocabulary is sharded.
    """

    num_embeddings: int
    features: int
    dtype: DType = jnp.float32
    attend_dtype: Optional[DType] = None
    embedding_init: Initializer = embedding_init
    one_hot: bool = False

    def setup(self):
        self.embedding = param_with_axes(
            "embedding",
            self.embedding_init,
            (self.num_embeddings, self.features),
            jnp.float32,
            axes=("vocab", "embed"),
        )

    def __call__(self, inputs: Array) -> Array:
        if not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise ValueError(f"token ids must be integers, got dtype {inputs.dtype}")
        table = jnp.asarray(self.embedding, self.dtype)
        if self.one_hot:
            ids = lax.iota(jnp.int32, self.num_embeddings)
            one_hot = jnp.asarray(inputs[..., None] == ids, self.dtype)
            out = jnp.dot(one_hot, table)
        else:
            out = jnp.take(table, inputs, axis=0)
        return constrain(out, ("batch", "length", "embed"))

    def attend(self, query: Array) -> Array:
        """Logits against every embedding row (for tied output projections)."""
        dtype = self.attend_dtype if self.attend_dtype is not None else self.dtype
        return jnp.dot(query, jnp.asarray(self.embedding, dtype).T)


# ---------------------------------------------------------------------------
# Relative position biases.
# ---------------------------------------------------------------------------
def relative_position_bucket(
    relative_position: np.ndarray,
    bidirectional: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> np.ndarray:
    """Maps ``memory_position - query_position`` to T5's log-spaced buckets.

    Half the buckets (per direction when bidirectional) are exact small
    distances; the rest grow logarithmically up to ``max_distance``, beyond
    which all distances share the last bucket.  Computed in numpy (a compile
    time constant), in float32 like Mesh TensorFlow and T5X so bucket edges
    agree exactly.
    """
    n = -np.asarray(relative_position)
    bucket = np.zeros_like(n, dtype=np.int32)
    if bidirectional:
        num_buckets //= 2
        bucket += (n < 0).astype(np.int32) * num_buckets
        n = np.abs(n)
    else:
        n = np.maximum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    large = max_exact + (
        np.log(n.astype(np.float32) / max_exact + np.finfo(np.float32).eps)
        / np.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).astype(np.int32)
    large = np.minimum(large, num_buckets - 1)
    bucket += np.where(is_small, n, large).astype(np.int32)
    return bucket


class RelativePositionBiases(nn.Module):
    """Per-head learned bias for each relative-position bucket (one per stack)."""

    num_buckets: int
    max_distance: int
    num_heads: int
    dtype: DType = jnp.float32
    embedding_init: Initializer = relpos_embedding_init

    @nn.compact
    def __call__(self, qlen: int, klen: int, bidirectional: bool = True) -> Array:
        """Returns a ``[1, heads, qlen, klen]`` attention bias."""
        context = np.arange(qlen, dtype=np.int32)[:, None]
        memory = np.arange(klen, dtype=np.int32)[None, :]
        buckets = relative_position_bucket(
            memory - context,
            bidirectional=bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        table = param_with_axes(
            "rel_embedding",
            self.embedding_init,
            (self.num_heads, self.num_buckets),
            jnp.float32,
            axes=("heads", "relpos_buckets"),
        )
        table = jnp.asarray(table, self.dtype)
        # One-hot contraction instead of a gather (partitions along heads).
        one_hot = jnp.asarray(
            buckets[None, :, :] == np.arange(self.num_buckets, dtype=np.int32)[:, None, None],
            self.dtype,
        )
        values = lax.dot_general(table, one_hot, (((1,), (0,)), ((), ())))
        return values[None, ...]


# ---------------------------------------------------------------------------
# RMS layer norm (no mean subtraction, no bias).
# ---------------------------------------------------------------------------
class LayerNorm(nn.Module):
    """T5 RMS normalization over the last axis, computed in float32."""

    epsilon: float = 1e-6
    dtype: DType = jnp.float32
    scale_init: Initializer = nn.initializers.ones

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = jnp.asarray(x, jnp.float32)
        mean_square = jnp.mean(lax.square(x), axis=-1, keepdims=True)
        y = jnp.asarray(x * lax.rsqrt(mean_square + self.epsilon), self.dtype)
        scale = param_with_axes(
            "scale", self.scale_init, (x.shape[-1],), jnp.float32, axes=("embed",)
        )
        return y * jnp.asarray(scale, self.dtype)


# ---------------------------------------------------------------------------
# Masks.
# ---------------------------------------------------------------------------
def make_attention_mask(
    query_input: Array,
    key_input: Array,
    pairwise_fn: Callable[[Array, Array], Array] = jnp.multiply,
    extra_batch_dims: int = 0,
    dtype: DType = jnp.float32,
) -> Array:
    """``[batch, len_q]`` x ``[batch, len_k]`` -> ``[batch, 1, len_q, len_k]`` mask."""
    mask = pairwise_fn(jnp.expand_dims(query_input, -1), jnp.expand_dims(key_input, -2))
    mask = jnp.expand_dims(mask, -3)
    mask = jnp.expand_dims(mask, tuple(range(extra_batch_dims)))
    return mask.astype(dtype)


def make_causal_mask(x: Array, extra_batch_dims: int = 0, dtype: DType = jnp.float32) -> Array:
    """Lower-triangular ``[batch, 1, len, len]`` mask (depends on x's shape only)."""
    idx = jnp.broadcast_to(jnp.arange(x.shape[-1], dtype=jnp.int32), x.shape)
    return make_attention_mask(idx, idx, jnp.greater_equal, extra_batch_dims, dtype)


def combine_masks(*masks: Optional[Array], dtype: DType = jnp.float32) -> Optional[Array]:
    """Logical AND of the given masks (None entries ignored; None if none given)."""
    masks = [m for m in masks if m is not None]
    if not masks:
        return None
    if any(m.ndim != masks[0].ndim for m in masks):
        raise ValueError(f"masks must have the same rank: {[m.ndim for m in masks]}")
    out = masks[0]
    for m in masks[1:]:
        out = jnp.logical_and(out, m)
    return out.astype(dtype)


def combine_biases(*biases: Optional[Array]) -> Optional[Array]:
    """Sum of the given attention biases (None entries ignored)."""
    biases = [b for b in biases if b is not None]
    if not biases:
        return None
    if any(b.ndim != biases[0].ndim for b in biases):
        raise ValueError(f"biases must have the same rank: {[b.ndim for b in biases]}")
    out = biases[0]
    for b in biases[1:]:
        out = out + b
    return out


def make_decoder_mask(
    decoder_target_tokens: Array,
    dtype: DType,
    decoder_causal_attention: Optional[Array] = None,
    decoder_segment_ids: Optional[Array] = None,
) -> Array:
    """Causal + padding (+ packing) self-attention mask for a decoder.

    Padding is read from ``decoder_target_tokens > 0``, so every key of a
    padded target position is masked (as in T5X).  Where
    ``decoder_causal_attention`` is 1 (prefix-LM inputs) attention is
    bidirectional among those positions.
    """
    causal = make_causal_mask(decoder_target_tokens, dtype=dtype)
    if decoder_causal_attention is not None:
        inputs_mask = make_attention_mask(
            decoder_causal_attention, decoder_causal_attention, jnp.logical_and, dtype=dtype
        )
        causal = jnp.logical_or(causal, inputs_mask).astype(dtype)
    masks = [causal, make_attention_mask(decoder_target_tokens > 0, decoder_target_tokens > 0, dtype=dtype)]
    if decoder_segment_ids is not None:
        masks.append(make_attention_mask(decoder_segment_ids, decoder_segment_ids, jnp.equal, dtype=dtype))
    return combine_masks(*masks, dtype=dtype)


# ---------------------------------------------------------------------------
# Attention.
# ---------------------------------------------------------------------------
def dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    bias: Optional[Array] = None,
    dropout_rng: Optional[Array] = None,
    dropout_rate: float = 0.0,
    deterministic: bool = False,
    dtype: DType = jnp.float32,
    float32_logits: bool = False,
) -> Array:
    """Softmax(q k^T + bias) v over ``[batch, length, heads, head_dim]`` inputs."""
    if float32_logits:
        query = query.astype(jnp.float32)
        key = key.astype(jnp.float32)
    # Plain einsums, not `matmul`: as batched matmuls over [batch, heads] they measured no
    # faster in training (2.41 vs 2.40 steps/s, small_cpu) and slower in decoding, where
    # the transposes run over the whole cache for one query row.
    logits = jnp.einsum("bqhd,bkhd->bhqk", query, key)
    if bias is not None:
        logits = logits + bias.astype(logits.dtype)
    weights = jax.nn.softmax(logits).astype(dtype)
    if not deterministic and dropout_rate > 0.0:
        keep_prob = 1.0 - dropout_rate
        # Broadcast the dropout pattern along the query axis (as T5X does).
        shape = list(weights.shape)
        shape[-2] = 1
        keep = jax.random.bernoulli(dropout_rng, keep_prob, shape)
        keep = jnp.broadcast_to(keep, weights.shape)
        weights = weights * (keep.astype(weights.dtype) / jnp.asarray(keep_prob, dtype))
    return jnp.einsum("bhqk,bkhd->bqhd", weights, value)


def _slice_query_row(bias: Array, index: Array) -> Array:
    """``bias[..., index:index+1, :]`` for a traced scalar or per-example index.

    ``bias`` is ``[1, heads, q, k]``; returns ``[n, heads, 1, k]`` with n = 1 for
    a scalar index and n = batch for a vector one.
    """
    index = jnp.reshape(index, (-1,))
    return jax.vmap(lambda i: lax.dynamic_slice_in_dim(bias[0], i, 1, axis=-2))(index)


class MultiHeadDotProductAttention(nn.Module):
    """Multi-head attention with T5X's parameter layout and KV cache.

    In decode mode the first call (cache absent) creates the ``cache``
    collection: ``cached_key`` / ``cached_value`` of shape
    ``[batch, heads, head_dim, max_length]`` and a scalar ``cache_index``;
    later calls take one position, write it into the cache with a one-hot
    update and attend to every position up to the current one.
    """

    num_heads: int
    head_dim: int
    dtype: DType = jnp.float32
    dropout_rate: float = 0.0
    kernel_init: Initializer = attention_kernel_init
    float32_logits: bool = False

    @nn.compact
    def __call__(
        self,
        inputs_q: Array,
        inputs_kv: Array,
        mask: Optional[Array] = None,
        bias: Optional[Array] = None,
        *,
        decode: bool = False,
        deterministic: bool = False,
    ) -> Array:
        projection = functools.partial(
            DenseGeneral,
            axis=-1,
            features=(self.num_heads, self.head_dim),
            kernel_axes=("embed", "joined_kv"),
            dtype=self.dtype,
        )
        depth_scaling = jnp.sqrt(self.head_dim).astype(self.dtype)

        def query_init(*args):
            return self.kernel_init(*args) / depth_scaling

        query = projection(kernel_init=query_init, name="query")(inputs_q)
        key = projection(kernel_init=self.kernel_init, name="key")(inputs_kv)
        value = projection(kernel_init=self.kernel_init, name="value")(inputs_kv)
        query = constrain(query, ("batch", "length", "heads", "kv"))
        key = constrain(key, ("batch", "length", "heads", "kv"))
        value = constrain(value, ("batch", "length", "heads", "kv"))

        if decode:
            initialized = self.has_variable("cache", "cached_key")
            # Cache layout [batch, heads, head_dim, length]: length last.
            def cache_shape(shape):
                return shape[:-3] + (shape[-2], shape[-1], shape[-3])

            cached_key = self.variable("cache", "cached_key", jnp.zeros, cache_shape(key.shape), key.dtype)
            cached_value = self.variable(
                "cache", "cached_value", jnp.zeros, cache_shape(value.shape), value.dtype
            )
            cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, dtype=jnp.int32))
            if initialized:
                batch, heads, head_dim, length = cached_key.value.shape
                expected = (batch, 1, heads, head_dim)
                if query.shape != expected:
                    raise ValueError(
                        f"autoregressive cache expects a query of shape {expected}, got {query.shape}"
                    )
                cur_index = cache_index.value
                if jnp.ndim(cur_index) == 0:
                    # One position written in place: T5X adds `key * one_hot(index)` to the
                    # whole cache, reading and writing every position at every step.
                    at = (0,) * (cached_key.value.ndim - 1) + (cur_index,)
                    new_key = lax.dynamic_update_slice(cached_key.value, jnp.moveaxis(key, -3, -1), at)
                    new_value = lax.dynamic_update_slice(cached_value.value, jnp.moveaxis(value, -3, -1), at)
                else:  # per-example index [batch]: a one-hot row per example
                    one_hot = jax.nn.one_hot(cur_index, length, dtype=key.dtype)[:, None, None, :]
                    new_key = cached_key.value + jnp.moveaxis(key, -3, -1) * one_hot
                    new_value = cached_value.value + jnp.moveaxis(value, -3, -1) * one_hot
                cached_key.value = new_key
                cached_value.value = new_value
                cache_index.value = cur_index + 1
                key = jnp.moveaxis(new_key, -1, -3)
                value = jnp.moveaxis(new_value, -1, -3)
                # Attend only to positions already written.
                positions = jnp.arange(length)
                if jnp.ndim(cur_index) == 0:
                    causal = jnp.broadcast_to(positions <= cur_index, (batch, 1, 1, length))
                else:
                    causal = (positions[None, :] <= cur_index[:, None])[:, None, None, :]
                mask = combine_masks(mask, causal)
                if bias is not None:
                    bias = _slice_query_row(bias, cur_index)

        if mask is not None:
            attention_bias = lax.select(
                mask > 0,
                jnp.full(mask.shape, 0.0).astype(self.dtype),
                jnp.full(mask.shape, MASK_BIAS).astype(self.dtype),
            )
        else:
            attention_bias = None
        if bias is not None:
            attention_bias = combine_biases(attention_bias, bias)

        dropout_rng = None
        if not deterministic and self.dropout_rate > 0.0:
            dropout_rng = self.make_rng("dropout")

        x = dot_product_attention(
            query,
            key,
            value,
            bias=attention_bias,
            dropout_rng=dropout_rng,
            dropout_rate=self.dropout_rate,
            deterministic=deterministic,
            dtype=self.dtype,
            float32_logits=self.float32_logits,
        )
        return DenseGeneral(
            features=inputs_q.shape[-1],
            axis=(-2, -1),
            kernel_init=self.kernel_init,
            kernel_axes=("joined_kv", "embed"),
            dtype=self.dtype,
            name="out",
        )(x)


# ---------------------------------------------------------------------------
# Feed-forward block.
# ---------------------------------------------------------------------------
def activation_fn(name_or_fn: Union[str, Callable[[Array], Array]]) -> Callable[[Array], Array]:
    """'linear' -> identity; any other string -> ``flax.linen.<name>``."""
    if callable(name_or_fn):
        return name_or_fn
    if name_or_fn == "linear":
        return lambda x: x
    if isinstance(name_or_fn, str) and callable(getattr(nn, name_or_fn, None)):
        return getattr(nn, name_or_fn)
    raise ValueError(f"unknown MLP activation {name_or_fn!r} (use 'linear' or a flax.linen function name)")


class MlpBlock(nn.Module):
    """Gated feed-forward block: ``wo(prod_i act_i(wi_i(x)))``.

    One activation gives a single ``wi`` kernel; several give ``wi_0``,
    ``wi_1``, ... whose activations are multiplied (``('gelu', 'linear')`` is
    T5 1.1's gated GELU).
    """

    intermediate_dim: int = 2048
    activations: Sequence[Union[str, Callable[[Array], Array]]] = ("relu",)
    kernel_init: Initializer = default_kernel_init
    intermediate_dropout_rate: float = 0.1
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, inputs: Array, decode: bool = False, deterministic: bool = False) -> Array:
        del decode
        hidden = []
        for i, act in enumerate(self.activations):
            name = "wi" if len(self.activations) == 1 else f"wi_{i}"
            h = DenseGeneral(
                self.intermediate_dim,
                dtype=self.dtype,
                kernel_init=self.kernel_init,
                kernel_axes=("embed", "mlp"),
                name=name,
            )(inputs)
            hidden.append(activation_fn(act)(h))
        x = functools.reduce(operator.mul, hidden)
        x = nn.Dropout(rate=self.intermediate_dropout_rate, broadcast_dims=(-2,))(
            x, deterministic=deterministic
        )
        x = constrain(x, ("batch", "length", "mlp"))
        return DenseGeneral(
            inputs.shape[-1],
            dtype=self.dtype,
            kernel_init=self.kernel_init,
            kernel_axes=("mlp", "embed"),
            name="wo",
        )(x)
