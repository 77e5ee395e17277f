"""Training and decoding throughput of the `small_cpu` config, against upstream T5X.

    make peer-venv   # once: upstream T5X from ../shared/peers in .peer-venv (same lock)
    python bench/train_bench.py [--steps 10] [--decode_batches 2] [--skip_peer]

small_cpu (fixed, for comparisons): T5 1.1 with emb_dim 256, 4 heads x head_dim 64,
mlp_dim 1024, 4 encoder + 4 decoder layers, vocab 2048, batch 16, inputs and targets of
64 tokens, packed rows, bfloat16 activations with float32 parameters, Adafactor
(decay_rate 0.8), z-loss 1e-4, no dropout, one device.

Each side runs in a child process of its own (so each peak RSS is its own) on the same
packed batch: this project through `Trainer.train_step` and `Trainer.predict_batch`;
upstream T5X (the peer virtualenv, same jax/flax/optax) through its own objects:
`t5x.examples.t5.network.Transformer`, `t5x.adafactor.Adafactor`,
`t5x.models.EncoderDecoderModel`, the partitioned step of `t5x.trainer.Trainer`
(`train_with_lr`, donated state) and `predict_batch_with_aux` with
`decoding.beam_search` (beam 4) and `decoding.temperature_sample` at temperature 0
(greedy). Prints each side's figures and every ratio with its target: training
tokens/s >= 1.2x T5X's, beam-4 decoding tokens/s >= 1.5x, peak memory <= T5X's.

Tokens counted: non-padding input + target tokens per training step; generated tokens
(batch x 64: the EOS id lies outside the vocabulary, so neither side stops early) per
decoding call. Compilation is excluded from every rate.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

SMALL_CPU = dict(vocab_size=2048, emb_dim=256, num_heads=4, head_dim=64, mlp_dim=1024,
                 num_encoder_layers=4, num_decoder_layers=4)
BATCH, INPUT_LEN, TARGET_LEN = 16, 64, 64
BEAMS = 4


def _peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss it is not inherited
    from the parent across fork + exec, so the peer's figure is its own)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def packed_rows(seed: int = 0):
    """A packed batch as EncDecFeatureConverter(pack=True) builds it: short examples end to end."""
    import numpy as np

    rng = np.random.RandomState(seed)
    out = {k: np.zeros((BATCH, n), np.int32) for k, n in (
        ("encoder_input_tokens", INPUT_LEN), ("encoder_segment_ids", INPUT_LEN), ("encoder_positions", INPUT_LEN),
        ("decoder_target_tokens", TARGET_LEN), ("decoder_input_tokens", TARGET_LEN),
        ("decoder_segment_ids", TARGET_LEN), ("decoder_positions", TARGET_LEN), ("decoder_loss_weights", TARGET_LEN))}
    for row in range(BATCH):
        enc_at = dec_at = 0
        segment = 1
        while True:
            n_in, n_tg = rng.randint(8, 33), rng.randint(8, 33)
            if enc_at + n_in > INPUT_LEN or dec_at + n_tg > TARGET_LEN:
                break
            tokens_in = rng.randint(2, SMALL_CPU["vocab_size"], n_in)
            tokens_tg = rng.randint(2, SMALL_CPU["vocab_size"], n_tg)
            tokens_in[-1] = tokens_tg[-1] = 1  # EOS
            out["encoder_input_tokens"][row, enc_at:enc_at + n_in] = tokens_in
            out["encoder_segment_ids"][row, enc_at:enc_at + n_in] = segment
            out["encoder_positions"][row, enc_at:enc_at + n_in] = np.arange(n_in)
            out["decoder_target_tokens"][row, dec_at:dec_at + n_tg] = tokens_tg
            out["decoder_input_tokens"][row, dec_at:dec_at + n_tg] = np.concatenate([[0], tokens_tg[:-1]])
            out["decoder_segment_ids"][row, dec_at:dec_at + n_tg] = segment
            out["decoder_positions"][row, dec_at:dec_at + n_tg] = np.arange(n_tg)
            out["decoder_loss_weights"][row, dec_at:dec_at + n_tg] = 1
            enc_at, dec_at, segment = enc_at + n_in, dec_at + n_tg, segment + 1
    return out


def tokens_of(batch) -> int:
    import numpy as np

    return int(np.count_nonzero(batch["encoder_input_tokens"]) + np.count_nonzero(batch["decoder_target_tokens"]))


# ---------------------------------------------------------------------------
# This project (JAX)
# ---------------------------------------------------------------------------
def bench_jax(steps: int, decode_batches: int) -> dict:
    import jax
    import numpy as np

    from personalize_t5x.trainer import partitioning, trainer as trainer_lib
    from personalize_t5x.trainer import models as encoder_decoder
    from personalize_t5x.network import t5

    config = t5.T5Config(**SMALL_CPU, dtype="bfloat16", mlp_activations=("gelu", "linear"), dropout_rate=0.0)
    # eos_id outside the vocabulary: decoding runs the full 64 steps, as the peer is told to.
    model = encoder_decoder.EncoderDecoderModel(t5.Transformer(config), z_loss=1e-4, eos_id=config.vocab_size + 1)
    partitioner = partitioning.PjitPartitioner(devices=jax.devices()[:1])
    trainer = trainer_lib.Trainer(model=model, partitioner=partitioner)
    batch = packed_rows()
    shapes = {k: v.shape for k, v in batch.items()}
    state = trainer.init_state(jax.random.PRNGKey(0), shapes)
    rng = jax.random.PRNGKey(1)

    start = time.perf_counter()
    compiled = trainer.compile_train_step(state, batch, rng)
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    temp_mib = getattr(memory, "temp_size_in_bytes", 0) / 2**20 if memory is not None else float("nan")
    state, metrics = trainer.train_step(state, batch, rng)  # warm-up (first execution)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = trainer.train_step(state, batch, rng)
    jax.block_until_ready((state, metrics))
    train_s = time.perf_counter() - start

    decode_batch = {k: batch[k] for k in ("encoder_input_tokens",)}
    decode_batch["encoder_input_tokens"] = np.where(batch["encoder_input_tokens"] > 0, batch["encoder_input_tokens"], 5)
    decode_batch["decoder_input_tokens"] = np.zeros((BATCH, TARGET_LEN), np.int32)
    results = {"train_steps_per_s": steps / train_s, "train_tokens_per_s": steps * tokens_of(batch) / train_s,
               "compile_s": compile_s, "xla_temp_mib": temp_mib,
               "final_loss": float(metrics["loss"])}
    for name, options in (("greedy", {"method": "greedy"}), ("beam4", {"method": "beam", "num_decodes": BEAMS})):
        out = trainer.predict_batch(state.params, decode_batch, **options)  # compile + warm-up
        assert out.shape == (BATCH, TARGET_LEN), out.shape
        start = time.perf_counter()
        for _ in range(decode_batches):
            out = trainer.predict_batch(state.params, decode_batch, **options)
        elapsed = time.perf_counter() - start
        results[f"{name}_tokens_per_s"] = decode_batches * BATCH * TARGET_LEN / elapsed
    results["peak_rss_mib"] = _peak_rss_mib()  # after training and decoding, as on the T5X side
    return results


# ---------------------------------------------------------------------------
# Peer: upstream T5X (child process in the peer virtualenv)
# ---------------------------------------------------------------------------
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER_VENV = os.environ.get("PERSONALIZE_T5X_PEER_VENV", os.path.join(REPO, ".peer-venv"))


def bench_t5x(steps: int, decode_batches: int) -> dict:
    import functools

    import jax
    import numpy as np
    import seqio
    from t5x import adafactor, decoding, models, partitioning, trainer as t5x_trainer, utils
    from t5x.examples.t5 import network

    config = network.T5Config(**SMALL_CPU, dtype="bfloat16", mlp_activations=("gelu", "linear"),
                              dropout_rate=0.0, logits_via_embedding=False)
    vocabulary = seqio.PassThroughVocabulary(size=SMALL_CPU["vocab_size"], eos_id=SMALL_CPU["vocab_size"] + 1)
    optimizer = adafactor.Adafactor(decay_rate=0.8, step_offset=0,
                                    logical_factor_rules=adafactor.standard_logical_factor_rules())

    def model_with(decode_fn):
        return models.EncoderDecoderModel(network.Transformer(config), input_vocabulary=vocabulary,
                                          output_vocabulary=vocabulary, optimizer_def=optimizer,
                                          decode_fn=decode_fn, z_loss=1e-4)

    model = model_with(decoding.beam_search)
    partitioner = partitioning.PjitPartitioner(num_partitions=1)
    batch = packed_rows()
    shapes = {k: v.shape for k, v in batch.items()}
    initializer = utils.TrainStateInitializer(optimizer_def=optimizer, init_fn=model.get_initial_variables,
                                              input_shapes=shapes, partitioner=partitioner)
    state = initializer.from_scratch(jax.random.PRNGKey(0))
    trainer = t5x_trainer.Trainer(model=model, train_state=state, partitioner=partitioner, eval_names=[],
                                  summary_dir=None, train_state_axes=initializer.train_state_axes,
                                  rng=jax.random.PRNGKey(1), learning_rate_fn=lambda step: 1e-3,
                                  num_microbatches=None)
    step_fn = trainer._partitioned_train_step  # what Trainer.train runs per step
    start = time.perf_counter()
    compiled = step_fn.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    temp_mib = getattr(memory, "temp_size_in_bytes", 0) / 2**20 if memory is not None else float("nan")
    state, metrics = compiled(state, batch)  # warm-up
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    train_s = time.perf_counter() - start
    loss = metrics["loss"]
    loss = float(loss.compute() if hasattr(loss, "compute") else loss)
    results = {"train_steps_per_s": steps / train_s, "train_tokens_per_s": steps * tokens_of(batch) / train_s,
               "compile_s": compile_s, "xla_temp_mib": temp_mib, "final_loss": loss}

    decode_batch = {"encoder_input_tokens": np.where(batch["encoder_input_tokens"] > 0,
                                                     batch["encoder_input_tokens"], 5),
                    "decoder_input_tokens": np.zeros((BATCH, TARGET_LEN), np.int32)}
    params = state.params
    greedy_model = model_with(decoding.temperature_sample)
    for name, fn in (("greedy", functools.partial(greedy_model.predict_batch_with_aux,
                                                  decoder_params={"temperature": 0.0})),
                     ("beam4", functools.partial(model.predict_batch_with_aux, num_decodes=BEAMS))):
        partitioned = partitioner.partition(lambda p, b, fn=fn: fn(p, b)[0],
                                            in_axis_resources=(initializer.train_state_axes.params,
                                                               partitioner.data_partition_spec),
                                            out_axis_resources=None)
        out = jax.block_until_ready(partitioned(params, decode_batch))  # compile + warm-up
        assert out.shape == (BATCH, TARGET_LEN), out.shape
        start = time.perf_counter()
        for _ in range(decode_batches):
            out = jax.block_until_ready(partitioned(params, decode_batch))
        results[f"{name}_tokens_per_s"] = decode_batches * BATCH * TARGET_LEN / (time.perf_counter() - start)
    results["peak_rss_mib"] = _peak_rss_mib()
    results["versions"] = f"t5x {os.path.dirname(models.__file__)} / jax {jax.__version__}"
    return results


def _child(python: str, flag: str, args) -> dict:
    """Runs one side in a child process; its last stdout line is the JSON result."""
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("XLA_FLAGS", None)  # one CPU device on both sides
    child = subprocess.run([python, os.path.abspath(__file__), flag, f"--steps={args.steps}",
                            f"--decode_batches={args.decode_batches}"], capture_output=True, text=True, env=env)
    if child.returncode != 0:
        tail = "\n".join(child.stderr.strip().splitlines()[-15:])
        raise SystemExit(f"{flag[2:]} failed (exit {child.returncode}):\n{tail}")
    result = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"  {flag[2:]} round: {json.dumps(result)}", flush=True)  # kept if a later round is cut short
    return result


def _best(runs: list[dict]) -> dict:
    """Per figure, the best of several rounds: the highest rate, the lowest memory.

    The rounds of the two sides alternate, so a load spike on a shared machine costs
    each side a round rather than skewing one side's only figure."""
    best = dict(runs[0])
    for run in runs[1:]:
        for key, value in run.items():
            if key.endswith("_per_s"):
                best[key] = max(best[key], value)
            elif key in ("peak_rss_mib", "compile_s"):
                best[key] = min(best[key], value)
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--decode_batches", type=int, default=2, help="timed decoding calls per method")
    parser.add_argument("--skip_peer", action="store_true", help="do not run upstream T5X")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds per side (best figure kept)")
    parser.add_argument("--ours_only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--t5x_only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ours_only or args.t5x_only:
        print(json.dumps((bench_jax if args.ours_only else bench_t5x)(args.steps, args.decode_batches)))
        return 0

    with open("/proc/loadavg") as load:
        print(f"uptime load average: {' '.join(load.read().split()[:3])} ({os.cpu_count()} CPUs; a loaded "
              "machine gives noisy absolute figures: compare the ratios of one run)", flush=True)
    print(f"small_cpu: {SMALL_CPU}, batch {BATCH}, inputs {INPUT_LEN}, targets {TARGET_LEN}, packed, "
          "bfloat16 activations / float32 params, Adafactor, one CPU device")
    peer_python = os.path.join(PEER_VENV, "bin", "python")
    have_peer = os.path.exists(os.path.join(PEER_VENV, ".installed-stamp"))
    ours_runs, peer_runs = [], []
    for _ in range(max(1, args.rounds)):
        ours_runs.append(_child(sys.executable, "--ours_only", args))
        if have_peer and not args.skip_peer:
            peer_runs.append(_child(peer_python, "--t5x_only", args))
    ours = _best(ours_runs)
    print(f"rounds: {len(ours_runs)} per side, alternating; best figure of each side shown")
    print(f"personalize-t5x  train: {ours['train_steps_per_s']:.2f} steps/s, {ours['train_tokens_per_s']:.0f} tokens/s "
          f"(compile {ours['compile_s']:.1f} s excluded), peak RSS {ours['peak_rss_mib']:.0f} MiB, "
          f"XLA temp {ours['xla_temp_mib']:.0f} MiB, loss after {args.steps + 1} steps {ours['final_loss']:.2f}")
    print(f"personalize-t5x  decode: greedy {ours['greedy_tokens_per_s']:.0f} tokens/s, "
          f"beam-4 {ours['beam4_tokens_per_s']:.0f} tokens/s")
    if args.skip_peer:
        print("peer: skipped (--skip_peer)")
        return 0
    if not have_peer:
        print(f"peer: upstream T5X is not installed at {PEER_VENV}; run `make peer-venv` "
              "(needs ../shared/peers) and rerun")
        return 0
    peer = _best(peer_runs)
    print(f"upstream T5X     train: {peer['train_steps_per_s']:.2f} steps/s, {peer['train_tokens_per_s']:.0f} tokens/s "
          f"(compile {peer['compile_s']:.1f} s excluded), peak RSS {peer['peak_rss_mib']:.0f} MiB, "
          f"XLA temp {peer['xla_temp_mib']:.0f} MiB, loss after {args.steps + 1} steps {peer['final_loss']:.2f}")
    print(f"upstream T5X     decode: greedy {peer['greedy_tokens_per_s']:.0f} tokens/s, "
          f"beam-4 {peer['beam4_tokens_per_s']:.0f} tokens/s")
    for key, label, target in (("train_tokens_per_s", "training tokens/s", 1.2),
                               ("beam4_tokens_per_s", "beam-4 decoding tokens/s", 1.5),
                               ("greedy_tokens_per_s", "greedy decoding tokens/s", None)):
        ratio = ours[key] / peer[key]
        verdict = "" if target is None else f" (target >= {target}x: {'met' if ratio >= target else 'NOT met'})"
        print(f"ratio personalize-t5x / T5X, {label}: {ratio:.2f}x{verdict}")
    ratio = ours["peak_rss_mib"] / peer["peak_rss_mib"]
    print(f"ratio personalize-t5x / T5X, peak RSS: {ratio:.2f}x (target <= 1.0x: {'met' if ratio <= 1.0 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
