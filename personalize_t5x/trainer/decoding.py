"""Autoregressive decoding with a key-value cache: beam search and sampling.

Both functions follow T5X's ``t5x/decoding.py`` contract, so results agree
with T5X token for token:

* ``tokens_to_logits(state: DecodingState) -> (logits [batch, vocab], cache)``
  runs one decoder step on ``state.cur_token`` ([batch, 1]) with
  ``state.cache``;
* ``inputs`` is ``[batch, length]``: all zeros for unprompted decoding, or a
  prompt whose non-zero tokens are forced (position 0 is the BOS slot and is
  ignored);
* results are ``[batch, num_decodes, length]`` tokens and ``[batch,
  num_decodes]`` scores sorted by **ascending** score, best last; tokens after
  EOS are 0.

Beam search scores are length-normalized log-probabilities,
``logp / ((5 + L) / 6) ** alpha`` with L the number of generated tokens
including EOS.  Finished slots that never received a hypothesis keep all-zero
tokens and score ``NEG_INF`` (-1e7); a batch row with no finished hypothesis at
all returns its live beams and their raw log-probabilities instead.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional, Tuple, Union

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax import lax

PyTree = Any

# Effective -inf used to mask candidates (T5X's value).
NEG_INF = np.array(-1.0e7)
# Temperatures at or below this are treated as greedy (argmax) decoding.
MIN_TEMPERATURE = np.array(1e-4)


@flax.struct.dataclass
class DecodingState:
    """What a ``tokens_to_logits`` callback sees at one decoding step.

    Attributes:
      cur_index: current position in the length dimension (scalar for beam
        search, ``[batch * num_decodes]`` for sampling).
      sequences: ``[batch * num_decodes, length]`` tokens decoded so far.
      cur_token: ``[batch * num_decodes, 1]`` token to feed at this step.
      cache: the flax ``cache`` collection, batch flattened with decodes.
    """

    cur_index: jax.Array
    sequences: jax.Array
    cur_token: jax.Array
    cache: Mapping[str, Any]


TokensToLogits = Callable[[DecodingState], Tuple[jax.Array, Mapping[str, Any]]]


# ---------------------------------------------------------------------------
# Beam / cache reshaping helpers.
# ---------------------------------------------------------------------------
def add_beam_dim(x: jax.Array, beam_size: int, offset: int = 0) -> jax.Array:
    """``[batch, ...] -> [batch, beam, ...]`` by tiling (axis ``offset + 1``)."""
    x = jnp.expand_dims(x, axis=offset + 1)
    reps = [1] * x.ndim
    reps[offset + 1] = beam_size
    return jnp.tile(x, reps)


def flatten_beam_dim(x: jax.Array, offset: int = 0) -> jax.Array:
    """``[batch, beam, ...] -> [batch * beam, ...]``."""
    shape = list(x.shape)
    beam = shape.pop(offset + 1)
    shape[offset] *= beam
    return x.reshape(shape)


def unflatten_beam_dim(x: jax.Array, batch_size: int, beam_size: int, offset: int = 0) -> jax.Array:
    """``[batch * beam, ...] -> [batch, beam, ...]``."""
    if x.shape[offset] != batch_size * beam_size:
        raise ValueError(f"axis {offset} of shape {x.shape} is not {batch_size} x {beam_size}")
    shape = list(x.shape)
    return x.reshape(shape[:offset] + [batch_size, beam_size] + shape[offset + 1 :])


def flat_batch_beam_expand(x: jax.Array, beam_size: int, offset: int = 0) -> jax.Array:
    """Repeats each batch item ``beam_size`` times in place: [a, b] -> [a, a, b, b]."""
    return flatten_beam_dim(add_beam_dim(x, beam_size, offset), offset)


_CACHE_LEAVES_NOT_MAPPED = ("cached_bias", "position_embedder_index")


def cache_map(fn: Callable[[jax.Array], jax.Array], cache: PyTree, apply_to_index: bool = False) -> PyTree:
    """Applies ``fn`` to every per-example cache array.

    ``cache_index`` leaves (scalars shared by the batch) are left alone unless
    ``apply_to_index``.
    """
    frozen = isinstance(cache, flax.core.FrozenDict)
    if frozen:
        cache = flax.core.unfreeze(cache)
    flat = traverse_util.flatten_dict(cache)
    mapped = {}
    for k, v in flat.items():
        if k[-1] in _CACHE_LEAVES_NOT_MAPPED or (k[-1] == "cache_index" and not apply_to_index):
            mapped[k] = v
        else:
            mapped[k] = fn(v)
    out = traverse_util.unflatten_dict(mapped)
    return flax.core.freeze(out) if frozen else out


def gather_beams(
    nested: PyTree,
    beam_indices: jax.Array,
    batch_size: int,
    old_beam_size: int,
    new_beam_size: int,
    one_hot: bool = False,
) -> PyTree:
    """Selects ``[batch, old_beam, ...] -> [batch, new_beam, ...]`` by beam index.

    An indexed gather by default: it reads each selected row once, where T5X's one-hot
    contraction (``one_hot=True``, kept for TPU-style partitioning) reads every old
    beam for every new one. The values are the same (a one-hot sum adds exact zeros).
    """
    if one_hot:
        oh = jax.nn.one_hot(beam_indices, old_beam_size, dtype=jnp.int32)

        def gather(x):
            return jnp.einsum("beo,bo...->be...", oh, x).astype(x.dtype)

    else:
        batch_idx = jnp.reshape(
            jnp.arange(batch_size * new_beam_size) // new_beam_size, (batch_size, new_beam_size)
        )

        def gather(x):
            return x[batch_idx, beam_indices]

    return jax.tree_util.tree_map(gather, nested)


def cache_gather_beams(
    cache: PyTree,
    beam_indices: jax.Array,
    batch_size: int,
    old_beam_size: int,
    new_beam_size: int,
    one_hot: bool = False,
    offset: int = 0,
) -> PyTree:
    """``gather_beams`` over the cache (skipping scalar indices): the largest copy of
    each beam-search step, so the gather form matters most here."""
    if offset not in (0, 1):
        raise ValueError("cache offset must be 0 or 1")
    if one_hot:
        oh = jax.nn.one_hot(beam_indices, old_beam_size, dtype=jnp.int32)
        spec = "beo,bo...->be..." if offset == 0 else "beo,lbo...->lbe..."

        def gather(x):
            return jnp.einsum(spec, oh, x).astype(x.dtype)

    else:
        batch_idx = jnp.reshape(
            jnp.arange(batch_size * new_beam_size) // new_beam_size, (batch_size, new_beam_size)
        )

        def gather(x):
            return x[batch_idx, beam_indices] if offset == 0 else x[:, batch_idx, beam_indices]

    return cache_map(gather, cache)


def gather_topk_beams(
    nested: PyTree, score_or_log_prob: jax.Array, batch_size: int, new_beam_size: int
) -> PyTree:
    """Keeps the ``new_beam_size`` best beams, in ascending score order."""
    _, idx = lax.top_k(score_or_log_prob, k=new_beam_size)
    idx = jnp.flip(idx, axis=1)
    return gather_beams(nested, idx, batch_size, score_or_log_prob.shape[1], new_beam_size)


def brevity_penalty(alpha: Union[float, jax.Array], length: Union[int, jax.Array]) -> jax.Array:
    """GNMT length penalty ``((5 + length) / 6) ** alpha``."""
    return jnp.power((5.0 + length) / 6.0, alpha)


# ---------------------------------------------------------------------------
# Beam search.
# ---------------------------------------------------------------------------
@flax.struct.dataclass
class BeamState:
    """Loop state of ``beam_search``."""

    cur_index: jax.Array  # scalar: position being decoded
    live_logprobs: jax.Array  # [batch, beam]
    finished_scores: jax.Array  # [batch, beam]
    live_seqs: jax.Array  # [batch, beam, length + 1]
    finished_seqs: jax.Array  # [batch, beam, length + 1]
    finished_flags: jax.Array  # [batch, beam] slot holds a real hypothesis
    cache: PyTree


def beam_init(batch_size: int, beam_size: int, max_decode_len: int, cache: PyTree, offset: int = 0) -> BeamState:
    """Initial state: one live beam (log-prob 0), the others at NEG_INF."""
    live = jnp.tile(jnp.array([0.0] + [NEG_INF] * (beam_size - 1), jnp.float32), [batch_size, 1])
    return BeamState(
        cur_index=jnp.array(0),
        live_logprobs=live,
        finished_scores=jnp.ones((batch_size, beam_size), jnp.float32) * NEG_INF.astype(np.float32),
        live_seqs=jnp.zeros((batch_size, beam_size, max_decode_len), jnp.int32),
        finished_seqs=jnp.zeros((batch_size, beam_size, max_decode_len), jnp.int32),
        finished_flags=jnp.zeros((batch_size, beam_size), jnp.bool_),
        cache=cache_map(lambda x: add_beam_dim(x, beam_size, offset), cache),
    )


def beam_search(
    inputs: jax.Array,
    cache: PyTree,
    tokens_to_logits: TokensToLogits,
    eos_id: int,
    num_decodes: int = 4,
    alpha: float = 0.6,
    max_decode_len: Optional[int] = None,
    decode_rng: Optional[jax.Array] = None,
    cache_offset: int = 0,
) -> Tuple[jax.Array, jax.Array]:
    """Beam search (T5X semantics).

    Args:
      inputs: ``[batch, length]`` int32; non-zero entries after position 0 are a
        forced prompt, zeros are decoded.
      cache: the decoder's initialized ``cache`` collection (batch-sized).
      tokens_to_logits: one-step decoder, see module docstring.
      eos_id: end-of-sequence id.
      num_decodes: beam size.
      alpha: brevity-penalty exponent.
      max_decode_len: defaults to ``inputs.shape[1]``.
      decode_rng: unused (interface compatibility).
      cache_offset: 1 when cache arrays carry a leading layer axis.

    Returns:
      ``([batch, beam, length] tokens, [batch, beam] scores)``, ascending.
    """
    del decode_rng
    beam_size = num_decodes
    batch_size = inputs.shape[0]
    if max_decode_len is None:
        max_decode_len = inputs.shape[1]
    # Position 0 holds a dummy BOS token.
    max_decode_len += 1
    end_marker = jnp.array(eos_id)
    neg_inf = NEG_INF.astype(np.float32)

    def cond_fn(state: BeamState) -> jax.Array:
        not_at_end = state.cur_index < max_decode_len - 1
        # Best score any live beam could still reach vs. worst finished one.
        best_live = state.live_logprobs[:, -1:] / brevity_penalty(alpha, max_decode_len)
        worst_finished = jnp.min(state.finished_scores, axis=1, keepdims=True)
        worst_finished = jnp.where(state.finished_flags, worst_finished, neg_inf)
        done = jnp.all(worst_finished > best_live)
        return not_at_end & ~done

    def body_fn(state: BeamState) -> BeamState:
        flat_ids = flatten_beam_dim(
            lax.dynamic_slice(state.live_seqs, (0, 0, state.cur_index), (batch_size, beam_size, 1))
        )
        flat_cache = cache_map(functools.partial(flatten_beam_dim, offset=cache_offset), state.cache)
        flat_logits, new_flat_cache = tokens_to_logits(
            DecodingState(
                cur_index=state.cur_index,
                sequences=flatten_beam_dim(state.live_seqs),
                cur_token=flat_ids,
                cache=flat_cache,
            )
        )
        logits = unflatten_beam_dim(flat_logits, batch_size, beam_size)
        new_cache = cache_map(
            lambda x: unflatten_beam_dim(x, batch_size, beam_size, cache_offset), new_flat_cache
        )

        log_probs = jax.nn.log_softmax(logits) + state.live_logprobs[:, :, None]
        vocab_size = log_probs.shape[-1]
        # Keep 2k candidates so k remain live even if k of them end now.
        keep = 2 * beam_size
        topk_log_probs, topk_indices = lax.top_k(
            log_probs.reshape((batch_size, beam_size * vocab_size)), k=keep
        )
        topk_ids = topk_indices % vocab_size
        topk_beam_indices = topk_indices // vocab_size

        # Forced prompt tokens: keep a single beam with the forced token.
        next_input = inputs.astype(jnp.int32)[:, None, :][:, :, state.cur_index + 1]
        out_of_prompt = next_input == 0
        forced_log_probs = jnp.concatenate(
            [
                jnp.zeros((batch_size, 1), topk_log_probs.dtype),
                jnp.full_like(topk_log_probs[:, : keep - 1], neg_inf),
            ],
            axis=1,
        )
        topk_log_probs = topk_log_probs * out_of_prompt + forced_log_probs * ~out_of_prompt
        topk_ids = topk_ids * out_of_prompt + next_input * ~out_of_prompt

        topk_seq = gather_beams(state.live_seqs, topk_beam_indices, batch_size, beam_size, keep)
        topk_seq = lax.dynamic_update_slice(topk_seq, topk_ids[:, :, None], (0, 0, state.cur_index + 1))

        # Live set: best k candidates that did not just emit EOS.
        newly_finished = topk_seq[:, :, state.cur_index + 1] == end_marker
        new_log_probs = topk_log_probs + newly_finished * neg_inf
        _, live_idx = lax.top_k(new_log_probs, k=beam_size)
        live_idx = jnp.flip(live_idx, axis=1)
        top_alive_seq, top_alive_log_probs = gather_beams(
            [topk_seq, new_log_probs], live_idx, batch_size, keep, beam_size
        )
        top_alive_beams = gather_beams(topk_beam_indices, live_idx, batch_size, keep, beam_size)
        top_alive_cache = cache_gather_beams(
            new_cache, top_alive_beams, batch_size, beam_size, beam_size, offset=cache_offset
        )

        # Finished set: merge the just-ended candidates with the old ones.
        new_scores = topk_log_probs / brevity_penalty(alpha, state.cur_index + 1)
        new_scores = new_scores + (~newly_finished) * neg_inf
        finished_seqs = jnp.concatenate([state.finished_seqs, topk_seq], axis=1)
        finished_scores = jnp.concatenate([state.finished_scores, new_scores], axis=1)
        finished_flags = jnp.concatenate([state.finished_flags, newly_finished], axis=1)
        top_finished_seq, top_finished_scores, top_finished_flags = gather_topk_beams(
            [finished_seqs, finished_scores, finished_flags], finished_scores, batch_size, beam_size
        )

        return BeamState(
            cur_index=state.cur_index + 1,
            live_logprobs=top_alive_log_probs,
            finished_scores=top_finished_scores,
            live_seqs=top_alive_seq,
            finished_seqs=top_finished_seq,
            finished_flags=top_finished_flags,
            cache=top_alive_cache,
        )

    final = lax.while_loop(cond_fn, body_fn, beam_init(batch_size, beam_size, max_decode_len, cache, cache_offset))

    # Rows where nothing finished fall back to their live beams.
    any_finished = jnp.any(final.finished_flags, axis=1)
    seqs = jnp.where(any_finished[:, None, None], final.finished_seqs, final.live_seqs)
    scores = jnp.where(any_finished[:, None], final.finished_scores, final.live_logprobs)
    return seqs[:, :, 1:], scores


# ---------------------------------------------------------------------------
# Temperature sampling (greedy at temperature 0).
# ---------------------------------------------------------------------------
def topk_mask(logits: jax.Array, k: Union[int, jax.Array], replace_val: float = NEG_INF) -> jax.Array:
    """Sets logits below the k-th largest (per row) to ``replace_val``; ties kept."""
    if isinstance(k, (int, np.integer)):
        kth = lax.top_k(logits, int(k))[0][..., -1:]
    else:
        ordered = -jnp.sort(-logits, axis=-1)
        kth = jnp.take(ordered, jnp.asarray(k) - 1, axis=-1)[..., None]
    return jnp.where(logits < kth, jnp.asarray(replace_val, logits.dtype), logits)


def topp_mask(logits: jax.Array, p: Union[float, jax.Array], replace_val: float = NEG_INF) -> jax.Array:
    """Keeps the smallest set of most likely tokens whose probability reaches ``p``.

    ``p <= 0`` keeps everything.
    """
    probs = jax.nn.softmax(logits, axis=-1)
    order = jnp.argsort(-logits, axis=-1)
    sorted_probs = jnp.take_along_axis(probs, order, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    keep_sorted = mass_before < p
    # The lowest kept logit is the threshold.
    threshold = jnp.min(jnp.where(keep_sorted, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    masked = jnp.where(logits < threshold, jnp.asarray(replace_val, logits.dtype), logits)
    return jnp.where(jnp.asarray(p) > 0, masked, logits)


@flax.struct.dataclass
class SamplingLoopState:
    """Loop state of ``temperature_sample``."""

    step: jax.Array
    cur_index: jax.Array  # [batch]
    sequences: jax.Array  # [batch, length + 2]
    cache: PyTree
    cur_token: jax.Array  # [batch, 1]
    ended: jax.Array  # [batch, 1]
    rng: jax.Array
    log_prob: jax.Array  # [batch]


def _is_tracer(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def temperature_sample(
    inputs: jax.Array,
    cache: PyTree,
    tokens_to_logits: TokensToLogits,
    eos_id: int,
    decode_rng: Optional[jax.Array] = None,
    num_decodes: int = 1,
    temperature: Union[float, jax.Array] = 1.0,
    topk: int = 1,
    topp: float = 0.0,
    cache_offset: int = 0,
    initial_index: Optional[jax.Array] = None,
    max_decode_steps: Optional[Union[int, jax.Array]] = None,
    max_decode_steps_hard_limit: Optional[int] = None,
    rescale_log_probs: bool = True,
    state_callback_fn: Optional[Callable[[SamplingLoopState], SamplingLoopState]] = None,
    logit_callback_fn: Optional[Callable[[jax.Array, SamplingLoopState], jax.Array]] = None,
) -> Tuple[jax.Array, jax.Array]:
    """Temperature sampling (T5X semantics; ``temperature=0`` is greedy).

    Args:
      inputs: ``[batch, length]`` int32; non-zero entries after position 0 are
        forced prompt tokens.
      cache: initialized decoder cache (batch-sized).
      tokens_to_logits: one-step decoder, see module docstring.
      eos_id: generation of this id ends a sequence; later tokens are 0.
      decode_rng: PRNG key (default ``PRNGKey(0)``).
      num_decodes: independent samples per example.
      temperature: scalar or ``[batch]``; ``<= MIN_TEMPERATURE`` means argmax.
      topk: if non-zero, sample only among the k most likely tokens (T5X's
        default is 1, i.e. greedy; pass 0 for the full distribution).
      topp: if non-zero, nucleus sampling (exclusive with ``topk``).
      cache_offset: 1 when cache arrays carry a leading layer axis.
      initial_index: ``[batch]`` start positions for a prefilled cache.
      max_decode_steps: stop after this many steps past the prompt.
      max_decode_steps_hard_limit: static upper bound on ``max_decode_steps``.
      rescale_log_probs: if True the returned log-probs are those of the
        temperature/top-k/top-p modified distribution (all 0 at temperature
        0); if False they are the model's own log-softmax of the chosen tokens.
      state_callback_fn: applied to the loop state before every step.
      logit_callback_fn: applied to the logits before sampling.

    Returns:
      ``([batch, num_decodes, length] tokens, [batch, num_decodes] log-probs)``,
      ascending by log-prob.
    """
    if decode_rng is None:
        decode_rng = jax.random.PRNGKey(0)
    if max_decode_steps_hard_limit and max_decode_steps is not None:
        max_decode_steps = jnp.minimum(max_decode_steps, max_decode_steps_hard_limit)

    if num_decodes > 1:
        inputs_x = flat_batch_beam_expand(inputs, num_decodes)
        cache_x = cache_map(
            functools.partial(flat_batch_beam_expand, beam_size=num_decodes, offset=cache_offset),
            cache,
            apply_to_index=initial_index is not None,
        )
        if initial_index is not None:
            initial_index = flat_batch_beam_expand(initial_index, num_decodes)
    else:
        inputs_x, cache_x = inputs, cache

    decodes, log_prob = _sample_single_trial(
        inputs_x,
        cache_x,
        tokens_to_logits,
        eos_id,
        decode_rng,
        num_decodes,
        temperature,
        topk,
        topp,
        initial_index=initial_index,
        max_decode_steps=max_decode_steps,
        rescale_log_probs=rescale_log_probs,
        state_callback_fn=state_callback_fn,
        logit_callback_fn=logit_callback_fn,
    )
    batch_size = inputs.shape[0]
    decodes = unflatten_beam_dim(decodes, batch_size, num_decodes)
    log_prob = unflatten_beam_dim(log_prob, batch_size, num_decodes)
    order = jnp.argsort(log_prob, axis=-1)
    return (
        jnp.take_along_axis(decodes, order[:, :, None], axis=1),
        jnp.take_along_axis(log_prob, order, axis=-1),
    )


def _sample_single_trial(
    inputs: jax.Array,
    cache: PyTree,
    tokens_to_logits: TokensToLogits,
    eos_id: int,
    prng_key: jax.Array,
    num_decodes: int,
    temperature: Union[float, jax.Array],
    topk: Union[int, jax.Array],
    topp: Union[float, jax.Array],
    initial_index: Optional[jax.Array],
    max_decode_steps: Optional[Union[int, jax.Array]],
    rescale_log_probs: bool,
    state_callback_fn,
    logit_callback_fn,
) -> Tuple[jax.Array, jax.Array]:
    if not (_is_tracer(topp) or _is_tracer(topk)) and topp and topk:
        raise ValueError("at most one of topk and topp may be non-zero")

    batch_size, max_decode_len = inputs.shape
    if max_decode_steps is not None:
        if not _is_tracer(max_decode_steps) and max_decode_steps > inputs.shape[1]:
            raise ValueError("cannot decode more steps than the sequence length")
        # Per-row limit: prompt tokens plus the allowed number of new ones.
        max_decode_len = jnp.minimum(inputs.shape[1], jnp.sum(inputs != 0, axis=1) + max_decode_steps)

    # Two extra slots: the write target past the end and a garbage slot that
    # rows already at their limit keep overwriting while others finish.
    extra = 2
    sequences0 = jnp.concatenate([inputs, jnp.zeros((batch_size, extra), inputs.dtype)], axis=1)
    end_marker = jnp.array(eos_id)
    temperature = jnp.asarray(temperature)

    if initial_index is None:
        index0 = jnp.zeros((batch_size,), jnp.int32)
        token0 = jnp.zeros((batch_size, 1), jnp.int32)
    else:
        index0 = initial_index
        token0 = jnp.take_along_axis(sequences0, index0[:, None], axis=1)

    state0 = SamplingLoopState(
        step=jnp.zeros((), jnp.int32),
        cur_index=index0,
        sequences=sequences0,
        cache=cache,
        cur_token=token0,
        ended=jnp.zeros((batch_size, 1), jnp.bool_),
        rng=prng_key,
        log_prob=jnp.zeros((batch_size,), jnp.float32),
    )
    # EOS already in the prompt does not end a row; only a new one does.
    initial_eos_count = jnp.sum(sequences0 == end_marker, axis=-1, keepdims=True)

    def choose_token_hot(logits, temp, rng):
        scaled = logits / jnp.maximum(temp, MIN_TEMPERATURE)
        if _is_tracer(topk):
            scaled = lax.cond(topk > 0, lambda: topk_mask(scaled, topk), lambda: scaled)
        elif topk:
            scaled = topk_mask(scaled, int(topk))
        if _is_tracer(topp) or topp:
            scaled = topp_mask(scaled, topp)
        token = jax.random.categorical(rng, scaled).astype(jnp.int32)
        log_probs = jax.nn.log_softmax(scaled if rescale_log_probs else logits)
        return token, jnp.take_along_axis(log_probs, token[..., None], axis=-1)[..., 0]

    def choose_token_greedy(logits, temp, rng):
        del temp, rng
        token = jnp.argmax(logits, -1).astype(jnp.int32)
        if rescale_log_probs:
            return token, jnp.zeros(token.shape, jnp.float32)
        log_probs = jax.nn.log_softmax(logits)
        return token, jnp.take_along_axis(log_probs, token[..., None], axis=-1)[..., 0]

    def cond_fn(state: SamplingLoopState) -> jax.Array:
        return ~jnp.all(state.ended)

    def body_fn(state: SamplingLoopState) -> SamplingLoopState:
        if state_callback_fn is not None:
            state = state_callback_fn(state)
        rng_sample, rng_next = jax.random.split(state.rng)
        logits, new_cache = tokens_to_logits(
            DecodingState(
                cur_index=state.cur_index,
                sequences=state.sequences[:, :-extra],
                cur_token=state.cur_token,
                cache=state.cache,
            )
        )
        if isinstance(state.cache, flax.core.FrozenDict):
            new_cache = flax.core.freeze(new_cache)
        if logit_callback_fn is not None:
            logits = logit_callback_fn(logits, state)

        if temperature.ndim == 1:
            per_row = jnp.repeat(temperature, num_decodes)

            def one_row(row_logits, row_temp, row_rng):
                return lax.cond(
                    row_temp > MIN_TEMPERATURE,
                    choose_token_hot,
                    choose_token_greedy,
                    row_logits[None],
                    row_temp,
                    row_rng,
                )

            rngs = jax.random.split(rng_sample, logits.shape[0])
            next_token, next_log_prob = jax.vmap(one_row)(logits, per_row, rngs)
            next_token, next_log_prob = next_token[:, 0], next_log_prob[:, 0]
        else:
            next_token, next_log_prob = lax.cond(
                temperature > MIN_TEMPERATURE,
                choose_token_hot,
                choose_token_greedy,
                logits,
                temperature,
                rng_sample,
            )

        i = jnp.minimum(state.cur_index, max_decode_len)
        # Prompt positions are teacher-forced and do not add to the log-prob.
        forced = jnp.take_along_axis(state.sequences, (i + 1)[:, None], axis=1)[:, 0]
        out_of_prompt = forced == 0
        next_token = next_token * out_of_prompt + forced * ~out_of_prompt
        log_prob = state.log_prob + (next_log_prob * out_of_prompt) * (~state.ended[:, 0]).astype(jnp.int32)

        next_token = next_token[:, None]
        next_token_or_pad = next_token * ~state.ended
        one_hot = jax.nn.one_hot(i + 1, state.sequences.shape[1], dtype=state.sequences.dtype)
        sequences = state.sequences * (1 - one_hot) + next_token_or_pad * one_hot

        new_eos = jnp.sum(sequences == end_marker, axis=-1, keepdims=True) > initial_eos_count
        ended = state.ended | new_eos | (i >= max_decode_len - 1)[:, None]
        return SamplingLoopState(
            step=state.step + 1,
            cur_index=i + 1,
            sequences=sequences,
            cache=new_cache,
            cur_token=next_token_or_pad,
            ended=ended,
            rng=rng_next,
            log_prob=log_prob,
        )

    final = lax.while_loop(cond_fn, body_fn, state0)
    if state_callback_fn is not None:
        final = state_callback_fn(final)
    # Drop the BOS slot and the garbage slot.
    return final.sequences[:, 1:-1], final.log_prob
