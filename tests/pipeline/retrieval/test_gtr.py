"""GTR dual encoder on the project's T5 encoder: pooling, masking, normalization, loading."""
from shared_paths import FIXTURES  # noqa: E402
import io
import json
import pathlib
import shutil

import numpy as np
import pytest
import sentencepiece as spm
from safetensors.numpy import load_file, save_file

from personalize_t5x.network.t5 import T5Config
from personalize_t5x.pipeline.retrieval.encoders import EmbeddingCache
from personalize_t5x.pipeline.retrieval.gtr import EOS_ID, GTRConfig, GTREncoder, GTRError, init_gtr_params

HF_FIXTURE = FIXTURES / "hf_t5_tiny"
VOCAB_SIZE = 64
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A stitch in time saves nine, my grandmother used to say.",
    "Dense retrieval ranks documents by the dot product of unit vectors.",
    "She wrote letters every Sunday and never missed a week.",
    "Rain fell on the quiet town while the river rose slowly.",
] * 4


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    """A tiny SentencePiece model with T5's special ids (pad 0, EOS 1, unk 2)."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES),
        model_writer=model,
        vocab_size=VOCAB_SIZE,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    path = tmp_path_factory.mktemp("spm") / "spiece.model"
    path.write_bytes(model.getvalue())
    return path


@pytest.fixture(scope="module")
def config():
    t5 = T5Config(
        vocab_size=VOCAB_SIZE,
        emb_dim=16,
        num_heads=2,
        head_dim=8,
        mlp_dim=32,
        num_encoder_layers=2,
        num_decoder_layers=0,
        mlp_activations=("gelu", "linear"),
        dropout_rate=0.0,
    )
    return GTRConfig(t5=t5, projection_dim=12, max_length=64)


@pytest.fixture(scope="module")
def encoder(config, spm_model):
    return GTREncoder(config=config, params=init_gtr_params(config, seed=3), tokenizer=spm_model)


def test_embeddings_are_unit_norm_float32_rows_in_input_order(encoder):
    texts = ["hello there", "The river rose slowly.", "", "x" * 200]
    vectors = encoder.encode(texts)
    assert vectors.shape == (4, 12) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    reversed_vectors = encoder.encode(texts[::-1])
    np.testing.assert_allclose(reversed_vectors[::-1], vectors, atol=1e-6)
    # Distinct texts give distinct embeddings (random weights, but not a constant map).
    assert np.abs(vectors[0] - vectors[1]).max() > 1e-3


def test_padding_and_batch_composition_do_not_change_embeddings(encoder):
    ids = encoder.tokenize(["Dense retrieval."])[0]
    assert len(ids) < 16  # so the batches below really pad it
    alone = encoder.encode_ids([ids])
    padded = encoder.encode_ids([ids + [0] * 7])
    # In a batch with a longer row the short row is padded to the long row's bucket.
    long_row = encoder.tokenize(["She wrote letters every Sunday and never missed a week at all."])[0]
    assert len(long_row) > 16
    in_batch = encoder.encode_ids([long_row, ids, ids[:3]])
    np.testing.assert_allclose(padded, alone, atol=1e-6)
    np.testing.assert_allclose(in_batch[1:2], alone, atol=1e-6)
    assert len(encoder.compiled_shapes) >= 1
    # ...whereas a real token in place of padding does change it: the mask is what works.
    changed = encoder.encode_ids([ids + [5]])
    assert np.abs(changed - alone).max() > 1e-4


def test_tokenize_appends_eos_and_truncates_to_max_length(encoder, config):
    short, long = encoder.tokenize(["hello", " ".join(SENTENCES)])
    assert short[-1] == EOS_ID and EOS_ID not in short[:-1]
    assert len(long) == config.max_length and long[-1] == EOS_ID


def test_works_behind_the_embedding_cache(encoder):
    cache = EmbeddingCache(encoder)
    first = cache.encode(["a b c", "d e f", "a b c"])
    np.testing.assert_array_equal(first[0], first[2])
    np.testing.assert_allclose(first, encoder.encode(["a b c", "d e f", "a b c"]), atol=1e-6)
    assert cache.num_encoded == 2


def test_accepts_any_tokenizer_with_encode(config, spm_model):
    processor = spm.SentencePieceProcessor(model_file=str(spm_model))
    params = init_gtr_params(config, seed=3)
    by_path = GTREncoder(config=config, params=params, tokenizer=spm_model)
    by_object = GTREncoder(config=config, params=params, tokenizer=processor)
    np.testing.assert_array_equal(by_object.encode(["hello there"]), by_path.encode(["hello there"]))


def _write_sentence_transformers_dir(root: pathlib.Path, projection: np.ndarray, spm_model=None) -> pathlib.Path:
    """A GTR folder in sentence-transformers' layout around the HF fixture's T5 encoder."""
    root.mkdir()
    tensors = load_file(str(HF_FIXTURE / "t5_1_1" / "model.safetensors"))
    save_file({k: v for k, v in tensors.items() if k == "shared.weight" or k.startswith("encoder.")}, str(root / "model.safetensors"))
    hf_config = json.loads((HF_FIXTURE / "t5_1_1" / "config.json").read_text())
    hf_config["architectures"] = ["T5EncoderModel"]
    (root / "config.json").write_text(json.dumps(hf_config))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
        {"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (root / "modules.json").write_text(json.dumps(modules))
    (root / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16, "do_lower_case": False}))
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False})
    )
    (root / "2_Dense").mkdir()
    (root / "2_Dense" / "config.json").write_text(
        json.dumps({"in_features": 32, "out_features": int(projection.shape[0]), "bias": False, "activation_function": "torch.nn.modules.linear.Identity"})
    )
    save_file({"linear.weight": projection}, str(root / "2_Dense" / "model.safetensors"))
    (root / "3_Normalize").mkdir()
    if spm_model is not None:
        shutil.copy(spm_model, root / "spiece.model")
    return root


def test_sentence_transformers_folder_matches_pooled_hf_encoder_outputs(tmp_path, spm_model):
    """Reference: transformers' own encoder outputs (fixture), mean-pooled, projected, normalized."""
    projection = np.random.default_rng(0).normal(size=(24, 32)).astype(np.float32)
    model_dir = _write_sentence_transformers_dir(tmp_path / "gtr", projection, spm_model)
    gtr = GTREncoder.from_sentence_transformers(model_dir)
    assert gtr.dim == 24 and gtr.config.max_length == 16
    with np.load(HF_FIXTURE / "reference.npz") as ref:
        tokens, hf_encoded = ref["encoder_input_tokens"], ref["t5_1_1_encoded"]
    real = (tokens > 0)[:, :, None]
    pooled = (hf_encoded * real).sum(axis=1) / real.sum(axis=1)
    expected = pooled @ projection.T
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(gtr.encode_ids(tokens), expected, atol=1e-5)
    assert gtr.encode(["hello there"]).shape == (1, 24)  # spiece.model found and used


