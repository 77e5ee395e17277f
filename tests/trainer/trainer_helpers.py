"""Shared pieces of the trainer tests: a tiny real T5 model and a fixed batch."""
import numpy as np

from personalize_t5x.trainer import models as encoder_decoder

from personalize_t5x.network import t5

VOCAB = 128


def tiny_model(*, dropout_rate: float = 0.0, loss_normalizing_factor=None, layers: int = 1):
    """A real T5 1.1 network, small enough to compile in seconds on CPU."""
    config = t5.T5Config(vocab_size=VOCAB, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
                         num_encoder_layers=layers, num_decoder_layers=layers,
                         mlp_activations=("gelu", "linear"), dropout_rate=dropout_rate)
    return encoder_decoder.EncoderDecoderModel(t5.Transformer(config), z_loss=1e-4,
                                               loss_normalizing_factor=loss_normalizing_factor)


def packed_batch(batch_size: int = 8, length: int = 16, seed: int = 0) -> dict:
    """A packed batch as EncDecFeatureConverter(pack=True) lays it out: two segments per row."""
    rng = np.random.RandomState(seed)
    half = length // 2
    enc = rng.randint(2, VOCAB, (batch_size, length)).astype(np.int32)
    tgt = rng.randint(2, VOCAB, (batch_size, length)).astype(np.int32)
    tgt[:, -3:] = 0  # padding at the end of each row
    seg = np.concatenate([np.ones((batch_size, half)), 2 * np.ones((batch_size, length - half))], 1).astype(np.int32)
    pos = np.concatenate([np.arange(half), np.arange(length - half)])[None].repeat(batch_size, 0).astype(np.int32)
    dec_in = np.concatenate([np.zeros((batch_size, 1), np.int32), tgt[:, :-1]], 1)
    dec_in[:, half] = 0  # each packed segment starts from 0
    dec_seg = np.where(tgt > 0, seg, 0).astype(np.int32)
    return {"encoder_input_tokens": enc, "encoder_segment_ids": seg, "encoder_positions": pos,
            "decoder_target_tokens": tgt, "decoder_input_tokens": dec_in * (tgt > 0),
            "decoder_segment_ids": dec_seg, "decoder_positions": pos * (tgt > 0),
            "decoder_loss_weights": (tgt > 0).astype(np.int32)}


def input_shapes(batch: dict) -> dict:
    return {k: v.shape for k, v in batch.items()}
