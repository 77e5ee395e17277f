"""T5 1.1 encoder-decoder Transformer with T5X's parameter tree and interface.

The parameter tree is the one T5X's ``t5x/examples/t5/network.py`` builds, so a
T5X checkpoint maps onto it one-to-one::

    token_embedder/embedding                                  [vocab, embed]
    encoder/relpos_bias/rel_embedding                         [heads, relpos_buckets]
    encoder/layers_N/pre_attention_layer_norm/scale           [embed]
    encoder/layers_N/attention/{query,key,value}/kernel       [embed, joined_kv]
    encoder/layers_N/attention/out/kernel                     [joined_kv, embed]
    encoder/layers_N/pre_mlp_layer_norm/scale                 [embed]
    encoder/layers_N/mlp/{wi_0,wi_1}/kernel                   [embed, mlp]
    encoder/layers_N/mlp/wo/kernel                            [mlp, embed]
    encoder/encoder_norm/scale                                [embed]
    decoder/relpos_bias/rel_embedding
    decoder/layers_N/pre_self_attention_layer_norm/scale
    decoder/layers_N/self_attention/{query,key,value,out}/kernel
    decoder/layers_N/pre_cross_attention_layer_norm/scale
    decoder/layers_N/encoder_decoder_attention/{query,key,value,out}/kernel
    decoder/layers_N/pre_mlp_layer_norm/scale
    decoder/layers_N/mlp/{wi_0,wi_1,wo}/kernel
    decoder/decoder_norm/scale
    decoder/logits_dense/kernel                               [embed, vocab]

(the bracketed names are the logical axes recorded in ``params_axes``).  The
``Transformer`` call signature, ``encode`` and ``decode`` methods and the
``cache`` collection used for incremental decoding are T5X's too.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from personalize_t5x.network import layers

_DTYPES = {
    "float32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "float16": jnp.float16,
}


def _canonical_dtype(dtype: Any) -> Any:
    """Accepts 'bfloat16' / jnp.bfloat16 / np.dtype and returns a jnp scalar type."""
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"T5Config.dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        return _DTYPES[dtype]
    try:
        name = np.dtype(dtype).name
    except TypeError as exc:
        raise ValueError(f"T5Config.dtype is not a dtype: {dtype!r}") from exc
    if name not in _DTYPES:
        raise ValueError(f"T5Config.dtype must be one of {sorted(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Hyperparameters of the T5 1.1 network (T5X's ``network.T5Config`` fields).

    ``dtype`` is the activation dtype (parameters are always float32); it may be
    given as a string such as ``'bfloat16'``, as gin files do.  The last three
    fields but one are not in T5X's config (``network.py`` hard-codes them); they keep
    T5X's values by default and exist so other T5 variants can be imported.
    ``one_hot_embedding`` chooses how tokens are looked up (speed only).
    """

    vocab_size: int
    dtype: Any = jnp.float32
    emb_dim: int = 512
    num_heads: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    head_dim: int = 64
    mlp_dim: int = 2048
    mlp_activations: Sequence[str] = ("relu",)
    dropout_rate: float = 0.1
    logits_via_embedding: bool = False
    float32_attention_logits: bool = False
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    # Token lookup: a gather (False) computes the same rows as T5X's one-hot matmul (True)
    # without the [tokens, vocab] x [vocab, embed] product and its gradient; True suits a
    # vocabulary sharded along `model` on TPU, where the contraction partitions cleanly.
    one_hot_embedding: bool = False

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("dtype", _canonical_dtype(self.dtype))
        acts = self.mlp_activations
        if isinstance(acts, str):
            acts = (acts,)
        set_("mlp_activations", tuple(acts))
        for name in (
            "vocab_size",
            "emb_dim",
            "num_heads",
            "head_dim",
            "mlp_dim",
            "relative_attention_num_buckets",
            "relative_attention_max_distance",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"T5Config.{name} must be a positive integer, got {value!r}")
        for name in ("num_encoder_layers", "num_decoder_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"T5Config.{name} must be a non-negative integer, got {value!r}")
        if not self.mlp_activations:
            raise ValueError("T5Config.mlp_activations must name at least one activation")
        for act in self.mlp_activations:
            layers.activation_fn(act)  # raises on an unknown name
        if not 0.0 <= float(self.dropout_rate) < 1.0:
            raise ValueError(f"T5Config.dropout_rate must be in [0, 1), got {self.dropout_rate!r}")
        if self.relative_attention_num_buckets < 4:
            raise ValueError("T5Config.relative_attention_num_buckets must be at least 4")
        if not float(self.layer_norm_epsilon) > 0:
            raise ValueError(f"T5Config.layer_norm_epsilon must be positive, got {self.layer_norm_epsilon!r}")

    def replace(self, **changes) -> "T5Config":
        return dataclasses.replace(self, **changes)

    @property
    def num_params(self) -> int:
        """Number of parameters of the network this config builds."""
        e, v, h, d, m = self.emb_dim, self.vocab_size, self.num_heads, self.head_dim, self.mlp_dim
        attn = 4 * e * h * d
        mlp = len(self.mlp_activations) * e * m + m * e
        enc_layer = attn + mlp + 2 * e
        dec_layer = 2 * attn + mlp + 3 * e
        relpos = 2 * h * self.relative_attention_num_buckets
        logits = 0 if self.logits_via_embedding else e * v
        return (
            v * e
            + self.num_encoder_layers * enc_layer
            + self.num_decoder_layers * dec_layer
            + 2 * e
            + relpos
            + logits
        )


def _relpos(cfg: T5Config) -> layers.RelativePositionBiases:
    return layers.RelativePositionBiases(
        num_buckets=cfg.relative_attention_num_buckets,
        max_distance=cfg.relative_attention_max_distance,
        num_heads=cfg.num_heads,
        dtype=cfg.dtype,
        embedding_init=layers.relpos_embedding_init,
        name="relpos_bias",
    )


def _attention(cfg: T5Config, name: str) -> layers.MultiHeadDotProductAttention:
    return layers.MultiHeadDotProductAttention(
        num_heads=cfg.num_heads,
        head_dim=cfg.head_dim,
        dtype=cfg.dtype,
        dropout_rate=cfg.dropout_rate,
        float32_logits=cfg.float32_attention_logits,
        name=name,
    )


def _mlp(cfg: T5Config) -> layers.MlpBlock:
    return layers.MlpBlock(
        intermediate_dim=cfg.mlp_dim,
        activations=cfg.mlp_activations,
        intermediate_dropout_rate=cfg.dropout_rate,
        dtype=cfg.dtype,
        name="mlp",
    )


def _norm(cfg: T5Config, name: str) -> layers.LayerNorm:
    return layers.LayerNorm(epsilon=cfg.layer_norm_epsilon, dtype=cfg.dtype, name=name)


def _dropout(cfg: T5Config, x, deterministic: bool, broadcast: bool = True):
    dims = (-2,) if broadcast else ()
    return nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=dims)(x, deterministic=deterministic)


