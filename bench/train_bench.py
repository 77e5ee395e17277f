"""Training and decoding throughput of the `small_cpu` config, against Hugging Face's PyTorch T5.

    python bench/train_bench.py [--steps 10] [--decode_batches 2] [--skip_peer]

small_cpu (fixed, for comparisons): T5 1.1 with emb_dim 256, 4 heads x head_dim 64,
mlp_dim 1024, 4 encoder + 4 decoder layers, vocab 2048, batch 16, inputs and targets of
64 tokens, packed rows, bfloat16 activations with float32 parameters, Adafactor, no
dropout. Prints, for this project: train steps/s and tokens/s (compilation excluded),
compile time, peak memory; greedy and beam-4 decoding tokens/s. Where torch and
transformers are importable (this script installs nothing), the same config, batch and
lengths run through `transformers.T5ForConditionalGeneration` (bfloat16 autocast, its
Adafactor, `generate`) in a child process of this run, and the ratios are printed
(targets: >= 1.0x for training and for beam-4 decoding).

Tokens counted: non-padding input + target tokens per training step; generated
tokens (batch x 64, no early stop on either side) per decoding call.
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
    peak = _peak_rss_mib()

    decode_batch = {k: batch[k] for k in ("encoder_input_tokens",)}
    decode_batch["encoder_input_tokens"] = np.where(batch["encoder_input_tokens"] > 0, batch["encoder_input_tokens"], 5)
    decode_batch["decoder_input_tokens"] = np.zeros((BATCH, TARGET_LEN), np.int32)
    results = {"train_steps_per_s": steps / train_s, "train_tokens_per_s": steps * tokens_of(batch) / train_s,
               "compile_s": compile_s, "xla_temp_mib": temp_mib, "peak_rss_mib": peak,
               "final_loss": float(metrics["loss"])}
    for name, options in (("greedy", {"method": "greedy"}), ("beam4", {"method": "beam", "num_decodes": BEAMS})):
        out = trainer.predict_batch(state.params, decode_batch, **options)  # compile + warm-up
        assert out.shape == (BATCH, TARGET_LEN), out.shape
        start = time.perf_counter()
        for _ in range(decode_batches):
            out = trainer.predict_batch(state.params, decode_batch, **options)
        elapsed = time.perf_counter() - start
        results[f"{name}_tokens_per_s"] = decode_batches * BATCH * TARGET_LEN / elapsed
    return results


# ---------------------------------------------------------------------------
# Peer: Hugging Face transformers' PyTorch T5 (child process)
# ---------------------------------------------------------------------------
PEER_INSTALL = ("python -m pip install torch transformers  "
                "(CPU wheel: --index-url https://download.pytorch.org/whl/cpu for torch)")


def peer_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None


def bench_peer(steps: int, decode_batches: int) -> dict:
    import numpy as np
    import torch
    from transformers import T5Config, T5ForConditionalGeneration
    from transformers.optimization import Adafactor

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    config = T5Config(vocab_size=SMALL_CPU["vocab_size"], d_model=SMALL_CPU["emb_dim"], d_kv=SMALL_CPU["head_dim"],
                      d_ff=SMALL_CPU["mlp_dim"], num_layers=SMALL_CPU["num_encoder_layers"],
                      num_decoder_layers=SMALL_CPU["num_decoder_layers"], num_heads=SMALL_CPU["num_heads"],
                      feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    model = T5ForConditionalGeneration(config)  # float32 parameters
    optimizer = Adafactor(model.parameters(), lr=1e-3, scale_parameter=True, relative_step=False,
                          warmup_init=False, decay_rate=-0.8, clip_threshold=1.0)
    # Same token count as the packed batch: HF T5 has no packing, so rows hold one
    # example each and are filled to the same number of real tokens.
    batch = packed_rows()
    real_tokens = tokens_of(batch)
    rng = np.random.RandomState(0)
    inputs = torch.tensor(rng.randint(2, SMALL_CPU["vocab_size"], (BATCH, INPUT_LEN)))
    labels = torch.tensor(rng.randint(2, SMALL_CPU["vocab_size"], (BATCH, TARGET_LEN)))
    attention = torch.ones_like(inputs)
    hf_tokens = inputs.numel() + labels.numel()

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=inputs, attention_mask=attention, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    model.train()
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    train_s = time.perf_counter() - start
    import transformers

    results = {"train_steps_per_s": steps / train_s, "train_tokens_per_s": steps * hf_tokens / train_s,
               "peak_rss_mib": _peak_rss_mib(), "versions": f"transformers {transformers.__version__} / "
               f"torch {torch.__version__}", "tokens_per_step": hf_tokens, "jax_tokens_per_step": real_tokens}
    model.eval()
    for name, beams in (("greedy", 1), ("beam4", BEAMS)):
        kwargs = dict(max_new_tokens=TARGET_LEN, min_new_tokens=TARGET_LEN, num_beams=beams, do_sample=False,
                      early_stopping=False)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            model.generate(input_ids=inputs, attention_mask=attention, **kwargs)  # warm-up
            start = time.perf_counter()
            for _ in range(decode_batches):
                model.generate(input_ids=inputs, attention_mask=attention, **kwargs)
            elapsed = time.perf_counter() - start
        results[f"{name}_tokens_per_s"] = decode_batches * BATCH * TARGET_LEN / elapsed
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--decode_batches", type=int, default=2, help="timed decoding calls per method")
    parser.add_argument("--skip_peer", action="store_true", help="do not run the PyTorch peer")
    parser.add_argument("--peer_only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer_only:
        print(json.dumps(bench_peer(args.steps, args.decode_batches)))
        return 0

    import jax

    print(f"small_cpu: {SMALL_CPU}, batch {BATCH}, inputs {INPUT_LEN}, targets {TARGET_LEN}, packed, "
          f"bfloat16 activations / float32 params, Adafactor; device {jax.devices()[0].device_kind} "
          f"({os.cpu_count()} CPUs visible)")
    ours = bench_jax(args.steps, args.decode_batches)
    print(f"personalize-t5x  train: {ours['train_steps_per_s']:.2f} steps/s, {ours['train_tokens_per_s']:.0f} tokens/s "
          f"(compile {ours['compile_s']:.1f} s excluded), peak RSS {ours['peak_rss_mib']:.0f} MiB, "
          f"XLA temp {ours['xla_temp_mib']:.0f} MiB, loss after {args.steps + 1} steps {ours['final_loss']:.2f}")
    print(f"personalize-t5x  decode: greedy {ours['greedy_tokens_per_s']:.0f} tokens/s, "
          f"beam-4 {ours['beam4_tokens_per_s']:.0f} tokens/s")

    if args.skip_peer:
        print("peer: skipped (--skip_peer)")
        return 0
    if not peer_available():
        print(f"peer: Hugging Face transformers (PyTorch) T5 is unavailable here (torch/transformers not "
              f"importable); to compare, install them into this environment: {PEER_INSTALL}")
        return 0
    child = subprocess.run([sys.executable, os.path.abspath(__file__), "--peer_only", f"--steps={args.steps}",
                            f"--decode_batches={args.decode_batches}"], capture_output=True, text=True)
    if child.returncode != 0:
        print(f"peer: failed: {child.stderr.strip().splitlines()[-1] if child.stderr.strip() else child.returncode}")
        return 1
    peer = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"HF {peer['versions']}  train: "
          f"{peer['train_steps_per_s']:.2f} steps/s, {peer['train_tokens_per_s']:.0f} tokens/s, "
          f"peak RSS {peer['peak_rss_mib']:.0f} MiB")
    print(f"HF transformers  decode: greedy {peer['greedy_tokens_per_s']:.0f} tokens/s, "
          f"beam-4 {peer['beam4_tokens_per_s']:.0f} tokens/s")
    for key, label, target in (("train_tokens_per_s", "training tokens/s", 1.0),
                               ("beam4_tokens_per_s", "beam-4 decoding tokens/s", 1.0),
                               ("greedy_tokens_per_s", "greedy decoding tokens/s", None)):
        ratio = ours[key] / peer[key]
        verdict = "" if target is None else (" (target >= 1.0x: met)" if ratio >= target else " (target >= 1.0x: NOT met)")
        print(f"ratio personalize-t5x / HF PyTorch, {label}: {ratio:.2f}x{verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
