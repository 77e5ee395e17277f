"""Hugging Face T5 safetensors checkpoints <-> the project's T5X parameter tree.

``import_hf_t5(path)`` reads a Hugging Face T5 model directory::

    config.json                                  T5Config (model_type "t5" or "mt5")
    model.safetensors                            or sharded: model.safetensors.index.json + shards,
                                                 or (older uploads) a zip-format pytorch_model.bin,
                                                 read without PyTorch by a restricted unpickler

and returns ``(config, params)``: ``config`` is a dict of ``personalize_t5x.network.t5.T5Config``
keyword arguments (sizes, activations, logits mode; the activation dtype is left to the
caller) and ``params`` a nested dict of float32 numpy arrays with T5X's names, ready for
``Transformer(T5Config(**config)).apply({"params": params}, ...)``.

``export_hf_t5(params=..., config=..., out_dir=...)`` writes the reverse: a directory that
``transformers.T5ForConditionalGeneration.from_pretrained`` loads.

Name mapping (HF stores torch ``Linear`` weights as [out, in]; T5X kernels are [in, out]):

    shared.weight [vocab, d_model]                      token_embedder/embedding (as is)
    {enc}.block.N.layer.0.SelfAttention.{q,k,v,o}       encoder/layers_N/attention/{query,key,value,out}/kernel (.T)
    {enc}.block.0.layer.0.SelfAttention.relative_attention_bias.weight [buckets, heads]
                                                        encoder/relpos_bias/rel_embedding [heads, buckets] (.T)
    {enc}.block.N.layer.0.layer_norm                    encoder/layers_N/pre_attention_layer_norm/scale
    {enc}.block.N.layer.1.DenseReluDense.{wi_0,wi_1,wo} encoder/layers_N/mlp/{wi_0,wi_1,wo}/kernel (.T)
                                                        (a single "wi" for non-gated MLPs)
    {enc}.block.N.layer.1.layer_norm                    encoder/layers_N/pre_mlp_layer_norm/scale
    {enc}.final_layer_norm                              encoder/encoder_norm/scale
    decoder.block.N.layer.0 SelfAttention / layer_norm  decoder/layers_N/self_attention, pre_self_attention_layer_norm
    decoder.block.N.layer.1 EncDecAttention / layer_norm decoder/layers_N/encoder_decoder_attention, pre_cross_attention_layer_norm
    decoder.block.N.layer.2 DenseReluDense / layer_norm decoder/layers_N/mlp, pre_mlp_layer_norm
    decoder.final_layer_norm                            decoder/decoder_norm/scale
    lm_head.weight [vocab, d_model]                     decoder/logits_dense/kernel [d_model, vocab] (.T)

Both store attention without 1/sqrt(head_dim) logit scaling (T5 folds it into the query
initialisation), so attention kernels map unchanged.

Output projection.  Hugging Face has two independent switches: whether ``lm_head`` is its
own matrix, and whether the decoder output is multiplied by d_model**-0.5 before it
(``tie_word_embeddings`` in transformers 4 configs; ``scale_decoder_outputs`` in
transformers 5, which always writes ``tie_word_embeddings: true``).  T5X's
``logits_via_embedding=True`` is exactly "shared embedding, scaled"; every other
combination is expressed with a separate ``logits_dense`` kernel (a copy of the shared
embedding when HF ties without scaling, the head times d_model**-0.5 when HF scales a
separate head), so every HF T5 imports with identical logits.

Activations.  HF ``gated-gelu`` is ``gelu_new``, the tanh approximation of GELU, which is
what flax's ``gelu`` (T5X's ``'gelu'``) computes by default; the two agree to float32
rounding (tested against values transformers computed).  HF's non-gated ``gelu`` is the
exact erf GELU, which T5X cannot express, so it is refused.

Checked against the references: the imported tiny HF models reproduce transformers'
logits (tests/fixtures/hf_t5_tiny); a checkpoint trained by upstream T5X, exported with
``export_hf_t5`` and run by transformers 5.24, gives T5X's own logits to 8e-6.

Encoder-only checkpoints (``T5EncoderModel``, e.g. the T5 tower of GTR) import too: the
returned params then have no ``decoder`` and ``num_decoder_layers`` is 0.
"""
from __future__ import annotations

import io
import json
import os
import pathlib
from typing import Any, Mapping