def _gtr_reference():
    with np.load(HF_FIXTURE / "gtr_reference.npz") as ref:
        return {k: ref[k] for k in ref.files}


def test_matches_sentence_transformers_on_its_own_gtr_folder():
    """The fixture's gtr/ folder and embeddings were written by sentence-transformers 6.2."""
    ref = _gtr_reference()
    gtr = GTREncoder.from_sentence_transformers(HF_FIXTURE / "gtr")
    assert gtr.config.max_length == 16 and gtr.dim == 24
    assert gtr.config.t5.mlp_activations == ("relu",)
    texts = [str(t) for t in ref["gtr_texts"]]
    # Same tokens (SentencePiece + EOS, truncated to 16 with EOS kept) as the HF tokenizer...
    expected_ids = [[int(i) for i in row if i != 0] for row in ref["gtr_token_ids"]]
    assert gtr.tokenize(texts) == expected_ids
    # ...and the same vectors.
    vectors = gtr.encode(texts, batch_size=2)
    np.testing.assert_allclose(vectors, ref["gtr_embeddings"], atol=1e-5)
    cosine = np.sum(vectors * ref["gtr_embeddings"], axis=1)
    assert cosine.min() > 0.99999


def test_tokenizer_json_is_used_when_spiece_model_is_absent(tmp_path):
    ref = _gtr_reference()
    model_dir = tmp_path / "gtr"
    shutil.copytree(HF_FIXTURE / "gtr", model_dir)
    (model_dir / "spiece.model").unlink()
    gtr = GTREncoder.from_sentence_transformers(model_dir)
    texts = [str(t) for t in ref["gtr_texts"]]
    np.testing.assert_allclose(gtr.encode(texts), ref["gtr_embeddings"], atol=1e-5)


