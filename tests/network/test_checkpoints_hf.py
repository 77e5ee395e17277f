"""Hugging Face T5 import/export against logits transformers computed (tests/fixtures/hf_t5_tiny)."""
import json
import pathlib
import shutil

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from personalize_t5x.network.hf_checkpoints import HFCheckpointError, export_hf_t5, import_hf_t5
from personalize_t5x.network.t5 import T5Config, Transformer
from shared_paths import FIXTURES  # noqa: E402

FIXTURE = FIXTURES / "hf_t5_tiny"
VARIANTS = ("t5_1_1", "t5_1_0")


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURE / "reference.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def imported():
    return {name: import_hf_t5(FIXTURE / name) for name in VARIANTS}


def _logits(config, params, ref):
    model = Transformer(T5Config(**config, dtype="float32"))
    # One compiled program is much faster than op-by-op dispatch on a loaded CPU.
    forward = jax.jit(lambda p, enc, dec_in, dec_tgt: model.apply({"params": p}, enc, dec_in, dec_tgt, enable_dropout=False))
    return np.asarray(
        forward(params, ref["encoder_input_tokens"], ref["decoder_input_tokens"], ref["decoder_target_tokens"])
    )


def _flat(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else key
        out.update(_flat(value, path) if isinstance(value, dict) else {path: value})
    return out


def _copy_variant(tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(FIXTURE / name, dst)
    return dst


def _edit_config(model_dir, **changes):
    path = model_dir / "config.json"
    cfg = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    path.write_text(json.dumps(cfg))


@pytest.mark.parametrize("name", VARIANTS)
def test_imported_model_reproduces_hf_logits_and_encoder_outputs(name, reference, imported):
    config, params = imported[name]
    logits = _logits(config, params, reference)
    # T5X also masks padded query rows, HF does not: only real positions are comparable.
    valid = reference["decoder_target_tokens"] > 0
    np.testing.assert_allclose(logits[valid], reference[f"{name}_logits"][valid], atol=1e-4, rtol=1e-5)

    model = Transformer(T5Config(**config, dtype="float32"))
    encode = jax.jit(lambda p, tokens: model.apply({"params": p}, tokens, enable_dropout=False, method=Transformer.encode))
    encoded = np.asarray(encode(params, reference["encoder_input_tokens"]))
    real = reference["encoder_input_tokens"] > 0
    np.testing.assert_allclose(encoded[real], reference[f"{name}_encoded"][real], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("name", VARIANTS)
def test_imported_tree_is_exactly_the_models_parameter_tree(name, imported):
    config, params = imported[name]
    model = Transformer(T5Config(**config, dtype="float32"))
    tokens = jnp.ones((1, 4), jnp.int32)
    # Shapes only: eval_shape traces init without running it.
    init = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, tokens, tokens, enable_dropout=False))["params"]
    init = flax.linen.unbox(init)
    init_shapes = {k: tuple(v.shape) for k, v in _flat(init).items()}
    got_shapes = {k: tuple(v.shape) for k, v in _flat(params).items()}
    assert got_shapes == init_shapes
    assert all(v.dtype == np.float32 for v in _flat(params).values())
    assert all(v.dtype == np.float32 for v in _flat(init).values())


def test_config_and_logits_mode_of_each_variant(imported):
    t5_1_1, _ = imported["t5_1_1"]
    t5_1_0, params_1_0 = imported["t5_1_0"]
    assert t5_1_1["mlp_activations"] == ("gelu", "linear")
    assert t5_1_1["logits_via_embedding"] is False
    assert (t5_1_1["emb_dim"], t5_1_1["num_heads"], t5_1_1["head_dim"], t5_1_1["mlp_dim"]) == (32, 4, 8, 64)
    assert t5_1_0["mlp_activations"] == ("relu",)
    assert t5_1_0["logits_via_embedding"] is True
    assert "logits_dense" not in params_1_0["decoder"]
    assert set(params_1_0["encoder"]["layers_0"]["mlp"]) == {"wi", "wo"}


def test_names_and_transposes_against_the_raw_hf_tensors(imported):
    raw = load_file(str(FIXTURE / "t5_1_1" / "model.safetensors"))
    _, params = imported["t5_1_1"]
    enc, dec = params["encoder"], params["decoder"]
    np.testing.assert_array_equal(params["token_embedder"]["embedding"], raw["shared.weight"])
    np.testing.assert_array_equal(
        enc["layers_1"]["attention"]["query"]["kernel"], raw["encoder.block.1.layer.0.SelfAttention.q.weight"].T
    )
    np.testing.assert_array_equal(
        enc["layers_0"]["attention"]["out"]["kernel"], raw["encoder.block.0.layer.0.SelfAttention.o.weight"].T
    )
    np.testing.assert_array_equal(
        enc["relpos_bias"]["rel_embedding"], raw["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].T
    )
    np.testing.assert_array_equal(
        dec["layers_1"]["encoder_decoder_attention"]["value"]["kernel"],
        raw["decoder.block.1.layer.1.EncDecAttention.v.weight"].T,
    )
    np.testing.assert_array_equal(dec["layers_1"]["mlp"]["wi_1"]["kernel"], raw["decoder.block.1.layer.2.DenseReluDense.wi_1.weight"].T)
    np.testing.assert_array_equal(
        dec["layers_0"]["pre_cross_attention_layer_norm"]["scale"], raw["decoder.block.0.layer.1.layer_norm.weight"]
    )
    np.testing.assert_array_equal(dec["decoder_norm"]["scale"], raw["decoder.final_layer_norm.weight"])
    np.testing.assert_array_equal(dec["logits_dense"]["kernel"], raw["lm_head.weight"].T)


def test_flax_gelu_is_hf_gelu_new(reference):
    got = np.asarray(flax.linen.gelu(jnp.asarray(reference["gelu_new_x"])))
    np.testing.assert_allclose(got, reference["gelu_new_y"], atol=1e-6)


@pytest.mark.parametrize("name", VARIANTS)
def test_export_then_import_gives_identical_params(name, imported, tmp_path):
    config, params = imported[name]
    out = export_hf_t5(params=params, config=T5Config(**config), out_dir=tmp_path / "export")
    config2, params2 = import_hf_t5(out)
    assert config2 == config
    flat, flat2 = _flat(params), _flat(params2)
    assert flat.keys() == flat2.keys()
    for key in flat:
        np.testing.assert_array_equal(flat2[key], flat[key], err_msg=key)
    # The written file holds exactly HF's tensor names and shapes for this model.
    original = load_file(str(FIXTURE / name / "model.safetensors"))
    written = load_file(str(out / "model.safetensors"))
    assert {k: v.shape for k, v in written.items()} == {k: v.shape for k, v in original.items()}
    hf_cfg = json.loads((out / "config.json").read_text())
    ref_cfg = json.loads((FIXTURE / name / "config.json").read_text())
    for key in ("d_model", "d_kv", "d_ff", "num_heads", "num_layers", "num_decoder_layers", "feed_forward_proj", "scale_decoder_outputs"):
        assert hf_cfg[key] == ref_cfg[key], key


def test_export_accepts_a_params_wrapper_and_bfloat16(imported, tmp_path):
    config, params = imported["t5_1_1"]
    out = export_hf_t5(params={"params": params}, config=config, out_dir=tmp_path / "bf16", dtype="bfloat16")
    assert load_file(str(out / "model.safetensors"))["shared.weight"].dtype.name == "bfloat16"
    _, params2 = import_hf_t5(out)
    np.testing.assert_allclose(
        params2["decoder"]["logits_dense"]["kernel"], params["decoder"]["logits_dense"]["kernel"], rtol=1e-2, atol=1e-2
    )


def test_transformers4_config_spelling_reads_the_same(tmp_path, imported):
    # transformers 4 configs carry the logits mode in tie_word_embeddings only.
    d11 = _copy_variant(tmp_path, "t5_1_1")
    _edit_config(d11, scale_decoder_outputs=None, tie_word_embeddings=False, dense_act_fn=None, is_gated_act=None)
    d10 = _copy_variant(tmp_path, "t5_1_0")
    _edit_config(d10, scale_decoder_outputs=None, tie_word_embeddings=True)
    assert import_hf_t5(d11)[0] == imported["t5_1_1"][0]
    assert import_hf_t5(d10)[0] == imported["t5_1_0"][0]


def test_tied_unscaled_and_separate_scaled_heads_keep_hf_logits(tmp_path, reference):
    # HF's other two combinations: logits change exactly by the d_model**-0.5 scale.
    scale = 32**-0.5
    tied_unscaled = _copy_variant(tmp_path, "t5_1_0")
    _edit_config(tied_unscaled, scale_decoder_outputs=False)
    config, params = import_hf_t5(tied_unscaled)
    assert config["logits_via_embedding"] is False
    np.testing.assert_array_equal(params["decoder"]["logits_dense"]["kernel"], params["token_embedder"]["embedding"].T)
    valid = reference["decoder_target_tokens"] > 0
    np.testing.assert_allclose(
        _logits(config, params, reference)[valid], reference["t5_1_0_logits"][valid] / scale, atol=1e-3, rtol=1e-5
    )

    separate_scaled = _copy_variant(tmp_path, "t5_1_1")
    _edit_config(separate_scaled, scale_decoder_outputs=True)
    config, params = import_hf_t5(separate_scaled)
    np.testing.assert_allclose(
        _logits(config, params, reference)[valid], reference["t5_1_1_logits"][valid] * scale, atol=1e-4, rtol=1e-5
    )


def test_sharded_checkpoint_imports_like_a_single_file(tmp_path, imported):
    tensors = load_file(str(FIXTURE / "t5_1_1" / "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for fname, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(tmp_path / fname))
    weight_map = {k: fname for fname, keys in shards.items() for k in keys}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    shutil.copy(FIXTURE / "t5_1_1" / "config.json", tmp_path / "config.json")
    config, params = import_hf_t5(tmp_path)
    assert config == imported["t5_1_1"][0]
    flat, ref = _flat(params), _flat(imported["t5_1_1"][1])
    for key in ref:
        np.testing.assert_array_equal(flat[key], ref[key])


def test_encoder_only_checkpoint_imports_without_decoder(tmp_path, reference, imported):
    tensors = load_file(str(FIXTURE / "t5_1_1" / "model.safetensors"))
    save_file({k: v for k, v in tensors.items() if not k.startswith(("decoder.", "lm_head."))}, str(tmp_path / "model.safetensors"))
    shutil.copy(FIXTURE / "t5_1_1" / "config.json", tmp_path / "config.json")
    config, params = import_hf_t5(tmp_path)
    assert config["num_decoder_layers"] == 0
    assert set(params) == {"token_embedder", "encoder"}
    np.testing.assert_array_equal(
        params["encoder"]["layers_1"]["mlp"]["wo"]["kernel"], imported["t5_1_1"][1]["encoder"]["layers_1"]["mlp"]["wo"]["kernel"]
    )


# ---------------------------------------------------------------- clear errors


def test_missing_directory_config_and_weights(tmp_path):
    with pytest.raises(HFCheckpointError, match="directory not found"):
        import_hf_t5(tmp_path / "nope")
    with pytest.raises(HFCheckpointError, match="config.json: file not found"):
        import_hf_t5(tmp_path)
    shutil.copy(FIXTURE / "t5_1_1" / "config.json", tmp_path / "config.json")
    (tmp_path / "tf_model.h5").write_bytes(b"x")
    with pytest.raises(HFCheckpointError, match=r"model.safetensors.*pytorch_model.bin.*found tf_model.h5"):
        import_hf_t5(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(HFCheckpointError, match="not a zip-format torch checkpoint"):
        import_hf_t5(tmp_path)


def test_torch_pickled_checkpoint_imports_without_pytorch(tmp_path, imported):
    """fixtures/hf_t5_tiny/torch_bin/t5_1_1_fp16.bin was written by torch.save (float16)."""
    shutil.copy(FIXTURE / "t5_1_1" / "config.json", tmp_path / "config.json")
    shutil.copy(FIXTURE / "torch_bin" / "t5_1_1_fp16.bin", tmp_path / "pytorch_model.bin")
    config, params = import_hf_t5(tmp_path)
    assert config == imported["t5_1_1"][0]
    flat, ref = _flat(params), _flat(imported["t5_1_1"][1])
    assert flat.keys() == ref.keys()
    for key in ref:
        np.testing.assert_array_equal(flat[key], ref[key].astype(np.float16).astype(np.float32), err_msg=key)


def test_torch_reader_refuses_objects_that_are_not_tensors(tmp_path):
    import zipfile

    from personalize_t5x.network.hf_checkpoints import read_torch_state_dict

    evil = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(evil, "w") as archive:
        # protocol-2 pickle of the global os.system: what a crafted checkpoint would smuggle in
        archive.writestr("archive/data.pkl", b"\x80\x02cos\nsystem\nq\x00.")
    with pytest.raises(HFCheckpointError, match="refusing to unpickle os.system"):
        read_torch_state_dict(evil)
    # The non-contiguous float32 tensor in the GTR pickle comes back with its values.
    dense = read_torch_state_dict(FIXTURE / "torch_bin" / "gtr_dense_fp32.bin")["linear.weight"]
    np.testing.assert_array_equal(dense, load_file(str(FIXTURE / "gtr" / "2_Dense" / "model.safetensors"))["linear.weight"])


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"feed_forward_proj": "gelu"}, "exact erf GELU"),
        ({"feed_forward_proj": "gated-tanh"}, "unsupported feed_forward_proj"),
        ({"model_type": "umt5"}, "model_type 'umt5' is not supported"),
        ({"d_ff": 48}, r"wi_0.weight has shape \(64, 32\), expected \(48, 32\)"),
        ({"num_layers": 3}, "missing tensor 'encoder.block.2"),
        ({"num_layers": 1, "num_decoder_layers": 2}, "unknown tensor 'encoder.block.1"),
        ({"d_model": "32"}, "d_model must be a non-negative integer"),
    ],
)
def test_inconsistent_config_is_refused_with_one_clear_error(tmp_path, changes, message):
    model_dir = _copy_variant(tmp_path, "t5_1_1")
    _edit_config(model_dir, **changes)
    with pytest.raises(HFCheckpointError, match=message):
        import_hf_t5(model_dir)


def test_untied_head_missing_from_the_checkpoint_is_refused(tmp_path):
    model_dir = _copy_variant(tmp_path, "t5_1_1")
    tensors = load_file(str(model_dir / "model.safetensors"))
    del tensors["lm_head.weight"]
    save_file(tensors, str(model_dir / "model.safetensors"))
    _edit_config(model_dir, scale_decoder_outputs=None, tie_word_embeddings=False)
    with pytest.raises(HFCheckpointError, match="missing tensor 'lm_head.weight' although config.json says tie_word_embeddings=false"):
        import_hf_t5(model_dir)


def test_expected_config_mismatch_names_the_field(imported):
    config, _ = imported["t5_1_1"]
    with pytest.raises(HFCheckpointError, match="mlp_dim=64 but the expected config has mlp_dim=128"):
        import_hf_t5(FIXTURE / "t5_1_1", expected_config=T5Config(**{**config, "mlp_dim": 128}))
    with pytest.raises(HFCheckpointError, match="logits_via_embedding=True but the expected config has logits_via_embedding=False"):
        import_hf_t5(FIXTURE / "t5_1_0", expected_config=T5Config(**{**imported["t5_1_0"][0], "logits_via_embedding": False}))
    assert import_hf_t5(FIXTURE / "t5_1_1", expected_config=T5Config(**config))[0] == config


def test_corrupt_weights_and_untied_stack_embeddings_are_refused(tmp_path):
    model_dir = _copy_variant(tmp_path, "t5_1_1")
    (model_dir / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json")
    with pytest.raises(HFCheckpointError, match="cannot read as safetensors"):
        import_hf_t5(model_dir)
    tensors = load_file(str(FIXTURE / "t5_1_1" / "model.safetensors"))
    tensors["encoder.embed_tokens.weight"] = tensors["shared.weight"] + 1.0
    save_file(tensors, str(model_dir / "model.safetensors"))
    with pytest.raises(HFCheckpointError, match="encoder.embed_tokens.weight differs from shared.weight"):
        import_hf_t5(model_dir)


def test_export_refuses_wrong_shapes_unknown_keys_and_unmappable_activations(imported, tmp_path):
    config, params = imported["t5_1_1"]
    bad_shape = jax.tree_util.tree_map(lambda x: x, params)
    bad_shape["encoder"]["layers_0"]["mlp"]["wo"]["kernel"] = np.zeros((32, 64), np.float32)
    with pytest.raises(HFCheckpointError, match=r"encoder/layers_0/mlp/wo/kernel has shape \(32, 64\), expected \(64, 32\)"):
        export_hf_t5(params=bad_shape, config=config, out_dir=tmp_path / "a")
    extra = jax.tree_util.tree_map(lambda x: x, params)
    extra["encoder"]["layers_9"] = {"stray": np.zeros(3, np.float32)}
    with pytest.raises(HFCheckpointError, match="encoder/layers_9/stray.*unknown key"):
        export_hf_t5(params=extra, config=config, out_dir=tmp_path / "b")
    with pytest.raises(HFCheckpointError, match="no Hugging Face T5 equivalent"):
        export_hf_t5(params=params, config={**config, "mlp_activations": ("linear", "gelu")}, out_dir=tmp_path / "c")
    missing = jax.tree_util.tree_map(lambda x: x, params)
    del missing["decoder"]["logits_dense"]
    with pytest.raises(HFCheckpointError, match="params are missing decoder/logits_dense/kernel"):
        export_hf_t5(params=missing, config=config, out_dir=tmp_path / "d")
    assert not (tmp_path / "a" / "model.safetensors").exists()


def test_t5x_trained_checkpoint_survives_export_and_import(tmp_path):
    """A checkpoint trained by upstream T5X (../shared) -> HF folder -> back: same params, same logits."""
    from shared_paths import require_shared

    fixture = require_shared("fixtures/t5x_tiny")
    with np.load(fixture / "params.npz") as flat:
        params = {}
        for key in flat.files:
            *parents, leaf = key.split("/")
            node = params
            for name in parents:
                node = node.setdefault(name, {})
            node[leaf] = flat[key]
    config = dict(
        vocab_size=128, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64, num_encoder_layers=2,
        num_decoder_layers=2, mlp_activations=("gelu", "linear"), dropout_rate=0.0, logits_via_embedding=False,
    )
    out = export_hf_t5(params=params, config=T5Config(**config), out_dir=tmp_path / "hf")
    imported_config, imported_params = import_hf_t5(out, expected_config=T5Config(**config))
    flat_in, flat_out = _flat(params), _flat(imported_params)
    assert flat_in.keys() == flat_out.keys()
    for key in flat_in:
        np.testing.assert_array_equal(flat_out[key], flat_in[key], err_msg=key)
    with np.load(fixture / "inputs.npz") as inputs:
        batch = {k: inputs[k] for k in inputs.files}
    logits = _logits(imported_config, imported_params, batch)
    valid = batch["decoder_target_tokens"] > 0
    np.testing.assert_allclose(logits[valid], np.load(fixture / "logits.npy")[valid], atol=1e-4, rtol=1e-5)


def test_is_hf_t5_dir_tells_hf_folders_from_others(tmp_path):
    from personalize_t5x.network.hf_checkpoints import is_hf_t5_dir

    assert is_hf_t5_dir(FIXTURE / "t5_1_1")
    assert not is_hf_t5_dir(FIXTURE)
    (tmp_path / "config.json").write_text("{}")
    assert not is_hf_t5_dir(tmp_path)  # a config without weights is not a checkpoint


def test_weight_map_and_weight_files_are_confined_to_the_model_folder(tmp_path):
    """Issue 11 item 5: an index naming /etc/hostname, ../x or a symlink out is refused."""
    import os

    model_dir = _copy_variant(tmp_path, "t5_1_1")
    outside = tmp_path / "outside.safetensors"
    shutil.move(model_dir / "model.safetensors", outside)
    index = model_dir / "model.safetensors.index.json"
    for target, message in [("/etc/hostname", "is not a .safetensors file name"),
                            (str(outside), "absolute path refused"),
                            ("../outside.safetensors", "climbs out"),
                            ("sub/../../outside.safetensors", "climbs out"),
                            (7, "is not a .safetensors file name")]:
        index.write_text(json.dumps({"weight_map": {"shared.weight": target}}))
        with pytest.raises(HFCheckpointError, match=message):
            import_hf_t5(model_dir)
    os.symlink(outside, model_dir / "shard.safetensors")
    index.write_text(json.dumps({"weight_map": {"shared.weight": "shard.safetensors"}}))
    with pytest.raises(HFCheckpointError, match="outside the checkpoint folder"):
        import_hf_t5(model_dir)
    index.unlink()
    os.symlink(outside, model_dir / "model.safetensors")
    with pytest.raises(HFCheckpointError, match="outside the checkpoint folder"):
        import_hf_t5(model_dir)


def test_hub_cache_snapshot_reads_through_its_blob_links(tmp_path, imported):
    """A HF cache snapshot links its files into ../../blobs: that one way out is allowed."""
    import os

    repo = tmp_path / "models--x--tiny"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(FIXTURE / "t5_1_1" / name, repo / "blobs" / f"blob-{name}")
        os.symlink(os.path.join("..", "..", "blobs", f"blob-{name}"), snapshot / name)
    config, params = import_hf_t5(snapshot)
    assert config == imported["t5_1_1"][0]
    np.testing.assert_array_equal(params["token_embedder"]["embedding"],
                                  imported["t5_1_1"][1]["token_embedder"]["embedding"])