import ml_dtypes  # importing it also registers bfloat16 with numpy, so bf16 safetensors load
import numpy as np
from flax import traverse_util
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from personalize_t5x.errors import PersonalizeError
from personalize_t5x.io import files as io_files

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
TORCH_WEIGHTS_FILE = "pytorch_model.bin"  # read without PyTorch when no safetensors exist
SUPPORTED_MODEL_TYPES = ("t5", "mt5")
# T5X's network.py hard-codes these; the project's T5Config exposes them as fields.
T5X_LAYER_NORM_EPSILON = 1e-6

# HF activation (as T5Config.dense_act_fn names it) -> flax.linen function name.
_HF_TO_FLAX_ACTIVATION = {
    "relu": "relu",
    "gelu_new": "gelu",  # tanh approximation in both
    "gelu_pytorch_tanh": "gelu",
    "silu": "silu",
    "swish": "silu",
}
# HF tensors that carry no information of their own.
_IGNORED_HF_KEYS = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)
_TIED_EMBED_KEYS = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


class HFCheckpointError(PersonalizeError):
    """A Hugging Face checkpoint that cannot be imported or exported, and why."""


# --------------------------------------------------------------------------- config


def _hf_activations(feed_forward_proj: str, *, where: str) -> tuple[str, ...]:
    """HF ``feed_forward_proj`` ('gated-gelu', 'relu', ...) -> T5X ``mlp_activations``."""
    parts = feed_forward_proj.split("-")
    gated = len(parts) == 2 and parts[0] == "gated"
    if len(parts) > 2 or (len(parts) == 2 and not gated):
        raise HFCheckpointError(f"{where}: feed_forward_proj {feed_forward_proj!r} is not 'ACT' or 'gated-ACT'")
    act = parts[-1]
    if feed_forward_proj == "gated-gelu":
        act = "gelu_new"  # transformers' own special case
    if act not in _HF_TO_FLAX_ACTIVATION:
        hint = " (HF's 'gelu' is the exact erf GELU, which T5X's MLP cannot express)" if act == "gelu" else ""
        raise HFCheckpointError(
            f"{where}: unsupported feed_forward_proj {feed_forward_proj!r}{hint}; supported: "
            "relu, gelu_new, silu, gated-gelu, gated-relu, gated-silu"
        )
    flax_act = _HF_TO_FLAX_ACTIVATION[act]
    return (flax_act, "linear") if gated else (flax_act,)


def _hf_feed_forward_proj(activations: tuple[str, ...]) -> str:
    """T5X ``mlp_activations`` -> HF ``feed_forward_proj``."""
    flax_to_hf = {"relu": "relu", "gelu": "gelu_new", "silu": "silu"}
    if len(activations) == 2 and activations[1] == "linear" and activations[0] in flax_to_hf:
        return "gated-gelu" if activations[0] == "gelu" else f"gated-{activations[0]}"
    if len(activations) == 1 and activations[0] in flax_to_hf:
        return flax_to_hf[activations[0]]
    raise HFCheckpointError(
        f"mlp_activations {activations!r} has no Hugging Face T5 equivalent; supported: "
        "('relu',), ('gelu',), ('silu',), and (ACT, 'linear') for ACT in relu, gelu, silu"
    )


