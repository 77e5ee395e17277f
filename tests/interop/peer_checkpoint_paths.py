"""Run in the peer virtualenv: the checkpoints upstream T5X's eval would restore from a MODEL_DIR.

    python peer_checkpoint_paths.py MODEL_DIR EVALUATED_FILE OUTPUT.json

OUTPUT.json holds what T5X's own functions answer:
- 'latest', 'all': `utils.get_first_valid_restore_config_and_paths` for that mode (the
  list `t5x.eval.evaluate` restores, in its order);
- 'still_to_evaluate': what `t5x.eval.evaluate` with mode 'all' would still evaluate given
  EVALUATED_FILE (an eval.<mixture>.ckpt): the checkpoint_<step> folders of
  `checkpoints.all_steps` less `eval._load_evaluated_ckpt_paths`, ordered by
  `eval._sorted_ckpt_paths`, the steps `evaluate` itself goes through;
- 'evaluated_sorted': EVALUATED_FILE's paths as `eval._sorted_ckpt_paths` orders them;
- 'specific_model_dir_error': the error of `checkpoints.get_step_from_checkpoint_dir`, the
  first thing T5X's orbax restore does with a 'specific' path, on MODEL_DIR (None if none).
"""
import json
import sys

from t5x import checkpoints
from t5x import eval as t5x_eval
from t5x import utils


def main(argv):
    model_dir, evaluated_file, output = argv
    answer = {}
    for mode in ("latest", "all"):
        cfg = utils.RestoreCheckpointConfig(path=model_dir, mode=mode)
        _, paths = utils.get_first_valid_restore_config_and_paths([cfg])
        answer[mode] = list(paths)
    present = {checkpoints.get_checkpoint_dir(model_dir, step) for step in checkpoints.all_steps(model_dir)}
    evaluated = t5x_eval._load_evaluated_ckpt_paths(evaluated_file)
    answer["still_to_evaluate"] = list(t5x_eval._sorted_ckpt_paths(present - evaluated))
    answer["evaluated_sorted"] = list(t5x_eval._sorted_ckpt_paths(evaluated))
    try:
        checkpoints.get_step_from_checkpoint_dir(model_dir)
        answer["specific_model_dir_error"] = None
    except ValueError as error:
        answer["specific_model_dir_error"] = str(error)
    with open(output, "w") as out:
        json.dump(answer, out, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