_RESIDUAL_AXES = ("batch", "length", "embed")


class EncoderLayer(nn.Module):
    """Pre-norm self-attention + gated MLP block."""

    config: T5Config
    relative_embedding: nn.Module

    @nn.compact
    def __call__(self, inputs, encoder_mask=None, deterministic: bool = False):
        cfg = self.config
        length = inputs.shape[-2]
        bias = self.relative_embedding(length, length, True)

        x = _norm(cfg, "pre_attention_layer_norm")(inputs)
        x = _attention(cfg, "attention")(x, x, encoder_mask, bias, deterministic=deterministic)
        x = _dropout(cfg, x, deterministic) + inputs
        x = layers.constrain(x, _RESIDUAL_AXES)

        y = _norm(cfg, "pre_mlp_layer_norm")(x)
        y = _mlp(cfg)(y, deterministic=deterministic)
        y = _dropout(cfg, y, deterministic) + x
        return layers.constrain(y, _RESIDUAL_AXES)


class DecoderLayer(nn.Module):
    """Pre-norm causal self-attention, cross-attention and gated MLP block."""

    config: T5Config
    relative_embedding: nn.Module

    @nn.compact
    def __call__(
        self,
        inputs,
        encoded,
        decoder_mask=None,
        encoder_decoder_mask=None,
        deterministic: bool = False,
        decode: bool = False,
        max_decode_length: Optional[int] = None,
    ):
        cfg = self.config
        length = max_decode_length if decode and max_decode_length else inputs.shape[-2]
        bias = self.relative_embedding(length, length, False)

        x = _norm(cfg, "pre_self_attention_layer_norm")(inputs)
        x = _attention(cfg, "self_attention")(
            x, x, decoder_mask, bias, deterministic=deterministic, decode=decode
        )
        x = _dropout(cfg, x, deterministic) + inputs
        x = layers.constrain(x, _RESIDUAL_AXES)

        y = _norm(cfg, "pre_cross_attention_layer_norm")(x)
        y = _attention(cfg, "encoder_decoder_attention")(
            y, encoded, encoder_decoder_mask, deterministic=deterministic
        )
        y = _dropout(cfg, y, deterministic) + x
        y = layers.constrain(y, _RESIDUAL_AXES)

        z = _norm(cfg, "pre_mlp_layer_norm")(y)
        z = _mlp(cfg)(z, deterministic=deterministic)
        z = _dropout(cfg, z, deterministic) + y
        return layers.constrain(z, _RESIDUAL_AXES)