def _read_json(path: pathlib.Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise HFCheckpointError(f"{path}: file not found (a Hugging Face T5 directory needs {CONFIG_FILE})") from None
    except json.JSONDecodeError as exc:
        raise HFCheckpointError(f"{path}: not valid JSON ({exc})") from None


def _require_int(hf: Mapping[str, Any], key: str, *, where: str) -> int:
    value = hf.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise HFCheckpointError(f"{where}: {key} must be a non-negative integer, got {value!r}")
    return value


def config_from_hf(hf: Mapping[str, Any], *, where: str = CONFIG_FILE) -> dict[str, Any]:
    """Maps a HF T5 ``config.json`` dict to ``T5Config`` keyword arguments (no dtype)."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise HFCheckpointError(
            f"{where}: model_type {model_type!r} is not supported; only {SUPPORTED_MODEL_TYPES} "
            "(UMT5, LongT5 and others have different layers)"
        )
    num_layers = _require_int(hf, "num_layers", where=where)
    num_decoder_layers = hf.get("num_decoder_layers")
    if num_decoder_layers is None:
        num_decoder_layers = num_layers
    return {
        "vocab_size": _require_int(hf, "vocab_size", where=where),
        "emb_dim": _require_int(hf, "d_model", where=where),
        "num_heads": _require_int(hf, "num_heads", where=where),
        "head_dim": _require_int(hf, "d_kv", where=where),
        "mlp_dim": _require_int(hf, "d_ff", where=where),
        "num_encoder_layers": num_layers,
        "num_decoder_layers": int(num_decoder_layers),
        "mlp_activations": _hf_activations(str(hf.get("feed_forward_proj", "relu")), where=where),
        "dropout_rate": float(hf.get("dropout_rate", 0.1)),
        "relative_attention_num_buckets": int(hf.get("relative_attention_num_buckets", 32)),
        "relative_attention_max_distance": int(hf.get("relative_attention_max_distance", 128)),
        "layer_norm_epsilon": float(hf.get("layer_norm_epsilon", T5X_LAYER_NORM_EPSILON)),
        # Set from the tensors once it is known whether lm_head is its own matrix.
        "logits_via_embedding": False,
    }


def _scales_decoder_output(hf: Mapping[str, Any]) -> bool:
    """Whether HF multiplies the decoder output by d_model**-0.5 before the LM head."""
    if "scale_decoder_outputs" in hf:  # transformers >= 5 writes this explicitly
        return bool(hf["scale_decoder_outputs"])
    return bool(hf.get("tie_word_embeddings", True))  # transformers 4's meaning


def _config_get(config: Any, name: str) -> Any:
    if isinstance(config, Mapping):
        if name not in config:
            raise HFCheckpointError(f"config has no {name!r}")
        return config[name]
    if not hasattr(config, name):
        raise HFCheckpointError(f"config has no {name!r}")
    return getattr(config, name)


_SIZE_FIELDS = (
    "vocab_size",
    "emb_dim",
    "num_heads",
    "head_dim",
    "mlp_dim",
    "num_encoder_layers",
    "num_decoder_layers",
    "mlp_activations",
    "logits_via_embedding",
    "relative_attention_num_buckets",
    "relative_attention_max_distance",
)


def _check_expected(config: Mapping[str, Any], expected: Any, *, where: str) -> None:
    """Refuses a checkpoint whose architecture differs from the one the caller will build."""
    for name in _SIZE_FIELDS:
        try:
            want = _config_get(expected, name)
        except HFCheckpointError:
            continue  # the caller's config does not say; nothing to compare
        got = config[name]
        if name == "mlp_activations":
            want = (want,) if isinstance(want, str) else tuple(want)
        if name == "num_decoder_layers" and got == 0:
            continue  # an encoder-only checkpoint fits any decoder depth
        if got != want:
            raise HFCheckpointError(f"{where}: checkpoint has {name}={got!r} but the expected config has {name}={want!r}")


# --------------------------------------------------------------------------- tensors


def _inside(model_dir: pathlib.Path, name: str, *, what: str) -> pathlib.Path:
    """`model_dir/name`, confined to the model folder.

    A Hugging Face hub cache snapshot (``.../snapshots/<revision>/``) holds symlinks into
    the repository's ``blobs/`` folder; those are followed, nothing else outside is.
    """
    cache_blobs = [model_dir.parent.parent / "blobs"] if model_dir.parent.name == "snapshots" else []
    return pathlib.Path(io_files.resolve_inside(model_dir, name, what=what, also_inside=cache_blobs,
                                                error=HFCheckpointError))


def _weight_files(model_dir: pathlib.Path) -> list[pathlib.Path]:
    single = model_dir / WEIGHTS_FILE
    index = model_dir / WEIGHTS_INDEX_FILE
    if single.is_file():
        return [_inside(model_dir, WEIGHTS_FILE, what=WEIGHTS_FILE)]
    if index.is_file():
        index_json = _read_json(_inside(model_dir, WEIGHTS_INDEX_FILE, what=WEIGHTS_INDEX_FILE))
        weight_map = index_json.get("weight_map") if isinstance(index_json, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise HFCheckpointError(f"{index}: has no weight_map")
        names = set()
        for tensor, name in weight_map.items():
            if not isinstance(name, str) or not name.endswith(".safetensors"):
                raise HFCheckpointError(
                    f"{index}: weight_map[{tensor!r}] = {name!r} is not a .safetensors file name in the model folder")
            names.add(name)
        files = [_inside(model_dir, name, what=f"{index.name} weight_map") for name in sorted(names)]
        for f in files:
            if not f.is_file():
                raise HFCheckpointError(f"{f}: file not found (listed in {index.name})")
        return files
    if (model_dir / TORCH_WEIGHTS_FILE).is_file():
        return [_inside(model_dir, TORCH_WEIGHTS_FILE, what=TORCH_WEIGHTS_FILE)]
    others = sorted(p.name for p in model_dir.glob("*.bin")) + sorted(p.name for p in model_dir.glob("*.h5"))
    hint = (
        f"; found {', '.join(others)}: convert it to safetensors with transformers "
        "(`model.save_pretrained(dir, safe_serialization=True)`)"
        if others
        else ""
    )
    raise HFCheckpointError(
        f"{model_dir}: file not found: {WEIGHTS_FILE}, {WEIGHTS_INDEX_FILE} or {TORCH_WEIGHTS_FILE}{hint}"
    )


def _read_tensors(files: list[pathlib.Path]) -> dict[str, np.ndarray]:
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        if f.suffix == ".bin":
            tensors.update(read_torch_state_dict(f))
            continue
        try:
            with safe_open(str(f), framework="np") as handle:
                for key in handle.keys():
                    tensors[key] = np.asarray(handle.get_tensor(key))
        except (OSError, ValueError, TypeError, SafetensorError) as exc:
            raise HFCheckpointError(f"{f}: cannot read as safetensors ({exc})") from None
    return tensors


_TORCH_STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "DoubleStorage": np.dtype(np.float64),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}


class _TorchStorage:
    """The dtype a pickled ``torch.<Type>Storage`` class name stands for."""

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype


def _as_index(value: Any, what: str) -> int:
    """A non-negative Python int from a pickled size, stride or offset, or a refusal."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise HFCheckpointError(f"tensor {what} must be a non-negative integer, got {value!r}")
    return value


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    """A tensor as torch's ``_rebuild_tensor_v2`` would build it, checked against its storage.

    Every element the view would touch must lie inside the storage: the highest index is
    ``offset + sum((size_i - 1) * stride_i)``. Without this check a crafted shape or stride
    reads past the archive buffer (heap bytes, or a segfault for a large overrun). A tensor
    with more elements than its storage (only possible through zero or overlapping strides)
    is refused too: a state dict never holds one, and its copy could need unbounded memory.
    """
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise HFCheckpointError(f"tensor storage is {type(storage).__name__}, not a torch storage")
    if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)):
        raise HFCheckpointError(f"tensor size and stride must be tuples, got {size!r} and {stride!r}")
    if len(size) != len(stride):
        raise HFCheckpointError(f"tensor size {tuple(size)!r} and stride {tuple(stride)!r} differ in length")
    if len(size) > 64:
        raise HFCheckpointError(f"tensor has {len(size)} dimensions (at most 64)")
    offset = _as_index(storage_offset, "storage offset")
    shape = tuple(_as_index(n, "size") for n in size)
    strides = tuple(_as_index(n, "stride") for n in stride)
    available = storage.shape[0]
    numel = 1
    for n in shape:
        numel *= n
    if numel == 0:
        return np.zeros(shape, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(shape, strides))
    if last >= available:
        raise HFCheckpointError(
            f"tensor of shape {shape} with stride {strides} at offset {offset} needs storage element "
            f"{last}, but its storage holds {available} ({storage.dtype})")
    if numel > available:
        raise HFCheckpointError(
            f"tensor of shape {shape} has {numel} elements, more than its storage's {available}")
    if not shape:
        return np.array(storage[offset])  # a 0-d array, not a numpy scalar
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=shape, strides=tuple(s * itemsize for s in strides), writeable=False)
    return np.array(view)  # a contiguous copy, detached from the archive buffer


