"""gin/models/t5_1_1_*.gin parse and build the model with the right sizes."""
from shared_paths import REPO_ROOT  # noqa: E402
import pathlib

import gin
import jax.numpy as jnp
import pytest

from personalize_t5x.trainer import models as encoder_decoder

from personalize_t5x.network import t5

from .helpers import tiny_config

GIN_DIR = REPO_ROOT / "gin" / "models"

# Published T5 1.1 parameter counts (vocab 32128).
SIZES = {
    "tiny": 57_984,
    "small": 76_961_152,
    "base": 247_577_856,
    "large": 783_150_080,
    "xl": 2_849_757_184,
    "xxl": 11_135_332_352,
}


def build(name, bindings=()):
    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings([str(GIN_DIR / f"t5_1_1_{name}.gin")], list(bindings))
        model = gin.get_configurable("MODEL/macro")()
        config = gin.get_configurable("MODEL_CONFIG/macro")()
    finally:
        gin.clear_config()
    return model, config


@pytest.mark.parametrize("name", sorted(SIZES))
def test_model_gin_builds_the_model(name):
    model, config = build(name)
    assert isinstance(model, encoder_decoder.EncoderDecoderModel)
    assert isinstance(model.module, t5.Transformer)
    assert model.module.config == config
    assert config.num_params == SIZES[name]
    assert config.mlp_activations == ("gelu", "linear")
    assert config.dropout_rate == 0.0
    assert model.z_loss == 1e-4 and model.label_smoothing == 0.0 and model.loss_normalizing_factor is None
    assert config.vocab_size == (128 if name == "tiny" else 32128)
    assert config.dtype is (jnp.float32 if name == "tiny" else jnp.bfloat16)


def test_tiny_gin_is_the_fixture_config():
    _, config = build("tiny")
    assert config == tiny_config()


def test_macros_override_dropout_and_vocab_size():
    model, config = build("small", ["DROPOUT_RATE = 0.1", "VOCAB_SIZE = 4096", "Z_LOSS = 0.0"])
    assert config.dropout_rate == 0.1 and config.vocab_size == 4096 and model.z_loss == 0.0


def test_every_model_gin_documents_its_macros():
    for path in GIN_DIR.glob("t5_1_1_*.gin"):
        head = path.read_text().split("from __gin__")[0]
        for word in ("MODEL_CONFIG", "MODEL ", "DROPOUT_RATE", "VOCAB_SIZE"):
            assert word in head, (path.name, word)