def test_reads_a_torch_pickled_dense_layer_without_pytorch(tmp_path):
    """Most public GTR folders keep 2_Dense as pytorch_model.bin (fixture: written by torch.save)."""
    ref = _gtr_reference()
    model_dir = tmp_path / "gtr"
    shutil.copytree(HF_FIXTURE / "gtr", model_dir)
    (model_dir / "2_Dense" / "model.safetensors").unlink()
    shutil.copy(HF_FIXTURE / "torch_bin" / "gtr_dense_fp32.bin", model_dir / "2_Dense" / "pytorch_model.bin")
    gtr = GTREncoder.from_sentence_transformers(model_dir)
    np.testing.assert_allclose(gtr.encode([str(t) for t in ref["gtr_texts"]]), ref["gtr_embeddings"], atol=1e-5)


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda d: (d / "2_Dense" / "model.safetensors").unlink(), r"2_Dense: file not found: model.safetensors or pytorch_model.bin"),
        (lambda d: (d / "2_Dense" / "model.safetensors").write_bytes(b"junk"), r"2_Dense/model.safetensors: "),
        (lambda d: (d / "2_Dense" / "config.json").write_text(json.dumps({"bias": True})), "no bias, but bias is true"),
        (
            lambda d: (d / "2_Dense" / "config.json").write_text(json.dumps({"bias": False, "activation_function": "torch.nn.modules.activation.Tanh"})),
            "projection is linear",
        ),
        (lambda d: save_file({"linear.weight": np.zeros((8, 16), np.float32)}, str(d / "2_Dense" / "model.safetensors")), r"expected \(out, 32\)"),
        (lambda d: (d / "modules.json").write_text(json.dumps([{"path": "", "type": "sentence_transformers.models.Transformer"}])), "missing"),
        (
            lambda d: (d / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True})),
            "mean only",
        ),
        (lambda d: (d / "model.safetensors").unlink(), "GTR encoder: .*file not found"),
    ],
)
def test_broken_sentence_transformers_folder_gives_one_clear_error(tmp_path, breakage, message):
    model_dir = _write_sentence_transformers_dir(tmp_path / "gtr", np.zeros((24, 32), np.float32))
    breakage(model_dir)
    with pytest.raises(GTRError, match=message):
        GTREncoder.from_sentence_transformers(model_dir)


def test_t5x_layout_checkpoint_loads(tmp_path, config, spm_model):
    import orbax.checkpoint as ocp

    params = init_gtr_params(config, seed=7)
    state_dir = tmp_path / "model" / "checkpoint_5" / "state"
    ocp.PyTreeCheckpointer().save(state_dir, {"target": params, "state": {"step": np.int32(5)}})
    loaded = GTREncoder.from_t5x_checkpoint(tmp_path / "model", config=config, tokenizer=spm_model)
    direct = GTREncoder(config=config, params=params, tokenizer=spm_model)
    np.testing.assert_array_equal(loaded.encode(["a b c", "hello"]), direct.encode(["a b c", "hello"]))
    other = GTRConfig(t5=config.t5, projection_dim=8, max_length=config.max_length)
    with pytest.raises(GTRError, match=r"'projection_layer/kernel' has shape \(16, 12\) but the model expects \(16, 8\)"):
        GTREncoder.from_t5x_checkpoint(tmp_path / "model", config=other)


def test_bad_params_config_and_inputs_are_refused(config, spm_model):
    params = init_gtr_params(config, seed=0)
    params["projection_layer"]["kernel"] = np.zeros((16, 8), np.float32)
    with pytest.raises(GTRError, match=r"projection_layer/kernel has shape \(16, 8\), expected \(16, 12\)"):
        GTREncoder(config=config, params=params)
    params = init_gtr_params(config, seed=0)
    params["pooler"] = {"kernel": np.zeros((2, 2), np.float32)}
    with pytest.raises(GTRError, match="unknown key pooler/kernel"):
        GTREncoder(config=config, params=params)
    with pytest.raises(GTRError, match="projection_dim must be a positive integer"):
        GTRConfig(t5=config.t5, projection_dim=0)
    with pytest.raises(GTRError, match="spiece.model: SentencePiece model file not found"):
        GTREncoder(config=config, params=init_gtr_params(config), tokenizer=spm_model.parent / "nope" / "spiece.model")
    no_tokenizer = GTREncoder(config=config, params=init_gtr_params(config))
    with pytest.raises(GTRError, match="no tokenizer"):
        no_tokenizer.encode(["text"])
    with pytest.raises(GTRError, match=r"token ids must be in \[0, 64\)"):
        no_tokenizer.encode_ids([[3, 99, 1]])
