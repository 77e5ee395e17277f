"""Reading T5X checkpoints (legacy msgpack + TensorStore, and orbax)."""
import json
import os

import numpy as np
import pytest

from personalize_t5x.network import checkpoint_importer as ci

from .helpers import fixture_config, fixture_dir, tiny_config


# ---------------------------------------------------------------------------
# Upstream T5X checkpoints (../shared fixture).
# ---------------------------------------------------------------------------
def _fixture_params():
    return dict(np.load(fixture_dir() / "params.npz"))


@pytest.mark.integration
@pytest.mark.parametrize("layout", ["checkpoint_legacy", "checkpoint_orbax"])
def test_every_t5x_param_is_read_exactly(layout):
    path = fixture_dir() / layout / "checkpoint_300"
    expected = _fixture_params()
    ckpt = ci.load_t5x_checkpoint(str(path), expected_shapes=ci.expected_param_shapes(fixture_config()))
    assert ckpt.format == layout.split("_")[1]
    assert ckpt.step == 300
    assert ckpt.optimizer_state is None
    flat = ci.flatten(ckpt.params)
    assert set(flat) == set(expected)
    for name, value in expected.items():
        assert flat[name].dtype == value.dtype, name
        np.testing.assert_array_equal(flat[name], value, err_msg=name)


@pytest.mark.integration
def test_param_names_shapes_match_params_tree_json():
    tree = json.loads((fixture_dir() / "params_tree.json").read_text())
    flat = ci.flatten(ci.load_t5x_params(str(fixture_dir() / "checkpoint_orbax" / "checkpoint_300")))
    assert {p["path"]: tuple(p["shape"]) for p in tree["params"]} == {k: v.shape for k, v in flat.items()}


@pytest.mark.integration
def test_optimizer_state_and_step_agree_between_layouts():
    tree = json.loads((fixture_dir() / "params_tree.json").read_text())
    legacy = ci.load_t5x_checkpoint(str(fixture_dir() / "checkpoint_legacy" / "checkpoint_300"),
                                    with_optimizer_state=True)
    orbax = ci.load_t5x_checkpoint(str(fixture_dir() / "checkpoint_orbax" / "checkpoint_300"),
                                   with_optimizer_state=True)
    a, b = ci.flatten(legacy.optimizer_state), ci.flatten(orbax.optimizer_state)
    expected = {p["path"][len("state/"):]: tuple(p["shape"]) for p in tree["optimizer_state"]}
    assert {k: tuple(np.shape(v)) for k, v in a.items()} == expected
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert int(a["step"]) == int(b["step"]) == legacy.step == orbax.step == 300


@pytest.mark.integration
def test_accepted_path_forms():
    d = fixture_dir()
    assert ci.resolve_checkpoint(str(d / "checkpoint_legacy" / "checkpoint_300" / "checkpoint"))[0] == "legacy"
    assert ci.resolve_checkpoint(str(d / "checkpoint_orbax" / "checkpoint_300" / "state"))[0] == "orbax"
    fmt, where = ci.resolve_checkpoint(str(d / "checkpoint_orbax"))  # a model dir: latest checkpoint_N
    assert fmt == "orbax" and where.endswith(os.path.join("checkpoint_300", "state"))
    assert ci.detect_format(str(d / "checkpoint_legacy")) == "legacy"


@pytest.mark.integration
def test_wrong_config_gives_one_line_errors():
    path = str(fixture_dir() / "checkpoint_legacy" / "checkpoint_300")
    cfg = fixture_config()
    cases = [
        (cfg.replace(vocab_size=256), r"parameter 'decoder/logits_dense/kernel' has shape \(32, 128\) but the model "
                                      r"expects \(32, 256\)"),
        (cfg.replace(num_decoder_layers=3), r"has no parameter 'decoder/layers_2/"),
        (cfg.replace(logits_via_embedding=True), r"has parameter 'decoder/logits_dense/kernel' that the model does not"),
    ]
    for bad, pattern in cases:
        for layout_path in (path, str(fixture_dir() / "checkpoint_orbax" / "checkpoint_300")):
            with pytest.raises(ci.CheckpointImportError, match=pattern) as info:
                ci.load_t5x_params(layout_path, expected_shapes=ci.expected_param_shapes(bad))
            assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------
# Self-made checkpoints of both layouts (run without ../shared).
# ---------------------------------------------------------------------------
PARAMS = {
    "token_embedder": {"embedding": np.arange(12, dtype=np.float32).reshape(4, 3)},
    "encoder": {"encoder_norm": {"scale": np.ones(3, np.float32)},
                "layers_0": {"mlp": {"wo": {"kernel": np.full((5, 3), 0.5, np.float32)}}}},
}
STATE = {
    "step": np.int32(7),
    "param_states": {
        "token_embedder": {"embedding": {"m": np.zeros(1, np.float32), "v": np.full((4, 3), 2.0, np.float32),
                                         "v_row": np.zeros(1, np.float32), "v_col": np.zeros(1, np.float32)}},
    },
}