def _rebuild_parameter(data, *_ignored):
    return data


_MEMO_OPCODES = {"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"}


def _check_pickle_program(program: bytes, path: pathlib.Path) -> None:
    """Refuses a pickle whose opcodes would make the C unpickler allocate without bound
    before any object is built: a memo index of 3e9 resizes the memo table to 26 GB. A
    real pickle's memo indices and frame sizes are smaller than the program itself."""
    import pickletools

    limit = len(program) + 16
    try:
        for opcode, argument, position in pickletools.genops(io.BytesIO(program)):
            if opcode.name in _MEMO_OPCODES and isinstance(argument, int) and argument > limit:
                raise HFCheckpointError(f"{path}: pickle memo index {argument} at byte {position} (the pickle has {len(program)} bytes)")
            if opcode.name == "FRAME" and argument > len(program):
                raise HFCheckpointError(f"{path}: pickle frame of {argument} bytes at byte {position} (the pickle has {len(program)})")
    except HFCheckpointError:
        raise
    except (ValueError, TypeError, IndexError, KeyError, EOFError) as exc:  # pickletools' own complaints
        raise HFCheckpointError(f"{path}: not a readable pickle ({exc!s:.200})") from None


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Tensors of a ``torch.save``'d state dict (zip format, torch >= 1.6), without PyTorch.

    Only what a state dict needs is unpickled (tensors, their storages, ordered dicts);
    any other object in the file is refused, so a crafted pickle cannot run code.
    """
    import collections
    import pickle
    import zipfile
    import zlib

    path = pathlib.Path(path)
    if not path.is_file():
        raise HFCheckpointError(f"{path}: file not found")
    if not zipfile.is_zipfile(path):
        raise HFCheckpointError(
            f"{path}: not a zip-format torch checkpoint (files saved by torch < 1.6 need PyTorch to convert)"
        )
    allowed = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pickles) != 1:
                raise HFCheckpointError(f"{path}: expected one data.pkl in the torch archive, found {len(pickles)}")
            prefix = pickles[0][: -len("data.pkl")]
            byteorder = archive.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in archive.namelist() else "little"
            if byteorder != "little":
                raise HFCheckpointError(f"{path}: big-endian torch archives are not supported")
            storages: dict[str, np.ndarray] = {}
            names = set(archive.namelist())

            class Unpickler(pickle.Unpickler):
                def find_class(self, module: str, name: str) -> Any:
                    if module == "torch" and name in _TORCH_STORAGE_DTYPES:
                        return _TorchStorage(_TORCH_STORAGE_DTYPES[name])
                    if (module, name) in allowed:
                        return allowed[(module, name)]
                    raise HFCheckpointError(f"{path}: refusing to unpickle {module}.{name} (not part of a state dict)")

                def persistent_load(self, saved_id: Any) -> np.ndarray:
                    if not isinstance(saved_id, tuple) or len(saved_id) != 5:
                        raise HFCheckpointError(f"{path}: unsupported storage record {saved_id!r:.200}")
                    kind, storage_type, key, _location, numel = saved_id
                    if kind != "storage" or not isinstance(storage_type, _TorchStorage) or not isinstance(key, str):
                        raise HFCheckpointError(f"{path}: unsupported storage record {saved_id!r:.200}")
                    if key not in storages:
                        name = f"{prefix}data/{key}"
                        if name not in names:
                            raise HFCheckpointError(f"{path}: storage {key!r} is not in the archive")
                        raw = archive.read(name)
                        itemsize = storage_type.dtype.itemsize
                        if len(raw) % itemsize:
                            raise HFCheckpointError(
                                f"{path}: storage {key!r} holds {len(raw)} bytes, not a whole number of "
                                f"{storage_type.dtype} elements")
                        if isinstance(numel, int) and not isinstance(numel, bool) and numel * itemsize > len(raw):
                            raise HFCheckpointError(
                                f"{path}: storage {key!r} declares {numel} elements but holds {len(raw) // itemsize}")
                        storages[key] = np.frombuffer(raw, dtype=storage_type.dtype)
                        if storage_type.dtype == np.bool_ and storages[key].view(np.uint8).max(initial=0) > 1:
                            raise HFCheckpointError(f"{path}: bool storage {key!r} holds bytes other than 0 and 1")
                    return storages[key]

            program = archive.read(pickles[0])
            _check_pickle_program(program, path)
            state = Unpickler(io.BytesIO(program)).load()
    except HFCheckpointError as exc:
        message = str(exc)
        raise HFCheckpointError(message if message.startswith(str(path)) else f"{path}: {message}") from None
    except (pickle.UnpicklingError, KeyError, IndexError, AttributeError, ValueError, TypeError, EOFError,
            OverflowError, MemoryError, RecursionError, OSError, zipfile.BadZipFile, zlib.error, NotImplementedError) as exc:
        raise HFCheckpointError(f"{path}: cannot read torch state dict ({type(exc).__name__}: {exc!s:.200})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise HFCheckpointError(f"{path}: does not hold a flat state dict of tensors")
    return {str(k): v for k, v in state.items()}


def _layout(config: Mapping[str, Any]) -> dict[str, tuple[str, tuple[int, ...], bool]]:
    """HF tensor name -> (T5X path, T5X shape, transpose?) for every mapped parameter."""
    e, h, d, m, v = (config[k] for k in ("emb_dim", "num_heads", "head_dim", "mlp_dim", "vocab_size"))
    buckets = config["relative_attention_num_buckets"]
    hd = h * d
    gated = len(config["mlp_activations"]) > 1
    wi_names = [f"wi_{i}" for i in range(len(config["mlp_activations"]))] if gated else ["wi"]
    out: dict[str, tuple[str, tuple[int, ...], bool]] = {"shared.weight": ("token_embedder/embedding", (v, e), False)}

    def attention(hf_prefix: str, t5x_prefix: str) -> None:
        for hf_name, t5x_name in (("q", "query"), ("k", "key"), ("v", "value")):
            out[f"{hf_prefix}.{hf_name}.weight"] = (f"{t5x_prefix}/{t5x_name}/kernel", (e, hd), True)
        out[f"{hf_prefix}.o.weight"] = (f"{t5x_prefix}/out/kernel", (hd, e), True)

    def mlp(hf_prefix: str, t5x_prefix: str) -> None:
        for wi in wi_names:
            out[f"{hf_prefix}.{wi}.weight"] = (f"{t5x_prefix}/{wi}/kernel", (e, m), True)
        out[f"{hf_prefix}.wo.weight"] = (f"{t5x_prefix}/wo/kernel", (m, e), True)

    def norm(hf_name: str, t5x_path: str) -> None:
        out[hf_name] = (t5x_path, (e,), False)

    for stack, t5x_stack, n_layers in (
        ("encoder", "encoder", config["num_encoder_layers"]),
        ("decoder", "decoder", config["num_decoder_layers"]),
    ):
        if n_layers == 0:
            continue
        out[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (
            f"{t5x_stack}/relpos_bias/rel_embedding",
            (h, buckets),
            True,
        )
        norm(f"{stack}.final_layer_norm.weight", f"{t5x_stack}/{t5x_stack}_norm/scale")
        for i in range(n_layers):
            hf_block, t5x_layer = f"{stack}.block.{i}", f"{t5x_stack}/layers_{i}"
            if stack == "encoder":
                attention(f"{hf_block}.layer.0.SelfAttention", f"{t5x_layer}/attention")
                norm(f"{hf_block}.layer.0.layer_norm.weight", f"{t5x_layer}/pre_attention_layer_norm/scale")
                mlp(f"{hf_block}.layer.1.DenseReluDense", f"{t5x_layer}/mlp")
                norm(f"{hf_block}.layer.1.layer_norm.weight", f"{t5x_layer}/pre_mlp_layer_norm/scale")
            else:
                attention(f"{hf_block}.layer.0.SelfAttention", f"{t5x_layer}/self_attention")
                norm(f"{hf_block}.layer.0.layer_norm.weight", f"{t5x_layer}/pre_self_attention_layer_norm/scale")
                attention(f"{hf_block}.layer.1.EncDecAttention", f"{t5x_layer}/encoder_decoder_attention")
                norm(f"{hf_block}.layer.1.layer_norm.weight", f"{t5x_layer}/pre_cross_attention_layer_norm/scale")
                mlp(f"{hf_block}.layer.2.DenseReluDense", f"{t5x_layer}/mlp")
                norm(f"{hf_block}.layer.2.layer_norm.weight", f"{t5x_layer}/pre_mlp_layer_norm/scale")
    return out


def _set_path(tree: dict[str, Any], path: str, value: np.ndarray) -> None:
    *parents, leaf = path.split("/")
    node = tree
    for name in parents:
        node = node.setdefault(name, {})
    node[leaf] = value


def _get_path(tree: Mapping[str, Any], path: str) -> Any:
    node: Any = tree
    for name in path.split("/"):
        if not isinstance(node, Mapping) or name not in node:
            raise HFCheckpointError(f"params are missing {path}")
        node = node[name]
    return node


def _leaf_paths(tree: Mapping[str, Any]) -> list[str]:
    return list(traverse_util.flatten_dict(dict(tree), sep="/"))


# --------------------------------------------------------------------------- import


def is_hf_t5_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a Hugging Face model directory with safetensors weights.

    For dispatching INITIAL_CHECKPOINT_PATH: T5X and orbax checkpoints never hold a
    top-level ``config.json`` next to ``model.safetensors``.
    """
    p = pathlib.Path(path)
    return (p / CONFIG_FILE).is_file() and ((p / WEIGHTS_FILE).is_file() or (p / WEIGHTS_INDEX_FILE).is_file())


