"""GTR: the Generalizable T5 Retriever dual encoder, on the project's T5 encoder.

Architecture (Ni et al. 2021, "Large Dual Encoders Are Generalizable Retrievers"):

    token ids -> T5 encoder (personalize_t5x.network.t5.Encoder, final RMS norm included)
              -> mean over non-pad tokens (pad id 0)
              -> projection, no bias, [emb_dim, projection_dim]
              -> L2 normalization

Parameter tree (the top-level names are flaxformer's ``DualEncoder``, which T5X
Retrieval builds GTR from; the encoder inside uses the project's T5X names)::

    token_embedder/embedding              [vocab, embed]
    encoder/...                           as personalize_t5x.network.t5's encoder
    projection_layer/kernel               [embed, affinity]

``GTREncoder`` has the ``encode(texts, *, batch_size, progress) -> np.ndarray`` interface of
``personalize_t5x.pipeline.retrieval.encoders.SentenceEncoder`` (float32, unit rows, input order),
so rankers and ``EmbeddingCache`` take either. It tokenizes with a SentencePiece model
(a ``.model`` path, a ``sentencepiece.SentencePieceProcessor`` or a
``seqio.SentencePieceVocabulary``: anything whose ``encode(text)`` returns ids) and
appends EOS (id 1) as T5's tokenizer does, truncating to ``max_length`` with EOS kept.

Weights:

- ``GTREncoder.from_sentence_transformers(path)`` reads the sentence-transformers layout
  the public GTR checkpoints use: ``modules.json`` (Transformer, Pooling, Dense,
  Normalize), the T5 encoder as a Hugging Face ``T5EncoderModel`` safetensors directory
  (imported with ``personalize_t5x.network.hf_checkpoints``), ``1_Pooling/config.json`` (mean),
  ``2_Dense/config.json`` + ``2_Dense/model.safetensors`` (``linear.weight`` [out, in],
  no bias, identity activation), ``spiece.model`` (or ``tokenizer.json``) and the
  maximum length (``sentence_bert_config.json``'s ``max_seq_length``, or
  ``tokenizer_config.json``'s ``model_max_length`` as sentence-transformers 6 writes it).
  Both the boolean (``pooling_mode_mean_tokens``) and the named (``"pooling_mode": "mean"``)
  pooling configs are read. Weights stored as zip-format ``pytorch_model.bin`` (as in
  most public GTR folders) are read without PyTorch
  (``personalize_t5x.network.hf_checkpoints.read_torch_state_dict``).
- ``GTREncoder.from_t5x_checkpoint(path, config=..., tokenizer=...)`` reads a checkpoint
  in T5X's layout (legacy or orbax) whose params are the tree above.
- ``GTREncoder(config=..., params=..., tokenizer=...)`` takes a parameter tree directly
  (``init_gtr_params`` makes a random one).

Mean pooling and normalization follow sentence-transformers (count clamped at 1e-9,
norm clamped at 1e-12), which is how the public GTR weights are used.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
from typing import Any, Callable, Sequence

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError

from personalize_t5x.errors import PersonalizeError

from personalize_t5x.network.hf_checkpoints import HFCheckpointError, import_hf_t5, read_torch_state_dict
from personalize_t5x.network import layers
from personalize_t5x.network import t5 as t5_lib

PAD_ID = 0
EOS_ID = 1
DEFAULT_BATCH_SIZE = 64
DEFAULT_MAX_LENGTH = 512
# Padded sequence lengths, so XLA compiles a handful of shapes; longer inputs round up to 128s.
LENGTH_BUCKETS = (16, 32, 64, 128, 256, 512)


class GTRError(PersonalizeError):
    """A GTR model or checkpoint that cannot be built or loaded, and why."""


@dataclasses.dataclass(frozen=True)
class GTRConfig:
    """A GTR dual encoder: the T5 encoder's config plus the projection and input length.

    Attributes:
      t5: the T5 network config; only its encoder fields are used (decoder depth is
        ignored) and ``dropout_rate`` is irrelevant (encoding is deterministic).
      projection_dim: output size of the bias-free projection (768 for GTR-Base..XXL).
      max_length: tokens per text including EOS; longer texts are truncated.
    """

    t5: t5_lib.T5Config
    projection_dim: int = 768
    max_length: int = DEFAULT_MAX_LENGTH

    def __post_init__(self):
        if not isinstance(self.t5, t5_lib.T5Config):
            raise GTRError(f"GTRConfig.t5 must be a T5Config, got {type(self.t5).__name__}")
        for name in ("projection_dim", "max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise GTRError(f"GTRConfig.{name} must be a positive integer, got {value!r}")
        if self.max_length < 2:
            raise GTRError("GTRConfig.max_length must leave room for one token and EOS (>= 2)")
        if self.t5.num_encoder_layers < 1:
            raise GTRError("GTRConfig.t5 must have at least one encoder layer")


class GTRNetwork(nn.Module):
    """Flax module: token ids [batch, length] -> unit-norm embeddings [batch, projection_dim]."""

    config: GTRConfig

    def setup(self):
        t5 = self.config.t5
        # A gather, not T5's one-hot contraction: encoding is never vocabulary-sharded here.
        self.token_embedder = layers.Embed(
            num_embeddings=t5.vocab_size,
            features=t5.emb_dim,
            dtype=t5.dtype,
            embedding_init=layers.embedding_init,
            one_hot=False,
        )
        self.encoder = t5_lib.Encoder(config=t5, shared_embedding=self.token_embedder)
        self.projection_layer = layers.DenseGeneral(
            features=self.config.projection_dim,
            dtype=jnp.float32,
            kernel_axes=("embed", "affinity"),
        )

    def __call__(self, token_ids):
        real = token_ids != PAD_ID
        mask = layers.make_attention_mask(real, real, dtype=self.config.t5.dtype)
        encoded = self.encoder(token_ids, mask, deterministic=True).astype(jnp.float32)
        weights = real.astype(jnp.float32)[:, :, None]
        pooled = jnp.sum(encoded * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1e-9)
        projected = self.projection_layer(pooled)
        norm = jnp.sqrt(jnp.sum(projected * projected, axis=-1, keepdims=True))
        return projected / jnp.maximum(norm, 1e-12)


@functools.lru_cache(maxsize=8)
def _compiled_apply(config: GTRConfig):
    """One jitted forward per architecture, shared by every encoder built with it."""
    return jax.jit(GTRNetwork(config).apply)


@functools.lru_cache(maxsize=8)
def _compiled_init(config: GTRConfig):
    """Jitted init: one compile per architecture instead of op-by-op initializers."""
    return jax.jit(GTRNetwork(config).init)


def init_gtr_params(config: GTRConfig, *, seed: int = 0) -> dict[str, Any]:
    """Random GTR parameters (T5X initializers) as a nested dict of numpy arrays."""
    variables = _compiled_init(config)(jax.random.PRNGKey(seed), jnp.ones((1, 2), jnp.int32))
    return jax.tree_util.tree_map(np.asarray, jax.device_get(nn.unbox(variables["params"])))


def _shapes_by_path(tree: Any) -> dict[str, tuple[int, ...]]:
    """'encoder/layers_0/.../kernel' -> shape, for comparing parameter trees."""
    return {path: tuple(np.shape(leaf)) for path, leaf in traverse_util.flatten_dict(tree, sep="/").items()}


def _expected_shapes(config: GTRConfig) -> dict[str, tuple[int, ...]]:
    abstract = jax.eval_shape(lambda: GTRNetwork(config).init(jax.random.PRNGKey(0), jnp.ones((1, 2), jnp.int32)))
    return _shapes_by_path(nn.unbox(abstract["params"]))


def _sentencepiece_encode(tokenizer: Any) -> Callable[[str], list[int]]:
    """A text -> ids function from a .model path or any object with encode(text) -> ids."""
    if isinstance(tokenizer, (str, os.PathLike)):
        path = pathlib.Path(tokenizer)
        if not path.is_file():
            raise GTRError(f"{path}: SentencePiece model file not found")
        import sentencepiece as spm

        try:
            processor = spm.SentencePieceProcessor(model_file=str(path))
        except (OSError, RuntimeError) as exc:
            raise GTRError(f"{path}: not a SentencePiece model ({exc})") from None
        return lambda text: list(processor.encode(text))
    encode = getattr(tokenizer, "encode", None)
    if not callable(encode):
        raise GTRError(
            f"tokenizer must be a SentencePiece .model path or have encode(text) -> ids, got {type(tokenizer).__name__}"
        )
    return lambda text: [int(i) for i in encode(text)]


class _TokenizerJson:
    """A Hugging Face tokenizer.json as text -> ids, without its own special tokens."""

    def __init__(self, path: pathlib.Path):
        import tokenizers

        try:
            self._tokenizer = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:  # the library raises its own exception type
            raise GTRError(f"{path}: cannot load tokenizer ({exc})") from None
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()

    def encode(self, text: str) -> list[int]:
        # EOS is appended by GTREncoder.tokenize, after truncation, as T5's tokenizer does.
        return self._tokenizer.encode(text, add_special_tokens=False).ids


def _max_seq_length(transformer_dir: pathlib.Path) -> int:
    """max_seq_length from sentence_bert_config.json (<= v5) or tokenizer_config.json (v6)."""
    st_config = transformer_dir / "sentence_bert_config.json"
    if st_config.is_file():
        value = _read_json(st_config).get("max_seq_length")
        if value:
            return int(value)
    tokenizer_config = transformer_dir / "tokenizer_config.json"
    if tokenizer_config.is_file():
        value = _read_json(tokenizer_config).get("model_max_length")
        # transformers writes a huge sentinel when no limit was set.
        if isinstance(value, int) and 1 < value < 1_000_000:
            return value
    return DEFAULT_MAX_LENGTH


def _bucket_length(length: int, max_length: int) -> int:
    for bucket in LENGTH_BUCKETS:
        if length <= bucket:
            return min(bucket, max_length)
    return min(-(-length // 128) * 128, max_length)


class GTREncoder:
    """Encodes texts to unit-norm GTR embeddings with JAX (see the module doc).

    Attributes:
      config: the GTRConfig.
      dim: embedding size (``config.projection_dim``).
      compiled_shapes: the (batch, length) shapes run so far (each compiles once).
    """

    def __init__(self, *, config: GTRConfig, params: dict[str, Any], tokenizer: Any = None, name: str = ""):
        if not isinstance(config, GTRConfig):
            raise GTRError(f"config must be a GTRConfig, got {type(config).__name__}")
        if "params" in params and isinstance(params["params"], dict):
            params = params["params"]
        expected, got = _expected_shapes(config), _shapes_by_path(params)
        for path in sorted(set(expected) | set(got)):
            if path not in got:
                raise GTRError(f"GTR params are missing {path} (shape {expected[path]})")
            if path not in expected:
                raise GTRError(f"GTR params have unknown key {path}")
            if got[path] != expected[path]:
                raise GTRError(f"GTR params {path} has shape {got[path]}, expected {expected[path]} from the config")
        self.config = config
        self.dim = config.projection_dim
        self.name = name
        self._tokenize_one = _sentencepiece_encode(tokenizer) if tokenizer is not None else None
        self._params = jax.device_put(jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params))
        self._apply = _compiled_apply(config)
        self.compiled_shapes: set[tuple[int, int]] = set()

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_sentence_transformers(cls, path: str | os.PathLike, *, dtype: Any = "float32") -> "GTREncoder":
        """Loads a sentence-transformers GTR directory (safetensors); see the module doc."""
        model_dir = pathlib.Path(path)
        if not model_dir.is_dir():
            raise GTRError(f"{model_dir}: directory not found (expected a sentence-transformers GTR folder)")
        modules = _read_json(model_dir / "modules.json")
        kinds = {}
        for module in modules if isinstance(modules, list) else []:
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            if kind not in ("Transformer", "Pooling", "Dense", "Normalize"):
                raise GTRError(f"{model_dir}/modules.json: module {module.get('type')!r} is not part of GTR")
            kinds[kind] = model_dir / module.get("path", "")
        missing = [k for k in ("Transformer", "Pooling", "Dense", "Normalize") if k not in kinds]
        if missing:
            raise GTRError(f"{model_dir}/modules.json: GTR needs Transformer, Pooling, Dense and Normalize; missing {missing}")

        pooling = _read_json(kinds["Pooling"] / "config.json")
        if "pooling_mode" in pooling:  # sentence-transformers >= 6 names the mode
            on = [str(pooling["pooling_mode"])]
            mean = on == ["mean"]
        else:  # earlier versions set one boolean per mode
            on = [k for k, v in pooling.items() if k.startswith("pooling_mode") and v]
            mean = on == ["pooling_mode_mean_tokens"]
        if not mean:
            raise GTRError(f"{kinds['Pooling']}/config.json: GTR pools by mean only, got {on or 'no mode'}")

        dense_dir = kinds["Dense"]
        dense = _read_json(dense_dir / "config.json")
        if dense.get("bias", True):
            raise GTRError(f"{dense_dir}/config.json: GTR's projection has no bias, but bias is true")
        activation = str(dense.get("activation_function", "torch.nn.modules.linear.Identity"))
        if not activation.endswith("Identity"):
            raise GTRError(f"{dense_dir}/config.json: GTR's projection is linear, got activation {activation!r}")
        weights = dense_dir / "model.safetensors"
        try:
            if weights.is_file():
                from safetensors.numpy import load_file

                dense_tensors = load_file(str(weights))
            elif (dense_dir / "pytorch_model.bin").is_file():  # what most public GTR folders hold
                weights = dense_dir / "pytorch_model.bin"
                dense_tensors = read_torch_state_dict(weights)
            else:
                raise GTRError(f"{dense_dir}: file not found: model.safetensors or pytorch_model.bin")
        except (HFCheckpointError, SafetensorError, OSError) as exc:
            raise GTRError(f"{weights}: {exc}" if isinstance(exc, SafetensorError) else str(exc)) from None
        if set(dense_tensors) != {"linear.weight"}:
            raise GTRError(f"{weights}: expected exactly linear.weight, found {sorted(dense_tensors)}")
        projection = dense_tensors["linear.weight"].astype(np.float32)  # [out, in]

        try:
            t5_kwargs, t5_params = import_hf_t5(kinds["Transformer"])
        except HFCheckpointError as exc:
            raise GTRError(f"GTR encoder: {exc}") from None
        if projection.shape[1] != t5_kwargs["emb_dim"]:
            raise GTRError(
                f"{weights}: linear.weight has shape {projection.shape}, expected (out, {t5_kwargs['emb_dim']}) "
                "to follow the T5 encoder"
            )
        max_length = _max_seq_length(kinds["Transformer"])
        t5_kwargs = {**t5_kwargs, "num_decoder_layers": 0, "logits_via_embedding": False, "dtype": dtype}
        config = GTRConfig(
            t5=t5_lib.T5Config(**t5_kwargs), projection_dim=int(projection.shape[0]), max_length=max_length
        )
        params = {
            "token_embedder": t5_params["token_embedder"],
            "encoder": t5_params["encoder"],
            "projection_layer": {"kernel": np.ascontiguousarray(projection.T)},
        }
        tokenizer: Any = None
        for folder in (kinds["Transformer"], model_dir):
            if (folder / "spiece.model").is_file():
                tokenizer = folder / "spiece.model"
                break
            if (folder / "tokenizer.json").is_file():
                tokenizer = _TokenizerJson(folder / "tokenizer.json")
                break
        return cls(config=config, params=params, tokenizer=tokenizer, name=str(model_dir))

    @classmethod
    def from_t5x_checkpoint(
        cls, path: str | os.PathLike, *, config: GTRConfig, tokenizer: Any = None
    ) -> "GTREncoder":
        """Loads the params of a T5X-layout checkpoint (legacy or orbax) holding a GTR tree.

        T5X Retrieval's flaxformer ``DualEncoder`` names its parts ``token_embedder``,
        ``encoder`` and ``projection_layer`` as this module does; this reader has been
        tested on checkpoints in T5X's layout, not on a released T5X Retrieval checkpoint.
        """
        from personalize_t5x.network import checkpoint_importer as checkpoint_import

        try:
            params = checkpoint_import.load_t5x_params(os.fspath(path), expected_shapes=_expected_shapes(config))
        except checkpoint_import.CheckpointImportError as exc:
            raise GTRError(str(exc)) from None
        return cls(config=config, params=params, tokenizer=tokenizer, name=str(path))

    # ------------------------------------------------------------------ encoding

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, ending in EOS, at most ``max_length`` long."""
        if self._tokenize_one is None:
            raise GTRError("this GTREncoder has no tokenizer; pass tokenizer= (a SentencePiece model) or use encode_ids")
        limit = self.config.max_length - 1
        return [self._tokenize_one(text)[:limit] + [EOS_ID] for text in texts]

    def encode(self, texts: Sequence[str], *, batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False) -> np.ndarray:
        """L2-normalized embeddings, float32 [len(texts), dim], in the order of ``texts``."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of strings, not a single string")
        return self.encode_ids(self.tokenize(texts), batch_size=batch_size, progress=progress)

    def encode_ids(
        self, token_ids: Sequence[Sequence[int]], *, batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False
    ) -> np.ndarray:
        """Embeddings of already-tokenized rows (pad ids 0 are ignored; a row without any
        other token gives a zero vector, the only output that is not unit-norm)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        rows = [np.asarray(ids, np.int64).reshape(-1) for ids in token_ids]
        vocab = self.config.t5.vocab_size
        for i, ids in enumerate(rows):
            if ids.size and (ids.min() < 0 or ids.max() >= vocab):
                raise GTRError(f"row {i}: token ids must be in [0, {vocab}), got {int(ids.min())}..{int(ids.max())}")
            if ids.size > self.config.max_length:
                raise GTRError(f"row {i}: {ids.size} tokens exceed max_length {self.config.max_length}")
        n = len(rows)
        out = np.zeros((n, self.dim), np.float32)
        lengths = np.fromiter((r.size for r in rows), np.int64, count=n)
        order = np.argsort(-lengths, kind="stable")  # longest first: little padding per batch
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=n, unit="text", desc="gtr encode")
        for begin in range(0, n, batch_size):
            chunk = order[begin : begin + batch_size]
            length = _bucket_length(max(int(lengths[chunk[0]]), 1), self.config.max_length)
            # Round the batch up to a power of two (at most batch_size): few shapes, little waste.
            padded_rows = min(batch_size, 1 << (len(chunk) - 1).bit_length())
            batch = np.zeros((padded_rows, length), np.int32)
            for r, i in enumerate(chunk):
                batch[r, : rows[i].size] = rows[i]
            self.compiled_shapes.add(batch.shape)
            out[chunk] = np.asarray(self._apply({"params": self._params}, batch))[: len(chunk)]
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        return out


def _read_json(path: pathlib.Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise GTRError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise GTRError(f"{path}: not valid JSON ({exc})") from None