class Encoder(nn.Module):
    """Embedding, a stack of encoder layers sharing one relpos bias, final norm."""

    config: T5Config
    shared_embedding: nn.Module

    @nn.compact
    def __call__(self, encoder_input_tokens, encoder_mask=None, deterministic: bool = False):
        cfg = self.config
        if encoder_input_tokens.ndim != 2:
            raise ValueError(f"encoder_input_tokens must be [batch, length], got {encoder_input_tokens.shape}")
        rel_emb = _relpos(cfg)
        x = self.shared_embedding(encoder_input_tokens.astype("int32"))
        x = _dropout(cfg, x, deterministic)
        x = x.astype(cfg.dtype)
        for i in range(cfg.num_encoder_layers):
            x = EncoderLayer(config=cfg, relative_embedding=rel_emb, name=f"layers_{i}")(
                x, encoder_mask, deterministic
            )
        x = _norm(cfg, "encoder_norm")(x)
        x = _dropout(cfg, x, deterministic, broadcast=False)
        return layers.constrain(x, _RESIDUAL_AXES)


class Decoder(nn.Module):
    """Embedding, a stack of decoder layers, final norm and output projection."""

    config: T5Config
    shared_embedding: nn.Module

    @nn.compact
    def __call__(
        self,
        encoded,
        decoder_input_tokens,
        decoder_positions=None,
        decoder_mask=None,
        encoder_decoder_mask=None,
        deterministic: bool = False,
        decode: bool = False,
        max_decode_length: Optional[int] = None,
    ):
        del decoder_positions  # relative attention uses in-sequence offsets only
        cfg = self.config
        if decoder_input_tokens.ndim != 2:
            raise ValueError(f"decoder_input_tokens must be [batch, length], got {decoder_input_tokens.shape}")
        rel_emb = _relpos(cfg)
        y = self.shared_embedding(decoder_input_tokens.astype("int32"))
        y = _dropout(cfg, y, deterministic)
        y = y.astype(cfg.dtype)
        for i in range(cfg.num_decoder_layers):
            y = DecoderLayer(config=cfg, relative_embedding=rel_emb, name=f"layers_{i}")(
                y,
                encoded,
                decoder_mask=decoder_mask,
                encoder_decoder_mask=encoder_decoder_mask,
                deterministic=deterministic,
                decode=decode,
                max_decode_length=max_decode_length,
            )
        y = _norm(cfg, "decoder_norm")(y)
        y = _dropout(cfg, y, deterministic)
        if cfg.logits_via_embedding:
            logits = self.shared_embedding.attend(y)
            logits = logits / jnp.sqrt(y.shape[-1])
        else:
            logits = layers.DenseGeneral(
                cfg.vocab_size,
                dtype=jnp.float32,  # logits in float32 for stability
                kernel_axes=("embed", "vocab"),
                name="logits_dense",
            )(y)
        return layers.constrain(logits, ("batch", "length", "vocab"))