def import_hf_t5(
    path: str | os.PathLike,
    *,
    expected_config: Any = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads a Hugging Face T5 safetensors directory into T5X names.

    Args:
      path: the directory holding ``config.json`` and ``model.safetensors`` (or a
        sharded ``model.safetensors.index.json``).
      expected_config: optional ``T5Config`` (or dict) the caller will build; a checkpoint
        of another architecture is refused with the first differing field.

    Returns:
      ``(config, params)``: ``T5Config`` keyword arguments (no ``dtype``) and a nested
      dict of float32 numpy arrays with T5X's parameter names (no ``"params"`` wrapper).
    """
    model_dir = pathlib.Path(path)
    if not model_dir.is_dir():
        raise HFCheckpointError(f"{model_dir}: directory not found (expected a Hugging Face T5 model directory)")
    config_path = _inside(model_dir, CONFIG_FILE, what=CONFIG_FILE) if (model_dir / CONFIG_FILE).exists() else model_dir / CONFIG_FILE
    hf = _read_json(config_path)
    if not isinstance(hf, dict):
        raise HFCheckpointError(f"{config_path}: expected a JSON object")
    config = config_from_hf(hf, where=str(config_path))
    tensors = _read_tensors(_weight_files(model_dir))

    if not any(k.startswith("decoder.") for k in tensors):
        config["num_decoder_layers"] = 0  # T5EncoderModel
    if "shared.weight" not in tensors:
        # Some exports keep only the per-stack copies of the shared embedding.
        for key in _TIED_EMBED_KEYS:
            if key in tensors:
                tensors["shared.weight"] = tensors[key]
                break
    layout = _layout(config)
    if config["num_decoder_layers"] > 0:
        shared, head = tensors.get("shared.weight"), tensors.get("lm_head.weight")
        scaled = _scales_decoder_output(hf)
        if head is None and "scale_decoder_outputs" not in hf and hf.get("tie_word_embeddings") is False:
            # transformers 4 would initialise this head at random: the checkpoint is incomplete.
            raise HFCheckpointError(
                f"{model_dir}: missing tensor 'lm_head.weight' although config.json says "
                "tie_word_embeddings=false (a separate output head)"
            )
        if head is None or (shared is not None and head.shape == shared.shape and np.array_equal(head, shared)):
            if scaled:
                config["logits_via_embedding"] = True  # T5X's tied, scaled projection
            else:
                tensors["lm_head.weight"] = shared  # tied but unscaled: a separate copy is exact
        elif scaled:
            # A separate head applied to scaled outputs: fold the scale into the kernel.
            tensors["lm_head.weight"] = head.astype(np.float32) * np.float32(config["emb_dim"] ** -0.5)
        if not config["logits_via_embedding"]:
            layout["lm_head.weight"] = ("decoder/logits_dense/kernel", (config["emb_dim"], config["vocab_size"]), True)

    if expected_config is not None:
        _check_expected(config, expected_config, where=str(model_dir))

    known = set(layout) | set(_IGNORED_HF_KEYS) | set(_TIED_EMBED_KEYS)
    unknown = sorted(k for k in tensors if k not in known)
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise HFCheckpointError(
            f"{model_dir}: unknown tensor {unknown[0]!r}{more} for a T5 with config.json's "
            f"{config['num_encoder_layers']} encoder / {config['num_decoder_layers']} decoder layers "
            f"and feed_forward_proj {hf.get('feed_forward_proj', 'relu')!r}"
        )
    for key in _TIED_EMBED_KEYS:
        if key in tensors and "shared.weight" in tensors and not np.array_equal(tensors[key], tensors["shared.weight"]):
            raise HFCheckpointError(f"{model_dir}: {key} differs from shared.weight; untied per-stack embeddings are not T5")

    params: dict[str, Any] = {}
    for hf_name, (t5x_path, t5x_shape, transpose) in layout.items():
        if hf_name not in tensors:
            raise HFCheckpointError(f"{model_dir}: missing tensor {hf_name!r} (needed for {t5x_path})")
        array = tensors[hf_name]
        hf_shape = t5x_shape[::-1] if transpose else t5x_shape
        if tuple(array.shape) != hf_shape:
            raise HFCheckpointError(
                f"{model_dir}: {hf_name} has shape {tuple(array.shape)}, expected {hf_shape} from config.json"
            )
        array = array.astype(np.float32)
        _set_path(params, t5x_path, np.ascontiguousarray(array.T if transpose else array))
    return config, params


# --------------------------------------------------------------------------- export


def export_hf_t5(
    *,
    params: Mapping[str, Any],
    config: Any,
    out_dir: str | os.PathLike,
    dtype: str = "float32",
) -> pathlib.Path:
    """Writes ``config.json`` + ``model.safetensors`` that transformers' T5 loads.

    Args:
      params: the T5X parameter tree (with or without a top-level ``"params"`` key);
        jax or numpy arrays.
      config: a ``T5Config`` or a dict with its fields.
      out_dir: directory to write (created; existing files of the same names are replaced).
      dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"`` for the stored tensors.

    Returns:
      ``out_dir`` as a path.
    """
    dtypes = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
    if dtype not in dtypes:
        raise HFCheckpointError(f"dtype must be one of {sorted(dtypes)}, got {dtype!r}")
    if "params" in params and isinstance(params["params"], Mapping):
        params = params["params"]
    sizes = {name: _config_get(config, name) for name in _SIZE_FIELDS}
    sizes["mlp_activations"] = (
        (sizes["mlp_activations"],) if isinstance(sizes["mlp_activations"], str) else tuple(sizes["mlp_activations"])
    )
    epsilon = float(_config_get(config, "layer_norm_epsilon")) if _has(config, "layer_norm_epsilon") else T5X_LAYER_NORM_EPSILON
    dropout_rate = float(_config_get(config, "dropout_rate")) if _has(config, "dropout_rate") else 0.0
    feed_forward_proj = _hf_feed_forward_proj(sizes["mlp_activations"])
    if sizes["num_decoder_layers"] == 0:
        raise HFCheckpointError("export needs an encoder-decoder; num_decoder_layers is 0")

    layout = _layout(sizes)
    if not sizes["logits_via_embedding"]:
        layout["lm_head.weight"] = ("decoder/logits_dense/kernel", (sizes["emb_dim"], sizes["vocab_size"]), True)
    expected_paths = {t5x_path for t5x_path, _, _ in layout.values()}
    extra = sorted(set(_leaf_paths(params)) - expected_paths)
    if extra:
        raise HFCheckpointError(f"params have {extra[0]!r}, which the config's T5 does not have (unknown key)")

    tensors: dict[str, np.ndarray] = {}
    for hf_name, (t5x_path, t5x_shape, transpose) in layout.items():
        array = np.asarray(_get_path(params, t5x_path))
        if tuple(array.shape) != t5x_shape:
            raise HFCheckpointError(f"params {t5x_path} has shape {tuple(array.shape)}, expected {t5x_shape} from the config")
        array = array.astype(np.float32)
        tensors[hf_name] = np.ascontiguousarray((array.T if transpose else array).astype(dtypes[dtype]))

    hf_config = {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "vocab_size": sizes["vocab_size"],
        "d_model": sizes["emb_dim"],
        "d_kv": sizes["head_dim"],
        "d_ff": sizes["mlp_dim"],
        "num_heads": sizes["num_heads"],
        "num_layers": sizes["num_encoder_layers"],
        "num_decoder_layers": sizes["num_decoder_layers"],
        "relative_attention_num_buckets": sizes["relative_attention_num_buckets"],
        "relative_attention_max_distance": sizes["relative_attention_max_distance"],
        "layer_norm_epsilon": epsilon,
        "dropout_rate": dropout_rate,
        "feed_forward_proj": feed_forward_proj,
        # Both spellings, so transformers 4 and 5 read the same logits mode.
        "tie_word_embeddings": bool(sizes["logits_via_embedding"]),
        "scale_decoder_outputs": bool(sizes["logits_via_embedding"]),
        "is_encoder_decoder": True,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
        "initializer_factor": 1.0,
        "torch_dtype": dtype,
    }
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Write to temporary names and rename, so a crash never leaves a half-written pair.
    tmp_weights, tmp_config = out / f".{WEIGHTS_FILE}.tmp", out / f".{CONFIG_FILE}.tmp"
    save_file(tensors, str(tmp_weights), metadata={"format": "pt"})
    tmp_config.write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp_weights, out / WEIGHTS_FILE)
    os.replace(tmp_config, out / CONFIG_FILE)
    return out


def _has(config: Any, name: str) -> bool:
    return name in config if isinstance(config, Mapping) else hasattr(config, name)
