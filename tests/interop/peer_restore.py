"""Run in the peer virtualenv: restore a checkpoint with upstream T5X, dump its TrainState.

    python peer_restore.py CHECKPOINT_DIR OUTPUT.npz GIN_FILE... [--gin.NAME=VALUE ...]

The model comes from the gin files (T5X's own model gins, e.g. gin/t5x/t5_1_1_tiny.gin);
the checkpoint is restored the way t5x.train, t5x.eval and t5x.infer restore one
(`utils.create_checkpoint_manager_and_restore`, orbax, mode 'specific', no fallback
to a fresh init), so a layout T5X cannot read fails here. OUTPUT.npz holds every leaf
of the restored state dict under its '/'-joined T5X name (`target/...`,
`state/step`, `state/param_states/...`).
"""
import os
import sys

import gin
import jax
import numpy as np
from flax import traverse_util
from t5x import gin_utils, partitioning, utils

# Input shapes only size the model's variables; parameter shapes do not depend on them.
_INPUT_SHAPES = {"encoder_input_tokens": (1, 8), "decoder_input_tokens": (1, 8)}


def main(argv):
    checkpoint, output, *rest = argv
    gin_files = [a for a in rest if not a.startswith("--gin.")]
    bindings = gin_utils.rewrite_gin_args([a for a in rest if a.startswith("--gin.")])
    bindings = [b[len("--gin_bindings="):] for b in bindings]
    t5x_root = os.path.dirname(os.path.dirname(utils.__file__))
    gin_utils.parse_gin_flags([t5x_root], gin_files, bindings, finalize_config=False)
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    partitioner = partitioning.PjitPartitioner(num_partitions=1)
    initializer = utils.TrainStateInitializer(
        optimizer_def=model.optimizer_def, init_fn=model.get_initial_variables,
        input_shapes=_INPUT_SHAPES, partitioner=partitioner)
    restore_cfg = utils.RestoreCheckpointConfig(path=checkpoint, mode="specific", dtype="float32")
    state, _ = utils.create_checkpoint_manager_and_restore(
        initializer, partitioner, restore_cfg, checkpoint, fallback_init_rng=None, use_orbax=True)
    if state is None:
        raise SystemExit(f"T5X restored nothing from {checkpoint}")
    flat = traverse_util.flatten_dict(state.state_dict(), sep="/")
    np.savez(output, **{name: np.asarray(jax.device_get(value)) for name, value in flat.items()})
    print(f"restored {len(flat)} leaves at step {int(state.step)} from {checkpoint}")


if __name__ == "__main__":
    main(sys.argv[1:])
