"""Beam search, greedy and temperature sampling with the KV cache."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from personalize_t5x.trainer import decoding, models as encoder_decoder

from personalize_t5x.network import t5

from .helpers import (
    fixture_array,
    fixture_config,
    fixture_inputs,
    fixture_params,
    random_batch,
    random_params,
    tiny_config,
)


@functools.lru_cache(maxsize=None)
def _predict_fn(config, **static):
    model = encoder_decoder.EncoderDecoderModel(t5.Transformer(config))
    return jax.jit(functools.partial(model.predict_batch_with_aux, **static))


def predict(config, params, batch, rng=None, **static):
    return _predict_fn(config, **static)(params, batch, rng)


# ---------------------------------------------------------------------------
# Parity with upstream T5X.
# ---------------------------------------------------------------------------
def fixture_beam():
    return predict(fixture_config(), fixture_params(), fixture_inputs(), method="beam", return_all_decodes=True)


@pytest.mark.integration
def test_beam_search_all_decodes_match_t5x():
    tokens, aux = fixture_beam()
    np.testing.assert_array_equal(np.asarray(tokens), fixture_array("beam_all_tokens.npy"))
    np.testing.assert_allclose(np.asarray(aux["scores"]), fixture_array("beam_all_scores.npy"), atol=1e-4, rtol=1e-4)
    # Row 0 has only two finished hypotheses: the empty slots are zeros at NEG_INF.
    assert np.all(np.asarray(tokens)[0, :2] == 0)
    assert np.all(np.asarray(aux["scores"])[0, :2] == np.float32(decoding.NEG_INF))


@pytest.mark.integration
def test_beam_search_top_decode_matches_t5x():
    # (return_all_decodes=False only slices the best beam: see the greedy test for that path)
    tokens, aux = fixture_beam()
    np.testing.assert_array_equal(np.asarray(tokens)[:, -1], fixture_array("beam_tokens.npy"))
    np.testing.assert_allclose(np.asarray(aux["scores"])[:, -1], fixture_array("beam_scores.npy"), atol=1e-4,
                               rtol=1e-4)


@pytest.mark.integration
def test_greedy_matches_t5x():
    tokens, aux = predict(fixture_config(), fixture_params(), fixture_inputs(), method="greedy")
    np.testing.assert_array_equal(np.asarray(tokens), fixture_array("greedy_tokens.npy"))
    np.testing.assert_allclose(np.asarray(aux["scores"]), fixture_array("greedy_scores.npy"), atol=1e-4, rtol=1e-4)


@pytest.mark.integration
def test_t5x_style_decoder_params_call_matches_fixture():
    """predict_batch_with_aux(decoder_params=...) with decode_fn=temperature_sample, as T5X calls it."""
    model = encoder_decoder.EncoderDecoderModel(t5.Transformer(fixture_config()), decode_fn=decoding.temperature_sample)
    fn = jax.jit(lambda p, b, rng: model.predict_batch_with_aux(
        p, b, rng=rng, num_decodes=1, decoder_params={"temperature": 0.0, "rescale_log_probs": False}))
    tokens, aux = fn(fixture_params(), fixture_inputs(), jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(tokens), fixture_array("greedy_tokens.npy"))
    np.testing.assert_allclose(np.asarray(aux["scores"]), fixture_array("greedy_scores.npy"), atol=1e-4)


# ---------------------------------------------------------------------------
# Properties on a random tiny model (no fixture needed).
# ---------------------------------------------------------------------------
# The fixture's architecture and batch shapes, so compiled decoders are shared with the parity tests.
CFG = tiny_config()
PARAMS = random_params(CFG, seed=3, scale=1.5)
BATCH = random_batch(7, batch=3, inputs_len=16, targets_len=12)


MODEL = encoder_decoder.EncoderDecoderModel(t5.Transformer(CFG))
_logits = jax.jit(MODEL.compute_logits)


def _logprob_of(params, batch, tokens):
    """Teacher-forced log-probability of decodes, through the first EOS (or all positions).

    The masks are built from all-ones targets so that a decoded 0 mid-sequence is
    not mistaken for padding (decoding never masks decoded positions).
    """
    tokens = np.asarray(tokens)
    dec_in = np.zeros_like(tokens)
    dec_in[:, 1:] = tokens[:, :-1]
    is_eos = tokens == 1
    upto_eos = (np.cumsum(is_eos, axis=1) - is_eos) == 0
    logits = _logits(params, {"encoder_input_tokens": batch["encoder_input_tokens"], "decoder_input_tokens": dec_in,
                              "decoder_target_tokens": np.ones_like(tokens)})
    token_lp = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), tokens[..., None], axis=-1)[..., 0]
    return (token_lp * upto_eos).sum(axis=1)


def test_cached_decoding_reproduces_teacher_forced_logits():
    model = MODEL
    batch = {k: v.copy() for k, v in BATCH.items()}
    batch["decoder_target_tokens"] = np.where(batch["decoder_target_tokens"] == 0, 5, batch["decoder_target_tokens"])
    batch["decoder_input_tokens"][:, 1:] = batch["decoder_target_tokens"][:, :-1]
    full = np.asarray(_logits(PARAMS, batch))
    length = batch["decoder_input_tokens"].shape[1]
    encoded = jax.jit(lambda p, x: model.module.apply({"params": p}, x, enable_dropout=False,
                                                      method=model.module.encode))(PARAMS, batch["encoder_input_tokens"])
    cache = jax.jit(model.init_cache, static_argnums=2)(PARAMS, batch["encoder_input_tokens"], length)
    step = jax.jit(lambda cache, tok: model._compute_logits_from_slice(
        decoding.DecodingState(cur_index=None, sequences=None, cur_token=tok, cache=cache),
        PARAMS, encoded, batch["encoder_input_tokens"], length))
    steps = []
    for i in range(length):
        logits, cache = step(cache, batch["decoder_input_tokens"][:, i : i + 1])
        steps.append(np.asarray(logits))
    np.testing.assert_allclose(np.stack(steps, 1), full, atol=1e-4, rtol=1e-4)


def test_beam_search_scores_are_consistent_and_sorted():
    tokens, aux = predict(CFG, PARAMS, BATCH, method="beam", return_all_decodes=True)
    tokens, scores = np.asarray(tokens), np.asarray(aux["scores"])
    assert tokens.shape == (3, 4, 12) and scores.shape == (3, 4)
    assert np.all(np.diff(scores, axis=1) >= 0), "beams must be sorted ascending"
    logps = np.stack([_logprob_of(PARAMS, BATCH, tokens[:, k]) for k in range(4)], axis=1)
    checked_finished = 0
    for b in range(3):
        finished_row = (tokens[b] == 1).any()
        for k in range(4):
            seq = tokens[b, k]
            if not finished_row:
                # Nothing finished: the live beams come back with raw log-probs.
                np.testing.assert_allclose(scores[b, k], logps[b, k], atol=1e-4, rtol=1e-4)
                continue
            if scores[b, k] <= decoding.NEG_INF / 2:
                assert not seq.any(), "an empty finished slot is all zeros"
                continue
            eos = np.flatnonzero(seq == 1)
            assert eos.size, "a finished hypothesis ends with EOS"
            length = eos[0] + 1
            assert not seq[length:].any(), "tokens after EOS are 0"
            np.testing.assert_allclose(scores[b, k], logps[b, k] / ((5.0 + length) / 6.0) ** 0.6, atol=1e-4,
                                       rtol=1e-4)
            checked_finished += 1
    assert checked_finished > 0


def test_greedy_scores_are_the_log_probs_of_the_decodes():
    greedy_tokens, greedy_aux = predict(CFG, PARAMS, BATCH, method="greedy")
    assert np.asarray(greedy_tokens).shape == (3, 12)
    logp = _logprob_of(PARAMS, BATCH, np.asarray(greedy_tokens))
    np.testing.assert_allclose(np.asarray(greedy_aux["scores"]), logp, atol=1e-4, rtol=1e-4)


@functools.lru_cache(maxsize=None)
def _sampler():
    """One compiled sampler; temperature, topk and topp are traced arguments."""
    def run(params, batch, rng, temperature, topk, topp):
        return MODEL.predict_batch_with_aux(params, batch, rng, num_decodes=2, return_all_decodes=True,
                                            method="sample", temperature=temperature, topk=topk, topp=topp)
    return jax.jit(run)


def sample(rng, temperature=1.0, topk=0, topp=0.0):
    tokens, aux = _sampler()(PARAMS, BATCH, jax.random.PRNGKey(rng), jnp.float32(temperature), jnp.int32(topk),
                             jnp.float32(topp))
    return np.asarray(tokens), np.asarray(aux["scores"])


def test_sampling_is_reproducible_and_rng_dependent():
    t1, s1 = sample(1)
    t2, _ = sample(1)
    t3, _ = sample(2)
    np.testing.assert_array_equal(t1, t2)
    assert not np.array_equal(t1, t3)
    assert t1.shape == (3, 2, 12)
    assert np.all(np.diff(s1, axis=1) >= 0)
    # With rescale_log_probs=False the scores are the model's log-probs of the samples.
    for k in range(2):
        np.testing.assert_allclose(s1[:, k], _logprob_of(PARAMS, BATCH, t1[:, k]), atol=1e-4, rtol=1e-4)


def test_sampling_with_top1_or_zero_temperature_is_greedy():
    greedy, greedy_aux = predict(CFG, PARAMS, BATCH, method="greedy")
    greedy = np.asarray(greedy)
    for tokens, scores in (sample(5, temperature=3.0, topk=1), sample(5, temperature=0.0)):
        for k in range(2):
            np.testing.assert_array_equal(tokens[:, k], greedy)
            np.testing.assert_allclose(scores[:, k], np.asarray(greedy_aux["scores"]), atol=1e-5)


def test_topp_sampling_keeps_the_nucleus():
    # A tiny nucleus is greedy; the full one differs from greedy somewhere.
    greedy = np.asarray(predict(CFG, PARAMS, BATCH, method="greedy")[0])
    tokens, _ = sample(3, temperature=1.0, topp=1e-6)
    for k in range(2):
        np.testing.assert_array_equal(tokens[:, k], greedy)
    wide = [sample(seed, temperature=2.0, topp=0.999)[0] for seed in range(3)]
    assert any(not np.array_equal(w[:, k], greedy) for w in wide for k in range(2))


# ---------------------------------------------------------------------------
# Decoding functions on a toy next-token table (no network; fast to compile).
# ---------------------------------------------------------------------------
# Row = previous token, column = next token. EOS (1) is likely only after 3.
TOY_TABLE = np.log(np.array([
    [0.01, 0.01, 0.28, 0.70],   # after BOS/0
    [0.97, 0.01, 0.01, 0.01],   # after EOS
    [0.01, 0.09, 0.10, 0.80],   # after 2
    [0.01, 0.90, 0.04, 0.05],   # after 3
], np.float32))


def jitted(fn, **static):
    """``fn(inputs, cache, **static)`` compiled once (eager dispatch is slow on CPU)."""
    return jax.jit(lambda inputs, cache: fn(inputs, cache, **static))


def toy_tokens_to_logits(state):
    # The "cache" counts the calls, to check it is threaded through.
    return jnp.asarray(TOY_TABLE)[state.cur_token[:, 0]], {"calls": state.cache["calls"] + 1}


def test_beam_search_on_a_toy_table_finds_the_best_sequence():
    inputs = jnp.zeros((2, 4), jnp.int32)
    tokens, scores = jitted(decoding.beam_search, tokens_to_logits=toy_tokens_to_logits, eos_id=1, num_decodes=3,
                            alpha=0.6)(inputs, {"calls": jnp.zeros((2,))})
    np.testing.assert_array_equal(np.asarray(tokens)[:, -1], [[3, 1, 0, 0]] * 2)
    expected = (np.log(0.7) + np.log(0.9)) / ((5 + 2) / 6) ** 0.6
    np.testing.assert_allclose(np.asarray(scores)[:, -1], expected, rtol=1e-5)


def test_greedy_reports_zero_scores_when_rescaling_and_log_probs_otherwise():
    inputs = jnp.zeros((1, 4), jnp.int32)
    cache = {"calls": jnp.zeros((1,))}
    for rescale, expected in ((True, 0.0), (False, np.log(0.7) + np.log(0.9))):
        tokens, scores = jitted(decoding.temperature_sample, tokens_to_logits=toy_tokens_to_logits, eos_id=1,
                                temperature=0.0, rescale_log_probs=rescale)(inputs, cache)
        np.testing.assert_array_equal(np.asarray(tokens), [[[3, 1, 0, 0]]])
        np.testing.assert_allclose(np.asarray(scores), [[expected]], rtol=1e-5)


def test_per_example_temperatures():
    inputs = jnp.zeros((2, 4), jnp.int32)
    cache = {"calls": jnp.zeros((2,))}
    run = jax.jit(lambda temps, rng: decoding.temperature_sample(
        inputs, cache, toy_tokens_to_logits, eos_id=1, temperature=temps, topk=0, decode_rng=rng, num_decodes=8))
    tokens, _ = run(jnp.array([0.0, 0.0]), jax.random.PRNGKey(0))
    assert np.all(np.asarray(tokens) == np.array([3, 1, 0, 0]))
    # Row 0 greedy, row 1 hot: only row 1 varies across its 8 samples.
    tokens, _ = run(jnp.array([0.0, 5.0]), jax.random.PRNGKey(0))
    tokens = np.asarray(tokens)
    assert np.all(tokens[0] == np.array([3, 1, 0, 0]))
    assert len({tuple(t) for t in tokens[1]}) > 1


def test_forced_prompt_is_kept_and_not_scored():
    # Prompt: BOS slot, then 2 2 forced; decoding continues after it.
    inputs = jnp.array([[0, 2, 2, 0, 0, 0]], jnp.int32)
    cache = {"calls": jnp.zeros((1,))}
    tokens, scores = jitted(decoding.temperature_sample, tokens_to_logits=toy_tokens_to_logits, eos_id=1,
                            temperature=0.0, rescale_log_probs=False)(inputs, cache)
    np.testing.assert_array_equal(np.asarray(tokens), [[[2, 2, 3, 1, 0, 0]]])
    np.testing.assert_allclose(np.asarray(scores), [[np.log(0.8) + np.log(0.9)]], rtol=1e-5)
    tokens, _ = jitted(decoding.beam_search, tokens_to_logits=toy_tokens_to_logits, eos_id=1, num_decodes=2)(
        inputs, cache)
    np.testing.assert_array_equal(np.asarray(tokens)[0, -1], [2, 2, 3, 1, 0, 0])


def test_sampling_without_eos_fills_the_length_and_max_decode_steps_limits_it():
    never_eos = lambda state: (jnp.where(jnp.arange(4) == 2, 0.0, -1e9)[None].repeat(  # noqa: E731
        state.cur_token.shape[0], 0), state.cache)
    inputs = jnp.zeros((2, 5), jnp.int32)
    tokens, _ = jitted(decoding.temperature_sample, tokens_to_logits=never_eos, eos_id=1, temperature=0.0)(inputs, {})
    np.testing.assert_array_equal(np.asarray(tokens)[:, 0], [[2] * 5] * 2)
    tokens, _ = jitted(decoding.temperature_sample, tokens_to_logits=never_eos, eos_id=1, temperature=0.0,
                       max_decode_steps=2)(inputs, {})
    np.testing.assert_array_equal(np.asarray(tokens)[:, 0], [[2, 2, 0, 0, 0]] * 2)


def test_num_decodes_expands_the_cache_per_example():
    inputs = jnp.zeros((2, 4), jnp.int32)
    cache = {"layer": {"cached_key": jnp.arange(2.0)[:, None], "cache_index": jnp.array(0)}}

    def fn(state):
        # Each flattened row must see its own example's cache entry.
        example = state.cache["layer"]["cached_key"][:, 0].astype(jnp.int32)
        logits = jnp.where(jnp.arange(4)[None] == 2 + example[:, None], 0.0, -1e9)
        return logits, state.cache

    tokens, _ = jitted(decoding.temperature_sample, tokens_to_logits=fn, eos_id=1, temperature=0.0, num_decodes=3)(
        inputs, cache)
    tokens = np.asarray(tokens)
    assert tokens.shape == (2, 3, 4)
    assert np.all(tokens[0] == 2) and np.all(tokens[1] == 3)


def test_topk_and_topp_masks():
    logits = jnp.array([[1.0, 3.0, 2.0, 0.0], [0.0, 0.0, 5.0, 1.0]])
    m = np.asarray(decoding.topk_mask(logits, 2))
    assert (m > -1e6).tolist() == [[False, True, True, False], [False, False, True, True]]
    np.testing.assert_array_equal(m[m > -1e6], np.asarray(logits)[m > -1e6])
    ties = np.asarray(decoding.topk_mask(jnp.array([[2.0, 1.0, 1.0, 0.0]]), 2))
    assert (ties > -1e6).tolist() == [[True, True, True, False]]  # ties at the k-th value are kept
    traced = jax.jit(decoding.topk_mask)(logits, jnp.array(2))
    np.testing.assert_array_equal(np.asarray(traced), m)
    p = np.asarray(decoding.topp_mask(jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]])), 0.7))
    assert (p[0] > -1e6).tolist() == [True, True, False, False]
    p = np.asarray(decoding.topp_mask(jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]])), 0.0))
    assert (p[0] > -1e6).all()


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="unknown decoding method"):
        MODEL.predict_batch(PARAMS, BATCH, method="nucleus")