class Transformer(nn.Module):
    """T5 1.1 encoder-decoder (T5X ``network.Transformer`` interface)."""

    config: T5Config

    def setup(self):
        cfg = self.config
        self.shared_embedding = layers.Embed(
            num_embeddings=cfg.vocab_size,
            features=cfg.emb_dim,
            dtype=cfg.dtype,
            attend_dtype=jnp.float32,
            embedding_init=layers.embedding_init,
            one_hot=cfg.one_hot_embedding,
            name="token_embedder",
        )
        self.encoder = Encoder(config=cfg, shared_embedding=self.shared_embedding)
        self.decoder = Decoder(config=cfg, shared_embedding=self.shared_embedding)

    def encode(self, encoder_input_tokens, encoder_segment_ids=None, enable_dropout: bool = True):
        """Runs the encoder; returns ``[batch, length, emb_dim]`` after ``encoder_norm``."""
        cfg = self.config
        if encoder_input_tokens.ndim != 2:
            raise ValueError(f"encoder_input_tokens must be [batch, length], got {encoder_input_tokens.shape}")
        mask = layers.make_attention_mask(encoder_input_tokens > 0, encoder_input_tokens > 0, dtype=cfg.dtype)
        if encoder_segment_ids is not None:
            mask = layers.combine_masks(
                mask,
                layers.make_attention_mask(encoder_segment_ids, encoder_segment_ids, jnp.equal, dtype=cfg.dtype),
            )
        return self.encoder(encoder_input_tokens, mask, deterministic=not enable_dropout)

    def decode(
        self,
        encoded,
        encoder_input_tokens,
        decoder_input_tokens,
        decoder_target_tokens,
        encoder_segment_ids=None,
        decoder_segment_ids=None,
        decoder_positions=None,
        enable_dropout: bool = True,
        decode: bool = False,
        max_decode_length: Optional[int] = None,
    ):
        """Runs the decoder on encoded inputs; returns float32 logits.

        ``encoder_input_tokens`` is only read for its padding mask.  With
        ``decode=True`` the decoder self-attention is driven by the ``cache``
        collection (which must be mutable) and no target padding mask is used.
        """
        cfg = self.config
        if decode:
            decoder_mask = None
            encoder_decoder_mask = layers.make_attention_mask(
                jnp.ones_like(decoder_target_tokens), encoder_input_tokens > 0, dtype=cfg.dtype
            )
        else:
            decoder_mask = layers.make_decoder_mask(
                decoder_target_tokens=decoder_target_tokens,
                dtype=cfg.dtype,
                decoder_segment_ids=decoder_segment_ids,
            )
            encoder_decoder_mask = layers.make_attention_mask(
                decoder_target_tokens > 0, encoder_input_tokens > 0, dtype=cfg.dtype
            )
        if encoder_segment_ids is not None:
            if decode:
                raise ValueError(
                    "packing is not supported while decoding, but encoder_segment_ids was passed "
                    "to Transformer.decode"
                )
            if decoder_segment_ids is None:
                raise ValueError("encoder_segment_ids was given without decoder_segment_ids")
            encoder_decoder_mask = layers.combine_masks(
                encoder_decoder_mask,
                layers.make_attention_mask(decoder_segment_ids, encoder_segment_ids, jnp.equal, dtype=cfg.dtype),
            )
        return self.decoder(
            encoded,
            decoder_input_tokens=decoder_input_tokens,
            decoder_positions=decoder_positions,
            decoder_mask=decoder_mask,
            encoder_decoder_mask=encoder_decoder_mask,
            deterministic=not enable_dropout,
            decode=decode,
            max_decode_length=max_decode_length,
        )

    def __call__(
        self,
        encoder_input_tokens,
        decoder_input_tokens,
        decoder_target_tokens,
        encoder_segment_ids=None,
        decoder_segment_ids=None,
        encoder_positions=None,
        decoder_positions=None,
        enable_dropout: bool = True,
        decode: bool = False,
        max_decode_length: Optional[int] = None,
    ):
        """Full forward pass; returns ``[batch, target_length, vocab]`` float32 logits.

        ``decoder_input_tokens`` is ``decoder_target_tokens`` shifted right (0
        first, and 0 at the start of every packed segment).  Segment ids enable
        packing; positions are accepted for interface compatibility (relative
        attention does not need them).  Dropout needs a ``'dropout'`` rng when
        ``enable_dropout`` is True and ``dropout_rate > 0``.
        """
        del encoder_positions
        encoded = self.encode(
            encoder_input_tokens, encoder_segment_ids=encoder_segment_ids, enable_dropout=enable_dropout
        )
        return self.decode(
            encoded,
            encoder_input_tokens,
            decoder_input_tokens,
            decoder_target_tokens,
            encoder_segment_ids=encoder_segment_ids,
            decoder_segment_ids=decoder_segment_ids,
            decoder_positions=decoder_positions,
            enable_dropout=enable_dropout,
            decode=decode,
            max_decode_length=max_decode_length,
        )