def _write_legacy(ckpt_dir, inline=("encoder/encoder_norm/scale",)):
    import tensorstore as ts
    from flax import serialization

    os.makedirs(ckpt_dir)

    def store(tree, prefix):
        out = {}
        for key, value in tree.items():
            name = f"{prefix}/{key}"
            if isinstance(value, dict):
                out[key] = store(value, name)
            elif np.ndim(value) == 0 or name.split("/", 1)[1] in inline or value.shape == (1,):
                out[key] = value
            else:
                dotted = name.replace("/", ".")
                spec = {"driver": "zarr", "dtype": "float32", "kvstore": {"driver": "file", "path": dotted + "/"},
                        "metadata": {"shape": list(value.shape), "chunks": list(value.shape),
                                     "compressor": {"id": "gzip", "level": 1}}}
                absolute = dict(spec, kvstore={"driver": "file", "path": os.path.join(ckpt_dir, dotted)})
                ts.open(absolute, create=True, open=True).result().write(value).result()
                out[key] = spec
        return out

    tree = {"version": 3, "optimizer": {"target": store(PARAMS, "target"), "state": store(STATE, "state")}}
    with open(os.path.join(ckpt_dir, "checkpoint"), "wb") as f:
        f.write(serialization.msgpack_serialize(tree))


def _write_orbax(ckpt_dir):
    import orbax.checkpoint as ocp

    ocp.PyTreeCheckpointer().save(os.path.join(ckpt_dir, "state"), {"target": PARAMS, "state": STATE})


@pytest.mark.parametrize("writer", [_write_legacy, _write_orbax])
def test_round_trip_of_self_made_checkpoints(tmp_path, writer):
    ckpt_dir = str(tmp_path / "model" / "checkpoint_7")
    writer(ckpt_dir)
    ckpt = ci.load_t5x_checkpoint(ckpt_dir, with_optimizer_state=True,
                                  expected_shapes={"token_embedder/embedding": (4, 3),
                                                   "encoder/encoder_norm/scale": (3,),
                                                   "encoder/layers_0/mlp/wo/kernel": (5, 3)})
    assert ckpt.step == 7
    for name, value in ci.flatten(PARAMS).items():
        np.testing.assert_array_equal(ci.flatten(ckpt.params)[name], value)
    np.testing.assert_array_equal(ckpt.optimizer_state["param_states"]["token_embedder"]["embedding"]["v"],
                                  STATE["param_states"]["token_embedder"]["embedding"]["v"])
    # the model directory resolves to its latest checkpoint; dtype casting
    params = ci.load_t5x_params(str(tmp_path / "model"), dtype=np.float16)
    assert params["token_embedder"]["embedding"].dtype == np.float16


def test_expected_shapes_accept_nested_arrays(tmp_path):
    _write_legacy(str(tmp_path / "c"))
    ci.load_t5x_params(str(tmp_path / "c"), expected_shapes={"params": PARAMS})
    with pytest.raises(ci.CheckpointImportError, match="'encoder/layers_0/mlp/wo/kernel' has shape \\(5, 3\\)"):
        bad = {**PARAMS, "encoder": {**PARAMS["encoder"], "layers_0": {"mlp": {"wo": {"kernel": np.zeros((6, 3))}}}}}
        ci.load_t5x_params(str(tmp_path / "c"), expected_shapes=bad)


def test_missing_tensorstore_array_is_reported(tmp_path):
    import shutil

    _write_legacy(str(tmp_path / "c"))
    shutil.rmtree(tmp_path / "c" / "target.token_embedder.embedding")
    with pytest.raises(ci.CheckpointImportError, match="array directory for 'target/token_embedder/embedding'"):
        ci.load_t5x_params(str(tmp_path / "c"))


