"""Forward-pass parity with upstream T5X on ../shared/fixtures/t5x_tiny."""
import json

import jax
import numpy as np
import pytest
from flax import traverse_util

from personalize_t5x.trainer import models as encoder_decoder

from personalize_t5x.network import t5

from .helpers import (
    fixture_array,
    fixture_config,
    fixture_dir,
    fixture_inputs,
    fixture_params,
    param_shapes,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def model():
    return encoder_decoder.EncoderDecoderModel(t5.Transformer(fixture_config()), z_loss=1e-4)


def test_param_tree_names_shapes_and_logical_axes_match_t5x(model):
    tree = json.loads((fixture_dir() / "params_tree.json").read_text())
    variables = param_shapes(model.config)
    params = {"/".join(k): v for k, v in traverse_util.flatten_dict(variables["params"]).items()}
    axes = {"/".join(k): v for k, v in traverse_util.flatten_dict(variables["params_axes"]).items()}
    expected = {p["path"]: p for p in tree["params"]}
    assert set(params) == set(expected)
    for path, spec in expected.items():
        assert params[path].shape == tuple(spec["shape"]), path
        assert str(params[path].dtype) == spec["dtype"], path
        *parent, leaf = path.split("/")
        assert tuple(axes["/".join(parent + [leaf + "_axes"])].names) == tuple(spec["logical_axes"]), path
    assert sum(v.size for v in params.values()) == tree["num_params"] == model.config.num_params


def test_logits_match_t5x_including_padded_positions(model):
    inputs = fixture_inputs()
    logits = model.compute_logits(fixture_params(), inputs)
    assert logits.dtype == np.float32
    np.testing.assert_allclose(np.asarray(logits), fixture_array("logits.npy"), atol=1e-4, rtol=1e-4)


def test_encoder_output_matches_t5x(model):
    inputs = fixture_inputs()
    encoded = model.module.apply(
        {"params": fixture_params()},
        inputs["encoder_input_tokens"],
        enable_dropout=False,
        method=model.module.encode,
    )
    np.testing.assert_allclose(np.asarray(encoded), fixture_array("encoded.npy"), atol=1e-4, rtol=1e-4)


def test_score_batch_matches_t5x(model):
    scores = model.score_batch(fixture_params(), fixture_inputs())
    np.testing.assert_allclose(np.asarray(scores), fixture_array("score_batch.npy"), atol=1e-4, rtol=1e-4)


def test_jitted_forward_matches_t5x(model):
    logits = jax.jit(model.compute_logits)(fixture_params(), fixture_inputs())
    np.testing.assert_allclose(np.asarray(logits), fixture_array("logits.npy"), atol=1e-4, rtol=1e-4)


def test_teacher_forced_loss_is_consistent_with_score_batch(model):
    params, batch = fixture_params(), fixture_inputs()
    loss, metrics = model.loss_fn(params, batch, None)
    # Without z-loss and label smoothing the loss is minus the summed score.
    plain = encoder_decoder.EncoderDecoderModel(model.module)
    plain_loss, _ = plain.loss_fn(params, batch, None)
    np.testing.assert_allclose(float(plain_loss), -float(np.sum(fixture_array("score_batch.npy"))), rtol=1e-5)
    assert float(loss) > float(plain_loss)  # z-loss adds a positive term
    np.testing.assert_allclose(float(metrics["cross_ent_loss"]), float(plain_loss), rtol=1e-5)
    assert float(metrics["num_tokens"]) == float(batch["decoder_loss_weights"].sum())