def test_bad_paths_give_one_line_errors(tmp_path):
    with pytest.raises(ci.CheckpointImportError, match="T5X checkpoint not found: .*nope"):
        ci.load_t5x_params(str(tmp_path / "nope"))
    with pytest.raises(ci.CheckpointImportError, match="not a T5X checkpoint"):
        ci.load_t5x_params(str(tmp_path))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ci.CheckpointImportError, match="a file other than a legacy 'checkpoint'"):
        ci.load_t5x_params(str(tmp_path / "weights.bin"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "checkpoint").write_bytes(b"\xc1 not msgpack")
    with pytest.raises(ci.CheckpointImportError, match="not a readable msgpack checkpoint"):
        ci.load_t5x_params(str(tmp_path / "broken"))
    with pytest.raises(ci.CheckpointImportError, match="only local paths"):
        ci.load_t5x_params("gs://bucket/checkpoint_1")


def test_expected_param_shapes_of_a_config():
    shapes = ci.expected_param_shapes(tiny_config())
    assert shapes["decoder/logits_dense/kernel"] == (32, 128)
    assert shapes["encoder/relpos_bias/rel_embedding"] == (4, 32)
    assert len(shapes) == 52


def _rewrite_spec(ckpt_dir, param, spec):
    """Replaces one array's TensorStore spec in a legacy checkpoint's msgpack."""
    from flax import serialization

    path = os.path.join(ckpt_dir, "checkpoint")
    with open(path, "rb") as f:
        tree = serialization.msgpack_restore(f.read())
    node = tree["optimizer"]["target"]
    *parents, leaf = param.split("/")
    for name in parents:
        node = node[name]
    node[leaf] = spec
    with open(path, "wb") as f:
        f.write(serialization.msgpack_serialize(tree))


def test_legacy_specs_are_confined_to_the_checkpoint_folder(tmp_path):
    """Issue 11 item 5: a crafted spec must not read files outside the checkpoint."""
    import shutil

    import tensorstore as ts

    outside = tmp_path / "outside"
    secret = np.arange(12, dtype=np.float32).reshape(4, 3)
    ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(outside / "arr")},
             "metadata": {"shape": [4, 3], "chunks": [4, 3], "dtype": "<f4"}},
            create=True, open=True).result().write(secret).result()
    (tmp_path / "secret.json").write_text('{"a": [1, 2]}')
    name = "token_embedder/embedding"
    good = {"driver": "zarr", "dtype": "float32", "kvstore": {"driver": "file", "path": "target.token_embedder.embedding/"}}
    cases = [
        ({**good, "kvstore": {"driver": "file", "path": str(outside / "arr")}}, "absolute path refused"),
        ({**good, "kvstore": {"driver": "file", "path": "../../outside/arr"}}, "climbs out"),
        ({**good, "kvstore": {"driver": "file", "path": ""}, "path": str(outside / "arr")}, "is absolute"),
        ({"driver": "json", "kvstore": {"driver": "file", "path": str(tmp_path / "secret.json")}}, "driver 'json'"),
        ({"driver": "cast", "kvstore": {"driver": "file", "path": "x"}, "base": good}, "driver 'cast'"),
        ({**good, "kvstore": {"driver": "memory", "path": "x"}}, "stored on 'memory'"),
        ({**good, "transform": {"input_shape": [4, 3]}}, "unexpected spec field 'transform'"),
        ({**good, "kvstore": {"driver": "file", "path": "x", "file_io_sync": False}}, "unexpected kvstore field"),
        ({**good, "kvstore": {"driver": "file", "path": "link/"}}, "outside the checkpoint folder"),
    ]
    for spec, message in cases:
        ckpt = tmp_path / "m" / "checkpoint_1"
        shutil.rmtree(tmp_path / "m", ignore_errors=True)
        _write_legacy(str(ckpt))
        os.symlink(outside / "arr", ckpt / "link")
        _rewrite_spec(str(ckpt), name, spec)
        with pytest.raises(ci.CheckpointImportError, match=message):
            ci.load_t5x_params(str(ckpt))
    # A symlinked chunk inside a genuine array folder is refused too.
    shutil.rmtree(tmp_path / "m")
    _write_legacy(str(ckpt))
    array_dir = ckpt / "target.token_embedder.embedding"
    chunk = next(p for p in array_dir.iterdir() if not p.name.startswith("."))
    chunk.unlink()
    os.symlink(next(p for p in (outside / "arr").iterdir() if not p.name.startswith(".")), chunk)
    with pytest.raises(ci.CheckpointImportError, match="outside the checkpoint folder"):
        ci.load_t5x_params(str(ckpt))
    # The genuine spec still reads.
    shutil.rmtree(tmp_path / "m")
    _write_legacy(str(ckpt))
    np.testing.assert_array_equal(ci.load_t5x_params(str(ckpt))["token_embedder"]["embedding"],
                                  PARAMS["token_embedder"]["embedding"])


def test_orbax_tree_keys_that_are_not_plain_names_are_refused(tmp_path):
    """Orbax names array files after tree keys; a '..' key must not reach a path."""
    import orbax.checkpoint as ocp

    state = str(tmp_path / "c" / "state")
    ocp.PyTreeCheckpointer().save(state, {"target": {"..": np.ones(3, np.float32), "ok": np.ones(2, np.float32)}})
    with pytest.raises(ci.CheckpointImportError, match=r"tree key 'target/\.\.' is not a plain name"):
        ci.load_t5x_params(str(tmp_path / "c"))
